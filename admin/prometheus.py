"""The latest sample as Prometheus metrics, and who may scrape them.

:func:`render` turns the collector's live sample (``admin/collector.py``) into the Prometheus text
exposition format, version 0.0.4 (served with :data:`CONTENT_TYPE`): for each metric family one ``# HELP``
line, one ``# TYPE`` line and its samples. Names start with ``doorway_`` and carry their unit in base
units (``_seconds``, ``_bytes``, ``_ratio`` for fractions 0–1, ``_celsius``, ``_lux``, ``_dbfs``), as
Prometheus's naming guide asks, so the sample's milliseconds, megabits and percentages are scaled here.
Everything is a gauge except ``doorway_audio_underruns_total``, a counter since the engine started.
Metrics carry no labels except the per-stage latencies, ``doorway_stage_latency_p50_seconds{stage="..."}``.
A value the sample does not have (None, NaN: the engine or the bridge is down, or it does not do that)
is left out, and a family with no values is left out whole, so a dashboard shows a gap rather than a
false zero; ``doorway_engine_up`` and ``doorway_hwcontrol_up`` are always there to say why.

Latency percentiles are the engine's since it started (its histograms are cumulative); rates are over the
collector's last poll interval.

:func:`allowed` checks a scraper's address against the configured CIDR list (the endpoint has no other
authentication; an empty list allows nobody).

Nothing here does I/O; the stage names come from ``admin/collector.py``.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from admin.collector import STAGES

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
"""The Content-Type of :func:`render`'s output."""

_MS: Final = 1e-3
_PERCENT: Final = 1e-2


@dataclass(frozen=True, slots=True)
class Metric:
    """One label-free metric: the sample's ``key``, scaled by ``scale`` to the metric's base unit."""

    key: str
    name: str
    help: str
    scale: float = 1.0
    type: str = "gauge"


METRICS: Final[tuple[Metric, ...]] = (
    Metric("engine_up", "doorway_engine_up", "1 when the engine answers on its control socket, else 0."),
    Metric("hwcontrol_up", "doorway_hwcontrol_up", "1 when the room-controller bridge answers, else 0."),
    Metric("peer_connected", "doorway_peer_connected", "1 while the twin is connected."),
    Metric("encrypted", "doorway_encrypted", "1 when media to and from the twin is encrypted."),
    Metric("privacy", "doorway_privacy", "1 while privacy is on (no camera, no microphone to the twin)."),
    Metric("camera_available", "doorway_camera_available", "1 while the camera delivers pictures."),
    Metric("uptime_s", "doorway_engine_uptime_seconds", "Time since the engine started."),
    Metric("fps_shown", "doorway_video_shown_frames_per_second", "Pictures from the twin shown per second."),
    Metric(
        "video_latency_p50_ms",
        "doorway_video_latency_p50_seconds",
        "Twin's capture to decoded here, median since the engine started.",
        _MS,
    ),
    Metric(
        "video_latency_p99_ms",
        "doorway_video_latency_p99_seconds",
        "Twin's capture to decoded here, 99th percentile since the engine started.",
        _MS,
    ),
    Metric(
        "receive_mbps",
        "doorway_network_receive_bytes_per_second",
        "Media received from the twin, all datagrams.",
        1e6 / 8,
    ),
    Metric("send_mbps", "doorway_network_send_bytes_per_second", "Video sent to the twin.", 1e6 / 8),
    Metric(
        "send_target_kbps",
        "doorway_video_target_bytes_per_second",
        "The video encoder's target rate.",
        1e3 / 8,
    ),
    Metric("loss_percent", "doorway_network_loss_ratio", "Share of packets from the twin lost.", _PERCENT),
    Metric("rtt_ms", "doorway_network_rtt_seconds", "Smoothed round-trip time to the twin.", _MS),
    Metric(
        "audio_latency_p50_ms",
        "doorway_audio_latency_p50_seconds",
        "Twin's microphone to our speaker, median since the engine started.",
        _MS,
    ),
    Metric(
        "audio_concealed_percent",
        "doorway_audio_concealed_ratio",
        "Share of received audio concealed (lost or late) over the last poll interval.",
        _PERCENT,
    ),
    Metric(
        "audio_buffer_p50_ms",
        "doorway_audio_buffer_p50_seconds",
        "Wait of decoded audio before it plays, median since the engine started.",
        _MS,
    ),
    Metric("audio_drift_ppm", "doorway_audio_drift_ratio", "Twin's sound card clock against ours.", 1e-6),
    Metric(
        "av_offset_ms",
        "doorway_av_offset_seconds",
        "Audio minus video playout age (positive: audio later).",
        _MS,
    ),
    Metric(
        "audio_underruns",
        "doorway_audio_underruns_total",
        "Sound card callbacks that found the playout buffer short, since the engine started.",
        type="counter",
    ),
    Metric("audio_playing", "doorway_audio_playing", "1 while audio from the twin is playing."),
    Metric(
        "audio_device_lost", "doorway_audio_device_lost", "1 while the sound card is gone and being reopened."
    ),
    Metric(
        "mic_dbfs", "doorway_audio_mic_level_dbfs", "Microphone level before echo cancellation (smoothed)."
    ),
    Metric("out_dbfs", "doorway_audio_sent_level_dbfs", "Microphone level after echo cancellation, as sent."),
    Metric(
        "engine_cpu_percent",
        "doorway_engine_cpu_ratio",
        "CPU used by the engine process, in cores (1 = one core busy).",
        _PERCENT,
    ),
    Metric(
        "engine_rss_mb",
        "doorway_engine_resident_memory_bytes",
        "Resident memory of the engine process.",
        2.0**20,
    ),
    Metric(
        "system_cpu_percent",
        "doorway_system_cpu_ratio",
        "CPU used by the whole machine, share of all cores.",
        _PERCENT,
    ),
    Metric("soc_temperature_c", "doorway_soc_temperature_celsius", "Hottest thermal zone of the SoC."),
    Metric("mcu_rtt_ms", "doorway_mcu_rtt_seconds", "Round-trip time to the room controller.", _MS),
    Metric("room_lux", "doorway_room_illuminance_lux", "Room illuminance from the room controller."),
    Metric(
        "room_temperature_c", "doorway_room_temperature_celsius", "Room temperature from the room controller."
    ),
    Metric(
        "room_humidity_percent",
        "doorway_room_humidity_ratio",
        "Room relative humidity from the room controller.",
        _PERCENT,
    ),
    Metric("presence", "doorway_room_presence", "1 when someone is in the room."),
    Metric("sensors_age_s", "doorway_room_sensors_age_seconds", "Age of the room controller's last report."),
)
"""The label-free metrics, in output order."""

STAGE_METRIC: Final = "doorway_stage_latency_p50_seconds"
_STAGE_HELP: Final = (
    "Per-stage latency, median since the engine started; stage is one of: " + ", ".join(STAGES) + "."
)
MCU_READY_METRIC: Final = "doorway_mcu_ready"
_MCU_READY_HELP: Final = "1 when the room controller is connected and talking, 0 when missing or refused."


def escape_help(text: str) -> str:
    """A ``# HELP`` docstring as the format wants it: backslash and line feed escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label_value(text: str) -> str:
    """A label value as the format wants it: backslash, double quote and line feed escaped."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value(v: object, scale: float) -> str | None:
    """The sample value ``v`` scaled, in the format's float syntax; None for missing/NaN/non-numbers."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if not isinstance(v, int | float):
        return None
    f = float(v) * scale
    if math.isnan(f):
        return None
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if f.is_integer() and abs(f) < 1e15:
        return str(int(f))
    # 12 significant digits: more than any of these measurements has, and no scaling noise such as
    # 14.2 ms printing as 0.014199999999999999 s.
    return format(f, ".12g")


def _family(out: list[str], name: str, help_text: str, kind: str, samples: Iterable[tuple[str, str]]) -> None:
    """Append a family (HELP, TYPE, then ``name{labels} value`` lines) unless it has no samples."""
    lines = [f"{name}{labels} {value}" for labels, value in samples]
    if lines:
        out.append(f"# HELP {name} {escape_help(help_text)}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(lines)


def render(sample: Mapping[str, Any]) -> str:
    """The exposition text for ``sample`` (a live sample, see ``admin.collector.SAMPLE_KEYS``); keys it
    does not know are ignored. Ends with a line feed."""
    out: list[str] = []
    for m in METRICS:
        v = _value(sample.get(m.key), m.scale)
        _family(out, m.name, m.help, m.type, [] if v is None else [("", v)])
    if sample.get("hwcontrol_up") and isinstance(sample.get("mcu_state"), str):
        ready = "1" if sample["mcu_state"] == "ready" else "0"
        _family(out, MCU_READY_METRIC, _MCU_READY_HELP, "gauge", [("", ready)])
    stages: list[tuple[str, str]] = []
    for stage in STAGES:
        v = _value(sample.get(f"stage_{stage}_p50_ms"), _MS)
        if v is not None:
            stages.append((f'{{stage="{escape_label_value(stage)}"}}', v))
    _family(out, STAGE_METRIC, _STAGE_HELP, "gauge", stages)
    return "\n".join(out) + "\n" if out else ""


# -- who may scrape -------------------------------------------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_cidrs(cidrs: Iterable[str]) -> list[Network]:
    """The networks in ``cidrs`` ("192.168.1.0/24", "10.0.0.5", "fd00::/8"; host bits may be set).
    Raises ValueError naming the first bad entry (for settings validation)."""
    nets: list[Network] = []
    for text in cidrs:
        try:
            nets.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"not an address or network: {text!r} ({exc})") from None
    return nets


def allowed(client_ip: str, cidrs: Iterable[str]) -> bool:
    """Whether ``client_ip`` (as the server saw it) lies in one of ``cidrs``. An IPv4 address seen as
    IPv6 (``::ffff:a.b.c.d``, a dual-stack socket) is checked as IPv4; an IPv6 zone (``%eth0``) is
    ignored. An unparseable client address, an empty list, or entries that do not parse allow nothing
    (entries that do parse still count)."""
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for text in cidrs:
        try:
            net = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            continue
        if ip.version == net.version and ip in net:
            return True
    return False
