"""The admin panel's durable state: the owner account, login sessions, failed logins and the setup code.

The database is ``admin.db`` in the doorway's state directory (``engine.state_dir``), beside the engine's
``doorway.db`` but separate from it: the admin process is the only writer here (plus ``doorway admin
setup-code``), and a bug in the web layer can never damage the doorway's identity or pairing.

Theory of operation
-------------------
Durability and secrecy are :mod:`app.sqlite_store`'s, as for the engine's state (read its docstring): WAL
with ``synchronous=FULL``, every write one explicit ``BEGIN IMMEDIATE`` … ``COMMIT``, the directory made
0700 and the files 0600 before SQLite opens them, ``PRAGMA user_version`` as the schema version with
:data:`_MIGRATIONS` applied in order, and a database from a newer Doorway refused. When the command runs
as root (``sudo doorway admin
setup-code``) the files are given to the state directory's owner, so that the service (``User=doorway``)
can still open them.

What is stored, and why in this form:

- ``owner``: at most one row (``id = 1``): the user name, the argon2 hash of the password (the PHC string,
  which carries its own salt and parameters) and when it was made and last changed. One owner is all a
  doorway has; the ``CHECK`` makes a second impossible even if two set-ups race.
- ``session``: one row per login. The cookie carries a random 32-byte token; only its SHA-256 is stored,
  so a copy of the database does not let anyone log in. A SHA-256 (not argon2) is enough because the
  token is 256 random bits, not something a person chose, and it is looked up on every request. Each row
  carries its own CSRF token (not secret from the browser, it is written into every page), and its
  created / last-seen / absolute-expiry times in Unix seconds.
- ``login_failure``: one row per failed login or set-up attempt, per bucket (``kind`` ``"client"`` with the
  client's address, ``"user"`` with the user name tried). :mod:`admin.security` counts recent rows to
  rate-limit and lock out; rows older than two lock-out windows are pruned as new ones arrive.
- ``setup_code``: at most one row: the argon2 hash of the one-time code that lets the first visitor create
  the owner, and its expiry. Creating the owner deletes it in the same transaction, and no code can be
  stored once an owner exists, so set-up is closed for good.

Threads: one connection shared by the process's threads behind a lock; each public method holds it for one
statement or one short transaction. Errors from SQLite or the file system become :class:`AdminStoreError`
naming the file. Standard library only (and :mod:`app.sqlite_store`, which is too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from app.sqlite_store import SqliteStore

DB_NAME: Final = "admin.db"
"""File name of the admin database inside the state directory."""

_MIGRATIONS: Final[list[list[str]]] = [
    # 0 -> 1: owner, sessions, failed logins, setup code.
    [
        """CREATE TABLE owner (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            username TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            created_at REAL NOT NULL,
            password_changed_at REAL NOT NULL
        )""",
        """CREATE TABLE session (
            token_hash BLOB PRIMARY KEY CHECK (length(token_hash) = 32),
            owner_id INTEGER NOT NULL REFERENCES owner(id) ON DELETE CASCADE,
            csrf_token TEXT NOT NULL,
            client TEXT NOT NULL,
            created_at REAL NOT NULL,
            last_seen REAL NOT NULL,
            expires_at REAL NOT NULL
        )""",
        "CREATE INDEX session_owner ON session (owner_id, created_at)",
        """CREATE TABLE login_failure (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('client', 'user')),
            key TEXT NOT NULL,
            at REAL NOT NULL
        )""",
        "CREATE INDEX login_failure_key ON login_failure (kind, key, at)",
        """CREATE TABLE setup_code (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            code_hash TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL
        )""",
    ],
]
SCHEMA_VERSION: Final = len(_MIGRATIONS)
"""The schema version this module writes and reads."""


class AdminStoreError(Exception):
    """The admin database cannot be opened, read or written. The message names the file, ready to print."""


class SetupClosedError(AdminStoreError):
    """Set-up was asked for, but the owner account exists: set-up is closed for good."""


class SetupCodeChangedError(AdminStoreError):
    """The setup code checked is no longer the stored one (replaced or used meanwhile)."""


@dataclass(frozen=True, slots=True)
class Owner:
    """The owner account. Times are Unix seconds."""

    username: str
    password_hash: str
    created_at: float
    password_changed_at: float


@dataclass(frozen=True, slots=True)
class SessionRow:
    """One login session as stored. ``token_hash`` is SHA-256 of the cookie's token; times are Unix seconds.

    ``client`` is the address the login came from (diagnostics only; a session is not bound to it, since
    phones change address between Wi-Fi and roaming).
    """

    token_hash: bytes
    csrf_token: str
    client: str
    created_at: float
    last_seen: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class SetupCode:
    """The stored one-time setup code: its argon2 hash and its times (Unix seconds)."""

    code_hash: str
    created_at: float
    expires_at: float


class AdminStore(SqliteStore):
    """The admin database of one doorway. ``AdminStore(state_dir)``; close with :meth:`close`.

    Thread-safe (one connection behind a lock). Raises :class:`AdminStoreError`.
    """

    ERROR = AdminStoreError
    KIND = "admin"
    MIGRATIONS = _MIGRATIONS

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir, DB_NAME)

    def _opened(self, state_dir: Path) -> None:
        """Run as root, hand the database files to whoever owns the state directory (the service user).

        Otherwise ``sudo doorway admin setup-code`` on a fresh doorway would leave a root-owned database that
        the ``doorway`` service cannot open.
        """
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            return
        try:
            st = state_dir.stat()
            if st.st_uid == 0:
                return
            for p in self._files():
                if p.exists():
                    os.chown(p, st.st_uid, st.st_gid)
        except OSError as exc:
            raise AdminStoreError(f"{self.path}: cannot hand to the service user: {exc}") from None

    def schema_version(self) -> int:
        """``PRAGMA user_version`` of the open database (diagnostics and tests)."""
        return int(self._read("PRAGMA user_version")[0][0])

    # -- owner and setup code -----------------------------------------------------------------------------

    def owner(self) -> Owner | None:
        """The owner account, or None before set-up."""
        rows = self._read(
            "SELECT username, password_hash, created_at, password_changed_at FROM owner WHERE id = 1"
        )
        if not rows:
            return None
        name, pw_hash, created, changed = rows[0]
        return Owner(str(name), str(pw_hash), float(created), float(changed))

    def setup_code(self) -> SetupCode | None:
        """The stored setup code (expired or not), or None."""
        rows = self._read("SELECT code_hash, created_at, expires_at FROM setup_code WHERE id = 1")
        if not rows:
            return None
        return SetupCode(str(rows[0][0]), float(rows[0][1]), float(rows[0][2]))

    def set_setup_code(self, code_hash: str, now: float, expires_at: float) -> None:
        """Replace any setup code with this one. Raises :class:`SetupClosedError` once an owner exists."""
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM owner WHERE id = 1").fetchone() is not None:
                raise SetupClosedError(f"{self.path}: the owner account exists; set-up is closed")
            conn.execute("DELETE FROM setup_code")
            conn.execute(
                "INSERT INTO setup_code (id, code_hash, created_at, expires_at) VALUES (1, ?, ?, ?)",
                (code_hash, now, expires_at),
            )

    def create_owner(self, username: str, password_hash: str, code_hash: str, now: float) -> None:
        """Create the owner and consume the setup code whose hash is ``code_hash``, in one transaction.

        The caller has checked the code against ``code_hash`` (slowly, outside the lock); this re-checks,
        inside the write lock, that the same code is still stored and no owner exists, so two racing set-ups
        cannot both succeed and a code replaced meanwhile cannot be used. Raises :class:`SetupClosedError`
        or :class:`SetupCodeChangedError`.
        """
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM owner WHERE id = 1").fetchone() is not None:
                raise SetupClosedError(f"{self.path}: the owner account exists; set-up is closed")
            row = conn.execute("SELECT code_hash FROM setup_code WHERE id = 1").fetchone()
            if row is None or str(row[0]) != code_hash:
                raise SetupCodeChangedError(f"{self.path}: the setup code was replaced or used meanwhile")
            conn.execute(
                "INSERT INTO owner (id, username, password_hash, created_at, password_changed_at)"
                " VALUES (1, ?, ?, ?, ?)",
                (username, password_hash, now, now),
            )
            conn.execute("DELETE FROM setup_code")

    def set_password_hash(
        self, password_hash: str, now: float, *, keep_session: bytes | None, changed: bool = True
    ) -> int:
        """Store a new password hash; with ``changed``, end every session but ``keep_session``.

        ``changed`` False is a rehash of the same password (new argon2 parameters): sessions stay. Returns
        how many sessions were ended. One transaction: no moment exists where the new password is stored
        but an old session still works.
        """
        with self._write() as conn:
            if changed:
                conn.execute(
                    "UPDATE owner SET password_hash = ?, password_changed_at = ? WHERE id = 1",
                    (password_hash, now),
                )
                cur = conn.execute(
                    "DELETE FROM session WHERE token_hash IS NOT ?", (keep_session if keep_session else None,)
                )
                return int(cur.rowcount)
            conn.execute("UPDATE owner SET password_hash = ? WHERE id = 1", (password_hash,))
            return 0

    # -- sessions -----------------------------------------------------------------------------------------

    def add_session(self, row: SessionRow, *, max_sessions: int) -> None:
        """Store a new session for the owner, ending the oldest ones beyond ``max_sessions``."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO session (token_hash, owner_id, csrf_token, client, created_at, last_seen,"
                " expires_at) VALUES (?, 1, ?, ?, ?, ?, ?)",
                (row.token_hash, row.csrf_token, row.client, row.created_at, row.last_seen, row.expires_at),
            )
            conn.execute(
                "DELETE FROM session WHERE token_hash NOT IN"
                " (SELECT token_hash FROM session ORDER BY created_at DESC LIMIT ?)",
                (max_sessions,),
            )

    def session(self, token_hash: bytes) -> SessionRow | None:
        """The session whose token hashes to ``token_hash``, expired or not; None when there is none."""
        rows = self._read(
            "SELECT token_hash, csrf_token, client, created_at, last_seen, expires_at FROM session"
            " WHERE token_hash = ?",
            (token_hash,),
        )
        if not rows:
            return None
        h, csrf, client, created, seen, expires = rows[0]
        return SessionRow(bytes(h), str(csrf), str(client), float(created), float(seen), float(expires))

    def touch_session(self, token_hash: bytes, now: float) -> None:
        """Record that the session was used at ``now`` (Unix seconds)."""
        with self._write() as conn:
            conn.execute("UPDATE session SET last_seen = ? WHERE token_hash = ?", (now, token_hash))

    def delete_session(self, token_hash: bytes) -> bool:
        """End one session; True when it existed."""
        with self._write() as conn:
            return conn.execute("DELETE FROM session WHERE token_hash = ?", (token_hash,)).rowcount > 0

    def prune_sessions(self, now: float, idle_s: float) -> int:
        """Delete sessions past their absolute expiry or idle for longer than ``idle_s``; return how many."""
        with self._write() as conn:
            cur = conn.execute(
                "DELETE FROM session WHERE expires_at <= ? OR last_seen + ? <= ?", (now, idle_s, now)
            )
            return int(cur.rowcount)

    def session_count(self) -> int:
        """Stored sessions, live or not yet pruned (diagnostics and tests)."""
        return int(self._read("SELECT count(*) FROM session")[0][0])

    # -- failed logins ------------------------------------------------------------------------------------

    def add_failure(self, kind: str, key: str, at: float, *, prune_before: float) -> None:
        """Record one failed attempt in bucket (``kind``, ``key``) and drop every record older than
        ``prune_before`` (all buckets), so the table never outgrows what the lock-out rules look at."""
        with self._write() as conn:
            conn.execute("INSERT INTO login_failure (kind, key, at) VALUES (?, ?, ?)", (kind, key, at))
            conn.execute("DELETE FROM login_failure WHERE at < ?", (prune_before,))

    def failures(self, kind: str, key: str, after: float) -> list[float]:
        """Times of the failed attempts in bucket (``kind``, ``key``) later than ``after``, oldest first.

        Strictly later: a failure exactly one window old has left the window (so a lock-out of N failures
        made in the same second ends exactly one window after them)."""
        rows = self._read(
            "SELECT at FROM login_failure WHERE kind = ? AND key = ? AND at > ? ORDER BY at",
            (kind, key, after),
        )
        return [float(r[0]) for r in rows]

    def clear_failures(self, kind: str, key: str) -> None:
        """Forget the failed attempts in one bucket (after a successful login)."""
        with self._write() as conn:
            conn.execute("DELETE FROM login_failure WHERE kind = ? AND key = ?", (kind, key))
