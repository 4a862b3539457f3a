"""Incidents: alerts of one kind and place, close in time, are one incident; it resolves with
its last alert; it survives a restart; the API lists it; notifications carry its id."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.book import AlertBook
from alerts.incidents import IncidentBook
from alerts.service import AlertService
from alerts.store import AlertStore
from cityvitals.clock import ManualClock
from cityvitals.kinds import Kind
from cityvitals.levels import Level
from tests.factories import PLACE, make_warning
from tests.factories import KeepingReceiver as Receiver

MIN = 60_000
OTHER_STREET = QUAY = msgspec.structs.replace(PLACE, street="Quay Road", grid="HB-102")
INLAND = msgspec.structs.replace(PLACE, district="Inland", street="Hill Road", grid="IN-1")


def changes(incidents: IncidentBook, book: AlertBook, *warnings) -> list:
    out = []
    for w in warnings:
        n = book.apply(w)
        if n is not None:
            out.append(incidents.apply(n))
    return out


def test_a_storm_over_a_district_is_one_incident_until_its_last_alert_resolves() -> None:
    """Gauges on two streets of one district within the window join one incident (its
    level the highest open); another district is another incident; the incident
    resolves with its last alert, and a later alert there opens a new one."""
    book, incidents = AlertBook(), IncidentBook(group_by="district", window_ms=60 * MIN)
    a, b, c, a_clear, b_clear = changes(
        incidents,
        book,
        make_warning(Level.YELLOW, fp="a", node="wl-1", ts_ms=0),
        make_warning(Level.RED, fp="b", node="wl-2", ts_ms=20 * MIN, placement=OTHER_STREET),
        make_warning(Level.ORANGE, fp="c", node="wl-9", ts_ms=21 * MIN, placement=INLAND),
        make_warning(Level.NONE, fp="a", node="wl-1", ts_ms=50 * MIN, seq=2),
        make_warning(Level.NONE, fp="b", node="wl-2", ts_ms=90 * MIN, seq=2, placement=QUAY),
    )  # fmt: skip
    assert a.id == b.id == a_clear.id == b_clear.id != c.id
    assert (b.alerts, b.level, b.place, b.kind) == (
        ("a", "b"),
        Level.RED,
        "Harbour",
        Kind.WATER_LEVEL,
    )
    assert (a_clear.open, a_clear.level, a_clear.state) == (("b",), Level.RED, "open")
    assert (b_clear.state, b_clear.peak_level, b_clear.resolved_ms) == (
        "resolved",
        Level.RED,
        90 * MIN,
    )
    assert [i.id for i in incidents.open_incidents()] == [c.id]
    assert [i.id for i in incidents.recent()] == [b.id]
    (again,) = changes(incidents, book, make_warning(Level.BLUE, fp="a", ts_ms=100 * MIN, seq=3))
    assert again.id not in (b.id, c.id)  # fmt: skip


def test_a_quiet_incident_takes_no_newcomers_and_streets_group_apart() -> None:
    """Past the window a new alert opens a new incident even at the same place; grouped
    by street, two streets of one district are two incidents."""
    book, incidents = AlertBook(), IncidentBook(group_by="district", window_ms=10 * MIN)
    first, late = changes(
        incidents,
        book,
        make_warning(Level.YELLOW, fp="a", ts_ms=0),
        make_warning(Level.YELLOW, fp="b", node="wl-2", ts_ms=11 * MIN),
    )
    assert first.id != late.id
    book, by_street = AlertBook(), IncidentBook(group_by="street")
    one, two = changes(
        by_street,
        book,
        make_warning(Level.YELLOW, fp="a", ts_ms=0),
        make_warning(Level.YELLOW, fp="b", node="wl-2", ts_ms=MIN, placement=OTHER_STREET),
    )
    assert (one.place, two.place) == ("Dockside Street", "Quay Road")


async def test_notifications_carry_the_incident_and_it_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "alerts.sqlite3"
    clock, ops = ManualClock(1_764_028_800.0), Receiver()
    async with AlertStore(path) as store, AlertService([ops], clock=clock, store=store) as svc:
        await svc.submit(make_warning(Level.YELLOW, fp="a", ts_ms=0))
        await svc.submit(make_warning(Level.RED, fp="b", node="wl-2", ts_ms=MIN))
        await asyncio.wait_for(svc.drain(), 5)
    incident = ops.got[0].incident
    assert incident is not None
    assert [n.incident for n in ops.got] == [incident, incident]
    ops2 = Receiver()
    async with AlertStore(path) as store, AlertService([ops2], clock=clock, store=store) as svc:
        (restored,) = svc.incidents.open_incidents()
        assert (restored.id, restored.alerts, restored.level) == (incident, ("a", "b"), Level.RED)
        await svc.submit(make_warning(Level.NONE, fp="b", node="wl-2", ts_ms=2 * MIN, seq=2))
        await svc.submit(make_warning(Level.NONE, fp="a", ts_ms=3 * MIN, seq=2))
        await asyncio.wait_for(svc.drain(), 5)
        assert svc.incidents.open_incidents() == []
        assert svc.incidents.recent()[0].id == incident
    assert [n.incident for n in ops2.got] == [incident, incident]


def test_a_late_alert_rejoins_the_incident_that_was_open_at_its_time() -> None:
    """A gauge whose agent fell behind reports an alert dated inside an incident that has
    resolved since: it reopens that incident (same id, resolved when its own alert does,
    at the incident's last change) instead of opening a second one for the same storm.
    An alert dated after the incident resolved still opens a new one."""
    book, incidents = AlertBook(), IncidentBook(group_by="district", window_ms=60 * MIN)
    a, a_clear, late, late_clear, after = changes(
        incidents,
        book,
        make_warning(Level.YELLOW, fp="a", node="wl-1", ts_ms=0),
        make_warning(Level.NONE, fp="a", node="wl-1", ts_ms=90 * MIN, seq=2),
        make_warning(Level.ORANGE, fp="b", node="wl-2", ts_ms=30 * MIN, placement=QUAY),
        make_warning(Level.NONE, fp="b", node="wl-2", ts_ms=60 * MIN, seq=2, placement=QUAY),
        make_warning(Level.YELLOW, fp="c", node="wl-3", ts_ms=100 * MIN),
    )
    assert a.id == a_clear.id == late.id == late_clear.id != after.id
    assert (a_clear.state, late.state, late.open, late.resolved_ms) == (
        "resolved",
        "open",
        ("b",),
        None,
    )
    assert (late_clear.state, late_clear.alerts, late_clear.peak_level) == (
        "resolved",
        ("a", "b"),
        Level.ORANGE,
    )
    assert late_clear.resolved_ms == 90 * MIN
    assert [i.id for i in incidents.recent()] == [a.id]
    assert [i.id for i in incidents.open_incidents()] == [after.id]


async def test_a_late_alert_after_a_restart_reopens_the_stored_incident(tmp_path: Path) -> None:
    """The resolved incidents come back from the store with the rest, so a late alert
    read after a restart (a lagging area stage, a replayed edge buffer) still rejoins the
    incident that was open at its time, and the store has it open again."""
    path = tmp_path / "alerts.sqlite3"
    clock, ops = ManualClock(1_764_028_800.0), Receiver()
    async with AlertStore(path) as store, AlertService([ops], clock=clock, store=store) as svc:
        await svc.submit(make_warning(Level.YELLOW, fp="a", ts_ms=0))
        await svc.submit(make_warning(Level.NONE, fp="a", ts_ms=90 * MIN, seq=2))
        await asyncio.wait_for(svc.drain(), 5)
    incident = ops.got[0].incident
    ops2 = Receiver()
    async with AlertStore(path) as store, AlertService([ops2], clock=clock, store=store) as svc:
        await svc.submit(make_warning(Level.ORANGE, fp="b", node="wl-2", ts_ms=30 * MIN))
        await asyncio.wait_for(svc.drain(), 5)
        assert [n.incident for n in ops2.got] == [incident]
    async with AlertStore(path) as store:
        (stored,) = [i for i in await store.incidents() if i.id == incident]
    assert (stored.state, stored.open, stored.alerts) == ("open", ("b",), ("a", "b"))


def test_late_alerts_go_to_the_incident_open_at_their_time_beside_a_newer_one() -> None:
    """While a newer incident is open at the same place, late alerts dated inside an older,
    resolved one reopen and join that one (the second too, though both are open now);
    a newcomer in time joins the newer; an alert dated long before any incident here
    opens its own; and when the old one resolves again the newer keeps taking newcomers."""
    book, incidents = AlertBook(), IncidentBook(group_by="district", window_ms=10 * MIN)
    first, _, newer, late, later, newcomer, ancient = changes(
        incidents,
        book,
        make_warning(Level.YELLOW, fp="a", ts_ms=100 * MIN),
        make_warning(Level.NONE, fp="a", ts_ms=120 * MIN, seq=2),
        make_warning(Level.YELLOW, fp="b", node="wl-2", ts_ms=160 * MIN),
        make_warning(Level.RED, fp="c", node="wl-3", ts_ms=110 * MIN),
        make_warning(Level.ORANGE, fp="d", node="wl-4", ts_ms=112 * MIN),
        make_warning(Level.BLUE, fp="e", node="wl-5", ts_ms=165 * MIN),
        make_warning(Level.BLUE, fp="f", node="wl-6", ts_ms=5 * MIN),
    )
    assert first.id == late.id == later.id
    assert newer.id == newcomer.id != first.id
    assert ancient.id not in (first.id, newer.id)
    assert (later.alerts, later.open, later.level) == (("a", "c", "d"), ("c", "d"), Level.RED)
    assert newcomer.alerts == ("b", "e")
    assert {i.id for i in incidents.open_incidents()} == {first.id, newer.id, ancient.id}
    c_clear, d_clear, again = changes(
        incidents,
        book,
        make_warning(Level.NONE, fp="c", node="wl-3", ts_ms=115 * MIN, seq=2),
        make_warning(Level.NONE, fp="d", node="wl-4", ts_ms=118 * MIN, seq=2),
        make_warning(Level.YELLOW, fp="g", node="wl-7", ts_ms=170 * MIN),
    )
    assert (c_clear.state, d_clear.state, d_clear.resolved_ms) == ("open", "resolved", 120 * MIN)
    assert again.id == newer.id


def test_a_late_alert_joins_the_resolved_incident_of_its_time_not_the_newest() -> None:
    """Two storms at one place, both resolved: an alert dated inside the first rejoins
    the first (and one dated just before a storm began moves its start back)."""
    book, incidents = AlertBook(), IncidentBook(group_by="district", window_ms=60 * MIN)
    one, _, two, _, late, early = changes(
        incidents,
        book,
        make_warning(Level.YELLOW, fp="a", ts_ms=0),
        make_warning(Level.NONE, fp="a", ts_ms=10 * MIN, seq=2),
        make_warning(Level.YELLOW, fp="b", node="wl-2", ts_ms=100 * MIN),
        make_warning(Level.NONE, fp="b", node="wl-2", ts_ms=120 * MIN, seq=2),
        make_warning(Level.ORANGE, fp="c", node="wl-3", ts_ms=5 * MIN),
        make_warning(Level.ORANGE, fp="d", node="wl-4", ts_ms=90 * MIN),
    )
    assert late.id == one.id != two.id == early.id
    assert early.opened_ms == 90 * MIN


async def test_a_restart_groups_as_it_would_have_without_one(tmp_path: Path) -> None:
    """Two incidents open at one place (a late alert reopened the older): after a restart,
    a newcomer joins the newer, and an alert of the older, firing again after it cleared,
    is grouped by its time (the newer) as it would have been without the restart."""

    def warnings() -> list:
        return [
            make_warning(Level.YELLOW, fp="a", ts_ms=0),
            make_warning(Level.NONE, fp="a", ts_ms=20 * MIN, seq=2),
            make_warning(Level.YELLOW, fp="b", node="wl-2", ts_ms=60 * MIN),
            make_warning(Level.RED, fp="c", node="wl-3", ts_ms=10 * MIN),
        ]

    after = [
        make_warning(Level.ORANGE, fp="a", ts_ms=62 * MIN, seq=3),
        make_warning(Level.BLUE, fp="e", node="wl-5", ts_ms=63 * MIN),
    ]
    book, straight = AlertBook(), IncidentBook(group_by="district", window_ms=10 * MIN)
    expected = [i.id for i in changes(straight, book, *warnings(), *after)[-2:]]
    path, clock = tmp_path / "alerts.sqlite3", ManualClock(1_764_028_800.0)
    group = {"group_by": "district", "window_ms": 10 * MIN}
    async with AlertStore(path) as store:
        svc = AlertService([], clock=clock, store=store, incidents=IncidentBook(**group))
        async with svc:
            for w in warnings():
                await svc.submit(w)
            await asyncio.wait_for(svc.drain(), 5)
    ops = Receiver()
    async with AlertStore(path) as store:
        svc = AlertService([ops], clock=clock, store=store, incidents=IncidentBook(**group))
        async with svc:
            assert len(svc.incidents.open_incidents()) == 2
            for w in after:
                await svc.submit(w)
            await asyncio.wait_for(svc.drain(), 5)
    assert [n.incident for n in ops.got] == expected
    assert expected[0] == expected[1]


@st.composite
def storms_arrivals(draw: st.DrawFn) -> tuple[list, dict[str, int]]:
    """One to three storms over one district, each over before the next begins by more
    than the window: each storm's gauges are raised within its first 40 minutes and
    cleared after that, each changing level in between. All their warnings interleave
    in any order that keeps each gauge's own order (agents and partitions run at their
    own pace). Also: which storm each gauge was in."""
    streams, storm_of = [], {}
    for storm in range(draw(st.integers(1, 3))):
        start = storm * 400 * MIN
        for _ in range(draw(st.integers(1, 4))):
            g = len(streams)
            raised = start + draw(st.integers(0, 40)) * MIN
            cleared = start + draw(st.integers(41, 300)) * MIN
            levels = draw(st.lists(st.sampled_from(list(Level)[1:]), min_size=1, max_size=3))
            steps = sorted(draw(st.lists(st.integers(raised, cleared), min_size=len(levels))))
            ws = [
                make_warning(lvl, fp=f"g{g}", node=f"wl-{g}", ts_ms=ts, seq=i)
                for i, (lvl, ts) in enumerate(zip(levels, [raised, *steps[1:]], strict=False))
            ]
            ws.append(make_warning(Level.NONE, fp=f"g{g}", node=f"wl-{g}", ts_ms=cleared, seq=9))
            streams.append(ws)
            storm_of[f"g{g}"] = storm
    order = draw(st.permutations([g for g, ws in enumerate(streams) for _ in ws]))
    return [streams[g].pop(0) for g in order], storm_of


@settings(derandomize=True, max_examples=400, deadline=None)
@given(storms_arrivals())
def test_each_storm_is_one_incident_in_any_arrival_order(case: tuple) -> None:
    """However the gauges' warnings interleave, each storm (its alerts all open at once)
    is one incident of its own, resolved at its last alert's clearing."""
    arrivals, storm_of = case
    book, incidents = AlertBook(), IncidentBook(group_by="district", window_ms=60 * MIN)
    changes(incidents, book, *arrivals)
    assert incidents.open_incidents() == []
    done = incidents.recent()
    assert len(done) == len(set(storm_of.values()))
    for incident in done:
        (storm,) = {storm_of[fp] for fp in incident.alerts}
        members = {fp for fp, s in storm_of.items() if s == storm}
        assert set(incident.alerts) == members
        times = [w.ts_ms for w in arrivals if w.fingerprint in members]
        assert (incident.opened_ms, incident.resolved_ms) == (min(times), max(times))
