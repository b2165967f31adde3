"""Log sources: journalctl's JSON through a fake runner, log files in both of app/logs.py's formats."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from admin.logs import (
    MAX_LIMIT,
    FileLogSource,
    JournalLogSource,
    LogLine,
    LogSourceError,
    create_log_source,
    level_of_priority,
    parse_file_line,
    parse_journal_line,
)
from app.logs import JournalFormatter

T0 = 1_700_000_000.0


def entry(t: float, unit: str, priority: int, message: Any, **extra: Any) -> str:
    fields = {
        "__REALTIME_TIMESTAMP": str(int(t * 1e6)),
        "__CURSOR": "s=abc",
        "_SYSTEMD_UNIT": unit,
        "PRIORITY": str(priority),
        "MESSAGE": message,
        **extra,
    }
    return json.dumps(fields)


class FakeRunner:
    """Stands in for subprocess.run: records the command, answers with ``stdout`` or raises ``error``."""

    def __init__(
        self, stdout: str = "", returncode: int = 0, stderr: str = "", error: BaseException | None = None
    ):
        self.stdout = stdout
        self.returncode = returncode
        self.stderr = stderr
        self.error = error
        self.calls: list[tuple[list[str], float]] = []

    def __call__(self, args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
        self.calls.append((args, timeout_s))
        if self.error is not None:
            raise self.error
        return subprocess.CompletedProcess(args, self.returncode, self.stdout, self.stderr)


def test_journal_command_and_parsing() -> None:
    out = "\n".join(
        [
            entry(T0, "doorway-engine.service", 6, "app.engine.engine: engine started"),
            "this is not json",
            "[1, 2, 3]",
            entry(T0 + 1, "doorway-hwcontrol.service", 4, "hwcontrol.bridge: MCU missing: /dev/ttyACM0"),
            # systemd's own message about a unit: attributed to the unit it is about.
            entry(T0 + 2, "init.scope", 6, "Started doorway-engine.service", UNIT="doorway-engine.service"),
            # Not valid UTF-8: journald sends the bytes as an array.
            entry(T0 + 3, "doorway-engine.service", 3, [0x62, 0x61, 0x64, 0xFF, 0x0A]),
            entry(T0 + 4, "doorway-admin.service", 7, None),
            json.dumps({"MESSAGE": "no time, no unit", "SYSLOG_IDENTIFIER": "sudo", "PRIORITY": "x"}),
        ]
    )
    runner = FakeRunner(out + "\n")
    source = JournalLogSource(runner=runner, timeout_s=2.5)
    lines = source.read(["engine", "hwcontrol", "admin"], "debug", None, 100)
    args, timeout = runner.calls[0]
    assert timeout == 2.5
    assert args[:6] == ["journalctl", "-o", "json", "--no-pager", "-q", "--all"]
    assert args[-4:] == ["-p", "debug", "-n", "100"]
    units = [args[i + 1] for i, a in enumerate(args) if a == "-u"]
    assert units == ["doorway-engine.service", "doorway-hwcontrol.service", "doorway-admin.service"]
    assert "--since" not in args
    assert lines == [
        LogLine(T0, "engine", "info", "app.engine.engine: engine started"),
        LogLine(T0 + 1, "hwcontrol", "warning", "hwcontrol.bridge: MCU missing: /dev/ttyACM0"),
        LogLine(T0 + 2, "engine", "info", "Started doorway-engine.service"),
        LogLine(T0 + 3, "engine", "error", "bad\ufffd"),
        LogLine(T0 + 4, "admin", "debug", ""),
        LogLine(None, "sudo", "info", "no time, no unit"),
    ]
    assert lines[0].as_dict() == {"t": T0, "service": "engine", "level": "info", "message": lines[0].message}


def test_journal_filters_are_passed_to_journalctl() -> None:
    runner = FakeRunner(entry(T0 + 10, "doorway-engine.service", 3, "boom") + "\n")
    source = JournalLogSource(journalctl="/usr/bin/journalctl", runner=runner)
    lines = source.read(["engine"], "error", T0 + 9.7, 10**9)
    args = runner.calls[0][0]
    assert args[0] == "/usr/bin/journalctl"
    assert args[args.index("--since") + 1] == f"@{int(T0) + 9}"
    assert args[args.index("-p") + 1] == "err"
    assert args[args.index("-n") + 1] == str(MAX_LIMIT)
    assert [ln.message for ln in lines] == ["boom"]
    # journalctl's --since has whole seconds: lines before ``since`` are dropped here.
    runner.stdout = entry(T0 + 9.5, "doorway-engine.service", 3, "early") + "\n"
    assert source.read(["engine"], "error", T0 + 9.7, 10) == []
    # The newest ``limit`` lines.
    runner.stdout = "".join(entry(T0 + i, "doorway-engine.service", 6, f"m{i}") + "\n" for i in range(5))
    assert [ln.message for ln in source.read(["engine"], "info", None, 2)] == ["m3", "m4"]
    assert source.read(["engine"], "info", None, 0) == []
    assert source.read([], "info", None, 10) == []


def test_journal_failures_are_log_source_errors() -> None:
    with pytest.raises(LogSourceError, match=r"\(exit 1\): No journal files were found\.$"):
        JournalLogSource(runner=FakeRunner(returncode=1, stderr="No journal files were found.\nmore")).read(
            ["engine"], "info", None, 10
        )
    with pytest.raises(LogSourceError, match="longer than 5 s"):
        JournalLogSource(runner=FakeRunner(error=subprocess.TimeoutExpired("journalctl", 5))).read(
            ["engine"], "info", None, 10
        )
    with pytest.raises(LogSourceError, match="cannot run journalctl"):
        JournalLogSource(runner=FakeRunner(error=FileNotFoundError(2, "No such file"))).read(
            ["engine"], "info", None, 10
        )


def test_bad_arguments() -> None:
    source = JournalLogSource(runner=FakeRunner())
    with pytest.raises(ValueError, match="unknown service 'kernel'"):
        source.read(["kernel"], "info", None, 10)
    with pytest.raises(ValueError, match="level"):
        source.read(["engine"], "notice", None, 10)
    with pytest.raises(ValueError, match="unknown service"):
        FileLogSource({"kernel": Path("/x")})


def test_parse_journal_line_edge_cases() -> None:
    assert parse_journal_line("") is None
    assert parse_journal_line('"just a string"') is None
    line = parse_journal_line(json.dumps({"MESSAGE": "x" * 10_000, "__REALTIME_TIMESTAMP": "nope"}))
    assert line is not None
    assert line.t is None
    assert len(line.message) == 4096


@pytest.mark.parametrize(
    ("priority", "level"),
    [(0, "error"), (2, "error"), (3, "error"), (4, "warning"), (5, "info"), (6, "info"), (7, "debug")],
)
def test_levels_of_priorities(priority: int, level: str) -> None:
    assert level_of_priority(priority) == level


def journal_format(records: list[tuple[int, str]]) -> str:
    """Lines exactly as app/logs.py writes them under systemd."""
    formatter = JournalFormatter("%(name)s: %(message)s")
    out = io.StringIO()
    for levelno, message in records:
        record = logging.LogRecord("app.engine", levelno, __file__, 1, message, None, None)
        out.write(formatter.format(record) + "\n")
    return out.getvalue()


def test_file_source_reads_the_journal_prefix_format(tmp_path: Path) -> None:
    path = tmp_path / "engine.log"
    path.write_text(
        journal_format(
            [
                (logging.DEBUG, "per-frame detail"),
                (logging.INFO, "engine started"),
                (logging.WARNING, "camera lost"),
                (logging.ERROR, "stage failed\nTraceback (most recent call last):\n  File x"),
            ]
        )
    )
    os.utime(path, (T0, T0))
    source = FileLogSource({"engine": path})
    lines = source.read(["engine"], "info", None, 100)
    assert [(ln.level, ln.message) for ln in lines] == [
        ("info", "app.engine: engine started"),
        ("warning", "app.engine: camera lost"),
        ("error", "app.engine: stage failed"),
        ("error", "Traceback (most recent call last):"),
        ("error", "  File x"),
    ]
    assert all(ln.t is None and ln.service == "engine" for ln in lines)
    assert len(source.read(["engine"], "debug", None, 100)) == 6
    assert [ln.message for ln in source.read(["engine"], "error", None, 2)] == [
        "Traceback (most recent call last):",
        "  File x",
    ]
    # Lines without a time count as written at the file's modification time.
    assert source.read(["engine"], "info", T0 + 1, 100) == []
    assert len(source.read(["engine"], "info", T0 - 1, 100)) == 5


def test_file_source_reads_the_terminal_format_and_merges_services(tmp_path: Path) -> None:
    def stamp(t: float) -> str:
        return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S,") + f"{int(t * 1000) % 1000:03d}"

    engine = tmp_path / "engine.log"
    engine.write_text(
        f"{stamp(T0)} INFO    app.engine: one\n"
        f"{stamp(T0 + 2)} ERROR   app.engine: three\n"
        "Traceback (most recent call last):\n"
        "\n"
        f"{stamp(T0 + 4)} DEBUG   app.engine: five\n"
    )
    bridge = tmp_path / "hwcontrol.log"
    bridge.write_text(
        f"{stamp(T0 + 1)} WARNING hwcontrol.bridge: two\n{stamp(T0 + 3)} CRITICAL hwcontrol: four\n"
    )
    source = FileLogSource({"engine": engine, "hwcontrol": bridge, "admin": tmp_path / "missing.log"})
    lines = source.read(["engine", "hwcontrol", "admin"], "info", None, 100)
    assert [(ln.service, ln.level, ln.message) for ln in lines] == [
        ("engine", "info", "app.engine: one"),
        ("hwcontrol", "warning", "hwcontrol.bridge: two"),
        ("engine", "error", "app.engine: three"),
        ("engine", "error", "Traceback (most recent call last):"),
        ("hwcontrol", "error", "hwcontrol: four"),
    ]
    assert lines[0].t == pytest.approx(T0)
    assert lines[3].t == pytest.approx(T0 + 2)  # the traceback line takes its record's time
    assert [ln.message for ln in source.read(["engine", "hwcontrol"], "info", T0 + 1.5, 100)] == [
        "app.engine: three",
        "Traceback (most recent call last):",
        "hwcontrol: four",
    ]
    assert source.read(["admin"], "debug", None, 10) == []


def test_file_source_reads_only_the_tail(tmp_path: Path) -> None:
    path = tmp_path / "engine.log"
    path.write_text("".join(f"<6>line {i}\n" for i in range(1000)))
    lines = FileLogSource({"engine": path}, tail_bytes=100).read(["engine"], "info", None, 1000)
    # The partial first line of the tail is dropped; the rest are whole.
    assert lines[-1].message == "line 999"
    assert 5 <= len(lines) <= 10
    assert all(ln.message.startswith("line ") for ln in lines)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("<3>x: y", (None, "error", "x: y")),
        ("<7>", (None, "debug", "")),
        ("<x>not a prefix", (None, None, "<x>not a prefix")),
        (
            "2024-13-45 99:99:99,000 INFO    bad date",
            (None, None, "2024-13-45 99:99:99,000 INFO    bad date"),
        ),
        ("2024-01-01 00:00:00,000 LOUD    what", (None, None, "2024-01-01 00:00:00,000 LOUD    what")),
        ("plain", (None, None, "plain")),
    ],
)
def test_parse_file_line(line: str, expected: tuple[Any, ...]) -> None:
    assert parse_file_line(line) == expected


def test_create_log_source_prefers_a_working_journal(tmp_path: Path) -> None:
    ok = FakeRunner()
    source = create_log_source(runner=ok, which=lambda name: "/usr/bin/journalctl")
    assert isinstance(source, JournalLogSource)
    assert ok.calls[0][0][:3] == ["/usr/bin/journalctl", "-n", "0"]

    broken = FakeRunner(returncode=1)
    paths = {"engine": tmp_path / "engine.log"}
    fallback = create_log_source(runner=broken, which=lambda name: "/usr/bin/journalctl", paths=paths)
    assert isinstance(fallback, FileLogSource)
    assert fallback.paths == paths

    hung = FakeRunner(error=subprocess.TimeoutExpired("journalctl", 3))
    assert isinstance(create_log_source(runner=hung, which=lambda name: "/bin/journalctl"), FileLogSource)

    none = create_log_source(runner=ok, which=lambda name: None)
    assert isinstance(none, FileLogSource)
    assert none.paths["engine"] == Path("/var/log/doorway/engine.log")
