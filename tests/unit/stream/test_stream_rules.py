"""Threshold rules: four levels, raise/clear streaks and hysteresis that stops flapping."""

from __future__ import annotations

import random

import pytest

from cityvitals.kinds import Kind
from cityvitals.levels import Level
from stream.rules import DEFAULT_RULES, RuleState, ThresholdRule

DEPTH = ThresholdRule(
    "water_level.depth",
    Kind.WATER_LEVEL,
    "depth_cm",
    {Level.BLUE: 10, Level.YELLOW: 20, Level.ORANGE: 30, Level.RED: 50},
    band=2.0,
)


def feed(rule: ThresholdRule, values) -> list[Level]:
    state = RuleState()
    changes = []
    for v in values:
        new = rule.step(state, v)
        if new is not None:
            changes.append(new)
    return changes


def test_single_spike_does_not_raise():
    """One reading over a threshold is not a warning: raise_after=2 needs two in a row."""
    assert feed(DEPTH, [3, 60, 3, 60, 3]) == []


def test_streak_raises_only_as_far_as_every_reading_supports():
    """25 then 64 cm raises to yellow (what both readings reach), then red after two 64s."""
    assert feed(DEPTH, [25, 64, 64, 64]) == [Level.YELLOW, Level.RED]


def test_falls_back_only_below_the_band_and_after_clear_after_readings():
    """Red holds at 49 (inside the 2 cm band) and clears step by step as the water recedes."""
    assert feed(DEPTH, [55, 55, 49, 49, 49, 47, 47, 5, 5]) == [Level.RED, Level.ORANGE, Level.NONE]


@pytest.mark.parametrize("seed", range(5))
def test_noise_around_a_threshold_does_not_flap(seed):
    """A value wobbling +-1.5 cm around the 20 cm threshold for 500 readings changes level
    at most twice (once up to yellow), never back and forth."""
    rng = random.Random(seed)
    values = [20 + rng.uniform(-1.5, 1.5) for _ in range(500)]
    changes = feed(DEPTH, values)
    assert len(changes) <= 2
    assert Level.NONE not in changes[1:]  # once raised, it never clears while within the band


def test_without_hysteresis_the_same_noise_would_flap():
    """The control: band 0 and single-reading streaks flap on that noise (proves the test bites)."""
    twitchy = ThresholdRule(
        "t",
        Kind.WATER_LEVEL,
        "depth_cm",
        {Level.YELLOW: 20},
        band=0.0,
        raise_after=1,
        clear_after=1,
    )
    rng = random.Random(0)
    assert len(feed(twitchy, [20 + rng.uniform(-1.5, 1.5) for _ in range(500)])) > 50


def test_binary_metric_with_a_single_level():
    """cover_open uses only the orange level: open raises orange, closed clears."""
    rule = next(r for r in DEFAULT_RULES if r.name == "manhole.cover_open")
    assert feed(rule, [0, 1, 1, 1, 0, 0]) == [Level.ORANGE, Level.NONE]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"thresholds": {Level.BLUE: 10, Level.YELLOW: 5}}, "rise with the level"),
        ({"thresholds": {}}, "thresholds need levels"),
        ({"thresholds": {Level.NONE: 1}}, "thresholds need levels"),
        ({"thresholds": {Level.BLUE: 1}, "band": -1}, "band"),
        ({"thresholds": {Level.BLUE: 1}, "raise_after": 0}, "raise_after"),
    ],
)
def test_invalid_rules_are_refused(kwargs, message):
    """Thresholds must rise with the level; band and streak lengths must make sense."""
    with pytest.raises(ValueError, match=message):
        ThresholdRule("bad", Kind.WATER_LEVEL, "depth_cm", **kwargs)


def test_rule_for_a_metric_the_kind_lacks_is_refused():
    """A rule naming a metric the sensor kind does not have fails at construction."""
    with pytest.raises(KeyError):
        ThresholdRule("bad", Kind.SMOKE, "depth_cm", {Level.RED: 1})


def test_default_rules_cover_every_kind_with_unique_names():
    """The built-in set watches every kind and no two rules share a name."""
    assert {r.kind for r in DEFAULT_RULES} == set(Kind)
    assert len({r.name for r in DEFAULT_RULES}) == len(DEFAULT_RULES)
