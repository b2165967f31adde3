"""A doorway's durable state: its long-term key, its pairing and its calibration, in one SQLite database.

The database is ``doorway.db`` in the state directory (``engine.state_dir``, /var/lib/doorway on the
appliance). It is small (two one-row tables, a counter and the calibration results) and written only when
a doorway is provisioned, paired, unpaired or calibrated; the engine reads it at start and polls
:meth:`StateStore.version` to notice a new pairing made by ``doorway pair`` in another process.

Theory of operation
-------------------
Durability, secrecy, schema versions, threads and errors are :mod:`app.sqlite_store`'s (read its
docstring): WAL with ``synchronous=FULL``, every write one ``BEGIN IMMEDIATE`` … ``COMMIT``, the directory
0700 and the files 0600, migrations in :data:`_MIGRATIONS`, everything SQLite or the file system reports
raised as :class:`StateError` naming the file. Replacing the twin deletes the old row, inserts the new one
and bumps the change counter in one transaction, so after any crash the database holds either the old
pairing or the new one, never a mix.

Tables: ``identity`` (one row: the X25519 private key and its creation time), ``twin`` (at most one row:
the paired doorway), ``generation`` (one row: a counter bumped by every write of those two), and
``calibration`` (the last :data:`CALIBRATIONS_KEPT` results of each calibration step, as JSON reports; see
:mod:`app.calibration`). A calibration does not bump ``generation``: that counter means "the pairing may
have changed"; :meth:`StateStore.calibration_version` is the calibration's own.

This module imports only the standard library: the admin process and the durability tests load it cheaply.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from app.sqlite_store import SqliteStore

DB_NAME: Final = "doorway.db"
"""File name of the state database inside the state directory."""
KEY_SIZE: Final = 32
"""Bytes in an X25519 private or public key."""
CALIBRATION_STEPS: Final = ("audio", "camera", "lighting")
"""The calibration steps whose results the database keeps."""
CALIBRATIONS_KEPT: Final = 20
"""Results kept per calibration step: the latest is applied, the ones before it are history."""

_MIGRATIONS: Final[list[list[str]]] = [
    # 0 -> 1: identity, twin and the change counter.
    [
        """CREATE TABLE identity (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            private_key BLOB NOT NULL CHECK (length(private_key) = 32),
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE twin (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            device_id TEXT NOT NULL,
            name TEXT NOT NULL,
            public_key BLOB NOT NULL CHECK (length(public_key) = 32),
            media_host TEXT NOT NULL,
            media_port INTEGER NOT NULL CHECK (media_port BETWEEN 1 AND 65535),
            paired_at REAL NOT NULL
        )""",
        """CREATE TABLE generation (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            value INTEGER NOT NULL
        )""",
        "INSERT INTO generation (id, value) VALUES (1, 0)",
    ],
    # 1 -> 2: calibration results, the last few per step (see StateStore.save_calibration).
    [
        """CREATE TABLE calibration (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            step TEXT NOT NULL CHECK (step IN ('audio', 'camera', 'lighting')),
            measured_at REAL NOT NULL,
            passed INTEGER NOT NULL CHECK (passed IN (0, 1)),
            report TEXT NOT NULL CHECK (json_valid(report))
        )""",
        "CREATE INDEX calibration_step ON calibration (step, id)",
    ],
]
SCHEMA_VERSION: Final = len(_MIGRATIONS)
"""The schema version this module writes and reads."""


class StateError(Exception):
    """The state database cannot be opened, read or written. The message names the file, ready to print."""


@dataclass(frozen=True, slots=True)
class Twin:
    """The paired doorway, as stored.

    ``public_key`` is its 32-byte X25519 public key, ``device_id`` derives from it
    (:func:`app.identity.device_id_of`), ``media_host``/``media_port`` is where this doorway sends its media
    (UDP), and ``paired_at`` is when the pairing completed, in Unix seconds (UTC).
    """

    device_id: str
    name: str
    public_key: bytes
    media_host: str
    media_port: int
    paired_at: float


@dataclass(frozen=True, slots=True)
class StoredCalibration:
    """One stored calibration result: its row ``id`` (increasing), the ``step``, when it was measured (Unix
    seconds, UTC), whether it ``passed`` its targets, and the ``report`` (the JSON object of
    :meth:`app.calibration.report.Report.to_json`)."""

    id: int
    step: str
    measured_at: float
    passed: bool
    report: dict[str, Any]


class StateStore(SqliteStore):
    """The state database of one doorway. Open with ``StateStore(state_dir)``; close with :meth:`close`.

    Thread-safe (one connection behind a lock); see the module docstring. Raises :class:`StateError`.
    """

    ERROR = StateError
    KIND = "state"
    MIGRATIONS = _MIGRATIONS

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir, DB_NAME)

    def _bump(self, conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE generation SET value = value + 1 WHERE id = 1")

    # -- identity -----------------------------------------------------------------------------------------

    def identity_key(self) -> bytes | None:
        """The stored 32-byte X25519 private key, or None before one is created."""
        rows = self._read("SELECT private_key FROM identity WHERE id = 1")
        return bytes(rows[0][0]) if rows else None

    def identity_created_at(self) -> float | None:
        """When the key was created, in Unix seconds, or None before one is created."""
        rows = self._read("SELECT created_at FROM identity WHERE id = 1")
        return float(rows[0][0]) if rows else None

    def create_identity(self, private_key: bytes, now: float | None = None) -> bytes:
        """Store ``private_key`` unless a key is already stored; return the key that is stored afterwards.

        Two processes creating a key at once both get the one that won, so a doorway never has two keys.
        ``now`` is the creation time in Unix seconds (default: the wall clock).
        """
        if len(private_key) != KEY_SIZE:
            raise ValueError(f"an X25519 private key has {KEY_SIZE} bytes, not {len(private_key)}")
        created = time.time() if now is None else now
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO identity (id, private_key, created_at) VALUES (1, ?, ?)",
                (private_key, created),
            )
            stored = conn.execute("SELECT private_key FROM identity WHERE id = 1").fetchone()[0]
            self._bump(conn)
        return bytes(stored)

    # -- twin ---------------------------------------------------------------------------------------------

    def twin(self) -> Twin | None:
        """The paired doorway, or None when this doorway is not paired."""
        rows = self._read(
            "SELECT device_id, name, public_key, media_host, media_port, paired_at FROM twin WHERE id = 1"
        )
        if not rows:
            return None
        device_id, name, public_key, host, port, paired_at = rows[0]
        return Twin(
            device_id=str(device_id),
            name=str(name),
            public_key=bytes(public_key),
            media_host=str(host),
            media_port=int(port),
            paired_at=float(paired_at),
        )

    def set_twin(self, twin: Twin) -> None:
        """Replace the pairing (if any) with ``twin``, atomically and durably (fsynced when this returns)."""
        if len(twin.public_key) != KEY_SIZE:
            raise ValueError(f"a twin's public key has {KEY_SIZE} bytes, not {len(twin.public_key)}")
        with self._write() as conn:
            conn.execute("DELETE FROM twin")
            conn.execute(
                "INSERT INTO twin (id, device_id, name, public_key, media_host, media_port, paired_at)"
                " VALUES (1, ?, ?, ?, ?, ?, ?)",
                (
                    twin.device_id,
                    twin.name,
                    twin.public_key,
                    twin.media_host,
                    twin.media_port,
                    twin.paired_at,
                ),
            )
            self._bump(conn)

    def remove_twin(self) -> Twin | None:
        """Forget the pairing; return what was removed (None when there was none). Durable on return."""
        with self._write() as conn:
            old = conn.execute(
                "SELECT device_id, name, public_key, media_host, media_port, paired_at FROM twin WHERE id = 1"
            ).fetchone()
            if old is None:
                return None
            conn.execute("DELETE FROM twin")
            self._bump(conn)
        return Twin(str(old[0]), str(old[1]), bytes(old[2]), str(old[3]), int(old[4]), float(old[5]))

    # -- calibration --------------------------------------------------------------------------------------

    def save_calibration(self, step: str, report: dict[str, Any], measured_at: float, passed: bool) -> int:
        """Store one calibration result (``report``: a JSON object) for ``step``; durable on return.

        Keeps the latest :data:`CALIBRATIONS_KEPT` of the step (older ones are deleted in the same
        transaction, so the table stays small however often someone calibrates). Returns the row id, which
        is also the new :meth:`calibration_version`. ValueError for an unknown step or a report that is not
        JSON.
        """
        if step not in CALIBRATION_STEPS:
            raise ValueError(f"no calibration step {step!r} (known: {', '.join(CALIBRATION_STEPS)})")
        text = json.dumps(report, allow_nan=False, sort_keys=True)
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO calibration (step, measured_at, passed, report) VALUES (?, ?, ?, ?)",
                (step, float(measured_at), int(bool(passed)), text),
            )
            row = int(cur.lastrowid or 0)
            conn.execute(
                "DELETE FROM calibration WHERE step = ? AND id NOT IN"
                " (SELECT id FROM calibration WHERE step = ? ORDER BY id DESC LIMIT ?)",
                (step, step, CALIBRATIONS_KEPT),
            )
        return row

    def calibration(self, step: str) -> StoredCalibration | None:
        """The latest stored result of ``step``, or None when it was never calibrated."""
        found = self.calibration_history(step, limit=1)
        return found[0] if found else None

    def calibration_history(self, step: str, limit: int = CALIBRATIONS_KEPT) -> list[StoredCalibration]:
        """The stored results of ``step``, newest first (at most ``limit``)."""
        rows = self._read(
            "SELECT id, step, measured_at, passed, report FROM calibration WHERE step = ?"
            " ORDER BY id DESC LIMIT ?",
            (step, int(limit)),
        )
        return [
            StoredCalibration(int(i), str(st), float(at), bool(ok), json.loads(report))
            for i, st, at, ok, report in rows
        ]

    def calibration_version(self) -> int:
        """The id of the newest calibration result (0 when none): poll it to notice a new calibration."""
        rows = self._read("SELECT coalesce(max(id), 0) FROM calibration")
        return int(rows[0][0])

    # -- change detection and diagnostics -----------------------------------------------------------------

    def version(self) -> int:
        """A counter that every write (by any process) increases; poll it to notice a new pairing.

        One indexed read, a few microseconds; cheap enough to call every second from the engine.
        """
        rows = self._read("SELECT value FROM generation WHERE id = 1")
        return int(rows[0][0])
