"""The sans-I/O pairing exchange: two machines wired back to back, honest, mistaken, attacked and fuzzed."""

from __future__ import annotations

import contextlib
import copy
import os
import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.pairing.code import damm_digit
from app.pairing.protocol import (
    CODE_MISMATCH,
    MAX_MESSAGE,
    CodeMismatchError,
    MessageType,
    PairingError,
    PairingMachine,
    PeerRecord,
    Stage,
    encode_message,
)

CODE = "1234567" + damm_digit("1234567")
OTHER = "7654321" + damm_digit("7654321")

Relay = Callable[[str, bytes], bytes]


def record(name: str, host: str = "", port: int = 47000) -> PeerRecord:
    return PeerRecord(public_key=os.urandom(32), name=name, media_host=host, media_port=port)


SHOW = record("living room", "", 47000)
JOIN = record("kitchen", "10.0.0.7", 47100)


def pump(show: PairingMachine, join: PairingMachine, relay: Relay | None = None) -> dict[str, PairingError]:
    """Move bytes both ways (through ``relay``) until nothing moves; return each side's error, if any.

    Like the real I/O layers, a side that failed still sends what it owes, and a failed side reads no more.
    """
    errors: dict[str, PairingError] = {}
    for _ in range(20):
        moved = False
        for src, dst, direction in ((join, show, "join->show"), (show, join, "show->join")):
            data = src.data_to_send()
            if relay is not None:
                data = relay(direction, data)
            if data and dst.role not in errors:
                moved = True
                try:
                    dst.receive_data(data)
                except PairingError as exc:
                    errors[dst.role] = exc
        if not moved:
            return errors
    raise AssertionError("the exchange did not settle")


def pair(code_show: str = CODE, code_join: str = CODE) -> tuple[PairingMachine, PairingMachine]:
    return PairingMachine("show", code_show, SHOW), PairingMachine("join", code_join, JOIN)


def messages(data: bytes) -> list[tuple[int, int, bytes]]:
    """Split a byte stream into (version, type, payload) messages."""
    out = []
    while data:
        (n,) = struct.unpack_from(">H", data)
        out.append((data[2], data[3], data[4 : 2 + n]))
        data = data[2 + n :]
    return out


# -- honest and mistaken -------------------------------------------------------------------------------------


def test_right_code_pairs_both_sides() -> None:
    show, join = pair()
    assert pump(show, join) == {}
    assert show.done and join.done
    assert show.peer == JOIN
    assert join.peer == SHOW
    assert show.code_used


def test_wrong_code_fails_both_sides_with_the_same_message() -> None:
    show, join = pair(CODE, OTHER)
    errors = pump(show, join)
    assert isinstance(errors["show"], CodeMismatchError)
    assert isinstance(errors["join"], CodeMismatchError)
    assert str(errors["show"]) == str(errors["join"]) == CODE_MISMATCH
    assert CODE_MISMATCH == "the code did not match (it is used up; show a new code)"
    assert show.peer is None and join.peer is None
    assert show.code_used  # the show side must withdraw the code
    assert show.stage is Stage.FAILED and join.stage is Stage.FAILED


def test_wire_layout() -> None:
    show, join = pair()
    first = join.data_to_send()
    assert messages(first) == [(1, MessageType.PAKE, first[4:])]
    assert len(first) == 2 + 2 + 33 and first[4:5] == b"A"
    show.receive_data(first)
    reply = messages(show.data_to_send())
    assert [(v, t, len(p)) for v, t, p in reply] == [(1, MessageType.PAKE, 33), (1, MessageType.CONFIRM, 32)]
    assert reply[0][2][:1] == b"B"


def test_records_are_not_sent_in_clear() -> None:
    show, join = pair()
    seen = bytearray()

    def tap(direction: str, data: bytes) -> bytes:
        seen.extend(data)
        return data

    assert pump(show, join, tap) == {}
    for secretless in (SHOW.public_key, JOIN.public_key, b"kitchen", b"living room", b"10.0.0.7"):
        assert secretless not in seen


def test_every_prefix_is_need_more() -> None:
    """Bytes fed one at a time: nothing happens until a message is complete, then exactly its reply."""
    show, join = pair()
    pending = {"show": b"", "join": b""}
    pending["show"] = join.data_to_send()
    while pending["show"] or pending["join"]:
        for dst in (show, join):
            data, pending[dst.role] = pending[dst.role], b""
            src = join if dst is show else show
            for i, byte in enumerate(data):
                before = dst.stage
                dst.receive_data(bytes([byte]))
                reply = dst.data_to_send()
                # Find whether byte i completed a message: walk the framing of ``data``.
                ends, pos = set(), 0
                while pos < len(data):
                    pos += 2 + struct.unpack_from(">H", data, pos)[0]
                    ends.add(pos - 1)
                if i not in ends:
                    assert dst.stage is before and reply == b"", f"prefix of {i + 1} bytes did something"
                pending[src.role] += reply
    assert show.done and join.done
    assert show.peer == JOIN and join.peer == SHOW


# -- attacks -------------------------------------------------------------------------------------------------


def test_man_in_the_middle_with_a_guessed_code_fails_with_both() -> None:
    """Mallory relays by running her own exchange with each side, using a code she guessed."""
    show, join = pair()
    guess = OTHER
    mallory_join = PairingMachine("join", guess, record("mallory"))
    mallory_show = PairingMachine("show", guess, record("mallory"))
    to_show = pump(show, mallory_join)
    to_join = pump(mallory_show, join)
    assert isinstance(to_show["show"], CodeMismatchError)
    assert isinstance(to_join["join"], CodeMismatchError)
    assert isinstance(to_show["join"], CodeMismatchError)
    assert isinstance(to_join["show"], CodeMismatchError)
    assert show.peer is None and join.peer is None
    assert mallory_join.peer is None and mallory_show.peer is None


def test_spliced_record_from_another_session_is_rejected() -> None:
    """Two exchanges with the same code: a record from one, relayed into the other, does not open."""
    show1, join1 = pair()
    show2, join2 = pair()
    captured: dict[str, bytes] = {}

    def capture(direction: str, data: bytes) -> bytes:
        for _, kind, _ in messages(data):
            if kind == MessageType.RECORD and direction == "show->join":
                captured["record"] = data
        return data

    assert pump(show2, join2, capture) == {}

    def splice(direction: str, data: bytes) -> bytes:
        if direction == "show->join" and any(k == MessageType.RECORD for _, k, _ in messages(data)):
            return captured["record"]
        return data

    errors = pump(show1, join1, splice)
    assert "did not authenticate" in str(errors["join"])
    assert join1.peer is None and not join1.done


def test_tampering_with_any_byte_fails_and_never_accepts_a_wrong_record() -> None:
    """Every byte of every message flipped in turn, the exchange then run to its end.

    The honest exchange is replayed one delivery at a time; before each, both machines are copied, and each
    tampered variant continues from the copies (so only the key exchange itself is recomputed).
    """
    show, join = pair()
    variants = 0
    while True:
        progressed = False
        for src, dst in ((join, show), (show, join)):
            data = src.data_to_send()
            if not data:
                continue
            progressed = True
            for i in range(len(data)):
                show2, join2 = copy.deepcopy(show), copy.deepcopy(join)
                flipped = bytearray(data)
                flipped[i] ^= 0x01
                target = show2 if dst is show else join2
                with contextlib.suppress(PairingError):
                    target.receive_data(bytes(flipped))
                pump(show2, join2)
                where = f"{src.role}->{dst.role} byte {i} of {len(data)}"
                assert not (show2.done and join2.done), f"tampering with {where} went unnoticed"
                # Whatever a side accepted is the real record: a flipped byte never turns into another key.
                assert show2.peer in (None, JOIN), where
                assert join2.peer in (None, SHOW), where
                variants += 1
            dst.receive_data(data)
        if not progressed:
            break
    assert show.done and join.done
    assert variants > 200


# -- malformed input: exact messages -------------------------------------------------------------------------


def error_of(machine: PairingMachine, data: bytes) -> str:
    with pytest.raises(PairingError) as exc:
        machine.receive_data(data)
    assert type(exc.value) is PairingError or isinstance(exc.value, CodeMismatchError)
    return str(exc.value)


def told_peer(machine: PairingMachine) -> list[str]:
    return [p.decode() for _, t, p in messages(machine.data_to_send()) if t == MessageType.ERROR]


def test_oversized_message_is_refused_from_its_length() -> None:
    show = PairingMachine("show", CODE, SHOW)
    msg = error_of(show, b"\xff\xff")
    assert msg == "message of 65535 bytes is over the 4096-byte limit (is this a Doorway pairing port?)"
    assert told_peer(show) == [msg]
    assert not show.code_used


def test_http_request_is_refused() -> None:
    show = PairingMachine("show", CODE, SHOW)
    assert error_of(show, b"GET / HTTP/1.1\r\n\r\n").startswith("message of 18245 bytes is over the")


def test_largest_message_is_accepted_as_far_as_framing_goes() -> None:
    show = PairingMachine("show", CODE, SHOW)
    big = encode_message(MessageType.PAKE, b"A" * (MAX_MESSAGE - 2))
    assert error_of(show, big) == "key exchange message of 4094 bytes (expected 33)"
    with pytest.raises(ValueError, match="over the 4096-byte limit"):
        encode_message(MessageType.PAKE, b"A" * (MAX_MESSAGE - 1))


def test_short_message() -> None:
    show = PairingMachine("show", CODE, SHOW)
    assert error_of(show, b"\x00\x01x") == "message of 1 bytes is too short to be a pairing message"


def test_foreign_version() -> None:
    show = PairingMachine("show", CODE, SHOW)
    assert error_of(show, encode_message(MessageType.PAKE, b"A" * 33, version=2)) == (
        "the other side speaks pairing protocol version 2; this doorway speaks 1 (update the older doorway)"
    )


def test_unknown_and_unexpected_types() -> None:
    assert error_of(PairingMachine("show", CODE, SHOW), b"\x00\x02\x01\x09") == "unknown message type 9"
    assert error_of(PairingMachine("show", CODE, SHOW), encode_message(MessageType.CONFIRM, bytes(32))) == (
        "unexpected CONFIRM message while waiting for the other doorway's key exchange message"
    )


def test_wrong_side_and_bad_element_do_not_use_the_code() -> None:
    show = PairingMachine("show", CODE, SHOW)
    assert error_of(show, encode_message(MessageType.PAKE, b"B" + bytes(32))) == (
        "key exchange message from the wrong side (are both doorways showing, or both joining?)"
    )
    assert not show.code_used
    show = PairingMachine("show", CODE, SHOW)
    msg = error_of(show, encode_message(MessageType.PAKE, b"A" + b"\xff" * 32))
    assert msg.startswith("key exchange message is not a valid group element (")
    assert not show.code_used
    assert show.data_to_send().count(b"not a valid group element") == 1  # told, and no PAKE of ours


def test_failed_machine_stays_failed() -> None:
    show = PairingMachine("show", CODE, SHOW)
    first = error_of(show, b"\xff\xff")
    assert error_of(show, PairingMachine("join", CODE, JOIN).data_to_send()) == first
    assert show.waiting_for is None


def test_peer_error_message_is_shown_sanitised() -> None:
    join = PairingMachine("join", CODE, JOIN)
    join.data_to_send()
    msg = error_of(join, encode_message(MessageType.ERROR, b"busy\x1b[2J now\n\xff"))
    assert msg == "the other doorway reported: busy?[2J now?\ufffd"
    assert told_peer(join) == []  # no reply to an ERROR


def test_abort_tells_the_peer() -> None:
    show = PairingMachine("show", CODE, SHOW)
    show.abort("another doorway is already pairing with this code")
    assert told_peer(show) == ["another doorway is already pairing with this code"]
    join = PairingMachine("join", CODE, JOIN)
    join.data_to_send()
    assert (
        error_of(join, encode_message(MessageType.ERROR, b"timed out"))
        == "the other doorway reported: timed out"
    )


def test_data_after_done_is_an_error() -> None:
    show, join = pair()
    assert pump(show, join) == {}
    assert (
        error_of(show, encode_message(MessageType.ACK, b"")) == "unexpected data after the pairing completed"
    )


def test_waiting_for_says_what() -> None:
    show, join = pair()
    assert show.waiting_for == "the other doorway's key exchange message"
    show.receive_data(join.data_to_send())
    assert show.waiting_for == "the other doorway's key confirmation"
    pump(show, join)
    assert show.waiting_for is None and join.waiting_for is None


# -- records -------------------------------------------------------------------------------------------------


def test_record_round_trip() -> None:
    for rec in (SHOW, JOIN, record("Küche 🚪", "fe80::1%eth0", 65535), record("x" * 64, "a" * 253, 1)):
        assert PeerRecord.decode(rec.encode()) == rec


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"public_key": b"x" * 31}, "public key of 31 bytes"),
        ({"name": ""}, "device name"),
        ({"name": "x" * 65}, "device name"),
        ({"name": "bell\x07"}, "device name"),
        ({"name": " padded"}, "device name"),
        ({"media_host": "a b"}, "media host"),
        ({"media_host": "häus"}, "media host"),
        ({"media_host": "a" * 254}, "media host"),
        ({"media_port": 0}, "media port 0"),
    ],
)
def test_record_validation(kwargs: dict[str, object], problem: str) -> None:
    fields: dict[str, object] = {"public_key": b"k" * 32, "name": "n", "media_host": "", "media_port": 1}
    fields.update(kwargs)
    with pytest.raises(ValueError, match=problem):
        PeerRecord(**fields)  # type: ignore[arg-type]


def test_record_decode_errors() -> None:
    good = JOIN.encode()
    with pytest.raises(PairingError, match="malformed"):
        PeerRecord.decode(good[:-1])
    with pytest.raises(PairingError, match="trailing bytes"):
        PeerRecord.decode(good + b"\0")
    bad_name = b"k" * 32 + b"\x00\x01\x07" + b"\x00\x00" + b"\x00\x01"
    with pytest.raises(PairingError, match="not valid: device name"):
        PeerRecord.decode(bad_name)
    with pytest.raises(PairingError, match="malformed"):
        PeerRecord.decode(b"k" * 32 + b"\x00\x01\xff" + b"\x00\x00" + b"\x00\x01")


# -- fuzzing: random input raises PairingError and nothing else ----------------------------------------------

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def feed_chunks(machine: PairingMachine, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            machine.receive_data(chunk)
    except PairingError:
        pass


@FUZZ
@given(st.lists(st.binary(max_size=80), max_size=6))
def test_fuzz_fresh_show(chunks: list[bytes]) -> None:
    feed_chunks(PairingMachine("show", CODE, SHOW), chunks)


@FUZZ
@given(st.lists(st.binary(max_size=80), max_size=6))
def test_fuzz_join_after_start(chunks: list[bytes]) -> None:
    join = PairingMachine("join", CODE, JOIN)
    join.data_to_send()
    feed_chunks(join, chunks)


def _after_key_exchange() -> tuple[PairingMachine, PairingMachine]:
    show, join = pair()
    show.receive_data(join.data_to_send())
    join.receive_data(show.data_to_send())
    return show, join


_AFTER_KEY_EXCHANGE = _after_key_exchange()


@FUZZ
@given(
    st.sampled_from([MessageType.PAKE, MessageType.CONFIRM, MessageType.RECORD, MessageType.ACK, 15, 0, 200]),
    st.binary(max_size=120),
)
def test_fuzz_well_framed_messages_mid_exchange(kind: int, payload: bytes) -> None:
    """Framed garbage of every type, at the stage after the key exchange (past the framing checks)."""
    show, join = copy.deepcopy(_AFTER_KEY_EXCHANGE)
    body = bytes([1, kind]) + payload
    feed_chunks(show, [struct.pack(">H", len(body)) + body])
    feed_chunks(join, [struct.pack(">H", len(body)) + body])


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_any_chunking_of_an_honest_exchange_pairs(data: st.DataObject) -> None:
    show, join = pair()
    for _ in range(10):
        for src, dst in ((join, show), (show, join)):
            out = src.data_to_send()
            while out:
                n = data.draw(st.integers(1, len(out)))
                dst.receive_data(out[:n])
                out = out[n:]
    assert show.done and join.done and show.peer == JOIN and join.peer == SHOW
