"""``doorway demo``: two doorways on this machine in a call, with synthetic hardware, and live statistics.

Each doorway is what an appliance runs, as real processes on one settings file: ``doorway engine`` (joined
to the other over loopback UDP, sending its synthetic room and showing the other's), ``doorway hwcontrol``
with ``doorway mcu-emulator`` as its room controller (lights, sensors, privacy button), and ``doorway admin
serve``, its admin panel on HTTPS at a loopback port, printed at the start with the one-time setup code that
claims it. The demo only starts them and reads the engines' control sockets once a second. Where a display
is available (``DISPLAY`` or ``WAYLAND_DISPLAY`` set) each engine opens a window showing what it receives;
otherwise they use the null sink.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from app.control import ControlClientError, request
from app.launch import (
    EngineProcess,
    admin_setup_code,
    free_tcp_ports,
    free_udp_ports,
    provision_twins,
    start_admin,
    start_engine,
    start_room_controller,
    stop_engines,
)


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=None, help="stop after this long (default: until Ctrl-C)")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--bitrate-kbps", type=int, default=4000)
    p.add_argument("--display", choices=["auto", "null", "sdl"], default="auto")
    p.add_argument(
        "--keep", type=Path, default=None, help="keep the doorways' configs, state and logs in this folder"
    )
    p.add_argument(
        "--engines-only",
        action="store_true",
        help="only the two engines: no room controllers and no admin panels",
    )


def _settings(
    opts: argparse.Namespace, port: int, peer: int, display: str, seed: int, title: str, state_dir: Path
) -> dict[str, dict[str, Any]]:
    return {
        "engine": {"state_dir": str(state_dir)},
        "capture": {"backend": "synthetic", "seed": seed},
        "video": {
            "width": opts.width,
            "height": opts.height,
            "fps": opts.fps,
            "bitrate_kbps": opts.bitrate_kbps,
        },
        "network": {
            "listen_host": "127.0.0.1",
            "listen_port": port,
            "peer_host": "127.0.0.1",
            "peer_port": peer,
        },
        "display": {"backend": display, "fullscreen": False, "window_title": title},
    }


def _panel_line(name: str, config: Path, state_dir: Path, port: int) -> str:
    """Where doorway ``name``'s admin panel is and how to claim it (made before the panel starts)."""
    from admin import tls

    code = admin_setup_code(config)
    try:
        fingerprint = tls.fingerprint(tls.ensure_certificate(state_dir).cert)
    except tls.TlsError as exc:
        raise RuntimeError(str(exc)) from None
    return (
        f"{name}'s admin panel: https://127.0.0.1:{port}/ — setup code {code}\n"
        f"  (its certificate is the doorway's own; SHA-256 {fingerprint})"
    )


def _direction(stats: dict[str, Any], prev: tuple[int, int], dt: float) -> tuple[str, tuple[int, int]]:
    """One line about what a doorway receives, from its stats and the (frames, bytes) of the last poll."""
    display = stats.get("display", {})
    decode = stats.get("decode", {})
    net = stats.get("network", {})
    frames = int(display.get("frames", 0))
    rx_bytes = int(net.get("bytes", 0))
    fps = (frames - prev[0]) / dt if dt > 0 else 0.0
    mbps = (rx_bytes - prev[1]) * 8 / 1e6 / dt if dt > 0 else 0.0
    lat = decode.get("capture_to_decoded_ms", {})
    rtt = net.get("rtt_ms")
    text = (
        f"{fps:5.1f} fps shown, capture→decoded p50 {lat.get('p50', '-')} ms p99 {lat.get('p99', '-')} ms, "
        f"{mbps:5.2f} Mb/s, loss {net.get('loss_percent', 0)} %, rtt {rtt if rtt is not None else '-'} ms"
    )
    audio = stats.get("audio")
    if audio is not None:
        alat = audio.get("latency_ms", {})
        text += (
            f"; audio {'playing' if audio.get('playing') else 'silent'}, capture→speaker p50 "
            f"{alat.get('p50', '-')} ms, {audio.get('concealed_percent', 0)} % concealed"
        )
    return text, (frames, rx_bytes)


def run_demo(opts: argparse.Namespace) -> int:
    display = opts.display
    if display == "auto":
        display = "sdl" if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") else "null"
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with tempfile.TemporaryDirectory(prefix="doorway-demo-") as tmp:
        work = opts.keep if opts.keep is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        pa, pb = free_udp_ports(2)
        # The two doorways are paired the way an installer pairs them; every packet between them is sealed.
        states = provision_twins(work, ("kitchen", "studio"), (pa, pb))
        https_ports = free_tcp_ports(2)
        engines: list[EngineProcess] = []
        services: list[EngineProcess] = []
        panels: list[str] = []
        try:
            for i, (name, port, peer, title) in enumerate(
                (
                    ("kitchen", pa, pb, "the kitchen sees the studio"),
                    ("studio", pb, pa, "the studio sees the kitchen"),
                )
            ):
                settings = _settings(opts, port, peer, display, i + 1, f"Doorway: {title}", states[name])
                link = work / f"{name}-mcu"
                if not opts.engines_only:
                    settings["hwcontrol"] = {
                        "device": str(link),
                        "control_socket": str(work / f"{name}-hw.sock"),
                    }
                    settings["admin"] = {
                        "listen_host": "127.0.0.1",
                        "https_port": https_ports[i],
                        "http_port": 0,
                    }
                engines.append(start_engine(name, work, settings))
                if opts.engines_only:
                    continue
                config = engines[-1].config
                services += start_room_controller(name, work, config, link, seed=i + 1)
                panels.append(_panel_line(name, config, states[name], https_ports[i]))
                services.append(start_admin(name, work, config))
        except (RuntimeError, OSError) as exc:
            stop_engines(engines + services)
            print(f"doorway demo: could not start the doorways: {exc}", flush=True)
            return 1
        print(
            f"doorway demo: two doorways ({opts.width}×{opts.height}@{opts.fps}, {opts.bitrate_kbps} kb/s) "
            f"on 127.0.0.1:{pa} and :{pb}, display {display}; Ctrl-C to stop",
            flush=True,
        )
        for line in panels:
            print(line, flush=True)
        started = time.monotonic()
        prev = {e.name: (0, 0) for e in engines}
        last = time.monotonic()
        status = 0
        try:
            while not stop.is_set():
                if opts.seconds is not None and time.monotonic() - started >= opts.seconds:
                    break
                stop.wait(1.0)
                dead = [e for e in engines + services if e.proc.poll() is not None]
                if dead:
                    for e in dead:
                        print(
                            f"doorway demo: {e.name} exited ({e.proc.returncode}):\n{e.log_tail()}",
                            flush=True,
                        )
                    status = 1
                    break
                now = time.monotonic()
                parts = []
                for e in engines:
                    try:
                        resp = request(e.control_socket, "stats", timeout=2.0)
                    except ControlClientError:
                        parts.append(f"{e.name}: starting…")
                        continue
                    text, prev[e.name] = _direction(resp, prev[e.name], now - last)
                    parts.append(f"{e.name} sees: {text}")
                last = now
                print(f"[{now - started:5.1f}s] " + " | ".join(parts), flush=True)
        finally:
            stop_engines(services + engines)
        for e in engines + services:
            if e.proc.returncode not in (0, -signal.SIGTERM) and status == 0:
                print(f"doorway demo: {e.name} exited with {e.proc.returncode}:\n{e.log_tail()}", flush=True)
                status = 1
    return status
