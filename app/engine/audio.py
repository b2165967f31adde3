"""The audio half of a doorway: sound card → echo cancellation → Opus → UDP → jitter buffer → sound card.

Threads, and what each may do:

- The **device thread** (PortAudio's callback, or the synthetic room's clock) calls
  :meth:`AudioEngine.callback` once per speaker period (2.5, 5 or 10 ms). It fills the speaker block from
  the playout FIFO — where that runs short, from the *reserve*, a period of concealment the playout
  thread keeps ready (so a playout thread late for its guard deadline costs a stretch, not silence) —
  keeps the speaker blocks of the current 10 ms (the echo canceller's reference), puts each 10 ms
  microphone block with them into a preallocated ring, and notes its time and the FIFO level in
  preallocated arrays. It never waits for a lock (the reserve's it only tries: held, it is skipped),
  allocates no arrays and signals the other threads through eventfds (a write that cannot block).
- The **audio-send thread** takes (microphone, speaker) frames in order, runs WebRTC's AEC3 on them,
  encodes the result and sends one :class:`~app.net.protocol.AudioPacket` per 10 ms, repeating the previous
  frames while the twin reports loss. Audio is not paced: it goes out ahead of video, and congestion control
  subtracts its rate from what video may use.
- The **network thread** puts each arriving frame (primary and redundant copies) into the jitter buffer,
  under this module's lock, and wakes the playout thread.
- The **audio-playout thread** decodes each frame the moment it can be played in order, resamples it at the
  ratio :class:`~app.audio.playout.PlayoutController` asks (the two sound cards' clock drift, and the level
  against the adaptive target) and appends it to the FIFO. When a callback is due within the guard time
  and the FIFO cannot cover it, it conceals: one period at a time while the next frame may still come
  (a late frame then plays, a period later), a whole frame when a later frame shows it is lost. After
  everything it pushes it makes the reserve afresh: the concealment that would come next, from a copy of
  the decoder and resampler; when a callback has played some of it, the playout thread continues from
  those copies, with the rest of the reserve first in the FIFO, and counts a stretch.

Why push rather than pull: a frame decoded on arrival waits only for the sound card, not also for a
playout tick; what it waits on average is half a speaker period, which is why that period is short (2.5 ms
by default). The microphone comes in 10 ms blocks, the frame: a shorter capture period would not get a
frame out sooner.

Lip sync: audio and video frames carry the same sender clock's capture time, so at the receiver
``play time − capture`` of each differs from the true latency by the same unknown clock offset, and their
difference is the true audio–video offset. It is steered to audio 10 ms after video (within the ±20 ms
target, and the direction people notice least): by holding pictures back when audio is later (echo
cancellation alone costs audio 9 ms), or audio back when video is later.
"""

from __future__ import annotations

import logging
import os
import random
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from app.audio.codec import AudioCodec, CodecError, open_codec
from app.audio.device import CHANNELS, FRAME, FRAME_NS, SAMPLE_RATE, AudioDevice, make_realtime
from app.audio.jitter import AudioJitterBuffer, seq16_diff
from app.audio.playout import PlayoutController, RateEstimator, drift_ppm
from app.audio.processing import AudioProcessing, processing_latency_samples
from app.audio.resample import VariableResampler
from app.audio.ring import FrameRing, SampleRing
from app.engine.metrics import Histogram
from app.net.protocol import AudioCodecId, AudioPacket
from app.settings import AudioSettings

log = logging.getLogger(__name__)

Block = npt.NDArray[np.float32]

FRAME_MS = FRAME * 1000 / SAMPLE_RATE
"""Duration of one frame, ms (10)."""
_CAPTURE_SLOTS = 16
_FIFO_SAMPLES = SAMPLE_RATE  # 1 s: far above any target
_CB_SLOTS = 64  # callback records kept for the playout thread (0.16 s at 2.5 ms periods)
_PHASE_CALLBACKS = 32
"""Recent callbacks the schedule is estimated from (80 ms at 2.5 ms periods); fewer than :data:`_CB_SLOTS`, so
that the device thread never overwrites one being read."""
GUARD_MS = 1.0
"""How long before a callback the playout thread conceals when the FIFO cannot cover it, ms."""
CATCH_UP_MS = 15.0
"""Frames that would wait this much over the target are skipped while newer ones are queued (after a
stall)."""
LIP_SYNC_TARGET_MS = 10.0
"""Audio–video offset lip sync steers to, ms (audio after video)."""
MAX_VIDEO_HOLD_MS = 40.0
"""Most lip sync holds pictures back, ms: beyond it (audio buffering for a bad network) video latency
matters more than sync, and audio up to ~100 ms after video is hard to notice."""
IDLE_AFTER_MS = 200.0
"""Concealing this long with nothing arriving means the twin stopped sending: play silence, stop counting."""
STALE_DEVICE_MS = 200.0
"""No callback for this long: the sound card is lost or stopped; playout waits."""
# Per packet on the wire besides the frames: our header, UDP and IP (bits), for the rate congestion control
# must leave to audio.
_OVERHEAD_BITS = (28 + 8 + 20) * 8


class LossView(Protocol):
    @property
    def loss(self) -> float:
        """Fraction of our packets the twin reports lost (0..1)."""
        ...


class AudioUplink(Protocol):
    """What the audio engine sends through: the engine's :class:`~app.engine.transport.Transport`, or in
    the audio process the socket to the engine (app/engine/audio_process.py)."""

    @property
    def loss(self) -> LossView: ...

    def next_seq(self) -> int: ...

    def send(self, pkt: AudioPacket, *, media: bool = False) -> int: ...


def redundancy_for(most: int, loss: float) -> int:
    """Earlier frames each packet repeats at ``loss`` (the fraction the twin reports lost), at most ``most``:
    none while the twin sees no loss, more as it sees more."""
    if most == 0 or loss < 0.0005:
        return 0
    return min(most, 1 if loss < 0.03 else 2 if loss < 0.15 else 3)


def audio_rate_bps(settings: AudioSettings, redundancy: int) -> int:
    """What audio sends with ``redundancy`` copies, bit/s: frames (with their copies) and per-packet
    overhead."""
    per_frame = settings.bitrate_kbps * 1000 if settings.codec == "opus" else 1_536_000
    return int(per_frame * (1 + redundancy) + _OVERHEAD_BITS * 1000 / FRAME_MS)


def _gain(db: float) -> np.float32 | None:
    """A gain in dB as the float32 factor the device thread scales blocks by; None for 0 dB (no work)."""
    return None if db == 0.0 else np.float32(10.0 ** (db / 20.0))


class AudioTap:
    """Hooks for measurement (the benchmark), each called on the thread named; all must be quick."""

    def on_processed(
        self, first_sample: int, capture_ns: int, mic: Block, speaker: Block, out: Block
    ) -> None:
        """Audio-send thread: one frame's microphone, speaker reference and processed output.
        ``first_sample`` numbers the microphone samples since the device started."""

    def on_played(self, block: Block, playout_ns: int) -> None:
        """Device thread: ``block`` starts playing at ``playout_ns``. Must not allocate or block."""

    def poll(self) -> None:
        """Audio-playout thread, after each wake: process what :meth:`on_played` stored."""

    def on_second(self, now_ns: int, counters: dict[str, int]) -> None:
        """Audio-playout thread, about once a second: the engine's audio counters at ``now_ns``, the playout
        controller's, and its target and smoothed wait (``target_us``, ``wait_us``, µs)."""


class _Wake:
    """An eventfd: ``set`` from any thread never blocks; ``wait`` sleeps until set or a timeout."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def set(self) -> None:
        # try/except, not contextlib.suppress: this runs in the sound card's callback, where even a small
        # context-manager object per call is an allocation.
        try:  # noqa: SIM105
            os.eventfd_write(self.fd, 1)
        except OSError:
            pass  # a saturated counter (impossible in practice) or a descriptor closed at shutdown

    def wait(self, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s``; True (and the event consumed) if it was set."""
        if timeout_s > 0:
            ready, _, _ = select.select([self.fd], [], [], timeout_s)
            if not ready:
                return False
        try:
            os.eventfd_read(self.fd)
            return True
        except (BlockingIOError, OSError):
            return False

    def close(self) -> None:
        os.close(self.fd)


class AudioEngine:
    """Everything audio for one engine; owns the device and the two audio threads."""

    def __init__(
        self,
        settings: AudioSettings,
        device: AudioDevice,
        transport: AudioUplink,
        *,
        sending: bool,
        receiving: bool,
        on_error: Callable[[str, BaseException], None],
        video_age_ms: Callable[[], float | None] | None = None,
        hold_video: Callable[[float], None] | None = None,
        tap: AudioTap | None = None,
    ) -> None:
        self.settings = settings
        self.device = device
        self.transport = transport
        self.sending = sending
        self.receiving = receiving
        self._on_error = on_error
        self._video_age_ms = video_age_ms
        self._hold_video = hold_video
        self.video_hold_ms = 0.0
        # What the twin's processing and codec delay sound inside a frame (capture time is the frame's).
        self._content_delay_samples = processing_latency_samples(
            echo_cancellation=settings.echo_cancellation, noise_suppression=settings.noise_suppression
        ) + (120 if settings.codec == "opus" else 0)
        self.tap = tap
        self.period = device.period
        self._period_ns = self.period * 1_000_000_000 // SAMPLE_RATE
        self.period_ms = self.period * 1000 / SAMPLE_RATE
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.counters: dict[str, int] = {
            "callbacks": 0,
            "capture_overruns": 0,
            "underruns": 0,
            "underrun_samples": 0,
            "frames_sent": 0,
            "packets_received": 0,
            "bad_packets": 0,
            "frames_decoded": 0,
            "frames_fec": 0,
            "frames_lost": 0,
            "frames_late": 0,
            "decode_errors": 0,
            "stretches": 0,
            "frames_skipped": 0,
            "samples_decoded": 0,
            "samples_concealed": 0,
            "gaps_over_20ms": 0,
            "starts": 0,
            "idles": 0,
            "reserve_used": 0,
        }
        # -- device thread state (preallocated) --
        self._capture = FrameRing(_CAPTURE_SLOTS, 2, FRAME)  # microphone, speaker
        # The speaker blocks filled during the microphone block being captured, at the same positions
        # (callback index modulo the block): the echo canceller's reference for it.
        self._reference = np.zeros((FRAME, CHANNELS), np.float32)
        self._fifo = SampleRing(_FIFO_SAMPLES)
        self._cb_ns = np.zeros(_CB_SLOTS, np.int64)  # monotonic time of each callback
        self._cb_level = np.zeros(_CB_SLOTS, np.int64)  # FIFO samples before it read
        self._cb_read = np.zeros(_CB_SLOTS, np.int64)  # stream position before it read (FIFO + reserves)
        self._cb_playout = np.zeros(_CB_SLOTS, np.int64)  # DAC time of its first sample
        self._callbacks = 0
        self._phase = 0  # the callback schedule's phase (playout thread, _next_callback_ns) ...
        self._phase_at = 0  # ... as of this many callbacks
        self._playing = False  # written by the playout thread only
        self.muted = False
        """Send silence instead of the microphone (privacy; any thread sets it)."""
        self._silence_frame = np.zeros((FRAME, CHANNELS), np.float32)
        # Calibration's digital gains (AudioSettings.playback_gain_db, capture_gain_db), as float32 factors so
        # that scaling a block in place allocates nothing; None = 0 dB, skipped.
        self._playback_gain = _gain(settings.playback_gain_db)
        self._capture_gain = _gain(settings.capture_gain_db)
        self._capture_wake = _Wake()
        self._playout_wake = _Wake()
        self.held = False
        """The sound card is let go (:meth:`hold`)."""
        self._pending_stream_delay: int | None = None
        self._hold_lock = threading.Lock()
        self._hold_timer: threading.Timer | None = None
        # -- send side --
        self.send_codec: AudioCodec | None = None
        self.processing: AudioProcessing | None = None
        self.process_ms = Histogram()
        """Echo cancellation and encoding of one frame, ms."""
        self.send_ms = Histogram()
        """From a frame's last sample at the microphone (its capture time + 10 ms) to its packet sent, ms."""
        if sending:
            self.send_codec = open_codec(settings.codec, bitrate_bps=settings.bitrate_kbps * 1000)
            self.processing = AudioProcessing(
                echo_cancellation=settings.echo_cancellation,
                noise_suppression=settings.noise_suppression,
                gain_control=settings.gain_control,
                stream_delay_ms=self._stream_delay_ms(settings),
            )
        self._codec_id = AudioCodecId.OPUS if settings.codec == "opus" else AudioCodecId.PCM16
        self._history: deque[bytes] = deque(maxlen=3)
        # A random first frame number: a restarted twin's stream then resyncs the jitter buffer at once.
        self._audio_seq = random.getrandbits(16)
        # -- receive side (playout thread, and the jitter buffer under the lock) --
        self.jitter = AudioJitterBuffer()
        self.resampler = VariableResampler(channels=CHANNELS)
        self.playout = PlayoutController(
            period_ms=self.period_ms,
            frame_ms=FRAME_MS,
            guard_ms=GUARD_MS,
            min_ms=settings.jitter_min_ms,
            max_ms=settings.jitter_max_ms,
        )
        self.recv_codec: AudioCodec | None = open_codec(settings.codec) if receiving else None
        # The reserve: one period of concealment continuing the FIFO, made ahead by the playout thread,
        # which the callback plays when the FIFO runs short (the playout thread late for its guard deadline,
        # or a frame later than the guard): a stretch instead of silence. Guarded by _reserve_lock, which the
        # device thread only ever tries (never waits for); the playout thread holds it for a few assignments.
        self._reserve = np.zeros((2 * self.period, CHANNELS), np.float32)
        self._reserve_len = 0  # samples armed for the callback; 0 = none
        self._reserve_taken = 0  # of which the callback played (device thread)
        self._reserve_played = 0  # samples callbacks played from reserves, all told: stream positions
        self._reserve_lock = threading.Lock()
        self._resampler_ahead = VariableResampler(channels=CHANNELS)
        self._peer_codec: int | None = None
        self._stretched = 0  # samples concealed for the frame at ``next`` while waiting for it
        self._conceal_run = 0  # samples concealed since the last decoded frame
        self._idle_since_ns = 0
        self.buffer_ms = Histogram()
        """Smoothed wait of decoded audio before it plays (the playout buffer), ms, once per frame."""
        self.buffer_error_ms = Histogram()
        """|wait − target| once per frame while playing (from 2 s after the start), ms."""
        self.arrival_ms = Histogram()
        """From a frame's last sample at the twin's microphone to its arrival here, ms (one host only)."""
        self.frame_wait_ms = Histogram()
        """Each decoded frame's wait until its first sample plays, ms."""
        self.wake_late_ms = Histogram()
        """How late the playout thread woke for a deadline it slept towards, ms: what the machine costs the
        concealment guard (GUARD_MS)."""
        self.latency_ms = Histogram()
        """Sender's capture → our DAC time of each decoded frame, ms (meaningful on one host only)."""
        self._play_started_ns = 0
        self._far_rate = RateEstimator(min_span_s=20.0)
        """The twin's frames (×480 samples) against their capture times: its sound card's rate."""
        self._near_rate = RateEstimator(min_span_s=20.0)
        """Our callbacks (× period) against their wall times: our sound card's rate."""
        self._far_frames = 0
        self._far_seq: int | None = None
        self._last_drift_ppm: float | None = None
        self._rate_seen_callbacks = 0
        self.av_offset_ms: float | None = None
        self._audio_age_ms: float | None = None
        self._last_sync_ns = 0

    # -- life cycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the audio threads, then the sound card (which raises AudioDeviceError if it cannot open)."""
        if self.sending:
            self._threads.append(threading.Thread(target=self._guarded(self._send_loop), name="audio-send"))
        if self.receiving:
            self._threads.append(
                threading.Thread(target=self._guarded(self._playout_loop), name="audio-playout")
            )
        # Python hands the interpreter lock to a waiting thread only every switch interval (5 ms by
        # default): an audio thread woken on time would then still wait behind a video thread's Python
        # code. 0.5 ms bounds that wait at a cost of a few more lock hand-overs a second.
        sys.setswitchinterval(0.0005)
        for t in self._threads:
            t.daemon = True
            t.start()
        self.device.start(self.callback)
        log.info(
            "audio: %s, %.1f ms periods, %s %d kb/s, processing adds %.0f ms",
            self.device.name,
            self.period_ms,
            self.settings.codec,
            self.settings.bitrate_kbps,
            self.processing.latency_ms if self.processing is not None else 0.0,
        )

    def stop(self) -> None:
        self._stop.set()
        with self._hold_lock:
            if self._hold_timer is not None:
                self._hold_timer.cancel()
        self.device.stop()
        self._capture_wake.set()
        self._playout_wake.set()
        for t in self._threads:
            t.join(5.0)
            if t.is_alive():
                log.error("%s: did not stop within 5 s", t.name)
        for codec in (self.send_codec, self.recv_codec):
            if codec is not None:
                codec.close()
        self._capture_wake.close()
        self._playout_wake.close()

    def apply_calibration(self, settings: AudioSettings) -> None:
        """Use a new calibration's acoustic delay and gains from now on (any thread): a float32 factor is
        swapped in whole, so the device thread sees the old gain or the new one, never a mix."""
        self._playback_gain = _gain(settings.playback_gain_db)
        self._capture_gain = _gain(settings.capture_gain_db)
        if self.processing is not None:
            self._pending_stream_delay = self._stream_delay_ms(settings)  # the processing thread sets it
        log.info(
            "audio: calibration applied live: acoustic delay %.1f ms, playback %+.1f dB, capture %+.1f dB",
            settings.acoustic_delay_ms,
            settings.playback_gain_db,
            settings.capture_gain_db,
        )

    def _stream_delay_ms(self, settings: AudioSettings) -> int:
        """AEC3's starting delay: the acoustic delay plus what the sound card adds on both sides, ms."""
        device = self.device
        return round(
            settings.acoustic_delay_ms + self.period_ms + device.output_latency_ms + device.input_latency_ms
        )

    def hold(self, on: bool, seconds: float = 60.0) -> bool:
        """Let go of the sound card (``on``) for at most ``seconds``, or take it back (control thread).

        For ``doorway calibrate audio``, which needs the card to itself: the device stops, the audio
        threads stay and wait (playout notices the silent device, capture starts a fresh frame after the
        gap), video goes on. It is taken back after ``seconds`` whatever happens to the calibration, so a
        crashed child cannot leave the doorway mute. Returns whether the card is now let go. Raises
        AudioDeviceError when the card cannot be opened again (the engine goes on without it; try again).
        """
        with self._hold_lock:
            if self._hold_timer is not None:
                self._hold_timer.cancel()
                self._hold_timer = None
            if on:
                if not self.held:
                    self.device.stop()
                    self.held = True
                    log.info("audio: %s let go for up to %.0f s (calibration)", self.device.name, seconds)
                self._hold_timer = threading.Timer(seconds, self._hold_expired)
                self._hold_timer.daemon = True
                self._hold_timer.start()
            elif self.held and not self._stop.is_set():
                self.device.start(self.callback)
                self.held = False
                log.info("audio: %s taken back", self.device.name)
            return self.held

    def _hold_expired(self) -> None:
        try:
            self.hold(False)
        except Exception as exc:  # the timer's thread: nobody else would see it
            log.warning("audio: could not take %s back after the hold: %s", self.device.name, exc)

    def _guarded(self, loop: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                loop()
            except BaseException as exc:
                log.exception("%s: audio thread failed", threading.current_thread().name)
                self._on_error(threading.current_thread().name, exc)

        return run

    # -- device thread -----------------------------------------------------------------------------------

    def callback(self, mic: Block, speaker: Block, index: int, capture_ns: int, playout_ns: int) -> None:
        """One period of the sound card (device thread): no locks, no array allocation."""
        fifo = self._fifo
        slot = self._callbacks % _CB_SLOTS
        level = fifo.written - fifo.read
        self._cb_read[slot] = fifo.read + self._reserve_played
        self._cb_level[slot] = level
        self._cb_playout[slot] = playout_ns
        self._cb_ns[slot] = time.monotonic_ns()
        lock = self._reserve_lock
        if lock.acquire(blocking=False):
            # Under the lock, the reserve is either disarmed or continues exactly where the FIFO ends.
            try:
                got = fifo.read_into(speaker)
                if got < len(speaker) and self._playing:
                    got += self._take_reserve(speaker, got)
            finally:
                lock.release()
        else:
            got = fifo.read_into(speaker)
        if got < len(speaker) and self._playing:
            self.counters["underruns"] += 1
            self.counters["underrun_samples"] += len(speaker) - got
        self._callbacks += 1
        if self.sending:
            part = index % (FRAME // self.period)
            np.copyto(self._reference[part * self.period : (part + 1) * self.period], speaker)
            if len(mic):
                self._gather(mic, index, capture_ns)
        if self._playback_gain is not None:
            # After the echo canceller's reference was taken: AEC3 gets the far end at its nominal level and
            # the gain becomes part of the echo path (linear unless the speaker clips). A quieter reference
            # costs AEC3 echo reduction: 26.6 against 32.9 dB with −10 dB here (app/calibration/audio.py).
            speaker *= self._playback_gain
            np.clip(speaker, -1.0, 1.0, out=speaker)
        if self.tap is not None:
            self.tap.on_played(speaker, playout_ns)

    def _take_reserve(self, speaker: Block, got: int) -> int:
        """Fill the speaker block after ``got`` samples from the reserve (device thread, holding the
        reserve lock); returns how many it took."""
        start = self._reserve_taken
        n = min(self._reserve_len - start, len(speaker) - got)
        if n <= 0:
            return 0
        np.copyto(speaker[got : got + n], self._reserve[start : start + n])
        self._reserve_taken = start + n
        self._reserve_played += n
        self.counters["reserve_used"] += 1
        self._playout_wake.set()  # to continue from after it, and make the next one
        return n

    def _gather(self, mic: Block, index: int, capture_ns: int) -> None:
        """Queue a 10 ms microphone block with its reference for the send thread (or count an overrun)."""
        ring = self._capture
        if ring.written - ring.read >= ring.slots:
            self.counters["capture_overruns"] += 1
            return
        slot = ring.written % ring.slots
        stamp = ring.stamps[slot]
        stamp[0] = (index + 1) * self.period - len(mic)  # the block's first sample in the microphone stream
        stamp[1] = capture_ns
        kept = ring.blocks[0, slot]
        np.copyto(kept, mic)
        if self._capture_gain is not None:
            kept *= self._capture_gain  # in the ring: ``mic`` itself is the device's, read-only
            np.clip(kept, -1.0, 1.0, out=kept)
        np.copyto(ring.blocks[1, slot], self._reference)
        ring.written += 1
        self._capture_wake.set()

    # -- send thread -------------------------------------------------------------------------------------

    def _send_loop(self) -> None:
        make_realtime("audio-send")
        ring = self._capture
        processing, codec = self.processing, self.send_codec
        assert processing is not None and codec is not None
        while not self._stop.is_set():
            self._capture_wake.wait(0.1)
            while ring.written - ring.read > 0 and not self._stop.is_set():
                slot = ring.read % ring.slots
                mic, speaker = ring.blocks[0, slot], ring.blocks[1, slot]
                first_sample, capture_ns = int(ring.stamps[slot, 0]), int(ring.stamps[slot, 1])
                t0 = time.perf_counter_ns()
                delay, self._pending_stream_delay = self._pending_stream_delay, None
                if delay is not None:
                    processing.stream_delay_ms = delay  # here, between two frames: APM is not thread-safe
                out = processing.process(mic, speaker)
                if self.tap is not None:
                    self.tap.on_processed(first_sample, capture_ns, mic, speaker, out)
                ring.read += 1
                # Muted (privacy): the echo canceller still runs, so it stays adapted; silence goes out.
                data = codec.encode(self._silence_frame if self.muted else out)
                self.process_ms.record((time.perf_counter_ns() - t0) / 1e6)
                self._send(data, capture_ns)
                self.send_ms.record((time.monotonic_ns() - capture_ns - FRAME_NS) / 1e6)

    def redundancy(self) -> int:
        """Earlier frames each packet repeats now (:func:`redundancy_for` the loss the twin reports)."""
        return redundancy_for(self.settings.redundancy, self.transport.loss.loss)

    def _send(self, data: bytes, capture_ns: int) -> None:
        r = min(self.redundancy(), len(self._history))
        history = list(self._history)
        frames = (data, *reversed(history[len(history) - r :])) if r else (data,)
        pkt = AudioPacket(
            seq=self.transport.next_seq(),
            audio_seq=self._audio_seq,
            codec=self._codec_id,
            capture_us=capture_ns // 1000,
            frame_samples=FRAME,
            frames=frames,
        )
        self.transport.send(pkt, media=True)
        self._history.append(data)
        self._audio_seq = (self._audio_seq + 1) & 0xFFFF
        self.counters["frames_sent"] += 1

    def rate_bps(self) -> int:
        """What audio sends, bit/s: frames (with their copies) and per-packet overhead."""
        return audio_rate_bps(self.settings, self.redundancy())

    # -- network thread ----------------------------------------------------------------------------------

    def on_packet(self, pkt: AudioPacket, now_ns: int) -> None:
        """An audio packet from the twin (network thread): into the jitter buffer; wake the playout thread."""
        if not self.receiving:
            return
        self.counters["packets_received"] += 1
        expected = AudioCodecId.OPUS if self.settings.codec == "opus" else AudioCodecId.PCM16
        if pkt.frame_samples != FRAME or pkt.codec != expected:
            # This version sends only 10 ms frames of the configured codec; anything else is counted, dropped.
            self.counters["bad_packets"] += 1
            return
        step_us = FRAME * 1_000_000 // SAMPLE_RATE
        with self._lock:
            for k, frame in enumerate(pkt.frames):
                self.jitter.put(
                    (pkt.audio_seq - k) & 0xFFFF, pkt.capture_us - k * step_us, frame, now_ns, redundant=k > 0
                )
        self._playout_wake.set()

    # -- playout thread ----------------------------------------------------------------------------------

    def _playout_loop(self) -> None:
        make_realtime("audio-playout")
        while not self._stop.is_set():
            sleep_s = self._sleep_s()
            deadline_ns = time.monotonic_ns() + int(sleep_s * 1e9)
            woken = self._playout_wake.wait(sleep_s)
            if self._stop.is_set():
                return
            now = time.monotonic_ns()
            if not woken and self._playing and sleep_s < 0.02:
                # Slept towards a guard deadline: how late the wake came (scheduling, the interpreter lock).
                self.wake_late_ms.record(max(0.0, (now - deadline_ns) / 1e6))
            self._after_reserve()
            self._follow_callbacks(now)
            self._play_ready(now)
            self._cover_next_callback()
            if self.tap is not None:
                self.tap.poll()
            if now - self._last_sync_ns > 1_000_000_000:
                self._last_sync_ns = now
                self._update_lip_sync()
                if self.tap is not None:
                    self.tap.on_second(
                        now,
                        {
                            **self.counters,
                            **self.playout.counters,
                            "target_us": round(self.playout.target_ms * 1000),
                            "wait_us": round((self.playout.wait_ms or 0.0) * 1000),
                        },
                    )

    def _last_callback(self) -> tuple[int, int, int, int] | None:
        """(time, level, stream read position, playout ns) of the newest callback; None before the first."""
        n = self._callbacks
        if n == 0:
            return None
        s = (n - 1) % _CB_SLOTS
        return int(self._cb_ns[s]), int(self._cb_level[s]), int(self._cb_read[s]), int(self._cb_playout[s])

    def _next_callback_ns(self, now: int) -> int | None:
        """Predicted time of the next callback after ``now``, or None while the device is silent.

        From the card's schedule, not from the last callback alone: a callback runs late by however long
        its thread waited (for the CPU, for the interpreter lock) and never early, so the earliest of the
        recent callbacks, each taken back by its whole periods, is the schedule (the same estimate as the
        PortAudio backend's clock offset). Predicting from a late callback would put the next one up to
        that lateness too late, eating the guard time in which a missing frame is concealed: an underrun.
        Callbacks more than a period earlier than the newest (so taken back) are from before a pause or
        skip, on another grid, and are left out; 200 ppm of drift over :data:`_PHASE_CALLBACKS` callbacks
        is 16 µs.
        """
        n = self._callbacks
        if n == 0:
            return None
        last_ns = int(self._cb_ns[(n - 1) % _CB_SLOTS])
        if now - last_ns > STALE_DEVICE_MS * 1e6:
            return None
        if self._phase_at != n:
            # Once per new callback: the playout thread asks several times per wake.
            k = min(n, _PHASE_CALLBACKS)
            numbers = np.arange(n - k, n, dtype=np.int64)
            phases = self._cb_ns[numbers % _CB_SLOTS] - numbers * self._period_ns
            self._phase = int(np.min(phases[phases >= phases[-1] - self._period_ns]))
            self._phase_at = n
        t = self._phase + n * self._period_ns
        if t <= now:
            t += ((now - t) // self._period_ns + 1) * self._period_ns
        return t

    def _sleep_s(self) -> float:
        """Until the next guard deadline (when the FIFO cannot cover the next callback), else 20 ms."""
        if not self._playing:
            return 0.02
        now = time.monotonic_ns()
        t = self._next_callback_ns(now)
        if t is None:
            return 0.02
        deadline = t - GUARD_MS * 1e6 + self._covered_periods() * self._period_ns
        return min(0.02, max(0.0, (deadline - now) / 1e9))

    def _covered_periods(self) -> int:
        """Whole callbacks the FIFO can serve from now (what the resampler holds is its look-ahead, not
        playable until more comes)."""
        return self._fifo.level // self.period

    def _follow_callbacks(self, now: int) -> None:
        """Fit our sound card's rate from its callbacks; notice one that stopped calling back."""
        n = self._callbacks
        if n - self._rate_seen_callbacks >= 20:
            # One point every ~100 ms is plenty for a 30 s fit.
            self._rate_seen_callbacks = n
            self._near_rate.add(int(self._cb_ns[(n - 1) % _CB_SLOTS]), (n - 1) * self.period)
        if self._playing and self._next_callback_ns(now) is None:
            log.warning("audio: the sound card stopped calling back; playout waits")
            self._go_idle()

    def _play_ready(self, now: int) -> None:
        """Decode every frame that can play in order now."""
        codec = self.recv_codec
        assert codec is not None
        while True:
            with self._lock:
                if not self._playing and self.jitter.peek() is None:
                    # A first frame, or a stream after an idle spell: start from the newest state.
                    return
                kind, frame = self.jitter.pop()
            if kind != "frame" or frame is None:
                return
            if not self._playing:
                if self._next_callback_ns(now) is None:
                    with self._lock:
                        self.jitter.reset()
                    return
                self._start_playing(now)
            if self._playing and self._over_target(now) and self.jitter_has_next():
                # A burst (frames held up by a stall, then all at once): frames beyond the target would only
                # add latency that the 2 % ratio takes seconds to drain. Skip this one instead — undecoded, so
                # Opus's overlapping windows cross-fade into the next — while a newer one is waiting.
                self.counters["frames_skipped"] += 1
                continue
            if self._stretched:
                # It came after all, late: play it after the stretch, and let the target learn the lateness
                # (told now, not when stretching: a twin that stopped sending is not jitter). A copy that
                # came in the next packet is a loss repaired, not jitter: it raises nothing.
                if not frame.redundant:
                    self.playout.on_late(now)
                self._stretched = 0
            try:
                pcm = codec.decode(frame.payload)
            except CodecError:
                self.counters["decode_errors"] += 1
                pcm = codec.conceal()
                self._concealed(len(pcm))
            else:
                self.counters["frames_decoded"] += 1
                self.arrival_ms.record((frame.arrival_ns - frame.capture_us * 1000 - FRAME_NS) / 1e6)
                # Frame numbers, not frames decoded: a lost frame still took the twin's card 10 ms.
                if self._far_seq is not None:
                    self._far_frames += seq16_diff(frame.seq, self._far_seq)
                self._far_seq = frame.seq
                self._far_rate.add(frame.capture_us * 1000, self._far_frames * FRAME)
                if not frame.redundant and now - frame.arrival_ns < 2 * self._period_ns:
                    self._report_wait(now)
                self._decoded(len(pcm))
            self._push(pcm, frame.capture_us, redo=self._redecode(codec, frame.payload))

    def jitter_has_next(self) -> bool:
        """A frame is waiting right behind the next one (playout thread)."""
        with self._lock:
            return self.jitter.peek() is not None

    def _over_target(self, now: int) -> bool:
        """The FIFO alone already makes the next frame wait more than :data:`CATCH_UP_MS` over the target."""
        t = self._next_callback_ns(now)
        if t is None:
            return False
        wait = (t - now) / 1e6 + (self._fifo.level + self.resampler.buffered_samples) * 1000 / SAMPLE_RATE
        return wait > self.playout.target_ms + CATCH_UP_MS

    def _report_wait(self, now: int) -> None:
        """Tell the controller this frame's wait (until its first sample plays) and slack (until the guard
        time before the callback that first needs it), both from now, in ms; it answers the ratio."""
        t = self._next_callback_ns(now)
        if t is None:
            return
        # What the resampler holds is its look-ahead: it plays before this frame but cannot cover a
        # callback until more input comes, so it counts in the wait and not in the slack.
        playable = self._fifo.level
        to_callback = (t - now) / 1e6
        wait = to_callback + (playable + self.resampler.buffered_samples) * 1000 / SAMPLE_RATE
        slack = to_callback + (playable // self.period) * self.period_ms
        self.playout.on_frame(wait, slack, now)
        self.frame_wait_ms.record(wait)
        smoothed = self.playout.wait_ms
        if smoothed is not None:
            self.buffer_ms.record(smoothed)
            if now - self._play_started_ns > 2_000_000_000:
                self.buffer_error_ms.record(abs(smoothed - self.playout.target_ms))

    def _cover_next_callback(self) -> None:
        """Conceal when a callback is due within the guard time and the FIFO cannot cover it."""
        if not self._playing:
            return
        now = time.monotonic_ns()
        t = self._next_callback_ns(now)
        if t is None or self._covered_periods() > 0 or now < t - GUARD_MS * 1e6:
            return
        codec = self.recv_codec
        assert codec is not None
        with self._lock:
            kind, frame = self.jitter.pop()
            following = self.jitter.following() if kind == "missing" else None
            if kind == "missing":
                self.jitter.skip()
        if kind == "frame" and frame is not None:
            # Arrived between our look and now: play it.
            pcm = self._decode_or_conceal(codec, frame.payload)
            self._push(pcm, frame.capture_us, redo=self._redecode(codec, frame.payload))
            return
        if kind == "missing":
            # A later frame is here: this one is lost. Rebuild it from in-band FEC, or conceal what is left.
            self.counters["frames_lost"] += 1
            rebuilt = codec.decode_fec(following.payload) if following is not None else None
            if rebuilt is not None:
                self.counters["frames_fec"] += 1
                self._decoded(len(rebuilt))
                pcm = rebuilt[self._stretched :] if self._stretched < FRAME else rebuilt[:0]
            else:
                n = max(120, FRAME - self._stretched)
                pcm = codec.conceal(n)
                self._concealed(len(pcm))
            self._stretched = 0
            self._push(pcm, None, redo=(lambda: codec.conceal(n)) if rebuilt is None else None)
            return
        # Nothing has arrived: stretch by one period and keep waiting for the frame.
        if self._conceal_run >= IDLE_AFTER_MS * SAMPLE_RATE / 1000:
            self._go_idle()
            return
        pcm = codec.conceal(self.period)
        self._stretch(len(pcm))
        self._push(pcm, None, redo=lambda: codec.conceal(self.period))

    def _stretch(self, samples: int, *, waiting: bool = True) -> None:
        """``samples`` of concealment went in while the frame at ``next`` is waited for (``waiting``), or
        before a frame already here that came too late for it."""
        self.counters["stretches"] += 1
        self._concealed(samples)
        if not waiting:
            return
        self._stretched += samples
        if self._stretched >= FRAME:
            # A whole frame's worth waited for: give the frame up (a copy that comes later is dropped).
            with self._lock:
                self.jitter.skip()
            self.counters["frames_lost"] += 1
            self._stretched = 0

    def _arm_reserve(self) -> None:
        """Playout thread, after each write into the FIFO: hand the callback a period of concealment
        continuing it."""
        codec = self.recv_codec
        if not self._playing or codec is None or self._reserve_len or self._reserve_taken:
            # Not playing, or one armed already — or played from, which _after_reserve takes back on the next
            # wake. (The callback changes neither while none is armed.)
            return
        try:
            pcm = codec.conceal_ahead(self.period)
        except CodecError:
            return
        self._resampler_ahead.copy_from(self.resampler)
        self._resampler_ahead.push(pcm)
        out = self._resampler_ahead.pull(self.playout.ratio, most=len(self._reserve))
        with self._reserve_lock:
            self._reserve[: len(out)] = out
            self._reserve_len = len(out)

    def _take_back_reserve(self) -> tuple[int, int]:
        """Playout thread: disarm the reserve; returns (samples it held, samples a callback played)."""
        with self._reserve_lock:
            made, taken = self._reserve_len, self._reserve_taken
            self._reserve_len = self._reserve_taken = 0
        return made, taken

    def _continue_after_reserve(self, made: int, taken: int) -> None:
        """A callback played ``taken`` samples of the reserve: the stream went on through it, so continue
        from the decoder and resampler that made it, with the rest of it first into the FIFO."""
        assert self.recv_codec is not None
        self.recv_codec.adopt_ahead()
        self.resampler, self._resampler_ahead = self._resampler_ahead, self.resampler
        self._fifo.write(self._reserve[taken:made])

    def _after_reserve(self) -> None:
        """Playout thread, on every wake: if a callback played from the reserve, continue after it; the
        frame at ``next`` is then waited for as after a stretch."""
        if self._reserve_taken == 0:  # a snapshot: one taken later is found by the next push or wake
            return
        made, taken = self._take_back_reserve()
        if taken == 0:
            return
        self._continue_after_reserve(made, taken)
        if self._playing:
            self._stretch(self.period)
        self._arm_reserve()

    def _redecode(self, codec: AudioCodec, payload: bytes) -> Callable[[], Block]:
        """The frame decoded again, for when a callback played the reserve while it was decoded."""

        def again() -> Block:
            try:
                return codec.decode(payload)
            except CodecError:
                return codec.conceal()

        return again

    def _decode_or_conceal(self, codec: AudioCodec, payload: bytes) -> Block:
        try:
            pcm = codec.decode(payload)
        except CodecError:
            self.counters["decode_errors"] += 1
            pcm = codec.conceal()
            self._concealed(len(pcm))
            return pcm
        self.counters["frames_decoded"] += 1
        self._decoded(len(pcm))
        return pcm

    def _decoded(self, samples: int) -> None:
        self.counters["samples_decoded"] += samples
        if self._conceal_run > 2 * FRAME:
            self.counters["gaps_over_20ms"] += 1
        self._conceal_run = 0

    def _concealed(self, samples: int) -> None:
        self.counters["samples_concealed"] += samples
        self._conceal_run += samples

    def _push(self, pcm: Block, capture_us: int | None, redo: Callable[[], Block] | None = None) -> None:
        """Resample ``pcm`` at the controller's ratio into the FIFO; note the frame's age when it plays; make
        the next reserve.

        The reserve stays armed while ``pcm`` is decoded and resampled (the slow part) and is taken back
        only for the write. If a callback played from it meanwhile, the stream continues after it, and
        ``pcm`` is made again by ``redo`` from the decoder that made the reserve (as it is, without one).
        """
        position = self._stream_position()
        out = self._resample(pcm)
        made, taken = self._take_back_reserve()
        if taken:
            self._continue_after_reserve(made, taken)
            self._stretch(self.period, waiting=False)
            if capture_us is not None:
                self.playout.on_late(time.monotonic_ns())  # it came too late for the callback
            position = self._stream_position()
            out = self._resample(redo() if redo is not None else pcm)
        if capture_us is not None:
            last = self._last_callback()
            if last is not None:
                dac_ns = last[3] + (position - last[2]) * 1e9 / SAMPLE_RATE
                age = (dac_ns - capture_us * 1000) / 1e6
                self.latency_ms.record(age)
                self._audio_age_ms = (
                    age if self._audio_age_ms is None else 0.9 * self._audio_age_ms + 0.1 * age
                )
        written = self._fifo.write(out)
        if written < len(out):
            # Cannot happen while the controller works (the FIFO holds a second); drop rather than block.
            log.warning("audio: playout FIFO full, %d samples dropped", len(out) - written)
        self._arm_reserve()

    def _stream_position(self) -> float:
        """Where the next sample pushed will play, in stream samples: after what the FIFO and the resampler
        hold, counting what callbacks played from reserves."""
        return self._fifo.written + self._reserve_played + self.resampler.buffered_samples

    def _resample(self, pcm: Block) -> Block:
        self.resampler.push(pcm)
        return self.resampler.pull(self.playout.ratio)

    def _start_playing(self, now: int) -> None:
        self._playing = True
        self._play_started_ns = now
        self._conceal_run = 0
        self._stretched = 0
        self.counters["starts"] += 1
        self.playout.reset()
        # Start at the target wait: the first frame arrives at an arbitrary phase to the callbacks.
        t = self._next_callback_ns(now)
        to_callback = 0.0 if t is None else (t - now) / 1e6
        prime = int(max(0.0, self.playout.target_ms - to_callback) * SAMPLE_RATE / 1000)
        if prime:
            self._fifo.write(np.zeros((prime, CHANNELS), np.float32))
        log.info("audio: playing the twin's audio (target %.1f ms)", self.playout.target_ms)

    def _go_idle(self) -> None:
        """The twin stopped sending (or our sound card did): silence, and a clean start when audio returns."""
        self._playing = False
        # A restarted twin's frame count starts afresh: fit again, and report the last good estimate until
        # the new fit spans enough time (a fit over a few seconds is noise).
        self._last_drift_ppm = drift_ppm(self._far_rate, self._near_rate) or self._last_drift_ppm
        self._far_rate.reset()
        self._far_seq = None
        self.counters["idles"] += 1
        # What was concealed while waiting was the twin's silence, not loss.
        self.counters["samples_concealed"] -= min(self._conceal_run, self.counters["samples_concealed"])
        self._conceal_run = 0
        self._stretched = 0
        self._take_back_reserve()  # not played any more (the callback plays only while playing)
        with self._lock:
            self.jitter.reset()
        self.resampler.reset()
        if self.recv_codec is not None:
            self.recv_codec.reset()
        log.info("audio: the twin's audio stopped; playing silence")

    def _update_lip_sync(self) -> None:
        """Once a second: the audio–video offset, and which of the two to hold back for it.

        Both ages are ``play time − the sender's capture time``; audio's adds what the twin's processing
        and codec delay the sound inside its frames (taken from our own settings: twins share them). The
        offset is steered toward +10 ms (audio slightly after video, the direction people notice least):
        audio playing later than that makes the display hold pictures back (never more than 40 ms); video
        playing later than audio makes the playout target hold audio back.
        """
        if self._video_age_ms is None or self._audio_age_ms is None:
            return
        video = self._video_age_ms()
        if video is None:
            return
        content_ms = (self._content_delay_samples + self.resampler.buffered_samples) * 1000 / SAMPLE_RATE
        offset = self._audio_age_ms + content_ms - video
        self.av_offset_ms = offset if self.av_offset_ms is None else 0.7 * self.av_offset_ms + 0.3 * offset
        if not self.settings.lip_sync:
            return
        error = self.av_offset_ms - LIP_SYNC_TARGET_MS
        if self._hold_video is not None and (self.video_hold_ms > 0 or error > 5.0):
            # Audio is late: the picture waits (and stops waiting as soon as audio catches up).
            self.video_hold_ms = min(max(self.video_hold_ms + 0.5 * error, 0.0), MAX_VIDEO_HOLD_MS)
            self._hold_video(self.video_hold_ms)
        hold = self.playout.hold_ms
        if self.av_offset_ms < -5.0 and self.video_hold_ms == 0:
            hold += -self.av_offset_ms
        elif self.av_offset_ms > 5.0 and hold > 0:
            hold -= min(hold, self.av_offset_ms)
        self.playout.hold_ms = min(hold, self.settings.jitter_max_ms)

    # -- statistics --------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        c = dict(self.counters)
        c["callbacks"] = self._callbacks
        total = c["samples_decoded"] + c["samples_concealed"]
        with self._lock:
            jitter = self.jitter.stats()
        c["frames_late"] = jitter["late"]
        measured_drift = drift_ppm(self._far_rate, self._near_rate)
        if measured_drift is None:
            measured_drift = self._last_drift_ppm
        out: dict[str, Any] = {
            "device": self.device.name,
            "device_stats": self.device.stats(),
            "period_ms": self.period_ms,
            "input_latency_ms": self.device.input_latency_ms,
            "output_latency_ms": self.device.output_latency_ms,
            "codec": self.settings.codec,
            "bitrate_kbps": self.settings.bitrate_kbps,
            "redundancy": self.redundancy(),
            "playing": self._playing,
            "muted": self.muted,
            **c,
            "concealed_percent": round(100 * c["samples_concealed"] / total, 3) if total else 0.0,
            "jitter_buffer": jitter,
            "playout": self.playout.stats(),
            "drift_ppm": None if measured_drift is None else round(measured_drift, 1),
            "buffer_ms": self.buffer_ms.snapshot(),
            "buffer_error_ms": self.buffer_error_ms.snapshot(),
            "latency_ms": self.latency_ms.snapshot(),
            "av_offset_ms": None if self.av_offset_ms is None else round(self.av_offset_ms, 1),
            "video_hold_ms": round(self.video_hold_ms, 1),
            "process_ms": self.process_ms.snapshot(),
            "send_ms": self.send_ms.snapshot(),
            "arrival_ms": self.arrival_ms.snapshot(),
            "frame_wait_ms": self.frame_wait_ms.snapshot(),
            "wake_late_ms": self.wake_late_ms.snapshot(),
        }
        if self.processing is not None:
            out["processing"] = self.processing.stats()
        return out
