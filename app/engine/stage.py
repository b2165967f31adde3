"""Stages: one OS thread each, joined by small bounded inboxes; a send never blocks.

Modelled on tonari's actor crate: every stage owns a thread and an inbox of a few messages; a full inbox is
reported to the sender, who drops and counts rather than waits, so a slow stage sheds load instead of
building latency. PyAV releases the GIL around encode and decode, so stages really do overlap.

A bug inside a stage (an unexpected exception) is the second tier of error: it is logged with its
traceback and handed to the supervisor, which stops the whole engine so systemd can restart it. Bad *data*
is not a bug: stages drop it, count it and carry on.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def freeze_startup_objects() -> int:
    """Take everything allocated so far out of the cyclic garbage collector's reach (``gc.freeze``); call
    once a process has built its stages, before they start. Returns how many objects were frozen.

    Why: a full (oldest-generation) collection walks every tracked object while holding the interpreter
    lock, and after the imports (numpy, PyAV, pydantic, the app) that is ~45 000 objects in the audio
    process alone: 20–60 ms a pass measured on the 2-core machine, which every thread of the process — a
    sound card callback, the playout thread, the network thread — waits out. The objects made at start-up
    live as long as the process, so freezing them loses nothing; collections then walk only what was made
    since (in the audio benchmark afterwards: no full pass in any run, no collection over 0.5 ms).
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class GcPauses:
    """How often the cyclic garbage collector ran in this process, per generation, and its longest pause
    (ms): every thread of the process waits that long. Installed with :meth:`install` (once per process);
    the callback runs on whichever thread triggered the collection and only reads the clock."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.max_pause_ms = [0.0, 0.0, 0.0]
        self._started = 0

    def install(self) -> GcPauses:
        gc.callbacks.append(self._on_gc)
        return self

    def uninstall(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter_ns()
            return
        gen = min(int(info.get("generation", 0)), 2)
        self.collections[gen] += 1
        pause = (time.perf_counter_ns() - self._started) / 1e6
        self.max_pause_ms[gen] = max(self.max_pause_ms[gen], pause)

    def snapshot(self) -> dict[str, Any]:
        return {
            "collections": list(self.collections),
            "max_pause_ms": [round(p, 2) for p in self.max_pause_ms],
        }


class Inbox(Generic[T]):
    """A bounded FIFO with a non-blocking put that counts what it had to drop.

    ``put`` is called on the upstream stage's thread, ``get`` on the owner's. With ``latest_wins`` a full
    inbox evicts its oldest item to make room (for display, where only the newest picture matters);
    otherwise the new item is dropped.
    """

    def __init__(self, maxsize: int, *, latest_wins: bool = False) -> None:
        if maxsize < 1:
            raise ValueError("inbox size must be at least 1")
        self._q: queue.Queue[T] = queue.Queue(maxsize=maxsize)
        self._latest_wins = latest_wins
        self.dropped = 0
        self.maxsize = maxsize

    def put(self, item: T) -> bool:
        """Offer ``item``; return False if something had to be dropped. Never blocks."""
        try:
            self._q.put_nowait(item)
            return True
        except queue.Full:
            pass
        self.dropped += 1
        if not self._latest_wins:
            return False
        # Only the owner takes items out, so after evicting one the put succeeds unless another producer
        # raced us; then the newest item is dropped instead, which is still bounded and counted.
        with contextlib.suppress(queue.Empty):
            self._q.get_nowait()
        with contextlib.suppress(queue.Full):
            self._q.put_nowait(item)
        return False

    def get(self, timeout: float) -> T | None:
        """Wait up to ``timeout`` seconds for an item; None if none came."""
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def get_nowait(self) -> T | None:
        try:
            return self._q.get_nowait()
        except queue.Empty:
            return None

    def qsize(self) -> int:
        return self._q.qsize()


class Stage:
    """A named thread running ``self.run_once()`` until stopped.

    Subclasses implement ``run_once`` (one bounded unit of work; it must return within about 100 ms so
    that ``stop`` is prompt) and optionally ``setup``/``teardown``, which run on the stage's own thread.
    """

    def __init__(self, name: str, on_error: Callable[[str, BaseException], None]) -> None:
        self.name = name
        self._on_error = on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.started = threading.Event()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the stage to stop; returns at once. Use ``join`` to wait."""
        self._stop.set()

    def join(self, timeout: float = 5.0) -> bool:
        """Wait for the thread to end; True if it did."""
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def setup(self) -> None:
        """Runs first on the stage's thread (open devices that are thread-bound, e.g. SDL)."""

    def teardown(self) -> None:
        """Runs last on the stage's thread, also after an error."""

    def run_once(self) -> None:
        raise NotImplementedError

    def _main(self) -> None:
        try:
            self.setup()
            self.started.set()
            while not self._stop.is_set():
                self.run_once()
        except BaseException as exc:
            log.exception("%s: stage failed", self.name)
            self._on_error(self.name, exc)
        finally:
            self.started.set()
            try:
                self.teardown()
            except Exception:
                log.exception("%s: teardown failed", self.name)
