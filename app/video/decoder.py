"""H.264/HEVC decoding for the receive side, returning each picture as soon as its access unit arrives.

Wraps one PyAV decoder context set up for latency: slice threads only (frame threading would hold back one
frame per extra thread before the first picture comes out), ``LOW_DELAY`` so no picture is kept for
reordering, and optionally NVDEC (``h264_cuvid``/``hevc_cuvid``) where a CUDA device is present, falling back
to FFmpeg's software decoder otherwise. Damaged input (lost fragments, garbage) raises :class:`DecodeError`
and nothing else, so the receive loop needs one ``except``; the decoder stays usable and recovers at the next
keyframe (or intra refresh) without being rebuilt.
"""

from __future__ import annotations

import logging

import av
from av.codec.context import Flags, Flags2

from app.video.encoder import cuda_device_count

log = logging.getLogger(__name__)

_SOFTWARE = {"h264": "h264", "hevc": "hevc"}
_NVDEC = {"h264": "h264_cuvid", "hevc": "hevc_cuvid"}


class DecodeError(Exception):
    """An access unit could not be decoded. The decoder is still usable; the next keyframe recovers it."""


class VideoDecoder:
    """One open decoder for ``codec`` ("h264" or "hevc") with ``threads`` slice threads.

    ``hardware`` asks for NVDEC; where it cannot open, the software decoder is used and the reason logged
    once. ``name`` is the FFmpeg decoder in use ("h264", "h264_cuvid"), ``errors`` the number of access
    units that failed since construction. All methods are called on the decode thread only.
    """

    def __init__(self, codec: str = "h264", threads: int = 2, *, hardware: bool = False) -> None:
        if codec not in _SOFTWARE:
            raise ValueError(f"No decoder named {codec!r}")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.codec = codec
        self.threads = threads
        self.errors = 0
        self._failing = 0
        self._ctx: av.VideoCodecContext | None = None
        software = _SOFTWARE[codec]
        if hardware:
            nvdec = _NVDEC[codec]
            reason = self._try_open(nvdec)
            if reason is None:
                self.name = nvdec
                log.info("decoder: %s", nvdec)
                return
            log.info("decoder: %s (%s: %s)", software, nvdec, reason)
        reason = self._try_open(software)
        if reason is not None:
            raise DecodeError(f"decoder {software} failed to open: {reason}")
        self.name = software

    def decode(self, data: bytes) -> list[av.VideoFrame]:
        """Decode one complete access unit (Annex B); returns its picture at once, or [] if there is none.

        Empty ``data`` returns [] (an empty packet would mean end of stream to FFmpeg). Raises
        :class:`DecodeError` for anything the decoder rejects; pictures decoded from damaged references may
        still come out, concealed, until the next keyframe.
        """
        if not data:
            return []
        ctx = self._ctx
        if ctx is None:
            raise DecodeError(f"decoder {self.name} is closed")
        try:
            frames = ctx.decode(av.Packet(data))
        except (av.FFmpegError, ValueError) as exc:
            self.errors += 1
            self._failing += 1
            if self._failing == 1:
                log.warning(
                    "decoder %s: failed to decode a %d-byte access unit, skipping until one decodes "
                    "(%d failed so far): %s",
                    self.name,
                    len(data),
                    self.errors,
                    exc,
                )
            elif log.isEnabledFor(logging.DEBUG):
                log.debug("decoder %s: failed again (%d in a row): %s", self.name, self._failing, exc)
            raise DecodeError(f"cannot decode {len(data)}-byte access unit: {exc}") from exc
        if self._failing and frames:
            log.info("decoder %s: decoding again after %d failed access units", self.name, self._failing)
            self._failing = 0
        return frames

    def flush(self) -> list[av.VideoFrame]:
        """Return any pictures still held (none for zero-delay streams) and reset the decoder.

        After a reset the decoder drops its reference pictures and shows nothing until the next keyframe,
        as after a fresh start. Use it when the stream restarts (new sender, new size).
        """
        ctx = self._ctx
        if ctx is None:
            return []
        try:
            frames = ctx.decode(None)
        except (av.FFmpegError, ValueError):
            frames = []
        ctx.flush_buffers()
        return frames

    def close(self) -> None:
        """Free the decoder context (PyAV frees it when its last reference goes). Idempotent."""
        self._ctx = None

    def _try_open(self, name: str) -> str | None:
        """Open decoder ``name`` as this object's context; the reason it failed, or None."""
        if name not in av.codecs_available:
            return "not in this FFmpeg build"
        if name.endswith("_cuvid") and cuda_device_count() == 0:
            return "no CUDA device"
        try:
            ctx = av.CodecContext.create(name, "r")
            if not isinstance(ctx, av.VideoCodecContext):
                return "not a video decoder"
            if not name.endswith("_cuvid"):
                ctx.thread_type = "SLICE"
                ctx.thread_count = self.threads
            # LOW_DELAY: output each picture as soon as it is decoded (for cuvid: display delay 0).
            # FAST: allow the small non-conforming speed-ups FFmpeg offers; the stream is our own.
            ctx.flags |= Flags.low_delay
            ctx.flags2 |= Flags2.fast
            ctx.open()
        except av.FFmpegError as exc:
            return f"failed to open: {exc.strerror or exc}"
        except ValueError as exc:
            return f"failed to open: {exc}"
        self._ctx = ctx
        return None
