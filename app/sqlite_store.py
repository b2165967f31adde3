"""One SQLite database in a doorway's private state directory, opened for durability and secrecy: the
plumbing the engine's state (:class:`app.state.StateStore`) and the admin panel's (:class:`admin.store.
AdminStore`) share.

Durability: the database runs in WAL mode with ``synchronous=FULL``, so a committed transaction has been
fsynced before ``COMMIT`` returns, and a transaction interrupted by a power cut or SIGKILL is rolled back
when the database is next opened. Every write is one explicit ``BEGIN IMMEDIATE`` … ``COMMIT``
(:meth:`SqliteStore._write`). (Python 3.11's ``sqlite3`` opens implicit transactions only around INSERT/
UPDATE/DELETE, not around DDL or ``PRAGMA user_version``; the connection therefore runs in autocommit mode
and the transactions are explicit, which also makes each schema migration atomic. ``IMMEDIATE`` takes the
write lock at the start, so two writing processes queue on ``busy_timeout`` instead of failing on
upgrade.) Opening runs ``PRAGMA quick_check`` and refuses a damaged file.

Secrecy: the directory is created with mode 0700 and the database file with mode 0600 before SQLite opens
it; SQLite gives the ``-wal`` and ``-shm`` files the database file's mode. An existing database file (and
its companions) is narrowed to 0600 on open; an existing directory is left as it is (it may be a
systemd ``StateDirectory=`` or a test's temporary directory).

Schema: ``PRAGMA user_version`` is the schema version; a subclass's :attr:`SqliteStore.MIGRATIONS` lists
the statements that take version N to N+1, applied in order on open, each in its own transaction (another
process may have migrated meanwhile: the version is read again inside it). A database from a newer Doorway
is refused rather than guessed at.

Threads: one connection, shared by all threads of the process and guarded by a lock; each public method of
a subclass holds it for one short statement or transaction (microseconds to one fsync). Other processes
may open the same database at the same time (WAL lets readers run beside the one writer).

Errors: anything SQLite or the file system reports is raised as the subclass's :attr:`SqliteStore.ERROR`
naming the file, so a command line can print one line instead of a traceback.

Standard library only: the admin process and the durability tests load it cheaply.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Final, Self

BUSY_TIMEOUT_MS: Final = 5000
"""How long a statement waits for another process's write lock before failing, in ms."""


def prepare_private_file(path: Path) -> None:
    """Make ``path``'s directory (0700, when it does not exist yet) and the database file (0600) before
    SQLite opens it, and narrow an existing file and its ``-wal``/``-shm`` companions to 0600 (see the
    module docstring). Raises OSError."""
    directory = path.parent
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
        # mkdir's mode is masked by the umask; say it again so the directory is 0700 whatever it is.
        os.chmod(directory, 0o700)
    # Create the file (or narrow an existing one) before SQLite touches it: SQLite creates the -wal and
    # -shm files with the database file's permissions, so they inherit 0600 from it.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    for suffix in ("", "-wal", "-shm"):
        p = Path(f"{path}{suffix}")
        if p.exists() and p.stat().st_mode & 0o777 != 0o600:
            os.chmod(p, 0o600)


class SqliteStore:
    """A database file ``name`` in ``state_dir``, open on one connection (see the module docstring).

    Subclasses set :attr:`ERROR`, :attr:`KIND` and :attr:`MIGRATIONS`, and may override :meth:`_opened`.
    Close with :meth:`close` (idempotent) or use as a context manager.
    """

    ERROR: ClassVar[type[Exception]]
    """What every failure is raised as; its message names the file."""
    KIND: ClassVar[str]
    """What the database is, for messages: "state" gives "not a Doorway state database"."""
    MIGRATIONS: ClassVar[Sequence[Sequence[str]]]
    """The statements taking schema version N to N+1, for N = 0, 1, …"""

    def __init__(self, state_dir: Path, name: str) -> None:
        self.path = Path(state_dir) / name
        self._lock = threading.Lock()
        self._conn = self._open(Path(state_dir))

    # -- opening ------------------------------------------------------------------------------------------

    def _open(self, state_dir: Path) -> sqlite3.Connection:
        error = self.ERROR
        try:
            prepare_private_file(self.path)
        except OSError as exc:
            raise error(f"{self.path}: cannot open: {exc.strerror or exc}") from None
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise error(f"{self.path}: cannot open: {exc}") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise error(f"{self.path}: cannot switch to WAL journaling (got {mode!r})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise error(f"{self.path}: the {self.KIND} database is damaged ({check})")
            self._migrate(conn)
        except sqlite3.OperationalError as exc:
            conn.close()
            raise error(f"{self.path}: cannot open: {exc}") from None
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise error(f"{self.path}: not a Doorway {self.KIND} database, or damaged ({exc})") from None
        except BaseException:
            conn.close()
            raise
        self._opened(state_dir)
        return conn

    def _opened(self, state_dir: Path) -> None:
        """Called once the database is open and migrated (a subclass's last word on the files)."""

    def _files(self) -> list[Path]:
        """The database file and its WAL companions."""
        return [Path(f"{self.path}{suffix}") for suffix in ("", "-wal", "-shm")]

    def _migrate(self, conn: sqlite3.Connection) -> None:
        known = len(self.MIGRATIONS)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > known:
            raise self.ERROR(
                f"{self.path}: written by a newer Doorway (schema {version}; this one knows {known})"
            )
        for target in range(version + 1, known + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Re-read inside the write lock: another process may have migrated meanwhile.
                if conn.execute("PRAGMA user_version").fetchone()[0] >= target:
                    conn.execute("ROLLBACK")
                    continue
                for statement in self.MIGRATIONS[target - 1]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        """Close the connection. Idempotent."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pragmas(self) -> dict[str, str]:
        """The durability settings in force on this connection (journal_mode, synchronous); diagnostics."""
        names = {0: "off", 1: "normal", 2: "full", 3: "extra"}
        mode = self._read("PRAGMA journal_mode")[0][0]
        sync = self._read("PRAGMA synchronous")[0][0]
        return {"journal_mode": str(mode), "synchronous": names.get(int(sync), str(sync))}

    # -- helpers for subclasses ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock: committed on success, rolled back on any exception."""
        with self._lock, self._errors("write"):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise self.ERROR(f"{self.path}: cannot {what}: {exc}") from None

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock, self._errors("read"):
            return list(self._conn.execute(sql, params).fetchall())
