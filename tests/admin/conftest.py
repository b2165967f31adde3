"""Fixtures for the admin panel: settings in a temporary state directory, a fake clock, cheap argon2, an
app, a TestClient on https://doorway.local (so Secure cookies flow), and a client already logged in."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import argon2
import httpx2
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from admin.app import create_app
from admin.security import Passwords, format_setup_code, issue_setup_code
from admin.store import AdminStore
from app.settings import Settings

BASE_URL = "https://doorway.local"
USER = "owner"
PASSWORD = "correct horse battery"


class FakeClock:
    """Unix seconds that move only when told to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def hasher() -> argon2.PasswordHasher:
    # Cheap parameters: the tests hash dozens of times; the service uses argon2-cffi's defaults.
    return argon2.PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 108 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="dw-admin-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture
def settings(tmp_path: Path, sock_dir: Path) -> Settings:
    return Settings(
        engine={"state_dir": tmp_path / "state", "control_socket": sock_dir / "engine.sock"},  # type: ignore[arg-type]
        hwcontrol={"control_socket": sock_dir / "hwcontrol.sock"},  # type: ignore[arg-type]
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[AdminStore]:
    s = AdminStore(settings.engine.state_dir)
    yield s
    s.close()


@pytest.fixture
def app(settings: Settings, store: AdminStore, clock: FakeClock, hasher: argon2.PasswordHasher) -> FastAPI:
    return create_app(settings, store=store, clock=clock, hasher=hasher)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, base_url=BASE_URL) as c:
        yield c


@contextlib.contextmanager
def new_client(app: FastAPI) -> Iterator[TestClient]:
    """Another browser (own cookie jar) on the same app, whose lifespan the ``client`` fixture runs.

    Not ``with TestClient(app)``: that would run the lifespan again, and its end would close the app."""
    c = TestClient(app, base_url=BASE_URL)
    try:
        yield c
    finally:
        c.close()


def setup_code(store: AdminStore, clock: FakeClock, hasher: argon2.PasswordHasher) -> str:
    """A fresh setup code, formatted as people type it."""
    return format_setup_code(issue_setup_code(store, Passwords(hasher), clock()))


def pre_session_token(client: TestClient) -> str:
    r = client.get("/api/auth/csrf")
    assert r.status_code == 200, r.text
    token = r.json()["csrf_token"]
    assert isinstance(token, str)
    return token


def api_setup(
    client: TestClient, code: str, username: str = USER, password: str = PASSWORD
) -> httpx2.Response:
    token = pre_session_token(client)
    return client.post(
        "/api/auth/setup",
        json={"code": code, "username": username, "password": password},
        headers={"X-CSRF-Token": token},
    )


def api_login(client: TestClient, username: str = USER, password: str = PASSWORD) -> httpx2.Response:
    token = pre_session_token(client)
    return client.post(
        "/api/auth/login", json={"username": username, "password": password}, headers={"X-CSRF-Token": token}
    )


@dataclass
class Browser:
    """A logged-in client and its session's CSRF token."""

    client: TestClient
    csrf: str

    def post(self, url: str, **kw: object) -> httpx2.Response:
        headers = dict(kw.pop("headers", {}) or {})  # type: ignore[call-overload]
        headers.setdefault("X-CSRF-Token", self.csrf)
        return self.client.post(url, headers=headers, **kw)  # type: ignore[arg-type]


@pytest.fixture
def owner(client: TestClient, store: AdminStore, clock: FakeClock, hasher: argon2.PasswordHasher) -> Browser:
    """The owner account made through set-up; ``client`` is logged in as the owner."""
    r = api_setup(client, setup_code(store, clock, hasher))
    assert r.status_code == 201, r.text
    return Browser(client, r.json()["csrf_token"])
