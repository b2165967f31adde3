"""Full-screen (or windowed) display through SDL2: the appliance's screen without a desktop, or a demo window.

SDL2 drives the screen directly over KMS/DRM on the appliance (driver "kmsdrm"), opens an X11 or Wayland
window for demos, and runs headless for tests ("offscreen", "dummy"). Each decoded picture's three yuv420p
planes go straight from the av frame's buffers into a streaming ``SDL_PIXELFORMAT_IYUV`` texture
(``SDL_UpdateYUVTexture`` with each plane's ``line_size``; NV12 from NVDEC goes into an NV12 texture), with
no copy through numpy; the GPU (or SDL's software renderer) converts to RGB and scales, letterboxed to keep
the aspect ratio. Presentation does not wait for vsync unless asked, because waiting costs up to a frame.

pysdl2 (and with it libSDL2) is imported in :meth:`SdlSink.open`, never at import time. SDL wants every call
on one thread: :meth:`SdlSink.open`, :meth:`~SdlSink.show`, :meth:`~SdlSink.read_back` and
:meth:`~SdlSink.close` all run on the display thread, the one that called ``open()``.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import av
import numpy as np

from app.video.display.base import DisplayError
from app.video.frames import DecodedFrame

log = logging.getLogger(__name__)

# Pixel formats SDL can take without conversion on our side; anything else is converted to yuv420p first.
_PLANAR = frozenset({"yuv420p", "yuvj420p"})
_SEMI_PLANAR = frozenset({"nv12"})

# FFmpeg's AVColorSpace value for BT.709 and AVColorRange for full ("JPEG") range.
_AVCOL_SPC_BT709 = 1
_AVCOL_RANGE_JPEG = 2

# SDL_YUV_CONVERSION_MODE values (SDL_surface.h); pysdl2 does not re-export them from the sdl2 package.
_SDL_YUV_JPEG = 0
_SDL_YUV_BT601 = 1
_SDL_YUV_BT709 = 2


class SdlSink:
    """Shows decoded frames through SDL2 with video driver ``driver`` ("" lets SDL choose).

    ``fullscreen`` takes the whole screen at its current mode and hides the cursor; otherwise a resizable
    window of ``width`` x ``height`` pixels titled ``title`` opens. ``vsync`` makes presentation wait for
    the display's refresh (smoother, up to a frame later). ``on_frame`` is called after each frame is
    shown. ``closed`` turns True when the viewer closes the window (SDL_QUIT), for the engine to read.
    After :meth:`open`, ``driver_name`` and ``renderer_name`` say what SDL actually uses.
    """

    def __init__(
        self,
        driver: str,
        fullscreen: bool,
        title: str,
        width: int,
        height: int,
        *,
        vsync: bool = False,
        on_frame: Callable[[DecodedFrame], None] | None = None,
    ) -> None:
        self.driver = driver
        self.fullscreen = fullscreen
        self.title = title
        self.width = width
        self.height = height
        self.vsync = vsync
        self.on_frame = on_frame
        self.closed = False
        self.frames = 0
        self.driver_name = ""
        self.renderer_name = ""
        self._sdl: Any = None
        self._window: Any = None
        self._renderer: Any = None
        self._texture: Any = None
        self._texture_key: tuple[int, int, str, int] | None = None
        self._rect: Any = None
        self._rect_key: tuple[int, int, int, int] | None = None
        self._event: Any = None
        self._thread: int | None = None
        self._converted_warned = False

    def open(self) -> None:
        """Initialise SDL video, open the window or screen and a renderer. On the display thread.

        Raises :class:`DisplayError` naming the driver when pysdl2/libSDL2 is missing, the driver is
        unknown or unusable, or no window or renderer can be made.
        """
        if self._window is not None:
            return
        try:
            import sdl2
        except (ImportError, RuntimeError) as exc:
            raise DisplayError(f"SDL display needs pysdl2 and libSDL2 2.0.22 or newer: {exc}") from exc
        self._sdl = sdl2
        name = self.driver or "default"
        if self.driver:
            sdl2.SDL_SetHint(b"SDL_VIDEODRIVER", self.driver.encode())
        else:
            # "" means SDL's own choice (or the SDL_VIDEODRIVER environment variable), not a driver
            # another sink in this process picked earlier.
            sdl2.SDL_ResetHint(b"SDL_VIDEODRIVER")
        # The engine owns SIGINT/SIGTERM; SDL would otherwise turn them into SDL_QUIT events.
        sdl2.SDL_SetHint(sdl2.SDL_HINT_NO_SIGNAL_HANDLERS, b"1")
        sdl2.SDL_SetHint(sdl2.SDL_HINT_RENDER_VSYNC, b"1" if self.vsync else b"0")
        sdl2.SDL_SetHint(sdl2.SDL_HINT_RENDER_SCALE_QUALITY, b"linear")
        if sdl2.SDL_InitSubSystem(sdl2.SDL_INIT_VIDEO) != 0:
            raise DisplayError(f"SDL video driver '{name}' failed: {_sdl_error(sdl2)}")
        self.driver_name = (sdl2.SDL_GetCurrentVideoDriver() or b"").decode()

        flags = sdl2.SDL_WINDOW_SHOWN
        flags |= sdl2.SDL_WINDOW_FULLSCREEN_DESKTOP if self.fullscreen else sdl2.SDL_WINDOW_RESIZABLE
        window = sdl2.SDL_CreateWindow(
            self.title.encode(),
            sdl2.SDL_WINDOWPOS_UNDEFINED,
            sdl2.SDL_WINDOWPOS_UNDEFINED,
            self.width,
            self.height,
            flags,
        )
        if not window:
            error = _sdl_error(sdl2)
            sdl2.SDL_QuitSubSystem(sdl2.SDL_INIT_VIDEO)
            raise DisplayError(f"SDL video driver '{name}' failed: cannot create window: {error}")

        accelerated = sdl2.SDL_RENDERER_ACCELERATED | (sdl2.SDL_RENDERER_PRESENTVSYNC if self.vsync else 0)
        renderer = sdl2.SDL_CreateRenderer(window, -1, accelerated)
        if not renderer:
            log.info("display: no accelerated SDL renderer (%s), using software", _sdl_error(sdl2))
            renderer = sdl2.SDL_CreateRenderer(window, -1, sdl2.SDL_RENDERER_SOFTWARE)
        if not renderer:
            error = _sdl_error(sdl2)
            sdl2.SDL_DestroyWindow(window)
            sdl2.SDL_QuitSubSystem(sdl2.SDL_INIT_VIDEO)
            raise DisplayError(f"SDL video driver '{name}' failed: cannot create renderer: {error}")
        info = sdl2.SDL_RendererInfo()
        if sdl2.SDL_GetRendererInfo(renderer, ctypes.byref(info)) == 0 and info.name:
            self.renderer_name = info.name.decode()
        sdl2.SDL_SetRenderDrawColor(renderer, 0, 0, 0, 255)
        if self.fullscreen:
            sdl2.SDL_ShowCursor(sdl2.SDL_DISABLE)

        self._window = window
        self._renderer = renderer
        self._event = sdl2.SDL_Event()
        self._rect = sdl2.SDL_Rect()
        self._thread = threading.get_ident()
        self.closed = False
        log.info(
            "display: SDL driver %s, renderer %s, %s, vsync %s",
            self.driver_name,
            self.renderer_name or "?",
            "full screen" if self.fullscreen else f"window {self.width}x{self.height}",
            "on" if self.vsync else "off",
        )

    def show(self, df: DecodedFrame) -> None:
        """Upload, draw and present ``df``'s picture, then stamp ``df.times.shown``; on the display thread.

        Pumps SDL's event queue first (so the window stays responsive and a close request sets
        ``closed``). The texture is recreated when the picture's size or pixel format changes.
        """
        sdl2 = self._require_open()
        self._pump_events()
        frame = df.frame
        fmt = frame.format.name
        if fmt not in _PLANAR and fmt not in _SEMI_PLANAR:
            if not self._converted_warned:
                self._converted_warned = True
                log.warning("display: converting %s pictures to yuv420p on the CPU (slow)", fmt)
            frame = frame.reformat(format="yuv420p")
            fmt = "yuv420p"
        texture = self._texture_for(frame, fmt)
        planes = frame.planes
        u8 = ctypes.POINTER(ctypes.c_uint8)
        if fmt in _SEMI_PLANAR:
            err = sdl2.SDL_UpdateNVTexture(
                texture,
                None,
                ctypes.cast(planes[0].buffer_ptr, u8),
                planes[0].line_size,
                ctypes.cast(planes[1].buffer_ptr, u8),
                planes[1].line_size,
            )
        else:
            err = sdl2.SDL_UpdateYUVTexture(
                texture,
                None,
                ctypes.cast(planes[0].buffer_ptr, u8),
                planes[0].line_size,
                ctypes.cast(planes[1].buffer_ptr, u8),
                planes[1].line_size,
                ctypes.cast(planes[2].buffer_ptr, u8),
                planes[2].line_size,
            )
        if err != 0:
            raise DisplayError(
                f"SDL video driver '{self.driver_name}': texture update failed: {_sdl_error(sdl2)}"
            )
        self._draw(frame.width, frame.height)
        sdl2.SDL_RenderPresent(self._renderer)
        df.times.shown = time.monotonic_ns()
        self.frames += 1
        if self.on_frame is not None:
            self.on_frame(df)

    def poll_events(self) -> bool:
        """Pump SDL's event queue without showing anything; returns ``closed``. On the display thread.

        :meth:`show` pumps events itself; call this while no frames arrive so the window stays responsive
        and a close request is still seen.
        """
        self._require_open()
        self._pump_events()
        return self.closed

    def read_back(self, *, whole_output: bool = False) -> np.ndarray:
        """RGB (uint8, height x width x 3) of the last picture shown, as drawn (scaled and letterboxed).

        Draws the last picture again and reads it with SDL_RenderReadPixels before presenting, because
        after a present the back buffer's content is undefined on GPU renderers. ``whole_output`` reads the
        whole window or screen, bars included, instead of the picture's rectangle. Slow; for tests and
        diagnostics, on the display thread.
        """
        sdl2 = self._require_open()
        if self._texture is None or self._texture_key is None:
            raise DisplayError("SDL display: nothing has been shown yet")
        width, height = self._texture_key[0], self._texture_key[1]
        self._draw(width, height)
        if whole_output:
            out_w, out_h = ctypes.c_int(), ctypes.c_int()
            sdl2.SDL_GetRendererOutputSize(self._renderer, ctypes.byref(out_w), ctypes.byref(out_h))
            area = sdl2.SDL_Rect(0, 0, out_w.value, out_h.value)
        else:
            area = sdl2.SDL_Rect(self._rect.x, self._rect.y, self._rect.w, self._rect.h)
        pixels = np.empty((area.h, area.w, 3), dtype=np.uint8)
        err = sdl2.SDL_RenderReadPixels(
            self._renderer,
            ctypes.byref(area),
            sdl2.SDL_PIXELFORMAT_RGB24,
            pixels.ctypes.data_as(ctypes.c_void_p),
            area.w * 3,
        )
        if err != 0:
            raise DisplayError(f"SDL video driver '{self.driver_name}': read-back failed: {_sdl_error(sdl2)}")
        return pixels

    def close(self) -> None:
        """Destroy texture, renderer and window and shut SDL video down. On the display thread; idempotent."""
        sdl2 = self._sdl
        if sdl2 is not None and self._window is not None:
            if self._texture is not None:
                sdl2.SDL_DestroyTexture(self._texture)
            sdl2.SDL_DestroyRenderer(self._renderer)
            sdl2.SDL_DestroyWindow(self._window)
            sdl2.SDL_QuitSubSystem(sdl2.SDL_INIT_VIDEO)
        self._texture = None
        self._texture_key = None
        self._rect_key = None
        self._renderer = None
        self._window = None
        self._thread = None
        self.closed = True

    # -- internals -------------------------------------------------------------------------------------

    def _require_open(self) -> Any:
        if self._window is None:
            raise DisplayError("SDL display is not open")
        if threading.get_ident() != self._thread:
            raise DisplayError("SDL display used off the display thread (the one that called open())")
        return self._sdl

    def _pump_events(self) -> None:
        sdl2 = self._sdl
        event = self._event
        while sdl2.SDL_PollEvent(ctypes.byref(event)):
            if event.type == sdl2.SDL_QUIT or (
                event.type == sdl2.SDL_WINDOWEVENT and event.window.event == sdl2.SDL_WINDOWEVENT_CLOSE
            ):
                if not self.closed:
                    log.info("display: window closed by the viewer")
                self.closed = True

    def _texture_for(self, frame: av.VideoFrame, fmt: str) -> Any:
        """The streaming texture for this picture's size, layout and colour matrix, recreated on change."""
        sdl2 = self._sdl
        colour = _yuv_conversion_mode(frame, fmt)
        key = (frame.width, frame.height, "nv12" if fmt in _SEMI_PLANAR else "iyuv", colour)
        if key == self._texture_key:
            return self._texture
        if self._texture is not None:
            sdl2.SDL_DestroyTexture(self._texture)
            self._texture = None
            self._texture_key = None
        # SDL picks the YUV→RGB matrix when the texture is created.
        sdl2.SDL_SetYUVConversionMode(colour)
        pixel_format = sdl2.SDL_PIXELFORMAT_NV12 if key[2] == "nv12" else sdl2.SDL_PIXELFORMAT_IYUV
        texture = sdl2.SDL_CreateTexture(
            self._renderer, pixel_format, sdl2.SDL_TEXTUREACCESS_STREAMING, frame.width, frame.height
        )
        if not texture:
            raise DisplayError(
                f"SDL video driver '{self.driver_name}': cannot create a {frame.width}x{frame.height} "
                f"texture: {_sdl_error(sdl2)}"
            )
        self._texture = texture
        self._texture_key = key
        log.info("display: showing %dx%d %s", frame.width, frame.height, fmt)
        return texture

    def _draw(self, width: int, height: int) -> None:
        """Clear to black and copy the texture into the largest centred rectangle of its aspect ratio."""
        sdl2 = self._sdl
        out_w, out_h = ctypes.c_int(), ctypes.c_int()
        sdl2.SDL_GetRendererOutputSize(self._renderer, ctypes.byref(out_w), ctypes.byref(out_h))
        key = (out_w.value, out_h.value, width, height)
        if key != self._rect_key:
            self._rect_key = key
            x, y, w, h = letterbox(out_w.value, out_h.value, width, height)
            self._rect.x, self._rect.y, self._rect.w, self._rect.h = x, y, w, h
        sdl2.SDL_RenderClear(self._renderer)
        sdl2.SDL_RenderCopy(self._renderer, self._texture, None, ctypes.byref(self._rect))


def letterbox(out_w: int, out_h: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The (x, y, w, h) output rectangle, in pixels, of a width x height picture fitted and centred."""
    if width <= 0 or height <= 0 or out_w <= 0 or out_h <= 0:
        return 0, 0, max(out_w, 0), max(out_h, 0)
    scale = min(out_w / width, out_h / height)
    w = min(out_w, round(width * scale))
    h = min(out_h, round(height * scale))
    return (out_w - w) // 2, (out_h - h) // 2, w, h


def _yuv_conversion_mode(frame: av.VideoFrame, fmt: str) -> int:
    """SDL's YUV→RGB mode for this picture: full range for JPEG-range frames, BT.709 if tagged, else BT.601.

    BT.601 is what libswscale (and so our capture path) uses for untagged pictures, whatever their size;
    SDL's automatic mode would switch to BT.709 above SD and tint them.
    """
    if fmt == "yuvj420p" or frame.color_range == _AVCOL_RANGE_JPEG:
        return _SDL_YUV_JPEG
    if frame.colorspace == _AVCOL_SPC_BT709:
        return _SDL_YUV_BT709
    return _SDL_YUV_BT601


def _sdl_error(sdl2: Any) -> str:
    error: bytes | None = sdl2.SDL_GetError()
    return error.decode(errors="replace") if error else "unknown error"
