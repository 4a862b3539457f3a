"""Threshold rules: a metric against four levels, with hysteresis. Pure.

>>> rule = ThresholdRule("water_level.depth", Kind.WATER_LEVEL, "depth_cm",
...                      {Level.BLUE: 10, Level.YELLOW: 20, Level.ORANGE: 30, Level.RED: 50},
...                      band=2.0)
>>> state = RuleState()
>>> [rule.step(state, v) for v in (12, 12, 9.5, 9.5, 7.9, 7.9)]
[None, <Level.BLUE: 1>, None, None, None, <Level.NONE: 0>]
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


@dataclass(frozen=True, slots=True)
class ThresholdRule:
    """One metric of one kind; the value must reach a level's threshold to raise it."""

    name: str
    kind: Kind
    metric: str
    thresholds: Mapping[Level, float]
    band: float = 0.0
    raise_after: int = 2
    clear_after: int = 2
    min_duration_s: float = 0.0
    selector: Selector = EVERY_NODE
    _levels: LevelThresholds = field(init=False, repr=False, compare=False)
    _steps: Steps = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        metric_spec(self.kind, self.metric)  # KeyError for a metric the kind lacks
        object.__setattr__(self, "_levels", LevelThresholds.of(self.thresholds, what=self.name))
        if self.band < 0:
            raise ValueError(f"{self.name}: band >= 0")
        try:
            steps = Steps(self.raise_after, self.clear_after, self.min_duration_s)
        except ValueError as exc:
            raise ValueError(f"{self.name}: {exc}") from None
        object.__setattr__(self, "_steps", steps)

    def level_of(self, value: float, *, band: float = 0.0) -> Level:
        """Highest level whose threshold (less `band`) the value reaches."""
        return self._levels.level_of(value, band=band)

    def threshold(self, level: Level) -> float | None:
        return self._levels.threshold(level)

    def step(self, state: RuleState, value: float, *, ts_ms: int = 0) -> Level | None:
        """Feed one value; return the new level if it changed, else None."""
        return self._steps.advance(
            state, self.level_of(value), self.level_of(value, band=self.band), ts_ms=ts_ms
        )

    def evaluate(self, state: RuleState, reading: Reading) -> Outcome | None:
        value = reading.metrics.get(self.metric)
        if value is None:
            return None
        return measured(
            state,
            value,
            levels=self._levels,
            steps=self._steps,
            band=self.band,
            ts_ms=reading.ts_ms,
            unit=metric_spec(self.kind, self.metric).unit,
        )
