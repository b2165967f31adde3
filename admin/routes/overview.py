"""The overview: call state, live measurements and charts, and the last hours from the history.

- ``GET /``: the page, rendered from the collector's latest sample and the history's recent events, so it
  says something useful before (and without) any script; ``overview.js`` then keeps it live.
- ``GET /api/live``: the latest sample (:class:`LiveSample`, one flat object; see
  :data:`admin.collector.SAMPLE_KEYS`).
- ``GET /api/live/stream``: the samples as they come, once a second, as server-sent events: one
  ``data: <sample as JSON>`` event per sample, a ``: keepalive`` comment after :data:`KEEPALIVE_S` without
  one, and ``event: ended`` when the stream stops for good (the session ended).
- ``GET /api/history?hours=24&points=300``: stored samples, averaged down to at most ``points``, and the
  events of the same span, newest first.

How the page gets live data: ``overview.js`` first fills its live charts with the last five minutes from
``/api/history``, then opens an ``EventSource`` on ``/api/live/stream`` and appends each sample to the
charts and the numbers; the "last 24 hours" charts are fetched from ``/api/history`` and refreshed every
minute. When the stream ends or fails, the script checks ``/api/live``: a 401 sends the browser to the
login page, anything else reconnects.

The stream's blocking wait for the next sample (:meth:`admin.web.LiveSubscription.get`) runs on a worker
thread of its own limiter (``AdminContext.stream_slots``), so open overview pages never take the threads
other requests need. The session is checked again every :data:`SESSION_RECHECK_S`: a stream does not
outlive a logout.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final

import anyio.to_thread
from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, create_model
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from admin.collector import (
    FLAG_KEYS,
    SAMPLE_KEYS,
    STAGES,
    TEXT_KEYS,
    TooManySubscribersError,
)
from admin.deps import Ctx, CurrentUser
from admin.history import COLUMNS, MAX_POINTS
from admin.security import SESSION_COOKIE
from admin.web import AdminContext, LiveSubscription, render

pages = APIRouter(tags=["overview pages"], include_in_schema=False)
api = APIRouter(prefix="/api", tags=["overview"])

KEEPALIVE_S: Final = 15.0
"""Longest silence on a live stream before a keepalive comment, in seconds (keeps proxies and the browser
from giving up on a stream while the collector is stalled)."""
SESSION_RECHECK_S: Final = 30.0
"""How often an open live stream checks that its session still exists, in seconds."""
RETRY_MS: Final = 3000
"""How long the browser waits before reconnecting a dropped stream (the ``retry:`` field), in ms."""
EVENTS_ON_PAGE: Final = 20
"""Events listed on the overview page."""

_EXTRA_HELP: Final[Mapping[str, str]] = {
    "t": "when the sample was taken, Unix seconds",
    "uptime_s": "time since the engine started, s",
    "send_mbps": "video actually sent, Mb/s",
    "audio_buffer_p50_ms": "wait of decoded audio before it plays, median since engine start, ms",
    "audio_drift_ppm": "the twin's sound card clock against ours, ppm",
    "av_offset_ms": "audio minus video playout age (positive: audio later), ms",
    "audio_underruns": "sound card callbacks that found the playout buffer short, since engine start",
    "mcu_rtt_ms": "round trip to the room controller, ms",
    "sensors_age_s": "age of the room controller's last sensor report, s",
    **{f"stage_{name}_p50_ms": f"{name} stage latency, median since engine start, ms" for name in STAGES},
}


def _sample_fields() -> dict[str, Any]:
    helps = {c.name: f"{c.help} ({c.unit})" for c in COLUMNS}
    fields: dict[str, Any] = {}
    for key in SAMPLE_KEYS:
        if key in FLAG_KEYS:
            kind: Any = bool | None
        elif key in TEXT_KEYS:
            kind = str | None
        else:
            kind = float | None
        fields[key] = (kind, Field(None, description=helps.get(key) or _EXTRA_HELP.get(key)))
    return fields


LiveSample = create_model(
    "LiveSample",
    __doc__="The collector's latest sample: one flat object; null where a value is not known (the engine or "
    "the bridge is down, or it does not measure that). ``engine_up``/``hwcontrol_up`` false come with "
    "``engine_error``/``hwcontrol_error`` saying why.",
    **_sample_fields(),
)

HistorySample = create_model(  # type: ignore[call-overload]
    "HistorySample",
    __doc__="One stored sample: the mean of the samples of its span (null where none had a value).",
    t=(float, Field(description="mean time of the samples averaged, Unix seconds")),
    **{c.name: (float | None, Field(None, description=f"{c.help} ({c.unit})")) for c in COLUMNS},
)


class ColumnOut(BaseModel):
    """A stored measurement: its key, unit and meaning."""

    name: str
    unit: str
    help: str


class EventOut(BaseModel):
    """Something that changed: when (Unix seconds), about which part, how bad, and what."""

    t: float
    source: str = Field(description="engine, hwcontrol or admin")
    level: str = Field(description="debug, info, warning or error")
    message: str


class HistoryOut(BaseModel):
    """``GET /api/history``: samples of ``[since, until)`` oldest first, and the events of that span newest
    first."""

    since: float = Field(description="start of the span, Unix seconds")
    until: float = Field(description="end of the span (now), Unix seconds")
    bucket_s: float = Field(description="the span each point averages at most, seconds")
    columns: list[ColumnOut]
    samples: list[HistorySample]
    events: list[EventOut]


@dataclass(frozen=True)
class Series:
    """One line of a chart: a sample key, its label, and a factor to the chart's unit."""

    key: str
    label: str
    scale: float = 1.0


@dataclass(frozen=True)
class Chart:
    """A chart on the overview (live and history alike); ``minimum`` keeps zero in view."""

    id: str
    title: str
    unit: str
    series: tuple[Series, ...]
    minimum: float | None = 0.0

    def spec(self) -> str:
        """The chart as ``charts.js`` takes it, JSON for a ``data-chart`` attribute."""
        return json.dumps(
            {
                "title": self.title,
                "unit": self.unit,
                "min": self.minimum,
                "series": [{"key": s.key, "label": s.label, "scale": s.scale} for s in self.series],
            },
            separators=(",", ":"),
        )


CHARTS: Final[tuple[Chart, ...]] = (
    Chart(
        "latency",
        "Latency, twin to here",
        "ms",
        (
            Series("video_latency_p50_ms", "video p50"),
            Series("video_latency_p99_ms", "video p99"),
            Series("audio_latency_p50_ms", "audio p50"),
        ),
    ),
    Chart("fps", "Pictures shown", "fps", (Series("fps_shown", "shown"),)),
    Chart(
        "network",
        "Network",
        "Mb/s",
        (Series("receive_mbps", "received"), Series("send_target_kbps", "send target", 1e-3)),
    ),
    Chart("loss", "Packet loss", "%", (Series("loss_percent", "lost"),)),
    Chart("rtt", "Round trip", "ms", (Series("rtt_ms", "RTT"),)),
    Chart(
        "audio",
        "Audio levels",
        "dBFS",
        (Series("mic_dbfs", "microphone"), Series("out_dbfs", "sent")),
        minimum=None,
    ),
    Chart(
        "cpu",
        "CPU",
        "%",
        (Series("system_cpu_percent", "machine"), Series("engine_cpu_percent", "engine")),
    ),
    Chart(
        "temperature",
        "Temperature",
        "°C",
        (Series("soc_temperature_c", "processor"), Series("room_temperature_c", "room")),
        minimum=None,
    ),
    Chart(
        "room",
        "Room",
        "lx / %",
        (Series("room_lux", "light (lx)"), Series("room_humidity_percent", "humidity (%)")),
    ),
)
"""The overview's charts, in page order."""

STAGE_LABELS: Final[Mapping[str, str]] = {
    "capture_to_encoded": "Capture and encode",
    "pacing": "Send (pacing)",
    "assembly": "Network (assembly)",
    "decode": "Decode",
    "display": "Display",
    "audio_processing": "Audio processing",
}


def json_safe(sample: Mapping[str, Any]) -> dict[str, Any]:
    """``sample`` with non-finite numbers as None (JSON has no NaN)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in sample.items()}


# -- the page -----------------------------------------------------------------------------------------------


@pages.get("/")
def overview(request: Request, ctx: Ctx, session: CurrentUser) -> Response:
    sample = ctx.feed.latest()
    events = ctx.history.events(ctx.clock() - 86400.0, limit=EVENTS_ON_PAGE)
    name = sample.get("engine_name") or ctx.current.get().engine.name
    return render(
        request,
        "overview.html",
        session=session,
        page="overview",
        name=name,
        s=sample,
        charts=CHARTS,
        stages=[(label, sample.get(f"stage_{key}_p50_ms")) for key, label in STAGE_LABELS.items()],
        stage_keys=[f"stage_{key}_p50_ms" for key in STAGE_LABELS],
        events=events,
    )


# -- the API ------------------------------------------------------------------------------------------------


@api.get("/live", response_model=LiveSample)
def live(ctx: Ctx, session: CurrentUser) -> dict[str, Any]:
    """The latest sample (once a second). Before the first poll every value is null and both sockets read
    as down, "not polled yet"."""
    return json_safe(ctx.feed.latest())


async def _stream(ctx: AdminContext, sub: LiveSubscription, token: str | None) -> AsyncIterator[str]:
    """The event stream of one live view (see the module docstring). Closes ``sub`` however it ends: the
    client gone (the write fails and the generator is closed), the collector stopped, the session over."""
    try:
        yield f"retry: {RETRY_MS}\n\n"
        recheck = time.monotonic() + SESSION_RECHECK_S
        while True:
            sample = await anyio.to_thread.run_sync(sub.get, KEEPALIVE_S, limiter=ctx.stream_slots)
            if sample is not None:
                yield "data: " + json.dumps(json_safe(sample), separators=(",", ":")) + "\n\n"
            elif sub.closed:
                return
            else:
                yield ": keepalive\n\n"
            if time.monotonic() >= recheck:
                recheck = time.monotonic() + SESSION_RECHECK_S
                if await run_in_threadpool(ctx.auth.session, token) is None:
                    yield 'event: ended\ndata: {"reason": "the session ended"}\n\n'
                    return
    finally:
        sub.close()


@api.get(
    "/live/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-sent events: `data: <LiveSample as JSON>` once a second, "
            "`: keepalive` comments, `event: ended` when the session ends.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        503: {"description": "too many live views are open"},
    },
)
def live_stream(request: Request, ctx: Ctx, session: CurrentUser) -> StreamingResponse:
    """The samples as they come (see :class:`LiveSample`), as a ``text/event-stream``; a new stream starts
    with the latest sample."""
    try:
        sub = ctx.feed.subscribe()
    except TooManySubscribersError as exc:
        raise HTTPException(503, f"too many live views are open ({exc}); close some pages") from None
    return StreamingResponse(
        _stream(ctx, sub, request.cookies.get(SESSION_COOKIE)),
        media_type="text/event-stream",
        headers={"X-Accel-Buffering": "no"},
        # If the response never starts (the client went at once), the generator's own ``finally`` never
        # runs; closing is idempotent, so close here too.
        background=BackgroundTask(sub.close),
    )


@api.get("/history", response_model=HistoryOut)
def history(
    ctx: Ctx,
    session: CurrentUser,
    hours: Annotated[float, Query(gt=0, le=366 * 24, description="span, hours back from now")] = 24.0,
    points: Annotated[int, Query(ge=1, le=MAX_POINTS, description="most samples returned")] = 300,
    events: Annotated[int, Query(ge=0, le=1000, description="most events returned, newest first")] = 100,
) -> HistoryOut:
    """Stored samples (one every ten seconds, averaged down to at most ``points``) and events, of the last
    ``hours``."""
    until = ctx.clock()
    since = until - hours * 3600.0
    rows = ctx.history.samples(since, until, points)
    return HistoryOut(
        since=since,
        until=until,
        bucket_s=(until - since) / points,
        columns=[ColumnOut(name=c.name, unit=c.unit, help=c.help) for c in COLUMNS],
        samples=rows,
        events=[EventOut(**e.as_dict()) for e in ctx.history.events(since, limit=events)],
    )
