"""The admin panel's view of the doorway: polls the engine and the room-controller bridge once a second.

A :class:`Collector` thread asks the engine for ``stats`` (app/CONTROL.md) and the bridge for ``status``
and ``sensors`` (hwcontrol/README.md) over their control sockets, reads the SoC temperature and the
machine's CPU load, and reduces all of it to one flat **live sample**: a dict of plain values whose keys are
listed in :data:`SAMPLE_KEYS` (the numeric ones are also the columns of ``admin/history.py``). The panel
shows :meth:`Collector.latest`, streams samples to browsers through :meth:`Collector.subscribe`
(server-sent events), charts what :class:`~admin.history.History` stored, and serves
``admin/prometheus.py``'s rendering of the latest sample.

Theory of operation
-------------------
Reduction (:class:`Reducer`, no I/O, the time passed in): the engine's histograms are cumulative since the
engine started, so latency percentiles in the sample are "since start"; rates (frames shown per second,
Mb/s received and sent, audio concealed %) come from the difference of the engine's counters between two
polls over the monotonic time between them. A counter going backwards or ``uptime_s`` shrinking means the
engine restarted: that poll gives no rates. Before the second poll there are none either.

Down sockets: a socket that does not answer (or answers with an error) gives ``engine_up: False`` and
``engine_error`` (or ``hwcontrol_up: False`` and ``hwcontrol_error``) and None for everything it would have
provided; the rest of the sample is still filled in. Nothing a socket sends can stop the thread: a value of
the wrong type reads as missing.

Events (:class:`StateWatch`): the collector compares each sample with the previous one and adds an event
to the history when the engine stops or starts answering, reports a stage failure, the peer connects or
is lost, the bridge stops or starts answering, the MCU goes missing, is refused or is back, or privacy goes
on or off. At the first poll only the abnormal states are recorded (engine down, MCU missing, privacy on),
so a restart of the panel does not fill the list with "engine up".

History: every ``store_every_s`` the numeric columns are averaged over the samples taken since the last
store (each column over the samples that had it) and stored once, at the mean time of those samples; every
``prune_every_s`` the history is pruned.

Subscribers: each :class:`Subscription` has a bounded queue (``queue_size`` samples); a subscriber that
falls behind loses its oldest samples, counted in its ``dropped`` and the collector's ``dropped_total``
(``stats()``), and never slows the collector down. A new subscriber gets the latest sample at once. One
nobody has read while ``abandon_after`` samples were dropped is closed (its client is gone).

Threads: the collector runs on its own daemon thread ("collector"); :meth:`Collector.latest`,
:meth:`Collector.subscribe` and :meth:`Collector.stats` may be called from any thread. :meth:`Collector.tick`
does one poll on the caller's thread (tests). Cost: three local socket round trips, a handful of sysfs
reads and one dict of ~70 small values a second.
"""

from __future__ import annotations

import collections
import glob
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import psutil

from admin.history import COLUMN_NAMES, History
from app import control

log = logging.getLogger(__name__)

Request = Callable[..., dict[str, Any]]
"""``request(path, cmd, timeout=seconds)`` → the response object, raising
:class:`app.control.ControlClientError` (or OSError) when the socket does not answer."""

STAGES: Final[Mapping[str, tuple[str, str]]] = {
    "capture_to_encoded": ("encode", "capture_to_encoded_ms"),
    "pacing": ("send", "pacing_ms"),
    "assembly": ("network", "assembly_ms"),
    "decode": ("decode", "decode_ms"),
    "display": ("display", "decoded_to_shown_ms"),
    "audio_processing": ("audio", "process_ms"),
}
"""Per-stage latencies in the sample as ``stage_<name>_p50_ms``: the engine's stats object and histogram
each comes from. ``capture_to_encoded`` is capture plus encoding (the engine has no encode-only
histogram); ``pacing`` is the send stage's first-to-last packet of a frame; ``assembly`` the receiver's
first-to-last fragment; ``display`` decoded to shown; ``audio_processing`` echo cancellation plus
encoding of a 10 ms block."""

STALE_SENSORS_S: Final = 10.0
"""Room sensor readings older than this (seconds; the MCU reports every second) are left out."""

TEXT_KEYS: Final[tuple[str, ...]] = (
    "engine_error",
    "engine_name",
    "engine_role",
    "engine_failure",
    "call_state",
    "peer_name",
    "peer_address",
    "privacy_reason",
    "encoder",
    "video_mode",
    "audio_codec",
    "hwcontrol_error",
    "mcu_state",
    "mcu_message",
    "mcu_firmware",
)
"""Keys of the sample whose values are strings or None."""

FLAG_KEYS: Final[tuple[str, ...]] = (
    "engine_up",
    "peer_connected",
    "encrypted",
    "privacy",
    "camera_available",
    "audio_playing",
    "audio_device_lost",
    "hwcontrol_up",
)
"""Keys whose values are booleans, or None when unknown (``engine_up``/``hwcontrol_up`` are never None)."""

EXTRA_NUMBER_KEYS: Final[tuple[str, ...]] = (
    "uptime_s",
    "send_mbps",
    *(f"stage_{name}_p50_ms" for name in STAGES),
    "audio_buffer_p50_ms",
    "audio_drift_ppm",
    "av_offset_ms",
    "audio_underruns",
    "mcu_rtt_ms",
    "sensors_age_s",
)
"""Numeric keys beyond the history's columns (not stored)."""

SAMPLE_KEYS: Final[tuple[str, ...]] = ("t", *COLUMN_NAMES, *EXTRA_NUMBER_KEYS, *FLAG_KEYS, *TEXT_KEYS)
"""Every key of a live sample. ``t`` is Unix seconds; see :data:`admin.history.COLUMNS` for the columns'
units; ``uptime_s`` s; ``send_mbps`` Mb/s actually sent; ``stage_*_p50_ms`` ms since engine start;
``audio_buffer_p50_ms`` ms; ``audio_drift_ppm`` ppm; ``av_offset_ms`` ms (positive: audio later);
``audio_underruns`` a count since engine start; ``mcu_rtt_ms`` ms; ``sensors_age_s`` s.
``call_state`` is "down" (engine not answering), "failed" (a stage failure is stopping it), "not paired",
"waiting" (for the twin) or "connected". ``mcu_state`` is the bridge's state ("missing", "connecting",
"ready", "refused") or None when the bridge does not answer."""


# -- reading nested, untrusted JSON ---------------------------------------------------------------------


def _get(obj: object, *path: str) -> object:
    """``obj[path[0]][path[1]]...``, or None where a level is missing or not an object."""
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _num(obj: object, *path: str) -> float | None:
    """A finite number at ``path`` (booleans are not numbers here), else None."""
    v = _get(obj, *path)
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _str(obj: object, *path: str) -> str | None:
    v = _get(obj, *path)
    return v if isinstance(v, str) else None


def _flag(obj: object, *path: str) -> bool | None:
    v = _get(obj, *path)
    return v if isinstance(v, bool) else None


def _delta(new: float | None, old: float | None) -> float | None:
    """How much a counter grew; None when either reading is missing or it went backwards (a restart)."""
    if new is None or old is None or new < old:
        return None
    return new - old


def _rate(new: float | None, old: float | None, dt: float, scale: float) -> float | None:
    """A counter's growth per second over ``dt`` seconds, times ``scale``."""
    d = _delta(new, old)
    return None if d is None or dt <= 0 else d * scale / dt


# -- reduction -----------------------------------------------------------------------------------------


class Reducer:
    """Turns one poll's answers into a flat sample; remembers the counters of the previous poll for rates.

    No I/O and no clock of its own: :meth:`reduce` is given the monotonic time of the poll (for rates) and
    the wall-clock time (the sample's ``t``). One thread (the collector's)."""

    _COUNTERS: Final = (
        ("display", "frames"),
        ("network", "bytes"),
        ("send", "bytes"),
        ("audio", "samples_decoded"),
        ("audio", "samples_concealed"),
    )

    def __init__(self) -> None:
        self._prev_mono: float | None = None
        self._prev_uptime: float | None = None
        self._prev: dict[tuple[str, str], float | None] = {}

    def empty(self, t: float | None = None) -> dict[str, Any]:
        """A sample with nothing known yet: every key None, both sockets down and "not polled yet"."""
        sample: dict[str, Any] = dict.fromkeys(SAMPLE_KEYS)
        sample.update(
            t=t,
            engine_up=False,
            engine_error="not polled yet",
            call_state="down",
            hwcontrol_up=False,
            hwcontrol_error="not polled yet",
        )
        return sample

    def reduce(
        self,
        *,
        mono: float,
        t: float,
        engine: Mapping[str, Any] | None,
        engine_error: str | None,
        hw_status: Mapping[str, Any] | None,
        hw_sensors: Mapping[str, Any] | None,
        hw_error: str | None,
        soc_temperature_c: float | None,
        system_cpu_percent: float | None,
    ) -> dict[str, Any]:
        """One sample. ``engine`` is the engine's ``stats`` response (None when it did not answer, with
        ``engine_error`` saying why); ``hw_status`` and ``hw_sensors`` the bridge's ``status`` response
        and the ``sensors`` object of its ``sensors`` response (None when absent; ``hw_error`` when the
        bridge did not answer). ``mono`` is monotonic seconds, ``t`` Unix seconds."""
        s = self.empty(t)
        s["soc_temperature_c"] = soc_temperature_c
        s["system_cpu_percent"] = system_cpu_percent
        self._engine(s, engine, engine_error, mono)
        self._hwcontrol(s, hw_status, hw_sensors, hw_error)
        return s

    def _engine(
        self, s: dict[str, Any], st: Mapping[str, Any] | None, error: str | None, mono: float
    ) -> None:
        if st is None:
            s["engine_error"] = error or "no answer"
            self._prev_mono = None
            return
        s["engine_up"] = True
        s["engine_error"] = None
        status = st.get("status")
        s["engine_name"] = _str(status, "name")
        s["engine_role"] = _str(status, "role")
        s["uptime_s"] = uptime = _num(status, "uptime_s")
        s["engine_failure"] = _str(status, "failure")
        s["peer_connected"] = peer_up = _flag(status, "peer_connected")
        s["encrypted"] = encrypted = _flag(status, "encrypted")
        twin = _get(status, "twin")
        s["peer_name"] = _str(twin, "name")
        s["peer_address"] = _str(status, "peer")
        s["privacy"] = _flag(status, "privacy")
        s["privacy_reason"] = _str(status, "privacy_reason")
        s["encoder"] = _str(status, "encoder")
        s["camera_available"] = _flag(status, "camera_available")
        w, h, fps = (
            _num(status, "video", "width"),
            _num(status, "video", "height"),
            _num(status, "video", "fps"),
        )
        if w is not None and h is not None and fps is not None:
            s["video_mode"] = f"{w:.0f}x{h:.0f}@{fps:.0f}"
        if s["engine_failure"]:
            s["call_state"] = "failed"
        elif encrypted and twin is None:
            s["call_state"] = "not paired"
        elif peer_up:
            s["call_state"] = "connected"
        else:
            s["call_state"] = "waiting"

        s["video_latency_p50_ms"] = _num(st, "decode", "capture_to_decoded_ms", "p50")
        s["video_latency_p99_ms"] = _num(st, "decode", "capture_to_decoded_ms", "p99")
        # The encoder's own target (below the congestion controller's when the ceiling is lower); the
        # transport's when this engine does not encode.
        target = _num(st, "encode", "target_kbps")
        s["send_target_kbps"] = target if target is not None else _num(st, "transport", "target_kbps")
        s["loss_percent"] = _num(st, "network", "loss_percent")
        s["rtt_ms"] = _num(st, "network", "rtt_ms")
        s["engine_cpu_percent"] = _num(st, "process", "cpu_percent")
        s["engine_rss_mb"] = _num(st, "process", "rss_mb")
        for name, (stage, hist) in STAGES.items():
            s[f"stage_{name}_p50_ms"] = _num(st, stage, hist, "p50")

        s["audio_latency_p50_ms"] = _num(st, "audio", "latency_ms", "p50")
        s["mic_dbfs"] = _num(st, "audio", "processing", "mic_dbfs")
        s["out_dbfs"] = _num(st, "audio", "processing", "out_dbfs")
        s["audio_codec"] = _str(st, "audio", "codec")
        s["audio_playing"] = _flag(st, "audio", "playing")
        s["audio_device_lost"] = _flag(st, "audio", "device_stats", "lost")
        s["audio_buffer_p50_ms"] = _num(st, "audio", "buffer_ms", "p50")
        s["audio_drift_ppm"] = _num(st, "audio", "drift_ppm")
        s["av_offset_ms"] = _num(st, "audio", "av_offset_ms")
        s["audio_underruns"] = _num(st, "audio", "underruns")

        counters = {key: _num(st, *key) for key in self._COUNTERS}
        restarted = uptime is not None and self._prev_uptime is not None and uptime < self._prev_uptime
        if self._prev_mono is not None and not restarted:
            dt = mono - self._prev_mono
            prev = self._prev
            s["fps_shown"] = _rate(counters["display", "frames"], prev.get(("display", "frames")), dt, 1.0)
            s["receive_mbps"] = _rate(counters["network", "bytes"], prev.get(("network", "bytes")), dt, 8e-6)
            s["send_mbps"] = _rate(counters["send", "bytes"], prev.get(("send", "bytes")), dt, 8e-6)
            decoded = _delta(counters["audio", "samples_decoded"], prev.get(("audio", "samples_decoded")))
            hidden = _delta(counters["audio", "samples_concealed"], prev.get(("audio", "samples_concealed")))
            if decoded is not None and hidden is not None and decoded + hidden > 0:
                s["audio_concealed_percent"] = 100.0 * hidden / (decoded + hidden)
        self._prev_mono = mono
        self._prev_uptime = uptime
        self._prev = counters

    @staticmethod
    def _hwcontrol(
        s: dict[str, Any],
        status: Mapping[str, Any] | None,
        sensors: Mapping[str, Any] | None,
        error: str | None,
    ) -> None:
        if status is None:
            s["hwcontrol_error"] = error or "no answer"
            return
        s["hwcontrol_up"] = True
        s["hwcontrol_error"] = None
        s["mcu_state"] = _str(status, "state")
        s["mcu_message"] = _str(status, "message")
        s["mcu_firmware"] = _str(status, "mcu", "firmware")
        s["mcu_rtt_ms"] = _num(status, "rtt_ms")
        if sensors is not None:
            s["sensors_age_s"] = age = _num(sensors, "age_s")
            if age is not None and age > STALE_SENSORS_S:
                # The MCU reports every second; readings this old describe a room that may have changed
                # (the MCU is gone): leave them out rather than chart a flat line of old values.
                return
            s["room_lux"] = _num(sensors, "lux")
            s["room_temperature_c"] = _num(sensors, "temperature_c")
            s["room_humidity_percent"] = _num(sensors, "humidity_percent")
            presence = _flag(sensors, "presence")
            s["presence"] = None if presence is None else float(presence)


# -- events --------------------------------------------------------------------------------------------

EventTuple = tuple[str, str, str]
"""(source, level, message) of an event, as :meth:`admin.history.History.add_event` takes them."""


class StateWatch:
    """Compares each sample with the last and says what changed, as events (see the module docstring).

    No I/O; one thread."""

    def __init__(self) -> None:
        self._first = True
        self._engine_up: bool | None = None
        self._failure: str | None = None
        self._peer: bool | None = None
        self._privacy: bool | None = None
        self._hw_up: bool | None = None
        self._mcu: str | None = None

    def update(self, s: Mapping[str, Any]) -> list[EventTuple]:
        out: list[EventTuple] = []
        first, self._first = self._first, False

        engine_up = bool(s.get("engine_up"))
        if engine_up != self._engine_up:
            if not engine_up:
                out.append(("engine", "error", f"engine not answering: {s.get('engine_error')}"))
            elif not first:
                out.append(("engine", "info", "engine answering again"))
            self._engine_up = engine_up
            # What the engine said before it went away no longer holds; start afresh when it is back.
            self._peer = self._privacy = None
            self._failure = None
        if engine_up:
            failure = s.get("engine_failure")
            if failure and failure != self._failure:
                out.append(("engine", "error", f"engine stage failed: {failure}"))
            self._failure = failure
            peer = s.get("peer_connected")
            if isinstance(peer, bool) and peer != self._peer:
                name = s.get("peer_name") or s.get("peer_address") or "the twin"
                if peer:
                    out.append(("engine", "info", f"peer connected: {name}"))
                elif self._peer is not None:
                    out.append(("engine", "warning", f"peer lost: {name}"))
                self._peer = peer
            privacy = s.get("privacy")
            if isinstance(privacy, bool) and privacy != self._privacy:
                why = s.get("privacy_reason")
                if privacy:
                    out.append(("engine", "info", "privacy on" + (f" ({why})" if why else "")))
                elif self._privacy is not None:
                    out.append(("engine", "info", "privacy off"))
                self._privacy = privacy

        hw_up = bool(s.get("hwcontrol_up"))
        if hw_up != self._hw_up:
            if not hw_up:
                out.append(("hwcontrol", "warning", f"hwcontrol not answering: {s.get('hwcontrol_error')}"))
            elif not first:
                out.append(("hwcontrol", "info", "hwcontrol answering again"))
            self._hw_up = hw_up
        mcu = s.get("mcu_state") if hw_up else None
        # "connecting" is the short step between missing and ready: not worth an event of its own.
        if hw_up and isinstance(mcu, str) and mcu not in ("connecting", self._mcu):
            message = s.get("mcu_message") or mcu
            if mcu == "missing":
                out.append(("hwcontrol", "warning", str(message)))
            elif mcu == "refused":
                out.append(("hwcontrol", "error", f"MCU refused: {message}"))
            elif mcu == "ready":
                if self._mcu is not None:
                    out.append(("hwcontrol", "info", "MCU back" if self._mcu == "missing" else "MCU ready"))
            else:
                out.append(("hwcontrol", "info", f"MCU {mcu}: {message}"))
            self._mcu = mcu
        elif not hw_up:
            self._mcu = None
        return out


# -- local probes --------------------------------------------------------------------------------------


class SocThermometer:
    """The SoC's temperature in °C: the hottest ``thermal_zone*/temp`` under ``root`` (millidegrees), or
    psutil's hottest sensor where the kernel has no thermal zones; None when neither gives a reading.

    The zone files are found once (zones do not come and go); each read is a few small sysfs reads."""

    def __init__(self, root: Path = Path("/sys/class/thermal")) -> None:
        self._zones = [Path(p) for p in sorted(glob.glob(str(root / "thermal_zone*" / "temp")))]

    def read(self) -> float | None:
        best: float | None = None
        for zone in self._zones:
            try:
                value = int(zone.read_text().strip()) / 1000.0
            except (OSError, ValueError):
                continue  # a zone whose sensor is asleep or absent answers EIO/ENODATA
            best = value if best is None else max(best, value)
        if best is not None or self._zones:
            return best
        sensors = getattr(psutil, "sensors_temperatures", None)
        if sensors is None:
            return None
        try:
            readings = sensors()
        except (OSError, RuntimeError):
            return None
        temps = [t.current for group in readings.values() for t in group if t.current is not None]
        return max(temps) if temps else None


class SystemCpu:
    """The whole machine's CPU use since the previous read, percent of all cores (psutil); None on the
    first read, which has nothing to compare with."""

    def __init__(self) -> None:
        self._primed = False

    def read(self) -> float | None:
        value = float(psutil.cpu_percent(interval=None))
        if not self._primed:
            self._primed = True
            return None
        return value


# -- subscriptions -------------------------------------------------------------------------------------


class TooManySubscribersError(Exception):
    """More live views are open than the collector serves (``max_subscribers``)."""


class Subscription:
    """One live view's samples, newest last, from a bounded queue. Iterate it (blocking: a thread, or
    Starlette's threadpool for a synchronous streaming body) or call :meth:`get` with a timeout from an
    event loop's worker thread; close it when the client goes. Iteration ends when it is closed or the
    collector stops. A subscription nobody reads from while ``abandon_after`` samples are dropped (a
    client gone without its route closing it) is closed by the collector, so forgotten ones do not use
    up ``max_subscribers`` for good. The samples are shared between subscribers and :meth:`Collector.latest`'s
    source: treat them as read-only."""

    def __init__(self, owner: Collector, size: int) -> None:
        self._owner = owner
        self._items: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self._cond = threading.Condition()
        self.closed = False
        self.dropped = 0
        """Samples this subscriber lost because it read too slowly."""
        self.unread_drops = 0
        """Samples dropped since the subscriber last read one."""

    def offer(self, sample: dict[str, Any]) -> bool:
        """Queue ``sample`` (the collector's thread); True when the oldest queued one was dropped."""
        with self._cond:
            full = len(self._items) == self._items.maxlen
            if full:
                self.dropped += 1
                self.unread_drops += 1
            self._items.append(sample)
            self._cond.notify()
        return full

    def get(self, timeout_s: float | None = None) -> dict[str, Any] | None:
        """The oldest queued sample, waiting up to ``timeout_s`` seconds (None: until one comes or the
        subscription closes); None on timeout or when closed."""
        with self._cond:
            if not self._items and not self.closed:
                self._cond.wait_for(lambda: bool(self._items) or self.closed, timeout_s)
            if self._items:
                self.unread_drops = 0
                return self._items.popleft()
            return None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        item = self.get(None)
        if item is None:
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop receiving; a waiting :meth:`get` returns. Idempotent, any thread."""
        with self._cond:
            if self.closed:
                return
            self.closed = True
            self._cond.notify_all()
        self._owner._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- averaging for the history -------------------------------------------------------------------------


class _Averager:
    """Sums of each history column over the samples since the last store."""

    def __init__(self) -> None:
        self._sums = dict.fromkeys(COLUMN_NAMES, 0.0)
        self._counts = dict.fromkeys(COLUMN_NAMES, 0)
        self._t_sum = 0.0
        self._n = 0

    def _reset(self) -> None:
        for name in COLUMN_NAMES:
            self._sums[name] = 0.0
            self._counts[name] = 0
        self._t_sum = 0.0
        self._n = 0

    def add(self, s: Mapping[str, Any]) -> None:
        self._t_sum += float(s["t"])
        self._n += 1
        for name in COLUMN_NAMES:
            v = s.get(name)
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                self._sums[name] += v
                self._counts[name] += 1

    def take(self) -> tuple[float, dict[str, float | None]] | None:
        """The mean time and the mean of each column (None where no sample had it); then start over.
        None when nothing was added."""
        if self._n == 0:
            return None
        means = {n: (self._sums[n] / c if (c := self._counts[n]) else None) for n in COLUMN_NAMES}
        t = self._t_sum / self._n
        self._reset()
        return t, means


# -- the collector -------------------------------------------------------------------------------------


class Collector:
    """Polls the engine (``engine_socket``) and the bridge (``hwcontrol_socket``) every ``interval_s``
    seconds on its own thread, keeps the latest sample, feeds subscribers, stores one averaged sample in
    ``history`` every ``store_every_s`` seconds and prunes it every ``prune_every_s``.

    ``clock`` gives the samples' times (Unix seconds), ``monotonic`` the time rates and schedules are
    measured with; ``request`` talks to a control socket (:data:`Request`); ``soc_temperature`` and
    ``system_cpu`` are the local probes. All injectable for tests. Start with :meth:`start`, stop with
    :meth:`stop`."""

    def __init__(
        self,
        engine_socket: Path,
        hwcontrol_socket: Path,
        history: History,
        *,
        interval_s: float = 1.0,
        store_every_s: float = 10.0,
        prune_every_s: float = 600.0,
        request_timeout_s: float = 1.0,
        queue_size: int = 16,
        max_subscribers: int = 16,
        abandon_after: int = 60,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        request: Request = control.request,
        soc_temperature: Callable[[], float | None] | None = None,
        system_cpu: Callable[[], float | None] | None = None,
    ) -> None:
        if interval_s <= 0 or store_every_s <= 0 or prune_every_s <= 0 or request_timeout_s <= 0:
            raise ValueError("intervals and timeouts must be positive")
        if queue_size < 1 or max_subscribers < 1 or abandon_after < 1:
            raise ValueError("queue_size, max_subscribers and abandon_after must be at least 1")
        self.engine_socket = Path(engine_socket)
        self.hwcontrol_socket = Path(hwcontrol_socket)
        self.history = history
        self.interval_s = interval_s
        self.store_every_s = store_every_s
        self.prune_every_s = prune_every_s
        self.request_timeout_s = request_timeout_s
        self.queue_size = queue_size
        self.max_subscribers = max_subscribers
        self.abandon_after = abandon_after
        self._clock = clock
        self._monotonic = monotonic
        self._request = request
        self._soc_temperature = soc_temperature if soc_temperature is not None else SocThermometer().read
        self._system_cpu = system_cpu if system_cpu is not None else SystemCpu().read

        self._reducer = Reducer()
        self._watch = StateWatch()
        self._averager = _Averager()
        self._lock = threading.Lock()
        self._latest = self._reducer.empty()
        self._subscribers: list[Subscription] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._store_due: float | None = None
        self._prune_due: float | None = None
        self.polls = 0
        """Polls done."""
        self.dropped_total = 0
        """Samples dropped for slow subscribers, all of them together."""
        self.abandoned = 0
        """Subscriptions closed because nobody read them (see :class:`Subscription`)."""
        self.errors = 0
        """Polls that failed with a bug (logged); the collector carries on."""

    # -- life cycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start polling on the "collector" thread."""
        if self._thread is not None:
            raise RuntimeError("collector already started")
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread, store what was averaged so far, and end every subscription. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._store()
        with self._lock:
            subs = list(self._subscribers)
        for sub in subs:
            sub.close()

    def _run(self) -> None:
        due = self._monotonic()
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                # A bug in the reduction must not take the panel down; say so, loudly but not every second.
                self.errors += 1
                if self.errors == 1 or self.errors % 60 == 0:
                    log.exception("collector: poll failed (%d so far)", self.errors)
            due += self.interval_s
            now = self._monotonic()
            due = max(due, now)  # after a slow poll, carry on from now rather than catch up in a burst
            self._stop.wait(due - now)

    # -- one poll -----------------------------------------------------------------------------------------

    def tick(self) -> dict[str, Any]:
        """Poll once (the collector's thread, or a test's): reduce, publish, record events, store, prune.
        Returns the new sample."""
        engine, engine_error = self._ask(self.engine_socket, "stats", "engine")
        hw_status, hw_error = self._ask(self.hwcontrol_socket, "status", "hwcontrol")
        hw_sensors: Mapping[str, Any] | None = None
        if hw_status is not None:
            answer, _ = self._ask(self.hwcontrol_socket, "sensors", "hwcontrol")
            raw = None if answer is None else answer.get("sensors")
            hw_sensors = raw if isinstance(raw, dict) else None
        mono = self._monotonic()
        sample = self._reducer.reduce(
            mono=mono,
            t=self._clock(),
            engine=engine,
            engine_error=engine_error,
            hw_status=hw_status,
            hw_sensors=hw_sensors,
            hw_error=hw_error,
            soc_temperature_c=self._soc_temperature(),
            system_cpu_percent=self._system_cpu(),
        )
        self.polls += 1
        for source, level, message in self._watch.update(sample):
            self.history.add_event(sample["t"], source, level, message)
        with self._lock:
            self._latest = sample
            subs = list(self._subscribers)
        for sub in subs:
            if sub.offer(sample):
                self.dropped_total += 1
                if sub.unread_drops >= self.abandon_after:
                    self.abandoned += 1
                    log.info("collector: closing a live view unread for %d samples", sub.unread_drops)
                    sub.close()
        self._averager.add(sample)
        if self._store_due is None:
            self._store_due = mono + self.store_every_s
            self._prune_due = mono + self.prune_every_s
        elif mono >= self._store_due:
            # On a fixed grid, so windows do not creep by a poll's lateness each time.
            while self._store_due <= mono:
                self._store_due += self.store_every_s
            self._store()
        if self._prune_due is not None and mono >= self._prune_due:
            self._prune_due = mono + self.prune_every_s
            self.history.prune(self._clock())
        return sample

    def _ask(self, path: Path, cmd: str, who: str) -> tuple[dict[str, Any] | None, str | None]:
        """One request; (response, None) or (None, why not)."""
        try:
            resp = self._request(path, cmd, timeout=self.request_timeout_s)
        except (control.ControlClientError, OSError) as exc:
            cause = exc.__cause__
            return None, f"{who} not reachable at {path}: {cause if cause is not None else exc}"
        if not isinstance(resp, dict):
            return None, f"{who}: bad response to {cmd!r}"
        if resp.get("ok") is not True:
            return None, f"{who} refused {cmd!r}: {resp.get('error', 'no reason given')}"
        return resp, None

    def _store(self) -> None:
        taken = self._averager.take()
        if taken is not None:
            t, means = taken
            self.history.add_sample(t, means)

    # -- readers (any thread) -----------------------------------------------------------------------------

    def latest(self) -> dict[str, Any]:
        """A copy of the latest sample (before the first poll: every value None, sockets "not polled yet")."""
        with self._lock:
            return dict(self._latest)

    def subscribe(self) -> Subscription:
        """A new live view, primed with the latest sample if there has been a poll. Raises
        :class:`TooManySubscribersError` beyond ``max_subscribers`` open views."""
        sub = Subscription(self, self.queue_size)
        with self._lock:
            if len(self._subscribers) >= self.max_subscribers:
                raise TooManySubscribersError(f"at most {self.max_subscribers} live views at once")
            if self._stop.is_set():
                sub.closed = True
                return sub
            self._subscribers.append(sub)
            if self.polls:
                sub.offer(dict(self._latest))
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

    def stats(self) -> dict[str, int]:
        """The collector's own counters: polls, errors, subscribers, dropped_total, abandoned."""
        with self._lock:
            n = len(self._subscribers)
        return {
            "polls": self.polls,
            "errors": self.errors,
            "subscribers": n,
            "dropped_total": self.dropped_total,
            "abandoned": self.abandoned,
        }
