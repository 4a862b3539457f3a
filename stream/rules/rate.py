"""Rate-of-rise rules: how fast a metric climbs, against four levels. Pure.

The rate is the Theil-Sen slope of the readings in the last `span_minutes`,
scaled to "per `per_minutes`": robust to a single wild reading, and it warns
while the value is still far below any static threshold. Water that rises
6 cm in 10 minutes on a dry road is news before it is deep.

>>> rule = RateRule("water_level.rise", Kind.WATER_LEVEL, "depth_cm",
...                 {Level.YELLOW: 3, Level.ORANGE: 6}, per_minutes=10, raise_after=1)
>>> state = RuleState()
>>> def reading(minute, depth):
...     return Reading(v=1, node="wl-1", kind=Kind.WATER_LEVEL, seq=minute,
...                    ts_ms=minute * 60_000, metrics={"depth_cm": depth})
>>> depths = [0, 0, 0.4, 1.1, 1.9, 2.6]
>>> [(o.level.label, round(o.value, 1), o.unit)
...  for m, d in enumerate(depths) if (o := rule.evaluate(state, reading(m, d)))]
[('yellow', 3.8, 'cm/10 min'), ('orange', 6.3, 'cm/10 min')]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cityvitals.contract import Reading
from cityvitals.kinds import Kind, metric_spec
from cityvitals.levels import Level
from stream.rules.base import (
    EVERY_NODE,
    LevelThresholds,
    Outcome,
    RuleState,
    Selector,
    Steps,
    measured,
)
from stream.trend import Trend


def trend_of(rule: str, span_minutes: float, min_points: int) -> Trend:
    """A rule's `Trend`; a bad setting is a ValueError naming the rule."""
    try:
        return Trend(span_minutes, min_points)
    except ValueError as exc:
        raise ValueError(f"{rule}: {exc}") from None


@dataclass(frozen=True, slots=True)
class RateRule:
    name: str
    kind: Kind
    metric: str
    #: Rise per `per_minutes` (in the metric's unit) for each level.
    thresholds: Mapping[Level, float]
    per_minutes: float = 10.0
    span_minutes: float = 30.0
    min_points: int = 3
    band: float = 0.0
    raise_after: int = 2
    clear_after: int = 2
    min_duration_s: float = 0.0
    selector: Selector = EVERY_NODE
    _levels: LevelThresholds = field(init=False, repr=False, compare=False)
    _steps: Steps = field(init=False, repr=False, compare=False)
    _trend: Trend = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        metric_spec(self.kind, self.metric)
        object.__setattr__(self, "_levels", LevelThresholds.of(self.thresholds, what=self.name))
        if self.per_minutes <= 0:
            raise ValueError(f"{self.name}: per_minutes > 0")
        object.__setattr__(self, "_trend", trend_of(self.name, self.span_minutes, self.min_points))
        if self.band < 0:
            raise ValueError(f"{self.name}: band >= 0")
        object.__setattr__(
            self, "_steps", Steps(self.raise_after, self.clear_after, self.min_duration_s)
        )

    @property
    def unit(self) -> str:
        return f"{metric_spec(self.kind, self.metric).unit}/{self.per_minutes:g} min"

    def rate(self, state: RuleState) -> float | None:
        """The current rise per `per_minutes`; None while the window is too short."""
        fit = self._trend.fit(state.windows, self.metric)
        return None if fit is None else fit[0] * self.per_minutes * 60_000

    def evaluate(self, state: RuleState, reading: Reading) -> Outcome | None:
        value = reading.metrics.get(self.metric)
        if value is None:
            return None
        self._trend.add(state.windows, self.metric, (reading.ts_ms, value))
        rate = self.rate(state)
        if rate is None:
            # Too few points for a trend (a fresh node, or one back from a
            # gap): no evidence either way, so the level stays where it is.
            return None
        return measured(
            state,
            rate,
            levels=self._levels,
            steps=self._steps,
            band=self.band,
            ts_ms=reading.ts_ms,
            unit=self.unit,
        )
