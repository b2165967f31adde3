"""Lighting calibration: how the room's light sensor answers the room's lights, and the lights set to target.

Everything goes through the hwcontrol bridge's control socket (``hwcontrol.control_socket``,
hwcontrol/README.md); this step never opens the serial port. It runs on the caller's thread (the
``doorway calibrate`` process), takes about 10 s, and never raises for what it finds: a bridge that is not
running, a missing or refused MCU, a board without lights or light sensor, a sensor that is silent or does
not see the lights, each gives a specific message in :attr:`Report.problems`.

Theory of operation
-------------------
1. Ask the bridge for its ``status`` (waiting up to :data:`READY_WAIT_S` for a connecting MCU) and remember
   the lights as they were, to put them back if the measurement fails.
2. Subscribe to the bridge's events, then step the brightness of every channel through :data:`LEVELS`
   (percent, lights off first), each step without a fade. After each step wait for the MCU's
   ``light_state`` (it has applied the step), then for *fresh* sensor reports: two consecutive reports
   that agree within :data:`SETTLE_LUX` or :data:`SETTLE_FRACTION`; their mean is the level's reading. The
   firmware reports at once when the light level moves by more than 5 lux and a fifth, and every second
   otherwise, so a step settles in one to two seconds; there are no fixed sleeps.
3. Fit ``lux = ambient + k × brightness`` by least squares (``k`` in lux per percent of brightness, all
   channels together) and report the RMS residual: a linear response is what the lights and a sensor
   in the room give; a large residual means daylight changed during the run or the sensor saturates.
4. Pick the brightness: ``lighting.brightness_percent``, or, with ``lighting.target_lux``, the one whose
   predicted reading is the target (clamped to 0–100 %, with a problem saying the target is out of reach).
   Set it with ``lighting.cct_k`` over a one-second fade, and check the colour temperature against the
   lights' range (``lighting.lights_cct_min_k`` … ``lights_cct_max_k``) and the MCU's answer.

Checks: the sensor responds to the lights (the light they add at full brightness is at least
:data:`MIN_SPAN_LUX` and five times the fit's residual), the fit is linear, the target lux is reachable (when
one is set), the colour temperature is within the lights' range and accepted by the MCU.

``Report.apply`` (applied at every start by the bridge, :func:`startup_light`, and read by the engine's
match mode, app/engine/lightmatch.py): ``brightness_percent`` (0–100), ``cct_k`` (K), ``lux_per_percent``
(the fitted ``k``) and ``ambient_lux`` (daylight at the time of calibration). Empty when the response could
not be measured; the lights are then put back the way they were.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from app.calibration.report import Check, Progress, Report
from app.control import ControlClientError, request
from app.settings import LightingSettings, Settings

log = logging.getLogger(__name__)

LEVELS: Final = (0, 25, 50, 75, 100)
"""Brightness steps, percent of full on every channel; the first (lights off) reads the daylight."""
READY_WAIT_S: Final = 5.0
"""How long a bridge that is still saying hello to its MCU is given to get ready, seconds."""
APPLIED_WAIT_S: Final = 1.5
"""How long to wait for the MCU to confirm a step (``light_state``) before reading the sensor anyway, s."""
SETTLE_TIMEOUT_S: Final = 8.0
"""Most time one step may take to give two agreeing sensor reports, seconds."""
FIRST_REPORT_S: Final = 3.0
"""A sensor that has sent nothing this long after a step (it reports every second) is silent, seconds."""
SETTLE_LUX: Final = 3.0
"""Two consecutive readings this close (lux) ..."""
SETTLE_FRACTION: Final = 0.03
"""... or this close relative to their level count as settled."""
MIN_SPAN_LUX: Final = 10.0
"""Least light (lux, at the sensor) the lights must add at full brightness for the sensor to "see" them."""
FADE_MS: Final = 1000
"""Fade to the final lighting, ms."""
ALL_CHANNELS: Final = 255
"""The bridge's channel number for every channel at once (hwcontrol/PROTOCOL.md)."""
MCU_OUT_OF_RANGE: Final = 3
"""``ERROR`` code of a value the MCU refuses as out of range (hwcontrol/PROTOCOL.md §4)."""
MCU_NOT_SUPPORTED: Final = 4
"""``ERROR`` code of something the MCU's hardware cannot do."""
_MAX_LINE: Final = 64 * 1024


class _BridgeGoneError(Exception):
    """The bridge stopped answering in the middle of the run."""


class _Events:
    """A subscription to the bridge's events (one connection), read with deadlines on the caller's thread."""

    def __init__(self, path: Path) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._buf = b""
        self.errors: list[dict[str, Any]] = []
        """``mcu_error`` events seen so far."""
        try:
            self._sock.settimeout(5.0)
            self._sock.connect(str(path))
            self._sock.sendall(b'{"cmd": "subscribe"}\n')
            first = self.next(time.monotonic() + 5.0)
        except OSError as exc:
            self.close()
            raise _BridgeGoneError(f"cannot subscribe to the bridge's events at {path}: {exc}") from None
        if first is None or not first.get("ok"):
            self.close()
            raise _BridgeGoneError(f"the bridge refused the subscription: {first}")

    def next(self, deadline: float) -> dict[str, Any] | None:
        """The next event (a JSON object), or None when ``deadline`` (monotonic s) passes first. Raises
        :class:`_BridgeGoneError` when the bridge closes the connection."""
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                return None
            except OSError as exc:
                raise _BridgeGoneError(f"the bridge's event stream failed: {exc}") from None
            if not chunk:
                raise _BridgeGoneError("the bridge closed its event stream (did it stop?)")
            self._buf += chunk
            if len(self._buf) > _MAX_LINE:
                raise _BridgeGoneError("the bridge sent an over-long event line")
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            event = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}
        if not isinstance(event, dict):
            return {}
        if event.get("event") == "mcu_error":
            self.errors.append(event)
        return event

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


def _ask(path: Path, cmd: str, **args: Any) -> dict[str, Any]:
    """One command to the bridge; :class:`_BridgeGoneError` when it cannot be reached or refuses."""
    try:
        response = request(path, cmd, timeout=5.0, **args)
    except ControlClientError as exc:
        raise _BridgeGoneError(str(exc).replace("the engine", "the hwcontrol bridge")) from None
    if not response.get("ok"):
        raise _BridgeGoneError(f"the bridge refused {cmd}: {response.get('error')}")
    return response


def _not_running(path: Path, why: str) -> Report:
    return Report(
        step="lighting",
        problems=(
            f"the hwcontrol bridge is not running: nothing answers on {path} ({why}). Start it "
            "(systemctl start doorway-hwcontrol) or check hwcontrol.control_socket, then calibrate again",
        ),
    )


def _wait_ready(path: Path) -> dict[str, Any]:
    status = _ask(path, "status")
    deadline = time.monotonic() + READY_WAIT_S
    while status.get("state") == "connecting" and time.monotonic() < deadline:
        time.sleep(0.2)
        status = _ask(path, "status")
    return status


def _not_ready_problem(status: Mapping[str, Any]) -> str | None:
    state, message = status.get("state"), status.get("message")
    if state == "ready":
        return None
    if state == "missing":
        return (
            f'the room controller (MCU) is missing: the bridge says "{message}". Check that it is plugged in '
            "(USB) and powered, and hwcontrol.device or usb_vid/usb_pid, then calibrate again"
        )
    if state == "refused":
        return f"the room controller cannot be used: {message}"
    return (
        f"the room controller does not answer the bridge ({message} for over {READY_WAIT_S:.0f} s): "
        "is it running the Doorway firmware?"
    )


def fit_line(points: Sequence[tuple[float, float]]) -> tuple[float, float, float]:
    """Least-squares ``y = a + k·x`` through ``points`` (2+ distinct x): ``(a, k, RMS residual)``."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        raise ValueError("the points need at least two distinct x")
    k = sum((x - mx) * (y - my) for x, y in points) / sxx
    a = my - k * mx
    rms = math.sqrt(sum((y - a - k * x) ** 2 for x, y in points) / n)
    return a, k, rms


class _SilentSensorError(Exception):
    """The light sensor sent nothing usable: the message says what."""


def _settled_lux(events: _Events, started: float) -> float:
    """Wait for the MCU to apply the last step, then for two consecutive agreeing fresh lux readings; their
    mean. Raises :class:`_SilentSensorError` when readings do not come or do not settle in time."""
    applied_by = started + APPLIED_WAIT_S
    while True:
        event = events.next(applied_by)
        if event is None or event.get("event") == "light_state":
            break  # applied (or not confirmed in time: the settling test below still protects the reading)
    deadline = started + SETTLE_TIMEOUT_S
    first_by = time.monotonic() + FIRST_REPORT_S
    previous: float | None = None
    reports = 0
    while True:
        event = events.next(min(deadline, first_by) if reports == 0 else deadline)
        if event is None:
            if reports == 0:
                raise _SilentSensorError(
                    f"the light sensor is silent: no sensor report came within {FIRST_REPORT_S:.0f} s "
                    "(it reports every second); check the sensor's wiring"
                )
            raise _SilentSensorError(
                f"the light level did not settle within {SETTLE_TIMEOUT_S:.0f} s (daylight changing fast, "
                "or a flickering light?); calibrate again when the room is steady"
            )
        if event.get("event") != "sensors":
            continue
        reports += 1
        lux = event.get("lux")
        if isinstance(lux, bool) or not isinstance(lux, int | float) or not math.isfinite(lux):
            raise _SilentSensorError(
                "the room controller's sensor reports carry no light level (no lux reading)"
            )
        lux = float(lux)
        if previous is not None and abs(lux - previous) <= max(
            SETTLE_LUX, SETTLE_FRACTION * max(lux, previous)
        ):
            return (lux + previous) / 2
        previous = lux


def _set_all(path: Path, percent: float, cct_k: int = 0, fade_ms: int = 0) -> None:
    _ask(
        path, "set_light", channel=ALL_CHANNELS, brightness=round(percent * 10), cct_k=cct_k, fade_ms=fade_ms
    )


def _restore(path: Path, status: Mapping[str, Any]) -> None:
    """Put the lights back as ``status`` (the bridge's, before the run) had them."""
    with contextlib.suppress(_BridgeGoneError):
        scene = status.get("scene")
        if isinstance(scene, int):
            _ask(path, "set_scene", scene=scene, fade_ms=FADE_MS)
            return
        lights = status.get("lights")
        if not isinstance(lights, dict):
            return
        for channel, light in sorted(lights.items(), key=lambda kv: int(kv[0]) == ALL_CHANNELS, reverse=True):
            _ask(
                path,
                "set_light",
                channel=int(channel),
                brightness=light["brightness"],
                cct_k=light["cct_k"],
                rgb=light["rgb"],
                fade_ms=FADE_MS,
            )


def calibrate(settings: Settings, progress: Progress) -> Report:
    """Measure the room's response to its lights and set them to target (see the module docstring).

    Runs on the caller's thread for about 10 s; never raises for what it finds."""
    path = settings.hwcontrol.control_socket
    progress(0.0, f"asking the hwcontrol bridge at {path}")
    try:
        status = _wait_ready(path)
    except _BridgeGoneError as exc:
        return _not_running(path, str(exc))
    problem = _not_ready_problem(status)
    if problem is not None:
        return Report(step="lighting", problems=(problem,), details={"bridge_state": status.get("state")})
    mcu = status.get("mcu") or {}
    capabilities = set(mcu.get("capabilities") or ())
    channels = int(mcu.get("channels") or 0)
    details: dict[str, Any] = {"mcu": {"firmware": mcu.get("firmware"), "channels": channels}}
    if channels == 0 or not capabilities & {"PWM_LIGHTS", "RGB"}:
        return Report(
            step="lighting",
            problems=("the room controller has no light channels: there are no lights to calibrate",),
            details=details,
        )
    if "LIGHT_SENSOR" not in capabilities:
        return Report(
            step="lighting",
            problems=(
                "the room controller has no light sensor: the lights' effect cannot be measured; set "
                "lighting.brightness_percent and cct_k by eye",
            ),
            details=details,
        )
    try:
        events = _Events(path)
    except _BridgeGoneError as exc:
        return _not_running(path, str(exc))
    try:
        return _measure(settings, path, status, events, progress, details)
    except _BridgeGoneError as exc:
        return Report(
            step="lighting", problems=(f"the hwcontrol bridge went away during calibration: {exc}",)
        )
    finally:
        events.close()


def _measure(
    settings: Settings,
    path: Path,
    status: Mapping[str, Any],
    events: _Events,
    progress: Progress,
    details: dict[str, Any],
) -> Report:
    cfg = settings.lighting
    points: list[tuple[float, float]] = []
    for i, level in enumerate(LEVELS):
        progress(0.05 + 0.8 * i / len(LEVELS), f"lights at {level} %, waiting for the light sensor to settle")
        started = time.monotonic()
        _set_all(path, level)
        try:
            lux = _settled_lux(events, started)
        except _SilentSensorError as exc:
            _restore(path, status)
            return Report(step="lighting", problems=(str(exc),), details={**details, "points": points})
        log.info("lighting calibration: %d %% -> %.1f lux", level, lux)
        points.append((float(level), lux))
        if any(e.get("code") == MCU_NOT_SUPPORTED for e in events.errors):
            _restore(path, status)
            return Report(
                step="lighting",
                problems=("the room controller refused to set its lights (not supported by its hardware)",),
                details=details,
            )
    progress(0.85, "fitting the room's response")
    ambient, k, residual = fit_line(points)
    span = k * 100.0
    details["points"] = [{"brightness_percent": b, "lux": round(lux, 2)} for b, lux in points]
    need = max(MIN_SPAN_LUX, 5.0 * residual)
    responds = span >= need
    linear = residual <= max(2.0, 0.1 * abs(span))
    checks = [
        Check("daylight (lights off)", round(points[0][1], 1), "lux"),
        Check("light added at full brightness", round(span, 1), "lux", f"≥ {need:.0f} lux", responds),
        Check("response (fitted)", round(k, 3), "lux/%"),
        Check(
            "fit residual (RMS)", round(residual, 2), "lux", f"≤ {max(2.0, 0.1 * abs(span)):.1f} lux", linear
        ),
    ]
    problems: list[str] = []
    if not responds:
        problems.append(
            f"the light sensor does not see the lights: they add {span:.1f} lux at full brightness (at least "
            f"{need:.0f} needed); is the sensor in the room, facing it, and not covered?"
        )
        _restore(path, status)
        return Report(step="lighting", checks=tuple(checks), problems=tuple(problems), details=details)
    if not linear:
        problems.append(
            f"the room's response is not a straight line (residual {residual:.1f} lux): daylight changed "
            "during the run, or the sensor saturates; calibrate again when the room is steady"
        )
    brightness, target_check, target_problem = choose_brightness(cfg, ambient, k)
    checks.append(target_check)
    if target_problem is not None:
        problems.append(target_problem)
    brightness = round(brightness, 1)
    checks.append(Check("brightness", brightness, "%"))
    progress(0.9, f"setting the lights to {brightness:g} % at {cfg.cct_k} K")
    errors_before = len(events.errors)
    _set_all(path, brightness, cfg.cct_k, FADE_MS)
    refused = _refused(events, errors_before)
    in_range = cfg.lights_cct_min_k <= cfg.cct_k <= cfg.lights_cct_max_k
    checks.append(
        Check(
            "colour temperature",
            cfg.cct_k,
            "K",
            f"{cfg.lights_cct_min_k}–{cfg.lights_cct_max_k} K",
            in_range and not refused,
        )
    )
    if refused:
        problems.append(f"the room controller refused colour temperature {cfg.cct_k} K as out of its range")
    elif not in_range:
        problems.append(
            f"lighting.cct_k = {cfg.cct_k} K is outside what the lights can make "
            f"({cfg.lights_cct_min_k}–{cfg.lights_cct_max_k} K, lighting.lights_cct_min_k/max_k)"
        )
    progress(1.0, "done")
    apply = {
        "brightness_percent": brightness,
        "cct_k": cfg.cct_k,
        "lux_per_percent": round(k, 4),
        "ambient_lux": round(ambient, 1),
    }
    return Report(
        step="lighting", checks=tuple(checks), apply=apply, problems=tuple(problems), details=details
    )


def choose_brightness(cfg: LightingSettings, ambient: float, k: float) -> tuple[float, Check, str | None]:
    """The brightness to set (percent) for the room's fitted response ``lux = ambient + k × brightness``
    (``k`` > 0), the check that goes with it, and a problem when ``cfg.target_lux`` is out of reach."""
    span = k * 100.0
    if cfg.target_lux is None:
        brightness = cfg.brightness_percent
        return (
            brightness,
            Check("light level at the set brightness", round(ambient + k * brightness, 1), "lux"),
            None,
        )
    wanted = (cfg.target_lux - ambient) / k
    brightness = min(100.0, max(0.0, wanted))
    reachable = 0.0 <= wanted <= 100.0
    low, high = max(ambient, 0.0), ambient + span
    check = Check("target light level", cfg.target_lux, "lux", f"{low:.0f}–{high:.0f} lux", reachable)
    if reachable:
        return brightness, check, None
    return (
        brightness,
        check,
        f"lighting.target_lux = {cfg.target_lux:g} is out of reach: with {ambient:.0f} lux of daylight the "
        f"lights give {low:.0f}–{high:.0f} lux; brightness set to {brightness:.0f} %",
    )


def _refused(events: _Events, errors_before: int) -> bool:
    """Whether the MCU answers the last command with "out of range" (it applies or refuses within a round
    trip; the ``light_state`` that confirms it ends the wait)."""
    deadline = time.monotonic() + APPLIED_WAIT_S
    while len(events.errors) == errors_before:
        event = events.next(deadline)
        if event is None or event.get("event") == "light_state":
            break
    return any(e.get("code") == MCU_OUT_OF_RANGE for e in events.errors[errors_before:])


def startup_light(apply: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(brightness ‰, cct_k)`` from a stored lighting calibration's ``apply`` values, or None when they are
    absent or not sensible (the bridge then uses its startup scene). Standard library only: the bridge
    calls it at start."""
    brightness, cct = apply.get("brightness_percent"), apply.get("cct_k")
    if isinstance(brightness, bool) or not isinstance(brightness, int | float) or not 0 <= brightness <= 100:
        return None
    if isinstance(cct, bool) or not isinstance(cct, int) or not 1000 <= cct <= 20000:
        return None
    return round(brightness * 10), cct
