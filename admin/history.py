"""The admin panel's metrics history: numeric samples and state-change events in one SQLite file.

The collector (``admin/collector.py``) stores one averaged sample every ten seconds or so and an event
whenever something changes state (engine up/down, peer connected/lost, MCU missing/back, privacy); the
panel reads them back for its charts (:meth:`History.samples`, downsampled to a few hundred points) and
its event list (:meth:`History.events`).

Theory of operation
-------------------
Schema: ``samples`` has a time column ``t`` (Unix seconds, UTC) and one nullable REAL column per entry of
:data:`COLUMNS` (NULL: not known then, e.g. the engine was down); ``events`` has ``t``, ``source``
(:data:`SOURCES`), ``level`` (:data:`LEVELS`) and ``message``. Both are indexed by time. ``PRAGMA
user_version`` is the schema version and :data:`_MIGRATIONS` takes version N to N+1, as in
``app/state.py``.

Durability: WAL with ``synchronous=NORMAL``. In WAL mode NORMAL never corrupts the database; a power cut
may lose the last commits since the previous checkpoint (seconds of metrics), and in exchange a sample
costs no fsync — which matters on an SD card written every ten seconds for years. Metrics are not
precious: that is also why a database that cannot be opened or turns out damaged is renamed aside
(``history.db.corrupt``, one kept) with a warning and replaced by an empty one, and why, if even that
fails, the history lives in memory until the process restarts. (Damage is looked for with ``PRAGMA
quick_check`` at open — one read of the file, well under a second for the tens of MiB a history takes —
and noticed whenever SQLite reports it later.) Nothing here ever raises into the panel:
writes that fail are logged and dropped, reads that fail return nothing.

Size: retention is by age first (:meth:`History.prune` deletes rows older than ``retention_s``), then by
size: while the database is larger than ``max_bytes`` the oldest rows (samples and events alike, by time)
are deleted. ``auto_vacuum=INCREMENTAL`` is set before the first table is created, so ``PRAGMA
incremental_vacuum`` hands freed pages back and the file shrinks without a full VACUUM (which would
rewrite the whole file and briefly double it). The size measured is the database's own pages; the WAL beside
it is checkpointed (and truncated to ``journal_size_limit``) by ``prune`` and in between stays below
SQLite's automatic checkpoint of 1000 pages (4 MiB).

Secrecy: the file is created 0600 (the events name the twin); its directory, when this module creates it,
0700.

Threads: one connection shared by every thread behind a lock; each public method holds it for one short
statement or transaction. The collector thread writes, request handlers read.

Downsampling: :meth:`History.samples` cuts ``[since, until)`` into ``max_points`` equal buckets and
returns, per non-empty bucket, the mean time and the mean of each column over the rows that have a value
(SQL ``AVG`` skips NULL), so a 24-hour chart of 8640 rows is ``max_points`` points computed inside SQLite.
A 0/1 column such as ``presence`` becomes the fraction of the bucket's samples that had it.

Only the standard library (and :mod:`app.sqlite_store`, which is too) is imported.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from app.sqlite_store import prepare_private_file

log = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Column:
    """One numeric column of the history: its name (also the live sample's key), unit and meaning."""

    name: str
    unit: str
    help: str


COLUMNS: Final[tuple[Column, ...]] = (
    Column("fps_shown", "frames/s", "pictures from the twin shown per second"),
    Column("video_latency_p50_ms", "ms", "twin's capture to decoded here, median since the engine started"),
    Column(
        "video_latency_p99_ms", "ms", "twin's capture to decoded here, 99th percentile since engine start"
    ),
    Column("receive_mbps", "Mb/s", "media received from the twin (all datagrams), megabits per second"),
    Column("send_target_kbps", "kb/s", "the video encoder's target bitrate, kilobits per second"),
    Column("loss_percent", "%", "packets from the twin lost on the way, percent"),
    Column("rtt_ms", "ms", "smoothed round-trip time to the twin"),
    Column("audio_latency_p50_ms", "ms", "twin's microphone to our speaker, median since the engine started"),
    Column("audio_concealed_percent", "%", "received audio concealed (lost or late) over the last interval"),
    Column("mic_dbfs", "dBFS", "microphone level before echo cancellation (smoothed)"),
    Column("out_dbfs", "dBFS", "microphone level after echo cancellation, as sent (smoothed)"),
    Column("engine_cpu_percent", "%", "CPU used by the engine process, percent of one core"),
    Column("engine_rss_mb", "MiB", "resident memory of the engine process"),
    Column("system_cpu_percent", "%", "CPU used by the whole machine, percent of all cores"),
    Column("soc_temperature_c", "°C", "hottest thermal zone of the SoC"),
    Column("room_lux", "lx", "room illuminance from the room controller"),
    Column("room_temperature_c", "°C", "room temperature from the room controller"),
    Column("room_humidity_percent", "%", "room relative humidity from the room controller"),
    Column("presence", "0/1", "someone is in the room (1) or not (0); averaged: fraction of the time"),
)
"""The numeric columns of a sample, in storage order."""

COLUMN_NAMES: Final[tuple[str, ...]] = tuple(c.name for c in COLUMNS)

SOURCES: Final = ("engine", "hwcontrol", "admin")
"""Which part of the doorway an event is about."""
LEVELS: Final = ("debug", "info", "warning", "error")
"""Event levels, least severe first."""

MAX_MESSAGE: Final = 2000
"""Longest event message stored, in characters; longer ones are cut (a runaway error text)."""
MAX_POINTS: Final = 5000
"""Most points :meth:`History.samples` returns whatever is asked (bounds a response)."""
MAX_EVENTS: Final = 5000
"""Most events :meth:`History.events` returns whatever is asked."""
_SIZE_ROUNDS: Final = 20
"""Delete-and-measure rounds of the size limit before giving up and emptying the tables."""

_MIGRATIONS: Final[list[list[str]]] = [
    # 0 -> 1: samples and events.
    [
        "CREATE TABLE samples (t REAL NOT NULL, " + ", ".join(f"{c} REAL" for c in COLUMN_NAMES) + ")",
        "CREATE INDEX samples_t ON samples (t)",
        """CREATE TABLE events (
            t REAL NOT NULL,
            source TEXT NOT NULL CHECK (source IN ('engine', 'hwcontrol', 'admin')),
            level TEXT NOT NULL CHECK (level IN ('debug', 'info', 'warning', 'error')),
            message TEXT NOT NULL
        )""",
        "CREATE INDEX events_t ON events (t)",
    ],
]
SCHEMA_VERSION: Final = len(_MIGRATIONS)


class _UnusableError(Exception):
    """The database file cannot be used as it is (damaged, foreign, or from a newer Doorway)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One stored event: when (Unix s), about what (:data:`SOURCES`), how bad (:data:`LEVELS`), and what."""

    t: float
    source: str
    level: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"t": self.t, "source": self.source, "level": self.level, "message": self.message}


def _number(value: object) -> float | None:
    """A column value for SQLite: finite numbers and booleans (as 0/1); anything else is NULL."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        f = float(value)
        return f if math.isfinite(f) else None
    return None


class History:
    """Samples and events in the SQLite file at ``path``; see the module docstring.

    ``retention_s`` is how long rows are kept, in seconds; ``max_bytes`` the most the database may take
    (enforced by :meth:`prune`, which the collector calls every few minutes). Thread-safe; never raises
    from its methods for database trouble (it logs and degrades).
    """

    def __init__(self, path: Path, *, retention_s: float, max_bytes: int) -> None:
        if retention_s <= 0:
            raise ValueError(f"retention_s must be positive, not {retention_s}")
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        self.path = Path(path)
        self.retention_s = float(retention_s)
        self.max_bytes = int(max_bytes)
        self.in_memory = False
        """True when the file could not be used at all and the history lives in memory (see ``problem``)."""
        self.problem: str | None = None
        """The last thing that went wrong with the file (for the panel's health page), or None."""
        self._lock = threading.Lock()
        self._conn = self._open_or_replace()

    # -- opening ------------------------------------------------------------------------------------------

    def _open_or_replace(self) -> sqlite3.Connection:
        """Open the file; if it is unusable, move it aside and start afresh; if that fails, use memory."""
        try:
            return self._open_file()
        except _UnusableError as exc:
            self.problem = f"{self.path}: {exc}; moved aside, history starts afresh"
            log.warning("history: %s", self.problem)
            self._move_aside()
        except (OSError, sqlite3.Error) as exc:
            self.problem = f"{self.path}: cannot open ({exc})"
            log.warning("history: %s; keeping the history in memory", self.problem)
            return self._open_memory()
        try:
            return self._open_file()
        except (_UnusableError, OSError, sqlite3.Error) as exc:
            self.problem = f"{self.path}: cannot open even afresh ({exc})"
            log.warning("history: %s; keeping the history in memory", self.problem)
            return self._open_memory()

    def _open_file(self) -> sqlite3.Connection:
        prepare_private_file(self.path)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._configure(conn, wal=True)
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_memory(self) -> sqlite3.Connection:
        self.in_memory = True
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self._configure(conn, wal=False)
        return conn

    def _configure(self, conn: sqlite3.Connection, *, wal: bool) -> None:
        """Pragmas, integrity check and migrations. Raises :class:`_UnusableError` for a damaged or foreign
        file, OSError/sqlite3.Error for trouble that a fresh file would not cure (permissions, disk)."""
        try:
            conn.execute("PRAGMA busy_timeout = 2000")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                # Only takes effect before the first table exists: a new file, or one left empty.
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            if wal:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise sqlite3.OperationalError(f"cannot switch to WAL journaling (got {mode!r})")
            conn.execute("PRAGMA synchronous = NORMAL")
            # After a checkpoint the WAL file is cut back to this, so it does not stay at its high mark.
            conn.execute("PRAGMA journal_size_limit = 1048576")
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise _UnusableError(f"damaged ({check})")
            if version > SCHEMA_VERSION:
                raise _UnusableError(
                    f"written by a newer Doorway (schema {version}; this one knows {SCHEMA_VERSION})"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _MIGRATIONS[target - 1]:
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {target}")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        except sqlite3.OperationalError as exc:
            # "database is locked", "unable to open", "disk I/O error": not cured by a new file... except
            # for the errors a damaged file reports as OperationalError.
            if "malformed" in str(exc) or "not a database" in str(exc):
                raise _UnusableError(str(exc)) from None
            raise
        except sqlite3.DatabaseError as exc:
            # "file is not a database", "database disk image is malformed".
            raise _UnusableError(str(exc)) from None

    def _move_aside(self) -> None:
        """Rename the unusable file to ``<name>.corrupt`` (replacing an older one: one is enough to look
        at) and remove its WAL and shared-memory companions, which belong to it."""
        aside = Path(f"{self.path}.corrupt")
        try:
            os.replace(self.path, aside)
        except OSError as exc:
            log.warning("history: cannot move %s aside (%s); removing it", self.path, exc)
            with contextlib.suppress(OSError):
                self.path.unlink()
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(OSError):
                Path(f"{self.path}{suffix}").unlink()

    def close(self) -> None:
        """Close the database. Idempotent; later calls of other methods log and do nothing."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the one way in -----------------------------------------------------------------------------------

    def _run(self, what: str, fn: Callable[[sqlite3.Connection], _T], default: _T) -> _T:
        """Run ``fn`` on the connection under the lock. A damaged file found on the way is replaced (the
        operation is dropped); any other database error is logged and ``default`` returned."""
        with self._lock:
            try:
                return fn(self._conn)
            except sqlite3.ProgrammingError as exc:
                if "closed" not in str(exc):
                    raise
                # Closed database: the process is stopping.
                log.debug("history: cannot %s: %s", what, exc)
                return default
            except sqlite3.DatabaseError as exc:
                text = str(exc)
                if self.in_memory or not ("malformed" in text or "not a database" in text):
                    self.problem = f"{self.path}: cannot {what}: {text}"
                    log.warning("history: %s", self.problem)
                    return default
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self.problem = f"{self.path}: damaged ({text}); moved aside, history starts afresh"
                log.warning("history: %s", self.problem)
                self._move_aside()
                self._conn = self._open_or_replace()
                return default

    @staticmethod
    @contextlib.contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- writing (the collector's thread) ------------------------------------------------------------------

    def add_sample(self, t: float, values: Mapping[str, object]) -> None:
        """Store one sample taken at ``t`` (Unix seconds). ``values`` maps column names (:data:`COLUMNS`)
        to numbers; other keys are ignored, and a missing, non-numeric or non-finite value is stored as
        NULL. Booleans are stored as 0/1."""
        row = (float(t), *(_number(values.get(name)) for name in COLUMN_NAMES))
        sql = _INSERT_SAMPLE

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(sql, row)

        self._run("store a sample", insert, None)

    def add_event(self, t: float, source: str, level: str, message: str) -> None:
        """Store one event at ``t`` (Unix seconds). ``source`` is one of :data:`SOURCES`, ``level`` one of
        :data:`LEVELS` (ValueError otherwise: a bug in the caller); ``message`` is cut to
        :data:`MAX_MESSAGE` characters."""
        if source not in SOURCES:
            raise ValueError(f"event source must be one of {', '.join(SOURCES)}, not {source!r}")
        if level not in LEVELS:
            raise ValueError(f"event level must be one of {', '.join(LEVELS)}, not {level!r}")
        text = message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO events (t, source, level, message) VALUES (?, ?, ?, ?)",
                (float(t), source, level, text),
            )

        self._run("store an event", insert, None)

    def prune(self, now: float) -> int:
        """Apply retention: delete rows older than ``now - retention_s``, then the oldest rows until the
        database is at most ``max_bytes``; give the freed pages back and checkpoint the WAL. Returns the
        number of rows deleted. Takes milliseconds to a few hundred (a large first prune); call it every
        few minutes, not every sample."""
        return self._run("prune", lambda conn: self._prune(conn, now), 0)

    def _prune(self, conn: sqlite3.Connection, now: float) -> int:
        cutoff = now - self.retention_s
        deleted = 0
        with self._transaction(conn):
            deleted += conn.execute("DELETE FROM samples WHERE t < ?", (cutoff,)).rowcount
            deleted += conn.execute("DELETE FROM events WHERE t < ?", (cutoff,)).rowcount
        self._vacuum(conn)
        for _ in range(_SIZE_ROUNDS):
            size = self._size(conn)
            if size <= self.max_bytes:
                break
            # Delete a share of the rows a little larger than the share of bytes over the limit: rows are
            # about the same size, and the pages they free come back through the incremental vacuum.
            share = min(1.0, (size - self.max_bytes) / size + 0.05)
            cut = self._time_at_share(conn, share)
            if cut is None:
                break
            with self._transaction(conn):
                deleted += conn.execute("DELETE FROM samples WHERE t <= ?", (cut,)).rowcount
                deleted += conn.execute("DELETE FROM events WHERE t <= ?", (cut,)).rowcount
            self._vacuum(conn)
        else:
            # Still too big after many rounds: max_bytes is below what the schema alone takes.
            with self._transaction(conn):
                deleted += conn.execute("DELETE FROM samples").rowcount
                deleted += conn.execute("DELETE FROM events").rowcount
            self._vacuum(conn)
        if not self.in_memory:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if deleted:
            log.debug("history: pruned %d rows", deleted)
        return deleted

    @staticmethod
    def _vacuum(conn: sqlite3.Connection) -> None:
        """Give free pages back to the file system. (Through ``execute`` the pragma frees one page:
        Python's sqlite3 steps it once; ``executescript`` runs it to the end. Autocommit mode, so the
        COMMIT that ``executescript`` issues first has nothing to commit.)"""
        conn.executescript("PRAGMA incremental_vacuum;")

    @staticmethod
    def _size(conn: sqlite3.Connection) -> int:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * page_size)

    @staticmethod
    def _time_at_share(conn: sqlite3.Connection, share: float) -> float | None:
        """The time before which about ``share`` of all rows (samples and events) lie; None when empty."""
        n_samples = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
        n_events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        # Samples are the bulk; cut by their times, or the events' when there are no samples.
        table, n = ("samples", n_samples) if n_samples else ("events", n_events)
        if n == 0:
            return None
        k = min(n - 1, max(0, math.ceil(share * n) - 1))
        row = conn.execute(f"SELECT t FROM {table} ORDER BY t LIMIT 1 OFFSET ?", (k,)).fetchone()
        return None if row is None else float(row[0])

    # -- reading (any thread) ----------------------------------------------------------------------------

    def samples(self, since: float, until: float, max_points: int = 500) -> list[dict[str, float | None]]:
        """Samples with ``since <= t < until`` (Unix seconds), oldest first, as dicts of ``t`` and every
        column. At most ``max_points`` (capped at :data:`MAX_POINTS`): when there are more rows, the
        range is cut into ``max_points`` equal buckets and each non-empty one gives the mean ``t`` and the
        mean of each column over the rows that have it (None when none does)."""
        points = max(1, min(int(max_points), MAX_POINTS))
        if not until > since:
            return []

        def query(conn: sqlite3.Connection) -> list[dict[str, float | None]]:
            n = conn.execute(
                "SELECT count(*) FROM samples WHERE t >= ? AND t < ?", (since, until)
            ).fetchone()[0]
            if n <= points:
                rows = conn.execute(_SELECT_RAW, (since, until)).fetchall()
            else:
                width = (until - since) / points
                rows = conn.execute(_SELECT_BUCKETS, (since, width, points - 1, until)).fetchall()
            return [dict(zip(("t", *COLUMN_NAMES), row, strict=True)) for row in rows]

        return self._run("read samples", query, [])

    def events(self, since: float, limit: int = 100, level: str | None = None) -> list[Event]:
        """The newest ``limit`` events (capped at :data:`MAX_EVENTS`) with ``t >= since``, newest first;
        with ``level``, only those at that level or more severe (``"warning"``: warnings and errors)."""
        if level is not None and level not in LEVELS:
            raise ValueError(f"level must be one of {', '.join(LEVELS)}, not {level!r}")
        wanted = LEVELS[LEVELS.index(level) :] if level is not None else LEVELS
        marks = ", ".join("?" for _ in wanted)
        n = max(0, min(int(limit), MAX_EVENTS))

        def query(conn: sqlite3.Connection) -> list[Event]:
            rows = conn.execute(
                f"SELECT t, source, level, message FROM events WHERE t >= ? AND level IN ({marks})"
                " ORDER BY t DESC, rowid DESC LIMIT ?",
                (since, *wanted, n),
            ).fetchall()
            return [Event(float(t), str(s), str(lv), str(m)) for t, s, lv, m in rows]

        return self._run("read events", query, [])

    def size_bytes(self) -> int:
        """Bytes the database's used pages take (the file, less free pages, less the WAL); 0 on error."""
        return self._run("measure", self._size, 0)

    def counts(self) -> dict[str, int]:
        """Rows stored: ``{"samples": n, "events": m}`` (diagnostics)."""

        def query(conn: sqlite3.Connection) -> dict[str, int]:
            return {
                "samples": int(conn.execute("SELECT count(*) FROM samples").fetchone()[0]),
                "events": int(conn.execute("SELECT count(*) FROM events").fetchone()[0]),
            }

        return self._run("count", query, {"samples": 0, "events": 0})


_INSERT_SAMPLE: Final = (
    f"INSERT INTO samples (t, {', '.join(COLUMN_NAMES)}) VALUES (?{', ?' * len(COLUMN_NAMES)})"
)
_SELECT_RAW: Final = f"SELECT t, {', '.join(COLUMN_NAMES)} FROM samples WHERE t >= ? AND t < ? ORDER BY t"
# Bucket k holds since + k·width <= t < since + (k+1)·width; min() keeps a row just below ``until`` that
# floating point rounds into bucket ``points`` in the last one.
_SELECT_BUCKETS: Final = (
    "SELECT avg(t), "
    + ", ".join(f"avg({c})" for c in COLUMN_NAMES)
    + " FROM samples WHERE t >= ?1 AND t < ?4"
    " GROUP BY min(CAST((t - ?1) / ?2 AS INTEGER), ?3) ORDER BY 1"
)
