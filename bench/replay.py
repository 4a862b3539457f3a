"""Replay benchmark: rows/s end to end (CSV parse, detectors, rules, CSV write) and peak RSS.

Generates a seeded single-series CSV of --rows rows in a temp dir (a water
gauge at 10-minute readings: a dry road reading ~0-3 cm with exact repeats,
and a storm every ~10 days rising to 20-70 cm), with epoch-millisecond and
ISO 8601 (Z) timestamps, and replays it in-process with `stream.replay`:

1. --kind generic (the generic scorer, 6 detectors; built-in score levels);
2. --kind water_level with the built-in rules (water_level.depth);
3. --kind water_level with the built-in rules plus an anomaly rule (array path);
4. --kind water_level with the depth rule and the three trend rules: rate,
   forecast and composite (their windows fitted per block, stream.replay_trends),
   on the 10-minute series (4-point windows) and on the same values a minute
   apart (16-point windows, the most a window holds).

Each case runs --runs times, each in a fresh interpreter so that its peak RSS
is its own; rows/s counts from the call to replay() to its return (imports
excluded: `cityvitals replay` adds ~1.3 s of interpreter start and imports).
Prints best and median rows/s and the peak RSS; results go in
docs/benchmarks.md. Run: ./dev bench replay [--rows 1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

T0_MS = 1_764_028_800_000  # 2025-11-25 00:00 UTC
STEP_MS = 600_000

RULES = """
[[rule]]
name = "water_level.depth"
type = "threshold"
kind = "water_level"
metric = "depth_cm"
levels = { blue = 10, yellow = 20, orange = 30, red = 50 }
band = 2.0

[[rule]]
name = "water_level.anomaly"
type = "anomaly"
kind = "water_level"
metric = "depth_cm"
levels = { blue = 0.999, yellow = 0.9999, orange = 0.99999, red = 0.999999 }
"""

TRENDS = """
[[rule]]
name = "water_level.rise"
type = "rate"
kind = "water_level"
metric = "depth_cm"
levels = { yellow = 3, orange = 6 }

[[rule]]
name = "water_level.forecast"
type = "forecast"
kind = "water_level"
metric = "depth_cm"
threshold = 50
within_minutes = 30
level = "orange"

[[rule]]
name = "water_level.deep_and_rising"
type = "composite"
kind = "water_level"
level = "red"
all = [
    { metric = "depth_cm", above = 30, band = 2 },
    { metric = "depth_cm", rising_per_minute = 0.2 },
]
"""

CASES = {
    "generic": {"kind": "generic", "rules": None, "file": "epoch"},
    "generic-iso": {"kind": "generic", "rules": None, "file": "iso"},
    "water_level": {"kind": "water_level", "rules": None, "file": "epoch"},
    "water_level-iso": {"kind": "water_level", "rules": None, "file": "iso"},
    "water_level+anomaly": {"kind": "water_level", "rules": "rules", "file": "epoch"},
    "water_level+trends": {"kind": "water_level", "rules": "trends", "file": "epoch"},
    # Readings every minute: each 30-minute trend window holds 16 points (120 pairs).
    "water_level+trends-1min": {"kind": "water_level", "rules": "trends", "file": "minutely"},
}


def depths(rows: int, seed: int = 7) -> np.ndarray:
    """A gauge on a road: dry noise rounded to 0.5 cm (many exact repeats), storms."""
    rng = np.random.default_rng(seed)
    base = np.clip(rng.normal(1.0, 0.6, rows), 0.0, None)
    storms = np.zeros(rows)
    for start in rng.integers(0, rows, size=max(1, rows // 1440)):
        peak = rng.uniform(20, 70)
        length = int(rng.integers(12, 72))
        shape = np.sin(np.linspace(0, np.pi, length)) * peak
        storms[start : start + length] += shape[: max(0, min(length, rows - start))]
    return np.round((base + storms) * 2) / 2


def write_csv(path: Path, stamps: list[str], values: np.ndarray) -> None:
    with path.open("w") as f:
        f.write("timestamp,depth_cm\n")
        f.write("\n".join(f"{t},{v:g}" for t, v in zip(stamps, values.tolist(), strict=True)))
        f.write("\n")


def generate(folder: Path, rows: int) -> dict[str, Path]:
    values = depths(rows)
    times = T0_MS + np.arange(rows, dtype=np.int64) * STEP_MS
    files = {n: folder / f"{n}.csv" for n in ("epoch", "iso", "minutely")}
    write_csv(files["epoch"], [str(t) for t in times.tolist()], values)
    iso = (times.astype("datetime64[ms]").astype("datetime64[s]").astype(str)).tolist()
    write_csv(files["iso"], [t + "Z" for t in iso], values)
    minutes = T0_MS + np.arange(rows, dtype=np.int64) * 60_000
    write_csv(files["minutely"], [str(t) for t in minutes.tolist()], values)
    (folder / "rules.toml").write_text(RULES)
    (folder / "trends.toml").write_text(RULES.split("[[rule]]")[1].join(["[[rule]]", ""]) + TRENDS)
    return files


def peak_rss_mib() -> float:
    """This process image's peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries
    that across fork and exec, so a child would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(case: str, folder: Path) -> None:
    """One run, in this (fresh) interpreter; prints a JSON line."""
    from stream.replay import ReplayOptions, replay
    from stream.rules import load_rules

    spec = CASES[case]
    rules = None if spec["rules"] is None else load_rules(folder / f"{spec['rules']}.toml")
    source = folder / f"{spec['file']}.csv"
    options = ReplayOptions(kind=str(spec["kind"]), rules=rules, value_columns=("depth_cm",))
    started = time.perf_counter()
    summary = replay(source, folder / f"out-{case}.csv", options)
    seconds = time.perf_counter() - started
    peak = peak_rss_mib()
    print(
        json.dumps(
            {
                "rows": summary.rows,
                "seconds": seconds,
                "rows_per_s": summary.rows / seconds,
                "peak_rss_mib": peak,
                "levels": summary.by_level,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        child(args.case, args.folder)
        return
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, numpy {np.__version__}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="replay-bench-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        files = generate(folder, args.rows)
        sizes = ", ".join(f"{k} {p.stat().st_size / 2**20:.1f} MiB" for k, p in files.items())
        print(f"generated in {time.perf_counter() - started:.1f} s: {sizes}")
        for case in CASES:
            results = []
            for _ in range(args.runs):
                done = subprocess.run(  # noqa: S603 - this script, fixed arguments
                    [sys.executable, __file__, "--case", case, "--folder", str(folder)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            speeds = [r["rows_per_s"] for r in results]
            rows = results[0]["rows"]
            levels = ", ".join(f"{k} {v}" for k, v in results[0]["levels"].items())
            print(
                f"{case:20s} {rows:>9,} rows: best {max(speeds):>9,.0f} rows/s, "
                f"median {statistics.median(speeds):>9,.0f} rows/s, "
                f"peak RSS {max(r['peak_rss_mib'] for r in results):.0f} MiB; levels: {levels}"
            )


if __name__ == "__main__":
    main()
