"""``doorway bench audio``'s arithmetic: marker matching and the echo metrics, on hand-made records."""

from __future__ import annotations

import math

import pytest

from app.bench.audio import echo_metrics, marker_bound_ms, mouth_to_ear
from app.bench.hoststall import HostStallProbe, summarize

S = 1_000_000_000


def frame(
    t: int, *, active: float, echo_p: float, near_gain: float = 1.0, mic_p: float = 1e-4, out_p: float = 1e-7
) -> list[float]:
    """One frame record as BenchAudioTap writes it: (t, mic, out, speaker, talker active, echo power,
    near power, <out, near>, <near, near>) with the near talker at unit power surviving ×``near_gain``."""
    near_p = 1e-3 if active == 1.0 else 0.0
    nn = near_p * 480
    return [t, mic_p, out_p, 0.0, active, echo_p, near_p, near_gain * nn, nn]


def test_mouth_to_ear_takes_the_first_detection_within_400_ms() -> None:
    emitted = [1 * S, 2 * S, 3 * S, 4 * S]
    detected = [1 * S + 20_000_000, 2 * S + 30_000_000, 2 * S + 40_000_000, 4 * S + 450_000_000]
    # Marker 3 was never detected (lost), marker 4 only too late; a window drops the first.
    assert mouth_to_ear(emitted, detected, 0, 10 * S) == [20.0, 30.0]
    assert mouth_to_ear(emitted, detected, 2 * S, 10 * S) == [30.0]


def test_a_detection_later_than_any_frame_took_is_not_the_marker() -> None:
    ms = 1_000_000
    # Marker 0 heard after 33 ms; marker 1 masked, and its echo round both rooms heard 225 ms after it.
    emitted, detected = [0, 500 * ms], [33 * ms, 725 * ms]
    assert mouth_to_ear(emitted, detected, 0, 10**12) == [33.0, 225.0]
    bound = marker_bound_ms({"latency_ms": {"max": 26.0}})
    assert bound == 56.0
    assert mouth_to_ear(emitted, detected, 0, 10**12, within_ms=bound) == [33.0]
    assert marker_bound_ms({}) == 400.0 and marker_bound_ms({"latency_ms": {"max": 900.0}}) == 400.0


def test_the_near_talkers_drop_is_measured_against_single_talk() -> None:
    frames = []
    t = 0
    # Near end alone: the processing passes the talker at −0.5 dB; with the far end: at −3.5 dB.
    for _ in range(100):
        frames.append(frame(t, active=1.0, echo_p=0.0, near_gain=10 ** (-0.5 / 20)))
        t += 10_000_000
    for _ in range(100):
        frames.append(frame(t, active=1.0, echo_p=1e-4, near_gain=10 ** (-3.5 / 20)))
        t += 10_000_000
    # A pause of the near talker with the far end talking: 1 s to settle, then ERLE frames (mic/out = 30 dB).
    for _ in range(300):
        frames.append(frame(t, active=0.0, echo_p=1e-4, mic_p=1e-4, out_p=1e-7))
        t += 10_000_000
    m = echo_metrics(frames, 0, t)
    assert m["double_talk_near_loss_db"] == pytest.approx(3.0)
    assert m["single_talk_near_loss_db"] == pytest.approx(0.5)
    assert m["double_talk_near_loss_abs_db"] == pytest.approx(3.5)
    assert m["double_talk_blocks"] == m["single_talk_blocks"] == 100
    assert m["erle_db"] == pytest.approx(30.0)
    assert m["erle_blocks"] == 200  # the first second of the pause (and its first frames) left out


def test_echo_metrics_without_such_frames_are_not_numbers() -> None:
    m = echo_metrics([frame(0, active=-1.0, echo_p=0.0)], 0, S)
    assert math.isnan(m["erle_db"]) and math.isnan(m["double_talk_near_loss_db"])


def test_the_video_option_reads_size_and_rate() -> None:
    from app.bench.audio import _video

    assert _video("640x360@60") == {"width": 640, "height": 360, "fps": 60, "bitrate_kbps": 2000}
    assert _video("160x120@5")["bitrate_kbps"] == 100  # the least
    with pytest.raises(SystemExit, match="WIDTHxHEIGHT@FPS"):
        _video("640x360")


def test_the_host_stall_witness_counts_late_wakes_and_matches_them_to_underruns() -> None:
    witness = HostStallProbe(0.2)  # a process of its own: it may take real-time priority there
    witness.proc.wait(30)
    doc = witness.result()
    assert doc is not None and doc["wakes"] > 10 and isinstance(doc["stalls"], list)
    s = 1_000_000_000
    found = {"realtime": True, "stalls": [[5 * s + 100, 7.5], [9 * s, 3.0], [30 * s, 40.0]]}
    # Underruns counted in the seconds ending at 6 s (a stall in it) and at 20 s (none); 30 s is outside.
    summary = summarize(found, 0, 20 * s, [6 * s, 20 * s])
    assert summary == {
        "realtime": True,
        "over_2ms": 2,
        "total_ms": 10.5,
        "max_ms": 7.5,
        "underrun_seconds": 2,
        "underrun_seconds_with_a_stall": 1,
    }
    assert summarize(None, 0, 1, []) is None
