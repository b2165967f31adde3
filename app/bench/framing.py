"""``doorway bench framing``: what each framing transform costs per picture, against the 0.5 ms budget.

Each transform (:class:`app.video.framing.Framer`) is applied to ``--frames`` fresh pictures of the
synthetic scene at ``--width`` × ``--height`` (1920×1080 by default), as the capture thread does: a new
frame from the source each time, handed over to the framer. Only :meth:`Framer.apply` is timed
(``time.perf_counter_ns``); rendering the scene is not. Output: one JSON object with per-transform p50, p95
and max in ms, the path taken (numpy or the FFmpeg filter graph) and whether p95 is within the budget.
Run it on a quiet machine: the numbers are wall-clock times on a shared CPU.

``mjpeg_camera``: the same for an MJPEG camera's pictures (the usual 1080p60 USB camera), where the crop is
folded into the 4:2:2 → 4:2:0 conversion every picture needs anyway
(:meth:`app.video.capture.v4l2.V4L2Capture.set_crop`): the time from the decoder's picture to the framed
one, and ``extra_*`` — what the framing adds over the conversion alone, which is what the budget is about.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from app.video.capture.v4l2 import V4L2Capture
from app.video.framing import FramedCapture, Framer, Framing
from app.video.scene import Scene

BUDGET_MS = 0.5
"""The issue's budget per 1080p picture."""

TRANSFORMS: dict[str, Framing] = {
    "none": Framing(),
    "mirror": Framing(mirror=True),
    "rotate 180": Framing(rotation=180),
    "mirror + rotate 180": Framing(mirror=True, rotation=180),
    "zoom 1.25": Framing(zoom=1.25),
    "zoom 1.25 + offset": Framing(zoom=1.25, offset_x=0.5, offset_y=-0.5),
    "zoom 1.25 + mirror": Framing(zoom=1.25, mirror=True),
    "zoom 1.5": Framing(zoom=1.5),
    "rotate 90": Framing(rotation=90),
    "rotate 270 + mirror": Framing(rotation=270, mirror=True),
}


def add_bench_framing_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=300, help="pictures per transform (default 300)")
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")


def _percentile(sorted_ms: list[float], q: float) -> float:
    index = min(len(sorted_ms) - 1, max(0, round(q * (len(sorted_ms) - 1))))
    return sorted_ms[index]


def measure(framing: Framing, scene: Scene, frames: int) -> dict[str, Any]:
    """Time :meth:`Framer.apply` on ``frames`` fresh pictures; the summary in ms."""
    framer = Framer(framing, scene.width, scene.height)
    times: list[float] = []
    for i in range(frames + 5):
        frame = av.VideoFrame(scene.width, scene.height, "yuv420p")
        scene.render_into(frame, i, i * 16_667)
        frame.pts = i
        start = time.perf_counter_ns()
        framer.apply(frame)
        elapsed = (time.perf_counter_ns() - start) / 1e6
        if i >= 5:  # the first pictures build the filter graph's pools
            times.append(elapsed)
    framer.close()
    times.sort()
    p95 = _percentile(times, 0.95)
    return {
        "path": framer.path,
        "p50_ms": round(_percentile(times, 0.5), 3),
        "p95_ms": round(p95, 3),
        "max_ms": round(times[-1], 3),
        "within_budget": p95 <= BUDGET_MS,
    }


CAMERA_TRANSFORMS: dict[str, Framing] = {
    "none": Framing(),
    "zoom 1.25": Framing(zoom=1.25),
    "zoom 1.25 + offset": Framing(zoom=1.25, offset_x=0.5, offset_y=-0.5),
    "zoom 1.25 + mirror": Framing(zoom=1.25, mirror=True),
    "zoom 1.5": Framing(zoom=1.5),
}
"""Framings of an MJPEG camera's pictures, whose crop is folded into the conversion they need anyway."""


def mjpeg_pictures(scene: Scene, count: int) -> list[av.VideoFrame]:
    """``count`` pictures of the scene as an MJPEG camera's decoder hands them over (yuvj422p)."""
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height, encoder.pix_fmt = scene.width, scene.height, "yuvj422p"
    encoder.time_base = Fraction(1, 60)
    decoder = av.CodecContext.create("mjpeg", "r")
    out: list[av.VideoFrame] = []
    for i in range(count):
        frame = av.VideoFrame(scene.width, scene.height, "yuv420p")
        scene.render_into(frame, i, i * 16_667)
        frame = frame.reformat(format="yuvj422p")
        frame.pts = i
        for packet in encoder.encode(frame):
            out += decoder.decode(packet)
    return out


def measure_camera(framing: Framing, pictures: list[av.VideoFrame], frames: int) -> dict[str, Any]:
    """Time an MJPEG camera's conversion with ``framing`` (the crop folded in, the rest by the framer),
    on ``frames`` decoded pictures: what the capture thread spends from the decoder's picture to the one
    it hands on. ``extra_ms`` is what the framing adds to the conversion alone (negative: saves)."""
    width, height = pictures[0].width, pictures[0].height
    camera = V4L2Capture("/dev/bench", width, height, 60, input_format="mjpeg")
    framed = FramedCapture(camera, Framer(framing, width, height))
    times: list[float] = []
    for i in range(frames + 5):
        decoded = pictures[i % len(pictures)]
        start = time.perf_counter_ns()
        frame = camera.convert(decoded)
        if framed.framer.path != "none":
            framed.framer.apply(frame)
        elapsed = (time.perf_counter_ns() - start) / 1e6
        if i >= 5:
            times.append(elapsed)
    framed.framer.close()
    times.sort()
    return {
        "path": framed.path,
        "p50_ms": round(_percentile(times, 0.5), 3),
        "p95_ms": round(_percentile(times, 0.95), 3),
        "max_ms": round(times[-1], 3),
    }


def main(args: argparse.Namespace) -> int:
    scene = Scene(args.width, args.height, 0)
    results = {name: measure(f, scene, args.frames) for name, f in TRANSFORMS.items()}
    pictures = mjpeg_pictures(scene, 30)
    camera = {name: measure_camera(f, pictures, args.frames) for name, f in CAMERA_TRANSFORMS.items()}
    base = camera["none"]
    for row in camera.values():
        row["extra_p50_ms"] = round(row["p50_ms"] - base["p50_ms"], 3)
        row["extra_p95_ms"] = round(row["p95_ms"] - base["p95_ms"], 3)
        row["within_budget"] = row["extra_p95_ms"] <= BUDGET_MS
    out = {
        "size": f"{args.width}x{args.height}",
        "frames": args.frames,
        "budget_ms": BUDGET_MS,
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "transforms": results,
        "mjpeg_camera": camera,
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0
