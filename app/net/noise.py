"""The Noise IK handshake (``Noise_IK_25519_ChaChaPoly_BLAKE2s``) that gives two paired doorways fresh keys.

Each doorway has a long-term X25519 static key and knows its twin's public key from pairing. One side (the
initiator) sends message 1, the other (the responder) answers with message 2, and both come away with two
32-byte ChaCha20-Poly1305 keys, one per direction (:class:`SessionKeys`), that app/net/seal.py uses for the
packets of PROTOCOL.md §13. This module is sans-I/O: it turns keys and bytes into bytes and keys. It keeps no
state between handshakes, reads no clock and opens no socket; what goes in the payloads (a timestamp against
replayed first messages, a session id) is the session layer's business.

Why not the ``noiseprotocol`` package: it has been unmaintained since 2020, implements every pattern through
a generic token interpreter, and lets a bad message surface as any of several exception types (its own,
``cryptography``'s ``InvalidTag`` and ``ValueError``, a bare ``Exception``). We need one pattern, one error
type for anything a peer can send, control over what is copied and kept, and no surprises in a process that
must run for months. So this is the Noise Protocol Framework, revision 34, for pattern IK only,
written out step by step on the ``cryptography`` primitives (X25519, ChaCha20-Poly1305) and the standard
library's BLAKE2s and HMAC. The tests check it byte for byte against ``noiseprotocol`` in both roles; the app
never imports ``noise``.

Theory of operation
-------------------
Pattern IK (Noise §7.5)::

    <- s
    ...
    -> e, es, s, ss
    <- e, ee, se

The responder's static key is known in advance (the pre-message ``<- s``), so the initiator encrypts its own
static key and its payload already in message 1: one round trip, and both sides are authenticated when it
ends. The handshake state is the Noise ``SymmetricState``: a chaining key ``ck`` that every Diffie–Hellman
result is mixed into with HKDF, a transcript hash ``h`` that every public key and ciphertext is mixed into
and that is the associated data of every handshake encryption, and a ``CipherState`` with the current key.
At the end, ``Split()`` derives the two transport keys from ``ck``: the first for initiator → responder, the
second for responder → initiator. ``h`` then is the handshake hash, a value both sides share that names this
session (channel binding).

Sizes (bytes): message 1 = 32 (e) + 48 (encrypted s + tag) + payload + 16; message 2 = 32 (e) + payload + 16.
A Noise message is at most 65535 bytes, so payloads are at most 65439 and 65487 bytes.
Cost: each side does one key generation and four X25519 operations; a whole handshake, both sides on one
core, takes about 1 ms on the 2-core target.

The responder handles message 1 in one call, :func:`respond`, which also writes message 2: the responder's
payload cannot depend on the initiator's. It asks ``is_allowed`` about the initiator's static key as soon as
that is decrypted, before the second Diffie–Hellman; the key is authenticated only once the payload decrypts
(its key depends on ``ss``), so an unknown key is rejected cheaply and a known one is still proven. A replayed
message 1 decrypts fine: :func:`respond` cannot tell it from the original, so the caller must check freshness
in the payload (say, a timestamp newer than the last one accepted from this key) before it acts on the result.
Nothing here changes state a replay could disturb.

:meth:`Initiator.read_response` works on a copy of the handshake state, so a forged or corrupted message 2
leaves the initiator able to accept the genuine one that may follow; once one succeeds, the initiator is
spent.

Errors: anything wrong with a received message (length, a key that yields an all-zero shared secret, a failed
decryption, a static key ``is_allowed`` refuses, a second response) raises :class:`HandshakeError` and nothing
else, with a short :attr:`HandshakeError.reason` to count by. Invalid arguments from the caller itself (a key
that is not 32 bytes, a payload that makes the message longer than 65535 bytes) are bugs and raise
:class:`ValueError`.

Thread safety: the functions keep no shared state and may run on any thread; an :class:`Initiator` belongs to
one thread at a time. Secrets are ordinary ``bytes`` and ``cryptography`` key objects; Python cannot promise
to wipe them, so the initiator just drops its references once it is done.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

PROTOCOL_NAME: Final = b"Noise_IK_25519_ChaChaPoly_BLAKE2s"
"""The Noise protocol name; it is hashed into the initial state, so both sides must use exactly this."""
DHLEN: Final = 32
"""Bytes of an X25519 public key and of a shared secret."""
HASHLEN: Final = 32
"""Bytes of a BLAKE2s digest (the chaining key, the handshake hash)."""
KEY_SIZE: Final = 32
"""Bytes of a ChaCha20-Poly1305 key."""
TAG_SIZE: Final = 16
"""Bytes of a Poly1305 tag."""
MAX_MESSAGE: Final = 65535
"""Longest Noise message, in bytes (Noise §3)."""
MESSAGE1_OVERHEAD: Final = DHLEN + (DHLEN + TAG_SIZE) + TAG_SIZE
"""Bytes of message 1 besides the payload (96)."""
MESSAGE2_OVERHEAD: Final = DHLEN + TAG_SIZE
"""Bytes of message 2 besides the payload (48)."""
MAX_PAYLOAD1: Final = MAX_MESSAGE - MESSAGE1_OVERHEAD
"""Largest payload of message 1 (65439 bytes)."""
MAX_PAYLOAD2: Final = MAX_MESSAGE - MESSAGE2_OVERHEAD
"""Largest payload of message 2 (65487 bytes)."""
MAX_NONCE: Final = 2**64 - 1
"""Noise reserves this nonce value: a CipherState that reaches it refuses to go on (Noise §5.1)."""

HandshakeReason = Literal["length", "key", "tag", "not_allowed", "state"]


class HandshakeError(Exception):
    """A handshake message (or a transport message) was not accepted. The only error a peer can cause.

    ``reason`` is one of :data:`HANDSHAKE_ERROR_REASONS`: ``"length"`` (too short or too long), ``"key"`` (a
    public key that gives an all-zero shared secret), ``"tag"`` (a decryption failed: corrupted, forged, or
    made for another key or prologue), ``"not_allowed"`` (the initiator's static key is not one we pair with),
    ``"state"`` (a second response to a spent initiator, or a CipherState out of nonces).
    """

    def __init__(self, reason: HandshakeReason, message: str) -> None:
        super().__init__(message)
        self.reason: HandshakeReason = reason


HANDSHAKE_ERROR_REASONS: Final[tuple[HandshakeReason, ...]] = ("length", "key", "tag", "not_allowed", "state")
"""Every value :attr:`HandshakeError.reason` takes, for counters."""


def _hash(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def _hkdf(chaining_key: bytes, input_key_material: bytes) -> tuple[bytes, bytes]:
    """HKDF as Noise §4.3 defines it, with two 32-byte outputs (IK without a PSK never needs the third).

    HMAC is RFC 2104 over BLAKE2s with its 64-byte block, as Noise §4.3 requires (not BLAKE2s's own keyed
    mode).
    """
    temp_key = hmac.digest(chaining_key, input_key_material, "blake2s")
    output1 = hmac.digest(temp_key, b"\x01", "blake2s")
    return output1, hmac.digest(temp_key, output1 + b"\x02", "blake2s")


_INITIAL_H: Final = (
    _hash(PROTOCOL_NAME) if len(PROTOCOL_NAME) > HASHLEN else PROTOCOL_NAME.ljust(HASHLEN, b"\0")
)


class CipherState:
    """Noise's CipherState (§5.1): a ChaCha20-Poly1305 key and a 64-bit message counter used as the nonce.

    The nonce is 4 zero bytes followed by the counter, little-endian (Noise §12.3). Without a key, encryption
    and decryption return their input unchanged, as the spec says. The handshake uses it internally; it is
    public so that tests can exchange Noise transport messages with ``noiseprotocol``. Doorway's packets do
    not use it: app/net/seal.py builds its nonce from the packet's key epoch and sequence number instead.
    """

    __slots__ = ("_aead", "_key", "n")

    def __init__(self, key: bytes | None = None) -> None:
        """``key``: 32 bytes, or None for no key."""
        self._key: bytes | None = None
        self._aead: ChaCha20Poly1305 | None = None
        self.n = 0
        """The next nonce (Noise's ``n``)."""
        self.initialize_key(key)

    def initialize_key(self, key: bytes | None) -> None:
        """Use ``key`` (32 bytes, or None) from nonce 0 on."""
        if key is not None and len(key) != KEY_SIZE:
            raise ValueError(f"a ChaCha20-Poly1305 key is {KEY_SIZE} bytes, got {len(key)}")
        self._key = key
        self._aead = None if key is None else ChaCha20Poly1305(key)
        self.n = 0

    def has_key(self) -> bool:
        """True once a key is set."""
        return self._key is not None

    def _nonce(self) -> bytes:
        if self.n >= MAX_NONCE:
            raise HandshakeError("state", "the cipher state has used all its nonces")
        return b"\0\0\0\0" + self.n.to_bytes(8, "little")

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """``plaintext`` encrypted under the next nonce, tag appended; unchanged without a key."""
        aead = self._aead
        if aead is None:
            return plaintext
        ciphertext = aead.encrypt(self._nonce(), plaintext, ad)
        self.n += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """The plaintext of ``ciphertext`` (tag included) under the next nonce; unchanged without a key.

        Raises :class:`HandshakeError` (reason ``"tag"``) if it does not authenticate; the nonce then stays
        where it was, as the spec requires.
        """
        aead = self._aead
        if aead is None:
            return ciphertext
        try:
            plaintext = aead.decrypt(self._nonce(), ciphertext, ad)
        except InvalidTag:
            raise HandshakeError("tag", "decryption failed: the message is corrupt or forged") from None
        self.n += 1
        return plaintext


class _SymmetricState:
    """Noise's SymmetricState (§5.2) for a 32-byte hash: chaining key, transcript hash, cipher state."""

    __slots__ = ("cipher", "ck", "h")

    def __init__(self, prologue: bytes) -> None:
        # InitializeSymmetric(protocol_name), then MixHash(prologue) as HandshakeState.Initialize does.
        self.h = _INITIAL_H
        self.ck = _INITIAL_H
        self.cipher = CipherState()
        self.mix_hash(prologue)

    def copy(self) -> _SymmetricState:
        other = _SymmetricState.__new__(_SymmetricState)
        other.h = self.h
        other.ck = self.ck
        other.cipher = CipherState(self.cipher._key)
        other.cipher.n = self.cipher.n
        return other

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def mix_key(self, input_key_material: bytes) -> None:
        self.ck, temp_k = _hkdf(self.ck, input_key_material)
        self.cipher.initialize_key(temp_k)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> SessionKeys:
        k1, k2 = _hkdf(self.ck, b"")
        return SessionKeys(k1, k2, self.h)


class TransportKeys(NamedTuple):
    """One side's pair of transport keys (32 bytes each)."""

    send: bytes
    """Key of the packets this side sends (the sealer's key)."""
    receive: bytes
    """Key of the packets this side receives (the opener's key)."""

    def __repr__(self) -> str:
        # Never let a log line carry a key.
        return "TransportKeys(<secret>)"


@dataclass(frozen=True, slots=True, repr=False)
class SessionKeys:
    """What a completed handshake yields: one key per direction and the handshake hash.

    Each direction has its own key, so the same (key, nonce) pair cannot occur in both directions even when
    both sides send the same sequence numbers.
    """

    initiator_to_responder: bytes
    """Key (32 bytes) of everything the initiator sends: Noise's first ``Split()`` output."""
    responder_to_initiator: bytes
    """Key (32 bytes) of everything the responder sends: Noise's second ``Split()`` output."""
    handshake_hash: bytes
    """The final transcript hash ``h`` (32 bytes): the same on both sides, unique to this handshake. Not
    secret."""

    def for_initiator(self) -> TransportKeys:
        """The initiator's (send, receive) keys."""
        return TransportKeys(self.initiator_to_responder, self.responder_to_initiator)

    def for_responder(self) -> TransportKeys:
        """The responder's (send, receive) keys."""
        return TransportKeys(self.responder_to_initiator, self.initiator_to_responder)

    def __repr__(self) -> str:
        return f"SessionKeys(handshake_hash={self.handshake_hash.hex()[:16]}…)"


def _private_key(private: bytes, what: str) -> X25519PrivateKey:
    if len(private) != DHLEN:
        raise ValueError(f"{what} must be a {DHLEN}-byte X25519 private key, got {len(private)} bytes")
    return X25519PrivateKey.from_private_bytes(private)


def _public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    """X25519 of our key and their 32 public bytes; an all-zero result (a low-order point) is an error."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        # cryptography refuses an all-zero shared secret; accepting it would let a peer who sends a
        # low-order point fix the key material (Noise §12.1 allows either behaviour; we reject).
        raise HandshakeError("key", "a public key gives an all-zero shared secret") from None


class Initiator:
    """An initiator waiting for message 2. Made by :func:`initiate`; spent by one successful
    :meth:`read_response`."""

    __slots__ = ("_pending", "_rs")

    def __init__(self, state: _SymmetricState, e: X25519PrivateKey, s: X25519PrivateKey, rs: bytes) -> None:
        # The handshake state and both private keys, until a response is accepted.
        self._pending: tuple[_SymmetricState, X25519PrivateKey, X25519PrivateKey] | None = (state, e, s)
        self._rs = rs

    @property
    def remote_static(self) -> bytes:
        """The responder's static public key (32 bytes) this handshake is addressed to."""
        return self._rs

    @property
    def done(self) -> bool:
        """True once a response has been accepted."""
        return self._pending is None

    def read_response(self, message: bytes) -> tuple[bytes, SessionKeys]:
        """Process message 2: return the responder's payload and the session keys.

        Raises :class:`HandshakeError` if the message is not a valid answer to our message 1 from the
        responder whose static key we used; the initiator then stays usable for another message 2. After a
        success it forgets its private keys, and any further call raises (reason ``"state"``).
        """
        pending = self._pending
        if pending is None:
            raise HandshakeError("state", "this initiator has already accepted a response")
        if not MESSAGE2_OVERHEAD <= len(message) <= MAX_MESSAGE:
            raise HandshakeError(
                "length", f"message 2 is {len(message)} bytes, expected {MESSAGE2_OVERHEAD}..{MAX_MESSAGE}"
            )
        message = bytes(message)
        # Work on a copy: a forged message 2 must not spoil the state for the genuine one.
        state = pending[0].copy()
        e, s = pending[1], pending[2]
        re = message[:DHLEN]
        state.mix_hash(re)  # e
        state.mix_key(_dh(e, re))  # ee
        state.mix_key(_dh(s, re))  # se: DH(s, re) on the initiator's side
        payload = state.decrypt_and_hash(message[DHLEN:])
        keys = state.split()
        self._pending = None
        return payload, keys


def initiate(
    static_private: bytes,
    remote_static_public: bytes,
    prologue: bytes,
    payload: bytes,
    *,
    ephemeral: bytes | None = None,
) -> tuple[bytes, Initiator]:
    """Start a handshake with the responder whose static public key is ``remote_static_public``.

    Returns message 1 (``MESSAGE1_OVERHEAD + len(payload)`` bytes) and the :class:`Initiator` that reads
    the answer. ``prologue`` is any bytes both sides must agree on (it is authenticated, not sent).
    ``payload`` (0..:data:`MAX_PAYLOAD1` bytes) is encrypted and authenticated; note that message 1 can be
    replayed. ``ephemeral`` fixes the ephemeral private key, for test vectors only: reusing one destroys
    forward secrecy. Raises :class:`ValueError` for a key that is not 32 bytes or a payload that is too long,
    :class:`HandshakeError` (reason ``"key"``) for a remote key that is a low-order point.
    """
    if len(payload) > MAX_PAYLOAD1:
        raise ValueError(f"message 1 payload is {len(payload)} bytes, at most {MAX_PAYLOAD1}")
    if len(remote_static_public) != DHLEN:
        raise ValueError(f"the remote static key must be {DHLEN} bytes, got {len(remote_static_public)}")
    s = _private_key(static_private, "the static key")
    e = X25519PrivateKey.generate() if ephemeral is None else _private_key(ephemeral, "the ephemeral key")
    rs = bytes(remote_static_public)

    state = _SymmetricState(prologue)
    state.mix_hash(rs)  # pre-message <- s
    e_public = _public_bytes(e)
    state.mix_hash(e_public)  # e
    state.mix_key(_dh(e, rs))  # es: DH(e, rs) on the initiator's side
    encrypted_static = state.encrypt_and_hash(_public_bytes(s))  # s
    state.mix_key(_dh(s, rs))  # ss
    encrypted_payload = state.encrypt_and_hash(bytes(payload))
    return e_public + encrypted_static + encrypted_payload, Initiator(state, e, s, rs)


class Accepted(NamedTuple):
    """What :func:`respond` returns for an acceptable message 1."""

    remote_static: bytes
    """The initiator's static public key (32 bytes), already approved by ``is_allowed``."""
    payload: bytes
    """The initiator's payload. Check its freshness before acting on it: message 1 can be replayed."""
    message: bytes
    """Message 2, to send back to the initiator."""
    keys: SessionKeys
    """The session keys (use :meth:`SessionKeys.for_responder`)."""


def respond(
    static_private: bytes,
    message: bytes,
    prologue: bytes,
    is_allowed: Callable[[bytes], bool],
    payload: bytes,
    *,
    ephemeral: bytes | None = None,
) -> Accepted:
    """Process message 1 as the responder with static key ``static_private``, and write message 2.

    ``is_allowed`` gets the initiator's 32-byte static public key and says whether we pair with it (it runs on
    this thread, before the key is proven; an exception from it propagates). ``payload`` (0..
    :data:`MAX_PAYLOAD2` bytes) goes into message 2. ``ephemeral`` fixes the ephemeral private key, for test
    vectors only. Raises :class:`HandshakeError` for any message 1 that is not acceptable, :class:`ValueError`
    for a bad static key or a payload that is too long.
    """
    if len(payload) > MAX_PAYLOAD2:
        raise ValueError(f"message 2 payload is {len(payload)} bytes, at most {MAX_PAYLOAD2}")
    s = _private_key(static_private, "the static key")
    e = X25519PrivateKey.generate() if ephemeral is None else _private_key(ephemeral, "the ephemeral key")
    if not MESSAGE1_OVERHEAD <= len(message) <= MAX_MESSAGE:
        raise HandshakeError(
            "length", f"message 1 is {len(message)} bytes, expected {MESSAGE1_OVERHEAD}..{MAX_MESSAGE}"
        )
    message = bytes(message)

    state = _SymmetricState(prologue)
    state.mix_hash(_public_bytes(s))  # pre-message <- s
    # Message 1: -> e, es, s, ss
    re = message[:DHLEN]
    state.mix_hash(re)  # e
    state.mix_key(_dh(s, re))  # es: DH(s, re) on the responder's side
    rs = state.decrypt_and_hash(message[DHLEN : 2 * DHLEN + TAG_SIZE])  # s
    if not is_allowed(rs):
        raise HandshakeError("not_allowed", f"the initiator's static key {rs.hex()} is not one we pair with")
    state.mix_key(_dh(s, rs))  # ss
    their_payload = state.decrypt_and_hash(message[2 * DHLEN + TAG_SIZE :])
    # Message 2: <- e, ee, se
    e_public = _public_bytes(e)
    state.mix_hash(e_public)  # e
    state.mix_key(_dh(e, re))  # ee
    state.mix_key(_dh(e, rs))  # se: DH(e, rs) on the responder's side
    encrypted_payload = state.encrypt_and_hash(bytes(payload))
    return Accepted(rs, their_payload, e_public + encrypted_payload, state.split())
