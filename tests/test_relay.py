"""The impairment relay on real loopback sockets: forwarding both ways, strangers, delay, loss, the bandwidth
cap, scenario steps, stopping, the thread failing, and the command line. Everything sends to 127.0.0.1 only.
Timing tolerances are generous: the relay is test equipment and this machine may be busy."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.net.impair import Impairment, ImpairmentSettings, load_scenario
from app.relay import (
    Relay,
    add_impairment_arguments,
    add_relay_arguments,
    any_impairment,
    impairment_from_args,
    main,
    scenario_from_args,
)

LOCAL = "127.0.0.1"
PERFECT = ImpairmentSettings()


def udp(rcvbuf: int = 4 << 20) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((LOCAL, 0))
    sock.settimeout(2.0)
    return sock


@pytest.fixture
def peers() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = udp(), udp()
    yield a, b
    a.close()
    b.close()


def make_relay(
    a: socket.socket,
    b: socket.socket,
    a_to_b: ImpairmentSettings = PERFECT,
    b_to_a: ImpairmentSettings = PERFECT,
    **kwargs: object,
) -> Relay:
    return Relay(
        listen_a=(LOCAL, 0),
        listen_b=(LOCAL, 0),
        peer_a=a.getsockname(),
        peer_b=b.getsockname(),
        a_to_b=a_to_b,
        b_to_a=b_to_a,
        **kwargs,  # type: ignore[arg-type]
    )


class Receiver:
    """Reads datagrams on a thread, noting each one's arrival time (monotonic ns)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.got: list[tuple[int, bytes]] = []
        self._stop = threading.Event()
        sock.settimeout(0.05)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            self.got.append((time.monotonic_ns(), data))

    def stop(self, linger_s: float = 0.3) -> list[tuple[int, bytes]]:
        time.sleep(linger_s)
        self._stop.set()
        self._thread.join()
        return self.got


def wait_for(cond: object, timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(cond) and cond():
            return True
        time.sleep(0.01)
    return False


def blast(sock: socket.socket, port: int, kbps: float, seconds: float, size: int = 1000) -> int:
    """Send ``size``-byte datagrams at ``kbps`` for ``seconds`` in 10 ms batches; returns how many."""
    per_tick = kbps * 1000 / 8 / size / 100
    start = time.monotonic()
    owed = 0.0
    sent = 0
    tick = 0
    while tick < seconds * 100:
        owed += per_tick
        while owed >= 1:
            sock.sendto(sent.to_bytes(4, "big") + bytes(size - 4), (LOCAL, port))
            sent += 1
            owed -= 1
        tick += 1
        time.sleep(max(0.0, start + tick / 100 - time.monotonic()))
    return sent


def rate_kbps(arrivals: list[tuple[int, bytes]], t0_ns: int, from_s: float, to_s: float) -> float:
    """Payload kbit/s arriving between ``from_s`` and ``to_s`` after ``t0_ns``."""
    lo, hi = t0_ns + int(from_s * 1e9), t0_ns + int(to_s * 1e9)
    total = sum(len(d) for t, d in arrivals if lo <= t < hi)
    return total * 8 / 1000 / (to_s - from_s)


def test_forwards_both_ways_untouched(peers: tuple[socket.socket, socket.socket]) -> None:
    a, b = peers
    with make_relay(a, b) as relay:
        payload = os.urandom(1200)
        a.sendto(payload, (LOCAL, relay.port_a))
        data, src = b.recvfrom(65535)
        assert (data, src) == (payload, (LOCAL, relay.port_b))
        b.sendto(b"reply", (LOCAL, relay.port_b))
        data, src = a.recvfrom(65535)
        assert (data, src) == (b"reply", (LOCAL, relay.port_a))
        big = os.urandom(60_000)
        a.sendto(big, (LOCAL, relay.port_a))
        assert b.recvfrom(65535)[0] == big
        stats = relay.stats()
    assert stats["a_to_b"]["delivered"] == 2 and stats["b_to_a"]["delivered"] == 1
    assert stats["a_to_b"]["delivered_bytes"] == 61_200
    assert stats["error"] is None and stats["scenario_step"] is None


def test_strangers_are_dropped_and_counted(peers: tuple[socket.socket, socket.socket]) -> None:
    a, b = peers
    stranger = udp()
    try:
        with make_relay(a, b) as relay:
            stranger.sendto(b"who", (LOCAL, relay.port_a))
            stranger.sendto(b"who", (LOCAL, relay.port_b))
            b.sendto(b"wrong side", (LOCAL, relay.port_a))  # B is a stranger on A's port
            assert wait_for(lambda: relay.stats()["a_to_b"]["strangers"] == 2)
            assert relay.stats()["b_to_a"]["strangers"] == 1
            a.sendto(b"ok", (LOCAL, relay.port_a))
            assert b.recvfrom(100)[0] == b"ok"  # only the peer's datagram came through
            a.settimeout(0.1)
            with pytest.raises(TimeoutError):
                a.recvfrom(100)
            assert relay.stats()["a_to_b"]["received"] == 1
    finally:
        stranger.close()


def test_delay_measured(peers: tuple[socket.socket, socket.socket]) -> None:
    a, b = peers
    with make_relay(a, b, a_to_b=ImpairmentSettings(delay_ms=30)) as relay:
        rx = Receiver(b)
        sent: dict[int, int] = {}
        for i in range(60):
            sent[i] = time.monotonic_ns()
            a.sendto(i.to_bytes(4, "big"), (LOCAL, relay.port_a))
            time.sleep(0.005)
        got = rx.stop(linger_s=0.1)
    delays = [(t - sent[int.from_bytes(d, "big")]) / 1e6 for t, d in got]
    assert len(delays) == 60
    assert min(delays) >= 29.9
    assert statistics.mean(delays) < 35, delays


def test_random_loss_rate(peers: tuple[socket.socket, socket.socket]) -> None:
    a, b = peers
    settings = ImpairmentSettings(loss_percent=20)
    with make_relay(a, b, a_to_b=settings, seed=5) as relay:
        rx = Receiver(b)
        for burst in range(40):
            for i in range(50):
                a.sendto((burst * 50 + i).to_bytes(4, "big"), (LOCAL, relay.port_a))
            time.sleep(0.002)
        assert wait_for(lambda: relay.stats()["a_to_b"]["received"] == 2000)
        got = rx.stop(linger_s=0.1)
        stats = relay.stats()["a_to_b"]
    assert 1500 <= len(got) <= 1700
    assert stats["delivered"] == len(got) == 2000 - stats["lost_random"]
    # The a→b pipeline is the model seeded with 2·seed: the same datagrams are lost.
    model = Impairment(settings, seed=10)
    for i in range(2000):
        model.push(i, i.to_bytes(4, "big"))
    assert sorted(d for _, d in got) == sorted(model.due(2000))


def test_bandwidth_cap(peers: tuple[socket.socket, socket.socket]) -> None:
    a, b = peers
    with make_relay(a, b, a_to_b=ImpairmentSettings(bandwidth_kbps=2000, queue_ms=200)) as relay:
        rx = Receiver(b)
        t0 = time.monotonic_ns()
        sent = blast(a, relay.port_a, kbps=4000, seconds=2.0)
        got = rx.stop(linger_s=0.4)
        stats = relay.stats()["a_to_b"]
    # Past the first 0.3 s the queue is full and the bottleneck busy until the queue drains after 2 s.
    measured = rate_kbps(got, t0, 0.3, 2.0)
    assert measured == pytest.approx(2000, rel=0.15)
    assert stats["dropped_queue"] > 0.3 * sent
    assert stats["max_queue_delay_ms"] <= 200
    assert stats["max_queue_delay_ms"] > 150


def test_scenario_switches_the_rate(peers: tuple[socket.socket, socket.socket], tmp_path: Path) -> None:
    path = tmp_path / "drop.toml"
    path.write_text("[[step]]\nat_s = 0\nbandwidth_kbps = 2000\n[[step]]\nat_s = 1.0\nbandwidth_kbps = 500\n")
    scenario = load_scenario(path)
    a, b = peers
    relay = make_relay(a, b, scenario=scenario)
    with relay:
        t0 = time.monotonic_ns()
        rx = Receiver(b)
        assert relay.stats()["scenario_step"] == 0
        blast(a, relay.port_a, kbps=3000, seconds=2.0)
        got = rx.stop(linger_s=0.0)
        stats = relay.stats()
    assert stats["scenario_step"] == 1
    assert stats["a_to_b"]["settings"]["bandwidth_kbps"] == 500
    assert stats["b_to_a"]["settings"]["bandwidth_kbps"] == 500
    assert rate_kbps(got, t0, 0.3, 0.95) == pytest.approx(2000, rel=0.15)
    assert rate_kbps(got, t0, 1.1, 2.0) == pytest.approx(500, rel=0.15)


def test_stop_is_prompt_with_datagrams_in_flight(peers: tuple[socket.socket, socket.socket]) -> None:
    a, b = peers
    relay = make_relay(a, b, a_to_b=ImpairmentSettings(delay_ms=5000))
    relay.start()
    for _ in range(10):
        a.sendto(b"x", (LOCAL, relay.port_a))
    assert wait_for(lambda: relay.stats()["a_to_b"]["in_flight"] == 10)
    t = time.monotonic()
    relay.stop()
    assert time.monotonic() - t < 0.5
    assert not relay.running
    relay.stop()  # idempotent
    with pytest.raises(RuntimeError):
        relay.start()


def test_a_failing_thread_logs_and_stops(
    peers: tuple[socket.socket, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = peers
    relay = make_relay(a, b)

    def broken(now_ns: int, data: bytes) -> None:
        raise RuntimeError("boom")

    relay._a_to_b.impairment.push = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="app.relay"), relay:
        a.sendto(b"x", (LOCAL, relay.port_a))
        assert wait_for(lambda: not relay.running)
        assert isinstance(relay.error, RuntimeError)
        assert relay.stats()["error"] == "RuntimeError('boom')"
    assert "relay thread failed" in caplog.text


@pytest.mark.parametrize(
    ("field", "addr", "message"),
    [
        ("listen_a", ("0.0.0.0", 0), "listen_a 0.0.0.0 is not an IPv4 loopback address"),
        ("listen_b", ("192.168.1.10", 0), "listen_b 192.168.1.10 is not an IPv4 loopback address"),
        ("peer_a", ("10.1.2.3", 5000), "peer_a 10.1.2.3 is not an IPv4 loopback address"),
        ("peer_b", ("::1", 5000), "peer_b ::1 is not an IPv4 loopback address"),
        ("peer_b", ("example.com", 5000), "peer_b 'example.com' is not an IP address"),
    ],
)
def test_non_loopback_refused(field: str, addr: tuple[str, int], message: str) -> None:
    kwargs: dict[str, object] = {
        "listen_a": (LOCAL, 0),
        "listen_b": (LOCAL, 0),
        "peer_a": (LOCAL, 9),
        "peer_b": (LOCAL, 9),
        field: addr,
    }
    with pytest.raises(ValueError, match=f"^{message}"):
        Relay(a_to_b=PERFECT, b_to_a=PERFECT, **kwargs)  # type: ignore[arg-type]


def test_localhost_is_accepted(peers: tuple[socket.socket, socket.socket]) -> None:
    a, b = peers
    relay = Relay(
        listen_a=("localhost", 0),
        listen_b=(LOCAL, 0),
        peer_a=("localhost", a.getsockname()[1]),
        peer_b=b.getsockname(),
        a_to_b=PERFECT,
        b_to_a=PERFECT,
    )
    with relay:
        b.sendto(b"hi", (LOCAL, relay.port_b))
        assert a.recvfrom(100) == (b"hi", (LOCAL, relay.port_a))


def impairment_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_impairment_arguments(p)
    return p


def test_impairment_arguments(tmp_path: Path) -> None:
    p = impairment_parser()
    none = p.parse_args([])
    assert impairment_from_args(none) == PERFECT and not any_impairment(none)
    assert scenario_from_args(none) is None
    assert not any_impairment(p.parse_args(["--queue-ms", "50"]))
    args = p.parse_args(
        [
            *("--loss", "1", "--burst-loss", "5", "--burst-length", "3", "--delay-ms", "10"),
            *("--jitter-ms", "3", "--reorder", "0.5", "--reorder-hold-ms", "4", "--duplicate", "0.5"),
            *("--bandwidth-kbps", "4000", "--queue-ms", "100", "--seed", "7"),
        ]
    )
    assert any_impairment(args)
    assert args.seed == 7
    assert impairment_from_args(args) == ImpairmentSettings(
        delay_ms=10,
        jitter_ms=3,
        reorder_percent=0.5,
        reorder_hold_ms=4,
        loss_percent=1,
        burst_loss_percent=5,
        burst_length=3,
        duplicate_percent=0.5,
        bandwidth_kbps=4000,
        queue_ms=100,
    )
    path = tmp_path / "s.toml"
    path.write_text("[[step]]\nat_s = 0\ndelay_ms = 5\n")
    with_scenario = p.parse_args(["--scenario", str(path)])
    assert any_impairment(with_scenario)
    assert impairment_from_args(with_scenario) == PERFECT
    scenario = scenario_from_args(with_scenario)
    assert scenario is not None and scenario.steps[0].settings.delay_ms == 5
    with pytest.raises(ValueError, match=r"^--scenario cannot be combined with --delay-ms, --loss: "):
        impairment_from_args(p.parse_args(["--scenario", str(path), "--loss", "1", "--delay-ms", "2"]))
    assert scenario_from_args(p.parse_args(["--scenario", "capacity-12-4-12"])) is not None


def relay_args(*extra: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_relay_arguments(p)
    return p.parse_args(["--peer-a", f"{LOCAL}:9", "--peer-b", f"{LOCAL}:9", *extra])


def test_cli_runs_and_prints_stats(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(relay_args("--delay-ms", "5", "--loss", "1", "--seconds", "1.2")) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"doorway relay: {LOCAL}:9 ⇄ {LOCAL}:")
    assert "'delay_ms': 5.0" in out[0]
    assert out[1].startswith("[  1.0s] a_to_b 0 in, 0 out, lost 0+0, queue drops 0")
    assert " | b_to_a 0 in" in out[1]


def test_cli_stops_on_sigterm(capsys: pytest.CaptureFixture[str]) -> None:
    # Our own handler first, so a SIGTERM arriving before main() has installed its one cannot end the run;
    # --seconds is the backstop for that case, and the elapsed time tells.
    caught: list[int] = []
    original = signal.signal(signal.SIGTERM, lambda signum, frame: caught.append(signum))
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        t = time.monotonic()
        timer.start()
        assert main(relay_args("--seconds", "6")) == 0
        elapsed = time.monotonic() - t
        restored = signal.getsignal(signal.SIGTERM)
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, original)
    assert elapsed < 2.0
    assert caught == []
    assert callable(restored) and restored is not original
    assert capsys.readouterr().out.startswith("doorway relay:")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--loss", "150"], "doorway relay: loss_percent must be between 0 and 100 percent, got 150"),
        (["--burst-length", "0"], "doorway relay: burst_length must be at least 1 datagram, got 0"),
        (["--listen-a", "0.0.0.0:0"], "doorway relay: listen_a 0.0.0.0 is not an IPv4 loopback address"),
        (["--scenario", "/nonexistent.toml"], "doorway relay: /nonexistent.toml: cannot read: No such file"),
        (
            ["--scenario", "/x.toml", "--loss", "1"],
            "doorway relay: --scenario cannot be combined with --loss",
        ),
    ],
)
def test_cli_errors(extra: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(relay_args(*extra)) == 2
    assert capsys.readouterr().err.startswith(message)


def test_doorway_relay_subcommand_is_wired() -> None:
    from app.cli import build_parser, cmd_relay

    args = build_parser().parse_args(
        [
            "relay",
            "--peer-a",
            "127.0.0.1:47000",
            "--peer-b",
            "127.0.0.1:47001",
            "--loss",
            "1",
            "--seconds",
            "2",
        ]
    )
    assert args.func is cmd_relay
    assert (args.peer_a, args.listen_a, args.loss, args.seconds) == ((LOCAL, 47000), (LOCAL, 0), 1.0, 2.0)
