"""Webhook delivery against a real aiohttp server on 127.0.0.1, started by each test.

The receiver is scripted per test (answer with these statuses, or hang). The
service's `sleep` is injected so backoff is recorded rather than waited; the
only real waiting is the notifier's own short timeout in the hang test. Every
wait is bounded by `asyncio.wait_for`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import random
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

import aiohttp
import pytest
from aiohttp import web

from alerts.chat import ChatNotifier
from alerts.model import Notification, decode_notification
from alerts.notify import WebhookNotifier
from alerts.service import AlertService, AlertStats
from alerts.signing import SignatureError, verify
from alerts.store import AlertStore
from cityvitals.clock import ManualClock
from cityvitals.levels import Level
from tests.factories import PLACE, make_warning
from tests.integration.http_support import serve_app
from tests.waiting import wait_until

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


@contextlib.asynccontextmanager
async def serving(handler: Callable[[web.Request], Awaitable[web.Response]]) -> AsyncIterator[str]:
    """A real HTTP server on 127.0.0.1 with `handler` at /hook; yields its URL."""
    app = web.Application()
    app.router.add_post("/hook", handler)
    async with serve_app(app) as base:
        yield f"{base}/hook"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver()
    async with serving(recv.handle) as recv.url:
        try:
            yield recv
        finally:
            recv.release.set()  # let hung handlers finish so the server shuts down cleanly


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
    ((_, _, outcome, detail),) = rec.reports
    assert outcome == "delivered"
    assert re.fullmatch(r"3 attempts, \d+ ms", detail), detail  # measured on the monotonic clock
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


# -- signatures, and a restart mid-delivery ------------------------------------------------


@dataclass
class SigningReceiver:
    """A receiver as a real integration would be written: it checks each request's
    signature (alerts.signing.verify, 401 when wrong), remembers the idempotency keys it
    has acted on and drops repeats, and can be told to fail or hang for a while."""

    secret: bytes
    url: str = ""
    fail_next: int = 0
    hang: bool = False
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    acted: list[str] = field(default_factory=list)  # keys, first time each
    repeats: int = 0
    refused: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify(
                self.secret,
                body,
                request.headers.get("X-Cityvitals-Timestamp"),
                request.headers.get("X-Cityvitals-Signature"),
                now_s=time.time(),
            )
        except SignatureError as exc:
            self.refused.append(str(exc))
            return web.Response(status=401, text=str(exc))
        key = request.headers["Idempotency-Key"]
        assert decode_notification(body).id == key
        if self.hang:
            self.entered.set()
            await asyncio.Event().wait()  # until the server shuts down
        if self.fail_next:
            self.fail_next -= 1
            return web.Response(status=503, text="maintenance")
        if key in self.acted:
            self.repeats += 1
        else:
            self.acted.append(key)
        return web.Response(status=200)


@pytest.fixture
async def signing_receiver() -> AsyncIterator[SigningReceiver]:
    recv = SigningReceiver(secret=b"k3y-one")
    async with serving(recv.handle) as recv.url:
        yield recv


def _alerts(
    url: str, session: aiohttp.ClientSession, store: AlertStore, secrets: tuple[bytes, ...], **kw
) -> AlertService:
    webhook = WebhookNotifier(url, session, timeout=1.0, name="ops", secrets=secrets)
    return AlertService(
        [webhook],
        clock=ManualClock(1_764_028_800.0),
        rng=random.Random(3),
        base_delay=0.01,
        max_delay=0.05,
        store=store,
        **kw,
    )


async def test_signed_notifications_verify_and_a_wrong_secret_is_refused(
    signing_receiver: SigningReceiver, session: aiohttp.ClientSession, tmp_path
) -> None:
    """Signed with the receiver's secret (alongside an older one, as during a rotation), the
    receiver verifies and takes it; signed only with another secret, it answers 401, which
    is not retried and leaves a dead letter with the receiver's reason."""
    async with AlertStore(tmp_path / "a.sqlite3") as store:
        async with _alerts(signing_receiver.url, session, store, (b"old-key", b"k3y-one")) as svc:
            await svc.submit(warning(Level.RED))
            await asyncio.wait_for(svc.drain(), WAIT)
        assert len(signing_receiver.acted) == 1
    async with AlertStore(tmp_path / "b.sqlite3") as store:
        async with _alerts(signing_receiver.url, session, store, (b"wrong",)) as svc:
            await svc.submit(warning(Level.RED))
            await asyncio.wait_for(svc.drain(), WAIT)
        (dead,) = await store.rows("dead")
    assert signing_receiver.refused == ["the signature does not match the body"]
    assert "HTTP 401" in dead.detail
    assert "does not match" in dead.detail


async def test_a_restart_mid_delivery_sends_each_change_once_by_its_key(
    signing_receiver: SigningReceiver, session: aiohttp.ClientSession, tmp_path
) -> None:
    """Firing, orange → red, resolved for two alerts; the receiver fails twice (retried),
    then hangs, and the alert service is stopped while a request hangs. Started again on
    the same store, with the receiver back, it resumes: the receiver has acted on every
    (alert, state change) exactly once by its idempotency key, repeats (the request that
    hung) dropped by key, and no key it did not expect."""
    path = tmp_path / "alerts.sqlite3"
    changes = [
        warning(Level.ORANGE, fp="fp-a", ts_ms=1_000, seq=1),
        warning(Level.ORANGE, fp="fp-b", ts_ms=1_000, seq=1),
        warning(Level.RED, fp="fp-a", ts_ms=2_000, seq=2),
        warning(Level.NONE, fp="fp-a", ts_ms=3_000, seq=3),
        warning(Level.NONE, fp="fp-b", ts_ms=3_000, seq=3),
    ]
    expected: list[str] = []

    async def produced(n: Notification) -> None:
        expected.append(n.id)

    signing_receiver.fail_next = 2
    async with AlertStore(path) as store:
        async with _alerts(
            signing_receiver.url,
            session,
            store,
            (b"k3y-one",),
            drain_timeout=0.2,
            on_notification=produced,
        ) as svc:
            for w in changes[:3]:
                await svc.submit(w)
            await asyncio.wait_for(svc.recorded(), WAIT)
            await wait_until(lambda: len(signing_receiver.acted) >= 1, "a first delivery")
            signing_receiver.hang = True
            for w in changes[3:]:
                await svc.submit(w)
            await asyncio.wait_for(svc.recorded(), WAIT)
            await asyncio.wait_for(signing_receiver.entered.wait(), WAIT)
        owed = (await store.counts())["pending"]
    assert owed >= 1
    assert len(expected) == 5
    signing_receiver.hang = False
    async with AlertStore(path) as store:
        async with _alerts(signing_receiver.url, session, store, (b"k3y-one",)) as svc:
            for w in changes:  # the consumer reads them again after the restart
                await svc.submit(w)
            await asyncio.wait_for(svc.drain(), WAIT)
            assert svc.stats().resumed == owed
            assert svc.stats().notifications == 0  # nothing new: the book remembered
        assert (await store.counts())["pending"] == 0
    assert sorted(signing_receiver.acted) == sorted(expected)
    # In order per alert: a's firing, level change and resolve as recorded.
    a_keys = [k for k in signing_receiver.acted if k in expected[:1] + expected[2:4]]
    assert a_keys == [expected[0], expected[2], expected[3]]
    assert signing_receiver.refused == []


# -- chat bots -----------------------------------------------------------------------------


@dataclass
class DingTalkBot:
    """A local stand-in for a DingTalk custom robot: it checks the query's timestamp and
    sign as DingTalk documents them, then answers HTTP 200 with an errcode, scripted."""

    secret: str
    answers: list[dict[str, object]] = field(default_factory=list)
    got: list[dict[str, object]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        ts = request.query.get("timestamp", "")
        expected = hmac.new(self.secret.encode(), f"{ts}\n{self.secret}".encode(), hashlib.sha256)
        if request.query.get("sign") != base64.b64encode(expected.digest()).decode():
            return web.json_response({"errcode": 310000, "errmsg": "sign not match"})
        self.got.append(await request.json())
        answer = self.answers.pop(0) if self.answers else {"errcode": 0, "errmsg": "ok"}
        return web.json_response(answer)


async def test_a_dingtalk_bot_takes_signed_markdown_and_too_fast_is_retried(
    session: aiohttp.ClientSession, tmp_path
) -> None:
    """Signed with the bot's secret, the first answer "send too fast" (130101) is retried
    and the message lands; a bot with another secret answers 310000, a refusal kept as a
    dead letter with DingTalk's words."""
    bot = DingTalkBot(secret="SEC-right", answers=[{"errcode": 130101, "errmsg": "send too fast"}])
    async with serving(bot.handle) as url:
        for secret in ("SEC-right", "SEC-wrong"):
            ding = ChatNotifier(
                f"{url}?access_token=t0ken", session, style="dingtalk", name="ding", secret=secret
            )
            async with (
                AlertStore(tmp_path / f"{secret}.sqlite3") as store,
                AlertService(
                    [ding],
                    clock=ManualClock(1_764_028_800.0),
                    base_delay=0.01,
                    max_delay=0.02,
                    store=store,
                ) as svc,
            ):
                await svc.submit(warning(Level.ORANGE))
                await asyncio.wait_for(svc.drain(), WAIT)
                counts, dead = await store.counts(), await store.rows("dead")
            if secret == "SEC-right":
                assert (counts["delivered"], counts["dead"]) == (1, 0)
            else:
                assert "errcode 310000 sign not match" in dead[0].detail
    first, retried = bot.got  # "too fast", then taken: the same message twice
    assert first == retried
    message = retried
    assert message["msgtype"] == "markdown"
    assert "橙色预警 (II级) Orange warning (II)" in message["markdown"]["title"]  # type: ignore[index]
