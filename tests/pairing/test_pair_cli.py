"""Pairing over real TCP sockets on loopback: the server and client in-process, then the ``doorway pair``
commands end to end (``pair show`` as a subprocess, the others in-process), with temporary state dirs."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli import main
from app.pairing.client import join, parse_address
from app.pairing.code import damm_digit, format_code
from app.pairing.protocol import CODE_MISMATCH, CodeMismatchError, MessageType, PairingError, PeerRecord
from app.pairing.server import PairingResult, PairingServer

REPO = Path(__file__).resolve().parents[2]
CODE = "1234567" + damm_digit("1234567")
OTHER = "7654321" + damm_digit("7654321")
SHOW = PeerRecord(public_key=b"s" * 32, name="living room", media_host="", media_port=47000)
JOIN = PeerRecord(public_key=b"j" * 32, name="kitchen", media_host="10.0.0.7", media_port=47100)


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("DOORWAY_"):
            monkeypatch.delenv(key)


class Served:
    """A PairingServer on 127.0.0.1:<free port>, serving on a thread; outcome in ``result``/``error``."""

    def __init__(self, code: str = CODE, **kwargs: float) -> None:
        self.notices: list[str] = []
        self.server = PairingServer(
            code,
            SHOW,
            host="127.0.0.1",
            port=0,
            on_notice=self.notices.append,
            **kwargs,  # type: ignore[arg-type]
        )
        self.port = self.server.address[1]
        self.stop = threading.Event()
        self.result: PairingResult | None = None
        self.error: PairingError | None = None
        self.thread = threading.Thread(target=self._run, name="pairing-server")
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self.server.serve(self.stop)
        except PairingError as exc:
            self.error = exc

    def finish(self) -> None:
        self.thread.join(60)
        assert not self.thread.is_alive(), "the server did not finish"

    def join(self, code: str = CODE, own: PeerRecord = JOIN, **kwargs: float) -> PairingResult:
        return join(code, own, "127.0.0.1", self.port, **kwargs)


@pytest.fixture
def served() -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for s in started:
        s.stop.set()
        s.finish()


def serve(started: list[Served], code: str = CODE, **kwargs: float) -> Served:
    s = Served(code, **kwargs)
    started.append(s)
    return s


def messages(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    while len(data) >= 2:
        (n,) = struct.unpack_from(">H", data)
        out.append((data[3], data[4 : 2 + n]))
        data = data[2 + n :]
    return out


def raw(port: int, payload: bytes, *, half_close: bool = False) -> list[tuple[int, bytes]]:
    """Send ``payload`` on a fresh connection and read everything until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(payload)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return messages(data)


def errors_in(msgs: list[tuple[int, bytes]]) -> list[str]:
    return [p.decode() for t, p in msgs if t == MessageType.ERROR]


# -- server and client on loopback ---------------------------------------------------------------------------


def test_pairs_over_loopback(served: list[Served]) -> None:
    s = serve(served)
    got = s.join()
    s.finish()
    assert s.error is None and s.result is not None
    assert got.peer == SHOW
    assert got.media_host == "127.0.0.1"  # SHOW advertises no host: the address the join side connected to
    assert s.result.peer == JOIN
    assert s.result.media_host == "10.0.0.7"  # JOIN advertises one
    assert s.result.address == "127.0.0.1"


def test_server_takes_the_peer_address_when_none_is_advertised(served: list[Served]) -> None:
    s = serve(served)
    s.join(own=PeerRecord(b"j" * 32, "kitchen", "", 47100))
    s.finish()
    assert s.result is not None and s.result.media_host == "127.0.0.1"


def test_wrong_code_fails_both_and_uses_up_the_code(served: list[Served]) -> None:
    s = serve(served)
    with pytest.raises(CodeMismatchError) as exc:
        s.join(OTHER)
    assert str(exc.value) == CODE_MISMATCH
    s.finish()
    assert isinstance(s.error, CodeMismatchError)
    # One attempt per code: the right code is refused afterwards.
    with pytest.raises(PairingError, match=r"connection refused"):
        s.join(CODE)


def test_code_expires(served: list[Served]) -> None:
    s = serve(served, ttl_s=0.3)
    s.finish()
    assert str(s.error) == "the code expired after 0.3 s; show a new code"


def test_garbage_is_told_and_dropped_and_the_code_survives(served: list[Served]) -> None:
    s = serve(served)
    reply = raw(s.port, b"GET / HTTP/1.1\r\nHost: doorway\r\n\r\n")
    assert errors_in(reply) == [
        "message of 18245 bytes is over the 4096-byte limit (is this a Doorway pairing port?)"
    ]
    assert errors_in(raw(s.port, b"\xff\xff" + b"x" * 3000)) == [
        "message of 65535 bytes is over the 4096-byte limit (is this a Doorway pairing port?)"
    ]
    assert errors_in(raw(s.port, b"\x00\x03\x02\x01\x00")) == [
        "the other side speaks pairing protocol version 2; this doorway speaks 1 (update the older doorway)"
    ]
    invalid_element = b"\x00\x23\x01\x01A" + b"\xff" * 32
    assert errors_in(raw(s.port, invalid_element))[0].startswith("key exchange message is not a valid")
    assert s.server.drops == 4
    assert len(s.notices) == 4 and s.notices[0].startswith("ignored a connection from 127.0.0.1: message of")
    assert s.notices[-1].endswith("(4 of 10)")
    assert s.join().peer == SHOW  # none of that used the code up
    s.finish()
    assert s.result is not None


def test_truncated_message_then_close(served: list[Served]) -> None:
    s = serve(served)
    reply = raw(s.port, b"\x00\x23\x01\x01A" + b"\x00" * 10, half_close=True)
    assert errors_in(reply) == ["closed the connection before the key exchange"]
    assert s.notices == [
        "ignored a connection from 127.0.0.1: closed the connection before the key exchange (1 of 10)"
    ]
    assert s.join().peer == SHOW
    s.finish()


def test_slow_loris_does_not_block_a_real_pairing(served: list[Served]) -> None:
    s = serve(served, conn_timeout_s=60.0)
    idle = [socket.create_connection(("127.0.0.1", s.port), timeout=30) for _ in range(3)]
    try:
        idle[0].sendall(b"\x00")  # one byte of a length: "need more", forever
        assert s.join().peer == SHOW
        s.finish()
        for sock in idle:  # told, then closed
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            assert errors_in(messages(data)) == ["another doorway is already pairing with this code"]
    finally:
        for sock in idle:
            sock.close()
    assert s.server.drops == 0


def test_slow_loris_times_out_and_is_counted(served: list[Served]) -> None:
    s = serve(served, conn_timeout_s=2.0)
    with socket.create_connection(("127.0.0.1", s.port), timeout=30) as silent:
        data = b""
        while chunk := silent.recv(4096):
            data += chunk
    assert errors_in(messages(data)) == ["no key exchange within 2 s"]
    assert s.server.drops == 1
    assert s.join().peer == SHOW
    s.finish()


def test_code_is_withdrawn_after_too_many_drops(served: list[Served]) -> None:
    s = serve(served, max_drops=3)
    for _ in range(3):
        raw(s.port, b"\xff\xff")
    s.finish()
    assert (
        str(s.error) == "the code was withdrawn after 3 bad connections to the pairing port; show a new code"
    )


def test_too_many_connections_at_once(served: list[Served]) -> None:
    s = serve(served, max_connections=2)
    first = [socket.create_connection(("127.0.0.1", s.port), timeout=30) for _ in range(2)]
    try:
        reply = raw(s.port, b"")
        assert errors_in(reply) == ["more than 2 connections at once"]
    finally:
        for sock in first:
            sock.close()


def test_second_client_is_told_busy_during_an_attempt(served: list[Served]) -> None:
    from app.pairing.protocol import PairingMachine

    s = serve(served)
    machine = PairingMachine("join", CODE, JOIN)
    with socket.create_connection(("127.0.0.1", s.port), timeout=30) as first:
        first.sendall(machine.data_to_send())
        while machine.waiting_for == "the other doorway's key exchange message" or (
            machine.waiting_for == "the other doorway's key confirmation"
        ):
            machine.receive_data(first.recv(4096))
        # The first connection now owns the code; a second one, even with a valid message, is turned away.
        other = PairingMachine("join", CODE, JOIN)
        assert errors_in(raw(s.port, other.data_to_send())) == [
            "another doorway is already pairing with this code"
        ]
        first.sendall(machine.data_to_send())
        while not machine.done:
            machine.receive_data(first.recv(4096))
        first.sendall(machine.data_to_send())
    s.finish()
    assert s.result is not None and s.result.peer == JOIN
    assert s.server.drops == 0


def test_stop_cancels(served: list[Served]) -> None:
    s = serve(served)
    s.stop.set()
    s.finish()
    assert str(s.error) == "cancelled; the code is withdrawn"


def test_join_errors_are_clear() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(PairingError) as exc:
        join(CODE, JOIN, "127.0.0.1", port)
    assert str(exc.value).startswith(f"cannot connect to 127.0.0.1:{port}: connection refused")
    # A port that accepts and never answers: the whole exchange has one deadline.
    with socket.create_server(("127.0.0.1", 0)) as mute, pytest.raises(PairingError) as exc:
        join(CODE, JOIN, "127.0.0.1", mute.getsockname()[1], timeout_s=0.5)
    assert str(exc.value) == (
        "the other doorway stopped answering while this one waited for the other doorway's key exchange "
        "message (an exchange has 0.5 s to complete)"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.2", ("10.0.0.2", 47001)),
        ("10.0.0.2:5000", ("10.0.0.2", 5000)),
        ("hall.local", ("hall.local", 47001)),
        ("[fe80::1]:5000", ("fe80::1", 5000)),
        ("[::1]", ("::1", 47001)),
        ("fe80::1", ("fe80::1", 47001)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text, 47001) == expected


@pytest.mark.parametrize(
    "text", ["", ":5000", "host:", "host:99999", "host:x", "[::1", "[::1]x", "[::1]:", "a b"]
)
def test_parse_address_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text, 47001)


def test_parse_address_without_default_port() -> None:
    with pytest.raises(ValueError, match=r"pairing\.port is 0"):
        parse_address("hall", 0)


# -- the commands --------------------------------------------------------------------------------------------


def config(tmp_path: Path, name: str, media_port: int) -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(
        f'[engine]\nname = "{name}"\nstate_dir = "{tmp_path / name}"\n'
        f"[network]\nlisten_port = {media_port}\n"
        f'[pairing]\nport = 0\nlisten_host = "127.0.0.1"\n'
    )
    return p


def start_show(cfg: Path) -> tuple[subprocess.Popen[str], str, str, str]:
    """``doorway pair show`` in a child process; returns it, the code, the address and what it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOORWAY_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "pair", "show", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert proc.stdout is not None
    printed = ""
    for line in proc.stdout:
        printed += line
        if line.strip().startswith("doorway pair join "):
            _, _, _, code, address = line.split()
            return proc, code, address, printed
    proc.wait()
    raise AssertionError(
        f"pair show printed no join line: {printed}{proc.stderr.read() if proc.stderr else ''}"
    )


def finish_show(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def fingerprint(cfg: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["identity", "--config", str(cfg)]) == 0
    return capsys.readouterr().out.split("fingerprint:")[1].strip()


def test_commands_pair_list_repair_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b, c = (
        config(tmp_path, "hall", 47000),
        config(tmp_path, "kitchen", 47100),
        config(tmp_path, "attic", 47200),
    )
    fp_a, fp_b, fp_c = (fingerprint(x, capsys) for x in (a, b, c))

    proc, code, address, printed = start_show(a)
    assert f"This doorway: hall ({fp_a})" in printed
    assert f"Pairing code: {code}   (one attempt; valid for 10 minutes)" in printed
    assert "█" in printed  # the QR code
    # A typo is caught here and sends nothing: the code stays good for the real attempt.
    typo = code[:-1] + str((int(code[-1]) + 1) % 10)
    assert main(["pair", "join", typo, address, "--config", str(b)]) == 2
    assert "has a typo" in capsys.readouterr().err
    assert main(["pair", "join", code, address, "--config", str(b)]) == 0
    out = capsys.readouterr().out
    assert f"paired with hall ({fp_a})\nmedia goes to 127.0.0.1:47000\n" in out
    status, show_out, show_err = finish_show(proc)
    assert status == 0, show_err
    assert f"paired with kitchen ({fp_b})\nmedia goes to 127.0.0.1:47100\n" in show_out

    assert main(["pair", "list", "--config", str(a)]) == 0
    listing = capsys.readouterr().out
    assert "twin:        kitchen\n" in listing
    assert f"fingerprint: {fp_b}\n" in listing
    assert "media:       127.0.0.1:47100\n" in listing
    assert main(["pair", "list", "--config", str(b)]) == 0
    assert f"fingerprint: {fp_a}\n" in capsys.readouterr().out

    # Pairing again replaces the twin.
    proc, code, address, printed = start_show(a)
    assert f"It is paired with kitchen ({fp_b}); pairing replaces that." in printed
    assert main(["pair", "join", code, address, "--config", str(c)]) == 0
    assert finish_show(proc)[0] == 0
    capsys.readouterr()
    assert main(["pair", "list", "--config", str(a)]) == 0
    assert "twin:        attic\ndevice id:" in capsys.readouterr().out

    assert main(["pair", "remove", "--config", str(a)]) == 0
    assert capsys.readouterr().out == f"removed the pairing with attic ({fp_c})\n"
    assert main(["pair", "remove", "--config", str(a)]) == 0
    assert capsys.readouterr().out == "not paired; nothing to remove\n"
    assert main(["pair", "list", "--config", str(a)]) == 0
    assert capsys.readouterr().out == "not paired\n"


def test_commands_wrong_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = config(tmp_path, "hall", 47000), config(tmp_path, "kitchen", 47100)
    proc, code, address, _ = start_show(a)
    wrong = format_code(OTHER if code.replace("-", "") != OTHER else CODE)
    assert main(["pair", "join", wrong, address, "--config", str(b)]) == 1
    message = f"pairing failed: {CODE_MISMATCH}\n"
    assert capsys.readouterr().err == message
    status, _, show_err = finish_show(proc)
    assert status == 1
    assert show_err == message
    # The code is used up: the right one is refused now.
    assert main(["pair", "join", code, address, "--config", str(b)]) == 1
    assert "connection refused" in capsys.readouterr().err
    for cfg in (a, b):
        assert main(["pair", "list", "--config", str(cfg)]) == 0
        assert capsys.readouterr().out == "not paired\n"


def test_commands_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b = config(tmp_path, "kitchen", 47100)
    assert main(["pair", "join", "1234", "127.0.0.1:1", "--config", str(b)]) == 2
    assert "is not a pairing code" in capsys.readouterr().err
    assert main(["pair", "join", format_code(CODE), "127.0.0.1:x", "--config", str(b)]) == 2
    assert "the port must be a number" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[pairing]\ncode_ttl_s = 5\n")
    with pytest.raises(SystemExit) as exc:
        main(["pair", "list", "--config", str(bad)])
    assert exc.value.code == 2
    assert "pairing.code_ttl_s = 5 is out of range (allowed: 60 to 3600)" in capsys.readouterr().err
