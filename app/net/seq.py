"""Sequence-number arithmetic with wrap-around: the one place Doorway compares 32-bit counters.

Packet sequence numbers (per sender, over all packet types) and frame ids (per stream) are unsigned 32-bit
counters that wrap from 2**32 - 1 to 0. Comparing them with ``<`` is wrong near the wrap, so every comparison
in ``app/net`` goes through this module: serial-number arithmetic in the style of RFC 1982, an
:class:`Unwrapper` that maps wrapped values onto an unbounded integer line, a :class:`SequenceCounter` for
senders, and a :class:`ReplayWindow` (the sliding bitmap of DTLS and IPsec anti-replay) for receivers.

Theory of operation
-------------------
Two values ``a`` and ``b`` are compared through their signed distance ``seq_diff(a, b)``: the difference
``a - b`` modulo 2**32, mapped into ``[-2**31, 2**31)``. ``a`` is "after" ``b`` when the distance is
positive. This is only meaningful while the values being compared are less than 2**31 apart, which holds
with a wide margin for packets in flight (20,000 packets/s wraps 2**31 in 30 hours) and frames (60 fps wraps
it in 414 days). The one ambiguous distance, exactly 2**31, maps to -2**31: such a value counts as old.

The replay window remembers the highest sequence number accepted and a bitmap of the ``size`` numbers
below it. A number above the highest is new and slides the window forward; one inside the window is new
only if its bit is clear; one below the window (or exactly 2**31 away) is too old and is rejected.
"""

from __future__ import annotations

SEQ_BITS = 32
"""Width of packet sequence numbers and frame ids, in bits."""
SEQ_MODULUS = 1 << SEQ_BITS
"""Number of distinct sequence numbers (2**32)."""
SEQ_MASK = SEQ_MODULUS - 1
"""Bit mask that reduces an integer to a sequence number."""
_HALF = 1 << (SEQ_BITS - 1)


def seq_diff(a: int, b: int) -> int:
    """Signed shortest distance ``a - b`` modulo 2**32, in ``[-2**31, 2**31)``."""
    d = (a - b) & SEQ_MASK
    return d - SEQ_MODULUS if d >= _HALF else d


def seq_add(a: int, n: int) -> int:
    """``a + n`` modulo 2**32 (``n`` may be negative)."""
    return (a + n) & SEQ_MASK


def seq_lt(a: int, b: int) -> bool:
    """True when ``a`` comes before ``b`` (wrap-aware ``a < b``)."""
    return seq_diff(a, b) < 0


def seq_le(a: int, b: int) -> bool:
    """True when ``a`` comes before ``b`` or equals it (wrap-aware ``a <= b``)."""
    return seq_diff(a, b) <= 0


def seq_gt(a: int, b: int) -> bool:
    """True when ``a`` comes after ``b`` (wrap-aware ``a > b``)."""
    return seq_diff(a, b) > 0


def seq_ge(a: int, b: int) -> bool:
    """True when ``a`` comes after ``b`` or equals it (wrap-aware ``a >= b``)."""
    return seq_diff(a, b) >= 0


class Unwrapper:
    """Maps wrapped 32-bit values onto an unbounded integer line, continuing across each wrap.

    Each value is placed at the shortest distance from the previous one, so ``2**32 - 1`` followed by ``0``
    unwraps to ``2**32 - 1, 2**32``. The first value unwraps to itself; a value just before the first one
    unwraps to a negative number. Reordered values stay in order as long as they are within 2**31 of the
    previous value.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: int | None = None

    @property
    def last(self) -> int | None:
        """The most recent unwrapped value, or None before the first."""
        return self._last

    def unwrap(self, value: int) -> int:
        """The unwrapped position of ``value`` (0 ≤ value < 2**32)."""
        last = self._last
        out = value if last is None else last + seq_diff(value, last)
        self._last = out
        return out

    def reset(self) -> None:
        """Forget the history: the next value unwraps to itself."""
        self._last = None


class SequenceCounter:
    """A sender's 32-bit counter: each call returns the next value, wrapping to 0 after 2**32 - 1.

    Usable directly as the ``next_seq`` callable of :class:`app.net.fragment.Packetizer`. Not thread-safe:
    a counter shared between threads needs the caller's lock.
    """

    __slots__ = ("_next",)

    def __init__(self, start: int = 0) -> None:
        if not 0 <= start <= SEQ_MASK:
            raise ValueError(f"start {start} is not a 32-bit sequence number")
        self._next = start

    def __call__(self) -> int:
        value = self._next
        self._next = (value + 1) & SEQ_MASK
        return value

    def peek(self) -> int:
        """The value the next call will return."""
        return self._next


class ReplayWindow:
    """Anti-replay filter over 32-bit sequence numbers: a sliding bitmap of the last ``size`` numbers.

    ``check`` is side-effect free; ``update`` records a number as seen; ``check_and_update`` does both. Memory
    is one integer of ``size`` bits whatever the input.
    """

    __slots__ = ("_bits", "_highest", "_mask", "size")

    def __init__(self, size: int = 1024) -> None:
        if not 1 <= size <= _HALF:
            raise ValueError(f"replay window size {size} is out of range 1..{_HALF}")
        self.size = size
        self._mask = (1 << size) - 1
        self._highest: int | None = None
        # Bit i set: sequence number highest - i has been seen. Bit 0 is the highest itself.
        self._bits = 0

    @property
    def highest(self) -> int | None:
        """The highest sequence number accepted so far, or None before the first."""
        return self._highest

    def check(self, seq: int) -> bool:
        """True if ``seq`` is new: above the window, or inside it and not seen yet."""
        highest = self._highest
        if highest is None:
            return True
        d = seq_diff(seq, highest)
        if d > 0:
            return True
        if -d >= self.size:
            return False
        return not (self._bits >> -d) & 1

    def update(self, seq: int) -> None:
        """Record ``seq`` as seen. Call only after :meth:`check` returned True."""
        highest = self._highest
        if highest is None:
            self._highest = seq
            self._bits = 1
            return
        d = seq_diff(seq, highest)
        if d > 0:
            self._bits = ((self._bits << d) | 1) & self._mask if d < self.size else 1
            self._highest = seq
        elif -d < self.size:
            self._bits |= 1 << -d

    def check_and_update(self, seq: int) -> bool:
        """Record ``seq`` and return True if it is new; return False for a replay or a too-old number."""
        if not self.check(seq):
            return False
        self.update(seq)
        return True

    def reset(self) -> None:
        """Forget everything seen (for a new sender session or key epoch)."""
        self._highest = None
        self._bits = 0
