"""The V4L2 camera backend without a camera: error messages, format choice, and decoding via a fake opener."""

from __future__ import annotations

import errno
import os
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from app.video.capture.base import CaptureError, luma_view
from app.video.capture.v4l2 import V4L2Capture, choose_input_format
from app.video.framing import FramedCapture, Framer, Framing
from app.video.scene import Scene, psnr_y
from app.video.stamp import Stamp, read_stamp


def test_auto_format_prefers_mjpeg_above_720p() -> None:
    assert choose_input_format("auto", 1920, 1080) == "mjpeg"
    assert choose_input_format("auto", 1280, 720) == "yuyv422"
    assert choose_input_format("auto", 640, 480) == "yuyv422"
    assert choose_input_format("nv12", 1920, 1080) == "nv12"


def test_low_latency_options() -> None:
    opts = V4L2Capture("/dev/video0", 1920, 1080, 60).options()
    assert opts["video_size"] == "1920x1080"
    assert opts["framerate"] == "60"
    assert opts["input_format"] == "mjpeg"
    assert opts["timestamps"] == "default"
    assert opts["fflags"] == "nobuffer"


def test_missing_device_with_no_devices(tmp_path: Path) -> None:
    cap = V4L2Capture(str(tmp_path / "video0"), 640, 480, 30, dev_root=tmp_path)
    with pytest.raises(CaptureError) as err:
        cap.open()
    assert str(err.value) == f"camera {tmp_path / 'video0'} not found; devices present: none"


def test_missing_device_lists_devices_present(tmp_path: Path) -> None:
    (tmp_path / "video2").touch()
    (tmp_path / "v4l" / "by-id").mkdir(parents=True)
    (tmp_path / "v4l" / "by-id" / "usb-Cam-video-index0").symlink_to(tmp_path / "video2")
    cap = V4L2Capture(str(tmp_path / "video0"), 640, 480, 30, dev_root=tmp_path)
    with pytest.raises(CaptureError, match=r"not found; devices present: .*video2, .*usb-Cam-video-index0"):
        cap.open()


def test_dangling_by_id_link_is_missing(tmp_path: Path) -> None:
    link = tmp_path / "usb-Gone-video-index0"
    link.symlink_to(tmp_path / "video9")
    with pytest.raises(CaptureError, match=f"camera {link} not found"):
        V4L2Capture(str(link), 640, 480, 30, dev_root=tmp_path).open()


def _raising(exc: BaseException) -> Any:
    def opener(path: str, **kwargs: Any) -> Any:
        raise exc

    return opener


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (OSError(errno.EBUSY, os.strerror(errno.EBUSY)), r"is busy \(another process has it open\)"),
        (av.error.OSError(errno.EBUSY, "Device or resource busy", "/dev/video0"), "is busy"),
        (av.error.PermissionError(errno.EACCES, "Permission denied", "/dev/video0"), "permission denied"),
        (PermissionError(errno.EACCES, os.strerror(errno.EACCES)), "permission denied"),
        (OSError(errno.EPERM, os.strerror(errno.EPERM)), "permission denied"),
        (FileNotFoundError(errno.ENOENT, "gone"), "not found; devices present"),
        (OSError(errno.EIO, os.strerror(errno.EIO)), "could not be opened"),
    ],
)
def test_open_errors_are_mapped(tmp_path: Path, exc: BaseException, expected: str) -> None:
    node = tmp_path / "video0"
    node.touch()
    cap = V4L2Capture(str(node), 640, 480, 30, opener=_raising(exc), dev_root=tmp_path)
    with pytest.raises(CaptureError, match=expected) as err:
        cap.open()
    assert str(node) in str(err.value)


def test_non_device_file_through_real_ffmpeg(tmp_path: Path) -> None:
    # A regular file reaches FFmpeg's v4l2 demuxer, whose VIDIOC_QUERYCAP ioctl fails with ENOTTY.
    node = tmp_path / "video0"
    node.write_bytes(b"not a camera")
    with pytest.raises(CaptureError, match="is not a usable video capture device") as err:
        V4L2Capture(str(node), 640, 480, 30, dev_root=tmp_path).open()
    assert "devices present" in str(err.value)


def test_by_id_link_is_resolved(tmp_path: Path) -> None:
    node = tmp_path / "video3"
    node.touch()
    link = tmp_path / "usb-Cam-video-index0"
    link.symlink_to(node)
    seen: list[str] = []

    def opener(path: str, **kwargs: Any) -> Any:
        seen.append(path)
        raise OSError(errno.EBUSY, "busy")

    with pytest.raises(CaptureError, match=f"camera {link} \\({node}\\) is busy"):
        V4L2Capture(str(link), 640, 480, 30, opener=opener, dev_root=tmp_path).open()
    assert seen == [str(node)]


def _write_video(path: Path, codec: str, pix_fmt: str, width: int, height: int, frames: int) -> Scene:
    scene = Scene(width, height, seed=5)
    out = av.open(str(path), "w")
    stream = out.add_stream(codec, rate=30)
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(scene.render(i, i), format="yuv420p").reformat(format=pix_fmt)
        frame.pts = i
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    out.close()
    return scene


def _file_opener(path: Path, seen: dict[str, Any]) -> Any:
    def opener(node: str, *, format: str, options: dict[str, str]) -> Any:
        seen.update(node=node, format=format, options=options)
        return av.open(str(path))

    return opener


@pytest.mark.parametrize(
    ("codec", "pix_fmt", "min_psnr"), [("mjpeg", "yuvj422p", 28.0), ("rawvideo", "yuyv422", 38.0)]
)
def test_decodes_and_converts_to_yuv420p(tmp_path: Path, codec: str, pix_fmt: str, min_psnr: float) -> None:
    video = tmp_path / "camera.mkv"
    scene = _write_video(video, codec, pix_fmt, 320, 240, 6)
    (tmp_path / "video0").touch()
    seen: dict[str, Any] = {}
    cap = V4L2Capture(
        str(tmp_path / "video0"), 320, 240, 30, opener=_file_opener(video, seen), dev_root=tmp_path
    )
    cap.open()
    assert seen["format"] == "video4linux2"
    assert seen["options"]["input_format"] == "yuyv422"
    for i in range(6):
        cf = cap.read()
        assert cf.index == i
        assert (cf.frame.format.name, cf.frame.width, cf.frame.height) == ("yuv420p", 320, 240)
        assert cf.frame.pts == i and cf.frame.time_base == Fraction(1, 30)
        y = luma_view(cf.frame)
        assert read_stamp(y) == Stamp(i, i)
        assert psnr_y(y, scene.render(i, i)[:240]) > min_psnr
    # The file's timestamps are not CLOCK_MONOTONIC, so capture times are read times.
    assert cap._mono_ts is False
    with pytest.raises(CaptureError, match="stopped delivering pictures"):
        cap.read()
    cap.close()
    cap.close()


def test_scales_to_the_configured_size(tmp_path: Path) -> None:
    video = tmp_path / "camera.mkv"
    _write_video(video, "mjpeg", "yuvj422p", 640, 480, 2)
    (tmp_path / "video0").touch()
    cap = V4L2Capture(
        str(tmp_path / "video0"), 320, 240, 30, opener=_file_opener(video, {}), dev_root=tmp_path
    )
    cap.open()
    cf = cap.read()
    assert (cf.frame.width, cf.frame.height, cf.frame.format.name) == (320, 240, "yuv420p")
    cap.close()


def test_monotonic_packet_times_are_used(tmp_path: Path) -> None:
    cap = V4L2Capture("/dev/video0", 320, 240, 30)

    class Packet:
        time_base = Fraction(1, 1_000_000)

        def __init__(self, pts: int) -> None:
            self.pts = pts

    now = 500_000_000_000
    assert cap._captured_ns(Packet((now - 3_000_000) // 1000), now) == now - 3_000_000
    # Once decided, the choice sticks.
    assert cap._captured_ns(Packet((now - 1_000_000) // 1000), now + 5) == now - 1_000_000


def test_wall_clock_packet_times_fall_back_to_read_time() -> None:
    cap = V4L2Capture("/dev/video0", 320, 240, 30)

    class Packet:
        time_base = Fraction(1, 1_000_000)
        pts = 1_700_000_000_000_000  # 2023 in µs since the epoch: not CLOCK_MONOTONIC

    assert cap._captured_ns(Packet(), 42_000_000_000) == 42_000_000_000


def test_read_before_open_raises() -> None:
    with pytest.raises(CaptureError, match="not open"):
        V4L2Capture("/dev/video0", 320, 240, 30).read()


@pytest.mark.hardware
@pytest.mark.skipif(not os.path.exists("/dev/video0"), reason="no camera at /dev/video0")
def test_real_camera_capture() -> None:
    cap = V4L2Capture("/dev/video0", 640, 480, 30)
    cap.open()
    try:
        frames = [cap.read() for _ in range(10)]
    finally:
        cap.close()
    assert [f.index for f in frames] == list(range(10))
    assert all(f.frame.format.name == "yuv420p" and f.frame.width == 640 for f in frames)
    assert all(isinstance(luma_view(f.frame), np.ndarray) for f in frames)
    times = [f.captured_ns for f in frames]
    assert times == sorted(times)


def _camera(tmp_path: Path, codec: str, pix_fmt: str) -> tuple[V4L2Capture, Scene]:
    video = tmp_path / "camera.mkv"
    scene = _write_video(video, codec, pix_fmt, 320, 240, 8)
    (tmp_path / "video0").touch()
    fmt = "mjpeg" if codec == "mjpeg" else "yuyv422"
    cap = V4L2Capture(
        str(tmp_path / "video0"),
        320,
        240,
        30,
        input_format=fmt,
        opener=_file_opener(video, {}),
        dev_root=tmp_path,
    )
    return cap, scene


def test_a_crop_is_folded_into_the_mjpeg_conversion(tmp_path: Path) -> None:
    cap, scene = _camera(tmp_path, "mjpeg", "yuvj422p")
    assert cap.set_crop((64, 48, 192, 144))
    cap.open()
    for i in range(3):
        cf = cap.read()
        # The middle of the scene at its own pixels (the far side's display scales it to the screen).
        assert (cf.frame.format.name, cf.frame.width, cf.frame.height) == ("yuv420p", 192, 144)
        assert cf.index == i and cf.frame.pts == i and cf.frame.time_base == Fraction(1, 30)
        want = scene.render(i, i)[48 : 48 + 144, 64 : 64 + 192]
        assert psnr_y(luma_view(cf.frame), want) > 28.0
        # The picture before the crop is kept for snapshots.
        assert (cap.last_decoded.width, cap.last_decoded.format.name) == (320, "yuvj422p")
    cap.set_crop(None)
    assert cap.read().frame.width == 320  # The whole picture again.
    cap.close()


def test_a_raw_camera_does_not_fold_and_a_bad_crop_is_refused(tmp_path: Path) -> None:
    cap, _ = _camera(tmp_path, "rawvideo", "yuyv422")
    assert not cap.set_crop((64, 48, 192, 144))
    mjpeg = V4L2Capture("/dev/video0", 320, 240, 30, input_format="mjpeg")
    with pytest.raises(ValueError, match=r"crop \(200, 0, 192, 144\) is not inside the 320x240 picture"):
        mjpeg.set_crop((200, 0, 192, 144))


def test_framed_capture_folds_the_zoom_and_snapshots_the_whole_picture(tmp_path: Path) -> None:
    cap, scene = _camera(tmp_path, "mjpeg", "yuvj422p")
    framed = FramedCapture(cap, Framer(Framing(zoom=1.25, mirror=True), 320, 240))
    assert framed.folded and framed.path == "camera+numpy"
    assert cap._crop == (32, 24, 256, 192)
    framed.open()
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(framed.snapshot(timeout_s=30)))
    t.start()
    deadline = time.monotonic() + 30
    while not framed._want_snapshot.is_set():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    cf = framed.read()
    t.join(30)
    assert (cf.frame.width, cf.frame.height) == (256, 192)  # The crop, mirrored by the framer.
    snap = got[0]
    assert snap is not None and (snap.width, snap.height) == (320, 240)
    assert snap.framing == Framing(zoom=1.25, mirror=True)
    # The whole picture as the camera sent it: its stamp band reads, and it matches the scene.
    stamp = read_stamp(snap.yuv[:240])
    assert stamp is not None
    assert psnr_y(snap.yuv[:240], scene.render(stamp.index, stamp.captured_us)[:240]) > 28.0
    # Turned on its side: not foldable; the framer does it all, and the camera converts whole pictures.
    framed.set_framing(Framing(zoom=1.25, rotation=90))
    framed.read()
    assert not framed.folded and framed.path == "filter" and cap._crop is None
    framed.close()
