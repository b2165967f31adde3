"""The sending side's shared link state: one socket, one packet sequence, and what the twin tells us.

Two threads send: the send stage (media and FEC) and the network stage (control packets, retransmissions).
Everything they share lives here behind one lock: the packet sequence counter (numbers must be unique — they
will be AEAD nonces), the send history the congestion controller matches feedback against, the retransmit
buffer NACKs are answered from, the FEC policy's view of the loss the twin sees, and the congestion
controller whose target drives the encoder and the pacer.

Theory of operation: the twin's ``TransportFeedback`` says which of our packets arrived and when. From it the
congestion controller estimates the rate the path carries without queueing (delay-based, see
app/net/congestion.py), and this module measures the loss rate and mean loss-burst length the FEC policy
sizes parity for. The encoder gets ``target × (1 − FEC share)`` so media plus parity fit the target; the
pacer gets ``pacing_factor × target``; retransmissions may use a quarter of the target on top.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from app.engine.link import UdpLink
from app.net.congestion import CongestionController
from app.net.fec import FecPolicy
from app.net.nack import RetransmitBuffer
from app.net.protocol import FecPacket, MediaFlags, MediaPacket, Packet
from app.net.seq import SequenceCounter
from app.net.session import Session

# How quickly the loss estimate follows the feedback (per feedback chunk, ~20 a second).
_LOSS_EWMA = 0.05


class LossMeter:
    """Loss fraction and mean burst length of our packets, from the twin's feedback (network thread)."""

    def __init__(self) -> None:
        self.loss = 0.0
        self.burst = 1.0

    def on_feedback(self, arrivals: Sequence[int | None]) -> None:
        n = len(arrivals)
        if n == 0:
            return
        lost = bursts = 0
        previous_lost = False
        for a in arrivals:
            if a is None:
                lost += 1
                if not previous_lost:
                    bursts += 1
                previous_lost = True
            else:
                previous_lost = False
        self.loss += _LOSS_EWMA * (lost / n - self.loss)
        if bursts:
            self.burst += _LOSS_EWMA * (lost / bursts - self.burst)


class Transport:
    """Sends packets to the twin from any thread and keeps the state both send paths need."""

    def __init__(
        self,
        link: UdpLink,
        *,
        start_bps: int,
        min_bps: int,
        max_bps: int,
        on_target: Callable[[int, float], None] | None = None,
        fps: int = 60,
        fragment_bytes: int = 1200,
        encrypted: bool = False,
    ) -> None:
        """``fps`` and ``fragment_bytes`` (media payload per packet) size a frame in fragments at a given
        target, which the FEC share depends on."""
        self.link = link
        self._frame_bits_per_fragment = fragment_bytes * 8 * fps
        self._lock = threading.Lock()
        self._seq = SequenceCounter()
        self.congestion = CongestionController(min_bps=min_bps, max_bps=max_bps, start_bps=start_bps)
        self.history = self.congestion.history
        self.retransmit = RetransmitBuffer(start_bps)
        self.fec = FecPolicy()
        self.loss = LossMeter()
        self.on_target = on_target
        """Called (network thread) with (target bit/s, FEC share) when the target moves by more than 5 %."""
        self._applied_bps = start_bps
        self._applied_share = 0.0
        self.retransmitted_packets = 0
        self.encrypted = encrypted
        """Seal every packet (PROTOCOL.md §13); without a :attr:`session` they are dropped."""
        self.session: Session | None = None
        """The session with the twin, swapped whole when the pairing changes (any thread reads it)."""
        self.dropped_without_session = 0

    def next_seq(self) -> int:
        """The next packet sequence number (any thread)."""
        with self._lock:
            return self._seq()

    def send(self, pkt: Packet, *, media: bool = False) -> int:
        """Serialise, seal (when encrypted) and send one packet, recording it for congestion control (any
        thread). Returns the bytes sent: 0 when encrypted and there is no session yet (dropped, counted)."""
        data = bytes(pkt)
        if self.encrypted:
            session = self.session
            sealed = None if session is None else session.seal(data)
            if sealed is None:
                self.dropped_without_session += 1
                return 0
            data = sealed
        now = time.monotonic_ns()
        with self._lock:
            self.history.on_sent(pkt.seq, now, len(data), media)
        self.link.send(data)
        return len(data)

    # -- sending media (send thread) ---------------------------------------------------------------------

    def parity_for(self, data_count: int) -> int:
        """FEC parity packets for a frame of ``data_count`` fragments at the loss the twin reports."""
        return self.fec.parity_for(data_count, self.loss.loss, self.loss.burst)

    def remember(self, frame_id: int, packets: Sequence[MediaPacket | FecPacket], now_ns: int) -> None:
        """Keep a frame's data packets so NACKs can be answered."""
        data = [p for p in packets if isinstance(p, MediaPacket)]
        with self._lock:
            self.retransmit.store(frame_id, data, now_ns)

    # -- feedback from the twin (network thread) ---------------------------------------------------------

    def on_nack(self, frame_id: int, indices: Sequence[int], now_ns: int) -> None:
        """Resend what the twin asks for, within the retransmit buffer's rate limit."""
        with self._lock:
            packets = self.retransmit.on_nack(frame_id, indices, now_ns)
        for pkt in packets:
            pkt.seq = self.next_seq()
            pkt.flags |= MediaFlags.RETRANSMIT
            self.send(pkt, media=True)
            self.retransmitted_packets += 1

    def on_feedback(
        self, now_ns: int, base_seq: int, ref_arrival_us: int, arrivals: Sequence[int | None]
    ) -> None:
        with self._lock:
            self.congestion.on_feedback(now_ns, base_seq, ref_arrival_us, arrivals)
        self.loss.on_feedback(arrivals)
        self._apply(now_ns)

    def on_rtt(self, rtt_us: int) -> None:
        with self._lock:
            self.congestion.on_rtt(rtt_us)

    def _apply(self, now_ns: int) -> None:
        with self._lock:
            target = self.congestion.target_bps(now_ns)
        # The FEC share of a frame the size this target makes (a frame of few fragments needs a larger
        # share of parity for the same protection), at the current loss, sizes the encoder's part.
        fragments = max(1, math.ceil(target / self._frame_bits_per_fragment))
        share = self.fec.overhead(fragments, self.loss.loss, self.loss.burst)
        moved = abs(target - self._applied_bps) > 0.05 * self._applied_bps
        if not moved and abs(share - self._applied_share) < 0.02:
            return
        self._applied_bps = target
        self._applied_share = share
        with self._lock:
            self.retransmit.set_rate(target, now_ns)
        if self.on_target is not None:
            self.on_target(target, share)

    @property
    def target_bps(self) -> int:
        """The last target handed to the encoder and pacer, bit/s."""
        return self._applied_bps

    def set_max_bps(self, max_bps: int) -> None:
        """A new ceiling (control socket, any thread); the target follows at the next feedback."""
        with self._lock:
            self.congestion.max_bps = max_bps
            self.congestion.min_bps = min(self.congestion.min_bps, max_bps)
        self._applied_bps = min(self._applied_bps, max_bps)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            cc = self.congestion.stats()
            rtx = self.retransmit.counters_dict()
        return {
            "congestion": cc,
            "target_kbps": round(self._applied_bps / 1000, 1),
            "loss_seen_by_peer_percent": round(self.loss.loss * 100, 2),
            "loss_burst_length": round(self.loss.burst, 2),
            "retransmit": rtx,
            "encrypted": self.encrypted,
            "dropped_without_session": self.dropped_without_session,
        }
