"""The audio engine in a process of its own, joined to the engine process by a local socket.

**Why a process.** Python's interpreter lock has no priority inheritance. A real-time audio thread that
needs it waits for whichever thread holds it, and on a busy machine that may be a normal-priority video
thread the kernel has just preempted for x264's workers: the audio thread then waits a whole scheduler
slice. Measured on the 2-core dev machine, a SCHED_FIFO thread sleeping 1 ms overslept p99 0.04 ms, max
0.16 ms beside three CPU-bound processes; beside them *and* one normal-priority Python thread of its own
process, p99 4.4 ms, max 8.2 ms (``sys.setswitchinterval`` at 0.5 ms). That is more than a speaker
period (5 ms then, 2.5 now) can absorb: each such stall of the playout thread was an underrun. In a process
of its own every thread that takes the audio interpreter's lock is one of its real-time threads (the logging
writer aside, which runs only when there is something to log), so the holder is always running.

**Processes and threads.**

- Engine process: :class:`AudioProcess` stands where :class:`~app.engine.audio.AudioEngine` would. The
  network thread hands each audio packet to the socket (never blocking: a full socket drops the packet and
  counts it); the **audio-relay** thread (real-time) numbers and sends the audio process's packets through
  the transport, and pushes the twin's reported loss (for redundancy) and the display's picture age (for
  lip sync) ten times a second; control calls (stats, hold, mute, calibration) are requests answered
  through it.
- Audio process (``python -m app.engine.audio_process FD``): the :class:`~app.engine.audio.AudioEngine`
  with its device, send and playout threads; its main thread (real-time) reads the socket.

**The socket**: an ``AF_UNIX``/``SOCK_SEQPACKET`` socket pair (message boundaries kept, reliable, in order);
the audio process inherits its end as file descriptor ``FD``. Each message starts with one byte saying what
it is:

======================================  ==================  =================================================
message                                 direction           meaning
======================================  ==================  =================================================
``P`` + u64 LE arrival ns + packet      engine → audio      an :class:`~app.net.protocol.AudioPacket` from the
                                                            twin (its wire form, opened), and when it came
``S`` + packet                          audio → engine      a packet to send; the engine sets its ``seq``
``J`` + JSON object                     both ways           everything else, by ``op`` (below)
======================================  ==================  =================================================

JSON ``op``\\ s, engine → audio: ``init`` (the first message: ``audio`` settings, ``room``, ``sending``,
``receiving``, ``record`` path or null, ``log_level``, ``muted``, and ``start``: start at once, for a
restart), ``start``, ``stop``, ``stats``, ``hold`` (``on``, ``seconds``) — these four carry an ``id`` and
are answered — and ``mute`` (``on``), ``calibration`` (``audio`` settings), ``state`` (``loss``,
``video_age_ms``). Audio → engine: ``ready`` (``device``, ``period_ms``) or ``failed`` (``kind``,
``error``) once after ``init``; ``reply`` (``id`` and ``result`` or ``error`` and ``kind``);
``hold_video`` (``ms``); ``error`` (``name``, ``error``: an audio thread failed, and the process ends).

The audio process exits when the socket closes, so it never outlives its engine; the engine starts a new
one when it dies (:class:`AudioProcess`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.audio.codec import CodecError
from app.audio.device import AudioDeviceError, make_realtime
from app.audio.room import RoomConfig
from app.engine.audio import audio_rate_bps, redundancy_for
from app.engine.stage import GcPauses, freeze_startup_objects
from app.engine.transport import Transport
from app.net.protocol import AudioPacket, ProtocolError
from app.settings import AudioSettings

if TYPE_CHECKING:
    from app.bench.audio_tap import BenchAudioTap

log = logging.getLogger(__name__)

PACKET = b"P"
SEND = b"S"
JSON = b"J"
MAX_MESSAGE = 256 * 1024
"""Largest message either side reads, bytes (statistics are the largest, a few kB)."""
STATE_INTERVAL_S = 0.1
"""How often the engine pushes the twin's loss and the picture age to the audio process, s."""
START_TIMEOUT_S = 60.0
"""How long the engine waits for the audio process to open its codecs and device, s."""
RESTART_DELAYS_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
"""How long to wait before each attempt to start a dead audio process again, s (then every 30 s)."""
REQUEST_TIMEOUT_S = 10.0
"""How long a request (start, stop, stats, hold) may take to be answered, s."""
_ARRIVAL = 8  # bytes of the arrival time after the kind


class AudioProcessError(AudioDeviceError):
    """The audio process could not be started or stopped answering."""


def _send(sock: socket.socket, data: bytes) -> bool:
    """One message, never blocking: False when the socket is full or closed (the caller counts it)."""
    try:
        sock.send(data, socket.MSG_DONTWAIT)
    except OSError:  # BlockingIOError (full), BrokenPipeError / ConnectionResetError (the other side gone)
        return False
    return True


def _json(obj: dict[str, Any]) -> bytes:
    return JSON + json.dumps(obj, separators=(",", ":")).encode()


def _error_kind(exc: BaseException) -> str:
    """How an error crosses the socket (``kind``): the engine raises it again as :func:`_error` makes it."""
    return "CodecError" if isinstance(exc, CodecError) else "AudioDeviceError"


def _error(msg: dict[str, Any]) -> CodecError | AudioDeviceError:
    """The exception a ``failed`` or error ``reply`` message stands for."""
    error = str(msg.get("error"))
    return CodecError(error) if msg.get("kind") == "CodecError" else AudioDeviceError(error)


# -- engine side ---------------------------------------------------------------------------------------


def _reap(proc: subprocess.Popen[bytes]) -> int:
    """Wait up to 5 s for an audio process to exit, then kill it; its exit status."""
    try:
        return proc.wait(5.0)
    except subprocess.TimeoutExpired:
        log.error("audio process %d did not exit; killing it", proc.pid)
        proc.kill()
        return proc.wait(5.0)


def _kill(sock: socket.socket, proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(5.0)
    sock.close()


class _Reply:
    __slots__ = ("done", "message")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.message: dict[str, Any] | None = None


class AudioProcess:
    """The audio engine, run in a child process; the same calls as :class:`~app.engine.audio.AudioEngine`
    makes to the engine (threads as the engine calls them: ``on_packet`` on the network thread, the rest
    on control or supervisor threads).

    Raises :class:`~app.audio.device.AudioDeviceError` (with the device list, for a missing device) or
    :class:`~app.audio.codec.CodecError` when the audio process cannot open its device or codecs.

    Once running, an audio process that dies (a crash in a native library, an audio thread that failed, a
    kill) is started again by the relay thread after :data:`RESTART_DELAYS_S` — with the latest calibration
    and the privacy mute — while video goes on; ``process.restarts`` in the statistics counts it.
    """

    def __init__(
        self,
        settings: AudioSettings,
        room: RoomConfig,
        transport: Transport,
        *,
        sending: bool,
        receiving: bool,
        video_age_ms: Callable[[], float | None] | None = None,
        hold_video: Callable[[float], None] | None = None,
        record: Path | None = None,
    ) -> None:
        self.settings = settings
        self.room = room
        self.transport = transport
        self.sending = sending
        self.receiving = receiving
        self._video_age_ms = video_age_ms
        self._hold_video = hold_video
        self._record = record
        self._muted = False
        self._ids = itertools.count(1)
        self._pending: dict[int, _Reply] = {}
        self._pending_lock = threading.Lock()
        self._stopping = threading.Event()
        self._final_stats: dict[str, Any] | None = None
        self.counters = {"packets_dropped_in": 0, "bad_messages": 0, "restarts": 0}
        self.device_name = "?"
        self.period_ms = settings.period_ms
        self.sock, self.proc = self._spawn(start=False)
        self._relay = threading.Thread(target=self._relay_loop, name="audio-relay", daemon=True)
        self._relay.start()

    def _spawn(self, *, start: bool) -> tuple[socket.socket, subprocess.Popen[bytes]]:
        """Start an audio process and wait until it has opened its device and codecs (and, with ``start``,
        started them); its socket and process. Raises as the class says."""
        sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "app.engine.audio_process", str(child.fileno())],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            sock.close()
            raise AudioProcessError(f"cannot start the audio process: {exc}") from exc
        finally:
            child.close()
        try:
            self._handshake(sock, proc, start=start)
        except BaseException:
            _kill(sock, proc)
            raise
        return sock, proc

    def _handshake(self, sock: socket.socket, proc: subprocess.Popen[bytes], *, start: bool) -> None:
        init = {
            "op": "init",
            "audio": self.settings.model_dump(mode="json"),
            "room": dataclasses.asdict(self.room),
            "sending": self.sending,
            "receiving": self.receiving,
            # A restarted process records nothing: the benchmark that asked for it has failed anyway.
            "record": None if self._record is None or start else str(self._record),
            "log_level": logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower(),
            "muted": self._muted,
            "start": start,
        }
        if not _send(sock, _json(init)):
            raise AudioProcessError("the audio process did not take its settings")
        ready, _, _ = select.select([sock], [], [], START_TIMEOUT_S)
        data = sock.recv(MAX_MESSAGE) if ready else b""
        if not data.startswith(JSON):
            status = proc.poll()
            raise AudioProcessError(
                "the audio process did not start"
                + (f" (exit status {status})" if status is not None else f" within {START_TIMEOUT_S:.0f} s")
            )
        msg = json.loads(data[1:])
        if msg.get("op") == "failed":
            raise _error(msg)
        self.device_name = str(msg.get("device"))
        self.period_ms = float(msg.get("period_ms", self.settings.period_ms))

    # -- calls from the engine ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the audio threads and the sound card (raises AudioDeviceError if it cannot open)."""
        self._request("start")
        log.info("audio: running in process %d", self.proc.pid)

    def stop(self) -> None:
        """Stop the audio process (its final statistics and recording kept); idempotent, any thread."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        try:
            self._final_stats = self._request("stop")
        except (AudioDeviceError, CodecError) as exc:
            log.warning("audio: %s", exc)
        _reap(self.proc)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the relay thread
        self._relay.join(5.0)
        self.sock.close()

    def on_packet(self, pkt: AudioPacket, now_ns: int) -> None:
        """An audio packet from the twin (network thread): handed on without waiting."""
        if self.receiving and not _send(self.sock, PACKET + now_ns.to_bytes(_ARRIVAL, "little") + bytes(pkt)):
            self.counters["packets_dropped_in"] += 1

    def rate_bps(self) -> int:
        """What audio sends, bit/s (at the redundancy the twin's reported loss asks for)."""
        return audio_rate_bps(
            self.settings, redundancy_for(self.settings.redundancy, self.transport.loss.loss)
        )

    @property
    def muted(self) -> bool:
        """Send silence instead of the microphone (privacy; any thread sets it)."""
        return self._muted

    @muted.setter
    def muted(self, on: bool) -> None:
        self._muted = on
        if not _send(self.sock, _json({"op": "mute", "on": on})):
            log.error("audio: could not tell the audio process to %s", "mute" if on else "unmute")

    def hold(self, on: bool, seconds: float = 60.0) -> bool:
        """:meth:`AudioEngine.hold <app.engine.audio.AudioEngine.hold>`, in the audio process."""
        return bool(self._request("hold", on=on, seconds=seconds)["held"])

    def apply_calibration(self, settings: AudioSettings) -> None:
        """Use a new calibration's delay and gains from now on."""
        self.settings = settings
        _send(self.sock, _json({"op": "calibration", "audio": settings.model_dump(mode="json")}))

    def stats(self) -> dict[str, Any]:
        """The audio engine's statistics (its last, once stopped), with this link's own counters."""
        if self._final_stats is not None:
            out = dict(self._final_stats)
        else:
            try:
                out = self._request("stats", timeout_s=2.0)
            except (AudioDeviceError, CodecError) as exc:
                out = {"device": self.device_name, "error": str(exc)}
        out["process"] = {"pid": self.proc.pid, **self.counters}
        return out

    def _request(self, op: str, *, timeout_s: float = REQUEST_TIMEOUT_S, **args: Any) -> dict[str, Any]:
        rid = next(self._ids)
        reply = _Reply()
        with self._pending_lock:
            self._pending[rid] = reply
        try:
            if not _send(self.sock, _json({"op": op, "id": rid, **args})):
                raise AudioProcessError(f"the audio process is not reading ({op})")
            if not reply.done.wait(timeout_s):
                raise AudioProcessError(f"the audio process did not answer {op!r} within {timeout_s:.0f} s")
        finally:
            with self._pending_lock:
                self._pending.pop(rid, None)
        msg = reply.message
        if msg is None:
            raise AudioProcessError(f"the audio process exited before answering {op!r}")
        if "error" in msg:
            raise _error(msg)
        result = msg.get("result")
        return result if isinstance(result, dict) else {}

    # -- audio-relay thread ------------------------------------------------------------------------------

    def _relay_loop(self) -> None:
        make_realtime("audio-relay")
        while True:
            self._serve(self.sock)
            with self._pending_lock:
                for reply in self._pending.values():
                    reply.done.set()
            if self._stopping.is_set() or not self._restart():
                return

    def _serve(self, sock: socket.socket) -> None:
        """Relay one audio process's messages until its socket closes."""
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        next_state = 0.0
        while True:
            now = time.monotonic()
            if now >= next_state:
                next_state = now + STATE_INTERVAL_S
                self._push_state(sock)
            if not poller.poll(max(0.0, next_state - now) * 1000):
                continue
            try:
                data = sock.recv(MAX_MESSAGE)
            except OSError:
                data = b""
            if not data:
                return
            try:
                self._on_message(data)
            except (ProtocolError, ValueError, KeyError, TypeError) as exc:
                self.counters["bad_messages"] += 1
                log.warning("audio: a bad message from the audio process (%s)", exc)
            except Exception:  # a bug here must not silence audio for the rest of the call
                self.counters["bad_messages"] += 1
                log.exception("audio: relaying a message from the audio process failed")

    def _restart(self) -> bool:
        """The audio process died under us: start another, waiting longer after each failure, until one
        runs (True) or the engine stops (False)."""
        status = _reap(self.proc)
        self.sock.close()
        self.counters["restarts"] += 1
        log.error("audio: the audio process exited (status %d); starting it again (video goes on)", status)
        for delay in itertools.chain(RESTART_DELAYS_S, itertools.repeat(RESTART_DELAYS_S[-1])):
            if self._stopping.wait(delay):
                return False
            try:
                sock, proc = self._spawn(start=True)
            except (AudioDeviceError, CodecError, ValueError) as exc:  # ValueError: a garbled answer
                log.error("audio: the audio process could not start again: %s", exc)
                continue
            if self._stopping.is_set():
                _kill(sock, proc)
                return False
            self.sock, self.proc = sock, proc
            log.info("audio: running again in process %d", proc.pid)
            return True
        return False

    def _push_state(self, sock: socket.socket) -> None:
        age = self._video_age_ms() if self._video_age_ms is not None else None
        _send(sock, _json({"op": "state", "loss": self.transport.loss.loss, "video_age_ms": age}))

    def _on_message(self, data: bytes) -> None:
        kind = data[:1]
        if kind == SEND:
            pkt = AudioPacket.parse(memoryview(data)[1:])
            pkt.seq = self.transport.next_seq()
            self.transport.send(pkt, media=True)
            return
        if kind != JSON:
            raise ValueError(f"unknown message kind {kind!r}")
        msg = json.loads(data[1:])
        op = msg["op"]
        if op == "reply":
            with self._pending_lock:
                reply = self._pending.get(int(msg["id"]))
            if reply is not None:
                reply.message = msg
                reply.done.set()
        elif op == "hold_video":
            if self._hold_video is not None:
                self._hold_video(float(msg["ms"]))
        elif op == "error":
            log.error("audio: %s failed in the audio process: %s", msg["name"], msg["error"])
        else:
            raise ValueError(f"unknown op {op!r}")


# -- audio process ---------------------------------------------------------------------------------------


class _Loss:
    """The twin's reported loss, as the engine last pushed it."""

    def __init__(self) -> None:
        self.loss = 0.0


class _SocketUplink:
    """:class:`~app.engine.audio.AudioUplink` through the socket: the engine numbers and sends the packets."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loss = _Loss()
        self.dropped = 0

    def next_seq(self) -> int:
        return 0  # the engine's transport gives each packet its number as it sends it

    def send(self, pkt: AudioPacket, *, media: bool = False) -> int:
        data = SEND + bytes(pkt)
        if not _send(self.sock, data):
            self.dropped += 1
        return len(data)


class _Child:
    """The audio process's side: serves the socket on its main thread."""

    def __init__(self, sock: socket.socket, init: dict[str, Any]) -> None:
        from app.audio.device import open_configured
        from app.engine.audio import AudioEngine

        self.sock = sock
        self.uplink = _SocketUplink(sock)
        self.video_age_ms: float | None = None
        self.record = None if init.get("record") is None else Path(str(init["record"]))
        self.bad_packets = 0
        self.bad_messages = 0
        self.failed = False
        self.gc = GcPauses()
        """Installed once the start-up objects are frozen (:func:`main`): collections while running."""
        settings = AudioSettings.model_validate(init["audio"])
        device = open_configured(settings, RoomConfig(**init["room"]))
        self.engine = AudioEngine(
            settings,
            device,
            self.uplink,
            sending=bool(init["sending"]),
            receiving=bool(init["receiving"]),
            on_error=self._thread_failed,
            video_age_ms=lambda: self.video_age_ms,
            hold_video=self._hold_video,
        )
        self.engine.muted = bool(init.get("muted", False))
        self.tap: BenchAudioTap | None = None
        if self.record is not None:
            from app.bench.audio_tap import BenchAudioTap

            self.tap = BenchAudioTap.attach(self.engine)

    def _hold_video(self, ms: float) -> None:
        _send(self.sock, _json({"op": "hold_video", "ms": ms}))

    def _thread_failed(self, name: str, exc: BaseException) -> None:
        """An audio thread died (its own thread): tell the engine, and end this process so that the engine
        starts a fresh one — the engine process does not go down with it."""
        self.failed = True
        _send(self.sock, _json({"op": "error", "name": name, "error": f"{type(exc).__name__}: {exc}"}))
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def serve(self) -> int:
        make_realtime("audio-socket")
        engine = self.engine
        while True:
            try:
                data = self.sock.recv(MAX_MESSAGE)
            except OSError:
                data = b""
            if not data:
                if not self.failed:
                    log.info("audio: the engine closed the socket; stopping")
                engine.stop()
                return 1 if self.failed else 0
            kind = data[:1]
            if kind == PACKET:
                try:
                    pkt = AudioPacket.parse(memoryview(data)[1 + _ARRIVAL :])
                except ProtocolError:
                    self.bad_packets += 1
                    continue
                engine.on_packet(pkt, int.from_bytes(data[1 : 1 + _ARRIVAL], "little"))
            elif kind == JSON:
                try:
                    msg = json.loads(data[1:])
                    if self._on_json(msg):
                        return 0
                except (ValueError, KeyError, TypeError) as exc:
                    self.bad_messages += 1
                    log.warning("audio: a bad message from the engine (%s)", exc)
            else:
                self.bad_messages += 1

    def _on_json(self, msg: dict[str, Any]) -> bool:
        """Handle one control message; True after ``stop``."""
        op = str(msg["op"])
        engine = self.engine
        if op == "state":
            self.uplink.loss.loss = float(msg["loss"])
            age = msg.get("video_age_ms")
            self.video_age_ms = None if age is None else float(age)
        elif op == "mute":
            engine.muted = bool(msg["on"])
        elif op == "calibration":
            engine.apply_calibration(AudioSettings.model_validate(msg["audio"]))
        elif op in ("start", "stop", "stats", "hold"):
            try:
                result = self._answer(op, msg)
            except (AudioDeviceError, CodecError, OSError, ValueError) as exc:
                reply = {"op": "reply", "id": msg["id"], "error": str(exc), "kind": _error_kind(exc)}
                _send(self.sock, _json(reply))
            else:
                _send(self.sock, _json({"op": "reply", "id": msg["id"], "result": result}))
            return op == "stop"
        else:
            raise ValueError(f"unknown op {op!r}")
        return False

    def _answer(self, op: str, msg: dict[str, Any]) -> dict[str, Any]:
        engine = self.engine
        if op == "start":
            engine.start()
            return {}
        if op == "hold":
            return {"held": engine.hold(bool(msg["on"]), float(msg["seconds"]))}
        if op == "stop":
            engine.stop()
            if self.record is not None and self.tap is not None:
                self.tap.write(self.record)
        return self._stats()

    def _stats(self) -> dict[str, Any]:
        out = self.engine.stats()
        out["gc"] = self.gc.snapshot()
        out["packets_unparsed"] = self.bad_packets
        out["bad_messages"] = self.bad_messages
        out["packets_not_sent"] = self.uplink.dropped
        return out


def _refuse(sock: socket.socket, exc: BaseException) -> int:
    """Tell the engine why this process cannot run; the exit status."""
    from app.logs import stop_logging

    _send(sock, _json({"op": "failed", "kind": _error_kind(exc), "error": str(exc)}))
    stop_logging()
    return 1


def main(argv: list[str] | None = None) -> int:
    """The audio process: ``python -m app.engine.audio_process FD`` (started by :class:`AudioProcess`)."""
    from app.logs import setup_logging, stop_logging

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        sys.stderr.write("usage: python -m app.engine.audio_process FD (started by the engine)\n")
        return 2
    # The engine runs this process and ends it by closing the socket. A terminal's Ctrl-C or systemd's
    # SIGTERM reach the whole process group at once: the engine handles them, and stops this in turn.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=int(args[0]))
    data = sock.recv(MAX_MESSAGE)
    if not data.startswith(JSON):
        return 2
    init = json.loads(data[1:])
    setup_logging(str(init.get("log_level", "info")))
    # As in the engine process: a waiting thread gets the lock within 0.5 ms, not the default 5 ms.
    sys.setswitchinterval(0.0005)
    try:
        child = _Child(sock, init)
    except (AudioDeviceError, CodecError, ValueError, OSError) as exc:
        return _refuse(sock, exc)
    if init.get("start"):
        try:
            child.engine.start()
        except (AudioDeviceError, OSError) as exc:
            child.engine.stop()
            return _refuse(sock, exc)
    frozen = freeze_startup_objects()
    child.gc.install()
    log.debug("audio process: %d start-up objects frozen out of the garbage collector", frozen)
    _send(
        sock, _json({"op": "ready", "device": child.engine.device.name, "period_ms": child.engine.period_ms})
    )
    try:
        return child.serve()
    finally:
        stop_logging()


if __name__ == "__main__":
    raise SystemExit(main())
