"""A real USB camera through Video4Linux2, read with PyAV's ``video4linux2`` demuxer.

The camera is named by ``/dev/videoN`` or by a stable ``/dev/v4l/by-id/...`` link (resolved to its node at
open). We ask it for the configured size and rate; the pixel format "auto" means MJPEG above 1280×720
(USB 2 cannot carry raw 1080p60) and raw YUYV at or below. Pictures are decoded (MJPEG) and converted to
yuv420p at the configured size only when they are not already (one reused ``VideoReformatter``). The demuxer
is opened for low latency: no input buffering, no stream probing, a low-delay decoder without frame
threads.

Framing folded into the conversion (:meth:`V4L2Capture.set_crop`): an MJPEG picture is decoded to planar
YUV 4:2:2 and must be converted to yuv420p anyway, so a zoom's crop is done in that same swscale pass (an
FFmpeg filter graph: ``crop``, which only moves plane pointers, then the conversion at the crop's size).
That pass reads fewer pixels than the whole picture's conversion and costs less (``doorway bench
framing``), so framing an MJPEG camera costs nothing on top; :mod:`app.video.framing` then only mirrors or
turns the result. Raw YUYV is not folded (its plain conversion is already quick; the framing crops the
converted picture). :attr:`last_decoded` keeps the picture before the crop for snapshots.

Timestamps: V4L2 buffers carry CLOCK_MONOTONIC times (``V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC``; uvcvideo takes
them when the frame's first data arrives). FFmpeg's ``timestamps`` option "default" passes them through
untouched in µs, whereas "abs" and "mono2abs" convert to wall-clock time, which is useless for latency
across processes; so we choose "default" and use the packet time as ``captured_ns`` when it lies near the
current CLOCK_MONOTONIC time (within 10 s before, 1 s after), and otherwise (a driver with other clocks)
the time the packet was read, logged once.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from av.video.reformatter import VideoReformatter

from app.video.capture.base import CaptureError, describe_devices, resolve_device
from app.video.frames import CapturedFrame

log = logging.getLogger(__name__)

Opener = Callable[..., Any]
"""``av.open``-compatible: ``opener(path, format=..., options=...)`` returning an input container."""

RAW_MAX_PIXELS = 1280 * 720
"""Above this many pixels per picture, "auto" asks for MJPEG."""
_MONO_BEFORE_NS = 10_000_000_000
_MONO_AFTER_NS = 1_000_000_000
FOLDABLE = frozenset({"yuvj422p", "yuv422p", "yuvj420p", "yuv420p"})
"""Decoded formats whose conversion a crop is folded into (what MJPEG decodes to)."""
# errnos meaning "this node exists but is no capture device we can use".
_NOT_A_CAMERA = {errno.ENOTTY, errno.EINVAL, errno.ENXIO, errno.ENODEV}


def choose_input_format(input_format: str, width: int, height: int) -> str:
    """The pixel format to ask the camera for: ``input_format`` unless it is "auto"."""
    if input_format != "auto":
        return input_format
    return "mjpeg" if width * height > RAW_MAX_PIXELS else "yuyv422"


class V4L2Capture:
    """A V4L2 camera as a :class:`~app.video.capture.base.CaptureSource`.

    ``opener`` (default ``av.open``) and ``dev_root`` (for the device listing in error messages) are
    injectable for tests.
    """

    def __init__(
        self,
        device: str,
        width: int,
        height: int,
        fps: int,
        *,
        input_format: str = "auto",
        opener: Opener = av.open,
        dev_root: Path = Path("/dev"),
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.device = device
        self.width = width
        self.height = height
        self.fps = fps
        self.input_format = choose_input_format(input_format, width, height)
        self.name = f"v4l2 {device} {width}x{height}@{fps} {self.input_format}"
        self._opener = opener
        self._dev_root = dev_root
        self._clock = clock
        self._time_base = Fraction(1, fps)
        self._container: Any = None
        self._decoder: Any = None
        self._packets: Iterator[Any] | None = None
        self._reformatter = VideoReformatter()
        self._crop: tuple[int, int, int, int] | None = None
        self._graph: Any = None
        self._graph_key: tuple[Any, ...] | None = None
        self.last_decoded: Any = None
        """The last decoded picture as the camera sent it (before crop and conversion; capture thread
        writes, any thread may read the reference)."""
        self._index = 0
        self._mono_ts: bool | None = None
        """Whether packet times are CLOCK_MONOTONIC; decided on the first picture."""

    def options(self) -> dict[str, str]:
        """The demuxer options we open the camera with."""
        return {
            "video_size": f"{self.width}x{self.height}",
            "framerate": str(self.fps),
            "input_format": self.input_format,
            "timestamps": "default",
            "fflags": "nobuffer",
            "analyzeduration": "0",
            "probesize": "32",
        }

    def _error(self, exc: BaseException, node: str) -> CaptureError:
        """A :class:`CaptureError` a person can act on, for an error from opening ``node``."""
        where = self.device if node == self.device else f"{self.device} ({node})"
        code = getattr(exc, "errno", None)
        if isinstance(exc, FileNotFoundError) or code == errno.ENOENT:
            return CaptureError(
                f"camera {where} not found; devices present: {describe_devices(self._dev_root)}"
            )
        if isinstance(exc, PermissionError) or code in (errno.EACCES, errno.EPERM):
            return CaptureError(
                f"camera {where}: permission denied (is this user in the 'video' group?): {exc}"
            )
        if code == errno.EBUSY:
            return CaptureError(f"camera {where} is busy (another process has it open)")
        if code in _NOT_A_CAMERA:
            return CaptureError(
                f"{where} is not a usable video capture device ({exc}); "
                f"devices present: {describe_devices(self._dev_root)}"
            )
        return CaptureError(f"camera {where} could not be opened: {exc}")

    def open(self) -> None:
        """Open the camera. Raises :class:`CaptureError` when it is missing, busy, forbidden or unusable."""
        if self._container is not None:
            return
        if not os.path.exists(self.device):
            raise CaptureError(
                f"camera {self.device} not found; devices present: {describe_devices(self._dev_root)}"
            )
        node = resolve_device(self.device)
        try:
            container = self._opener(node, format="video4linux2", options=self.options())
        except (av.FFmpegError, OSError) as exc:
            raise self._error(exc, node) from exc
        if not container.streams.video:
            container.close()
            raise CaptureError(f"camera {self.device} ({node}) offers no video stream")
        stream = container.streams.video[0]
        self._container = container
        self._decoder = stream.codec_context
        # Never hold pictures back in the decoder: no frame threading (a frame of delay per thread).
        self._decoder.flags |= av.codec.context.Flags.low_delay
        self._decoder.thread_type = "SLICE"
        self._packets = container.demux(stream)
        self._index = 0
        self._mono_ts = None
        log.info("%s opened (%s, %s)", self.name, node, getattr(self._decoder, "name", "?"))

    def _gone(self, detail: str) -> CaptureError:
        return CaptureError(
            f"camera {self.device} stopped delivering pictures ({detail}); was it unplugged? "
            f"devices present: {describe_devices(self._dev_root)}"
        )

    def _captured_ns(self, packet: Any, read_ns: int) -> int:
        """CLOCK_MONOTONIC ns of the picture: the kernel's buffer time if monotonic, else ``read_ns``."""
        pts, tb = packet.pts, packet.time_base
        if pts is None or tb is None:
            return read_ns
        ts_ns = int(pts * tb * 1_000_000_000)
        if self._mono_ts is None:
            self._mono_ts = read_ns - _MONO_BEFORE_NS <= ts_ns <= read_ns + _MONO_AFTER_NS
            if self._mono_ts:
                log.info("camera %s: using the driver's CLOCK_MONOTONIC timestamps", self.device)
            else:
                log.info("camera %s: timestamps are not CLOCK_MONOTONIC; using read times", self.device)
        return ts_ns if self._mono_ts else read_ns

    def read(self) -> CapturedFrame:
        """Block until the camera's next picture; decode and convert it (capture thread)."""
        if self._packets is None:
            raise CaptureError(f"{self.name} is not open")
        while True:
            try:
                packet = next(self._packets)
                read_ns = self._clock()
                if packet.size == 0:
                    raise self._gone("end of stream")
                frames = self._decoder.decode(packet)
            except StopIteration:
                raise self._gone("end of stream") from None
            except (av.FFmpegError, OSError) as exc:
                if isinstance(exc, av.error.InvalidDataError):
                    # A corrupt MJPEG picture (USB hiccup): skip it, as a player would.
                    log.debug("camera %s: skipping a corrupt picture: %s", self.device, exc)
                    continue
                raise self._gone(str(exc)) from exc
            if not frames:
                continue
            frame = self.convert(frames[-1])
            index = self._index
            self._index += 1
            frame.pts = index
            frame.time_base = self._time_base
            return CapturedFrame(frame, index, self._captured_ns(packet, read_ns))

    def convert(self, decoded: Any) -> Any:
        """A decoded picture as the engine wants it: yuv420p at the configured size, with the crop folded in
        where there is one (capture thread). Keeps ``decoded`` as :attr:`last_decoded`."""
        self.last_decoded = frame = decoded
        crop = self._crop
        if crop is not None and frame.format.name in FOLDABLE:
            return self._crop_convert(frame, crop)
        if frame.format.name != "yuv420p" or frame.width != self.width or frame.height != self.height:
            return self._reformatter.reformat(
                frame, self.width, self.height, "yuv420p", interpolation="BILINEAR"
            )
        return frame

    def set_crop(self, crop: tuple[int, int, int, int] | None) -> bool:
        """Fold a crop into the conversion of every picture from the next on: ``(x, y, width, height)`` in
        the configured size's pixels (even numbers), delivered at that width and height (not scaled up: see
        :mod:`app.video.framing`); None for the whole picture.
        Returns whether this camera's pictures can be (MJPEG); when not, nothing changes and the caller
        frames the converted pictures itself. Call from the capture thread (or before it runs)."""
        if crop is not None and self.input_format != "mjpeg":
            return False
        if crop is not None:
            x, y, w, h = crop
            if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > self.width or y + h > self.height:
                raise ValueError(f"crop {crop} is not inside the {self.width}x{self.height} picture")
        self._crop = crop
        return True

    def _crop_convert(self, frame: Any, crop: tuple[int, int, int, int]) -> Any:
        """``frame`` cropped, scaled to the configured size and converted to yuv420p in one swscale pass."""
        x, y, w, h = crop
        out_w, out_h = w, h
        if (frame.width, frame.height) != (self.width, self.height):
            # The camera sent another size than asked: the same part of its picture, in its pixels.
            sx, sy = frame.width / self.width, frame.height / self.height
            x, y, w, h = (round(x * sx) & ~1, round(y * sy) & ~1, round(w * sx) & ~1, round(h * sy) & ~1)
        key = (frame.format.name, frame.width, frame.height, x, y, w, h, out_w, out_h)
        if self._graph is None or self._graph_key != key:
            graph = av.filter.Graph()
            chain = [
                graph.add_buffer(
                    width=frame.width, height=frame.height, format=frame.format, time_base=self._time_base
                ),
                graph.add("crop", f"w={w}:h={h}:x={x}:y={y}:exact=1"),
                graph.add("scale", f"w={out_w}:h={out_h}:flags=fast_bilinear"),
                graph.add("format", "yuv420p"),
                graph.add("buffersink"),
            ]
            for a, b in itertools.pairwise(chain):
                a.link_to(b)
            graph.configure()
            self._graph, self._graph_key = graph, key
        frame.pts = self._index
        frame.time_base = self._time_base
        self._graph.push(frame)
        return self._graph.pull()

    def close(self) -> None:
        """Release the camera (idempotent)."""
        container, self._container = self._container, None
        self._packets = None
        self._decoder = None
        if container is not None:
            try:
                container.close()
            except (av.FFmpegError, OSError) as exc:
                log.debug("camera %s: error while closing: %s", self.device, exc)
            log.info("%s closed", self.name)
