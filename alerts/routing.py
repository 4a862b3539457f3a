"""Routing: which receivers an alert's notifications go to. Pure.

Routes are tried in order; a route whose matchers all hold (the labels of
`alerts.silences`) sends the alert to its receivers, and unless it says
`continue`, routing stops there. No route matching sends it to the
`default` receivers (every receiver, unless configured). The `level` label
is the alert's *peak* level when routing: once an alert reached red, whoever
red goes to follows it to its resolution, lowering and clearing included.

>>> from alerts.book import AlertBook
>>> from tests.factories import make_warning
>>> from cityvitals.levels import Level
>>> router = Router([Route((Matcher("level", "red"),), ("city-ops",), continue_=True),
...                  Route((Matcher("district", "Harbour"),), ("harbour-duty",))],
...                 default=("ops",))
>>> alert = AlertBook().apply(make_warning(Level.RED)).alert
>>> router.receivers(alert)
('city-ops', 'harbour-duty')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from alerts.model import Alert
from alerts.silences import Matcher, labels

__all__ = ["Route", "Router"]


@dataclass(frozen=True, slots=True)
class Route:
    matchers: tuple[Matcher, ...]
    receivers: tuple[str, ...]
    continue_: bool = False

    def matches(self, values: dict[str, str]) -> bool:
        return all(m.matches(values) for m in self.matchers)


class Router:
    def __init__(self, routes: Sequence[Route], *, default: Sequence[str]) -> None:
        self.routes = tuple(routes)
        self.default = tuple(default)

    def receivers(self, alert: Alert) -> tuple[str, ...]:
        """The receivers for `alert`, each once, in the order the routes name them."""
        values = labels(alert) | {"level": alert.peak_level.label}
        chosen: list[str] = []
        matched = False
        for route in self.routes:
            if not route.matches(values):
                continue
            matched = True
            chosen += [r for r in route.receivers if r not in chosen]
            if not route.continue_:
                break
        return tuple(chosen) if matched else self.default
