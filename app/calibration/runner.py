"""Running a calibration step as a child process, one at a time, and following its progress.

The engine hosts this (control commands ``calibrate``, ``calibration`` and ``calibration_cancel``,
app/CONTROL.md) so that the admin panel can run a step: the engine's service has the sound card, the camera
and the state directory, which the panel's sandbox does not (``PrivateDevices=yes``). The step runs as
``doorway calibrate STEP --json --progress-json`` — the very command an installer types — in a child
process, so that a step that hangs or crashes never touches the call, and so that the report, the stored
result and the exit status are the command's own. The child may ask the engine (over the same control
socket) for what only the engine has: a camera snapshot, or to let go of the sound card for a moment.

Theory of operation: :meth:`CalibrationRunner.start` starts the child and a reader thread; the thread reads
the child's stderr, one JSON progress object per line (``{"progress": 0.4, "message": "..."}``; any other
line is kept as the last error text), then its stdout (the report as JSON), waits for it and records the
outcome. :meth:`CalibrationRunner.status` is a snapshot any thread may take. A run longer than
``timeout_s`` is killed; :meth:`CalibrationRunner.cancel` kills it at once; :meth:`CalibrationRunner.close`
kills it and joins the thread (the engine's shutdown).

States: ``idle`` (nothing run yet), ``running``, ``passed``/``failed`` (the step finished; its report
says why), ``error`` (the child could not start, crashed, was killed, or printed no report: ``message``
says which), ``cancelled``.

This module imports only the standard library.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from app.calibration.report import STEPS

log = logging.getLogger(__name__)

TIMEOUT_S: Final = 600.0
"""Longest a step may run before it is killed, s."""
MAX_LINE: Final = 64 * 1024
"""Longest progress line read from the child, bytes (longer ones are cut)."""
MAX_REPORT: Final = 4 * 1024 * 1024
"""Most report bytes read from the child."""


class CalibrationBusyError(Exception):
    """A step is already running; the message names it."""


def default_command(step: str, config_path: Path | None) -> list[str]:
    """``python -m app calibrate STEP [--config PATH] --json --progress-json`` with this interpreter."""
    command = [sys.executable, "-m", "app", "calibrate", step, "--json", "--progress-json"]
    if config_path is not None:
        command += ["--config", str(config_path)]
    return command


class CalibrationRunner:
    """Runs one calibration step at a time as a child process (see the module docstring). Thread-safe.

    ``command(step)`` builds the child's argument list (default :func:`default_command` with
    ``config_path``); ``clock`` is Unix seconds (the times in :meth:`status`). ``on_finished(step, report)``
    runs on the reader thread after a step that finished with a report (passed or failed), so that its
    owner can apply the new result at once; an exception there is logged.
    """

    def __init__(
        self,
        config_path: Path | None = None,
        *,
        command: Callable[[str], Sequence[str]] | None = None,
        timeout_s: float = TIMEOUT_S,
        clock: Callable[[], float] = time.time,
        on_finished: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self._on_finished = on_finished
        self._command = command if command is not None else (lambda step: default_command(step, config_path))
        self._timeout_s = timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._cancelled = False
        self._status: dict[str, Any] = {"state": "idle", "step": None, "progress": 0.0, "message": ""}

    def status(self) -> dict[str, Any]:
        """The current or last run: ``state`` (see the module docstring), ``step``, ``progress`` (0..1),
        ``message`` (what it does now, or why it ended), ``started_at``/``finished_at`` (Unix s),
        ``exit_code`` and ``report`` (the step's JSON report, once finished)."""
        with self._lock:
            return dict(self._status)

    def start(self, step: str) -> dict[str, Any]:
        """Start ``step``; returns :meth:`status`. ValueError for an unknown step; CalibrationBusyError when
        one is running."""
        if step not in STEPS:
            raise ValueError(f"no calibration step {step!r} (known: {', '.join(STEPS)})")
        with self._lock:
            if self._status["state"] == "running":
                raise CalibrationBusyError(f"the {self._status['step']} calibration is running; wait for it")
            self._cancelled = False
            self._status = {
                "state": "running",
                "step": step,
                "progress": 0.0,
                "message": "starting",
                "started_at": self._clock(),
                "finished_at": None,
                "exit_code": None,
                "report": None,
            }
            try:
                self._proc = subprocess.Popen(
                    list(self._command(step)),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
            except OSError as exc:
                self._finish("error", f"the calibration could not start: {exc}", None, None)
                return dict(self._status)
            proc = self._proc
            self._thread = threading.Thread(
                target=self._follow, args=(proc,), name=f"calibrate-{step}", daemon=True
            )
            self._thread.start()
            log.info("calibration: %s started (pid %d)", step, proc.pid)
            return dict(self._status)

    def cancel(self) -> bool:
        """Kill the running step; whether one was running."""
        with self._lock:
            proc = self._proc
            if proc is None or self._status["state"] != "running":
                return False
            self._cancelled = True
        proc.kill()
        return True

    def close(self) -> None:
        """Kill a running step and wait for its thread. Idempotent."""
        self.cancel()
        thread = self._thread
        if thread is not None:
            thread.join(10.0)

    # -- the reader thread --------------------------------------------------------------------------------

    def _follow(self, proc: subprocess.Popen[bytes]) -> None:
        timer = threading.Timer(self._timeout_s, proc.kill)
        timer.daemon = True
        timer.start()
        last_error = ""
        out = bytearray()
        assert proc.stderr is not None and proc.stdout is not None
        stdout = proc.stdout
        # stdout on its own thread: a child that prints much there must not block on a full pipe while this
        # thread waits for its next progress line.
        reader = threading.Thread(target=lambda: out.extend(stdout.read(MAX_REPORT)), daemon=True)
        reader.start()
        try:
            while raw := proc.stderr.readline(MAX_LINE):
                line = raw.decode("utf-8", "replace").strip()
                update = _progress_line(line) if line else None
                if update is None:
                    last_error = line[:500] or last_error
                    continue
                with self._lock:
                    self._status["progress"], self._status["message"] = update
            reader.join()
            code = proc.wait()
        finally:
            timer.cancel()
            proc.stdout.close()
            proc.stderr.close()
        report = _report(bytes(out))
        with self._lock:
            if self._cancelled:
                self._finish("cancelled", "cancelled", code, report)
            elif report is not None and code in (0, 1):
                passed = bool(report.get("passed"))
                self._finish("passed" if passed else "failed", _verdict(report, passed), code, report)
            elif code < 0:
                self._finish("error", f"killed after {self._timeout_s:g} s (signal {-code})", code, None)
            else:
                why = last_error or f"it exited with status {code} and printed no report"
                self._finish("error", f"the calibration failed: {why}", code, report)
        status = self.status()
        log.info("calibration: %s ended: %s", status["step"], status["message"])
        if self._on_finished is not None and status["state"] in ("passed", "failed") and status["report"]:
            try:
                self._on_finished(status["step"], status["report"])
            except Exception:
                log.exception("calibration: applying the new %s result failed", status["step"])

    def _finish(self, state: str, message: str, code: int | None, report: dict[str, Any] | None) -> None:
        """Record the outcome (caller holds the lock)."""
        self._status.update(
            state=state,
            message=message,
            exit_code=code,
            report=report,
            finished_at=self._clock(),
            progress=1.0 if state in ("passed", "failed") else self._status["progress"],
        )
        self._proc = None


def _progress_line(line: str) -> tuple[float, str] | None:
    """(fraction, message) of a ``--progress-json`` line; None for any other line."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    fraction, message = data.get("progress"), data.get("message")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not isinstance(message, str):
        return None
    return min(1.0, max(0.0, float(fraction))), message[:500]


def _verdict(report: dict[str, Any], passed: bool) -> str:
    """ "passed", or "failed: " and the first problem (or the checks that failed)."""
    if passed:
        return "passed"
    problems = report.get("problems")
    if isinstance(problems, list) and problems and isinstance(problems[0], str):
        return f"failed: {problems[0]}"
    checks = report.get("checks")
    failed = [
        str(c.get("name"))
        for c in (checks if isinstance(checks, list) else [])
        if isinstance(c, dict) and c.get("passed") is False
    ]
    return f"failed: {', '.join(failed)} missed the target" if failed else "failed"


def _report(out: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(out.decode("utf-8", "replace"))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
