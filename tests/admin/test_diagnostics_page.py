"""Diagnostics: the bundle's name and contents, with the engine and the bridge answering or not."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

from admin.logs import LogLine
from admin.routes.diagnostics import bundle_name
from app.settings import Settings
from tests.admin.conftest import Browser, FakeClock, FakeFeed, FakeLogSource
from tests.admin.data.fakes import engine_stats, hw_status

KEY_HEX = "ab" * 32


def test_the_bundle(
    owner: Browser,
    settings: Settings,
    serve_socket: Any,
    log_source: FakeLogSource,
    feed: FakeFeed,
    clock: FakeClock,
) -> None:
    stats = engine_stats()
    stats.pop("ok")
    serve_socket(settings.engine.control_socket, {"stats": lambda args: dict(stats)})
    log_source.lines = [
        LogLine(clock() - 60, "engine", "info", "encoder: libx264"),
        LogLine(clock() - 30, "admin", "warning", f"leaked {KEY_HEX} in a message"),
    ]
    r = owner.client.get("/api/diagnostics")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/zip"
    assert (
        r.headers["content-disposition"] == "attachment; filename=doorway-diagnostics-doorway-2023-11-14.zip"
    )
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert sorted(zf.namelist()) == sorted(
            ["README.txt", "settings.toml", "stats.json", "hwcontrol.json", "logs.txt", "versions.json"]
        )
        settings_text = zf.read("settings.toml").decode()
        stats_json = json.loads(zf.read("stats.json"))
        hw = json.loads(zf.read("hwcontrol.json"))
        logs = zf.read("logs.txt").decode()
        versions = json.loads(zf.read("versions.json"))
    assert "[engine]" in settings_text and "[admin]" in settings_text
    assert stats_json["engine"]["decode"]["capture_to_decoded_ms"]["p50"] == 14.2
    assert stats_json["collector"]["engine_error"] == "not polled yet"
    assert stats_json["collector"]["collector"]["polls"] == 7
    assert "samples" in stats_json["collector"]["history"]
    assert hw is None  # The bridge is not running.
    assert "engine info encoder: libx264" in logs and KEY_HEX not in logs and "<removed>" in logs
    assert "python" in versions and "fastapi" in versions
    # The read asked for every service's last day.
    assert log_source.reads[-1] == (("engine", "hwcontrol", "admin"), "debug", clock() - 86400, 5000)
    events = owner.client.get("/api/history", params={"hours": 1}).json()["events"]
    assert any(e["message"] == "diagnostics bundle downloaded" for e in events)


def test_the_bundle_with_unreadable_logs_and_a_bridge(
    owner: Browser, settings: Settings, serve_socket: Any, log_source: FakeLogSource
) -> None:
    status = hw_status()
    status.pop("ok")
    serve_socket(settings.hwcontrol.control_socket, {"status": lambda args: dict(status)})
    log_source.error = "journalctl took longer than 5 s"
    r = owner.client.get("/api/diagnostics")
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert json.loads(zf.read("hwcontrol.json"))["state"] == "ready"
        assert "the logs could not be read: journalctl took longer than 5 s" in zf.read("logs.txt").decode()
        assert json.loads(zf.read("stats.json"))["engine"] is None


def test_the_page(owner: Browser) -> None:
    r = owner.client.get("/diagnostics")
    assert r.status_code == 200
    assert '<a class="button" href="/api/diagnostics" download>' in r.text
    assert "with secrets removed" in r.text and "Polls</dt><dd>7</dd>" in r.text


def test_bundle_names_are_safe() -> None:
    assert bundle_name("kitchen", 1_700_000_000) == "doorway-diagnostics-kitchen-2023-11-14.zip"
    assert bundle_name('Hall "A"/../x', 0) == "doorway-diagnostics-Hall-A-..-x-1970-01-01.zip"
    assert bundle_name("ÄÖ", 0) == "doorway-diagnostics-doorway-1970-01-01.zip"
