"""The slate: a calm, dark, static picture with large centred text, sent in place of a missing camera.

When the camera is unplugged mid-call the link stays up and the peer sees "Camera unavailable" and the device
name instead of a frozen picture (see :mod:`app.video.capture.resilient`). The text is drawn with Pillow's
built-in scalable font (``ImageFont.load_default(size=...)``, Pillow ≥ 10.1 with FreeType), falling back to
the small bitmap default scaled up when FreeType is missing. A slate is static, so it is rendered once per
(size, text) and cached; the returned array is read-only so no caller can spoil the cached copy.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from app.video.stamp import stamp_rows

log = logging.getLogger(__name__)

_BACKGROUND_Y = 28
"""Luma of the slate's background: dark, but above black so the text's anti-aliasing has room."""
_TITLE_Y = 210
_DETAIL_Y = 150
_CHROMA_U = 134
"""A faint blue-grey tint, calmer than pure grey."""
_CHROMA_V = 124


def _text_mask(text: str, size: int, max_width: int) -> npt.NDArray[np.uint8]:
    """``text`` as an 8-bit coverage mask about ``size`` px tall, at most ``max_width`` px wide."""
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont
    try:
        font = ImageFont.load_default(size=size)
        scale = 1
    except (ImportError, OSError, TypeError):
        # No FreeType: draw with the bitmap font (about 11 px tall) and scale it up below.
        font = ImageFont.load_default()
        scale = max(1, size // 11)
    box = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font)
    left, top, right, bottom = (round(v) for v in box)
    img = Image.new("L", (max(1, right - left), max(1, bottom - top)), 0)
    ImageDraw.Draw(img).text((-left, -top), text, fill=255, font=font)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    if img.width > max_width:
        # Too wide for the picture (a long device path): shrink to fit rather than crop.
        img = img.resize((max_width, max(1, img.height * max_width // img.width)), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def _blend(plane: npt.NDArray[np.uint8], mask: npt.NDArray[np.uint8], top: int, level: int) -> None:
    """Blend ``level`` into ``plane`` through the coverage ``mask``, horizontally centred at row ``top``."""
    h, w = mask.shape
    left = (plane.shape[1] - w) // 2
    h = min(h, plane.shape[0] - top)
    if h <= 0:
        return
    region = plane[top : top + h, left : left + w].astype(np.uint16)
    alpha = mask[:h].astype(np.uint16)
    plane[top : top + h, left : left + w] = ((region * (255 - alpha) + level * alpha) // 255).astype(np.uint8)


@lru_cache(maxsize=8)
def render_slate(width: int, height: int, title: str, detail: str) -> npt.NDArray[np.uint8]:
    """A dark slate with ``title`` large and ``detail`` smaller below it, centred: yuv420p, read-only.

    Shape (height*3//2, width) as ``av.VideoFrame.from_ndarray(arr, format="yuv420p")`` takes; both sizes
    even (px). Cached per arguments; the first call for a size takes a few ms (any thread), later calls
    are free. The top :func:`app.video.stamp.stamp_rows` rows are left plain so a stamp can be written over
    a copy.
    """
    if width % 2 or height % 2 or width <= 0 or height <= 0:
        raise ValueError(f"slate size must be even and positive, got {width}x{height}")
    out = np.empty((height * 3 // 2, width), np.uint8)
    y = out[:height]
    y.fill(_BACKGROUND_Y)
    out[height:].reshape(-1)[: width * height // 4] = _CHROMA_U
    out[height:].reshape(-1)[width * height // 4 :] = _CHROMA_V

    max_width = max(1, int(width * 0.9))
    title_mask = _text_mask(title, max(8, height // 11), max_width)
    detail_mask = _text_mask(detail, max(6, height // 24), max_width) if detail else None
    gap = height // 30
    total = title_mask.shape[0] + (gap + detail_mask.shape[0] if detail_mask is not None else 0)
    top = max(stamp_rows(width) if width >= 32 else 0, (height - total) // 2)
    _blend(y, title_mask, top, _TITLE_Y)
    if detail_mask is not None:
        _blend(y, detail_mask, top + title_mask.shape[0] + gap, _DETAIL_Y)
    out.setflags(write=False)
    log.debug("rendered %dx%d slate %r / %r", width, height, title, detail)
    return out
