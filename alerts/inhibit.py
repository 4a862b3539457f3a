"""Inhibition: an open alert that explains lesser ones holds their pages back. Pure.

Two rules, as Alertmanager's inhibit rules (source, target, what they share):

- **A node that is offline or silent** (an open `presence.*` alert) explains
  every other alert of that node: its readings stopped or went stale because
  the node did, and the presence page says so already.
- **A red area alert** explains its members' lesser alerts of the same kind:
  with the district flooding at red, each gauge's yellow or orange adds
  nothing the district page does not say.

An inhibited alert is held back like a silenced one (`muted`), and announced
at once when what inhibited it resolves (`AlertBook.unmuted`).

>>> from alerts.book import AlertBook
>>> from tests.factories import make_warning
>>> from cityvitals.levels import Level
>>> book = AlertBook()
>>> offline = book.apply(make_warning(Level.YELLOW, fp="p", rule="presence.offline")).alert
>>> depth = book.apply(make_warning(Level.ORANGE, fp="d")).alert
>>> inhibitor(depth, [offline, depth]) is offline
True
"""

from __future__ import annotations

from collections.abc import Iterable

from alerts.model import Alert
from cityvitals.levels import Level

__all__ = ["inhibitor"]

PRESENCE_PREFIX = "presence."


def _explains(source: Alert, target: Alert) -> bool:
    if source.fingerprint == target.fingerprint or not source.is_open:
        return False
    if source.rule.startswith(PRESENCE_PREFIX):
        return (
            source.area is None
            and source.node == target.node
            and not target.rule.startswith(PRESENCE_PREFIX)
        )
    area = source.area
    return (
        area is not None
        and source.level == Level.RED
        and target.area is None
        and target.kind == source.kind
        and target.level < Level.RED
        and any(m.node == target.node for m in area.members)
    )


def inhibitor(target: Alert, open_alerts: Iterable[Alert]) -> Alert | None:
    """The open alert that explains `target` (and so holds its pages back), if any."""
    if not target.is_open:
        return None
    return next((a for a in open_alerts if _explains(a, target)), None)
