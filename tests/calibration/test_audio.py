"""Audio calibration: the measurement maths on signals with known delay, gain and noise; the whole step
against synthetic rooms (delays 10–120 ms, echo gains, noise floors) on the virtual clock; ERLE after
calibration; the specific messages for a dead microphone, no echo, clipping and a missing sound card; the
engine applying a stored calibration; the gains in the audio callback; the engine letting go of its card."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.audio.device import FRAME
from app.audio.measure import dbfs, log_sweep
from app.audio.room import RoomConfig, impulse_responses
from app.audio.synthetic import SyntheticDevice
from app.calibration import applied, run_step
from app.calibration.audio import (
    ECHO_TARGET_DB,
    analyse_sweep,
    apply_to,
    choose_gains,
    measure_erle,
    run,
)
from app.calibration.report import Report
from app.engine.audio import AudioEngine
from app.engine.link import UdpLink
from app.engine.transport import Transport
from app.settings import AudioSettings, Settings
from tests.audio.test_portaudio import HDA, FakeSounddevice

FS = 48_000


def settings_for(tmp_path: Path, **audio: Any) -> Settings:
    return Settings.model_validate(
        {
            "engine": {"state_dir": str(tmp_path), "control_socket": str(tmp_path / "engine.sock")},
            "audio": audio,
        }
    )


def delayed(x: np.ndarray, delay_samples: float, n: int) -> np.ndarray:
    """``x`` delayed by a possibly fractional number of samples (FFT phase shift), ``n`` samples long."""
    size = 1 << (n + len(x)).bit_length()
    spectrum = np.fft.rfft(x, size) * np.exp(-2j * np.pi * np.fft.rfftfreq(size) * delay_samples)
    return np.fft.irfft(spectrum, size)[:n]


def checks(report: Report) -> dict[str, Any]:
    return {check.name: check.value for check in report.checks}


# -- the maths ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delay_ms", "gain_db", "noise_dbfs"),
    [(10.0, -10.0, -60.0), (40.01, -20.0, -70.0), (80.0, 0.0, -50.0), (120.0 + 0.37 / 48, -35.0, -80.0)],
)
def test_sweep_analysis_finds_a_known_delay_and_gain(
    delay_ms: float, gain_db: float, noise_dbfs: float
) -> None:
    sweep, inverse = log_sweep(60.0, 20_000.0, 2.0)
    level = -12.0
    n = sweep.size + FS
    echo = delayed(sweep * 10 ** (level / 20), delay_ms * FS / 1000, n) * 10 ** (gain_db / 20)
    noise = np.random.default_rng(1).standard_normal(n) * 10 ** (noise_dbfs / 20)
    recorded = np.repeat((echo + noise)[:, None], 2, axis=1).astype(np.float32)
    a = analyse_sweep(recorded, level_dbfs=level, sweep=sweep, inverse=inverse)
    assert a.loopback_delay_ms == pytest.approx(delay_ms, abs=0.01)  # sub-sample: 0.01 ms is half a sample
    assert a.echo_gain_db == pytest.approx(gain_db, abs=0.3)
    assert a.echo_snr_db > 40.0
    assert not a.clipped
    assert a.echo_level_dbfs == pytest.approx(level - 3.01 + gain_db, abs=0.5)  # a sine's RMS is peak − 3 dB
    assert dbfs(noise) == pytest.approx(noise_dbfs, abs=0.1)


def test_sweep_analysis_measures_reverberation_and_clipping() -> None:
    sweep, inverse = log_sweep(60.0, 20_000.0, 2.0)
    h = impulse_responses(RoomConfig(rt60_ms=400.0, echo_gain_db=0.0, noise_dbfs=-90.0))[:, 0]
    n = sweep.size + FS
    echo = np.convolve(sweep, h)[:n]
    recorded = np.zeros(n)
    recorded[480 : 480 + len(echo[: n - 480])] = echo[: n - 480]
    a = analyse_sweep(recorded * 0.1, level_dbfs=-20.0, sweep=sweep, inverse=inverse)
    assert a.rt60_ms == pytest.approx(400.0, rel=0.1)
    assert a.loopback_delay_ms == pytest.approx(10.0, abs=0.01)
    assert a.echo_gain_db == pytest.approx(0.0, abs=0.5)
    assert not a.clipped
    hot = analyse_sweep(np.clip(recorded * 2.0, -1, 1), level_dbfs=6.02, sweep=sweep, inverse=inverse)
    assert hot.clipped and hot.peak_dbfs == pytest.approx(0.0, abs=0.01)


def test_gains_go_towards_their_targets_within_bounds() -> None:
    assert choose_gains(-10.0, -60.0) == (0.0, 0.0)
    # A quiet microphone is raised to −60 dBFS noise; the playback gain then brings the echo to −10 dB.
    assert choose_gains(-20.0, -70.0) == (0.0, 10.0)
    assert choose_gains(-30.0, -80.0) == (0.0, 20.0)
    assert choose_gains(-45.0, -100.0) == (6.0, 20.0)  # both at their limits: the echo stays too quiet
    # A noisy room is not turned down; a loud speaker is.
    assert choose_gains(0.0, -45.0) == (-10.0, 0.0)
    assert choose_gains(15.0, -60.0) == (-20.0, 0.0)


def test_erle_is_measured_over_far_end_activity_after_the_skip() -> None:
    rng = np.random.default_rng(2)
    n = 300 * FRAME
    echo = rng.standard_normal((n, 2)) * 0.03  # −30.5 dBFS
    echo[100 * FRAME : 150 * FRAME] = 0.0  # a pause: noise only, left out
    noise = rng.standard_normal((n, 2)) * 1e-4  # −80 dBFS
    mic = (echo + noise).astype(np.float32)
    out = (echo * 10 ** (-35 / 20) + noise).astype(np.float32)
    echo[:FRAME] = 1.0  # before the skip: ignored
    e = measure_erle(mic, out, -80.0, skip=FRAME)
    residual = 10 * math.log10(10 ** (-3.05 - 3.5) + 1e-8)  # echo −35 dB plus the noise
    assert e.erle_db == pytest.approx(-30.5 - residual, abs=0.3)
    assert e.echo_to_noise_db == pytest.approx(49.5, abs=0.3)


# -- the whole step against synthetic rooms ------------------------------------------------------------


@pytest.mark.parametrize(
    ("delay_ms", "gain_db", "noise_dbfs", "rt60_ms", "period_ms", "latency_ms"),
    [
        (10.0, -10.0, -60.0, 300.0, 5.0, 5.0),
        (40.0, -20.0, -70.0, 300.0, 2.5, 20.0),
        (80.0, 0.0, -60.0, 200.0, 10.0, 5.0),
        (120.0, -30.0, -80.0, 300.0, 5.0, 0.0),
        (55.5, 4.0, -65.0, 0.0, 5.0, 12.0),
    ],
)
def test_calibration_measures_synthetic_rooms(
    tmp_path: Path,
    delay_ms: float,
    gain_db: float,
    noise_dbfs: float,
    rt60_ms: float,
    period_ms: float,
    latency_ms: float,
) -> None:
    s = settings_for(
        tmp_path,
        room_echo_delay_ms=delay_ms,
        room_echo_gain_db=gain_db,
        room_noise_dbfs=noise_dbfs,
        room_rt60_ms=rt60_ms,
        period_ms=period_ms,
        device_latency_ms=latency_ms,
    )
    seen: list[float] = []
    report = run(s, lambda fraction, message: seen.append(fraction))
    c = checks(report)
    assert abs(c["acoustic delay"] - delay_ms) <= 1.0
    assert report.apply["acoustic_delay_ms"] == pytest.approx(delay_ms, abs=0.1)
    assert c["echo path gain"] == pytest.approx(gain_db, abs=0.5)
    assert c["noise floor"] == pytest.approx(noise_dbfs, abs=0.5)
    assert c["echo at the microphone"] == pytest.approx(ECHO_TARGET_DB, abs=1.0)
    gains = (report.apply["playback_gain_db"], report.apply["capture_gain_db"])
    assert gains == choose_gains(c["echo path gain"], c["noise floor"])
    if rt60_ms:
        assert c["reverberation time (RT60)"] == pytest.approx(rt60_ms, rel=0.1)
    assert c["ERLE"] >= 30.0
    assert report.passed, report.text()
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)


def test_default_room_reaches_the_erle_target_and_is_stored_and_applied(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    report = run_step(s, "audio")
    c = checks(report)
    assert report.passed, report.text()
    assert c["ERLE"] >= 30.0
    assert abs(c["acoustic delay"] - 40.0) <= 1.0
    stored = applied(tmp_path, "audio")
    assert stored == report.apply and set(stored) == {
        "acoustic_delay_ms",
        "playback_gain_db",
        "capture_gain_db",
    }
    assert Report.from_json(report.to_json()) == report
    assert "ERLE" in report.text() and "PASS" in report.text()


def test_a_long_reverberation_is_named_when_erle_falls_short(tmp_path: Path) -> None:
    report = run(settings_for(tmp_path, room_rt60_ms=900.0, room_noise_dbfs=-70.0))
    c = checks(report)
    assert c["ERLE"] < 30.0 and not report.passed
    assert any("reverberates for" in p for p in report.problems)
    assert abs(c["acoustic delay"] - 40.0) <= 1.0  # the delay is still measured and applied
    assert report.apply["acoustic_delay_ms"] == pytest.approx(40.0, abs=0.1)


# -- problems, not exceptions ------------------------------------------------------------------------------


def test_a_dead_microphone_is_named_not_a_failed_run(tmp_path: Path) -> None:
    device = SyntheticDevice(RoomConfig(dead_mic=True, talker="silence"), realtime=False, latency_ms=5.0)
    report = run(settings_for(tmp_path), device=device)
    assert not report.passed and not report.apply
    assert len(report.problems) == 1
    assert "the microphone 'synthetic' recorded silence" in report.problems[0]
    assert "check it is connected and not muted" in report.problems[0]


def test_no_echo_says_to_check_the_speaker(tmp_path: Path) -> None:
    report = run(settings_for(tmp_path, room_echo_gain_db=-80.0, room_noise_dbfs=-40.0))
    assert not report.passed and not report.apply
    assert any("no echo of the sweep reached the microphone" in p for p in report.problems)
    assert any("noise floor" in p for p in report.problems)  # −40 dBFS is over the −50 dBFS target


def test_clipping_retries_lower_and_reports_when_it_cannot_help(tmp_path: Path) -> None:
    ok = run(settings_for(tmp_path, room_echo_gain_db=10.0, room_rt60_ms=300.0))
    assert ok.details["sweep_dbfs"] == -24.0 and not any("clipped" in p for p in ok.problems)
    assert checks(ok)["echo path gain"] == pytest.approx(10.0, abs=0.5)
    hot = SyntheticDevice(RoomConfig(echo_gain_db=20.0, talker="silence"), realtime=False, latency_ms=5.0)
    bad = run(settings_for(tmp_path), device=hot)
    assert any("clipped even with the sweep at -24 dBFS" in p for p in bad.problems)
    assert checks(bad)["microphone peak"] == pytest.approx(0.0, abs=0.1)


@pytest.fixture
def fake_portaudio(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSounddevice]:
    sd = FakeSounddevice([HDA])
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    FakeSounddevice.current = sd
    yield sd
    FakeSounddevice.current = None


def test_a_missing_sound_card_gives_the_device_error(tmp_path: Path, fake_portaudio: FakeSounddevice) -> None:
    s = settings_for(tmp_path, backend="portaudio", input_device="USB Mic", output_device="HDA")
    report = run(s)
    assert not report.passed and not report.apply and not report.checks
    assert report.problems[0].startswith(
        "the sound card could not be opened: no sound card for input 'USB Mic'"
    )
    assert "HDA Intel" in report.problems[0]  # it lists what there is


# -- applying it at start, and the gains in the engine -----------------------------------------------------


def test_a_stored_calibration_replaces_the_defaults_but_not_explicit_settings() -> None:
    values = {"acoustic_delay_ms": 41.3, "playback_gain_db": -3.0, "capture_gain_db": 6.0, "other": 1}
    a = apply_to(AudioSettings(), values)
    assert (a.acoustic_delay_ms, a.playback_gain_db, a.capture_gain_db) == (41.3, -3.0, 6.0)
    explicit = apply_to(AudioSettings(acoustic_delay_ms=12.0), values)
    assert explicit.acoustic_delay_ms == 12.0 and explicit.playback_gain_db == -3.0
    # Out of the schema's range: skipped, the rest applied.
    odd = apply_to(AudioSettings(), {"acoustic_delay_ms": 9999.0, "capture_gain_db": 3.0})
    assert odd.acoustic_delay_ms == 0.0 and odd.capture_gain_db == 3.0
    assert apply_to(AudioSettings(), {}) == AudioSettings()


@pytest.fixture
def transport() -> Iterator[Transport]:
    udp = UdpLink("127.0.0.1", 0, "127.0.0.1", 9, 65536)
    yield Transport(udp, start_bps=1_000_000, min_bps=100_000, max_bps=1_000_000, fps=60, fragment_bytes=1200)
    udp.sock.close()


def test_the_engine_starts_aec3_from_the_calibrated_delay(tmp_path: Path, transport: Transport) -> None:
    report = run_step(settings_for(tmp_path, room_echo_delay_ms=70.0), "audio")
    audio = apply_to(AudioSettings(), applied(tmp_path, "audio"))
    device = SyntheticDevice(RoomConfig(echo_delay_ms=70.0), period=120, realtime=False, latency_ms=5.0)
    engine = AudioEngine(audio, device, transport, sending=True, receiving=False, on_error=lambda n, e: None)
    try:
        assert engine.processing is not None
        # 70 ms acoustic + 2.5 ms period (the default) + 5 ms output latency: the loopback the sweep measured.
        assert report.details["loopback_delay_ms"] == pytest.approx(77.5, abs=0.05)
        assert engine.processing.stream_delay_ms == round(77.5)
    finally:
        engine.stop()


def test_the_gains_are_applied_in_the_callback(transport: Transport) -> None:
    audio = AudioSettings(playback_gain_db=-6.0, capture_gain_db=20.0)
    device = SyntheticDevice(RoomConfig(), realtime=False)
    engine = AudioEngine(audio, device, transport, sending=True, receiving=False, on_error=lambda n, e: None)
    try:
        far = np.full((480, 2), 0.5, np.float32)
        engine._fifo.write(far)
        mic = np.full((480, 2), 0.01, np.float32)
        mic[0] = 0.5  # ×10 is beyond full scale: clipped
        for index in (0, 1):  # two 5 ms speaker periods; the 10 ms microphone block with the second
            speaker = np.zeros((240, 2), np.float32)
            engine.callback(mic if index else mic[:0], speaker, index, 0, 0)
            assert speaker == pytest.approx(0.5 * 10 ** (-6 / 20), rel=1e-6)
        kept_mic, kept_ref = engine._capture.blocks[0, 0], engine._capture.blocks[1, 0]
        assert kept_mic[1:] == pytest.approx(0.1, rel=1e-5) and np.all(kept_mic[0] == 1.0)
        assert np.all(kept_ref == 0.5)  # AEC3's reference is the far end before the playback gain
        assert np.all(mic[1:] == 0.01)  # the device's block is not touched
    finally:
        engine.stop()


def test_a_new_calibration_is_applied_to_a_running_engine(transport: Transport) -> None:
    # What the engine does when a calibration it ran ends: new gains at once, AEC3's delay between frames.
    device = SyntheticDevice(RoomConfig(), realtime=False, latency_ms=5.0)
    engine = AudioEngine(
        AudioSettings(), device, transport, sending=True, receiving=False, on_error=lambda n, e: None
    )
    try:
        assert engine.processing is not None and engine.processing.stream_delay_ms == 10  # 0 + 5 + 5
        engine.apply_calibration(AudioSettings(acoustic_delay_ms=70.0, playback_gain_db=-6.0))
        assert engine._pending_stream_delay == 80  # Taken up by the processing thread at its next frame.
        engine._fifo.write(np.full((240, 2), 0.5, np.float32))
        speaker = np.zeros((240, 2), np.float32)
        engine.callback(np.zeros((0, 2), np.float32), speaker, 0, 0, 0)
        assert speaker == pytest.approx(0.5 * 10 ** (-6 / 20), rel=1e-6)
    finally:
        engine.stop()


def test_the_engine_lets_go_of_its_sound_card_and_takes_it_back(transport: Transport) -> None:
    device = SyntheticDevice(RoomConfig(), realtime=False)
    engine = AudioEngine(
        AudioSettings(), device, transport, sending=False, receiving=False, on_error=lambda n, e: None
    )
    engine.device.start(engine.callback)
    try:
        assert engine.hold(True, 60.0) and not device.running
        assert not engine.hold(False) and device.running
        assert engine.hold(True, 0.05) and not device.running
        deadline = 100
        while not device.running and deadline:
            deadline -= 1
            time.sleep(0.02)
        assert device.running and not engine.held  # taken back when the hold ran out
    finally:
        engine.stop()
