"""The synthetic camera: the computed room scene, paced in real time, for tests, demos and benchmarks.

It behaves like a camera where it matters for latency: frames come at the configured rate against
CLOCK_MONOTONIC, the capture time is taken right after waiting for the tick and before the picture is
rendered (so render time counts as latency, as exposure and readout would), and a reader that falls more
than one frame behind makes it skip to the current tick (the index jumps and ``dropped`` counts the missed
ticks), as a real camera drops frames. Every picture carries its stamp (index, capture µs) in its pixels.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from fractions import Fraction

import av

from app.video.capture.base import CaptureError, Pacer
from app.video.frames import CapturedFrame
from app.video.scene import Scene

log = logging.getLogger(__name__)


class SyntheticCapture:
    """The :class:`app.video.scene.Scene` as a :class:`~app.video.capture.base.CaptureSource`."""

    def __init__(
        self,
        width: int,
        height: int,
        fps: int,
        *,
        seed: int = 0,
        clock: Callable[[], int] = time.monotonic_ns,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = f"synthetic {width}x{height}@{fps}"
        self.width = width
        self.height = height
        self.fps = fps
        self.seed = seed
        self._clock = clock
        self._sleep = sleep
        self._time_base = Fraction(1, fps)
        self._scene: Scene | None = None
        self._open = False
        self._pacer = Pacer(fps, clock=clock, sleep=sleep)

    @property
    def dropped(self) -> int:
        """Ticks skipped because the reader fell more than one frame interval behind."""
        return self._pacer.dropped

    def open(self) -> None:
        """Build the scene on first use (static content: up to ~0.7 s at 3K) and start the clock at tick 0."""
        if self._scene is None:
            self._scene = Scene(self.width, self.height, self.seed)
        self._pacer = Pacer(self.fps, clock=self._clock, sleep=self._sleep)
        self._pacer.start()
        self._open = True
        log.info("%s opened", self.name)

    def read(self) -> CapturedFrame:
        """Wait for the next tick, then render and return its picture (capture thread)."""
        scene = self._scene
        if scene is None or not self._open:
            raise CaptureError(f"{self.name} is not open")
        index, captured_ns = self._pacer.wait()
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        scene.render_into(frame, index, captured_ns // 1000)
        frame.pts = index
        frame.time_base = self._time_base
        return CapturedFrame(frame, index, captured_ns)

    def close(self) -> None:
        """Stop producing frames (idempotent). The scene is kept, so reopening is instant."""
        if self._open:
            log.info("%s closed (%d ticks dropped)", self.name, self.dropped)
        self._open = False
