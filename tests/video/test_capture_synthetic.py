"""The synthetic camera and the shared capture plumbing: pacing, drops, stamps, factory, device listing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.settings import CaptureSettings, VideoSettings
from app.video.capture import create_capture, list_video_devices
from app.video.capture.base import CaptureError, Pacer, copy_into_frame, describe_devices, luma_view
from app.video.capture.file import FileCapture
from app.video.capture.synthetic import SyntheticCapture
from app.video.capture.v4l2 import V4L2Capture
from app.video.scene import Scene
from app.video.stamp import Stamp, read_stamp

START_NS = 5_000_000_000


class FakeClock:
    """A CLOCK_MONOTONIC stand-in: time moves only when someone sleeps or the test advances it."""

    def __init__(self, start_ns: int = START_NS) -> None:
        self.now = start_ns
        self.sleeps: list[float] = []

    def __call__(self) -> int:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += round(seconds * 1e9)

    def advance(self, ns: int) -> None:
        self.now += ns


def test_pacer_ticks_on_schedule_without_drift() -> None:
    clock = FakeClock()
    pacer = Pacer(60, clock=clock, sleep=clock.sleep)
    pacer.start()
    got = [pacer.wait() for _ in range(121)]
    assert [t for t, _ in got] == list(range(121))
    # Tick k is due at start + k/60 s exactly (integer ns maths: no accumulated drift).
    assert [ns for _, ns in got] == [START_NS + k * 1_000_000_000 // 60 for k in range(121)]
    assert pacer.dropped == 0


def test_pacer_skips_to_current_tick_when_behind() -> None:
    clock = FakeClock()
    pacer = Pacer(50, clock=clock, sleep=clock.sleep)  # 20 ms ticks
    pacer.start()
    assert pacer.wait() == (0, START_NS)
    clock.advance(30_000_000)  # tick 1 is 10 ms late: less than one interval, so it is delivered late
    assert pacer.wait() == (1, START_NS + 30_000_000)
    clock.advance(75_000_000)  # now 105 ms: tick 2 (40 ms) is 65 ms late; the current tick is 5
    tick, ns = pacer.wait()
    assert (tick, ns) == (5, START_NS + 105_000_000)
    assert pacer.dropped == 3
    assert pacer.wait() == (6, START_NS + 120_000_000)


def test_pacer_rejects_bad_rate() -> None:
    with pytest.raises(ValueError, match="fps"):
        Pacer(0)


def test_synthetic_frames_paced_and_stamped() -> None:
    clock = FakeClock()
    cap = SyntheticCapture(320, 240, 30, seed=4, clock=clock, sleep=clock.sleep)
    assert cap.name == "synthetic 320x240@30"
    cap.open()
    frames = [cap.read() for _ in range(5)]
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert [f.captured_ns for f in frames] == [START_NS + k * 1_000_000_000 // 30 for k in range(5)]
    scene = Scene(320, 240, seed=4)
    for f in frames:
        assert (f.frame.width, f.frame.height, f.frame.format.name) == (320, 240, "yuv420p")
        assert not f.slate
        assert f.frame.pts == f.index
        assert read_stamp(luma_view(f.frame)) == Stamp(f.index, f.captured_ns // 1000)
        assert np.array_equal(f.frame.to_ndarray(), scene.render(f.index, f.captured_ns // 1000))
    cap.close()
    cap.close()


def test_synthetic_drops_ticks_when_reader_is_slow() -> None:
    clock = FakeClock()
    cap = SyntheticCapture(160, 120, 60, clock=clock, sleep=clock.sleep)
    cap.open()
    assert cap.read().index == 0
    clock.advance(100_000_000)  # the reader went away for 100 ms: six ticks due
    late = cap.read()
    assert late.index == 6
    assert cap.dropped == 5
    assert read_stamp(luma_view(late.frame)) == Stamp(6, late.captured_ns // 1000)
    assert cap.read().index == 7


def test_synthetic_read_before_open_raises() -> None:
    cap = SyntheticCapture(160, 120, 60)
    with pytest.raises(CaptureError, match="not open"):
        cap.read()
    cap.open()
    cap.close()
    with pytest.raises(CaptureError, match="not open"):
        cap.read()


def test_synthetic_real_clock_smoke() -> None:
    cap = SyntheticCapture(160, 120, 120)
    cap.open()
    frames = [cap.read() for _ in range(6)]
    cap.close()
    indices = [f.index for f in frames]
    stamps = [f.captured_ns for f in frames]
    assert indices == sorted(set(indices))
    assert stamps == sorted(stamps)


def test_copy_into_frame_matches_from_ndarray() -> None:
    import av

    img = Scene(322, 182).render(9, 9)
    frame = av.VideoFrame(322, 182, "yuv420p")
    copy_into_frame(frame, img)
    assert np.array_equal(frame.to_ndarray(), img)
    assert luma_view(frame).shape == (182, 322)


def test_factory_builds_each_backend(tmp_path: Path) -> None:
    video = VideoSettings(width=320, height=240, fps=30)
    assert isinstance(create_capture(CaptureSettings(backend="synthetic"), video), SyntheticCapture)
    v4l2 = create_capture(CaptureSettings(backend="v4l2", device="/dev/video7"), video)
    assert isinstance(v4l2, V4L2Capture)
    assert v4l2.input_format == "yuyv422"
    f = create_capture(CaptureSettings(backend="file", file=tmp_path / "x.mp4"), video)
    assert isinstance(f, FileCapture)
    with pytest.raises(ValueError, match=r"capture\.file"):
        create_capture(CaptureSettings(backend="file"), video)


def test_factory_rejects_unknown_backend() -> None:
    settings = CaptureSettings.model_construct(backend="gopro")
    with pytest.raises(ValueError, match="No capture backend named 'gopro'"):
        create_capture(settings, VideoSettings())


def test_list_video_devices(tmp_path: Path) -> None:
    assert list_video_devices(tmp_path) == []
    assert describe_devices(tmp_path) == "none"
    assert list_video_devices(tmp_path / "missing") == []
    for name in ("video10", "video2", "video0", "videocodec", "null"):
        (tmp_path / name).touch()
    by_id = tmp_path / "v4l" / "by-id"
    by_id.mkdir(parents=True)
    (by_id / "usb-Logitech_C920-video-index0").symlink_to(tmp_path / "video2")
    assert list_video_devices(tmp_path) == [
        str(tmp_path / "video0"),
        str(tmp_path / "video2"),
        str(tmp_path / "video10"),
        str(by_id / "usb-Logitech_C920-video-index0"),
    ]
    assert describe_devices(tmp_path).startswith(f"{tmp_path / 'video0'}, ")
