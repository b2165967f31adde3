"""Latency histograms and counters the engine keeps per stage, cheap enough for every frame.

A histogram has fixed, log-spaced buckets from 0.05 ms to about 10 s (8 per octave, so a percentile read
from it is within ~9 % of the true value) plus exact min, max, count and sum. ``record`` is a few integer
operations; one thread writes, any thread may take a snapshot (the GIL makes the list reads consistent
enough for statistics).
"""

from __future__ import annotations

import math
from typing import Any

_MIN_MS = 0.05
_PER_OCTAVE = 8
_BUCKETS = 8 * 18  # 0.05 ms × 2**18 ≈ 13 s


class Histogram:
    """Latency distribution in milliseconds."""

    __slots__ = ("count", "counts", "max", "min", "total")

    def __init__(self) -> None:
        self.counts = [0] * (_BUCKETS + 1)
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = 0.0

    def record(self, ms: float) -> None:
        """Add one sample (ms). Negative samples (clock steps) are clamped to 0."""
        ms = max(ms, 0.0)
        if ms <= _MIN_MS:
            i = 0
        else:
            i = min(_BUCKETS, 1 + int(math.log2(ms / _MIN_MS) * _PER_OCTAVE))
        self.counts[i] += 1
        self.count += 1
        self.total += ms
        self.min = min(ms, self.min)
        self.max = max(ms, self.max)

    def percentile(self, q: float) -> float:
        """The q-th percentile (0–100) in ms, from the buckets' geometric midpoints; NaN when empty."""
        if self.count == 0:
            return math.nan
        rank = q / 100.0 * self.count
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank and c:
                if i == 0:
                    return min(_MIN_MS, self.max)
                if i == _BUCKETS:
                    return self.max
                lo = _MIN_MS * 2 ** ((i - 1) / _PER_OCTAVE)
                hi = _MIN_MS * 2 ** (i / _PER_OCTAVE)
                return min(max(math.sqrt(lo * hi), self.min), self.max)
        return self.max

    def snapshot(self) -> dict[str, Any]:
        """Summary for the control socket: count, mean, p50, p95, p99, max (ms, rounded to 0.01)."""
        if self.count == 0:
            return {"count": 0}
        return {
            "count": self.count,
            "mean": round(self.total / self.count, 2),
            "p50": round(self.percentile(50), 2),
            "p95": round(self.percentile(95), 2),
            "p99": round(self.percentile(99), 2),
            "max": round(self.max, 2),
        }
