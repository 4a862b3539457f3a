"""Trend rules over whole arrays for `stream.replay`: rate, forecast and composite.

The live rules keep, per metric, a window of the last points (at most
`MAX_POINTS`, none older than `span_minutes` before the newest) and fit a
Theil-Sen line to it at every reading (`stream.trend`). Replay computes the
same fits for a whole block at once (`TrendWindow.fits`):

- which rows enter the window: a row older than the newest point so far is
  left out (`keep_recent` drops late resends), so the accepted rows are
  those at or above the running maximum of the times;
- each row's window is then a contiguous run of the accepted points, ending
  at the last one accepted at or before the row, cut to the span
  (`searchsorted`) and to `MAX_POINTS`;
- the fit is the median of the pairwise slopes of that run and the median
  of what each point leaves, taken as `np.median` takes them (the middle
  one, or the mean of the middle two, with the missing pairs as NaN, which
  orders last). The slopes are the same
  IEEE operations on the same numbers as `theil_sen`'s, so the medians, and
  the levels after them, are the same bit for bit.

Rules reading one metric over one span share one window (`TrendWindows`),
so a block's fits are made once for all of them. The level machine then
runs over the rows as for threshold rules (`run_steps`). The hypothesis test
in tests/unit/stream/test_replay.py checks every row's level against
`RuleEngine.evaluate` on series with gaps, repeats and backwards time.

>>> window = TrendWindow(span_ms=30 * 60_000)
>>> ts = np.arange(5, dtype=np.int64) * 60_000
>>> fit = window.fits(ts, np.array([1.0, 2.0, 3.0, 40.0, 5.0]), min_points=3)
>>> [None if np.isnan(s) else round(float(s) * 60_000, 3) for s in fit.slope]
[None, None, 1.0, 7.0, 1.0]
>>> float(fit.at_last[-1]), int(fit.now[-1])
(5.0, 240000)
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from cityvitals.levels import Level
from stream.replay_csv import BoolArray, FloatArray, IntArray
from stream.replay_rules import LevelArray, level_codes, run_steps
from stream.rules import (
    CompositeRule,
    ForecastRule,
    LevelThresholds,
    RateRule,
    RuleState,
    Steps,
)
from stream.trend import MAX_POINTS

__all__ = [
    "CompositeTrack",
    "ForecastTrack",
    "RateTrack",
    "TrendFits",
    "TrendWindow",
    "TrendWindows",
]

#: Rows fitted at once: at most (rows x 120 pairs) float64 temporaries, ~8 MB each.
_CHUNK = 8_192
_NO_TIME = np.iinfo(np.int64).min


@dataclass(frozen=True, slots=True)
class TrendFits:
    """Per row: the Theil-Sen slope (value per ms) and fitted value at the window's
    newest point (NaN where the window gives no trend), that point's time, and how
    many points the window holds."""

    slope: FloatArray
    at_last: FloatArray
    now: IntArray
    points: IntArray

    @property
    def fitted(self) -> BoolArray:
        out: BoolArray = ~np.isnan(self.slope)
        return out

    def at_least(self, min_points: int) -> TrendFits:
        """These fits as a `Trend` with `min_points` gives them: none for shorter windows."""
        short = self.points < min_points
        if not short.any():
            return self
        slope, at_last = self.slope.copy(), self.at_last.copy()
        slope[short] = at_last[short] = np.nan
        return TrendFits(slope=slope, at_last=at_last, now=self.now, points=self.points)


@dataclass(slots=True)
class TrendWindow:
    """One metric's trend window, carried from block to block as `keep_recent` keeps it."""

    span_ms: int
    ts: IntArray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    values: FloatArray = field(default_factory=lambda: np.empty(0, dtype=np.float64))

    def fits(self, ts: IntArray, values: FloatArray, *, min_points: int = 2) -> TrendFits:
        """Add the block's points (in order) and give the fit after each row."""
        carried = len(self.ts)
        newest = self.ts[-1] if carried else _NO_TIME
        before = np.maximum.accumulate(np.concatenate(([newest], ts)))[:-1]
        accepted = ts >= before
        points_ts = np.concatenate((self.ts, ts[accepted]))
        points_v = np.concatenate((self.values, values[accepted]))
        # Each row's window ends at the last point accepted at or before it.
        last = carried - 1 + np.cumsum(accepted)
        ends = np.arange(max(carried - 1, 0), len(points_ts), dtype=np.int64)
        starts = np.searchsorted(points_ts, points_ts[ends] - self.span_ms, side="left")
        starts = np.maximum(starts, ends - (MAX_POINTS - 1))
        points = ends - starts + 1
        slope = np.full(len(ends), np.nan)
        at_last = np.full(len(ends), np.nan)
        enough = np.flatnonzero(points >= min_points)
        for lo in range(0, len(enough), _CHUNK):
            rows = enough[lo : lo + _CHUNK]
            slope[rows], at_last[rows] = _theil_sen(points_ts, points_v, starts[rows], ends[rows])
        if len(ends):
            # What the window holds after the block's last point: the next block's start.
            first = int(starts[-1])
            self.ts, self.values = points_ts[first:], points_v[first:]
        at = last - ends[0] if len(ends) else last
        return TrendFits(
            slope=slope[at], at_last=at_last[at], now=points_ts[last], points=points[at]
        )


class TrendWindows:
    """Every trend window of a replay, by (metric, span). Rules reading one metric over
    one span keep the same points (replay's rows have every metric), so a block's fits
    are made once for all of them; `block` starts the next block."""

    def __init__(self) -> None:
        self._windows: dict[tuple[str, int], TrendWindow] = {}
        self._fits: dict[tuple[str, int], TrendFits] = {}
        self._metrics: Mapping[str, FloatArray] = {}
        self._ts: IntArray = np.empty(0, dtype=np.int64)

    def block(self, metrics: Mapping[str, FloatArray], ts: IntArray) -> None:
        self._metrics, self._ts, self._fits = metrics, ts, {}

    def fits(self, metric: str, span_minutes: float, min_points: int) -> TrendFits:
        # The live rule's Trend.add: int(span_minutes * 60_000).
        key = (metric, int(span_minutes * 60_000))
        fits = self._fits.get(key)
        if fits is None:
            window = self._windows.setdefault(key, TrendWindow(key[1]))
            fits = self._fits[key] = window.fits(self._ts, self._metrics[metric])
        return fits.at_least(min_points)


def _theil_sen(
    points_ts: IntArray, points_v: FloatArray, starts: IntArray, ends: IntArray
) -> tuple[FloatArray, FloatArray]:
    """`theil_sen` of each window points[start..end] (≤ MAX_POINTS points each)."""
    # As wide as the longest window here, not MAX_POINTS: a 30-minute span of
    # 10-minute readings is 4 points, 6 pairs rather than 120.
    width = int((ends - starts).max()) + 1
    pair_i, pair_j = _pairs(width)
    index = ends[:, None] + np.arange(1 - width, 1, dtype=np.int64)
    present = index >= starts[:, None]
    full = bool(present.all())
    index = np.maximum(index, 0)
    stamps = points_ts.astype(np.float64)
    t = stamps[index] - stamps[ends][:, None]
    y = points_v[index]
    # np.take, not t[:, pair_j]: that gives a Fortran-ordered array, which sorts
    # and partitions several times slower along its rows.
    dt = np.take(t, pair_j, axis=1) - np.take(t, pair_i, axis=1)
    rise = np.take(y, pair_j, axis=1) - np.take(y, pair_i, axis=1)
    pairs = dt != 0
    if not full:
        pairs &= np.take(present, pair_i, axis=1) & np.take(present, pair_j, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        slopes = rise / dt
    if not pairs.all():
        slopes[~pairs] = np.nan
    slope = _median_of_present(slopes, pairs.sum(axis=1))
    with np.errstate(invalid="ignore"):
        left = y - slope[:, None] * t
    if not full:
        left[~present] = np.nan
    at_last = _median_of_present(left, present.sum(axis=1))
    at_last[np.isnan(slope)] = np.nan
    return slope, at_last


@functools.cache
def _pairs(width: int) -> tuple[IntArray, IntArray]:
    i, j = np.triu_indices(width, k=1)
    return i.astype(np.int64), j.astype(np.int64)


def _median_of_present(rows: FloatArray, counts: IntArray) -> FloatArray:
    """Per row, `np.median` of its first `count` values in order (NaN orders last);
    NaN for a row with none. Rows of one count share their middle positions, so a
    partition there does what a sort would, in linear time: at the upper middle, with
    the lower middle, for an even count, the largest value left of it."""
    out = np.full(len(rows), np.nan)
    for count in np.unique(counts).tolist():
        if count == 0:
            continue
        these = counts == count
        half = count // 2
        part = np.partition(rows if these.all() else rows[these], half, axis=1)
        upper = part[:, half]
        if count % 2:
            out[these] = upper
        else:
            out[these] = (part[:, :half].max(axis=1) + upper) / 2
    return out


def _fill_forward(start: int, levels: LevelArray, evaluated: BoolArray) -> LevelArray:
    """The level after every row when only `evaluated` rows moved the machine."""
    at = np.cumsum(evaluated)
    out: LevelArray = np.concatenate((np.array([start], dtype=np.int8), levels))[at]
    return out


@dataclass(slots=True)
class RateTrack:
    """A `RateRule` over arrays: its rate where the window gives a trend, then its levels.
    A row without a trend leaves the level machine alone, as `evaluate` does."""

    rule: RateRule
    levels: LevelThresholds = field(init=False)
    steps: Steps = field(init=False)
    state: RuleState = field(default_factory=RuleState)

    def __post_init__(self) -> None:
        rule = self.rule
        self.levels = LevelThresholds.of(rule.thresholds, what=rule.name)
        self.steps = Steps(rule.raise_after, rule.clear_after, rule.min_duration_s)

    @property
    def name(self) -> str:
        return self.rule.name

    def advance(
        self, metrics: Mapping[str, FloatArray], ts: IntArray, windows: TrendWindows
    ) -> LevelArray:
        rule = self.rule
        fits = windows.fits(rule.metric, rule.span_minutes, rule.min_points)
        fitted = fits.fitted
        rate = fits.slope[fitted] * rule.per_minutes * 60_000
        up = level_codes(self.levels, rate)
        hold = up if rule.band == 0 else level_codes(self.levels, rate, band=rule.band)
        start = int(self.state.level)
        moved = run_steps(self.steps, self.state, up, hold, ts[fitted])
        return _fill_forward(start, moved, fitted)


@dataclass(slots=True)
class ForecastTrack:
    """A `ForecastRule` over arrays: the predicted crossing of each row against the
    horizon (raise) and `hold_factor` times it (hold)."""

    rule: ForecastRule
    steps: Steps = field(init=False)
    state: RuleState = field(default_factory=RuleState)

    def __post_init__(self) -> None:
        self.steps = Steps(self.rule.raise_after, self.rule.clear_after)

    @property
    def name(self) -> str:
        return self.rule.name

    def advance(
        self, metrics: Mapping[str, FloatArray], ts: IntArray, windows: TrendWindows
    ) -> LevelArray:
        rule = self.rule
        values = metrics[rule.metric]
        fits = windows.fits(rule.metric, rule.span_minutes, rule.min_points)
        # ForecastRule.crossing_ms, row by row: reached by the fit (now), rising toward
        # it (now + the time the trend takes), or not at all (NaN lead).
        with np.errstate(divide="ignore", invalid="ignore"):
            ahead = np.trunc((rule.threshold - fits.at_last) / fits.slope)
        ahead[~np.isfinite(ahead) | (fits.slope <= 0)] = np.nan
        ahead[fits.at_last >= rule.threshold] = 0.0
        ahead[values >= rule.threshold] = np.nan
        lead = (fits.now - ts) + ahead
        horizon_ms = rule.within_minutes * 60_000
        code = np.int8(rule.level)
        up = np.where(lead <= horizon_ms, code, np.int8(0)).astype(np.int8)
        hold = np.where(lead <= horizon_ms * rule.hold_factor, code, np.int8(0)).astype(np.int8)
        return run_steps(self.steps, self.state, up, hold, ts)


@dataclass(slots=True)
class CompositeTrack:
    """A `CompositeRule` over arrays: every condition at every row, then its level.
    The live rule adds a point to a metric's window once per rising condition on it,
    so `supports` sends a rule with two of them on one metric to the slow path."""

    rule: CompositeRule
    steps: Steps = field(init=False)
    state: RuleState = field(default_factory=RuleState)

    def __post_init__(self) -> None:
        rule = self.rule
        self.steps = Steps(rule.raise_after, rule.clear_after, rule.min_duration_s)

    @staticmethod
    def supports(rule: CompositeRule) -> bool:
        rising = [c.metric for c in rule.conditions if c.rising_per_minute is not None]
        return len(rising) == len(set(rising))

    @property
    def name(self) -> str:
        return self.rule.name

    def advance(
        self, metrics: Mapping[str, FloatArray], ts: IntArray, windows: TrendWindows
    ) -> LevelArray:
        rule = self.rule
        every = np.ones(len(ts), dtype=bool)
        held = np.ones(len(ts), dtype=bool)
        for c in rule.conditions:
            values = metrics[c.metric]
            if c.above is not None:
                every &= values >= c.above
                held &= values >= c.above - c.band
            elif c.below is not None:
                every &= values <= c.below
                held &= values <= c.below + c.band
            else:
                fits = windows.fits(c.metric, rule.span_minutes, rule.min_points)
                rate = fits.slope * 60_000  # NaN (no trend) compares False: not rising
                every &= rate >= c.bound
                held &= rate >= c.bound - c.band
        code = np.int8(rule.level)
        up = np.where(every, code, np.int8(Level.NONE)).astype(np.int8)
        hold = np.where(held, code, np.int8(Level.NONE)).astype(np.int8)
        return run_steps(self.steps, self.state, up, hold, ts)
