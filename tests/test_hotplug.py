"""Hot-plug events: the fake monitor, device matching, the udev monitor and its fallback."""

from __future__ import annotations

import logging
import subprocess
import sys
import types
from pathlib import Path
from typing import ClassVar

import pytest

import app.hotplug as hotplug
from app.hotplug import DeviceEvent, FakeMonitor, NullMonitor, UdevMonitor, create_monitor, matches


def test_fake_monitor_delivers_synchronously_while_started() -> None:
    got: list[DeviceEvent] = []
    monitor = FakeMonitor()
    event = DeviceEvent("add", "/dev/video0", ("/dev/v4l/by-id/usb-Cam-video-index0",), "video4linux")
    monitor.inject(event)  # not started: dropped
    monitor.start(got.append)
    monitor.inject(event)
    assert got == [event]
    monitor.stop()
    monitor.inject(event)
    assert got == [event]


def test_null_monitor_never_fires() -> None:
    monitor = NullMonitor()
    monitor.start(lambda e: pytest.fail("fired"))
    monitor.stop()


def test_matches_node_and_links() -> None:
    by_id = "/dev/v4l/by-id/usb-Logitech_C920_ABC-video-index0"
    event = DeviceEvent(
        "add", "/dev/video2", (by_id, "/dev/v4l/by-path/pci-0000:00:14.0-usb-0:1:1.0-video-index0")
    )
    assert matches(event, "/dev/video2")
    assert matches(event, by_id)
    assert matches(event, "/dev//video2")
    assert not matches(event, "/dev/video0")
    assert not matches(event, "/dev/v4l/by-id/usb-Other-video-index0")
    assert not matches(DeviceEvent("add", "", ()), "/dev/video0")


def test_matches_resolves_existing_symlinks(tmp_path: Path) -> None:
    node = tmp_path / "video5"
    node.touch()
    link = tmp_path / "usb-Cam-video-index0"
    link.symlink_to(node)
    # The event names the node only (links absent, as in some "remove" events): the link resolves to it.
    assert matches(DeviceEvent("remove", str(node), ()), str(link))
    assert not matches(DeviceEvent("remove", str(tmp_path / "video6"), ()), str(link))


def test_create_monitor_kinds() -> None:
    assert isinstance(create_monitor("null"), NullMonitor)
    assert isinstance(create_monitor("fake"), FakeMonitor)
    with pytest.raises(ValueError, match="No device monitor named 'bluetooth'"):
        create_monitor("bluetooth")


def test_create_monitor_falls_back_when_netlink_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(self: UdevMonitor, subsystem: str = "video4linux") -> None:
        raise PermissionError(1, "Operation not permitted: netlink")

    monkeypatch.setattr(UdevMonitor, "__init__", refuse)
    with caplog.at_level(logging.WARNING, logger="app.hotplug"):
        monitor = create_monitor("udev")
    assert isinstance(monitor, NullMonitor)
    assert "netlink" in caplog.text


def test_create_monitor_falls_back_without_pyudev(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A None entry in sys.modules makes "import pyudev" raise ImportError.
    monkeypatch.setitem(sys.modules, "pyudev", None)
    with caplog.at_level(logging.WARNING, logger="app.hotplug"):
        monitor = create_monitor()
    assert isinstance(monitor, NullMonitor)
    assert "pyudev" in caplog.text


def test_importing_needs_no_pyudev() -> None:
    code = (
        "import sys, app.hotplug, app.video.capture, app.video.capture.resilient; "
        "print('pyudev' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"
    assert "pyudev" not in vars(hotplug)


def test_udev_monitor_converts_devices_and_survives_callback_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drive UdevMonitor against a stand-in pyudev, so event conversion is tested without udevd."""

    class Monitor:
        started = False

        @classmethod
        def from_netlink(cls, context: object) -> Monitor:
            return cls()

        def filter_by(self, subsystem: str) -> None:
            self.subsystem = subsystem

        def start(self) -> None:
            self.started = True

    class Observer:
        instances: ClassVar[list[Observer]] = []

        def __init__(self, monitor: Monitor, callback: object, name: str) -> None:
            self.monitor, self.callback, self.name = monitor, callback, name
            self.running = False
            Observer.instances.append(self)

        def start(self) -> None:
            self.running = True

        def stop(self) -> None:
            self.running = False

    fake = types.SimpleNamespace(Context=object, Monitor=Monitor, MonitorObserver=Observer)
    monkeypatch.setitem(sys.modules, "pyudev", fake)
    got: list[DeviceEvent] = []
    monitor = UdevMonitor()
    monitor.start(got.append)
    observer = Observer.instances[-1]
    assert observer.running and observer.name == "udev-monitor"
    assert observer.monitor.subsystem == "video4linux" and observer.monitor.started
    device = types.SimpleNamespace(
        action="add",
        device_node="/dev/video0",
        device_links=iter(["/dev/v4l/by-id/x"]),
        subsystem="video4linux",
    )
    observer.callback(device)
    assert got == [DeviceEvent("add", "/dev/video0", ("/dev/v4l/by-id/x",), "video4linux")]

    def broken(event: DeviceEvent) -> None:
        raise RuntimeError("handler bug")

    monitor.stop()
    assert not observer.running
    monitor.start(broken)
    Observer.instances[-1].callback(device)  # logged, not raised
    monitor.stop()
    monitor.stop()


def test_real_udev_monitor_starts_and_stops() -> None:
    pytest.importorskip("pyudev")
    try:
        monitor = UdevMonitor()
    except OSError as exc:
        pytest.skip(f"netlink not permitted here: {exc}")
    monitor.start(lambda e: None)
    monitor.start(lambda e: None)  # already running: no second thread
    monitor.stop()
    monitor.stop()
    monitor.start(lambda e: None)  # restartable
    monitor.stop()
