"""The Calibration page: stored results with pass or fail, a run started on the engine and followed to its
end, the snapshot, and an engine that is down or busy said plainly.

The engine here is a control socket serving the engine's own calibration commands over a real
:class:`CalibrationRunner`, whose child is a small script printing progress and a report and storing it as
``doorway calibrate`` does: the whole path from the button to the stored result, without a sound card."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from app.calibration.report import Check, Report
from app.calibration.runner import CalibrationBusyError, CalibrationRunner
from app.control import CommandError
from app.settings import Settings
from app.state import StateStore
from tests.admin.conftest import Browser

AT = 1_796_000_000.0


def report(step: str, passed: bool, at: float = AT) -> Report:
    return Report(
        step,
        at,
        (
            Check("acoustic delay", 40.1, "ms", "10–300 ms", True),
            Check("ERLE", 35.0 if passed else 12.0, "dB", "≥ 30 dB", passed),
        ),
        {"acoustic_delay_ms": 40.1},
        () if passed else ("the echo canceller did not converge",),
    )


def child_script(state_dir: Path, passed: bool, hold_s: float = 0.0) -> str:
    """A stand-in for ``doorway calibrate STEP --json --progress-json``: progress lines, the stored result,
    the report on stdout, exit status 0 or 1."""
    data = json.dumps(report("audio", passed, AT + 100).to_json())
    return textwrap.dedent(
        f"""
        import json, sys, time
        from pathlib import Path
        from app.state import StateStore
        print(json.dumps({{"progress": 0.3, "message": "playing the sweep"}}), file=sys.stderr, flush=True)
        time.sleep({hold_s})
        report = json.loads({data!r})
        with StateStore(Path({str(state_dir)!r})) as store:
            store.save_calibration(sys.argv[1], report, report["measured_at"], report["passed"])
        print(json.dumps(report))
        sys.exit(0 if report["passed"] else 1)
        """
    )


class FakeEngine:
    """The engine's calibration commands (app/CONTROL.md) over a real runner."""

    def __init__(
        self, settings: Settings, serve_socket: Any, passed: bool = True, hold_s: float = 0.0
    ) -> None:
        script = child_script(settings.engine.state_dir, passed, hold_s)
        self.runner = CalibrationRunner(command=lambda step: [sys.executable, "-c", script, step])

        def calibrate(args: dict[str, Any]) -> dict[str, Any]:
            try:
                return self.runner.start(args["step"])
            except CalibrationBusyError as exc:
                raise CommandError(str(exc)) from None

        serve_socket(
            settings.engine.control_socket,
            {
                "status": lambda args: {"state": "idle"},
                "calibrate": calibrate,
                "calibration": lambda args: self.runner.status(),
                "calibration_cancel": lambda args: {"cancelled": self.runner.cancel()},
            },
        )

    def wait(self) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while self.runner.status()["state"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        return self.runner.status()


def store_result(settings: Settings, r: Report) -> None:
    with StateStore(settings.engine.state_dir) as store:
        store.save_calibration(r.step, r.to_json(), r.measured_at, r.passed)


def test_the_page_shows_each_step_and_says_the_engine_is_down(owner: Browser, settings: Settings) -> None:
    store_result(settings, report("audio", True, AT - 86400))
    store_result(settings, report("audio", False))
    r = owner.client.get("/calibration")
    assert r.status_code == 200
    page = r.text
    assert "Calibration runs through the media engine, and the engine is not running" in page
    assert "doorway calibrate audio|camera|lighting" in page
    # The latest audio result, failed, with its problem, what it applies and the one before it.
    assert 'id="step-audio"' in page and ">FAIL<" in page and "the echo canceller did not converge" in page
    assert "40.1 ms" in page and "≥ 30 dB" in page and "acoustic_delay_ms = 40.1" in page
    assert "2026-11-29 00:53:20 UTC</time> pass" in page
    assert page.count("Never run.") == 2  # Camera and lighting.
    assert "Run the audio calibration</button>" in page and "disabled>Run the audio" in page
    assert '<a href="/calibration" aria-current="page">Calibration</a>' in page


def test_api_lists_stored_results(owner: Browser, settings: Settings) -> None:
    store_result(settings, report("lighting", True))
    data = owner.client.get("/api/calibration").json()
    assert data["steps"]["lighting"]["report"]["passed"] is True
    assert data["steps"]["audio"] == {"report": None, "history": []}
    assert data["run"]["engine_up"] is False and "not running" in data["run"]["error"]
    assert data["snapshot"] is False and data["error"] is None


def test_a_run_from_the_api_is_followed_to_its_stored_result(
    owner: Browser, settings: Settings, serve_socket: Any
) -> None:
    engine = FakeEngine(settings, serve_socket)
    r = owner.post("/api/calibration/run", json={"step": "audio"})
    assert r.status_code == 202, r.text
    assert r.json()["state"] == "running" and r.json()["step"] == "audio"
    assert engine.wait()["state"] == "passed"
    run = owner.client.get("/api/calibration/run").json()
    assert run["state"] == "passed" and run["progress"] == 1.0 and run["engine_up"]
    page = owner.client.get("/calibration").text
    assert "Last run: the\n  audio calibration passed" in page
    assert ">PASS<" in page and "2026-11-30 00:55:00 UTC" in page
    engine.runner.close()


def test_a_run_from_the_form_shows_progress_then_refuses_a_second(
    owner: Browser, settings: Settings, serve_socket: Any
) -> None:
    engine = FakeEngine(settings, serve_socket, passed=False, hold_s=30.0)
    r = owner.post(
        "/calibration/run", data={"step": "audio", "csrf_token": owner.csrf}, follow_redirects=False
    )
    assert r.status_code == 303 and r.headers["location"] == "/calibration"
    deadline = time.monotonic() + 20
    while engine.runner.status()["message"] != "playing the sweep":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    page = owner.client.get("/calibration").text
    assert "Audio calibration running" in page and 'value="0.3"' in page and "playing the sweep" in page
    r = owner.post("/api/calibration/run", json={"step": "camera"})
    assert r.status_code == 409
    assert r.json() == {"error": "the engine refused: the audio calibration is running; wait for it"}
    r = owner.post("/calibration/cancel", data={"csrf_token": owner.csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert engine.wait()["state"] == "cancelled"
    assert owner.post("/api/calibration/cancel").json() == {"cancelled": False}
    with StateStore(settings.engine.state_dir) as store:
        assert store.calibration("audio") is None  # A cancelled run stores nothing.


def test_a_failed_run_says_why(owner: Browser, settings: Settings, serve_socket: Any) -> None:
    engine = FakeEngine(settings, serve_socket, passed=False)
    assert owner.post("/api/calibration/run", json={"step": "audio"}).status_code == 202
    status = engine.wait()
    assert status["state"] == "failed" and status["message"] == "failed: the echo canceller did not converge"
    page = owner.client.get("/calibration").text
    assert "the echo canceller did not converge" in page and ">FAIL<" in page


def test_running_without_the_engine_is_503(owner: Browser) -> None:
    r = owner.post("/api/calibration/run", json={"step": "lighting"})
    assert r.status_code == 503 and "the engine is not running" in r.json()["error"]
    r = owner.post("/calibration/run", data={"step": "lighting", "csrf_token": owner.csrf})
    assert r.status_code == 503 and "the engine is not running" in r.text


@pytest.mark.parametrize("body", [{"step": "sound"}, {}, {"step": "audio", "extra": 1}])
def test_a_bad_step_is_422(owner: Browser, body: dict[str, Any]) -> None:
    assert owner.post("/api/calibration/run", json=body).status_code == 422


def test_the_snapshot(owner: Browser, settings: Settings) -> None:
    assert owner.client.get("/calibration/snapshot.jpg").status_code == 404
    path = settings.engine.state_dir / "calibration" / "camera.jpg"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xff\xd8\xff\xe0 a JPEG")
    r = owner.client.get("/calibration/snapshot.jpg")
    assert (
        r.status_code == 200
        and r.headers["content-type"] == "image/jpeg"
        and r.content.startswith(b"\xff\xd8")
    )
    assert "/calibration/snapshot.jpg?v=" in owner.client.get("/calibration").text
    assert owner.client.get("/api/calibration").json()["snapshot"] is True


def test_everything_needs_a_session(client: Any) -> None:
    assert client.get("/api/calibration").status_code == 401
    assert client.get("/calibration/snapshot.jpg", follow_redirects=False).status_code == 303
    assert client.post("/api/calibration/run", json={"step": "audio"}).status_code in (401, 403)
