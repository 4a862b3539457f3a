"""Routing: each alert's notifications go to the receivers its routes name, and its whole
story (raise, lowering, resolve) to the same ones."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from alerts.routing import Route, Router
from alerts.service import AlertService
from alerts.silences import Matcher
from cityvitals.clock import ManualClock
from cityvitals.levels import Level
from tests.factories import PLACE, make_warning
from tests.factories import KeepingReceiver as Receiver

INLAND = msgspec.structs.replace(PLACE, district="Inland")


ROUTER = Router(
    [
        Route((Matcher("level", "red"),), ("city-ops",), continue_=True),
        Route((Matcher("district", "Harbour"),), ("harbour-duty",)),
        Route((Matcher("rule", "smoke\\..*", "=~"),), ("fire",)),
    ],
    default=("ops",),
)


async def test_notifications_follow_their_routes_and_the_peak_level() -> None:
    """Harbour's alerts go to the harbour duty; once one reached red, the city ops get
    it too, its lowering and resolve included; an alert no route takes goes to the
    default; nobody gets what is not theirs."""
    names = ("ops", "harbour-duty", "city-ops", "fire")
    receivers = {name: Receiver(name) for name in names}
    async with AlertService(list(receivers.values()), clock=ManualClock(0.0), router=ROUTER) as svc:
        for level, ts in ((Level.ORANGE, 1), (Level.RED, 2), (Level.ORANGE, 3), (Level.NONE, 4)):
            await svc.submit(make_warning(level, fp="dock", ts_ms=ts, seq=ts))
        await svc.submit(make_warning(Level.YELLOW, fp="hill", ts_ms=5, placement=INLAND))
        await asyncio.wait_for(svc.drain(), 5)
    got = {name: [(n.alert.fingerprint, n.event) for n in r.got] for name, r in receivers.items()}
    dock = [("dock", e) for e in ("firing", "level_changed", "level_changed", "resolved")]
    assert got == {
        "harbour-duty": dock,
        "city-ops": dock[1:],
        "ops": [("hill", "firing")],
        "fire": [],
    }


def test_routes_naming_unknown_receivers_are_refused() -> None:
    with pytest.raises(ValueError, match=r"not configured: \['city-ops', 'fire', 'harbour-duty'\]"):
        AlertService([Receiver("ops")], clock=ManualClock(0.0), router=ROUTER)


def test_the_roles_router_leaves_the_fallback_and_ladder_receivers_out_of_the_default() -> None:
    from cityvitals.distributed.roles import _router
    from cityvitals.settings import AlertSettings

    settings = AlertSettings(
        fallback="sms",
        routes=(((("district", "Harbour", "="),), ("harbour",), False),),
        escalation=(("district", ("district-duty",), 900.0, ()),),
    )
    router = _router(settings, ["ops", "harbour", "district-duty", "sms"])
    assert router is not None
    assert router.default == ("ops", "harbour")
