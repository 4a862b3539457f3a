"""Dropout: did readings go missing before this one?

The expected interval is the median of the last `window` intervals between
readings (a median, not a mean, so the gaps it is looking for do not
stretch the interval it measures them with, and so the count below is the
same integer in the loop and the vectorised path). A gap dt then hides
m = max(0, round(dt / interval) - 1) missed readings, rounding half up.
pi is the learned chance that a gap has misses at all, an EWMA (`alpha`)
of that indicator floored at `min_pi`, and p = pi^m: the chance of m
misses in a row if each expected reading goes missing independently with
probability pi. A lossy radio link learns a high pi and its usual single
misses stay quiet; six in a row on a link that never drops is p = 1.6e-8.

It scores the reading that *ends* a gap; a node that is still silent is
for the presence sweep (stream/presence.py) to report. A reading not later
than the last one scores 1.0 and is not learned.

>>> import numpy
>>> rng = numpy.random.default_rng(7)
>>> detector = Dropout()
>>> state = detector.new_state()
>>> ts = numpy.cumsum(rng.integers(590_000, 610_000, size=100))
>>> _ = detector.score_learn_many(state, numpy.zeros(100), ts)
>>> t = int(ts[-1])
>>> [round(detector.score_one(state, 0.0, t + k * 600_000), 6) for k in (1, 2, 7)]
[1.0, 0.05, 0.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import msgspec
import numpy as np
import numpy.typing as npt

from stream.detectors.base import (
    DetectorState,
    FloatArray,
    as_series,
    check_count,
    check_fraction,
    check_value,
    masked_ewma_before,
    median_sorted,
    window_stats,
)


class DropoutState(DetectorState, tag="dropout"):
    last_t: int | None = None
    #: The last `window` intervals in ms, oldest first.
    intervals: list[int] = msgspec.field(default_factory=list)
    #: EWMA of "this gap had misses".
    pi: float = 0.0


@dataclass(frozen=True, slots=True)
class Dropout:
    """Missed readings before this one, against a learned miss probability.

    O(window) time per reading (a fixed window: O(1)); the state is at most
    about 5 * window + 15 bytes (intervals under ~70 minutes take 5 bytes each).
    """

    state_type: ClassVar[type[DropoutState]] = DropoutState

    window: int = 16
    alpha: float = 0.02
    min_pi: float = 0.05
    warm_up: int = 8

    def __post_init__(self) -> None:
        check_count("window", self.window)
        check_fraction("alpha", self.alpha)
        check_fraction("min_pi", self.min_pi)
        check_count("warm_up", self.warm_up, high=self.window)

    def new_state(self) -> DropoutState:
        return DropoutState()

    @staticmethod
    def _missed(dt: float, interval: float) -> int:
        return max(0, math.floor(dt / interval + 0.5) - 1)

    def score_one(self, state: DropoutState, x: float, t_ms: int) -> float:
        check_value(x)
        if state.last_t is None or t_ms <= state.last_t or len(state.intervals) < self.warm_up:
            return 1.0
        missed = self._missed(t_ms - state.last_t, median_sorted(sorted(state.intervals)))
        return math.pow(max(state.pi, self.min_pi), missed)

    def learn_one(self, state: DropoutState, x: float, t_ms: int) -> None:
        check_value(x)
        t_ms = int(t_ms)
        if state.last_t is not None:
            if t_ms <= state.last_t:
                return
            dt = t_ms - state.last_t
            if len(state.intervals) >= self.warm_up:
                missed = self._missed(dt, median_sorted(sorted(state.intervals)))
                state.pi = (1.0 - self.alpha) * state.pi + self.alpha * float(missed > 0)
            state.intervals.append(dt)
            if len(state.intervals) > self.window:
                del state.intervals[0]
        state.last_t = t_ms

    def score_learn_many(
        self, state: DropoutState, xs: npt.ArrayLike, ts_ms: npt.ArrayLike
    ) -> FloatArray:
        values, times = as_series(xs, ts_ms)
        if state.last_t is None:
            if not len(values):
                return np.ones(0)
            self.learn_one(state, float(values[0]), int(times[0]))
            return np.concatenate(([1.0], self.score_learn_many(state, values[1:], times[1:])))
        p = np.ones(len(values))
        latest = np.maximum.accumulate(np.concatenate(([state.last_t], times)))[:-1]
        taken = np.flatnonzero(times > latest)
        if not taken.size:
            return p
        gaps = np.diff(np.concatenate(([state.last_t], times[taken])))
        stats = window_stats(
            [float(v) for v in state.intervals],
            gaps.astype(np.float64),
            width=self.window,
            with_mad=False,
        )
        on = stats.size >= self.warm_up
        missed = np.zeros(len(gaps))
        missed[on] = np.maximum(0.0, np.floor(gaps[on] / stats.median[on] + 0.5) - 1.0)
        pi_before, state.pi = masked_ewma_before(
            state.pi, (missed > 0).astype(np.float64), on, alpha=self.alpha
        )
        p[taken] = np.maximum(pi_before, self.min_pi) ** missed
        state.intervals = (state.intervals + gaps[-self.window :].tolist())[-self.window :]
        state.last_t = int(times[taken[-1]])
        return p
