"""main.py (the Pico firmware's board layer) on the fake ``machine``: commands reach the PWM pins, a PIR
edge becomes an EVENT, the sensor formulas, boot reasons, the bootloader hook and the loop's last defence."""

from __future__ import annotations

import struct
from pathlib import Path
from types import ModuleType

import pytest

from hwcontrol.firmware import protocol_core as pc

from .fake_machine import PWRON_RESET, WDT_RESET, FakeMCU, FakeSerial


class Rig:
    """main.Firmware on the fake board, fed through a fake USB link, stepped 1 ms at a time."""

    def __init__(self, main: ModuleType, mcu: FakeMCU) -> None:
        self.main = main
        self.mcu = mcu
        self.link = FakeSerial()
        self.fw = main.Firmware(main.Board(), self.link, main.machine.WDT(timeout=main.WDT_TIMEOUT_MS))
        self.frames: list[bytes] = []
        self.decoder = pc.FrameDecoder(lambda f, n: self.frames.append(bytes(f[:n])))
        self.seq = 0

    def step(self, ms: int = 1) -> None:
        for _ in range(ms):
            self.fw.step()
            self.mcu.clock.advance(1)
        self.decoder.feed(bytes(self.link.sent))
        self.link.sent.clear()

    def send(self, msg_type: int, payload: bytes, reliable: bool = True) -> None:
        seq = self.seq if reliable else 0
        self.link.inbox += pc.encode_frame(1 if reliable else 0, seq, 255, msg_type, payload)
        self.seq += reliable

    def of(self, msg_type: int) -> list[bytes]:
        return [f for f in self.frames if f[4] == msg_type]


@pytest.fixture
def rig(firmware_main: ModuleType, fake_mcu: FakeMCU) -> Rig:
    r = Rig(firmware_main, fake_mcu)
    r.send(pc.T_HELLO_REQ, struct.pack("<BBI", 1, 0, 42), reliable=False)
    r.step(5)
    return r


def duty(mcu: FakeMCU, pin: int) -> int:
    return mcu.pwm_duty[pin]


def test_board_sets_up_pwm_and_reports_its_capabilities(rig: Rig, fake_mcu: FakeMCU) -> None:
    main = rig.main
    assert {p: fake_mcu.pwm_freq[p] for p in (2, 3, 4, 5)} == dict.fromkeys((2, 3, 4, 5), main.PWM_FREQ_HZ)
    (hello, *_) = rig.of(pc.T_HELLO)
    payload = hello[7:-2]
    assert payload[10:18] == fake_mcu.uid
    caps, reason, _session, channels = struct.unpack_from("<HBIB", payload, 18)
    assert channels == 2 and reason == pc.BOOT_POWER_ON
    assert caps == (
        pc.CAP_PWM
        | pc.CAP_RGB
        | pc.CAP_LIGHT_SENSOR
        | pc.CAP_TEMPERATURE
        | pc.CAP_PRESENCE
        | pc.CAP_BUTTON
        | pc.CAP_SWITCH
    )  # no bootloader: no key file


@pytest.mark.parametrize(
    ("channel", "brightness", "cct", "warm", "cold"),
    [
        (0, 1000, 2700, 65535, 0),
        (0, 1000, 6500, 0, 65535),
        (1, 1000, 2000, 65535, 0),  # warmer than the warm strip: clamped to it
        (1, 0, 4000, 0, 0),
    ],
)
def test_set_light_reaches_the_right_pwm_pins(
    rig: Rig, fake_mcu: FakeMCU, channel: int, brightness: int, cct: int, warm: int, cold: int
) -> None:
    rig.send(pc.T_SET_LIGHT, struct.pack("<BHHBBBH", channel, brightness, cct, 0, 0, 0, 0))
    rig.step(2)
    warm_pin, cold_pin = rig.main.WHITE_CHANNELS[channel]
    assert (duty(fake_mcu, warm_pin), duty(fake_mcu, cold_pin)) == (warm, cold)
    other_warm, other_cold = rig.main.WHITE_CHANNELS[1 - channel]
    assert duty(fake_mcu, other_warm) == duty(fake_mcu, other_cold) == 0
    assert rig.of(pc.T_LIGHT_STATE)


def test_half_brightness_mixes_in_mired_with_gamma(rig: Rig, fake_mcu: FakeMCU) -> None:
    rig.send(pc.T_SET_LIGHT, struct.pack("<BHHBBBH", 0, 500, 4000, 0, 0, 0, 0))
    rig.step(2)
    total = 0.5**2.2
    f = (1e6 / 2700 - 1e6 / 4000) / (1e6 / 2700 - 1e6 / 6500)
    assert duty(fake_mcu, 2) == round(total * (1 - f) * 65535)
    assert duty(fake_mcu, 3) == round(total * f * 65535)
    assert abs(duty(fake_mcu, 2) + duty(fake_mcu, 3) - total * 65535) <= 1


def test_rgb_goes_to_the_neopixels_scaled_by_brightness(rig: Rig, fake_mcu: FakeMCU) -> None:
    (strip,) = fake_mcu.neopixels
    rig.send(pc.T_SET_LIGHT, struct.pack("<BHHBBBH", 0, 500, 0, 200, 100, 10, 0))
    rig.step(2)
    assert strip.shown == [(100, 50, 5)] * rig.main.NEOPIXEL_COUNT


def test_a_fade_moves_the_duty_cycle_over_time(rig: Rig, fake_mcu: FakeMCU) -> None:
    rig.send(pc.T_SET_LIGHT, struct.pack("<BHHBBBH", 0, 1000, 2700, 0, 0, 0, 400))
    rig.step(200)
    half = duty(fake_mcu, 2)
    assert 0.2 * 65535 < half < 0.3 * 65535  # (0.5 ** 2.2) of full: the fade is even to the eye
    rig.step(210)
    assert duty(fake_mcu, 2) == 65535


def test_a_pir_edge_becomes_a_presence_event(rig: Rig, fake_mcu: FakeMCU) -> None:
    assert not [f for f in rig.of(pc.T_EVENT) if f[7] == pc.EV_PRESENCE]
    # A pulse shorter than a loop turn: the IRQ latches it.
    fake_mcu.set_level(rig.main.PIR_PIN, 1)
    fake_mcu.set_level(rig.main.PIR_PIN, 0)
    rig.step(2)
    events = [f[7:9] for f in rig.of(pc.T_EVENT) if f[7] == pc.EV_PRESENCE]
    assert events == [bytes((pc.EV_PRESENCE, 1))]


def test_privacy_button_is_active_low_and_debounced(rig: Rig, fake_mcu: FakeMCU) -> None:
    pin = rig.main.BUTTON_PIN
    fake_mcu.set_level(pin, 0)
    rig.step(10)
    fake_mcu.set_level(pin, 1)  # a bounce
    rig.step(10)
    fake_mcu.set_level(pin, 0)
    rig.step(40)
    assert [f[7:9] for f in rig.of(pc.T_EVENT) if f[7] == pc.EV_BUTTON] == [bytes((pc.EV_BUTTON, 0))]


def datasheet_centi(raw: int) -> int:
    """RP2040 datasheet §4.9.5, written out again: T = 27 - (ADC_voltage - 0.706) / 0.001721."""
    return round((27 - (raw * 3.3 / 65535 - 0.706) / 0.001721) * 100)


@pytest.mark.parametrize("celsius", [27.0, 0.0, 60.0, -10.0])
def test_temperature_follows_the_datasheet_formula(firmware_main: ModuleType, celsius: float) -> None:
    volts = 0.706 - (celsius - 27) * 0.001721
    raw = volts / 3.3 * 65535
    # The ADC's quantisation: one count is 50 µV, 0.03 °C.
    assert abs(firmware_main.temperature_centi(round(raw)) - celsius * 100) <= 3
    for raw in (0, 14020, 20000, 65535):
        assert firmware_main.temperature_centi(raw) == datasheet_centi(raw)


def test_temperature_sensor_is_adc_channel_4(rig: Rig, fake_mcu: FakeMCU) -> None:
    fake_mcu.adc[4] = 14020
    assert rig.fw.board.read_temp_centi() == datasheet_centi(14020)


def test_lux_curve(rig: Rig, fake_mcu: FakeMCU) -> None:
    main = rig.main
    assert main.lux_centi(32768) == pytest.approx(1000, rel=0.01)  # R_ldr = R10: 10 lux
    assert main.lux_centi(0) is None and main.lux_centi(65535) is None
    readings = [main.lux_centi(raw) for raw in (50000, 30000, 10000, 2000)]
    assert readings == sorted(readings)  # brighter: lower LDR resistance, lower voltage
    fake_mcu.adc[0] = 32768
    assert rig.fw.board.read_lux_centi() == pytest.approx(1000, rel=0.01)


def test_boot_reasons(firmware_main: ModuleType, fake_mcu: FakeMCU) -> None:
    main = firmware_main
    fake_mcu.reset_cause = WDT_RESET
    assert main.boot_reason() == pc.BOOT_WATCHDOG
    fake_mcu.reset_cause = PWRON_RESET
    assert main.boot_reason() == pc.BOOT_POWER_ON
    main.write_mark(pc.BOOT_SOFTWARE)
    fake_mcu.reset_cause = WDT_RESET  # machine.reset() is a watchdog reset on the RP2040
    assert main.boot_reason() == pc.BOOT_SOFTWARE
    assert not Path(main.MARK_FILE).exists()
    assert main.boot_reason() == pc.BOOT_WATCHDOG


def test_enter_bootloader_with_the_key_file(firmware_main: ModuleType, fake_mcu: FakeMCU) -> None:
    key = bytes(range(32))
    Path(firmware_main.KEY_FILE).write_bytes(key)
    rig = Rig(firmware_main, fake_mcu)
    rig.send(pc.T_HELLO_REQ, struct.pack("<BBI", 1, 0, 1), reliable=False)
    rig.step(2)
    hello = rig.of(pc.T_HELLO)[-1][7:-2]
    caps, _, session, _ = struct.unpack_from("<HBIB", hello, 18)
    assert caps & pc.CAP_BOOTLOADER
    rig.send(pc.T_ENTER_BOOTLOADER, struct.pack("<I", 5) + pc.bootloader_mac(key, session, 5))
    rig.step(100)
    assert fake_mcu.bootloader_calls == 1
    # The next boot will say it came from the bootloader.
    assert firmware_main.boot_reason() == pc.BOOT_BOOTLOADER


def test_watchdog_is_fed_every_turn(rig: Rig, fake_mcu: FakeMCU) -> None:
    before = fake_mcu.wdt_feeds
    rig.step(50)
    assert fake_mcu.wdt_feeds == before + 50


def test_an_exception_in_the_loop_marks_a_failsafe_reset(rig: Rig, fake_mcu: FakeMCU) -> None:
    def broken() -> bytes:
        raise RuntimeError("bug")

    rig.link.read = broken  # type: ignore[method-assign]
    rig.fw.run()
    assert fake_mcu.reset_calls == 1
    assert rig.main.boot_reason() == pc.BOOT_FAILSAFE


def test_main_disables_ctrl_c_and_starts_the_watchdog(
    firmware_main: ModuleType, fake_mcu: FakeMCU, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[object] = []

    def run(self: object) -> None:
        started.append(self)

    monkeypatch.setattr(firmware_main, "UsbSerial", FakeSerial)
    monkeypatch.setattr(firmware_main.Firmware, "run", run)
    firmware_main.main()
    assert fake_mcu.kbd_intr == -1 and len(started) == 1
    assert started[0].wdt.timeout == firmware_main.WDT_TIMEOUT_MS  # type: ignore[attr-defined]


def test_button_held_at_boot_leaves_the_repl_alone(
    firmware_main: ModuleType, fake_mcu: FakeMCU, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_mcu.levels[firmware_main.BUTTON_PIN] = 0
    monkeypatch.setattr(firmware_main.Firmware, "run", lambda self: pytest.fail("must not run"))
    firmware_main.main()
    assert fake_mcu.kbd_intr is None
