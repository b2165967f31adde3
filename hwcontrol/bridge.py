"""The bridge to the room's microcontroller: one serial port, one reliable link, one JSON socket.

``doorway hwcontrol`` runs this as its own process. It finds the MCU (a configured path, or by USB vendor,
product and serial in sysfs), opens it exclusively, says hello (hwcontrol/PROTOCOL.md §5), keeps the
lighting the way it was last asked to be, and passes sensor readings and room events on to whoever
subscribes on its control socket (the engine, the admin panel). When the MCU is missing it says so and
keeps serving everything else.

Theory of operation
-------------------
One **I/O thread** ("hwcontrol-io") owns the port and the :class:`~hwcontrol.protocol.ReliableLink`; other
threads (control-socket clients) hand it commands through a bounded queue and read a snapshot of its state.
The I/O thread moves through four states:

- ``missing``: no device. It waits for a udev "add" event for a tty (or polls the path every 500 ms, udev
  being optional) and opens the port.
- ``connecting``: port open; it sends a flush byte and ``HELLO_REQ`` (a fresh nonce per connection) every
  200 ms until ``HELLO`` comes. A HELLO of another protocol major stops here: **"firmware update required"**,
  naming both versions; HELLO_REQ goes on every 2 s so an updated MCU is noticed.
- ``ready``: the MCU is known. Right after a hello (a new connection, or a new ``session_id``: the MCU
  rebooted) the bridge sends the failsafe setting and every light's last set-point again — they are absolute,
  so repeating them is harmless and nothing set before a reset is lost. A reboot whose unasked HELLO was
  lost shows as the MCU's uptime going backwards, and gets a new hello.
- Back to ``missing`` when the port fails (read or write error, the device node gone: the link counts as
  lost after 1.5 s of silence or 20 retransmissions without progress). The last frames each way (the
  flight recorder) go to the log.

Commands are queued in order and go out as reliable frames, in order, each applied exactly once by the
MCU; while the MCU is missing they only update the set-points that will be sent on the next hello.
Everything here is in ms of ``time.monotonic``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import secrets
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from app.hotplug import DeviceEvent, DeviceMonitor, NullMonitor
from app.settings import HwcontrolSettings
from hwcontrol import protocol as p

log = logging.getLogger(__name__)

HELLO_RETRY_MS = 200
"""HELLO_REQ repeats this often until HELLO comes (§5)."""
REFUSED_RETRY_MS = 2000
"""HELLO_REQ repeats this often to an MCU refused for its version."""
POLL_DEVICE_S = 0.5
"""How often a missing device's path is checked (udev events wake it sooner)."""
COMMAND_QUEUE = 256
"""Commands waiting for the I/O thread; more and :class:`BridgeBusyError` is raised."""
RECORDER_FRAMES = 32
"""Frames kept per direction in the flight recorder."""
SUBSCRIBER_QUEUE = 64
"""Events kept per subscriber that has not read them; older ones are dropped (and counted)."""


class BridgeBusyError(Exception):
    """Too many commands are waiting: the MCU is slow or the link is bad. Try again."""


class Port(Protocol):
    """The serial port, as the bridge uses it (non-blocking)."""

    def fileno(self) -> int: ...
    def read(self, size: int) -> bytes: ...
    def write(self, data: bytes) -> int | None: ...
    def close(self) -> None: ...


def open_serial(path: str, baud: int) -> Port:
    """Open ``path`` with pyserial: exclusive (no second program may share the MCU), non-blocking."""
    import serial

    port: Port = serial.Serial(path, baud, timeout=0, write_timeout=1.0, exclusive=True)
    return port


def find_device(settings: HwcontrolSettings, sysfs: Path = Path("/sys/class/tty")) -> str | None:
    """The MCU's device node: the configured path if it exists, else the first tty whose USB device has the
    configured vendor, product (and serial) in sysfs; None when there is none."""
    if settings.device is not None:
        return settings.device if os.path.exists(settings.device) else None
    try:
        entries = sorted(sysfs.iterdir())
    except OSError:
        return None
    for tty in entries:
        if not tty.name.startswith(("ttyACM", "ttyUSB")):
            continue
        usb = _usb_parent(tty / "device")
        if usb is None:
            continue
        if _read(usb / "idVendor") != settings.usb_vid or _read(usb / "idProduct") != settings.usb_pid:
            continue
        if settings.usb_serial is not None and _read(usb / "serial") != settings.usb_serial:
            continue
        node = f"/dev/{tty.name}"
        if os.path.exists(node):
            return node
    return None


def _usb_parent(device: Path) -> Path | None:
    """The USB device directory above a tty's interface in sysfs (the one holding ``idVendor``)."""
    try:
        current = device.resolve()
    except OSError:
        return None
    for _ in range(4):
        if (current / "idVendor").exists():
            return current
        current = current.parent
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip().lower()
    except OSError:
        return None


@dataclass
class McuInfo:
    """What the MCU's HELLO said."""

    protocol: str
    firmware: str
    build: int
    hw_rev: int
    unique_id: str
    capabilities: list[str]
    boot_reason: str
    session_id: int
    channels: int


class _Subscriber:
    def __init__(self) -> None:
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue(SUBSCRIBER_QUEUE)
        self.dropped = 0


class Bridge:
    """The MCU bridge (see the module docstring). ``start`` / ``stop`` from the main thread; the public
    methods from any thread."""

    def __init__(
        self,
        settings: HwcontrolSettings,
        *,
        monitor: DeviceMonitor | None = None,
        opener: Callable[[str, int], Port] = open_serial,
        find: Callable[[HwcontrolSettings], str | None] = find_device,
        startup_light: p.SetLight | None = None,
    ) -> None:
        """``startup_light``: the set-point the lights take when the bridge first meets the MCU instead of
        ``settings.startup_scene`` (the stored lighting calibration, see :mod:`hwcontrol.service`)."""
        self.settings = settings
        self._monitor = monitor if monitor is not None else NullMonitor()
        self._opener = opener
        self._find = find
        self._commands: queue.Queue[p.Message] = queue.Queue(COMMAND_QUEUE)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._subscribers: list[_Subscriber] = []
        # State (written by the I/O thread; read under the lock).
        self.state = "missing"
        self.device: str | None = None
        self.mcu: McuInfo | None = None
        self.refusal: str | None = None
        self.sensors: p.Sensors | None = None
        self._sensors_at = 0.0
        self._lights: dict[int, p.SetLight] = {}
        self._scene: p.SetScene | None = p.SetScene(p.Scene(settings.startup_scene), 0)
        if startup_light is not None:
            self._remember(startup_light)
        self._sessions = p.SessionWatch()
        self._link = p.ReliableLink(self._now())
        self._tx_log: deque[tuple[int, str]] = deque(maxlen=RECORDER_FRAMES)
        self._rx_log: deque[tuple[int, str]] = deque(maxlen=RECORDER_FRAMES)
        self.counters: dict[str, int] = {
            "bytes_rx": 0,
            "bytes_tx": 0,
            "connects": 0,
            "reconnects": 0,
            "lost": 0,
            "reboots": 0,
            "failsafes": 0,
            "commands": 0,
            "errors_from_mcu": 0,
            "events": 0,
            "refused": 0,
        }
        self._connected_once = False
        self._last_boot_reason: str | None = None

    # -- life cycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        self._monitor.start(self._on_device_event)
        self._thread = threading.Thread(target=self._run, name="hwcontrol-io", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        self._monitor.stop()
        if self._thread is not None:
            self._thread.join(5.0)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _on_device_event(self, event: DeviceEvent) -> None:
        # udev's thread: just wake the I/O thread, which looks for the device itself.
        if event.subsystem in ("tty", ""):
            self._wake()

    @staticmethod
    def _now() -> int:
        return int(time.monotonic() * 1000)

    # -- commands (any thread) ---------------------------------------------------------------------------

    def set_light(self, light: p.SetLight) -> None:
        """Queue a set-point (absolute; for one channel or :data:`~hwcontrol.protocol.ALL_CHANNELS`)."""
        self._queue(light)

    def set_scene(self, scene: p.SetScene) -> None:
        self._queue(scene)

    def enter_bootloader(self) -> None:
        """Ask the MCU to reboot into its bootloader (for a firmware update), authenticated with the key."""
        key_file = self.settings.bootloader_key_file
        if key_file is None:
            raise PermissionError("no hwcontrol.bootloader_key_file: entering the bootloader is not allowed")
        key = bytes.fromhex(key_file.read_text().strip())
        with self._lock:
            mcu = self.mcu
        if mcu is None or self.state != "ready":
            raise BridgeBusyError("the MCU is not connected")
        self._queue(p.EnterBootloader.signed(key, mcu.session_id, secrets.randbits(32)))

    def _queue(self, message: p.Message) -> None:
        try:
            self._commands.put_nowait(message)
        except queue.Full:
            raise BridgeBusyError(f"{COMMAND_QUEUE} commands are waiting for the MCU") from None
        self._wake()

    # -- reading (any thread) ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self._lock:
            link = self._link
            mcu = self.mcu
            return {
                "state": self.state,
                "message": self._state_message(),
                "device": self.device,
                "mcu": None if mcu is None else mcu.__dict__.copy(),
                "last_boot_reason": self._last_boot_reason,
                "lights": {str(ch): _light_dict(sp) for ch, sp in sorted(self._lights.items())},
                "scene": None if self._scene is None else self._scene.scene,
                "counters": {
                    **self.counters,
                    "frames_rx": link.frames_received,
                    "frames_tx": link.frames_sent,
                    "retransmits": link.retransmits,
                    "duplicates": link.duplicates,
                    "out_of_order": link.out_of_order,
                    "invalid_frames": link.decoder.invalid_total,
                    "queued": self._commands.qsize() + link.queued + link.unacked,
                },
                "rtt_ms": None if link.rtt_ms is None else round(link.rtt_ms, 2),
            }

    def _state_message(self) -> str:
        if self.state == "missing":
            return "MCU missing: no device found" if self.device is None else f"MCU missing: {self.device}"
        if self.state == "refused":
            return self.refusal or "firmware update required"
        if self.state == "connecting":
            return f"connecting to {self.device}"
        return "ready"

    def sensor_readings(self) -> dict[str, Any] | None:
        """The latest SENSORS report in physical units, with its age; None before the first."""
        with self._lock:
            s = self.sensors
            age = time.monotonic() - self._sensors_at
        if s is None:
            return None
        valid = s.valid
        return {
            "age_s": round(age, 2),
            "lux": s.lux_centi / 100 if valid & p.SensorValid.LUX else None,
            "temperature_c": s.temp_centi / 100 if valid & p.SensorValid.TEMPERATURE else None,
            "humidity_percent": s.humidity_centi / 100 if valid & p.SensorValid.HUMIDITY else None,
            "presence": bool(s.presence) if valid & p.SensorValid.PRESENCE else None,
            "mcu_uptime_ms": s.uptime_ms,
        }

    def subscribe(self) -> tuple[Iterator[dict[str, Any]], Callable[[], None]]:
        """Room events as they come (``{"event": kind, "value": v, ...}``), and a keepalive every 10 s;
        and the function that ends the subscription."""
        sub = _Subscriber()
        with self._lock:
            self._subscribers.append(sub)

        def events() -> Iterator[dict[str, Any]]:
            while not self._stop.is_set():
                try:
                    yield sub.queue.get(timeout=10.0)
                except queue.Empty:
                    yield {"event": "keepalive"}

        def close() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._subscribers.remove(sub)

        return events(), close

    def _publish(self, item: dict[str, Any]) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for sub in subscribers:
            while True:
                try:
                    sub.queue.put_nowait(item)
                    break
                except queue.Full:
                    with contextlib.suppress(queue.Empty):
                        sub.queue.get_nowait()
                        sub.dropped += 1

    # -- the I/O thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            device = self._find(self.settings)
            if device is None:
                self._set_state("missing", None)
                self._absorb_commands()
                self._sleep(POLL_DEVICE_S)
                continue
            try:
                port = self._opener(device, self.settings.baud)
            except (OSError, ValueError) as exc:
                # Busy (another program has it exclusively), vanished, or permissions.
                log.warning("hwcontrol: cannot open %s: %s", device, exc)
                self._set_state("missing", device)
                self._sleep(POLL_DEVICE_S)
                continue
            self.counters["connects"] += 1
            if self._connected_once:
                self.counters["reconnects"] += 1
            self._connected_once = True
            try:
                self._serve(port, device)
            finally:
                with contextlib.suppress(OSError):
                    port.close()

    def _sleep(self, seconds: float) -> None:
        ready, _, _ = select.select([self._wake_r], [], [], seconds)
        if ready:
            self._drain_wake()

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 64):
                pass

    def _absorb_commands(self) -> None:
        """Without an MCU, commands only update the set-points sent at the next hello."""
        while True:
            try:
                message = self._commands.get_nowait()
            except queue.Empty:
                return
            self._remember(message)

    def _remember(self, message: p.Message) -> None:
        if isinstance(message, p.SetLight):
            if message.channel == p.ALL_CHANNELS:
                self._lights = {p.ALL_CHANNELS: message}
            else:
                self._lights[message.channel] = message
            self._scene = None
        elif isinstance(message, p.SetScene):
            self._scene = message
            self._lights = {}

    def _set_state(self, state: str, device: str | None) -> None:
        with self._lock:
            changed = state != self.state
            self.state = state
            self.device = device
        if changed:
            log.info("hwcontrol: %s", self._state_message())
            self._publish({"event": "state", "state": state, "message": self._state_message()})

    def _serve(self, port: Port, device: str) -> None:
        """Talk to the MCU on ``port`` until it goes away or we stop."""
        now = self._now()
        nonce = secrets.randbits(32)
        with self._lock:
            self._link.reset(now)
        self._set_state("connecting", device)
        hello_due = now
        last_uptime: int | None = None
        fd = port.fileno()
        try:
            self._write(port, b"\x00")
            while not self._stop.is_set():
                now = self._now()
                link = self._link
                state = self.state
                if state in ("connecting", "refused") and now >= hello_due:
                    hello_due = now + (REFUSED_RETRY_MS if state == "refused" else HELLO_RETRY_MS)
                    self._write(port, p.Frame(p.MessageType.HELLO_REQ, p.HelloReq(nonce).encode()).to_wire())
                if state == "ready":
                    self._send_commands()
                    if link.lost:
                        self._lose(f"link lost: {link.lost_reason}")
                        return
                for data in link.poll(now) if state == "ready" else []:
                    self._write(port, data, record=True)
                timeout_ms = max(0, min(link.next_poll_ms() - now, 100)) if state == "ready" else 50
                ready, _, _ = select.select([fd, self._wake_r], [], [], timeout_ms / 1000)
                if self._wake_r in ready:
                    self._drain_wake()
                if fd not in ready:
                    if not os.path.exists(device):
                        self._lose("the device is gone")
                        return
                    continue
                data = port.read(4096)
                if not data:
                    # A tty that reports readable and gives nothing has hung up.
                    self._lose("the device hung up")
                    return
                self.counters["bytes_rx"] += len(data)
                for frame in link.decoder.feed(data):
                    self._rx_log.append((self._now(), frame.encode().hex()))
                    if frame.type == p.MessageType.HELLO:
                        nonce, last_uptime = self._on_hello(frame, nonce, port)
                        continue
                    if self.state != "ready":
                        continue
                    for item in link.receive(frame, self._now()):
                        last_uptime = self._on_message(item, last_uptime, port)
                        if last_uptime == -1:
                            # The MCU rebooted without our noticing its HELLO: hello again.
                            nonce = secrets.randbits(32)
                            self._set_state("connecting", device)
                            hello_due = 0
                            last_uptime = None
        except OSError as exc:
            self._lose(f"I/O error: {exc}")

    def _write(self, port: Port, data: bytes, *, record: bool = False) -> None:
        port.write(data)
        self.counters["bytes_tx"] += len(data)
        if record:
            self._tx_log.append((self._now(), data.hex()))

    def _send_commands(self) -> None:
        link = self._link
        while link.queued + link.unacked < 32:
            try:
                message = self._commands.get_nowait()
            except queue.Empty:
                return
            self._remember(message)
            link.send(message)
            self.counters["commands"] += 1

    def _on_hello(self, frame: p.Frame, nonce: int, port: Port) -> tuple[int, int | None]:
        try:
            hello = p.decode_message(frame)
        except p.ProtocolError as exc:
            log.warning("hwcontrol: bad HELLO: %s", exc)
            return nonce, None
        assert isinstance(hello, p.Hello | p.ForeignHello)
        refusal = p.check_version(hello)
        if refusal is not None:
            if self.state != "refused":
                self.counters["refused"] += 1
                log.error("hwcontrol: %s", refusal)
                self._dump("refused the MCU")
            with self._lock:
                self.refusal = refusal
            self._set_state("refused", self.device)
            return nonce, None
        assert isinstance(hello, p.Hello)
        change = self._sessions.observe(hello)
        boot = _boot_reason(hello.boot_reason)
        with self._lock:
            self.refusal = None
            self.mcu = McuInfo(
                protocol=f"{hello.major}.{hello.minor}",
                firmware=hello.firmware_version,
                build=hello.build,
                hw_rev=hello.hw_rev,
                unique_id=hello.unique_id.hex(),
                capabilities=[c.name or str(c) for c in p.Capability if c in hello.capabilities],
                boot_reason=boot,
                session_id=hello.session_id,
                channels=hello.channels,
            )
            self._last_boot_reason = boot
        if change is p.SessionChange.REBOOTED:
            self.counters["reboots"] += 1
            log.warning("hwcontrol: the MCU rebooted (%s)", boot)
            self._publish({"event": "mcu_rebooted", "boot_reason": boot})
        if self.state == "ready" and change is not p.SessionChange.REBOOTED:
            return nonce, None  # an answer to a repeated HELLO_REQ
        # A new session on both sides: sequence numbers from 0, then the whole state again.
        with self._lock:
            self._link.reset(self._now())
        if change is p.SessionChange.REBOOTED and self.state == "ready":
            # It rebooted under us: its reliable state is fresh; start ours over with a new HELLO_REQ too.
            nonce = secrets.randbits(32)
            self._write(port, p.Frame(p.MessageType.HELLO_REQ, p.HelloReq(nonce).encode()).to_wire())
        self._resend_state()
        self._set_state("ready", self.device)
        return nonce, None

    def _resend_state(self) -> None:
        link = self._link
        link.send(p.SetFailsafe(self.settings.failsafe_ms, p.Scene(self.settings.failsafe_scene)))
        if self._scene is not None:
            link.send(self._scene)
        for light in self._lights.values():
            link.send(light)

    def _on_message(self, item: p.Incoming, last_uptime: int | None, port: Port) -> int | None:
        if isinstance(item, p.Undecodable):
            log.warning("hwcontrol: undecodable message type %d from the MCU: %s", item.type, item.reason)
            return last_uptime
        if isinstance(item, p.Sensors):
            if last_uptime is not None and item.uptime_ms + 1000 < last_uptime:
                return -1
            with self._lock:
                self.sensors = item
                self._sensors_at = time.monotonic()
            self._publish({"event": "sensors", **(self.sensor_readings() or {})})
            return item.uptime_ms
        if isinstance(item, p.Event):
            self.counters["events"] += 1
            if item.kind == p.EventKind.FAILSAFE_ENTERED:
                self.counters["failsafes"] += 1
            # The MCU keeps events while no host is connected and sends them later: say how old one is, so a
            # button pressed long ago is not taken for a press now.
            now_uptime = self._link.peer_uptime_ms
            age_ms = None if now_uptime is None else max(0, now_uptime - item.uptime_ms)
            self._publish(
                {
                    "event": item.kind.name.lower(),
                    "value": item.value,
                    "mcu_uptime_ms": item.uptime_ms,
                    "age_ms": age_ms,
                }
            )
            return last_uptime
        if isinstance(item, p.ErrorReport):
            self.counters["errors_from_mcu"] += 1
            log.warning("hwcontrol: the MCU refused a command: %s", item)
            self._publish({"event": "mcu_error", "code": int(item.code), "type": item.ref_type})
            return last_uptime
        if isinstance(item, p.LightState):
            self._publish({"event": "light_state", "channels": len(item.channels)})
            return last_uptime
        return last_uptime

    def _lose(self, why: str) -> None:
        self.counters["lost"] += 1
        log.warning("hwcontrol: %s; reconnecting", why)
        self._dump(why)
        self._set_state("missing", self.device)

    def _dump(self, why: str) -> None:
        """The flight recorder: the last frames each way, to the log."""
        lines = [f"hwcontrol flight recorder ({why}), newest last:"]
        merged = sorted([(t, "tx", h) for t, h in self._tx_log] + [(t, "rx", h) for t, h in self._rx_log])
        lines += [f"  {t} ms {d} {h}" for t, d, h in merged]
        log.warning("\n".join(lines))

    @property
    def flight_recorder(self) -> list[tuple[int, str, str]]:
        merged = sorted([(t, "tx", h) for t, h in self._tx_log] + [(t, "rx", h) for t, h in self._rx_log])
        return merged


def _light_dict(light: p.SetLight) -> dict[str, Any]:
    return {
        "brightness": light.brightness,
        "cct_k": light.cct_k,
        "rgb": [light.r, light.g, light.b],
        "fade_ms": light.fade_ms,
    }


def _boot_reason(code: int) -> str:
    try:
        return p.BootReason(code).name.lower()
    except ValueError:
        return f"unknown ({code})"
