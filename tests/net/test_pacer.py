"""Token-bucket pacer with simulated time: burst, long-run rate, rate changes, odd inputs."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.net.pacer import TokenBucketPacer

S = 1_000_000_000


def send_greedily(pacer: TokenBucketPacer, size: int, seconds: float, start_ns: int = 0) -> tuple[int, int]:
    """Send ``size``-byte packets as early as the pacer allows for ``seconds``; (bytes sent, last ns)."""
    now = start_ns
    end = start_ns + int(seconds * S)
    sent = 0
    while True:
        wait = pacer.delay_ns(now, size)
        if now + wait > end:
            return sent, now
        now += wait
        pacer.consume(now, size)
        sent += size


def test_burst_leaves_back_to_back_then_rate_applies() -> None:
    pacer = TokenBucketPacer(rate_bps=8_000_000, burst_bytes=16_000)  # 1 byte per µs
    for _ in range(16):
        assert pacer.delay_ns(0, 1000) == 0
        pacer.consume(0, 1000)
    assert pacer.delay_ns(0, 1000) == 1_000_000  # 1000 bytes at 1 byte/µs
    assert pacer.delay_ns(400_000, 1000) == 600_000
    assert pacer.delay_ns(1_000_000, 1000) == 0


@pytest.mark.parametrize(("rate_bps", "size"), [(1e6, 1200), (12e6 * 8, 1232), (50e6, 300), (800e6, 8900)])
def test_long_run_rate_within_one_percent(rate_bps: float, size: int) -> None:
    burst = 16_000
    pacer = TokenBucketPacer(rate_bps, burst)
    seconds = 10.0 if rate_bps < 1e8 else 1.0
    sent, _ = send_greedily(pacer, size, seconds)
    expected = burst + rate_bps / 8 * seconds
    assert abs(sent - expected) / expected < 0.01
    assert sent <= expected + size


def test_idle_time_refills_at_most_one_burst() -> None:
    pacer = TokenBucketPacer(8_000_000, 5000)
    pacer.consume(0, 5000)
    assert pacer.tokens(0) == 0
    assert pacer.tokens(10 * S) == 5000
    sent, _ = send_greedily(pacer, 1000, 0.0, start_ns=10 * S)
    assert sent == 5000


def test_packet_larger_than_burst_goes_when_bucket_is_full_and_leaves_debt() -> None:
    pacer = TokenBucketPacer(8_000_000, 1000)
    assert pacer.delay_ns(0, 5000) == 0
    pacer.consume(0, 5000)
    assert pacer.tokens(0) == -4000
    assert pacer.delay_ns(0, 100) == 4_100_000
    assert pacer.delay_ns(0, 5000) == 5_000_000


def test_set_rate() -> None:
    pacer = TokenBucketPacer(8_000_000, 1000)
    pacer.consume(0, 1000)
    pacer.set_rate(16_000_000, now_ns=500_000)  # 500 bytes earned at the old rate
    assert pacer.tokens(500_000) == pytest.approx(500)
    assert pacer.delay_ns(500_000, 1000) == 250_000  # the other 500 at 2 bytes/µs
    assert pacer.rate_bps == 16_000_000
    pacer.set_rate(8_000_000)
    assert pacer.delay_ns(500_000, 1000) == 500_000


def test_clock_stepping_back_stands_still() -> None:
    pacer = TokenBucketPacer(8_000_000, 1000)
    pacer.consume(1_000_000, 1000)
    assert pacer.tokens(0) == 0
    assert pacer.delay_ns(0, 1000) == 1_000_000
    pacer.consume(0, 0)
    assert pacer.tokens(1_500_000) == pytest.approx(500)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="burst_bytes 0 must be at least 1"):
        TokenBucketPacer(1e6, 0)
    for bad in (0.0, -5.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="must be positive and finite"):
            TokenBucketPacer(bad, 1000)
    with pytest.raises(ValueError):
        TokenBucketPacer(1e6, 1000).set_rate(0)


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(1e5, 1e9),
    burst=st.integers(1500, 1_000_000),
    sizes=st.lists(st.integers(1, 9000), min_size=1, max_size=200),
)
def test_never_exceeds_burst_plus_rate(rate: float, burst: int, sizes: list[int]) -> None:
    pacer = TokenBucketPacer(rate, burst)
    now = 0
    sent = 0
    for size in sizes:
        wait = pacer.delay_ns(now, size)
        assert wait >= 0
        now += wait
        assert pacer.delay_ns(now, size) == 0
        pacer.consume(now, size)
        sent += size
        # The last packet may be one large packet over the bucket, nothing more.
        assert sent <= burst + rate / 8 * now / S + size + 1e-6 * sent
