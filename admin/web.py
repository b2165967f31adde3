"""Shared web plumbing for routes: the app's context object, page rendering, cookies, error bodies.

Routes get what they need through :mod:`admin.deps`; this module holds the pieces those dependencies and
the route modules share, so that no route module imports another:

- :class:`AdminContext`, built once by the app's lifespan and kept in ``app.state.admin``: settings, the
  store, the :class:`admin.security.Auth` service and the clock.
- :func:`render`: a page from ``admin/templates/`` with the variables every page needs (the CSRF token
  for the ``<meta>`` tag and forms, the logged-in user for the navigation bar).
- the cookie helpers, so every cookie carries the same flags (HttpOnly, Secure, SameSite=Strict, Path=/).
- :func:`wants_json` and :func:`error_body`: API paths (``/api/...``) and clients that do not ask for
  HTML get ``{"error": "..."}``; browsers on page paths get the error page.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jinja2
from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

from admin.security import CSRF_COOKIE, SESSION_COOKIE, Auth, Session, new_token
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
templates: Final = Jinja2Templates(env=_env)
"""The page templates (FastAPI's ``Jinja2Templates`` over our own strict, autoescaping environment)."""


@dataclass(frozen=True)
class AdminContext:
    """What every request may use; one per app, made by the lifespan, in ``app.state.admin``."""

    settings: Settings
    store: AdminStore
    auth: Auth
    clock: Callable[[], float]


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

    Every page gets ``csrf_token`` (written into ``<meta name="csrf-token">`` and hidden form fields) and
    ``username`` (None when logged out: the navigation bar is hidden).
    """
    values: dict[str, Any] = {
        "csrf_token": session.csrf_token if session is not None else (csrf_token or ""),
        "username": session.username if session is not None else None,
        "error": None,
        "notice": None,
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
