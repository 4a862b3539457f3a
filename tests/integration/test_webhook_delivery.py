"""Webhook delivery against a real aiohttp server on 127.0.0.1, started by each test.

The receiver is scripted per test (answer with these statuses, or hang). The
service's `sleep` is injected so backoff is recorded rather than waited; the
only real waiting is the notifier's own short timeout in the hang test. Every
wait is bounded by `asyncio.wait_for`.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from functools import partial

import aiohttp
import pytest
from aiohttp import web

from alerts.model import Notification, decode_notification
from alerts.notify import WebhookNotifier
from alerts.service import AlertService, AlertStats
from cityvitals.clock import ManualClock
from cityvitals.levels import Level
from tests.factories import PLACE, make_warning

pytestmark = pytest.mark.integration

WAIT = 10.0  # upper bound for a whole test's deliveries; they normally take milliseconds


warning = partial(make_warning, fp="fp-harbour-1", seq=42, ts_ms=1_764_028_800_000)


@dataclass
class Receiver:
    """A scripted webhook endpoint: records each request, answers from `statuses` (then 200)."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    hang: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)
    requests: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((await request.read(), dict(request.headers)))
        if self.hang:
            await self.release.wait()
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="nope" if status >= 300 else "ok")


@dataclass
class Deliveries:
    sleeps: list[float] = field(default_factory=list)
    reports: list[tuple[str, str, str, str]] = field(default_factory=list)

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)

    async def on_delivery(self, n: Notification, receiver: str, outcome: str, detail: str) -> None:
        self.reports.append((n.id, receiver, outcome, detail))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver()
    app = web.Application()
    app.router.add_post("/hook", recv.handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    recv.url = f"http://{host}:{port}/hook"
    try:
        yield recv
    finally:
        recv.release.set()  # let hung handlers finish so the server shuts down cleanly
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def refused_url() -> Iterator[str]:
    # Bound but not listening: connects are refused, and no other process can
    # take the port while the test runs (unlike a closed ephemeral port).
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"


async def deliver(
    url: str, session: aiohttp.ClientSession, *, attempts: int = 5, notifier_timeout: float = 5.0
) -> tuple[Deliveries, AlertStats, Notification]:
    """Submit one firing warning through a real WebhookNotifier and wait until it settles."""
    rec = Deliveries()
    produced: list[Notification] = []

    async def on_notification(n: Notification) -> None:
        produced.append(n)

    webhook = WebhookNotifier(url, session, timeout=notifier_timeout, name="ops-webhook")
    async with AlertService(
        [webhook],
        clock=ManualClock(1_764_028_800.0),
        attempts=attempts,
        rng=random.Random(7),
        sleep=rec.sleep,
        on_notification=on_notification,
        on_delivery=rec.on_delivery,
    ) as svc:
        await svc.submit(warning(Level.RED))
        await asyncio.wait_for(svc.drain(), WAIT)
    (n,) = produced
    return rec, svc.stats(), n


async def test_body_is_the_notification_and_headers_carry_its_key(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    """A 200 receiver gets one POST whose JSON decodes to the notification, keyed by its id."""
    rec, stats, n = await deliver(receiver.url, session)
    ((body, headers),) = receiver.requests
    assert decode_notification(body) == n
    assert headers["Idempotency-Key"] == n.id
    assert headers["X-Cityvitals-Event"] == "firing"
    assert headers["Content-Type"] == "application/json"
    assert (n.alert.level, n.alert.node, n.alert.placement) == (Level.RED, "wl-0003", PLACE)
    assert [(r, o) for _, r, o, _ in rec.reports] == [("ops-webhook", "delivered")]
    assert stats == AlertStats(warnings_received=1, notifications=1, delivered=1, failed=0)


async def test_503_twice_then_200_is_delivered_once_after_three_attempts(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    """Transient 503s are retried with backoff; all attempts share one key, one is accepted."""
    receiver.statuses = [503, 503]
    rec, stats, n = await deliver(receiver.url, session)
    keys = [headers["Idempotency-Key"] for _, headers in receiver.requests]
    assert keys == [n.id, n.id, n.id]
    assert len(rec.sleeps) == 2
    assert [(o, d) for _, _, o, d in rec.reports] == [("delivered", "3 attempts, 0 ms")]
    assert stats.delivered == 1
    assert stats.failed == 0


async def test_400_fails_after_one_attempt(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    """A 400 means the request itself is wrong: one attempt, no backoff, outcome failed."""
    receiver.statuses = [400]
    rec, stats, _ = await deliver(receiver.url, session)
    assert len(receiver.requests) == 1
    assert rec.sleeps == []
    ((_, _, outcome, detail),) = rec.reports
    assert outcome == "failed"
    assert detail.startswith("HTTP 400 Bad Request: nope")
    assert stats.failed == 1


async def test_hanging_receiver_times_out_is_retried_and_fails(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    """A receiver slower than the timeout counts as retryable; after all attempts it fails."""
    receiver.hang = True
    rec, stats, n = await deliver(receiver.url, session, attempts=2, notifier_timeout=0.2)
    assert [headers["Idempotency-Key"] for _, headers in receiver.requests] == [n.id, n.id]
    assert len(rec.sleeps) == 1
    ((_, _, outcome, detail),) = rec.reports
    assert outcome == "failed"
    assert detail.startswith("no response within 0.2 s")
    assert stats.failed == 1


async def test_connection_refused_is_retried_and_fails(
    refused_url: str, session: aiohttp.ClientSession
) -> None:
    """No listener: the error is wrapped as a retryable DeliveryError, retried, then failed."""
    rec, stats, _ = await deliver(refused_url, session, attempts=3)
    assert len(rec.sleeps) == 2
    ((_, receiver, outcome, detail),) = rec.reports
    assert (receiver, outcome) == ("ops-webhook", "failed")
    assert detail.startswith("ClientConnectorError")
    assert stats == AlertStats(warnings_received=1, notifications=1, delivered=0, failed=1)
