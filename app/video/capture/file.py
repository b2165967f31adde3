"""A looped video file as a camera: real footage for demos and encoder comparisons, without hardware.

The file is demuxed and decoded with PyAV, one picture per tick at the configured rate (paced against
CLOCK_MONOTONIC like the synthetic camera, whatever the file's own rate), converted to yuv420p at the
configured size only when it is not already, and looped without a gap by seeking back to the start at the
end. The capture time is taken after waiting for the tick and before decoding, so decode time counts as
latency, like a camera's readout. When the reader falls behind, ticks are skipped (the index jumps) but the
file is not: it simply plays on from where it was.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from av.video.reformatter import VideoReformatter

from app.video.capture.base import CaptureError, Pacer
from app.video.frames import CapturedFrame

log = logging.getLogger(__name__)


class FileCapture:
    """Loops ``path`` as a capture source: ``width``×``height`` px at ``fps``."""

    def __init__(
        self,
        path: Path | str,
        width: int,
        height: int,
        fps: int,
        *,
        clock: Callable[[], int] = time.monotonic_ns,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.path = Path(path)
        self.name = f"file {self.path.name} {width}x{height}@{fps}"
        self.width = width
        self.height = height
        self.fps = fps
        self._clock = clock
        self._sleep = sleep
        self._time_base = Fraction(1, fps)
        self._pacer = Pacer(fps, clock=clock, sleep=sleep)
        self._container: Any = None
        self._stream: Any = None
        self._frames: Iterator[Any] | None = None
        self._reformatter = VideoReformatter()
        self.loops = 0
        """Times the file wrapped around to its start."""

    @property
    def dropped(self) -> int:
        """Ticks skipped because the reader fell more than one frame interval behind."""
        return self._pacer.dropped

    def open(self) -> None:
        """Open and probe the file. Raises :class:`CaptureError` naming it when missing or unreadable."""
        if self._container is not None:
            return
        if not self.path.is_file():
            raise CaptureError(f"video file {self.path} not found")
        try:
            container = av.open(str(self.path))
        except (av.FFmpegError, OSError) as exc:
            raise CaptureError(f"cannot read video file {self.path}: {exc}") from exc
        if not container.streams.video:
            container.close()
            raise CaptureError(f"video file {self.path} has no video stream")
        self._container = container
        self._stream = container.streams.video[0]
        self._frames = container.decode(self._stream)
        self._pacer = Pacer(self.fps, clock=self._clock, sleep=self._sleep)
        self._pacer.start()
        log.info("%s opened (%s)", self.name, self._stream.codec_context.name)

    def _next_decoded(self) -> Any:
        """The next decoded picture, wrapping to the start at the end of the file."""
        assert self._frames is not None
        for attempt in range(2):
            try:
                return next(self._frames)
            except StopIteration:
                if attempt:
                    break
                # Seeking to 0 flushes the decoder, so the loop is seamless (B-frames included).
                self._container.seek(0)
                self._frames = self._container.decode(self._stream)
                self.loops += 1
            except (av.FFmpegError, OSError) as exc:
                raise CaptureError(f"cannot decode video file {self.path}: {exc}") from exc
        raise CaptureError(f"video file {self.path} has no decodable pictures")

    def read(self) -> CapturedFrame:
        """Wait for the next tick, decode the next picture and return it (capture thread)."""
        if self._frames is None:
            raise CaptureError(f"{self.name} is not open")
        index, captured_ns = self._pacer.wait()
        frame = self._next_decoded()
        if frame.format.name != "yuv420p" or frame.width != self.width or frame.height != self.height:
            frame = self._reformatter.reformat(
                frame, self.width, self.height, "yuv420p", interpolation="BILINEAR"
            )
        frame.pts = index
        frame.time_base = self._time_base
        return CapturedFrame(frame, index, captured_ns)

    def close(self) -> None:
        """Close the file (idempotent)."""
        container, self._container = self._container, None
        self._frames = None
        self._stream = None
        if container is not None:
            container.close()
            log.info("%s closed after %d loops", self.name, self.loops)
