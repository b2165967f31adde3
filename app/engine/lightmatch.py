"""Room light across the doorway: this room's light level to the twin, and "match the far side".

Every engine tells its twin the light level at its room sensor in a :class:`~app.net.protocol.RoomReport`
(PROTOCOL.md §5), about once a second and at once when it moves by more than a tenth. With
``lighting.match_far_side`` the engine also drives its own room lights (through the hwcontrol bridge's
``set_light``) so that its sensor reads what the far room's reads: the two sides of the doorway then look
equally bright to the people in them.

Theory of operation
-------------------
:class:`MatchController` is the sans-I/O part: it takes readings and ``now`` (monotonic seconds) and answers
with a new brightness and fade, or nothing. It is a slow integral controller closed on the local sensor,
with the calibrated response ``k`` (lux per percent of brightness, ``doorway calibrate lighting``) as its
model: each step moves the brightness by ``gain × (far − local) / k``, which with the right ``k`` removes
half the difference per step, without overshoot; a ``k`` off by up to a factor of two still converges
without overshoot, and up to four without diverging. What keeps it from flickering or oscillating:

- **Fresh readings only.** After a command the controller waits until the fade is over and a sensor
  reading taken *after* it has come (the loop never acts twice on the same error, the classic cause of
  overshoot with a lagging sensor).
- **Rate limit.** A step is at most ``match_rate_percent_per_s × 1 s`` and is faded over
  ``|step| / rate``, so the light never changes faster than the setting, whatever the far side does.
- **Smoothing.** The far level is smoothed with a time constant of ``match_smoothing_s`` (a person walking
  past the far sensor is not followed); the local level is not (it is the loop's feedback).
- **Dead band.** Within ``match_tolerance_lux`` nothing changes, and steps under 0.2 % are not sent: sensor
  noise is not chased.
- **Both sides matching.** When the far side says (``MATCHING`` flag) that it follows us too, each side
  uses half the gain: the two levels meet in the middle without crossing.
- **Bad input.** A far reading older than :data:`STALE_S` (its age on the wire plus its time here) is
  ignored and counted; a level above :data:`MAX_LUX` is clamped and counted. With no fresh far or local
  reading the lights are held as they are.

:class:`LightMatch` is the engine's glue, with its own thread ("lightmatch") that wakes every
:data:`TICK_S`: it sends the RoomReports (any thread may send through the transport), runs the controller
and sends its commands to the bridge over the bridge's control socket (blocking calls, on this thread only).
Local readings come from :class:`~app.engine.hwlink.HwLink`'s thread (:meth:`LightMatch.on_sensors`), far
ones from the network thread (:meth:`LightMatch.on_room_report`); both only store a value under a lock.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from app.control import ControlClientError, request
from app.net.protocol import NO_LUX, Packet, RoomFlags, RoomReport
from app.settings import LightingSettings

log = logging.getLogger(__name__)

STALE_S: Final = 5.0
"""A reading older than this (seconds) is not acted on."""
MAX_LUX: Final = 200_000.0
"""Brightest plausible reading (direct sunlight is about 100 000 lux); more is clamped to it and counted."""
GAIN: Final = 0.5
"""Fraction of the (model-predicted) difference removed per step."""
STEP_INTERVAL_S: Final = 1.0
"""A step is at most the rate limit times this; its fade lasts at most this long (seconds)."""
SETTLE_S: Final = 0.3
"""After a fade ends, readings count as fresh from this much later (the sensor samples every 100 ms)."""
MIN_STEP_PERCENT: Final = 0.2
"""Steps smaller than this (percent of full) are not sent."""
DEFAULT_LUX_PER_PERCENT: Final = 5.0
"""The response assumed before ``doorway calibrate lighting`` has measured it, lux per percent."""
REPORT_INTERVAL_S: Final = 1.0
"""A RoomReport goes to the twin this often ..."""
REPORT_CHANGE: Final = 0.1
"""... and at once when the local level moves by more than this fraction (and more than 5 lux)."""
TICK_S: Final = 0.25
"""How often the "lightmatch" thread wakes."""
ALL_CHANNELS: Final = 255
SCENE_BRIGHTNESS_PERMILLE: Final = {0: 0, 1: 300, 2: 800, 3: 500}
"""The MCU's scenes' brightness (hwcontrol/PROTOCOL.md §4), to know where the lights start."""


@dataclass(frozen=True, slots=True)
class Step:
    """A command from the controller: set every channel to ``brightness_percent`` over ``fade_ms``."""

    brightness_percent: float
    fade_ms: int


class MatchController:
    """Drives the local brightness so the local light level follows the far one (sans-I/O; see the module
    docstring). Not thread-safe: one owner calls everything, passing ``now`` in monotonic seconds."""

    def __init__(
        self,
        *,
        lux_per_percent: float,
        rate_percent_per_s: float,
        smoothing_s: float,
        tolerance_lux: float,
        brightness_percent: float | None = None,
    ) -> None:
        if not lux_per_percent > 0:
            raise ValueError(f"lux_per_percent must be positive, got {lux_per_percent}")
        self.k = lux_per_percent
        self.rate = rate_percent_per_s
        self.smoothing_s = smoothing_s
        self.tolerance = tolerance_lux
        self.brightness = brightness_percent
        """The lights' brightness as last set, percent; None until known (then nothing is sent)."""
        self.far_lux: float | None = None
        """The far level, smoothed, lux."""
        self.far_at = -math.inf
        """When the far reading was taken (now − its age), monotonic s."""
        self.far_matching = False
        self.local_lux: float | None = None
        self.local_at = -math.inf
        self._fresh_after = -math.inf
        self.state = "waiting for the far side's light level"
        self.counters = {"far_reports": 0, "far_stale": 0, "far_clamped": 0, "steps": 0, "reversals": 0}
        self._last_direction = 0

    def on_far(self, lux: float | None, age_s: float, now: float, *, matching: bool = False) -> None:
        """A far reading of ``lux`` that was ``age_s`` old at ``now``."""
        self.counters["far_reports"] += 1
        if lux is None:
            return
        taken = now - max(0.0, age_s)
        if now - taken > STALE_S or taken < self.far_at:
            self.counters["far_stale"] += 1
            return
        if not 0.0 <= lux <= MAX_LUX:  # NaN fails both comparisons and is clamped to 0
            self.counters["far_clamped"] += 1
            lux = MAX_LUX if lux > MAX_LUX else 0.0
        if self.far_lux is None or self.smoothing_s <= 0:
            self.far_lux = lux
        else:
            alpha = 1.0 - math.exp(-(taken - self.far_at) / self.smoothing_s)
            self.far_lux += alpha * (lux - self.far_lux)
        self.far_at = taken
        self.far_matching = matching

    def on_local(self, lux: float, now: float) -> None:
        """A local sensor reading (taken at ``now``)."""
        if math.isfinite(lux):
            self.local_lux = min(max(lux, 0.0), MAX_LUX)
            self.local_at = now

    def set_brightness(self, percent: float, now: float) -> None:
        """Someone else set the lights (or they were read from the bridge): start again from there."""
        self.brightness = min(max(percent, 0.0), 100.0)
        self._fresh_after = now + SETTLE_S

    def update(self, now: float) -> Step | None:
        """The next step, or None to leave the lights as they are (:attr:`state` says why)."""
        if self.far_lux is None or now - self.far_at > STALE_S:
            self.state = (
                "waiting for the far side's light level"
                if self.far_lux is None
                else "far side's level is stale"
            )
            return None
        if self.brightness is None:
            self.state = "waiting for the lights' level"
            return None
        if self.local_lux is None or now - self.local_at > STALE_S:
            self.state = "waiting for the local light sensor"
            return None
        if self.local_at < self._fresh_after:
            self.state = "settling"
            return None
        error = self.far_lux - self.local_lux
        if abs(error) <= self.tolerance:
            self.state = "matched"
            return None
        gain = GAIN / 2 if self.far_matching else GAIN
        limit = self.rate * STEP_INTERVAL_S
        step = max(-limit, min(limit, gain * error / self.k))
        # The MCU's resolution is 0.1 % (1 ‰); the fade is worked out from the rounded step, so the rate
        # limit holds exactly.
        target = round(min(100.0, max(0.0, self.brightness + step)), 1)
        delta = target - self.brightness
        if abs(delta) < MIN_STEP_PERCENT:
            if error > 0 and self.brightness >= 100.0 - MIN_STEP_PERCENT:
                self.state = "at full brightness: the far side is brighter than the lights can make this room"
            elif error < 0 and self.brightness <= MIN_STEP_PERCENT:
                self.state = "lights off: the far side is darker than this room's daylight"
            else:
                self.state = "matched"
            return None
        direction = 1 if delta > 0 else -1
        if self._last_direction and direction != self._last_direction:
            self.counters["reversals"] += 1
        self._last_direction = direction
        fade_ms = math.ceil(abs(delta) / self.rate * 1000)
        self.brightness = target
        self._fresh_after = now + fade_ms / 1000 + SETTLE_S
        self.counters["steps"] += 1
        self.state = "brightening" if delta > 0 else "dimming"
        return Step(self.brightness, fade_ms)


def brightness_of(status: Mapping[str, Any]) -> float | None:
    """The lights' brightness (percent, mean over the channels) from the bridge's ``status``; None when it
    does not say."""
    scene = status.get("scene")
    if isinstance(scene, int) and scene in SCENE_BRIGHTNESS_PERMILLE:
        return SCENE_BRIGHTNESS_PERMILLE[scene] / 10
    lights = status.get("lights")
    if not isinstance(lights, dict) or not lights:
        return None
    levels = [light.get("brightness") for light in lights.values() if isinstance(light, dict)]
    numbers = [v for v in levels if isinstance(v, int) and not isinstance(v, bool)]
    return sum(numbers) / len(numbers) / 10 if numbers else None


class LightMatch:
    """The engine's room-light link (see the module docstring). ``send`` sends a packet to the twin (the
    transport's, any thread); ``next_seq`` numbers it. ``calibration``: the stored lighting calibration's
    ``apply`` values (its ``lux_per_percent``). While ``paused()`` (a lighting calibration is sweeping the
    lights) nothing is reported or followed, and the lights' level is read again afterwards."""

    def __init__(
        self,
        settings: LightingSettings,
        bridge_socket: Path,
        send: Callable[[Packet], object],
        next_seq: Callable[[], int],
        *,
        calibration: Mapping[str, Any] | None = None,
        paused: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._paused = paused
        self.bridge_socket = bridge_socket
        self._send = send
        self._next_seq = next_seq
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        k = (calibration or {}).get("lux_per_percent")
        calibrated_k = float(k) if isinstance(k, int | float) and not isinstance(k, bool) and k > 0 else None
        self.calibrated = calibrated_k is not None
        self.controller = MatchController(
            lux_per_percent=DEFAULT_LUX_PER_PERCENT if calibrated_k is None else calibrated_k,
            rate_percent_per_s=settings.match_rate_percent_per_s,
            smoothing_s=settings.match_smoothing_s,
            tolerance_lux=settings.match_tolerance_lux,
        )
        self.local_lux: float | None = None
        self.local_at = -math.inf
        self.far_raw_lux: float | None = None
        self.far_brightness: int | None = None
        self._reported_lux: float | None = None
        self._next_report = 0.0
        self.counters = {"reports_sent": 0, "reports_received": 0, "bridge_errors": 0}
        self._pending: list[tuple[float | None, float, bool, float]] = []
        self.enabled = settings.match_far_side
        """Match mode on (``lighting.match_far_side`` at start; :meth:`set_enabled` changes it live)."""
        if settings.match_far_side and not self.calibrated:
            log.warning(
                "lighting: match_far_side without a lighting calibration: assuming %.1f lux per %% until "
                "`doorway calibrate lighting` has measured it",
                DEFAULT_LUX_PER_PERCENT,
            )

    def set_enabled(self, on: bool) -> None:
        """Turn match mode on or off from now on (any thread). Turned on, the controller reads the lights'
        level again before its first step; turned off, the lights stay where they are."""
        with self._lock:
            if on == self.enabled:
                return
            self.enabled = on
            if on:
                self.controller.brightness = None
        log.info("lighting: matching the far side %s", "on" if on else "off")
        if on and not self.calibrated:
            log.warning(
                "lighting: matching without a lighting calibration: assuming %.1f lux per %%",
                DEFAULT_LUX_PER_PERCENT,
            )

    def set_calibration(self, calibration: Mapping[str, Any]) -> None:
        """Use a new lighting calibration's response (``lux_per_percent``) from now on (any thread)."""
        k = calibration.get("lux_per_percent")
        if isinstance(k, bool) or not isinstance(k, int | float) or not math.isfinite(k) or k <= 0:
            return
        with self._lock:
            self.controller.k = float(k)
            self.calibrated = True
        log.info("lighting: calibrated response now %.2f lux per %%", k)

    # -- inputs (other threads) --------------------------------------------------------------------------

    def on_sensors(self, event: Mapping[str, Any]) -> None:
        """A ``sensors`` event from the bridge (HwLink's thread)."""
        lux = event.get("lux")
        if isinstance(lux, bool) or not isinstance(lux, int | float) or not math.isfinite(lux):
            return
        age = event.get("age_s")
        age_s = float(age) if isinstance(age, int | float) and not isinstance(age, bool) else 0.0
        with self._lock:
            self.local_lux = float(lux)
            self.local_at = self._clock() - max(0.0, age_s)

    def on_room_report(self, pkt: RoomReport) -> None:
        """The twin's RoomReport (network thread): stored for the lightmatch thread."""
        now = self._clock()
        lux = None if pkt.lux_centi is None else pkt.lux_centi / 100
        with self._lock:
            self.counters["reports_received"] += 1
            self.far_raw_lux = lux
            self.far_brightness = pkt.brightness_permille
            if len(self._pending) < 16:  # bounded: the thread takes them every tick
                self._pending.append((lux, pkt.age_ms / 1000, bool(pkt.flags & RoomFlags.MATCHING), now))

    # -- the thread --------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lightmatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _run(self) -> None:
        announced = False
        while not self._stop.wait(TICK_S):
            try:
                self.tick()
            except ControlClientError as exc:
                self.counters["bridge_errors"] += 1
                if not announced:
                    log.info("lighting: the hwcontrol bridge does not answer (%s); trying again", exc)
                    announced = True

    def tick(self) -> None:
        """One turn of the lightmatch thread: report, then (in match mode) follow. Raises
        ControlClientError when the bridge does not answer."""
        now = self._clock()
        with self._lock:
            local, local_at = self.local_lux, self.local_at
            pending, self._pending = self._pending, []
        c = self.controller
        if self._paused():
            c.brightness = None  # the calibration sets the lights: read them again when it is over
            c.state = "paused: the lights are being calibrated"
            return
        self._report(local, local_at, now)
        if not self.enabled:
            return
        for lux, age_s, matching, at in pending:
            c.on_far(lux, age_s + (now - at), now, matching=matching)
        if local is not None and local_at > c.local_at:
            c.on_local(local, local_at)
        if c.brightness is None:
            level = brightness_of(self._ask("status"))
            if level is None:
                return
            c.set_brightness(level, now)
        step = c.update(now)
        if step is not None:
            self._ask(
                "set_light",
                channel=ALL_CHANNELS,
                brightness=round(step.brightness_percent * 10),
                fade_ms=step.fade_ms,
            )
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "lighting: %s to %.1f %% over %d ms", c.state, step.brightness_percent, step.fade_ms
                )

    def _ask(self, cmd: str, **args: Any) -> dict[str, Any]:
        response = request(self.bridge_socket, cmd, timeout=2.0, **args)
        if not response.get("ok"):
            raise ControlClientError(f"the bridge refused {cmd}: {response.get('error')}")
        return response

    def _report(self, local: float | None, local_at: float, now: float) -> None:
        if local is None or now - local_at > STALE_S:
            return
        moved = self._reported_lux is not None and abs(local - self._reported_lux) > max(
            5.0, REPORT_CHANGE * self._reported_lux
        )
        if now < self._next_report and not moved:
            return
        self._next_report = now + REPORT_INTERVAL_S
        self._reported_lux = local
        brightness = self.controller.brightness
        pkt = RoomReport(
            seq=self._next_seq(),
            lux_centi=min(round(local * 100), NO_LUX - 1),
            age_ms=min(65535, round((now - local_at) * 1000)),
            brightness_permille=None if brightness is None else round(brightness * 10),
            flags=RoomFlags.MATCHING if self.enabled else 0,
        )
        self._send(pkt)
        self.counters["reports_sent"] += 1

    def stats(self) -> dict[str, Any]:
        """For the engine's status (any thread)."""
        c = self.controller
        now = self._clock()
        with self._lock:
            local, local_at, far_raw = self.local_lux, self.local_at, self.far_raw_lux
            counters = dict(self.counters)
        return {
            "match_far_side": self.enabled,
            "state": c.state if self.enabled else "off",
            "calibrated": self.calibrated,
            "lux_per_percent": c.k,
            "local_lux": None if local is None else round(local, 1),
            "local_age_s": None if local is None else round(now - local_at, 1),
            "far_lux": None if far_raw is None else round(far_raw, 1),
            "far_lux_smoothed": None if c.far_lux is None else round(c.far_lux, 1),
            "far_age_s": None if c.far_lux is None else round(now - c.far_at, 1),
            "far_matching": c.far_matching,
            "far_brightness_percent": None if self.far_brightness is None else self.far_brightness / 10,
            "brightness_percent": c.brightness,
            **counters,
            **{f"controller_{k}": v for k, v in c.counters.items()},
        }
