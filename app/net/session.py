"""The encrypted session with the paired twin: who calls whom, when keys change, which key seals a packet.

Sans-I/O: the engine's network thread hands in received handshake packets and the clock, and gets back
datagrams to send; the sending threads call :meth:`Session.seal`, the network thread :meth:`Session.open`.
Keys and sealing are app/net/noise.py (Noise IK) and app/net/seal.py (PROTOCOL.md §13); this module decides
when to use them.

Theory of operation
-------------------
**Calling.** A doorway that has no live session (nothing authenticated from the twin for
:data:`DEAD_AFTER_NS`) sends a :class:`~app.net.protocol.HandshakeInit` at once and again after 0.25, 0.5,
then every 1 s until a response comes — so a call starts by itself when the twin appears, and resumes within
about a second of the network coming back. A live session is rekeyed every :data:`REKEY_AFTER_NS` (forward
secrecy over a months-long call): by the twin with the lower public key, or by either once the session is
half as old again. When both call at once (both just started), the one with the higher public key answers
the other's call and drops its own; the lower one ignores the call it receives and waits for the answer to
its own.

**Answering.** Before any public-key work, a HandshakeInit must carry a valid ``mac1``: a 16-byte keyed
BLAKE2s over the packet, keyed with a hash of *our* public key, which only the twin learned (at pairing).
A stranger's packet costs that one hash and gets nothing back. Noise IK then proves the initiator holds the
twin's static key. Message 1 can be replayed, so its payload is a wall-clock timestamp (ns), and while the
current session is live an init not newer than the last accepted one is refused; and since a replayed
genuine init passes ``mac1``, at most 10 inits a second are answered at all (each costs ~0.5 ms). Each
response is smaller than the init (85 against 136 bytes), so answering cannot amplify anything.

**Epochs and key confirmation.** Every session has a key epoch (1..255, in byte 3 of every sealed packet),
chosen by the responder — the next one after any it holds — and sent encrypted in message 2. The initiator
switches to the new keys when the response authenticates. The responder installs the new receive key at
once, but keeps *sending* with the old keys while the old session is live, until the first packet under the
new epoch arrives: a replayed init (refused by the timestamp only while a session is live) can then never
make it abandon a working session. With no live session it switches at once. The previous receive key stays
installed (app/net/seal.py keeps two), so packets in flight across a change still open.

**Restart of the twin.** A restarted twin has no session and calls; its init is newer than anything before
(wall clock), so we answer at once and the call resumes in one round trip. If its clock stepped back, the
init is refused only while our old session still looks live, i.e. at most :data:`DEAD_AFTER_NS`.

Thread safety: :meth:`seal` may run on any thread (the sealer is swapped as one reference); everything else
runs on the network thread.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable
from typing import Any, Final

from app.net import noise
from app.net.protocol import (
    HANDSHAKE_INIT_MESSAGE,
    HANDSHAKE_MAC_SIZE,
    HANDSHAKE_RESPONSE_MESSAGE,
    HandshakeInit,
    HandshakeResponse,
    ProtocolError,
)
from app.net.seal import MAX_EPOCH, PacketOpener, PacketSealer, SealError, next_epoch

PROLOGUE: Final = b"doorway media protocol v1"
"""Authenticated by the handshake, never sent: both ends must run protocol version 1."""
MAC1_LABEL: Final = b"doorway mac1"
DEAD_AFTER_NS: Final = 1_500_000_000
"""Nothing authenticated from the twin for this long (keepalives come every 250 ms): call again."""
RETRY_NS: Final = (250_000_000, 500_000_000, 1_000_000_000)
"""Waits between unanswered inits; the last repeats."""
REKEY_AFTER_NS: Final = 120_000_000_000
"""A session's age at which the twin with the lower public key starts a new handshake."""
INIT_RATE: Final = 10.0
"""Inits answered per second at most (a token bucket of :data:`INIT_BURST`)."""
INIT_BURST: Final = 5.0
_TIMESTAMP = struct.Struct("!Q")


def mac1_key(public: bytes) -> bytes:
    """The key of ``mac1`` for packets addressed to the holder of ``public``."""
    return hashlib.blake2s(MAC1_LABEL + public).digest()


def mac1(key: bytes, data: bytes) -> bytes:
    """16-byte keyed BLAKE2s of ``data``."""
    return hashlib.blake2s(data, key=key, digest_size=HANDSHAKE_MAC_SIZE).digest()


class Session:
    """One doorway's session with its paired twin (see the module docstring).

    ``static_private``/``static_public``: our X25519 key pair (32 bytes each); ``twin_public``: the twin's
    public key from pairing. ``random_index`` names handshakes (tests pass a deterministic one).
    """

    def __init__(
        self,
        static_private: bytes,
        static_public: bytes,
        twin_public: bytes,
        *,
        random_index: Callable[[], int] = lambda: secrets.randbits(32),
    ) -> None:
        if len(twin_public) != 32 or len(static_public) != 32:
            raise ValueError("X25519 public keys are 32 bytes")
        self._private = static_private
        self.public = static_public
        self.twin = twin_public
        self._random_index = random_index
        self._our_mac_key = mac1_key(static_public)
        self._twin_mac_key = mac1_key(twin_public)
        self._lower = static_public < twin_public
        self._sealer: PacketSealer | None = None
        self._opener: PacketOpener | None = None
        self._pending: tuple[noise.Initiator, int] | None = None  # (initiator, our sender index)
        self._attempt = 0
        self._next_init_ns = 0
        self._pending_epoch: int | None = None  # responder: switch sending once this epoch is heard
        self._pending_send_key: bytes | None = None
        self._established_ns: int | None = None
        self._last_rx_ns: int | None = None
        self._last_init_ts = 0
        self._init_tokens = float(INIT_BURST)
        self._init_refill_ns = 0
        self.counters: dict[str, int] = {
            "inits_sent": 0,
            "inits_received": 0,
            "responses_sent": 0,
            "responses_received": 0,
            "sessions": 0,
            "rekeys": 0,
            "mac1_failures": 0,
            "handshake_failures": 0,
            "replayed_inits": 0,
            "stale_responses": 0,
            "ignored_simultaneous": 0,
            "rate_limited_inits": 0,
            "sealed_without_session": 0,
        }

    # -- state -----------------------------------------------------------------------------------------

    @property
    def established(self) -> bool:
        """True once some session's keys are installed (packets can be sealed)."""
        return self._sealer is not None

    def live(self, now_ns: int) -> bool:
        """True while something authenticated came from the twin within :data:`DEAD_AFTER_NS`."""
        return self._last_rx_ns is not None and now_ns - self._last_rx_ns < DEAD_AFTER_NS

    @property
    def epoch(self) -> int | None:
        """Epoch we seal with now (None before the first session)."""
        sealer = self._sealer
        return None if sealer is None else sealer.epoch

    # -- calling ---------------------------------------------------------------------------------------

    def poll(self, now_ns: int, wall_ns: int, seq: Callable[[], int]) -> list[bytes]:
        """Handshake datagrams to send now (network thread): a call, a retry or a rekey.

        ``wall_ns`` is the wall clock (the init's timestamp), ``seq`` hands out packet sequence numbers.
        """
        if not self._wants_call(now_ns) or now_ns < self._next_init_ns:
            return []
        wait = RETRY_NS[min(self._attempt, len(RETRY_NS) - 1)]
        self._attempt += 1
        self._next_init_ns = now_ns + wait
        index = self._random_index()
        message, initiator = noise.initiate(
            self._private, self.twin, PROLOGUE, _TIMESTAMP.pack(wall_ns & 0xFFFFFFFFFFFFFFFF)
        )
        assert len(message) == HANDSHAKE_INIT_MESSAGE
        self._pending = (initiator, index)
        head = bytes(HandshakeInit(seq(), index, message, bytes(HANDSHAKE_MAC_SIZE)))[:-HANDSHAKE_MAC_SIZE]
        self.counters["inits_sent"] += 1
        return [head + mac1(self._twin_mac_key, head)]

    def _wants_call(self, now_ns: int) -> bool:
        if not self.live(now_ns) or self._established_ns is None:
            return True
        age = now_ns - self._established_ns
        return age >= REKEY_AFTER_NS if self._lower else age >= REKEY_AFTER_NS * 3 // 2

    # -- answering -------------------------------------------------------------------------------------

    def on_init(self, data: bytes, now_ns: int, seq: Callable[[], int]) -> bytes | None:
        """A HandshakeInit datagram (network thread): the response to send, or None (dropped, counted)."""
        body = data[:-HANDSHAKE_MAC_SIZE]
        if not hmac.compare_digest(mac1(self._our_mac_key, body), data[-HANDSHAKE_MAC_SIZE:]):
            self.counters["mac1_failures"] += 1
            return None
        self.counters["inits_received"] += 1
        # Each answer costs ~0.5 ms of key agreement, and mac1 does not stop a replayed genuine init: answer
        # at most INIT_RATE a second (a real twin calls at most every 250 ms).
        self._init_tokens = min(
            INIT_BURST, self._init_tokens + (now_ns - self._init_refill_ns) * INIT_RATE / 1e9
        )
        self._init_refill_ns = now_ns
        if self._init_tokens < 1.0:
            self.counters["rate_limited_inits"] += 1
            return None
        self._init_tokens -= 1.0
        if self._pending is not None and self._lower and self.live(now_ns) is False:
            # Both called at once: the lower key's call wins; the twin will answer it.
            self.counters["ignored_simultaneous"] += 1
            return None
        try:
            pkt = HandshakeInit.parse(data)
        except ProtocolError:
            self.counters["handshake_failures"] += 1
            return None
        epoch = self._next_epoch()
        try:
            accepted = noise.respond(
                self._private,
                pkt.message,
                PROLOGUE,
                lambda key: hmac.compare_digest(key, self.twin),
                bytes((epoch,)),
            )
        except noise.HandshakeError:
            self.counters["handshake_failures"] += 1
            return None
        if len(accepted.payload) != _TIMESTAMP.size:
            self.counters["handshake_failures"] += 1
            return None
        (stamp,) = _TIMESTAMP.unpack(accepted.payload)
        if self.live(now_ns) and stamp <= self._last_init_ts:
            self.counters["replayed_inits"] += 1
            return None
        self._last_init_ts = max(self._last_init_ts, stamp)
        keys = accepted.keys.for_responder()
        self._install_receive(keys.receive, epoch)
        if self.live(now_ns) and self._sealer is not None:
            # Keep sending with the working keys until the twin proves it has the new ones.
            self._pending_epoch = epoch
            self._pending_send_key = keys.send
        else:
            self._switch_send(keys.send, epoch, now_ns)
        self._pending = None  # if we were calling too, this session replaces ours
        self._attempt = 0
        index = self._random_index()
        response = HandshakeResponse(
            seq(), index, pkt.sender_index, accepted.message, bytes(HANDSHAKE_MAC_SIZE)
        )
        head = bytes(response)[:-HANDSHAKE_MAC_SIZE]
        self.counters["responses_sent"] += 1
        return head + mac1(self._twin_mac_key, head)

    def on_response(self, data: bytes, now_ns: int) -> bool:
        """A HandshakeResponse datagram (network thread). True when it completed our call."""
        body = data[:-HANDSHAKE_MAC_SIZE]
        if not hmac.compare_digest(mac1(self._our_mac_key, body), data[-HANDSHAKE_MAC_SIZE:]):
            self.counters["mac1_failures"] += 1
            return False
        try:
            pkt = HandshakeResponse.parse(data)
        except ProtocolError:
            self.counters["handshake_failures"] += 1
            return False
        pending = self._pending
        if pending is None or pkt.receiver_index != pending[1]:
            self.counters["stale_responses"] += 1
            return False
        assert len(pkt.message) == HANDSHAKE_RESPONSE_MESSAGE
        try:
            payload, keys = pending[0].read_response(pkt.message)
        except noise.HandshakeError:
            self.counters["handshake_failures"] += 1
            return False
        if len(payload) != 1 or not 1 <= payload[0] <= MAX_EPOCH:
            self.counters["handshake_failures"] += 1
            return False
        epoch = payload[0]
        self.counters["responses_received"] += 1
        transport = keys.for_initiator()
        self._install_receive(transport.receive, epoch)
        self._switch_send(transport.send, epoch, now_ns)
        self._pending = None
        self._attempt = 0
        # The response authenticated: the twin is there.
        self._last_rx_ns = now_ns
        return True

    def _next_epoch(self) -> int:
        held = set(self._opener.epochs) if self._opener is not None else set()
        if self._sealer is not None:
            held.add(self._sealer.epoch)
        start = max(held) if held else secrets.randbelow(MAX_EPOCH) + 1
        epoch = next_epoch(start)
        while epoch in held:
            epoch = next_epoch(epoch)
        return epoch

    def _install_receive(self, key: bytes, epoch: int) -> None:
        if self._opener is None:
            self._opener = PacketOpener(key, epoch)
        else:
            self._opener.install(key, epoch)

    def _switch_send(self, key: bytes, epoch: int, now_ns: int) -> None:
        self.counters["rekeys" if self._sealer is not None else "sessions"] += 1
        # A new object, not rekey(): seal() on other threads then sees the old or the new one whole.
        self._sealer = PacketSealer(key, epoch)
        self._established_ns = now_ns
        self._pending_epoch = None
        self._pending_send_key = None

    # -- packets ---------------------------------------------------------------------------------------

    def seal(self, datagram: bytes) -> bytes | None:
        """``datagram`` sealed for the twin (any thread); None (counted) while there is no session."""
        sealer = self._sealer
        if sealer is None:
            self.counters["sealed_without_session"] += 1
            return None
        return sealer.seal(datagram)

    def open(self, datagram: bytes, now_ns: int) -> bytes:
        """The plaintext of a sealed datagram from the twin (network thread). Raises :class:`SealError`."""
        opener = self._opener
        if opener is None:
            raise SealError("epoch", f"no session yet (epoch {datagram[3] if len(datagram) > 3 else '?'})")
        plain = opener.open(datagram)
        self._last_rx_ns = now_ns
        pending = self._pending_epoch
        if pending is not None and datagram[3] == pending and self._pending_send_key is not None:
            # The twin uses the keys we answered with: switch our sending too.
            self._switch_send(self._pending_send_key, pending, now_ns)
        return plain

    def stats(self, now_ns: int) -> dict[str, Any]:
        return {
            **self.counters,
            "established": self.established,
            "live": self.live(now_ns),
            "epoch": self.epoch,
            "session_age_s": None
            if self._established_ns is None
            else round((now_ns - self._established_ns) / 1e9, 1),
        }
