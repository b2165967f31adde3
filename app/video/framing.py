"""Framing: crop, zoom and pan within the camera's picture, mirror and rotation, so that the far side sees
this room life-size at eye level; and the still snapshot, with the framing drawn over it.

Theory of operation
-------------------
A :class:`Framing` says which part of the camera's picture is sent: ``zoom`` (≥ 1: the crop is 1/zoom of the
largest rectangle of the output's aspect that fits the picture), ``offset_x`` and ``offset_y`` (where the
crop sits within the room left to it, from -1 = left / top edge through 0 = centred to +1 = right / bottom
edge), ``rotation`` (0, 90, 180, 270: how far the camera's picture is turned clockwise to be upright — 90
and 270 for a camera mounted on its side) and ``mirror`` (left-right, applied last, as the far side sees
it). Offsets are in the upright picture as the camera sees it, before the mirror.
:meth:`Framing.crop` turns this into a rectangle in source pixels, on even coordinates so the half-size
chroma planes of yuv420p stay aligned with luma.

Life-size at eye level (:func:`framing_from_geometry`). The camera is mounted level (optical axis
horizontal), its lens ``h`` metres above the floor, with vertical field of view ``fov`` (of the upright
picture as captured). People stand ``d`` metres from it. The twin's screen (the same model as ours) shows
``S`` metres of picture height, centred ``c`` metres above its floor. In the plane at distance ``d`` the
picture spans ``V = 2 d tan(fov / 2)`` metres of height, centred at height ``h``. For that plane to appear
life-size the crop must span ``S`` of those metres: ``zoom = V / S`` (pixels are square, so width follows).
For eye level, heights must land at the same heights on the far wall: the crop is centred at height ``c``
in the plane, which in the offset convention above is ``offset_y = 2 (h − c) / (V − S)``. ``zoom < 1``
(the camera sees too little at that distance) and ``|offset_y| > 1`` (the crop would leave the picture)
cannot be met; the nearest framing is used and :class:`GeometryResult` says by how much it misses.

A zoomed picture is sent at the crop's own pixels, not scaled back up to the configured size: the far
side's display scales every picture to its screen anyway (on the GPU, letterboxed), so scaling up here
would only add pixels with nothing new in them, for the encoder to spend time and bits on. The encoder
reopens at the new size when the framing changes (a keyframe), and the decoder and display follow.

Applying it (:class:`Framer`), on the capture thread, to every yuv420p picture at the configured size:

- nothing to do: the picture passes through untouched (0 ms);
- mirror and/or 180° at zoom 1: numpy, into a recycled frame — a row reversed as a view of uint64 words
  copied into a big-endian view of the destination, which reverses the bytes within each word in the same
  pass (mirror ≈ 0.14 ms, 180° ≈ 0.09 ms for all three planes of a 1080p picture on the 2-core dev machine);
- zoom and pan (with any mirror or 180°): the same numpy copy of the crop into a new frame of its size
  (≈ 0.1 ms at zoom 1.25 from 1080p);
- from an MJPEG camera (the usual 1080p60 USB camera) the crop is folded into the 4:2:2 → 4:2:0 conversion
  its pictures go through anyway (:meth:`app.video.capture.v4l2.V4L2Capture.set_crop`), which then reads
  fewer pixels: cheaper than the conversion alone; this class only mirrors or turns the result;
- 90°/270° (a camera on its side): an FFmpeg filter graph (crop, which only moves plane pointers, then
  transpose and hflip) at the crop's own pixels, turned.

Frames: capture sources hand over freshly allocated pictures, and the numpy path keeps the picture it was
given to write the next output into, so no 1080p array is allocated per frame. The filter graph's output
comes from FFmpeg's frame pool. The synthetic scene's stamp band is framed like the rest of the picture:
the latency benchmark runs without framing.

:class:`FramedCapture` wraps a capture source with a :class:`Framer` (the engine puts it inside
:class:`~app.video.capture.resilient.ResilientCapture`, so the "camera unavailable" slate is never
mirrored); its :meth:`~FramedCapture.set_framing` changes the framing from any thread at the next picture
and :meth:`~FramedCapture.snapshot` copies the next picture before framing, which :func:`snapshot_jpeg`
turns into a small JPEG with the crop drawn on it.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Final

import av
import numpy as np
import numpy.typing as npt

from app.video.frames import CapturedFrame

if TYPE_CHECKING:
    from app.settings import CameraSettings, Settings
    from app.video.capture.base import CaptureSource
    from app.video.controls import CameraControls

log = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint8]
ROTATIONS: Final = (0, 90, 180, 270)
MAX_ZOOM: Final = 8.0
_MS: Final = Fraction(1, 1000)


@dataclass(frozen=True, slots=True)
class Crop:
    """A rectangle in source pixels: left ``x``, top ``y``, ``width``, ``height`` (all even)."""

    x: int
    y: int
    width: int
    height: int


def _even_floor(value: float) -> int:
    return max(0, math.floor(value + 1e-9)) & ~1


def _even_round(value: float) -> int:
    return max(2, round(value / 2) * 2)


@dataclass(frozen=True, slots=True)
class Framing:
    """What part of the picture is sent and which way round (see the module docstring). ValueError when a
    value is out of range."""

    zoom: float = 1.0
    offset_x: float = 0.0
    offset_y: float = 0.0
    mirror: bool = False
    rotation: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.zoom) and 1.0 <= self.zoom <= MAX_ZOOM):
            raise ValueError(f"zoom = {self.zoom} is out of range (allowed: 1 to {MAX_ZOOM:g})")
        for name in ("offset_x", "offset_y"):
            value = getattr(self, name)
            if not (math.isfinite(value) and -1.0 <= value <= 1.0):
                raise ValueError(f"{name} = {value} is out of range (allowed: -1 to 1)")
        if self.rotation not in ROTATIONS:
            raise ValueError(f"rotation = {self.rotation} is not allowed (allowed: 0, 90, 180, 270)")
        if not isinstance(self.mirror, bool):
            raise ValueError("mirror must be true or false")

    @property
    def identity(self) -> bool:
        """True when the picture passes through unchanged."""
        return self.zoom == 1.0 and not self.mirror and self.rotation == 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Framing:
        """Read :meth:`to_json`'s object (missing keys keep their defaults). ValueError for anything else."""
        if not isinstance(data, Mapping):
            raise ValueError("a framing must be an object")
        unknown = set(data) - {"zoom", "offset_x", "offset_y", "mirror", "rotation"}
        if unknown:
            raise ValueError(f"unknown framing keys: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for key in ("zoom", "offset_x", "offset_y"):
            if key in data:
                v = data[key]
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise ValueError(f"{key} must be a number")
                values[key] = float(v)
        if "rotation" in data:
            v = data["rotation"]
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError("rotation must be 0, 90, 180 or 270")
            values["rotation"] = v
        if "mirror" in data:
            if not isinstance(data["mirror"], bool):
                raise ValueError("mirror must be true or false")
            values["mirror"] = data["mirror"]
        return cls(**values)

    def upright_crop(
        self, src_w: int, src_h: int, out_w: int, out_h: int
    ) -> tuple[float, float, float, float]:
        """The crop in the upright picture (rotation applied), unrounded: (left, top, width, height)."""
        uw, uh = (src_w, src_h) if self.rotation in (0, 180) else (src_h, src_w)
        aspect = out_w / out_h
        if uw / uh > aspect:
            fw, fh = uh * aspect, float(uh)
        else:
            fw, fh = float(uw), uw / aspect
        cw, ch = fw / self.zoom, fh / self.zoom
        left = (uw - cw) * (self.offset_x + 1.0) / 2.0
        top = (uh - ch) * (self.offset_y + 1.0) / 2.0
        return left, top, cw, ch

    def crop(self, src_w: int, src_h: int, out_w: int, out_h: int) -> Crop:
        """The rectangle of the ``src_w`` × ``src_h`` source picture that becomes the ``out_w`` × ``out_h``
        output, on even pixel coordinates and inside the picture."""
        u0, v0, cw, ch = self.upright_crop(src_w, src_h, out_w, out_h)
        if self.rotation == 0:
            x, y, w, h = u0, v0, cw, ch
        elif self.rotation == 180:
            x, y, w, h = src_w - u0 - cw, src_h - v0 - ch, cw, ch
        elif self.rotation == 90:  # upright (u, v) = (src_h - 1 - y, x)
            x, y, w, h = v0, src_h - u0 - cw, ch, cw
        else:  # 270: upright (u, v) = (y, src_w - 1 - x)
            x, y, w, h = src_w - v0 - ch, u0, ch, cw
        wi = min(_even_round(w), src_w & ~1)
        hi = min(_even_round(h), src_h & ~1)
        xi = min(_even_floor(x), (src_w - wi) & ~1)
        yi = min(_even_floor(y), (src_h - hi) & ~1)
        return Crop(xi, yi, wi, hi)


# -- geometry --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GeometryResult:
    """What :func:`framing_from_geometry` found: the zoom and vertical offset the geometry asks for (before
    clamping to what the camera can do), and the metres of room height the whole picture spans at the
    viewing distance."""

    wanted_zoom: float
    wanted_offset_y: float
    picture_height_m: float

    @property
    def fits(self) -> bool:
        return self.wanted_zoom >= 1.0 - 1e-9 and abs(self.wanted_offset_y) <= 1.0 + 1e-9


def framing_from_geometry(
    *,
    screen_height_m: float,
    screen_center_height_m: float,
    camera_vfov_deg: float,
    camera_height_m: float,
    viewing_distance_m: float,
    offset_x: float = 0.0,
    mirror: bool = False,
    rotation: int = 0,
) -> tuple[Framing, GeometryResult]:
    """The framing that shows the plane ``viewing_distance_m`` from the camera life-size at eye level on the
    twin's screen (model in the module docstring), clamped to what the picture allows, and the result."""
    picture = 2.0 * viewing_distance_m * math.tan(math.radians(camera_vfov_deg) / 2.0)
    zoom = picture / screen_height_m
    slack = picture - screen_height_m
    diff = camera_height_m - screen_center_height_m
    if slack > 1e-9:
        offset = 2.0 * diff / slack
    else:
        offset = 0.0 if abs(diff) < 1e-6 else math.copysign(math.inf, diff)
    framing = Framing(
        zoom=min(MAX_ZOOM, max(1.0, zoom)),
        offset_x=offset_x,
        offset_y=min(1.0, max(-1.0, offset)),
        mirror=mirror,
        rotation=rotation,
    )
    return framing, GeometryResult(zoom, offset, picture)


def framing_from_settings(camera: CameraSettings) -> tuple[Framing, GeometryResult | None]:
    """The framing ``[camera]`` asks for: from the geometry when all of it is given, else the explicit zoom
    and offsets. ``camera`` is already validated (geometry all or nothing)."""
    if camera.screen_height_m is not None:
        assert camera.screen_center_height_m is not None and camera.camera_vfov_deg is not None
        assert camera.camera_height_m is not None and camera.viewing_distance_m is not None
        return framing_from_geometry(
            screen_height_m=camera.screen_height_m,
            screen_center_height_m=camera.screen_center_height_m,
            camera_vfov_deg=camera.camera_vfov_deg,
            camera_height_m=camera.camera_height_m,
            viewing_distance_m=camera.viewing_distance_m,
            offset_x=camera.offset_x,
            mirror=camera.mirror,
            rotation=camera.rotation,
        )
    framing = Framing(camera.zoom, camera.offset_x, camera.offset_y, camera.mirror, camera.rotation)
    return framing, None


# -- applying it -----------------------------------------------------------------------------------------


def plane_views(frame: av.VideoFrame) -> list[U8]:
    """The three planes of a yuv420p ``frame`` as writable (rows, cols) uint8 views, without copying."""
    out: list[U8] = []
    for i, plane in enumerate(frame.planes):
        rows = frame.height if i == 0 else (frame.height + 1) // 2
        cols = frame.width if i == 0 else (frame.width + 1) // 2
        buf = np.frombuffer(memoryview(plane), np.uint8)
        out.append(buf[: rows * plane.line_size].reshape(rows, plane.line_size)[:, :cols])
    return out


def _flip(src: U8, dst: U8, rows: bool, cols: bool) -> None:
    """``dst`` = ``src`` with its rows and/or columns reversed (same shape; not overlapping)."""
    if not cols:
        np.copyto(dst, src[::-1] if rows else src)
        return
    width = src.shape[1]
    if width % 8 == 0 and src.strides[0] % 8 == 0 and dst.strides[0] % 8 == 0:
        # Reverse the order of the 8-byte words and, by storing them big-endian, the bytes within each
        # word: one pass, about 4x faster than numpy's byte-by-byte reversed copy.
        words = src.view(np.uint64)
        np.copyto(dst.view(">u8"), words[::-1, ::-1] if rows else words[:, ::-1])
    else:
        np.copyto(dst, src[::-1, ::-1] if rows else src[:, ::-1])


def _stamp_time(frame: av.VideoFrame, pts: int | None, time_base: Fraction | None) -> None:
    frame.pts = pts
    if time_base is not None:
        frame.time_base = time_base


class Framer:
    """Applies a :class:`Framing` to yuv420p pictures of ``width`` × ``height``; the pictures it returns are
    :attr:`out_width` × :attr:`out_height` (the crop's own pixels, turned; nothing is scaled).

    :meth:`apply` runs on the capture thread and takes ownership of the frame it is given (see the module
    docstring).
    """

    def __init__(self, framing: Framing, width: int, height: int) -> None:
        self.framing = framing
        self.width = width
        self.height = height
        self.crop = framing.crop(width, height, width, height)
        self._spare: av.VideoFrame | None = None
        self._graph: Any = None
        full = self.crop == Crop(0, 0, width & ~1, height & ~1)
        self.out_width, self.out_height = width, height
        """The size of the pictures :meth:`apply` returns: the crop's own for the "crop" path."""
        if framing.identity:
            self.path = "none"
        elif full and framing.rotation in (0, 180):
            self.path = "numpy"
        elif framing.rotation in (0, 180):
            self.path = "crop"
            self.out_width, self.out_height = self.crop.width, self.crop.height
        else:
            self.path = "filter"
            self.out_width, self.out_height = self.crop.height, self.crop.width  # turned by a quarter
            self._graph = self._build_graph()

    def _build_graph(self) -> Any:
        f, c = self.framing, self.crop
        graph = av.filter.Graph()
        yuv420p = av.VideoFormat("yuv420p")
        chain = [graph.add_buffer(width=self.width, height=self.height, format=yuv420p, time_base=_MS)]
        if (c.x, c.y, c.width, c.height) != (0, 0, self.width, self.height):
            chain.append(graph.add("crop", f"w={c.width}:h={c.height}:x={c.x}:y={c.y}:exact=1"))
        if f.rotation == 90:
            chain.append(graph.add("transpose", "dir=clock"))
        elif f.rotation == 270:
            chain.append(graph.add("transpose", "dir=cclock"))
        elif f.rotation == 180:
            chain += [graph.add("hflip"), graph.add("vflip")]
        if f.mirror:
            chain.append(graph.add("hflip"))
        chain.append(graph.add("buffersink"))
        for a, b in itertools.pairwise(chain):
            a.link_to(b)
        graph.configure()
        return graph

    def apply(self, frame: av.VideoFrame) -> av.VideoFrame:
        """The framed picture (capture thread). ``frame`` must be yuv420p at the configured size."""
        if self.path == "none":
            return frame
        if self.path == "filter":
            pts, time_base = frame.pts, frame.time_base
            frame.pts = 0 if pts is None else pts
            frame.time_base = Fraction(1, 1000)
            self._graph.push(frame)
            out: av.VideoFrame = self._graph.pull()
            _stamp_time(out, pts, time_base)
            return out
        rows = self.framing.rotation == 180
        cols = self.framing.mirror != rows  # 180° reverses columns too; mirror reverses them back
        if self.path == "crop":
            # The crop at its own pixels, into a new frame (downstream may still hold the last one; 0.08 ms).
            c = self.crop
            cropped = av.VideoFrame(c.width, c.height, "yuv420p")
            for i, (s, d) in enumerate(zip(plane_views(frame), plane_views(cropped), strict=True)):
                k = 1 if i == 0 else 2
                _flip(s[c.y // k : (c.y + c.height) // k, c.x // k : (c.x + c.width) // k], d, rows, cols)
            _stamp_time(cropped, frame.pts, frame.time_base)
            return cropped
        dst = self._spare
        if dst is None or dst.width != frame.width or dst.height != frame.height:
            dst = av.VideoFrame(frame.width, frame.height, "yuv420p")
        for s, d in zip(plane_views(frame), plane_views(dst), strict=True):
            _flip(s, d, rows, cols)
        _stamp_time(dst, frame.pts, frame.time_base)
        self._spare = frame
        return dst

    def close(self) -> None:
        self._graph = None
        self._spare = None


# -- the engine's framed capture ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One picture before framing: ``yuv`` (H*3/2, W) yuv420p, the framing then, CLOCK_MONOTONIC ns."""

    yuv: U8
    width: int
    height: int
    framing: Framing
    captured_ns: int

    @property
    def mean_luma(self) -> float:
        """Mean of the luma plane, 0..255 (8-bit video range is 16..235)."""
        return float(self.yuv[: self.height].mean())


class FramedCapture:
    """A capture source with the framing applied to its pictures (a :class:`CaptureSource` itself).

    ``on_open`` (optional) runs on the capture thread after each successful open — the engine reapplies the
    calibrated camera controls there, since a camera unplugged and plugged back has forgotten them.
    """

    def __init__(
        self,
        source: CaptureSource,
        framer: Framer,
        *,
        on_open: Callable[[], None] | None = None,
    ) -> None:
        self.source = source
        self.name = source.name
        self._on_open = on_open
        self.framer = framer
        self._framing = framer.framing
        self.folded = False
        """The zoom's crop is done by the camera source in its own conversion (MJPEG; see
        :meth:`app.video.capture.v4l2.V4L2Capture.set_crop`): ``framer`` only mirrors or turns."""
        self._use(framer.framing)
        self._pending: Framing | None = None
        self._want_snapshot = threading.Event()
        self._snapshot_ready = threading.Event()
        self._snapshot: Snapshot | None = None
        self._lock = threading.Lock()
        self.frames = 0
        self.framing_ns = 0
        """Total time spent framing, ns (capture thread)."""

    @property
    def framing(self) -> Framing:
        return self._pending or self._framing

    @property
    def path(self) -> str:
        """How the framing is applied: the framer's path ("none", "numpy", "filter"), after "camera+"
        when the crop is folded into the camera's conversion."""
        return f"camera+{self.framer.path}" if self.folded else self.framer.path

    def _use(self, framing: Framing) -> None:
        """Apply ``framing`` from now on (capture thread, or before it runs): its crop folded into the
        source's conversion where the source can, the rest in a :class:`Framer`."""
        width, height = self.framer.width, self.framer.height
        crop = framing.crop(width, height, width, height)
        whole = crop == Crop(0, 0, width & ~1, height & ~1)
        set_crop = getattr(self.source, "set_crop", None)
        folded = False
        if set_crop is not None:
            if not whole and framing.rotation in (0, 180):
                folded = bool(set_crop((crop.x, crop.y, crop.width, crop.height)))
            else:
                set_crop(None)
        rest = Framing(mirror=framing.mirror, rotation=framing.rotation) if folded else framing
        if rest != self.framer.framing:
            self.framer.close()
            self.framer = Framer(rest, width, height)
        self._framing, self.folded = framing, folded

    @property
    def dropped(self) -> int | None:
        dropped = getattr(self.source, "dropped", None)
        return dropped if isinstance(dropped, int) else None

    def open(self) -> None:
        self.source.open()
        if self._on_open is not None:
            try:
                self._on_open()
            except Exception:
                # Controls are a refinement: a camera that refuses them still sends pictures.
                log.exception("camera %s: applying the calibrated controls failed", self.name)

    def set_framing(self, framing: Framing) -> None:
        """Use ``framing`` from the next picture on (any thread)."""
        self._pending = framing

    def snapshot(self, timeout_s: float = 2.0) -> Snapshot | None:
        """The next picture, before framing, or None when none came within ``timeout_s`` (any thread but
        the capture thread)."""
        with self._lock:
            self._snapshot_ready.clear()
            self._want_snapshot.set()
            if not self._snapshot_ready.wait(timeout_s):
                self._want_snapshot.clear()
                return None
            return self._snapshot

    def read(self) -> CapturedFrame:
        pending, self._pending = self._pending, None
        if pending is not None and pending != self._framing:
            self._use(pending)
            log.info("framing now %s (%s)", pending, self.path)
        cf = self.source.read()
        if self._want_snapshot.is_set() and not cf.slate:
            self._want_snapshot.clear()
            whole = cf.frame
            raw = getattr(self.source, "last_decoded", None) if self.folded else None
            if raw is not None:
                # The camera's own picture, not the crop its conversion made of it.
                whole = raw.reformat(self.framer.width, self.framer.height, "yuv420p")
            self._snapshot = Snapshot(
                np.asarray(whole.to_ndarray(format="yuv420p"), dtype=np.uint8),
                whole.width,
                whole.height,
                self._framing,
                cf.captured_ns,
            )
            self._snapshot_ready.set()
        if self.framer.path == "none":
            return cf
        start = time.perf_counter_ns()
        frame = self.framer.apply(cf.frame)
        self.framing_ns += time.perf_counter_ns() - start
        self.frames += 1
        return CapturedFrame(frame, cf.index, cf.captured_ns, cf.slate)

    def close(self) -> None:
        self.source.close()

    # -- control socket helpers (the engine's handlers call these; ValueError for bad arguments) ----------

    def set_framing_command(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """``set_framing``: change some of zoom, offset_x, offset_y, mirror, rotation; the new framing."""
        merged = {**self.framing.to_json(), **args}
        framing = Framing.from_json(merged)
        self.set_framing(framing)
        return {"framing": framing.to_json()}

    def snapshot_command(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """``snapshot``: the next picture before framing as a JPEG with the crop drawn on it."""
        width = args.get("width", 640)
        if isinstance(width, bool) or not isinstance(width, int) or not 64 <= width <= 1920:
            raise ValueError('"width" must be an integer from 64 to 1920')
        snap = self.snapshot()
        if snap is None:
            raise ValueError("no camera picture within 2 s (is the camera unavailable, or privacy on?)")
        import base64

        jpeg = snapshot_jpeg(snap, width)
        crop = snap.framing.crop(snap.width, snap.height, snap.width, snap.height)
        return {
            "jpeg_base64": base64.b64encode(jpeg).decode("ascii"),
            "picture": "camera, before framing; the rectangle is what is sent",
            "width": snap.width,
            "height": snap.height,
            "framing": snap.framing.to_json(),
            "crop": asdict(crop),
            "mean_luma": round(snap.mean_luma, 2),
            "captured_ns": snap.captured_ns,
        }


def stored_camera_calibration(settings: Settings) -> tuple[Framing, dict[str, int]]:
    """The framing and control values the engine starts with: the latest stored camera calibration's
    (``app.calibration.applied(state_dir, "camera")``), else the framing ``[camera]`` asks for and the
    control values it sets. A stored framing that cannot be read is logged and the settings' used."""
    from app.calibration import applied

    stored = applied(settings.engine.state_dir, "camera")
    framing, _ = framing_from_settings(settings.camera)
    controls = desired_controls(settings.camera)
    if "framing" in stored:
        try:
            framing = Framing.from_json(stored["framing"])
        except ValueError as exc:
            log.warning("camera: the stored framing is unusable (%s); using the settings' framing", exc)
    raw = stored.get("controls")
    if isinstance(raw, Mapping):
        controls = {k: v for k, v in raw.items() if isinstance(v, int) and not isinstance(v, bool)}
    return framing, controls


def desired_controls(camera: CameraSettings) -> dict[str, int]:
    """The control values ``[camera]`` sets, as V4L2 values by control name (unset ones are left alone)."""
    out: dict[str, int] = {}
    if camera.exposure_auto is not None:
        out["exposure_auto"] = 3 if camera.exposure_auto else 1  # UVC: aperture priority is "auto"
    for name in ("white_balance_auto", "focus_auto"):
        value = getattr(camera, name)
        if value is not None:
            out[name] = int(value)
    for name in ("exposure_absolute", "gain", "white_balance_temperature", "focus_absolute"):
        value = getattr(camera, name)
        if value is not None:
            out[name] = value
    if camera.power_line_frequency is not None:
        out["power_line_frequency"] = POWER_LINE[camera.power_line_frequency]
    return out


POWER_LINE: Final = {"disabled": 0, "50hz": 1, "60hz": 2, "auto": 3}
"""``camera.power_line_frequency`` → the V4L2 menu index."""


def apply_controls(controls: CameraControls, values: Mapping[str, int]) -> tuple[dict[str, int], list[str]]:
    """Set ``values`` in the order of :data:`app.video.controls.KNOWN` (an auto switch before the absolute
    value it unlocks); the values read back and one message per control that refused."""
    from app.video.controls import KNOWN, ControlsError

    order = [n for n in KNOWN if n in values] + [n for n in values if n not in KNOWN]
    done: dict[str, int] = {}
    problems: list[str] = []
    for name in order:
        try:
            done[name] = controls.set(name, values[name])
        except ControlsError as exc:
            problems.append(str(exc))
    return done, problems


def framed_capture(settings: Settings, source: CaptureSource) -> FramedCapture:
    """``source`` with the stored (or configured) framing, and the camera controls reapplied at each open
    (the engine's capture setup)."""
    framing, values = stored_camera_calibration(settings)
    video = settings.video

    def reapply() -> None:
        if not values:
            return
        from app.video.controls import ControlsError, open_controls

        try:
            controls = open_controls(settings.capture)
        except ControlsError as exc:
            log.warning("camera controls not applied: %s", exc)
            return
        try:
            done, problems = apply_controls(controls, values)
        finally:
            controls.close()
        for problem in problems:
            log.warning("camera control not applied: %s", problem)
        log.info("camera controls applied: %s", ", ".join(f"{k}={v}" for k, v in done.items()) or "none")

    framed = FramedCapture(source, Framer(framing, video.width, video.height), on_open=reapply)
    log.info("framing %s (%s)", framing, framed.path)
    return framed


def snapshot_jpeg(snap: Snapshot, width: int = 640, quality: int = 80) -> bytes:
    """``snap`` scaled to ``width`` pixels wide as a JPEG, with its framing's crop drawn as a yellow
    rectangle and the framing written in its corner (any thread; a few ms)."""
    import io

    from PIL import Image, ImageDraw

    height = max(2, round(snap.height * width / snap.width / 2) * 2)
    frame = av.VideoFrame.from_ndarray(snap.yuv, format="yuv420p")
    rgb = frame.reformat(width, height, "rgb24", interpolation="BILINEAR").to_ndarray()
    image = Image.fromarray(rgb, "RGB")
    draw = ImageDraw.Draw(image)
    crop = snap.framing.crop(snap.width, snap.height, snap.width, snap.height)
    sx, sy = width / snap.width, height / snap.height
    box = (crop.x * sx, crop.y * sy, (crop.x + crop.width) * sx - 1, (crop.y + crop.height) * sy - 1)
    draw.rectangle(box, outline=(255, 220, 0), width=max(2, width // 320))
    f = snap.framing
    label = f"zoom {f.zoom:.2f}  rotation {f.rotation}" + ("  mirrored" if f.mirror else "")
    draw.text((box[0] + 6, box[1] + 4), label, fill=(255, 220, 0))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()
