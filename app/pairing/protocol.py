"""The pairing exchange, version 1, as a state machine: bytes in, bytes out, no sockets, no clock.

Two doorways pair over one TCP connection. The *showing* doorway (``doorway pair show``, SPAKE2 side B)
listens and displays a code; the *joining* one (``doorway pair join``, side A) connects and proves it knows
the code. Each side runs one :class:`PairingMachine`: the I/O layer (server.py, client.py) passes received
bytes to :meth:`~PairingMachine.receive_data`, sends what :meth:`~PairingMachine.data_to_send` returns, and
applies its own timeouts, using :attr:`~PairingMachine.waiting_for` to say what never came.

Theory of operation
-------------------
Framing. Every message is ``u16 length`` (big-endian, counting what follows) then ``u8 version`` (1),
``u8 type`` and the payload. A length under 2 or over :data:`MAX_MESSAGE` is refused as soon as its two
bytes arrive, so no peer can make us buffer more than one 4 KiB message; any strict prefix of a message is
"need more" and changes nothing.

Flow (→ join to show, ← show to join)::

    → PAKE     "A" + SPAKE2 element (33 bytes)
    ← PAKE     "B" + SPAKE2 element; ← CONFIRM  HMAC(K_confirm, "show")
    → CONFIRM  HMAC(K_confirm, "join");  then, if the show side's CONFIRM was right:
    → RECORD   ChaCha20-Poly1305(K_join, nonce 0, join's identity record)
    ← RECORD   ChaCha20-Poly1305(K_show, nonce 0, show's identity record)
    → ACK      ChaCha20-Poly1305(K_join, nonce 1, empty)

SPAKE2 (the ``spake2`` package, Ed25519 group, identities ``doorway-pair-join``/``doorway-pair-show``)
turns the 8-digit code into a 32-byte key K shared only if both sides used the same code; an active
attacker gets one guess per exchange and learns nothing else. HKDF-SHA256 derives from K the confirmation
key and one record key per direction. Key confirmation comes before anything secret: each side sends its
MAC without waiting, and checks the other's with :func:`hmac.compare_digest`; a mismatch on either side is
:class:`CodeMismatchError` ("the code did not match"), raised on both sides independently (each holds the
other's MAC), with no record sent. The identity records (public key, name, media endpoint) travel
encrypted and authenticated, so nobody without the code can read or substitute them; the AEAD's associated
data is the message header, so a message cannot be replayed as another type. The final ACK tells the show
side that the join side holds its record: the join side is done when it has queued the ACK, the show side
when it has checked it; each stores the pairing only then. (If the ACK is lost, the join side has paired
and the show side reports a failure; pairing again replaces both.)

The show side computes its SPAKE2 element only when a well-formed PAKE message arrives, so a stray
connection costs nothing. From then on :attr:`PairingMachine.code_used` is true: that connection has had
its one guess, whatever happens next. Before that, nothing about the code has left the machine.

Errors: every malformed or unexpected input raises :class:`PairingError` (never another type) with one
clear line, and leaves the machine failed; most also queue an ERROR message for the other side with the
same reason, so the caller should send :meth:`~PairingMachine.data_to_send` once more before closing.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Final, Literal, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from spake2 import SPAKE2_A, SPAKE2_B

PROTOCOL_VERSION: Final = 1
"""The version this module speaks; a message of any other version is an error."""
MAX_MESSAGE: Final = 4096
"""Most bytes one message may have after its length field."""
PAKE_SIZE: Final = 33
"""Bytes of a SPAKE2 message: a side byte ("A" or "B") and a 32-byte Ed25519 element."""
MAC_SIZE: Final = 32
"""Bytes of a key-confirmation MAC (HMAC-SHA256)."""
MAX_NAME_CHARS: Final = 64
"""Longest device name in a record, in characters (the settings' limit on ``engine.name``)."""
MAX_HOST_BYTES: Final = 253
"""Longest media host in a record, in bytes (a DNS name's limit)."""
MAX_ERROR_CHARS: Final = 200
"""Longest reason shown from a peer's ERROR message, in characters."""
ID_JOIN: Final = b"doorway-pair-join"
"""SPAKE2 identity of the joining side (side A)."""
ID_SHOW: Final = b"doorway-pair-show"
"""SPAKE2 identity of the showing side (side B)."""
CODE_MISMATCH: Final = "the code did not match (it is used up; show a new code)"
"""The message of :class:`CodeMismatchError`, the same on both sides."""

_LENGTH: Final = struct.Struct(">H")
_HEADER: Final = struct.Struct(">BB")
_KDF_PREFIX: Final = b"doorway-pair/1 "
_NONCE_RECORD: Final = bytes(12)
_NONCE_ACK: Final = (1).to_bytes(12, "big")

Role = Literal["show", "join"]


class PairingError(Exception):
    """The exchange failed. The message is one line, ready to print after "pairing failed: "."""


class CodeMismatchError(PairingError):
    """The two doorways used different codes (a wrong code, or someone in the middle guessing)."""

    def __init__(self) -> None:
        super().__init__(CODE_MISMATCH)


class MessageType(IntEnum):
    """The ``type`` byte of a message."""

    PAKE = 1
    CONFIRM = 2
    RECORD = 3
    ACK = 4
    ERROR = 15


class Stage(Enum):
    """What a machine waits for next (or that it is over); the value says it in words."""

    PAKE = "the other doorway's key exchange message"
    CONFIRM = "the other doorway's key confirmation"
    RECORD = "the other doorway's identity record"
    ACK = "the other doorway's acknowledgement"
    DONE = "nothing (paired)"
    FAILED = "nothing (failed)"


def _printable(text: str) -> bool:
    return text.isprintable() and text == text.strip()


@dataclass(frozen=True)
class PeerRecord:
    """What one doorway tells the other when pairing.

    ``media_host`` is where the twin should send media; empty means "the address you see me at" (the
    default: the show side takes the connection's peer address, the join side the host it connected to).
    ``media_port`` is this doorway's UDP media port (``network.listen_port``).
    """

    public_key: bytes
    name: str
    media_host: str
    media_port: int

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise ValueError(problem)

    def _problem(self) -> str | None:
        if len(self.public_key) != 32:
            return f"public key of {len(self.public_key)} bytes (expected 32)"
        if not 1 <= len(self.name) <= MAX_NAME_CHARS or not _printable(self.name):
            return f"device name {self.name[:MAX_NAME_CHARS]!r} is empty, too long or not printable"
        if (
            not self.media_host.isascii()
            or len(self.media_host) > MAX_HOST_BYTES
            or not _printable(self.media_host)
            or " " in self.media_host
        ):
            return f"media host {self.media_host[:MAX_HOST_BYTES]!r} is not a host name or address"
        if not 1 <= self.media_port <= 65535:
            return f"media port {self.media_port} is out of range"
        return None

    def encode(self) -> bytes:
        """``public_key | u16 n | name (UTF-8) | u16 n | media_host (ASCII) | u16 media_port``."""
        name = self.name.encode("utf-8")
        host = self.media_host.encode("ascii")
        return b"".join(
            (
                self.public_key,
                _LENGTH.pack(len(name)),
                name,
                _LENGTH.pack(len(host)),
                host,
                _LENGTH.pack(self.media_port),
            )
        )

    @classmethod
    def decode(cls, data: bytes) -> PeerRecord:
        """The record in ``data`` (exactly, no trailing bytes); raises :class:`PairingError`."""
        try:
            pos = 32
            public_key = data[:pos]
            (n,) = _LENGTH.unpack_from(data, pos)
            name = data[pos + 2 : pos + 2 + n].decode("utf-8")
            pos += 2 + n
            (n,) = _LENGTH.unpack_from(data, pos)
            host = data[pos + 2 : pos + 2 + n].decode("ascii")
            pos += 2 + n
            (port,) = _LENGTH.unpack_from(data, pos)
            pos += 2
        except (struct.error, UnicodeDecodeError):
            raise PairingError("the other doorway's identity record is malformed") from None
        if pos != len(data):
            raise PairingError("the other doorway's identity record has trailing bytes")
        try:
            return cls(public_key=public_key, name=name, media_host=host, media_port=port)
        except ValueError as exc:
            raise PairingError(f"the other doorway's identity record is not valid: {exc}") from None


def encode_message(kind: MessageType, payload: bytes, version: int = PROTOCOL_VERSION) -> bytes:
    """One framed message. ``version`` is a parameter only so tests can build foreign versions."""
    body = _HEADER.pack(version, kind) + payload
    if len(body) > MAX_MESSAGE:
        raise ValueError(f"message of {len(body)} bytes is over the {MAX_MESSAGE}-byte limit")
    return _LENGTH.pack(len(body)) + body


def _hkdf(key: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KDF_PREFIX + label).derive(key)


class PairingMachine:
    """One side of one pairing exchange (sans-I/O; see the module docstring).

    ``role`` is "show" or "join", ``code`` the 8-digit code (check digit included, as
    :func:`app.pairing.code.parse_code` returns it), ``own`` what this doorway tells the other, ``entropy``
    the randomness for SPAKE2 (tests may fix it). Not thread-safe: one thread drives one machine.
    """

    def __init__(
        self, role: Role, code: str, own: PeerRecord, *, entropy: Callable[[int], bytes] = os.urandom
    ) -> None:
        self.role: Role = role
        self.stage = Stage.PAKE
        self.peer: PeerRecord | None = None
        """The other doorway's record, once received and authenticated."""
        self.code_used = False
        """True once a well-formed key exchange message was processed: this exchange had its guess."""
        self.error: PairingError | None = None
        self._own = own
        self._in = bytearray()
        self._out = bytearray()
        password = code.encode("ascii")
        cls = SPAKE2_A if role == "join" else SPAKE2_B
        self._spake = cls(password, idA=ID_JOIN, idB=ID_SHOW, entropy_f=entropy)
        self._confirm_key = b""
        self._send_key = b""
        self._recv_key = b""
        if role == "join":
            self._send(MessageType.PAKE, self._spake.start())

    # -- the caller's side --------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True when this side holds the other's record and may store the pairing."""
        return self.stage is Stage.DONE

    @property
    def waiting_for(self) -> str | None:
        """What the machine needs next, in words (for a timeout message); None when it is over."""
        if self.stage in (Stage.DONE, Stage.FAILED):
            return None
        return str(self.stage.value)

    def data_to_send(self) -> bytes:
        """Bytes to send to the other side now (possibly empty); each call returns them once."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the other side and process every complete message in them.

        Raises :class:`PairingError` (and fails the machine) on anything malformed or unexpected; a
        strict prefix of a message is kept for the next call and changes nothing.
        """
        if self.stage is Stage.FAILED:
            assert self.error is not None
            raise self.error
        self._in += data
        while len(self._in) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._in)
            if length < _HEADER.size:
                self._fail(f"message of {length} bytes is too short to be a pairing message")
            if length > MAX_MESSAGE:
                self._fail(
                    f"message of {length} bytes is over the {MAX_MESSAGE}-byte limit "
                    "(is this a Doorway pairing port?)"
                )
            if len(self._in) < _LENGTH.size + length:
                return
            body = bytes(self._in[_LENGTH.size : _LENGTH.size + length])
            del self._in[: _LENGTH.size + length]
            if self.stage is Stage.DONE:
                self._fail("unexpected data after the pairing completed")
            self._handle(body)

    def abort(self, reason: str) -> None:
        """Give up (a timeout, a busy server): queue an ERROR message with ``reason`` and fail."""
        if self.stage in (Stage.DONE, Stage.FAILED):
            return
        self.error = PairingError(reason)
        self.stage = Stage.FAILED
        self._send_error(reason)

    # -- the protocol -------------------------------------------------------------------------------------

    def _send(self, kind: MessageType, payload: bytes) -> None:
        self._out += encode_message(kind, payload)

    def _send_error(self, reason: str) -> None:
        self._send(MessageType.ERROR, reason.encode("utf-8")[: MAX_ERROR_CHARS * 4])

    def _fail(self, reason: str, *, tell_peer: bool = True, error: PairingError | None = None) -> NoReturn:
        self.error = error or PairingError(reason)
        self.stage = Stage.FAILED
        if tell_peer:
            self._send_error(reason)
        raise self.error

    def _handle(self, body: bytes) -> None:
        version, kind_byte = _HEADER.unpack_from(body)
        payload = body[_HEADER.size :]
        if version != PROTOCOL_VERSION:
            self._fail(
                f"the other side speaks pairing protocol version {version}; this doorway speaks "
                f"{PROTOCOL_VERSION} (update the older doorway)"
            )
        try:
            kind = MessageType(kind_byte)
        except ValueError:
            self._fail(f"unknown message type {kind_byte}")
        if kind is MessageType.ERROR:
            reason = payload.decode("utf-8", errors="replace")
            reason = "".join(ch if ch.isprintable() else "?" for ch in reason)[:MAX_ERROR_CHARS]
            self._fail(f"the other doorway reported: {reason}", tell_peer=False)
        # Each stage is named after the one message type it accepts.
        if kind.name != self.stage.name:
            self._fail(f"unexpected {kind.name} message while waiting for {self.stage.value}")
        if kind is MessageType.PAKE:
            self._on_pake(payload)
        elif kind is MessageType.CONFIRM:
            self._on_confirm(payload)
        elif kind is MessageType.RECORD:
            self._on_record(body[: _HEADER.size], payload)
        else:
            self._on_ack(body[: _HEADER.size], payload)

    def _on_pake(self, payload: bytes) -> None:
        if len(payload) != PAKE_SIZE:
            self._fail(f"key exchange message of {len(payload)} bytes (expected {PAKE_SIZE})")
        side = b"A" if self.role == "show" else b"B"
        if payload[:1] != side:
            self._fail(
                "key exchange message from the wrong side (are both doorways showing, or both joining?)"
            )
        # The show side makes its element only now, so a stray connection costs no scalar multiplication.
        outbound = self._spake.start() if self.role == "show" else b""
        try:
            key = self._spake.finish(payload)
        except Exception as exc:  # spake2 is pure Python and reports a bad element with assorted types
            self._fail(f"key exchange message is not a valid group element ({exc})")
        self.code_used = True
        self._confirm_key = _hkdf(key, b"confirm")
        join_key, show_key = _hkdf(key, b"join to show"), _hkdf(key, b"show to join")
        self._send_key, self._recv_key = (join_key, show_key) if self.role == "join" else (show_key, join_key)
        if self.role == "show":
            self._send(MessageType.PAKE, outbound)
        self._send(MessageType.CONFIRM, self._mac(self.role))
        self.stage = Stage.CONFIRM

    def _mac(self, role: Role) -> bytes:
        return hmac.new(self._confirm_key, _KDF_PREFIX + b"confirm " + role.encode(), hashlib.sha256).digest()

    def _on_confirm(self, payload: bytes) -> None:
        if len(payload) != MAC_SIZE:
            self._fail(f"key confirmation of {len(payload)} bytes (expected {MAC_SIZE})")
        if not hmac.compare_digest(payload, self._mac("show" if self.role == "join" else "join")):
            # No ERROR message: the other side holds our MAC and finds the mismatch on its own.
            self._fail(CODE_MISMATCH, tell_peer=False, error=CodeMismatchError())
        if self.role == "join":
            self._send_sealed(MessageType.RECORD, _NONCE_RECORD, self._own.encode())
        self.stage = Stage.RECORD

    def _send_sealed(self, kind: MessageType, nonce: bytes, plaintext: bytes) -> None:
        aad = _HEADER.pack(PROTOCOL_VERSION, kind)
        self._send(kind, ChaCha20Poly1305(self._send_key).encrypt(nonce, plaintext, aad))

    def _open(self, header: bytes, nonce: bytes, sealed: bytes, what: str) -> bytes:
        try:
            return ChaCha20Poly1305(self._recv_key).decrypt(nonce, sealed, header)
        except InvalidTag:
            self._fail(f"the other doorway's {what} did not authenticate (changed in transit?)")

    def _on_record(self, header: bytes, sealed: bytes) -> None:
        plain = self._open(header, _NONCE_RECORD, sealed, "identity record")
        try:
            self.peer = PeerRecord.decode(plain)
        except PairingError as exc:
            self._fail(str(exc))
        if self.role == "show":
            self._send_sealed(MessageType.RECORD, _NONCE_RECORD, self._own.encode())
            self.stage = Stage.ACK
        else:
            self._send_sealed(MessageType.ACK, _NONCE_ACK, b"")
            self.stage = Stage.DONE

    def _on_ack(self, header: bytes, sealed: bytes) -> None:
        if self._open(header, _NONCE_ACK, sealed, "acknowledgement"):
            self._fail("the other doorway's acknowledgement is not empty")
        self.stage = Stage.DONE
