"""Shared web plumbing for routes: the app's context object, page rendering, cookies, error bodies.

Routes get what they need through :mod:`admin.deps`; this module holds the pieces those dependencies and
the route modules share, so that no route module imports another:

- :class:`AdminContext`, built once by the app's lifespan and kept in ``app.state.admin``: settings, the
  store, the :class:`admin.security.Auth` service, the clock, and the pieces the pages drive (the live
  feed, the history, the settings file, pairing, the logs).
- :class:`LiveFeed`, what the pages need of :class:`admin.collector.Collector` (tests pass a fake).
- :func:`render`: a page from ``admin/templates/`` with the variables every page needs (the CSRF token
  for the ``<meta>`` tag and forms, the logged-in user for the navigation bar).
- the cookie helpers, so every cookie carries the same flags (HttpOnly, Secure, SameSite=Strict, Path=/).
- :func:`wants_json` and :func:`error_body`: API paths (``/api/...``) and clients that do not ask for
  HTML get ``{"error": "..."}``; browsers on page paths get the error page.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

import anyio
import jinja2
from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

from admin.history import History
from admin.logs import LogSource
from admin.pairing import PairingManager
from admin.security import CSRF_COOKIE, SESSION_COOKIE, Auth, Session, new_token
from admin.settings_file import SettingsFile
from admin.store import AdminStore
from app.settings import Settings

PACKAGE_DIR: Final = Path(__file__).resolve().parent
TEMPLATES_DIR: Final = PACKAGE_DIR / "templates"
"""Jinja2 templates of the pages."""
STATIC_DIR: Final = PACKAGE_DIR / "static"
"""Files served as they are under ``/static/``: CSS, JavaScript, icons, fonts, chart code. Nothing from
outside the doorway is ever loaded by a page."""
API_PREFIX: Final = "/api/"
"""Paths under this answer JSON, errors included."""

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
    autoescape=True,
    undefined=jinja2.StrictUndefined,  # A misspelt variable is an error in tests, not a blank on a page.
    trim_blocks=True,
    lstrip_blocks=True,
)


def number(value: object, digits: int = 1, unit: str = "") -> str:
    """A measurement for a page: ``12.3 ms``; "—" when it is not known (None, not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "—"
    text = f"{value:.{digits}f}"
    return f"{text} {unit}" if unit else text


def utc_time(t: object) -> str:
    """Unix seconds as ``2024-05-01 12:00:05 UTC`` ("—" when unknown); ``admin.js`` shows it in the
    browser's own time zone."""
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        return "—"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


_env.filters["number"] = number
_env.filters["utc_time"] = utc_time

templates: Final = Jinja2Templates(env=_env)
"""The page templates (FastAPI's ``Jinja2Templates`` over our own strict, autoescaping environment)."""


class LiveSubscription(Protocol):
    """One live view of the samples (:class:`admin.collector.Subscription`)."""

    closed: bool

    def get(self, timeout_s: float | None = None) -> dict[str, Any] | None:
        """The next sample, waiting up to ``timeout_s`` seconds; None on timeout or when closed."""
        ...

    def close(self) -> None: ...


class LiveFeed(Protocol):
    """What the pages use of the :class:`admin.collector.Collector`: the latest sample, live views, and
    its own counters."""

    def latest(self) -> dict[str, Any]: ...

    def subscribe(self) -> LiveSubscription: ...

    def stats(self) -> dict[str, int]: ...


class CurrentSettings:
    """The settings as the panel last saved them (at start: the ones the process runs with). Pairing reads
    the doorway's name and media port from here, so a name saved on the settings page is the one the next
    pairing tells the other doorway, without restarting the panel. Thread-safe."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()

    def get(self) -> Settings:
        with self._lock:
            return self._settings

    def set(self, settings: Settings) -> None:
        with self._lock:
            self._settings = settings


@dataclass(frozen=True)
class AdminContext:
    """What every request may use; one per app, made by the lifespan, in ``app.state.admin``.

    ``settings`` are the ones the process runs with (sockets, state directory, its own listeners);
    ``current`` follows what the settings page saves."""

    settings: Settings
    store: AdminStore
    auth: Auth
    clock: Callable[[], float]
    settings_file: SettingsFile
    current: CurrentSettings
    history: History
    feed: LiveFeed
    logs: LogSource
    pairing: PairingManager
    stream_slots: anyio.CapacityLimiter
    """Worker threads the live streams may hold at once, waiting for samples (apart from the thread pool
    every other request uses, so open overview pages cannot starve it)."""

    def event(self, level: str, message: str) -> None:
        """Record one of the panel's own actions in the history's event list (source "admin"). Writes
        SQLite: call from a worker thread."""
        self.history.add_event(self.clock(), "admin", level, message)


class LoginRequiredError(Exception):
    """A page needs a session and the request has none: the app answers 303 to ``/login?next=...``."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def is_api(request: Request) -> bool:
    """Whether the request is for the JSON API."""
    return request.url.path.startswith(API_PREFIX)


def wants_json(request: Request) -> bool:
    """Whether an error for this request should be JSON: API paths, and clients that do not accept HTML."""
    return is_api(request) or "text/html" not in request.headers.get("accept", "")


def error_body(message: str) -> dict[str, str]:
    """The JSON body of every refusal."""
    return {"error": message}


def safe_next(value: str | None) -> str:
    """A post-login destination that stays on this doorway: a local absolute path, else ``/``."""
    if (
        not value
        or len(value) > 512
        or not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or any(ord(ch) < 0x20 for ch in value)
    ):
        return "/"
    return value


def render(
    request: Request,
    template: str,
    /,
    *,
    session: Session | None = None,
    csrf_token: str | None = None,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
    **context: Any,
) -> Response:
    """Render page ``template`` for ``session`` (or for nobody, with the pre-session ``csrf_token``).

    Every page gets ``csrf_token`` (written into ``<meta name="csrf-token">`` and hidden form fields),
    ``username`` (None when logged out: the navigation bar is hidden) and ``page`` (the navigation entry
    to mark as current; None for none).
    """
    values: dict[str, Any] = {
        "csrf_token": session.csrf_token if session is not None else (csrf_token or ""),
        "username": session.username if session is not None else None,
        "error": None,
        "notice": None,
        "page": None,
    }
    values.update(context)
    return templates.TemplateResponse(request, template, values, status_code=status_code, headers=headers)


def _cookie(response: Response, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="strict")


def set_session_cookie(response: Response, token: str, session: Session, now: float) -> None:
    """Set the session cookie; it lives in the browser until the session's absolute end."""
    _cookie(response, SESSION_COOKIE, token, max(1, int(session.expires_at - now)))


def clear_session_cookie(response: Response) -> None:
    """Remove the session cookie from the browser (the server side is deleted separately)."""
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")


def pre_session_csrf(request: Request) -> tuple[str, bool]:
    """The double-submit CSRF token for the login and set-up forms: (token, whether it is new).

    A browser that already has the cookie keeps its token (two open tabs both work); otherwise a new one
    is made, and the caller must :func:`set_csrf_cookie` it on the response.
    """
    existing = request.cookies.get(CSRF_COOKIE)
    if existing and 32 <= len(existing) <= 64 and existing.isascii():
        return existing, False
    return new_token(), True


def set_csrf_cookie(response: Response, token: str) -> None:
    """Set the pre-session CSRF cookie (a browser session cookie: gone when the browser closes)."""
    _cookie(response, CSRF_COOKIE, token, None)


def clear_csrf_cookie(response: Response) -> None:
    """Remove the pre-session CSRF cookie once a session exists (the session's own token takes over)."""
    response.delete_cookie(CSRF_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
