"""The variable-ratio resampler: exact at ratio 1, accurate off it, and consistent in its sample counts."""

import numpy as np
import pytest

from app.audio.resample import HALF, VariableResampler


def _sine(n: int, freq: float = 1000.0, start: int = 0) -> np.ndarray:
    t = (np.arange(n) + start) / 48000
    return np.repeat(np.sin(2 * np.pi * freq * t)[:, None], 2, axis=1).astype(np.float32)


def test_ratio_one_is_bit_exact_pass_through_after_the_look_ahead():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4800, 2)) * 0.2).astype(np.float32)
    r = VariableResampler()
    out = []
    for i in range(10):
        r.push(x[i * 480 : (i + 1) * 480])
        out.append(r.pull(1.0))
    y = np.concatenate(out)
    assert len(y) == 4800 - HALF
    assert np.array_equal(y, x[: len(y)])
    assert r.buffered_samples == HALF


@pytest.mark.parametrize("ratio", [0.99, 0.9998, 1.0002, 1.01, 1.02])
def test_off_ratio_matches_the_ideal_band_limited_signal(ratio):
    r = VariableResampler()
    x = _sine(48000)
    out = []
    for i in range(100):
        r.push(x[i * 480 : (i + 1) * 480])
        out.append(r.pull(ratio))
    y = np.concatenate(out)[:, 0]
    # Output sample j sits at input position j * ratio (the leading zeros cancel the look-ahead offset).
    j = np.arange(200, len(y))
    ideal = np.sin(2 * np.pi * 1000 * (j * ratio) / 48000)
    assert np.max(np.abs(y[200:] - ideal)) < 2e-4  # better than -74 dB
    # Samples out follow the ratio: input consumed / output produced == ratio.
    consumed = len(y) * ratio
    assert abs(consumed - (48000 - r.buffered_samples)) < 1.0


def test_chunked_pulls_equal_one_pull():
    x = _sine(4800, 3000.0)
    a, b = VariableResampler(), VariableResampler()
    a.push(x)
    whole = a.pull(1.003)
    b.push(x)
    parts = []
    while True:
        p = b.pull(1.003, most=77)
        if len(p) == 0:
            break
        parts.append(p)
    assert np.allclose(np.concatenate(parts), whole, atol=1e-6)


def test_ratio_may_change_between_pulls_without_a_jump():
    r = VariableResampler()
    x = _sine(9600, 500.0)
    ys = []
    for i in range(20):
        r.push(x[i * 480 : (i + 1) * 480])
        ys.append(r.pull(1.0 if i % 2 else 1.01))
    y = np.concatenate(ys)[:, 0]
    # A 500 Hz sine changes by at most 2*pi*500/48000*1.01 per sample; no clicks beyond that.
    assert np.max(np.abs(np.diff(y[20:]))) < 2 * np.pi * 500 / 48000 * 1.02 + 1e-3


def test_bad_ratio_and_overflow_are_errors():
    r = VariableResampler(capacity=1000)
    with pytest.raises(ValueError, match="outside"):
        r.pull(1.5)
    r.push(np.zeros((900, 2), np.float32))
    with pytest.raises(OverflowError):
        r.push(np.zeros((200, 2), np.float32))


def test_reset_forgets_input():
    r = VariableResampler()
    r.push(_sine(480))
    r.reset()
    assert r.available(1.0) == 0
    assert len(r.pull(1.0)) == 0


def test_a_copy_continues_like_the_original():
    a, b = VariableResampler(), VariableResampler()
    x = _sine(480 * 60)
    for k in range(50):  # far enough that the original has compacted its buffer, off ratio 1
        a.push(x[k * 480 : (k + 1) * 480])
        a.pull(1.003)
    b.copy_from(a)
    assert b.buffered_samples == pytest.approx(a.buffered_samples)
    for k in range(50, 60):
        a.push(x[k * 480 : (k + 1) * 480])
        b.push(x[k * 480 : (k + 1) * 480])
        np.testing.assert_allclose(a.pull(0.998), b.pull(0.998), atol=1e-6)
    with pytest.raises(ValueError):
        VariableResampler(capacity=1000).copy_from(a)
