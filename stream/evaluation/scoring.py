"""Event-based scoring of early warnings: precision, recall, lead time, false alarms. Pure.

`replay` runs a rule set over a `Case` as the stream would (one
`RuleEngine`, one `NodeState` per node, readings in order). `episodes` turns
the warnings into alarm episodes: a counted rule's level reaching the
case's `min_level` until it falls back below (a raise until its clear).
`score_case` matches episodes to the case's events:

- an event is **detected** when a counted episode starts within
  [onset - tolerance, end];
- an episode is **true** when it overlaps [onset - tolerance, end + grace]
  of some event, **false** otherwise; precision = true / all episodes;
- **lead time** (events with a red crossing) = crossing - the first
  counted raise in the detection window, overall and per rule type;
- **false alarms per node-day** = false episodes / the case's span in days.

`summarise` pools the scores of several seeds of one scenario.

>>> from stream.rules import DEFAULT_RULES
>>> from stream.evaluation.scenarios import rainstorm
>>> case = rainstorm(1)
>>> score = score_case(case, replay(case, DEFAULT_RULES), rule_types(DEFAULT_RULES))
>>> score.detected, score.false_episodes, score.leads_min[0] > 0
((True,), 0, True)
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from cityvitals.contract import Warning
from cityvitals.levels import Level
from stream.detectors import AnomalyScorer
from stream.engine import NodeState, RuleEngine
from stream.evaluation.scenarios import Case, Event
from stream.rules import (
    AnomalyRule,
    CompositeRule,
    ForecastRule,
    RateRule,
    Rule,
    ThresholdRule,
)

__all__ = [
    "ORANGE_OR_ABOVE",
    "CaseScore",
    "DetectorScore",
    "Episode",
    "Summary",
    "detector_hits",
    "episodes",
    "evaluate",
    "replay",
    "rule_types",
    "score_case",
    "summarise",
]

_MIN_MS = 60_000
#: The key of `CaseScore.leads_by_type` for the first counted warning at orange or red.
ORANGE_OR_ABOVE = "orange+"
_TYPES: tuple[tuple[type, str], ...] = (
    (ThresholdRule, "threshold"),
    (RateRule, "rate"),
    (ForecastRule, "forecast"),
    (CompositeRule, "composite"),
    (AnomalyRule, "anomaly"),
)


def rule_types(rules: Iterable[Rule]) -> dict[str, str]:
    """Rule name -> type name (threshold, rate, forecast, composite, anomaly)."""
    out = {}
    for rule in rules:
        out[rule.name] = next((name for cls, name in _TYPES if isinstance(rule, cls)), "other")
    return out


def replay(case: Case, rules: Iterable[Rule]) -> tuple[Warning, ...]:
    """Every warning the rules raise, change or clear over the case's readings."""
    engine = RuleEngine(rules)
    states: dict[str, NodeState] = {}
    out: list[Warning] = []
    for reading in case.readings:
        state = states.setdefault(reading.node, NodeState())
        out += engine.evaluate(reading, case.placement, state)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Episode:
    """One alarm: a counted rule at or above the case's `min_level`, until it falls below."""

    node: str
    rule: str
    rule_type: str
    start_ms: int
    end_ms: int | None  # None: still raised when the series ended
    peak: Level
    #: A forecast's predicted crossing at the raise.
    predicted_crossing_ms: int | None = None

    def overlaps(self, lo_ms: int, hi_ms: int) -> bool:
        return self.start_ms <= hi_ms and (self.end_ms is None or self.end_ms >= lo_ms)


@dataclass(slots=True)
class _Open:
    start_ms: int
    peak: Level
    predicted_crossing_ms: int | None


def episodes(case: Case, warnings: Iterable[Warning], types: Mapping[str, str]) -> list[Episode]:
    """The case's counted alarm episodes, in the order they start."""
    floor = case.counted.min_level
    raised: dict[tuple[str, str], _Open] = {}
    done: list[Episode] = []

    def close(key: tuple[str, str], seen: _Open, end_ms: int | None) -> Episode:
        rtype = types.get(key[1], "other")
        return Episode(
            key[0], key[1], rtype, seen.start_ms, end_ms, seen.peak, seen.predicted_crossing_ms
        )

    for w in warnings:
        if not case.counted.counts(w.rule, types.get(w.rule, "other"), w.metric):
            continue
        key = (w.node, w.rule)
        seen = raised.get(key)
        if w.level >= floor and seen is None:
            raised[key] = _Open(w.ts_ms, w.level, w.predicted_crossing_ms)
        elif w.level >= floor and seen is not None:
            seen.peak = max(seen.peak, w.level)
        elif seen is not None:
            done.append(close(key, raised.pop(key), w.ts_ms))
    done += [close(key, seen, None) for key, seen in raised.items()]
    return sorted(done, key=lambda e: (e.start_ms, e.rule))


@dataclass(frozen=True)
class CaseScore:
    """How the warnings of one rule set did on one case."""

    case: str
    seed: int
    events: tuple[Event, ...]
    detected: tuple[bool, ...]
    #: Per event with a crossing: crossing - first counted raise, minutes (None: missed).
    leads_min: tuple[float | None, ...]
    #: Per event with a crossing: lead time of the first raise of each rule type.
    leads_by_type: tuple[Mapping[str, float], ...]
    #: Per event: minutes from onset to the first counted raise (None: missed).
    delays_min: tuple[float | None, ...]
    true_episodes: int
    false_episodes: int
    node_days: float
    #: The highest level of any false episode (NONE if there was none).
    false_peak: Level
    episodes: tuple[Episode, ...] = field(repr=False, default=())

    @property
    def all_episodes(self) -> int:
        return self.true_episodes + self.false_episodes


def score_case(case: Case, warnings: Iterable[Warning], types: Mapping[str, str]) -> CaseScore:
    """Match the counted alarm episodes of `warnings` against the case's events."""
    warnings = tuple(warnings)
    eps = episodes(case, warnings, types)
    tol, grace = case.tolerance_ms, case.grace_ms
    detected, leads, by_type, delays = [], [], [], []
    for event in case.events:
        raised = [
            e
            for e in eps
            if e.node == event.node and event.onset_ms - tol <= e.start_ms <= event.end_ms
        ]
        detected.append(bool(raised))
        delays.append((raised[0].start_ms - event.onset_ms) / _MIN_MS if raised else None)
        if event.crossing_ms is not None:
            leads.append((event.crossing_ms - raised[0].start_ms) / _MIN_MS if raised else None)
            first: dict[str, float] = {}
            for e in raised:
                first.setdefault(e.rule_type, (event.crossing_ms - e.start_ms) / _MIN_MS)
                first.setdefault(e.rule, (event.crossing_ms - e.start_ms) / _MIN_MS)
            urgent = [
                w.ts_ms
                for w in warnings
                if w.level >= Level.ORANGE
                and case.counted.counts(w.rule, types.get(w.rule, "other"), w.metric)
                and event.onset_ms - tol <= w.ts_ms <= event.end_ms
            ]
            if urgent:
                first[ORANGE_OR_ABOVE] = (event.crossing_ms - urgent[0]) / _MIN_MS
            by_type.append(first)
    true = [
        e
        for e in eps
        if any(
            e.node == ev.node and e.overlaps(ev.onset_ms - tol, ev.end_ms + grace)
            for ev in case.events
        )
    ]
    false = [e for e in eps if e not in true]
    return CaseScore(
        case=case.name,
        seed=case.seed,
        events=case.events,
        detected=tuple(detected),
        leads_min=tuple(leads),
        leads_by_type=tuple(by_type),
        delays_min=tuple(delays),
        true_episodes=len(true),
        false_episodes=len(false),
        node_days=case.node_days,
        false_peak=max((e.peak for e in false), default=Level.NONE),
        episodes=tuple(eps),
    )


@dataclass(frozen=True)
class Summary:
    """One scenario and rule set, pooled over seeds."""

    scenario: str
    cases: int
    events: int
    detected: int
    true_episodes: int
    false_episodes: int
    node_days: float
    leads_min: tuple[float, ...]
    delays_min: tuple[float, ...]
    leads_by_type: Mapping[str, tuple[float, ...]]
    false_peak: Level

    @property
    def recall(self) -> float | None:
        return self.detected / self.events if self.events else None

    @property
    def precision(self) -> float | None:
        total = self.true_episodes + self.false_episodes
        return self.true_episodes / total if total else None

    @property
    def lead_median(self) -> float | None:
        return statistics.median(self.leads_min) if self.leads_min else None

    @property
    def lead_min(self) -> float | None:
        return min(self.leads_min) if self.leads_min else None

    @property
    def false_per_node_day(self) -> float:
        return self.false_episodes / self.node_days if self.node_days else 0.0


def summarise(scores: Sequence[CaseScore]) -> Summary:
    """Pool the scores of one scenario over its seeds.

    Lead times are pooled over detected events only; a missed event shows in
    the recall, not as a lead time.
    """
    by_type: dict[str, list[float]] = {}
    for s in scores:
        for first in s.leads_by_type:
            for name, lead in first.items():
                by_type.setdefault(name, []).append(lead)
    return Summary(
        scenario=scores[0].case if scores else "",
        cases=len(scores),
        events=sum(len(s.events) for s in scores),
        detected=sum(sum(s.detected) for s in scores),
        true_episodes=sum(s.true_episodes for s in scores),
        false_episodes=sum(s.false_episodes for s in scores),
        node_days=sum(s.node_days for s in scores),
        leads_min=tuple(x for s in scores for x in s.leads_min if x is not None),
        delays_min=tuple(x for s in scores for x in s.delays_min if x is not None),
        leads_by_type={k: tuple(v) for k, v in by_type.items()},
        false_peak=max((s.false_peak for s in scores), default=Level.NONE),
    )


@dataclass(frozen=True)
class DetectorScore:
    """One detector of a scorer, flagging readings whose p-value is below `p_below`."""

    events: int
    detected: int
    #: Per event: minutes from onset to the first flag (None: not flagged).
    delays_min: tuple[float | None, ...]
    false_flags: int
    node_days: float

    @property
    def recall(self) -> float:
        return self.detected / self.events if self.events else 0.0

    @property
    def false_per_node_day(self) -> float:
        return self.false_flags / self.node_days if self.node_days else 0.0


def detector_hits(
    case: Case, scorer: AnomalyScorer, metric: str, part: str, *, p_below: float = 1e-3
) -> DetectorScore:
    """Score one detector (`part` of `scorer`) on the case's `metric`, prequentially.

    An event is flagged when the detector's p-value is below `p_below` at a
    reading in [onset, end]; every flag outside [onset - tolerance, end +
    grace] of all events is false.
    """
    ts, xs = case.series(metric)
    series = scorer.score_learn_many(scorer.new_state(), np.asarray(xs), np.asarray(ts))
    flagged = np.asarray(ts)[series.part(part) < p_below]
    delays: list[float | None] = []
    for event in case.events:
        inside = flagged[(flagged >= event.onset_ms) & (flagged <= event.end_ms)]
        delays.append(float(inside[0] - event.onset_ms) / _MIN_MS if inside.size else None)
    outside = np.ones(flagged.shape, dtype=bool)
    for event in case.events:
        lo, hi = event.onset_ms - case.tolerance_ms, event.end_ms + case.grace_ms
        outside &= (flagged < lo) | (flagged > hi)
    return DetectorScore(
        events=len(case.events),
        detected=sum(d is not None for d in delays),
        delays_min=tuple(delays),
        false_flags=int(outside.sum()),
        node_days=case.node_days,
    )


def evaluate(
    make: Callable[[int], Case], rules: Sequence[Rule], seeds: Iterable[int]
) -> tuple[Summary, tuple[CaseScore, ...]]:
    """Generate the scenario for each seed, replay `rules` over it and pool the scores."""
    types = rule_types(rules)
    scores = tuple(score_case(c, replay(c, rules), types) for c in map(make, seeds))
    return summarise(scores), scores
