"""Signal measurements: level, echo return loss enhancement, near-talker loss, delay, room impulse response.

Pure numpy and sans-I/O: every function takes arrays and returns numbers or arrays, so the echo-cancellation
tests, the audio benchmark and the installer's acoustic calibration all measure the same way. Nothing here
runs on the real-time path (:mod:`app.audio.processing` does its own cheap per-block metering).

Units: levels are dBFS, the RMS of float samples relative to 1.0 (so a full-scale sine is −3.01 dBFS and
digital silence reads :data:`FLOOR_DBFS`, never −inf); delays and times are ms; sample rates Hz. Arrays may
be mono ``(n,)`` or multichannel ``(n, channels)`` with time on axis 0; where a function needs one signal it
says how it folds channels.

Theory of the calibration helpers. :func:`estimate_delay_ms` cross-correlates through the FFT and refines
the peak with a parabola through its two neighbours, which is sub-sample for broadband signals. For an
impulse response, :func:`log_sweep` makes Farina's exponential sine sweep and its inverse filter (the sweep
time-reversed with a −6 dB/octave envelope, so sweep ∗ inverse is a band-limited unit impulse);
:func:`impulse_response` deconvolves a recording with that inverse filter (or, without one, by regularised
spectral division); :func:`ir_delay_ms`, :func:`ir_gain_db` and :func:`rt60_ms` read the direct path's delay
and gain and the reverberation time (Schroeder backward integration) off the result. :func:`speech_like` is
the deterministic speech stand-in the tests use in place of recorded voices.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 48_000
"""Doorway's audio rate (Hz); the default for every function that needs one."""
FLOOR_DBFS = -150.0
"""What :func:`dbfs` returns for silence, and the floor of every level and loss computed here."""

_FLOOR_POWER = 10.0 ** (FLOOR_DBFS / 10.0)

Signal = npt.NDArray[np.floating[Any]]
"""A float signal, mono ``(n,)`` or multichannel ``(n, channels)``."""
Float64Array = npt.NDArray[np.float64]


def _power(x: Signal) -> float:
    """Mean square over all samples and channels (float64 accumulation)."""
    if x.size == 0:
        return 0.0
    flat = np.asarray(x, dtype=np.float64).ravel()
    return float(np.dot(flat, flat)) / flat.size


def power_db(power: float) -> float:
    """A mean-square power (full scale = 1.0) in dB, floored at :data:`FLOOR_DBFS`."""
    return 10.0 * math.log10(max(power, _FLOOR_POWER))


def dbfs(x: Signal) -> float:
    """RMS level of ``x`` in dBFS over all samples and channels; silence gives :data:`FLOOR_DBFS`."""
    return power_db(_power(x))


def erle_db(mic: Signal, out: Signal) -> float:
    """Echo return loss enhancement, 10·log10(P_mic / P_out), in dB.

    Meaningful over stretches where only the far end talks: then ``mic`` is echo (plus room noise) and
    ``out`` is what the canceller let through. Both powers are floored at :data:`FLOOR_DBFS`, so the
    result is finite even for silence. Room noise that the processing keeps (or comfort noise it adds)
    counts as residual, which caps the measurable ERLE at the echo-to-noise ratio of ``mic``.
    """
    return power_db(_power(mic)) - power_db(_power(out))


def near_loss_db(out: Signal, clean_near: Signal, *, lag: int = 0) -> float:
    """How much the near talker is attenuated in ``out``: −20·log10(g) dB, g the least-squares gain.

    ``g = <out, near> / <near, near>`` is the gain of the part of ``out`` that is a scaled copy of the
    clean near-talker signal (as it reached the microphone). Residual echo and noise are uncorrelated with
    the near talker, so they do not inflate g: this measures only what happened to the near talker, not how
    clean the output is. ``lag`` (samples, ≥ 0) is the processing latency: ``out[lag:]`` is compared with
    ``clean_near[:-lag]``. Shapes must match; channels are pooled. A g ≤ 0 (no near talker left at all)
    reads as −:data:`FLOOR_DBFS` (150 dB).
    """
    if out.shape != clean_near.shape:
        raise ValueError(f"near_loss_db: shapes differ, {out.shape} vs {clean_near.shape}")
    if lag < 0 or lag >= out.shape[0]:
        raise ValueError(f"near_loss_db: lag {lag} outside 0..{out.shape[0] - 1}")
    o = np.asarray(out[lag:], dtype=np.float64).ravel()
    n = np.asarray(clean_near[: clean_near.shape[0] - lag], dtype=np.float64).ravel()
    nn = float(np.dot(n, n))
    if nn <= 0.0:
        raise ValueError("near_loss_db: the clean near signal is silent")
    g = float(np.dot(o, n)) / nn
    if g <= 10.0 ** (FLOOR_DBFS / 20.0):
        return -FLOOR_DBFS
    return -20.0 * math.log10(g)


def _mono(x: Signal) -> Float64Array:
    """``x`` as a float64 mono signal: multichannel input is averaged over its channels."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 2:
        return np.asarray(a.mean(axis=1), dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"expected (n,) or (n, channels), got shape {a.shape}")
    return a


def _parabolic_offset(y_minus: float, y0: float, y_plus: float) -> float:
    """Vertex offset (−0.5..0.5 samples) of the parabola through three points around a peak at 0."""
    denom = y_minus - 2.0 * y0 + y_plus
    if denom >= 0.0:
        return 0.0
    return max(-0.5, min(0.5, 0.5 * (y_minus - y_plus) / denom))


def _fft_size(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def estimate_delay_ms(
    reference: Signal,
    recorded: Signal,
    max_ms: float,
    *,
    sample_rate: int = SAMPLE_RATE,
    phat: bool = False,
) -> float:
    """By how much ``recorded`` lags ``reference`` (ms, 0..``max_ms``), from the cross-correlation peak.

    The cross-correlation is computed with one FFT (no wrap-around), the largest absolute value over lags
    0..max_ms is taken (so a polarity-inverted loudspeaker still works) and refined to a fraction of a
    sample by a parabola through the peak and its neighbours. ``phat`` whitens the cross-spectrum
    (GCC-PHAT): a sharper peak that resists strong low-frequency resonances and reverberation, at some cost
    in noise. Multichannel inputs are averaged to mono first. Calibration plays a known signal and calls
    this on the microphone recording.
    """
    ref = _mono(reference)
    rec = _mono(recorded)
    max_lag = int(max_ms * sample_rate / 1000.0)
    if max_lag < 1 or ref.size == 0 or rec.size == 0:
        raise ValueError("estimate_delay_ms: need non-empty signals and max_ms of at least one sample")
    n = _fft_size(ref.size + rec.size)
    cross = np.fft.rfft(rec, n) * np.conj(np.fft.rfft(ref, n))
    if phat:
        cross /= np.maximum(np.abs(cross), 1e-12 * float(np.max(np.abs(cross))) + 1e-300)
    corr = np.abs(np.fft.irfft(cross, n))
    k = int(np.argmax(corr[: max_lag + 1]))
    # corr[-1] is lag −1 (circular), which is the right left-hand neighbour for a peak at lag 0.
    offset = _parabolic_offset(float(corr[k - 1]), float(corr[k]), float(corr[k + 1]))
    return (k + offset) * 1000.0 / sample_rate


def log_sweep(
    f0: float,
    f1: float,
    seconds: float,
    *,
    sample_rate: int = SAMPLE_RATE,
    fade_ms: float = 10.0,
) -> tuple[Float64Array, Float64Array]:
    """Farina's exponential sine sweep from ``f0`` to ``f1`` Hz, and its inverse filter.

    Returns ``(sweep, inverse)``, both ``seconds`` long and float64. The sweep has unit amplitude (scale it
    for playback) and raised-cosine fades of ``fade_ms`` at both ends against clicks. The inverse is the
    sweep time-reversed with an exp(−t/L) envelope (−6 dB/octave, undoing the sweep's pink spectrum),
    scaled so that ``sweep ∗ inverse`` has unit gain in the middle of the band and peaks at sample
    ``len(sweep) − 1``. Harmonic distortion of the loudspeaker lands before that peak, where
    :func:`impulse_response` discards it.
    """
    if not 0.0 < f0 < f1 <= sample_rate / 2:
        raise ValueError(f"log_sweep: need 0 < f0 < f1 <= {sample_rate / 2} Hz, got {f0}, {f1}")
    n = round(seconds * sample_rate)
    t = np.arange(n, dtype=np.float64) / sample_rate
    rate = math.log(f1 / f0)
    big_l = seconds / rate
    sweep = np.sin(2.0 * math.pi * f0 * big_l * (np.exp(t / big_l) - 1.0))
    fade = min(int(fade_ms * sample_rate / 1000.0), n // 4)
    if fade > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
        sweep[:fade] *= ramp
        sweep[n - fade :] *= ramp[::-1]
    inverse = sweep[::-1] * np.exp(-t / big_l)
    # Normalise on the magnitude of sweep ∗ inverse at the band's geometric centre.
    size = _fft_size(2 * n)
    spectrum = np.fft.rfft(sweep, size) * np.fft.rfft(inverse, size)
    centre = round(math.sqrt(f0 * f1) * size / sample_rate)
    band = np.abs(spectrum[max(1, centre - 8) : centre + 9])
    inverse /= float(np.mean(band))
    return sweep, np.ascontiguousarray(inverse)


def impulse_response(
    sweep: Signal,
    recorded: Signal,
    *,
    inverse: Signal | None = None,
    regularization: float = 1e-6,
) -> Float64Array:
    """The impulse response from ``sweep`` (as played) to ``recorded`` (as captured), index 0 = no delay.

    With ``inverse`` (from :func:`log_sweep`) this is Farina's method: the recording is convolved with the
    inverse filter and the part from the linear-response peak onwards is kept. Without it, the response is
    ``R·S* / (|S|² + ε)`` (regularised spectral division, ε = ``regularization`` × max |S|²), which works
    for any broadband excitation. Both return ``len(recorded)`` samples (float64); multichannel inputs are
    averaged to mono. The recording must run on until the room has gone quiet (at least RT60 past the end
    of the sweep) or the tail is cut.
    """
    s = _mono(sweep)
    r = _mono(recorded)
    size = _fft_size(s.size + r.size)
    if inverse is not None:
        inv = _mono(inverse)
        full = np.fft.irfft(np.fft.rfft(r, size) * np.fft.rfft(inv, size), size)
        start = inv.size - 1
        return np.ascontiguousarray(full[start : start + r.size])
    spec_s = np.fft.rfft(s, size)
    power = np.abs(spec_s) ** 2
    eps = regularization * float(np.max(power))
    h = np.fft.irfft(np.fft.rfft(r, size) * np.conj(spec_s) / (power + eps), size)
    return np.ascontiguousarray(h[: r.size])


def ir_delay_ms(ir: Signal, *, sample_rate: int = SAMPLE_RATE) -> float:
    """Delay of the direct path (ms): the largest absolute sample of ``ir``, refined by a parabola.

    Assumes the direct sound is the strongest arrival, true for a loudspeaker and microphone in line of
    sight; a strong early reflection would win otherwise.
    """
    h = np.abs(_mono(ir))
    k = int(np.argmax(h))
    if 0 < k < h.size - 1:
        k_f = k + _parabolic_offset(float(h[k - 1]), float(h[k]), float(h[k + 1]))
    else:
        k_f = float(k)
    return k_f * 1000.0 / sample_rate


def ir_gain_db(
    ir: Signal,
    *,
    sample_rate: int = SAMPLE_RATE,
    window_ms: float = 2.0,
    band_hz: tuple[float, float] = (200.0, 8000.0),
) -> float:
    """Gain of the direct path (dB): power-averaged magnitude response of the direct sound over ``band_hz``.

    The direct sound is ``ir`` within ±``window_ms`` of its peak (flat-topped, with short raised-cosine
    edges). Averaging over a band rather than reading the peak sample makes the answer independent of
    where the peak falls between samples and of the measurement bandwidth; reflections inside the window
    add their energy (keep the window short).
    """
    h = _mono(ir)
    k = int(np.argmax(np.abs(h)))
    half = max(2, int(window_ms * sample_rate / 1000.0))
    lo, hi = max(0, k - half), min(h.size, k + half + 1)
    seg = h[lo:hi].copy()
    edge = max(1, half // 4)
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(edge) + 0.5) / edge)
    if seg.size > 2 * edge:
        seg[:edge] *= ramp
        seg[seg.size - edge :] *= ramp[::-1]
    size = _fft_size(max(seg.size, sample_rate // 10))
    mag2 = np.abs(np.fft.rfft(seg, size)) ** 2
    freqs = np.fft.rfftfreq(size, 1.0 / sample_rate)
    in_band = (freqs >= band_hz[0]) & (freqs <= band_hz[1])
    if not np.any(in_band):
        raise ValueError(f"ir_gain_db: band {band_hz} Hz holds no frequency bins")
    return power_db(float(np.mean(mag2[in_band])))


def rt60_ms(
    ir: Signal,
    *,
    sample_rate: int = SAMPLE_RATE,
    fit_db: tuple[float, float] = (-5.0, -25.0),
) -> float:
    """Reverberation time (ms) by Schroeder backward integration, fitted over ``fit_db`` (T20 by default).

    The energy decay curve is the backward integral of h² from the direct-path peak, in dB relative to its
    start; a straight line is fitted to the part between the two ``fit_db`` levels and extrapolated to
    −60 dB. The measurement noise floor (mean energy of the last 10 % of ``ir``) is subtracted first
    (Chu's method), and the response is cut where its 10 ms energy falls to twice that floor, so that
    noise does not bend the curve. Returns NaN when the decay never reaches the lower fit level.
    """
    h = _mono(ir)
    start = int(np.argmax(np.abs(h)))
    energy = h[start:] ** 2
    if energy.size < 16:
        return math.nan
    noise = float(np.mean(energy[-max(1, energy.size // 10) :]))
    smooth_n = max(1, sample_rate // 100)
    smooth = np.convolve(energy, np.ones(smooth_n) / smooth_n, mode="same")
    below = np.nonzero(smooth <= 2.0 * noise)[0]
    end = int(below[0]) if below.size else energy.size
    energy = np.maximum(energy[:end] - noise, 0.0)
    edc = np.cumsum(energy[::-1])[::-1]
    if edc.size == 0 or edc[0] <= 0.0:
        return math.nan
    edc_db = 10.0 * np.log10(np.maximum(edc / edc[0], 1e-30))
    upper, lower = max(fit_db), min(fit_db)
    idx = np.nonzero((edc_db <= upper) & (edc_db >= lower))[0]
    if idx.size < 2 or float(edc_db.min()) > lower:
        return math.nan
    slope, _ = np.polyfit(idx.astype(np.float64), edc_db[idx], 1)
    if slope >= 0.0:
        return math.nan
    return float(-60.0 / slope * 1000.0 / sample_rate)


def _resonator_ir(freq: float, bandwidth: float, length: int, sample_rate: int) -> Float64Array:
    """Impulse response of a two-pole resonator with unit gain at DC (a formant of a cascade synthesiser)."""
    r = math.exp(-math.pi * bandwidth / sample_rate)
    theta = 2.0 * math.pi * freq / sample_rate
    n = np.arange(length, dtype=np.float64)
    dc_gain = 1.0 - 2.0 * r * math.cos(theta) + r * r
    return np.asarray(dc_gain * r**n * np.sin(theta * (n + 1.0)) / math.sin(theta), dtype=np.float64)


def speech_like(
    seconds: float,
    seed: int,
    *,
    sample_rate: int = SAMPLE_RATE,
    level_dbfs: float = -26.0,
) -> npt.NDArray[np.float32]:
    """A deterministic speech stand-in (mono float32): voiced syllables, some unvoiced ones, and pauses.

    Syllables last 180–320 ms: about 65 % voiced (a pulse train whose pitch glides between 95 and 150 Hz,
    through three formant resonators drawn afresh per syllable: F1 300–800, F2 900–2300, F3 2400–3200 Hz),
    10 % unvoiced (noise through a 3–6 kHz resonance) and 25 % pauses (up to 500 ms). Each syllable has a
    20 ms attack and 60 ms release. The result is scaled so that its active (non-pause) RMS is
    ``level_dbfs`` — −26 dBFS is the usual active speech level. Same ``seed``, same samples.
    """
    rng = np.random.default_rng(seed)
    n = round(seconds * sample_rate)
    excitation_len = n
    out = np.zeros(n + sample_rate // 10, dtype=np.float64)
    active = np.zeros(n, dtype=bool)

    # Pitch: piecewise-linear between random knots every 250 ms, as a continuous pulse-train phase.
    knots = rng.uniform(95.0, 150.0, size=int(seconds * 4) + 2)
    knot_t = np.arange(knots.size) * 0.25
    t = np.arange(n, dtype=np.float64) / sample_rate
    f0 = np.interp(t, knot_t, knots)
    phase = np.cumsum(f0 / sample_rate)
    pulses = np.zeros(n, dtype=np.float64)
    pulses[1:][np.diff(np.floor(phase)) > 0] = 1.0

    ir_len = int(0.03 * sample_rate)
    attack = int(0.02 * sample_rate)
    release = int(0.06 * sample_rate)
    pos = 0
    while pos < excitation_len:
        kind = rng.uniform()
        length = int(rng.uniform(0.18, 0.32) * sample_rate)
        if kind < 0.25:
            pos += int(rng.uniform(0.1, 0.5) * sample_rate)
            continue
        length = min(length, excitation_len - pos)
        if length <= attack + release:
            break
        env = np.ones(length)
        env[:attack] = 0.5 - 0.5 * np.cos(np.pi * np.arange(attack) / attack)
        env[length - release :] = 0.5 + 0.5 * np.cos(np.pi * np.arange(release) / release)
        if kind < 0.9:
            source = pulses[pos : pos + length] * env
            irs = [
                _resonator_ir(rng.uniform(300.0, 800.0), rng.uniform(60.0, 100.0), ir_len, sample_rate),
                _resonator_ir(rng.uniform(900.0, 2300.0), rng.uniform(80.0, 140.0), ir_len, sample_rate),
                _resonator_ir(rng.uniform(2400.0, 3200.0), rng.uniform(120.0, 200.0), ir_len, sample_rate),
            ]
        else:
            source = rng.standard_normal(length) * env * 0.05
            irs = [_resonator_ir(rng.uniform(3000.0, 6000.0), 1500.0, ir_len, sample_rate)]
        size = _fft_size(length + len(irs) * ir_len)
        spectrum = np.fft.rfft(source, size)
        for ir in irs:
            spectrum *= np.fft.rfft(ir, size)
        seg_len = length + len(irs) * (ir_len - 1)
        out[pos : pos + seg_len] += np.fft.irfft(spectrum, size)[:seg_len]
        active[pos : pos + length] = True
        pos += length
    signal = out[:n]
    if not np.any(active):
        return np.zeros(n, dtype=np.float32)
    rms = math.sqrt(float(np.mean(signal[active] ** 2)))
    signal *= 10.0 ** (level_dbfs / 20.0) / rms
    return np.clip(signal, -1.0, 1.0).astype(np.float32)
