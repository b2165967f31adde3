"""Hot-plug events (a camera plugged in or pulled out) from udev, behind a small interface tests can drive.

The resilient capture (:mod:`app.video.capture.resilient`) reopens a lost camera as soon as udev reports it
back instead of polling fast. Real events come from pyudev's netlink monitor on a background thread
(:class:`UdevMonitor`); pyudev is an optional hardware dependency, imported only when a real monitor is
made. Where pyudev or netlink is unavailable (containers, CI, this project's test machines: no udevd)
:func:`create_monitor` logs a warning and hands back a :class:`NullMonitor`, and the capture relies on its
periodic retry. :class:`FakeMonitor` lets tests inject events synchronously.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceEvent:
    """One udev event for a device node."""

    action: str
    """"add", "remove" or "change" (udev also sends "bind"/"unbind", passed through as they come)."""
    device_node: str
    """The node, e.g. "/dev/video0"; empty for devices without one."""
    links: tuple[str, ...] = ()
    """The node's symlinks, e.g. ("/dev/v4l/by-id/usb-...-video-index0", "/dev/v4l/by-path/...")."""
    subsystem: str = "video4linux"


DeviceCallback = Callable[[DeviceEvent], None]


class DeviceMonitor(Protocol):
    """Delivers :class:`DeviceEvent` s to a callback until stopped.

    The callback runs on the monitor's own thread (or synchronously, for the fake); it must be quick and
    thread-safe (set a flag, don't do the work there).
    """

    def start(self, callback: DeviceCallback) -> None:
        """Begin delivering events to ``callback``."""
        ...

    def stop(self) -> None:
        """Stop delivering events (idempotent)."""
        ...


def matches(event: DeviceEvent, device: str) -> bool:
    """Whether ``event`` concerns the configured ``device`` (a /dev/videoN path or a /dev/v4l/by-id link).

    Compares the event's node and links with the path as configured and, where it currently resolves, with
    the node it points to. An unplugged camera's by-id link no longer exists, but the "add" event carries
    it in ``links``, so stable names match on the way back in.
    """
    wanted = {os.path.normpath(device)}
    if os.path.lexists(device):
        wanted.add(os.path.realpath(device))
    seen = {os.path.normpath(p) for p in (event.device_node, *event.links) if p}
    return not wanted.isdisjoint(seen)


class NullMonitor:
    """A monitor that never fires: the fallback where udev is unavailable."""

    def start(self, callback: DeviceCallback) -> None:
        """Accept ``callback`` and never call it."""

    def stop(self) -> None:
        """Nothing to stop."""


class FakeMonitor:
    """A monitor for tests: :meth:`inject` delivers an event synchronously on the caller's thread."""

    def __init__(self) -> None:
        self._callback: DeviceCallback | None = None
        self.started = False

    def start(self, callback: DeviceCallback) -> None:
        """Remember ``callback`` for :meth:`inject`."""
        self._callback = callback
        self.started = True

    def stop(self) -> None:
        """Forget the callback; later injections are dropped, as a stopped monitor would."""
        self._callback = None
        self.started = False

    def inject(self, event: DeviceEvent) -> None:
        """Deliver ``event`` now if started."""
        if self._callback is not None:
            self._callback(event)


class UdevMonitor:
    """udev events for one subsystem, from pyudev's netlink monitor on a daemon thread ("udev-monitor").

    Construction imports pyudev and opens the netlink socket, so it raises ImportError or OSError where
    either is unavailable (:func:`create_monitor` turns that into a :class:`NullMonitor`).
    """

    def __init__(self, subsystem: str = "video4linux") -> None:
        import pyudev

        self.subsystem = subsystem
        self._pyudev: Any = pyudev
        self._context: Any = pyudev.Context()
        self._monitor: Any = self._new_monitor()
        self._observer: Any = None

    def _new_monitor(self) -> Any:
        monitor = self._pyudev.Monitor.from_netlink(self._context)
        monitor.filter_by(self.subsystem)
        # Binding here, not on the observer thread, makes a refused netlink socket fail at construction.
        monitor.start()
        return monitor

    def start(self, callback: DeviceCallback) -> None:
        """Start the observer thread delivering this subsystem's events to ``callback``."""
        if self._observer is not None:
            return
        if self._monitor is None:
            self._monitor = self._new_monitor()

        def on_device(device: Any) -> None:
            # Runs on the observer thread: never let an exception kill it.
            try:
                event = DeviceEvent(
                    action=str(device.action or ""),
                    device_node=str(device.device_node or ""),
                    links=tuple(str(link) for link in device.device_links),
                    subsystem=str(device.subsystem or ""),
                )
                log.info("udev: %s %s", event.action, event.device_node or "(no node)")
                callback(event)
            except Exception:
                log.exception("udev event handler failed")

        self._observer = self._pyudev.MonitorObserver(self._monitor, callback=on_device, name="udev-monitor")
        self._observer.daemon = True
        self._observer.start()

    def stop(self) -> None:
        """Stop and join the observer thread (idempotent); a later :meth:`start` opens a fresh socket."""
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
        self._monitor = None


def create_monitor(kind: str = "udev", subsystem: str = "video4linux") -> DeviceMonitor:
    """A device monitor for ``subsystem``: "udev" (falls back to "null" with a warning when unavailable),
    "null" or "fake"."""
    if kind == "udev":
        try:
            return UdevMonitor(subsystem)
        except ImportError:
            log.warning("pyudev is not installed: no hot-plug events; lost devices are retried periodically")
        except OSError as exc:
            log.warning("udev netlink monitor unavailable (%s): lost devices are retried periodically", exc)
        return NullMonitor()
    elif kind == "null":
        return NullMonitor()
    elif kind == "fake":
        return FakeMonitor()
    else:
        raise ValueError(f"No device monitor named {kind!r} (known: udev, null, fake)")
