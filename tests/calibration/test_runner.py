"""The calibration runner: a child process per step, progress from its JSON lines, the report from its
stdout, and every way a child can end (passed, failed, crashed, silent, killed, cancelled)."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import pytest

from app.calibration.report import Check, Report
from app.calibration.runner import CalibrationBusyError, CalibrationRunner, default_command

AT = 1_796_000_000.0


def child(script: str) -> Callable[[str], list[str]]:
    """A command running ``script`` (Python) with the step as its argument."""
    return lambda step: [sys.executable, "-c", textwrap.dedent(script), step]


def report_json(passed: bool) -> str:
    checks = (Check("ERLE", 36.0 if passed else 12.0, "dB", "≥ 30 dB", passed),)
    return json.dumps(Report("audio", AT, checks).to_json())


def wait_done(runner: CalibrationRunner, timeout_s: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = runner.status()
        if status["state"] != "running":
            return status
        time.sleep(0.02)
    raise AssertionError(f"still running: {runner.status()}")


def steps_script(report: str, code: int) -> str:
    return f"""
        import json, sys
        for i in range(1, 4):
            line = {{"progress": i / 4, "message": f"{{sys.argv[1]}} step {{i}}"}}
            print(json.dumps(line), file=sys.stderr)
        print("not a progress line", file=sys.stderr)
        print({report!r})
        sys.exit({code})
    """


def test_a_passing_step() -> None:
    runner = CalibrationRunner(command=child(steps_script(report_json(True), 0)), clock=lambda: AT)
    assert runner.status() == {"state": "idle", "step": None, "progress": 0.0, "message": ""}
    started = runner.start("audio")
    assert started["state"] == "running" and started["step"] == "audio" and started["started_at"] == AT
    status = wait_done(runner)
    assert status["state"] == "passed" and status["message"] == "passed"
    assert status["exit_code"] == 0 and status["progress"] == 1.0 and status["finished_at"] == AT
    assert Report.from_json(status["report"]).checks[0].value == 36.0
    runner.close()


def test_its_owner_hears_of_a_finished_step() -> None:
    heard: list[tuple[str, dict[str, Any]]] = []
    runner = CalibrationRunner(
        command=child(steps_script(report_json(True), 0)), on_finished=lambda s, r: heard.append((s, r))
    )
    runner.start("lighting")
    wait_done(runner)
    runner.close()
    assert len(heard) == 1 and heard[0][0] == "lighting" and heard[0][1]["passed"] is True
    # A step that printed no report, or was cancelled, is not heard of.
    runner = CalibrationRunner(command=child("print('hello')"), on_finished=lambda s, r: heard.append((s, r)))
    runner.start("audio")
    wait_done(runner)
    runner.close()
    assert len(heard) == 1


def test_a_failing_step_says_what_failed() -> None:
    runner = CalibrationRunner(command=child(steps_script(report_json(False), 1)))
    runner.start("camera")
    status = wait_done(runner)
    assert status["state"] == "failed" and status["message"] == "failed: ERLE missed the target"
    assert status["exit_code"] == 1 and status["report"]["passed"] is False
    runner.close()


def test_progress_is_followed_while_it_runs() -> None:
    script = """
        import json, sys
        print(json.dumps({"progress": 0.5, "message": "playing the sweep"}), file=sys.stderr, flush=True)
        sys.stdin.read()  # DEVNULL: returns at once
        import time; time.sleep(30)
    """
    runner = CalibrationRunner(command=child(script))
    runner.start("audio")
    deadline = time.monotonic() + 20
    while runner.status()["message"] != "playing the sweep":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert runner.status()["progress"] == 0.5
    with pytest.raises(CalibrationBusyError, match="the audio calibration is running; wait for it"):
        runner.start("lighting")
    assert runner.cancel()
    status = wait_done(runner)
    assert status["state"] == "cancelled" and status["exit_code"] == -9
    assert not runner.cancel()
    runner.close()


def test_a_crash_reports_its_last_words() -> None:
    runner = CalibrationRunner(command=child("raise SystemExit('doorway: invalid settings: audio.gain')"))
    runner.start("audio")
    status = wait_done(runner)
    assert status["state"] == "error"
    assert status["message"] == "the calibration failed: doorway: invalid settings: audio.gain"
    assert status["report"] is None


def test_a_child_that_prints_no_report() -> None:
    runner = CalibrationRunner(command=child("print('hello')"))
    runner.start("audio")
    status = wait_done(runner)
    assert status["state"] == "error"
    assert status["message"] == "the calibration failed: it exited with status 0 and printed no report"


def test_a_step_over_time_is_killed() -> None:
    runner = CalibrationRunner(command=child("import time; time.sleep(60)"), timeout_s=0.5)
    runner.start("lighting")
    status = wait_done(runner)
    assert status["state"] == "error" and status["message"] == "killed after 0.5 s (signal 9)"


def test_a_command_that_cannot_start() -> None:
    runner = CalibrationRunner(command=lambda step: ["/nonexistent/doorway"])
    status = runner.start("audio")
    assert status["state"] == "error"
    assert status["message"].startswith(
        "the calibration could not start: [Errno 2] No such file or directory"
    )
    runner.close()


def test_unknown_step() -> None:
    with pytest.raises(ValueError, match="no calibration step 'sound'"):
        CalibrationRunner().start("sound")


def test_default_command_is_doorway_calibrate(tmp_path: Any) -> None:
    assert default_command("audio", tmp_path / "d.toml") == [
        sys.executable,
        "-m",
        "app",
        "calibrate",
        "audio",
        "--json",
        "--progress-json",
        "--config",
        str(tmp_path / "d.toml"),
    ]
