"""Run the aiortc (WebRTC) baseline once and turn it into one benchmark row.

:func:`run_aiortc` starts :mod:`app.bench.aiortc_peer` twice, as a receiver and a sender process talking over
loopback (two processes, like our own sender and receiver, so neither side steals the other's GIL), samples
both with psutil about once a second, waits for them, and summarizes the receiver's frame records with the
same :func:`app.bench.metrics.summarize` that judges our own system. See :mod:`app.bench.aiortc_peer` for the
timeline, the signalling and how the bitrate is pinned.

CPU is reported in percent of ONE core (100 = one core busy), averaged from the first psutil sample taken
``warmup_s + 1`` s after the process started (past interpreter start-up, imports, signalling, ICE/DTLS and
most of the warm-up) to its last sample; RSS is the maximum over all samples, in MB (10**6 bytes).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import psutil

from app.bench.metrics import FrameRecord, summarize

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 1.0
"""How often each child's CPU time and RSS are sampled."""
POLL_INTERVAL_S = 0.1
"""How often the children are checked for having exited (so the run ends promptly)."""
SLACK_S = 60.0
"""On top of warm-up and window: start-up, connection and shutdown may take this long before we kill."""
SETUP_S = 1.0
"""Start-up time (interpreter, imports, connection) excluded from the CPU average, besides the warm-up."""
STDERR_TAIL_CHARS = 3000
"""How much of a failed child's output goes into the exception."""
ENCODER_NAMES = {"h264": "H264", "vp8": "VP8"}


class AiortcBenchError(RuntimeError):
    """The aiortc baseline run failed; the message carries the children's output tails."""


@dataclass
class _Sample:
    t: float
    """time.monotonic() s when taken."""
    cpu_s: float
    """user + system CPU seconds of the process so far (all its threads)."""
    rss: int
    """Resident set size, bytes."""


@dataclass
class _Child:
    """One peer process, its log file and its psutil samples (all touched on the caller's thread only)."""

    role: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    started: float
    """time.monotonic() s when it was started."""
    samples: list[_Sample] = field(default_factory=list)
    _proc: psutil.Process | None = None

    @classmethod
    def start(cls, role: str, args: list[str], tmp: Path) -> _Child:
        log_path = tmp / f"{role}.log"
        log_file = log_path.open("wb")
        try:
            popen = subprocess.Popen(
                [sys.executable, "-m", "app.bench.aiortc_peer", "--role", role, *args],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        except BaseException:
            log_file.close()
            raise
        child = cls(role, popen, log_path, log_file, time.monotonic())
        try:
            child._proc = psutil.Process(popen.pid)
        except psutil.Error:
            child._proc = None  # already gone; poll() will tell
        return child

    def sample(self) -> None:
        """Record CPU time and RSS now, if the process still runs."""
        if self._proc is None or self.popen.poll() is not None:
            return
        try:
            with self._proc.oneshot():
                times = self._proc.cpu_times()
                rss = self._proc.memory_info().rss
        except psutil.Error:
            return  # exited between poll() and here
        self.samples.append(_Sample(time.monotonic(), times.user + times.system, rss))

    def cpu_percent(self, skip_s: float) -> float:
        """Average CPU in percent of one core from the first sample ``skip_s`` after start to the last."""
        later = [s for s in self.samples if s.t - self.started >= skip_s]
        span = later if len(later) >= 2 else self.samples
        if len(span) < 2 or span[-1].t <= span[0].t:
            return float("nan")
        return round(100.0 * (span[-1].cpu_s - span[0].cpu_s) / (span[-1].t - span[0].t), 1)

    def rss_mb(self) -> float:
        """Largest sampled RSS in MB (10**6 bytes)."""
        return round(max((s.rss for s in self.samples), default=0) / 1e6, 1)

    def tail(self) -> str:
        """The last :data:`STDERR_TAIL_CHARS` characters of its stdout+stderr."""
        text = self.log_path.read_text(errors="replace")  # the child writes it through its own descriptor
        return text[-STDERR_TAIL_CHARS:].strip() or "(no output)"

    def stop(self) -> None:
        """Kill it if it still runs, reap it and close its log file (idempotent)."""
        if self.popen.poll() is None:
            self.popen.kill()
        try:
            self.popen.wait(timeout=10)
        finally:
            self.log_file.close()


def _failure(message: str, children: list[_Child]) -> AiortcBenchError:
    tails = "\n".join(
        f"--- aiortc {c.role} (exit {c.popen.poll()}) output tail ---\n{c.tail()}" for c in children
    )
    return AiortcBenchError(f"{message}\n{tails}")


def _read_json(path: Path, child: _Child, children: list[_Child]) -> dict[str, Any]:
    try:
        result: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise _failure(f"aiortc {child.role} wrote no readable result ({exc})", children) from exc
    return result


def run_aiortc(
    codec: Literal["h264", "vp8"],
    *,
    width: int,
    height: int,
    fps: int,
    seconds: float,
    bitrate_kbps: int,
    warmup_s: float = 2.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Send the synthetic scene through aiortc with ``codec`` between two processes; one benchmark row.

    ``width``×``height`` px at ``fps`` frames/s, encoder pinned at ``bitrate_kbps`` kbit/s, measured over
    ``seconds`` s of capture time after ``warmup_s`` s of warm-up. Blocks the calling thread for about
    ``warmup_s + seconds + 2`` s. Raises :class:`AiortcBenchError` (with the children's output) when a child
    fails, times out or nothing intact arrives; the children are always gone when it returns or raises.
    """
    if codec not in ENCODER_NAMES:
        raise ValueError(f"codec must be one of {sorted(ENCODER_NAMES)}, not {codec!r}")
    with tempfile.TemporaryDirectory(prefix="doorway-aiortc-") as tmp_name:
        tmp = Path(tmp_name)
        common = [
            f"--codec={codec}",
            f"--width={width}",
            f"--height={height}",
            f"--fps={fps}",
            f"--seconds={seconds}",
            f"--warmup={warmup_s}",
            f"--bitrate-kbps={bitrate_kbps}",
            f"--seed={seed}",
            f"--signal={tmp / 'signal.sock'}",
        ]
        children: list[_Child] = []
        try:
            # The receiver first: it creates the socket the sender connects to (the sender retries meanwhile).
            children.append(_Child.start("receiver", [*common, f"--out={tmp / 'receiver.json'}"], tmp))
            children.append(_Child.start("sender", [*common, f"--out={tmp / 'sender.json'}"], tmp))
            _supervise(children, timeout_s=warmup_s + seconds + SLACK_S)
            receiver, sender = children
            received = _read_json(tmp / "receiver.json", receiver, children)
            sent = _read_json(tmp / "sender.json", sender, children)
        finally:
            for child in children:
                child.stop()
    records = [FrameRecord(**r) for r in received["records"]]
    if not any(not r.corrupt for r in records):
        raise _failure(f"aiortc {codec}: no intact frame in the measurement window", children)
    skip_s = warmup_s + SETUP_S
    return {
        "system": f"aiortc-{codec}",
        "width": width,
        "height": height,
        "fps_target": fps,
        "seconds": seconds,
        "encoder": f"aiortc {ENCODER_NAMES[codec]}",
        "bitrate_kbps": bitrate_kbps,
        "frames_sent": sent["frames_sent"],
        **summarize(records, seconds=seconds, fps_target=fps),
        "cpu_percent": {"sender": sender.cpu_percent(skip_s), "receiver": receiver.cpu_percent(skip_s)},
        "rss_mb": {"sender": sender.rss_mb(), "receiver": receiver.rss_mb()},
        "bitrate_sent_kbps": sent["bitrate_sent_kbps"],
    }


def _supervise(children: list[_Child], *, timeout_s: float) -> None:
    """Sample the children about once a second until all have exited; raise on failure or timeout."""
    deadline = time.monotonic() + timeout_s
    next_sample = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= next_sample:
            for child in children:
                child.sample()
            next_sample = now + SAMPLE_INTERVAL_S
        codes = [c.popen.poll() for c in children]
        failed = [c for c, rc in zip(children, codes, strict=True) if rc not in (None, 0)]
        if failed:
            # One side failing leaves the other waiting for minutes: stop now and say why.
            raise _failure(
                f"aiortc {failed[0].role} exited with status {failed[0].popen.returncode}", children
            )
        if all(rc == 0 for rc in codes):
            return
        if now > deadline:
            raise _failure(f"aiortc peers still running after {timeout_s:.0f} s; killed", children)
        time.sleep(POLL_INTERVAL_S)
