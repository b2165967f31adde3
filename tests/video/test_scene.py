"""The synthetic scene: determinism, motion, sizes, the stamp in every render, render_into and PSNR."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys

import av
import numpy as np
import pytest

from app.video.scene import Scene, psnr_y
from app.video.stamp import Stamp, read_stamp, stamp_rows

SIZES = [(160, 120), (320, 240), (640, 360), (1280, 720), (1920, 1080), (2880, 1620), (322, 182)]


@pytest.fixture(scope="module")
def scene720() -> Scene:
    return Scene(1280, 720, seed=7)


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_shape_dtype_and_stamp(width: int, height: int) -> None:
    scene = Scene(width, height)
    img = scene.render(41, 1_234_567)
    assert img.shape == (height * 3 // 2, width)
    assert img.dtype == np.uint8
    assert read_stamp(img[:height]) == Stamp(41, 1_234_567)
    frame = av.VideoFrame.from_ndarray(img, format="yuv420p")
    assert (frame.width, frame.height) == (width, height)


def test_same_inputs_same_bytes(scene720: Scene) -> None:
    again = Scene(1280, 720, seed=7)
    for index in (0, 1, 99, 10_000):
        assert np.array_equal(scene720.render(index, 5), again.render(index, 5))
    # Rendering does not disturb later renders (no state carried between frames).
    first = scene720.render(3, 3).copy()
    scene720.render(500, 1)
    assert np.array_equal(scene720.render(3, 3), first)


def test_identical_bytes_in_another_process() -> None:
    code = (
        "import hashlib; from app.video.scene import Scene; "
        "print(hashlib.sha256(Scene(320, 240, seed=11).render(77, 9).tobytes()).hexdigest())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == hashlib.sha256(Scene(320, 240, seed=11).render(77, 9).tobytes()).hexdigest()


def test_seed_changes_background() -> None:
    a = Scene(320, 240, seed=0).render(0, 0)
    b = Scene(320, 240, seed=1).render(0, 0)
    assert not np.array_equal(a, b)


def test_consecutive_frames_differ_but_only_locally(scene720: Scene) -> None:
    rows = stamp_rows(1280)
    a = scene720.render(10, 0)[rows:720]
    b = scene720.render(11, 0)[rows:720]
    changed = np.count_nonzero(a != b) / a.size
    # Things move (the person and the ball), but most of the room stays still: realistic for an encoder.
    assert 0.002 < changed < 0.25


def test_stamp_does_not_change_the_picture(scene720: Scene) -> None:
    rows = stamp_rows(1280)
    a = scene720.render(10, 0)
    b = scene720.render(10, 999_999)
    assert np.array_equal(a[rows:], b[rows:])
    assert not np.array_equal(a[:rows], b[:rows])


def test_background_is_textured(scene720: Scene) -> None:
    y = scene720.render(0, 0)[:720].astype(np.float32)
    # Local detail (the encoder has something to code) but no per-pixel chaos.
    grad = np.abs(np.diff(y, axis=1)).mean()
    assert 0.5 < grad < 20
    assert y.std() > 15


def test_motion_is_periodic(scene720: Scene) -> None:
    # Every motion is a function of the index modulo its period, so the scene repeats after their lcm.
    period = math.lcm(300, 36, 90, 97, 41)
    rows = stamp_rows(1280)
    assert np.array_equal(scene720.render(5, 0)[rows:], scene720.render(5 + period, 0)[rows:])


def test_motion_is_smooth(scene720: Scene) -> None:
    # Consecutive frames are much more alike than frames half a walk apart.
    y0 = scene720.render(100, 0)[:720]
    y1 = scene720.render(101, 0)[:720]
    far = scene720.render(250, 0)[:720]
    assert psnr_y(y1, y0) > psnr_y(far, y0)


@pytest.mark.parametrize(("width", "height"), [(320, 240), (1920, 1080), (322, 182)])
def test_render_into_matches_render(width: int, height: int) -> None:
    scene = Scene(width, height, seed=2)
    frame = av.VideoFrame(width, height, "yuv420p")
    scene.render_into(frame, 123, 456)
    assert np.array_equal(frame.to_ndarray(), scene.render(123, 456))
    assert read_stamp(frame.to_ndarray()[:height]) == Stamp(123, 456)


def test_render_into_honours_line_padding() -> None:
    # 322 px wide: luma line_size is padded past the width; chroma (161 px) even more so.
    scene = Scene(322, 182)
    frame = av.VideoFrame(322, 182, "yuv420p")
    assert frame.planes[1].line_size > frame.planes[1].width
    scene.render_into(frame, 1, 2)
    assert np.array_equal(frame.to_ndarray(), scene.render(1, 2))


def test_render_into_rejects_wrong_frames() -> None:
    scene = Scene(320, 240)
    with pytest.raises(ValueError, match="yuv420p 320x240"):
        scene.render_into(av.VideoFrame(640, 480, "yuv420p"), 0, 0)
    with pytest.raises(ValueError, match="yuv420p 320x240"):
        scene.render_into(av.VideoFrame(320, 240, "rgb24"), 0, 0)


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="even"):
        Scene(321, 240)
    with pytest.raises(ValueError, match="even"):
        Scene(16, 16)


def test_psnr_sanity() -> None:
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (120, 160), dtype=np.uint8)
    assert psnr_y(ref, ref.copy()) == math.inf
    off_by_one = np.where(ref < 255, ref + 1, ref - 1).astype(np.uint8)
    assert psnr_y(off_by_one, ref) == pytest.approx(10 * math.log10(255**2), abs=1e-9)
    assert psnr_y(np.zeros_like(ref), np.full_like(ref, 255)) == pytest.approx(0.0)
    noisy = np.clip(ref.astype(int) + rng.normal(0, 5, ref.shape), 0, 255).astype(np.uint8)
    assert 30 < psnr_y(noisy, ref) < 40
    padded = np.zeros((120, 192), np.uint8)
    padded[:, :160] = ref
    assert psnr_y(padded[:, :160], ref) == math.inf
    with pytest.raises(ValueError, match="differ"):
        psnr_y(ref, ref[:, :100])


def test_psnr_after_x264_is_reasonable(scene720: Scene) -> None:
    from fractions import Fraction

    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = 1280, 720, "yuv420p"
    enc.time_base = Fraction(1, 30)
    enc.bit_rate = 3_000_000
    enc.options = {"preset": "ultrafast", "tune": "zerolatency"}
    dec = av.CodecContext.create("h264", "r")
    refs = [scene720.render(i, i) for i in range(4)]
    scores = []
    for i, ref in enumerate(refs):
        frame = av.VideoFrame.from_ndarray(ref, format="yuv420p")
        frame.pts = i
        for packet in enc.encode(frame):
            for out in dec.decode(packet):
                scores.append(psnr_y(out.to_ndarray()[:720], refs[len(scores)][:720]))
    for packet in enc.encode(None):
        for out in dec.decode(packet):
            scores.append(psnr_y(out.to_ndarray()[:720], refs[len(scores)][:720]))
    assert len(scores) == 4
    assert all(28 < s < 60 for s in scores)
