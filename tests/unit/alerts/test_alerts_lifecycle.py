"""The lifecycle past firing: acknowledge, resolve by hand, reminders, silences; every timing
on an injected clock (`ManualClock`, and `tick()` called by the test)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from alerts.service import AlertNotFound, AlertService
from alerts.silences import Matcher, Silence
from alerts.store import AlertStore
from cityvitals.clock import EventClock, ManualClock
from cityvitals.levels import Level
from tests.factories import PLACE, KeepingReceiver, make_warning

WAIT = 5.0
T0 = 1_764_028_800.0  # the clock's start, seconds
T0_MS = int(T0 * 1000)


class Receiver(KeepingReceiver):
    def events(self) -> list[tuple[str, int]]:
        """(event, ms after T0) of each notification."""
        return [(n.event, n.ts_ms - T0_MS) for n in self.got]


def service(receiver: Receiver, clock: ManualClock, store: AlertStore | None = None, **kw):
    return AlertService([receiver], clock=clock, store=store, **kw)


def warn(level: Level, at_s: float, seq: int, **kw):
    return make_warning(level, ts_ms=T0_MS + int(at_s * 1000), seq=seq, **kw)


async def settle(svc: AlertService) -> None:
    await asyncio.wait_for(svc.drain(), WAIT)


async def test_an_unacknowledged_alert_is_repeated_until_someone_takes_it() -> None:
    """Every 10 minutes nobody acknowledges a firing alert, it is announced again (once
    per interval, at the time it fell due, however late the tick); acknowledged, the
    reminders stop; raised above what was acknowledged, it needs acknowledging again."""
    clock, ops = ManualClock(T0), Receiver()
    async with service(ops, clock, repeat_every=600) as svc:
        await svc.submit(warn(Level.ORANGE, 0, 1))
        await settle(svc)
        clock.advance(599)
        assert await svc.tick() == 0
        clock.advance(1)
        assert await svc.tick() == 1
        clock.advance(1_500)  # a late tick: one reminder (the latest due, at 1 800 s)
        assert await svc.tick() == 1
        await settle(svc)
        alert = await svc.acknowledge("fp-1", by="li.wei")
        assert (alert.state, alert.acknowledged_by) == ("acknowledged", "li.wei")
        assert (await svc.acknowledge("fp-1", by="someone else")).acknowledged_by == "li.wei"
        clock.advance(3_600)
        assert await svc.tick() == 0
        await svc.submit(warn(Level.RED, 5_700, 2))
        await settle(svc)
        clock.advance(600)
        assert await svc.tick() == 1
        await settle(svc)
    assert ops.events() == [
        ("firing", 0),
        ("repeated", 600_000),
        ("repeated", 1_800_000),
        ("acknowledged", 2_100_000),
        ("level_changed", 5_700_000),
        ("repeated", 6_300_000),
    ]
    assert len({n.id for n in ops.got}) == len(ops.got)
    raised = ops.got[4].alert
    assert (raised.state, raised.acknowledged_ms) == ("firing", None)


async def test_resolving_by_hand_and_what_comes_after() -> None:
    """Resolved by hand, the alert says who; its last warning read again changes nothing,
    a newer one opens it again; an alert that is not open cannot be acknowledged."""
    clock, ops = ManualClock(T0), Receiver()
    async with service(ops, clock) as svc:
        await svc.submit(warn(Level.YELLOW, 0, 1))
        await settle(svc)
        clock.advance(60)
        resolved = await svc.resolve("fp-1", by="zhang.min")
        assert (resolved.state, resolved.resolved_by, resolved.level) == (
            "resolved",
            "zhang.min",
            Level.NONE,
        )
        await svc.submit(warn(Level.YELLOW, 0, 1))
        await settle(svc)
        with pytest.raises(AlertNotFound):
            await svc.acknowledge("fp-1", by="zhang.min")
        await svc.submit(warn(Level.YELLOW, 120, 2))
        await settle(svc)
    assert [e for e, _ in ops.events()] == ["firing", "resolved", "firing"]
    assert ops.got[1].previous == Level.YELLOW


async def test_a_silence_holds_pages_back_and_its_end_announces_what_is_still_open(
    tmp_path: Path,
) -> None:
    """While a silence covers the harbour's water alerts, their changes are recorded but
    nobody is paged; another district's alert is paged. When the silence ends by time,
    the alert still open is announced at once; one resolved meanwhile is not."""
    clock, ops = ManualClock(T0), Receiver()
    works = Silence.new(
        [Matcher("district", "Harbour"), Matcher("kind", "water_level")],
        starts_ms=T0_MS,
        ends_ms=T0_MS + 3_600_000,
        author="ops-lead",
        reason="pump station works on Dockside Street",
        now_ms=T0_MS,
    )
    async with (
        AlertStore(tmp_path / "alerts.sqlite3") as store,
        service(ops, clock, store, repeat_every=600) as svc,
    ):
        await svc.silence(works)
        await svc.submit(warn(Level.ORANGE, 0, 1, fp="fp-dock"))
        await svc.submit(warn(Level.YELLOW, 0, 1, fp="fp-quay"))
        await svc.submit(warn(Level.NONE, 60, 2, fp="fp-quay"))
        hill = msgspec.structs.replace(PLACE, district="Inland", street="Hill Road")
        await svc.submit(warn(Level.RED, 0, 1, fp="fp-inland", placement=hill))
        await settle(svc)
        assert [n.alert.fingerprint for n in ops.got] == ["fp-inland"]
        assert svc.stats().muted == 3
        assert svc.book.get("fp-dock").muted
        clock.advance(1_800)
        await svc.tick()  # reminders skip muted alerts (and fp-inland is due: 1 800 s)
        clock.advance(1_800)  # the silence ends
        await svc.tick()
        await settle(svc)
    assert [(n.alert.fingerprint, n.event) for n in ops.got] == [
        ("fp-inland", "firing"),
        ("fp-inland", "repeated"),
        ("fp-dock", "repeated"),
        ("fp-inland", "repeated"),
    ]
    assert ops.got[2].ts_ms == T0_MS + 3_600_000


async def test_a_silence_survives_a_restart_and_expiring_it_early_announces_at_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "alerts.sqlite3"
    clock = ManualClock(T0)
    silence = Silence.new(
        [Matcher("rule", "water_level\\..*", "=~")],
        starts_ms=T0_MS,
        ends_ms=T0_MS + 86_400_000,
        author="ops-lead",
        reason="gauges recalibrated today",
        now_ms=T0_MS,
    )
    async with AlertStore(path) as store, service(Receiver(), clock, store) as svc:
        await svc.silence(silence)
    ops = Receiver()
    async with AlertStore(path) as store, service(ops, clock, store) as svc:
        assert [s.id for s in svc.silences.current(clock.now_ms())] == [silence.id]
        await svc.submit(warn(Level.RED, 10, 1))
        await settle(svc)
        assert ops.got == []
        clock.advance(60)
        ended = await svc.expire_silence(silence.id)
        assert ended is not None
        assert ended.ends_ms == T0_MS + 60_000
        assert await svc.expire_silence(silence.id) is None
        await settle(svc)
    assert ops.events() == [("repeated", 60_000)]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (([], 0, 10, "a", "b"), "at least one matcher"),
        (([Matcher("node", "wl-1")], 10, 10, "a", "b"), "end after it starts"),
        (([Matcher("node", "wl-1")], 0, 5, "a", "b"), "already ended"),
        (([Matcher("node", "wl-1")], 0, 10, " ", "b"), "an author and a reason"),
    ],
)
def test_a_silence_that_cannot_work_is_refused_saying_why(case, message) -> None:
    matchers, starts, ends, author, reason = case
    with pytest.raises(ValueError, match=message):
        Silence.new(
            matchers, starts_ms=starts, ends_ms=ends, author=author, reason=reason, now_ms=6
        )


def test_matchers_compare_whole_values() -> None:
    values = {"node": "wl-0003", "district": "Harbour"}
    assert Matcher("node", "wl-0003").matches(values)
    assert Matcher("district", "Old Town", "!=").matches(values)
    assert Matcher("node", "wl-.*", "=~").matches(values)
    assert not Matcher("node", "wl", "=~").matches(values)  # whole value, not a prefix
    assert Matcher("node", "cr-.*", "!~").matches(values)
    with pytest.raises(ValueError, match=r"matcher node=~'wl-\(': missing \)"):
        Matcher("node", "wl-(", "=~")


async def test_an_offline_node_holds_back_its_other_alerts_until_it_is_back() -> None:
    """While the node's presence alert is open, its depth alert is recorded but not paged
    (the presence page explains it); once the node is back, the depth alert, still open,
    is announced at the next tick."""
    clock, ops = ManualClock(T0), Receiver()
    async with service(ops, clock) as svc:
        await svc.submit(warn(Level.YELLOW, 0, 1, fp="p", rule="presence.offline"))
        await svc.submit(warn(Level.ORANGE, 10, 1, fp="d"))
        await settle(svc)
        assert svc.stats().inhibited == 1
        assert await svc.tick() == 0  # still offline: still held back
        await svc.submit(warn(Level.NONE, 60, 2, fp="p", rule="presence.offline"))
        await settle(svc)
        clock.advance(61)
        assert await svc.tick() == 1
        await settle(svc)
    assert [(n.alert.fingerprint, n.event) for n in ops.got] == [
        ("p", "firing"),
        ("p", "resolved"),
        ("d", "repeated"),
    ]


async def test_a_red_area_alert_holds_back_its_members_lesser_alerts() -> None:
    """With the district at red, a member gauge's orange adds nothing; a gauge that is not
    a member, or another kind, still pages; a member at red pages too."""
    from cityvitals.contract import Area, AreaMember

    members = tuple(
        AreaMember(node=n, level=Level.RED, value=60.0, ts_ms=T0_MS) for n in ("wl-1", "wl-2")
    )
    area = Area(scope="district", name="Harbour", members=members, total=4)
    district = msgspec.structs.replace(
        warn(Level.RED, 0, 1, fp="area", node="", rule="water_level.district_flooding"),
        area=area,
    )
    clock, ops = ManualClock(T0), Receiver()
    async with service(ops, clock) as svc:
        await svc.submit(district)
        await svc.submit(warn(Level.ORANGE, 1, 1, fp="m1", node="wl-1"))
        await svc.submit(warn(Level.RED, 1, 1, fp="m2", node="wl-2"))
        await svc.submit(warn(Level.ORANGE, 1, 1, fp="other", node="wl-7"))
        await settle(svc)
    assert [n.alert.fingerprint for n in ops.got] == ["area", "m2", "other"]
    assert svc.stats().inhibited == 1


async def test_nobody_acknowledging_climbs_the_ladder_until_someone_does() -> None:
    """Grid duty at once, street duty after 10 min, district after 30, city after an hour:
    each step is called in (`escalated`) when its time comes, hears the rest of the
    alert's story, and acknowledging stops the climb; a late tick skips to the step due."""
    from alerts.escalation import Ladder, Step

    ladder = Ladder(
        [
            Step("grid", ("grid",), 0),
            Step("street", ("street",), 600),
            Step("district", ("district",), 1800),
            Step("city", ("city",), 3600),
        ]
    )
    clock = ManualClock(T0)
    people = {name: Receiver(name) for name in ("grid", "street", "district", "city")}
    async with AlertService(list(people.values()), clock=clock, ladder=ladder) as svc:
        await svc.submit(warn(Level.ORANGE, 0, 1))
        await settle(svc)
        clock.advance(599)
        assert await svc.tick() == 0
        clock.advance(1)
        assert await svc.tick() == 1
        clock.advance(1_500)  # 2 100 s: the district step is due (1 800 s)
        assert await svc.tick() == 1
        await settle(svc)
        await svc.acknowledge("fp-1", by="district.officer")
        clock.advance(7_200)
        assert await svc.tick() == 0
        await svc.submit(warn(Level.NONE, 9_300, 2))
        await settle(svc)
    assert people["grid"].events() == [
        ("firing", 0),
        ("escalated", 600_000),
        ("escalated", 1_800_000),
        ("acknowledged", 2_100_000),
        ("resolved", 9_300_000),
    ]
    assert [e for e, _ in people["street"].events()] == [
        "escalated",
        "escalated",
        "acknowledged",
        "resolved",
    ]
    assert [e for e, _ in people["district"].events()] == ["escalated", "acknowledged", "resolved"]
    assert people["city"].got == []
    assert people["district"].got[0].alert.escalation == 2


async def test_a_change_calls_in_the_steps_due_by_then_first() -> None:
    """With no tick at all (event time, `tick_every=None`): a raise 20 minutes in calls
    in the street step first, so street duty hears the raise; the resolve 40 minutes in
    calls in the district first. Each escalation is dated when its step fell due and
    names it; the city (an hour) is never reached."""
    from alerts.escalation import Ladder, Step

    names = ("grid", "street", "district", "city")
    ladder = Ladder([Step(n, (n,), s) for n, s in zip(names, (0, 900, 1800, 3600), strict=True)])
    people = {name: Receiver(name) for name in names}
    clock = EventClock()
    async with AlertService(
        list(people.values()), clock=clock, ladder=ladder, tick_every=None
    ) as svc:
        for w in (warn(Level.ORANGE, 0, 1), warn(Level.RED, 1200, 2), warn(Level.NONE, 2400, 3)):
            clock.at(w.ts_ms)
            await svc.submit(w)
            await asyncio.wait_for(svc.recorded(), WAIT)
        await settle(svc)
    assert [(n.event, n.ts_ms - T0_MS, n.step) for n in people["grid"].got] == [
        ("firing", 0, None),
        ("escalated", 900_000, "street"),
        ("level_changed", 1_200_000, None),
        ("escalated", 1_800_000, "district"),
        ("resolved", 2_400_000, None),
    ]
    assert [e for e, _ in people["street"].events()] == [
        "escalated",
        "level_changed",
        "escalated",
        "resolved",
    ]
    assert [e for e, _ in people["district"].events()] == ["escalated", "resolved"]
    assert people["city"].got == []


async def test_a_warning_replayed_late_escalates_only_what_was_due_when_it_happened() -> None:
    """After two hours down, the alerts service reads a resolve that happened 5 minutes
    into the alert: nobody was due then but the grid, so nobody else is paged."""
    from alerts.escalation import Ladder, Step

    names = ("grid", "street", "city")
    ladder = Ladder([Step(n, (n,), s) for n, s in zip(names, (0, 900, 3600), strict=True)])
    people = {name: Receiver(name) for name in names}
    clock = ManualClock(T0)
    async with AlertService(
        list(people.values()), clock=clock, ladder=ladder, tick_every=None
    ) as svc:
        await svc.submit(warn(Level.ORANGE, 0, 1))
        await settle(svc)
        clock.advance(7_200)
        await svc.submit(warn(Level.NONE, 300, 2))
        await settle(svc)
    assert people["grid"].events() == [("firing", 0), ("resolved", 300_000)]
    assert people["street"].got == people["city"].got == []


async def test_response_times_are_measured_from_the_alerts_start() -> None:
    """Detected when recorded, acknowledged and resolved by hand: each is measured from
    the reading that raised the alert, kept by district, kind and peak level, and handed
    to the sink hook."""
    from alerts.metrics import Observation

    seen: list[Observation] = []

    async def sink(o: Observation) -> None:
        seen.append(o)

    clock = ManualClock(T0 + 5)  # the alert is recorded 5 s after its reading
    async with service(Receiver(), clock, on_response=sink) as svc:
        await svc.submit(warn(Level.RED, 0, 1))
        await settle(svc)
        clock.advance(115)
        await svc.acknowledge("fp-1", by="li.wei")
        clock.advance(480)
        await svc.resolve("fp-1", by="li.wei")
        await settle(svc)
        rows = svc.responses.summary()
    assert [(o.what, o.seconds, o.level, o.district) for o in seen] == [
        ("detect", 5.0, "red", "Harbour"),
        ("acknowledge", 120.0, "red", "Harbour"),
        ("resolve", 600.0, "red", "Harbour"),
    ]
    assert [(r["what"], r["count"], r["max_s"]) for r in rows] == [
        ("acknowledge", 1, 120.0),
        ("detect", 1, 5.0),
        ("resolve", 1, 600.0),
    ]
