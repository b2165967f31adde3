"""``doorway bench hwcontrol``: the microcontroller bridge against the emulator, at length.

Three measurements, each on a real pseudo-terminal through pyserial, as the test suite does briefly:

1. **Exactly once through faults**: ``--commands`` SET_LIGHT commands, each different, through the
   emulator's fault injector (5 % drops, 1 % bit flips, 1 % duplicates, 1 % garbage bursts, 0.5 %
   reordering, both ways); every command the firmware core applies is recorded and the sequence must equal
   the one sent: nothing lost, duplicated, reordered or invented.
2. **Re-plugs**: ``--replugs`` cycles of pulling the cable and plugging it back (a power cycle: the board
   boots with its lights off); each recovery is timed from the replug to the bridge being ready with the
   light set back.
3. **Link loss**: ``--losses`` times the link goes silent (every frame dropped) and the time until the
   bridge notices is measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from app.hotplug import DeviceEvent, FakeMonitor
from app.settings import HwcontrolSettings
from hwcontrol import protocol as p
from hwcontrol.bridge import Bridge, BridgeBusyError
from hwcontrol.emulator import Emulator, FaultSettings

NOISY = FaultSettings(drop=0.05, bitflip=0.01, duplicate=0.01, garbage=0.01, reorder=0.005)


def add_bench_hwcontrol_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--commands", type=int, default=100_000, help="commands through the faults")
    parser.add_argument("--replugs", type=int, default=100, help="unplug/replug cycles")
    parser.add_argument("--losses", type=int, default=10, help="link-loss detections")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench hwcontrol: timed out waiting for {what}")
        time.sleep(0.001)


def exactly_once(link: Path, commands: int, seed: int) -> dict[str, Any]:
    emu = Emulator(link, seed=seed, to_mcu=NOISY, to_host=NOISY)
    applied: list[bytes] = []
    record = emu.core.on_apply

    def spy(mtype: int, payload: bytes) -> None:
        if record is not None:
            record(mtype, payload)
        if mtype == p.MessageType.SET_LIGHT:
            applied.append(bytes(payload))

    emu.core.on_apply = spy
    emu.start()
    bridge = Bridge(HwcontrolSettings(device=str(link)))
    bridge.start()
    sent: list[bytes] = []
    try:
        _wait(lambda: bridge.state == "ready", 60, "ready")
        started = time.monotonic()
        for i in range(commands):
            light = p.SetLight(i % 2, i % 1001, 2000 + i % 5000, fade_ms=i % 100)
            while True:
                try:
                    bridge.set_light(light)
                    break
                except BridgeBusyError:
                    time.sleep(0.002)
            sent.append(light.encode())
        _wait(lambda: len(applied) >= commands, 3600, "every command applied")
        elapsed = time.monotonic() - started
        status = bridge.status()
    finally:
        bridge.stop()
        emu.stop()
    lost = len(set(sent) - set(applied))
    return {
        "commands": commands,
        "applied": len(applied),
        "identical_sequence": applied == sent,
        "lost": lost,
        "duplicated": len(applied) - len(set(applied)),
        "seconds": round(elapsed, 1),
        "commands_per_s": round(commands / elapsed),
        "retransmits": status["counters"]["retransmits"],
        "invalid_frames": status["counters"]["invalid_frames"],
        "lost_links": status["counters"]["lost"],
    }


def replugs(link: Path, cycles: int, seed: int) -> dict[str, Any]:
    emu = Emulator(link, seed=seed)
    emu.start()
    monitor = FakeMonitor()
    bridge = Bridge(HwcontrolSettings(device=str(link)), monitor=monitor)
    bridge.start()
    times: list[float] = []
    try:
        _wait(lambda: bridge.state == "ready", 60, "ready")
        bridge.set_light(p.SetLight(1, 321, 3000))
        _wait(lambda: emu.lights()[1][0] == 321, 30, "the light")
        for _ in range(cycles):
            emu.unplug()
            monitor.inject(DeviceEvent("remove", "", subsystem="tty"))
            _wait(lambda: bridge.state != "ready", 30, "unplug noticed")
            emu.replug(power_cycle=True)
            plugged = time.monotonic()
            monitor.inject(DeviceEvent("add", str(link), subsystem="tty"))
            _wait(lambda: bridge.state == "ready" and emu.lights()[1][0] == 321, 30, "back")
            times.append(time.monotonic() - plugged)
    finally:
        bridge.stop()
        emu.stop()
    times.sort()
    return {
        "cycles": cycles,
        "recovered": len(times),
        "max_s": round(times[-1], 3),
        "p50_s": round(times[len(times) // 2], 3),
        "mean_s": round(sum(times) / len(times), 3),
        "over_2s": sum(1 for t in times if t > 2.0),
    }


def losses(link: Path, count: int, seed: int) -> dict[str, Any]:
    emu = Emulator(link, seed=seed)
    emu.start()
    bridge = Bridge(HwcontrolSettings(device=str(link)))
    bridge.start()
    detect: list[float] = []
    try:
        for _ in range(count):
            _wait(lambda: bridge.state == "ready", 60, "ready")
            emu.set_faults(FaultSettings(drop=1.0), FaultSettings(drop=1.0))
            went = time.monotonic()
            _wait(lambda: bridge.state != "ready", 30, "the loss noticed")
            detect.append(time.monotonic() - went)
            emu.set_faults(FaultSettings(), FaultSettings())
    finally:
        bridge.stop()
        emu.stop()
    return {"count": count, "max_s": round(max(detect), 3), "mean_s": round(sum(detect) / len(detect), 3)}


def main(opts: argparse.Namespace) -> int:
    # Every re-plug and loss here is on purpose: the bridge's flight-recorder dumps would drown the result.
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="doorway-bench-hw-") as tmp:
        link = Path(tmp) / "ttyDOORWAY"
        result = {
            "exactly_once": exactly_once(link, opts.commands, opts.seed),
            "replugs": replugs(link, opts.replugs, opts.seed),
            "link_loss": losses(link, opts.losses, opts.seed),
        }
    e, r, loss = result["exactly_once"], result["replugs"], result["link_loss"]
    print("| measurement | result |")
    print("|---|---|")
    print(
        f"| {e['commands']} commands through 5 % drops, 1 % bit flips, 1 % duplicates, 1 % garbage, 0.5 % "
        f"reordering | applied {e['applied']}, identical sequence: {e['identical_sequence']}, lost "
        f"{e['lost']}, duplicated {e['duplicated']}; {e['seconds']} s ({e['commands_per_s']}/s), "
        f"{e['retransmits']} retransmissions, {e['invalid_frames']} invalid frames dropped |"
    )
    print(
        f"| {r['cycles']} unplug/replug cycles | all recovered: {r['recovered'] == r['cycles']}; "
        f"p50 {r['p50_s']} s, max {r['max_s']} s, over 2 s: {r['over_2s']} |"
    )
    print(
        f"| {loss['count']} link losses | noticed after {loss['mean_s']} s on average, "
        f"at most {loss['max_s']} s |"
    )
    if opts.json is not None:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps(result, indent=2) + "\n")
    ok = e["identical_sequence"] and r["recovered"] == r["cycles"]
    return 0 if ok else 1
