"""Camera controls without a camera: the kernel's ioctl numbers and struct layouts, decoding, enumeration
against a simulated camera, range errors, and the error paths of a missing node and of /dev/null."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import pytest

from app.settings import CaptureSettings
from app.video.controls import (
    CAPABILITY,
    CONTROL,
    KNOWN,
    QUERYCTRL,
    QUERYMENU,
    V4L2_CTRL_FLAG_NEXT_CTRL,
    VIDIOC_G_CTRL,
    VIDIOC_QUERYCAP,
    VIDIOC_QUERYCTRL,
    VIDIOC_QUERYMENU,
    VIDIOC_S_CTRL,
    Control,
    ControlsError,
    ControlValueError,
    QueryCtrl,
    SyntheticControls,
    V4L2Controls,
    open_controls,
    slug,
)


def test_ioctl_numbers_are_the_kernels() -> None:
    # Values of the macros in linux/videodev2.h, as a C program compiled on x86-64 prints them.
    assert VIDIOC_QUERYCAP == 0x80685600
    assert VIDIOC_QUERYCTRL == 0xC0445624
    assert VIDIOC_G_CTRL == 0xC008561B
    assert VIDIOC_S_CTRL == 0xC008561C
    assert VIDIOC_QUERYMENU == 0xC02C5625


def test_struct_sizes_are_the_kernels() -> None:
    assert (CAPABILITY.size, QUERYCTRL.size, CONTROL.size, QUERYMENU.size) == (104, 68, 8, 44)


def test_known_control_ids() -> None:
    assert KNOWN["exposure_auto"] == 0x009A0901
    assert KNOWN["exposure_absolute"] == 0x009A0902
    assert KNOWN["gain"] == 0x00980913
    assert KNOWN["white_balance_auto"] == 0x0098090C
    assert KNOWN["white_balance_temperature"] == 0x0098091A
    assert KNOWN["focus_auto"] == 0x009A090C
    assert KNOWN["focus_absolute"] == 0x009A090A
    assert KNOWN["power_line_frequency"] == 0x00980918
    assert KNOWN["zoom_absolute"] == 0x009A090D


def test_queryctrl_request_golden_bytes() -> None:
    assert bytes(QueryCtrl.request(V4L2_CTRL_FLAG_NEXT_CTRL)) == b"\x00\x00\x00\x80" + bytes(64)
    assert bytes(QueryCtrl.request(0x009A0902)) == b"\x02\x09\x9a\x00" + bytes(64)


def test_decode_a_queryctrl_reply() -> None:
    reply = (
        b"\x02\x09\x9a\x00"  # id: V4L2_CID_EXPOSURE_ABSOLUTE
        + b"\x01\x00\x00\x00"  # type: integer
        + b"Exposure Time, Absolute".ljust(32, b"\0")
        + b"\x03\x00\x00\x00"  # minimum 3
        + b"\xff\x07\x00\x00"  # maximum 2047
        + b"\x01\x00\x00\x00"  # step 1
        + b"\xfa\x00\x00\x00"  # default 250
        + b"\x10\x00\x00\x00"  # flags: inactive
        + bytes(8)
    )
    qc = QueryCtrl.decode(reply)
    assert qc == QueryCtrl(0x009A0902, 1, "Exposure Time, Absolute", 3, 2047, 1, 250, 0x10)


def test_decode_negative_ranges() -> None:
    reply = struct.pack(
        "<II32siiiiI2I", KNOWN["pan_absolute"], 1, b"Pan, Absolute", -36000, 36000, 3600, 0, 0, 0, 0
    )
    qc = QueryCtrl.decode(reply)
    assert (qc.minimum, qc.maximum, qc.step) == (-36000, 36000, 3600)


def test_slug() -> None:
    assert slug("Backlight Compensation") == "backlight_compensation"
    assert slug("White Balance, Automatic") == "white_balance_automatic"
    assert slug("!!!") == "control"


class FakeCamera:
    """A UVC camera as its driver answers the ioctls: queryctrl (with NEXT_CTRL unless told otherwise),
    querymenu with a hole, g/s_ctrl."""

    def __init__(self, *, next_ctrl: bool = True, caps: int = 0x84200001, controls: bool = True) -> None:
        self.next_ctrl = next_ctrl
        self.caps = caps
        self.ctrls: dict[int, tuple[int, str, int, int, int, int, int]] = {}
        if controls:
            self.ctrls = {
                0x00980900: (1, "Brightness", 0, 255, 1, 128, 0),
                0x00980913: (1, "Gain", 0, 255, 1, 0, 0),
                0x00980918: (3, "Power Line Frequency", 0, 2, 1, 2, 0),
                0x0098091C: (1, "Backlight Compensation", 0, 1, 1, 0, 0),
                0x009A0001: (6, "Camera Controls", 0, 0, 0, 0, 0),  # a control class: not listed
                0x009A0901: (3, "Auto Exposure", 0, 3, 1, 3, 0),
                0x009A0902: (1, "Exposure Time, Absolute", 3, 2047, 1, 250, 0x10),
                0x009A0903: (2, "Exposure, Dynamic Framerate", 0, 1, 1, 0, 0x01),  # disabled: not listed
            }
        self.menus = {
            0x00980918: {0: "Disabled", 1: "50 Hz", 2: "60 Hz"},
            0x009A0901: {1: "Manual Mode", 3: "Aperture Priority Mode"},  # 0 and 2 are holes
        }
        self.values = {cid: spec[5] for cid, spec in self.ctrls.items()}
        self.calls: list[int] = []

    def __call__(self, fd: int, request: int, buf: bytearray) -> None:
        self.calls.append(request)
        if request == VIDIOC_QUERYCAP:
            buf[:] = CAPABILITY.pack(b"uvcvideo", b"HD Pro Webcam C920", b"usb-1", 0x60100, self.caps,
                                     self.caps & 0x7FFFFFFF, 0, 0, 0)  # fmt: skip
        elif request == VIDIOC_QUERYCTRL:
            cid = struct.unpack_from("<I", buf)[0]
            if cid & V4L2_CTRL_FLAG_NEXT_CTRL:
                if not self.next_ctrl:
                    raise OSError(errno.EINVAL, "Invalid argument")
                later = sorted(c for c in self.ctrls if c > cid & ~V4L2_CTRL_FLAG_NEXT_CTRL)
                if not later:
                    raise OSError(errno.EINVAL, "Invalid argument")
                cid = later[0]
            if cid not in self.ctrls:
                raise OSError(errno.EINVAL, "Invalid argument")
            t, name, lo, hi, step, default, flags = self.ctrls[cid]
            buf[:] = QUERYCTRL.pack(cid, t, name.encode(), lo, hi, step, default, flags, 0, 0)
        elif request == VIDIOC_QUERYMENU:
            cid, index = struct.unpack_from("<II", buf)
            label = self.menus.get(cid, {}).get(index)
            if label is None:
                raise OSError(errno.EINVAL, "Invalid argument")
            buf[:] = QUERYMENU.pack(cid, index, label.encode(), 0)
        elif request == VIDIOC_G_CTRL:
            cid = struct.unpack_from("<I", buf)[0]
            if cid not in self.values:
                raise OSError(errno.EINVAL, "Invalid argument")
            buf[:] = CONTROL.pack(cid, self.values[cid])
        elif request == VIDIOC_S_CTRL:
            cid, value = CONTROL.unpack(bytes(buf))
            if cid == 0x009A0902 and self.values[0x009A0901] != 1:
                raise OSError(errno.EACCES, "Permission denied")
            self.values[cid] = value
            if cid == 0x009A0901:
                t, name, lo, hi, step, default, flags = self.ctrls[0x009A0902]
                flags = flags & ~0x10 if value == 1 else flags | 0x10
                self.ctrls[0x009A0902] = (t, name, lo, hi, step, default, flags)
        else:
            raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")


def test_enumeration_lists_present_and_absent() -> None:
    cam = FakeCamera()
    controls = V4L2Controls("/dev/video0", ioctl=cam, fd=99)
    listing = {c.name: c for c in controls.controls()}
    present = {n for n, c in listing.items() if c.present}
    assert present == {
        "brightness", "gain", "power_line_frequency", "backlight_compensation", "exposure_auto",
        "exposure_absolute",
    }  # fmt: skip
    absent = {n for n, c in listing.items() if not c.present}
    assert absent == set(KNOWN) - present
    assert "white_balance_temperature" in absent and "focus_auto" in absent
    plf = listing["power_line_frequency"]
    assert plf.kind == "menu" and dict(plf.menu) == {0: "Disabled", 1: "50 Hz", 2: "60 Hz"} and plf.value == 2
    exposure = listing["exposure_auto"]
    assert dict(exposure.menu) == {1: "Manual Mode", 3: "Aperture Priority Mode"}
    assert listing["exposure_absolute"].inactive and listing["exposure_absolute"].value == 250
    assert controls.card == "HD Pro Webcam C920"
    assert listing["focus_auto"].to_json() == {"name": "focus_auto", "present": False}


def test_enumeration_without_next_ctrl_asks_for_known_ids() -> None:
    cam = FakeCamera(next_ctrl=False)
    controls = V4L2Controls("/dev/video0", ioctl=cam, fd=99)
    present = {c.name for c in controls.controls() if c.present}
    # Only known ids can be found this way: the backlight control is not among them.
    assert present == {"brightness", "gain", "power_line_frequency", "exposure_auto", "exposure_absolute"}


def test_a_camera_without_controls() -> None:
    controls = V4L2Controls("/dev/video0", ioctl=FakeCamera(controls=False), fd=99)
    listing = controls.controls()
    assert listing and not any(c.present for c in listing)
    with pytest.raises(ControlValueError, match="the camera /dev/video0 has no gain control"):
        controls.set("gain", 3)


def test_set_checks_range_and_order() -> None:
    cam = FakeCamera()
    controls = V4L2Controls("/dev/video0", ioctl=cam, fd=99)
    assert controls.set("gain", 40) == 40 and cam.values[0x00980913] == 40
    with pytest.raises(
        ControlValueError, match=r"gain = 300 is out of range for /dev/video0 \(allowed: 0 to 255\)"
    ):
        controls.set("gain", 300)
    with pytest.raises(ControlValueError, match="allowed: one of 1 Manual Mode, 3 Aperture Priority Mode"):
        controls.set("exposure_auto", 2)  # a hole in the menu
    # While auto exposure is on the driver refuses the absolute value; once manual, it takes it.
    with pytest.raises(ControlValueError, match="inactive while its automatic mode is on"):
        controls.set("exposure_absolute", 500)
    assert controls.set("exposure_auto", 1) == 1
    assert controls.set("exposure_absolute", 500) == 500
    assert controls.get("exposure_absolute") == 500
    assert not {c.name: c for c in controls.controls()}["exposure_absolute"].inactive


def test_metadata_node_is_not_a_capture_device() -> None:
    with pytest.raises(ControlsError, match="not a video capture node"):
        V4L2Controls("/dev/video1", ioctl=FakeCamera(caps=0x84A00000 | 0x00800000), fd=99)


def test_dev_null_is_not_a_v4l2_camera() -> None:
    with pytest.raises(ControlsError, match=r"/dev/null is not a V4L2 camera \(Inappropriate ioctl"):
        V4L2Controls("/dev/null")


def test_missing_camera(tmp_path: Path) -> None:
    (tmp_path / "video7").touch()
    with pytest.raises(ControlsError) as err:
        V4L2Controls(str(tmp_path / "video0"), dev_root=tmp_path)
    assert str(err.value) == f"camera {tmp_path / 'video0'} not found; devices present: {tmp_path / 'video7'}"


def test_dev_null_fd_is_closed_after_the_error() -> None:
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(ControlsError):
        V4L2Controls("/dev/null")
    assert set(os.listdir("/proc/self/fd")) == before


def test_synthetic_controls_behave_like_a_webcam() -> None:
    controls = SyntheticControls()
    listing = {c.name: c for c in controls.controls()}
    assert all(listing[name].present for name in KNOWN)
    assert listing["white_balance_temperature"].inactive
    assert controls.set("white_balance_auto", 0) == 0
    assert not {c.name: c for c in controls.controls()}["white_balance_temperature"].inactive
    with pytest.raises(ControlValueError, match="allowed: 2000 to 6500"):
        controls.set("white_balance_temperature", 9000)
    with pytest.raises(ControlValueError, match="step 5"):
        controls.set("focus_absolute", 3)
    assert controls.set("focus_absolute", 30) == 30 and controls.get("focus_absolute") == 30


def test_open_controls_by_backend(tmp_path: Path) -> None:
    assert isinstance(open_controls(CaptureSettings(backend="synthetic")), SyntheticControls)
    file_controls = open_controls(CaptureSettings(backend="file", file=tmp_path / "a.mp4"))
    assert not any(c.present for c in file_controls.controls())
    with pytest.raises(ControlsError, match="not found"):
        open_controls(CaptureSettings(backend="v4l2", device=str(tmp_path / "video0")))


def test_control_check_messages() -> None:
    boolean = Control("focus_auto", KNOWN["focus_auto"], "boolean", "Focus", 0, 1, 1, 1, 1)
    with pytest.raises(
        ControlValueError, match=r"focus_auto = 2 is out of range for cam \(allowed: 0 or 1\)"
    ):
        boolean.check(2, "cam")
    read_only = Control("gain", KNOWN["gain"], "integer", "Gain", 0, 10, 1, 0, 0, 0x4)
    with pytest.raises(ControlValueError, match="read-only"):
        read_only.check(1, "cam")
