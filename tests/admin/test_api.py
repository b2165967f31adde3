"""The JSON API's shape: /api/status with the engine and bridge down or answering, errors, OpenAPI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI

from admin.backends import component_status
from app.control import CommandError
from app.settings import Settings
from tests.admin.conftest import Browser, new_client


def test_status_says_plainly_when_engine_and_bridge_are_down(owner: Browser, settings: Settings) -> None:
    r = owner.client.get("/api/status")
    assert r.status_code == 200
    body = r.json()
    assert body["engine"] == {
        "up": False,
        "status": None,
        "error": f"the engine is not running (no socket at {settings.engine.control_socket})",
    }
    assert body["bridge"]["up"] is False
    assert body["bridge"]["error"] == (
        f"the microcontroller bridge is not running (no socket at {settings.hwcontrol.control_socket})"
    )
    # The overview page still renders, and says so from the collector's latest sample.
    page = owner.client.get("/")
    assert page.status_code == 200 and "Not running" in page.text and "not polled yet" in page.text


def test_status_passes_through_what_answering_processes_say(
    owner: Browser, settings: Settings, serve_socket: Any
) -> None:
    engine_status = {"name": "hall", "role": "duplex", "uptime_s": 12.5, "peer_connected": True}
    serve_socket(settings.engine.control_socket, {"status": lambda args: dict(engine_status)})
    r = owner.client.get("/api/status")
    body = r.json()
    assert body["engine"] == {"up": True, "status": engine_status, "error": None}
    assert body["bridge"]["up"] is False  # One down, the other still reported.

    bridge_status = {"path": "/dev/ttyACM0", "session_id": 7, "stats": {"sent": 3}}
    serve_socket(settings.hwcontrol.control_socket, {"status": lambda args: dict(bridge_status)})
    body = owner.client.get("/api/status").json()
    assert body["bridge"] == {"up": True, "status": bridge_status, "error": None}


def test_status_reports_a_process_that_answers_with_an_error(
    owner: Browser, settings: Settings, serve_socket: Any
) -> None:
    def broken(args: dict[str, Any]) -> dict[str, Any]:
        raise CommandError("camera is on fire")

    serve_socket(settings.engine.control_socket, {"status": broken})
    body = owner.client.get("/api/status").json()
    assert body["engine"] == {"up": True, "status": None, "error": "the engine refused: camera is on fire"}


def test_a_stale_socket_file_reads_as_not_running(sock_dir: Path) -> None:
    import socket

    path = sock_dir / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # The file stays; nobody listens.
    status = component_status(path, "engine")
    assert status.up is False and status.error == f"the engine is not running (nothing answers at {path})"


def test_a_wedged_process_times_out(sock_dir: Path) -> None:
    import socket

    path = sock_dir / "wedged.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(1)  # Accepts connections (the backlog) but never answers.
    try:
        status = component_status(path, "engine", timeout=0.2)
    finally:
        s.close()
    assert status.up is False and status.error == "the engine did not answer within 0.2 s"


def test_session_endpoint(owner: Browser) -> None:
    r = owner.client.get("/api/auth/session")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"username", "csrf_token", "expires_at", "idle_timeout_s"}
    assert body["csrf_token"] == owner.csrf


def test_api_errors_are_json_with_one_message(owner: Browser) -> None:
    r = owner.client.get("/api/nope")
    assert r.status_code == 404 and r.json() == {"error": "no such page or API route: /api/nope"}
    r = owner.client.delete("/api/status", headers={"X-CSRF-Token": owner.csrf})
    assert r.status_code == 405 and r.json() == {"error": "DELETE is not allowed on /api/status"}
    r = owner.post("/api/auth/password", json={"current_password": "x"})
    assert r.status_code == 422
    assert r.json()["error"].startswith("invalid request: new_password: Field required")
    r = owner.post("/api/auth/password", json={"current_password": "x", "new_password": "y", "extra": 1})
    assert r.status_code == 422 and "extra" in r.json()["error"]
    r = owner.post("/api/auth/password", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and set(r.json()) == {"error"}


def test_browsers_get_an_error_page(owner: Browser, app: FastAPI) -> None:
    r = owner.client.get("/nope", headers={"Accept": "text/html"})
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "no such page or API route: /nope" in r.text
    # A logged-out browser sees the same page, without the navigation bar.
    with new_client(app) as c:
        r = c.get("/nope", headers={"Accept": "text/html"})
        assert r.status_code == 404 and "Log out" not in r.text


def test_openapi_document_describes_the_json_api(owner: Browser) -> None:
    r = owner.client.get("/api/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    paths = set(doc["paths"])
    assert {"/api/status", "/api/auth/login", "/api/auth/setup", "/api/auth/session", "/healthz"} <= paths
    assert "/login" not in paths and "/" not in paths and "/api/openapi.json" not in paths
    schemas = doc["components"]["schemas"]
    assert "SystemStatus" in schemas and "ComponentStatus" in schemas


def test_a_session_can_be_injected_with_dependency_overrides(app: FastAPI, client: Any) -> None:
    from admin.deps import optional_session
    from admin.security import Session

    fake = Session("owner", b"\0" * 32, "test-csrf", 0.0, 1e12, 0.0)
    app.dependency_overrides[optional_session] = lambda: fake
    try:
        assert client.get("/api/status").status_code == 200
        assert client.get("/api/auth/session").json()["csrf_token"] == "test-csrf"
        assert client.post("/api/auth/password", json={}, headers={"X-CSRF-Token": "nope"}).status_code == 403
    finally:
        app.dependency_overrides.clear()
    assert client.get("/api/status").status_code == 401
