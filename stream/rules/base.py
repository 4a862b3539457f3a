"""What every early-warning rule shares: per-node state, selectors, the level machine.

A rule turns each reading into two levels: `up`, the level the reading
reaches, and `hold`, the level it still supports once the hysteresis band is
allowed for. The level machine moves a warning up only after `raise_after`
readings in a row reach higher (and, with `min_duration_s`, only once they
have done so for that long in reading time), and down only after
`clear_after` readings in a row fall below what the current level needs
less its band. That is what keeps a value wobbling around a threshold from
paging someone on every reading.

A streak moves the level only as far as the whole streak supports: readings
at yellow then red raise yellow, not red.

>>> steps = Steps(raise_after=2, clear_after=1)
>>> state = RuleState()
>>> [steps.advance(state, up, hold, ts_ms=0) for up, hold in [
...     (Level.YELLOW, Level.YELLOW), (Level.RED, Level.RED), (Level.NONE, Level.NONE)]]
[None, <Level.YELLOW: 2>, <Level.NONE: 0>]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import msgspec

from cityvitals.contract import Placement, Reading
from cityvitals.kinds import Kind
from cityvitals.levels import WARNING_LEVELS, Level


class RuleState(msgspec.Struct, omit_defaults=True):
    """What one rule remembers about one node: a few integers and, for the
    trend rules, a short window of recent points per metric."""

    level: Level = Level.NONE
    streak: int = 0  # +n: n readings pushing up, -n: n pushing down
    streak_level: Level = Level.NONE
    #: Reading time at which the current upward streak began.
    streak_ms: int = 0
    windows: dict[str, list[tuple[int, float]]] = msgspec.field(default_factory=dict)
    #: An anomaly rule's scorer state (`stream.detectors.encode_state` bytes);
    #: empty, and so not encoded at all, for every other rule type.
    detector: bytes = b""


class Outcome(NamedTuple):
    """A level change, with what the warning reports about it."""

    level: Level
    previous: Level
    value: float
    threshold: float | None
    unit: str
    predicted_crossing_ms: int | None = None


class Rule(Protocol):
    """One early-warning rule: pure, its memory in a `RuleState` per node."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> Kind: ...

    @property
    def metric(self) -> str: ...

    @property
    def selector(self) -> Selector: ...

    def evaluate(self, state: RuleState, reading: Reading) -> Outcome | None:
        """Feed one reading of a node the rule applies to; the change, if any."""
        ...


@dataclass(frozen=True, slots=True)
class Selector:
    """Which nodes a rule applies to, by id and registry placement.

    Each field is a set of accepted values; an empty one accepts anything, so
    `Selector()` matches every node of the rule's kind. Placement comes from
    the registry, so moving a node to another district changes which rules
    watch it without touching the device.

    >>> where = Placement(district="Harbour", street="Dock St", grid="HB-1", unit="Drainage",
    ...                   lat=31.2, lon=121.5)
    >>> Selector(district=frozenset({"Harbour"})).matches("wl-1", where)
    True
    >>> Selector(grid=frozenset({"HB-2"})).matches("wl-1", where)
    False
    """

    district: frozenset[str] = frozenset()
    street: frozenset[str] = frozenset()
    grid: frozenset[str] = frozenset()
    unit: frozenset[str] = frozenset()
    node: frozenset[str] = frozenset()

    def matches(self, node: str, placement: Placement) -> bool:
        return (
            (not self.node or node in self.node)
            and (not self.district or placement.district in self.district)
            and (not self.street or placement.street in self.street)
            and (not self.grid or placement.grid in self.grid)
            and (not self.unit or placement.unit in self.unit)
        )

    @property
    def everything(self) -> bool:
        return not (self.district or self.street or self.grid or self.unit or self.node)


EVERY_NODE = Selector()


@dataclass(frozen=True, slots=True)
class Steps:
    """The level machine: streak lengths and minimum duration for moving a level."""

    raise_after: int = 2
    clear_after: int = 2
    min_duration_s: float = 0.0

    def __post_init__(self) -> None:
        if self.raise_after < 1 or self.clear_after < 1:
            raise ValueError("raise_after >= 1 and clear_after >= 1")
        if self.min_duration_s < 0:
            raise ValueError("min_duration_s >= 0")

    def advance(self, state: RuleState, up: Level, hold: Level, *, ts_ms: int) -> Level | None:
        """Feed one reading's `up` and `hold` levels; the new level if it changed."""
        if up > state.level:
            if state.streak <= 0:
                state.streak = 0
                state.streak_ms = ts_ms
            state.streak_level = up if state.streak == 0 else min(state.streak_level, up)
            state.streak += 1
            held_ms = ts_ms - state.streak_ms
            if state.streak >= self.raise_after and held_ms >= self.min_duration_s * 1000:
                return self._move(state, state.streak_level)
            return None
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
        state.streak_ms = 0
        return level


@dataclass(frozen=True, slots=True)
class LevelThresholds:
    """Thresholds per warning level, rising with the level; blue..red, any subset."""

    by_level: tuple[tuple[Level, float], ...]

    @classmethod
    def of(cls, thresholds: Mapping[Level, float], *, what: str) -> LevelThresholds:
        levels = tuple(sorted(((lv, float(t)) for lv, t in thresholds.items()), key=lambda p: p[0]))
        if not levels or any(lv not in WARNING_LEVELS for lv, _ in levels):
            raise ValueError(f"{what}: thresholds need levels among blue..red")
        values = [t for _, t in levels]
        if values != sorted(values) or len(set(values)) != len(values):
            raise ValueError(f"{what}: thresholds must rise with the level, got {values}")
        return cls(levels)

    def level_of(self, value: float, *, band: float = 0.0) -> Level:
        """Highest level whose threshold (less `band`) the value reaches."""
        reached = Level.NONE
        for level, threshold in self.by_level:
            if value >= threshold - band:
                reached = level
        return reached

    def threshold(self, level: Level) -> float | None:
        return dict(self.by_level).get(level)

    def reported(self, after: Level, before: Level) -> float | None:
        """The threshold a warning reports: of its level, or for a clear, of the one it left."""
        return self.threshold(after if after > Level.NONE else before)

    def levels(self) -> Iterable[Level]:
        return (lv for lv, _ in self.by_level)


def measured(
    state: RuleState,
    measure: float,
    *,
    levels: LevelThresholds,
    steps: Steps,
    band: float,
    ts_ms: int,
    unit: str,
) -> Outcome | None:
    """Feed one measure (a reading, a rate, a score) through the level machine against
    `levels`; the Outcome if the level changed. What the threshold, rate and anomaly
    rules share once each has its measure."""
    before = state.level
    after = steps.advance(
        state, levels.level_of(measure), levels.level_of(measure, band=band), ts_ms=ts_ms
    )
    if after is None:
        return None
    return Outcome(
        level=after,
        previous=before,
        value=measure,
        threshold=levels.reported(after, before),
        unit=unit,
    )
