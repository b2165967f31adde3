"""The sending half of a doorway: capture → encode → packetize and pace → UDP.

Three stages on three threads, wired downstream-first (each stage is handed the inbox of the next):

- ``CaptureStage`` blocks on the capture source (which paces itself: a camera, or the synthetic scene in
  real time) and offers each picture to the encoder's inbox; when the encoder is still busy the picture is
  dropped and counted, as a camera would.
- ``EncodeStage`` encodes one picture at a time, honouring keyframe requests and bitrate changes that arrive
  from other threads as plain attribute writes (read once per frame).
- ``SendStage`` cuts each access unit into fragments and paces them through a token bucket, so a large
  keyframe does not leave as one burst that overflows a switch or a receive buffer, while an ordinary frame
  leaves at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from app.engine.metrics import Histogram
from app.engine.stage import Inbox, Stage
from app.engine.transport import Transport
from app.net.fragment import Packetizer
from app.net.pacer import TokenBucketPacer
from app.net.protocol import MEDIA_HEADER_SIZE, StreamId
from app.video.capture.base import CaptureError, CaptureSource
from app.video.encoder import VideoEncoder
from app.video.frames import CapturedFrame, EncodedFrame
from app.video.ratefit import RateFit

log = logging.getLogger(__name__)


class CaptureStage(Stage):
    """Reads the capture source and offers pictures to the encoder (capture thread)."""

    def __init__(
        self, source: CaptureSource, out: Inbox[CapturedFrame], on_error: Callable[[str, BaseException], None]
    ) -> None:
        super().__init__("capture", on_error)
        self.source = source
        self.out = out
        self.frames = 0
        self.slate_frames = 0
        self.errors = 0

    def setup(self) -> None:
        self.source.open()

    def run_once(self) -> None:
        try:
            cf = self.source.read()
        except CaptureError as exc:
            # Only a bare source raises here; the engine wraps real cameras in ResilientCapture.
            self.errors += 1
            log.warning("capture: %s", exc)
            time.sleep(0.5)
            return
        self.frames += 1
        if cf.slate:
            self.slate_frames += 1
        self.out.put(cf)

    def teardown(self) -> None:
        self.source.close()

    def stats(self) -> dict[str, Any]:
        return {
            "source": self.source.name,
            "frames": self.frames,
            "slate_frames": self.slate_frames,
            "dropped_encoder_busy": self.out.dropped,
        }


class EncodeStage(Stage):
    """Encodes pictures and offers access units to the send stage (encode thread)."""

    def __init__(
        self,
        encoder: VideoEncoder,
        inbox: Inbox[CapturedFrame],
        out: Inbox[EncodedFrame],
        keyframe_min_interval_ms: int,
        on_error: Callable[[str, BaseException], None],
        *,
        fps: int,
    ) -> None:
        super().__init__("encode", on_error)
        self.encoder = encoder
        self.inbox = inbox
        self.out = out
        self._keyframe_min_ns = keyframe_min_interval_ms * 1_000_000
        self._keyframe_wanted = False
        self._last_forced_ns = 0
        self._bitrate_kbps: int | None = None
        # The target congestion control set (kbit/s); the encoder is asked for it × the rate fit's factor.
        self._target_kbps = encoder.bitrate_kbps
        self.ratefit = RateFit(fps)
        self._lock = threading.Lock()
        self.encode_ms = Histogram()
        self.frames = 0
        self.keyframes = 0
        self.keyframe_requests = 0
        self.keyframe_requests_ignored = 0
        self.bytes_out = 0

    def request_keyframe(self) -> bool:
        """Ask for a keyframe at the next picture (any thread). Rate limited: returns False if ignored."""
        now = time.monotonic_ns()
        with self._lock:
            self.keyframe_requests += 1
            if self._keyframe_wanted or now - self._last_forced_ns < self._keyframe_min_ns:
                self.keyframe_requests_ignored += 1
                return False
            self._keyframe_wanted = True
            self._last_forced_ns = now
            return True

    def set_bitrate(self, kbps: int) -> None:
        """Change the target bitrate from the next picture on (any thread)."""
        self._bitrate_kbps = kbps

    def run_once(self) -> None:
        cf = self.inbox.get(timeout=0.1)
        if cf is None:
            return
        kbps, self._bitrate_kbps = self._bitrate_kbps, None
        if kbps is not None:
            self._target_kbps = kbps
        target = self._target_kbps
        asked = self.ratefit.encoder_kbps(target)
        # Small moves of the fit are not worth an encoder reconfiguration.
        if kbps is not None or abs(asked - self.encoder.bitrate_kbps) > 0.02 * self.encoder.bitrate_kbps:
            self.encoder.set_bitrate(asked)
            log.debug("encode: target %d kb/s, encoder asked for %d kb/s", target, asked)
        with self._lock:
            force, self._keyframe_wanted = self._keyframe_wanted, False
        for ef in self.encoder.encode(cf, force_keyframe=force):
            self.ratefit.on_frame(len(ef.data), target, keyframe=ef.keyframe)
            self.frames += 1
            self.keyframes += ef.keyframe
            self.bytes_out += len(ef.data)
            self.encode_ms.record((ef.times.encoded - ef.times.captured) / 1e6)
            self.out.put(ef)

    def teardown(self) -> None:
        self.encoder.close()

    def stats(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder.name,
            "frames": self.frames,
            "keyframes": self.keyframes,
            "keyframe_requests": self.keyframe_requests,
            "keyframe_requests_ignored": self.keyframe_requests_ignored,
            "bytes": self.bytes_out,
            "target_kbps": self._target_kbps,
            "encoder_kbps": self.encoder.bitrate_kbps,
            "rate_fit": self.ratefit.stats(),
            "dropped_sender_busy": self.out.dropped,
            "capture_to_encoded_ms": self.encode_ms.snapshot(),
        }


class SendStage(Stage):
    """Fragments, protects, paces and sends access units (send thread)."""

    def __init__(
        self,
        transport: Transport,
        inbox: Inbox[EncodedFrame],
        mtu_payload: int,
        bitrate_kbps: int,
        pacing_factor: float,
        burst_bytes: int,
        on_error: Callable[[str, BaseException], None],
    ) -> None:
        super().__init__("send", on_error)
        self.transport = transport
        self.inbox = inbox
        self.packetizer = Packetizer(StreamId.VIDEO, mtu_payload)
        self.pacing_factor = pacing_factor
        self.pacer = TokenBucketPacer(bitrate_kbps * 1000 * pacing_factor, burst_bytes)
        self.frame_id = 0
        self.frames = 0
        self.packets = 0
        self.parity_packets = 0
        self.bytes = 0
        self.paced_ms = Histogram()
        self.sent_ms = Histogram()
        self.sent_log: list[int] | None = None
        """When a list (benchmarks only), the capture time (ns) of every frame sent is appended to it."""

    def set_rate(self, target_bps: float) -> None:
        """Follow a new congestion-control target (any thread)."""
        self.pacer.set_rate(target_bps * self.pacing_factor)

    def run_once(self) -> None:
        ef = self.inbox.get(timeout=0.1)
        if ef is None:
            return
        data_count = self.packetizer.fragment_count(len(ef.data))
        # Parity for very large frames would cost milliseconds before the first packet leaves; they are rare
        # (the rate buffer caps even keyframes to about one frame's budget) and NACK covers them.
        parity = self.transport.parity_for(data_count) if data_count <= 128 else 0
        packets = self.packetizer.packetize(
            self.frame_id,
            ef.data,
            keyframe=ef.keyframe,
            capture_us=ef.times.captured // 1000,
            next_seq=self.transport.next_seq,
            parity_count=parity,
        )
        start = time.monotonic_ns()
        self.transport.remember(self.frame_id, packets, start)
        self.frame_id = (self.frame_id + 1) & 0xFFFFFFFF
        for pkt in packets:
            size = len(pkt.payload) + MEDIA_HEADER_SIZE
            now = time.monotonic_ns()
            wait = self.pacer.delay_ns(now, size)
            if wait > 0:
                time.sleep(wait / 1e9)
                now = time.monotonic_ns()
            self.pacer.consume(now, size)
            self.bytes += self.transport.send(pkt, media=True)
        ef.times.sent = time.monotonic_ns()
        self.frames += 1
        self.packets += len(packets)
        self.parity_packets += parity
        self.paced_ms.record((ef.times.sent - start) / 1e6)
        self.sent_ms.record((ef.times.sent - ef.times.captured) / 1e6)
        if self.sent_log is not None:
            self.sent_log.append(ef.times.captured)

    def stats(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "packets": self.packets,
            "parity_packets": self.parity_packets,
            "bytes": self.bytes,
            "send_errors": self.transport.link.send_errors,
            "pacing_ms": self.paced_ms.snapshot(),
            "capture_to_sent_ms": self.sent_ms.snapshot(),
        }
