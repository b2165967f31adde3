"""``/metrics``: Prometheus text with a session, or without one from an allowed network; refused otherwise."""

from __future__ import annotations

import argon2
from fastapi.testclient import TestClient

from admin.app import create_app
from admin.prometheus import CONTENT_TYPE
from admin.routes.metrics import may_scrape
from admin.security import Session
from admin.store import AdminStore
from app.settings import AdminSettings, Settings
from tests.admin.conftest import BASE_URL, Browser, FakeClock, FakeFeed, FakeLogSource, new_client
from tests.admin.test_pages import live_sample


def test_with_a_session(owner: Browser, feed: FakeFeed) -> None:
    feed.sample = live_sample()
    r = owner.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"] == CONTENT_TYPE
    assert "doorway_engine_up 1\n" in r.text
    assert "doorway_video_latency_p50_seconds 0.0142\n" in r.text
    assert "# TYPE doorway_stage_latency_p50_seconds gauge" in r.text


def test_without_a_session_it_is_refused(owner: Browser, app: object) -> None:
    from fastapi import FastAPI

    assert isinstance(app, FastAPI)
    with new_client(app) as anonymous:
        r = anonymous.get("/metrics")
        assert r.status_code == 403
        assert r.json()["error"].startswith("not allowed: log in, or add this client's network (testclient)")
        assert "doorway_" not in r.text


def test_an_allowed_network_needs_no_session(
    settings: Settings, store: AdminStore, clock: FakeClock, hasher: argon2.PasswordHasher
) -> None:
    allowed = settings.model_copy(update={"admin": AdminSettings(metrics_allow=("192.168.1.0/24",))})
    app = create_app(
        allowed, store=store, clock=clock, hasher=hasher, collector=FakeFeed(), log_source=FakeLogSource()
    )
    with TestClient(app, base_url=BASE_URL, client=("192.168.1.77", 40000)) as scraper:
        r = scraper.get("/metrics")
        assert r.status_code == 200 and "doorway_engine_up 0\n" in r.text
        # Only /metrics: the rest still needs a session.
        assert scraper.get("/api/live").status_code == 401
    with TestClient(app, base_url=BASE_URL, client=("192.168.2.77", 40000)) as stranger:
        assert stranger.get("/metrics").status_code == 403


def test_may_scrape() -> None:
    s = Settings(admin=AdminSettings(metrics_allow=("10.0.0.0/8", "::1/128")))
    session = Session("owner", b"\0" * 32, "t", 0.0, 1e12, 0.0)
    assert may_scrape(session, "203.0.113.9", s)
    assert (
        may_scrape(None, "10.1.2.3", s)
        and may_scrape(None, "::1", s)
        and may_scrape(None, "::ffff:10.0.0.1", s)
    )
    assert not may_scrape(None, "11.0.0.1", s) and not may_scrape(None, "testclient", s)
    assert not may_scrape(None, "10.1.2.3", Settings())
