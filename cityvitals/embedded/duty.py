"""The demo's duty roster: who the escalation ladder calls in while nobody acknowledges.

A city answers at the lowest level first: the grid's duty officer at once,
the street's after 15 minutes unacknowledged, the district's after 30, the
city's operations centre after an hour (`DEMO_LADDER`). In the demo each
duty officer is a `DutyDesk`, a receiver that keeps which alerts reached it,
so the summary can say who was called in for what. A deployment names its
own receivers (webhooks, chat bots) in `[alerts.escalation] steps` instead
(docs/alerts.md).

>>> [(s.name, s.receivers, s.after_s) for s in DEMO_LADDER.steps][1]
('street', ('street-duty',), 900)
"""

from __future__ import annotations

from alerts.escalation import Ladder, Step
from alerts.model import Notification

__all__ = ["DEMO_LADDER", "DutyDesk", "duty_desks"]

DEMO_LADDER = Ladder(
    [
        Step("grid", ("grid-duty",), 0),
        Step("street", ("street-duty",), 15 * 60),
        Step("district", ("district-duty",), 30 * 60),
        Step("city", ("city-duty",), 60 * 60),
    ]
)


class DutyDesk:
    """One duty officer's pager in the demo: counts what it is sent, per alert."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.notifications = 0
        #: The fingerprints of the alerts it heard of.
        self.alerts: set[str] = set()

    async def send(self, n: Notification) -> None:
        self.notifications += 1
        self.alerts.add(n.alert.fingerprint)


def duty_desks(ladder: Ladder) -> dict[str, DutyDesk]:
    """A desk for each step of `ladder`, by step name (one receiver per step)."""
    return {step.name: DutyDesk(step.receivers[0]) for step in ladder.steps}
