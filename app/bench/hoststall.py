"""A witness for benchmarks: how often this host failed to run a real-time thread on time.

``python -m app.bench.hoststall SECONDS`` runs one thread at the audio threads' real-time priority
(SCHED_FIFO 10, when allowed) in a process of its own that shares nothing with the doorways — no
interpreter lock, no sockets — sleeping 1 ms at a time, and prints, as one JSON object at the end, how many
wakes there were and each wake more than :data:`STALL_MS` late (CLOCK_MONOTONIC ns of the sleep's start,
and how late, ms). When the audio benchmark's underruns fall in the same seconds as this process's stalls,
the machine stalled, not the doorway. It costs ~2 % of a core (1000 wakes a second).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

from app.audio.device import make_realtime

STALL_MS = 2.0
"""A wake this much later than asked counts as a stall, ms."""


def probe(seconds: float) -> dict[str, Any]:
    """Sleep 1 ms at a time for ``seconds`` or until SIGTERM; the wakes and stalls (this thread, real-time
    if allowed)."""
    stop: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    realtime = make_realtime("host-stall witness")  # the audio threads' own priority
    end = time.monotonic_ns() + int(seconds * 1e9)
    wakes = 0
    stalls: list[tuple[int, float]] = []
    while (t0 := time.monotonic_ns()) < end and not stop:
        time.sleep(0.001)
        late_ms = (time.monotonic_ns() - t0) / 1e6 - 1.0
        wakes += 1
        if late_ms > STALL_MS:
            stalls.append((t0, round(late_ms, 2)))
    return {"realtime": realtime, "wakes": wakes, "stalls": stalls}


class HostStallProbe:
    """:func:`probe` in a child process for at most ``seconds``; :meth:`result` stops it and reads it."""

    def __init__(self, seconds: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.bench.hoststall", str(seconds)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )

    def result(self, timeout_s: float = 30.0) -> dict[str, Any] | None:
        """Stop the probe; its findings, or None if it failed (a witness, not part of the measurement)."""
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            return None
        try:
            doc = json.loads(out)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None


def summarize(doc: dict[str, Any] | None, lo: int, hi: int, underrun_ns: list[int]) -> dict[str, Any] | None:
    """The stalls inside [lo, hi) (count, total and longest, ms), and how many of the seconds in which the
    ear counted underruns (``underrun_ns``: each such second's end) had a stall within them."""
    if doc is None:
        return None
    stalls = [(int(t), float(ms)) for t, ms in doc.get("stalls", []) if lo <= int(t) < hi]
    explained = sum(1 for end in underrun_ns if any(end - 1_000_000_000 <= t <= end for t, _ in stalls))
    return {
        "realtime": doc.get("realtime"),
        "over_2ms": len(stalls),
        "total_ms": round(sum(ms for _, ms in stalls), 1),
        "max_ms": max((ms for _, ms in stalls), default=0.0),
        "underrun_seconds": len(underrun_ns),
        "underrun_seconds_with_a_stall": explained,
    }


if __name__ == "__main__":
    print(json.dumps(probe(float(sys.argv[1]))))
