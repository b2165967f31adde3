"""``doorway bench audio``: mouth-to-ear latency, concealment, echo cancellation and drift of real doorways.

Two ``doorway engine`` processes run on loopback (through the impairment relay when given the same options
as ``bench video``) with the synthetic sound card and a small video stream both ways (for lip sync). The
rooms are scripted:

- doorway **a** is the mouth: speech all the time with a latency marker every 0.5 s; its sound card's
  clock may run ``--drift-ppm`` fast;
- doorway **b** is the ear: its own talker alternates (2 s on, 2 s off), with no markers.

Mouth-to-ear runs a → b: from the moment a marker's first sample reaches a's microphone to the moment it
leaves b's speaker (both CLOCK_MONOTONIC on this host), less the sound cards' own buffering (a's 10 ms capture
block and input latency, b's output latency), which is reported apart. Echo cancellation is measured at
b, which hears a's voice from its speaker all the time: ERLE while b's talker pauses (from one second into
each pause), and how much b's clean voice drops while a talks against while a pauses, from the room's
ground truth.
Underruns, concealment, gaps, buffer level, drift and the audio–video offset come from b's statistics.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.audio.device import CAPTURE_BLOCK, SAMPLE_RATE
from app.bench.hoststall import HostStallProbe, summarize
from app.launch import (
    EngineProcess,
    check_bench_records,
    free_udp_ports,
    provision_twins,
    start_engine,
    stop_engines,
    wait_for_bench_engines,
)
from app.relay import (
    Relay,
    add_impairment_arguments,
    any_impairment,
    impairment_from_args,
    scenario_from_args,
)

log = logging.getLogger(__name__)

CAPTURE_BLOCK_MS = CAPTURE_BLOCK * 1000 / SAMPLE_RATE
"""The microphone block the capture callback receives, ms (10)."""
_FAR_ACTIVE = 1e-7  # echo power (≈ −70 dBFS) above which the far end counts as audible at the microphone


def add_bench_audio_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=60.0, help="measurement window (s)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds ignored at the start")
    p.add_argument("--codec", choices=["opus", "pcm"], default="opus")
    p.add_argument("--bitrate-kbps", type=int, default=128)
    p.add_argument("--drift-ppm", type=float, default=0.0, help="how fast a's sound card runs against b's")
    p.add_argument("--echo-delay-ms", type=float, default=40.0, help="room echo path delay (ms)")
    p.add_argument("--rt60-ms", type=float, default=300.0, help="room reverberation time (ms)")
    p.add_argument(
        "--noise-dbfs",
        type=float,
        default=-70.0,
        help="microphone noise floor of both rooms (dBFS); ERLE cannot be measured above echo-to-noise",
    )
    p.add_argument(
        "--period-ms", type=float, default=2.5, choices=[2.5, 5.0, 10.0], help="sound card speaker period"
    )
    p.add_argument(
        "--noise-suppression", action="store_true", help="turn WebRTC noise suppression on (adds 6 ms)"
    )
    p.add_argument(
        "--video",
        default="640x360@60",
        help="video both ways, WIDTHxHEIGHT@FPS (lip sync, and the load the audio shares the host with)",
    )
    p.add_argument("--json", type=Path, default=None, help="write the result object here")
    p.add_argument("--keep", type=Path, default=None, help="keep the engines' configs and logs here")
    add_impairment_arguments(p)


def _settings(opts: argparse.Namespace, name: str, port: int, peer: int, state_dir: Path) -> dict[str, Any]:
    talker_a = name == "a"
    audio: dict[str, Any] = {
        "backend": "synthetic",
        "codec": opts.codec,
        "bitrate_kbps": opts.bitrate_kbps,
        "room_echo_delay_ms": opts.echo_delay_ms,
        "room_rt60_ms": opts.rt60_ms,
        "room_noise_dbfs": opts.noise_dbfs,
        "acoustic_delay_ms": opts.echo_delay_ms,
        "period_ms": opts.period_ms,
        "noise_suppression": opts.noise_suppression,
        "talker": "speech",
        "talk_pattern": "always" if talker_a else "alternate",
        "talk_s": 2.0,
    }
    if talker_a:
        audio["markers_every_s"] = 0.5
        audio["drift_ppm"] = opts.drift_ppm
    return {
        "engine": {"role": "duplex", "state_dir": str(state_dir)},
        "capture": {"backend": "synthetic", "seed": 1 if talker_a else 2},
        "video": {**_video(opts.video), "encoder": "x264"},
        "network": {
            "listen_host": "127.0.0.1",
            "listen_port": port,
            "peer_host": "127.0.0.1",
            "peer_port": peer,
        },
        "display": {"backend": "null"},
        "audio": audio,
        "logging": {"level": "info"},
    }


def _video(spec: str) -> dict[str, int]:
    """``WIDTHxHEIGHT@FPS`` as the ``[video]`` size, rate and a bitrate for it (2 Mb/s at 640×360@60)."""
    try:
        size, fps = spec.split("@")
        width, height = (int(v) for v in size.split("x"))
        rate = int(fps)
    except ValueError:
        raise SystemExit(f"--video must be WIDTHxHEIGHT@FPS, e.g. 640x360@60, not {spec!r}") from None
    kbps = max(100, round(2000 * width * height * rate / (640 * 360 * 60)))
    return {"width": width, "height": height, "fps": rate, "bitrate_kbps": kbps}


def _window(seconds: list[dict[str, int]], lo: int, hi: int) -> dict[str, int]:
    """The ear's audio counters over [lo, hi): differences of its once-a-second samples nearest the ends."""
    inside = [s for s in seconds if lo <= s["t"] < hi]
    if len(inside) < 2:
        return {}
    first, last = inside[0], inside[-1]
    return {k: last[k] - first[k] for k in first if k != "t"}


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2) if values else math.nan


def mouth_to_ear(
    emitted: list[int], detected: list[int], lo: int, hi: int, within_ms: float = 400.0
) -> list[float]:
    """Latency (ms) of each marker emitted inside [lo, hi): the first detection within ``within_ms`` after it.

    Markers come every 500 ms, so a detection cannot belong to the next one; a marker lost to the network
    and concealed may not be detected at all, and then has no latency."""
    det = sorted(detected)
    out: list[float] = []
    j = 0
    for e in sorted(emitted):
        while j < len(det) and det[j] < e:
            j += 1
        if lo <= e < hi and j < len(det) and det[j] - e < within_ms * 1e6:
            out.append((det[j] - e) / 1e6)
            j += 1
    return out


CONTENT_MARGIN_MS = 30.0
"""How much later than its frame a marker can play: the sound inside a frame lags the frame's capture time
by the twin's processing and codec delay (9 + 2.5 ms), and the sound cards' buffers (≤ 20 ms here) lie
outside the frame's own latency."""


def marker_bound_ms(ear: dict[str, Any]) -> float:
    """The latest a marker can be heard after it was made (ADC → DAC), ms: the longest any frame took from
    the twin's capture to the DAC (the ear's own per-frame measure, ``latency_ms.max``), plus
    :data:`CONTENT_MARGIN_MS`. A detection later than that is not the marker itself but its echo come
    round both rooms (≈ 2 × (ADC → DAC + echo delay), ~180 ms and more) after the marker itself was masked:
    pairing the two would report a latency no frame had. 400 ms when the ear did not measure it."""
    most = (ear.get("latency_ms") or {}).get("max")
    return 400.0 if most is None else min(400.0, float(most) + CONTENT_MARGIN_MS)


def echo_metrics(blocks: list[list[float]], lo: int, hi: int) -> dict[str, float]:
    """ERLE over far-end-only frames, and how much the near talker drops while the far end talks, from b's
    frame records.

    ERLE: frames of b's pauses from 1 s into each pause (so the canceller has had a second of far end to
    itself), where the far end is audible at the microphone and b's own room put no near-end sound in the
    frame or the two before it (the processing delays it by ~9 ms): microphone power over output power,
    summed. The near talker's level: in a set of frames, the least-squares gain g of the clean near talker
    (delayed by the processing) in the output; residual echo and noise are uncorrelated with the near
    talker, so they do not count. It is measured in double talk (b's talker talks and the far end is
    audible) and in near-end single talk (b talks, the far end is silent: the far talker's pauses); the
    drop while the far end talks is their ratio: ``double_talk_near_loss_db`` = −20·log10(g_double/g_single).
    What the processing takes off the near talker with nobody else talking (its high-pass and band-split
    filters: ~0.3 dB) is ``single_talk_near_loss_db`` = −20·log10(g_single), and the two together
    ``double_talk_near_loss_abs_db``.
    """
    mic_far = out_far = 0.0
    dot = nn = 0.0
    dot_single = nn_single = 0.0
    dt_blocks = far_blocks = single_blocks = 0
    pause_start: int | None = None
    recent_near = [1.0, 1.0]
    for b in blocks:
        t, mic_p, out_p, _spk, active, echo_p, near_p, out_near, near_near = b
        t = int(t)
        marker_near = max(recent_near) > 1e-10 or near_p > 1e-10
        recent_near = [recent_near[1], near_p]
        if active < 0 or not lo <= t < hi:
            continue
        if active == 0.0:
            pause_start = t if pause_start is None else pause_start
        else:
            pause_start = None
        if echo_p < _FAR_ACTIVE:
            if active == 1.0:
                dot_single += out_near
                nn_single += near_near
                single_blocks += 1
            continue
        if active == 0.0:
            if pause_start is not None and t - pause_start >= 1_000_000_000 and not marker_near:
                mic_far += mic_p
                out_far += out_p
                far_blocks += 1
        else:
            dot += out_near
            nn += near_near
            dt_blocks += 1

    def loss_db(d: float, n: float) -> float:
        gain = d / n if n > 0 else math.nan
        return -20 * math.log10(gain) if gain > 0 else math.nan

    erle = 10 * math.log10(mic_far / out_far) if out_far > 0 and mic_far > 0 else math.nan
    double = loss_db(dot, nn)
    single = loss_db(dot_single, nn_single)
    return {
        "erle_db": round(erle, 1),
        "erle_blocks": far_blocks,
        "double_talk_near_loss_db": round(double - single, 2),
        "double_talk_blocks": dt_blocks,
        "single_talk_near_loss_db": round(single, 2),
        "single_talk_blocks": single_blocks,
        "double_talk_near_loss_abs_db": round(double, 2),
    }


def run(opts: argparse.Namespace) -> dict[str, Any]:
    _video(opts.video)  # a malformed --video stops here, before anything starts
    with tempfile.TemporaryDirectory(prefix="doorway-bench-audio-") as tmp:
        work = opts.keep if opts.keep is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        pa, pb = free_udp_ports(2)
        relay: Relay | None = None
        network: dict[str, Any] | None = None
        if any_impairment(opts):
            imp = impairment_from_args(opts)
            relay = Relay(
                listen_a=("127.0.0.1", 0),
                listen_b=("127.0.0.1", 0),
                peer_a=("127.0.0.1", pa),
                peer_b=("127.0.0.1", pb),
                a_to_b=imp,
                b_to_a=imp,
                seed=opts.seed,
                scenario=scenario_from_args(opts),
            )
            network = {**imp.to_dict(), "seed": opts.seed}
        peer_a, peer_b = (relay.port_a, relay.port_b) if relay else (pb, pa)
        run_s = opts.warmup + opts.seconds + 1.5
        states = provision_twins(work, ("a", "b"), (pa, pb))
        docs = {n: work / f"{n}.record.json" for n in ("a", "b")}
        engines: list[EngineProcess] = []
        t0 = time.monotonic_ns()
        witness = HostStallProbe(run_s + 10.0)
        if relay is not None:
            relay.start()
        try:
            for name, port, peer in (("b", pb, peer_b), ("a", pa, peer_a)):
                args = ["--run-seconds", str(run_s), "--bench-record", str(docs[name])]
                engines.append(
                    start_engine(name, work, _settings(opts, name, port, peer, states[name]), args)
                )
            wait_for_bench_engines(engines, run_s)
        finally:
            stop_engines(engines)
            if relay is not None:
                relay.stop()
            stalls_doc = witness.result(timeout_s=30.0)  # also when the engines failed: it must not linger
        check_bench_records(engines, docs)
        doc_a = json.loads(docs["a"].read_text())
        doc_b = json.loads(docs["b"].read_text())
    lo = t0 + int(opts.warmup * 1e9)
    hi = lo + int(opts.seconds * 1e9)
    ear = doc_b["stats"].get("audio", {})
    bound = marker_bound_ms(ear)
    # Within the default 400 ms window a detection beyond the bound is still before the next marker, so
    # dropping it afterwards pairs the rest exactly as a window of ``bound`` would.
    matched = mouth_to_ear(
        doc_a["audio"]["markers_emitted_ns"], doc_b["audio"]["markers_detected_ns"], lo, hi
    )
    total = [ms for ms in matched if ms < bound]
    echoes = len(matched) - len(total)
    emitted = [e for e in doc_a["audio"]["markers_emitted_ns"] if lo <= e < hi]
    seconds_b = [x for x in doc_b["audio"]["seconds"] if lo <= x["t"] < hi + 1_000_000_000]
    underrun_ns = [
        cur["t"] for prev, cur in itertools.pairwise(seconds_b) if cur["underruns"] > prev["underruns"]
    ]
    mouth = doc_a["stats"].get("audio", {})
    # ADC → DAC includes the sound cards' own buffering: the 10 ms capture block a sample waits in before
    # its callback, and each card's input and output latency. The pipeline is what is left: from the capture
    # callback that receives the sound to the playback callback that hands it to the card.
    cards_ms = (
        CAPTURE_BLOCK_MS
        + float(mouth.get("input_latency_ms") or 0.0)
        + float(ear.get("output_latency_ms") or 0.0)
    )
    lat = [t - cards_ms for t in total]
    buffer = ear.get("buffer_ms", {})
    window = _window(doc_b["audio"]["seconds"], lo, hi)
    decoded = window.get("samples_decoded", 0)
    concealed = window.get("samples_concealed", 0)
    result: dict[str, Any] = {
        "system": "doorway",
        "seconds": opts.seconds,
        "codec": opts.codec,
        "bitrate_kbps": opts.bitrate_kbps,
        "network": network,
        "mouth_to_ear_ms": {
            "p50": _pct(lat, 50),
            "p99": _pct(lat, 99),
            "max": round(max(lat), 2) if lat else None,
        },
        "markers": {
            "emitted": len(emitted),
            "measured": len(lat),
            "bound_ms": round(bound, 2),
            "echoes_dropped": echoes,
        },
        "mouth_to_ear_total_ms": {
            "p50": _pct(total, 50),
            "p99": _pct(total, 99),
            "max": round(max(total), 2) if total else None,
        },
        "device_buffers_ms": {
            "capture_block": CAPTURE_BLOCK_MS,
            "input": mouth.get("input_latency_ms"),
            "output": ear.get("output_latency_ms"),
        },
        "period_ms": opts.period_ms,
        "video": opts.video,
        "noise_suppression": opts.noise_suppression,
        "room": {"echo_delay_ms": opts.echo_delay_ms, "rt60_ms": opts.rt60_ms, "noise_dbfs": opts.noise_dbfs},
        "gaps_over_20ms": window.get("gaps_over_20ms"),
        "concealed_percent": round(100 * concealed / (decoded + concealed), 3)
        if decoded + concealed
        else None,
        "underruns": window.get("underruns"),
        "frames_lost": window.get("frames_lost"),
        "overruns": mouth.get("capture_overruns", 0) + ear.get("capture_overruns", 0),
        **echo_metrics(doc_b["audio"]["blocks"], lo, hi),
        "drift_ppm": ear.get("drift_ppm"),
        "buffer_ms": {"mean": buffer.get("mean"), "max": buffer.get("max")},
        "buffer_error_ms": ear.get("buffer_error_ms"),
        "av_offset_ms": ear.get("av_offset_ms"),
        "cpu_percent": {e.name: e.cpu_mean for e in engines},
        "host_stalls": summarize(stalls_doc, lo, hi, underrun_ns),
        "ear_stats": ear,
    }
    if relay is not None:
        result["relay"] = relay.stats()
    return result


def format_result(r: dict[str, Any]) -> str:
    m = r["mouth_to_ear_ms"]
    h = r.get("host_stalls") or {}
    host = (
        f"{h['over_2ms']} (max {h['max_ms']}; {h['underrun_seconds_with_a_stall']}/{h['underrun_seconds']})"
        if h
        else "?"
    )
    return "\n".join(
        [
            "| mouth-to-ear p50 / p99 / max ms | gaps > 20 ms | concealed % | underruns | overruns | ERLE dB "
            "| double-talk drop dB | drift ppm | buffer mean / max ms | A/V offset ms "
            "| host stalls > 2 ms (max ms; underrun seconds with one) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {m['p50']} / {m['p99']} / {m['max']} | {r['gaps_over_20ms']} | {r['concealed_percent']} "
            f"| {r['underruns']} | {r['overruns']} | {r['erle_db']} | {r['double_talk_near_loss_db']} "
            f"| {r['drift_ppm']} | {r['buffer_ms']['mean']} / {r['buffer_ms']['max']} "
            f"| {r['av_offset_ms']} | {host} |",
        ]
    )


def main(opts: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = run(opts)
    print(format_result(result))
    if opts.json is not None:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0
