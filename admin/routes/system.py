"""The health probe, the status of the doorway's processes, and the API's own description.

``GET /healthz`` is the one route a monitor may call without a session, so it says nothing but that the
admin process answers: ``{"ok": true}`` (no versions, no names — a stranger on the LAN learns nothing).
``GET /api/status`` asks the engine and the bridge (:mod:`admin.backends`) and reports each as up with its
status or down with a sentence saying why. ``GET /api/openapi.json`` is the OpenAPI document of the JSON
API, behind a session like the rest (FastAPI's own unauthenticated ``/openapi.json`` and its docs pages,
which load scripts from a CDN, are switched off in ``create_app``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from admin.backends import SystemStatus, read_status
from admin.deps import Ctx, CurrentUser

public = APIRouter(tags=["system"])
api = APIRouter(prefix="/api", tags=["system"])


class Health(BaseModel):
    ok: bool


@public.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness probe: ``{"ok": true}`` whenever the admin process answers. No session needed."""
    return Health(ok=True)


@api.get("/status", response_model=SystemStatus)
async def status(ctx: Ctx, session: CurrentUser) -> SystemStatus:
    """The engine and the microcontroller bridge: each ``{"up": true, "status": {...}}`` or
    ``{"up": false, "error": "..."}``."""
    return await read_status(ctx.settings)


@api.get("/openapi.json", include_in_schema=False)
def openapi(request: Request, session: CurrentUser) -> dict[str, Any]:
    """The OpenAPI document of the JSON API."""
    schema: dict[str, Any] = request.app.openapi()
    return schema
