"""The capture interface every frame source implements, its error, and the real-time pacing they share.

A :class:`CaptureSource` is the hardware boundary of the sending side: a USB camera (``v4l2``), a looped
video file (``file``) or the computed scene (``synthetic``) all look the same to the engine's capture
stage, which opens it, calls :meth:`CaptureSource.read` in a loop on the capture thread and closes it.
Problems with the device surface as :class:`CaptureError` with a message a person can act on (which device,
what is wrong, which devices exist). :class:`Pacer` paces sources that are not paced by hardware at the
configured rate against CLOCK_MONOTONIC and drops ticks like a camera when the reader falls behind.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    import av
    import numpy.typing as npt

    from app.video.frames import CapturedFrame

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000


class CaptureError(Exception):
    """The capture device is missing, busy, unreadable or gone. The message names the device."""


class CaptureSource(Protocol):
    """A source of yuv420p pictures at the configured size and rate.

    ``open``, ``read`` and ``close`` are called from one thread (the capture thread); ``close`` may also be
    called from another thread after the reader stopped.
    """

    name: str
    """What this is, for logs and statistics, e.g. "synthetic 1920x1080@60"."""

    def open(self) -> None:
        """Acquire the device. Raises :class:`CaptureError` naming it when it cannot."""
        ...

    def read(self) -> CapturedFrame:
        """Block until the next picture and return it (yuv420p, configured size).

        Raises :class:`CaptureError` when the device vanished or failed.
        """
        ...

    def close(self) -> None:
        """Release the device. Idempotent; never raises."""
        ...


def _natural_key(text: str) -> tuple[str | int, ...]:
    """Sort key that orders video2 before video10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def list_video_devices(dev: Path = Path("/dev")) -> list[str]:
    """The video device nodes under ``dev`` (``videoN``) and the stable names under ``dev/v4l/by-id``.

    Paths as strings, video nodes first in natural order, then by-id links sorted. ``dev`` is injectable for
    tests. Never raises: an unreadable directory lists nothing.
    """
    found: list[str] = []
    try:
        nodes = [p for p in dev.iterdir() if p.name.startswith("video") and p.name[5:].isdigit()]
    except OSError:
        nodes = []
    found += sorted((str(p) for p in nodes), key=_natural_key)
    try:
        links = sorted(str(p) for p in (dev / "v4l" / "by-id").iterdir())
    except OSError:
        links = []
    return found + links


def describe_devices(dev: Path = Path("/dev")) -> str:
    """The devices present, comma separated, or "none", for error messages."""
    devices = list_video_devices(dev)
    return ", ".join(devices) if devices else "none"


def resolve_device(device: str) -> str:
    """``device`` with symlinks (``/dev/v4l/by-id/...``) resolved to the ``/dev/videoN`` node it names.

    A path that does not exist comes back unchanged.
    """
    return os.path.realpath(device) if os.path.lexists(device) else device


class Pacer:
    """Real-time ticks at ``fps`` against a CLOCK_MONOTONIC ns ``clock``; used on the capture thread.

    Tick k is due at ``start + k * 1e9 / fps`` ns (integer maths: no drift). :meth:`wait` sleeps until the
    next tick is due; if the caller is more than one frame interval late, it skips to the current tick (the
    index jumps, like a camera that dropped frames) and adds the skipped ticks to ``dropped``.
    """

    def __init__(
        self,
        fps: int,
        *,
        clock: Callable[[], int] = time.monotonic_ns,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = fps
        self.interval_ns = NS_PER_S // fps
        self._clock = clock
        self._sleep = sleep
        self._start_ns = 0
        self._tick = 0
        self.dropped = 0
        """Ticks skipped because the reader fell behind."""
        self.started = False

    def start(self) -> None:
        """Make tick 0 due now."""
        self._start_ns = self._clock()
        self._tick = 0
        self.started = True

    def _due(self, tick: int) -> int:
        return self._start_ns + tick * NS_PER_S // self.fps

    def wait(self) -> tuple[int, int]:
        """Sleep until the next tick; return ``(tick index, CLOCK_MONOTONIC ns just after the wait)``."""
        if not self.started:
            self.start()
        now = self._clock()
        due = self._due(self._tick)
        if now - due > self.interval_ns:
            current = (now - self._start_ns) * self.fps // NS_PER_S
            self.dropped += current - self._tick
            self._tick = current
            due = self._due(current)
        if now < due:
            self._sleep((due - now) / NS_PER_S)
            now = self._clock()
        tick = self._tick
        self._tick += 1
        return tick, now


def copy_into_frame(frame: av.VideoFrame, image: npt.NDArray[np.uint8]) -> None:
    """Copy a yuv420p array of shape (H*3//2, W) into ``frame``'s planes (same size), honouring line padding.

    One copy, against ``from_ndarray``'s two; about 0.15 ms at 1080p. Any thread.
    """
    w, h = frame.width, frame.height
    flat = image.reshape(-1)
    n = w * h
    sources = (
        flat[:n].reshape(h, w),
        flat[n : n * 5 // 4].reshape(h // 2, w // 2),
        flat[n * 5 // 4 :].reshape(h // 2, w // 2),
    )
    for plane, src in zip(frame.planes, sources, strict=True):
        rows, cols = src.shape
        buf = np.frombuffer(memoryview(plane), np.uint8)
        np.copyto(buf[: rows * plane.line_size].reshape(rows, plane.line_size)[:, :cols], src)


def luma_view(frame: av.VideoFrame) -> npt.NDArray[np.uint8]:
    """The luma plane of a yuv420p ``frame`` as a writable (H, W) uint8 view, without copying. Any thread."""
    plane = frame.planes[0]
    buf = np.frombuffer(memoryview(plane), np.uint8)
    return buf[: frame.height * plane.line_size].reshape(frame.height, plane.line_size)[:, : frame.width]
