"""The long-term identity: made once, stable across restarts, private on disk, and its two names."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from app.cli import main
from app.identity import CROCKFORD, Identity, device_id_of, fingerprint_of
from app.state import DB_NAME, StateStore


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("DOORWAY_"):
            monkeypatch.delenv(key)


FINGERPRINT = re.compile(r"^[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}$")


def test_created_once_and_stable(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with StateStore(state) as store:
        first = Identity.load_or_create(store)
        assert Identity.load_or_create(store) == first
    with StateStore(state) as store:
        again = Identity.load_or_create(store)
    assert again == first
    assert again.private_bytes == first.private_bytes
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / DB_NAME).stat().st_mode) == 0o600


def test_different_doorways_get_different_keys(tmp_path: Path) -> None:
    with StateStore(tmp_path / "a") as a, StateStore(tmp_path / "b") as b:
        ia, ib = Identity.load_or_create(a), Identity.load_or_create(b)
    assert ia.public_bytes != ib.public_bytes
    assert ia.device_id != ib.device_id
    assert ia.fingerprint != ib.fingerprint


def test_public_key_matches_private_key() -> None:
    key = X25519PrivateKey.generate()
    ident = Identity.from_private_bytes(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))
    assert ident.public_bytes == key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert len(ident.private_bytes) == 32 and len(ident.public_bytes) == 32
    # The private key never shows in a repr (logs, tracebacks).
    assert ident.private_bytes.hex() not in repr(ident)
    assert repr(ident.private_bytes) not in repr(ident)


def test_names_are_pinned() -> None:
    # Golden values: changing the derivation would rename every doorway and break fingerprints on paper.
    ident = Identity.from_private_bytes(bytes(range(32)))
    assert ident.public_bytes.hex() == "8f40c5adb68f25624ae5b214ea767a6ec94d829d3d7b5e1ad1ba6f3e2138285f"
    assert ident.device_id == device_id_of(ident.public_bytes) == "fda97e0983717bf1"
    assert ident.fingerprint == fingerprint_of(ident.public_bytes) == "JQP6-ESES-2Q0S"


def test_fingerprint_is_crockford_base32_of_the_hash() -> None:
    # Independently: RFC 4648 base32 of the same hash, re-lettered into Crockford's alphabet.
    pub = Identity.from_private_bytes(bytes(range(32))).public_bytes
    digest = hashlib.blake2s(pub, digest_size=8, person=b"dw-fingr").digest()
    rfc = base64.b32encode(digest).decode()[:12]
    crockford = rfc.translate(str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", CROCKFORD))
    assert fingerprint_of(pub).replace("-", "") == crockford


def test_name_formats() -> None:
    for i in range(50):
        pub = bytes([i]) * 32
        assert re.fullmatch(r"[0-9a-f]{16}", device_id_of(pub))
        assert FINGERPRINT.match(fingerprint_of(pub))
    assert len(CROCKFORD) == 32 and not set("ILOU") & set(CROCKFORD)


def test_wrong_key_sizes() -> None:
    with pytest.raises(ValueError, match="32 bytes, not 31"):
        Identity.from_private_bytes(b"\0" * 31)
    with pytest.raises(ValueError, match="32 bytes, not 33"):
        fingerprint_of(b"\0" * 33)


def test_identity_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "doorway.toml"
    cfg.write_text(f'[engine]\nname = "hall"\nstate_dir = "{tmp_path / "state"}"\n')
    assert main(["identity", "--config", str(cfg)]) == 0
    first = capsys.readouterr().out
    assert main(["identity", "--config", str(cfg)]) == 0
    assert capsys.readouterr().out == first
    lines = dict(line.split(":", 1) for line in first.splitlines())
    assert lines["name"].strip() == "hall"
    assert re.fullmatch(r"[0-9a-f]{16}", lines["device id"].strip())
    assert FINGERPRINT.match(lines["fingerprint"].strip())


def test_identity_command_bad_state_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = tmp_path / "doorway.toml"
    cfg.write_text(f'[engine]\nstate_dir = "{blocker / "state"}"\n')
    assert main(["identity", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"doorway: {blocker / 'state' / DB_NAME}: cannot open")
