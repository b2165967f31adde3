"""Tests for app.video.display.null and the create_display factory."""

from __future__ import annotations

import av
import pytest

from app.settings import DisplaySettings
from app.video.display import DisplaySink, NullSink, SdlSink, create_display
from app.video.frames import DecodedFrame, FrameTimes


def decoded(frame_id: int) -> DecodedFrame:
    return DecodedFrame(
        frame=av.VideoFrame(64, 48, "yuv420p"), frame_id=frame_id, times=FrameTimes(decoded=1)
    )


def test_null_sink_stamps_counts_and_calls_the_hook() -> None:
    seen: list[DecodedFrame] = []
    sink = NullSink(seen.append)
    sink.open()
    frames = [decoded(i) for i in range(5)]
    for df in frames:
        sink.show(df)
    assert sink.frames == 5
    assert seen == frames
    assert all(df.times.shown >= df.times.decoded for df in frames)
    assert [df.times.shown for df in frames] == sorted(df.times.shown for df in frames)
    assert not sink.closed
    sink.close()
    sink.close()
    assert sink.closed


def test_null_sink_without_hook() -> None:
    sink = NullSink()
    sink.open()
    df = decoded(7)
    sink.show(df)
    assert df.times.shown > 0 and sink.frames == 1


def test_create_display_null() -> None:
    seen: list[DecodedFrame] = []
    sink: DisplaySink = create_display(DisplaySettings(backend="null"), 1920, 1080, on_frame=seen.append)
    assert isinstance(sink, NullSink)
    sink.open()
    sink.show(decoded(1))
    assert len(seen) == 1


def test_create_display_sdl_does_not_touch_sdl_until_open() -> None:
    settings = DisplaySettings(backend="sdl", sdl_driver="kmsdrm", fullscreen=True, window_title="Hall")
    sink = create_display(settings, 1280, 720)
    assert isinstance(sink, SdlSink)
    assert (sink.driver, sink.fullscreen, sink.title, sink.width, sink.height) == (
        "kmsdrm",
        True,
        "Hall",
        1280,
        720,
    )
    assert not sink.closed


def test_create_display_rejects_unknown_backends() -> None:
    settings = DisplaySettings.model_construct(backend="hologram")
    with pytest.raises(ValueError, match="No display backend named 'hologram'"):
        create_display(settings, 640, 480)
