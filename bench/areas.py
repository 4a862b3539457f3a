"""Area rules: node warnings counted per second per core, and bytes of state per area.

The area agent calls `AreaEngine.evaluate(key, warning, state)` once per node
warning a spatial rule counts; each call inserts the change into the node's
timeline and judges the area (the k-th highest node level, a pass over the
area's nodes). So the cost grows with the nodes of an area, not the city.

For areas of 10, 100 and 1 000 gauges, a storm: every gauge goes through
yellow, orange, red and back down in seeded random order, its changes
spread over three hours, each change a `Warning` through `routes` and
`evaluate`, with the area's state encoded and decoded every 100 updates
(the agent does so once per batch). Twice: changes in reading-time order
(live), and shuffled (backlogs flushed out of order, every change judged
late). Prints changes per CPU second (`time.process_time`: one core) and the
encoded state of the area afterwards.

Prints its numbers and the machine; results go in docs/benchmarks.md.
Run: ./dev bench areas (under a minute on 2 cores)
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time

from cityvitals.contract import Placement, Warning, fingerprint
from cityvitals.kinds import Kind
from cityvitals.levels import Level
from stream.areas import AreaEngine, decode_area_state, encode_area_state
from stream.rules import AreaRule, AreaState

T0_MS = 1_764_028_800_000
PLACE = Placement(
    district="Harbour", street="Dock St", grid="HB-1", unit="harbour-ops", lat=31.2, lon=121.5
)
RULE = AreaRule(
    "flood.district",
    Kind.WATER_LEVEL,
    ("water_level.depth",),
    "district",
    at_least=Level.YELLOW,
    nodes=3,
)
STORM = (Level.YELLOW, Level.ORANGE, Level.RED, Level.ORANGE, Level.YELLOW, Level.NONE)


def storm(nodes: int, rng: random.Random) -> list[Warning]:
    out = []
    for n in range(nodes):
        node = f"wl-{n:05d}"
        start = rng.randrange(0, 3_600_000)
        for i, level in enumerate(STORM):
            ts = T0_MS + start + i * rng.randrange(600_000, 1_800_000)
            out.append(
                Warning(
                    v=1,
                    fingerprint=fingerprint(rule="water_level.depth", node=node),
                    rule="water_level.depth",
                    node=node,
                    kind=Kind.WATER_LEVEL,
                    metric="depth_cm",
                    level=level,
                    previous=STORM[i - 1] if i else Level.NONE,
                    value=10.0 * int(level),
                    threshold=None,
                    unit="cm",
                    ts_ms=ts,
                    seq=i,
                    placement=PLACE,
                )
            )
    return out


def run(warnings: list[Warning]) -> tuple[float, int, int]:
    engine = AreaEngine([RULE])
    state = AreaState()
    raised = 0
    began = time.process_time()
    for i, w in enumerate(warnings):
        for key, _ in engine.routes(w):
            raised += len(engine.evaluate(key, w, state))
        if i % 100 == 99:
            state = decode_area_state(encode_area_state(state))
    spent = time.process_time() - began
    return len(warnings) / spent, len(encode_area_state(state)), raised


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000", help="gauges per area")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        f"{'gauges':>7} {'order':<10} {'changes/s/core':>15} {'state bytes':>12} "
        f"{'per gauge':>10} {'area warnings':>14}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        rng = random.Random(args.seed)
        warnings = storm(size, rng)
        live = sorted(warnings, key=lambda w: (w.ts_ms, w.node))
        late = list(warnings)
        rng.shuffle(late)
        for name, order in (("live", live), ("shuffled", late)):
            rate, size_bytes, raised = run(order)
            print(
                f"{size:>7} {name:<10} {rate:>15,.0f} {size_bytes:>12,} "
                f"{size_bytes / size:>10,.0f} {raised:>14}"
            )


if __name__ == "__main__":
    main()
