"""``doorway mcu-emulator``: the room controller's firmware on a pseudo-terminal, with injected faults.

The firmware's own protocol core (``hwcontrol/firmware/protocol_core.py``, the file that runs on the Pico)
runs here under CPython against :class:`SimulatedRoom`, a simulated board: light channels, a room light
level and temperature and humidity that drift, presence, a privacy button that can be pressed and a switch.
It talks over a pseudo-terminal, so the host bridge opens it like the real USB serial port; ``--link PATH``
keeps a symlink to the current terminal, re-pointed on every re-plug, the way ``/dev/serial/by-id/`` does.
Between the terminal and the core, each direction has its own seeded :class:`FaultPipe` that drops,
corrupts, duplicates, reorders, truncates, delays frames and inserts garbage between them.

Control at run time, from the Python API (:class:`Emulator`) or from another process through the control
socket (``--control PATH``, a Unix stream socket; one JSON object per line each way)::

    {"cmd": "status"}                         → {"ok": true, "path": ..., "session_id": ..., "stats": ...}
    {"cmd": "reset"}                          reboot the MCU (new session id, boot reason "software")
    {"cmd": "unplug"}                         the terminal and the link vanish; the MCU runs on
    {"cmd": "replug", "power_cycle": false}   a new terminal, the link re-pointed; power_cycle: a cold boot
    {"cmd": "press"}                          press the privacy button for 100 ms
    {"cmd": "presence", "on": true}           someone in the room (or not)
    {"cmd": "switch", "on": true}             the privacy switch
    {"cmd": "faults", "direction": "both", "drop": 0.1, ...}   change fault settings (any subset)

Every answer is ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. The terminal's path is printed
on stdout, alone on a line, each time a terminal is made (at start and at every re-plug).

Theory of operation
-------------------
One thread (``mcu-emulator``) plays the MCU's main loop: it waits in ``select`` on the terminal's master
side, the control socket and a wake-up pipe for at most ``poll_ms`` (or until the next delayed frame is due),
pushes what the host wrote through the to-MCU pipe, feeds what comes out to the core, polls the core with
the current ``ticks_ms`` (monotonic ms, wrapped at 2**30 as on the Pico), and pushes the core's output
through the to-host pipe into the terminal. The fault pipes work on whole frames (cut at each ``0x00``), so
"drop" loses a frame, not a random byte, and a seeded run is repeatable for the same input. API calls from
other threads are queued to the loop thread and waited for, so the core and the board are only ever touched
by that one thread. "Unplug" closes the terminal (the host's reads and writes fail with EIO) and removes
the link; the emulated MCU keeps running, as a board powered from its LED supply does, so it goes into
failsafe after its timeout. "Reset" keeps the terminal: it is a silent reboot the host can only notice from
the new ``session_id`` in HELLO. An accepted ENTER_BOOTLOADER unplugs, and a second later re-plugs a freshly
booted MCU whose boot reason is "after bootloader". Only the host holds the terminal's slave side open: while
nobody does, the master side reports a hang-up, and the emulated MCU's output is dropped and counted, as
MicroPython drops USB output while no host has the port open (DTR low). So a host that opens the port gets
nothing stale, only what the MCU sends from then on (the MCU's boot HELLO included only if it was there).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import queue
import random
import select
import signal
import socket
import sys
import threading
import time
import tty
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from types import FrameType
from typing import Any, Final, TypeVar

from hwcontrol.firmware import protocol_core as pc

log = logging.getLogger(__name__)

T = TypeVar("T")

# A frame held back for reordering goes out after the next frame, or after this long if none comes.
REORDER_HOLD_MS: Final = 20
# Bytes without a delimiter after which the pipe treats them as one frame (noise must not pile up).
MAX_PARTIAL: Final = 1024
GARBAGE_MAX_BYTES: Final = 32
PRESS_MS: Final = 100
# How long the emulated bootloader keeps the device away before the freshly "flashed" MCU re-appears.
BOOTLOADER_AWAY_MS: Final = 1000
POLL_MS: Final = 2.0
CALL_TIMEOUT_S: Final = 5.0
READ_SIZE: Final = 4096
APPLIED_LOG: Final = 10_000
CAPABILITIES: Final = (
    pc.CAP_PWM
    | pc.CAP_RGB
    | pc.CAP_LIGHT_SENSOR
    | pc.CAP_TEMPERATURE
    | pc.CAP_HUMIDITY
    | pc.CAP_PRESENCE
    | pc.CAP_BUTTON
    | pc.CAP_SWITCH
)
EXIT_USAGE: Final = 2


def _now_ms() -> float:
    return time.monotonic() * 1000.0


@dataclass(frozen=True)
class FaultSettings:
    """One direction's faults. Each probability (0–1) is drawn per frame, in this order."""

    stall: float = 0.0
    """Probability that the link stops for ``stall_ms`` (this frame and all behind it wait, in order)."""
    stall_ms: int = 200
    """Length of a stall, ms."""
    drop: float = 0.0
    """Probability that a frame is lost."""
    truncate: float = 0.0
    """Probability that a frame loses a random number of its last bytes (its delimiter stays)."""
    bitflip: float = 0.0
    """Probability that one random bit of a frame is flipped (a delimiter may appear or vanish)."""
    garbage: float = 0.0
    """Probability of 1–32 random bytes before a frame (line noise between frames)."""
    duplicate: float = 0.0
    """Probability that a frame is sent twice."""
    reorder: float = 0.0
    """Probability that a frame is held back and sent after the next one (or after 20 ms)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "stall_ms":
                if not 0 <= value <= 60_000:
                    raise ValueError(f"stall_ms {value} is out of range 0..60000")
            elif not 0.0 <= value <= 1.0:
                raise ValueError(f"{f.name} probability {value} is out of range 0..1")

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self) if f.name != "stall_ms")


class FaultPipe:
    """One direction between the terminal and the core: cuts bytes into frames and impairs them.

    Not thread-safe: used by the emulator's loop thread only. Times are ms (floats, monotonic).
    """

    def __init__(self, settings: FaultSettings, seed: int) -> None:
        self.settings = settings
        self._rng = random.Random(seed)
        self._partial = bytearray()
        self._queue: deque[tuple[float, bytes]] = deque()
        self._held: tuple[float, bytes] | None = None
        self._stall_until = 0.0
        self.counters = dict.fromkeys(
            ("frames", "dropped", "truncated", "bitflips", "garbage", "duplicated", "reordered", "stalls"), 0
        )

    def push(self, data: bytes, now: float) -> None:
        """Bytes entering the pipe at ``now``."""
        self._partial += data
        while True:
            end = self._partial.find(0)
            if end < 0:
                break
            frame = bytes(self._partial[: end + 1])
            del self._partial[: end + 1]
            self._frame(frame, now)
        if len(self._partial) > MAX_PARTIAL:
            frame = bytes(self._partial)
            self._partial.clear()
            self._frame(frame, now)

    def _frame(self, frame: bytes, now: float) -> None:
        s = self.settings
        rng = self._rng
        self.counters["frames"] += 1
        if s.stall and rng.random() < s.stall:
            self._stall_until = max(self._stall_until, now + s.stall_ms)
            self.counters["stalls"] += 1
        release = max(now, self._stall_until)
        if s.drop and rng.random() < s.drop:
            self.counters["dropped"] += 1
            return
        body = bytearray(frame)
        if s.truncate and len(body) > 2 and rng.random() < s.truncate:
            cut = rng.randrange(1, len(body) - 1)
            del body[len(body) - 1 - cut : len(body) - 1]
            self.counters["truncated"] += 1
        if s.bitflip and rng.random() < s.bitflip:
            body[rng.randrange(len(body))] ^= 1 << rng.randrange(8)
            self.counters["bitflips"] += 1
        if s.garbage and rng.random() < s.garbage:
            body[0:0] = rng.randbytes(rng.randint(1, GARBAGE_MAX_BYTES))
            self.counters["garbage"] += 1
        out = bytes(body)
        if s.duplicate and rng.random() < s.duplicate:
            out += bytes(body)
            self.counters["duplicated"] += 1
        if s.reorder and self._held is None and rng.random() < s.reorder:
            self._held = (now + REORDER_HOLD_MS, out)
            self.counters["reordered"] += 1
            return
        self._queue.append((release, out))
        if self._held is not None:
            self._queue.append((release, self._held[1]))
            self._held = None

    def pop_due(self, now: float) -> bytes:
        """Everything due by ``now``, in order (empty if nothing)."""
        if self._held is not None and self._held[0] <= now:
            self._queue.append((max(now, self._stall_until), self._held[1]))
            self._held = None
        out = bytearray()
        while self._queue and self._queue[0][0] <= now:
            out += self._queue.popleft()[1]
        return bytes(out)

    def next_due(self) -> float | None:
        """When :meth:`pop_due` next has something, ms; None when empty."""
        times = []
        if self._queue:
            times.append(self._queue[0][0])
        if self._held is not None:
            times.append(self._held[0])
        return min(times) if times else None

    def clear(self) -> None:
        """Forget everything in flight (the cable was pulled)."""
        self._partial.clear()
        self._queue.clear()
        self._held = None


class SimulatedRoom(pc.Hardware):
    """The emulated board: lights that remember what they were set to, sensors that drift, inputs the
    emulator drives. Seeded; touched only by the emulator's loop thread."""

    def __init__(self, seed: int, channels: int, key: bytes | None, clock: Callable[[], float]) -> None:
        self.channels = channels
        self.capabilities = CAPABILITIES
        self.hw_rev = 1
        self._rng = random.Random(seed)
        self._clock = clock
        self._key = key
        self._uid = random.Random(f"uid-{seed}").randbytes(8)
        self.reason = pc.BOOT_POWER_ON
        self.levels = [[0, pc.DEFAULT_CCT_K, 0, 0, 0] for _ in range(channels)]
        self.ambient_lux = 120.0
        self.temp_c = 21.5
        self.humidity = 45.0
        self.present = False
        self.switch_on = False
        self.press_until = 0.0
        self.on_bootloader: Callable[[], None] = lambda: None
        self.on_reset: Callable[[], None] = lambda: None

    def set_channel(self, index: int, brightness: int, cct_k: int, r: int, g: int, b: int) -> None:
        self.levels[index] = [brightness, cct_k, r, g, b]

    def read_lux_centi(self) -> int | None:
        # Daylight wanders; the room's own lights add to it (about 0.3 lux per ‰ per channel at the sensor).
        self.ambient_lux = min(max(self.ambient_lux + self._rng.gauss(0, 0.5), 5.0), 800.0)
        own = sum(level[0] for level in self.levels) * 0.3
        return round((self.ambient_lux + own) * 100)

    def read_temp_centi(self) -> int | None:
        self.temp_c = min(max(self.temp_c + self._rng.gauss(0, 0.005), 17.0), 27.0)
        return round(self.temp_c * 100)

    def read_humidity_centi(self) -> int | None:
        self.humidity = min(max(self.humidity + self._rng.gauss(0, 0.02), 20.0), 80.0)
        return round(self.humidity * 100)

    def motion(self) -> bool:
        return self.present

    def button(self) -> bool:
        return self._clock() < self.press_until

    def switch(self) -> bool:
        return self.switch_on

    def unique_id(self) -> bytes:
        return self._uid

    def boot_reason(self) -> int:
        return self.reason

    def random32(self) -> int:
        return self._rng.getrandbits(32)

    def bootloader_key(self) -> bytes | None:
        return self._key

    def enter_bootloader(self) -> None:
        self.on_bootloader()

    def reset(self) -> None:
        self.on_reset()


class _Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()


class Emulator:
    """The emulated room controller on a pseudo-terminal, run by one background thread.

    ``link``: a symlink kept pointing at the current terminal (removed while unplugged). ``control``: a
    Unix socket path for the JSON line protocol (module docstring). ``on_path`` is called (on the loop
    thread, or the caller's for :meth:`start`) with each new terminal's path. Every public method may be
    called from any thread.
    """

    def __init__(
        self,
        link: Path | None = None,
        *,
        seed: int = 0,
        to_mcu: FaultSettings | None = None,
        to_host: FaultSettings | None = None,
        firmware_major: int = pc.FW_MAJOR,
        channels: int = 2,
        bootloader_key: bytes | None = None,
        control: Path | None = None,
        on_path: Callable[[str], None] | None = None,
        poll_ms: float = POLL_MS,
    ) -> None:
        if not 0 <= firmware_major <= 255:
            raise ValueError(f"firmware major {firmware_major} is out of range 0..255")
        if not 1 <= channels <= 35:
            raise ValueError(f"channels {channels} is out of range 1..35 (a LIGHT_STATE holds 35)")
        self.link = link
        self.control = control
        self.firmware_major = firmware_major
        self.poll_ms = poll_ms
        self._on_path = on_path or (lambda _path: None)
        self._pipe_to_mcu = FaultPipe(to_mcu or FaultSettings(), seed * 2 + 1)
        self._pipe_to_host = FaultPipe(to_host or FaultSettings(), seed * 2 + 2)
        self.room = SimulatedRoom(seed, channels, bootloader_key, _now_ms)
        self.room.on_bootloader = self._bootloader
        self.room.on_reset = self._software_reset
        self.core: pc.Core = self._new_core()
        self._applied: deque[tuple[int, bytes]] = deque(maxlen=APPLIED_LOG)
        self.core.on_apply = self._record
        self._master: int | None = None
        self._hup: select.poll | None = None
        self._host_open = False
        self.path: str | None = None
        self._replug_at: float | None = None
        self._pty_dropped = 0
        self._no_host_dropped = 0
        self._boots = 1
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._listener: socket.socket | None = None
        self._clients: list[_Client] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # ----- lifecycle -----

    def start(self) -> None:
        """Make the terminal (and link, and control socket) and start the loop thread."""
        if self.control is not None:
            with contextlib.suppress(FileNotFoundError):
                self.control.unlink()
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(self.control))
            listener.listen(4)
            listener.setblocking(False)
            self._listener = listener
        self._plug()
        self._thread = threading.Thread(target=self._run, name="mcu-emulator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, close the terminal, remove the link and the control socket. Idempotent."""
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(CALL_TIMEOUT_S)
            self._thread = None
        self._unplug_now()
        for client in self._clients:
            client.sock.close()
        self._clients.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            if self.control is not None:
                with contextlib.suppress(FileNotFoundError):
                    self.control.unlink()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- the API (any thread) -----

    def reset(self) -> int:
        """Reboot the emulated MCU (boot reason "software"); returns the new session id."""
        return self._call(lambda: self._boot(pc.BOOT_SOFTWARE))

    def unplug(self) -> None:
        """Pull the cable: the terminal closes (the host's reads fail) and the link is removed."""
        self._call(self._unplug_now)

    def replug(self, power_cycle: bool = False) -> str:
        """Plug back in: a new terminal, the link re-pointed; returns its path. ``power_cycle``: the MCU
        also boots afresh (boot reason "power on"), as a bus-powered board does."""

        def go() -> str:
            if self._master is not None:
                self._unplug_now()
            if power_cycle:
                self._boot(pc.BOOT_POWER_ON)
            return self._plug()

        return self._call(go)

    def press(self) -> None:
        """Press the privacy button for 100 ms."""

        def go() -> None:
            self.room.press_until = _now_ms() + PRESS_MS

        self._call(go)

    def set_presence(self, on: bool) -> None:
        """Someone in the room (True) or nobody (False)."""
        self._call(lambda: setattr(self.room, "present", on))

    def set_switch(self, on: bool) -> None:
        """The privacy switch's position."""
        self._call(lambda: setattr(self.room, "switch_on", on))

    def set_faults(self, to_mcu: FaultSettings | None = None, to_host: FaultSettings | None = None) -> None:
        """Replace the fault settings of one direction or both (None leaves that one)."""

        def go() -> None:
            if to_mcu is not None:
                self._pipe_to_mcu.settings = to_mcu
            if to_host is not None:
                self._pipe_to_host.settings = to_host

        self._call(go)

    @property
    def session_id(self) -> int:
        return self._call(lambda: self.core.session_id)

    def lights(self) -> list[list[int]]:
        """Per channel ``[brightness ‰, cct K, r, g, b]`` as the board drives them now."""
        return self._call(lambda: [list(level) for level in self.room.levels])

    def applied(self) -> list[tuple[int, bytes]]:
        """Every host command the core applied since it booted (not ACK or HEARTBEAT), oldest first, as
        (type, payload): reliable ones appear exactly once each, in order."""
        return self._call(lambda: list(self._applied))

    def status(self) -> dict[str, Any]:
        """Where it is, who it is, and every counter (the control socket's ``status``)."""
        return self._call(self._status)

    # ----- loop-thread internals -----

    def _call(self, fn: Callable[[], T]) -> T:
        thread = self._thread
        if thread is None or threading.current_thread() is thread:
            return fn()
        done = threading.Event()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # handed to the caller, who re-raises it in its own thread
                box["error"] = exc
            finally:
                done.set()

        self._calls.put(run)
        self._wake()
        if not done.wait(CALL_TIMEOUT_S):
            raise TimeoutError("mcu-emulator: the loop thread did not answer")
        if "error" in box:
            raise box["error"]
        value: T = box["value"]
        return value

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"w")

    def _new_core(self) -> pc.Core:
        return pc.Core(
            self.room, self._ticks(), proto_major=self.firmware_major, fw_major=self.firmware_major
        )

    def _ticks(self) -> int:
        return int(_now_ms()) & pc.TICKS_MASK

    def _record(self, msg_type: int, payload: bytes) -> None:
        if msg_type not in (pc.T_ACK, pc.T_HEARTBEAT):  # link upkeep, not commands
            self._applied.append((msg_type, payload))

    def _boot(self, reason: int) -> int:
        self.room.reason = reason
        self.room.levels = [[0, pc.DEFAULT_CCT_K, 0, 0, 0] for _ in range(self.room.channels)]
        self.room.press_until = 0.0
        old = self.core.session_id
        self.core = self._new_core()
        while self.core.session_id == old:  # a new boot must look new to the host
            self.core = self._new_core()
        self.core.on_apply = self._record
        self._applied.clear()
        self._boots += 1
        self._pipe_to_mcu.clear()
        log.info("mcu-emulator: booted, session %08x, boot reason %d", self.core.session_id, reason)
        return self.core.session_id

    def _software_reset(self) -> None:
        self._boot(pc.BOOT_SOFTWARE)

    def _bootloader(self) -> None:
        log.info("mcu-emulator: entering the bootloader; back in %d ms", BOOTLOADER_AWAY_MS)
        self._unplug_now()
        self._replug_at = _now_ms() + BOOTLOADER_AWAY_MS

    def _plug(self) -> str:
        master, slave = os.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        # The slave side stays open only in the host: with nobody on it the master reports a hang-up,
        # which is how the loop knows (like MicroPython seeing DTR low) to drop output instead of queueing.
        os.close(slave)
        os.set_blocking(master, False)
        self._master = master
        self._hup = select.poll()
        self._hup.register(master, select.POLLIN)
        self._host_open = False
        if self.link is not None:
            tmp = self.link.with_name(f".{self.link.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(self.path)
            tmp.replace(self.link)
        log.info("mcu-emulator: plugged in at %s%s", self.path, f" ({self.link})" if self.link else "")
        self._on_path(self.path)
        return self.path

    def _unplug_now(self) -> None:
        if self.link is not None and self._master is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
        if self._master is not None:
            with contextlib.suppress(OSError):
                os.close(self._master)
            log.info("mcu-emulator: unplugged")
        self._master = None
        self._hup = None
        self._host_open = False
        self.path = None
        self._pipe_to_mcu.clear()
        self._pipe_to_host.clear()

    def _status(self) -> dict[str, Any]:
        core = self.core
        return {
            "path": self.path,
            "link": str(self.link) if self.link else None,
            "plugged": self._master is not None,
            "session_id": core.session_id,
            "boot_reason": core.boot_reason,
            "boots": self._boots,
            "firmware_major": self.firmware_major,
            "failsafe": core.failsafe,
            "presence": core.presence,
            "lights": [list(level) for level in self.room.levels],
            "stats": core.stats(),
            "faults": {
                "to_mcu": {"settings": asdict(self._pipe_to_mcu.settings), **self._pipe_to_mcu.counters},
                "to_host": {"settings": asdict(self._pipe_to_host.settings), **self._pipe_to_host.counters},
            },
            "host_open": self._host_open,
            "pty_dropped_bytes": self._pty_dropped,
            "no_host_dropped_bytes": self._no_host_dropped,
        }

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._turn()
        except BaseException as exc:
            # A bug in the emulator or the core: keep it for the API and the CLI, and end the thread.
            self.error = exc
            log.exception("mcu-emulator: stopped by an error")

    def _turn(self) -> None:
        now = _now_ms()
        timeout = self.poll_ms
        for due in (self._pipe_to_mcu.next_due(), self._pipe_to_host.next_due(), self._replug_at):
            if due is not None:
                timeout = min(timeout, max(due - now, 0.0))
        self._host_open = self._host_present()
        fds: list[Any] = [self._wake_r]
        if self._master is not None and self._host_open:
            fds.append(self._master)
        if self._listener is not None:
            fds.append(self._listener)
        fds.extend(c.sock for c in self._clients)
        readable, _, _ = select.select(fds, [], [], timeout / 1000.0)
        now = _now_ms()
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                break
            call()
        if self._master is not None and self._master in readable:
            try:
                data = os.read(self._master, READ_SIZE)
            except BlockingIOError:
                data = b""
            except OSError as exc:
                if exc.errno != errno.EIO:  # EIO: the host closed the port just now
                    raise
                data = b""
                self._host_open = False
            if data:
                self._pipe_to_mcu.push(data, now)
        if self._listener is not None and self._listener in readable:
            self._accept()
        for client in [c for c in self._clients if c.sock in readable]:
            self._serve(client)
        if self._replug_at is not None and now >= self._replug_at:
            self._replug_at = None
            self._boot(pc.BOOT_BOOTLOADER)
            self._plug()
        ticks = int(now) & pc.TICKS_MASK
        data = self._pipe_to_mcu.pop_due(now)
        if data:
            self.core.feed(data, ticks)
        self.core.poll(ticks)
        out = self.core.take_output()
        if out and self._host_open:
            self._pipe_to_host.push(out, now)
        elif out:
            self._no_host_dropped += len(out)
        data = self._pipe_to_host.pop_due(now)
        if data and self._host_open:
            self._write(data)

    def _host_present(self) -> bool:
        """True while a host has the terminal open (the master shows no hang-up)."""
        if self._hup is None:
            return False
        return not any(ev & select.POLLHUP for _, ev in self._hup.poll(0))

    def _write(self, data: bytes) -> None:
        assert self._master is not None
        try:
            n = os.write(self._master, data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            n = 0
        if n < len(data):
            # The host does not read and the terminal's buffer is full: a real MCU's USB stack drops it too.
            self._pty_dropped += len(data) - n

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        self._clients.append(_Client(sock))

    def _serve(self, client: _Client) -> None:
        try:
            data = client.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data or len(client.buf) > 65536:
            client.sock.close()
            self._clients.remove(client)
            return
        client.buf += data
        while b"\n" in client.buf:
            line, _, rest = bytes(client.buf).partition(b"\n")
            client.buf = bytearray(rest)
            if not line.strip():
                continue
            reply = self._command(line)
            with contextlib.suppress(OSError):
                client.sock.sendall(json.dumps(reply).encode() + b"\n")

    def _command(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
            return {"ok": True, **self._apply_command(request)}
        except (ValueError, TypeError, KeyError) as exc:
            return {"ok": False, "error": str(exc)}

    def _apply_command(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "status":
            return self._status()
        if cmd == "reset":
            return {"session_id": self._boot(pc.BOOT_SOFTWARE)}
        if cmd == "unplug":
            self._unplug_now()
            return {}
        if cmd == "replug":
            if self._master is not None:
                self._unplug_now()
            if request.get("power_cycle", False):
                self._boot(pc.BOOT_POWER_ON)
            return {"path": self._plug()}
        if cmd == "press":
            self.room.press_until = _now_ms() + PRESS_MS
            return {}
        if cmd in ("presence", "switch"):
            on = request["on"]
            if not isinstance(on, bool):
                raise TypeError(f"{cmd}: 'on' must be true or false")
            setattr(self.room, "present" if cmd == "presence" else "switch_on", on)
            return {}
        if cmd == "faults":
            direction = request.get("direction", "both")
            if direction not in ("both", "to-mcu", "to-host"):
                raise ValueError(f"faults: direction {direction!r} is not both, to-mcu or to-host")
            changes = {k: v for k, v in request.items() if k not in ("cmd", "direction")}
            names = {f.name for f in fields(FaultSettings)}
            unknown = sorted(set(changes) - names)
            if unknown:
                raise ValueError(f"faults: unknown setting(s) {', '.join(unknown)}")
            if direction in ("both", "to-mcu"):
                self._pipe_to_mcu.settings = replace(self._pipe_to_mcu.settings, **changes)
            if direction in ("both", "to-host"):
                self._pipe_to_host.settings = replace(self._pipe_to_host.settings, **changes)
            return {}
        raise ValueError(f"unknown command {cmd!r}")


# ----- command line -----


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability (0..1)")
    return value


_FAULT_HELP: Final = {
    "drop": "that a frame is lost",
    "bitflip": "that one bit of a frame is flipped",
    "duplicate": "that a frame is sent twice",
    "reorder": "that a frame is held back behind the next one",
    "truncate": "that a frame loses its last bytes",
    "garbage": "of a burst of random bytes before a frame",
    "stall": "that the link stops for --stall-ms (per frame)",
}


def add_emulator_arguments(p: argparse.ArgumentParser) -> None:
    """The ``doorway mcu-emulator`` command line."""
    p.add_argument("--link", type=Path, default=None, help="keep a symlink to the current PTY here")
    p.add_argument(
        "--control", type=Path, default=None, help="Unix socket for run-time commands (JSON lines)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the fault and sensor random numbers")
    p.add_argument("--channels", type=int, default=2, help="light channels (default 2)")
    p.add_argument(
        "--firmware-major",
        type=int,
        default=pc.FW_MAJOR,
        help="emulate this protocol/firmware major (default 1)",
    )
    p.add_argument("--bootloader-key", default=None, help="ENTER_BOOTLOADER HMAC key, hex (default: none)")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long (default: until Ctrl-C)")
    p.add_argument(
        "--direction",
        choices=["both", "to-mcu", "to-host"],
        default="both",
        help="which direction the fault options apply to (default both)",
    )
    for name, what in _FAULT_HELP.items():
        p.add_argument(f"--{name}", type=_probability, default=0.0, metavar="P", help=f"probability {what}")
    p.add_argument("--stall-ms", type=int, default=200, help="length of a stall, ms (default 200)")


def _faults_from_args(args: argparse.Namespace) -> tuple[FaultSettings, FaultSettings]:
    values = {f.name: getattr(args, f.name) for f in fields(FaultSettings)}
    faults = FaultSettings(**values)
    off = FaultSettings(stall_ms=faults.stall_ms)
    to_mcu = faults if args.direction in ("both", "to-mcu") else off
    to_host = faults if args.direction in ("both", "to-host") else off
    return to_mcu, to_host


def _say(text: str) -> None:
    print(text, flush=True)  # noqa: T201 (command-line output: the PTY path, for scripts)


def main(args: argparse.Namespace) -> int:
    """Run the emulator until Ctrl-C, SIGTERM or ``--seconds``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        to_mcu, to_host = _faults_from_args(args)
        key = bytes.fromhex(args.bootloader_key) if args.bootloader_key else None
        emulator = Emulator(
            args.link,
            seed=args.seed,
            to_mcu=to_mcu,
            to_host=to_host,
            firmware_major=args.firmware_major,
            channels=args.channels,
            bootloader_key=key,
            control=args.control,
            on_path=_say,
        )
        emulator.start()
    except (ValueError, OSError) as exc:
        print(f"doorway mcu-emulator: {exc}", file=sys.stderr)  # noqa: T201 (command-line output)
        return EXIT_USAGE
    stop = threading.Event()

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    deadline = None if args.seconds is None else time.monotonic() + args.seconds
    try:
        while not stop.is_set() and emulator.error is None:
            if deadline is not None and time.monotonic() >= deadline:
                break
            stop.wait(0.1)
    finally:
        emulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if emulator.error is not None:
        return 1
    return 0
