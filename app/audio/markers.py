"""Latency markers: a short chirp mixed into a signal on one side and found again on the far side.

The end-to-end audio latency is measured mouth-to-ear: the synthetic room mixes :data:`MARKER` into its
talker signal and records when its first sample reached the microphone (CLOCK_MONOTONIC ns); the far room's
:class:`MarkerDetector` watches the blocks sent to its speaker and reports when the first sample of each
marker it finds will leave the speaker. The difference is the latency through capture, echo cancellation,
noise suppression, Opus, the network and the jitter buffer.

The marker is a 5 ms (240 samples at 48 kHz) linear chirp from 1 to 8 kHz under a Hann window, peak 1.0.
Sweeping through the band lets it survive Opus at 64–128 kb/s (which keeps its spectral envelope) and a
noise suppressor (which keeps loud transients), and its time–bandwidth product (~35) gives a sharp
correlation peak. Speech has most of its energy below 1 kHz, so the detector band-passes everything to
1–8 kHz before correlating.

Theory of operation of :class:`MarkerDetector`: each block is averaged to mono, band-passed by a causal
FIR and appended to a short history. For every position whose window is complete it computes the
normalized cross-correlation (NCC, in [-1, 1]) with the equally filtered template, and the marker gain
that correlation implies. A position is a detection when its NCC is at least ``threshold``, its gain at
least ``min_gain_dbfs``, it is the largest NCC within half a template length on either side (so positions
are only decided once the following half-template has been scored, which makes a marker straddling two
blocks one detection), and it is at least ``refractory_ms`` after the previous detection. The filter's delay
cancels because the template passed through the same filter, so the peak position is the marker's first
sample. The detector runs on an ordinary thread and allocates freely; :func:`insert` with ``gain=1.0`` is
allocation-free and may be used on a real-time thread.
"""

from __future__ import annotations

import logging
from collections import deque

import numpy as np
import numpy.typing as npt

from app.audio.device import SAMPLE_RATE

log = logging.getLogger(__name__)

MARKER_MS = 5.0
"""Length of the marker, ms."""
MARKER_F0_HZ = 1000.0
"""Start frequency of the chirp, Hz."""
MARKER_F1_HZ = 8000.0
"""End frequency of the chirp, Hz."""


def _make_marker() -> npt.NDArray[np.float32]:
    n = round(MARKER_MS * SAMPLE_RATE / 1000)
    t = np.arange(n) / SAMPLE_RATE
    duration = n / SAMPLE_RATE
    phase = 2 * np.pi * (MARKER_F0_HZ * t + (MARKER_F1_HZ - MARKER_F0_HZ) * t * t / (2 * duration))
    window = np.hanning(n + 2)[1:-1]
    chirp = np.sin(phase) * window
    return np.asarray(chirp / np.max(np.abs(chirp)), dtype=np.float32)


MARKER: npt.NDArray[np.float32] = _make_marker()
"""The marker template: float32 mono, 240 samples, peak 1.0. Read-only."""
MARKER.flags.writeable = False
MARKER_LEN = len(MARKER)
"""Samples in :data:`MARKER`."""


def insert(
    block: npt.NDArray[np.float32],
    offset: int,
    gain: float = 1.0,
    *,
    template: npt.NDArray[np.float32] = MARKER,
) -> int:
    """Add ``template × gain`` to every channel of ``block`` (samples × channels, or mono) from ``offset``.

    ``offset`` may be negative (the marker began in an earlier block: its remaining part is added) or reach
    past the block (the part that fits is added); call again on the next block with ``offset - len(block)``
    to add the rest. Returns how many template samples were added. With ``gain == 1.0`` nothing is
    allocated (pass a pre-scaled ``template`` for real-time use); other gains allocate a temporary.
    """
    n = len(block)
    start = max(offset, 0)
    stop = min(offset + len(template), n)
    if stop <= start:
        return 0
    part = template[start - offset : stop - offset]
    target = block[start:stop]
    if block.ndim == 2:
        part = part[:, np.newaxis]
    if gain == 1.0:
        np.add(target, part, out=target)
    else:
        np.add(target, part * np.float32(gain), out=target)
    return stop - start


def _bandpass(low_hz: float, high_hz: float, taps: int) -> npt.NDArray[np.float64]:
    """A linear-phase FIR band-pass (windowed sinc, Blackman), unity gain in the pass band."""
    n = np.arange(taps) - (taps - 1) / 2

    def lowpass(fc: float) -> npt.NDArray[np.float64]:
        return np.asarray(2 * fc / SAMPLE_RATE * np.sinc(2 * fc / SAMPLE_RATE * n), dtype=np.float64)

    h = (lowpass(high_hz) - lowpass(low_hz)) * np.blackman(taps)
    return np.asarray(h, dtype=np.float64)


class MarkerDetector:
    """Finds :data:`MARKER` in a stream of blocks and reports when each one's first sample plays.

    ``threshold``: least normalized cross-correlation (0..1) for a detection. ``refractory_ms``: after a
    detection, markers closer than this are ignored. ``min_gain_dbfs``: least marker peak level, dBFS (so
    that noise in near-silence is never a marker). Call :meth:`feed` from one ordinary (not real-time)
    thread, with consecutive blocks.
    """

    FILTER_TAPS = 63
    """Length of the 1–8 kHz band-pass applied before correlating."""

    def __init__(
        self, threshold: float = 0.5, *, refractory_ms: float = 100.0, min_gain_dbfs: float = -40.0
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), not {threshold}")
        self.threshold = threshold
        self.refractory = round(refractory_ms * SAMPLE_RATE / 1000)
        self.min_gain = 10.0 ** (min_gain_dbfs / 20)
        self._h = _bandpass(MARKER_F0_HZ, MARKER_F1_HZ, self.FILTER_TAPS)
        self._template = np.convolve(MARKER.astype(np.float64), self._h)
        self._energy = float(np.dot(self._template, self._template))
        self._norm = float(np.sqrt(self._energy))
        self._span = len(self._template)
        self._radius = self._span // 2
        self._raw_tail = np.zeros(self.FILTER_TAPS - 1)
        self._fed = 0  # samples fed so far
        self._x = np.zeros(0)  # filtered samples from global index _x0 on
        self._x0 = 0
        self._scored = 0  # next position to score
        self._ncc = np.zeros(0)  # scores for positions from _s0 on
        self._gain = np.zeros(0)
        self._s0 = 0
        self._decided = 0  # positions before this are decided
        self._last = -(10**12)  # position of the last detection
        self._blocks: deque[tuple[int, int, int]] = deque(maxlen=64)  # (first sample, samples, playout ns)
        self.detections = 0
        """Markers found so far."""

    def feed(self, block: npt.NDArray[np.floating], playout_ns: int) -> list[int]:
        """Take the next block (samples × channels, or mono) that plays from ``playout_ns``.

        Returns the CLOCK_MONOTONIC ns at which the first sample of each marker decided during this call
        plays: ``playout_ns`` of the block holding that sample + its offset in the block / 48 kHz. A marker
        is reported once, up to about 8 ms (one template and a half) after its first sample was fed.
        """
        samples = np.asarray(block, dtype=np.float64)
        mono = samples.mean(axis=1) if samples.ndim == 2 else samples
        n = len(mono)
        if n == 0:
            return []
        self._blocks.append((self._fed, n, playout_ns))
        extended = np.concatenate((self._raw_tail, mono))
        filtered = np.convolve(extended, self._h, mode="valid")
        self._raw_tail = extended[len(extended) - (self.FILTER_TAPS - 1) :]
        self._fed += n
        self._x = np.concatenate((self._x[self._scored - self._x0 :], filtered))
        self._x0 = self._scored
        self._score()
        found = self._decide()
        keep = max(self._decided - self._radius, self._s0)
        self._ncc = self._ncc[keep - self._s0 :]
        self._gain = self._gain[keep - self._s0 :]
        self._s0 = keep
        return [self._time_of(p) for p in found]

    def _score(self) -> None:
        """Score every position whose whole window has been fed."""
        x = self._x
        if len(x) < self._span:
            return
        num = np.correlate(x, self._template, mode="valid")
        cum = np.concatenate(([0.0], np.cumsum(x * x)))
        energy = np.maximum(cum[self._span :] - cum[: -self._span], 0.0)
        ncc = num / (self._norm * np.sqrt(energy) + 1e-12)
        gain = num / self._energy
        self._ncc = np.concatenate((self._ncc, ncc))
        self._gain = np.concatenate((self._gain, gain))
        self._scored += len(num)

    def _decide(self) -> list[int]:
        """Decide positions whose neighbourhood (± radius) has been scored; return the detections."""
        end = self._scored - self._radius
        found: list[int] = []
        if end <= self._decided:
            return found
        lo = self._decided - self._s0
        hi = end - self._s0
        candidates = np.flatnonzero(
            (self._ncc[lo:hi] >= self.threshold) & (self._gain[lo:hi] >= self.min_gain)
        )
        for c in candidates:
            p = self._decided + int(c)
            if p - self._last < self.refractory:
                continue
            i = p - self._s0
            left = self._ncc[max(i - self._radius, 0) : i]
            right = self._ncc[i + 1 : i + self._radius + 1]
            value = self._ncc[i]
            if (len(left) and left.max() >= value) or (len(right) and right.max() > value):
                continue
            found.append(p)
            self._last = p
            self.detections += 1
        self._decided = end
        return found

    def _time_of(self, position: int) -> int:
        """CLOCK_MONOTONIC ns at which global sample ``position`` plays."""
        for first, count, playout_ns in reversed(self._blocks):
            if first <= position < first + count:
                return playout_ns + (position - first) * 1_000_000_000 // SAMPLE_RATE
        first, _count, playout_ns = self._blocks[0]
        log.debug("marker at sample %d is older than the block history", position)
        return playout_ns + (position - first) * 1_000_000_000 // SAMPLE_RATE
