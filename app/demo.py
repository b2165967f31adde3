"""``doorway demo``: two doorways on this machine in a call, with synthetic cameras, and live statistics.

Both doorways are real ``doorway engine`` processes joined over loopback UDP, each sending its synthetic
room and showing the other's; the demo only starts them and reads their control sockets once a second.
Where a display is available (``DISPLAY`` or ``WAYLAND_DISPLAY`` set) each one opens a window showing what
it receives; otherwise they use the null sink.
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
from app.launch import EngineProcess, free_udp_ports, provision_twins, start_engine, stop_engines


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=None, help="stop after this long (default: until Ctrl-C)")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--bitrate-kbps", type=int, default=4000)
    p.add_argument("--display", choices=["auto", "null", "sdl"], default="auto")
    p.add_argument(
        "--keep", type=Path, default=None, help="keep the engines' configs and logs in this folder"
    )


def _settings(
    opts: argparse.Namespace, port: int, peer: int, display: str, seed: int, title: str, state_dir: Path
) -> dict[str, Any]:
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
        engines: list[EngineProcess] = [
            start_engine(
                "kitchen",
                work,
                _settings(
                    opts, pa, pb, display, 1, "Doorway: the kitchen sees the studio", states["kitchen"]
                ),
            ),
            start_engine(
                "studio",
                work,
                _settings(opts, pb, pa, display, 2, "Doorway: the studio sees the kitchen", states["studio"]),
            ),
        ]
        print(
            f"doorway demo: two doorways ({opts.width}×{opts.height}@{opts.fps}, {opts.bitrate_kbps} kb/s) "
            f"on 127.0.0.1:{pa} and :{pb}, display {display}; Ctrl-C to stop",
            flush=True,
        )
        started = time.monotonic()
        prev = {e.name: (0, 0) for e in engines}
        last = time.monotonic()
        status = 0
        try:
            while not stop.is_set():
                if opts.seconds is not None and time.monotonic() - started >= opts.seconds:
                    break
                stop.wait(1.0)
                dead = [e for e in engines if e.proc.poll() is not None]
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
            stop_engines(engines)
        for e in engines:
            if e.proc.returncode not in (0, -signal.SIGTERM) and status == 0:
                print(f"doorway demo: {e.name} exited with {e.proc.returncode}:\n{e.log_tail()}", flush=True)
                status = 1
    return status
