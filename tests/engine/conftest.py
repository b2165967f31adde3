"""Helpers for engine tests: small, real engines on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.launch import free_udp_ports
from app.settings import Settings


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("DOORWAY_"):
            monkeypatch.delenv(key)


def small_settings(tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    """A 320×240@30 doorway on loopback; ``sections`` override or add keys per section."""
    (port,) = free_udp_ports(1)
    base: dict[str, dict[str, Any]] = {
        "engine": {
            "control_socket": str(tmp_path / "engine.sock"),
            "name": "test",
            "state_dir": str(tmp_path / "state"),
        },
        "capture": {"backend": "synthetic", "reopen_interval_s": 0.2},
        "video": {"width": 320, "height": 240, "fps": 30, "bitrate_kbps": 800, "encoder": "x264"},
        "network": {
            "listen_host": "127.0.0.1",
            "listen_port": port,
            "peer_host": "127.0.0.1",
            "peer_port": port,
            # A mirror engine talks to itself in plaintext; encrypted calls have their own tests.
            "encryption": "off",
        },
        "display": {"backend": "null"},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return Settings(**base)  # type: ignore[arg-type]


def wait_for(predicate: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true; fail after a generous timeout (never a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def run_engine(engine: Any) -> tuple[threading.Event, threading.Thread, list[int]]:
    """Start ``engine`` and wait for it on a thread: (stop event, the thread, its exit status when done)."""
    stop = threading.Event()
    status: list[int] = []
    engine.start()
    t = threading.Thread(target=lambda: status.append(engine.wait(stop)), daemon=True)
    t.start()
    return stop, t, status


def audio_stats(engine: Any) -> dict[str, Any]:
    """The engine's audio statistics, as its control socket's ``stats`` gives them."""
    stats: dict[str, Any] = engine.stats()["audio"]
    return stats
