"""Starting doorways as child processes on this machine: the demo, the benchmarks and end-to-end tests use it.

Each child is a real process — ``doorway engine``, ``doorway hwcontrol`` with ``doorway mcu-emulator`` as
its room controller, ``doorway admin serve`` — with its own settings file (written here as TOML), its own
ports on loopback and its own control socket, exactly as two appliances would run, only closer together.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil


def free_udp_ports(count: int) -> list[int]:
    """``count`` distinct UDP ports on 127.0.0.1 that were free a moment ago."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_tcp_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def to_toml(settings: dict[str, dict[str, Any]]) -> str:
    """A settings dict of sections → TOML text (strings, numbers, booleans only)."""
    lines: list[str] = []
    for section, values in settings.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, int | float):
                text = repr(value)
            else:
                text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
            lines.append(f"{key} = {text}")
        lines.append("")
    return "\n".join(lines)


@dataclass
class EngineProcess:
    """One running ``doorway engine`` child and what we know about it."""

    name: str
    config: Path
    control_socket: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    cpu_samples: list[float] = field(default_factory=list)
    rss_max_mb: float = 0.0
    _ps: psutil.Process | None = None

    def sample(self) -> None:
        """Record CPU (percent of one core since the last sample) and resident memory (caller's thread)."""
        try:
            if self._ps is None:
                self._ps = psutil.Process(self.proc.pid)
                self._ps.cpu_percent()
                return
            self.cpu_samples.append(self._ps.cpu_percent())
            self.rss_max_mb = max(self.rss_max_mb, self._ps.memory_info().rss / 2**20)
        except psutil.Error:
            pass

    @property
    def cpu_mean(self) -> float:
        return round(sum(self.cpu_samples) / len(self.cpu_samples), 1) if self.cpu_samples else 0.0

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def provision_twins(workdir: Path, names: tuple[str, str], ports: tuple[int, int]) -> dict[str, Path]:
    """Pair two doorways on this machine as ``doorway pair`` would, without the code: give each a state
    directory with its own identity and the other as its twin (media at 127.0.0.1, ``ports[i]`` being where
    ``names[i]`` listens). Returns the state directory of each name.

    For the demo and the benchmarks, which stand in for the installer; their settings also pin
    ``network.peer_host``/``peer_port`` (the benchmark puts a relay in between).
    """
    import time as _time

    from app.identity import Identity, device_id_of
    from app.state import StateStore, Twin

    dirs = {name: workdir / f"{name}-state" for name in names}
    identities: dict[str, Identity] = {}
    for name in names:
        with StateStore(dirs[name]) as store:
            identities[name] = Identity.load_or_create(store)
    for me, other, other_port in ((names[0], names[1], ports[1]), (names[1], names[0], ports[0])):
        public = identities[other].public_bytes
        twin = Twin(device_id_of(public), other, public, "127.0.0.1", other_port, _time.time())
        with StateStore(dirs[me]) as store:
            store.set_twin(twin)
    return dirs


def _child_env() -> dict[str, str]:
    # The children read their settings file only: a DOORWAY_* override in the caller's environment would
    # make them differ from what the file (and the caller) says.
    return {k: v for k, v in os.environ.items() if not k.startswith("DOORWAY_")}


def start_child(
    name: str, config: Path, control_socket: Path, args: list[str], log_path: Path
) -> EngineProcess:
    """Start ``doorway <args>`` with its output in ``log_path``; ``name`` and ``control_socket`` label it."""
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_child_env(),
        )
    return EngineProcess(name, config, control_socket, proc, log_path)


def start_engine(
    name: str, workdir: Path, settings: dict[str, dict[str, Any]], extra_args: list[str] | None = None
) -> EngineProcess:
    """Write ``settings`` to ``workdir/name.toml`` and start ``doorway engine`` on it."""
    config = workdir / f"{name}.toml"
    sock = workdir / f"{name}.sock"
    settings = {
        **settings,
        "engine": {**settings.get("engine", {}), "name": name, "control_socket": str(sock)},
    }
    config.write_text(to_toml(settings))
    args = ["engine", "--config", str(config), *(extra_args or [])]
    return start_child(name, config, sock, args, workdir / f"{name}.log")


def start_room_controller(
    name: str, workdir: Path, config: Path, link: Path, seed: int
) -> list[EngineProcess]:
    """The room controller of doorway ``name``: ``doorway mcu-emulator`` on a pseudo-terminal whose path is
    kept at ``link`` (``hwcontrol.device`` in ``config``), and ``doorway hwcontrol`` on ``config``, which
    finds it there. Returns both (emulator first)."""
    emulator = start_child(
        f"{name}-mcu", config, link, ["mcu-emulator", "--link", str(link), "--seed", str(seed)],
        workdir / f"{name}-mcu.log",
    )  # fmt: skip
    bridge = start_child(
        f"{name}-hwcontrol",
        config,
        link,
        ["hwcontrol", "--config", str(config)],
        workdir / f"{name}-hwcontrol.log",
    )
    return [emulator, bridge]


def admin_setup_code(config: Path) -> str:
    """A new one-time setup code for the admin panel of the doorway set up by ``config`` (``doorway admin
    setup-code``), as printed: ``1234-5678-9012-3456``. RuntimeError if the owner exists already."""
    done = subprocess.run(
        [sys.executable, "-m", "app", "admin", "setup-code", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        env=_child_env(),
    )
    match = re.search(r"\b(\d{4}-\d{4}-\d{4}-\d{4})\b", done.stdout)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"doorway admin setup-code failed ({done.returncode}): {done.stderr.strip()}")
    return match.group(1)


def start_admin(name: str, workdir: Path, config: Path) -> EngineProcess:
    """Start ``doorway admin serve`` on ``config`` (the doorway's settings file, which its settings page
    edits); wait for it with :func:`wait_https`."""
    return start_child(
        f"{name}-admin",
        config,
        config,
        ["admin", "serve", "--config", str(config)],
        workdir / f"{name}-admin.log",
    )


def wait_https(port: int, deadline_s: float, child: EngineProcess | None = None) -> None:
    """Wait until the admin panel on 127.0.0.1:``port`` answers ``/healthz``; RuntimeError after
    ``deadline_s`` or as soon as ``child`` has exited (with its log tail)."""
    ctx = ssl.create_default_context()
    # The panel's certificate is its own, self-signed: this probe only asks whether it is up.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if child is not None and child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited ({child.proc.returncode}):\n{child.log_tail()}")
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=2)
        try:
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.2)
    raise RuntimeError(f"the admin panel on port {port} did not come up in {deadline_s:.0f} s")


def wait_for_bench_engines(engines: list[EngineProcess], run_s: float) -> None:
    """Sample CPU and memory once a second until every engine has exited on its own (they run with
    ``--run-seconds``); RuntimeError if one is still running a minute after it should have stopped."""
    deadline = time.monotonic() + run_s + 60
    while any(e.proc.poll() is None for e in engines):
        if time.monotonic() > deadline:
            raise RuntimeError("bench: engines did not stop in time")
        for e in engines:
            e.sample()
        time.sleep(1.0)


def check_bench_records(engines: list[EngineProcess], records: dict[str, Path]) -> None:
    """RuntimeError naming the engine, its exit status and its log tail if one failed or left no record."""
    for e in engines:
        if e.proc.returncode != 0 or not records[e.name].exists():
            raise RuntimeError(f"bench: engine {e.name} failed (exit {e.proc.returncode}):\n{e.log_tail()}")


def stop_engines(engines: list[EngineProcess], timeout_s: float = 10.0) -> None:
    """SIGTERM every engine, wait, and SIGKILL whatever is still running."""
    for e in engines:
        if e.proc.poll() is None:
            e.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for e in engines:
        with contextlib.suppress(subprocess.TimeoutExpired):
            e.proc.wait(max(0.1, deadline - time.monotonic()))
        if e.proc.poll() is None:
            e.proc.kill()
            e.proc.wait()
