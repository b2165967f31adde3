"""The RoomReport packet (type 13, PROTOCOL.md §5): golden bytes, exact errors, round trips and fuzzing.

After a deliberate change of its layout, regenerate the golden file with
``DOORWAY_REGEN_GOLDEN=1 .venv/bin/pytest tests/net/test_room_report.py`` and update app/net/PROTOCOL.md.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.net.protocol import (
    MAGIC,
    NO_LUX,
    PROTOCOL_VERSION,
    ROOM_REPORT_SIZE,
    Keepalive,
    PacketType,
    ProtocolError,
    RoomFlags,
    RoomReport,
    parse_packet,
)

GOLDEN_PATH = Path(__file__).parent / "golden" / "room_report.bin"
GOLDEN = RoomReport(seq=16, lux_centi=12345, age_ms=250, brightness_permille=600, flags=RoomFlags.MATCHING)


def room_bytes(
    lux: int = 100, age: int = 0, brightness: int = 0, *, stream: int = 0, length: int = ROOM_REPORT_SIZE
) -> bytes:
    head = struct.pack("!BBBBHBBI", MAGIC, PROTOCOL_VERSION, PacketType.ROOM_REPORT, 0, length, 0, stream, 1)
    return head + struct.pack("!IHH", lux, age, brightness)


def test_golden() -> None:
    data = bytes(GOLDEN)
    if os.environ.get("DOORWAY_REGEN_GOLDEN") == "1":
        GOLDEN_PATH.write_bytes(data)
    golden = GOLDEN_PATH.read_bytes()
    assert data == golden
    assert golden.hex(" ") == "d0 01 0d 00 00 14 01 00 00 00 00 10 00 00 30 39 00 fa 02 58"
    assert len(golden) == ROOM_REPORT_SIZE == 20
    parsed = parse_packet(golden)
    assert parsed == GOLDEN and type(parsed) is RoomReport
    assert RoomReport.parse(bytearray(golden)) == GOLDEN
    assert bytes(parsed) == golden


def test_unknown_values_use_their_sentinels() -> None:
    pkt = RoomReport(seq=1, lux_centi=None, age_ms=65535, brightness_permille=None)
    data = bytes(pkt)
    assert data[12:] == bytes.fromhex("ffffffff ffff ffff")
    assert parse_packet(data) == pkt


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (room_bytes()[:-1], "truncated RoomReport: 19 bytes, the length field says 20"),
        (room_bytes(length=19)[:-1], "RoomReport: length 19, expected 20"),
        (room_bytes(length=21) + b"\x00", "RoomReport: length 21, expected 20"),
        (room_bytes(stream=1), "RoomReport: stream id must be 0, got 1"),
        (room_bytes(brightness=1001), "RoomReport: brightness 1001 ‰ is out of range 0..1000"),
        (room_bytes(brightness=0xFFFE), "RoomReport: brightness 65534 ‰ is out of range 0..1000"),
    ],
)
def test_exact_errors(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_packet(data)
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("pkt", "message"),
    [
        (RoomReport(1, NO_LUX, 0), "RoomReport: lux_centi 4294967295 is out of range 0..4294967294"),
        (RoomReport(1, -1, 0), "RoomReport: lux_centi -1 is out of range"),
        (RoomReport(1, 5, 0, 1001), "RoomReport: brightness 1001 ‰ is out of range 0..1000"),
        (RoomReport(1, 5, 70000), "RoomReport: cannot encode: "),
        (RoomReport(1 << 32, 5, 0), "RoomReport: cannot encode: "),
    ],
)
def test_encode_out_of_range(pkt: RoomReport, message: str) -> None:
    with pytest.raises(ProtocolError) as err:
        bytes(pkt)
    assert str(err.value).startswith(message)


def test_parse_as_another_type_is_refused() -> None:
    with pytest.raises(ProtocolError, match=r"^expected Keepalive, got RoomReport$"):
        Keepalive.parse(bytes(GOLDEN))


def test_every_prefix_raises() -> None:
    data = bytes(GOLDEN)
    for n in range(len(data)):
        with pytest.raises(ProtocolError):
            parse_packet(data[:n])


reports = st.builds(
    RoomReport,
    st.integers(0, 2**32 - 1),
    st.one_of(st.none(), st.integers(0, NO_LUX - 1)),
    st.integers(0, 0xFFFF),
    st.one_of(st.none(), st.integers(0, 1000)),
    st.integers(0, 255),
)


@settings(max_examples=300, deadline=None)
@given(pkt=reports)
def test_round_trip(pkt: RoomReport) -> None:
    data = bytes(pkt)
    assert parse_packet(data) == pkt
    assert bytes(parse_packet(data)) == data


@settings(max_examples=500, deadline=None)
@given(body=st.binary(min_size=0, max_size=12), flips=st.lists(st.integers(0, 159), max_size=3))
def test_random_bytes_parse_canonically_or_raise_only_protocol_error(body: bytes, flips: list[int]) -> None:
    data = bytearray(bytes(GOLDEN)[:12] + body)
    for bit in flips:
        if bit // 8 < len(data):
            data[bit // 8] ^= 1 << (bit % 8)
    try:
        pkt = parse_packet(bytes(data))
    except ProtocolError:
        return
    assert bytes(pkt) == bytes(data)
