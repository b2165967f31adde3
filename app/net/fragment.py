"""Cutting encoded frames into media packets, and putting them back together (sans-I/O).

The sender's :class:`Packetizer` cuts one access unit into the fewest media packets whose payloads fit the
MTU budget, all within one byte of the same size, without copying the frame. The receiver's
:class:`Assembler` (one per stream) collects fragments in any order and returns the whole frame the moment
its last missing fragment arrives. No clocks: the caller passes ``now_ns`` (CLOCK_MONOTONIC nanoseconds).

Theory of operation
-------------------
A frame is identified by its 32-bit frame id. The first fragment to arrive fixes the frame's shape
(fragment count, frame size, flags, capture time); a later fragment that disagrees is dropped and counted
as ``inconsistent``, one already held as a ``duplicate``. Parsing has already checked that each payload has
exactly the size its index implies (``protocol.fragment_size``), so when every index has arrived the joined
payloads are exactly ``frame_size`` bytes. A frame leaves the assembler in one of four ways: completed,
expired (:meth:`Assembler.expire`, incomplete for longer than the deadline), evicted (over the frame or byte
capacity, oldest first) or dropped as oversize. Its id then goes into a bounded set of finished ids, so
its stragglers are dropped as ``late`` instead of starting a new frame that could never complete; a
fragment more than ``finished_ids`` frames behind the newest frame seen is late as well. Memory is bounded
by ``max_frames_in_flight`` partial frames and ``max_buffered_bytes`` payload bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import cast

from app.net.protocol import MAX_FRAGMENTS, MAX_FRAME_SIZE, MAX_MEDIA_PAYLOAD, MediaFlags, MediaPacket
from app.net.seq import SEQ_MASK, seq_diff

_U64_MAX = (1 << 64) - 1


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

    def packetize(
        self,
        frame_id: int,
        data: bytes | bytearray | memoryview,
        *,
        keyframe: bool,
        capture_us: int,
        next_seq: Callable[[], int],
    ) -> list[MediaPacket]:
        """The media packets of one frame, in fragment order, each with a sequence number from ``next_seq``.

        Payloads are memoryview slices of ``data`` (no copy), so ``data`` must not change until the packets
        are sent. Raises ValueError for an empty frame, one over 16 MiB or over 65535 fragments, or a
        ``frame_id`` (u32) or ``capture_us`` (u64) out of range.
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
        view = memoryview(data).cast("B")
        base, extra = divmod(size, count)
        flags = MediaFlags.KEYFRAME.value if keyframe else 0
        stream_id = self.stream_id
        packets: list[MediaPacket] = []
        offset = 0
        for index in range(count):
            end = offset + base + (1 if index < extra else 0)
            packets.append(
                MediaPacket(
                    next_seq(), stream_id, frame_id, index, count, size, capture_us, view[offset:end], flags
                )
            )
            offset = end
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
    """When the frame's first fragment arrived, ns."""
    completed_ns: int
    """When its last missing fragment arrived, ns."""
    packet_count: int
    """Fragments the frame arrived in."""
    flags: int = 0
    """The media flags the fragments carried (:class:`app.net.protocol.MediaFlags`)."""
    stream_id: int = 0
    """Stream the fragments carried."""


@dataclass(slots=True)
class AssemblerCounters:
    """What the assembler has done since it was created (or reset). Counts of packets unless named frames."""

    packets: int = 0
    """Fragments accepted into a frame."""
    frames_completed: int = 0
    """Frames returned complete."""
    duplicates: int = 0
    """Fragments dropped because that fragment of the frame was already held."""
    inconsistent: int = 0
    """Fragments dropped because their count, size, flags, capture time or stream differ from the frame's."""
    late: int = 0
    """Fragments dropped because their frame was already completed or given up."""
    oversize: int = 0
    """Fragments dropped because their frame is larger than ``max_frame_bytes``."""
    evicted: int = 0
    """Incomplete frames given up to stay within capacity (frames)."""
    expired: int = 0
    """Incomplete frames given up by :meth:`Assembler.expire` (frames)."""


class _Partial:
    """A frame with some fragments still missing."""

    __slots__ = (
        "buffered",
        "capture_us",
        "count",
        "first_arrival_ns",
        "flags",
        "missing",
        "parts",
        "size",
        "stream_id",
    )

    def __init__(self, pkt: MediaPacket, now_ns: int) -> None:
        self.count = pkt.fragment_count
        self.size = pkt.frame_size
        self.flags = pkt.flags
        self.capture_us = pkt.capture_us
        self.stream_id = pkt.stream_id
        self.first_arrival_ns = now_ns
        self.parts: list[bytes | memoryview | None] = [None] * pkt.fragment_count
        self.missing = pkt.fragment_count
        self.buffered = 0


class Assembler:
    """Reassembles the frames of one stream from media packets arriving in any order."""

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
        # An ordered set (values unused) of the most recently finished frame ids.
        self._finished: dict[int, None] = {}
        self._newest: int | None = None
        self._buffered = 0
        self._given_up: list[int] = []

    @property
    def in_flight(self) -> int:
        """Incomplete frames held now."""
        return len(self._partial)

    @property
    def buffered_bytes(self) -> int:
        """Payload bytes held in incomplete frames now."""
        return self._buffered

    def counters_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for statistics snapshots)."""
        return asdict(self.counters)

    def push(self, pkt: MediaPacket, now_ns: int) -> AssembledFrame | None:
        """Take one fragment; return its frame if this fragment completed it, else None."""
        frame_id = pkt.frame_id
        part = self._partial.get(frame_id)
        if part is None:
            if frame_id in self._finished:
                self.counters.late += 1
                return None
            newest = self._newest
            ahead = 1 if newest is None else seq_diff(frame_id, newest)
            if ahead > 0:
                self._newest = frame_id
            elif ahead < -self.finished_ids:
                self.counters.late += 1
                return None
            if pkt.frame_size > self.max_frame_bytes:
                self.counters.oversize += 1
                return None
            if pkt.fragment_count == 1:
                self.counters.packets += 1
                self.counters.frames_completed += 1
                self._finish(frame_id)
                return AssembledFrame(
                    frame_id,
                    bytes(pkt.payload),
                    bool(pkt.flags & MediaFlags.KEYFRAME),
                    pkt.capture_us,
                    now_ns,
                    now_ns,
                    1,
                    pkt.flags,
                    pkt.stream_id,
                )
            part = _Partial(pkt, now_ns)
            self._partial[frame_id] = part
        elif (
            pkt.fragment_count != part.count
            or pkt.frame_size != part.size
            or pkt.flags != part.flags
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
        if part.missing:
            if len(self._partial) > self.max_frames_in_flight or self._buffered > self.max_buffered_bytes:
                self._evict(keep=frame_id)
            return None
        del self._partial[frame_id]
        self._buffered -= part.buffered
        self._finish(frame_id)
        self.counters.frames_completed += 1
        return AssembledFrame(
            frame_id,
            # Every slot is filled once nothing is missing.
            b"".join(cast(list[bytes | memoryview], part.parts)),
            bool(part.flags & MediaFlags.KEYFRAME),
            part.capture_us,
            part.first_arrival_ns,
            now_ns,
            part.count,
            part.flags,
            part.stream_id,
        )

    def expire(self, now_ns: int, deadline_ns: int) -> list[int]:
        """Give up frames incomplete for more than ``deadline_ns`` since their first fragment arrived.

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

    def _finish(self, frame_id: int) -> None:
        finished = self._finished
        finished[frame_id] = None
        if len(finished) > self.finished_ids:
            del finished[next(iter(finished))]

    def _drop(self, frame_id: int) -> None:
        part = self._partial.pop(frame_id)
        self._buffered -= part.buffered
        self._finish(frame_id)

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
