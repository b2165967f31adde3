"""``doorway mcu-emulator`` on a real pseudo-terminal, driven by a minimal host written here: raw
``os.read``/``os.write`` on the terminal, the firmware core's own framing, a small go-back-N loop."""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import socket
import struct
import termios
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hwcontrol.emulator import Emulator, FaultSettings, add_emulator_arguments
from hwcontrol.emulator import main as emulator_main
from hwcontrol.firmware import protocol_core as pc

KEY = bytes(range(32))


@dataclass
class Msg:
    version: int
    flags: int
    seq: int
    ack: int
    type: int
    payload: bytes


class HostGone(Exception):
    """The terminal went away under the host (EIO or end of file)."""


class MiniHost:
    """Just enough host: hello, go-back-N for commands, in-order delivery of the MCU's reliable frames."""

    def __init__(self, path: str | Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        termios.tcflush(self.fd, termios.TCIOFLUSH)  # what the MCU wrote before anyone listened
        self.decoder = pc.FrameDecoder(self._on_frame)
        self.frames: list[Msg] = []
        self.delivered: list[Msg] = []  # the MCU's reliable frames, in order, once
        self.hellos: list[Msg] = []
        self.expected = 0
        self.next_seq = 0
        self.unacked: list[tuple[int, int, bytes]] = []
        self.rto = 50.0
        self.deadline = 0.0
        self.ack_due = False
        self.last_tx = 0.0

    def close(self) -> None:
        os.close(self.fd)

    def _write(self, data: bytes) -> None:
        try:
            os.write(self.fd, data)
        except OSError as exc:
            raise HostGone(str(exc)) from exc
        self.last_tx = time.monotonic() * 1000

    def _frame(self, flags: int, seq: int, msg_type: int, payload: bytes) -> bytes:
        return pc.encode_frame(flags, seq, (self.expected - 1) & 0xFF, msg_type, payload)

    def _on_frame(self, frame: bytearray, n: int) -> None:
        m = Msg(frame[0], frame[1], frame[2], frame[3], frame[4], bytes(frame[7 : n - 2]))
        self.frames.append(m)
        if m.type == pc.T_HELLO:
            self.hellos.append(m)
        if m.version != 1 and m.type != pc.T_HELLO:
            return
        d = (m.ack - (self.unacked[0][0] if self.unacked else 0)) & 0xFF
        if self.unacked and d < len(self.unacked):
            del self.unacked[: d + 1]
            self.rto = 50.0
            self.deadline = time.monotonic() * 1000 + self.rto
        if m.flags & pc.FLAG_RELIABLE:
            if m.seq == self.expected:
                self.expected = (self.expected + 1) & 0xFF
                self.delivered.append(m)
            self.ack_due = True

    def pump(self, seconds: float = 0.01) -> None:
        end = time.monotonic() + seconds
        while True:
            now = time.monotonic() * 1000
            if self.unacked and now >= self.deadline:
                for seq, msg_type, payload in self.unacked[:8]:
                    self._write(self._frame(1, seq, msg_type, payload))
                self.rto = min(self.rto * 2, 400.0)
                self.deadline = now + self.rto
                self.ack_due = False
            if self.ack_due or now - self.last_tx > 300:
                self._write(self._frame(0, 0, pc.T_ACK, b""))
                self.ack_due = False
            left = end - time.monotonic()
            readable, _, _ = select.select([self.fd], [], [], max(min(left, 0.005), 0))
            if readable:
                try:
                    data = os.read(self.fd, 4096)
                except OSError as exc:
                    raise HostGone(str(exc)) from exc
                if not data:
                    raise HostGone("end of file")
                self.decoder.feed(data)
            if left <= 0:
                return

    def connect(self, timeout: float = 5.0) -> Msg:
        """Flush, HELLO_REQ every 200 ms until a HELLO; the reliable state starts over."""
        nonce = random.getrandbits(32)
        self.expected = 0
        self.next_seq = 0
        self.unacked.clear()
        self.delivered.clear()
        before = len(self.hellos)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self._write(b"\x00" + self._frame(0, 0, pc.T_HELLO_REQ, struct.pack("<BBI", 1, 0, nonce)))
            self.pump(0.2)
            if len(self.hellos) > before:
                return self.hellos[-1]
        raise AssertionError("no HELLO")

    def send(self, msg_type: int, payload: bytes) -> None:
        """Queue a reliable command; it goes out now if the window has room, else with a retransmission
        round (the tests settle() at least every 8 commands)."""
        seq = self.next_seq & 0xFF
        self.next_seq += 1
        if not self.unacked:
            self.deadline = time.monotonic() * 1000 + self.rto
        self.unacked.append((seq, msg_type, payload))
        if len(self.unacked) <= 8:
            self._write(self._frame(1, seq, msg_type, payload))

    def settle(self, timeout: float = 10.0) -> None:
        """Pump until every command is acknowledged."""
        end = time.monotonic() + timeout
        while self.unacked:
            assert time.monotonic() < end, f"{len(self.unacked)} commands never acknowledged"
            self.pump(0.02)

    def wait_for(self, what: str, check: object, timeout: float = 5.0) -> None:
        end = time.monotonic() + timeout
        while not check():  # type: ignore[operator]
            assert time.monotonic() < end, f"timed out waiting for {what}"
            self.pump(0.02)

    def events(self, kind: int) -> list[bytes]:
        return [m.payload for m in self.delivered if m.type == pc.T_EVENT and m.payload[0] == kind]


def hello_fields(hello: Msg) -> tuple[int, int, int]:
    """(capabilities, boot reason, session id)."""
    caps, reason, session, _channels = struct.unpack_from("<HBIB", hello.payload, 18)
    return caps, reason, session


def set_light(channel: int, brightness: int, cct: int = 0) -> bytes:
    return struct.pack("<BHHBBBH", channel, brightness, cct, 0, 0, 0, 0)


@pytest.fixture
def link(tmp_path: Path) -> Path:
    return tmp_path / "doorway-mcu"


@pytest.fixture
def emulator(link: Path) -> Iterator[Emulator]:
    with Emulator(link, seed=1, bootloader_key=KEY) as emu:
        yield emu
    assert emu.error is None


def test_hello_and_a_command_applied(emulator: Emulator, link: Path) -> None:
    assert link.is_symlink() and os.readlink(link) == emulator.path
    host = MiniHost(link)
    try:
        hello = host.connect()
        caps, reason, session = hello_fields(hello)
        assert (hello.version, hello.payload[0], reason, session) == (
            1,
            1,
            pc.BOOT_POWER_ON,
            emulator.session_id,
        )
        assert caps & pc.CAP_BOOTLOADER and caps & pc.CAP_BUTTON
        host.send(pc.T_SET_LIGHT, set_light(1, 600, 4000))
        host.settle()
        host.wait_for("LIGHT_STATE", lambda: [m for m in host.delivered if m.type == pc.T_LIGHT_STATE])
        assert emulator.lights()[1] == [600, 4000, 0, 0, 0]
        assert emulator.applied()[-1] == (pc.T_SET_LIGHT, set_light(1, 600, 4000))
    finally:
        host.close()


def test_output_is_dropped_while_no_host_has_the_port_open(emulator: Emulator, link: Path) -> None:
    time.sleep(1.2)  # the boot HELLO and a SENSORS report went nowhere
    status = emulator.status()
    assert not status["host_open"] and status["no_host_dropped_bytes"] > 0
    host = MiniHost(link)
    try:
        host.wait_for("the port open", lambda: emulator.status()["host_open"])
        host.pump(0.1)
        assert host.frames == []  # nothing stale: the boot HELLO is gone
        host.connect()
    finally:
        host.close()
    end = time.monotonic() + 2
    while emulator.status()["host_open"]:
        assert time.monotonic() < end
        time.sleep(0.02)


def test_faults_both_ways_still_deliver_every_command_and_event_exactly_once(link: Path) -> None:
    faults = FaultSettings(
        drop=0.1,
        bitflip=0.05,
        duplicate=0.1,
        reorder=0.1,
        truncate=0.05,
        garbage=0.05,
        stall=0.02,
        stall_ms=30,
    )
    with Emulator(link, seed=7, to_mcu=faults, to_host=faults) as emu:
        host = MiniHost(link)
        try:
            host.connect()
            commands = [set_light(i % 2, 10 * i, 2700 + i) for i in range(40)]
            for i, payload in enumerate(commands):
                host.send(pc.T_SET_LIGHT, payload)
                if i % 8 == 7:
                    host.settle()
            host.settle()
            applied = [p for t, p in emu.applied() if t == pc.T_SET_LIGHT]
            assert applied == commands
            for _ in range(4):
                emu.press()
                host.pump(0.25)
            host.wait_for("4 button events", lambda: len(host.events(pc.EV_BUTTON)) >= 4)
            host.pump(0.3)
            assert len(host.events(pc.EV_BUTTON)) == 4
            status = emu.status()
            for direction in ("to_mcu", "to_host"):
                counts = status["faults"][direction]
                assert counts["dropped"] and counts["duplicated"] and counts["frames"] > 50, counts
            assert status["stats"]["rx_duplicates"] + status["stats"]["rx_out_of_order"] > 0
            assert host.decoder.crc_errors + host.decoder.malformed > 0
        finally:
            host.close()
    assert emu.error is None


def test_unplug_removes_the_link_and_replug_brings_it_back(emulator: Emulator, link: Path) -> None:
    host = MiniHost(link)
    session = hello_fields(host.connect())[2]
    old_path = emulator.path
    emulator.unplug()
    assert not os.path.lexists(link) and emulator.path is None
    with pytest.raises(HostGone):
        host.pump(0.2)
    host.close()
    new_path = emulator.replug()
    assert os.readlink(link) == new_path == emulator.path
    host = MiniHost(link)
    try:
        hello = host.connect()
        assert hello_fields(hello)[2] == session  # the MCU ran on while unplugged
        host.send(pc.T_SET_LIGHT, set_light(0, 250))
        host.settle()
        assert emulator.lights()[0][0] == 250
    finally:
        host.close()
    assert old_path is not None
    # A bus-powered board boots again when plugged back in.
    emulator.replug(power_cycle=True)
    host = MiniHost(link)
    try:
        _, reason, new_session = hello_fields(host.connect())
        assert new_session != session and reason == pc.BOOT_POWER_ON
    finally:
        host.close()


def test_reset_gives_a_new_session_in_an_unasked_hello(emulator: Emulator, link: Path) -> None:
    host = MiniHost(link)
    try:
        session = hello_fields(host.connect())[2]
        new = emulator.reset()
        host.wait_for("HELLO after the reset", lambda: hello_fields(host.hellos[-1])[2] != session)
        _, reason, got = hello_fields(host.hellos[-1])
        assert (got, reason) == (new, pc.BOOT_SOFTWARE)
    finally:
        host.close()


def test_incompatible_firmware_major(link: Path) -> None:
    with Emulator(link, firmware_major=2) as emu:
        host = MiniHost(link)
        try:
            hello = host.connect()
            assert (hello.version, hello.payload[0], hello.payload[2]) == (2, 2, 2)
            host.send(pc.T_SET_LIGHT, set_light(0, 500))
            host.pump(0.2)
            assert emu.status()["stats"]["rx_bad_version"] > 0 and not emu.applied()
        finally:
            host.close()


def test_bootloader_unplugs_and_comes_back_flashed(emulator: Emulator, link: Path) -> None:
    host = MiniHost(link)
    session = hello_fields(host.connect())[2]
    host.send(pc.T_ENTER_BOOTLOADER, struct.pack("<I", 9) + pc.bootloader_mac(KEY, session, 9))
    with pytest.raises(HostGone):
        host.pump(1.0)
    host.close()
    end = time.monotonic() + 5
    while not os.path.lexists(link):
        assert time.monotonic() < end
        time.sleep(0.05)
    host = MiniHost(link)
    try:
        _, reason, new_session = hello_fields(host.connect())
        assert reason == pc.BOOT_BOOTLOADER and new_session != session
    finally:
        host.close()


def test_control_socket(tmp_path: Path, link: Path) -> None:
    control = tmp_path / "ctl.sock"
    with Emulator(link, control=control) as emu:
        host = MiniHost(link)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(control))
        reader = sock.makefile("rb")

        def ask(request: dict[str, object]) -> dict[str, object]:
            sock.sendall(json.dumps(request).encode() + b"\n")
            reply: dict[str, object] = json.loads(reader.readline())
            return reply

        try:
            host.connect()
            status = ask({"cmd": "status"})
            assert status["ok"] and status["path"] == emu.path and status["plugged"]
            assert ask({"cmd": "press"}) == {"ok": True}
            host.wait_for("button EVENT", lambda: host.events(pc.EV_BUTTON))
            assert ask({"cmd": "presence", "on": True})["ok"]
            host.wait_for("presence EVENT", lambda: host.events(pc.EV_PRESENCE))
            assert host.events(pc.EV_PRESENCE)[0][1] == 1
            assert ask({"cmd": "switch", "on": True})["ok"]
            host.wait_for("switch EVENT", lambda: [e for e in host.events(pc.EV_SWITCH) if e[1] == 1])
            assert ask({"cmd": "faults", "direction": "to-host", "drop": 0.5})["ok"]
            assert emu.status()["faults"]["to_host"]["settings"]["drop"] == 0.5
            assert emu.status()["faults"]["to_mcu"]["settings"]["drop"] == 0.0
            assert not ask({"cmd": "faults", "drop": 2})["ok"]
            assert not ask({"cmd": "faults", "jitter": 1})["ok"]
            assert ask({"cmd": "bogus"}) == {"ok": False, "error": "unknown command 'bogus'"}
            session = emu.session_id
            reset = ask({"cmd": "reset"})
            assert reset["ok"] and reset["session_id"] != session
            assert ask({"cmd": "unplug"}) == {"ok": True} and not os.path.lexists(link)
            replug = ask({"cmd": "replug"})
            assert replug["ok"] and os.readlink(link) == replug["path"]
        finally:
            reader.close()
            sock.close()
            host.close()


def test_command_line(tmp_path: Path, link: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_emulator_arguments(parser)
    args = parser.parse_args(
        ["--link", str(link), "--seconds", "0.3", "--drop", "0.1", "--direction", "to-mcu"]
    )
    assert emulator_main(args) == 0
    path = capsys.readouterr().out.strip()
    assert path.startswith("/dev/pts/")
    assert not os.path.lexists(link)  # removed on the way out
    assert parser.parse_args(["--bitflip", "0.5"]).bitflip == 0.5
    with pytest.raises(SystemExit):
        parser.parse_args(["--drop", "1.5"])


def test_cli_has_the_subcommand() -> None:
    from app.cli import build_parser

    args = build_parser().parse_args(
        ["mcu-emulator", "--link", "/tmp/x", "--reorder", "0.2", "--firmware-major", "2"]
    )
    assert (args.command, args.reorder, args.firmware_major, args.func.__name__) == (
        "mcu-emulator",
        0.2,
        2,
        "cmd_mcu_emulator",
    )
