"""Plots of evaluation scenarios for docs/evaluation.md. matplotlib is imported lazily.

Each function draws one case (and what the rules or a detector made of it)
to a PNG with the Agg backend; nothing else in the package imports
matplotlib, so the tests and the stream never pay for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cityvitals.contract import Warning
from cityvitals.levels import Level
from stream.evaluation.scenarios import Case

__all__ = ["plot_crowd", "plot_detector", "plot_rainstorm"]

_COLOURS = {
    Level.BLUE: "#2b6cb0",
    Level.YELLOW: "#d69e2e",
    Level.ORANGE: "#dd6b20",
    Level.RED: "#c53030",
}
_DPI = 100


def _pyplot() -> Any:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _hours(case: Case, ts: Sequence[int] | np.ndarray) -> np.ndarray:
    t0 = case.readings[0].ts_ms
    out: np.ndarray = (np.asarray(ts, dtype=float) - t0) / 3_600_000
    return out


def plot_rainstorm(
    case: Case, warnings: Sequence[Warning], path: Path, *, window_h: tuple[float, float]
) -> None:
    """Depth with the threshold bands, each rule's raises, the forecast's predicted crossing
    and the true red crossing."""
    plt = _pyplot()
    ts, xs = case.series("depth_cm")
    hours = _hours(case, ts)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    bands = [(10, 20, Level.BLUE), (20, 30, Level.YELLOW), (30, 50, Level.ORANGE)]
    for lo, hi, level in [*bands, (50, 80, Level.RED)]:
        ax.axhspan(lo, hi, color=_COLOURS[level], alpha=0.08, lw=0)
        ax.text(window_h[0] + 0.05, lo + 0.6, f"{level.label} {lo} cm", fontsize=7,
                color=_COLOURS[level])  # fmt: skip
    ax.plot(hours, xs, ".", ms=3, color="#333", label="reading")
    if case.truth:
        ax.plot(hours, case.truth, "-", lw=1, color="#999", label="true depth")
    crossing = case.events[0].crossing_ms
    if crossing is not None:
        ax.axvline(_hours(case, [crossing])[0], color=_COLOURS[Level.RED], ls="--", lw=1)
        ax.text(_hours(case, [crossing])[0] + 0.03, 74, "true red crossing", fontsize=7,
                color=_COLOURS[Level.RED])  # fmt: skip
    rows = {"water_level.depth": 76, "water_level.rise": 70, "water_level.forecast_red": 64,
            "water_level.anomaly": 58}  # fmt: skip
    for w in warnings:
        if w.rule not in rows or w.cleared:
            continue
        h = _hours(case, [w.ts_ms])[0]
        ax.plot([h], [rows[w.rule]], "v", ms=6, color=_COLOURS[w.level])
        if w.predicted_crossing_ms is not None:
            p = _hours(case, [w.predicted_crossing_ms])[0]
            ax.annotate("", xy=(p, 50), xytext=(h, rows[w.rule]),
                        arrowprops={"arrowstyle": "->", "color": "#555", "lw": 0.8})  # fmt: skip
            ax.plot([p], [50], "x", color="#555", ms=7, label="forecast's predicted crossing")
    for name, y in rows.items():
        ax.text(window_h[1] - 0.05, y + 1, name, fontsize=7, ha="right", color="#444",
                bbox={"facecolor": "white", "alpha": 0.8, "lw": 0, "pad": 1})  # fmt: skip
    ax.set_xlim(*window_h)
    ax.set_ylim(0, 80)
    ax.set_xlabel("hours since the series began")
    ax.set_ylabel("depth (cm)")
    ax.set_title(f"Rainstorm (seed {case.seed}): warnings (triangles, coloured by level)")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)


def plot_crowd(
    case: Case,
    warnings: Sequence[Warning],
    score: np.ndarray,
    path: Path,
    *,
    window_h: tuple[float, float],
) -> None:
    """Density over the last week with the surges shaded, the rules' raises, and the
    count's time-of-week anomaly score."""
    plt = _pyplot()
    ts, xs = case.series("density_m2")
    hours = _hours(case, ts)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 4.8), sharex=True,
                                      gridspec_kw={"height_ratios": [2, 1]})  # fmt: skip
    for event in case.events:
        lo, hi = _hours(case, [event.onset_ms, event.end_ms])
        for ax in (top, bottom):
            ax.axvspan(lo, hi, color="#c53030", alpha=0.12, lw=0)
        top.text(lo, 6.2, event.what, fontsize=7, color="#c53030")
    top.plot(hours, xs, "-", lw=0.7, color="#333")
    for y, level in ((2, Level.BLUE), (3, Level.YELLOW), (4, Level.ORANGE), (5, Level.RED)):
        top.axhline(y, color=_COLOURS[level], lw=0.7, ls=":")
    for w in warnings:
        if w.cleared:
            continue
        row = 6.8 if w.rule == "crowd.density" else 7.4
        top.plot(_hours(case, [w.ts_ms]), [row], "v", ms=5, color=_COLOURS[w.level])
    top.text(window_h[0] + 0.5, 6.85, "crowd.density", fontsize=7)
    top.text(window_h[0] + 0.5, 7.45, "crowd.count_anomaly", fontsize=7)
    top.set_ylim(0, 8)
    top.set_ylabel("density (/m2)")
    days = np.arange(np.ceil(window_h[0] / 24), window_h[1] / 24)
    for d in days:
        top.text(d * 24 + 12, 0.2, ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][int(d) % 7],
                 fontsize=7, ha="center", color="#666")  # fmt: skip
    top.set_title(f"Crowd (seed {case.seed}), last week: ordinary weekend peak vs surges")
    bottom.plot(hours, np.clip(-np.log10(np.maximum(1 - score, 1e-12)), 0, 12), lw=0.7,
                color="#2b6cb0")  # fmt: skip
    bottom.axhline(4, color=_COLOURS[Level.YELLOW], ls=":", lw=0.8)
    bottom.axhline(6, color=_COLOURS[Level.ORANGE], ls=":", lw=0.8)
    bottom.set_ylabel("-log10(1 - score)")
    bottom.set_xlabel("hours since the series began")
    bottom.set_xlim(*window_h)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)


def plot_detector(
    case: Case,
    metric: str,
    p: np.ndarray,
    path: Path,
    *,
    detector: str,
    window_h: tuple[float, float],
    warnings: Sequence[Warning] = (),
) -> None:
    """A metric with the labelled fault shaded, one detector's -log10 p below it, and the
    anomaly rule's raises."""
    plt = _pyplot()
    ts, xs = case.series(metric)
    hours = _hours(case, ts)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 4.2), sharex=True)
    for event in case.events:
        lo, hi = _hours(case, [event.onset_ms, event.end_ms])
        for ax in (top, bottom):
            ax.axvspan(lo, max(hi, lo + 0.1), color="#c53030", alpha=0.12, lw=0)
    top.plot(hours, xs, ".-", ms=2.5, lw=0.5, color="#333")
    for w in warnings:
        if not w.cleared and w.metric == metric:
            top.plot(_hours(case, [w.ts_ms]), [max(xs) * 1.05], "v", ms=5,
                     color=_COLOURS[w.level])  # fmt: skip
    top.set_ylabel(metric)
    top.set_title(f"{case.name} (seed {case.seed}): labelled fault shaded, anomaly rule raises")
    bottom.plot(hours, -np.log10(np.maximum(p, 1e-12)), lw=0.8, color="#2b6cb0")
    bottom.axhline(3, color="#999", ls=":", lw=0.8)
    bottom.set_ylabel(f"{detector}: -log10 p")
    bottom.set_xlabel("hours since the series began")
    bottom.set_xlim(*window_h)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
