"""The Doorway services' logs for the admin panel: from the systemd journal, or from log files without one.

Every Doorway process logs to stderr through ``app/logs.py``: under systemd each line starts with a syslog
priority prefix (``<6>app.engine.engine: message``) that journald turns into the entry's priority and
strips; on a terminal the line starts with a time and a level name instead
(``2024-05-01 12:00:00,123 INFO    app.engine: message``).

A :class:`LogSource` reads the newest lines of some services at or above a level:

- :class:`JournalLogSource` runs ``journalctl -o json`` for the services' units (``doorway-engine``,
  ``doorway-hwcontrol``, ``doorway-admin``) with ``--since``, ``-n`` and ``-p`` doing the filtering, under a
  timeout, and parses one JSON object a line (time, unit, priority, message), skipping lines it cannot
  parse. The process running it must be allowed to read the system journal (the ``systemd-journal``
  group).
- :class:`FileLogSource` reads the tail of one log file per service (a development set-up, or a system
  without journald) and understands both line formats above; a line with neither is a continuation
  (a traceback) and takes the time and level of the line before it. Lines without a time of their own
  count as written at the file's modification time for ``since``.

:func:`create_log_source` picks the journal when ``journalctl`` is installed and answers, the files
otherwise. Levels are ``debug``, ``info``, ``warning`` and ``error`` (syslog priorities 7; 6 and 5; 4;
3 and below).

The runner that starts ``journalctl`` is injectable, so tests need no journal.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Protocol

from admin.history import LEVELS

log = logging.getLogger(__name__)

UNITS: Final[Mapping[str, str]] = {
    "engine": "doorway-engine.service",
    "hwcontrol": "doorway-hwcontrol.service",
    "admin": "doorway-admin.service",
}
"""The services by short name, and their systemd units."""
_SERVICE_OF_UNIT: Final = {unit: name for name, unit in UNITS.items()}

DEFAULT_LOG_DIR: Final = Path("/var/log/doorway")
"""Where :func:`create_log_source` looks for ``<service>.log`` files when there is no journal."""
MAX_LIMIT: Final = 5000
"""Most lines one read returns, whatever is asked."""
MAX_MESSAGE: Final = 4096
"""Longest message returned, in characters; longer ones are cut."""
JOURNAL_TIMEOUT_S: Final = 5.0
"""How long ``journalctl`` may take before the read gives up, in seconds."""

_JOURNAL_PRIORITY: Final = {"debug": "debug", "info": "info", "warning": "warning", "error": "err"}


class LogSourceError(Exception):
    """The logs cannot be read (journalctl failed or timed out); the message says why, for a person."""


@dataclass(frozen=True, slots=True)
class LogLine:
    """One log line: ``t`` in Unix seconds (None when the line does not say), ``service`` (a key of
    :data:`UNITS`, or the journal's identifier for anything else), ``level`` (one of :data:`LEVELS`)
    and ``message``."""

    t: float | None
    service: str
    level: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"t": self.t, "service": self.service, "level": self.level, "message": self.message}


class LogSource(Protocol):
    """Somewhere to read the services' logs from."""

    def read(self, services: Sequence[str], level: str, since: float | None, limit: int) -> list[LogLine]:
        """The newest ``limit`` lines (at most :data:`MAX_LIMIT`) of ``services`` (keys of :data:`UNITS`)
        at ``level`` or more severe, written at or after ``since`` (Unix seconds; None: any time), oldest
        first. Raises ValueError for an unknown service or level, :class:`LogSourceError` when the logs
        cannot be read."""
        ...


def level_of_priority(priority: int) -> str:
    """The level name of a syslog priority (0 emerg … 7 debug)."""
    if priority <= 3:
        return "error"
    if priority == 4:
        return "warning"
    if priority <= 6:
        return "info"
    return "debug"


def _check(services: Sequence[str], level: str, limit: int) -> int:
    for name in services:
        if name not in UNITS:
            raise ValueError(f"unknown service {name!r}; known: {', '.join(UNITS)}")
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, not {level!r}")
    return max(0, min(int(limit), MAX_LIMIT))


def _cut(message: str) -> str:
    message = message.rstrip("\n")
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


# -- the journal ---------------------------------------------------------------------------------------

Runner = Callable[[list[str], float], "subprocess.CompletedProcess[str]"]
"""Runs a command with a timeout in seconds and returns its completed process (text output). Raises
OSError when it cannot start, ``subprocess.TimeoutExpired`` when it overruns."""


def run_command(args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """The default :data:`Runner`: ``subprocess.run`` capturing output as UTF-8 (bad bytes replaced)."""
    return subprocess.run(
        args,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout_s,
        check=False,
        stdin=subprocess.DEVNULL,
    )


class JournalLogSource:
    """Reads the services' units from the systemd journal with ``journalctl`` (see the module docstring)."""

    def __init__(
        self,
        *,
        journalctl: str = "journalctl",
        runner: Runner = run_command,
        timeout_s: float = JOURNAL_TIMEOUT_S,
    ) -> None:
        self.journalctl = journalctl
        self._runner = runner
        self.timeout_s = timeout_s

    def command(self, services: Sequence[str], level: str, since: float | None, limit: int) -> list[str]:
        """The ``journalctl`` command line for a read (arguments already checked)."""
        args = [self.journalctl, "-o", "json", "--no-pager", "-q", "--all"]
        # Only the fields parsed below: the JSON of an entry is otherwise a dozen fields more.
        args.append("--output-fields=MESSAGE,PRIORITY,_SYSTEMD_UNIT,UNIT,SYSLOG_IDENTIFIER")
        for name in services:
            args += ["-u", UNITS[name]]
        if since is not None:
            # "@<seconds since the epoch>"; whole seconds, rounded down so nothing at ``since`` is missed.
            args += ["--since", f"@{int(since // 1)}"]
        args += ["-p", _JOURNAL_PRIORITY[level], "-n", str(limit)]
        return args

    def read(self, services: Sequence[str], level: str, since: float | None, limit: int) -> list[LogLine]:
        n = _check(services, level, limit)
        if n == 0 or not services:
            return []
        args = self.command(services, level, since, n)
        try:
            done = self._runner(args, self.timeout_s)
        except subprocess.TimeoutExpired:
            raise LogSourceError(f"journalctl took longer than {self.timeout_s:g} s") from None
        except OSError as exc:
            raise LogSourceError(f"cannot run journalctl: {exc}") from None
        if done.returncode != 0:
            why = (done.stderr or "").strip().splitlines()
            raise LogSourceError(
                f"journalctl failed (exit {done.returncode}): {why[0] if why else 'no message'}"
            )
        lines = [line for raw in done.stdout.splitlines() if (line := parse_journal_line(raw)) is not None]
        if since is not None:
            lines = [ln for ln in lines if ln.t is None or ln.t >= since]
        return lines[-n:]


def parse_journal_line(raw: str) -> LogLine | None:
    """One line of ``journalctl -o json`` as a :class:`LogLine`; None for a line that is not an entry."""
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(entry, dict):
        return None
    try:
        t: float | None = int(entry["__REALTIME_TIMESTAMP"]) / 1e6
    except (KeyError, TypeError, ValueError):
        t = None
    try:
        priority = int(entry.get("PRIORITY", 6))
    except (TypeError, ValueError):
        priority = 6
    # The service: the unit that wrote it, or the unit systemd's own messages are about ("Started …").
    service = None
    for field in ("_SYSTEMD_UNIT", "UNIT"):
        unit = entry.get(field)
        if isinstance(unit, str) and unit in _SERVICE_OF_UNIT:
            service = _SERVICE_OF_UNIT[unit]
            break
    if service is None:
        ident = entry.get("SYSLOG_IDENTIFIER") or entry.get("_SYSTEMD_UNIT") or "?"
        service = str(ident)
    message = entry.get("MESSAGE")
    if isinstance(message, list):
        # journald gives a message that is not valid UTF-8 as an array of byte values.
        try:
            text = bytes(b & 0xFF for b in message if isinstance(b, int)).decode("utf-8", "replace")
        except ValueError:
            text = ""
    elif isinstance(message, str):
        text = message
    else:
        text = "" if message is None else str(message)
    return LogLine(t, service, level_of_priority(priority), _cut(text))


# -- log files -----------------------------------------------------------------------------------------

_TTY_LEVELS: Final = {
    "DEBUG": "debug",
    "INFO": "info",
    "WARNING": "warning",
    "ERROR": "error",
    "CRITICAL": "error",
}


def parse_file_line(line: str) -> tuple[float | None, str | None, str]:
    """(time, level, message) of one line as ``app/logs.py`` writes it: ``<p>message`` (time None),
    ``YYYY-MM-DD HH:MM:SS,mmm LEVEL   message`` (local time), or neither: (None, None, line)."""
    if len(line) >= 3 and line[0] == "<" and line[2] == ">" and line[1].isdigit():
        return None, level_of_priority(int(line[1])), line[3:]
    if len(line) >= 24 and line[4] == "-" and line[10] == " " and line[19] == ",":
        head, _, rest = line[24:].partition(" ")
        level = _TTY_LEVELS.get(head)
        if level is not None:
            try:
                stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            except ValueError:
                return None, None, line
            return stamp, level, rest.lstrip(" ")
    return None, None, line


class FileLogSource:
    """Reads the last ``tail_bytes`` of one log file per service (``paths``: service → file); see the
    module docstring. A service without a file, or whose file is missing, has no lines."""

    def __init__(self, paths: Mapping[str, Path], *, tail_bytes: int = 1 << 20) -> None:
        for name in paths:
            if name not in UNITS:
                raise ValueError(f"unknown service {name!r}; known: {', '.join(UNITS)}")
        self.paths = dict(paths)
        self.tail_bytes = tail_bytes

    def read(self, services: Sequence[str], level: str, since: float | None, limit: int) -> list[LogLine]:
        n = _check(services, level, limit)
        if n == 0:
            return []
        floor = LEVELS.index(level)
        keyed: list[tuple[float, int, LogLine]] = []
        order = 0
        for name in services:
            path = self.paths.get(name)
            if path is None:
                continue
            try:
                text, mtime = self._tail(path)
            except OSError as exc:
                if not isinstance(exc, FileNotFoundError):
                    log.warning("logs: cannot read %s: %s", path, exc)
                continue
            t: float | None = None
            lvl = "info"
            for raw in text.splitlines():
                if not raw.strip():
                    continue
                stamp, found, message = parse_file_line(raw)
                if found is not None:
                    lvl = found
                    t = stamp
                # else: a continuation keeps the time and level of the line before it.
                if LEVELS.index(lvl) < floor:
                    continue
                when = t if t is not None else mtime
                if since is not None and when < since:
                    continue
                keyed.append((when, order, LogLine(t, name, lvl, _cut(message))))
                order += 1
        keyed.sort(key=lambda item: (item[0], item[1]))
        return [line for _, _, line in keyed[-n:]]

    def _tail(self, path: Path) -> tuple[str, float]:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            mtime = os.fstat(f.fileno()).st_mtime
            start = max(0, size - self.tail_bytes)
            f.seek(start)
            data = f.read(self.tail_bytes)
        if start > 0:
            # Started mid-line: drop the partial first line.
            cut = data.find(b"\n")
            data = data[cut + 1 :] if cut >= 0 else b""
        return data.decode("utf-8", "replace"), mtime


# -- choosing ------------------------------------------------------------------------------------------


def create_log_source(
    *,
    paths: Mapping[str, Path] | None = None,
    runner: Runner = run_command,
    which: Callable[[str], str | None] = shutil.which,
) -> LogSource:
    """The journal when ``journalctl`` is installed and answers (a quick ``journalctl -n 0``), otherwise
    the files ``paths`` (default ``/var/log/doorway/<service>.log``). Logs which it chose and why."""
    journalctl = which("journalctl")
    if journalctl is not None:
        started = time.monotonic()
        try:
            probe = runner([journalctl, "-n", "0", "-q", "--no-pager"], 3.0)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("logs: journalctl does not answer (%s); reading log files instead", exc)
        else:
            if probe.returncode == 0:
                log.info(
                    "logs: from the journal (journalctl answered in %.0f ms)",
                    (time.monotonic() - started) * 1e3,
                )
                return JournalLogSource(journalctl=journalctl, runner=runner)
            log.warning("logs: journalctl failed (exit %d); reading log files instead", probe.returncode)
    else:
        log.info("logs: no journalctl; reading log files")
    files = paths if paths is not None else {name: DEFAULT_LOG_DIR / f"{name}.log" for name in UNITS}
    return FileLogSource(files)


class LazyLogSource:
    """A :class:`LogSource` that chooses where to read (``factory``, by default :func:`create_log_source`)
    at the first read rather than when the panel starts: the journal probe can take a few seconds, and
    most of the time nobody reads the logs. Thread-safe."""

    def __init__(self, factory: Callable[[], LogSource] = create_log_source) -> None:
        self._factory = factory
        self._source: LogSource | None = None
        self._lock = threading.Lock()

    def read(self, services: Sequence[str], level: str, since: float | None, limit: int) -> list[LogLine]:
        with self._lock:
            if self._source is None:
                self._source = self._factory()
            source = self._source
        return source.read(services, level, since, limit)
