"""Cutting encoded frames into media packets, and putting them back together (sans-I/O).

The sender's :class:`Packetizer` cuts one access unit into the fewest media packets whose payloads fit the
MTU budget, all within one byte of the same size, without copying the frame, and optionally appends
Reed–Solomon parity packets (:mod:`app.net.fec`). The receiver's :class:`Assembler` (one per stream)
collects fragments and parity in any order and returns the whole frame the moment it can: when its last
missing fragment arrives, or as soon as any ``k`` of its ``k + m`` data and parity packets are in. No
clocks: the caller passes ``now_ns`` (CLOCK_MONOTONIC nanoseconds).

Theory of operation
-------------------
A frame is identified by its 32-bit frame id. The first packet to arrive, data or parity, fixes the frame's
shape (fragment count, frame size, frame flags, capture time, stream; a parity packet also the parity
count); a later packet that disagrees is dropped and counted as ``inconsistent``, one already held as a
``duplicate``. The RETRANSMIT flag describes a packet, not the frame, so it is left out of the comparison
and out of the frame's flags: a retransmitted fragment counts exactly like the original. Parsing has
already checked that each payload has exactly the size its index implies (``protocol.fragment_size``) and
that a parity block is as long as the largest fragment, so when every index has arrived the joined payloads
are exactly ``frame_size`` bytes, and when data + parity held reach ``k`` the missing fragments can be
decoded (:func:`app.net.fec.fec_recover`). A frame leaves the assembler in one of four ways: completed
(directly or recovered), expired (:meth:`Assembler.expire`, incomplete for longer than the deadline),
evicted (over the frame or byte capacity, oldest first) or dropped as oversize. Its id then goes into a
bounded set of finished ids, so its stragglers are dropped as ``late`` instead of starting a new frame that
could never complete (parity arriving after its frame completed is counted as ``fec_unneeded`` instead:
that is the normal fate of parity); a packet more than ``finished_ids`` frames behind the newest frame seen
is late as well. Memory is bounded by ``max_frames_in_flight`` partial frames and ``max_buffered_bytes``
payload bytes, parity included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal, cast, overload

from app.net.fec import fec_encode, fec_recover
from app.net.protocol import (
    FRAME_FLAGS_MASK,
    MAX_FEC_BLOCKS,
    MAX_FRAGMENTS,
    MAX_FRAME_SIZE,
    MAX_MEDIA_PAYLOAD,
    FecPacket,
    MediaFlags,
    MediaPacket,
    fragment_size,
)
from app.net.seq import SEQ_MASK, seq_diff

_U64_MAX = (1 << 64) - 1
# Plain ints: masking with an IntFlag member runs IntFlag.__rand__ in Python (~0.5 µs a packet).
_KEYFRAME = MediaFlags.KEYFRAME.value
_RETRANSMIT = MediaFlags.RETRANSMIT.value


class Packetizer:
    """Cuts encoded frames of one stream into media packets of at most ``mtu_payload`` payload bytes."""

    __slots__ = ("mtu_payload", "stream_id")

    def __init__(self, stream_id: int, mtu_payload: int) -> None:
        if not 0 <= stream_id <= 255:
            raise ValueError(f"stream id {stream_id} is out of range 0..255")
        if not 1 <= mtu_payload <= MAX_MEDIA_PAYLOAD:
            raise ValueError(f"mtu_payload {mtu_payload} is out of range 1..{MAX_MEDIA_PAYLOAD}")
        self.stream_id = stream_id
        self.mtu_payload = mtu_payload

    def fragment_count(self, frame_size: int) -> int:
        """How many packets a ``frame_size``-byte frame becomes: ⌈frame_size / mtu_payload⌉."""
        return -(-frame_size // self.mtu_payload)

    @overload
    def packetize(
        self,
        frame_id: int,
        data: bytes | bytearray | memoryview,
        *,
        keyframe: bool,
        capture_us: int,
        next_seq: Callable[[], int],
        parity_count: Literal[0] = 0,
    ) -> list[MediaPacket]: ...

    @overload
    def packetize(
        self,
        frame_id: int,
        data: bytes | bytearray | memoryview,
        *,
        keyframe: bool,
        capture_us: int,
        next_seq: Callable[[], int],
        parity_count: int,
    ) -> list[MediaPacket | FecPacket]: ...

    def packetize(
        self,
        frame_id: int,
        data: bytes | bytearray | memoryview,
        *,
        keyframe: bool,
        capture_us: int,
        next_seq: Callable[[], int],
        parity_count: int = 0,
    ) -> list[MediaPacket] | list[MediaPacket | FecPacket]:
        """The media packets of one frame, in fragment order, then its ``parity_count`` FEC packets in parity
        order; each packet takes a sequence number from ``next_seq``.

        Payloads are memoryview slices of ``data`` (no copy), so ``data`` must not change until the packets
        are sent. Raises ValueError for an empty frame, one over 16 MiB or over 65535 fragments, a
        ``frame_id`` (u32) or ``capture_us`` (u64) out of range, or a ``parity_count`` below 0 or with more
        than 256 data + parity blocks (:meth:`FecPolicy.parity_for <app.net.fec.FecPolicy.parity_for>` never
        asks for that).
        """
        size = len(data)
        if size == 0:
            raise ValueError("cannot packetize an empty frame")
        if size > MAX_FRAME_SIZE:
            raise ValueError(f"frame of {size} bytes exceeds the {MAX_FRAME_SIZE}-byte maximum")
        count = -(-size // self.mtu_payload)
        if count > MAX_FRAGMENTS:
            raise ValueError(f"frame of {size} bytes needs {count} fragments, more than {MAX_FRAGMENTS}")
        if not 0 <= frame_id <= SEQ_MASK:
            raise ValueError(f"frame id {frame_id} is out of range 0..{SEQ_MASK}")
        if not 0 <= capture_us <= _U64_MAX:
            raise ValueError(f"capture time {capture_us} µs is out of the u64 range")
        if parity_count and not 0 < parity_count <= MAX_FEC_BLOCKS - count:
            raise ValueError(
                f"parity count {parity_count} is out of range 0..{max(0, MAX_FEC_BLOCKS - count)} "
                f"for {count} fragments"
            )
        view = memoryview(data).cast("B")
        base, extra = divmod(size, count)
        flags = _KEYFRAME if keyframe else 0
        stream_id = self.stream_id
        packets: list[MediaPacket | FecPacket] = []
        offset = 0
        for index in range(count):
            end = offset + base + (1 if index < extra else 0)
            packets.append(
                MediaPacket(
                    next_seq(), stream_id, frame_id, index, count, size, capture_us, view[offset:end], flags
                )
            )
            offset = end
        if parity_count:
            block_size = base + 1 if extra else base
            parity = fec_encode([p.payload for p in packets], parity_count)
            for index, block in enumerate(parity):
                packets.append(
                    FecPacket(
                        next_seq(),
                        stream_id,
                        frame_id,
                        count,
                        parity_count,
                        index,
                        size,
                        block_size,
                        capture_us,
                        block,
                        flags,
                    )
                )
        return packets


@dataclass(slots=True)
class AssembledFrame:
    """A complete frame as the assembler hands it on. Times: ``capture_us`` is the sender's clock (µs), the
    ``*_ns`` fields the receiver's CLOCK_MONOTONIC (ns)."""

    frame_id: int
    """Frame id (u32)."""
    data: bytes
    """The whole encoded frame."""
    keyframe: bool
    """The frame is a keyframe (decodable on its own)."""
    capture_us: int
    """Sender's CLOCK_MONOTONIC µs when the picture was captured."""
    first_arrival_ns: int
    """When the frame's first packet (data or parity) arrived, ns."""
    completed_ns: int
    """When the packet that completed it arrived, ns."""
    packet_count: int
    """Packets the frame arrived in: data fragments plus parity packets received before it completed."""
    flags: int = 0
    """The frame's media flags (:class:`app.net.protocol.MediaFlags`), without the per-packet RETRANSMIT."""
    stream_id: int = 0
    """Stream the fragments carried."""
    fec_recovered: int = 0
    """Data fragments that never arrived and were rebuilt from parity."""
    retransmitted: int = 0
    """Packets of the frame that came with the RETRANSMIT flag."""


@dataclass(slots=True)
class AssemblerCounters:
    """What the assembler has done since it was created (or reset). Counts of packets unless named frames."""

    packets: int = 0
    """Data fragments accepted into a frame."""
    frames_completed: int = 0
    """Frames returned complete (directly or recovered)."""
    duplicates: int = 0
    """Fragments or parity packets dropped because the frame already held that one."""
    inconsistent: int = 0
    """Packets dropped because their count, size, frame flags, capture time or stream (parity: also parity
    count) differ from the frame's."""
    late: int = 0
    """Packets dropped because their frame was already completed or given up (parity: given up only)."""
    oversize: int = 0
    """Packets dropped because their frame is larger than ``max_frame_bytes``."""
    evicted: int = 0
    """Incomplete frames given up to stay within capacity (frames)."""
    expired: int = 0
    """Incomplete frames given up by :meth:`Assembler.expire` (frames)."""
    fec_packets: int = 0
    """Parity packets accepted into a frame."""
    fec_unneeded: int = 0
    """Parity packets dropped because their frame had already completed (the normal case, not an error)."""
    fec_recovered_frames: int = 0
    """Frames completed by decoding missing fragments from parity (frames)."""
    fec_recovered_fragments: int = 0
    """Data fragments rebuilt from parity."""
    retransmitted: int = 0
    """Packets accepted that came with the RETRANSMIT flag."""


class _Partial:
    """A frame with some fragments still missing."""

    __slots__ = (
        "buffered",
        "capture_us",
        "count",
        "first_arrival_ns",
        "flags",
        "missing",
        "parity",
        "parity_count",
        "parts",
        "retransmitted",
        "size",
        "stream_id",
    )

    def __init__(
        self, count: int, size: int, flags: int, capture_us: int, stream_id: int, now_ns: int
    ) -> None:
        self.count = count
        self.size = size
        self.flags = flags
        self.capture_us = capture_us
        self.stream_id = stream_id
        self.first_arrival_ns = now_ns
        self.parts: list[bytes | memoryview | None] = [None] * count
        self.missing = count
        """Data fragments not received yet."""
        self.parity: dict[int, bytes | memoryview] = {}
        """Parity blocks received, by parity index."""
        self.parity_count = 0
        """The frame's parity count, fixed by its first parity packet; 0 until one arrives."""
        self.buffered = 0
        self.retransmitted = 0


class Assembler:
    """Reassembles the frames of one stream from media and FEC packets arriving in any order.

    Packets must come from :func:`app.net.protocol.parse_packet` (or the :class:`Packetizer`): payload
    lengths are trusted to match the packet's fields.
    """

    def __init__(
        self,
        max_frames_in_flight: int = 64,
        max_frame_bytes: int = MAX_FRAME_SIZE,
        max_buffered_bytes: int = 64 * 1024 * 1024,
        finished_ids: int = 1024,
    ) -> None:
        """``max_frames_in_flight`` incomplete frames and ``max_buffered_bytes`` payload bytes at most; frames
        over ``max_frame_bytes`` are refused; the last ``finished_ids`` finished frame ids are remembered."""
        if max_frames_in_flight < 1:
            raise ValueError(f"max_frames_in_flight {max_frames_in_flight} must be at least 1")
        if not 1 <= max_frame_bytes <= MAX_FRAME_SIZE:
            raise ValueError(f"max_frame_bytes {max_frame_bytes} is out of range 1..{MAX_FRAME_SIZE}")
        if max_buffered_bytes < max_frame_bytes:
            raise ValueError(
                f"max_buffered_bytes {max_buffered_bytes} is below max_frame_bytes {max_frame_bytes}"
            )
        if finished_ids < max_frames_in_flight:
            raise ValueError(
                f"finished_ids {finished_ids} is below max_frames_in_flight {max_frames_in_flight}"
            )
        self.max_frames_in_flight = max_frames_in_flight
        self.max_frame_bytes = max_frame_bytes
        self.max_buffered_bytes = max_buffered_bytes
        self.finished_ids = finished_ids
        self.counters = AssemblerCounters()
        # Insertion order is first-arrival order, so the first entry is the oldest frame.
        self._partial: dict[int, _Partial] = {}
        # The most recently finished frame ids, oldest first: True when completed, False when given up.
        self._finished: dict[int, bool] = {}
        self._newest: int | None = None
        self._buffered = 0
        self._given_up: list[int] = []

    @property
    def in_flight(self) -> int:
        """Incomplete frames held now."""
        return len(self._partial)

    @property
    def buffered_bytes(self) -> int:
        """Payload bytes (fragments and parity) held in incomplete frames now."""
        return self._buffered

    def counters_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for statistics snapshots)."""
        return asdict(self.counters)

    def incomplete_ids(self) -> list[int]:
        """Ids of the incomplete frames held now, oldest first arrival first."""
        return list(self._partial)

    def missing(self, frame_id: int) -> tuple[int, int, tuple[int, ...]] | None:
        """What an incomplete frame still lacks: ``(fragment_count, still_needed, missing_indices)``.

        ``still_needed`` is how many more packets, data or parity, would complete it: data fragments minus
        data and parity received, floored at 0. ``missing_indices`` are the data fragments not received,
        ascending. None when the frame is not in flight (never seen, completed or given up).
        """
        part = self._partial.get(frame_id)
        if part is None:
            return None
        needed = max(0, part.missing - len(part.parity))
        return part.count, needed, tuple(i for i, p in enumerate(part.parts) if p is None)

    def push(self, pkt: MediaPacket | FecPacket, now_ns: int) -> AssembledFrame | None:
        """Take one fragment or parity packet; return its frame if this packet completed it, else None."""
        if isinstance(pkt, FecPacket):
            return self._push_parity(pkt, now_ns)
        frame_id = pkt.frame_id
        flags = pkt.flags & FRAME_FLAGS_MASK
        part = self._partial.get(frame_id)
        if part is None:
            if not self._admit(frame_id, pkt.frame_size, parity=False):
                return None
            if pkt.fragment_count == 1:
                retransmitted = 1 if pkt.flags & _RETRANSMIT else 0
                self.counters.packets += 1
                self.counters.retransmitted += retransmitted
                self.counters.frames_completed += 1
                self._finish(frame_id, completed=True)
                return AssembledFrame(
                    frame_id,
                    bytes(pkt.payload),
                    bool(flags & _KEYFRAME),
                    pkt.capture_us,
                    now_ns,
                    now_ns,
                    1,
                    flags,
                    pkt.stream_id,
                    0,
                    retransmitted,
                )
            part = _Partial(pkt.fragment_count, pkt.frame_size, flags, pkt.capture_us, pkt.stream_id, now_ns)
            self._partial[frame_id] = part
        elif (
            pkt.fragment_count != part.count
            or pkt.frame_size != part.size
            or flags != part.flags
            or pkt.capture_us != part.capture_us
            or pkt.stream_id != part.stream_id
        ):
            self.counters.inconsistent += 1
            return None
        index = pkt.fragment_index
        if part.parts[index] is not None:
            self.counters.duplicates += 1
            return None
        payload = pkt.payload
        part.parts[index] = payload
        part.missing -= 1
        part.buffered += len(payload)
        self._buffered += len(payload)
        self.counters.packets += 1
        return self._settle(frame_id, part, pkt.flags, now_ns)

    def expire(self, now_ns: int, deadline_ns: int) -> list[int]:
        """Give up frames incomplete for more than ``deadline_ns`` since their first packet arrived.

        Returns their ids, oldest first, preceded by the ids of frames evicted for capacity since the last
        call: every frame given up is reported exactly once, so the caller can tell its jitter buffer.
        """
        given_up = self._given_up
        self._given_up = []
        expired = [fid for fid, p in self._partial.items() if now_ns - p.first_arrival_ns > deadline_ns]
        for frame_id in expired:
            self._drop(frame_id)
        self.counters.expired += len(expired)
        given_up.extend(expired)
        return given_up

    def reset(self) -> None:
        """Forget every frame and finished id (the peer restarted); counters are kept."""
        self._partial.clear()
        self._finished.clear()
        self._newest = None
        self._buffered = 0
        self._given_up.clear()

    def _admit(self, frame_id: int, frame_size: int, *, parity: bool) -> bool:
        """Whether a packet of a frame not in flight may start it; counts the reason when not."""
        finished = self._finished.get(frame_id)
        if finished is not None:
            if parity and finished:
                self.counters.fec_unneeded += 1
            else:
                self.counters.late += 1
            return False
        newest = self._newest
        ahead = 1 if newest is None else seq_diff(frame_id, newest)
        if ahead > 0:
            self._newest = frame_id
        elif ahead < -self.finished_ids:
            self.counters.late += 1
            return False
        if frame_size > self.max_frame_bytes:
            self.counters.oversize += 1
            return False
        return True

    def _push_parity(self, pkt: FecPacket, now_ns: int) -> AssembledFrame | None:
        frame_id = pkt.frame_id
        flags = pkt.flags & FRAME_FLAGS_MASK
        part = self._partial.get(frame_id)
        if part is None:
            if not self._admit(frame_id, pkt.frame_size, parity=True):
                return None
            part = _Partial(pkt.data_count, pkt.frame_size, flags, pkt.capture_us, pkt.stream_id, now_ns)
            part.parity_count = pkt.parity_count
            self._partial[frame_id] = part
        elif (
            pkt.data_count != part.count
            or pkt.frame_size != part.size
            or flags != part.flags
            or pkt.capture_us != part.capture_us
            or pkt.stream_id != part.stream_id
            or (part.parity_count and pkt.parity_count != part.parity_count)
        ):
            self.counters.inconsistent += 1
            return None
        elif not part.parity_count:
            part.parity_count = pkt.parity_count
        index = pkt.parity_index
        if index in part.parity:
            self.counters.duplicates += 1
            return None
        payload = pkt.payload
        part.parity[index] = payload
        part.buffered += len(payload)
        self._buffered += len(payload)
        self.counters.fec_packets += 1
        return self._settle(frame_id, part, pkt.flags, now_ns)

    def _settle(self, frame_id: int, part: _Partial, flags: int, now_ns: int) -> AssembledFrame | None:
        """After a data or parity packet was added: count a retransmission, then complete the frame if
        enough is in, or keep memory within bounds while it is not."""
        if flags & _RETRANSMIT:
            part.retransmitted += 1
            self.counters.retransmitted += 1
        if part.missing > len(part.parity):
            if len(self._partial) > self.max_frames_in_flight or self._buffered > self.max_buffered_bytes:
                self._evict(keep=frame_id)
            return None
        return self._complete(frame_id, part, now_ns)

    def _complete(self, frame_id: int, part: _Partial, now_ns: int) -> AssembledFrame:
        """Hand on a frame whose data fragments are all in, or can be rebuilt from the parity held."""
        del self._partial[frame_id]
        self._buffered -= part.buffered
        self._finish(frame_id, completed=True)
        self.counters.frames_completed += 1
        recovered = part.missing
        if recovered:
            k = part.count
            present: dict[int, bytes | memoryview] = {i: b for i, b in enumerate(part.parts) if b is not None}
            for index, block in part.parity.items():
                present[k + index] = block
            block_size = fragment_size(part.size, k, 0)
            data = b"".join(fec_recover(k, part.parity_count, block_size, part.size, present))
            self.counters.fec_recovered_frames += 1
            self.counters.fec_recovered_fragments += recovered
        else:
            # Every slot is filled once nothing is missing.
            data = b"".join(cast(list[bytes | memoryview], part.parts))
        return AssembledFrame(
            frame_id,
            data,
            bool(part.flags & _KEYFRAME),
            part.capture_us,
            part.first_arrival_ns,
            now_ns,
            part.count - recovered + len(part.parity),
            part.flags,
            part.stream_id,
            recovered,
            part.retransmitted,
        )

    def _finish(self, frame_id: int, *, completed: bool) -> None:
        finished = self._finished
        finished[frame_id] = completed
        if len(finished) > self.finished_ids:
            del finished[next(iter(finished))]

    def _drop(self, frame_id: int) -> None:
        part = self._partial.pop(frame_id)
        self._buffered -= part.buffered
        self._finish(frame_id, completed=False)

    def _evict(self, keep: int) -> None:
        """Give up the oldest frames other than ``keep`` until within both capacities."""
        while len(self._partial) > self.max_frames_in_flight or self._buffered > self.max_buffered_bytes:
            victim = next((fid for fid in self._partial if fid != keep), None)
            if victim is None:
                return
            self._drop(victim)
            self.counters.evicted += 1
            self._given_up.append(victim)
            if len(self._given_up) > self.finished_ids:
                del self._given_up[0]
