"""The early-warning evaluation: every scenario over many seeds, three rule sets, and plots.

    .venv/bin/python bench/evaluate.py [--seeds 20] [--plots docs/evaluation]

Prints the table of docs/evaluation.md (precision, recall, lead time before
red, false alarms per node-day) for the built-in rules, deploy/rules.toml,
and deploy/rules.toml with the changes this evaluation proposes; then the
lead time of each rule type before red, the detectors on their own, and
writes the PNGs (matplotlib, Agg) unless --plots is empty.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from stream.detectors import default_scorer
from stream.evaluation import SCENARIOS, detector_hits, evaluate, replay
from stream.evaluation.scenarios import crowd, drift, rainstorm, stuck
from stream.evaluation.scoring import ORANGE_OR_ABOVE, Summary
from stream.rules import DEFAULT_RULES, AnomalyRule, Rule, load_rules, scorer_for

ROOT = Path(__file__).resolve().parents[1]


def fmt(x: float | None, spec: str = ".0f") -> str:
    return "-" if x is None else format(x, spec)


def row(name: str, rules_name: str, s: Summary) -> str:
    return (
        f"| {name} | {rules_name} | {s.events} | {fmt(s.recall, '.2f')} | "
        f"{fmt(s.precision, '.2f')} ({s.true_episodes + s.false_episodes}) | "
        f"{fmt(s.lead_median)} / {fmt(s.lead_min)} | "
        f"{fmt(statistics.median(s.delays_min) if s.delays_min else None)} | "
        f"{s.false_per_node_day:.3f} ({s.node_days:.0f}) | {s.false_peak.label} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--plots", default=str(ROOT / "docs" / "evaluation"))
    args = parser.parse_args()
    seeds = range(1, args.seeds + 1)
    full = load_rules(ROOT / "deploy" / "rules.toml")
    sets = {"built-in": DEFAULT_RULES, "rules.toml": full}
    print(f"{args.seeds} seeds per scenario")
    print(
        "| scenario | rules | events | recall | precision (episodes) | lead before red, "
        "median / min (min) | onset to first warning, median (min) | false / node-day "
        "(node-days) | worst false |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    leads: dict[str, Summary] = {}
    started = time.perf_counter()
    for name, make in SCENARIOS.items():
        for rules_name, rules in sets.items():
            summary, _ = evaluate(make, rules, seeds)
            print(row(name, rules_name, summary))
            if name in {"rainstorm", "gas_leak"}:
                leads[f"{name} / {rules_name}"] = summary
    print(f"\n({time.perf_counter() - started:.1f} s)\n")
    print("Lead time before red of each rule's first raise, median / min over seeds (minutes)")
    for key, summary in leads.items():
        parts = [
            f"{k} {fmt(statistics.median(v))} / {fmt(min(v))}"
            for k, v in sorted(summary.leads_by_type.items())
            if "." in k or k == ORANGE_OR_ABOVE
        ]
        print(f"- {key}: " + "; ".join(parts))
    print("\nDetectors alone (water_level default scorer on depth_cm, p < 0.001)")
    scorer = default_scorer("water_level")
    for scenario, part in (("drift", "shift"), ("stuck", "flat"), ("spikes", "spike")):
        hits = [detector_hits(SCENARIOS[scenario](s), scorer, "depth_cm", part) for s in seeds]
        delays = [d for h in hits for d in h.delays_min if d is not None]
        events = sum(h.events for h in hits)
        flags = sum(h.false_flags for h in hits)
        days = sum(h.node_days for h in hits)
        print(
            f"- {scenario} / {part}: flagged {sum(h.detected for h in hits)}/{events}, "
            f"onset to flag median {fmt(statistics.median(delays) if delays else None)} min, "
            f"false flags {flags} in {days:.0f} node-days (outside the fault and its grace)"
        )
    if args.plots:
        plots(Path(args.plots), full)


def plots(out: Path, full: tuple[Rule, ...]) -> None:
    from stream.evaluation.plots import plot_crowd, plot_detector, plot_rainstorm

    out.mkdir(parents=True, exist_ok=True)
    case = rainstorm(1)
    start = (case.events[0].onset_ms - case.readings[0].ts_ms) / 3_600_000
    plot_rainstorm(case, replay(case, full), out / "rainstorm.png",
                   window_h=(start - 0.5, start + 4.0))  # fmt: skip

    case = crowd(1)
    rule = next(r for r in full if r.name == "crowd.count_anomaly")
    assert isinstance(rule, AnomalyRule)
    scorer = scorer_for(rule.kind, rule.metric, detectors=rule.detectors,
                        resolution=rule.resolution,
                        utc_offset_minutes=rule.utc_offset_minutes)  # fmt: skip
    ts, xs = case.series("count")
    score = scorer.score_learn_many(scorer.new_state(), np.asarray(xs), np.asarray(ts)).score
    weeks = case.notes["warm_weeks"]
    plot_crowd(case, replay(case, full), score, out / "crowd.png",
               window_h=(weeks * 168 + 48, weeks * 168 + 168))  # fmt: skip

    scorer = default_scorer("water_level")
    for name, make, part, label in (
        ("stuck", stuck, "flat", "FlatLine"),
        ("drift", drift, "shift", "CUSUM"),
    ):
        case = make(1)
        ts, xs = case.series("depth_cm")
        series = scorer.score_learn_many(scorer.new_state(), np.asarray(xs), np.asarray(ts))
        onset = (case.events[0].onset_ms - case.readings[0].ts_ms) / 3_600_000
        plot_detector(case, "depth_cm", series.part(part), out / f"{name}.png", detector=label,
                      window_h=(onset - 6, onset + 14), warnings=replay(case, full))  # fmt: skip
    for png in sorted(out.glob("*.png")):
        print(f"wrote {png.relative_to(ROOT)} ({png.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
