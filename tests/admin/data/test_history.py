"""The metrics history: storage, downsampling, retention by age and size, recovery from a damaged file."""

from __future__ import annotations

import math
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from admin.history import COLUMN_NAMES, MAX_POINTS, History

T0 = 1_700_000_000.0


def open_history(tmp_path: Path, *, retention_s: float = 86400.0, max_bytes: int = 10_000_000) -> History:
    return History(tmp_path / "admin" / "history.db", retention_s=retention_s, max_bytes=max_bytes)


def test_samples_round_trip_with_nulls_and_booleans(tmp_path: Path) -> None:
    with open_history(tmp_path) as h:
        h.add_sample(T0, {"fps_shown": 59.5, "presence": True, "rtt_ms": math.nan, "engine_up": True})
        h.add_sample(T0 + 10, {"fps_shown": 60, "presence": False, "rtt_ms": "fast", "loss_percent": None})
        rows = h.samples(T0, T0 + 20, max_points=100)
    assert [r["t"] for r in rows] == [T0, T0 + 10]
    assert rows[0]["fps_shown"] == 59.5
    assert rows[0]["presence"] == 1.0
    assert rows[1]["presence"] == 0.0
    # NaN, text and missing values are stored as NULL.
    assert rows[0]["rtt_ms"] is None
    assert rows[1]["rtt_ms"] is None
    assert rows[1]["soc_temperature_c"] is None
    assert set(rows[0]) == {"t", *COLUMN_NAMES}


def test_file_and_directory_modes(tmp_path: Path) -> None:
    with open_history(tmp_path) as h:
        h.add_sample(T0, {"fps_shown": 1})
        assert stat.S_IMODE(h.path.stat().st_mode) == 0o600
        assert stat.S_IMODE(h.path.parent.stat().st_mode) == 0o700
        wal = Path(f"{h.path}-wal")
        assert stat.S_IMODE(wal.stat().st_mode) == 0o600
        conn = sqlite3.connect(h.path)
        try:
            assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            conn.close()


def test_downsampling_averages_equal_buckets(tmp_path: Path) -> None:
    with open_history(tmp_path) as h:
        # 100 samples, one a second, fps = i; rtt only on even seconds.
        for i in range(100):
            h.add_sample(T0 + i, {"fps_shown": float(i), "rtt_ms": float(i) if i % 2 == 0 else None})
        rows = h.samples(T0, T0 + 100, max_points=10)
        assert len(rows) == 10
        for k, row in enumerate(rows):
            ids = range(10 * k, 10 * k + 10)
            assert row["t"] == pytest.approx(T0 + sum(ids) / 10)
            assert row["fps_shown"] == pytest.approx(sum(ids) / 10)
            assert row["rtt_ms"] == pytest.approx(sum(i for i in ids if i % 2 == 0) / 5)
            assert row["loss_percent"] is None
        # A range with fewer rows than points is returned as it is.
        raw = h.samples(T0 + 10, T0 + 15, max_points=10)
        assert [r["fps_shown"] for r in raw] == [10.0, 11.0, 12.0, 13.0, 14.0]
        # Empty buckets give no point; the last row before ``until`` lands in the last bucket.
        sparse = h.samples(T0 - 1000, T0 + 100, max_points=11)
        assert len(sparse) == 1
        assert sparse[0]["fps_shown"] == pytest.approx(49.5)
        assert h.samples(T0, T0, max_points=10) == []
        assert h.samples(T0 + 100, T0, max_points=10) == []


def test_max_points_is_capped(tmp_path: Path) -> None:
    with open_history(tmp_path) as h:
        for i in range(MAX_POINTS + 10):
            h.add_sample(T0 + i, {"fps_shown": 1.0})
        assert len(h.samples(T0, T0 + MAX_POINTS + 10, max_points=10**9)) == MAX_POINTS
        assert len(h.samples(T0, T0 + MAX_POINTS + 10, max_points=0)) == 1


def test_events_newest_first_filtered_by_level(tmp_path: Path) -> None:
    with open_history(tmp_path) as h:
        h.add_event(T0, "engine", "error", "engine not answering")
        h.add_event(T0 + 1, "hwcontrol", "warning", "MCU missing")
        h.add_event(T0 + 2, "engine", "info", "peer connected")
        h.add_event(T0 + 3, "admin", "debug", "x" * 5000)
        all_events = h.events(T0, limit=10)
        assert [e.message[:5] for e in all_events] == ["xxxxx", "peer ", "MCU m", "engin"]
        assert len(all_events[0].message) == 2000
        assert [e.level for e in h.events(T0, limit=10, level="warning")] == ["warning", "error"]
        assert [e.t for e in h.events(T0 + 1, limit=2)] == [T0 + 3, T0 + 2]
        assert h.events(T0, limit=1)[0].as_dict() == {
            "t": T0 + 3,
            "source": "admin",
            "level": "debug",
            "message": "x" * 1999 + "…",
        }
        with pytest.raises(ValueError, match="source"):
            h.add_event(T0, "kernel", "info", "no")
        with pytest.raises(ValueError, match="level"):
            h.add_event(T0, "admin", "fatal", "no")
        with pytest.raises(ValueError, match="level"):
            h.events(T0, level="loud")


def test_prune_by_age(tmp_path: Path) -> None:
    with open_history(tmp_path, retention_s=100.0) as h:
        for i in range(300):
            h.add_sample(T0 + i, {"fps_shown": float(i)})
        h.add_event(T0 + 50, "admin", "info", "old")
        h.add_event(T0 + 250, "admin", "info", "new")
        deleted = h.prune(now=T0 + 300)
        assert deleted == 200 + 1
        rows = h.samples(T0, T0 + 1000, max_points=1000)
        assert rows[0]["t"] == T0 + 200
        assert len(rows) == 100
        assert [e.message for e in h.events(T0, limit=10)] == ["new"]
        assert h.counts() == {"samples": 100, "events": 1}


def test_prune_by_size_deletes_oldest_and_shrinks_the_file(tmp_path: Path) -> None:
    limit = 96 * 1024
    with open_history(tmp_path, max_bytes=limit) as h:
        full = dict.fromkeys(COLUMN_NAMES, 12.5)
        for i in range(3000):
            h.add_sample(T0 + 10 * i, full)
            if i % 100 == 0:
                h.add_event(T0 + 10 * i, "engine", "info", f"event {i}")
        assert h.size_bytes() > 4 * limit
        deleted = h.prune(now=T0 + 30_000)
        assert deleted > 0
        assert h.size_bytes() <= limit
        # The file itself shrank (incremental vacuum + WAL checkpoint), not just the used pages.
        assert h.path.stat().st_size <= limit
        counts = h.counts()
        rows = h.samples(T0, T0 + 40_000, max_points=MAX_POINTS)
        assert len(rows) == counts["samples"] > 100
        # What is left is the newest, contiguous up to the last sample.
        assert rows[-1]["t"] == T0 + 10 * 2999
        assert [r["t"] for r in rows] == [T0 + 10 * i for i in range(3000 - len(rows), 3000)]
        newest_event = h.events(T0, limit=1)
        assert newest_event[0].message == "event 2900"
        # Pruning again changes nothing.
        assert h.prune(now=T0 + 30_000) == 0


def test_prune_with_a_limit_below_the_empty_schema_empties_the_tables(tmp_path: Path) -> None:
    with open_history(tmp_path, max_bytes=1) as h:
        for i in range(50):
            h.add_sample(T0 + i, {"fps_shown": 1.0})
        h.prune(now=T0 + 50)
        assert h.counts() == {"samples": 0, "events": 0}
        h.add_sample(T0 + 60, {"fps_shown": 2.0})
        assert h.counts()["samples"] == 1


def test_corrupt_file_is_moved_aside_and_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "history.db"
    path.write_bytes(b"this is not a database at all, " * 200)
    with History(path, retention_s=60, max_bytes=10**6) as h:
        assert not h.in_memory
        assert h.problem is not None
        assert "moved aside" in h.problem
        h.add_sample(T0, {"fps_shown": 30.0})
        assert h.samples(T0, T0 + 1)[0]["fps_shown"] == 30.0
    assert Path(f"{path}.corrupt").read_bytes().startswith(b"this is not a database")
    assert "moved aside" in caplog.text


def test_newer_schema_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with History(path, retention_s=60, max_bytes=10**6) as h:
        assert h.problem is not None
        assert "newer Doorway" in h.problem
        h.add_event(T0, "admin", "info", "fresh")
        assert len(h.events(0)) == 1


class _DamagedConnection:
    """Stands in for the connection once SQLite finds the file damaged mid-run (SQLite's page cache makes
    real damage to an open WAL database hard to provoke deterministically)."""

    def execute(self, *args: object) -> None:
        raise sqlite3.DatabaseError("database disk image is malformed")

    def close(self) -> None:
        pass


def test_damage_found_while_running_is_recovered(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "history.db"
    with History(path, retention_s=60, max_bytes=10**6) as h:
        h.add_sample(T0, {"fps_shown": 1.0})
        h._conn = _DamagedConnection()  # type: ignore[assignment]
        h.add_sample(T0 + 1, {"fps_shown": 2.0})  # dropped, file moved aside, a fresh one opened
        assert h.problem is not None
        assert "damaged" in h.problem
        assert Path(f"{path}.corrupt").exists()
        h.add_sample(T0 + 2, {"fps_shown": 3.0})
        assert [r["fps_shown"] for r in h.samples(T0, T0 + 3)] == [3.0]
    assert "moved aside" in caplog.text


def test_other_database_errors_are_logged_and_dropped(tmp_path: Path) -> None:
    class Locked(_DamagedConnection):
        def execute(self, *args: object) -> None:
            raise sqlite3.OperationalError("database is locked")

    with open_history(tmp_path) as h:
        real = h._conn
        h._conn = Locked()  # type: ignore[assignment]
        h.add_sample(T0, {"fps_shown": 1.0})
        assert h.samples(T0, T0 + 1) == []
        assert h.events(T0) == []
        assert h.size_bytes() == 0
        assert h.problem is not None
        assert "locked" in h.problem
        h._conn = real


def test_unopenable_path_falls_back_to_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    with History(blocker / "history.db", retention_s=60, max_bytes=10**6) as h:
        assert h.in_memory
        h.add_sample(T0, {"fps_shown": 5.0})
        assert h.samples(T0, T0 + 1)[0]["fps_shown"] == 5.0
        assert h.prune(T0 + 1000) == 1


def test_closed_history_does_not_raise(tmp_path: Path) -> None:
    h = open_history(tmp_path)
    h.close()
    h.add_sample(T0, {"fps_shown": 1.0})
    assert h.samples(T0, T0 + 1) == []
    h.close()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="retention_s"):
        History(Path("/nonexistent/h.db"), retention_s=0, max_bytes=1)
    with pytest.raises(ValueError, match="max_bytes"):
        History(Path("/nonexistent/h.db"), retention_s=1, max_bytes=0)


def test_threads_write_and_read_at_once(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    with open_history(tmp_path) as h:

        def writer(k: int) -> None:
            try:
                for i in range(200):
                    h.add_sample(T0 + k * 1000 + i, {"fps_shown": float(k)})
                    if i % 20 == 0:
                        h.add_event(T0 + i, "admin", "info", f"w{k}")
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def reader() -> None:
            try:
                for _ in range(50):
                    h.samples(T0, T0 + 10_000, max_points=50)
                    h.events(T0, limit=5)
                    h.size_bytes()
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
        threads += [threading.Thread(target=reader) for _ in range(2)]
        threads.append(threading.Thread(target=h.prune, args=(T0 + 10_000,)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert h.counts() == {"samples": 800, "events": 40}
