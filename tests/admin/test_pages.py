"""Every page renders for the owner, with its heading and navigation; the overview from the live sample;
the admin's own actions land in the history's events; the page scripts are served."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI

from admin.collector import Reducer
from admin.web import STATIC_DIR
from tests.admin.conftest import Browser, FakeClock, FakeFeed, api_login, new_client
from tests.admin.data.fakes import SENSORS, T0, engine_stats, hw_status

HEADINGS = {
    "/": "<h1>doorway</h1>",
    "/pairing": "<h1>Pairing</h1>",
    "/lighting": "<h1>Lighting and sensors</h1>",
    "/settings": "<h1>Settings</h1>",
    "/logs": "<h1>Logs</h1>",
    "/diagnostics": "<h1>Diagnostics</h1>",
    "/password": "<h1>Change the password</h1>",
}


def live_sample() -> dict[str, object]:
    """A sample as the collector makes it from realistic answers, with rates (two polls)."""
    reducer = Reducer()
    common = {
        "engine_error": None,
        "hw_status": hw_status(),
        "hw_sensors": SENSORS["sensors"],
        "hw_error": None,
        "soc_temperature_c": 55.5,
        "system_cpu_percent": 33.0,
    }
    reducer.reduce(mono=1.0, t=T0, engine=engine_stats(), **common)  # type: ignore[arg-type]
    later = engine_stats(uptime_s=101.0, shown=6060, rx_bytes=151_500_000, tx_bytes=141_500_000)
    return reducer.reduce(mono=2.0, t=T0 + 1, engine=later, **common)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", sorted(HEADINGS))
def test_every_page_renders_with_its_heading(owner: Browser, path: str) -> None:
    r = owner.client.get(path)
    assert r.status_code == 200, (path, r.text[:500])
    assert r.headers["content-type"].startswith("text/html")
    assert HEADINGS[path] in r.text
    # The navigation bar reaches every page and marks this one.
    for href in HEADINGS:
        assert f'href="{href}"' in r.text
    assert re.search(rf'<a href="{re.escape(path)}" aria-current="page">', r.text), path
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in r.text


def test_the_overview_shows_the_live_sample(owner: Browser, feed: FakeFeed) -> None:
    feed.sample = live_sample()
    html = owner.client.get("/").text
    assert "<h1>kitchen</h1>" in html  # The engine's own name, from the sample.
    assert ">connected<" in html
    assert ">studio<" in html  # The twin.
    assert '<span data-key="video_latency_p50_ms" data-digits="1" data-unit="ms">14.2 ms</span>' in html
    assert '<span data-key="fps_shown" data-digits="1" data-unit="fps">60.0 fps</span>' in html
    assert '<span data-key="loss_percent" data-digits="2" data-unit="%">0.25 %</span>' in html
    assert '<span data-key="rtt_ms" data-digits="1" data-unit="ms">1.8 ms</span>' in html
    assert '<span data-key="room_lux" data-digits="0" data-unit="lx">312 lx</span>' in html
    assert '<span data-key="soc_temperature_c" data-digits="1" data-unit="°C">55.5 °C</span>' in html
    assert '<span data-key="mic_dbfs" data-digits="1" data-unit="dBFS">-42.5 dBFS</span>' in html
    assert '<span data-key="stage_decode_p50_ms" data-digits="2" data-unit="ms">3.30 ms</span>' in html
    # Both processes answer: the "not running" banners are there for the script, but hidden.
    assert re.search(r'<p class="message error" role="status" data-down="engine" hidden>', html)
    assert re.search(r'<p class="message error" role="status" data-down="hwcontrol" hidden>', html)
    # The charts, live and history, with their specs for charts.js.
    assert html.count("<canvas data-chart=") == 18
    assert "&#34;key&#34;:&#34;video_latency_p99_ms&#34;" in html
    assert '<script src="/static/charts.js" defer></script>' in html


def test_the_overview_says_plainly_when_engine_and_bridge_are_down(owner: Browser, feed: FakeFeed) -> None:
    feed.sample = Reducer().reduce(
        mono=1.0,
        t=T0,
        engine=None,
        engine_error="engine not reachable at /run/doorway/engine.sock: [Errno 2] No such file",
        hw_status=None,
        hw_sensors=None,
        hw_error="hwcontrol not reachable at /run/doorway/hwcontrol.sock: refused",
        soc_temperature_c=None,
        system_cpu_percent=None,
    )
    r = owner.client.get("/")
    assert r.status_code == 200
    html = r.text
    assert re.search(
        r'data-down="engine">\s*The media engine is not running: <span[^>]*>engine not reachable', html
    )
    assert "The room controller's bridge is not running" in html and "refused</span>" in html
    assert html.count(">Not running<") == 2
    assert ">down<" in html  # The call state.
    assert '<span data-key="fps_shown" data-digits="1" data-unit="fps">—</span>' in html


def test_the_overview_lists_recent_events(owner: Browser, app: FastAPI, clock: FakeClock) -> None:
    history = app.state.admin.history
    history.add_event(clock() - 60, "engine", "warning", "peer lost: studio")
    history.add_event(clock() - 30, "hwcontrol", "error", "MCU refused: <firmware 2.0>")
    history.add_event(clock() - 3 * 86400, "engine", "info", "too old to list")
    html = owner.client.get("/").text
    assert 'class="level-error"' in html and "MCU refused: &lt;firmware 2.0&gt;" in html
    assert "peer lost: studio" in html and "too old to list" not in html
    assert html.index("MCU refused") < html.index("peer lost")  # Newest first.
    assert "<time data-t=" in html and " UTC</time>" in html


def test_logins_and_logouts_are_events(app: FastAPI, owner: Browser, clock: FakeClock) -> None:
    with new_client(app) as other:
        assert api_login(other, password="wrong password!").status_code == 401
        clock.advance(5)  # The wait after a failure.
        r = api_login(other)
        assert r.status_code == 200
        other.post("/api/auth/logout", headers={"X-CSRF-Token": r.json()["csrf_token"]})
    messages = [(e.level, e.message) for e in app.state.admin.history.events(0, limit=50)]
    assert ("info", "owner account 'owner' created from testclient") in messages
    assert ("warning", "login refused for 'owner' from testclient: wrong user name or password") in messages
    assert ("info", "login: 'owner' from testclient") in messages
    assert ("info", "logout: 'owner'") in messages
    assert all(e.source == "admin" for e in app.state.admin.history.events(0, limit=50))


def test_page_scripts_and_styles_are_served(client: object) -> None:
    from fastapi.testclient import TestClient

    assert isinstance(client, TestClient)
    for name in ("charts.js", "overview.js", "pairing.js", "lighting.js", "admin.js", "admin.css"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200, name
        assert len(r.content) > 500, name
    charts = (STATIC_DIR / "charts.js").read_text()
    assert "ResizeObserver" in charts and "devicePixelRatio" in charts and "system-ui" in charts
    overview = (STATIC_DIR / "overview.js").read_text()
    assert 'new EventSource("/api/live/stream")' in overview and "/api/history" in overview
    css = (STATIC_DIR / "admin.css").read_text()
    assert "@media (max-width: 40rem)" in css  # The navigation folds on a phone.
