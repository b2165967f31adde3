"""The audio engine in its own process (app/engine/audio_process.py), through whole mirror engines.

Real child processes, the real local socket, real Opus and AEC3 and the synthetic room: what the engine
sees of its audio when it lives in another process — packets both ways, statistics, control calls, the
benchmark recording, start-up errors and the process dying under it.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.audio.codec import CodecError
from app.audio.device import AudioDeviceError
from app.bench.recorder import StampRecorder
from app.engine.audio_process import JSON, MAX_MESSAGE, PACKET, AudioProcess, _json, main
from app.engine.engine import Engine
from app.engine.stage import GcPauses, freeze_startup_objects
from app.net.protocol import AudioCodecId, AudioPacket
from tests.engine.conftest import audio_stats as audio
from tests.engine.conftest import run_engine, small_settings, wait_for


def test_a_mirror_call_runs_through_the_audio_process(tmp_path: Path) -> None:
    record = tmp_path / "audio.json"
    settings = small_settings(
        tmp_path, audio={"talker": "markers", "markers_every_s": 0.25, "room_noise_dbfs": -80}
    )
    engine = Engine(settings, audio_record=record)
    proc = engine.audio
    assert isinstance(proc, AudioProcess)
    assert proc.proc.pid != os.getpid() and proc.proc.poll() is None
    stop, t, status = run_engine(engine)
    try:
        wait_for(lambda: audio(engine)["frames_decoded"] >= 300, what="3 s of audio")
        engine.set_privacy(True, "test")
        wait_for(lambda: audio(engine)["muted"], what="the mute to reach the audio process")
        engine.set_privacy(False, "test")
        wait_for(lambda: not audio(engine)["muted"], what="the unmute")
        assert proc.hold(True, 30.0) is True
        assert proc.hold(False) is False
        live = audio(engine)
    finally:
        stop.set()
        t.join(30)
    assert status == [0]
    assert live["playing"] and live["decode_errors"] == 0 and live["bad_packets"] == 0
    assert live["process"]["pid"] == proc.proc.pid
    assert live["process"]["packets_dropped_in"] == 0 and live["packets_not_sent"] == 0
    # Its final statistics outlive it; it is gone, and so is its end of the socket.
    assert proc.proc.returncode == 0
    final = audio(engine)
    assert final["frames_decoded"] >= live["frames_decoded"]
    # The benchmark recording was written by the audio process: markers emitted, and heard once each.
    doc = json.loads(record.read_text())
    emitted, heard = doc["markers_emitted_ns"], doc["markers_detected_ns"]
    assert len(heard) >= 8 and len(heard) <= len(emitted)
    for h in heard:
        assert any(0 < h - e < 200_000_000 for e in emitted)
    assert doc["blocks"], "echo statistics per frame"


def test_bad_packets_reaching_the_audio_process_are_counted(tmp_path: Path) -> None:
    engine = Engine(small_settings(tmp_path))
    assert isinstance(engine.audio, AudioProcess)
    port = engine.settings.network.listen_port
    stop, t, status = run_engine(engine)
    twin = engine.link.sock
    try:
        wait_for(lambda: audio(engine)["frames_decoded"] >= 100, what="audio flowing")
        for _ in range(10):
            pkts = (
                AudioPacket(engine.transport.next_seq(), 7, AudioCodecId.PCM16, 1, 480, (b"\x00" * 1920,)),
                AudioPacket(engine.transport.next_seq(), 7, AudioCodecId.OPUS, 1, 960, (b"\x01",)),
            )
            for pkt in pkts:
                twin.sendto(bytes(pkt), ("127.0.0.1", port))
        wait_for(lambda: audio(engine)["bad_packets"] == 20, what="the bad packets counted")
        decoded = audio(engine)["frames_decoded"]
        wait_for(lambda: audio(engine)["frames_decoded"] >= decoded + 100, what="audio after them")
    finally:
        stop.set()
        t.join(30)
    assert status == [0]


def test_a_dead_audio_process_is_started_again_while_video_goes_on(tmp_path: Path) -> None:
    rec = StampRecorder(psnr_every=0)
    engine = Engine(small_settings(tmp_path), sink_hook=rec)
    proc = engine.audio
    assert isinstance(proc, AudioProcess)
    stop, t, status = run_engine(engine)
    try:
        wait_for(lambda: audio(engine)["frames_decoded"] >= 50, what="audio flowing")
        engine.set_privacy(True, "test")
        first = proc.proc.pid
        # Ctrl-C and systemd's stop reach the whole process group: the engine's to handle, not the audio's.
        os.kill(first, signal.SIGINT)
        os.kill(first, signal.SIGTERM)
        decoded = audio(engine)["frames_decoded"]
        wait_for(lambda: audio(engine)["frames_decoded"] >= decoded + 50, what="audio after SIGINT/SIGTERM")
        assert proc.counters["restarts"] == 0 and proc.proc.poll() is None
        os.kill(first, signal.SIGKILL)
        shown = len(rec.records)
        wait_for(
            lambda: proc.counters["restarts"] == 1 and proc.proc.pid != first, what="a new audio process"
        )
        wait_for(lambda: audio(engine).get("frames_decoded", 0) >= 50, what="audio flowing again")
        again = audio(engine)
        assert len(rec.records) > shown, "video went on"
    finally:
        stop.set()
        t.join(30)
    assert status == [0] and engine.failure is None
    assert again["process"]["restarts"] == 1 and again["process"]["pid"] != first
    assert again["muted"], "the privacy mute survives the restart"


def test_a_missing_sound_card_is_a_start_up_error_from_the_audio_process(tmp_path: Path) -> None:
    settings = small_settings(tmp_path, audio={"backend": "portaudio", "input_device": "no such microphone"})
    with pytest.raises(AudioDeviceError, match="no such microphone"):
        Engine(settings)


def test_the_audio_process_drops_what_it_cannot_parse_and_stops_when_the_socket_closes(
    tmp_path: Path,
) -> None:
    """The audio process alone, on the test's end of its socket: garbage is dropped and counted, requests
    are answered, and it exits when the socket closes."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.engine.audio_process", str(theirs.fileno())], pass_fds=(theirs.fileno(),)
    )
    theirs.close()
    try:
        init = {
            "op": "init",
            "audio": small_settings(tmp_path).audio.model_dump(mode="json"),
            "room": {},
            "sending": False,
            "receiving": True,
            "record": None,
            "log_level": "warning",
        }
        ours.send(_json(init))
        ready = json.loads(ours.recv(MAX_MESSAGE)[1:])
        assert ready["op"] == "ready" and ready["device"] == "synthetic"
        ours.send(PACKET + (1).to_bytes(8, "little") + b"not a packet")
        ours.send(b"X junk")
        ours.send(JSON + b"{not json")
        ours.send(_json({"op": "no such op"}))
        ours.send(_json({"op": "stats", "id": 1}))
        reply = json.loads(ours.recv(MAX_MESSAGE)[1:])
        assert reply["op"] == "reply" and reply["id"] == 1
        assert reply["result"]["packets_unparsed"] == 1 and reply["result"]["bad_messages"] == 3
        ours.close()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_audio_process_refuses_to_run_without_its_socket() -> None:
    assert main([]) == 2
    assert main(["not-a-number"]) == 2


def test_start_up_objects_are_frozen_and_collections_are_timed() -> None:
    pauses = GcPauses().install()
    try:
        frozen = freeze_startup_objects()
        assert frozen == gc.get_freeze_count() > 1000
        gc.collect()
        snap = pauses.snapshot()
        assert snap["collections"][2] >= 2 and snap["max_pause_ms"][2] > 0.0
    finally:
        pauses.uninstall()
        gc.unfreeze()


def test_a_restart_that_fails_on_its_codec_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = Engine(small_settings(tmp_path))
    proc = engine.audio
    assert isinstance(proc, AudioProcess)
    real_spawn = proc._spawn
    failures: list[int] = []

    def spawn_failing_once(*, start: bool) -> Any:
        if not failures:
            failures.append(1)
            raise CodecError("libopus refused the encoder")
        return real_spawn(start=start)

    stop, t, status = run_engine(engine)
    try:
        wait_for(lambda: audio(engine)["frames_decoded"] >= 50, what="audio flowing")
        monkeypatch.setattr(proc, "_spawn", spawn_failing_once)
        os.kill(proc.proc.pid, signal.SIGKILL)
        wait_for(lambda: failures == [1] and proc.proc.poll() is None, what="a second attempt that runs")
        wait_for(lambda: audio(engine).get("frames_decoded", 0) >= 50, what="audio flowing again")
    finally:
        stop.set()
        t.join(30)
    assert status == [0] and proc.counters["restarts"] == 1
