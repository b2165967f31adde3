"""NACK tracker and retransmit buffer, simulated time: timing, deadlines, retries, limits, storms, bounds."""

from __future__ import annotations

import heapq
import itertools
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.net.nack import MAX_NACK_INDICES, NackTracker, RetransmitBuffer
from app.net.protocol import MEDIA_HEADER_SIZE, MediaPacket, fragment_offset, fragment_size
from app.net.seq import SEQ_MASK, SequenceCounter, seq_add

MS = 1_000_000
S = 1_000_000_000
DEADLINE = 100 * MS
RTT = 10 * MS


def tracker(**kwargs: int | float) -> NackTracker:
    kwargs.setdefault("deadline_ns", DEADLINE)
    return NackTracker(**kwargs)  # type: ignore[arg-type]


def report(
    t: NackTracker, frame_id: int, now: int, count: int, missing: tuple[int, ...], need: int = -1
) -> None:
    """One on_fragment call for a frame of ``count`` data fragments (no FEC unless ``need`` says so)."""
    t.on_fragment(
        frame_id, now, data_count=count, still_needed=len(missing) if need < 0 else need, missing=missing
    )


# --- NackTracker: timing -------------------------------------------------------------------------------


def test_no_nack_before_the_reorder_allowance() -> None:
    t = tracker(reorder_ns=3 * MS)
    report(t, 10, 0, 5, (2, 3, 4))
    report(t, 10, 1 * MS, 5, (3, 4))
    assert t.poll(1 * MS, RTT) == []
    assert t.poll(4 * MS - 1, RTT) == []  # 3 ms after the frame's *last* packet, not its first
    assert t.poll(4 * MS, RTT) == [(10, (3, 4))]
    assert t.counters.nacks_sent == 1
    assert t.counters.fragments_requested == 2


def test_a_newer_frame_makes_the_loss_evident_at_once() -> None:
    t = tracker(reorder_ns=3 * MS)
    report(t, 10, 0, 5, (4,))
    report(t, 11, 100_000, 5, (1, 2, 3, 4))
    # Frame 10's tail is lost (11 has started); frame 11 is still arriving.
    assert t.poll(100_000, RTT) == [(10, (4,))]
    assert t.poll(200_000, RTT) == []


def test_a_completed_newer_frame_is_evidence_too() -> None:
    t = tracker()
    report(t, 10, 0, 5, (4,))
    t.on_complete(11)  # a one-fragment frame that never showed up as a fragment report
    assert t.poll(0, RTT) == [(10, (4,))]


def test_nack_only_when_rtt_plus_margin_fits_the_deadline() -> None:
    t = tracker(margin_ns=2 * MS, reorder_ns=3 * MS)
    report(t, 1, 0, 4, (3,))
    report(t, 2, 0, 4, (3,))
    report(t, 3, 0, 4, (3,))
    # At 50 ms: frame deadline 100 ms. 50 + 47 + 2 = 99 < 100 fits; 50 + 48 + 2 = 100 does not.
    assert t.poll(50 * MS, 48 * MS) == []
    assert t.counters.nack_skipped_deadline == 3
    # Never reconsidered, even with a tiny RTT: the deadline only comes closer.
    assert t.poll(51 * MS, 0) == []
    assert t.counters.nack_skipped_deadline == 3
    assert t.next_poll_ns(0) is None

    u = tracker(margin_ns=2 * MS, reorder_ns=3 * MS)
    report(u, 1, 0, 4, (3,))
    assert u.poll(50 * MS, 47 * MS) == [(1, (3,))]
    assert u.counters.nack_skipped_deadline == 0


def test_still_needed_asks_for_the_lowest_missing_indices_only() -> None:
    t = tracker()
    # Four data fragments missing, but parity already held means two more fragments complete the frame.
    report(t, 7, 0, 12, (9, 2, 5, 7), need=2)
    assert t.poll(10 * MS, RTT) == [(7, (2, 5))]


def test_nothing_needed_nothing_asked() -> None:
    t = tracker()
    report(t, 7, 0, 12, (3, 4), need=0)  # the FEC decode has all it needs
    report(t, 8, 0, 12, (99, -1))  # nonsense indices from a confused caller are not sent
    assert t.poll(10 * MS, RTT) == []
    assert t.counters.nacks_sent == 0


def test_at_most_max_indices_per_nack() -> None:
    t = tracker()
    missing = tuple(range(1999, -1, -1))
    report(t, 7, 0, 2000, missing)
    [(frame_id, indices)] = t.poll(10 * MS, RTT)
    assert frame_id == 7
    assert indices == tuple(range(MAX_NACK_INDICES))


def test_retry_after_1_2_rtt_with_what_is_still_missing_then_give_up() -> None:
    t = tracker(reorder_ns=3 * MS, max_retries=2)
    report(t, 5, 0, 6, (1, 2, 3))
    assert t.poll(3 * MS, RTT) == [(5, (1, 2, 3))]
    report(t, 5, 12 * MS, 6, (2,))  # the retransmissions of 1 and 3 arrived; 2 was lost again
    assert t.poll(15 * MS - 1, RTT) == []  # 1.2 × 10 ms after the NACK at 3 ms is 15 ms
    assert t.poll(15 * MS, RTT) == [(5, (2,))]
    assert t.poll(26 * MS, RTT) == []
    assert t.poll(27 * MS, RTT) == [(5, (2,))]
    assert t.counters.retries == 2
    assert t.poll(39 * MS, RTT) == []
    assert t.counters.retries_exhausted == 1
    assert t.poll(90 * MS, RTT) == []
    assert t.counters.nacks_sent == 3
    assert t.counters.fragments_requested == 5


def test_retry_interval_has_a_floor_for_tiny_rtts() -> None:
    t = tracker(min_retry_ns=2 * MS)
    assert t.retry_interval_ns(100_000) == 2 * MS
    assert t.retry_interval_ns(10 * MS) == 12 * MS
    assert t.retry_interval_ns(-5) == 2 * MS
    report(t, 5, 0, 6, (1,))
    t.on_complete(6)
    assert t.poll(0, 100_000) == [(5, (1,))]
    assert t.poll(1 * MS, 100_000) == []
    assert t.poll(2 * MS, 100_000) == [(5, (1,))]


def test_a_retry_is_skipped_when_it_no_longer_fits_the_deadline() -> None:
    t = tracker(margin_ns=2 * MS, reorder_ns=3 * MS)
    report(t, 5, 0, 6, (1,))
    assert t.poll(60 * MS, 30 * MS) == [(5, (1,))]
    assert t.poll(96 * MS, 30 * MS) == []  # 96 + 30 + 2 ≥ 100
    assert t.counters.nack_skipped_deadline == 1
    assert t.counters.retries == 0


def test_next_poll_ns() -> None:
    t = tracker(reorder_ns=3 * MS)
    assert t.next_poll_ns(RTT) is None
    report(t, 5, 1 * MS, 6, (1,))
    assert t.next_poll_ns(RTT) == 4 * MS
    report(t, 6, 2 * MS, 6, (1,))
    assert t.next_poll_ns(RTT) == 1 * MS  # frame 5 is overdue: a newer frame arrived
    assert t.poll(2 * MS, RTT) == [(5, (1,))]
    assert t.next_poll_ns(RTT) == 5 * MS  # frame 6's reorder allowance
    assert t.poll(5 * MS, RTT) == [(6, (1,))]
    assert t.next_poll_ns(RTT) == 14 * MS  # frame 5's retry


# --- NackTracker: outcomes and bounds -------------------------------------------------------------------


def test_recovered_and_abandoned_frames_are_counted_and_forgotten() -> None:
    t = tracker()
    report(t, 1, 0, 3, (2,))
    report(t, 2, 0, 3, (2,))
    report(t, 3, 0, 3, (2,))
    report(t, 4, 0, 3, (2,))
    assert len(t.poll(5 * MS, RTT)) == 4
    t.on_complete(1)
    t.on_complete(2, by_retransmit=False)  # FEC or a reordered original got there first
    t.on_abandoned(3)
    t.on_abandoned(99)  # never tracked: not counted
    assert t.counters.frames_recovered_by_nack == 1
    assert t.counters.frames_abandoned == 1
    assert t.tracked == 1
    # A stale report of a finished frame does not bring it back.
    report(t, 1, 6 * MS, 3, (2,))
    report(t, 3, 6 * MS, 3, (2,))
    assert t.tracked == 1


def test_complete_without_nack_is_not_a_recovery_unless_the_engine_says_so() -> None:
    t = tracker()
    report(t, 1, 0, 3, (2,))
    report(t, 2, 0, 3, (2,))
    t.on_complete(1)
    t.on_complete(2, by_retransmit=True)
    assert t.counters.frames_recovered_by_nack == 1


def test_tracked_frames_are_capped_oldest_forgotten() -> None:
    t = tracker(max_frames=64)
    for i in range(1000):
        report(t, i, i * 1000, 10, (9,))
        assert t.tracked <= 64
    assert t.counters.frames_forgotten == 1000 - 64
    u = tracker(max_frames=4)
    for i in range(10):
        report(u, i, 0, 10, (9,))
    assert [fid for fid, _ in u.poll(5 * MS, RTT)] == [6, 7, 8, 9]


def test_reset_forgets_frames_and_keeps_counters() -> None:
    t = tracker()
    report(t, 1, 0, 3, (2,))
    assert t.poll(5 * MS, RTT)
    t.reset()
    assert t.tracked == 0
    assert t.counters.nacks_sent == 1
    report(t, 1, 10 * MS, 3, (2,))  # a restarted peer reuses frame ids
    assert t.tracked == 1


def test_frame_ids_wrap_at_2_32() -> None:
    t = tracker(reorder_ns=3 * MS)
    last = SEQ_MASK
    report(t, last - 1, 0, 4, (3,))
    report(t, last, 100, 4, (3,))
    report(t, 0, 200, 4, (2, 3))
    # 0 comes after 2**32 - 1: both older frames are evidently lossy, frame 0 is still arriving.
    assert t.poll(300, RTT) == [(last - 1, (3,)), (last, (3,))]
    t.on_complete(1)
    assert t.poll(400, RTT) == [(0, (2, 3))]
    assert t.next_poll_ns(RTT) == 300 + 12 * MS


# --- RetransmitBuffer -----------------------------------------------------------------------------------


def frame_packets(frame_id: int, size: int, seqs: SequenceCounter, mtu: int = 1200) -> list[MediaPacket]:
    """The data fragments of a ``size``-byte frame cut as PROTOCOL.md §6 says (payloads are views, as the
    packetizer's are)."""
    count = -(-size // mtu)
    data = memoryview(bytes([frame_id & 0xFF]) * size)
    packets = []
    for i in range(count):
        start = fragment_offset(size, count, i)
        payload = data[start : start + fragment_size(size, count, i)]
        packets.append(MediaPacket(seqs(), 0, frame_id, i, count, size, frame_id, payload))
    return packets


def wire(pkt: MediaPacket) -> int:
    return MEDIA_HEADER_SIZE + len(pkt.payload)


def test_resends_the_requested_fragments_as_fresh_copies() -> None:
    seqs = SequenceCounter(100)
    buf = RetransmitBuffer(8e6)
    packets = frame_packets(7, 5000, seqs)  # 5 fragments of 1000 bytes
    buf.store(7, packets, 0)
    assert buf.frames == 1
    assert buf.buffered_bytes == sum(wire(p) for p in packets)
    out = buf.on_nack(7, [3, 1], 1 * MS)
    assert [p.fragment_index for p in out] == [3, 1]
    assert bytes(out[0]) == bytes(packets[3])
    out[0].seq = 999
    out[0].flags |= 0x80
    assert packets[3].seq == 103 and packets[3].flags == 0  # the stored packet is untouched
    c = buf.counters
    assert c.nacks_received == 1
    assert c.retransmitted_packets == 2
    assert c.retransmitted_bytes == wire(packets[3]) + wire(packets[1])


def test_unknown_frames_and_indices_are_ignored_and_counted() -> None:
    buf = RetransmitBuffer(8e6)
    buf.store(7, frame_packets(7, 5000, SequenceCounter()), 0)
    assert buf.on_nack(8, [0, 1, 2], 0) == []
    assert buf.on_nack(7, [5, 65535, -1], 0) == []
    assert buf.counters.ignored_unknown == 6
    # Only some fragments stored (parity is never stored): the others are unknown.
    buf.store(9, frame_packets(9, 5000, SequenceCounter())[:2], 0)
    assert [p.fragment_index for p in buf.on_nack(9, [0, 3], 0)] == [0]
    assert buf.counters.ignored_unknown == 7


def test_each_fragment_at_most_max_per_fragment_times_and_not_twice_within_dedup() -> None:
    buf = RetransmitBuffer(8e6, max_per_fragment=2, dedup_ns=1 * MS)
    buf.store(7, frame_packets(7, 5000, SequenceCounter()), 0)
    assert len(buf.on_nack(7, [2, 2, 2], 0)) == 1  # repeats within one NACK are duplicates
    assert buf.on_nack(7, [2], 1 * MS - 1) == []
    assert buf.counters.ignored_duplicate == 3
    assert len(buf.on_nack(7, [2], 1 * MS)) == 1
    assert buf.on_nack(7, [2], 10 * MS) == []
    assert buf.counters.ignored_limit == 1
    assert buf.counters.retransmitted_packets == 2


def test_too_old_frames_are_forgotten() -> None:
    buf = RetransmitBuffer(8e6, max_age_ns=500 * MS)
    buf.store(7, frame_packets(7, 5000, SequenceCounter()), 0)
    assert len(buf.on_nack(7, [0], 500 * MS)) == 1
    assert buf.on_nack(7, [1], 500 * MS + 1) == []
    assert buf.counters.ignored_unknown == 1
    assert buf.frames == 0
    assert buf.buffered_bytes == 0


def test_bounded_by_frames_and_bytes_oldest_dropped() -> None:
    seqs = SequenceCounter()
    buf = RetransmitBuffer(8e6, max_frames=120, max_bytes=200_000)
    for i in range(200):
        buf.store(i, frame_packets(i, 1000, seqs), i)
    assert buf.frames == 120
    assert buf.on_nack(79, [0], 300) == []
    assert len(buf.on_nack(80, [0], 300)) == 1
    for i in range(200, 220):
        buf.store(i, frame_packets(i, 20_000, seqs), i)  # 20,544 bytes each: the byte cap binds
    assert buf.buffered_bytes <= 200_000
    assert buf.frames == 9
    buf.store(500, frame_packets(500, 200_000, seqs), 500)  # larger than the whole buffer
    assert buf.counters.frames_too_big == 1
    assert buf.on_nack(500, [0], 500) == []
    assert buf.buffered_bytes <= 200_000


def test_storing_a_frame_id_again_replaces_it() -> None:
    buf = RetransmitBuffer(8e6)
    buf.store(7, frame_packets(7, 5000, SequenceCounter()), 0)
    buf.on_nack(7, [0], 0)
    new = frame_packets(7, 2400, SequenceCounter(50))
    buf.store(7, new, 1)
    assert buf.frames == 1
    assert buf.buffered_bytes == sum(wire(p) for p in new)
    [pkt] = buf.on_nack(7, [0], 2)  # the old frame's resend history went with it
    assert pkt.seq == 50


def test_store_rejects_packets_of_another_frame() -> None:
    buf = RetransmitBuffer(8e6)
    with pytest.raises(ValueError, match="does not belong"):
        buf.store(8, frame_packets(7, 5000, SequenceCounter()), 0)
    buf.store(8, [], 0)
    assert buf.frames == 0


def test_indices_beyond_max_indices_are_not_read() -> None:
    buf = RetransmitBuffer(8e6, burst_bytes=10**7, max_indices=256)
    buf.store(7, frame_packets(7, 1000 * 300, SequenceCounter(), mtu=1000), 0)
    out = buf.on_nack(7, list(range(10_000)), 0)
    assert len(out) == 256
    assert buf.counters.ignored_limit == 10_000 - 256


def test_frame_ids_near_the_wrap() -> None:
    seqs = SequenceCounter()
    buf = RetransmitBuffer(8e6)
    ids = [seq_add(SEQ_MASK, k) for k in range(-2, 3)]
    for n, fid in enumerate(ids):
        buf.store(fid, frame_packets(fid, 3000, seqs), n)
    for fid in ids:
        [pkt] = buf.on_nack(fid, [1], 10)
        assert pkt.frame_id == fid


def test_rate_limit_burst_then_fraction_of_the_bitrate() -> None:
    # 8 Mb/s × 0.25 = 250 kB/s; burst 32 KiB.
    buf = RetransmitBuffer(8e6, rate_fraction=0.25, burst_bytes=32 * 1024, max_per_fragment=1)
    buf.store(7, frame_packets(7, 1200 * 100, SequenceCounter()), 0)
    out = buf.on_nack(7, list(range(100)), 0)
    assert len(out) == 26  # 26 packets of 1232 bytes fit the 32,768-byte burst, 736 bytes are left
    assert buf.counters.ignored_rate == 100 - 26
    # The missing 496 bytes take 1.984 ms to earn at 250 kB/s.
    assert buf.on_nack(7, [99], 1_983_000) == []
    assert len(buf.on_nack(7, [99], 1_984_000)) == 1  # 4 bytes left
    buf.set_rate(80e6, now_ns=5 * MS)  # 750 bytes earned at the old rate by then
    assert buf.rate_bps == 20e6
    assert len(buf.on_nack(7, [98, 97, 96], 6 * MS)) == 2  # plus 2500 bytes in 1 ms at 2.5 MB/s


def test_nack_storm_stays_within_the_rate_limit_and_bounds() -> None:
    """Thousands of NACKs for everything plus random garbage, over simulated seconds, at 60 fps."""
    rng = random.Random(1)
    seqs = SequenceCounter(rng.getrandbits(32))
    burst = 32 * 1024
    buf = RetransmitBuffer(8e6, rate_fraction=0.25, burst_bytes=burst, max_frames=120, max_bytes=2_000_000)
    frame_ns = S // 60
    budget = float(burst)  # bytes the limiter may have let through so far
    frame_id = SEQ_MASK - 100  # wraps during the run
    next_frame_ns = 0
    stored: list[int] = []
    n = 0
    now = 0
    end = 5 * S
    step = 200_000  # a NACK every 200 µs: 25,000 in all
    while now < end:
        while next_frame_ns <= now:
            size = 150_000 if n % 60 == 0 else rng.randint(2_000, 30_000)
            n += 1
            buf.store(frame_id, frame_packets(frame_id, size, seqs), next_frame_ns)
            stored.append(frame_id)
            frame_id = seq_add(frame_id, 1)
            next_frame_ns += frame_ns
        kind = rng.random()
        if kind < 0.6:
            target = rng.choice(stored[-40:])
            indices: list[int] = list(range(rng.choice([1, 10, 256, 300])))
        elif kind < 0.9:
            target = rng.getrandbits(32)
            indices = [rng.getrandbits(16) for _ in range(rng.randint(0, 300))]
        else:
            target = rng.choice(stored[-40:])
            indices = [rng.randint(-5, 70_000) for _ in range(rng.randint(0, 300))]
        if rng.random() < 0.001:
            buf.set_rate(rng.choice([2e6, 8e6, 20e6]), now)
        buf.on_nack(target, indices, now)
        assert buf.frames <= 120
        assert buf.buffered_bytes <= 2_000_000
        assert buf.counters.retransmitted_bytes <= budget
        now += step
        budget += step * buf.rate_bps / 8e9
    c = buf.counters
    assert c.nacks_received == end // step
    # Rate changes only ever credit time at the rate in force, and the largest rate bounds all of them.
    assert c.retransmitted_bytes <= burst + 0.25 * 20e6 / 8 * 5
    assert c.retransmitted_bytes <= budget + 1232
    # The limiter was the binding constraint, and it was used nearly fully.
    assert c.ignored_rate > 0
    assert c.retransmitted_bytes >= 0.8 * budget - burst
    assert c.ignored_unknown > 0 and c.ignored_limit > 0


# --- Hypothesis: bounds under random call sequences -----------------------------------------------------

frame_keys = st.integers(-3, 12)  # more distinct frames than the tracker may hold
frag_op = st.tuples(
    st.just("frag"),
    frame_keys,
    st.integers(0, 3 * MS),
    st.integers(1, 64),
    st.integers(-1, 40),
    st.lists(st.integers(-2, 70), max_size=40),
)
poll_op = st.tuples(
    st.just("poll"),
    st.integers(0, 20 * MS),
    st.one_of(st.integers(-MS, 20 * MS), st.integers(20 * MS, 120 * MS)),
)
tracker_ops = st.lists(
    # Reports and polls are the common calls, as in the engine.
    st.one_of(
        frag_op,
        frag_op,
        frag_op,
        poll_op,
        poll_op,
        st.tuples(st.just("complete"), frame_keys, st.booleans()),
        st.tuples(st.just("abandon"), frame_keys),
    ),
    min_size=20,
    max_size=150,
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(ops=tracker_ops, base=st.sampled_from([0, 1000, SEQ_MASK - 20]))
def test_tracker_bounds_under_random_calls(ops: list[tuple[object, ...]], base: int) -> None:
    max_frames, max_indices, max_retries = 8, 16, 2
    t = NackTracker(
        DEADLINE, max_frames=max_frames, max_indices=max_indices, max_retries=max_retries, finished_ids=16
    )
    now = 0
    last_report: dict[int, tuple[int, int, tuple[int, ...], int]] = {}
    nacks: dict[int, list[int]] = {}  # frame id -> when it was NACKed, while tracked
    total_nacks = 0
    for op in ops:
        if op[0] == "frag":
            _, k, dt, count, need, missing = op
            assert isinstance(k, int) and isinstance(dt, int) and isinstance(count, int)
            assert isinstance(need, int) and isinstance(missing, list)
            now += dt
            fid = seq_add(base, k)
            first = last_report.get(fid, (now, 0, (), 0))[0]
            t.on_fragment(fid, now, data_count=count, still_needed=need, missing=tuple(missing))
            last_report[fid] = (first, count, tuple(missing), need)
        elif op[0] == "complete":
            _, k, flag = op
            assert isinstance(k, int) and isinstance(flag, bool)
            t.on_complete(seq_add(base, k), by_retransmit=flag)
        elif op[0] == "abandon":
            _, k = op
            assert isinstance(k, int)
            t.on_abandoned(seq_add(base, k))
        else:
            _, dt, rtt = op
            assert isinstance(dt, int) and isinstance(rtt, int)
            now += dt
            due = t.next_poll_ns(rtt)
            out = t.poll(now, rtt)
            if out:
                assert due is not None and due <= now
            for fid, indices in out:
                first, count, missing, need = last_report[fid]
                assert 0 < len(indices) <= min(max_indices, need)
                assert list(indices) == sorted(set(indices))
                assert set(indices) <= {i for i in missing if 0 <= i < count}
                assert now + max(rtt, 0) + t.margin_ns < first + DEADLINE
                times = nacks.setdefault(fid, [])
                if times:
                    assert now - times[-1] >= t.retry_interval_ns(rtt)
                times.append(now)
                assert len(times) <= 1 + max_retries
        assert t.tracked <= max_frames
        assert len(t._finished) <= 16
        # A frame that left the tracker (finished or forgotten) starts afresh if it is ever reported again.
        for fid in [fid for fid in last_report if fid not in t._frames]:
            del last_report[fid]
            total_nacks += len(nacks.pop(fid, []))
    total_nacks += sum(len(v) for v in nacks.values())
    assert t.counters.nacks_sent == total_nacks


buffer_keys = st.integers(-2, 7)  # a few more distinct frames than the buffer may hold
buffer_ops = st.lists(
    st.one_of(
        st.tuples(st.just("store"), buffer_keys, st.integers(1, 40_000), st.integers(0, 40 * MS)),
        st.tuples(
            st.just("nack"),
            buffer_keys,
            st.one_of(
                st.lists(st.integers(-3, 40), max_size=300),
                st.integers(0, 300).map(lambda n: list(range(n))),
            ),
            st.integers(0, 5 * MS),
        ),
        st.tuples(st.just("rate"), st.sampled_from([1e6, 8e6, 50e6]), st.integers(0, 5 * MS)),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(ops=buffer_ops, base=st.sampled_from([0, SEQ_MASK - 10]))
def test_buffer_bounds_under_random_calls(ops: list[tuple[object, ...]], base: int) -> None:
    burst, max_frames, max_bytes, max_per = 8_000, 6, 60_000, 2
    buf = RetransmitBuffer(
        8e6,
        burst_bytes=burst,
        max_frames=max_frames,
        max_bytes=max_bytes,
        max_age_ns=100 * MS,
        max_per_fragment=max_per,
        max_indices=256,
    )
    seqs = SequenceCounter()
    now = 0
    budget = float(burst)
    stored_at: dict[int, int] = {}
    generation: dict[int, int] = {}
    resent: dict[tuple[int, int, int], int] = {}  # (frame id, store generation, index) -> resends
    for op in ops:
        if op[0] == "store":
            _, k, size, dt = op
            assert isinstance(k, int) and isinstance(size, int) and isinstance(dt, int)
            budget += dt * buf.rate_bps / 8e9
            now += dt
            fid = seq_add(base, k)
            buf.store(fid, frame_packets(fid, size, seqs), now)
            stored_at[fid] = now
            generation[fid] = generation.get(fid, 0) + 1
        elif op[0] == "nack":
            _, k, indices, dt = op
            assert isinstance(k, int) and isinstance(indices, list) and isinstance(dt, int)
            budget += dt * buf.rate_bps / 8e9
            now += dt
            fid = seq_add(base, k)
            for pkt in buf.on_nack(fid, indices, now):
                assert pkt.frame_id == fid and pkt.fragment_index in indices
                assert now - stored_at[fid] <= 100 * MS
                key = (fid, generation[fid], pkt.fragment_index)
                resent[key] = resent.get(key, 0) + 1
                assert resent[key] <= max_per
        else:
            _, rate, dt = op
            assert isinstance(rate, float) and isinstance(dt, int)
            budget += dt * buf.rate_bps / 8e9
            now += dt
            buf.set_rate(rate, now)
        assert buf.frames <= max_frames
        assert 0 <= buf.buffered_bytes <= max_bytes
        assert buf.counters.retransmitted_bytes <= budget + 1e-6
        assert sum(len(s.resent) for s in buf._frames.values()) <= sum(
            len(s.packets) for s in buf._frames.values()
        )


# --- Tracker and buffer together over a lossy link ------------------------------------------------------


def test_lossy_link_recovers_frames_within_the_deadline() -> None:
    """60 fps of 12-fragment frames over a link losing 5 % of packets each way, 10 ms RTT, simulated."""
    rng = random.Random(7)
    one_way = 5 * MS
    rtt = 2 * one_way
    seqs = SequenceCounter()
    t = NackTracker(DEADLINE, reorder_ns=3 * MS)
    buf = RetransmitBuffer(8e6)
    events: list[tuple[int, int, str, Any]] = []
    order = itertools.count()

    def push(at: int, kind: str, item: Any) -> None:
        heapq.heappush(events, (at, next(order), kind, item))

    def send(at: int, kind: str, item: Any) -> None:
        if rng.random() >= 0.05:
            push(at + one_way + rng.randint(0, 200_000), kind, item)  # up to 0.2 ms of jitter

    first_id = SEQ_MASK - 30
    for n in range(300):
        push(n * S // 60, "encode", seq_add(first_id, n))
    held: dict[int, set[int]] = {}
    first_arrival: dict[int, int] = {}
    completed_at: dict[int, int] = {}
    finished: set[int] = set()
    retransmitted: set[tuple[int, int]] = set()
    timer_at: int | None = None
    while events:
        now, _, kind, item = heapq.heappop(events)
        if kind == "encode":
            packets = frame_packets(item, 12 * 1000, seqs, mtu=1000)
            buf.store(item, packets, now)
            for i, pkt in enumerate(packets):
                send(now + i * 10_000, "media", pkt)
        elif kind == "nack":
            for pkt in buf.on_nack(item[0], item[1], now):
                retransmitted.add((pkt.frame_id, pkt.fragment_index))
                send(now, "media", pkt)
        elif kind == "media" and item.frame_id not in finished:
            fid = item.frame_id
            got = held.setdefault(fid, set())
            first_arrival.setdefault(fid, now)
            got.add(item.fragment_index)
            if len(got) == 12:
                finished.add(fid)
                completed_at[fid] = now
                t.on_complete(fid, by_retransmit=(fid, item.fragment_index) in retransmitted)
            else:
                missing = tuple(i for i in range(12) if i not in got)
                t.on_fragment(fid, now, data_count=12, still_needed=len(missing), missing=missing)
        # The receiver's timers, as the engine runs them after every packet and on wake-up.
        for fid, at in first_arrival.items():
            if fid not in finished and now - at > DEADLINE:
                finished.add(fid)
                t.on_abandoned(fid)
        for fid, indices in t.poll(now, rtt):
            send(now, "nack", (fid, indices))
        due = t.next_poll_ns(rtt)
        if due is not None and (timer_at is None or timer_at <= now or due < timer_at):
            timer_at = max(due, now + 1)
            push(timer_at, "timer", None)
    c = t.counters
    assert all(completed_at[fid] - first_arrival[fid] <= DEADLINE for fid in completed_at)
    # Without NACKs 1 − 0.95**12 ≈ 46 % of the frames would be incomplete; with them almost none are.
    assert c.frames_recovered_by_nack > 100
    assert len(completed_at) >= 297
    assert c.nack_skipped_deadline == 0
    assert buf.counters.ignored_rate == 0
    # NACKs ask only for lost fragments, not for ones merely reordered by the jitter.
    assert c.fragments_requested <= 1.1 * 0.05 * 300 * 12 * 1.2
