"""Capture backends: where the sending side's pictures come from, chosen by ``capture.backend``.

:func:`create_capture` builds a bare :class:`~app.video.capture.base.CaptureSource` from settings; the engine
wraps it in :class:`~app.video.capture.resilient.ResilientCapture` so a lost camera turns into a slate
instead of a dropped call. Importing this package needs no camera, no udev and no display: backends are
imported when chosen.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from app.video.capture.base import CaptureError, CaptureSource, list_video_devices

if TYPE_CHECKING:
    from app.settings import CaptureSettings, VideoSettings

log = logging.getLogger(__name__)

__all__ = ["CaptureError", "CaptureSource", "create_capture", "list_video_devices"]


def create_capture(capture: CaptureSettings, video: VideoSettings) -> CaptureSource:
    """The capture source ``capture.backend`` names, at ``video``'s size and rate (not yet opened).

    Raises ValueError for an unknown backend or a "file" backend without ``capture.file``.
    """
    backend = capture.backend
    if backend == "synthetic":
        from app.video.capture.synthetic import SyntheticCapture

        return SyntheticCapture(video.width, video.height, video.fps, seed=capture.seed)
    elif backend == "v4l2":
        from app.video.capture.v4l2 import V4L2Capture

        return V4L2Capture(
            capture.device, video.width, video.height, video.fps, input_format=capture.input_format
        )
    elif backend == "file":
        from app.video.capture.file import FileCapture

        if capture.file is None:
            raise ValueError("capture.backend is 'file' but capture.file is not set")
        return FileCapture(capture.file, video.width, video.height, video.fps)
    else:
        raise ValueError(f"No capture backend named {backend!r} (known: synthetic, v4l2, file)")
