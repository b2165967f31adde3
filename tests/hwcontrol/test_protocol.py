"""MCU protocol framing and messages: COBS and CRC vectors, golden frames, exact errors, and fuzzing.

Golden files live in tests/hwcontrol/golden/ (one COBS-encoded frame with its 0x00 delimiter per message
type; the firmware's tests decode the same files). After a deliberate change of the wire format,
regenerate them with ``DOORWAY_REGEN_GOLDEN=1 .venv/bin/pytest tests/hwcontrol/test_protocol.py`` and
update hwcontrol/PROTOCOL.md.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import re
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwcontrol.protocol import (
    ALL_CHANNELS,
    MAX_ENCODED,
    MAX_FRAME,
    MAX_LIGHT_CHANNELS,
    MAX_PAYLOAD,
    PROTOCOL_MAJOR,
    RELIABLE_TYPES,
    Ack,
    BootReason,
    Capability,
    ChannelState,
    EnterBootloader,
    ErrorCode,
    ErrorReport,
    Event,
    EventKind,
    ForeignHello,
    Frame,
    FrameDecoder,
    FrameError,
    FrameErrorReason,
    FrameFlags,
    Heartbeat,
    Hello,
    HelloReq,
    LightState,
    Message,
    MessageError,
    MessageType,
    Scene,
    Sensors,
    SensorValid,
    SessionChange,
    SessionWatch,
    SetFailsafe,
    SetLight,
    SetScene,
    bootloader_mac,
    check_version,
    cobs_decode,
    cobs_encode,
    crc16_ccitt,
    decode_message,
)

GOLDEN_DIR = Path(__file__).parent / "golden"
REGENERATE = os.environ.get("DOORWAY_REGEN_GOLDEN") == "1"
SPEC = Path(__file__).parents[2] / "hwcontrol" / "PROTOCOL.md"

BOOT_KEY = b"doorway golden bootloader key"
SESSION_ID = 0xC0FFEE42
RELIABLE = FrameFlags.RELIABLE

GOLDEN_HELLO = Hello(
    minor=0,
    fw_major=1,
    fw_minor=2,
    fw_patch=3,
    build=0x0BADCAFE,
    hw_rev=2,
    unique_id=bytes.fromhex("e6614103e7452d2f"),
    capabilities=Capability.PWM_LIGHTS
    | Capability.RGB
    | Capability.LIGHT_SENSOR
    | Capability.TEMPERATURE
    | Capability.HUMIDITY
    | Capability.PRIVACY_BUTTON
    | Capability.BOOTLOADER,
    boot_reason=BootReason.POWER_ON,
    session_id=SESSION_ID,
    channels=2,
)

# name → (message, flags, seq, ack): the frame each golden file holds.
GOLDEN: dict[str, tuple[Message, int, int, int]] = {
    "hello_req": (HelloReq(nonce=0x12345678), 0, 0, 0xFF),
    "hello": (GOLDEN_HELLO, 0, 0, 0xFF),
    "ack": (Ack(), 0, 0, 7),
    "heartbeat": (Heartbeat(uptime_ms=123_456_789), 0, 0, 3),
    "error": (ErrorReport(ErrorCode.VALUE_OUT_OF_RANGE, MessageType.SET_SCENE, 6), RELIABLE, 1, 6),
    # PROTOCOL.md §7.
    "set_light": (SetLight(channel=0, brightness=500, cct_k=2700, fade_ms=250), RELIABLE, 5, 2),
    "set_scene": (SetScene(Scene.EVENING, fade_ms=2000), RELIABLE, 6, 2),
    "set_failsafe": (SetFailsafe(timeout_ms=3000, scene=Scene.SAFE), RELIABLE, 7, 2),
    "light_state": (
        LightState((ChannelState(500, 2700), ChannelState(1000, 0, 255, 128, 0))),
        RELIABLE,
        2,
        7,
    ),
    "sensors": (
        Sensors(
            uptime_ms=3_600_000,
            valid=SensorValid.LUX | SensorValid.TEMPERATURE | SensorValid.HUMIDITY | SensorValid.PRESENCE,
            lux_centi=12345,
            temp_centi=-525,
            humidity_centi=4567,
            presence=1,
        ),
        0,
        0,
        7,
    ),
    "event": (Event(EventKind.PRIVACY_SWITCH, 1, 3_600_250), RELIABLE, 3, 7),
    "enter_bootloader": (EnterBootloader.signed(BOOT_KEY, SESSION_ID, 0x01020304), RELIABLE, 8, 3),
}


def golden_frame(name: str) -> Frame:
    message, flags, seq, ack = GOLDEN[name]
    return Frame(message.TYPE, message.encode(), flags, seq, ack)


def golden_bytes(name: str) -> bytes:
    return (GOLDEN_DIR / f"{name}.bin").read_bytes()


def crc_reference(data: bytes) -> int:
    """CRC-16/CCITT-FALSE bit by bit, straight from its definition."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


# --- CRC and COBS ------------------------------------------------------------------------------------------


def test_crc_check_value_and_reference() -> None:
    assert crc16_ccitt(b"123456789") == 0x29B1
    assert crc16_ccitt(b"") == 0xFFFF
    rng = random.Random(7)
    for n in (1, 2, 9, 100, 256):
        data = rng.randbytes(n)
        assert crc16_ccitt(data) == crc_reference(data)
    # Incremental use gives the same result.
    assert crc16_ccitt(b"6789", crc16_ccitt(b"12345")) == 0x29B1


RUN_254 = bytes(range(1, 255))
COBS_VECTORS = [
    # The examples of the Wikipedia article on COBS.
    (b"\x00", "01 01"),
    (b"\x00\x00", "01 01 01"),
    (b"\x00\x11\x00", "01 02 11 01"),
    (b"\x11\x22\x00\x33", "03 11 22 02 33"),
    (b"\x11\x22\x33\x44", "05 11 22 33 44"),
    (b"\x11\x00\x00\x00", "02 11 01 01 01"),
    (RUN_254, "ff " + RUN_254.hex(" ")),
    (b"\x00" + RUN_254, "01 ff " + RUN_254.hex(" ")),
    (RUN_254 + b"\xff", "ff " + RUN_254.hex(" ") + " 02 ff"),
    (RUN_254[1:] + b"\xff\x00", "ff " + (RUN_254[1:] + b"\xff").hex(" ") + " 01 01"),
    (RUN_254[2:] + b"\xff\x00\x01", "fe " + (RUN_254[2:] + b"\xff").hex(" ") + " 02 01"),
    # And the edges.
    (b"", "01"),
    (b"\x01", "02 01"),
    (b"\xaa" * 253, "fe " + "aa " * 252 + "aa"),
    (b"\xaa" * 508, "ff " + "aa " * 254 + "ff " + "aa " * 253 + "aa"),
    (b"\xaa" * 509, "ff " + "aa " * 254 + "ff " + "aa " * 254 + "02 aa"),
    (b"\xaa" * 254 + b"\x00", "ff " + "aa " * 254 + "01 01"),
]


@pytest.mark.parametrize(("data", "encoded"), COBS_VECTORS)
def test_cobs_vectors(data: bytes, encoded: str) -> None:
    assert cobs_encode(data).hex(" ") == encoded
    assert cobs_decode(bytes.fromhex(encoded)) == data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x03\x11\x00\x22", "COBS: zero byte at offset 2"),
        (b"\x05\x11\x22", "COBS: group at offset 0 (code 5) runs past the end of 3 bytes"),
        (b"\x02\x11\xff\x22", "COBS: group at offset 2 (code 255) runs past the end of 4 bytes"),
    ],
)
def test_cobs_decode_errors(data: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=f"^{re.escape(message)}$") as err:
        cobs_decode(data)
    assert err.value.reason is FrameErrorReason.COBS


@settings(max_examples=200, deadline=None)
@given(
    data=st.one_of(st.binary(max_size=600), st.lists(st.sampled_from([0, 1, 0xFF]), max_size=600).map(bytes))
)
def test_cobs_round_trip(data: bytes) -> None:
    encoded = cobs_encode(data)
    assert 0 not in encoded
    assert len(encoded) <= len(data) + 1 + len(data) // 254
    assert cobs_decode(encoded) == data


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300))
def test_cobs_decode_raises_only_frame_error(data: bytes) -> None:
    try:
        cobs_decode(data)
    except FrameError as exc:
        assert exc.reason is FrameErrorReason.COBS


def test_max_encoded_is_the_worst_case() -> None:
    assert len(cobs_encode(b"\x01" * MAX_FRAME)) == MAX_ENCODED == 258


# --- Golden frames -----------------------------------------------------------------------------------------


def test_golden_covers_every_message_type() -> None:
    assert {message.TYPE for message, _, _, _ in GOLDEN.values()} == set(MessageType)
    for message, flags, _, _ in GOLDEN.values():
        assert bool(flags & RELIABLE) == (message.TYPE in RELIABLE_TYPES)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden(name: str) -> None:
    frame = golden_frame(name)
    wire = frame.to_wire()
    path = GOLDEN_DIR / f"{name}.bin"
    if REGENERATE:
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_bytes(wire)
    golden = path.read_bytes()
    assert wire == golden
    assert golden.count(0) == 1 and golden[-1] == 0
    parsed = Frame.from_wire(golden)
    assert parsed == frame
    assert parsed.to_wire() == golden
    message = decode_message(parsed)
    assert message == GOLDEN[name][0]
    assert type(message) is type(GOLDEN[name][0])
    assert message.encode() == frame.payload
    assert FrameDecoder().feed(golden) == [frame]


def test_golden_set_light_is_the_protocol_md_example() -> None:
    decoded = cobs_decode(golden_bytes("set_light")[:-1])
    assert decoded.hex(" ") == "01 01 05 02 10 0a 00 00 f4 01 8c 0a 00 00 00 fa 00 9f fb"
    assert len(decoded) == 19
    assert crc16_ccitt(decoded[:-2]) == 0xFB9F
    rows = [
        f"    {decoded[i : i + 8].hex(' ')}  {decoded[i + 8 : i + 16].hex(' ')}".rstrip() for i in (0, 16)
    ]
    assert "\n".join(rows) in SPEC.read_text(encoding="utf-8")


def test_golden_layouts() -> None:
    """A few payloads spelled out, so a layout change cannot pass by regenerating the files."""
    payloads = {name: Frame.from_wire(golden_bytes(name)).payload.hex(" ") for name in GOLDEN}
    assert payloads["hello_req"] == "01 00 78 56 34 12"
    assert payloads["hello"] == (
        "01 00 01 02 03 fe ca ad 0b 02 e6 61 41 03 e7 45 2d 2f 5f 01 00 42 ee ff c0 02"
    )
    assert payloads["sensors"] == "80 ee 36 00 0f 39 30 00 00 f3 fd d7 11 01"
    assert payloads["light_state"] == "02 f4 01 8c 0a 00 00 00 e8 03 00 00 ff 80 00"
    assert payloads["set_failsafe"] == "b8 0b 01"
    assert payloads["event"] == "02 01 7a ef 36 00"
    assert payloads["ack"] == ""


def test_golden_bootloader_mac() -> None:
    frame = Frame.from_wire(golden_bytes("enter_bootloader"))
    message = decode_message(frame)
    assert isinstance(message, EnterBootloader)
    # Spelled out: the label, then session_id and nonce as little-endian u32s.
    data = b"doorway-boot" + bytes.fromhex("42 ee ff c0") + bytes.fromhex("04 03 02 01")
    assert message.mac == hmac.new(BOOT_KEY, data, hashlib.sha256).digest()[:16]
    assert frame.payload == bytes.fromhex("04 03 02 01") + message.mac
    assert message.verify(BOOT_KEY, SESSION_ID)
    assert not message.verify(BOOT_KEY, SESSION_ID + 1)
    assert not message.verify(b"another key", SESSION_ID)
    assert bootloader_mac(BOOT_KEY, SESSION_ID, 0x01020305) != message.mac


# --- Frames: exact errors, prefixes, resynchronisation -----------------------------------------------------


def corrupt(data: bytes, index: int, value: int, *, fix_crc: bool = True) -> bytes:
    out = bytearray(data)
    out[index] = value
    if fix_crc:
        out[-2:] = struct.pack("<H", crc16_ccitt(bytes(out[:-2])))
    return bytes(out)


SET_LIGHT_DECODED = bytes.fromhex("01 01 05 02 10 0a 00 00 f4 01 8c 0a 00 00 00 fa 00 9f fb")


@pytest.mark.parametrize(
    ("data", "reason", "message"),
    [
        (b"\x01" * 8, FrameErrorReason.SIZE, "frame: 8 bytes, expected 9..256"),
        (bytes(257), FrameErrorReason.SIZE, "frame: 257 bytes, expected 9..256"),
        (
            corrupt(SET_LIGHT_DECODED, 8, 0xF5, fix_crc=False),
            FrameErrorReason.CRC,
            "frame: CRC 0xfb9f, computed 0x10bc",
        ),
        (corrupt(SET_LIGHT_DECODED, 0, 2), FrameErrorReason.VERSION, "frame: protocol version 2, expected 1"),
        (
            corrupt(SET_LIGHT_DECODED, 5, 9),
            FrameErrorReason.LENGTH,
            "frame: length field 9, but 10 payload bytes",
        ),
        (
            corrupt(SET_LIGHT_DECODED, 6, 1),
            FrameErrorReason.LENGTH,
            "frame: length field 266, but 10 payload bytes",
        ),
    ],
)
def test_bad_frames_exact_errors(data: bytes, reason: FrameErrorReason, message: str) -> None:
    with pytest.raises(FrameError, match=f"^{re.escape(message)}$") as err:
        Frame.decode(data)
    assert err.value.reason is reason
    # The streaming decoder counts it under the same reason, and says why.
    decoder = FrameDecoder()
    assert decoder.feed(cobs_encode(data) + b"\x00") == []
    assert dict(decoder.invalid) == {reason: 1}
    assert str(decoder.last_error) == message


def test_from_wire_needs_the_delimiter() -> None:
    with pytest.raises(FrameError, match=r"^wire: frame does not end with the 0x00 delimiter$"):
        Frame.from_wire(golden_bytes("ack")[:-1])
    with pytest.raises(FrameError, match=r"^COBS: zero byte at offset 1$"):
        Frame.from_wire(b"\x01\x00\x00")


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (Frame(256), "frame: type 256 is out of range 0..255"),
        (Frame(3, seq=-1), "frame: seq -1 is out of range 0..255"),
        (Frame(3, ack=300), "frame: ack 300 is out of range 0..255"),
        (Frame(3, flags=0x100), "frame: flags 256 is out of range 0..255"),
        (Frame(3, b"x" * 248), "frame: payload of 248 bytes, expected at most 247"),
    ],
)
def test_frame_encode_errors(frame: Frame, message: str) -> None:
    with pytest.raises(FrameError, match=f"^{re.escape(message)}$") as err:
        frame.to_wire()
    assert err.value.reason is FrameErrorReason.ENCODE


def test_hello_frames_of_any_version_pass_the_frame_layer() -> None:
    foreign = Frame(MessageType.HELLO, bytes([2, 1, 3, 0, 1]) + b"future", version=2)
    assert Frame.from_wire(foreign.to_wire()) == foreign
    assert decode_message(foreign) == ForeignHello(2, 1, 3, 0, 1, b"future")
    request = Frame(MessageType.HELLO_REQ, HelloReq(7, major=2).encode(), version=2)
    assert decode_message(Frame.from_wire(request.to_wire())) == HelloReq(7, major=2)
    with pytest.raises(FrameError, match=r"^frame: protocol version 2, expected 1$"):
        Frame.from_wire(Frame(MessageType.ACK, version=2).to_wire())


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_every_strict_prefix_of_golden_needs_more(name: str) -> None:
    data = golden_bytes(name)
    for n in range(len(data)):
        decoder = FrameDecoder()
        assert decoder.feed(data[:n]) == []
        assert decoder.invalid_total == 0 and decoder.overlong == 0
        assert decoder.buffered == n
        # ... and the rest completes it.
        assert decoder.feed(data[n:]) == [golden_frame(name)]
    # Byte by byte, all golden frames back to back.
    decoder = FrameDecoder()
    out: list[Frame] = []
    for byte in b"".join(golden_bytes(n) for n in sorted(GOLDEN)):
        out += decoder.feed(bytes([byte]))
    assert out == [golden_frame(n) for n in sorted(GOLDEN)]
    assert decoder.frames == len(GOLDEN) and decoder.invalid_total == 0


def test_empty_frames_are_ignored_and_flush() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"\x00\x00\x00") == []
    assert decoder.invalid_total == 0 and decoder.overlong == 0 and decoder.frames == 0
    # A lone 0x00 flushes half a frame of garbage; the frame after it decodes.
    assert decoder.feed(b"\x05\x01\x02" + b"\x00" + golden_bytes("ack")) == [golden_frame("ack")]
    assert dict(decoder.invalid) == {FrameErrorReason.COBS: 1}


def test_overlong_frames_are_dropped_up_to_the_next_delimiter() -> None:
    decoder = FrameDecoder()
    # In one chunk, and across many: memory never exceeds one encoded frame.
    assert decoder.feed(b"\x01" * (MAX_ENCODED + 1) + b"\x00" + golden_bytes("ack")) == [golden_frame("ack")]
    for _ in range(100):
        assert decoder.feed(b"\x07" * 50) == []
        assert decoder.buffered <= MAX_ENCODED
    assert decoder.feed(b"\x07\x00" + golden_bytes("event")) == [golden_frame("event")]
    assert decoder.overlong == 2 and decoder.invalid_total == 0 and decoder.frames == 2
    # Exactly MAX_ENCODED bytes is not overlong: it is decoded (and here invalid).
    decoder = FrameDecoder()
    assert decoder.feed(b"\x01" * MAX_ENCODED + b"\x00") == []
    assert decoder.overlong == 0 and dict(decoder.invalid) == {FrameErrorReason.SIZE: 1}


def test_largest_frame_round_trips() -> None:
    frame = Frame(0xEE, bytes(range(MAX_PAYLOAD)), RELIABLE, 255, 254)
    wire = frame.to_wire()
    assert len(wire) <= MAX_ENCODED + 1
    assert FrameDecoder().feed(wire) == [frame]


def test_a_megabyte_of_random_bytes() -> None:
    rng = random.Random(20240611)
    data = rng.randbytes(1 << 20)
    decoder = FrameDecoder()
    frames: list[Frame] = []
    pos = 0
    while pos < len(data):
        size = rng.randint(1, 4096)
        frames += decoder.feed(data[pos : pos + size])
        pos += size
        assert decoder.buffered <= MAX_ENCODED
    segments = [s for s in data.split(b"\x00")[:-1] if s]
    assert decoder.bytes_received == len(data)
    assert decoder.overlong == sum(len(s) > MAX_ENCODED for s in segments) > 0
    assert decoder.frames == len(frames)
    assert decoder.frames + decoder.invalid_total == sum(len(s) <= MAX_ENCODED for s in segments)
    assert decoder.invalid[FrameErrorReason.COBS] > 0 and decoder.invalid[FrameErrorReason.SIZE] > 0
    # Still in step: after the garbage (which ends mid-frame), a flush and a frame decode.
    assert decoder.feed(b"\x00" + golden_bytes("set_light")) == [golden_frame("set_light")]
    # Without the flush the first frame merges with the garbage; the next one is clean.
    decoder.feed(rng.randbytes(100).replace(b"\x00", b"\x01"))
    assert decoder.feed(golden_bytes("hello") + golden_bytes("event")) == [golden_frame("event")]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=st.lists(st.binary(max_size=300), max_size=8))
def test_decoder_never_raises_and_counts_every_frame(chunks: list[bytes]) -> None:
    decoder = FrameDecoder()
    frames = []
    for chunk in chunks:
        frames += decoder.feed(chunk)
        assert decoder.buffered <= MAX_ENCODED
    data = b"".join(chunks)
    segments = [s for s in data.split(b"\x00")[:-1] if s]
    assert decoder.frames == len(frames)
    assert decoder.frames + decoder.invalid_total + decoder.overlong == len(segments)
    # A flush resynchronises whatever came before.
    assert decoder.feed(b"\x00" + golden_bytes("sensors"))[-1:] == [golden_frame("sensors")]


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=270))
def test_frame_decode_raises_only_frame_error(data: bytes) -> None:
    try:
        frame = Frame.decode(data)
    except FrameError:
        return
    assert frame.encode() == data


frames = st.builds(
    Frame,
    st.integers(0, 255),
    st.binary(max_size=MAX_PAYLOAD),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 255),
)


@settings(max_examples=200, deadline=None)
@given(frame=frames, cut=st.integers(min_value=0))
def test_frames_round_trip_and_prefixes_need_more(frame: Frame, cut: int) -> None:
    wire = frame.to_wire()
    assert Frame.from_wire(wire) == frame
    decoder = FrameDecoder()
    assert decoder.feed(wire[: cut % len(wire)]) == []
    assert decoder.invalid_total == 0 and decoder.overlong == 0
    assert decoder.feed(wire[cut % len(wire) :]) == [frame]


@settings(max_examples=200, deadline=None)
@given(frame=frames, bit=st.integers(min_value=0))
def test_single_bit_flips_are_caught(frame: Frame, bit: int) -> None:
    wire = bytearray(frame.to_wire())
    bit %= len(wire) * 8
    wire[bit // 8] ^= 1 << (bit % 8)
    out = FrameDecoder().feed(bytes(wire) + b"\x00")
    if bit // 8 == len(wire) - 1:
        # The delimiter itself: the frame is intact and the flush ends it (or it is merged away).
        assert out in ([], [frame])
    else:
        # A flip may split the frame in two or merge it with the flush; no piece may pass.
        assert out == []


# --- Messages ----------------------------------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def events(draw: st.DrawFn) -> Event:
    kind = draw(st.sampled_from(EventKind))
    hi = {EventKind.PRIVACY_SWITCH: 1, EventKind.PRESENCE: 1, EventKind.FAILSAFE_ENTERED: 3}.get(kind, 0)
    return Event(kind, draw(st.integers(0, hi)), draw(u32))


messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(HelloReq, u32, u8, u8),
    st.builds(
        Hello,
        u8,
        u8,
        u8,
        u8,
        u32,
        u8,
        st.binary(min_size=8, max_size=8),
        u16.map(Capability),
        u8,
        u32,
        u8,
    ),
    st.builds(ForeignHello, u8.filter(lambda m: m != PROTOCOL_MAJOR), u8, u8, u8, u8, st.binary(max_size=40)),
    st.just(Ack()),
    st.builds(Heartbeat, u32),
    st.builds(ErrorReport, st.sampled_from(ErrorCode), u8, u8),
    st.builds(SetLight, u8, st.integers(0, 1000), u16, u8, u8, u8, u16),
    st.builds(SetScene, st.sampled_from(Scene), u16),
    st.builds(SetFailsafe, st.integers(500, 60000), st.sampled_from(Scene)),
    st.builds(
        LightState,
        st.lists(
            st.builds(ChannelState, st.integers(0, 1000), u16, u8, u8, u8), max_size=MAX_LIGHT_CHANNELS
        ).map(tuple),
    ),
    st.builds(
        Sensors,
        u32,
        u8.map(SensorValid),
        u32,
        st.integers(-0x8000, 0x7FFF),
        st.integers(0, 10000),
        st.integers(0, 1),
    ),
    events(),
    st.builds(EnterBootloader, u32, st.binary(min_size=16, max_size=16)),
)


@settings(max_examples=200, deadline=None)
@given(message=messages)
def test_messages_round_trip(message: Message) -> None:
    frame = Frame(message.TYPE, message.encode())
    assert decode_message(Frame.from_wire(frame.to_wire())) == message
    assert len(frame.payload) <= MAX_PAYLOAD


DECODERS: dict[str, Callable[[bytes], Message]] = {
    cls.__name__: cls.decode
    for cls in (
        HelloReq,
        Hello,
        ForeignHello,
        Ack,
        Heartbeat,
        ErrorReport,
        SetLight,
        SetScene,
        SetFailsafe,
        LightState,
        Sensors,
        Event,
        EnterBootloader,
    )
}


@pytest.mark.parametrize("name", sorted(DECODERS))
@settings(max_examples=100, deadline=None)
@given(
    payload=st.one_of(
        st.binary(max_size=40), st.integers(0, 40).flatmap(lambda n: st.binary(min_size=n, max_size=n))
    )
)
def test_random_payloads_decode_canonically_or_raise_message_error(name: str, payload: bytes) -> None:
    try:
        message = DECODERS[name](payload)
    except MessageError as exc:
        assert isinstance(exc.code, ErrorCode)
        return
    assert message.encode() == payload


@settings(max_examples=200, deadline=None)
@given(mtype=u8, payload=st.binary(max_size=40))
def test_decode_message_raises_only_message_error(mtype: int, payload: bytes) -> None:
    try:
        message = decode_message(Frame(mtype, payload))
    except MessageError as exc:
        if mtype not in set(MessageType):
            assert exc.code is ErrorCode.UNKNOWN_TYPE
        return
    assert mtype == message.TYPE and message.encode() == payload


@pytest.mark.parametrize(
    ("build", "message", "code"),
    [
        (lambda: SetLight(0, 1001), "SET_LIGHT: brightness 1001 is out of range 0..1000", 3),
        (lambda: SetLight(256, 0), "SET_LIGHT: channel 256 is out of range 0..255", 3),
        (lambda: SetLight(0, 0, fade_ms=70000), "SET_LIGHT: fade_ms 70000 is out of range 0..65535", 3),
        (lambda: SetLight.decode(bytes(9)), "SET_LIGHT: payload is 9 bytes, expected 10", 2),
        (
            lambda: SetLight.decode(struct.pack("<BHHBBBH", 0, 1001, 0, 0, 0, 0, 0)),
            "SET_LIGHT: brightness 1001 is out of range 0..1000",
            3,
        ),
        (lambda: SetScene.decode(b"\x04\x00\x00"), "SET_SCENE: scene 4 is not a known Scene", 3),
        (
            lambda: SetFailsafe.decode(struct.pack("<HB", 499, 1)),
            "SET_FAILSAFE: timeout_ms 499 is out of range 500..60000",
            3,
        ),
        (lambda: SetFailsafe(60001), "SET_FAILSAFE: timeout_ms 60001 is out of range 500..60000", 3),
        (
            lambda: SetFailsafe.decode(struct.pack("<HB", 3000, 9)),
            "SET_FAILSAFE: scene 9 is not a known Scene",
            3,
        ),
        (lambda: Event.decode(bytes([6, 0, 0, 0, 0, 0])), "EVENT: kind 6 is not a known EventKind", 3),
        (
            lambda: Event.decode(bytes([2, 2, 0, 0, 0, 0])),
            "EVENT PRIVACY_SWITCH: value 2 is out of range 0..1",
            3,
        ),
        (
            lambda: Event(EventKind.PRIVACY_BUTTON, 1, 0),
            "EVENT PRIVACY_BUTTON: value 1 is out of range 0..0",
            3,
        ),
        (lambda: ErrorReport.decode(bytes([7, 16, 0])), "ERROR: code 7 is not a known ErrorCode", 3),
        (lambda: LightState.decode(b""), "LIGHT_STATE: payload is 0 bytes, expected at least 1", 2),
        (
            lambda: LightState.decode(bytes([2]) + bytes(7)),
            "LIGHT_STATE: payload is 8 bytes, expected 15 for 2 channels",
            2,
        ),
        (
            lambda: LightState((ChannelState(0),) * (MAX_LIGHT_CHANNELS + 1)),
            "LIGHT_STATE: channels 36 is out of range 0..35",
            3,
        ),
        (
            lambda: Sensors(0, SensorValid(0), humidity_centi=10001),
            "SENSORS: humidity_centi 10001 is out of range 0..10000",
            3,
        ),
        (lambda: Sensors(0, SensorValid(0), presence=2), "SENSORS: presence 2 is out of range 0..1", 3),
        (lambda: Ack.decode(b"\x00"), "ACK: payload is 1 bytes, expected 0", 2),
        (lambda: Heartbeat(-1), "HEARTBEAT: uptime_ms -1 is out of range 0..4294967295", 3),
        (lambda: Hello.decode(bytes(26)), "HELLO: major 0 is out of range 1..1", 3),
        (lambda: Hello.decode(bytes([1]) + bytes(24)), "HELLO: payload is 25 bytes, expected 26", 2),
        (lambda: ForeignHello.decode(b"\x02\x00"), "HELLO: payload is 2 bytes, expected at least 5", 2),
        (lambda: ForeignHello(1, 0, 0, 0, 0), "HELLO: protocol major 1 is this host's own, not foreign", 3),
        (lambda: EnterBootloader(0, b"short"), "ENTER_BOOTLOADER: mac of 5 bytes, expected 16", 3),
        (lambda: decode_message(Frame(99)), "unknown message type 99", 1),
    ],
)
def test_bad_messages_exact_errors(build: Callable[[], object], message: str, code: int) -> None:
    with pytest.raises(MessageError, match=f"^{re.escape(message)}$") as err:
        build()
    assert err.value.code == code


def test_set_light_all_channels_and_hello_fields() -> None:
    assert SetLight.decode(SetLight(ALL_CHANNELS, 0).encode()).channel == 0xFF
    assert GOLDEN_HELLO.firmware_version == "1.2.3"
    assert len(GOLDEN_HELLO.encode()) == 26
    # Capability bits and boot reasons a newer minor may add are kept, not refused.
    newer = Hello.decode(GOLDEN_HELLO.encode()[:18] + b"\xff\xff\x09" + GOLDEN_HELLO.encode()[21:])
    assert newer.capabilities == 0xFFFF and newer.boot_reason == 9
    assert newer.encode() == GOLDEN_HELLO.encode()[:18] + b"\xff\xff\x09" + GOLDEN_HELLO.encode()[21:]


# --- Hello helpers -----------------------------------------------------------------------------------------


def test_check_version() -> None:
    assert check_version(GOLDEN_HELLO) is None
    newer_minor = Hello.decode(b"\x01\x07" + GOLDEN_HELLO.encode()[2:])
    assert newer_minor.minor == 7 and check_version(newer_minor) is None
    foreign = decode_message(Frame(MessageType.HELLO, bytes([2, 1, 3, 0, 1]) + bytes(30), version=2))
    assert isinstance(foreign, ForeignHello)
    assert check_version(foreign) == (
        "firmware update required: this host speaks protocol 1.x, "
        "the MCU speaks protocol 2.1 (firmware 3.0.1)"
    )
    # An old firmware that still writes version 1 frames but a major 0 HELLO.
    old = decode_message(Frame(MessageType.HELLO, bytes([0, 9, 0, 4, 2])))
    assert isinstance(old, ForeignHello)
    assert check_version(old) == (
        "firmware update required: this host speaks protocol 1.x, "
        "the MCU speaks protocol 0.9 (firmware 0.4.2)"
    )


def test_session_watch() -> None:
    watch = SessionWatch()
    assert watch.observe(GOLDEN_HELLO) is SessionChange.FIRST
    assert watch.observe(GOLDEN_HELLO) is SessionChange.SAME
    rebooted = Hello.decode(GOLDEN_HELLO.encode()[:21] + struct.pack("<IB", 0x12345678, 2))
    assert rebooted.session_id == 0x12345678
    assert watch.observe(rebooted) is SessionChange.REBOOTED
    assert watch.session_id == 0x12345678 and watch.reboots == 1
    assert watch.observe(rebooted) is SessionChange.SAME


def test_hello_req_defaults() -> None:
    request = HelloReq(0xDEADBEEF)
    assert (request.major, request.minor) == (1, 0)
    assert request.encode() == bytes([1, 0]) + struct.pack("<I", 0xDEADBEEF)
