"""The audio jitter buffer's ordered store: order, duplicates, late frames, wrap-around, resync."""

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from app.audio.jitter import AudioJitterBuffer, seq16_diff


def put(jb: AudioJitterBuffer, seq: int, *, redundant: bool = False) -> str:
    return jb.put(seq, seq * 10_000, bytes([seq & 0xFF]) or b"x", 0, redundant=redundant)


def test_seq16_diff_wraps():
    assert seq16_diff(0, 65535) == 1
    assert seq16_diff(65535, 0) == -1
    assert seq16_diff(5, 5) == 0
    assert seq16_diff(0x8000, 0) == -0x8000


def test_frames_come_out_in_order_whatever_order_they_arrive_in():
    jb = AudioJitterBuffer()
    assert put(jb, 10) == "stored"
    assert put(jb, 12) == "stored"
    kind, f = jb.pop()
    assert kind == "frame" and f is not None and f.seq == 10
    assert jb.pop() == ("missing", None)
    assert jb.following() is not None and jb.following().seq == 12
    assert put(jb, 11) == "stored"
    assert [jb.pop()[1].seq for _ in range(2)] == [11, 12]
    assert jb.pop() == ("empty", None)


def test_duplicates_and_late_copies_are_dropped_and_counted():
    jb = AudioJitterBuffer()
    put(jb, 100)
    assert put(jb, 100, redundant=True) == "duplicate"
    jb.pop()
    assert put(jb, 100, redundant=True) == "late"
    assert put(jb, 99, redundant=True) == "late"
    assert put(jb, 99) == "late"
    assert jb.counters["duplicates"] == 1
    assert jb.counters["stale_copies"] == 2  # redundant copies of frames already played: the usual case
    assert jb.counters["late"] == 1


def test_skip_gives_a_missing_frame_up():
    jb = AudioJitterBuffer()
    put(jb, 1)
    jb.pop()
    put(jb, 3)
    assert jb.pop()[0] == "missing"
    jb.skip()
    assert put(jb, 2) == "late"
    assert jb.pop()[1].seq == 3


def test_wraps_around_65535():
    jb = AudioJitterBuffer()
    for s in (65534, 65535, 0, 1):
        assert put(jb, s) == "stored"
    assert [jb.pop()[1].seq for _ in range(4)] == [65534, 65535, 0, 1]
    assert jb.span() == 0


def test_a_restarted_sender_resyncs_instead_of_waiting():
    jb = AudioJitterBuffer(capacity=64)
    put(jb, 1000)
    jb.pop()
    assert put(jb, 40_000) == "resync"
    assert jb.next_seq == 40_000
    assert jb.pop()[1].seq == 40_000
    # Far behind the window is a restart too, not a late frame.
    assert put(jb, 39_000) == "resync"
    assert jb.counters["resyncs"] == 2


def test_span_counts_from_next_to_newest():
    jb = AudioJitterBuffer()
    put(jb, 5)
    put(jb, 9)
    assert jb.span() == 5
    assert len(jb) == 2


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 65535), st.booleans(), st.sampled_from(["put", "pop", "skip"])), max_size=300
    )
)
def test_random_traffic_never_raises_and_stays_bounded(ops):
    jb = AudioJitterBuffer(capacity=32)
    played: list[int] = []
    for seq, redundant, op in ops:
        if op == "put":
            assert put(jb, seq, redundant=redundant) in ("stored", "duplicate", "late", "resync")
        elif op == "pop":
            _kind, f = jb.pop()
            if f is not None:
                played.append(f.seq)
        else:
            jb.skip()
        assert len(jb) <= 32
    # Between resyncs frames play in increasing order.
    if jb.counters["resyncs"] == 0:
        assert all(seq16_diff(b, a) > 0 for a, b in itertools.pairwise(played))
