"""Evaluate a node's rules on each reading and say which warnings changed. Pure.

The per-node state is a small msgspec struct, encoded to bytes between
readings, so a faust table (memory in the embedded mode, a Kafka changelog
in the distributed one) can hold it and a restarted worker resumes it. An
anomaly rule's detectors live there too (`RuleState.detector`): with one
such rule a node's state is about 1-2 kB (3.7 kB for a crowd node and its
168 time-of-week bins), against a few hundred bytes without.

>>> from cityvitals.contract import Placement, Reading
>>> engine = RuleEngine()
>>> where = Placement(district="Harbour", street="Dockside Street", grid="HB-101",
...                   unit="Harbour Drainage Office", lat=31.2, lon=121.5)
>>> state = NodeState()
>>> out = []
>>> for seq, depth in enumerate([3.0, 55.0, 57.0, 58.0]):
...     r = Reading(v=1, node="wl-0001", kind=Kind.WATER_LEVEL, seq=seq,
...                 ts_ms=1_764_028_800_000 + seq * 600_000, metrics={"depth_cm": depth})
...     out += engine.evaluate(r, where, state)
>>> [(w.level.label, w.value, w.threshold, len(w.evidence)) for w in out]
[('red', 57.0, 50.0, 3)]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import msgspec

from cityvitals.contract import CONTRACT_VERSION, Evidence, Placement, Reading, Warning, fingerprint
from cityvitals.kinds import Kind
from stream.rules import (
    DEFAULT_RULES,
    AnomalyRule,
    AnyRule,
    AreaRule,
    Outcome,
    Rule,
    RuleState,
)
from stream.state import StateCodec

EVIDENCE_READINGS = 5


#: Sequence numbers remembered per node below the highest, for `first_time`.
SEQ_WINDOW = 512


class NodeState(msgspec.Struct):
    rules: dict[str, RuleState] = msgspec.field(default_factory=dict)
    #: The last few (ts_ms, value) per metric: the evidence a warning carries.
    recent: dict[str, list[tuple[int, float]]] = msgspec.field(default_factory=dict)
    #: Highest seq taken, and a bitmap of the SEQ_WINDOW below it (bit i: top - i).
    seq_top: int = -1
    seq_seen: bytes = b""


def first_time(state: NodeState, seq: int) -> bool:
    """Record `seq` in the node's window; False if it was taken before.

    The gateway drops most duplicates, but with several gateways on a shared
    subscription a resent reading can reach a gateway that never saw the
    original, and a restarted worker gets its last batch again. This window
    lives in the node's state, so it survives both. A seq older than the
    window is let through (the sink is keyed by (node, seq) anyway).

    >>> s = NodeState()
    >>> [first_time(s, q) for q in (5, 6, 5, 900, 6, 899, 899)]
    [True, True, False, True, True, True, False]
    """
    bits = int.from_bytes(state.seq_seen, "little")
    if seq > state.seq_top:
        shift = seq - state.seq_top
        bits = 1 if shift >= SEQ_WINDOW or state.seq_top < 0 else ((bits << shift) | 1)
        state.seq_top = seq
    else:
        offset = state.seq_top - seq
        if offset >= SEQ_WINDOW:
            return True
        if bits >> offset & 1:
            return False
        bits |= 1 << offset
    state.seq_seen = (bits & ((1 << SEQ_WINDOW) - 1)).to_bytes(SEQ_WINDOW // 8, "little")
    return True


_codec = StateCodec(NodeState)


def encode_state(state: NodeState) -> bytes:
    return _codec.encode(state)


def decode_state(data: bytes | None) -> NodeState:
    return _codec.decode(data)


class MetricScore(NamedTuple):
    """One anomaly rule's score of one reading's metric, and the detector that gave it."""

    metric: str
    score: float
    worst: str


class RuleEngine:
    """The rules of a deployment, indexed by kind; evaluates each reading against those
    whose selector matches the node.

    Spatial rules (`AreaRule`) watch node warnings rather than readings; they
    are kept apart in `area_rules` for the area agent (`stream.areas`).
    """

    def __init__(self, rules: Iterable[AnyRule] = DEFAULT_RULES) -> None:
        every = tuple(rules)
        self.rules: tuple[Rule, ...] = tuple(r for r in every if not isinstance(r, AreaRule))
        self.area_rules: tuple[AreaRule, ...] = tuple(r for r in every if isinstance(r, AreaRule))
        self._by_kind: dict[Kind, tuple[Rule, ...]] = {
            kind: tuple(r for r in self.rules if r.kind is kind) for kind in Kind
        }

    def evaluate(
        self,
        reading: Reading,
        placement: Placement,
        state: NodeState,
        *,
        scores: list[MetricScore] | None = None,
    ) -> list[Warning]:
        """Update `state` with `reading`; return a Warning for each level that changed.

        With `scores`, each anomaly rule's score of the reading is appended to it.
        """
        for metric, value in reading.metrics.items():
            recent = state.recent.setdefault(metric, [])
            recent.append((reading.ts_ms, value))
            del recent[:-EVIDENCE_READINGS]
        changed: list[Warning] = []
        for rule in self._by_kind[reading.kind]:
            if rule.metric not in reading.metrics:
                continue
            if not rule.selector.everything and not rule.selector.matches(reading.node, placement):
                continue
            rule_state = state.rules.setdefault(rule.name, RuleState())
            if scores is not None and isinstance(rule, AnomalyRule):
                outcome, scored = rule.evaluate_scored(rule_state, reading)
                if scored is not None:
                    scores.append(MetricScore(rule.metric, scored.score, scored.worst))
            else:
                outcome = rule.evaluate(rule_state, reading)
            if outcome is not None:
                changed.append(self._warning(rule, outcome, reading, placement, state))
        return changed

    @staticmethod
    def _warning(
        rule: Rule, outcome: Outcome, reading: Reading, placement: Placement, state: NodeState
    ) -> Warning:
        return Warning(
            v=CONTRACT_VERSION,
            fingerprint=fingerprint(rule=rule.name, node=reading.node),
            rule=rule.name,
            node=reading.node,
            kind=reading.kind,
            metric=rule.metric,
            level=outcome.level,
            previous=outcome.previous,
            value=outcome.value,
            threshold=outcome.threshold,
            unit=outcome.unit,
            ts_ms=reading.ts_ms,
            seq=reading.seq,
            placement=placement,
            evidence=tuple(
                Evidence(ts_ms=t, value=v) for t, v in state.recent.get(rule.metric, ())
            ),
            predicted_crossing_ms=outcome.predicted_crossing_ms,
        )
