"""Display sinks for decoded pictures, and :func:`create_display` to pick one from settings.

"null" records timing only (servers, CI, the benchmark); "sdl" shows the picture full screen through SDL2
(KMS/DRM on the appliance, X11/Wayland windows for demos). SDL is imported only when an SDL sink opens.
"""

from __future__ import annotations

from collections.abc import Callable

from app.settings import DisplaySettings
from app.video.display.base import DisplayError, DisplaySink
from app.video.display.null import NullSink
from app.video.display.sdl import SdlSink
from app.video.frames import DecodedFrame

__all__ = ["DisplayError", "DisplaySink", "NullSink", "SdlSink", "create_display"]


def create_display(
    settings: DisplaySettings,
    width: int,
    height: int,
    on_frame: Callable[[DecodedFrame], None] | None = None,
) -> DisplaySink:
    """The sink ``settings.backend`` names, not yet opened, for pictures of ``width`` x ``height`` pixels.

    ``on_frame`` is called on the display thread after each frame is shown (for stamps and benchmarks).
    """
    if settings.backend == "null":
        return NullSink(on_frame)
    elif settings.backend == "sdl":
        return SdlSink(
            settings.sdl_driver,
            settings.fullscreen,
            settings.window_title,
            width,
            height,
            on_frame=on_frame,
        )
    raise ValueError(f"No display backend named {settings.backend!r}")
