"""Calibration reports and their storage: the JSON form round-trips and refuses malformed objects, the state
database keeps the last few results per step (migrating a version-1 database), ``applied`` reads the latest,
and ``doorway calibrate show`` prints them."""

from __future__ import annotations

import contextlib
import io
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.calibration import applied
from app.calibration.commands import show
from app.calibration.report import REPORT_VERSION, Check, Report
from app.settings import Settings
from app.state import CALIBRATIONS_KEPT, DB_NAME, SCHEMA_VERSION, StateStore

AT = 1_796_000_000.0  # 2026-11-30 00:53:20 UTC


def report(**changes: Any) -> Report:
    fields: dict[str, Any] = {
        "step": "audio",
        "measured_at": AT,
        "checks": (
            Check("acoustic delay", 40.2, "ms", "10–300 ms", True),
            Check("ERLE", 36.5, "dB", "≥ 30 dB", True),
            Check("device", "synthetic"),
        ),
        "apply": {"acoustic_delay_ms": 40.2},
        "details": {"rt60_ms": 310.0},
    }
    fields.update(changes)
    return Report(**fields)


def test_json_round_trip_and_verdict() -> None:
    r = report()
    data = r.to_json()
    assert data["version"] == REPORT_VERSION
    assert data["measured_at_iso"] == "2026-11-30T00:53:20+00:00"
    assert data["passed"] is True
    assert Report.from_json(json.loads(json.dumps(data))) == r


def test_a_failed_check_or_a_problem_fails_the_report() -> None:
    assert not report(checks=(Check("ERLE", 12.0, "dB", "≥ 30 dB", False),)).passed
    assert not report(problems=("the microphone recorded silence",)).passed
    assert report(checks=(Check("note", None),)).passed  # Information only: no verdict.


def test_text_lists_checks_problems_and_what_is_applied() -> None:
    text = report(problems=("no echo found",)).text()
    lines = text.splitlines()
    assert lines[0] == "audio calibration, 2026-11-30 00:53:20 UTC: FAIL"
    assert "acoustic delay" in lines[1] and "40.2 ms" in lines[1] and "(target 10–300 ms)" in lines[1]
    assert lines[1].endswith("pass")
    assert "synthetic" in lines[3]
    assert "  problem: no echo found" in lines
    assert lines[-1] == "  applied at every start: acoustic_delay_ms = 40.2"


def test_what_is_applied_reads_flat() -> None:
    r = report(apply={"framing": {"zoom": 1.25, "mirror": False}, "controls": {}, "cct_k": 3500})
    assert r.apply_text() == ["cct_k = 3500", "framing.mirror = false", "framing.zoom = 1.25"]
    assert Check("controls", 12).value_text() == "12" and Check("ERLE", 30.04, "dB").value_text() == "30.0 dB"


def test_a_non_finite_value_is_stored_as_null() -> None:
    data = report(checks=(Check("ERLE", math.nan, "dB", "≥ 30 dB", False),)).to_json()
    assert data["checks"][0]["value"] is None
    json.dumps(data, allow_nan=False)


def test_unknown_step_is_refused() -> None:
    with pytest.raises(ValueError, match="no calibration step 'sound'"):
        Report("sound")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "calibration report version 2; this Doorway reads 1"),
        ({"step": "sound"}, "no calibration step 'sound'"),
        ({"measured_at": "yesterday"}, "measured_at must be a number"),
        ({"measured_at": True}, "measured_at must be a number"),
        ({"checks": {}}, "checks must be a list"),
        ({"problems": [1]}, "problems must be a list of text"),
        (
            {"checks": [{"name": "x", "value": [1], "unit": "", "target": "", "passed": None}]},
            "value must be",
        ),
        (
            {"checks": [{"name": "x", "value": 1, "unit": "", "target": "", "passed": "yes"}]},
            "passed must be",
        ),
        ({"checks": [3]}, "a check must be an object"),
        (
            {"checks": [{"name": "x", "value": 10**400, "unit": "", "target": "", "passed": None}]},
            "out of range",
        ),
    ],
)
def test_malformed_json_is_a_value_error(change: dict[str, Any], message: str) -> None:
    data = report().to_json()
    data.update(change)
    with pytest.raises(ValueError, match=message):
        Report.from_json(data)


JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=8,
)
KEYS = ["version", "step", "measured_at", "checks", "apply", "problems", "details"]


@given(st.sampled_from(KEYS), JSON, st.sampled_from(["name", "value", "unit", "target", "passed"]), JSON)
def test_any_damage_reads_as_a_report_or_a_value_error(
    key: str, value: Any, check_key: str, check: Any
) -> None:
    # A valid report with one field, and one field of its first check, replaced by any JSON value.
    data = report().to_json()
    data[key] = value
    if isinstance(data["checks"], list) and data["checks"] and isinstance(data["checks"][0], dict):
        data["checks"][0][check_key] = check
    with contextlib.suppress(ValueError):
        assert isinstance(Report.from_json(data), Report)


def test_storage_keeps_the_latest_few_per_step(tmp_path: Path) -> None:
    with StateStore(tmp_path) as store:
        version = store.version()
        assert store.calibration("audio") is None and store.calibration_version() == 0
        ids = [
            store.save_calibration("audio", report(measured_at=AT + i).to_json(), AT + i, True)
            for i in range(CALIBRATIONS_KEPT + 5)
        ]
        camera = store.save_calibration("camera", {"any": "object"}, AT, False)
        assert store.calibration_version() == camera > ids[-1]
        latest = store.calibration("audio")
        assert (
            latest is not None and latest.id == ids[-1] and latest.measured_at == AT + CALIBRATIONS_KEPT + 4
        )
        assert latest.passed and Report.from_json(latest.report) == report(measured_at=latest.measured_at)
        history = store.calibration_history("audio")
        assert [h.id for h in history] == ids[::-1][:CALIBRATIONS_KEPT]
        other = store.calibration("camera")
        assert other is not None and not other.passed and other.report == {"any": "object"}
        # Calibrating is not re-pairing: the engine's pairing counter stays.
        assert store.version() == version
        with pytest.raises(ValueError, match="no calibration step 'sound'"):
            store.save_calibration("sound", {}, AT, True)
        with pytest.raises(ValueError):
            store.save_calibration("audio", {"x": math.inf}, AT, True)


def test_a_version_1_database_is_migrated_keeping_its_pairing(tmp_path: Path) -> None:
    with StateStore(tmp_path) as store:
        key = store.create_identity(bytes(range(32)))
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute("DROP TABLE calibration")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with StateStore(tmp_path) as store:
        assert store.identity_key() == key
        store.save_calibration("lighting", report(step="lighting").to_json(), AT, True)
    conn = sqlite3.connect(tmp_path / DB_NAME)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    conn.close()


def test_applied_reads_the_latest_and_survives_a_bad_row(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert applied(tmp_path, "audio") == {}
    with StateStore(tmp_path) as store:
        store.save_calibration("audio", report(apply={"acoustic_delay_ms": 10.0}).to_json(), AT, True)
        store.save_calibration("audio", report().to_json(), AT + 1, True)
    assert applied(tmp_path, "audio") == {"acoustic_delay_ms": 40.2}
    with StateStore(tmp_path) as store:
        store.save_calibration("audio", {"version": 99}, AT + 2, False)
    assert applied(tmp_path, "audio") == {}
    assert "the stored audio calibration is unreadable (calibration report version 99" in caplog.text


def test_show_prints_the_stored_results(tmp_path: Path) -> None:
    settings = Settings.model_validate({"engine": {"state_dir": str(tmp_path)}})
    with StateStore(tmp_path) as store:
        store.save_calibration("audio", report().to_json(), AT, True)
    out, err = io.StringIO(), io.StringIO()
    assert show(settings, as_json=False, out=out, err=err) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == "audio calibration, 2026-11-30 00:53:20 UTC: PASS"
    assert lines[-2:] == ["camera calibration: never run", "lighting calibration: never run"]
    out = io.StringIO()
    assert show(settings, as_json=True, out=out, err=err) == 0
    data = json.loads(out.getvalue())
    assert data["audio"]["apply"] == {"acoustic_delay_ms": 40.2} and data["camera"] is None
    assert err.getvalue() == ""
