"""Doorway MCU protocol, version 1.0, host side: framing, messages and the reliable link (sans-I/O).

hwcontrol/PROTOCOL.md is the specification this module implements byte for byte. Nothing here opens a
port, reads a clock or draws a random number: the caller passes bytes in and writes the bytes it gets
back, and every time is an explicit ``now_ms`` (integer milliseconds of a monotonic clock; on the MCU its
uptime). The firmware (hwcontrol/firmware/) implements the same rules again in MicroPython; this module
is symmetric so its tests can use a :class:`ReliableLink` as the model of the MCU's side too.

Theory of operation
-------------------
**Framing.** A decoded frame is a 7-byte header (version, flags, seq, ack, type, length u16), a payload of
0–247 bytes and a CRC-16/CCITT-FALSE over everything before it; on the wire it is COBS-encoded and ended
by one 0x00. COBS (Cheshire & Baker) removes every zero from the data at a fixed cost of one byte per 254
(SLIP-style escaping can double a frame), so a 0x00 only ever ends a frame: a receiver that starts
mid-stream, loses bytes to an overrun or a re-plug, or sees line noise resynchronises at the next 0x00 (a
length prefix, by contrast, turns one corrupted length byte into a stream read out of step). The 16-bit
CRC has Hamming distance 4 at these lengths: it catches every error of 1–3 bits and every burst up to 16
bits, and anything else with probability 1 − 2**-16; the length field is checked as well.
:class:`FrameDecoder` is the streaming receiver: it holds at most one encoded frame (258 bytes), drops
anything longer up to the next delimiter, never raises, and counts what it drops by reason. Every strict
prefix of a valid frame is simply "need more" (it has no 0x00 yet).

**Reliability.** Commands must be applied exactly once and in order over a link that loses and corrupts
frames, so reliable frames carry an 8-bit ``seq`` and every frame carries a cumulative ``ack`` (the last
``seq`` received in order). The receiver accepts only ``seq == expected``; a frame from the 8 before it is
a duplicate (its ack was lost), acknowledged again but not delivered again; anything else is out of order
and dropped. The sender keeps at most 8 frames unacknowledged (so ``seq`` mod 256 is never ambiguous) and,
when the oldest has waited 50 ms, sends all of them again in order (go-back-N), doubling the wait up to
400 ms; 20 such retries without progress mean the link is lost. Go-back-N rather than selective repeat
because the receiver then needs no reorder buffer (the MCU has little RAM) and a serial cable does not
reorder: what is lost is a burst, and everything after it has to be sent again anyway. With nothing else
to send a side answers a reliable frame with a standalone ACK (within ``ack_delay_ms`` ≤ 20 ms), and it
sends a HEARTBEAT after 500 ms of silence, so a peer that hears nothing valid for 1.5 s knows the link is
gone. Round-trip times are measured only from frames sent once (Karn's rule).

**Versions.** HELLO_REQ and HELLO keep their frame header and the start of their payload in every protocol
version, so a host can always name an MCU's versions; a HELLO from another major decodes as
:class:`ForeignHello` and :func:`check_version` turns it into "firmware update required". Every other frame
of another major is dropped by the frame layer.

Errors come in two kinds, both subclasses of :class:`ProtocolError`: :class:`FrameError` (a byte string is
not a valid frame; its ``reason`` is the counter it belongs to) and :class:`MessageError` (a payload is not
a valid message; its ``code`` is the ERROR code the MCU answers with). Neither is ever raised by
:meth:`FrameDecoder.feed`, :meth:`ReliableLink.receive` or :meth:`ReliableLink.poll`: bad data is counted
and dropped there (or delivered as :class:`Undecodable`, so the application can answer it).

Threads: nothing here locks. A :class:`FrameDecoder` or :class:`ReliableLink` belongs to one thread (the
bridge's serial thread); messages are frozen dataclasses and may be handed to any thread.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import struct
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, IntFlag, StrEnum
from typing import ClassVar, Final, Self, TypeVar

# --- Constants (PROTOCOL.md §1–§3, §6) ---------------------------------------------------------------------

PROTOCOL_MAJOR: Final = 1
"""The protocol major version this module speaks (frame byte 0, HELLO byte 0)."""
PROTOCOL_MINOR: Final = 0
"""The protocol minor version this module speaks (HELLO_REQ byte 1)."""
DELIMITER: Final = 0x00
"""Ends every encoded frame; COBS guarantees it appears nowhere else."""
HEADER_SIZE: Final = 7
"""Bytes of a decoded frame before the payload."""
CRC_SIZE: Final = 2
"""Bytes of the CRC at the end of a decoded frame."""
MIN_FRAME: Final = HEADER_SIZE + CRC_SIZE
"""Smallest decoded frame, bytes (an empty payload)."""
MAX_FRAME: Final = 256
"""Largest decoded frame, bytes."""
MAX_PAYLOAD: Final = MAX_FRAME - MIN_FRAME
"""Largest payload, bytes (247)."""
MAX_ENCODED: Final = MAX_FRAME + 2
"""Largest COBS encoding of a decoded frame, bytes, without its delimiter (one code byte per started 254
bytes, plus one): a receiver holding more than this without a delimiter holds garbage."""
CRC_INIT: Final = 0xFFFF
"""Initial value of CRC-16/CCITT-FALSE."""

SEQ_MODULUS: Final = 256
"""Sequence numbers and acks are 8-bit and wrap."""
WINDOW: Final = 8
"""Most reliable frames a side keeps unacknowledged; also how far back a duplicate is recognised."""
RTO_INITIAL_MS: Final = 50
"""Wait before the first retransmission of the oldest unacknowledged frame, ms."""
RTO_MAX_MS: Final = 400
"""The retransmission wait doubles on each retry up to this, ms."""
MAX_RETRIES: Final = 20
"""Retransmission rounds without any acknowledgement before the link counts as lost."""
ACK_DELAY_MAX_MS: Final = 20
"""Longest a side may hold a standalone ACK waiting for something to piggyback it on, ms."""
HEARTBEAT_INTERVAL_MS: Final = 500
"""A side that has sent nothing for this long sends a HEARTBEAT, ms."""
LINK_LOST_MS: Final = 1500
"""No valid frame for this long means the link is lost, ms."""
HELLO_RETRY_MS: Final = 200
"""The host repeats HELLO_REQ this often until a HELLO comes, ms (the bridge's timer)."""
MAX_QUEUED: Final = 64
"""Reliable messages :meth:`ReliableLink.send` queues beyond the window before :class:`QueueFullError`."""
MAX_QUEUED_UNRELIABLE: Final = 16
"""Unreliable messages queued between two polls before :class:`QueueFullError`."""
BRIGHTNESS_MAX: Final = 1000
"""Full brightness, in ‰."""
FAILSAFE_MIN_MS: Final = 500
FAILSAFE_MAX_MS: Final = 60000
"""Range of SET_FAILSAFE ``timeout_ms``."""
ALL_CHANNELS: Final = 0xFF
"""SET_LIGHT ``channel`` that addresses every channel."""
BOOT_MAC_LABEL: Final = b"doorway-boot"
"""Prefix of the HMAC input of ENTER_BOOTLOADER (§4), so the key signs nothing else by accident."""
BOOT_MAC_SIZE: Final = 16
"""Bytes of the truncated HMAC-SHA256 in ENTER_BOOTLOADER."""


class ProtocolError(Exception):
    """Bytes that are not a valid frame or message, or a frame or message that cannot be encoded."""


class FrameErrorReason(StrEnum):
    """Why a frame was dropped: the keys of :attr:`FrameDecoder.invalid`."""

    COBS = "cobs"
    """The COBS encoding is broken (a group runs past the end, or a zero where none may be)."""
    SIZE = "size"
    """The decoded frame is not 9–256 bytes."""
    CRC = "crc"
    """The CRC does not match."""
    VERSION = "version"
    """Another protocol major (and not a HELLO_REQ or HELLO)."""
    LENGTH = "length"
    """The length field disagrees with the frame's size."""
    ENCODE = "encode"
    """A field is out of range when building a frame (never counted by a decoder)."""


class FrameError(ProtocolError):
    """A byte string is not a valid frame (or a frame cannot be built). The one error of the frame layer."""

    def __init__(self, reason: FrameErrorReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        """What to count it as."""


class MessageType(IntEnum):
    """Frame byte 4 (§4)."""

    HELLO_REQ = 1
    HELLO = 2
    ACK = 3
    HEARTBEAT = 4
    ERROR = 5
    SET_LIGHT = 16
    SET_SCENE = 17
    SET_FAILSAFE = 18
    LIGHT_STATE = 19
    SENSORS = 32
    EVENT = 33
    ENTER_BOOTLOADER = 48


RELIABLE_TYPES: Final = frozenset(
    {
        MessageType.ERROR,
        MessageType.SET_LIGHT,
        MessageType.SET_SCENE,
        MessageType.SET_FAILSAFE,
        MessageType.LIGHT_STATE,
        MessageType.EVENT,
        MessageType.ENTER_BOOTLOADER,
    }
)
"""Types sent as reliable frames (the "Reliable" column of §4); :meth:`ReliableLink.send`'s default."""
VERSIONLESS_TYPES: Final = frozenset({MessageType.HELLO_REQ, MessageType.HELLO})
"""Types the frame layer accepts from any protocol major, so versions can be compared (§2, §5)."""


class FrameFlags(IntFlag):
    """Frame byte 1. Bits 1–7 are sent as 0 and ignored (kept as they are through a round trip)."""

    RELIABLE = 0x01


class ErrorCode(IntEnum):
    """ERROR ``code`` (§4); also :attr:`MessageError.code`, the answer to a payload that does not decode."""

    UNKNOWN_TYPE = 1
    BAD_LENGTH = 2
    VALUE_OUT_OF_RANGE = 3
    NOT_SUPPORTED = 4
    BOOTLOADER_REFUSED = 5
    BUSY = 6


class MessageError(ProtocolError):
    """A payload is not a valid message of its type (or a message has a field out of range). The one
    error of the message layer."""

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = code
        """The ERROR code that answers it."""


class EventKind(IntEnum):
    """EVENT ``kind`` (§4)."""

    PRIVACY_BUTTON = 1
    """The privacy button was pressed (value 0)."""
    PRIVACY_SWITCH = 2
    """The privacy switch moved (value 1 on, 0 off)."""
    PRESENCE = 3
    """Presence changed (value 1 someone, 0 nobody)."""
    FAILSAFE_ENTERED = 4
    """The MCU entered failsafe (value: the scene it faded to)."""
    FAILSAFE_LEFT = 5
    """The MCU left failsafe (value 0)."""


class Capability(IntFlag):
    """HELLO ``capabilities`` bits. Bits not named here are kept (a newer minor may define them)."""

    PWM_LIGHTS = 1 << 0
    RGB = 1 << 1
    LIGHT_SENSOR = 1 << 2
    TEMPERATURE = 1 << 3
    HUMIDITY = 1 << 4
    PRESENCE = 1 << 5
    PRIVACY_BUTTON = 1 << 6
    PRIVACY_SWITCH = 1 << 7
    BOOTLOADER = 1 << 8


class BootReason(IntEnum):
    """HELLO ``boot_reason``. :class:`Hello` keeps values not named here as plain ints (a newer minor may
    add reasons, and a HELLO must never be refused for that)."""

    POWER_ON = 0
    WATCHDOG = 1
    BROWN_OUT = 2
    SOFTWARE_RESET = 3
    FAILSAFE_RESET = 4
    AFTER_BOOTLOADER = 5
    UNKNOWN = 255


class Scene(IntEnum):
    """Lighting scenes (§4)."""

    OFF = 0
    SAFE = 1
    """Warm white, 300 ‰, 2700 K: the default failsafe scene."""
    DAY = 2
    """Neutral, 800 ‰, 4000 K."""
    EVENING = 3
    """Warm, 500 ‰, 2700 K."""


class SensorValid(IntFlag):
    """SENSORS ``valid`` bits: which readings are real (the others are 0)."""

    LUX = 1 << 0
    TEMPERATURE = 1 << 1
    HUMIDITY = 1 << 2
    PRESENCE = 1 << 3


# --- COBS and CRC ------------------------------------------------------------------------------------------


def cobs_encode(data: bytes | bytearray | memoryview) -> bytes:
    """COBS-encode ``data``: the result holds no 0x00 and is at most ``len(data) + 1 + len(data) // 254``
    bytes. The delimiter is not added."""
    out = bytearray()
    blocks = bytes(data).split(b"\x00")
    last = len(blocks) - 1
    for i, block in enumerate(blocks):
        # Each block ends at a zero (or, for the last one, at the end of the data). Runs of 254 non-zero
        # bytes get code 0xFF, which implies no zero after them.
        start = 0
        while len(block) - start >= 254:
            out.append(0xFF)
            out += block[start : start + 254]
            start += 254
            if start == len(block) and i == last:
                # The data ends exactly after a full group: no phantom zero group follows (canonical form).
                return bytes(out)
        out.append(len(block) - start + 1)
        out += block[start:]
    return bytes(out)


def cobs_decode(data: bytes | bytearray | memoryview) -> bytes:
    """Decode one COBS-encoded frame (without its delimiter). Raises :class:`FrameError` (reason COBS) when
    ``data`` holds a zero or a group runs past the end."""
    data = bytes(data)
    zero = data.find(b"\x00")
    if zero >= 0:
        raise FrameError(FrameErrorReason.COBS, f"COBS: zero byte at offset {zero}")
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        end = i + code
        if end > n:
            raise FrameError(
                FrameErrorReason.COBS,
                f"COBS: group at offset {i} (code {code}) runs past the end of {n} bytes",
            )
        out += data[i + 1 : end]
        i = end
        # A group shorter than 254 bytes stood for a zero after it, except the last one (the phantom zero).
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


def crc16_ccitt(data: bytes | bytearray | memoryview, crc: int = CRC_INIT) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, not reflected, no final XOR) of ``data``.
    ``crc16_ccitt(b"123456789") == 0x29B1``."""
    # binascii.crc_hqx is exactly this polynomial, unreflected, seeded with ``crc``, in C.
    return binascii.crc_hqx(data, crc)


# --- Frames ------------------------------------------------------------------------------------------------

_HEADER: Final = struct.Struct("<BBBBBH")
_CRC: Final = struct.Struct("<H")
assert _HEADER.size == HEADER_SIZE


def _build(version: int, flags: int, seq: int, ack: int, mtype: int, payload: bytes) -> bytes:
    """A decoded frame's bytes, CRC included. Fields unchecked: callers pass values known to fit."""
    body = _HEADER.pack(version, flags, seq, ack, mtype, len(payload)) + payload
    return body + _CRC.pack(binascii.crc_hqx(body, CRC_INIT))


def _wire(version: int, flags: int, seq: int, ack: int, mtype: int, payload: bytes) -> bytes:
    return cobs_encode(_build(version, flags, seq, ack, mtype, payload)) + b"\x00"


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame (§2). ``type`` is a plain int: unknown types pass the frame layer and are refused
    by :func:`decode_message`, so the MCU can answer them with ERROR 1."""

    type: int
    """Message type (u8), see :class:`MessageType`."""
    payload: bytes = b""
    """0–247 bytes."""
    flags: int = 0
    """:class:`FrameFlags` bits (u8)."""
    seq: int = 0
    """Sequence number of a reliable frame (u8); 0 in unreliable frames."""
    ack: int = 0
    """Cumulative acknowledgement (u8): the last ``seq`` the sender received in order."""
    version: int = PROTOCOL_MAJOR
    """Protocol major (u8); only HELLO_REQ and HELLO frames may carry another."""

    @property
    def reliable(self) -> bool:
        """True when the frame carries a ``seq`` to acknowledge and apply once."""
        return bool(self.flags & FrameFlags.RELIABLE)

    def encode(self) -> bytes:
        """The decoded frame's bytes, CRC included (9–256 bytes). Raises :class:`FrameError` (ENCODE)."""
        for name, value in (
            ("version", self.version),
            ("flags", self.flags),
            ("seq", self.seq),
            ("ack", self.ack),
            ("type", self.type),
        ):
            if not 0 <= value <= 0xFF:
                raise FrameError(FrameErrorReason.ENCODE, f"frame: {name} {value} is out of range 0..255")
        if len(self.payload) > MAX_PAYLOAD:
            raise FrameError(
                FrameErrorReason.ENCODE,
                f"frame: payload of {len(self.payload)} bytes, expected at most {MAX_PAYLOAD}",
            )
        return _build(self.version, self.flags, self.seq, self.ack, self.type, bytes(self.payload))

    def to_wire(self) -> bytes:
        """What goes on the wire: the COBS encoding of :meth:`encode` and the 0x00 delimiter."""
        return cobs_encode(self.encode()) + b"\x00"

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Self:
        """Parse one decoded frame. Raises :class:`FrameError` whose ``reason`` says what is wrong."""
        data = bytes(data)
        n = len(data)
        if not MIN_FRAME <= n <= MAX_FRAME:
            raise FrameError(FrameErrorReason.SIZE, f"frame: {n} bytes, expected {MIN_FRAME}..{MAX_FRAME}")
        (crc,) = _CRC.unpack_from(data, n - CRC_SIZE)
        computed = binascii.crc_hqx(data[: n - CRC_SIZE], CRC_INIT)
        if crc != computed:
            raise FrameError(FrameErrorReason.CRC, f"frame: CRC 0x{crc:04x}, computed 0x{computed:04x}")
        version, flags, seq, ack, mtype, length = _HEADER.unpack_from(data)
        if version != PROTOCOL_MAJOR and mtype not in VERSIONLESS_TYPES:
            raise FrameError(
                FrameErrorReason.VERSION, f"frame: protocol version {version}, expected {PROTOCOL_MAJOR}"
            )
        if length != n - MIN_FRAME:
            raise FrameError(
                FrameErrorReason.LENGTH, f"frame: length field {length}, but {n - MIN_FRAME} payload bytes"
            )
        return cls(mtype, data[HEADER_SIZE : n - CRC_SIZE], flags, seq, ack, version)

    @classmethod
    def from_wire(cls, data: bytes | bytearray | memoryview) -> Self:
        """Parse exactly one encoded frame with its delimiter (as :meth:`to_wire` makes it)."""
        data = bytes(data)
        if not data or data[-1] != DELIMITER:
            raise FrameError(FrameErrorReason.COBS, "wire: frame does not end with the 0x00 delimiter")
        return cls.decode(cobs_decode(data[:-1]))


class FrameDecoder:
    """Streaming receiver: bytes in any chunks → valid frames. Never raises; memory bounded by
    :data:`MAX_ENCODED`.

    Counters (cumulative, also across :meth:`reset`): ``bytes_received``, ``frames`` (valid), ``invalid``
    (dropped frames by :class:`FrameErrorReason`), ``overlong`` (more than :data:`MAX_ENCODED` bytes without
    a delimiter, dropped up to the next one). Empty frames (two delimiters in a row) are not counted. Every
    non-empty delimited run of bytes counts exactly once in ``frames``, ``invalid`` or ``overlong``.
    """

    __slots__ = ("_buf", "_discarding", "bytes_received", "frames", "invalid", "last_error", "overlong")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._discarding = False
        self.bytes_received = 0
        self.frames = 0
        self.invalid: Counter[str] = Counter()
        self.overlong = 0
        self.last_error: FrameError | None = None
        """The most recent reason a frame was dropped, for logging it once (overlong frames excluded)."""

    @property
    def invalid_total(self) -> int:
        """Frames dropped as invalid, all reasons together (overlong ones not included)."""
        return sum(self.invalid.values())

    @property
    def buffered(self) -> int:
        """Bytes held waiting for a delimiter (0 while discarding an overlong frame)."""
        return len(self._buf)

    def reset(self) -> None:
        """Forget a partial frame (a new connection). Counters are kept."""
        self._buf.clear()
        self._discarding = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Take the next bytes from the wire; return the frames they complete, in order."""
        data = bytes(data)
        self.bytes_received += len(data)
        frames: list[Frame] = []
        start = 0
        while True:
            end = data.find(b"\x00", start)
            if end < 0:
                if not self._discarding:
                    if len(self._buf) + len(data) - start > MAX_ENCODED:
                        # Garbage (or a lost delimiter): stop buffering, drop everything to the next 0x00.
                        self._discarding = True
                        self._buf.clear()
                    else:
                        self._buf += data[start:]
                return frames
            if self._discarding:
                self._discarding = False
                self.overlong += 1
            else:
                if self._buf:
                    self._buf += data[start:end]
                    segment = bytes(self._buf)
                    self._buf.clear()
                else:
                    segment = data[start:end]
                if len(segment) > MAX_ENCODED:
                    self.overlong += 1
                elif segment:
                    try:
                        frames.append(Frame.decode(cobs_decode(segment)))
                        self.frames += 1
                    except FrameError as exc:
                        self.invalid[exc.reason] += 1
                        self.last_error = exc
            start = end + 1


# --- Messages ----------------------------------------------------------------------------------------------


_E = TypeVar("_E", bound=IntEnum)


def _check(name: str, field: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise MessageError(
            f"{name}: {field} {value} is out of range {lo}..{hi}", ErrorCode.VALUE_OUT_OF_RANGE
        )


def _unpack(name: str, st: struct.Struct, payload: bytes | bytearray | memoryview) -> tuple[int, ...]:
    if len(payload) != st.size:
        raise MessageError(
            f"{name}: payload is {len(payload)} bytes, expected {st.size}", ErrorCode.BAD_LENGTH
        )
    return st.unpack(payload)


def _as_enum(enum: type[_E], name: str, field: str, value: int) -> _E:
    try:
        return enum(value)
    except ValueError:
        raise MessageError(
            f"{name}: {field} {value} is not a known {enum.__name__}", ErrorCode.VALUE_OUT_OF_RANGE
        ) from None


_HELLO_REQ: Final = struct.Struct("<BBI")
_HELLO: Final = struct.Struct("<BBBBBIB8sHBIB")
_HELLO_HEAD: Final = struct.Struct("<BBBBB")
_U32: Final = struct.Struct("<I")
_ERROR: Final = struct.Struct("<BBB")
_SET_LIGHT: Final = struct.Struct("<BHHBBBH")
_SET_SCENE: Final = struct.Struct("<BH")
_SET_FAILSAFE: Final = struct.Struct("<HB")
_CHANNEL: Final = struct.Struct("<HHBBB")
_SENSORS: Final = struct.Struct("<IBIhHB")
_EVENT: Final = struct.Struct("<BBI")
_BOOT: Final = struct.Struct("<I16s")
_BOOT_MAC_INPUT: Final = struct.Struct("<II")
MAX_LIGHT_CHANNELS: Final = (MAX_PAYLOAD - 1) // _CHANNEL.size
"""Most channels one LIGHT_STATE can carry (35)."""


@dataclass(frozen=True, slots=True)
class HelloReq:
    """HELLO_REQ (type 1, host → MCU, unreliable): "who are you?"; also resets the MCU's reliable state
    when ``nonce`` is new (§5)."""

    TYPE: ClassVar[MessageType] = MessageType.HELLO_REQ
    nonce: int
    """Random per host connection (u32), repeated unchanged in every retry of that connection."""
    major: int = PROTOCOL_MAJOR
    """The host's protocol major (u8). Any value decodes: the MCU answers every HELLO_REQ."""
    minor: int = PROTOCOL_MINOR
    """The host's protocol minor (u8)."""

    def __post_init__(self) -> None:
        _check("HELLO_REQ", "major", self.major, 0, 0xFF)
        _check("HELLO_REQ", "minor", self.minor, 0, 0xFF)
        _check("HELLO_REQ", "nonce", self.nonce, 0, 0xFFFFFFFF)

    def encode(self) -> bytes:
        """The payload (6 bytes)."""
        return _HELLO_REQ.pack(self.major, self.minor, self.nonce)

    @classmethod
    def decode(cls, payload: bytes | bytearray | memoryview) -> Self:
        """Parse a payload; raises :class:`MessageError`."""
        major, minor, nonce = _unpack("HELLO_REQ", _HELLO_REQ, payload)
        return cls(nonce, major, minor)


@dataclass(frozen=True, slots=True)
class Hello:
    """HELLO (type 2, MCU → host, unreliable) of this protocol major: who the MCU is (§4, §5)."""

    TYPE: ClassVar[MessageType] = MessageType.HELLO
    minor: int
    """The MCU's protocol minor (u8)."""
    fw_major: int
    fw_minor: int
    fw_patch: int
    """Firmware version (u8 each)."""
    build: int
    """Firmware build number (u32)."""
    hw_rev: int
    """Board revision (u8)."""
    unique_id: bytes
    """The RP2040 flash's 8-byte unique id."""
    capabilities: Capability
    """What this board has (u16)."""
    boot_reason: int
    """Why it last booted (u8): a :class:`BootReason`, or a number a newer minor defined."""
    session_id: int
    """Random per boot (u32): a different one means the MCU rebooted."""
    channels: int
    """Light channels (u8)."""
    major: int = PROTOCOL_MAJOR
    """The MCU's protocol major: always :data:`PROTOCOL_MAJOR` here (another is a :class:`ForeignHello`)."""

    def __post_init__(self) -> None:
        _check("HELLO", "major", self.major, PROTOCOL_MAJOR, PROTOCOL_MAJOR)
        for field in ("minor", "fw_major", "fw_minor", "fw_patch", "hw_rev", "boot_reason", "channels"):
            _check("HELLO", field, getattr(self, field), 0, 0xFF)
        _check("HELLO", "build", self.build, 0, 0xFFFFFFFF)
        _check("HELLO", "session_id", self.session_id, 0, 0xFFFFFFFF)
        _check("HELLO", "capabilities", self.capabilities, 0, 0xFFFF)
        if len(self.unique_id) != 8:
            raise MessageError(
                f"HELLO: unique_id of {len(self.unique_id)} bytes, expected 8", ErrorCode.VALUE_OUT_OF_RANGE
            )

    @property
    def firmware_version(self) -> str:
        """``"major.minor.patch"``."""
        return f"{self.fw_major}.{self.fw_minor}.{self.fw_patch}"

    def encode(self) -> bytes:
        """The payload (26 bytes)."""
        return _HELLO.pack(
            self.major,
            self.minor,
            self.fw_major,
            self.fw_minor,
            self.fw_patch,
            self.build,
            self.hw_rev,
            self.unique_id,
            self.capabilities,
            self.boot_reason,
            self.session_id,
            self.channels,
        )

    @classmethod
    def decode(cls, payload: bytes | bytearray | memoryview) -> Self:
        """Parse a payload of this major; raises :class:`MessageError` (use :func:`decode_message` to get a
        :class:`ForeignHello` for another major)."""
        (major, minor, fw_major, fw_minor, fw_patch, build, hw_rev, uid, caps, boot, session, channels) = (
            _unpack("HELLO", _HELLO, payload)
        )
        return cls(
            minor,
            fw_major,
            fw_minor,
            fw_patch,
            build,
            hw_rev,
            bytes(uid),
            Capability(caps),
            boot,
            session,
            channels,
            major,
        )


@dataclass(frozen=True, slots=True)
class ForeignHello:
    """A HELLO from another protocol major: only its first five bytes are known (they keep their layout in
    every version); the rest is kept as it came."""

    TYPE: ClassVar[MessageType] = MessageType.HELLO
    major: int
    minor: int
    fw_major: int
    fw_minor: int
    fw_patch: int
    rest: bytes = b""

    def __post_init__(self) -> None:
        for field in ("major", "minor", "fw_major", "fw_minor", "fw_patch"):
            _check("HELLO", field, getattr(self, field), 0, 0xFF)
        if self.major == PROTOCOL_MAJOR:
            raise MessageError(
                f"HELLO: protocol major {self.major} is this host's own, not foreign",
                ErrorCode.VALUE_OUT_OF_RANGE,
            )

    @property
    def firmware_version(self) -> str:
        """``"major.minor.patch"``."""
        return f"{self.fw_major}.{self.fw_minor}.{self.fw_patch}"

    def encode(self) -> bytes:
        """The payload, as it came."""
        return (
            _HELLO_HEAD.pack(self.major, self.minor, self.fw_major, self.fw_minor, self.fw_patch) + self.rest
        )

    @classmethod
    def decode(cls, payload: bytes | bytearray | memoryview) -> Self:
        """Parse the first five bytes of any HELLO whose major is not :data:`PROTOCOL_MAJOR`."""
        if len(payload) < _HELLO_HEAD.size:
            raise MessageError(
                f"HELLO: payload is {len(payload)} bytes, expected at least {_HELLO_HEAD.size}",
                ErrorCode.BAD_LENGTH,
            )
        major, minor, fw_major, fw_minor, fw_patch = _HELLO_HEAD.unpack_from(payload)
        return cls(major, minor, fw_major, fw_minor, fw_patch, bytes(payload[_HELLO_HEAD.size :]))


@dataclass(frozen=True, slots=True)
class Ack:
    """ACK (type 3, either way, unreliable, empty): carries only the frame header's ``ack``."""

    TYPE: ClassVar[MessageType] = MessageType.ACK

    def encode(self) -> bytes:
        """The payload (empty)."""
        return b""

    @classmethod
    def decode(cls, payload: bytes | bytearray | memoryview) -> Self:
        """Parse a payload; raises :class:`MessageError` unless it is empty."""
        if payload:
            raise MessageError(f"ACK: payload is {len(payload)} bytes, expected 0", ErrorCode.BAD_LENGTH)
        return cls()


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """HEARTBEAT (type 4, either way, unreliable): "still here" after 500 ms of silence."""

    TYPE: ClassVar[MessageType] = MessageType.HEARTBEAT
    uptime_ms: int
    """The sender's clock, ms (u32, wraps after 49.7 days)."""

    def __post_init__(self) -> None:
        _check("HEARTBEAT", "uptime_ms", self.uptime_ms, 0, 0xFFFFFFFF)

    def encode(self) -> bytes:
        """The payload (4 bytes)."""
        return _U32.pack(self.uptime_ms)

    @classmethod
    def decode(cls, payload: bytes | bytearray | memoryview) -> Self:
        """Parse a payload; raises :class:`MessageError`."""
        return cls(*_unpack("HEARTBEAT", _U32, payload))


@dataclass(frozen=True, slots=True)
class ErrorReport:
    """ERROR (type 5, MCU → host, reliable): the MCU refused a frame."""

    TYPE: ClassVar[MessageType] = MessageType.ERROR
    code: ErrorCode
    ref_type: int
    """Type of the refused frame (u8)."""
    ref_seq: int
    """``seq`` of the refused frame (u8; 0 for an unreliable one)."""

    def __post_init__(self) -> None:
        _as_enum(ErrorCode, "ERROR", "code", self.code)
        _check("ERROR", "ref_type", self.ref_type, 0, 0xFF)
        _check("ERROR", "ref_seq", self.ref_seq, 0, 0xFF)

    def encode(self) -> bytes:
        """The payload (3 bytes)."""
        return _ERROR.pack(self.code, self.ref_type, self.ref_seq)

    @classmethod
    def decode(cls, payload: bytes | bytearray | memoryview) -> Self:
        """Parse a payload; raises :class:`MessageError`."""
        code, ref_type, ref_seq = _unpack("ERROR", _ERROR, payload)
        return cls(_as_enum(ErrorCode, "ERROR", "code", code), ref_type, ref_seq)


@dataclass(frozen=True, slots=True)
class SetLight:
    """SET_LIGHT (type 16, host → MCU, reliable): an absolute set-point for one channel or all."""

    TYPE: ClassVar[MessageType] = MessageType.SET_LIGHT
    channel: int
    """Channel (u8), or :data:`ALL_CHANNELS`."""
    brightness: int
    """0–1000 ‰."""
    cct_k: int = 0
    """Colour temperature, K (u16); 0 leaves it as it is."""
    r: int = 0
    g: int = 0
    b: int = 0
    """Colour of RGB channels (u8 each)."""
    fade_ms: int = 0
    """Fade time from the current state, ms (u16)."""

    def __post_init__(self) -> None:
        _check("SET_LIGHT", "channel", self.channel, 0, 0xFF)
        _check("SET_LIGHT", "brightness", self.brightness, 0, BRIGHTNESS_MAX)
        _check("SET_LIGHT", "cct_k", self.cct_k, 0, 0xFFFF)
        _check("SET_LIGHT", "r", self.r, 0, 0xFF)
        _check("SET_LIGHT", "g", self.g, 0, 0xFF)
        _check("SET_LIGHT", "b", self.b, 0, 0xFF)
        _check("SET_LIGHT", "fade_ms", self.fade_ms, 0, 0xFFFF)

    def encode(self) -> bytes:
        """The payload (10 bytes)."""
        return _SET_LIGHT.pack(
            self.channel, self.brightness, self.cct_k, self.r, self.g, self.b, self.fade_ms
        )

    @classmethod
    def decode(cls, payload: bytes | bytearray | memoryview) -> Self:
        """Parse a payload; raises :class:`MessageError`."""
        return cls(*_unpack("SET_LIGHT", _SET_LIGHT, payload))


@dataclass(frozen=True, slots=True)
class SetScene:
    """SET_SCENE (type 17, host → MCU, reliable)."""

    TYPE: ClassVar[MessageType] = MessageType.SET_SCENE
    scene: Scene
    fade_ms: int = 0
    """Fade time, ms (u16)."""

    def __post_init__(self) -> None:
        _as_enum(Scene, "SET_SCENE", "scene", self.scene)
        _check("SET_SCENE", "fade_ms", self.fade_ms, 0, 0xFFFF)

    def encode(self) -> bytes:
        """The payload (3 bytes)."""
        return _SET_SCENE.pack(self.scene, self.fade_ms)

    @classmethod
    def decode(cls, payload: bytes | bytearray | memoryview) -> Self:
        """Parse a payload; raises :class:`MessageError`."""
        scene, fade_ms = _unpack("SET_SCENE", _SET_SCENE, payload)
        return cls(_as_enum(Scene, "SET_SCENE", "scene", scene), fade_ms)


@dataclass(frozen=True, slots=True)
class SetFailsafe:
    """SET_FAILSAFE (type 18, host → MCU, reliable): when the MCU gives up on the host, and what it shows."""

    TYPE: ClassVar[MessageType] = MessageType.SET_FAILSAFE
    timeout_ms: int
    """Silence from the host before failsafe, ms (500–60000; the MCU's default is 3000)."""
    scene: Scene = Scene.SAFE

    def __post_init__(self) -> None:
        _check("SET_FAILSAFE", "timeout_ms", self.timeout_ms, FAILSAFE_MIN_MS, FAILSAFE_MAX_MS)
        _as_enum(Scene, "SET_FAILSAFE", "scene", self.scene)

    def encode(self) -> bytes:
        """The payload (3 bytes)."""
        return _SET_FAILSAFE.pack(self.timeout_ms, self.scene)

    @classmethod
    def decode(cls, payload: bytes | bytearray | memoryview) -> Self:
        """Parse a payload; raises :class:`MessageError`."""
        timeout_ms, scene = _unpack("SET_FAILSAFE", _SET_FAILSAFE, payload)
        _check("SET_FAILSAFE", "timeout_ms", timeout_ms, FAILSAFE_MIN_MS, FAILSAFE_MAX_MS)
        return cls(timeout_ms, _as_enum(Scene, "SET_FAILSAFE", "scene", scene))


@dataclass(frozen=True, slots=True)
class ChannelState:
    """One channel of a LIGHT_STATE: what it shows now."""

    brightness: int
    """0–1000 ‰."""
    cct_k: int = 0
    """Colour temperature, K (u16)."""
    r: int = 0
    g: int = 0
    b: int = 0

    def __post_init__(self) -> None:
        _check("LIGHT_STATE", "brightness", self.brightness, 0, BRIGHTNESS_MAX)
        _check("LIGHT_STATE", "cct_k", self.cct_k, 0, 0xFFFF)
        _check("LIGHT_STATE", "r", self.r, 0, 0xFF)
        _check("LIGHT_STATE", "g", self.g, 0, 0xFF)
        _check("LIGHT_STATE", "b", self.b, 0, 0xFF)


@dataclass(frozen=True, slots=True)
class LightState:
    """LIGHT_STATE (type 19, MCU → host, reliable): every channel's current state."""

    TYPE: ClassVar[MessageType] = MessageType.LIGHT_STATE
    channels: tuple[ChannelState, ...]
    """0–35 channels, in channel order."""

    def __post_init__(self) -> None:
        _check("LIGHT_STATE", "channels", len(self.channels), 0, MAX_LIGHT_CHANNELS)

    def encode(self) -> bytes:
        """The payload (1 + 7 bytes per channel)."""
        return bytes([len(self.channels)]) + b"".join(
            _CHANNEL.pack(c.brightness, c.cct_k, c.r, c.g, c.b) for c in self.channels
        )

    @classmethod
    def decode(cls, payload: bytes | bytearray | memoryview) -> Self:
        """Parse a payload; raises :class:`MessageError`."""
        if not payload:
            raise MessageError("LIGHT_STATE: payload is 0 bytes, expected at least 1", ErrorCode.BAD_LENGTH)
        count = payload[0]
        expected = 1 + count * _CHANNEL.size
        if len(payload) != expected:
            raise MessageError(
                f"LIGHT_STATE: payload is {len(payload)} bytes, expected {expected} for {count} channels",
                ErrorCode.BAD_LENGTH,
            )
        return cls(tuple(ChannelState(*fields) for fields in _CHANNEL.iter_unpack(payload[1:])))


@dataclass(frozen=True, slots=True)
class Sensors:
    """SENSORS (type 32, MCU → host, unreliable): the latest readings; a lost one is replaced by the next."""

    TYPE: ClassVar[MessageType] = MessageType.SENSORS
    uptime_ms: int
    """The MCU's clock when read, ms (u32)."""
    valid: SensorValid
    """Which readings are real (u8; bits 4–7 are kept as they come)."""
    lux_centi: int = 0
    """Illuminance, lux × 100 (u32)."""
    temp_centi: int = 0
    """Temperature, °C × 100 (i16)."""
    humidity_centi: int = 0
    """Relative humidity, % × 100 (0–10000)."""
    presence: int = 0
    """1 someone, 0 nobody."""

    def __post_init__(self) -> None:
        _check("SENSORS", "uptime_ms", self.uptime_ms, 0, 0xFFFFFFFF)
        _check("SENSORS", "valid", self.valid, 0, 0xFF)
        _check("SENSORS", "lux_centi", self.lux_centi, 0, 0xFFFFFFFF)
        _check("SENSORS", "temp_centi", self.temp_centi, -0x8000, 0x7FFF)
        _check("SENSORS", "humidity_centi", self.humidity_centi, 0, 10000)
        _check("SENSORS", "presence", self.presence, 0, 1)

    def encode(self) -> bytes:
        """The payload (14 bytes)."""
        return _SENSORS.pack(
            self.uptime_ms, self.valid, self.lux_centi, self.temp_centi, self.humidity_centi, self.presence
        )

    @classmethod
    def decode(cls, payload: bytes | bytearray | memoryview) -> Self:
        """Parse a payload; raises :class:`MessageError`."""
        uptime, valid, lux, temp, humidity, presence = _unpack("SENSORS", _SENSORS, payload)
        return cls(uptime, SensorValid(valid), lux, temp, humidity, presence)


_EVENT_VALUES: Final[dict[EventKind, tuple[int, int]]] = {
    EventKind.PRIVACY_BUTTON: (0, 0),
    EventKind.PRIVACY_SWITCH: (0, 1),
    EventKind.PRESENCE: (0, 1),
    EventKind.FAILSAFE_ENTERED: (min(Scene), max(Scene)),
    EventKind.FAILSAFE_LEFT: (0, 0),
}


@dataclass(frozen=True, slots=True)
class Event:
    """EVENT (type 33, MCU → host, reliable): something happened in the room."""

    TYPE: ClassVar[MessageType] = MessageType.EVENT
    kind: EventKind
    value: int
    """Per kind (see :class:`EventKind`)."""
    uptime_ms: int
    """The MCU's clock when it happened, ms (u32)."""

    def __post_init__(self) -> None:
        kind = _as_enum(EventKind, "EVENT", "kind", self.kind)
        lo, hi = _EVENT_VALUES[kind]
        _check(f"EVENT {kind.name}", "value", self.value, lo, hi)
        _check("EVENT", "uptime_ms", self.uptime_ms, 0, 0xFFFFFFFF)

    def encode(self) -> bytes:
        """The payload (6 bytes)."""
        return _EVENT.pack(self.kind, self.value, self.uptime_ms)

    @classmethod
    def decode(cls, payload: bytes | bytearray | memoryview) -> Self:
        """Parse a payload; raises :class:`MessageError`."""
        kind, value, uptime = _unpack("EVENT", _EVENT, payload)
        return cls(_as_enum(EventKind, "EVENT", "kind", kind), value, uptime)


def bootloader_mac(key: bytes, session_id: int, nonce: int) -> bytes:
    """The 16-byte MAC of ENTER_BOOTLOADER (§4): HMAC-SHA256 of ``b"doorway-boot" ‖ session_id ‖ nonce``
    (u32 little-endian each) under ``key``, truncated. Binding the MCU's ``session_id`` makes a recorded
    frame useless after the next reboot."""
    return hmac.new(key, BOOT_MAC_LABEL + _BOOT_MAC_INPUT.pack(session_id, nonce), hashlib.sha256).digest()[
        :BOOT_MAC_SIZE
    ]


@dataclass(frozen=True, slots=True)
class EnterBootloader:
    """ENTER_BOOTLOADER (type 48, host → MCU, reliable): reboot into the UF2 bootloader, if the MAC is
    right."""

    TYPE: ClassVar[MessageType] = MessageType.ENTER_BOOTLOADER
    nonce: int
    """Random (u32)."""
    mac: bytes
    """16 bytes, see :func:`bootloader_mac`."""

    def __post_init__(self) -> None:
        _check("ENTER_BOOTLOADER", "nonce", self.nonce, 0, 0xFFFFFFFF)
        if len(self.mac) != BOOT_MAC_SIZE:
            raise MessageError(
                f"ENTER_BOOTLOADER: mac of {len(self.mac)} bytes, expected {BOOT_MAC_SIZE}",
                ErrorCode.VALUE_OUT_OF_RANGE,
            )

    @classmethod
    def signed(cls, key: bytes, session_id: int, nonce: int) -> Self:
        """The message for the MCU whose HELLO said ``session_id``."""
        return cls(nonce, bootloader_mac(key, session_id, nonce))

    def verify(self, key: bytes, session_id: int) -> bool:
        """True when the MAC is right for this key and session (constant-time compare)."""
        return hmac.compare_digest(self.mac, bootloader_mac(key, session_id, self.nonce))

    def encode(self) -> bytes:
        """The payload (20 bytes)."""
        return _BOOT.pack(self.nonce, self.mac)

    @classmethod
    def decode(cls, payload: bytes | bytearray | memoryview) -> Self:
        """Parse a payload; raises :class:`MessageError`."""
        nonce, mac = _unpack("ENTER_BOOTLOADER", _BOOT, payload)
        return cls(nonce, bytes(mac))


Message = (
    HelloReq
    | Hello
    | ForeignHello
    | Ack
    | Heartbeat
    | ErrorReport
    | SetLight
    | SetScene
    | SetFailsafe
    | LightState
    | Sensors
    | Event
    | EnterBootloader
)
"""Every message of protocol 1.0."""

_DECODERS: Final[dict[int, Callable[[bytes], Message]]] = {
    MessageType.HELLO_REQ: HelloReq.decode,
    MessageType.HELLO: Hello.decode,
    MessageType.ACK: Ack.decode,
    MessageType.HEARTBEAT: Heartbeat.decode,
    MessageType.ERROR: ErrorReport.decode,
    MessageType.SET_LIGHT: SetLight.decode,
    MessageType.SET_SCENE: SetScene.decode,
    MessageType.SET_FAILSAFE: SetFailsafe.decode,
    MessageType.LIGHT_STATE: LightState.decode,
    MessageType.SENSORS: Sensors.decode,
    MessageType.EVENT: Event.decode,
    MessageType.ENTER_BOOTLOADER: EnterBootloader.decode,
}


def decode_message(frame: Frame) -> Message:
    """The message a valid frame carries. Raises :class:`MessageError` (``code`` says how to answer it)."""
    if frame.type == MessageType.HELLO and frame.payload[:1] != bytes([PROTOCOL_MAJOR]):
        return ForeignHello.decode(frame.payload)
    decode = _DECODERS.get(frame.type)
    if decode is None:
        raise MessageError(f"unknown message type {frame.type}", ErrorCode.UNKNOWN_TYPE)
    return decode(frame.payload)


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A valid frame whose payload is not a valid message: delivered in its place (in order, once) so the
    application can count it and, on the MCU, answer ``ERROR(code, type, seq)``."""

    type: int
    seq: int | None
    """Its ``seq`` when it was reliable."""
    payload: bytes
    code: ErrorCode
    reason: str
    """The :class:`MessageError` text."""


# --- Hello, sessions, versions (§5) ------------------------------------------------------------------------


def check_version(hello: Hello | ForeignHello) -> str | None:
    """None when this host can talk to the MCU that sent ``hello``, else the "firmware update required"
    message naming both versions. Minors may differ: a minor only adds what an older peer can ignore."""
    if hello.major == PROTOCOL_MAJOR:
        return None
    return (
        f"firmware update required: this host speaks protocol {PROTOCOL_MAJOR}.x, the MCU speaks protocol "
        f"{hello.major}.{hello.minor} (firmware {hello.firmware_version})"
    )


class SessionChange(IntEnum):
    """What a HELLO says about the MCU's session, from :meth:`SessionWatch.observe`."""

    FIRST = 0
    """The first HELLO this host has seen from the MCU."""
    SAME = 1
    """The MCU has kept running since the last HELLO."""
    REBOOTED = 2
    """A different ``session_id``: the MCU rebooted (``boot_reason`` says why); both sides' reliable
    state starts over and the host sends its lighting state and failsafe setting again."""


class SessionWatch:
    """Remembers the MCU's ``session_id`` across connections of one bridge process."""

    __slots__ = ("reboots", "session_id")

    def __init__(self) -> None:
        self.session_id: int | None = None
        self.reboots = 0
        """REBOOTED answers so far."""

    def observe(self, hello: Hello) -> SessionChange:
        """Record a HELLO and say whether the MCU rebooted since the previous one."""
        previous, self.session_id = self.session_id, hello.session_id
        if previous is None:
            return SessionChange.FIRST
        if previous == hello.session_id:
            return SessionChange.SAME
        self.reboots += 1
        return SessionChange.REBOOTED


# --- The reliable link (§3, §6) ----------------------------------------------------------------------------


class QueueFullError(Exception):
    """:meth:`ReliableLink.send` has no room: the caller drops or coalesces (set-points are absolute, so the
    newest one per channel is all that matters)."""


class _Outgoing:
    """A reliable message in flight: its payload is kept so a retransmission carries a fresh ``ack``."""

    __slots__ = ("first_sent_ms", "mtype", "payload", "sends", "seq")

    def __init__(self, seq: int, mtype: int, payload: bytes, now_ms: int) -> None:
        self.seq = seq
        self.mtype = mtype
        self.payload = payload
        self.first_sent_ms = now_ms
        self.sends = 1


Incoming = Message | Undecodable
"""What :meth:`ReliableLink.receive` delivers."""


class ReliableLink:
    """One side of the reliable link (§3, §6): sequence numbers, cumulative acks, go-back-N, heartbeats and
    liveness, over frames the caller carries. Symmetric: the host and (as a model) the MCU use the same class.

    The caller owns the port and the clock: it passes received bytes to :meth:`receive_bytes` (or decoded
    frames to :meth:`receive`), queues messages with :meth:`send`, and writes whatever :meth:`poll` returns,
    calling it again no later than :meth:`next_poll_ms`. ACK and HEARTBEAT are handled here and never
    delivered. Reliable messages are delivered exactly once and in order within a session; a session ends
    with :meth:`reset`.

    ``lost`` becomes True (and stays so until :meth:`reset`) after :data:`LINK_LOST_MS` without a valid
    frame or :data:`MAX_RETRIES` retransmission rounds without progress; the link keeps working, the caller
    decides (the host closes the port and reconnects). During a hello the silence rule runs too; the bridge
    ignores it until the HELLO comes.
    """

    def __init__(self, now_ms: int = 0, *, ack_delay_ms: int = 0) -> None:
        """``now_ms``: the session's start (the silence and heartbeat timers run from it). ``ack_delay_ms``:
        how long a standalone ACK waits for a reply to carry it instead (0–20 ms)."""
        if not 0 <= ack_delay_ms <= ACK_DELAY_MAX_MS:
            raise ValueError(f"ack_delay_ms {ack_delay_ms} is out of range 0..{ACK_DELAY_MAX_MS}")
        self.ack_delay_ms = ack_delay_ms
        self.decoder = FrameDecoder()
        """Used by :meth:`receive_bytes`; its counters are the link's frame-level counters."""
        # Counters (cumulative across resets).
        self.frames_sent = 0
        self.frames_received = 0
        """Valid frames passed to :meth:`receive`."""
        self.delivered = 0
        """Messages returned by :meth:`receive`."""
        self.retransmits = 0
        """Frames sent again."""
        self.timeouts = 0
        """Retransmission rounds."""
        self.duplicates = 0
        """Reliable frames received again (not delivered again)."""
        self.out_of_order = 0
        """Reliable frames dropped because one before them is missing."""
        self.undecodable = 0
        """Valid frames whose payload did not decode (delivered as :class:`Undecodable`)."""
        self.acks_sent = 0
        self.heartbeats_sent = 0
        self.resets = 0
        self.rtt_ms: float | None = None
        """Smoothed round trip (RFC 6298 SRTT, gain 1/8), from frames acknowledged after one send; None
        before the first sample."""
        self.peer_uptime_ms: int | None = None
        """The peer's clock from its last HEARTBEAT."""
        self._pending: deque[tuple[int, bytes]] = deque()
        self._unreliable: deque[tuple[int, bytes]] = deque()
        self._inflight: deque[_Outgoing] = deque()
        self._start(now_ms)

    def _start(self, now_ms: int) -> None:
        self._now_ms = now_ms
        self._next_seq = 0
        self._expected = 0
        self._retries = 0
        self._rto_ms = RTO_INITIAL_MS
        self._rto_deadline = now_ms
        self._ack_pending = False
        self._ack_due_ms = now_ms
        self._last_rx_ms = now_ms
        self._last_tx_ms = now_ms
        self._lost_reason: str | None = None

    def reset(self, now_ms: int, *, keep_queue: bool = False) -> None:
        """Start a new session: sequence numbers from 0, timers from ``now_ms``, ``lost`` cleared, a
        partial frame in the decoder dropped. Queued and unacknowledged messages are dropped, unless
        ``keep_queue``: then they are sent again, renumbered, in their order (the MCU does this on a new
        HELLO_REQ, so no EVENT is lost; the host re-sends its absolute state instead)."""
        if keep_queue:
            self._pending.extendleft((o.mtype, o.payload) for o in reversed(self._inflight))
        else:
            self._pending.clear()
            self._unreliable.clear()
        self._inflight.clear()
        self.decoder.reset()
        self.resets += 1
        self._start(now_ms)

    # -- state ------------------------------------------------------------------------------------------

    @property
    def lost(self) -> bool:
        """True once the link counts as lost (until :meth:`reset`)."""
        return self._lost_reason is not None

    @property
    def lost_reason(self) -> str | None:
        """Why the link counts as lost, for the log."""
        return self._lost_reason

    @property
    def unacked(self) -> int:
        """Reliable frames sent and not yet acknowledged (≤ :data:`WINDOW`)."""
        return len(self._inflight)

    @property
    def queued(self) -> int:
        """Reliable messages waiting for room in the window (≤ :data:`MAX_QUEUED`)."""
        return len(self._pending)

    @property
    def idle(self) -> bool:
        """True when nothing is queued or unacknowledged."""
        return not (self._pending or self._unreliable or self._inflight)

    @property
    def expected_seq(self) -> int:
        """The next ``seq`` this side will accept from its peer."""
        return self._expected

    # -- sending ----------------------------------------------------------------------------------------

    def send(self, message: Message, reliable: bool | None = None) -> None:
        """Queue ``message`` for the next :meth:`poll`. ``reliable`` defaults to what §4 says for its type.
        Raises :class:`QueueFullError` when :data:`MAX_QUEUED` reliable (or :data:`MAX_QUEUED_UNRELIABLE`
        unreliable) messages already wait; :class:`MessageError` when it cannot be encoded."""
        if reliable is None:
            reliable = message.TYPE in RELIABLE_TYPES
        payload = message.encode()
        if len(payload) > MAX_PAYLOAD:
            raise MessageError(f"{message.TYPE.name}: payload of {len(payload)} bytes", ErrorCode.BAD_LENGTH)
        if reliable:
            if len(self._pending) >= MAX_QUEUED:
                raise QueueFullError(f"link: {len(self._pending)} reliable messages already queued")
            self._pending.append((message.TYPE, payload))
        else:
            if len(self._unreliable) >= MAX_QUEUED_UNRELIABLE:
                raise QueueFullError(f"link: {len(self._unreliable)} unreliable messages already queued")
            self._unreliable.append((message.TYPE, payload))

    def poll(self, now_ms: int) -> list[bytes]:
        """The encoded frames to write now, in order: retransmissions (go-back-N), queued unreliable
        messages, new reliable ones while the window has room, else a due ACK or HEARTBEAT."""
        self._now_ms = now_ms
        if self._lost_reason is None and now_ms - self._last_rx_ms >= LINK_LOST_MS:
            self._lost_reason = f"no valid frame for {now_ms - self._last_rx_ms} ms"
        out: list[bytes] = []
        ack = (self._expected - 1) % SEQ_MODULUS
        if self._inflight and now_ms >= self._rto_deadline:
            if self._retries >= MAX_RETRIES and self._lost_reason is None:
                self._lost_reason = f"no acknowledgement after {MAX_RETRIES} retries"
            self._retries += 1
            self.timeouts += 1
            self._rto_ms = min(2 * self._rto_ms, RTO_MAX_MS)
            self._rto_deadline = now_ms + self._rto_ms
            for o in self._inflight:
                o.sends += 1
                out.append(_wire(PROTOCOL_MAJOR, FrameFlags.RELIABLE, o.seq, ack, o.mtype, o.payload))
            self.retransmits += len(self._inflight)
        while self._unreliable:
            mtype, payload = self._unreliable.popleft()
            out.append(_wire(PROTOCOL_MAJOR, 0, 0, ack, mtype, payload))
        while self._pending and len(self._inflight) < WINDOW:
            mtype, payload = self._pending.popleft()
            if not self._inflight:
                self._rto_deadline = now_ms + self._rto_ms
            seq = self._next_seq
            self._next_seq = (seq + 1) % SEQ_MODULUS
            self._inflight.append(_Outgoing(seq, mtype, payload, now_ms))
            out.append(_wire(PROTOCOL_MAJOR, FrameFlags.RELIABLE, seq, ack, mtype, payload))
        if not out:
            if now_ms - self._last_tx_ms >= HEARTBEAT_INTERVAL_MS:
                payload = _U32.pack(now_ms & 0xFFFFFFFF)
                out.append(_wire(PROTOCOL_MAJOR, 0, 0, ack, MessageType.HEARTBEAT, payload))
                self.heartbeats_sent += 1
            elif self._ack_pending and now_ms >= self._ack_due_ms:
                out.append(_wire(PROTOCOL_MAJOR, 0, 0, ack, MessageType.ACK, b""))
                self.acks_sent += 1
        if out:
            # Every frame carries the current ack, so whatever went out answered any pending one.
            self._ack_pending = False
            self._last_tx_ms = now_ms
            self.frames_sent += len(out)
        return out

    def next_poll_ms(self) -> int:
        """The latest time the next :meth:`poll` should happen (ms); at or before the last ``now_ms`` seen
        when there is something to send already."""
        if self._unreliable or (self._pending and len(self._inflight) < WINDOW):
            return self._now_ms
        deadline = self._last_tx_ms + HEARTBEAT_INTERVAL_MS
        if self._inflight:
            deadline = min(deadline, self._rto_deadline)
        if self._ack_pending:
            deadline = min(deadline, self._ack_due_ms)
        if self._lost_reason is None:
            deadline = min(deadline, self._last_rx_ms + LINK_LOST_MS)
        return deadline

    # -- receiving --------------------------------------------------------------------------------------

    def receive_bytes(self, data: bytes | bytearray | memoryview, now_ms: int) -> list[Incoming]:
        """Feed bytes from the wire through :attr:`decoder` and :meth:`receive`. Never raises."""
        delivered: list[Incoming] = []
        for frame in self.decoder.feed(data):
            delivered += self.receive(frame, now_ms)
        return delivered

    def receive(self, frame: Frame, now_ms: int) -> list[Incoming]:
        """Process one valid frame; return what it delivers (nothing, or one message). Never raises."""
        self._now_ms = now_ms
        self._last_rx_ms = now_ms
        self.frames_received += 1
        if frame.version != PROTOCOL_MAJOR:
            # A HELLO_REQ/HELLO of another major: its seq and ack may mean something else there.
            return [self._decode(frame, None)]
        self._on_ack(frame.ack, now_ms)
        if not frame.flags & FrameFlags.RELIABLE:
            incoming = self._decode(frame, None)
        else:
            distance = (frame.seq - self._expected) % SEQ_MODULUS
            if distance == 0:
                self._expected = (self._expected + 1) % SEQ_MODULUS
                self._want_ack(now_ms)
                incoming = self._decode(frame, frame.seq)
            elif distance >= SEQ_MODULUS - WINDOW:
                # One of the 8 before expected: its ack was lost. Ack again, deliver nothing.
                self.duplicates += 1
                self._want_ack(now_ms)
                return []
            else:
                self.out_of_order += 1
                return []
        if isinstance(incoming, Heartbeat):
            self.peer_uptime_ms = incoming.uptime_ms
            return []
        if isinstance(incoming, Ack):
            return []
        self.delivered += 1
        return [incoming]

    def _decode(self, frame: Frame, seq: int | None) -> Incoming:
        try:
            return decode_message(frame)
        except MessageError as exc:
            self.undecodable += 1
            return Undecodable(frame.type, seq, frame.payload, exc.code, str(exc))

    def _want_ack(self, now_ms: int) -> None:
        if not self._ack_pending:
            self._ack_pending = True
            self._ack_due_ms = now_ms + self.ack_delay_ms

    def _on_ack(self, ack: int, now_ms: int) -> None:
        if not self._inflight:
            return
        # How many in-flight frames this ack covers; an ack outside 1..unacked (255 after a reset, an old
        # one overtaken, one from another session) acknowledges nothing.
        count = (ack + 1 - self._inflight[0].seq) % SEQ_MODULUS
        if not 1 <= count <= len(self._inflight):
            return
        for _ in range(count - 1):
            self._inflight.popleft()
        newest = self._inflight.popleft()
        if newest.sends == 1:
            sample = now_ms - newest.first_sent_ms
            self.rtt_ms = sample if self.rtt_ms is None else self.rtt_ms + (sample - self.rtt_ms) / 8
        # Progress: the retry budget and the wait start over for what is left.
        self._retries = 0
        self._rto_ms = RTO_INITIAL_MS
        self._rto_deadline = now_ms + RTO_INITIAL_MS
