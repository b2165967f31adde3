"""The control socket: JSON lines in and out, and no request can crash it."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from app.control import CommandError, ControlClientError, ControlServer, dispatch, request


def commands() -> dict[str, Any]:
    def echo(args: dict[str, Any]) -> dict[str, Any]:
        return {"args": args}

    def refuse(args: dict[str, Any]) -> dict[str, Any]:
        raise CommandError("no thanks")

    def bug(args: dict[str, Any]) -> dict[str, Any]:
        raise ZeroDivisionError

    return {"echo": echo, "refuse": refuse, "bug": bug}


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"not json", "bad JSON"),
        (b"[1,2]", 'request must be an object with a string "cmd"'),
        (b'{"cmd": 3}', 'request must be an object with a string "cmd"'),
        (b'{"cmd": "nope"}', "unknown command 'nope'; known: bug, echo, refuse"),
        (b'{"cmd": "refuse"}', "no thanks"),
        (b'{"cmd": "bug"}', "command 'bug' failed inside the engine (see its log)"),
        (b"\xff\xfe", "bad JSON"),
    ],
)
def test_dispatch_errors(line: bytes, error: str) -> None:
    resp = dispatch(commands(), line)
    assert resp["ok"] is False
    assert resp["error"].startswith(error)


def test_round_trip_over_socket(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    server = ControlServer(path, commands())
    server.start()
    try:
        assert request(path, "echo", x=1) == {"ok": True, "args": {"x": 1}}
        # An over-long line is refused and the server keeps serving.
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(b"x" * (70 * 1024) + b"\n")
        assert b"longer than" in s.recv(4096)
        s.close()
        assert request(path, "echo")["ok"] is True
    finally:
        server.close()
    assert not path.exists()


def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    server = ControlServer(path, commands())
    server.start()
    try:
        assert request(path, "echo")["ok"]
        with pytest.raises(OSError, match="in use"):
            ControlServer(path, commands())
    finally:
        server.close()


def test_client_error_when_no_engine(tmp_path: Path) -> None:
    with pytest.raises(ControlClientError, match="cannot talk to the engine"):
        request(tmp_path / "none.sock", "status")
