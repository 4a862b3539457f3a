"""SeasonalBaseline: is this reading unusual *for this hour of this day of the week*?

Crowds follow the clock: a square is empty at 3 am and full on a Saturday
afternoon. One EWMA baseline per time-of-week bin (or time-of-day, with
`period="day"`) learns each bin's own mean and variance, so the weekend
peak it has seen for a few weeks is ordinary and the same density at 3 am
on a Tuesday is not.

Bins are `bin_minutes` wide and start at local midnight, Monday for weekly
bins; `utc_offset_minutes` turns the reading's UTC timestamp into the
city's local clock (a fixed offset: a city with daylight saving time shifts
by one bin twice a year, which a 60-minute bin absorbs in a week or two).
Each bin has its own warm-up count, so a bin seen fewer than `warm_up`
times scores 1.0. With 10-minute readings and hourly bins a bin sees 6
readings a week: the default warm-up of 12 is two weeks, and the default
alpha of 0.05 remembers about three weeks of the same hour.

>>> import numpy
>>> rng = numpy.random.default_rng(7)
>>> detector = SeasonalBaseline(period="day", bin_minutes=360)
>>> state = detector.new_state()
>>> hours = numpy.arange(0, 24 * 28, 1)  # four weeks, hourly
>>> level = numpy.where(hours % 24 >= 12, 3.0, 0.5)  # busy afternoons
>>> xs = level + rng.normal(0.0, 0.2, size=hours.size)
>>> _ = detector.score_learn_many(state, xs, hours * 3_600_000)
>>> noon, night = 13 * 3_600_000, 3 * 3_600_000
>>> round(detector.score_one(state, 3.1, noon), 3), round(detector.score_one(state, 3.1, night), 3)
(0.776, 0.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from stream.detectors.base import (
    DetectorState,
    FloatArray,
    IntArray,
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

_MINUTES = {"day": 1440, "week": 7 * 1440}
#: 1970-01-01 was a Thursday: Monday 00:00 came three days before the epoch.
_EPOCH_AFTER_MONDAY_MIN = 3 * 1440


class SeasonalBaselineState(DetectorState, tag="seasonal"):
    #: Per bin: readings learned (saturating), EWMA mean and variance.
    n: list[int] = msgspec.field(default_factory=list)
    mean: list[float] = msgspec.field(default_factory=list)
    var: list[float] = msgspec.field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SeasonalBaseline:
    """Per time-of-week (or time-of-day) bin EWMA baselines.

    O(1) time per reading; the state holds three numbers per bin, about
    19 bytes each: roughly 3.2 kB for the default 168 hourly bins of a week.
    """

    state_type: ClassVar[type[SeasonalBaselineState]] = SeasonalBaselineState

    period: Literal["week", "day"] = "week"
    bin_minutes: int = 60
    utc_offset_minutes: int = 0
    alpha: float = 0.05
    min_scale: float = 1e-6
    warm_up: int = 12
    bins: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.period not in _MINUTES:
            raise ValueError(f"period must be 'week' or 'day', got {self.period!r}")
        period_minutes = _MINUTES[self.period]
        check_count("bin_minutes", self.bin_minutes, high=period_minutes)
        if period_minutes % self.bin_minutes:
            raise ValueError(
                f"bin_minutes must divide the {self.period} ({period_minutes} minutes), "
                f"got {self.bin_minutes}"
            )
        check_count("utc_offset_minutes", self.utc_offset_minutes, low=-24 * 60, high=24 * 60)
        check_fraction("alpha", self.alpha)
        check_positive("min_scale", self.min_scale)
        check_count("warm_up", self.warm_up, low=2)
        object.__setattr__(self, "bins", period_minutes // self.bin_minutes)

    def bin_of(self, t_ms: int) -> int:
        """The bin a UTC timestamp falls in, counted from local midnight (Monday)."""
        minute = t_ms // 60_000 + self.utc_offset_minutes
        if self.period == "week":
            minute += _EPOCH_AFTER_MONDAY_MIN
        return (minute % _MINUTES[self.period]) // self.bin_minutes

    def _bins_of(self, ts_ms: IntArray) -> IntArray:
        minute = ts_ms // 60_000 + self.utc_offset_minutes
        if self.period == "week":
            minute += _EPOCH_AFTER_MONDAY_MIN
        bins: IntArray = (minute % _MINUTES[self.period]) // self.bin_minutes
        return bins

    def new_state(self) -> SeasonalBaselineState:
        return SeasonalBaselineState(
            n=[0] * self.bins, mean=[0.0] * self.bins, var=[0.0] * self.bins
        )

    def _check(self, state: SeasonalBaselineState) -> None:
        if not len(state.n) == len(state.mean) == len(state.var) == self.bins:
            raise ValueError(
                f"state has {len(state.n)} bins, this detector {self.bins}: "
                f"the state was made for other bin settings"
            )

    def score_one(self, state: SeasonalBaselineState, x: float, t_ms: int) -> float:
        x = check_value(x)
        self._check(state)
        b = self.bin_of(t_ms)
        n = state.n[b]
        if n < self.warm_up:
            return 1.0
        z = ewma_z(x, state.mean[b], state.var[b], alpha=self.alpha, min_scale=self.min_scale)
        return student_p(z, ewma_nu(n, self.alpha))

    def learn_one(self, state: SeasonalBaselineState, x: float, t_ms: int) -> None:
        x = check_value(x)
        self._check(state)
        b = self.bin_of(t_ms)
        state.n[b], state.mean[b], state.var[b] = ewma_learn(
            state.n[b],
            state.mean[b],
            state.var[b],
            x,
            alpha=self.alpha,
            cap=ewma_cap(self.alpha, self.warm_up),
        )

    def score_learn_many(
        self, state: SeasonalBaselineState, xs: npt.ArrayLike, ts_ms: npt.ArrayLike
    ) -> FloatArray:
        values, times = as_series(xs, ts_ms)
        self._check(state)
        size = len(values)
        bins = self._bins_of(times)
        n_before = np.empty(size, dtype=np.int64)
        mean_before = np.empty(size)
        var_before = np.empty(size)
        cap = ewma_cap(self.alpha, self.warm_up)
        # One EWMA per bin over that bin's readings in time order (a stable sort
        # keeps the order within a bin).
        order = np.argsort(bins, kind="stable")
        cuts = np.flatnonzero(np.diff(bins[order])) + 1
        for members in np.split(order, cuts) if size else ():
            b = int(bins[members[0]])
            trace = ewma_learn_many(
                state.n[b], state.mean[b], state.var[b], values[members], alpha=self.alpha, cap=cap
            )
            n_before[members] = trace.n_before
            mean_before[members] = trace.mean_before
            var_before[members] = trace.var_before
            state.n[b], state.mean[b], state.var[b] = trace.n, trace.mean, trace.var
        p = np.ones(size)
        on = n_before >= self.warm_up
        z = ewma_z_many(
            values[on], mean_before[on], var_before[on], alpha=self.alpha, min_scale=self.min_scale
        )
        p[on] = student_p_many(z, ewma_nu_many(n_before[on], self.alpha))
        return p
