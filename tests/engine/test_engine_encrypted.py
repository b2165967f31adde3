"""Paired engines on loopback with encryption on: the call starts by itself, every packet is sealed, and
strangers, plaintext and forgeries get nothing; a doorway killed mid-call is called again when it is back."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from app.bench.recorder import StampRecorder
from app.control import ControlClientError, request
from app.engine.engine import Engine
from app.identity import Identity, device_id_of
from app.launch import free_udp_ports, provision_twins, start_engine, stop_engines
from app.net.protocol import Keepalive
from app.settings import Settings
from app.state import StateError, StateStore, Twin
from tests.engine.conftest import run_engine as run
from tests.engine.conftest import wait_for


def paired_settings(tmp_path: Path, name: str, port: int, state_dir: Path, **network: Any) -> Settings:
    return Settings(
        engine={"name": name, "control_socket": str(tmp_path / f"{name}.sock"), "state_dir": str(state_dir)},
        capture={"backend": "synthetic", "seed": 1 if name == "a" else 2},
        video={"width": 320, "height": 240, "fps": 30, "bitrate_kbps": 800, "encoder": "x264"},
        network={"listen_host": "127.0.0.1", "listen_port": port, **network},
        display={"backend": "null"},
        audio={"enabled": False},
    )  # type: ignore[arg-type]


def test_paired_engines_call_each_other_and_seal_everything(tmp_path: Path) -> None:
    pa, pb = free_udp_ports(2)
    states = provision_twins(tmp_path, ("a", "b"), (pa, pb))
    rec_a, rec_b = StampRecorder(psnr_every=0), StampRecorder(psnr_every=0)
    # No peer address in the settings: each learns its twin's from the pairing.
    a = Engine(paired_settings(tmp_path, "a", pa, states["a"]), sink_hook=rec_a)
    b = Engine(paired_settings(tmp_path, "b", pb, states["b"]), sink_hook=rec_b)
    assert a.link.peer == ("127.0.0.1", pb)
    # A spy on the wire: the first four bytes (magic, version, type, key epoch) of every datagram a sends.
    sent: list[bytes] = []
    real_send = a.link.send

    def spy(data: bytes) -> None:
        sent.append(bytes(data[:4]))
        real_send(data)

    a.link.send = spy  # type: ignore[method-assign]
    runs = [run(b), run(a)]
    try:
        wait_for(lambda: len(rec_a.records) >= 30 and len(rec_b.records) >= 30, what="pictures both ways")
        status = a.status()
        stats = b.stats()
    finally:
        for stop, t, _ in runs:
            stop.set()
            t.join(30)
    assert [r[2] for r in runs] == [[0], [0]]
    assert status["encrypted"] and status["peer_connected"]
    assert status["twin"]["name"] == "b"
    assert stats["session"]["established"] and stats["network"]["plaintext_refused"] == 0
    assert not any(r.corrupt for r in rec_a.records + rec_b.records)
    # Only handshakes (types 11 and 12) ever left in plaintext; everything else had a key epoch.
    plaintext = {h[2] for h in sent if h[3] == 0}
    assert plaintext <= {11, 12}
    assert sum(1 for h in sent if h[3] != 0) > 100


def test_an_unpaired_engine_waits_then_calls_when_paired(tmp_path: Path) -> None:
    pa, pb = free_udp_ports(2)
    states = provision_twins(tmp_path, ("a", "b"), (pa, pb))
    with StateStore(states["b"]) as store:
        store.remove_twin()
    rec = StampRecorder(psnr_every=0)
    a = Engine(paired_settings(tmp_path, "a", pa, states["a"]))
    b = Engine(paired_settings(tmp_path, "b", pb, states["b"]), sink_hook=rec)
    runs = [run(b), run(a)]
    try:
        time.sleep(1.0)
        assert b.status()["twin"] is None and not b.status()["peer_connected"]
        assert rec.records == []
        with StateStore(states["b"]) as store:
            public = Identity.load_or_create(StateStore(states["a"])).public_bytes
            store.set_twin(Twin(device_id_of(public), "a", public, "127.0.0.1", pa, time.time()))
        wait_for(lambda: len(rec.records) >= 20, what="pictures once paired")
        assert b.status()["twin"]["name"] == "a"
        net = b.stats()["network"]
    finally:
        for stop, t, _ in runs:
            stop.set()
            t.join(30)
    assert net["strangers"] >= 1  # a's calls while b did not know it: nothing but one comparison each


def test_plaintext_forged_and_stranger_packets_get_nothing(tmp_path: Path) -> None:
    pa, pb = free_udp_ports(2)
    states = provision_twins(tmp_path, ("a", "b"), (pa, pb))
    a = Engine(paired_settings(tmp_path, "a", pa, states["a"]))
    b = Engine(paired_settings(tmp_path, "b", pb, states["b"]))
    runs = [run(b), run(a)]
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.1", 0))
    stranger.settimeout(0.5)
    try:
        wait_for(lambda: b.status()["peer_connected"], what="the call")
        twin = a.link.sock  # the one socket with the twin's address
        rnd = os.urandom(50_000)
        for i in range(200):
            twin.sendto(bytes(Keepalive(seq=10**6 + i, sent_us=1)), ("127.0.0.1", pb))  # plaintext
            forged = bytearray(rnd[i * 100 : i * 100 + 60])
            forged[0:4] = b"\xd0\x01\x04" + bytes((b.transport.session.epoch or 1,))  # type: ignore[union-attr]
            twin.sendto(bytes(forged), ("127.0.0.1", pb))  # sealed-looking garbage
            stranger.sendto(bytes(Keepalive(seq=i, sent_us=1)), ("127.0.0.1", pb))
            stranger.sendto(rnd[i * 200 : i * 200 + 136], ("127.0.0.1", pb))
        answered = True
        try:
            stranger.recvfrom(2048)
        except TimeoutError:
            answered = False
        time.sleep(0.3)
        net = b.stats()["network"]
        still = b.status()["peer_connected"]
    finally:
        stranger.close()
        for stop, t, _ in runs:
            stop.set()
            t.join(30)
    assert not answered
    assert net["strangers"] >= 400
    assert net["plaintext_refused"] >= 200
    assert net["sealed_length"] + net["sealed_tag"] + net["sealed_epoch"] >= 200
    assert still


def test_a_killed_doorway_is_called_again_when_it_restarts(tmp_path: Path) -> None:
    pa, pb = free_udp_ports(2)
    states = provision_twins(tmp_path, ("a", "b"), (pa, pb))

    def settings(name: str, port: int) -> dict[str, dict[str, Any]]:
        return {
            "engine": {"state_dir": str(states[name])},
            "capture": {"backend": "synthetic"},
            "video": {"width": 320, "height": 240, "fps": 30, "bitrate_kbps": 800, "encoder": "x264"},
            "network": {"listen_host": "127.0.0.1", "listen_port": port},
            "display": {"backend": "null"},
            "audio": {"enabled": False},
        }

    def frames(e: Any) -> int:
        try:
            return int(request(e.control_socket, "stats")["display"]["frames"])
        except (ControlClientError, OSError, KeyError):
            return 0

    a = start_engine("a", tmp_path, settings("a", pa))
    b = start_engine("b", tmp_path, settings("b", pb))
    engines = [a, b]
    try:
        wait_for(lambda: frames(a) >= 30, timeout_s=60, what="the call")
        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait(10)
        wait_for(lambda: not request(a.control_socket, "status")["peer_connected"], what="a noticing")
        shown = frames(a)
        b2 = start_engine("b", tmp_path, settings("b", pb))
        engines.append(b2)
        wait_for(lambda: frames(a) >= shown + 30, timeout_s=60, what="the call again, nobody touching a")
        wait_for(lambda: frames(b2) >= 30, timeout_s=60, what="b seeing a again")
        status = request(a.control_socket, "status")
    finally:
        stop_engines(engines)
    assert status["peer_connected"]


def test_the_call_resumes_after_a_network_outage(tmp_path: Path) -> None:
    from app.net.impair import ImpairmentSettings, Scenario, ScenarioStep
    from app.relay import Relay

    pa, pb = free_udp_ports(2)
    states = provision_twins(tmp_path, ("a", "b"), (pa, pb))
    # The link carries everything, then nothing from 3 s to 6 s, then everything again.
    outage = Scenario(
        (
            ScenarioStep(0.0, ImpairmentSettings()),
            ScenarioStep(3.0, ImpairmentSettings(loss_percent=100.0)),
            ScenarioStep(6.0, ImpairmentSettings()),
        )
    )
    relay = Relay(
        listen_a=("127.0.0.1", 0), listen_b=("127.0.0.1", 0), peer_a=("127.0.0.1", pa),
        peer_b=("127.0.0.1", pb), a_to_b=ImpairmentSettings(), b_to_a=ImpairmentSettings(), seed=1,
        scenario=outage,
    )  # fmt: skip
    rec = StampRecorder(psnr_every=0)
    a = Engine(paired_settings(tmp_path, "a", pa, states["a"], peer_host="127.0.0.1", peer_port=relay.port_a))
    b = Engine(
        paired_settings(tmp_path, "b", pb, states["b"], peer_host="127.0.0.1", peer_port=relay.port_b),
        sink_hook=rec,
    )
    relay.start()
    started = time.monotonic()
    runs = [run(b), run(a)]
    try:
        wait_for(lambda: b.status()["peer_connected"], what="the call")
        assert time.monotonic() - started < 3.0, "the call should be up before the outage"
        wait_for(lambda: not b.status()["peer_connected"], what="the outage noticed")
        wait_for(lambda: time.monotonic() - started >= 6.0, what="the network back")
        wait_for(lambda: b.status()["peer_connected"], what="the call resumed")
        resumed_after = time.monotonic() - started - 6.0
        shown = len(rec.records)
        wait_for(lambda: len(rec.records) >= shown + 20, what="pictures again")
        session = b.stats()["session"]
    finally:
        for stop, t, _ in runs:
            stop.set()
            t.join(30)
        relay.stop()
    # Both sides call every second while the link is down; one of those calls goes through within about a
    # second of its return (the issue asks for 2 s). Not asserted on time: CI machines are busy.
    assert resumed_after < 30
    assert session["inits_sent"] + session["inits_received"] >= 3


def test_a_pairing_read_that_fails_is_read_again_next_time(tmp_path: Path, monkeypatch: Any) -> None:
    pa, pb = free_udp_ports(2)
    states = provision_twins(tmp_path, ("a", "b"), (pa, pb))
    with StateStore(states["b"]) as store:
        store.remove_twin()
    b = Engine(paired_settings(tmp_path, "b", pb, states["b"]))
    try:
        assert b.twin is None and b.store is not None
        with StateStore(states["a"]) as a_store, StateStore(states["b"]) as store:
            public = Identity.load_or_create(a_store).public_bytes
            store.set_twin(Twin(device_id_of(public), "a", public, "127.0.0.1", pa, time.time()))
        real_twin = b.store.twin

        def busy() -> Twin | None:
            raise StateError("database is locked")

        monkeypatch.setattr(b.store, "twin", busy)
        b.check_pairing()  # the new version is seen, its twin cannot be read: logged, not taken as seen
        assert b.twin is None
        monkeypatch.setattr(b.store, "twin", real_twin)
        b.check_pairing()
        assert b.twin is not None and b.twin.name == "a"
        assert b.transport.session is not None and b.link.peer == ("127.0.0.1", pa)
    finally:
        b.link.close()
        b.store.close()
