"""Reed–Solomon FEC over a frame's fragments (exhaustive and random erasures) and the parity policy."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.net.fec import (
    MAX_BURST,
    FecError,
    FecPolicy,
    fec_encode,
    fec_recover,
    overhead,
    residual_loss,
)
from app.net.protocol import FecPacket, fragment_offset, fragment_size

GOLDEN_DIR = Path(__file__).parent / "golden"


def fragments_of(frame: bytes, k: int) -> list[bytes]:
    size = len(frame)
    return [
        frame[fragment_offset(size, k, i) : fragment_offset(size, k, i) + fragment_size(size, k, i)]
        for i in range(k)
    ]


def blocks_of(frame: bytes, k: int, m: int) -> dict[int, bytes]:
    data = fragments_of(frame, k)
    parity = fec_encode(data, m)
    return dict(enumerate(data + parity))


def test_golden_fec_packet_carries_zfec_parity() -> None:
    """Pins the code itself: the same fragments must give the same parity on every build and platform."""
    pkt = FecPacket.parse((GOLDEN_DIR / "fec.bin").read_bytes())
    frame = b"A golden frame, !" + b"Doorway fragment!" + b"0123456789abcdef"
    data = fragments_of(frame, pkt.data_count)
    assert data[1] == b"Doorway fragment!"
    assert bytes(pkt.payload) == fec_encode(data, pkt.parity_count)[pkt.parity_index]
    recovered = fec_recover(3, 2, pkt.block_size, pkt.frame_size, {0: data[0], 2: data[2], 4: pkt.payload})
    assert b"".join(recovered) == frame


def test_encode_pads_to_the_largest_fragment() -> None:
    data = fragments_of(bytes(range(50)), 3)
    assert [len(d) for d in data] == [17, 17, 16]
    parity = fec_encode(data, 4)
    assert len(parity) == 4 and {len(p) for p in parity} == {17}
    assert all(type(p) is bytes for p in parity)
    # memoryview input (the packetizer's zero-copy slices) gives the same parity.
    view = memoryview(bytes(range(50)))
    assert fec_encode([view[0:17], view[17:34], view[34:50]], 4) == parity
    assert fec_encode(data, 0) == []
    # k = 1 is a repetition code.
    assert fec_encode([b"abc"], 2) == [b"abc", b"abc"]


@pytest.mark.parametrize(("k", "m"), [(k, m) for k in range(1, 7) for m in range(1, 5)])
def test_every_erasure_pattern_of_at_most_m_losses_recovers(k: int, m: int) -> None:
    rng = random.Random(k * 10 + m)
    frame = rng.randbytes(k * 7 + rng.randrange(k))  # uneven: the last fragments are one byte shorter
    blocks = blocks_of(frame, k, m)
    expected = fragments_of(frame, k)
    block_size = fragment_size(len(frame), k, 0)
    for kept in range(k, k + m + 1):
        for present_nums in itertools.combinations(range(k + m), kept):
            present = {n: blocks[n] for n in present_nums}
            assert fec_recover(k, m, block_size, len(frame), present) == expected


@settings(max_examples=150, deadline=None)
@given(
    k=st.integers(1, 255),
    extra_parity=st.integers(0, 255),
    per_fragment=st.integers(1, 1200),
    seed=st.integers(0, 2**32),
)
def test_random_erasures_recover_byte_exact(k: int, extra_parity: int, per_fragment: int, seed: int) -> None:
    m = 1 + extra_parity % (256 - k)
    rng = random.Random(seed)
    frame = rng.randbytes(max(k, k * per_fragment - rng.randrange(k)))
    blocks = blocks_of(frame, k, m)
    lost = rng.sample(range(k + m), rng.randint(0, m))
    present = {n: b for n, b in blocks.items() if n not in lost}
    recovered = fec_recover(k, m, fragment_size(len(frame), k, 0), len(frame), present)
    assert b"".join(recovered) == frame
    assert all(type(r) is bytes for r in recovered)


def test_typical_1080p_frame() -> None:
    """~24 KB in 20 fragments of 1200 bytes with 4 parity: any 4 lost, including the shorter last one."""
    frame = random.Random(1).randbytes(23_987)
    blocks = blocks_of(frame, 20, 4)
    for lost in ([0, 1, 2, 3], [19, 18, 5, 22], [19, 20, 21, 22], [23, 22, 21, 20]):
        present = {n: b for n, b in blocks.items() if n not in lost}
        assert b"".join(fec_recover(20, 4, 1200, len(frame), present)) == frame


def test_present_data_is_returned_as_is_and_memoryviews_become_bytes() -> None:
    frame = bytes(range(40))
    data = fragments_of(frame, 4)
    present: dict[int, bytes | memoryview] = {i: memoryview(d) for i, d in enumerate(data)}
    out = fec_recover(4, 2, 10, 40, present)
    assert out == data and all(type(o) is bytes for o in out)
    same = fec_recover(4, 0, 10, 40, dict(enumerate(data)))
    assert same[2] is data[2]


def test_recovery_ignores_surplus_blocks() -> None:
    frame = random.Random(3).randbytes(1000)
    blocks = blocks_of(frame, 5, 5)
    del blocks[0]
    assert b"".join(fec_recover(5, 5, 200, 1000, blocks)) == frame


ENCODE_ERRORS = [
    ([], 1, "no data fragments to protect"),
    ([b"a"], -1, "parity count -1 is negative"),
    ([b"a"] * 200, 57, "200 data + 57 parity blocks exceed 256"),
    ([b"ab", b""], 1, "a data fragment is empty"),
]


@pytest.mark.parametrize(("data", "m", "message"), ENCODE_ERRORS)
def test_encode_errors(data: list[bytes], m: int, message: str) -> None:
    with pytest.raises(FecError) as err:
        fec_encode(data, m)
    assert str(err.value) == message


def test_recover_errors() -> None:
    frame = bytes(range(50))
    blocks = blocks_of(frame, 3, 2)
    cases: list[tuple[tuple[int, int, int, int, dict[int, bytes]], str]] = [
        ((0, 2, 17, 50, blocks), "k = 0, m = 2: need k ≥ 1, m ≥ 0 and k + m ≤ 256"),
        ((3, -1, 17, 50, blocks), "k = 3, m = -1: need k ≥ 1, m ≥ 0 and k + m ≤ 256"),
        ((3, 254, 17, 50, blocks), "k = 3, m = 254: need k ≥ 1, m ≥ 0 and k + m ≤ 256"),
        ((3, 2, 17, 2, blocks), "frame size 2 is out of range 3..16777216"),
        ((3, 2, 16, 50, blocks), "block size 16 does not match 3 fragments of a 50-byte frame (17)"),
        ((3, 2, 17, 50, {**blocks, 5: b"x" * 17}), "block number 5 is out of range 0..4"),
        ((3, 2, 17, 50, {**blocks, -1: b"x" * 17}), "block number -1 is out of range 0..4"),
        (
            (3, 2, 17, 50, {0: blocks[0], 1: blocks[1], 2: b"x" * 17}),
            "data fragment 2 is 17 bytes, expected 16",
        ),
        (
            (3, 2, 17, 50, {0: blocks[0], 3: b"x" * 16, 4: blocks[4]}),
            "parity block 0 is 16 bytes, expected 17",
        ),
        ((3, 2, 17, 50, {0: blocks[0], 4: blocks[4]}), "only 2 of the 3 blocks needed are present"),
        ((3, 2, 17, 50, {}), "only 0 of the 3 blocks needed are present"),
    ]
    for args, message in cases:
        with pytest.raises(FecError) as err:
            fec_recover(*args)
        assert str(err.value) == message
    assert issubclass(FecError, ValueError)


# --- Policy ------------------------------------------------------------------------------------------------

POLICY = FecPolicy()
LOSSES = [
    0.0,
    1e-5,
    1e-4,
    2e-4,
    5e-4,
    1e-3,
    3e-3,
    0.01,
    0.02,
    0.03,
    0.05,
    0.08,
    0.1,
    0.2,
    0.3,
    0.49,
    0.5,
    0.9,
    1.0,
]
BURSTS = [1.0, 1.4, 1.5, 2.0, 2.6, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0, 16.0, 40.0]
SIZES = [1, 2, 3, 5, 10, 20, 40, 100, 200, 254, 255, 256, 400]


def test_policy_examples() -> None:
    # 1080p P frame, ~20 fragments: 1 % independent loss needs 3 parity (13 % of the packets).
    assert POLICY.parity_for(20, 0.01) == 3
    assert POLICY.parity_for(20, 0.05) == 6
    # Bursts of 3 at 5 % hit the 50 % cap.
    assert POLICY.parity_for(20, 0.05, 3.0) == 10
    assert POLICY.parity_for(20, 0.01, 3.0) == 6
    assert math.isclose(POLICY.overhead(20, 0.01), 3 / 23)


def test_policy_zero_loss_gets_no_parity_and_small_loss_at_least_one() -> None:
    for k in SIZES:
        assert POLICY.parity_for(k, 0.0) == 0
        assert POLICY.parity_for(k, 1e-4) == 0  # at the threshold: still none
        assert POLICY.parity_for(k, -0.5) == 0
        assert POLICY.parity_for(k, math.nan) == 0
        assert POLICY.parity_for(k, 1.1e-4) == min(1, POLICY.max_parity(k))
    assert FecPolicy(min_parity=0).parity_for(1, 2e-4) == 0


def test_policy_is_bounded() -> None:
    for k in SIZES:
        cap = POLICY.max_parity(k)
        assert cap == max(0, min(math.ceil(k / 2), 256 - k))
        for p in LOSSES:
            for b in BURSTS:
                m = POLICY.parity_for(k, p, b)
                assert (0 <= m <= cap and k + m <= 256) or (k > 255 and m == 0)
    assert POLICY.parity_for(256, 0.3) == 0 and POLICY.parity_for(400, 0.3) == 0
    assert POLICY.parity_for(20, 0.5) == POLICY.parity_for(20, 1.0) == POLICY.parity_for(20, math.inf) == 10


def test_policy_is_monotonic_in_loss_and_burst() -> None:
    for k in SIZES:
        grid = [[POLICY.parity_for(k, p, b) for b in BURSTS] for p in LOSSES]
        for row in grid:
            assert row == sorted(row), (k, row)
        for column in zip(*grid, strict=True):
            assert list(column) == sorted(column), (k, column)
    # Bursts beyond the modelled length protect no less than the longest modelled one.
    assert POLICY.parity_for(100, 0.05, 1000.0) == POLICY.parity_for(100, 0.05, MAX_BURST)


@settings(max_examples=300, deadline=None)
@given(
    k=st.integers(1, 300),
    p1=st.floats(0.0, 1.0),
    p2=st.floats(0.0, 1.0),
    b1=st.floats(1.0, 20.0),
    b2=st.floats(1.0, 20.0),
)
def test_policy_monotonic_property(k: int, p1: float, p2: float, b1: float, b2: float) -> None:
    lo_p, hi_p = sorted((p1, p2))
    lo_b, hi_b = sorted((b1, b2))
    assert POLICY.parity_for(k, lo_p, lo_b) <= POLICY.parity_for(k, hi_p, lo_b)
    assert POLICY.parity_for(k, lo_p, lo_b) <= POLICY.parity_for(k, lo_p, hi_b)


def test_policy_meets_the_target_when_not_capped() -> None:
    for k in [1, 2, 5, 10, 20, 40, 100, 200]:
        for p in [1e-3, 0.01, 0.02, 0.05, 0.1]:
            m = POLICY.parity_for(k, p)
            if m < POLICY.max_parity(k):
                assert residual_loss(k, m, p) < POLICY.target
                # And it is the least that does (the loss grid rounds p up by under 4 %).
                if m > POLICY.min_parity:
                    assert residual_loss(k, m - 1, p) >= POLICY.target * 0.8


def test_residual_loss() -> None:
    # No parity: the frame is lost when any packet is.
    assert math.isclose(residual_loss(20, 0, 0.01), 1 - 0.99**20)
    assert residual_loss(20, 0, 0.0) == 0.0
    assert residual_loss(20, 4, 1.0) == 1.0
    # Independent losses: P[Binomial(k + m, p) > m].
    p, n = 0.05, 26
    exact = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(7, n + 1))
    assert math.isclose(residual_loss(20, 6, p), exact, rel_tol=1e-9)
    # Above p = 0.5 the tail is computed from the packets received, without underflow.
    q, n = 0.97, 252
    exact = sum(math.comb(n, i) * q**i * (1 - q) ** (n - i) for i in range(251, n + 1))
    assert 0.0 < exact < 0.01
    assert math.isclose(residual_loss(2, 250, q), exact, rel_tol=1e-9)
    # Bursts of 3: a frame survives ⌊m / 3⌋ bursts, which start at rate p / 3.
    assert residual_loss(20, 2, 0.03, 3.0) == pytest.approx(1 - (1 - 0.01) ** 22)


def test_overhead() -> None:
    assert overhead(20, 0) == 0.0
    assert overhead(20, 5) == 0.2
    assert overhead(0, 0) == 0.0
    assert POLICY.overhead(20, 0.0) == 0.0


def test_policy_config_is_checked() -> None:
    with pytest.raises(ValueError, match="target 0"):
        FecPolicy(target=0.0)
    with pytest.raises(ValueError, match="zero_below 1"):
        FecPolicy(zero_below=1.0)
    with pytest.raises(ValueError, match="min_parity -1"):
        FecPolicy(min_parity=-1)
    with pytest.raises(ValueError, match="max_ratio 0"):
        FecPolicy(max_ratio=0.0)
    with pytest.raises(ValueError, match="data count 0 is below 1"):
        POLICY.parity_for(0, 0.1)
    # A tighter target and a higher cap buy more parity.
    strict = FecPolicy(target=1e-6, max_ratio=1.0)
    assert strict.parity_for(20, 0.05) > POLICY.parity_for(20, 0.05)
