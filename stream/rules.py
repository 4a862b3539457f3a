"""Threshold rules with four warning levels and hysteresis. Pure: no I/O.

A rule watches one metric of one sensor kind. Each level has a threshold;
the value must stay at or above a higher level's threshold for
`raise_after` consecutive readings before the level goes up, and below
`threshold - band` of the current level for `clear_after` readings before it
comes down. The band and the counts are what stop a value that wobbles
around a threshold from paging someone on every reading.

A streak moves the level only as far as the whole streak supports: readings
25 then 64 cm raise a 20/50 cm rule to the level of 25, not of 64.

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

import msgspec

from cityvitals.kinds import Kind, metric_spec
from cityvitals.levels import WARNING_LEVELS, Level


class RuleState(msgspec.Struct):
    """What one rule remembers about one node: a few integers."""

    level: Level = Level.NONE
    streak: int = 0  # +n: n readings pushing up, -n: n pushing down
    streak_level: Level = Level.NONE


@dataclass(frozen=True, slots=True)
class ThresholdRule:
    name: str
    kind: Kind
    metric: str
    thresholds: Mapping[Level, float]
    band: float = 0.0
    raise_after: int = 2
    clear_after: int = 2
    _levels: tuple[tuple[Level, float], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        metric_spec(self.kind, self.metric)  # KeyError for a metric the kind lacks
        levels = tuple(
            sorted(((lv, float(t)) for lv, t in self.thresholds.items()), key=lambda p: p[0])
        )
        if not levels or any(lv not in WARNING_LEVELS for lv, _ in levels):
            raise ValueError(f"{self.name}: thresholds need levels among blue..red")
        values = [t for _, t in levels]
        if values != sorted(values) or len(set(values)) != len(values):
            raise ValueError(f"{self.name}: thresholds must rise with the level, got {values}")
        if self.band < 0 or self.raise_after < 1 or self.clear_after < 1:
            raise ValueError(f"{self.name}: band >= 0, raise_after >= 1 and clear_after >= 1")
        object.__setattr__(self, "_levels", levels)

    def level_of(self, value: float, *, band: float = 0.0) -> Level:
        """Highest level whose threshold (less `band`) the value reaches."""
        reached = Level.NONE
        for level, threshold in self._levels:
            if value >= threshold - band:
                reached = level
        return reached

    def threshold(self, level: Level) -> float | None:
        return dict(self._levels).get(level)

    def step(self, state: RuleState, value: float) -> Level | None:
        """Feed one reading; return the new level if it changed, else None."""
        up = self.level_of(value)
        if up > state.level:
            state.streak = max(state.streak, 0)
            state.streak_level = up if state.streak == 0 else min(state.streak_level, up)
            state.streak += 1
            if state.streak >= self.raise_after:
                return self._move(state, state.streak_level)
            return None
        hold = self.level_of(value, band=self.band)
        if hold < state.level:
            state.streak = min(state.streak, 0)
            state.streak_level = hold if state.streak == 0 else max(state.streak_level, hold)
            state.streak -= 1
            if -state.streak >= self.clear_after:
                return self._move(state, state.streak_level)
            return None
        state.streak = 0
        return None

    @staticmethod
    def _move(state: RuleState, level: Level) -> Level:
        state.level = level
        state.streak = 0
        state.streak_level = Level.NONE
        return level


def _rule(
    name: str, kind: Kind, metric: str, levels: tuple[float | None, ...], band: float
) -> ThresholdRule:
    thresholds = {lv: t for lv, t in zip(WARNING_LEVELS, levels, strict=True) if t is not None}
    return ThresholdRule(name, kind, metric, thresholds, band=band)


#: The built-in rule set, levels blue / yellow / orange / red.
#: Depths follow road-closure practice (a car's sill is ~30 cm); crowd
#: densities follow crowd-safety guidance (4-5 persons/m2 is crush risk);
#: 8 %/m obscuration is far past a detector's alarm point; heat detectors
#: fire near 57-65 degC.
DEFAULT_RULES: tuple[ThresholdRule, ...] = (
    _rule("water_level.depth", Kind.WATER_LEVEL, "depth_cm", (10, 20, 30, 50), band=2.0),
    _rule("manhole.cover_tilt", Kind.MANHOLE, "cover_tilt_deg", (5, 10, 20, 30), band=1.0),
    _rule("manhole.cover_open", Kind.MANHOLE, "cover_open", (None, None, 0.5, None), band=0.0),
    _rule("manhole.gas", Kind.MANHOLE, "gas_lel_pct", (5, 10, 20, 40), band=1.0),
    _rule("smoke.obscuration", Kind.SMOKE, "obscuration_pct_m", (1, 2, 4, 8), band=0.2),
    _rule("smoke.temperature", Kind.SMOKE, "temperature_c", (45, 55, 65, 80), band=2.0),
    _rule("crowd.density", Kind.CROWD, "density_m2", (2, 3, 4, 5), band=0.2),
)
