"""Tests for app.video.ratefit: the encoder is asked for what makes it spend the target."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.video.ratefit import RateFit


def run(fit: RateFit, target_kbps: int, utilisation_at_factor_one: float, frames: int) -> None:
    """An encoder that makes ``utilisation × asked`` — proportional to the rate it is asked for."""
    for _ in range(frames):
        asked = fit.encoder_kbps(target_kbps)
        size = round(asked * 1000 / fit.fps / 8 * utilisation_at_factor_one)
        fit.on_frame(size, target_kbps, keyframe=False)


def test_an_undershooting_encoder_is_asked_for_more_until_it_meets_the_target() -> None:
    fit = RateFit(60)
    run(fit, 10_000, 0.8, 60 * 20)
    assert fit.factor == pytest.approx(1.25, rel=0.02)
    assert fit.stats()["utilisation"] == pytest.approx(1.0, abs=0.03)


def test_an_overshooting_encoder_is_asked_for_less() -> None:
    fit = RateFit(60)
    run(fit, 4_000, 1.1, 60 * 20)
    assert fit.factor == pytest.approx(1 / 1.1, rel=0.02)


def test_the_factor_is_bounded() -> None:
    fit = RateFit(60, low=0.8, high=1.3)
    run(fit, 4_000, 0.3, 60 * 20)  # a static scene at the quality ceiling
    assert fit.factor == 1.3
    fit = RateFit(60, low=0.8, high=1.3)
    run(fit, 4_000, 3.0, 60 * 20)
    assert fit.factor == 0.8


def test_nothing_changes_before_a_full_window_and_keyframes_do_not_count() -> None:
    fit = RateFit(60, window=60, update_every=30)
    for _ in range(59):
        fit.on_frame(10, 8000, keyframe=False)
    assert fit.factor == 1.0
    for _ in range(200):
        fit.on_frame(1_000_000, 8000, keyframe=True)
    assert fit.factor == 1.0 and fit.updates == 0
    fit.on_frame(10, 8000, keyframe=False)
    assert fit.factor > 1.0 and fit.updates == 1


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        RateFit(0)
    with pytest.raises(ValueError):
        RateFit(60, low=1.2)
    with pytest.raises(ValueError):
        RateFit(60, window=10, update_every=20)


@given(st.lists(st.tuples(st.integers(-10, 10**7), st.integers(-10, 10**6), st.booleans()), max_size=300))
def test_any_input_keeps_the_factor_in_range(frames: list[tuple[int, int, bool]]) -> None:
    fit = RateFit(30, window=20, update_every=5)
    for size, target, key in frames:
        fit.on_frame(size, target, keyframe=key)
        assert fit.low <= fit.factor <= fit.high
        assert fit.encoder_kbps(max(target, 0)) >= 1
