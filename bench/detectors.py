"""Throughput of the online detectors: the vectorised replay path and the per-reading loop.

    ./dev bench detectors

Prints, per detector and per kind's default scorer: readings/s of
`score_learn_many` over one seeded series of 200 000 readings (best and median
of 5), readings/s of the `score_one` + `learn_one` loop over 20 000, and the
encoded state's bytes after the whole series. One core; results in
docs/benchmarks.md.
"""

from __future__ import annotations

import platform
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from stream.detectors import (
    CusumChange,
    Dropout,
    EwmaBaseline,
    FlatLine,
    RateOfChange,
    RobustBaseline,
    SeasonalBaseline,
    Spike,
    default_scorer,
    encode_state,
)

N = 200_000
LOOP = 20_000


def series() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    xs = rng.normal(10.0, 1.0, N)
    xs[rng.random(N) < 0.05] = 10.0  # repeats, for the flat-line path
    ts = 1_764_028_800_000 + np.cumsum(rng.integers(590_000, 610_000, N))
    ts[rng.random(N) < 0.01] += 1_800_000  # gaps, for the dropout path
    return xs, ts


def best(fn: Callable[[], object], repeat: int = 5) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def main() -> None:
    xs, ts = series()
    detectors = {
        "RobustBaseline": RobustBaseline(),
        "EwmaBaseline": EwmaBaseline(),
        "SeasonalBaseline": SeasonalBaseline(),
        "CusumChange": CusumChange(),
        "RateOfChange": RateOfChange(),
        "FlatLine": FlatLine(),
        "Dropout": Dropout(),
        "Spike": Spike(),
    }
    for kind in ("water_level", "crowd", "smoke", "manhole", "generic"):
        detectors[f"default_scorer({kind!r})"] = default_scorer(kind)
    print(
        f"n = {N:,}; python {sys.version.split()[0]}, numpy {np.__version__}, "
        f"{platform.processor() or platform.machine()}"
    )
    print(f"{'detector':32s} {'many: best':>12s} {'median':>12s} {'loop':>10s} {'state B':>8s}")
    for name, d in detectors.items():
        b, m = best(lambda d=d: d.score_learn_many(d.new_state(), xs, ts))
        state = d.new_state()
        t0 = time.perf_counter()
        for x, t in zip(xs[:LOOP].tolist(), ts[:LOOP].tolist(), strict=True):
            d.score_one(state, x, t)
            d.learn_one(state, x, t)
        loop = LOOP / (time.perf_counter() - t0)
        d.score_learn_many(state, xs[LOOP:], ts[LOOP:])
        print(
            f"{name:32s} {N / b / 1e6:8.2f} M/s {N / m / 1e6:8.2f} M/s "
            f"{loop / 1e3:6.1f} k/s {len(encode_state(state)):8d}"
        )


if __name__ == "__main__":
    main()
