"""What a calibration step reports: its measured values, pass or fail against targets, and what to apply.

Every step (:mod:`app.calibration.audio`, :mod:`app.calibration.camera`, :mod:`app.calibration.lighting`)
returns one :class:`Report`. The command line prints it (:meth:`Report.text`, or :meth:`Report.to_json`
with ``--json``), the state database stores it with its date (:meth:`app.state.StateStore.save_calibration`),
the services apply its :attr:`Report.apply` at every start, and the admin panel's Calibration page shows
it. The JSON form is the one stored and served, so it is versioned by :data:`REPORT_VERSION` and read back
with :meth:`Report.from_json`, which refuses anything malformed with :class:`ValueError`.

A step that cannot measure what it should (a silent microphone, a missing MCU) does not raise: it returns a
report whose :attr:`Report.problems` say so specifically, with nothing to apply. Exceptions are for bugs.

This module imports only the standard library (the admin process reads reports).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

STEPS: Final = ("audio", "camera", "lighting")
"""The calibration steps, in the order an installer runs them."""
REPORT_VERSION: Final = 1
"""Version of the JSON form; :meth:`Report.from_json` refuses others."""

Progress = Callable[[float, str], None]
"""``progress(fraction, message)``: how far a step is (0..1) and what it does now, called from the thread
running the step. Must return quickly."""


def no_progress(fraction: float, message: str) -> None:
    """A :data:`Progress` that ignores everything."""


@dataclass(frozen=True, slots=True)
class Check:
    """One measured quantity: its ``value`` in ``unit``, the ``target`` in words (e.g. "≥ 30 dB"), and
    whether it met it (``passed``: None when there is no target, it is only information)."""

    name: str
    value: float | int | str | None
    unit: str = ""
    target: str = ""
    passed: bool | None = None

    def to_json(self) -> dict[str, Any]:
        value = self.value
        if isinstance(value, float) and not math.isfinite(value):
            value = None  # JSON has no NaN or infinity; the check's text still says what happened.
        return {
            "name": self.name,
            "value": value,
            "unit": self.unit,
            "target": self.target,
            "passed": self.passed,
        }

    @classmethod
    def from_json(cls, data: Any) -> Check:
        if not isinstance(data, dict):
            raise ValueError("a check must be an object")
        name, value, unit, target, passed = (
            data.get(k) for k in ("name", "value", "unit", "target", "passed")
        )
        if not isinstance(name, str) or not isinstance(unit, str) or not isinstance(target, str):
            raise ValueError("a check needs a name, a unit and a target (text)")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, str))):
            raise ValueError(f"check {name!r}: the value must be a number, text or null")
        if passed is not None and not isinstance(passed, bool):
            raise ValueError(f"check {name!r}: passed must be true, false or null")
        if isinstance(value, int) and abs(value) > 2**53:
            raise ValueError(f"check {name!r}: the value {value} is out of range")
        return cls(name, value, unit, target, passed)

    def value_text(self) -> str:
        if self.value is None:
            return "—"
        if isinstance(self.value, float):
            return f"{self.value:.1f}" + (f" {self.unit}" if self.unit else "")
        return str(self.value) + (f" {self.unit}" if self.unit else "")


@dataclass(frozen=True, slots=True)
class Report:
    """The result of one calibration step.

    - ``step``: one of :data:`STEPS`.
    - ``measured_at``: when, Unix seconds (UTC).
    - ``checks``: what was measured, each with pass or fail against its target.
    - ``apply``: the values the services apply at every start, by name (e.g. ``acoustic_delay_ms``); empty
      when nothing could be measured. Each step documents its names.
    - ``problems``: specific messages saying why a measurement could not be made or a target was missed
      and what to do (empty when all went well).
    - ``details``: anything else worth keeping and showing (device names, curves), JSON-compatible.
    """

    step: str
    measured_at: float = field(default_factory=time.time)
    checks: tuple[Check, ...] = ()
    apply: Mapping[str, Any] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.step not in STEPS:
            raise ValueError(f"no calibration step {self.step!r} (known: {', '.join(STEPS)})")

    @property
    def passed(self) -> bool:
        """No problems and no check failed its target."""
        return not self.problems and all(check.passed is not False for check in self.checks)

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored in the state database, printed by ``--json`` and served to the panel."""
        return {
            "version": REPORT_VERSION,
            "step": self.step,
            "measured_at": self.measured_at,
            "measured_at_iso": datetime.fromtimestamp(self.measured_at, UTC).isoformat(timespec="seconds"),
            "passed": self.passed,
            "checks": [check.to_json() for check in self.checks],
            "apply": dict(self.apply),
            "problems": list(self.problems),
            "details": dict(self.details),
        }

    @classmethod
    def from_json(cls, data: Any) -> Report:
        """Read back :meth:`to_json`'s object. ValueError, with a message, for anything else."""
        if not isinstance(data, dict):
            raise ValueError("a calibration report must be a JSON object")
        if data.get("version") != REPORT_VERSION:
            raise ValueError(
                f"calibration report version {data.get('version')!r}; this Doorway reads {REPORT_VERSION}"
            )
        step, at = data.get("step"), data.get("measured_at")
        if not isinstance(step, str) or step not in STEPS:
            raise ValueError(f"no calibration step {step!r}")
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at):
            raise ValueError("measured_at must be a number (Unix seconds)")
        checks, apply, problems, details = (data.get(k) for k in ("checks", "apply", "problems", "details"))
        if not isinstance(checks, list) or not isinstance(apply, dict) or not isinstance(details, dict):
            raise ValueError("checks must be a list, apply and details objects")
        if not isinstance(problems, list) or not all(isinstance(p, str) for p in problems):
            raise ValueError("problems must be a list of text")
        return cls(
            step, float(at), tuple(Check.from_json(c) for c in checks), apply, tuple(problems), details
        )

    def apply_text(self) -> list[str]:
        """:attr:`apply` for people: ``key = value``, sorted, one level of objects flattened
        (``framing.zoom = 1.25``), numbers as JSON writes them."""
        out: list[str] = []
        for key, value in sorted(self.apply.items()):
            if isinstance(value, Mapping):
                out += [f"{key}.{k} = {json.dumps(v)}" for k, v in sorted(value.items())]
            else:
                out.append(f"{key} = {json.dumps(value)}")
        return out

    def text(self) -> str:
        """The report for a person: one line per check, then the problems (what the command line prints)."""
        when = datetime.fromtimestamp(self.measured_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        lines = [f"{self.step} calibration, {when}: {'PASS' if self.passed else 'FAIL'}"]
        width = max((len(check.name) for check in self.checks), default=0)
        values = [check.value_text() for check in self.checks]
        value_width = max((len(v) for v in values), default=0)
        targets = [f"(target {check.target})" if check.target else "" for check in self.checks]
        target_width = max((len(t) for t in targets), default=0)
        for check, value, target in zip(self.checks, values, targets, strict=True):
            verdict = {True: "pass", False: "FAIL", None: ""}[check.passed]
            line = f"  {check.name:<{width}}  {value:>{value_width}}  {target:<{target_width}}  {verdict}"
            lines.append(line.rstrip())
        for problem in self.problems:
            lines.append(f"  problem: {problem}")
        if self.apply:
            lines.append(f"  applied at every start: {', '.join(self.apply_text())}")
        return "\n".join(lines)
