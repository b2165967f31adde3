"""WebRTC's AEC3 through AudioProcessing: it cancels a synthetic room's echo, keeps the near talker, and
delays the microphone signal by exactly the latency it declares."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from app.audio.measure import erle_db, estimate_delay_ms, speech_like
from app.audio.processing import AudioProcessing
from app.audio.room import RoomConfig
from app.audio.synthetic import SyntheticDevice


def stereo(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(x[:, None], 2, axis=1), dtype=np.float32)


@pytest.mark.parametrize(
    ("kwargs", "samples"),
    [
        ({"echo_cancellation": True}, 430),
        ({"echo_cancellation": False, "noise_suppression": True}, 334),
        ({"echo_cancellation": True, "noise_suppression": True}, 718),
    ],
)
def test_declared_latency_is_the_measured_one(kwargs, samples):
    apm = AudioProcessing(**kwargs)
    assert apm.latency_samples == samples
    x = stereo(speech_like(3, 7))
    out = np.concatenate(
        [apm.process(x[i : i + 480], np.zeros((480, 2), np.float32)) for i in range(0, len(x) - 479, 480)]
    )
    lag = estimate_delay_ms(x[: len(out), 0], out[:, 0], 30) * 48
    assert lag == pytest.approx(samples, abs=0.6)


def test_all_off_passes_the_microphone_through():
    apm = AudioProcessing(echo_cancellation=False)
    assert apm.latency_samples == 0 and apm.latency_ms == 0.0
    x = stereo(speech_like(0.1, 1))[:480]
    assert np.array_equal(apm.process(x, x), x)


def test_non_finite_samples_become_silence_and_are_counted():
    apm = AudioProcessing()
    bad = np.full((480, 2), np.nan, np.float32)
    bad[5] = np.inf
    out = apm.process(bad, np.zeros((480, 2), np.float32))
    assert np.all(np.isfinite(out))
    assert apm.stats()["non_finite_frames"] == 1
    with pytest.raises(ValueError, match="shape"):
        apm.process(np.zeros((240, 2), np.float32), np.zeros((480, 2), np.float32))


def run_room(config: RoomConfig, far: np.ndarray, apm: AudioProcessing):
    """Play ``far`` into a synthetic room on its virtual clock (5 ms periods); return the microphone and
    processed frames with their first sample numbers."""
    device = SyntheticDevice(config, period=240, realtime=False, latency_ms=5.0)
    mic_f = np.zeros((480, 2), np.float32)
    spk_f = np.zeros((480, 2), np.float32)
    mics: list[np.ndarray] = []
    outs: list[np.ndarray] = []
    firsts: list[int] = []
    done = threading.Event()

    def callback(mic, speaker, index, _capture_ns, _playout_ns):
        # One 5 ms speaker period per callback; the microphone's 10 ms block with every second one, its
        # reference the two speaker periods filled meanwhile (as the engine pairs them).
        p = len(speaker)
        s = index * p
        if s + p > len(far):
            speaker.fill(0.0)
            done.set()
            return
        speaker[:] = far[s : s + p]
        part = index % 2
        spk_f[part * p : (part + 1) * p] = speaker
        if len(mic):
            firsts.append(s + p - len(mic))
            mic_f[:] = mic
            mics.append(mic_f.copy())
            outs.append(apm.process(mic_f, spk_f))

    device.start(callback)
    assert done.wait(120)
    lag = apm.latency_samples
    truths = [device.truth(f - lag, 480) if f >= lag else None for f in firsts[: len(outs)]]
    device.stop()
    return np.concatenate(mics), np.concatenate(outs), truths


def test_echo_of_a_40_ms_300_ms_rt60_room_is_cancelled_by_30_db_after_a_second():
    far = stereo(speech_like(8, 11))
    room = RoomConfig(echo_delay_ms=40, rt60_ms=300, talker="silence", noise_dbfs=-70, seed=2)
    mic, out, _ = run_room(room, far, AudioProcessing(stream_delay_ms=50))
    s = 48_000
    # Over far-end single talk after the first second: AEC3 converges within about a second.
    assert erle_db(mic[s:], out[s:]) >= 30.0


def test_double_talk_keeps_the_near_talker_within_3_db():
    far = stereo(speech_like(8, 11))
    room = RoomConfig(talker="speech", talk_pattern="always", noise_dbfs=-70, seed=3)
    _mic, out, truths = run_room(room, far, AudioProcessing(stream_delay_ms=50))
    dot = nn = 0.0
    for k, t in enumerate(truths):
        if k < 200 or t is None:
            continue
        frame = out[k * 480 : (k + 1) * 480]
        dot += float(np.sum(frame * t.near))
        nn += float(np.sum(t.near * t.near))
    assert -20 * np.log10(dot / nn) <= 3.0
