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
(see :func:`fragment_size`), so a receiver can check every fragment on its own; an FEC parity block is
exactly as long as the frame's largest data fragment. Building a media packet does not validate field
consistency (that would cost time on the send path); a value out of its field's range raises
:class:`ProtocolError`. Building a NACK, FEC or transport-feedback packet applies the same rules as parsing
it (a handful of compares, next to list packing or Reed–Solomon coding), so whatever is built also parses.
The variable-length lists (NACK indices, feedback arrivals) are bounded at 256 entries. Both directions use
precompiled :class:`struct.Struct` objects in network byte order (one per list length for the lists) and
slotted dataclasses: one header unpack, one body unpack and one object per packet. The dataclasses are
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
    """Byte 2 of the header. Number 7 stays reserved (see :data:`RESERVED_PACKET_TYPES`)."""

    MEDIA = 1
    RECEIVER_REPORT = 2
    KEYFRAME_REQUEST = 3
    KEEPALIVE = 4
    KEEPALIVE_ACK = 5
    NACK = 6
    FEC = 8
    TRANSPORT_FEEDBACK = 9
    AUDIO = 10
    HANDSHAKE_INIT = 11
    HANDSHAKE_RESPONSE = 12
    ROOM_REPORT = 13


RESERVED_PACKET_TYPES: Final[dict[int, str]] = {
    7: "retransmitted media (unused: a retransmission is a MediaPacket with the RETRANSMIT flag)",
}
"""Type numbers set aside and rejected as unknown."""


class MediaFlags(IntFlag):
    """Bits of a media packet's flags byte. Bits not named here are reserved: senders set them to 0, receivers
    ignore them (they survive a parse/build round trip)."""

    KEYFRAME = 0x01
    """The frame is an IDR picture: decodable without any earlier frame."""
    RECOVERY_POINT = 0x02
    """Reserved: the frame completes an intra refresh (the decodable chain restarts here)."""
    DISCARDABLE = 0x04
    """Reserved: no later frame references this one."""
    RETRANSMIT = 0x08
    """This packet is a retransmission (an answer to a :class:`Nack`) of a fragment sent before, under a new
    packet seq. Unlike the other bits it describes the packet, not the frame: a receiver treats the fragment
    exactly like the original and ignores this bit when it checks that a frame's packets agree."""


FRAME_FLAGS_MASK: Final = 0xFF & ~int(MediaFlags.RETRANSMIT)
"""Media flag bits that describe the frame (all but :attr:`MediaFlags.RETRANSMIT`): every packet of a frame
carries the same ``flags & FRAME_FLAGS_MASK``."""


class RoomFlags(IntFlag):
    """Bits of a room report's flags byte. Others are reserved: sent as 0, ignored (and kept) by receivers."""

    MATCHING = 0x01
    """The sender is itself following its twin's light level ("match the far side")."""


class AudioCodecId(IntEnum):
    """Byte 2 of an audio packet's body: how its frames are coded."""

    OPUS = 0
    PCM16 = 1
    """Interleaved signed 16-bit little-endian samples, for a LAN."""


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
_NACK = struct.Struct("!BBBBHBBIIH")
_NACK_BODY = struct.Struct("!IH")
_FEC = struct.Struct("!BBBBHBBIIBBHIQ")
_FEC_BODY = struct.Struct("!IBBHIQ")
_FEEDBACK = struct.Struct("!BBBBHBBIIQH")
_FEEDBACK_BODY = struct.Struct("!IQH")
_AUDIO = struct.Struct("!BBBBHBBIHBBQHH")
_AUDIO_BODY = struct.Struct("!HBBQHH")
_HS_INIT_HEAD = struct.Struct("!BBBBHBBII")
_HS_RESP_HEAD = struct.Struct("!BBBBHBBIII")
_ROOM = struct.Struct("!BBBBHBBIIHH")
_ROOM_BODY = struct.Struct("!IHH")
_U32 = struct.Struct("!I")
_U32_PAIR = struct.Struct("!II")

RECEIVER_REPORT_SIZE: Final = _REPORT.size
"""Bytes in a receiver report (41)."""
KEYFRAME_REQUEST_SIZE: Final = _KEYFRAME_REQUEST.size
"""Bytes in a keyframe request (16)."""
KEEPALIVE_SIZE: Final = _KEEPALIVE.size
"""Bytes in a keepalive and in a keepalive ack (24)."""
ROOM_REPORT_SIZE: Final = _ROOM.size
"""Bytes in a room report (20)."""
NO_LUX: Final = 0xFFFFFFFF
"""A room report's ``lux_centi`` on the wire when the sender has no light reading."""
NO_BRIGHTNESS: Final = 0xFFFF
"""A room report's ``brightness_permille`` on the wire when the sender does not know its lights' level."""
MAX_BRIGHTNESS_PERMILLE: Final = 1000
"""Full brightness of the room lights, ‰."""

NACK_HEADER_SIZE: Final = _NACK.size
"""Bytes in a NACK before its fragment indices (18); each index adds 2."""
MAX_NACK_INDICES: Final = 256
"""Most fragment indices one NACK carries."""
FEC_HEADER_SIZE: Final = _FEC.size
"""Bytes before an FEC packet's parity block (32, as for media, so parity fits the same MTU budget)."""
MAX_FEC_BLOCKS: Final = 256
"""Most data + parity blocks of one frame (the Reed–Solomon code works in GF(2^8))."""
FEEDBACK_HEADER_SIZE: Final = _FEEDBACK.size
"""Bytes in a transport-feedback packet before its arrival offsets (26); each offset adds 4."""
MAX_FEEDBACK_ARRIVALS: Final = 256
"""Most packets one transport-feedback packet covers."""
AUDIO_HEADER_SIZE: Final = _AUDIO.size
"""Bytes in an audio packet before its redundant frames' lengths (28); each redundant frame adds 2."""
HANDSHAKE_MAC_SIZE: Final = 16
"""Bytes of ``mac1`` at the end of a handshake packet."""
HANDSHAKE_INIT_MESSAGE: Final = 104
"""Bytes of the Noise IK first message a HandshakeInit carries: e (32), encrypted s (48), an encrypted 8-byte
timestamp (24)."""
HANDSHAKE_RESPONSE_MESSAGE: Final = 49
"""Bytes of the Noise IK second message a HandshakeResponse carries: e (32), an encrypted 1-byte epoch
(17)."""
HANDSHAKE_INIT_SIZE: Final = HEADER_SIZE + 4 + HANDSHAKE_INIT_MESSAGE + HANDSHAKE_MAC_SIZE
HANDSHAKE_RESPONSE_SIZE: Final = HEADER_SIZE + 8 + HANDSHAKE_RESPONSE_MESSAGE + HANDSHAKE_MAC_SIZE
MAX_AUDIO_REDUNDANCY: Final = 3
"""Most earlier frames one audio packet repeats."""
MAX_AUDIO_FRAME: Final = 4096
"""Largest coded audio frame, bytes (10 ms of 48 kHz stereo PCM16 is 1920; an Opus packet ≤ 1275)."""
NOT_RECEIVED: Final = 0xFFFFFFFF
"""Arrival offset on the wire of a packet not received (yet); offsets proper are below it."""

# One precompiled struct per list length: packing and unpacking a list is then one C call.
_U16_LISTS: Final = tuple(struct.Struct(f"!{n}H") for n in range(MAX_NACK_INDICES + 1))
_U32_LISTS: Final = tuple(struct.Struct(f"!{n}I") for n in range(MAX_FEEDBACK_ARRIVALS + 1))

assert (
    _HEADER.size == HEADER_SIZE and _MEDIA.size == MEDIA_HEADER_SIZE and FEC_HEADER_SIZE == MEDIA_HEADER_SIZE
)


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


@dataclass(slots=True)
class Nack:
    """Asks the media sender to retransmit some data fragments of one frame (type 6)."""

    seq: int
    """Packet sequence number (u32)."""
    stream_id: int
    """Stream (u8) of the frame."""
    frame_id: int
    """Frame (u32) whose fragments are missing."""
    missing: tuple[int, ...]
    """Data fragment indices to resend: 1 to 256 of them, strictly increasing, each below 65535."""
    flags: int = 0
    """No flags are defined (u8); sent as 0."""

    def __bytes__(self) -> bytes:
        missing = self.missing
        _check_nack_indices(missing)
        count = len(missing)
        try:
            return _NACK.pack(
                MAGIC,
                PROTOCOL_VERSION,
                PacketType.NACK,
                PLAINTEXT_EPOCH,
                NACK_HEADER_SIZE + 2 * count,
                self.flags,
                self.stream_id,
                self.seq,
                self.frame_id,
                count,
            ) + _U16_LISTS[count].pack(*missing)
        except struct.error as exc:
            raise ProtocolError(f"Nack: cannot encode: {exc}") from None

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Self:
        """Parse one datagram that must be a NACK."""
        return _parse_as(cls, data)


@dataclass(slots=True)
class FecPacket:
    """One Reed–Solomon parity block over the data fragments of a frame (type 8). Sizes in bytes.

    The frame's ``data_count`` fragments, each zero-padded to ``block_size``, are blocks 0..k−1 of a
    systematic (k + m, k) code; this packet is block k + ``parity_index``. Any k of the k + m blocks rebuild
    the frame (:func:`app.net.fec.fec_recover`).
    """

    seq: int
    """Packet sequence number (u32)."""
    stream_id: int
    """Stream (u8) of the frame."""
    frame_id: int
    """Frame id (u32) of the protected frame."""
    data_count: int
    """Data fragments of the frame, k (the media packets' ``fragment_count``), 1..255."""
    parity_count: int
    """Parity blocks sent for the frame, m ≥ 1, with k + m ≤ 256."""
    parity_index: int
    """Which parity block this is, below ``parity_count``."""
    frame_size: int
    """Total bytes of the frame (as in its media packets, 1..16 MiB)."""
    block_size: int
    """Length of every block: the largest data fragment, ``fragment_size(frame_size, data_count, 0)``. Not
    sent on the wire: it is the payload's length."""
    capture_us: int
    """Sender's CLOCK_MONOTONIC µs when the picture was captured (as in its media packets, u64)."""
    payload: bytes | memoryview
    """The parity block, exactly ``block_size`` bytes."""
    flags: int = 0
    """The frame's :class:`MediaFlags` (KEYFRAME mirrors the media packets'; u8)."""

    @property
    def keyframe(self) -> bool:
        """True when the protected frame is a keyframe (IDR)."""
        return bool(self.flags & MediaFlags.KEYFRAME)

    def pack_header(self) -> bytes:
        """The 32 bytes before the parity block, for scatter-gather sends."""
        if len(self.payload) != self.block_size:
            raise ProtocolError(
                f"FecPacket: payload is {len(self.payload)} bytes, block size is {self.block_size}"
            )
        _check_fec(self.data_count, self.parity_count, self.parity_index, self.frame_size, self.block_size)
        try:
            return _FEC.pack(
                MAGIC,
                PROTOCOL_VERSION,
                PacketType.FEC,
                PLAINTEXT_EPOCH,
                FEC_HEADER_SIZE + self.block_size,
                self.flags,
                self.stream_id,
                self.seq,
                self.frame_id,
                self.parity_index,
                self.parity_count,
                self.data_count,
                self.frame_size,
                self.capture_us,
            )
        except struct.error as exc:
            raise ProtocolError(f"FecPacket: cannot encode: {exc}") from None

    def __bytes__(self) -> bytes:
        return self.pack_header() + self.payload

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Self:
        """Parse one datagram that must be an FEC packet."""
        return _parse_as(cls, data)


@dataclass(slots=True)
class TransportFeedback:
    """When each of a run of the peer's packets arrived (type 9), for congestion control. Times in µs.

    Covers packet seqs ``base_seq`` … ``base_seq + len(arrivals) − 1`` (mod 2**32) of all the packets the
    peer sent, whatever their type.
    """

    seq: int
    """Packet sequence number (u32) of this feedback."""
    base_seq: int
    """The peer's packet seq (u32) that ``arrivals[0]`` is about."""
    ref_arrival_us: int
    """Reference time (u64): the feedback sender's CLOCK_MONOTONIC µs that the offsets are relative to."""
    arrivals: tuple[int | None, ...]
    """Arrival of packet ``base_seq + i``, µs after ``ref_arrival_us`` (0 ≤ offset < 0xFFFFFFFF), or None
    when it has not been received (yet). 1 to 256 entries."""
    flags: int = 0
    """No flags are defined (u8); sent as 0."""

    def __bytes__(self) -> bytes:
        arrivals = self.arrivals
        count = len(arrivals)
        if not 1 <= count <= MAX_FEEDBACK_ARRIVALS:
            raise ProtocolError(f"TransportFeedback: {count} arrivals, expected 1..{MAX_FEEDBACK_ARRIVALS}")
        offsets = [NOT_RECEIVED if a is None else a for a in arrivals]
        for a in arrivals:
            # An offset of NOT_RECEIVED itself would come back as None: refuse it rather than change meaning.
            if a is not None and not 0 <= a < NOT_RECEIVED:
                raise ProtocolError(
                    f"TransportFeedback: arrival offset {a} µs is out of range 0..{NOT_RECEIVED - 1}"
                )
        try:
            return _FEEDBACK.pack(
                MAGIC,
                PROTOCOL_VERSION,
                PacketType.TRANSPORT_FEEDBACK,
                PLAINTEXT_EPOCH,
                FEEDBACK_HEADER_SIZE + 4 * count,
                self.flags,
                0,
                self.seq,
                self.base_seq,
                self.ref_arrival_us,
                count,
            ) + _U32_LISTS[count].pack(*offsets)
        except struct.error as exc:
            raise ProtocolError(f"TransportFeedback: cannot encode: {exc}") from None

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Self:
        """Parse one datagram that must be a transport-feedback packet."""
        return _parse_as(cls, data)


@dataclass(slots=True)
class AudioPacket:
    """One audio frame, plus copies of the frames just before it (type 10). Times in µs.

    ``frames[0]`` is frame ``audio_seq``; ``frames[k]`` (k ≥ 1) repeats frame ``audio_seq − k`` (mod 2**16),
    captured ``k × frame_samples`` samples earlier, so that a lost packet's frame usually arrives in the next
    one (redundancy in the manner of RFC 2198: Opus's own in-band FEC does not cover high-bitrate stereo).
    """

    seq: int
    """Packet sequence number (u32), per sender over all packet types."""
    audio_seq: int
    """Frame number of ``frames[0]`` (u16), consecutive per 10 ms frame, wrapping."""
    codec: int
    """:class:`AudioCodecId` (u8)."""
    capture_us: int
    """Sender's CLOCK_MONOTONIC µs when the first sample of ``frames[0]`` was captured (u64)."""
    frame_samples: int
    """Samples per channel in each frame at 48 kHz (u16, 1..65535; 480 for 10 ms)."""
    frames: tuple[bytes, ...]
    """The primary frame, then up to :data:`MAX_AUDIO_REDUNDANCY` earlier ones; each 1..MAX_AUDIO_FRAME
    bytes."""
    flags: int = 0
    """No flags are defined (u8); sent as 0, ignored."""

    def __bytes__(self) -> bytes:
        frames = self.frames
        count = len(frames)
        if not 1 <= count <= 1 + MAX_AUDIO_REDUNDANCY:
            raise ProtocolError(f"AudioPacket: {count} frames, expected 1..{1 + MAX_AUDIO_REDUNDANCY}")
        lengths = [len(f) for f in frames]
        for n in lengths:
            if not 1 <= n <= MAX_AUDIO_FRAME:
                raise ProtocolError(f"AudioPacket: a frame of {n} bytes, expected 1..{MAX_AUDIO_FRAME}")
        if not 1 <= self.frame_samples <= 0xFFFF:
            raise ProtocolError(f"AudioPacket: frame_samples {self.frame_samples} is out of range 1..65535")
        size = AUDIO_HEADER_SIZE + 2 * (count - 1) + sum(lengths)
        try:
            head = _AUDIO.pack(
                MAGIC,
                PROTOCOL_VERSION,
                PacketType.AUDIO,
                PLAINTEXT_EPOCH,
                size,
                self.flags,
                StreamId.AUDIO,
                self.seq,
                self.audio_seq,
                self.codec,
                count - 1,
                self.capture_us,
                self.frame_samples,
                lengths[0],
            )
        except struct.error as exc:
            raise ProtocolError(f"AudioPacket: cannot encode: {exc}") from None
        return head + _U16_LISTS[count - 1].pack(*lengths[1:]) + b"".join(frames)

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Self:
        """Parse one datagram that must be an audio packet."""
        return _parse_as(cls, data)


@dataclass(slots=True)
class HandshakeInit:
    """The first message of a session handshake (type 11), initiator → responder. Always plaintext.

    ``message`` is Noise IK's first message (it authenticates the initiator's static key and carries an
    encrypted timestamp against replays); ``mac1`` is a keyed hash over everything before it, keyed with the
    responder's public key, so that a host that does not know it is dropped after one hash
    (app/net/session.py).
    """

    seq: int
    """Packet sequence number (u32)."""
    sender_index: int
    """The initiator's random name for this handshake (u32); the response quotes it."""
    message: bytes
    """Noise IK message 1, exactly :data:`HANDSHAKE_INIT_MESSAGE` bytes."""
    mac1: bytes
    """:data:`HANDSHAKE_MAC_SIZE` bytes."""
    flags: int = 0
    """No flags are defined (u8); sent as 0."""

    def __bytes__(self) -> bytes:
        if len(self.message) != HANDSHAKE_INIT_MESSAGE:
            raise ProtocolError(
                f"HandshakeInit: message of {len(self.message)} bytes, expected {HANDSHAKE_INIT_MESSAGE}"
            )
        if len(self.mac1) != HANDSHAKE_MAC_SIZE:
            raise ProtocolError(
                f"HandshakeInit: mac1 of {len(self.mac1)} bytes, expected {HANDSHAKE_MAC_SIZE}"
            )
        try:
            head = _HS_INIT_HEAD.pack(
                MAGIC,
                PROTOCOL_VERSION,
                PacketType.HANDSHAKE_INIT,
                PLAINTEXT_EPOCH,
                HANDSHAKE_INIT_SIZE,
                self.flags,
                0,
                self.seq,
                self.sender_index,
            )
        except struct.error as exc:
            raise ProtocolError(f"HandshakeInit: cannot encode: {exc}") from None
        return head + self.message + self.mac1

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Self:
        """Parse one datagram that must be a handshake init."""
        return _parse_as(cls, data)


@dataclass(slots=True)
class HandshakeResponse:
    """The second message of a session handshake (type 12), responder → initiator. Always plaintext.

    Smaller than the init that caused it (85 bytes against 136), so answering can never amplify traffic.
    """

    seq: int
    """Packet sequence number (u32)."""
    sender_index: int
    """The responder's random name for this handshake (u32)."""
    receiver_index: int
    """The ``sender_index`` of the init this answers (u32)."""
    message: bytes
    """Noise IK message 2, exactly :data:`HANDSHAKE_RESPONSE_MESSAGE` bytes."""
    mac1: bytes
    """:data:`HANDSHAKE_MAC_SIZE` bytes, keyed with the initiator's public key."""
    flags: int = 0
    """No flags are defined (u8); sent as 0."""

    def __bytes__(self) -> bytes:
        if len(self.message) != HANDSHAKE_RESPONSE_MESSAGE:
            raise ProtocolError(
                f"HandshakeResponse: message of {len(self.message)} bytes, "
                f"expected {HANDSHAKE_RESPONSE_MESSAGE}"
            )
        if len(self.mac1) != HANDSHAKE_MAC_SIZE:
            raise ProtocolError(
                f"HandshakeResponse: mac1 of {len(self.mac1)} bytes, expected {HANDSHAKE_MAC_SIZE}"
            )
        try:
            head = _HS_RESP_HEAD.pack(
                MAGIC,
                PROTOCOL_VERSION,
                PacketType.HANDSHAKE_RESPONSE,
                PLAINTEXT_EPOCH,
                HANDSHAKE_RESPONSE_SIZE,
                self.flags,
                0,
                self.seq,
                self.sender_index,
                self.receiver_index,
            )
        except struct.error as exc:
            raise ProtocolError(f"HandshakeResponse: cannot encode: {exc}") from None
        return head + self.message + self.mac1

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Self:
        """Parse one datagram that must be a handshake response."""
        return _parse_as(cls, data)


@dataclass(slots=True)
class RoomReport:
    """The light level in the sender's room (type 13), sent about once a second so a twin in "match the far
    side" mode can follow it (app/engine/lightmatch.py)."""

    seq: int
    """Packet sequence number (u32)."""
    lux_centi: int | None
    """Light at the sender's room sensor, lux × 100 (u32, 0 … 0xFFFFFFFE); None = no reading."""
    age_ms: int
    """How old the reading was when sent, ms (u16; the sender saturates it at 65535)."""
    brightness_permille: int | None = None
    """The sender's room lights as last set, ‰ of full (u16, 0 … 1000); None = not known."""
    flags: int = 0
    """:class:`RoomFlags` (u8)."""

    def __bytes__(self) -> bytes:
        lux, brightness = self.lux_centi, self.brightness_permille
        if lux is not None and not 0 <= lux < NO_LUX:
            raise ProtocolError(f"RoomReport: lux_centi {lux} is out of range 0..{NO_LUX - 1}")
        if brightness is not None and not 0 <= brightness <= MAX_BRIGHTNESS_PERMILLE:
            raise ProtocolError(
                f"RoomReport: brightness {brightness} ‰ is out of range 0..{MAX_BRIGHTNESS_PERMILLE}"
            )
        try:
            return _ROOM.pack(
                MAGIC,
                PROTOCOL_VERSION,
                PacketType.ROOM_REPORT,
                PLAINTEXT_EPOCH,
                ROOM_REPORT_SIZE,
                self.flags,
                0,
                self.seq,
                NO_LUX if lux is None else lux,
                self.age_ms,
                NO_BRIGHTNESS if brightness is None else brightness,
            )
        except struct.error as exc:
            raise ProtocolError(f"RoomReport: cannot encode: {exc}") from None

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Self:
        """Parse one datagram that must be a room report."""
        return _parse_as(cls, data)


Packet = (
    MediaPacket
    | ReceiverReport
    | KeyframeRequest
    | Keepalive
    | KeepaliveAck
    | Nack
    | FecPacket
    | TransportFeedback
    | AudioPacket
    | HandshakeInit
    | HandshakeResponse
    | RoomReport
)
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


def _check_nack_indices(missing: tuple[int, ...]) -> None:
    """Raise :class:`ProtocolError` unless ``missing`` is 1..256 strictly increasing indices below 65535."""
    count = len(missing)
    if not 1 <= count <= MAX_NACK_INDICES:
        raise ProtocolError(f"Nack: {count} fragment indices, expected 1..{MAX_NACK_INDICES}")
    if missing[0] < 0:
        raise ProtocolError(f"Nack: fragment index {missing[0]} is negative")
    previous = -1
    for index in missing:
        if index <= previous:
            raise ProtocolError(
                f"Nack: fragment indices are not strictly increasing ({index} after {previous})"
            )
        previous = index
    if previous >= MAX_FRAGMENTS:
        raise ProtocolError(f"Nack: fragment index {previous} is not below {MAX_FRAGMENTS}")


def _check_fec(
    data_count: int, parity_count: int, parity_index: int, frame_size: int, block_size: int
) -> None:
    """Raise :class:`ProtocolError` unless the fields describe a valid parity block (PROTOCOL.md §6.1)."""
    if data_count < 1:
        raise ProtocolError(f"FecPacket: data count {data_count} is below 1")
    if parity_count < 1:
        raise ProtocolError(f"FecPacket: parity count {parity_count} is below 1")
    if data_count + parity_count > MAX_FEC_BLOCKS:
        raise ProtocolError(
            f"FecPacket: {data_count} data + {parity_count} parity blocks exceed {MAX_FEC_BLOCKS}"
        )
    if not 0 <= parity_index < parity_count:
        raise ProtocolError(
            f"FecPacket: parity index {parity_index} is not below parity count {parity_count}"
        )
    if not 0 < frame_size <= MAX_FRAME_SIZE:
        raise ProtocolError(f"FecPacket: frame size {frame_size} is out of range 1..{MAX_FRAME_SIZE}")
    if data_count > frame_size:
        raise ProtocolError(f"FecPacket: data count {data_count} exceeds frame size {frame_size}")
    expected = fragment_size(frame_size, data_count, 0)
    if block_size != expected:
        raise ProtocolError(
            f"FecPacket: block is {block_size} bytes, expected {expected} "
            f"(frame size {frame_size}, data count {data_count})"
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


def _parse_nack(data: _Data, n: int, flags: int, stream_id: int, seq: int) -> Nack:
    if n < NACK_HEADER_SIZE:
        raise ProtocolError(f"Nack: {n} bytes, shorter than its {NACK_HEADER_SIZE}-byte header")
    frame_id, count = _NACK_BODY.unpack_from(data, HEADER_SIZE)
    if not 1 <= count <= MAX_NACK_INDICES:
        raise ProtocolError(f"Nack: {count} fragment indices, expected 1..{MAX_NACK_INDICES}")
    if n != NACK_HEADER_SIZE + 2 * count:
        raise ProtocolError(f"Nack: length {n}, expected {NACK_HEADER_SIZE + 2 * count} (count {count})")
    missing: tuple[int, ...] = _U16_LISTS[count].unpack_from(data, NACK_HEADER_SIZE)
    _check_nack_indices(missing)
    return Nack(seq, stream_id, frame_id, missing, flags)


def _parse_fec(data: _Data, n: int, flags: int, stream_id: int, seq: int) -> FecPacket:
    if n < FEC_HEADER_SIZE:
        raise ProtocolError(f"FecPacket: {n} bytes, shorter than its {FEC_HEADER_SIZE}-byte header")
    if n > MAX_DATAGRAM:
        raise ProtocolError(f"FecPacket: {n} bytes, longer than the {MAX_DATAGRAM}-byte maximum datagram")
    frame_id, parity_index, parity_count, data_count, frame_size, capture_us = _FEC_BODY.unpack_from(
        data, HEADER_SIZE
    )
    block_size = n - FEC_HEADER_SIZE
    _check_fec(data_count, parity_count, parity_index, frame_size, block_size)
    return FecPacket(
        seq,
        stream_id,
        frame_id,
        data_count,
        parity_count,
        parity_index,
        frame_size,
        block_size,
        capture_us,
        bytes(data[FEC_HEADER_SIZE:]),
        flags,
    )


def _parse_feedback(data: _Data, n: int, flags: int, stream_id: int, seq: int) -> TransportFeedback:
    if n < FEEDBACK_HEADER_SIZE:
        raise ProtocolError(
            f"TransportFeedback: {n} bytes, shorter than its {FEEDBACK_HEADER_SIZE}-byte header"
        )
    if stream_id != 0:
        raise ProtocolError(f"TransportFeedback: stream id must be 0, got {stream_id}")
    base_seq, ref_arrival_us, count = _FEEDBACK_BODY.unpack_from(data, HEADER_SIZE)
    if not 1 <= count <= MAX_FEEDBACK_ARRIVALS:
        raise ProtocolError(f"TransportFeedback: {count} arrivals, expected 1..{MAX_FEEDBACK_ARRIVALS}")
    if n != FEEDBACK_HEADER_SIZE + 4 * count:
        raise ProtocolError(
            f"TransportFeedback: length {n}, expected {FEEDBACK_HEADER_SIZE + 4 * count} (count {count})"
        )
    offsets: tuple[int, ...] = _U32_LISTS[count].unpack_from(data, FEEDBACK_HEADER_SIZE)
    arrivals = tuple(None if offset == NOT_RECEIVED else offset for offset in offsets)
    return TransportFeedback(seq, base_seq, ref_arrival_us, arrivals, flags)


def _parse_audio(data: _Data, n: int, flags: int, stream_id: int, seq: int) -> AudioPacket:
    if n < AUDIO_HEADER_SIZE:
        raise ProtocolError(f"AudioPacket: {n} bytes, shorter than its {AUDIO_HEADER_SIZE}-byte header")
    if stream_id != StreamId.AUDIO:
        raise ProtocolError(f"AudioPacket: stream id must be {int(StreamId.AUDIO)}, got {stream_id}")
    audio_seq, codec, redundant, capture_us, frame_samples, first_len = _AUDIO_BODY.unpack_from(
        data, HEADER_SIZE
    )
    if frame_samples == 0:
        raise ProtocolError("AudioPacket: frame_samples is 0")
    if codec not in _AUDIO_CODECS:
        raise ProtocolError(f"AudioPacket: unknown codec {codec}")
    if redundant > MAX_AUDIO_REDUNDANCY:
        raise ProtocolError(f"AudioPacket: {redundant} redundant frames, at most {MAX_AUDIO_REDUNDANCY}")
    start = AUDIO_HEADER_SIZE + 2 * redundant
    if n < start:
        raise ProtocolError(f"AudioPacket: {n} bytes, shorter than its {start}-byte header")
    lengths = (first_len, *_U16_LISTS[redundant].unpack_from(data, AUDIO_HEADER_SIZE))
    for length in lengths:
        if not 1 <= length <= MAX_AUDIO_FRAME:
            raise ProtocolError(f"AudioPacket: a frame of {length} bytes, expected 1..{MAX_AUDIO_FRAME}")
    if n != start + sum(lengths):
        raise ProtocolError(
            f"AudioPacket: length {n}, expected {start + sum(lengths)} from its frame lengths"
        )
    frames = []
    offset = start
    for length in lengths:
        frames.append(bytes(data[offset : offset + length]))
        offset += length
    return AudioPacket(seq, audio_seq, codec, capture_us, frame_samples, tuple(frames), flags)


_AUDIO_CODECS: Final = frozenset(int(c) for c in AudioCodecId)


# Indexed by type number; a dict lookup is the whole dispatch.
def _parse_handshake_init(data: _Data, n: int, flags: int, stream_id: int, seq: int) -> HandshakeInit:
    if n != HANDSHAKE_INIT_SIZE:
        raise ProtocolError(f"HandshakeInit: length {n}, expected {HANDSHAKE_INIT_SIZE}")
    if stream_id != 0:
        raise ProtocolError(f"HandshakeInit: stream id must be 0, got {stream_id}")
    (sender_index,) = _U32.unpack_from(data, HEADER_SIZE)
    start = HEADER_SIZE + 4
    mac = start + HANDSHAKE_INIT_MESSAGE
    return HandshakeInit(seq, sender_index, bytes(data[start:mac]), bytes(data[mac:n]), flags)


def _parse_handshake_response(data: _Data, n: int, flags: int, stream_id: int, seq: int) -> HandshakeResponse:
    if n != HANDSHAKE_RESPONSE_SIZE:
        raise ProtocolError(f"HandshakeResponse: length {n}, expected {HANDSHAKE_RESPONSE_SIZE}")
    if stream_id != 0:
        raise ProtocolError(f"HandshakeResponse: stream id must be 0, got {stream_id}")
    sender_index, receiver_index = _U32_PAIR.unpack_from(data, HEADER_SIZE)
    start = HEADER_SIZE + 8
    mac = start + HANDSHAKE_RESPONSE_MESSAGE
    return HandshakeResponse(
        seq, sender_index, receiver_index, bytes(data[start:mac]), bytes(data[mac:n]), flags
    )


def _parse_room_report(data: _Data, n: int, flags: int, stream_id: int, seq: int) -> RoomReport:
    if n != ROOM_REPORT_SIZE:
        raise ProtocolError(f"RoomReport: length {n}, expected {ROOM_REPORT_SIZE}")
    if stream_id != 0:
        raise ProtocolError(f"RoomReport: stream id must be 0, got {stream_id}")
    lux, age_ms, brightness = _ROOM_BODY.unpack_from(data, HEADER_SIZE)
    if brightness != NO_BRIGHTNESS and brightness > MAX_BRIGHTNESS_PERMILLE:
        raise ProtocolError(
            f"RoomReport: brightness {brightness} ‰ is out of range 0..{MAX_BRIGHTNESS_PERMILLE}"
        )
    return RoomReport(
        seq,
        None if lux == NO_LUX else lux,
        age_ms,
        None if brightness == NO_BRIGHTNESS else brightness,
        flags,
    )


_PARSERS: Final[dict[int, tuple[str, Callable[[_Data, int, int, int, int], Packet]]]] = {
    PacketType.MEDIA: ("MediaPacket", _parse_media),
    PacketType.RECEIVER_REPORT: ("ReceiverReport", _parse_report),
    PacketType.KEYFRAME_REQUEST: ("KeyframeRequest", _parse_keyframe_request),
    PacketType.KEEPALIVE: ("Keepalive", _parse_keepalive),
    PacketType.KEEPALIVE_ACK: ("KeepaliveAck", _parse_keepalive_ack),
    PacketType.NACK: ("Nack", _parse_nack),
    PacketType.FEC: ("FecPacket", _parse_fec),
    PacketType.TRANSPORT_FEEDBACK: ("TransportFeedback", _parse_feedback),
    PacketType.AUDIO: ("AudioPacket", _parse_audio),
    PacketType.HANDSHAKE_INIT: ("HandshakeInit", _parse_handshake_init),
    PacketType.HANDSHAKE_RESPONSE: ("HandshakeResponse", _parse_handshake_response),
    PacketType.ROOM_REPORT: ("RoomReport", _parse_room_report),
}


def parse_packet(data: bytes | bytearray | memoryview) -> Packet:
    """Parse one datagram into a packet, or raise :class:`ProtocolError` saying what is wrong.

    Checks, in order: length of the header, magic, version, type, key epoch, the length field against the
    datagram's length, then the type's own rules. The payload of a media or FEC packet is copied out of
    ``data``, so a receive buffer may be reused afterwards.
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
        # Sealed datagrams are opened first (app/net/seal.py), which hands over the plaintext with epoch 0.
        raise ProtocolError(f"{name}: key epoch {epoch} in a datagram that was not opened")
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
