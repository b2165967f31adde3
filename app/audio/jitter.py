"""The audio jitter buffer's packet store: encoded 10 ms frames put back in order, each played once.

Why our own: audio arrives in :class:`~app.net.protocol.AudioPacket`\\ s that carry their frame and up to
three earlier ones (redundancy), on our own transport; what to do with each frame — decode it the moment it
arrives, wait, or give it up — depends on the playout clock and the sound card, which
:mod:`app.audio.playout` and the engine own. This module is only the ordered store, with no clock and no
I/O, so every rule is tested with plain integers.

Theory of operation: frames are numbered by the sender's 16-bit ``audio_seq``, unwrapped here onto an
unbounded line relative to the next frame to play (``next``). A frame is

- *stored* when it lies in ``[next, next + capacity)`` and is not there yet;
- a *duplicate* when it is already stored (a redundant copy of a frame that arrived, or a network
  duplicate), and dropped;
- *late* when it lies before ``next`` (it was played, concealed or given up), and dropped (counted as
  ``late`` for a primary frame, ``stale_copies`` for a redundant copy of one, the usual case);
- a *resync* when it lies beyond the window (or far behind it, more than ``capacity``): the sender
  restarted or we fell far behind; everything stored is dropped and ``next`` moves to it.

:meth:`AudioJitterBuffer.pop` takes the frame at ``next`` if present (``"frame"``), or says why not:
``"missing"`` (a later frame is here, so this one is lost or reordered) or ``"empty"`` (nothing stored);
:meth:`skip` gives a missing frame up. The first frame after construction or :meth:`reset` sets ``next``.
Thread: no locking inside; the engine holds its audio lock around every call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

_SEQ_MOD = 1 << 16
_SEQ_HALF = 1 << 15


def seq16_diff(a: int, b: int) -> int:
    """Signed distance ``a − b`` between two 16-bit frame numbers, in ``[−2**15, 2**15)``."""
    d = (a - b) & (_SEQ_MOD - 1)
    return d - _SEQ_MOD if d >= _SEQ_HALF else d


@dataclass(slots=True)
class StoredFrame:
    """One encoded frame waiting to be played."""

    seq: int
    """16-bit frame number."""
    capture_us: int
    """Sender's CLOCK_MONOTONIC µs of the frame's first sample."""
    payload: bytes
    arrival_ns: int
    """Our CLOCK_MONOTONIC ns when it arrived."""
    redundant: bool
    """It arrived as a copy inside a later frame's packet."""


PutResult = Literal["stored", "duplicate", "late", "resync"]
PopKind = Literal["frame", "missing", "empty"]


class AudioJitterBuffer:
    """Ordered store of encoded frames, ``capacity`` frames wide (the most that may wait: 64 = 640 ms)."""

    def __init__(self, capacity: int = 64) -> None:
        if not 4 <= capacity <= 1024:
            raise ValueError(f"capacity must be 4..1024 frames, got {capacity}")
        self.capacity = capacity
        self._frames: dict[int, StoredFrame] = {}
        self._next: int | None = None
        self.counters: dict[str, int] = {
            "stored": 0,
            "stored_redundant": 0,
            "duplicates": 0,
            "late": 0,
            "stale_copies": 0,
            "resyncs": 0,
            "skipped": 0,
            "popped": 0,
        }

    @property
    def next_seq(self) -> int | None:
        """The frame number to play next; None before the first frame."""
        return self._next

    def __len__(self) -> int:
        return len(self._frames)

    def put(
        self, seq: int, capture_us: int, payload: bytes, arrival_ns: int, *, redundant: bool = False
    ) -> PutResult:
        """Offer frame ``seq`` (16 bits). Returns what became of it (see the module docstring)."""
        seq &= _SEQ_MOD - 1
        if self._next is None:
            self._next = seq
        ahead = seq16_diff(seq, self._next)
        if ahead < 0:
            if ahead < -self.capacity:
                return self._resync(seq, capture_us, payload, arrival_ns, redundant)
            # A copy of a frame already played is what redundancy normally is; a first copy this late is not.
            self.counters["stale_copies" if redundant else "late"] += 1
            return "late"
        if ahead >= self.capacity:
            return self._resync(seq, capture_us, payload, arrival_ns, redundant)
        if seq in self._frames:
            self.counters["duplicates"] += 1
            return "duplicate"
        self._frames[seq] = StoredFrame(seq, capture_us, payload, arrival_ns, redundant)
        self.counters["stored_redundant" if redundant else "stored"] += 1
        return "stored"

    def _resync(
        self, seq: int, capture_us: int, payload: bytes, arrival_ns: int, redundant: bool
    ) -> PutResult:
        self.counters["resyncs"] += 1
        self._frames.clear()
        self._next = seq
        self._frames[seq] = StoredFrame(seq, capture_us, payload, arrival_ns, redundant)
        return "resync"

    def peek(self) -> StoredFrame | None:
        """The frame at ``next`` if it is here."""
        return None if self._next is None else self._frames.get(self._next)

    def pop(self) -> tuple[PopKind, StoredFrame | None]:
        """Take the frame at ``next`` (``("frame", f)``, and ``next`` moves on), or say why there is none:
        ``("missing", None)`` when a later frame is stored, ``("empty", None)`` when nothing is."""
        if self._next is None or not self._frames:
            return "empty", None
        frame = self._frames.pop(self._next, None)
        if frame is None:
            return "missing", None
        self._next = (self._next + 1) & (_SEQ_MOD - 1)
        self.counters["popped"] += 1
        return "frame", frame

    def skip(self) -> None:
        """Give up the frame at ``next`` (it was concealed): ``next`` moves on; a late copy is dropped."""
        if self._next is None:
            return
        self._frames.pop(self._next, None)
        self._next = (self._next + 1) & (_SEQ_MOD - 1)
        self.counters["skipped"] += 1

    def following(self) -> StoredFrame | None:
        """The frame right after ``next``, if stored (for decoding in-band FEC of a missing frame)."""
        if self._next is None:
            return None
        return self._frames.get((self._next + 1) & (_SEQ_MOD - 1))

    def span(self) -> int:
        """Frames from ``next`` to the newest stored frame, inclusive (0 when empty)."""
        if self._next is None or not self._frames:
            return 0
        return 1 + max(seq16_diff(s, self._next) for s in self._frames)

    def reset(self) -> None:
        """Forget everything; the next frame put sets ``next`` afresh."""
        self._frames.clear()
        self._next = None

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "buffered_frames": len(self._frames)}
