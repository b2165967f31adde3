"""Latency histograms: percentiles within a bucket's width of the truth."""

from __future__ import annotations

import math
import random

import numpy as np

from app.engine.metrics import Histogram


def test_empty() -> None:
    h = Histogram()
    assert math.isnan(h.percentile(50))
    assert h.snapshot() == {"count": 0}


def test_percentiles_close_to_exact() -> None:
    rng = random.Random(1)
    samples = [rng.lognormvariate(1.5, 0.6) for _ in range(20000)]
    h = Histogram()
    for s in samples:
        h.record(s)
    for q in (50, 95, 99):
        exact = float(np.percentile(samples, q))
        assert abs(h.percentile(q) - exact) / exact < 0.1
    assert h.max == max(samples)
    assert h.count == len(samples)


def test_clamps_negative_and_huge() -> None:
    h = Histogram()
    h.record(-5)
    h.record(1e9)
    assert h.min == 0.0
    assert h.percentile(100) == 1e9
