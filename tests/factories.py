"""Domain objects for tests, built one way so every test module speaks alike."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cityvitals.contract import Placement, Warning
from cityvitals.kinds import Kind
from cityvitals.levels import Level

if TYPE_CHECKING:
    from alerts.model import Notification

PLACE = Placement(
    district="Harbour", street="Dockside Street", grid="HB-101", unit="harbour-ops", lat=1, lon=2
)


def make_warning(
    level: Level = Level.RED,
    *,
    value: float = 62.1,
    threshold: float | None = 50.0,
    previous: Level = Level.NONE,
    ts_ms: int = 1_000,
    fp: str = "fp-1",
    seq: int = 1,
    node: str = "wl-0003",
    rule: str = "water_level.depth",
    placement: Placement = PLACE,
) -> Warning:
    """A water-depth warning for wl-0003; override what the test is about."""
    return Warning(
        v=1,
        fingerprint=fp,
        rule=rule,
        node=node,
        kind=Kind.WATER_LEVEL,
        metric="depth_cm",
        level=level,
        previous=previous,
        value=value,
        threshold=threshold,
        unit="cm",
        ts_ms=ts_ms,
        seq=seq,
        placement=placement,
    )


class KeepingReceiver:
    """A receiver (an `alerts.notify.Notifier`) that keeps every notification it is sent."""

    def __init__(self, name: str = "ops") -> None:
        self.name = name
        self.got: list[Notification] = []

    async def send(self, n: Notification) -> None:
        self.got.append(n)
