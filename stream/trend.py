"""Robust trends over a short window of (time, value) points. Pure.

Theil-Sen: the slope is the median of the slopes between every pair of
points, the intercept the median of what each point leaves. Half of the
points can be wild before the estimate moves, so one spiking reading does
not fake a rising trend the way a least-squares line would.

>>> points = [(0, 1.0), (60_000, 2.0), (120_000, 3.0), (180_000, 40.0), (240_000, 5.0)]
>>> slope, at_last = theil_sen(points)
>>> round(slope * 60_000, 3), round(at_last, 3)
(1.0, 5.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Points a trend window holds at most, whatever the reporting rate: bounded state.
MAX_POINTS = 16


def theil_sen(points: Sequence[tuple[int, float]]) -> tuple[float, float] | None:
    """Slope (value per millisecond) and the fitted value at the last point's time.

    None when fewer than two points have distinct times. Times are taken
    relative to the last point, so large epoch milliseconds lose no precision.
    """
    if len(points) < 2:
        return None
    arr = np.asarray(points, dtype=np.float64)
    t = arr[:, 0] - arr[-1, 0]
    y = arr[:, 1]
    i, j = np.triu_indices(len(t), k=1)
    dt = t[j] - t[i]
    keep = dt != 0
    if not keep.any():
        return None
    slope = float(np.median((y[j] - y[i])[keep] / dt[keep]))
    # The fitted line at t = 0 (the last point's time).
    at_last = float(np.median(y - slope * t))
    return slope, at_last


def keep_recent(
    window: list[tuple[int, float]], point: tuple[int, float], *, span_ms: int, max_points: int
) -> None:
    """Append `point` and drop what is older than `span_ms` before it, or beyond
    `max_points`: a bounded window whatever the reporting rate.

    >>> w = []
    >>> for t in (0, 1, 2, 10, 11):
    ...     keep_recent(w, (t, float(t)), span_ms=5, max_points=3)
    >>> w
    [(10, 10.0), (11, 11.0)]
    """
    if window and point[0] < window[-1][0]:
        # A reading older than the newest one (a late resend) would bend the
        # trend backwards in time; the rules have seen newer data already.
        return
    window.append(point)
    cutoff = point[0] - span_ms
    drop = 0
    while drop < len(window) and window[drop][0] < cutoff:
        drop += 1
    drop = max(drop, len(window) - max_points)
    if drop:
        del window[:drop]


@dataclass(frozen=True, slots=True)
class Trend:
    """The robust trend of a metric over the last `span_minutes`, for the trend rules
    (rate, forecast, rising conditions). Its points live in the rule's per-node
    `windows`, by metric; with fewer than `min_points` there is no trend.

    >>> trend, windows = Trend(span_minutes=30, min_points=3), {}
    >>> for minute, depth in [(0, 1.0), (1, 2.0)]:
    ...     trend.add(windows, "depth_cm", (minute * 60_000, depth))
    >>> trend.fit(windows, "depth_cm") is None
    True
    >>> trend.add(windows, "depth_cm", (120_000, 3.0))
    >>> round(trend.fit(windows, "depth_cm")[0] * 60_000, 3)
    1.0
    """

    span_minutes: float
    min_points: int

    def __post_init__(self) -> None:
        if self.span_minutes <= 0:
            raise ValueError("span_minutes > 0")
        if not 2 <= self.min_points <= MAX_POINTS:
            raise ValueError(f"min_points between 2 and {MAX_POINTS}")

    def add(
        self, windows: dict[str, list[tuple[int, float]]], metric: str, point: tuple[int, float]
    ) -> None:
        """Add one (ts_ms, value) to `metric`'s window, dropping what fell out of the span."""
        keep_recent(
            windows.setdefault(metric, []),
            point,
            span_ms=int(self.span_minutes * 60_000),
            max_points=MAX_POINTS,
        )

    def fit(
        self, windows: dict[str, list[tuple[int, float]]], metric: str
    ) -> tuple[float, float] | None:
        """`theil_sen` of `metric`'s window; None while it holds too few points."""
        window = windows.get(metric, [])
        if len(window) < self.min_points:
            return None
        return theil_sen(window)
