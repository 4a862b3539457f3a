"""The alerts role killed with SIGKILL while a webhook request hangs, then started again:
real Mosquitto, real Kafka, real processes, a real HTTP receiver on loopback."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from tests.integration.distributed_support import (
    RoleProcess,
    Store,
    publish,
    storm_messages,
    subscribed,
    water_nodes,
    write_config,
)
from tests.integration.http_support import serve_app
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


@dataclass
class HoldingReceiver:
    """A webhook that acts on the first `answer` requests, then holds every request
    open until `release`. It acts on a request (keeps its body, under its idempotency
    key) only when it can still answer it: one whose sender died meanwhile was never
    confirmed, so the sender owes it again."""

    answer: int
    url: str = ""
    seen: list[str] = field(default_factory=list)
    acted: list[str] = field(default_factory=list)
    bodies: list[dict[str, object]] = field(default_factory=list)
    held: list[web.Request] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        key = request.headers["Idempotency-Key"]
        self.seen.append(key)
        if len(self.acted) >= self.answer and not self.release.is_set():
            self.held.append(request)
            await self.release.wait()
        if request.transport is None or request.transport.is_closing():
            return web.Response(status=499)  # nobody is listening for the answer
        self.acted.append(key)
        self.bodies.append(body)
        return web.Response(text="ok")

    def held_sender_gone(self) -> bool:
        return bool(self.held) and all(
            r.transport is None or r.transport.is_closing() for r in self.held
        )


@pytest.fixture
async def holding() -> AsyncIterator[HoldingReceiver]:
    receiver = HoldingReceiver(answer=3)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    async with serve_app(app) as base:
        receiver.url = f"{base}/hook"
        yield receiver
        receiver.release.set()


async def test_alerts_killed_mid_delivery_resend_what_they_owe_under_the_same_keys(
    tmp_path, mosquitto, kafka_server, holding
):
    """SIGKILL the alerts role while the receiver holds its fourth request, start it
    again: the held notification comes again under the same key, the receiver acts on
    every warning change exactly once (no key twice, none missing, no change under two
    keys), and each alert's story is in order."""
    config = write_config(
        tmp_path, mqtt=mosquitto, bootstrap=kafka_server.bootstrap, webhook=holding.url
    )
    front = RoleProcess(config, "gateway", "stream", name="front").start()
    alerts = RoleProcess(config, "alerts", name="alerts-a").start()
    first = alerts
    store = Store(tmp_path)
    try:
        await subscribed(front)
        await publish(mosquitto, storm_messages(water_nodes()[:4], 40))
        await wait_until(lambda: holding.held, "the receiver to hold a request", deadline_s=120)
        alerts.kill()
        # The held request's sender is gone before the receiver may answer it.
        await wait_until(holding.held_sender_gone, "the held connection to close")
        holding.release.set()
        alerts = RoleProcess(config, "alerts", name="alerts-b").start()
        await wait_until(
            lambda: store.warnings() and len(holding.acted) >= len(store.warnings()),
            "every warning change acted on",
            deadline_s=120,
        )
        assert alerts.stop() == 0, alerts.text()[-3000:]
        assert front.stop() == 0, front.text()[-3000:]
    except AssertionError:
        for p in (front, first, alerts):
            print(f"--- {p.log.name}\n{p.text()[-6000:]}")
        raise
    finally:
        for p in (front, alerts):
            if p.alive():
                p.kill()
    held = holding.held[0].headers["Idempotency-Key"]
    # Sent before the kill, never answered, sent again after it under its own key.
    assert holding.seen.count(held) == 2
    assert holding.acted[:3] == holding.seen[:3]
    assert held in holding.acted
    # Exactly once each: nothing confirmed came again, nothing stored went missing.
    assert Counter(holding.acted).most_common(1)[0][1] == 1
    assert len(holding.acted) == len(store.warnings())
    # One key per change: a resend never got a new one.
    changes = {
        (b["alert"]["fingerprint"], b["event"], b["alert"]["level"], b["ts_ms"]): k  # type: ignore[index]
        for b, k in zip(holding.bodies, holding.acted, strict=True)
    }
    assert len(changes) == len(holding.acted)
    stories: dict[str, list[str]] = {}
    for body in holding.bodies:
        stories.setdefault(body["alert"]["fingerprint"], []).append(body["event"])  # type: ignore[index]
    for events in stories.values():
        open_ = False
        for event in events:
            assert (event == "firing") != open_, events
            open_ = event != "resolved"
    # The restart found at least the held one owed in its outbox.
    owed = re.search(r"resuming (\d+) notifications owed from before", alerts.text())
    assert owed is not None
    assert int(owed.group(1)) >= 1
    print(f"{len(holding.acted)} changes acted on; {owed.group(1)} resumed after the kill")
