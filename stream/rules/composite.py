"""Composite rules: several conditions on one node's metrics, together. Pure.

A fire shows as smoke *and* heat rising together; a lifted manhole cover
with gas inside is worse than either alone. Each condition is one metric
above or below a value, or rising faster than a rate (Theil-Sen over the
last `span_minutes`); the rule raises its level when all of them hold, and
clears when any stops holding (allowing its `band`) for `clear_after`
readings.

>>> fire = CompositeRule("smoke.fire", Kind.SMOKE, Level.RED, (
...     Condition("obscuration_pct_m", above=2.0),
...     Condition("temperature_c", rising_per_minute=0.5)), raise_after=1)
>>> state = RuleState()
>>> out = []
>>> for minute, (smoke, temp) in enumerate([(0.1, 20), (2.5, 20), (3.0, 22), (3.5, 25)]):
...     r = Reading(v=1, node="sm-1", kind=Kind.SMOKE, seq=minute, ts_ms=minute * 60_000,
...                 metrics={"obscuration_pct_m": smoke, "temperature_c": temp})
...     if (o := fire.evaluate(state, r)):
...         out.append((minute, o.level.label, o.value, o.threshold))
>>> out
[(2, 'red', 3.0, 2.0)]
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cityvitals.contract import Reading
from cityvitals.kinds import Kind, metric_spec
from cityvitals.levels import WARNING_LEVELS, Level
from stream.rules.base import EVERY_NODE, Outcome, RuleState, Selector, Steps
from stream.rules.rate import trend_of
from stream.trend import Trend


@dataclass(frozen=True, slots=True)
class Condition:
    """Exactly one of `above`, `below` or `rising_per_minute`."""

    metric: str
    above: float | None = None
    below: float | None = None
    rising_per_minute: float | None = None
    band: float = 0.0

    def __post_init__(self) -> None:
        given = [b for b in (self.above, self.below, self.rising_per_minute) if b is not None]
        if len(given) != 1:
            raise ValueError(
                f"condition on {self.metric}: exactly one of above, below, rising_per_minute"
            )
        if self.band < 0:
            raise ValueError(f"condition on {self.metric}: band >= 0")

    @property
    def bound(self) -> float:
        for bound in (self.above, self.below, self.rising_per_minute):
            if bound is not None:
                return bound
        raise AssertionError("checked in __post_init__")

    def holds(self, value: float, rate: float | None, *, band: float = 0.0) -> bool:
        if self.above is not None:
            return value >= self.above - band
        if self.below is not None:
            return value <= self.below + band
        return rate is not None and rate >= self.bound - band


@dataclass(frozen=True, slots=True)
class CompositeRule:
    name: str
    kind: Kind
    level: Level
    conditions: tuple[Condition, ...]
    span_minutes: float = 30.0
    min_points: int = 3
    raise_after: int = 2
    clear_after: int = 2
    min_duration_s: float = 0.0
    selector: Selector = EVERY_NODE
    _steps: Steps = field(init=False, repr=False, compare=False)
    _trend: Trend = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.conditions:
            raise ValueError(f"{self.name}: at least one condition")
        for c in self.conditions:
            metric_spec(self.kind, c.metric)
        if self.level not in WARNING_LEVELS:
            raise ValueError(f"{self.name}: level must be one of blue..red")
        object.__setattr__(self, "_trend", trend_of(self.name, self.span_minutes, self.min_points))
        object.__setattr__(
            self, "_steps", Steps(self.raise_after, self.clear_after, self.min_duration_s)
        )

    @property
    def metric(self) -> str:
        """The metric a warning reports: the first condition's."""
        return self.conditions[0].metric

    def _rate(self, state: RuleState, metric: str) -> float | None:
        fit = self._trend.fit(state.windows, metric)
        return None if fit is None else fit[0] * 60_000

    def evaluate(self, state: RuleState, reading: Reading) -> Outcome | None:
        values = reading.metrics
        if any(c.metric not in values for c in self.conditions):
            return None
        for c in self.conditions:
            if c.rising_per_minute is not None:
                self._trend.add(state.windows, c.metric, (reading.ts_ms, values[c.metric]))
        rates = {
            c.metric: self._rate(state, c.metric)
            for c in self.conditions
            if c.rising_per_minute is not None
        }
        every = all(c.holds(values[c.metric], rates.get(c.metric)) for c in self.conditions)
        held = all(
            c.holds(values[c.metric], rates.get(c.metric), band=c.band) for c in self.conditions
        )
        before = state.level
        after = self._steps.advance(
            state,
            self.level if every else Level.NONE,
            self.level if held else Level.NONE,
            ts_ms=reading.ts_ms,
        )
        if after is None:
            return None
        first = self.conditions[0]
        return Outcome(
            level=after,
            previous=before,
            value=values[first.metric],
            threshold=first.bound,
            unit=metric_spec(self.kind, first.metric).unit,
        )
