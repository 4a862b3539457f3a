"""Rate, forecast and composite rules, selectors and minimum duration: each raises when
its condition holds, states what it saw, holds steady on noise and clears when it ends."""

from __future__ import annotations

import random

import pytest

from cityvitals.contract import Placement, Reading
from cityvitals.kinds import Kind
from cityvitals.levels import Level
from stream.engine import NodeState, RuleEngine
from stream.rules import (
    CompositeRule,
    Condition,
    ForecastRule,
    RateRule,
    RuleState,
    Selector,
    ThresholdRule,
)
from stream.trend import theil_sen
from tests.factories import PLACE

MIN = 60_000


def water(minute: float, depth: float, node: str = "wl-0001") -> Reading:
    return Reading(
        v=1,
        node=node,
        kind=Kind.WATER_LEVEL,
        seq=int(minute),
        ts_ms=int(minute * MIN),
        metrics={"depth_cm": depth},
    )


def changes(rule, readings):
    state = RuleState()
    return [(r.ts_ms // MIN, o) for r in readings if (o := rule.evaluate(state, r)) is not None]


def test_theil_sen_ignores_one_wild_point_where_least_squares_would_not():
    """A single spike among a steady 1-per-minute climb leaves the robust slope at 1."""
    points = [(m * MIN, float(m)) for m in range(10)]
    points[5] = (5 * MIN, 80.0)
    fit = theil_sen(points)
    assert fit is not None
    assert fit[0] * MIN == pytest.approx(1.0)
    assert fit[1] == pytest.approx(9.0)


def test_rate_rule_warns_on_a_fast_rise_long_before_any_depth_threshold():
    """Water rising 1 cm/min from a dry road raises the rate warning at a few cm deep
    (the depth rule's blue is 10 cm) and clears once the rise stops."""
    rule = RateRule(
        "water_level.rise", Kind.WATER_LEVEL, "depth_cm", {Level.YELLOW: 5, Level.ORANGE: 8}
    )
    depths = [0.0] * 5 + [float(i) for i in range(1, 8)] + [7.0] * 30
    out = changes(rule, [water(m, d) for m, d in enumerate(depths)])
    levels = [o.level for _, o in out]
    assert levels[0] >= Level.YELLOW
    raised_at = out[0][0]
    assert depths[raised_at] < 10, "warned while the water was still shallow"
    assert levels[-1] is Level.NONE
    assert out[0][1].unit == "cm/10 min"


@pytest.mark.parametrize("seed", range(5))
def test_rate_rule_holds_still_on_noise(seed):
    """A steady level with +-1 cm noise never raises a 5 cm/10 min rate warning."""
    rng = random.Random(seed)
    rule = RateRule("r", Kind.WATER_LEVEL, "depth_cm", {Level.YELLOW: 5})
    readings = [water(m, 20 + rng.uniform(-1, 1)) for m in range(0, 600, 5)]
    assert changes(rule, readings) == []


def test_rate_rule_with_too_few_points_keeps_its_level():
    """After a gap longer than the span the window restarts; no trend, no change."""
    rule = RateRule("r", Kind.WATER_LEVEL, "depth_cm", {Level.YELLOW: 5}, raise_after=1)
    state = RuleState()
    for m, d in [(0, 0), (1, 2), (2, 4)]:
        rule.evaluate(state, water(m, d))
    assert state.level is Level.YELLOW
    assert rule.evaluate(state, water(500, 0)) is None
    assert state.level is Level.YELLOW


def test_forecast_warns_ahead_of_the_crossing_and_states_when():
    """Water climbing 1 cm/min toward 50 cm: the forecast raises orange with a predicted
    crossing within 2 minutes of the true one, at least 10 minutes before it, and clears
    once the threshold is reached (the threshold rule takes over)."""
    rule = ForecastRule(
        "f", Kind.WATER_LEVEL, "depth_cm", threshold=50, within_minutes=20, level=Level.ORANGE
    )
    readings = [water(m, 5 + m) for m in range(0, 60)]  # reaches 50 at minute 45
    out = changes(rule, readings)
    (raised_at, raised), *rest = out
    assert raised.level is Level.ORANGE
    assert raised.predicted_crossing_ms is not None
    assert abs(raised.predicted_crossing_ms / MIN - 45) <= 2
    assert 45 - raised_at >= 10
    assert raised.threshold == 50
    assert rest
    assert rest[-1][1].level is Level.NONE
    assert rest[-1][0] >= 45


def test_forecast_stays_quiet_when_the_trend_is_flat_or_falling():
    rule = ForecastRule(
        "f", Kind.WATER_LEVEL, "depth_cm", threshold=50, within_minutes=60, level=Level.RED
    )
    assert changes(rule, [water(m, 40 - m * 0.1) for m in range(60)]) == []
    assert changes(rule, [water(m, 30.0) for m in range(60)]) == []


def test_forecast_on_a_rise_too_slow_to_divide_by_predicts_no_crossing():
    """Depths of a few 1e-310 cm (valid numbers, in range) make a subnormal slope: the
    time to the threshold overflows to infinity, which is no crossing, not an error
    (it used to raise OverflowError, and the stream kept no copy of that reading)."""
    rule = ForecastRule(
        "f", Kind.WATER_LEVEL, "depth_cm", threshold=50, within_minutes=60, level=Level.RED
    )
    readings = [water(m, m * 1e-310) for m in range(6)]
    assert changes(rule, readings) == []
    state = RuleState()
    for r in readings:
        rule.evaluate(state, r)
    assert rule.crossing_ms(state) is None


def test_forecast_lead_time_grows_with_the_horizon():
    """A longer horizon warns earlier on the same rise: the lead time is what it buys."""

    def raised_at(within: float) -> int:
        rule = ForecastRule(
            "f", Kind.WATER_LEVEL, "depth_cm", threshold=50, within_minutes=within, level=Level.RED
        )
        return changes(rule, [water(m, 5 + m) for m in range(60)])[0][0]

    assert raised_at(30) < raised_at(15) < raised_at(5)


def test_composite_needs_every_condition_together():
    """Smoke alone or heat rising alone is not the fire rule; both together are."""
    fire = CompositeRule(
        "smoke.fire",
        Kind.SMOKE,
        Level.RED,
        (
            Condition("obscuration_pct_m", above=2.0),
            Condition("temperature_c", rising_per_minute=1),
        ),
    )

    def smoke(minute: int, obscuration: float, temp: float) -> Reading:
        return Reading(
            v=1,
            node="sm-1",
            kind=Kind.SMOKE,
            seq=minute,
            ts_ms=minute * MIN,
            metrics={"obscuration_pct_m": obscuration, "temperature_c": temp},
        )

    only_smoke = [smoke(m, 3.0, 20.0) for m in range(10)]
    only_heat = [smoke(m, 0.1, 20.0 + 2 * m) for m in range(10)]
    both = [smoke(m, 0.1 if m < 3 else 3.0, 20.0 + 2 * m) for m in range(10)]
    assert changes(fire, only_smoke) == []
    assert changes(fire, only_heat) == []
    out = changes(fire, both)
    assert [o.level for _, o in out] == [Level.RED]
    assert out[0][1].threshold == 2.0


def test_condition_needs_exactly_one_bound():
    with pytest.raises(ValueError, match="exactly one"):
        Condition("temperature_c", above=1, below=2)
    with pytest.raises(ValueError, match="exactly one"):
        Condition("temperature_c")


def test_min_duration_holds_back_a_brief_excursion():
    """A depth over 50 cm for 5 minutes does not pass a 10-minute minimum duration; the
    same depth held for 15 minutes does, and the warning comes 10 minutes in."""
    rule = ThresholdRule(
        "d", Kind.WATER_LEVEL, "depth_cm", {Level.RED: 50}, min_duration_s=600, raise_after=1
    )
    brief = [water(m, 60 if 10 <= m < 15 else 5) for m in range(40)]
    held = [water(m, 60 if 10 <= m < 25 else 5) for m in range(40)]
    assert changes(rule, brief) == []
    out = changes(rule, held)
    assert out[0][0] == 20
    assert out[0][1].level is Level.RED


def test_selector_limits_a_rule_to_its_placement():
    """A rule for one district warns only for nodes there; the default rule everywhere."""
    elsewhere = Placement(
        district="Elsewhere", street="x", grid="EL-1", unit="y", lat=31.0, lon=121.0
    )
    local = ThresholdRule(
        "harbour.depth",
        Kind.WATER_LEVEL,
        "depth_cm",
        {Level.BLUE: 5},
        raise_after=1,
        selector=Selector(district=frozenset({PLACE.district})),
    )
    engine = RuleEngine([local])
    here, there = NodeState(), NodeState()
    assert [w.rule for w in engine.evaluate(water(0, 8), PLACE, here)] == ["harbour.depth"]
    assert engine.evaluate(water(0, 8, node="wl-0002"), elsewhere, there) == []
    assert "harbour.depth" not in there.rules


def test_engine_carries_the_forecast_time_into_the_warning():
    rule = ForecastRule(
        "water_level.forecast",
        Kind.WATER_LEVEL,
        "depth_cm",
        threshold=50,
        within_minutes=30,
        level=Level.ORANGE,
    )
    engine = RuleEngine([rule])
    state = NodeState()
    out = [w for m in range(60) for w in engine.evaluate(water(m, 5 + m), PLACE, state)]
    raised = out[0]
    assert raised.level is Level.ORANGE
    assert raised.predicted_crossing_ms is not None
    assert raised.predicted_crossing_ms > raised.ts_ms
    assert out[-1].cleared
    assert out[-1].predicted_crossing_ms is None
