"""Per-packet AEAD (PROTOCOL.md §13): round trips, authentication of header and body, replay, epochs, fuzzing.

The plaintext packets are the protocol golden files (one of each packet type). tests/net/golden/
sealed_keepalive.bin is golden/keepalive.bin sealed with key ``bytes(range(32))`` at epoch 1; it was written
once with ``PacketSealer(bytes(range(32)), 1).seal(keepalive)`` (or ``DOORWAY_REGEN_GOLDEN=1 .venv/bin/pytest
tests/net/test_seal.py``), and ``test_golden_sealed_keepalive`` checks it against a direct ChaCha20-Poly1305
call with the nonce and AAD spelled out.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from app.net.noise import initiate, respond
from app.net.protocol import (
    AEAD_TAG_SIZE,
    HEADER_SIZE,
    MAGIC,
    PROTOCOL_VERSION,
    Keepalive,
    MediaPacket,
    PacketType,
    ProtocolError,
    parse_packet,
)
from app.net.seal import (
    DEFAULT_WINDOW,
    MAX_EPOCH,
    MIN_SEALED,
    REJECT_AFTER,
    REKEY_AFTER,
    REORDER_SLACK,
    SEAL_ERROR_REASONS,
    PacketOpener,
    PacketSealer,
    SealError,
    next_epoch,
)
from app.net.seq import SEQ_MASK, seq_add

GOLDEN_DIR = Path(__file__).parent / "golden"
SEALED_KEEPALIVE = GOLDEN_DIR / "sealed_keepalive.bin"
REGENERATE = os.environ.get("DOORWAY_REGEN_GOLDEN") == "1"

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
KEY_C = bytes(range(200, 232))

# One plaintext packet of every type: the protocol's golden files.
PLAINTEXTS = {
    path.stem: path.read_bytes()
    for path in sorted(GOLDEN_DIR.glob("*.bin"))
    if not path.stem.startswith("sealed")
}


def keepalive(seq: int) -> bytes:
    return bytes(Keepalive(seq=seq, sent_us=123_456, session_id=0xCAFE))


def expect(reason: str, opener: PacketOpener, datagram: bytes) -> SealError:
    with pytest.raises(SealError) as info:
        opener.open(datagram)
    assert info.value.reason == reason, info.value
    return info.value


def test_the_golden_files_cover_every_packet_type() -> None:
    for data in PLAINTEXTS.values():
        parse_packet(data)  # each is a valid plaintext packet
    assert {data[2] for data in PLAINTEXTS.values()} >= set(PacketType)


@pytest.mark.parametrize("name", sorted(PLAINTEXTS))
def test_round_trip_of_every_packet_type(name: str) -> None:
    plain = PLAINTEXTS[name]
    sealer, opener = PacketSealer(KEY_A, 7), PacketOpener(KEY_A, 7)
    sealed = sealer.seal(plain)
    assert len(sealed) == len(plain) + AEAD_TAG_SIZE
    # The header stays readable: everything but the key epoch is as in the plaintext, length included.
    assert sealed[:3] == plain[:3] and sealed[3] == 7 and sealed[4:HEADER_SIZE] == plain[4:HEADER_SIZE]
    # The body is not.
    assert sealed[HEADER_SIZE : len(plain)] != plain[HEADER_SIZE:]
    opened = opener.open(sealed)
    assert opened == plain
    assert bytes(parse_packet(opened)) == plain


def test_golden_sealed_keepalive() -> None:
    plain = PLAINTEXTS["keepalive"]
    sealed = PacketSealer(KEY_A, 1).seal(plain)
    if REGENERATE:
        SEALED_KEEPALIVE.write_bytes(sealed)
    golden = SEALED_KEEPALIVE.read_bytes()
    assert sealed == golden
    # Independently: header with key_epoch 1 is the AAD, nonce = 7 zero bytes ‖ epoch ‖ seq (8).
    header = bytes.fromhex("d0 01 04 01 00 18 00 00 00 00 00 08")
    nonce = bytes.fromhex("00 00 00 00 00 00 00 01 00 00 00 08")
    assert golden == header + ChaCha20Poly1305(KEY_A).encrypt(nonce, plain[HEADER_SIZE:], header)
    assert len(golden) == 24 + 16
    assert PacketOpener(KEY_A, 1).open(golden) == plain


def test_every_header_bit_is_authenticated() -> None:
    plain = PLAINTEXTS["media"]
    sealed = PacketSealer(KEY_A, 1).seal(plain)
    opener = PacketOpener(KEY_A, 1)
    for i in range(HEADER_SIZE):
        for bit in range(8):
            tampered = bytearray(sealed)
            tampered[i] ^= 1 << bit
            with pytest.raises(SealError) as info:
                opener.open(bytes(tampered))
            expected = {0: "header", 1: "header", 3: "epoch", 4: "length", 5: "length"}.get(i, "tag")
            assert info.value.reason == expected, (i, bit, info.value)
    # The forgeries did not touch the replay window: the genuine packet still opens.
    assert opener.open(sealed) == plain


def test_every_body_and_tag_bit_is_authenticated() -> None:
    plain = PLAINTEXTS["keepalive"]
    sealed = PacketSealer(KEY_A, 1).seal(plain)
    opener = PacketOpener(KEY_A, 1)
    for i in range(HEADER_SIZE, len(sealed)):
        for bit in range(8):
            tampered = bytearray(sealed)
            tampered[i] ^= 1 << bit
            expect("tag", opener, bytes(tampered))
    assert opener.open(sealed) == plain


def test_truncations_and_extensions_fail() -> None:
    sealed = PacketSealer(KEY_A, 1).seal(PLAINTEXTS["media"])
    opener = PacketOpener(KEY_A, 1)
    for n in range(len(sealed)):
        expect("short" if n < MIN_SEALED else "length", opener, sealed[:n])
    expect("length", opener, sealed + b"\0")
    # A plaintext packet is not a sealed one (its epoch is 0, and the length does not count a tag).
    expect("epoch", opener, PLAINTEXTS["transport_feedback"])
    assert opener.open(sealed) == PLAINTEXTS["media"]


def test_a_replay_fails() -> None:
    sealer, opener = PacketSealer(KEY_A, 1), PacketOpener(KEY_A, 1)
    first, second = sealer.seal(keepalive(100)), sealer.seal(keepalive(101))
    assert opener.open(first) == keepalive(100)
    expect("replay", opener, first)
    assert opener.open(second) == keepalive(101)
    expect("replay", opener, first)
    expect("replay", opener, second)


def test_reordering_within_the_window_opens_and_beyond_it_fails() -> None:
    sealer, opener = PacketSealer(KEY_A, 1), PacketOpener(KEY_A, 1)
    start = SEQ_MASK - 500  # across the wrap
    top = seq_add(start, DEFAULT_WINDOW + 10)
    packets = {
        seq_add(start, i): sealer.seal(keepalive(seq_add(start, i))) for i in range(DEFAULT_WINDOW + 11)
    }
    assert opener.open(packets[top]) == keepalive(top)
    assert opener.open(packets[seq_add(top, -1)])
    assert opener.open(packets[seq_add(top, -(DEFAULT_WINDOW - 1))])
    expect("too_old", opener, packets[seq_add(top, -DEFAULT_WINDOW)])
    expect("too_old", opener, packets[start])
    expect("replay", opener, packets[seq_add(top, -1)])


def test_window_size_is_configurable() -> None:
    sealer, opener = PacketSealer(KEY_A, 1), PacketOpener(KEY_A, 1, window_size=4)
    packets = [sealer.seal(keepalive(s)) for s in range(10)]
    opener.open(packets[9])
    opener.open(packets[6])
    expect("too_old", opener, packets[5])


def test_wrong_epoch_and_wrong_key_fail() -> None:
    plain = keepalive(5)
    expect("epoch", PacketOpener(KEY_A, 1), PacketSealer(KEY_A, 2).seal(plain))
    expect("tag", PacketOpener(KEY_B, 1), PacketSealer(KEY_A, 1).seal(plain))
    # Relabelling a packet with another epoch we hold a key for fails too (the epoch is in AAD and nonce).
    opener = PacketOpener(KEY_A, 1)
    opener.install(KEY_A, 2)  # (never reuse a key in real life; here it isolates the epoch's role)
    relabelled = bytearray(PacketSealer(KEY_A, 1).seal(plain))
    relabelled[3] = 2
    expect("tag", opener, bytes(relabelled))


def test_previous_epoch_opens_until_dropped() -> None:
    sealer, opener = PacketSealer(KEY_A, 1), PacketOpener(KEY_A, 1)
    in_flight = [sealer.seal(keepalive(s)) for s in range(10)]
    opener.open(in_flight[0])
    sealer.rekey(KEY_B, next_epoch(sealer.epoch))
    opener.install(KEY_B, 2)
    assert opener.epochs == (2, 1)
    new = [sealer.seal(keepalive(s)) for s in range(10, 20)]
    assert all(p[3] == 2 for p in new)
    assert opener.open(new[0]) == keepalive(10)
    # Packets sealed under epoch 1 before the rekey arrive late: they still open, once.
    assert opener.open(in_flight[5]) == keepalive(5)
    expect("replay", opener, in_flight[0])
    opener.drop_previous()
    assert opener.epochs == (2,)
    expect("epoch", opener, in_flight[6])
    assert opener.open(new[1]) == keepalive(11)
    opener.drop_previous()  # no-op


def test_at_most_two_keys_are_kept() -> None:
    opener = PacketOpener(KEY_A, 1)
    opener.install(KEY_B, 2)
    opener.install(KEY_C, 3)
    assert opener.epochs == (3, 2)
    expect("epoch", opener, PacketSealer(KEY_A, 1).seal(keepalive(1)))
    assert opener.open(PacketSealer(KEY_B, 2).seal(keepalive(1)))
    assert opener.open(PacketSealer(KEY_C, 3).seal(keepalive(1)))
    # Installing at the previous epoch replaces that key.
    opener.install(KEY_A, 2)
    assert opener.epochs == (2, 3)
    assert opener.open(PacketSealer(KEY_A, 2).seal(keepalive(1)))
    # Installing at the current epoch (a restarted peer reusing its epoch) replaces it, keeping the previous.
    opener.install(KEY_B, 2)
    assert opener.epochs == (2, 3)
    expect("tag", opener, PacketSealer(KEY_A, 2).seal(keepalive(2)))
    assert opener.open(PacketSealer(KEY_B, 2).seal(keepalive(1)))  # a fresh window for the fresh key
    assert opener.open(PacketSealer(KEY_C, 3).seal(keepalive(2)))
    with pytest.raises(ValueError, match="epoch"):
        opener.install(KEY_C, 0)
    assert opener.epochs == (2, 3)


def test_each_key_has_its_own_replay_window() -> None:
    # A restarted peer's new key starts afresh, even with lower seqs than the old key saw.
    opener = PacketOpener(KEY_A, 1)
    assert opener.open(PacketSealer(KEY_A, 1).seal(keepalive(1_000_000)))
    opener.install(KEY_B, 2)
    assert opener.open(PacketSealer(KEY_B, 2).seal(keepalive(3)))
    assert opener.open(PacketSealer(KEY_A, 1).seal(keepalive(999_999)))


def test_keys_from_a_handshake_seal_both_directions() -> None:
    initiator_static, responder_static = os.urandom(32), os.urandom(32)
    responder_public = X25519PrivateKey.from_private_bytes(responder_static).public_key().public_bytes_raw()
    message1, initiator = initiate(initiator_static, responder_public, b"", b"")
    accepted = respond(responder_static, message1, b"", lambda key: True, b"")
    _, keys = initiator.read_response(accepted.message)
    i_keys, r_keys = keys.for_initiator(), accepted.keys.for_responder()
    i_sealer, i_opener = PacketSealer(i_keys.send, 1), PacketOpener(i_keys.receive, 1)
    r_sealer, r_opener = PacketSealer(r_keys.send, 1), PacketOpener(r_keys.receive, 1)
    # Both sides use the same seq: the keys differ per direction, so the nonces never collide under one key.
    to_responder, to_initiator = i_sealer.seal(keepalive(42)), r_sealer.seal(keepalive(42))
    assert to_responder != to_initiator
    assert r_opener.open(to_responder) == keepalive(42)
    assert i_opener.open(to_initiator) == keepalive(42)
    # A side cannot open its own packets (a reflected packet fails).
    expect("tag", i_opener, i_sealer.seal(keepalive(43)))


def test_seal_refuses_what_is_not_a_plaintext_packet() -> None:
    sealer = PacketSealer(KEY_A, 1)
    with pytest.raises(ValueError, match="shorter"):
        sealer.seal(b"\xd0\x01\x04")
    with pytest.raises(ValueError, match="already"):
        sealer.seal(sealer.seal(keepalive(1)))
    with pytest.raises(ValueError, match="length"):
        sealer.seal(keepalive(1) + b"\0")


def test_key_and_epoch_arguments_are_checked() -> None:
    for epoch in (0, MAX_EPOCH + 1, -1):
        with pytest.raises(ValueError, match="epoch"):
            PacketSealer(KEY_A, epoch)
        with pytest.raises(ValueError, match="epoch"):
            PacketOpener(KEY_A, epoch)
    with pytest.raises(ValueError, match="32 bytes"):
        PacketSealer(bytes(16), 1)
    with pytest.raises(ValueError, match="32 bytes"):
        PacketOpener(bytes(33), 1)
    with pytest.raises(ValueError, match="current epoch"):
        PacketSealer(KEY_A, 1).rekey(KEY_B, 1)
    assert [next_epoch(e) for e in (1, 2, 254, 255)] == [2, 3, 255, 1]


def test_the_sealer_stops_before_a_nonce_could_repeat() -> None:
    first = SEQ_MASK - 10
    sealer = PacketSealer(KEY_A, 1)
    sealer.seal(keepalive(first))
    assert not sealer.needs_rekey
    # Packets numbered a little before the first (another thread's) still seal.
    sealer.seal(keepalive(seq_add(first, -REORDER_SLACK)))
    with pytest.raises(ValueError, match="rekey"):
        sealer.seal(keepalive(seq_add(first, -REORDER_SLACK - 1)))
    sealer.seal(keepalive(seq_add(first, REKEY_AFTER - REORDER_SLACK - 1)))
    assert not sealer.needs_rekey
    sealer.seal(keepalive(seq_add(first, REKEY_AFTER - REORDER_SLACK)))
    assert sealer.needs_rekey
    last = seq_add(first, REJECT_AFTER - REORDER_SLACK - 1)
    sealer.seal(keepalive(last))
    with pytest.raises(ValueError, match="rekey"):
        sealer.seal(keepalive(seq_add(last, 1)))
    # Every seq the key accepted lies in fewer than 2**32 consecutive values.
    assert REJECT_AFTER < SEQ_MASK + 1
    sealer.rekey(KEY_B, 2)
    assert not sealer.needs_rekey
    assert sealer.seal(keepalive(seq_add(last, 1)))[3] == 2


def test_seal_error_is_a_protocol_error_with_a_known_reason() -> None:
    error = expect("short", PacketOpener(KEY_A, 1), b"")
    assert isinstance(error, ProtocolError)
    assert error.reason in SEAL_ERROR_REASONS


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_seal_error(data: bytes) -> None:
    with pytest.raises(SealError) as info:
        PacketOpener(KEY_A, 1).open(data)
    assert info.value.reason in SEAL_ERROR_REASONS


@settings(max_examples=500, deadline=None)
@given(
    st.integers(0, 255),
    st.integers(0, SEQ_MASK),
    st.binary(max_size=100),
    st.binary(min_size=AEAD_TAG_SIZE, max_size=AEAD_TAG_SIZE),
)
def test_random_packets_with_a_plausible_header_raise_only_seal_error(
    ptype: int, seq: int, rest: bytes, tag: bytes
) -> None:
    # Get past the cheap checks so the tag check runs.
    data = struct.pack("!BBBBHBBI", MAGIC, PROTOCOL_VERSION, ptype, 1, HEADER_SIZE + len(rest), 0, 0, seq)
    with pytest.raises(SealError) as info:
        PacketOpener(KEY_A, 1).open(data + rest + tag)
    assert info.value.reason == "tag"


def test_media_packet_of_mtu_size_round_trips() -> None:
    pkt = MediaPacket(
        seq=77,
        stream_id=0,
        frame_id=1,
        fragment_index=0,
        fragment_count=1,
        frame_size=1168,
        capture_us=5,
        payload=os.urandom(1168),
    )
    plain = bytes(pkt)
    assert len(plain) == 1200
    sealed = PacketSealer(KEY_A, 9).seal(plain)
    assert len(sealed) == 1216
    assert parse_packet(PacketOpener(KEY_A, 9).open(sealed)) == pkt
