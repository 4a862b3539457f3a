"""Rules over whole arrays for `stream.replay`: the same levels, row for row, as the engine.

A threshold or anomaly rule is a function of one number per reading (the
value, or the anomaly score) followed by the level machine `Steps`. Replay
computes every reading's `up` and `hold` levels at once (`np.searchsorted`
on the thresholds, and on the thresholds less the band) and then runs the
level machine over the two integer arrays in a plain loop (`run_steps`):
the machine is sequential, but without objects, dict lookups or a Reading
per row it costs about 60 ns a reading. Rate, forecast and composite rules
fit trends over windows of points (`stream.replay_trends`); `EngineTrack`
feeds what has no array path (a composite rule with two rising conditions
on one metric) a `Reading` per row through its own `evaluate`, as the
engine does: correct, and some hundred times slower.

>>> from cityvitals.levels import Level
>>> track = StepsTrack("depth", LevelThresholds.of({Level.BLUE: 10, Level.RED: 50}, what="d"),
...                    band=2.0, steps=Steps(raise_after=2, clear_after=2))
>>> values = np.array([3, 12, 12, 9, 9, 7, 7, 60, 60], dtype=np.float64)
>>> [Level(v).label for v in track.advance(values, np.arange(9, dtype=np.int64))]
['none', 'none', 'blue', 'blue', 'blue', 'blue', 'none', 'none', 'red']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from cityvitals.contract import Reading
from cityvitals.kinds import Kind
from cityvitals.levels import Level
from stream.rules import LevelThresholds, Rule, RuleState, Steps

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
LevelArray = npt.NDArray[np.int8]

__all__ = ["EngineTrack", "StepsTrack", "level_codes", "run_steps"]

#: The node id replay's readings carry: rules see one series, not a registry node.
REPLAY_NODE = "replay"


def level_codes(levels: LevelThresholds, values: FloatArray, *, band: float = 0.0) -> LevelArray:
    """`levels.level_of(v, band=band)` for every v, as int8 level codes.

    `level_of` takes the highest level whose threshold less `band` the value
    reaches, and the thresholds rise, so that is the number of thresholds at
    or below v: `searchsorted(..., side="right")`. The subtraction is the
    same IEEE operation as `level_of`'s, so ties land the same way.
    """
    codes = np.array([Level.NONE, *levels.levels()], dtype=np.int8)
    edges = np.array([t - band for _, t in levels.by_level], dtype=np.float64)
    out: LevelArray = codes[np.searchsorted(edges, values, side="right")]
    return out


def run_steps(
    steps: Steps, state: RuleState, up: LevelArray, hold: LevelArray, ts_ms: IntArray
) -> LevelArray:
    """`steps.advance(state, up[i], hold[i], ts_ms=ts_ms[i])` for each i; the level after each.

    A transcription of `Steps.advance` on local ints (kept in step with it by
    the hypothesis test in tests/unit/stream/test_replay.py); `state` ends as
    the loop of `advance` calls would leave it.
    """
    size = len(up)
    raise_after, clear_after = steps.raise_after, steps.clear_after
    min_ms = steps.min_duration_s * 1000
    level, streak = int(state.level), state.streak
    streak_level, streak_ms = int(state.streak_level), state.streak_ms
    # The level changes rarely: remember where, and fill the runs afterwards.
    at = [0]
    moved = [level]
    times = ts_ms.tolist()
    for i, (u, h) in enumerate(zip(up.tolist(), hold.tolist(), strict=True)):
        if u > level:
            if streak <= 0:
                streak = 0
                streak_ms = times[i]
            streak_level = u if streak == 0 else min(streak_level, u)
            streak += 1
            if streak >= raise_after and times[i] - streak_ms >= min_ms:
                level, streak, streak_level, streak_ms = streak_level, 0, 0, 0
                at.append(i)
                moved.append(level)
        elif h < level:
            streak = min(streak, 0)
            streak_level = h if streak == 0 else max(streak_level, h)
            streak -= 1
            if -streak >= clear_after:
                level, streak, streak_level, streak_ms = streak_level, 0, 0, 0
                at.append(i)
                moved.append(level)
        else:
            streak = 0
    state.level, state.streak = Level(level), streak
    state.streak_level, state.streak_ms = Level(streak_level), streak_ms
    bounds: IntArray = np.array([*at, size], dtype=np.int64)
    lengths: IntArray = bounds[1:] - bounds[:-1]
    out: LevelArray = np.repeat(np.array(moved, dtype=np.int8), lengths)
    return out


@dataclass(slots=True)
class StepsTrack:
    """A rule that is thresholds on one number per reading, then the level machine."""

    name: str
    levels: LevelThresholds
    band: float
    steps: Steps
    state: RuleState = field(default_factory=RuleState)

    def advance(self, values: FloatArray, ts_ms: IntArray) -> LevelArray:
        """Feed the next readings' numbers (values or scores); the level after each."""
        up = level_codes(self.levels, values)
        hold = up if self.band == 0 else level_codes(self.levels, values, band=self.band)
        return run_steps(self.steps, self.state, up, hold, ts_ms)


@dataclass(slots=True)
class EngineTrack:
    """Rules without an array path, fed one `Reading` per row through `evaluate`."""

    kind: Kind
    rules: Sequence[Rule]
    states: list[RuleState] = field(default_factory=list)
    seq: int = 0

    def __post_init__(self) -> None:
        self.states = [RuleState() for _ in self.rules]

    def advance(self, metrics: dict[str, FloatArray], ts_ms: IntArray) -> list[LevelArray]:
        """Feed the next readings (one array per metric); per rule, the level after each."""
        size = len(ts_ms)
        out = [np.empty(size, dtype=np.int8) for _ in self.rules]
        names = list(metrics)
        columns = [metrics[name].tolist() for name in names]
        times = ts_ms.tolist()
        pairs = list(zip(self.rules, self.states, out, strict=True))
        for i in range(size):
            reading = Reading(
                v=1,
                node=REPLAY_NODE,
                kind=self.kind,
                seq=self.seq + i,
                ts_ms=times[i],
                metrics={name: column[i] for name, column in zip(names, columns, strict=True)},
            )
            for rule, state, levels in pairs:
                rule.evaluate(state, reading)
                levels[i] = state.level
        self.seq += size
        return out
