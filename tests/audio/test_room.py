"""The simulated room: echo path, reverberation, noise, talk pattern, markers, WAV talkers, determinism."""

from __future__ import annotations

import math
import wave
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from app.audio import markers, measure
from app.audio.room import Room, RoomBlock, RoomConfig, impulse_responses, load_wav, marker_sample

FS = 48_000
F32 = npt.NDArray[np.float32]


def run(room: Room, speaker: F32 | None = None, blocks: int = 100) -> tuple[F32, F32, F32, list[RoomBlock]]:
    """Drive ``room`` by :meth:`Room.process` over ``speaker`` (None: silence); mic, near, echo, blocks."""
    p = room.period
    n = blocks * p
    if speaker is None:
        speaker = np.zeros((n, 2), np.float32)
    mic = np.zeros((n, 2), np.float32)
    near = np.zeros((n, 2), np.float32)
    echo = np.zeros((n, 2), np.float32)
    info = []
    for k in range(blocks):
        s = slice(k * p, (k + 1) * p)
        info.append(room.process(speaker[s], mic[s], near[s], echo[s]))
    return mic, near, echo, info


def click(n: int, at: int = 0, left: float = 1.0, right: float = 1.0) -> F32:
    x = np.zeros((n, 2), np.float32)
    x[at] = (left, right)
    return x


QUIET: dict[str, Any] = {"talker": "silence", "noise_dbfs": -150.0}


@pytest.mark.parametrize("period", [120, 240, 480])
@pytest.mark.parametrize("rt60", [0.0, 300.0])
def test_direct_path_delay_and_gain(period: int, rt60: float) -> None:
    room = Room(RoomConfig(echo_delay_ms=40.0, echo_gain_db=-10.0, rt60_ms=rt60, **QUIET), period)
    blocks = 1000 * FS // 1000 // period  # 1 s
    _mic, _near, echo, _ = run(room, click(blocks * period), blocks)
    for c in range(2):
        assert int(np.argmax(np.abs(echo[:, c]))) == 40 * 48
        assert measure.ir_delay_ms(echo[:, c]) == pytest.approx(40.0, abs=0.5 / 48)
        assert measure.ir_gain_db(echo[:, c]) == pytest.approx(-10.0, abs=0.2)
        assert echo[40 * 48, c] == pytest.approx(10 ** (-10 / 20), rel=1e-5)


def test_direct_only_echo_is_a_scaled_copy_of_the_mono_mix() -> None:
    room = Room(RoomConfig(echo_delay_ms=10.0, echo_gain_db=-6.0, rt60_ms=0.0, **QUIET), 240)
    speaker = np.random.default_rng(5).uniform(-0.5, 0.5, (24_000, 2)).astype(np.float32)
    _mic, _near, echo, _ = run(room, speaker, 100)
    mono = 0.5 * (speaker[:, 0] + speaker[:, 1])
    expected = np.float32(10 ** (-6 / 20)) * mono[: 24_000 - 480]
    np.testing.assert_allclose(echo[480:, 0], expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(echo[:480], 0.0)
    np.testing.assert_array_equal(echo[:, 0], echo[:, 1])


def test_a_click_in_one_channel_echoes_at_half_the_level() -> None:
    room = Room(RoomConfig(rt60_ms=0.0, echo_gain_db=0.0, echo_delay_ms=1.0, **QUIET), 240)
    _mic, _near, echo, _ = run(room, click(2400, left=1.0, right=0.0), 10)
    assert echo[48, 0] == pytest.approx(0.5)
    assert echo[48, 1] == pytest.approx(0.5)


@pytest.mark.parametrize("period", [120, 240, 480])
def test_partitioned_convolution_matches_a_direct_one(period: int) -> None:
    config = RoomConfig(echo_delay_ms=7.3, rt60_ms=250.0, **QUIET)
    room = Room(config, period, extra_delay=3 * period + 17)
    blocks = 24_000 // period
    speaker = (np.random.default_rng(1).standard_normal((blocks * period, 2)) * 0.1).astype(np.float32)
    _mic, _near, echo, _ = run(room, speaker, blocks)
    h = impulse_responses(config)
    mono = speaker.astype(np.float64).mean(axis=1)
    delay = round(7.3 * 48) + 3 * period + 17
    assert room.delay == delay
    n = blocks * period
    for c in range(2):
        expected = np.zeros(n)
        expected[delay:] = np.convolve(mono, h[:, c])[: n - delay]
        np.testing.assert_allclose(echo[:, c], expected, atol=1e-5 * float(np.max(np.abs(expected))))


@pytest.mark.parametrize("rt60", [150.0, 300.0, 800.0])
def test_reverberation_time_and_direct_to_reverberant_ratio(rt60: float) -> None:
    config = RoomConfig(echo_delay_ms=5.0, rt60_ms=rt60, **QUIET)
    room = Room(config, 240)
    blocks = round((0.01 + 1.3 * rt60 / 1000) * FS / 240) + 1
    _mic, _near, echo, _ = run(room, click(blocks * 240), blocks)
    for c in range(2):
        assert measure.rt60_ms(echo[:, c]) == pytest.approx(rt60, rel=0.15)
        direct = float(echo[240, c]) ** 2
        tail = float(np.sum(echo[241:, c].astype(np.float64) ** 2))
        assert tail == pytest.approx(direct, rel=1e-3)
        # Nothing between the direct path and the start of the tail 2 ms later (but FFT rounding).
        assert float(np.max(np.abs(echo[241 : 240 + 96, c]))) < 1e-6
        assert abs(float(echo[240 + 96, c])) > 1e-4
    # Each channel has its own tail; the response is cut at 1.2 × RT60.
    assert not np.array_equal(echo[300:, 0], echo[300:, 1])
    h = impulse_responses(config)
    assert h.shape[0] == round(1.2 * rt60 * 48) + 1


@pytest.mark.parametrize("level", [-60.0, -40.0])
def test_noise_level(level: float) -> None:
    room = Room(RoomConfig(talker="silence", noise_dbfs=level), 240)
    mic, near, echo, _ = run(room, None, 400)
    for c in range(2):
        assert measure.dbfs(mic[:, c]) == pytest.approx(level, abs=1.0)
    assert not np.any(near)
    assert not np.any(echo)
    assert abs(float(np.corrcoef(mic[:, 0], mic[:, 1])[0, 1])) < 0.05


def test_mic_is_near_plus_echo_plus_noise() -> None:
    room = Room(RoomConfig(noise_dbfs=-50.0, markers_every_s=0.5), 240)
    speaker = (np.random.default_rng(2).standard_normal((48_000, 2)) * 0.05).astype(np.float32)
    mic, near, echo, _ = run(room, speaker, 200)
    assert measure.dbfs(near) > -40.0
    assert measure.dbfs(echo) > -50.0
    assert measure.dbfs(mic - near - echo) == pytest.approx(-50.0, abs=1.0)


def test_speech_talker_level_and_loop() -> None:
    room = Room(RoomConfig(**{**QUIET, "talker": "speech"}, seed=3), 480)
    _mic, near, _echo, info = run(room, None, 200)
    speech = measure.speech_like(30, 3)
    np.testing.assert_array_equal(near[:, 0], speech[: 200 * 480])
    np.testing.assert_array_equal(near[:, 1], speech[: 200 * 480])
    assert all(b.talker_active for b in info)
    # The 30 s signal loops.
    room2 = Room(RoomConfig(**{**QUIET, "talker": "speech"}, seed=3), 480)
    silence = np.zeros((480, 2), np.float32)
    for _ in range(30 * 100):
        room2.process(silence, np.zeros((480, 2), np.float32))
    near2 = np.zeros((480, 2), np.float32)
    room2.process(silence, np.zeros((480, 2), np.float32), near2)
    np.testing.assert_array_equal(near2[:, 0], speech[:480])


def test_alternate_talk_pattern() -> None:
    period = 240
    talk, phase = 0.3, 0.125  # 14 400 and 6 000 samples: edges inside blocks
    room = Room(RoomConfig(noise_dbfs=-150.0, talk_pattern="alternate", talk_s=talk, phase_s=phase), 240)
    blocks = 400
    _mic, near, _echo, info = run(room, None, blocks)
    n = blocks * period
    idx = np.arange(n)
    on = (idx >= 6000) & (((idx - 6000) // 14_400) % 2 == 0)
    speech = measure.speech_like(30, 0)[:n]
    np.testing.assert_array_equal(near[on, 0], speech[on])
    np.testing.assert_array_equal(near[~on], 0.0)
    for k, b in enumerate(info):
        assert b.first_sample == k * period
        assert b.talker_active == bool(np.any(on[k * period : (k + 1) * period])), k
    rng = np.random.default_rng(0)
    for _ in range(500):
        first = int(rng.integers(0, n - 1))
        count = int(rng.integers(1, n - first))
        assert room.talking(first, count) == bool(np.any(on[first : first + count])), (first, count)


def test_never_and_silence_are_not_talking() -> None:
    for config in (
        RoomConfig(noise_dbfs=-150.0, talk_pattern="never", markers_every_s=0.1),
        RoomConfig(noise_dbfs=-150.0, talker="markers", markers_every_s=0.1),
    ):
        _mic, near, _echo, info = run(Room(config, 240), None, 50)
        assert not any(b.talker_active for b in info)
        # Markers are mixed whatever the talk pattern.
        assert np.max(np.abs(near)) == pytest.approx(0.5, rel=1e-3)


@pytest.mark.parametrize("period", [120, 240, 480])
def test_markers_at_the_right_samples(period: int) -> None:
    every = 0.10001  # 4800.48 samples: positions round(j × 4800.48)
    room = Room(RoomConfig(**{**QUIET, "talker": "markers"}, markers_every_s=every), period)
    blocks = 48_000 // period
    _mic, near, _echo, info = run(room, None, blocks)
    n = blocks * period
    positions = [marker_sample(j, every * FS, 0) for j in range(11) if marker_sample(j, every * FS, 0) < n]
    assert len({p % 480 for p in positions}) > 5  # spread over the position within a 10 ms frame
    expected = np.zeros(n, np.float32)
    for p in positions:
        end = min(n, p + markers.MARKER_LEN)
        expected[p:end] += 0.5 * markers.MARKER[: end - p]
    np.testing.assert_array_equal(near[:, 0], expected)
    np.testing.assert_array_equal(near[:, 1], expected)
    reported = [b.first_sample + off for b in info for off in b.marker_offsets]
    assert reported == positions
    assert all(0 <= off < period for b in info for off in b.marker_offsets)


def test_marker_spanning_three_blocks() -> None:
    # Period 120: every marker (240 samples) touches at least two blocks and, unless it starts at offset 0,
    # three; markers every 1199 samples.
    every = 1199
    room = Room(RoomConfig(**{**QUIET, "talker": "markers"}, markers_every_s=every / FS), 120)
    _mic, near, _echo, info = run(room, None, 40)
    positions = [marker_sample(j, every, 0) for j in range(4) if marker_sample(j, every, 0) + 240 <= 40 * 120]
    offsets = {k: b.marker_offsets for k, b in enumerate(info) if b.marker_offsets}
    assert offsets == {p // 120: (p % 120,) for p in positions}
    assert any(p % 120 > 0 for p in positions)
    for p in positions:
        np.testing.assert_array_equal(near[p : p + 240, 0], 0.5 * markers.MARKER)
    assert np.count_nonzero(near[:, 0]) == np.count_nonzero(markers.MARKER) * len(positions)


def write_wav(path: Path, samples: npt.NDArray[np.int64], width: int, rate: int = FS) -> None:
    frames = samples if samples.ndim == 2 else samples[:, np.newaxis]
    raw = frames.astype("<i8").view(np.uint8).reshape(frames.shape[0], frames.shape[1], 8)[:, :, :width]
    with wave.open(str(path), "wb") as f:
        f.setnchannels(frames.shape[1])
        f.setsampwidth(width)
        f.setframerate(rate)
        f.writeframes(raw.tobytes())


@pytest.mark.parametrize("width", [2, 3, 4])
def test_wav_talker_stereo(tmp_path: Path, width: int) -> None:
    full = 2 ** (8 * width - 1)
    rng = np.random.default_rng(width)
    # 100 frames: shorter than a block, so the loop wraps inside every block.
    ints = rng.integers(-full, full, (100, 2))
    ints[0] = (-full, full - 1)
    path = tmp_path / "talker.wav"
    write_wav(path, ints, width)
    loaded = load_wav(path)
    assert loaded.dtype == np.float32
    assert loaded.shape == (100, 2)
    np.testing.assert_allclose(loaded, ints / full, atol=1e-7)
    assert loaded[0, 0] == -1.0
    room = Room(RoomConfig(**{**QUIET, "talker": str(path)}), 240)
    _mic, near, _echo, info = run(room, None, 5)
    np.testing.assert_array_equal(near, np.tile(loaded, (12, 1)))
    assert all(b.talker_active for b in info)


def test_wav_talker_mono_is_on_both_channels(tmp_path: Path) -> None:
    ints = np.arange(-500, 500, dtype=np.int64) * 30
    path = tmp_path / "mono.wav"
    write_wav(path, ints, 2)
    room = Room(RoomConfig(**{**QUIET, "talker": str(path)}), 480)
    _mic, near, _echo, _ = run(room, None, 3)
    expected = np.concatenate([ints, ints[:440]]) / 32768.0
    np.testing.assert_allclose(near[:, 0], expected, atol=1e-7)
    np.testing.assert_array_equal(near[:, 0], near[:, 1])


def test_wav_talker_errors(tmp_path: Path) -> None:
    wrong_rate = tmp_path / "cd.wav"
    write_wav(wrong_rate, np.zeros(10, np.int64), 2, rate=44_100)
    with pytest.raises(ValueError, match=r"cd\.wav.*44100 Hz"):
        Room(RoomConfig(talker=str(wrong_rate)), 240)
    eight = tmp_path / "eight.wav"
    write_wav(eight, np.zeros(10, np.int64), 1)
    with pytest.raises(ValueError, match=r"eight\.wav.*8-bit"):
        load_wav(eight)
    many = tmp_path / "many.wav"
    write_wav(many, np.zeros((10, 3), np.int64), 2)
    with pytest.raises(ValueError, match=r"many\.wav.*3 channels"):
        load_wav(many)
    empty = tmp_path / "empty.wav"
    write_wav(empty, np.zeros(0, np.int64), 2)
    with pytest.raises(ValueError, match=r"empty\.wav.*no samples"):
        load_wav(empty)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not a wav file at all")
    with pytest.raises(ValueError, match=r"junk\.wav"):
        load_wav(junk)
    with pytest.raises(ValueError, match=r"missing\.wav"):
        load_wav(tmp_path / "missing.wav")


def test_deterministic() -> None:
    speaker = (np.random.default_rng(9).standard_normal((24_000, 2)) * 0.1).astype(np.float32)
    config = RoomConfig(markers_every_s=0.2, seed=4)
    first = run(Room(config, 240), speaker, 100)[0]
    again = run(Room(config, 240), speaker, 100)[0]
    np.testing.assert_array_equal(first, again)
    other = run(Room(RoomConfig(markers_every_s=0.2, seed=5), 240), speaker, 100)[0]
    assert not np.array_equal(first, other)
    # reset() starts over.
    room = Room(config, 240)
    run(room, speaker, 30)
    room.reset()
    assert room.samples == 0
    np.testing.assert_array_equal(run(room, speaker, 100)[0], first)


def test_capture_out_of_step_with_play_raises() -> None:
    room = Room(RoomConfig(echo_delay_ms=1.0), 240)
    mic = np.zeros((240, 2), np.float32)
    with pytest.raises(RuntimeError, match="speaker samples"):
        room.capture(mic)  # needs speaker samples -48..191, none played yet
    # With a delay of at least one period, the sound-card order (capture, then play) works.
    room = Room(RoomConfig(echo_delay_ms=1.0), 240, extra_delay=240)
    for _ in range(5):
        room.capture(mic)
        room.play(mic)
    for _ in range(3):
        room.play(mic)  # play running too far ahead overwrites what capture still needs
    with pytest.raises(RuntimeError, match="speaker samples"):
        room.capture(mic)


def test_loud_input_is_clipped_like_an_adc() -> None:
    room = Room(RoomConfig(echo_gain_db=20.0, rt60_ms=0.0, echo_delay_ms=0.0, **QUIET), 240)
    mic, _near, echo, _ = run(room, np.full((2400, 2), 0.5, np.float32), 10)
    assert float(np.max(echo)) == pytest.approx(5.0)
    assert float(np.max(mic)) == 1.0


def test_the_convolution_is_partitioned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cost, without timing: every FFT on the block path is two periods long, and nothing convolves."""
    period = 240
    room = Room(RoomConfig(rt60_ms=300.0), period, extra_delay=period)
    sizes: list[int] = []
    real_rfft, real_irfft = np.fft.rfft, np.fft.irfft

    def rfft(a: Any, *args: Any, **kwargs: Any) -> Any:
        sizes.append(np.shape(a)[-1])
        return real_rfft(a, *args, **kwargs)

    def irfft(a: Any, *args: Any, **kwargs: Any) -> Any:
        sizes.append(int(kwargs.get("n", 0)))
        return real_irfft(a, *args, **kwargs)

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("np.convolve on the block path")

    monkeypatch.setattr(np.fft, "rfft", rfft)
    monkeypatch.setattr(np.fft, "irfft", irfft)
    monkeypatch.setattr(np, "convolve", forbidden)
    mic = np.zeros((period, 2), np.float32)
    for _ in range(50):
        room.capture(mic)
        room.play(mic)
    assert len(sizes) == 100  # one forward and one (two-channel) inverse FFT per block
    assert set(sizes) == {2 * period}
    # 300 ms × 1.2 = 360 ms of response in 5 ms partitions.
    assert room._parts == math.ceil((round(1.2 * 300 * 48) + 1) / period)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"echo_delay_ms": -1.0}, "echo_delay_ms"),
        ({"rt60_ms": -5.0}, "rt60_ms"),
        ({"rt60_ms": math.nan}, "rt60_ms"),
        ({"echo_gain_db": 30.0}, "echo_gain_db"),
        ({"noise_dbfs": 3.0}, "noise_dbfs"),
        ({"talk_pattern": "sometimes"}, "talk_pattern.*always, never, alternate"),
        ({"talk_s": 0.0}, "talk_s"),
        ({"phase_s": -1.0}, "phase_s"),
        ({"markers_every_s": 0.0}, "markers_every_s"),
        ({"markers_every_s": 0.001}, "markers_every_s"),
        ({"talker": ""}, "talker"),
        ({"seed": -1}, "seed"),
    ],
)
def test_config_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RoomConfig(**kwargs)


def test_room_validation() -> None:
    with pytest.raises(ValueError, match="period"):
        Room(RoomConfig(), 256)
    with pytest.raises(ValueError, match="extra_delay"):
        Room(RoomConfig(), 240, extra_delay=-1)
