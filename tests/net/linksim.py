"""A sans-I/O bottleneck-link simulation for testing the congestion controller in simulated time.

One video sender, one bottleneck, one receiver, in simulated nanoseconds: the sender makes 60 frames/s of
``target / 60`` bytes (optionally through a first-order encoder lag), cuts them into ≤ 1200-byte
fragments (+ 32 bytes of media header) and paces them with the real :class:`TokenBucketPacer` at
``pacing_factor × target``; every packet is recorded in the controller's :class:`SendHistory`. The link
drops at random (Bernoulli or Gilbert–Elliott) at its ingress, then queues FIFO behind a rate cap with a
drop-tail limit (a packet that would wait longer than ``queue_ms`` at the current cap is dropped), then
adds the propagation delay. The receiver's :class:`FeedbackBuilder` sees every arrival on its own clock (an
unrelated offset, optionally drifting), builds feedback every 50 ms, and the chunks reach the controller
one propagation delay later (the return path is not congested).

Theory of operation
-------------------
The link is a single FIFO server: it is free again at ``busy_until``; a packet offered at ``t`` waits
``max(0, busy_until − t)``, is sent in ``size × 8 / rate`` and arrives one propagation delay after that.
Packets are offered in send order, so arrivals come out in order and the whole simulation is three
time-ordered streams (frame ticks, feedback builds, feedback deliveries) merged in one loop. A capacity
change applies to the packets offered after it. Everything is seeded: the same config gives the same run.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from app.net.congestion import CongestionController, FeedbackBuilder
from app.net.pacer import TokenBucketPacer

S = 1_000_000_000
MS = 1_000_000
MEDIA_HEADER = 32


class BernoulliLoss:
    """Each packet is lost with probability ``p``."""

    def __init__(self, p: float, rng: random.Random) -> None:
        self.p = p
        self.rng = rng

    def __call__(self) -> bool:
        return self.rng.random() < self.p


class GilbertElliottLoss:
    """Two-state bursty loss: every packet in the bad state is lost. Mean loss ``loss``, mean burst
    ``burst`` packets (p_bg = 1 / burst, p_gb chosen so the bad state holds ``loss`` of the time)."""

    def __init__(self, loss: float, burst: float, rng: random.Random) -> None:
        self.p_bg = 1.0 / burst
        self.p_gb = loss * self.p_bg / (1.0 - loss)
        self.bad = False
        self.rng = rng

    def __call__(self) -> bool:
        if self.bad:
            if self.rng.random() < self.p_bg:
                self.bad = False
        elif self.rng.random() < self.p_gb:
            self.bad = True
        return self.bad


@dataclass
class SimConfig:
    """One simulated session. Rates in bit/s, times in s unless the name says otherwise."""

    duration_s: float
    cap_schedule: Sequence[tuple[float, float | None]] = ((0.0, None),)
    """(from time s, cap bit/s or None for no cap), in time order."""
    queue_ms: float = 200.0
    one_way_ms: float = 10.0
    loss: str | None = None
    """None, ``"bernoulli"`` or ``"ge"``."""
    loss_rate: float = 0.0
    loss_burst: float = 3.0
    min_bps: int = 300_000
    max_bps: int = 15_000_000
    start_bps: int = 2_000_000
    fps: int = 60
    mtu_payload: int = 1200
    pacing_factor: float = 8.0
    burst_bytes: int = 16_000
    feedback_interval_ms: float = 50.0
    receiver_clock_offset_ns: int = 123_456_789_000_000
    drift_ppm: float = 0.0
    seq_start: int = 2**32 - 3000
    """First packet seq (near the wrap, so every run crosses it)."""
    encoder_tau_s: float = 0.0
    """Time constant of the encoder's response to a bitrate change (0: the next frame follows it)."""
    frame_jitter: float = 0.0
    """Frame sizes vary uniformly by ± this fraction."""
    cross_bps: float = 0.0
    """Constant-rate cross traffic (1200-byte packets) sharing the bottleneck queue, bit/s."""
    rtt_interval_ms: float = 250.0
    seed: int = 1


@dataclass
class SimResult:
    """What happened, per frame and per packet. Times in s, delays in ms, rates in bit/s."""

    frame_t: list[float] = field(default_factory=list)
    target: list[float] = field(default_factory=list)
    standing_ms: list[float | None] = field(default_factory=list)
    """Queue wait of each frame's first packet (what earlier frames left), None if it was dropped."""
    latency_ms: list[float | None] = field(default_factory=list)
    """Frame tick → last packet's arrival, None if any packet was lost."""
    packet_t: list[float] = field(default_factory=list)
    packet_wait_ms: list[float] = field(default_factory=list)
    sent_bytes: int = 0
    dropped_queue: int = 0
    dropped_random: int = 0
    stats: list[tuple[float, dict[str, object]]] = field(default_factory=list)

    def frames_between(self, t0: float, t1: float) -> range:
        lo = next((i for i, t in enumerate(self.frame_t) if t >= t0), len(self.frame_t))
        hi = next((i for i, t in enumerate(self.frame_t) if t >= t1), len(self.frame_t))
        return range(lo, hi)

    def standing_between(self, t0: float, t1: float) -> list[float]:
        return [s for i in self.frames_between(t0, t1) if (s := self.standing_ms[i]) is not None]

    def latency_between(self, t0: float, t1: float) -> list[float]:
        return [s for i in self.frames_between(t0, t1) if (s := self.latency_ms[i]) is not None]

    def waits_between(self, t0: float, t1: float) -> list[float]:
        return [w for t, w in zip(self.packet_t, self.packet_wait_ms, strict=True) if t0 <= t < t1]

    def first_time(self, t0: float, pred: Callable[[float], bool]) -> float | None:
        """The first frame time ≥ ``t0`` whose target satisfies ``pred``."""
        for t, target in zip(self.frame_t, self.target, strict=True):
            if t >= t0 and pred(target):
                return t
        return None

    def target_mean(self, t0: float, t1: float) -> float:
        idx = self.frames_between(t0, t1)
        return sum(self.target[i] for i in idx) / max(1, len(idx))


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0–100) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100.0 * len(ordered)) - 1))
    return ordered[k]


class BottleneckLink:
    """FIFO rate cap with a drop-tail limit in time, then propagation delay. Times in ns."""

    def __init__(self, queue_ms: float, one_way_ms: float) -> None:
        self.queue_ns = int(queue_ms * MS)
        self.prop_ns = int(one_way_ms * MS)
        self.busy_until = 0

    def offer(self, t_ns: int, size: int, rate_bps: float | None) -> tuple[int, int] | None:
        """(arrival ns, queue wait ns) of a ``size``-byte packet offered at ``t_ns``; None if dropped."""
        start = max(t_ns, self.busy_until)
        wait = start - t_ns
        if rate_bps is None:
            self.busy_until = start
            return start + self.prop_ns, wait
        if wait > self.queue_ns:
            return None
        done = start + round(size * 8 * S / rate_bps)
        self.busy_until = done
        return done + self.prop_ns, wait


def fragment_sizes(frame_size: int, mtu: int) -> list[int]:
    """Datagram sizes of one frame (PROTOCOL.md §6 split, plus the media header), bytes."""
    count = -(-frame_size // mtu)
    base, extra = divmod(frame_size, count)
    return [base + (1 if i < extra else 0) + MEDIA_HEADER for i in range(count)]


def simulate(
    cfg: SimConfig, ctrl: CongestionController | None = None
) -> tuple[SimResult, CongestionController]:
    """Run ``cfg`` (with a fresh controller unless one is given) and return what happened."""
    rng = random.Random(cfg.seed)
    if ctrl is None:
        ctrl = CongestionController(min_bps=cfg.min_bps, max_bps=cfg.max_bps, start_bps=cfg.start_bps)
    loss: Callable[[], bool] | None = None
    if cfg.loss == "bernoulli":
        loss = BernoulliLoss(cfg.loss_rate, rng)
    elif cfg.loss == "ge":
        loss = GilbertElliottLoss(cfg.loss_rate, cfg.loss_burst, rng)
    link = BottleneckLink(cfg.queue_ms, cfg.one_way_ms)
    builder = FeedbackBuilder()
    pacer = TokenBucketPacer(cfg.pacing_factor * cfg.start_bps, cfg.burst_bytes)
    res = SimResult()
    end_ns = int(cfg.duration_s * S)
    prop_ns = int(cfg.one_way_ms * MS)
    fb_ns = int(cfg.feedback_interval_ms * MS)
    rtt_ns = int(cfg.rtt_interval_ms * MS)
    schedule = list(cfg.cap_schedule)

    def cap_at(t_ns: int) -> float | None:
        cap: float | None = None
        for start_s, rate in schedule:
            if t_ns >= start_s * S:
                cap = rate
        return cap

    def receiver_clock(t_ns: int) -> int:
        return cfg.receiver_clock_offset_ns + t_ns + round(t_ns * cfg.drift_ppm * 1e-6)

    arrivals: deque[tuple[int, int]] = deque()
    deliveries: deque[tuple[int, tuple[int, int, tuple[int | None, ...]]]] = deque()
    seq = cfg.seq_start
    send_free = 0
    frame = 0
    next_fb = fb_ns
    next_rtt = rtt_ns
    encoder_bps = float(cfg.start_bps)
    last_frame_ns = 0
    cross_gap_ns = round(1200 * 8 * S / cfg.cross_bps) if cfg.cross_bps > 0 else 0
    next_cross = 0

    def cross_until(t_ns: int) -> None:
        """Offer the cross traffic sent up to ``t_ns`` (it shares the queue; its fate is not recorded)."""
        nonlocal next_cross
        while cross_gap_ns and next_cross <= t_ns:
            link.offer(next_cross, 1200, cap_at(next_cross))
            next_cross += cross_gap_ns

    while True:
        t_frame = frame * S // cfg.fps
        t_delivery = deliveries[0][0] if deliveries else end_ns + 1
        t = min(t_frame, next_fb, t_delivery, next_rtt)
        if t > end_ns:
            break
        if t == t_delivery:
            _, (base, ref, entries) = deliveries.popleft()
            ctrl.on_feedback(t, base, ref, entries)
            continue
        if t == next_fb:
            while arrivals and arrivals[0][0] <= t:
                a_ns, a_seq = arrivals.popleft()
                builder.on_packet(a_seq, receiver_clock(a_ns))
            for chunk in builder.build(receiver_clock(t)):
                deliveries.append((t + prop_ns, chunk))
            next_fb += fb_ns
            continue
        if t == next_rtt:
            ctrl.on_rtt((2 * prop_ns + max(0, link.busy_until - t)) // 1000)
            next_rtt += rtt_ns
            continue
        # A frame tick.
        target = ctrl.target_bps(t)
        if cfg.encoder_tau_s > 0:
            alpha = 1.0 - math.exp(-(t - last_frame_ns) / S / cfg.encoder_tau_s)
            encoder_bps += alpha * (target - encoder_bps)
        else:
            encoder_bps = target
        last_frame_ns = t
        size = encoder_bps / 8 / cfg.fps
        if cfg.frame_jitter:
            size *= 1.0 + rng.uniform(-cfg.frame_jitter, cfg.frame_jitter)
        sizes = fragment_sizes(max(1, round(size)), cfg.mtu_payload)
        pacer.set_rate(cfg.pacing_factor * target, t)
        send_t = max(t, send_free)
        first_wait: float | None = None
        last_arrival: int | None = 0
        for i, sz in enumerate(sizes):
            send_t += pacer.delay_ns(send_t, sz)
            pacer.consume(send_t, sz)
            ctrl.history.on_sent(seq, send_t, sz)
            res.sent_bytes += sz
            out: tuple[int, int] | None
            if loss is not None and loss():
                res.dropped_random += 1
                out = None
            else:
                cross_until(send_t)
                out = link.offer(send_t, sz, cap_at(send_t))
                if out is None:
                    res.dropped_queue += 1
            if out is None:
                last_arrival = None
            else:
                arrival, wait = out
                arrivals.append((arrival, seq))
                res.packet_t.append(send_t / S)
                res.packet_wait_ms.append(wait / MS)
                if i == 0:
                    first_wait = wait / MS
                if last_arrival is not None:
                    last_arrival = arrival
            seq = (seq + 1) & 0xFFFFFFFF
        send_free = send_t
        res.frame_t.append(t / S)
        res.target.append(float(target))
        res.standing_ms.append(first_wait)
        res.latency_ms.append(None if last_arrival is None else (last_arrival - t) / MS)
        if frame % cfg.fps == 0:
            res.stats.append((t / S, ctrl.stats()))
        frame += 1
    return res, ctrl
