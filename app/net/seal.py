"""Per-packet encryption (PROTOCOL.md §13): seal plaintext packets for the wire, open sealed ones (sans-I/O).

A sealed datagram is the packet's 12-byte common header with ``key_epoch`` (byte 3) set to the epoch of the
key in use, then the ChaCha20-Poly1305 ciphertext of the body, then the 16-byte tag. The header travels in
the clear but is authenticated (it is the AAD), so a receiver can dispatch on it and drop replays before it
spends time decrypting; everything after it, the media header included, is encrypted. ``length`` still
counts header + body, so a sealed datagram is ``length + 16`` bytes. :class:`PacketSealer` does this on the
send side with our send key, :class:`PacketOpener` undoes it on the receive side with the peer's send key and
hands back exactly the plaintext packet, ``key_epoch`` 0 again, for :func:`app.net.protocol.parse_packet`.
Keys come from the handshake (app/net/noise.py, :class:`app.net.noise.SessionKeys`); the epochs, when to
rekey and when to drop an old key are the session layer's decisions.

Theory of operation
-------------------
**Nonce uniqueness.** ChaCha20-Poly1305 must never see the same (key, nonce) pair twice: a repeat reveals the
XOR of two plaintexts and lets an observer forge tags. The nonce is ``7 zero bytes ‖ key_epoch ‖ seq``
(12 bytes, seq big-endian as in the header). Three things keep the pair unique:

1. Each direction has its own key (the two ``Split()`` outputs of the handshake), so our packets and the
   peer's never share a key, whatever sequence numbers both sides use.
2. Within one direction and key, ``seq`` comes from the sender's one counter, +1 per packet of any type
   (PROTOCOL.md §8; a retransmission gets a new seq), so a value comes round again only 2**32 packets later.
3. The sealer makes sure that never happens under one key. It seals only seqs within :data:`REJECT_AFTER`
   (< 2**32) consecutive values, starting :data:`REORDER_SLACK` before the first seq it sealed under the key
   (two sending threads take seqs under one lock but may seal them in a slightly different order), and
   raises :class:`ValueError` for any other. A counter coming round would first reach the refused values at
   the end of that range, and a sender seals (nearly) every seq it takes, so that is where it stops.
   ``needs_rekey`` turns true at :data:`REKEY_AFTER` (2**31 packets: about 8 days at 3000 packets/s), long
   before the hard limit; the session layer is expected to rekey (new handshake, next epoch) far sooner.

The epoch in the nonce adds nothing to uniqueness under a fresh key, but it is authenticated twice (header and
nonce), so a packet relabelled with another epoch cannot open.

**Receiving.** :meth:`PacketOpener.open` checks, in this order, each failure raising :class:`SealError` with
its own ``reason``: at least 12 + 16 bytes (``short``), magic and version (``header``), an epoch we hold a key
for (``epoch``), ``length + 16`` = the datagram's length (``length``), then the replay window, then the tag
(``tag``). The window is only *checked* before decrypting, so a replay costs no decryption (``replay`` for a
duplicate, ``too_old`` for a seq 1024 or more below the highest, as §11 counts them), and it is *updated*
only after the packet authenticates (§13): a forged packet cannot move the window. Each key has its own
window (an :class:`app.net.seq.ReplayWindow`): a (key, seq) pair opens at most once, and a new key (a
restarted peer, whose seqs start elsewhere) starts with a fresh window. The opener holds at most two keys,
the current one and the previous one, so packets in flight across a rekey still open; installing a third
drops the oldest, and :meth:`PacketOpener.drop_previous` ends the grace period early.

**Cost.** Sealing a 1200-byte packet takes about 3 µs and opening one about 3.5 µs on the 2-core target
(cryptography 50; measured while other benchmarks ran, so up to a third more at times): the AEAD call itself
is about 2 µs of that, about 1 µs of it fixed per call, and the replay window about 0.5 µs. So 1500 packets a
second each way cost about 1 % of a core. Each key gets its ChaCha20Poly1305 object once, when it is
installed; per packet there is one header unpack and a few slices. The body is passed as a ``bytes`` slice:
for MTU-sized packets that copy is cheaper than making a memoryview (about 0.2 µs against 0.5 µs), and
``encrypt_into`` with a preallocated buffer measured slower than ``encrypt`` plus a concatenation.

Thread safety: :meth:`PacketSealer.seal` may run on several threads at once and concurrently with
:meth:`PacketSealer.rekey`: a key and its epoch are swapped as one object, the AEAD object keeps no per-call
state, and threads racing on the range bookkeeping can only leave it off by the few packets in the race,
which the slack covers (the hard limit is checked against each packet's own seq). :class:`PacketOpener`
belongs to the receive thread, as do its ``install`` and ``drop_previous``.
"""

from __future__ import annotations

import struct
from typing import Final, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from app.net.protocol import AEAD_TAG_SIZE, HEADER_SIZE, MAGIC, PROTOCOL_VERSION, ProtocolError
from app.net.seq import SEQ_MASK, SEQ_MODULUS, ReplayWindow, seq_diff

KEY_SIZE: Final = 32
"""Bytes of a ChaCha20-Poly1305 key."""
SEAL_OVERHEAD: Final = AEAD_TAG_SIZE
"""Bytes a sealed datagram has beyond its plaintext packet (the 16-byte tag)."""
MIN_SEALED: Final = HEADER_SIZE + AEAD_TAG_SIZE
"""Shortest sealed datagram: a header, an empty body and the tag (28 bytes)."""
MIN_EPOCH: Final = 1
"""Lowest key epoch; 0 means plaintext and is never sealed or opened here."""
MAX_EPOCH: Final = 255
"""Highest key epoch (byte 3 of the header); :func:`next_epoch` wraps from it to :data:`MIN_EPOCH`."""
REORDER_SLACK: Final = 1 << 16
"""How many seqs before the first one sealed under a key may still be sealed under it (packets numbered
before a rekey but sealed after it, by another thread)."""
REKEY_AFTER: Final = 1 << 31
"""Seqs past a key's start after which :attr:`PacketSealer.needs_rekey` is true."""
REJECT_AFTER: Final = SEQ_MODULUS - 2 * REORDER_SLACK
"""Seqs past a key's start at which :meth:`PacketSealer.seal` refuses: the seq space is nearly used up."""
DEFAULT_WINDOW: Final = 1024
"""Replay window of each receive key, in packets (PROTOCOL.md §8)."""

SealReason = Literal["short", "header", "epoch", "length", "replay", "too_old", "tag"]
SEAL_ERROR_REASONS: Final[tuple[SealReason, ...]] = (
    "short",
    "header",
    "epoch",
    "length",
    "replay",
    "too_old",
    "tag",
)
"""Every value :attr:`SealError.reason` takes, in the order :meth:`PacketOpener.open` checks them."""

# magic, version, (type), key_epoch, length, (flags, stream_id), seq: one unpack per packet.
_OPEN_HEAD: Final = struct.Struct("!BBxBH2xI")
# key_epoch, length, seq of a plaintext packet about to be sealed.
_SEAL_HEAD: Final = struct.Struct("!3xBH2xI")


class SealError(ProtocolError):
    """A datagram did not open. ``reason`` (one of :data:`SEAL_ERROR_REASONS`) says why, for counters.

    A subclass of :class:`app.net.protocol.ProtocolError`, so a receive loop that drops malformed packets
    drops these too.
    """

    def __init__(self, reason: SealReason, message: str) -> None:
        super().__init__(message)
        self.reason: SealReason = reason


def next_epoch(epoch: int) -> int:
    """The epoch after ``epoch``: 1, 2, …, 255, 1, … (0 is plaintext and is skipped)."""
    return epoch % MAX_EPOCH + 1


def _check_key(key: bytes, epoch: int) -> None:
    if len(key) != KEY_SIZE:
        raise ValueError(f"a ChaCha20-Poly1305 key is {KEY_SIZE} bytes, got {len(key)}")
    if not MIN_EPOCH <= epoch <= MAX_EPOCH:
        raise ValueError(f"key epoch {epoch} is out of range {MIN_EPOCH}..{MAX_EPOCH}")


def _nonce_prefix(epoch: int) -> bytes:
    """The first 8 of the 12 nonce bytes: 7 zero bytes and the epoch; the header's seq bytes follow."""
    return bytes(7) + bytes((epoch,))


class _SendKey:
    """One send key and what the sealer tracks about it. Replaced whole on rekey, never mutated but for
    ``base`` and ``high``."""

    __slots__ = ("aead", "base", "epoch", "epoch_byte", "high", "prefix")

    def __init__(self, key: bytes, epoch: int) -> None:
        _check_key(key, epoch)
        self.aead = ChaCha20Poly1305(key)
        self.epoch = epoch
        self.epoch_byte = bytes((epoch,))
        self.prefix = _nonce_prefix(epoch)
        self.base: int | None = None
        """The seq offsets count from (the first seq sealed minus :data:`REORDER_SLACK`); None before it."""
        self.high = 0
        """Highest offset from ``base`` sealed so far."""


class PacketSealer:
    """Seals our outgoing packets with our send key (see the module docstring)."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes, epoch: int) -> None:
        """``key``: our 32-byte send key; ``epoch``: its number, 1..255. :class:`ValueError` otherwise."""
        self._key = _SendKey(key, epoch)

    @property
    def epoch(self) -> int:
        """Epoch of the key packets are sealed with now."""
        return self._key.epoch

    @property
    def needs_rekey(self) -> bool:
        """True once the current key has covered :data:`REKEY_AFTER` seqs: rekey soon (seal refuses at
        :data:`REJECT_AFTER`)."""
        return self._key.high >= REKEY_AFTER

    def rekey(self, key: bytes, epoch: int) -> None:
        """Seal every later packet with ``key`` under ``epoch``.

        ``epoch`` must differ from the current one (the receiver tells keys apart by epoch); use
        :func:`next_epoch`. ``key`` must be fresh — from a new handshake — never one used before.
        """
        if epoch == self._key.epoch:
            raise ValueError(f"rekey to epoch {epoch}, which is the current epoch")
        self._key = _SendKey(key, epoch)

    def seal(self, datagram: bytes) -> bytes:
        """The sealed form of ``datagram``, a plaintext packet as ``bytes(pkt)`` makes it (key epoch 0,
        ``length`` equal to its size). Returns ``len(datagram) + 16`` bytes.

        Raises :class:`ValueError` for a datagram that is not such a packet (shorter than the header, already
        sealed, wrong ``length``) and when the key's seq space is used up (a missed rekey): both are bugs
        of the caller, not bad input from the network.
        """
        k = self._key
        if len(datagram) < HEADER_SIZE:
            raise ValueError(f"cannot seal {len(datagram)} bytes: shorter than the {HEADER_SIZE}-byte header")
        epoch, length, seq = _SEAL_HEAD.unpack_from(datagram)
        if epoch != 0:
            raise ValueError(f"cannot seal a packet whose key epoch is already {epoch}")
        if length != len(datagram):
            raise ValueError(f"cannot seal: the length field says {length}, the packet is {len(datagram)}")
        base = k.base
        if base is None:
            base = k.base = (seq - REORDER_SLACK) & SEQ_MASK
        offset = (seq - base) & SEQ_MASK
        if offset > k.high:
            if offset >= REJECT_AFTER:
                raise ValueError(
                    f"seq {seq} is {offset - REORDER_SLACK} past the first one sealed under epoch {k.epoch}: "
                    "a nonce could repeat; rekey first"
                )
            k.high = offset
        header = datagram[:3] + k.epoch_byte + datagram[4:HEADER_SIZE]
        return header + k.aead.encrypt(k.prefix + datagram[8:HEADER_SIZE], datagram[HEADER_SIZE:], header)


class _ReceiveKey:
    """One receive key with its own replay window."""

    __slots__ = ("aead", "epoch", "prefix", "window")

    def __init__(self, key: bytes, epoch: int, window_size: int) -> None:
        _check_key(key, epoch)
        self.aead = ChaCha20Poly1305(key)
        self.epoch = epoch
        self.prefix = _nonce_prefix(epoch)
        self.window = ReplayWindow(window_size)


class PacketOpener:
    """Opens the peer's sealed packets with the peer's send key, and at most one previous key (see the module
    docstring). Receive thread only."""

    __slots__ = ("_current", "_previous", "_slots", "_window_size")

    def __init__(self, key: bytes, epoch: int, *, window_size: int = DEFAULT_WINDOW) -> None:
        """``key``: the peer's 32-byte send key; ``epoch``: its number, 1..255; ``window_size``: replay window
        in packets."""
        self._window_size = window_size
        # Indexed by key epoch, so finding the key is one list index; epoch 0 stays None.
        self._slots: list[_ReceiveKey | None] = [None] * (MAX_EPOCH + 1)
        self._current = _ReceiveKey(key, epoch, window_size)
        self._previous: _ReceiveKey | None = None
        self._slots[epoch] = self._current

    @property
    def epochs(self) -> tuple[int, ...]:
        """Epochs that open now: the current one, then the previous one if it is still kept."""
        if self._previous is None:
            return (self._current.epoch,)
        return (self._current.epoch, self._previous.epoch)

    def install(self, key: bytes, epoch: int) -> None:
        """Accept packets under ``key`` at ``epoch`` from now on, keeping the current key as the previous one
        (the one before it is dropped).

        An epoch we already hold is replaced instead: the epoch comes from the peer, and a restarted peer
        may reuse the one its old key had. Packets of a replaced key still in flight then fail (``tag``); if
        it was the current key, the previous one stays. ``key`` must be fresh (from a new handshake): each
        key starts with an empty replay window, so reinstalling an old key would let its packets be
        replayed. Raises :class:`ValueError` for a key that is not 32 bytes or an epoch outside 1..255.
        """
        new = _ReceiveKey(key, epoch, self._window_size)
        current = self._current
        if epoch != current.epoch:
            previous = self._previous
            if previous is not None:
                self._slots[previous.epoch] = None
            self._previous = current
        self._current = new
        self._slots[epoch] = new

    def drop_previous(self) -> None:
        """Stop accepting the previous key (end of the grace period after a rekey). No-op without one."""
        previous = self._previous
        if previous is not None:
            self._slots[previous.epoch] = None
            self._previous = None

    def open(self, datagram: bytes) -> bytes:
        """The plaintext packet inside sealed ``datagram``, with key epoch 0, ready for ``parse_packet``.

        Raises :class:`SealError` (and nothing else) if the datagram is not a sealed packet under a key we
        hold, does not authenticate, or was already opened (see the module docstring for the order of checks).
        Only a packet that authenticates updates the replay window.
        """
        n = len(datagram)
        if n < MIN_SEALED:
            raise SealError("short", f"sealed datagram of {n} bytes, shorter than {MIN_SEALED}")
        magic, version, epoch, length, seq = _OPEN_HEAD.unpack_from(datagram)
        if magic != MAGIC or version != PROTOCOL_VERSION:
            raise SealError("header", f"bad magic 0x{magic:02x} or version {version}")
        k: _ReceiveKey | None = self._slots[epoch]  # unpack gives Any: keep k typed
        if k is None:
            raise SealError("epoch", f"no key for epoch {epoch}")
        if length + AEAD_TAG_SIZE != n:
            raise SealError("length", f"{n} bytes, the length field says {length} + {AEAD_TAG_SIZE}")
        window = k.window
        if not window.check(seq):
            highest = window.highest
            if highest is not None and -seq_diff(seq, highest) >= window.size:
                raise SealError("too_old", f"seq {seq} is too far below {highest} (epoch {epoch})")
            raise SealError("replay", f"seq {seq} was already opened (epoch {epoch})")
        header = datagram[:HEADER_SIZE]
        try:
            body = k.aead.decrypt(k.prefix + header[8:], datagram[HEADER_SIZE:], header)
        except InvalidTag:
            raise SealError("tag", f"seq {seq} does not authenticate (epoch {epoch})") from None
        window.update(seq)
        return header[:3] + b"\0" + header[4:] + body
