"""Send pacing: a token bucket that spreads a large frame's packets over time (sans-I/O).

A 400 KB keyframe sent back to back would arrive as one burst that can overflow a switch queue or the
peer's socket buffer. :class:`TokenBucketPacer` lets up to ``burst_bytes`` leave back to back (an ordinary
frame leaves at once) and then holds the sender to ``rate_bps``. It only computes; the caller sleeps. Time
is passed in as ``now_ns`` (CLOCK_MONOTONIC nanoseconds); a clock that steps backwards is treated as
standing still.

Theory of operation
-------------------
The bucket holds up to ``burst_bytes`` tokens (bytes) and fills at ``rate_bps / 8`` bytes per second; it
starts full. A packet of ``size`` bytes may go when the bucket holds ``min(size, burst_bytes)`` tokens, and
sending it removes ``size`` tokens, which may leave the bucket negative: a packet larger than the bucket
still goes once the bucket is full, and one sent without waiting (``consume`` alone) delays the next ones.
So over any long run the bytes sent are at most ``burst_bytes + rate × time``.
"""

from __future__ import annotations

import math

# Float error can leave the bucket a hair short right after waiting the computed delay; a millionth of a
# byte of tolerance keeps that from costing another 1 ns round trip through the caller's sleep.
_EPSILON_BYTES = 1e-6


class TokenBucketPacer:
    """Token bucket of ``burst_bytes`` filling at ``rate_bps`` bits per second."""

    __slots__ = ("_bytes_per_ns", "_rate_bps", "_tokens", "_updated_ns", "burst_bytes")

    def __init__(self, rate_bps: float, burst_bytes: int) -> None:
        if burst_bytes < 1:
            raise ValueError(f"burst_bytes {burst_bytes} must be at least 1")
        self.burst_bytes = burst_bytes
        self._rate_bps = 0.0
        self._bytes_per_ns = 0.0
        self._tokens = float(burst_bytes)
        self._updated_ns: int | None = None
        self._set(rate_bps)

    @property
    def rate_bps(self) -> float:
        """The pacing rate, in bits per second."""
        return self._rate_bps

    def tokens(self, now_ns: int) -> float:
        """Bytes that may leave back to back at ``now_ns`` (negative while in debt)."""
        updated = self._updated_ns
        if updated is None or now_ns <= updated:
            return self._tokens
        return min(float(self.burst_bytes), self._tokens + (now_ns - updated) * self._bytes_per_ns)

    def delay_ns(self, now_ns: int, size: int) -> int:
        """How long a ``size``-byte packet must wait from ``now_ns``, in ns; 0 when it may go now."""
        deficit = min(size, self.burst_bytes) - self.tokens(now_ns)
        if deficit <= _EPSILON_BYTES:
            return 0
        return math.ceil(deficit / self._bytes_per_ns)

    def consume(self, now_ns: int, size: int) -> None:
        """Record that a ``size``-byte packet left at ``now_ns``."""
        self._tokens = self.tokens(now_ns) - size
        if self._updated_ns is None or now_ns > self._updated_ns:
            self._updated_ns = now_ns

    def set_rate(self, rate_bps: float, now_ns: int | None = None) -> None:
        """Change the rate. With ``now_ns`` the tokens earned so far are credited at the old rate first;
        without it the new rate applies from the last ``consume``."""
        if now_ns is not None:
            self._tokens = self.tokens(now_ns)
            if self._updated_ns is None or now_ns > self._updated_ns:
                self._updated_ns = now_ns
        self._set(rate_bps)

    def _set(self, rate_bps: float) -> None:
        if not (math.isfinite(rate_bps) and rate_bps > 0):
            raise ValueError(f"rate {rate_bps} b/s must be positive and finite")
        self._rate_bps = float(rate_bps)
        self._bytes_per_ns = rate_bps / 8e9
