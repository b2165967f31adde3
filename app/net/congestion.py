"""Send-side bandwidth estimation: how many bit/s the path takes now without building a queue (sans-I/O).

The sender records every packet it sends (:class:`SendHistory`); the receiver reports when each of them
arrived (:class:`FeedbackBuilder` → ``TransportFeedback`` packets, every ~50 ms); the sender's
:class:`CongestionController` matches the two and produces the target rate that the engine turns into the
encoder bitrate (``target × (1 − fec_overhead)``) and the pacer rate (``pacing_factor × target``).

Why delay-based (GCC-like), and not loss-based or BBR
----------------------------------------------------
Latency is the product. A loss-based controller (Reno/CUBIC style) finds the capacity by filling the
bottleneck queue until it overflows: on a relay with a 200 ms drop-tail queue that is 200 ms of standing
delay. Random loss (Wi-Fi, a bad cable) is not congestion either, and the FEC repairs it, so loss must not
set the rate. A queue shows up in the one-way delay long before anything is dropped, so this controller
watches the one-way delay and keeps the bottleneck queue *empty*. BBR models the path too, but it probes
by sending 1.25× its estimate for a round trip, which a video encoder cannot do: the sender is
application-limited and its bitrate follows a change only within about a second. GCC (WebRTC's estimator)
was designed for exactly this sender, so the structure follows it: packet groups, a delay trend, an AIMD
rate with a link-capacity estimate, a loss guard that acts only on heavy loss, and a cap at 1.5× the
delivered rate. It departs from GCC where the product needs it:

- it measures the *standing* queue directly (the delay of each group's first packet above the base
  delay), so "no standing queue" is a rule, not a side effect of a trend threshold;
- a decrease drains the measured queue within ~0.6 s instead of by a fixed 15 %;
- it reads the bottleneck's capacity off the dispersion of each frame's packet train (the pacer lets a
  frame out as a burst, so every frame is a free packet-train probe, like GCC's probe clusters). The
  target stays at or below 90 % of it, which keeps the queue empty without ever probing past the
  bottleneck, and a jump in it (the cap lifted) allows a fast ramp up at once.

Theory of operation
-------------------
*Delay.* For each acknowledged packet the one-way delay ``arrival_us − send_us`` mixes two unrelated
clocks, so only its changes mean anything. The base delay is the minimum over the last ten 1-s buckets of
send time, each bucket's minimum counted as risen by 1000 ppm of its age, so that a receiver clock
running fast (NTP slews by up to 500 ppm) is not mistaken for a queue. Packets sent within 5 ms of a
group's first packet form a group (a frame). A group's standing-queue sample is its smallest one-way
delay minus the base: the first packet of a frame waits only for what earlier frames left in the queue,
not for its own frame, so the sample is zero whenever the link keeps up, however large the frames are.
The queuing delay ``q`` is the smallest sample of the last 50 ms (one jitter spike cannot fake a queue);
the *trend* is the least-squares slope of the samples of the last 300 ms (s of queue gained per s). The
detector says *overuse* when ``q`` > 10 ms and would not drain within 1.2 s at the current slope, when
``q`` > 3 ms and grows by more than 20 ms/s, or when ``q`` has stayed above 3 ms for 500 ms (without
draining). The rate may grow only while ``q`` ≤ 3 ms.

*Packet trains.* For a group of ≥ 3 media packets that reached the receiver more spread out than it
was sent (by 25 %), the bytes after the first arrival over the arrival spread is a sample of the
bottleneck's capacity; the train capacity is the median of the last 15 samples (none older than 2 s). A
train that arrived as fast as it was sent shows only that the path takes at least that rate: three in a
row well above (× 1.3) the train capacity mean the bottleneck grew, and the old samples are dropped.

*Rate.* On overuse, at most once per response time (the smoothed feedback delay, or RTT + 50 ms, plus
150 ms, and at least 250 ms, so one decrease shows before the next), the target falls to
``f × delivered``: ``delivered`` is the smaller of the rates the receiver got over the last 100 and 500 ms
(by its clock), and ``f = 1 − q′ / 0.6 s`` clamped to [0.5, 0.85], ``q′`` being the queue expected by the
time the decrease acts (``q + trend × response time``). The delivered rate at the overuse becomes the
capacity estimate. Then the target holds until the queue is empty (and at least 100 ms). While the queue
is empty it increases according to how far it is from the capacity it knows (the estimate, else the train
capacity): multiplicatively (e^(0.5/s), ×1.65/s) below 80 % of it or when nothing is known, additively by
10 % of it per second up to 95 %, and by 3 % of it per second above. Every increase (applied per feedback,
crediting at most 100 ms) is bounded by 1.5× the delivered rate over 500 ms (the encoder often makes less
than the target, and a target the sender never tried means nothing), by 90 % of the train capacity, and by
``max_bps``. The capacity estimate is forgotten when the target passes it by 10 % with the queue still
empty, or when the train capacity grows to 1.3× both the estimate and the lowest train capacity seen since
the overuse (the cap lifted).

*Loss.* A packet reported not received while a later packet of the same chunk was received counts as
lost, if it was sent after the last decrease (packets sent before it met the queue that decrease is
already draining). The loss fraction is taken over the last second, or as far back as it takes to hold
200 packets. Up to 10 % nothing happens: the FEC repairs it, and random loss is not congestion. Above
10 % the target is cut by half the loss fraction, at most once per response time, and does not grow
until a window of 200 packets sent since shows 10 % or less.

*Silence.* If packets were sent but no usable feedback came for 1 s, the target halves, and again for
each further second of sending into silence.

*Hostile input.* Feedback about seqs not in the history, duplicates, offsets outside the wire range or
that put a packet more than 1 s below the base delay or 3 s above it, and malformed chunks are ignored
and counted in ``feedback_ignored``; a chunk over 256 entries is cut (``clamped``), as is a target outside
[min, max]. After 32 impossible delays in a row the delay model starts over (the peer's clock really did
jump). Every container is bounded; a clock that steps back stands still.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.net.seq import SEQ_MASK, Unwrapper

MAX_FEEDBACK_ENTRIES = 256
"""Most packets one feedback chunk covers (``TransportFeedback`` carries at most 256 arrivals)."""
MAX_OFFSET_US = 0xFFFFFFFE
"""Largest arrival offset a feedback chunk can carry, in µs (the u32 wire field, minus the "lost" value)."""

# SendHistory slot states.
_UNACKED = 0
_ACKED = 1
_LOST = 2

_S = 1_000_000_000
_MS = 1_000_000
_MAX_REF_US = (1 << 64) - 1
_MAX_RTT_US = 10_000_000
_MAX_PACKET = 65_535


@dataclass(frozen=True, slots=True)
class CongestionConfig:
    """Tuning of :class:`CongestionController`. The defaults are the ones the module docstring explains."""

    group_ns: int = 5 * _MS
    """Packets sent within this long of a group's first packet form one group, ns."""
    base_bucket_ns: int = 1 * _S
    """Width of one bucket of the base-delay minimum, ns."""
    base_buckets: int = 10
    """Buckets the base delay is the minimum of (base window = buckets × bucket width)."""
    drift_ppm: float = 1000.0
    """Clock drift the base delay allows for, ppm: twice the 500 ppm by which NTP may slew CLOCK_MONOTONIC."""
    queue_window_ns: int = 50 * _MS
    """The queuing delay is the smallest group sample sent within this long of the newest, ns."""
    trend_window_ns: int = 300 * _MS
    """The trend is fitted over the group samples sent within this long of the newest, ns."""
    q_low_us: int = 3_000
    """Standing queue below which the rate may grow, µs."""
    q_high_us: int = 10_000
    """Standing queue above which the rate must fall unless it is already draining fast enough, µs."""
    q_persist_ns: int = 500 * _MS
    """A standing queue above ``q_low_us`` for this long is overuse even when it does not grow, ns."""
    trend_overuse: float = 0.02
    """Queue growth (s of delay per s) above which a queue over ``q_low_us`` is overuse."""
    drain_s: float = 0.6
    """Time a decrease aims to drain the measured queue in, s; a queue that drains slower than twice this
    is still overuse."""
    beta: float = 0.85
    """Largest decrease factor: on overuse the target is at most ``beta`` × the delivered rate."""
    beta_min: float = 0.5
    """Smallest decrease factor, however large the queue."""
    response_extra_ns: int = 150 * _MS
    """Added to the feedback delay to get the response time between two decreases, ns."""
    min_response_ns: int = 250 * _MS
    """Shortest response time between two decreases, ns."""
    hold_min_ns: int = 100 * _MS
    """Shortest hold after a decrease before the rate may grow again, ns."""
    fast_gain_per_s: float = 0.5
    """Multiplicative increase far below the known capacity: target × e^(gain × s) (0.5 ≈ ×1.65/s)."""
    near_fraction: float = 0.8
    """Below this fraction of the known capacity the increase is multiplicative."""
    close_fraction: float = 0.95
    """Above this fraction of the known capacity the increase is the slow probe."""
    near_additive_per_s: float = 0.10
    """Additive increase between ``near_fraction`` and ``close_fraction``, × capacity per s."""
    close_additive_per_s: float = 0.03
    """Additive increase above ``close_fraction``, × capacity per s."""
    max_step_ns: int = 100 * _MS
    """Longest time one increase step accounts for, ns (a feedback gap is not credited as growth)."""
    app_limit_factor: float = 1.5
    """An increase never takes the target above this × the delivered rate."""
    capacity_overshoot: float = 1.1
    """The capacity estimate is forgotten when the target passes it by this factor without overuse."""
    train_growth: float = 1.3
    """… or when the packet-train capacity grows by this factor over both the estimate and the lowest train
    capacity seen since the overuse; also the factor by which an undispersed train must beat the train
    capacity to count against it."""
    train_headroom: float | None = 0.9
    """An increase never takes the target above this × the packet-train capacity: sending just under the
    bottleneck's own rate keeps its queue empty without probing past it. None: probe by delay alone."""
    train_min_packets: int = 3
    """Fewest packets of a group that make a packet-train sample."""
    train_dispersion: float = 1.25
    """A train is a capacity sample only if it arrived spread this much more than it was sent."""
    train_samples: int = 15
    """Packet-train samples the median is taken over."""
    train_max_age_ns: int = 2 * _S
    """Packet-train samples older than this (send time) are not used, ns."""
    delivered_long_ns: int = 500 * _MS
    """Window of the delivered rate for the app-limit cap and the stats, ns (receiver clock)."""
    delivered_short_ns: int = 100 * _MS
    """Short window of the delivered rate, used with the long one at a decrease, ns."""
    loss_threshold: float = 0.10
    """Loss fraction above which the loss guard cuts the target."""
    loss_window_ns: int = 1 * _S
    """Window of the loss fraction (at least), ns."""
    loss_min_packets: int = 200
    """Fewest reported packets the loss guard judges on: the window reaches further back than
    ``loss_window_ns`` until it holds this many."""
    feedback_timeout_ns: int = 1 * _S
    """No usable feedback for this long halves the target (and again each further period), ns."""
    max_queue_us: int = 3_000_000
    """A one-way delay more than this above the base is impossible and ignored, µs."""
    max_below_base_us: int = 1_000_000
    """A one-way delay more than this below the base is impossible and ignored, µs."""
    reanchor_after: int = 32
    """Consecutive impossible delays after which the delay model starts over."""


class SendHistory:
    """The packets recently sent: seq → (send time, size, media?), a ring of ``capacity`` entries.

    Every packet the sender sends (media, FEC, retransmissions, control) goes through :meth:`on_sent`, in
    send order. An entry is forgotten when its ring slot is reused ``capacity`` packets later (16384
    packets is ~13 s at 12 Mb/s), so memory is fixed. Also records whether feedback has acknowledged each
    packet, so a duplicate report is recognised.
    """

    __slots__ = (
        "_media",
        "_send_ns",
        "_seq",
        "_size",
        "_state",
        "capacity",
        "last_send_ns",
        "rejected",
        "sent",
    )

    def __init__(self, capacity: int = 16384) -> None:
        if not 1 <= capacity <= 1 << 22:
            raise ValueError(f"history capacity {capacity} is out of range 1..{1 << 22}")
        self.capacity = capacity
        self._seq = [-1] * capacity
        self._send_ns = [0] * capacity
        self._size = [0] * capacity
        self._media = [False] * capacity
        self._state = [_UNACKED] * capacity
        self.sent = 0
        """Packets recorded."""
        self.rejected = 0
        """Calls ignored because the seq or size was impossible."""
        self.last_send_ns: int | None = None
        """Send time of the newest packet recorded, ns."""

    def on_sent(self, seq: int, send_ns: int, size: int, media: bool = True) -> None:
        """Record packet ``seq`` (u32) of ``size`` bytes (header included) sent at ``send_ns``
        (CLOCK_MONOTONIC ns). ``media``: False for control packets."""
        if not 0 <= seq <= SEQ_MASK or not 0 < size <= _MAX_PACKET:
            self.rejected += 1
            return
        i = seq % self.capacity
        self._seq[i] = seq
        self._send_ns[i] = send_ns
        self._size[i] = size
        self._media[i] = media
        self._state[i] = _UNACKED
        self.sent += 1
        self.last_send_ns = send_ns

    def find(self, seq: int) -> int | None:
        """The slot holding packet ``seq``, or None when it was never sent or is forgotten."""
        i = seq % self.capacity
        return i if self._seq[i] == seq else None

    def send_ns(self, seq: int) -> int | None:
        """When packet ``seq`` was sent (ns), or None when unknown."""
        i = self.find(seq)
        return None if i is None else self._send_ns[i]

    def size(self, seq: int) -> int | None:
        """Size of packet ``seq`` in bytes, or None when unknown."""
        i = self.find(seq)
        return None if i is None else self._size[i]


class FeedbackBuilder:
    """Receiver side: collects the arrival time of every packet from the peer and cuts them into
    feedback chunks ``(base_seq, ref_arrival_us, arrivals)`` of at most 256 entries.

    :meth:`build` (every ~50 ms) covers every packet received since the previous build, in seq order; a
    run of missing seqs shorter than 256 between two reported packets (or since the previous build's end)
    is reported as ``None`` entries so the sender sees the loss, a longer run is skipped (not reported).
    ``ref_arrival_us`` is the earliest arrival in its chunk (receiver's CLOCK_MONOTONIC µs), so every
    offset is ≥ 0. A packet that arrives after its seq was already covered by a build (reordered or late)
    is reported in a later build as a single-entry chunk of its own, unless it is 1024 or more seqs behind
    (then it is dropped: the sender has long given up on it). Packets far behind 64 times in a row mean the
    peer's seq jumped (it restarted): the builder starts over. At most ``max_pending`` packets wait
    between builds; more are dropped and counted.
    """

    __slots__ = (
        "_next",
        "_pending",
        "_stale_run",
        "_unwrap",
        "duplicates",
        "invalid",
        "last_build_ns",
        "late_dropped",
        "late_reported",
        "max_pending",
        "overflow",
        "received",
        "resyncs",
    )

    LATE_WINDOW = 1024
    """Seqs this far behind the covered range are dropped instead of reported late."""
    RESYNC_AFTER = 64
    """Consecutive packets dropped as far behind that make the builder start over."""

    def __init__(self, max_pending: int = 8192) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending {max_pending} must be at least 1")
        self.max_pending = max_pending
        self._pending: dict[int, int] = {}
        self._unwrap = Unwrapper()
        self._next: int | None = None
        self._stale_run = 0
        self.received = 0
        """Packets accepted for feedback."""
        self.duplicates = 0
        """Packets ignored because their seq was already waiting for the next build."""
        self.overflow = 0
        """Packets dropped because ``max_pending`` were already waiting."""
        self.invalid = 0
        """Calls ignored for an impossible seq or arrival time."""
        self.late_reported = 0
        """Packets reported in a single-entry chunk after their range was covered."""
        self.late_dropped = 0
        """Packets dropped as too far behind the covered range."""
        self.resyncs = 0
        """Times the builder started over because the peer's seq jumped."""
        self.last_build_ns: int | None = None
        """``now_ns`` of the latest build."""

    def reset(self) -> None:
        """Forget everything (the peer restarted: a new session). The counters are kept."""
        self._pending.clear()
        self._unwrap.reset()
        self._next = None
        self._stale_run = 0

    def on_packet(self, seq: int, arrival_ns: int) -> None:
        """Record that packet ``seq`` (u32, any type) from the peer arrived at ``arrival_ns`` (our
        CLOCK_MONOTONIC ns)."""
        if not 0 <= seq <= SEQ_MASK or not 0 <= arrival_ns <= _MAX_REF_US * 1000:
            self.invalid += 1
            return
        ext = self._unwrap.unwrap(seq)
        nxt = self._next
        if nxt is not None and ext < nxt - self.LATE_WINDOW:
            self.late_dropped += 1
            self._stale_run += 1
            if self._stale_run >= self.RESYNC_AFTER:
                self.resyncs += 1
                self.reset()
            return
        self._stale_run = 0
        pending = self._pending
        if ext in pending:
            self.duplicates += 1
            return
        if len(pending) >= self.max_pending:
            self.overflow += 1
            return
        pending[ext] = arrival_ns // 1000
        self.received += 1

    def build(self, now_ns: int) -> list[tuple[int, int, tuple[int | None, ...]]]:
        """The chunks ``(base_seq, ref_arrival_us, arrivals)`` covering every packet received since the
        previous build, in seq order (late single-entry chunks first), then forgets them. ``now_ns`` is
        our CLOCK_MONOTONIC ns, kept as :attr:`last_build_ns`."""
        self.last_build_ns = now_ns
        pending = self._pending
        if not pending:
            return []
        items = sorted(pending.items())
        pending.clear()
        nxt = self._next
        out: list[tuple[int, int, tuple[int | None, ...]]] = []
        chunk_base: int | None = None
        chunk: list[int | None] = []
        for ext, arrival_us in items:
            if nxt is not None and ext < nxt:
                out.append((ext & SEQ_MASK, arrival_us, (0,)))
                self.late_reported += 1
                continue
            if chunk_base is not None and ext - chunk_base < MAX_FEEDBACK_ENTRIES:
                chunk.extend([None] * (ext - chunk_base - len(chunk)))
                chunk.append(arrival_us)
                continue
            start = nxt
            if chunk_base is not None:
                out.append(self._chunk(chunk_base, chunk))
                start = chunk_base + len(chunk)
            # A short run of missing seqs before this packet is reported as None, so the sender sees the
            # loss; a long one (an outage or a seq jump) is skipped.
            if start is None or not 0 <= ext - start < MAX_FEEDBACK_ENTRIES:
                start = ext
            chunk_base = start
            chunk = [None] * (ext - start)
            chunk.append(arrival_us)
        if chunk_base is not None:
            out.append(self._chunk(chunk_base, chunk))
        last = items[-1][0] + 1
        self._next = last if nxt is None or last > nxt else nxt
        return out

    @staticmethod
    def _chunk(base: int, arrivals_us: list[int | None]) -> tuple[int, int, tuple[int | None, ...]]:
        ref = min(a for a in arrivals_us if a is not None)
        # An offset past the wire field (a packet held over an hour between builds) cannot be sent: such
        # a packet is reported as not received instead.
        entries = tuple(None if a is None or a - ref > MAX_OFFSET_US else a - ref for a in arrivals_us)
        return base & SEQ_MASK, ref, entries


class CongestionController:
    """Send-side bandwidth estimator: feedback in, target rate (bit/s) out. See the module docstring.

    The sender calls ``history.on_sent`` for every packet, :meth:`on_feedback` for every feedback chunk,
    optionally :meth:`on_rtt`, and reads :meth:`target_bps` whenever it sets the encoder and pacer rates.
    """

    def __init__(
        self,
        *,
        min_bps: int,
        max_bps: int,
        start_bps: int,
        history: SendHistory | None = None,
        config: CongestionConfig | None = None,
    ) -> None:
        """``min_bps`` ≤ target ≤ ``max_bps`` always; the target starts at ``start_bps`` (clamped).
        ``history``: the :class:`SendHistory` the sender records into (a new one by default)."""
        if not 0 < min_bps <= max_bps:
            raise ValueError(f"need 0 < min_bps ({min_bps}) <= max_bps ({max_bps})")
        self.min_bps = min_bps
        self.max_bps = max_bps
        self.config = config if config is not None else CongestionConfig()
        self.history = history if history is not None else SendHistory()
        self.feedback_ignored = 0
        """Feedback entries (or whole calls, and RTT samples) ignored as impossible, unknown or duplicate."""
        self.clamped = 0
        """Values clamped into range: the target into [min, max], over-long feedback cut to 256 entries."""
        self.overuse = 0
        """Overuse detections that decreased the target."""
        self.loss_decreases = 0
        """Decreases taken by the loss guard."""
        self.timeouts = 0
        """Halvings for lack of feedback."""
        self.reanchors = 0
        """Times the delay model started over after a run of impossible delays."""
        self.feedback = 0
        """Feedback chunks received."""
        self._target = float(start_bps)
        self._clamp_target()
        self._state = "increase"
        self._now_ns: int | None = None
        self._last_feedback_ns: int | None = None
        self._timeout_mark_ns: int | None = None
        self._last_decrease_ns: int | None = None
        self._last_increase_ns: int | None = None
        self._q_high_since_ns: int | None = None
        self._heavy_loss = False
        self._srtt_us: float | None = None
        self._fb_delay_ns: float | None = None
        self._capacity_bps: float | None = None
        self._capacity_train_bps: float | None = None
        # Delivered rate: (arrival µs, bytes) of acknowledged packets, receiver clock.
        self._acks: deque[tuple[int, int]] = deque(maxlen=16384)
        self._max_arrival_us: int | None = None
        # Loss: one [now ns, received, lost] entry per feedback chunk, with running sums.
        self._loss: deque[list[int]] = deque(maxlen=1024)
        self._loss_received = 0
        self._loss_lost = 0
        self._loss_mark_ns = -(1 << 63)
        self._trains: deque[tuple[int, float]] = deque(maxlen=self.config.train_samples)
        self._train_contradictions = 0
        self._reset_delay()
        self._q_us = 0.0
        self._trend = 0.0
        self._delivered_bps: float | None = None

    # -- inputs --------------------------------------------------------------------------------------------

    def on_rtt(self, rtt_us: int) -> None:
        """A round-trip time sample (µs), e.g. from keepalives. Impossible values are ignored and counted."""
        if not isinstance(rtt_us, int) or not 0 <= rtt_us <= _MAX_RTT_US:
            self.feedback_ignored += 1
            return
        srtt = self._srtt_us
        self._srtt_us = float(rtt_us) if srtt is None else 0.875 * srtt + 0.125 * rtt_us

    def on_feedback(
        self, now_ns: int, base_seq: int, ref_arrival_us: int, arrivals: Sequence[int | None]
    ) -> None:
        """One feedback chunk received at ``now_ns`` (our CLOCK_MONOTONIC ns): packet ``base_seq + i``
        arrived ``arrivals[i]`` µs after ``ref_arrival_us`` (the receiver's clock), or not (None)."""
        self.feedback += 1
        now_ns = self._tick(now_ns)
        if (
            not isinstance(base_seq, int)
            or not isinstance(ref_arrival_us, int)
            or not 0 <= base_seq <= SEQ_MASK
            or not 0 <= ref_arrival_us <= _MAX_REF_US
        ):
            self.feedback_ignored += 1
            return
        if len(arrivals) > MAX_FEEDBACK_ENTRIES:
            self.clamped += 1
            arrivals = arrivals[:MAX_FEEDBACK_ENTRIES]
        last_received = -1
        for i, off in enumerate(arrivals):
            if off is not None:
                last_received = i
        hist = self.history
        h_seq, h_send, h_size, h_media, h_state = (
            hist._seq,
            hist._send_ns,
            hist._size,
            hist._media,
            hist._state,
        )
        capacity = hist.capacity
        received = lost = acked = 0
        # Loss counts only packets sent after the last decrease: those sent before it met the queue that
        # decrease is already draining.
        loss_mark = self._loss_mark_ns
        newest_send: int | None = None
        for i, off in enumerate(arrivals):
            seq = (base_seq + i) & SEQ_MASK
            slot = seq % capacity
            if h_seq[slot] != seq:
                self.feedback_ignored += 1
                continue
            state = h_state[slot]
            if off is None:
                if i < last_received and state == _UNACKED:
                    h_state[slot] = _LOST
                    if h_send[slot] > loss_mark:
                        lost += 1
                continue
            if not isinstance(off, int) or not 0 <= off <= MAX_OFFSET_US or state == _ACKED:
                self.feedback_ignored += 1
                continue
            send_ns = h_send[slot]
            if not self._on_arrival(send_ns, h_size[slot], h_media[slot], ref_arrival_us + off):
                self.feedback_ignored += 1
                continue
            h_state[slot] = _ACKED
            if send_ns > loss_mark:
                received += 1
            acked += 1
            if newest_send is None or send_ns > newest_send:
                newest_send = send_ns
        if acked == 0 and lost == 0:
            return
        self._last_feedback_ns = self._timeout_mark_ns = now_ns
        if newest_send is not None:
            fb = float(now_ns - newest_send)
            if 0 <= fb <= 10 * _S:
                prev = self._fb_delay_ns
                self._fb_delay_ns = fb if prev is None else 0.9 * prev + 0.1 * fb
        self._add_loss(now_ns, received, lost)
        self._update(now_ns)

    def target_bps(self, now_ns: int) -> int:
        """The target rate at ``now_ns``, bit/s, in [min_bps, max_bps]."""
        now_ns = self._tick(now_ns)
        mark = self._timeout_mark_ns
        last_send = self.history.last_send_ns
        if (
            mark is not None
            and last_send is not None
            and last_send > mark
            and now_ns - mark >= self.config.feedback_timeout_ns
        ):
            # No usable feedback: the path may be gone or congested in a way we cannot see; back off.
            self._timeout_mark_ns = now_ns
            self.timeouts += 1
            self._target *= 0.5
            self._clamp_target()
            self._state = "hold"
        return round(self._target)

    # -- outputs -------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters and the current estimates (rates in bit/s, delays in ms)."""
        return {
            "target_bps": round(self._target),
            "delivered_bps": None if self._delivered_bps is None else round(self._delivered_bps),
            "capacity_bps": None if self._capacity_bps is None else round(self._capacity_bps),
            "train_bps": None if (t := self._train_bps()) is None else round(t),
            "queuing_delay_ms": round(self._q_us / 1000.0, 3),
            "trend": round(self._trend, 4),
            "loss_fraction": round(self._loss_fraction(), 4),
            "state": self._state,
            "overuse": self.overuse,
            "loss_decreases": self.loss_decreases,
            "timeouts": self.timeouts,
            "reanchors": self.reanchors,
            "feedback": self.feedback,
            "feedback_ignored": self.feedback_ignored,
            "clamped": self.clamped,
        }

    # -- internals -----------------------------------------------------------------------------------------

    def _tick(self, now_ns: int) -> int:
        """``now_ns``, never earlier than the last one seen (a clock that steps back stands still)."""
        last = self._now_ns
        if last is not None and now_ns < last:
            return last
        self._now_ns = now_ns
        return now_ns

    def _clamp_target(self) -> None:
        t = self._target
        if not math.isfinite(t) or t < self.min_bps:
            self._target = float(self.min_bps)
            self.clamped += 1
        elif t > self.max_bps:
            self._target = float(self.max_bps)
            self.clamped += 1

    def _reset_delay(self) -> None:
        """Start the delay model over: base delay, groups, trend."""
        # Base delay: [bucket start ns, min one-way delay µs, its send ns] per bucket (sender clock).
        self._base: deque[list[int]] = deque(maxlen=self.config.base_buckets)
        # Group samples: [first send ns, min one-way delay µs]; the last one is the open group.
        self._samples: deque[list[int]] = deque(maxlen=256)
        self._group_first_ns: int | None = None
        self._group_train_ns = 0
        self._group_last_ns = 0
        self._group_count = 0
        self._group_bytes = 0
        self._group_first_size = 0
        self._group_arr_min = 0
        self._group_arr_max = 0
        self._rejected_run = 0

    def _base_us(self, now_ns: int | None = None) -> int | None:
        """The base one-way delay (µs, mixed clocks). With ``now_ns`` (sender clock), each bucket's minimum
        counts as risen by the largest clock drift since it was measured, so a receiver clock that runs
        fast is not mistaken for a growing queue: old minima fade out at ``drift_ppm``."""
        base = self._base
        if not base:
            return None
        if now_ns is None:
            return min(b[1] for b in base)
        ppm = self.config.drift_ppm * 1e-9
        return min(b[1] + round(max(0, now_ns - b[2]) * ppm) for b in base)

    def _on_arrival(self, send_ns: int, size: int, media: bool, arrival_us: int) -> bool:
        """Account one acknowledged packet; False when its delay is impossible (then ignored)."""
        cfg = self.config
        owd = arrival_us - send_ns // 1000
        base = self._base_us()
        if base is not None and not -cfg.max_below_base_us <= owd - base <= cfg.max_queue_us:
            self._rejected_run += 1
            if self._rejected_run >= cfg.reanchor_after:
                self.reanchors += 1
                self._reset_delay()
                self._acks.clear()
                self._max_arrival_us = None
            return False
        self._rejected_run = 0
        # Base delay: the minimum per bucket of send time, over the last few buckets.
        bucket = send_ns - send_ns % cfg.base_bucket_ns
        buckets = self._base
        if not buckets or bucket > buckets[-1][0]:
            buckets.append([bucket, owd, send_ns])
        elif owd < buckets[-1][1]:
            # The current bucket, or a late packet of an older one: that only lowers the current minimum.
            buckets[-1][1] = owd
            buckets[-1][2] = send_ns
        # Delivered rate, by the receiver's clock.
        self._acks.append((arrival_us, size))
        if self._max_arrival_us is None or arrival_us > self._max_arrival_us:
            self._max_arrival_us = arrival_us
        # Groups, in send order; a packet sent before the open group began is late and only counted above.
        first = self._group_first_ns
        if first is not None and send_ns < first:
            return True
        if first is None or send_ns - first > cfg.group_ns:
            self._close_group()
            self._group_first_ns = send_ns
            self._group_count = 0
            self._samples.append([send_ns, owd])
        else:
            sample = self._samples[-1]
            sample[1] = min(sample[1], owd)
        if media:
            # The packet train is the frame's media packets; a control packet between them is no part of it.
            if self._group_count == 0:
                self._group_train_ns = self._group_last_ns = send_ns
                self._group_bytes = self._group_first_size = size
                self._group_arr_min = self._group_arr_max = arrival_us
            else:
                self._group_last_ns = max(self._group_last_ns, send_ns)
                self._group_bytes += size
                if arrival_us < self._group_arr_min:
                    self._group_arr_min = arrival_us
                    self._group_first_size = size
                self._group_arr_max = max(self._group_arr_max, arrival_us)
            self._group_count += 1
        return True

    def _close_group(self) -> None:
        """Take the packet-train capacity sample of the group just completed, if it is one."""
        cfg = self.config
        first = self._group_first_ns
        if first is None or self._group_count < cfg.train_min_packets:
            return
        recv_span_us = self._group_arr_max - self._group_arr_min
        send_span_us = (self._group_last_ns - self._group_train_ns) / 1000.0
        bytes_after_first = self._group_bytes - self._group_first_size
        if recv_span_us < 50 or bytes_after_first <= 0:
            return
        rate = bytes_after_first * 8e6 / recv_span_us
        if recv_span_us >= cfg.train_dispersion * send_span_us + 50:
            self._trains.append((first, rate))
            self._train_contradictions = 0
            return
        # A train that arrived no more spread than it was sent shows the sender's pace, not the path: only
        # that the path takes at least that much. Three in a row well above the capacity the trains showed
        # so far mean the bottleneck grew (or went away): those samples and the capacity estimate are stale.
        current = self._train_bps()
        if current is not None and rate > cfg.train_growth * current:
            self._train_contradictions += 1
            if self._train_contradictions >= 3:
                self._trains.clear()
                self._capacity_bps = None
                self._train_contradictions = 0

    def _train_bps(self) -> float | None:
        """Median packet-train capacity of the recent frames, bit/s, or None without enough samples."""
        trains = self._trains
        newest = self.history.last_send_ns
        if not trains or newest is None:
            return None
        # Frames stop making samples when they leave slower than the bottleneck takes them (e.g. after the
        # bottleneck grew): old samples then expire instead of holding the rate down.
        rates = sorted(r for t, r in trains if newest - t <= self.config.train_max_age_ns)
        if len(rates) < 3:
            return None
        return rates[len(rates) // 2]

    def _delivered(self, window_ns: int) -> float | None:
        """Bytes acknowledged with arrivals in the last ``window_ns`` (receiver clock) as bit/s."""
        newest = self._max_arrival_us
        acks = self._acks
        if newest is None or not acks:
            return None
        window_us = window_ns // 1000
        # Drop what is too old for any window, so the scan below stays short.
        keep_us = max(self.config.delivered_long_ns, self.config.delivered_short_ns) // 1000 * 2
        while acks and acks[0][0] < newest - keep_us:
            acks.popleft()
        cutoff = newest - window_us
        # Acks are in send order, which is arrival order up to reordering: stop well past the cutoff.
        stop = cutoff - 100_000
        total = 0
        oldest = newest
        for arrival, size in reversed(acks):
            if arrival <= cutoff:
                if arrival < stop:
                    break
                continue
            total += size
            oldest = min(oldest, arrival)
        if acks[0][0] > cutoff:
            # Less history than the window: measure over what there is (at least 20 ms of it).
            span = newest - oldest
            if span < 20_000:
                return None
            window_us = span
        return total * 8e6 / window_us

    def _add_loss(self, now_ns: int, received: int, lost: int) -> None:
        loss = self._loss
        # The window is the last second, or as far back as it takes to hold enough packets to judge.
        while (
            loss
            and now_ns - loss[0][0] > self.config.loss_window_ns
            and self._loss_received + self._loss_lost - loss[0][1] - loss[0][2]
            >= self.config.loss_min_packets
        ):
            old = loss.popleft()
            self._loss_received -= old[1]
            self._loss_lost -= old[2]
        if len(loss) == loss.maxlen:
            old = loss.popleft()
            self._loss_received -= old[1]
            self._loss_lost -= old[2]
        loss.append([now_ns, received, lost])
        self._loss_received += received
        self._loss_lost += lost

    def _clear_loss(self) -> None:
        self._loss.clear()
        self._loss_received = self._loss_lost = 0

    def _loss_fraction(self) -> float:
        total = self._loss_received + self._loss_lost
        return self._loss_lost / total if total > 0 else 0.0

    def _measure(self) -> None:
        """Queuing delay ``q`` (µs) and trend (s/s) from the group samples."""
        cfg = self.config
        samples = self._samples
        if not samples:
            self._q_us = 0.0
            self._trend = 0.0
            return
        newest = samples[-1][0]
        base = self._base_us(newest)
        if base is None:
            self._q_us = 0.0
            self._trend = 0.0
            return
        while samples and newest - samples[0][0] > max(cfg.trend_window_ns, cfg.queue_window_ns) * 2:
            samples.popleft()
        q = min(s[1] for s in samples if newest - s[0] <= cfg.queue_window_ns)
        self._q_us = float(max(0, q - base))
        xs: list[float] = []
        ys: list[float] = []
        for t, owd in samples:
            if newest - t <= cfg.trend_window_ns:
                xs.append((t - newest) / 1e9)
                ys.append(owd / 1e6)
        n = len(xs)
        if n < 4:
            self._trend = 0.0
            return
        mx = sum(xs) / n
        my = sum(ys) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        if sxx <= 0.0:
            self._trend = 0.0
            return
        self._trend = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx

    def _response_ns(self) -> float:
        """How long one decrease takes to show in the feedback: the minimum time between two, ns."""
        cfg = self.config
        fb = self._fb_delay_ns if self._fb_delay_ns is not None else 100 * _MS
        if self._srtt_us is not None:
            fb = max(fb, self._srtt_us * 1000.0 + 50 * _MS)
        return max(float(cfg.min_response_ns), fb + cfg.response_extra_ns)

    def _capacity_hint(self, train: float | None) -> float | None:
        """The capacity the increase is measured against, bit/s, or None when nothing is known."""
        cap = self._capacity_bps
        if cap is not None:
            # The smallest train capacity seen since the overuse: the samples at the overuse itself may
            # still be from before a drop.
            low = self._capacity_train_bps
            if train is not None and (low is None or train < low):
                self._capacity_train_bps = low = train
            grown = (
                train is not None
                and low is not None
                and train > self.config.train_growth * low
                and train > cap * self.config.train_growth
            )
            if self._target > self.config.capacity_overshoot * cap or grown:
                # Passed without a queue, or the bottleneck visibly grew: the estimate is stale.
                self._capacity_bps = cap = None
        return cap if cap is not None else train

    def _update(self, now_ns: int) -> None:
        """Run the detector and the rate controller after a feedback chunk."""
        cfg = self.config
        self._measure()
        q = self._q_us
        trend = self._trend
        long_bps = self._delivered(cfg.delivered_long_ns)
        self._delivered_bps = long_bps
        if q > cfg.q_low_us:
            if self._q_high_since_ns is None:
                self._q_high_since_ns = now_ns
        else:
            self._q_high_since_ns = None
        # Draining fast enough: at the current slope the queue is gone within the drain time.
        draining = trend < 0 and q / 1e6 <= -trend * 2.0 * cfg.drain_s
        overuse = (
            (q > cfg.q_high_us and not draining)
            or (q > cfg.q_low_us and trend > cfg.trend_overuse)
            or (
                self._q_high_since_ns is not None
                and now_ns - self._q_high_since_ns >= cfg.q_persist_ns
                and not draining
            )
        )
        last_dec = self._last_decrease_ns
        may_decrease = last_dec is None or now_ns - last_dec >= self._response_ns()
        loss = self._loss_fraction()
        judged = self._loss_received + self._loss_lost >= cfg.loss_min_packets
        if judged:
            # The verdict (which blocks increases) stands until the window, cleared at each decrease, holds
            # enough packets sent since then to judge again.
            self._heavy_loss = loss > cfg.loss_threshold
        if judged and self._heavy_loss and may_decrease:
            self._target *= 1.0 - 0.5 * loss
            self.loss_decreases += 1
            self._decreased(now_ns)
            may_decrease = False
        if overuse:
            if may_decrease:
                short_bps = self._delivered(cfg.delivered_short_ns)
                rates = [r for r in (long_bps, short_bps) if r is not None]
                delivered = min(rates) if rates else self._target
                # The queue keeps growing until this decrease shows: drain what it will be by then.
                q_s = q / 1e6 + max(0.0, trend) * self._response_ns() / 1e9
                factor = min(cfg.beta, max(cfg.beta_min, 1.0 - q_s / cfg.drain_s))
                self._target = min(self._target, factor * delivered)
                self._capacity_bps = delivered
                self._capacity_train_bps = self._train_bps()
                self.overuse += 1
                self._decreased(now_ns)
            elif self._state != "decrease" or now_ns != last_dec:
                self._state = "hold"
            return
        if self._heavy_loss:
            if now_ns != self._last_decrease_ns:
                self._state = "hold"
            return
        if self._state != "increase":
            if q <= cfg.q_low_us and (last_dec is None or now_ns - last_dec >= cfg.hold_min_ns):
                self._state = "increase"
                self._last_increase_ns = now_ns
            else:
                self._state = "hold"
            return
        last_inc = self._last_increase_ns
        self._last_increase_ns = now_ns
        if q > cfg.q_low_us or last_inc is None:
            return
        dt = min(now_ns - last_inc, cfg.max_step_ns) / 1e9
        self._increase(dt, long_bps)

    def _decreased(self, now_ns: int) -> None:
        self._clamp_target()
        self._state = "decrease"
        self._last_decrease_ns = now_ns
        self._q_high_since_ns = None
        # Loss measured before the decrease says nothing about the new rate.
        self._clear_loss()
        last_send = self.history.last_send_ns
        if last_send is not None:
            self._loss_mark_ns = last_send

    def _increase(self, dt: float, delivered: float | None) -> None:
        cfg = self.config
        target = self._target
        train = self._train_bps()
        hint = self._capacity_hint(train)
        if hint is None or target < cfg.near_fraction * hint:
            new = target * math.exp(cfg.fast_gain_per_s * dt)
        elif target < cfg.close_fraction * hint:
            new = target + cfg.near_additive_per_s * hint * dt
        else:
            new = target + cfg.close_additive_per_s * hint * dt
        if delivered is not None:
            # The sender is often application-limited: do not claim a rate that was never tried.
            new = min(new, max(target, cfg.app_limit_factor * delivered))
        else:
            new = target
        if train is not None and cfg.train_headroom is not None:
            new = min(new, max(target, cfg.train_headroom * train))
        if new > target:
            self._target = min(new, float(self.max_bps))
