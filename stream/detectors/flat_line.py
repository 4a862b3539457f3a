"""FlatLine: has the sensor stopped moving (stuck, frozen, or reporting a cached value)?

A reading repeats when |x - x_prev| <= `tolerance`; r is the length of the
current run of repeats. q is the learned chance that a run goes on one
more reading, an EWMA (`alpha`) of the repeat indicator over the readings
that follow a repeat, floored at `min_q` and capped at `max_q` < 1. Under
that geometric model a run at least r long has probability q^r, and that
is the p-value.

Why q is learned inside runs, not over all readings: repeats come in
clusters. A road that is dry two days in three reads exactly 0 cm for days
at a time; the fraction of readings that repeat is ~0.67, and 0.67^r would
call every dry spell stuck after a few hours. The chance that a run
*continues* is ~0.998 there, so a dry spell of usual length stays quiet and
only one several times longer than any seen (or capped at max_q: 0.9999^r
reaches 0.01 after ~46 000 readings, ~320 days at 10 minutes) is flagged.
A noisy sensor never repeats, q stays at `min_q` (its starting value), and
a stuck one reaches p < 1e-4 within four repeats.

The model adapts: a sensor that stays stuck learns that runs go on, and
after ~1/alpha readings its p climbs back (~450 readings at the default
0.01). The first stretch of alarms is the signal; so is a sensor that was
constant from the day it was installed, which can only be told apart from
a dry one by waiting.

>>> import numpy
>>> rng = numpy.random.default_rng(7)
>>> detector = FlatLine()
>>> state = detector.new_state()
>>> xs = numpy.concatenate([rng.normal(40.0, 2.0, 100), numpy.full(5, 41.3)])
>>> p = detector.score_learn_many(state, xs, numpy.arange(105) * 600_000)
>>> [round(float(v), 6) for v in p[-5:]]
[1.0, 0.05, 0.0025, 0.000211, 2.3e-05]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

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
)


class FlatLineState(DetectorState, tag="flat"):
    last_x: float | None = None
    #: Repeats in the current run (0: the last reading differed from its predecessor).
    run: int = 0
    #: EWMA of "the run went on", learned at readings that follow a repeat.
    q: float = 0.0
    #: Readings learned, saturating at warm_up.
    n: int = 0


@dataclass(frozen=True, slots=True)
class FlatLine:
    """Run length of repeats against a learned run-continuation probability.

    O(1) time; about 30 bytes of state.
    """

    state_type: ClassVar[type[FlatLineState]] = FlatLineState

    tolerance: float = 0.0
    alpha: float = 0.01
    min_q: float = 0.05
    max_q: float = 0.9999
    warm_up: int = 30

    def __post_init__(self) -> None:
        if not self.tolerance >= 0.0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance!r}")
        check_fraction("alpha", self.alpha)
        check_fraction("min_q", self.min_q)
        check_fraction("max_q", self.max_q)
        if self.min_q > self.max_q:
            raise ValueError(f"min_q ({self.min_q}) must not exceed max_q ({self.max_q})")
        check_count("warm_up", self.warm_up)

    def new_state(self) -> FlatLineState:
        return FlatLineState(q=self.min_q)

    def _q(self, q: float) -> float:
        return min(max(q, self.min_q), self.max_q)

    def score_one(self, state: FlatLineState, x: float, t_ms: int) -> float:
        x = check_value(x)
        if state.last_x is None or state.n < self.warm_up:
            return 1.0
        if not abs(x - state.last_x) <= self.tolerance:
            return 1.0
        return math.pow(self._q(state.q), state.run + 1)

    def learn_one(self, state: FlatLineState, x: float, t_ms: int) -> None:
        x = check_value(x)
        repeat = state.last_x is not None and abs(x - state.last_x) <= self.tolerance
        if state.run >= 1:
            c = 1.0 - self.alpha
            state.q = c * state.q + self.alpha * float(repeat)
        state.run = state.run + 1 if repeat else 0
        state.last_x = x
        state.n = min(state.n + 1, self.warm_up)

    def score_learn_many(
        self, state: FlatLineState, xs: npt.ArrayLike, ts_ms: npt.ArrayLike
    ) -> FloatArray:
        values, times = as_series(xs, ts_ms)
        if state.last_x is None:
            if not len(values):
                return np.ones(0)
            p0 = self.score_one(state, float(values[0]), int(times[0]))
            self.learn_one(state, float(values[0]), int(times[0]))
            return np.concatenate(([p0], self.score_learn_many(state, values[1:], times[1:])))
        size = len(values)
        if not size:
            return np.ones(0)
        index = np.arange(size, dtype=np.int64)
        repeat = np.abs(np.diff(np.concatenate(([state.last_x], values)))) <= self.tolerance
        last_break = np.maximum.accumulate(np.where(repeat, -1, index))
        run = np.where(last_break >= 0, index - last_break, state.run + index + 1)
        run_before = np.concatenate(([state.run], run[:-1]))
        q_before, q_end = masked_ewma_before(
            state.q, repeat.astype(np.float64), run_before >= 1, alpha=self.alpha
        )
        n_before = np.minimum(state.n + index, self.warm_up)
        p = np.ones(size)
        on = repeat & (n_before >= self.warm_up)
        p[on] = np.clip(q_before[on], self.min_q, self.max_q) ** run[on].astype(np.float64)
        state.q, state.run = q_end, int(run[-1])
        state.last_x, state.n = float(values[-1]), min(state.n + size, self.warm_up)
        return p
