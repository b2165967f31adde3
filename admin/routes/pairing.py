"""Pairing: this doorway's identity and twin, showing a code (and its QR), joining another, unpairing.

The work is :class:`admin.pairing.PairingManager`'s; these routes only translate. Pages post forms and
answer with the page again (or a redirect to it), so they work without scripts; ``pairing.js`` polls
``/api/pairing/status`` while a code is shown and reloads the page when the attempt ends, and asks for a
confirmation before unpairing (``data-confirm``).

API (each behind a session; the POSTs need the CSRF token):

- ``GET /api/pairing``: name, device id, fingerprint, the twin (or null), and the current/last attempt.
- ``GET /api/pairing/status``: the current/last attempt (waiting, paired, failed, expired, cancelled).
- ``POST /api/pairing/show``: show a code: 200 with the code, its QR code as SVG, and the address to join.
- ``POST /api/pairing/cancel``: withdraw the shown code.
- ``POST /api/pairing/join`` ``{"code": "1234-5678", "address": "host[:port]"}``: pair with a doorway
  showing a code; blocks until done (at most about 10 s). 422 a typo in the code or a bad address (nothing
  sent), 409 another attempt under way, 502 the attempt failed (the message says why, as the other doorway
  does).
- ``POST /api/pairing/unpair``: forget the twin.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, HTTPException, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from admin.deps import Ctx, CurrentUser
from admin.pairing import PairingBusyError, PairingStatus
from admin.security import Session
from admin.web import AdminContext, render
from app.identity import fingerprint_of
from app.pairing.commands import where
from app.pairing.protocol import PairingError
from app.state import StateError, Twin

pages = APIRouter(tags=["pairing pages"], include_in_schema=False)
api = APIRouter(prefix="/api/pairing", tags=["pairing"])


class TwinOut(BaseModel):
    """The paired doorway."""

    name: str
    device_id: str
    fingerprint: str = Field(description="compare it with the one the other doorway shows")
    media_address: str = Field(description="where this doorway sends its media, host:port (UDP)")
    paired_at: float = Field(description="Unix seconds")


class AttemptOut(BaseModel):
    """The current or last pairing attempt on this doorway."""

    state: Literal["idle", "waiting", "paired", "failed", "expired", "cancelled"]
    message: str
    role: Literal["show", "join"] | None = Field(description="this doorway showed the code, or joined")
    code: str | None = Field(description="while a code is shown: the code, 1234-5678")
    qr_svg: str | None = Field(description="while a code is shown: its QR code, an <svg> element")
    address: str | None = Field(description="while a code is shown: what the other doorway joins, host:port")
    expires_at: float | None = Field(description="while a code is shown: when it expires, Unix seconds")
    peer_name: str | None = None
    peer_fingerprint: str | None = None


class PairingOut(BaseModel):
    """This doorway, its twin and the current/last attempt."""

    name: str
    device_id: str
    fingerprint: str
    twin: TwinOut | None
    attempt: AttemptOut


class JoinIn(BaseModel):
    """A code shown on the other doorway, and its address."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(max_length=32, description="as shown, 1234-5678 (spaces and dashes are ignored)")
    address: str = Field(
        max_length=300, description="the other doorway, HOST or HOST:PORT (the pairing port by default)"
    )


class JoinOut(BaseModel):
    """The pairing completed."""

    message: str
    twin: TwinOut


class UnpairOut(BaseModel):
    """The pairing was forgotten (``removed`` null: there was none)."""

    message: str
    removed: TwinOut | None


def twin_out(twin: Twin) -> TwinOut:
    return TwinOut(
        name=twin.name,
        device_id=twin.device_id,
        fingerprint=fingerprint_of(twin.public_key),
        media_address=where(twin.media_host, twin.media_port),
        paired_at=twin.paired_at,
    )


def attempt_out(status: PairingStatus) -> AttemptOut:
    return AttemptOut(
        state=status.state,
        message=status.message,
        role=status.role,
        code=status.code,
        qr_svg=status.qr_svg,
        address=status.address,
        expires_at=status.expires_at,
        peer_name=status.peer_name,
        peer_fingerprint=status.peer_fingerprint,
    )


def _state_error(exc: StateError) -> HTTPException:
    return HTTPException(503, f"the doorway's state database cannot be used: {exc}")


# -- pages --------------------------------------------------------------------------------------------------


def _page(
    request: Request,
    ctx: AdminContext,
    session: Session,
    *,
    status_code: int = 200,
    error: str | None = None,
    notice: str | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    values: dict[str, Any] = {"identity": None, "twin": None}
    try:
        identity = ctx.pairing.identity()
        values["identity"] = {"device_id": identity.device_id, "fingerprint": identity.fingerprint}
        twin = ctx.pairing.twin()
        values["twin"] = twin_out(twin) if twin is not None else None
    except StateError as exc:
        error = error or f"The doorway's state database cannot be used: {exc}"
        status_code = 503 if status_code == 200 else status_code
    return render(
        request,
        "pairing.html",
        session=session,
        page="pairing",
        status_code=status_code,
        error=error,
        notice=notice,
        name=ctx.current.get().engine.name,
        attempt=ctx.pairing.status(),
        form=form or {"code": "", "address": ""},
        **values,
    )


@pages.get("/pairing")
def pairing_page(request: Request, ctx: Ctx, session: CurrentUser) -> Response:
    return _page(request, ctx, session)


@pages.post("/pairing/show")
def show_form(request: Request, ctx: Ctx, session: CurrentUser) -> Response:
    try:
        ctx.pairing.show()
    except (PairingError, PairingBusyError, StateError) as exc:
        return _page(request, ctx, session, status_code=409, error=f"Cannot show a code: {exc}")
    return RedirectResponse("/pairing", status_code=303)


@pages.post("/pairing/cancel")
def cancel_form(ctx: Ctx, session: CurrentUser) -> Response:
    ctx.pairing.cancel()
    return RedirectResponse("/pairing", status_code=303)


@pages.post("/pairing/join")
def join_form(
    request: Request,
    ctx: Ctx,
    session: CurrentUser,
    code: Annotated[str, Form(max_length=32)],
    address: Annotated[str, Form(max_length=300)],
) -> Response:
    form = {"code": code, "address": address}
    try:
        twin = ctx.pairing.join(code, address)
    except ValueError as exc:
        return _page(request, ctx, session, status_code=422, error=str(exc), form=form)
    except PairingBusyError as exc:
        return _page(request, ctx, session, status_code=409, error=str(exc), form=form)
    except PairingError as exc:
        return _page(request, ctx, session, status_code=502, error=f"Pairing failed: {exc}", form=form)
    except StateError as exc:
        return _page(request, ctx, session, status_code=503, error=f"Pairing failed: {exc}", form=form)
    return _page(
        request, ctx, session, notice=f"Paired with {twin.name} ({fingerprint_of(twin.public_key)})."
    )


@pages.post("/pairing/unpair")
def unpair_form(request: Request, ctx: Ctx, session: CurrentUser) -> Response:
    try:
        removed = ctx.pairing.unpair()
    except StateError as exc:
        return _page(request, ctx, session, status_code=503, error=f"Cannot unpair: {exc}")
    notice = f"Unpaired from {removed.name}." if removed is not None else "This doorway was not paired."
    return _page(request, ctx, session, notice=notice)


# -- API ----------------------------------------------------------------------------------------------------


@api.get("", response_model=PairingOut)
def pairing(ctx: Ctx, session: CurrentUser) -> PairingOut:
    """This doorway (name, device id, fingerprint), its twin, and the current or last attempt."""
    try:
        identity = ctx.pairing.identity()
        twin = ctx.pairing.twin()
    except StateError as exc:
        raise _state_error(exc) from None
    return PairingOut(
        name=ctx.current.get().engine.name,
        device_id=identity.device_id,
        fingerprint=identity.fingerprint,
        twin=twin_out(twin) if twin is not None else None,
        attempt=attempt_out(ctx.pairing.status()),
    )


@api.get("/status", response_model=AttemptOut)
def status(ctx: Ctx, session: CurrentUser) -> AttemptOut:
    """The current or last pairing attempt (the page polls this while a code is shown)."""
    return attempt_out(ctx.pairing.status())


@api.post(
    "/show",
    response_model=AttemptOut,
    responses={
        409: {"description": "a join is under way"},
        503: {"description": "the pairing port or the state database cannot be used"},
    },
)
def show(ctx: Ctx, session: CurrentUser) -> AttemptOut:
    """Show a pairing code: listen on the pairing port for one attempt. While a code is shown, the same
    one. 409 a join is under way; 503 the port cannot be used (``doorway pair show`` running?)."""
    try:
        return attempt_out(ctx.pairing.show())
    except PairingBusyError as exc:
        raise HTTPException(409, str(exc)) from None
    except PairingError as exc:
        raise HTTPException(503, f"cannot show a code: {exc}") from None
    except StateError as exc:
        raise _state_error(exc) from None


@api.post("/cancel", response_model=AttemptOut)
def cancel(ctx: Ctx, session: CurrentUser) -> AttemptOut:
    """Withdraw the shown code (nothing happens when none is shown)."""
    return attempt_out(ctx.pairing.cancel())


@api.post(
    "/join",
    response_model=JoinOut,
    responses={
        409: {"description": "another pairing attempt is under way on this doorway"},
        422: {"description": "a typo in the code, or a bad address: nothing was sent"},
        502: {"description": "the attempt failed (wrong code, no answer, refused): the message says why"},
        503: {"description": "the state database cannot be used"},
    },
)
def join(body: JoinIn, ctx: Ctx, session: CurrentUser) -> JoinOut:
    """Pair with the doorway showing ``code`` at ``address``; blocks until done (at most about 10 s)."""
    try:
        twin = ctx.pairing.join(body.code, body.address)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    except PairingBusyError as exc:
        raise HTTPException(409, str(exc)) from None
    except PairingError as exc:
        raise HTTPException(502, f"pairing failed: {exc}") from None
    except StateError as exc:
        raise _state_error(exc) from None
    return JoinOut(message=ctx.pairing.status().message, twin=twin_out(twin))


@api.post("/unpair", response_model=UnpairOut)
def unpair(ctx: Ctx, session: CurrentUser) -> UnpairOut:
    """Forget the twin; the engine stops talking to it within a second."""
    try:
        removed = ctx.pairing.unpair()
    except StateError as exc:
        raise _state_error(exc) from None
    if removed is None:
        return UnpairOut(message="not paired; nothing to remove", removed=None)
    return UnpairOut(
        message=f"removed the pairing with {removed.name} ({fingerprint_of(removed.public_key)})",
        removed=twin_out(removed),
    )
