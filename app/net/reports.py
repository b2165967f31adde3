"""Link statistics: what a receiver reports about its peer's packets, and the round-trip time (sans-I/O).

:class:`ReceiveStatistics` sees every packet that parsed from the peer (all types share one sequence
space), rejects replays with a :class:`app.net.seq.ReplayWindow`, and accumulates what a
:class:`app.net.protocol.ReceiverReport` carries: highest sequence number, packets received and lost
(cumulative and since the last report), RFC 3550 interarrival jitter and the receive rate.
:class:`RttEstimator` turns keepalive acks into an RFC 6298 smoothed round-trip time. Times are passed in:
``arrival_ns`` / ``now_ns`` are the receiver's CLOCK_MONOTONIC ns, ``*_us`` values µs.

Theory of operation
-------------------
Sequence numbers are unwrapped (:class:`app.net.seq.Unwrapper`) onto an unbounded line; ``expected`` is
``highest - lowest + 1`` over everything accepted, and ``lost`` is ``expected - received`` floored at 0
(a packet that arrives late after being counted lost simply reduces it). The fraction lost since the last
report is computed as in RFC 3550 A.3. Jitter follows RFC 3550 A.8 with the capture time as the media
timestamp: for consecutive media packets, D = (arrival difference) − (capture difference) in µs, and
J += (|D| − J) / 16. Only media packets carry a capture time; other packets pass ``None`` and do not touch
the jitter, because their send time is not comparable with a capture time.
"""

from __future__ import annotations

from app.net.protocol import ReceiverReport
from app.net.seq import SEQ_MASK, ReplayWindow, Unwrapper, seq_diff


class ReceiveStatistics:
    """Statistics of the packets received from the peer, and the source of our receiver reports."""

    def __init__(self, replay_window: int = 1024) -> None:
        """``replay_window``: how many sequence numbers below the highest are still accepted once."""
        self._window = ReplayWindow(replay_window)
        self._unwrap = Unwrapper()
        self.duplicates = 0
        """Packets rejected because their sequence number was already seen."""
        self.too_old = 0
        """Packets rejected because their sequence number is below the replay window."""
        self._start()

    def _start(self) -> None:
        """Reset everything but the replay counters."""
        self._window.reset()
        self._unwrap.reset()
        self._lowest = 0
        self._highest = -1
        self._received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._jitter_us = 0.0
        self._last_transit_us: int | None = None
        self._interval_bytes = 0
        self._interval_start_ns: int | None = None
        self._last_arrival_ns: int | None = None
        self._loss_fraction = 0.0
        self._receive_kbps = 0

    @property
    def received(self) -> int:
        """Packets accepted since the start (or reset)."""
        return self._received

    @property
    def expected(self) -> int:
        """Packets the peer sent in the span of sequence numbers seen: highest − lowest + 1."""
        return self._highest - self._lowest + 1 if self._received else 0

    @property
    def lost(self) -> int:
        """Packets expected but not received, floored at 0."""
        return max(0, self.expected - self._received)

    @property
    def highest_seq(self) -> int | None:
        """Highest sequence number accepted (u32), or None before the first packet."""
        return self._window.highest

    @property
    def jitter_us(self) -> float:
        """RFC 3550 interarrival jitter of media packets, in µs."""
        return self._jitter_us

    @property
    def loss_fraction(self) -> float:
        """Fraction (0.0-1.0) of the packets expected in the last report interval that were lost."""
        return self._loss_fraction

    @property
    def receive_kbps(self) -> int:
        """Receive rate over the last report interval, in kilobits per second."""
        return self._receive_kbps

    def on_packet(self, seq: int, arrival_ns: int, capture_us: int | None, size: int) -> bool:
        """Account one parsed packet of ``size`` bytes. Returns False for a replay (a duplicate or a sequence
        number below the window): the caller must drop it. ``capture_us`` is a media packet's capture time
        (µs, the sender's clock), None for other packets."""
        window = self._window
        if not window.check(seq):
            highest = window.highest
            if highest is not None and -seq_diff(seq, highest) >= window.size:
                self.too_old += 1
            else:
                self.duplicates += 1
            return False
        window.update(seq)
        ext = self._unwrap.unwrap(seq)
        if not self._received:
            self._lowest = self._highest = ext
        elif ext > self._highest:
            self._highest = ext
        elif ext < self._lowest:
            self._lowest = ext
        self._received += 1
        self._interval_bytes += size
        if self._interval_start_ns is None:
            self._interval_start_ns = arrival_ns
        self._last_arrival_ns = arrival_ns
        if capture_us is not None:
            transit = arrival_ns // 1000 - capture_us
            last = self._last_transit_us
            if last is not None:
                self._jitter_us += (abs(transit - last) - self._jitter_us) / 16.0
            self._last_transit_us = transit
        return True

    def make_report(
        self, seq: int, stream_id: int, frames_received: int, frames_lost: int, *, now_ns: int | None = None
    ) -> ReceiverReport:
        """The report to send now, with packet sequence number ``seq``; starts a new report interval.

        ``frames_received`` / ``frames_lost`` are the caller's cumulative frame counters for ``stream_id``
        (sent modulo 2**32). The receive rate covers the interval from the previous report to ``now_ns``;
        without ``now_ns``, to the last packet's arrival.
        """
        expected = self.expected
        expected_interval = expected - self._expected_prior
        lost_interval = expected_interval - (self._received - self._received_prior)
        self._expected_prior = expected
        self._received_prior = self._received
        if expected_interval > 0 and lost_interval > 0:
            fraction = min(255, (lost_interval << 8) // expected_interval)
            self._loss_fraction = lost_interval / expected_interval
        else:
            fraction = 0
            self._loss_fraction = 0.0
        end_ns = now_ns if now_ns is not None else self._last_arrival_ns
        start_ns = self._interval_start_ns
        kbps = 0
        if end_ns is not None and start_ns is not None and end_ns > start_ns:
            kbps = self._interval_bytes * 8_000_000 // (end_ns - start_ns)
        self._receive_kbps = kbps
        self._interval_bytes = 0
        if end_ns is not None:
            self._interval_start_ns = end_ns
        highest = self._window.highest
        return ReceiverReport(
            seq=seq,
            stream_id=stream_id,
            highest_seq=0 if highest is None else highest,
            packets_received=self._received & SEQ_MASK,
            packets_lost=min(self.lost, SEQ_MASK),
            fraction_lost=fraction,
            jitter_us=min(round(self._jitter_us), SEQ_MASK),
            frames_received=frames_received & SEQ_MASK,
            frames_lost=frames_lost & SEQ_MASK,
            receive_kbps=min(kbps, SEQ_MASK),
        )

    def reset(self) -> None:
        """Start over (the peer restarted: a new session). The replay counters are kept."""
        self._start()


class RttEstimator:
    """Round-trip time from keepalive acks, smoothed as RFC 6298 smooths TCP's RTT. All values in µs."""

    def __init__(self, max_rtt_us: int = 10_000_000) -> None:
        """Samples above ``max_rtt_us`` (default 10 s) are rejected as impossible."""
        self.max_rtt_us = max_rtt_us
        self.latest_us: int | None = None
        """The most recent accepted sample."""
        self.srtt_us: float | None = None
        """Smoothed RTT (RFC 6298 SRTT)."""
        self.rttvar_us: float | None = None
        """RTT variation (RFC 6298 RTTVAR)."""
        self.min_us: int | None = None
        """Smallest sample seen."""
        self.samples = 0
        """Samples accepted."""
        self.rejected = 0
        """Samples rejected as impossible."""

    def on_ack(self, now_us: int, echo_us: int, hold_us: int) -> int | None:
        """Take one :class:`app.net.protocol.KeepaliveAck` received at ``now_us`` (our clock, µs).

        Returns the sample, now − echo − hold, or None when it is impossible (an echo from the future, a
        negative result, or above ``max_rtt_us``) and was ignored.
        """
        rtt = now_us - echo_us - hold_us
        if echo_us > now_us or hold_us < 0 or not 0 <= rtt <= self.max_rtt_us:
            self.rejected += 1
            return None
        self.samples += 1
        self.latest_us = rtt
        if self.min_us is None or rtt < self.min_us:
            self.min_us = rtt
        if self.srtt_us is None or self.rttvar_us is None:
            self.srtt_us = float(rtt)
            self.rttvar_us = rtt / 2.0
        else:
            self.rttvar_us = 0.75 * self.rttvar_us + 0.25 * abs(self.srtt_us - rtt)
            self.srtt_us = 0.875 * self.srtt_us + 0.125 * rtt
        return rtt
