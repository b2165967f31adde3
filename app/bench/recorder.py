"""What a benchmark receiver records: for each picture, its decode time and the stamp read from its pixels.

Installed as the null sink's hook, so it runs on the display thread after the decode time was taken; its own
work (reading the stamp, and every ``psnr_every``-th frame regenerating the source picture for PSNR) is
never part of the measured latency. Records stay in memory (a 60 s run at 60 fps is 3,600 small tuples)
and are written once at exit.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from app.bench.metrics import FrameRecord
from app.video.frames import DecodedFrame
from app.video.scene import Scene, psnr_y
from app.video.stamp import read_stamp

log = logging.getLogger(__name__)


def luma(frame: Any) -> np.ndarray:
    """The luma plane of a yuv420p av.VideoFrame as an (H, W) uint8 view, without copying."""
    plane = frame.planes[0]
    arr = np.frombuffer(plane, np.uint8).reshape(frame.height, plane.line_size)
    return arr[:, : frame.width]


class StampRecorder:
    """Collects FrameRecords from decoded pictures (display thread)."""

    def __init__(self, *, seed: int = 0, psnr_every: int = 30) -> None:
        self.records: list[FrameRecord] = []
        self.sent_captured_ns: list[int] = []
        self._seed = seed
        self._psnr_every = psnr_every
        self._scene: Scene | None = None
        self._good = 0

    def __call__(self, df: DecodedFrame) -> None:
        frame = df.frame
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        y = luma(frame)
        stamp = read_stamp(y)
        if stamp is None:
            self.records.append(FrameRecord(df.times.decoded, -1, 0, True))
            return
        psnr = None
        self._good += 1
        if self._psnr_every and self._good % self._psnr_every == 0:
            if self._scene is None or self._scene.width != frame.width or self._scene.height != frame.height:
                self._scene = Scene(frame.width, frame.height, self._seed)
            ref = self._scene.render(stamp.index, stamp.captured_us)[: frame.height]
            psnr = psnr_y(y, ref)
        self.records.append(FrameRecord(df.times.decoded, stamp.index, stamp.captured_us, False, psnr))

    def dump(
        self,
        path: Path,
        stats: dict[str, Any],
        timeline: list[tuple[int, int, int]],
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Write records, the sender's capture times, the once-a-second timeline (CLOCK_MONOTONIC ns, media
        bytes sent so far, congestion-control target bit/s), the final statistics and ``extra`` keys (the
        audio tap's records) as one JSON file."""
        doc = {
            "records": [asdict(r) for r in self.records],
            "sent_captured_ns": self.sent_captured_ns,
            "timeline": timeline,
            "stats": stats,
            **(extra or {}),
        }
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(path)


class TimelineSampler:
    """Samples the sender's bytes sent and congestion-control target once a second (its own thread)."""

    def __init__(self, sample: Callable[[], tuple[int, int]], period_s: float = 1.0) -> None:
        self.samples: list[tuple[int, int, int]] = []
        self._sample = sample
        self._period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="timeline", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            sent, target = self._sample()
            self.samples.append((time.monotonic_ns(), sent, target))
