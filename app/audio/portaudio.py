"""Sound cards through PortAudio (:mod:`sounddevice`): one duplex 48 kHz stereo float32 stream.

:class:`PortAudioDevice` opens one full-duplex ``sounddevice.Stream`` on the microphone and speaker named
in the settings (by part of their name, case-insensitive; ``None`` = PortAudio's default), asking the card
for ``latency_ms`` of buffering and for blocks of exactly :attr:`~app.audio.device.AudioDevice.period`
samples. A microphone that only offers one channel is opened mono and copied to both channels. The stream's
microphone periods are gathered into the interface's 10 ms blocks by :meth:`AudioDevice._invoke`: one
duplex stream keeps both directions on one clock and one callback (the echo canceller's reference pairing
relies on it), and PortAudio gives a duplex stream one block size for both.

**Theory of operation.**

*Threads.* ``start``/``stop`` run on a control thread. PortAudio's own real-time thread runs
:meth:`PortAudioDevice._on_audio` once per period; it touches only preallocated buffers and plain counters
and never takes a lock. A small supervisor thread (``audio-supervisor``) owns the stream while it runs: it
notices a failed stream, reopens it, and closes it at stop. The two threads share only a handful of
attributes, each written by one side (GIL-atomic stores), and a :class:`threading.Event` that PortAudio's
finished-callback sets to wake the supervisor at once.

*Clock conversion.* PortAudio stamps each callback with times on its stream clock, in seconds of
unspecified origin: ``inputBufferAdcTime`` (the first microphone sample at the ADC), ``outputBufferDacTime``
(the first speaker sample at the DAC) and ``currentTime`` (when the callback was invoked). The callback
reads CLOCK_MONOTONIC on entry and takes ``offset = monotonic − currentTime``. Python reaches the callback
late by a variable amount (cffi, NumPy wrapping, waiting for the GIL), so each sample of ``offset`` is too
large by that lateness and never too small; the smallest offset seen over the last one to two seconds
(two one-second buckets, no allocation) is therefore the best estimate, and still follows a slow drift
between the two clocks. ``capture_ns``/``playout_ns`` are the stream times plus that offset. Some host APIs
report zeros; then the device falls back to ``now − period − input latency`` and ``now + output latency``
from the latencies the opened stream reports.

*Loss and reopen.* A sound card can vanish mid-call (USB unplugged, driver failure). The supervisor
declares the device lost when PortAudio's finished-callback fires while we did not stop the stream, when
the stream reports itself inactive, when asking it raises ``PortAudioError``, or when no callback has come
for a few seconds although the stream claims to run (PortAudio's ALSA backend can sit in ``poll`` for
about two seconds on a dead device before it gives up). It then logs one warning naming the device, closes
the stream, and about once a second re-enumerates PortAudio's devices, resolves the names again (indices
change on re-plug) and reopens. PortAudio fixes its device list at initialisation, so re-enumerating means
``Pa_Terminate``/``Pa_Initialize`` (sounddevice's ``_terminate``/``_initialize``, the maintainers'
documented work-around, python-sounddevice#125); this closes every PortAudio stream of the process, which
is only ours. Callbacks resume with ``index`` counting on; ``reopened`` counts the recoveries.

Units: samples at 48 kHz, seconds where PortAudio speaks, ms for latencies, CLOCK_MONOTONIC ns for
times. :mod:`sounddevice` is imported only inside functions, so importing this module needs no PortAudio.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from app.audio.device import (
    CHANNELS,
    DEFAULT_PERIOD,
    SAMPLE_RATE,
    AudioCallback,
    AudioDevice,
    AudioDeviceError,
    _join,
)

log = logging.getLogger(__name__)

_NS_PER_S = 1_000_000_000
_NO_OFFSET = 1 << 62
"""Sentinel larger than any clock offset, ns: "no sample in this bucket yet"."""
_NO_THREAD = 0
"""Value of ``_callback_ident`` outside a callback (``threading.get_ident`` never returns 0)."""


def _import_sounddevice() -> Any:
    """The :mod:`sounddevice` module; AudioDeviceError saying what to install when it cannot load."""
    try:
        import sounddevice
    except OSError as exc:
        # sounddevice raises OSError when it cannot dlopen libportaudio.
        raise AudioDeviceError(
            f"cannot load the PortAudio library ({exc}); install Debian's libportaudio2 "
            "(apt-get install libportaudio2)"
        ) from exc
    except ImportError as exc:
        raise AudioDeviceError(f"the sounddevice package is not installed ({exc})") from exc
    return sounddevice


@dataclass(frozen=True)
class _Card:
    """One direction of the stream, resolved against PortAudio's current device list."""

    index: int
    """PortAudio device index (valid until PortAudio re-enumerates)."""
    name: str
    hostapi: str
    channels: int
    """Channels we open: 2, or 1 for a mono microphone (copied to both channels)."""


def _describe(devices: list[dict[str, Any]], hostapis: list[str]) -> str:
    """The device list for an error message, one indented line per device."""
    lines = []
    for dev in devices:
        api = int(dev["hostapi"])
        api_name = hostapis[api] if 0 <= api < len(hostapis) else str(api)
        lines.append(
            f"  [{int(dev['index'])}] {dev['name']} — {int(dev['max_input_channels'])} in, "
            f"{int(dev['max_output_channels'])} out, {api_name}"
        )
    return "\n".join(lines)


def _resolve(sd: Any, query: str | None, kind: str) -> _Card:
    """The ``kind`` ("input" or "output") device ``query`` names in PortAudio's current device list.

    ``None`` is PortAudio's default device. Otherwise ``query`` is a case-insensitive substring of the
    device name; when several names contain it, one that equals it exactly wins, else it is ambiguous.
    The output needs 2 channels; the input needs 2, or 1 (then opened mono). Raises AudioDeviceError naming
    what was asked and listing the devices found. Control or supervisor thread.
    """
    asked = "the default " + kind if query is None else f"{kind} {query!r}"
    try:
        devices = [dict(dev) for dev in sd.query_devices()]
        hostapis = [str(api["name"]) for api in sd.query_hostapis()]
    except sd.PortAudioError as exc:
        raise AudioDeviceError(
            f"PortAudio could not list sound cards while looking for {asked}: {exc}"
        ) from exc
    if not devices:
        raise AudioDeviceError(f"PortAudio found no sound cards (looking for {asked})")
    key = "max_input_channels" if kind == "input" else "max_output_channels"
    least = 1 if kind == "input" else CHANNELS
    found = _describe(devices, hostapis)

    if query is None:
        default = int(sd.default.device[0 if kind == "input" else 1])
        by_index = {int(dev["index"]): dev for dev in devices}
        if default not in by_index:
            raise AudioDeviceError(
                f"PortAudio has no default {kind} device; name one in the settings. "
                f"Sound cards found:\n{found}"
            )
        chosen = by_index[default]
    else:
        needle = query.lower()
        named = [dev for dev in devices if needle in str(dev["name"]).lower()]
        usable = [dev for dev in named if int(dev[key]) >= least]
        exact = [dev for dev in usable if str(dev["name"]).lower() == needle]
        if len(exact) == 1:
            usable = exact
        if not usable:
            why = f"none with at least {least} {kind} channel{'s' if least > 1 else ''}" if named else "none"
            raise AudioDeviceError(f"no sound card for {asked} ({why} matches); sound cards found:\n{found}")
        if len(usable) > 1:
            names = ", ".join(repr(str(dev["name"])) for dev in usable)
            raise AudioDeviceError(
                f"{asked} is ambiguous: it matches {names}; give more of the name. "
                f"Sound cards found:\n{found}"
            )
        chosen = usable[0]

    have = int(chosen[key])
    if have < least:
        raise AudioDeviceError(
            f"{asked} is {chosen['name']!r}, which has {have} {kind} channels ({least} needed); "
            f"sound cards found:\n{found}"
        )
    api = int(chosen["hostapi"])
    return _Card(
        index=int(chosen["index"]),
        name=str(chosen["name"]),
        hostapi=hostapis[api] if 0 <= api < len(hostapis) else str(api),
        channels=min(have, CHANNELS),
    )


def _refresh(sd: Any) -> None:
    """Make PortAudio enumerate the sound cards again (supervisor thread, with no stream of ours open).

    PortAudio fixes its device list at ``Pa_Initialize``; only terminating and initialising again sees a
    re-plugged card, possibly at a new index. Closes any PortAudio stream in the process. Raises
    ``PortAudioError`` when PortAudio does not initialise again (the next attempt tries once more).
    """
    terminate = getattr(sd, "_terminate", None)
    initialize = getattr(sd, "_initialize", None)
    if terminate is None or initialize is None:
        return
    try:
        terminate()
    except sd.PortAudioError as exc:
        # Already terminated by a previous attempt whose initialise failed: initialise below.
        log.debug("PortAudio terminate: %s", exc)
    initialize()


class PortAudioDevice(AudioDevice):
    """A sound card through PortAudio: one duplex stream, 48 kHz, stereo float32, ``period`` per callback.

    ``input_name``/``output_name``: part of the device names (case-insensitive), or ``None`` for
    PortAudio's defaults. ``latency_ms``: buffering asked of the card, ms (it may grant another; see
    :attr:`input_latency_ms`). The devices are resolved at construction, so a missing or ambiguous name
    fails here with :class:`AudioDeviceError` listing the devices found; :meth:`start` resolves them again
    and opens the stream. Threads: see the module docstring.
    """

    def __init__(
        self,
        input_name: str | None,
        output_name: str | None,
        *,
        period: int = DEFAULT_PERIOD,
        latency_ms: float = 10.0,
    ) -> None:
        if not latency_ms > 0:
            raise ValueError(f"latency_ms must be positive, not {latency_ms}")
        self._sd = _import_sounddevice()
        self._input_query = input_name
        self._output_query = output_name
        self._input = _resolve(self._sd, input_name, "input")
        self._output = _resolve(self._sd, output_name, "output")
        super().__init__(f"portaudio {self._input.name} / {self._output.name}", period)
        self._latency_s = latency_ms / 1000.0
        self._input_latency_s = self._latency_s
        self._output_latency_s = self._latency_s

        # Tunables, private so that tests can shorten them (seconds).
        self._reopen_interval_s = 1.0
        """Wait between reopen attempts while lost."""
        self._poll_s = 0.1
        """How often the supervisor asks the stream whether it is still active."""
        self._stall_s: float | None = 3.0
        """No callback for this long while the stream claims to run = lost; None disables the check."""
        self._clock: Callable[[], int] = time.monotonic_ns
        """CLOCK_MONOTONIC ns, read by the callback (tests substitute a fixed clock)."""

        self._stream: Any = None
        """The open ``sounddevice.Stream``; owned by ``start`` until the supervisor runs, then by it."""
        self._generation = 0
        """Counts opened streams, so a finished-callback from an old stream is told apart."""
        self._failed_generation = -1
        """Generation whose finished-callback fired (set on PortAudio's thread)."""
        self._user_callback: AudioCallback | None = None
        self._running = False
        self._stopping = False
        self._supervisor: threading.Thread | None = None
        self._wake = threading.Event()
        self._callback_ident = _NO_THREAD
        """``threading.get_ident()`` of the thread inside :meth:`_on_audio`, else 0."""

        # Real-time state, written only by the callback (and reset by whoever opens a stream before
        # starting it). Preallocated: the callback allocates no arrays.
        self._index = 0
        self._stereo: npt.NDArray[np.float32] = np.zeros((period, CHANNELS), dtype=np.float32)
        self._mono = False
        self._period_ns = period * _NS_PER_S // SAMPLE_RATE
        self._input_latency_ns = 0
        self._output_latency_ns = 0
        self._bucket_len = max(1, SAMPLE_RATE // period)
        """Callbacks per clock-offset bucket: one second."""
        self._bucket_count = 0
        self._bucket_min = _NO_OFFSET
        self._previous_min = _NO_OFFSET

    # -- AudioDevice ---------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    @property
    def input_latency_ms(self) -> float:
        """Capture buffering the opened stream reports, ms; before the first open, the latency asked."""
        return self._input_latency_s * 1000.0

    @property
    def output_latency_ms(self) -> float:
        """Playout buffering the opened stream reports, ms; before the first open, the latency asked."""
        return self._output_latency_s * 1000.0

    def start(self, callback: AudioCallback) -> None:
        """Resolve the devices again, open and start the stream, and start the supervisor (control thread).

        Raises AudioDeviceError when a device is missing or the stream does not open, RuntimeError when
        already running.
        """
        if self._running:
            raise RuntimeError(f"{self.name} is already running")
        if self._supervisor is not None:
            # Stopped from inside its own callback: let the old supervisor finish closing first.
            _join(self._supervisor)
            if self._supervisor.is_alive():
                raise RuntimeError(f"{self.name} is still closing its previous stream")
            self._supervisor = None
        self._user_callback = callback
        self._index = 0
        self._stopping = False
        self._lost = False
        self._wake.clear()
        self._input = _resolve(self._sd, self._input_query, "input")
        self._output = _resolve(self._sd, self._output_query, "output")
        try:
            self._open()
        except (self._sd.PortAudioError, ValueError) as exc:
            raise AudioDeviceError(f"{self.name}: cannot open the sound card: {exc}") from exc
        if self._mono:
            log.info("%s: the microphone has one channel; opening it mono and copying it to both", self.name)
        log.info(
            "%s: started, %d samples per callback, latency %.1f ms in / %.1f ms out (asked %.1f ms)",
            self.name,
            self.period,
            self.input_latency_ms,
            self.output_latency_ms,
            self._latency_s * 1000.0,
        )
        self._running = True
        self._supervisor = threading.Thread(target=self._supervise, name="audio-supervisor", daemon=True)
        self._supervisor.start()

    def stop(self) -> None:
        """Stop the callbacks and close the stream. Idempotent; joins the supervisor; never raises.

        May be called from inside the audio callback: the supervisor then closes the stream once the
        callback has returned (PortAudio forbids closing a stream from its own callback).
        """
        if not self._running:
            return
        self._stopping = True
        self._running = False
        self._wake.set()
        if self._callback_ident == threading.get_ident():
            # Inside our own callback: joining would wait for a close that waits for this callback.
            return
        supervisor = self._supervisor
        _join(supervisor)
        if supervisor is not None and supervisor.is_alive():
            log.warning("%s: the audio supervisor did not finish within 5 s; it closes the stream", self.name)
            return
        self._supervisor = None
        # Normally the supervisor has closed it already; this covers a supervisor that died.
        stream, self._stream = self._stream, None
        self._close(stream)

    # -- the real-time callback (PortAudio's thread) ------------------------------------------------------

    def _on_audio(
        self,
        indata: npt.NDArray[np.float32],
        outdata: npt.NDArray[np.float32],
        frames: int,
        time_info: Any,
        status: Any,
    ) -> None:
        """One period (PortAudio's real-time thread): convert times, count xruns, run the user callback.

        Allocates no arrays and takes no locks. ``time_info`` holds PortAudio stream times in seconds;
        ``status`` is a ``sounddevice.CallbackFlags``.
        """
        now = self._clock()
        self._callback_ident = threading.get_ident()
        try:
            callback = self._user_callback
            if callback is None or frames != self.period:
                # Cannot happen with a fixed blocksize, which PortAudio guarantees; play silence rather
                # than hand the callee a block of the wrong size.
                outdata.fill(0.0)
                return
            if status:
                if status.input_overflow:
                    self._input_overflows += 1
                if status.output_underflow:
                    self._output_underflows += 1
            if self._mono:
                # (period, 1) broadcasts into the preallocated (period, 2) buffer: no new array.
                np.copyto(self._stereo, indata)
                mic = self._stereo
            else:
                mic = indata

            current = time_info.currentTime
            if current > 0.0:
                current_ns = int(current * _NS_PER_S)
                # The callback runs late by a variable amount, so every offset sample is too large by that
                # lateness: keep the smallest over the last one to two seconds.
                offset = now - current_ns
                self._bucket_min = min(self._bucket_min, offset)
                self._bucket_count += 1
                if self._bucket_count >= self._bucket_len:
                    self._previous_min = self._bucket_min
                    self._bucket_min = _NO_OFFSET
                    self._bucket_count = 0
                best = min(self._bucket_min, self._previous_min)
                now = current_ns + best
                adc = time_info.inputBufferAdcTime
                dac = time_info.outputBufferDacTime
                capture_ns = (
                    int(adc * _NS_PER_S) + best
                    if adc > 0.0
                    else now - self._period_ns - self._input_latency_ns
                )
                playout_ns = int(dac * _NS_PER_S) + best if dac > 0.0 else now + self._output_latency_ns
            else:
                # This host API does not time its callbacks: estimate from the reported buffering.
                capture_ns = now - self._period_ns - self._input_latency_ns
                playout_ns = now + self._output_latency_ns

            index = self._index
            self._index = index + 1
            self._invoke(callback, mic, outdata, index, capture_ns, playout_ns)
        finally:
            self._callback_ident = _NO_THREAD

    # -- opening, closing, supervising (control and supervisor threads) -----------------------------------

    def _open(self) -> None:
        """Open and start a stream on ``self._input``/``self._output`` and make it current.

        Raises whatever sounddevice raises (``PortAudioError``, ValueError); closes a half-opened stream.
        """
        sd = self._sd
        self._generation += 1
        generation = self._generation

        def finished() -> None:
            # PortAudio's thread, when the stream becomes inactive: only flag it for the supervisor.
            self._failed_generation = generation
            self._wake.set()

        stream = sd.Stream(
            samplerate=SAMPLE_RATE,
            blocksize=self.period,
            device=(self._input.index, self._output.index),
            channels=(self._input.channels, CHANNELS),
            dtype="float32",
            latency=self._latency_s,
            callback=self._on_audio,
            finished_callback=finished,
        )
        try:
            input_latency_s, output_latency_s = stream.latency
            self._input_latency_s = float(input_latency_s)
            self._output_latency_s = float(output_latency_s)
            self._input_latency_ns = int(self._input_latency_s * _NS_PER_S)
            self._output_latency_ns = int(self._output_latency_s * _NS_PER_S)
            self._mono = self._input.channels == 1
            # A new stream has a clock of its own origin: forget the old offset.
            self._bucket_count = 0
            self._bucket_min = _NO_OFFSET
            self._previous_min = _NO_OFFSET
            self._stream = stream
            stream.start()
        except BaseException:
            self._stream = None
            self._close(stream)
            raise

    def _close(self, stream: Any) -> None:
        """Abort and close ``stream`` (not from its own callback); never raises."""
        if stream is None:
            return
        try:
            # abort, not stop: stop waits for queued output to play, which a dead card may never do.
            stream.abort()
        except Exception as exc:
            log.debug("%s: abort: %s", self.name, exc)
        try:
            stream.close()
        except Exception as exc:
            log.debug("%s: close: %s", self.name, exc)

    def _failure(self, since_progress_s: float) -> str | None:
        """Why the current stream has failed, or None while it runs (supervisor thread)."""
        stream = self._stream
        if stream is None:
            return "the stream is closed"
        if self._failed_generation == self._generation:
            return "PortAudio finished the stream"
        try:
            active = bool(stream.active)
        except self._sd.PortAudioError as exc:
            return f"PortAudio error: {exc}"
        if not active:
            return "the stream became inactive"
        if self._stall_s is not None and since_progress_s > self._stall_s:
            return f"no audio callback for {since_progress_s:.1f} s"
        return None

    def _reopen(self) -> None:
        """One reopen attempt (supervisor thread): re-enumerate, resolve by name, open. Raises on failure."""
        _refresh(self._sd)
        self._input = _resolve(self._sd, self._input_query, "input")
        self._output = _resolve(self._sd, self._output_query, "output")
        self._open()

    def _supervise(self) -> None:
        """Supervisor thread: watch the stream, reopen it while lost, close it when stopping."""
        last_index = self._index
        last_progress = time.monotonic()
        lost_at = 0.0
        next_try = 0.0
        while True:
            self._wake.wait(self._poll_s)
            self._wake.clear()
            if self._stopping:
                break
            now = time.monotonic()
            if not self._lost:
                if self._index != last_index:
                    last_index = self._index
                    last_progress = now
                reason = self._failure(now - last_progress)
                if reason is None:
                    continue
                self._lost = True
                lost_at = now
                next_try = now + self._reopen_interval_s
                log.warning(
                    "%s: sound card lost (%s); trying to reopen it every %.0f s",
                    self.name,
                    reason,
                    self._reopen_interval_s,
                )
                stream, self._stream = self._stream, None
                self._close(stream)
            elif now >= next_try:
                try:
                    self._reopen()
                except Exception as exc:
                    # Anything here means "not back yet": the one warning was logged when it was lost.
                    log.debug("%s: reopen failed: %s", self.name, exc)
                    next_try = time.monotonic() + self._reopen_interval_s
                    continue
                if self._stopping:
                    break
                self._reopened += 1
                last_index = self._index
                last_progress = time.monotonic()
                self._lost = False
                log.info(
                    "%s: sound card back after %.1f s (reopened %d times; %s / %s)",
                    self.name,
                    last_progress - lost_at,
                    self._reopened,
                    self._input.name,
                    self._output.name,
                )
        stream, self._stream = self._stream, None
        self._close(stream)
