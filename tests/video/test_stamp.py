"""Stamps: exact round trips, survival through lossy H.264 and VP8, rejection of corrupt or absent bands."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.video.scene import Scene
from app.video.stamp import LUMA_ONE, LUMA_ZERO, Stamp, _layout, read_stamp, stamp_rows, write_stamp

WIDTHS = [160, 240, 320, 640, 800, 960, 1280, 1920, 2880, 3840, 7680]


@pytest.mark.parametrize("width", WIDTHS)
def test_band_is_small_and_macroblock_aligned(width: int) -> None:
    rows = stamp_rows(width)
    assert rows % 16 == 0
    assert 16 <= rows <= 32


@pytest.mark.parametrize("width", WIDTHS)
def test_round_trip_many_values(width: int) -> None:
    y = np.full((max(120, stamp_rows(width) + 8), width), 77, np.uint8)
    values = [(0, 0), (1, 1), (2**32 - 1, 2**48 - 1), (123456, 987654321012), (0xA5A5A5A5, 0x5A5A5A5A5A5A)]
    for index, us in values:
        write_stamp(y, Stamp(index, us))
        assert read_stamp(y) == Stamp(index, us)


def test_values_wrap_modulo_field_width() -> None:
    y = np.zeros((64, 640), np.uint8)
    write_stamp(y, Stamp(2**32 + 7, 2**48 + 9))
    assert read_stamp(y) == Stamp(7, 9)


def test_writes_only_the_band() -> None:
    y = np.full((100, 320), 99, np.uint8)
    write_stamp(y, Stamp(5, 6))
    rows = stamp_rows(320)
    assert (y[rows:] == 99).all()
    assert set(np.unique(y[:rows])) <= {LUMA_ZERO, LUMA_ONE}


def test_reads_strided_view_of_padded_plane() -> None:
    padded = np.full((1080, 2048), 200, np.uint8)
    write_stamp(padded[:, :1920], Stamp(42, 4242))
    assert read_stamp(padded[:, :1920]) == Stamp(42, 4242)


@settings(max_examples=200, deadline=None)
@given(
    index=st.integers(0, 2**32 - 1),
    us=st.integers(0, 2**48 - 1),
    width=st.integers(80, 2000).map(lambda w: w * 2),
    fill=st.integers(0, 255),
)
def test_hypothesis_round_trip(index: int, us: int, width: int, fill: int) -> None:
    y = np.full((stamp_rows(width) + 2, width), fill, np.uint8)
    write_stamp(y, Stamp(index, us))
    assert read_stamp(y) == Stamp(index, us)


@pytest.mark.parametrize("width", [160, 320, 1280, 1920])
def test_flipped_bit_block_fails_crc(width: int) -> None:
    lay = _layout(width)
    y = np.zeros((64, width), np.uint8)
    write_stamp(y, Stamp(1000, 2000))
    # Flip a payload bit (bit 20: inside the index) by repainting its block.
    bit = 20
    r, c = divmod(bit, lay.per_row)
    b = lay.block
    block = y[r * b : (r + 1) * b, c * b : (c + 1) * b]
    block[...] = LUMA_ONE if block[b // 2, b // 2] == LUMA_ZERO else LUMA_ZERO
    assert read_stamp(y) is None


def test_blank_and_noisy_bands_are_rejected() -> None:
    rng = np.random.default_rng(1)
    for level in (0, 16, 128, 235, 255):
        assert read_stamp(np.full((120, 640), level, np.uint8)) is None
    for _ in range(200):
        assert read_stamp(rng.integers(0, 256, (120, 640), dtype=np.uint8)) is None
    stripes = np.zeros((120, 640), np.uint8)
    stripes[:, ::32] = 255
    assert read_stamp(stripes) is None


def test_too_small_pictures_are_refused() -> None:
    with pytest.raises(ValueError, match="height"):
        write_stamp(np.zeros((8, 1920), np.uint8), Stamp(0, 0))
    with pytest.raises(ValueError, match="2-D uint8"):
        read_stamp(np.zeros((64, 640), np.uint16))


def _codec_round_trip(
    codec: str, width: int, height: int, bit_rate: int, options: dict[str, str], frames: int = 12
) -> list[tuple[Stamp, Stamp | None]]:
    """Encode ``frames`` scene pictures with ``codec`` and decode them; pairs of (written, read) stamps."""
    scene = Scene(width, height, seed=3)
    enc = av.CodecContext.create(codec, "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base = Fraction(1, 30)
    enc.framerate = Fraction(30, 1)
    enc.bit_rate = bit_rate
    enc.options = options
    dec = av.CodecContext.create("h264" if codec == "libx264" else "vp8", "r")
    written: list[Stamp] = []
    read: list[Stamp | None] = []

    def drain(packets: list[av.Packet]) -> None:
        for packet in packets:
            for out in dec.decode(packet):
                plane = out.to_ndarray()[:height]
                read.append(read_stamp(plane))

    for i in range(frames):
        stamp = Stamp(i * 7919 + 3, 10_000_000 + i * 16_667)
        frame = av.VideoFrame.from_ndarray(scene.render(stamp.index, stamp.captured_us), format="yuv420p")
        frame.pts = i
        written.append(stamp)
        drain(enc.encode(frame))
    drain(enc.encode(None))
    for out in dec.decode(None):
        read.append(read_stamp(out.to_ndarray()[:height]))
    assert len(read) == frames
    return list(zip(written, read, strict=True))


@pytest.mark.parametrize(
    ("width", "height", "bit_rate"),
    [(1280, 720, 2_000_000), (320, 240, 300_000)],
)
def test_survives_x264(width: int, height: int, bit_rate: int) -> None:
    pairs = _codec_round_trip(
        "libx264", width, height, bit_rate, {"preset": "ultrafast", "tune": "zerolatency"}
    )
    for written, got in pairs:
        assert got == written


def test_survives_vp8() -> None:
    pairs = _codec_round_trip(
        "libvpx", 640, 360, 800_000, {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    )
    for written, got in pairs:
        assert got == written
