"""Impairment model in simulated time: each effect measured against its setting over many datagrams,
the bottleneck queue, scenario steps, determinism, and the validation and scenario-file error messages."""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path

import pytest

from app.net.impair import (
    Impairment,
    ImpairmentSettings,
    Scenario,
    ScenarioError,
    ScenarioPlayer,
    ScenarioStep,
    load_scenario,
    scenario_path,
)

MS = 1_000_000
S = 1_000_000_000


def tag(i: int, size: int = 8) -> bytes:
    return i.to_bytes(4, "big") + bytes(size - 4)


def index(data: bytes) -> int:
    return int.from_bytes(data[:4], "big")


def run(imp: Impairment, n: int, gap_ns: int, size: int = 8, start_ns: int = 0) -> list[tuple[int, int, int]]:
    """Push ``n`` tagged datagrams ``gap_ns`` apart, collecting (index, pushed ns, released ns) as the
    datagrams are released, polled at every push and every release time (as the relay would)."""
    out: list[tuple[int, int, int]] = []

    def collect(now: int) -> None:
        for d in imp.due(now):
            i = index(d)
            out.append((i, start_ns + i * gap_ns, now))

    for i in range(n):
        now = start_ns + i * gap_ns
        nxt = imp.next_due_ns()
        while nxt is not None and nxt < now:
            collect(nxt)
            nxt = imp.next_due_ns()
        imp.push(now, tag(i, size))
        collect(now)
    while (nxt := imp.next_due_ns()) is not None:
        collect(nxt)
    return out


def bursts(lost: Iterable[int]) -> list[int]:
    """Lengths of runs of consecutive indices."""
    runs: list[int] = []
    prev = -2
    for i in sorted(lost):
        if i == prev + 1:
            runs[-1] += 1
        else:
            runs.append(1)
        prev = i
    return runs


def test_perfect_link_passes_everything_at_once() -> None:
    imp = Impairment(ImpairmentSettings(), seed=1)
    out = run(imp, 1000, MS)
    assert [(i, r - p) for i, p, r in out] == [(i, 0) for i in range(1000)]
    c = imp.counters
    assert (c.received, c.delivered, c.delivered_bytes, c.in_flight) == (1000, 1000, 8000, 0)


def test_random_loss_rate() -> None:
    n = 200_000
    imp = Impairment(ImpairmentSettings(loss_percent=1), seed=7)
    for i in range(n):
        imp.push(i, b"x")
    got = len(imp.due(n))
    measured = 100 * (n - got) / n
    assert abs(measured - 1.0) < 0.1, measured
    assert imp.counters.lost_random == n - got


def test_bursty_loss_rate_and_mean_burst() -> None:
    n = 1_000_000
    settings = ImpairmentSettings(burst_loss_percent=5, burst_length=3)
    p, r = settings.burst_transitions
    assert r == pytest.approx(1 / 3)
    assert p / (p + r) == pytest.approx(0.05)
    imp = Impairment(settings, seed=3)
    for i in range(n):
        imp.push(i, i.to_bytes(4, "big"))
    delivered = {index(d) for d in imp.due(n)}
    lost = set(range(n)) - delivered
    rate = 100 * len(lost) / n
    runs = bursts(lost)
    mean_burst = sum(runs) / len(runs)
    assert abs(rate - 5) < 0.05 * 5, rate
    assert abs(mean_burst - 3) < 0.05 * 3, mean_burst
    assert imp.counters.lost_burst == len(lost)


def test_random_loss_is_not_bursty() -> None:
    n = 200_000
    imp = Impairment(ImpairmentSettings(loss_percent=10), seed=5)
    for i in range(n):
        imp.push(i, i.to_bytes(4, "big"))
    lost = set(range(n)) - {index(d) for d in imp.due(n)}
    runs = bursts(lost)
    # Independent loss: runs are geometric with mean 1/(1 - 0.1).
    assert sum(runs) / len(runs) == pytest.approx(1 / 0.9, rel=0.02)


def test_delay_is_exact_without_jitter() -> None:
    imp = Impairment(ImpairmentSettings(delay_ms=30), seed=1)
    out = run(imp, 500, 3 * MS + 17)
    assert [i for i, _, _ in out] == list(range(500))
    assert {r - p for _, p, r in out} == {30 * MS}
    # Nothing comes out early, and next_due_ns says exactly when it does.
    imp.push(10 * S, b"a")
    assert imp.due(10 * S + 30 * MS - 1) == []
    assert imp.next_due_ns() == 10 * S + 30 * MS
    assert imp.due(10 * S + 30 * MS) == [b"a"]
    assert imp.next_due_ns() is None


def test_jitter_bounds_and_mean_when_sparse() -> None:
    # 50 ms apart, ±5 ms of jitter can never make one datagram wait for another.
    imp = Impairment(ImpairmentSettings(delay_ms=20, jitter_ms=5), seed=2)
    out = run(imp, 20_000, 50 * MS)
    delays = [(r - p) / MS for _, p, r in out]
    assert min(delays) >= 15 and max(delays) <= 25
    assert min(delays) < 15.1 and max(delays) > 24.9
    assert sum(delays) / len(delays) == pytest.approx(20, abs=0.1)
    assert len(set(delays)) > 1000


def test_jitter_never_reorders() -> None:
    imp = Impairment(ImpairmentSettings(delay_ms=10, jitter_ms=8), seed=4)
    out = run(imp, 50_000, MS // 4)
    assert [i for i, _, _ in out] == list(range(50_000))
    delays = [(r - p) / MS for _, p, r in out]
    assert min(delays) >= 2 and max(delays) <= 18
    assert imp.counters.reordered == 0


def test_jitter_larger_than_delay_is_clamped_at_zero() -> None:
    imp = Impairment(ImpairmentSettings(delay_ms=1, jitter_ms=5), seed=4)
    out = run(imp, 5000, 20 * MS)
    delays = [r - p for _, p, r in out]
    assert min(delays) == 0
    assert max(delays) <= 6 * MS


def test_reorder_percentage() -> None:
    n = 100_000
    imp = Impairment(ImpairmentSettings(delay_ms=5, reorder_percent=2), seed=9)
    out = run(imp, n, MS)
    order = [i for i, _, _ in out]
    assert sorted(order) == list(range(n))
    # A datagram is out of order when one that entered later was delivered before it.
    late = 0
    highest = -1
    for i in order:
        if i < highest:
            late += 1
        highest = max(highest, i)
    c = imp.counters
    assert late == c.reordered
    assert abs(100 * late / n - 2) < 0.2, late
    # A swapped datagram goes out right behind the next one: 1 ms late here (more when that one is held too).
    extra = [r - p - 5 * MS for _, p, r in out]
    assert all(e % MS == 0 and 0 <= e <= 4 * MS for e in extra)
    assert abs(extra.count(MS) - late) < 0.05 * late


def test_reorder_hold_limits_the_wait_when_nothing_follows() -> None:
    imp = Impairment(ImpairmentSettings(reorder_percent=100, reorder_hold_ms=7), seed=1)
    imp.push(0, b"a")
    assert imp.due(7 * MS - 1) == []
    assert imp.next_due_ns() == 7 * MS
    assert imp.due(7 * MS) == [b"a"]
    assert imp.counters.reordered == 0


def test_duplication_rate_and_copy_order() -> None:
    n = 100_000
    imp = Impairment(ImpairmentSettings(delay_ms=2, jitter_ms=1, duplicate_percent=3), seed=11)
    out = run(imp, n, MS)
    order = [i for i, _, _ in out]
    c = imp.counters
    assert len(order) == n + c.duplicated == c.delivered
    assert abs(100 * c.duplicated / n - 3) < 0.3
    copies = [a for a, b in pairwise(order) if a == b]
    assert len(copies) == c.duplicated
    assert order == sorted(order)


def test_bandwidth_cap_rate_queue_delay_and_drops() -> None:
    # 1000-byte datagrams at 2 Mb/s offered into a 1 Mb/s bottleneck (8 ms each), 200 ms of queue.
    settings = ImpairmentSettings(delay_ms=10, bandwidth_kbps=1000, queue_ms=200)
    imp = Impairment(settings, seed=1)
    out = run(imp, 2500, 4 * MS, size=1000)
    c = imp.counters
    assert c.delivered + c.dropped_queue == 2500
    assert 0.45 < c.dropped_queue / 2500 < 0.55
    releases = [r for _, _, r in out]
    # Back to back at the bottleneck: exactly 8 ms apart once the queue has filled.
    assert {b - a for a, b in pairwise(releases[50:])} == {8 * MS}
    kbps = (len(releases) - 1) * 1000 * 8 / ((releases[-1] - releases[0]) / 1e9) / 1000
    assert kbps == pytest.approx(1000, rel=0.01)
    # Bufferbloat: the queueing delay grows to the queue's size and no further.
    delays_ms = [(r - p) / MS - 10 for _, p, r in out]
    assert max(delays_ms) <= 200
    assert max(delays_ms) > 190
    assert c.max_queue_delay_ms == pytest.approx(max(delays_ms))
    assert c.in_flight == c.queued_bytes == 0


def test_bandwidth_under_the_cap_only_serialises() -> None:
    imp = Impairment(ImpairmentSettings(bandwidth_kbps=8000), seed=1)
    out = run(imp, 1000, 2 * MS, size=1000)  # 4 Mb/s offered; 1 ms to serialise each
    assert {r - p for _, p, r in out} == {MS}
    assert imp.counters.dropped_queue == 0


def test_queue_packets_limit() -> None:
    imp = Impairment(ImpairmentSettings(bandwidth_kbps=1000, queue_packets=3), seed=1)
    for _ in range(10):
        imp.push(0, bytes(100))
    c = imp.counters
    assert (c.queued_packets, c.dropped_queue, c.queued_bytes) == (3, 7, 300)


def test_idle_bottleneck_takes_a_datagram_larger_than_its_queue() -> None:
    imp = Impairment(ImpairmentSettings(bandwidth_kbps=80, queue_ms=1), seed=1)  # 10 bytes of queue
    imp.push(0, bytes(1000))
    imp.push(0, bytes(1000))
    assert imp.counters.dropped_queue == 1
    assert imp.next_due_ns() == 100 * MS
    assert len(imp.due(100 * MS)) == 1


def test_rate_change_applies_to_the_backlog() -> None:
    imp = Impairment(ImpairmentSettings(bandwidth_kbps=1000), seed=1)
    for _ in range(10):
        imp.push(0, bytes(1000))  # 8 ms each at 1 Mb/s
    assert imp.due(12 * MS) == [bytes(1000)]
    # Half of the second datagram is on the wire; the rest, and the 8 behind it, go twice as fast.
    imp.set_settings(ImpairmentSettings(bandwidth_kbps=2000), 12 * MS)
    assert imp.next_due_ns() == 14 * MS
    assert len(imp.due(14 * MS)) == 1
    assert len(imp.due(14 * MS + 8 * 4 * MS)) == 8
    assert imp.next_due_ns() is None


def test_lifting_the_cap_flushes_the_queue_and_keeps_flight_times() -> None:
    imp = Impairment(ImpairmentSettings(delay_ms=50, bandwidth_kbps=1000), seed=1)
    for _ in range(5):
        imp.push(0, bytes(1000))
    imp.set_settings(ImpairmentSettings(), 4 * MS)
    # All five leave the bottleneck now and still take the 50 ms they were pushed with.
    assert imp.counters.queued_packets == 0
    assert imp.due(54 * MS - 1) == []
    assert imp.next_due_ns() == 54 * MS
    assert len(imp.due(54 * MS)) == 5
    assert imp.counters.max_queue_delay_ms == 4


def test_scenario_steps_take_effect_at_their_time() -> None:
    scenario = Scenario(
        steps=(
            ScenarioStep(0, ImpairmentSettings(delay_ms=10)),
            ScenarioStep(2.0, ImpairmentSettings(delay_ms=50)),
            ScenarioStep(3.5, ImpairmentSettings(delay_ms=20)),
        )
    )
    start = 123 * S
    player = ScenarioPlayer(scenario, start)
    imp = Impairment(ImpairmentSettings(), seed=1)
    delays: dict[int, int] = {}
    # A datagram every 10 ms for 5 s, polled every 1 ms of simulated time.
    for tick in range(5100):
        now = start + tick * MS
        if (new := player.update(now)) is not None:
            imp.set_settings(new, now)
        if tick % 10 == 0 and tick < 5000:
            imp.push(now, tag(tick // 10))
        for d in imp.due(now):
            delays[index(d)] = now - (start + index(d) * 10 * MS)
    assert player.step_index == 2
    assert player.next_change_ns() is None
    assert {delays[k] for k in range(200)} == {10 * MS}
    assert {delays[k] for k in range(200, 350)} == {50 * MS}
    # A shorter delay does not let datagrams overtake those already on their way: the first two after the
    # step wait for the one sent at 3.49 s (released at 3.54 s).
    assert (delays[350], delays[351]) == (40 * MS, 30 * MS)
    assert {delays[k] for k in range(352, 500)} == {20 * MS}
    assert scenario.settings_at(1.999).delay_ms == 10
    assert scenario.settings_at(2.0).delay_ms == 50
    assert scenario.settings_at(100).delay_ms == 20


def test_scenario_before_its_first_step() -> None:
    scenario = Scenario(steps=(ScenarioStep(5, ImpairmentSettings(loss_percent=1)),))
    assert scenario.settings_at(4) == ImpairmentSettings()
    assert scenario.settings_at(4, before=ImpairmentSettings(delay_ms=3)).delay_ms == 3
    player = ScenarioPlayer(scenario, 0)
    assert player.update(4 * S) is None
    assert player.next_change_ns() == 5 * S
    assert player.update(6 * S) == ImpairmentSettings(loss_percent=1)
    assert player.update(7 * S) is None


def everything(seed: int) -> list[tuple[int, int, int]]:
    settings = ImpairmentSettings(
        delay_ms=5,
        jitter_ms=2,
        loss_percent=2,
        burst_loss_percent=3,
        burst_length=2,
        reorder_percent=3,
        duplicate_percent=3,
        bandwidth_kbps=4000,
        queue_ms=50,
    )
    return run(Impairment(settings, seed=seed), 20_000, 2 * MS, size=1200)


def test_same_seed_same_output_different_seed_different() -> None:
    a = everything(42)
    assert a == everything(42)
    b = everything(43)
    assert a != b
    assert len(a) != len(b) or [i for i, _, _ in a] != [i for i, _, _ in b]


def test_poll_rate_does_not_change_the_outcome() -> None:
    settings = ImpairmentSettings(delay_ms=3, jitter_ms=2, loss_percent=5, reorder_percent=5)
    eager = Impairment(settings, seed=8)
    lazy = Impairment(settings, seed=8)
    got_eager: list[bytes] = []
    for i in range(5000):
        eager.push(i * MS, tag(i))
        got_eager += eager.due(i * MS)
        lazy.push(i * MS, tag(i))
    got_eager += eager.due(10 * S)
    assert lazy.due(10 * S) == got_eager
    assert eager.counters == lazy.counters


def test_clock_going_backwards_stands_still() -> None:
    imp = Impairment(ImpairmentSettings(delay_ms=10), seed=1)
    imp.push(100 * MS, b"a")
    imp.push(50 * MS, b"b")  # treated as 100 ms
    assert imp.due(110 * MS) == [b"a", b"b"]


def test_counters_and_settings_serialise() -> None:
    imp = Impairment(ImpairmentSettings(bandwidth_kbps=100), seed=1)
    imp.push(0, bytes(1000))
    imp.push(0, bytes(500))
    d = imp.counters.to_dict()
    assert d["received"] == 2 and d["queued_bytes"] == 1500 and d["in_flight"] == 2
    assert imp.settings.to_dict()["bandwidth_kbps"] == 100


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss_percent": 120}, "loss_percent must be between 0 and 100 percent, got 120"),
        ({"loss_percent": -1}, "loss_percent must be between 0 and 100 percent, got -1"),
        ({"delay_ms": float("nan")}, "delay_ms must be finite, got nan"),
        ({"delay_ms": "10"}, "delay_ms must be a number, got '10'"),
        ({"jitter_ms": 70_000}, "jitter_ms must be between 0 and 60000 ms, got 70000"),
        ({"reorder_percent": 101}, "reorder_percent must be between 0 and 100 percent, got 101"),
        ({"duplicate_percent": True}, "duplicate_percent must be a number, got True"),
        ({"reorder_hold_ms": 0}, "reorder_hold_ms must be above 0 and at most 60000 ms, got 0"),
        ({"burst_length": 0.5}, "burst_length must be at least 1 datagram, got 0.5"),
        (
            {"burst_loss_percent": 60, "burst_length": 1},
            "burst_loss_percent must be at most 50 percent with burst_length 1 "
            "(a Gilbert–Elliott chain with mean burst L loses at most L/(L+1)), got 60",
        ),
        ({"bandwidth_kbps": 0}, "bandwidth_kbps must be positive (or None for no limit), got 0"),
        ({"queue_ms": -5}, "queue_ms must be above 0 and at most 60000 ms, got -5"),
        ({"queue_packets": 0}, "queue_packets must be a whole number of at least 1, got 0"),
        ({"queue_packets": 2.5}, "queue_packets must be a whole number of at least 1, got 2.5"),
    ],
)
def test_settings_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ImpairmentSettings(**kwargs)  # type: ignore[arg-type]


def test_from_options_and_is_perfect() -> None:
    assert ImpairmentSettings.from_options() == ImpairmentSettings()
    assert ImpairmentSettings().is_perfect
    assert ImpairmentSettings(queue_ms=50).is_perfect
    s = ImpairmentSettings.from_options(
        loss=1, burst_loss=5, burst_length=3, reorder=0.5, bandwidth_kbps=4000
    )
    assert (s.loss_percent, s.burst_loss_percent, s.burst_length, s.reorder_percent) == (1, 5, 3, 0.5)
    assert s.bandwidth_kbps == 4000 and s.queue_ms == 200
    assert not s.is_perfect


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


def test_shipped_scenario_loads() -> None:
    scenario = load_scenario(scenario_path("capacity-12-4-12"))
    assert [s.at_s for s in scenario.steps] == [0, 20, 40]
    assert [s.settings.bandwidth_kbps for s in scenario.steps] == [12000, 4000, 12000]
    assert {s.settings.delay_ms for s in scenario.steps} == {10}
    assert scenario.settings_at(30).bandwidth_kbps == 4000
    assert scenario.to_dict()[1]["at_s"] == 20


def test_scenario_file_with_every_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [[step]]
        at_s = 0
        delay_ms = 10
        jitter_ms = 2.5
        reorder_percent = 1
        reorder_hold_ms = 5
        loss_percent = 0.5
        burst_loss_percent = 2
        burst_length = 3
        duplicate_percent = 1
        bandwidth_kbps = 4000
        queue_ms = 100
        queue_packets = 50
        [[step]]
        at_s = 1.5
        """,
    )
    scenario = load_scenario(path)
    assert scenario.steps[0].settings.queue_packets == 50
    assert scenario.steps[0].settings.jitter_ms == 2.5
    assert scenario.steps[1] == ScenarioStep(1.5, ImpairmentSettings())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[step]]\nat_s = 0\ndelay = 10\n", "step 1: unknown key 'delay' (known: at_s, delay_ms, "),
        ("[[step]]\ndelay_ms = 10\n", "step 1: missing at_s (seconds from the start)"),
        (
            "[[step]]\nat_s = 0\n[[step]]\nat_s = 5\nloss_percent = 150\n",
            "step 2: loss_percent must be between 0 and 100 percent, got 150",
        ),
        (
            "[[step]]\nat_s = 0\n[[step]]\nat_s = 10\n[[step]]\nat_s = 10\n",
            "step 3: at_s 10 must be greater than step 2's at_s 10",
        ),
        ("[[step]]\nat_s = 2\n[[step]]\nat_s = 1\n", "step 2: at_s 1 must be greater than step 1's at_s 2"),
        ("[[step]]\nat_s = -1\n", "step 1: at_s must be at least 0 s, got -1"),
        ("[[step]]\nat_s = 0\ndelay_ms = 'ten'\n", "step 1: delay_ms must be a number, got 'ten'"),
        ("[[step]]\nat_s = 'soon'\n", "step 1: at_s must be a number, got 'soon'"),
        ("[[step]]\nat_s = 0\nbandwidth_kbps = 0\n", "step 1: bandwidth_kbps must be positive"),
        ("[[step]]\nat_s = 0\nqueue_packets = 1.5\n", "step 1: queue_packets must be a whole number"),
        ("", "no [[step]] tables"),
        ("step = 3\n", "'step' must be an array of tables, written [[step]]"),
        ("[[steps]]\nat_s = 0\n", "unknown top-level key 'steps' (a scenario has only [[step]] tables)"),
        ("[[step]\nat_s = 0\n", "not valid TOML: "),
    ],
)
def test_scenario_file_errors(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError, match=f"^{re.escape(f'{path}: {message}')}"):
        load_scenario(path)


def test_scenario_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(
        ScenarioError, match=f"^{re.escape(f'{path}: cannot read: No such file or directory')}$"
    ):
        load_scenario(path)


def test_scenario_needs_steps() -> None:
    with pytest.raises(ValueError, match=r"^a scenario needs at least one step$"):
        Scenario(steps=())
