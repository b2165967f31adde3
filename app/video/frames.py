"""Frames as they move between the engine's stages, with the timestamps each stage adds.

All times are CLOCK_MONOTONIC nanoseconds (``time.monotonic_ns()``), which every process on one host shares;
across hosts only differences taken on one host are meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import av


@dataclass(slots=True)
class FrameTimes:
    """Per-frame timestamps, CLOCK_MONOTONIC ns; 0 means the stage has not seen the frame (yet)."""

    captured: int = 0
    encoded: int = 0
    sent: int = 0
    received: int = 0
    decoded: int = 0
    shown: int = 0


@dataclass(slots=True)
class CapturedFrame:
    """A raw picture from a capture backend: yuv420p at the configured size."""

    frame: av.VideoFrame
    index: int
    """Capture frame counter, from 0, per capture session."""
    captured_ns: int
    """CLOCK_MONOTONIC ns when the picture was taken (for synthetic: the tick it was computed for)."""
    slate: bool = False
    """True when this is the "camera unavailable" slate, not a camera picture."""


@dataclass(slots=True)
class EncodedFrame:
    """One access unit out of an encoder (Annex B H.264 or HEVC)."""

    data: bytes
    keyframe: bool
    index: int
    """The capture index of the picture this encodes."""
    times: FrameTimes = field(default_factory=FrameTimes)


@dataclass(slots=True)
class DecodedFrame:
    """A decoded picture on its way to a display sink."""

    frame: av.VideoFrame
    frame_id: int
    """The transport frame id it came in as."""
    times: FrameTimes = field(default_factory=FrameTimes)
