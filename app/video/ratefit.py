"""Make the encoder spend the rate congestion control gives it (sans-I/O).

Why: with a one-frame VBV buffer, libx264 in ABR mode undershoots its target by 10–30 % on ordinary
scenes: a frame that wants more than the buffer holds is clamped, and the bits it could not spend are
never made up later. On this project's synthetic 1080p60 scene x264 asked for 12 Mb/s makes ~9.
An encoder that makes less than the target wastes the path, and it also slows congestion control's
ramp-up, which never raises the target above 1.5× the rate actually delivered. Hardware encoders in CBR
mode tend to overshoot a little instead.

What: :class:`RateFit` compares, over the last ``window`` P frames, the bits the encoder produced with the
bits the target allowed for those same frames (target ÷ fps each, at the target in force when the frame
was encoded), and scales the rate handed to the encoder by a correction factor so that the two meet. The
factor moves by the square root of the measured error at each update (every ``update_every`` frames)
and stays within [``low``, ``high``], so a scene that simply has nothing to spend bits on (a static room
at the quality ceiling) cannot drive it up without bound, and an overshooting encoder is pulled down.
Keyframes are left out: they are rare, sized by their own budget, and would swing the factor.

This is WebRTC's EncoderBitrateAdjuster idea (which corrects overshoot), used in both directions.

Thread: all methods are called on the encode thread; nothing here blocks or does I/O.
"""

from __future__ import annotations

import math
from collections import deque


class RateFit:
    """Correction factor between the target bitrate and the rate asked of the encoder."""

    def __init__(
        self,
        fps: int,
        *,
        window: int = 60,
        update_every: int = 30,
        low: float = 0.8,
        high: float = 1.3,
    ) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if not 0 < low <= 1.0 <= high:
            raise ValueError(f"need 0 < low ({low}) <= 1 <= high ({high})")
        if not 1 <= update_every <= window:
            raise ValueError(f"need 1 <= update_every ({update_every}) <= window ({window})")
        self.fps = fps
        self.low = low
        self.high = high
        self.update_every = update_every
        self.factor = 1.0
        """Rate asked of the encoder ÷ target. Starts at 1."""
        self.updates = 0
        # (bits produced, bits allowed) per P frame, newest last.
        self._window = window
        self._frames: deque[tuple[int, float]] = deque(maxlen=window)
        self._since_update = 0

    def encoder_kbps(self, target_kbps: int) -> int:
        """The rate to ask of the encoder for ``target_kbps`` (kbit/s), at least 1."""
        return max(1, round(target_kbps * self.factor))

    def on_frame(self, size_bytes: int, target_kbps: int, *, keyframe: bool) -> None:
        """One encoded frame of ``size_bytes`` made while the target was ``target_kbps`` (kbit/s)."""
        if keyframe or target_kbps <= 0 or size_bytes < 0:
            return
        self._frames.append((size_bytes * 8, target_kbps * 1000.0 / self.fps))
        self._since_update += 1
        if self._since_update < self.update_every or len(self._frames) < self._window:
            return
        self._since_update = 0
        produced = sum(f[0] for f in self._frames)
        allowed = sum(f[1] for f in self._frames)
        if produced <= 0 or allowed <= 0:
            return
        utilisation = produced / allowed
        # Damped: the encoder's response to its rate is neither instant nor exactly proportional.
        factor = self.factor / math.sqrt(utilisation)
        self.factor = min(self.high, max(self.low, factor))
        self.updates += 1

    def stats(self) -> dict[str, float | int]:
        produced = sum(f[0] for f in self._frames)
        allowed = sum(f[1] for f in self._frames)
        return {
            "factor": round(self.factor, 3),
            "utilisation": round(produced / allowed, 3) if allowed > 0 else 0.0,
            "updates": self.updates,
        }
