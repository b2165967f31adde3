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

import numpy as np

from app.bench.metrics import FrameRecord, summarize
from app.launch import (
    EngineProcess,
    check_bench_records,
    free_udp_ports,
    provision_twins,
    start_engine,
    stop_engines,
    wait_for_bench_engines,
)
from app.net.impair import ImpairmentSettings, Scenario
from app.relay import (
    Relay,
    add_impairment_arguments,
    any_impairment,
    impairment_from_args,
    scenario_from_args,
)

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
    p.add_argument(
        "--plaintext",
        action="store_true",
        help="run the doorways with network.encryption = off (to measure what encryption costs)",
    )
    p.add_argument("--duplex", action="store_true", help="both doorways send and receive at once")
    p.add_argument("--against", choices=["aiortc"], default=None, help="also run aiortc (H.264 and VP8)")
    p.add_argument("--json", type=Path, default=None, help="write the result rows here (a JSON list)")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG of latency over time and histograms")
    p.add_argument(
        "--keep", type=Path, default=None, help="keep the engines' configs and logs in this folder"
    )
    add_impairment_arguments(p)


def _engine_settings(
    opts: argparse.Namespace, role: str, port: int, peer_port: int, state_dir: Path | None = None
) -> dict[str, Any]:
    video: dict[str, Any] = {
        "width": opts.width,
        "height": opts.height,
        "fps": opts.fps,
        "bitrate_kbps": opts.bitrate_kbps,
        "encoder": opts.encoder,
    }
    if opts.preset:
        video["x264_preset"] = opts.preset
    engine: dict[str, Any] = {"role": role}
    if state_dir is not None:
        engine["state_dir"] = str(state_dir)
    return {
        "engine": engine,
        "capture": {"backend": "synthetic"},
        "video": video,
        "network": {
            "listen_host": "127.0.0.1",
            "listen_port": port,
            "peer_host": "127.0.0.1",
            "peer_port": peer_port,
            "encryption": "off" if opts.plaintext else "required",
        },
        "display": {"backend": "null"},
        # Video alone, as measured before audio existed (bench audio runs both).
        "audio": {"enabled": False},
        "logging": {"level": "info"},
    }


def per_second(timeline: list[list[int]], t0: int, seconds: int) -> tuple[list[float], list[float]]:
    """From (ns, bytes so far, target bit/s) samples: sent kbit/s and target kbit/s for each whole second
    after ``t0`` (ns), ``seconds`` values each (NaN where no sample covers the second)."""
    sent: list[float] = []
    target: list[float] = []
    for i in range(seconds):
        lo, hi = t0 + i * 1_000_000_000, t0 + (i + 1) * 1_000_000_000
        inside = [s for s in timeline if lo <= s[0] < hi + 200_000_000]
        before = [s for s in timeline if s[0] < lo + 200_000_000]
        if not inside or not before:
            sent.append(math.nan)
            target.append(math.nan)
            continue
        a, b = before[-1], inside[-1]
        dt = (b[0] - a[0]) / 1e9
        sent.append(round((b[1] - a[1]) * 8 / 1000 / dt, 1) if dt > 0.5 else math.nan)
        target.append(round(b[2] / 1000, 1))
    return sent, target


def phases(
    scenario: Scenario, records: list[FrameRecord], t0: int, end: int, sent_kbps: list[float]
) -> list[dict[str, Any]]:
    """Latency and bitrate for each scenario step, measured from 2 s after the step began (``settled``)."""
    out = []
    steps = scenario.steps
    for i, step in enumerate(steps):
        start = t0 + int(step.at_s * 1e9)
        stop = t0 + int(steps[i + 1].at_s * 1e9) if i + 1 < len(steps) else end
        settled = [
            r for r in records if not r.corrupt and start + 2_000_000_000 <= r.captured_us * 1000 < stop
        ]
        lat = [r.decoded_ns / 1e6 - r.captured_us / 1e3 for r in settled]
        first_s, last_s = int(step.at_s), int((stop - t0) / 1e9)
        out.append(
            {
                "at_s": step.at_s,
                "until_s": round((stop - t0) / 1e9, 1),
                "settings": step.settings.to_dict(),
                "settled_latency_ms": {
                    "p50": round(float(np.percentile(lat, 50)), 2) if lat else math.nan,
                    "p95": round(float(np.percentile(lat, 95)), 2) if lat else math.nan,
                },
                "sent_kbps_by_second": sent_kbps[first_s:last_s],
            }
        )
    return out


def _row(
    opts: argparse.Namespace,
    sender: EngineProcess,
    receiver: EngineProcess,
    sender_doc: dict[str, Any],
    receiver_doc: dict[str, Any],
    window: tuple[int, int],
    network: dict[str, Any] | None,
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
        "encrypted": not opts.plaintext,
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
    rx_net = receiver_doc["stats"].get("network", {})
    tx_transport = stats.get("transport", {})
    sent_kbps, target_kbps = per_second(sender_doc.get("timeline", []), lo, int(opts.seconds))
    row.update(
        {
            "network": network,
            "loss_before_recovery": rx_net.get("loss_before_recovery"),
            "loss_after_recovery": rx_net.get("loss_after_recovery"),
            "retransmits": tx_transport.get("retransmit", {}).get("retransmitted_packets"),
            "fec_repaired": rx_net.get("fec_repaired_fragments"),
            "keyframes": encode.get("keyframes"),
            "bitrate_kbps_timeline": sent_kbps,
            "estimated_kbps_timeline": target_kbps,
        }
    )
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
        relay, network, scenario = _relay(opts, pa, pb)
        # Each doorway's twin is the relay's port on its side, or the other doorway itself.
        peer_of_a, peer_of_b = (relay.port_a, relay.port_b) if relay else (pb, pa)
        # Paired as an installer would pair them (unless measuring the plaintext path).
        states = {} if opts.plaintext else provision_twins(work, ("a", "b"), (pa, pb))
        t0 = time.monotonic_ns()
        if relay is not None:
            relay.start()
        try:
            for name, role, port, peer in (("b", role_b, pb, peer_of_b), ("a", role_a, pa, peer_of_a)):
                docs[name] = work / f"{name}.record.json"
                args = ["--run-seconds", str(run_s), "--bench-record", str(docs[name])]
                settings = _engine_settings(opts, role, port, peer, states.get(name))
                engines.append(start_engine(name, work, settings, args))
            wait_for_bench_engines(engines, run_s)
        finally:
            stop_engines(engines)
            if relay is not None:
                relay.stop()
        check_bench_records(engines, docs)
        b, a = engines
        doc_a = json.loads(docs["a"].read_text())
        doc_b = json.loads(docs["b"].read_text())
        lo = t0 + int(opts.warmup * 1e9)
        window = (lo, lo + int(opts.seconds * 1e9))
        rows = [_row(opts, a, b, doc_a, doc_b, window, network)]
        if opts.duplex:
            rows.append(_row(opts, b, a, doc_b, doc_a, window, network))
        if relay is not None:
            for row, _ in rows:
                row["relay"] = relay.stats()
        if scenario is not None:
            for (row, records), doc in zip(rows, (doc_a, doc_b), strict=False):
                sent_kbps, _ = per_second(doc.get("timeline", []), t0, int(opts.warmup + opts.seconds))
                row["phases"] = phases(scenario, records, t0, window[1], sent_kbps)
        return rows


def _relay(
    opts: argparse.Namespace, pa: int, pb: int
) -> tuple[Relay | None, dict[str, Any] | None, Scenario | None]:
    """The impairment relay between doorway a (port ``pa``) and b (``pb``), if any option asks for one."""
    if not any_impairment(opts):
        return None, None, None
    settings = impairment_from_args(opts)
    scenario = scenario_from_args(opts)
    relay = Relay(
        listen_a=("127.0.0.1", 0),
        listen_b=("127.0.0.1", 0),
        peer_a=("127.0.0.1", pa),
        peer_b=("127.0.0.1", pb),
        a_to_b=settings,
        b_to_a=settings,
        seed=opts.seed,
        scenario=scenario,
    )
    if scenario is not None:
        network: dict[str, Any] = {
            "scenario": str(opts.scenario),
            "steps": [{"at_s": st.at_s, **st.settings.to_dict()} for st in scenario.steps],
            "seed": opts.seed,
        }
    else:
        network = {**settings.to_dict(), "seed": opts.seed}
    return relay, network, scenario


def run_against_aiortc(opts: argparse.Namespace) -> list[tuple[dict[str, Any], list[FrameRecord]]]:
    from app.bench.aiortc_run import run_aiortc

    impaired = any_impairment(opts)
    impairment: ImpairmentSettings | None = impairment_from_args(opts) if impaired else None
    scenario = scenario_from_args(opts) if impaired else None

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
            impairment=impairment,
            scenario=scenario,
            seed=opts.seed,
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
    if any(r.get("network") for r in rows):
        lines += [
            "",
            "| system | loss before | loss after | retransmits | FEC repaired | keyframes | mean kb/s |",
        ]
        lines.append("|---|---|---|---|---|---|---|")
        for r in rows:
            timeline = r.get("bitrate_kbps_timeline") or []
            sent = [v for v in timeline if isinstance(v, int | float) and math.isfinite(v)]
            mean = round(sum(sent) / len(sent)) if sent else "-"
            lines.append(
                f"| {r['system']} | {r.get('loss_before_recovery', '-')} "
                f"| {r.get('loss_after_recovery', '-')} "
                f"| {r.get('retransmits', '-')} | {r.get('fec_repaired', '-')} | {r.get('keyframes', '-')} "
                f"| {mean} |"
            )
    phased = [r for r in rows if r.get("phases")]
    if phased:
        lines += [
            "",
            "| system | phase | cap kb/s | settled p50 ms | settled p95 ms | sent kb/s, first 5 s |",
            "|---|---|---|---|---|---|",
        ]
        for r in phased:
            for ph in r["phases"]:
                cap = ph["settings"].get("bandwidth_kbps")
                cap_text = f"{cap:g}" if cap else "none"
                first = " ".join(
                    "-" if not isinstance(v, int | float) else str(round(v))
                    for v in ph["sent_kbps_by_second"][:5]
                )
                lat = ph["settled_latency_ms"]
                lines.append(
                    f"| {r['system']} | {ph['at_s']:g}–{ph['until_s']:g} s | {cap_text} "
                    f"| {lat['p50']} | {lat['p95']} | {first} |"
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
