"""A capture source that outlives its camera: a slate while the camera is gone, the camera when it is back.

An always-on doorway must not drop the call because someone pulled the USB cable. :class:`ResilientCapture`
wraps any :class:`~app.video.capture.base.CaptureSource`; when the inner source's ``open`` or ``read``
raises :class:`~app.video.capture.base.CaptureError` it logs one warning naming the device and from then on
returns "Camera unavailable" slate frames (``slate=True``, stamped like any picture) paced at the configured
rate, so the encoder, the link and the peer carry on. It retries the camera as soon as the hot-plug monitor
reports an ``add`` for the configured device and otherwise every ``reopen_interval_s``; on success it logs
once and resumes camera frames. Frame indices stay strictly increasing across every switch, so encoders see
monotonic timestamps. Clock and sleep are injectable so tests never wait in real time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import av

from app.hotplug import DeviceEvent, DeviceMonitor, matches
from app.video.capture.base import NS_PER_S, CaptureError, CaptureSource, Pacer, copy_into_frame, luma_view
from app.video.frames import CapturedFrame
from app.video.slate import render_slate
from app.video.stamp import Stamp, write_stamp

log = logging.getLogger(__name__)

SLATE_TITLE = "Camera unavailable"
PRIVACY_TITLE = "Privacy"


class ResilientCapture:
    """Wraps ``source``; never raises :class:`CaptureError` from :meth:`read` once opened.

    ``open``, ``read`` and ``close`` run on the capture thread; the monitor's callback runs on the
    monitor's thread and only sets flags.
    """

    def __init__(
        self,
        source: CaptureSource,
        *,
        width: int,
        height: int,
        fps: int,
        device_label: str,
        monitor: DeviceMonitor | None,
        reopen_interval_s: float,
        clock: Callable[[], int] = time.monotonic_ns,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.source = source
        self.name = source.name
        self.width = width
        self.height = height
        self.fps = fps
        self.device_label = device_label
        self._monitor = monitor
        self._reopen_interval_ns = int(reopen_interval_s * NS_PER_S)
        self._clock = clock
        self._sleep = sleep
        self._time_base = Fraction(1, fps)
        self._pacer = Pacer(fps, clock=clock, sleep=sleep)
        self._last_slate_tick = -1
        self._slate = render_slate(width, height, SLATE_TITLE, device_label)
        self._device_added = threading.Event()
        self._device_removed = threading.Event()
        self._camera_ok = False
        self._opened = False
        self._next_retry_ns = 0
        self._next_index = 0
        self._offset: int | None = None
        self.camera_losses = 0
        """Times the camera was lost (open failed at start, or read failed)."""
        self.reopens = 0
        """Times the camera came back after a loss."""
        self.slate_frames = 0
        """Slate pictures returned."""
        self.privacy = False
        """While set (any thread), a "Privacy" slate is sent instead of the camera (which stays open)."""
        self._privacy_slate = render_slate(width, height, PRIVACY_TITLE, "the camera is off")

    @property
    def showing_slate(self) -> bool:
        """True while the camera is unavailable and the slate is being sent."""
        return self._opened and not self._camera_ok

    @property
    def counters(self) -> dict[str, Any]:
        """Counters for the engine's statistics."""
        out: dict[str, Any] = {
            "camera_available": not self.showing_slate,
            "camera_losses": self.camera_losses,
            "reopens": self.reopens,
            "slate_frames": self.slate_frames,
        }
        dropped = getattr(self.source, "dropped", None)
        if isinstance(dropped, int):
            out["dropped"] = dropped
        return out

    def _on_device(self, event: DeviceEvent) -> None:
        # Monitor thread: flag only; the capture thread acts on it.
        if not matches(event, self.device_label):
            return
        if event.action == "add":
            self._device_added.set()
        elif event.action == "remove":
            self._device_removed.set()

    def open(self) -> None:
        """Start the monitor and open the camera; if it is unavailable, start on the slate instead."""
        if self._opened:
            return
        self._opened = True
        if self._monitor is not None:
            self._monitor.start(self._on_device)
        try:
            self.source.open()
        except CaptureError as exc:
            self._lose(exc, "is unavailable")
            return
        self._camera_ok = True
        self._offset = None

    def _lose(self, exc: CaptureError, what: str) -> None:
        """Switch to the slate after the camera failed with ``exc``."""
        self.camera_losses += 1
        self._camera_ok = False
        log.warning(
            "camera %s %s: %s; sending the slate and retrying (every %.1f s or on hot-plug)",
            self.device_label,
            what,
            exc,
            self._reopen_interval_ns / NS_PER_S,
        )
        self.source.close()
        self._device_added.clear()
        self._device_removed.clear()
        self._next_retry_ns = self._clock() + self._reopen_interval_ns
        # The slate's clock starts now; its first tick is due at once.
        self._pacer = Pacer(self.fps, clock=self._clock, sleep=self._sleep)
        self._last_slate_tick = -1

    def _try_reopen(self) -> bool:
        """Reopen the camera if a hot-plug event or the retry interval says so; True when it is back."""
        added = self._device_added.is_set()
        if not added and self._clock() < self._next_retry_ns:
            return False
        self._device_added.clear()
        # A "remove" that arrived while we were on the slate is stale; one arriving from here on is not.
        self._device_removed.clear()
        try:
            self.source.open()
        except CaptureError as exc:
            self._next_retry_ns = self._clock() + self._reopen_interval_ns
            log.debug("camera %s still unavailable: %s", self.device_label, exc)
            return False
        self._camera_ok = True
        self._offset = None
        self.reopens += 1
        log.info(
            "camera %s is back%s; resuming camera frames", self.device_label, " (hot-plug)" if added else ""
        )
        return True

    def read(self) -> CapturedFrame:
        """The next camera picture, or a slate picture while the camera is unavailable (capture thread)."""
        if not self._opened:
            raise CaptureError(f"{self.name} is not open")
        if self._camera_ok and self._device_removed.is_set():
            self._device_removed.clear()
            self._lose(CaptureError(f"udev reports {self.device_label} removed"), "was unplugged")
        if self.privacy:
            return self._slate_frame(self._privacy_slate)
        if self._camera_ok or self._try_reopen():
            try:
                cf = self.source.read()
            except CaptureError as exc:
                self._lose(exc, "was lost")
            else:
                return self._renumber(cf)
        return self._slate_frame()

    def _renumber(self, cf: CapturedFrame) -> CapturedFrame:
        """Map the inner source's index (which restarts at each open) onto this source's increasing index."""
        if self._offset is None:
            self._offset = self._next_index - cf.index
        index = cf.index + self._offset
        if index < self._next_index:
            # The inner source went backwards without a reopen; never let our index do so.
            self._offset += self._next_index - index
            index = self._next_index
        self._next_index = index + 1
        if self._offset:
            cf.frame.pts = index
            return CapturedFrame(cf.frame, index, cf.captured_ns, cf.slate)
        return cf

    def _slate_frame(self, slate: Any = None) -> CapturedFrame:
        """A stamped copy of the cached slate (or ``slate``), paced at ``fps`` (capture thread)."""
        tick, captured_ns = self._pacer.wait()
        # Ticks the slate's pacer skipped (the reader fell behind) advance the index, as a camera's would.
        index = self._next_index + max(0, tick - self._last_slate_tick - 1)
        self._last_slate_tick = tick
        self._next_index = index + 1
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        copy_into_frame(frame, self._slate if slate is None else slate)
        write_stamp(luma_view(frame), Stamp(index, captured_ns // 1000))
        frame.pts = index
        frame.time_base = self._time_base
        self.slate_frames += 1
        return CapturedFrame(frame, index, captured_ns, slate=True)

    def close(self) -> None:
        """Close the camera and stop the monitor (idempotent)."""
        if not self._opened:
            return
        self._opened = False
        self._camera_ok = False
        if self._monitor is not None:
            self._monitor.stop()
        self.source.close()
