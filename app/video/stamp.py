"""Frame stamps: index, capture time and a CRC-32 drawn into the top rows of the luma plane.

The sender writes a :class:`Stamp` into every picture before encoding; the receiver reads it back after
decoding to measure capture→display latency and to spot corrupt pictures. The stamp survives lossy H.264 and
VP8 at moderate bitrates because every bit is a solid square block of luma 16 (0) or 235 (1) aligned to the
16-pixel macroblock grid, read back by averaging only the block's centre and thresholding at 128: ringing and
deblocking at block edges do not reach the centre, and quantisation moves a flat block's level by far less
than the 110 levels of margin. The 120-bit layout, in row-major block order, is:

    sync (8 bits, 0xB2) | index (32 bits, u32 big-endian) | captured_us (48 bits, u48 big-endian)
    | CRC-32 (32 bits, zlib.crc32 over the 10 index+captured_us bytes, big-endian)

Blocks are 16×16 px for widths ≥ 960 (1920 px: one 16-row band), 8×8 px for widths ≥ 240 and 4×4 px below;
bits wrap into as many block rows as needed and the band is rounded up to a multiple of 16 rows (see
:func:`stamp_rows`). Unused blocks and the band's remainder are luma 16. A blank or garbage band fails the
sync byte or the CRC and reads as None.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

SYNC = 0xB2
"""The first payload byte; fixed so that an all-dark, all-bright or stripy band never decodes."""
STAMP_BITS = 8 + 32 + 48 + 32
"""Bits in a stamp: sync, index, captured_us, CRC-32."""
LUMA_ZERO = 16
"""Luma of a 0 bit (video-range black)."""
LUMA_ONE = 235
"""Luma of a 1 bit (video-range white)."""
THRESHOLD = 128
"""A block whose centre averages above this reads as 1."""
INDEX_MASK = (1 << 32) - 1
US_MASK = (1 << 48) - 1
_MAX_BAND_PX = 32
"""The tallest band (px) we accept before trying a smaller block size. Below 960 px wide the blocks are
smaller than a macroblock, and aiortc's VP8 settings (denoiser with static-threshold skipping) can leave
them stale: compare against aiortc at 960 px wide or more."""
_BLOCK_SIZES = (16, 8, 4)


@dataclass(frozen=True, slots=True)
class Stamp:
    """What a picture carries: its capture index (u32) and capture time (CLOCK_MONOTONIC µs, u48)."""

    index: int
    captured_us: int


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where the bits go for one picture width; computed once per width."""

    block: int
    """Block edge in pixels."""
    per_row: int
    """Blocks per block row."""
    block_rows: int
    """Block rows holding bits."""
    band_rows: int
    """Pixel rows of the whole band (a multiple of 16)."""
    centre: slice
    """Rows/columns inside a block that the reader averages."""


@lru_cache(maxsize=64)
def _layout(width: int) -> _Layout:
    if width < 4 * 8:
        raise ValueError(f"picture width {width} px is too narrow for a stamp")
    for block in _BLOCK_SIZES:
        per_row = width // block
        block_rows = -(-STAMP_BITS // per_row)
        band_rows = -(-(block_rows * block) // 16) * 16
        if band_rows <= _MAX_BAND_PX or block == _BLOCK_SIZES[-1]:
            break
    # The centre half of the block: a quarter of its edge in from each side.
    quarter = block // 4
    return _Layout(block, per_row, block_rows, band_rows, slice(quarter, block - quarter))


def stamp_rows(width: int) -> int:
    """Pixel rows from the top of a ``width``-px picture that the stamp band occupies (a multiple of 16)."""
    return _layout(width).band_rows


def _grid_view(y: npt.NDArray[np.uint8], lay: _Layout) -> npt.NDArray[np.uint8]:
    """The blocks holding bits as a (block_rows, block, per_row, block) view of ``y`` (no copy)."""
    rows = lay.block_rows * lay.block
    cols = lay.per_row * lay.block
    return y[:rows, :cols].reshape(lay.block_rows, lay.block, lay.per_row, lay.block)


def _check(y: npt.NDArray[np.uint8], lay: _Layout) -> None:
    if y.ndim != 2 or y.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 luma plane, got {y.ndim}-D {y.dtype}")
    if y.shape[0] < lay.band_rows:
        raise ValueError(f"picture height {y.shape[0]} px is below the stamp band's {lay.band_rows} rows")


def write_stamp(y: npt.NDArray[np.uint8], stamp: Stamp) -> None:
    """Draw ``stamp`` into the top :func:`stamp_rows` rows of the luma plane ``y`` (H, W), in place.

    ``index`` is written modulo 2**32 and ``captured_us`` modulo 2**48 (a wrap every 828 days at 60 fps and
    every 8.9 years respectively); readers compare them modulo the same. Runs on the capture thread; about
    20 µs at 1920 px.
    """
    lay = _layout(y.shape[1])
    _check(y, lay)
    payload = (stamp.index & INDEX_MASK).to_bytes(4, "big") + (stamp.captured_us & US_MASK).to_bytes(6, "big")
    raw = bytes((SYNC,)) + payload + zlib.crc32(payload).to_bytes(4, "big")
    bits = np.unpackbits(np.frombuffer(raw, np.uint8))
    levels = np.full(lay.block_rows * lay.per_row, LUMA_ZERO, np.uint8)
    # bits is 0/1, so this maps 0 → 16 and 1 → 235 without a branch.
    levels[:STAMP_BITS] = bits * np.uint8(LUMA_ONE - LUMA_ZERO) + np.uint8(LUMA_ZERO)
    y[: lay.band_rows].fill(LUMA_ZERO)
    _grid_view(y, lay)[...] = levels.reshape(lay.block_rows, 1, lay.per_row, 1)


def read_stamp(y: npt.NDArray[np.uint8]) -> Stamp | None:
    """The stamp in the luma plane ``y`` (H, W), or None when there is none or it is corrupt.

    ``y`` may be a strided view whose rows are wider than the picture (pass ``plane[:, :width]``); only the
    band is touched, by averaging each block's centre. Runs on the receiving thread; tens of µs.
    """
    lay = _layout(y.shape[1])
    _check(y, lay)
    c = lay.centre
    centres = _grid_view(y, lay)[:, c, :, c]
    sums = centres.sum(axis=(1, 3), dtype=np.uint32).reshape(-1)[:STAMP_BITS]
    area = (c.stop - c.start) ** 2
    raw = np.packbits(sums > THRESHOLD * area).tobytes()
    if raw[0] != SYNC:
        return None
    payload = raw[1:11]
    if zlib.crc32(payload) != int.from_bytes(raw[11:15], "big"):
        if log.isEnabledFor(logging.DEBUG):
            log.debug("stamp CRC mismatch (sync ok): corrupt picture")
        return None
    return Stamp(int.from_bytes(payload[:4], "big"), int.from_bytes(payload[4:], "big"))
