"""Embedded end-to-end benchmark: readings/s through the whole pipeline, and
publish-to-alert latency.

Two runs of the demo's city (same code path as `cityvitals demo`):

1. flat out (`--duration 0`): every reading is queued at once; throughput is
   readings stored per wall second, from the first publish to the last store.
2. paced (the demo's default rate): latency from the broker's acknowledgement
   of the reading that changed a warning level to the alert notification
   being handed to a receiver, for every notification of the day.

Prints its numbers and the machine; results go in docs/benchmarks.md.
Run: ./dev bench embedded_e2e [--nodes N] [--paced-duration S]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

from alerts.model import Notification
from cityvitals.embedded.demo import DemoOptions, run_demo


class StopwatchReceiver:
    """A receiver that only notes when each notification reached it."""

    name = "bench"

    def __init__(self) -> None:
        self.delivered: list[tuple[Notification, float]] = []

    async def send(self, n: Notification) -> None:
        self.delivered.append((n, time.monotonic()))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


async def run(nodes: int, duration: float, data_dir: Path) -> dict[str, float]:
    receiver = StopwatchReceiver()
    acked_at: dict[tuple[str, int], float] = {}
    first_ack: list[float] = []

    def timed_ack(node: str, seq: int) -> None:
        now = time.monotonic()
        if not first_ack:
            first_ack.append(now)
        acked_at[(node, seq)] = now

    began = time.monotonic()
    result = await run_demo(
        DemoOptions(data_dir=data_dir, duration_s=duration, nodes=nodes, seed=7),
        notifiers=[receiver],
        on_ack=timed_ack,
    )
    ended = time.monotonic()
    assert result.ok, "the benchmark lost readings; numbers would be meaningless"
    latencies = [
        (t - acked_at[(n.alert.node, n.alert.seq)]) * 1000
        for n, t in receiver.delivered
        if (n.alert.node, n.alert.seq) in acked_at
    ]
    return {
        "readings": result.published,
        "seconds": ended - began,
        "readings_per_s": result.stored / (ended - (first_ack[0] if first_ack else began)),
        "alerts": len(latencies),
        "p50_ms": percentile(latencies, 50) if latencies else float("nan"),
        "p99_ms": percentile(latencies, 99) if latencies else float("nan"),
        "max_ms": max(latencies) if latencies else float("nan"),
        "mean_ms": statistics.fmean(latencies) if latencies else float("nan"),
    }


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=240)
    parser.add_argument("--paced-duration", type=float, default=60.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        flat = asyncio.run(run(args.nodes, 0.0, Path(tmp) / "flat"))
        print(
            f"flat out : {flat['readings']:,} readings, {flat['readings_per_s']:,.0f} readings/s "
            f"end to end ({flat['seconds']:.1f} s)"
        )
        paced = asyncio.run(run(args.nodes, args.paced_duration, Path(tmp) / "paced"))
        rate = paced["readings"] / args.paced_duration
        print(
            f"paced    : {paced['readings']:,} readings at ~{rate:,.0f}/s offered; "
            f"publish-to-alert over {paced['alerts']} notifications: "
            f"p50 {paced['p50_ms']:.1f} ms, p99 {paced['p99_ms']:.1f} ms, "
            f"max {paced['max_ms']:.1f} ms"
        )
        print(
            f"flat-out publish-to-alert (queueing included): p50 {flat['p50_ms']:.0f} ms, "
            f"p99 {flat['p99_ms']:.0f} ms"
        )
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS : {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
