"""The receiving half of a doorway: UDP → assemble → jitter buffer → decode → display.

- ``NetworkStage`` owns the socket's receive side (network thread). It drops and counts anything that is not
  a well-formed packet from the twin, assembles fragments into frames, passes complete frames through the
  jitter buffer, and runs the link's timers: receiver reports, keepalives (RTT), keyframe requests, and
  giving up on frames past their deadline. Control packets for our own sending half (keyframe requests from
  the twin, its reports) are handed to callbacks.
- ``DecodeStage`` decodes every frame it is given (the reference chain needs all of them) but passes only
  the newest picture on: when it falls behind it catches up without showing stale pictures. It checks the
  chain itself — a P frame whose predecessor it did not decode is never decoded, so a corrupt picture is
  never shown — and asks for a keyframe when the chain breaks.
- ``DisplayStage`` shows pictures on the sink; its inbox holds one picture and a newer one replaces it.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from app.audio.device import make_realtime
from app.engine.metrics import Histogram
from app.engine.stage import Inbox, Stage
from app.engine.transport import Transport
from app.net.congestion import FeedbackBuilder
from app.net.fragment import AssembledFrame, Assembler
from app.net.jitter import JitterBuffer
from app.net.nack import NackTracker
from app.net.protocol import (
    AudioPacket,
    FecPacket,
    Keepalive,
    KeepaliveAck,
    KeyframeRequest,
    MediaFlags,
    MediaPacket,
    Nack,
    PacketType,
    ProtocolError,
    ReceiverReport,
    RoomReport,
    StreamId,
    TransportFeedback,
    parse_packet,
)
from app.net.reports import ReceiveStatistics, RttEstimator
from app.net.seal import SEAL_ERROR_REASONS, SealError
from app.video.decoder import DecodeError, VideoDecoder
from app.video.display.base import DisplaySink
from app.video.frames import DecodedFrame, FrameTimes

log = logging.getLogger(__name__)


class NetworkStage(Stage):
    """Receives and dispatches datagrams, recovers lost fragments, and runs the link timers (network thread).

    Recovery, cheapest first: FEC parity repairs a frame as soon as any k of its k+m packets are in; a
    fragment still missing is NACKed only when the RTT plus a margin fits before the frame's deadline; a frame
    that cannot be completed by its deadline breaks the reference chain, and the twin is asked for a
    keyframe (capped to one frame's budget by its rate buffer, so no burst).
    """

    def __init__(
        self,
        transport: Transport,
        out: Inbox[AssembledFrame] | None,
        *,
        frame_deadline_ms: int,
        report_interval_ms: int,
        keepalive_interval_ms: int,
        keyframe_request_interval_ms: int,
        feedback_interval_ms: int,
        on_keyframe_request: Callable[[], None],
        on_error: Callable[[str, BaseException], None],
        on_audio: Callable[[AudioPacket, int], None] | None = None,
        on_room: Callable[[RoomReport], None] | None = None,
    ) -> None:
        super().__init__("network", on_error)
        self.on_audio = on_audio
        self.on_room = on_room
        self.transport = transport
        self.link = transport.link
        self.out = out
        self.on_keyframe_request = on_keyframe_request
        self.deadline_ns = frame_deadline_ms * 1_000_000
        self.report_ns = report_interval_ms * 1_000_000
        self.keepalive_ns = keepalive_interval_ms * 1_000_000
        self.kf_interval_ns = keyframe_request_interval_ms * 1_000_000
        self.feedback_ns = feedback_interval_ms * 1_000_000
        self.assembler = Assembler()
        self.jitter = JitterBuffer(gap_timeout_ns=self.deadline_ns)
        self.nack = NackTracker(self.deadline_ns)
        self.reorder_floor_ns = 8_000_000
        self.feedback = FeedbackBuilder()
        self.rx_stats = ReceiveStatistics()
        self.rtt = RttEstimator()
        self.keyframe_wanted = threading.Event()
        self._next_report = 0
        self._next_keepalive = 0
        self._next_expire = 0
        self._next_feedback = 0
        self._last_kf_request = 0
        self._last_kf_log = -(2**62)
        self._kf_request_id = 0
        self.counters: dict[str, int] = {
            "datagrams": 0,
            "bytes": 0,
            "malformed": 0,
            "strangers": 0,
            "replays": 0,
            "media_packets": 0,
            "fec_packets": 0,
            "audio_packets": 0,
            "plaintext_refused": 0,
            "handshakes_unpaired": 0,
            "sealed_without_session": 0,
            **{f"sealed_{reason}": 0 for reason in SEAL_ERROR_REASONS},
            "frames_complete": 0,
            "frames_to_decoder": 0,
            "frames_expired": 0,
            "nacks_received": 0,
            "feedback_received": 0,
            "keyframe_requests_sent": 0,
            "keyframe_requests_received": 0,
            "keepalives_received": 0,
            "reports_received": 0,
            "room_reports_received": 0,
            "peer_restarts": 0,
        }
        self.session_id = secrets.randbits(32) | 1
        """Ours, sent in every keepalive so the twin notices when we restart."""
        self.peer_session = 0
        self.peer_report: ReceiverReport | None = None
        self.last_peer_packet_ns = 0
        self.assembly_ms = Histogram()
        self.transit_ms = Histogram()
        self.realtime = False
        """Run at real-time priority (set when audio is on: audio packets are handed on from here)."""

    def setup(self) -> None:
        if self.realtime:
            make_realtime("network")

    def run_once(self) -> None:
        got = self.link.recv(0.002)
        now = time.monotonic_ns()
        if got is not None:
            self._on_datagram(got[0], got[1], now)
        self._timers(now)

    def _on_datagram(self, data: bytes, addr: tuple[str, int], now: int) -> None:
        c = self.counters
        c["datagrams"] += 1
        c["bytes"] += len(data)
        if not self.link.is_peer(addr):
            # One comparison, no parsing, no reply: a stranger's packet costs almost nothing.
            c["strangers"] += 1
            return
        if self.transport.encrypted:
            opened = self._open(data, now)
            if opened is None:
                return
            data = opened
        try:
            pkt = parse_packet(data)
        except ProtocolError as exc:
            c["malformed"] += 1
            if c["malformed"] == 1 or log.isEnabledFor(logging.DEBUG):
                log.warning("network: dropping malformed datagram from %s:%d: %s", addr[0], addr[1], exc)
            return
        if isinstance(pkt, Keepalive) and pkt.session_id and pkt.session_id != self.peer_session:
            # The twin (re)started: its sequence numbers and frame ids begin again, so forget the old ones
            # before the replay check would drop everything it sends.
            if self.peer_session:
                log.info(
                    "network: the twin restarted (session %08x -> %08x)", self.peer_session, pkt.session_id
                )
                c["peer_restarts"] += 1
            self.peer_session = pkt.session_id
            self._reset_peer_state()
        # Retransmissions carry the original capture time: keep them out of the jitter estimate.
        capture_us = (
            pkt.capture_us if isinstance(pkt, MediaPacket) and not pkt.flags & MediaFlags.RETRANSMIT else None
        )
        if not self.rx_stats.on_packet(pkt.seq, now, capture_us, len(data)):
            c["replays"] += 1
            return
        self.last_peer_packet_ns = now
        self.feedback.on_packet(pkt.seq, now)
        if isinstance(pkt, MediaPacket):
            c["media_packets"] += 1
            self._on_media(pkt, now)
        elif isinstance(pkt, FecPacket):
            c["fec_packets"] += 1
            self._on_media(pkt, now)
        elif isinstance(pkt, AudioPacket):
            c["audio_packets"] += 1
            if self.on_audio is not None:
                self.on_audio(pkt, now)
        elif isinstance(pkt, TransportFeedback):
            c["feedback_received"] += 1
            self.transport.on_feedback(now, pkt.base_seq, pkt.ref_arrival_us, pkt.arrivals)
        elif isinstance(pkt, Nack):
            c["nacks_received"] += 1
            self.transport.on_nack(pkt.frame_id, pkt.missing, now)
        elif isinstance(pkt, KeyframeRequest):
            c["keyframe_requests_received"] += 1
            self.on_keyframe_request()
        elif isinstance(pkt, Keepalive):
            c["keepalives_received"] += 1
            hold_us = (time.monotonic_ns() - now) // 1000
            ack = KeepaliveAck(seq=self.transport.next_seq(), echo_us=pkt.sent_us, hold_us=hold_us)
            self.transport.send(ack)
        elif isinstance(pkt, KeepaliveAck):
            rtt = self.rtt.on_ack(now // 1000, pkt.echo_us, pkt.hold_us)
            if rtt is not None:
                self.transport.on_rtt(rtt)
        elif isinstance(pkt, ReceiverReport):
            c["reports_received"] += 1
            self.peer_report = pkt
        elif isinstance(pkt, RoomReport):
            c["room_reports_received"] += 1
            if self.on_room is not None:
                self.on_room(pkt)

    def _open(self, data: bytes, now: int) -> bytes | None:
        """An encrypted link's datagram: handshakes go to the session, sealed packets come back opened.

        Returns the plaintext packet to parse, or None when the datagram was a handshake or was dropped
        (every reason counted).
        """
        c = self.counters
        if len(data) < 4:
            c["malformed"] += 1
            return None
        session = self.transport.session
        if data[3] == 0:
            if data[2] not in (PacketType.HANDSHAKE_INIT, PacketType.HANDSHAKE_RESPONSE):
                c["plaintext_refused"] += 1
                return None
            if session is None:
                c["handshakes_unpaired"] += 1
                return None
            if data[2] == PacketType.HANDSHAKE_INIT:
                response = session.on_init(data, now, self.transport.next_seq)
                if response is not None:
                    self.link.send(response)
            elif session.on_response(data, now):
                log.info("network: call to the twin established (key epoch %s)", session.epoch)
            return None
        if session is None:
            c["sealed_without_session"] += 1
            return None
        try:
            return session.open(data, now)
        except SealError as exc:
            c[f"sealed_{exc.reason}"] += 1
            return None

    def _reset_peer_state(self) -> None:
        self.rx_stats.reset()
        self.assembler.reset()
        self.jitter.reset()
        self.nack.reset()
        self.feedback.reset()

    def _on_media(self, pkt: MediaPacket | FecPacket, now: int) -> None:
        if self.out is None or pkt.stream_id != StreamId.VIDEO:
            return
        frame = self.assembler.push(pkt, now)
        if frame is None:
            missing = self.assembler.missing(pkt.frame_id)
            if missing is not None:
                k, needed, indices = missing
                self.nack.on_fragment(pkt.frame_id, now, data_count=k, still_needed=needed, missing=indices)
            return
        self.nack.on_complete(frame.frame_id)
        self.counters["frames_complete"] += 1
        self.assembly_ms.record((frame.completed_ns - frame.first_arrival_ns) / 1e6)
        # Only meaningful when both ends share CLOCK_MONOTONIC (one host: the demo and the benchmark).
        self.transit_ms.record(now / 1e6 - frame.capture_us / 1e3)
        self._deliver(self.jitter.push(frame, now))

    def _deliver(self, frames: list[AssembledFrame]) -> None:
        if self.out is None:
            return
        for f in frames:
            self.counters["frames_to_decoder"] += 1
            self.out.put(f)

    def _rtt_ns(self) -> int:
        srtt = self.rtt.srtt_us
        # Before the first sample, assume a LAN-ish 20 ms rather than nothing.
        return 20_000_000 if srtt is None else int(srtt * 1000)

    def _timers(self, now: int) -> None:
        session = self.transport.session
        if session is not None:
            # Calls, retries and rekeys: handshakes are plaintext and go out as they are.
            for datagram in session.poll(now, time.time_ns(), self.transport.next_seq):
                self.link.send(datagram)
        self._media_timers(now)

    def _media_timers(self, now: int) -> None:
        if self.out is not None:
            # Path jitter spreads a frame's packets over several ms (and the RFC 3550 estimate, taken per
            # frame, under-reads it): wait half a frame interval before calling a gap a loss. A newer
            # frame's arrival still shows a loss at once.
            self.nack.reorder_ns = max(self.reorder_floor_ns, int(3 * self.rx_stats.jitter_us * 1000))
            for frame_id, indices in self.nack.poll(now, self._rtt_ns()):
                self.transport.send(
                    Nack(
                        seq=self.transport.next_seq(),
                        stream_id=StreamId.VIDEO,
                        frame_id=frame_id,
                        missing=indices,
                    )
                )
        if now >= self._next_expire:
            self._next_expire = now + 2_000_000
            # Give a frame up once a retransmission could no longer arrive (about two round trips), not
            # after the full configured deadline: the sooner the keyframe request leaves, the shorter
            # the freeze.
            deadline = min(self.deadline_ns, max(40_000_000, int(2.5 * self._rtt_ns()) + 15_000_000))
            self.nack.deadline_ns = deadline
            for frame_id in self.assembler.expire(now, deadline):
                self.counters["frames_expired"] += 1
                self.nack.on_abandoned(frame_id)
                self.jitter.mark_lost(frame_id)
            self._deliver(self.jitter.poll(now))
            if self.jitter.keyframe_needed:
                self.jitter.clear_keyframe_needed()
                self.keyframe_wanted.set()
        # Repeated until the decoder sees a keyframe and clears the flag: a request or the keyframe itself
        # may be lost, so ask again once the answer is overdue (a round trip and a frame or two).
        repeat_ns = min(self.kf_interval_ns, max(30_000_000, int(1.5 * self._rtt_ns()) + 20_000_000))
        if self.keyframe_wanted.is_set() and now - self._last_kf_request >= repeat_ns:
            self._last_kf_request = now
            self._kf_request_id += 1
            self.counters["keyframe_requests_sent"] += 1
            for _ in range(2):
                # Two copies: 16 bytes each, and one lost request would otherwise cost a whole repeat.
                req = KeyframeRequest(
                    seq=self.transport.next_seq(), stream_id=StreamId.VIDEO, request_id=self._kf_request_id
                )
                self.transport.send(req)
            # Requests repeat every interval while the picture is broken: log the first of an episode only.
            level = logging.INFO if now - self._last_kf_log >= 2_000_000_000 else logging.DEBUG
            self._last_kf_log = now
            log.log(level, "network: asked the twin for a keyframe (#%d)", self._kf_request_id)
        if now >= self._next_feedback:
            self._next_feedback = now + self.feedback_ns
            for base_seq, ref_us, arrivals in self.feedback.build(now):
                fb = TransportFeedback(
                    seq=self.transport.next_seq(), base_seq=base_seq, ref_arrival_us=ref_us, arrivals=arrivals
                )
                self.transport.send(fb)
        if now >= self._next_keepalive:
            self._next_keepalive = now + self.keepalive_ns
            ka = Keepalive(seq=self.transport.next_seq(), sent_us=now // 1000, session_id=self.session_id)
            self.transport.send(ka)
        if now >= self._next_report and self.out is not None:
            self._next_report = now + self.report_ns
            report = self.rx_stats.make_report(
                seq=self.transport.next_seq(),
                stream_id=StreamId.VIDEO,
                frames_received=self.counters["frames_complete"],
                frames_lost=self.counters["frames_expired"],
            )
            self.transport.send(report)

    def stats(self) -> dict[str, Any]:
        peer = self.peer_report
        asm = self.assembler.counters_dict()
        frames = self.counters["frames_complete"] + self.counters["frames_expired"]
        return {
            **self.counters,
            "assembler": asm,
            "jitter": self.jitter.counters_dict(),
            "nack": self.nack.counters_dict(),
            "rtt_ms": None if self.rtt.srtt_us is None else round(self.rtt.srtt_us / 1000, 2),
            "jitter_ms": round(self.rx_stats.jitter_us / 1000, 2),
            "loss_percent": round(self.rx_stats.loss_fraction * 100, 2),
            "loss_before_recovery": round(self.rx_stats.lost / max(1, self.rx_stats.expected), 5),
            "loss_after_recovery": round(self.counters["frames_expired"] / max(1, frames), 5),
            "fec_repaired_fragments": asm.get("fec_recovered_fragments", 0),
            "retransmitted_fragments_received": asm.get("retransmitted", 0),
            "peer_sees_loss_percent": None if peer is None else round(peer.fraction_lost / 2.56, 1),
            "assembly_ms": self.assembly_ms.snapshot(),
            "capture_to_complete_ms": self.transit_ms.snapshot(),
        }


class DecodeStage(Stage):
    """Decodes frames in chain order and offers the newest picture to display (decode thread)."""

    def __init__(
        self,
        decoder: VideoDecoder,
        inbox: Inbox[AssembledFrame],
        out: Inbox[DecodedFrame],
        keyframe_wanted: threading.Event,
        on_error: Callable[[str, BaseException], None],
    ) -> None:
        super().__init__("decode", on_error)
        self.decoder = decoder
        self.inbox = inbox
        self.out = out
        # Shared with the network stage, which repeats keyframe requests while it is set.
        self.keyframe_wanted = keyframe_wanted
        self._last_id: int | None = None
        self.waiting_for_keyframe = True
        self.frames = 0
        self.decode_errors = 0
        self.skipped_broken_chain = 0
        self.not_shown_behind = 0
        self.decode_ms = Histogram()
        self.e2e_ms = Histogram()

    def run_once(self) -> None:
        first = self.inbox.get(timeout=0.1)
        if first is None:
            return
        batch = [first]
        while (more := self.inbox.get_nowait()) is not None:
            batch.append(more)
        newest: DecodedFrame | None = None
        for af in batch:
            got = self._decode(af)
            if got is not None:
                if newest is not None:
                    self.not_shown_behind += 1
                newest = got
        if newest is not None:
            self.out.put(newest)

    def _decode(self, af: AssembledFrame) -> DecodedFrame | None:
        chained = self._last_id is not None and af.frame_id == (self._last_id + 1) & 0xFFFFFFFF
        if not af.keyframe and (self.waiting_for_keyframe or not chained):
            # A P frame without its reference would decode into a smeared picture: never show one.
            self.skipped_broken_chain += 1
            if not self.waiting_for_keyframe:
                self.waiting_for_keyframe = True
                log.info(
                    "decode: frame %d arrived without its reference; waiting for a keyframe", af.frame_id
                )
            self.keyframe_wanted.set()
            return None
        started = time.monotonic_ns()
        try:
            pictures = self.decoder.decode(af.data)
        except DecodeError as exc:
            self.decode_errors += 1
            self.waiting_for_keyframe = True
            self._last_id = None
            # The decoder logs once per run of failures; per-frame detail only when debugging.
            if log.isEnabledFor(logging.DEBUG):
                log.debug("decode: frame %d failed to decode, skipping: %s", af.frame_id, exc)
            self.keyframe_wanted.set()
            return None
        if af.keyframe:
            self.keyframe_wanted.clear()
        self.waiting_for_keyframe = False
        self._last_id = af.frame_id
        if not pictures:
            return None
        now = time.monotonic_ns()
        self.frames += 1
        self.decode_ms.record((now - started) / 1e6)
        self.e2e_ms.record(now / 1e6 - af.capture_us / 1e3)
        times = FrameTimes(captured=af.capture_us * 1000, received=af.completed_ns, decoded=now)
        return DecodedFrame(frame=pictures[-1], frame_id=af.frame_id, times=times)

    def teardown(self) -> None:
        self.decoder.close()

    def stats(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "decode_errors": self.decode_errors,
            "skipped_broken_chain": self.skipped_broken_chain,
            "not_shown_behind": self.not_shown_behind,
            "dropped_decoder_busy": self.inbox.dropped,
            "waiting_for_keyframe": self.waiting_for_keyframe,
            "decode_ms": self.decode_ms.snapshot(),
            "capture_to_decoded_ms": self.e2e_ms.snapshot(),
        }


class DisplayStage(Stage):
    """Shows the newest decoded picture on the sink (display thread; SDL is bound to it)."""

    def __init__(
        self, sink: DisplaySink, inbox: Inbox[DecodedFrame], on_error: Callable[[str, BaseException], None]
    ) -> None:
        super().__init__("display", on_error)
        self.sink = sink
        self.inbox = inbox
        self.frames = 0
        self.show_ms = Histogram()
        self.last_shown_ns = 0
        self.hold_ms = 0.0
        """Lip sync: how long after decoding a picture is shown, ms (0 unless audio plays later than
        video; set by the audio engine, read here)."""
        self.age_ms: float | None = None
        """Smoothed (shown − sender's capture time) of the pictures shown, ms. The two clocks differ by an
        unknown offset, so only comparisons with another stream of the same sender (audio) mean anything."""

    def setup(self) -> None:
        self.sink.open()

    def run_once(self) -> None:
        df = self.inbox.get(timeout=0.1)
        if df is None:
            # Nothing to show (the twin is not sending): keep a window responsive to the window system.
            self.sink.poll_events()
            return
        if self.hold_ms > 0:
            df = self._hold(df)
        self.sink.show(df)
        self.frames += 1
        self.last_shown_ns = df.times.shown or time.monotonic_ns()
        self.show_ms.record((self.last_shown_ns - df.times.decoded) / 1e6)
        if df.times.captured:
            age = (self.last_shown_ns - df.times.captured) / 1e6
            self.age_ms = age if self.age_ms is None else 0.9 * self.age_ms + 0.1 * age

    def _hold(self, df: DecodedFrame) -> DecodedFrame:
        """Wait until ``hold_ms`` after the picture was decoded (lip sync), then show it.

        Newer pictures wait in the inbox meanwhile (newest wins there): replacing this one with them would
        never show anything once the hold exceeds a frame interval.
        """
        remaining = (df.times.decoded + self.hold_ms * 1e6 - time.monotonic_ns()) / 1e9
        if remaining > 0:
            time.sleep(min(remaining, 0.1))
        return df

    def teardown(self) -> None:
        self.sink.close()

    def stats(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "replaced_before_shown": self.inbox.dropped,
            "decoded_to_shown_ms": self.show_ms.snapshot(),
            "lip_sync_hold_ms": round(self.hold_ms, 1),
        }
