"""The camera calibration step: with the synthetic camera, a camera without controls, a missing camera, a
control out of range, a dark picture; and the engine side — stored framing applied at start, snapshot and
set_framing over the control socket."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from app.calibration import applied, run_step
from app.calibration.camera import calibrate, snapshot_path
from app.calibration.report import Report
from app.control import request
from app.engine.engine import Engine
from app.settings import Settings
from app.video.controls import SyntheticControls
from app.video.framing import Framing, Snapshot
from tests.engine.conftest import small_settings, wait_for

GEOMETRY = {
    "screen_height_m": 1.2,
    "screen_center_height_m": 1.3,
    "camera_vfov_deg": 60.0,
    "camera_height_m": 1.5,
    "viewing_distance_m": 1.5,
}


def settings_for(tmp_path: Path, **camera: Any) -> Settings:
    return Settings(
        engine={"state_dir": str(tmp_path / "state"), "control_socket": str(tmp_path / "none.sock")},
        video={"width": 320, "height": 180},
        camera=camera,
    )  # type: ignore[arg-type]


def test_synthetic_camera_passes_and_stores_what_the_engine_applies(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, mirror=True, gain=20, exposure_auto=False, exposure_absolute=300,
                            **GEOMETRY)  # fmt: skip
    seen: list[tuple[float, str]] = []
    report = run_step(settings, "camera", lambda f, m: seen.append((f, m)))
    assert report.passed, report.text()
    assert [f for f, _ in seen] == sorted(f for f, _ in seen) and seen[-1][0] == 1.0
    checks = {c.name: c for c in report.checks}
    assert checks["controls"].value == 12.0
    assert checks["controls set"].passed and checks["crop inside the picture"].passed
    assert checks["life-size zoom"].passed and checks["eye-level offset"].passed
    assert checks["exposure (mean luma)"].passed
    # The snapshot was written, atomically, where the report says, and is a JPEG 640 px wide.
    path = snapshot_path(settings.engine.state_dir)
    assert report.details["snapshot"] == str(path)
    assert report.details["snapshot_from"] == "the capture source (synthetic)"
    with Image.open(path) as image:
        assert image.format == "JPEG" and image.width == 640
    assert [p.name for p in path.parent.iterdir()] == ["camera.jpg"]
    # What the engine applies at every start: the geometry's framing and the controls read back.
    stored = applied(settings.engine.state_dir, "camera")
    framing = Framing.from_json(stored["framing"])
    assert framing.mirror and framing.zoom == pytest.approx(2 * 1.5 * np.tan(np.radians(30)) / 1.2)
    assert stored["controls"] == {"exposure_auto": 1, "exposure_absolute": 300, "gain": 20}
    assert Report.from_json(report.to_json()) == report


def test_a_camera_without_controls_is_framing_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import app.video.controls

    monkeypatch.setattr(app.video.controls, "open_controls", lambda cap: SyntheticControls("/dev/video9", ()))
    report = calibrate(settings_for(tmp_path, zoom=1.5), lambda f, m: None)
    assert report.passed, report.text()
    message = {c.name: c for c in report.checks}["controls"].value
    assert message == "the camera /dev/video9 has no adjustable controls; framing only"
    assert "framing only" in report.text()
    assert report.apply["framing"]["zoom"] == 1.5 and "controls" not in report.apply


def test_a_missing_camera_is_a_clear_problem_not_a_crash(tmp_path: Path) -> None:
    settings = Settings(
        engine={"state_dir": str(tmp_path / "state"), "control_socket": str(tmp_path / "none.sock")},
        capture={"backend": "v4l2", "device": str(tmp_path / "video0")},
        video={"width": 320, "height": 180},
    )  # type: ignore[arg-type]
    report = calibrate(settings, lambda f, m: None)
    assert not report.passed
    assert report.problems[0].startswith(f"camera controls: camera {tmp_path / 'video0'} not found")
    assert report.problems[1].startswith(f"no snapshot: camera {tmp_path / 'video0'} not found")
    assert "framing" in report.apply  # the framing is still worked out and kept


def test_a_control_out_of_range_names_the_range(tmp_path: Path) -> None:
    report = calibrate(settings_for(tmp_path, gain=1000, focus_auto=False), lambda f, m: None)
    assert not report.passed
    assert report.problems == (
        "camera control: gain = 1000 is out of range for synthetic (allowed: 0 to 255)",
    )
    assert report.apply["controls"] == {"focus_auto": 0}


def test_unreachable_geometry_and_too_much_zoom_fail_with_reasons(tmp_path: Path) -> None:
    far = calibrate(settings_for(tmp_path, **{**GEOMETRY, "viewing_distance_m": 4.0}), lambda f, m: None)
    checks = {c.name: c for c in far.checks}
    assert checks["digital zoom"].passed is False and checks["digital zoom"].value == pytest.approx(
        3.9, abs=0.05
    )
    assert any("enlarges each camera pixel 3.9 times" in p for p in far.problems)
    high = calibrate(settings_for(tmp_path, **{**GEOMETRY, "camera_height_m": 1.8}), lambda f, m: None)
    checks = {c.name: c for c in high.checks}
    assert checks["eye-level offset"].passed is False and checks["digital zoom"].passed is True
    assert any("mount the camera lower" in p for p in high.problems)
    assert high.apply["framing"]["offset_y"] == 1.0  # the nearest framing is still applied


def test_a_dark_picture_fails_the_exposure_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import app.calibration.camera as camera

    def dark(settings: Settings, framing: Framing) -> Snapshot:
        return Snapshot(np.full((270, 320), 20, np.uint8), 320, 180, framing, 0)

    monkeypatch.setattr(camera, "_from_capture", dark)
    report = calibrate(settings_for(tmp_path), lambda f, m: None)
    assert {c.name: c for c in report.checks}["exposure (mean luma)"].passed is False
    assert any("too dark (mean luma 20" in p for p in report.problems)


def test_the_engine_applies_the_stored_framing_at_start(tmp_path: Path) -> None:
    settings = small_settings(tmp_path)
    Engine(settings).stop()  # nothing stored yet: the settings' framing (none)
    report = Report("camera", apply={"framing": Framing(mirror=True, rotation=180).to_json()})
    from app.state import StateStore

    with StateStore(settings.engine.state_dir) as store:
        store.save_calibration("camera", report.to_json(), report.measured_at, report.passed)
    engine = Engine(settings)
    try:
        assert engine.framed is not None
        assert engine.framed.framer.framing == Framing(mirror=True, rotation=180)
        assert engine.framed.framer.path == "numpy"
    finally:
        engine.stop()


def test_calibrating_a_running_engine_uses_its_control_socket(tmp_path: Path) -> None:
    settings = small_settings(tmp_path, camera={"zoom": 1.25, "mirror": True})
    engine = Engine(settings)
    stop = threading.Event()
    engine.start()
    t = threading.Thread(target=lambda: engine.wait(stop), daemon=True)
    t.start()
    sock = settings.engine.control_socket
    try:
        wait_for(lambda: request(sock, "stats").get("capture", {}).get("frames", 0) > 3, what="frames")
        assert request(sock, "set_framing", rotation=45) == {
            "ok": False, "error": "rotation = 45 is not allowed (allowed: 0, 90, 180, 270)"
        }  # fmt: skip
        report = calibrate(settings, lambda f, m: None)
        assert report.passed, report.text()
        assert report.details["snapshot_from"] == f"the running engine ({sock})"
        assert engine.framed is not None
        wait_for(lambda: engine.framed is not None and engine.framed.framer.framing.zoom == 1.25,
                 what="the new framing in use")  # fmt: skip
        assert engine.framed.framer.framing.mirror and engine.framed.framer.path == "crop"
        # The crop goes out at its own size: the encoder reopened there and the call goes on.
        encoded = request(sock, "stats")["encode"]["frames"]
        wait_for(lambda: request(sock, "stats")["encode"]["frames"] > encoded + 5, what="frames at 256x192")
        assert engine.encode is not None and (engine.encode.encoder.width, engine.encode.encoder.height) == (
            256,
            192,
        )
        snap = request(sock, "snapshot", width=160)
        assert snap["ok"] and snap["crop"] == {"x": 32, "y": 24, "width": 256, "height": 192}
        assert snap["picture"].startswith("camera, before framing")
        assert (snap["width"], snap["height"]) == (320, 240) and 60 <= snap["mean_luma"] <= 180
        with Image.open(snapshot_path(settings.engine.state_dir)) as image:
            assert image.width == 640
    finally:
        stop.set()
        t.join(30)
