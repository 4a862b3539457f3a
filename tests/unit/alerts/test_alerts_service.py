"""AlertService: queueing, per-receiver lanes, retry with backoff, backpressure, drain, stats.

Notifiers here are small hand-written fakes with a scripted list of outcomes;
`sleep` is injected so retries record their delays instead of waiting, and
`monotonic` is injected where the per-notification time cap is under test.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import pytest

from alerts.model import Notification
from alerts.service import AlertService, AlertStats
from cityvitals.clock import ManualClock
from cityvitals.errors import DeliveryError
from cityvitals.levels import Level
from tests.factories import make_warning
from tests.waiting import wait_until

WAIT = 5.0  # generous upper bound for anything that should be immediate


warning = make_warning


class Scripted:
    """A notifier that fails with the scripted errors first, then succeeds."""

    def __init__(self, name: str = "fake", errors: tuple[Exception, ...] = ()) -> None:
        self.name = name
        self.errors = list(errors)
        self.calls: list[str] = []
        self.delivered: list[Notification] = []
        self.called = asyncio.Event()  # set on every call; see `wait_calls`

    async def send(self, n: Notification) -> None:
        self.calls.append(n.id)
        self.called.set()
        if self.errors:
            raise self.errors.pop(0)
        self.delivered.append(n)


class Gated:
    """A notifier that blocks in send until `gate` is set; `entered` says it is blocked."""

    def __init__(self, name: str = "gated") -> None:
        self.name = name
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.calls: list[str] = []
        self.delivered: list[Notification] = []
        self.passed = asyncio.Event()  # set on every delivery

    async def send(self, n: Notification) -> None:
        self.calls.append(n.id)
        self.entered.set()
        await self.gate.wait()
        self.delivered.append(n)
        self.passed.set()


class Recorder:
    """Collects what the service reports, and the delays it asked to sleep."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.notifications: list[Notification] = []
        self.deliveries: list[tuple[str, str, str, str]] = []

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)

    async def on_notification(self, n: Notification) -> None:
        self.notifications.append(n)

    async def on_delivery(self, n: Notification, receiver: str, outcome: str, detail: str) -> None:
        self.deliveries.append((n.id, receiver, outcome, detail))


class FakeMonotonic:
    """A monotonic clock that moves only when told to; callable like `time.monotonic`."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def wait_calls(notifier: Scripted, count: int) -> None:
    """Wait (bounded by the caller) until `notifier` has been called `count` times."""
    await until(notifier.called, lambda: len(notifier.calls) >= count)


async def until(changed: asyncio.Event, condition: Callable[[], bool]) -> None:
    """Wait until `condition` holds, rechecking when `changed` is set; bound it with wait_for."""
    while not condition():
        changed.clear()
        await changed.wait()


def retryable(detail: str = "HTTP 503") -> DeliveryError:
    return DeliveryError("fake", detail, retryable=True)


def service(notifiers: list, rec: Recorder, **kw: object) -> AlertService:
    return AlertService(
        notifiers,
        clock=ManualClock(1_000.0),
        sleep=rec.sleep,
        on_notification=rec.on_notification,
        on_delivery=rec.on_delivery,
        **kw,  # type: ignore[arg-type]
    )


async def test_delivers_every_notification_to_every_notifier() -> None:
    """Each notification reaches all receivers once; repeats produce no notification."""
    a, b, rec = Scripted("a"), Scripted("b"), Recorder()
    async with service([a, b], rec) as svc:
        for w in (warning(Level.RED, ts_ms=1), warning(Level.RED, ts_ms=2)):
            await svc.submit(w)
        await svc.submit(warning(Level.NONE, ts_ms=3))
        await asyncio.wait_for(svc.drain(), WAIT)
        assert [n.event for n in a.delivered] == ["firing", "resolved"]
        assert a.delivered == b.delivered == rec.notifications
        assert sorted((r, o) for _, r, o, _ in rec.deliveries) == [
            ("a", "delivered"), ("a", "delivered"), ("b", "delivered"), ("b", "delivered"),
        ]  # fmt: skip
        assert svc.stats() == AlertStats(
            warnings_received=3, notifications=2, delivered=4, failed=0
        )
        assert len(svc.book) == 0
    assert rec.delays == []


async def test_retryable_errors_back_off_exponentially_with_full_jitter() -> None:
    """Retries wait uniform(0, min(max_delay, base*2**(n-1))), reproducibly with a seeded rng."""
    fake, rec = Scripted(errors=tuple(retryable() for _ in range(4))), Recorder()
    async with service(
        [fake], rec, attempts=5, base_delay=0.2, max_delay=1.0, rng=random.Random(42)
    ) as svc:
        await svc.submit(warning(Level.RED))
        await asyncio.wait_for(svc.drain(), WAIT)
    ceilings = [0.2, 0.4, 0.8, 1.0]
    assert len(rec.delays) == 4
    assert all(0.0 <= d <= c for d, c in zip(rec.delays, ceilings, strict=True))
    expected_rng = random.Random(42)
    assert rec.delays == [expected_rng.uniform(0.0, c) for c in ceilings]
    assert len(fake.calls) == 5
    assert len(set(fake.calls)) == 1  # every retry carries the same idempotency key
    assert [o for _, _, o, _ in rec.deliveries] == ["delivered"]
    assert "5 attempts" in rec.deliveries[0][3]
    assert svc.stats().delivered == 1


async def test_gives_up_after_the_configured_attempts(caplog: pytest.LogCaptureFixture) -> None:
    """A receiver that keeps failing is tried `attempts` times, then reported failed once."""
    fake, rec = Scripted(errors=tuple(retryable("HTTP 503") for _ in range(10))), Recorder()
    with caplog.at_level(logging.WARNING, logger="alerts.service"):
        async with service([fake], rec, attempts=3, rng=random.Random(1)) as svc:
            await svc.submit(warning(Level.RED))
            await asyncio.wait_for(svc.drain(), WAIT)
    assert len(fake.calls) == 3
    assert len(rec.delays) == 2
    ((_, receiver, outcome, detail),) = rec.deliveries
    assert (receiver, outcome) == ("fake", "failed")
    assert detail.startswith("HTTP 503 (3 attempts")
    assert svc.stats() == AlertStats(warnings_received=1, notifications=1, delivered=0, failed=1)
    # One line when the receiver starts failing, none per attempt or per failure.
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert line.startswith("receiver fake failing: HTTP 503; retrying (attempt 1 of 3)")


async def test_non_retryable_error_fails_at_once() -> None:
    """A non-retryable DeliveryError (a 400) is not retried and does not sleep."""
    bad = DeliveryError("fake", "HTTP 400 Bad Request", retryable=False)
    fake, rec = Scripted(errors=(bad,)), Recorder()
    async with service([fake], rec) as svc:
        await svc.submit(warning(Level.RED))
        await asyncio.wait_for(svc.drain(), WAIT)
    assert len(fake.calls) == 1
    assert rec.delays == []
    assert [o for _, _, o, _ in rec.deliveries] == ["failed"]


async def test_one_failing_receiver_does_not_affect_the_others() -> None:
    """Fan-out is independent: a failing webhook does not stop the console line."""
    bad = DeliveryError("broken", "HTTP 400", retryable=False)
    ok, broken, rec = Scripted("ok"), Scripted("broken", errors=(bad,)), Recorder()
    async with service([ok, broken], rec) as svc:
        await svc.submit(warning(Level.RED))
        await asyncio.wait_for(svc.drain(), WAIT)
    assert len(ok.delivered) == 1
    assert sorted((r, o) for _, r, o, _ in rec.deliveries) == [
        ("broken", "failed"),
        ("ok", "delivered"),
    ]


async def test_worker_survives_notifiers_and_hooks_that_break_their_contract(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unexpected exception from a notifier or a hook is logged, counted, and survived."""
    fake, rec = Scripted(errors=(RuntimeError("bug"),)), Recorder()

    async def broken_hook(_n: Notification) -> None:
        raise RuntimeError("disk full")

    with caplog.at_level(logging.ERROR, logger="alerts.service"):
        async with AlertService(
            [fake], clock=ManualClock(), sleep=rec.sleep, on_notification=broken_hook
        ) as svc:
            await svc.submit(warning(Level.RED, fp="a"))
            await svc.submit(warning(Level.RED, fp="b"))
            await asyncio.wait_for(svc.drain(), WAIT)
    assert len(fake.calls) == 1 + 1  # the bug was not retried; the next alert went through
    assert [n.alert.fingerprint for n in fake.delivered] == ["b"]
    assert svc.stats() == AlertStats(warnings_received=2, notifications=2, delivered=1, failed=1)
    assert any("raised unexpectedly" in r.getMessage() for r in caplog.records)


async def test_a_receiver_a_full_lane_behind_holds_up_nobody(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stuck receiver's lane fills: what does not fit waits in the alert store, the other
    receiver gets everything at once, and once the stuck one answers it gets every
    notification, in order, exactly once; the log says when it fell behind and caught up."""
    gated, fast, rec = Gated(), Scripted("fast"), Recorder()
    with caplog.at_level(logging.INFO, logger="alerts.service"):
        async with service([gated, fast], rec, queue_size=2) as svc:
            for fp in "abcdefg":
                await asyncio.wait_for(svc.submit(warning(Level.RED, fp=fp)), WAIT)
            await wait_until(lambda: svc.stats().delivered == 7, "fast to get all seven")
            # "a" in hand, "b" and "c" queued, the other four in the store.
            assert svc.stats().undelivered == 7
            assert gated.calls == [gated.calls[0]]
            gated.gate.set()
            await asyncio.wait_for(svc.drain(), WAIT)
    assert [n.alert.fingerprint for n in gated.delivered] == list("abcdefg")
    assert [n.alert.fingerprint for n in fast.delivered] == list("abcdefg")
    assert svc.stats().delivered == 14
    said = [r.getMessage() for r in caplog.records]
    assert (
        "receiver gated is 2 notifications behind; what comes next waits in the alert store "
        "until it catches up" in said
    )
    assert "receiver gated has caught up with what waited in the alert store" in said


async def test_with_the_store_failing_a_full_lane_makes_submit_wait(tmp_path) -> None:
    """Not in the store, a notification cannot wait there: then a full lane holds the book
    worker and a full warning queue makes submit wait (backpressure), and nothing is lost."""
    import sqlite3

    from alerts.store import AlertStore

    path = tmp_path / "alerts.sqlite3"
    gated, rec = Gated(), Recorder()
    async with AlertStore(path) as store, service([gated], rec, queue_size=1, store=store) as svc:
        with sqlite3.connect(path) as other:
            other.execute("DROP TABLE outbox")
        await svc.submit(warning(Level.RED, fp="a"))
        await asyncio.wait_for(gated.entered.wait(), WAIT)  # the lane worker holds "a"
        # "b" fills the lane, the book worker waits to put "c" there, "d" fills the queue.
        for fp in "bcd":
            await asyncio.wait_for(svc.submit(warning(Level.RED, fp=fp)), WAIT)
        fifth = asyncio.create_task(svc.submit(warning(Level.RED, fp="e")))
        # A negative check needs some bound; the workers are provably stuck behind the gate.
        done, _ = await asyncio.wait({fifth}, timeout=0.05)
        assert not done
        assert svc.stats().warnings_received == 4
        gated.gate.set()
        await asyncio.wait_for(fifth, WAIT)
        await asyncio.wait_for(svc.drain(), WAIT)
    assert [n.alert.fingerprint for n in gated.delivered] == ["a", "b", "c", "d", "e"]
    assert svc.stats().warnings_received == 5


async def test_drain_waits_for_delivery_not_just_dequeue() -> None:
    """drain() returns only after the in-flight notification is delivered on every lane."""
    fast, gated, rec = Scripted("fast"), Gated(), Recorder()
    async with service([fast, gated], rec) as svc:
        await svc.submit(warning(Level.RED))
        await asyncio.wait_for(gated.entered.wait(), WAIT)
        await asyncio.wait_for(wait_calls(fast, 1), WAIT)  # one lane done, one busy
        drained = asyncio.create_task(svc.drain())
        done, _ = await asyncio.wait({drained}, timeout=0.05)
        assert not done
        gated.gate.set()
        await asyncio.wait_for(drained, WAIT)
        assert len(gated.delivered) == 1
        assert svc.stats().delivered == 2


async def test_leaving_the_context_flushes_what_was_submitted() -> None:
    """__aexit__ drains the queue before stopping, so nothing submitted is lost on shutdown."""
    fake, rec = Scripted(), Recorder()
    async with service([fake], rec) as svc:
        for i in range(20):
            await svc.submit(warning(Level.RED, fp=f"fp-{i}"))
    assert len(fake.delivered) == 20


async def test_leaving_gives_up_after_drain_timeout(caplog: pytest.LogCaptureFixture) -> None:
    """A receiver that never answers cannot hold shutdown hostage past drain_timeout."""
    gated, rec = Gated(), Recorder()
    with caplog.at_level(logging.WARNING, logger="alerts.service"):
        async with service([gated], rec, drain_timeout=0.05) as svc:
            await svc.submit(warning(Level.RED))
            await asyncio.wait_for(gated.entered.wait(), WAIT)
    assert gated.delivered == []
    assert any("unprocessed" in r.getMessage() for r in caplog.records)
    assert svc.stats().undelivered == 1


async def test_drain_without_a_running_worker_refuses_instead_of_hanging() -> None:
    """drain() outside `async with` with work queued raises rather than waiting forever."""
    svc = service([Scripted()], Recorder())
    await svc.drain()  # nothing queued: nothing to wait for
    await svc.submit(warning(Level.RED))
    with pytest.raises(RuntimeError, match="running"):
        await svc.drain()


async def test_cannot_be_entered_twice() -> None:
    """A second __aenter__ on a running service is a programming error."""
    svc = service([Scripted()], Recorder())
    async with svc:
        with pytest.raises(RuntimeError, match="already running"):
            await svc.__aenter__()


@pytest.mark.parametrize(
    "kw",
    [
        {"attempts": 0},
        {"queue_size": 0},
        {"base_delay": -1.0},
        {"base_delay": 2.0, "max_delay": 1.0},
        {"give_up_after": 0.0},
        {"give_up_after": -1.0},
    ],
)
def test_rejects_nonsense_settings(kw: dict[str, float]) -> None:
    """Settings that could only misbehave are refused at construction."""
    with pytest.raises(ValueError):
        service([Scripted()], Recorder(), **kw)


def test_rejects_duplicate_receiver_names() -> None:
    """Delivery reports are keyed by receiver name, so names must be unique."""
    with pytest.raises(ValueError, match="unique"):
        service([Scripted("x"), Scripted("x")], Recorder())


async def test_hung_receiver_does_not_delay_the_others(caplog: pytest.LogCaptureFixture) -> None:
    """A receiver that never answers holds up only its own lane; shutdown reports what is left."""
    console, hung, rec = Scripted("console"), Gated("hung"), Recorder()
    count = 10
    with caplog.at_level(logging.WARNING, logger="alerts.service"):
        async with service([hung, console], rec, drain_timeout=0.0) as svc:
            for i in range(count):
                await svc.submit(warning(Level.RED, fp=f"fp-{i}"))
            await asyncio.wait_for(wait_calls(console, count), WAIT)
            assert console.delivered == rec.notifications
            assert [n.alert.fingerprint for n in console.delivered] == [
                f"fp-{i}" for i in range(count)
            ]
            assert len(hung.calls) == 1  # the first, still waiting for an answer
            # Settled once the store has it marked delivered.
            await wait_until(lambda: svc.stats().delivered == count, "console settled")
            s = svc.stats()
            assert (s.delivered, s.failed, s.undelivered) == (count, 0, count)
            # hung.gate is never set: leaving gives up at once (drain_timeout=0).
    assert svc.stats().undelivered == count
    (line,) = [r.getMessage() for r in caplog.records if "undelivered" in r.getMessage()]
    assert "{'hung': 10, 'console': 0}" in line


async def test_per_receiver_order_survives_retries() -> None:
    """Retries of one notification finish before the next starts: a receiver sees each
    alert's changes in the order they happened, even while its retries yield the loop."""

    class FailsFirstTry(Scripted):
        def __init__(self) -> None:
            super().__init__("flaky")
            self.tried: set[str] = set()

        async def send(self, n: Notification) -> None:
            if n.id not in self.tried:
                self.tried.add(n.id)
                self.errors.append(retryable())
            await super().send(n)

    async def yielding_sleep(_delay: float) -> None:
        for _ in range(5):
            await asyncio.sleep(0)  # give any other delivery every chance to overtake

    flaky, ok, rec = FailsFirstTry(), Scripted("ok"), Recorder()
    steps = [(Level.ORANGE, "x"), (Level.ORANGE, "y"), (Level.RED, "x"), (Level.NONE, "x")]
    steps += [(Level.RED, "y"), (Level.NONE, "y")]
    async with AlertService(
        [flaky, ok], clock=ManualClock(), sleep=yielding_sleep, on_notification=rec.on_notification
    ) as svc:
        for ts, (level, fp) in enumerate(steps, start=1):
            await svc.submit(warning(level, fp=fp, ts_ms=ts))
        await asyncio.wait_for(svc.drain(), WAIT)
    assert len(rec.notifications) == len(steps)
    assert flaky.delivered == ok.delivered == rec.notifications
    assert len(flaky.calls) == 2 * len(steps)
    assert [(n.alert.fingerprint, n.event) for n in flaky.delivered] == [
        ("x", "firing"), ("y", "firing"), ("x", "level_changed"), ("x", "resolved"),
        ("y", "level_changed"), ("y", "resolved"),
    ]  # fmt: skip


async def test_a_receiver_down_for_most_of_an_hour_still_gets_it_once() -> None:
    """With `retry_for` an hour, a webhook refusing for 50 minutes (10 s timeouts) is
    retried, never more than a minute apart and without an attempt cap, and gets the
    notification once it is back; another receiver down as long, on the service's 25 s
    and 5 attempts, was given up on."""
    mono = FakeMonotonic()
    delays: list[float] = []

    class DownUntil(Scripted):
        async def send(self, n: Notification) -> None:
            mono.now += 10.0
            if mono.now < 3000:
                self.calls.append(n.id)
                raise DeliveryError(self.name, "no response within 10 s", retryable=True)
            await super().send(n)

    async def sleep(delay: float) -> None:
        delays.append(delay)
        mono.now += delay

    hook, rec = DownUntil("hook"), Recorder()
    short = Scripted("short", errors=tuple(retryable() for _ in range(100)))
    async with AlertService(
        [hook, short],
        clock=ManualClock(),
        give_up_after=25.0,
        retry_for={"hook": 3600.0},
        monotonic=mono,
        sleep=sleep,
        on_delivery=rec.on_delivery,
        rng=random.Random(7),
    ) as svc:
        await svc.submit(warning(Level.RED))
        await asyncio.wait_for(svc.drain(), WAIT)
    outcomes = {(receiver, outcome) for _, receiver, outcome, _ in rec.deliveries}
    assert outcomes == {("hook", "delivered"), ("short", "failed")}
    assert len(hook.delivered) == 1
    assert len(hook.calls) > 5  # past the service's 5 attempts
    assert max(delays) <= 60.0


async def test_a_receiver_down_past_its_horizon_fails_over_one_attempt_each() -> None:
    """The horizon counts from when the receiver started failing: the first notification
    is retried for its 100 s; the next ones get one attempt each and go to the fallback,
    instead of 100 s each while everything else waits."""
    mono = FakeMonotonic()

    async def sleep(delay: float) -> None:
        mono.now += delay

    class Down(Scripted):
        async def send(self, n: Notification) -> None:
            mono.now += 10.0  # each attempt a 10 s timeout
            await super().send(n)

    hook = Down("hook", errors=tuple(retryable() for _ in range(100)))
    sms, rec = Scripted("sms"), Recorder()
    async with AlertService(
        [hook, sms], clock=ManualClock(), retry_for={"hook": 100.0}, fallback="sms",
        monotonic=mono, sleep=sleep, rng=random.Random(3), on_delivery=rec.on_delivery,
    ) as svc:  # fmt: skip
        for fp in "abc":
            await svc.submit(warning(Level.RED, fp=fp))
        await asyncio.wait_for(svc.drain(), WAIT)
    first = hook.calls.count(hook.calls[0])
    assert first > 3
    assert len(hook.calls) == first + 2  # b and c: one attempt each
    assert [n.alert.fingerprint for n in sms.delivered] == ["a", "b", "c"]


async def test_gives_up_after_the_time_cap_between_attempts() -> None:
    """No retry starts once `give_up_after` would be exceeded, however many attempts are left."""
    mono = FakeMonotonic()
    delays: list[float] = []

    class SlowlyFailing(Scripted):
        async def send(self, n: Notification) -> None:
            mono.now += 10.0  # like a webhook timing out after 10 s
            await super().send(n)

    async def sleep(delay: float) -> None:
        delays.append(delay)
        mono.now += delay

    fake, rec = SlowlyFailing(errors=tuple(retryable() for _ in range(10))), Recorder()
    async with AlertService(
        [fake],
        clock=ManualClock(),
        attempts=10,
        base_delay=0.0,
        max_delay=0.0,
        give_up_after=25.0,
        monotonic=mono,
        sleep=sleep,
        on_delivery=rec.on_delivery,
    ) as svc:
        await svc.submit(warning(Level.RED))
        await asyncio.wait_for(svc.drain(), WAIT)
    assert len(fake.calls) == 3  # at 0, 10 and 20 s; a fourth would start at 30 s
    assert delays == [0.0, 0.0]
    ((_, receiver, outcome, detail),) = rec.deliveries
    assert (receiver, outcome) == ("fake", "failed")
    assert detail == "HTTP 503; gave up after 30.0 s (limit 25 s) (3 attempts, 30000 ms)"
    assert svc.stats() == AlertStats(
        warnings_received=1, notifications=1, delivered=0, failed=1, undelivered=0
    )


async def test_an_attempt_unanswered_at_the_time_cap_is_abandoned() -> None:
    """A notifier that never returns is cut off at the cap and its lane moves on."""
    readings = [0.0, 25.0]  # the cap is used up the moment the first attempt starts

    def mono() -> float:
        return readings.pop(0) if len(readings) > 1 else readings[0]

    hangs_once, rec = Gated("hangs"), Recorder()

    async def send(n: Notification) -> None:
        if not hangs_once.calls:
            hangs_once.calls.append(n.id)
            await hangs_once.gate.wait()  # never set
        hangs_once.calls.append(n.id)
        hangs_once.delivered.append(n)

    hangs_once.send = send  # type: ignore[method-assign]
    async with service([hangs_once], rec, give_up_after=25.0, monotonic=mono) as svc:
        await svc.submit(warning(Level.RED, fp="a"))
        await svc.submit(warning(Level.RED, fp="b"))
        await asyncio.wait_for(svc.drain(), WAIT)
    assert [n.alert.fingerprint for n in hangs_once.delivered] == ["b"]
    assert [(o, d) for _, _, o, d in rec.deliveries] == [
        ("failed", "no answer within the 25 s limit (1 attempt, 25000 ms)"),
        ("delivered", "1 attempt, 0 ms"),
    ]
    assert rec.delays == []


async def test_logs_state_changes_not_every_failure(caplog: pytest.LogCaptureFixture) -> None:
    """Five failed notifications give one WARNING; the next success gives one INFO."""
    flaky = Scripted("webhook", errors=tuple(retryable() for _ in range(5 * 2)))
    console, rec = Scripted("console"), Recorder()
    with caplog.at_level(logging.DEBUG, logger="alerts.service"):
        async with service([console, flaky], rec, attempts=2) as svc:
            for i in range(6):
                await svc.submit(warning(Level.RED, fp=f"fp-{i}"))
            await asyncio.wait_for(svc.drain(), WAIT)
            flaky.errors = [DeliveryError("webhook", "HTTP 400", retryable=False)]
            await svc.submit(warning(Level.RED, fp="fp-6"))  # failing again: a new line
            await asyncio.wait_for(svc.drain(), WAIT)

    def lines(level: int, word: str) -> list[str]:
        return [
            r.getMessage() for r in caplog.records if r.levelno == level and word in r.getMessage()
        ]

    assert lines(logging.WARNING, "failing") == [
        "receiver webhook failing: HTTP 503; retrying (attempt 1 of 2); "
        "further failures are not logged until it recovers",
        "receiver webhook failing: HTTP 400; dropping notification "
        f"{rec.notifications[6].id}; further failures are not logged until it recovers",
    ]
    assert lines(logging.INFO, "recovered") == [
        "receiver webhook recovered after 5 failed deliveries (10 failed attempts)"
    ]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert svc.stats() == AlertStats(
        warnings_received=7, notifications=7, delivered=7 + 1, failed=5 + 1, undelivered=0
    )


async def test_undelivered_counts_what_each_lane_still_holds() -> None:
    """stats().undelivered counts queued and in-flight (notification, receiver) pairs."""
    a, b, rec = Gated("a"), Gated("b"), Recorder()
    async with service([a, b], rec) as svc:
        for i in range(3):
            await svc.submit(warning(Level.RED, fp=f"fp-{i}"))
        await asyncio.wait_for(svc.recorded(), WAIT)
        await asyncio.wait_for(a.entered.wait(), WAIT)
        await asyncio.wait_for(b.entered.wait(), WAIT)
        assert svc.stats().undelivered == 2 * 3
        a.gate.set()
        await asyncio.wait_for(until(a.passed, lambda: len(a.delivered) == 3), WAIT)
        await wait_until(lambda: svc.stats().delivered == 3, "a's deliveries settled")
        assert svc.stats().undelivered == 3  # all of b's, one of them in flight
        b.gate.set()
        await asyncio.wait_for(svc.drain(), WAIT)
        assert svc.stats().undelivered == 0
        assert svc.stats().delivered == 2 * 3


async def test_a_rate_limited_receiver_is_paced() -> None:
    """A receiver taking 20 messages a minute gets its attempts 3 s apart (the service
    sleeps the difference on its injected clock); another receiver is not held back."""

    class Bot(Scripted):
        rate_per_minute = 20.0

    mono = FakeMonotonic()
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)
        mono.now += delay

    bot, other = Bot("ding"), Scripted("console")
    async with AlertService(
        [bot, other], clock=ManualClock(1_000.0), sleep=sleep, monotonic=mono
    ) as svc:
        for i in range(4):
            await svc.submit(warning(Level.RED, fp=f"fp-{i}"))
        await asyncio.wait_for(svc.drain(), WAIT)
    assert len(bot.delivered) == len(other.delivered) == 4
    assert slept == [3.0, 3.0, 3.0]


async def test_a_receiver_takes_several_alerts_at_once_but_each_alerts_in_order() -> None:
    """With concurrency 3, three different alerts are in flight together (not more); the
    second change of one alert waits for its first, whatever the other workers do."""

    class Slow:
        name = "ops"
        concurrency = 3

        def __init__(self) -> None:
            self.now = 0
            self.most = 0
            self.log: list[tuple[str, str]] = []
            self.release = asyncio.Event()

        async def send(self, n: Notification) -> None:
            self.now += 1
            self.most = max(self.most, self.now)
            self.log.append((n.alert.fingerprint, n.event))
            await self.release.wait()
            self.now -= 1

    slow = Slow()
    async with AlertService([slow], clock=ManualClock(0.0)) as svc:
        await svc.submit(warning(Level.ORANGE, fp="a", ts_ms=1, seq=1))
        await svc.submit(warning(Level.RED, fp="a", ts_ms=2, seq=2))
        for fp in ("b", "c", "d"):
            await svc.submit(warning(Level.ORANGE, fp=fp, ts_ms=1, seq=1))
        await asyncio.wait_for(svc.recorded(), WAIT)
        await wait_until(lambda: slow.now == 3, "three in flight")
        assert ("a", "level_changed") not in slow.log  # a's first is still in flight
        slow.release.set()
        await asyncio.wait_for(svc.drain(), WAIT)
    assert slow.most == 3
    a = [event for fp, event in slow.log if fp == "a"]
    assert a == ["firing", "level_changed"]
    assert sorted(fp for fp, _ in slow.log) == ["a", "a", "b", "c", "d"]
