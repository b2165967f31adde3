"""The firmware's protocol core under CPython: framing, golden frames, hello, commands and errors, the
reliable link under loss and duplication, failsafe timing, sensors and inputs, the bootloader MAC, fuzzing."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import random
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from hwcontrol.firmware import protocol_core as pc

GOLDEN = Path(__file__).parent.parent / "golden"
KEY = bytes(range(32))
ALL_CAPS = (
    pc.CAP_PWM
    | pc.CAP_RGB
    | pc.CAP_LIGHT_SENSOR
    | pc.CAP_TEMPERATURE
    | pc.CAP_PRESENCE
    | pc.CAP_BUTTON
    | pc.CAP_SWITCH
)
SPEC_SET_LIGHT = bytes.fromhex("01 01 05 02 10 0a 00 00 f4 01 8c 0a 00 00 00 fa 00 9f fb")


class SimHW(pc.Hardware):
    """A board whose inputs the test sets and whose outputs it records."""

    def __init__(self, channels: int = 2, caps: int = ALL_CAPS, key: bytes | None = KEY) -> None:
        self.channels = channels
        self.capabilities = caps
        self.hw_rev = 3
        self.key = key
        self.calls: list[tuple[int, int, int, int, int, int]] = []
        self.lux: int | None = 30000
        self.temp: int | None = 2150
        self.moving = False
        self.pressed = False
        self.switched = False
        self.bootloader_calls = 0

    def set_channel(self, index: int, brightness: int, cct_k: int, r: int, g: int, b: int) -> None:
        self.calls.append((index, brightness, cct_k, r, g, b))

    def read_lux_centi(self) -> int | None:
        return self.lux

    def read_temp_centi(self) -> int | None:
        return self.temp

    def motion(self) -> bool:
        return self.moving

    def button(self) -> bool:
        return self.pressed

    def switch(self) -> bool:
        return self.switched

    def unique_id(self) -> bytes:
        return b"UNIQUEID"

    def boot_reason(self) -> int:
        return pc.BOOT_WATCHDOG

    def random32(self) -> int:
        return 0xCAFEF00D

    def bootloader_key(self) -> bytes | None:
        return self.key

    def enter_bootloader(self) -> None:
        self.bootloader_calls += 1


@dataclass
class Msg:
    version: int
    flags: int
    seq: int
    ack: int
    type: int
    payload: bytes

    @property
    def reliable(self) -> bool:
        return bool(self.flags & pc.FLAG_RELIABLE)


def parse(frame: bytes) -> Msg:
    return Msg(frame[0], frame[1], frame[2], frame[3], frame[4], frame[7:-2])


class Host:
    """The test's side of the wire: sends frames to a core at explicit times, decodes what it sends back."""

    def __init__(self, hw: SimHW | None = None, start: int = 0, **core_args: int) -> None:
        self.hw = hw or SimHW()
        self.now = start
        self.core = pc.Core(self.hw, start, **core_args)
        self.got: list[Msg] = []
        self.decoder = pc.FrameDecoder(lambda f, n: self.got.append(parse(bytes(f[:n]))))
        self.applied: list[tuple[int, bytes]] = []
        self.expected = 0  # of the core's reliable frames, when run(host=True) plays the host
        self.beat = start
        real_apply = self.core._apply

        def recording_apply(msg_type: int, frame: bytearray, plen: int, seq: int) -> None:
            self.applied.append((msg_type, bytes(frame[7 : 7 + plen])))
            real_apply(msg_type, frame, plen, seq)

        self.core._apply = recording_apply  # type: ignore[method-assign]

    def send(
        self, msg_type: int, payload: bytes = b"", seq: int | None = None, ack: int = 255, version: int = 1
    ) -> None:
        flags = pc.FLAG_RELIABLE if seq is not None else 0
        self.core.feed(pc.encode_frame(flags, seq or 0, ack, msg_type, payload, version), self.now)

    def run(self, ms: int, step: int = 5, host: bool = False) -> list[Msg]:
        """Poll the core every ``step`` ms for ``ms`` ms; returns the frames it sent meanwhile. With ``host``
        the test side behaves like a live host: it acknowledges reliable frames and sends heartbeats."""
        start = len(self.got)
        self.collect()
        end = self.now + ms
        while self.now < end:
            self.now = min(self.now + step, end)
            self.core.poll(self.now)
            new = self.collect()
            if host:
                for m in new:
                    if m.reliable and m.seq == self.expected:
                        self.expected = (self.expected + 1) & 0xFF
                if self.now - self.beat >= 500 or any(m.reliable for m in new):
                    self.beat = self.now
                    self.send(pc.T_HEARTBEAT, b"\x00" * 4, ack=(self.expected - 1) & 0xFF)
        return self.got[start:]

    def collect(self) -> list[Msg]:
        start = len(self.got)
        self.decoder.feed(self.core.take_output())
        return self.got[start:]

    def of(self, msg_type: int, msgs: list[Msg] | None = None) -> list[Msg]:
        return [m for m in (self.got if msgs is None else msgs) if m.type == msg_type]


def set_light(
    channel: int = 0,
    brightness: int = 500,
    cct: int = 2700,
    rgb: tuple[int, int, int] = (0, 0, 0),
    fade: int = 0,
) -> bytes:
    return struct.pack("<BHHBBBH", channel, brightness, cct, *rgb, fade)


def hello_req(nonce: int = 1) -> bytes:
    return struct.pack("<BBI", 1, 0, nonce)


def connected(**kw: object) -> Host:
    """A core that has answered a HELLO_REQ; its boot output already read."""
    h = Host(**kw)  # type: ignore[arg-type]
    h.send(pc.T_HELLO_REQ, hello_req())
    h.collect()
    return h


# ----- framing -----


def test_crc_check_value_and_spec_example() -> None:
    assert pc.crc16(b"123456789") == 0x29B1
    assert pc.crc16(SPEC_SET_LIGHT, len(SPEC_SET_LIGHT) - 2) == 0xFB9F
    wire = pc.encode_frame(pc.FLAG_RELIABLE, 5, 2, pc.T_SET_LIGHT, set_light(0, 500, 2700, fade=250))
    assert wire == pc.cobs_encode(SPEC_SET_LIGHT)
    assert wire[-1] == 0 and 0 not in wire[:-1]


@pytest.mark.parametrize(
    ("data", "encoded"),
    [
        (b"", b"\x01\x00"),
        (b"\x00", b"\x01\x01\x00"),
        (b"\x00\x00", b"\x01\x01\x01\x00"),
        (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33\x00"),
        (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01\x00"),
        (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255)) + b"\x00"),
        (bytes(range(0, 255)), b"\x01\xff" + bytes(range(1, 255)) + b"\x00"),
        (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff\x00"),
    ],
)
def test_cobs_reference_vectors(data: bytes, encoded: bytes) -> None:
    assert pc.cobs_encode(data) == encoded
    out = bytearray(300)
    n = pc.cobs_decode_into(encoded, len(encoded) - 1, out)
    assert bytes(out[:n]) == data


def test_cobs_round_trip_and_the_trailing_code_variant() -> None:
    rng = random.Random(7)
    out = bytearray(600)
    for size in [*range(0, 20), 253, 254, 255, 256, 508, 509, 510]:
        data = bytes(rng.choice((0, 1, 255, rng.randrange(256))) for _ in range(size))
        enc = pc.cobs_encode(data)
        assert len(enc) <= size + size // 254 + 2
        n = pc.cobs_decode_into(enc, len(enc) - 1, out)
        assert bytes(out[:n]) == data
    # Encoders that add a final 0x01 after a full 254-byte block decode to the same data.
    n = pc.cobs_decode_into(b"\xff" + bytes(range(1, 255)) + b"\x01", 256, out)
    assert bytes(out[:n]) == bytes(range(1, 255))
    assert pc.cobs_decode_into(b"\x05\x01", 2, out) == -1


def decode_all(data: bytes) -> tuple[list[bytes], pc.FrameDecoder]:
    frames: list[bytes] = []
    d = pc.FrameDecoder(lambda f, n: frames.append(bytes(f[:n])))
    d.feed(data)
    return frames, d


def test_every_prefix_is_need_more_and_garbage_resyncs() -> None:
    wire = pc.encode_frame(pc.FLAG_RELIABLE, 5, 2, pc.T_SET_LIGHT, set_light(0, 500, 2700, fade=250))
    frames: list[bytes] = []
    d = pc.FrameDecoder(lambda f, n: frames.append(bytes(f[:n])))
    for b in wire[:-1]:
        d.feed(bytes([b]))
        assert frames == []
    d.feed(b"\x00")
    assert frames == [SPEC_SET_LIGHT]
    # Garbage without a delimiter spoils only the frame it runs into; the next one comes through.
    frames, d = decode_all(b"\x13\x37\xff" + wire + wire)
    assert frames == [SPEC_SET_LIGHT] and d.crc_errors + d.malformed == 1
    # Starting mid-frame: the tail is dropped at its delimiter, the next frame is whole.
    frames, d = decode_all(wire[7:] + wire)
    assert frames == [SPEC_SET_LIGHT]


def test_decoder_counts_each_kind_of_bad_frame() -> None:
    good = bytearray(SPEC_SET_LIGHT)
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 0x40
    bad_len = bytearray(good[:-2])
    bad_len[5] = 11
    bad_len += struct.pack("<H", pc.crc16(bad_len))
    short = b"\x01\x00\x00\xff\x03"
    stream = (
        b"\x00\x00"  # empty frames: not counted
        + pc.cobs_encode(bytes(bad_crc))
        + pc.cobs_encode(bytes(bad_len))
        + pc.cobs_encode(short)
        + b"\x07\x01\x00"  # a COBS group running past the end
        + b"\x01" * 300
        + b"\x00"  # oversize
        + pc.cobs_encode(bytes(good))
    )
    frames, d = decode_all(stream)
    assert frames == [bytes(good)]
    assert (d.crc_errors, d.malformed, d.oversize, d.frames) == (1, 3, 1, 1)


def test_largest_frame_passes_and_one_more_byte_is_oversize() -> None:
    payload = bytes([0x55] * pc.MAX_PAYLOAD)
    wire = pc.encode_frame(0, 0, 255, 99, payload)
    assert len(wire) <= pc.MAX_ENCODED + 1
    frames, d = decode_all(wire)
    assert len(frames) == 1 and len(frames[0]) == pc.MAX_FRAME
    frame = bytearray(frames[0][:-2]) + b"\x55"
    frame[5:7] = struct.pack("<H", pc.MAX_PAYLOAD + 1)
    frame += struct.pack("<H", pc.crc16(frame))
    frames, d = decode_all(pc.cobs_encode(bytes(frame)))
    assert frames == [] and d.oversize == 1


GOLDEN_FILES = sorted(GOLDEN.glob("*.bin")) if GOLDEN.is_dir() else []
# Golden file name → message type, for the names PROTOCOL.md §7 implies.
GOLDEN_TYPES = {
    "hello_req": pc.T_HELLO_REQ,
    "hello": pc.T_HELLO,
    "ack": pc.T_ACK,
    "heartbeat": pc.T_HEARTBEAT,
    "error": pc.T_ERROR,
    "set_light": pc.T_SET_LIGHT,
    "set_scene": pc.T_SET_SCENE,
    "set_failsafe": pc.T_SET_FAILSAFE,
    "light_state": pc.T_LIGHT_STATE,
    "sensors": pc.T_SENSORS,
    "event": pc.T_EVENT,
    "enter_bootloader": pc.T_ENTER_BOOTLOADER,
}


@pytest.mark.skipif(not GOLDEN_FILES, reason="no golden frames in tests/hwcontrol/golden yet")
@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_golden_frame_decodes_and_re_encodes(path: Path) -> None:
    wire = path.read_bytes()
    frames, d = decode_all(wire)
    assert len(frames) == 1, d.__dict__
    frame = frames[0]
    assert pc.cobs_encode(frame) == wire
    msg = parse(frame)
    if path.stem in GOLDEN_TYPES:
        assert msg.type == GOLDEN_TYPES[path.stem]
    sizes = {
        pc.T_HELLO_REQ: pc.HELLO_REQ_LEN,
        pc.T_HELLO: pc.HELLO_LEN,
        pc.T_ACK: 0,
        pc.T_HEARTBEAT: 4,
        pc.T_ERROR: 3,
        pc.T_SET_LIGHT: pc.SET_LIGHT_LEN,
        pc.T_SET_SCENE: pc.SET_SCENE_LEN,
        pc.T_SET_FAILSAFE: pc.SET_FAILSAFE_LEN,
        pc.T_SENSORS: pc.SENSORS_LEN,
        pc.T_EVENT: pc.EVENT_LEN,
        pc.T_ENTER_BOOTLOADER: pc.ENTER_BOOTLOADER_LEN,
    }
    if msg.type in sizes:
        assert len(msg.payload) == sizes[msg.type]
    if msg.type == pc.T_LIGHT_STATE:
        assert len(msg.payload) == 1 + pc.LIGHT_STATE_CHANNEL_LEN * msg.payload[0]
    rebuilt = pc.encode_frame(msg.flags, msg.seq, msg.ack, msg.type, msg.payload, msg.version)
    assert rebuilt == wire
    if path.stem == "set_light":
        assert frame == SPEC_SET_LIGHT


@pytest.mark.skipif(not GOLDEN_FILES, reason="no golden frames in tests/hwcontrol/golden yet")
def test_golden_host_frames_are_applied_like_the_host_means_them() -> None:
    """Every golden host→MCU frame fed to a fresh core: accepted, and no ERROR except for a refused MAC."""
    for path in GOLDEN_FILES:
        msg = parse(decode_all(path.read_bytes())[0][0])
        if msg.type not in (pc.T_SET_LIGHT, pc.T_SET_SCENE, pc.T_SET_FAILSAFE, pc.T_HELLO_REQ):
            continue
        h = Host()
        h.collect()
        h.core.expected = msg.seq
        h.core.feed(path.read_bytes(), h.now)
        sent = h.run(20)
        assert h.core.stats()["rx_frames"] == 1, path.name
        assert not h.of(pc.T_ERROR, sent), path.name


# ----- hello and sessions -----


def test_hello_at_boot_then_on_every_hello_req() -> None:
    h = Host(start=123)
    (hello,) = h.collect()
    assert hello.type == pc.T_HELLO and not hello.reliable and hello.version == 1 and hello.ack == 255
    assert len(hello.payload) == pc.HELLO_LEN == 26
    major, minor, fw_major, _, _, _, hw_rev = struct.unpack_from("<BBBBBIB", hello.payload)
    assert (major, minor, fw_major, hw_rev) == (1, 0, pc.FW_MAJOR, 3)
    assert hello.payload[10:18] == b"UNIQUEID"
    caps, reason, session, channels = struct.unpack_from("<HBIB", hello.payload, 18)
    assert caps == ALL_CAPS | pc.CAP_BOOTLOADER
    assert (reason, session, channels) == (pc.BOOT_WATCHDOG, 0xCAFEF00D, 2)
    for nonce in (5, 5, 6):
        h.send(pc.T_HELLO_REQ, hello_req(nonce))
        assert [m.type for m in h.collect() if m.type == pc.T_HELLO] == [pc.T_HELLO]
    assert h.core.stats()["hello_sent"] == 4


def test_no_bootloader_capability_without_a_key() -> None:
    h = Host(hw=SimHW(key=None))
    (hello,) = h.collect()
    assert struct.unpack_from("<H", hello.payload, 18)[0] == ALL_CAPS


def test_hello_req_with_a_new_nonce_resets_both_directions_and_a_repeat_does_not() -> None:
    h = connected()
    for seq in range(3):
        h.send(pc.T_SET_LIGHT, set_light(brightness=100 + seq), seq=seq)
    assert h.core.expected == 3
    h.hw.pressed = True
    h.run(50)  # a button EVENT, never acknowledged
    # A retry of the same hello changes nothing.
    h.send(pc.T_HELLO_REQ, hello_req(1))
    assert h.core.expected == 3
    h.send(pc.T_SET_LIGHT, set_light(brightness=100), seq=0)  # a duplicate now
    assert h.core.stats()["rx_duplicates"] == 1
    # A new connection: expected back to 0, the unacknowledged frames renumbered from 0, in order.
    h.collect()
    h.got.clear()
    h.send(pc.T_HELLO_REQ, hello_req(2))
    sent = h.collect()
    assert h.core.expected == 0
    reliable = [(m.seq, m.type, m.payload[:1]) for m in sent if m.reliable]
    assert reliable == [
        (0, pc.T_EVENT, bytes([pc.EV_SWITCH])),
        (1, pc.T_LIGHT_STATE, b"\x02"),
        (2, pc.T_LIGHT_STATE, b"\x02"),
        (3, pc.T_LIGHT_STATE, b"\x02"),
        (4, pc.T_EVENT, bytes([pc.EV_BUTTON])),
        (5, pc.T_EVENT, bytes([pc.EV_SWITCH])),
    ]
    assert [m.type for m in sent if not m.reliable] == [pc.T_HELLO]
    h.send(pc.T_SET_LIGHT, set_light(brightness=700), seq=0)
    assert h.core.targets()[0][0] == 700


def test_hello_req_of_another_major_is_answered_and_changes_nothing() -> None:
    h = connected()
    h.send(pc.T_SET_LIGHT, set_light(), seq=0)
    h.collect()
    h.send(pc.T_HELLO_REQ, b"\x02\x00", version=2)
    assert [m.type for m in h.collect()] == [pc.T_HELLO]
    assert h.core.expected == 1
    h.send(pc.T_SET_LIGHT, set_light(brightness=1), seq=1, version=2)
    assert h.core.stats()["rx_bad_version"] == 1 and h.core.expected == 1


def test_incompatible_firmware_speaks_only_its_own_major() -> None:
    h = Host(proto_major=2, fw_major=2)
    (hello,) = h.collect()
    assert hello.version == 2 and hello.payload[0] == 2 and hello.payload[2] == 2
    h.send(pc.T_HELLO_REQ, hello_req(9))
    assert [(m.type, m.version) for m in h.collect()] == [(pc.T_HELLO, 2)]
    h.send(pc.T_SET_LIGHT, set_light(), seq=0)
    assert h.core.stats()["rx_bad_version"] == 1 and not h.applied


# ----- commands -----


def test_set_light_applies_reports_and_fades() -> None:
    h = connected()
    h.hw.calls.clear()
    h.send(pc.T_SET_LIGHT, set_light(0, 500, 4000, fade=0), seq=0)
    assert h.hw.calls == [(0, 500, 4000, 0, 0, 0)]
    (state,) = h.of(pc.T_LIGHT_STATE, h.collect())
    assert state.reliable and state.ack == 0
    assert state.payload == b"\x02" + struct.pack("<HHBBB", 500, 4000, 0, 0, 0) + struct.pack(
        "<HHBBB", 0, 2700, 0, 0, 0
    )
    # A fade: linear from the current value, over fade_ms, to the exact target.
    h.hw.calls.clear()
    h.send(pc.T_SET_LIGHT, set_light(0xFF, 1000, 0, (200, 100, 0), fade=1000), seq=1)
    h.run(500)
    assert h.core.lights()[0] == [750, 4000, 100, 50, 0]
    assert h.core.lights()[1] == [500, 2700, 100, 50, 0]  # cct 0 leaves each channel's own
    h.run(600)
    assert h.core.lights() == [[1000, 4000, 200, 100, 0], [1000, 2700, 200, 100, 0]]
    assert h.hw.calls[-2:] == [(0, 1000, 4000, 200, 100, 0), (1, 1000, 2700, 200, 100, 0)]
    n = len(h.hw.calls)
    h.run(100)
    assert len(h.hw.calls) == n  # nothing changes, nothing is written


def test_set_scene_and_set_failsafe() -> None:
    h = connected()
    h.send(pc.T_SET_SCENE, struct.pack("<BH", 2, 0), seq=0)
    assert h.core.targets() == [[800, 4000, 0, 0, 0]] * 2
    h.send(pc.T_SET_FAILSAFE, struct.pack("<HB", 500, 3), seq=1)
    assert (h.core.failsafe_timeout_ms, h.core.failsafe_scene) == (500, 3)
    assert not h.of(pc.T_ERROR, h.run(20))


ERROR_CASES = [
    # (type, payload, code)
    (pc.T_SET_LIGHT, set_light()[:-1], pc.E_BAD_LENGTH),
    (pc.T_SET_LIGHT, set_light() + b"\x00", pc.E_BAD_LENGTH),
    (pc.T_SET_LIGHT, set_light(channel=2), pc.E_OUT_OF_RANGE),
    (pc.T_SET_LIGHT, set_light(brightness=1001), pc.E_OUT_OF_RANGE),
    (pc.T_SET_LIGHT, set_light(cct=999), pc.E_OUT_OF_RANGE),
    (pc.T_SET_LIGHT, set_light(cct=20001), pc.E_OUT_OF_RANGE),
    (pc.T_SET_SCENE, struct.pack("<BH", 4, 0), pc.E_OUT_OF_RANGE),
    (pc.T_SET_SCENE, b"\x01", pc.E_BAD_LENGTH),
    (pc.T_SET_FAILSAFE, struct.pack("<HB", 499, 1), pc.E_OUT_OF_RANGE),
    (pc.T_SET_FAILSAFE, struct.pack("<HB", 60001, 1), pc.E_OUT_OF_RANGE),
    (pc.T_SET_FAILSAFE, struct.pack("<HB", 3000, 4), pc.E_OUT_OF_RANGE),
    (pc.T_SET_FAILSAFE, struct.pack("<H", 3000), pc.E_BAD_LENGTH),
    (pc.T_ENTER_BOOTLOADER, bytes(19), pc.E_BAD_LENGTH),
    (pc.T_ENTER_BOOTLOADER, bytes(20), pc.E_BOOTLOADER_REFUSED),
    (pc.T_HELLO_REQ, b"\x01\x00", pc.E_BAD_LENGTH),
    (99, b"", pc.E_UNKNOWN_TYPE),
    (pc.T_EVENT, bytes(6), pc.E_UNKNOWN_TYPE),  # an MCU→host type from the host
    (pc.T_LIGHT_STATE, b"\x00", pc.E_UNKNOWN_TYPE),
]


@pytest.mark.parametrize(("msg_type", "payload", "code"), ERROR_CASES)
def test_bad_commands_get_an_error_and_change_nothing(msg_type: int, payload: bytes, code: int) -> None:
    h = connected()
    before = (h.core.targets(), h.core.failsafe_timeout_ms, h.core.failsafe_scene)
    h.send(msg_type, payload, seq=0)
    (err,) = h.of(pc.T_ERROR, h.run(10))
    assert err.reliable and err.ack == 0  # the bad command was consumed and acknowledged
    assert err.payload == bytes((code, msg_type, 0))
    assert (h.core.targets(), h.core.failsafe_timeout_ms, h.core.failsafe_scene) == before
    assert h.hw.bootloader_calls == 0


def test_error_refers_to_the_offending_seq_and_unreliable_frames_too() -> None:
    h = connected()
    h.send(pc.T_SET_LIGHT, set_light(), seq=0)
    h.send(pc.T_SET_LIGHT, set_light(brightness=2000), seq=1)
    h.send(pc.T_ACK, b"\x01")  # unreliable, bad length
    errors = h.of(pc.T_ERROR, h.run(10))
    assert [e.payload for e in errors] == [bytes((3, 16, 1)), bytes((2, 3, 0))]


def test_not_supported_without_the_hardware() -> None:
    h = connected(hw=SimHW(caps=pc.CAP_PWM, key=None))
    h.send(pc.T_SET_LIGHT, set_light(rgb=(1, 0, 0)), seq=0)
    h.send(pc.T_ENTER_BOOTLOADER, bytes(20), seq=1)
    assert [e.payload[0] for e in h.of(pc.T_ERROR, h.run(10))] == [pc.E_NOT_SUPPORTED] * 2
    h = connected(hw=SimHW(channels=0, caps=0))
    h.send(pc.T_SET_LIGHT, set_light(), seq=0)
    h.send(pc.T_SET_SCENE, b"\x01\x00\x00", seq=1)
    assert [e.payload[0] for e in h.of(pc.T_ERROR, h.run(10))] == [pc.E_NOT_SUPPORTED] * 2


def test_bootloader_accepts_the_right_mac_only() -> None:
    h = connected()
    session = h.core.session_id
    wrong_session = pc.bootloader_mac(KEY, session ^ 1, 77)
    wrong_key = pc.bootloader_mac(b"x" * 32, session, 77)
    for mac in (wrong_session, wrong_key):
        h.send(pc.T_ENTER_BOOTLOADER, struct.pack("<I", 77) + mac, seq=h.core.expected)
    h.run(100)
    assert h.hw.bootloader_calls == 0 and h.core.bootloader_refused == 2
    good = pc.bootloader_mac(KEY, session, 77)
    assert (
        good == hmac.new(KEY, b"doorway-boot" + struct.pack("<II", session, 77), hashlib.sha256).digest()[:16]
    )
    h.send(pc.T_ENTER_BOOTLOADER, struct.pack("<I", 77) + good, seq=2)
    sent = h.run(5)
    assert [m.ack for m in h.of(pc.T_ACK, sent)] == [2]  # acknowledged before it goes
    assert h.hw.bootloader_calls == 0
    h.run(pc.BOOTLOADER_DELAY_MS)
    assert h.hw.bootloader_calls == 1


@pytest.mark.parametrize("key_len", [0, 16, 32, 64, 65, 200])
def test_hmac_matches_the_standard_library(key_len: int) -> None:
    key = bytes((i * 7 + 3) & 0xFF for i in range(key_len))
    for msg in (b"", b"doorway-boot", bytes(range(200))):
        assert pc.hmac_sha256(key, msg) == hmac.new(key, msg, hashlib.sha256).digest()


# ----- the reliable link -----


def test_duplicates_are_acknowledged_not_applied_and_gaps_are_dropped() -> None:
    h = connected()
    h.send(pc.T_SET_LIGHT, set_light(brightness=1), seq=0)
    h.send(pc.T_SET_LIGHT, set_light(brightness=1), seq=0)
    h.send(pc.T_SET_LIGHT, set_light(brightness=3), seq=2)  # seq 1 lost
    h.send(pc.T_SET_LIGHT, set_light(brightness=2), seq=1)
    h.send(pc.T_SET_LIGHT, set_light(brightness=3), seq=2)
    h.send(pc.T_SET_LIGHT, set_light(brightness=9), seq=250)  # neither next nor among the 8 before
    assert [p for t, p in h.applied if t == pc.T_SET_LIGHT] == [set_light(brightness=b) for b in (1, 2, 3)]
    s = h.core.stats()
    assert (s["rx_duplicates"], s["rx_out_of_order"], h.core.expected) == (1, 2, 3)


def test_standalone_ack_within_20_ms() -> None:
    h = connected(hw=SimHW(channels=0, caps=0))  # nothing else to say
    h.send(pc.T_HEARTBEAT, b"\x00\x00\x00\x00")
    h.send(pc.T_SET_FAILSAFE, struct.pack("<HB", 3000, 1), seq=0)
    assert h.collect() == []
    (ack,) = h.run(5)
    assert (ack.type, ack.ack, ack.reliable, ack.payload) == (pc.T_ACK, 0, False, b"")
    h.send(pc.T_SET_FAILSAFE, struct.pack("<HB", 3000, 1), seq=0)  # a duplicate is acknowledged again
    assert [m.ack for m in h.run(5)] == [0]


def test_heartbeat_after_500_ms_of_silence() -> None:
    h = connected(hw=SimHW(channels=0, caps=0))
    sent = h.run(1600, step=10)
    beats = h.of(pc.T_HEARTBEAT, sent)
    assert len(beats) == 3 and not [m for m in sent if m.type != pc.T_HEARTBEAT]
    uptimes = [struct.unpack("<I", b.payload)[0] for b in beats]
    assert uptimes == [500, 1000, 1500]


def test_retransmission_backoff_link_down_and_recovery() -> None:
    h = connected(hw=SimHW(channels=0, caps=pc.CAP_BUTTON))
    h.hw.pressed = True
    times: list[int] = []
    for _ in range(12000):
        h.now += 1
        h.core.poll(h.now)
        if [m for m in h.collect() if m.type == pc.T_EVENT and m.payload[0] == pc.EV_BUTTON]:
            times.append(h.now)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # First sent once debounced, then again after 50, 100, 200, 400, 400, ... ms: 20 retries, then silence.
    assert len(times) == 1 + pc.MAX_RETRIES
    assert gaps[:5] == [50, 100, 200, 400, 400] and set(gaps[4:]) == {400}
    assert h.core.link_down and h.core.stats()["link_lost"] == 1
    # Any valid frame from the host brings it back: sent again at once, with a fresh retry budget.
    h.send(pc.T_HEARTBEAT, b"\x00" * 4)
    sent = h.run(1, step=1)
    assert [m for m in sent if m.type == pc.T_EVENT and m.payload[0] == pc.EV_BUTTON]
    assert not h.core.link_down
    h.send(pc.T_ACK, ack=h.core._tx_base + h.core._tx_count - 1)
    assert h.core.stats()["tx_unacked"] == 0


def test_window_of_8_then_pending_in_order() -> None:
    h = connected(hw=SimHW(caps=pc.CAP_BUTTON))
    for i in range(12):
        h.core._send_event(pc.EV_PRESENCE, i)
    assert [m.seq for m in h.collect()] == list(range(8))
    assert h.core.stats()["tx_pending"] == 4
    h.send(pc.T_ACK, ack=3)
    assert [m.seq for m in h.collect()] == [8, 9, 10, 11]
    assert h.core.stats()["tx_unacked"] == 8


def test_exactly_once_in_order_over_a_lossy_duplicating_link() -> None:
    """A small go-back-N host against the core through a channel that drops, duplicates and corrupts frames
    both ways: every command is applied once, in order; every button EVENT reaches the host once, in order."""
    rng = random.Random(2024)
    h = connected()
    h.got.clear()

    def impair(wire: bytes) -> bytes:
        out = bytearray()
        for chunk in wire.split(b"\x00")[:-1]:
            frame = bytearray(chunk + b"\x00")
            r = rng.random()
            if r < 0.15:
                continue
            if r < 0.25 and len(frame) > 2:
                frame[rng.randrange(len(frame) - 1)] ^= 1 << rng.randrange(8)
            out += frame
            if rng.random() < 0.1:
                out += frame
        return bytes(out)

    commands = [set_light(brightness=i, fade=0) for i in range(300)]
    next_seq = 0
    base = 0
    rto = 50
    deadline = 0
    expected = 0
    events: list[bytes] = []
    presses = 0
    got: list[Msg] = []
    dec = pc.FrameDecoder(lambda f, n: got.append(parse(bytes(f[:n]))))
    now = h.now
    while (base < len(commands) or presses < 40 or len(events) < presses) and now < h.now + 600_000:
        now += 2
        # Host sends: fill the window, retransmit on timeout.
        wire = bytearray()
        while next_seq < len(commands) and next_seq - base < 8:
            wire += pc.encode_frame(
                1, next_seq & 0xFF, (expected - 1) & 0xFF, pc.T_SET_LIGHT, commands[next_seq]
            )
            if next_seq == base:
                deadline = now + rto
            next_seq += 1
        if base < next_seq and now >= deadline:
            for s in range(base, next_seq):
                wire += pc.encode_frame(1, s & 0xFF, (expected - 1) & 0xFF, pc.T_SET_LIGHT, commands[s])
            rto = min(rto * 2, 400)
            deadline = now + rto
        if presses < 40 and now % 97 < 2:
            h.hw.pressed = not h.hw.pressed
            presses += h.hw.pressed
        acked_by_us = False
        h.core.feed(impair(bytes(wire)), now)
        h.core.poll(now)
        dec.feed(impair(h.core.take_output()))
        for m in got:
            d = (m.ack - base) & 0xFF
            if d < next_seq - base:
                base += d + 1
                rto = 50
                deadline = now + rto
            if m.reliable:
                if m.seq == expected & 0xFF:
                    expected += 1
                    if m.type == pc.T_EVENT and m.payload[0] == pc.EV_BUTTON:
                        events.append(m.payload)
                acked_by_us = True
        got.clear()
        if acked_by_us:
            h.core.feed(impair(pc.encode_frame(0, 0, (expected - 1) & 0xFF, pc.T_ACK, b"")), now)
    assert [p for t, p in h.applied if t == pc.T_SET_LIGHT] == commands
    assert len(events) == presses == 40
    assert len(set(events)) == 40  # distinct uptimes: none delivered twice
    s = h.core.stats()
    assert s["rx_duplicates"] > 0 and s["rx_crc_errors"] + s["rx_malformed"] > 0 and s["tx_retransmits"] > 0


# ----- failsafe -----


@pytest.mark.parametrize("start", [0, pc.TICKS_PERIOD - 2500])
def test_failsafe_after_timeout_fades_to_the_scene_and_leaves_on_the_next_frame(start: int) -> None:
    h = Host(start=start)
    h.send(pc.T_HELLO_REQ, hello_req())
    h.send(pc.T_SET_LIGHT, set_light(0xFF, 1000, 6500, fade=0), seq=0)
    h.send(pc.T_ACK, ack=0)
    h.run(2995, step=5)
    assert not h.core.failsafe
    sent = h.run(5)
    assert h.core.failsafe
    (ev,) = h.of(pc.T_EVENT, sent)
    assert ev.payload[:2] == bytes((pc.EV_FAILSAFE_ENTERED, pc.SCENE_SAFE))
    assert h.of(pc.T_LIGHT_STATE, sent)
    h.run(1000)
    assert h.core.lights()[0][:2] == [650, 4600]  # half way from (1000, 6500) to (300, 2700)
    h.run(1000)
    assert h.core.lights() == [[300, 2700, 0, 0, 0]] * 2
    h.send(pc.T_HEARTBEAT, b"\x00" * 4)
    left = [m for m in h.collect() if m.type == pc.T_EVENT]
    assert left[0].payload[0] == pc.EV_FAILSAFE_LEFT and not h.core.failsafe
    assert h.core.lights() == [[300, 2700, 0, 0, 0]] * 2  # it waits for the host's set-points
    assert h.core.stats()["failsafe_entered"] == 1


def test_set_failsafe_changes_timeout_and_scene_and_frames_keep_it_away() -> None:
    h = connected()
    h.send(pc.T_SET_FAILSAFE, struct.pack("<HB", 800, 0), seq=0)
    for _ in range(10):  # a frame every 700 ms keeps it off
        h.run(700)
        h.send(pc.T_HEARTBEAT, b"\x00" * 4)
    assert not h.core.failsafe
    h.run(800)
    assert h.core.failsafe and h.core.targets()[0][0] == 0
    # Frames of another version are not valid frames: they do not count as the host being there.
    h.send(pc.T_HEARTBEAT, b"\x00" * 4, version=2)
    assert h.core.failsafe


# ----- sensors and inputs -----


def test_sensors_every_second_and_at_once_on_a_big_change() -> None:
    h = connected()
    h.run(50, host=True)
    sent = h.run(2000, step=10, host=True)
    reports = h.of(pc.T_SENSORS, sent)
    assert len(reports) == 2
    _, valid, lux, temp, hum, presence = struct.unpack("<IBIhHB", reports[0].payload)
    assert valid == pc.VALID_LUX | pc.VALID_TEMP | pc.VALID_PRESENCE
    assert (lux, temp, hum, presence) == (30000, 2150, 0, 0)
    h.hw.lux = 30400  # within 20 %: waits for the period
    h.hw.temp = 2160
    assert not h.of(pc.T_SENSORS, h.run(200, step=10))
    h.hw.lux = 60000
    sent = h.run(110, step=10)
    assert [struct.unpack("<IBIhHB", r.payload)[2] for r in h.of(pc.T_SENSORS, sent)] == [60000]
    h.hw.temp = 2300
    assert len(h.of(pc.T_SENSORS, h.run(110, step=10))) == 1
    h.hw.lux = None  # a failed sensor is reported as not valid
    h.run(1000)
    valid = struct.unpack("<IBIhHB", h.of(pc.T_SENSORS)[-1].payload)[1]
    assert valid == pc.VALID_TEMP | pc.VALID_PRESENCE


def test_presence_events_and_hold() -> None:
    h = connected()
    h.run(200, host=True)
    h.hw.moving = True
    sent = h.run(110, host=True)
    assert [m.payload[:2] for m in h.of(pc.T_EVENT, sent)] == [bytes((pc.EV_PRESENCE, 1))]
    # The change is in a SENSORS report at the next sample too, without waiting for the period.
    assert [r.payload[-1] for r in h.of(pc.T_SENSORS, sent)] == [1]
    h.hw.moving = False
    h.run(pc.PRESENCE_HOLD_MS - 200, step=50, host=True)
    assert h.core.presence
    sent = h.run(200, step=50, host=True)
    assert [m.payload[:2] for m in h.of(pc.T_EVENT, sent)] == [bytes((pc.EV_PRESENCE, 0))]
    assert not h.core.failsafe


def test_button_debounce_and_switch_events() -> None:
    h = connected()
    # Bounces shorter than the debounce time are nothing.
    for _ in range(5):
        h.hw.pressed = not h.hw.pressed
        h.run(10, step=5)
    h.hw.pressed = False
    h.run(100)
    assert not [m for m in h.of(pc.T_EVENT) if m.payload[0] == pc.EV_BUTTON]
    h.hw.pressed = True
    h.run(25, step=5)
    assert not [m for m in h.of(pc.T_EVENT) if m.payload[0] == pc.EV_BUTTON]
    h.run(10, step=5)
    assert [m.payload[:2] for m in h.of(pc.T_EVENT) if m.payload[0] == pc.EV_BUTTON] == [b"\x01\x00"]
    h.hw.pressed = False  # release: no event
    h.hw.switched = True
    h.run(100)
    assert [m.payload[:2] for m in h.of(pc.T_EVENT)][-2:] == [b"\x01\x00", b"\x02\x01"]
    h.hw.switched = False
    h.run(100)
    assert h.of(pc.T_EVENT)[-1].payload[:2] == b"\x02\x00"


# ----- robustness -----


def test_a_megabyte_of_random_bytes_raises_nothing_and_the_link_still_works() -> None:
    rng = random.Random(1)
    h = connected()
    for i in range(256):
        h.core.feed(rng.randbytes(4096), h.now)
        if i % 16 == 0:
            h.now += 5
            h.core.poll(h.now)
            h.core.take_output()
    s = h.core.stats()
    assert s["rx_bytes"] >= 1 << 20
    assert s["rx_crc_errors"] + s["rx_malformed"] + s["rx_oversize"] > 1000
    # Valid frames among the noise (a 16-bit CRC lets about one in 65536 through) are handled like any.
    h.core.feed(b"\x00", h.now)  # flush whatever partial frame the noise left
    h.send(pc.T_HELLO_REQ, hello_req(12345))
    h.send(pc.T_SET_LIGHT, set_light(1, 321), seq=0)
    assert h.core.targets()[1][0] == 321


def test_mutated_frames_raise_nothing() -> None:
    rng = random.Random(3)
    h = connected()
    valid = [
        pc.encode_frame(1, s, 0, t, p)
        for s, (t, p) in enumerate(
            [
                (pc.T_SET_LIGHT, set_light()),
                (pc.T_SET_SCENE, b"\x01\x00\x00"),
                (pc.T_SET_FAILSAFE, struct.pack("<HB", 1000, 1)),
                (pc.T_ENTER_BOOTLOADER, bytes(20)),
                (pc.T_HELLO_REQ, hello_req(3)),
            ]
        )
    ]
    for _ in range(3000):
        frame = bytearray(rng.choice(valid)[:-1])
        raw = bytearray(300)
        n = pc.cobs_decode_into(frame, len(frame), raw)
        body = raw[:n]
        for _ in range(rng.randrange(1, 4)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        if rng.random() < 0.7:  # a good CRC over bad fields: the application layer must cope
            body[-2:] = struct.pack("<H", pc.crc16(body, len(body) - 2))
        h.core.feed(pc.cobs_encode(bytes(body)), h.now)
        h.now += 1
        h.core.poll(h.now)
        h.core.take_output()
    assert h.hw.bootloader_calls == 0


def test_queues_are_bounded_and_count_what_they_drop() -> None:
    h = Host(hw=SimHW(caps=pc.CAP_PRESENCE))
    for i in range(100):  # the host acknowledges nothing: 8 in flight, 16 waiting, the rest dropped
        h.core._send_error(1, 1, i)
    s = h.core.stats()
    assert (s["tx_unacked"], s["tx_pending"], s["tx_dropped"]) == (
        8,
        pc.PENDING_MAX,
        100 - 8 - pc.PENDING_MAX,
    )
    for _ in range(200):  # nobody drains the output
        h.send(pc.T_HELLO_REQ, hello_req())
    assert len(h.core._out) <= pc.OUTPUT_MAX and h.core.stats()["tx_overflow"] > 0


def test_ticks_diff_wraps() -> None:
    top = pc.TICKS_PERIOD - 10
    assert pc.ticks_diff(pc.ticks_add(top, 30), top) == 30
    assert pc.ticks_diff(top, pc.ticks_add(top, 30)) == -30
    assert pc.ticks_diff(10**12 + 5, 10**12) == 5  # CPython's unwrapped integers work too
