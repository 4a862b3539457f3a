"""The alert store: the book and the outbox survive a restart, and nothing owed is lost or
sent again under a new idempotency key; dead letters are kept, fall back, and can be retried."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from alerts.model import Notification
from alerts.service import AlertService
from alerts.store import AlertStore, AlertStoreError
from cityvitals.clock import ManualClock
from cityvitals.errors import DeliveryError
from cityvitals.levels import Level
from tests.factories import make_warning
from tests.waiting import wait_until

WAIT = 5.0


class Receiver:
    """Records what it was sent; fails with `errors` first (then succeeds)."""

    def __init__(self, name: str, errors: tuple[DeliveryError, ...] = ()) -> None:
        self.name = name
        self.errors = list(errors)
        self.got: list[Notification] = []

    async def send(self, n: Notification) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.got.append(n)


class Hanging:
    """A receiver that takes the request and never answers (until the service stops)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0
        self.entered = asyncio.Event()

    async def send(self, n: Notification) -> None:
        self.calls += 1
        self.entered.set()
        await asyncio.Event().wait()


async def _no_sleep(_: float) -> None:
    return None


def service(receivers: list, store: AlertStore, **kw: object) -> AlertService:
    return AlertService(
        receivers,
        clock=ManualClock(1_764_028_800.0),
        sleep=_no_sleep,
        store=store,
        **kw,  # type: ignore[arg-type]
    )


async def test_the_book_survives_a_restart(tmp_path: Path) -> None:
    """After a restart, a warning read again changes nothing, and the next level change
    updates the alert opened before it ("level_changed", not a second "firing")."""
    path = tmp_path / "alerts.sqlite3"
    first = make_warning(Level.ORANGE, ts_ms=1_000, seq=1)
    async with AlertStore(path) as store:
        a = Receiver("a")
        async with service([a], store) as svc:
            await svc.submit(first)
            await asyncio.wait_for(svc.drain(), WAIT)
    assert [n.event for n in a.got] == ["firing"]
    async with AlertStore(path) as store:
        b = Receiver("a")
        async with service([b], store) as svc:
            assert svc.book.get(first.fingerprint) == a.got[0].alert
            await svc.submit(first)  # re-read from Kafka after the restart
            await svc.submit(make_warning(Level.RED, ts_ms=2_000, seq=2))
            await svc.submit(make_warning(Level.NONE, ts_ms=3_000, seq=3))
            await asyncio.wait_for(svc.drain(), WAIT)
        assert [(n.event, n.previous, n.alert.peak_level) for n in b.got] == [
            ("level_changed", Level.ORANGE, Level.RED),
            ("resolved", Level.RED, Level.RED),
        ]
        assert await store.counts() == {"pending": 0, "delivered": 3, "dead": 0, "open_alerts": 0}
    async with AlertStore(path) as store:
        c = Receiver("a")
        async with service([c], store) as svc:
            await svc.submit(make_warning(Level.RED, ts_ms=2_000, seq=2))  # older than the clear
            await asyncio.wait_for(svc.drain(), WAIT)
    assert c.got == []


async def test_what_is_owed_at_a_stop_is_delivered_after_it_under_the_same_key(
    tmp_path: Path,
) -> None:
    """A receiver down when the service stops: its notifications stay owed in the store,
    and the next start delivers them, in order, with the ids they were recorded under;
    the receiver that had them already is not sent them again."""
    path = tmp_path / "alerts.sqlite3"
    down, up = Hanging("pager"), Receiver("console")
    async with AlertStore(path) as store:
        async with service([down, up], store, drain_timeout=0.05) as svc:
            await svc.submit(make_warning(Level.ORANGE, ts_ms=1_000, seq=1))
            await svc.submit(make_warning(Level.RED, ts_ms=2_000, seq=2))
            await asyncio.wait_for(svc.recorded(), WAIT)
            await asyncio.wait_for(down.entered.wait(), WAIT)
            # The console's two settled (each its own fsync'd commit) before the stop,
            # whose short drain would otherwise cut them off on a slow disk.
            await wait_until(lambda: svc.stats().delivered == 2, "the console's two")
        assert down.calls == 1  # the first was in flight when it stopped
        assert svc.stats().undelivered == 2
        assert (await store.counts())["pending"] == 2
    recorded = [n.id for n in up.got]
    assert len(recorded) == 2
    async with AlertStore(path) as store:
        pager, console = Receiver("pager"), Receiver("console")
        async with service([pager, console], store) as svc:
            await asyncio.wait_for(svc.drain(), WAIT)
            assert svc.stats().resumed == 2
        assert [n.id for n in pager.got] == recorded
        assert [n.event for n in pager.got] == ["firing", "level_changed"]
        assert console.got == []
        assert (await store.counts())["pending"] == 0


async def test_a_dead_letter_is_kept_with_its_reason_falls_back_and_can_be_retried(
    tmp_path: Path,
) -> None:
    """A refused notification is marked dead with the reason and owed to the fallback
    receiver, which gets only that one; requeued, it is delivered at the next start."""
    path = tmp_path / "alerts.sqlite3"
    refused = DeliveryError("pager", "HTTP 400 Bad Request: unknown channel", retryable=False)
    pager, sms = Receiver("pager", (refused,)), Receiver("sms")
    async with AlertStore(path) as store:
        async with service([pager, sms], store, fallback="sms") as svc:
            await svc.submit(make_warning(Level.RED, ts_ms=1_000, seq=1))
            await svc.submit(make_warning(Level.NONE, ts_ms=2_000, seq=2))  # pager takes this
            await asyncio.wait_for(svc.drain(), WAIT)
        (dead,) = await store.rows("dead")
        assert (dead.receiver, dead.attempts) == ("pager", 1)
        assert "unknown channel" in dead.detail
        assert dead.notification.event == "firing"
        assert [n.id for n in sms.got] == [dead.notification.id]
        assert [n.event for n in pager.got] == ["resolved"]
        assert {(r.receiver, r.state) for r in await store.rows()} == {
            ("pager", "dead"),
            ("pager", "delivered"),
            ("sms", "delivered"),
        }
        assert await store.requeue([dead.id]) == 1
        assert await store.rows("dead") == []
    async with AlertStore(path) as store:
        pager = Receiver("pager")
        async with service([pager, Receiver("sms")], store, fallback="sms") as svc:
            await asyncio.wait_for(svc.drain(), WAIT)
        assert [n.id for n in pager.got] == [dead.notification.id]
        assert (await store.counts())["dead"] == 0


async def test_more_owed_than_a_lane_holds_holds_up_no_new_warning(tmp_path: Path) -> None:
    """Restarted owing more to a receiver that is still down than its lane holds: the
    rest waits in the store, new warnings are still recorded at once, and once the
    receiver answers it gets every notification, oldest first, each once."""
    path = tmp_path / "alerts.sqlite3"
    async with AlertStore(path) as store, service([Hanging("ops")], store, drain_timeout=0) as svc:
        for i in range(5):
            await svc.submit(make_warning(Level.RED, fp=f"old-{i}", node=f"wl-{i}"))
        await asyncio.wait_for(svc.recorded(), WAIT)
    gate = asyncio.Event()

    class Gated(Receiver):
        async def send(self, n: Notification) -> None:
            await gate.wait()
            await super().send(n)

    ops = Gated("ops")
    async with AlertStore(path) as store, service([ops], store, queue_size=2) as svc:
        for i in range(3):
            await svc.submit(make_warning(Level.RED, fp=f"new-{i}", node=f"wl-{i}"))
        await asyncio.wait_for(svc.recorded(), WAIT)  # not held up by the lane
        assert svc.stats().resumed == 5
        gate.set()
        await asyncio.wait_for(svc.drain(), WAIT)
        assert (await store.counts())["pending"] == 0
    got = [n.alert.fingerprint for n in ops.got]
    assert got == [f"old-{i}" for i in range(5)] + [f"new-{i}" for i in range(3)]


async def test_a_dead_letter_requeued_while_a_lane_catches_up_is_sent_and_counted(
    tmp_path: Path,
) -> None:
    """A lane taking back what waited in the store also finds a dead letter an operator
    requeued meanwhile: it is sent, and counted, so the service still drains to zero."""
    gate = asyncio.Event()
    refusals = [DeliveryError("ops", "HTTP 410 Gone", retryable=False)]

    class Ops(Receiver):
        async def send(self, n: Notification) -> None:
            if refusals:
                raise refusals.pop()
            await gate.wait()
            await super().send(n)

    ops = Ops("ops")
    async with (
        AlertStore(tmp_path / "a.sqlite3") as store,
        service([ops], store, queue_size=1) as svc,
    ):
        await svc.submit(make_warning(Level.RED, fp="dead", node="wl-0"))
        await wait_until(lambda: svc.stats().failed == 1, "the refusal")
        for i in range(3):  # one in hand, one queued, one in the store
            await svc.submit(make_warning(Level.RED, fp=f"fp-{i}", node=f"wl-{i + 1}"))
        await asyncio.wait_for(svc.recorded(), WAIT)
        assert await store.requeue() == 1
        gate.set()
        await asyncio.wait_for(svc.drain(), WAIT)
        assert svc.stats().undelivered == 0
        assert (await store.counts())["pending"] == 0
    assert sorted(n.alert.fingerprint for n in ops.got) == ["dead", "fp-0", "fp-1", "fp-2"]


async def test_owed_to_a_receiver_no_longer_configured_is_left_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "alerts.sqlite3"
    async with AlertStore(path) as store, service([Hanging("old")], store, drain_timeout=0) as svc:
        await svc.submit(make_warning(Level.RED))
        await asyncio.wait_for(svc.recorded(), WAIT)
    with caplog.at_level(logging.WARNING, logger="alerts.service"):
        async with AlertStore(path) as store:
            async with service([Receiver("new")], store) as svc:
                await asyncio.wait_for(svc.drain(), WAIT)
            assert (await store.counts())["pending"] == 1
    assert any("no longer configured" in r.getMessage() and "'old': 1" in r.getMessage()
               for r in caplog.records)  # fmt: skip


async def test_a_failing_store_does_not_stop_delivery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The store's disk refuses writes: the pages still go out, and the log says once for
    each kind of write that the store is failing (not once per write)."""
    path = tmp_path / "alerts.sqlite3"
    a = Receiver("a")
    with caplog.at_level(logging.ERROR, logger="alerts.service"):
        async with AlertStore(path) as store, service([a], store) as svc:
            with sqlite3.connect(path) as other:
                other.execute("DROP TABLE outbox")
            for i in range(3):
                await svc.submit(make_warning(Level.RED, fp=f"fp-{i}"))
            await asyncio.wait_for(svc.drain(), WAIT)
    assert len(a.got) == 3
    failing = [r.getMessage() for r in caplog.records if "alert store failing" in r.getMessage()]
    # Once for each kind of write that failed (the outbox is gone: records and settles).
    assert sorted(m.split(" on ")[0] for m in failing) == [
        "alert store failing (delivered",
        "alert store failing (record",
    ]


async def test_a_store_of_another_schema_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "alerts.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 7")
    with pytest.raises(AlertStoreError, match=r"alerts\.sqlite3 has schema version 7"):
        async with AlertStore(path):
            pass


async def test_two_receivers_giving_up_owe_the_fallback_once(tmp_path: Path) -> None:
    """Both pagers refuse the same notifications: the fallback gets each once, and the
    service drains (nothing counted twice)."""
    gone = DeliveryError("x", "HTTP 410 Gone", retryable=False)
    a, b = Receiver("a", errors=(gone,) * 3), Receiver("b", errors=(gone,) * 3)
    sms = Receiver("sms")
    async with AlertStore(tmp_path / "a.sqlite3") as store:
        async with service([a, b, sms], store, fallback="sms", queue_size=1) as svc:
            for i in range(3):
                await svc.submit(make_warning(Level.RED, fp=f"fp-{i}", node=f"wl-{i}"))
            await asyncio.wait_for(svc.drain(), WAIT)
            assert svc.stats().undelivered == 0
        counts = await store.counts()
    assert sorted(n.alert.fingerprint for n in sms.got) == ["fp-0", "fp-1", "fp-2"]
    assert (counts["dead"], counts["pending"]) == (6, 0)


async def test_a_receiver_giving_up_after_a_restart_does_not_page_the_fallback_again(
    tmp_path: Path,
) -> None:
    """One pager gave up before a restart and the fallback was paged; the other still
    held the same notification then and gives up after it. The store knows the fallback
    was owed it already: the fallback is not paged twice."""
    gone = DeliveryError("x", "HTTP 410 Gone", retryable=False)
    path = tmp_path / "a.sqlite3"
    sms = Receiver("sms")
    first = [Receiver("a", errors=(gone,)), Hanging("b"), sms]
    async with (
        AlertStore(path) as store,
        service(first, store, fallback="sms", drain_timeout=0) as svc,
    ):
        await svc.submit(make_warning(Level.RED))
        await wait_until(lambda: len(sms.got) == 1, "the fallback paged")
    sms_again = Receiver("sms")
    async with AlertStore(path) as store:
        async with service(
            [Receiver("a"), Receiver("b", errors=(gone,)), sms_again], store, fallback="sms"
        ) as svc:
            await asyncio.wait_for(svc.drain(), WAIT)
            assert svc.stats().undelivered == 0
        counts = await store.counts()
    assert sms_again.got == []
    assert (counts["dead"], counts["delivered"], counts["pending"]) == (2, 1, 0)


def test_a_fallback_must_be_a_receiver() -> None:
    with pytest.raises(ValueError, match="fallback receiver 'sms' is not one of"):
        AlertService([Receiver("a")], clock=ManualClock(0.0), fallback="sms")


def test_the_cli_lists_dead_letters_and_retries_them(tmp_path: Path) -> None:
    """`cityvitals alerts outbox` lists the dead letter with its receiver, key and reason;
    `cityvitals alerts retry N` owes it again; asking for nothing is a usage error."""
    from click.testing import CliRunner

    from cityvitals.cli import main

    path = tmp_path / "alerts.sqlite3"
    refused = DeliveryError("pager", "HTTP 410 Gone", retryable=False)

    async def fill() -> str:
        pager = Receiver("pager", (refused,))
        async with AlertStore(path) as store, service([pager], store) as svc:
            await svc.submit(make_warning(Level.RED))
            await asyncio.wait_for(svc.drain(), WAIT)
            (row,) = await store.rows("dead")
            return row.notification.id

    key = asyncio.run(fill())
    runner = CliRunner()
    listed = runner.invoke(main, ["alerts", "outbox", "--store", str(path)])
    assert listed.exit_code == 0, listed.output
    assert "1 open alerts; outbox 0 pending, 0 delivered, 1 dead" in listed.output
    assert f"#1 dead to pager: firing red water_level.depth wl-0003 (key {key}" in listed.output
    assert "HTTP 410 Gone" in listed.output
    retried = runner.invoke(main, ["alerts", "retry", "--store", str(path), "1"])
    assert retried.exit_code == 0, retried.output
    assert "1 dead letter owed again" in retried.output
    again = runner.invoke(main, ["alerts", "outbox", "--store", str(path), "--state", "pending"])
    assert "#1 pending to pager" in again.output
    nothing = runner.invoke(main, ["alerts", "retry", "--store", str(path)])
    assert nothing.exit_code == 2
    assert "name the dead letters to retry" in nothing.output
    missing = runner.invoke(main, ["alerts", "outbox", "--store", str(tmp_path / "none")])
    assert missing.exit_code == 1
    assert "no alert store there" in missing.output
