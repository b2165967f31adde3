"""Sequence-number arithmetic, unwrapping and the replay window, especially across the 2**32 wrap."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.net.seq import (
    SEQ_MASK,
    SEQ_MODULUS,
    ReplayWindow,
    SequenceCounter,
    Unwrapper,
    seq_add,
    seq_diff,
    seq_ge,
    seq_gt,
    seq_le,
    seq_lt,
)

u32 = st.integers(min_value=0, max_value=SEQ_MASK)
HALF = 1 << 31


def test_seq_diff_examples() -> None:
    assert seq_diff(1, 0) == 1
    assert seq_diff(0, 1) == -1
    assert seq_diff(0, SEQ_MASK) == 1
    assert seq_diff(SEQ_MASK, 0) == -1
    assert seq_diff(5, SEQ_MASK - 4) == 10
    assert seq_diff(HALF - 1, 0) == HALF - 1
    # The one ambiguous distance counts as "before".
    assert seq_diff(HALF, 0) == -HALF
    assert seq_diff(0, HALF) == -HALF


def test_comparisons_across_wrap() -> None:
    assert seq_lt(SEQ_MASK, 0)
    assert seq_gt(0, SEQ_MASK)
    assert seq_le(SEQ_MASK, SEQ_MASK) and seq_ge(0, 0)
    assert not seq_lt(0, SEQ_MASK)
    assert seq_add(SEQ_MASK, 1) == 0
    assert seq_add(0, -1) == SEQ_MASK
    assert seq_add(10, SEQ_MODULUS * 3 + 2) == 12


@settings(max_examples=500, deadline=None)
@given(a=u32, b=u32)
def test_seq_diff_properties(a: int, b: int) -> None:
    d = seq_diff(a, b)
    assert -HALF <= d < HALF
    assert seq_add(b, d) == a
    if d != -HALF:
        assert seq_diff(b, a) == -d
        assert seq_lt(a, b) == seq_gt(b, a)
        assert seq_lt(a, b) != seq_ge(a, b)
    assert seq_le(a, b) == (seq_lt(a, b) or a == b)


@settings(max_examples=500, deadline=None)
@given(a=u32, n=st.integers(min_value=1, max_value=HALF - 1))
def test_later_values_compare_greater_across_wrap(a: int, n: int) -> None:
    b = seq_add(a, n)
    assert seq_lt(a, b) and seq_gt(b, a)
    assert seq_diff(b, a) == n


def test_unwrapper_crosses_wrap_forward_and_back() -> None:
    u = Unwrapper()
    assert u.last is None
    assert u.unwrap(SEQ_MASK - 1) == SEQ_MASK - 1
    assert u.unwrap(SEQ_MASK) == SEQ_MASK
    assert u.unwrap(0) == SEQ_MODULUS
    assert u.unwrap(1) == SEQ_MODULUS + 1
    # A reordered value from before the wrap stays before it.
    assert u.unwrap(SEQ_MASK) == SEQ_MASK
    assert u.unwrap(2) == SEQ_MODULUS + 2
    u.reset()
    assert u.unwrap(7) == 7


def test_unwrapper_before_first_value_is_negative() -> None:
    u = Unwrapper()
    assert u.unwrap(0) == 0
    assert u.unwrap(SEQ_MASK) == -1


@settings(max_examples=300, deadline=None)
@given(
    start=st.integers(min_value=SEQ_MODULUS - 5000, max_value=SEQ_MODULUS + 5000),
    steps=st.lists(st.integers(min_value=-3000, max_value=3000), max_size=60),
)
def test_unwrapper_recovers_true_positions(start: int, steps: list[int]) -> None:
    u = Unwrapper()
    first = u.unwrap(start & SEQ_MASK)
    pos = start
    for step in steps:
        pos += step
        # Differences on the unbounded line are exact, whatever the wraps in between.
        assert u.unwrap(pos & SEQ_MASK) - first == pos - start


def test_sequence_counter_wraps() -> None:
    c = SequenceCounter(SEQ_MASK - 1)
    assert [c(), c(), c()] == [SEQ_MASK - 1, SEQ_MASK, 0]
    assert c.peek() == 1
    with pytest.raises(ValueError, match="start -1 is not a 32-bit sequence number"):
        SequenceCounter(-1)
    with pytest.raises(ValueError):
        SequenceCounter(SEQ_MODULUS)


def test_replay_window_basics() -> None:
    w = ReplayWindow(size=8)
    assert w.highest is None
    assert w.check_and_update(100)
    assert not w.check_and_update(100)
    assert w.check_and_update(102)
    assert w.check_and_update(101)  # reordered, inside the window, unseen
    assert not w.check_and_update(101)
    assert w.highest == 102
    assert w.check_and_update(95)  # 102 - 7: the oldest number still inside an 8-wide window
    assert not w.check(94)  # 102 - 8: too old
    assert w.check_and_update(200)  # a jump clears the window
    assert w.check_and_update(193)
    assert not w.check_and_update(192)
    assert not w.check_and_update(102)


def test_replay_window_check_has_no_side_effect() -> None:
    w = ReplayWindow(size=4)
    assert w.check(10) and w.check(10)
    w.update(10)
    assert not w.check(10)


def test_replay_window_across_wrap() -> None:
    w = ReplayWindow(size=16)
    assert w.check_and_update(SEQ_MASK - 2)
    assert w.check_and_update(1)
    assert w.highest == 1
    assert w.check_and_update(SEQ_MASK)
    assert w.check_and_update(0)
    assert not w.check_and_update(SEQ_MASK - 2)
    assert w.check_and_update(SEQ_MASK - 1)
    assert not w.check(SEQ_MASK - 14)  # 16 below 1 across the wrap: too old


def test_replay_window_half_distance_is_too_old() -> None:
    w = ReplayWindow(size=1024)
    w.update(0)
    assert not w.check(HALF)
    assert w.check(HALF - 1)


def test_replay_window_reset_and_bounds() -> None:
    w = ReplayWindow()
    assert w.size == 1024
    w.update(5)
    w.reset()
    assert w.highest is None and w.check(5)
    with pytest.raises(ValueError, match="replay window size 0 is out of range"):
        ReplayWindow(0)


@settings(max_examples=400, deadline=None)
@given(
    size=st.sampled_from([1, 2, 8, 64, 1024]),
    start=st.integers(min_value=SEQ_MODULUS - 3000, max_value=SEQ_MODULUS + 1000),
    steps=st.lists(st.integers(min_value=-2000, max_value=2000), max_size=80),
)
def test_replay_window_matches_reference_model(size: int, start: int, steps: list[int]) -> None:
    w = ReplayWindow(size)
    seen: set[int] = set()
    highest: int | None = None
    pos = start
    for step in [0, *steps]:
        pos += step
        expected = highest is None or pos > highest or (highest - pos < size and pos not in seen)
        assert w.check_and_update(pos & SEQ_MASK) == expected
        if expected:
            seen.add(pos)
            highest = pos if highest is None else max(highest, pos)
        assert w.highest == (None if highest is None else highest & SEQ_MASK)
