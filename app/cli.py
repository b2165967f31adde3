"""The ``doorway`` command: one console script, one subcommand per process or tool.

``doorway engine`` runs one doorway (the systemd service), ``doorway demo`` two of them on this machine,
``doorway bench video`` and ``doorway bench audio`` the benchmarks, ``doorway relay`` an impairing UDP
relay between two doorways (user-space netem), ``doorway status`` asks a running engine,
``doorway check-config`` validates a settings file, ``doorway pair show|join|list|remove`` pairs this
doorway with its twin, ``doorway identity`` shows its device id and fingerprint, ``doorway admin`` runs the
LAN admin panel (``admin fingerprint`` and ``admin setup-code``: its certificate and first set-up), and
``doorway calibrate audio|camera|lighting|show`` calibrates the room. Settings errors are printed as one
line per problem and the process exits with status 2 before starting anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from app.settings import DEFAULT_CONFIG_PATH, Settings, SettingsError, load_settings

log = logging.getLogger("app.cli")

EXIT_CONFIG = 2


def _load(path: Path | None) -> Settings:
    try:
        return load_settings(path)
    except SettingsError as exc:
        print(f"doorway: invalid settings:\n{exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cmd_engine(args: argparse.Namespace) -> int:
    # Settings first: a bad file must fail before anything heavy is imported or started.
    settings = _load(args.config)
    from app.audio.codec import CodecError
    from app.audio.device import AudioDeviceError
    from app.engine.engine import Engine
    from app.engine.link import LinkError
    from app.engine.stage import freeze_startup_objects
    from app.logs import setup_logging, stop_logging
    from app.state import StateError
    from app.video.capture.base import CaptureError
    from app.video.encoder import EncoderError

    setup_logging(args.log_level or settings.logging.level)
    recorder = None
    audio_record = None
    if args.bench_record is not None:
        from app.bench.recorder import StampRecorder, TimelineSampler

        recorder = StampRecorder(seed=settings.capture.seed)
        if settings.audio.enabled:
            audio_record = args.bench_record.with_name(args.bench_record.name + ".audio")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        engine = Engine(settings, sink_hook=recorder, audio_record=audio_record, config_path=args.config)
    except (LinkError, CaptureError, EncoderError, AudioDeviceError, CodecError, StateError) as exc:
        log.error("cannot start: %s", exc)
        stop_logging()
        return 1
    timeline = None
    if recorder is not None:
        send = engine.send
        if send is not None:
            send.sent_log = recorder.sent_captured_ns
        transport = engine.transport
        timeline = TimelineSampler(lambda: (send.bytes if send else 0, transport.target_bps))
        timeline.start()
    freeze_startup_objects()  # a full collection would stall every stage for tens of ms
    engine.start(control=not args.no_control)
    status = engine.wait(stop, args.run_seconds)
    if recorder is not None and timeline is not None:
        timeline.stop()
        extra = {}
        if audio_record is not None and audio_record.exists():
            extra["audio"] = json.loads(audio_record.read_text())
            audio_record.unlink()
        recorder.dump(args.bench_record, engine.stats(), timeline.samples, extra)
    stop_logging()
    return status


def cmd_status(args: argparse.Namespace) -> int:
    from app.control import ControlClientError, request

    path = args.socket or _load(args.config).engine.control_socket
    try:
        resp = request(path, "stats" if args.stats else "status")
    except ControlClientError as exc:
        print(f"doorway: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(resp, indent=2))
    return 0 if resp.get("ok") else 1


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    print(json.dumps(settings.model_dump(mode="json"), indent=2))
    return 0


def cmd_pair(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    from app.pairing import commands

    if args.pair == "show":
        return commands.pair_show(settings, sys.stdout, sys.stderr, qr=not args.no_qr)
    if args.pair == "join":
        return commands.pair_join(settings, args.code, args.address, sys.stdout, sys.stderr)
    if args.pair == "list":
        return commands.pair_list(settings, sys.stdout, sys.stderr)
    return commands.pair_remove(settings, sys.stdout, sys.stderr)


def cmd_identity(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    from app.pairing.commands import show_identity

    return show_identity(settings, sys.stdout, sys.stderr)


def cmd_hwcontrol(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    from app.logs import setup_logging, stop_logging
    from hwcontrol.service import main as hwcontrol_main

    setup_logging(args.log_level or settings.logging.level)
    try:
        return hwcontrol_main(settings.hwcontrol, state_dir=settings.engine.state_dir)
    finally:
        stop_logging()


def cmd_admin(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    from admin import commands

    if args.admin == "fingerprint":
        return commands.fingerprint(settings, sys.stdout, sys.stderr)
    if args.admin == "setup-code":
        return commands.setup_code(settings, sys.stdout, sys.stderr)
    from app.logs import setup_logging, stop_logging

    setup_logging(args.log_level or settings.logging.level)
    try:
        # The settings page edits the file this process was started with.
        return commands.serve(settings, args.config or DEFAULT_CONFIG_PATH)
    finally:
        stop_logging()


def cmd_calibrate(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    from app.calibration.commands import calibrate, show

    if args.step == "show":
        return show(settings, as_json=args.json, out=sys.stdout, err=sys.stderr)
    return calibrate(
        settings,
        args.step,
        as_json=args.json,
        save=not args.no_save,
        progress_json=args.progress_json,
        out=sys.stdout,
        err=sys.stderr,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from app.demo import run_demo

    return run_demo(args)


def cmd_relay(args: argparse.Namespace) -> int:
    from app.relay import main as relay_main

    return relay_main(args)


def cmd_mcu_emulator(args: argparse.Namespace) -> int:
    from hwcontrol.emulator import main as emulator_main

    return emulator_main(args)


def cmd_bench_admin(args: argparse.Namespace) -> int:
    from app.bench.admin import main as bench_main

    return bench_main(args)


def cmd_bench_hwcontrol(args: argparse.Namespace) -> int:
    from app.bench.hwcontrol import main as bench_main

    return bench_main(args)


def cmd_bench_framing(args: argparse.Namespace) -> int:
    from app.bench.framing import main as bench_main

    return bench_main(args)


def cmd_bench_audio(args: argparse.Namespace) -> int:
    from app.bench.audio import main as bench_main

    return bench_main(args)


def cmd_bench_video(args: argparse.Namespace) -> int:
    from app.bench.video import main as bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="doorway", description="Doorway: a low-latency video link between rooms."
    )
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("engine", help="run one doorway's media engine (the service)")
    e.add_argument("--config", type=Path, default=None, help=f"settings file (default {DEFAULT_CONFIG_PATH})")
    e.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None)
    e.add_argument("--run-seconds", type=float, default=None, help="stop by itself after this many seconds")
    e.add_argument("--no-control", action="store_true", help="do not open the control socket")
    e.add_argument("--bench-record", type=Path, default=None, help=argparse.SUPPRESS)
    e.set_defaults(func=cmd_engine)

    s = sub.add_parser("status", help="ask a running engine for its status (or --stats)")
    s.add_argument("--config", type=Path, default=None)
    s.add_argument("--socket", type=Path, default=None, help="control socket path (overrides the settings)")
    s.add_argument("--stats", action="store_true", help="full statistics instead of the summary")
    s.set_defaults(func=cmd_status)

    c = sub.add_parser("check-config", help="validate a settings file and print the effective settings")
    c.add_argument("--config", type=Path, default=None)
    c.set_defaults(func=cmd_check_config)

    pa = sub.add_parser("pair", help="pair this doorway with its twin: show a code here, join with it there")
    psub = pa.add_subparsers(dest="pair", required=True)
    ps = psub.add_parser("show", help="show a pairing code and wait for the other doorway to join")
    ps.add_argument("--no-qr", action="store_true", help="do not draw the code as a QR code")
    pj = psub.add_parser("join", help="pair with the doorway showing CODE at HOST[:PORT]")
    pj.add_argument("code", help="the code the other doorway shows, e.g. 1234-5678")
    pj.add_argument("address", metavar="HOST[:PORT]", help="the other doorway (port: pairing.port)")
    psub.add_parser("list", help="show the twin this doorway is paired with")
    psub.add_parser("remove", help="forget the twin")
    for pp in psub.choices.values():
        pp.add_argument("--config", type=Path, default=None)
    pa.set_defaults(func=cmd_pair)

    i = sub.add_parser("identity", help="show this doorway's name, device id and key fingerprint")
    i.add_argument("--config", type=Path, default=None)
    i.set_defaults(func=cmd_identity)

    hw = sub.add_parser("hwcontrol", help="run the bridge to the room's microcontroller (the service)")
    hw.add_argument("--config", type=Path, default=None)
    hw.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    hw.set_defaults(func=cmd_hwcontrol)

    ad = sub.add_parser(
        "admin", help="run the LAN admin panel (the service), or manage its certificate and setup"
    )
    ad.add_argument("--config", type=Path, default=None)
    ad.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    adsub = ad.add_subparsers(dest="admin", required=False)
    adsub.add_parser("serve", help="serve the admin panel on HTTPS, and redirect plain HTTP (the default)")
    adsub.add_parser("fingerprint", help="print the SHA-256 fingerprint of the admin panel's certificate")
    adsub.add_parser(
        "setup-code", help="make a one-time code to create the owner account (before set-up only)"
    )
    for ap in adsub.choices.values():
        # SUPPRESS: given after the subcommand it overrides, and not given it leaves the parent's value.
        ap.add_argument("--config", type=Path, default=argparse.SUPPRESS)
        ap.add_argument(
            "--log-level", default=argparse.SUPPRESS, choices=["debug", "info", "warning", "error"]
        )
    ad.set_defaults(func=cmd_admin, admin="serve")

    from app.demo import add_demo_arguments

    cal = sub.add_parser(
        "calibrate",
        help="calibrate this doorway: audio (delay, levels, echo), camera (controls, framing), lighting",
    )
    cal.add_argument(
        "step", choices=["audio", "camera", "lighting", "show"], help="the step, or the stored results"
    )
    cal.add_argument(
        "--config", type=Path, default=None, help=f"settings file (default {DEFAULT_CONFIG_PATH})"
    )
    cal.add_argument("--json", action="store_true", help="print the report as JSON")
    cal.add_argument("--no-save", action="store_true", help="measure and report, but store and apply nothing")
    cal.add_argument(
        "--progress-json", action="store_true", help="progress on stderr as JSON lines (for the admin panel)"
    )
    cal.set_defaults(func=cmd_calibrate)

    d = sub.add_parser("demo", help="two doorways on this machine in a call, with live statistics")
    add_demo_arguments(d)
    d.set_defaults(func=cmd_demo)

    from app.relay import add_relay_arguments

    r = sub.add_parser("relay", help="an impairing UDP relay between two doorways (user-space netem)")
    add_relay_arguments(r)
    r.set_defaults(func=cmd_relay)

    from hwcontrol.emulator import add_emulator_arguments

    me = sub.add_parser(
        "mcu-emulator", help="the room controller's firmware on a pseudo-terminal, with faults"
    )
    add_emulator_arguments(me)
    me.set_defaults(func=cmd_mcu_emulator)

    from app.bench.video import add_bench_video_arguments

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench", required=True)
    bv = bsub.add_parser("video", help="video latency benchmark (doorway, optionally against aiortc)")
    add_bench_video_arguments(bv)
    bv.set_defaults(func=cmd_bench_video)
    from app.bench.admin import add_bench_admin_arguments

    bad = bsub.add_parser("admin", help="admin panel response time while a 1080p60 call runs")
    add_bench_admin_arguments(bad)
    bad.set_defaults(func=cmd_bench_admin)
    from app.bench.hwcontrol import add_bench_hwcontrol_arguments

    bh = bsub.add_parser("hwcontrol", help="microcontroller bridge: commands through faults, re-plugs, loss")
    add_bench_hwcontrol_arguments(bh)
    bh.set_defaults(func=cmd_bench_hwcontrol)
    from app.bench.audio import add_bench_audio_arguments

    ba = bsub.add_parser("audio", help="audio benchmark: mouth-to-ear, concealment, echo cancellation, drift")
    add_bench_audio_arguments(ba)
    ba.set_defaults(func=cmd_bench_audio)
    from app.bench.framing import add_bench_framing_arguments

    bf = bsub.add_parser("framing", help="framing (crop, zoom, mirror, rotation): ms per picture")
    add_bench_framing_arguments(bf)
    bf.set_defaults(func=cmd_bench_framing)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: Any = args.func(args)
    return int(result)


if __name__ == "__main__":
    sys.exit(main())
