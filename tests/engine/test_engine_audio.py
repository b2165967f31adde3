"""Audio through whole engines on loopback: real Opus, real AEC3, real UDP, the synthetic room.

A "mirror" engine (peer address = its own) sends its microphone to itself, so one engine exercises the
whole audio path: sound card callback → echo cancellation → Opus → UDP → jitter buffer → decode → playout.
The audio runs in a process of its own by default (app/engine/audio_process.py); tests that reach into the
audio engine's objects run it on the engine's threads (``audio.own_process`` false).
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from app.audio.codec import open_codec
from app.audio.device import period_samples
from app.audio.measure import speech_like
from app.audio.resample import VariableResampler
from app.bench.audio_tap import BenchAudioTap
from app.bench.recorder import StampRecorder
from app.engine.audio import AudioEngine
from app.engine.engine import Engine
from app.net.protocol import AudioCodecId, AudioPacket
from tests.engine.conftest import audio_stats as audio
from tests.engine.conftest import run_engine, small_settings, wait_for

INLINE = {"own_process": False}
"""Audio on the engine's own threads, where a test reaches into its objects."""


@pytest.mark.parametrize("codec", ["opus", "pcm"])
def test_mirror_plays_its_own_voice_with_markers_intact(tmp_path: Path, codec: str) -> None:
    settings = small_settings(
        tmp_path,
        audio={
            **INLINE,
            "codec": codec,
            "talker": "markers",
            "markers_every_s": 0.25,
            "room_noise_dbfs": -80,
        },
    )
    tap = BenchAudioTap(period=period_samples(settings.audio.period_ms))
    engine = Engine(settings, audio_tap=tap)
    assert isinstance(engine.audio, AudioEngine)
    tap.device = engine.audio.device
    stop, t, status = run_engine(engine)
    try:
        wait_for(lambda: audio(engine)["frames_decoded"] >= 300, what="3 s of audio")
        wait_for(lambda: len(tap.detected_ns) >= 8, what="markers heard at the speaker")
        stats = audio(engine)
    finally:
        stop.set()
        t.join(30)
    assert status == [0]
    assert stats["playing"] and stats["codec"] == codec
    assert stats["decode_errors"] == 0 and stats["bad_packets"] == 0
    assert stats["concealed_percent"] < 5.0
    # Every marker heard was one the room put in the microphone, heard once.
    emitted = engine.audio.device.markers_emitted()
    for heard in tap.detected_ns:
        assert any(0 < heard - e < 200_000_000 for e in emitted)
    assert len(tap.detected_ns) <= len(emitted)


def test_bad_audio_packets_are_concealed_and_counted(tmp_path: Path) -> None:
    engine = Engine(small_settings(tmp_path, audio=INLINE))
    assert isinstance(engine.audio, AudioEngine)
    port = engine.settings.network.listen_port
    stop, t, status = run_engine(engine)
    twin = engine.link.sock  # the only socket with the twin's address (a mirror engine's own)
    try:
        wait_for(lambda: audio(engine)["frames_decoded"] >= 100, what="audio flowing")
        decoded = audio(engine)["frames_decoded"]

        def send(pkt: AudioPacket) -> None:
            twin.sendto(bytes(pkt), ("127.0.0.1", port))

        ahead = engine.audio._audio_seq
        for i in range(20):
            # Undecodable Opus for frames the sender has not sent yet: stored first, decoded, concealed.
            send(
                AudioPacket(
                    engine.transport.next_seq(),
                    (ahead + 5 + 3 * i) & 0xFFFF,
                    AudioCodecId.OPUS,
                    1,
                    480,
                    (b"\xff",),
                )
            )
            # A codec or frame size this version does not send.
            send(
                AudioPacket(engine.transport.next_seq(), ahead, AudioCodecId.PCM16, 1, 480, (b"\x00" * 1920,))
            )
            send(AudioPacket(engine.transport.next_seq(), ahead, AudioCodecId.OPUS, 1, 960, (b"\x01",)))
            # Truncated: not even parsed.
            twin.sendto(
                bytes(AudioPacket(engine.transport.next_seq(), ahead, 1, 1, 480, (b"abcdef",)))[:-3],
                ("127.0.0.1", port),
            )
        wait_for(lambda: audio(engine)["frames_decoded"] >= decoded + 200, what="audio after the garbage")
        stats = engine.stats()
    finally:
        stop.set()
        t.join(30)
    assert status == [0]
    a = stats["audio"]
    assert a["decode_errors"] >= 10
    assert a["bad_packets"] == 40
    assert stats["network"]["malformed"] >= 20
    assert a["playing"]


def test_sound_card_lost_mid_call_is_reported_reopened_and_video_keeps_going(tmp_path: Path) -> None:
    rec = StampRecorder(psnr_every=0)
    engine = Engine(small_settings(tmp_path, audio=INLINE), sink_hook=rec)
    assert isinstance(engine.audio, AudioEngine)
    device = engine.audio.device
    device.reopen_interval_s = 0.1  # type: ignore[attr-defined]
    stop, t, status = run_engine(engine)
    try:
        wait_for(lambda: audio(engine)["frames_decoded"] >= 100, what="audio flowing")
        device.unplug()  # type: ignore[attr-defined]
        wait_for(lambda: audio(engine)["device_stats"]["lost"], what="the loss noticed")
        shown = len(rec.records)
        wait_for(lambda: len(rec.records) >= shown + 20, what="video while the sound card is gone")
        device.replug()  # type: ignore[attr-defined]
        wait_for(lambda: audio(engine)["device_stats"]["reopened"] == 1, what="the sound card back")
        decoded = audio(engine)["frames_decoded"]
        wait_for(lambda: audio(engine)["frames_decoded"] >= decoded + 100, what="audio again")
    finally:
        stop.set()
        t.join(30)
    assert status == [0]
    assert not any(r.corrupt for r in rec.records)


def test_the_sound_card_callback_allocates_no_arrays(tmp_path: Path) -> None:
    engine = Engine(small_settings(tmp_path, audio=INLINE))
    a = engine.audio
    assert isinstance(a, AudioEngine)
    a._fifo.write(np.full((20_000, 2), 0.1, np.float32))
    mic = np.zeros((a.device.period, 2), np.float32)
    speaker = np.zeros((a.device.period, 2), np.float32)
    # Through the device's own hand-over, which gathers the microphone's periods into 10 ms blocks.
    invoke = a.device._invoke
    for i in range(10):
        invoke(a.callback, mic, speaker, i, i * 5_000_000, i * 5_000_000)
    a._capture.read = a._capture.written
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for i in range(10, 70):
            invoke(a.callback, mic, speaker, i, i * 5_000_000, i * 5_000_000)
            a._capture.read = a._capture.written  # the send thread's part, done here
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        engine.link.close()
    # A (240, 2) float32 block alone is 1920 bytes: none was made. Python's own small ints come and go.
    assert peak - start < 1000
    assert end - start < 200
    assert np.all(speaker == np.float32(0.1))


@pytest.mark.parametrize("taken_back_by", ["wake", "push"])
def test_a_callback_the_fifo_cannot_cover_plays_the_reserve_and_the_stream_goes_on(
    tmp_path: Path, taken_back_by: str
) -> None:
    # The playout thread keeps one period of concealment ready; a callback that finds the FIFO short (the
    # playout thread late for its guard deadline) plays it instead of silence, allocating nothing, and the
    # playout thread then continues from after it, as if it had stretched there itself.
    engine = Engine(small_settings(tmp_path, audio=INLINE))
    a = engine.audio
    assert isinstance(a, AudioEngine) and a.recv_codec is not None
    try:
        speech = np.repeat(speech_like(0.2, seed=5)[:, None], 2, axis=1)
        packets = [open_codec("opus").encode(speech[k * 480 : (k + 1) * 480]) for k in range(20)]
        reference, ref_resampler = open_codec("opus"), VariableResampler()
        a._playing = True
        for p in packets[:6]:
            a._push(a.recv_codec.decode(p), None)
            ref_resampler.push(reference.decode(p))
            ref_resampler.pull(1.0)
        a._arm_reserve()
        a._fifo.read = a._fifo.written - 10  # the FIFO holds only 10 samples when the callback comes
        ref_resampler.push(reference.conceal(a.period))
        concealed = ref_resampler.pull(1.0)
        speaker = np.zeros((a.period, 2), np.float32)
        mic = np.zeros((a.period, 2), np.float32)
        tracemalloc.start()
        try:
            start, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            a.device._invoke(a.callback, mic, speaker, 1, 0, 0)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak - start < 1000
        assert a.counters["underruns"] == 0 and a.counters["reserve_used"] == 1
        np.testing.assert_allclose(speaker[10:], concealed[: a.period - 10], atol=1e-6)
        # The playout thread takes it back: the rest of the reserve goes first, then the next frame
        # continues from the concealment, as the reference decoder does.
        codec = a.recv_codec
        if taken_back_by == "wake":  # the playout thread woke for it
            a._after_reserve()
            a._push(codec.decode(packets[6]), None, redo=a._redecode(codec, packets[6]))
        else:  # the callback played it while the playout thread decoded the next frame: decoded again
            a._push(codec.decode(packets[6]), None, redo=a._redecode(codec, packets[6]))
        assert a.counters["stretches"] == 1
        rest = np.zeros((len(concealed) - (a.period - 10), 2), np.float32)
        a._fifo.read_into(rest)
        np.testing.assert_allclose(rest, concealed[a.period - 10 :], atol=1e-6)
        ref_resampler.push(reference.decode(packets[6]))
        nxt = np.zeros((a._fifo.level, 2), np.float32)
        a._fifo.read_into(nxt)
        np.testing.assert_allclose(nxt, ref_resampler.pull(1.0)[: len(nxt)], atol=1e-6)
        # Nothing armed: an empty FIFO is an underrun as before.
        a._take_back_reserve()
        a.device._invoke(a.callback, mic, speaker, 2, 0, 0)
        assert a.counters["underruns"] == 1 and a.counters["reserve_used"] == 1
    finally:
        engine.link.close()
