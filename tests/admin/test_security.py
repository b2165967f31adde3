"""Every route behind a session and CSRF; body limits; path tricks; headers; cookies; nothing external."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from starlette.routing import Mount

from admin.middleware import path_problem
from admin.security import CSRF_COOKIE, SESSION_COOKIE, AuthError, RateLimiter
from admin.store import AdminStore
from admin.web import STATIC_DIR, TEMPLATES_DIR
from tests.admin.conftest import Browser, FakeClock, api_login, new_client

PUBLIC_ROUTES = {
    ("GET", "/login"),
    ("POST", "/login"),
    ("GET", "/setup"),
    ("POST", "/setup"),
    ("GET", "/healthz"),
    ("GET", "/api/auth/csrf"),
    ("POST", "/api/auth/login"),
    ("POST", "/api/auth/setup"),
    # Prometheus cannot log in: the route answers a session or a client in admin.metrics_allow (empty by
    # default) and refuses everyone else by itself (tests/admin/test_metrics.py).
    ("GET", "/metrics"),
}
"""Every route that may answer without a session. Adding one here needs a reason in review."""

STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
PAGES = ("/", "/pairing", "/lighting", "/settings", "/logs", "/diagnostics", "/password")
"""Every page behind a session."""


def routes(app: FastAPI) -> Iterator[tuple[str, str]]:
    """(method, concrete path) for every API route and page of the app; path parameters get a dummy.

    FastAPI >= 0.16x keeps included routers as such in ``app.routes``; ``iter_route_contexts`` flattens
    them into the routes as served (prefix applied)."""
    for ctx in iter_route_contexts(app.routes):
        route = ctx.original_route
        if isinstance(route, APIRoute):
            path = re.sub(r"\{[^}]+\}", "1", str(ctx.path))
            for method in sorted(ctx.methods or ()):
                yield method, path
        elif not isinstance(route, Mount):
            raise AssertionError(f"unexpected route type {route!r}: the tests do not know how to check it")


def test_the_route_list_is_what_the_tests_expect(app: FastAPI) -> None:
    found = set(routes(app))
    assert found >= PUBLIC_ROUTES
    assert ("GET", "/api/status") in found and ("POST", "/api/auth/logout") in found
    mounts = [r.path for r in app.routes if isinstance(r, Mount)]
    assert mounts == ["/static"]


def test_every_route_refuses_without_a_session(app: FastAPI, owner: Browser) -> None:
    with new_client(app) as anonymous:
        for method, path in routes(app):
            if (method, path) in PUBLIC_ROUTES:
                continue
            r = anonymous.request(method, path, follow_redirects=False, json={})
            if path.startswith("/api/"):
                assert r.status_code == 401, (method, path, r.status_code, r.text)
                assert "not logged in" in r.json()["error"]
            else:
                assert r.status_code == 303, (method, path, r.status_code)
                assert r.headers["location"].startswith("/login"), (method, path)


def test_a_forged_or_expired_session_cookie_is_no_session(
    app: FastAPI, owner: Browser, clock: FakeClock
) -> None:
    with new_client(app) as c:
        c.cookies.set(SESSION_COOKIE, "A" * 43, domain="doorway.local")
        assert c.get("/api/status").status_code == 401
        c.cookies.set(SESSION_COOKIE, "x" * 10_000, domain="doorway.local")
        assert c.get("/api/status").status_code == 401
    clock.advance(13 * 3600)
    assert owner.client.get("/api/status").status_code == 401


@pytest.mark.parametrize("token", [None, "", "wrong-token"])
def test_every_state_changing_route_needs_the_csrf_token(
    app: FastAPI, owner: Browser, store: AdminStore, token: str | None
) -> None:
    headers = {} if token is None else {"X-CSRF-Token": token}
    checked = 0
    for method, path in routes(app):
        if method not in STATE_CHANGING:
            continue
        r = owner.client.request(method, path, headers=headers, json={}, follow_redirects=False)
        assert r.status_code == 403, (method, path, r.status_code, r.text)
        assert "CSRF" in r.json()["error"], (method, path)
        # Forms too: a wrong csrf_token field is refused the same way.
        r = owner.client.request(
            method, path, data={"csrf_token": token or ""}, headers={"Accept": "application/json"}
        )
        assert r.status_code == 403, (method, path, r.status_code, r.text)
        checked += 1
    assert checked >= 7
    # Nothing happened: still logged in, still one session.
    assert owner.client.get("/api/auth/session").status_code == 200
    assert store.session_count() == 1


def test_csrf_messages_are_clear(app: FastAPI, owner: Browser) -> None:
    r = owner.client.post("/api/auth/logout")
    assert r.json()["error"].startswith("missing CSRF token: send the X-CSRF-Token header")
    r = owner.post("/api/auth/logout", headers={"X-CSRF-Token": "nope"})
    assert "wrong CSRF token" in r.json()["error"] and "reload" in r.json()["error"]
    with new_client(app) as c:
        r = c.post("/api/auth/login", json={"username": "a", "password": "b"}, headers={"X-CSRF-Token": "x"})
        assert r.status_code == 403 and "missing CSRF cookie" in r.json()["error"]


def test_login_csrf_needs_the_cookie_and_the_same_token(app: FastAPI, owner: Browser) -> None:
    """Login CSRF: a foreign page can post a login form, but cannot know or set the browser's cookie."""
    with new_client(app) as victim, new_client(app) as attacker:
        attacker_token = attacker.get("/api/auth/csrf").json()["csrf_token"]
        victim.get("/login")  # The victim's browser has its own cookie.
        assert victim.cookies.get(CSRF_COOKIE)
        r = victim.post(
            "/login",
            data={"csrf_token": attacker_token, "username": "owner", "password": "correct horse battery"},
            headers={"Accept": "application/json"},
        )
        assert r.status_code == 403
        assert victim.get("/api/status").status_code == 401


def test_a_foreign_origin_is_refused_even_with_the_right_token(owner: Browser) -> None:
    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "https://doorway.local.evil.example"},
        {"Referer": "https://evil.example/page"},
        {"Origin": "http://doorway.local:8080"},
    ):
        r = owner.post("/api/auth/logout", headers=headers)
        assert r.status_code == 403, headers
        assert "cross-site request refused" in r.json()["error"]
    # Our own origin, and "null" (what browsers send under Referrer-Policy: no-referrer), pass.
    r = owner.post("/api/auth/password", headers={"Origin": "https://doorway.local"}, json={})
    assert r.status_code == 422
    r = owner.post("/api/auth/logout", headers={"Origin": "null"})
    assert r.status_code == 200


# -- bodies -----------------------------------------------------------------------------------------------


def test_oversized_body_is_refused_with_413(owner: Browser) -> None:
    big = b"x" * (64 * 1024 + 1)
    r = owner.post("/api/auth/password", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json() == {"error": "request body too large: at most 64 KiB is accepted"}
    # Just under the limit reaches the route (and fails there as bad JSON, not as too large).
    r = owner.post(
        "/api/auth/password", content=b" " * (64 * 1024), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422


def test_a_lying_content_length_does_not_get_past(owner: Browser, app: FastAPI) -> None:
    # Sent straight to the ASGI app, so the declared length can disagree with what arrives.
    status, _, body = asgi_request(
        app, "POST", "/api/auth/password", headers=[(b"content-length", b"10")], body=[b"x" * 70_000]
    )
    assert status == 413 and b"too large" in body


def test_a_chunked_body_is_counted(owner: Browser) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b"y" * 4096

    r = owner.post("/api/auth/password", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_a_huge_declared_length_is_refused_without_reading(app: FastAPI) -> None:
    status, _, body = asgi_request(
        app, "POST", "/api/auth/login", headers=[(b"content-length", b"999999999")], body=[]
    )
    assert status == 413
    status, _, body = asgi_request(
        app, "POST", "/api/auth/login", headers=[(b"content-length", b"-5")], body=[]
    )
    assert status == 400 and b"Content-Length" in body


# -- paths ------------------------------------------------------------------------------------------------

TRICKS = [
    "/static/%2e%2e/admin.db",
    "/static/%2E%2E/%2E%2E/state/admin.db",
    "/static/..%2fadmin.db",
    "/static/%2e%2e%2f%2e%2e%2fadmin.db",
    "/static/admin.css%00.js",
    "/static/admin.css%00",
    "/static//admin.css",
    "/static/%5c..%5cadmin.db",
    "/static/.%2e/admin.db",
    "/api/%2e%2e/healthz",
]


@pytest.mark.parametrize("path", TRICKS)
def test_path_tricks_are_refused_clearly(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert 400 <= r.status_code < 500, (path, r.status_code)
    assert "bad request path" in r.json()["error"]
    assert b"SQLite" not in r.content


@pytest.mark.parametrize(
    "raw",
    [
        b"/static/../admin.db",
        b"/static/../../state/admin.db",
        b"/static/..\\admin.db",
        b"/%2e%2e/x",
        b"//static//admin.css",
        b"/static/./admin.css",
        b"/static/admin.css\x00",
    ],
)
def test_raw_dot_segments_never_reach_a_file(app: FastAPI, client: TestClient, raw: bytes) -> None:
    # httpx normalises "/static/../x" before sending; a raw client need not, so go in at the ASGI level.
    from urllib.parse import unquote

    status, _, body = asgi_request(app, "GET", unquote(raw.decode()), raw_path=raw)
    assert status == 400 and b"bad request path" in body


def test_path_problem_accepts_ordinary_paths() -> None:
    for ok in ("/", "/static/admin.css", "/api/status", "/login", "/static/dir/"):
        assert path_problem(ok) is None, ok


def test_unknown_static_files_are_404(client: TestClient) -> None:
    r = client.get("/static/admin.db", headers={"Accept": "application/json"})
    assert r.status_code == 404
    r = client.get("/static/nope.css")
    assert r.status_code == 404 and "SQLite" not in r.text


def test_static_files_are_served_without_a_session(client: TestClient) -> None:
    r = client.get("/static/admin.css")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/css")
    r = client.get("/static/admin.js")
    assert r.status_code == 200 and "javascript" in r.headers["content-type"]
    assert "X-CSRF-Token" in r.text


# -- headers and cookies ----------------------------------------------------------------------------------


def check_security_headers(headers: Any, *, static: bool = False) -> None:
    csp = headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["strict-transport-security"].startswith("max-age=")
    if not static:
        assert headers["cache-control"] == "no-store"


def test_security_headers_on_every_kind_of_answer(app: FastAPI, owner: Browser) -> None:
    c = owner.client
    check_security_headers(c.get("/").headers)
    check_security_headers(c.get("/api/status").headers)
    check_security_headers(c.get("/healthz").headers)
    check_security_headers(c.get("/static/admin.css").headers, static=True)
    check_security_headers(c.get("/nope").headers)
    check_security_headers(c.get("/static/%2e%2e/x").headers)
    check_security_headers(owner.post("/api/auth/password", content=b"x" * 70_000).headers)
    with new_client(app) as anonymous:
        check_security_headers(anonymous.get("/login").headers)
        check_security_headers(anonymous.get("/api/status").headers)


def test_no_hsts_on_plain_http(app: FastAPI) -> None:
    with TestClient(app, base_url="http://doorway.local") as c:
        r = c.get("/healthz")
        assert "strict-transport-security" not in r.headers
        assert r.headers["x-content-type-options"] == "nosniff"


def parse_set_cookies(headers: Any) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for line in headers.get_list("set-cookie"):
        jar: SimpleCookie = SimpleCookie()
        jar.load(line)
        for name, morsel in jar.items():
            attrs = {k.lower(): str(v) for k, v in morsel.items() if v}
            flags = {part.strip().lower() for part in line.split(";")[1:]}
            attrs.update({f: "true" for f in ("httponly", "secure") if f in flags})
            out[name] = attrs
    return out


def test_cookie_flags(app: FastAPI, owner: Browser) -> None:
    with new_client(app) as c:
        cookies = parse_set_cookies(c.get("/login").headers)
        csrf = cookies[CSRF_COOKIE]
        assert (
            csrf["httponly"]
            and csrf["secure"]
            and csrf["samesite"].lower() == "strict"
            and csrf["path"] == "/"
        )
        assert "domain" not in csrf  # A __Host- cookie must have none.
        r = api_login(c)
        session = parse_set_cookies(r.headers)[SESSION_COOKIE]
        assert session["httponly"] and session["secure"]
        assert session["samesite"].lower() == "strict" and session["path"] == "/"
        assert int(session["max-age"]) == 12 * 3600
        r = c.post("/api/auth/logout", headers={"X-CSRF-Token": r.json()["csrf_token"]})
        gone = parse_set_cookies(r.headers)[SESSION_COOKIE]
        assert gone["max-age"] == "0" and gone["secure"] and gone["httponly"]


def test_healthz_says_nothing_but_ok(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"ok": True}
    assert "server" not in r.headers


def test_framework_docs_are_not_served(client: TestClient) -> None:
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        assert client.get(path, headers={"Accept": "application/json"}).status_code == 404, path
    assert client.get("/api/openapi.json").status_code == 401


def test_nothing_is_loaded_from_outside_the_doorway(app: FastAPI, owner: Browser) -> None:
    external = re.compile(r"(?:https?:)?//[a-z0-9]", re.I)
    for path in sorted(TEMPLATES_DIR.rglob("*")) + sorted(STATIC_DIR.rglob("*")):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            refs = re.findall(r"""(?:src|href|action|url)\s*[=(]\s*["']?([^"')\s>]+)""", text, re.I)
            for ref in refs:
                assert not external.match(ref), f"{path.name} loads {ref}"
            assert "@import" not in text, path.name
    for page in PAGES:
        html = owner.client.get(page).text
        assert "<script>" not in html and " style=" not in html and "onclick" not in html.lower()
        for ref in re.findall(r"""(?:src|href|action)="([^"]+)\"""", html):
            assert ref.startswith("/"), f"{page} refers to {ref}"


def test_pages_work_on_a_phone(client: TestClient) -> None:
    html = client.get("/setup").text
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    css = (STATIC_DIR / "admin.css").read_text()
    assert "@media" in css and "minmax(" in css


# -- rate limiter without HTTP ----------------------------------------------------------------------------


def test_rate_limiter_rules(store: AdminStore, clock: FakeClock) -> None:
    limiter = RateLimiter(store, max_failures=3, lockout_s=600, clock=clock)
    limiter.check("10.0.0.2", "owner")
    for _ in range(3):
        limiter.failed("10.0.0.2", "owner")
        clock.advance(100)
    with pytest.raises(AuthError) as exc:
        limiter.check("10.0.0.3", "owner")  # Another client, same name: the name is locked.
    assert exc.value.status == 429 and exc.value.retry_after == 600 - 100
    with pytest.raises(AuthError):
        limiter.check("10.0.0.2", None)  # Same client, any name.
    limiter.check("10.0.0.3", "other")
    clock.advance(500)
    limiter.check("10.0.0.2", "owner")
    # Old failures are pruned as new ones arrive.
    clock.advance(10_000)
    limiter.failed("10.0.0.9")
    assert store.failures("client", "10.0.0.2", 0) == []


# -- helpers ----------------------------------------------------------------------------------------------


def asgi_request(
    app: FastAPI,
    method: str,
    path: str,
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    body: list[bytes] | None = None,
    raw_path: bytes | None = None,
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request straight into the ASGI app (no client to tidy it up); returns (status, headers, body).

    Only for requests the middleware refuses before routing: the app's lifespan is not running here.
    """
    chunks = list(body or [b""])
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if chunks:
            data = chunks.pop(0)
            return {"type": "http.request", "body": data, "more_body": bool(chunks)}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        "path": path,
        "raw_path": raw_path if raw_path is not None else path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"doorway.local"), *(headers or [])],
        "client": ("127.0.0.1", 5000),
        "server": ("doorway.local", 443),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in messages if m["type"] == "http.response.start")
    data = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), data


def test_store_files_are_private(store: AdminStore) -> None:
    assert store.path.stat().st_mode & 0o777 == 0o600
    assert store.pragmas() == {"journal_mode": "wal", "synchronous": "full"}
    assert Path(f"{store.path}-wal").stat().st_mode & 0o777 == 0o600
