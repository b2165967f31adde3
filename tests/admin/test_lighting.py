"""Lighting and sensors: commands reach the bridge's socket; a bridge that is down, an MCU that is missing,
and a bridge that refuses are said plainly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.control import CommandError, Handler
from app.settings import Settings, load_settings
from tests.admin.conftest import Browser


class FakeBridge:
    """The bridge's commands (hwcontrol/README.md), recording what they were sent."""

    def __init__(self, state: str = "ready") -> None:
        self.state = state
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.lights: dict[str, Any] = {
            "255": {"brightness": 400, "cct_k": 3000, "rgb": [0, 0, 0], "fade_ms": 0}
        }
        self.scene: int | None = 3
        self.sensors: dict[str, Any] | None = {
            "age_s": 0.4,
            "lux": 312.5,
            "temperature_c": 21.25,
            "humidity_percent": 45.0,
            "presence": True,
            "mcu_uptime_ms": 1234,
        }
        self.refuse: str | None = None

    def commands(self) -> dict[str, Handler]:
        def status(args: dict[str, Any]) -> dict[str, Any]:
            message = "MCU missing: no device /dev/ttyACM0" if self.state == "missing" else self.state
            return {"state": self.state, "message": message, "lights": self.lights, "scene": self.scene}

        def record(name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
            def handler(args: dict[str, Any]) -> dict[str, Any]:
                if self.refuse:
                    raise CommandError(self.refuse)
                self.calls.append((name, args))
                return {"queued": True, "state": self.state}

            return handler

        return {
            "status": status,
            "sensors": lambda args: {"sensors": self.sensors},
            "set_light": record("set_light"),
            "set_scene": record("set_scene"),
        }


@pytest.fixture
def bridge(settings: Settings, serve_socket: Any) -> FakeBridge:
    fake = FakeBridge()
    serve_socket(settings.hwcontrol.control_socket, fake.commands())
    return fake


def test_the_page_shows_lights_and_readings(owner: Browser, bridge: FakeBridge) -> None:
    r = owner.client.get("/lighting")
    assert r.status_code == 200
    html = r.text
    assert 'name="brightness" min="0" max="1000" step="10" value="400"' in html
    assert 'name="cct_k" min="2700" max="6500" step="100"' in html and 'value="3000"' in html
    assert "312 lx" in html and "21.2 °C" in html and "45 %" in html
    assert "0.4 s ago" in html and "(old:" not in html
    assert 'value="evening" class="current"' in html  # Scene 3.
    assert "Lights cannot be set now" not in html


def test_old_readings_are_marked(owner: Browser, bridge: FakeBridge) -> None:
    assert bridge.sensors is not None
    bridge.sensors["age_s"] = 42.0
    html = owner.client.get("/lighting").text
    assert "42.0 s ago" in html and "old: the room controller may be gone" in html
    assert owner.client.get("/api/lighting").json()["sensors"]["stale"] is True


def test_lighting_api(owner: Browser, bridge: FakeBridge) -> None:
    body = owner.client.get("/api/lighting").json()
    assert body["up"] is True and body["state"] == "ready" and body["scene"] == "evening"
    assert body["brightness"] == 400 and body["cct_k"] == 3000
    assert body["sensors"]["lux"] == 312.5 and body["sensors"]["presence"] is True

    r = owner.post("/api/lighting/light", json={"brightness": 750, "cct_k": 4000})
    assert r.status_code == 200 and r.json() == {"queued": True, "state": "ready"}
    assert bridge.calls[-1] == ("set_light", {"brightness": 750, "cct_k": 4000, "fade_ms": 300})
    r = owner.post("/api/lighting/light", json={"brightness": 0, "fade_ms": 0})
    assert bridge.calls[-1] == ("set_light", {"brightness": 0, "cct_k": 0, "fade_ms": 0})

    r = owner.post("/api/lighting/scene", json={"scene": "day"})
    assert r.status_code == 200
    assert bridge.calls[-1] == ("set_scene", {"scene": 2, "fade_ms": 300})

    # Out of range never reaches the bridge.
    n = len(bridge.calls)
    for bad in ({"brightness": 1001}, {"brightness": 10, "cct_k": 9000}, {"brightness": -1}):
        assert owner.post("/api/lighting/light", json=bad).status_code == 422, bad
    assert owner.post("/api/lighting/scene", json={"scene": "disco"}).status_code == 422
    assert len(bridge.calls) == n


def test_the_forms_work_without_scripts(owner: Browser, bridge: FakeBridge) -> None:
    r = owner.client.post(
        "/lighting/light", data={"csrf_token": owner.csrf, "brightness": "500", "cct_k": "2700"}
    )
    assert r.status_code == 200 and "Lights set to 50 % at 2700 K." in r.text
    assert bridge.calls[-1] == ("set_light", {"brightness": 500, "cct_k": 2700, "fade_ms": 300})
    r = owner.client.post("/lighting/scene", data={"csrf_token": owner.csrf, "scene": "off"})
    assert r.status_code == 200 and "Scene &#39;off&#39; set." in r.text
    assert bridge.calls[-1] == ("set_scene", {"scene": 0, "fade_ms": 300})


def test_bridge_down_is_said_plainly(owner: Browser, settings: Settings) -> None:
    r = owner.client.get("/lighting")
    assert r.status_code == 200
    expected = f"the microcontroller bridge is not running (no socket at {settings.hwcontrol.control_socket})"
    assert f"Lights cannot be set now: {expected}." in r.text
    assert "No readings: the bridge is not running." in r.text
    body = owner.client.get("/api/lighting").json()
    assert body == {
        "up": False,
        "error": expected,
        "state": None,
        "message": None,
        "brightness": None,
        "cct_k": None,
        "scene": None,
        "lights": {},
        "sensors": None,
    }
    r = owner.post("/api/lighting/light", json={"brightness": 100})
    assert r.status_code == 503 and r.json() == {"error": expected}
    r = owner.client.post("/lighting/scene", data={"csrf_token": owner.csrf, "scene": "day"})
    assert r.status_code == 503 and "Not sent: " + expected in r.text


def test_mcu_missing_is_said_plainly_and_settings_are_kept(owner: Browser, bridge: FakeBridge) -> None:
    bridge.state = "missing"
    bridge.sensors = None
    html = owner.client.get("/lighting").text
    assert "MCU missing: MCU missing: no device /dev/ttyACM0" not in html
    assert "MCU missing: no device /dev/ttyACM0" in html and "sent when the room controller is back" in html
    assert "No readings yet" in html
    r = owner.client.post(
        "/lighting/light", data={"csrf_token": owner.csrf, "brightness": "300", "cct_k": "3000"}
    )
    assert r.status_code == 200 and "the bridge sends it when it is back" in r.text
    assert owner.post("/api/lighting/light", json={"brightness": 300}).json()["state"] == "missing"


def test_a_refusal_is_502(owner: Browser, bridge: FakeBridge) -> None:
    bridge.refuse = "command queue full (256 waiting)"
    r = owner.post("/api/lighting/scene", json={"scene": "safe"})
    assert r.status_code == 502
    assert r.json() == {"error": "the microcontroller bridge refused: command queue full (256 waiting)"}


class FakeEngineLighting:
    """The engine's ``status`` (its ``lighting`` part) and ``lighting_match``."""

    def __init__(self, settings: Settings, serve_socket: Any) -> None:
        self.on = False
        self.calls: list[bool] = []

        def status(args: dict[str, Any]) -> dict[str, Any]:
            return {
                "lighting": {
                    "match_far_side": self.on,
                    "state": "matching: 12 lx to go" if self.on else "off",
                    "calibrated": True,
                    "local_lux": 388.0,
                    "far_lux_smoothed": 400.4,
                    "far_age_s": 0.6,
                }
            }

        def lighting_match(args: dict[str, Any]) -> dict[str, Any]:
            self.on = bool(args["on"])
            self.calls.append(self.on)
            return {"lighting": status({})["lighting"]}

        serve_socket(settings.engine.control_socket, {"status": status, "lighting_match": lighting_match})


def test_matching_the_far_side_is_saved_and_switched_live(
    owner: Browser, bridge: FakeBridge, settings: Settings, serve_socket: Any, config_path: Path
) -> None:
    engine = FakeEngineLighting(settings, serve_socket)
    html = owner.client.get("/lighting").text
    assert "<dt>Matching</dt><dd>off</dd>" in html and ">Match the far side</button>" in html
    assert "388 lx" in html and "400 lx" in html
    r = owner.post("/lighting/match", data={"on": "true", "csrf_token": owner.csrf})
    assert r.status_code == 200 and "Matching the far side&#39;s light is on." in r.text
    assert (
        engine.calls == [True] and "matching: 12 lx to go" in r.text and ">Stop matching</button>" in r.text
    )
    assert load_settings(config_path).lighting.match_far_side is True  # Holds after a restart.
    assert owner.client.get("/api/lighting/match").json()["enabled"] is True
    r = owner.post("/api/lighting/match", json={"on": False})
    assert r.json() == {"enabled": False, "live": True, "message": "Matching the far side's light is off."}
    assert engine.calls == [True, False] and load_settings(config_path).lighting.match_far_side is False
    assert owner.post("/api/lighting/match", json={"on": "yes please"}).status_code == 422


def test_matching_with_the_engine_down_is_saved_for_its_start(
    owner: Browser, bridge: FakeBridge, config_path: Path
) -> None:
    html = owner.client.get("/lighting").text
    assert "not running: the setting is saved and applies when it starts" in html
    r = owner.post("/api/lighting/match", json={"on": True})
    body = r.json()
    assert r.status_code == 200 and body["enabled"] is True and body["live"] is False
    assert body["message"].startswith(
        "Saved: matching on from the engine's next start (the engine is not running"
    )
    assert load_settings(config_path).lighting.match_far_side is True
