"""``doorway bench video`` end to end, small and short: real engine processes, its JSON and its plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

KEYS = {
    "system", "width", "height", "fps_target", "seconds", "encoder", "bitrate_kbps", "frames_sent",
    "frames_shown", "frames_corrupt", "fps_shown", "latency_ms", "freezes", "max_freeze_ms", "psnr_db",
    "cpu_percent", "rss_mb",
}  # fmt: skip


def bench(tmp_path: Path, *extra: str) -> list[dict]:
    out = tmp_path / "rows.json"
    size = ["--width", "320", "--height", "240", "--fps", "30", "--bitrate-kbps", "800"]
    cmd = [sys.executable, "-m", "app", "bench", "video", *size, "--seconds", "3", "--warmup", "2"]
    cmd += ["--json", str(out), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| doorway |" in done.stdout or "| doorway " in done.stdout
    rows: list[dict] = json.loads(out.read_text())
    return rows


@pytest.mark.slow
def test_one_way_row(tmp_path: Path) -> None:
    plot = tmp_path / "lat.png"
    (row,) = bench(tmp_path, "--plot", str(plot))
    assert set(row) >= KEYS
    assert row["system"] == "doorway"
    assert row["encoder"] == "libx264"
    assert row["frames_corrupt"] == 0
    # Generous: this checks the pipeline delivers, not how fast a busy CI machine is.
    assert row["frames_shown"] >= 0.5 * row["frames_sent"] > 0
    lat = row["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert row["psnr_db"] > 30
    assert set(row["cpu_percent"]) == {"sender", "receiver"}
    assert row["rss_mb"]["sender"] > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_duplex_rows(tmp_path: Path) -> None:
    rows = bench(tmp_path, "--duplex")
    assert [r["direction"] for r in rows] == ["a->b", "b->a"]
    for row in rows:
        assert row["frames_corrupt"] == 0
        assert row["frames_shown"] > 0


@pytest.mark.slow
def test_impaired_row_has_recovery_keys(tmp_path: Path) -> None:
    (row,) = bench(tmp_path, "--delay-ms", "5", "--loss", "3", "--seed", "2")
    assert row["network"]["loss_percent"] == 3.0
    assert row["network"]["seed"] == 2
    for key in ("loss_before_recovery", "loss_after_recovery", "retransmits", "fec_repaired", "keyframes"):
        assert row[key] is not None, key
    assert row["loss_before_recovery"] > 0
    assert row["frames_corrupt"] == 0
    assert len(row["bitrate_kbps_timeline"]) == 3
    assert len(row["estimated_kbps_timeline"]) == 3
    assert row["relay"]["a_to_b"]["lost_random"] > 0
