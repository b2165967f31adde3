"""The lock-free rings between the sound card's thread and the audio threads."""

import numpy as np

from app.audio.ring import FrameRing, SampleRing


def test_sample_ring_wraps_and_zero_fills_what_it_lacks():
    ring = SampleRing(10)
    a = np.arange(14, dtype=np.float32).reshape(7, 2)
    assert ring.write(a) == 7
    out = np.full((5, 2), 9.0, np.float32)
    assert ring.read_into(out) == 5
    assert np.array_equal(out, a[:5])
    b = np.arange(100, 116, dtype=np.float32).reshape(8, 2)
    assert ring.write(b) == 8  # wraps around the end
    assert ring.level == 10
    assert ring.write(b) == 0  # full: nothing more fits
    out = np.full((12, 2), 9.0, np.float32)
    assert ring.read_into(out) == 10
    assert np.array_equal(out[:2], a[5:])
    assert np.array_equal(out[2:10], b)
    assert np.all(out[10:] == 0.0)
    assert ring.level == 0


def test_sample_ring_read_allocates_no_arrays():
    import tracemalloc

    ring = SampleRing(4800)
    out = np.zeros((240, 2), np.float32)
    block = np.ones((480, 2), np.float32)
    tracemalloc.start()
    try:
        for _ in range(50):
            ring.write(block)
            ring.read_into(out)
            ring.read_into(out)
        before = tracemalloc.take_snapshot()
        for _ in range(200):
            ring.read_into(out)
        peak = tracemalloc.get_traced_memory()[1]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert grown < 1024
    assert peak < 200_000  # no 1920-byte block per call adds up here


def test_frame_ring_counts():
    ring = FrameRing(2, 2, 480)
    assert len(ring) == 0 and not ring.full
    ring.written += 2
    assert ring.full
    ring.read += 1
    assert len(ring) == 1
