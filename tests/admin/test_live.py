"""Live data: the latest sample, the server-sent event stream, the stored history, and the app's own
collector and history (the lifespan wiring)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import argon2
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from admin.app import HISTORY_FILE, create_app
from admin.collector import SAMPLE_KEYS, Collector
from admin.history import History
from admin.routes import overview
from admin.store import AdminStore
from app.settings import Settings
from tests.admin.conftest import BASE_URL, Browser, FakeClock, FakeFeed, FakeLogSource, api_setup, setup_code
from tests.admin.data.fakes import ENGINE, HWCONTROL, SENSORS, engine_stats, hw_status
from tests.admin.test_pages import live_sample


def events_of(text: str) -> list[tuple[str, str]]:
    """(field, value) of every line of an event stream; comments as ("", text)."""
    out = []
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith(":"):
            out.append(("", line[1:].strip()))
        else:
            field, _, value = line.partition(":")
            out.append((field, value.strip()))
    return out


def test_api_live_is_the_latest_sample(owner: Browser, feed: FakeFeed) -> None:
    feed.sample = live_sample()
    r = owner.client.get("/api/live")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == set(SAMPLE_KEYS)
    assert body["engine_up"] is True and body["engine_error"] is None
    assert body["video_latency_p50_ms"] == 14.2 and body["fps_shown"] == pytest.approx(60.0)
    assert body["call_state"] == "connected" and body["room_lux"] == 312.5


def test_api_live_before_the_first_poll(owner: Browser) -> None:
    body = owner.client.get("/api/live").json()
    assert body["engine_up"] is False and body["engine_error"] == "not polled yet"
    assert body["fps_shown"] is None


def test_the_stream_sends_each_sample_and_keepalives(owner: Browser, feed: FakeFeed) -> None:
    first, second = live_sample(), dict(live_sample(), t=1_700_000_002.0, fps_shown=float("nan"))
    feed.stream = [first, None, second]  # None: a wait that timed out.
    with owner.client.stream("GET", "/api/live/stream") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-store"
        text = "".join(r.iter_text())
    lines = events_of(text)
    assert lines[0] == ("retry", "3000")
    data = [json.loads(v) for f, v in lines if f == "data"]
    assert [d["t"] for d in data] == [first["t"], 1_700_000_002.0]
    assert data[0]["video_latency_p50_ms"] == 14.2
    assert data[1]["fps_shown"] is None  # NaN is not JSON.
    assert ("", "keepalive") in lines
    assert lines.index(("", "keepalive")) < [i for i, (f, _) in enumerate(lines) if f == "data"][1]
    # Every event is one `data:` line followed by a blank line.
    assert text.count("\n\ndata: ") == 2 and text.endswith("\n\n")
    # The stream ended (the feed closed it) and the subscription is closed.
    assert all(sub.closed for sub in feed.subscriptions)


def test_a_stream_ends_when_its_session_does(
    owner: Browser, feed: FakeFeed, monkeypatch: pytest.MonkeyPatch, app: FastAPI
) -> None:
    monkeypatch.setattr(overview, "SESSION_RECHECK_S", 0.0)
    feed.stream = [live_sample()] * 50
    ctx = app.state.admin
    session = owner.client.get("/api/auth/session").json()
    assert session["username"] == "owner"
    # Logged out in another tab while the stream is open: the next check ends it.
    calls = {"n": 0}
    real = ctx.auth.session

    def session_then_gone(token: str | None) -> Any:
        calls["n"] += 1
        return real(token) if calls["n"] < 3 else None

    monkeypatch.setattr(ctx.auth, "session", session_then_gone)
    with owner.client.stream("GET", "/api/live/stream") as r:
        text = "".join(r.iter_text())
    lines = events_of(text)
    assert ("event", "ended") in lines
    assert sum(f == "data" for f, _ in lines) < 50
    assert feed.subscriptions[-1].closed


def test_too_many_live_views_is_503(owner: Browser, feed: FakeFeed) -> None:
    feed.full = True
    r = owner.client.get("/api/live/stream")
    assert r.status_code == 503
    assert "too many live views are open" in r.json()["error"]


def test_history_returns_samples_and_events(owner: Browser, app: FastAPI, clock: FakeClock) -> None:
    history: History = app.state.admin.history
    now = clock()
    for i in range(120):  # Twenty minutes, one sample every ten seconds.
        history.add_sample(now - 1200 + i * 10, {"fps_shown": 60.0, "rtt_ms": float(i)})
    history.add_sample(now - 2 * 86400, {"fps_shown": 1.0})  # Older than the span asked for.
    history.add_event(now - 100, "engine", "warning", "peer lost: studio")
    history.add_event(now - 50, "admin", "info", "settings saved")

    r = owner.client.get("/api/history", params={"hours": 24, "points": 300})
    assert r.status_code == 200
    body = r.json()
    assert body["until"] == now and body["since"] == now - 86400
    assert body["bucket_s"] == 86400 / 300
    assert len(body["samples"]) == 120
    assert body["samples"][0]["fps_shown"] == 60.0 and body["samples"][5]["rtt_ms"] == 5.0
    assert body["samples"][0]["loss_percent"] is None
    assert [e["message"] for e in body["events"]][1:3] == ["settings saved", "peer lost: studio"]
    assert {c["name"] for c in body["columns"]} >= {"fps_shown", "rtt_ms", "room_lux"}
    assert next(c for c in body["columns"] if c["name"] == "rtt_ms")["unit"] == "ms"

    # Downsampled to at most `points`, each the mean of its bucket.
    body = owner.client.get("/api/history", params={"hours": 1, "points": 10}).json()
    assert len(body["samples"]) <= 10
    assert all(s["fps_shown"] == 60.0 for s in body["samples"])
    # The span is bounded.
    assert owner.client.get("/api/history", params={"hours": 0}).status_code == 422
    assert owner.client.get("/api/history", params={"points": 0}).status_code == 422
    assert owner.client.get("/api/history", params={"points": 100_000}).status_code == 422


def test_the_openapi_document_describes_the_live_api(owner: Browser) -> None:
    doc = owner.client.get("/api/openapi.json").json()
    for path in ("/api/live", "/api/live/stream", "/api/history"):
        assert path in doc["paths"], path
    schemas = doc["components"]["schemas"]
    assert "LiveSample" in schemas and "HistoryOut" in schemas
    assert set(schemas["LiveSample"]["properties"]) == set(SAMPLE_KEYS)
    stream = doc["paths"]["/api/live/stream"]["get"]["responses"]["200"]["content"]
    assert "text/event-stream" in stream


def test_a_real_collector_feeds_the_stream(
    settings: Settings,
    store: AdminStore,
    clock: FakeClock,
    hasher: argon2.PasswordHasher,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The collector's own subscriptions behind the route: a primed sample, then keepalives while the
    collector (not started: polled by hand here) has nothing new."""
    monkeypatch.setattr(overview, "KEEPALIVE_S", 0.01)

    def answer(path: Path, cmd: str, timeout: float = 1.0, **args: Any) -> dict[str, Any]:
        if path == ENGINE:
            return engine_stats()
        return hw_status() if cmd == "status" else SENSORS

    with History(tmp_path / "h.db", retention_s=3600, max_bytes=1 << 20) as history:
        collector = Collector(
            ENGINE,
            HWCONTROL,
            history,
            clock=clock,
            request=answer,
            soc_temperature=lambda: 50.0,
            system_cpu=lambda: 10.0,
        )
        collector.tick()
        app = create_app(
            settings, store=store, clock=clock, hasher=hasher, collector=collector, history=history
        )
        with TestClient(app, base_url=BASE_URL) as c:
            assert api_setup(c, setup_code(store, clock, hasher)).status_code == 201
            assert c.get("/api/live").json()["engine_name"] == "kitchen"
            with c.stream("GET", "/api/live/stream") as r:
                seen: list[tuple[str, str]] = []
                for line in r.iter_lines():
                    if line:
                        seen.append(events_of(line)[0])
                    if sum(f == "" for f, _ in seen) >= 2:
                        break
            data = [json.loads(v) for f, v in seen if f == "data"]
            assert len(data) == 1 and data[0]["engine_name"] == "kitchen" and data[0]["rtt_ms"] == 1.84
            assert ("", "keepalive") in seen
        # The stream's subscription is gone once the client left.
        assert collector.stats()["subscribers"] == 0
        collector.stop()


def test_the_app_runs_its_own_collector_and_history(
    settings: Settings, store: AdminStore, clock: FakeClock, hasher: argon2.PasswordHasher
) -> None:
    app = create_app(settings, store=store, clock=clock, hasher=hasher, log_source=FakeLogSource())
    with TestClient(app, base_url=BASE_URL) as c:
        ctx = app.state.admin
        assert isinstance(ctx.feed, Collector)
        assert ctx.history.path == settings.engine.state_dir / HISTORY_FILE
        assert ctx.history.retention_s == 7 * 86400 and ctx.history.max_bytes == 64 * 1024 * 1024
        assert api_setup(c, setup_code(store, clock, hasher)).status_code == 201
        # The collector's thread polls at once: the (absent) engine reads as down.
        deadline = time.monotonic() + 5.0
        while not ctx.feed.stats()["polls"] and time.monotonic() < deadline:
            time.sleep(0.01)
        body = c.get("/api/live").json()
        assert body["engine_up"] is False and "not reachable" in body["engine_error"]
        collector = ctx.feed
    # Shut down: the thread is stopped and the history closed.
    assert collector._thread is not None and not collector._thread.is_alive()
    assert (settings.engine.state_dir / HISTORY_FILE).exists()
