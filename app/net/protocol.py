"""Doorway's UDP media protocol, version 1: packet layouts, building and parsing (sans-I/O).

Every datagram between two doorways is one packet: a 12-byte common header followed by a body whose
layout depends on the packet type. This module turns packets into bytes (``bytes(pkt)``) and bytes into
packets (:func:`parse_packet`, or ``MediaPacket.parse`` and friends). It does no I/O, reads no clock and
keeps no state; app/net/PROTOCOL.md is the specification it implements, byte for byte.

Theory of operation
-------------------
Parsing is strict and canonical: any byte string either parses into a packet whose ``bytes()`` are exactly
the input, or raises :class:`ProtocolError` — never another exception type. The header carries the
packet's length, so a truncated datagram (or any strict prefix of a packet) is always rejected, as are
trailing bytes. Media fragment sizes are fully determined by (frame size, fragment count, fragment index)
(see :func:`fragment_size`), so a receiver can check every fragment on its own. Building does not validate
field consistency (that would cost time on the send path); a value out of its field's range raises
:class:`ProtocolError`. Both directions use precompiled :class:`struct.Struct` objects in network byte order
and slotted dataclasses: one header unpack, one body unpack and one object per packet. The dataclasses are
not frozen because a frozen dataclass costs about 0.6 µs more per packet to construct; treat them as
immutable all the same.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Final, Self, TypeVar

PROTOCOL_VERSION: Final = 1
"""The version this module speaks. A packet of any other version is dropped."""
MAGIC: Final = 0xD0
"""First byte of every packet: stray traffic almost never starts with it, and is rejected on one compare."""
PLAINTEXT_EPOCH: Final = 0
"""Key epoch of an unencrypted packet; the only epoch version 1 accepts until encryption lands."""
HEADER_SIZE: Final = 12
"""Bytes in the common header."""
MEDIA_HEADER_SIZE: Final = 32
"""Bytes before a media packet's payload: the common header plus the 20-byte media header."""
MAX_DATAGRAM: Final = 65507
"""Largest UDP payload over IPv4, in bytes; no packet is longer."""
MAX_MEDIA_PAYLOAD: Final = MAX_DATAGRAM - MEDIA_HEADER_SIZE
"""Largest payload one media packet can carry, in bytes."""
MAX_FRAME_SIZE: Final = 16 * 1024 * 1024
"""Largest encoded frame, in bytes (16 MiB)."""
MAX_FRAGMENTS: Final = 65535
"""Most fragments one frame may be cut into (the u16 fragment count)."""
AEAD_TAG_SIZE: Final = 16
"""Bytes of the authentication tag an encrypted packet will carry after its body (reserved, not yet used)."""


class ProtocolError(Exception):
    """A datagram is not a valid version-1 packet, or a packet cannot be encoded. The only error raised."""


class PacketType(IntEnum):
    """Byte 2 of the header. Numbers 6-9 are reserved (see :data:`RESERVED_PACKET_TYPES`)."""

    MEDIA = 1
    RECEIVER_REPORT = 2
    KEYFRAME_REQUEST = 3
    KEEPALIVE = 4
    KEEPALIVE_ACK = 5


RESERVED_PACKET_TYPES: Final[dict[int, str]] = {
    6: "NACK (retransmission request)",
    7: "retransmitted media",
    8: "FEC repair",
    9: "congestion-control feedback",
}
"""Type numbers set aside for later issues. Version 1 rejects them as unknown."""


class MediaFlags(IntFlag):
    """Bits of a media packet's flags byte. Bits not named here are reserved: senders set them to 0, receivers
    ignore them (they survive a parse/build round trip)."""

    KEYFRAME = 0x01
    """The frame is an IDR picture: decodable without any earlier frame."""
    RECOVERY_POINT = 0x02
    """Reserved: the frame completes an intra refresh (the decodable chain restarts here)."""
    DISCARDABLE = 0x04
    """Reserved: no later frame references this one."""


class StreamId(IntEnum):
    """Media stream numbers (byte 7 of the header)."""

    VIDEO = 0
    AUDIO = 1


_HEADER = struct.Struct("!BBBBHBBI")
_MEDIA = struct.Struct("!BBBBHBBIIHHIQ")
_MEDIA_BODY = struct.Struct("!IHHIQ")
_REPORT = struct.Struct("!BBBBHBBIIIIIIIIB")
_REPORT_BODY = struct.Struct("!IIIIIIIB")
_KEYFRAME_REQUEST = struct.Struct("!BBBBHBBII")
_KEYFRAME_REQUEST_BODY = struct.Struct("!I")
_KEEPALIVE = struct.Struct("!BBBBHBBIQI")
_KEEPALIVE_BODY = struct.Struct("!QI")

RECEIVER_REPORT_SIZE: Final = _REPORT.size
"""Bytes in a receiver report (41)."""
KEYFRAME_REQUEST_SIZE: Final = _KEYFRAME_REQUEST.size
"""Bytes in a keyframe request (16)."""
KEEPALIVE_SIZE: Final = _KEEPALIVE.size
"""Bytes in a keepalive and in a keepalive ack (24)."""

assert _HEADER.size == HEADER_SIZE and _MEDIA.size == MEDIA_HEADER_SIZE


def fragment_size(frame_size: int, fragment_count: int, fragment_index: int) -> int:
    """Payload bytes of fragment ``fragment_index`` when a ``frame_size``-byte frame is cut in
    ``fragment_count``: the first ``frame_size % fragment_count`` fragments carry one byte more than the
    rest."""
    base, extra = divmod(frame_size, fragment_count)
    return base + 1 if fragment_index < extra else base


def fragment_offset(frame_size: int, fragment_count: int, fragment_index: int) -> int:
    """Byte offset within the frame where fragment ``fragment_index`` starts (same rule as
    :func:`fragment_size`)."""
    base, extra = divmod(frame_size, fragment_count)
    return fragment_index * base + min(fragment_index, extra)


@dataclass(slots=True)
class MediaPacket:
    """One fragment of an encoded frame (type 1). Sizes in bytes, times in µs."""

    seq: int
    """Packet sequence number (u32), per sender over all packet types."""
    stream_id: int
    """Stream (u8): 0 video, 1 audio."""
    frame_id: int
    """Frame id (u32), consecutive per encoded frame of the stream, wrapping at 2**32."""
    fragment_index: int
    """Which fragment this is (u16), 0-based, below ``fragment_count``."""
    fragment_count: int
    """Fragments the frame was cut into (u16, ≥ 1)."""
    frame_size: int
    """Total bytes of the frame (u32, 1..16 MiB)."""
    capture_us: int
    """Sender's CLOCK_MONOTONIC µs when the picture was captured (u64)."""
    payload: bytes | memoryview
    """This fragment's bytes: exactly ``fragment_size(frame_size, fragment_count, fragment_index)``."""
    flags: int = 0
    """:class:`MediaFlags` bits (u8)."""

    @property
    def keyframe(self) -> bool:
        """True when the frame is a keyframe (IDR)."""
        return bool(self.flags & MediaFlags.KEYFRAME)

    def pack_header(self) -> bytes:
        """The 32 bytes before the payload, for scatter-gather sends (``sendmsg([header, payload])``)."""
        try:
            return _MEDIA.pack(
                MAGIC,
                PROTOCOL_VERSION,
                PacketType.MEDIA,
                PLAINTEXT_EPOCH,
                MEDIA_HEADER_SIZE + len(self.payload),
                self.flags,
                self.stream_id,
                self.seq,
                self.frame_id,
                self.fragment_index,
                self.fragment_count,
                self.frame_size,
                self.capture_us,
            )
        except struct.error as exc:
            raise ProtocolError(f"MediaPacket: cannot encode: {exc}") from None

    def __bytes__(self) -> bytes:
        return self.pack_header() + self.payload

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Self:
        """Parse one datagram that must be a media packet."""
        return _parse_as(cls, data)


@dataclass(slots=True)
class ReceiverReport:
    """What a receiver has seen of its peer's packets (type 2). Cumulative counters wrap modulo 2**32."""

    seq: int
    """Packet sequence number (u32) of this report."""
    stream_id: int
    """Stream (u8) whose frame counters this report carries; packet counters cover all packets."""
    highest_seq: int
    """Highest packet sequence number received from the peer (u32)."""
    packets_received: int
    """Packets received from the peer since the session began (u32, wraps), replays not counted."""
    packets_lost: int
    """Packets expected but not received since the session began (u32, saturates at 2**32 - 1)."""
    fraction_lost: int
    """Packets lost since the previous report, as a fraction of those expected, in 1/256 units (u8)."""
    jitter_us: int
    """RFC 3550 interarrival jitter of media packets, in µs (u32)."""
    frames_received: int
    """Complete frames of the stream received since the session began (u32, wraps)."""
    frames_lost: int
    """Frames of the stream given up since the session began (u32, wraps)."""
    receive_kbps: int = 0
    """Receive rate over the report interval, in kilobits per second (u32)."""
    flags: int = 0
    """No flags are defined (u8); sent as 0."""

    def __bytes__(self) -> bytes:
        try:
            return _REPORT.pack(
                MAGIC,
                PROTOCOL_VERSION,
                PacketType.RECEIVER_REPORT,
                PLAINTEXT_EPOCH,
                RECEIVER_REPORT_SIZE,
                self.flags,
                self.stream_id,
                self.seq,
                self.highest_seq,
                self.packets_received,
                self.packets_lost,
                self.jitter_us,
                self.frames_received,
                self.frames_lost,
                self.receive_kbps,
                self.fraction_lost,
            )
        except struct.error as exc:
            raise ProtocolError(f"ReceiverReport: cannot encode: {exc}") from None

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Self:
        """Parse one datagram that must be a receiver report."""
        return _parse_as(cls, data)


@dataclass(slots=True)
class KeyframeRequest:
    """Asks the peer to encode a keyframe on a stream (type 3)."""

    seq: int
    """Packet sequence number (u32)."""
    stream_id: int
    """Stream (u8) that needs a keyframe."""
    request_id: int
    """Number of this request (u32); the receiver counts up by one per request it sends."""
    flags: int = 0
    """No flags are defined (u8); sent as 0."""

    def __bytes__(self) -> bytes:
        try:
            return _KEYFRAME_REQUEST.pack(
                MAGIC,
                PROTOCOL_VERSION,
                PacketType.KEYFRAME_REQUEST,
                PLAINTEXT_EPOCH,
                KEYFRAME_REQUEST_SIZE,
                self.flags,
                self.stream_id,
                self.seq,
                self.request_id,
            )
        except struct.error as exc:
            raise ProtocolError(f"KeyframeRequest: cannot encode: {exc}") from None

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Self:
        """Parse one datagram that must be a keyframe request."""
        return _parse_as(cls, data)


@dataclass(slots=True)
class Keepalive:
    """Liveness beacon and RTT probe (type 4); the peer answers with a :class:`KeepaliveAck`."""

    seq: int
    """Packet sequence number (u32)."""
    sent_us: int
    """Sender's CLOCK_MONOTONIC µs when sent (u64)."""
    session_id: int = 0
    """Sender's session (u32): random, chosen when the sender starts. A change means the peer restarted."""
    flags: int = 0
    """No flags are defined (u8); sent as 0."""

    def __bytes__(self) -> bytes:
        try:
            return _KEEPALIVE.pack(
                MAGIC,
                PROTOCOL_VERSION,
                PacketType.KEEPALIVE,
                PLAINTEXT_EPOCH,
                KEEPALIVE_SIZE,
                self.flags,
                0,
                self.seq,
                self.sent_us,
                self.session_id,
            )
        except struct.error as exc:
            raise ProtocolError(f"Keepalive: cannot encode: {exc}") from None

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Self:
        """Parse one datagram that must be a keepalive."""
        return _parse_as(cls, data)


@dataclass(slots=True)
class KeepaliveAck:
    """Answer to a :class:`Keepalive` (type 5). RTT = now − ``echo_us`` − ``hold_us`` (prober's clock)."""

    seq: int
    """Packet sequence number (u32)."""
    echo_us: int
    """The answered keepalive's ``sent_us`` (u64), returned unchanged."""
    hold_us: int
    """µs between receiving the keepalive and sending this answer (u32)."""
    flags: int = 0
    """No flags are defined (u8); sent as 0."""

    def __bytes__(self) -> bytes:
        try:
            return _KEEPALIVE.pack(
                MAGIC,
                PROTOCOL_VERSION,
                PacketType.KEEPALIVE_ACK,
                PLAINTEXT_EPOCH,
                KEEPALIVE_SIZE,
                self.flags,
                0,
                self.seq,
                self.echo_us,
                self.hold_us,
            )
        except struct.error as exc:
            raise ProtocolError(f"KeepaliveAck: cannot encode: {exc}") from None

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Self:
        """Parse one datagram that must be a keepalive ack."""
        return _parse_as(cls, data)


Packet = MediaPacket | ReceiverReport | KeyframeRequest | Keepalive | KeepaliveAck
"""Any version-1 packet."""

_Data = bytes | bytearray | memoryview
_P = TypeVar("_P", bound=Packet)


def _parse_media(data: _Data, n: int, flags: int, stream_id: int, seq: int) -> MediaPacket:
    if n < MEDIA_HEADER_SIZE:
        raise ProtocolError(f"MediaPacket: {n} bytes, shorter than its {MEDIA_HEADER_SIZE}-byte header")
    if n > MAX_DATAGRAM:
        raise ProtocolError(f"MediaPacket: {n} bytes, longer than the {MAX_DATAGRAM}-byte maximum datagram")
    frame_id, index, count, frame_size, capture_us = _MEDIA_BODY.unpack_from(data, HEADER_SIZE)
    if count == 0:
        raise ProtocolError("MediaPacket: fragment count is 0")
    if index >= count:
        raise ProtocolError(f"MediaPacket: fragment index {index} is not below fragment count {count}")
    if not 0 < frame_size <= MAX_FRAME_SIZE:
        raise ProtocolError(f"MediaPacket: frame size {frame_size} is out of range 1..{MAX_FRAME_SIZE}")
    if count > frame_size:
        raise ProtocolError(f"MediaPacket: fragment count {count} exceeds frame size {frame_size}")
    base, extra = divmod(frame_size, count)
    expected = base + 1 if index < extra else base
    if n - MEDIA_HEADER_SIZE != expected:
        raise ProtocolError(
            f"MediaPacket: payload is {n - MEDIA_HEADER_SIZE} bytes, fragment {index} of {count} "
            f"of a {frame_size}-byte frame must be {expected}"
        )
    return MediaPacket(
        seq, stream_id, frame_id, index, count, frame_size, capture_us, bytes(data[MEDIA_HEADER_SIZE:]), flags
    )


def _parse_report(data: _Data, n: int, flags: int, stream_id: int, seq: int) -> ReceiverReport:
    if n != RECEIVER_REPORT_SIZE:
        raise ProtocolError(f"ReceiverReport: length {n}, expected {RECEIVER_REPORT_SIZE}")
    highest, received, lost, jitter, frames_received, frames_lost, kbps, fraction = _REPORT_BODY.unpack_from(
        data, HEADER_SIZE
    )
    return ReceiverReport(
        seq, stream_id, highest, received, lost, fraction, jitter, frames_received, frames_lost, kbps, flags
    )


def _parse_keyframe_request(data: _Data, n: int, flags: int, stream_id: int, seq: int) -> KeyframeRequest:
    if n != KEYFRAME_REQUEST_SIZE:
        raise ProtocolError(f"KeyframeRequest: length {n}, expected {KEYFRAME_REQUEST_SIZE}")
    (request_id,) = _KEYFRAME_REQUEST_BODY.unpack_from(data, HEADER_SIZE)
    return KeyframeRequest(seq, stream_id, request_id, flags)


def _parse_keepalive(data: _Data, n: int, flags: int, stream_id: int, seq: int) -> Keepalive:
    if n != KEEPALIVE_SIZE:
        raise ProtocolError(f"Keepalive: length {n}, expected {KEEPALIVE_SIZE}")
    if stream_id != 0:
        raise ProtocolError(f"Keepalive: stream id must be 0, got {stream_id}")
    sent_us, session_id = _KEEPALIVE_BODY.unpack_from(data, HEADER_SIZE)
    return Keepalive(seq, sent_us, session_id, flags)


def _parse_keepalive_ack(data: _Data, n: int, flags: int, stream_id: int, seq: int) -> KeepaliveAck:
    if n != KEEPALIVE_SIZE:
        raise ProtocolError(f"KeepaliveAck: length {n}, expected {KEEPALIVE_SIZE}")
    if stream_id != 0:
        raise ProtocolError(f"KeepaliveAck: stream id must be 0, got {stream_id}")
    echo_us, hold_us = _KEEPALIVE_BODY.unpack_from(data, HEADER_SIZE)
    return KeepaliveAck(seq, echo_us, hold_us, flags)


# Indexed by type number; a dict lookup is the whole dispatch.
_PARSERS: Final[dict[int, tuple[str, Callable[[_Data, int, int, int, int], Packet]]]] = {
    PacketType.MEDIA: ("MediaPacket", _parse_media),
    PacketType.RECEIVER_REPORT: ("ReceiverReport", _parse_report),
    PacketType.KEYFRAME_REQUEST: ("KeyframeRequest", _parse_keyframe_request),
    PacketType.KEEPALIVE: ("Keepalive", _parse_keepalive),
    PacketType.KEEPALIVE_ACK: ("KeepaliveAck", _parse_keepalive_ack),
}


def parse_packet(data: bytes | bytearray | memoryview) -> Packet:
    """Parse one datagram into a packet, or raise :class:`ProtocolError` saying what is wrong.

    Checks, in order: length of the header, magic, version, type, key epoch, the length field against the
    datagram's length, then the type's own rules. The payload of a media packet is copied out of ``data``, so
    a receive buffer may be reused afterwards.
    """
    n = len(data)
    if n < HEADER_SIZE:
        raise ProtocolError(f"truncated: {n} bytes, shorter than the {HEADER_SIZE}-byte header")
    magic, version, ptype, epoch, length, flags, stream_id, seq = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic 0x{magic:02x}, expected 0x{MAGIC:02x}")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported version {version}, expected {PROTOCOL_VERSION}")
    entry = _PARSERS.get(ptype)
    if entry is None:
        raise ProtocolError(f"unknown packet type {ptype}")
    name, parser = entry
    if epoch != PLAINTEXT_EPOCH:
        raise ProtocolError(f"{name}: unsupported key epoch {epoch} (encryption is not implemented)")
    if length != n:
        if length > n:
            raise ProtocolError(f"truncated {name}: {n} bytes, the length field says {length}")
        raise ProtocolError(f"{name}: {n - length} trailing bytes after the {length} the length field says")
    return parser(data, n, flags, stream_id, seq)


def _parse_as(cls: type[_P], data: _Data) -> _P:
    pkt = parse_packet(data)
    if not isinstance(pkt, cls):
        raise ProtocolError(f"expected {cls.__name__}, got {type(pkt).__name__}")
    return pkt
