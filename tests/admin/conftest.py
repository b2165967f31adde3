"""Fixtures for the admin panel: settings in a temporary state directory, a fake clock, cheap argon2, an
app, a TestClient on https://doorway.local (so Secure cookies flow), and a client already logged in.

The app gets a :class:`FakeFeed` instead of a collector thread (tests set its sample and what its live
streams yield), a :class:`FakeLogSource`, and a settings file path in the temporary directory (absent until
a test writes it); its history is a real one in the state directory."""

from __future__ import annotations

import contextlib
import tempfile
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import argon2
import httpx2
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from admin.app import create_app
from admin.collector import Reducer, TooManySubscribersError
from admin.history import LEVELS
from admin.logs import LogLine, LogSourceError
from admin.security import Passwords, format_setup_code, issue_setup_code
from admin.store import AdminStore
from app.control import ControlServer, Handler
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


class FakeSubscription:
    """A live view that yields ``items`` (None: a wait that timed out) and then ends."""

    def __init__(self, items: Sequence[dict[str, Any] | None]) -> None:
        self.items: deque[dict[str, Any] | None] = deque(items)
        self.closed = False

    def get(self, timeout_s: float | None = None) -> dict[str, Any] | None:
        if self.items:
            return self.items.popleft()
        self.closed = True
        return None

    def close(self) -> None:
        self.closed = True


class FakeFeed:
    """The collector as the pages see it: ``sample`` is the latest one; each live view yields ``stream``."""

    def __init__(self) -> None:
        self.sample: dict[str, Any] = Reducer().empty(1_700_000_000.0)
        self.stream: list[dict[str, Any] | None] = []
        self.subscriptions: list[FakeSubscription] = []
        self.full = False

    def latest(self) -> dict[str, Any]:
        return dict(self.sample)

    def subscribe(self) -> FakeSubscription:
        if self.full:
            raise TooManySubscribersError("at most 16 live views at once")
        sub = FakeSubscription(self.stream)
        self.subscriptions.append(sub)
        return sub

    def stats(self) -> dict[str, int]:
        open_ = sum(not s.closed for s in self.subscriptions)
        return {"polls": 7, "errors": 0, "subscribers": open_, "dropped_total": 0, "abandoned": 0}


class FakeLogSource:
    """Log lines kept in a list; ``error`` makes every read fail as an unreadable journal does."""

    def __init__(self) -> None:
        self.lines: list[LogLine] = []
        self.error: str | None = None
        self.reads: list[tuple[tuple[str, ...], str, float | None, int]] = []

    def read(self, services: Sequence[str], level: str, since: float | None, limit: int) -> list[LogLine]:
        self.reads.append((tuple(services), level, since, limit))
        if self.error is not None:
            raise LogSourceError(self.error)
        floor = LEVELS.index(level)
        found = [
            ln
            for ln in self.lines
            if ln.service in services
            and LEVELS.index(ln.level) >= floor
            and (since is None or ln.t is None or ln.t >= since)
        ]
        return found[-limit:]


@pytest.fixture
def feed() -> FakeFeed:
    return FakeFeed()


@pytest.fixture
def log_source() -> FakeLogSource:
    return FakeLogSource()


@pytest.fixture
def serve_socket() -> Iterator[Any]:
    """``serve_socket(path, commands)``: a control socket (as the engine's or the bridge's) answering with
    ``commands``, closed at the end of the test."""
    servers: list[ControlServer] = []

    def start(path: Path, commands: dict[str, Handler]) -> ControlServer:
        server = ControlServer(path, commands)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    """The settings file the settings page edits (absent until a test writes it)."""
    return tmp_path / "etc" / "doorway.toml"


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
def app(
    settings: Settings,
    store: AdminStore,
    clock: FakeClock,
    hasher: argon2.PasswordHasher,
    feed: FakeFeed,
    log_source: FakeLogSource,
    config_path: Path,
) -> FastAPI:
    config_path.parent.mkdir(exist_ok=True)
    return create_app(
        settings,
        config_path=config_path,
        store=store,
        clock=clock,
        hasher=hasher,
        collector=feed,
        log_source=log_source,
    )


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
