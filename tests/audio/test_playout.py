"""The adaptive playout target and drift control, against a simulated FIFO, sound card and network.

The simulation is the engine's playout loop reduced to arithmetic (ms on one clock): the twin's sound card
makes a 10 ms frame every ``10 / (1 + drift)`` ms, the network delays each by a base plus jitter (never
reordering), our sound card reads one period every ``period`` ms, each arriving frame is decoded at once and
adds ``10 / ratio`` ms to the FIFO, and ``guard`` ms before a callback the FIFO cannot cover, one period is
concealed. It checks the controller's promises: level within ±5 ms of target through ±200 ppm of drift,
a target that follows jitter up and back down, and few late frames.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

import pytest

from app.audio.playout import PlayoutController, RateEstimator, drift_ppm

F = 10.0


@dataclass
class Sim:
    period: float = 5.0
    drift_ppm: float = 0.0
    jitter_ms: float = 0.0  # uniform in [0, jitter]
    seconds: float = 60.0
    seed: int = 1
    jitter_after: tuple[float, float] | None = None  # (from s, new jitter)
    phase: float = 2.3  # ms from a frame's minimum-delay arrival to the next callback
    levels: list[tuple[float, float, float]] = field(default_factory=list)  # (t, smoothed wait, target)
    allowance: list[tuple[float, float]] = field(default_factory=list)
    concealed_ms: float = 0.0
    played_ms: float = 0.0
    underruns: int = 0

    def run(self) -> PlayoutController:
        rng = random.Random(self.seed)
        c = PlayoutController(period_ms=self.period, guard_ms=1.5)
        fifo = 0.0
        stretched = 0.0
        ns = 1e6
        events: list[tuple[float, int, int]] = []  # (time, kind 0=arrival 1=guard 2=callback, frame)
        end = self.seconds * 1000
        # Arrivals: base delay 1 ms, shifted so the jitter-free arrival is `phase` before a callback.
        last = 0.0
        n = 0
        step = F / (1 + self.drift_ppm * 1e-6)
        while True:
            t_gen = n * step
            jitter = self.jitter_ms
            if self.jitter_after is not None and t_gen >= self.jitter_after[0] * 1000:
                jitter = self.jitter_after[1]
            t = t_gen + self.period - self.phase + rng.uniform(0, jitter)
            t = max(t, last)
            last = t
            if t > end:
                break
            heapq.heappush(events, (t, 0, n))
            n += 1
        k = 1
        while k * self.period <= end:
            heapq.heappush(events, (k * self.period - 1.5, 1, k))
            heapq.heappush(events, (k * self.period, 2, k))
            k += 1
        arrived: set[int] = set()
        next_frame = 0
        playing = False
        while events:
            t, kind, x = heapq.heappop(events)
            if kind == 0:
                arrived.add(x)
                while next_frame in arrived:
                    arrived.discard(next_frame)
                    t_cb = (int(t // self.period) + 1) * self.period
                    if playing:
                        slack = t_cb - t + (fifo // self.period) * self.period
                        c.on_frame(t_cb - t + fifo, slack, int(t * ns))
                        self.levels.append((t / 1000, c.wait_ms or 0.0, c.target_ms))
                        self.allowance.append((t / 1000, c.allowance_ms))
                    else:
                        playing = True
                        fifo = max(0.0, c.target_ms - (t_cb - t))
                    fifo += F / c.ratio
                    stretched = 0.0
                    next_frame += 1
            elif kind == 1 and playing and fifo < self.period:
                c.on_late(int(t * ns))
                fifo += self.period
                self.concealed_ms += self.period
                stretched += self.period
                if stretched >= F:
                    next_frame += 1  # given up; a late copy is dropped
                    arrived = {a for a in arrived if a >= next_frame}
                    stretched = 0.0
            elif kind == 2 and playing:
                if fifo < self.period - 1e-9:
                    self.underruns += 1
                fifo = max(0.0, fifo - self.period)
                self.played_ms += self.period
        return c


@pytest.mark.parametrize("period", [2.5, 5.0])
@pytest.mark.parametrize("drift_ppm", [-200.0, 200.0])
def test_level_holds_within_5_ms_of_target_through_200_ppm_of_drift_for_10_minutes(drift_ppm, period):
    sim = Sim(period=period, drift_ppm=drift_ppm, jitter_ms=0.5, seconds=600)
    c = sim.run()
    settled = [(t, lv, tg) for t, lv, tg in sim.levels if t > 20]
    assert max(abs(lv - tg) for _, lv, tg in settled) <= 5.0
    assert abs(c.drift_ppm - drift_ppm) < 40
    assert sim.underruns == 0
    assert sim.concealed_ms / sim.played_ms < 0.001


def test_clean_arrivals_settle_at_the_least_wait():
    sim = Sim(jitter_ms=0.2, seconds=30, phase=3.0)
    c = sim.run()
    # 3 ms of phase is enough slack (guard 1.5 + margin 0.5): no period is added, and the remainder is
    # trimmed to 0.5 ms.
    assert c.counters["late"] == 0
    assert sim.concealed_ms == 0.0
    # The wait is the phase plus the remainder: nothing more is held.
    assert c.wait_ms == pytest.approx(3.0 - 0.1 + 0.5, abs=0.5)


def test_a_phase_inside_the_guard_costs_one_period():
    sim = Sim(jitter_ms=0.2, seconds=30, phase=1.5)
    c = sim.run()
    assert c.counters["late"] <= 1
    assert c.wait_ms == pytest.approx(1.5 - 0.1 + 5.0 + 0.5, abs=0.5)


def test_target_follows_jitter_up_and_back_down():
    sim = Sim(jitter_ms=0.3, seconds=90, jitter_after=(20, 6.0))
    sim.run()
    before = [a for t, a in sim.allowance if 15 < t < 20]
    during = [a for t, a in sim.allowance if 40 < t < 90]
    assert max(before) <= 5.0
    assert min(during) >= 6.0  # the jitter is 6 ms
    assert sim.concealed_ms / sim.played_ms < 0.01
    # And back down when the jitter goes.
    sim2 = Sim(jitter_ms=6.0, seconds=120, jitter_after=(30, 0.3))
    sim2.run()
    late = [a for t, a in sim2.allowance if t > 110]
    early = [a for t, a in sim2.allowance if 20 < t < 30]
    assert min(early) >= 6.0
    assert max(late) <= 5.5  # 2.3 ms of phase less 0.3 of jitter still costs a period, as in the first run


def test_bounds_and_ratio_limits():
    c = PlayoutController(period_ms=5.0, min_ms=5.0, max_ms=10.0)
    assert c.allowance_ms == 5.0
    for i in range(50):
        c.on_late(i * 1_000_000)
    assert c.allowance_ms == 10.0
    c.on_frame(500.0, 400.0, 0)
    assert c.on_frame(500.0, 400.0, 1_000_000_000) == pytest.approx(1.02)
    with pytest.raises(ValueError):
        PlayoutController(period_ms=20.0)


def test_rate_estimator_measures_drift_through_jitter():
    rng = random.Random(3)
    far, near = RateEstimator(), RateEstimator()
    for k in range(3000):  # 30 s of 10 ms frames from a card 200 ppm fast, each stamped ±1 ms late
        t = k * 10_000_000 / (1 + 200e-6)
        far.add(int(t + rng.uniform(0, 1e6)), k * 480)
        near.add(int(k * 10_000_000 + rng.uniform(0, 1e6)), k * 480)
    assert drift_ppm(far, near) == pytest.approx(200, abs=5)
    assert RateEstimator().rate() is None


def test_jitter_near_a_short_period_does_not_ratchet_the_target_up():
    # 2 ms of jitter against 2.5 ms periods spreads the level's remainders over most of the period, where
    # their "low end" is arbitrary: trimming up from it crept the target up ~0.25 ms/s, a period at a time
    # taken back by lowering (a sawtooth 6–13 ms, mean wait 8.3 ms). Spread so wide, they are left alone.
    sim = Sim(period=2.5, jitter_ms=2.0, seconds=60, phase=1.3)
    c = sim.run()
    settled = [(lv, tg) for t, lv, tg in sim.levels if t > 10]
    assert max(tg for _, tg in settled) - min(tg for _, tg in settled) <= 2.5 + 1e-6
    assert sum(lv for lv, _ in settled) / len(settled) < 6.5
    assert c.counters["trims"] <= 5
    assert sim.underruns == 0
