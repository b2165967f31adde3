"""Audio calibration: the acoustic delay, echo path gain, noise floor and levels, then ERLE with AEC3 on.

Run by ``doorway calibrate audio`` (and the admin panel's Calibration page) through :func:`calibrate`. It
opens the sound cards the settings name (``audio.backend``, ``audio.input_device``/``output_device``; the
synthetic backend gets a room built from the settings' ``room_*`` values, with nobody talking: calibration
asks for a quiet room), measures, and returns a :class:`~app.calibration.report.Report` whose ``apply``
holds ``acoustic_delay_ms``, ``playback_gain_db`` and ``capture_gain_db``; the engine applies them at every
start (:func:`apply_to`).

Theory of operation
-------------------

*Excitation.* Farina's exponential sine sweep (:func:`app.audio.measure.log_sweep`, 60 Hz–20 kHz, 2 s, with
10 ms fades), not an MLS: deconvolving a sweep puts the loudspeaker's harmonic distortion *before* the
linear impulse response, where it is cut away, while an MLS smears distortion over the whole response as
noise spikes; a sweep also tolerates the small clock drift between a USB microphone and speaker that breaks
MLS's circular correlation, and its crest factor (3 dB) is as low. Its cost, a longer recording, is 2 s.

*One session, three parts* (:func:`record`): ``SILENCE_S`` of silence (the noise floor; the first
``SETTLE_S`` are skipped while the card settles), the sweep at ``SWEEP_LEVELS_DBFS[0]`` peak, and
``TAIL_S`` more silence for the echo to arrive and die away. Everything is counted in stream samples:
speaker sample s is the s-th sample handed to the card since start and microphone sample m the m-th
received, so the impulse response from the sweep's first speaker sample to the microphone samples from the
same position has its direct-path peak at the *loopback* lag L (:func:`analyse_sweep`; a parabola through
the peak and its neighbours gives sub-sample precision). If the microphone clipped, the sweep is played
again 12 dB lower.

*Loopback to acoustic delay.* L includes the sound card's own buffering and callback framing. The engine
starts AEC3 from ``stream_delay_ms = acoustic_delay_ms + period_ms + output_latency_ms + input_latency_ms``
(:mod:`app.engine.audio`, with the latencies the open device reports), so calibration stores
``acoustic_delay_ms = L − period − output latency − input latency`` with those same reported values: the
engine's sum then gives back exactly the loopback delay measured. For the synthetic card that difference is
the room's true acoustic delay (its loopback is one period plus its output latency plus the room's delay);
for a real card it is the true acoustic delay plus whatever the card buffers beyond what it reports, which
is what AEC3 needs to know. The device's time stamps give the same quantity independently (median of
``playout_ns − capture_ns``), kept in the report's details.

*Levels and targets* (:func:`choose_gains`). There is no hardware mixer interface, so the two levels are
the engine's digital gains (``audio.playback_gain_db`` on what goes to the speaker, ``audio.capture_gain_db``
on the microphone before echo cancellation). Targets:

- the microphone's noise floor towards ``NOISE_REF_DBFS`` (−60 dBFS): the only measure of a microphone's
  sensitivity there is without a talker. A quiet room (about 30 dB(A)) through a sensibly set microphone
  reads about −60 dBFS when a talker a metre away reads the nominal −26 dBFS active speech level. A quiet
  microphone is raised (at most ``CAPTURE_GAIN_MAX_DB``); a noisy room is never turned down for it (a noisy
  room is not a loud microphone; the noise floor check reports it instead);
- the far talker's echo at the microphone (after both gains) ``ECHO_TARGET_DB`` (−10 dB) under what was
  played: two doorways hear each other's echo, so the round trip's loop gain is then −20 dB even before
  cancellation (a missed cancellation never howls), the echo stays 10 dB under a near talker at the same
  nominal level (double talk stays intelligible, AEC3's suppressor stays gentle), and a speaker beside the
  microphone at the doorway plays the far talker at its nominal level. The playback gain is limited to
  ``PLAYBACK_GAIN_RANGE_DB``: +6 dB over nominal speech still leaves its peaks under full scale.

*Verification* (:func:`verify`). A second session plays ``VERIFY_S`` of far-end-only speech (the
deterministic :func:`app.audio.measure.speech_like`, at the nominal −26 dBFS and the chosen playback gain)
and records the microphone with the chosen capture gain; AEC3 (:class:`app.audio.processing.AudioProcessing`,
set up exactly as the engine sets it up, from the measured delay) runs over the recording, frame by frame
in the engine's pairing of microphone and speaker blocks, and the ERLE is measured after the first second.
ERLE counts room noise as residual, so it cannot exceed the recording's echo-to-noise ratio; that ratio is
reported beside it, and a failed ERLE check in a noisy room says that the noise, not the canceller, is what
limits it.

*Problems, not exceptions*: a missing or busy sound card (the :class:`~app.audio.device.AudioDeviceError`
message), a microphone that recorded silence, no echo of the sweep (speaker off, muted or far away), a
clipping microphone, a card that dropped out or skipped during the measurement; each is a specific sentence
in :attr:`Report.problems` saying what to check.

Threads: :func:`calibrate` runs on the caller's thread, which waits for each session and reports progress;
the device's thread runs :meth:`_Session.callback`, which only copies between preallocated arrays.
Units: samples at 48 kHz, ms, dB and dBFS (RMS relative to full scale, as :mod:`app.audio.measure`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from app.audio.device import CHANNELS, FRAME, SAMPLE_RATE, AudioDevice, AudioDeviceError
from app.audio.measure import (
    Float64Array,
    Signal,
    dbfs,
    impulse_response,
    ir_delay_ms,
    ir_gain_db,
    log_sweep,
    power_db,
    rt60_ms,
    speech_like,
)
from app.calibration.report import Check, Progress, Report, no_progress

if TYPE_CHECKING:
    from app.settings import AudioSettings, Settings

log = logging.getLogger(__name__)

SWEEP_F0: Final = 60.0
"""Sweep start, Hz."""
SWEEP_F1: Final = 20_000.0
"""Sweep end, Hz."""
SWEEP_S: Final = 2.0
"""Sweep length, s."""
SWEEP_LEVELS_DBFS: Final = (-12.0, -24.0)
"""Sweep peak levels tried in turn, dBFS: the second only when the microphone clipped at the first."""
SILENCE_S: Final = 0.6
"""Silence recorded before the sweep for the noise floor, s."""
SETTLE_S: Final = 0.1
"""Start of that silence not used (the card settling, its first buffers), s."""
TAIL_S: Final = 1.2
"""Recording after the sweep ends: the longest loopback delay plus the reverberation, s."""
VERIFY_S: Final = 6.0
"""Far-end-only speech played to verify echo cancellation, s."""
VERIFY_LEAD_S: Final = 0.5
"""Silence before the verification's speech, s: AEC3 learns the room's noise before the echo comes."""
VERIFY_SKIP_S: Final = 1.0
"""ERLE is measured after this much of the verification (AEC3 converges within about a second), s."""
VERIFY_SEED: Final = 11
"""Which :func:`speech_like` utterance the verification plays: always the same one, like the sweep, so
that two calibrations differ only by the room. (AEC3's ERLE varies by a few dB from one utterance to
another; this one is the audio issue's own echo test's.)"""
SPEECH_DBFS: Final = -26.0
"""Nominal active speech level, dBFS: what the far talker's voice arrives at."""

ECHO_TARGET_DB: Final = -10.0
"""Target for the far talker's echo at the microphone relative to what was played, after both gains, dB."""
ECHO_TOLERANCE_DB: Final = 1.0
"""How far from :data:`ECHO_TARGET_DB` the levels check passes, dB."""
NOISE_REF_DBFS: Final = -60.0
"""A quiet microphone's noise floor is raised towards this, dBFS."""
NOISE_MAX_DBFS: Final = -50.0
"""Noise floor check: at most this, dBFS."""
PLAYBACK_GAIN_RANGE_DB: Final = (-20.0, 6.0)
"""What calibration may set ``audio.playback_gain_db`` to, dB."""
CAPTURE_GAIN_MAX_DB: Final = 20.0
"""Most calibration raises ``audio.capture_gain_db``, dB (it never lowers it below 0)."""
ERLE_TARGET_DB: Final = 30.0
"""Echo return loss enhancement after the first second, dB (the audio issue's target)."""
CLIP_PEAK: Final = 0.999
"""A microphone sample at or above this magnitude counts as clipped (−0.01 dBFS)."""
SILENT_DBFS: Final = -100.0
"""A microphone whose whole recording is below this RMS recorded silence, dBFS."""
ECHO_SNR_MIN_DB: Final = 30.0
"""The direct path must stand this far above the impulse response's noise for an echo to count, dB."""
LONG_RT60_MS: Final = 450.0
"""Reverberation longer than this, ms, outlasts what AEC3's filter models: the likely cause of a low ERLE
(measured on the synthetic room: about 33 dB at 300 ms, 26 dB at 600 ms)."""
DELAY_RANGE_MS: Final = (0.0, 300.0)
"""Plausible acoustic delays, ms: a speaker and microphone in one room, plus unreported buffering."""

HOLD_S: Final = 120.0
"""How long a running engine is asked to let go of its sound card at most, s (a calibration takes ~15)."""

FloatArray = npt.NDArray[np.float32]


# -- the measurement maths (sans-I/O) ---------------------------------------------------------------------


@dataclass(frozen=True)
class SweepAnalysis:
    """What one sweep recording says (:func:`analyse_sweep`)."""

    loopback_delay_ms: float
    """Speaker stream to microphone stream delay of the direct path, ms (sub-sample)."""
    echo_gain_db: float
    """Direct-path gain from the speaker's samples to the microphone's, over 200 Hz–8 kHz, dB."""
    echo_snr_db: float
    """Direct-path peak of the impulse response over its noise (RMS of the last fifth of the lags that saw
    the whole sweep), dB. Pure noise reads about 15 dB (the largest of many Gaussian samples)."""
    echo_level_dbfs: float
    """Microphone RMS while the sweep played, dBFS."""
    peak_dbfs: float
    """Largest microphone sample of the recording, dBFS (20·log10 |x|)."""
    clipped: bool
    """Some microphone sample reached :data:`CLIP_PEAK`."""
    rt60_ms: float
    """Reverberation time from the impulse response (Schroeder, T20), ms; NaN when it cannot be fitted."""


def peak_dbfs(x: Signal) -> float:
    """Largest absolute sample of ``x``, dBFS (−150 for digital silence)."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return 20.0 * math.log10(max(peak, 10.0**-7.5))


def analyse_sweep(
    recorded: Signal,
    *,
    level_dbfs: float,
    sweep: Float64Array | None = None,
    inverse: Float64Array | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> SweepAnalysis:
    """The impulse response of the loop and what it says, from ``recorded``: the microphone from the speaker
    sample where the unit-amplitude ``sweep`` started (played at ``level_dbfs`` peak) until the room went
    quiet (at least 100 ms after the sweep, the longest loopback delay plus the reverberation; lags up to
    that length are analysed). ``sweep``/``inverse`` default to :func:`log_sweep` with this module's
    parameters."""
    if sweep is None or inverse is None:
        sweep, inverse = log_sweep(SWEEP_F0, SWEEP_F1, SWEEP_S, sample_rate=sample_rate)
    amplitude = 10.0 ** (level_dbfs / 20.0)
    valid = len(recorded) - sweep.size
    if valid < sample_rate // 10:
        raise ValueError("analyse_sweep: the recording must go on at least 100 ms after the sweep")
    # Only lags up to the recording's length past the sweep see the whole sweep; beyond, the deconvolution
    # runs off the end of the recording and its noise fades out, which would flatter the noise estimate.
    h = impulse_response(sweep, recorded, inverse=inverse)[:valid] / amplitude
    peak_at = int(np.argmax(np.abs(h)))
    noise = h[valid - valid // 5 :]
    noise_rms = math.sqrt(float(np.mean(noise * noise))) if noise.size else 0.0
    snr = 20.0 * math.log10(max(float(abs(h[peak_at])), 1e-30) / max(noise_rms, 1e-30))
    during = np.asarray(recorded)[: sweep.size]
    return SweepAnalysis(
        loopback_delay_ms=ir_delay_ms(h, sample_rate=sample_rate),
        echo_gain_db=ir_gain_db(h, sample_rate=sample_rate),
        echo_snr_db=snr,
        echo_level_dbfs=dbfs(during),
        peak_dbfs=peak_dbfs(recorded),
        clipped=bool(np.max(np.abs(recorded)) >= CLIP_PEAK) if np.asarray(recorded).size else False,
        rt60_ms=rt60_ms(h, sample_rate=sample_rate),
    )


def acoustic_delay_ms(
    loopback_ms: float, *, period_ms: float, output_latency_ms: float, input_latency_ms: float
) -> float:
    """The ``audio.acoustic_delay_ms`` that makes the engine's AEC3 ``stream_delay_ms`` (acoustic + period +
    output + input latency) equal the measured loopback delay, ms (may be negative: see :func:`calibrate`)."""
    return loopback_ms - period_ms - output_latency_ms - input_latency_ms


def choose_gains(echo_gain_db: float, noise_floor_dbfs: float) -> tuple[float, float]:
    """``(playback_gain_db, capture_gain_db)`` towards the targets (see the module docstring), rounded to
    0.1 dB: the capture gain raises a quiet microphone's noise floor towards :data:`NOISE_REF_DBFS` (never
    lowers it), then the playback gain brings the echo at the microphone to :data:`ECHO_TARGET_DB`."""
    capture = min(max(NOISE_REF_DBFS - noise_floor_dbfs, 0.0), CAPTURE_GAIN_MAX_DB)
    lo, hi = PLAYBACK_GAIN_RANGE_DB
    playback = min(max(ECHO_TARGET_DB - echo_gain_db - capture, lo), hi)
    return round(playback, 1) + 0.0, round(capture, 1) + 0.0  # + 0.0: no −0.0


@dataclass(frozen=True)
class Erle:
    """Echo cancellation over a recording of far-end-only sound (:func:`measure_erle`)."""

    erle_db: float
    """10·log10(microphone power / output power) over the measured stretch, dB."""
    echo_to_noise_db: float
    """Microphone power over the noise floor's power in that stretch, dB: the most ERLE that can show."""


def measure_erle(
    mic: FloatArray,
    out: FloatArray,
    noise_floor_dbfs: float,
    *,
    skip: int = round(VERIFY_SKIP_S * SAMPLE_RATE),
) -> Erle:
    """ERLE of ``out`` (the canceller's output) against ``mic`` (its input), from sample ``skip`` on, over
    the 10 ms frames where the microphone is at least 10 dB above ``noise_floor_dbfs`` (the far talker's
    pauses would only measure the noise twice). Shapes ``(n, channels)``, ``n`` a multiple of 480."""
    n = (min(len(mic), len(out)) - skip) // FRAME * FRAME
    if n <= 0:
        raise ValueError("measure_erle: nothing after the skipped part")
    m = np.asarray(mic[skip : skip + n], dtype=np.float64).reshape(n // FRAME, -1)
    o = np.asarray(out[skip : skip + n], dtype=np.float64).reshape(n // FRAME, -1)
    pm = np.mean(m * m, axis=1)
    po = np.mean(o * o, axis=1)
    active = pm >= 10.0 ** ((noise_floor_dbfs + 10.0) / 10.0)
    if not np.any(active):
        return Erle(0.0, power_db(float(np.mean(pm))) - noise_floor_dbfs)
    mic_p, out_p = float(np.mean(pm[active])), float(np.mean(po[active]))
    return Erle(power_db(mic_p) - power_db(out_p), power_db(mic_p) - noise_floor_dbfs)


# -- the runner (drives a sound card) ---------------------------------------------------------------------


class _Session:
    """Play ``play`` (float32 ``(n, CHANNELS)``, n a multiple of the 10 ms frame) once and record the
    microphone at the same stream positions.

    :meth:`callback` runs on the device's thread: it copies the speaker block, and the microphone block when
    one comes (every 10 ms), between preallocated arrays, stores their time stamps, and notes a gap in the
    stream (the device lost and reopened, or an ``index`` that skips). After the last block it plays
    silence and sets :attr:`done`.
    """

    def __init__(self, play: FloatArray, period: int, capture_gain_db: float = 0.0) -> None:
        if len(play) % FRAME:
            raise ValueError(f"the signal must be whole frames of {FRAME} samples, not {len(play)}")
        self.play = play
        self.period = period
        self.blocks = len(play) // period
        self.mic = np.zeros_like(play)
        self.capture_ns = np.zeros(self.blocks, np.int64)
        """ADC time of each microphone block's first sample, at the block of its first period; 0 elsewhere."""
        self.playout_ns = np.zeros(self.blocks, np.int64)
        self.gain = np.float32(10.0 ** (capture_gain_db / 20.0))
        self.scaled = capture_gain_db != 0.0
        self.count = 0
        self.first_index = -1
        self.gaps = 0
        self.done = threading.Event()

    def callback(
        self, mic: FloatArray, speaker: FloatArray, index: int, capture_ns: int, playout_ns: int
    ) -> None:
        k = self.count
        if k >= self.blocks:
            speaker.fill(0.0)
            return
        if self.first_index < 0:
            self.first_index = index
        elif index != self.first_index + k:
            self.gaps += 1
        lo = k * self.period
        np.copyto(speaker, self.play[lo : lo + self.period])
        self.playout_ns[k] = playout_ns
        # The microphone block ends with this period: it sits at the same stream positions as what was played.
        hi = (index + 1 - self.first_index) * self.period
        start = hi - len(mic)
        if len(mic) and start >= 0 and hi <= len(self.mic):
            kept = self.mic[start:hi]
            np.copyto(kept, mic)
            if self.scaled:
                kept *= self.gain
                np.clip(kept, -1.0, 1.0, out=kept)
            self.capture_ns[start // self.period] = capture_ns
        self.count = k + 1
        if k + 1 == self.blocks:
            self.done.set()


@dataclass(frozen=True)
class Recording:
    """One session's result (:func:`record`)."""

    mic: FloatArray
    """The microphone, aligned sample for sample with what was played (same stream positions)."""
    input_latency_ms: float
    output_latency_ms: float
    """The latencies the device reported while open, ms."""
    stamped_delay_ms: float
    """Median of (speaker block's DAC time − microphone block's ADC time) over the session, ms: the
    device's own idea of its loopback, without the room."""
    problem: str | None
    """Why the recording cannot be trusted (a dropout, a stall), or None."""


def record(
    device: AudioDevice,
    play: FloatArray,
    *,
    capture_gain_db: float = 0.0,
    progress: Progress = no_progress,
    span: tuple[float, float] = (0.0, 1.0),
    what: str = "measuring",
) -> Recording:
    """Start ``device``, play ``play`` (padded to whole frames) and record as long, stop; the recording.

    Raises :class:`AudioDeviceError` when the device does not open. Progress goes from ``span[0]`` to
    ``span[1]`` with ``what``. Calling thread; it waits for the device.
    """
    period = device.period
    padded = np.zeros((-(-len(play) // FRAME) * FRAME, CHANNELS), np.float32)
    padded[: len(play)] = play
    session = _Session(padded, period, capture_gain_db)
    seconds = len(padded) / SAMPLE_RATE
    before = device.stats()
    device.start(session.callback)
    try:
        deadline = time.monotonic() + 2.0 * seconds + 5.0
        while not session.done.wait(0.25):
            progress(span[0] + (span[1] - span[0]) * session.count / session.blocks, what)
            if time.monotonic() > deadline:
                break
        in_ms, out_ms = device.input_latency_ms, device.output_latency_ms
    finally:
        device.stop()
    after = device.stats()
    problem = None
    xruns = sum(after[k] - before[k] for k in ("input_overflows", "output_underflows", "reopened"))
    if not session.done.is_set():
        problem = (
            f"the sound card '{device.name}' stopped delivering audio during the measurement "
            f"({session.count} of {session.blocks} blocks in {2.0 * seconds + 5.0:.0f} s)"
        )
    elif session.gaps or xruns:
        problem = (
            f"the sound card '{device.name}' dropped or skipped audio during the measurement "
            f"({session.gaps + xruns} times); stop whatever else uses it or loads the machine, and run again"
        )
    # Each microphone block against the speaker block filled with its first period (as the engine pairs them).
    got = session.capture_ns[: session.count] != 0
    stamped = (session.playout_ns[: session.count][got] - session.capture_ns[: session.count][got]) / 1e6
    return Recording(
        session.mic,
        float(in_ms),
        float(out_ms),
        float(np.median(stamped)) if stamped.size else math.nan,
        problem,
    )


def open_for(settings: Settings, *, realtime: bool = False) -> AudioDevice:
    """The sound card ``settings.audio`` names, as the engine opens it; the synthetic one in a quiet room
    (nobody talking), on its virtual clock unless ``realtime``. Raises AudioDeviceError."""
    from app.audio.device import open_configured
    from app.audio.room import RoomConfig

    a = settings.audio
    room = RoomConfig(
        echo_delay_ms=a.room_echo_delay_ms,
        rt60_ms=a.room_rt60_ms,
        echo_gain_db=a.room_echo_gain_db,
        noise_dbfs=a.room_noise_dbfs,
        talker="silence",
        seed=settings.capture.seed,
    )
    return open_configured(a, room, realtime=realtime)


def _stereo(x: Float64Array | FloatArray, gain: float) -> FloatArray:
    out = np.empty((len(x), CHANNELS), np.float32)
    out[:, 0] = np.clip(np.asarray(x, np.float64) * gain, -1.0, 1.0)
    out[:, 1] = out[:, 0]
    return out


@dataclass(frozen=True)
class Verification:
    """What :func:`verify` measured."""

    erle: Erle
    stream_delay_ms: int
    """The AEC3 delay hint used, ms (as the engine would set it)."""
    mic_peak_dbfs: float
    recording: Recording


def verify(
    device: AudioDevice,
    audio: AudioSettings,
    *,
    acoustic_ms: float,
    playback_gain_db: float,
    capture_gain_db: float,
    noise_floor_dbfs: float,
    seed: int,
    progress: Progress = no_progress,
    span: tuple[float, float] = (0.0, 1.0),
) -> Verification:
    """Play far-end-only speech with the chosen gains, run AEC3 (set up as the engine sets it up, from
    ``acoustic_ms``) over the recording and measure ERLE after the first second. Raises AudioDeviceError."""
    from app.audio.processing import AudioProcessing

    lead = round(VERIFY_LEAD_S * SAMPLE_RATE)
    speech = speech_like(VERIFY_S, VERIFY_SEED, level_dbfs=SPEECH_DBFS)
    reference = np.zeros((lead + len(speech), CHANNELS), np.float32)
    reference[lead:] = _stereo(speech, 1.0)
    far = np.zeros_like(reference)
    far[lead:] = _stereo(speech, 10.0 ** (playback_gain_db / 20.0))
    rec = record(device, far, capture_gain_db=capture_gain_db, progress=progress, span=span, what="verifying")
    period_ms = device.period * 1000.0 / SAMPLE_RATE
    stream_delay = round(acoustic_ms + period_ms + rec.output_latency_ms + rec.input_latency_ms)
    apm = AudioProcessing(
        echo_cancellation=True,
        noise_suppression=audio.noise_suppression,
        gain_control=False,
        stream_delay_ms=max(0, min(1000, stream_delay)),
    )
    n = len(far) // FRAME * FRAME
    out = np.zeros((n, CHANNELS), np.float32)
    for lo in range(0, n, FRAME):
        # The reference before the playback gain, as the engine gives it (see AudioEngine.callback).
        out[lo : lo + FRAME] = apm.process(rec.mic[lo : lo + FRAME], reference[lo : lo + FRAME])
    # Room noise is raised by the capture gain along with everything else.
    erle = measure_erle(
        rec.mic[:n], out, noise_floor_dbfs + capture_gain_db, skip=lead + round(VERIFY_SKIP_S * SAMPLE_RATE)
    )
    return Verification(erle, stream_delay, peak_dbfs(rec.mic), rec)


# -- the step ---------------------------------------------------------------------------------------------


def calibrate(settings: Settings, progress: Progress = no_progress) -> Report:
    """The audio calibration step (see the module docstring): a report, never an exception for what it finds.

    ``apply``: ``acoustic_delay_ms`` (ms, 0.1 ms), ``playback_gain_db`` and ``capture_gain_db`` (dB, 0.1
    dB), when the sweep found the echo.
    """
    return run(settings, progress)


def run(
    settings: Settings,
    progress: Progress = no_progress,
    *,
    device: AudioDevice | None = None,
    realtime: bool = False,
) -> Report:
    """:func:`calibrate` with the device given (tests: a synthetic room that differs from the settings')
    or opened from the settings (the synthetic one on its virtual clock unless ``realtime``)."""
    # A running engine holds a real sound card: ask it to let go for the measurement (a synthetic card is
    # each process's own room).
    held = device is None and settings.audio.backend == "portaudio" and _engine_hold(settings, True)
    try:
        return _run(settings, progress, device, realtime)
    finally:
        if held:
            _engine_hold(settings, False)


def _engine_hold(settings: Settings, on: bool) -> bool:
    """Ask the engine on ``settings.engine.control_socket`` to let go of (``on``) or take back its sound
    card; whether it did. No engine running is not an error: the card is free."""
    from app.control import ControlClientError, request

    path = settings.engine.control_socket
    if not path.exists():
        return False
    try:
        resp = request(path, "audio_hold", timeout=10.0, on=on, seconds=HOLD_S)
    except ControlClientError as exc:
        log.info("calibrate audio: no engine to ask for the sound card (%s)", exc)
        return False
    if not resp.get("ok"):
        log.warning(
            "calibrate audio: the engine did not %s the sound card: %s",
            "free" if on else "take back",
            resp.get("error"),
        )
        return False
    return bool(resp.get("held")) if on else True


def _run(settings: Settings, progress: Progress, device: AudioDevice | None, realtime: bool) -> Report:
    started = time.monotonic()
    a = settings.audio
    progress(0.0, "opening the sound card")
    try:
        dev = device if device is not None else open_for(settings, realtime=realtime)
    except AudioDeviceError as exc:
        return Report("audio", problems=(f"the sound card could not be opened: {exc}",))
    details: dict[str, Any] = {
        "device": dev.name,
        "period_ms": dev.period * 1000.0 / SAMPLE_RATE,
        "input_device": a.input_device,
        "output_device": a.output_device,
    }
    mic_name = a.input_device or ("the default microphone" if a.backend == "portaudio" else dev.name)
    speaker_name = a.output_device or ("the default speaker" if a.backend == "portaudio" else dev.name)
    sweep, inverse = log_sweep(SWEEP_F0, SWEEP_F1, SWEEP_S)
    silence_n = round(SILENCE_S * SAMPLE_RATE)
    tail_n = round(TAIL_S * SAMPLE_RATE)
    checks: list[Check] = []
    problems: list[str] = []

    # 1. Silence, then the sweep (again 12 dB lower if the microphone clipped).
    analysis: SweepAnalysis | None = None
    noise_floor = math.nan
    rec: Recording | None = None
    level = SWEEP_LEVELS_DBFS[0]
    for attempt, level in enumerate(SWEEP_LEVELS_DBFS):
        play = np.zeros((silence_n + sweep.size + tail_n, CHANNELS), np.float32)
        play[silence_n : silence_n + sweep.size] = _stereo(sweep, 10.0 ** (level / 20.0))
        span = (0.05 + 0.2 * attempt, 0.25 + 0.2 * attempt)
        try:
            rec = record(
                dev, play, progress=progress, span=span, what=f"playing the sweep at {level:.0f} dBFS"
            )
        except AudioDeviceError as exc:
            return Report("audio", problems=(f"the sound card could not be opened: {exc}",), details=details)
        if rec.problem is not None:
            return Report("audio", problems=(rec.problem,), details=details)
        progress(span[1], "analysing the sweep")
        noise_floor = dbfs(rec.mic[round(SETTLE_S * SAMPLE_RATE) : silence_n])
        if dbfs(rec.mic) < SILENT_DBFS:
            problems.append(
                f"the microphone '{mic_name}' recorded silence ({dbfs(rec.mic):.0f} dBFS) while the sweep "
                f"played: check it is connected and not muted, and that audio.input_device names it"
            )
            checks.append(Check("noise floor", noise_floor, "dBFS", f"≤ {NOISE_MAX_DBFS:.0f} dBFS", False))
            return Report("audio", checks=tuple(checks), problems=tuple(problems), details=details)
        analysis = analyse_sweep(rec.mic[silence_n:], level_dbfs=level, sweep=sweep, inverse=inverse)
        if not analysis.clipped:
            break
        log.info("calibrate audio: the microphone clipped with the sweep at %.0f dBFS", level)
    assert analysis is not None and rec is not None
    details.update(
        sweep_dbfs=level,
        input_latency_ms=rec.input_latency_ms,
        output_latency_ms=rec.output_latency_ms,
        loopback_delay_ms=round(analysis.loopback_delay_ms, 3),
        device_stamped_delay_ms=round(rec.stamped_delay_ms, 3),
        echo_snr_db=round(analysis.echo_snr_db, 1),
        echo_level_dbfs=round(analysis.echo_level_dbfs, 1),
    )
    checks.append(
        Check(
            "noise floor", noise_floor, "dBFS", f"≤ {NOISE_MAX_DBFS:.0f} dBFS", noise_floor <= NOISE_MAX_DBFS
        )
    )
    checks.append(
        Check("microphone peak", analysis.peak_dbfs, "dBFS", "< 0 dBFS (no clipping)", not analysis.clipped)
    )
    if noise_floor > NOISE_MAX_DBFS:
        problems.append(
            f"the noise floor at the microphone '{mic_name}' is {noise_floor:.0f} dBFS (at most "
            f"{NOISE_MAX_DBFS:.0f}): keep the room quiet while calibrating, or lower the microphone's gain "
            "if it hisses"
        )
    if analysis.clipped:
        problems.append(
            f"the microphone '{mic_name}' clipped even with the sweep at {level:.0f} dBFS: turn the "
            f"speaker's volume or the microphone's gain down (in the sound card's mixer) and run again"
        )
    if analysis.echo_snr_db < ECHO_SNR_MIN_DB:
        problems.append(
            f"no echo of the sweep reached the microphone '{mic_name}' (the impulse response's peak is "
            f"{analysis.echo_snr_db:.0f} dB over its noise, {ECHO_SNR_MIN_DB:.0f} needed): check the speaker "
            f"'{speaker_name}' is on, connected, not muted and turned up, and within a few metres of the "
            "microphone"
        )
        checks.append(Check("echo found", "no", target="yes", passed=False))
        return Report("audio", checks=tuple(checks), problems=tuple(problems), details=details)

    # 2. Delay and levels.
    period_ms = dev.period * 1000.0 / SAMPLE_RATE
    acoustic = acoustic_delay_ms(
        analysis.loopback_delay_ms,
        period_ms=period_ms,
        output_latency_ms=rec.output_latency_ms,
        input_latency_ms=rec.input_latency_ms,
    )
    lo_ms, hi_ms = DELAY_RANGE_MS
    delay_ok = lo_ms <= acoustic <= hi_ms
    checks.append(Check("acoustic delay", acoustic, "ms", f"{lo_ms:.0f}–{hi_ms:.0f} ms", delay_ok))
    if not delay_ok:
        problems.append(
            f"the acoustic delay came out {acoustic:.1f} ms (loopback {analysis.loopback_delay_ms:.1f} ms, "
            f"less {period_ms:g} ms period and {rec.output_latency_ms:.1f} + {rec.input_latency_ms:.1f} ms "
            f"the card reports), outside {lo_ms:.0f}–{hi_ms:.0f} ms: the card's reported latency is wrong or "
            "a strong reflection was taken for the direct sound; move the microphone nearer the speaker"
        )
    checks.append(Check("echo path gain", analysis.echo_gain_db, "dB"))
    checks.append(Check("reverberation time (RT60)", analysis.rt60_ms, "ms"))
    playback, capture = choose_gains(analysis.echo_gain_db, noise_floor)
    loop = analysis.echo_gain_db + playback + capture
    level_ok = abs(loop - ECHO_TARGET_DB) <= ECHO_TOLERANCE_DB
    checks.append(Check("playback gain", playback, "dB"))
    checks.append(Check("capture gain", capture, "dB"))
    checks.append(
        Check(
            "echo at the microphone",
            loop,
            "dB",
            f"{ECHO_TARGET_DB:.0f} ± {ECHO_TOLERANCE_DB:.0f} dB",
            level_ok,
        )
    )
    if not level_ok:
        which = "quiet" if loop < ECHO_TARGET_DB else "loud"
        knob = "up" if loop < ECHO_TARGET_DB else "down"
        problems.append(
            f"the speaker '{speaker_name}' is too {which} at the microphone (echo path "
            f"{analysis.echo_gain_db:.0f} dB; with the gains at their limits the echo is {loop:.0f} dB, "
            f"target {ECHO_TARGET_DB:.0f}): turn the speaker's volume {knob} in the sound card's mixer"
        )
    apply: dict[str, Any] = {
        "acoustic_delay_ms": round(min(max(acoustic, 0.0), 500.0), 1),
        "playback_gain_db": playback,
        "capture_gain_db": capture,
    }

    # 3. Verify echo cancellation with those values.
    if not a.echo_cancellation:
        checks.append(Check("ERLE", None, "dB", "echo cancellation is off in the settings"))
    else:
        try:
            v = verify(
                dev,
                a,
                acoustic_ms=apply["acoustic_delay_ms"],
                playback_gain_db=playback,
                capture_gain_db=capture,
                noise_floor_dbfs=noise_floor,
                seed=settings.capture.seed,
                progress=progress,
                span=(0.5, 0.95),
            )
        except AudioDeviceError as exc:
            problems.append(f"the sound card could not be opened again to verify: {exc}")
        else:
            if v.recording.problem is not None:
                problems.append(v.recording.problem)
            details.update(
                stream_delay_ms=v.stream_delay_ms,
                verify_echo_to_noise_db=round(v.erle.echo_to_noise_db, 1),
                verify_mic_peak_dbfs=round(v.mic_peak_dbfs, 1),
            )
            erle_ok = v.erle.erle_db >= ERLE_TARGET_DB
            checks.append(Check("ERLE", v.erle.erle_db, "dB", f"≥ {ERLE_TARGET_DB:.0f} dB", erle_ok))
            if not erle_ok:
                if analysis.rt60_ms > LONG_RT60_MS:
                    problems.append(
                        f"echo cancellation removed only {v.erle.erle_db:.0f} dB of echo (target "
                        f"{ERLE_TARGET_DB:.0f}): the room reverberates for {analysis.rt60_ms:.0f} ms, "
                        "longer than the canceller's filter covers; soften the room near the doorway "
                        "(curtains, a rug)"
                    )
                elif v.erle.echo_to_noise_db < ERLE_TARGET_DB:
                    problems.append(
                        f"echo cancellation removed {v.erle.erle_db:.0f} dB of echo, but the echo stood only "
                        f"{v.erle.echo_to_noise_db:.0f} dB over the room's noise, which caps what can be "
                        "measured: calibrate in a quieter room"
                    )
                else:
                    problems.append(
                        f"echo cancellation removed only {v.erle.erle_db:.0f} dB of echo "
                        f"(target {ERLE_TARGET_DB:.0f}): the echo path may be changing (something moving "
                        "near the speaker) or the speaker distorts; turn it down and run again"
                    )
    details["seconds"] = round(time.monotonic() - started, 2)
    progress(1.0, "done")
    log.info(
        "calibrate audio: delay %.1f ms, echo %.1f dB, noise %.1f dBFS, gains %+.1f/%+.1f dB, %s",
        acoustic,
        analysis.echo_gain_db,
        noise_floor,
        playback,
        capture,
        "; ".join(problems) or "passed",
    )
    return Report("audio", checks=tuple(checks), apply=apply, problems=tuple(problems), details=details)


# -- applying a stored calibration ------------------------------------------------------------------------

APPLIED_KEYS: Final = ("acoustic_delay_ms", "playback_gain_db", "capture_gain_db")
"""The ``audio`` settings a stored audio calibration sets."""


def apply_to(audio: AudioSettings, values: Mapping[str, Any]) -> AudioSettings:
    """``audio`` with the stored calibration ``values`` in place of its defaults (engine start).

    A key the settings file (or environment) sets explicitly wins over the calibration; a value the schema
    refuses (out of range, not a number) is skipped with a warning. Logs what was applied.
    """
    from pydantic import ValidationError

    from app.settings import AudioSettings

    chosen = {key: values[key] for key in APPLIED_KEYS if key in values and key not in audio.model_fields_set}
    overridden = [key for key in APPLIED_KEYS if key in values and key in audio.model_fields_set]
    if overridden:
        log.info("calibration: the settings override the calibrated %s", ", ".join(overridden))
    good: dict[str, Any] = {}
    for key, value in chosen.items():
        try:
            AudioSettings.model_validate({key: value})
        except ValidationError as exc:
            log.warning("calibration: the stored %s = %r is not usable (%s); not applied", key, value, exc)
            continue
        good[key] = value
    if not good:
        return audio
    data = audio.model_dump()
    data.update(good)
    updated = AudioSettings.model_validate(data)
    log.info(
        "calibration applied: %s",
        ", ".join(f"{k} = {getattr(updated, k)}" for k in APPLIED_KEYS if k in good),
    )
    return updated
