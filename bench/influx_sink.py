"""InfluxDB sink benchmark: points/s through InfluxSink into a real local influxd, the
spool's throughput while InfluxDB is down, how fast a backlog drains, and memory.

Starts its own influxd with deploy/influxdb/influxdb (built once from the Go module;
`deploy/influxdb/influxdb fetch` first) on a free loopback port, in a temporary directory.
The readings look like the demo city's: 240 nodes, registry names with spaces, a flush
every 500 readings (the stream's batch).

1. encode: reading -> line protocol, CPU only.
2. live: write + flush into the sink with InfluxDB up, until InfluxDB confirmed all
   (points/s end to end) and flush() latency (spool commit, synchronous=FULL).
3. down: the same with nothing listening: the spool's throughput and flush latency.
4. drain: the spool from 3 shipped to InfluxDB by a fresh sink (a backlog after an outage).

Prints its numbers and the machine; results go in docs/benchmarks.md.
Run: ./dev bench influx_sink [--points N] [--nodes N] [--no-gzip]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import resource
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from cityvitals.contract import Placement, Reading
from cityvitals.kinds import Kind
from stream.sinks.influx import InfluxSink
from stream.sinks.points import reading_line

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "influxdb" / "influxdb"
TS = 1_764_028_800_000
FLUSH_EVERY = 500


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def city(nodes: int) -> list[tuple[Reading, Placement]]:
    """One reading template per node: kind, metrics and a placement like the registry's."""
    rng = random.Random(7)
    kinds = [
        (Kind.WATER_LEVEL, "wl", {"depth_cm": 12.5}),
        (Kind.MANHOLE, "mh", {"cover_tilt_deg": 0.5, "cover_open": 0.0, "gas_lel_pct": 1.0}),
        (Kind.SMOKE, "sm", {"obscuration_pct_m": 0.1, "temperature_c": 21.5}),
        (Kind.CROWD, "cr", {"count": 120.0, "density_m2": 0.4}),
    ]
    out = []
    for i in range(nodes):
        kind, prefix, metrics = kinds[i % 4]
        place = Placement(
            district=f"District {i % 4 + 1}",
            street=f"Harbour Road {i % 37}",
            grid=f"G-{i % 97:03d}",
            unit=f"Unit {i % 4 + 1} Drainage & Roads",
            lat=31.2 + rng.random() / 10,
            lon=121.4 + rng.random() / 10,
        )
        reading = Reading(
            v=1,
            node=f"{prefix}-{i:04d}",
            kind=kind,
            seq=0,
            ts_ms=TS,
            metrics=metrics,
            battery_pct=87.5,
            rssi_dbm=-71.0,
        )
        out.append((reading, place))
    return out


def readings(templates: list[tuple[Reading, Placement]], count: int):
    nodes = len(templates)
    for i in range(count):
        template, place = templates[i % nodes]
        seq = i // nodes
        yield (
            Reading(
                v=1,
                node=template.node,
                kind=template.kind,
                seq=seq,
                ts_ms=TS + seq * 600_000,
                metrics={k: v + (seq % 50) / 10 for k, v in template.metrics.items()},
                battery_pct=template.battery_pct,
                rssi_dbm=template.rssi_dbm,
            ),
            place,
        )


def files_size(directory: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in directory.rglob(pattern) if p.is_file())


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))]


async def feed(sink: InfluxSink, items: list[tuple[Reading, Placement]]) -> list[float]:
    """Write like the stream does (a flush every 500); the flush latencies in ms."""
    flushes: list[float] = []
    for i, (reading, place) in enumerate(items, 1):
        await sink.write_reading(reading, place, TS)
        if i % FLUSH_EVERY == 0:
            began = time.perf_counter()
            await sink.flush()
            flushes.append((time.perf_counter() - began) * 1000)
    await sink.flush()
    return flushes


async def bench(args: argparse.Namespace, work: Path, url: str, token: str) -> None:
    templates = city(args.nodes)
    items = list(readings(templates, args.points))
    common = {"org": "cityvitals", "bucket": "cityvitals", "token": token, "compress": args.gzip}

    began = time.perf_counter()
    lines = [reading_line(r, p, TS) for r, p in items]
    encode_s = time.perf_counter() - began
    size = sum(len(line.encode()) for line in lines) / len(lines)
    print(f"encode: {len(lines) / encode_s:,.0f} lines/s; {size:.0f} bytes a reading")

    rss_before = rss_mb()
    async with InfluxSink(url, work / "live.sqlite3", **common) as sink:
        began = time.perf_counter()
        flushes = await feed(sink, items)
        fed = time.perf_counter() - began
        await sink.wait_shipped()
        total = time.perf_counter() - began
    print(
        f"live: {args.points / total:,.0f} points/s end to end (InfluxDB confirmed all in"
        f" {total:.1f} s; the writes and flushes took {fed:.1f} s); flush p50"
        f" {pct(flushes, 50):.1f} ms, p99 {pct(flushes, 99):.1f} ms"
    )

    down_port = free_port()  # nothing listens there
    async with InfluxSink(
        f"http://127.0.0.1:{down_port}", work / "down.sqlite3", stop_timeout_s=0.1, **common
    ) as sink:
        began = time.perf_counter()
        flushes = await feed(sink, items)
        took = time.perf_counter() - began
        stats = sink.stats()
    spool_file = await asyncio.to_thread(files_size, work, "down.sqlite3*")
    print(
        f"down: {args.points / took:,.0f} points/s into the spool; flush p50"
        f" {pct(flushes, 50):.1f} ms, p99 {pct(flushes, 99):.1f} ms; spool"
        f" {stats.spool_bytes / 1e6:.1f} MB of line protocol, file {spool_file / 1e6:.1f} MB"
    )

    async with InfluxSink(url, work / "down.sqlite3", **common) as sink:
        began = time.perf_counter()
        await sink.wait_shipped()
        took = time.perf_counter() - began
    print(f"drain: a backlog of {args.points:,} points shipped at {args.points / took:,.0f}/s")
    print(
        f"memory: python RSS {rss_mb():.0f} MB now (was {rss_before:.0f} MB with the"
        f" readings built; peak {peak_rss_mb():.0f} MB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--nodes", type=int, default=240)
    parser.add_argument("--no-gzip", dest="gzip", action="store_false")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python"
        f" {platform.python_version()}, {args.points:,} readings over {args.nodes} nodes,"
        f" gzip {'on' if args.gzip else 'off'}"
    )
    with tempfile.TemporaryDirectory(prefix="cv-bench-influx-") as tmp:
        work = Path(tmp)
        port = free_port()
        db = work / "influxdb"
        subprocess.run([str(SCRIPT), "start", str(db), str(port)], check=True)  # noqa: S603
        try:
            token = (db / "token").read_text().strip()
            asyncio.run(bench(args, work, f"http://127.0.0.1:{port}", token))
            pid = (db / "influxd.pid").read_text().strip()
            print(f"influxd RSS {rss_mb(pid):.0f} MB after the run")
            engine = files_size(db / "engine", "*")
            print(f"influxd engine on disk {engine / 1e6:.1f} MB")
        finally:
            subprocess.run([str(SCRIPT), "stop", str(db)], check=True)  # noqa: S603


if __name__ == "__main__":
    main()
