"""Logs: the page and the API filter by service, level and time through the app's log source."""

from __future__ import annotations

from admin.logs import LogLine
from tests.admin.conftest import Browser, FakeClock, FakeLogSource


def fill(source: FakeLogSource, now: float) -> None:
    source.lines = [
        LogLine(now - 7200, "engine", "info", "too old for the last hour"),
        LogLine(now - 300, "engine", "info", "encoder: libx264"),
        LogLine(now - 200, "hwcontrol", "warning", "MCU missing: /dev/ttyACM0"),
        LogLine(now - 100, "admin", "error", "history: <damaged> & moved aside"),
        LogLine(now - 50, "engine", "debug", "frame 1234 decoded"),
    ]


def test_the_api_filters(owner: Browser, log_source: FakeLogSource, clock: FakeClock) -> None:
    fill(log_source, clock())
    r = owner.client.get("/api/logs")
    assert r.status_code == 200
    body = r.json()
    assert body["services"] == ["engine", "hwcontrol", "admin"] and body["level"] == "info"
    assert body["since"] == clock() - 3600
    assert [ln["message"] for ln in body["lines"]] == [
        "encoder: libx264",
        "MCU missing: /dev/ttyACM0",
        "history: <damaged> & moved aside",
    ]
    body = owner.client.get(
        "/api/logs",
        params={"service": ["engine", "hwcontrol"], "level": "warning", "minutes": 10, "limit": 5},
    ).json()
    assert [ln["service"] for ln in body["lines"]] == ["hwcontrol"]
    assert log_source.reads[-1] == (("engine", "hwcontrol"), "warning", clock() - 600, 5)
    body = owner.client.get("/api/logs", params={"level": "debug", "minutes": 180}).json()
    assert len(body["lines"]) == 5
    for bad in ({"service": "kernel"}, {"level": "loud"}, {"minutes": 0}, {"limit": 100_000}):
        assert owner.client.get("/api/logs", params=bad).status_code == 422, bad


def test_the_page_shows_lines_and_keeps_the_filter(
    owner: Browser, log_source: FakeLogSource, clock: FakeClock
) -> None:
    fill(log_source, clock())
    r = owner.client.get("/logs", params={"service": "admin", "level": "warning", "minutes": 15})
    assert r.status_code == 200
    html = r.text
    assert "history: &lt;damaged&gt; &amp; moved aside" in html and "MCU missing" not in html
    assert 'value="admin" checked' in html and 'value="engine">' in html
    assert '<option value="warning" selected>' in html and '<option value="15" selected>' in html
    assert "1 line, oldest first" in html and 'class="level-error"' in html


def test_unreadable_logs_are_said_plainly(owner: Browser, log_source: FakeLogSource) -> None:
    log_source.error = "journalctl failed (exit 1): No journal files were found."
    r = owner.client.get("/logs")
    assert r.status_code == 200
    assert "The logs cannot be read: journalctl failed (exit 1): No journal files were found." in r.text
    r = owner.client.get("/api/logs")
    assert r.status_code == 503
    assert r.json() == {
        "error": "the logs cannot be read: journalctl failed (exit 1): No journal files were found."
    }
