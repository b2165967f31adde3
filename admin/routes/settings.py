"""Settings: the doorway's name, picture size, rate caps, sound cards and ports, validated by the one schema.

The settings page edits the keys in :data:`EDITABLE` of the process's settings file (``--config``);
``PUT /api/settings`` takes the same keys as a partial update. Either way :class:`admin.settings_file.
SettingsFile` merges the change into the file, validates the whole with the schema the services start
with (:func:`app.settings.parse_settings`), and writes it atomically. Problems come back as the schema's
own lines (422, nothing written).

Then the change is applied where it can be without dropping the call: a new ``video.bitrate_kbps`` goes to
the running engine at once (its ``set_bitrate``); anything else takes effect when the services that read it
restart, and the answer says so, starting "restart needed: " and naming them (engine, hwcontrol, admin).
The panel itself follows a saved name at once (pairing tells the new one).

``GET /api/settings`` returns the effective settings the file gives now (file, environment overrides and
defaults), secrets removed, and the editable keys' values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from admin.backends import ask
from admin.deps import Ctx, CurrentUser
from admin.diagnostics import redact
from admin.security import CSRF_FIELD, Session
from admin.settings_file import LIVE_KEYS, SaveResult, SettingsWriteError
from admin.web import AdminContext, render
from app.settings import Settings, SettingsError

pages = APIRouter(tags=["settings pages"], include_in_schema=False)
api = APIRouter(prefix="/api/settings", tags=["settings"])

MAX_FIELD: Final = 300
"""Longest value a form field may carry, in characters (the schema's own limits are tighter)."""


@dataclass(frozen=True)
class Editable:
    """A key the settings page edits: where it lives, its label and hint, and how the form carries it
    (``int``; ``text``; ``optional``: text where empty means "none, the default")."""

    section: str
    key: str
    label: str
    kind: Literal["int", "text", "optional"]
    hint: str

    @property
    def name(self) -> str:
        """The dotted key, also the form field's name."""
        return f"{self.section}.{self.key}"

    @property
    def live(self) -> bool:
        return self.name in LIVE_KEYS


EDITABLE: Final[tuple[Editable, ...]] = (
    Editable("engine", "name", "Name of this doorway", "text", "shown to the twin; 1 to 64 characters"),
    Editable("video", "width", "Picture width", "int", "pixels, even"),
    Editable("video", "height", "Picture height", "int", "pixels, even"),
    Editable("video", "fps", "Frames per second", "int", "1 to 240"),
    Editable("video", "bitrate_kbps", "Most video bitrate", "int", "kb/s; applies at once, no restart"),
    Editable("video", "min_bitrate_kbps", "Least video bitrate", "int", "kb/s; congestion control's floor"),
    Editable(
        "audio", "input_device", "Microphone", "optional", "part of its name; empty: the system default"
    ),
    Editable("audio", "output_device", "Speaker", "optional", "part of its name; empty: the system default"),
    Editable("audio", "bitrate_kbps", "Audio bitrate", "int", "kb/s (Opus), 6 to 510"),
    Editable("network", "listen_port", "Media port", "int", "UDP port this doorway receives on"),
    Editable(
        "network", "peer_host", "Twin's address", "optional", "empty: the one learned when pairing (normal)"
    ),
    Editable("network", "peer_port", "Twin's port", "int", "UDP, used with the twin's address"),
)
"""The keys the page and ``PUT /api/settings`` change, in form order."""

SECTIONS: Final = ("engine", "video", "audio", "network")


class _Partial(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EngineIn(_Partial):
    name: str | None = Field(None, description="name shown to the twin (null: the default)")


class VideoIn(_Partial):
    width: int | None = Field(None, description="picture width, pixels, even")
    height: int | None = Field(None, description="picture height, pixels, even")
    fps: int | None = Field(None, description="frames per second")
    bitrate_kbps: int | None = Field(None, description="most the encoder may use, kb/s; applied at once")
    min_bitrate_kbps: int | None = Field(None, description="least congestion control goes down to, kb/s")


class AudioIn(_Partial):
    input_device: str | None = Field(None, description="microphone, part of its name (null: default)")
    output_device: str | None = Field(None, description="speaker, part of its name (null: default)")
    bitrate_kbps: int | None = Field(None, description="Opus bitrate, kb/s")


class NetworkIn(_Partial):
    listen_port: int | None = Field(None, description="UDP port this doorway receives media on")
    peer_host: str | None = Field(None, description="the twin's media address (null: learned when pairing)")
    peer_port: int | None = Field(None, description="the twin's UDP port, used with peer_host")


class SettingsUpdate(_Partial):
    """A partial update: only the keys given change; a key given as null is removed from the file, so its
    default applies. Ranges are the settings schema's (a value out of range: 422 with its message)."""

    engine: EngineIn | None = None
    video: VideoIn | None = None
    audio: AudioIn | None = None
    network: NetworkIn | None = None


class SettingsOut(BaseModel):
    """The settings the file gives now (file, ``DOORWAY_*`` environment overrides and defaults), secrets
    removed."""

    path: str = Field(description="the settings file")
    settings: dict[str, dict[str, Any]]
    editable: dict[str, dict[str, Any]] = Field(description="the keys the settings page edits, by section")
    problem: str | None = Field(
        None,
        description="the file does not validate as it is (edited by hand?): the settings shown are "
        "the ones the panel runs with",
    )


class SettingsSaved(BaseModel):
    """A saved update: which keys changed, what was applied at once, which services must restart."""

    changed: list[str] = Field(description="dotted keys whose effective value changed")
    applied: list[str] = Field(description="changes already in effect, one sentence each")
    restart_needed: list[str] = Field(description="services to restart: engine, hwcontrol, admin")
    message: str = Field(description="all of it in one paragraph, for people")


class SettingsProblems(BaseModel):
    """Nothing was saved: the schema's problems, one per line."""

    error: str
    problems: list[str]


def _editable_values(settings: Settings) -> dict[str, dict[str, Any]]:
    dump = settings.model_dump(mode="json")
    out: dict[str, dict[str, Any]] = {}
    for e in EDITABLE:
        out.setdefault(e.section, {})[e.key] = dump[e.section][e.key]
    return out


def _load(ctx: AdminContext) -> tuple[Settings, str | None]:
    """The file's settings now, or the ones the panel follows and why the file's cannot be used."""
    try:
        return ctx.settings_file.load(), None
    except (SettingsError, SettingsWriteError) as exc:
        return ctx.current.get(), str(exc)


def _describe(value: Any) -> str:
    return "default" if value is None else repr(value)


def apply_saved(ctx: AdminContext, result: SaveResult) -> SettingsSaved:
    """Make a saved change take effect where it can without a restart, record it as an event, and say
    what happened. Blocks on the engine's socket (a second or two at most)."""
    ctx.current.set(result.settings)
    applied: list[str] = []
    notes: list[str] = []
    if "video.bitrate_kbps" in result.changed:
        kbps = result.settings.video.bitrate_kbps
        answer = ask(ctx.settings.engine.control_socket, "engine", "set_bitrate", kbps=kbps)
        if answer.status is not None:
            applied.append(f"the engine now sends at most {kbps} kb/s (no restart)")
        else:
            notes.append(
                f"the running engine did not take the new bitrate ({answer.error}); it uses it when it starts"
            )
    waiting = [k for k in result.changed if k not in LIVE_KEYS]
    parts: list[str] = []
    if not result.changed:
        parts.append("Saved; nothing changed." if result.written else "Nothing to save: no value changed.")
    else:
        parts.append(f"Saved {', '.join(result.changed)}.")
    parts += [s[0].upper() + s[1:] + "." for s in applied + notes]
    if result.restart:
        verb = "takes" if len(waiting) == 1 else "take"
        who = "it restarts" if len(result.restart) == 1 else "they restart"
        parts.append(
            f"restart needed: {', '.join(result.restart)} — {', '.join(waiting)} {verb} effect when {who}"
            " (the call drops for a few seconds)."
        )
    if result.changed:
        previous, new = result.previous.model_dump(mode="json"), result.settings.model_dump(mode="json")
        summary = ", ".join(
            f"{key} {_describe(previous[key.split('.')[0]][key.split('.')[1]])} → "
            f"{_describe(new[key.split('.')[0]][key.split('.')[1]])}"
            for key in result.changed
        )
        ctx.event("info", f"settings saved: {summary}")
    return SettingsSaved(
        changed=list(result.changed),
        applied=applied,
        restart_needed=list(result.restart),
        message=" ".join(parts),
    )


def save(ctx: AdminContext, changes: dict[tuple[str, str], Any]) -> SettingsSaved:
    """Merge, validate, write and apply ``changes``. Raises SettingsError or SettingsWriteError."""
    result = ctx.settings_file.update(changes, ctx.current.get())
    return apply_saved(ctx, result)


def _problems(exc: SettingsError) -> list[str]:
    return [line for line in str(exc).splitlines() if line.strip()]


# -- pages --------------------------------------------------------------------------------------------------


def _page(
    request: Request,
    ctx: AdminContext,
    session: Session,
    *,
    status_code: int = 200,
    values: dict[str, str] | None = None,
    problems: list[str] | None = None,
    notice: str | None = None,
    error: str | None = None,
) -> Response:
    settings, problem = _load(ctx)
    if values is None:
        current = _editable_values(settings)
        values = {e.name: "" if (v := current[e.section][e.key]) is None else str(v) for e in EDITABLE}
    return render(
        request,
        "settings.html",
        session=session,
        page="settings",
        status_code=status_code,
        fields=EDITABLE,
        values=values,
        problems=problems or [],
        file_problem=problem,
        path=str(ctx.settings_file.path),
        notice=notice,
        error=error,
    )


def _form_changes(form: dict[str, str], settings: Settings) -> dict[tuple[str, str], Any]:
    """The changes a posted form asks for: every field whose value differs from the file's now. Text that
    is not a whole number goes through as it is, for the schema to say what is wrong with it."""
    current = _editable_values(settings)
    changes: dict[tuple[str, str], Any] = {}
    for e in EDITABLE:
        if e.name not in form:
            continue
        raw = form[e.name].strip()
        value: Any
        if e.kind == "int":
            if raw == "":
                value = None
            else:
                try:
                    value = int(raw)
                except ValueError:
                    value = raw
        elif e.kind == "optional":
            value = raw or None
        else:
            value = raw
        if value != current[e.section][e.key]:
            changes[(e.section, e.key)] = value
    return changes


@pages.get("/settings")
def settings_page(request: Request, ctx: Ctx, session: CurrentUser) -> Response:
    return _page(request, ctx, session)


@pages.post("/settings")
async def settings_form(request: Request, ctx: Ctx, session: CurrentUser) -> Response:
    posted = await request.form()
    form: dict[str, str] = {}
    for key, value in posted.items():
        if key == CSRF_FIELD or not isinstance(value, str):
            continue
        if len(value) > MAX_FIELD:
            return _page(
                request, ctx, session, status_code=422, error=f"{key}: longer than {MAX_FIELD} characters"
            )
        form[key] = value
    values = {e.name: form.get(e.name, "") for e in EDITABLE}

    def work() -> SettingsSaved:
        settings, _ = _load(ctx)
        return save(ctx, _form_changes(form, settings))

    try:
        saved = await run_in_threadpool(work)
    except SettingsError as exc:
        return _page(
            request,
            ctx,
            session,
            status_code=422,
            values=values,
            problems=_problems(exc),
            error="Not saved: the settings below are not valid.",
        )
    except SettingsWriteError as exc:
        return _page(request, ctx, session, status_code=500, values=values, error=f"Not saved: {exc}")
    return _page(request, ctx, session, notice=saved.message)


# -- API ----------------------------------------------------------------------------------------------------


@api.get("", response_model=SettingsOut)
def get_settings(ctx: Ctx, session: CurrentUser) -> SettingsOut:
    """The effective settings from the file now, secrets removed; and the editable keys' values."""
    settings, problem = _load(ctx)
    return SettingsOut(
        path=str(ctx.settings_file.path),
        settings=redact(settings.model_dump(mode="json")),
        editable=_editable_values(settings),
        problem=problem,
    )


@api.put(
    "",
    response_model=SettingsSaved,
    responses={422: {"model": SettingsProblems, "description": "not valid: nothing was saved"}},
)
def put_settings(body: SettingsUpdate, ctx: Ctx, session: CurrentUser) -> Response | SettingsSaved:
    """Change some settings (a partial update), validated by the settings schema and saved atomically. A
    new ``video.bitrate_kbps`` is applied to the running engine at once; other changes say which services
    must restart ("restart needed: engine")."""
    changes: dict[tuple[str, str], Any] = {}
    for section in SECTIONS:
        part = getattr(body, section)
        if part is not None:
            for key, value in part.model_dump(exclude_unset=True).items():
                changes[(section, key)] = value
    try:
        return save(ctx, changes)
    except SettingsError as exc:
        problems = _problems(exc)
        body_out = SettingsProblems(
            error="the settings were not saved: " + "; ".join(problems), problems=problems
        )
        return JSONResponse(body_out.model_dump(), status_code=422)
    except SettingsWriteError as exc:
        return JSONResponse({"error": f"the settings were not saved: {exc}"}, status_code=500)
