"""The resilient capture (slate while the camera is gone, reopen on hot-plug or timer) and the slate."""

from __future__ import annotations

import itertools
import logging

import av
import numpy as np
import pytest

from app.hotplug import DeviceEvent, FakeMonitor
from app.video.capture.base import CaptureError, luma_view
from app.video.capture.resilient import ResilientCapture
from app.video.frames import CapturedFrame
from app.video.slate import render_slate
from app.video.stamp import Stamp, read_stamp, stamp_rows

W, H, FPS = 320, 240, 50
INTERVAL_NS = 20_000_000
DEVICE = "/dev/video0"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000_000

    def __call__(self) -> int:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += round(seconds * 1e9)


class FakeCamera:
    """A camera that can be unplugged (``fail_after`` reads) and plugged back (``available``)."""

    def __init__(self, clock: FakeClock, *, fail_after: int | None = None, available: bool = True) -> None:
        self.name = "fake camera"
        self.clock = clock
        self.fail_after = fail_after
        self.available = available
        self.is_open = False
        self.opens = 0
        self.closes = 0
        self.reads = 0
        self._index = 0

    def open(self) -> None:
        if not self.available:
            raise CaptureError(f"camera {DEVICE} not found; devices present: none")
        self.is_open = True
        self.opens += 1
        self._index = 0

    def read(self) -> CapturedFrame:
        assert self.is_open
        if self.fail_after is not None and self.reads >= self.fail_after:
            self.available = False
            self.fail_after = None
            raise CaptureError(f"camera {DEVICE} stopped delivering pictures (No such device)")
        self.reads += 1
        self.clock.now += INTERVAL_NS
        frame = av.VideoFrame(W, H, "yuv420p")
        index = self._index
        self._index += 1
        return CapturedFrame(frame, index, self.clock.now)

    def close(self) -> None:
        if self.is_open:
            self.closes += 1
        self.is_open = False


def _make(
    camera: FakeCamera, clock: FakeClock, monitor: FakeMonitor | None = None, interval_s: float = 2.0
) -> ResilientCapture:
    return ResilientCapture(
        camera,
        width=W,
        height=H,
        fps=FPS,
        device_label=DEVICE,
        monitor=monitor,
        reopen_interval_s=interval_s,
        clock=clock,
        sleep=clock.sleep,
    )


def _assert_increasing(frames: list[CapturedFrame]) -> None:
    indices = [f.index for f in frames]
    assert all(b > a for a, b in itertools.pairwise(indices)), indices


def test_passes_camera_frames_through() -> None:
    clock = FakeClock()
    camera = FakeCamera(clock)
    cap = _make(camera, clock)
    cap.open()
    frames = [cap.read() for _ in range(5)]
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert not any(f.slate for f in frames)
    assert not cap.showing_slate
    assert cap.counters == {"camera_available": True, "camera_losses": 0, "reopens": 0, "slate_frames": 0}
    assert cap.name == "fake camera"


def test_unplug_mid_call_switches_to_paced_stamped_slate(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    camera = FakeCamera(clock, fail_after=3)
    cap = _make(camera, clock)
    cap.open()
    with caplog.at_level(logging.INFO, logger="app.video.capture.resilient"):
        frames = [cap.read() for _ in range(10)]
    assert [f.slate for f in frames] == [False] * 3 + [True] * 7
    _assert_increasing(frames)
    assert frames[3].index == 3
    slates = frames[3:]
    # Paced at the configured rate against the injected clock.
    assert [b.captured_ns - a.captured_ns for a, b in itertools.pairwise(slates)] == [INTERVAL_NS] * 6
    for f in slates:
        assert (f.frame.format.name, f.frame.width, f.frame.height) == ("yuv420p", W, H)
        assert read_stamp(luma_view(f.frame)) == Stamp(f.index, f.captured_ns // 1000)
        assert f.frame.pts == f.index
    assert cap.showing_slate
    assert cap.camera_losses == 1
    assert cap.slate_frames == 7
    assert camera.closes == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert DEVICE in warnings[0].getMessage()


def test_hotplug_add_reopens_at_once() -> None:
    clock = FakeClock()
    camera = FakeCamera(clock, fail_after=2)
    monitor = FakeMonitor()
    cap = _make(camera, clock, monitor, interval_s=60.0)
    cap.open()
    assert monitor.started
    frames = [cap.read() for _ in range(5)]
    assert [f.slate for f in frames] == [False, False, True, True, True]
    camera.available = True
    # Events for other devices change nothing.
    monitor.inject(DeviceEvent("add", "/dev/video4", ("/dev/v4l/by-id/usb-Other-video-index0",)))
    assert cap.read().slate
    assert camera.opens == 1
    monitor.inject(DeviceEvent("add", DEVICE, ()))
    frames += [cap.read() for _ in range(3)]
    assert [f.slate for f in frames[-3:]] == [False, False, False]
    _assert_increasing(frames)
    assert cap.reopens == 1
    assert camera.opens == 2
    assert not cap.showing_slate
    assert cap.counters["camera_available"] is True


def test_periodic_retry_without_monitor(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    camera = FakeCamera(clock, fail_after=1)
    cap = _make(camera, clock, None, interval_s=0.1)  # 5 slate frames between retries
    cap.open()
    with caplog.at_level(logging.INFO, logger="app.video.capture.resilient"):
        frames = [cap.read() for _ in range(13)]
        assert all(f.slate for f in frames[1:])
        # Two retries failed in those 12 slate frames, quietly.
        assert camera.opens == 1
        camera.available = True
        frames += [cap.read() for _ in range(8)]
    assert frames[-1].slate is False
    assert cap.reopens == 1
    _assert_increasing(frames)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert any("is back" in r.getMessage() for r in caplog.records)


def test_retries_fail_quietly_until_the_camera_returns() -> None:
    clock = FakeClock()
    camera = FakeCamera(clock, fail_after=0)
    opens: list[int] = []
    real_open = camera.open

    def counting_open() -> None:
        opens.append(clock.now)
        real_open()

    camera.open = counting_open
    cap = _make(camera, clock, None, interval_s=0.1)
    cap.open()
    for _ in range(30):
        assert cap.read().slate
    # One open at start, then one retry per 100 ms of slate (30 frames × 20 ms = 600 ms).
    assert 5 <= len(opens) <= 7
    assert cap.camera_losses == 1


def test_camera_missing_at_start_starts_on_slate() -> None:
    clock = FakeClock()
    camera = FakeCamera(clock, available=False)
    monitor = FakeMonitor()
    cap = _make(camera, clock, monitor)
    cap.open()
    assert cap.showing_slate
    first = cap.read()
    assert first.slate and first.index == 0
    camera.available = True
    monitor.inject(DeviceEvent("add", "/dev/video0", ("/dev/v4l/by-id/usb-Cam-video-index0",)))
    back = cap.read()
    assert not back.slate and back.index == 1
    assert cap.counters == {"camera_available": True, "camera_losses": 1, "reopens": 1, "slate_frames": 1}


def test_remove_event_switches_before_the_read_fails() -> None:
    clock = FakeClock()
    camera = FakeCamera(clock)
    monitor = FakeMonitor()
    cap = _make(camera, clock, monitor)
    cap.open()
    cap.read()
    monitor.inject(DeviceEvent("remove", DEVICE, ()))
    reads = camera.reads
    assert cap.read().slate
    assert camera.reads == reads
    assert cap.camera_losses == 1


def test_late_remove_event_does_not_drop_the_reopened_camera() -> None:
    clock = FakeClock()
    camera = FakeCamera(clock, fail_after=1)
    monitor = FakeMonitor()
    cap = _make(camera, clock, monitor, interval_s=60.0)
    cap.open()
    assert not cap.read().slate
    assert cap.read().slate  # the read failed first...
    monitor.inject(DeviceEvent("remove", DEVICE, ()))  # ...then udev's "remove" arrives
    assert cap.read().slate
    camera.available = True
    monitor.inject(DeviceEvent("add", DEVICE, ()))
    assert [cap.read().slate for _ in range(3)] == [False, False, False]
    assert cap.camera_losses == 1


def test_slate_drops_ticks_when_reader_is_slow() -> None:
    clock = FakeClock()
    camera = FakeCamera(clock, available=False)
    cap = _make(camera, clock, None, interval_s=60.0)
    cap.open()
    a = cap.read()
    clock.now += 5 * INTERVAL_NS + 1
    b = cap.read()
    assert b.index - a.index == 5


def test_close_is_idempotent_and_stops_everything() -> None:
    clock = FakeClock()
    camera = FakeCamera(clock)
    monitor = FakeMonitor()
    cap = _make(camera, clock, monitor)
    with pytest.raises(CaptureError, match="not open"):
        cap.read()
    cap.open()
    cap.read()
    cap.close()
    cap.close()
    assert camera.closes == 1
    assert not monitor.started
    assert not cap.showing_slate


# The slate itself.


def test_slate_shape_and_read_only() -> None:
    slate = render_slate(640, 360, "Camera unavailable", "/dev/video0")
    assert slate.shape == (540, 640) and slate.dtype == np.uint8
    assert not slate.flags.writeable
    assert render_slate(640, 360, "Camera unavailable", "/dev/video0") is slate
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(slate), format="yuv420p")
    assert (frame.width, frame.height) == (640, 360)


def test_slate_is_dark_with_bright_centred_text() -> None:
    slate = render_slate(1280, 720, "Camera unavailable", "/dev/v4l/by-id/usb-Cam-video-index0")
    y = slate[:720].astype(int)
    assert np.median(y) < 40
    middle = y[250:470, 100:1180]
    assert middle.max() > 180
    # Centred: the bright pixels balance left and right of the middle.
    cols = np.nonzero((y > 120).any(axis=0))[0]
    assert abs((cols.min() + cols.max()) / 2 - 640) < 20
    # The stamp band is left plain.
    assert (y[: stamp_rows(1280)] == y[0, 0]).all()


@pytest.mark.parametrize(("width", "height"), [(160, 120), (320, 240), (2880, 1620)])
def test_slate_fits_any_size_even_with_long_names(width: int, height: int) -> None:
    slate = render_slate(width, height, "Camera unavailable", "/dev/v4l/by-id/" + "x" * 200)
    assert slate.shape == (height * 3 // 2, width)
    y = slate[:height]
    assert y.max() > 120


def test_slate_rejects_odd_sizes() -> None:
    with pytest.raises(ValueError, match="even"):
        render_slate(321, 240, "a", "b")
