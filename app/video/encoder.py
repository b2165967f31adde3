"""Video encoders: libx264, NVENC and V4L2 mem2mem behind one small class, tuned for latency, not size.

Doorway's budget is about 10 ms from capture to decoded picture at 1080p60, so every encoder here is set up
to emit exactly one access unit per input frame, immediately: no B-frames, no lookahead, slice (not frame)
threads, and a VBV buffer of about one frame so no single frame takes longer than a frame time to send.
Each P frame references only the frame before it (``ref=1``); the receiver's jitter buffer relies on that
invariant to know that one lost frame breaks the chain until the next keyframe or intra refresh, and no
further. Output is Annex B (start codes) with SPS/PPS repeated on every keyframe so a receiver can join.

The bitrate can change at run time without a keyframe: FFmpeg's libx264 and NVENC wrappers compare the
codec context's ``bit_rate``, ``rc_max_rate`` and ``rc_buffer_size`` with the running encoder's before each
frame and reconfigure it in place when they differ. PyAV 18 lets us assign ``bit_rate`` on an open context
but exposes the other two not at all, so :class:`_LiveRateControl` writes them with ``av_opt_set_int`` on the
context's ``AVCodecContext`` (found inside PyAV's object and checked before use). Where that check fails, or
for encoders that cannot reconfigure (v4l2m2m), a bitrate change reopens the encoder at the next frame, which
starts with a keyframe.

:func:`open_encoder` turns :class:`~app.settings.VideoSettings` into an open :class:`VideoEncoder`; "auto"
tries NVENC, then v4l2m2m, then libx264, each opened and fed one test frame, because a codec compiled into
FFmpeg says nothing about the hardware being present.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import math
import os
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
from av.video.frame import PictureType

from app.settings import VideoSettings
from app.video.frames import CapturedFrame, EncodedFrame, FrameTimes

log = logging.getLogger(__name__)

Codec = Literal["h264", "hevc"]

ENCODER_NAMES: dict[str, str] = {
    "x264": "libx264",
    "nvenc-h264": "h264_nvenc",
    "nvenc-hevc": "hevc_nvenc",
    "v4l2m2m": "h264_v4l2m2m",
}
"""Settings name (``VideoSettings.encoder``) → FFmpeg encoder name."""

AUTO_ORDER: tuple[str, ...] = ("nvenc-h264", "v4l2m2m", "x264")
"""The order "auto" tries encoders in, by settings name: hardware first, libx264 always last."""

_CODEC_OF: dict[str, Codec] = {
    "libx264": "h264",
    "h264_nvenc": "h264",
    "hevc_nvenc": "hevc",
    "h264_v4l2m2m": "h264",
}

# Encoders whose FFmpeg wrapper re-reads bit_rate / rc_max_rate / rc_buffer_size before every frame.
_LIVE_RECONFIG = frozenset({"libx264", "h264_nvenc", "hevc_nvenc"})

# H.264 NAL unit types of parameter sets (SPS 7, PPS 8), for v4l2m2m encoders that emit them only once.
_H264_PARAMETER_SETS = frozenset({7, 8})

# x264 reads "infinite" for keyint; NVENC and v4l2m2m take a GOP length in frames, so "never" is 2**30
# frames (about 200 days at 60 fps).
_ENDLESS_GOP = 1 << 30


class EncoderError(Exception):
    """An encoder could not be opened or failed while encoding. The message names the encoder."""


class VideoEncoder:
    """One open FFmpeg video encoder with Doorway's low-latency settings.

    Construct through :func:`open_encoder`; the constructor opens the codec context at once and raises
    :class:`EncoderError` when it cannot. The context lives until :meth:`close`, and is rebuilt only when
    the frame size changes (or, where live reconfiguration is impossible, when the bitrate does).

    Attributes: ``name`` is the FFmpeg encoder name ("libx264"), ``codec`` the bitstream ("h264" or
    "hevc"), ``width``/``height`` the current frame size in pixels, ``bitrate_kbps`` the target bitrate in
    kilobits per second most recently applied.
    """

    def __init__(self, name: str, video: VideoSettings) -> None:
        if name not in _CODEC_OF:
            raise ValueError(f"No encoder named {name!r}")
        self.name = name
        self.codec: Codec = _CODEC_OF[name]
        self.width = video.width
        self.height = video.height
        self.bitrate_kbps = video.bitrate_kbps
        self._video = video
        self._time_base = Fraction(1, video.fps)
        # The bitrate asked for: written by set_bitrate() on any thread, compared with bitrate_kbps (the
        # one applied) by encode() on the encode thread. A single reference assignment needs no lock, and
        # comparing rather than clearing means no request is ever lost.
        self._target_kbps = video.bitrate_kbps
        self._force_next_keyframe = False
        self._vbv_boosted = False
        self.boosted_keyframes = 0
        """Keyframes given the larger buffer of :func:`_keyframe_floor_bits` (low bitrates only)."""
        self._closed = False
        self._last_pts = -1
        self._frames_in_flight: dict[int, tuple[int, int]] = {}
        self._parameter_sets = b""
        self._ctx: av.VideoCodecContext | None = None
        self._live: _LiveRateControl | None = None
        self._open(self.width, self.height, self.bitrate_kbps)

    # -- public API ------------------------------------------------------------------------------------

    def encode(self, cf: CapturedFrame, *, force_keyframe: bool = False) -> list[EncodedFrame]:
        """Encode one captured picture; returns the access units the encoder produced for it.

        Called on the encode thread only. With every encoder here that is exactly one access unit per
        frame, returned at once. ``force_keyframe`` makes this frame an IDR picture (with SPS/PPS), also
        when intra refresh is on. Sets ``pts``, ``time_base`` and ``pict_type`` on ``cf.frame``. Each
        result has ``times.captured = cf.captured_ns`` and ``times.encoded`` stamped (CLOCK_MONOTONIC ns)
        right after the encoder returned. Raises :class:`EncoderError` when the encoder fails.
        """
        if self._closed:
            raise EncoderError(f"encoder {self.name} is closed")
        frame = cf.frame
        if frame.width != self.width or frame.height != self.height:
            log.info(
                "encoder %s: frame size %dx%d -> %dx%d, reopening",
                self.name,
                self.width,
                self.height,
                frame.width,
                frame.height,
            )
            self._close_context()
            self.width, self.height = frame.width, frame.height
            self._open(self.width, self.height, self._target_kbps)

        target = self._target_kbps
        if target != self.bitrate_kbps:
            self._apply_bitrate(target)

        keyframe_wanted = force_keyframe or self._force_next_keyframe
        if self._vbv_boosted and self._live is not None:
            # The keyframe that needed the larger buffer is out: back to the one-frame buffer.
            self._live.set(
                max_rate_bps=self.bitrate_kbps * 1000,
                buffer_bits=_vbv_buffer_bits(self.bitrate_kbps, self._video.fps),
            )
        self._vbv_boosted = False
        if keyframe_wanted and self.name == "libx264" and self._live is not None:
            floor = _keyframe_floor_bits(self.width, self.height)
            if floor > _vbv_buffer_bits(self.bitrate_kbps, self._video.fps):
                # x264 keeps its buffer fill across a live reconfiguration, so only a fresh encoder
                # opened with the larger buffer can spend it on this keyframe (~10 ms at 1080p, once).
                self._close_context()
                self._open(self.width, self.height, self.bitrate_kbps, buffer_bits=floor)
                self._vbv_boosted = True
                self.boosted_keyframes += 1

        ctx = self._ctx
        if ctx is None:
            raise EncoderError(f"encoder {self.name} is not open (reopening it failed)")

        # Capture indices restart with each capture session; x264 needs strictly increasing pts.
        pts = cf.index if cf.index > self._last_pts else self._last_pts + 1
        self._last_pts = pts
        frame.pts = pts
        frame.time_base = self._time_base
        # Always overwritten: a frame decoded from a file carries its source's I/P/B type, which the
        # encoder would otherwise obey.
        frame.pict_type = PictureType.I if keyframe_wanted else PictureType.NONE
        self._force_next_keyframe = False
        self._frames_in_flight[pts] = (cf.index, cf.captured_ns)

        try:
            packets = ctx.encode(frame)
        except av.FFmpegError as exc:
            raise EncoderError(f"encoder {self.name} failed: {exc}") from exc
        encoded_ns = time.monotonic_ns()

        out: list[EncodedFrame] = []
        for packet in packets:
            index, captured_ns = self._frames_in_flight.pop(
                packet.pts if packet.pts is not None else pts, (cf.index, cf.captured_ns)
            )
            data = bytes(packet)
            keyframe = packet.is_keyframe
            if keyframe and self.name == "h264_v4l2m2m":
                data = self._with_parameter_sets(data)
            out.append(
                EncodedFrame(
                    data=data,
                    keyframe=keyframe,
                    index=index,
                    times=FrameTimes(captured=captured_ns, encoded=encoded_ns),
                )
            )
            if log.isEnabledFor(logging.DEBUG):
                log.debug("encoded frame %d: %d bytes%s", index, len(data), " (keyframe)" if keyframe else "")
        # Frames an encoder dropped would otherwise pile up here; none of ours buffer more than a few.
        if len(self._frames_in_flight) > 64:
            self._frames_in_flight.clear()
        return out

    def set_bitrate(self, kbps: int) -> None:
        """Ask for a new target bitrate in kilobits per second; it applies from the next frame encoded.

        May be called from any thread. libx264 and NVENC change rate (and the one-frame VBV buffer) in
        place, without a keyframe; other encoders, or a PyAV whose layout :class:`_LiveRateControl` does
        not recognise, are reopened at the next frame, which then starts with a keyframe.
        """
        if kbps <= 0:
            raise ValueError(f"bitrate must be positive, got {kbps} kbit/s")
        self._target_kbps = kbps

    def close(self) -> None:
        """Free the codec context. Called on the encode thread (or after it stopped); idempotent."""
        self._closed = True
        self._close_context()

    @property
    def live_bitrate(self) -> bool:
        """True when :meth:`set_bitrate` reconfigures the running encoder (no reopen, no keyframe)."""
        return self._live is not None

    # -- internals -------------------------------------------------------------------------------------

    def _open(self, width: int, height: int, kbps: int, *, buffer_bits: int | None = None) -> None:
        """Create and open the codec context at this size and bitrate (encode thread, or constructor);
        ``buffer_bits`` overrides the one-frame VBV buffer."""
        video = self._video
        try:
            ctx = av.CodecContext.create(self.name, "w")
        except (av.FFmpegError, ValueError) as exc:
            raise EncoderError(f"encoder {self.name} is not in this FFmpeg build: {exc}") from exc
        if not isinstance(ctx, av.VideoCodecContext):
            raise EncoderError(f"{self.name} is not a video encoder")
        ctx.width = width
        ctx.height = height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = self._time_base
        ctx.framerate = Fraction(video.fps, 1)
        ctx.bit_rate = kbps * 1000
        ctx.max_b_frames = 0
        ctx.options = _encoder_options(self.name, video, kbps, buffer_bits)
        if self.name == "libx264":
            # Sliced threads split each frame among threads and add no delay; frame threads would add
            # one frame of latency per extra thread.
            ctx.thread_type = "SLICE"
            ctx.thread_count = 2
        try:
            ctx.open()
        except av.FFmpegError as exc:
            raise EncoderError(f"encoder {self.name} failed to open at {width}x{height}: {exc}") from exc
        self._ctx = ctx
        self._live = _LiveRateControl.attach(ctx) if self.name in _LIVE_RECONFIG else None
        self.bitrate_kbps = kbps

    def _close_context(self) -> None:
        # PyAV 18 has no explicit close: dropping the last reference frees the AVCodecContext
        # (avcodec_free_context) at once, and nothing else holds one.
        self._live = None
        self._ctx = None
        self._frames_in_flight.clear()

    def _apply_bitrate(self, kbps: int) -> None:
        """Switch to ``kbps`` before the next frame; on the encode thread only."""
        ctx = self._ctx
        if ctx is not None and self._live is not None:
            ctx.bit_rate = kbps * 1000
            self._live.set(max_rate_bps=kbps * 1000, buffer_bits=_vbv_buffer_bits(kbps, self._video.fps))
            self.bitrate_kbps = kbps
            log.debug("encoder %s: bitrate %d kbit/s (reconfigured in place)", self.name, kbps)
            return
        self._close_context()
        self._open(self.width, self.height, kbps)
        self._force_next_keyframe = True
        log.info("encoder %s: bitrate %d kbit/s (reopened; next frame is a keyframe)", self.name, kbps)

    def _with_parameter_sets(self, data: bytes) -> bytes:
        """Prepend the last SPS/PPS to a keyframe that lacks them (v4l2m2m emits them only once)."""
        nals = list(_split_annexb(data))
        sets = b"".join(nal for nal in nals if _h264_nal_type(nal) in _H264_PARAMETER_SETS)
        if sets:
            self._parameter_sets = sets
            return data
        return self._parameter_sets + data if self._parameter_sets else data


def _vbv_buffer_bits(kbps: int, fps: int) -> int:
    """One frame's worth of bits, rounded up to whole kilobits (the unit x264 keeps it in), at least 1."""
    return max(1, math.ceil(kbps / fps)) * 1000


def _keyint_frames(video: VideoSettings) -> int | None:
    """Frames between keyframes, or None for "only on request"; with intra refresh, one refresh cycle."""
    if video.intra_refresh:
        return video.fps
    if video.keyframe_interval_s <= 0:
        return None
    return max(1, round(video.keyframe_interval_s * video.fps))


def _keyframe_floor_bits(width: int, height: int) -> int:
    """The least VBV buffer a requested keyframe gets, in bits (whole kilobits): 0.06 bit per pixel.

    With a one-frame buffer a keyframe at a low bitrate is starved: at 2 Mb/s a 1080p60 frame's budget is
    33 kbit, x264 hits its highest quantiser and the picture (PSNR ~16 dB) is so poor that the P frames
    after it take seconds to repair it — exactly what happens after congestion control cut the rate and a
    lost frame asked for a keyframe. 0.06 bit per pixel (124 kbit at 1080p) gives ~36 dB; at 2 Mb/s it
    takes ~45 ms of link time, once. At high bitrates one frame's budget is already larger and wins.
    """
    return max(1, math.ceil(width * height * 0.06 / 1000)) * 1000


def _encoder_options(
    name: str, video: VideoSettings, kbps: int, buffer_bits: int | None = None
) -> dict[str, str]:
    """FFmpeg options (generic and private) for encoder ``name`` at ``kbps`` kilobits per second, with a
    one-frame VBV buffer unless ``buffer_bits`` says otherwise."""
    keyint = _keyint_frames(video)
    # The VBV limits go in as codec-context fields (rc_max_rate, rc_buffer_size), not x264 parameters,
    # because those fields are what libx264's and NVENC's per-frame reconfiguration compares, and what
    # _LiveRateControl changes at run time.
    bufsize = buffer_bits if buffer_bits is not None else _vbv_buffer_bits(kbps, video.fps)
    rate = {"maxrate": str(kbps * 1000), "bufsize": str(bufsize)}
    if name == "libx264":
        params = [
            f"keyint={keyint if keyint is not None else 'infinite'}",
            "scenecut=0",
            "bframes=0",
            "rc-lookahead=0",
            "sync-lookahead=0",
            "sliced-threads=1",
            "threads=2",
            "ref=1",
            "repeat-headers=1",
            "annexb=1",
        ]
        if video.intra_refresh:
            params.append("intra-refresh=1")
        return {
            "preset": video.x264_preset,
            "tune": "zerolatency",
            # A requested keyframe is an IDR, not a recovery point, also with intra refresh on.
            "forced-idr": "1",
            "x264-params": ":".join(params),
            **rate,
        }
    if name in ("h264_nvenc", "hevc_nvenc"):
        options = {
            "preset": "p1",
            "tune": "ull",
            "zerolatency": "1",
            "rc": "cbr",
            "delay": "0",
            "rc-lookahead": "0",
            "forced-idr": "1",
            "bf": "0",
            "refs": "1",
            "g": str(keyint if keyint is not None else _ENDLESS_GOP),
            **rate,
        }
        if video.intra_refresh:
            options["intra-refresh"] = "1"
        return options
    if name == "h264_v4l2m2m":
        return {"g": str(keyint if keyint is not None else _ENDLESS_GOP), "bf": "0", "refs": "1"}
    raise ValueError(f"No encoder named {name!r}")


def _split_annexb(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B buffer, each with its start code."""
    starts: list[int] = []
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        starts.append(i - 1 if i > 0 and data[i - 1] == 0 else i)
        i = data.find(b"\x00\x00\x01", i + 3)
    return [data[s:e] for s, e in zip(starts, [*starts[1:], len(data)], strict=True)]


def _h264_nal_type(nal: bytes) -> int:
    """The nal_unit_type of one start-code-prefixed H.264 NAL unit (-1 if it has no header byte)."""
    head = nal.find(b"\x00\x00\x01")
    return nal[head + 3] & 0x1F if head >= 0 and head + 3 < len(nal) else -1


class _LiveRateControl:
    """Writes ``rc_max_rate`` and ``rc_buffer_size`` of an open codec context, which PyAV 18 cannot.

    FFmpeg's libx264 (``reconfig_encoder``) and NVENC wrappers reconfigure the running encoder when these
    fields, or ``bit_rate``, differ from what it runs with; PyAV exposes only ``bit_rate`` for writing. The
    ``AVCodecContext *`` is the first field of PyAV's Cython ``CodecContext`` object, after the object
    header and the Cython method table; :meth:`attach` reads it there and trusts it only after checking,
    through ``/proc/self/mem`` (which fails cleanly instead of crashing on a bad address), that it points
    at a structure whose ``AVClass`` is named "AVCodecContext" and whose bit rate, maximum rate and GOP
    size read back (through ``av_opt_get_int``) as PyAV reports them. The fields are then written with
    libavutil's ``av_opt_set_int``, by option name. Used on the encode thread only, between frames.
    """

    # PyObject header (refcount, type) plus the Cython vtable pointer.
    _PTR_OFFSET = object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)
    _lib: ctypes.CDLL | None = None
    _lib_lock = threading.Lock()
    _lib_failed = False
    _warned = False

    def __init__(self, avutil: ctypes.CDLL, address: int) -> None:
        self._avutil = avutil
        self._address = address

    @classmethod
    def attach(cls, ctx: av.VideoCodecContext) -> _LiveRateControl | None:
        """A writer for ``ctx``'s rate-control fields, or None (logged) where that is not safe here."""
        avutil = cls._libavutil()
        if avutil is None:
            return None
        address = None
        if type(ctx).__basicsize__ >= cls._PTR_OFFSET + ctypes.sizeof(ctypes.c_void_p):
            address = ctypes.c_void_p.from_address(id(ctx) + cls._PTR_OFFSET).value
        if not address or not cls._looks_like_codec_context(avutil, address, ctx):
            if not cls._warned:
                cls._warned = True
                log.warning(
                    "encoder: cannot reach PyAV's AVCodecContext; bitrate changes will reopen the encoder"
                )
            return None
        return cls(avutil, address)

    def set(self, *, max_rate_bps: int, buffer_bits: int) -> None:
        """Set ``rc_max_rate`` (bit/s) and ``rc_buffer_size`` (bits); the encoder reads them next frame."""
        for option, value in ((b"maxrate", max_rate_bps), (b"bufsize", buffer_bits)):
            err = self._avutil.av_opt_set_int(self._address, option, value, 0)
            if err < 0:
                raise EncoderError(f"cannot set {option.decode()} on the encoder (error {err})")

    @classmethod
    def _libavutil(cls) -> ctypes.CDLL | None:
        """The libavutil PyAV's libavcodec uses, already mapped into this process; None if not found."""
        with cls._lib_lock:
            if cls._lib is not None or cls._lib_failed:
                return cls._lib
            path = _mapped_libavutil()
            if path is None:
                cls._lib_failed = True
                log.info("encoder: libavutil not found among mapped libraries; bitrate changes will reopen")
                return None
            try:
                lib = ctypes.CDLL(path)
            except OSError as exc:
                cls._lib_failed = True
                log.info("encoder: cannot load %s (%s); bitrate changes will reopen", path, exc)
                return None
            lib.av_opt_set_int.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int64, ctypes.c_int]
            lib.av_opt_set_int.restype = ctypes.c_int
            lib.av_opt_get_int.argtypes = [
                ctypes.c_void_p,
                ctypes.c_char_p,
                ctypes.c_int,
                ctypes.POINTER(ctypes.c_int64),
            ]
            lib.av_opt_get_int.restype = ctypes.c_int
            cls._lib = lib
            return lib

    @staticmethod
    def _looks_like_codec_context(avutil: ctypes.CDLL, address: int, ctx: av.VideoCodecContext) -> bool:
        av_class = _peek_pointer(address)
        class_name = _peek_pointer(av_class) if av_class else None
        name = _peek(class_name, len(b"AVCodecContext") + 1) if class_name else None
        if name != b"AVCodecContext\x00":
            return False
        expected_values = (
            (b"b", ctx.bit_rate or 0),
            (b"maxrate", ctx.max_bit_rate or 0),
            (b"g", ctx.gop_size),
        )
        for option, expected in expected_values:
            value = ctypes.c_int64()
            if avutil.av_opt_get_int(address, option, 0, ctypes.byref(value)) < 0 or value.value != expected:
                return False
        return True


def _mapped_libavutil() -> str | None:
    """Path of the libavutil loaded beside the libavcodec PyAV uses (from /proc/self/maps)."""
    try:
        maps = Path("/proc/self/maps").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    # Each line is "address perms offset dev inode [path]"; only mapped files have the sixth field.
    paths = {fields[5] for fields in map(str.split, maps.splitlines()) if len(fields) >= 6}
    paths = {p for p in paths if "/libav" in p}
    codec_dirs = {os.path.dirname(p) for p in paths if "/libavcodec" in p}
    utils = sorted(p for p in paths if "/libavutil" in p)
    for path in utils:
        if os.path.dirname(path) in codec_dirs:
            return path
    return utils[0] if utils else None


def _peek(address: int, size: int) -> bytes | None:
    """``size`` bytes of this process's memory at ``address``, or None where it is not readable."""
    try:
        fd = os.open("/proc/self/mem", os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.pread(fd, size, address)
    except (OSError, OverflowError, ValueError):
        return None
    finally:
        os.close(fd)
    return data if len(data) == size else None


def _peek_pointer(address: int) -> int | None:
    data = _peek(address, ctypes.sizeof(ctypes.c_void_p))
    return int.from_bytes(data, sys.byteorder) if data is not None else None


# -- choosing an encoder -------------------------------------------------------------------------------


def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports; 0 where there is no driver (libcuda) or no device."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def _precheck(name: str) -> str | None:
    """Why encoder ``name`` certainly cannot work here, without opening it; None if it might."""
    if name not in av.codecs_available:
        return "not in this FFmpeg build"
    if name.endswith("_nvenc") and cuda_device_count() == 0:
        return "no CUDA device"
    if name.endswith("_v4l2m2m") and not glob.glob("/dev/video*"):
        return "no /dev/video* m2m device"
    return None


def _test_frame(width: int, height: int) -> av.VideoFrame:
    """A mid-grey yuv420p picture for probing an encoder."""
    planes = np.full((height * 3 // 2, width), 128, dtype=np.uint8)
    return av.VideoFrame.from_ndarray(planes, format="yuv420p")


def _probe(name: str, video: VideoSettings) -> str | None:
    """Open encoder ``name`` with ``video`` and encode one test frame; the reason it failed, or None."""
    reason = _precheck(name)
    if reason is not None:
        return reason
    try:
        encoder = VideoEncoder(name, video)
    except EncoderError as exc:
        return f"failed to open: {_error_text(exc)}"
    try:
        encoder.encode(CapturedFrame(_test_frame(video.width, video.height), 0, time.monotonic_ns()))
    except EncoderError as exc:
        return f"failed on a test frame: {_error_text(exc)}"
    finally:
        encoder.close()
    return None


def _error_text(exc: EncoderError) -> str:
    """The FFmpeg error behind ``exc`` in a few words ("Operation not permitted"), else its message."""
    cause = exc.__cause__
    if isinstance(cause, av.FFmpegError) and cause.strerror:
        return str(cause.strerror)
    return str(exc)


def open_encoder(video: VideoSettings) -> VideoEncoder:
    """Open the encoder ``video.encoder`` names; "auto": the first of NVENC, v4l2m2m, libx264 that works.

    Every candidate is opened and fed one test frame first (then discarded, so the stream the caller gets
    starts with a keyframe). Logs one info line naming the chosen encoder and why the others were skipped.
    An explicitly requested encoder that does not work raises :class:`EncoderError` with the reason.
    Called at start-up, on whichever thread builds the pipeline.
    """
    if video.encoder == "auto":
        skipped: list[str] = []
        for key in AUTO_ORDER:
            name = ENCODER_NAMES[key]
            reason = _probe(name, video)
            if reason is None:
                log.info("encoder: %s%s", name, f" ({'; '.join(skipped)})" if skipped else "")
                return VideoEncoder(name, video)
            skipped.append(f"{name}: {reason}")
        raise EncoderError(f"no encoder works here ({'; '.join(skipped)})")
    if video.encoder in ENCODER_NAMES:
        name = ENCODER_NAMES[video.encoder]
        reason = _probe(name, video)
        if reason is not None:
            raise EncoderError(f"encoder {video.encoder!r} ({name}) cannot be used: {reason}")
        log.info("encoder: %s (requested)", name)
        return VideoEncoder(name, video)
    raise ValueError(f"No encoder named {video.encoder!r}")


def available_encoders() -> dict[str, str | None]:
    """Each encoder by settings name ("x264", "nvenc-h264", ...) → why it is unavailable, or None if it works.

    Probes each one by opening it at 640x360 and encoding a frame, so it takes a moment (well under a second
    without hardware); meant for status and diagnostics, not the frame path.
    """
    probe = VideoSettings(width=640, height=360, fps=30, bitrate_kbps=1000, x264_preset="ultrafast")
    return {key: _probe(name, probe) for key, name in ENCODER_NAMES.items()}
