"""Starting doorway engines as child processes on this machine: the demo and the benchmark use it.

Each child is a real ``doorway engine`` process with its own settings file (written here as TOML), its own
UDP port on loopback and its own control socket, exactly as two appliances would run, only closer together.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
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
    log_path = workdir / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOORWAY_")}
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "engine", "--config", str(config), *(extra_args or [])],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    return EngineProcess(name, config, sock, proc, log_path)


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
