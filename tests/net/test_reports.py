"""Receive statistics (loss, replays, jitter, rate, reports) and the RTT estimator, with simulated time."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.net.protocol import ReceiverReport
from app.net.reports import ReceiveStatistics, RttEstimator
from app.net.seq import SEQ_MASK, seq_add

MS = 1_000_000


def feed(stats: ReceiveStatistics, seqs: list[int], *, size: int = 1000, step_ns: int = MS) -> list[bool]:
    return [stats.on_packet(s & SEQ_MASK, i * step_ns, None, size) for i, s in enumerate(seqs)]


def test_counts_in_order_stream() -> None:
    st_ = ReceiveStatistics()
    assert st_.highest_seq is None and st_.expected == 0 and st_.lost == 0
    assert all(feed(st_, list(range(100, 110))))
    assert st_.received == 10 and st_.expected == 10 and st_.lost == 0 and st_.highest_seq == 109


def test_loss_reorder_and_late_recovery() -> None:
    st_ = ReceiveStatistics()
    feed(st_, [1, 2, 5, 4])
    assert st_.expected == 5 and st_.received == 4 and st_.lost == 1
    feed(st_, [3])
    assert st_.lost == 0
    # A packet from before the first one extends the expected range too.
    feed(st_, [0])
    assert st_.expected == 6 and st_.lost == 0


def test_replays_are_rejected_and_counted() -> None:
    st_ = ReceiveStatistics(replay_window=64)
    assert feed(st_, [10, 11, 10, 11]) == [True, True, False, False]
    assert st_.duplicates == 2 and st_.received == 2
    feed(st_, [500])
    assert st_.on_packet(400, 0, None, 10) is False
    assert st_.too_old == 1 and st_.duplicates == 2


def test_wrap_around() -> None:
    st_ = ReceiveStatistics()
    feed(st_, [SEQ_MASK - 2, SEQ_MASK - 1, 0, 1])  # SEQ_MASK itself lost
    assert st_.expected == 5 and st_.lost == 1 and st_.highest_seq == 1
    report = st_.make_report(1, 0, 0, 0)
    assert report.highest_seq == 1 and report.packets_lost == 1 and report.fraction_lost == 51


def test_fraction_lost_per_interval() -> None:
    st_ = ReceiveStatistics()
    # Every multiple of 4 is missing. The first packet is 1, so 1..99 are expected: 99, of which 24 lost.
    feed(st_, [s for s in range(0, 100) if s % 4 != 0])
    r1 = st_.make_report(seq=7, stream_id=0, frames_received=10, frames_lost=1)
    assert r1.packets_received == 75
    assert r1.packets_lost == 24
    assert r1.fraction_lost == 24 * 256 // 99
    assert st_.loss_fraction == pytest.approx(r1.fraction_lost / 256, abs=1 / 256)
    feed(st_, list(range(100, 200)))
    r2 = st_.make_report(seq=8, stream_id=0, frames_received=20, frames_lost=1)
    assert r2.fraction_lost == 0 and st_.loss_fraction == 0.0
    # No packets at all in an interval: nothing lost, nothing expected.
    r3 = st_.make_report(seq=9, stream_id=0, frames_received=20, frames_lost=1)
    assert r3.fraction_lost == 0 and r3.packets_received == 175


def test_fraction_lost_near_total_loss() -> None:
    st_ = ReceiveStatistics()
    feed(st_, [0])
    st_.make_report(1, 0, 0, 0)
    feed(st_, [1000])
    r = st_.make_report(2, 0, 0, 0)
    assert r.fraction_lost == 999 * 256 // 1000 == 255
    assert st_.loss_fraction == pytest.approx(0.999)


def test_report_fields_and_wire_round_trip() -> None:
    st_ = ReceiveStatistics()
    for i in range(10):
        st_.on_packet(i, i * MS, 5_000 + i * 1000, 1250)
    r = st_.make_report(seq=3, stream_id=0, frames_received=(1 << 32) + 5, frames_lost=2, now_ns=10 * MS)
    assert r == ReceiverReport(
        seq=3,
        stream_id=0,
        highest_seq=9,
        packets_received=10,
        packets_lost=0,
        fraction_lost=0,
        jitter_us=0,  # constant transit
        frames_received=5,  # sent modulo 2**32
        frames_lost=2,
        receive_kbps=10_000,  # 12,500 bytes over 10 ms
    )
    assert ReceiverReport.parse(bytes(r)) == r
    assert st_.receive_kbps == 10_000


def test_receive_rate_without_now_uses_last_arrival() -> None:
    st_ = ReceiveStatistics()
    for i in range(11):
        st_.on_packet(i, i * MS, None, 1000)  # 11,000 bytes from t=0 to t=10 ms
    assert st_.make_report(1, 0, 0, 0).receive_kbps == 8_800
    for i in range(11, 21):
        st_.on_packet(i, i * MS, None, 500)  # 5,000 bytes from 10 ms to 20 ms
    assert st_.make_report(2, 0, 0, 0).receive_kbps == 4_000
    assert st_.make_report(3, 0, 0, 0).receive_kbps == 0


def test_jitter_constant_transit_is_zero() -> None:
    st_ = ReceiveStatistics()
    for i in range(50):
        st_.on_packet(i, (10_000 + i * 16_667) * 1000, i * 16_667, 1000)
    assert st_.jitter_us == 0.0


def test_jitter_follows_rfc3550() -> None:
    st_ = ReceiveStatistics()
    # Transit alternates 1000 and 3000 µs: |D| = 2000 every packet, so J converges to 2000.
    for i in range(400):
        capture = i * 10_000
        st_.on_packet(i, (capture + (1000 if i % 2 == 0 else 3000)) * 1000, capture, 1000)
    assert st_.jitter_us == pytest.approx(2000, rel=1e-6)
    st_2 = ReceiveStatistics()
    st_2.on_packet(0, 1_000_000, 0, 10)
    st_2.on_packet(1, 2_160_000, 1000, 10)  # transit 1000 then 1160: D = 160, J = 160/16
    assert st_2.jitter_us == pytest.approx(10.0)


def test_non_media_packets_do_not_touch_jitter() -> None:
    st_ = ReceiveStatistics()
    st_.on_packet(0, 1_000_000, 0, 10)
    st_.on_packet(1, 50_000_000, None, 10)
    st_.on_packet(2, 2_000_000, 1000, 10)
    assert st_.jitter_us == 0.0


def test_large_forward_jump_counts_as_loss() -> None:
    st_ = ReceiveStatistics()
    st_.on_packet(0, 0, None, 10)
    st_.on_packet(seq_add(0, (1 << 31) - 1), 1, None, 10)
    r = st_.make_report(1, 0, 0, 0)
    assert r.packets_lost == (1 << 31) - 2
    assert r.highest_seq == (1 << 31) - 1


def test_reset_starts_over() -> None:
    st_ = ReceiveStatistics()
    feed(st_, [1000, 1001, 1001])
    st_.reset()
    assert st_.received == 0 and st_.highest_seq is None and st_.jitter_us == 0.0
    assert st_.on_packet(5, 0, None, 1)  # the restarted peer's low sequence numbers are accepted
    assert st_.duplicates == 1


@settings(max_examples=300, deadline=None)
@given(
    start=st.integers(SEQ_MASK - 500, SEQ_MASK + 500),
    deltas=st.lists(st.integers(-50, 50), min_size=1, max_size=200),
)
def test_loss_accounting_matches_model(start: int, deltas: list[int]) -> None:
    st_ = ReceiveStatistics(replay_window=1024)
    positions = []
    pos = start
    for d in deltas:
        pos += d
        positions.append(pos)
    accepted = set()
    for i, p in enumerate(positions):
        ok = st_.on_packet(p & SEQ_MASK, i, None, 100)
        assert ok == (p not in accepted)
        accepted.add(p)
    assert st_.received == len(accepted)
    assert st_.expected == max(accepted) - min(accepted) + 1
    assert st_.lost == st_.expected - len(accepted)
    report = st_.make_report(0, 0, 0, 0)
    assert 0 <= report.fraction_lost <= 255
    assert report.highest_seq == max(accepted) & SEQ_MASK


def test_rtt_estimator_rfc6298() -> None:
    rtt = RttEstimator()
    assert rtt.srtt_us is None and rtt.latest_us is None
    assert rtt.on_ack(now_us=10_000, echo_us=8_000, hold_us=1_000) == 1_000
    assert rtt.srtt_us == 1000 and rtt.rttvar_us == 500 and rtt.min_us == 1000
    assert rtt.on_ack(now_us=20_000, echo_us=17_000, hold_us=0) == 3_000
    assert rtt.rttvar_us == pytest.approx(0.75 * 500 + 0.25 * 2000)
    assert rtt.srtt_us == pytest.approx(0.875 * 1000 + 0.125 * 3000)
    assert rtt.latest_us == 3000 and rtt.min_us == 1000 and rtt.samples == 2


@pytest.mark.parametrize(
    ("now", "echo", "hold"),
    [
        (1000, 2000, 0),  # echo from the future
        (1000, 500, 600),  # hold longer than the round trip
        (1000, 500, -1),  # negative hold
        (20_000_000, 0, 0),  # above 10 s
    ],
)
def test_rtt_estimator_rejects_impossible_samples(now: int, echo: int, hold: int) -> None:
    rtt = RttEstimator()
    assert rtt.on_ack(now, echo, hold) is None
    assert rtt.rejected == 1 and rtt.samples == 0 and rtt.srtt_us is None
