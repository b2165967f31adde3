"""Doorway room-controller firmware for the Raspberry Pi Pico (RP2040, MicroPython 1.22+): the board side.

Copied to the Pico's filesystem as ``main.py`` with ``protocol_core.py`` beside it (README.md says how);
MicroPython runs it at every boot. The protocol lives in ``protocol_core``; this file is the hardware: white
LED strips on PWM pins (a warm and a cold strip per channel, mixed for colour temperature), an optional
NeoPixel RGB strip, a light sensor on an ADC pin, the RP2040's own temperature sensor, a PIR presence sensor
on an interrupt, the privacy button and switch, the USB serial port, and the watchdog. The tests run it
under CPython on the fake ``machine`` in ``tests/hwcontrol/firmware/fake_machine.py``.

Theory of operation
-------------------
One loop, never blocking for more than a few ms: read what USB has (at most ``READ_CHUNK`` bytes, each
checked with ``select.poll`` first, because a read of stdin blocks until it has the bytes asked for), feed
the core, let it poll its timers (which reads inputs, moves fades and calls :meth:`Board.set_channel`),
write what it produced, feed the watchdog, sleep 1 ms. Ctrl-C handling on stdin is switched off
(``micropython.kbd_intr(-1)``) because 0x03 is an ordinary byte in binary frames; so to reach the REPL
(for ``mpremote``) hold the privacy button while the board boots. The PIR's rising edge is latched by an
interrupt so a pulse shorter than a loop turn is not missed. Why the board booted comes from
``machine.reset_cause()``, refined by a one-byte marker file written just before a deliberate reset
(``machine.reset()`` on the RP2040 is a watchdog reset, so without the marker it would read "watchdog").
An exception escaping the loop is a firmware bug: the board marks "failsafe reset" and reboots, and the
host sees the reason in the next HELLO.
"""

import os
import select
import sys

import machine  # type: ignore[import-not-found]
import micropython  # type: ignore[import-not-found]

try:
    import utime as time  # type: ignore[import-not-found]
except ImportError:
    import time
try:
    import neopixel  # type: ignore[import-not-found]
except ImportError:
    neopixel = None
try:
    from hwcontrol.firmware import protocol_core as core
except ImportError:
    import protocol_core as core  # type: ignore[import-not-found,no-redef]  # on the Pico: the file beside

# ----- Wiring (GPIO numbers; README.md has the table) -----
# White channels: (warm strip pin, cold strip pin). Each pin is on its own PWM slice channel
# (GP2=1A, GP3=1B, GP4=2A, GP5=2B), so all four can run at once.
WHITE_CHANNELS = ((2, 3), (4, 5))
WARM_K = 2700  # colour temperature of the warm strips
COLD_K = 6500  # ... and of the cold ones
# 20 kHz: above hearing (no coil whine) and fast enough that cameras show no rolling-shutter bands.
PWM_FREQ_HZ = 20000
# Perceptual brightness: duty = (‰ / 1000) ** GAMMA, so equal steps look equal and fades look even.
GAMMA = 2.2
NEOPIXEL_PIN = 16  # None without an RGB strip
NEOPIXEL_COUNT = 30
NEOPIXEL_CHANNEL = 0  # the light channel whose RGB values the strip shows
LUX_ADC_PIN = 26  # ADC0; None without a light sensor
TEMP_ADC_CHANNEL = 4  # the RP2040's internal temperature sensor
PIR_PIN = 15  # None without a presence sensor
BUTTON_PIN = 14  # privacy button to GND (internal pull-up); None without
SWITCH_PIN = 13  # privacy switch to GND when on (internal pull-up); None without
STATUS_LED_PIN = 25  # the Pico's own LED: blinks while the loop runs
HW_REV = 1

# Light sensor: an LDR from the ADC pin to GND, a fixed resistor from 3V3 to the pin. Its resistance
# follows R = R10 * (lux / 10) ** -LDR_GAMMA (GL5528-class: about 10 kΩ at 10 lux, gamma 0.7). This is an
# approximation good to a factor of about two: enough to tell a dark room from a bright one.
LDR_FIXED_OHM = 10000
LDR_R10_OHM = 10000
LDR_GAMMA = 0.7
LUX_SAMPLES = 4
ADC_VREF = 3.3

WDT_TIMEOUT_MS = 2000  # the RP2040's watchdog allows up to 8388 ms
READ_CHUNK = 128  # bytes read per loop turn at most: bounds the turn to a few ms
LOOP_SLEEP_MS = 1
BLINK_MS = 500

KEY_FILE = "bootkey.bin"  # the ENTER_BOOTLOADER HMAC key (32 bytes), put there when provisioning
MARK_FILE = "bootmark.bin"  # one byte: the boot reason of the next boot, written before a deliberate reset


def temperature_centi(raw_u16: int) -> int:
    """RP2040 datasheet §4.9.5: T = 27 − (V − 0.706) / 0.001721, V from the 16-bit ADC reading; °C × 100."""
    volts = raw_u16 * ADC_VREF / 65535
    return round((27 - (volts - 0.706) / 0.001721) * 100)


def lux_centi(raw_u16: int) -> "int | None":
    """Lux × 100 from the LDR divider reading (see LDR_*); None when the reading is at a rail (no sensor)."""
    if raw_u16 <= 0 or raw_u16 >= 65535:
        return None
    r_ldr = LDR_FIXED_OHM * raw_u16 / (65535 - raw_u16)
    return int(10 * (LDR_R10_OHM / r_ldr) ** (1 / LDR_GAMMA) * 100)


def mix_duties(brightness: int, cct_k: int) -> "tuple[int, int]":
    """16-bit PWM duties (warm, cold) for brightness ‰ at colour temperature ``cct_k``.

    The mix is linear in mired (1e6 / K), as colour temperature is perceived; outside the strips' range it
    clamps to the nearer strip. The two duties add up to the total light, so a colour change alone keeps
    the brightness.
    """
    if brightness <= 0:
        return 0, 0
    total = (min(brightness, 1000) / 1000) ** GAMMA
    if cct_k <= 0:
        cct_k = WARM_K
    warm_m = 1e6 / WARM_K
    cold_m = 1e6 / COLD_K
    f = (warm_m - 1e6 / cct_k) / (warm_m - cold_m)
    f = min(max(f, 0.0), 1.0)
    return round(total * (1 - f) * 65535), round(total * f * 65535)


def read_mark() -> int:
    """The boot-reason marker left before the last deliberate reset (deleted once read), or -1."""
    try:
        with open(MARK_FILE, "rb") as f:
            data = f.read(1)
        os.remove(MARK_FILE)
        return data[0] if data else -1
    except OSError:
        return -1


def write_mark(reason: int) -> None:
    try:
        with open(MARK_FILE, "wb") as f:
            f.write(bytes((reason,)))
    except OSError:
        pass  # a full or read-only filesystem only costs the next HELLO its exact boot reason


def boot_reason() -> int:
    """HELLO's boot_reason from the marker file and ``machine.reset_cause()``."""
    mark = read_mark()
    if mark >= 0:
        return mark
    cause = machine.reset_cause()
    if cause == machine.PWRON_RESET:
        return core.BOOT_POWER_ON
    if cause == machine.WDT_RESET:
        return core.BOOT_WATCHDOG
    if cause == getattr(machine, "BROWN_OUT_RESET", None):
        return core.BOOT_BROWN_OUT
    if cause == getattr(machine, "SOFT_RESET", None):
        return core.BOOT_SOFTWARE
    return core.BOOT_UNKNOWN


class Board(core.Hardware):
    """The Pico's pins behind :class:`protocol_core.Hardware` (constants at the top of this file)."""

    def __init__(self) -> None:
        pin_cls = machine.Pin
        self.channels = len(WHITE_CHANNELS)
        self.hw_rev = HW_REV
        caps = core.CAP_TEMPERATURE
        self._pwms = []
        for warm, cold in WHITE_CHANNELS:
            pair = []
            for pin in (warm, cold):
                pwm = machine.PWM(pin_cls(pin))
                pwm.freq(PWM_FREQ_HZ)
                pwm.duty_u16(0)
                pair.append(pwm)
            self._pwms.append(pair)
        if WHITE_CHANNELS:
            caps |= core.CAP_PWM
        self._np = None
        if NEOPIXEL_PIN is not None and neopixel is not None:
            self._np = neopixel.NeoPixel(pin_cls(NEOPIXEL_PIN), NEOPIXEL_COUNT)
            self._np.fill((0, 0, 0))
            self._np.write()
            caps |= core.CAP_RGB
        self._lux_adc = None
        if LUX_ADC_PIN is not None:
            self._lux_adc = machine.ADC(LUX_ADC_PIN)
            caps |= core.CAP_LIGHT_SENSOR
        self._temp_adc = machine.ADC(TEMP_ADC_CHANNEL)
        self._motion = False
        self._pir = None
        if PIR_PIN is not None:
            self._pir = pin_cls(PIR_PIN, pin_cls.IN, pin_cls.PULL_DOWN)
            self._pir.irq(trigger=pin_cls.IRQ_RISING, handler=self._on_pir)
            caps |= core.CAP_PRESENCE
        self._button = None
        if BUTTON_PIN is not None:
            self._button = pin_cls(BUTTON_PIN, pin_cls.IN, pin_cls.PULL_UP)
            caps |= core.CAP_BUTTON
        self._switch = None
        if SWITCH_PIN is not None:
            self._switch = pin_cls(SWITCH_PIN, pin_cls.IN, pin_cls.PULL_UP)
            caps |= core.CAP_SWITCH
        self.capabilities = caps
        self._boot_reason = boot_reason()

    def _on_pir(self, pin: object) -> None:
        # Interrupt context: set a flag and nothing else (no allocation).
        self._motion = True

    def set_channel(self, index: int, brightness: int, cct_k: int, r: int, g: int, b: int) -> None:
        warm, cold = mix_duties(brightness, cct_k)
        pair = self._pwms[index]
        pair[0].duty_u16(warm)
        pair[1].duty_u16(cold)
        if self._np is not None and index == NEOPIXEL_CHANNEL:
            scale = min(brightness, 1000) / 1000
            self._np.fill((int(r * scale), int(g * scale), int(b * scale)))
            self._np.write()

    def read_lux_centi(self) -> "int | None":
        if self._lux_adc is None:
            return None
        total = 0
        for _ in range(LUX_SAMPLES):
            total += self._lux_adc.read_u16()
        return lux_centi(total // LUX_SAMPLES)

    def read_temp_centi(self) -> "int | None":
        return temperature_centi(self._temp_adc.read_u16())

    def motion(self) -> bool:
        seen = self._motion
        self._motion = False
        return seen or (self._pir is not None and self._pir.value() == 1)

    def button(self) -> bool:
        return self._button is not None and self._button.value() == 0

    def switch(self) -> bool:
        return self._switch is not None and self._switch.value() == 0

    def unique_id(self) -> bytes:
        uid = bytes(machine.unique_id())[:8]
        return uid + bytes(8 - len(uid))

    def boot_reason(self) -> int:
        return self._boot_reason

    def random32(self) -> int:
        return int.from_bytes(os.urandom(4), "little")

    def bootloader_key(self) -> "bytes | None":
        try:
            with open(KEY_FILE, "rb") as f:
                key = f.read()
        except OSError:
            return None
        return key if len(key) >= 16 else None

    def enter_bootloader(self) -> None:
        write_mark(core.BOOT_BOOTLOADER)
        machine.bootloader()

    def reset(self) -> None:
        write_mark(core.BOOT_SOFTWARE)
        machine.reset()


class UsbSerial:
    """The USB CDC serial port (MicroPython's stdin/stdout) as non-blocking byte reads and writes."""

    def __init__(self) -> None:
        self._in = sys.stdin.buffer
        self._out = sys.stdout.buffer
        self._poll = select.poll()
        self._poll.register(sys.stdin, select.POLLIN)
        self._buf = bytearray(READ_CHUNK)

    def read(self) -> bytes:
        """What has arrived, up to READ_CHUNK bytes, without waiting."""
        n = 0
        buf = self._buf
        while n < READ_CHUNK and self._poll.poll(0):
            b = self._in.read(1)
            if not b:
                break
            buf[n] = b[0]
            n += 1
        return bytes(buf[:n]) if n else b""

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the host. With no host on the port MicroPython drops it at once; with a host
        that does not read, it may wait up to its USB timeout — the watchdog allows for that."""
        self._out.write(data)


class Firmware:
    """The main loop: one :meth:`step` per turn, :meth:`run` forever."""

    def __init__(self, board: Board, link: object, wdt: object = None) -> None:
        self.board = board
        self.link = link
        self.wdt = wdt
        self.core = core.Core(board, time.ticks_ms())
        self._led = machine.Pin(STATUS_LED_PIN, machine.Pin.OUT) if STATUS_LED_PIN is not None else None
        self._blink_at = time.ticks_ms()

    def step(self) -> None:
        """One loop turn: serial in, timers, serial out, watchdog, status LED. Takes a few ms at most."""
        now = time.ticks_ms()
        data = self.link.read()  # type: ignore[attr-defined]
        if data:
            self.core.feed(data, now)
        self.core.poll(now)
        out = self.core.take_output()
        if out:
            self.link.write(out)  # type: ignore[attr-defined]
        if self.wdt is not None:
            self.wdt.feed()  # type: ignore[attr-defined]
        if self._led is not None and core.ticks_diff(now, self._blink_at) >= 0:
            self._blink_at = core.ticks_add(now, BLINK_MS)
            self._led.toggle()

    def run(self) -> None:
        """Forever; an escaping exception is a bug: mark it and reboot (the watchdog would do it anyway)."""
        try:
            while True:
                self.step()
                time.sleep_ms(LOOP_SLEEP_MS)
        except Exception:
            # Nothing is printed: stdout is the binary link, and the HELLO after the reboot says it all.
            write_mark(core.BOOT_FAILSAFE)
            machine.reset()


def maintenance_requested() -> bool:
    """Privacy button held at boot: stay in the REPL so ``mpremote`` can reach the board."""
    if BUTTON_PIN is None:
        return False
    pin = machine.Pin(BUTTON_PIN, machine.Pin.IN, machine.Pin.PULL_UP)
    time.sleep_ms(20)
    return bool(pin.value() == 0)


def main() -> None:
    if maintenance_requested():
        return
    micropython.kbd_intr(-1)  # 0x03 is data, not Ctrl-C
    board = Board()
    fw = Firmware(board, UsbSerial(), machine.WDT(timeout=WDT_TIMEOUT_MS))
    fw.run()


if __name__ == "__main__":
    main()
