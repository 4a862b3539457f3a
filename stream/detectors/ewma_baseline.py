"""EwmaBaseline: is this reading far from the exponentially weighted mean?

The mean and variance follow the standard incremental recursion
(d = x - mean; mean += alpha d; var = (1 - alpha)(var + alpha d^2)), which
forgets the past at rate `alpha` per reading: 1/alpha readings is the
memory, so the default 0.02 at 10-minute readings remembers about 8 hours.
For the first 1/alpha readings the weight is 1/n instead (the plain running
mean), so the early estimate is not pulled towards zero.

z = (x - mean) / sd, with sd the predictive spread of the next reading
(floored at `min_scale`), and p is its two-sided Student-t tail with the
effective sample size of the variance, (2 - alpha) / alpha: about 99 degrees
of freedom at the default, barely different from the normal.

>>> import numpy
>>> rng = numpy.random.default_rng(7)
>>> detector = EwmaBaseline(alpha=0.05)
>>> state = detector.new_state()
>>> for i, x in enumerate(rng.normal(5.0, 1.0, size=200)):
...     detector.learn_one(state, float(x), i * 600_000)
>>> round(detector.score_one(state, 6.0, 0), 3), round(detector.score_one(state, 10.0, 0), 3)
(0.322, 0.0)
"""

from __future__ import annotations

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


class EwmaBaselineState(DetectorState, tag="ewma"):
    #: Readings learned, saturating once it no longer matters (see `ewma_cap`).
    n: int = 0
    mean: float = 0.0
    var: float = 0.0


@dataclass(frozen=True, slots=True)
class EwmaBaseline:
    """EWMA mean/variance baseline. O(1) time and about 25 bytes of state per series."""

    state_type: ClassVar[type[EwmaBaselineState]] = EwmaBaselineState

    alpha: float = 0.02
    min_scale: float = 1e-6
    warm_up: int = 30

    def __post_init__(self) -> None:
        check_fraction("alpha", self.alpha)
        check_positive("min_scale", self.min_scale)
        check_count("warm_up", self.warm_up, low=2)

    def new_state(self) -> EwmaBaselineState:
        return EwmaBaselineState()

    def score_one(self, state: EwmaBaselineState, x: float, t_ms: int) -> float:
        x = check_value(x)
        if state.n < self.warm_up:
            return 1.0
        z = ewma_z(x, state.mean, state.var, alpha=self.alpha, min_scale=self.min_scale)
        return student_p(z, ewma_nu(state.n, self.alpha))

    def learn_one(self, state: EwmaBaselineState, x: float, t_ms: int) -> None:
        state.n, state.mean, state.var = ewma_learn(
            state.n,
            state.mean,
            state.var,
            check_value(x),
            alpha=self.alpha,
            cap=ewma_cap(self.alpha, self.warm_up),
        )

    def score_learn_many(
        self, state: EwmaBaselineState, xs: npt.ArrayLike, ts_ms: npt.ArrayLike
    ) -> FloatArray:
        values, _ = as_series(xs, ts_ms)
        trace = ewma_learn_many(
            state.n,
            state.mean,
            state.var,
            values,
            alpha=self.alpha,
            cap=ewma_cap(self.alpha, self.warm_up),
        )
        p = np.ones(len(values))
        on = trace.n_before >= self.warm_up
        z = ewma_z_many(
            values[on],
            trace.mean_before[on],
            trace.var_before[on],
            alpha=self.alpha,
            min_scale=self.min_scale,
        )
        p[on] = student_p_many(z, ewma_nu_many(trace.n_before[on], self.alpha))
        state.n, state.mean, state.var = trace.n, trace.mean, trace.var
        return p
