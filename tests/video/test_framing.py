"""Framing: exact pixels on small frames (mirror, rotations, crop offsets, zoom, chroma alignment), the
life-size geometry, live changes and snapshots through FramedCapture."""

from __future__ import annotations

import io
import math
import threading
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

from app.settings import CameraSettings
from app.video.frames import CapturedFrame
from app.video.framing import (
    Crop,
    FramedCapture,
    Framer,
    Framing,
    Snapshot,
    framing_from_geometry,
    framing_from_settings,
    plane_views,
    snapshot_jpeg,
)

Planes = list[np.ndarray[Any, np.dtype[np.uint8]]]


def random_frame(width: int, height: int, seed: int = 1) -> av.VideoFrame:
    rng = np.random.default_rng(seed)
    frame = av.VideoFrame(width, height, "yuv420p")
    for view in plane_views(frame):
        view[:] = rng.integers(0, 256, view.shape, dtype=np.uint8)
    frame.pts = 7
    return frame


def planes_of(frame: av.VideoFrame) -> Planes:
    return [v.copy() for v in plane_views(frame)]


@pytest.mark.parametrize("width", [16, 14, 64])
@pytest.mark.parametrize(
    ("mirror", "rotation", "expect"),
    [
        (True, 0, lambda p: p[:, ::-1]),
        (False, 180, lambda p: p[::-1, ::-1]),
        (True, 180, lambda p: p[::-1]),
    ],
)
def test_mirror_and_180_exact(width: int, mirror: bool, rotation: int, expect: Any) -> None:
    frame = random_frame(width, 12)
    before = planes_of(frame)
    framer = Framer(Framing(mirror=mirror, rotation=rotation), width, 12)
    assert framer.path == "numpy"
    out = framer.apply(frame)
    assert out.pts == 7 and (out.width, out.height) == (width, 12)
    for got, src in zip(planes_of(out), before, strict=True):
        np.testing.assert_array_equal(got, expect(src))


def test_identity_passes_the_frame_through() -> None:
    frame = random_frame(16, 12)
    framer = Framer(Framing(), 16, 12)
    assert framer.path == "none" and framer.apply(frame) is frame


def test_numpy_path_recycles_frames_and_never_touches_what_it_returned() -> None:
    framer = Framer(Framing(mirror=True), 16, 12)
    first, second, third = random_frame(16, 12, 1), random_frame(16, 12, 2), random_frame(16, 12, 3)
    out1 = framer.apply(first)
    kept = planes_of(out1)
    out2 = framer.apply(second)
    assert out2 is first  # the picture it was given last time is reused: no new frame per picture
    out3 = framer.apply(third)
    assert out3 is second
    for got, want in zip(planes_of(out1), kept, strict=True):
        np.testing.assert_array_equal(got, want)


def test_crop_geometry_and_even_alignment() -> None:
    assert Framing().crop(16, 12, 16, 12) == Crop(0, 0, 16, 12)
    # zoom 2: 8x6 centred at (4, 3); the odd top is moved to 2 so chroma rows stay aligned.
    assert Framing(zoom=2).crop(16, 12, 16, 12) == Crop(4, 2, 8, 6)
    assert Framing(zoom=2, offset_x=-1, offset_y=-1).crop(16, 12, 16, 12) == Crop(0, 0, 8, 6)
    assert Framing(zoom=2, offset_x=1, offset_y=1).crop(16, 12, 16, 12) == Crop(8, 6, 8, 6)
    # A 4:3 source sending 16:9: the largest 16:9 rectangle, centred.
    assert Framing().crop(640, 480, 640, 360) == Crop(0, 60, 640, 360)
    for zoom in (1.1, 1.37, 2.9, 8.0):
        for ox in (-1.0, -0.3, 0.0, 0.8, 1.0):
            c = Framing(zoom=zoom, offset_x=ox, offset_y=-ox).crop(1920, 1080, 1920, 1080)
            assert c.x % 2 == c.y % 2 == c.width % 2 == c.height % 2 == 0
            assert c.x >= 0 and c.y >= 0 and c.x + c.width <= 1920 and c.y + c.height <= 1080
            assert abs(c.width - 1920 / zoom) <= 2 and abs(c.height - 1080 / zoom) <= 2


def test_crop_of_rotated_framings_maps_back_to_the_source() -> None:
    # 32x16 source on its side: the upright picture is 16 wide, 32 tall; the 2:1 crop is 16x8 centred.
    assert Framing(rotation=90).crop(32, 16, 32, 16) == Crop(12, 0, 8, 16)
    assert Framing(rotation=270).crop(32, 16, 32, 16) == Crop(12, 0, 8, 16)
    # Pan to the top of the upright picture: for 90° (clockwise) that is the source's left.
    assert Framing(rotation=90, offset_y=-1).crop(32, 16, 32, 16) == Crop(0, 0, 8, 16)
    assert Framing(rotation=270, offset_y=-1).crop(32, 16, 32, 16) == Crop(24, 0, 8, 16)
    assert Framing(rotation=180, zoom=2, offset_x=-1, offset_y=-1).crop(16, 12, 16, 12) == Crop(8, 6, 8, 6)


@pytest.mark.parametrize(("mirror", "rotation"), [(False, 0), (True, 0), (False, 180), (True, 180)])
def test_zoom_sends_the_crop_at_its_own_pixels(mirror: bool, rotation: int) -> None:
    # Not scaled back up: the far side's display scales every picture to its screen anyway.
    frame = random_frame(32, 24)
    src = planes_of(frame)
    framing = Framing(zoom=2, offset_x=1, offset_y=-1, mirror=mirror, rotation=rotation)
    framer = Framer(framing, 32, 24)
    crop = Crop(16, 0, 16, 12) if rotation == 0 else Crop(0, 12, 16, 12)  # the upright top right
    assert framer.path == "crop" and framer.crop == crop and (framer.out_width, framer.out_height) == (16, 12)
    out = framer.apply(frame)
    assert (out.width, out.height, out.format.name, out.pts) == (16, 12, "yuv420p", 7)
    for i, (got, plane) in enumerate(zip(planes_of(out), src, strict=True)):
        s = 1 if i == 0 else 2
        want = plane[crop.y // s : (crop.y + 12) // s, crop.x // s : (crop.x + 16) // s]
        want = want[::-1, ::-1] if rotation == 180 else want
        np.testing.assert_array_equal(got, want[:, ::-1] if mirror else want)
    assert framer.apply(random_frame(32, 24)) is not out  # A new frame each time: the last may be in use.


@pytest.mark.parametrize(("rotation", "k"), [(90, -1), (270, 1)])
def test_rotation_90_and_270_exact(rotation: int, k: int) -> None:
    frame = random_frame(32, 16)
    src = planes_of(frame)
    framer = Framer(Framing(rotation=rotation), 32, 16)
    assert (framer.out_width, framer.out_height) == (16, 8)  # The crop's own pixels, turned.
    out = framer.apply(frame)
    assert (out.width, out.height) == (16, 8)
    for i, (got, plane) in enumerate(zip(planes_of(out), src, strict=True)):
        s = 1 if i == 0 else 2
        region = plane[:, 12 // s : 20 // s]  # crop (12, 0, 8, 16)
        np.testing.assert_array_equal(got, np.rot90(region, k))


def test_rotation_of_a_square_picture_with_mirror() -> None:
    frame = random_frame(16, 16)
    src = planes_of(frame)
    out = Framer(Framing(rotation=90, mirror=True), 16, 16).apply(frame)
    for got, plane in zip(planes_of(out), src, strict=True):
        np.testing.assert_array_equal(got, np.rot90(plane, -1)[:, ::-1])


def test_framing_values_are_checked_and_round_trip() -> None:
    f = Framing(zoom=1.5, offset_x=-0.25, offset_y=0.5, mirror=True, rotation=270)
    assert Framing.from_json(f.to_json()) == f
    assert Framing.from_json({"zoom": 2}) == Framing(zoom=2.0)
    with pytest.raises(ValueError, match=r"zoom = 0.5 is out of range \(allowed: 1 to 8\)"):
        Framing(zoom=0.5)
    with pytest.raises(ValueError, match=r"offset_y = 1\.5 is out of range"):
        Framing.from_json({"offset_y": 1.5})
    with pytest.raises(ValueError, match="rotation = 45 is not allowed"):
        Framing.from_json({"rotation": 45})
    with pytest.raises(ValueError, match="unknown framing keys: tilt"):
        Framing.from_json({"tilt": 1})
    with pytest.raises(ValueError, match="mirror must be true or false"):
        Framing.from_json({"mirror": 1})


@pytest.mark.parametrize(
    ("distance", "fov", "screen", "center", "camera"),
    [(2.0, 60.0, 1.2, 1.3, 1.5), (3.0, 45.0, 1.0, 1.2, 1.0), (1.5, 70.0, 1.6, 1.1, 1.1)],
)
def test_geometry_shows_the_viewing_plane_life_size_at_eye_level(
    distance: float, fov: float, screen: float, center: float, camera: float
) -> None:
    framing, result = framing_from_geometry(
        screen_height_m=screen,
        screen_center_height_m=center,
        camera_vfov_deg=fov,
        camera_height_m=camera,
        viewing_distance_m=distance,
    )
    assert result.fits
    picture = 2 * distance * math.tan(math.radians(fov) / 2)
    # The crop spans exactly the screen's height in the viewing plane: life-size.
    assert picture / framing.zoom == pytest.approx(screen)
    # Its centre is at the screen's centre height: heights land at the same heights on the far wall.
    top_m = (picture - screen) * (framing.offset_y + 1) / 2
    assert camera + picture / 2 - top_m - screen / 2 == pytest.approx(center)


def test_geometry_that_cannot_be_met_is_clamped_and_says_so() -> None:
    narrow, result = framing_from_geometry(
        screen_height_m=2.0, screen_center_height_m=1.3, camera_vfov_deg=40, camera_height_m=1.3,
        viewing_distance_m=1.0,
    )  # fmt: skip
    assert narrow.zoom == 1.0 and result.wanted_zoom < 1 and not result.fits
    high, result = framing_from_geometry(
        screen_height_m=1.0, screen_center_height_m=1.0, camera_vfov_deg=60, camera_height_m=2.5,
        viewing_distance_m=1.5,
    )  # fmt: skip
    assert high.offset_y == 1.0 and result.wanted_offset_y > 1 and not result.fits


def test_framing_from_settings() -> None:
    explicit, geometry = framing_from_settings(CameraSettings(zoom=1.5, offset_y=-0.5, mirror=True))
    assert explicit == Framing(zoom=1.5, offset_y=-0.5, mirror=True) and geometry is None
    framing, geometry = framing_from_settings(
        CameraSettings(screen_height_m=1.2, screen_center_height_m=1.3, camera_vfov_deg=60,
                       camera_height_m=1.5, viewing_distance_m=2.0, offset_x=0.25, rotation=180)
    )  # fmt: skip
    assert geometry is not None and framing.zoom == pytest.approx(geometry.wanted_zoom)
    assert framing.offset_x == 0.25 and framing.rotation == 180
    with pytest.raises(ValueError, match="missing: camera_vfov_deg"):
        CameraSettings(screen_height_m=1.2, screen_center_height_m=1.3, camera_height_m=1.5,
                       viewing_distance_m=2.0)  # fmt: skip


class ListSource:
    """A capture source that hands out prepared frames (the last one repeatedly)."""

    name = "list"

    def __init__(self, frames: list[CapturedFrame]) -> None:
        self.frames = frames
        self.opened = 0

    def open(self) -> None:
        self.opened += 1

    def read(self) -> CapturedFrame:
        return self.frames.pop(0) if len(self.frames) > 1 else self.frames[0]

    def close(self) -> None:
        pass


def test_framed_capture_applies_changes_live_and_snapshots_before_framing() -> None:
    frames = [CapturedFrame(random_frame(16, 12, s), s, s * 1000) for s in range(1, 8)]
    originals = [planes_of(cf.frame) for cf in frames]
    opened: list[bool] = []
    cap = FramedCapture(
        ListSource(list(frames)), Framer(Framing(), 16, 12), on_open=lambda: opened.append(True)
    )
    cap.open()
    assert opened == [True]
    assert cap.read().frame is frames[0].frame  # no framing: untouched
    cap.set_framing(Framing(mirror=True))
    out = cap.read()
    np.testing.assert_array_equal(planes_of(out.frame)[0], originals[1][0][:, ::-1])
    assert out.index == 2 and out.captured_ns == 2000

    got: list[Snapshot | None] = []
    t = threading.Thread(target=lambda: got.append(cap.snapshot(5.0)))
    t.start()
    while not cap._want_snapshot.is_set():
        pass
    cap.read()
    t.join(5)
    snap = got[0]
    assert snap is not None and snap.framing == Framing(mirror=True) and snap.captured_ns == 3000
    np.testing.assert_array_equal(snap.yuv[:12], originals[2][0])  # before framing
    assert snap.mean_luma == pytest.approx(float(originals[2][0].mean()))


def test_framed_capture_never_snapshots_a_slate() -> None:
    slate = CapturedFrame(random_frame(16, 12), 0, 0, slate=True)
    cap = FramedCapture(ListSource([slate]), Framer(Framing(mirror=True), 16, 12))
    cap.open()
    got: list[Snapshot | None] = []
    t = threading.Thread(target=lambda: got.append(cap.snapshot(0.3)))
    t.start()
    while not cap._want_snapshot.is_set():
        pass
    assert cap.read().slate
    t.join(5)
    assert got == [None]


def test_framed_capture_commands() -> None:
    cap = FramedCapture(ListSource([CapturedFrame(random_frame(16, 12), 0, 0)]), Framer(Framing(), 16, 12))
    assert cap.set_framing_command({"zoom": 2, "mirror": True})["framing"]["zoom"] == 2.0
    assert cap.framing == Framing(zoom=2.0, mirror=True)
    with pytest.raises(ValueError, match="unknown framing keys"):
        cap.set_framing_command({"pan": 1})
    with pytest.raises(ValueError, match='"width" must be an integer from 64 to 1920'):
        cap.snapshot_command({"width": 10})


def test_snapshot_jpeg_draws_the_crop() -> None:
    yuv = np.full((360 * 3 // 2, 640), 128, np.uint8)
    yuv[:360] = 60
    snap = Snapshot(yuv, 640, 360, Framing(zoom=2, offset_x=-1, offset_y=-1), 0)
    image = Image.open(io.BytesIO(snapshot_jpeg(snap, 320)))
    assert image.format == "JPEG" and image.size == (320, 180)
    rgb = np.asarray(image.convert("RGB")).astype(int)
    # The crop (0, 0, 320, 180) of the source is the top-left quarter: its right edge at x ~ 159 is yellow.
    edge = rgb[45, 156:161]
    assert np.any((edge[:, 0] > 180) & (edge[:, 1] > 160) & (edge[:, 2] < 110))
    assert np.all(abs(rgb[140, 250] - 49) < 12)  # outside the rectangle: the grey picture
    assert np.all(abs(rgb[60, 80] - 49) < 12)  # inside too: only the outline is drawn
