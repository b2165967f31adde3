"""Run the aiortc (WebRTC) baseline once and turn it into one benchmark row.

:func:`run_aiortc` starts :mod:`app.bench.aiortc_peer` twice, as a receiver and a sender process talking over
loopback (two processes, like our own sender and receiver, so neither side steals the other's GIL), samples
both with psutil about once a second, waits for them, and summarizes the receiver's frame records with the
same :func:`app.bench.metrics.summarize` that judges our own system. See :mod:`app.bench.aiortc_peer` for the
timeline, the signalling and how the bitrate is pinned.

Impaired runs (``impairment`` or ``scenario`` given): all of aiortc's traffic (ICE checks, DTLS, SRTP, RTCP)
crosses the same :class:`app.relay.Relay` that impairs our own system, with the same settings and seed. The
parent sits in the signalling path (:func:`_broker_signalling`): the sender connects to the parent's Unix
socket instead of the receiver's, and the parent

1. reads the sender's offer and takes its one ICE candidate's port, ``PA`` (a host candidate on 127.0.0.1,
   component 1: aiortc bundles everything onto one transport with rtcp-mux, and :mod:`app.bench.aiortc_peer`
   gathers on 127.0.0.1 only);
2. binds a UDP socket on 127.0.0.1 to reserve a port ``port_b`` and hands the offer to the receiver with the
   candidate (and the ``m=`` line's default port) rewritten to ``127.0.0.1:port_b``;
3. reads the receiver's answer and takes its candidate's port, ``PB``;
4. releases the reservation and starts the relay with ``listen_b=127.0.0.1:port_b``, ``peer_a=PA``,
   ``peer_b=PB`` (``port_a`` chosen by the kernel);
5. hands the answer to the sender with its candidate rewritten to ``127.0.0.1:port_a``.

So the sender only knows ``port_a`` and the receiver only knows ``port_b``: the sender's packets go from PA
to port_a, the relay (which accepts on port_a only from PA) sends them on from port_b to PB, and the
receiver's packets (ICE responses and its own checks, DTLS, RTCP feedback) go from PB to port_b and leave the
relay from port_a to PA, which is where the sender expects them. Neither side has any other candidate, so
there is no path around the relay; the reserved port keeps the receiver's ICE socket from landing on
``port_b`` while the relay is not up yet. After the run the relay's :meth:`~app.relay.Relay.stats` must show
packets in both directions, or the run fails; they go into the row as ``relay_stats``.

Under impairment the encoder is pinned at the requested bitrate at the start and as its maximum, but its
minimum is aiortc's own ``MIN_BITRATE`` (``--adaptive-bitrate``, see
:func:`app.bench.aiortc_peer.pin_bitrate`) so that aiortc's REMB-driven congestion control can react;
unimpaired runs keep it pinned.

CPU is reported in percent of ONE core (100 = one core busy), averaged from the first psutil sample taken
``warmup_s + 1`` s after the process started (past interpreter start-up, imports, signalling, ICE/DTLS and
most of the warm-up) to its last sample; RSS is the maximum over all samples, in MB (10**6 bytes).
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import psutil

from app.bench.metrics import FrameRecord, summarize
from app.net.impair import ImpairmentSettings, Scenario
from app.relay import Relay

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 1.0
"""How often each child's CPU time and RSS are sampled."""
POLL_INTERVAL_S = 0.1
"""How often the children are checked for having exited (so the run ends promptly)."""
SLACK_S = 60.0
"""On top of warm-up and window: start-up, connection and shutdown may take this long before we kill."""
SETUP_S = 1.0
"""Start-up time (interpreter, imports, connection) excluded from the CPU average, besides the warm-up."""
STDERR_TAIL_CHARS = 3000
"""How much of a failed child's output goes into the exception."""
ENCODER_NAMES = {"h264": "H264", "vp8": "VP8"}
LOOPBACK = "127.0.0.1"
SIGNAL_TIMEOUT_S = 45.0
"""Impaired runs: the offer/answer must have passed through the parent within this long of the start."""


class AiortcBenchError(RuntimeError):
    """The aiortc baseline run failed; the message carries the children's output tails."""


@dataclass
class _Sample:
    t: float
    """time.monotonic() s when taken."""
    cpu_s: float
    """user + system CPU seconds of the process so far (all its threads)."""
    rss: int
    """Resident set size, bytes."""


@dataclass
class _Child:
    """One peer process, its log file and its psutil samples (all touched on the caller's thread only)."""

    role: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    started: float
    """time.monotonic() s when it was started."""
    samples: list[_Sample] = field(default_factory=list)
    _proc: psutil.Process | None = None

    @classmethod
    def start(cls, role: str, args: list[str], tmp: Path) -> _Child:
        log_path = tmp / f"{role}.log"
        log_file = log_path.open("wb")
        try:
            popen = subprocess.Popen(
                [sys.executable, "-m", "app.bench.aiortc_peer", "--role", role, *args],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        except BaseException:
            log_file.close()
            raise
        child = cls(role, popen, log_path, log_file, time.monotonic())
        try:
            child._proc = psutil.Process(popen.pid)
        except psutil.Error:
            child._proc = None  # already gone; poll() will tell
        return child

    def sample(self) -> None:
        """Record CPU time and RSS now, if the process still runs."""
        if self._proc is None or self.popen.poll() is not None:
            return
        try:
            with self._proc.oneshot():
                times = self._proc.cpu_times()
                rss = self._proc.memory_info().rss
        except psutil.Error:
            return  # exited between poll() and here
        self.samples.append(_Sample(time.monotonic(), times.user + times.system, rss))

    def cpu_percent(self, skip_s: float) -> float:
        """Average CPU in percent of one core from the first sample ``skip_s`` after start to the last."""
        later = [s for s in self.samples if s.t - self.started >= skip_s]
        span = later if len(later) >= 2 else self.samples
        if len(span) < 2 or span[-1].t <= span[0].t:
            return float("nan")
        return round(100.0 * (span[-1].cpu_s - span[0].cpu_s) / (span[-1].t - span[0].t), 1)

    def rss_mb(self) -> float:
        """Largest sampled RSS in MB (10**6 bytes)."""
        return round(max((s.rss for s in self.samples), default=0) / 1e6, 1)

    def tail(self) -> str:
        """The last :data:`STDERR_TAIL_CHARS` characters of its stdout+stderr."""
        text = self.log_path.read_text(errors="replace")  # the child writes it through its own descriptor
        return text[-STDERR_TAIL_CHARS:].strip() or "(no output)"

    def stop(self) -> None:
        """Kill it if it still runs, reap it and close its log file (idempotent)."""
        if self.popen.poll() is None:
            self.popen.kill()
        try:
            self.popen.wait(timeout=10)
        finally:
            self.log_file.close()


def _failure(message: str, children: list[_Child]) -> AiortcBenchError:
    tails = "\n".join(
        f"--- aiortc {c.role} (exit {c.popen.poll()}) output tail ---\n{c.tail()}" for c in children
    )
    return AiortcBenchError(f"{message}\n{tails}")


def _read_json(path: Path, child: _Child, children: list[_Child]) -> dict[str, Any]:
    try:
        result: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise _failure(f"aiortc {child.role} wrote no readable result ({exc})", children) from exc
    return result


def run_aiortc(
    codec: Literal["h264", "vp8"],
    *,
    width: int,
    height: int,
    fps: int,
    seconds: float,
    bitrate_kbps: int,
    warmup_s: float = 2.0,
    seed: int = 0,
    impairment: ImpairmentSettings | None = None,
    scenario: Scenario | None = None,
) -> dict[str, Any]:
    """Send the synthetic scene through aiortc with ``codec`` between two processes; one benchmark row.

    ``width``×``height`` px at ``fps`` frames/s, encoder pinned at ``bitrate_kbps`` kbit/s, measured over
    ``seconds`` s of capture time after ``warmup_s`` s of warm-up. ``seed`` seeds the scene and, in an
    impaired run, the relay. Blocks the calling thread for about ``warmup_s + seconds + 2`` s. Raises
    :class:`AiortcBenchError` (with the children's output) when a child fails, times out or nothing intact
    arrives; the children (and the relay) are always gone when it returns or raises.

    Unimpaired (neither ``impairment`` nor ``scenario``): the peers signal and send directly to each other
    on loopback, and the encoder is pinned at ``bitrate_kbps`` (start = minimum = maximum).

    Impaired: all traffic in both directions crosses an :class:`app.relay.Relay` with ``impairment`` (the
    same settings each way; a perfect link when only ``scenario`` is given) and ``scenario``, seeded
    with ``seed``, exactly as our own system is impaired. The encoder STARTS at ``bitrate_kbps`` and never
    goes above it, but its minimum is aiortc's own ``MIN_BITRATE`` (500 kbit/s for H.264, 250 kbit/s for
    VP8, or ``bitrate_kbps`` if lower), so aiortc's REMB-driven congestion control can lower it. The row has
    ``network`` (the settings or the scenario's steps, and the seed) and ``relay_stats``; the run fails if
    the relay did not carry packets in both directions.

    Every row has ``bitrate_kbps_timeline`` (RTP bytes aiortc's sender sent in each second of the window, in
    kbit/s) and ``estimated_kbps_timeline`` (the sender's encoder ``target_bitrate`` at the end of each
    second, kbit/s: the REMB estimate clamped to the minimum and maximum above; constant when unimpaired).
    """
    if codec not in ENCODER_NAMES:
        raise ValueError(f"codec must be one of {sorted(ENCODER_NAMES)}, not {codec!r}")
    impaired = impairment is not None or scenario is not None
    relay: Relay | None = None
    relay_stats: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="doorway-aiortc-") as tmp_name:
        tmp = Path(tmp_name)
        common = [
            f"--codec={codec}",
            f"--width={width}",
            f"--height={height}",
            f"--fps={fps}",
            f"--seconds={seconds}",
            f"--warmup={warmup_s}",
            f"--bitrate-kbps={bitrate_kbps}",
            f"--seed={seed}",
        ]
        receiver_signal = tmp / "signal.sock"
        sender_signal = tmp / "parent.sock" if impaired else receiver_signal
        sender_extra = ["--adaptive-bitrate"] if impaired else []
        children: list[_Child] = []
        listener: socket.socket | None = None
        try:
            if impaired:
                # The parent's socket exists before the sender starts, so it never retries on it.
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                listener.bind(str(sender_signal))
                listener.listen(1)
            # The receiver first: it creates the socket the sender connects to (the sender retries meanwhile).
            children.append(
                _Child.start(
                    "receiver",
                    [*common, f"--signal={receiver_signal}", f"--out={tmp / 'receiver.json'}"],
                    tmp,
                )
            )
            children.append(
                _Child.start(
                    "sender",
                    [
                        *common,
                        *sender_extra,
                        f"--signal={sender_signal}",
                        f"--out={tmp / 'sender.json'}",
                    ],
                    tmp,
                )
            )
            if listener is not None:
                relay = _broker_signalling(
                    listener,
                    receiver_signal,
                    children,
                    impairment=impairment if impairment is not None else ImpairmentSettings(),
                    scenario=scenario,
                    seed=seed,
                )
                listener.close()
                listener = None
            _supervise(children, timeout_s=warmup_s + seconds + SLACK_S)
            receiver, sender = children
            received = _read_json(tmp / "receiver.json", receiver, children)
            sent = _read_json(tmp / "sender.json", sender, children)
        finally:
            if listener is not None:
                listener.close()
            for child in children:
                child.stop()
            if relay is not None:
                relay.stop()
                relay_stats = relay.stats()
    records = [FrameRecord(**r) for r in received["records"]]
    if not any(not r.corrupt for r in records):
        raise _failure(f"aiortc {codec}: no intact frame in the measurement window", children)
    network: dict[str, Any] = {}
    if impaired:
        assert relay_stats is not None  # the relay ran: the signalling would have raised otherwise
        _check_relay_crossed(relay_stats, children)
        network = {"network": _network_description(impairment, scenario, seed), "relay_stats": relay_stats}
    skip_s = warmup_s + SETUP_S
    return {
        "system": f"aiortc-{codec}",
        "width": width,
        "height": height,
        "fps_target": fps,
        "seconds": seconds,
        "encoder": f"aiortc {ENCODER_NAMES[codec]}",
        "bitrate_kbps": bitrate_kbps,
        "frames_sent": sent["frames_sent"],
        **summarize(records, seconds=seconds, fps_target=fps),
        "cpu_percent": {"sender": sender.cpu_percent(skip_s), "receiver": receiver.cpu_percent(skip_s)},
        "rss_mb": {"sender": sender.rss_mb(), "receiver": receiver.rss_mb()},
        "bitrate_sent_kbps": sent["bitrate_sent_kbps"],
        "bitrate_kbps_timeline": sent["bitrate_kbps_timeline"],
        "estimated_kbps_timeline": sent["estimated_kbps_timeline"],
        **network,
    }


def _supervise(children: list[_Child], *, timeout_s: float) -> None:
    """Sample the children about once a second until all have exited; raise on failure or timeout."""
    deadline = time.monotonic() + timeout_s
    next_sample = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= next_sample:
            for child in children:
                child.sample()
            next_sample = now + SAMPLE_INTERVAL_S
        codes = [c.popen.poll() for c in children]
        failed = [c for c, rc in zip(children, codes, strict=True) if rc not in (None, 0)]
        if failed:
            # One side failing leaves the other waiting for minutes: stop now and say why.
            raise _failure(
                f"aiortc {failed[0].role} exited with status {failed[0].popen.returncode}", children
            )
        if all(rc == 0 for rc in codes):
            return
        if now > deadline:
            raise _failure(f"aiortc peers still running after {timeout_s:.0f} s; killed", children)
        time.sleep(POLL_INTERVAL_S)


class SdpError(ValueError):
    """A session description without exactly the one 127.0.0.1 host candidate an impaired run expects."""


def candidate_port(sdp: str) -> int:
    """The port of the one ICE candidate in ``sdp``: a UDP host candidate on 127.0.0.1, component 1.

    Raises :class:`SdpError` for any other candidate or for none or several: the relay only stands between
    one address on each side, and a second candidate would be a path around it.
    """
    ports = []
    for line in sdp.splitlines():
        if not line.startswith("a=candidate:"):
            continue
        # a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> ...
        fields = line.split()
        if (
            len(fields) < 8
            or fields[1] != "1"
            or fields[2].lower() != "udp"
            or fields[4] != LOOPBACK
            or fields[6:8] != ["typ", "host"]
        ):
            raise SdpError(f"unexpected ICE candidate {line!r}")
        ports.append(int(fields[5]))
    if len(ports) != 1:
        raise SdpError(f"expected one ICE candidate, found {len(ports)}")
    return ports[0]


def with_candidate_port(sdp: str, port: int) -> str:
    """``sdp`` with its one candidate (see :func:`candidate_port`) and the ``m=`` lines' port set to ``port``.

    The ``m=`` line carries the default candidate's port; aiortc ignores it, but it is kept consistent.
    """
    candidate_port(sdp)  # exactly one acceptable candidate, or SdpError
    out = []
    for line in sdp.splitlines():
        fields = line.split(" ")
        if line.startswith("a=candidate:"):
            fields[5] = str(port)
        elif line.startswith("m=") and len(fields) > 1 and fields[1] not in ("0", "9"):
            fields[1] = str(port)  # 0 is a rejected section, 9 the "discard" placeholder: left alone
        out.append(" ".join(fields))
    return "\r\n".join(out) + "\r\n"


def _check_children(children: list[_Child], deadline: float, waiting_for: str) -> None:
    """Raise if a child has failed, or if ``deadline`` (time.monotonic()) has passed."""
    for child in children:
        rc = child.popen.poll()
        if rc is not None and rc != 0:
            raise _failure(f"aiortc {child.role} exited with status {rc}", children)
    if time.monotonic() > deadline:
        raise _failure(f"no {waiting_for} after {SIGNAL_TIMEOUT_S:.0f} s", children)


def _recv_message(conn: socket.socket, children: list[_Child], deadline: float, what: str) -> dict[str, Any]:
    """One JSON line from ``conn`` (polled, so a dead child or the deadline ends the wait)."""
    conn.settimeout(POLL_INTERVAL_S)
    data = b""
    while b"\n" not in data:
        _check_children(children, deadline, what)
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            raise _failure(f"signalling socket closed before the {what}", children)
        data += chunk
    message: dict[str, Any] = json.loads(data.split(b"\n", 1)[0])
    return message


def _send_message(conn: socket.socket, message: dict[str, Any]) -> None:
    conn.settimeout(SIGNAL_TIMEOUT_S)
    conn.sendall(json.dumps(message).encode() + b"\n")


def _broker_signalling(
    listener: socket.socket,
    receiver_path: Path,
    children: list[_Child],
    *,
    impairment: ImpairmentSettings,
    scenario: Scenario | None,
    seed: int,
) -> Relay:
    """Pass the sender's offer to the receiver and its answer back, through the relay; the started relay.

    See the module docstring for the steps. The caller stops the relay (also when this raises later on).
    """
    deadline = time.monotonic() + SIGNAL_TIMEOUT_S
    listener.settimeout(POLL_INTERVAL_S)
    while True:
        _check_children(children, deadline, "offer from the sender")
        try:
            sender_conn, _ = listener.accept()
            break
        except TimeoutError:
            continue
    with sender_conn:
        offer = _recv_message(sender_conn, children, deadline, "offer from the sender")
        try:
            port_sender = candidate_port(offer["sdp"])
        except SdpError as exc:
            raise _failure(f"aiortc sender's offer: {exc}", children) from exc
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as reservation:
            # Held until the relay binds it, so the receiver's ICE socket cannot take it meanwhile.
            reservation.bind((LOOPBACK, 0))
            port_b = int(reservation.getsockname()[1])
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as receiver_conn:
                receiver_conn.settimeout(POLL_INTERVAL_S)
                while True:
                    _check_children(children, deadline, "receiver's signalling socket")
                    try:
                        receiver_conn.connect(str(receiver_path))
                        break
                    except (FileNotFoundError, ConnectionRefusedError):
                        time.sleep(0.05)
                _send_message(receiver_conn, {**offer, "sdp": with_candidate_port(offer["sdp"], port_b)})
                answer = _recv_message(receiver_conn, children, deadline, "answer from the receiver")
            try:
                port_receiver = candidate_port(answer["sdp"])
            except SdpError as exc:
                raise _failure(f"aiortc receiver's answer: {exc}", children) from exc
            reservation.close()
            relay = Relay(
                listen_a=(LOOPBACK, 0),
                listen_b=(LOOPBACK, port_b),
                peer_a=(LOOPBACK, port_sender),
                peer_b=(LOOPBACK, port_receiver),
                a_to_b=impairment,
                b_to_a=impairment,
                seed=seed,
                scenario=scenario,
            )
        try:
            relay.start()
            log.info(
                "aiortc via relay: sender %d -> %d relay %d -> %d receiver",
                port_sender,
                relay.port_a,
                relay.port_b,
                port_receiver,
            )
            _send_message(sender_conn, {**answer, "sdp": with_candidate_port(answer["sdp"], relay.port_a)})
        except BaseException:
            relay.stop()
            raise
    return relay


def _network_description(
    impairment: ImpairmentSettings | None, scenario: Scenario | None, seed: int
) -> dict[str, Any]:
    """The row's ``network``, shaped like our own system's row (:mod:`app.bench.video`): the settings and
    the seed; with a scenario its ``steps`` and the seed (and ``before_first_step`` if settings were given).
    """
    if scenario is None:
        settings = impairment if impairment is not None else ImpairmentSettings()
        return {**settings.to_dict(), "seed": seed}
    network: dict[str, Any] = {"steps": scenario.to_dict(), "seed": seed}
    if impairment is not None and not impairment.is_perfect:
        network["before_first_step"] = impairment.to_dict()
    return network


def _check_relay_crossed(stats: dict[str, Any], children: list[_Child]) -> None:
    """Raise unless the relay carried datagrams both ways and its thread did not fail.

    Each side's only ICE candidate is a relay port, so media cannot go around it; this makes sure of it
    (and that the relay did not stop half-way).
    """
    if stats.get("error"):
        raise _failure(f"the impairment relay failed during the run: {stats['error']}", children)
    for direction in ("a_to_b", "b_to_a"):
        if stats[direction]["delivered"] == 0:
            raise _failure(
                f"no datagram crossed the impairment relay {direction} ({stats[direction]}): "
                "aiortc's traffic did not go through it",
                children,
            )
