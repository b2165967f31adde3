"""Camera controls: exposure, gain, white balance, focus, power-line frequency — listed, read and set.

Theory of operation
-------------------
A :class:`CameraControls` is the hardware boundary of the camera's settings, beside the capture source that
reads its pictures. Two backends ship in the package: :class:`V4L2Controls` talks to a Video4Linux2 camera
with the kernel's own ioctls (``fcntl.ioctl`` on a second file descriptor of the same node, which V4L2
allows while another process streams from it), and :class:`SyntheticControls` is an in-memory camera with
the ranges of a typical UVC webcam (or none at all, for the file backend and for tests of a camera without
controls). :func:`open_controls` chooses by ``capture.backend``.

The V4L2 backend enumerates with ``VIDIOC_QUERYCTRL`` and ``V4L2_CTRL_FLAG_NEXT_CTRL`` (each reply names the
next control's id), falls back to asking for each known id when the driver does not support enumeration,
reads menus with ``VIDIOC_QUERYMENU`` and values with ``VIDIOC_G_CTRL``, and sets with ``VIDIOC_S_CTRL``.
Controls have stable names here (:data:`KNOWN`: ``exposure_auto``, ``exposure_absolute``, ``gain``, ...)
because drivers' own names changed across kernel versions ("Exposure, Auto" became "Auto Exposure"); other
controls a camera offers are listed under a slug of the driver's name. A known control the camera lacks is
listed with ``present=False`` — never an error. A value out of range is :class:`ControlValueError` naming
the range; a device that is missing, forbidden or not a V4L2 camera (``ENOTTY``: /dev/null) is
:class:`ControlsError` with a message a person can act on.

Units are the camera's: ``exposure_absolute`` in 100 µs, ``white_balance_temperature`` in kelvin, ``gain``
and ``focus_absolute`` in the driver's steps. Menus are integers (``exposure_auto``: 0 auto, 1 manual,
2 shutter priority, 3 aperture priority — UVC's "auto" is 3; ``power_line_frequency``: 0 disabled, 1 50 Hz,
2 60 Hz, 3 auto).

Threads: one object is used from one thread at a time (the calibration, or the capture thread when it
reapplies the stored values after the camera is reopened). The ioctl function is injectable, so tests
simulate a camera without one.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import logging
import os
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from app.video.capture.base import describe_devices, resolve_device

if TYPE_CHECKING:
    from app.settings import CaptureSettings

log = logging.getLogger(__name__)


# -- the kernel's ABI (linux/videodev2.h, linux/v4l2-controls.h) ----------------------------------------


def _ioc(direction: int, kind: str, nr: int, size: int) -> int:
    """The kernel's ``_IOC(dir, type, nr, size)`` request number (asm-generic layout: x86, arm, riscv)."""
    return (direction << 30) | (size << 16) | (ord(kind) << 8) | nr


_IOC_READ: Final = 2
_IOC_READ_WRITE: Final = 3

CAPABILITY: Final = struct.Struct("<16s32s32sIII3I")
"""``struct v4l2_capability``: driver, card, bus_info, version, capabilities, device_caps, reserved[3]."""
QUERYCTRL: Final = struct.Struct("<II32siiiiI2I")
"""``struct v4l2_queryctrl``: id, type, name, minimum, maximum, step, default_value, flags, reserved[2]."""
CONTROL: Final = struct.Struct("<Ii")
"""``struct v4l2_control``: id, value."""
QUERYMENU: Final = struct.Struct("<II32sI")
"""``struct v4l2_querymenu`` (packed): id, index, union {name[32], __s64 value}, reserved."""

VIDIOC_QUERYCAP: Final = _ioc(_IOC_READ, "V", 0, CAPABILITY.size)
VIDIOC_G_CTRL: Final = _ioc(_IOC_READ_WRITE, "V", 27, CONTROL.size)
VIDIOC_S_CTRL: Final = _ioc(_IOC_READ_WRITE, "V", 28, CONTROL.size)
VIDIOC_QUERYCTRL: Final = _ioc(_IOC_READ_WRITE, "V", 36, QUERYCTRL.size)
VIDIOC_QUERYMENU: Final = _ioc(_IOC_READ_WRITE, "V", 37, QUERYMENU.size)

V4L2_CAP_VIDEO_CAPTURE: Final = 0x00000001
V4L2_CAP_VIDEO_CAPTURE_MPLANE: Final = 0x00001000
V4L2_CAP_DEVICE_CAPS: Final = 0x80000000
V4L2_CTRL_FLAG_NEXT_CTRL: Final = 0x80000000

FLAG_DISABLED: Final = 0x0001
FLAG_GRABBED: Final = 0x0002
FLAG_READ_ONLY: Final = 0x0004
FLAG_INACTIVE: Final = 0x0010
FLAG_WRITE_ONLY: Final = 0x0040

TYPE_NAMES: Final = {
    1: "integer",
    2: "boolean",
    3: "menu",
    4: "button",
    5: "integer64",
    6: "class",
    7: "string",
    8: "bitmask",
    9: "integer_menu",
}
"""``enum v4l2_ctrl_type`` values we know; others are listed as "type 0x…" and not read."""
_READABLE_TYPES: Final = {"integer", "boolean", "menu", "integer_menu", "bitmask"}

_CID_USER: Final = 0x00980900
_CID_CAMERA: Final = 0x009A0900
KNOWN: Final[Mapping[str, int]] = {
    "exposure_auto": _CID_CAMERA + 1,
    "exposure_absolute": _CID_CAMERA + 2,
    "gain": _CID_USER + 19,
    "white_balance_auto": _CID_USER + 12,
    "white_balance_temperature": _CID_USER + 26,
    "focus_auto": _CID_CAMERA + 12,
    "focus_absolute": _CID_CAMERA + 10,
    "power_line_frequency": _CID_USER + 24,
    "zoom_absolute": _CID_CAMERA + 13,
    "pan_absolute": _CID_CAMERA + 8,
    "tilt_absolute": _CID_CAMERA + 9,
    "brightness": _CID_USER + 0,
}
"""The controls calibration cares about, by our stable name → V4L2 control id, in the order they are set
(an "auto" switch before the absolute value it unlocks)."""
_NAME_OF: Final = {cid: name for name, cid in KNOWN.items()}
_KNOWN_KIND: Final = {
    "exposure_auto": "menu",
    "white_balance_auto": "boolean",
    "focus_auto": "boolean",
    "power_line_frequency": "menu",
}
_MAX_CONTROLS: Final = 1024
"""Enumeration stops here: a driver that ignores NEXT_CTRL would otherwise loop for ever."""
_MAX_MENU: Final = 64


class ControlsError(Exception):
    """The camera's controls cannot be reached: missing, forbidden, or not a V4L2 camera. Names the device."""


class ControlValueError(ControlsError):
    """A control cannot take a value: absent, read-only, out of range (the message names the range)."""


@dataclass(frozen=True, slots=True)
class Control:
    """One control as the camera describes it, with its current ``value`` (None when unreadable or absent).

    ``kind`` is "integer", "boolean", "menu", "integer_menu", "button", "integer64", "string", "bitmask" or
    "type 0x…"; ``menu`` maps index → label (integer menus: the number as text). ``present`` is False for a
    known control the camera lacks (then only ``name`` and ``cid`` mean anything).
    """

    name: str
    cid: int
    kind: str
    label: str = ""
    minimum: int = 0
    maximum: int = 0
    step: int = 1
    default: int = 0
    value: int | None = None
    flags: int = 0
    menu: Mapping[int, str] = field(default_factory=dict)
    present: bool = True

    @property
    def read_only(self) -> bool:
        return bool(self.flags & FLAG_READ_ONLY)

    @property
    def inactive(self) -> bool:
        """The driver says it has no effect now (e.g. ``exposure_absolute`` while auto exposure is on)."""
        return bool(self.flags & FLAG_INACTIVE)

    def range_text(self) -> str:
        """The allowed values in words, for messages: "0 to 255", "0 to 3: 0 auto, 1 manual, ..."."""
        if self.kind in ("menu", "integer_menu") and self.menu:
            items = ", ".join(f"{i} {label}" for i, label in sorted(self.menu.items()))
            return f"one of {items}"
        if self.kind == "boolean":
            return "0 or 1"
        step = f", step {self.step}" if self.step > 1 else ""
        return f"{self.minimum} to {self.maximum}{step}"

    def check(self, value: int, device: str) -> None:
        """Raise :class:`ControlValueError` unless ``value`` is one this control takes."""
        if not self.present:
            raise ControlValueError(f"the camera {device} has no {self.name} control")
        if self.read_only:
            raise ControlValueError(f"{self.name} on {device} is read-only")
        if self.kind not in ("integer", "boolean", "menu", "integer_menu"):
            raise ControlValueError(f"{self.name} on {device} is a {self.kind} control; only numbers are set")
        ok = self.minimum <= value <= self.maximum
        if ok and self.kind in ("menu", "integer_menu") and self.menu:
            ok = value in self.menu
        elif ok and self.step > 1:
            ok = (value - self.minimum) % self.step == 0
        if not ok:
            raise ControlValueError(
                f"{self.name} = {value} is out of range for {device} (allowed: {self.range_text()})"
            )

    def to_json(self) -> dict[str, Any]:
        """A JSON object for reports and the admin panel."""
        if not self.present:
            return {"name": self.name, "present": False}
        return {
            "name": self.name,
            "present": True,
            "label": self.label,
            "kind": self.kind,
            "min": self.minimum,
            "max": self.maximum,
            "step": self.step,
            "default": self.default,
            "value": self.value,
            "read_only": self.read_only,
            "inactive": self.inactive,
            "menu": {str(k): v for k, v in sorted(self.menu.items())},
        }


class CameraControls(Protocol):
    """A camera's adjustable controls (one thread at a time)."""

    device: str
    """The camera, for messages: "/dev/video0", "synthetic"."""

    def controls(self) -> list[Control]:
        """Every control the camera offers, then each :data:`KNOWN` one it lacks (``present=False``)."""
        ...

    def get(self, name: str) -> int:
        """The current value of control ``name``. :class:`ControlValueError` when absent or unreadable."""
        ...

    def set(self, name: str, value: int) -> int:
        """Set control ``name``; return the value read back. :class:`ControlValueError` when it cannot."""
        ...

    def close(self) -> None:
        """Release the device (idempotent)."""
        ...


def slug(label: str) -> str:
    """A driver's control name as a key: "Backlight Compensation" → "backlight_compensation"."""
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_") or "control"


def _named(controls: dict[str, Control], name: str, device: str) -> Control:
    """The control called ``name``; ControlValueError naming the camera when it has none (both backends)."""
    control = controls.get(name)
    if control is None:
        raise ControlValueError(f"the camera {device} has no {name} control")
    return control


def _readable(value: int | None, name: str, device: str) -> int:
    """A control's current value; ControlValueError when the camera cannot read it (both backends)."""
    if value is None:
        raise ControlValueError(f"{name} on {device} cannot be read")
    return value


def _absent(present: list[Control]) -> list[Control]:
    have = {c.cid for c in present}
    return [
        Control(name, cid, _KNOWN_KIND.get(name, "integer"), present=False)
        for name, cid in KNOWN.items()
        if cid not in have
    ]


# -- the synthetic camera's controls ----------------------------------------------------------------------

_EXPOSURE_MENU: Final = {1: "manual", 3: "aperture priority"}
_PLF_MENU: Final = {0: "disabled", 1: "50 Hz", 2: "60 Hz"}
_WB: Final = (2000, 6500, 1, 4000, 4000)
_EXPOSURE: Final = (3, 2047, 1, 250, 250)
_INACTIVE: Final = FLAG_INACTIVE


def typical_uvc_controls() -> list[Control]:
    """The controls and ranges of a typical 1080p UVC webcam (a Logitech C920's), current value = default."""
    u, c = _CID_USER, _CID_CAMERA
    return [
        Control("brightness", u + 0, "integer", "Brightness", 0, 255, 1, 128, 128),
        Control("white_balance_auto", u + 12, "boolean", "White Balance, Automatic", 0, 1, 1, 1, 1),
        Control("gain", u + 19, "integer", "Gain", 0, 255, 1, 0, 0),
        Control(
            "power_line_frequency", u + 24, "menu", "Power Line Frequency", 0, 2, 1, 2, 2, menu=_PLF_MENU
        ),
        Control("white_balance_temperature", u + 26, "integer", "White Balance Temperature", *_WB, _INACTIVE),
        Control("exposure_auto", c + 1, "menu", "Auto Exposure", 0, 3, 1, 3, 3, menu=_EXPOSURE_MENU),
        Control("exposure_absolute", c + 2, "integer", "Exposure Time, Absolute", *_EXPOSURE, _INACTIVE),
        Control("pan_absolute", c + 8, "integer", "Pan, Absolute", -36000, 36000, 3600, 0, 0),
        Control("tilt_absolute", c + 9, "integer", "Tilt, Absolute", -36000, 36000, 3600, 0, 0),
        Control("focus_absolute", c + 10, "integer", "Focus, Absolute", 0, 250, 5, 0, 0, _INACTIVE),
        Control("focus_auto", c + 12, "boolean", "Focus, Automatic Continuous", 0, 1, 1, 1, 1),
        Control("zoom_absolute", c + 13, "integer", "Zoom, Absolute", 100, 500, 1, 100, 100),
    ]


_UNLOCKS: Final[Mapping[str, tuple[str, int]]] = {
    "exposure_auto": ("exposure_absolute", 1),
    "white_balance_auto": ("white_balance_temperature", 0),
    "focus_auto": ("focus_absolute", 0),
}
"""An auto switch → (the absolute control it makes active, the switch's value that does). As UVC drivers
report it."""


class SyntheticControls:
    """An in-memory camera's controls (the synthetic and file capture backends, and tests).

    ``controls`` defaults to :func:`typical_uvc_controls`; pass ``()`` for a camera with none. Values are
    checked exactly as the V4L2 backend checks them; switching an "auto" control marks its absolute partner
    active or inactive, as drivers do.
    """

    def __init__(
        self, device: str = "synthetic", controls: list[Control] | tuple[Control, ...] | None = None
    ) -> None:
        self.device = device
        items = typical_uvc_controls() if controls is None else list(controls)
        self._controls = {c.name: c for c in items}

    def controls(self) -> list[Control]:
        present = list(self._controls.values())
        return present + _absent(present)

    def _find(self, name: str) -> Control:
        return _named(self._controls, name, self.device)

    def get(self, name: str) -> int:
        return _readable(self._find(name).value, name, self.device)

    def set(self, name: str, value: int) -> int:
        control = self._find(name)
        control.check(value, self.device)
        self._controls[name] = _replace(control, value=value)
        partner = _UNLOCKS.get(name)
        if partner is not None and partner[0] in self._controls:
            other = self._controls[partner[0]]
            flags = other.flags & ~FLAG_INACTIVE if value == partner[1] else other.flags | FLAG_INACTIVE
            self._controls[partner[0]] = _replace(other, flags=flags)
        return value

    def close(self) -> None:
        pass


def _replace(control: Control, **changes: Any) -> Control:
    return dataclasses.replace(control, **changes)


# -- V4L2 ---------------------------------------------------------------------------------------------------

IoctlFn = Callable[[int, int, bytearray], None]
"""``ioctl(fd, request, buffer)``: the kernel reads and writes ``buffer`` in place; OSError on failure."""


def _kernel_ioctl(fd: int, request: int, buf: bytearray) -> None:
    fcntl.ioctl(fd, request, buf, True)


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class QueryCtrl:
    """A decoded ``struct v4l2_queryctrl``."""

    id: int
    type: int
    name: str
    minimum: int
    maximum: int
    step: int
    default: int
    flags: int

    @classmethod
    def decode(cls, buf: bytes | bytearray) -> QueryCtrl:
        cid, ctype, name, lo, hi, step, default, flags, _r0, _r1 = QUERYCTRL.unpack(bytes(buf))
        return cls(cid, ctype, _text(name), lo, hi, step, default, flags)

    @staticmethod
    def request(cid: int) -> bytearray:
        """The buffer asking for control ``cid`` (or, with NEXT_CTRL set, for the one after it)."""
        return bytearray(QUERYCTRL.pack(cid, 0, b"", 0, 0, 0, 0, 0, 0, 0))


class V4L2Controls:
    """A V4L2 camera's controls through ioctls on its device node.

    Opens ``device`` (a /dev/videoN node or a /dev/v4l/by-id link) read-write and non-blocking and checks
    with ``VIDIOC_QUERYCAP`` that it is a video capture device; :class:`ControlsError` otherwise. ``ioctl``
    and ``fd`` are injectable: a test passes both and no device is opened.
    """

    def __init__(
        self,
        device: str,
        *,
        ioctl: IoctlFn = _kernel_ioctl,
        fd: int | None = None,
        dev_root: Path = Path("/dev"),
    ) -> None:
        self.device = device
        self._ioctl = ioctl
        self._dev_root = dev_root
        self._owns_fd = fd is None
        self._fd = self._open() if fd is None else fd
        self.driver = ""
        self.card = ""
        try:
            self._check_capability()
        except ControlsError:
            self.close()
            raise
        self._cache: dict[str, Control] | None = None

    def _open(self) -> int:
        node = resolve_device(self.device)
        try:
            return os.open(node, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ControlsError(
                f"camera {self.device} not found; devices present: {describe_devices(self._dev_root)}"
            ) from None
        except PermissionError as exc:
            raise ControlsError(
                f"camera {self.device}: permission denied (is this user in the 'video' group?): {exc}"
            ) from None
        except OSError as exc:
            raise ControlsError(f"camera {self.device} could not be opened: {exc}") from None

    def _check_capability(self) -> None:
        buf = bytearray(CAPABILITY.size)
        try:
            self._ioctl(self._fd, VIDIOC_QUERYCAP, buf)
        except OSError as exc:
            if exc.errno in (errno.ENOTTY, errno.EINVAL):
                raise ControlsError(
                    f"{self.device} is not a V4L2 camera ({os.strerror(exc.errno)}); "
                    f"devices present: {describe_devices(self._dev_root)}"
                ) from None
            raise ControlsError(f"camera {self.device}: VIDIOC_QUERYCAP failed: {exc}") from None
        driver, card, _bus, _version, caps, device_caps, *_ = CAPABILITY.unpack(bytes(buf))
        self.driver, self.card = _text(driver), _text(card)
        effective = device_caps if caps & V4L2_CAP_DEVICE_CAPS else caps
        if not effective & (V4L2_CAP_VIDEO_CAPTURE | V4L2_CAP_VIDEO_CAPTURE_MPLANE):
            raise ControlsError(
                f"{self.device} ({self.card or self.driver}) is a V4L2 device but not a video capture node "
                f"(UVC cameras have a metadata node beside the picture one); "
                f"devices present: {describe_devices(self._dev_root)}"
            )

    def _query(self, cid: int) -> QueryCtrl | None:
        buf = QueryCtrl.request(cid)
        try:
            self._ioctl(self._fd, VIDIOC_QUERYCTRL, buf)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return None  # no such control (or, with NEXT_CTRL, no more)
            raise ControlsError(f"camera {self.device}: VIDIOC_QUERYCTRL failed: {exc}") from None
        return QueryCtrl.decode(buf)

    def _menu(self, qc: QueryCtrl) -> dict[int, str]:
        items: dict[int, str] = {}
        for index in range(max(0, qc.minimum), min(qc.maximum, qc.minimum + _MAX_MENU) + 1):
            buf = bytearray(QUERYMENU.pack(qc.id, index, b"", 0))
            try:
                self._ioctl(self._fd, VIDIOC_QUERYMENU, buf)
            except OSError:
                continue  # drivers leave holes (EINVAL) in menus
            _cid, _index, name, _reserved = QUERYMENU.unpack(bytes(buf))
            if qc.type == 9:
                items[index] = str(struct.unpack_from("<q", name)[0])
            else:
                items[index] = _text(name)
        return items

    def _read(self, cid: int) -> int | None:
        buf = bytearray(CONTROL.pack(cid, 0))
        try:
            self._ioctl(self._fd, VIDIOC_G_CTRL, buf)
        except OSError as exc:
            log.debug("camera %s: cannot read control 0x%08x: %s", self.device, cid, exc)
            return None
        return int(CONTROL.unpack(bytes(buf))[1])

    def _describe(self, qc: QueryCtrl) -> Control:
        kind = TYPE_NAMES.get(qc.type, f"type 0x{qc.type:x}")
        menu = self._menu(qc) if kind in ("menu", "integer_menu") else {}
        readable = kind in _READABLE_TYPES and not qc.flags & FLAG_WRITE_ONLY
        value = self._read(qc.id) if readable else None
        name = _NAME_OF.get(qc.id, slug(qc.name))
        step = max(1, qc.step)
        return Control(
            name, qc.id, kind, qc.name, qc.minimum, qc.maximum, step, qc.default, value, qc.flags, menu
        )

    def _enumerate(self) -> list[QueryCtrl]:
        found: list[QueryCtrl] = []
        seen: set[int] = set()
        cid = V4L2_CTRL_FLAG_NEXT_CTRL
        while len(found) < _MAX_CONTROLS:
            qc = self._query(cid)
            if qc is None or qc.id in seen:
                break
            seen.add(qc.id)
            found.append(qc)
            cid = qc.id | V4L2_CTRL_FLAG_NEXT_CTRL
        if not found:
            # A driver without NEXT_CTRL support answers EINVAL at once: ask for the ones we know by id.
            found = [qc for qc in (self._query(cid) for cid in KNOWN.values()) if qc is not None]
        return [qc for qc in found if qc.type != 6 and not qc.flags & FLAG_DISABLED]

    def controls(self) -> list[Control]:
        present = [self._describe(qc) for qc in self._enumerate()]
        self._cache = {c.name: c for c in present}
        return present + _absent(present)

    def _find(self, name: str) -> Control:
        if self._cache is None or name not in self._cache:
            self.controls()
        assert self._cache is not None
        return _named(self._cache, name, self.device)

    def get(self, name: str) -> int:
        return _readable(self._read(self._find(name).cid), name, self.device)

    def set(self, name: str, value: int) -> int:
        control = self._find(name)
        control.check(value, self.device)
        buf = bytearray(CONTROL.pack(control.cid, value))
        try:
            self._ioctl(self._fd, VIDIOC_S_CTRL, buf)
        except OSError as exc:
            code = exc.errno
            if code in (errno.ERANGE, errno.EINVAL):
                why = f"refused {value} (allowed: {control.range_text()})"
            elif code == errno.EACCES:
                why = "does not take a value now (read-only, or inactive while its automatic mode is on)"
            elif code == errno.EBUSY:
                why = "is busy (held by another application)"
            else:
                why = f"could not be set: {exc}"
            raise ControlValueError(f"{name} on {self.device} {why}") from None
        self._cache = None  # flags of related controls may have changed (auto → manual)
        readback = self._read(control.cid)
        return value if readback is None else readback

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0 and self._owns_fd:
            os.close(fd)


def open_controls(capture: CaptureSettings) -> CameraControls:
    """The controls of the camera ``capture`` names. :class:`ControlsError` when a V4L2 camera is missing or
    is not a camera; the synthetic camera has typical webcam controls, a file has none."""
    if capture.backend == "v4l2":
        return V4L2Controls(capture.device)
    if capture.backend == "synthetic":
        return SyntheticControls("synthetic")
    return SyntheticControls(f"file {capture.file}", ())
