"""The synthetic sound card: a simulated room (:class:`app.audio.room.Room`) behind the :class:`AudioDevice`
interface, for the demo, the tests and the benchmarks.

Theory of operation. One daemon thread ("audio-synthetic") plays the hardware. Its sample clock runs
``1 + drift_ppm·1e-6`` times the nominal 48 kHz, so a period lasts P = period / fs' of system time
(fs' = 48 000·(1 + drift_ppm·1e-6)). With T0 the time the device started (or was last reopened), hardware
period j of that epoch ends at ``t_j = T0 + (j+1)·P``, and the callback for it is due then:

- ``capture_ns = T0 + j·P``: the ADC time of the microphone block's first sample (no input latency);
- ``playout_ns = t_j + latency_ms``: the DAC time of the speaker block the callback fills.

(The microphone periods are gathered into the interface's 10 ms blocks by :meth:`AudioDevice._invoke`, as
a card with a 10 ms capture buffer would deliver them: the block's time is its first period's.) Both are
computed from T0 and j (CLOCK_MONOTONIC ns, rounded once), never from when the thread actually
woke, so they are exact. Real-time pacing sleeps towards the absolute deadline t_j, so sleep errors never
accumulate; a thread more than :data:`MAX_LATE_PERIODS` periods late skips ahead to the current period (an
xrun: ``output_underflows`` and ``input_overflows`` each count one) instead of racing to catch up. With
``realtime=False`` nothing sleeps: callbacks run back to back on the virtual clock, with the times they
would have had in real time.

Echo timing. Speaker sample s (counted from the start) leaves the speaker at T0 + P + latency + s/fs' and
microphone sample m is captured at T0 + m/fs', so the direct echo at microphone sample m comes from speaker
sample ``m − round((P + latency + echo_delay)·fs')``: the room is given one period plus the output latency
as extra delay on top of its acoustic delay. Since that is at least one period, the microphone block for
callback k needs only speaker blocks already filled, and it is computed before sleeping towards t_k so that
the callback itself runs on time.

Ground truth. For measurement, the talker-and-markers part and the echo part of every microphone block are
kept for the last :data:`TRUTH_SECONDS` s in a preallocated ring (:meth:`SyntheticDevice.truth`), and the
ADC time of every marker's first sample in a bounded list (:meth:`SyntheticDevice.markers_emitted`); both
may be read from any thread.

Faults. :meth:`SyntheticDevice.unplug` makes the device lost, as a real card that disappears: no more
callbacks, the thread idles and retries about once a second (:attr:`SyntheticDevice.reopen_interval_s`);
after :meth:`SyntheticDevice.replug` the next retry reopens it: ``reopened`` counts it, ``index`` carries
on, and timing restarts from a new T0. The room's streams simply pause meanwhile (the simulated room does
not run while the card is away), so sample numbering and the echo path stay continuous.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from app.audio.device import (
    CHANNELS,
    DEFAULT_PERIOD,
    SAMPLE_RATE,
    AudioCallback,
    AudioDevice,
    _join,
    make_realtime,
)
from app.audio.room import Room, RoomBlock, RoomConfig, RoomTruth

log = logging.getLogger(__name__)

TRUTH_SECONDS = 10.0
"""How much ground truth (:meth:`SyntheticDevice.truth`) is kept, s."""
MAX_MARKERS = 100_000
"""How many marker times :meth:`SyntheticDevice.markers_emitted` keeps (the latest)."""
MAX_LATE_PERIODS = 4
"""A real-time thread later than this many periods skips ahead (counted as an xrun) instead of catching up."""
MAX_DRIFT_PPM = 10_000.0
"""Largest clock drift accepted, ppm either way (real sound cards are within about ±100)."""


class SyntheticDevice(AudioDevice):
    """A sound card in a simulated room (see the module docstring for the timing model).

    ``config``: the room. ``period``: samples per callback. ``drift_ppm``: how much faster than 48 kHz the
    card's clock runs against CLOCK_MONOTONIC, ppm. ``realtime``: pace the callbacks in real time, or run
    them back to back on a virtual clock. ``latency_ms``: simulated output buffering (``output_latency_ms``;
    the input latency is 0).

    ``start``/``stop``/``unplug``/``replug`` are for a control thread; ``truth``, ``markers_emitted`` and
    ``stats`` may be called from any thread; the room is computed and the callback called on the device's
    own thread.
    """

    reopen_interval_s: float = 1.0
    """How often a lost device tries to reopen, s (tests shorten it on the instance)."""

    def __init__(
        self,
        config: RoomConfig,
        *,
        period: int = DEFAULT_PERIOD,
        drift_ppm: float = 0.0,
        realtime: bool = True,
        latency_ms: float = 10.0,
    ) -> None:
        super().__init__("synthetic", period)
        if not abs(drift_ppm) <= MAX_DRIFT_PPM:
            raise ValueError(f"synthetic device drift must be within ±{MAX_DRIFT_PPM:g} ppm, not {drift_ppm}")
        if not 0.0 <= latency_ms <= 1000.0:
            raise ValueError(f"synthetic device latency must be within 0..1000 ms, not {latency_ms}")
        self.config = config
        self.drift_ppm = drift_ppm
        self.realtime = realtime
        self.latency_ms = latency_ms
        self.rate = SAMPLE_RATE * (1.0 + drift_ppm * 1e-6)
        """The card's true sample rate against CLOCK_MONOTONIC, Hz."""
        self._ns_per_sample = 1e9 / self.rate
        self._period_ns = round(period * self._ns_per_sample)
        self._latency_ns = round(latency_ms * 1e6)
        # Speaker to microphone in samples: one period (fill → play), the output latency and the acoustic
        # delay, rounded as one sum so the direct echo lands on the sample the timing model predicts.
        total = round((period / self.rate + latency_ms / 1000.0 + config.echo_delay_ms / 1000.0) * self.rate)
        self.echo_delay_samples = total
        """Speaker stream sample to microphone stream sample of the direct echo, samples."""
        acoustic = round(config.echo_delay_ms * SAMPLE_RATE / 1000.0)
        self._room = Room(config, period, extra_delay=total - acoustic)

        self._mic = np.zeros((period, CHANNELS), dtype=np.float32)
        self._speaker = np.zeros((period, CHANNELS), dtype=np.float32)
        # Ground-truth ring: block b lives in slot b % blocks; _truth_block[slot] says which block (or −1
        # while it is being written), so readers can check that what they copied was not overwritten.
        self._truth_blocks = max(2, round(TRUTH_SECONDS * SAMPLE_RATE / period))
        self._truth_near = np.zeros((self._truth_blocks, period, CHANNELS), dtype=np.float32)
        self._truth_echo = np.zeros((self._truth_blocks, period, CHANNELS), dtype=np.float32)
        self._truth_block = np.full(self._truth_blocks, -1, dtype=np.int64)
        # Marker times: a ring written by the device thread; _marker_count only grows.
        self._marker_ns = np.zeros(MAX_MARKERS, dtype=np.int64)
        self._marker_count = 0

        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        # Held by the device thread around "still plugged? → callback", so that after unplug() returns no
        # callback runs. Re-entrant: a callback may unplug its own device.
        self._plug_lock = threading.RLock()
        self._plugged = True
        self._epoch_ns = 0  # T0 of the current epoch
        self._slot = 0  # hardware periods since T0 whose callback has come (or been skipped)
        self._started = False
        self._late_callbacks = 0
        self._max_late_ns = 0

    # -- control thread ----------------------------------------------------------------------------------

    def start(self, callback: AudioCallback) -> None:
        """Start the device thread; the first callback comes one period from now (control thread)."""
        if self._thread is not None:
            if not self._stopping.is_set():
                raise RuntimeError(f"{self.name}: already running")
            self._join_thread()  # stopped from its own callback and not joined since
            if self._thread is not None:
                raise RuntimeError(f"{self.name}: the previous device thread has not ended")
        if self._started:
            # A second run starts the streams again from sample 0.
            self._room.reset()
            self._truth_block.fill(-1)
        self._started = True
        self._stopping.clear()
        self._epoch_ns = time.monotonic_ns()
        self._slot = 0
        self._thread = threading.Thread(
            target=self._run, args=(callback,), name="audio-synthetic", daemon=True
        )
        self._thread.start()
        log.info(
            "%s started: %d-sample period, %+g ppm, %g ms output latency, %s",
            self.name,
            self.period,
            self.drift_ppm,
            self.latency_ms,
            "real time" if self.realtime else "virtual clock",
        )

    def stop(self) -> None:
        """Stop the callbacks and join the thread. Idempotent; never raises.

        From the control thread it returns once the device thread has ended. From a callback it only asks:
        no callback follows the current one, and a later ``stop`` (or ``start``) from another thread joins.
        """
        if self._thread is None:
            return
        if not self._stopping.is_set():
            self._stopping.set()
            log.info("%s stopping after %d callbacks", self.name, self._callbacks)
        self._join_thread()

    def _join_thread(self) -> None:
        """Join the stopping device thread unless called on it (control thread)."""
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        try:
            _join(thread)
        except Exception:
            log.exception("%s: joining the device thread failed", self.name)
        if thread.is_alive():
            log.warning("%s: the device thread did not end within 5 s", self.name)
        else:
            self._thread = None

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`, lost or not (any thread)."""
        return self._thread is not None and not self._stopping.is_set()

    @property
    def input_latency_ms(self) -> float:
        """0: the microphone block's time is its first sample's ADC time."""
        return 0.0

    @property
    def output_latency_ms(self) -> float:
        """The simulated output buffering, ms."""
        return self.latency_ms

    def stats(self) -> dict[str, Any]:
        """The base counters, and (real time only) ``late_callbacks``: callbacks that ran more than a period
        after their deadline (then followed by the next ones back to back), ``max_late_ms``: the latest."""
        return {
            **super().stats(),
            "late_callbacks": self._late_callbacks,
            "max_late_ms": self._max_late_ns / 1e6,
        }

    def unplug(self) -> None:
        """Fault injection: the card disappears. Once this returns no callback runs until :meth:`replug`."""
        with self._plug_lock:
            self._plugged = False
            if not self._lost:
                self._lost = True
                log.warning("%s: device lost; retrying about every %g s", self.name, self.reopen_interval_s)

    def replug(self) -> None:
        """Fault injection: the card is back; the device reopens at its next retry (≤ reopen_interval_s)."""
        self._plugged = True

    # -- any thread --------------------------------------------------------------------------------------

    def truth(self, first_sample: int, n: int) -> RoomTruth | None:
        """The parts of microphone samples ``first_sample`` .. ``first_sample + n − 1`` (any thread).

        Samples are counted in the microphone stream from start (``index × period + offset``). Returns new
        arrays, or None when some of the range has not been made yet or has left the ring (about the last
        :data:`TRUTH_SECONDS` s are kept).
        """
        if n <= 0 or first_sample < 0:
            raise ValueError(f"truth: need first_sample ≥ 0 and n ≥ 1, not {first_sample}, {n}")
        p = self.period
        first_block = first_sample // p
        last_block = (first_sample + n - 1) // p
        count = last_block - first_block + 1
        if count > self._truth_blocks:
            return None
        blocks = np.arange(first_block, last_block + 1, dtype=np.int64)
        slots = blocks % self._truth_blocks
        if not np.array_equal(self._truth_block[slots], blocks):
            return None
        near = self._truth_near[slots].reshape(count * p, CHANNELS)
        echo = self._truth_echo[slots].reshape(count * p, CHANNELS)
        # Seqlock check: if the device thread overwrote a slot while we copied, the copy is torn.
        if not np.array_equal(self._truth_block[slots], blocks):
            return None
        lo = first_sample - first_block * p
        return RoomTruth(
            near=np.ascontiguousarray(near[lo : lo + n]),
            echo=np.ascontiguousarray(echo[lo : lo + n]),
            talker_active=self._room.talking(first_sample, n),
        )

    def markers_emitted(self) -> list[int]:
        """CLOCK_MONOTONIC ns (ADC time) of the first sample of every marker mixed in so far, oldest first;
        the latest :data:`MAX_MARKERS` (any thread)."""
        count = self._marker_count
        kept = min(count, MAX_MARKERS)
        slots = np.arange(count - kept, count) % MAX_MARKERS
        times = self._marker_ns[slots]
        # Entries the device thread overwrote while we copied (positions below the new count − MAX_MARKERS)
        # are dropped: they are the oldest ones.
        overwritten = min(kept, max(0, self._marker_count - MAX_MARKERS - (count - kept)))
        return [int(t) for t in times[overwritten:]]

    # -- device thread -----------------------------------------------------------------------------------

    def _offset_ns(self, samples: int) -> int:
        """System time of ``samples`` device samples, ns, rounded once."""
        return round(samples * self._ns_per_sample)

    def _run(self, callback: AudioCallback) -> None:
        """The device thread: make a microphone block, wait for its deadline, call back, play the speaker."""
        if self.realtime:
            # A sound card's interrupt is serviced at once; so must this thread be, to stand in for one.
            make_realtime("synthetic sound card")
        period = self.period
        room = self._room
        index = 0
        pending: RoomBlock | None = None  # the microphone block made for callback ``index``, not yet given
        while not self._stopping.is_set():
            if self._lost:
                if self._stopping.wait(self.reopen_interval_s):
                    break
                if self._plugged:
                    self._reopen()
                continue
            if pending is None:
                pending = self._capture(index)
            due = self._epoch_ns + self._offset_ns((self._slot + 1) * period)
            if self.realtime:
                now = time.monotonic_ns()
                late = (now - due) // self._period_ns
                if late > MAX_LATE_PERIODS:
                    # Too late to catch up: skip the periods missed, as a card's xrun would.
                    self._max_late_ns = max(self._max_late_ns, now - due)
                    self._late_callbacks += 1
                    self._slot += late
                    self._output_underflows += 1
                    self._input_overflows += 1
                    due = self._epoch_ns + self._offset_ns((self._slot + 1) * period)
                else:
                    # Wait for the absolute deadline (checked again after waking: never call back early).
                    while now < due:
                        if self._stopping.wait((due - now) / 1e9):
                            return
                        now = time.monotonic_ns()
                    # How late the thread got there: a card's interrupt is not late, so this is what the
                    # machine (CPU, interpreter lock) did to the callbacks.
                    late_ns = now - due
                    self._max_late_ns = max(self._max_late_ns, late_ns)
                    if late_ns > self._period_ns:
                        self._late_callbacks += 1
            with self._plug_lock:
                if self._lost:
                    continue  # the block stays pending and is delivered after the reopen
                capture_ns = self._epoch_ns + self._offset_ns(self._slot * period)
                for offset in pending.marker_offsets:
                    self._marker_ns[self._marker_count % MAX_MARKERS] = capture_ns + self._offset_ns(offset)
                    self._marker_count += 1
                self._invoke(callback, self._mic, self._speaker, index, capture_ns, due + self._latency_ns)
            room.play(self._speaker)
            pending = None
            index += 1
            self._slot += 1

    def _capture(self, index: int) -> RoomBlock:
        """Make microphone block ``index`` into the mic buffer, keeping its ground truth (device thread)."""
        slot = index % self._truth_blocks
        self._truth_block[slot] = -1
        block = self._room.capture(self._mic, self._truth_near[slot], self._truth_echo[slot])
        self._truth_block[slot] = index
        return block

    def _reopen(self) -> None:
        """The lost card is back: a new epoch starts now (device thread)."""
        now = time.monotonic_ns()
        if not self.realtime:
            # The virtual clock runs ahead of the system's: never let it step back.
            now = max(now, self._epoch_ns + self._offset_ns((self._slot + 1) * self.period))
        with self._plug_lock:
            if not self._plugged:
                return  # unplugged again since the retry looked
            self._epoch_ns = now
            self._slot = 0
            self._reopened += 1
            self._lost = False
        log.info("%s: device back (reopened %d times)", self.name, self._reopened)
