"""Opus through libopus and raw PCM: round trips, concealment, FEC, and bad data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.audio.codec import (
    FRAME_SAMPLES,
    PCM_FRAME_BYTES,
    CodecError,
    OpusCodec,
    PcmCodec,
    libopus_version,
    load_libopus,
    open_codec,
)
from app.audio.measure import estimate_delay_ms, speech_like


def stereo(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(x[:, None], 2, axis=1), dtype=np.float32)


def frames(x: np.ndarray):
    for i in range(len(x) // FRAME_SAMPLES):
        yield x[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]


def test_libopus_is_found_and_named():
    assert libopus_version().startswith("libopus")
    with pytest.raises(CodecError, match="libopus not found"):
        load_libopus(["/nonexistent/libopus.so"])


def test_opus_round_trip_keeps_speech_and_delays_it_by_its_lookahead():
    x = stereo(speech_like(3, 1))
    enc, dec = OpusCodec(bitrate_bps=128_000), OpusCodec()
    assert enc.lookahead_samples == 120  # restricted low delay: 2.5 ms
    packets = [enc.encode(f) for f in frames(x)]
    y = np.concatenate([dec.decode(p) for p in packets])
    # 128 kb/s for 10 ms frames: ~160 bytes a frame.
    assert 100 < np.mean([len(p) for p in packets]) < 220
    lag = round(estimate_delay_ms(x[: len(y), 0], y[:, 0], 10) * 48)
    assert lag == 120
    ref = x[: len(y) - lag]
    err = y[lag:] - ref
    snr = 10 * np.log10(np.sum(ref * ref) / np.sum(err * err))
    assert snr > 15  # a perceptual codec: waveform SNR of ~20 dB at 128 kb/s on speech
    assert enc.stats()["frames_encoded"] == len(packets)


def test_bitrate_changes_at_run_time_and_is_checked():
    x = stereo(speech_like(2, 2))
    enc = OpusCodec(bitrate_bps=256_000)
    big = [len(enc.encode(f)) for f in frames(x)]
    enc.set_bitrate(32_000)
    small = [len(enc.encode(f)) for f in frames(x)]
    assert np.mean(small) < np.mean(big) / 3
    with pytest.raises(ValueError):
        enc.set_bitrate(1_000_000)


@pytest.mark.parametrize("samples", [120, 240, 480])
def test_concealment_continues_the_signal_and_fades(samples):
    t = np.arange(48000) / 48000
    x = stereo((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))
    enc, dec = OpusCodec(), OpusCodec()
    for f in list(frames(x))[:50]:
        dec.decode(enc.encode(f))
    first = dec.conceal(samples)
    assert first.shape == (samples, 2)
    assert np.sqrt(np.mean(first**2)) > 0.05  # not silence: it continues the tone
    for _ in range(40):
        late = dec.conceal(samples)
    assert np.sqrt(np.mean(late**2)) < np.sqrt(np.mean(first**2)) / 4  # and fades out
    with pytest.raises(ValueError):
        dec.conceal(100)


def test_low_delay_opus_carries_no_inband_fec_but_the_audio_mode_can():
    x = stereo(speech_like(2, 3) * 0.5)
    low = OpusCodec()
    assert all(low.decode_fec(low.encode(f)) is None for f in frames(x))
    speechy = OpusCodec(low_delay=False, inband_fec=True, expected_loss_percent=20, bitrate_bps=24_000)
    packets = [speechy.encode(f) for f in frames(x)]
    assert any(speechy.has_fec(p) for p in packets[10:])
    rebuilt = OpusCodec(low_delay=False).decode_fec(next(p for p in packets[10:] if speechy.has_fec(p)))
    assert rebuilt is not None and rebuilt.shape == (FRAME_SAMPLES, 2)


@pytest.mark.parametrize("data", [b"", b"\xff", b"\x00" * 3, bytes(range(256)) * 8])
def test_undecodable_opus_is_an_error_never_noise(data):
    dec = OpusCodec()
    try:
        out = dec.decode(data)
    except CodecError:
        assert dec.stats()["decode_errors"] == 1
    else:
        # Opus has no checksum: a few byte strings are valid packets. They decode to bounded audio.
        assert out.shape == (FRAME_SAMPLES, 2) and np.all(np.abs(out) <= 1.0)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1600))
def test_random_bytes_never_raise_anything_but_codec_error(data):
    for codec in (OpusCodec(), PcmCodec()):
        try:
            out = codec.decode(data)
        except CodecError:
            continue
        assert out.shape == (FRAME_SAMPLES, 2)
        assert np.all(np.isfinite(out)) and np.all(np.abs(out) <= 1.0)


def test_wrong_input_shape_or_type_is_an_error():
    enc = OpusCodec()
    with pytest.raises(CodecError, match="shape"):
        enc.encode(np.zeros((240, 2), np.float32))
    with pytest.raises(CodecError, match="float32"):
        enc.encode(np.zeros((480, 2), np.float64))
    # Out of range and NaN input is clipped and silenced, not an error.
    bad = np.full((480, 2), np.nan, np.float32)
    bad[0] = 7.0
    assert len(enc.encode(bad)) > 0


def test_pcm_round_trip_is_exact_to_half_a_step_and_conceals_smoothly():
    rng = np.random.default_rng(4)
    x = (rng.uniform(-1, 1, (480, 2))).astype(np.float32)
    pcm = PcmCodec()
    data = pcm.encode(x)
    assert len(data) == PCM_FRAME_BYTES
    y = pcm.decode(data)
    assert np.max(np.abs(y - x)) <= 0.5 / 32767 + 1e-7
    assert pcm.lookahead_samples == 0
    c1 = pcm.conceal()
    assert np.allclose(c1[0], y[-1], atol=0.01)  # continues from the last sample (played backwards)
    with pytest.raises(CodecError, match="1920 bytes"):
        pcm.decode(data[:-1])


def test_open_codec_by_name():
    assert isinstance(open_codec("pcm"), PcmCodec)
    assert isinstance(open_codec("opus", bitrate_bps=510_000), OpusCodec)
    with pytest.raises(ValueError, match="No audio codec"):
        open_codec("mp3")


@pytest.mark.parametrize("name", ["opus", "pcm"])
def test_concealment_made_ahead_leaves_the_decoder_alone_until_adopted(name: str) -> None:
    # The playout thread keeps a concealment ready for the sound card's callback without moving its
    # decoder; if the callback plays it, the decoder continues from after it, exactly as if concealed then.
    speech = stereo(speech_like(1.0, seed=3))
    packets = [open_codec(name).encode(f) for f in frames(speech)][:20]
    codec, reference = open_codec(name), open_codec(name)
    for p in packets[:8]:
        codec.decode(p)
        reference.decode(p)
    ahead = codec.conceal_ahead(240)
    assert np.array_equal(codec.decode(packets[8]), reference.decode(packets[8]))  # not moved
    ahead = codec.conceal_ahead(240)
    assert np.array_equal(ahead, reference.conceal(240))
    assert codec.stats()["concealed"] == 0
    codec.adopt_ahead()
    assert codec.stats()["concealed"] == 1
    for p in packets[9:12]:
        assert np.array_equal(codec.decode(p), reference.decode(p))
