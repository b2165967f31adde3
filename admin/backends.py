"""The admin panel's view of the doorway's other processes, over their local JSON sockets.

The engine (``engine.control_socket``, app/CONTROL.md) and the microcontroller bridge
(``hwcontrol.control_socket``, hwcontrol/README.md) each serve newline-delimited JSON; the admin panel is
only a client (:func:`app.control.request`). Either may be down — stopped, restarting, not installed on
this unit — and the panel must say so plainly and keep working, so nothing here raises: every answer is a
:class:`ComponentStatus` with ``up`` false and a sentence for people when the socket does not answer.

Each request is a blocking socket call with a short timeout; :func:`read_status` runs the two in the
thread pool side by side, so a wedged process costs a page at most :data:`STATUS_TIMEOUT_S`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from app.control import ControlClientError, request
from app.settings import Settings

STATUS_TIMEOUT_S: Final = 2.0
"""How long to wait for a process's socket to answer, in seconds."""


class ComponentStatus(BaseModel):
    """One process as the admin panel sees it."""

    up: bool = Field(description="its socket answered")
    status: dict[str, Any] | None = Field(
        None, description='what its status command returned (without "ok"), when it answered ok'
    )
    error: str | None = Field(None, description="why not, for people: not running, not answering, refused")


class SystemStatus(BaseModel):
    """``GET /api/status``: the engine and the microcontroller bridge."""

    engine: ComponentStatus
    bridge: ComponentStatus


def _down(what: str, path: Path, exc: ControlClientError, timeout: float) -> str:
    cause = exc.__cause__
    if isinstance(cause, FileNotFoundError):
        return f"the {what} is not running (no socket at {path})"
    if isinstance(cause, ConnectionRefusedError):
        return f"the {what} is not running (nothing answers at {path})"
    if isinstance(cause, PermissionError):
        return f"the admin panel may not use the {what}'s socket at {path} (permission denied)"
    if isinstance(cause, TimeoutError):
        return f"the {what} did not answer within {timeout:g} s"
    return f"the {what} cannot be reached: {exc}"


def ask(path: Path, what: str, cmd: str, timeout: float = STATUS_TIMEOUT_S, **args: Any) -> ComponentStatus:
    """Send ``cmd`` with ``args`` to the process serving ``path`` (``what`` names it in messages); never
    raises. ``status`` is the answer without "ok" when it was ok. Blocks up to ``timeout`` seconds."""
    try:
        resp = request(path, cmd, timeout=timeout, **args)
    except ControlClientError as exc:
        return ComponentStatus(up=False, error=_down(what, path, exc, timeout))
    if resp.get("ok") is not True:
        return ComponentStatus(up=True, error=f"the {what} refused: {resp.get('error', 'no reason given')}")
    resp.pop("ok")
    return ComponentStatus(up=True, status=resp)


def component_status(
    path: Path, what: str, cmd: str = "status", timeout: float = STATUS_TIMEOUT_S
) -> ComponentStatus:
    """Ask the process serving ``path`` for ``cmd``; never raises. Blocks up to ``timeout`` seconds."""
    return ask(path, what, cmd, timeout)


async def read_status(settings: Settings, timeout: float = STATUS_TIMEOUT_S) -> SystemStatus:
    """The engine's and the bridge's status, asked at the same time (two thread-pool calls)."""
    engine, bridge = await asyncio.gather(
        run_in_threadpool(component_status, settings.engine.control_socket, "engine", "status", timeout),
        run_in_threadpool(
            component_status, settings.hwcontrol.control_socket, "microcontroller bridge", "status", timeout
        ),
    )
    return SystemStatus(engine=engine, bridge=bridge)
