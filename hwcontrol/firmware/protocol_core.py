"""The MCU side of the Doorway MCU protocol (hwcontrol/PROTOCOL.md), in the Python subset MicroPython runs.

This file is copied to the Pico as ``protocol_core.py`` next to ``main.py``; the emulator
(``hwcontrol/emulator.py``) and the tests run the very same file under CPython. It does no I/O and never
reads a clock: the caller hands it received bytes (:meth:`Core.feed`), calls :meth:`Core.poll` every few
milliseconds with the current ``ticks_ms()``, and writes what :meth:`Core.take_output` returns to the
serial port. Everything the room has (lights, sensors, buttons, reset hooks) is reached through a small
:class:`Hardware` object; ``main.py`` implements it with ``machine`` pins, the emulator with a simulation.

MicroPython rules kept here: no ``typing``/``dataclasses``/``enum``/``abc``/``functools``; annotations use
builtins only (MicroPython parses and ignores them; compound ones are strings); ``struct`` packs the
fields; the frame buffers are preallocated; bad input never raises, it is counted and dropped.

Theory of operation
-------------------
*Framing.* Received bytes go one by one into :class:`FrameDecoder`, which keeps up to 258 encoded bytes in
a preallocated buffer. A ``0x00`` ends a frame: it is COBS-decoded into a second preallocated buffer and
checked (9–256 bytes, CRC-16/CCITT-FALSE, ``length`` field). A frame that grows past 258 encoded bytes is
dropped up to the next ``0x00``; so the decoder always resynchronises at the next delimiter, whatever came
before. Empty frames (``00 00``) are ignored without counting, as the spec allows for flushing.

*Reliability.* Each direction is go-back-N with a window of 8 and sequence numbers mod 256. Received:
``expected`` is the next host ``seq`` to apply; a frame with ``seq == expected`` is applied and
acknowledged, one of the 8 before is a duplicate (acknowledged, not applied), anything else is dropped.
Every frame sent carries ``ack = expected - 1``; when nothing else went out, :meth:`Core.poll` sends a
standalone ``ACK`` on its next call (a few ms, the spec allows 20). Sent: up to 8 unacknowledged frames
live in 8 preallocated slots indexed by ``seq % 8``; more wait in a bounded FIFO. The oldest unacknowledged
frame has a timer (50 ms, doubling per retry up to 400 ms); when it fires, all slots are sent again in order
(with the current ``ack`` patched in). After 20 retries without progress the link is "down": the MCU stops
retransmitting but keeps the frames, and resumes on the next valid frame from the host. A ``HELLO_REQ``
with a new ``nonce`` (a new host connection) resets both directions: ``expected`` goes to 0 and the frames
still waiting to be delivered are renumbered from 0, so nothing the host has not acknowledged (a privacy
button press during a host restart) is lost. A ``HELLO_REQ`` repeating the nonce of the last reset (a retry
of the same hello, or a copy delayed behind reliable frames) is answered but resets nothing. The HELLO goes
out before the renumbered frames, and a new connection also gets an ``EVENT`` with the privacy switch's
position, which it would otherwise only learn when the switch moves.

*Application.* Commands are checked completely before anything is applied: a command with a bad length or a
value out of range is answered with ``ERROR`` and changes nothing (``cct_k`` outside 1000–20000 K is out of
range; within it the board mixes the nearest it can; RGB on a board without it is "not supported"). Lights are
absolute set-points faded linearly per channel; :meth:`Core.poll` moves each fading channel and calls
``Hardware.set_channel`` only when a value changed. ``LIGHT_STATE`` reports the targets after every change (a
not-yet-sent report is replaced rather than queued twice). Sensors are sampled every 100 ms and reported every
second, or at once when a value moved past a threshold. Buttons are debounced here (30 ms stable) from raw
levels, so the debounce is the same on the board and in the emulator. Without a valid host frame for
``timeout_ms`` the core fades to the failsafe scene over 2 s and reports ``EVENT`` 4; the next valid frame
leaves failsafe (``EVENT`` 5) and the lights stay where they are until the host sends set-points.

*Time.* ``now`` is MicroPython's ``ticks_ms()``, which wraps at 2**30; every comparison goes through
:func:`ticks_diff`, which is also right for CPython's non-wrapping integers as long as two instants are
less than 2**29 ms (6.2 days) apart. Uptime is accumulated from the differences, so it does not wrap early.
"""

try:
    import ustruct as struct  # type: ignore[import-not-found]
except ImportError:
    import struct
import hashlib

# MicroPython has no typing module: this name is False at run time, and type checkers treat it as True.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

# Protocol and firmware identity.
PROTO_MAJOR = 1
PROTO_MINOR = 0
FW_MAJOR = 1
FW_MINOR = 0
FW_PATCH = 0
FW_BUILD = 1

# Frame layout (PROTOCOL.md §2).
HEADER_LEN = 7
CRC_LEN = 2
MIN_FRAME = HEADER_LEN + CRC_LEN
MAX_FRAME = 256
MAX_PAYLOAD = MAX_FRAME - MIN_FRAME
# COBS adds one code byte per 254 data bytes (plus one): 256 decoded bytes are at most 258 encoded.
MAX_ENCODED = MAX_FRAME + MAX_FRAME // 254 + 1
FLAG_RELIABLE = 0x01

# Message types (§4).
T_HELLO_REQ = 1
T_HELLO = 2
T_ACK = 3
T_HEARTBEAT = 4
T_ERROR = 5
T_SET_LIGHT = 16
T_SET_SCENE = 17
T_SET_FAILSAFE = 18
T_LIGHT_STATE = 19
T_SENSORS = 32
T_EVENT = 33
T_ENTER_BOOTLOADER = 48

# ERROR codes.
E_UNKNOWN_TYPE = 1
E_BAD_LENGTH = 2
E_OUT_OF_RANGE = 3
E_NOT_SUPPORTED = 4
E_BOOTLOADER_REFUSED = 5
E_BUSY = 6  # reserved: this firmware never needs to refuse for being busy

# EVENT kinds.
EV_BUTTON = 1
EV_SWITCH = 2
EV_PRESENCE = 3
EV_FAILSAFE_ENTERED = 4
EV_FAILSAFE_LEFT = 5

# HELLO capability bits.
CAP_PWM = 1 << 0
CAP_RGB = 1 << 1
CAP_LIGHT_SENSOR = 1 << 2
CAP_TEMPERATURE = 1 << 3
CAP_HUMIDITY = 1 << 4
CAP_PRESENCE = 1 << 5
CAP_BUTTON = 1 << 6
CAP_SWITCH = 1 << 7
CAP_BOOTLOADER = 1 << 8

# HELLO boot reasons.
BOOT_POWER_ON = 0
BOOT_WATCHDOG = 1
BOOT_BROWN_OUT = 2
BOOT_SOFTWARE = 3
BOOT_FAILSAFE = 4
BOOT_BOOTLOADER = 5
BOOT_UNKNOWN = 255

# SENSORS ``valid`` bits.
VALID_LUX = 1 << 0
VALID_TEMP = 1 << 1
VALID_HUMIDITY = 1 << 2
VALID_PRESENCE = 1 << 3

# Payload sizes (§4).
HELLO_REQ_LEN = 6
HELLO_LEN = 26
SET_LIGHT_LEN = 10
SET_SCENE_LEN = 3
SET_FAILSAFE_LEN = 3
ENTER_BOOTLOADER_LEN = 20
EVENT_LEN = 6
SENSORS_LEN = 14
LIGHT_STATE_CHANNEL_LEN = 7

# Scenes: (brightness ‰, cct K). RGB is off in every scene.
SCENES = ((0, 2700), (300, 2700), (800, 4000), (500, 2700))
SCENE_SAFE = 1

# Value ranges.
MAX_BRIGHTNESS = 1000
CCT_MIN_K = 1000
CCT_MAX_K = 20000
DEFAULT_CCT_K = 2700
FAILSAFE_MIN_MS = 500
FAILSAFE_MAX_MS = 60000
ALL_CHANNELS = 0xFF

# Link timing (§3, §6), ms.
WINDOW = 8
RTO_MIN_MS = 50
RTO_MAX_MS = 400
MAX_RETRIES = 20
HEARTBEAT_MS = 500
FAILSAFE_DEFAULT_MS = 3000
FAILSAFE_FADE_MS = 2000
# Frames that wait for a free window slot; more are dropped and counted (the host is gone for a while).
PENDING_MAX = 16
# Output not yet taken by the caller; more is dropped and counted (the caller is not draining).
OUTPUT_MAX = 4096
# After a good ENTER_BOOTLOADER: time for the ACK to leave before the hook (USB needs a few ms).
BOOTLOADER_DELAY_MS = 50

# Sensors and inputs, ms and centi-units.
SENSOR_SAMPLE_MS = 100
SENSOR_PERIOD_MS = 1000
LUX_STEP_CENTI = 500  # report at once when lux moves by more than 5 lux ...
LUX_STEP_DIV = 5  # ... and by more than a fifth of the last reported value
TEMP_STEP_CENTI = 50  # 0.5 °C
HUMIDITY_STEP_CENTI = 300  # 3 %
DEBOUNCE_MS = 30
PRESENCE_HOLD_MS = 30000

# ticks_ms() arithmetic (MicroPython's TICKS_PERIOD on the RP2040 is 2**30).
TICKS_PERIOD = 1 << 30
TICKS_MASK = TICKS_PERIOD - 1
TICKS_HALF = TICKS_PERIOD >> 1


def ticks_diff(a: int, b: int) -> int:
    """``a - b`` in ms on the wrapping ticks clock: positive when ``a`` is later, within ±2**29."""
    return ((a - b + TICKS_HALF) & TICKS_MASK) - TICKS_HALF


def ticks_add(a: int, delta: int) -> int:
    """The ticks value ``delta`` ms after ``a``."""
    return (a + delta) & TICKS_MASK


def _make_crc_table() -> "list[int]":
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC_TABLE = _make_crc_table()


def crc16(data: "bytes | bytearray", n: int = -1, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE over ``data[:n]`` (all of it when ``n`` is -1); check value 0x29B1."""
    if n < 0:
        n = len(data)
    table = _CRC_TABLE
    for i in range(n):
        crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ data[i]) & 0xFF]
    return crc


def cobs_encode_into(src: "bytes | bytearray", n: int, dst: bytearray) -> int:
    """COBS-encode ``src[:n]`` into ``dst`` followed by the ``0x00`` delimiter; returns the bytes written.

    ``dst`` must hold ``n + n // 254 + 2`` bytes. A last block of exactly 254 non-zero bytes ends with its
    ``0xFF`` code and no extra ``0x01`` (the usual encoding; decoders accept both).
    """
    code_pos = 0
    out = 1
    code = 1
    for i in range(n):
        b = src[i]
        if b == 0:
            dst[code_pos] = code
            code_pos = out
            out += 1
            code = 1
        else:
            dst[out] = b
            out += 1
            code += 1
            if code == 0xFF and i + 1 < n:
                dst[code_pos] = code
                code_pos = out
                out += 1
                code = 1
    dst[code_pos] = code
    dst[out] = 0
    return out + 1


def cobs_encode(data: bytes) -> bytes:
    """The COBS encoding of ``data`` with its ``0x00`` delimiter (allocates; for tests and tools)."""
    dst = bytearray(len(data) + len(data) // 254 + 2)
    n = cobs_encode_into(data, len(data), dst)
    return bytes(dst[:n])


def cobs_decode_into(src: "bytes | bytearray", n: int, dst: bytearray) -> int:
    """Decode the COBS block sequence ``src[:n]`` (no delimiter) into ``dst``; returns the decoded length,
    or -1 if malformed (a zero, a group running past the end) or -2 if it does not fit ``dst``."""
    i = 0
    out = 0
    cap = len(dst)
    while i < n:
        code = src[i]
        if code == 0:
            return -1
        i += 1
        end = i + code - 1
        if end > n:
            return -1
        if out + code - 1 > cap:
            return -2
        while i < end:
            dst[out] = src[i]
            out += 1
            i += 1
        if code != 0xFF and i < n:
            if out >= cap:
                return -2
            dst[out] = 0
            out += 1
    return out


def build_frame(
    buf: bytearray, flags: int, seq: int, ack: int, msg_type: int, payload: bytes, version: int = 1
) -> int:
    """Write a decoded frame into ``buf`` (at least 9 + len(payload) bytes); returns its length."""
    n = len(payload)
    struct.pack_into("<BBBBBH", buf, 0, version, flags, seq, ack, msg_type, n)
    for i in range(n):
        buf[HEADER_LEN + i] = payload[i]
    end = HEADER_LEN + n
    struct.pack_into("<H", buf, end, crc16(buf, end))
    return end + CRC_LEN


def encode_frame(flags: int, seq: int, ack: int, msg_type: int, payload: bytes, version: int = 1) -> bytes:
    """One complete wire frame (COBS and delimiter) — allocates; for tests, the emulator and tools."""
    buf = bytearray(MIN_FRAME + len(payload))
    n = build_frame(buf, flags, seq, ack, msg_type, payload, version)
    return cobs_encode(bytes(buf[:n]))


class FrameDecoder:
    """Streaming COBS + CRC frame decoder that resynchronises at every ``0x00``.

    ``handler(frame, n)`` is called for each frame that is well formed (COBS, 9–256 bytes, CRC and
    ``length`` right) with the decoder's own buffer, valid until the handler returns. The version byte is
    left to the handler. Counters: ``frames`` (good), ``crc_errors``, ``malformed`` (bad COBS, too short,
    ``length`` wrong), ``oversize`` (more than 256 decoded bytes), ``bytes``.
    """

    def __init__(self, handler: "Callable[[bytearray, int], None]") -> None:
        self.handler = handler
        self._raw = bytearray(MAX_ENCODED)
        self._n = 0
        self._overflow = False
        self.frame = bytearray(MAX_FRAME)
        self.frames = 0
        self.crc_errors = 0
        self.malformed = 0
        self.oversize = 0
        self.bytes = 0

    def reset(self) -> None:
        """Forget a partial frame (the next bytes start a new one)."""
        self._n = 0
        self._overflow = False

    def feed(self, data: "bytes | bytearray | memoryview") -> None:
        """Take received bytes; calls the handler for each complete good frame."""
        self.bytes += len(data)
        raw = self._raw
        for b in data:
            if b != 0:
                if self._n < MAX_ENCODED:
                    raw[self._n] = b
                    self._n += 1
                else:
                    self._overflow = True
                continue
            if self._overflow:
                self.oversize += 1
            elif self._n:
                self._finish()
            self._n = 0
            self._overflow = False

    def _finish(self) -> None:
        n = cobs_decode_into(self._raw, self._n, self.frame)
        if n == -2:
            self.oversize += 1
            return
        if n < 0:
            self.malformed += 1  # a group running past the end: a damaged frame
            return
        frame = self.frame
        if n < MIN_FRAME:
            self.malformed += 1
            return
        if crc16(frame, n - CRC_LEN) != frame[n - 2] | (frame[n - 1] << 8):
            self.crc_errors += 1
            return
        if frame[5] | (frame[6] << 8) != n - MIN_FRAME:
            self.malformed += 1
            return
        self.frames += 1
        self.handler(frame, n)


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104) by hand: MicroPython has ``hashlib.sha256`` but no ``hmac``."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = bytes(key) + bytes(64 - len(key))
    inner = hashlib.sha256(bytes([b ^ 0x36 for b in key]))
    inner.update(msg)
    outer = hashlib.sha256(bytes([b ^ 0x5C for b in key]))
    outer.update(inner.digest())
    return outer.digest()


def bootloader_mac(key: bytes, session_id: int, nonce: int) -> bytes:
    """The 16-byte MAC an ``ENTER_BOOTLOADER`` must carry for this session and nonce (§4)."""
    return hmac_sha256(key, b"doorway-boot" + struct.pack("<II", session_id, nonce))[:16]


def _same(a: bytes, b: bytes) -> bool:
    """Compare in time independent of where the first difference is."""
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0


class Hardware:
    """What the core needs from the board; this base is a board with nothing attached.

    ``main.py`` subclasses it with ``machine`` pins, the emulator with a simulation. All methods are called
    from the core's one loop and must return within a millisecond or so. Sensor reads return ``None``
    when the sensor is absent or failed.
    """

    channels = 0  # light channels
    capabilities = 0  # CAP_* bits, without CAP_BOOTLOADER (the core adds it when there is a key)
    hw_rev = 0

    def set_channel(self, index: int, brightness: int, cct_k: int, r: int, g: int, b: int) -> None:
        """Drive light channel ``index``: brightness 0–1000 ‰ (perceptual), colour temperature in K, RGB."""

    def read_lux_centi(self) -> "int | None":
        """Illuminance in lux × 100."""
        return None

    def read_temp_centi(self) -> "int | None":
        """Temperature in °C × 100."""
        return None

    def read_humidity_centi(self) -> "int | None":
        """Relative humidity in % × 100."""
        return None

    def motion(self) -> bool:
        """True if the presence sensor saw motion since the last call (or sees it now)."""
        return False

    def button(self) -> bool:
        """Raw (undebounced) level of the privacy button: True while pressed."""
        return False

    def switch(self) -> bool:
        """Raw (undebounced) level of the privacy switch: True when on."""
        return False

    def unique_id(self) -> bytes:
        """The board's 8-byte unique id."""
        return bytes(8)

    def boot_reason(self) -> int:
        """Why this boot happened, a BOOT_* value."""
        return BOOT_UNKNOWN

    def random32(self) -> int:
        """32 random bits, for the session id."""
        return 0

    def bootloader_key(self) -> "bytes | None":
        """The ENTER_BOOTLOADER HMAC key, or None when this board has none (the command is then refused)."""
        return None

    def enter_bootloader(self) -> None:
        """Reboot into the USB bootloader (on the Pico ``machine.bootloader()``); may not return."""

    def reset(self) -> None:
        """Reboot the board (on the Pico ``machine.reset()``); may not return."""


class Core:
    """The MCU's protocol engine: framing, the reliable link, commands, reports, failsafe.

    Single-threaded: call :meth:`feed`, :meth:`poll` and :meth:`take_output` from one loop. ``now`` is
    always ``ticks_ms()``. ``proto_major`` other than 1 emulates an incompatible firmware: every frame goes
    out with that version and only that version is accepted, except that every HELLO_REQ is answered with a
    HELLO whatever its version (§2), which is how the host learns it must refuse this firmware.
    """

    def __init__(
        self, hw: Hardware, now: int, proto_major: int = PROTO_MAJOR, fw_major: int = FW_MAJOR
    ) -> None:
        self.hw = hw
        self.proto_major = proto_major
        self.fw_major = fw_major
        self.session_id = hw.random32() & 0xFFFFFFFF
        self.boot_reason = hw.boot_reason()
        self.decoder = FrameDecoder(self._on_frame)
        self._key = hw.bootloader_key()
        self.capabilities = hw.capabilities | (CAP_BOOTLOADER if self._key else 0)
        self._enc = bytearray(MAX_ENCODED + 1)
        self._scratch = bytearray(MAX_FRAME)
        self._out = bytearray()
        self._now = now
        self.uptime_ms = 0
        # Receive side.
        self.expected = 0
        self._ack_pending = False
        self._hello_nonce = -1
        self._last_rx = now
        # Send side.
        self._slots = [bytearray(MAX_FRAME) for _ in range(WINDOW)]
        self._slot_len = [0] * WINDOW
        self._tx_base = 0
        self._tx_count = 0
        self._pending = []  # type: list[tuple[int, bytes]]
        self._rto = RTO_MIN_MS
        self._retries = 0
        self._rto_at = now
        self.link_down = False
        self._last_tx = now
        # Lights: per channel [brightness, cct, r, g, b] now, at fade start, and target.
        ch = hw.channels
        self._cur = [[0, DEFAULT_CCT_K, 0, 0, 0] for _ in range(ch)]
        self._start = [[0, DEFAULT_CCT_K, 0, 0, 0] for _ in range(ch)]
        self._target = [[0, DEFAULT_CCT_K, 0, 0, 0] for _ in range(ch)]
        self._fade_t0 = [now] * ch
        self._fade_ms = [0] * ch
        self._fading = [False] * ch
        for i in range(ch):
            hw.set_channel(i, 0, DEFAULT_CCT_K, 0, 0, 0)
        # Failsafe.
        self.failsafe = False
        self.failsafe_timeout_ms = FAILSAFE_DEFAULT_MS
        self.failsafe_scene = SCENE_SAFE
        # Sensors and inputs.
        self._sample_at = now
        self._report_at = now
        self._reported = [-1, -1, -1, -1]  # lux, temp, humidity, presence as last reported
        self._readings = [0, 0, 0, 0, 0]  # valid bits, lux, temp, humidity, presence
        self.presence = False
        self._last_motion = now
        self._btn_raw = hw.button()
        self._btn = self._btn_raw
        self._btn_since = now
        self._sw_raw = hw.switch()
        self._sw = self._sw_raw
        self._sw_since = now
        self._boot_at = -1
        # Observer for the emulator and tests: called as on_apply(type, payload_bytes) for every frame
        # applied (each reliable one exactly once). None on the board, where it costs one test per frame.
        self.on_apply = None  # type: Callable[[int, bytes], None] | None
        # Counters (see stats()).
        self.rx_bad_version = 0
        self.rx_duplicates = 0
        self.rx_out_of_order = 0
        self.rx_applied = 0
        self.tx_frames = 0
        self.tx_retransmits = 0
        self.tx_acks = 0
        self.tx_dropped = 0
        self.tx_overflow = 0
        self.errors_sent = 0
        self.link_lost = 0
        self.hello_sent = 0
        self.failsafe_entered = 0
        self.bootloader_refused = 0
        self._send_hello()

    # ----- public API -----

    def feed(self, data: "bytes | bytearray | memoryview", now: int) -> None:
        """Bytes received from the host, in order; applies every complete frame."""
        self._tick(now)
        self.decoder.feed(data)

    def poll(self, now: int) -> None:
        """Run the timers: acks, retransmission, heartbeats, fades, sensors, inputs, failsafe."""
        self._tick(now)
        if self._boot_at >= 0 and ticks_diff(now, self._boot_at) >= 0:
            self._boot_at = -1
            self.hw.enter_bootloader()
        self._poll_inputs(now)
        self._poll_sensors(now)
        if not self.failsafe and ticks_diff(now, self._last_rx) >= self.failsafe_timeout_ms:
            self._enter_failsafe(now)
        self._poll_fades(now)
        if self._tx_count and not self.link_down and ticks_diff(now, self._rto_at) >= 0:
            if self._retries >= MAX_RETRIES:
                self.link_down = True
                self.link_lost += 1
            else:
                self._retries += 1
                self._rto = min(self._rto * 2, RTO_MAX_MS)
                self._rto_at = ticks_add(now, self._rto)
                for i in range(self._tx_count):
                    self._transmit_slot((self._tx_base + i) & 0xFF)
                    self.tx_retransmits += 1
        if self._ack_pending:
            self._send_unreliable(T_ACK, b"")
            self.tx_acks += 1
        if ticks_diff(now, self._last_tx) >= HEARTBEAT_MS:
            self._send_unreliable(T_HEARTBEAT, struct.pack("<I", self.uptime_ms & 0xFFFFFFFF))

    def take_output(self) -> bytes:
        """Everything to write to the serial port since the last call (empty bytes if nothing)."""
        if not self._out:
            return b""
        out = bytes(self._out)
        self._out = bytearray()
        return out

    def lights(self) -> "list[list[int]]":
        """Per channel ``[brightness, cct_k, r, g, b]`` as driven now (copies)."""
        return [list(c) for c in self._cur]

    def targets(self) -> "list[list[int]]":
        """Per channel ``[brightness, cct_k, r, g, b]`` set-points (copies)."""
        return [list(c) for c in self._target]

    def stats(self) -> "dict[str, int]":
        """All counters by name."""
        d = self.decoder
        return {
            "rx_bytes": d.bytes,
            "rx_frames": d.frames,
            "rx_crc_errors": d.crc_errors,
            "rx_malformed": d.malformed,
            "rx_oversize": d.oversize,
            "rx_bad_version": self.rx_bad_version,
            "rx_duplicates": self.rx_duplicates,
            "rx_out_of_order": self.rx_out_of_order,
            "rx_applied": self.rx_applied,
            "tx_frames": self.tx_frames,
            "tx_retransmits": self.tx_retransmits,
            "tx_acks": self.tx_acks,
            "tx_dropped": self.tx_dropped,
            "tx_overflow": self.tx_overflow,
            "tx_unacked": self._tx_count,
            "tx_pending": len(self._pending),
            "errors_sent": self.errors_sent,
            "link_lost": self.link_lost,
            "hello_sent": self.hello_sent,
            "failsafe_entered": self.failsafe_entered,
            "bootloader_refused": self.bootloader_refused,
        }

    # ----- sending -----

    def _tick(self, now: int) -> None:
        d = ticks_diff(now, self._now)
        if d > 0:
            self.uptime_ms += d
            self._now = now

    def _emit(self, buf: bytearray, n: int) -> None:
        m = cobs_encode_into(buf, n, self._enc)
        if len(self._out) + m > OUTPUT_MAX:
            self.tx_overflow += 1
            return
        self._out.extend(memoryview(self._enc)[:m])
        self.tx_frames += 1
        self._last_tx = self._now
        self._ack_pending = False

    def _send_unreliable(self, msg_type: int, payload: bytes, version: int = -1) -> None:
        if version < 0:
            version = self.proto_major
        n = build_frame(self._scratch, 0, 0, (self.expected - 1) & 0xFF, msg_type, payload, version)
        self._emit(self._scratch, n)

    def _transmit_slot(self, seq: int) -> None:
        buf = self._slots[seq % WINDOW]
        n = self._slot_len[seq % WINDOW]
        # Retransmissions keep their seq but carry the current ack.
        buf[3] = (self.expected - 1) & 0xFF
        struct.pack_into("<H", buf, n - CRC_LEN, crc16(buf, n - CRC_LEN))
        self._emit(buf, n)

    def _send_reliable(self, msg_type: int, payload: bytes) -> None:
        if self._tx_count < WINDOW and not self._pending:
            self._start_reliable(msg_type, payload)
            return
        if len(self._pending) >= PENDING_MAX:
            self.tx_dropped += 1
            return
        self._pending.append((msg_type, payload))

    def _start_reliable(self, msg_type: int, payload: bytes) -> None:
        seq = (self._tx_base + self._tx_count) & 0xFF
        i = seq % WINDOW
        self._slot_len[i] = build_frame(
            self._slots[i], FLAG_RELIABLE, seq, 0, msg_type, payload, self.proto_major
        )
        if self._tx_count == 0:
            self._rto = RTO_MIN_MS
            self._retries = 0
            self._rto_at = ticks_add(self._now, RTO_MIN_MS)
        self._tx_count += 1
        if not self.link_down:
            self._transmit_slot(seq)

    def _fill_window(self) -> None:
        while self._pending and self._tx_count < WINDOW:
            msg_type, payload = self._pending.pop(0)
            self._start_reliable(msg_type, payload)

    def _on_ack(self, ack: int) -> None:
        d = (ack - self._tx_base) & 0xFF
        if d >= self._tx_count:
            return  # an old ack, or one from before a reset: acknowledges nothing new
        self._tx_base = (ack + 1) & 0xFF
        self._tx_count -= d + 1
        self._retries = 0
        self._rto = RTO_MIN_MS
        self._rto_at = ticks_add(self._now, RTO_MIN_MS)
        self._fill_window()

    def _restart_tx(self) -> None:
        """Renumber everything not yet acknowledged from seq 0 (a new host connection)."""
        waiting = []
        for k in range(self._tx_count):
            i = ((self._tx_base + k) & 0xFF) % WINDOW
            buf = self._slots[i]
            n = self._slot_len[i]
            waiting.append((buf[4], bytes(buf[HEADER_LEN : n - CRC_LEN])))
        waiting.extend(self._pending)
        self._pending = []
        self._tx_base = 0
        self._tx_count = 0
        self.link_down = False
        for msg_type, payload in waiting:
            self._send_reliable(msg_type, payload)

    def _send_hello(self) -> None:
        hw = self.hw
        uid = bytes(hw.unique_id())[:8]
        uid = uid + bytes(8 - len(uid))
        head = struct.pack(
            "<BBBBBIB",
            self.proto_major,
            PROTO_MINOR,
            self.fw_major,
            FW_MINOR,
            FW_PATCH,
            FW_BUILD,
            hw.hw_rev & 0xFF,
        )
        tail = struct.pack("<HBIB", self.capabilities, self.boot_reason & 0xFF, self.session_id, hw.channels)
        self._send_unreliable(T_HELLO, head + uid + tail)
        self.hello_sent += 1

    def _send_error(self, code: int, ref_type: int, ref_seq: int) -> None:
        self.errors_sent += 1
        self._send_reliable(T_ERROR, bytes((code, ref_type, ref_seq)))

    def _send_event(self, kind: int, value: int) -> None:
        self._send_reliable(T_EVENT, struct.pack("<BBI", kind, value, self.uptime_ms & 0xFFFFFFFF))

    def _send_light_state(self) -> None:
        ch = self.hw.channels
        buf = bytearray(1 + LIGHT_STATE_CHANNEL_LEN * ch)
        buf[0] = ch
        for i in range(ch):
            t = self._target[i]
            struct.pack_into("<HHBBB", buf, 1 + LIGHT_STATE_CHANNEL_LEN * i, t[0], t[1], t[2], t[3], t[4])
        payload = bytes(buf)
        # A report still waiting for a window slot is replaced: only the newest state matters.
        for k in range(len(self._pending)):
            if self._pending[k][0] == T_LIGHT_STATE:
                self._pending[k] = (T_LIGHT_STATE, payload)
                return
        self._send_reliable(T_LIGHT_STATE, payload)

    # ----- receiving -----

    def _on_frame(self, frame: bytearray, n: int) -> None:
        version = frame[0]
        flags = frame[1]
        seq = frame[2]
        msg_type = frame[4]
        if msg_type == T_HELLO_REQ and version != self.proto_major:
            # Accepted whatever its version (§2): a host of another major must still learn which version
            # this firmware speaks, so it is answered, and nothing else changes.
            self._frame_valid()
            self._send_hello()
            return
        if msg_type == T_HELLO_REQ and n - MIN_FRAME == HELLO_REQ_LEN:
            self._frame_valid()
            self._on_hello_req(struct.unpack_from("<I", frame, HEADER_LEN + 2)[0])
            return
        if version != self.proto_major:
            self.rx_bad_version += 1
            return
        self._on_ack(frame[3])
        self._frame_valid()
        if flags & FLAG_RELIABLE:
            if seq != self.expected:
                if 1 <= ((self.expected - seq) & 0xFF) <= WINDOW:
                    # A retransmission whose ack was lost: acknowledge again, do not apply again.
                    self.rx_duplicates += 1
                    self._ack_pending = True
                else:
                    # One before it was lost: drop it; the host sends it again after the gap.
                    self.rx_out_of_order += 1
                return
            self.expected = (self.expected + 1) & 0xFF
            self._ack_pending = True
        self.rx_applied += 1
        self._apply(msg_type, frame, n - MIN_FRAME, seq if flags & FLAG_RELIABLE else 0)

    def _frame_valid(self) -> None:
        self._last_rx = self._now
        if self.failsafe:
            self.failsafe = False
            self._send_event(EV_FAILSAFE_LEFT, 0)
        if self.link_down:
            # The host is back: retransmit at once with a fresh retry budget.
            self.link_down = False
            self._retries = 0
            self._rto = RTO_MIN_MS
            self._rto_at = self._now

    def _on_hello_req(self, nonce: int) -> None:
        new = nonce != self._hello_nonce
        if new:
            self._hello_nonce = nonce
            self.expected = 0
            self._ack_pending = False
        # HELLO first: a host that waits for it before reading anything else loses nothing.
        self._send_hello()
        if new:
            self._restart_tx()
            if self.hw.capabilities & CAP_SWITCH:
                # A new connection learns the privacy switch's position without waiting for it to move.
                self._send_event(EV_SWITCH, 1 if self._sw else 0)

    def _apply(self, msg_type: int, frame: bytearray, plen: int, seq: int) -> None:
        p = HEADER_LEN
        if self.on_apply is not None:
            self.on_apply(msg_type, bytes(frame[p : p + plen]))
        if msg_type == T_SET_LIGHT:
            if plen != SET_LIGHT_LEN:
                self._send_error(E_BAD_LENGTH, msg_type, seq)
                return
            channel, brightness, cct, r, g, b, fade = struct.unpack_from("<BHHBBBH", frame, p)
            code = self._check_light(channel, brightness, cct, r, g, b)
            if code:
                self._send_error(code, msg_type, seq)
                return
            first, last = (0, self.hw.channels) if channel == ALL_CHANNELS else (channel, channel + 1)
            for i in range(first, last):
                self._set_target(i, brightness, cct if cct else self._target[i][1], r, g, b, fade)
            self._send_light_state()
        elif msg_type == T_SET_SCENE:
            if plen != SET_SCENE_LEN:
                self._send_error(E_BAD_LENGTH, msg_type, seq)
                return
            scene, fade = struct.unpack_from("<BH", frame, p)
            if scene >= len(SCENES):
                self._send_error(E_OUT_OF_RANGE, msg_type, seq)
                return
            if not self.hw.channels:
                self._send_error(E_NOT_SUPPORTED, msg_type, seq)
                return
            self._apply_scene(scene, fade)
            self._send_light_state()
        elif msg_type == T_SET_FAILSAFE:
            if plen != SET_FAILSAFE_LEN:
                self._send_error(E_BAD_LENGTH, msg_type, seq)
                return
            timeout, scene = struct.unpack_from("<HB", frame, p)
            if not FAILSAFE_MIN_MS <= timeout <= FAILSAFE_MAX_MS or scene >= len(SCENES):
                self._send_error(E_OUT_OF_RANGE, msg_type, seq)
                return
            self.failsafe_timeout_ms = timeout
            self.failsafe_scene = scene
        elif msg_type == T_ENTER_BOOTLOADER:
            if plen != ENTER_BOOTLOADER_LEN:
                self._send_error(E_BAD_LENGTH, msg_type, seq)
                return
            if not self._key:
                self._send_error(E_NOT_SUPPORTED, msg_type, seq)
                return
            nonce = struct.unpack_from("<I", frame, p)[0]
            mac = bytes(frame[p + 4 : p + 20])
            if not _same(mac, bootloader_mac(self._key, self.session_id, nonce)):
                self.bootloader_refused += 1
                self._send_error(E_BOOTLOADER_REFUSED, msg_type, seq)
                return
            # The hook runs from poll() a little later, after the ACK for this frame has gone out.
            self._boot_at = ticks_add(self._now, BOOTLOADER_DELAY_MS)
        elif msg_type == T_HELLO_REQ:
            self._send_error(E_BAD_LENGTH, msg_type, seq)  # too short to carry a nonce
        elif msg_type == T_ACK:
            if plen:
                self._send_error(E_BAD_LENGTH, msg_type, seq)
        elif msg_type == T_HEARTBEAT:
            if plen != 4:
                self._send_error(E_BAD_LENGTH, msg_type, seq)
        else:
            # Includes the MCU→host types: a host never sends those.
            self._send_error(E_UNKNOWN_TYPE, msg_type, seq)

    def _check_light(self, channel: int, brightness: int, cct: int, r: int, g: int, b: int) -> int:
        hw = self.hw
        if not hw.channels:
            return E_NOT_SUPPORTED
        if channel != ALL_CHANNELS and channel >= hw.channels:
            return E_OUT_OF_RANGE
        if brightness > MAX_BRIGHTNESS or (cct and not CCT_MIN_K <= cct <= CCT_MAX_K):
            return E_OUT_OF_RANGE
        if (r or g or b) and not hw.capabilities & CAP_RGB:
            return E_NOT_SUPPORTED
        return 0

    # ----- lights -----

    def _set_target(self, i: int, brightness: int, cct: int, r: int, g: int, b: int, fade_ms: int) -> None:
        cur = self._cur[i]
        start = self._start[i]
        target = self._target[i]
        for k in range(5):
            start[k] = cur[k]
        target[0] = brightness
        target[1] = cct
        target[2] = r
        target[3] = g
        target[4] = b
        self._fade_t0[i] = self._now
        self._fade_ms[i] = fade_ms
        self._fading[i] = True
        self._step_channel(i, self._now)

    def _apply_scene(self, scene: int, fade_ms: int) -> None:
        brightness, cct = SCENES[scene]
        for i in range(self.hw.channels):
            self._set_target(i, brightness, cct, 0, 0, 0, fade_ms)

    def _step_channel(self, i: int, now: int) -> None:
        cur = self._cur[i]
        start = self._start[i]
        target = self._target[i]
        elapsed = ticks_diff(now, self._fade_t0[i])
        dur = self._fade_ms[i]
        changed = False
        if elapsed >= dur or elapsed < 0:
            self._fading[i] = False
            for k in range(5):
                if cur[k] != target[k]:
                    cur[k] = target[k]
                    changed = True
        else:
            for k in range(5):
                v = start[k] + (target[k] - start[k]) * elapsed // dur
                if v != cur[k]:
                    cur[k] = v
                    changed = True
        if changed:
            self.hw.set_channel(i, cur[0], cur[1], cur[2], cur[3], cur[4])

    def _poll_fades(self, now: int) -> None:
        for i in range(self.hw.channels):
            if self._fading[i]:
                self._step_channel(i, now)

    def _enter_failsafe(self, now: int) -> None:
        self.failsafe = True
        self.failsafe_entered += 1
        if self.hw.channels:
            self._apply_scene(self.failsafe_scene, FAILSAFE_FADE_MS)
        self._send_event(EV_FAILSAFE_ENTERED, self.failsafe_scene)
        if self.hw.channels:
            self._send_light_state()

    # ----- inputs and sensors -----

    def _poll_inputs(self, now: int) -> None:
        hw = self.hw
        caps = hw.capabilities
        if caps & CAP_BUTTON:
            raw = hw.button()
            if raw != self._btn_raw:
                self._btn_raw = raw
                self._btn_since = now
            elif raw != self._btn and ticks_diff(now, self._btn_since) >= DEBOUNCE_MS:
                self._btn = raw
                if raw:
                    self._send_event(EV_BUTTON, 0)
        if caps & CAP_SWITCH:
            raw = hw.switch()
            if raw != self._sw_raw:
                self._sw_raw = raw
                self._sw_since = now
            elif raw != self._sw and ticks_diff(now, self._sw_since) >= DEBOUNCE_MS:
                self._sw = raw
                self._send_event(EV_SWITCH, 1 if raw else 0)
        if caps & CAP_PRESENCE:
            if hw.motion():
                self._last_motion = now
                if not self.presence:
                    self.presence = True
                    self._send_event(EV_PRESENCE, 1)
            elif self.presence and ticks_diff(now, self._last_motion) >= PRESENCE_HOLD_MS:
                self.presence = False
                self._send_event(EV_PRESENCE, 0)

    def _poll_sensors(self, now: int) -> None:
        if ticks_diff(now, self._sample_at) < 0:
            return
        self._sample_at = ticks_add(now, SENSOR_SAMPLE_MS)
        hw = self.hw
        caps = hw.capabilities
        if not caps & (CAP_LIGHT_SENSOR | CAP_TEMPERATURE | CAP_HUMIDITY | CAP_PRESENCE):
            return  # a board without sensors has nothing to report
        r = self._readings
        valid = 0
        lux = hw.read_lux_centi() if caps & CAP_LIGHT_SENSOR else None
        temp = hw.read_temp_centi() if caps & CAP_TEMPERATURE else None
        hum = hw.read_humidity_centi() if caps & CAP_HUMIDITY else None
        if lux is not None:
            valid |= VALID_LUX
            r[1] = min(max(lux, 0), 0xFFFFFFFF)
        if temp is not None:
            valid |= VALID_TEMP
            r[2] = min(max(temp, -32768), 32767)
        if hum is not None:
            valid |= VALID_HUMIDITY
            r[3] = min(max(hum, 0), 10000)
        if caps & CAP_PRESENCE:
            valid |= VALID_PRESENCE
            r[4] = 1 if self.presence else 0
        r[0] = valid
        last = self._reported
        due = ticks_diff(now, self._report_at) >= 0 or (valid & VALID_PRESENCE and r[4] != last[3])
        if not due and valid & VALID_LUX:
            step = max(LUX_STEP_CENTI, last[0] // LUX_STEP_DIV)
            due = last[0] < 0 or abs(r[1] - last[0]) > step
        if not due and valid & VALID_TEMP:
            due = abs(r[2] - last[1]) >= TEMP_STEP_CENTI
        if not due and valid & VALID_HUMIDITY:
            due = abs(r[3] - last[2]) >= HUMIDITY_STEP_CENTI
        if due:
            self._report_at = ticks_add(now, SENSOR_PERIOD_MS)
            last[0] = r[1] if valid & VALID_LUX else -1
            last[1] = r[2]
            last[2] = r[3]
            last[3] = r[4]
            self._send_unreliable(
                T_SENSORS, struct.pack("<IBIhHB", self.uptime_ms & 0xFFFFFFFF, valid, r[1], r[2], r[3], r[4])
            )
