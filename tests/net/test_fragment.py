"""Packetizer (even, zero-copy fragmentation) and Assembler (reassembly, drops, bounds) in simulated time."""

from __future__ import annotations

import random
import re
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.net.fec import fec_encode
from app.net.fragment import AssembledFrame, Assembler, Packetizer
from app.net.protocol import MAX_FRAME_SIZE, FecPacket, MediaFlags, MediaPacket, parse_packet
from app.net.seq import SEQ_MASK, SequenceCounter, seq_add

MS = 1_000_000


def frame_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def packetize(
    frame_id: int, data: bytes, mtu: int = 1200, keyframe: bool = False, seq: int = 0
) -> list[MediaPacket]:
    return Packetizer(0, mtu).packetize(
        frame_id, data, keyframe=keyframe, capture_us=1_000 + frame_id, next_seq=SequenceCounter(seq)
    )


# --- Packetizer --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "mtu", "expected_sizes"),
    [
        (1, 1200, [1]),
        (1200, 1200, [1200]),
        (1201, 1200, [601, 600]),
        (2400, 1200, [1200, 1200]),
        (2401, 1200, [801, 800, 800]),
        (10, 3, [3, 3, 2, 2]),
    ],
)
def test_packetizer_fewest_even_fragments(size: int, mtu: int, expected_sizes: list[int]) -> None:
    pkts = packetize(5, frame_bytes(size), mtu=mtu)
    assert [len(p.payload) for p in pkts] == expected_sizes
    assert [p.fragment_index for p in pkts] == list(range(len(pkts)))
    assert {p.fragment_count for p in pkts} == {len(pkts)}
    assert {p.frame_size for p in pkts} == {size}


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 300_000), mtu=st.integers(256, 8900))
def test_packetizer_properties(size: int, mtu: int) -> None:
    data = bytes(size)
    pkts = packetize(1, data, mtu=mtu)
    assert len(pkts) == -(-size // mtu)
    sizes = [len(p.payload) for p in pkts]
    assert max(sizes) <= mtu
    assert max(sizes) - min(sizes) <= 1
    assert sum(sizes) == size


def test_packetizer_is_zero_copy_and_numbers_packets() -> None:
    data = frame_bytes(5000, seed=1)
    counter = SequenceCounter(SEQ_MASK - 1)
    pkts = Packetizer(1, 1200).packetize(7, data, keyframe=True, capture_us=123, next_seq=counter)
    assert [p.seq for p in pkts] == [SEQ_MASK - 1, SEQ_MASK, 0, 1, 2]
    for p in pkts:
        assert isinstance(p.payload, memoryview) and p.payload.obj is data
        assert p.keyframe and p.stream_id == 1 and p.frame_id == 7 and p.capture_us == 123
    assert b"".join(bytes(p.payload) for p in pkts) == data
    # What goes on the wire parses back into equal packets.
    assert [parse_packet(bytes(p)) for p in pkts] == pkts


def test_packetizer_rejects_bad_input() -> None:
    p = Packetizer(0, 1200)
    nxt = SequenceCounter()
    with pytest.raises(ValueError, match="cannot packetize an empty frame"):
        p.packetize(0, b"", keyframe=False, capture_us=0, next_seq=nxt)
    with pytest.raises(ValueError, match="exceeds the 16777216-byte maximum"):
        p.packetize(0, bytes(MAX_FRAME_SIZE + 1), keyframe=False, capture_us=0, next_seq=nxt)
    with pytest.raises(ValueError, match="needs 65536 fragments, more than 65535"):
        Packetizer(0, 256).packetize(0, bytes(MAX_FRAME_SIZE), keyframe=False, capture_us=0, next_seq=nxt)
    with pytest.raises(ValueError, match="frame id 4294967296 is out of range"):
        p.packetize(1 << 32, b"x", keyframe=False, capture_us=0, next_seq=nxt)
    with pytest.raises(ValueError, match="capture time -1 µs"):
        p.packetize(0, b"x", keyframe=False, capture_us=-1, next_seq=nxt)
    with pytest.raises(ValueError, match="stream id 256"):
        Packetizer(256, 1200)
    with pytest.raises(ValueError, match="mtu_payload 0"):
        Packetizer(0, 0)
    assert p.fragment_count(2401) == 3


# --- Assembler ---------------------------------------------------------------------------------------------


def push_all(asm: Assembler, pkts: list[MediaPacket], now: int = 0) -> list[AssembledFrame]:
    out = []
    for p in pkts:
        f = asm.push(p, now)
        if f is not None:
            out.append(f)
    return out


def test_assembles_in_order_and_reports_times() -> None:
    data = frame_bytes(3000)
    pkts = packetize(9, data, keyframe=True)
    asm = Assembler()
    assert asm.push(pkts[0], 10) is None
    assert asm.push(pkts[1], 11) is None
    assert asm.in_flight == 1 and asm.buffered_bytes == 2000
    f = asm.push(pkts[2], 12)
    assert f == AssembledFrame(
        frame_id=9,
        data=data,
        keyframe=True,
        capture_us=1009,
        first_arrival_ns=10,
        completed_ns=12,
        packet_count=3,
        flags=1,
        stream_id=0,
        fec_recovered=0,
        retransmitted=0,
    )
    assert type(f.data) is bytes
    assert asm.in_flight == 0 and asm.buffered_bytes == 0
    assert asm.counters_dict() == {
        "packets": 3,
        "frames_completed": 1,
        "duplicates": 0,
        "inconsistent": 0,
        "late": 0,
        "oversize": 0,
        "evicted": 0,
        "expired": 0,
        "fec_packets": 0,
        "fec_unneeded": 0,
        "fec_recovered_frames": 0,
        "fec_recovered_fragments": 0,
        "retransmitted": 0,
    }


def test_single_fragment_frame_completes_at_once() -> None:
    (pkt,) = packetize(1, b"tiny")
    f = Assembler().push(MediaPacket.parse(bytes(pkt)), 5)
    assert f is not None and f.data == b"tiny" and f.packet_count == 1 and not f.keyframe


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 20_000), mtu=st.integers(100, 2000), seed=st.integers(0, 2**32))
def test_any_order_completes_exactly_on_last_fragment(size: int, mtu: int, seed: int) -> None:
    data = frame_bytes(size, seed)
    pkts = packetize(3, data, mtu=mtu)
    random.Random(seed).shuffle(pkts)
    asm = Assembler()
    for p in pkts[:-1]:
        assert asm.push(p, 0) is None
    f = asm.push(pkts[-1], 1)
    assert f is not None and f.data == data


def test_interleaved_frames_and_wrapping_ids() -> None:
    ids = [SEQ_MASK - 1, SEQ_MASK, 0, 1]
    datas = {fid: frame_bytes(2500, fid & 0xFF) for fid in ids}
    streams = [packetize(fid, datas[fid]) for fid in ids]
    interleaved = [p for group in zip(*streams, strict=True) for p in group]
    done = push_all(Assembler(), interleaved)
    assert [f.frame_id for f in done] == ids
    assert all(f.data == datas[f.frame_id] for f in done)


def test_duplicates_inconsistent_and_late_are_dropped_and_counted() -> None:
    asm = Assembler()
    pkts = packetize(4, frame_bytes(3000))
    assert asm.push(pkts[0], 0) is None
    assert asm.push(pkts[0], 0) is None
    assert asm.counters.duplicates == 1
    p = pkts[1]
    bad = [
        MediaPacket(p.seq, p.stream_id, 4, 1, 3, 3000, 9999, p.payload, p.flags),  # capture time
        MediaPacket(p.seq, p.stream_id, 4, 1, 3, 3000, p.capture_us, p.payload, 1),  # keyframe flag
        MediaPacket(p.seq, 1, 4, 1, 3, 3000, p.capture_us, p.payload, p.flags),  # stream
        MediaPacket(p.seq, p.stream_id, 4, 1, 4, 3000, p.capture_us, b"x" * 750, p.flags),  # count
        MediaPacket(p.seq, p.stream_id, 4, 1, 3, 3003, p.capture_us, b"x" * 1001, p.flags),  # size
    ]
    for b in bad:
        assert asm.push(b, 0) is None
    assert asm.counters.inconsistent == 5
    assert asm.push(pkts[1], 0) is None
    assert asm.push(pkts[2], 0) is not None
    # Stragglers of a completed frame are late, and do not start a new frame.
    assert asm.push(pkts[0], 0) is None
    assert asm.counters.late == 1 and asm.in_flight == 0


def test_expire_gives_up_old_incomplete_frames() -> None:
    asm = Assembler()
    a = packetize(1, frame_bytes(3000))
    b = packetize(2, frame_bytes(3000))
    asm.push(a[0], 0)
    asm.push(b[0], 50 * MS)
    assert asm.expire(100 * MS, 100 * MS) == []  # exactly at the deadline: not yet
    assert asm.expire(100 * MS + 1, 100 * MS) == [1]
    assert asm.counters.expired == 1 and asm.in_flight == 1
    assert asm.push(a[1], 101 * MS) is None
    assert asm.counters.late == 1
    assert asm.expire(200 * MS, 100 * MS) == [2]
    assert asm.in_flight == 0 and asm.buffered_bytes == 0
    assert asm.expire(300 * MS, 100 * MS) == []


def test_capacity_evicts_oldest_and_expire_reports_it() -> None:
    asm = Assembler(max_frames_in_flight=3)
    frames = [packetize(fid, frame_bytes(2000)) for fid in range(10, 15)]
    for f in frames:
        asm.push(f[0], 0)
    assert asm.in_flight == 3
    assert asm.counters.evicted == 2
    assert asm.expire(0, 100 * MS) == [10, 11]
    assert asm.expire(0, 100 * MS) == []
    # An evicted frame's stragglers are late; a kept one still completes.
    assert asm.push(frames[0][1], 0) is None
    assert asm.counters.late == 1
    assert asm.push(frames[4][1], 0) is not None


def test_byte_capacity_evicts_oldest() -> None:
    asm = Assembler(max_frames_in_flight=64, max_frame_bytes=10_000, max_buffered_bytes=10_000)
    a = packetize(1, frame_bytes(9000), mtu=3000)
    b = packetize(2, frame_bytes(9000), mtu=3000)
    asm.push(a[0], 0)
    asm.push(a[1], 0)
    asm.push(b[0], 0)
    assert asm.buffered_bytes == 9000
    asm.push(b[1], 0)  # 12,000 bytes held: frame 1 goes
    assert asm.counters.evicted == 1 and asm.buffered_bytes == 6000 and asm.in_flight == 1
    assert asm.push(b[2], 0) is not None


def test_oversize_frames_are_refused() -> None:
    asm = Assembler(max_frame_bytes=4000, max_buffered_bytes=4000)
    for p in packetize(1, frame_bytes(5000)):
        assert asm.push(p, 0) is None
    assert asm.counters.oversize == 5 and asm.in_flight == 0


def test_fragments_far_behind_the_newest_frame_are_late() -> None:
    asm = Assembler(finished_ids=100)
    push_all(asm, packetize(1000, b"abc"))
    assert asm.push(packetize(899, frame_bytes(3000))[0], 0) is None
    assert asm.counters.late == 1 and asm.in_flight == 0
    assert asm.push(packetize(900, frame_bytes(3000))[0], 0) is None
    assert asm.in_flight == 1


def test_finished_ids_are_bounded() -> None:
    asm = Assembler(max_frames_in_flight=4, finished_ids=8)
    for fid in range(100):
        push_all(asm, packetize(fid, b"x"))
    assert len(asm._finished) == 8


def test_reset_forgets_frames() -> None:
    asm = Assembler()
    pkts = packetize(1, frame_bytes(3000))
    asm.push(pkts[0], 0)
    push_all(asm, packetize(2, b"x"))
    asm.reset()
    assert asm.in_flight == 0 and asm.buffered_bytes == 0
    # After a reset (a restarted peer) an old id is accepted again.
    assert push_all(asm, packetize(2, b"y"))[0].data == b"y"


def test_constructor_bounds() -> None:
    with pytest.raises(ValueError):
        Assembler(max_frames_in_flight=0)
    with pytest.raises(ValueError):
        Assembler(max_frame_bytes=MAX_FRAME_SIZE + 1)
    with pytest.raises(ValueError):
        Assembler(max_frame_bytes=1000, max_buffered_bytes=999)
    with pytest.raises(ValueError):
        Assembler(max_frames_in_flight=64, finished_ids=10)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), drop=st.floats(0.0, 0.3), dup=st.floats(0.0, 0.2))
def test_lossy_reordered_stream_never_corrupts_frames(seed: int, drop: float, dup: float) -> None:
    rng = random.Random(seed)
    first = SEQ_MASK - 5
    datas = {seq_add(first, i): frame_bytes(rng.randint(1, 6000), i) for i in range(12)}
    wire: list[MediaPacket] = []
    for fid, data in datas.items():
        for p in packetize(fid, data, mtu=1000):
            if rng.random() >= drop:
                wire.append(p)
            if rng.random() < dup:
                wire.append(p)
    rng.shuffle(wire)
    asm = Assembler(max_frames_in_flight=4)
    done = push_all(asm, [MediaPacket.parse(bytes(p)) for p in wire])
    ids = [f.frame_id for f in done]
    assert len(ids) == len(set(ids))
    for f in done:
        assert f.data == datas[f.frame_id]
    assert asm.in_flight <= 4


# --- FEC and retransmission --------------------------------------------------------------------------------


def packetize_fec(
    frame_id: int, data: bytes, parity: int, mtu: int = 1200, keyframe: bool = False, seq: int = 0
) -> tuple[list[MediaPacket], list[FecPacket]]:
    pkts = Packetizer(0, mtu).packetize(
        frame_id,
        data,
        keyframe=keyframe,
        capture_us=1_000 + frame_id,
        next_seq=SequenceCounter(seq),
        parity_count=parity,
    )
    media = [p for p in pkts if isinstance(p, MediaPacket)]
    fec = [p for p in pkts if isinstance(p, FecPacket)]
    assert pkts == [*media, *fec]
    return media, fec


def wire(
    pkts: list[MediaPacket] | list[FecPacket] | list[MediaPacket | FecPacket],
) -> list[MediaPacket | FecPacket]:
    """What the receiver gets: every packet through bytes and the parser."""
    out: list[MediaPacket | FecPacket] = []
    for p in pkts:
        parsed = parse_packet(bytes(p))
        assert isinstance(parsed, MediaPacket | FecPacket)
        out.append(parsed)
    return out


def retransmission(p: MediaPacket, seq: int) -> MediaPacket:
    return MediaPacket(
        seq,
        p.stream_id,
        p.frame_id,
        p.fragment_index,
        p.fragment_count,
        p.frame_size,
        p.capture_us,
        p.payload,
        p.flags | MediaFlags.RETRANSMIT,
    )


def test_packetizer_appends_parity_packets() -> None:
    data = frame_bytes(5000, seed=2)
    counter = SequenceCounter(SEQ_MASK)
    pkts = Packetizer(3, 1200).packetize(
        8, data, keyframe=True, capture_us=77, next_seq=counter, parity_count=2
    )
    assert [p.seq for p in pkts] == [SEQ_MASK, 0, 1, 2, 3, 4, 5]
    media, fec = pkts[:5], pkts[5:]
    assert all(isinstance(p, MediaPacket) for p in media)
    for index, p in enumerate(fec):
        assert isinstance(p, FecPacket)
        assert (p.stream_id, p.frame_id, p.data_count, p.parity_count, p.parity_index) == (3, 8, 5, 2, index)
        assert (p.frame_size, p.block_size, p.capture_us, p.flags) == (5000, 1000, 77, MediaFlags.KEYFRAME)
    assert [bytes(p.payload) for p in fec] == fec_encode([p.payload for p in media], 2)
    assert wire(pkts) == pkts
    # Zero parity is the plain path: media packets only, as before.
    plain = Packetizer(3, 1200).packetize(8, data, keyframe=True, capture_us=77, next_seq=SequenceCounter())
    assert len(plain) == 5 and all(type(p) is MediaPacket for p in plain)


def test_packetizer_rejects_bad_parity_counts() -> None:
    p = Packetizer(0, 1200)
    nxt = SequenceCounter()
    with pytest.raises(ValueError, match=re.escape("parity count -1 is out of range 0..253 for 3 fragments")):
        p.packetize(0, bytes(3000), keyframe=False, capture_us=0, next_seq=nxt, parity_count=-1)
    with pytest.raises(
        ValueError, match=re.escape("parity count 254 is out of range 0..253 for 3 fragments")
    ):
        p.packetize(0, bytes(3000), keyframe=False, capture_us=0, next_seq=nxt, parity_count=254)
    # A frame of 256 fragments or more cannot carry parity at all.
    with pytest.raises(ValueError, match=re.escape("out of range 0..0 for 300 fragments")):
        Packetizer(0, 100).packetize(
            0, bytes(30_000), keyframe=False, capture_us=0, next_seq=nxt, parity_count=1
        )
    assert nxt() == 0  # nothing was numbered


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(1, 30_000),
    mtu=st.integers(200, 1500),
    parity=st.integers(1, 12),
    seed=st.integers(0, 2**32),
)
def test_frames_with_parity_complete_with_up_to_m_losses_in_any_order(
    size: int, mtu: int, parity: int, seed: int
) -> None:
    rng = random.Random(seed)
    data = frame_bytes(size, seed)
    media, fec = packetize_fec(5, data, parity, mtu=mtu)
    k = len(media)  # at most 150, so k + parity ≤ 256
    everything: list[MediaPacket | FecPacket] = [*media, *fec]
    lost = set(rng.sample(range(k + parity), rng.randint(0, parity)))
    arriving = [p for i, p in enumerate(wire(everything)) if i not in lost]
    rng.shuffle(arriving)
    asm = Assembler()
    done: list[AssembledFrame] = []
    data_in = parity_in = 0
    for p in arriving:
        frame = asm.push(p, 1)
        if done:
            assert frame is None
            continue
        if isinstance(p, MediaPacket):
            data_in += 1
        else:
            parity_in += 1
        # It completes exactly when all data, or any k packets, are in.
        should_complete = data_in == k or data_in + parity_in >= k
        assert (frame is not None) == should_complete
        if frame is not None:
            done.append(frame)
            assert frame.data == data
            assert frame.fec_recovered == k - data_in
            assert frame.packet_count == data_in + parity_in
    assert len(done) == 1
    c = asm.counters
    assert c.frames_completed == 1 and asm.in_flight == 0 and asm.buffered_bytes == 0
    assert c.fec_recovered_frames == (1 if done[0].fec_recovered else 0)
    assert c.fec_recovered_fragments == done[0].fec_recovered
    # After completion, data stragglers are late and parity is simply not needed.
    assert c.packets + c.late == sum(isinstance(p, MediaPacket) for p in arriving)
    assert c.fec_packets + c.fec_unneeded == sum(isinstance(p, FecPacket) for p in arriving)


def test_parity_first_arrival() -> None:
    data = frame_bytes(6000, seed=4)
    media, fec = packetize_fec(11, data, 3, keyframe=True)  # 5 data, 3 parity
    asm = Assembler()
    for p in fec:
        assert asm.push(p, 10) is None
    assert asm.in_flight == 1 and asm.buffered_bytes == 3 * 1200
    assert asm.missing(11) == (5, 2, (0, 1, 2, 3, 4))
    assert asm.push(media[4], 20) is None
    assert asm.missing(11) == (5, 1, (0, 1, 2, 3))
    frame = asm.push(media[1], 30)
    assert frame is not None and frame.data == data
    assert (frame.first_arrival_ns, frame.completed_ns) == (10, 30)
    assert frame.keyframe and frame.flags == MediaFlags.KEYFRAME
    assert (frame.fec_recovered, frame.packet_count, frame.retransmitted) == (3, 5, 0)
    assert asm.buffered_bytes == 0 and asm.missing(11) is None
    assert asm.counters.fec_recovered_frames == 1 and asm.counters.fec_recovered_fragments == 3


def test_single_fragment_frame_recovers_from_parity_alone() -> None:
    media, fec = packetize_fec(2, b"tiny", 1)
    asm = Assembler()
    frame = asm.push(fec[0], 5)
    assert frame is not None and frame.data == b"tiny" and frame.fec_recovered == 1
    assert asm.push(media[0], 6) is None
    assert asm.counters.late == 1


def test_parity_after_completion_is_unneeded_and_after_giving_up_late() -> None:
    asm = Assembler()
    media, fec = packetize_fec(1, frame_bytes(3000), 2)
    push_all(asm, media)
    for p in fec:
        assert asm.push(p, 0) is None
    assert asm.counters.fec_unneeded == 2 and asm.counters.late == 0
    other_media, other_fec = packetize_fec(2, frame_bytes(3000), 2)
    asm.push(other_media[0], 0)
    assert asm.expire(200 * MS, 100 * MS) == [2]
    assert asm.push(other_fec[0], 200 * MS) is None
    assert asm.counters.late == 1 and asm.counters.fec_unneeded == 2 and asm.in_flight == 0


def test_inconsistent_and_duplicate_parity_is_dropped() -> None:
    asm = Assembler()
    media, fec = packetize_fec(4, frame_bytes(3000), 2)  # 3 fragments of 1000
    asm.push(media[0], 0)
    f = fec[0]
    bad = [
        replace(f, data_count=4, block_size=750, payload=b"z" * 750),
        replace(f, frame_size=2999),
        replace(f, flags=MediaFlags.KEYFRAME),
        replace(f, capture_us=1),
        replace(f, stream_id=1),
    ]
    for b in bad:
        assert asm.push(FecPacket.parse(bytes(b)), 0) is None
    assert asm.counters.inconsistent == 5 and asm.counters.fec_packets == 0
    assert asm.push(fec[0], 0) is None
    assert asm.push(fec[0], 0) is None
    assert asm.counters.duplicates == 1
    # Once one parity packet fixed the parity count, another count is inconsistent.
    assert asm.push(replace(fec[1], parity_count=3, parity_index=2), 0) is None
    assert asm.counters.inconsistent == 6
    # A RETRANSMIT bit is not a disagreement: 1 data + 2 parity rebuild the 2 missing fragments.
    frame = asm.push(replace(fec[1], flags=MediaFlags.RETRANSMIT), 0)
    assert frame is not None and frame.fec_recovered == 2 and frame.retransmitted == 1
    assert frame.data == b"".join(bytes(p.payload) for p in media) and frame.flags == 0
    assert asm.counters.retransmitted == 1


def test_data_disagreeing_with_parity_first_shape_is_inconsistent() -> None:
    asm = Assembler()
    _, fec = packetize_fec(6, frame_bytes(3000), 1)
    asm.push(fec[0], 0)
    wrong, _ = packetize_fec(6, frame_bytes(3600), 1)  # another shape under the same id
    assert asm.push(wrong[0], 0) is None
    assert asm.counters.inconsistent == 1


def test_retransmitted_fragments_count_like_originals() -> None:
    data = frame_bytes(3000, seed=5)
    media = packetize(7, data, keyframe=True)
    asm = Assembler()
    asm.push(media[0], 0)
    asm.push(media[2], 0)
    assert asm.missing(7) == (3, 1, (1,))
    frame = asm.push(MediaPacket.parse(bytes(retransmission(media[1], 99))), 5)
    assert frame is not None and frame.data == data
    assert frame.flags == MediaFlags.KEYFRAME and frame.keyframe
    assert frame.retransmitted == 1 and asm.counters.retransmitted == 1
    # A retransmission that arrives first fixes the frame's flags without the bit.
    single = retransmission(packetize(8, b"solo", keyframe=True)[0], 100)
    solo = asm.push(single, 6)
    assert solo is not None and solo.flags == MediaFlags.KEYFRAME and solo.retransmitted == 1
    other = packetize(9, frame_bytes(3000))
    asm.push(retransmission(other[0], 101), 7)
    assert asm.push(other[1], 7) is None and asm.push(other[2], 7) is not None
    assert asm.counters.inconsistent == 0 and asm.counters.retransmitted == 3


def test_missing_reports_what_an_incomplete_frame_lacks() -> None:
    asm = Assembler()
    media, fec = packetize_fec(3, frame_bytes(6000), 2)  # 5 data, 2 parity
    assert asm.missing(3) is None
    asm.push(media[1], 0)
    assert asm.missing(3) == (5, 4, (0, 2, 3, 4))
    asm.push(fec[1], 0)
    assert asm.missing(3) == (5, 3, (0, 2, 3, 4))
    asm.push(media[3], 0)
    asm.push(fec[0], 0)
    assert asm.missing(3) == (5, 1, (0, 2, 4))
    assert asm.incomplete_ids() == [3]
    assert asm.push(media[4], 0) is not None
    assert asm.missing(3) is None and asm.incomplete_ids() == []


def test_parity_counts_toward_the_byte_capacity() -> None:
    asm = Assembler(max_frames_in_flight=64, max_frame_bytes=10_000, max_buffered_bytes=10_000)
    a_media, a_fec = packetize_fec(1, frame_bytes(9000), 3, mtu=3000)
    b_media, b_fec = packetize_fec(2, frame_bytes(9000), 3, mtu=3000)
    asm.push(a_fec[0], 0)
    asm.push(a_fec[1], 0)
    asm.push(b_fec[0], 0)
    assert asm.buffered_bytes == 9000 and asm.counters.fec_packets == 3
    asm.push(b_fec[1], 0)  # 12,000 bytes held: frame 1 goes
    assert asm.counters.evicted == 1 and asm.buffered_bytes == 6000 and asm.in_flight == 1
    assert asm.expire(0, 100 * MS) == [1]
    assert asm.push(a_media[0], 0) is None and asm.counters.late == 1
    assert asm.push(b_media[2], 0) is not None


def test_oversize_and_far_behind_parity_is_refused() -> None:
    asm = Assembler(max_frame_bytes=4000, max_buffered_bytes=4000, finished_ids=100)
    _, fec = packetize_fec(1, frame_bytes(5000), 2)
    assert asm.push(fec[0], 0) is None and asm.counters.oversize == 1
    push_all(asm, packetize(1000, b"abc"))
    _, old = packetize_fec(899, frame_bytes(3000), 1)
    assert asm.push(old[0], 0) is None and asm.counters.late == 1 and asm.in_flight == 0


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32), drop=st.floats(0.0, 0.3), dup=st.floats(0.0, 0.2))
def test_lossy_reordered_stream_with_parity_never_corrupts_frames(seed: int, drop: float, dup: float) -> None:
    rng = random.Random(seed)
    first = SEQ_MASK - 5
    datas = {seq_add(first, i): frame_bytes(rng.randint(1, 6000), i) for i in range(12)}
    sent: list[MediaPacket | FecPacket] = []
    for fid, data in datas.items():
        media, fec = packetize_fec(fid, data, rng.randint(0, 3), mtu=1000)
        for p in [*media, *fec]:
            if rng.random() >= drop:
                sent.append(p)
            if rng.random() < dup:
                sent.append(retransmission(p, 0) if isinstance(p, MediaPacket) and rng.random() < 0.5 else p)
    rng.shuffle(sent)
    asm = Assembler(max_frames_in_flight=4)
    done = []
    for p in wire(sent):
        f = asm.push(p, 0)
        if f is not None:
            done.append(f)
    ids = [f.frame_id for f in done]
    assert len(ids) == len(set(ids))
    for f in done:
        assert f.data == datas[f.frame_id]
    assert asm.in_flight <= 4
    c = asm.counters
    assert c.fec_recovered_fragments == sum(f.fec_recovered for f in done)
