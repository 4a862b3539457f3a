"""Alerts HTTP API: requests per second and latency, over real HTTP on loopback.

An `AlertService` holding N open alerts (a storm's first change each) and its
`AlertsApi` on a real aiohttp server on 127.0.0.1; a client with C requests
in flight at once (one aiohttp session, as a dashboard or a script would
use) asks for

- the open-alert list (every alert, JSON: what an operations screen polls),
- one alert by fingerprint,
- an acknowledgement of a different alert each time (a change: recorded in
  the alert store on disk, `synchronous = FULL`, and notified to one
  receiver that accepts at once).

Client and server share the machine's 2 cores, so these are the pair's
numbers. Prints requests/s and p50/p99 latency per case, and the machine;
results go in docs/benchmarks.md.
Run: ./dev bench alerts_api (half a minute on 2 cores)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import numpy as np
from aiohttp import web
from alert_dispatch import Accepting, storm

from alerts.api import AlertsApi, Tokens
from alerts.service import AlertService
from alerts.store import AlertStore
from cityvitals.clock import SystemClock

TOKEN = "b" * 32


async def measure(
    session: aiohttp.ClientSession,
    requests: int,
    in_flight: int,
    request: Callable[[int], tuple[str, str]],
) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) of `requests` requests, `in_flight` at a time."""
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            method, url = request(queue.get_nowait())
            began = time.perf_counter()
            async with session.request(method, url) as answer:
                await answer.read()
                assert answer.status == 200, answer.status
            latencies.append(time.perf_counter() - began)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return requests / elapsed, float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


async def run(alerts: int, in_flight: int, requests: int, tmp: Path) -> None:
    (tmp / "tokens").write_text(f"{TOKEN} operator bench\n")
    firing = storm(alerts)[:alerts]
    async with (
        AlertStore(tmp / "alerts.sqlite3") as store,
        AlertService([Accepting("ops")], clock=SystemClock(), store=store) as svc,
    ):
        for w in firing:
            await svc.submit(w)
        await svc.drain()
        runner = web.AppRunner(AlertsApi(svc, Tokens.load(tmp / "tokens")).app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        base = f"http://{host}:{port}/api/v1/alerts"
        fps = [w.fingerprint for w in firing]
        headers = {"Authorization": f"Bearer {TOKEN}"}
        connector = aiohttp.TCPConnector(limit=in_flight)
        try:
            async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
                cases: list[tuple[str, int, Callable[[int], tuple[str, str]]]] = [
                    (f"list of {alerts} open alerts", max(requests // 10, 50),
                     lambda i: ("GET", base)),
                    ("one alert", requests, lambda i: ("GET", f"{base}/{fps[i % alerts]}")),
                    ("acknowledge (recorded, notified)", min(requests, alerts),
                     lambda i: ("POST", f"{base}/{fps[i]}/acknowledge")),
                ]  # fmt: skip
                for name, count, request in cases:
                    rate, p50, p99 = await measure(session, count, in_flight, request)
                    print(
                        f"{name:34s} {count:6,d} requests, {in_flight} in flight: "
                        f"{rate:8,.0f} requests/s, p50 {p50:6.1f} ms, p99 {p99:6.1f} ms"
                    )
        finally:
            await runner.cleanup()
        await svc.drain()
        acknowledged = sum(a.state == "acknowledged" for a in svc.book.open_alerts())
        assert acknowledged == min(requests, alerts), acknowledged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=8)
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="alerts-api-bench-") as tmp:
        asyncio.run(run(args.alerts, args.in_flight, args.requests, Path(tmp)))


if __name__ == "__main__":
    main()
