"""The host's protocol module (hwcontrol/protocol.py) against the firmware's core: two independent
implementations of PROTOCOL.md talking to each other, cleanly and through a lossy, duplicating wire."""

from __future__ import annotations

import random

from hwcontrol import protocol as hp
from hwcontrol.firmware import protocol_core as pc

from .test_core import KEY, SimHW


class Wire:
    """Both directions of a serial cable that drops, duplicates and flips bits in whole frames."""

    def __init__(self, seed: int, loss: float) -> None:
        self.rng = random.Random(seed)
        self.loss = loss

    def carry(self, data: bytes) -> bytes:
        out = bytearray()
        for chunk in data.split(b"\x00")[:-1]:
            frame = bytearray(chunk + b"\x00")
            r = self.rng.random()
            if r < self.loss:
                continue
            if r < 2 * self.loss and len(frame) > 2:
                frame[self.rng.randrange(len(frame) - 1)] ^= 1 << self.rng.randrange(8)
            out += frame
            if self.rng.random() < self.loss:
                out += frame
        return bytes(out)


def run(loss: float, seed: int = 5) -> None:
    hw = SimHW()
    now = 0
    core = pc.Core(hw, now)
    applied: list[tuple[int, bytes]] = []
    core.on_apply = lambda t, p: applied.append((t, p)) if t == pc.T_SET_LIGHT else None
    link = hp.ReliableLink(now)
    wire = Wire(seed, loss)
    got: list[object] = []
    commands = [
        hp.SetLight(channel=i % 2, brightness=(37 * i) % 1001, cct_k=2700 + 10 * i, fade_ms=i)
        for i in range(120)
    ]
    link.send(hp.HelloReq(nonce=0xD00D))
    hello_seen = False
    presses = 0
    queued = 0
    while now < 120_000:
        now += 2
        if not hello_seen and now % 200 == 0:
            link.send(hp.HelloReq(nonce=0xD00D))
        if hello_seen and queued < len(commands) and link.queued < 4:
            link.send(commands[queued])
            queued += 1
        if hello_seen and presses < 10 and now % 300 == 0:
            hw.pressed = True
            presses += 1
        if now % 300 == 150:
            hw.pressed = False
        data = b"".join(link.poll(now))
        core.feed(wire.carry(data), now)
        core.poll(now)
        for m in link.receive_bytes(wire.carry(core.take_output()), now):
            got.append(m)
            if isinstance(m, hp.Hello):
                hello_seen = True
        buttons = [m for m in got if isinstance(m, hp.Event) and m.kind == hp.EventKind.PRIVACY_BUTTON]
        settled = link.unacked == 0 and core.stats()["tx_unacked"] == 0
        if queued == len(commands) and settled and len(buttons) >= 10:
            break
    assert not [m for m in got if isinstance(m, hp.Undecodable)], "every MCU message decodes on the host"
    assert not [m for m in got if isinstance(m, hp.ErrorReport)]
    assert [p for _, p in applied] == [c.encode() for c in commands]
    buttons = [m for m in got if isinstance(m, hp.Event) and m.kind == hp.EventKind.PRIVACY_BUTTON]
    assert len(buttons) == presses == 10 and len({b.uptime_ms for b in buttons}) == 10
    hello = next(m for m in got if isinstance(m, hp.Hello))
    assert hello.session_id == core.session_id and hello.channels == 2
    assert hello.capabilities & hp.Capability.BOOTLOADER
    states = [m for m in got if isinstance(m, hp.LightState)]
    assert states and states[-1].channels[0].brightness == core.targets()[0][0]
    assert [m for m in got if isinstance(m, hp.Sensors)]


def test_host_and_firmware_on_a_clean_wire() -> None:
    run(loss=0.0)


def test_host_and_firmware_on_a_bad_wire() -> None:
    run(loss=0.08)


def test_host_mac_opens_the_firmware_bootloader() -> None:
    hw = SimHW()
    core = pc.Core(hw, 0)
    link = hp.ReliableLink(0)
    link.send(hp.HelloReq(nonce=1))
    hello = None
    for now in range(0, 2000, 5):
        core.feed(b"".join(link.poll(now)), now)
        core.poll(now)
        for m in link.receive_bytes(core.take_output(), now):
            if isinstance(m, hp.Hello) and hello is None:
                hello = m
                link.send(hp.EnterBootloader.signed(KEY, m.session_id, 77))
    assert hello is not None and hw.bootloader_calls == 1
