"""Forecast-to-threshold rules: warn when a threshold will be crossed soon. Pure.

A robust trend (Theil-Sen over the last `span_minutes`) is extended forward;
when it reaches `threshold` within `within_minutes`, the rule raises its
level and the warning states the predicted crossing time. The warning holds
while the crossing stays within `hold_factor` times the horizon, and clears
once the trend turns away or the threshold has been reached (the threshold
rule has taken over by then: one problem, one page at a time).

>>> rule = ForecastRule("water_level.forecast", Kind.WATER_LEVEL, "depth_cm",
...                     threshold=50, within_minutes=30, level=Level.ORANGE)
>>> state = RuleState()
>>> out = []
>>> for minute in range(0, 60, 5):
...     depth = 2.0 + max(0, minute - 20) * 1.2  # dry, then rising 1.2 cm/min
...     r = Reading(v=1, node="wl-1", kind=Kind.WATER_LEVEL, seq=minute,
...                 ts_ms=minute * 60_000, metrics={"depth_cm": depth})
...     if (o := rule.evaluate(state, r)):
...         out.append((minute, o.level.label, o.value, o.predicted_crossing_ms // 60_000))
>>> out  # at minute 45, 14 minutes before the water really reaches 50 cm
[(45, 'orange', 32.0, 59)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cityvitals.contract import Reading
from cityvitals.kinds import Kind, metric_spec
from cityvitals.levels import WARNING_LEVELS, Level
from stream.rules.base import EVERY_NODE, Outcome, RuleState, Selector, Steps
from stream.rules.rate import trend_of
from stream.trend import Trend


@dataclass(frozen=True, slots=True)
class ForecastRule:
    name: str
    kind: Kind
    metric: str
    threshold: float
    within_minutes: float
    level: Level
    span_minutes: float = 30.0
    min_points: int = 4
    hold_factor: float = 1.5
    raise_after: int = 2
    clear_after: int = 2
    selector: Selector = EVERY_NODE
    _steps: Steps = field(init=False, repr=False, compare=False)
    _trend: Trend = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        spec = metric_spec(self.kind, self.metric)
        if self.level not in WARNING_LEVELS:
            raise ValueError(f"{self.name}: level must be one of blue..red")
        if not spec.contains(self.threshold):
            raise ValueError(
                f"{self.name}: threshold {self.threshold} is outside {spec.low}..{spec.high}"
            )
        if self.within_minutes <= 0:
            raise ValueError(f"{self.name}: within_minutes > 0")
        object.__setattr__(self, "_trend", trend_of(self.name, self.span_minutes, self.min_points))
        if self.hold_factor < 1:
            raise ValueError(f"{self.name}: hold_factor >= 1")
        object.__setattr__(self, "_steps", Steps(self.raise_after, self.clear_after))

    def crossing_ms(self, state: RuleState) -> int | None:
        """When the trend reaches the threshold; None if it does not rise toward it."""
        fit = self._trend.fit(state.windows, self.metric)
        if fit is None:
            return None
        slope, at_last = fit
        now = state.windows[self.metric][-1][0]
        if at_last >= self.threshold:
            return now
        if slope <= 0:
            return None
        ahead = (self.threshold - at_last) / slope
        # A slope too flat to divide by (subnormal) gives no crossing in any time
        # that matters, and an infinite one cannot be a time at all.
        return now + int(ahead) if math.isfinite(ahead) else None

    def evaluate(self, state: RuleState, reading: Reading) -> Outcome | None:
        value = reading.metrics.get(self.metric)
        if value is None:
            return None
        self._trend.add(state.windows, self.metric, (reading.ts_ms, value))
        crossing = None if value >= self.threshold else self.crossing_ms(state)
        lead_ms = None if crossing is None else crossing - reading.ts_ms
        horizon_ms = self.within_minutes * 60_000
        up = Level.NONE if lead_ms is None or lead_ms > horizon_ms else self.level
        hold = (
            Level.NONE if lead_ms is None or lead_ms > horizon_ms * self.hold_factor else self.level
        )
        before = state.level
        after = self._steps.advance(state, up, hold, ts_ms=reading.ts_ms)
        if after is None:
            return None
        return Outcome(
            level=after,
            previous=before,
            value=value,
            threshold=self.threshold,
            unit=metric_spec(self.kind, self.metric).unit,
            predicted_crossing_ms=crossing if after > Level.NONE else None,
        )
