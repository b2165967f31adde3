"""Wire format of protocol version 1: golden vectors, exact error messages, and fuzzing properties.

Golden files live in tests/net/golden/. After a deliberate change of the wire format, regenerate them with
``DOORWAY_REGEN_GOLDEN=1 .venv/bin/pytest tests/net/test_protocol.py`` and update app/net/PROTOCOL.md.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.net.protocol import (
    AUDIO_HEADER_SIZE,
    FEC_HEADER_SIZE,
    FEEDBACK_HEADER_SIZE,
    FRAME_FLAGS_MASK,
    HANDSHAKE_INIT_SIZE,
    HANDSHAKE_RESPONSE_SIZE,
    HEADER_SIZE,
    KEEPALIVE_SIZE,
    KEYFRAME_REQUEST_SIZE,
    MAGIC,
    MAX_DATAGRAM,
    MAX_FEC_BLOCKS,
    MAX_FEEDBACK_ARRIVALS,
    MAX_FRAGMENTS,
    MAX_FRAME_SIZE,
    MAX_NACK_INDICES,
    MEDIA_HEADER_SIZE,
    NACK_HEADER_SIZE,
    NOT_RECEIVED,
    PROTOCOL_VERSION,
    RECEIVER_REPORT_SIZE,
    RESERVED_PACKET_TYPES,
    AudioCodecId,
    AudioPacket,
    FecPacket,
    HandshakeInit,
    HandshakeResponse,
    Keepalive,
    KeepaliveAck,
    KeyframeRequest,
    MediaFlags,
    MediaPacket,
    Nack,
    Packet,
    PacketType,
    ProtocolError,
    ReceiverReport,
    TransportFeedback,
    fragment_offset,
    fragment_size,
    parse_packet,
)

GOLDEN_DIR = Path(__file__).parent / "golden"
REGENERATE = os.environ.get("DOORWAY_REGEN_GOLDEN") == "1"

GOLDEN: dict[str, Packet] = {
    "media": MediaPacket(
        seq=0x01020304,
        stream_id=0,
        frame_id=0x0A0B0C0D,
        fragment_index=1,
        fragment_count=3,
        frame_size=50,
        capture_us=0x0001020304050607,
        payload=b"Doorway fragment!",
        flags=MediaFlags.KEYFRAME,
    ),
    "receiver_report": ReceiverReport(
        seq=0xFFFFFFFE,
        stream_id=0,
        highest_seq=0x11223344,
        packets_received=100000,
        packets_lost=25,
        fraction_lost=3,
        jitter_us=1234,
        frames_received=6000,
        frames_lost=2,
        receive_kbps=12000,
    ),
    "keyframe_request": KeyframeRequest(seq=7, stream_id=0, request_id=42),
    "keepalive": Keepalive(seq=8, sent_us=123_456_789_012, session_id=0xCAFEF00D),
    "keepalive_ack": KeepaliveAck(seq=9, echo_us=123_456_789_012, hold_us=150),
    "nack": Nack(seq=10, stream_id=0, frame_id=0x0A0B0C0D, missing=(1, 5, 300)),
    # Parity block 1 of 2 over the 50-byte keyframe whose fragment 1 is media.bin (see GOLDEN_FEC_FRAME).
    "fec": FecPacket(
        seq=11,
        stream_id=0,
        frame_id=0x0A0B0C0D,
        data_count=3,
        parity_count=2,
        parity_index=1,
        frame_size=50,
        block_size=17,
        capture_us=0x0001020304050607,
        payload=bytes.fromhex("8470183be806b5bd21bbfce5c5797f409a"),
        flags=MediaFlags.KEYFRAME,
    ),
    "transport_feedback": TransportFeedback(
        seq=12, base_seq=0xFFFFFFFE, ref_arrival_us=123_456_789_012, arrivals=(0, 250, None, 1_000_000)
    ),
    # Frame 0xFFFF and, redundantly, frame 0xFFFE (the seq wraps).
    "audio": AudioPacket(
        seq=13,
        audio_seq=0xFFFF,
        codec=AudioCodecId.OPUS,
        capture_us=0x0001020304050607,
        frame_samples=480,
        frames=(b"primary!", b"earlier"),
    ),
    "handshake_init": HandshakeInit(
        seq=14, sender_index=0xA1B2C3D4, message=bytes(range(104)), mac1=b"mac1 of the init"
    ),
    "handshake_response": HandshakeResponse(
        seq=15,
        sender_index=0x01020304,
        receiver_index=0xA1B2C3D4,
        message=bytes(range(100, 149)),
        mac1=b"mac1 of the resp",
    ),
}

GOLDEN_FEC_FRAME = b"A golden frame, !" + b"Doorway fragment!" + b"0123456789abcdef"
"""The frame golden/fec.bin protects (tests/net/test_fec.py checks the parity against zfec)."""


def header(
    ptype: int, length: int, *, flags: int = 0, stream: int = 0, seq: int = 1, epoch: int = 0
) -> bytes:
    return struct.pack("!BBBBHBBI", MAGIC, PROTOCOL_VERSION, ptype, epoch, length, flags, stream, seq)


def media_bytes(index: int, count: int, frame_size: int, payload: bytes, frame_id: int = 1) -> bytes:
    body = struct.pack("!IHHIQ", frame_id, index, count, frame_size, 99)
    return header(PacketType.MEDIA, MEDIA_HEADER_SIZE + len(payload)) + body + payload


def nack_bytes(count: int, indices: tuple[int, ...]) -> bytes:
    body = struct.pack("!IH", 7, count) + struct.pack(f"!{len(indices)}H", *indices)
    return header(PacketType.NACK, HEADER_SIZE + len(body)) + body


def fec_bytes(index: int, count: int, data_count: int, frame_size: int, payload: bytes) -> bytes:
    body = struct.pack("!IBBHIQ", 7, index, count, data_count, frame_size, 99)
    return header(PacketType.FEC, FEC_HEADER_SIZE + len(payload)) + body + payload


def feedback_bytes(count: int, offsets: tuple[int, ...], stream: int = 0) -> bytes:
    body = struct.pack("!IQH", 100, 5000, count) + struct.pack(f"!{len(offsets)}I", *offsets)
    return header(PacketType.TRANSPORT_FEEDBACK, HEADER_SIZE + len(body), stream=stream) + body


def test_sizes() -> None:
    assert HEADER_SIZE == 12
    assert MEDIA_HEADER_SIZE == 32
    assert RECEIVER_REPORT_SIZE == 41
    assert KEYFRAME_REQUEST_SIZE == 16
    assert KEEPALIVE_SIZE == 24
    assert MAX_DATAGRAM == 65507
    assert NACK_HEADER_SIZE == 18
    assert FEC_HEADER_SIZE == 32
    assert FEEDBACK_HEADER_SIZE == 26
    assert MAX_NACK_INDICES == MAX_FEEDBACK_ARRIVALS == MAX_FEC_BLOCKS == 256
    assert {name: len(bytes(p)) for name, p in GOLDEN.items()} == {
        "media": 49,
        "receiver_report": 41,
        "keyframe_request": 16,
        "keepalive": 24,
        "keepalive_ack": 24,
        "nack": 24,
        "fec": 49,
        "transport_feedback": 42,
        "audio": 45,
        "handshake_init": 136,
        "handshake_response": 85,
    }
    # A response is never larger than the init that caused it: answering cannot amplify.
    assert HANDSHAKE_RESPONSE_SIZE < HANDSHAKE_INIT_SIZE
    assert AUDIO_HEADER_SIZE == 28
    # The largest NACK and feedback stay well inside one MTU.
    assert len(bytes(Nack(1, 0, 1, tuple(range(MAX_NACK_INDICES))))) == 530
    assert len(bytes(TransportFeedback(1, 0, 0, (None,) * MAX_FEEDBACK_ARRIVALS))) == 1050


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden(name: str) -> None:
    pkt = GOLDEN[name]
    path = GOLDEN_DIR / f"{name}.bin"
    data = bytes(pkt)
    if REGENERATE:
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_bytes(data)
    golden = path.read_bytes()
    assert data == golden
    parsed = parse_packet(golden)
    assert parsed == pkt
    assert type(parsed) is type(pkt)
    assert bytes(parsed) == golden
    assert type(pkt).parse(golden) == pkt
    assert parse_packet(bytearray(golden)) == pkt
    assert parse_packet(memoryview(golden)) == pkt


def test_golden_media_layout() -> None:
    data = (GOLDEN_DIR / "media.bin").read_bytes()
    assert data.hex(" ") == (
        "d0 01 01 00 00 31 01 00 01 02 03 04 0a 0b 0c 0d 00 01 00 03 00 00 00 32 "
        "00 01 02 03 04 05 06 07 44 6f 6f 72 77 61 79 20 66 72 61 67 6d 65 6e 74 21"
    )


def test_golden_new_type_layouts() -> None:
    assert (GOLDEN_DIR / "nack.bin").read_bytes().hex(" ") == (
        "d0 01 06 00 00 18 00 00 00 00 00 0a 0a 0b 0c 0d 00 03 00 01 00 05 01 2c"
    )
    assert (GOLDEN_DIR / "fec.bin").read_bytes().hex(" ") == (
        "d0 01 08 00 00 31 01 00 00 00 00 0b 0a 0b 0c 0d 01 02 00 03 00 00 00 32 "
        "00 01 02 03 04 05 06 07 84 70 18 3b e8 06 b5 bd 21 bb fc e5 c5 79 7f 40 9a"
    )
    assert (GOLDEN_DIR / "audio.bin").read_bytes().hex(" ") == (
        "d0 01 0a 00 00 2d 00 01 00 00 00 0d ff ff 00 01 00 01 02 03 04 05 06 07 01 e0 00 08 "
        "00 07 70 72 69 6d 61 72 79 21 65 61 72 6c 69 65 72"
    )
    assert (GOLDEN_DIR / "transport_feedback.bin").read_bytes().hex(" ") == (
        "d0 01 09 00 00 2a 00 00 00 00 00 0c ff ff ff fe 00 00 00 1c be 99 1a 14 00 04 "
        "00 00 00 00 00 00 00 fa ff ff ff ff 00 0f 42 40"
    )


@pytest.mark.parametrize("name", ["media", "nack"])
def test_protocol_md_shows_the_golden_packets(name: str) -> None:
    data = (GOLDEN_DIR / f"{name}.bin").read_bytes()
    rows = [
        f"{data[i : i + 8].hex(' ')}  {data[i + 8 : i + 16].hex(' ')}".rstrip()
        for i in range(0, len(data), 16)
    ]
    spec = (Path(__file__).parents[2] / "app" / "net" / "PROTOCOL.md").read_text(encoding="utf-8")
    assert "\n".join(f"    {row}" for row in rows) in spec


def test_media_helpers() -> None:
    pkt = GOLDEN["media"]
    assert isinstance(pkt, MediaPacket)
    assert pkt.keyframe
    assert pkt.pack_header() + pkt.payload == bytes(pkt)
    assert not MediaPacket(1, 0, 1, 0, 1, 1, 0, b"x").keyframe
    # A memoryview payload (the packetizer's zero-copy slices) encodes the same.
    mv = MediaPacket(1, 0, 1, 0, 1, 3, 0, memoryview(b"abc"))
    assert bytes(mv) == bytes(MediaPacket(1, 0, 1, 0, 1, 3, 0, b"abc"))


def test_parse_as_wrong_type() -> None:
    with pytest.raises(ProtocolError) as err:
        MediaPacket.parse(bytes(GOLDEN["keepalive"]))
    assert str(err.value) == "expected MediaPacket, got Keepalive"


ERRORS: list[tuple[bytes, str]] = [
    (b"", "truncated: 0 bytes, shorter than the 12-byte header"),
    (b"\xd0\x01\x04", "truncated: 3 bytes, shorter than the 12-byte header"),
    (b"GET / HTTP/1.1\r\n", "bad magic 0x47, expected 0xd0"),
    (b"\xd0\x02" + bytes(10), "unsupported version 2, expected 1"),
    (header(0, 12), "unknown packet type 0"),
    (header(7, 12), "unknown packet type 7"),
    (header(14, 12), "unknown packet type 14"),
    (header(255, 12), "unknown packet type 255"),
    (
        header(PacketType.KEEPALIVE, 24, epoch=1) + bytes(12),
        "Keepalive: key epoch 1 in a datagram that was not opened",
    ),
    (header(PacketType.KEEPALIVE, 24) + bytes(5), "truncated Keepalive: 17 bytes, the length field says 24"),
    (
        header(PacketType.KEEPALIVE, 24) + bytes(14),
        "Keepalive: 2 trailing bytes after the 24 the length field says",
    ),
    (header(PacketType.KEEPALIVE, 20) + bytes(8), "Keepalive: length 20, expected 24"),
    (header(PacketType.KEEPALIVE, 24, stream=1) + bytes(12), "Keepalive: stream id must be 0, got 1"),
    (header(PacketType.KEEPALIVE_ACK, 25) + bytes(13), "KeepaliveAck: length 25, expected 24"),
    (header(PacketType.KEEPALIVE_ACK, 24, stream=3) + bytes(12), "KeepaliveAck: stream id must be 0, got 3"),
    (header(PacketType.KEYFRAME_REQUEST, 12), "KeyframeRequest: length 12, expected 16"),
    (header(PacketType.RECEIVER_REPORT, 44) + bytes(32), "ReceiverReport: length 44, expected 41"),
    (header(PacketType.MEDIA, 20) + bytes(8), "MediaPacket: 20 bytes, shorter than its 32-byte header"),
    (
        header(PacketType.MEDIA, 2000) + bytes(1000),
        "truncated MediaPacket: 1012 bytes, the length field says 2000",
    ),
    (media_bytes(0, 0, 10, b"x"), "MediaPacket: fragment count is 0"),
    (media_bytes(3, 3, 10, b"x"), "MediaPacket: fragment index 3 is not below fragment count 3"),
    (media_bytes(7, 2, 10, b"x"), "MediaPacket: fragment index 7 is not below fragment count 2"),
    (media_bytes(0, 1, 0, b"x"), "MediaPacket: frame size 0 is out of range 1..16777216"),
    (
        media_bytes(0, 1, MAX_FRAME_SIZE + 1, b"x"),
        "MediaPacket: frame size 16777217 is out of range 1..16777216",
    ),
    (media_bytes(0, 5, 3, b"x"), "MediaPacket: fragment count 5 exceeds frame size 3"),
    (
        media_bytes(0, 1, 5, b""),
        "MediaPacket: payload is 0 bytes, fragment 0 of 1 of a 5-byte frame must be 5",
    ),
    (
        media_bytes(0, 3, 50, b"x" * 16),
        "MediaPacket: payload is 16 bytes, fragment 0 of 3 of a 50-byte frame must be 17",
    ),
    (
        media_bytes(2, 3, 50, b"x" * 17),
        "MediaPacket: payload is 17 bytes, fragment 2 of 3 of a 50-byte frame must be 16",
    ),
    # NACK
    (header(PacketType.NACK, 16) + bytes(4), "Nack: 16 bytes, shorter than its 18-byte header"),
    (nack_bytes(0, ()), "Nack: 0 fragment indices, expected 1..256"),
    (nack_bytes(257, tuple(range(257))), "Nack: 257 fragment indices, expected 1..256"),
    (nack_bytes(2, (1,)), "Nack: length 20, expected 22 (count 2)"),
    (nack_bytes(1, (1, 2)), "Nack: length 22, expected 20 (count 1)"),
    (nack_bytes(2, (5, 5)), "Nack: fragment indices are not strictly increasing (5 after 5)"),
    (nack_bytes(3, (1, 9, 4)), "Nack: fragment indices are not strictly increasing (4 after 9)"),
    (nack_bytes(2, (1, 65535)), "Nack: fragment index 65535 is not below 65535"),
    (
        header(PacketType.NACK, 20, epoch=3) + nack_bytes(1, (1,))[HEADER_SIZE:],
        "Nack: key epoch 3 in a datagram that was not opened",
    ),
    # FEC
    (header(PacketType.FEC, 20) + bytes(8), "FecPacket: 20 bytes, shorter than its 32-byte header"),
    (fec_bytes(0, 1, 0, 10, b"x"), "FecPacket: data count 0 is below 1"),
    (fec_bytes(0, 0, 1, 10, b"x" * 10), "FecPacket: parity count 0 is below 1"),
    (fec_bytes(0, 57, 200, 4000, b"x" * 20), "FecPacket: 200 data + 57 parity blocks exceed 256"),
    (fec_bytes(0, 1, 300, 4000, b"x" * 14), "FecPacket: 300 data + 1 parity blocks exceed 256"),
    (fec_bytes(2, 2, 3, 50, b"x" * 17), "FecPacket: parity index 2 is not below parity count 2"),
    (fec_bytes(0, 1, 1, 0, b"x"), "FecPacket: frame size 0 is out of range 1..16777216"),
    (
        fec_bytes(0, 1, 1, MAX_FRAME_SIZE + 1, b"x"),
        "FecPacket: frame size 16777217 is out of range 1..16777216",
    ),
    (fec_bytes(0, 1, 5, 3, b"x"), "FecPacket: data count 5 exceeds frame size 3"),
    (
        fec_bytes(0, 2, 3, 50, b"x" * 16),
        "FecPacket: block is 16 bytes, expected 17 (frame size 50, data count 3)",
    ),
    (
        fec_bytes(1, 2, 3, 51, b"x" * 18),
        "FecPacket: block is 18 bytes, expected 17 (frame size 51, data count 3)",
    ),
    (fec_bytes(0, 1, 1, 5, b""), "FecPacket: block is 0 bytes, expected 5 (frame size 5, data count 1)"),
    # Transport feedback
    (
        header(PacketType.TRANSPORT_FEEDBACK, 20) + bytes(8),
        "TransportFeedback: 20 bytes, shorter than its 26-byte header",
    ),
    (feedback_bytes(1, (0,), stream=1), "TransportFeedback: stream id must be 0, got 1"),
    (feedback_bytes(0, ()), "TransportFeedback: 0 arrivals, expected 1..256"),
    (feedback_bytes(257, (0,) * 257), "TransportFeedback: 257 arrivals, expected 1..256"),
    (feedback_bytes(2, (0,)), "TransportFeedback: length 30, expected 34 (count 2)"),
    (feedback_bytes(1, (0, 1)), "TransportFeedback: length 34, expected 30 (count 1)"),
]


@pytest.mark.parametrize(("data", "message"), ERRORS)
def test_exact_error_messages(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_packet(data)
    assert str(err.value) == message


def test_oversize_media_datagram() -> None:
    payload = b"x" * (MAX_DATAGRAM - MEDIA_HEADER_SIZE + 1)
    data = media_bytes(0, 1, len(payload), payload)
    with pytest.raises(ProtocolError) as err:
        parse_packet(data)
    assert str(err.value) == "MediaPacket: 65508 bytes, longer than the 65507-byte maximum datagram"


def test_oversize_fec_datagram() -> None:
    payload = b"x" * (MAX_DATAGRAM - FEC_HEADER_SIZE + 1)
    with pytest.raises(ProtocolError) as err:
        parse_packet(fec_bytes(0, 1, 1, len(payload), payload))
    assert str(err.value) == "FecPacket: 65508 bytes, longer than the 65507-byte maximum datagram"
    largest = b"y" * (MAX_DATAGRAM - FEC_HEADER_SIZE)
    pkt = parse_packet(fec_bytes(0, 1, 1, len(largest), largest))
    assert isinstance(pkt, FecPacket) and pkt.block_size == len(largest)


def test_largest_media_datagram_parses() -> None:
    payload = b"y" * (MAX_DATAGRAM - MEDIA_HEADER_SIZE)
    pkt = parse_packet(media_bytes(0, 1, len(payload), payload))
    assert isinstance(pkt, MediaPacket) and len(bytes(pkt)) == MAX_DATAGRAM


def test_new_types_and_flags() -> None:
    assert (PacketType.NACK, PacketType.FEC, PacketType.TRANSPORT_FEEDBACK) == (6, 8, 9)
    assert set(RESERVED_PACKET_TYPES) == {7}
    # The new flag takes a bit of its own; the frame mask drops only it, reserved bits included.
    assert MediaFlags.RETRANSMIT == 0x08
    assert (
        MediaFlags.RETRANSMIT & (MediaFlags.KEYFRAME | MediaFlags.RECOVERY_POINT | MediaFlags.DISCARDABLE)
        == 0
    )
    assert FRAME_FLAGS_MASK == 0xF7 and type(FRAME_FLAGS_MASK) is int
    # A retransmission is a media packet under a new seq with the flag set; it round-trips.
    media = GOLDEN["media"]
    assert isinstance(media, MediaPacket)
    again = MediaPacket(
        0x01020399,
        media.stream_id,
        media.frame_id,
        media.fragment_index,
        media.fragment_count,
        media.frame_size,
        media.capture_us,
        media.payload,
        media.flags | MediaFlags.RETRANSMIT,
    )
    parsed = parse_packet(bytes(again))
    assert parsed == again and isinstance(parsed, MediaPacket)
    assert parsed.flags & FRAME_FLAGS_MASK == media.flags
    fec = GOLDEN["fec"]
    assert isinstance(fec, FecPacket) and fec.keyframe
    assert fec.pack_header() + fec.payload == bytes(fec)
    assert not FecPacket(1, 0, 1, 1, 1, 0, 3, 3, 0, b"abc").keyframe
    assert bytes(FecPacket(1, 0, 1, 1, 1, 0, 3, 3, 0, memoryview(b"abc"))) == bytes(
        FecPacket(1, 0, 1, 1, 1, 0, 3, 3, 0, b"abc")
    )
    feedback = TransportFeedback.parse(bytes(GOLDEN["transport_feedback"]))
    assert feedback.arrivals == (0, 250, None, 1_000_000)
    assert NOT_RECEIVED == 0xFFFFFFFF
    assert bytes(TransportFeedback(1, 0, 0, (NOT_RECEIVED - 1,))).endswith(b"\xff\xff\xff\xfe")


def audio_bytes(
    *, codec: int = 0, redundant: int = 0, samples: int = 480, lengths: tuple[int, ...] = (3,)
) -> bytes:
    body = struct.pack("!HBBQHH", 5, codec, redundant, 99, samples, lengths[0])
    body += struct.pack(f"!{len(lengths) - 1}H", *lengths[1:]) + b"x" * sum(lengths)
    return header(PacketType.AUDIO, HEADER_SIZE + len(body), stream=1) + body


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (audio_bytes(), None),
        (audio_bytes(codec=9), "AudioPacket: unknown codec 9"),
        (audio_bytes(samples=0), "AudioPacket: frame_samples is 0"),
        (audio_bytes(redundant=4, lengths=(1, 1, 1, 1, 1)), "AudioPacket: 4 redundant frames, at most 3"),
        (audio_bytes(lengths=(0,)), "AudioPacket: a frame of 0 bytes, expected 1..4096"),
        (audio_bytes(redundant=1, lengths=(2, 4097)), "AudioPacket: a frame of 4097 bytes, expected 1..4096"),
        (audio_bytes()[:-1] + b"", None),
    ],
)
def test_audio_packet_rules(data: bytes, message: str | None) -> None:
    if message is None:
        if len(data) == len(audio_bytes()):
            assert parse_packet(data) == AudioPacket(1, 5, 0, 99, 480, (b"xxx",))
        else:
            with pytest.raises(ProtocolError):
                parse_packet(data)
        return
    with pytest.raises(ProtocolError, match=f"^{message}$"):
        parse_packet(data)


def test_audio_packet_must_be_stream_one_and_say_its_length() -> None:
    data = bytearray(audio_bytes())
    data[7] = 0
    with pytest.raises(ProtocolError, match=r"^AudioPacket: stream id must be 1, got 0$"):
        parse_packet(bytes(data))
    # A frame length that disagrees with the datagram's length.
    bad = audio_bytes(redundant=1, lengths=(3, 2))[:-1]
    bad = bad[:4] + struct.pack("!H", len(bad)) + bad[6:]
    with pytest.raises(ProtocolError, match=r"^AudioPacket: length 34, expected 35 from its frame lengths$"):
        parse_packet(bad)
    with pytest.raises(ProtocolError, match=r"^AudioPacket: 5 frames, expected 1\.\.4$"):
        bytes(AudioPacket(1, 1, 0, 0, 480, (b"a",) * 5))


def test_reserved_types_are_unknown() -> None:
    for ptype in RESERVED_PACKET_TYPES:
        assert ptype not in {t.value for t in PacketType}
        with pytest.raises(ProtocolError, match=f"^unknown packet type {ptype}$"):
            parse_packet(header(ptype, 16) + bytes(4))


@pytest.mark.parametrize(
    ("pkt", "message"),
    [
        (Keepalive(seq=-1, sent_us=0), "Keepalive: cannot encode: "),
        (KeepaliveAck(seq=1, echo_us=0, hold_us=1 << 32), "KeepaliveAck: cannot encode: "),
        (KeyframeRequest(seq=1 << 32, stream_id=0, request_id=0), "KeyframeRequest: cannot encode: "),
        (ReceiverReport(1, 0, 0, 0, 0, 256, 0, 0, 0), "ReceiverReport: cannot encode: "),
        (MediaPacket(1, 256, 0, 0, 1, 1, 0, b"x"), "MediaPacket: cannot encode: "),
        (MediaPacket(1, 0, 0, 0, 1, 1, 0, b"x" * 70000), "MediaPacket: cannot encode: "),
        (Nack(1, 0, 0, ()), "Nack: 0 fragment indices, expected 1..256"),
        (Nack(1, 0, 0, tuple(range(257))), "Nack: 257 fragment indices, expected 1..256"),
        (Nack(1, 0, 0, (-1, 2)), "Nack: fragment index -1 is negative"),
        (Nack(1, 0, 0, (2, 2)), "Nack: fragment indices are not strictly increasing (2 after 2)"),
        (Nack(1, 0, 0, (70000,)), "Nack: fragment index 70000 is not below 65535"),
        (Nack(-1, 0, 0, (1,)), "Nack: cannot encode: "),
        (Nack(1, 256, 0, (1,)), "Nack: cannot encode: "),
        (FecPacket(1, 0, 1, 3, 2, 0, 50, 17, 0, b"abc"), "FecPacket: payload is 3 bytes, block size is 17"),
        (
            FecPacket(1, 0, 1, 3, 2, 0, 50, 16, 0, b"x" * 16),
            "FecPacket: block is 16 bytes, expected 17 (frame size 50, data count 3)",
        ),
        (FecPacket(1, 0, 1, 3, 2, 2, 50, 17, 0, b"x" * 17), "FecPacket: parity index 2 is not below"),
        (FecPacket(1, 0, 1, 3, 2, -1, 50, 17, 0, b"x" * 17), "FecPacket: parity index -1 is not below"),
        (FecPacket(1, 0, 1, 3, 254, 0, 50, 17, 0, b"x" * 17), "FecPacket: 3 data + 254 parity blocks"),
        (FecPacket(1, 0, 1, -3, 2, 0, 50, 17, 0, b"x" * 17), "FecPacket: data count -3 is below 1"),
        (FecPacket(1 << 32, 0, 1, 3, 2, 0, 50, 17, 0, b"x" * 17), "FecPacket: cannot encode: "),
        (FecPacket(1, 0, 1, 3, 2, 0, 50, 17, -5, b"x" * 17), "FecPacket: cannot encode: "),
        (TransportFeedback(1, 0, 0, ()), "TransportFeedback: 0 arrivals, expected 1..256"),
        (TransportFeedback(1, 0, 0, (None,) * 257), "TransportFeedback: 257 arrivals, expected 1..256"),
        (
            TransportFeedback(1, 0, 0, (1, NOT_RECEIVED)),
            "TransportFeedback: arrival offset 4294967295 µs is out of range 0..4294967294",
        ),
        (TransportFeedback(1, 0, 0, (-1,)), "TransportFeedback: arrival offset -1 µs is out of range"),
        (TransportFeedback(1, 0, 1 << 64, (1,)), "TransportFeedback: cannot encode: "),
        (TransportFeedback(1, 0, 0, (1,), flags=256), "TransportFeedback: cannot encode: "),
    ],
)
def test_encode_out_of_range_raises_protocol_error(pkt: Packet, message: str) -> None:
    with pytest.raises(ProtocolError) as err:
        bytes(pkt)
    assert str(err.value).startswith(message)


@settings(max_examples=500, deadline=None)
@given(
    count=st.integers(min_value=1, max_value=MAX_FRAGMENTS),
    extra=st.integers(min_value=0, max_value=100_000),
)
def test_fragment_sizes_tile_the_frame(count: int, extra: int) -> None:
    frame_size = min(MAX_FRAME_SIZE, count + extra)
    sizes = {fragment_size(frame_size, count, i) for i in (0, count // 2, count - 1)}
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    last = count - 1
    assert fragment_offset(frame_size, count, 0) == 0
    assert fragment_offset(frame_size, count, last) + fragment_size(frame_size, count, last) == frame_size
    for i in (0, count // 3, count // 2, last - 1):
        if 0 <= i < last:
            end = fragment_offset(frame_size, count, i) + fragment_size(frame_size, count, i)
            assert end == fragment_offset(frame_size, count, i + 1)


# --- Fuzzing -----------------------------------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, (1 << 64) - 1)


@st.composite
def media_packets(draw: st.DrawFn) -> MediaPacket:
    count = draw(st.integers(1, MAX_FRAGMENTS))
    frame_size = draw(st.integers(count, min(MAX_FRAME_SIZE, count * 40)))
    index = draw(st.integers(0, count - 1))
    payload = draw(st.binary(min_size=1, max_size=1)) * fragment_size(frame_size, count, index)
    return MediaPacket(draw(u32), draw(u8), draw(u32), index, count, frame_size, draw(u64), payload, draw(u8))


@st.composite
def fec_packets(draw: st.DrawFn) -> FecPacket:
    data_count = draw(st.integers(1, MAX_FEC_BLOCKS - 1))
    parity_count = draw(st.integers(1, MAX_FEC_BLOCKS - data_count))
    frame_size = draw(st.integers(data_count, min(MAX_FRAME_SIZE, data_count * 40)))
    block_size = fragment_size(frame_size, data_count, 0)
    payload = draw(st.binary(min_size=1, max_size=1)) * block_size
    return FecPacket(
        draw(u32),
        draw(u8),
        draw(u32),
        data_count,
        parity_count,
        draw(st.integers(0, parity_count - 1)),
        frame_size,
        block_size,
        draw(u64),
        payload,
        draw(u8),
    )


nacks = st.builds(
    Nack,
    u32,
    u8,
    u32,
    st.lists(st.integers(0, MAX_FRAGMENTS - 1), min_size=1, max_size=MAX_NACK_INDICES, unique=True).map(
        lambda xs: tuple(sorted(xs))
    ),
    u8,
)
feedbacks = st.builds(
    TransportFeedback,
    u32,
    u32,
    u64,
    st.lists(
        st.one_of(st.none(), st.integers(0, NOT_RECEIVED - 1)), min_size=1, max_size=MAX_FEEDBACK_ARRIVALS
    ).map(tuple),
    u8,
)

audio_packets = st.builds(
    AudioPacket,
    u32,
    u16,
    st.sampled_from(list(AudioCodecId)),
    u64,
    st.integers(1, 0xFFFF),
    st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=4).map(tuple),
    u8,
)

packets: st.SearchStrategy[Packet] = st.one_of(
    audio_packets,
    media_packets(),
    fec_packets(),
    nacks,
    feedbacks,
    st.builds(ReceiverReport, u32, u8, u32, u32, u32, u8, u32, u32, u32, u32, u8),
    st.builds(KeyframeRequest, u32, u8, u32, u8),
    st.builds(Keepalive, u32, u64, u32, u8),
    st.builds(KeepaliveAck, u32, u64, u32, u8),
)


@st.composite
def plausible_datagrams(draw: st.DrawFn) -> bytes:
    """Mostly-valid headers with a random type, length and body, so the fuzzer gets past the magic."""
    body = draw(st.binary(max_size=80))
    length = draw(st.one_of(st.just(HEADER_SIZE + len(body)), u16))
    ptype = draw(st.integers(0, 10))
    return (
        header(ptype, length, flags=draw(u8), stream=draw(st.sampled_from([0, 0, 1, 7])), seq=draw(u32))
        + body
    )


def assert_parses_canonically_or_raises(data: bytes) -> None:
    try:
        pkt = parse_packet(data)
    except ProtocolError:
        return
    assert bytes(pkt) == data
    assert parse_packet(bytes(pkt)) == pkt


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=100), plausible_datagrams()))
def test_any_bytes_parse_canonically_or_raise_protocol_error(data: bytes) -> None:
    assert_parses_canonically_or_raises(data)


@settings(max_examples=400, deadline=None)
@given(pkt=packets)
def test_valid_packets_round_trip(pkt: Packet) -> None:
    data = bytes(pkt)
    assert parse_packet(data) == pkt
    assert bytes(parse_packet(data)) == data


@settings(max_examples=300, deadline=None)
@given(pkt=packets, cut=st.integers(min_value=0))
def test_every_strict_prefix_raises(pkt: Packet, cut: int) -> None:
    data = bytes(pkt)
    with pytest.raises(ProtocolError):
        parse_packet(data[: cut % len(data)])


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_every_prefix_of_golden_raises(name: str) -> None:
    data = bytes(GOLDEN[name])
    for n in range(len(data)):
        with pytest.raises(ProtocolError):
            parse_packet(data[:n])


@settings(max_examples=500, deadline=None)
@given(pkt=packets, flips=st.lists(st.integers(min_value=0), min_size=1, max_size=4))
def test_bit_flips_never_raise_anything_else(pkt: Packet, flips: list[int]) -> None:
    data = bytearray(bytes(pkt))
    for f in flips:
        bit = f % (len(data) * 8)
        data[bit // 8] ^= 1 << (bit % 8)
    assert_parses_canonically_or_raises(bytes(data))


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_every_single_bit_flip_of_golden(name: str) -> None:
    data = bytes(GOLDEN[name])
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert_parses_canonically_or_raises(bytes(flipped))


def test_handshake_packets_are_strict() -> None:
    init = bytes(GOLDEN["handshake_init"])
    with pytest.raises(ProtocolError, match=r"^HandshakeInit: length 135, expected 136$"):
        parse_packet(init[:4] + struct.pack("!H", 135) + init[6:-1])
    bad = bytearray(init)
    bad[7] = 1
    with pytest.raises(ProtocolError, match=r"^HandshakeInit: stream id must be 0, got 1$"):
        parse_packet(bytes(bad))
    with pytest.raises(ProtocolError, match=r"^HandshakeInit: message of 3 bytes, expected 104$"):
        bytes(HandshakeInit(1, 1, b"abc", b"m" * 16))
    with pytest.raises(ProtocolError, match=r"^HandshakeResponse: mac1 of 1 bytes, expected 16$"):
        bytes(HandshakeResponse(1, 1, 2, b"m" * 49, b"m"))
