"""AnomalyScorer: several detectors on one metric, one calibrated p-value.

The detectors all look at the same series, so their p-values are strongly
dependent (a spike is also a fast rise and a jump off the baseline).
Fisher's method and its kin assume independence and would turn one odd
reading into overwhelming "combined" evidence. The Bonferroni min-p,
p = min(1, k * min_i p_i), is valid under *any* dependence: if each p_i is
a p-value, P(p <= a) <= sum_i P(p_i <= a / k) <= a. So the score 1 - p
keeps its meaning, P(score >= 1 - a) <= a for a series behaving normally,
and costs at most a factor k in sensitivity when the detectors agree.

`default_scorer(kind)` gives the detector set for each sensor kind's main
metric (docs/detectors.md says why each is there).

>>> import numpy
>>> rng = numpy.random.default_rng(7)
>>> scorer = default_scorer("water_level")
>>> state = scorer.new_state()
>>> depth = numpy.abs(rng.normal(3.0, 0.8, size=300))
>>> _ = scorer.score_learn_many(state, depth, numpy.arange(300) * 600_000)
>>> later = 300 * 600_000
>>> ordinary = scorer.score_one(state, 3.2, later)
>>> round(ordinary.score, 3), ordinary.worst
(0.0, 'rate')
>>> flood = scorer.score_one(state, 14.0, later)
>>> round(flood.score, 3), flood.worst
(1.0, 'rate')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgspec
import numpy as np
import numpy.typing as npt

from stream.detectors.base import Detector, FloatArray, anomaly_score, as_series, check_value
from stream.detectors.cusum_change import CusumChange, CusumChangeState
from stream.detectors.dropout import Dropout, DropoutState
from stream.detectors.ewma_baseline import EwmaBaselineState
from stream.detectors.flat_line import FlatLine, FlatLineState
from stream.detectors.rate_of_change import RateOfChange, RateOfChangeState
from stream.detectors.robust_baseline import RobustBaseline, RobustBaselineState
from stream.detectors.seasonal_baseline import SeasonalBaseline, SeasonalBaselineState
from stream.detectors.spike import Spike, SpikeState

#: Every state a scorer can hold; a new detector adds its state here.
AnyState = (
    RobustBaselineState
    | EwmaBaselineState
    | SeasonalBaselineState
    | CusumChangeState
    | RateOfChangeState
    | FlatLineState
    | DropoutState
    | SpikeState
)


class ScorerState(msgspec.Struct, array_like=True):
    """One state per detector, in the scorer's order (each tagged with its kind)."""

    parts: list[AnyState] = msgspec.field(default_factory=list)


class Scored(msgspec.Struct, frozen=True):
    """One reading's combined p-value and the p-value of each detector."""

    p: float
    names: tuple[str, ...]
    parts: tuple[float, ...]

    @property
    def score(self) -> float:
        return anomaly_score(self.p)

    @property
    def worst(self) -> str:
        """The detector with the smallest p-value (the first, on a tie)."""
        return self.names[self.parts.index(min(self.parts))]

    def by_name(self) -> dict[str, float]:
        return dict(zip(self.names, self.parts, strict=True))


@dataclass(frozen=True, slots=True)
class ScoredSeries:
    """`score_learn_many`'s answer: p (n,) and one column of parts (n, k) per detector."""

    names: tuple[str, ...]
    p: FloatArray
    parts: FloatArray

    @property
    def score(self) -> FloatArray:
        out: FloatArray = 1.0 - self.p
        return out

    def part(self, name: str) -> FloatArray:
        column: FloatArray = self.parts[:, self.names.index(name)]
        return column


def bonferroni(parts: FloatArray | list[float]) -> float:
    """min(1, k * min p_i): valid whatever the dependence between the p_i.

    >>> bonferroni([0.5, 0.004, 0.2])
    0.012
    """
    return min(1.0, len(parts) * min(parts))


@dataclass(frozen=True, slots=True)
class AnomalyScorer:
    """Named detectors for one metric of one node, combined by Bonferroni min-p.

    Changing the detector list invalidates stored states: `score_one` and
    friends raise ValueError on a state built for another list, and the
    caller starts again from `new_state()`.
    """

    state_type: ClassVar[type[ScorerState]] = ScorerState

    detectors: tuple[tuple[str, Detector[Any]], ...]
    names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = tuple(name for name, _ in self.detectors)
        if not names:
            raise ValueError("detectors must name at least one detector")
        if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"detectors need distinct, non-empty names, got {names}")
        object.__setattr__(self, "names", names)

    @classmethod
    def of(cls, detectors: Mapping[str, Detector[Any]]) -> AnomalyScorer:
        return cls(tuple(detectors.items()))

    def new_state(self) -> ScorerState:
        return ScorerState([detector.new_state() for _, detector in self.detectors])

    def _parts(self, state: ScorerState) -> list[Any]:
        parts = state.parts
        if len(parts) != len(self.detectors) or not all(
            type(part) is detector.state_type
            for part, (_, detector) in zip(parts, self.detectors, strict=True)
        ):
            raise ValueError(
                f"state holds {[type(part).__name__ for part in parts]}, not states for "
                f"{list(self.names)}: it was made by another scorer"
            )
        return parts

    def score_one(self, state: ScorerState, x: float, t_ms: int) -> Scored:
        x = check_value(x)
        ps = tuple(
            detector.score_one(part, x, t_ms)
            for part, (_, detector) in zip(self._parts(state), self.detectors, strict=True)
        )
        return Scored(p=bonferroni(list(ps)), names=self.names, parts=ps)

    def learn_one(self, state: ScorerState, x: float, t_ms: int) -> None:
        x = check_value(x)
        for part, (_, detector) in zip(self._parts(state), self.detectors, strict=True):
            detector.learn_one(part, x, t_ms)

    def score_learn_many(
        self, state: ScorerState, xs: npt.ArrayLike, ts_ms: npt.ArrayLike
    ) -> ScoredSeries:
        values, times = as_series(xs, ts_ms)
        parts = np.column_stack(
            [
                detector.score_learn_many(part, values, times)
                for part, (_, detector) in zip(self._parts(state), self.detectors, strict=True)
            ]
        ).reshape(len(values), len(self.detectors))
        p = np.minimum(1.0, len(self.detectors) * parts.min(axis=1, initial=1.0))
        return ScoredSeries(self.names, p, parts)


@dataclass(frozen=True, slots=True)
class KindDefaults:
    """The metric a kind's default scorer is tuned for and that metric's resolution."""

    metric: str
    resolution: float


#: Resolution: the smallest change the sensor reports, in the metric's unit.
#: It floors every detector's spread (min_scale), so a history that never
#: moved cannot make a one-step change look infinitely unlikely.
KIND_DEFAULTS: dict[str, KindDefaults] = {
    "water_level": KindDefaults("depth_cm", 0.5),
    "crowd": KindDefaults("density_m2", 0.01),
    "smoke": KindDefaults("obscuration_pct_m", 0.05),
    "manhole": KindDefaults("gas_lel_pct", 0.5),
    "generic": KindDefaults("any", 1e-6),
}

#: Rates are floored at one resolution step per typical 10-minute interval.
_TYPICAL_INTERVAL_MIN = 10.0


def default_scorer(
    kind: str, *, resolution: float | None = None, utc_offset_minutes: int = 0
) -> AnomalyScorer:
    """The detector set for a sensor kind (or "generic") and its main metric.

    `resolution` overrides the kind's default (in the metric's unit);
    `utc_offset_minutes` places the crowd scorer's seasonal bins on the
    city's local clock.

    >>> default_scorer("crowd").names
    ('seasonal', 'flat', 'dropout')
    """
    if kind not in KIND_DEFAULTS:
        raise ValueError(f"kind must be one of {sorted(KIND_DEFAULTS)}, got {kind!r}")
    step = KIND_DEFAULTS[kind].resolution if resolution is None else resolution
    rate_floor = step / _TYPICAL_INTERVAL_MIN
    chosen: dict[str, Detector[Any]]
    if kind == "water_level":
        chosen = {
            "rate": RateOfChange(direction="rise", min_scale=rate_floor),
            "shift": CusumChange(min_scale=step),
            "spike": Spike(min_scale=step),
            "flat": FlatLine(),
            "dropout": Dropout(),
        }
    elif kind == "crowd":
        # No rate detector: crowds ramp up fast every weekend, and a rate
        # baseline has no clock; a surge is what the seasonal bins are for.
        chosen = {
            "seasonal": SeasonalBaseline(utc_offset_minutes=utc_offset_minutes, min_scale=step),
            "flat": FlatLine(),
            "dropout": Dropout(),
        }
    elif kind == "smoke":
        chosen = {
            "level": RobustBaseline(min_scale=step),
            "rise": RateOfChange(direction="rise", min_scale=rate_floor),
            "flat": FlatLine(),
            "dropout": Dropout(),
        }
    elif kind == "manhole":
        chosen = {
            "drift": CusumChange(min_scale=step),
            "level": RobustBaseline(min_scale=step),
            "spike": Spike(min_scale=step),
            "flat": FlatLine(),
            "dropout": Dropout(),
        }
    else:
        chosen = {
            "level": RobustBaseline(min_scale=step),
            "shift": CusumChange(min_scale=step),
            "rate": RateOfChange(min_scale=rate_floor),
            "spike": Spike(min_scale=step),
            "flat": FlatLine(),
            "dropout": Dropout(),
        }
    return AnomalyScorer.of(chosen)
