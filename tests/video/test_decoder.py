"""Tests for app.video.decoder: round trip, zero delay, and damaged input raising only DecodeError."""

from __future__ import annotations

import contextlib
import logging
import time
from fractions import Fraction

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.settings import VideoSettings
from app.video.decoder import DecodeError, VideoDecoder
from app.video.encoder import cuda_device_count, open_encoder
from app.video.frames import CapturedFrame

BOX = 48


def box_frame(i: int, width: int, height: int) -> CapturedFrame:
    """A soft diagonal gradient with a white box whose x position is 16 * i (mod the width)."""
    ys, xs = np.mgrid[0:height, 0:width]
    luma = ((xs // 2 + ys // 2 + i) % 100 + 40).astype(np.uint8)
    x0 = box_x(i, width)
    luma[height // 3 : height // 3 + BOX, x0 : x0 + BOX] = 235
    chroma = np.full((height // 2, width), 128, dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(np.vstack([luma, chroma]), format="yuv420p")
    return CapturedFrame(frame=frame, index=i, captured_ns=time.monotonic_ns())


def box_x(i: int, width: int) -> int:
    return (16 * i) % (width - BOX)


def found_box_x(picture: av.VideoFrame) -> int:
    """Where the white box is in a decoded picture: the first column of the bright run in its row."""
    luma = picture.to_ndarray()[: picture.height]
    row = luma[picture.height // 3 + BOX // 2]
    return int(np.argmax(row > 200))


def encode_stream(width: int, height: int, count: int, **overrides: object) -> list[bytes]:
    values = {"width": width, "height": height, "fps": 60, "bitrate_kbps": 4000, "encoder": "x264"}
    values.update(overrides)
    enc = open_encoder(VideoSettings.model_validate(values))
    out = [enc.encode(box_frame(i, width, height))[0].data for i in range(count)]
    enc.close()
    return out


@pytest.fixture(scope="module")
def stream_720p() -> list[bytes]:
    return encode_stream(1280, 720, 30, x264_preset="ultrafast")


@pytest.fixture(scope="module")
def small_stream() -> list[bytes]:
    return encode_stream(320, 240, 12)


def test_round_trip_720p(stream_720p: list[bytes]) -> None:
    dec = VideoDecoder("h264", threads=2)
    assert dec.name == "h264"
    psnrs = []
    for i, data in enumerate(stream_720p):
        (picture,) = dec.decode(data)
        assert (picture.width, picture.height, picture.format.name) == (1280, 720, "yuv420p")
        source = box_frame(i, 1280, 720).frame.to_ndarray()[:720].astype(np.float64)
        decoded = picture.to_ndarray()[:720].astype(np.float64)
        psnrs.append(10 * np.log10(255**2 / np.mean((source - decoded) ** 2)))
    # The first keyframe is squeezed into one frame's VBV budget (about 30 dB); P frames then refine it.
    # x264's row-level VBV with slice threads is not bit-exact run to run, hence the margins.
    assert min(psnrs) > 26 and np.mean(psnrs) > 38, [round(p, 1) for p in psnrs]
    dec.close()


def test_each_access_unit_gives_its_own_picture_at_once(stream_720p: list[bytes]) -> None:
    dec = VideoDecoder("h264")
    for i, data in enumerate(stream_720p):
        pictures = dec.decode(data)
        # No one-frame delay: the picture for packet i comes out of decode(packet i), not later.
        assert len(pictures) == 1
        assert abs(found_box_x(pictures[0]) - box_x(i, 1280)) <= 4
    assert dec.flush() == []


def test_empty_input_is_no_picture() -> None:
    assert VideoDecoder().decode(b"") == []


def test_garbage_raises_decode_error_logged_once_then_recovers(
    small_stream: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    dec = VideoDecoder()
    with caplog.at_level(logging.INFO, logger="app.video.decoder"):
        for _ in range(3):
            with pytest.raises(DecodeError):
                dec.decode(b"\x00\x00\x00\x01\x67" + bytes(range(40)))
        assert len(dec.decode(small_stream[0])) == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "failed to decode" in warnings[0].getMessage()
    assert any("decoding again after 3" in r.getMessage() for r in caplog.records)
    assert dec.errors == 3


def _damaged(draw: st.DrawFn, packets: list[bytes]) -> bytes:
    kind = draw(st.sampled_from(["random", "truncated", "flipped", "start-code"]))
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=3000))
    packet = packets[draw(st.integers(0, len(packets) - 1))]
    if kind == "truncated":
        return packet[: draw(st.integers(1, len(packet) - 1))]
    if kind == "flipped":
        damaged = bytearray(packet)
        for position in draw(st.lists(st.integers(0, len(packet) - 1), min_size=1, max_size=20)):
            damaged[position] ^= draw(st.integers(1, 255))
        return bytes(damaged)
    return b"\x00\x00\x00\x01" + draw(st.binary(min_size=1, max_size=200))


@st.composite
def damaged_streams(draw: st.DrawFn, packets: list[bytes]) -> list[bytes]:
    return [_damaged(draw, packets) for _ in range(draw(st.integers(1, 4)))]


def test_damaged_input_only_ever_raises_decode_error(small_stream: list[bytes]) -> None:
    keyframe, rest = small_stream[0], small_stream[1:]

    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(damaged_streams(small_stream))
    def check(damaged: list[bytes]) -> None:
        dec = VideoDecoder()
        dec.decode(keyframe)
        for data in damaged:
            try:
                pictures = dec.decode(data)
            except DecodeError:
                continue
            assert isinstance(pictures, list)
            assert all(isinstance(p, av.VideoFrame) for p in pictures)
        # The next keyframe puts the decoder right again, and the P frames after it decode too.
        (picture,) = dec.decode(keyframe)
        assert (picture.width, picture.height) == (320, 240)
        assert all(len(dec.decode(p)) == 1 for p in rest[:3])

    check()


def test_flush_resets_and_decoding_resumes_at_a_keyframe(small_stream: list[bytes]) -> None:
    dec = VideoDecoder()
    for data in small_stream[:4]:
        dec.decode(data)
    assert dec.flush() == []
    # After the reset the decoder waits for a keyframe: a P frame alone shows nothing (or fails).
    with contextlib.suppress(DecodeError):
        assert dec.decode(small_stream[5]) == []
    assert len(dec.decode(small_stream[0])) == 1


def test_closed_decoder_raises_decode_error(small_stream: list[bytes]) -> None:
    dec = VideoDecoder()
    dec.close()
    dec.close()
    with pytest.raises(DecodeError, match="closed"):
        dec.decode(small_stream[0])


def test_hevc_stream_decodes_with_zero_delay() -> None:
    enc = av.CodecContext.create("libx265", "w")
    assert isinstance(enc, av.VideoCodecContext)
    enc.width, enc.height, enc.pix_fmt = 320, 240, "yuv420p"
    enc.time_base = Fraction(1, 30)
    enc.options = {"preset": "ultrafast", "tune": "zerolatency", "x265-params": "log-level=none"}
    dec = VideoDecoder("hevc")
    for i in range(5):
        frame = box_frame(i, 320, 240).frame
        frame.pts = i
        (packet,) = enc.encode(frame)
        assert len(dec.decode(bytes(packet))) == 1


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="No decoder named"):
        VideoDecoder("vp8")
    with pytest.raises(ValueError, match="threads"):
        VideoDecoder(threads=0)


def test_hardware_request_falls_back_to_software(caplog: pytest.LogCaptureFixture) -> None:
    if cuda_device_count() > 0:
        pytest.skip("a CUDA device is present; NVDEC may open")
    with caplog.at_level(logging.INFO, logger="app.video.decoder"):
        dec = VideoDecoder("h264", hardware=True)
    assert dec.name == "h264"
    assert any("h264_cuvid: no CUDA device" in r.getMessage() for r in caplog.records)


@pytest.mark.hardware
def test_nvdec_decodes_with_zero_delay(small_stream: list[bytes]) -> None:
    if cuda_device_count() == 0:
        pytest.skip("no CUDA device")
    dec = VideoDecoder("h264", hardware=True)
    if dec.name != "h264_cuvid":
        pytest.skip("NVDEC did not open on this CUDA device")
    for i, data in enumerate(small_stream):
        (picture,) = dec.decode(data)
        assert (picture.width, picture.height) == (320, 240)
        assert abs(found_box_x(picture) - box_x(i, 320)) <= 4
