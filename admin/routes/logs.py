"""Logs: the newest lines of the Doorway services, filtered by service and level.

``GET /logs`` is the page (its filter form is a plain GET, so a filtered view is a link one can keep);
``GET /api/logs?service=engine&service=admin&level=warning&minutes=60&limit=200`` the same as JSON. Both
read through the app's :class:`admin.logs.LogSource` (the journal, or log files where there is none;
tests inject one). Reading may take a few seconds (``journalctl``), so the routes are plain ``def``s run
in the thread pool. A journal that cannot be read is said plainly on the page, and is a 503 for the API.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from admin.deps import Ctx, CurrentUser
from admin.history import LEVELS
from admin.logs import MAX_LIMIT, UNITS, LogLine, LogSourceError
from admin.web import AdminContext, render

pages = APIRouter(tags=["logs pages"], include_in_schema=False)
api = APIRouter(prefix="/api/logs", tags=["logs"])

Service = Literal["engine", "hwcontrol", "admin"]
Level = Literal["debug", "info", "warning", "error"]
MINUTES: Final = (15, 60, 360, 1440, 10080)
"""The time spans the page offers, in minutes."""
MAX_MINUTES: Final = 10080 * 4


class LogLineOut(BaseModel):
    """One log line: when (Unix seconds; null when the line does not say), which service, its level."""

    t: float | None
    service: str
    level: str
    message: str


class LogsOut(BaseModel):
    """``GET /api/logs``: the newest ``limit`` lines, oldest first."""

    services: list[str]
    level: str
    since: float = Field(description="Unix seconds")
    lines: list[LogLineOut]


def read(
    ctx: AdminContext, services: list[str], level: str, minutes: int, limit: int
) -> tuple[float, list[LogLine]]:
    """(since, lines). Raises LogSourceError."""
    since = ctx.clock() - minutes * 60.0
    return since, ctx.logs.read(services, level, since, limit)


ServiceQuery = Annotated[
    list[Service] | None, Query(description="repeat for several; default all: engine, hwcontrol, admin")
]
LevelQuery = Annotated[Level, Query(description="this level and worse")]
MinutesQuery = Annotated[int, Query(ge=1, le=MAX_MINUTES, description="how far back, minutes")]
LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="most lines, the newest kept")]


@pages.get("/logs")
def logs_page(
    request: Request,
    ctx: Ctx,
    session: CurrentUser,
    service: ServiceQuery = None,
    level: LevelQuery = "info",
    minutes: MinutesQuery = 60,
    limit: LimitQuery = 200,
) -> Response:
    services: list[str] = list(service) if service else list(UNITS)
    error = None
    lines: list[LogLine] = []
    try:
        _, lines = read(ctx, services, level, minutes, limit)
    except LogSourceError as exc:
        error = f"The logs cannot be read: {exc}"
    return render(
        request,
        "logs.html",
        session=session,
        page="logs",
        error=error,
        lines=lines,
        all_services=list(UNITS),
        services=services,
        levels=LEVELS,
        level=level,
        minute_choices=sorted({*MINUTES, minutes}),
        minutes=minutes,
        limit=limit,
    )


@api.get("", response_model=LogsOut, responses={503: {"description": "the logs cannot be read"}})
def logs(
    ctx: Ctx,
    session: CurrentUser,
    service: ServiceQuery = None,
    level: LevelQuery = "info",
    minutes: MinutesQuery = 60,
    limit: LimitQuery = 200,
) -> LogsOut:
    """The newest ``limit`` lines of the services at ``level`` or worse, from the last ``minutes``."""
    services: list[str] = list(service) if service else list(UNITS)
    try:
        since, lines = read(ctx, services, level, minutes, limit)
    except LogSourceError as exc:
        raise HTTPException(503, f"the logs cannot be read: {exc}") from None
    return LogsOut(
        services=services, level=level, since=since, lines=[LogLineOut(**line.as_dict()) for line in lines]
    )
