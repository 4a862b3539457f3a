"""Silences: hold back the notifications of matching alerts for a while. Pure.

As in Alertmanager, a silence is a list of matchers over an alert's labels,
a start and an end, who made it and why. While one is active over an alert,
its changes are still recorded but nobody is paged; when the silence ends (or
is expired early), an alert still open is announced at once instead of at
its next reminder (`AlertBook.unmuted`).

Labels: `rule`, `kind`, `metric`, `node`, `area` (an area alert's key, such
as `district:Harbour`), `district`, `street`, `grid`, `unit` and `level`
(blue, yellow, orange, red). Operators: `=`, `!=`, `=~` and `!~` (a regular
expression that must match the whole value).

>>> from alerts.book import AlertBook
>>> from tests.factories import make_warning
>>> from cityvitals.levels import Level
>>> alert = AlertBook().apply(make_warning(Level.ORANGE)).alert
>>> works = Silence.new(
...     [Matcher("district", "Harbour"), Matcher("rule", "water_level\\\\..*", "=~")],
...     starts_ms=0, ends_ms=3_600_000, author="ops-lead", reason="pump works on Dock St",
...     now_ms=0)
>>> works.covers(alert, now_ms=1_000), works.covers(alert, now_ms=3_600_000)
(True, False)
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from typing import Final, Literal

import msgspec

from alerts.model import Alert

__all__ = ["LABELS", "OPS", "Matcher", "Silence", "Silences", "labels"]

Label = Literal[
    "rule", "kind", "metric", "node", "area", "district", "street", "grid", "unit", "level"
]
LABELS: Final[tuple[str, ...]] = Label.__args__  # type: ignore[attr-defined]
Op = Literal["=", "!=", "=~", "!~"]
OPS: Final[tuple[str, ...]] = Op.__args__  # type: ignore[attr-defined]


def labels(alert: Alert) -> dict[str, str]:
    """What matchers see of an alert."""
    p = alert.placement
    # A resolved alert's level is none; what it was about is its peak.
    level = alert.level if alert.is_open else alert.peak_level
    return {
        "rule": alert.rule,
        "kind": alert.kind.value,
        "metric": alert.metric,
        "node": alert.node,
        "area": "" if alert.area is None else alert.area.key,
        "district": p.district,
        "street": p.street,
        "grid": p.grid,
        "unit": p.unit,
        "level": level.label,
    }


class Matcher(msgspec.Struct, frozen=True):
    name: Label
    value: str
    op: Op = "="

    def __post_init__(self) -> None:
        if self.op in ("=~", "!~"):
            try:
                re.compile(self.value)
            except re.error as exc:
                raise ValueError(f"matcher {self.name}{self.op}{self.value!r}: {exc}") from None

    def matches(self, values: dict[str, str]) -> bool:
        value = values[self.name]
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        hit = re.fullmatch(self.value, value) is not None
        return hit if self.op == "=~" else not hit


class Silence(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    matchers: tuple[Matcher, ...]
    starts_ms: int
    ends_ms: int
    author: str
    reason: str
    created_ms: int

    @classmethod
    def new(
        cls,
        matchers: Sequence[Matcher],
        *,
        starts_ms: int,
        ends_ms: int,
        author: str,
        reason: str,
        now_ms: int,
    ) -> Silence:
        """A checked silence with a fresh id; ValueError saying what is wrong."""
        if not matchers:
            raise ValueError("a silence needs at least one matcher (it would silence everything)")
        if ends_ms <= starts_ms:
            raise ValueError("a silence must end after it starts")
        if ends_ms <= now_ms:
            raise ValueError("a silence that has already ended silences nothing")
        if not author.strip() or not reason.strip():
            raise ValueError("a silence needs an author and a reason")
        return cls(
            id=uuid.uuid4().hex[:16],
            matchers=tuple(matchers),
            starts_ms=starts_ms,
            ends_ms=ends_ms,
            author=author.strip(),
            reason=reason.strip(),
            created_ms=now_ms,
        )

    def active(self, now_ms: int) -> bool:
        return self.starts_ms <= now_ms < self.ends_ms

    def covers(self, alert: Alert, *, now_ms: int) -> bool:
        if not self.active(now_ms):
            return False
        values = labels(alert)
        return all(m.matches(values) for m in self.matchers)


class Silences:
    """The silences known to one alert service, by id."""

    def __init__(self, silences: Iterable[Silence] = ()) -> None:
        self._by_id = {s.id: s for s in silences}

    def add(self, silence: Silence) -> None:
        self._by_id[silence.id] = silence

    def expire(self, silence_id: str, *, now_ms: int) -> Silence | None:
        """End a silence now; None if there is no such silence or it has ended."""
        current = self._by_id.get(silence_id)
        if current is None or current.ends_ms <= now_ms:
            return None
        ended = msgspec.structs.replace(current, ends_ms=max(now_ms, current.starts_ms))
        self._by_id[silence_id] = ended
        return ended

    def covering(self, alert: Alert, *, now_ms: int) -> Silence | None:
        """The active silence over `alert`, if any (the one ending last)."""
        over = [s for s in self._by_id.values() if s.covers(alert, now_ms=now_ms)]
        return max(over, key=lambda s: s.ends_ms, default=None)

    def current(self, now_ms: int) -> list[Silence]:
        """Silences active now or still to come, ending soonest first."""
        return sorted(
            (s for s in self._by_id.values() if s.ends_ms > now_ms), key=lambda s: s.ends_ms
        )

    def get(self, silence_id: str) -> Silence | None:
        return self._by_id.get(silence_id)
