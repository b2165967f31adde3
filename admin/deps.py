"""FastAPI dependencies of the admin panel, as ``Annotated`` aliases (full-stack-fastapi-template style).

How a route gets its session and CSRF check
-------------------------------------------
Nobody has to remember them: :func:`admin.app.create_app` includes every router listed in
``admin.routes.PROTECTED`` with ``dependencies=[Depends(require_session), Depends(csrf_protect)]``, and
every router in ``admin.routes.PUBLIC`` with ``[Depends(csrf_protect_public)]`` alone. So a new page or
API route goes into a router of a protected module and is behind a session and CSRF from the start; the
tests (``tests/admin/test_security.py``) walk ``app.routes`` and fail for any route that is reachable without
one. In the route function, ask for what you use:

.. code-block:: python

    @router.get("/lights")
    def lights(session: CurrentUser, ctx: Ctx) -> LightsOut:  # session.username, session.csrf_token
        ...

``CurrentUser`` on a route already behind ``require_session`` costs nothing more: FastAPI solves a
dependency once per request. For JSON routes the session is missing → 401 ``{"error": ...}``; for pages
(any path outside ``/api/``) → 303 to ``/login?next=<path>``. ``CsrfChecked`` is there for routes outside
those routers that change state (there should be none).

A route that must answer some clients without a session (``/metrics`` for the networks in
``admin.metrics_allow``) goes into a router listed in ``PUBLIC``, takes ``MaybeSession`` and
:data:`ClientAddress`, and refuses by itself; add it to ``PUBLIC_ROUTES`` in the security tests.

Tests that do not care about logging in override :func:`optional_session` (``app.dependency_overrides``)
to return a :class:`admin.security.Session`; the CSRF check then expects that session's token.

Blocking: :func:`optional_session` reads SQLite, so it (and every dependency using it) is a plain ``def``
that FastAPI runs in its thread pool; :func:`csrf_protect` is ``async`` only to read a form body.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from admin.security import (
    CSRF_COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    SAFE_METHODS,
    SESSION_COOKIE,
    Session,
    foreign_origin,
    tokens_match,
)
from admin.web import AdminContext, LoginRequiredError, is_api


def get_context(request: Request) -> AdminContext:
    """The app's :class:`admin.web.AdminContext` (made by the lifespan; use the TestClient as ``with``)."""
    ctx = getattr(request.app.state, "admin", None)
    if ctx is None:
        raise RuntimeError("the admin app's lifespan has not run (in tests: use `with TestClient(app)`)")
    assert isinstance(ctx, AdminContext)
    return ctx


Ctx = Annotated[AdminContext, Depends(get_context)]
"""Settings, store, auth service and clock."""


def client_address(request: Request) -> str:
    """The peer's address (rate-limiting key). No proxy sits in front of the admin panel, so no
    ``X-Forwarded-For`` is believed."""
    return request.client.host if request.client is not None else "unknown"


ClientAddress = Annotated[str, Depends(client_address)]
"""The client's IP address as a string."""


def optional_session(request: Request, ctx: Ctx) -> Session | None:
    """The request's live session, or None. Reads the store (runs in the thread pool)."""
    return ctx.auth.session(request.cookies.get(SESSION_COOKIE))


MaybeSession = Annotated[Session | None, Depends(optional_session)]
"""The live session when there is one (public pages that look different when logged in)."""


def require_session(request: Request, session: MaybeSession) -> Session:
    """The live session; without one, 401 for the API and a redirect to the login page for pages."""
    if session is not None:
        return session
    if is_api(request):
        raise HTTPException(
            401, "not logged in (or the session ended): log in with POST /api/auth/login first"
        )
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    raise LoginRequiredError(target)


CurrentUser = Annotated[Session, Depends(require_session)]
"""The logged-in owner's session: ``.username``, ``.csrf_token``, ``.expires_at``."""


async def _csrf_token(request: Request) -> str | None:
    """The CSRF token a request carries: the ``X-CSRF-Token`` header, or a form post's ``csrf_token``."""
    given = request.headers.get(CSRF_HEADER)
    if given is None:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            value = (await request.form()).get(CSRF_FIELD)
            given = value if isinstance(value, str) else None
    return given or None


async def _check_csrf(request: Request, session: Session | None, *, pre_session: bool) -> None:
    if request.method in SAFE_METHODS:
        return
    foreign = foreign_origin(
        request.headers.get("origin"), request.headers.get("referer"), request.headers.get("host")
    )
    if foreign is not None:
        raise HTTPException(
            403, f"cross-site request refused: it came from {foreign[:200]}, not this doorway"
        )
    given = await _csrf_token(request)
    if given is None:
        raise HTTPException(
            403,
            f"missing CSRF token: send the {CSRF_HEADER} header (or a {CSRF_FIELD} form field) with "
            "the token from GET /api/auth/session, or reload the page",
        )
    if session is not None and tokens_match(session.csrf_token, given):
        return
    cookie = request.cookies.get(CSRF_COOKIE) if pre_session else None
    if cookie is not None and tokens_match(cookie, given):
        return
    if session is not None or cookie is not None:
        raise HTTPException(403, "wrong CSRF token: reload the page and try again")
    if not pre_session:
        raise HTTPException(403, "wrong CSRF token for this session: reload the page and try again")
    raise HTTPException(
        403,
        "missing CSRF cookie: load the form again (or GET /api/auth/csrf) and allow cookies for this site",
    )


async def csrf_protect(request: Request, session: MaybeSession) -> None:
    """Refuse (403) a state-changing request without the session's CSRF token or from another origin.

    The token comes from the ``X-CSRF-Token`` header or, for form posts, the ``csrf_token`` field, and
    must equal the session's own. See :mod:`admin.security` for why.
    """
    await _check_csrf(request, session, pre_session=False)


async def csrf_protect_public(request: Request, session: MaybeSession) -> None:
    """:func:`csrf_protect` for the routes that need no session (login, set-up): the token may also be the
    double-submit one, equal to the ``__Host-doorway_csrf`` cookie (from the form page or
    ``GET /api/auth/csrf``)."""
    await _check_csrf(request, session, pre_session=True)


CsrfChecked = Annotated[None, Depends(csrf_protect)]
"""Declares that a route checks CSRF (already so for every route included by ``create_app``)."""
