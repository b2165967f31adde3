"""Network impairment model: our own netem in user space, sans-I/O (no sockets, clocks or threads).

The kernel here has no netem, so the relay (:mod:`app.relay`) impairs traffic itself; this module is the
part that decides what happens to each datagram. :class:`Impairment` takes datagrams in with
:meth:`~Impairment.push` and hands them back out, impaired, from :meth:`~Impairment.due`; the caller passes
the current time as ``now_ns`` (CLOCK_MONOTONIC nanoseconds) and sleeps until
:meth:`~Impairment.next_due_ns`, so tests run in simulated time and a given seed and input always give the
same output. :class:`ImpairmentSettings` says what to do (defaults: a perfect link); a :class:`Scenario`
(loaded from TOML by :func:`load_scenario`) changes the settings at given times, played by
:class:`ScenarioPlayer`. Sizes are UDP payload bytes (the 28 bytes of IPv4 and UDP headers are not counted).

Theory of operation
-------------------
Each pushed datagram goes through, in order:

1. **Loss.** Independent random loss with probability ``loss_percent``, and Gilbert–Elliott bursty loss: a
   two-state Markov chain stepped once per datagram, losing every datagram while *bad* and none while
   *good*. With p = P(good→bad) and r = P(bad→good), a bad run lasts a geometric number of datagrams with
   mean 1/r, and the chain spends p/(p+r) of the time bad. Setting r = 1/``burst_length`` and solving
   π = p/(p+r) for the long-run rate π = ``burst_loss_percent``/100 gives p = π·r/(1−π) = π/(L·(1−π)),
   which is a probability only when π ≤ L/(L+1) (so a mean burst of 1 allows at most 50 %). The chain starts
   good and keeps stepping on every datagram, so random loss does not change the bursts' statistics.
2. **Duplication.** With probability ``duplicate_percent`` a survivor is followed by a copy, which then
   goes through the rest of the pipeline as its own datagram (its own jitter; never before the original).
3. **Bottleneck.** With ``bandwidth_kbps`` set, datagrams are serialised one after another at that rate
   through a finite drop-tail FIFO. A datagram arriving when the backlog (bytes still to serialise,
   counting what is left of the one on the wire) plus itself would exceed ``queue_ms × bandwidth_kbps / 8``
   bytes, or when ``queue_packets`` datagrams already wait, is dropped; an idle link always takes one
   datagram, however large. So the time from arrival to leaving the queue never exceeds ``queue_ms`` (for
   datagrams smaller than the queue): queueing delay grows to that bound under overload (bufferbloat), then
   drops start. A rate change applies to what is still queued, including the rest of the datagram on the
   wire.
4. **Propagation.** ``delay_ms`` plus jitter drawn uniformly from [−``jitter_ms``, +``jitter_ms``] (clamped
   so the delay is never negative; the mean stays ``delay_ms`` while ``jitter_ms ≤ delay_ms``). Jitter alone
   never reorders: a datagram is released at max(its jittered time, the previous datagram's release), like
   netem with a rate or a FIFO qdisc, so closely spaced datagrams bunch up rather than overtake.
5. **Reordering.** With probability ``reorder_percent`` a datagram is held back until the next datagram is
   released and goes out right after it, so the two arrive swapped; if nothing follows within
   ``reorder_hold_ms`` it goes out then, merely late. A held datagram does not hold back the ones after it.
   ``counters.reordered`` counts datagrams actually delivered after one that entered later.

Every random draw is made when the datagram is pushed, from one ``random.Random`` per effect (seeded from
``seed`` and the effect's name), so the outcome does not depend on how often :meth:`Impairment.due` is
called, and turning one effect on does not change another's pattern. The settings in force when a datagram
is pushed fix its delay and hold; a settings change reaches datagrams already in flight only through the
bottleneck's rate. Time that steps backwards is treated as standing still.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import math
import random
import tomllib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

log = logging.getLogger(__name__)

_NS_PER_MS: Final = 1_000_000
# A minute is far beyond any delay, jitter or queue a doorway could survive; larger values are typos.
_MAX_MS: Final = 60_000.0
# A release time earlier than any real clock reading: the FIFO floor before the first datagram.
_NEVER: Final = -(1 << 62)
SCENARIOS_DIR: Final = Path(__file__).parent / "scenarios"


def _num(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _in_range(name: str, value: object, lo: float, hi: float, unit: str) -> None:
    v = _num(name, value)
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be between {lo:g} and {hi:g} {unit}, got {v:g}")


@dataclass(frozen=True)
class ImpairmentSettings:
    """What to do to one direction's datagrams; the defaults are a perfect link. See the module docstring.

    ``delay_ms``: one-way delay (ms). ``jitter_ms``: extra delay uniform in ±``jitter_ms`` (ms), clamped
    at zero total delay; never reorders by itself. ``reorder_percent``: datagrams (percent) held back until
    the next one has gone, for at most ``reorder_hold_ms`` (ms, default 20). ``loss_percent``: independent
    loss (percent). ``burst_loss_percent`` and ``burst_length``: Gilbert–Elliott loss with that long-run
    rate (percent) and mean burst (datagrams). ``duplicate_percent``: datagrams (percent) followed by a copy.
    ``bandwidth_kbps``: bottleneck rate (kbit/s of UDP payload), ``None`` for none. ``queue_ms``: the
    bottleneck's drop-tail queue as time at that rate (ms, default 200: a typical home router's buffer);
    ``queue_packets``: an optional limit on datagrams waiting there too.
    """

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    reorder_percent: float = 0.0
    reorder_hold_ms: float = 20.0
    loss_percent: float = 0.0
    burst_loss_percent: float = 0.0
    burst_length: float = 1.0
    duplicate_percent: float = 0.0
    bandwidth_kbps: float | None = None
    queue_ms: float = 200.0
    queue_packets: int | None = None

    def __post_init__(self) -> None:
        _in_range("delay_ms", self.delay_ms, 0, _MAX_MS, "ms")
        _in_range("jitter_ms", self.jitter_ms, 0, _MAX_MS, "ms")
        _in_range("reorder_percent", self.reorder_percent, 0, 100, "percent")
        _in_range("loss_percent", self.loss_percent, 0, 100, "percent")
        _in_range("duplicate_percent", self.duplicate_percent, 0, 100, "percent")
        _in_range("burst_loss_percent", self.burst_loss_percent, 0, 100, "percent")
        if _num("reorder_hold_ms", self.reorder_hold_ms) <= 0 or self.reorder_hold_ms > _MAX_MS:
            raise ValueError(
                f"reorder_hold_ms must be above 0 and at most {_MAX_MS:g} ms, got {self.reorder_hold_ms:g}"
            )
        if _num("burst_length", self.burst_length) < 1:
            raise ValueError(f"burst_length must be at least 1 datagram, got {self.burst_length:g}")
        limit = 100 * self.burst_length / (self.burst_length + 1)
        if self.burst_loss_percent > limit:
            raise ValueError(
                f"burst_loss_percent must be at most {limit:g} percent with burst_length "
                f"{self.burst_length:g} (a Gilbert–Elliott chain with mean burst L loses at most L/(L+1)), "
                f"got {self.burst_loss_percent:g}"
            )
        if self.bandwidth_kbps is not None and _num("bandwidth_kbps", self.bandwidth_kbps) <= 0:
            raise ValueError(
                f"bandwidth_kbps must be positive (or None for no limit), got {self.bandwidth_kbps:g}"
            )
        if _num("queue_ms", self.queue_ms) <= 0 or self.queue_ms > _MAX_MS:
            raise ValueError(f"queue_ms must be above 0 and at most {_MAX_MS:g} ms, got {self.queue_ms:g}")
        if self.queue_packets is not None and (
            isinstance(self.queue_packets, bool)
            or not isinstance(self.queue_packets, int)
            or self.queue_packets < 1
        ):
            raise ValueError(
                f"queue_packets must be a whole number of at least 1, got {self.queue_packets!r}"
            )

    @classmethod
    def from_options(
        cls,
        *,
        delay_ms: float | None = None,
        jitter_ms: float | None = None,
        loss: float | None = None,
        burst_loss: float | None = None,
        burst_length: float | None = None,
        reorder: float | None = None,
        reorder_hold_ms: float | None = None,
        duplicate: float | None = None,
        bandwidth_kbps: float | None = None,
        queue_ms: float | None = None,
        queue_packets: int | None = None,
    ) -> ImpairmentSettings:
        """Settings from command-line style values (percents as percents); ``None`` keeps the default."""
        given: dict[str, Any] = {
            "delay_ms": delay_ms,
            "jitter_ms": jitter_ms,
            "loss_percent": loss,
            "burst_loss_percent": burst_loss,
            "burst_length": burst_length,
            "reorder_percent": reorder,
            "reorder_hold_ms": reorder_hold_ms,
            "duplicate_percent": duplicate,
            "bandwidth_kbps": bandwidth_kbps,
            "queue_ms": queue_ms,
            "queue_packets": queue_packets,
        }
        return cls(**{k: v for k, v in given.items() if v is not None})

    @property
    def is_perfect(self) -> bool:
        """True when nothing is impaired (queue sizes alone do nothing without a bandwidth limit)."""
        return (
            self.delay_ms == 0
            and self.jitter_ms == 0
            and self.reorder_percent == 0
            and self.loss_percent == 0
            and self.burst_loss_percent == 0
            and self.duplicate_percent == 0
            and self.bandwidth_kbps is None
        )

    @property
    def burst_transitions(self) -> tuple[float, float]:
        """The Gilbert–Elliott chain's (p, r): P(good→bad) and P(bad→good) per datagram; (0, 1) when off."""
        pi = self.burst_loss_percent / 100
        r = 1 / self.burst_length
        return pi * r / (1 - pi), r

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON-able values, for reports."""
        return dataclasses.asdict(self)


_SETTING_NAMES: Final = tuple(f.name for f in dataclasses.fields(ImpairmentSettings))


@dataclass(slots=True)
class ImpairmentCounters:
    """What one :class:`Impairment` has done so far (datagram counts unless named otherwise).

    ``received`` were pushed; ``delivered`` (and ``delivered_bytes``) came out of :meth:`Impairment.due`,
    copies included; ``lost_random``, ``lost_burst`` and ``dropped_queue`` never will; ``duplicated`` copies
    were made; ``reorder_held`` were picked for reordering, of which ``reordered`` were actually delivered
    after a datagram that entered later. ``queued_bytes`` and ``queued_packets`` wait at the bottleneck now,
    ``in_flight`` anywhere in the pipeline now; ``max_queue_delay_ms`` is the longest time (ms) a datagram
    took from arriving at the bottleneck to leaving it.
    """

    received: int = 0
    delivered: int = 0
    delivered_bytes: int = 0
    lost_random: int = 0
    lost_burst: int = 0
    dropped_queue: int = 0
    duplicated: int = 0
    reorder_held: int = 0
    reordered: int = 0
    queued_bytes: int = 0
    queued_packets: int = 0
    in_flight: int = 0
    max_queue_delay_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The counters as plain JSON-able values, for reports."""
        return dataclasses.asdict(self)


# A datagram waiting at the bottleneck: (arrival ns, size, seq, data, propagation delay ns, held for reorder).
_Queued = tuple[int, int, int, bytes, int, bool]


class Impairment:
    """One direction's impairment pipeline, driven by the caller's clock; not thread-safe (one owner)."""

    def __init__(self, settings: ImpairmentSettings, seed: int) -> None:
        self._rng_loss = random.Random(f"{seed}/loss")
        self._rng_burst = random.Random(f"{seed}/burst")
        self._rng_dup = random.Random(f"{seed}/duplicate")
        self._rng_jitter = random.Random(f"{seed}/jitter")
        self._rng_reorder = random.Random(f"{seed}/reorder")
        self._c = ImpairmentCounters()
        self._now = _NEVER
        self._seq = 0
        self._bad = False
        # The bottleneck: FIFO of _Queued, its total bytes, and when its head finishes serialisation.
        self._queue: deque[_Queued] = deque()
        self._queue_bytes = 0
        self._head_done_ns = 0
        self._max_queue_ns = 0
        # In flight after the bottleneck: a heap of (release ns, seq, data, held), in release order.
        self._heap: list[tuple[int, int, bytes, bool]] = []
        self._floor_ns = _NEVER
        # Held datagrams not yet released (seq → data, in seq order), and those released behind a later
        # datagram before their deadline, whose heap entries are skipped when they surface.
        self._held: dict[int, bytes] = {}
        self._gone: set[int] = set()
        self._max_seq_out = -1
        self._settings = settings
        self._apply(settings)

    @property
    def settings(self) -> ImpairmentSettings:
        """The settings in force."""
        return self._settings

    @property
    def counters(self) -> ImpairmentCounters:
        """A snapshot of the counters."""
        return dataclasses.replace(
            self._c,
            queued_bytes=self._queue_bytes,
            queued_packets=len(self._queue),
            in_flight=len(self._queue) + len(self._heap) - len(self._gone),
            max_queue_delay_ms=self._max_queue_ns / _NS_PER_MS,
        )

    def _apply(self, s: ImpairmentSettings) -> None:
        self._loss_p = s.loss_percent / 100
        self._burst_p, self._burst_r = s.burst_transitions
        self._burst_on = s.burst_loss_percent > 0
        self._dup_p = s.duplicate_percent / 100
        self._reorder_p = s.reorder_percent / 100
        self._hold_ns = round(s.reorder_hold_ms * _NS_PER_MS)
        self._delay_ns = round(s.delay_ms * _NS_PER_MS)
        self._jitter_ns = s.jitter_ms * _NS_PER_MS
        self._ns_per_byte = None if s.bandwidth_kbps is None else 8e6 / s.bandwidth_kbps
        self._capacity_bytes = 0.0 if s.bandwidth_kbps is None else s.queue_ms * s.bandwidth_kbps / 8
        self._queue_limit = s.queue_packets if s.queue_packets is not None else 1 << 62

    def set_settings(self, settings: ImpairmentSettings, now_ns: int) -> None:
        """Switch to ``settings`` at ``now_ns`` (a scenario step). Datagrams past the bottleneck keep their
        schedule; the bottleneck's backlog drains at the new rate (all at once when the limit is lifted)."""
        now_ns = self._clock(now_ns)
        self._advance(now_ns)
        old_ns_per_byte = self._ns_per_byte
        self._apply(settings)
        self._settings = settings
        if not self._burst_on:
            self._bad = False
        q = self._queue
        if not q or old_ns_per_byte is None:
            return
        if self._ns_per_byte is None:
            while q:
                self._leave_queue(q.popleft(), now_ns)
            return
        left_bytes = (self._head_done_ns - now_ns) / old_ns_per_byte
        self._head_done_ns = now_ns + round(left_bytes * self._ns_per_byte)

    def push(self, now_ns: int, data: bytes) -> None:
        """A datagram arrives at ``now_ns``."""
        now_ns = self._clock(now_ns)
        if self._queue:
            self._advance(now_ns)
        c = self._c
        c.received += 1
        bad = False
        if self._burst_on:
            # Step the chain on every datagram so the bursts keep their statistics whatever else happens.
            if self._bad:
                self._bad = bad = self._rng_burst.random() >= self._burst_r
            else:
                self._bad = bad = self._rng_burst.random() < self._burst_p
        if self._loss_p and self._rng_loss.random() < self._loss_p:
            c.lost_random += 1
            return
        if bad:
            c.lost_burst += 1
            return
        self._admit(now_ns, data)
        if self._dup_p and self._rng_dup.random() < self._dup_p:
            c.duplicated += 1
            self._admit(now_ns, data)

    def due(self, now_ns: int) -> list[bytes]:
        """The datagrams whose release time is at or before ``now_ns``, in release order."""
        now_ns = self._clock(now_ns)
        if self._queue:
            self._advance(now_ns)
        out: list[bytes] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ns:
            _, seq, data, held = heapq.heappop(heap)
            if held:
                if seq in self._gone:
                    self._gone.discard(seq)
                    continue
                del self._held[seq]
                self._deliver(out, seq, data)
                continue
            self._deliver(out, seq, data)
            if self._held:
                # Held datagrams that entered before this one go out right behind it: the swap.
                for hseq in list(self._held):
                    if hseq > seq:
                        break
                    self._deliver(out, hseq, self._held.pop(hseq))
                    self._gone.add(hseq)
        return out

    def next_due_ns(self) -> int | None:
        """When :meth:`due` next has something to hand out (maybe early, never late); ``None`` when empty."""
        heap = self._heap
        while heap and heap[0][3] and heap[0][1] in self._gone:
            self._gone.discard(heapq.heappop(heap)[1])
        best = heap[0][0] if heap else None
        if self._queue:
            head = self._queue[0]
            # An unheld head's release bounds every later one (FIFO floor); a held head only its exit time.
            at = self._head_done_ns if head[5] else max(self._head_done_ns + head[4], self._floor_ns)
            if best is None or at < best:
                best = at
        return best

    def _clock(self, now_ns: int) -> int:
        if now_ns < self._now:
            return self._now
        self._now = now_ns
        return now_ns

    def _admit(self, now_ns: int, data: bytes) -> None:
        """A surviving datagram (or copy) enters the bottleneck, or goes straight on when there is none."""
        seq = self._seq
        self._seq = seq + 1
        prop = self._delay_ns
        if self._jitter_ns:
            prop += round(self._rng_jitter.uniform(-self._jitter_ns, self._jitter_ns))
            prop = max(prop, 0)
        held = bool(self._reorder_p) and self._rng_reorder.random() < self._reorder_p
        if held:
            self._c.reorder_held += 1
        ns_per_byte = self._ns_per_byte
        if ns_per_byte is None:
            self._fly(now_ns, seq, data, prop, held)
            return
        size = len(data)
        q = self._queue
        if q:
            backlog = self._queue_bytes - q[0][1] + (self._head_done_ns - now_ns) / ns_per_byte
            if backlog + size > self._capacity_bytes or len(q) >= self._queue_limit:
                self._c.dropped_queue += 1
                if held:
                    self._c.reorder_held -= 1
                return
        else:
            self._head_done_ns = now_ns + round(size * ns_per_byte)
        q.append((now_ns, size, seq, data, prop, held))
        self._queue_bytes += size

    def _advance(self, now_ns: int) -> None:
        """Move every datagram whose serialisation has finished by ``now_ns`` past the bottleneck."""
        q = self._queue
        ns_per_byte = self._ns_per_byte
        if ns_per_byte is None:
            return
        done = self._head_done_ns
        while q and done <= now_ns:
            self._leave_queue(q.popleft(), done)
            if q:
                done += round(q[0][1] * ns_per_byte)
        self._head_done_ns = done

    def _leave_queue(self, item: _Queued, at_ns: int) -> None:
        arrived, size, seq, data, prop, held = item
        self._queue_bytes -= size
        self._max_queue_ns = max(self._max_queue_ns, at_ns - arrived)
        self._fly(at_ns, seq, data, prop, held)

    def _fly(self, at_ns: int, seq: int, data: bytes, prop: int, held: bool) -> None:
        """Schedule the release of a datagram that left the bottleneck at ``at_ns``."""
        release = at_ns + prop
        release = max(release, self._floor_ns)
        if held:
            self._held[seq] = data
            heapq.heappush(self._heap, (release + self._hold_ns, seq, data, True))
        else:
            self._floor_ns = release
            heapq.heappush(self._heap, (release, seq, data, False))

    def _deliver(self, out: list[bytes], seq: int, data: bytes) -> None:
        out.append(data)
        c = self._c
        c.delivered += 1
        c.delivered_bytes += len(data)
        if seq < self._max_seq_out:
            c.reordered += 1
        else:
            self._max_seq_out = seq


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the file, the step and the key."""


@dataclass(frozen=True)
class ScenarioStep:
    """``settings`` apply from ``at_s`` seconds after the start until the next step."""

    at_s: float
    settings: ImpairmentSettings

    def to_dict(self) -> dict[str, Any]:
        return {"at_s": self.at_s, **self.settings.to_dict()}


@dataclass(frozen=True)
class Scenario:
    """Impairment settings that change over time: steps in increasing ``at_s`` (s). Before the first step
    (when it is not at 0) the caller's own settings apply."""

    steps: tuple[ScenarioStep, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("a scenario needs at least one step")
        prev: float | None = None
        for n, step in enumerate(self.steps, 1):
            at = _num(f"step {n}: at_s", step.at_s)
            if at < 0:
                raise ValueError(f"step {n}: at_s must be at least 0 s, got {at:g}")
            if prev is not None and at <= prev:
                raise ValueError(f"step {n}: at_s {at:g} must be greater than step {n - 1}'s at_s {prev:g}")
            prev = at

    def settings_at(self, elapsed_s: float, before: ImpairmentSettings | None = None) -> ImpairmentSettings:
        """The settings in force ``elapsed_s`` seconds after the start (``before`` ahead of the first step,
        a perfect link by default)."""
        current = before if before is not None else ImpairmentSettings()
        for step in self.steps:
            if step.at_s > elapsed_s:
                break
            current = step.settings
        return current

    def to_dict(self) -> list[dict[str, Any]]:
        """The steps as plain JSON-able values, for reports."""
        return [s.to_dict() for s in self.steps]


class ScenarioPlayer:
    """Which step of a :class:`Scenario` is in force, on the caller's clock (sans-I/O).

    Step times are ``start_ns + at_s`` (CLOCK_MONOTONIC ns). :meth:`update` returns the new settings once
    each time a step begins (the latest one if several have passed), else ``None``.
    """

    def __init__(self, scenario: Scenario, start_ns: int) -> None:
        self.scenario = scenario
        self._times = [start_ns + round(s.at_s * 1e9) for s in scenario.steps]
        self.step_index = -1

    def update(self, now_ns: int) -> ImpairmentSettings | None:
        """The settings to switch to at ``now_ns``, or ``None`` when the step has not changed."""
        i = self.step_index
        while i + 1 < len(self._times) and self._times[i + 1] <= now_ns:
            i += 1
        if i == self.step_index:
            return None
        self.step_index = i
        return self.scenario.steps[i].settings

    def next_change_ns(self) -> int | None:
        """When the next step begins, or ``None`` after the last."""
        i = self.step_index + 1
        return self._times[i] if i < len(self._times) else None


def scenario_path(name: str) -> Path:
    """The shipped scenario ``name`` (``app/net/scenarios/NAME.toml``), e.g. ``capacity-12-4-12``."""
    return SCENARIOS_DIR / f"{name}.toml"


def load_scenario(path: Path) -> Scenario:
    """Read a scenario from a TOML file of ``[[step]]`` tables, each ``at_s`` plus any
    :class:`ImpairmentSettings` field. Raises :class:`ScenarioError` naming the file, step and key."""
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    for key in doc:
        if key != "step":
            raise ScenarioError(
                f"{path}: unknown top-level key {key!r} (a scenario has only [[step]] tables)"
            )
    raw = doc.get("step")
    if raw is None:
        raise ScenarioError(f"{path}: no [[step]] tables")
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ScenarioError(f"{path}: 'step' must be an array of tables, written [[step]]")
    steps: list[ScenarioStep] = []
    for n, table in enumerate(raw, 1):
        where = f"{path}: step {n}"
        for key in table:
            if key != "at_s" and key not in _SETTING_NAMES:
                known = ", ".join(("at_s", *_SETTING_NAMES))
                raise ScenarioError(f"{where}: unknown key {key!r} (known: {known})")
        if "at_s" not in table:
            raise ScenarioError(f"{where}: missing at_s (seconds from the start)")
        values = {k: v for k, v in table.items() if k != "at_s"}
        try:
            at_s = _num("at_s", table["at_s"])
            for key, value in values.items():
                if key != "queue_packets":
                    values[key] = _num(key, value)
            settings = ImpairmentSettings(**values)
        except ValueError as exc:
            raise ScenarioError(f"{where}: {exc}") from None
        steps.append(ScenarioStep(at_s=at_s, settings=settings))
    try:
        return Scenario(steps=tuple(steps))
    except ValueError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
