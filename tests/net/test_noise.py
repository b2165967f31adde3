"""The Noise IK handshake: interoperability with the ``noiseprotocol`` package, a golden vector, rejections.

``noiseprotocol`` (a dev dependency, never imported by the app) is the reference: our initiator talks to its
responder and its initiator to our responder, and transport messages go both ways with the resulting keys.

The golden vector tests/net/golden/noise_ik.json was made by :func:`reference_vector` below, which runs
the handshake with ``noiseprotocol`` alone from the fixed keys in :data:`VECTOR_INPUTS`. It was generated
once with ``DOORWAY_REGEN_GOLDEN=1 .venv/bin/pytest tests/net/test_noise.py`` (noiseprotocol 0.3.1,
cryptography 50); ``test_golden_vector_matches_noiseprotocol`` checks that the file still is what
``noiseprotocol`` computes, and ``test_golden_vector`` that we produce it byte for byte.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from app.net.noise import (
    HANDSHAKE_ERROR_REASONS,
    MAX_MESSAGE,
    MAX_NONCE,
    MAX_PAYLOAD1,
    MAX_PAYLOAD2,
    MESSAGE1_OVERHEAD,
    MESSAGE2_OVERHEAD,
    PROTOCOL_NAME,
    CipherState,
    HandshakeError,
    SessionKeys,
    initiate,
    respond,
)

GOLDEN = Path(__file__).parent / "golden" / "noise_ik.json"
REGENERATE = os.environ.get("DOORWAY_REGEN_GOLDEN") == "1"

PROLOGUE = b"doorway pairing v1"
# Fixed test keys (never used anywhere real).
INITIATOR_STATIC = bytes(range(1, 33))
RESPONDER_STATIC = bytes(range(33, 65))
STRANGER_STATIC = bytes(range(65, 97))


def public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


INITIATOR_PUBLIC = public(INITIATOR_STATIC)
RESPONDER_PUBLIC = public(RESPONDER_STATIC)
STRANGER_PUBLIC = public(STRANGER_STATIC)


def only_initiator(key: bytes) -> bool:
    return key == INITIATOR_PUBLIC


def allow_all(key: bytes) -> bool:
    return True


# -- the reference implementation -----------------------------------------------------------------------


def their_initiator(
    static: bytes = INITIATOR_STATIC,
    remote: bytes = RESPONDER_PUBLIC,
    prologue: bytes = PROLOGUE,
    ephemeral: bytes | None = None,
) -> NoiseConnection:
    conn = NoiseConnection.from_name(PROTOCOL_NAME)
    conn.set_as_initiator()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static)
    conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote)
    conn.set_prologue(prologue)
    _start(conn, ephemeral)
    return conn


def their_responder(
    static: bytes = RESPONDER_STATIC, prologue: bytes = PROLOGUE, ephemeral: bytes | None = None
) -> NoiseConnection:
    conn = NoiseConnection.from_name(PROTOCOL_NAME)
    conn.set_as_responder()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static)
    conn.set_prologue(prologue)
    _start(conn, ephemeral)
    return conn


def _start(conn: NoiseConnection, ephemeral: bytes | None) -> None:
    if ephemeral is None:
        conn.start_handshake()
        return
    conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
    # noiseprotocol warns (rightly) that a fixed ephemeral key is for tests only.
    with pytest.warns(UserWarning, match="ephemeral"):
        conn.start_handshake()


VECTOR_INPUTS = {
    "protocol_name": PROTOCOL_NAME.decode(),
    "prologue": PROLOGUE.hex(),
    "initiator_static": INITIATOR_STATIC.hex(),
    "responder_static": RESPONDER_STATIC.hex(),
    "initiator_ephemeral": bytes(range(97, 129)).hex(),
    "responder_ephemeral": bytes(range(129, 161)).hex(),
    "payload1": b"initiator payload: a timestamp, say".hex(),
    "payload2": b"responder payload".hex(),
    "transport_i2r": b"first transport message, initiator to responder".hex(),
    "transport_r2i": b"first transport message, responder to initiator".hex(),
}


def reference_vector() -> dict[str, str]:
    """The golden vector, computed with noiseprotocol only."""
    v = {k: bytes.fromhex(val) for k, val in VECTOR_INPUTS.items() if k != "protocol_name"}
    ini = their_initiator(
        v["initiator_static"], public(v["responder_static"]), v["prologue"], v["initiator_ephemeral"]
    )
    res = their_responder(v["responder_static"], v["prologue"], v["responder_ephemeral"])
    message1 = bytes(ini.write_message(v["payload1"]))
    assert bytes(res.read_message(message1)) == v["payload1"]
    message2 = bytes(res.write_message(v["payload2"]))
    assert bytes(ini.read_message(message2)) == v["payload2"]
    assert ini.handshake_finished and res.handshake_finished
    proto = ini.noise_protocol
    return {
        **VECTOR_INPUTS,
        "message1": message1.hex(),
        "message2": message2.hex(),
        "key_initiator_to_responder": bytes(proto.cipher_state_encrypt.k).hex(),
        "key_responder_to_initiator": bytes(proto.cipher_state_decrypt.k).hex(),
        "handshake_hash": bytes(ini.get_handshake_hash()).hex(),
        "transport_i2r_ciphertext": ini.encrypt(v["transport_i2r"]).hex(),
        "transport_r2i_ciphertext": res.encrypt(v["transport_r2i"]).hex(),
    }


def load_golden() -> dict[str, str]:
    data: dict[str, str] = json.loads(GOLDEN.read_text())
    return data


# -- interoperability -----------------------------------------------------------------------------------


def exchange_transport(ours: tuple[CipherState, CipherState], theirs: NoiseConnection) -> None:
    """Several messages each way between our (send, receive) cipher states and a finished NoiseConnection."""
    send, receive = ours
    for i in range(5):
        message = f"message {i} from us".encode() * (i + 1)
        assert theirs.decrypt(send.encrypt_with_ad(b"", message)) == message
        reply = f"reply {i} from them".encode() * (i + 1)
        assert receive.decrypt_with_ad(b"", theirs.encrypt(reply)) == reply
    # Empty messages too.
    assert theirs.decrypt(send.encrypt_with_ad(b"", b"")) == b""
    assert receive.decrypt_with_ad(b"", theirs.encrypt(b"")) == b""


def test_our_initiator_with_their_responder() -> None:
    message1, initiator = initiate(INITIATOR_STATIC, RESPONDER_PUBLIC, PROLOGUE, b"hello from initiator")
    assert len(message1) == MESSAGE1_OVERHEAD + len(b"hello from initiator")
    responder = their_responder()
    assert bytes(responder.read_message(message1)) == b"hello from initiator"
    message2 = bytes(responder.write_message(b"hello from responder"))
    assert len(message2) == MESSAGE2_OVERHEAD + len(b"hello from responder")
    payload, keys = initiator.read_response(message2)
    assert payload == b"hello from responder"
    assert initiator.done
    assert keys.handshake_hash == responder.get_handshake_hash()
    send, receive = keys.for_initiator()
    exchange_transport((CipherState(send), CipherState(receive)), responder)


def test_their_initiator_with_our_responder() -> None:
    initiator = their_initiator()
    message1 = bytes(initiator.write_message(b"hello from initiator"))
    seen: list[bytes] = []

    def is_allowed(key: bytes) -> bool:
        seen.append(key)
        return key == INITIATOR_PUBLIC

    accepted = respond(RESPONDER_STATIC, message1, PROLOGUE, is_allowed, b"hello from responder")
    assert seen == [INITIATOR_PUBLIC]
    assert accepted.remote_static == INITIATOR_PUBLIC
    assert accepted.payload == b"hello from initiator"
    assert bytes(initiator.read_message(accepted.message)) == b"hello from responder"
    assert accepted.keys.handshake_hash == initiator.get_handshake_hash()
    send, receive = accepted.keys.for_responder()
    exchange_transport((CipherState(send), CipherState(receive)), initiator)


def test_ours_with_ours() -> None:
    message1, initiator = initiate(INITIATOR_STATIC, RESPONDER_PUBLIC, PROLOGUE, b"one")
    remote, payload1, message2, responder_keys = respond(
        RESPONDER_STATIC, message1, PROLOGUE, only_initiator, b"two"
    )
    assert (remote, payload1) == (INITIATOR_PUBLIC, b"one")
    payload2, initiator_keys = initiator.read_response(message2)
    assert payload2 == b"two"
    assert initiator_keys == responder_keys
    i_send, i_receive = initiator_keys.for_initiator()
    r_send, r_receive = responder_keys.for_responder()
    assert (i_send, i_receive) == (r_receive, r_send)
    assert i_send != i_receive
    assert all(len(k) == 32 for k in (i_send, i_receive, initiator_keys.handshake_hash))
    # Every handshake gives new keys (fresh ephemerals).
    message1b, initiator_b = initiate(INITIATOR_STATIC, RESPONDER_PUBLIC, PROLOGUE, b"one")
    again = respond(RESPONDER_STATIC, message1b, PROLOGUE, only_initiator, b"two")
    assert initiator_b.read_response(again.message)[1] != initiator_keys


@pytest.mark.parametrize("size1, size2", [(0, 0), (MAX_PAYLOAD1, MAX_PAYLOAD2), (1, MAX_PAYLOAD2 - 1)])
def test_payload_sizes_interoperate(size1: int, size2: int) -> None:
    payload1 = os.urandom(size1)
    payload2 = os.urandom(size2)
    # Ours → theirs.
    message1, initiator = initiate(INITIATOR_STATIC, RESPONDER_PUBLIC, PROLOGUE, payload1)
    assert len(message1) == MESSAGE1_OVERHEAD + size1 <= MAX_MESSAGE
    responder = their_responder()
    assert bytes(responder.read_message(message1)) == payload1
    message2 = bytes(responder.write_message(payload2))
    assert initiator.read_response(message2)[0] == payload2
    # Theirs → ours.
    their = their_initiator()
    accepted = respond(
        RESPONDER_STATIC, bytes(their.write_message(payload1)), PROLOGUE, only_initiator, payload2
    )
    assert accepted.payload == payload1
    assert len(accepted.message) == MESSAGE2_OVERHEAD + size2 <= MAX_MESSAGE
    assert bytes(their.read_message(accepted.message)) == payload2


def test_payloads_too_long_for_a_noise_message_are_caller_errors() -> None:
    with pytest.raises(ValueError, match="payload"):
        initiate(INITIATOR_STATIC, RESPONDER_PUBLIC, PROLOGUE, bytes(MAX_PAYLOAD1 + 1))
    message1, _ = initiate(INITIATOR_STATIC, RESPONDER_PUBLIC, PROLOGUE, b"")
    with pytest.raises(ValueError, match="payload"):
        respond(RESPONDER_STATIC, message1, PROLOGUE, allow_all, bytes(MAX_PAYLOAD2 + 1))


def test_bad_key_arguments_are_caller_errors() -> None:
    with pytest.raises(ValueError, match="static key"):
        initiate(bytes(31), RESPONDER_PUBLIC, PROLOGUE, b"")
    with pytest.raises(ValueError, match="remote static key"):
        initiate(INITIATOR_STATIC, bytes(33), PROLOGUE, b"")
    with pytest.raises(ValueError, match="ephemeral key"):
        initiate(INITIATOR_STATIC, RESPONDER_PUBLIC, PROLOGUE, b"", ephemeral=bytes(16))
    message1, _ = initiate(INITIATOR_STATIC, RESPONDER_PUBLIC, PROLOGUE, b"")
    with pytest.raises(ValueError, match="static key"):
        respond(bytes(64), message1, PROLOGUE, allow_all, b"")


# -- the golden vector ----------------------------------------------------------------------------------


def test_golden_vector_matches_noiseprotocol() -> None:
    expected = reference_vector()
    if REGENERATE:
        GOLDEN.write_text(json.dumps(expected, indent=2) + "\n")
    assert load_golden() == expected


def test_golden_vector() -> None:
    v = load_golden()
    b = {k: bytes.fromhex(val) for k, val in v.items() if k != "protocol_name"}
    assert v["protocol_name"].encode() == PROTOCOL_NAME
    message1, initiator = initiate(
        b["initiator_static"],
        public(b["responder_static"]),
        b["prologue"],
        b["payload1"],
        ephemeral=b["initiator_ephemeral"],
    )
    assert message1 == b["message1"]
    accepted = respond(
        b["responder_static"],
        message1,
        b["prologue"],
        lambda key: key == public(b["initiator_static"]),
        b["payload2"],
        ephemeral=b["responder_ephemeral"],
    )
    assert accepted.payload == b["payload1"]
    assert accepted.message == b["message2"]
    payload2, keys = initiator.read_response(accepted.message)
    assert payload2 == b["payload2"]
    expected = SessionKeys(
        b["key_initiator_to_responder"], b["key_responder_to_initiator"], b["handshake_hash"]
    )
    assert keys == accepted.keys == expected
    # Transport messages with nonce 0, as noiseprotocol encrypted them.
    assert (
        CipherState(keys.initiator_to_responder).encrypt_with_ad(b"", b["transport_i2r"])
        == b["transport_i2r_ciphertext"]
    )
    assert (
        CipherState(keys.responder_to_initiator).encrypt_with_ad(b"", b["transport_r2i"])
        == b["transport_r2i_ciphertext"]
    )


# -- rejections ---------------------------------------------------------------------------------------


def expect_error(reason: str | None, call: Callable[[], object]) -> HandshakeError:
    with pytest.raises(HandshakeError) as info:
        call()
    assert info.value.reason in HANDSHAKE_ERROR_REASONS
    if reason is not None:
        assert info.value.reason == reason, info.value
    return info.value


def test_responder_refuses_an_initiator_it_does_not_pair_with() -> None:
    message1, _ = initiate(STRANGER_STATIC, RESPONDER_PUBLIC, PROLOGUE, b"let me in")
    error = expect_error(
        "not_allowed", lambda: respond(RESPONDER_STATIC, message1, PROLOGUE, only_initiator, b"")
    )
    assert STRANGER_PUBLIC.hex() in str(error)


def test_message_1_for_another_responder_or_prologue_fails() -> None:
    message1, _ = initiate(INITIATOR_STATIC, STRANGER_PUBLIC, PROLOGUE, b"")
    expect_error("tag", lambda: respond(RESPONDER_STATIC, message1, PROLOGUE, allow_all, b""))
    message1, _ = initiate(INITIATOR_STATIC, RESPONDER_PUBLIC, b"other prologue", b"")
    expect_error("tag", lambda: respond(RESPONDER_STATIC, message1, PROLOGUE, allow_all, b""))


def test_every_byte_of_message_1_is_protected() -> None:
    message1, _ = initiate(INITIATOR_STATIC, RESPONDER_PUBLIC, PROLOGUE, b"payload")
    for i in range(len(message1)):
        for flip in (
            0xFF,
            0x80,
            0x01,
        ):  # 0x80 of byte 31: X25519 ignores that bit, the transcript hash doesn't
            tampered = bytearray(message1)
            tampered[i] ^= flip
            expect_error(
                None, lambda m=bytes(tampered): respond(RESPONDER_STATIC, m, PROLOGUE, only_initiator, b"")
            )
    # The untouched message still works.
    assert respond(RESPONDER_STATIC, message1, PROLOGUE, only_initiator, b"").payload == b"payload"


def test_every_truncation_and_extension_of_message_1_fails() -> None:
    message1, _ = initiate(INITIATOR_STATIC, RESPONDER_PUBLIC, PROLOGUE, b"payload")
    for n in range(len(message1)):
        reason = "length" if n < MESSAGE1_OVERHEAD else "tag"
        expect_error(
            reason, lambda m=message1[:n]: respond(RESPONDER_STATIC, m, PROLOGUE, only_initiator, b"")
        )
    expect_error("tag", lambda: respond(RESPONDER_STATIC, message1 + b"\0", PROLOGUE, only_initiator, b""))
    expect_error(
        "length", lambda: respond(RESPONDER_STATIC, bytes(MAX_MESSAGE + 1), PROLOGUE, allow_all, b"")
    )


def test_message_2_tampered_truncated_or_extended_fails_and_the_genuine_one_still_works() -> None:
    message1, initiator = initiate(INITIATOR_STATIC, RESPONDER_PUBLIC, PROLOGUE, b"")
    message2 = respond(RESPONDER_STATIC, message1, PROLOGUE, only_initiator, b"payload two").message
    for i in range(len(message2)):
        for flip in (0xFF, 0x80, 0x01):
            tampered = bytearray(message2)
            tampered[i] ^= flip
            expect_error(None, lambda m=bytes(tampered): initiator.read_response(m))
    for n in range(len(message2)):
        reason = "length" if n < MESSAGE2_OVERHEAD else "tag"
        expect_error(reason, lambda m=message2[:n]: initiator.read_response(m))
    expect_error("tag", lambda: initiator.read_response(message2 + b"\0"))
    assert not initiator.done
    assert initiator.read_response(message2)[0] == b"payload two"
    expect_error("state", lambda: initiator.read_response(message2))


def test_message_2_from_a_different_responder_fails() -> None:
    message1, initiator = initiate(INITIATOR_STATIC, RESPONDER_PUBLIC, PROLOGUE, b"")
    # The stranger answers a message 1 that was addressed to it by the same initiator...
    message1_stranger, _ = initiate(INITIATOR_STATIC, STRANGER_PUBLIC, PROLOGUE, b"")
    from_stranger = respond(STRANGER_STATIC, message1_stranger, PROLOGUE, allow_all, b"").message
    expect_error("tag", lambda: initiator.read_response(from_stranger))
    # ...and the right responder's answer to another handshake is no good either.
    message1_other, _ = initiate(INITIATOR_STATIC, RESPONDER_PUBLIC, PROLOGUE, b"")
    stale = respond(RESPONDER_STATIC, message1_other, PROLOGUE, allow_all, b"").message
    expect_error("tag", lambda: initiator.read_response(stale))
    assert initiator.read_response(respond(RESPONDER_STATIC, message1, PROLOGUE, allow_all, b"").message)


def test_low_order_public_keys_are_rejected() -> None:
    # u = 0 is a point of small order: its shared secret with any key is all zeros.
    message1, _ = initiate(INITIATOR_STATIC, RESPONDER_PUBLIC, PROLOGUE, b"")
    expect_error(
        "key", lambda: respond(RESPONDER_STATIC, bytes(32) + message1[32:], PROLOGUE, allow_all, b"")
    )
    expect_error("key", lambda: initiate(INITIATOR_STATIC, bytes(32), PROLOGUE, b""))
    message1, initiator = initiate(INITIATOR_STATIC, RESPONDER_PUBLIC, PROLOGUE, b"")
    message2 = respond(RESPONDER_STATIC, message1, PROLOGUE, allow_all, b"").message
    expect_error("key", lambda: initiator.read_response(bytes(32) + message2[32:]))


def test_a_replayed_message_1_is_processed_again() -> None:
    # Documented: respond() cannot tell a replay; the session layer checks a timestamp in the payload.
    message1, _ = initiate(INITIATOR_STATIC, RESPONDER_PUBLIC, PROLOGUE, b"stamp 1")
    first = respond(RESPONDER_STATIC, message1, PROLOGUE, only_initiator, b"")
    second = respond(RESPONDER_STATIC, message1, PROLOGUE, only_initiator, b"")
    assert first.payload == second.payload == b"stamp 1"
    assert first.keys != second.keys  # the responder's fresh ephemeral key makes new keys anyway


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.binary(min_size=MESSAGE1_OVERHEAD, max_size=MESSAGE1_OVERHEAD + 40))
def test_random_message_1_raises_only_handshake_error(data: bytes) -> None:
    with pytest.raises(HandshakeError) as info:
        respond(RESPONDER_STATIC, data, PROLOGUE, allow_all, b"")
    assert info.value.reason in HANDSHAKE_ERROR_REASONS


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.binary(min_size=MESSAGE2_OVERHEAD, max_size=MESSAGE2_OVERHEAD + 40))
def test_random_message_2_raises_only_handshake_error(data: bytes) -> None:
    _, initiator = initiate(INITIATOR_STATIC, RESPONDER_PUBLIC, PROLOGUE, b"", ephemeral=bytes(range(32)))
    with pytest.raises(HandshakeError) as info:
        initiator.read_response(data)
    assert info.value.reason in HANDSHAKE_ERROR_REASONS
    assert not initiator.done


# -- cipher state, secrecy of reprs -------------------------------------------------------------------------


def test_cipher_state_nonces() -> None:
    key = bytes(range(32))
    sender, receiver = CipherState(key), CipherState(key)
    first = sender.encrypt_with_ad(b"ad", b"x")
    assert sender.n == 1
    expect_error("tag", lambda: receiver.decrypt_with_ad(b"other ad", first))
    assert receiver.n == 0  # a failed decryption does not use up the nonce
    assert receiver.decrypt_with_ad(b"ad", first) == b"x"
    # The same plaintext under the next nonce is a different ciphertext.
    assert sender.encrypt_with_ad(b"ad", b"x") != first
    sender.n = MAX_NONCE
    expect_error("state", lambda: sender.encrypt_with_ad(b"", b"x"))
    # Without a key, Noise passes data through unchanged.
    empty = CipherState()
    assert not empty.has_key()
    assert empty.encrypt_with_ad(b"", b"plain") == b"plain" == empty.decrypt_with_ad(b"", b"plain")


def test_reprs_do_not_show_keys() -> None:
    keys = SessionKeys(b"\x11" * 32, b"\x22" * 32, b"\x33" * 32)
    for text in (repr(keys), repr(keys.for_initiator()), repr(keys.for_responder())):
        assert "1111" not in text and "2222" not in text and "\\x11" not in text and "\\x22" not in text
