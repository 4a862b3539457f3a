"""Offline replay: one output row per input row, in order, with the scores the detectors give
and the levels the rule engine gives row by row; timestamps in every accepted format; every
bad input named by file, line and column (or written and counted with skip_bad)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cityvitals.cli import main
from cityvitals.contract import Reading
from cityvitals.kinds import Kind
from cityvitals.levels import Level
from stream.engine import NodeState, RuleEngine
from stream.replay import BadRowError, ReplayError, ReplayOptions, replay
from stream.replay_csv import TimestampParser
from stream.replay_rules import run_steps
from stream.rules import (
    DEFAULT_RULES,
    AnomalyRule,
    CompositeRule,
    Condition,
    ForecastRule,
    RateRule,
    RuleState,
    Selector,
    Steps,
    ThresholdRule,
    scorer_for,
)
from tests.factories import PLACE

T0_S = 1_764_028_800  # 2025-11-25 00:00 UTC
STEP_S = 600
ADDED = ["anomaly_score", "detector", "level", "rules"]


def write(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def depth_series(size: int, seed: int = 7) -> list[float]:
    rng = np.random.default_rng(seed)
    depths = np.round(np.abs(rng.normal(3.0, 0.8, size)), 1)
    return depths.tolist()


def iso(seconds: int) -> str:
    return np.datetime64(seconds, "s").astype(str) + "Z"


def run(tmp_path: Path, source: Path, **options: object):
    out = tmp_path / "out.csv"
    summary = replay(source, out, ReplayOptions(**options))  # type: ignore[arg-type]
    return summary, read(out)


# -- the output ----------------------------------------------------------------


def test_output_is_the_input_row_for_row_then_scores_levels_and_rules(tmp_path):
    """Every input row comes out once, in input order, its fields untouched, followed by
    anomaly_score (0..1), detector, level and rules; the built-in depth rule raises red on
    a flood and the rules field names it."""
    depths = depth_series(300)
    depths[250:256] = [55.0, 56.0, 57.0, 58.0, 59.0, 60.0]
    rows = [[iso(T0_S + i * STEP_S), d, f"n{i}"] for i, d in enumerate(depths)]
    source = write(tmp_path / "in.csv", ["timestamp", "depth", "note"], rows)
    summary, out = run(tmp_path, source, kind="water_level", value_columns=("depth",))
    assert list(out[0]) == ["timestamp", "depth", "note", *ADDED]
    assert [r["note"] for r in out] == [f"n{i}" for i in range(300)]
    assert [r["timestamp"] for r in out] == [row[0] for row in rows]
    assert [float(r["depth"]) for r in out] == depths
    scores = [float(r["anomaly_score"]) for r in out]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores[250] > 0.999
    assert {r["detector"] for r in out} <= {"rate", "shift", "spike", "flat", "dropout"}
    assert [r["level"] for r in out[250:253]] == ["none", "red", "red"]
    assert out[251]["rules"] == "water_level.depth"
    assert out[0]["rules"] == ""
    assert summary.rows == 300
    assert summary.by_level["red"] == 6  # 251..255, and 256 (the first of two to clear)
    assert summary.rules == ("water_level.depth",)
    assert (summary.bad, summary.backwards, summary.slow_rules) == (0, 0, ())


def test_scores_are_the_default_scorers_loop_values(tmp_path):
    """The anomaly_score column is the kind's default scorer, scored then learned reading
    by reading (9 decimals), and detector is the one with the smallest p-value."""
    depths = depth_series(400)
    depths[300] = 30.0
    source = write(
        tmp_path / "in.csv",
        ["timestamp", "value"],
        [[T0_S + i * STEP_S, d] for i, d in enumerate(depths)],
    )
    _, out = run(tmp_path, source, kind="water_level")
    scorer = scorer_for(Kind.WATER_LEVEL, "depth_cm")
    state = scorer.new_state()
    for i, (row, depth) in enumerate(zip(out, depths, strict=True)):
        scored = scorer.score_one(state, depth, (T0_S + i * STEP_S) * 1000)
        scorer.learn_one(state, depth, (T0_S + i * STEP_S) * 1000)
        assert float(row["anomaly_score"]) == pytest.approx(scored.score, abs=1e-9)
        if scored.score > 0:
            assert row["detector"] == scored.worst


def test_iso_and_epoch_seconds_and_milliseconds_give_the_same_output(tmp_path):
    """The same readings timed in ISO 8601 (Z, an offset, naive), epoch seconds and epoch
    milliseconds score the same and raise the same levels."""
    depths = depth_series(200)
    depths[150:153] = [40.0, 45.0, 50.0]
    stamps = {
        "iso_z": [iso(T0_S + i * STEP_S) for i in range(200)],
        "iso_naive": [iso(T0_S + i * STEP_S)[:-1] for i in range(200)],
        "iso_offset": [
            np.datetime64(T0_S + i * STEP_S + 3600, "s").astype(str) + "+01:00" for i in range(200)
        ],
        "seconds": [T0_S + i * STEP_S for i in range(200)],
        "millis": [(T0_S + i * STEP_S) * 1000 for i in range(200)],
    }
    outputs = {}
    for name, column in stamps.items():
        source = write(
            tmp_path / f"{name}.csv",
            ["timestamp", "value"],
            [[t, d] for t, d in zip(column, depths, strict=True)],
        )
        _, out = run(tmp_path, source, kind="water_level")
        outputs[name] = [(r["anomaly_score"], r["detector"], r["level"]) for r in out]
    first = outputs.pop("iso_z")
    assert any(level != "none" for _, _, level in first)
    assert all(other == first for other in outputs.values())


def test_timestamp_parser_reads_every_form_and_flags_the_rest():
    """ISO 8601 with Z, offsets, fractions, a space or no zone (UTC), mixed layouts in one
    block; epoch seconds and milliseconds; a junk value is flagged, not guessed."""
    t0 = T0_S * 1000
    parse = TimestampParser()
    ms, bad = parse(
        [
            "2025-11-25T00:00:00Z",
            "2025-11-25T05:30:00+05:30",
            "2025-11-25 00:00:00.250",
            "2025-11-25T00:00:00.123456",
            "2025-11-24T19:00:00-05:00",
            "20251125T000000Z",
            "tomorrow",
            "",
        ]
    )
    assert parse.mode == "iso"
    assert ms.tolist()[:6] == [t0, t0, t0 + 250, t0 + 123, t0, t0]
    assert bad.tolist() == [False] * 6 + [True, True]
    epoch = TimestampParser()
    ms, bad = epoch(["junk", str(T0_S), str(T0_S * 1000), f"{T0_S}.5", "2025-11-25T00:00:00"])
    assert epoch.mode == "epoch"
    assert ms.tolist()[1:4] == [t0, t0, t0 + 500]
    assert bad.tolist() == [True, False, False, False, True]


def test_each_value_column_is_scored_on_its_own_and_every_rule_counts(tmp_path):
    """Two value columns (smoke obscuration and temperature) get a score and detector each,
    equal to replaying each column alone; level is the highest over both rules."""
    size = 300
    rng = np.random.default_rng(3)
    smoke = np.round(np.abs(rng.normal(0.3, 0.05, size)), 2)
    heat = np.round(rng.normal(22.0, 0.5, size), 1)
    smoke[200:210] = 9.0  # red for smoke.obscuration
    heat[250:260] = 70.0  # orange for smoke.temperature
    rows = [[T0_S + i * STEP_S, smoke[i], heat[i]] for i in range(size)]
    both = write(tmp_path / "both.csv", ["timestamp", "obscuration_pct_m", "temperature_c"], rows)
    _, out = run(tmp_path, both, kind="smoke", value_columns=("obscuration_pct_m", "temperature_c"))
    assert list(out[0])[3:] == [
        "obscuration_pct_m.anomaly_score",
        "obscuration_pct_m.detector",
        "temperature_c.anomaly_score",
        "temperature_c.detector",
        "level",
        "rules",
    ]
    for column in ("obscuration_pct_m", "temperature_c"):
        alone = write(
            tmp_path / f"{column}.csv",
            ["timestamp", "value"],
            [[r[0], r[1 if column == "obscuration_pct_m" else 2]] for r in rows],
        )
        _, single = run(tmp_path, alone, kind="smoke", metrics=(column,))
        assert [r[f"{column}.anomaly_score"] for r in out] == [r["anomaly_score"] for r in single]
    assert out[205]["level"] == "red"
    assert out[205]["rules"] == "smoke.obscuration"
    assert out[255]["level"] == "orange"
    assert out[255]["rules"] == "smoke.temperature"


def test_generic_levels_come_from_the_built_in_score_levels(tmp_path):
    """With kind generic no rule file applies; each column's score is held against blue
    0.999 .. red 0.999999 with raise_after 3, under the rule name anomaly.<column>."""
    values = depth_series(400)
    values[300:306] = [80.0] * 6
    source = write(
        tmp_path / "in.csv",
        ["timestamp", "value"],
        [[T0_S + i * STEP_S, v] for i, v in enumerate(values)],
    )
    summary, out = run(tmp_path, source)
    assert summary.rules == ("anomaly.value",)
    raised = [i for i, r in enumerate(out) if r["level"] != "none"]
    assert raised
    assert raised[0] in range(302, 308)
    assert {out[i]["rules"] for i in raised} == {"anomaly.value"}
    assert all(r["level"] == "none" for r in out[:300])
    with pytest.raises(ValueError, match="rules need a sensor kind"):
        ReplayOptions(kind="generic", rules=DEFAULT_RULES)


def test_rules_that_cannot_apply_are_reported_and_slow_types_named(tmp_path):
    """A rule with a `where` selector, or on a metric no column is, is reported as skipped
    with the reason; a composite rule with two rising conditions on one metric runs
    through the per-reading path and is named as such (a rate rule has an array path)."""
    rules = (
        ThresholdRule("depth", Kind.WATER_LEVEL, "depth_cm", {Level.RED: 50}),
        ThresholdRule(
            "harbour",
            Kind.WATER_LEVEL,
            "depth_cm",
            {Level.BLUE: 5},
            selector=Selector(district=frozenset({"Harbour"})),
        ),
        ThresholdRule("tilt", Kind.MANHOLE, "cover_tilt_deg", {Level.RED: 30}),
        RateRule("rise", Kind.WATER_LEVEL, "depth_cm", {Level.YELLOW: 3}),
        CompositeRule(
            "twice",
            Kind.WATER_LEVEL,
            Level.RED,
            (
                Condition("depth_cm", rising_per_minute=0.5),
                Condition("depth_cm", rising_per_minute=1.0),
            ),
        ),
    )
    source = write(tmp_path / "in.csv", ["timestamp", "value"], [[T0_S + i, 1.0] for i in range(5)])
    summary, _ = run(tmp_path, source, kind="water_level", rules=rules)
    assert summary.rules == ("depth", "rise", "twice")
    assert summary.slow_rules == ("twice",)
    assert summary.skipped == (
        ("harbour", "it has a `where` selector, and replay has no registry placement"),
    )
    gas = (ThresholdRule("gas", Kind.MANHOLE, "gas_lel_pct", {Level.RED: 40}),)
    tilt_only = ReplayOptions(kind="manhole", rules=(*gas, rules[2]), metrics=("cover_tilt_deg",))
    summary = replay(source, tmp_path / "m.csv", tilt_only)
    assert summary.skipped == (("gas", "it reads gas_lel_pct, which no value column is"),)


# -- agreement with the engine -------------------------------------------------


def engine_rows(rules, depths, times_ms):
    """Per row, as RuleEngine.evaluate leaves it: the highest level and the rules there."""
    engine = RuleEngine(rules)
    state = NodeState()
    out = []
    for i, (depth, ts) in enumerate(zip(depths, times_ms, strict=True)):
        reading = Reading(
            v=1, node="wl-0001", kind=Kind.WATER_LEVEL, seq=i, ts_ms=ts, metrics={"depth_cm": depth}
        )
        engine.evaluate(reading, PLACE, state)
        levels = {r.name: state.rules[r.name].level for r in rules if r.name in state.rules}
        top = max(levels.values(), default=Level.NONE)
        out.append((top.label, {n for n, lv in levels.items() if lv == top and top > 0}))
    return out


LEVEL_SETS = st.lists(st.sampled_from(list(Level)[1:]), min_size=1, max_size=4, unique=True)
#: Scores no detector combination produces exactly (unlike 0.75 = 1 - 5 * 0.05).
SCORES = [0.61803, 0.9317, 0.99731, 0.999371, 0.9999371, 0.99999371]


@st.composite
def threshold_rules(draw, name: str) -> ThresholdRule:
    levels = sorted(draw(LEVEL_SETS))
    values = sorted(
        draw(st.lists(st.floats(1, 60), min_size=len(levels), max_size=len(levels), unique=True))
    )
    return ThresholdRule(
        name,
        Kind.WATER_LEVEL,
        "depth_cm",
        dict(zip(levels, values, strict=True)),
        band=draw(st.sampled_from([0.0, 0.5, 2.0, 10.0])),
        raise_after=draw(st.integers(1, 4)),
        clear_after=draw(st.integers(1, 4)),
        min_duration_s=draw(st.sampled_from([0.0, 600.0, 1800.0])),
    )


@st.composite
def anomaly_rules(draw, name: str) -> AnomalyRule:
    levels = sorted(draw(LEVEL_SETS))
    scores = sorted(
        draw(
            st.lists(
                st.sampled_from(SCORES), min_size=len(levels), max_size=len(levels), unique=True
            )
        )
    )
    return AnomalyRule(
        name,
        Kind.WATER_LEVEL,
        "depth_cm",
        dict(zip(levels, scores, strict=True)),
        band=draw(st.sampled_from([0.0, 0.05])) if scores[0] > 0.06 else 0.0,
        raise_after=draw(st.integers(1, 4)),
        clear_after=draw(st.integers(1, 4)),
        min_duration_s=draw(st.sampled_from([0.0, 1200.0])),
        detectors=draw(st.sampled_from(["default", "generic"])),
    )


SERIES = st.lists(
    st.tuples(
        st.sampled_from([600_000, 600_000, 600_000, 60_000, 3_600_000, 0, -600_000]),
        st.one_of(
            st.floats(0, 80).map(lambda v: round(v, 2)), st.sampled_from([0.0, 3.0, 25.0, 55.0])
        ),
    ),
    min_size=1,
    max_size=160,
)


#: Random walks with drift: the rises and falls trend rules are for (SERIES is mostly noise).
WALKS = st.lists(
    st.tuples(
        st.sampled_from([600_000, 300_000, 60_000, 60_000, 0, -300_000]),
        st.floats(-1.5, 3.0).map(lambda v: round(v, 1)),
    ),
    min_size=1,
    max_size=160,
).map(
    lambda steps: [
        (step, round(min(max(depth, 0.0), 80.0), 1))
        for (step, _), depth in zip(steps, np.cumsum([d for _, d in steps]).tolist(), strict=True)
    ]
)
SPANS = st.sampled_from([10.0, 30.0, 120.0])
STEPS_1_3 = st.integers(1, 3)


@st.composite
def rate_rules(draw, name: str) -> RateRule:
    levels = sorted(draw(LEVEL_SETS))
    rates = sorted(
        draw(st.lists(st.floats(0.2, 20), min_size=len(levels), max_size=len(levels), unique=True))
    )
    return RateRule(
        name,
        Kind.WATER_LEVEL,
        "depth_cm",
        dict(zip(levels, rates, strict=True)),
        per_minutes=draw(st.sampled_from([1.0, 10.0])),
        span_minutes=draw(SPANS),
        min_points=draw(st.integers(2, 6)),
        band=draw(st.sampled_from([0.0, 0.5])),
        raise_after=draw(STEPS_1_3),
        clear_after=draw(STEPS_1_3),
        min_duration_s=draw(st.sampled_from([0.0, 1200.0])),
    )


@st.composite
def forecast_rules(draw, name: str) -> ForecastRule:
    return ForecastRule(
        name,
        Kind.WATER_LEVEL,
        "depth_cm",
        threshold=draw(st.sampled_from([5.0, 25.0, 55.0, 79.0])),
        within_minutes=draw(st.sampled_from([10.0, 30.0, 180.0])),
        level=draw(st.sampled_from(list(Level)[1:])),
        span_minutes=draw(SPANS),
        min_points=draw(st.integers(2, 6)),
        hold_factor=draw(st.sampled_from([1.0, 1.5, 4.0])),
        raise_after=draw(STEPS_1_3),
        clear_after=draw(STEPS_1_3),
    )


@st.composite
def composite_rules(draw, name: str) -> CompositeRule:
    conditions = [
        Condition(
            "depth_cm",
            rising_per_minute=draw(st.sampled_from([0.01, 0.1, 0.5, 2.0])),
            band=draw(st.sampled_from([0.0, 0.05])),
        )
    ]
    bound = draw(st.sampled_from([None, "above", "below"]))
    if bound is not None:
        value = draw(st.sampled_from([3.0, 25.0, 55.0]))
        band = draw(st.sampled_from([0.0, 2.0]))
        condition = Condition("depth_cm", band=band, **{bound: value})
        conditions.insert(draw(st.integers(0, 1)), condition)
    return CompositeRule(
        name,
        Kind.WATER_LEVEL,
        draw(st.sampled_from(list(Level)[1:])),
        tuple(conditions),
        span_minutes=draw(SPANS),
        min_points=draw(st.integers(2, 6)),
        raise_after=draw(STEPS_1_3),
        clear_after=draw(STEPS_1_3),
        min_duration_s=draw(st.sampled_from([0.0, 1200.0])),
    )


@st.composite
def trend_rules(draw) -> list[RateRule | ForecastRule | CompositeRule]:
    types = st.sampled_from([rate_rules, forecast_rules, composite_rules])
    kinds = draw(st.lists(types, max_size=3))
    return [draw(kind(f"trend{i}")) for i, kind in enumerate(kinds)]


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    series=st.one_of(SERIES, WALKS),
    threshold=threshold_rules("t"),
    anomaly=anomaly_rules("a"),
    trends=trend_rules(),
    alone=st.booleans(),
    block_chars=st.sampled_from([20, 200, 4096]),
)
def test_replay_levels_are_the_engines_row_by_row(
    tmp_path, *, series, threshold, anomaly, trends, alone, block_chars
):
    """On random series (gaps, repeats, duplicate and backwards timestamps), with random
    threshold, anomaly, rate, forecast and composite rules, in blocks of any size (the
    trend windows carried across them), replay's level and rules at every row are what
    RuleEngine.evaluate gives. (`alone`: the trend rules without the others, which
    would often outrank them at the top.)"""
    times = (T0_S * 1000 + np.cumsum([step for step, _ in series])).tolist()
    depths = [depth for _, depth in series]
    rules = [*trends] if alone and trends else [threshold, anomaly, *trends]
    source = write(
        tmp_path / "in.csv",
        ["timestamp", "value"],
        [[t, d] for t, d in zip(times, depths, strict=True)],
    )
    out = tmp_path / "out.csv"
    replay(
        source, out, ReplayOptions(kind="water_level", rules=tuple(rules), block_chars=block_chars)
    )
    got = [(r["level"], set(filter(None, r["rules"].split(";")))) for r in read(out)]
    assert got == engine_rows(rules, depths, times)


def test_trend_rules_over_a_long_series_agree_with_the_engine(tmp_path):
    """20 000 rows of a drifting walk in one block (more rows than `replay_trends` fits at
    once): the rate, forecast and composite rules' levels are the engine's at every row,
    and each of them reaches a level somewhere."""
    rng = np.random.default_rng(11)
    steps = rng.choice([60_000, 300_000, 600_000, 0, -60_000], size=20_000)
    times = (T0_S * 1000 + np.cumsum(steps)).tolist()
    walk = np.cumsum(rng.normal(0.0, 1.0, size=20_000) + 0.3 * np.sin(np.arange(20_000) / 50))
    depths = np.round(np.clip(walk - walk.min(), 0, 80), 1).tolist()
    rules = [
        RateRule("rise", Kind.WATER_LEVEL, "depth_cm", {Level.YELLOW: 3, Level.RED: 8}),
        ForecastRule(
            "soon", Kind.WATER_LEVEL, "depth_cm", threshold=60, within_minutes=60, level=Level.RED
        ),
        CompositeRule(
            "deep_and_rising",
            Kind.WATER_LEVEL,
            Level.ORANGE,
            (Condition("depth_cm", above=20, band=2), Condition("depth_cm", rising_per_minute=0.1)),
        ),
    ]
    rows = [[t, d] for t, d in zip(times, depths, strict=True)]
    source = write(tmp_path / "in.csv", ["timestamp", "value"], rows)
    out = tmp_path / "out.csv"
    summary = replay(
        source, out, ReplayOptions(kind="water_level", rules=tuple(rules), block_chars=2**24)
    )
    assert summary.slow_rules == ()
    got = [(r["level"], set(filter(None, r["rules"].split(";")))) for r in read(out)]
    expected = engine_rows(rules, depths, times)
    assert got == expected
    for rule in rules:
        assert any(rule.name in names for _, names in expected), rule.name


@settings(max_examples=200, deadline=None)
@given(
    steps=st.builds(
        Steps,
        raise_after=st.integers(1, 5),
        clear_after=st.integers(1, 5),
        min_duration_s=st.sampled_from([0.0, 1.0, 5.0]),
    ),
    rows=st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(-3000, 3000)), max_size=80
    ),
    start=st.builds(
        RuleState,
        level=st.sampled_from(list(Level)),
        streak=st.integers(-3, 3),
        streak_level=st.sampled_from(list(Level)),
        streak_ms=st.integers(-2000, 2000),
    ),
)
def test_run_steps_is_steps_advance_in_a_loop(steps, rows, start):
    """The array level machine gives the level after each row that Steps.advance gives, and
    leaves the state exactly as the loop of advance calls does, from any starting state."""
    up = np.array([u for u, _, _ in rows], dtype=np.int8)
    hold = np.array([h for _, h, _ in rows], dtype=np.int8)
    ts = np.cumsum([t for _, _, t in rows], dtype=np.int64)
    looped = RuleState(start.level, start.streak, start.streak_level, start.streak_ms)
    expected = []
    for u, h, t in zip(up.tolist(), hold.tolist(), ts.tolist(), strict=True):
        steps.advance(looped, Level(u), Level(h), ts_ms=t)
        expected.append(int(looped.level))
    arrayed = RuleState(start.level, start.streak, start.streak_level, start.streak_ms)
    assert run_steps(steps, arrayed, up, hold, ts).tolist() == expected
    assert arrayed == looped


def test_composite_rules_on_two_columns_agree_with_the_engine(tmp_path):
    """A composite rule over two value columns (slow path) gives the engine's levels."""
    rule = CompositeRule(
        "fire",
        Kind.SMOKE,
        Level.RED,
        (
            Condition("obscuration_pct_m", above=2.0),
            Condition("temperature_c", rising_per_minute=0.5),
        ),
        raise_after=1,
    )
    rows = [[T0_S + 60 * i, 0.1 if i < 20 else 3.0, 20.0 + max(0, i - 20) * 2] for i in range(40)]
    source = write(tmp_path / "in.csv", ["timestamp", "obscuration_pct_m", "temperature_c"], rows)
    _, out = run(
        tmp_path,
        source,
        kind="smoke",
        rules=(rule,),
        value_columns=("obscuration_pct_m", "temperature_c"),
    )
    state = NodeState()
    engine = RuleEngine([rule])
    for i, row in enumerate(rows):
        reading = Reading(
            v=1,
            node="sm-1",
            kind=Kind.SMOKE,
            seq=i,
            ts_ms=row[0] * 1000,
            metrics={"obscuration_pct_m": row[1], "temperature_c": row[2]},
        )
        engine.evaluate(reading, PLACE, state)
        assert out[i]["level"] == state.rules["fire"].level.label
    assert out[-1]["level"] == "red"


def test_block_size_and_quoting_do_not_change_the_scores_or_levels(tmp_path):
    """Tiny blocks (state carried across hundreds of them) and a fully quoted file (the
    csv-module path) give the same added columns as one plain pass."""
    depths = depth_series(500)
    depths[400:404] = [52.0] * 4
    rows = [[T0_S + i * STEP_S, d] for i, d in enumerate(depths)]
    plain = write(tmp_path / "plain.csv", ["timestamp", "value"], rows)
    quoted = write(
        tmp_path / "quoted.csv", ['"timestamp"', '"value"'], [[f'"{t}"', f'"{d}"'] for t, d in rows]
    )
    _, whole = run(tmp_path, plain, kind="water_level")
    _, small = run(tmp_path, plain, kind="water_level", block_chars=64)
    _, csvpath = run(tmp_path, quoted, kind="water_level")
    assert small == whole
    assert [{k: r[k] for k in ADDED} for r in csvpath] == [{k: r[k] for k in ADDED} for r in whole]
    assert [r["timestamp"] for r in csvpath] == [str(t) for t, _ in rows]


def test_a_quoted_newline_is_one_record_whatever_the_block_size(tmp_path):
    """A quoted field holding a newline (and quotes) stays one record, echoed quoted, even
    where a block boundary falls inside it; line numbers stay those of the file."""
    lines = ["timestamp,value,note"]
    for i in range(40):
        note = f'"two\nlines ""{i}"""' if i % 7 == 3 else f"n{i}"
        lines.append(f"{T0_S + i * STEP_S},{'x' if i == 31 else i % 5},{note}")
    source = tmp_path / "in.csv"
    source.write_text("\n".join(lines) + "\n")
    for block_chars in (8, 50, 1 << 20):
        _, out = run(tmp_path, source, skip_bad=True, block_chars=block_chars)
        assert len(out) == 40
        assert out[3]["note"] == 'two\nlines "3"'
        assert out[31]["bad"] == "1"
    with pytest.raises(BadRowError) as info:
        replay(source, tmp_path / "out.csv", ReplayOptions(block_chars=50))
    assert info.value.line == 2 + 31 + 4  # the four notes before it took two lines each


# -- bad input -----------------------------------------------------------------


def test_a_missing_column_names_the_file_the_column_and_the_columns_there(tmp_path):
    source = write(tmp_path / "in.csv", ["ts", "depth"], [[T0_S, 1.0]])
    with pytest.raises(ReplayError) as info:
        replay(source, tmp_path / "out.csv", ReplayOptions())
    assert str(info.value) == (
        f"{source}: column 'timestamp': there is no such column; the file has 'ts', 'depth'"
    )
    assert not (tmp_path / "out.csv").exists()
    result = CliRunner().invoke(
        main,
        ["replay", str(source), "--out", str(tmp_path / "out.csv"), "--timestamp-column", "ts"],
    )
    assert result.exit_code == 1
    assert (
        f"Error: {source}: column 'value': there is no such column; the file has 'ts', 'depth'"
        in result.output
    )


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ([T0_S + 1200, "deep"], "line 4, column 'value': expected a finite number, found 'deep'"),
        ([T0_S + 1200, "nan"], "line 4, column 'value': expected a finite number, found 'nan'"),
        ([T0_S + 1200, ""], "line 4, column 'value': expected a finite number, found ''"),
        (
            ["2025-11-25T00:20:00", 1.0],
            "line 4, column 'timestamp': expected epoch seconds or milliseconds, as the column "
            "began, found '2025-11-25T00:20:00'",
        ),
        ([T0_S + 1200, 1.0, 7], "line 4: expected 2 fields (as the header has), found 3"),
    ],
)
def test_a_bad_row_names_the_file_line_and_column(tmp_path, row, expected):
    """Without skip_bad the first unparsable field stops the replay with file, line and
    column; no partial output is left behind."""
    source = write(
        tmp_path / "in.csv",
        ["timestamp", "value"],
        [[T0_S, 1.0], [T0_S + 600, 2.0], row, [T0_S + 1800, 3.0]],
    )
    with pytest.raises(BadRowError) as info:
        replay(source, tmp_path / "out.csv", ReplayOptions())
    assert str(info.value) == f"{source}: {expected}"
    assert info.value.line == 4
    assert list(tmp_path.iterdir()) == [source]


def test_skip_bad_writes_bad_rows_empty_and_counts_them_and_backwards_time(tmp_path):
    """With skip_bad a bad row is written with an empty score and detector and bad=1, it
    keeps the level of the row before, and the summary counts it; timestamps going
    backwards are fine and counted."""
    rows = [[T0_S + i * STEP_S, 55.0] for i in range(6)]
    rows[3] = [T0_S + 3 * STEP_S, "oops"]
    rows[5] = [T0_S, 55.0]  # back to the start
    source = write(tmp_path / "in.csv", ["timestamp", "value"], rows)
    summary, out = run(tmp_path, source, kind="water_level", skip_bad=True)
    assert list(out[0]) == ["timestamp", "value", *ADDED, "bad"]
    assert [r["bad"] for r in out] == ["0", "0", "0", "1", "0", "0"]
    assert (out[3]["anomaly_score"], out[3]["detector"]) == ("", "")
    assert [r["level"] for r in out] == ["none", "red", "red", "red", "red", "red"]
    assert (summary.rows, summary.bad, summary.backwards) == (6, 1, 1)
    assert summary.by_level["red"] == 5


def test_the_command_prints_a_summary_and_refuses_to_overwrite_its_input(tmp_path):
    source = write(
        tmp_path / "in.csv", ["timestamp", "value"], [[T0_S + i * STEP_S, 2.0] for i in range(10)]
    )
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(
        main, ["replay", str(source), "--out", str(out), "--kind", "water_level"]
    )
    assert result.exit_code == 0, result.output
    assert f"{out}: 10 rows in " in result.output
    assert "rows per level: none 10, blue 0, yellow 0, orange 0, red 0; bad rows 0" in result.output
    assert len(read(out)) == 10
    result = CliRunner().invoke(
        main, ["replay", str(source), "--out", str(tmp_path / "nowhere" / "out.csv")]
    )
    assert result.exit_code == 1
    assert "cannot write the output" in result.output
    result = CliRunner().invoke(main, ["replay", str(source), "--out", str(source)])
    assert result.exit_code == 1
    assert "the output must be another file than the input" in result.output
    result = CliRunner().invoke(
        main, ["replay", str(source), "--out", str(out), "--metric", "a", "--metric", "b"]
    )
    assert result.exit_code == 2
    assert "give one metric per value column" in result.output
