"""Per-frame forward error correction: Reed–Solomon parity over a frame's fragments, and how much to send.

A lost fragment costs a whole frame, and with one reference frame the decoder's chain breaks until a
keyframe arrives (a round trip plus a large frame later). Retransmission needs a round trip too. Forward
error correction spends a little bitrate up front instead: the sender adds ``m`` parity packets to a frame
of ``k`` data fragments, and the receiver rebuilds the frame from any ``k`` of the ``k + m`` packets, at
once, without asking. This module holds the code (:func:`fec_encode`, :func:`fec_recover`) and the policy
that picks ``m`` from the measured loss (:class:`FecPolicy`). It does no I/O and keeps no state but two
small caches of codec objects.

Theory of operation
-------------------
**Code.** zfec's systematic Reed–Solomon erasure code over GF(2^8), ``(n, k)`` with ``n = k + m ≤ 256``.
Blocks ``0 … k−1`` are the data fragments themselves, each zero-padded to the block size, the largest
fragment's length (``fragment_size(frame_size, k, 0)``); blocks ``k … k+m−1`` are parity. Any ``k``
distinct blocks determine all ``k`` data blocks. Fragment sizes are fixed by (frame size, k, index)
(PROTOCOL.md §6), so the receiver knows how many pad bytes to trim and padding needs no signalling. The
codec objects hold a ``k × n`` matrix that takes up to ~1 ms to build for large ``k``, so they are kept in
two small LRU caches (thread-safe: :func:`functools.lru_cache`).

**Policy.** Losses are modelled per frame. With independent losses at rate ``p``, the number ``X`` of the
``n = k + m`` packets lost is Binomial(n, p), and the frame is lost when ``X > m``. The policy sends the
smallest ``m`` with ``P[X > m] < target`` (1e-3 by default: about one lost frame per 17 s at 60 fps).

Losses come in bursts (a queue overflowing drops several packets back to back), and a burst lands in one
frame. With mean burst length ``b`` the approximation is to count bursts instead of packets: a burst
starts at a packet with probability ``q = p / B`` (so the long-run loss rate stays ``p``) and erases
``B = round(b)`` packets, so ``m`` parity packets absorb ``⌊m / B⌋`` bursts and the frame is lost when
``Binomial(n, q) > ⌊m / B⌋``. A burst is assumed to fall wholly inside the frame (conservative). Because
of the floor this count is not monotonic in ``B`` by itself (one burst of 6 fits in 6 parity packets, two
bursts of 5 need 10), so the policy takes the largest ``m`` over the burst lengths ``1 … B``: protection
never drops when bursts get longer. ``B`` is clamped to 1..16.

Then the floor and the cap: a loss rate at or below ``zero_below`` (1e-4) gets no parity (FEC costs
bitrate, and a measured rate that small is noise), any higher rate at least ``min_parity`` (1); ``m`` is at
most ``⌈max_ratio · k⌉`` (50 %) and at most ``256 − k``, so a frame of more than 255 fragments gets none.
A loss rate of 0.5 or more gets the cap outright. The loss rate is rounded up onto a grid of 64 steps per
decade before the search, so results can be cached (:func:`functools.lru_cache`, 4096 entries) and stay
monotonic in the loss rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, Protocol, cast

import zfec

from app.net.protocol import MAX_FEC_BLOCKS, MAX_FRAME_SIZE, fragment_size

MAX_BURST: Final = 16
"""Largest burst length (packets) the policy models; longer bursts are treated as this long."""
_LOSS_STEPS_PER_DECADE: Final = 64
_CODEC_CACHE: Final = 32


class FecError(ValueError):
    """The blocks or parameters given to :func:`fec_encode` or :func:`fec_recover` are not valid."""


_Block = bytes | memoryview


class _Encoder(Protocol):
    def encode(self, blocks: Sequence[_Block], wanted: Sequence[int], /) -> list[bytes]: ...


class _Decoder(Protocol):
    def decode(self, blocks: Sequence[_Block], nums: Sequence[int], /) -> list[bytes]: ...


@lru_cache(maxsize=_CODEC_CACHE)
def _encoder(k: int, n: int) -> _Encoder:
    return cast(_Encoder, zfec.Encoder(k, n))


@lru_cache(maxsize=_CODEC_CACHE)
def _decoder(k: int, n: int) -> _Decoder:
    return cast(_Decoder, zfec.Decoder(k, n))


def fec_encode(data_fragments: Sequence[bytes | memoryview], parity_count: int) -> list[bytes]:
    """The ``parity_count`` parity blocks of a frame's data fragments, in parity-index order.

    Each fragment is zero-padded to the largest one's length, which is the length of every parity block.
    Raises :class:`FecError` when there are no fragments, a fragment is empty, ``parity_count`` is negative
    or ``len(data_fragments) + parity_count`` exceeds 256. Zero parity gives an empty list.
    """
    k = len(data_fragments)
    if k < 1:
        raise FecError("no data fragments to protect")
    if parity_count < 0:
        raise FecError(f"parity count {parity_count} is negative")
    if k + parity_count > MAX_FEC_BLOCKS:
        raise FecError(f"{k} data + {parity_count} parity blocks exceed {MAX_FEC_BLOCKS}")
    if parity_count == 0:
        return []
    sizes = [len(f) for f in data_fragments]
    block_size = max(sizes)
    if min(sizes) == 0:
        raise FecError("a data fragment is empty")
    blocks = tuple(
        f if size == block_size else b"".join((f, bytes(block_size - size)))
        for f, size in zip(data_fragments, sizes, strict=True)
    )
    n = k + parity_count
    return _encoder(k, n).encode(blocks, tuple(range(k, n)))


def fec_recover(
    k: int, m: int, block_size: int, frame_size: int, present: Mapping[int, bytes | memoryview]
) -> list[bytes]:
    """The ``k`` data fragments of a ``frame_size``-byte frame, rebuilt from any ``k`` of its blocks.

    ``present`` maps block numbers to blocks: ``0 … k−1`` are data fragments as sent (exactly
    ``fragment_size(frame_size, k, i)`` bytes), ``k … k+m−1`` parity blocks (``block_size`` bytes, which
    must be ``fragment_size(frame_size, k, 0)``). Data fragments present are returned as they are (a
    memoryview is copied into bytes); missing ones are decoded and trimmed to their true size. Raises
    :class:`FecError` on inconsistent parameters, a block number out of range, a block of the wrong length
    or fewer than ``k`` blocks.
    """
    if k < 1 or m < 0 or k + m > MAX_FEC_BLOCKS:
        raise FecError(f"k = {k}, m = {m}: need k ≥ 1, m ≥ 0 and k + m ≤ {MAX_FEC_BLOCKS}")
    if not k <= frame_size <= MAX_FRAME_SIZE:
        raise FecError(f"frame size {frame_size} is out of range {k}..{MAX_FRAME_SIZE}")
    if block_size != fragment_size(frame_size, k, 0):
        raise FecError(
            f"block size {block_size} does not match {k} fragments of a {frame_size}-byte frame "
            f"({fragment_size(frame_size, k, 0)})"
        )
    n = k + m
    for num in present:
        if not 0 <= num < n:
            raise FecError(f"block number {num} is out of range 0..{n - 1}")
    sizes = [fragment_size(frame_size, k, i) for i in range(k)]
    blocks: list[bytes | memoryview] = []
    nums: list[int] = []
    for i in range(k):
        block = present.get(i)
        if block is not None:
            if len(block) != sizes[i]:
                raise FecError(f"data fragment {i} is {len(block)} bytes, expected {sizes[i]}")
            blocks.append(block)
            nums.append(i)
    if len(nums) == k:
        return [bytes(b) for b in blocks]
    for num in range(k, n):
        block = present.get(num)
        if block is not None:
            if len(block) != block_size:
                raise FecError(f"parity block {num - k} is {len(block)} bytes, expected {block_size}")
            blocks.append(block)
            nums.append(num)
            if len(nums) == k:
                break
    if len(nums) < k:
        raise FecError(f"only {len(nums)} of the {k} blocks needed are present")
    # Pad the short data fragments; zfec needs blocks of one length (it reorders this list in place, and
    # each call builds a fresh one).
    padded = [
        b if num >= k or len(b) == block_size else b"".join((b, bytes(block_size - len(b))))
        for b, num in zip(blocks, nums, strict=True)
    ]
    decoded = _decoder(k, n).decode(padded, nums)
    out: list[bytes] = []
    for i in range(k):
        block = present.get(i)
        out.append(bytes(block) if block is not None else decoded[i][: sizes[i]])
    return out


def overhead(data_count: int, parity_count: int) -> float:
    """Fraction of a frame's packets (and, as parity blocks are as long as the largest fragment, about of
    its bytes) spent on parity: ``m / (k + m)``. 0.0 for no parity."""
    total = data_count + parity_count
    return parity_count / total if total > 0 else 0.0


def _binomial_tail(n: int, q: float, j: int) -> float:
    """P[X > j] for X ~ Binomial(n, q), 0 ≤ q ≤ 1. Sums the lower terms from ``(1 − q)^n`` up, which does
    not underflow for q ≤ 0.5 and n ≤ 512; above 0.5 it counts the packets received instead."""
    if j >= n or q <= 0.0:
        return 0.0
    if j < 0:
        return 1.0
    if q > 0.5:
        # X > j  ⇔  n − X < n − j, and n − X ~ Binomial(n, 1 − q).
        return 1.0 - _binomial_tail(n, 1.0 - q, n - j - 1)
    term = (1.0 - q) ** n
    ratio = q / (1.0 - q)
    cdf = term
    for i in range(j):
        term *= (n - i) / (i + 1) * ratio
        cdf += term
    return max(0.0, 1.0 - cdf)


def residual_loss(
    data_count: int, parity_count: int, loss_fraction: float, burst_length: float = 1.0
) -> float:
    """Probability, under the policy's loss model, that a frame of ``data_count`` fragments sent with
    ``parity_count`` parity packets cannot be rebuilt (module docstring). Exact for ``burst_length`` 1
    (independent losses): ``P[Binomial(k + m, p) > m]``."""
    p = min(max(loss_fraction, 0.0), 1.0)
    burst = _burst(burst_length)
    return _binomial_tail(data_count + parity_count, p / burst, parity_count // burst)


def _burst(burst_length: float) -> int:
    """Burst length in packets, rounded half up and clamped to 1..MAX_BURST (NaN counts as 1)."""
    if not burst_length >= 1.5:
        return 1
    return min(MAX_BURST, math.floor(burst_length + 0.5))


@lru_cache(maxsize=4096)
def _min_parity(k: int, p: float, burst: int, target: float, floor: int, cap: int) -> int:
    """Smallest m in floor..cap with a residual loss below ``target`` at burst length ``burst``, the
    largest such m over burst lengths 1..burst (cap when none reaches the target)."""
    below = _min_parity(k, p, burst - 1, target, floor, cap) if burst > 1 else floor
    for m in range(floor, cap + 1):
        if _binomial_tail(k + m, p / burst, m // burst) < target:
            return max(below, m)
    return cap


@dataclass(frozen=True, slots=True)
class FecPolicy:
    """Chooses how many parity packets to add to a frame, from the measured loss (module docstring)."""

    target: float = 1e-3
    """Residual probability of losing a frame aimed for, 0 < target < 1."""
    zero_below: float = 1e-4
    """Loss fractions at or below this get no parity."""
    min_parity: int = 1
    """Fewest parity packets for a frame when the loss fraction is above ``zero_below``."""
    max_ratio: float = 0.5
    """Most parity packets as a fraction of the data fragments (rounded up), 0 < max_ratio ≤ 1."""

    def __post_init__(self) -> None:
        if not 0.0 < self.target < 1.0:
            raise ValueError(f"target {self.target} is out of range (0, 1)")
        if not 0.0 <= self.zero_below < 1.0:
            raise ValueError(f"zero_below {self.zero_below} is out of range [0, 1)")
        if self.min_parity < 0:
            raise ValueError(f"min_parity {self.min_parity} is negative")
        if not 0.0 < self.max_ratio <= 1.0:
            raise ValueError(f"max_ratio {self.max_ratio} is out of range (0, 1]")

    def max_parity(self, data_count: int) -> int:
        """The cap: ``min(⌈max_ratio · k⌉, 256 − k)``, 0 for ``k`` ≥ 256."""
        return max(0, min(math.ceil(self.max_ratio * data_count), MAX_FEC_BLOCKS - data_count))

    def parity_for(self, data_count: int, loss_fraction: float, burst_length: float = 1.0) -> int:
        """Parity packets to send with a frame of ``data_count`` data fragments when the measured packet
        loss fraction is ``loss_fraction`` (0..1) with mean burst length ``burst_length`` (packets, ≥ 1).

        Monotonic in the loss fraction and in the burst length; 0 at no loss; never above
        :meth:`max_parity`. Raises ValueError for ``data_count`` < 1. A NaN loss counts as none.
        """
        if data_count < 1:
            raise ValueError(f"data count {data_count} is below 1")
        if not loss_fraction > self.zero_below:
            return 0
        cap = self.max_parity(data_count)
        floor = min(self.min_parity, cap)
        if loss_fraction >= 0.5:
            return cap
        # Round up onto the grid: conservative, monotonic, and a small set of cache keys.
        step = math.ceil(math.log10(loss_fraction) * _LOSS_STEPS_PER_DECADE)
        p = min(0.5, 10.0 ** (step / _LOSS_STEPS_PER_DECADE))
        if p >= 0.5:
            return cap
        return _min_parity(data_count, p, _burst(burst_length), self.target, floor, cap)

    def overhead(self, data_count: int, loss_fraction: float, burst_length: float = 1.0) -> float:
        """Fraction of the bitrate a frame of ``data_count`` fragments spends on parity at this loss:
        ``overhead(data_count, parity_for(...))``. For the congestion controller, which leaves this share of
        its target rate to FEC."""
        return overhead(data_count, self.parity_for(data_count, loss_fraction, burst_length))
