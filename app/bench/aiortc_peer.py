"""One end of the aiortc (WebRTC) baseline for ``doorway bench video --against aiortc``.

Run as ``python -m app.bench.aiortc_peer --role sender|receiver ...``; :mod:`app.bench.aiortc_run` starts one
process of each role on this host and reads what they write. The point is to send the very same synthetic
scene (:class:`app.video.scene.Scene`, stamped with frame index and capture time) at the same size, frame rate
and bitrate as our own system, through stock aiortc, and to measure it on the receiving side exactly like
ours: CLOCK_MONOTONIC capture time from the stamp, CLOCK_MONOTONIC time when aiortc hands out the decoded
frame, one :class:`app.bench.metrics.FrameRecord` per frame.

Sender: :class:`SceneTrack` paces frames at ``--fps`` against CLOCK_MONOTONIC and skips indices like a camera
when aiortc's encode loop falls behind. The codec is forced with ``RTCRtpTransceiver.setCodecPreferences``
(H.264 or VP8, plus RTX as aiortc offers it). The bitrate is pinned: aiortc's encoders start at their
module's ``DEFAULT_BITRATE`` and the receiver's REMB estimate moves ``Encoder.target_bitrate``, clamped to
``[MIN_BITRATE, MAX_BITRATE]`` read from the module at each call; :func:`pin_bitrate` sets all three
constants of the chosen codec's module to the requested bitrate, so the encoder runs at exactly that
bitrate from the first frame to the last and REMB cannot move it. With ``--adaptive-bitrate`` (used when
the run goes through the impairment relay) only the start (``DEFAULT_BITRATE``) and the ceiling
(``MAX_BITRATE``) are pinned at the requested bitrate; the floor stays at aiortc's own ``MIN_BITRATE``
(:data:`AIORTC_MIN_BITRATE`, or the requested bitrate if that is lower), so aiortc's congestion control
(REMB from the receiver's delay-based estimator) can bring the encoder down when the network gets worse.
Everything else about aiortc's encoders (libx264 baseline/zerolatency with its 30 fps rate-control
assumption; libvpx realtime CBR) is left as shipped: that is the baseline we compare against.

Each second of the measurement window the sender also samples aiortc's own ``bytesSent`` counter (RTP
header + payload, RTX included) and its encoder's ``target_bitrate`` (what REMB has set it to), which become
``bitrate_kbps_timeline`` and ``estimated_kbps_timeline``.

Receiver: takes ``decoded_ns`` the moment ``track.recv()`` returns, reads the stamp from the luma plane, and
every :data:`PSNR_EVERY`-th intact frame hands a copy of the luma to a worker thread that re-renders the
reference and computes luma PSNR, off the receive path so that it does not delay the next frame's
timestamp. At the end it keeps the frames captured in the measurement window and writes them as JSON.

Timeline: the sender's first frame (index 0) is captured at its origin ``t0``; frame ``i`` is due at
``t0 + i/fps``. The warm-up is ``[t0, t0 + warmup)`` and the measurement window is
``[t0 + warmup, t0 + warmup + seconds)`` of capture time. The sender knows ``t0``; the receiver estimates
it as the minimum over intact frames of ``captured - index/fps`` (capture happens just after the due time,
so this is ``t0`` plus the smallest wake-up delay, well under a millisecond). The sender keeps sending for
:data:`TAIL_S` after the window, then closes its peer connection; the RTCP BYE ends the receiver's track.

Signalling: the receiver listens on a Unix socket (``--signal PATH``, the path chosen by the parent); the
sender connects to its ``--signal PATH``, writes its offer as one JSON line ``{"type", "sdp"}`` and reads the
answer as one JSON line back, then the socket is closed. Without impairment both paths are the same socket
and the peers talk directly; with impairment the sender's path is a socket of the parent, which passes the
offer on to the receiver and the answer back, rewriting the ICE candidates so that all media goes through
the relay (see :mod:`app.bench.aiortc_run`). Neither peer can tell the difference.

All media stays on loopback: :func:`restrict_ice_to_loopback` makes aioice
gather host candidates on 127.0.0.1 only, there are no STUN/TURN servers (``iceServers=[]``), and
:func:`loopback_sdp` drops any other candidate from a remote description before it is applied.

Output (``--out PATH``, JSON): the receiver writes ``{"origin_us", "width", "height", "records": [...]}``
with the records as :class:`FrameRecord` field dicts; the sender writes ``{"frames_sent", "frames_total",
"bitrate_sent_kbps", "bitrate_kbps_timeline", "estimated_kbps_timeline", "origin_us"}``. Exit status 0 on
success, 1 with the reason on stderr otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import fractions
import json
import logging
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, get_args

import aioice.ice
import av
import numpy as np
import numpy.typing as npt
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpCodecCapability,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.codecs import h264 as aiortc_h264
from aiortc.codecs import vpx as aiortc_vpx
from aiortc.mediastreams import MediaStreamError

from app.bench.metrics import FrameRecord
from app.video.scene import Scene, psnr_y
from app.video.stamp import Stamp, read_stamp

log = logging.getLogger(__name__)

Codec = Literal["h264", "vp8"]
CODECS: tuple[Codec, ...] = get_args(Codec)
MIME_TYPES: dict[Codec, str] = {"h264": "video/H264", "vp8": "video/VP8"}
"""The RTP codec each ``--codec`` forces."""

VIDEO_CLOCK_HZ = 90_000
"""RTP video clock; frames carry pts in this time base."""
PSNR_EVERY = 30
"""Compute luma PSNR on every this-many-th intact frame (about twice a second at 60 fps)."""
CONNECT_TIMEOUT_S = 30.0
"""From start to the first frame (signalling, ICE, DTLS); loopback normally needs well under a second."""
TAIL_S = 0.5
"""The sender keeps sending this long after the window so frames captured at its end can still arrive."""
RECEIVE_GRACE_S = 3.0
"""The receiver gives up this long after the window if the sender's RTCP BYE never came."""
LOOPBACK = "127.0.0.1"
AIORTC_MIN_BITRATE: dict[Codec, int] = {"h264": aiortc_h264.MIN_BITRATE, "vp8": aiortc_vpx.MIN_BITRATE}
"""aiortc's own encoder floors (bit/s), read at import, before :func:`pin_bitrate` changes them."""


class PeerError(RuntimeError):
    """The peer could not do its part (signalling, connection, no frames)."""


def restrict_ice_to_loopback() -> None:
    """Make aioice gather host candidates on 127.0.0.1 only, so no packet goes to another interface.

    aioice's ``Connection.gather_candidates`` looks ``get_host_addresses`` up in its module at call time, so
    replacing the module attribute is enough. Call before creating any peer connection.
    """

    def loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [LOOPBACK]

    aioice.ice.get_host_addresses = loopback_only


def loopback_sdp(sdp: str) -> str:
    """``sdp`` without any ICE candidate line whose address is not 127.0.0.1 (belt and braces)."""
    kept = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            # a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> ...
            fields = line.split()
            if len(fields) < 6 or fields[4] != LOOPBACK:
                continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n"


def pin_bitrate(codec: Codec, bitrate_bps: int, fps: int, *, adaptive: bool = False) -> None:
    """Pin aiortc's ``codec`` encoder at ``bitrate_bps`` (bit/s): start there, and let REMB move it nowhere.

    Sets the codec module's ``DEFAULT_BITRATE`` (read by ``Encoder.__init__``) and ``MIN_BITRATE`` /
    ``MAX_BITRATE`` (read by the ``target_bitrate`` setter that REMB calls). Call before the encoder exists.
    aiortc's H.264 encoder also tells x264 the frame rate is ``MAX_FRAME_RATE`` (30) whatever it really is,
    so at 60 fps x264 spends each frame a 30 fps budget and sends twice the bitrate asked for; the true
    frame rate is set there too, so both systems put the same number of bits on the wire.

    ``adaptive``: pin only the start and the ceiling; the floor is aiortc's own ``MIN_BITRATE``
    (:data:`AIORTC_MIN_BITRATE`; ``bitrate_bps`` if lower), so REMB can lower the bitrate but never raise it
    above ``bitrate_bps``.
    """
    floor = min(AIORTC_MIN_BITRATE[codec], bitrate_bps) if adaptive else bitrate_bps
    if codec == "h264":
        aiortc_h264.DEFAULT_BITRATE = aiortc_h264.MAX_BITRATE = bitrate_bps
        aiortc_h264.MIN_BITRATE = floor
        aiortc_h264.MAX_FRAME_RATE = fps
    else:
        aiortc_vpx.DEFAULT_BITRATE = aiortc_vpx.MAX_BITRATE = bitrate_bps
        aiortc_vpx.MIN_BITRATE = floor


def codec_preferences(codec: Codec) -> list[RTCRtpCodecCapability]:
    """aiortc's video capabilities reduced to ``codec`` (every profile aiortc has) and RTX."""
    capabilities = RTCRtpSender.getCapabilities("video")
    assert capabilities is not None  # aiortc always has video capabilities
    chosen = [c for c in capabilities.codecs if c.mimeType == MIME_TYPES[codec]]
    if not chosen:
        raise PeerError(f"aiortc offers no {MIME_TYPES[codec]} codec")
    rtx = [c for c in capabilities.codecs if c.mimeType == "video/rtx"]
    return chosen + rtx


class SceneTrack(VideoStreamTrack):
    """The synthetic scene as a live video track, paced at ``fps`` against CLOCK_MONOTONIC.

    aiortc's sender task calls :meth:`recv` on the event loop thread, then encodes the frame in a worker
    thread before it asks for the next one. Frame ``i`` is due at ``origin + i/fps``; the capture time is
    taken after waiting and before rendering. When the loop comes back more than one frame late (the
    encoder is too slow), the track skips to the latest due index, like a camera that drops frames.
    """

    def __init__(self, scene: Scene, fps: int) -> None:
        super().__init__()
        self._scene = scene
        self._fps = fps
        self._period_ns = 1_000_000_000 // fps
        self._next_index = 0
        self.origin_ns: int | None = None
        """CLOCK_MONOTONIC ns of the first frame's capture; None until aiortc asks for a frame."""
        self.started = asyncio.Event()
        """Set when the first frame is asked for (the connection is up)."""
        self.captured_ns: list[int] = []
        """CLOCK_MONOTONIC ns of every frame handed out, in order."""

    def _due_ns(self, origin_ns: int, index: int) -> int:
        return origin_ns + index * 1_000_000_000 // self._fps

    async def recv(self) -> av.VideoFrame:
        """The next frame, yuv420p, pts in 1/90000 s (event loop thread)."""
        if self.readyState != "live":
            raise MediaStreamError
        if self.origin_ns is None:
            self.origin_ns = time.monotonic_ns()
            self.started.set()
        origin_ns = self.origin_ns
        index = self._next_index
        due_ns = self._due_ns(origin_ns, index)
        wait_ns = due_ns - time.monotonic_ns()
        if wait_ns > 0:
            await asyncio.sleep(wait_ns / 1e9)
        now_ns = time.monotonic_ns()
        if now_ns - due_ns > self._period_ns:
            # More than a frame late: take the latest frame a camera would have now, dropping the rest.
            index = (now_ns - origin_ns) * self._fps // 1_000_000_000
        captured_ns = time.monotonic_ns()
        arr = self._scene.render(index, captured_ns // 1000)
        frame = av.VideoFrame.from_ndarray(arr, format="yuv420p")
        frame.pts = index * VIDEO_CLOCK_HZ // self._fps
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK_HZ)
        self._next_index = index + 1
        self.captured_ns.append(captured_ns)
        return frame


async def _sleep_until(deadline_ns: int) -> None:
    delay_ns = deadline_ns - time.monotonic_ns()
    if delay_ns > 0:
        await asyncio.sleep(delay_ns / 1e9)


async def _bytes_sent(pc: RTCPeerConnection) -> int:
    """RTP payload+header bytes sent so far on all outbound video streams (aiortc's own counter)."""
    report = await pc.getStats()
    return sum(int(s.bytesSent) for s in report.values() if getattr(s, "type", None) == "outbound-rtp")


def _target_bitrate(sender: RTCRtpSender) -> int | None:
    """The encoder's current ``target_bitrate`` (bit/s), None before aiortc has created the encoder.

    aiortc keeps the encoder in a private attribute of :class:`RTCRtpSender` (aiortc 1.x); this reads it
    without touching it, and gives None should a later aiortc move it.
    """
    encoder = getattr(sender, "_RTCRtpSender__encoder", None)
    bitrate = getattr(encoder, "target_bitrate", None)
    return int(bitrate) if bitrate is not None else None


async def _exchange_offer(signal_path: Path, offer: RTCSessionDescription) -> RTCSessionDescription:
    """Send ``offer`` to the receiver's Unix socket and return its answer; waits for the socket to appear."""
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        try:
            reader, writer = await asyncio.open_unix_connection(str(signal_path))
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise PeerError(f"no receiver listening on {signal_path}") from None
            await asyncio.sleep(0.05)
    try:
        writer.write(json.dumps({"type": offer.type, "sdp": offer.sdp}).encode() + b"\n")
        await writer.drain()
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            line = await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()
    if not line:
        raise PeerError("receiver closed the signalling socket without an answer")
    message = json.loads(line)
    return RTCSessionDescription(sdp=loopback_sdp(message["sdp"]), type=message["type"])


async def run_sender(args: argparse.Namespace) -> dict[str, Any]:
    """Send the scene until the window plus :data:`TAIL_S` is over; returns the sender's report."""
    codec: Codec = args.codec
    pin_bitrate(codec, args.bitrate_kbps * 1000, args.fps, adaptive=args.adaptive_bitrate)
    track = SceneTrack(Scene(args.width, args.height, args.seed), args.fps)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        transceiver = pc.addTransceiver(track, direction="sendonly")
        transceiver.setCodecPreferences(codec_preferences(codec))
        await pc.setLocalDescription(await pc.createOffer())
        answer = await _exchange_offer(Path(args.signal), pc.localDescription)
        await pc.setRemoteDescription(answer)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await track.started.wait()
        except TimeoutError:
            raise PeerError(f"connection not up after {CONNECT_TIMEOUT_S} s ({pc.connectionState})") from None
        assert track.origin_ns is not None
        start_ns = track.origin_ns + round(args.warmup * 1e9)
        end_ns = start_ns + round(args.seconds * 1e9)
        await _sleep_until(start_ns)
        bytes_start = await _bytes_sent(pc)
        # One sample at the end of every second of the window (the last one at its end, maybe shorter).
        bytes_prev, t_prev = bytes_start, start_ns
        bitrate_timeline: list[float] = []
        estimated_timeline: list[float | None] = []
        while t_prev < end_ns:
            t_next = min(t_prev + 1_000_000_000, end_ns)
            await _sleep_until(t_next)
            bytes_now = await _bytes_sent(pc)
            target = _target_bitrate(transceiver.sender)
            bitrate_timeline.append(round((bytes_now - bytes_prev) * 8 / ((t_next - t_prev) / 1e9) / 1000, 1))
            estimated_timeline.append(round(target / 1000, 1) if target is not None else None)
            bytes_prev, t_prev = bytes_now, t_next
        bytes_end = bytes_prev
        await _sleep_until(end_ns + round(TAIL_S * 1e9))
        if pc.connectionState != "connected":
            raise PeerError(f"connection {pc.connectionState} before the end of the run")
    finally:
        await pc.close()
    return {
        "frames_sent": sum(1 for t in track.captured_ns if start_ns <= t < end_ns),
        "frames_total": len(track.captured_ns),
        "bitrate_sent_kbps": round((bytes_end - bytes_start) * 8 / args.seconds / 1000, 1),
        "bitrate_kbps_timeline": bitrate_timeline,
        "estimated_kbps_timeline": estimated_timeline,
        "origin_us": track.origin_ns // 1000,
    }


def _luma(frame: av.VideoFrame) -> npt.NDArray[np.uint8]:
    """The luma plane of ``frame`` as an (H, W) view, no copy when it is yuv420p already."""
    if frame.format.name != "yuv420p":
        frame = frame.reformat(format="yuv420p")
    plane = frame.planes[0]
    rows = np.frombuffer(memoryview(plane), np.uint8)[: frame.height * plane.line_size]
    return rows.reshape(frame.height, plane.line_size)[:, : frame.width]


class _PsnrSampler:
    """Luma PSNR of sampled frames, computed on one worker thread so the receive loop never waits for it.

    At most one frame is in flight: a sample that comes while the worker is busy is skipped, which bounds
    memory and CPU. :meth:`finish` (event loop thread) waits for the worker and fills in ``psnr_db``.
    """

    def __init__(self, scene: Scene) -> None:
        self._scene = scene
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="psnr")
        self._jobs: list[tuple[FrameRecord, Future[float]]] = []

    def _psnr(self, y: npt.NDArray[np.uint8], stamp: Stamp) -> float:
        reference = self._scene.render(stamp.index, stamp.captured_us)[: self._scene.height]
        return psnr_y(y, reference)

    def offer(self, record: FrameRecord, y: npt.NDArray[np.uint8], stamp: Stamp) -> None:
        """Queue ``y`` (copied) for PSNR against the reference of ``stamp`` unless the worker is busy."""
        if self._jobs and not self._jobs[-1][1].done():
            return
        if y.shape != (self._scene.height, self._scene.width):
            log.warning(
                "decoded %s px, expected %s: no PSNR", y.shape, (self._scene.height, self._scene.width)
            )
            return
        self._jobs.append((record, self._executor.submit(self._psnr, y.copy(), stamp)))

    def finish(self) -> None:
        """Wait for outstanding PSNR work, store it on the records and stop the worker."""
        try:
            for record, future in self._jobs:
                record.psnr_db = future.result()
        finally:
            self._executor.shutdown(wait=True, cancel_futures=True)


async def _answer_one_offer(pc: RTCPeerConnection, signal_path: Path) -> None:
    """Listen on ``signal_path``, answer the first offer that comes in, and stop listening."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            if done.done():
                return
            message = json.loads(line)
            await pc.setRemoteDescription(
                RTCSessionDescription(sdp=loopback_sdp(message["sdp"]), type="offer")
            )
            await pc.setLocalDescription(await pc.createAnswer())
            answer = pc.localDescription
            writer.write(json.dumps({"type": answer.type, "sdp": answer.sdp}).encode() + b"\n")
            await writer.drain()
            if not done.done():
                done.set_result(None)
        except Exception as exc:  # reported to the waiting coroutine, which fails the run
            if not done.done():
                done.set_exception(exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_unix_server(handle, path=str(signal_path))
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await done
    except TimeoutError:
        raise PeerError(f"no offer on {signal_path} within {CONNECT_TIMEOUT_S} s") from None
    finally:
        server.close()
        await server.wait_closed()
        signal_path.unlink(missing_ok=True)


async def _receive(
    track: MediaStreamTrack, args: argparse.Namespace, sampler: _PsnrSampler
) -> list[FrameRecord]:
    """Every frame from ``track`` as a record until the sender's BYE (or the grace after the window)."""
    records: list[FrameRecord] = []
    origin_us: int | None = None
    intact = 0
    end_offset_us = round((args.warmup + args.seconds + RECEIVE_GRACE_S) * 1e6)
    while True:
        if origin_us is None:
            timeout_s = CONNECT_TIMEOUT_S
        else:
            timeout_s = max(0.0, (origin_us + end_offset_us) / 1e6 - time.monotonic_ns() / 1e9)
        try:
            async with asyncio.timeout(timeout_s):
                frame = await track.recv()
                assert isinstance(frame, av.VideoFrame)  # a video track's frames
        except MediaStreamError:
            break  # the sender closed: RTCP BYE stops aiortc's decoder, which ends the track
        except TimeoutError:
            if origin_us is None:
                raise PeerError(f"no frame within {CONNECT_TIMEOUT_S} s") from None
            log.warning("no RTCP BYE from the sender; stopping %.1f s after the window", RECEIVE_GRACE_S)
            break
        # Taken first, before anything else touches the frame: this is "decoded and ready to show".
        decoded_ns = time.monotonic_ns()
        y = _luma(frame)
        stamp = read_stamp(y)
        if stamp is None:
            records.append(FrameRecord(decoded_ns, -1, 0, True))
            continue
        record = FrameRecord(decoded_ns, stamp.index, stamp.captured_us, False)
        records.append(record)
        due_us = stamp.captured_us - stamp.index * 1_000_000 // args.fps
        origin_us = due_us if origin_us is None else min(origin_us, due_us)
        intact += 1
        if intact % PSNR_EVERY == 0:
            sampler.offer(record, y, stamp)
    if origin_us is None:
        raise PeerError("the track ended before any intact frame arrived")
    return records


def window_records(
    records: list[FrameRecord], *, origin_us: int, warmup_s: float, seconds: float
) -> list[FrameRecord]:
    """The records of the measurement window ``[origin + warmup, origin + warmup + seconds)``.

    Intact frames by their capture time. Corrupt frames carry no capture time, so they are placed by their
    decode time shifted back by the median latency of the intact frames in the window.
    """
    start_us = origin_us + round(warmup_s * 1e6)
    end_us = start_us + round(seconds * 1e6)
    good = [r for r in records if not r.corrupt and start_us <= r.captured_us < end_us]
    corrupt = [r for r in records if r.corrupt]
    if corrupt:
        latency_us = float(np.median([r.decoded_ns / 1000 - r.captured_us for r in good])) if good else 0.0
        corrupt = [r for r in corrupt if start_us <= r.decoded_ns / 1000 - latency_us < end_us]
    return sorted(good + corrupt, key=lambda r: r.decoded_ns)


async def run_receiver(args: argparse.Namespace) -> dict[str, Any]:
    """Answer the sender, record every frame, and return the window's records with the estimated origin."""
    scene = Scene(args.width, args.height, args.seed)  # built before the run: it takes a while at 1080p
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tracks: asyncio.Queue[MediaStreamTrack] = asyncio.Queue()
    sampler = _PsnrSampler(scene)
    try:

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video":
                tracks.put_nowait(track)

        await _answer_one_offer(pc, Path(args.signal))
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                track = await tracks.get()
        except TimeoutError:
            raise PeerError("the offer carried no video track") from None
        records = await _receive(track, args, sampler)
    finally:
        try:
            sampler.finish()
        finally:
            await pc.close()
    origin_us = min(r.captured_us - r.index * 1_000_000 // args.fps for r in records if not r.corrupt)
    kept = window_records(records, origin_us=origin_us, warmup_s=args.warmup, seconds=args.seconds)
    log.info("received %d frames, %d in the window", len(records), len(kept))
    return {
        "origin_us": origin_us,
        "width": args.width,
        "height": args.height,
        "records": [dataclasses.asdict(r) for r in kept],
    }


def build_parser() -> argparse.ArgumentParser:
    """The command line both roles share (the parent passes the same run parameters to both)."""
    p = argparse.ArgumentParser(prog="python -m app.bench.aiortc_peer", description=__doc__.split("\n")[0])
    p.add_argument("--role", choices=("sender", "receiver"), required=True)
    p.add_argument("--codec", choices=CODECS, required=True)
    p.add_argument("--width", type=int, required=True, help="picture width, px")
    p.add_argument("--height", type=int, required=True, help="picture height, px")
    p.add_argument("--fps", type=int, required=True, help="frame rate, frames/s")
    p.add_argument("--seconds", type=float, required=True, help="measurement window, s")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up before the window, s (default 2)")
    p.add_argument("--bitrate-kbps", type=int, required=True, help="pinned encoder bitrate, kbit/s")
    p.add_argument("--seed", type=int, default=0, help="scene seed")
    p.add_argument(
        "--adaptive-bitrate",
        action="store_true",
        help="sender: pin only the start and maximum bitrate, let REMB lower it to aiortc's own minimum",
    )
    p.add_argument(
        "--signal",
        required=True,
        help="Unix socket path: the receiver listens on it, the sender connects to it",
    )
    p.add_argument("--out", required=True, help="JSON result file")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one role; 0 on success, 1 (reason on stderr) on failure."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    restrict_ice_to_loopback()
    try:
        role = run_sender if args.role == "sender" else run_receiver
        result = asyncio.run(role(args))
    except Exception:
        log.exception("aiortc %s failed", args.role)
        return 1
    # Python's json writes an identical frame's inf PSNR as Infinity, which json.loads on the other end reads.
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
