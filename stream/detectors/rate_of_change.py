"""RateOfChange: is the value moving faster than it usually does?

The rate is (x - x_prev) / dt in units per minute, and an EWMA mean and
variance of past rates is the baseline (the same recursion as
EwmaBaseline). Water that rises 5 cm in ten minutes on a street that has
never risen more than 1 cm is a flash flood before any depth threshold is
crossed. `direction="rise"` (or `"fall"`) makes the test one-sided, so a
draining street is not an anomaly.

A reading whose timestamp is not later than the last one has no interval:
it scores 1.0 and is not learned (a resent or reordered reading must not
poison the baseline with an infinite rate). The model assumes roughly
regular readings; a burst of readings milliseconds apart turns noise into
enormous rates.

>>> import numpy
>>> rng = numpy.random.default_rng(7)
>>> detector = RateOfChange(direction="rise")
>>> state = detector.new_state()
>>> depth = 2.0 + rng.normal(0.0, 0.3, size=200)
>>> _ = detector.score_learn_many(state, depth, numpy.arange(200) * 600_000)
>>> later = 200 * 600_000
>>> round(detector.score_one(state, depth[-1] - 2.0, later), 3)
1.0
>>> round(detector.score_one(state, depth[-1] + 5.0, later), 3)
0.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from stream.detectors.base import (
    DetectorState,
    Direction,
    FloatArray,
    as_series,
    check_count,
    check_direction,
    check_fraction,
    check_positive,
    check_value,
    ewma_cap,
    ewma_learn,
    ewma_learn_many,
    ewma_nu,
    ewma_nu_many,
    ewma_z,
    ewma_z_many,
    student_p,
    student_p_many,
)

_MS_PER_MINUTE = 60_000.0


class RateOfChangeState(DetectorState, tag="rate"):
    #: The last reading learned; None before the first.
    last_t: int | None = None
    last_x: float = 0.0
    #: EWMA of past rates (units per minute).
    n: int = 0
    mean: float = 0.0
    var: float = 0.0


@dataclass(frozen=True, slots=True)
class RateOfChange:
    """Rate per minute against an EWMA of past rates. O(1) time, about 45 bytes of state."""

    state_type: ClassVar[type[RateOfChangeState]] = RateOfChangeState

    alpha: float = 0.02
    direction: Direction = "both"
    #: Smallest spread of rates taken seriously, in units per minute.
    min_scale: float = 1e-6
    warm_up: int = 30

    def __post_init__(self) -> None:
        check_fraction("alpha", self.alpha)
        check_direction(self.direction)
        check_positive("min_scale", self.min_scale)
        check_count("warm_up", self.warm_up, low=2)

    def new_state(self) -> RateOfChangeState:
        return RateOfChangeState()

    def score_one(self, state: RateOfChangeState, x: float, t_ms: int) -> float:
        x = check_value(x)
        if state.last_t is None or t_ms <= state.last_t or state.n < self.warm_up:
            return 1.0
        rate = (x - state.last_x) / ((t_ms - state.last_t) / _MS_PER_MINUTE)
        z = ewma_z(rate, state.mean, state.var, alpha=self.alpha, min_scale=self.min_scale)
        return student_p(z, ewma_nu(state.n, self.alpha), self.direction)

    def learn_one(self, state: RateOfChangeState, x: float, t_ms: int) -> None:
        x = check_value(x)
        t_ms = int(t_ms)
        if state.last_t is not None:
            if t_ms <= state.last_t:
                return
            rate = (x - state.last_x) / ((t_ms - state.last_t) / _MS_PER_MINUTE)
            state.n, state.mean, state.var = ewma_learn(
                state.n,
                state.mean,
                state.var,
                rate,
                alpha=self.alpha,
                cap=ewma_cap(self.alpha, self.warm_up),
            )
        state.last_t, state.last_x = t_ms, x

    def score_learn_many(
        self, state: RateOfChangeState, xs: npt.ArrayLike, ts_ms: npt.ArrayLike
    ) -> FloatArray:
        values, times = as_series(xs, ts_ms)
        if state.last_t is None:
            if not len(values):
                return np.ones(0)
            # The first reading only sets the starting point.
            self.learn_one(state, float(values[0]), int(times[0]))
            rest = self.score_learn_many(state, values[1:], times[1:])
            return np.concatenate(([1.0], rest))
        p = np.ones(len(values))
        # A reading counts if it is later than every one before it (learned or not).
        latest = np.maximum.accumulate(np.concatenate(([state.last_t], times)))[:-1]
        taken = np.flatnonzero(times > latest)
        if not taken.size:
            return p
        t = np.concatenate(([state.last_t], times[taken]))
        x = np.concatenate(([state.last_x], values[taken]))
        rates = np.diff(x) / (np.diff(t) / _MS_PER_MINUTE)
        trace = ewma_learn_many(
            state.n,
            state.mean,
            state.var,
            rates,
            alpha=self.alpha,
            cap=ewma_cap(self.alpha, self.warm_up),
        )
        on = trace.n_before >= self.warm_up
        z = ewma_z_many(
            rates[on],
            trace.mean_before[on],
            trace.var_before[on],
            alpha=self.alpha,
            min_scale=self.min_scale,
        )
        p[taken[on]] = student_p_many(
            z, ewma_nu_many(trace.n_before[on], self.alpha), self.direction
        )
        state.n, state.mean, state.var = trace.n, trace.mean, trace.var
        state.last_t, state.last_x = int(t[-1]), float(x[-1])
        return p
