"""Engines through the impairment relay, and a sender under a hostile receiver's NACK and feedback storms."""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

from app.bench.recorder import StampRecorder
from app.engine.engine import Engine
from app.launch import free_udp_ports
from app.net.impair import ImpairmentSettings
from app.net.protocol import MediaPacket, Nack, ReceiverReport, TransportFeedback, parse_packet
from app.relay import Relay
from tests.engine.conftest import small_settings, wait_for


def run(engine: Engine) -> tuple[threading.Event, threading.Thread, list[int]]:
    stop = threading.Event()
    status: list[int] = []
    engine.start(control=False)
    t = threading.Thread(target=lambda: status.append(engine.wait(stop)), daemon=True)
    t.start()
    return stop, t, status


def test_loss_is_repaired_and_no_corrupt_picture_is_shown(tmp_path: Path) -> None:
    pa, pb = free_udp_ports(2)
    lossy = ImpairmentSettings(delay_ms=5, jitter_ms=1, burst_loss_percent=5, burst_length=2)
    relay = Relay(
        listen_a=("127.0.0.1", 0), listen_b=("127.0.0.1", 0), peer_a=("127.0.0.1", pa),
        peer_b=("127.0.0.1", pb), a_to_b=lossy, b_to_a=lossy, seed=3,
    )  # fmt: skip
    net_a = {"listen_port": pa, "peer_port": relay.port_a}
    net_b = {"listen_port": pb, "peer_port": relay.port_b}
    sender = Engine(small_settings(tmp_path, engine={"role": "send"}, network=net_a))
    rec = StampRecorder(psnr_every=0)
    receiver = Engine(small_settings(tmp_path, engine={"role": "receive"}, network=net_b), sink_hook=rec)
    relay.start()
    stops = [run(receiver), run(sender)]
    try:
        wait_for(lambda: len(rec.records) >= 150, timeout_s=60, what="150 frames through a lossy relay")
        rx, tx = receiver.stats(), sender.stats()
    finally:
        for stop, t, _ in stops:
            stop.set()
            t.join(30)
        relay.stop()
    assert [s[2] for s in stops] == [[0], [0]]
    assert relay.stats()["a_to_b"]["lost_burst"] > 0
    net = rx["network"]
    assert net["loss_before_recovery"] > 0.01
    repaired = net["fec_repaired_fragments"] + net["retransmitted_fragments_received"]
    assert repaired > 0
    assert tx["transport"]["loss_seen_by_peer_percent"] > 0
    assert not any(r.corrupt for r in rec.records)


def test_sender_bounds_a_hostile_receivers_storms(tmp_path: Path) -> None:
    """NACK storms are rate-limited; garbage feedback and absurd reports are ignored; nothing crashes."""
    hostile = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hostile.bind(("127.0.0.1", 0))
    hostile.settimeout(5)
    port = hostile.getsockname()[1]
    settings = small_settings(tmp_path, engine={"role": "send"}, network={"peer_port": port})
    sender = Engine(settings)
    target = ("127.0.0.1", settings.network.listen_port)
    stop, t, status = run(sender)
    rng = random.Random(7)
    frames_seen: set[int] = set()
    try:
        seq = 0
        for _ in range(400):
            try:
                pkt = parse_packet(hostile.recv(65536))
            except TimeoutError:
                break
            if isinstance(pkt, MediaPacket):
                frames_seen.add(pkt.frame_id)
            for frame_id in list(frames_seen)[-5:]:
                seq += 1
                everything = tuple(range(256))
                hostile.sendto(
                    bytes(Nack(seq=seq, stream_id=0, frame_id=frame_id, missing=everything)), target
                )
            seq += 1
            arrivals = tuple(rng.choice([None, rng.randrange(0, 2**32 - 1)]) for _ in range(200))
            base, ref = rng.randrange(2**32), rng.randrange(2**63)
            fb = TransportFeedback(seq=seq, base_seq=base, ref_arrival_us=ref, arrivals=arrivals)
            hostile.sendto(bytes(fb), target)
            seq += 1
            report = ReceiverReport(
                seq=seq, stream_id=0, highest_seq=2**32 - 1, packets_received=0, packets_lost=2**32 - 1,
                fraction_lost=255, jitter_us=2**32 - 1, frames_received=0, frames_lost=2**32 - 1,
            )  # fmt: skip
            hostile.sendto(bytes(report), target)
        stats = sender.stats()
    finally:
        hostile.close()
        stop.set()
        t.join(30)
    assert status == [0]
    rtx = stats["transport"]["retransmit"]
    assert rtx["nacks_received"] > 100
    assert rtx["ignored_limit"] + rtx["ignored_rate"] + rtx["ignored_duplicate"] > 0
    # Retransmissions stay within a quarter of the 800 kb/s target plus the burst allowance, per second.
    elapsed_s = stats["status"]["uptime_s"]
    assert rtx["retransmitted_bytes"] <= 0.25 * 800_000 / 8 * elapsed_s + 64 * 1024
    cc = stats["transport"]["congestion"]
    assert cc["feedback_ignored"] > 0
    assert 500_000 <= cc["target_bps"] <= 800_000
