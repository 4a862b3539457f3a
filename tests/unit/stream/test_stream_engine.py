"""The rule engine: warnings carry what an operator needs and state survives encoding."""

from __future__ import annotations

from cityvitals.contract import Reading, decode_warning, encode
from cityvitals.kinds import Kind
from cityvitals.levels import Level
from stream.engine import NodeState, RuleEngine, decode_state, encode_state
from tests.factories import PLACE

WHERE = PLACE
T0 = 1_764_028_800_000


def smoke(seq: int, obscuration: float, temperature: float) -> Reading:
    return Reading(
        v=1,
        node="sm-0001",
        kind=Kind.SMOKE,
        seq=seq,
        ts_ms=T0 + seq * 60_000,
        metrics={"obscuration_pct_m": obscuration, "temperature_c": temperature},
    )


def run(readings, state=None):
    engine = RuleEngine()
    state = state or NodeState()
    out = []
    for r in readings:
        out += engine.evaluate(r, WHERE, state)
    return out, state


def test_warning_carries_level_rule_value_threshold_placement_and_evidence():
    """A raised warning names its rule, node, level change, value, threshold, unit, the
    triggering seq, placement and the recent readings as evidence."""
    warnings, _ = run([smoke(0, 0.1, 20), smoke(1, 9.0, 21), smoke(2, 9.5, 22)])
    (w,) = warnings
    assert (w.rule, w.node, w.metric, w.level, w.previous) == (
        "smoke.obscuration",
        "sm-0001",
        "obscuration_pct_m",
        Level.RED,
        Level.NONE,
    )
    assert (w.value, w.threshold, w.unit, w.seq) == (9.5, 8.0, "%/m", 2)
    assert w.placement == WHERE
    assert [e.value for e in w.evidence] == [0.1, 9.0, 9.5]
    assert decode_warning(encode(w)) == w


def test_fingerprint_is_stable_across_level_changes_and_distinct_per_rule():
    """Raise, lower and clear of one (rule, node) share a fingerprint; another rule differs."""
    readings = [
        smoke(i, o, t)
        for i, (o, t) in enumerate([(9, 90), (9, 90), (3, 90), (3, 90), (0, 20), (0, 20)])
    ]
    warnings, _ = run(readings)
    by_rule: dict[str, set[str]] = {}
    for w in warnings:
        by_rule.setdefault(w.rule, set()).add(w.fingerprint)
    assert all(len(fps) == 1 for fps in by_rule.values())
    assert by_rule["smoke.obscuration"] != by_rule["smoke.temperature"]
    cleared = [w for w in warnings if w.cleared]
    assert {w.rule for w in cleared} == {"smoke.obscuration", "smoke.temperature"}
    assert all(w.previous > Level.NONE for w in cleared)


def test_state_survives_an_encode_decode_round_trip_midway():
    """A worker that stores state as bytes and reloads it decides exactly as one that did not."""
    readings = [smoke(i, 0.1 + i * 0.7, 20 + i * 5) for i in range(16)]
    straight, _ = run(readings)
    resumed, state = run(readings[:7])
    more, _ = run(readings[7:], decode_state(encode_state(state)))
    assert straight == resumed + more


def test_empty_state_bytes_mean_a_new_node():
    """A node the table has never seen starts from an empty state."""
    assert decode_state(b"") == NodeState()
    assert decode_state(None) == NodeState()


def test_readings_without_a_rule_metric_change_nothing():
    """A crowd count alone (no density) raises no warning, whatever its size."""
    r = Reading(v=1, node="cr-0001", kind=Kind.CROWD, seq=0, ts_ms=T0, metrics={"count": 90000.0})
    warnings, state = run([r, r])
    assert warnings == []
    assert state.rules == {}
