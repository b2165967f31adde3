"""How long received audio waits before the speaker, and how fast to play it: the adaptive playout target.

Sans-I/O: every method takes the current time (CLOCK_MONOTONIC ns) and numbers; the engine's audio-playout
thread calls it and applies the answer (a resampling ratio). Tested with simulated arrivals and clocks.

Theory of operation. Decoded audio waits in a sample FIFO that the sound card's callback drains one period
(P: 2.5, 5 or 10 ms) at a time; each 10 ms frame is decoded the moment it arrives and appended. For each
frame the engine reports two numbers, both in ms from its arrival:

- its **wait**: until its first sample plays, ``(next callback − now) + FIFO level``. This is the latency
  the buffer adds, and it is continuous: it does not jump when the two sound cards' phase slides past a
  callback (the first term jumps by P and the level by −P);
- its **slack**: until the guard time before the callback that first needs it,
  ``(next callback − now) + ⌊level / P⌋·P``. The playout thread conceals when a callback is due within the
  guard time and the FIFO cannot cover it, so a frame with slack below the guard is late. Slack is wait
  minus the *remainder* ``level mod P``: it moves in whole periods as the level moves, while the
  remainder moves freely; arrival jitter moves slack and wait together and leaves the remainder alone.

Two loops use them:

- **Outer loop: the target wait follows the measured jitter.** Over the last ~5 s of frames, the
  second-smallest slack must stay at least the guard plus a 0.5 ms margin (99.6 % of frames on time, the
  criterion of WebRTC NetEq's target level, here in periods): if it falls short the target rises by enough
  whole periods (a concealment counts as a slack of zero and raises it at once); if it exceeds that by more
  than a period the target falls by one. Between those, the target is *trimmed* by however much every
  recent remainder exceeds 0.5 ms — the least wait that gives the same slack, with room for the level's
  ripple — which costs nothing in lateness and takes up to a period off the latency; and raised a little
  when the remainders, close together, slide below that (clock drift), before they wrap and a whole
  period of slack goes with them. The target moves at 2 ms/s (fed forward
  into the ratio, so the wait follows without lag), at most one step per settling time.
- **Inner loop: the ratio holds the wait at the target and learns the clock drift.** A PI controller on
  the smoothed (τ 0.5 s) wait minus the equally smoothed target: ``ratio = 1 + drift + Kp·error − slope``
  (input samples per output sample; above 1 drains). Kp = 0.1 %/ms gives a loop with a ~1 s time
  constant and damping ~0.7; the integral (time constant 50 s, learning only within 1 ms of the target,
  so a target step cannot wind it up) converges on the two sound cards' relative drift, so ±200 ppm leaves
  no standing error. The ratio stays within ±2 % (a third of a semitone at the extreme, and only while a
  large excess drains).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

MAX_DEVIATION = 0.02
"""Largest |ratio − 1| the controller asks for."""
KP_PER_MS = 0.001
"""Proportional gain: ratio change per ms of wait error."""
KI_PER_MS_S = 0.00002
"""Integral gain: drift estimate change per ms of error per second (time constant Kp/Ki = 50 s)."""
INTEGRATE_WITHIN_MS = 1.0
"""The drift estimate learns only while the wait is this close to its target."""
MAX_DRIFT = 0.001
"""Largest drift estimate (1000 ppm)."""
TAU_S = 0.5
"""Time constant of the wait filter, s."""
WINDOW = 500
"""Frames the outer loop looks at (~5 s)."""
MIN_SAMPLES = 100
"""Fewest frames since the last change before the target may fall or be trimmed."""
SETTLE_S = 3.0
"""Least time between two target changes, s (a slewed step of one period, and the inner loop settling)."""
SLEW_MS_PER_S = 2.0
"""How fast the target moves to a new value, ms per s."""
MARGIN_MS = 0.5
"""Slack kept above the guard: clock drift slides the arrival phase by 0.2 ms/s at 200 ppm, so the target
rises a few seconds before a frame would actually be late."""
REMAINDER_MS = 0.5
"""Where trimming puts the level's remainder above a whole number of periods, ms."""
SPAN_FRACTION = 0.4
"""Remainders spread over less than this fraction of a period sit together (their low end is meaningful);
spread wider, where the set starts on the period's circle is a guess, and a trim from it would be noise."""


def _cluster(values: deque[float], period: float) -> tuple[float, float]:
    """Where a set of remainders (each in [0, period)) starts, and how wide it is, read on a circle.

    Remainders just below a whole period and just above it are the same situation (the level sits at the
    edge), so the set is cut at its widest gap, not at 0: ``{0.02, 9.97}`` with a 10 ms period starts at
    −0.03 and spans 0.05. Returns (the second value from the start, as with slack; the span), in ms. Needs
    at least two values.
    """
    rs = sorted(values)
    n = len(rs)
    gaps = [rs[i + 1] - rs[i] for i in range(n - 1)] + [rs[0] + period - rs[-1]]
    w = max(range(n), key=gaps.__getitem__)
    if w == n - 1:
        second = rs[1]
    else:
        # In circular order the set runs rs[w+1] … rs[n−1] (each standing for itself minus a period),
        # then rs[0] … rs[w].
        second = rs[w + 2] - period if w + 2 <= n - 1 else rs[0]
    return second, period - gaps[w]


class PlayoutController:
    """Adaptive playout target and resampling ratio (see the module docstring).

    ``period_ms`` is the sound card's period, ``guard_ms`` how long before a callback the playout thread
    conceals when the FIFO cannot cover it, ``min_ms``/``max_ms`` bound the *allowance*: the target above
    its jitter-free least value (guard + margin + remainder).
    """

    def __init__(
        self,
        *,
        period_ms: float,
        frame_ms: float = 10.0,
        guard_ms: float = 1.5,
        min_ms: float = 0.0,
        max_ms: float = 200.0,
    ) -> None:
        if not 0 < period_ms <= frame_ms:
            raise ValueError(f"period {period_ms} ms must be in (0, frame {frame_ms} ms]")
        if not 0 <= min_ms <= max_ms:
            raise ValueError(f"need 0 <= min_ms <= max_ms, got {min_ms}, {max_ms}")
        self.period_ms = period_ms
        self.frame_ms = frame_ms
        self.guard_ms = guard_ms
        self.floor_ms = guard_ms + MARGIN_MS + REMAINDER_MS
        """The least target: no allowance for jitter at all, ms."""
        self.min_ms = min_ms
        self.max_ms = max_ms
        self.goal_ms = self.floor_ms + min(max(period_ms, min_ms), max_ms)
        """Where the target is heading, ms (without the lip-sync hold)."""
        self.hold_ms = 0.0
        """Extra wait asked from outside (lip sync), ms."""
        self._target = self.goal_ms
        self._target_f = self._target
        self.wait_ms: float | None = None
        """Smoothed wait, ms (None before the first frame)."""
        self.drift = 0.0
        """Estimated relative drift: the far sound card's rate / ours − 1."""
        self.ratio = 1.0
        self._slack: deque[float] = deque(maxlen=WINDOW)
        self._remainder: deque[float] = deque(maxlen=WINDOW)
        self._fresh = 0
        self._last_ns: int | None = None
        self._last_change_ns: int | None = None
        self._last_trim_ns: int | None = None
        self.counters = {"raises": 0, "lowers": 0, "trims": 0, "late": 0}

    @property
    def target_ms(self) -> float:
        """The wait the inner loop steers to now, ms (moving to :attr:`goal_ms` + hold at the slew rate)."""
        return self._target

    @property
    def allowance_ms(self) -> float:
        """The goal above its jitter-free least value, ms."""
        return self.goal_ms - self.floor_ms

    @property
    def drift_ppm(self) -> float:
        return self.drift * 1e6

    # -- outer loop --------------------------------------------------------------------------------------

    def on_frame(self, wait_ms: float, slack_ms: float, now_ns: int) -> float:
        """A frame was decoded on arrival: its wait and slack (ms). Returns the ratio to resample at."""
        self._slack.append(slack_ms)
        self._remainder.append(wait_ms - slack_ms)
        self._fresh += 1
        self._decide(now_ns)
        return self._inner(wait_ms, now_ns)

    def on_late(self, now_ns: int) -> None:
        """A callback could not be covered in time (the engine concealed): a slack of zero."""
        self.counters["late"] += 1
        self._slack.append(0.0)
        self._fresh += 1
        self._decide(now_ns, urgent=True)

    def _decide(self, now_ns: int, *, urgent: bool = False) -> None:
        if len(self._slack) < 2:
            return
        settled = self._last_change_ns is None or now_ns - self._last_change_ns >= SETTLE_S * 1e9
        low = min(self._slack) if urgent else sorted(self._slack)[1]
        want = self.guard_ms + MARGIN_MS
        if low < want and (settled or urgent):
            periods = max(1, math.ceil((want - low) / self.period_ms))
            self._move(self.goal_ms + periods * self.period_ms, now_ns, "raises")
            if urgent:
                # The engine has just concealed a period into the FIFO: the wait is already there.
                self._target = self.goal_ms + self.hold_ms
            return
        if self._fresh < MIN_SAMPLES // 2:
            return
        low_r, span = _cluster(self._remainder, self.period_ms)
        if low_r < REMAINDER_MS - 0.35 and span < SPAN_FRACTION * self.period_ms:
            # The remainders sit together and are sliding toward a wrap (clock drift moves them 0.2 ms/s at
            # 200 ppm): put them back before a whole period of slack is lost with them. No settling wait,
            # since a wrap would come within seconds.
            self._trim(REMAINDER_MS - low_r)
            return
        if not settled or self._fresh < MIN_SAMPLES:
            return
        if low >= want + self.period_ms + 0.25:
            self._move(self.goal_ms - self.period_ms, now_ns, "lowers")
            return
        # Taking δ off the wait keeps every frame's slack as long as δ stays below every remainder (the
        # second-smallest, like the slack): a remainder that has wrapped past a whole period shows as a
        # small one and blocks the trim.
        spare = low_r - REMAINDER_MS
        if spare > 0.25 and (self._last_trim_ns is None or now_ns - self._last_trim_ns >= SETTLE_S * 1e9):
            self._last_trim_ns = now_ns
            self._trim(-spare)

    def _trim(self, delta_ms: float) -> None:
        """Move the goal by ``delta_ms`` without changing any slack: the history stays valid, shifted."""
        goal = min(max(self.goal_ms + delta_ms, self.floor_ms + self.min_ms), self.floor_ms + self.max_ms)
        delta = goal - self.goal_ms
        if abs(delta) < 1e-9:
            return
        self.goal_ms = goal
        self.counters["trims"] += 1
        shifted = [r + delta for r in self._remainder]
        self._remainder.clear()
        self._remainder.extend(shifted)

    def _move(self, goal: float, now_ns: int, counter: str) -> None:
        goal = min(max(goal, self.floor_ms + self.min_ms), self.floor_ms + self.max_ms)
        if abs(goal - self.goal_ms) < 1e-9:
            return
        self.goal_ms = goal
        self.counters[counter] += 1
        self._last_change_ns = now_ns
        # What was measured at the old target says nothing about the new one.
        self._slack.clear()
        self._remainder.clear()
        self._fresh = 0

    # -- inner loop --------------------------------------------------------------------------------------

    def _inner(self, wait_ms: float, now_ns: int) -> float:
        if self._last_ns is None or self.wait_ms is None:
            self.wait_ms = wait_ms
            self._target_f = self._target
            self._last_ns = now_ns
            return self.ratio
        dt = max(0.0, (now_ns - self._last_ns) / 1e9)
        self._last_ns = now_ns
        alpha = min(1.0, dt / TAU_S)
        self.wait_ms += alpha * (wait_ms - self.wait_ms)
        goal = self.goal_ms + self.hold_ms
        step = max(-SLEW_MS_PER_S * dt, min(SLEW_MS_PER_S * dt, goal - self._target))
        self._target += step
        slope = step / dt if dt > 0 else 0.0  # ms of target per s
        # Compare like with like: the smoothed wait trails a moving target by slope × τ, so the target goes
        # through the same filter before the two are compared.
        self._target_f += alpha * (self._target - self._target_f)
        error = self.wait_ms - self._target_f
        if abs(error) < INTEGRATE_WITHIN_MS:
            self.drift = min(max(self.drift + KI_PER_MS_S * error * dt, -MAX_DRIFT), MAX_DRIFT)
        # Feed-forward: a rising target needs playback slower by its slope (1 ms/s = 1e-3 of ratio).
        deviation = self.drift + KP_PER_MS * error - slope / 1000.0
        self.ratio = 1.0 + min(max(deviation, -MAX_DEVIATION), MAX_DEVIATION)
        return self.ratio

    def reset(self) -> None:
        """A new stream: keep the learned drift and target, forget the wait and the history."""
        self.wait_ms = None
        self._last_ns = None
        self._slack.clear()
        self._remainder.clear()
        self._fresh = 0
        self._target = self.goal_ms + self.hold_ms
        self.ratio = 1.0 + self.drift

    def stats(self) -> dict[str, Any]:
        return {
            "target_ms": round(self.target_ms, 2),
            "allowance_ms": round(self.allowance_ms, 2),
            "hold_ms": round(self.hold_ms, 2),
            "wait_ms": None if self.wait_ms is None else round(self.wait_ms, 2),
            "ratio": round(self.ratio, 6),
            "drift_ppm": round(self.drift_ppm, 1),
            **self.counters,
        }


class RateEstimator:
    """The rate of a count against a clock, by least squares over a sliding window: how fast a sound card
    really runs.

    ``add(t_ns, count)`` records that ``count`` (samples made or played, cumulative) had been reached at
    CLOCK_MONOTONIC ``t_ns``; :meth:`rate` is the fitted slope in counts per second over the last
    ``window_s``. Two such rates (the twin's frames by their capture times, our callbacks by their wall
    times) give the two sound cards' relative drift without touching the playout loop. Scheduling jitter
    of a millisecond on each point leaves ~2 ppm of error over a 30 s window. Sans-I/O; one thread.
    """

    def __init__(self, window_s: float = 30.0, min_span_s: float = 5.0) -> None:
        self.window_ns = int(window_s * 1e9)
        self.min_span_ns = int(min_span_s * 1e9)
        self._points: deque[tuple[int, int]] = deque()

    def add(self, t_ns: int, count: int) -> None:
        points = self._points
        if points and t_ns <= points[-1][0]:
            return  # out of order or repeated: the fit needs time to move forward
        points.append((t_ns, count))
        while t_ns - points[0][0] > self.window_ns:
            points.popleft()

    def reset(self) -> None:
        self._points.clear()

    def rate(self) -> float | None:
        """Counts per second, or None until the window spans ``min_span_s``."""
        points = self._points
        if len(points) < 3 or points[-1][0] - points[0][0] < self.min_span_ns:
            return None
        t0, c0 = points[0]
        n = len(points)
        st = sc = stt = stc = 0.0
        for t, c in points:
            x = (t - t0) / 1e9
            y = float(c - c0)
            st += x
            sc += y
            stt += x * x
            stc += x * y
        den = n * stt - st * st
        if den <= 0:
            return None
        return (n * stc - st * sc) / den


def drift_ppm(far: RateEstimator, near: RateEstimator) -> float | None:
    """How much faster the far sound card runs than ours, ppm, from their fitted rates."""
    a, b = far.rate(), near.rate()
    if a is None or b is None or b <= 0:
        return None
    return (a / b - 1.0) * 1e6
