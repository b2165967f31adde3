"""Logging for every Doorway process: stderr, journald-friendly, never blocking a real-time thread.

Under systemd, stderr goes to the journal, which adds the time, unit and pid itself; each line starts with a
syslog priority prefix (``<6>``) that journald turns into the entry's priority (``SyslogLevelPrefix=`` is on
by default). On a terminal the lines carry a wall-clock time instead. Records travel through a bounded
queue to one writer thread (Klipper's queuelogger: threads "do not block on log writes"); when the queue
is full a record is dropped and counted rather than stalling a media stage.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import threading
from typing import TextIO

_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message`` — journald parses the prefix and adds its own timestamps."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        # Continuation lines (tracebacks) get the same priority so the journal keeps them together.
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """A QueueHandler whose put never blocks: a full queue drops the record and counts it."""

    def __init__(self, q: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(q)
        self.dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


_listener: logging.handlers.QueueListener | None = None
_lock = threading.Lock()


def setup_logging(level: str = "info", *, stream: TextIO | None = None, queue_size: int = 1000) -> None:
    """Route all logging to ``stream`` (stderr by default) through a bounded queue and one writer thread.

    Call once, early, on the main thread. Safe to call again (the previous set-up is replaced).
    """
    global _listener
    stream = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(stream)
    if stream.isatty():
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    else:
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    q: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=queue_size)
    root = logging.getLogger()
    with _lock:
        stop_logging()
        for h in list(root.handlers):
            root.removeHandler(h)
        root.addHandler(DroppingQueueHandler(q))
        root.setLevel(level.upper())
        _listener = logging.handlers.QueueListener(q, handler, respect_handler_level=False)
        _listener.start()
    logging.captureWarnings(True)


def stop_logging() -> None:
    """Flush and stop the writer thread (at process exit)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None
