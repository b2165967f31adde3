"""Set-up, login, logout and password change: HTML forms for people and the same as JSON for scripts.

Four routers, because the two halves differ in who may call them and in what they answer:

- ``public_pages`` (``/login``, ``/setup``) and ``public_api`` (``/api/auth/login``, ``/api/auth/setup``,
  ``/api/auth/csrf``): reachable without a session, CSRF-checked with the double-submit cookie.
- ``pages`` (``/logout``, ``/password``) and ``api`` (``/api/auth/session``, ``/api/auth/logout``,
  ``/api/auth/password``): behind a session.

A script logs in with ``GET /api/auth/csrf`` (a token and its cookie), then ``POST /api/auth/login`` with
``X-CSRF-Token``; the answer carries the session's own CSRF token for every later state-changing call.
The rules themselves (lock-out, setup code, sessions) live in :mod:`admin.security`; :class:`AuthError`
from there becomes ``{"error": ...}`` with its status via the app's handler, or, on a page, the form again
with the message.

Logins (and failed ones), set-up, logouts and password changes are recorded as events in the history
(source "admin"), where the overview lists them.

Every route here is a plain ``def``: they hash passwords and write SQLite, so FastAPI runs them in its
thread pool.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from admin.deps import ClientAddress, Ctx, CurrentUser, MaybeSession
from admin.security import PASSWORD_MAX, AuthError, Session
from admin.web import (
    AdminContext,
    clear_csrf_cookie,
    clear_session_cookie,
    pre_session_csrf,
    render,
    safe_next,
    set_csrf_cookie,
    set_session_cookie,
)

public_pages = APIRouter(tags=["auth pages"], include_in_schema=False)
public_api = APIRouter(prefix="/api/auth", tags=["auth"])
pages = APIRouter(tags=["auth pages"], include_in_schema=False)
api = APIRouter(prefix="/api/auth", tags=["auth"])


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginIn(_In):
    """Credentials for ``POST /api/auth/login``."""

    username: str = Field(max_length=256)
    password: str = Field(max_length=PASSWORD_MAX)


class SetupIn(_In):
    """The setup code and the owner account to create, for ``POST /api/auth/setup``."""

    code: str = Field(max_length=64, description="the one-time setup code, e.g. 1234-5678-9012-3456")
    username: str = Field(max_length=256)
    password: str = Field(max_length=PASSWORD_MAX)


class PasswordIn(_In):
    """``POST /api/auth/password``: the current password and the new one."""

    current_password: str = Field(max_length=PASSWORD_MAX)
    new_password: str = Field(max_length=PASSWORD_MAX)


class SessionOut(BaseModel):
    """The logged-in session: who, the CSRF token for state-changing calls, and when it ends."""

    username: str
    csrf_token: str = Field(description="send as X-CSRF-Token on every POST/PUT/PATCH/DELETE")
    expires_at: float = Field(description="absolute end of the session, Unix seconds")
    idle_timeout_s: float = Field(description="the session ends after this long unused, seconds")


class CsrfOut(BaseModel):
    """A pre-session CSRF token (its cookie is set beside it), for the login and set-up calls."""

    csrf_token: str


class PasswordOut(BaseModel):
    """The password was changed."""

    ok: bool = True
    sessions_ended: int = Field(description="other sessions ended by the change")


class OkOut(BaseModel):
    ok: bool = True


def _name(username: str) -> str:
    """A user name as an event shows it: quoted, and cut (a failed login's name is anyone's text)."""
    return repr(username[:64])


def _login_event(ctx: AdminContext, username: str, client: str, exc: AuthError | None) -> None:
    if exc is None:
        ctx.event("info", f"login: {_name(username)} from {client[:64]}")
    elif exc.status != 409:
        ctx.event("warning", f"login refused for {_name(username)} from {client[:64]}: {exc.message}")


def _session_out(ctx: Ctx, session: Session) -> SessionOut:
    return SessionOut(
        username=session.username,
        csrf_token=session.csrf_token,
        expires_at=session.expires_at,
        idle_timeout_s=ctx.auth.idle_s,
    )


# -- public pages -------------------------------------------------------------------------------------------


def _form_page(
    request: Request, template: str, *, status_code: int = 200, error: str | None = None, **context: Any
) -> Response:
    """A login or set-up form with a pre-session CSRF token (and its cookie when new)."""
    token, new = pre_session_csrf(request)
    response = render(request, template, csrf_token=token, status_code=status_code, error=error, **context)
    if new:
        set_csrf_cookie(response, token)
    return response


def _logged_in(ctx: Ctx, token: str, session: Session, to: str) -> Response:
    response = RedirectResponse(to, status_code=303)
    set_session_cookie(response, token, session, ctx.clock())
    clear_csrf_cookie(response)
    return response


@public_pages.get("/login")
def login_page(request: Request, ctx: Ctx, session: MaybeSession, next: str = "/") -> Response:
    if ctx.auth.needs_setup():
        return RedirectResponse("/setup", status_code=303)
    if session is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return _form_page(request, "login.html", next=safe_next(next), username_value="")


@public_pages.post("/login")
def login_form(
    request: Request,
    ctx: Ctx,
    client: ClientAddress,
    username: Annotated[str, Form(max_length=256)],
    password: Annotated[str, Form(max_length=PASSWORD_MAX)],
    next: Annotated[str, Form(max_length=512)] = "/",
) -> Response:
    try:
        token, session = ctx.auth.login(username, password, client)
    except AuthError as exc:
        _login_event(ctx, username, client, exc)
        if exc.status == 409:
            return RedirectResponse("/setup", status_code=303)
        page = _form_page(
            request,
            "login.html",
            status_code=exc.status,
            error=exc.message,
            next=safe_next(next),
            username_value=username,
        )
        if exc.retry_after is not None:
            page.headers["Retry-After"] = str(exc.retry_after)
        return page
    _login_event(ctx, username, client, None)
    return _logged_in(ctx, token, session, safe_next(next))


@public_pages.get("/setup")
def setup_page(request: Request, ctx: Ctx) -> Response:
    if not ctx.auth.needs_setup():
        return RedirectResponse("/login", status_code=303)
    return _form_page(request, "setup.html", username_value="")


@public_pages.post("/setup")
def setup_form(
    request: Request,
    ctx: Ctx,
    client: ClientAddress,
    code: Annotated[str, Form(max_length=64)],
    username: Annotated[str, Form(max_length=256)],
    password: Annotated[str, Form(max_length=PASSWORD_MAX)],
    password2: Annotated[str, Form(max_length=PASSWORD_MAX)],
) -> Response:
    try:
        if password != password2:
            raise AuthError(422, "the two passwords are not the same")
        token, session = ctx.auth.setup(code, username, password, client)
    except AuthError as exc:
        if exc.status == 409:
            return RedirectResponse("/login", status_code=303)
        page = _form_page(
            request, "setup.html", status_code=exc.status, error=exc.message, username_value=username
        )
        if exc.retry_after is not None:
            page.headers["Retry-After"] = str(exc.retry_after)
        return page
    ctx.event("info", f"owner account {_name(session.username)} created from {client[:64]}")
    return _logged_in(ctx, token, session, "/")


# -- public API ---------------------------------------------------------------------------------------------


@public_api.get("/csrf", response_model=CsrfOut)
def csrf_token(request: Request) -> Response:
    """A CSRF token for ``POST /api/auth/login`` or ``/api/auth/setup``, with its cookie."""
    token, new = pre_session_csrf(request)
    response = Response(CsrfOut(csrf_token=token).model_dump_json(), media_type="application/json")
    if new:
        set_csrf_cookie(response, token)
    return response


@public_api.post("/login", response_model=SessionOut)
def login(body: LoginIn, ctx: Ctx, client: ClientAddress) -> Response:
    """Log in: sets the session cookie and returns the session's CSRF token. 401 wrong user name or
    password; 429 locked (``Retry-After`` says for how long)."""
    try:
        token, session = ctx.auth.login(body.username, body.password, client)
    except AuthError as exc:
        _login_event(ctx, body.username, client, exc)
        raise
    _login_event(ctx, body.username, client, None)
    response = Response(_session_out(ctx, session).model_dump_json(), media_type="application/json")
    set_session_cookie(response, token, session, ctx.clock())
    clear_csrf_cookie(response)
    return response


@public_api.post("/setup", response_model=SessionOut, status_code=201)
def setup(body: SetupIn, ctx: Ctx, client: ClientAddress) -> Response:
    """Create the owner account with the one-time setup code, and log in. 403 wrong or expired code; 409
    the owner exists already (set-up is closed for good); 422 unusable name or password."""
    token, session = ctx.auth.setup(body.code, body.username, body.password, client)
    ctx.event("info", f"owner account {_name(session.username)} created from {client[:64]}")
    response = Response(
        _session_out(ctx, session).model_dump_json(), status_code=201, media_type="application/json"
    )
    set_session_cookie(response, token, session, ctx.clock())
    clear_csrf_cookie(response)
    return response


# -- pages behind a session ---------------------------------------------------------------------------------


@pages.post("/logout")
def logout_form(ctx: Ctx, session: CurrentUser) -> Response:
    ctx.auth.logout(session)
    ctx.event("info", f"logout: {_name(session.username)}")
    response = RedirectResponse("/login", status_code=303)
    clear_session_cookie(response)
    return response


@pages.get("/password")
def password_page(request: Request, session: CurrentUser) -> Response:
    return render(request, "password.html", session=session, page="password")


@pages.post("/password")
def password_form(
    request: Request,
    ctx: Ctx,
    session: CurrentUser,
    client: ClientAddress,
    current_password: Annotated[str, Form(max_length=PASSWORD_MAX)],
    new_password: Annotated[str, Form(max_length=PASSWORD_MAX)],
    new_password2: Annotated[str, Form(max_length=PASSWORD_MAX)],
) -> Response:
    try:
        if new_password != new_password2:
            raise AuthError(422, "the two new passwords are not the same")
        ended = ctx.auth.change_password(session, current_password, new_password, client)
    except AuthError as exc:
        page = render(
            request,
            "password.html",
            session=session,
            page="password",
            status_code=exc.status,
            error=exc.message,
        )
        if exc.retry_after is not None:
            page.headers["Retry-After"] = str(exc.retry_after)
        return page
    ctx.event("info", f"password changed by {_name(session.username)} ({ended} other sessions ended)")
    others = f"{ended} other session{'s' if ended != 1 else ''} ended" if ended else "no other sessions"
    return render(
        request, "password.html", session=session, page="password", notice=f"Password changed ({others})."
    )


# -- API behind a session -----------------------------------------------------------------------------------


@api.get("/session", response_model=SessionOut)
def current_session(ctx: Ctx, session: CurrentUser) -> SessionOut:
    """Who is logged in, the CSRF token to send with state-changing calls, and when the session ends."""
    return _session_out(ctx, session)


@api.post("/logout", response_model=OkOut)
def logout(ctx: Ctx, session: CurrentUser) -> Response:
    """End this session on the doorway and clear its cookie."""
    ctx.auth.logout(session)
    ctx.event("info", f"logout: {_name(session.username)}")
    response = Response(OkOut().model_dump_json(), media_type="application/json")
    clear_session_cookie(response)
    return response


@api.post("/password", response_model=PasswordOut)
def change_password(body: PasswordIn, ctx: Ctx, session: CurrentUser, client: ClientAddress) -> PasswordOut:
    """Change the password (the current one is required); every other session ends. 403 wrong current
    password; 422 unusable new password; 429 locked."""
    ended = ctx.auth.change_password(session, body.current_password, body.new_password, client)
    ctx.event("info", f"password changed by {_name(session.username)} ({ended} other sessions ended)")
    return PasswordOut(sessions_ended=ended)
