"""The state database: modes, WAL and fsync settings, twin replacement, change counter, bad files, and
pairing records that survive SIGKILL in the middle of a write whole (old or new, never a mix)."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from app.state import DB_NAME, SCHEMA_VERSION, StateError, StateStore, Twin

REPO = Path(__file__).resolve().parents[1]


def twin(i: int) -> Twin:
    """A twin record whose every field derives from ``i``, so a mix of two records is detectable."""
    return Twin(
        device_id=f"{i:016x}",
        name=f"twin-{i}",
        public_key=hashlib.sha256(str(i).encode()).digest(),
        media_host=f"10.0.{i % 256}.1",
        media_port=1 + i % 65535,
        paired_at=float(i),
    )


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_creates_private_directory_and_files(tmp_path: Path) -> None:
    state_dir = tmp_path / "state" / "doorway"
    with StateStore(state_dir) as store:
        store.set_twin(twin(1))
        assert mode(state_dir) == 0o700
        db = state_dir / DB_NAME
        assert mode(db) == 0o600
        # While a connection is open in WAL mode, the -wal and -shm files exist; they must be private too.
        for suffix in ("-wal", "-shm"):
            companion = Path(f"{db}{suffix}")
            assert companion.exists()
            assert mode(companion) == 0o600


def test_existing_loose_file_is_narrowed(tmp_path: Path) -> None:
    StateStore(tmp_path).close()
    os.chmod(tmp_path / DB_NAME, 0o644)
    StateStore(tmp_path).close()
    assert mode(tmp_path / DB_NAME) == 0o600


def test_wal_and_full_sync(tmp_path: Path) -> None:
    with StateStore(tmp_path) as store:
        assert store.pragmas() == {"journal_mode": "wal", "synchronous": "full"}
    # WAL is a property of the file: another connection sees it too.
    conn = sqlite3.connect(tmp_path / DB_NAME)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


def test_twin_replace_remove_and_version(tmp_path: Path) -> None:
    with StateStore(tmp_path) as store, StateStore(tmp_path) as other:
        assert store.twin() is None
        v0 = other.version()
        store.set_twin(twin(1))
        assert store.twin() == twin(1)
        v1 = other.version()  # another connection (as the engine would be) sees the change
        assert v1 > v0
        store.set_twin(twin(2))
        assert other.twin() == twin(2)
        assert other.version() > v1
        assert store.remove_twin() == twin(2)
        assert other.twin() is None
        v3 = other.version()
        assert store.remove_twin() is None
        assert other.version() == v3  # nothing removed, nothing changed


def test_identity_is_stored_once(tmp_path: Path) -> None:
    with StateStore(tmp_path) as store:
        assert store.identity_key() is None
        assert store.create_identity(b"\x01" * 32, now=5.0) == b"\x01" * 32
        # A second creation (another process racing) keeps the first key.
        assert store.create_identity(b"\x02" * 32) == b"\x01" * 32
        assert store.identity_key() == b"\x01" * 32
        assert store.identity_created_at() == 5.0
        with pytest.raises(ValueError, match="32 bytes"):
            store.create_identity(b"short")


def test_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not a database, just text " * 100)
    with pytest.raises(StateError) as exc:
        StateStore(tmp_path)
    assert str(exc.value).startswith(f"{tmp_path / DB_NAME}: not a Doorway state database, or damaged")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    StateStore(tmp_path).close()
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match=r"written by a newer Doorway"):
        StateStore(tmp_path)


def test_unusable_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match=rf"^{blocker / 'sub' / DB_NAME}: cannot open"):
        StateStore(blocker / "sub")


def test_closed_store_raises_state_error(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.close()
    with pytest.raises(StateError, match="cannot read"):
        store.twin()


def test_threads_read_while_one_writes(tmp_path: Path) -> None:
    with StateStore(tmp_path) as store:
        store.set_twin(twin(0))
        bad: list[object] = []

        def reader() -> None:
            for _ in range(200):
                t = store.twin()
                if t is None or t != twin(int(t.name.split("-")[1])):
                    bad.append(t)

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        for i in range(1, 50):
            store.set_twin(twin(i))
        for t in threads:
            t.join()
        assert bad == []


# Runs in a child process; builds the same records as twin() above without importing pytest (start-up time).
_WRITER = """
import hashlib, sys
from pathlib import Path
from app.state import StateStore, Twin
store = StateStore(Path(sys.argv[1]))
i = int(sys.argv[2])
while True:
    i += 1
    store.set_twin(Twin(f"{i:016x}", f"twin-{i}", hashlib.sha256(str(i).encode()).digest(),
                        f"10.0.{i % 256}.1", 1 + i % 65535, float(i)))
    if i == int(sys.argv[2]) + 1:
        print("ready", flush=True)
"""


def test_sigkill_mid_write_leaves_old_or_new_twin(tmp_path: Path) -> None:
    rng = random.Random(20240611)  # deterministic kill moments
    previous = -1
    for round_ in range(5):
        start = round_ * 1_000_000
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path), str(start)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            threading.Event().wait(rng.uniform(0.01, 0.25))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        with StateStore(tmp_path) as store:
            got = store.twin()
            assert got is not None
            i = int(got.name.split("-")[1])
            assert got == twin(i), "a twin record mixes two writes"
            assert i > start and i > previous
            previous = i
            assert store.pragmas()["journal_mode"] == "wal"
        conn = sqlite3.connect(tmp_path / DB_NAME)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert conn.execute("SELECT count(*) FROM twin").fetchone()[0] == 1
        finally:
            conn.close()
