"""The looped-file backend: pacing, seamless looping, conversion to yuv420p, and errors naming the file."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from app.video.capture.base import CaptureError, luma_view
from app.video.capture.file import FileCapture
from app.video.stamp import read_stamp

START_NS = 7_000_000_000


class FakeClock:
    def __init__(self) -> None:
        self.now = START_NS

    def __call__(self) -> int:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += round(seconds * 1e9)


def _write(path: Path, codec: str, frames: int, width: int = 320, height: int = 240) -> None:
    """``frames`` flat pictures whose luma is 10 × their number, so a decoded picture says which it is."""
    out = av.open(str(path), "w")
    stream = out.add_stream(codec, rate=30)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    if codec == "libx264":
        stream.options = {"preset": "ultrafast", "bf": "2", "qp": "0"}
    for i in range(frames):
        img = np.full((height * 3 // 2, width), 128, np.uint8)
        img[:height] = 10 * i + 10
        frame = av.VideoFrame.from_ndarray(img, format="yuv420p")
        frame.pts = i
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    out.close()


def _number(frame: av.VideoFrame) -> int:
    return round((float(luma_view(frame)[8:-8, 8:-8].mean()) - 10) / 10)


@pytest.fixture(scope="module")
def mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("file") / "clip.mp4"
    _write(path, "libx264", 20)
    return path


def test_loops_seamlessly_and_paces(mp4: Path) -> None:
    clock = FakeClock()
    cap = FileCapture(mp4, 320, 240, 30, clock=clock, sleep=clock.sleep)
    assert cap.name == "file clip.mp4 320x240@30"
    cap.open()
    frames = [cap.read() for _ in range(50)]
    cap.close()
    cap.close()
    # Every picture, in order, B-frames and all, then again from the start without a gap.
    assert [_number(f.frame) for f in frames] == [i % 20 for i in range(50)]
    assert [f.index for f in frames] == list(range(50))
    assert [f.captured_ns for f in frames] == [START_NS + k * 1_000_000_000 // 30 for k in range(50)]
    assert cap.loops == 2
    for f in frames:
        assert (f.frame.format.name, f.frame.width, f.frame.height) == ("yuv420p", 320, 240)
        assert f.frame.pts == f.index and f.frame.time_base == Fraction(1, 30)
        assert not f.slate


def test_converts_size_and_format(tmp_path: Path) -> None:
    path = tmp_path / "big.avi"
    _write(path, "mpeg4", 3, 640, 480)
    cap = FileCapture(path, 160, 120, 60)
    cap.open()
    cf = cap.read()
    cap.close()
    assert (cf.frame.format.name, cf.frame.width, cf.frame.height) == ("yuv420p", 160, 120)
    assert _number(cf.frame) == 0


def test_skips_ticks_not_pictures_when_behind(mp4: Path) -> None:
    clock = FakeClock()
    cap = FileCapture(mp4, 320, 240, 30, clock=clock, sleep=clock.sleep)
    cap.open()
    assert cap.read().index == 0
    clock.now += 200_000_000  # six ticks late
    late = cap.read()
    cap.close()
    assert late.index == 6
    assert cap.dropped == 5
    assert _number(late.frame) == 1


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(CaptureError, match=f"video file {missing} not found"):
        FileCapture(missing, 320, 240, 30).open()


def test_unreadable_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CaptureError, match=f"cannot read video file {junk}"):
        FileCapture(junk, 320, 240, 30).open()


def test_file_without_video(tmp_path: Path) -> None:
    path = tmp_path / "sound.wav"
    out = av.open(str(path), "w")
    stream = out.add_stream("pcm_s16le", rate=8000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
    frame.sample_rate = 8000
    for packet in stream.encode(frame):
        out.mux(packet)
    out.close()
    with pytest.raises(CaptureError, match=f"video file {path} has no video stream"):
        FileCapture(path, 320, 240, 30).open()


def test_read_before_open_raises(mp4: Path) -> None:
    with pytest.raises(CaptureError, match="not open"):
        FileCapture(mp4, 320, 240, 30).read()


def test_stamp_from_scene_survives_lossless_file(tmp_path: Path) -> None:
    from app.video.scene import Scene
    from app.video.stamp import Stamp

    path = tmp_path / "scene.mkv"
    scene = Scene(320, 240)
    out = av.open(str(path), "w")
    stream = out.add_stream("ffv1", rate=30)
    stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
    for i in range(3):
        frame = av.VideoFrame.from_ndarray(scene.render(i, 100 + i), format="yuv420p")
        frame.pts = i
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    out.close()
    cap = FileCapture(path, 320, 240, 30)
    cap.open()
    got = [read_stamp(luma_view(cap.read().frame)) for _ in range(4)]
    cap.close()
    assert got == [Stamp(0, 100), Stamp(1, 101), Stamp(2, 102), Stamp(0, 100)]
