"""The HTML pages behind a session. For now only the overview, a placeholder the pages work replaces.

Each page is rendered on the server from the same data the JSON API returns (here
:func:`admin.backends.read_status`); ``admin.js`` may refresh parts of it from the API.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from admin.backends import read_status
from admin.deps import Ctx, CurrentUser
from admin.web import render

router = APIRouter(tags=["pages"], include_in_schema=False)


@router.get("/")
async def overview(request: Request, ctx: Ctx, session: CurrentUser) -> Response:
    status = await read_status(ctx.settings)
    return render(request, "overview.html", session=session, status=status, name=ctx.settings.engine.name)
