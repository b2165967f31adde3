"""``doorway bench video``: glass-to-decode latency of real doorway processes on loopback.

A sender and a receiver doorway run as separate ``doorway engine`` processes with the synthetic camera and
the null sink (``--duplex``: two doorways each sending and showing). The synthetic source stamps each
picture's index and capture time (CLOCK_MONOTONIC, shared by processes on one host) into its pixels; the
receiver reads the stamp from every decoded picture. Latency is decode-ready time minus the stamped capture
time. Only frames captured inside the measurement window (after ``--warmup`` seconds) count. With
``--against aiortc`` the same scene, size, fps and bitrate also go through aiortc (H.264 and VP8), measured by
the same arithmetic (app/bench/metrics.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from app.bench.metrics import FrameRecord, summarize
from app.launch import EngineProcess, free_udp_ports, start_engine, stop_engines

log = logging.getLogger(__name__)


def add_bench_video_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--fps", type=int, default=60)
    p.add_argument("--seconds", type=float, default=60.0, help="measurement window (s)")
    p.add_argument(
        "--warmup", type=float, default=3.0, help="seconds ignored at the start (process start-up)"
    )
    p.add_argument("--bitrate-kbps", type=int, default=12000)
    p.add_argument(
        "--encoder", default="auto", choices=["auto", "x264", "nvenc-h264", "nvenc-hevc", "v4l2m2m"]
    )
    p.add_argument("--preset", default=None, help="libx264 preset (default: the settings default)")
    p.add_argument("--duplex", action="store_true", help="both doorways send and receive at once")
    p.add_argument("--against", choices=["aiortc"], default=None, help="also run aiortc (H.264 and VP8)")
    p.add_argument("--json", type=Path, default=None, help="write the result rows here (a JSON list)")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG of latency over time and histograms")
    p.add_argument(
        "--keep", type=Path, default=None, help="keep the engines' configs and logs in this folder"
    )


def _engine_settings(opts: argparse.Namespace, role: str, port: int, peer_port: int) -> dict[str, Any]:
    video: dict[str, Any] = {
        "width": opts.width,
        "height": opts.height,
        "fps": opts.fps,
        "bitrate_kbps": opts.bitrate_kbps,
        "encoder": opts.encoder,
    }
    if opts.preset:
        video["x264_preset"] = opts.preset
    return {
        "engine": {"role": role},
        "capture": {"backend": "synthetic"},
        "video": video,
        "network": {
            "listen_host": "127.0.0.1",
            "listen_port": port,
            "peer_host": "127.0.0.1",
            "peer_port": peer_port,
        },
        "display": {"backend": "null"},
        "logging": {"level": "info"},
    }


def _row(
    opts: argparse.Namespace,
    sender: EngineProcess,
    receiver: EngineProcess,
    sender_doc: dict[str, Any],
    receiver_doc: dict[str, Any],
    window: tuple[int, int],
) -> tuple[dict[str, Any], list[FrameRecord]]:
    lo, hi = window
    records = [FrameRecord(**r) for r in receiver_doc["records"]]
    inside = [r for r in records if r.corrupt or lo <= r.captured_us * 1000 < hi]
    # Corrupt frames carry no capture time: keep those decoded inside the window (plus the pipeline delay).
    inside = [r for r in inside if not r.corrupt or lo <= r.decoded_ns < hi + 1_000_000_000]
    sent = [t for t in sender_doc["sent_captured_ns"] if lo <= t < hi]
    stats = sender_doc["stats"]
    encode = stats.get("encode", {})
    frames = max(1, encode.get("frames", 1))
    row: dict[str, Any] = {
        "system": "doorway",
        "width": opts.width,
        "height": opts.height,
        "fps_target": opts.fps,
        "seconds": opts.seconds,
        "encoder": encode.get("encoder", "?"),
        "bitrate_kbps": opts.bitrate_kbps,
        "encoded_kbps": round(encode.get("bytes", 0) * 8 / 1000 / (frames / opts.fps), 1),
        "frames_sent": len(sent),
        **summarize(inside, seconds=opts.seconds, fps_target=opts.fps),
        "cpu_percent": {"sender": sender.cpu_mean, "receiver": receiver.cpu_mean},
        "rss_mb": {"sender": round(sender.rss_max_mb, 1), "receiver": round(receiver.rss_max_mb, 1)},
    }
    if opts.duplex:
        row["direction"] = f"{sender.name}->{receiver.name}"
    return row, inside


def run_doorway(opts: argparse.Namespace) -> list[tuple[dict[str, Any], list[FrameRecord]]]:
    """Run the doorway pair once; one row per direction (two with --duplex)."""
    keep = opts.keep
    with tempfile.TemporaryDirectory(prefix="doorway-bench-") as tmp:
        work = keep if keep is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        pa, pb = free_udp_ports(2)
        role_a, role_b = ("duplex", "duplex") if opts.duplex else ("send", "receive")
        run_s = opts.warmup + opts.seconds + 1.5
        engines: list[EngineProcess] = []
        docs: dict[str, Path] = {}
        t0 = time.monotonic_ns()
        try:
            for name, role, port, peer in (("b", role_b, pb, pa), ("a", role_a, pa, pb)):
                docs[name] = work / f"{name}.record.json"
                args = ["--run-seconds", str(run_s), "--bench-record", str(docs[name])]
                engines.append(start_engine(name, work, _engine_settings(opts, role, port, peer), args))
            deadline = time.monotonic() + run_s + 60
            while any(e.proc.poll() is None for e in engines):
                if time.monotonic() > deadline:
                    raise RuntimeError("bench: engines did not stop in time")
                for e in engines:
                    e.sample()
                time.sleep(1.0)
        finally:
            stop_engines(engines)
        for e in engines:
            if e.proc.returncode != 0 or not docs[e.name].exists():
                raise RuntimeError(
                    f"bench: engine {e.name} failed (exit {e.proc.returncode}):\n{e.log_tail()}"
                )
        b, a = engines
        doc_a = json.loads(docs["a"].read_text())
        doc_b = json.loads(docs["b"].read_text())
        lo = t0 + int(opts.warmup * 1e9)
        window = (lo, lo + int(opts.seconds * 1e9))
        rows = [_row(opts, a, b, doc_a, doc_b, window)]
        if opts.duplex:
            rows.append(_row(opts, b, a, doc_b, doc_a, window))
        return rows


def run_against_aiortc(opts: argparse.Namespace) -> list[tuple[dict[str, Any], list[FrameRecord]]]:
    from app.bench.aiortc_run import run_aiortc

    rows: list[tuple[dict[str, Any], list[FrameRecord]]] = []
    codecs: tuple[Literal["h264", "vp8"], ...] = ("h264", "vp8")
    for codec in codecs:
        row = run_aiortc(
            codec,
            width=opts.width,
            height=opts.height,
            fps=opts.fps,
            seconds=opts.seconds,
            bitrate_kbps=opts.bitrate_kbps,
            warmup_s=opts.warmup,
        )
        rows.append((row, []))
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text summary table of the rows, for the terminal and the README."""
    head = (
        "| system | size | fps shown | corrupt | freezes | p50 ms | p95 ms | p99 ms | max ms | PSNR dB "
        "| CPU % (tx/rx) | RSS MB (tx/rx) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lat = r["latency_ms"]
        name = r["system"] + (f" {r['direction']}" if "direction" in r else "")
        lines.append(
            f"| {name} | {r['width']}×{r['height']}@{r['fps_target']} | {r['fps_shown']} "
            f"| {r['frames_corrupt']} "
            f"| {r['freezes']} | {lat['p50']} | {lat['p95']} | {lat['p99']} | {lat['max']} "
            f"| {r['psnr_db']} "
            f"| {r['cpu_percent']['sender']}/{r['cpu_percent']['receiver']} "
            f"| {r['rss_mb']['sender']}/{r['rss_mb']['receiver']} |"
        )
    return "\n".join(lines)


def plot(path: Path, runs: list[tuple[dict[str, Any], list[FrameRecord]]]) -> None:
    """Latency over time (left) and its histogram (right), one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_h) = plt.subplots(1, 2, figsize=(13, 4.5))
    for row, records in runs:
        good = sorted((r for r in records if not r.corrupt), key=lambda r: r.decoded_ns)
        if not good:
            continue
        t0 = good[0].decoded_ns
        t = [(r.decoded_ns - t0) / 1e9 for r in good]
        lat = [r.decoded_ns / 1e6 - r.captured_us / 1e3 for r in good]
        label = row["system"] + (f" {row['direction']}" if "direction" in row else "")
        ax_t.plot(t, lat, lw=0.6, label=label)
        ax_h.hist(lat, bins=80, histtype="step", label=label)
    ax_t.set_xlabel("time (s)")
    ax_t.set_ylabel("capture → decoded (ms)")
    ax_h.set_xlabel("capture → decoded (ms)")
    ax_h.set_ylabel("frames")
    ax_t.legend(fontsize=8)
    fig.suptitle("doorway bench video")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def main(opts: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    runs = run_doorway(opts)
    if opts.against == "aiortc":
        runs += run_against_aiortc(opts)
    rows = [_json_safe(r) for r, _ in runs]
    print(format_table(rows))
    if opts.json is not None:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps(rows, indent=2) + "\n")
    if opts.plot is not None:
        opts.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(opts.plot, runs)
    return 0
