"""Alert service: warnings folded and recorded per second, and notifications delivered per second.

A storm's warnings (N alerts, each firing, raised twice and resolved: four
changes, four notifications) go through `AlertService` with an alert store
on disk (the outbox's `synchronous = FULL`: one fsync per recorded change
and per settled delivery) or in memory, to R receivers that accept at once
(in-process, so the numbers are the service's and the store's, not a
network's). Prints warnings recorded per second (submit to `recorded()`),
notifications delivered per second (to every receiver: notifications x R,
to `drain()`), and the store's size.

Prints its numbers and the machine; results go in docs/benchmarks.md.
Run: ./dev bench alert_dispatch (a minute on 2 cores)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from pathlib import Path

from alerts.model import Notification
from alerts.service import AlertService
from alerts.store import AlertStore
from cityvitals.clock import SystemClock
from cityvitals.contract import Placement, Warning, fingerprint
from cityvitals.kinds import Kind
from cityvitals.levels import Level

PLACE = Placement(
    district="Harbour", street="Dockside Street", grid="HB-101", unit="ops", lat=31.2, lon=121.4
)
STORY = (Level.YELLOW, Level.ORANGE, Level.RED, Level.NONE)


class Accepting:
    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0

    async def send(self, n: Notification) -> None:
        self.count += 1


def storm(alerts: int) -> list[Warning]:
    out = []
    for step, level in enumerate(STORY):
        for i in range(alerts):
            node = f"wl-{i:05d}"
            out.append(
                Warning(
                    v=1,
                    fingerprint=fingerprint(rule="water_level.depth", node=node),
                    rule="water_level.depth",
                    node=node,
                    kind=Kind.WATER_LEVEL,
                    metric="depth_cm",
                    level=level,
                    previous=Level.NONE,
                    value=10.0 * (step + 1),
                    threshold=50.0,
                    unit="cm",
                    ts_ms=1_764_028_800_000 + step * 60_000,
                    seq=step,
                    placement=PLACE,
                )
            )
    return out


async def run(alerts: int, receivers: int, store_path: Path | None) -> tuple[float, float]:
    warnings = storm(alerts)
    sinks = [Accepting(f"r{i}") for i in range(receivers)]
    async with (
        AlertStore(store_path) as store,
        AlertService(sinks, clock=SystemClock(), store=store, queue_size=10_000) as svc,
    ):
        started = time.perf_counter()
        for w in warnings:
            await svc.submit(w)
        await svc.recorded()
        recorded = time.perf_counter() - started
        await svc.drain()
        delivered = time.perf_counter() - started
    assert sum(s.count for s in sinks) == len(warnings) * receivers
    return len(warnings) / recorded, len(warnings) * receivers / delivered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=500)
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="alerts-bench-") as tmp:
        for where in ("disk", "memory"):
            for receivers in (1, 4):
                path = Path(tmp) / f"alerts-{receivers}.sqlite3" if where == "disk" else None
                warned, sent = asyncio.run(run(args.alerts, receivers, path))
                size = 0 if path is None else path.stat().st_size
                print(
                    f"store on {where:6s} {args.alerts} alerts x 4 changes, {receivers} "
                    f"receiver(s): {warned:8,.0f} warnings recorded/s, {sent:8,.0f} "
                    f"notifications delivered/s"
                    + (f", store {size / 2**20:.1f} MiB" if size else "")
                )


if __name__ == "__main__":
    main()
