"""Diagnostics: a page saying what the bundle holds, and ``GET /api/diagnostics``, the bundle itself.

The bundle (:func:`admin.diagnostics.build_bundle`) is a zip with the effective settings (secrets removed),
the engine's statistics and the collector's latest sample, the bridge's status, the last day's logs of
every service and the versions of what the doorway runs on. It is made in memory on request (a few MiB at
most) from live answers: the engine and the bridge are asked at that moment (each may be down: the bundle
says so), so it takes a second or two. Its file name names the doorway and the day:
``doorway-diagnostics-<name>-<YYYY-MM-DD>.zip``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

from fastapi import APIRouter, Request, Response

from admin.backends import ask
from admin.deps import Ctx, CurrentUser
from admin.diagnostics import build_bundle, collect_versions
from admin.logs import UNITS, LogLine, LogSourceError
from admin.web import AdminContext, render

pages = APIRouter(tags=["diagnostics pages"], include_in_schema=False)
api = APIRouter(prefix="/api", tags=["diagnostics"])

LOG_HOURS: Final = 24
"""How far back the bundle's logs go, in hours."""
LOG_LINES: Final = 5000
"""Most log lines in the bundle (the newest)."""

_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]+")


def bundle_name(name: str, now: float) -> str:
    """``doorway-diagnostics-<name>-<YYYY-MM-DD>.zip``, the name reduced to characters safe in a file name."""
    safe = _UNSAFE.sub("-", name).strip("-.") or "doorway"
    return f"doorway-diagnostics-{safe[:64]}-{datetime.fromtimestamp(now, UTC):%Y-%m-%d}.zip"


def make_bundle(ctx: AdminContext) -> tuple[str, bytes]:
    """(file name, zip bytes). Blocks: asks the engine and the bridge, reads the logs."""
    now = ctx.clock()
    engine = ask(ctx.settings.engine.control_socket, "engine", "stats")
    bridge = ask(ctx.settings.hwcontrol.control_socket, "microcontroller bridge", "status")
    try:
        logs = ctx.logs.read(list(UNITS), "debug", now - LOG_HOURS * 3600.0, LOG_LINES)
    except LogSourceError as exc:
        logs = [LogLine(now, "admin", "error", f"the logs could not be read: {exc}")]
    latest = ctx.feed.latest()
    latest["collector"] = ctx.feed.stats()
    latest["history"] = {
        **ctx.history.counts(),
        "bytes": ctx.history.size_bytes(),
        "problem": ctx.history.problem,
    }
    data = build_bundle(
        ctx.settings_file.path,
        ctx.current.get(),
        latest,
        engine.status if engine.status is not None else None,
        bridge.status if bridge.status is not None else None,
        logs,
        collect_versions(),
        now=now,
    )
    ctx.event("info", "diagnostics bundle downloaded")
    return bundle_name(ctx.current.get().engine.name, now), data


@pages.get("/diagnostics")
def diagnostics_page(request: Request, ctx: Ctx, session: CurrentUser) -> Response:
    return render(
        request,
        "diagnostics.html",
        session=session,
        page="diagnostics",
        collector=ctx.feed.stats(),
        counts=ctx.history.counts(),
        size_mb=ctx.history.size_bytes() / 2**20,
        history_problem=ctx.history.problem,
        log_hours=LOG_HOURS,
    )


@api.get(
    "/diagnostics",
    response_class=Response,
    responses={200: {"description": "the bundle", "content": {"application/zip": {}}}},
)
def diagnostics(ctx: Ctx, session: CurrentUser) -> Response:
    """The diagnostics bundle, a zip: settings (secrets removed), statistics, the bridge's status, the
    last day's logs and versions. Takes a second or two."""
    name, data = make_bundle(ctx)
    return Response(
        data,
        media_type="application/zip",
        headers={"Content-Disposition": f"attachment; filename={name}"},
    )
