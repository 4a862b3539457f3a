"""`cityvitals demo` as an operator runs it: a real process, a real webhook receiver,
Ctrl-C/SIGTERM handling and the exit code."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest
from aiohttp import web

from alerts.model import decode_notification
from cityvitals.levels import Level

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "cityvitals.cli", "demo"]


async def start_receiver(received: list[tuple[dict[str, str], bytes]]) -> tuple[web.AppRunner, str]:
    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/hook"


async def test_demo_command_delivers_alerts_to_a_webhook_and_exits_zero(tmp_path):
    """The CLI runs a short day, POSTs every notification to --webhook with an idempotency
    key, prints the summary, and exits 0 because nothing was lost."""
    received: list[tuple[dict[str, str], bytes]] = []
    runner, url = await start_receiver(received)
    try:
        proc = await asyncio.create_subprocess_exec(
            *CLI,
            "--duration",
            "0",
            "--nodes",
            "40",
            "--districts",
            "3",
            "--seed",
            "5",
            "--webhook",
            url,
            "--data-dir",
            str(tmp_path / "d"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 180)
    finally:
        await runner.cleanup()
    text = out.decode()
    assert proc.returncode == 0, text
    assert "0 lost" in text
    assert "MISSED" not in text
    assert "unexpected" not in text
    assert received, text
    notifications = [decode_notification(body) for _, body in received]
    keys = [headers["Idempotency-Key"] for headers, _ in received]
    assert keys == [n.id for n in notifications]
    assert len(set(keys)) == len(keys)  # each notification delivered once
    assert any(n.alert.level is Level.RED for n in notifications)
    assert (tmp_path / "d" / "cityvitals.sqlite3").exists()
    assert (tmp_path / "d" / "registry.csv").exists()


async def test_sigterm_drains_and_summarises(tmp_path):
    """SIGTERM mid-day stops publishing, drains what is in flight, prints the summary
    (marked interrupted) and still exits 0 because nothing published was lost."""
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "--duration",
        "120",
        "--nodes",
        "40",
        "--districts",
        "3",
        "--data-dir",
        str(tmp_path / "d"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.stdout is not None
    lines: list[str] = []

    async def read_until(marker: str) -> None:
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                raise AssertionError("demo ended before " + marker + ":\n" + "".join(lines))
            lines.append(line)
            if marker in line:
                return

    # 09:40 is 40% into the 120 s day, so ~48 s after the fleet starts, plus however
    # long a loaded machine takes to import and start the pipeline: bounded by the day.
    await asyncio.wait_for(read_until("scenario: 09:40"), 120)
    proc.send_signal(signal.SIGTERM)
    rest, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = "".join(lines) + rest.decode()
    assert proc.returncode == 0, text
    assert "interrupted" in text
    assert "0 lost" in text
