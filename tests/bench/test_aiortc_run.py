"""A short real aiortc baseline run per codec: two peer processes on loopback, measured end to end.

960×540 rather than smaller: below 960 px the stamp uses 8-px blocks that aiortc's VP8 settings (temporal
denoiser with static-thresh 1) sometimes leave stale, which would read as corrupt frames.
"""

from __future__ import annotations

import math
from typing import Literal

import pytest

from app.bench.aiortc_run import AiortcBenchError, run_aiortc

ROW_KEYS = {
    "system",
    "width",
    "height",
    "fps_target",
    "seconds",
    "encoder",
    "bitrate_kbps",
    "frames_sent",
    "frames_shown",
    "frames_corrupt",
    "fps_shown",
    "latency_ms",
    "freezes",
    "max_freeze_ms",
    "psnr_db",
    "cpu_percent",
    "rss_mb",
}


@pytest.mark.slow
@pytest.mark.parametrize("codec", ["h264", "vp8"])
def test_run_aiortc_short(codec: Literal["h264", "vp8"]) -> None:
    row = run_aiortc(codec, width=960, height=540, fps=30, seconds=3, bitrate_kbps=500, warmup_s=1.0)

    assert row.keys() >= ROW_KEYS
    assert row["system"] == f"aiortc-{codec}"
    assert row["encoder"] == f"aiortc {codec.upper()}"
    assert (row["width"], row["height"], row["fps_target"], row["seconds"]) == (960, 540, 30, 3)
    assert row["frames_sent"] > 0
    assert row["frames_shown"] > 0
    assert row["fps_shown"] > 0
    assert row["frames_corrupt"] <= max(3, row["frames_shown"] // 10)
    p50 = row["latency_ms"]["p50"]
    assert math.isfinite(p50) and p50 > 0
    assert set(row["latency_ms"]) == {"p50", "p95", "p99", "max"}
    assert set(row["cpu_percent"]) == {"sender", "receiver"}
    assert set(row["rss_mb"]) == {"sender", "receiver"}
    assert row["rss_mb"]["sender"] > 0 and row["rss_mb"]["receiver"] > 0


def test_run_aiortc_rejects_unknown_codec() -> None:
    with pytest.raises(ValueError, match="codec"):
        run_aiortc("av1", width=640, height=360, fps=30, seconds=1, bitrate_kbps=500)  # type: ignore[arg-type]


def test_run_aiortc_reports_child_failure() -> None:
    # A size the scene refuses makes both peers fail at start-up; the error must carry their output.
    with pytest.raises(AiortcBenchError, match=r"aiortc \w+ exited with status"):
        run_aiortc("vp8", width=31, height=31, fps=30, seconds=1, bitrate_kbps=500, warmup_s=0.0)
