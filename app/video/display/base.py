"""The display-sink interface: where decoded pictures go, and the one error a sink raises.

A sink is opened, shown frames, and closed, all on the engine's display thread; implementations that
touch hardware (SDL over KMS/DRM or X11) import their libraries lazily in :meth:`DisplaySink.open`, so
importing this package never needs a display.
"""

from __future__ import annotations

from typing import Protocol

from app.video.frames import DecodedFrame


class DisplayError(Exception):
    """A display could not be opened or stopped working. The message names the driver where there is one."""


class DisplaySink(Protocol):
    """Something that shows decoded pictures. Every method is called on the display thread."""

    closed: bool
    """True once the viewer closed the window (or the sink was closed); the engine polls it."""

    def open(self) -> None:
        """Acquire the display. Raises :class:`DisplayError` when it cannot."""
        ...

    def show(self, df: DecodedFrame) -> None:
        """Show one picture now and set ``df.times.shown`` (CLOCK_MONOTONIC ns) once it is presented."""
        ...

    def poll_events(self) -> bool:
        """Handle window-system events while no picture arrives (keeps a window responsive); returns
        ``closed``."""
        ...

    def close(self) -> None:
        """Release the display. Idempotent."""
        ...
