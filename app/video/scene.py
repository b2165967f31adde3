"""The synthetic scene: a deterministic picture of a room with a person in it, computed from the frame index.

The synthetic capture backend, the tests and the benchmarks need pictures that an encoder treats like a
camera's: a textured static background (a wall with a gradient and wallpaper texture, a window, a picture, a
sofa, a bookshelf, a plank floor, mild static grain) and moving content (a person whose body walks to and fro
and whose head sways on its own, and a ball bouncing across the room several times faster), so that motion
estimation matters but the bitrate stays realistic: no per-frame noise. Everything static is computed once
in ``__init__`` from a seeded ``numpy.random.Generator``; a frame only copies the background and pastes two
precomputed sprites in bounded rectangles, then writes the :mod:`app.video.stamp` band. The same
``(index, captured_us)`` gives identical bytes in any process. Motion is defined per frame index (tuned to
look natural at 60 fps).

Two ways out: :meth:`Scene.render` returns a fresh yuv420p array for ``av.VideoFrame.from_ndarray``;
:meth:`Scene.render_into` writes straight into a yuv420p ``av.VideoFrame``'s planes (PyAV planes are writable
buffers), which saves from_ndarray's second full-frame copy and is the faster path for capture: on the
2-core dev machine, median 0.14 ms against 0.44 ms (render + from_ndarray) at 1920×1080, and 0.26 ms
against 1.03 ms at 2880×1620.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from app.video.stamp import Stamp, stamp_rows, write_stamp

if TYPE_CHECKING:
    import av

log = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]

# Motion periods, in frames (at 60 fps: 5 s walk, 1.5 s head sway, ~1.6 s ball across and back).
_WALK_PERIOD = 300
_STEP_PERIOD = 36
_SWAY_PERIOD = 90
_BALL_X_PERIOD = 97
_BALL_Y_PERIOD = 41


@dataclass(frozen=True, slots=True)
class _Sprite:
    """A precomputed picture with a mask, in yuv420p: luma (h, w), chroma (h/2, w/2); h and w even."""

    y: U8
    u: U8
    v: U8
    mask: npt.NDArray[np.bool_]
    cmask: npt.NDArray[np.bool_]

    @property
    def height(self) -> int:
        return int(self.y.shape[0])

    @property
    def width(self) -> int:
        return int(self.y.shape[1])


def _even(value: float) -> int:
    """``value`` rounded down to an even integer (chroma planes are half size, so positions stay aligned)."""
    return math.floor(value) & ~1


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> F32:
    """Bilinearly upsampled white noise in [-1, 1]: blotchy texture with features about ``cell`` px wide."""
    gh = max(2, round(height / cell) + 2)
    gw = max(2, round(width / cell) + 2)
    grid = rng.uniform(-1.0, 1.0, (gh, gw)).astype(np.float32)
    fy = np.linspace(0, gh - 1.001, height, dtype=np.float32)
    fx = np.linspace(0, gw - 1.001, width, dtype=np.float32)
    iy = fy.astype(np.intp)
    ix = fx.astype(np.intp)
    ty = (fy - iy)[:, None]
    tx = (fx - ix)[None, :]
    rows = grid[iy] * (1 - ty) + grid[iy + 1] * ty
    out: F32 = rows[:, ix] * (1 - tx) + rows[:, ix + 1] * tx
    return out


def _to_sprite(yf: F32, uf: F32, vf: F32, mask: npt.NDArray[np.bool_]) -> _Sprite:
    """Quantise full-resolution float planes and subsample chroma (2×2 mean) into a :class:`_Sprite`."""
    h, w = mask.shape

    def sub(p: F32) -> F32:
        out: F32 = p.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
        return out

    cmask = mask.reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3)) >= 2
    return _Sprite(
        y=np.clip(yf, 16, 235).round().astype(np.uint8),
        u=np.clip(sub(uf), 16, 240).round().astype(np.uint8),
        v=np.clip(sub(vf), 16, 240).round().astype(np.uint8),
        mask=mask,
        cmask=cmask,
    )


class Scene:
    """A room with a person, rendered as yuv420p at ``width``×``height`` px (both even), for any frame index.

    Construction precomputes everything static (0.2 s at 1080p, 0.5 s at 3K); rendering is cheap and
    allocates only the output. Not thread-safe for concurrent renders into the same frame, but renders
    share only read-only state, so separate threads may each call :meth:`render`.
    """

    def __init__(self, width: int, height: int, seed: int = 0) -> None:
        if width % 2 or height % 2 or width < 32 or height < 32:
            raise ValueError(f"scene size must be even and at least 32x32 px, got {width}x{height}")
        if height < 4 * stamp_rows(width):
            raise ValueError(f"scene {width}x{height} px is too short for its stamp band")
        self.width = width
        self.height = height
        self.seed = seed
        rng = np.random.default_rng(seed)
        self._background = self._build_background(rng)
        flat = self._background.reshape(-1)
        n = width * height
        self._bg_planes = (
            flat[:n].reshape(height, width),
            flat[n : n * 5 // 4].reshape(height // 2, width // 2),
            flat[n * 5 // 4 :].reshape(height // 2, width // 2),
        )
        self._torso = self._build_torso(rng)
        self._head = self._build_head(rng)
        self._ball = self._build_ball()
        self._floor_y = _even(height * 0.68)
        log.debug("scene %dx%d seed %d built", width, height, seed)

    # Static content, built once.

    def _build_background(self, rng: np.random.Generator) -> U8:
        w, h = self.width, self.height
        floor_y = _even(h * 0.68)
        xs = np.arange(w, dtype=np.float32)[None, :]
        ys = np.arange(h, dtype=np.float32)[:, None]

        # Wall: light at the top, darker towards the floor and the corners, with wallpaper stripes and
        # blotchy plaster texture. Floor: planks with grain stretched along them.
        vignette = 1.0 - 0.18 * ((xs / w - 0.5) * 2) ** 2
        yf = (150.0 - 35.0 * ys / h) * vignette
        yf = yf + 3.0 * np.sin(xs * (2 * np.pi / max(8.0, w / 48)))
        yf = yf + 9.0 * _smooth_noise(rng, h, w, max(4.0, w / 24))
        yf = yf + 3.0 * _smooth_noise(rng, h, w, max(2.0, w / 160))
        uf = np.full((h, w), 122.0, np.float32) + 3.0 * _smooth_noise(rng, h, w, max(4.0, w / 12))
        vf = np.full((h, w), 136.0, np.float32) + 3.0 * _smooth_noise(rng, h, w, max(4.0, w / 12))

        floor_h = h - floor_y
        plank = max(4, _even(h / 18))
        frow = np.arange(floor_h, dtype=np.float32)[:, None]
        grain = 12.0 * _smooth_noise(rng, floor_h, max(2, w // 8), max(1.0, h / 60))
        grain = np.repeat(grain, 8, axis=1)[:, :w]
        if grain.shape[1] < w:
            grain = np.pad(grain, ((0, 0), (0, w - grain.shape[1])), mode="edge")
        seams = np.where((frow % plank) < max(1, plank // 10), -35.0, 0.0)
        yf[floor_y:] = 95.0 + 20.0 * frow / max(1, floor_h) + grain + seams
        uf[floor_y:] = 112.0
        vf[floor_y:] = 150.0
        # A skirting board where wall meets floor.
        yf[max(0, floor_y - max(2, h // 60)) : floor_y] = 200.0

        def box(x0: float, y0: float, x1: float, y1: float) -> tuple[slice, slice]:
            return slice(_even(y0 * h), _even(y1 * h)), slice(_even(x0 * w), _even(x1 * w))

        def fill(b: tuple[slice, slice], yl: float, u: float, v: float) -> None:
            yf[b] = yl
            uf[b] = u
            vf[b] = v

        # Window: bright sky panes, a white frame and cross bars.
        fill(box(0.06, 0.12, 0.30, 0.50), 225.0, 128.0, 128.0)
        sky = box(0.075, 0.14, 0.285, 0.48)
        fill(sky, 185.0, 150.0, 112.0)
        yf[sky] += 20.0 * _smooth_noise(rng, sky[0].stop - sky[0].start, sky[1].stop - sky[1].start, 12.0)
        fill(box(0.176, 0.14, 0.184, 0.48), 225.0, 128.0, 128.0)
        fill(box(0.075, 0.305, 0.285, 0.315), 225.0, 128.0, 128.0)
        # Picture on the wall: dark frame, a green landscape with a darker hill.
        fill(box(0.62, 0.14, 0.80, 0.36), 50.0, 128.0, 128.0)
        fill(box(0.635, 0.165, 0.785, 0.335), 140.0, 100.0, 110.0)
        fill(box(0.635, 0.26, 0.785, 0.335), 95.0, 105.0, 115.0)
        # Bookshelf on the right with books of different colours and heights.
        fill(box(0.82, 0.22, 0.98, 0.80), 70.0, 115.0, 145.0)
        for shelf in range(4):
            top = 0.24 + shelf * 0.14
            fill(box(0.83, top + 0.11, 0.97, top + 0.125), 110.0, 112.0, 150.0)
            x = 0.835
            while x < 0.96:
                bw = float(rng.uniform(0.008, 0.018))
                bh = float(rng.uniform(0.07, 0.105))
                col = rng.uniform(60, 200, 3)
                fill(box(x, top + 0.11 - bh, min(x + bw, 0.965), top + 0.11), *(float(c) for c in col))
                x += bw + 0.002
        # Sofa on the left: base, back, two cushions, dark legs.
        fill(box(0.03, 0.52, 0.40, 0.62), 60.0, 150.0, 115.0)
        fill(box(0.03, 0.60, 0.40, 0.74), 70.0, 148.0, 116.0)
        fill(box(0.05, 0.58, 0.21, 0.66), 85.0, 145.0, 118.0)
        fill(box(0.22, 0.58, 0.38, 0.66), 85.0, 145.0, 118.0)
        fill(box(0.05, 0.74, 0.07, 0.78), 30.0, 128.0, 128.0)
        fill(box(0.36, 0.74, 0.38, 0.78), 30.0, 128.0, 128.0)

        # Static sensor grain: gives the keyframe and revealed background real detail to code.
        yf += rng.normal(0.0, 2.0, (h, w)).astype(np.float32)
        # The stamp band is overwritten each frame; keep its chroma neutral.
        band = stamp_rows(w)
        uf[:band] = 128.0
        vf[:band] = 128.0

        out = np.empty((h * 3 // 2, w), np.uint8)
        flat = out.reshape(-1)
        n = w * h
        flat[:n] = np.clip(yf, 16, 235).round().astype(np.uint8).reshape(-1)
        for i, plane in enumerate((uf, vf)):
            sub = plane.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
            start = n + i * (n // 4)
            flat[start : start + n // 4] = np.clip(sub, 16, 240).round().astype(np.uint8).reshape(-1)
        return out

    def _build_torso(self, rng: np.random.Generator) -> _Sprite:
        """Shoulders, striped shirt, arms and trousers: about 0.45 of the picture height."""
        th = max(8, _even(self.height * 0.45))
        tw = max(4, _even(th * 0.42))
        ys = (np.arange(th, dtype=np.float32)[:, None] + 0.5) / th
        xs = (np.arange(tw, dtype=np.float32)[None, :] + 0.5) / tw - 0.5
        # Torso: an ellipse over the upper 62 %; legs: two tapered bars below.
        torso = (xs / 0.42) ** 2 + ((ys - 0.33) / 0.31) ** 2 <= 1.0
        legs = (ys > 0.55) & (np.abs(np.abs(xs) - 0.12) < 0.09 - 0.03 * (ys - 0.55))
        mask = torso | legs
        shade = np.clip(1.0 - 1.4 * xs**2 / 0.42**2 * 0.5, 0.55, 1.0)
        stripes = np.where((ys * th / max(2.0, th / 24)) % 2 < 1, 18.0, -18.0)
        yf = np.where(torso, 95.0 * shade + stripes, 45.0 + 25.0 * shade).astype(np.float32)
        yf += 4.0 * _smooth_noise(rng, th, tw, max(2.0, tw / 16))
        uf = np.where(torso, 112.0, 140.0).astype(np.float32) * np.ones_like(yf)
        vf = np.where(torso, 175.0, 120.0).astype(np.float32) * np.ones_like(yf)
        return _to_sprite(yf, uf, vf, mask)

    def _build_head(self, rng: np.random.Generator) -> _Sprite:
        """Face with hair, eyes and mouth: about 0.14 of the picture height."""
        hh = max(4, _even(self.height * 0.14))
        hw = max(4, _even(hh * 0.78))
        ys = (np.arange(hh, dtype=np.float32)[:, None] + 0.5) / hh - 0.5
        xs = (np.arange(hw, dtype=np.float32)[None, :] + 0.5) / hw - 0.5
        r2 = (xs / 0.5) ** 2 + (ys / 0.5) ** 2
        mask = r2 <= 1.0
        yf = (175.0 - 45.0 * r2).astype(np.float32)
        uf = np.full((hh, hw), 110.0, np.float32)
        vf = np.full((hh, hw), 152.0, np.float32)
        hair = mask & (ys < -0.18 + 0.08 * np.cos(xs * 9))
        eyes = ((np.abs(xs) - 0.17) / 0.07) ** 2 + ((ys + 0.02) / 0.045) ** 2 <= 1.0
        mouth = (np.abs(xs) < 0.14) & (np.abs(ys - 0.24) < 0.025)
        yf[hair] = 40.0
        uf[hair] = 125.0
        vf[hair] = 135.0
        yf[eyes | mouth] = 35.0
        yf += 3.0 * _smooth_noise(rng, hh, hw, max(2.0, hw / 10))
        return _to_sprite(yf, uf, vf, mask)

    def _build_ball(self) -> _Sprite:
        """A shaded orange ball with a dark seam: about 0.07 of the picture height."""
        d = max(4, _even(self.height * 0.07))
        c = (np.arange(d, dtype=np.float32) + 0.5) / d - 0.5
        ys, xs = c[:, None], c[None, :]
        r2 = (xs**2 + ys**2) / 0.25
        mask = r2 <= 1.0
        light = np.clip(1.0 - ((xs + 0.18) ** 2 + (ys + 0.18) ** 2) * 2.2, 0.3, 1.0)
        yf = (60.0 + 150.0 * light).astype(np.float32)
        yf[np.abs(xs - 0.3 * ys) < 0.04] = 40.0
        uf = np.full((d, d), 80.0, np.float32)
        vf = np.full((d, d), 185.0, np.float32)
        return _to_sprite(yf, uf, vf, mask)

    # Per frame.

    def _positions(self, index: int) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """Top-left corners (x, y, even px) of the torso, head and ball at frame ``index``."""
        w, h = self.width, self.height
        torso, head, ball = self._torso, self._head, self._ball
        walk = math.sin(2 * math.pi * (index % _WALK_PERIOD) / _WALK_PERIOD)
        bob = abs(math.sin(2 * math.pi * (index % _STEP_PERIOD) / _STEP_PERIOD))
        cx = w * (0.5 + 0.22 * walk)
        feet = h * 0.93 - h * 0.008 * bob
        tx = _even(cx - torso.width / 2)
        ty = _even(feet - torso.height)
        sway = math.sin(2 * math.pi * (index % _SWAY_PERIOD) / _SWAY_PERIOD)
        hx = _even(cx - head.width / 2 + 0.12 * head.width * sway)
        hy = _even(ty - head.height * 0.92)
        # The ball: a triangle wave across the room and a bouncing arc, several times faster than the walk.
        phase = (index % _BALL_X_PERIOD) / _BALL_X_PERIOD
        tri = 1.0 - abs(2.0 * phase - 1.0)
        arc = abs(math.sin(math.pi * (index % _BALL_Y_PERIOD) / _BALL_Y_PERIOD))
        bx = _even(w * (0.05 + 0.85 * tri))
        by = _even(h * 0.88 - ball.height - h * 0.45 * arc)
        return (tx, ty), (hx, hy), (bx, by)

    def _paint(self, y: U8, u: U8, v: U8, index: int, captured_us: int) -> None:
        """Paste the moving sprites and the stamp into planes already holding the background."""
        (tx, ty), (hx, hy), (bx, by) = self._positions(index)
        planes = (y, u, v)
        _paste(planes, self._torso, tx, ty)
        _paste(planes, self._head, hx, hy)
        _paste(planes, self._ball, bx, by)
        write_stamp(y, Stamp(index, captured_us))

    def render(self, index: int, captured_us: int) -> U8:
        """Frame ``index`` stamped with ``captured_us`` (CLOCK_MONOTONIC µs), as a fresh yuv420p array.

        Shape (height*3//2, width), the layout ``av.VideoFrame.from_ndarray(arr, format="yuv420p")`` takes.
        Runs on the caller's (capture) thread; median 0.14 ms at 1080p on the dev machine.
        """
        out = np.empty_like(self._background)
        np.copyto(out, self._background)
        flat = out.reshape(-1)
        n = self.width * self.height
        w2, h2 = self.width // 2, self.height // 2
        self._paint(
            flat[:n].reshape(self.height, self.width),
            flat[n : n * 5 // 4].reshape(h2, w2),
            flat[n * 5 // 4 :].reshape(h2, w2),
            index,
            captured_us,
        )
        return out

    def render_into(self, frame: av.VideoFrame, index: int, captured_us: int) -> None:
        """Render frame ``index`` straight into ``frame``'s planes (yuv420p, this scene's size), in place.

        Writes through PyAV's writable plane buffers, honouring each plane's ``line_size`` padding, so the
        picture is copied once instead of twice as with ``from_ndarray``. Runs on the capture thread.
        """
        if frame.format.name != "yuv420p" or frame.width != self.width or frame.height != self.height:
            raise ValueError(
                f"render_into needs a yuv420p {self.width}x{self.height} frame, "
                f"got {frame.format.name} {frame.width}x{frame.height}"
            )
        views = []
        for plane, bg in zip(frame.planes, self._bg_planes, strict=True):
            rows, cols = bg.shape
            buf = np.frombuffer(memoryview(plane), np.uint8)
            view = buf[: rows * plane.line_size].reshape(rows, plane.line_size)[:, :cols]
            np.copyto(view, bg)
            views.append(view)
        self._paint(views[0], views[1], views[2], index, captured_us)


def _paste(planes: tuple[U8, U8, U8], sprite: _Sprite, x: int, top: int) -> None:
    """Paste ``sprite``'s masked pixels with its top-left at (``x``, ``top``) (even px), clipped."""
    y, u, v = planes
    h, w = y.shape
    x0, y0 = max(x, 0), max(top, 0)
    x1, y1 = min(x + sprite.width, w), min(top + sprite.height, h)
    if x0 >= x1 or y0 >= y1:
        return
    sy, sx = slice(y0 - top, y1 - top), slice(x0 - x, x1 - x)
    np.copyto(y[y0:y1, x0:x1], sprite.y[sy, sx], where=sprite.mask[sy, sx])
    cy, cx = slice(y0 // 2, y1 // 2), slice(x0 // 2, x1 // 2)
    csy, csx = slice(sy.start // 2, sy.stop // 2), slice(sx.start // 2, sx.stop // 2)
    cm = sprite.cmask[csy, csx]
    np.copyto(u[cy, cx], sprite.u[csy, csx], where=cm)
    np.copyto(v[cy, cx], sprite.v[csy, csx], where=cm)


def psnr_y(decoded_y: npt.NDArray[np.uint8], reference_y: npt.NDArray[np.uint8]) -> float:
    """Luma PSNR of ``decoded_y`` against ``reference_y`` (same shape, uint8), in dB; inf when identical.

    Peak is 255 (8-bit). Either may be a strided view (``plane[:, :width]``). A full-frame pass: call it on
    sampled frames, not on every frame in the real-time path.
    """
    if decoded_y.shape != reference_y.shape:
        raise ValueError(f"luma shapes differ: {decoded_y.shape} vs {reference_y.shape}")
    diff = np.subtract(decoded_y, reference_y, dtype=np.int32)
    np.square(diff, out=diff)
    mse = float(diff.sum(dtype=np.int64)) / diff.size
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0 * 255.0 / mse)
