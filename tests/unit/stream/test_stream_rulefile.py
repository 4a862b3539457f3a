"""The rule file: every mistake is one error naming the file, the rule and the field;
the built-in rules and the annotated example load; garbage never gets past as rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cityvitals.errors import ConfigError
from cityvitals.kinds import Kind
from cityvitals.levels import Level
from stream.rules import (
    DEFAULT_RULES,
    AnomalyRule,
    AreaRule,
    CompositeRule,
    ForecastRule,
    RateRule,
    ThresholdRule,
    load_rules,
)
from stream.rules.file import parse_rules

REPO = Path(__file__).resolve().parents[3]

GOOD = """
[[rule]]
name = "depth"
type = "threshold"
kind = "water_level"
metric = "depth_cm"
levels = { blue = 10, red = 50 }
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


def test_a_good_file_builds_its_rules(tmp_path):
    (rule,) = load(tmp_path, GOOD)
    assert isinstance(rule, ThresholdRule)
    assert (rule.name, rule.kind, rule.metric) == ("depth", Kind.WATER_LEVEL, "depth_cm")
    assert rule.threshold(Level.RED) == 50
    assert rule.selector.everything


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('type = "threshold"', 'type = "thresh"'), 'rule[0].type (rule "depth"): expected one of'),
        (('type = "threshold"\n', ""), 'rule[0].type (rule "depth"): expected one of'),
        (
            ('metric = "depth_cm"', 'metric = "depth_m"'),
            'rule[0].metric (rule "depth"): expected a metric of water_level: depth_cm, '
            "found 'depth_m'",
        ),
        (
            ('kind = "water_level"', 'kind = "river"'),
            'rule[0].kind (rule "depth"): expected one of crowd, manhole, smoke, water_level',
        ),
        (
            ("levels = { blue = 10, red = 50 }", "levels = { blue = 60, red = 50 }"),
            'rule[0].levels (rule "depth"): expected thresholds that rise with the level',
        ),
        (
            ("levels = { blue = 10, red = 50 }", "levels = {}"),
            'rule[0].levels (rule "depth"): expected at least one of blue',
        ),
        (
            ("levels = { blue = 10, red = 50 }", "levels = { purple = 3 }"),
            'rule[0].levels.purple (rule "depth"): expected one of the known keys: blue, orange,',
        ),
        (
            ('metric = "depth_cm"', 'metric = "depth_cm"\nband = -1'),
            'rule[0].band (rule "depth"): expected float >= 0.0, found -1',
        ),
        (
            ('metric = "depth_cm"', 'metric = "depth_cm"\nbnad = 1'),
            'rule[0].bnad (rule "depth"): expected one of the known keys:',
        ),
        (
            ('metric = "depth_cm"', 'metric = "depth_cm"\nwhere = { district = "Harbour" }'),
            'rule[0].where.district (rule "depth"): expected array',
        ),
        (
            ('name = "depth"', 'name = "Depth Rule"'),
            "rule[0].name: expected 1 to 64 of a-z 0-9",
        ),
    ],
)
def test_every_mistake_names_file_rule_and_field(tmp_path, change, expected):
    old, new = change
    assert old in GOOD
    assert error(tmp_path, GOOD.replace(old, new, 1)).startswith(expected)


def test_a_second_rule_with_the_same_name_is_refused(tmp_path):
    message = error(tmp_path, GOOD + GOOD)
    assert message == 'rule[1].name (rule "depth"): expected a name not used before (rule[0])'


def test_forecast_and_composite_mistakes(tmp_path):
    forecast = """
[[rule]]
name = "f"
type = "forecast"
kind = "water_level"
metric = "depth_cm"
threshold = 5000
within_minutes = 30
level = "orange"
"""
    assert error(tmp_path, forecast).startswith(
        'rule[0].threshold (rule "f"): expected a value within 0..1000 cm, found 5000'
    )
    assert error(tmp_path, forecast.replace('"orange"', '"amber"')).startswith(
        'rule[0].level (rule "f"): expected one of blue, orange, red, yellow'
    )
    composite = """
[[rule]]
name = "fire"
type = "composite"
kind = "smoke"
level = "red"
all = [ { metric = "obscuration_pct_m", above = 2, below = 9 } ]
"""
    assert error(tmp_path, composite) == (
        'rule[0].all[0] (rule "fire"): expected exactly one of above, below, rising_per_minute'
    )
    assert error(tmp_path, composite.replace("obscuration_pct_m", "depth_cm")).startswith(
        'rule[0].all[0].metric (rule "fire"): expected a metric of smoke'
    )


AREA = """
[[rule]]
name = "flood"
type = "area"
kind = "water_level"
of = ["depth"]
by = "street"
nodes = 3
at_least = "orange"
fraction = 0.25
where = { district = ["Harbour"] }
"""


def test_an_area_rule_counts_node_rules_of_its_kind(tmp_path):
    _depth, flood = load(tmp_path, GOOD + AREA)
    assert isinstance(flood, AreaRule)
    assert (flood.members, flood.by, flood.nodes, flood.at_least, flood.fraction) == (
        ("depth",),
        "street",
        3,
        Level.ORANGE,
        0.25,
    )
    assert flood.selector.district == frozenset({"Harbour"})
    # Its member may come after it in the file.
    assert [r.name for r in load(tmp_path.joinpath(), AREA + GOOD)] == ["flood", "depth"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ('of = ["depth"]', 'of = ["deep"]'),
            'rule[1].of[0] (rule "flood"): expected the name '
            "of a water_level rule in this file (depth), found 'deep'",
        ),
        (('of = ["depth"]', "of = []"), 'rule[1].of (rule "flood"): expected at least one rule'),
        (
            ('of = ["depth"]', 'of = ["flood"]'),
            'rule[1].of[0] (rule "flood"): expected a node '
            "rule (an area rule counts nodes, not other areas), found 'flood'",
        ),
        (('by = "street"', 'by = "city"'), 'rule[1].by (rule "flood"): expected one of'),
        (("nodes = 3", "nodes = 0"), 'rule[1].nodes (rule "flood"): expected'),
        (("fraction = 0.25", "fraction = 1.5"), 'rule[1].fraction (rule "flood"): expected'),
        (('at_least = "orange"', 'at_least = "none"'), 'rule[1].at_least (rule "flood"): expected'),
        (
            ("nodes = 3", ""),
            'rule[1].nodes (rule "flood"): expected a value (this key is required)',
        ),
    ],
)
def test_area_rule_mistakes_name_the_field(tmp_path, change, expected):
    message = error(tmp_path, GOOD + AREA.replace(*change))
    assert message.startswith(expected), message


def test_an_area_rule_over_another_kind_is_refused(tmp_path):
    smoke = (
        GOOD.replace('name = "depth"', 'name = "smoke"')
        .replace("water_level", "smoke")
        .replace("depth_cm", "obscuration_pct_m")
    )
    message = error(tmp_path, smoke + AREA.replace('of = ["depth"]', 'of = ["smoke"]'))
    assert message == (
        "rule[1].of[0] (rule \"flood\"): expected a water_level rule, not smoke, found 'smoke'"
    )


def test_broken_toml_and_a_missing_file_are_config_errors(tmp_path):
    assert error(tmp_path, "[[rule]\nname=").startswith("(syntax): expected valid TOML")
    with pytest.raises(ConfigError, match="does not exist"):
        load_rules(tmp_path / "nowhere.toml")


def test_the_built_in_rules_are_the_documented_thresholds():
    """default.toml holds the thresholds docs/contract.md documents, for every kind."""
    by_name = {r.name: r for r in DEFAULT_RULES}
    assert {r.kind for r in DEFAULT_RULES} == set(Kind)
    depth = by_name["water_level.depth"]
    assert isinstance(depth, ThresholdRule)
    assert [depth.threshold(lv) for lv in (Level.BLUE, Level.YELLOW, Level.ORANGE, Level.RED)] == [
        10,
        20,
        30,
        50,
    ]
    assert depth.band == 2.0
    cover = by_name["manhole.cover_open"]
    assert isinstance(cover, ThresholdRule)
    assert cover.threshold(Level.ORANGE) == 0.5
    assert cover.threshold(Level.RED) is None


def test_the_annotated_example_loads_with_every_rule_type():
    rules = load_rules(REPO / "deploy" / "rules.toml")
    types = {type(r) for r in rules}
    assert types == {ThresholdRule, RateRule, ForecastRule, CompositeRule, AnomalyRule, AreaRule}
    assert any(not r.selector.everything for r in rules)


VALUE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 100)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
FIELD = st.sampled_from(
    [
        "name",
        "type",
        "kind",
        "metric",
        "levels",
        "band",
        "threshold",
        "within_minutes",
        "level",
        "all",
        "where",
        "per_minutes",
        "raise_after",
        "of",
        "by",
        "nodes",
        "at_least",
        "fraction",
    ]
)
ENTRY = st.dictionaries(
    FIELD,
    VALUE
    | st.sampled_from(
        [
            "threshold",
            "rate",
            "forecast",
            "composite",
            "area",
            "water_level",
            "smoke",
            "depth_cm",
            "red",
            "street",
            ["depth"],
        ]
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(
    data=st.dictionaries(
        st.sampled_from(["rule", "version", "x"]), st.lists(ENTRY, max_size=3) | VALUE, max_size=2
    )
)
def test_garbage_is_refused_with_a_config_error_never_anything_else(data):
    """Whatever the parsed TOML holds, the loader returns rules or raises ConfigError."""
    try:
        rules = parse_rules(Path("rules.toml"), data)
    except ConfigError as exc:
        message = str(exc)
    else:
        message = "rules.toml: "
        assert all(r.name for r in rules)
    assert message.startswith("rules.toml: ")
