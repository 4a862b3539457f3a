"""Anomaly-score rules: the rule file checks them like every other type; on noise they stay
quiet, on a level shift or a spike they raise and then clear; their detector state lives in
the rule's RuleState, survives encoding mid-stream and costs other rules nothing."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest

from cityvitals.contract import Reading
from cityvitals.errors import ConfigError
from cityvitals.kinds import Kind
from cityvitals.levels import Level
from stream.engine import NodeState, RuleEngine, decode_state, encode_state
from stream.rules import DEFAULT_RULES, AnomalyRule, RuleState, ThresholdRule, load_rules
from stream.rules.area import AreaRule
from stream.rules.file import RULE_TYPES
from tests.factories import PLACE

T0 = 1_764_028_800_000
STEP_MS = 600_000
LEVELS = {Level.BLUE: 0.999, Level.YELLOW: 0.9999, Level.ORANGE: 0.99999, Level.RED: 0.999999}

GOOD = """
[[rule]]
name = "depth.anomaly"
type = "anomaly"
kind = "water_level"
metric = "depth_cm"
levels = { blue = 0.999, yellow = 0.9999, orange = 0.99999, red = 0.999999 }
"""


def load(tmp_path: Path, text: str):
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return load_rules(path)


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    message = str(info.value)
    assert message.startswith(str(tmp_path / "rules.toml") + ": "), message
    return message.split(": ", 1)[1]


def water(i: int, depth: float) -> Reading:
    return Reading(
        v=1,
        node="wl-0001",
        kind=Kind.WATER_LEVEL,
        seq=i,
        ts_ms=T0 + i * STEP_MS,
        metrics={"depth_cm": float(depth)},
    )


def noise(seed: int, size: int, *, mean: float = 20.0, sd: float = 1.0) -> list[float]:
    rng = np.random.default_rng(seed)
    return np.round(rng.normal(mean, sd, size), 2).tolist()


def run(engine: RuleEngine, depths: list[float], state: NodeState | None = None, *, start=0):
    state = state or NodeState()
    out = []
    for i, depth in enumerate(depths, start):
        out += engine.evaluate(water(i, depth), PLACE, state)
    return out, state


def anomaly_only() -> RuleEngine:
    return RuleEngine([AnomalyRule("depth.anomaly", Kind.WATER_LEVEL, "depth_cm", LEVELS)])


# -- the rule file -------------------------------------------------------------


def test_a_good_file_builds_an_anomaly_rule_with_its_defaults(tmp_path):
    """The TOML spec gives an AnomalyRule: raise and clear after 3, no band, the kind's
    default detectors (for water_level depth: rate, shift, spike, flat, dropout)."""
    (rule,) = load(tmp_path, GOOD)
    assert isinstance(rule, AnomalyRule)
    assert (rule.name, rule.kind, rule.metric) == ("depth.anomaly", Kind.WATER_LEVEL, "depth_cm")
    assert (rule.raise_after, rule.clear_after, rule.band, rule.min_duration_s) == (3, 3, 0, 0)
    assert rule.levels.threshold(Level.RED) == 0.999999
    assert rule.scorer.names == ("rate", "shift", "spike", "flat", "dropout")
    assert rule.selector.everything
    assert "anomaly" in RULE_TYPES


def test_detector_choice_and_clock_come_from_the_file(tmp_path):
    """`detectors`, `resolution` and `utc_offset_minutes` choose the scorer: the crowd
    set (with its seasonal bins on the city's clock) for a crowd count, generic for
    a metric the kind's scorer is not tuned for."""
    text = """
[[rule]]
name = "count"
type = "anomaly"
kind = "crowd"
metric = "count"
levels = { yellow = 0.9999 }
detectors = "crowd"
resolution = 1.0
utc_offset_minutes = 480
where = { district = ["Harbour"] }

[[rule]]
name = "heat"
type = "anomaly"
kind = "smoke"
metric = "temperature_c"
levels = { blue = 0.99 }
"""
    count, heat = load(tmp_path, text)
    assert count.scorer.names == ("seasonal", "flat", "dropout")
    seasonal = dict(count.scorer.detectors)["seasonal"]
    assert (seasonal.utc_offset_minutes, seasonal.min_scale) == (480, 1.0)
    assert not count.selector.everything
    assert heat.scorer.names == ("level", "shift", "rate", "spike", "flat", "dropout")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("blue = 0.999,", "blue = 1.5,"),
            'rule[0].levels.blue (rule "depth.anomaly"): expected an anomaly score between '
            "0 and 1, exclusive (such as 0.999), found 1.5",
        ),
        (
            ("blue = 0.999,", "blue = 0,"),
            'rule[0].levels.blue (rule "depth.anomaly"): expected an anomaly score between',
        ),
        (
            ("red = 0.999999", "red = 1.0"),
            'rule[0].levels.red (rule "depth.anomaly"): expected an anomaly score between '
            "0 and 1, exclusive (such as 0.999), found 1.0",
        ),
        (
            ("yellow = 0.9999", "yellow = 0.99"),
            'rule[0].levels (rule "depth.anomaly"): expected thresholds that rise with the level',
        ),
        (
            ("levels = { blue = 0.999, yellow = 0.9999, orange = 0.99999, red = 0.999999 }", ""),
            'rule[0].levels (rule "depth.anomaly"): expected a value (this key is required)',
        ),
        (
            ('metric = "depth_cm"', 'metric = "depth_cm"\nband = 0.999'),
            'rule[0].band (rule "depth.anomaly"): expected a band below the lowest level\'s '
            "score (0.999), or the warning never clears, found 0.999",
        ),
        (
            ('metric = "depth_cm"', 'metric = "depth_cm"\nband = -0.1'),
            'rule[0].band (rule "depth.anomaly"): expected float >= 0.0, found -0.1',
        ),
        (
            ('metric = "depth_cm"', 'metric = "depth_m"'),
            'rule[0].metric (rule "depth.anomaly"): expected a metric of water_level: depth_cm, '
            "found 'depth_m'",
        ),
        (
            ('metric = "depth_cm"', 'metric = "depth_cm"\ndetectors = "fancy"'),
            'rule[0].detectors (rule "depth.anomaly"): expected one of default, generic, '
            "water_level, crowd, smoke, manhole, found 'fancy'",
        ),
        (
            ('metric = "depth_cm"', 'metric = "depth_cm"\nutc_offset_minutes = 5000'),
            'rule[0].utc_offset_minutes (rule "depth.anomaly"): expected int <= 1440, found 5000',
        ),
        (
            ('metric = "depth_cm"', 'metric = "depth_cm"\nresolution = 0'),
            'rule[0].resolution (rule "depth.anomaly"): expected float > 0.0',
        ),
        (
            ('metric = "depth_cm"', 'metric = "depth_cm"\nraise_after = 0'),
            'rule[0].raise_after (rule "depth.anomaly"): expected int >= 1, found 0',
        ),
        (
            ('metric = "depth_cm"', 'metric = "depth_cm"\nthreshold = 0.9'),
            'rule[0].threshold (rule "depth.anomaly"): expected one of the known keys:',
        ),
    ],
)
def test_every_mistake_names_file_rule_and_field(tmp_path, change, expected):
    """Each mistake in an anomaly rule is one ConfigError naming the file, the rule (index
    and name) and the field, with what was expected and what was found."""
    old, new = change
    assert old in GOOD
    assert error(tmp_path, GOOD.replace(old, new, 1)).startswith(expected)


def test_the_rule_itself_refuses_what_the_file_would():
    """Built in code, the same mistakes are ValueErrors naming the rule."""
    with pytest.raises(ValueError, match=r"a: score thresholds must be in \(0, 1\)"):
        AnomalyRule("a", Kind.WATER_LEVEL, "depth_cm", {Level.BLUE: 2.0})
    with pytest.raises(ValueError, match=r"a: band must be >= 0 and below 0\.9"):
        AnomalyRule("a", Kind.WATER_LEVEL, "depth_cm", {Level.BLUE: 0.9}, band=0.95)
    with pytest.raises(ValueError, match="a: detectors must be one of"):
        AnomalyRule("a", Kind.WATER_LEVEL, "depth_cm", {Level.BLUE: 0.9}, detectors="x")
    with pytest.raises(ValueError, match="a: raise_after >= 1"):
        AnomalyRule("a", Kind.WATER_LEVEL, "depth_cm", {Level.BLUE: 0.9}, raise_after=0)
    with pytest.raises(KeyError):
        AnomalyRule("a", Kind.WATER_LEVEL, "gas_lel_pct", {Level.BLUE: 0.9})


def test_the_built_in_rules_have_no_anomaly_rule():
    """default.toml's node rules are thresholds only, no anomaly rules by default (its one
    other rule counts the depth rule's levels over a district)."""
    assert DEFAULT_RULES
    node_rules = [rule for rule in DEFAULT_RULES if not isinstance(rule, AreaRule)]
    assert node_rules
    assert all(isinstance(rule, ThresholdRule) for rule in node_rules)


# -- behaviour -----------------------------------------------------------------


def test_seeded_noise_stays_quiet_for_5000_readings():
    """Gaussian noise on a steady water depth raises no warning in 5 000 readings
    (about 35 days at 10 minutes) with the default levels and raise_after=3."""
    warnings, _ = run(anomaly_only(), noise(7, 5000))
    assert warnings == []


def test_a_level_shift_raises_reports_the_score_and_clears_once_learned():
    """Depth jumping from ~20 to ~26 cm (6 sd) raises a warning within a few readings; the
    Warning reports the score as its value, the level's score threshold, unit "score" and
    the rule's metric; once the detectors have learned the new level it clears."""
    depths = noise(7, 600) + noise(8, 1500, mean=26.0)
    warnings, _ = run(anomaly_only(), depths)
    raised = [w for w in warnings if w.previous is Level.NONE]
    assert raised, "the shift raised nothing"
    first = raised[0]
    assert 600 <= first.seq < 610
    assert first.level >= Level.BLUE
    assert (first.rule, first.metric, first.unit) == ("depth.anomaly", "depth_cm", "score")
    assert first.value >= first.threshold == LEVELS[first.level]
    assert 0.0 < first.value <= 1.0
    assert warnings[-1].level is Level.NONE
    assert warnings[-1].seq < 1600


def test_a_spike_raises_and_clears_soon_after():
    """Four readings at 60 cm in a quiet series raise a warning within three readings of
    the spike's end (the jump in and the jump back both score ~1), reach yellow at least,
    and clear within a few dozen readings."""
    depths = noise(7, 800)
    depths[500:504] = [60.0] * 4
    warnings, _ = run(anomaly_only(), depths)
    assert 502 <= warnings[0].seq <= 506
    assert max(w.level for w in warnings) >= Level.YELLOW
    assert warnings[-1].level is Level.NONE
    assert 504 <= warnings[-1].seq < 560


def test_state_survives_msgpack_mid_stream_with_identical_output():
    """Encoding and decoding the node's state every 250 readings (a worker restart, a
    rebalance) gives exactly the warnings of one uninterrupted run."""
    depths = noise(7, 600) + noise(8, 400, mean=26.0)
    depths[300:303] = [55.0] * 3
    engine = RuleEngine([*DEFAULT_RULES, *anomaly_only().rules])
    straight, _ = run(engine, depths)
    resumed = []
    data = b""
    for start in range(0, len(depths), 250):
        state = decode_state(data)
        part, state = run(engine, depths[start : start + 250], state, start=start)
        resumed += part
        data = encode_state(state)
    assert straight == resumed
    assert {w.rule for w in straight} == {"depth.anomaly", "water_level.depth"}


def test_the_engine_carries_the_detector_state_in_the_node_state():
    """The anomaly rule's scorer state is in NodeState.rules[name].detector, a few hundred
    bytes; the threshold rule next to it encodes no detector field at all."""
    engine = RuleEngine([*DEFAULT_RULES, *anomaly_only().rules])
    _, state = run(engine, noise(7, 300))
    held = state.rules["depth.anomaly"].detector
    assert 300 < len(held) < 1000
    assert b"detector" not in msgspec.msgpack.encode(state.rules["water_level.depth"])
    assert decode_state(encode_state(state)).rules["depth.anomaly"].detector == held
    assert len(encode_state(state)) < 1200


def test_changed_detector_settings_start_learning_again_rather_than_fail():
    """A state made for one detector set (or garbage) is replaced by a fresh one: the rule
    warms up again instead of raising on every reading."""
    default = AnomalyRule("a", Kind.WATER_LEVEL, "depth_cm", LEVELS)
    generic = AnomalyRule("a", Kind.WATER_LEVEL, "depth_cm", LEVELS, detectors="generic")
    state = RuleState()
    for i, depth in enumerate(noise(7, 100)):
        default.evaluate(state, water(i, depth))
    assert len(default.detector_state(state).parts) == 5
    assert len(generic.detector_state(state).parts) == 6
    assert generic.evaluate(state, water(100, 20.0)) is None
    state.detector = b"\x01garbage"
    assert len(default.detector_state(state).parts) == 5


def test_the_engine_hands_back_each_readings_score_for_the_sink():
    """With a `scores` list the engine reports, per reading, what each anomaly rule
    scored (the same score its warnings carry) and the detector behind it; without one
    it reports nothing and the warnings are the same."""
    depths = noise(3, 200) + [60.0] * 5
    with_scores, without = anomaly_only(), anomaly_only()
    a, b = NodeState(), NodeState()
    seen: list[list[tuple[str, float, str]]] = []
    warned_a, warned_b = [], []
    for i, depth in enumerate(depths):
        scores: list = []
        warned_a += with_scores.evaluate(water(i, depth), PLACE, a, scores=scores)
        warned_b += without.evaluate(water(i, depth), PLACE, b)
        seen.append([(s.metric, s.score, s.worst) for s in scores])
    assert warned_a == warned_b
    assert all(len(per) == 1 and per[0][0] == "depth_cm" for per in seen)
    assert all(0.0 <= per[0][1] <= 1.0 for per in seen)
    raised = next(w for w in warned_a if w.level > Level.NONE)
    assert seen[raised.seq][0][1] == raised.value
    assert seen[-1][0][2]  # the strongest detector is named
