"""Incidents: alerts of one kind and place, close in time, are one incident; it resolves with
its last alert; it survives a restart; the API lists it; notifications carry its id."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

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
