"""The receiver's frame jitter buffer: decides which complete frames go to the decoder, and when (sans-I/O).

Complete frames arrive from the :class:`app.net.fragment.Assembler` in any order. The decoder needs an
unbroken chain: the encoder uses one reference frame, so P frame N decodes only right after frame N - 1,
while a keyframe decodes on its own and restarts the chain. This buffer releases every frame the moment it
is decodable, holds frames whose predecessor is still missing, and gives up on gaps quickly, because for a
live doorway a late picture is worth less than a fresh keyframe. No clocks: ``now_ns`` (CLOCK_MONOTONIC
nanoseconds, non-decreasing) is passed in.

Theory of operation
-------------------
State: the id of the last released frame ``L``; whether the chain is intact (``L`` and everything before
it back to a keyframe was released); the held frames, in the order they were held; and a bounded set of
frame ids reported lost by the assembler.

1. A frame at or before ``L`` (wrap-aware, :mod:`app.net.seq`), or one already held, is dropped as ``late``.
2. A keyframe after ``L`` is released at once: held frames older than it are discarded (``skipped``),
   the chain becomes intact and ``keyframe_needed`` is cleared. This is also how a receiver that has
   fallen behind catches up: it jumps to the newest keyframe instead of working through a queue.
3. A P frame ``L + 1`` on an intact chain is released at once.
4. Any other P frame is held. If the chain is broken (at start, or after a loss) it can only become
   decodable through a keyframe that precedes it, so ``keyframe_needed`` is raised.
5. After each release, held frames ``L + 1, L + 2, ...`` are released in order while present.
6. The chain breaks when the frame it waits for (``L + 1``) is lost: the assembler reported it lost
   (:meth:`JitterBuffer.mark_lost`), or the oldest held frame has waited longer than ``gap_timeout_ns``,
   or more than ``max_held`` frames are waiting. Then every held frame is dropped (they all depend on the
   lost one), ``lost_gaps`` counts it and ``keyframe_needed`` is raised. Nothing is released until a
   keyframe arrives (rule 2).
7. While the chain is broken, held frames that waited longer than ``gap_timeout_ns`` are dropped: a
   keyframe that precedes them would have arrived by then. Over ``max_held``, the oldest is dropped.

So released frame ids strictly increase, and each released P frame directly follows the frame released
before it. ``keyframe_needed`` is a flag: raised by rules 4 and 6, cleared by rule 2 or by the caller
(:meth:`JitterBuffer.clear_keyframe_needed`); rule 4 raises it again while the chain stays broken, so a lost
keyframe request is repeated naturally.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from app.net.fragment import AssembledFrame
from app.net.seq import seq_add, seq_diff


@dataclass(slots=True)
class JitterCounters:
    """What the jitter buffer has done since it was created (or reset). Counts of frames unless noted."""

    released: int = 0
    """Frames handed to the decoder."""
    held: int = 0
    """Frames that had to wait (for a predecessor or for a keyframe)."""
    skipped: int = 0
    """Held frames discarded because a newer keyframe was released."""
    dropped: int = 0
    """Held frames discarded: the chain broke, they waited too long for a keyframe, or over capacity."""
    lost_gaps: int = 0
    """Times the chain broke because a frame was lost (events)."""
    late: int = 0
    """Frames dropped because they were at or before the last released frame, or already held."""
    keyframes_needed: int = 0
    """Times ``keyframe_needed`` went from False to True (events)."""


class JitterBuffer:
    """Releases complete frames of one stream to the decoder in decodable order (see the module docstring)."""

    def __init__(self, gap_timeout_ns: int, max_held: int = 128, max_lost_ids: int = 256) -> None:
        """``gap_timeout_ns``: how long a frame may wait for its predecessor (the engine passes the frame
        deadline). ``max_held``: most frames held; ``max_lost_ids``: most lost frame ids remembered."""
        if gap_timeout_ns < 0:
            raise ValueError(f"gap_timeout_ns {gap_timeout_ns} is negative")
        if max_held < 1:
            raise ValueError(f"max_held {max_held} must be at least 1")
        if max_lost_ids < 1:
            raise ValueError(f"max_lost_ids {max_lost_ids} must be at least 1")
        self.gap_timeout_ns = gap_timeout_ns
        self.max_held = max_held
        self.max_lost_ids = max_lost_ids
        self.counters = JitterCounters()
        self._last: int | None = None
        self._chain_ok = False
        self._keyframe_needed = False
        # frame id -> (frame, ns when held); insertion order is hold order, so the first entry waited longest.
        self._held: dict[int, tuple[AssembledFrame, int]] = {}
        # An ordered set (values unused) of ids the assembler gave up, not yet passed by the chain.
        self._lost: dict[int, None] = {}

    @property
    def keyframe_needed(self) -> bool:
        """True when the receiver should ask its peer for a keyframe (see rules 4 and 6)."""
        return self._keyframe_needed

    def clear_keyframe_needed(self) -> None:
        """Acknowledge ``keyframe_needed`` (the caller has asked for a keyframe)."""
        self._keyframe_needed = False

    @property
    def waiting_for_keyframe(self) -> bool:
        """True while the chain is broken (or nothing was released yet): only a keyframe can be released."""
        return not self._chain_ok

    @property
    def last_released(self) -> int | None:
        """Id of the last frame released, or None before the first."""
        return self._last

    @property
    def held_count(self) -> int:
        """Frames held now."""
        return len(self._held)

    def counters_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for statistics snapshots)."""
        return asdict(self.counters)

    def push(self, frame: AssembledFrame, now_ns: int) -> list[AssembledFrame]:
        """Take one complete frame; return the frames now decodable, in decoding order (often just it)."""
        out: list[AssembledFrame] = []
        frame_id = frame.frame_id
        last = self._last
        if (last is not None and seq_diff(frame_id, last) <= 0) or frame_id in self._held:
            self.counters.late += 1
        elif frame.keyframe:
            self._jump(frame, out)
        elif self._chain_ok and last is not None and frame_id == seq_add(last, 1):
            self._release(frame, out)
            self._drain(out)
        else:
            self._hold(frame, now_ns)
        self._expire_held(now_ns)
        return out

    def poll(self, now_ns: int) -> list[AssembledFrame]:
        """Apply the timeouts (rules 6 and 7). Returns the frames this releases, which in version 1 is none:
        a timeout only ever breaks the chain. Call it every few ms, and after :meth:`mark_lost`."""
        self._expire_held(now_ns)
        return []

    def mark_lost(self, frame_id: int) -> None:
        """The assembler gave up ``frame_id``: it will never arrive complete."""
        last = self._last
        if (last is not None and seq_diff(frame_id, last) <= 0) or frame_id in self._held:
            return
        if self._chain_ok and last is not None and frame_id == seq_add(last, 1):
            self._break_chain(lost=True)
            return
        lost = self._lost
        lost[frame_id] = None
        if len(lost) > self.max_lost_ids:
            del lost[next(iter(lost))]

    def break_chain(self) -> None:
        """The decoder failed on the last released frame: wait for a keyframe (held frames are dropped)."""
        if self._chain_ok:
            self._break_chain(lost=False)
        else:
            self._need_keyframe()

    def reset(self) -> None:
        """Back to the starting state (the peer restarted); counters are kept."""
        self._last = None
        self._chain_ok = False
        self._keyframe_needed = False
        self._held.clear()
        self._lost.clear()

    def _release(self, frame: AssembledFrame, out: list[AssembledFrame]) -> None:
        self._last = frame.frame_id
        self.counters.released += 1
        out.append(frame)

    def _drain(self, out: list[AssembledFrame]) -> None:
        """Release held successors of the last released frame (rule 5); break if the next one is lost."""
        held = self._held
        last = self._last
        while last is not None:
            nxt = seq_add(last, 1)
            entry = held.pop(nxt, None)
            if entry is None:
                if nxt in self._lost:
                    self._break_chain(lost=True)
                return
            self._release(entry[0], out)
            last = nxt

    def _jump(self, keyframe: AssembledFrame, out: list[AssembledFrame]) -> None:
        """Rule 2: release a keyframe newer than everything released, discarding what it supersedes."""
        key_id = keyframe.frame_id
        held = self._held
        older = [fid for fid in held if seq_diff(fid, key_id) < 0]
        for fid in older:
            del held[fid]
        self.counters.skipped += len(older)
        for fid in [fid for fid in self._lost if seq_diff(fid, key_id) <= 0]:
            del self._lost[fid]
        self._chain_ok = True
        self._keyframe_needed = False
        self._release(keyframe, out)
        self._drain(out)

    def _hold(self, frame: AssembledFrame, now_ns: int) -> None:
        """Rule 4, with the capacity part of rules 6 and 7."""
        held = self._held
        held[frame.frame_id] = (frame, now_ns)
        self.counters.held += 1
        if not self._chain_ok:
            self._need_keyframe()
            if len(held) > self.max_held:
                del held[next(iter(held))]
                self.counters.dropped += 1
        elif len(held) > self.max_held or (self._last is not None and seq_add(self._last, 1) in self._lost):
            self._break_chain(lost=True)

    def _expire_held(self, now_ns: int) -> None:
        """The timeout parts of rules 6 and 7."""
        held = self._held
        if not held:
            return
        timeout = self.gap_timeout_ns
        if now_ns - next(iter(held.values()))[1] <= timeout:
            return
        if self._chain_ok:
            self._break_chain(lost=True)
            return
        stale = [fid for fid, (_, since) in held.items() if now_ns - since > timeout]
        for fid in stale:
            del held[fid]
        self.counters.dropped += len(stale)
        self._need_keyframe()

    def _break_chain(self, *, lost: bool) -> None:
        self._chain_ok = False
        if lost:
            self.counters.lost_gaps += 1
        self.counters.dropped += len(self._held)
        self._held.clear()
        self._need_keyframe()

    def _need_keyframe(self) -> None:
        if not self._keyframe_needed:
            self._keyframe_needed = True
            self.counters.keyframes_needed += 1
