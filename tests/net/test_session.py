"""The session layer between two paired doorways, on simulated time: calling, answering, restarts, outages,
rekeys, replays and strangers."""

from __future__ import annotations

import itertools

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from app.net.protocol import Keepalive, parse_packet
from app.net.seal import SealError
from app.net.session import DEAD_AFTER_NS, REKEY_AFTER_NS, Session

MS = 1_000_000
WALL0 = 1_800_000_000 * 10**9


def keypair() -> tuple[bytes, bytes]:
    k = X25519PrivateKey.generate()
    return k.private_bytes_raw(), k.public_key().public_bytes_raw()


class Pair:
    """Two sessions, ``lo`` with the lower public key; the "network" is explicit calls."""

    def __init__(self) -> None:
        (pa, ua), (pb, ub) = keypair(), keypair()
        if ua > ub:
            (pa, ua), (pb, ub) = (pb, ub), (pa, ua)
        self.keys = {"lo": (pa, ua), "hi": (pb, ub)}
        self.lo = Session(pa, ua, ub)
        self.hi = Session(pb, ub, ua)
        self.seq = itertools.count(1)

    def next_seq(self) -> int:
        return next(self.seq) & 0xFFFFFFFF

    def restart(self, name: str) -> Session:
        priv, pub = self.keys[name]
        twin = self.keys["hi" if name == "lo" else "lo"][1]
        s = Session(priv, pub, twin)
        setattr(self, name, s)
        return s

    def call(self, caller: Session, callee: Session, now: int) -> bool:
        inits = caller.poll(now, WALL0 + now, self.next_seq)
        assert inits, "the caller should call"
        response = callee.on_init(inits[0], now, self.next_seq)
        return response is not None and caller.on_response(response, now)

    def keepalive(self, src: Session, dst: Session, now: int) -> bytes:
        sealed = src.seal(bytes(Keepalive(seq=self.next_seq(), sent_us=now // 1000)))
        assert sealed is not None
        return dst.open(sealed, now)


def test_a_call_establishes_keys_both_ways():
    p = Pair()
    assert not p.lo.established and p.lo.seal(bytes(Keepalive(1, 2))) is None
    assert p.call(p.lo, p.hi, 0)
    assert p.lo.epoch == p.hi.epoch is not None
    assert isinstance(parse_packet(p.keepalive(p.lo, p.hi, 1 * MS)), Keepalive)
    assert isinstance(parse_packet(p.keepalive(p.hi, p.lo, 2 * MS)), Keepalive)
    assert p.lo.live(3 * MS) and p.hi.live(3 * MS)
    # A live session makes no calls until it is time to rekey.
    assert p.lo.poll(500 * MS, WALL0, p.next_seq) == []


def test_simultaneous_calls_end_in_one_session():
    p = Pair()
    init_lo = p.lo.poll(0, WALL0, p.next_seq)[0]
    init_hi = p.hi.poll(0, WALL0, p.next_seq)[0]
    assert p.lo.on_init(init_hi, 1 * MS, p.next_seq) is None  # the lower one waits for its own answer
    response = p.hi.on_init(init_lo, 1 * MS, p.next_seq)
    assert response is not None and p.lo.on_response(response, 2 * MS)
    p.keepalive(p.lo, p.hi, 3 * MS)
    p.keepalive(p.hi, p.lo, 4 * MS)
    assert p.lo.counters["ignored_simultaneous"] == 1


def test_calls_repeat_with_backoff_until_answered():
    p = Pair()
    times = [t for t in range(0, 4000 * MS, 50 * MS) if p.lo.poll(t, WALL0 + t, p.next_seq)]
    assert times[:4] == [0, 250 * MS, 750 * MS, 1750 * MS]
    assert all(b - a == 1000 * MS for a, b in itertools.pairwise(times[3:]))


def test_strangers_and_tampering_get_nothing_back():
    p = Pair()
    sp, su = keypair()
    stranger = Session(sp, su, p.hi.public)  # knows hi's public key, but hi is not paired with it
    init = stranger.poll(0, WALL0, p.next_seq)[0]
    assert p.hi.on_init(init, 0, p.next_seq) is None
    assert p.hi.counters["handshake_failures"] == 1
    blind = Session(sp, su, keypair()[1])  # does not know hi's key at all: one hash, dropped
    assert p.hi.on_init(blind.poll(0, WALL0, p.next_seq)[0], 0, p.next_seq) is None
    assert p.hi.counters["mac1_failures"] == 1
    good = p.lo.poll(0, WALL0, p.next_seq)[0]
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 0x40
        assert p.hi.on_init(bytes(bad), 0, p.next_seq) is None
    for n in range(len(good)):
        assert p.hi.on_init(good[:n], 0, p.next_seq) is None
    assert not p.hi.established


def test_a_replayed_init_cannot_disturb_a_live_session():
    p = Pair()
    init = p.lo.poll(0, WALL0, p.next_seq)[0]
    response = p.hi.on_init(init, 0, p.next_seq)
    assert response is not None and p.lo.on_response(response, 0)
    p.keepalive(p.lo, p.hi, 10 * MS)
    epoch = p.hi.epoch
    assert p.hi.on_init(init, 20 * MS, p.next_seq) is None
    assert p.hi.counters["replayed_inits"] == 1
    assert p.hi.epoch == epoch
    p.keepalive(p.hi, p.lo, 30 * MS)


def test_a_restarted_twin_is_answered_at_once_and_keys_switch_on_confirmation():
    p = Pair()
    assert p.call(p.lo, p.hi, 0)
    p.keepalive(p.lo, p.hi, 10 * MS)
    old_epoch = p.hi.epoch
    lo = p.restart("lo")
    assert p.call(lo, p.hi, 100 * MS)
    # hi keeps sending with the old keys until the new ones are proven; lo has only the new ones...
    assert p.hi.epoch == old_epoch and lo.epoch != old_epoch
    # ...so lo's first packet is what switches hi.
    p.keepalive(lo, p.hi, 110 * MS)
    assert p.hi.epoch == lo.epoch
    p.keepalive(p.hi, lo, 120 * MS)


def test_the_call_resumes_after_an_outage():
    p = Pair()
    assert p.call(p.lo, p.hi, 0)
    p.keepalive(p.lo, p.hi, 1 * MS)
    p.keepalive(p.hi, p.lo, 1 * MS)
    # The network goes away for 5 s: both notice after DEAD_AFTER and call (their calls are lost).
    t = 1 * MS
    sent = 0
    while t < 5000 * MS:
        t += 10 * MS
        sent += len(p.lo.poll(t, WALL0 + t, p.next_seq)) + len(p.hi.poll(t, WALL0 + t, p.next_seq))
    assert not p.lo.live(t) and sent >= 8
    # It comes back: the next call goes through, within a retry interval.
    back = t
    while not p.lo.live(t):
        t += 10 * MS
        for caller, callee in ((p.lo, p.hi), (p.hi, p.lo)):
            for init in caller.poll(t, WALL0 + t, p.next_seq):
                response = callee.on_init(init, t, p.next_seq)
                if response is not None:
                    caller.on_response(response, t)
    assert t - back <= 1000 * MS + DEAD_AFTER_NS // 100
    p.keepalive(p.lo, p.hi, t)
    p.keepalive(p.hi, p.lo, t)


def test_rekey_by_the_lower_twin_with_packets_in_flight():
    p = Pair()
    assert p.call(p.lo, p.hi, 0)
    t = REKEY_AFTER_NS
    p.keepalive(p.lo, p.hi, t - 1 * MS)
    p.keepalive(p.hi, p.lo, t - 1 * MS)
    assert p.hi.poll(t, WALL0 + t, p.next_seq) == []  # the higher twin leaves rekeying to the lower one
    in_flight = p.hi.seal(bytes(Keepalive(seq=p.next_seq(), sent_us=1)))
    old = p.lo.epoch
    assert p.call(p.lo, p.hi, t)
    assert p.lo.epoch != old and p.lo.counters["rekeys"] == 1
    assert in_flight is not None and isinstance(parse_packet(p.lo.open(in_flight, t)), Keepalive)
    p.keepalive(p.lo, p.hi, t + 1 * MS)
    p.keepalive(p.hi, p.lo, t + 2 * MS)


def test_forged_replayed_and_truncated_packets_are_refused():
    p = Pair()
    assert p.call(p.lo, p.hi, 0)
    sealed = p.lo.seal(bytes(Keepalive(seq=p.next_seq(), sent_us=5)))
    assert sealed is not None
    p.hi.open(sealed, 1 * MS)
    with pytest.raises(SealError) as exc:
        p.hi.open(sealed, 2 * MS)
    assert exc.value.reason == "replay"
    forged = bytearray(p.lo.seal(bytes(Keepalive(seq=p.next_seq(), sent_us=5))) or b"")
    forged[-1] ^= 1
    with pytest.raises(SealError) as exc:
        p.hi.open(bytes(forged), 3 * MS)
    assert exc.value.reason == "tag"
    with pytest.raises(SealError):
        p.hi.open(bytes(forged[:20]), 3 * MS)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_from_the_handshake_handlers(data):
    p = Pair()
    p.lo.poll(0, WALL0, p.next_seq)
    assert p.hi.on_init(data, 0, p.next_seq) is None
    assert p.lo.on_response(data, 0) is False


def test_a_flood_of_replayed_inits_is_rate_limited():
    p = Pair()
    init = p.lo.poll(0, WALL0, p.next_seq)[0]
    answered = [p.hi.on_init(init, i * MS, p.next_seq) is not None for i in range(100)]
    assert sum(answered) <= 7  # a burst of 5 and 10 a second over the 0.1 s of the flood
    assert p.hi.counters["rate_limited_inits"] >= 90
