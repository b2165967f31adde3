"""A doorway's long-term identity: one X25519 key pair, its device id and its fingerprint.

The key pair is made on first start (or at provisioning, by ``doorway identity``) and kept in the state
database (:mod:`app.state`, mode 0600, readable only by the service user). It never changes afterwards:
pairing exchanges the public keys, and the media link (Noise IK) authenticates each twin by its key.

Two names derive from the public key, each from its own personalised BLAKE2s hash so that neither says
anything about the other:

- the **device id**, 16 lowercase hex digits (64 bits), for logs, files and the admin page;
- the **fingerprint**, 12 Crockford base32 characters in three groups (``RQ7K-2M9D-XW4T``, 60 bits) for
  people: short enough to read aloud and compare between two rooms, long enough that nobody can make a
  key with the same fingerprint (2^60 hashes per try). Crockford's alphabet has no I, L, O or U, so it
  survives being read aloud and typed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from app.state import KEY_SIZE, StateStore

CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
"""Crockford's base32 alphabet (no I, L, O, U)."""
FINGERPRINT_CHARS: Final = 12
"""Base32 characters in a fingerprint (5 bits each: 60 bits)."""


def device_id_of(public_key: bytes) -> str:
    """The device id of an X25519 public key: 16 hex digits of a personalised BLAKE2s hash."""
    return hashlib.blake2s(_check(public_key), digest_size=8, person=b"dw-devid").hexdigest()


def fingerprint_of(public_key: bytes) -> str:
    """The fingerprint of an X25519 public key, as people read it: ``XXXX-XXXX-XXXX`` in Crockford base32."""
    digest = hashlib.blake2s(_check(public_key), digest_size=8, person=b"dw-fingr").digest()
    bits = int.from_bytes(digest, "big") >> (64 - 5 * FINGERPRINT_CHARS)
    chars = "".join(CROCKFORD[(bits >> (5 * i)) & 31] for i in reversed(range(FINGERPRINT_CHARS)))
    return "-".join(chars[i : i + 4] for i in range(0, FINGERPRINT_CHARS, 4))


def _check(public_key: bytes) -> bytes:
    if len(public_key) != KEY_SIZE:
        raise ValueError(f"an X25519 public key has {KEY_SIZE} bytes, not {len(public_key)}")
    return public_key


@dataclass(frozen=True)
class Identity:
    """This doorway's key pair. Build with :meth:`load_or_create` (or :meth:`from_private_bytes` in tests)."""

    private_bytes: bytes = field(repr=False)
    """The 32-byte X25519 private key. Secret: never logged, never sent."""
    public_bytes: bytes
    """The 32-byte X25519 public key, sent to the twin when pairing."""

    @classmethod
    def from_private_bytes(cls, private_bytes: bytes) -> Identity:
        """The identity whose private key is ``private_bytes`` (32 bytes)."""
        if len(private_bytes) != KEY_SIZE:
            raise ValueError(f"an X25519 private key has {KEY_SIZE} bytes, not {len(private_bytes)}")
        key = X25519PrivateKey.from_private_bytes(private_bytes)
        public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return cls(private_bytes=private_bytes, public_bytes=public)

    @classmethod
    def load_or_create(cls, store: StateStore) -> Identity:
        """The identity stored in ``store``, made and stored (durably) first if there is none.

        Safe against a second process doing the same at the same moment: both get the key that was stored.
        Raises :class:`app.state.StateError` when the database cannot be read or written.
        """
        stored = store.identity_key()
        if stored is None:
            fresh = X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
            stored = store.create_identity(fresh)
        return cls.from_private_bytes(stored)

    @property
    def private_key(self) -> X25519PrivateKey:
        """The private key as a ``cryptography`` object (for Diffie–Hellman)."""
        return X25519PrivateKey.from_private_bytes(self.private_bytes)

    @property
    def device_id(self) -> str:
        """16 hex digits naming this doorway (see :func:`device_id_of`)."""
        return device_id_of(self.public_bytes)

    @property
    def fingerprint(self) -> str:
        """``XXXX-XXXX-XXXX``, for people to compare (see :func:`fingerprint_of`)."""
        return fingerprint_of(self.public_bytes)
