"""Tests for app.video.display.sdl: the right picture reaches the screen, headless and under Xvfb."""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import subprocess
import threading
from collections.abc import Iterator

import av
import numpy as np
import pytest

from app.video.display import DisplayError, SdlSink
from app.video.display.sdl import letterbox
from app.video.frames import DecodedFrame

try:
    import sdl2
except (ImportError, RuntimeError) as exc:  # pysdl2 raises RuntimeError when libSDL2 is missing
    pytest.skip(f"pysdl2/libSDL2 not available: {exc}", allow_module_level=True)

RED = (255, 0, 0)
BLUE = (0, 0, 255)
TOLERANCE = 12  # 8-bit levels: limited-range YUV, 4:2:0 chroma and the renderer's rounding


def picture(
    width: int, height: int, left: tuple[int, int, int], right: tuple[int, int, int], fmt: str = "yuv420p"
) -> DecodedFrame:
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    rgb[:, : width // 2] = left
    rgb[:, width // 2 :] = right
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=fmt)
    return DecodedFrame(frame=frame, frame_id=0)


def assert_colour(pixels: np.ndarray, colour: tuple[int, int, int]) -> None:
    mean = pixels.reshape(-1, 3).mean(axis=0)
    assert np.all(np.abs(mean - colour) <= TOLERANCE), f"mean {mean} is not {colour}"


def open_headless(width: int = 320, height: int = 240) -> SdlSink:
    """An open SDL sink on the offscreen driver, or the dummy driver where offscreen is missing."""
    try:
        sink = SdlSink("offscreen", False, "test", width, height)
        sink.open()
    except DisplayError:
        sink = SdlSink("dummy", False, "test", width, height)
        sink.open()
    return sink


@pytest.fixture
def sink() -> Iterator[SdlSink]:
    s = open_headless()
    yield s
    s.close()


def test_solid_red_frame_reads_back_red(sink: SdlSink) -> None:
    df = picture(320, 240, RED, RED)
    sink.show(df)
    pixels = sink.read_back()
    assert pixels.shape == (240, 320, 3)
    assert_colour(pixels, RED)
    assert df.times.shown > 0
    assert sink.frames == 1 and not sink.closed


def test_left_and_right_halves_land_on_the_right_sides(sink: SdlSink) -> None:
    sink.show(picture(320, 240, RED, BLUE))
    pixels = sink.read_back()
    # Stay clear of the boundary, where chroma subsampling and filtering blend the two.
    assert_colour(pixels[:, 8:150], RED)
    assert_colour(pixels[:, 170:312], BLUE)


def test_nv12_frames_are_shown_too(sink: SdlSink) -> None:
    sink.show(picture(320, 240, BLUE, RED, fmt="nv12"))
    pixels = sink.read_back()
    assert_colour(pixels[:, 8:150], BLUE)
    assert_colour(pixels[:, 170:312], RED)


def test_other_pixel_formats_are_converted(sink: SdlSink) -> None:
    sink.show(picture(320, 240, RED, RED, fmt="rgb24"))
    assert_colour(sink.read_back(), RED)


def test_size_change_recreates_texture_and_letterboxes(sink: SdlSink) -> None:
    sink.show(picture(320, 240, RED, RED))
    sink.show(picture(160, 120, BLUE, BLUE))  # same aspect: scaled up to fill the window
    pixels = sink.read_back()
    assert pixels.shape == (240, 320, 3)
    assert_colour(pixels, BLUE)
    sink.show(picture(320, 120, RED, RED))  # wider: bars above and below
    assert sink.read_back().shape == (120, 320, 3)
    assert_colour(sink.read_back(), RED)
    whole = sink.read_back(whole_output=True)
    assert whole.shape == (240, 320, 3)
    assert whole[:55].max() < 16 and whole[-55:].max() < 16
    assert_colour(whole[65:175], RED)


def test_hook_sees_every_frame(sink: SdlSink) -> None:
    seen: list[int] = []
    sink.on_frame = lambda df: seen.append(df.times.shown)
    for _ in range(3):
        sink.show(picture(320, 240, RED, BLUE))
    assert len(seen) == 3 and all(t > 0 for t in seen)


def test_quit_event_sets_closed(sink: SdlSink) -> None:
    event = sdl2.SDL_Event()
    event.type = sdl2.SDL_QUIT
    assert sdl2.SDL_PushEvent(ctypes.byref(event)) == 1
    sink.show(picture(320, 240, RED, RED))
    assert sink.closed


def test_poll_events_sees_a_close_without_frames(sink: SdlSink) -> None:
    assert sink.poll_events() is False
    event = sdl2.SDL_Event()
    event.type = sdl2.SDL_QUIT
    sdl2.SDL_PushEvent(ctypes.byref(event))
    assert sink.poll_events() is True


def test_use_off_the_display_thread_is_refused(sink: SdlSink) -> None:
    errors: list[BaseException] = []

    def show() -> None:
        try:
            sink.show(picture(320, 240, RED, RED))
        except DisplayError as exc:
            errors.append(exc)

    thread = threading.Thread(target=show)
    thread.start()
    thread.join()
    assert len(errors) == 1 and "display thread" in str(errors[0])


def test_show_before_open_and_after_close() -> None:
    sink = SdlSink("offscreen", False, "test", 320, 240)
    with pytest.raises(DisplayError, match="not open"):
        sink.show(picture(320, 240, RED, RED))
    sink.close()
    assert sink.closed


def test_bad_driver_names_the_driver() -> None:
    sink = SdlSink("nosuchdriver", True, "test", 320, 240)
    with pytest.raises(DisplayError, match="SDL video driver 'nosuchdriver' failed"):
        sink.open()


def test_read_back_before_any_frame(sink: SdlSink) -> None:
    with pytest.raises(DisplayError, match="nothing has been shown"):
        sink.read_back()


@pytest.mark.parametrize(
    ("out", "picture_size", "rect"),
    [
        ((1920, 1080), (1920, 1080), (0, 0, 1920, 1080)),
        ((1920, 1080), (1280, 720), (0, 0, 1920, 1080)),
        ((1920, 1200), (1920, 1080), (0, 60, 1920, 1080)),
        ((1280, 1024), (1920, 1080), (0, 152, 1280, 720)),
        ((1080, 1920), (1920, 1080), (0, 656, 1080, 608)),
        ((1920, 1080), (1440, 1080), (240, 0, 1440, 1080)),
    ],
)
def test_letterbox(
    out: tuple[int, int], picture_size: tuple[int, int], rect: tuple[int, int, int, int]
) -> None:
    assert letterbox(*out, *picture_size) == rect


@pytest.fixture
def xvfb(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private Xvfb; yields its DISPLAY (":N"), which Xvfb picks itself so parallel runs never clash."""
    binary = shutil.which("Xvfb")
    if binary is None:
        pytest.skip("Xvfb is not installed")
    read_fd, write_fd = os.pipe()
    process = subprocess.Popen(
        [binary, "-displayfd", str(write_fd), "-screen", "0", "640x480x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    try:
        number = b""
        while not number.endswith(b"\n"):
            ready, _, _ = select.select([read_fd], [], [], 15)
            chunk = os.read(read_fd, 16) if ready else b""
            if not chunk:
                pytest.skip("Xvfb did not start")
            number += chunk
        display = f":{int(number)}"
        monkeypatch.setenv("DISPLAY", display)
        yield display
    finally:
        os.close(read_fd)
        process.terminate()
        process.wait(timeout=10)


def test_x11_window_under_xvfb(xvfb: str) -> None:
    sink = SdlSink("x11", False, "Doorway test", 320, 240)
    sink.open()
    try:
        assert sink.driver_name == "x11"
        for _ in range(3):
            sink.show(picture(320, 240, BLUE, RED))
        pixels = sink.read_back()
        assert pixels.shape == (240, 320, 3)
        assert_colour(pixels[:, 8:150], BLUE)
        assert_colour(pixels[:, 170:312], RED)
        assert not sink.closed
    finally:
        sink.close()
