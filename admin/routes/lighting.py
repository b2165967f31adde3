"""Lighting and room sensors: brightness, colour temperature and scenes, through the bridge's socket.

Everything goes to the microcontroller bridge (``hwcontrol.control_socket``, hwcontrol/README.md): its
``status`` (state, message, the lights' set-points, the scene), ``sensors`` (the room's readings and their
age) and ``set_light``/``set_scene``. A bridge that is not running, or an MCU that is missing, is shown
plainly on the page (200, with the reason); the API answers 503 with the same sentence when a command
cannot reach the bridge, 502 when the bridge refuses it. An MCU that is missing still takes set-points:
the bridge keeps them and sends them when it comes back.

Pages post forms (``/lighting/light``, ``/lighting/scene``) and get the page back; ``lighting.js`` sends
the slider's value to ``POST /api/lighting/light`` as it is released, without reloading.

"Match the far side" (``/lighting/match``, ``POST /api/lighting/match``): saved in the settings file
(``lighting.match_far_side``, so it holds after a restart) and switched on the running engine at once
(its ``lighting_match``); the card shows the engine's view — this room's and the far room's light levels
and what the matching does (app/engine/lightmatch.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Form, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from admin.backends import ComponentStatus, ask
from admin.collector import STALE_SENSORS_S
from admin.deps import Ctx, CurrentUser
from admin.security import Session
from admin.settings_file import SettingsWriteError
from admin.web import AdminContext, render
from app.settings import SettingsError

pages = APIRouter(tags=["lighting pages"], include_in_schema=False)
api = APIRouter(prefix="/api/lighting", tags=["lighting"])

BRIDGE: Final = "microcontroller bridge"
Scene = Literal["off", "safe", "day", "evening"]
SCENES: Final[Mapping[Scene, int]] = {"off": 0, "safe": 1, "day": 2, "evening": 3}
"""The MCU's scenes by name (hwcontrol/README.md: 0 off, 1 safe, 2 day, 3 evening)."""
SCENE_NAMES: Final[Mapping[int, Scene]] = {v: k for k, v in SCENES.items()}
ALL_CHANNELS: Final = "255"
"""The ``lights`` key of a set-point for every channel."""
CCT_MIN_K: Final = 2700
CCT_MAX_K: Final = 6500
DEFAULT_FADE_MS: Final = 300
"""Fade of a change made from the panel, ms: quick, but no jump."""


class SensorsOut(BaseModel):
    """The room controller's last report (null for what the board lacks)."""

    age_s: float | None = Field(None, description="how old the report is, seconds")
    stale: bool = Field(False, description=f"older than {STALE_SENSORS_S:g} s: the MCU may be gone")
    lux: float | None = None
    temperature_c: float | None = None
    humidity_percent: float | None = None
    presence: bool | None = None


class LightingOut(BaseModel):
    """The bridge, its MCU's state, the lights and the room's readings."""

    up: bool = Field(description="the bridge answers")
    error: str | None = Field(None, description="why not, for people")
    state: str | None = Field(None, description="missing, connecting, ready or refused")
    message: str | None = Field(None, description="the bridge's own sentence about its state")
    brightness: int | None = Field(None, description="the set-point for all channels, ‰ (0–1000)")
    cct_k: int | None = Field(None, description="its colour temperature, K (0: left as it was)")
    scene: Scene | None = None
    lights: dict[str, Any] = Field(
        default_factory=dict, description="set-points by channel, as the bridge says"
    )
    sensors: SensorsOut | None = None


class MatchOut(BaseModel):
    """Matching the far side's light, as the engine sees it (null when the engine does not answer)."""

    enabled: bool = Field(description="saved in the settings file (lighting.match_far_side)")
    engine_up: bool = Field(description="the engine answers")
    running: bool | None = Field(None, description="the engine matches now")
    state: str | None = Field(None, description="what the matching does, for people")
    calibrated: bool | None = Field(None, description="a lighting calibration gave the room's response")
    local_lux: float | None = None
    far_lux: float | None = Field(None, description="the far room's level (smoothed), lux")
    far_age_s: float | None = None


class MatchIn(BaseModel):
    """``POST /api/lighting/match``."""

    model_config = ConfigDict(extra="forbid")

    on: bool


class MatchSaved(BaseModel):
    """Matching was switched: saved, and whether the running engine took it."""

    enabled: bool
    live: bool = Field(description="the running engine switched at once")
    message: str


class LightIn(BaseModel):
    """``POST /api/lighting/light``: a set-point for every channel."""

    model_config = ConfigDict(extra="forbid")

    brightness: int = Field(ge=0, le=1000, description="‰ of full brightness")
    cct_k: int | None = Field(None, ge=CCT_MIN_K, le=CCT_MAX_K, description="colour temperature, K")
    fade_ms: int = Field(DEFAULT_FADE_MS, ge=0, le=60000)


class SceneIn(BaseModel):
    """``POST /api/lighting/scene``."""

    model_config = ConfigDict(extra="forbid")

    scene: Scene
    fade_ms: int = Field(DEFAULT_FADE_MS, ge=0, le=60000)


class CommandOut(BaseModel):
    """The bridge queued the command for the MCU."""

    queued: bool
    state: str | None = Field(None, description="the bridge's state (missing: sent when the MCU is back)")


_COMMAND_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    502: {"description": "the bridge refused (a full queue: the MCU is slow or gone)"},
    503: {"description": "the bridge does not answer (not running)"},
}


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def read_lighting(ctx: AdminContext) -> LightingOut:
    """Ask the bridge for its status and the room's readings (blocks up to a few seconds)."""
    path = ctx.settings.hwcontrol.control_socket
    status = ask(path, BRIDGE, "status")
    if status.status is None:
        return LightingOut(up=status.up, error=status.error)
    st = status.status
    lights = st.get("lights") if isinstance(st.get("lights"), dict) else {}
    assert isinstance(lights, dict)
    mine = lights.get(ALL_CHANNELS) or next(iter(lights.values()), None)
    mine = mine if isinstance(mine, dict) else {}
    scene = _int(st.get("scene"))
    out = LightingOut(
        up=True,
        state=st.get("state") if isinstance(st.get("state"), str) else None,
        message=st.get("message") if isinstance(st.get("message"), str) else None,
        brightness=_int(mine.get("brightness")),
        cct_k=_int(mine.get("cct_k")),
        scene=SCENE_NAMES.get(scene) if scene is not None else None,
        lights=lights,
    )
    readings = ask(path, BRIDGE, "sensors")
    raw = readings.status.get("sensors") if readings.status is not None else None
    if isinstance(raw, dict):
        age = _num(raw.get("age_s"))
        presence = raw.get("presence")
        out.sensors = SensorsOut(
            age_s=age,
            stale=age is not None and age > STALE_SENSORS_S,
            lux=_num(raw.get("lux")),
            temperature_c=_num(raw.get("temperature_c")),
            humidity_percent=_num(raw.get("humidity_percent")),
            presence=presence if isinstance(presence, bool) else None,
        )
    return out


def read_match(ctx: AdminContext) -> MatchOut:
    """Matching as saved and as the engine runs it (blocks up to a few seconds)."""
    enabled = ctx.current.get().lighting.match_far_side
    status = ask(ctx.settings.engine.control_socket, "engine", "status")
    lighting = status.status.get("lighting") if status.status is not None else None
    if not isinstance(lighting, dict):
        return MatchOut(enabled=enabled, engine_up=status.up)
    state = lighting.get("state")
    return MatchOut(
        enabled=enabled,
        engine_up=True,
        running=bool(lighting.get("match_far_side")),
        state=state if isinstance(state, str) else None,
        calibrated=bool(lighting.get("calibrated")),
        local_lux=_num(lighting.get("local_lux")),
        # Smoothed while matching; otherwise the twin's last report as it came.
        far_lux=_num(lighting.get("far_lux_smoothed")) or _num(lighting.get("far_lux")),
        far_age_s=_num(lighting.get("far_age_s")),
    )


def set_match(ctx: AdminContext, on: bool) -> MatchSaved:
    """Save ``lighting.match_far_side`` and switch the running engine. Blocks (file, socket). Raises
    SettingsError or SettingsWriteError when the file cannot take it."""
    result = ctx.settings_file.update({("lighting", "match_far_side"): on}, ctx.current.get())
    ctx.current.set(result.settings)
    answer = ask(ctx.settings.engine.control_socket, "engine", "lighting_match", on=on)
    what = "on" if on else "off"
    if result.changed:
        ctx.event("info", f"matching the far side's light turned {what}")
    if answer.status is not None:
        return MatchSaved(enabled=on, live=True, message=f"Matching the far side's light is {what}.")
    return MatchSaved(
        enabled=on,
        live=False,
        message=f"Saved: matching {what} from the engine's next start ({answer.error}).",
    )


def _command(ctx: AdminContext, cmd: str, **args: Any) -> ComponentStatus:
    return ask(ctx.settings.hwcontrol.control_socket, BRIDGE, cmd, **args)


def _raise_for(result: ComponentStatus) -> CommandOut:
    if not result.up:
        raise HTTPException(503, result.error or f"the {BRIDGE} does not answer")
    if result.status is None:
        raise HTTPException(502, result.error or f"the {BRIDGE} refused")
    state = result.status.get("state")
    return CommandOut(
        queued=bool(result.status.get("queued")), state=state if isinstance(state, str) else None
    )


def _light_args(brightness: int, cct_k: int | None, fade_ms: int) -> dict[str, Any]:
    # cct_k 0 tells the MCU to leave the colour temperature as it is.
    return {"brightness": brightness, "cct_k": cct_k or 0, "fade_ms": fade_ms}


# -- pages --------------------------------------------------------------------------------------------------


def _page(
    request: Request,
    ctx: AdminContext,
    session: Session,
    *,
    status_code: int = 200,
    error: str | None = None,
    notice: str | None = None,
) -> Response:
    return render(
        request,
        "lighting.html",
        session=session,
        page="lighting",
        status_code=status_code,
        error=error,
        notice=notice,
        lighting=read_lighting(ctx),
        match=read_match(ctx),
        scenes=list(SCENES),
        cct_min=CCT_MIN_K,
        cct_max=CCT_MAX_K,
        stale_s=STALE_SENSORS_S,
    )


def _outcome(result: ComponentStatus, done: str) -> tuple[int, str | None, str | None]:
    """(status code, error, notice) for a page after a command."""
    if not result.up:
        return 503, f"Not sent: {result.error}", None
    if result.status is None:
        return 502, f"Not done: {result.error}", None
    if result.status.get("state") == "missing":
        return 200, None, f"{done} The room controller is missing; the bridge sends it when it is back."
    return 200, None, done


@pages.get("/lighting")
def lighting_page(request: Request, ctx: Ctx, session: CurrentUser) -> Response:
    return _page(request, ctx, session)


@pages.post("/lighting/light")
def light_form(
    request: Request,
    ctx: Ctx,
    session: CurrentUser,
    brightness: Annotated[int, Form(ge=0, le=1000)],
    cct_k: Annotated[int, Form(ge=CCT_MIN_K, le=CCT_MAX_K)],
) -> Response:
    result = _command(ctx, "set_light", **_light_args(brightness, cct_k, DEFAULT_FADE_MS))
    code, error, notice = _outcome(result, f"Lights set to {brightness / 10:g} % at {cct_k} K.")
    return _page(request, ctx, session, status_code=code, error=error, notice=notice)


@pages.post("/lighting/scene")
def scene_form(request: Request, ctx: Ctx, session: CurrentUser, scene: Annotated[Scene, Form()]) -> Response:
    result = _command(ctx, "set_scene", scene=SCENES[scene], fade_ms=DEFAULT_FADE_MS)
    code, error, notice = _outcome(result, f"Scene {scene!r} set.")
    return _page(request, ctx, session, status_code=code, error=error, notice=notice)


@pages.post("/lighting/match")
def match_form(request: Request, ctx: Ctx, session: CurrentUser, on: Annotated[bool, Form()]) -> Response:
    try:
        saved = set_match(ctx, on)
    except SettingsError as exc:
        return _page(request, ctx, session, status_code=409, error=f"Not saved: {exc}")
    except SettingsWriteError as exc:
        return _page(request, ctx, session, status_code=500, error=f"Not saved: {exc}")
    return _page(request, ctx, session, notice=saved.message)


# -- API ----------------------------------------------------------------------------------------------------


@api.get("", response_model=LightingOut)
def lighting(ctx: Ctx, session: CurrentUser) -> LightingOut:
    """The bridge's state, the lights' set-points and the room's readings; ``up`` false (with ``error``)
    when the bridge does not answer."""
    return read_lighting(ctx)


@api.post("/light", response_model=CommandOut, responses=_COMMAND_ERRORS)
def set_light(body: LightIn, ctx: Ctx, session: CurrentUser) -> CommandOut:
    """Set every channel's brightness (and colour temperature). 503 the bridge does not answer; 502 it
    refused (a full queue: the MCU is slow or gone)."""
    return _raise_for(_command(ctx, "set_light", **_light_args(body.brightness, body.cct_k, body.fade_ms)))


@api.post("/scene", response_model=CommandOut, responses=_COMMAND_ERRORS)
def set_scene(body: SceneIn, ctx: Ctx, session: CurrentUser) -> CommandOut:
    """Switch to a scene (off, safe, day, evening)."""
    return _raise_for(_command(ctx, "set_scene", scene=SCENES[body.scene], fade_ms=body.fade_ms))


@api.get("/match", response_model=MatchOut)
def match(ctx: Ctx, session: CurrentUser) -> MatchOut:
    """Matching the far side's light: saved or not, and what the engine does now."""
    return read_match(ctx)


@api.post(
    "/match",
    response_model=MatchSaved,
    responses={
        409: {"description": "the settings file does not validate as it is (edited by hand?)"},
        500: {"description": "the settings file cannot be written"},
    },
)
def set_match_api(body: MatchIn, ctx: Ctx, session: CurrentUser) -> MatchSaved:
    """Turn matching the far side's light on or off: saved in the settings file and switched on the running
    engine at once (``live`` false when the engine is not running: it follows at its next start)."""
    try:
        return set_match(ctx, body.on)
    except SettingsError as exc:
        raise HTTPException(409, f"not saved: {exc}") from None
    except SettingsWriteError as exc:
        raise HTTPException(500, f"not saved: {exc}") from None
