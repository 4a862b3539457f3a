"""Incidents: related alerts grouped, so one rainstorm is one incident, not forty. Pure.

An alert joins the open incident of its kind and place (its district, street
or grid: `group_by`) when that incident has seen an alert change within
`window_ms`; otherwise it opens a new one. An area alert joins by its area's
place when the area is that scope, else by its placement. The incident's
level is the highest level of its open alerts; it resolves when the last of
them does, and a later alert there opens a new incident.

Grouping goes by the alerts' own times, not by when they arrive: a late alert
(its edge agent replayed a buffer, or the area stage fell behind the gauges)
goes to the incident it would have joined in time order, reopening it if it
has resolved since, rather than open a second incident for the same storm.

>>> from alerts.book import AlertBook
>>> from tests.factories import make_warning
>>> from cityvitals.levels import Level
>>> book, incidents = AlertBook(), IncidentBook(group_by="district", window_ms=3_600_000)
>>> a = incidents.apply(book.apply(make_warning(Level.YELLOW, fp="a", node="wl-1", ts_ms=0)))
>>> b = incidents.apply(book.apply(make_warning(Level.RED, fp="b", node="wl-2", ts_ms=60_000)))
>>> a.id == b.id, b.alerts, b.level.label
(True, ('a', 'b'), 'red')
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterable
from typing import Final, Literal

import msgspec

from alerts.model import Alert, Notification
from cityvitals.contract import fingerprint
from cityvitals.kinds import Kind
from cityvitals.levels import Level

__all__ = ["GroupBy", "Incident", "IncidentBook"]

GroupBy = Literal["district", "street", "grid"]
#: How long an incident stays open to newcomers after its last change, by default.
WINDOW_MS: Final = 60 * 60_000
#: Resolved incidents kept to list.
RECENT: Final = 1000
#: Resolved incidents kept per kind and place for late alerts to rejoin.
REJOINABLE: Final = 4


class Incident(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    kind: Kind
    scope: GroupBy
    place: str
    state: Literal["open", "resolved"]
    level: Level
    peak_level: Level
    opened_ms: int
    updated_ms: int
    resolved_ms: int | None = None
    #: Fingerprints of its alerts, in the order they joined; `open` those still open.
    alerts: tuple[str, ...] = ()
    open: tuple[str, ...] = ()


def _place(alert: Alert, group_by: GroupBy) -> str:
    if alert.area is not None and alert.area.scope == group_by:
        return alert.area.name
    place: str = getattr(alert.placement, group_by)
    return place


class IncidentBook:
    """The incidents, and which incident each alert belongs to."""

    def __init__(self, *, group_by: GroupBy = "district", window_ms: int = WINDOW_MS) -> None:
        self.group_by = group_by
        self.window_ms = window_ms
        self._by_id: dict[str, Incident] = {}  # the open ones
        self._of_alert: dict[str, str] = {}
        # The open incidents of each (kind, place), oldest first: usually one, but a
        # late alert can reopen an older one beside a newer.
        self._here: dict[tuple[Kind, str], list[str]] = {}
        # The last resolved incidents of each (kind, place), newest last.
        self._resolved: dict[tuple[Kind, str], deque[Incident]] = {}
        self._levels: dict[str, Level] = {}  # open alerts' levels
        #: Resolved incidents, newest last, bounded.
        self._recent: deque[Incident] = deque(maxlen=RECENT)

    def restore(self, incidents: Iterable[Incident], open_alerts: Iterable[Alert]) -> None:
        """Start from stored incidents (oldest first) and the book's open alerts."""
        for incident in incidents:
            if incident.state != "open":
                self._recent.append(incident)
                self._keep_resolved(incident)
                continue
            self._by_id[incident.id] = incident
            for fp in incident.alerts:
                self._of_alert[fp] = incident.id
            self._here.setdefault((incident.kind, incident.place), []).append(incident.id)
        self._levels = {a.fingerprint: a.level for a in open_alerts}

    def recent(self) -> list[Incident]:
        """Resolved incidents, newest first."""
        return list(reversed(self._recent))

    def of(self, alert_fingerprint: str) -> Incident | None:
        incident_id = self._of_alert.get(alert_fingerprint)
        return None if incident_id is None else self._by_id.get(incident_id)

    def get(self, incident_id: str) -> Incident | None:
        return self._by_id.get(incident_id)

    def open_incidents(self) -> list[Incident]:
        return list(self._by_id.values())

    def apply(self, n: Notification) -> Incident | None:
        """Fold one alert change in; the incident it changed, or None (no change)."""
        alert, fp = n.alert, n.alert.fingerprint
        current = self.of(fp)
        if alert.is_open and (current is None or fp not in current.open):
            # Opening, or opening again after it resolved: grouped by its time.
            current = self._join(alert, n.ts_ms)
        elif current is None:
            return None
        if alert.is_open:
            self._levels[fp] = alert.level
            still = current.open if fp in current.open else (*current.open, fp)
        else:
            self._levels.pop(fp, None)
            still = tuple(x for x in current.open if x != fp)
        level = max((self._levels.get(x, Level.NONE) for x in still), default=Level.NONE)
        changed = msgspec.structs.replace(
            current,
            open=still,
            level=level,
            peak_level=max(current.peak_level, level),
            updated_ms=max(current.updated_ms, n.ts_ms),
        )
        if not still:
            # Its last change, not this one's time: a late alert resolving may be
            # dated before the alert that resolved the incident first.
            changed = msgspec.structs.replace(
                changed, state="resolved", resolved_ms=changed.updated_ms, level=Level.NONE
            )
            self._close(changed)
            return changed
        self._by_id[changed.id] = changed
        return None if changed == current else changed

    def _close(self, incident: Incident) -> None:
        """Forget a resolved incident but for the `recent` list and the few a late
        alert may reopen."""
        key = (incident.kind, incident.place)
        here = self._here.get(key, [])
        if incident.id in here:
            here.remove(incident.id)
        if not here:
            self._here.pop(key, None)
        for fp in incident.alerts:
            if self._of_alert.get(fp) == incident.id:
                del self._of_alert[fp]
        self._by_id.pop(incident.id, None)
        self._recent.append(incident)
        self._keep_resolved(incident)

    def _keep_resolved(self, incident: Incident) -> None:
        key = (incident.kind, incident.place)
        kept = self._resolved.setdefault(key, deque(maxlen=REJOINABLE))
        kept.append(incident)

    def _takes(self, incident: Incident, ts_ms: int) -> bool:
        """Whether an alert opening at `ts_ms` belongs with `incident` by time: not
        more than the window before it opened, and, if it is open, not more than
        the window after its last change (a quiet incident takes no newcomers), or,
        if it has resolved, not after it did."""
        if ts_ms < incident.opened_ms - self.window_ms:
            return False
        if incident.resolved_ms is None:
            return ts_ms - incident.updated_ms <= self.window_ms
        return ts_ms <= incident.resolved_ms

    def _best(self, key: tuple[Kind, str], ts_ms: int) -> Incident | None:
        """Of the incidents here that take an alert of `ts_ms`, the one it would have
        joined had everything come in time order: of those already open at its time,
        the latest opened (where newcomers went); else the nearest opening after it."""
        candidates = [self._by_id[i] for i in self._here.get(key, ())]
        candidates += self._resolved.get(key, ())
        taking = [c for c in candidates if self._takes(c, ts_ms)]
        if not taking:
            return None
        return min(
            taking, key=lambda c: (0, -c.opened_ms) if c.opened_ms <= ts_ms else (1, c.opened_ms)
        )

    def _join(self, alert: Alert, ts_ms: int) -> Incident:
        place = _place(alert, self.group_by)
        key = (alert.kind, place)
        fp = alert.fingerprint
        found = self._best(key, ts_ms)
        if found is None:
            found = Incident(
                id=fingerprint(kind=alert.kind.value, place=place, opened=str(ts_ms)),
                kind=alert.kind,
                scope=self.group_by,
                place=place,
                state="open",
                level=alert.level,
                peak_level=alert.level,
                opened_ms=ts_ms,
                updated_ms=ts_ms,
            )
            self._here.setdefault(key, []).append(found.id)
        elif found.state != "open":
            # A late alert: the incident was still open at its time.
            self._resolved[key].remove(found)
            with contextlib.suppress(ValueError):  # already past the `recent` bound
                self._recent.remove(found)
            found = msgspec.structs.replace(found, state="open", resolved_ms=None)
            self._here.setdefault(key, []).append(found.id)
            for x in found.alerts:
                self._of_alert.setdefault(x, found.id)
        joined = msgspec.structs.replace(
            found,
            alerts=found.alerts if fp in found.alerts else (*found.alerts, fp),
            opened_ms=min(found.opened_ms, ts_ms),
        )
        self._by_id[joined.id] = joined
        self._of_alert[fp] = joined.id
        return joined
