"""Rules on the live path: readings/s per core through RuleEngine.evaluate, and state per node.

The stream agent calls `RuleEngine.evaluate(reading, placement, state)` once
per reading; with anomaly rules that is a detector `score_one` + `learn_one`
per rule and reading, and the detectors' state in the node's state table.

1. throughput: simulated nodes of each kind (and a mix of all four), readings
   in round-robin order at 10-minute steps, first with the built-in rules
   only, then with the built-in rules plus one anomaly rule per kind on its
   main metric (the kind's default scorer). Readings per CPU second of this
   process (`time.process_time`: one core; unaffected by other load on the
   machine) and per wall second.
2. state per node, 1 000 nodes: every node warmed through the engine with
   its own readings (300 per node; crowd nodes 1 100, over a week, so that
   every time-of-week bin of the seasonal detector holds a learned value),
   then `encode_state(NodeState)`: bytes per node by kind.
3. state per node, 100 000 nodes: 400 template nodes warmed as in 2, then
   100 000 nodes each started from a template's bytes and fed one more
   reading of its own through the engine, encoded and kept in a dict (what
   an in-memory state table holds): total bytes, bytes per node on a sample
   and the growth in RSS.

Prints its numbers and the machine; results go in docs/benchmarks.md.
Run: ./dev bench rules_throughput [--readings 20000] [--nodes 100000]
(about a minute on 2 cores)
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import resource
import statistics
import time
from collections.abc import Callable, Iterator

from cityvitals.contract import Placement, Reading
from cityvitals.kinds import Kind
from cityvitals.levels import Level
from stream.detectors import KIND_DEFAULTS
from stream.engine import NodeState, RuleEngine, decode_state, encode_state
from stream.rules import DEFAULT_RULES, AnomalyRule, Rule

T0_MS = 1_764_028_800_000
STEP_MS = 600_000
PLACE = Placement(
    district="Harbour", street="Dock St", grid="HB-1", unit="harbour-ops", lat=31.2, lon=121.5
)
LEVELS = {Level.BLUE: 0.999, Level.YELLOW: 0.9999, Level.ORANGE: 0.99999, Level.RED: 0.999999}
ANOMALY: tuple[Rule, ...] = tuple(
    AnomalyRule(f"{kind.value}.anomaly", kind, KIND_DEFAULTS[kind.value].metric, LEVELS)
    for kind in Kind
)
#: Readings per node before its state is measured: past every window and warm-up.
WARM = {Kind.WATER_LEVEL: 300, Kind.MANHOLE: 300, Kind.SMOKE: 300, Kind.CROWD: 1100}
PREFIX = {Kind.WATER_LEVEL: "wl", Kind.MANHOLE: "mh", Kind.SMOKE: "sm", Kind.CROWD: "cr"}


def metrics(kind: Kind, rng: random.Random, i: int) -> dict[str, float]:
    """Plausible quiet readings at the sensor's resolution (so repeats happen)."""
    if kind is Kind.WATER_LEVEL:
        return {"depth_cm": round(abs(rng.gauss(2.0, 0.8)) * 2) / 2}
    if kind is Kind.MANHOLE:
        return {
            "cover_tilt_deg": round(abs(rng.gauss(1.0, 0.3)), 1),
            "cover_open": 0.0,
            "gas_lel_pct": round(abs(rng.gauss(2.0, 0.6)) * 2) / 2,
        }
    if kind is Kind.SMOKE:
        return {
            "obscuration_pct_m": round(abs(rng.gauss(0.2, 0.05)) * 20) / 20,
            "temperature_c": round(rng.gauss(22.0, 1.0), 1),
        }
    hour = (i * STEP_MS // 3_600_000) % 24
    density = abs(rng.gauss(0.3 + (1.5 if 10 <= hour < 20 else 0.0), 0.2))
    return {"density_m2": round(density, 2), "count": float(round(density * 400))}


def node_readings(kind: Kind, node: str, seed: int, start: int = 0) -> Iterator[Reading]:
    rng = random.Random(seed)
    i = start
    while True:
        yield Reading(
            v=1,
            node=node,
            kind=kind,
            seq=i,
            ts_ms=T0_MS + i * STEP_MS,
            metrics=metrics(kind, rng, i),
        )
        i += 1


def timed(work: Callable[[], int]) -> tuple[int, float, float]:
    """(readings, CPU seconds, wall seconds) of `work`."""
    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    done = work()
    return done, time.process_time() - cpu, time.perf_counter() - wall


def throughput(kinds: list[Kind], rules: tuple[Rule, ...], readings: int) -> tuple[float, float]:
    """Readings/s (per CPU second, per wall second) through evaluate, 40 nodes per kind."""
    engine = RuleEngine(rules)
    streams = [
        (node_readings(kind, f"{PREFIX[kind]}-{n:04d}", n), NodeState())
        for kind in kinds
        for n in range(40)
    ]
    # Past the detectors' warm-up first: before it they return 1.0 cheaply.
    for source, state in streams:
        for _ in range(100):
            engine.evaluate(next(source), PLACE, state)

    def work() -> int:
        done = 0
        while done < readings:
            for source, state in streams:
                engine.evaluate(next(source), PLACE, state)
            done += len(streams)
        return done

    done, cpu, wall = timed(work)
    return done / cpu, done / wall


def warmed(kind: Kind, n: int, engine: RuleEngine) -> tuple[NodeState, Iterator[Reading]]:
    node = f"{PREFIX[kind]}-{n:06d}"
    source = node_readings(kind, node, n)
    state = NodeState()
    for _ in range(WARM[kind]):
        engine.evaluate(next(source), PLACE, state)
    return state, source


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def state_sizes(engine: RuleEngine, nodes: int) -> None:
    by_kind: dict[Kind, list[int]] = {kind: [] for kind in Kind}
    detector: dict[Kind, list[int]] = {kind: [] for kind in Kind}
    started = time.perf_counter()
    for n in range(nodes):
        kind = list(Kind)[n % 4]
        state, _ = warmed(kind, n, engine)
        by_kind[kind].append(len(encode_state(state)))
        detector[kind].append(sum(len(r.detector) for r in state.rules.values()))
    every = [size for sizes in by_kind.values() for size in sizes]
    print(
        f"state, {nodes:,} nodes (warmed in {time.perf_counter() - started:.1f} s): "
        f"mean {statistics.mean(every):,.0f} B/node, max {max(every):,} B, "
        f"total {sum(every) / 2**20:.2f} MiB"
    )
    for kind, sizes in by_kind.items():
        print(
            f"  {kind.value:12s} mean {statistics.mean(sizes):>6,.0f} B, "
            f"min {min(sizes):>6,} B, max {max(sizes):>6,} B; of which the anomaly "
            f"rule's detector state {statistics.mean(detector[kind]):>6,.0f} B"
        )


def many_nodes(engine: RuleEngine, nodes: int, templates: int = 400) -> None:
    started = time.perf_counter()
    kinds = list(Kind)
    seeds: list[tuple[Kind, bytes, int]] = []
    for t in range(templates):
        kind = kinds[t % 4]
        state, _ = warmed(kind, 1_000_000 + t, engine)
        seeds.append((kind, encode_state(state), WARM[kind]))
    warm_s = time.perf_counter() - started
    gc.collect()
    before = rss_mib()
    table: dict[str, bytes] = {}
    started = time.perf_counter()
    for n in range(nodes):
        kind, data, seq = seeds[n % templates]
        node = f"{PREFIX[kind]}-{n:06d}"
        state = decode_state(data)
        reading = next(node_readings(kind, node, n, start=seq))
        engine.evaluate(reading, PLACE, state)
        table[node] = encode_state(state)
    fill_s = time.perf_counter() - started
    gc.collect()
    grown = rss_mib() - before
    sizes = [len(v) for v in table.values()]
    sample = random.Random(1).sample(sizes, 1000)
    total = sum(sizes)
    print(
        f"state, {nodes:,} nodes ({templates} templates warmed in {warm_s:.1f} s, "
        f"{nodes:,} nodes evaluated and encoded in {fill_s:.1f} s): "
        f"sample of 1 000: mean {statistics.mean(sample):,.0f} B/node, max {max(sample):,} B; "
        f"all: {total / 2**20:.1f} MiB of state bytes, RSS grew {grown:.1f} MiB "
        f"({grown * 2**20 / nodes:,.0f} B/node with the dict and key strings)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=20_000, help="per throughput case")
    parser.add_argument("--small", type=int, default=1_000, help="nodes, fully warmed")
    parser.add_argument("--nodes", type=int, default=100_000, help="nodes, from templates")
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}"
    )
    print("throughput through RuleEngine.evaluate (readings/s per CPU second | per wall second):")
    cases: list[tuple[str, list[Kind]]] = [(kind.value, [kind]) for kind in Kind]
    cases.append(("mixed", list(Kind)))
    for name, kinds in cases:
        plain_cpu, plain_wall = throughput(kinds, DEFAULT_RULES, args.readings)
        both_cpu, both_wall = throughput(kinds, (*DEFAULT_RULES, *ANOMALY), args.readings)
        print(
            f"  {name:12s} built-in rules {plain_cpu:>9,.0f} | {plain_wall:>9,.0f};"
            f"  + anomaly rule {both_cpu:>7,.0f} | {both_wall:>7,.0f}"
        )
    engine = RuleEngine((*DEFAULT_RULES, *ANOMALY))
    state_sizes(engine, args.small)
    many_nodes(engine, args.nodes)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
