"""The synthetic sound card: timing arithmetic, drift, echo alignment, ground truth, markers and faults.

Most tests run on the virtual clock (``realtime=False``) and assert exact sample positions and times; the
few that need real pacing use generous tolerances. The microphone comes in 10 ms blocks (every
``480 // period``-th callback), and ``capture_ns`` is that of the block being gathered: the time of the
callback that starts a block.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from app.audio.device import SAMPLE_RATE, open_device
from app.audio.markers import MARKER
from app.audio.room import RoomConfig, marker_sample
from app.audio.synthetic import MAX_LATE_PERIODS, SyntheticDevice

F32 = npt.NDArray[np.float32]
QUIET = RoomConfig(talker="silence", noise_dbfs=-120.0, rt60_ms=0.0)
WAIT_S = 30.0  # generous: a busy 2-core machine


@dataclass
class Recorder:
    """A callback that records ``count`` callbacks (then just plays silence) and fills the speaker."""

    count: int
    fill: Callable[[int, F32], None] | None = None
    indices: list[int] = field(default_factory=list)
    capture_ns: list[int] = field(default_factory=list)
    playout_ns: list[int] = field(default_factory=list)
    called_ns: list[int] = field(default_factory=list)
    mics: list[F32] = field(default_factory=list)
    mic_lengths: list[int] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    keep_mic: bool = True
    device: SyntheticDevice | None = None
    """Stopped from the callback after ``count`` callbacks, so that it does not run on meanwhile."""

    def __call__(self, mic: F32, speaker: F32, index: int, capture_ns: int, playout_ns: int) -> None:
        speaker.fill(0.0)
        if len(self.indices) >= self.count:
            if self.device is not None:
                self.device.stop()
            self.done.set()
            return
        self.called_ns.append(time.monotonic_ns())
        self.indices.append(index)
        self.capture_ns.append(capture_ns)
        self.playout_ns.append(playout_ns)
        self.mic_lengths.append(len(mic))
        if self.keep_mic and len(mic):
            self.mics.append(mic.copy())
        if self.fill is not None:
            self.fill(index, speaker)

    def wait(self) -> None:
        assert self.done.wait(WAIT_S), f"only {len(self.indices)} of {self.count} callbacks came"

    @property
    def mic(self) -> F32:
        return np.concatenate(self.mics)


@pytest.fixture
def devices() -> Iterator[list[SyntheticDevice]]:
    """Devices made by a test, all stopped afterwards whatever happened."""
    made: list[SyntheticDevice] = []
    yield made
    for d in made:
        d.stop()


def make(devices: list[SyntheticDevice], config: RoomConfig = QUIET, **kwargs: Any) -> SyntheticDevice:
    kwargs.setdefault("realtime", False)
    device = SyntheticDevice(config, **kwargs)
    devices.append(device)
    return device


def run(device: SyntheticDevice, recorder: Recorder) -> None:
    """Run ``device`` for exactly ``recorder.count`` callbacks (plus the one that stops it)."""
    recorder.device = device
    device.start(recorder)
    recorder.wait()
    device.stop()


def period_ns(period: int, drift_ppm: float) -> Fraction:
    """Exact system time of one period, ns."""
    return Fraction(period * 10**9) / (SAMPLE_RATE * (1 + Fraction(drift_ppm) / 10**6))


@pytest.mark.parametrize("period", [120, 240, 480])
def test_timing_arithmetic_is_exact(devices: list[SyntheticDevice], period: int) -> None:
    device = make(devices, period=period, latency_ms=7.5)
    rec = Recorder(500, keep_mic=False)
    before = time.monotonic_ns()
    run(device, rec)
    assert rec.indices == list(range(500))
    t0 = rec.capture_ns[0]
    assert before <= t0 <= before + 10**9
    p = period * 10**9 // SAMPLE_RATE  # exact at 0 ppm
    sub = 480 // period
    for k in range(500):
        assert rec.capture_ns[k] == t0 + (k - k % sub) * p  # the 10 ms block's first sample
        assert rec.playout_ns[k] == t0 + (k + 1) * p + 7_500_000
        # The microphone's 10 ms block comes with the callback that completes it, nothing in between.
        assert rec.mic_lengths[k] == (480 if k % sub == sub - 1 else 0)
    assert device.output_latency_ms == 7.5
    assert device.input_latency_ms == 0.0
    assert device.stats()["callbacks"] == 501  # the 501st stopped it
    assert device.name == "synthetic"


@pytest.mark.parametrize("drift", [1000.0, -250.0, 37.5])
def test_drift_scales_the_period(devices: list[SyntheticDevice], drift: float) -> None:
    device = make(devices, period=240, drift_ppm=drift, latency_ms=10.0)
    rec = Recorder(3000, keep_mic=False)
    run(device, rec)
    t0 = rec.capture_ns[0]
    p = period_ns(240, drift)
    for k in range(3000):
        # Rounded once from T0 (float arithmetic may round a tie the other way: ±1 ns).
        assert abs(rec.capture_ns[k] - (t0 + round((k - k % 2) * p))) <= 1
        assert abs(rec.playout_ns[k] - (t0 + round((k + 1) * p) + 10_000_000)) <= 1
    # A fast clock makes periods shorter in system time, a slow one longer.
    span = rec.capture_ns[-1] - t0
    assert span == pytest.approx(2998 * 5_000_000 / (1 + drift * 1e-6), abs=1)
    assert (span < 2998 * 5_000_000) == (drift > 0)


@pytest.mark.parametrize(
    ("period", "drift", "latency", "delay"),
    [(240, 0.0, 10.0, 40.0), (120, 300.0, 3.3, 12.7), (480, -800.0, 20.0, 0.0)],
)
def test_echo_lands_where_the_times_say(
    devices: list[SyntheticDevice], period: int, drift: float, latency: float, delay: float
) -> None:
    config = RoomConfig(talker="silence", noise_dbfs=-120.0, rt60_ms=0.0, echo_delay_ms=delay)
    click_block, click_offset = 10, 17
    fs = SAMPLE_RATE * (1 + drift * 1e-6)

    def fill(index: int, speaker: F32) -> None:
        if index == click_block:
            speaker[click_offset] = 1.0

    device = make(devices, config, period=period, drift_ppm=drift, latency_ms=latency)
    blocks = click_block + 1 + round((0.1 + (latency + delay) / 1000) * SAMPLE_RATE / period)
    rec = Recorder(blocks, fill=fill)
    run(device, rec)
    mic = rec.mic[:, 0]
    found = int(np.argmax(np.abs(mic)))
    assert mic[found] == pytest.approx(10 ** (-10 / 20), rel=1e-4)
    # From the reported times: the click leaves the speaker, crosses the room, and is captured.
    arrives_ns = rec.playout_ns[click_block] + click_offset * 1e9 / fs + delay * 1e6
    k = max(i for i in range(blocks) if rec.capture_ns[i] <= arrives_ns and i % (480 // period) == 0)
    expected = k * period + round((arrives_ns - rec.capture_ns[k]) * fs / 1e9)
    assert abs(found - expected) <= 1
    # And exactly where the brief's formula puts it.
    s = click_block * period + click_offset
    assert found == s + round((period / fs + latency / 1000 + delay / 1000) * fs)
    assert device.echo_delay_samples == found - s


def test_truth_is_what_was_mixed(devices: list[SyntheticDevice]) -> None:
    config = RoomConfig(noise_dbfs=-120.0, markers_every_s=0.05, talk_pattern="alternate", talk_s=0.1001)
    rng = np.random.default_rng(3)

    def fill(index: int, speaker: F32) -> None:
        speaker[:] = rng.standard_normal(speaker.shape) * 0.1

    device = make(devices, config, period=240)
    rec = Recorder(200, fill=fill)
    run(device, rec)
    mic = rec.mic
    truth = device.truth(0, 200 * 240)
    assert truth is not None
    assert truth.near.shape == truth.echo.shape == (48_000, 2)
    assert truth.near.dtype == truth.echo.dtype == np.float32
    residual = mic - truth.near - truth.echo
    assert float(np.max(np.abs(residual))) < 1e-5  # the −120 dBFS noise
    assert float(np.std(truth.echo)) > 0.01
    assert float(np.std(truth.near)) > 0.01
    # Part of a block, and a range across blocks.
    part = device.truth(1000, 300)
    assert part is not None
    np.testing.assert_array_equal(part.near, truth.near[1000:1300])
    np.testing.assert_array_equal(part.echo, truth.echo[1000:1300])
    # Talk pattern, to the sample: on 0..4804, off 4805..9609, on from 9610 (edges inside blocks).
    for first, n, active in [(4565, 240, True), (4800, 5, True), (4805, 4805, False), (4810, 100, False)]:
        part = device.truth(first, n)
        assert part is not None
        assert part.talker_active == active, (first, n)
    for first, n in [(9600, 10), (9600, 11), (9609, 1), (9610, 1)]:
        part = device.truth(first, n)
        assert part is not None
        assert part.talker_active == (first + n > 9610), (first, n)
    # Not made yet.
    assert device.truth(200 * 240 + 10**6, 10) is None
    with pytest.raises(ValueError, match="first_sample"):
        device.truth(0, 0)


def test_truth_ring_forgets_after_about_ten_seconds(devices: list[SyntheticDevice]) -> None:
    device = make(devices, period=480)
    rec = Recorder(1100, keep_mic=False)  # 11 s
    run(device, rec)
    assert device.truth(0, 480) is None
    assert device.truth(1099 * 480, 480) is not None
    assert device.truth(200 * 480, 480) is not None
    assert device.truth(0, 11 * 48_000) is None


@pytest.mark.parametrize("drift", [0.0, 123.0])
def test_markers_emitted_at_their_capture_times(devices: list[SyntheticDevice], drift: float) -> None:
    config = RoomConfig(talker="markers", noise_dbfs=-120.0, markers_every_s=0.10001)
    period = 240
    fs = SAMPLE_RATE * (1 + drift * 1e-6)
    device = make(devices, config, period=period, drift_ppm=drift)
    rec = Recorder(1000, keep_mic=True)
    run(device, rec)
    emitted = device.markers_emitted()
    positions = [marker_sample(j, 0.10001 * SAMPLE_RATE, config.seed) for j in range(60)]
    # The callback that stopped the device (index 1000) was given its block too, with the marker at 240 024.
    positions = [p for p in positions if p < 1001 * period]
    assert len(emitted) == len(positions) == 51
    period_ns = 1e9 / fs * period
    mic = rec.mic[:, 0]
    for p, t in zip(positions, emitted, strict=True):
        k, offset = divmod(p, period)
        capture_ns = rec.capture_ns[0] + round(k * period_ns)
        assert k >= 1000 or k % 2 or capture_ns == rec.capture_ns[k]
        assert abs(t - (capture_ns + offset * 1e9 / fs)) <= 1
        if p + len(MARKER) <= len(mic):
            np.testing.assert_allclose(mic[p : p + len(MARKER)], 0.5 * MARKER, atol=1e-5)


def test_unplug_and_replug(devices: list[SyntheticDevice]) -> None:
    device = make(devices, period=240, realtime=True)
    device.reopen_interval_s = 0.05
    lock = threading.Lock()
    seen: list[tuple[int, int]] = []
    first = threading.Event()
    resumed = threading.Event()
    marker = [0]

    def callback(mic: F32, speaker: F32, index: int, capture_ns: int, playout_ns: int) -> None:
        speaker.fill(0.0)
        with lock:
            seen.append((index, capture_ns))
            if index >= 20:
                first.set()
            if marker[0] and index >= marker[0] + 50:
                resumed.set()

    device.start(callback)
    assert first.wait(WAIT_S)
    device.unplug()
    device.unplug()  # logs once, stays lost
    with lock:
        stopped_at = len(seen)
        last_index, last_capture = seen[-1]
    assert device.lost
    assert device.stats()["lost"]
    assert device.running
    time.sleep(0.3)
    with lock:
        assert len(seen) == stopped_at  # no callback while lost
        marker[0] = last_index
    device.replug()
    assert resumed.wait(WAIT_S)
    device.stop()
    assert not device.lost
    stats = device.stats()
    assert stats["reopened"] == 1
    assert not stats["lost"]
    indices = [i for i, _ in seen]
    assert indices == list(range(len(indices)))  # index carries on: no gap, no repeat
    # The first 10 ms block begun after the replug (a block begun before it is finished after it).
    starts = [c for i, c in seen[stopped_at:] if i % 2 == 0]
    after = starts[0]
    assert after >= last_capture + 5_000_000  # timing restarted from a new T0, forward
    # Within the new epoch the grid is exact again (a skip on a busy machine moves along it).
    for c in starts[1:20]:
        assert (c - after) % 5_000_000 == 0


def test_a_failing_callback_is_counted_and_the_device_goes_on(devices: list[SyntheticDevice]) -> None:
    device = make(devices, period=240)
    rec = Recorder(50, keep_mic=False)

    def callback(mic: F32, speaker: F32, index: int, capture_ns: int, playout_ns: int) -> None:
        rec(mic, speaker, index, capture_ns, playout_ns)
        speaker.fill(0.5)
        if index == 3:
            raise RuntimeError("boom")

    rec.device = device
    device.start(callback)
    rec.wait()
    device.stop()
    stats = device.stats()
    assert stats["callback_errors"] == 1
    assert rec.indices == list(range(50))
    assert stats["callbacks"] == 51


def test_start_stop_lifecycle(devices: list[SyntheticDevice]) -> None:
    device = make(devices, period=240)
    device.stop()  # before start: nothing to do
    assert not device.running
    rec = Recorder(20, keep_mic=False)
    device.start(rec)
    assert device.running
    with pytest.raises(RuntimeError, match="already running"):
        device.start(rec)
    rec.wait()
    device.stop()
    device.stop()
    assert not device.running
    assert not any(t.name == "audio-synthetic" and t.is_alive() for t in threading.enumerate())
    # Started again, the streams start again at index 0.
    again = Recorder(20, keep_mic=False)
    device.start(again)
    again.wait()
    device.stop()
    assert again.indices == list(range(20))


def test_stop_from_the_callback(devices: list[SyntheticDevice]) -> None:
    device = make(devices, period=240)
    calls: list[int] = []

    def callback(mic: F32, speaker: F32, index: int, capture_ns: int, playout_ns: int) -> None:
        speaker.fill(0.0)
        calls.append(index)
        if index == 5:
            device.stop()

    device.start(callback)
    deadline = time.monotonic() + WAIT_S
    while device.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not device.running
    device.stop()  # joins
    assert calls == list(range(6))
    assert not any(t.name == "audio-synthetic" and t.is_alive() for t in threading.enumerate())


def test_real_time_pacing(devices: list[SyntheticDevice]) -> None:
    device = make(devices, period=240, realtime=True, latency_ms=10.0)
    rec = Recorder(60, keep_mic=False)  # 0.3 s
    began = time.monotonic()
    run(device, rec)
    elapsed = time.monotonic() - began
    assert elapsed >= 0.29
    assert elapsed < 10.0
    t0 = rec.capture_ns[0]
    for k in range(60):
        # Never early: called at or after the end of the period it delivers.
        assert rec.called_ns[k] >= rec.capture_ns[k] + 5_000_000
        # Times come from the clock model, not from when the thread woke (a skip moves to a later period).
        assert (rec.capture_ns[k] - t0) % 5_000_000 == 0
        if k % 2 == 0:  # the callback that begins a 10 ms microphone block
            assert rec.playout_ns[k] == rec.capture_ns[k] + 15_000_000


def test_a_late_thread_skips_ahead(devices: list[SyntheticDevice]) -> None:
    device = make(devices, period=240, realtime=True)
    rec = Recorder(30, keep_mic=False)
    rec.device = device

    def callback(mic: F32, speaker: F32, index: int, capture_ns: int, playout_ns: int) -> None:
        rec(mic, speaker, index, capture_ns, playout_ns)
        if index == 10:
            time.sleep(0.1)  # 20 periods

    device.start(callback)
    rec.wait()
    device.stop()
    stats = device.stats()
    assert stats["output_underflows"] >= 1
    assert stats["input_overflows"] >= 1
    assert stats["late_callbacks"] >= 1 and stats["max_late_ms"] >= 50.0
    assert rec.indices == list(range(30))
    # Callback 11 finishes the block begun at 10 (whose time stays); block 12 begins after the skip.
    jump = rec.capture_ns[12] - rec.capture_ns[10]
    assert jump > (MAX_LATE_PERIODS + 2) * 5_000_000
    assert jump % 5_000_000 == 0


def test_open_device_makes_one(devices: list[SyntheticDevice]) -> None:
    device = open_device("synthetic", period=120, room=QUIET, drift_ppm=5.0, realtime=False, latency_ms=4.0)
    assert isinstance(device, SyntheticDevice)
    devices.append(device)
    assert device.period == 120
    assert device.output_latency_ms == 4.0
    rec = Recorder(10, keep_mic=False)
    run(device, rec)
    assert rec.indices == list(range(10))


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="period"):
        SyntheticDevice(QUIET, period=100)
    with pytest.raises(ValueError, match="drift"):
        SyntheticDevice(QUIET, drift_ppm=1e6)
    with pytest.raises(ValueError, match="latency"):
        SyntheticDevice(QUIET, latency_ms=-1.0)
