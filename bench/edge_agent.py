"""Edge agent benchmark: CPU per 1 000 readings/s, queue write rate, backlog replay rate.

Against a real Mosquitto (the Debian package, started here on a free port):

1. steady: simulated nodes sampled at a paced total rate (default 1 000
   readings/s, every sample reported), through the durable queue
   (synchronous=FULL) and QoS 1; CPU seconds of this process per wall second.
2. queue: readings put into the durable queue as fast as it takes them, for
   FULL and NORMAL sync: group-committed readings/s to disk.
3. replay: a backlog of N readings on disk (an outage), then the broker comes
   back: readings/s from reconnect to the last PUBACK.

Prints its numbers and the machine; results go in docs/benchmarks.md.
Run: ./dev bench edge_agent [--rate 1000] [--seconds 20] [--backlog 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from edge.agent import EdgeAgent
from edge.buffer import Outbound
from edge.config import load_edge_config
from edge.queue import DurableQueue

KINDS = ["water_level", "manhole", "smoke", "crowd"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mosquitto(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)  # noqa: S603
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            time.sleep(0.05)
        else:
            return proc
    raise RuntimeError("mosquitto did not start")


def config(workdir: Path, port: int, nodes: int, interval_s: float, limit: int | None) -> Path:
    lines = [
        "[agent]",
        'id = "bench"',
        f'data_dir = "{workdir / "data"}"',
        "[mqtt]",
        f'url = "mqtt://127.0.0.1:{port}"',
        "reconnect_max_s = 0.5",
        "[queue]",
        'sync = "full"',
        "[report]",
        "enabled = false",
        f"interval_s = {interval_s}",
    ]
    for i in range(nodes):
        limit_text = f", limit = {limit}" if limit else ""
        lines += [
            "[[node]]",
            f'id = "n-{i:04d}"',
            f'kind = "{KINDS[i % 4]}"',
            f"simulate = {{ seed = {i}{limit_text} }}",
        ]
    path = workdir / "edge.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def steady(workdir: Path, port: int, rate: int, seconds: float) -> dict[str, float]:
    nodes = 20
    interval = nodes / rate
    agent = EdgeAgent(load_edge_config(config(workdir, port, nodes, interval, None)))
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(2)  # connect and settle before measuring
    c0, t0 = cpu_s(), time.monotonic()
    s0 = agent._counts["reported"]
    await asyncio.sleep(seconds)
    c1, t1 = cpu_s(), time.monotonic()
    s1 = agent._counts["reported"]
    stop.set()
    await run
    achieved = (s1 - s0) / (t1 - t0)
    cpu_share = (c1 - c0) / (t1 - t0)
    return {
        "readings_per_s": achieved,
        "cpu_share": cpu_share,
        "cpu_share_per_1000_per_s": cpu_share / achieved * 1000,
    }


async def queue_rate(workdir: Path, synchronous: str, n: int, *, sync_each: bool = False) -> float:
    path = workdir / f"queue-{synchronous}-{sync_each}.db"
    payload = b'{"v":1,"node":"n-0001","kind":"water_level","seq":0,"ts_ms":1764028800000,' + (
        b'"metrics":{"depth_cm":12.5},"battery_pct":93.5,"rssi_dbm":-71.0}'
    )
    async with DurableQueue(path, synchronous=synchronous) as q:  # type: ignore[arg-type]
        t0 = time.monotonic()
        for _ in range(n):
            await q.put(
                Outbound(
                    "city/water_level/n-0001/telemetry", payload, "n-0001", q.next_seq("n-0001")
                )
            )
            if sync_each:
                await q.sync()
        await q.sync()
        return n / (time.monotonic() - t0)


async def replay(workdir: Path, backlog: int) -> dict[str, float]:
    port = free_port()
    nodes = 10
    per_node = backlog // nodes
    agent = EdgeAgent(load_edge_config(config(workdir, port, nodes, 0.0001, per_node)))
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))  # no broker yet: an outage
    t0 = time.monotonic()
    await agent.wait_sampled()
    fill_s = time.monotonic() - t0
    queued = agent.pending
    broker = start_mosquitto(port, workdir)
    try:
        t0 = time.monotonic()
        await agent.wait_delivered()
        replay_s = time.monotonic() - t0
    finally:
        stop.set()
        await run
        broker.terminate()
        broker.wait()
    size = sum(f.stat().st_size for f in (workdir / "data").glob("bench.queue.db*"))
    return {
        "backlog": queued,
        "fill_per_s": queued / fill_s,
        "replay_per_s": queued / replay_s,
        "replay_s": replay_s,
        "queue_file_mib": size / 2**20,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--backlog", type=int, default=100_000)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, "
        f"{platform.platform()}"
    )
    with tempfile.TemporaryDirectory() as d:
        workdir = Path(d)
        port = free_port()
        broker = start_mosquitto(port, workdir)
        try:
            s = await steady(workdir, port, args.rate, args.seconds)
        finally:
            broker.terminate()
            broker.wait()
        print(
            f"steady: {s['readings_per_s']:.0f} readings/s published (asked {args.rate}), "
            f"CPU {s['cpu_share'] * 100:.1f} % of one core; "
            f"{s['cpu_share_per_1000_per_s'] * 100:.1f} % of a core per 1 000 readings/s"
        )
        for mode in ("FULL", "NORMAL"):
            rate = await queue_rate(workdir, mode, 50_000)
            print(f"queue: {rate:,.0f} readings/s written (synchronous={mode}, group commit)")
            rate = await queue_rate(workdir, mode, 2_000, sync_each=True)
            print(f"queue: {rate:,.0f} readings/s written (synchronous={mode}, a commit each)")
    with tempfile.TemporaryDirectory() as d:
        r = await replay(Path(d), args.backlog)
        print(
            f"replay: backlog of {r['backlog']:,.0f} readings "
            f"({r['queue_file_mib']:.1f} MiB on disk, filled at {r['fill_per_s']:,.0f}/s) "
            f"replayed in {r['replay_s']:.1f} s: "
            f"{r['replay_per_s']:,.0f} readings/s"
        )
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    asyncio.run(main())
