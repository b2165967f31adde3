""" "Match the far side": the controller in simulated time against simulated rooms (converges, never
oscillates, keeps its rate limit, ignores stale and absurd readings), and the engine's glue against a fake
bridge."""

from __future__ import annotations

import itertools
import math
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from app.control import ControlServer, Stream, request
from app.engine.engine import Engine
from app.engine.lightmatch import MAX_LUX, STALE_S, LightMatch, MatchController, Step, brightness_of
from app.launch import free_udp_ports
from app.net.protocol import Packet, RoomFlags, RoomReport
from app.settings import LightingSettings, Settings
from tests.engine.conftest import run_engine, small_settings, wait_for

TICK = 0.25


@dataclass
class SimRoom:
    """A room whose sensor reads ``ambient + k × brightness`` (+ noise); the lights fade linearly."""

    ambient: float
    k: float
    brightness: float
    noise: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(1))
    fade: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # t0, from, to, seconds
    commands: list[tuple[float, float, float]] = field(default_factory=list)  # t, to, fade seconds

    def __post_init__(self) -> None:
        self.fade = (0.0, self.brightness, self.brightness, 0.0)

    def level(self, t: float) -> float:
        t0, a, b, d = self.fade
        if d <= 0 or t >= t0 + d:
            return b
        return a + (b - a) * (t - t0) / d

    def lux(self, t: float) -> float:
        return self.ambient + self.k * self.level(t) + self.rng.gauss(0, self.noise)

    def apply(self, step: Step, t: float) -> None:
        now = self.level(t)
        self.fade = (t, now, step.brightness_percent, step.fade_ms / 1000)
        self.commands.append((t, step.brightness_percent, step.fade_ms / 1000))


def controller(
    k: float = 6.0, rate: float = 2.0, smoothing: float = 0.0, tolerance: float = 10.0
) -> MatchController:
    return MatchController(
        lux_per_percent=k, rate_percent_per_s=rate, smoothing_s=smoothing, tolerance_lux=tolerance
    )


def simulate(
    c: MatchController,
    room: SimRoom,
    far: Any,
    seconds: float,
    *,
    far_matching: bool = False,
) -> list[float]:
    """Run ``c`` on ``room`` for ``seconds`` of simulated time; ``far(t)`` is the far level (or None: silent).
    Sensor reports come every second on both sides. Returns the room's brightness at every tick."""
    c.set_brightness(room.brightness, 0.0)
    trace = []
    t = 0.0
    while t < seconds:
        if abs(t - round(t)) < 1e-9:  # reports once a second
            c.on_local(room.lux(t), t)
            level = far(t)
            if level is not None:
                c.on_far(level, 0.1, t, matching=far_matching)
        step = c.update(t)
        if step is not None:
            room.apply(step, t)
        trace.append(room.level(t))
        t = round(t + TICK, 6)
    return trace


def check_rate_limit(room: SimRoom, trace: list[float], rate: float) -> None:
    """No command starts before the previous fade has ended, and the light never moves faster than ``rate``
    (percent per second) between two ticks."""
    for (t0, _, fade), (t1, _, _) in zip(room.commands, room.commands[1:], strict=False):
        assert t1 >= t0 + fade
    steepest = max((abs(b - a) / TICK for a, b in itertools.pairwise(trace)), default=0.0)
    assert steepest <= rate + 1e-6


def reversals(trace: list[float]) -> int:
    direction, flips = 0, 0
    for a, b in itertools.pairwise(trace):
        d = (b > a + 1e-9) - (b < a - 1e-9)
        if d and direction and d != direction:
            flips += 1
        direction = d or direction
    return flips


def test_converges_to_the_far_level_without_overshoot_within_the_rate_limit() -> None:
    room = SimRoom(ambient=120.0, k=6.0, brightness=0.0)
    c = controller(rate=2.0)
    trace = simulate(c, room, lambda t: 420.0, 200.0)
    assert abs(room.lux(200.0) - 420.0) <= 10.0
    assert trace[-1] == pytest.approx(50.0, abs=10.0 / 6.0)
    assert reversals(trace) == 0 and c.counters["reversals"] == 0
    assert max(trace) <= 50.0 + 10.0 / 6.0  # never past the target by more than the dead band
    check_rate_limit(room, trace, 2.0)
    assert c.state == "matched"


@pytest.mark.parametrize("k_true", [3.0, 12.0])
def test_a_calibration_off_by_two_still_converges_without_oscillating(k_true: float) -> None:
    room = SimRoom(ambient=120.0, k=k_true, brightness=10.0)
    c = controller(k=6.0, rate=5.0)
    trace = simulate(c, room, lambda t: 400.0, 300.0)
    assert abs(room.lux(300.0) - 400.0) <= 10.0
    assert reversals(trace) == 0
    check_rate_limit(room, trace, 5.0)


def test_noise_is_not_chased_once_matched() -> None:
    room = SimRoom(ambient=150.0, k=6.0, brightness=30.0, noise=2.0, rng=random.Random(7))
    far_rng = random.Random(8)
    c = controller(rate=2.0, smoothing=5.0)
    trace = simulate(c, room, lambda t: 500.0 + far_rng.gauss(0, 8.0), 400.0)
    assert abs(room.ambient + room.k * trace[-1] - 500.0) <= 15.0
    late = [t for t, _, _ in room.commands if t > 200.0]
    assert len(late) <= 3  # a rare nudge, not a dither
    assert reversals(trace) <= 2
    check_rate_limit(room, trace, 2.0)


def test_two_sides_matching_each_other_meet_without_crossing() -> None:
    a = SimRoom(ambient=100.0, k=6.0, brightness=20.0)
    b = SimRoom(ambient=300.0, k=6.0, brightness=20.0)
    ca, cb = controller(rate=3.0, smoothing=2.0), controller(rate=3.0, smoothing=2.0)
    ca.set_brightness(a.brightness, 0.0)
    cb.set_brightness(b.brightness, 0.0)
    trace_a, trace_b, gaps = [], [], []
    t = 0.0
    while t < 300.0:
        if abs(t - round(t)) < 1e-9:
            la, lb = a.lux(t), b.lux(t)
            ca.on_local(la, t)
            cb.on_local(lb, t)
            ca.on_far(lb, 0.1, t, matching=True)
            cb.on_far(la, 0.1, t, matching=True)
            gaps.append(lb - la)
        for c, room in ((ca, a), (cb, b)):
            step = c.update(t)
            if step is not None:
                room.apply(step, t)
        trace_a.append(a.level(t))
        trace_b.append(b.level(t))
        t = round(t + TICK, 6)
    assert abs(gaps[-1]) <= 10.0
    assert min(gaps) >= -10.0  # b started brighter; they never swap places beyond the dead band
    assert reversals(trace_a) == 0 and reversals(trace_b) == 0
    check_rate_limit(a, trace_a, 3.0)
    check_rate_limit(b, trace_b, 3.0)


def test_an_unreachable_far_level_stops_at_full_brightness() -> None:
    room = SimRoom(ambient=100.0, k=6.0, brightness=95.0)
    c = controller(rate=5.0)
    simulate(c, room, lambda t: 5000.0, 40.0)
    assert room.level(40.0) == 100.0
    assert c.state.startswith("at full brightness")
    assert room.commands and all(t < 5.0 for t, _, _ in room.commands)


def test_stale_reordered_and_absurd_far_readings() -> None:
    c = controller()
    c.on_far(300.0, STALE_S + 1.0, 100.0)
    assert c.far_lux is None and c.counters["far_stale"] == 1
    c.on_far(300.0, 0.5, 100.0)
    c.on_far(900.0, 2.0, 100.2)  # taken before the one already held: reordered, ignored
    assert c.far_lux == 300.0 and c.counters["far_stale"] == 2
    c.on_far(1e12, 0.0, 101.0)
    assert c.far_lux == MAX_LUX and c.counters["far_clamped"] == 1
    c.on_far(math.nan, 0.0, 102.0)
    assert c.far_lux == 0.0 and c.counters["far_clamped"] == 2
    c.on_far(None, 0.0, 103.0)
    assert c.far_lux == 0.0 and c.counters["far_reports"] == 6


def test_the_lights_are_held_when_the_far_side_goes_quiet() -> None:
    room = SimRoom(ambient=120.0, k=6.0, brightness=0.0)
    c = controller(rate=2.0)
    simulate(c, room, lambda t: 420.0 if t < 10.0 else None, 60.0)
    held = room.level(60.0)
    assert c.state == "far side's level is stale"
    assert 0.0 < held < 50.0
    assert all(t < 10.0 + STALE_S + 1.0 for t, _, _ in room.commands)


def test_nothing_moves_before_the_lights_level_is_known() -> None:
    c = controller()
    c.on_far(400.0, 0.0, 1.0)
    c.on_local(100.0, 1.0)
    assert c.update(1.0) is None and c.state == "waiting for the lights' level"


def test_brightness_of_the_bridges_status() -> None:
    assert brightness_of({"scene": 3, "lights": {}}) == 50.0
    assert brightness_of({"scene": None, "lights": {"255": {"brightness": 420}}}) == 42.0
    assert (
        brightness_of({"scene": None, "lights": {"0": {"brightness": 100}, "1": {"brightness": 300}}}) == 20.0
    )
    assert brightness_of({"scene": None, "lights": {}}) is None


class FakeBridge:
    """hwcontrol's socket, reduced to ``status`` and ``set_light``."""

    def __init__(self, path: Path) -> None:
        self.lights: list[dict[str, Any]] = []

        def set_light(args: dict[str, Any]) -> dict[str, Any]:
            self.lights.append(args)
            return {"queued": True, "state": "ready"}

        self.server = ControlServer(
            path,
            {"status": lambda args: {"state": "ready", "scene": 3, "lights": {}}, "set_light": set_light},
        )
        self.server.start()


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_the_engines_glue_reports_follows_and_pauses(tmp_path: Path) -> None:
    bridge = FakeBridge(tmp_path / "hw.sock")
    sent: list[Packet] = []
    seq = iter(range(1, 10_000))
    clock = Clock()
    paused = [False]
    match = LightMatch(
        LightingSettings(match_far_side=True, match_rate_percent_per_s=5.0, match_smoothing_s=0.0),
        tmp_path / "hw.sock",
        sent.append,
        lambda: next(seq),
        calibration={"lux_per_percent": 6.0, "brightness_percent": 50.0},
        paused=lambda: paused[0],
        clock=clock,
    )
    try:
        match.on_sensors({"event": "sensors", "lux": 300.0, "age_s": 0.1})
        match.tick()
        (report,) = sent
        assert isinstance(report, RoomReport)
        assert report.lux_centi == 30000 and report.flags == RoomFlags.MATCHING and 90 <= report.age_ms <= 110
        assert report.brightness_permille is None  # the lights' level is read from the bridge when following
        # The twin's room is brighter: after a fresh local reading, a step up, within the rate limit.
        match.on_room_report(RoomReport(seq=5, lux_centi=60000, age_ms=200, brightness_permille=700))
        clock.t += 1.0
        match.on_sensors({"event": "sensors", "lux": 300.0, "age_s": 0.0})
        match.tick()
        (command,) = bridge.lights
        assert command["channel"] == 255 and command["brightness"] == 550 and command["fade_ms"] == 1000
        stats = match.stats()
        assert stats["far_lux"] == 600.0 and stats["state"] == "brightening" and stats["calibrated"] is True
        assert stats["far_brightness_percent"] == 70.0 and stats["reports_received"] == 1
        # A second report after a second, with the lights' level as the bridge said it was (scene 3, 50 %).
        assert isinstance(sent[-1], RoomReport) and sent[-1].brightness_permille == 500
        # A lighting calibration running: nothing reported, nothing followed.
        paused[0] = True
        count = len(sent)
        clock.t += 5.0
        match.on_sensors({"event": "sensors", "lux": 900.0, "age_s": 0.0})
        match.tick()
        assert len(sent) == count and len(bridge.lights) == 1
        assert match.stats()["state"] == "paused: the lights are being calibrated"
        assert match.controller.brightness is None
    finally:
        bridge.server.close()


def test_without_match_mode_the_room_is_reported_and_the_lights_left_alone(tmp_path: Path) -> None:
    sent: list[Packet] = []
    clock = Clock()
    match = LightMatch(LightingSettings(), tmp_path / "none.sock", sent.append, lambda: 1, clock=clock)
    match.on_room_report(RoomReport(seq=5, lux_centi=60000, age_ms=0))
    match.tick()
    assert sent == []  # no local reading yet: nothing to tell
    match.on_sensors({"event": "sensors", "lux": 250.0, "age_s": 0.0})
    match.tick()
    clock.t += 0.25
    match.on_sensors({"event": "sensors", "lux": 252.0, "age_s": 0.0})
    match.tick()  # within the second and a small change: no new report
    clock.t += 0.25
    match.on_sensors({"event": "sensors", "lux": 400.0, "age_s": 0.0})
    match.tick()  # a jump of more than a tenth: reported at once
    assert [p.lux_centi for p in sent if isinstance(p, RoomReport)] == [25000, 40000]
    assert all(isinstance(p, RoomReport) and p.flags == 0 for p in sent)
    assert match.stats()["state"] == "off" and match.stats()["far_lux"] == 600.0


def test_matching_is_turned_on_and_off_live(tmp_path: Path) -> None:
    bridge = FakeBridge(tmp_path / "hw.sock")
    sent: list[Packet] = []
    clock = Clock()
    match = LightMatch(
        LightingSettings(match_smoothing_s=0.0),
        tmp_path / "hw.sock",
        sent.append,
        lambda: 1,
        calibration={"lux_per_percent": 6.0},
        clock=clock,
    )
    try:
        match.on_room_report(RoomReport(seq=5, lux_centi=60000, age_ms=0))
        match.on_sensors({"event": "sensors", "lux": 300.0, "age_s": 0.0})
        match.tick()
        assert bridge.lights == [] and match.stats()["state"] == "off"
        match.set_enabled(True)
        match.tick()  # Reads the lights' level from the bridge first.
        clock.t += 1.0
        match.on_room_report(RoomReport(seq=6, lux_centi=60000, age_ms=0))
        match.on_sensors({"event": "sensors", "lux": 300.0, "age_s": 0.0})
        match.tick()
        assert len(bridge.lights) == 1 and match.stats()["match_far_side"] is True
        assert isinstance(sent[-1], RoomReport) and sent[-1].flags == RoomFlags.MATCHING
        match.set_enabled(False)
        clock.t += 5.0
        match.on_room_report(RoomReport(seq=7, lux_centi=90000, age_ms=0))
        match.on_sensors({"event": "sensors", "lux": 300.0, "age_s": 0.0})
        match.tick()
        assert len(bridge.lights) == 1 and match.stats()["state"] == "off"  # The lights stay where they are.
        # A new calibration's response is taken at once; nonsense is not.
        match.set_calibration({"lux_per_percent": 4.5})
        match.set_calibration({"lux_per_percent": -1})
        assert match.stats()["lux_per_percent"] == 4.5
    finally:
        bridge.server.close()


class RoomBridge:
    """hwcontrol's socket for a simulated room: ``subscribe`` streams its sensor every 0.2 s (``ambient +
    k × brightness``), ``status`` and ``set_light`` read and set the lights (instantly)."""

    def __init__(self, path: Path, ambient: float, k: float, brightness_permille: int) -> None:
        self.ambient, self.k, self.brightness = ambient, k, brightness_permille
        self.commands: list[dict[str, Any]] = []
        self._stop = threading.Event()

        def subscribe(args: dict[str, Any]) -> Stream:
            def items() -> Iterator[dict[str, Any]]:
                while not self._stop.wait(0.2):
                    yield {"event": "sensors", "lux": self.lux, "age_s": 0.0}

            return Stream({"subscribed": True, "state": "ready"}, items())

        def status(args: dict[str, Any]) -> dict[str, Any]:
            return {"state": "ready", "scene": None, "lights": {"255": {"brightness": self.brightness}}}

        def set_light(args: dict[str, Any]) -> dict[str, Any]:
            self.commands.append(args)
            self.brightness = args["brightness"]
            return {"queued": True, "state": "ready"}

        self.server = ControlServer(path, {"subscribe": subscribe, "status": status, "set_light": set_light})
        self.server.start()

    @property
    def lux(self) -> float:
        return self.ambient + self.k * self.brightness / 10

    def close(self) -> None:
        self._stop.set()
        self.server.close()


def test_two_engines_on_loopback_the_follower_matches_the_far_room(tmp_path: Path) -> None:
    """End to end: engine A reports its room (400 lux) over the call; engine B, in match mode, dims its
    lights from 50 % until its own sensor reads the same."""
    port_a, port_b = free_udp_ports(2)
    dirs = {name: tmp_path / name for name in ("a", "b")}
    for d in dirs.values():
        d.mkdir()
    bridge_a = RoomBridge(dirs["a"] / "hw.sock", ambient=400.0, k=0.0, brightness_permille=0)
    bridge_b = RoomBridge(dirs["b"] / "hw.sock", ambient=160.0, k=6.0, brightness_permille=500)

    def settings(name: str, port: int, peer: int, **lighting: Any) -> Settings:
        return small_settings(
            dirs[name],
            network={"listen_port": port, "peer_port": peer},
            audio={"enabled": False},
            hwcontrol={"control_socket": str(dirs[name] / "hw.sock")},
            lighting=lighting,
        )

    engine_a = Engine(settings("a", port_a, port_b))
    engine_b = Engine(
        settings(
            "b", port_b, port_a, match_far_side=True, match_rate_percent_per_s=20.0, match_smoothing_s=0.0
        )
    )
    runs = [run_engine(engine_a), run_engine(engine_b)]
    try:
        wait_for(lambda: abs(bridge_b.lux - 400.0) <= 10.0, timeout_s=60, what="room b matching room a")
        status = request(dirs["b"] / "engine.sock", "status")["lighting"]
        stats = request(dirs["b"] / "engine.sock", "stats")
    finally:
        for stop, thread, _ in runs:
            stop.set()
            thread.join(30)
        bridge_a.close()
        bridge_b.close()
    assert status["match_far_side"] is True and status["far_lux"] == 400.0
    assert status["state"] in ("matched", "dimming", "settling")
    assert status["calibrated"] is False  # no stored calibration: the default response was assumed
    assert stats["network"]["room_reports_received"] >= 1
    # Dimming only, never above where it started, never below what the far room needs.
    levels = [c["brightness"] for c in bridge_b.commands]
    assert levels == sorted(levels, reverse=True) and levels[0] < 500 and levels[-1] >= 380
    assert bridge_a.commands == []  # A is not in match mode: its lights are left alone
