"""Spike: did the value jump further in one reading than it ever usually does?

The jump is d = x - x_prev; its scale is the median absolute jump over the
last `window` jumps (floored at `min_scale`), and the robust z is
0.6745 d / scale, which is standard normal when the jumps are. The p-value
is the two-sided Student-t tail with 0.3675 * window degrees of freedom,
for the same reason as RobustBaseline's: the scale is estimated from a
finite window.

It sees only the jump in, so the reading that ends a spike (the jump back)
scores low too, and so does the first reading of a genuine step; the
CUSUM and the baselines are what tell those apart. Typical spikes are
ultrasonic echoes off a passing lorry, or a gas sensor knocked when the
cover is lifted.

>>> import numpy
>>> rng = numpy.random.default_rng(7)
>>> detector = Spike()
>>> state = detector.new_state()
>>> xs = rng.normal(12.0, 0.4, size=200)
>>> _ = detector.score_learn_many(state, xs, numpy.arange(200) * 600_000)
>>> last = float(xs[-1])
>>> round(detector.score_one(state, last + 0.5, 0), 3)
0.307
>>> round(detector.score_one(state, last + 6.0, 0), 3)
0.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import msgspec
import numpy as np
import numpy.typing as npt

from stream.detectors.base import (
    MAD_EFFICIENCY,
    MAD_Z,
    DetectorState,
    FloatArray,
    as_series,
    check_count,
    check_positive,
    check_value,
    median_sorted,
    student_p,
    student_p_many,
    window_stats,
)


class SpikeState(DetectorState, tag="spike"):
    last_x: float | None = None
    #: |x - x_prev| of the last `window` readings, oldest first.
    jumps: list[float] = msgspec.field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Spike:
    """One-reading jump against the median absolute jump of a sliding window.

    O(window) time per reading (a fixed window: O(1)); the state is at most
    about 9 * window + 13 bytes.
    """

    state_type: ClassVar[type[SpikeState]] = SpikeState

    window: int = 64
    min_scale: float = 1e-6
    warm_up: int = 16

    def __post_init__(self) -> None:
        check_count("window", self.window, low=3)
        check_positive("min_scale", self.min_scale)
        check_count("warm_up", self.warm_up, low=3, high=self.window)

    def new_state(self) -> SpikeState:
        return SpikeState()

    def score_one(self, state: SpikeState, x: float, t_ms: int) -> float:
        x = check_value(x)
        size = len(state.jumps)
        if state.last_x is None or size < self.warm_up:
            return 1.0
        scale = max(median_sorted(sorted(state.jumps)), self.min_scale)
        return student_p(MAD_Z * (x - state.last_x) / scale, MAD_EFFICIENCY * size)

    def learn_one(self, state: SpikeState, x: float, t_ms: int) -> None:
        x = check_value(x)
        if state.last_x is not None:
            state.jumps.append(abs(x - state.last_x))
            if len(state.jumps) > self.window:
                del state.jumps[0]
        state.last_x = x

    def score_learn_many(
        self, state: SpikeState, xs: npt.ArrayLike, ts_ms: npt.ArrayLike
    ) -> FloatArray:
        values, times = as_series(xs, ts_ms)
        if state.last_x is None:
            if not len(values):
                return np.ones(0)
            self.learn_one(state, float(values[0]), int(times[0]))
            return np.concatenate(([1.0], self.score_learn_many(state, values[1:], times[1:])))
        jumps = np.diff(np.concatenate(([state.last_x], values)))
        magnitude = np.abs(jumps)
        stats = window_stats(state.jumps, magnitude, width=self.window, with_mad=False)
        p = np.ones(len(values))
        on = stats.size >= self.warm_up
        z = MAD_Z * jumps[on] / np.maximum(stats.median[on], self.min_scale)
        p[on] = student_p_many(z, MAD_EFFICIENCY * stats.size[on])
        state.jumps = (state.jumps + magnitude[-self.window :].tolist())[-self.window :]
        if len(values):
            state.last_x = float(values[-1])
        return p
