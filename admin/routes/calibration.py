"""Calibration: the latest result of each step with pass or fail, a button to run each, and the camera
snapshot.

Running a step is the engine's job (control commands ``calibrate``, ``calibration``,
``calibration_cancel``; app/CONTROL.md and :mod:`app.calibration.runner`): the engine's service has the
sound card, the camera and the state directory, this process's sandbox has none of them. The engine runs
``doorway calibrate STEP`` as its child, which stores the result in the state database; this page reads the
results from there (:meth:`app.state.StateStore.calibration`) and the run's progress from the engine.
When the engine is not running the page says so, shows the stored results, and names the command to run
on the doorway instead.

``calibration.js`` asks ``GET /api/calibration/run`` twice a second while a step runs, moves the progress
bar, and reloads the page when the step ends. Without scripts the page works too: the run button posts a
form and the page shows the progress as it was then.

The snapshot is the file the camera step writes, ``<state_dir>/calibration/camera.jpg`` (the picture with
the framing drawn over it), served as it is at ``/calibration/snapshot.jpg``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Form, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import FileResponse, RedirectResponse

from admin.backends import ComponentStatus, ask
from admin.deps import Ctx, CurrentUser
from admin.web import AdminContext, render
from app.calibration.report import STEPS, Report
from app.state import CALIBRATIONS_KEPT, StateError

pages = APIRouter(tags=["calibration pages"], include_in_schema=False)
api = APIRouter(prefix="/api/calibration", tags=["calibration"])

ENGINE: Final = "engine"
Step = Literal["audio", "camera", "lighting"]
SNAPSHOT: Final = Path("calibration") / "camera.jpg"
"""The camera step's snapshot, relative to the state directory."""
HISTORY: Final = 5
"""Earlier results listed under each step."""
TITLES: Final = {
    "audio": ("Audio", "Plays a sweep through the speaker and records the microphone: the acoustic delay "
              "for echo cancellation, the echo path, the noise floor and the levels, then ERLE."),
    "camera": ("Camera", "Lists the camera's controls, applies the framing and takes a snapshot."),
    "lighting": ("Lighting", "Steps the room lights and reads the light sensor: how the room answers, "
                 "and the brightness and colour temperature to keep."),
}  # fmt: skip


class StepIn(BaseModel):
    """``POST /api/calibration/run``."""

    model_config = ConfigDict(extra="forbid")

    step: Step


class RunOut(BaseModel):
    """The engine's current or last calibration run (app/CONTROL.md ``calibration``)."""

    engine_up: bool = Field(description="the engine answers (it runs the steps)")
    error: str | None = Field(None, description="why the engine could not be asked, or why it refused")
    state: str = Field("unknown", description="idle, running, passed, failed, error, cancelled (or unknown)")
    step: str | None = None
    progress: float = Field(0.0, description="0..1")
    message: str = ""
    started_at: float | None = None
    finished_at: float | None = None


class StoredOut(BaseModel):
    """The latest stored result of one step (its JSON report), and when the ones before it were made."""

    report: dict[str, Any] | None = Field(None, description="app/calibration/report.py's JSON, or null")
    history: list[dict[str, Any]] = Field(
        default_factory=list, description="earlier results: measured_at (Unix s) and passed"
    )


class CalibrationOut(BaseModel):
    """``GET /api/calibration``: every step's stored result, the run, and the snapshot if there is one."""

    steps: dict[str, StoredOut]
    run: RunOut
    snapshot: bool = Field(description="a camera snapshot exists at /calibration/snapshot.jpg")
    error: str | None = Field(None, description="why the stored results could not be read")


def read_run(ctx: AdminContext, cmd: str = "calibration", **args: Any) -> RunOut:
    """Ask the engine (blocks up to a few seconds); never raises."""
    result: ComponentStatus = ask(ctx.settings.engine.control_socket, ENGINE, cmd, **args)
    if result.status is None:
        return RunOut(engine_up=result.up, error=result.error)
    st = result.status

    def num(key: str) -> float | None:
        value = st.get(key)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    return RunOut(
        engine_up=True,
        state=str(st.get("state", "unknown")),
        step=st.get("step") if isinstance(st.get("step"), str) else None,
        progress=min(1.0, max(0.0, num("progress") or 0.0)),
        message=str(st.get("message", ""))[:500],
        started_at=num("started_at"),
        finished_at=num("finished_at"),
    )


def read_stored(ctx: AdminContext) -> tuple[dict[str, StoredOut], str | None]:
    """Every step's latest result and history from the state database; (results, error)."""
    out = {step: StoredOut() for step in STEPS}
    try:
        store = ctx.pairing.store()  # The state database, which pairing opened (or opens now).
        for step in STEPS:
            rows = store.calibration_history(step, limit=min(HISTORY + 1, CALIBRATIONS_KEPT))
            if rows:
                out[step] = StoredOut(
                    report=rows[0].report,
                    history=[{"measured_at": r.measured_at, "passed": r.passed} for r in rows[1:]],
                )
    except StateError as exc:
        return out, str(exc)
    return out, None


def snapshot_path(ctx: AdminContext) -> Path:
    return ctx.settings.engine.state_dir / SNAPSHOT


def _reports(stored: dict[str, StoredOut]) -> dict[str, Report | None]:
    """The stored reports the page can show (an unreadable one shows as never run, with a note)."""
    reports: dict[str, Report | None] = {}
    for step, s in stored.items():
        try:
            reports[step] = Report.from_json(s.report) if s.report is not None else None
        except ValueError:
            reports[step] = None
    return reports


# -- pages --------------------------------------------------------------------------------------------------


@pages.get("/calibration")
def calibration_page(request: Request, ctx: Ctx, session: CurrentUser) -> Response:
    return _page(request, ctx, session)


def _page(
    request: Request,
    ctx: AdminContext,
    session: Any,
    *,
    status_code: int = 200,
    error: str | None = None,
    notice: str | None = None,
) -> Response:
    stored, store_error = read_stored(ctx)
    path = snapshot_path(ctx)
    return render(
        request,
        "calibration.html",
        session=session,
        page="calibration",
        status_code=status_code,
        error=error or store_error,
        notice=notice,
        run=read_run(ctx),
        steps=[(step, *TITLES[step]) for step in STEPS],
        reports=_reports(stored),
        history={step: s.history for step, s in stored.items()},
        snapshot_version=int(path.stat().st_mtime) if path.is_file() else None,
    )


@pages.post("/calibration/run")
def run_form(request: Request, ctx: Ctx, session: CurrentUser, step: Annotated[Step, Form()]) -> Response:
    run = read_run(ctx, "calibrate", step=step)
    if run.error is not None:
        return _page(request, ctx, session, status_code=503 if not run.engine_up else 409, error=run.error)
    ctx.event("info", f"{step} calibration started")
    return RedirectResponse("/calibration", status_code=303)


@pages.post("/calibration/cancel")
def cancel_form(request: Request, ctx: Ctx, session: CurrentUser) -> Response:
    result = ask(ctx.settings.engine.control_socket, ENGINE, "calibration_cancel")
    if result.status is None:
        return _page(request, ctx, session, status_code=503 if not result.up else 409, error=result.error)
    return RedirectResponse("/calibration", status_code=303)


@pages.get("/calibration/snapshot.jpg")
def snapshot(ctx: Ctx, session: CurrentUser) -> Response:
    path = snapshot_path(ctx)
    if not path.is_file():
        raise HTTPException(404, "no camera snapshot yet: run the camera calibration")
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


# -- API ----------------------------------------------------------------------------------------------------


@api.get("", response_model=CalibrationOut)
def calibration(ctx: Ctx, session: CurrentUser) -> CalibrationOut:
    """Every step's latest stored result (with the dates of earlier ones), the engine's current or last
    run, and whether a camera snapshot exists."""
    stored, error = read_stored(ctx)
    return CalibrationOut(steps=stored, run=read_run(ctx), snapshot=snapshot_path(ctx).is_file(), error=error)


@api.get("/run", response_model=RunOut)
def run_status(ctx: Ctx, session: CurrentUser) -> RunOut:
    """The engine's current or last run: state, step, progress and what it does now."""
    return read_run(ctx)


_RUN_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    409: {"description": "the engine refused: a step is already running"},
    503: {"description": "the engine does not answer (it runs the steps)"},
}


@api.post("/run", response_model=RunOut, status_code=202, responses=_RUN_ERRORS)
def run(body: StepIn, ctx: Ctx, session: CurrentUser) -> RunOut:
    """Start a step on the engine. 202 with the run; 409 when one is running; 503 when the engine is down."""
    result = read_run(ctx, "calibrate", step=body.step)
    if result.error is not None:
        raise HTTPException(409 if result.engine_up else 503, result.error)
    ctx.event("info", f"{body.step} calibration started")
    return result


@api.post("/cancel", responses={409: {"description": "the engine refused"}, 503: _RUN_ERRORS[503]})
def cancel(ctx: Ctx, session: CurrentUser) -> dict[str, bool]:
    """Stop the running step (nothing is stored). ``cancelled``: whether one was running."""
    result = ask(ctx.settings.engine.control_socket, ENGINE, "calibration_cancel")
    if result.status is None:
        raise HTTPException(409 if result.up else 503, result.error or "the engine refused")
    return {"cancelled": bool(result.status.get("cancelled"))}
