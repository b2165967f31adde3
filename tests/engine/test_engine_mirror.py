"""A whole engine in this process, sending to itself over loopback: every stage, real codecs, real UDP.

The "mirror" (peer address = own address) exercises capture → encode → packetize → UDP → assemble → jitter
buffer → decode → sink in one engine; the control socket, bad input and camera loss are tested on it.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from app.bench.recorder import StampRecorder
from app.control import request
from app.engine.engine import Engine
from app.hotplug import DeviceEvent, FakeMonitor
from app.net.protocol import Keepalive, KeyframeRequest, MediaPacket
from app.video.capture.base import CaptureError
from app.video.capture.synthetic import SyntheticCapture
from app.video.frames import CapturedFrame
from tests.engine.conftest import run_engine, small_settings, wait_for


def test_mirror_shows_every_frame_intact(tmp_path: Path) -> None:
    rec = StampRecorder(psnr_every=5)
    engine = Engine(small_settings(tmp_path), sink_hook=rec)
    stop, t, status = run_engine(engine)
    try:
        wait_for(lambda: len(rec.records) >= 45, what="45 decoded frames")
        resp = request(engine.settings.engine.control_socket, "stats")
        assert resp["ok"]
        assert resp["status"]["peer_connected"] is True
        assert resp["encode"]["encoder"] == "libx264"
        assert resp["network"]["malformed"] == 0
        assert resp["decode"]["decode_errors"] == 0
        assert resp["decode"]["capture_to_decoded_ms"]["count"] > 0
        assert request(engine.settings.engine.control_socket, "set_bitrate", kbps=400) == {
            "ok": True,
            "kbps": 400,
        }
        bad = request(engine.settings.engine.control_socket, "set_bitrate", kbps="fast")
        assert bad["ok"] is False and "kbps" in bad["error"]
        # Matching the far side's light, switched live (no bridge here: it matches nothing yet).
        match = request(engine.settings.engine.control_socket, "lighting_match", on=True)
        assert match["ok"] and match["lighting"]["match_far_side"] is True
        bad = request(engine.settings.engine.control_socket, "lighting_match", on="yes")
        assert bad == {"ok": False, "error": '"on" must be true or false'}
    finally:
        stop.set()
        t.join(30)
    assert status == [0]
    assert not any(r.corrupt for r in rec.records)
    indices = [r.index for r in rec.records]
    assert indices == sorted(indices)
    psnrs = [r.psnr_db for r in rec.records if r.psnr_db is not None]
    assert psnrs and min(psnrs) > 30
    assert all(r.decoded_ns / 1e3 > r.captured_us for r in rec.records)


def test_hostile_datagrams_are_dropped_and_counted(tmp_path: Path) -> None:
    """Garbage, truncation, oversize, replays and strangers: counted, and the pictures keep coming intact."""
    rec = StampRecorder(psnr_every=0)
    settings = small_settings(tmp_path)
    engine = Engine(settings, sink_hook=rec)
    port = settings.network.listen_port
    stop, t, status = run_engine(engine)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.1", 0))
    # The engine's own socket is the only one with the twin's address: use it to inject from the "twin".
    twin = engine.link.sock
    try:
        wait_for(lambda: len(rec.records) >= 10, what="first frames")
        media = MediaPacket(
            seq=1,
            stream_id=0,
            frame_id=1,
            fragment_index=0,
            fragment_count=1,
            frame_size=3,
            capture_us=1,
            payload=b"abc",
        )
        rnd = os.urandom(200_000)
        for i in range(300):
            twin.sendto(rnd[i * 500 : i * 500 + (i % 97) + 1], ("127.0.0.1", port))  # garbage
            twin.sendto(bytes(media)[: 5 + i % 20], ("127.0.0.1", port))  # truncated
            stranger.sendto(bytes(KeyframeRequest(seq=i, stream_id=0, request_id=i)), ("127.0.0.1", port))
        twin.sendto(rnd[:60_000], ("127.0.0.1", port))  # oversized garbage
        old = bytes(Keepalive(seq=0, sent_us=1, session_id=engine.network.session_id))
        for _ in range(50):
            twin.sendto(old, ("127.0.0.1", port))  # a replayed early packet
        before = len(rec.records)
        wait_for(lambda: len(rec.records) >= before + 30, what="frames after the flood")
        stats = engine.stats()
    finally:
        stranger.close()
        stop.set()
        t.join(30)
    net = stats["network"]
    assert net["malformed"] >= 600
    assert net["strangers"] == 300
    assert net["replays"] >= 49
    assert net["keyframe_requests_received"] == 0  # the strangers' requests were never parsed
    assert status == [0]
    assert not any(r.corrupt for r in rec.records)


class UnpluggableCamera:
    """A synthetic camera that can be "unplugged": read and open raise CaptureError while it is."""

    def __init__(self) -> None:
        self.inner = SyntheticCapture(320, 240, 30)
        self.name = "fake v4l2 camera"
        self.plugged = threading.Event()
        self.plugged.set()

    def open(self) -> None:
        if not self.plugged.is_set():
            raise CaptureError("camera /dev/video7 not found; devices present: none")
        self.inner.open()

    def read(self) -> CapturedFrame:
        if not self.plugged.is_set():
            raise CaptureError("camera /dev/video7 was unplugged")
        return self.inner.read()

    def close(self) -> None:
        self.inner.close()


def test_camera_unplug_sends_slate_and_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    camera = UnpluggableCamera()
    monitor = FakeMonitor()
    monkeypatch.setattr("app.engine.engine.create_capture", lambda cap, video: camera)
    monkeypatch.setattr("app.engine.engine.create_monitor", lambda kind: monitor)
    # Periodic retry far away, so recovery below comes from the hot-plug event.
    settings = small_settings(
        tmp_path, capture={"backend": "v4l2", "device": "/dev/video7", "reopen_interval_s": 60.0}
    )
    rec = StampRecorder(psnr_every=0)
    engine = Engine(settings, sink_hook=rec)
    sock = settings.engine.control_socket
    stop, t, status = run_engine(engine)
    try:
        wait_for(lambda: len(rec.records) >= 10, what="camera frames")
        assert request(sock, "status")["camera_available"] is True
        camera.plugged.clear()
        wait_for(lambda: request(sock, "status")["camera_available"] is False, what="slate")
        shown = len(rec.records)
        wait_for(lambda: len(rec.records) >= shown + 15, what="slate frames reaching the peer")
        camera.plugged.set()
        monitor.inject(DeviceEvent("add", "/dev/video7"))
        wait_for(lambda: request(sock, "status")["camera_available"] is True, what="camera back")
        stats = request(sock, "stats")
    finally:
        stop.set()
        t.join(30)
    assert status == [0]
    assert stats["capture"]["camera_losses"] == 1
    assert stats["capture"]["reopens"] == 1
    assert stats["capture"]["slate_frames"] >= 15
    assert not any(r.corrupt for r in rec.records)


def test_sdl_display_stage_shows_frames_headless(tmp_path: Path) -> None:
    """The SDL sink runs on the display thread inside the engine (offscreen driver: no screen needed)."""
    settings = small_settings(
        tmp_path, display={"backend": "sdl", "sdl_driver": "offscreen", "fullscreen": False}
    )
    engine = Engine(settings)
    stop, t, status = run_engine(engine)
    try:
        wait_for(lambda: engine.display is not None and engine.display.frames >= 20, what="frames on SDL")
    finally:
        stop.set()
        t.join(30)
    assert status == [0]


def test_a_zoom_goes_out_at_the_crops_size_and_is_decoded_there(tmp_path: Path) -> None:
    """Framing changed mid-call: the encoder reopens at the crop's size (a keyframe), and the receiving
    decoder and sink follow without a decode error."""
    sizes: list[tuple[int, int]] = []
    engine = Engine(
        small_settings(tmp_path), sink_hook=lambda df: sizes.append((df.frame.width, df.frame.height))
    )
    stop, t, status = run_engine(engine)
    sock = engine.settings.engine.control_socket
    try:
        wait_for(lambda: len(sizes) >= 10, what="pictures at the full size")
        width, height = sizes[-1]
        resp = request(sock, "set_framing", zoom=2.0, mirror=True)
        assert resp["ok"] and resp["framing"]["zoom"] == 2.0
        wait_for(lambda: sizes.count((width // 2, height // 2)) >= 10, what="pictures at the crop's size")
        stats = request(sock, "stats")
        assert stats["decode"]["decode_errors"] == 0 and stats["network"]["malformed"] == 0
        assert request(sock, "set_framing", zoom=1.0, mirror=False)["ok"]
        n = len(sizes)
        wait_for(lambda: sizes[n:].count((width, height)) >= 10, what="the full size again")
    finally:
        stop.set()
        t.join(30)
    assert status == [0]
