"""NACK-based retransmission: which lost fragments a receiver asks for, and which a sender resends (sans-I/O).

Doorway recovers from loss in three steps, cheapest in latency first: per-frame FEC repairs most random loss
without any delay; a NACK asks the sender to resend the fragments FEC could not make up, but only when the
answer can arrive before the frame's deadline (a late retransmission is wasted bandwidth); and when neither
works the jitter buffer asks for a keyframe. This module is the middle step. The receiver's
:class:`NackTracker` decides which fragment indices to request and when; the sender's
:class:`RetransmitBuffer` keeps recently sent data fragments and answers NACKs from it, within hard limits,
because a NACK is network input and may be hostile. Neither touches a socket or a clock: times are passed in
as ``now_ns`` (CLOCK_MONOTONIC nanoseconds), and both work with plain frame ids and index tuples, so the
engine maps them onto whatever NACK packet layout the protocol defines.

Theory of operation
-------------------
**Receiver** (one :class:`NackTracker` per stream). The engine reports every packet of an incomplete frame
(:meth:`NackTracker.on_fragment`, with what the assembler says is still missing), every completed frame and
every frame given up. A frame's deadline is its first packet's arrival plus ``deadline_ns``. On each
:meth:`NackTracker.poll` a tracked frame is NACKed when all of these hold:

1. Its loss is evident: a packet of a newer frame has arrived (fragments of one frame are sent in order,
   before the next frame, so the stragglers are lost, or at worst reordered), or ``reorder_ns`` have
   passed since the frame's last packet (a tail loss shows no newer packet until the next frame).
2. The answer can still help: ``now + rtt + margin_ns < deadline``. Otherwise the frame is left to FEC or
   the keyframe request and counted once in ``nack_skipped_deadline``; the deadline only comes closer, so
   it is never reconsidered.
3. It still needs something: ``still_needed > 0``. With FEC parity in flight, fewer fragments than the
   missing data may complete the frame, so the NACK lists the ``still_needed`` lowest missing data
   indices, at most ``max_indices``.

After a NACK the frame waits ``max(retry_factor × rtt, min_retry_ns)`` (so at most one NACK per frame per
round trip); if it is still incomplete then, it is NACKed again with what is missing by then (the request
or the retransmission was lost), at most ``max_retries`` times, each again subject to rule 2. When the
retries are spent the frame is left alone (``retries_exhausted``). State is bounded: at most
``max_frames`` frames are tracked (the oldest is forgotten first), and the last ``finished_ids`` completed,
abandoned or forgotten ids are remembered so a stale report cannot bring a frame back.

**Sender** (one :class:`RetransmitBuffer` per stream). Each frame's data fragments are stored after they
are sent, keyed by frame id; the buffer keeps at most ``max_frames`` frames and ``max_bytes`` bytes, oldest
dropped first, and forgets frames older than ``max_age_ns``. A NACK is answered fragment by fragment, in the
order requested: an unknown or forgotten frame, or an index that was not stored, is ignored
(``ignored_unknown``); a fragment already resent ``max_per_fragment`` times, or the indices beyond
``max_indices`` in one NACK, are ignored (``ignored_limit``); a fragment resent less than ``dedup_ns`` ago
is ignored (``ignored_duplicate``: a duplicated NACK must not spend its retries); and a token bucket
(:class:`app.net.pacer.TokenBucketPacer`) of ``burst_bytes`` filling at ``rate_fraction`` × the target
bitrate drops what exceeds it (``ignored_rate``). So over any interval the bytes resent are at most
``burst_bytes + rate_fraction × bitrate × time``, whatever the peer sends, and the work per NACK is at most
``max_indices`` dictionary lookups. Retransmitted packet sizes count the media packet on the wire (32-byte
media header plus payload), not UDP/IP overhead.

Frame ids are compared only through :mod:`app.net.seq`, so everything works across the wrap at 2**32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import islice

from app.net.pacer import TokenBucketPacer
from app.net.protocol import MAX_FRAGMENTS, MEDIA_HEADER_SIZE, MediaPacket
from app.net.seq import seq_gt

MAX_NACK_INDICES = 256
"""Most fragment indices one NACK carries."""


@dataclass(slots=True)
class NackCounters:
    """What a :class:`NackTracker` has done since it was created (or reset). Counts of frames unless noted."""

    nacks_sent: int = 0
    """NACKs returned by :meth:`NackTracker.poll`, first requests and retries (NACKs)."""
    fragments_requested: int = 0
    """Fragment indices listed in those NACKs (fragments)."""
    retries: int = 0
    """NACKs that repeated an earlier NACK for the same frame (NACKs)."""
    nack_skipped_deadline: int = 0
    """Frames whose NACK was due but could no longer arrive before the deadline (rtt + margin too long)."""
    retries_exhausted: int = 0
    """Frames still incomplete a retry interval after their last permitted NACK."""
    frames_recovered_by_nack: int = 0
    """Frames completed after at least one NACK (or, when the engine says so, by a retransmitted fragment)."""
    frames_abandoned: int = 0
    """Tracked frames given up by the assembler."""
    frames_forgotten: int = 0
    """Tracked frames dropped to stay within ``max_frames``."""


class _Frame:
    """What the tracker knows about one incomplete frame. Times in ns."""

    __slots__ = (
        "data_count",
        "done",
        "first_ns",
        "last_nack_ns",
        "last_ns",
        "missing",
        "nacks",
        "still_needed",
    )

    def __init__(self, now_ns: int) -> None:
        self.first_ns = now_ns
        self.last_ns = now_ns
        self.data_count = 0
        self.still_needed = 0
        self.missing: tuple[int, ...] = ()
        self.nacks = 0
        self.last_nack_ns = 0
        # No more NACKs for this frame: past its deadline or out of retries.
        self.done = False


class NackTracker:
    """Decides which fragments of one stream's incomplete frames to NACK, and when (module docstring)."""

    def __init__(
        self,
        deadline_ns: int,
        *,
        reorder_ns: int = 3_000_000,
        margin_ns: int = 2_000_000,
        retry_factor: float = 1.2,
        min_retry_ns: int = 2_000_000,
        max_retries: int = 2,
        max_indices: int = MAX_NACK_INDICES,
        max_frames: int = 64,
        finished_ids: int = 256,
    ) -> None:
        """``deadline_ns``: how long after a frame's first packet a retransmission is still useful (at most
        the assembler's deadline). ``reorder_ns``: how long after a frame's last packet its missing
        fragments count as lost when no newer frame has shown up; keep it above the pacer's gap between two
        packets. ``margin_ns``: slack on top of the RTT for the sender to answer. A retry follows
        ``max(retry_factor × rtt, min_retry_ns)`` after the previous NACK; keep ``min_retry_ns`` above the
        sender's ``dedup_ns``. At most ``max_retries`` retries and ``max_indices`` indices per NACK;
        ``max_frames`` frames tracked, ``finished_ids`` finished ids remembered."""
        if deadline_ns <= 0:
            raise ValueError(f"deadline_ns {deadline_ns} must be positive")
        if reorder_ns < 0 or margin_ns < 0 or min_retry_ns < 0:
            raise ValueError("reorder_ns, margin_ns and min_retry_ns must not be negative")
        if not (math.isfinite(retry_factor) and retry_factor >= 1.0):
            raise ValueError(f"retry_factor {retry_factor} must be at least 1")
        if max_retries < 0:
            raise ValueError(f"max_retries {max_retries} must not be negative")
        if not 1 <= max_indices <= MAX_NACK_INDICES:
            raise ValueError(f"max_indices {max_indices} is out of range 1..{MAX_NACK_INDICES}")
        if max_frames < 1:
            raise ValueError(f"max_frames {max_frames} must be at least 1")
        if finished_ids < max_frames:
            raise ValueError(f"finished_ids {finished_ids} is below max_frames {max_frames}")
        self.deadline_ns = deadline_ns
        self.reorder_ns = reorder_ns
        self.margin_ns = margin_ns
        self.retry_factor = retry_factor
        self.min_retry_ns = min_retry_ns
        self.max_retries = max_retries
        self.max_indices = max_indices
        self.max_frames = max_frames
        self.finished_ids = finished_ids
        self.counters = NackCounters()
        # Insertion order is first-report order, so the first entry is the oldest frame.
        self._frames: dict[int, _Frame] = {}
        # An ordered set (values unused) of recently completed, abandoned or forgotten frame ids.
        self._finished: dict[int, None] = {}
        self._newest: int | None = None

    @property
    def tracked(self) -> int:
        """Frames tracked now (incomplete, reported through :meth:`on_fragment`)."""
        return len(self._frames)

    def counters_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for statistics snapshots)."""
        return asdict(self.counters)

    def on_fragment(
        self, frame_id: int, now_ns: int, *, data_count: int, still_needed: int, missing: Sequence[int]
    ) -> None:
        """A packet of frame ``frame_id`` arrived at ``now_ns`` and the frame is still incomplete.

        ``data_count``: the frame's data fragments; ``still_needed``: how many more fragments (data or
        parity) complete it; ``missing``: the data fragment indices not yet held. Pass a tuple: it is kept
        without copying. Reports for a frame already completed, abandoned or forgotten are ignored.
        """
        if frame_id in self._finished:
            return
        newest = self._newest
        if newest is None or seq_gt(frame_id, newest):
            self._newest = frame_id
        frame = self._frames.get(frame_id)
        if frame is None:
            frame = _Frame(now_ns)
            self._frames[frame_id] = frame
            if len(self._frames) > self.max_frames:
                oldest = next(iter(self._frames))
                del self._frames[oldest]
                self._finish(oldest)
                self.counters.frames_forgotten += 1
        elif now_ns > frame.last_ns:
            frame.last_ns = now_ns
        frame.data_count = data_count
        frame.still_needed = still_needed
        # tuple() of a tuple is the same object, so the usual case costs nothing per packet.
        frame.missing = tuple(missing)

    def on_complete(self, frame_id: int, *, by_retransmit: bool | None = None) -> None:
        """Frame ``frame_id`` is complete. Call it for every completed frame, also those never reported
        through :meth:`on_fragment` (a one-fragment frame): a newer frame is evidence of loss in older ones.
        ``by_retransmit``: whether a retransmitted fragment completed it, when the engine knows; otherwise
        any frame completed after a NACK counts as recovered by it."""
        newest = self._newest
        if newest is None or seq_gt(frame_id, newest):
            self._newest = frame_id
        frame = self._frames.pop(frame_id, None)
        if frame is None:
            return
        self._finish(frame_id)
        recovered = frame.nacks > 0 if by_retransmit is None else by_retransmit
        if recovered:
            self.counters.frames_recovered_by_nack += 1

    def on_abandoned(self, frame_id: int) -> None:
        """The assembler gave frame ``frame_id`` up (expired or evicted): stop tracking it."""
        if self._frames.pop(frame_id, None) is None:
            return
        self._finish(frame_id)
        self.counters.frames_abandoned += 1

    def retry_interval_ns(self, rtt_ns: int) -> int:
        """How long a frame waits after a NACK before the next one, for a round-trip time ``rtt_ns``."""
        return max(self.min_retry_ns, math.ceil(max(rtt_ns, 0) * self.retry_factor))

    def poll(self, now_ns: int, rtt_ns: int) -> list[tuple[int, tuple[int, ...]]]:
        """The NACKs to send now: (frame id, ascending data fragment indices), oldest frame first.

        ``rtt_ns``: the current smoothed round-trip time, ns. Call it after each batch of packets and on a
        timer (:meth:`next_poll_ns` says when).
        """
        rtt = max(rtt_ns, 0)
        retry_ns = self.retry_interval_ns(rtt)
        newest = self._newest
        counters = self.counters
        out: list[tuple[int, tuple[int, ...]]] = []
        for frame_id, frame in self._frames.items():
            if frame.done or frame.still_needed <= 0:
                continue
            if frame.nacks == 0:
                evident = (newest is not None and seq_gt(newest, frame_id)) or (
                    now_ns - frame.last_ns >= self.reorder_ns
                )
                if not evident:
                    continue
            elif now_ns - frame.last_nack_ns < retry_ns:
                continue
            elif frame.nacks > self.max_retries:
                frame.done = True
                counters.retries_exhausted += 1
                continue
            if now_ns + rtt + self.margin_ns >= frame.first_ns + self.deadline_ns:
                frame.done = True
                counters.nack_skipped_deadline += 1
                continue
            indices = self._pick(frame)
            if not indices:
                continue
            if frame.nacks:
                counters.retries += 1
            frame.nacks += 1
            frame.last_nack_ns = now_ns
            counters.nacks_sent += 1
            counters.fragments_requested += len(indices)
            out.append((frame_id, indices))
        return out

    def next_poll_ns(self, rtt_ns: int) -> int | None:
        """The earliest time (ns) at which :meth:`poll` may have something to do, or None when nothing is
        pending. May be in the past: then poll now."""
        retry_ns = self.retry_interval_ns(rtt_ns)
        newest = self._newest
        due: int | None = None
        for frame_id, frame in self._frames.items():
            if frame.done or frame.still_needed <= 0:
                continue
            if frame.nacks:
                t = frame.last_nack_ns + retry_ns
            elif newest is not None and seq_gt(newest, frame_id):
                t = frame.last_ns
            else:
                t = frame.last_ns + self.reorder_ns
            if due is None or t < due:
                due = t
        return due

    def reset(self) -> None:
        """Forget every frame (the peer restarted); counters are kept."""
        self._frames.clear()
        self._finished.clear()
        self._newest = None

    def _pick(self, frame: _Frame) -> tuple[int, ...]:
        """The lowest ``still_needed`` valid missing indices, at most ``max_indices``."""
        count = min(frame.data_count, MAX_FRAGMENTS)
        valid = sorted({i for i in frame.missing if 0 <= i < count})
        return tuple(valid[: min(frame.still_needed, self.max_indices)])

    def _finish(self, frame_id: int) -> None:
        finished = self._finished
        finished[frame_id] = None
        if len(finished) > self.finished_ids:
            del finished[next(iter(finished))]


@dataclass(slots=True)
class RetransmitCounters:
    """What a :class:`RetransmitBuffer` has done since it was created. Counts of fragments unless noted."""

    frames_stored: int = 0
    """Frames stored (frames)."""
    frames_too_big: int = 0
    """Frames not stored because they alone exceed ``max_bytes`` (frames)."""
    nacks_received: int = 0
    """NACKs handed to :meth:`RetransmitBuffer.on_nack` (NACKs)."""
    retransmitted_packets: int = 0
    """Fragments returned for resending."""
    retransmitted_bytes: int = 0
    """Their size on the wire: media header plus payload (bytes)."""
    ignored_unknown: int = 0
    """Requested fragments of frames not held (never stored, dropped or too old), or indices not stored."""
    ignored_limit: int = 0
    """Requested fragments already resent ``max_per_fragment`` times, or beyond ``max_indices`` in a NACK."""
    ignored_duplicate: int = 0
    """Requested fragments resent less than ``dedup_ns`` earlier."""
    ignored_rate: int = 0
    """Requested fragments over the retransmission rate limit."""


class _Stored:
    """One stored frame: its data fragments by index, and what was resent of it."""

    __slots__ = ("nbytes", "packets", "resent", "stored_ns")

    def __init__(self, packets: list[MediaPacket | None], nbytes: int, stored_ns: int) -> None:
        self.packets = packets
        self.nbytes = nbytes
        self.stored_ns = stored_ns
        # Fragment index -> (times resent, when last resent in ns); only resent indices have an entry.
        self.resent: dict[int, tuple[int, int]] = {}


class RetransmitBuffer:
    """Keeps one stream's recently sent data fragments and answers NACKs within limits (see the module
    docstring)."""

    def __init__(
        self,
        rate_bps: float,
        *,
        rate_fraction: float = 0.25,
        burst_bytes: int = 32 * 1024,
        max_frames: int = 120,
        max_bytes: int = 8 * 1024 * 1024,
        max_age_ns: int = 500_000_000,
        max_per_fragment: int = 2,
        dedup_ns: int = 1_000_000,
        max_indices: int = MAX_NACK_INDICES,
    ) -> None:
        """``rate_bps``: the current target bitrate, bits/s; retransmissions may use ``rate_fraction`` of it
        with a burst of ``burst_bytes``. At most ``max_frames`` frames and ``max_bytes`` bytes (media
        header plus payload) are kept, none older than ``max_age_ns``. Each fragment is resent at most
        ``max_per_fragment`` times and not twice within ``dedup_ns``; one NACK is read up to
        ``max_indices`` indices."""
        if not (math.isfinite(rate_fraction) and 0 < rate_fraction <= 1):
            raise ValueError(f"rate_fraction {rate_fraction} is out of range (0, 1]")
        if max_frames < 1 or max_bytes < 1:
            raise ValueError("max_frames and max_bytes must be at least 1")
        if max_age_ns <= 0:
            raise ValueError(f"max_age_ns {max_age_ns} must be positive")
        if max_per_fragment < 0 or dedup_ns < 0:
            raise ValueError("max_per_fragment and dedup_ns must not be negative")
        if not 1 <= max_indices <= MAX_NACK_INDICES:
            raise ValueError(f"max_indices {max_indices} is out of range 1..{MAX_NACK_INDICES}")
        self.rate_fraction = rate_fraction
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.max_age_ns = max_age_ns
        self.max_per_fragment = max_per_fragment
        self.dedup_ns = dedup_ns
        self.max_indices = max_indices
        self.counters = RetransmitCounters()
        # The bucket raises ValueError for a rate that is not positive and finite, and for burst_bytes < 1.
        self._bucket = TokenBucketPacer(rate_bps * rate_fraction, burst_bytes)
        # Insertion order is store order, so the first entry is the oldest frame.
        self._frames: dict[int, _Stored] = {}
        self._bytes = 0

    @property
    def frames(self) -> int:
        """Frames held now."""
        return len(self._frames)

    @property
    def buffered_bytes(self) -> int:
        """Bytes held now (media header plus payload of each stored fragment)."""
        return self._bytes

    @property
    def rate_bps(self) -> float:
        """The retransmission rate limit, bits/s (``rate_fraction`` × the target bitrate)."""
        return self._bucket.rate_bps

    def counters_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for statistics snapshots)."""
        return asdict(self.counters)

    def set_rate(self, bps: float, now_ns: int | None = None) -> None:
        """Follow a target bitrate change (bits/s). With ``now_ns`` the budget earned so far is credited at
        the old rate first."""
        self._bucket.set_rate(bps * self.rate_fraction, now_ns)

    def store(self, frame_id: int, packets: Sequence[MediaPacket], now_ns: int) -> None:
        """Remember the data fragments of frame ``frame_id``, sent at ``now_ns``. The packets (and their
        payload buffers) are kept by reference, so they must not change afterwards. A frame id stored again
        replaces the earlier frame. Raises ValueError for a packet of another frame or an index beyond its
        fragment count."""
        self._expire(now_ns)
        if not packets:
            return
        count = packets[0].fragment_count
        slots: list[MediaPacket | None] = [None] * count
        nbytes = 0
        for pkt in packets:
            if pkt.frame_id != frame_id or not 0 <= pkt.fragment_index < count:
                raise ValueError(
                    f"packet of frame {pkt.frame_id}, fragment {pkt.fragment_index} does not belong to frame "
                    f"{frame_id} of {count} fragments"
                )
            if slots[pkt.fragment_index] is None:
                nbytes += MEDIA_HEADER_SIZE + len(pkt.payload)
            slots[pkt.fragment_index] = pkt
        old = self._frames.pop(frame_id, None)
        if old is not None:
            self._bytes -= old.nbytes
        if nbytes > self.max_bytes:
            self.counters.frames_too_big += 1
            return
        self._frames[frame_id] = _Stored(slots, nbytes, now_ns)
        self._bytes += nbytes
        self.counters.frames_stored += 1
        while len(self._frames) > self.max_frames or self._bytes > self.max_bytes:
            self._drop_oldest()

    def on_nack(self, frame_id: int, indices: Sequence[int], now_ns: int) -> list[MediaPacket]:
        """The fragments to resend for a NACK of ``indices`` of frame ``frame_id`` received at ``now_ns``,
        in the order requested. Each is a fresh copy of the packet as first sent (same payload buffer), so
        the caller may give it a new ``seq`` and flags; it must pace and send them like any packet."""
        self._expire(now_ns)
        counters = self.counters
        counters.nacks_received += 1
        requested = len(indices)
        if requested > self.max_indices:
            counters.ignored_limit += requested - self.max_indices
        stored = self._frames.get(frame_id)
        if stored is None:
            counters.ignored_unknown += min(requested, self.max_indices)
            return []
        packets = stored.packets
        resent = stored.resent
        bucket = self._bucket
        out: list[MediaPacket] = []
        for index in islice(indices, self.max_indices):
            pkt = packets[index] if 0 <= index < len(packets) else None
            if pkt is None:
                counters.ignored_unknown += 1
                continue
            times, last_ns = resent.get(index, (0, 0))
            if times >= self.max_per_fragment:
                counters.ignored_limit += 1
                continue
            if times and now_ns - last_ns < self.dedup_ns:
                counters.ignored_duplicate += 1
                continue
            size = MEDIA_HEADER_SIZE + len(pkt.payload)
            if bucket.delay_ns(now_ns, size) > 0:
                counters.ignored_rate += 1
                continue
            bucket.consume(now_ns, size)
            resent[index] = (times + 1, now_ns)
            counters.retransmitted_packets += 1
            counters.retransmitted_bytes += size
            out.append(
                MediaPacket(
                    pkt.seq,
                    pkt.stream_id,
                    pkt.frame_id,
                    pkt.fragment_index,
                    pkt.fragment_count,
                    pkt.frame_size,
                    pkt.capture_us,
                    pkt.payload,
                    pkt.flags,
                )
            )
        return out

    def reset(self) -> None:
        """Forget every stored frame (a new session); counters and the rate budget are kept."""
        self._frames.clear()
        self._bytes = 0

    def _expire(self, now_ns: int) -> None:
        """Drop frames stored more than ``max_age_ns`` before ``now_ns``, oldest first."""
        frames = self._frames
        while frames:
            oldest = next(iter(frames.values()))
            if now_ns - oldest.stored_ns <= self.max_age_ns:
                return
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        frames = self._frames
        stored = frames.pop(next(iter(frames)))
        self._bytes -= stored.nbytes
