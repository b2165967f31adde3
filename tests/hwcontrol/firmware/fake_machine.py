"""Fake MicroPython modules so ``hwcontrol/firmware/main.py`` imports and runs under CPython.

:class:`FakeMCU` builds ``machine`` (Pin, PWM, ADC, WDT, unique_id, reset_cause, bootloader, reset),
``neopixel``, ``micropython`` and ``utime`` (a ``ticks_ms`` clock the test moves by hand) as module
objects backed by one shared state, and :meth:`FakeMCU.install` puts them into ``sys.modules`` (the
``fake_mcu`` fixture in conftest.py does this and takes them out again). Pins are shared by number, as on
the chip: two ``Pin(15)`` objects see the same level, and :meth:`FakeMCU.set_level` fires the IRQ handler
registered for that edge. Only what the firmware uses is faked.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

import pytest

TICKS_PERIOD = 1 << 30

# rp2's machine constants.
PWRON_RESET = 1
WDT_RESET = 3


class FakeClock:
    """``utime``'s tick counters; :meth:`advance` is the only thing that moves time."""

    def __init__(self, start_ms: int = 0) -> None:
        self.ms = start_ms

    def ticks_ms(self) -> int:
        return self.ms % TICKS_PERIOD

    def ticks_add(self, a: int, delta: int) -> int:
        return (a + delta) % TICKS_PERIOD

    def ticks_diff(self, a: int, b: int) -> int:
        half = TICKS_PERIOD // 2
        return ((a - b + half) % TICKS_PERIOD) - half

    def sleep_ms(self, ms: int) -> None:
        self.ms += ms

    def advance(self, ms: int) -> None:
        self.ms += ms


class FakeMCU:
    """State behind the fake modules: pin levels, PWM duties, ADC readings, calls to the reset hooks."""

    def __init__(self, start_ms: int = 0) -> None:
        self.clock = FakeClock(start_ms)
        self.levels: dict[int, int] = {}
        self.irqs: dict[int, tuple[int, Callable[[Any], None]]] = {}
        self.pwm_duty: dict[int, int] = {}
        self.pwm_freq: dict[int, int] = {}
        self.adc: dict[int, int] = {}  # ADC channel (0–4) → read_u16() value
        self.reset_cause = PWRON_RESET
        self.uid = bytes.fromhex("e6614104032f4a2b")
        self.bootloader_calls = 0
        self.reset_calls = 0
        self.kbd_intr: int | None = None
        self.wdt_feeds = 0
        self.neopixels: list[FakeNeoPixel] = []
        self.modules = {
            "machine": self._machine(),
            "neopixel": self._neopixel(),
            "micropython": self._micropython(),
            "utime": self._utime(),
        }

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name, module in self.modules.items():
            monkeypatch.setitem(sys.modules, name, module)

    def set_level(self, pin: int, level: int) -> None:
        """Drive an input pin from outside; fires its IRQ handler on a matching edge."""
        old = self.levels.get(pin, 0)
        self.levels[pin] = level
        irq = self.irqs.get(pin)
        if irq is None or old == level:
            return
        trigger, handler = irq
        if (level and trigger & FakePin.IRQ_RISING) or (not level and trigger & FakePin.IRQ_FALLING):
            handler(FakePin(self, pin))

    # ----- module builders -----

    def _machine(self) -> types.ModuleType:
        mcu = self
        m = types.ModuleType("machine")

        class Pin(FakePin):
            def __init__(self, pin: int, mode: int = -1, pull: int = -1, value: int | None = None) -> None:
                super().__init__(mcu, pin, mode, pull, value)

        class PWM:
            def __init__(self, pin: FakePin, freq: int = 0, duty_u16: int = 0) -> None:
                self.pin = pin.id
                mcu.pwm_duty[self.pin] = duty_u16
                mcu.pwm_freq[self.pin] = freq

            def freq(self, value: int | None = None) -> int:
                if value is not None:
                    mcu.pwm_freq[self.pin] = value
                return mcu.pwm_freq[self.pin]

            def duty_u16(self, value: int | None = None) -> int:
                if value is not None:
                    assert 0 <= value <= 65535, value
                    mcu.pwm_duty[self.pin] = value
                return mcu.pwm_duty[self.pin]

        class ADC:
            CORE_TEMP = 4

            def __init__(self, source: int | FakePin) -> None:
                number = source.id if isinstance(source, FakePin) else source
                # rp2: ADC(0..4) are channels, ADC(26..29) the pins of channels 0..3.
                self.channel = number - 26 if number >= 26 else number

            def read_u16(self) -> int:
                return mcu.adc.get(self.channel, 0)

        class WDT:
            def __init__(self, id: int = 0, timeout: int = 5000) -> None:
                assert timeout <= 8388, "the RP2040 watchdog allows at most 8388 ms"
                self.timeout = timeout

            def feed(self) -> None:
                mcu.wdt_feeds += 1

        def bootloader() -> None:
            mcu.bootloader_calls += 1

        def reset() -> None:
            mcu.reset_calls += 1

        m.Pin = Pin  # type: ignore[attr-defined]
        m.PWM = PWM  # type: ignore[attr-defined]
        m.ADC = ADC  # type: ignore[attr-defined]
        m.WDT = WDT  # type: ignore[attr-defined]
        m.PWRON_RESET = PWRON_RESET  # type: ignore[attr-defined]
        m.WDT_RESET = WDT_RESET  # type: ignore[attr-defined]
        m.unique_id = lambda: mcu.uid  # type: ignore[attr-defined]
        m.reset_cause = lambda: mcu.reset_cause  # type: ignore[attr-defined]
        m.bootloader = bootloader  # type: ignore[attr-defined]
        m.reset = reset  # type: ignore[attr-defined]
        return m

    def _neopixel(self) -> types.ModuleType:
        mcu = self
        m = types.ModuleType("neopixel")

        class NeoPixel(FakeNeoPixel):
            def __init__(self, pin: FakePin, n: int) -> None:
                super().__init__(pin.id, n)
                mcu.neopixels.append(self)

        m.NeoPixel = NeoPixel  # type: ignore[attr-defined]
        return m

    def _micropython(self) -> types.ModuleType:
        mcu = self
        m = types.ModuleType("micropython")

        def kbd_intr(c: int) -> None:
            mcu.kbd_intr = c

        m.kbd_intr = kbd_intr  # type: ignore[attr-defined]
        m.const = lambda x: x  # type: ignore[attr-defined]
        return m

    def _utime(self) -> types.ModuleType:
        m = types.ModuleType("utime")
        c = self.clock
        m.ticks_ms = c.ticks_ms  # type: ignore[attr-defined]
        m.ticks_add = c.ticks_add  # type: ignore[attr-defined]
        m.ticks_diff = c.ticks_diff  # type: ignore[attr-defined]
        m.sleep_ms = c.sleep_ms  # type: ignore[attr-defined]
        return m


class FakePin:
    IN = 0
    OUT = 1
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_FALLING = 4
    IRQ_RISING = 8

    def __init__(
        self, mcu: FakeMCU, pin: int, mode: int = -1, pull: int = -1, value: int | None = None
    ) -> None:
        self.mcu = mcu
        self.id = pin
        if pull == self.PULL_UP and pin not in mcu.levels:
            mcu.levels[pin] = 1
        if value is not None:
            mcu.levels[pin] = value

    def value(self, v: int | None = None) -> int:
        if v is not None:
            self.mcu.levels[self.id] = 1 if v else 0
        return self.mcu.levels.get(self.id, 0)

    def toggle(self) -> None:
        self.value(0 if self.value() else 1)

    def irq(self, handler: Callable[[Any], None], trigger: int = IRQ_RISING) -> None:
        self.mcu.irqs[self.id] = (trigger, handler)


class FakeNeoPixel:
    def __init__(self, pin: int, n: int) -> None:
        self.pin = pin
        self.n = n
        self.pixels = [(0, 0, 0)] * n
        self.shown = list(self.pixels)
        self.writes = 0

    def __setitem__(self, i: int, rgb: tuple[int, int, int]) -> None:
        self.pixels[i] = rgb

    def __getitem__(self, i: int) -> tuple[int, int, int]:
        return self.pixels[i]

    def fill(self, rgb: tuple[int, int, int]) -> None:
        self.pixels = [tuple(rgb)] * self.n  # type: ignore[list-item]

    def write(self) -> None:
        self.shown = list(self.pixels)
        self.writes += 1


class FakeSerial:
    """The USB link for :class:`Firmware`: bytes the test queues come out of :meth:`read`."""

    def __init__(self) -> None:
        self.inbox = bytearray()
        self.sent = bytearray()

    def read(self) -> bytes:
        data = bytes(self.inbox[:128])
        del self.inbox[:128]
        return data

    def write(self, data: bytes) -> None:
        self.sent += data
