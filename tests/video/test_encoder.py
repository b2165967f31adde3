"""Tests for app.video.encoder: low-latency libx264, keyframes, run-time bitrate, encoder choice."""

from __future__ import annotations

import logging
import time

import av
import numpy as np
import pytest

from app.settings import VideoSettings
from app.video import encoder as encoder_module
from app.video.decoder import VideoDecoder
from app.video.encoder import (
    EncoderError,
    VideoEncoder,
    available_encoders,
    cuda_device_count,
    open_encoder,
)
from app.video.frames import CapturedFrame, EncodedFrame


def moving_frame(i: int, width: int, height: int, *, noise: bool = False) -> CapturedFrame:
    """A diagonal gradient with a white box moving 8 px per frame; ``noise`` makes it incompressible."""
    ys, xs = np.mgrid[0:height, 0:width]
    luma = ((xs + 2 * ys + 3 * i) % 220 + 16).astype(np.uint8)
    x0 = (8 * i) % (width - 32)
    luma[height // 4 : height // 4 + 32, x0 : x0 + 32] = 235
    if noise:
        luma = np.random.default_rng(i).integers(16, 236, (height, width), dtype=np.uint8)
    chroma = np.full((height // 2, width), 128, dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(np.vstack([luma, chroma]), format="yuv420p")
    return CapturedFrame(frame=frame, index=i, captured_ns=time.monotonic_ns())


def nal_types(data: bytes) -> list[int]:
    """H.264 nal_unit_type of each NAL unit in an Annex B buffer."""
    types = []
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        types.append(data[i + 3] & 0x1F)
        i = data.find(b"\x00\x00\x01", i + 3)
    return types


def x264(**overrides: object) -> VideoEncoder:
    settings = {"width": 320, "height": 240, "fps": 60, "bitrate_kbps": 2000, "encoder": "x264"}
    settings.update(overrides)
    return open_encoder(VideoSettings.model_validate(settings))


def test_x264_opens_and_produces_a_decodable_annexb_stream() -> None:
    enc = x264(width=640, height=360)
    dec = VideoDecoder("h264")
    assert (enc.name, enc.codec, enc.width, enc.height) == ("libx264", "h264", 640, 360)
    for i in range(20):
        (out,) = enc.encode(moving_frame(i, 640, 360))
        assert out.data.startswith(b"\x00\x00\x00\x01")
        if i == 0:
            assert out.keyframe
            assert {7, 8, 5} <= set(nal_types(out.data))  # SPS, PPS, IDR slice
        (picture,) = dec.decode(out.data)
        assert (picture.width, picture.height, picture.format.name) == (640, 360, "yuv420p")
    enc.close()
    dec.close()


def test_every_frame_yields_exactly_one_packet_at_once_with_stamps() -> None:
    enc = x264()
    for i in range(60):
        cf = moving_frame(i, 320, 240)
        out = enc.encode(cf)
        # No B-frames, no lookahead, no frame threads: nothing is held back, nothing reordered.
        assert len(out) == 1
        (ef,) = out
        assert isinstance(ef, EncodedFrame)
        assert ef.index == i
        assert ef.times.captured == cf.captured_ns
        assert ef.times.encoded >= ef.times.captured
        assert ef.keyframe == (i == 0)  # keyframes only on request by default
    enc.close()


def test_forced_keyframe_is_the_very_next_packet() -> None:
    enc = x264()
    keys = [enc.encode(moving_frame(i, 320, 240), force_keyframe=i == 10)[0] for i in range(15)]
    assert [k.keyframe for k in keys] == [i in (0, 10) for i in range(15)]
    assert 5 in nal_types(keys[10].data) and 7 in nal_types(keys[10].data)
    # A receiver joining at the forced keyframe decodes it straight away.
    assert len(VideoDecoder("h264").decode(keys[10].data)) == 1


def test_forced_keyframe_with_intra_refresh_is_a_decodable_idr() -> None:
    enc = x264(intra_refresh=True, fps=30)
    packets = [enc.encode(moving_frame(i, 320, 240), force_keyframe=i == 40)[0] for i in range(45)]
    # Intra refresh: no IDR between the first and the requested one (recovery points are not IDRs).
    idr = [i for i, p in enumerate(packets) if 5 in nal_types(p.data)]
    assert idr == [0, 40]
    assert packets[40].keyframe
    late_joiner = VideoDecoder("h264")
    assert len(late_joiner.decode(packets[40].data)) == 1
    assert all(len(late_joiner.decode(p.data)) == 1 for p in packets[41:])


def test_periodic_keyframes_follow_keyframe_interval() -> None:
    enc = x264(fps=30, keyframe_interval_s=0.5)
    keys = [i for i in range(40) if enc.encode(moving_frame(i, 320, 240))[0].keyframe]
    assert keys == [0, 15, 30]


def _kbps(frames: list[EncodedFrame], fps: int) -> float:
    return sum(len(f.data) for f in frames) * 8 / (len(frames) / fps) / 1000


def test_bitrate_changes_at_run_time_without_a_keyframe() -> None:
    fps = 60
    enc = x264(width=640, height=360, fps=fps, bitrate_kbps=8000, x264_preset="ultrafast")
    assert enc.live_bitrate, "PyAV's AVCodecContext was not reachable; see _LiveRateControl"
    phases: list[list[EncodedFrame]] = []
    index = 0
    for kbps in (8000, 1000, 8000):
        enc.set_bitrate(kbps)
        phase = []
        for _ in range(2 * fps):
            phase.extend(enc.encode(moving_frame(index, 640, 360, noise=True)))
            index += 1
        phases.append(phase[fps // 4 :])  # skip the quarter second in which rate control settles
        assert enc.bitrate_kbps == kbps
    high, low, high_again = (_kbps(p, fps) for p in phases)
    # x264 undershoots a little with a one-frame VBV buffer (about 6.7 and 0.85 Mbit/s here).
    assert 5000 < high < 9000
    assert 400 < low < 1200
    # Up again: only possible because the VBV cap (rc_max_rate) followed, not just bit_rate.
    assert 5000 < high_again < 9000
    # One frame's worth of VBV buffer: no frame much above bitrate / fps, even on incompressible input.
    assert max(len(f.data) for f in phases[1]) * 8 < 1.5 * 1000 * 1000 / fps
    assert [i for i, f in enumerate(p for phase in phases for p in phase) if f.keyframe] == []


def test_requested_keyframe_at_a_low_bitrate_gets_a_larger_buffer_once() -> None:
    """At 1080p60 and 1 Mb/s one frame's budget is 17 kbit: a keyframe confined to it would be unreadable
    mush, so a requested keyframe gets 0.06 bit/pixel, and the frames after it are back to one frame."""
    fps, kbps = 60, 1000
    enc = x264(width=1920, height=1080, fps=fps, bitrate_kbps=kbps, x264_preset="ultrafast")
    budget_bytes = kbps * 1000 / fps / 8
    frames = [f for i in range(12) for f in enc.encode(moving_frame(i, 1920, 1080), force_keyframe=i == 6)]
    assert [f.keyframe for f in frames].index(True, 1) == 6
    assert enc.boosted_keyframes == 1
    floor_bytes = encoder_module._keyframe_floor_bits(1920, 1080) / 8
    assert budget_bytes * 2 < len(frames[6].data) <= floor_bytes * 1.1
    # The one-frame buffer is back: P frames after the keyframe stay near one frame's budget.
    assert all(len(f.data) < 1.5 * budget_bytes for f in frames[8:])
    # The stream decodes across the reopen.
    dec = VideoDecoder("h264")
    assert sum(len(dec.decode(f.data)) for f in frames) == len(frames)


def test_requested_keyframe_at_a_high_bitrate_keeps_the_one_frame_buffer() -> None:
    enc = x264(width=640, height=360, fps=60, bitrate_kbps=8000)
    for i in range(4):
        enc.encode(moving_frame(i, 640, 360), force_keyframe=i == 2)
    assert enc.boosted_keyframes == 0


def test_bitrate_change_falls_back_to_reopen_with_keyframe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoder_module._LiveRateControl, "attach", classmethod(lambda cls, ctx: None))
    fps = 30
    enc = x264(width=640, height=360, fps=fps, bitrate_kbps=4000, x264_preset="ultrafast")
    assert not enc.live_bitrate
    before = [enc.encode(moving_frame(i, 640, 360, noise=True))[0] for i in range(fps)]
    enc.set_bitrate(500)
    after = [enc.encode(moving_frame(fps + i, 640, 360, noise=True))[0] for i in range(fps)]
    assert after[0].keyframe and not any(f.keyframe for f in after[1:])
    assert _kbps(after[5:], fps) < 0.3 * _kbps(before[5:], fps)
    assert after[0].index == fps


def test_frame_size_change_reopens_with_a_keyframe() -> None:
    enc = x264()
    dec = VideoDecoder("h264")
    for i in range(3):
        dec.decode(enc.encode(moving_frame(i, 320, 240))[0].data)
    (bigger,) = enc.encode(moving_frame(3, 640, 360))
    assert bigger.keyframe and (enc.width, enc.height) == (640, 360)
    (picture,) = dec.decode(bigger.data)
    assert (picture.width, picture.height) == (640, 360)


def test_capture_index_restart_keeps_encoding() -> None:
    enc = x264()
    for i in (0, 1, 2, 0, 1):
        (out,) = enc.encode(moving_frame(i, 320, 240))
        assert out.index == i


def test_frame_type_from_the_source_is_ignored() -> None:
    enc = x264()
    enc.encode(moving_frame(0, 320, 240))
    cf = moving_frame(1, 320, 240)
    cf.frame.pict_type = av.video.frame.PictureType.I  # as a frame decoded from a file might carry
    assert not enc.encode(cf)[0].keyframe


def test_parameter_sets_are_repeated_on_keyframes_that_lack_them() -> None:
    # h264_v4l2m2m emits SPS/PPS only once; the encoder prepends the last ones to later keyframes.
    enc = x264()
    first = enc.encode(moving_frame(0, 320, 240))[0].data
    assert enc._with_parameter_sets(first) == first
    later = enc.encode(moving_frame(1, 320, 240), force_keyframe=True)[0].data
    bare = b"".join(
        nal for nal in encoder_module._split_annexb(later) if encoder_module._h264_nal_type(nal) not in (7, 8)
    )
    assert 7 not in nal_types(bare)
    repaired = enc._with_parameter_sets(bare)
    assert nal_types(repaired)[:2] == [7, 8]
    assert len(VideoDecoder("h264").decode(repaired)) == 1


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="No encoder named"):
        VideoEncoder("libfoo", VideoSettings())
    with pytest.raises(ValueError, match="positive"):
        x264().set_bitrate(0)


def test_closed_encoder_raises_encoder_error() -> None:
    enc = x264()
    enc.close()
    enc.close()
    with pytest.raises(EncoderError, match="closed"):
        enc.encode(moving_frame(0, 320, 240))


def test_auto_picks_the_first_working_encoder_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    available = available_encoders()
    assert available["x264"] is None
    expected_key = next(k for k in encoder_module.AUTO_ORDER if available[k] is None)
    with caplog.at_level(logging.INFO, logger="app.video.encoder"):
        enc = open_encoder(VideoSettings(width=320, height=240, encoder="auto"))
    assert enc.name == encoder_module.ENCODER_NAMES[expected_key]
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("encoder: ")]
    assert line.startswith(f"encoder: {enc.name}")
    for key in encoder_module.AUTO_ORDER[: encoder_module.AUTO_ORDER.index(expected_key)]:
        assert f"{encoder_module.ENCODER_NAMES[key]}: {available[key]}" in line
    if expected_key == "x264":
        assert "h264_nvenc: " in line and "h264_v4l2m2m: " in line


def test_explicit_nvenc_without_a_gpu_raises_encoder_error() -> None:
    if cuda_device_count() > 0:
        pytest.skip("a CUDA device is present")
    with pytest.raises(EncoderError, match=r"nvenc-h264.*h264_nvenc.*no CUDA device"):
        open_encoder(VideoSettings(width=320, height=240, encoder="nvenc-h264"))


def test_explicit_v4l2m2m_without_a_device_raises_encoder_error() -> None:
    if available_encoders()["v4l2m2m"] is None:
        pytest.skip("a v4l2 m2m encoder is present")
    with pytest.raises(EncoderError, match="h264_v4l2m2m"):
        open_encoder(VideoSettings(width=320, height=240, encoder="v4l2m2m"))


@pytest.mark.hardware
@pytest.mark.parametrize("key", ["nvenc-h264", "nvenc-hevc"])
def test_nvenc_low_latency(key: str) -> None:
    reason = available_encoders()[key]
    if reason is not None:
        pytest.skip(f"{key}: {reason}")
    settings = {"width": 1280, "height": 720, "fps": 60, "bitrate_kbps": 6000, "encoder": key}
    enc = open_encoder(VideoSettings.model_validate(settings))
    dec = VideoDecoder(enc.codec)
    for i in range(30):
        out = enc.encode(moving_frame(i, 1280, 720), force_keyframe=i == 20)
        assert len(out) == 1 and out[0].index == i
        assert out[0].keyframe == (i in (0, 20))
        assert len(dec.decode(out[0].data)) == 1
        if i == 10:
            enc.set_bitrate(2000)
    enc.close()
