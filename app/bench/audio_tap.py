"""What a benchmark doorway records of its audio, inside the engine process (see app/bench/audio.py).

:class:`BenchAudioTap` is the engine's :class:`~app.engine.audio.AudioTap`:

- on the audio-send thread it keeps, per 10 ms frame, what echo cancellation did (microphone, speaker
  reference and output power, and — from the synthetic room's ground truth — whether the local talker was
  active, how loud the echo was, and how much of the clean local talker survived in the output);
- on the device thread it copies each block played, with its DAC time, into a preallocated ring
  (allocation-free); on the audio-playout thread it runs the latency-marker detector over those blocks.

Everything is written once, at exit, into a JSON file beside the engine's bench record (by the audio process,
where audio has one), which the engine adds to its record under ``"audio"``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from app.audio.markers import MarkerDetector
from app.engine.audio import AudioEngine, AudioTap

_SLOTS = 512
_MAX_BLOCKS = 200_000  # frames of statistics kept (33 minutes)


class BenchAudioTap(AudioTap):
    """Records frame statistics and marker times (threads as named on each method)."""

    def __init__(self, period: int = 480, channels: int = 2) -> None:
        self.device: Any = None
        """The synthetic device, set by the engine's owner once the engine exists (for its ground truth)."""
        self.processing_delay = 0
        """Samples by which echo cancellation delays the microphone signal (set with :attr:`device`)."""
        self.blocks: list[tuple[float, ...]] = []
        self.detected_ns: list[int] = []
        self.seconds: list[dict[str, int]] = []
        self._played = np.zeros((_SLOTS, period, channels), np.float32)
        self._played_ns = np.zeros(_SLOTS, np.int64)
        self._written = 0
        self._read = 0
        self.dropped = 0
        self._detector = MarkerDetector()

    # audio-send thread
    def on_processed(
        self, first_sample: int, capture_ns: int, mic: np.ndarray, speaker: np.ndarray, out: np.ndarray
    ) -> None:
        """Per frame: (capture ns, mic power, output power, speaker power, talker active (1/0, −1 unknown),
        echo power at the mic, near-talker power at the mic, <output, near talker delayed by the
        processing>, <that near talker, itself>)."""
        if len(self.blocks) >= _MAX_BLOCKS:
            return
        mic_p = float(np.mean(mic * mic))
        out_p = float(np.mean(out * out))
        spk_p = float(np.mean(speaker * speaker))
        truth = None
        aligned = None
        if self.device is not None and hasattr(self.device, "truth"):
            truth = self.device.truth(first_sample, len(mic))
            # The processing delays its output by a known number of samples: the near talker that can be in
            # this output frame was captured that much earlier.
            start = first_sample - self.processing_delay
            aligned = self.device.truth(start, len(mic)) if start >= 0 else None
        if truth is None or aligned is None:
            self.blocks.append((capture_ns, mic_p, out_p, spk_p, -1.0, 0.0, 0.0, 0.0, 0.0))
            return
        self.blocks.append(
            (
                capture_ns,
                mic_p,
                out_p,
                spk_p,
                1.0 if truth.talker_active else 0.0,
                float(np.mean(truth.echo * truth.echo)),
                float(np.mean(truth.near * truth.near)),
                float(np.sum(out * aligned.near)),
                float(np.sum(aligned.near * aligned.near)),
            )
        )

    # device thread: copies into preallocated arrays only
    def on_played(self, block: np.ndarray, playout_ns: int) -> None:
        if self._written - self._read >= _SLOTS or len(block) != self._played.shape[1]:
            self.dropped += 1
            return
        slot = self._written % _SLOTS
        np.copyto(self._played[slot], block)
        self._played_ns[slot] = playout_ns
        self._written += 1

    # audio-playout thread
    def poll(self) -> None:
        while self._read < self._written:
            slot = self._read % _SLOTS
            self.detected_ns.extend(self._detector.feed(self._played[slot], int(self._played_ns[slot])))
            self._read += 1

    # audio-playout thread
    def on_second(self, now_ns: int, counters: dict[str, int]) -> None:
        self.seconds.append({"t": now_ns, **counters})

    @classmethod
    def attach(cls, engine: AudioEngine) -> BenchAudioTap:
        """A tap recording ``engine`` (before it starts): its device's ground truth, its processing delay."""
        tap = cls(period=engine.device.period)
        tap.device = engine.device
        if engine.processing is not None:
            tap.processing_delay = engine.processing.latency_samples
        engine.tap = tap
        return tap

    def write(self, path: Path) -> None:
        """:meth:`dump` into ``path`` as JSON (whole or not at all), once the engine has stopped."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.dump()))
        os.replace(tmp, path)

    def dump(self) -> dict[str, Any]:
        emitted: list[int] = []
        if self.device is not None and hasattr(self.device, "markers_emitted"):
            emitted = list(self.device.markers_emitted())
        return {
            "blocks": self.blocks,
            "markers_emitted_ns": emitted,
            "markers_detected_ns": self.detected_ns,
            "played_blocks_dropped": self.dropped,
            "seconds": self.seconds,
        }
