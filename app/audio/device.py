"""The sound-card interface: 48 kHz stereo, the microphone in 10 ms blocks, the speaker in periods of 2.5, 5
or 10 ms, one duplex callback per speaker period.

An :class:`AudioDevice` is the hardware boundary of the audio pipeline. The real backend
(:mod:`app.audio.portaudio`, a sound card through PortAudio) and the synthetic one
(:mod:`app.audio.synthetic`, a simulated room with a talker, an echo path and noise) look the same: after
:meth:`AudioDevice.start` the device calls one :data:`AudioCallback` per period of :attr:`AudioDevice.period`
samples on its own real-time thread, handing it a speaker block to fill and, every 10 ms, the microphone
block just completed, each with its CLOCK_MONOTONIC time at the converters (ADC for the microphone, DAC for
the speaker). Units: samples at 48 kHz, ms for latencies, CLOCK_MONOTONIC ns for times, float32 samples in
[-1, 1].

**Why the microphone comes in 10 ms blocks and the speaker in shorter periods.** Echo cancellation and Opus
work on 10 ms frames (:data:`FRAME`): a frame can be processed only once its last sample is in, so a
shorter capture period would gain nothing (the frame is complete at the same moment) and the microphone is
delivered in whole frames (:data:`CAPTURE_BLOCK`), as the sound card's capture buffer. The speaker period
is what sets how long a decoded frame waits for the card's next callback: on average half a period, at worst
a whole one, and the phase between the two doorways' sound cards is arbitrary and fixed for a call (it
slides only with the cards' drift). Where the twin's frames fall just inside the playout's concealment
guard before a callback, each must wait a whole period more. A 2.5 ms period (``audio.period_ms``'s
default) keeps both costs small: on a loaded 2-core host, 5 ms put the clean median over 20 ms in the runs
that drew an unlucky phase (README, "Audio").

The two directions run on one clock and one callback (the speaker blocks filled while a microphone block
was captured are the echo canceller's reference for it), so the device gathers the microphone's periods
into the 10 ms block itself (:meth:`AudioDevice._invoke`), aligned on the callback ``index``: the block
arrives with every ``FRAME / period``-th callback (``index % (FRAME // period) == FRAME // period − 1``),
and on the callbacks between, ``mic`` is empty.

The sound card's own buffering (:attr:`AudioDevice.input_latency_ms`, :attr:`AudioDevice.output_latency_ms`,
and the 10 ms capture block) is reported apart from the pipeline's, and is already folded into
``capture_ns``/``playout_ns``.

:func:`open_device` is the factory (an explicit if/elif on the kind); importing this module needs neither
PortAudio nor a sound card: :mod:`sounddevice` is imported only when it is used.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from app.audio.room import RoomConfig
    from app.settings import AudioSettings

log = logging.getLogger(__name__)

SAMPLE_RATE = 48000
"""Samples per second per channel, everywhere in the audio pipeline."""
CHANNELS = 2
"""Stereo: microphones and speakers."""
FRAME = 480
"""Samples per channel in one processing and codec frame: 10 ms at 48 kHz."""
FRAME_NS = FRAME * 1_000_000_000 // SAMPLE_RATE
"""Duration of one frame, ns (10 000 000)."""
CAPTURE_BLOCK = FRAME
"""Samples per channel in each microphone block a callback receives: the 10 ms frame."""
PERIODS = (120, 240, 480)
"""Speaker periods allowed, samples per channel per callback (2.5, 5, 10 ms); each divides :data:`FRAME`."""
DEFAULT_PERIOD = 240
"""A device's period when none is given: 5 ms (the engine opens its card with ``audio.period_ms``)."""


def period_samples(period_ms: float) -> int:
    """Samples per callback for a period in ms (2.5, 5 or 10); ValueError for anything else."""
    n = round(period_ms * SAMPLE_RATE / 1000)
    if n not in PERIODS or abs(n * 1000 / SAMPLE_RATE - period_ms) > 1e-6:
        raise ValueError(f"audio period must be 2.5, 5 or 10 ms, not {period_ms}")
    return n


AudioCallback = Callable[[npt.NDArray[np.float32], npt.NDArray[np.float32], int, int, int], None]
"""``callback(mic, speaker, index, capture_ns, playout_ns)``, called once per (speaker) period on the
device's real-time thread.

- ``mic``: float32 ``(CAPTURE_BLOCK, CHANNELS)``, the 10 ms microphone block just completed, on every
  ``FRAME // period``-th callback (those with ``index % (FRAME // period) == FRAME // period − 1``); on the
  others an empty ``(0, CHANNELS)`` array. Its first sample is sample ``(index + 1) · period − CAPTURE_BLOCK``
  of the microphone stream. Read-only, and valid only during the call (the device reuses the buffer): copy
  what you keep.
- ``speaker``: float32 ``(period, CHANNELS)``, the block the speaker plays next. The callee must fill all of
  it (it is *not* cleared beforehand); it is read after the call returns.
- ``index``: callback counter, 0 for the first callback after :meth:`AudioDevice.start`; it keeps counting
  across a reopen after the device was lost, so ``index × period`` numbers the samples delivered.
- ``capture_ns``: CLOCK_MONOTONIC ns at which the first sample of ``mic`` reached the microphone (ADC time);
  while ``mic`` is empty, that of the block being gathered.
- ``playout_ns``: CLOCK_MONOTONIC ns at which the first sample of ``speaker`` will leave the speaker (DAC
  time).

The callback must not block (no locks held by other threads for long, no I/O, no waiting on queues) and
must not allocate arrays: write into preallocated buffers and hand data to other threads through
preallocated rings. If it raises, the device counts it in ``callback_errors``, logs the first one, plays
silence for that period and keeps running.
"""


class AudioDeviceError(Exception):
    """The sound card is missing, busy or failed to open. The message names it and lists what exists."""


class AudioDevice(ABC):
    """A duplex 48 kHz stereo sound card: one callback per :attr:`period` speaker samples, the microphone
    in blocks of :data:`CAPTURE_BLOCK`.

    ``start``/``stop`` are called from a control thread; the callback runs on the device's own real-time
    thread; ``stats`` and the latency properties may be read from any thread. The base class holds the
    shared behaviour: the counters and :meth:`_invoke`, which gathers the microphone into its 10 ms block and
    runs the callback safely.

    A device that disappears mid-call (unplugged, or its driver failed) does not stop: it marks itself
    ``lost``, logs once, stops calling back, and tries to reopen about once a second; when it is back the
    callbacks resume (``index`` keeps counting) and ``reopened`` counts it. Whoever uses the audio keeps
    running meanwhile.
    """

    name: str
    """What this is, for logs and statistics, e.g. "synthetic" or "portaudio USB Audio / USB Audio"."""

    period: int
    """Samples per channel in each speaker block (one per callback), one of :data:`PERIODS`."""

    def __init__(self, name: str, period: int = DEFAULT_PERIOD) -> None:
        if period not in PERIODS:
            raise ValueError(f"audio period must be one of {PERIODS} samples, not {period}")
        self.name = name
        self.period = period
        self._sub_blocks = FRAME // period
        # The microphone block being gathered (device thread), and the empty one handed over meanwhile.
        self._mic_block = np.zeros((CAPTURE_BLOCK, CHANNELS), dtype=np.float32)
        self._no_mic = np.zeros((0, CHANNELS), dtype=np.float32)
        self._mic_block_ns = 0
        self._reopened = 0
        self._callbacks = 0
        self._input_overflows = 0
        self._output_underflows = 0
        self._callback_errors = 0
        self._max_callback_ns = 0
        self._lost = False
        self._error_logged = False

    @abstractmethod
    def start(self, callback: AudioCallback) -> None:
        """Open the device and start calling ``callback`` once per block.

        Raises :class:`AudioDeviceError` when the device cannot be opened, RuntimeError when already running.
        """

    @abstractmethod
    def stop(self) -> None:
        """Stop the callbacks and release the device. Idempotent; joins the device's threads; never raises."""

    @property
    @abstractmethod
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop` (also while a lost device is being reopened)."""

    @property
    @abstractmethod
    def input_latency_ms(self) -> float:
        """The sound card's own capture buffering, ms (already subtracted in ``capture_ns``)."""

    @property
    @abstractmethod
    def output_latency_ms(self) -> float:
        """The sound card's own playout buffering, ms (already added in ``playout_ns``)."""

    def stats(self) -> dict[str, Any]:
        """Counters since construction (any thread).

        ``callbacks``: blocks delivered; ``input_overflows``/``output_underflows``: xruns the device reported;
        ``callback_errors``: callbacks that raised; ``max_callback_ms``: longest callback; ``lost``: the
        device disappeared and is not back yet; ``reopened``: times it came back after being lost.
        """
        return {
            "callbacks": self._callbacks,
            "input_overflows": self._input_overflows,
            "output_underflows": self._output_underflows,
            "callback_errors": self._callback_errors,
            "max_callback_ms": self._max_callback_ns / 1e6,
            "lost": self._lost,
            "reopened": self._reopened,
        }

    @property
    def lost(self) -> bool:
        """True while the device has disappeared and is being reopened (any thread)."""
        return self._lost

    def _invoke(
        self,
        callback: AudioCallback,
        mic: npt.NDArray[np.float32],
        speaker: npt.NDArray[np.float32],
        index: int,
        capture_ns: int,
        playout_ns: int,
    ) -> None:
        """One period (device thread): gather ``mic`` (one period, any buffer) into the 10 ms block, run
        ``callback`` with the block when it is complete (else with an empty one), time it, and turn an
        exception into silence."""
        began = time.perf_counter_ns()
        part = index % self._sub_blocks
        if part == 0:
            self._mic_block_ns = capture_ns
        np.copyto(self._mic_block[part * self.period : (part + 1) * self.period], mic)
        block = self._mic_block if part == self._sub_blocks - 1 else self._no_mic
        try:
            callback(block, speaker, index, self._mic_block_ns, playout_ns)
        except Exception:
            self._callback_errors += 1
            speaker.fill(0.0)
            if not self._error_logged:
                self._error_logged = True
                log.exception("%s: audio callback failed (block %d); playing silence", self.name, index)
        elapsed = time.perf_counter_ns() - began
        self._callbacks += 1
        self._max_callback_ns = max(self._max_callback_ns, elapsed)


_RT_PRIORITY = 10
_rt_refused = False


def make_realtime(what: str) -> bool:
    """Give the calling thread real-time scheduling (SCHED_FIFO, priority 10) if the process may.

    Audio threads sleep until their deadline and must then run at once, on a machine whose other cores are
    busy encoding video: under the default scheduler a wake-up waits behind those threads for up to a
    scheduler slice (milliseconds, measured here, against a 20 ms mouth-to-ear budget). A thread that
    sleeps most of the time at a modest real-time priority cannot starve the system. Needs root or
    CAP_SYS_NICE (the service unit grants it); without, says so once and carries on. Returns whether it
    took.
    """
    global _rt_refused
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(_RT_PRIORITY))
    except (OSError, AttributeError) as exc:
        if not _rt_refused:
            _rt_refused = True
            log.info("%s: real-time scheduling refused (%s); audio runs at normal priority", what, exc)
        return False
    return True


def _join(thread: threading.Thread | None, timeout_s: float = 5.0) -> None:
    """Join ``thread`` unless it is the calling thread (a callback may stop its own device)."""
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout_s)


def list_devices() -> list[dict[str, Any]]:
    """The sound cards PortAudio sees: ``index``, ``name``, ``hostapi``, ``max_input_channels``,
    ``max_output_channels``, ``default_samplerate``.

    Returns [] when PortAudio has none, or when sounddevice or the PortAudio library cannot be loaded.
    Never raises.
    """
    try:
        import sounddevice as sd
    except (ImportError, OSError) as exc:
        log.debug("PortAudio not available: %s", exc)
        return []
    try:
        hostapis = [str(api["name"]) for api in sd.query_hostapis()]
        found: list[dict[str, Any]] = []
        for dev in sd.query_devices():
            api = int(dev["hostapi"])
            found.append(
                {
                    "index": int(dev["index"]),
                    "name": str(dev["name"]),
                    "hostapi": hostapis[api] if 0 <= api < len(hostapis) else str(api),
                    "max_input_channels": int(dev["max_input_channels"]),
                    "max_output_channels": int(dev["max_output_channels"]),
                    "default_samplerate": float(dev["default_samplerate"]),
                }
            )
        return found
    except Exception as exc:
        log.warning("PortAudio could not list sound cards: %s", exc)
        return []


def open_device(
    kind: str,
    *,
    period: int = DEFAULT_PERIOD,
    input_name: str | None = None,
    output_name: str | None = None,
    room: RoomConfig | None = None,
    drift_ppm: float = 0.0,
    realtime: bool = True,
    latency_ms: float = 10.0,
) -> AudioDevice:
    """The sound card ``kind`` names, not yet started, calling back every ``period`` samples.

    ``"synthetic"``: a simulated room (``room``, default :class:`~app.audio.room.RoomConfig`), its clock
    ``drift_ppm`` fast, paced in real time or (``realtime=False``) as fast as possible on a virtual clock,
    with ``latency_ms`` of simulated output buffering. ``"portaudio"``: the sound cards named (by part of
    their name; None = the system default) with ``latency_ms`` of buffering asked of the card. Parameters
    that do not apply to a kind are ignored. Raises ValueError for an unknown kind.
    """
    if kind == "synthetic":
        from app.audio.room import RoomConfig
        from app.audio.synthetic import SyntheticDevice

        config = room if room is not None else RoomConfig()
        return SyntheticDevice(
            config, period=period, drift_ppm=drift_ppm, realtime=realtime, latency_ms=latency_ms
        )
    elif kind == "portaudio":
        from app.audio.portaudio import PortAudioDevice

        return PortAudioDevice(input_name, output_name, period=period, latency_ms=latency_ms)
    else:
        raise ValueError(f"No audio device kind {kind!r} (known: synthetic, portaudio)")


def open_configured(audio: AudioSettings, room: RoomConfig, *, realtime: bool = True) -> AudioDevice:
    """The sound card the ``[audio]`` settings name, not yet started: their backend, period, devices,
    drift and latency, with ``room`` for the synthetic one (the engine and audio calibration both open it
    so). Raises ValueError for a bad period."""
    return open_device(
        audio.backend,
        period=period_samples(audio.period_ms),
        input_name=audio.input_device,
        output_name=audio.output_device,
        room=room,
        drift_ppm=audio.drift_ppm,
        realtime=realtime,
        latency_ms=audio.device_latency_ms,
    )
