"""``doorway hwcontrol``: the bridge as a process, with its JSON control socket (hwcontrol/README.md).

The commands are a thin, validating layer over :class:`hwcontrol.bridge.Bridge`; every argument is checked
here with a clear message, so a hostile or buggy client gets an error line, never a crash.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

from app.control import CommandError, ControlServer, Handler, Stream
from app.hotplug import DeviceMonitor, create_monitor
from app.settings import HwcontrolSettings
from hwcontrol import protocol as p
from hwcontrol.bridge import Bridge, BridgeBusyError

log = logging.getLogger(__name__)

STARTUP_FADE_MS = 1000
"""The calibrated lighting fades in over this long when the bridge first meets the MCU, ms."""


def _int(args: dict[str, Any], name: str, lo: int, hi: int, default: int | None = None) -> int:
    value = args.get(name, default)
    if value is None:
        raise CommandError(f'"{name}" is required')
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise CommandError(f'"{name}" must be an integer from {lo} to {hi}')
    return value


def commands(bridge: Bridge) -> dict[str, Handler]:
    """The control socket's commands for ``bridge``."""

    def status(args: dict[str, Any]) -> dict[str, Any]:
        return bridge.status()

    def sensors(args: dict[str, Any]) -> dict[str, Any]:
        return {"sensors": bridge.sensor_readings()}

    def set_light(args: dict[str, Any]) -> dict[str, Any]:
        channel = _int(args, "channel", 0, p.ALL_CHANNELS, p.ALL_CHANNELS)
        rgb = args.get("rgb", [0, 0, 0])
        if (
            not isinstance(rgb, list)
            or len(rgb) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in rgb)
        ):
            raise CommandError('"rgb" must be three integers from 0 to 255')
        light = p.SetLight(
            channel,
            _int(args, "brightness", 0, p.BRIGHTNESS_MAX),
            _int(args, "cct_k", 0, 20000, 0),
            rgb[0],
            rgb[1],
            rgb[2],
            _int(args, "fade_ms", 0, 60000, 0),
        )
        try:
            bridge.set_light(light)
        except BridgeBusyError as exc:
            raise CommandError(str(exc)) from None
        return {"queued": True, "state": bridge.state}

    def set_scene(args: dict[str, Any]) -> dict[str, Any]:
        scene = p.SetScene(p.Scene(_int(args, "scene", 0, max(p.Scene))), _int(args, "fade_ms", 0, 60000, 0))
        try:
            bridge.set_scene(scene)
        except BridgeBusyError as exc:
            raise CommandError(str(exc)) from None
        return {"queued": True, "state": bridge.state}

    def enter_bootloader(args: dict[str, Any]) -> dict[str, Any]:
        try:
            bridge.enter_bootloader()
        except (BridgeBusyError, PermissionError, ValueError, OSError) as exc:
            raise CommandError(str(exc)) from None
        return {"queued": True}

    def subscribe(args: dict[str, Any]) -> Stream:
        events, close = bridge.subscribe()
        return Stream({"subscribed": True, "state": bridge.state}, events, close)

    return {
        "status": status,
        "sensors": sensors,
        "set_light": set_light,
        "set_scene": set_scene,
        "enter_bootloader": enter_bootloader,
        "subscribe": subscribe,
    }


def startup_light(state_dir: Path | None) -> p.SetLight | None:
    """The lights' set-point at start from the stored lighting calibration in ``state_dir`` (its
    brightness and colour temperature on every channel, faded in over a second), or None when there is
    none (or no ``state_dir``): the bridge then uses ``hwcontrol.startup_scene``."""
    if state_dir is None:
        return None
    from app.calibration import applied
    from app.calibration.lighting import startup_light as calibrated

    values = calibrated(applied(state_dir, "lighting"))
    if values is None:
        return None
    brightness, cct_k = values
    log.info("hwcontrol: the lights start as calibrated: %.1f %% at %d K", brightness / 10, cct_k)
    return p.SetLight(p.ALL_CHANNELS, brightness, cct_k, 0, 0, 0, STARTUP_FADE_MS)


def run(
    settings: HwcontrolSettings,
    stop: threading.Event,
    *,
    monitor: DeviceMonitor | None = None,
    state_dir: Path | None = None,
) -> int:
    """Run the bridge and its socket until ``stop`` is set. Returns the exit status. ``state_dir``: the
    doorway's state directory (``engine.state_dir``), where a stored lighting calibration says how the
    lights start."""
    bridge = Bridge(
        settings,
        monitor=monitor if monitor is not None else create_monitor("udev", "tty"),
        startup_light=startup_light(state_dir),
    )
    server = ControlServer(settings.control_socket, commands(bridge))
    bridge.start()
    server.start()
    log.info("hwcontrol: serving %s", settings.control_socket)
    try:
        stop.wait()
    finally:
        server.close()
        bridge.stop()
    return 0


def main(settings: HwcontrolSettings, state_dir: Path | None = None) -> int:
    """The ``doorway hwcontrol`` process: SIGTERM and SIGINT stop it."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return run(settings, stop, state_dir=state_dir)
