"""The reliable link in simulated time: exactly-once in-order delivery over a noisy channel, timers,
link-lost detection, reset. Every run is seeded; nothing reads the wall clock."""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

import pytest

from hwcontrol.protocol import (
    HEARTBEAT_INTERVAL_MS,
    LINK_LOST_MS,
    MAX_QUEUED,
    MAX_RETRIES,
    RTO_INITIAL_MS,
    WINDOW,
    ErrorCode,
    Event,
    EventKind,
    ForeignHello,
    Frame,
    FrameFlags,
    Heartbeat,
    HelloReq,
    Incoming,
    MessageType,
    QueueFullError,
    ReliableLink,
    Scene,
    Sensors,
    SensorValid,
    SetLight,
    SetScene,
    Undecodable,
    cobs_decode,
)


def frames_of(wire: list[bytes]) -> list[Frame]:
    return [Frame.decode(cobs_decode(w[:-1])) for w in wire]


def command(i: int) -> SetLight:
    """The i-th test command: a distinct SET_LIGHT for every i below 2**32."""
    return SetLight(channel=i % 4, brightness=i % 1001, cct_k=i & 0xFFFF, fade_ms=i >> 16)


def command_index(m: SetLight) -> int:
    return (m.fade_ms << 16) | m.cct_k


def exchange(a: ReliableLink, b: ReliableLink, now: int) -> tuple[list[Incoming], list[Incoming]]:
    """One lossless, zero-latency round: a's frames to b, then b's to a. Returns what each delivered."""
    to_b = b.receive_bytes(b"".join(a.poll(now)), now)
    to_a = a.receive_bytes(b"".join(b.poll(now)), now)
    return to_a, to_b


# --- Basics ------------------------------------------------------------------------------------------------


def test_in_order_delivery_and_piggybacked_acks() -> None:
    host, mcu = ReliableLink(0), ReliableLink(0)
    for i in range(3):
        host.send(command(i))
    wire = host.poll(0)
    assert [(f.seq, f.ack, f.reliable) for f in frames_of(wire)] == [
        (0, 255, True),
        (1, 255, True),
        (2, 255, True),
    ]
    assert host.unacked == 3
    assert mcu.receive_bytes(b"".join(wire), 1) == [command(0), command(1), command(2)]
    # The MCU answers with an event: its frame carries the ack, no standalone ACK is needed.
    mcu.send(Event(EventKind.PRESENCE, 1, 1000))
    (reply,) = frames_of(mcu.poll(1))
    assert (reply.type, reply.seq, reply.ack) == (MessageType.EVENT, 0, 2)
    assert host.receive(reply, 2) == [Event(EventKind.PRESENCE, 1, 1000)]
    assert host.unacked == 0 and host.rtt_ms == 2
    assert mcu.acks_sent == 0


def test_standalone_ack_within_the_ack_delay() -> None:
    host, mcu = ReliableLink(0), ReliableLink(0, ack_delay_ms=20)
    host.send(command(0))
    mcu.receive_bytes(b"".join(host.poll(0)), 0)
    assert mcu.next_poll_ms() == 20
    assert mcu.poll(19) == []
    (ack,) = frames_of(mcu.poll(20))
    assert (ack.type, ack.flags, ack.seq, ack.ack, ack.payload) == (MessageType.ACK, 0, 0, 0, b"")
    assert host.receive(ack, 21) == []
    assert host.unacked == 0 and mcu.acks_sent == 1
    # Only one ACK per batch, and none once answered.
    assert mcu.poll(25) == []
    with pytest.raises(ValueError, match=r"^ack_delay_ms 21 is out of range 0\.\.20$"):
        ReliableLink(0, ack_delay_ms=21)


def test_heartbeat_after_500_ms_of_silence_only() -> None:
    link = ReliableLink(0)
    assert link.poll(HEARTBEAT_INTERVAL_MS - 1) == []
    (beat,) = frames_of(link.poll(HEARTBEAT_INTERVAL_MS))
    assert beat.type == MessageType.HEARTBEAT and Heartbeat.decode(beat.payload).uptime_ms == 500
    assert link.next_poll_ms() == 1000
    # Traffic in between postpones the next one.
    link.send(Sensors(700, SensorValid(0)))
    assert len(link.poll(700)) == 1
    assert link.poll(1199) == []
    assert [f.type for f in frames_of(link.poll(1200))] == [MessageType.HEARTBEAT]
    peer = ReliableLink(0)
    assert peer.receive(beat, 600) == [] and peer.peer_uptime_ms == 500


def test_duplicates_are_acked_again_but_not_delivered() -> None:
    host, mcu = ReliableLink(0), ReliableLink(0)
    host.send(command(7))
    (wire,) = host.poll(0)
    assert mcu.receive_bytes(wire, 0) == [command(7)]
    assert mcu.receive_bytes(wire, 1) == []
    assert mcu.duplicates == 1 and mcu.delivered == 1
    (ack,) = frames_of(mcu.poll(1))
    assert ack.type == MessageType.ACK and ack.ack == 0


def test_out_of_order_frames_are_dropped() -> None:
    host, mcu = ReliableLink(0), ReliableLink(0)
    for i in range(3):
        host.send(command(i))
    first, second, third = host.poll(0)
    assert mcu.receive_bytes(second + third, 0) == []
    assert mcu.out_of_order == 2 and mcu.expected_seq == 0
    assert mcu.poll(0) == []  # nothing to acknowledge yet
    assert mcu.receive_bytes(first, 1) == [command(0)]
    # After the timeout go-back-N sends all three again; the first is now a duplicate.
    again = host.poll(RTO_INITIAL_MS)
    assert [f.seq for f in frames_of(again)] == [0, 1, 2] and host.retransmits == 3
    assert mcu.receive_bytes(b"".join(again), RTO_INITIAL_MS) == [command(1), command(2)]
    assert mcu.duplicates == 1


def test_window_never_exceeds_eight_and_the_queue_is_bounded() -> None:
    host = ReliableLink(0)
    for i in range(MAX_QUEUED):
        host.send(command(i))
    with pytest.raises(QueueFullError, match=r"^link: 64 reliable messages already queued$"):
        host.send(command(MAX_QUEUED))
    sent = frames_of(host.poll(0))
    assert [f.seq for f in sent] == list(range(WINDOW))
    assert host.unacked == WINDOW and host.queued == MAX_QUEUED - WINDOW
    # Room again for the eight that left the queue.
    for i in range(WINDOW):
        host.send(command(100 + i))
    with pytest.raises(QueueFullError):
        host.send(command(200))
    # Nothing new goes out before an ack, whatever the time; only retransmissions of the same eight.
    for now in range(1, 3000, 7):
        for f in frames_of(host.poll(now)):
            assert f.seq in range(WINDOW)
        assert host.unacked == WINDOW
    # Unreliable messages have their own small queue.
    for i in range(16):
        host.send(Sensors(i, SensorValid(0)))
    with pytest.raises(QueueFullError, match=r"^link: 16 unreliable messages already queued$"):
        host.send(Sensors(0, SensorValid(0)))


def test_sequence_numbers_wrap() -> None:
    host, mcu = ReliableLink(0), ReliableLink(0)
    got: list[Incoming] = []
    seqs: list[int] = []
    for i in range(600):
        host.send(command(i))
        wire = host.poll(i)
        seqs += [f.seq for f in frames_of(wire)]
        got += mcu.receive_bytes(b"".join(wire), i)
        host.receive_bytes(b"".join(mcu.poll(i)), i)
    assert got == [command(i) for i in range(600)]
    assert seqs == [i % 256 for i in range(600)]


def test_acks_outside_the_window_acknowledge_nothing() -> None:
    host = ReliableLink(0)
    for i in range(3):
        host.send(command(i))
    host.poll(0)
    for ack in (255, 3, 4, 100, 254):
        host.receive(Frame(MessageType.ACK, ack=ack), 1)
        assert host.unacked == 3
    host.receive(Frame(MessageType.ACK, ack=1), 1)
    assert host.unacked == 1


def test_undecodable_frames_are_delivered_in_order_and_acked() -> None:
    mcu = ReliableLink(0)
    bad = Frame(MessageType.SET_SCENE, b"\x09\x00\x00", FrameFlags.RELIABLE, 0, 255)
    unknown = Frame(0x7F, b"?", FrameFlags.RELIABLE, 1, 255)
    good = Frame(MessageType.SET_SCENE, SetScene(Scene.DAY).encode(), FrameFlags.RELIABLE, 2, 255)
    out = mcu.receive_bytes(bad.to_wire() + unknown.to_wire() + good.to_wire(), 0)
    assert out == [
        Undecodable(
            MessageType.SET_SCENE,
            0,
            b"\x09\x00\x00",
            ErrorCode.VALUE_OUT_OF_RANGE,
            "SET_SCENE: scene 9 is not a known Scene",
        ),
        Undecodable(0x7F, 1, b"?", ErrorCode.UNKNOWN_TYPE, "unknown message type 127"),
        SetScene(Scene.DAY),
    ]
    assert mcu.undecodable == 2 and mcu.expected_seq == 3
    assert frames_of(mcu.poll(0))[0].ack == 2


def test_a_foreign_hello_is_delivered_without_touching_the_session() -> None:
    host = ReliableLink(0)
    host.send(command(0))
    host.poll(0)
    foreign = Frame(MessageType.HELLO, bytes([2, 0, 9, 9, 9]), FrameFlags.RELIABLE, 0, 0, version=2)
    assert host.receive_bytes(foreign.to_wire(), 1) == [ForeignHello(2, 0, 9, 9, 9)]
    assert host.unacked == 1 and host.expected_seq == 0


# --- Link lost and reset -----------------------------------------------------------------------------------


def test_link_lost_after_1500_ms_without_a_valid_frame() -> None:
    link = ReliableLink(1000)
    assert link.next_poll_ms() == 1000 + HEARTBEAT_INTERVAL_MS
    link.receive(Frame(MessageType.ACK), 2000)
    # Garbage is not a valid frame: it does not keep the link alive.
    link.receive_bytes(b"\x05garbage\x00", 3000)
    link.poll(2000 + LINK_LOST_MS - 1)
    assert not link.lost
    assert link.next_poll_ms() == 2000 + LINK_LOST_MS
    link.poll(2000 + LINK_LOST_MS)
    assert link.lost and link.lost_reason == "no valid frame for 1500 ms"
    # Sticky until reset, even if frames come again.
    link.receive(Frame(MessageType.ACK), 3600)
    assert link.lost


def test_link_lost_after_20_retries_without_progress() -> None:
    """The peer is alive (its heartbeats arrive) but no reliable frame gets through to it."""
    host, mcu = ReliableLink(0), ReliableLink(0)
    host.send(command(0))
    sent_at: list[int] = []
    lost_at = None
    for now in range(0, 10_000):
        for f in frames_of(host.poll(now)):
            if f.reliable:
                sent_at.append(now)
            # Everything reliable from host to MCU is lost; the rest arrives.
            elif mcu.receive(f, now):
                pytest.fail("nothing should be delivered")
        host.receive_bytes(b"".join(mcu.poll(now)), now)
        if host.lost and lost_at is None:
            lost_at = now
    # Sent once, then retried after 50, 100, 200 and then every 400 ms.
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    assert gaps[:4] == [50, 100, 200, 400] and set(gaps[3:]) == {400}
    assert lost_at == 50 + 100 + 200 + 400 * (MAX_RETRIES - 2)  # the timeout after the 20th retry
    assert sent_at[MAX_RETRIES] < lost_at and len([t for t in sent_at if t <= lost_at]) == MAX_RETRIES + 2
    assert host.lost_reason == "no acknowledgement after 20 retries"
    assert host.timeouts > MAX_RETRIES
    assert host.peer_uptime_ms is not None and host.peer_uptime_ms > 9000  # the peer was heard all along


def test_progress_resets_the_retry_budget_and_the_timeout() -> None:
    host, mcu = ReliableLink(0), ReliableLink(0)
    host.send(command(0))
    host.send(command(1))
    first, _second = host.poll(0)
    host.poll(50)
    host.poll(150)  # two retries: the wait is now 200 ms
    mcu.receive_bytes(first, 160)
    host.receive_bytes(b"".join(mcu.poll(160)), 160)
    assert host.unacked == 1
    assert host.next_poll_ms() == 160 + RTO_INITIAL_MS


def test_reset_starts_a_new_session() -> None:
    host, mcu = ReliableLink(0), ReliableLink(0)
    for i in range(5):
        host.send(command(i))
    host.poll(0)  # all lost
    host.poll(2000)
    assert host.lost
    host.reset(2000)
    assert not host.lost and host.unacked == 0 and host.queued == 0 and host.resets == 1
    mcu.reset(2000)
    host.send(command(42))
    (f,) = frames_of(host.poll(2000))
    assert (f.seq, f.ack) == (0, 255)
    assert mcu.receive(f, 2001) == [command(42)]
    _, delivered = exchange(host, mcu, 2002)
    assert host.unacked == 0 and delivered == []


def test_reset_keeping_the_queue_renumbers_from_zero() -> None:
    """What the MCU does on a new HELLO_REQ (§5): unacknowledged events are sent again from seq 0."""
    mcu, host = ReliableLink(0), ReliableLink(0)
    for i in range(10):
        mcu.send(Event(EventKind.PRESENCE, i % 2, i))
    mcu.poll(0)
    mcu.receive(Frame(MessageType.ACK, ack=2), 1)  # 0..2 acknowledged by the old host connection
    assert mcu.unacked == 5 and mcu.queued == 2
    mcu.reset(5, keep_queue=True)
    wire = mcu.poll(5)
    assert [f.seq for f in frames_of(wire)] == list(range(7))
    assert [e.uptime_ms for e in host.receive_bytes(b"".join(wire), 6) if isinstance(e, Event)] == list(
        range(3, 10)
    )


def test_next_poll_ms() -> None:
    link = ReliableLink(0)
    assert link.next_poll_ms() == HEARTBEAT_INTERVAL_MS
    link.send(command(0))
    assert link.next_poll_ms() == 0
    link.poll(10)
    assert link.next_poll_ms() == 10 + RTO_INITIAL_MS
    link.send(HelloReq(1))
    assert link.next_poll_ms() == 10


# --- The noisy channel ------------------------------------------------------------------------------------


@dataclass
class Channel:
    """One direction of a simulated serial link, in ms. Each frame is delayed ``latency_ms`` and may be
    dropped, have one bit flipped, be duplicated, be held back behind later frames, or be preceded by a
    burst of random garbage (which, lacking a delimiter, usually ruins the frame after it too)."""

    rng: random.Random
    drop: float = 0.05
    flip: float = 0.01
    duplicate: float = 0.01
    reorder: float = 0.005
    garbage: float = 0.005
    latency_ms: int = 1
    queue: list[tuple[int, int, bytes]] = field(default_factory=list)
    counter: int = 0
    sent: int = 0
    dropped: int = 0
    flipped: int = 0
    duplicated: int = 0
    garbage_bursts: int = 0

    def _put(self, at: int, data: bytes) -> None:
        heapq.heappush(self.queue, (at, self.counter, data))
        self.counter += 1

    def send(self, frames: list[bytes], now: int) -> None:
        rng = self.rng
        for frame in frames:
            data = frame
            self.sent += 1
            at = now + self.latency_ms
            if rng.random() < self.garbage:
                self.garbage_bursts += 1
                self._put(at, rng.randbytes(rng.randint(1, 40)))
            if rng.random() < self.drop:
                self.dropped += 1
                continue
            if rng.random() < self.flip:
                self.flipped += 1
                bit = rng.randrange(len(data) * 8)
                flipped = bytearray(data)
                flipped[bit // 8] ^= 1 << (bit % 8)
                data = bytes(flipped)
            if rng.random() < self.reorder:
                at += rng.randint(2, 6)
            self._put(at, data)
            if rng.random() < self.duplicate:
                self.duplicated += 1
                self._put(at + rng.randint(0, 3), data)

    def receive(self, now: int) -> bytes:
        out = []
        while self.queue and self.queue[0][0] <= now:
            out.append(heapq.heappop(self.queue)[2])
        return b"".join(out)

    def next_ms(self) -> int:
        return self.queue[0][0] if self.queue else 1 << 62


@dataclass
class Outcome:
    commands: list[int]
    events: list[int]
    sensors: list[int]
    sensors_sent: set[int]
    other: list[Incoming]
    ms: int
    host: ReliableLink
    mcu: ReliableLink
    h2m: Channel
    m2h: Channel


def simulate(
    seed: int,
    n_commands: int,
    n_events: int,
    *,
    drop: float = 0.05,
    flip: float = 0.01,
    duplicate: float = 0.01,
    reorder: float = 0.005,
    garbage: float = 0.005,
) -> Outcome:
    """The host sends ``n_commands`` SET_LIGHTs as fast as the window allows; the MCU sends ``n_events``
    EVENTs (one per ms at most) and a SENSORS every 100 ms. Time jumps to the next thing that can happen."""
    rng = random.Random(seed)
    host, mcu = ReliableLink(0), ReliableLink(0, ack_delay_ms=5)
    h2m, m2h = (
        Channel(random.Random(rng.random()), drop, flip, duplicate, reorder, garbage) for _ in range(2)
    )
    commands: list[int] = []
    events: list[int] = []
    sensors: list[int] = []
    sensors_sent: set[int] = set()
    other: list[Incoming] = []
    next_command = next_event = 0
    next_sensors = 0
    now = 0
    while len(commands) < n_commands or len(events) < n_events:
        while next_command < n_commands and host.queued < MAX_QUEUED:
            host.send(command(next_command))
            next_command += 1
        if next_event < n_events and mcu.queued < 4:
            mcu.send(Event(EventKind.PRESENCE, next_event % 2, next_event))
            next_event += 1
        if now >= next_sensors:
            mcu.send(Sensors(now, SensorValid.LUX, lux_centi=now))
            sensors_sent.add(now)
            next_sensors = now + 100
        for m in mcu.receive_bytes(h2m.receive(now), now):
            if isinstance(m, SetLight):
                commands.append(command_index(m))
            else:
                other.append(m)
        for m in host.receive_bytes(m2h.receive(now), now):
            if isinstance(m, Event):
                events.append(m.uptime_ms)
            elif isinstance(m, Sensors):
                sensors.append(m.uptime_ms)
                assert m.lux_centi == m.uptime_ms and m.valid == SensorValid.LUX
            else:
                other.append(m)
        h2m.send(host.poll(now), now)
        m2h.send(mcu.poll(now), now)
        assert host.unacked <= WINDOW and mcu.unacked <= WINDOW
        assert not host.lost and not mcu.lost, (now, host.lost_reason, mcu.lost_reason)
        nxt = min(host.next_poll_ms(), mcu.next_poll_ms(), h2m.next_ms(), m2h.next_ms(), next_sensors)
        now = max(now + 1, nxt)
    return Outcome(commands, events, sensors, sensors_sent, other, now, host, mcu, h2m, m2h)


def test_exactly_once_in_order_over_a_noisy_channel() -> None:
    """100 000 commands one way and 20 000 events the other, through 5 % drops, 1 % bit flips, 1 %
    duplicates, reordering and garbage: every one delivered once, in order, and nothing else."""
    n_commands, n_events = 100_000, 20_000
    out = simulate(1, n_commands, n_events)
    assert out.commands == list(range(n_commands))
    assert out.events == list(range(n_events))
    assert out.other == []
    # SENSORS is unreliable: lost ones stay lost and a duplicated frame comes twice, but none is invented.
    assert set(out.sensors) <= out.sensors_sent and len(set(out.sensors)) > 0.9 * len(out.sensors_sent)
    host, mcu = out.host, out.mcu
    # The impairments happened, and each was handled by the mechanism meant for it.
    for channel in (out.h2m, out.m2h):
        assert channel.dropped > 0.04 * channel.sent and channel.flipped > 0.005 * channel.sent
    assert mcu.decoder.invalid["crc"] > 0 and host.decoder.invalid["crc"] > 0
    assert mcu.duplicates > 0 and mcu.out_of_order > 0 and host.retransmits > 0
    assert host.duplicates > 0 and mcu.retransmits > 0
    assert mcu.undecodable == 0 and host.undecodable == 0
    assert host.rtt_ms is not None and 1 <= host.rtt_ms < 20


def test_a_clean_channel_needs_no_retransmission() -> None:
    out = simulate(2, 5000, 1000, drop=0, flip=0, duplicate=0, reorder=0, garbage=0)
    assert out.commands == list(range(5000)) and out.events == list(range(1000))
    assert out.host.retransmits == 0 and out.mcu.retransmits == 0
    assert out.host.duplicates == 0 and out.mcu.out_of_order == 0
    assert out.host.decoder.invalid_total == 0 and out.mcu.decoder.overlong == 0
    assert out.host.rtt_ms is not None and 2 <= out.host.rtt_ms <= 2 + 5  # 1 ms each way, ack delay 5 ms


def test_heavy_loss_still_delivers_everything() -> None:
    out = simulate(3, 3000, 300, drop=0.3, flip=0.05, duplicate=0.05, reorder=0.05, garbage=0.05)
    assert out.commands == list(range(3000)) and out.events == list(range(300)) and out.other == []


def test_frame_counters_add_up_in_the_simulation() -> None:
    out = simulate(4, 2000, 200)
    for link, channel, outgoing in ((out.host, out.m2h, out.h2m), (out.mcu, out.h2m, out.m2h)):
        decoder = link.decoder
        assert decoder.frames == link.frames_received
        assert decoder.invalid_total > 0
        # Every frame the channel carried arrived whole, or was ruined (and counted), or was dropped; a
        # garbage burst or a flipped delimiter can merge two frames into one invalid one.
        delivered = channel.sent - channel.dropped + channel.duplicated
        assert (
            decoder.frames
            <= delivered
            <= decoder.frames
            + decoder.invalid_total
            + decoder.overlong
            + 2 * (channel.flipped + channel.garbage_bursts)
        )
        assert link.frames_sent == outgoing.sent
