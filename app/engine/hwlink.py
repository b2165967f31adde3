"""The engine's side of the room controller: privacy from the button and switch, via hwcontrol's socket.

The bridge (``doorway hwcontrol``) is its own process; the engine subscribes to its events on the bridge's
control socket (hwcontrol/README.md) and never talks to the serial port itself. The privacy button toggles
privacy, the privacy switch sets it; in privacy the far room sees a "Privacy" slate instead of the camera and
hears silence instead of the microphone (the call stays up, so privacy ends instantly). When the bridge is
not running the engine just goes on without it, trying again every 2 s.

Thread: one daemon thread ("hwlink") reads the subscription; it calls the engine's ``set_privacy`` from
there (that only flips flags read by the capture and audio-send threads).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RETRY_S = 2.0
STALE_PRESS_MS = 5000
"""A privacy button press reported later than this after it happened is ignored."""
MAX_LINE = 64 * 1024


class HwLink:
    """Subscribes to the bridge at ``path`` and turns privacy events into ``on_privacy(on, why)`` calls, and
    hands sensor reports to ``on_sensors`` (the room light, app/engine/lightmatch.py)."""

    def __init__(
        self,
        path: Path,
        on_privacy: Callable[[bool, str], None],
        on_sensors: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.path = path
        self.on_privacy = on_privacy
        self.on_sensors = on_sensors
        self.connected = False
        self.bridge_state: str | None = None
        self.events = 0
        self._privacy = False
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="hwlink", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5.0)

    def _run(self) -> None:
        announced = False
        while not self._stop.is_set():
            try:
                self._serve()
            except OSError as exc:
                if not announced:
                    log.info("hwcontrol bridge not reachable at %s (%s); going on without it", self.path, exc)
                    announced = True
            self.connected = False
            self._stop.wait(RETRY_S)

    def _serve(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = sock
        try:
            sock.settimeout(30.0)  # the bridge sends a keepalive every 10 s
            sock.connect(str(self.path))
            sock.sendall(b'{"cmd":"subscribe"}\n')
            reader = sock.makefile("rb")
            first = self._parse(reader.readline(MAX_LINE))
            if first is None or not first.get("ok"):
                raise OSError(f"subscription refused: {first}")
            self.connected = True
            self.bridge_state = first.get("state")
            log.info("hwcontrol bridge connected (%s)", self.bridge_state)
            while not self._stop.is_set():
                line = reader.readline(MAX_LINE)
                if not line:
                    raise OSError("the bridge closed the subscription")
                event = self._parse(line)
                if event is not None:
                    self._on_event(event)
        finally:
            self._sock = None
            sock.close()

    @staticmethod
    def _parse(line: bytes) -> dict[str, Any] | None:
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        return obj if isinstance(obj, dict) else None

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        self.events += 1
        if kind == "privacy_button":
            age = event.get("age_ms")
            if isinstance(age, int) and age > STALE_PRESS_MS:
                # Pressed while the bridge was away: a toggle from back then is not what anyone wants now.
                log.info("ignoring a privacy button press from %.1f s ago", age / 1000)
                return
            self._privacy = not self._privacy
            self.on_privacy(self._privacy, "privacy button")
        elif kind == "privacy_switch":
            self._privacy = event.get("value") == 1
            self.on_privacy(self._privacy, "privacy switch")
        elif kind == "state":
            self.bridge_state = str(event.get("state"))
        elif kind == "sensors" and self.on_sensors is not None:
            self.on_sensors(event)

    def stats(self) -> dict[str, Any]:
        return {"connected": self.connected, "bridge_state": self.bridge_state, "events": self.events}
