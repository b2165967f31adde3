"""Realistic answers of the engine's and the bridge's control sockets, for the data-layer tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ENGINE = Path("/run/doorway/engine.sock")
HWCONTROL = Path("/run/doorway/hwcontrol.sock")
T0 = 1_700_000_000.0


def hist(p50: float, p99: float | None = None, count: int = 1000) -> dict[str, Any]:
    p99 = p99 if p99 is not None else p50 * 2
    return {"count": count, "mean": p50 * 1.1, "p50": p50, "p95": p99 * 0.9, "p99": p99, "max": p99 * 1.5}


def engine_stats(
    *,
    uptime_s: float = 100.0,
    shown: int = 6000,
    rx_bytes: int = 150_000_000,
    tx_bytes: int = 140_000_000,
    decoded: int = 4_800_000,
    concealed: int = 4_800,
    peer_connected: bool = True,
    privacy: bool = False,
    failure: str | None = None,
    paired: bool = True,
) -> dict[str, Any]:
    """A ``stats`` response shaped as app/CONTROL.md and app/engine/engine.py describe it."""
    status = {
        "name": "kitchen",
        "role": "duplex",
        "uptime_s": uptime_s,
        "peer": "192.168.1.20:47000",
        "peer_connected": peer_connected,
        "encoder": "libx264",
        "camera_available": True,
        "video": {"width": 1920, "height": 1080, "fps": 60},
        "failure": failure,
        "privacy": privacy,
        "privacy_reason": "privacy button" if privacy else None,
        "hwcontrol": {"connected": True, "bridge_state": "ready", "events": 3},
        "encrypted": True,
        "identity": {"device_id": "dw-abc", "fingerprint": "ab:cd"},
        "twin": {"name": "studio", "device_id": "dw-def", "fingerprint": "ef:01"} if paired else None,
    }
    return {
        "ok": True,
        "status": status,
        "process": {"cpu_percent": 87.5, "rss_mb": 412.3},
        "network": {
            "datagrams": 123456,
            "bytes": rx_bytes,
            "malformed": 0,
            "strangers": 0,
            "replays": 0,
            "media_packets": 120000,
            "frames_complete": 5990,
            "frames_to_decoder": 5990,
            "frames_expired": 2,
            "assembler": {"fec_recovered_fragments": 3},
            "jitter": {},
            "nack": {},
            "rtt_ms": 1.84,
            "jitter_ms": 0.31,
            "loss_percent": 0.25,
            "peer_sees_loss_percent": 0.1,
            "assembly_ms": hist(0.9),
            "capture_to_complete_ms": hist(8.0),
        },
        "transport": {"congestion": {"target_bps": 11_000_000}, "target_kbps": 11000.0, "encrypted": True},
        "session": {"established": True, "live": True, "epoch": 2, "session_age_s": 50.0},
        "capture": {
            "source": "v4l2 /dev/video0",
            "frames": 6000,
            "slate_frames": 0,
            "dropped_encoder_busy": 0,
        },
        "encode": {
            "encoder": "libx264",
            "frames": 6000,
            "keyframes": 3,
            "bytes": 140_000_000,
            "target_kbps": 10500,
            "encoder_kbps": 10500,
            "dropped_sender_busy": 0,
            "capture_to_encoded_ms": hist(6.5),
        },
        "send": {
            "frames": 6000,
            "packets": 130000,
            "bytes": tx_bytes,
            "send_errors": 0,
            "pacing_ms": hist(1.2),
            "capture_to_sent_ms": hist(8.1),
        },
        "decode": {
            "frames": 5990,
            "decode_errors": 0,
            "decode_ms": hist(3.3),
            "capture_to_decoded_ms": hist(14.2, 31.0),
        },
        "display": {"frames": shown, "replaced_before_shown": 4, "decoded_to_shown_ms": hist(4.4)},
        "audio": {
            "device": "synthetic",
            "device_stats": {"callbacks": 20000, "lost": False, "reopened": 0},
            "codec": "opus",
            "bitrate_kbps": 128,
            "playing": True,
            "samples_decoded": decoded,
            "samples_concealed": concealed,
            "concealed_percent": 0.1,
            "underruns": 2,
            "drift_ppm": 12.5,
            "buffer_ms": hist(7.5),
            "latency_ms": hist(22.0),
            "av_offset_ms": -3.0,
            "process_ms": hist(0.8),
            "processing": {"echo_cancellation": True, "mic_dbfs": -42.5, "out_dbfs": -55.0},
        },
    }


def hw_status(state: str = "ready", message: str | None = None) -> dict[str, Any]:
    return {
        "ok": True,
        "state": state,
        "message": message or ("MCU missing: /dev/ttyACM0" if state == "missing" else f"{state}"),
        "device": "/dev/ttyACM0",
        "mcu": {"protocol": "1.0", "firmware": "0.3.1", "build": "x"} if state == "ready" else None,
        "lights": {},
        "scene": 3,
        "counters": {"frames_rx": 10},
        "rtt_ms": 2.5,
    }


SENSORS = {
    "ok": True,
    "sensors": {
        "age_s": 0.4,
        "lux": 312.5,
        "temperature_c": 21.25,
        "humidity_percent": 45.0,
        "presence": True,
        "mcu_uptime_ms": 1234,
    },
}
