"""The admin panel's FastAPI application: :func:`create_app`.

Layout (FastAPI's own, full-stack-fastapi-template style): routers in :mod:`admin.routes`, one module per
area; dependencies in :mod:`admin.deps`; rules in :mod:`admin.security`; durable state in
:mod:`admin.store`; pages in ``admin/templates/`` with ``admin/static/`` beside them. The server
(:mod:`admin.server`) runs this app under uvicorn on HTTPS.

A request passes, in order:

1. :class:`admin.middleware.SecurityHeaders` — CSP, nosniff, no-referrer, frame denial, HSTS on HTTPS,
   ``Cache-Control: no-store`` — added to whatever answer comes back, refusals included.
2. :class:`admin.middleware.PathGuard` — ``..``, encoded slashes, NUL, ``//``: 400.
3. :class:`admin.middleware.BodyLimit` — bodies over ``admin.max_body_kb``: 413, counted as they arrive.
4. The router. Public routers (:data:`admin.routes.PUBLIC`) run ``csrf_protect_public``; the others
   (:data:`admin.routes.PROTECTED`) run ``require_session`` and then ``csrf_protect`` before the route.
5. Exception handlers turn refusals into ``{"error": "..."}`` for the API (and for clients that do not
   accept HTML), an error page for browsers, and ``LoginRequiredError`` into a redirect to the login page.

The lifespan opens what the pages use and closes it at shutdown: the admin database (:mod:`admin.store`),
the metrics history (``history.db`` beside it, :mod:`admin.history`), the :class:`~admin.collector.Collector`
thread that polls the engine and the bridge once a second and feeds the live views, the pairing manager
(:mod:`admin.pairing`) and the settings file it may edit (:mod:`admin.settings_file`). Tests pass their own
store, history, collector (any :class:`admin.web.LiveFeed`) and log source; what is passed in is theirs to
start and close.

FastAPI's ``/docs`` and ``/redoc`` are off (they load Swagger UI from a CDN, and a page here loads nothing
from outside the doorway) and its unauthenticated ``/openapi.json`` moves behind a session to
``/api/openapi.json``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final
from urllib.parse import quote

import anyio
import argon2
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from admin import routes
from admin.collector import Collector
from admin.deps import csrf_protect, csrf_protect_public, require_session
from admin.history import History
from admin.logs import LazyLogSource, LogSource
from admin.middleware import BodyLimit, PathGuard, SecurityHeaders
from admin.pairing import PairingManager
from admin.security import Auth, AuthError, Passwords
from admin.settings_file import SettingsFile
from admin.store import AdminStore, AdminStoreError
from admin.web import (
    STATIC_DIR,
    AdminContext,
    CurrentSettings,
    LiveFeed,
    LoginRequiredError,
    error_body,
    render,
    wants_json,
)
from app.settings import DEFAULT_CONFIG_PATH, Settings

log = logging.getLogger(__name__)

HISTORY_FILE: Final = "history.db"
"""The metrics history's file name in ``engine.state_dir``."""
LIVE_STREAMS: Final = 16
"""Live views (server-sent event streams) served at once; the collector's own limit is the same."""

_REASONS = {
    400: "bad request",
    401: "not logged in",
    403: "refused",
    404: "no such page",
    405: "method not allowed here",
    413: "request body too large",
    422: "the request is not valid",
    429: "too many attempts",
}


def create_app(
    settings: Settings,
    *,
    config_path: Path = DEFAULT_CONFIG_PATH,
    store: AdminStore | None = None,
    clock: Callable[[], float] = time.time,
    hasher: argon2.PasswordHasher | None = None,
    collector: LiveFeed | None = None,
    history: History | None = None,
    log_source: LogSource | None = None,
) -> FastAPI:
    """The admin panel for a doorway with ``settings``, read from ``config_path`` (the process's
    ``--config``: the file the settings page edits).

    ``store``: an open :class:`AdminStore` to use (tests); by default the lifespan opens ``admin.db`` in
    ``engine.state_dir`` and closes it at shutdown. ``clock``: Unix seconds (tests pass a fake to step
    through lock-outs and session expiry). ``hasher``: argon2 parameters (tests use cheap ones; the
    default is argon2-cffi's). ``history``: the metrics history (default ``history.db`` in the state
    directory, kept ``admin.history_days`` and at most ``admin.history_max_mb``). ``collector``: the live
    feed (default a :class:`Collector` started with the app and stopped at shutdown). ``log_source``: where
    the logs page reads (default the journal, or the log files without one, chosen at the first read).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state_dir = settings.engine.state_dir
        st = store if store is not None else AdminStore(state_dir)
        hist = (
            history
            if history is not None
            else History(
                state_dir / HISTORY_FILE,
                retention_s=settings.admin.history_days * 86400.0,
                max_bytes=settings.admin.history_max_mb * 1024 * 1024,
            )
        )
        own_collector: Collector | None = None
        feed = collector
        if feed is None:
            feed = own_collector = Collector(
                settings.engine.control_socket, settings.hwcontrol.control_socket, hist
            )
        current = CurrentSettings(settings)

        def pairing_event(level: str, message: str) -> None:
            hist.add_event(clock(), "admin", level, message)

        pairing = PairingManager(current.get, state_dir, clock=clock, on_event=pairing_event)
        auth = Auth(st, settings.admin, clock, Passwords(hasher))
        app.state.admin = AdminContext(
            settings=settings,
            store=st,
            auth=auth,
            clock=clock,
            settings_file=SettingsFile(config_path),
            current=current,
            history=hist,
            feed=feed,
            logs=log_source if log_source is not None else LazyLogSource(),
            pairing=pairing,
            stream_slots=anyio.CapacityLimiter(LIVE_STREAMS),
        )
        if auth.needs_setup():
            log.warning(
                "no owner account yet: open /setup with a setup code (`doorway admin setup-code` makes one)"
            )
        if own_collector is not None:
            own_collector.start()
        try:
            yield
        finally:
            app.state.admin = None
            pairing.close()
            if own_collector is not None:
                own_collector.stop()  # Stores what it averaged so far, so before the history closes.
            if history is None:
                hist.close()
            if store is None:
                st.close()

    app = FastAPI(
        title="Doorway admin",
        summary="The JSON API behind a doorway's admin panel.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    for router in routes.PUBLIC:
        app.include_router(router, dependencies=[Depends(csrf_protect_public)])
    for router in routes.PROTECTED:
        app.include_router(router, dependencies=[Depends(require_session), Depends(csrf_protect)])
    app.mount("/static", StaticFiles(directory=STATIC_DIR, follow_symlink=False), name="static")

    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(AuthError, _auth_error)
    app.add_exception_handler(LoginRequiredError, _login_required)
    app.add_exception_handler(AdminStoreError, _store_error)

    # Added innermost first: the last one added sees the request first.
    app.add_middleware(BodyLimit, max_bytes=settings.admin.max_body_kb * 1024)
    app.add_middleware(PathGuard)
    app.add_middleware(SecurityHeaders)
    return app


def _error(request: Request, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    if wants_json(request):
        return JSONResponse(error_body(message), status_code=status, headers=headers)
    # No session details on the error page: it is rendered for anyone, logged in or not.
    title = _REASONS.get(status, "error")
    return render(request, "error.html", status_code=status, title=title, message=message, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = f"no such page or API route: {request.url.path[:200]}"
    elif exc.status_code == 405 and exc.detail == "Method Not Allowed":
        message = f"{request.method} is not allowed on {request.url.path[:200]}"
    else:
        message = str(exc.detail)
    return _error(request, exc.status_code, message, dict(exc.headers) if exc.headers else None)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        problems.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    return _error(request, 422, "invalid request: " + "; ".join(problems))


async def _auth_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AuthError)
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return _error(request, exc.status, exc.message, headers)


async def _login_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequiredError)
    target = "/login" if exc.next_path in ("", "/") else f"/login?next={quote(exc.next_path, safe='/')}"
    return RedirectResponse(target, status_code=303)


async def _store_error(request: Request, exc: Exception) -> Response:
    log.error("admin database: %s", exc)
    return _error(request, 503, "the admin panel's database cannot be used right now; see the doorway's log")
