"""Privacy: the room controller's button (through hwcontrol's socket) or the control socket puts a "Privacy"
slate in place of the camera and silence in place of the microphone, and takes them away again."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.control import ControlServer, Stream, request
from app.engine.engine import Engine
from tests.engine.conftest import small_settings, wait_for


class FakeBridge:
    """hwcontrol's control socket, reduced to ``subscribe``: the test pushes events."""

    def __init__(self, path: Path) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.subscribed = threading.Event()

        def subscribe(args: dict[str, Any]) -> Stream:
            self.subscribed.set()

            def items() -> Iterator[dict[str, Any]]:
                while True:
                    try:
                        yield self.events.get(timeout=0.2)
                    except queue.Empty:
                        yield {"event": "keepalive"}

            return Stream({"subscribed": True, "state": "ready"}, items())

        self.server = ControlServer(path, {"subscribe": subscribe})
        self.server.start()


def test_privacy_button_and_control_socket(tmp_path: Path) -> None:
    bridge = FakeBridge(tmp_path / "hw.sock")
    settings = small_settings(tmp_path, hwcontrol={"control_socket": str(tmp_path / "hw.sock")})
    engine = Engine(settings)
    assert engine.capture is not None and engine.audio is not None
    source = engine.capture.source
    stop = threading.Event()
    engine.start()
    t = threading.Thread(target=lambda: engine.wait(stop), daemon=True)
    t.start()
    sock = settings.engine.control_socket
    try:
        assert bridge.subscribed.wait(10)
        wait_for(lambda: engine.hwlink.connected, what="the engine subscribed to the bridge")
        bridge.events.put({"event": "privacy_button", "value": 0, "mcu_uptime_ms": 1})
        wait_for(lambda: request(sock, "status")["privacy"], what="privacy on from the button")
        assert engine.audio.muted
        slates = source.slate_frames  # type: ignore[attr-defined]
        wait_for(lambda: source.slate_frames >= slates + 10, what="privacy slates")  # type: ignore[attr-defined]
        bridge.events.put({"event": "privacy_button", "value": 0, "mcu_uptime_ms": 2})
        wait_for(lambda: not request(sock, "status")["privacy"], what="privacy off from the button")
        assert not engine.audio.muted
        assert request(sock, "privacy", on=True)["privacy"] is True
        assert request(sock, "privacy", on="yes")["ok"] is False
        bridge.events.put({"event": "privacy_switch", "value": 0, "mcu_uptime_ms": 3})
        wait_for(lambda: not request(sock, "status")["privacy"], what="the switch turned it off")
        status = request(sock, "status")
    finally:
        stop.set()
        t.join(30)
        bridge.server.close()
    assert status["hwcontrol"]["connected"] and status["hwcontrol"]["events"] >= 3


def test_a_stale_button_press_is_ignored(tmp_path: Path) -> None:
    from app.engine.hwlink import HwLink

    calls: list[tuple[bool, str]] = []
    link = HwLink(tmp_path / "none.sock", lambda on, why: calls.append((on, why)))
    link._on_event({"event": "privacy_button", "value": 0, "age_ms": 60_000})
    assert calls == []
    link._on_event({"event": "privacy_button", "value": 0, "age_ms": 20})
    link._on_event({"event": "privacy_switch", "value": 0, "age_ms": 60_000})  # a state, not a press
    assert calls == [(True, "privacy button"), (False, "privacy switch")]
