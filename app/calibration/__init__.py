"""Calibration: acoustic delay and levels, camera controls and framing, room lighting.

Each step measures, reports (:class:`app.calibration.report.Report`), and is stored with its date in the
state database (:meth:`app.state.StateStore.save_calibration`); the latest result's ``apply`` values are
applied by the services at every start (:func:`applied`). Steps run from the command line
(``doorway calibrate audio|camera|lighting``, :func:`run_step`) and from the admin panel's Calibration
page, which runs that same command as a child process and relays its progress.

The steps, each in its own module with a ``calibrate(settings, progress) -> Report`` function:

- ``audio`` (:mod:`app.calibration.audio`): a log sweep through the speaker, the impulse response from the
  microphone, the acoustic delay fed to echo cancellation, echo path gain, noise floor, levels and gains,
  then ERLE with the canceller on.
- ``camera`` (:mod:`app.calibration.camera`): the camera's V4L2 controls, the framing, a snapshot.
- ``lighting`` (:mod:`app.calibration.lighting`): the room lights through hwcontrol and how the room's light
  sensor answers them.

This package's ``__init__`` and :mod:`~app.calibration.report` import only the standard library.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.calibration.report import STEPS, Progress, Report, no_progress

if TYPE_CHECKING:
    from app.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["STEPS", "Progress", "Report", "applied", "run_step"]


def run_step(settings: Settings, step: str, progress: Progress = no_progress, *, save: bool = True) -> Report:
    """Run calibration ``step`` with ``settings`` and, when ``save``, store its report in the state database.

    An explicit dispatch on the step's name (ValueError for an unknown one). The step itself never raises
    for what it finds (see :mod:`app.calibration.report`); :class:`app.state.StateError` when the result
    cannot be stored.
    """
    if step == "audio":
        from app.calibration import audio

        report = audio.calibrate(settings, progress)
    elif step == "camera":
        from app.calibration import camera

        report = camera.calibrate(settings, progress)
    elif step == "lighting":
        from app.calibration import lighting

        report = lighting.calibrate(settings, progress)
    else:
        raise ValueError(f"no calibration step {step!r} (known: {', '.join(STEPS)})")
    if save:
        from app.state import StateStore

        with StateStore(settings.engine.state_dir) as store:
            store.save_calibration(step, report.to_json(), report.measured_at, report.passed)
    return report


def applied(state_dir: Path, step: str) -> Mapping[str, Any]:
    """The values the latest stored ``step`` result says to apply ({} when never calibrated, or when the
    stored result cannot be read: that is logged, and the service starts with its settings' values)."""
    from app.state import StateError, StateStore

    try:
        with StateStore(state_dir) as store:
            stored = store.calibration(step)
    except StateError as exc:
        log.warning("calibration: cannot read the stored %s calibration: %s", step, exc)
        return {}
    if stored is None:
        return {}
    try:
        report = Report.from_json(stored.report)
    except ValueError as exc:
        log.warning("calibration: the stored %s calibration is unreadable (%s); not applied", step, exc)
        return {}
    return report.apply
