"""A resampler whose ratio may change on every call: how playout follows the other sound card's clock.

Two sound cards never run at exactly the same rate (±200 ppm is common), and the playout buffer must also
be steered toward the jitter buffer's target. Both are done by playing the received stream a little faster
or slower: :class:`VariableResampler` consumes ``ratio`` input samples per output sample (``ratio`` > 1
drains the buffer, < 1 fills it). At 200 ppm the pitch changes by 0.003 semitones, far below hearing.

Theory of operation: band-limited interpolation. The input is kept in a buffer with a fractional read
position ``p``; output sample j is ``Σ_k x[⌊p⌋+k] · h(k − frac(p))`` for k = −7..8, ``h`` a sinc windowed by a
Kaiser window (β = 8) over 16 taps, tabulated at 512 fractional phases and linearly interpolated between
them (error below −90 dB). The sinc is not narrowed for ratios above 1: at the ±2 % this module is used for,
what would alias is the top 2 % of the band (above 23.5 kHz). At ``ratio == 1`` with an integer position
the filter is the unit impulse, so the steady state is bit-exact pass-through. The filter looks 8 samples
(0.17 ms) ahead, which is the resampler's whole latency.

Not thread-safe: the audio-playout thread owns it. Units: samples per channel at 48 kHz. Allocation happens
only in :meth:`VariableResampler.pull`'s result (the playout thread is not real-time).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

HALF = 8
"""Taps on each side of the interpolation point."""
TAPS = 2 * HALF
PHASES = 512
MAX_RATIO_DEVIATION = 0.05
"""Largest |ratio − 1| accepted."""


def _table() -> npt.NDArray[np.float64]:
    """h(k − f) for f = phase / PHASES (phase 0..PHASES, inclusive) and k = −HALF+1 .. HALF."""
    f = np.arange(PHASES + 1, dtype=np.float64)[:, None] / PHASES
    k = np.arange(-HALF + 1, HALF + 1, dtype=np.float64)[None, :]
    t = k - f
    window = np.kaiser(2 * HALF * 64 + 1, 8.0)
    # Sample the Kaiser window at t (it spans −HALF..HALF).
    idx = np.clip(np.rint((t + HALF) * 64).astype(int), 0, len(window) - 1)
    h = np.sinc(t) * window[idx]
    # Exactly the unit impulse at phase 0 (sinc's zeros are not exactly 0.0 in floating point).
    h[0] = 0.0
    h[0, HALF - 1] = 1.0
    h[PHASES] = 0.0
    h[PHASES, HALF] = 1.0
    return np.asarray(h, dtype=np.float64)


_H = _table()


class VariableResampler:
    """Band-limited resampling at a ratio that may change every :meth:`pull`.

    ``push`` appends input; ``pull(ratio)`` returns as many output samples as the buffered input allows.
    ``channels`` is the second axis of every block; ``capacity`` the most input samples kept (a push
    beyond it raises ``OverflowError``: the caller's buffer control has failed).
    """

    def __init__(self, channels: int = 2, capacity: int = 48_000) -> None:
        self.channels = channels
        self.capacity = capacity
        self._buf = np.zeros((capacity, channels), np.float32)
        # HALF − 1 samples of leading silence, so the very first input sample can be interpolated at.
        self._n = HALF - 1
        self._pos = float(HALF - 1)

    @property
    def buffered_samples(self) -> float:
        """Input samples pushed but not yet played out (including the filter's look-ahead)."""
        return self._n - self._pos

    def push(self, block: npt.NDArray[np.float32]) -> None:
        """Append ``block`` (float32 ``(n, channels)``)."""
        n = len(block)
        if self._n + n > self.capacity:
            self._compact()
            if self._n + n > self.capacity:
                raise OverflowError(f"resampler holds {self._n} samples; {n} more exceed {self.capacity}")
        self._buf[self._n : self._n + n] = block
        self._n += n

    def _compact(self) -> None:
        """Drop input no output sample can need any more (left of ⌊pos⌋ − HALF + 1)."""
        keep = max(0, math.floor(self._pos) - HALF + 1)
        if keep:
            self._buf[: self._n - keep] = self._buf[keep : self._n]
            self._n -= keep
            self._pos -= keep

    def available(self, ratio: float) -> int:
        """How many output samples :meth:`pull` at ``ratio`` could return now."""
        last = self._n - 1 - HALF  # the largest position whose taps are all buffered
        if self._pos > last:
            return 0
        return math.floor((last - self._pos) / ratio + 1e-9) + 1

    def pull(self, ratio: float, most: int | None = None) -> npt.NDArray[np.float32]:
        """Up to ``most`` (default: all available) output samples at ``ratio`` input samples per output.

        Returns a new float32 ``(m, channels)`` array, m ≥ 0. Raises ValueError for a ratio outside
        1 ± :data:`MAX_RATIO_DEVIATION`.
        """
        if not abs(ratio - 1.0) <= MAX_RATIO_DEVIATION:
            raise ValueError(f"resampling ratio {ratio} is outside 1 ± {MAX_RATIO_DEVIATION}")
        m = self.available(ratio)
        if most is not None:
            m = min(m, most)
        if m <= 0:
            return np.zeros((0, self.channels), np.float32)
        positions = self._pos + ratio * np.arange(m, dtype=np.float64)
        base = np.floor(positions)
        frac = (positions - base) * PHASES
        phase = np.minimum(frac.astype(np.int64), PHASES - 1)
        weight = (frac - phase)[:, None]
        taps = _H[phase] * (1.0 - weight) + _H[phase + 1] * weight  # (m, TAPS)
        index = base.astype(np.int64)[:, None] + np.arange(-HALF + 1, HALF + 1)[None, :]
        x = self._buf[index]  # (m, TAPS, channels)
        out = np.einsum("mt,mtc->mc", taps, x.astype(np.float64))
        self._pos += ratio * m
        # Snap a position within rounding error of an integer, so ratio 1 stays exact pass-through.
        nearest = round(self._pos)
        if abs(self._pos - nearest) < 1e-9:
            self._pos = float(nearest)
        if self._pos > self.capacity // 2:
            self._compact()
        return np.asarray(out, dtype=np.float32)

    def copy_from(self, other: VariableResampler) -> None:
        """Become a copy of ``other`` (same channels and capacity): only the input it still needs is copied,
        a few dozen samples, not the whole buffer."""
        if (other.channels, other.capacity) != (self.channels, self.capacity):
            raise ValueError("resamplers differ in channels or capacity")
        keep = max(0, math.floor(other._pos) - HALF + 1)
        n = other._n - keep
        self._buf[:n] = other._buf[keep : other._n]
        self._n = n
        self._pos = other._pos - keep

    def reset(self) -> None:
        """Forget all input (a new stream)."""
        self._n = HALF - 1
        self._buf[: self._n] = 0.0
        self._pos = float(HALF - 1)
