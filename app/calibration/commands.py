"""``doorway calibrate``: run a calibration step with progress and print its report, or show the stored ones.

Progress goes to stderr (``[ 40%] playing the sweep``, or with ``--progress-json`` one JSON object per line,
``{"progress": 0.4, "message": "..."}``, which the admin panel relays to the browser); the report goes to
stdout (:meth:`~app.calibration.report.Report.text`, or its JSON with ``--json``). Exit status 0 when the
step passed, 1 when it did not (the report says why), 2 for bad settings (before anything runs), 3 when
the result could not be stored.
"""

from __future__ import annotations

import json
from typing import TextIO

from app.calibration import run_step
from app.calibration.report import STEPS, Report
from app.settings import Settings
from app.state import StateError, StateStore

EXIT_FAILED = 1
EXIT_STORE = 3


def calibrate(
    settings: Settings,
    step: str,
    *,
    as_json: bool,
    save: bool,
    progress_json: bool,
    out: TextIO,
    err: TextIO,
) -> int:
    """Run ``step``, print progress to ``err`` and the report to ``out``; the exit status."""

    def progress(fraction: float, message: str) -> None:
        fraction = min(1.0, max(0.0, fraction))
        if progress_json:
            err.write(json.dumps({"progress": round(fraction, 3), "message": message}) + "\n")
        else:
            err.write(f"[{fraction * 100:3.0f}%] {message}\n")
        err.flush()

    try:
        report = run_step(settings, step, progress, save=save)
    except StateError as exc:
        err.write(f"doorway calibrate: the result was not stored: {exc}\n")
        return EXIT_STORE
    _print(report, as_json, out)
    return 0 if report.passed else EXIT_FAILED


def show(settings: Settings, *, as_json: bool, out: TextIO, err: TextIO) -> int:
    """Print the latest stored result of every step (or say it was never run)."""
    try:
        with StateStore(settings.engine.state_dir) as store:
            stored = {step: store.calibration(step) for step in STEPS}
    except StateError as exc:
        err.write(f"doorway calibrate: {exc}\n")
        return EXIT_STORE
    reports: dict[str, Report | None] = {}
    for step, row in stored.items():
        try:
            reports[step] = None if row is None else Report.from_json(row.report)
        except ValueError as exc:
            err.write(f"doorway calibrate: the stored {step} result is unreadable: {exc}\n")
            reports[step] = None
    if as_json:
        out.write(json.dumps({s: r.to_json() if r else None for s, r in reports.items()}, indent=2) + "\n")
        return 0
    for step, report in reports.items():
        out.write((report.text() if report else f"{step} calibration: never run") + "\n")
    return 0


def _print(report: Report, as_json: bool, out: TextIO) -> None:
    out.write((json.dumps(report.to_json(), indent=2) if as_json else report.text()) + "\n")
    out.flush()
