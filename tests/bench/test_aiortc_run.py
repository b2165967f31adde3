"""A short real aiortc baseline run per codec: two peer processes on loopback, measured end to end.

960×540 rather than smaller: below 960 px the stamp uses 8-px blocks that aiortc's VP8 settings (temporal
denoiser with static-thresh 1) sometimes leave stale, which would read as corrupt frames.
"""

from __future__ import annotations

import math
from typing import Literal

import pytest

from app.bench.aiortc_run import (
    AiortcBenchError,
    SdpError,
    candidate_port,
    run_aiortc,
    with_candidate_port,
)
from app.net.impair import ImpairmentSettings

ROW_KEYS = {
    "system",
    "width",
    "height",
    "fps_target",
    "seconds",
    "encoder",
    "bitrate_kbps",
    "frames_sent",
    "frames_shown",
    "frames_corrupt",
    "fps_shown",
    "latency_ms",
    "freezes",
    "max_freeze_ms",
    "psnr_db",
    "cpu_percent",
    "rss_mb",
    "bitrate_kbps_timeline",
    "estimated_kbps_timeline",
}

OFFER = (
    "v=0\r\n"
    "m=video 42831 UDP/TLS/RTP/SAVPF 97 98\r\n"
    "c=IN IP4 127.0.0.1\r\n"
    "a=rtcp:9 IN IP4 0.0.0.0\r\n"
    "a=rtcp-mux\r\n"
    "a=candidate:16572de626da4e5384a0ce2d0d93678a 1 udp 2130706431 127.0.0.1 42831 typ host\r\n"
    "a=end-of-candidates\r\n"
)


@pytest.mark.slow
@pytest.mark.parametrize("codec", ["h264", "vp8"])
def test_run_aiortc_short(codec: Literal["h264", "vp8"]) -> None:
    row = run_aiortc(codec, width=960, height=540, fps=30, seconds=3, bitrate_kbps=500, warmup_s=1.0)

    assert row.keys() >= ROW_KEYS
    assert row["system"] == f"aiortc-{codec}"
    assert row["encoder"] == f"aiortc {codec.upper()}"
    assert (row["width"], row["height"], row["fps_target"], row["seconds"]) == (960, 540, 30, 3)
    assert row["frames_sent"] > 0
    assert row["frames_shown"] > 0
    assert row["fps_shown"] > 0
    assert row["frames_corrupt"] <= max(3, row["frames_shown"] // 10)
    p50 = row["latency_ms"]["p50"]
    assert math.isfinite(p50) and p50 > 0
    assert set(row["latency_ms"]) == {"p50", "p95", "p99", "max"}
    assert set(row["cpu_percent"]) == {"sender", "receiver"}
    assert set(row["rss_mb"]) == {"sender", "receiver"}
    assert row["rss_mb"]["sender"] > 0 and row["rss_mb"]["receiver"] > 0
    # Unimpaired: pinned, so the encoder's target never moves; no relay.
    assert len(row["bitrate_kbps_timeline"]) == 3
    assert row["estimated_kbps_timeline"] == [500.0] * 3
    assert "relay_stats" not in row and "network" not in row


@pytest.mark.slow
def test_run_aiortc_through_relay() -> None:
    impairment = ImpairmentSettings(delay_ms=10, loss_percent=2)
    row = run_aiortc(
        "vp8",
        width=960,
        height=540,
        fps=30,
        seconds=4,
        bitrate_kbps=800,
        warmup_s=1.0,
        impairment=impairment,
        seed=1,
    )

    assert row.keys() >= ROW_KEYS | {"network", "relay_stats"}
    assert row["network"] == {**impairment.to_dict(), "seed": 1}
    assert row["frames_shown"] > 0
    stats = row["relay_stats"]
    assert stats["error"] is None
    # Media one way, RTCP feedback and ICE responses the other: both crossed the relay, nothing else came.
    assert stats["a_to_b"]["delivered"] > 100
    assert stats["b_to_a"]["delivered"] > 0
    assert stats["a_to_b"]["lost_random"] > 0
    assert stats["a_to_b"]["strangers"] == stats["b_to_a"]["strangers"] == 0
    assert len(row["bitrate_kbps_timeline"]) == len(row["estimated_kbps_timeline"]) == 4
    assert all(0 < kbps <= 800 for kbps in row["estimated_kbps_timeline"])


def test_candidate_port_and_rewrite() -> None:
    assert candidate_port(OFFER) == 42831
    rewritten = with_candidate_port(OFFER, 50000)
    assert candidate_port(rewritten) == 50000
    assert "m=video 50000 UDP/TLS/RTP/SAVPF 97 98\r\n" in rewritten
    assert "a=rtcp:9 IN IP4 0.0.0.0\r\n" in rewritten
    assert "42831" not in rewritten


@pytest.mark.parametrize(
    "extra",
    [
        "a=candidate:1 1 udp 2130706431 127.0.0.1 42832 typ host\r\n",  # a second candidate
        "a=candidate:1 1 udp 2130706431 192.168.1.2 42832 typ host\r\n",  # not loopback
        "a=candidate:1 2 udp 2130706431 127.0.0.1 42832 typ host\r\n",  # an RTCP component
    ],
)
def test_candidate_port_refuses_other_candidates(extra: str) -> None:
    with pytest.raises(SdpError):
        candidate_port(OFFER + extra)
    with pytest.raises(SdpError):
        candidate_port(OFFER.replace("a=candidate", "a=x-no-candidate"))


def test_run_aiortc_rejects_unknown_codec() -> None:
    with pytest.raises(ValueError, match="codec"):
        run_aiortc("av1", width=640, height=360, fps=30, seconds=1, bitrate_kbps=500)  # type: ignore[arg-type]


@pytest.mark.parametrize("impairment", [None, ImpairmentSettings(delay_ms=10)])
def test_run_aiortc_reports_child_failure(impairment: ImpairmentSettings | None) -> None:
    # A size the scene refuses makes both peers fail at start-up; the error must carry their output, also
    # while the parent is brokering the signalling of an impaired run.
    with pytest.raises(AiortcBenchError, match=r"aiortc \w+ exited with status"):
        run_aiortc(
            "vp8",
            width=31,
            height=31,
            fps=30,
            seconds=1,
            bitrate_kbps=500,
            warmup_s=0.0,
            impairment=impairment,
        )
