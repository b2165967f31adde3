"""``doorway relay``: a UDP relay that impairs traffic between two doorways on one machine (user-space netem).

This kernel has no netem, so the benchmark, the tests and people trying things by hand put this relay
between doorway A and doorway B instead. A sends to the relay's port A; the relay forwards what it gets from
A, impaired, to B from its port B; B's datagrams to port B come out of port A towards A. Each direction has
its own :class:`~app.net.impair.Impairment` with its own seeded random numbers; this module is only the
I/O shell around them: two loopback sockets, one thread, a clock. It is test equipment for one machine, so
it binds and sends to IPv4 loopback addresses only.

Theory of operation
-------------------
One thread (``doorway-relay``) waits in ``select`` on both sockets and a wake-up socket pair, with a timeout
that ends at the earliest of the two pipelines' next release and the scenario's next step. ``select`` takes
a microsecond timeout (``epoll`` and ``poll`` round up to whole milliseconds); the thread sets its timer
slack to 1 µs (Linux ``prctl``) and splits long waits so the last one is short, because the kernel lets a
``select`` overshoot by the larger of the slack and 0.1 % of its timeout. Measured end to end on loopback
(relay in its own process), a delayed datagram arrives 0.05–0.15 ms after its due time at the median and
under 0.3 ms at the 99th percentile. Each wake-up reads what has arrived (at most ``_READ_BATCH`` datagrams
per socket, so a flood cannot starve releases), pushes each datagram from the expected peer into its
direction's pipeline at its own arrival time, applies a scenario step if one has begun, and sends
everything due. Datagrams from any other address are dropped and counted. In a busy Python process the
relay thread also waits for the GIL, which can add milliseconds; run it as its own process (``doorway
relay``) where that matters. A lock guards the pipelines so :meth:`Relay.stats` can be called from any
thread. An exception in the thread is logged, kept in :attr:`Relay.error`, and ends the thread; nothing
waits on it, so nothing hangs.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ipaddress
import logging
import select
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Final

from app.net.impair import (
    Impairment,
    ImpairmentSettings,
    Scenario,
    ScenarioPlayer,
    load_scenario,
    scenario_path,
)

log = logging.getLogger(__name__)

Address = tuple[str, int]

# Generous socket buffers: a 1080p keyframe is hundreds of datagrams arriving back to back.
_SOCKET_BUFFER_BYTES: Final = 4 * 1024 * 1024
_MAX_DATAGRAM: Final = 65_535
# Datagrams read per socket per wake-up before releases are looked at again.
_READ_BATCH: Final = 64
# Longest sleep with nothing scheduled; only bounds the cost of a lost wake-up, stop() wakes the loop itself.
_IDLE_TIMEOUT_S: Final = 0.5
_STOP_TIMEOUT_S: Final = 5.0
# select() may overshoot a timeout by a thousandth of it (the kernel's slack estimate for select), so a wait
# longer than this ends this much early and is finished by a second, short wait: ±tens of µs, not 0.1 %.
_EARLY_NS: Final = 500_000
# PR_SET_TIMERSLACK: the thread's minimum timer slack, 50 µs by default; 1 µs keeps short waits precise.
_PR_SET_TIMERSLACK: Final = 29
_TIMER_SLACK_NS: Final = 1_000
EXIT_USAGE: Final = 2


def _loopback(addr: Address, what: str) -> Address:
    """``addr`` with ``localhost`` spelled 127.0.0.1; ValueError unless it is an IPv4 loopback address."""
    host, port = addr
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{what} {host!r} is not an IP address (the relay uses IPv4 loopback only)"
        ) from None
    if ip.version != 4 or not ip.is_loopback:
        raise ValueError(
            f"{what} {host} is not an IPv4 loopback address: the relay is test equipment for one machine"
        )
    if not 0 <= port <= 65_535:
        raise ValueError(f"{what} port {port} is out of range")
    return host, port


class _Direction:
    """One way through the relay: the socket it arrives on, its pipeline, and where it goes."""

    __slots__ = ("impairment", "name", "peer_from", "peer_to", "rx", "send_errors", "strangers", "tx")

    def __init__(
        self,
        name: str,
        rx: socket.socket,
        tx: socket.socket,
        peer_from: Address,
        peer_to: Address,
        impairment: Impairment,
    ) -> None:
        self.name = name
        self.rx = rx
        self.tx = tx
        self.peer_from = peer_from
        self.peer_to = peer_to
        self.impairment = impairment
        self.strangers = 0
        self.send_errors = 0


class Relay:
    """A two-way impairing UDP relay on loopback, run by one thread between :meth:`start` and :meth:`stop`.

    Datagrams arriving on ``listen_a`` from ``peer_a`` go, impaired by ``a_to_b``, from the B socket to
    ``peer_b``; datagrams on ``listen_b`` from ``peer_b`` go, impaired by ``b_to_a``, from the A socket to
    ``peer_a``. Port 0 picks a free port (see :attr:`port_a`, :attr:`port_b`). The a→b pipeline is seeded
    with ``2·seed``, b→a with ``2·seed + 1``. With a ``scenario`` both directions follow its steps, timed
    from :meth:`start` (before its first step, ``a_to_b`` and ``b_to_a`` apply).
    """

    def __init__(
        self,
        *,
        listen_a: Address,
        listen_b: Address,
        peer_a: Address,
        peer_b: Address,
        a_to_b: ImpairmentSettings,
        b_to_a: ImpairmentSettings,
        seed: int = 0,
        scenario: Scenario | None = None,
    ) -> None:
        listen_a = _loopback(listen_a, "listen_a")
        listen_b = _loopback(listen_b, "listen_b")
        peer_a = _loopback(peer_a, "peer_a")
        peer_b = _loopback(peer_b, "peer_b")
        self.scenario = scenario
        self.error: BaseException | None = None
        self._sock_a = self._bind(listen_a)
        try:
            self._sock_b = self._bind(listen_b)
        except OSError:
            self._sock_a.close()
            raise
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.port_a: int = self._sock_a.getsockname()[1]
        self.port_b: int = self._sock_b.getsockname()[1]
        self._a_to_b = _Direction(
            "a_to_b", self._sock_a, self._sock_b, peer_a, peer_b, Impairment(a_to_b, 2 * seed)
        )
        self._b_to_a = _Direction(
            "b_to_a", self._sock_b, self._sock_a, peer_b, peer_a, Impairment(b_to_a, 2 * seed + 1)
        )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._player: ScenarioPlayer | None = None
        self._started_ns = 0
        self._closed = False

    @staticmethod
    def _bind(addr: Address) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER_BYTES)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER_BYTES)
            # Linux reports twice what it grants; less than asked means net.core.rmem_max capped it.
            granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
            if granted < _SOCKET_BUFFER_BYTES:
                log.info(
                    "receive buffer %d bytes (net.core.rmem_max caps it); bursts may overflow it", granted
                )
            sock.bind(addr)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def __enter__(self) -> Relay:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True while the relay thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start forwarding; scenario step times count from now."""
        if self._thread is not None or self._closed:
            raise RuntimeError("a relay starts once")
        self._started_ns = time.monotonic_ns()
        if self.scenario is not None:
            self._player = ScenarioPlayer(self.scenario, self._started_ns)
            self._follow_scenario(self._started_ns)
        self._thread = threading.Thread(target=self._run, name="doorway-relay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (datagrams still in flight are dropped) and close the sockets; idempotent."""
        self._stop.set()
        if self._thread is not None:
            # A full wake-up pair means the thread is being woken already.
            with contextlib.suppress(OSError):
                self._wake_w.send(b"\0")
            self._thread.join(_STOP_TIMEOUT_S)
            if self._thread.is_alive():
                log.error("relay thread did not stop within %.0f s", _STOP_TIMEOUT_S)
        if not self._closed:
            self._closed = True
            for sock in (self._sock_a, self._sock_b, self._wake_r, self._wake_w):
                sock.close()

    def stats(self) -> dict[str, Any]:
        """Per-direction counters (see :class:`~app.net.impair.ImpairmentCounters`) plus ``strangers``
        (datagrams from other addresses, dropped), ``send_errors`` and ``delivered_kbps`` (kbit/s of payload
        since :meth:`start`); the settings in force and the scenario step (0-based, -1 before the first)."""
        with self._lock:
            now = time.monotonic_ns()
            elapsed_s = (now - self._started_ns) / 1e9 if self._started_ns else 0.0
            out: dict[str, Any] = {"elapsed_s": round(elapsed_s, 3)}
            for d in (self._a_to_b, self._b_to_a):
                counters = d.impairment.counters.to_dict()
                counters["strangers"] = d.strangers
                counters["send_errors"] = d.send_errors
                kbps = counters["delivered_bytes"] * 8 / 1000 / elapsed_s if elapsed_s > 0 else 0.0
                counters["delivered_kbps"] = round(kbps, 1)
                counters["settings"] = d.impairment.settings.to_dict()
                out[d.name] = counters
            out["scenario_step"] = self._player.step_index if self._player is not None else None
            out["error"] = repr(self.error) if self.error is not None else None
            return out

    def _follow_scenario(self, now_ns: int) -> None:
        assert self._player is not None
        settings = self._player.update(now_ns)
        if settings is not None:
            log.info("scenario step %d: %s", self._player.step_index, settings.to_dict())
            self._a_to_b.impairment.set_settings(settings, now_ns)
            self._b_to_a.impairment.set_settings(settings, now_ns)

    def _run(self) -> None:
        _reduce_timer_slack()
        try:
            self._loop()
        except Exception as exc:
            self.error = exc
            log.exception("relay thread failed; the relay has stopped forwarding")

    def _loop(self) -> None:
        directions = (self._a_to_b, self._b_to_a)
        # select() for its µs timeout; it takes descriptors below FD_SETSIZE (1024), which a relay opened by
        # a test or the benchmark has (a failure would be logged and stop the relay, not hang it).
        readable = [self._sock_a, self._sock_b, self._wake_r]
        monotonic_ns = time.monotonic_ns
        while not self._stop.is_set():
            with self._lock:
                wake = self._next_wake_ns()
            if wake is None:
                timeout = _IDLE_TIMEOUT_S
            else:
                wait_ns = wake - monotonic_ns()
                if wait_ns > 2 * _EARLY_NS:
                    wait_ns -= _EARLY_NS
                timeout = min(max(0.0, wait_ns / 1e9), _IDLE_TIMEOUT_S)
            ready, _, _ = select.select(readable, [], [], timeout)
            if self._stop.is_set():
                return
            with self._lock:
                for d in directions:
                    if d.rx in ready:
                        self._receive(d)
                now = monotonic_ns()
                if self._player is not None:
                    self._follow_scenario(now)
                for d in directions:
                    self._send(d, d.impairment.due(now))

    def _next_wake_ns(self) -> int | None:
        times = [self._a_to_b.impairment.next_due_ns(), self._b_to_a.impairment.next_due_ns()]
        if self._player is not None:
            times.append(self._player.next_change_ns())
        known = [t for t in times if t is not None]
        return min(known) if known else None

    def _receive(self, d: _Direction) -> None:
        sock = d.rx
        peer = d.peer_from
        impairment = d.impairment
        for _ in range(_READ_BATCH):
            try:
                data, addr = sock.recvfrom(_MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError as exc:
                # An ICMP error from an earlier send can surface here; the socket itself is still fine.
                log.debug("%s: receive error %s", d.name, exc)
                continue
            if addr[0] != peer[0] or addr[1] != peer[1]:
                d.strangers += 1
                continue
            impairment.push(time.monotonic_ns(), data)

    def _send(self, d: _Direction, datagrams: list[bytes]) -> None:
        sock = d.tx
        peer = d.peer_to
        for data in datagrams:
            try:
                sock.sendto(data, peer)
            except OSError as exc:
                if d.send_errors == 0:
                    log.warning("%s: cannot send to %s:%d: %s (counting further errors)", d.name, *peer, exc)
                d.send_errors += 1


def _reduce_timer_slack() -> None:
    """Ask Linux for 1 µs of timer slack on the calling thread; harmless where that is not possible."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        failed = libc.prctl(_PR_SET_TIMERSLACK, _TIMER_SLACK_NS, 0, 0, 0) != 0
    except (OSError, AttributeError):
        failed = True
    if failed:
        log.debug("cannot reduce the timer slack; releases may be up to ~50 µs later")


def parse_address(text: str) -> Address:
    """``HOST:PORT`` → (host, port), for argparse; the host is checked by :class:`Relay`."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


# argparse destinations of the impairment options, named as ImpairmentSettings.from_options' arguments.
_IMPAIRMENT_DESTS: Final = (
    "delay_ms",
    "jitter_ms",
    "loss",
    "burst_loss",
    "burst_length",
    "reorder",
    "reorder_hold_ms",
    "duplicate",
    "bandwidth_kbps",
    "queue_ms",
)


def add_impairment_arguments(p: argparse.ArgumentParser) -> None:
    """The impairment options, shared by ``doorway relay`` and ``doorway bench video``; the same settings
    apply in both directions. Percent options take percents (``--loss 1`` is 1 %)."""
    g = p.add_argument_group("network impairment (applied by a user-space relay; both directions)")
    g.add_argument("--delay-ms", type=float, default=None, help="one-way delay (ms)")
    g.add_argument(
        "--jitter-ms", type=float, default=None, help="extra delay uniform in ±this (ms); no reordering"
    )
    g.add_argument("--loss", type=float, default=None, help="independent random loss (percent)")
    g.add_argument(
        "--burst-loss", type=float, default=None, help="Gilbert–Elliott bursty loss rate (percent)"
    )
    g.add_argument("--burst-length", type=float, default=None, help="mean loss burst (datagrams, default 1)")
    g.add_argument(
        "--reorder", type=float, default=None, help="datagrams swapped with the next one (percent)"
    )
    g.add_argument(
        "--reorder-hold-ms",
        type=float,
        default=None,
        help="longest a reordered datagram waits (ms, default 20)",
    )
    g.add_argument("--duplicate", type=float, default=None, help="duplicated datagrams (percent)")
    g.add_argument("--bandwidth-kbps", type=float, default=None, help="bottleneck rate (kbit/s of payload)")
    g.add_argument(
        "--queue-ms",
        type=float,
        default=None,
        help="bottleneck drop-tail queue (ms at the rate, default 200)",
    )
    g.add_argument(
        "--scenario",
        type=Path,
        default=None,
        help="TOML file of [[step]] tables changing the settings over time, instead of the options above "
        "(or the name of a shipped one, e.g. capacity-12-4-12)",
    )
    g.add_argument("--seed", type=int, default=0, help="random seed of the impairment (default 0)")


def _options_given(args: argparse.Namespace) -> list[str]:
    return [
        f"--{dest.replace('_', '-')}" for dest in _IMPAIRMENT_DESTS if getattr(args, dest, None) is not None
    ]


def impairment_from_args(args: argparse.Namespace) -> ImpairmentSettings:
    """The settings the impairment options describe (a perfect link when none are given). ValueError for
    out-of-range values, or options combined with ``--scenario`` (whose steps say everything)."""
    given = _options_given(args)
    if given and getattr(args, "scenario", None) is not None:
        raise ValueError(
            f"--scenario cannot be combined with {', '.join(given)}: put them in the scenario's steps"
        )
    values = {dest: getattr(args, dest, None) for dest in _IMPAIRMENT_DESTS}
    return ImpairmentSettings.from_options(**values)


def scenario_from_args(args: argparse.Namespace) -> Scenario | None:
    """The ``--scenario`` file, loaded (ScenarioError when it is bad), or ``None``. A bare name that is not
    a file names a shipped scenario (``--scenario capacity-12-4-12``)."""
    path: Path | None = getattr(args, "scenario", None)
    if path is None:
        return None
    if not path.exists() and path.name == str(path) and not path.suffix and scenario_path(path.name).exists():
        path = scenario_path(path.name)
    return load_scenario(path)


def any_impairment(args: argparse.Namespace) -> bool:
    """True when the options ask for any impairment (so a relay is needed at all)."""
    if getattr(args, "scenario", None) is not None:
        return True
    return not impairment_from_args(args).is_perfect


def add_relay_arguments(p: argparse.ArgumentParser) -> None:
    """The ``doorway relay`` command line."""
    p.add_argument("--listen-a", type=parse_address, default=("127.0.0.1", 0), help="doorway A sends here")
    p.add_argument("--listen-b", type=parse_address, default=("127.0.0.1", 0), help="doorway B sends here")
    p.add_argument("--peer-a", type=parse_address, required=True, help="doorway A's address (HOST:PORT)")
    p.add_argument("--peer-b", type=parse_address, required=True, help="doorway B's address (HOST:PORT)")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long (default: until Ctrl-C)")
    add_impairment_arguments(p)


def _say(text: str) -> None:
    print(text, flush=True)  # noqa: T201 (command-line output)


def _direction_line(name: str, now: dict[str, Any], before: dict[str, Any], dt: float) -> str:
    kbps = (now["delivered_bytes"] - before.get("delivered_bytes", 0)) * 8 / 1000 / dt if dt > 0 else 0.0
    return (
        f"{name} {now['received']} in, {now['delivered']} out, "
        f"lost {now['lost_random']}+{now['lost_burst']}, queue drops {now['dropped_queue']}, "
        f"dup {now['duplicated']}, reordered {now['reordered']}, "
        f"{kbps:.0f} kbit/s, queue {now['queued_bytes']} B (max {now['max_queue_delay_ms']:.1f} ms)"
    )


def main(args: argparse.Namespace) -> int:
    """Run the relay until Ctrl-C, SIGTERM or ``--seconds``, printing per-direction stats every second."""
    try:
        settings = impairment_from_args(args)
        scenario = scenario_from_args(args)
        relay = Relay(
            listen_a=args.listen_a,
            listen_b=args.listen_b,
            peer_a=args.peer_a,
            peer_b=args.peer_b,
            a_to_b=settings,
            b_to_a=settings,
            seed=args.seed,
            scenario=scenario,
        )
    except (ValueError, OSError) as exc:
        print(f"doorway relay: {exc}", file=sys.stderr)  # noqa: T201 (command-line output)
        return EXIT_USAGE
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    what = f"scenario {args.scenario} ({len(scenario.steps)} steps)" if scenario else str(settings.to_dict())
    status = 0
    try:
        with relay:
            _say(
                f"doorway relay: {args.peer_a[0]}:{args.peer_a[1]} ⇄ 127.0.0.1:{relay.port_a} | "
                f"127.0.0.1:{relay.port_b} ⇄ {args.peer_b[0]}:{args.peer_b[1]}, {what}; Ctrl-C to stop"
            )
            started = last = time.monotonic()
            before: dict[str, Any] = {"a_to_b": {}, "b_to_a": {}}
            while not stop.is_set():
                left = None if args.seconds is None else args.seconds - (time.monotonic() - started)
                if left is not None and left <= 0:
                    break
                stop.wait(1.0 if left is None else min(1.0, left))
                now = time.monotonic()
                stats = relay.stats()
                lines = [_direction_line(k, stats[k], before[k], now - last) for k in ("a_to_b", "b_to_a")]
                _say(f"[{now - started:5.1f}s] " + " | ".join(lines))
                before, last = stats, now
                if not relay.running:
                    _say(f"doorway relay: stopped on an error: {relay.error!r}")
                    status = 1
                    break
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
