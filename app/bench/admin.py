"""``doorway bench admin``: how fast the admin panel answers while a 1080p60 call runs on the same machine.

Two paired doorways run as in ``bench video`` (a sends 1920×1080 60 fps at 12 Mb/s to b, every packet
encrypted), and b's admin panel runs as its own process on HTTPS, exactly as on an appliance. The
benchmark creates the owner with a setup code, logs in, and then, for ``--seconds``, asks for the overview
page (``GET /``, the full HTML) and the live sample (``GET /api/live``) in turn, four requests a second,
over a kept-alive TLS connection, timing each from request to the last byte of the answer. It reports
p50/p95/p99/max per URL, and the call's fps and latency over the same time from b's engine, to show the
call was really running.
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.control import ControlClientError, request
from app.launch import (
    EngineProcess,
    admin_setup_code,
    free_tcp_ports,
    free_udp_ports,
    provision_twins,
    start_admin,
    start_engine,
    stop_engines,
    to_toml,
    wait_https,
)

PASSWORD = "bench horse battery staple"


def add_bench_admin_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=60.0, help="how long to ask (s)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of the call before measuring")
    p.add_argument("--rate", type=float, default=4.0, help="requests per second")
    p.add_argument("--json", type=Path, default=None, help="write the result object here")


class _Client:
    """One kept-alive HTTPS connection to the panel (self-signed: the bench does not check the name)."""

    def __init__(self, port: int) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        self.cookies: dict[str, str] = {}
        self.csrf = ""
        self.reconnects = 0

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes, float]:
        headers = {
            "Host": "doorway.local",
            "Accept": "application/json" if path.startswith("/api") else "text/html",
        }
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
            headers["X-CSRF-Token"] = self.csrf
        start = time.perf_counter()
        try:
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # The server closed the kept-alive connection (uvicorn's idle timeout is 5 s); a browser opens
            # a new one and asks again, and the time of that, handshake included, is what its user waits.
            self.reconnects += 1
            self.conn.close()
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
        payload = resp.read()
        elapsed = (time.perf_counter() - start) * 1000
        for header, value in resp.getheaders():
            if header.lower() == "set-cookie":
                name, _, rest = value.partition("=")
                self.cookies[name.strip()] = rest.split(";", 1)[0]
        return resp.status, payload, elapsed


def _pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {
        "count": len(values),
        "p50": round(float(np.percentile(a, 50)), 2),
        "p95": round(float(np.percentile(a, 95)), 2),
        "p99": round(float(np.percentile(a, 99)), 2),
        "max": round(float(a.max()), 2),
    }


def run(opts: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="doorway-bench-admin-") as tmp:
        work = Path(tmp)
        pa, pb = free_udp_ports(2)
        states = provision_twins(work, ("a", "b"), (pa, pb))
        engines: list[EngineProcess] = []
        (https,) = free_tcp_ports(1)
        video = {"width": 1920, "height": 1080, "fps": 60, "bitrate_kbps": 12000}
        try:
            for name, role, port, peer in (("b", "receive", pb, pa), ("a", "send", pa, pb)):
                settings: dict[str, dict[str, Any]] = {
                    "engine": {"role": role, "state_dir": str(states[name])},
                    "capture": {"backend": "synthetic"},
                    "video": video,
                    "network": {"listen_host": "127.0.0.1", "listen_port": port, "peer_host": "127.0.0.1",
                                "peer_port": peer},
                    "display": {"backend": "null"},
                    "audio": {"enabled": False},
                }  # fmt: skip
                engines.append(start_engine(name, work, settings, []))
            b_sock = engines[0].control_socket
            admin_cfg = work / "admin.toml"
            admin_cfg.write_text(
                to_toml(
                    {
                        "engine": {"name": "b", "state_dir": str(states["b"]), "control_socket": str(b_sock)},
                        "hwcontrol": {"control_socket": str(work / "hwcontrol.sock")},
                        "admin": {"listen_host": "127.0.0.1", "https_port": https, "http_port": 0},
                    }
                )
            )
            code = admin_setup_code(admin_cfg)
            engines.append(start_admin("b", work, admin_cfg))
            wait_https(https, 30, engines[-1])
            client = _Client(https)
            status, body, _ = client.call("GET", "/api/auth/csrf")
            client.csrf = json.loads(body)["csrf_token"]
            status, body, _ = client.call(
                "POST", "/api/auth/setup", {"code": code, "username": "owner", "password": PASSWORD}
            )
            if status != 201:
                raise RuntimeError(f"bench admin: set-up failed ({status}): {body[:200]!r}")
            client.csrf = json.loads(body)["csrf_token"]
            time.sleep(opts.warmup)
            before = request(b_sock, "stats")["display"]["frames"]
            pages: list[float] = []
            live: list[float] = []
            errors = 0
            started = time.monotonic()
            n = 0
            while time.monotonic() - started < opts.seconds:
                path = "/" if n % 2 == 0 else "/api/live"
                status, _, ms = client.call("GET", path)
                if status != 200:
                    errors += 1
                (pages if path == "/" else live).append(ms)
                n += 1
                wake = started + n / opts.rate
                time.sleep(max(0.0, wake - time.monotonic()))
            elapsed = time.monotonic() - started
            stats = request(b_sock, "stats")
            # The pages were about the real call: the panel's own last sample shows b's engine in it.
            _, body, _ = client.call("GET", "/api/live")
            sample = json.loads(body)
            fps = (stats["display"]["frames"] - before) / elapsed
        finally:
            stop_engines(engines)
    return {
        "seconds": opts.seconds,
        "overview_page_ms": _pct(pages),
        "live_api_ms": _pct(live),
        "errors": errors,
        "reconnects": client.reconnects,
        "call": {
            "fps_shown": round(fps, 2),
            "capture_to_decoded_ms": stats.get("decode", {}).get("capture_to_decoded_ms"),
            "encrypted": stats["transport"]["encrypted"],
        },
        "panel_saw": {key: sample.get(key) for key in ("engine_up", "call_state", "fps_shown", "video_mode")},
    }


def main(opts: argparse.Namespace) -> int:
    try:
        result = run(opts)
    except (ControlClientError, RuntimeError) as exc:
        print(f"bench admin: {exc}", file=sys.stderr)
        return 1
    page, live, call = result["overview_page_ms"], result["live_api_ms"], result["call"]
    print("| URL | requests | p50 ms | p95 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|")
    for name, r in (("GET / (overview)", page), ("GET /api/live", live)):
        print(f"| {name} | {r['count']} | {r['p50']} | {r['p95']} | {r['p99']} | {r['max']} |")
    print(
        f"call meanwhile: {call['fps_shown']} fps shown, encrypted {call['encrypted']}, "
        f"errors {result['errors']}; the panel saw {result['panel_saw']}"
    )
    if opts.json is not None:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0
