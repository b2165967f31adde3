"""A display sink that shows nothing: it stamps, counts and hands each frame to an optional hook.

Used where there is no screen (servers, CI) and by the benchmark, whose hook reads each frame's timestamps.
No pixels are touched, so its cost is only the stamp and the call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from app.video.frames import DecodedFrame

log = logging.getLogger(__name__)


class NullSink:
    """Records ``times.shown``, counts frames and calls ``on_frame`` (on the display thread) for each."""

    def __init__(self, on_frame: Callable[[DecodedFrame], None] | None = None) -> None:
        self.on_frame = on_frame
        self.frames = 0
        """Frames shown since construction."""
        self.closed = False

    def open(self) -> None:
        """Nothing to acquire; (re)opens after :meth:`close`. Called on the display thread."""
        self.closed = False
        log.debug("null display open")

    def show(self, df: DecodedFrame) -> None:
        """Stamp ``df.times.shown`` (CLOCK_MONOTONIC ns), count, call the hook; on the display thread."""
        df.times.shown = time.monotonic_ns()
        self.frames += 1
        if self.on_frame is not None:
            self.on_frame(df)

    def poll_events(self) -> bool:
        """Nothing to pump; returns ``closed``."""
        return self.closed

    def close(self) -> None:
        """Mark the sink closed. Idempotent."""
        self.closed = True
