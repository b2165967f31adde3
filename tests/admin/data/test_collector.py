"""The collector: one flat sample from the engine's and the bridge's answers, events, subscribers, history."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from admin.collector import (
    SAMPLE_KEYS,
    STAGES,
    Collector,
    Reducer,
    SocThermometer,
    StateWatch,
    TooManySubscribersError,
)
from admin.history import COLUMN_NAMES, History
from app.control import ControlClientError, ControlServer
from tests.admin.data.fakes import ENGINE, HWCONTROL, SENSORS, T0, engine_stats, hw_status


class World:
    """What the sockets answer, a clock, and the request function the collector is given."""

    def __init__(self) -> None:
        self.t = T0
        self.mono = 1000.0
        self.engine: dict[str, Any] | Exception = engine_stats()
        self.status: dict[str, Any] | Exception = hw_status()
        self.sensors: dict[str, Any] | Exception = SENSORS
        self.calls: list[tuple[Path, str, float]] = []

    def request(self, path: Path, cmd: str, timeout: float = 5.0, **args: Any) -> dict[str, Any]:
        self.calls.append((path, cmd, timeout))
        answer = self.engine if path == ENGINE else self.status if cmd == "status" else self.sensors
        if isinstance(answer, Exception):
            raise answer
        return answer

    def advance(self, s: float = 1.0) -> None:
        self.t += s
        self.mono += s


def make(world: World, history: History, **kw: Any) -> Collector:
    return Collector(
        ENGINE,
        HWCONTROL,
        history,
        clock=lambda: world.t,
        monotonic=lambda: world.mono,
        request=world.request,
        soc_temperature=lambda: 55.5,
        system_cpu=lambda: 33.0,
        **kw,
    )


@pytest.fixture
def history(tmp_path: Path) -> Iterator[History]:
    h = History(tmp_path / "history.db", retention_s=86400.0, max_bytes=10**7)
    yield h
    h.close()


def test_sample_flattened_from_realistic_stats(history: History) -> None:
    world = World()
    c = make(world, history, request_timeout_s=0.7)
    first = c.tick()
    assert set(first) == set(SAMPLE_KEYS)
    # No rates before a second poll.
    assert first["fps_shown"] is None
    assert first["receive_mbps"] is None
    assert first["audio_concealed_percent"] is None

    world.advance(2.0)
    world.engine = engine_stats(
        uptime_s=102.0,
        shown=6000 + 120,
        rx_bytes=150_000_000 + 3_000_000,
        tx_bytes=140_000_000 + 2_500_000,
        decoded=4_800_000 + 95_040,
        concealed=4_800 + 960,
    )
    s = c.tick()
    assert set(s) == set(SAMPLE_KEYS)
    assert c.latest() == s
    expected = {
        "t": T0 + 2.0,
        "engine_up": True,
        "engine_error": None,
        "engine_name": "kitchen",
        "engine_role": "duplex",
        "uptime_s": 102.0,
        "engine_failure": None,
        "call_state": "connected",
        "peer_connected": True,
        "peer_name": "studio",
        "peer_address": "192.168.1.20:47000",
        "encrypted": True,
        "privacy": False,
        "privacy_reason": None,
        "encoder": "libx264",
        "camera_available": True,
        "video_mode": "1920x1080@60",
        "video_latency_p50_ms": 14.2,
        "video_latency_p99_ms": 31.0,
        "send_target_kbps": 10500.0,
        "loss_percent": 0.25,
        "rtt_ms": 1.84,
        "engine_cpu_percent": 87.5,
        "engine_rss_mb": 412.3,
        "system_cpu_percent": 33.0,
        "soc_temperature_c": 55.5,
        "audio_latency_p50_ms": 22.0,
        "mic_dbfs": -42.5,
        "out_dbfs": -55.0,
        "audio_codec": "opus",
        "audio_playing": True,
        "audio_device_lost": False,
        "audio_buffer_p50_ms": 7.5,
        "audio_drift_ppm": 12.5,
        "av_offset_ms": -3.0,
        "audio_underruns": 2.0,
        "stage_capture_to_encoded_p50_ms": 6.5,
        "stage_pacing_p50_ms": 1.2,
        "stage_assembly_p50_ms": 0.9,
        "stage_decode_p50_ms": 3.3,
        "stage_display_p50_ms": 4.4,
        "stage_audio_processing_p50_ms": 0.8,
        "hwcontrol_up": True,
        "hwcontrol_error": None,
        "mcu_state": "ready",
        "mcu_message": "ready",
        "mcu_firmware": "0.3.1",
        "mcu_rtt_ms": 2.5,
        "sensors_age_s": 0.4,
        "room_lux": 312.5,
        "room_temperature_c": 21.25,
        "room_humidity_percent": 45.0,
        "presence": 1.0,
    }
    for key, value in expected.items():
        assert s[key] == value, key
    assert s["fps_shown"] == pytest.approx(60.0)
    assert s["receive_mbps"] == pytest.approx(12.0)
    assert s["send_mbps"] == pytest.approx(10.0)
    assert s["audio_concealed_percent"] == pytest.approx(1.0)
    assert {f"stage_{name}_p50_ms" for name in STAGES} <= set(s)
    # Each poll: engine stats, bridge status, bridge sensors, with the timeout given.
    assert [(p, cmd) for p, cmd, _ in world.calls[-3:]] == [
        (ENGINE, "stats"),
        (HWCONTROL, "status"),
        (HWCONTROL, "sensors"),
    ]
    assert {timeout for _, _, timeout in world.calls} == {0.7}


def test_transport_target_when_not_encoding() -> None:
    stats = engine_stats()
    del stats["encode"]
    s = Reducer().reduce(
        mono=0.0,
        t=T0,
        engine=stats,
        engine_error=None,
        hw_status=None,
        hw_sensors=None,
        hw_error="x",
        soc_temperature_c=None,
        system_cpu_percent=None,
    )
    assert s["send_target_kbps"] == 11000.0
    assert s["stage_capture_to_encoded_p50_ms"] is None


def test_engine_restart_gives_no_rates_for_one_poll(history: History) -> None:
    world = World()
    c = make(world, history)
    c.tick()
    world.advance()
    world.engine = engine_stats(uptime_s=0.5, shown=10, rx_bytes=1000)
    assert c.tick()["fps_shown"] is None
    world.advance()
    world.engine = engine_stats(uptime_s=1.5, shown=70, rx_bytes=1000)
    assert c.tick()["fps_shown"] == pytest.approx(60.0)


def test_call_states() -> None:
    def state(**kw: Any) -> str:
        s = Reducer().reduce(
            mono=0.0,
            t=T0,
            engine=engine_stats(**kw),
            engine_error=None,
            hw_status=None,
            hw_sensors=None,
            hw_error="down",
            soc_temperature_c=None,
            system_cpu_percent=None,
        )
        return str(s["call_state"])

    assert state() == "connected"
    assert state(peer_connected=False) == "waiting"
    assert state(peer_connected=False, paired=False) == "not paired"
    assert state(failure="encode: boom") == "failed"


def test_stale_sensor_readings_are_left_out() -> None:
    stale = {**SENSORS["sensors"], "age_s": 12.0}
    s = Reducer().reduce(
        mono=0.0,
        t=T0,
        engine=None,
        engine_error="down",
        hw_status=hw_status("missing"),
        hw_sensors=stale,
        hw_error=None,
        soc_temperature_c=None,
        system_cpu_percent=None,
    )
    assert s["sensors_age_s"] == 12.0
    assert s["room_lux"] is None
    assert s["presence"] is None
    assert s["mcu_state"] == "missing"


def test_garbage_from_a_socket_reads_as_missing() -> None:
    bad = {
        "ok": True,
        "status": {"uptime_s": "long", "peer_connected": "yes", "video": [1, 2], "twin": "studio"},
        "process": {"cpu_percent": float("nan"), "rss_mb": True},
        "decode": {"capture_to_decoded_ms": {"p50": None}},
        "display": "lots",
        "audio": {"processing": [1]},
    }
    s = Reducer().reduce(
        mono=0.0,
        t=T0,
        engine=bad,
        engine_error=None,
        hw_status={"state": 3, "mcu": "x"},
        hw_sensors={"lux": "bright", "presence": 1},
        hw_error=None,
        soc_temperature_c=None,
        system_cpu_percent=None,
    )
    assert s["engine_up"] is True
    assert s["uptime_s"] is None
    assert s["peer_connected"] is None
    assert s["engine_cpu_percent"] is None
    assert s["engine_rss_mb"] is None
    assert s["video_mode"] is None
    assert s["mcu_state"] is None
    assert s["room_lux"] is None
    assert s["presence"] is None


def test_down_sockets_are_reported_and_the_rest_still_works(history: History) -> None:
    world = World()
    world.engine = ControlClientError("cannot talk to the engine at /run/doorway/engine.sock: refused")
    c = make(world, history)
    s = c.tick()
    assert s["engine_up"] is False
    assert "engine not reachable" in s["engine_error"]
    assert s["call_state"] == "down"
    assert s["fps_shown"] is None
    assert s["hwcontrol_up"] is True
    assert s["room_lux"] == 312.5
    assert s["soc_temperature_c"] == 55.5

    world.engine = engine_stats()
    world.status = FileNotFoundError(2, "No such file or directory")
    s = c.tick()
    assert s["engine_up"] is True
    assert s["hwcontrol_up"] is False
    assert "hwcontrol not reachable" in s["hwcontrol_error"]
    assert s["mcu_state"] is None
    assert s["room_lux"] is None
    # The bridge being down means sensors are not asked for.
    assert world.calls[-1][1] == "status"

    world.engine = {"ok": False, "error": "unknown command 'stats'"}
    s = c.tick()
    assert s["engine_up"] is False
    assert s["engine_error"] == "engine refused 'stats': unknown command 'stats'"


def test_events_on_state_changes(history: History) -> None:
    world = World()
    world.engine = engine_stats(peer_connected=False)
    world.status = hw_status("missing")
    c = make(world, history)

    def step(**kw: Any) -> None:
        world.advance()
        c.tick()

    c.tick()  # first poll: only the abnormal states (MCU missing)
    world.engine = engine_stats(peer_connected=True)
    step()
    world.engine = engine_stats(peer_connected=False)
    step()
    world.engine = engine_stats(peer_connected=False, privacy=True)
    step()
    step()  # nothing changed
    world.engine = engine_stats(peer_connected=False, privacy=False)
    step()
    world.status = hw_status("connecting")
    step()
    world.status = hw_status("ready")
    step()
    world.status = hw_status("refused", "firmware update required: protocol 2.0")
    step()
    world.engine = ControlClientError("refused")
    step()
    world.engine = engine_stats(peer_connected=True, failure="decode: stage crashed")
    step()
    world.status = ControlClientError("gone")
    step()
    world.status = hw_status("ready")
    step()

    got = [(e.source, e.level, e.message) for e in reversed(history.events(0, limit=100))]
    assert got == [
        ("hwcontrol", "warning", "MCU missing: /dev/ttyACM0"),
        ("engine", "info", "peer connected: studio"),
        ("engine", "warning", "peer lost: studio"),
        ("engine", "info", "privacy on (privacy button)"),
        ("engine", "info", "privacy off"),
        ("hwcontrol", "info", "MCU back"),
        ("hwcontrol", "error", "MCU refused: firmware update required: protocol 2.0"),
        (
            "engine",
            "error",
            "engine not answering: engine not reachable at /run/doorway/engine.sock: refused",
        ),
        ("engine", "info", "engine answering again"),
        ("engine", "error", "engine stage failed: decode: stage crashed"),
        ("engine", "info", "peer connected: studio"),
        (
            "hwcontrol",
            "warning",
            "hwcontrol not answering: hwcontrol not reachable at /run/doorway/hwcontrol.sock: gone",
        ),
        ("hwcontrol", "info", "hwcontrol answering again"),
    ]
    assert {e.t for e in history.events(0, limit=100)} <= {world.t - k for k in range(20)}


def test_first_poll_records_only_abnormal_states() -> None:
    watch = StateWatch()
    s = Reducer().empty(T0)
    s.update(engine_up=True, engine_error=None, peer_connected=False, privacy=False)
    s.update(hwcontrol_up=True, hwcontrol_error=None, mcu_state="ready")
    assert watch.update(s) == []
    s.update(peer_connected=True, peer_name=None, peer_address=None)
    assert watch.update(s) == [("engine", "info", "peer connected: the twin")]
    down = Reducer().empty(T0)
    assert StateWatch().update(down) == [
        ("engine", "error", "engine not answering: not polled yet"),
        ("hwcontrol", "warning", "hwcontrol not answering: not polled yet"),
    ]


def test_subscribers_get_samples_and_slow_ones_drop(history: History) -> None:
    world = World()
    c = make(world, history, queue_size=3, max_subscribers=2)
    fast = c.subscribe()
    assert fast.get(timeout_s=0) is None  # nothing polled yet: not primed
    slow = c.subscribe()
    with pytest.raises(TooManySubscribersError):
        c.subscribe()
    for _ in range(5):
        world.advance()
        c.tick()
        assert fast.get(timeout_s=0)["t"] == world.t
    # The slow one kept the newest three and lost two.
    assert [slow.get(timeout_s=0)["t"] for _ in range(3)] == [world.t - 2, world.t - 1, world.t]
    assert slow.get(timeout_s=0.001) is None
    assert slow.dropped == 2
    assert fast.dropped == 0
    assert c.stats() == {"polls": 5, "errors": 0, "subscribers": 2, "dropped_total": 2, "abandoned": 0}

    slow.close()
    late = c.subscribe()  # room again; primed with the latest sample
    assert late.get(timeout_s=0)["t"] == world.t
    with late:
        pass
    assert late.closed
    assert c.stats()["subscribers"] == 1

    world.advance()
    c.tick()
    c.stop()
    # Iteration yields what is queued, then ends because the collector stopped.
    assert [s["t"] for s in fast] == [world.t]
    assert c.stats()["subscribers"] == 0
    assert c.subscribe().get(timeout_s=0) is None


def test_unread_subscriptions_are_abandoned(history: History) -> None:
    world = World()
    c = make(world, history, queue_size=2, abandon_after=3)
    reader = c.subscribe()
    forgotten = c.subscribe()
    for _ in range(4):  # 2 queued, then 2 dropped: still open
        c.tick()
        reader.get(timeout_s=0)
    assert not forgotten.closed
    assert forgotten.get(timeout_s=0) is not None  # reading resets the count
    for _ in range(5):  # 1 more queued, then 3 dropped unread: closed
        c.tick()
        reader.get(timeout_s=0)
    assert forgotten.closed
    assert not reader.closed
    assert c.stats()["abandoned"] == 1
    assert c.stats()["subscribers"] == 1


def test_history_gets_averaged_samples(history: History) -> None:
    world = World()
    c = make(world, history, store_every_s=10.0)
    shown = 0
    for i in range(25):
        # fps alternates 50 / 70 (average 60); lux only on even polls.
        world.engine = engine_stats(uptime_s=100.0 + i, shown=shown)
        shown += 50 if i % 2 == 0 else 70
        world.sensors = SENSORS if i % 2 == 0 else {"ok": True, "sensors": None}
        c.tick()
        world.advance()
    rows = history.samples(0, T0 + 1000, max_points=100)
    # Stored at 10 s and 20 s after the first poll.
    assert len(rows) == 2
    first = rows[0]
    # Polls 0..10 (11 samples, t = T0 .. T0+10) went into the first store.
    assert first["t"] == pytest.approx(T0 + 5.0)
    assert first["fps_shown"] == pytest.approx((50 + 70) * 5 / 10)
    assert first["room_lux"] == pytest.approx(312.5)
    assert first["presence"] == pytest.approx(1.0)
    assert first["engine_cpu_percent"] == pytest.approx(87.5)
    assert first["soc_temperature_c"] == pytest.approx(55.5)
    assert rows[1]["t"] == pytest.approx(T0 + 15.5)
    c.stop()  # stores what was left (polls 21..24)
    rows = history.samples(0, T0 + 1000, max_points=100)
    assert len(rows) == 3
    assert rows[2]["t"] == pytest.approx(T0 + 22.5)


def test_prunes_the_history_now_and_then(tmp_path: Path) -> None:
    h = History(tmp_path / "h.db", retention_s=30.0, max_bytes=10**7)
    try:
        world = World()
        c = make(world, h, store_every_s=5.0, prune_every_s=60.0)
        for _ in range(121):
            c.tick()
            world.advance()
        rows = h.samples(0, T0 + 10_000, max_points=1000)
        # Pruned at 60 s and 120 s: at 120 s nothing older than 90 s is left.
        assert min(r["t"] for r in rows) >= T0 + 90
    finally:
        h.close()


def test_soc_thermometer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i, text in enumerate(["45000\n", "51500\n", "not a number\n"]):
        zone = tmp_path / f"thermal_zone{i}"
        zone.mkdir()
        (zone / "temp").write_text(text)
    (tmp_path / "thermal_zone9").mkdir()  # no temp file: ignored
    assert SocThermometer(tmp_path).read() == 51.5

    class Reading:
        def __init__(self, current: float | None) -> None:
            self.current = current

    import admin.collector as collector_module

    monkeypatch.setattr(
        collector_module.psutil,
        "sensors_temperatures",
        lambda: {"cpu_thermal": [Reading(48.0), Reading(None)], "nvme": [Reading(39.0)]},
        raising=False,
    )
    assert SocThermometer(tmp_path / "none").read() == 48.0
    monkeypatch.setattr(collector_module.psutil, "sensors_temperatures", lambda: {}, raising=False)
    assert SocThermometer(tmp_path / "none").read() is None


def test_thread_survives_a_bug_and_stops(history: History, caplog: pytest.LogCaptureFixture) -> None:
    def broken(path: Path, cmd: str, timeout: float = 5.0, **args: Any) -> dict[str, Any]:
        raise RuntimeError("bug in the request layer")

    c = Collector(
        ENGINE,
        HWCONTROL,
        history,
        interval_s=0.01,
        request=broken,
        soc_temperature=lambda: None,
        system_cpu=lambda: None,
    )
    c.start()
    deadline = time.monotonic() + 10
    while c.errors < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    c.stop()
    assert c.errors >= 2
    assert "collector: poll failed" in caplog.text
    with pytest.raises(RuntimeError, match="already started"):
        c.start()


def test_real_control_sockets(tmp_path: Path, history: History) -> None:
    engine_path = tmp_path / "e.sock"
    hw_path = tmp_path / "h.sock"
    stats = engine_stats()
    del stats["ok"]
    status = hw_status()
    del status["ok"]
    engine = ControlServer(engine_path, {"stats": lambda args: stats})
    bridge = ControlServer(
        hw_path, {"status": lambda args: status, "sensors": lambda args: {"sensors": SENSORS["sensors"]}}
    )
    engine.start()
    bridge.start()
    c = Collector(engine_path, hw_path, history, interval_s=0.02, soc_temperature=lambda: None)
    try:
        sub = c.subscribe()
        c.start()
        s = sub.get(timeout_s=10)
        assert s is not None
        assert s["engine_up"] is True
        assert s["peer_name"] == "studio"
        assert s["hwcontrol_up"] is True
        assert s["room_temperature_c"] == 21.25
        engine.close()
        deadline = time.monotonic() + 10
        while c.latest()["engine_up"] and time.monotonic() < deadline:
            time.sleep(0.01)
        latest = c.latest()
        assert latest["engine_up"] is False
        assert str(engine_path) in latest["engine_error"]
        assert latest["hwcontrol_up"] is True
    finally:
        c.stop()
        bridge.close()
    assert any("engine not answering" in e.message for e in history.events(0))


def test_bad_arguments(history: History) -> None:
    with pytest.raises(ValueError, match="positive"):
        Collector(ENGINE, HWCONTROL, history, interval_s=0)
    with pytest.raises(ValueError, match="at least 1"):
        Collector(ENGINE, HWCONTROL, history, queue_size=0)
    with pytest.raises(ValueError, match="at least 1"):
        Collector(ENGINE, HWCONTROL, history, abandon_after=0)


def test_every_history_column_is_in_the_sample() -> None:
    assert set(COLUMN_NAMES) <= set(SAMPLE_KEYS)
    assert len(SAMPLE_KEYS) == len(set(SAMPLE_KEYS))
