"""Jitter buffer release rules with simulated time: order, gaps, loss, keyframe jumps, wrap, bounds."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.net.fragment import AssembledFrame
from app.net.jitter import JitterBuffer
from app.net.seq import SEQ_MASK, Unwrapper, seq_add

MS = 1_000_000
TIMEOUT = 100 * MS


def fr(frame_id: int, key: bool = False) -> AssembledFrame:
    return AssembledFrame(frame_id & SEQ_MASK, b"", key, 0, 0, 0, 1)


def K(frame_id: int) -> AssembledFrame:
    return fr(frame_id, key=True)


def ids(frames: list[AssembledFrame]) -> list[int]:
    return [f.frame_id for f in frames]


def test_in_order_releases_each_frame_at_once() -> None:
    jb = JitterBuffer(TIMEOUT)
    assert jb.waiting_for_keyframe and jb.last_released is None
    assert ids(jb.push(K(0), 0)) == [0]
    assert ids(jb.push(fr(1), 1)) == [1]
    assert ids(jb.push(fr(2), 2)) == [2]
    assert not jb.keyframe_needed and not jb.waiting_for_keyframe
    assert jb.last_released == 2
    assert jb.counters.released == 3 and jb.counters.held == 0


def test_reordered_frame_releases_its_waiting_successors() -> None:
    jb = JitterBuffer(TIMEOUT)
    jb.push(K(0), 0)
    assert jb.push(fr(3), 1) == []
    assert jb.push(fr(2), 2) == []
    assert jb.held_count == 2
    assert ids(jb.push(fr(1), 3)) == [1, 2, 3]
    assert jb.held_count == 0 and jb.counters.held == 2 and not jb.keyframe_needed


def test_frame_arriving_after_the_timeout_is_still_used() -> None:
    jb = JitterBuffer(TIMEOUT)
    jb.push(K(0), 0)
    jb.push(fr(2), 0)
    # The missing frame arrives after frame 2 waited longer than the timeout, but before anything polled.
    assert ids(jb.push(fr(1), TIMEOUT + 5)) == [1, 2]
    assert jb.counters.lost_gaps == 0


def test_starting_on_a_p_frame_needs_a_keyframe() -> None:
    jb = JitterBuffer(TIMEOUT)
    assert jb.push(fr(5), 0) == []
    assert jb.keyframe_needed and jb.counters.keyframes_needed == 1
    # The keyframe it depends on was merely reordered.
    assert ids(jb.push(K(4), 1)) == [4, 5]
    assert not jb.keyframe_needed


def test_gap_timeout_breaks_chain_until_keyframe() -> None:
    jb = JitterBuffer(TIMEOUT)
    jb.push(K(0), 0)
    jb.push(fr(1), 0)
    assert jb.push(fr(3), 10) == []
    assert jb.poll(10 + TIMEOUT) == []
    assert not jb.keyframe_needed
    assert jb.poll(11 + TIMEOUT) == []
    assert jb.keyframe_needed and jb.waiting_for_keyframe
    assert jb.counters.lost_gaps == 1 and jb.counters.dropped == 1 and jb.held_count == 0
    # Frame 2 turns up after all: too late, the chain is broken; it waits for a keyframe.
    assert jb.push(fr(2), 200 * MS) == []
    assert jb.push(fr(4), 201 * MS) == []
    assert ids(jb.push(K(5), 202 * MS)) == [5]
    assert jb.counters.skipped == 2
    assert ids(jb.push(fr(6), 203 * MS)) == [6]
    assert jb.counters.keyframes_needed == 1


def test_mark_lost_breaks_chain_at_once() -> None:
    jb = JitterBuffer(TIMEOUT)
    jb.push(K(0), 0)
    jb.mark_lost(1)
    assert jb.keyframe_needed and jb.waiting_for_keyframe and jb.counters.lost_gaps == 1
    assert jb.push(fr(2), 1) == []
    assert ids(jb.push(K(3), 2)) == [3]


def test_mark_lost_ahead_breaks_chain_when_reached() -> None:
    jb = JitterBuffer(TIMEOUT)
    jb.push(K(0), 0)
    jb.mark_lost(3)
    assert not jb.keyframe_needed
    assert ids(jb.push(fr(2), 1)) == []
    assert ids(jb.push(fr(1), 2)) == [1, 2]
    # Frame 3 is known lost: no point waiting for the timeout.
    assert jb.keyframe_needed and jb.counters.lost_gaps == 1
    jb.mark_lost(1)  # already passed: ignored
    assert jb.counters.lost_gaps == 1


def test_mark_lost_while_frames_wait_breaks_when_held() -> None:
    jb = JitterBuffer(TIMEOUT)
    jb.push(K(0), 0)
    jb.mark_lost(2)
    jb.push(fr(3), 1)
    assert jb.held_count == 1 and not jb.keyframe_needed
    assert ids(jb.push(fr(1), 2)) == [1]
    assert jb.keyframe_needed and jb.held_count == 0 and jb.counters.dropped == 1


def test_keyframe_jump_skips_older_frames() -> None:
    jb = JitterBuffer(TIMEOUT)
    jb.push(K(0), 0)
    jb.push(fr(1), 0)
    jb.push(fr(3), 1)
    jb.push(fr(4), 1)
    assert ids(jb.push(K(6), 2)) == [6]
    assert jb.counters.skipped == 2 and jb.held_count == 0
    assert jb.push(fr(5), 3) == []  # older than what was released
    assert jb.counters.late == 1
    assert ids(jb.push(fr(7), 4)) == [7]


def test_keyframe_jump_releases_waiting_successors() -> None:
    jb = JitterBuffer(TIMEOUT)
    jb.push(K(0), 0)
    jb.push(fr(6), 1)
    jb.push(fr(7), 1)
    jb.push(fr(3), 1)
    assert ids(jb.push(K(5), 2)) == [5, 6, 7]
    assert jb.counters.skipped == 1


def test_late_and_duplicate_frames_are_dropped() -> None:
    jb = JitterBuffer(TIMEOUT)
    jb.push(K(10), 0)
    jb.push(fr(11), 0)
    assert jb.push(fr(11), 0) == []
    assert jb.push(K(10), 0) == []
    assert jb.push(fr(9), 0) == []
    jb.push(fr(13), 0)
    assert jb.push(fr(13), 0) == []
    assert jb.counters.late == 4
    assert ids(jb.push(fr(12), 0)) == [12, 13]


def test_wrap_around_at_2_32() -> None:
    jb = JitterBuffer(TIMEOUT)
    start = SEQ_MASK - 2
    assert ids(jb.push(K(start), 0)) == [start]
    assert jb.push(fr(seq_add(start, 2)), 1) == []
    assert jb.push(fr(seq_add(start, 4)), 1) == []
    assert ids(jb.push(fr(seq_add(start, 1)), 2)) == [SEQ_MASK - 1, SEQ_MASK]
    assert ids(jb.push(fr(seq_add(start, 3)), 3)) == [0, 1]
    assert jb.push(fr(SEQ_MASK), 4) == []  # before the wrap, so before everything released
    assert jb.counters.late == 1
    assert ids(jb.push(K(5), 5)) == [5]
    assert jb.counters.skipped == 0


def test_held_frames_are_bounded_with_intact_chain() -> None:
    jb = JitterBuffer(TIMEOUT, max_held=4)
    jb.push(K(0), 0)
    for fid in range(2, 6):
        jb.push(fr(fid), 0)
    assert jb.held_count == 4 and not jb.keyframe_needed
    jb.push(fr(6), 0)
    assert jb.held_count == 0 and jb.keyframe_needed
    assert jb.counters.lost_gaps == 1 and jb.counters.dropped == 5


def test_held_frames_are_bounded_while_waiting_for_keyframe() -> None:
    jb = JitterBuffer(TIMEOUT, max_held=4)
    for fid in range(100, 110):
        jb.push(fr(fid), 0)
    assert jb.held_count == 4 and jb.counters.dropped == 6
    assert ids(jb.push(K(105), 1)) == [105, 106, 107, 108, 109]


def test_waiting_frames_age_out_while_broken_and_flag_is_raised_again() -> None:
    jb = JitterBuffer(TIMEOUT)
    jb.push(fr(7), 0)
    assert jb.keyframe_needed
    jb.clear_keyframe_needed()
    assert not jb.keyframe_needed
    jb.push(fr(8), 10)
    assert jb.keyframe_needed  # still no keyframe: ask again
    jb.clear_keyframe_needed()
    jb.poll(TIMEOUT + 1)
    assert jb.held_count == 1 and jb.counters.dropped == 1 and jb.keyframe_needed
    jb.poll(TIMEOUT + 11)
    assert jb.held_count == 0 and jb.counters.dropped == 2
    assert jb.counters.keyframes_needed == 3


def test_lost_ids_are_bounded_and_pruned_by_keyframes() -> None:
    jb = JitterBuffer(TIMEOUT, max_lost_ids=8)
    for fid in range(100, 200):
        jb.mark_lost(fid)
    assert len(jb._lost) == 8
    jb.push(K(195), 0)
    assert sorted(jb._lost) == [196, 197, 198, 199]


def test_break_chain_from_decoder() -> None:
    jb = JitterBuffer(TIMEOUT)
    jb.push(K(0), 0)
    jb.push(fr(2), 0)
    jb.break_chain()
    assert jb.keyframe_needed and jb.waiting_for_keyframe and jb.counters.dropped == 1
    assert jb.counters.lost_gaps == 0
    assert jb.push(fr(1), 1) == []
    jb.clear_keyframe_needed()
    jb.break_chain()
    assert jb.keyframe_needed


def test_reset_returns_to_start() -> None:
    jb = JitterBuffer(TIMEOUT)
    jb.push(K(1000), 0)
    jb.push(fr(1002), 0)
    jb.reset()
    assert jb.last_released is None and jb.held_count == 0 and jb.waiting_for_keyframe
    assert ids(jb.push(K(0), 1)) == [0]  # a restarted peer's ids start over


def test_counters_dict_and_bounds() -> None:
    jb = JitterBuffer(TIMEOUT)
    assert set(jb.counters_dict()) == {
        "released",
        "held",
        "skipped",
        "dropped",
        "lost_gaps",
        "late",
        "keyframes_needed",
    }
    with pytest.raises(ValueError):
        JitterBuffer(-1)
    with pytest.raises(ValueError):
        JitterBuffer(TIMEOUT, max_held=0)
    with pytest.raises(ValueError):
        JitterBuffer(TIMEOUT, max_lost_ids=0)


@settings(max_examples=400, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    start=st.integers(SEQ_MASK - 40, SEQ_MASK + 40),
    n=st.integers(1, 80),
    gop=st.integers(1, 20),
    drop=st.floats(0.0, 0.3),
    spread=st.integers(0, 8),
    timeout_ms=st.integers(0, 60),
    max_held=st.integers(1, 16),
)
def test_released_frames_always_form_a_decodable_chain(
    seed: int, start: int, n: int, gop: int, drop: float, spread: int, timeout_ms: int, max_held: int
) -> None:
    rng = random.Random(seed)
    frames = [fr(start + i, key=(i % gop == 0)) for i in range(n)]
    sent = [f for f in frames if rng.random() >= drop]
    dropped = [f.frame_id for f in frames if f not in sent]
    # Reorder by a bounded random displacement, the way a network reorders.
    order = sorted(range(len(sent)), key=lambda i: i + rng.uniform(0, spread))
    jb = JitterBuffer(timeout_ms * MS, max_held=max_held)
    released: list[AssembledFrame] = []
    now = 0
    for i in order:
        now += rng.randint(0, 20) * MS
        released += jb.push(sent[i], now)
        if dropped and rng.random() < 0.3:
            jb.mark_lost(dropped.pop(rng.randrange(len(dropped))))
        if rng.random() < 0.3:
            released += jb.poll(now + rng.randint(0, 5) * MS)
        assert jb.held_count <= max_held
    unwrap = Unwrapper()
    positions = [unwrap.unwrap(f.frame_id) for f in released]
    assert positions == sorted(set(positions)), "released ids must strictly increase"
    for k, f in enumerate(released):
        if not f.keyframe:
            assert k > 0 and positions[k] == positions[k - 1] + 1, (
                "a P frame must directly follow its reference"
            )
    assert jb.counters.released == len(released)


@settings(max_examples=200, deadline=None)
@given(start=st.integers(0, SEQ_MASK), n=st.integers(1, 50), gop=st.integers(1, 20))
def test_lossless_in_order_stream_is_released_whole(start: int, n: int, gop: int) -> None:
    jb = JitterBuffer(TIMEOUT)
    released = []
    for i in range(n):
        released += jb.push(fr(start + i, key=(i % gop == 0)), i * 16 * MS)
    assert ids(released) == [(start + i) & SEQ_MASK for i in range(n)]
    assert not jb.keyframe_needed and jb.counters.held == 0
