"""Lighting calibration against the MCU emulator and the real bridge on its socket: the fitted response
matches the emulated room's, the lights end at target, each way of failing has its own message, and the
bridge starts the lights as calibrated."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.calibration import applied, run_step
from app.calibration.lighting import choose_brightness, fit_line, startup_light
from app.calibration.report import Report
from app.control import ControlClientError, request
from app.hotplug import FakeMonitor
from app.settings import LightingSettings, Settings
from app.state import StateStore
from hwcontrol.emulator import CAPABILITIES, Emulator
from hwcontrol.firmware import protocol_core as pc
from hwcontrol.service import run
from tests.engine.conftest import wait_for

EMULATOR_LUX_PER_PERCENT = 0.3 * 10 * 2
"""The emulated room: 0.3 lux per ‰ per channel at the sensor (hwcontrol/emulator.py), two channels."""


def settings_for(tmp_path: Path, **lighting: Any) -> Settings:
    sections: dict[str, Any] = {
        "engine": {"state_dir": tmp_path / "state"},
        "hwcontrol": {"device": str(tmp_path / "ttyMCU"), "control_socket": tmp_path / "hw.sock"},
        "lighting": lighting,
    }
    return Settings(**sections)


def answers(sock: Path) -> bool:
    try:
        request(sock, "status")
    except ControlClientError:
        return False
    return True


class Room:
    """The emulated MCU and the bridge (``hwcontrol.service.run``) on a thread, as in the service."""

    def __init__(
        self, settings: Settings, *, emulator: Emulator | None, state_dir: Path | None = None
    ) -> None:
        self.settings = settings
        self.emulator = emulator
        self.stop = threading.Event()
        if emulator is not None:
            emulator.start()
        self.thread = threading.Thread(
            target=lambda: run(settings.hwcontrol, self.stop, monitor=FakeMonitor(), state_dir=state_dir),
            daemon=True,
        )
        self.thread.start()
        # Answering, not only there: the socket file appears at bind(), a moment before listen().
        wait_for(lambda: answers(settings.hwcontrol.control_socket), what="the bridge's socket")

    def wait_ready(self) -> None:
        sock = self.settings.hwcontrol.control_socket
        wait_for(lambda: request(sock, "status")["state"] == "ready", what="the MCU ready")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(15)
        if self.emulator is not None:
            self.emulator.stop()


@pytest.fixture
def room(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Room]:
    lighting = getattr(request, "param", {})
    settings = settings_for(tmp_path, **lighting)
    r = Room(settings, emulator=Emulator(tmp_path / "ttyMCU", seed=5))
    r.wait_ready()
    yield r
    r.close()


@pytest.mark.parametrize("room", [{"target_lux": 420.0, "cct_k": 4000}], indirect=True)
def test_calibration_recovers_the_emulated_rooms_response(room: Room) -> None:
    emulator = room.emulator
    assert emulator is not None
    seen: list[tuple[float, str]] = []
    report = run_step(room.settings, "lighting", lambda f, m: seen.append((f, m)))
    assert report.passed, report.text()
    apply = report.apply
    assert apply["lux_per_percent"] == pytest.approx(EMULATOR_LUX_PER_PERCENT, rel=0.05)
    daylight = emulator.room.ambient_lux  # wanders by about a lux a second
    assert apply["ambient_lux"] == pytest.approx(daylight, abs=10)
    # The brightness that gives 420 lux over that daylight, and the lights end there, at the colour asked.
    expected = (420.0 - daylight) / EMULATOR_LUX_PER_PERCENT
    assert apply["brightness_percent"] == pytest.approx(expected, abs=3)
    assert apply["cct_k"] == 4000
    want = round(apply["brightness_percent"] * 10)
    wait_for(lambda: all(ch[:2] == [want, 4000] for ch in emulator.lights()), what="the final lighting")
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("waiting for the light sensor" in m for _, m in seen)
    names = {c.name: c for c in report.checks}
    assert names["light added at full brightness"].passed is True
    assert names["target light level"].passed is True
    assert names["colour temperature"].passed is True
    # Stored with its date, and what the services apply at start.
    assert applied(room.settings.engine.state_dir, "lighting") == apply
    assert len(report.details["points"]) == 5


def test_bridge_not_running_is_a_specific_message(tmp_path: Path) -> None:
    report = run_step(settings_for(tmp_path), "lighting", save=False)
    assert not report.passed and not report.apply
    (problem,) = report.problems
    assert problem.startswith("the hwcontrol bridge is not running: nothing answers on ")
    assert str(tmp_path / "hw.sock") in problem


def test_missing_mcu_is_a_specific_message(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    r = Room(settings, emulator=None)
    try:
        report = run_step(settings, "lighting", save=False)
    finally:
        r.close()
    (problem,) = report.problems
    assert problem.startswith('the room controller (MCU) is missing: the bridge says "MCU missing')
    assert not report.apply and not report.passed


def test_a_board_without_light_sensor_is_a_specific_message(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    emu = Emulator(tmp_path / "ttyMCU", seed=1)
    emu.room.capabilities = emu.core.capabilities = CAPABILITIES & ~pc.CAP_LIGHT_SENSOR
    r = Room(settings, emulator=emu)
    try:
        r.wait_ready()
        report = run_step(settings, "lighting", save=False)
    finally:
        r.close()
    (problem,) = report.problems
    assert problem.startswith("the room controller has no light sensor")


def test_a_sensor_without_light_readings_is_a_specific_message_and_the_lights_are_restored(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path)
    emu = Emulator(tmp_path / "ttyMCU", seed=2)
    emu.room.read_lux_centi = lambda: None  # type: ignore[method-assign]
    r = Room(settings, emulator=emu)
    try:
        r.wait_ready()
        request(settings.hwcontrol.control_socket, "set_light", brightness=420, cct_k=3000)
        wait_for(lambda: emu.lights()[0][:2] == [420, 3000], what="the lights before")
        report = run_step(settings, "lighting", save=False)
        wait_for(lambda: all(ch[:2] == [420, 3000] for ch in emu.lights()), what="the lights put back")
    finally:
        r.close()
    (problem,) = report.problems
    assert problem == "the room controller's sensor reports carry no light level (no lux reading)"
    assert not report.apply


@pytest.mark.slow  # a steady reading comes once a second: about 10 s
def test_lights_the_sensor_cannot_see_fail_the_response_check(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    emu = Emulator(tmp_path / "ttyMCU", seed=4)
    # The sensor reads the daylight only (it is outside the room, or covered): the lights add nothing.
    emu.room.read_lux_centi = lambda: 15000  # type: ignore[method-assign]
    r = Room(settings, emulator=emu)
    try:
        r.wait_ready()
        report = run_step(settings, "lighting", save=False)
    finally:
        r.close()
    assert not report.passed and not report.apply
    assert report.problems[0].startswith("the light sensor does not see the lights: they add 0.0 lux")
    check = {c.name: c for c in report.checks}["light added at full brightness"]
    assert check.passed is False


def test_fit_line_is_least_squares() -> None:
    a, k, rms = fit_line([(0, 100.0), (25, 250.0), (50, 400.0), (75, 550.0), (100, 700.0)])
    assert (a, k, rms) == pytest.approx((100.0, 6.0, 0.0))
    a, k, rms = fit_line([(0, 0.0), (1, 2.0), (2, 0.0), (3, 2.0)])
    assert (a, k) == pytest.approx((0.4, 0.4)) and rms == pytest.approx(0.894427, rel=1e-5)
    with pytest.raises(ValueError):
        fit_line([(5, 1.0), (5, 2.0)])


def test_choose_brightness_for_a_target_lux() -> None:
    b, check, problem = choose_brightness(LightingSettings(target_lux=400), ambient=100.0, k=6.0)
    assert b == pytest.approx(50.0) and check.passed is True and problem is None
    b, check, problem = choose_brightness(LightingSettings(target_lux=1000), ambient=100.0, k=6.0)
    assert b == 100.0 and check.passed is False
    assert problem == (
        "lighting.target_lux = 1000 is out of reach: with 100 lux of daylight the lights give 100–700 lux; "
        "brightness set to 100 %"
    )
    b, check, problem = choose_brightness(LightingSettings(target_lux=50), ambient=100.0, k=6.0)
    assert b == 0.0 and check.passed is False and problem is not None
    b, check, problem = choose_brightness(LightingSettings(brightness_percent=30), ambient=100.0, k=6.0)
    assert b == 30.0 and check.passed is None and check.value == 280.0 and problem is None


def test_startup_light_takes_only_sensible_values() -> None:
    assert startup_light({"brightness_percent": 42.5, "cct_k": 3000}) == (425, 3000)
    assert startup_light({}) is None
    assert startup_light({"brightness_percent": 101, "cct_k": 3000}) is None
    assert startup_light({"brightness_percent": True, "cct_k": 3000}) is None
    assert startup_light({"brightness_percent": 50, "cct_k": 30000}) is None
    assert startup_light({"brightness_percent": 50, "cct_k": "3000"}) is None


def test_the_bridge_starts_the_lights_as_calibrated(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    state = settings.engine.state_dir
    # Without a stored calibration: the startup scene (3, evening: 500 ‰ at 2700 K).
    emu = Emulator(tmp_path / "ttyMCU", seed=6)
    r = Room(settings, emulator=emu, state_dir=state)
    try:
        wait_for(lambda: all(ch[:2] == [500, 2700] for ch in emu.lights()), what="the startup scene")
    finally:
        r.close()
    stored = Report(
        step="lighting", apply={"brightness_percent": 37.5, "cct_k": 4200, "lux_per_percent": 6.0}
    )
    with StateStore(state) as store:
        store.save_calibration("lighting", stored.to_json(), stored.measured_at, stored.passed)
    emu = Emulator(tmp_path / "ttyMCU", seed=7)
    r = Room(settings, emulator=emu, state_dir=state)
    try:
        wait_for(lambda: all(ch[:2] == [375, 4200] for ch in emu.lights()), what="the calibrated lighting")
        status = request(settings.hwcontrol.control_socket, "status")
    finally:
        r.close()
    assert status["scene"] is None and status["lights"]["255"]["brightness"] == 375
