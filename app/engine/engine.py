"""One doorway's media engine: the stages wired together, supervised, and exposed on the control socket.

Start order is downstream-first (display, decode, network, then send, encode, capture) so no stage produces
into a consumer that is not running yet; stop order is the reverse. Any stage failing with a bug stops the
whole engine, and ``run`` returns a non-zero exit status so systemd restarts the service (tonari's actor
system shuts everything down on any actor error; our units use ``Restart=always``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from app.audio.device import AudioDeviceError, open_configured
from app.audio.room import RoomConfig
from app.calibration import applied
from app.calibration.audio import apply_to as apply_audio_calibration
from app.calibration.report import STEPS, Report
from app.calibration.runner import CalibrationBusyError, CalibrationRunner
from app.control import CommandError, ControlServer
from app.engine.audio import AudioEngine, AudioTap
from app.engine.audio_process import AudioProcess
from app.engine.hwlink import HwLink
from app.engine.lightmatch import LightMatch
from app.engine.link import LinkError, UdpLink
from app.engine.receiver import DecodeStage, DisplayStage, NetworkStage
from app.engine.sender import CaptureStage, EncodeStage, SendStage
from app.engine.stage import Inbox, Stage
from app.engine.transport import Transport
from app.hotplug import create_monitor
from app.identity import Identity, fingerprint_of
from app.net.fragment import AssembledFrame
from app.net.protocol import AudioPacket, RoomReport
from app.net.session import Session
from app.settings import Settings
from app.state import StateError, StateStore, Twin
from app.video.capture import create_capture
from app.video.capture.resilient import ResilientCapture
from app.video.decoder import VideoDecoder
from app.video.display import create_display
from app.video.display.base import DisplaySink
from app.video.encoder import open_encoder
from app.video.frames import CapturedFrame, DecodedFrame, EncodedFrame
from app.video.framing import FramedCapture, framed_capture

if TYPE_CHECKING:
    from app.bench.audio_tap import BenchAudioTap

log = logging.getLogger(__name__)

# Inbox sizes: a couple of frames at most anywhere, so a slow stage sheds load instead of adding latency.
CAPTURE_TO_ENCODE = 1
ENCODE_TO_SEND = 4
NETWORK_TO_DECODE = 8


class Engine:
    """Builds and runs one doorway from its settings.

    ``sink_hook`` (optional) is called on the display thread with every picture the null sink shows; the
    benchmark uses it to read the stamps. ``audio_record``: a file the audio's benchmark recording
    (app/bench/audio_tap.py) is written to when the engine stops; ``audio_tap``: a tap of the caller's
    instead (tests; only with ``audio.own_process`` false, for it runs on the audio engine's threads).
    ``config_path``: the settings file the engine was started with, which calibration steps run through the
    control socket read too (None: the default file).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        sink_hook: Callable[[DecodedFrame], None] | None = None,
        audio_tap: AudioTap | None = None,
        audio_record: Path | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.settings = settings
        # Calibration steps run as `doorway calibrate` children of this process (it has the devices the
        # admin panel's sandbox lacks), with the settings file this engine was started with.
        self.calibration = CalibrationRunner(config_path, on_finished=self._calibrated)
        self._failed = threading.Event()
        self._stopped = threading.Event()
        self.failure: str | None = None
        self.started_ns = time.monotonic_ns()
        net = settings.network
        video = settings.video
        # Who we are and whom we call: with encryption, only the paired twin (app/state.py, app/pairing).
        self.store: StateStore | None = None
        self.identity: Identity | None = None
        self.twin: Twin | None = None
        self._store_version = -1
        if net.encryption == "required":
            self.store = StateStore(settings.engine.state_dir)
            self.identity = Identity.load_or_create(self.store)
        self.link = UdpLink(
            net.listen_host, net.listen_port, net.peer_host, net.peer_port, net.socket_buffer_bytes
        )
        max_bps = video.bitrate_kbps * 1000
        self.transport = Transport(
            self.link,
            start_bps=max_bps,
            min_bps=min(video.min_bitrate_kbps * 1000, max_bps),
            max_bps=max_bps,
            on_target=self._on_target,
            fps=video.fps,
            fragment_bytes=net.mtu_payload,
            encrypted=self.store is not None,
        )
        role = settings.engine.role
        self.sending = role in ("duplex", "send")
        self.receiving = role in ("duplex", "receive")
        self.stages: list[Stage] = []  # in start order
        self.display: DisplayStage | None = None
        self.decode: DecodeStage | None = None
        self.encode: EncodeStage | None = None
        self.send: SendStage | None = None
        self.capture: CaptureStage | None = None
        self.framed: FramedCapture | None = None
        """The camera with its framing (app/video/framing.py): ``snapshot`` and ``set_framing`` use it."""
        self.sink: DisplaySink | None = None

        decode_in: Inbox[AssembledFrame] | None = None
        if self.receiving:
            self.sink = create_display(settings.display, video.width, video.height, on_frame=sink_hook)
            display_in: Inbox[DecodedFrame] = Inbox(1, latest_wins=True)
            self.display = DisplayStage(self.sink, display_in, self._stage_failed)
            decode_in = Inbox(NETWORK_TO_DECODE)
        self.network = NetworkStage(
            self.transport,
            decode_in,
            frame_deadline_ms=net.frame_deadline_ms,
            report_interval_ms=net.report_interval_ms,
            keepalive_interval_ms=net.keepalive_interval_ms,
            keyframe_request_interval_ms=net.keyframe_request_interval_ms,
            feedback_interval_ms=net.feedback_interval_ms,
            on_keyframe_request=self._peer_wants_keyframe,
            on_error=self._stage_failed,
            on_audio=self._on_audio,
            on_room=self._on_room,
        )
        if self.receiving and self.display is not None and decode_in is not None:
            decoder = VideoDecoder("h264", threads=video.decoder_threads)
            self.decode = DecodeStage(
                decoder, decode_in, self.display.inbox, self.network.keyframe_wanted, self._stage_failed
            )
            self.stages += [self.display, self.decode]
        self.stages.append(self.network)
        if self.sending:
            send_in: Inbox[EncodedFrame] = Inbox(ENCODE_TO_SEND)
            self.send = SendStage(
                self.transport,
                send_in,
                net.mtu_payload,
                video.bitrate_kbps,
                net.pacing_factor,
                net.pacing_burst_bytes,
                self._stage_failed,
            )
            encode_in: Inbox[CapturedFrame] = Inbox(CAPTURE_TO_ENCODE)
            self.encode = EncodeStage(
                open_encoder(video),
                encode_in,
                send_in,
                net.keyframe_request_interval_ms,
                self._stage_failed,
                fps=video.fps,
            )
            self.capture = CaptureStage(self._make_capture(), encode_in, self._stage_failed)
            self.stages += [self.send, self.encode, self.capture]
        self.audio: AudioEngine | AudioProcess | None = None
        self._audio_record = audio_record
        self._record_tap: BenchAudioTap | None = None  # audio on the engine's threads, recording (benchmark)
        if settings.audio.enabled:
            try:
                self.audio = self._make_audio(audio_tap)
            except BaseException:
                # Nothing has started yet; what is open must not outlive the refusal.
                self.link.close()
                if self.store is not None:
                    self.store.close()
                raise
            # Audio packets go through the network thread: it must wake as promptly as the audio threads.
            self.network.realtime = True
        self.control: ControlServer | None = None
        self.privacy = False
        self.privacy_reason: str | None = None
        # The room light: ours to the twin, and in match mode the twin's followed (app/engine/lightmatch.py).
        # The calibrated response even with matching off: the panel may turn it on mid-call.
        lighting_calibration = applied(settings.engine.state_dir, "lighting")
        self.lightmatch = LightMatch(
            settings.lighting,
            settings.hwcontrol.control_socket,
            self.transport.send,
            self.transport.next_seq,
            calibration=lighting_calibration,
            paused=self._lighting_calibration_running,
        )
        self.hwlink = HwLink(settings.hwcontrol.control_socket, self.set_privacy, self.lightmatch.on_sensors)
        self._proc = psutil.Process(os.getpid())
        self.check_pairing()
        self._proc.cpu_percent()

    def _make_audio(self, tap: AudioTap | None) -> AudioEngine | AudioProcess:
        # The latest audio calibration (delay, gains) in place of the settings' defaults; logged when applied.
        a = apply_audio_calibration(self.settings.audio, applied(self.settings.engine.state_dir, "audio"))
        room = RoomConfig(
            echo_delay_ms=a.room_echo_delay_ms,
            rt60_ms=a.room_rt60_ms,
            echo_gain_db=a.room_echo_gain_db,
            noise_dbfs=a.room_noise_dbfs,
            talker=a.talker,
            talk_pattern=a.talk_pattern,
            talk_s=a.talk_s,
            phase_s=a.talk_phase_s,
            markers_every_s=a.markers_every_s,
            seed=self.settings.capture.seed,
        )
        display = self.display

        def video_age() -> float | None:
            return None if display is None else display.age_ms

        def hold_video(ms: float) -> None:
            if display is not None:
                display.hold_ms = ms

        if a.own_process:
            if tap is not None:
                raise ValueError("an audio tap runs on the audio threads: it needs audio.own_process = false")
            return AudioProcess(
                a,
                room,
                self.transport,
                sending=self.sending,
                receiving=self.receiving,
                video_age_ms=video_age,
                hold_video=hold_video,
                record=self._audio_record,
            )
        engine = AudioEngine(
            a,
            open_configured(a, room),
            self.transport,
            sending=self.sending,
            receiving=self.receiving,
            on_error=self._stage_failed,
            video_age_ms=video_age,
            hold_video=hold_video,
            tap=tap,
        )
        if tap is None and self._audio_record is not None:
            from app.bench.audio_tap import BenchAudioTap

            self._record_tap = BenchAudioTap.attach(engine)
        return engine

    def _on_audio(self, pkt: AudioPacket, now: int) -> None:
        if self.audio is not None:
            self.audio.on_packet(pkt, now)

    def _on_room(self, pkt: RoomReport) -> None:
        self.lightmatch.on_room_report(pkt)

    def _lighting_calibration_running(self) -> bool:
        """Whether ``doorway calibrate lighting`` runs under this engine now (matching pauses meanwhile)."""
        status = self.calibration.status()
        return bool(status.get("state") == "running" and status.get("step") == "lighting")

    def _make_capture(self) -> ResilientCapture:
        cap, video = self.settings.capture, self.settings.video
        # Framing (the stored calibration's) inside the slate wrapper: the slate is never mirrored.
        source = self.framed = framed_capture(self.settings, create_capture(cap, video))
        label = {"v4l2": cap.device, "file": str(cap.file)}.get(cap.backend, cap.backend)
        monitor = create_monitor("udev") if cap.backend == "v4l2" else None
        return ResilientCapture(
            source,
            width=video.width,
            height=video.height,
            fps=video.fps,
            device_label=label,
            monitor=monitor,
            reopen_interval_s=cap.reopen_interval_s,
        )

    # -- supervision -------------------------------------------------------------------------------------

    def _stage_failed(self, name: str, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = f"{name}: {type(exc).__name__}: {exc}"
        self._failed.set()

    def _on_target(self, target_bps: int, fec_share: float) -> None:
        """Congestion control moved the target (network thread): media gets what FEC leaves of it."""
        if self.encode is None or self.send is None:
            return
        # Audio goes first: video gets what is left of the target after audio's own rate.
        audio_bps = self.audio.rate_bps() if self.audio is not None and self.audio.sending else 0
        encoder_kbps = max(100, int((target_bps - audio_bps) * (1.0 - fec_share) / 1000))
        self.encode.set_bitrate(encoder_kbps)
        self.send.set_rate(target_bps)

    def _peer_wants_keyframe(self) -> None:
        if self.encode is not None:
            self.encode.request_keyframe()

    def start(self, *, control: bool = True) -> None:
        """Start every stage (downstream first) and the control socket. Returns at once."""
        for stage in self.stages:
            stage.start()
        if self.audio is not None:
            self.audio.start()
        if control:
            self.control = ControlServer(self.settings.engine.control_socket, self._commands())
            self.control.start()
            self.hwlink.start()
            self.lightmatch.start()
        log.info(
            "engine %r started: role %s, udp %s:%d -> %s, %dx%d@%d, %s",
            self.settings.engine.name,
            self.settings.engine.role,
            self.link.local[0],
            self.link.local[1],
            self._peer_text(),
            self.settings.video.width,
            self.settings.video.height,
            self.settings.video.fps,
            "encrypted" if self.transport.encrypted else "PLAINTEXT (network.encryption = off)",
        )

    def set_privacy(self, on: bool, why: str) -> None:
        """Privacy on: the far room sees a "Privacy" slate and hears silence; the call stays up (any
        thread)."""
        self.privacy = on
        self.privacy_reason = why if on else None
        if self.capture is not None and isinstance(self.capture.source, ResilientCapture):
            self.capture.source.privacy = on
        if self.audio is not None:
            self.audio.muted = on
        log.info("privacy %s (%s)", "on" if on else "off", why)

    def check_pairing(self) -> None:
        """Follow the stored pairing (any thread; the supervisor calls it every second): a new twin gets a
        new session and, unless ``network.peer_host`` pins it, the twin's media address."""
        store = self.store
        if store is None or self.identity is None:
            return
        try:
            version = store.version()
            if version == self._store_version:
                return
            twin = store.twin()
        except StateError as exc:
            log.error("pairing: %s", exc)
            return
        # Only now: a failed read of the twin must be retried next time, not taken as seen.
        self._store_version = version
        if twin == self.twin:
            return
        self.twin = twin
        if twin is None:
            self.transport.session = None
            log.warning(
                "not paired: run `doorway pair show` here, or `doorway pair join CODE HOST` on the other"
                " doorway"
            )
            return
        net = self.settings.network
        if net.peer_host is None:
            try:
                self.link.set_peer(twin.media_host, twin.media_port)
            except LinkError as exc:
                log.error("pairing: the twin's address: %s", exc)
        self.transport.session = Session(
            self.identity.private_bytes, self.identity.public_bytes, twin.public_key
        )
        log.info(
            "paired with %r (%s, %s); calling it at %s",
            twin.name,
            twin.device_id,
            fingerprint_of(twin.public_key),
            self._peer_text(),
        )

    def _peer_text(self) -> str:
        peer = self.link.peer
        return "none (not paired)" if peer is None else f"{peer[0]}:{peer[1]}"

    def stop(self) -> None:
        """Stop every stage in reverse start order and close the socket (idempotent, any thread)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.control is not None:
            self.control.close()
            self.hwlink.stop()
            self.lightmatch.stop()
        self.calibration.close()
        if self.audio is not None:
            self.audio.stop()
        if self._record_tap is not None and self._audio_record is not None:
            self._record_tap.write(self._audio_record)
        for stage in reversed(self.stages):
            stage.stop()
            if not stage.join(5.0):
                log.error("%s: did not stop within 5 s", stage.name)
        self.link.close()
        if self.store is not None:
            self.store.close()

    def wait(self, stop_event: threading.Event, timeout_s: float | None = None) -> int:
        """Block until ``stop_event`` is set, a stage fails or ``timeout_s`` passes; then stop.

        Returns the process exit status: 0 for a requested stop, 1 after a stage failure.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        next_check = time.monotonic() + 1.0
        while not stop_event.is_set() and not self._failed.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if now >= next_check:
                next_check = now + 1.0
                self.check_pairing()
            stop_event.wait(0.1)
        self.stop()
        if self._failed.is_set():
            log.error("engine stopped because a stage failed: %s", self.failure)
            return 1
        return 0

    # -- control socket ----------------------------------------------------------------------------------

    def _commands(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {
            "status": lambda args: self.status(),
            "stats": lambda args: self.stats(),
            "set_bitrate": self._cmd_set_bitrate,
            "privacy": self._cmd_privacy,
            "keyframe": self._cmd_keyframe,
            "snapshot": self._cmd_snapshot,
            "set_framing": self._cmd_set_framing,
            "calibrate": self._cmd_calibrate,
            "calibration": lambda args: self.calibration.status(),
            "calibration_cancel": lambda args: {"cancelled": self.calibration.cancel()},
            "audio_hold": self._cmd_audio_hold,
            "lighting_match": self._cmd_lighting_match,
        }

    def _cmd_lighting_match(self, args: dict[str, Any]) -> dict[str, Any]:
        on = args.get("on")
        if not isinstance(on, bool):
            raise CommandError('"on" must be true or false')
        self.lightmatch.set_enabled(on)
        return {"lighting": self.lightmatch.stats()}

    def _cmd_audio_hold(self, args: dict[str, Any]) -> dict[str, Any]:
        on, seconds = args.get("on"), args.get("seconds", 60)
        if not isinstance(on, bool):
            raise CommandError('"on" must be true or false')
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 1 <= seconds <= 600:
            raise CommandError('"seconds" must be a number from 1 to 600')
        if self.audio is None:
            return {"held": False, "audio": False}
        try:
            return {"held": self.audio.hold(on, float(seconds)), "audio": True}
        except AudioDeviceError as exc:
            raise CommandError(f"the sound card could not be taken back: {exc}") from None

    def _cmd_set_bitrate(self, args: dict[str, Any]) -> dict[str, Any]:
        kbps = args.get("kbps")
        if not isinstance(kbps, int) or isinstance(kbps, bool) or not 100 <= kbps <= 200_000:
            raise CommandError('"kbps" must be an integer from 100 to 200000')
        if self.encode is None or self.send is None:
            raise CommandError("this engine does not send video")
        # The new ceiling for congestion control, which moves the encoder below it as the path allows.
        self.transport.set_max_bps(kbps * 1000)
        self.encode.set_bitrate(min(kbps, self.transport.target_bps // 1000))
        self.send.set_rate(self.transport.target_bps)
        return {"kbps": kbps}

    def _calibrated(self, step: str, report: dict[str, Any]) -> None:
        """A calibration run under this engine ended with a report (the runner's thread): apply what it
        measured now, as the next start would. (The camera step sets the framing itself, live.)"""
        try:
            values = Report.from_json(report).apply
        except ValueError as exc:
            log.warning("calibration: the %s report is unreadable (%s); applied at the next start", step, exc)
            return
        if not values:
            return
        if step == "audio" and self.audio is not None:
            self.audio.apply_calibration(apply_audio_calibration(self.settings.audio, values))
        elif step == "lighting":
            self.lightmatch.set_calibration(values)

    def _cmd_calibrate(self, args: dict[str, Any]) -> dict[str, Any]:
        step = args.get("step")
        if step not in STEPS:
            raise CommandError(f'"step" must be one of {", ".join(STEPS)}')
        try:
            return self.calibration.start(step)
        except CalibrationBusyError as exc:
            raise CommandError(str(exc)) from None

    def _cmd_privacy(self, args: dict[str, Any]) -> dict[str, Any]:
        on = args.get("on")
        if not isinstance(on, bool):
            raise CommandError('"on" must be true or false')
        self.set_privacy(on, "control socket")
        return {"privacy": self.privacy}

    def _cmd_snapshot(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.framed is None:
            raise CommandError("this engine does not send video")
        try:
            return self.framed.snapshot_command(args)
        except ValueError as exc:
            raise CommandError(str(exc)) from None

    def _cmd_set_framing(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.framed is None:
            raise CommandError("this engine does not send video")
        try:
            return self.framed.set_framing_command(args)
        except ValueError as exc:
            raise CommandError(str(exc)) from None

    def _cmd_keyframe(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.encode is None:
            raise CommandError("this engine does not send video")
        return {"accepted": self.encode.request_keyframe()}

    def status(self) -> dict[str, Any]:
        """Small, cheap state summary (any thread)."""
        now = time.monotonic_ns()
        last = self.network.last_peer_packet_ns
        session = self.transport.session
        if self.transport.encrypted:
            peer_up = session is not None and session.live(now)
        else:
            peer_up = last != 0 and now - last < 2_000_000_000
        twin = self.twin
        return {
            "name": self.settings.engine.name,
            "role": self.settings.engine.role,
            "uptime_s": round((now - self.started_ns) / 1e9, 1),
            "peer": self._peer_text(),
            "peer_connected": peer_up,
            "encoder": None if self.encode is None else self.encode.encoder.name,
            "camera_available": None
            if self.capture is None
            else not getattr(self.capture.source, "showing_slate", False),
            "video": {
                "width": self.settings.video.width,
                "height": self.settings.video.height,
                "fps": self.settings.video.fps,
            },
            "failure": self.failure,
            "privacy": self.privacy,
            "privacy_reason": self.privacy_reason,
            "hwcontrol": self.hwlink.stats(),
            "lighting": self.lightmatch.stats(),
            "encrypted": self.transport.encrypted,
            "identity": None
            if self.identity is None
            else {"device_id": self.identity.device_id, "fingerprint": self.identity.fingerprint},
            "twin": None
            if twin is None
            else {
                "name": twin.name,
                "device_id": twin.device_id,
                "fingerprint": fingerprint_of(twin.public_key),
            },
        }

    def stats(self) -> dict[str, Any]:
        """Every stage's counters and latency histograms (any thread)."""
        mem = self._proc.memory_info().rss / 2**20
        out: dict[str, Any] = {
            "status": self.status(),
            "process": {"cpu_percent": self._proc.cpu_percent(), "rss_mb": round(mem, 1)},
            "network": self.network.stats(),
            "transport": self.transport.stats(),
        }
        session = self.transport.session
        if session is not None:
            out["session"] = session.stats(time.monotonic_ns())
        if self.capture is not None:
            out["capture"] = self.capture.stats()
            out["capture"].update(getattr(self.capture.source, "counters", {}))
        if self.encode is not None:
            out["encode"] = self.encode.stats()
        if self.send is not None:
            out["send"] = self.send.stats()
        if self.decode is not None:
            out["decode"] = self.decode.stats()
        if self.display is not None:
            out["display"] = self.display.stats()
        if self.audio is not None:
            out["audio"] = self.audio.stats()
        return out
