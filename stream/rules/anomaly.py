"""Anomaly-score rules: the online detectors' calibrated score against four levels. Pure.

Each reading of the rule's metric is scored by an `AnomalyScorer`
(`stream.detectors`) against what that node's series has done so far, and
then learned (prequential: scored before it is learned). The score is
1 - p, the Bonferroni-combined p-value, so `blue = 0.999` means "a reading
this odd comes up at most once in a thousand readings of a series behaving
as it has". The score goes through the same level machine as a threshold
(hysteresis band, `raise_after`, `clear_after`, `min_duration_s`).

The scorer's state lives in the rule's `RuleState.detector` as the msgpack
bytes of `encode_state`, so the stream's state table carries it like any
other rule memory; rules of the other types leave it empty and (with
`omit_defaults`) pay nothing for it.

>>> import random
>>> rng = random.Random(7)
>>> rule = AnomalyRule("water_level.anomaly", Kind.WATER_LEVEL, "depth_cm",
...                    {Level.BLUE: 0.999, Level.YELLOW: 0.9999}, raise_after=2)
>>> state = RuleState()
>>> def reading(i, depth):
...     return Reading(v=1, node="wl-1", kind=Kind.WATER_LEVEL, seq=i,
...                    ts_ms=1_764_028_800_000 + i * 600_000, metrics={"depth_cm": depth})
>>> depths = [round(3.0 + rng.gauss(0, 0.4), 1) for _ in range(500)]
>>> depths[300:304] = [8.0] * 4  # a burst still below the depth rule's 10 cm
>>> [(i, o.level.label, o.threshold, o.unit)  # doctest: +NORMALIZE_WHITESPACE
...  for i, d in enumerate(depths) if (o := rule.evaluate(state, reading(i, d)))]
[(303, 'blue', 0.999, 'score'), (305, 'yellow', 0.9999, 'score'),
 (313, 'blue', 0.999, 'score'), (317, 'none', 0.999, 'score')]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import msgspec

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

if TYPE_CHECKING:
    from stream.detectors import AnomalyScorer, Scored, ScorerState

__all__ = ["DETECTOR_SETS", "SCORE_UNIT", "AnomalyRule", "scorer_for"]

#: What `detectors` may name: "default" (the set tuned for the metric), "generic",
#: or a kind's set by the kind's name (e.g. the crowd's seasonal set for `count`).
DETECTOR_SETS: Final = ("default", "generic", "water_level", "crowd", "smoke", "manhole")
#: The unit a Warning of an anomaly rule reports its value in.
SCORE_UNIT: Final = "score"


def scorer_for(
    kind: Kind | str,
    metric: str,
    *,
    detectors: str = "default",
    resolution: float | None = None,
    utc_offset_minutes: int = 0,
) -> AnomalyScorer:
    """The scorer for one metric of a kind (or of "generic").

    "default" is the kind's `default_scorer` when `metric` is the metric that
    scorer is tuned for (depth_cm for water_level, ...), and the generic set
    otherwise: the kind's resolution and detector choice say nothing about
    another metric (docs/detectors.md). `resolution` overrides the floor on
    every spread, in the metric's unit.

    >>> scorer_for(Kind.WATER_LEVEL, "depth_cm").names
    ('rate', 'shift', 'spike', 'flat', 'dropout')
    >>> scorer_for(Kind.SMOKE, "temperature_c").names
    ('level', 'shift', 'rate', 'spike', 'flat', 'dropout')
    """
    # Imported here: scipy costs a second at import, and most processes that
    # read a rule file (rules check, the gateway) never score anything.
    from stream.detectors import KIND_DEFAULTS, default_scorer

    if detectors not in DETECTOR_SETS:
        raise ValueError(f"detectors must be one of {', '.join(DETECTOR_SETS)}, got {detectors!r}")
    chosen = detectors
    if detectors == "default":
        name = str(kind)
        tuned = KIND_DEFAULTS.get(name)
        chosen = name if tuned is not None and tuned.metric == metric else "generic"
    return default_scorer(chosen, resolution=resolution, utc_offset_minutes=utc_offset_minutes)


@dataclass(frozen=True, slots=True)
class AnomalyRule:
    """The anomaly score (1 - combined p) of one metric against per-level score thresholds.

    `thresholds` are scores strictly between 0 and 1, rising with the level;
    `band` (in score units, below the lowest threshold) is the hysteresis.
    `detectors`, `resolution` and `utc_offset_minutes` choose the scorer
    (`scorer_for`); the seasonal detector is the only one that reads the
    clock. Changing any of them makes stored detector states useless: the
    rule then starts learning again from a fresh state (warm-up), rather
    than failing on every reading.
    """

    name: str
    kind: Kind
    metric: str
    thresholds: Mapping[Level, float]
    band: float = 0.0
    raise_after: int = 3
    clear_after: int = 3
    min_duration_s: float = 0.0
    selector: Selector = EVERY_NODE
    detectors: str = "default"
    resolution: float | None = None
    utc_offset_minutes: int = 0
    _levels: LevelThresholds = field(init=False, repr=False, compare=False)
    _steps: Steps = field(init=False, repr=False, compare=False)
    _scorer: AnomalyScorer = field(init=False, repr=False, compare=False)
    _decoder: msgspec.msgpack.Decoder[ScorerState] = field(init=False, repr=False, compare=False)
    #: The state type of each detector, in order: what a stored state must hold.
    _part_types: tuple[type, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from stream.detectors import ScorerState

        metric_spec(self.kind, self.metric)  # KeyError for a metric the kind lacks
        levels = LevelThresholds.of(self.thresholds, what=self.name)
        scores = [t for _, t in levels.by_level]
        if not all(0.0 < t < 1.0 for t in scores):
            raise ValueError(f"{self.name}: score thresholds must be in (0, 1), got {scores}")
        if not 0.0 <= self.band < scores[0]:
            # A band reaching the lowest threshold would hold a warning forever.
            raise ValueError(f"{self.name}: band must be >= 0 and below {scores[0]}")
        try:
            steps = Steps(self.raise_after, self.clear_after, self.min_duration_s)
            scorer = scorer_for(
                self.kind,
                self.metric,
                detectors=self.detectors,
                resolution=self.resolution,
                utc_offset_minutes=self.utc_offset_minutes,
            )
        except ValueError as exc:
            raise ValueError(f"{self.name}: {exc}") from None
        object.__setattr__(self, "_levels", levels)
        object.__setattr__(self, "_steps", steps)
        object.__setattr__(self, "_scorer", scorer)
        object.__setattr__(self, "_decoder", msgspec.msgpack.Decoder(ScorerState))
        object.__setattr__(
            self, "_part_types", tuple(detector.state_type for _, detector in scorer.detectors)
        )

    @property
    def scorer(self) -> AnomalyScorer:
        return self._scorer

    @property
    def levels(self) -> LevelThresholds:
        return self._levels

    @property
    def steps(self) -> Steps:
        return self._steps

    def detector_state(self, state: RuleState) -> ScorerState:
        """The scorer state held in `state`; a fresh one if there is none or it was
        made for another detector set (the rule's settings changed)."""
        if state.detector:
            try:
                held = self._decoder.decode(state.detector)
            except msgspec.DecodeError:
                held = None
            if held is not None and tuple(type(part) for part in held.parts) == self._part_types:
                return held
        return self._scorer.new_state()

    def scored(self, state: RuleState, value: float, ts_ms: int) -> Scored:
        """Score `value` against what the node's series has done, then learn it."""
        held = self.detector_state(state)
        scored = self._scorer.score_one(held, value, ts_ms)
        self._scorer.learn_one(held, value, ts_ms)
        state.detector = msgspec.msgpack.encode(held)
        return scored

    def score(self, state: RuleState, value: float, ts_ms: int) -> float:
        """`scored`, as the anomaly score alone."""
        return self.scored(state, value, ts_ms).score

    def evaluate(self, state: RuleState, reading: Reading) -> Outcome | None:
        return self.evaluate_scored(state, reading)[0]

    def evaluate_scored(
        self, state: RuleState, reading: Reading
    ) -> tuple[Outcome | None, Scored | None]:
        """`evaluate`, and the reading's score (for the sink's `score` measurement)."""
        value = reading.metrics.get(self.metric)
        if value is None:
            return None, None
        scored = self.scored(state, value, reading.ts_ms)
        outcome = measured(
            state,
            scored.score,
            levels=self._levels,
            steps=self._steps,
            band=self.band,
            ts_ms=reading.ts_ms,
            unit=SCORE_UNIT,
        )
        return outcome, scored
