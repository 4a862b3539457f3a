"""CusumChange: has the level shifted, even by less than the noise?

A slow EWMA baseline (`alpha`, default 0.01: a memory of ~100 readings)
standardises each reading, z = (x - mean) / sd. Two cumulative sums collect
the evidence for a shift up and down:

    S+ = max(0, S+ + z - k)        S- = max(0, S- - z - k)

Under normal behaviour z - k is a random walk with drift -k, and the chance
that such a walk ever climbs to S is about exp(-2 k S) (Siegmund's
approximation; 2k is the exact exponent for normal steps). Adding his
correction for the overshoot, 0.583 sd, and doubling for the two sides,
p = min(1, 2 exp(-2 k (max(S+, S-) + 0.583))). Without the correction the
p-values are about twice too large (half the nominal false-alarm rate). A shift of d standard
deviations adds about d - k per reading: a shift of 1.5 sd reaches
p < 1e-4 within ten readings, where a single reading would never be
unusual enough.

No reset is needed: once the baseline has absorbed the new level, z is
back around 0, the drift -k drains S by k per reading and max(0, .) holds
it at zero, exactly as after any other excursion. Each z is clipped to
+-`z_cap` before it is added, so one glitch can raise S by at most
z_cap - k and cannot keep the detector alarmed for weeks; spikes are the
Spike detector's job.

>>> import numpy
>>> rng = numpy.random.default_rng(7)
>>> detector = CusumChange()
>>> state = detector.new_state()
>>> xs = numpy.concatenate([rng.normal(0.0, 1.0, 300), rng.normal(1.5, 1.0, 20)])
>>> p = detector.score_learn_many(state, xs, numpy.arange(320) * 600_000)
>>> round(float(p[299]), 3)  # the last reading before the shift
0.597
>>> int(numpy.argmax(p[300:] < 1e-4)) + 1  # readings into the shift until p < 1e-4
7
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
    check_positive,
    check_value,
    ewma_cap,
    ewma_learn,
    ewma_learn_many,
    ewma_z,
    ewma_z_many,
    lindley_many,
)

#: Siegmund's correction for the overshoot of a random walk over its boundary,
#: -zeta(1/2) / sqrt(2 pi) standard deviations: P(S >= h) ~ exp(-2 k (h + 0.583)).
_OVERSHOOT = 0.5826


class CusumChangeState(DetectorState, tag="cusum"):
    n: int = 0
    mean: float = 0.0
    var: float = 0.0
    #: Evidence for a shift up and down, in standard deviations.
    up: float = 0.0
    down: float = 0.0


@dataclass(frozen=True, slots=True)
class CusumChange:
    """Two-sided CUSUM against a slow EWMA baseline. O(1) time, about 45 bytes of state."""

    state_type: ClassVar[type[CusumChangeState]] = CusumChangeState

    alpha: float = 0.01
    k: float = 0.5
    z_cap: float = 4.0
    min_scale: float = 1e-6
    warm_up: int = 50

    def __post_init__(self) -> None:
        check_fraction("alpha", self.alpha)
        check_positive("k", self.k)
        check_positive("z_cap", self.z_cap)
        if self.z_cap <= self.k:
            raise ValueError(f"z_cap must exceed k ({self.k}), got {self.z_cap!r}")
        check_positive("min_scale", self.min_scale)
        check_count("warm_up", self.warm_up, low=2)

    def new_state(self) -> CusumChangeState:
        return CusumChangeState()

    def _p(self, s: float) -> float:
        return min(1.0, 2.0 * math.exp(-2.0 * self.k * (s + _OVERSHOOT)))

    def _steps(self, state: CusumChangeState, x: float) -> tuple[float, float]:
        z = ewma_z(x, state.mean, state.var, alpha=self.alpha, min_scale=self.min_scale)
        z = min(max(z, -self.z_cap), self.z_cap)
        return max(0.0, state.up + (z - self.k)), max(0.0, state.down + (-z - self.k))

    def score_one(self, state: CusumChangeState, x: float, t_ms: int) -> float:
        x = check_value(x)
        if state.n < self.warm_up:
            return 1.0
        return self._p(max(self._steps(state, x)))

    def learn_one(self, state: CusumChangeState, x: float, t_ms: int) -> None:
        x = check_value(x)
        if state.n >= self.warm_up:
            state.up, state.down = self._steps(state, x)
        state.n, state.mean, state.var = ewma_learn(
            state.n,
            state.mean,
            state.var,
            x,
            alpha=self.alpha,
            cap=ewma_cap(self.alpha, self.warm_up),
        )

    def score_learn_many(
        self, state: CusumChangeState, xs: npt.ArrayLike, ts_ms: npt.ArrayLike
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
        # n only grows, so the readings past warm-up are a suffix.
        first = int(np.searchsorted(trace.n_before, self.warm_up))
        if first < len(values):
            z = ewma_z_many(
                values[first:],
                trace.mean_before[first:],
                trace.var_before[first:],
                alpha=self.alpha,
                min_scale=self.min_scale,
            )
            z = np.clip(z, -self.z_cap, self.z_cap)
            up = lindley_many(state.up, z - self.k)
            down = lindley_many(state.down, -z - self.k)
            tail = np.exp(-2.0 * self.k * (np.maximum(up, down) + _OVERSHOOT))
            p[first:] = np.minimum(1.0, 2.0 * tail)
            state.up, state.down = float(up[-1]), float(down[-1])
        state.n, state.mean, state.var = trace.n, trace.mean, trace.var
        return p
