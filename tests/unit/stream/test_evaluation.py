"""The early-warning evaluation suite (docs/evaluation.md): every labelled scenario over
several seeds, with floors set from the measured values (bench/evaluate.py, 20 seeds)
less a margin. Deterministic: seeded generators, reading time only."""

from __future__ import annotations

import dataclasses
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from cityvitals.levels import Level
from stream.detectors import default_scorer
from stream.evaluation import (
    SCENARIOS,
    Case,
    Counted,
    Event,
    crowd,
    detector_hits,
    drift,
    evaluate,
    gas_leak,
    rainstorm,
    replay,
    rule_types,
    score_case,
    spikes,
    stuck,
)
from stream.rules import DEFAULT_RULES, AnomalyRule, Rule, load_rules
from tests.factories import make_warning

RULE_FILE = Path(__file__).resolve().parents[3] / "deploy" / "rules.toml"
SEEDS = range(1, 7)


@pytest.fixture(scope="module")
def full() -> tuple[Rule, ...]:
    return load_rules(RULE_FILE)


def test_scoring_counts_episodes_detection_and_lead_time() -> None:
    """An episode runs from a raise to its clear; one overlapping the event is true, one
    before it false; lead time is the crossing less the first raise inside the window."""
    minute = 60_000
    case = Case(
        name="toy", seed=0, kind=make_warning().kind, node="wl-0003", readings=(),
        events=(Event("wl-0003", "flood", 100 * minute, 200 * minute, crossing_ms=150 * minute),),
        counted=Counted(metrics=frozenset({"depth_cm"})),
    )  # fmt: skip
    warnings = [
        make_warning(Level.BLUE, ts_ms=10 * minute),  # before the event: false
        make_warning(Level.NONE, ts_ms=20 * minute),
        make_warning(Level.BLUE, ts_ms=110 * minute),  # true, 40 min before the crossing
        make_warning(Level.RED, ts_ms=150 * minute),
        make_warning(Level.NONE, ts_ms=210 * minute),
    ]
    score = score_case(case, warnings, {"water_level.depth": "threshold"})
    assert (score.true_episodes, score.false_episodes) == (1, 1)
    assert score.detected == (True,)
    assert score.leads_min == (40.0,)
    assert score.leads_by_type[0]["orange+"] == 0.0
    assert score.false_peak is Level.BLUE


def test_scenarios_are_deterministic() -> None:
    """The same seed gives the same readings and labels; another seed does not."""
    for make in (rainstorm, spikes, gas_leak):
        assert make(5) == make(5)
        assert make(5).readings != make(6).readings


def test_rainstorm_full_rule_file_warns_an_hour_before_red(full: tuple[Rule, ...]) -> None:
    """deploy/rules.toml catches every storm with no false episode; its first warning
    comes >= 55 min before red in the median (measured 74) and >= 45 min at worst
    (58); the forecast rule itself >= 15 min before (measured 24 / 19)."""
    summary, _ = evaluate(rainstorm, full, SEEDS)
    assert summary.recall == 1.0
    assert summary.precision == 1.0
    assert summary.lead_median is not None
    assert summary.lead_median >= 55
    assert summary.lead_min is not None
    assert summary.lead_min >= 45
    forecast = summary.leads_by_type["water_level.forecast_red"]
    assert len(forecast) == len(SEEDS)
    assert statistics.median(forecast) >= 15


def test_rainstorm_rule_file_warns_earlier_than_built_in(full: tuple[Rule, ...]) -> None:
    """The built-in thresholds catch every storm too, >= 40 min before red (measured 62),
    but the rule file's extra rules move the first warning earlier on every seed, and its
    first orange-or-red warning (the forecast's) >= 10 min earlier in the median (measured
    45 vs 29.5 on these seeds)."""
    built_in, base = evaluate(rainstorm, DEFAULT_RULES, SEEDS)
    extended, more = evaluate(rainstorm, full, SEEDS)
    assert built_in.recall == 1.0
    assert built_in.lead_median is not None
    assert built_in.lead_median >= 40
    for a, b in zip(base, more, strict=True):
        assert b.leads_min[0] is not None
        assert a.leads_min[0] is not None
        assert b.leads_min[0] > a.leads_min[0]
    urgent = statistics.median(built_in.leads_by_type["orange+"])
    assert statistics.median(extended.leads_by_type["orange+"]) >= urgent + 10


def test_drift_is_flagged_by_the_anomaly_rule_only(full: tuple[Rule, ...]) -> None:
    """An upward drift of 0.5-1 cm/h (under blue's 10 cm) is caught by the water_level
    anomaly rule on every seed within 4 h of onset (measured median 124 min), with no
    false episode; the built-in thresholds raise nothing at all."""
    summary, _ = evaluate(drift, full, SEEDS)
    assert summary.recall == 1.0
    assert summary.false_episodes == 0
    assert max(summary.delays_min) <= 240
    for seed in SEEDS:
        assert replay(drift(seed), DEFAULT_RULES) == ()


def test_stuck_gauge_is_flagged_within_90_minutes(full: tuple[Rule, ...]) -> None:
    """A gauge frozen for 2 h raises the anomaly rule on every seed within 90 min (measured
    60: FlatLine reaches p < 1e-3 after ~3 repeats, then raise_after = 3), and FlatLine
    alone flags it within 60 min (measured 30)."""
    summary, _ = evaluate(stuck, full, SEEDS)
    assert summary.recall == 1.0
    assert summary.false_episodes == 0
    assert max(summary.delays_min) <= 90
    scorer = default_scorer("water_level")
    for seed in SEEDS:
        hits = detector_hits(stuck(seed), scorer, "depth_cm", "flat")
        assert hits.detected == 1
        assert hits.delays_min[0] is not None
        assert hits.delays_min[0] <= 60


def test_spikes_raise_no_threshold_warning_and_are_flagged(full: tuple[Rule, ...]) -> None:
    """Isolated spikes of 50-150 cm (past red for one reading) raise no threshold episode
    with either rule set (raise_after = 2), and the spike detector flags every one at
    p < 1e-3 with no flag elsewhere on the dry road."""
    scorer = default_scorer("water_level")
    for rules in (DEFAULT_RULES, full):
        summary, _ = evaluate(spikes, rules, SEEDS)
        assert summary.true_episodes + summary.false_episodes == 0
    for seed in SEEDS:
        hits = detector_hits(spikes(seed), scorer, "depth_cm", "spike")
        assert hits.detected == hits.events
        assert hits.false_flags == 0


def test_crowd_weekend_peaks_stay_quiet_and_surges_are_caught(full: tuple[Rule, ...]) -> None:
    """Over 4 weeks of weekday and weekend crowds no rule raises anything outside the
    surges (so nothing at orange or red on a weekend peak); both density surges raise
    the density threshold on every seed with either rule set."""
    seeds = range(1, 4)
    for rules in (DEFAULT_RULES, full):
        _, scores = evaluate(crowd, rules, seeds)
        for score in scores:
            assert score.false_episodes == 0
            assert score.false_peak < Level.ORANGE
            by_what = dict(zip((e.what for e in score.events), score.detected, strict=True))
            assert by_what["evening-surge"]
            assert by_what["weekend-surge"]


def test_night_crowd_needs_raise_after_two(full: tuple[Rule, ...]) -> None:
    """A 3 am crowd under the density thresholds is caught on every seed by
    crowd.count_anomaly as deploy/rules.toml has it (raise_after = 2), without a false
    episode, and missed with raise_after = 3: the hour's seasonal bin learns the crowd
    within two readings, so it never scores high three times in a row."""
    seeds = range(1, 4)
    three = tuple(
        dataclasses.replace(r, raise_after=3)
        if isinstance(r, AnomalyRule) and r.name == "crowd.count_anomaly"
        else r
        for r in full
    )
    for rules, caught in ((full, True), (three, False)):
        _, scores = evaluate(crowd, rules, seeds)
        for score in scores:
            night = [d for e, d in zip(score.events, score.detected, strict=True)
                     if e.what == "night-crowd"]  # fmt: skip
            assert night == [caught]
            assert score.false_episodes == 0


def test_gas_leak_warns_hours_before_red(full: tuple[Rule, ...]) -> None:
    """A leak rising 0.05-0.15 %LEL/min is caught on every seed >= 3 h before red (40 %LEL;
    measured median 383 min, min 225: blue is 5 %LEL); with the cover knocked askew
    (odd seeds) the open_with_gas composite raises red before the gas reaches red."""
    summary, scores = evaluate(gas_leak, full, SEEDS)
    assert summary.recall == 1.0
    assert summary.false_episodes == 0
    assert summary.lead_min is not None
    assert summary.lead_min >= 180
    for score in scores:
        composite = score.leads_by_type[0].get("manhole.open_with_gas")
        assert (composite is not None and composite > 0) == (score.seed % 2 == 1)


@pytest.mark.parametrize(
    "scenario", ["quiet-water_level", "quiet-manhole", "quiet-smoke", "quiet-crowd"]
)
def test_quiet_days_raise_at_most_rare_false_alarms(scenario: str, full: tuple[Rule, ...]) -> None:
    """A week of normal life per node (4 seeds, 28 node-days per kind): the built-in rules
    raise nothing; deploy/rules.toml at most 0.05 false episodes per node-day, none above
    blue (measured: 1 blue anomaly episode in 140 water_level node-days, 0 elsewhere)."""
    seeds = range(1, 5)
    built_in, _ = evaluate(SCENARIOS[scenario], DEFAULT_RULES, seeds)
    assert built_in.false_episodes == 0
    summary, _ = evaluate(SCENARIOS[scenario], full, seeds)
    assert summary.false_per_node_day <= 0.05
    assert summary.false_peak <= Level.BLUE


def test_evaluation_does_not_import_matplotlib() -> None:
    """Scenarios, scoring and the plots module itself load without matplotlib (plots.py
    imports it only when a plot is drawn), checked in a fresh interpreter."""
    code = (
        "import sys; import stream.evaluation.plots; from stream.evaluation import *; "
        "from stream.rules import DEFAULT_RULES; evaluate(rainstorm, DEFAULT_RULES, [1]); "
        "assert 'matplotlib' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=RULE_FILE.parents[1])  # noqa: S603
    assert rule_types(DEFAULT_RULES)["water_level.depth"] == "threshold"
