"""Turning per-frame records from a receiver into one benchmark row.

Shared by every system the benchmark runs (doorway, aiortc-h264, aiortc-vp8), so they are judged by the
same arithmetic. Times: ``captured_us`` is the CLOCK_MONOTONIC microsecond stamped into the frame's pixels by
the synthetic source; ``decoded_ns`` is CLOCK_MONOTONIC nanoseconds when the frame was decoded and ready to
show, on the same machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(slots=True)
class FrameRecord:
    """One decoded frame as seen by the receiving end."""

    decoded_ns: int
    """CLOCK_MONOTONIC ns when decoded and ready to show."""
    index: int
    """Frame index read from the stamp; -1 when the stamp failed its checksum."""
    captured_us: int
    """Capture time read from the stamp, CLOCK_MONOTONIC µs; 0 when corrupt."""
    corrupt: bool
    """The stamp failed its checksum."""
    psnr_db: float | None = None
    """Luma PSNR against the regenerated source, for the sampled frames; None when not sampled."""


def freeze_threshold_ms(mean_interval_ms: float) -> float:
    """A gap between shown frames of at least this many ms is a freeze: max(3 × mean, mean + 150 ms)."""
    return max(3.0 * mean_interval_ms, mean_interval_ms + 150.0)


def summarize(records: list[FrameRecord], *, seconds: float, fps_target: float) -> dict[str, Any]:
    """The measured keys of a benchmark row from the records of one measurement window.

    ``seconds`` is the window's length; the caller has already dropped frames outside it. Corrupt frames
    count in ``frames_corrupt`` and not in ``frames_shown``; latency, freezes and PSNR use good frames only.
    """
    good = sorted((r for r in records if not r.corrupt), key=lambda r: r.decoded_ns)
    corrupt = sum(1 for r in records if r.corrupt)
    lat = np.array([r.decoded_ns / 1e6 - r.captured_us / 1e3 for r in good], dtype=np.float64)
    shown = np.array([r.decoded_ns for r in good], dtype=np.float64) / 1e6
    freezes = 0
    max_freeze = 0.0
    if len(shown) >= 2:
        gaps = np.diff(shown)
        threshold = freeze_threshold_ms(1000.0 / fps_target)
        frozen = gaps[gaps >= threshold]
        freezes = len(frozen)
        max_freeze = float(frozen.max()) if freezes else 0.0
    psnrs = [r.psnr_db for r in good if r.psnr_db is not None and math.isfinite(r.psnr_db)]

    def pct(q: float) -> float:
        return round(float(np.percentile(lat, q)), 2) if len(lat) else float("nan")

    return {
        "frames_shown": len(good),
        "frames_corrupt": corrupt,
        "fps_shown": round(len(good) / seconds, 2) if seconds > 0 else 0.0,
        "latency_ms": {
            "p50": pct(50),
            "p95": pct(95),
            "p99": pct(99),
            "max": round(float(lat.max()), 2) if len(lat) else float("nan"),
        },
        "freezes": freezes,
        "max_freeze_ms": round(max_freeze, 1),
        "psnr_db": round(float(np.mean(psnrs)), 2) if psnrs else float("nan"),
    }
