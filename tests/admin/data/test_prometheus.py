"""Prometheus exposition: every line valid for format 0.0.4, one HELP and TYPE per family, units, CIDRs."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from admin.collector import STAGES, Reducer
from admin.history import COLUMN_NAMES
from admin.prometheus import (
    CONTENT_TYPE,
    METRICS,
    allowed,
    escape_help,
    escape_label_value,
    parse_cidrs,
    render,
)
from tests.admin.data.fakes import SENSORS, T0, engine_stats, hw_status

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_VALUE = r'(?:[^"\\\n]|\\[\\"n])*'
LABELS = rf'\{{(?:[a-zA-Z_][a-zA-Z0-9_]*="{LABEL_VALUE}")(?:,[a-zA-Z_][a-zA-Z0-9_]*="{LABEL_VALUE}")*\}}'
VALUE = r"(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]Inf|NaN)"
HELP_RE = re.compile(rf"^# HELP ({NAME}) ((?:[^\\\n]|\\[\\n])*)$")
TYPE_RE = re.compile(rf"^# TYPE ({NAME}) (counter|gauge|histogram|summary|untyped)$")
SAMPLE_RE = re.compile(rf"^({NAME})({LABELS})? ({VALUE})(?: -?\d+)?$")


def parse(text: str) -> dict[str, dict[str, Any]]:
    """Check every line against the format; return families: name → help, type, samples {labels: value}."""
    assert text.endswith("\n")
    families: dict[str, dict[str, Any]] = {}
    current: str | None = None
    for line in text[:-1].split("\n"):
        if m := HELP_RE.match(line):
            name = m.group(1)
            assert name not in families, f"second HELP for {name}"
            families[name] = {"help": m.group(2), "type": None, "samples": {}}
            current = name
        elif m := TYPE_RE.match(line):
            assert m.group(1) == current, f"TYPE for {m.group(1)} outside its family"
            assert families[current]["type"] is None, f"second TYPE for {current}"
            families[current]["type"] = m.group(2)
        elif m := SAMPLE_RE.match(line):
            name, labels, value = m.groups()
            assert name == current, f"sample {name} outside its family"
            assert families[name]["type"] is not None, f"sample of {name} before its TYPE"
            assert (labels or "") not in families[name]["samples"], f"duplicate sample {line}"
            families[name]["samples"][labels or ""] = float(value)
        else:
            raise AssertionError(f"not valid exposition format: {line!r}")
    for name, fam in families.items():
        assert fam["samples"], f"{name} has no samples"
    return families


def full_sample() -> dict[str, Any]:
    r = Reducer()
    args: dict[str, Any] = {
        "hw_status": hw_status(),
        "hw_sensors": SENSORS["sensors"],
        "hw_error": None,
        "engine_error": None,
        "soc_temperature_c": 61.0,
        "system_cpu_percent": 40.0,
    }
    r.reduce(mono=0.0, t=T0, engine=engine_stats(), **args)
    later = engine_stats(shown=6060, rx_bytes=151_500_000, tx_bytes=141_250_000, decoded=4_848_000)
    return r.reduce(mono=1.0, t=T0 + 1, engine=later, **args)


def test_full_sample_renders_valid_text_with_units() -> None:
    text = render(full_sample())
    families = parse(text)
    assert all(name.startswith("doorway_") for name in families)
    assert all(fam["type"] == "gauge" for name, fam in families.items() if not name.endswith("_total"))
    assert families["doorway_audio_underruns_total"]["type"] == "counter"

    def value(name: str, labels: str = "") -> float:
        return float(families[name]["samples"][labels])

    assert value("doorway_engine_up") == 1
    assert value("doorway_hwcontrol_up") == 1
    assert value("doorway_mcu_ready") == 1
    assert value("doorway_video_shown_frames_per_second") == pytest.approx(60)
    assert value("doorway_video_latency_p50_seconds") == pytest.approx(0.0142)
    assert value("doorway_network_receive_bytes_per_second") == pytest.approx(1_500_000)
    assert value("doorway_network_send_bytes_per_second") == pytest.approx(1_250_000)
    assert value("doorway_video_target_bytes_per_second") == pytest.approx(10500 * 125)
    assert value("doorway_network_loss_ratio") == pytest.approx(0.0025)
    assert value("doorway_network_rtt_seconds") == pytest.approx(0.00184)
    assert value("doorway_engine_resident_memory_bytes") == pytest.approx(412.3 * 2**20)
    assert value("doorway_engine_cpu_ratio") == pytest.approx(0.875)
    assert value("doorway_soc_temperature_celsius") == 61
    assert value("doorway_room_illuminance_lux") == 312.5
    assert value("doorway_room_humidity_ratio") == pytest.approx(0.45)
    assert value("doorway_room_presence") == 1
    assert value("doorway_audio_mic_level_dbfs") == -42.5
    stage = families["doorway_stage_latency_p50_seconds"]["samples"]
    assert set(stage) == {f'{{stage="{name}"}}' for name in STAGES}
    assert stage['{stage="decode"}'] == pytest.approx(0.0033)
    # Booleans and whole numbers print as integers.
    assert "\ndoorway_engine_up 1\n" in text
    # Scaled values print without binary noise.
    assert "\ndoorway_video_latency_p50_seconds 0.0142\n" in text


def test_every_history_column_has_a_metric() -> None:
    keys = {m.key for m in METRICS}
    assert set(COLUMN_NAMES) <= keys
    names = [m.name for m in METRICS]
    assert len(names) == len(set(names))
    unit_suffixes = ("_seconds", "_bytes", "_ratio", "_celsius", "_lux", "_dbfs", "_per_second", "_total")
    flags = {"up", "connected", "encrypted", "privacy", "available", "playing", "lost", "presence"}
    for m in METRICS:
        assert m.name.endswith(unit_suffixes) or m.name.rsplit("_", 1)[-1] in flags, m.name


def test_missing_and_nan_values_are_left_out() -> None:
    down = Reducer().empty(T0)
    families = parse(render(down))
    # Only the two "up" gauges remain, both 0; no stage family, no MCU state.
    assert families == {
        "doorway_engine_up": {
            "help": families["doorway_engine_up"]["help"],
            "type": "gauge",
            "samples": {"": 0},
        },
        "doorway_hwcontrol_up": {
            "help": families["doorway_hwcontrol_up"]["help"],
            "type": "gauge",
            "samples": {"": 0},
        },
    }
    text = render({"engine_up": True, "rtt_ms": math.nan, "fps_shown": "fast", "stage_decode_p50_ms": None})
    assert "rtt" not in text
    assert "frames" not in text
    assert "stage" not in text
    assert render({}) == ""


def test_infinities_and_mcu_not_ready() -> None:
    families = parse(
        render({"rtt_ms": math.inf, "av_offset_ms": -math.inf, "hwcontrol_up": True, "mcu_state": "missing"})
    )
    assert families["doorway_network_rtt_seconds"]["samples"][""] == math.inf
    assert families["doorway_av_offset_seconds"]["samples"][""] == -math.inf
    assert families["doorway_mcu_ready"]["samples"][""] == 0


def test_escaping() -> None:
    assert escape_help('a\\b\n"c"') == 'a\\\\b\\n"c"'
    assert escape_label_value('a\\b\n"c"') == 'a\\\\b\\n\\"c\\"'
    # Escaped values still match the grammar.
    assert SAMPLE_RE.match(f'x{{l="{escape_label_value(chr(92) + chr(10) + chr(34))}"}} 1')
    assert HELP_RE.match(f"# HELP x {escape_help('line one' + chr(10) + 'back' + chr(92) + 'slash')}")


def test_content_type() -> None:
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


@pytest.mark.parametrize(
    ("ip", "cidrs", "ok"),
    [
        ("192.168.1.5", ["192.168.1.0/24"], True),
        ("192.168.2.5", ["192.168.1.0/24"], False),
        ("192.168.2.5", ["192.168.1.0/24", "192.168.2.5"], True),
        ("10.1.2.3", ["10.0.0.0/8"], True),
        ("10.1.2.3", ["10.1.2.0/255.255.255.0"], True),
        ("10.1.2.3", ["10.1.2.7/24"], True),  # host bits set: still the /24
        ("::ffff:192.168.1.5", ["192.168.1.0/24"], True),  # dual-stack socket
        ("fd00::1", ["fd00::/8"], True),
        ("fe80::1%eth0", ["fe80::/10"], True),
        ("192.168.1.5", ["::/0"], False),
        ("fd00::1", ["0.0.0.0/0"], False),
        ("127.0.0.1", ["127.0.0.0/8"], True),
        ("127.0.0.1", [], False),
        ("not an ip", ["0.0.0.0/0"], False),
        ("", ["0.0.0.0/0"], False),
        ("192.168.1.5", ["garbage", "192.168.1.0/24"], True),
        ("192.168.1.5", ["garbage"], False),
    ],
)
def test_allowed(ip: str, cidrs: list[str], ok: bool) -> None:
    assert allowed(ip, cidrs) is ok


def test_parse_cidrs() -> None:
    assert [str(n) for n in parse_cidrs(["192.168.1.7/24", " fd00::/8 ", "10.0.0.1"])] == [
        "192.168.1.0/24",
        "fd00::/8",
        "10.0.0.1/32",
    ]
    with pytest.raises(ValueError, match="'nope'"):
        parse_cidrs(["10.0.0.0/8", "nope"])
