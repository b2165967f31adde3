"""Echo cancellation, noise suppression and gain control: WebRTC's audio processing module (AEC3).

:class:`AudioProcessing` wraps pywebrtc-audio's ``AudioProcessor`` (WebRTC's APM: AEC3, NS, AGC2 and the
high-pass filter in one pass) for Doorway's 48 kHz stereo 10 ms frames. It is fed, per frame, the microphone
block and the exact block that was sent to the speaker while that block was captured (the far-end
reference; before the engine's calibrated ``audio.playback_gain_db``, which so becomes part of the echo
path — AEC3 cancels less well from a quieter reference); AEC3 finds the echo path's delay itself, starting
from ``stream_delay_ms`` (the acoustic delay from calibration plus the sound card's period and output
buffering).

**What each part costs in latency** (measured on this build, a 10 ms frame in, a 10 ms frame out, by
cross-correlating input and output of speech): the band-split filter the module always runs at 48 kHz,
0.96 ms (46 samples); AEC3, 8 ms more (its 4 ms block framing and its suppressor's overlap-add); noise
suppression, 6 ms more (its analysis window's overlap). Mouth-to-ear is budgeted at 20 ms, so noise
suppression is off by default: a doorway is meant to carry the room's ambience, and 6 ms is a third of the
budget. Automatic gain control is off by default too: calibration sets the levels.
:attr:`AudioProcessing.latency_ms` says what the chosen parts cost.

**Bad input.** Non-finite samples (NaN, inf) from a broken driver would poison AEC3's adaptive filter for
good; they are replaced by silence and counted before the frame reaches it. Values are clipped to [-1, 1].

Thread: one object per thread (the audio-send thread); :meth:`process` allocates only the array the binding
returns. Sizes are samples per channel at 48 kHz; the array layout is ``(480, 2)`` float32, which the
binding wants interleaved (a C-contiguous ``(480, 2)`` array reshaped to ``(960,)`` is exactly that, without
a copy).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from app.audio.device import CHANNELS, FRAME, SAMPLE_RATE

log = logging.getLogger(__name__)

Block = npt.NDArray[np.float32]
"""One frame: float32 ``(FRAME, CHANNELS)``."""

# Algorithmic latency of each part of this APM build, samples at 48 kHz (see the module docstring for how it
# was measured; tests/audio/test_processing.py measures it again).
SPLIT_FILTER_SAMPLES = 46
AEC_SAMPLES = 384
NS_SAMPLES = 288


def processing_latency_samples(
    *, echo_cancellation: bool, noise_suppression: bool, gain_control: bool = False
) -> int:
    """What :class:`AudioProcessing` with these parts delays the microphone signal by, samples at 48 kHz."""
    if not (echo_cancellation or noise_suppression or gain_control):
        return 0
    return SPLIT_FILTER_SAMPLES + AEC_SAMPLES * echo_cancellation + NS_SAMPLES * noise_suppression


class AudioProcessing:
    """WebRTC APM for one microphone stream: ``process(mic, speaker) -> cleaned mic`` per 10 ms frame."""

    def __init__(
        self,
        *,
        echo_cancellation: bool = True,
        noise_suppression: bool = False,
        gain_control: bool = False,
        stream_delay_ms: int = 0,
        ns_level: int = 1,
    ) -> None:
        from pywebrtc_audio import AudioProcessor

        if not 0 <= stream_delay_ms <= 1000:
            raise ValueError(f"stream_delay_ms must be 0..1000, got {stream_delay_ms}")
        self.echo_cancellation = echo_cancellation
        self.noise_suppression = noise_suppression
        self.gain_control = gain_control
        self.enabled = echo_cancellation or noise_suppression or gain_control
        self._apm: Any = None
        if self.enabled:
            self._apm = AudioProcessor(
                sample_rate=SAMPLE_RATE,
                num_channels=CHANNELS,
                echo_cancellation=echo_cancellation,
                noise_suppression=noise_suppression,
                high_pass_filter=echo_cancellation,
                auto_gain_control=gain_control,
                ns_level=ns_level,
                stream_delay_ms=stream_delay_ms,
            )
        self._mic = np.zeros((FRAME, CHANNELS), np.float32)
        self._far = np.zeros((FRAME, CHANNELS), np.float32)
        self.frames = 0
        self.non_finite_frames = 0
        self._mic_power = 0.0
        self._out_power = 0.0

    @property
    def latency_samples(self) -> int:
        """Algorithmic delay the enabled parts add to the microphone signal, samples at 48 kHz."""
        return processing_latency_samples(
            echo_cancellation=self.echo_cancellation,
            noise_suppression=self.noise_suppression,
            gain_control=self.gain_control,
        )

    @property
    def latency_ms(self) -> float:
        """:attr:`latency_samples` in ms."""
        return self.latency_samples * 1000 / SAMPLE_RATE

    @property
    def stream_delay_ms(self) -> int:
        """The echo path delay hint AEC3 starts from, ms."""
        return int(self._apm.stream_delay_ms) if self._apm is not None else 0

    @stream_delay_ms.setter
    def stream_delay_ms(self, ms: int) -> None:
        if self._apm is not None:
            self._apm.stream_delay_ms = max(0, min(1000, int(ms)))

    @staticmethod
    def _sanitize(src: Block, dst: Block) -> bool:
        """Copy ``src`` into ``dst`` clipped to [-1, 1]; True if it held non-finite samples (now zeros)."""
        if src.shape != dst.shape:
            raise ValueError(f"expected a block of shape {dst.shape}, got {src.shape}")
        np.clip(src, -1.0, 1.0, out=dst)
        if math.isfinite(float(dst.sum())):
            return False
        np.nan_to_num(dst, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        return True

    def process(self, mic: Block, speaker: Block) -> Block:
        """One frame of microphone signal, cleaned, given the speaker signal of the same 10 ms.

        ``mic`` and ``speaker`` are float32 ``(480, 2)``; neither is modified. Returns a new float32
        ``(480, 2)`` array. With every part disabled the microphone passes through (clipped).
        """
        bad = self._sanitize(mic, self._mic)
        bad |= self._sanitize(speaker, self._far)
        if bad:
            self.non_finite_frames += 1
            if self.non_finite_frames == 1:
                log.warning("audio processing: non-finite samples from the sound card replaced by silence")
        self.frames += 1
        if self._apm is None:
            out: Block = self._mic.copy()
        else:
            result = self._apm.process(self._mic.reshape(-1), self._far.reshape(-1))
            out = np.asarray(result, dtype=np.float32).reshape(FRAME, CHANNELS)
        # Smoothed levels for the statistics (a cheap EWMA, ~1 s).
        self._mic_power += 0.01 * (float(np.mean(self._mic * self._mic)) - self._mic_power)
        self._out_power += 0.01 * (float(np.mean(out * out)) - self._out_power)
        return out

    def reset(self) -> None:
        """Forget the adapted echo path and noise estimates (a new call, or a reopened sound card)."""
        if self._apm is not None:
            self._apm.reset()

    def stats(self) -> dict[str, Any]:
        """Parts enabled, their latency, frames processed, bad frames, and smoothed levels (dBFS)."""

        def db(p: float) -> float:
            return round(10 * math.log10(max(p, 1e-15)), 1)

        return {
            "echo_cancellation": self.echo_cancellation,
            "noise_suppression": self.noise_suppression,
            "gain_control": self.gain_control,
            "latency_ms": round(self.latency_ms, 2),
            "stream_delay_ms": self.stream_delay_ms,
            "frames": self.frames,
            "non_finite_frames": self.non_finite_frames,
            "mic_dbfs": db(self._mic_power),
            "out_dbfs": db(self._out_power),
        }
