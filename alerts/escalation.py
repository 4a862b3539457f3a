"""The escalation ladder: who else is paged while nobody acknowledges. Pure.

A ladder is steps, each a name (grid, street, district, city: the scope of
who answers), receivers, and how long after the alert opened it applies.
While an alert is firing and nobody has acknowledged it, each step whose
time has come is reached in turn: its receivers get an `escalated`
notification, and from then on every change of that alert (the
acknowledgement, the resolve), so whoever was called in hears the end.
A step with `match` applies only to the alerts it matches (a district's own
duty officer). Acknowledging stops the climb; a raise above what was
acknowledged starts it again from where it was.

>>> from alerts.book import AlertBook
>>> from tests.factories import make_warning
>>> from cityvitals.levels import Level
>>> ladder = Ladder([Step("grid", ("grid-duty",), 0), Step("street", ("street-duty",), 600),
...                  Step("district", ("district-duty",), 1800)])
>>> alert = AlertBook().apply(make_warning(Level.ORANGE, ts_ms=0)).alert
>>> ladder.reached(alert, now_ms=0), ladder.reached(alert, now_ms=1_000_000)
(0, 1)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from alerts.model import Alert
from alerts.silences import Matcher, labels

__all__ = ["Ladder", "Step"]


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    receivers: tuple[str, ...]
    after_s: float
    match: tuple[Matcher, ...] = ()

    def applies(self, alert: Alert) -> bool:
        values = labels(alert)
        return all(m.matches(values) for m in self.match)


class Ladder:
    def __init__(self, steps: Sequence[Step]) -> None:
        afters = [s.after_s for s in steps]
        if afters != sorted(afters):
            raise ValueError("escalation steps must come in the order of their after_s")
        self.steps = tuple(steps)

    def reached(self, alert: Alert, *, now_ms: int) -> int:
        """The index of the last step whose time has come for `alert`; -1 for none."""
        waited_s = (now_ms - alert.started_ms) / 1000
        reached = -1
        for i, step in enumerate(self.steps):
            if step.after_s <= waited_s and step.applies(alert):
                reached = i
        return reached

    def due_ms(self, alert: Alert, step: int) -> int:
        """When step `step` fell due for `alert` (a reproducible time, for the id)."""
        return alert.started_ms + round(self.steps[step].after_s * 1000)

    def named(self) -> set[str]:
        """Every receiver some step calls in."""
        return {r for step in self.steps for r in step.receivers}

    def receivers(self, alert: Alert) -> tuple[str, ...]:
        """Everyone the alert has escalated to so far (steps up to `alert.escalation`)."""
        out: list[str] = []
        for step in self.steps[: alert.escalation + 1]:
            if step.applies(alert):
                out += [r for r in step.receivers if r not in out]
        return tuple(out)
