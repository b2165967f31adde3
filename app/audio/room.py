"""The simulated room behind the synthetic sound card: a talker, the speaker's echo and microphone noise.

:class:`Room` is sans-I/O: pure numpy, no threads, no clock. It is driven one block of ``period`` samples
at a time (48 kHz stereo, float32) by :class:`app.audio.synthetic.SyntheticDevice`, which owns the timing;
the same room configuration and the same speaker input always give the same microphone output.

Theory of operation. The microphone signal is the sum of three parts, each known separately so that tests
and benchmarks have the ground truth:

- **near**: the local talker as it reaches the microphone: a looped talker signal (generated speech, a WAV
  file, or nothing) gated on and off by the talk pattern, plus latency markers (:data:`markers.MARKER` at
  gain 0.5 on both channels) every ``markers_every_s`` whatever the talk pattern.
- **echo**: the speaker's mono mix (L+R)/2 through one impulse response per microphone channel: a direct
  path at ``echo_delay_ms`` with gain ``echo_gain_db``, then a reverberant tail from 2 ms after the direct
  path, Gaussian noise under an exp(−6.9·t/RT60) envelope (t from the direct path, so −60 dB at RT60),
  scaled to the direct path's energy (direct-to-reverberant ratio 0 dB) and cut at 1.2 × RT60. Each
  channel draws its own tail from the seed.
- **noise**: white Gaussian noise at ``noise_dbfs`` RMS per channel.

The sum is clipped to [−1, 1] like an ADC would. The echo path is a pure bulk delay of ``delay`` samples
(the acoustic delay plus ``extra_delay``, which the synthetic device uses for its own output buffering and
the one period between filling a speaker block and playing it) followed by the impulse response with its
direct path at lag 0. The bulk delay is a ring of mono speaker samples; the rest is a uniformly partitioned
overlap-save convolution: the response is cut into partitions of one period, each partition's spectrum
(FFT size two periods) is kept, the spectra of the last K input blocks sit in a frequency-domain delay line,
and each block costs one forward FFT, K complex multiply-adds per bin (vectorized over partitions) and one
inverse FFT per channel. With RT60 = 0 the response is the direct path alone and the echo is a plain
scaled copy of the delayed speaker.

Streams are counted in samples from the start: microphone sample m is the m-th sample :meth:`Room.capture`
has produced, speaker sample s the s-th sample :meth:`Room.play` was given, and the echo at m comes from
speaker samples m − ``delay`` and earlier. The talk pattern and the markers are laid out on the microphone
stream.
"""

from __future__ import annotations

import math
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from app.audio import markers
from app.audio.device import CHANNELS, PERIODS, SAMPLE_RATE
from app.audio.measure import speech_like

Block = npt.NDArray[np.float32]
"""A float32 ``(samples, CHANNELS)`` block."""

TALKER_LOOP_S = 30.0
"""Length of the generated speech, s, looped for as long as the room runs."""
MARKER_GAIN = 0.5
"""Gain of each latency marker in the talker signal (peak 0.5, on both channels)."""
TAIL_START_MS = 2.0
"""Start of the reverberant tail after the direct path, ms."""
TAIL_LENGTH_RT60 = 1.2
"""The reverberant tail is cut this many RT60s after the direct path (−72 dB)."""
TALKERS = ("speech", "silence", "markers")
"""The talkers that are not a WAV file path."""
TALK_PATTERNS = ("always", "never", "alternate")
"""When the talker talks: all the time, never, or ``talk_s`` on and off after ``phase_s``."""

_DECAY = math.log(1000.0)  # 6.9: an amplitude envelope exp(−6.9·t/RT60) is −60 dB at t = RT60
_MARKER_SCALED = (markers.MARKER * np.float32(MARKER_GAIN)).astype(np.float32)
_MARKER_SCALED.flags.writeable = False


@dataclass(frozen=True)
class RoomConfig:
    """What the simulated room is like. Construct by keyword; every field says its unit and default."""

    echo_delay_ms: float = 40.0
    """Speaker-to-microphone acoustic delay of the direct path, ms (0..1000). Default 40."""
    rt60_ms: float = 300.0
    """Reverberation time (−60 dB), ms (0..3000); 0 = the direct path alone. Default 300."""
    echo_gain_db: float = -10.0
    """Direct-path echo level relative to the speaker's mono mix (L+R)/2, dB (≤ 20). Default −10."""
    noise_dbfs: float = -60.0
    """White microphone noise floor, RMS dBFS per channel (≤ 0). Default −60."""
    talker: str = "speech"
    """The local talker: "speech" (generated, about −26 dBFS active RMS), "silence", "markers" (nothing but
    the markers), or the path of a 48 kHz 16/24/32-bit PCM WAV file, mono or stereo. Default "speech"."""
    talk_pattern: str = "always"
    """When the talker talks: "always", "never" or "alternate". Default "always"."""
    talk_s: float = 2.0
    """"alternate": seconds of talk, then as many of silence (> 0). Default 2."""
    phase_s: float = 0.0
    """"alternate": seconds of silence before the first talk (≥ 0). Default 0."""
    markers_every_s: float | None = None
    """Latency markers mixed into the talker signal every this many seconds (at least the marker's 5 ms),
    marker j's first sample at ``j × markers_every_s`` plus a fixed pseudo-random offset below 10 ms,
    whatever the talk pattern; None = no markers. Default None."""
    seed: int = 0
    """Seed of the generated speech, the reverberant tails and the noise (≥ 0). Default 0."""
    dead_mic: bool = False
    """The microphone delivers digital silence (unplugged, muted, or a broken cable) while the room goes on
    (the ground truth still has the talker and the echo): what calibration must recognise. Default false."""

    def __post_init__(self) -> None:
        def check(name: str, value: float, lo: float | None, hi: float | None) -> None:
            if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
                bounds = " and ".join(
                    part
                    for part in (None if lo is None else f"≥ {lo:g}", None if hi is None else f"≤ {hi:g}")
                    if part is not None
                )
                raise ValueError(f"RoomConfig.{name} must be a number {bounds}, not {value}")

        check("echo_delay_ms", self.echo_delay_ms, 0.0, 1000.0)
        check("rt60_ms", self.rt60_ms, 0.0, 3000.0)
        check("echo_gain_db", self.echo_gain_db, None, 20.0)
        check("noise_dbfs", self.noise_dbfs, None, 0.0)
        check("talk_s", self.talk_s, 0.0, None)
        check("phase_s", self.phase_s, 0.0, None)
        if round(self.talk_s * SAMPLE_RATE) < 1:
            raise ValueError(f"RoomConfig.talk_s must be at least one sample, not {self.talk_s}")
        if self.talk_pattern not in TALK_PATTERNS:
            known = ", ".join(TALK_PATTERNS)
            raise ValueError(f"RoomConfig.talk_pattern must be one of {known}, not {self.talk_pattern!r}")
        if not self.talker:
            raise ValueError("RoomConfig.talker must be speech, silence, markers or a WAV file path, not ''")
        if self.markers_every_s is not None:
            check("markers_every_s", self.markers_every_s, markers.MARKER_LEN / SAMPLE_RATE, None)
        if self.seed < 0:
            raise ValueError(f"RoomConfig.seed must be ≥ 0, not {self.seed}")


@dataclass(frozen=True)
class RoomBlock:
    """What happened in one microphone block besides its samples (returned by :meth:`Room.capture`)."""

    first_sample: int
    """Microphone stream sample number of the block's first sample."""
    talker_active: bool
    """The talk pattern had the talker on for at least one sample of the block (always false for the
    "silence" and "markers" talkers, which have nobody talking)."""
    marker_offsets: tuple[int, ...]
    """Offsets in the block (samples) at which a marker's first sample lies."""


@dataclass(frozen=True)
class RoomTruth:
    """The parts of a stretch of microphone signal, as the room made them (ground truth for measurement)."""

    near: npt.NDArray[np.float32]
    """float32 ``(n, CHANNELS)``: the talker and the markers as they reached the microphone."""
    echo: npt.NDArray[np.float32]
    """float32 ``(n, CHANNELS)``: the speaker's echo as it reached the microphone."""
    talker_active: bool
    """The talk pattern had the talker on for at least one of these samples (see :class:`RoomBlock`)."""


def load_wav(path: str | Path) -> npt.NDArray[np.float32]:
    """A 48 kHz 16/24/32-bit PCM WAV file, mono or stereo, as float32 ``(frames, channels)`` in [−1, 1).

    Raises ValueError naming the file and what was found for any other rate, width, channel count or
    encoding, for a missing or unreadable file and for an empty one.
    """
    try:
        with wave.open(str(path), "rb") as f:
            rate = f.getframerate()
            channels = f.getnchannels()
            width = f.getsampwidth()
            frames = f.getnframes()
            data = f.readframes(frames)
    except (OSError, EOFError, wave.Error) as exc:
        raise ValueError(f"talker {path}: not a readable PCM WAV file ({exc})") from exc
    if rate != SAMPLE_RATE:
        raise ValueError(f"talker {path}: sample rate {rate} Hz, need {SAMPLE_RATE} Hz")
    if channels not in (1, 2):
        raise ValueError(f"talker {path}: {channels} channels, need 1 or 2")
    if width not in (2, 3, 4):
        raise ValueError(f"talker {path}: {8 * width}-bit samples, need 16, 24 or 32-bit PCM")
    count = len(data) // (width * channels)
    if count == 0:
        raise ValueError(f"talker {path}: no samples")
    raw = np.frombuffer(data[: count * width * channels], dtype=np.uint8)
    if width == 3:
        # Little-endian 24-bit: place the three bytes in the top of an int32 so the sign comes along.
        wide = np.zeros((raw.size // 3, 4), dtype=np.uint8)
        wide[:, 1:] = raw.reshape(-1, 3)
        ints = wide.view("<i4").ravel()
        scale = 2.0**31
    else:
        ints = raw.view("<i2" if width == 2 else "<i4")
        scale = 2.0 ** (8 * width - 1)
    samples = (ints.astype(np.float64) / scale).astype(np.float32)
    return np.ascontiguousarray(samples.reshape(count, channels))


def impulse_responses(config: RoomConfig) -> npt.NDArray[np.float64]:
    """The echo path's impulse responses from the speaker's mono mix, float64 ``(taps, CHANNELS)``.

    Index 0 is the direct path (the acoustic delay is not included: it is a bulk delay in :class:`Room`).
    Deterministic under ``config.seed``.
    """
    gain = 10.0 ** (config.echo_gain_db / 20.0)
    tail_start = round(TAIL_START_MS * SAMPLE_RATE / 1000.0)
    tail_end = round(TAIL_LENGTH_RT60 * config.rt60_ms * SAMPLE_RATE / 1000.0)
    if config.rt60_ms <= 0.0 or tail_end <= tail_start:
        h = np.zeros((1, CHANNELS), dtype=np.float64)
        h[0, :] = gain
        return h
    h = np.zeros((tail_end + 1, CHANNELS), dtype=np.float64)
    h[0, :] = gain
    t = np.arange(tail_start, tail_end + 1, dtype=np.float64) / SAMPLE_RATE
    envelope = np.exp(-_DECAY * t / (config.rt60_ms / 1000.0))
    rng = np.random.default_rng((config.seed, 1))
    for c in range(CHANNELS):
        tail = rng.standard_normal(t.size) * envelope
        # Direct-to-reverberant ratio 0 dB: the tail carries the direct path's energy, gain².
        tail *= gain / math.sqrt(float(np.dot(tail, tail)))
        h[tail_start:, c] = tail
    return h


def marker_sample(j: int, every: float, seed: int) -> int:
    """First sample of latency marker ``j`` when markers come every ``every`` samples (> the marker's length).

    ``j × every`` plus a fixed pseudo-random offset below one 10 ms frame (480 samples), the same for the
    same ``j`` and ``seed``. The offset spreads the markers evenly over the position within a 10 ms frame
    (a sound starting at a frame's first sample waits a whole frame for echo cancellation, one at its last
    sample hardly at all), so a latency percentile over markers is one over where a sound happens to
    start, as with real speech. Offsets leave room between markers: they never overlap or reorder.
    """
    spread = max(1, min(480, int(every) - markers.MARKER_LEN))
    offset = ((j * 2654435761 + seed * 40503) >> 7) % spread
    return round(j * every) + offset


class Room:
    """One doorway's room, processed one block of ``period`` samples at a time (single-threaded).

    ``extra_delay``: samples of delay between the speaker stream given to :meth:`play` and the loudspeaker,
    on top of the acoustic delay (the synthetic device's output buffering plus one period). The echo at
    microphone sample m comes from speaker sample m − :attr:`delay` (direct path) and earlier.

    Drive it with :meth:`play` (each speaker block, in order) and :meth:`capture` (each microphone block, in
    order). A microphone block needs the speaker samples up to its end minus :attr:`delay`: with
    ``delay ≥ period`` capture block k after playing blocks 0..k−1 (the sound-card order); otherwise play
    block k first, or call :meth:`process`, which does both. The block path works in preallocated buffers
    (FFTs included); it allocates only the small :class:`RoomBlock` it returns and, when a speaker block
    wraps around the ring, two temporaries.
    """

    def __init__(self, config: RoomConfig, period: int, *, extra_delay: int = 0) -> None:
        if period not in PERIODS:
            raise ValueError(f"room period must be one of {PERIODS} samples, not {period}")
        if extra_delay < 0:
            raise ValueError(f"room extra_delay must be ≥ 0 samples, not {extra_delay}")
        self.config = config
        self.period = period
        self.acoustic_delay = round(config.echo_delay_ms * SAMPLE_RATE / 1000.0)
        """Speaker-to-microphone delay of the direct path, samples."""
        self.delay = self.acoustic_delay + extra_delay
        """Total bulk delay from the speaker stream to the direct path in the microphone stream, samples."""

        # The talker, (frames, 1 or 2), looped; None when nobody talks.
        self._talker: npt.NDArray[np.float32] | None
        if config.talker == "speech":
            self._talker = speech_like(TALKER_LOOP_S, config.seed)[:, np.newaxis]
        elif config.talker in ("silence", "markers"):
            self._talker = None
        else:
            self._talker = load_wav(config.talker)
        self._talk_phase = round(config.phase_s * SAMPLE_RATE)
        self._talk_len = round(config.talk_s * SAMPLE_RATE)
        every = config.markers_every_s
        self._marker_every = None if every is None else every * SAMPLE_RATE

        self._noise_sigma = np.float32(10.0 ** (config.noise_dbfs / 20.0))

        h = impulse_responses(config)
        self._direct_only = h.shape[0] == 1
        self._direct_gain = np.float32(h[0, 0])
        b = period
        self._parts = -(-h.shape[0] // b)
        bins = b + 1
        # Partition spectra, (CHANNELS, K, bins): each partition zero-padded to the 2B FFT (overlap-save).
        padded = np.zeros((CHANNELS, self._parts, 2 * b), dtype=np.float64)
        padded[:, :, :b] = np.pad(h.T, ((0, 0), (0, self._parts * b - h.shape[0]))).reshape(
            CHANNELS, self._parts, b
        )
        self._h_spec = np.fft.rfft(padded, axis=2).astype(np.complex64)
        # Frequency-domain delay line, twice over so that [head : head + K] is always newest-first.
        self._fdl = np.zeros((2 * self._parts, bins), dtype=np.complex64)
        self._x_spec = np.zeros(bins, dtype=np.complex64)
        self._products = np.zeros((CHANNELS, self._parts, bins), dtype=np.complex64)
        self._y_spec = np.zeros((CHANNELS, bins), dtype=np.complex64)
        self._y = np.zeros((CHANNELS, 2 * b), dtype=np.float32)
        self._window = np.zeros(2 * b, dtype=np.float32)  # previous and current delayed input block

        # Mono speaker ring: long enough that the delayed block is still there when play leads by a block.
        self._ring = np.zeros(self.delay + 2 * b, dtype=np.float32)
        self._near = np.zeros((b, CHANNELS), dtype=np.float32)
        self._echo = np.zeros((b, CHANNELS), dtype=np.float32)
        self._noise = np.zeros((b, CHANNELS), dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        """Back to the start: silence in the echo path, both streams at sample 0, the noise reseeded."""
        self._played = 0
        self._captured = 0
        self._head = 0
        self._fdl.fill(0.0)
        self._window.fill(0.0)
        self._ring.fill(0.0)
        self._noise_rng = np.random.default_rng((self.config.seed, 2))

    @property
    def samples(self) -> int:
        """Microphone samples produced so far: the stream number of the next block's first sample."""
        return self._captured

    def talking(self, first_sample: int, n: int) -> bool:
        """Whether the talk pattern has the talker on for any of microphone samples ``first_sample`` ..
        ``first_sample + n − 1`` (always false for the "silence" and "markers" talkers). A pure function of
        the configuration: any thread."""
        if self._talker is None or n <= 0 or self.config.talk_pattern == "never":
            return False
        if self.config.talk_pattern == "always":
            return True
        phase, talk = self._talk_phase, self._talk_len
        end = first_sample + n
        pos = max(first_sample, phase)
        if pos >= end:
            return False
        q = (pos - phase) // talk
        return q % 2 == 0 or phase + (q + 1) * talk < end

    def play(self, speaker: Block) -> None:
        """Take the next speaker block, float32 ``(period, CHANNELS)`` (any float array of that shape)."""
        b = self.period
        start = self._played % self._ring.size
        stop = start + b
        if stop <= self._ring.size:
            np.add(speaker[:, 0], speaker[:, 1], out=self._ring[start:stop])
            self._ring[start:stop] *= np.float32(0.5)
        else:
            first = self._ring.size - start
            self._ring[start:] = 0.5 * (speaker[:first, 0] + speaker[:first, 1])
            self._ring[: b - first] = 0.5 * (speaker[first:, 0] + speaker[first:, 1])
        self._played += b

    def capture(self, mic: Block, near: Block | None = None, echo: Block | None = None) -> RoomBlock:
        """Make the next microphone block into ``mic``, float32 ``(period, CHANNELS)``.

        ``near`` and ``echo``, when given (same shape), receive the block's talker-and-markers part and its
        echo part. Raises RuntimeError when the speaker samples the block needs have not been played yet or
        have already left the ring (play and capture out of step).
        """
        b = self.period
        m = self._captured
        first_needed = m - self.delay
        if first_needed + b > self._played or first_needed < self._played - self._ring.size:
            raise RuntimeError(
                f"Room.capture: microphone block at sample {m} needs speaker samples {first_needed}.."
                f"{first_needed + b - 1}, but {self._played} have been played (ring of {self._ring.size})"
            )
        near_out = self._near if near is None else near
        echo_out = self._echo if echo is None else echo
        active, offsets = self._talk(m, near_out)
        self._echo_block(first_needed, echo_out)
        self._noise_rng.standard_normal(dtype=np.float32, out=self._noise)
        self._noise *= self._noise_sigma
        if self.config.dead_mic:
            mic.fill(0.0)
        else:
            np.add(near_out, echo_out, out=mic)
            mic += self._noise
            np.clip(mic, -1.0, 1.0, out=mic)
        self._captured += b
        return RoomBlock(m, active, offsets)

    def process(
        self, speaker: Block, mic: Block, near: Block | None = None, echo: Block | None = None
    ) -> RoomBlock:
        """:meth:`play` ``speaker`` then :meth:`capture` the block of the same samples into ``mic``."""
        self.play(speaker)
        return self.capture(mic, near, echo)

    def _talk(self, m: int, near: Block) -> tuple[bool, tuple[int, ...]]:
        """Talker (gated by the talk pattern) and markers for the block from sample ``m`` into ``near``."""
        b = self.period
        talker = self._talker
        pattern = self.config.talk_pattern
        active = False
        if talker is None or pattern == "never":
            near.fill(0.0)
        else:
            # Copy the looped talker, wrapping as often as needed (a WAV file may be shorter than a block).
            done = 0
            while done < b:
                pos = (m + done) % talker.shape[0]
                n = min(b - done, talker.shape[0] - pos)
                near[done : done + n] = talker[pos : pos + n]
                done += n
            if pattern == "always":
                active = True
            else:
                active = self._gate(m, near)
        offsets: tuple[int, ...] = ()
        every = self._marker_every
        if every is not None:
            length = markers.MARKER_LEN
            j = max(0, math.floor((m - length - 480) / every))
            while True:
                p = self._marker_at(j)
                if p >= m + b:
                    break
                if p + length > m:
                    markers.insert(near, p - m, template=_MARKER_SCALED)
                    if p >= m:
                        offsets += (p - m,)
                j += 1
        return active, offsets

    def _marker_at(self, j: int) -> int:
        assert self._marker_every is not None
        return marker_sample(j, self._marker_every, self.config.seed)

    def _gate(self, m: int, near: Block) -> bool:
        """Silence the parts of ``near`` (block from sample ``m``) where "alternate" has the talker off."""
        b = self.period
        phase, talk = self._talk_phase, self._talk_len
        active = False
        pos = m
        while pos < m + b:
            if pos < phase:
                end, on = phase, False
            else:
                q = (pos - phase) // talk
                end, on = phase + (q + 1) * talk, q % 2 == 0
            end = min(end, m + b)
            if on:
                active = True
            else:
                near[pos - m : end - m] = 0.0
            pos = end
        return active

    def _echo_block(self, first: int, echo: Block) -> None:
        """The echo of speaker samples from ``first`` (the delayed input block) into ``echo``."""
        b = self.period
        w = self._window
        w[:b] = w[b:]
        start = first % self._ring.size  # negative samples read as the ring's never-written zeros
        n = min(b, self._ring.size - start)
        w[b : b + n] = self._ring[start : start + n]
        w[b + n :] = self._ring[: b - n]
        if self._direct_only:
            np.multiply(w[b:, np.newaxis], self._direct_gain, out=echo)
            return
        parts = self._parts
        # numpy >= 2 runs float32 FFTs in single precision; its stubs only know the float64 ones.
        np.fft.rfft(w, out=self._x_spec)  # type: ignore[arg-type]
        self._head = (self._head - 1) % parts
        self._fdl[self._head] = self._x_spec
        self._fdl[self._head + parts] = self._x_spec
        np.multiply(self._h_spec, self._fdl[self._head : self._head + parts], out=self._products)
        self._products.sum(axis=1, out=self._y_spec)
        np.fft.irfft(self._y_spec, n=2 * b, axis=1, out=self._y)  # type: ignore[arg-type]
        echo[:] = self._y[:, b:].T
