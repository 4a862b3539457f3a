"""The alert lifecycle: warnings in, notifications out. Pure: no I/O, no clock.

Every timestamp comes from the warning itself, so replaying the same warnings
yields the same alerts and the same notification ids.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from msgspec.structs import replace

from alerts.model import SCHEMA_VERSION, Alert, Event, Notification, notification_id
from cityvitals.contract import Warning
from cityvitals.levels import Level


class AlertBook:
    """The open alerts, one per warning fingerprint, and the rules that change them.

    The book trusts its own open set rather than the warning's `previous`
    field: if a warning was lost upstream, the next one still opens, updates or
    resolves the right alert instead of paging twice or never resolving.

    >>> from cityvitals.contract import Placement, Warning
    >>> from cityvitals.kinds import Kind
    >>> place = Placement(district="Harbour", street="Dockside Street", grid="HB-101",
    ...                   unit="harbour-ops", lat=22.28, lon=114.16)
    >>> def warn(level: Level, value: float, ts_ms: int) -> Warning:
    ...     return Warning(v=1, fingerprint="fp-1", rule="water_level.depth", node="wl-0003",
    ...                    kind=Kind.WATER_LEVEL, metric="depth_cm", level=level,
    ...                    previous=Level.NONE, value=value, threshold=50.0, unit="cm",
    ...                    ts_ms=ts_ms, seq=ts_ms, placement=place)
    >>> book = AlertBook()
    >>> book.apply(warn(Level.ORANGE, 51.0, 1)).event
    'firing'
    >>> book.apply(warn(Level.ORANGE, 52.0, 2)) is None  # a repeat never pages twice
    True
    >>> n = book.apply(warn(Level.RED, 62.1, 3))
    >>> n.event, n.previous.label, n.alert.peak_level.label
    ('level_changed', 'orange', 'red')
    >>> n = book.apply(warn(Level.NONE, 12.0, 4))
    >>> n.event, n.alert.state, n.alert.resolved_ms, len(book)
    ('resolved', 'resolved', 4, 0)
    >>> book.apply(warn(Level.RED, 62.1, 3)) is None  # re-delivered after the resolve
    True
    """

    def __init__(self, *, remember_resolved: int = 100_000) -> None:
        self._open: dict[str, Alert] = {}
        # The (ts_ms, seq) of the warning that resolved each recent alert, oldest
        # first, bounded: see `apply`.
        self._resolved: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._remember_resolved = remember_resolved

    def apply(self, warning: Warning) -> Notification | None:
        """Fold one warning into the book; return the notification it causes, if any.

        A warning no newer than the last one applied for its fingerprint (by
        reading time, then sequence number: a node's clock may repeat) is a
        re-delivery (a stream worker that died after handing it on emits it
        again when it redoes the batch) and changes nothing, even once the
        alert has resolved: otherwise the replayed "firing" would reopen it and
        page again under the first page's id. Warnings of one fingerprint
        arrive in order (the warnings topic is keyed by fingerprint).
        """
        fp = warning.fingerprint
        current = self._open.get(fp)
        last = (current.updated_ms, current.seq) if current else self._resolved.get(fp)
        if last is not None and (warning.ts_ms, warning.seq) <= last:
            return None
        if warning.cleared:
            if current is None:
                # Cleared twice, or cleared after a restart lost the open set:
                # nothing to resolve, and paging "resolved" for an unknown
                # alert would only confuse the receiver.
                return None
            return self._resolve(current, warning)
        if current is None:
            return self._open_alert(warning)
        updated = replace(
            current,
            level=warning.level,
            peak_level=max(current.peak_level, warning.level),
            updated_ms=warning.ts_ms,
            value=warning.value,
            threshold=warning.threshold,
            seq=warning.seq,
            # The registry may move a node; the alert follows the latest placement.
            placement=warning.placement,
            area=warning.area,
        )
        self._open[warning.fingerprint] = updated
        if warning.level == current.level:
            return None
        return _notify("level_changed", current.level, updated, warning.ts_ms)

    def restore(self, opened: Iterable[Alert], resolved: Iterable[tuple[str, int, int]]) -> None:
        """Start from a stored book (`alerts.store`): the open alerts, oldest first,
        and the (fingerprint, ts_ms, seq) of the last warning of resolved ones."""
        self._open = {alert.fingerprint: alert for alert in opened}
        self._resolved = OrderedDict((fp, (ts_ms, seq)) for fp, ts_ms, seq in resolved)
        while len(self._resolved) > self._remember_resolved:
            self._resolved.popitem(last=False)

    def open_alerts(self) -> tuple[Alert, ...]:
        """The firing alerts, oldest first."""
        return tuple(self._open.values())

    def get(self, fingerprint: str) -> Alert | None:
        """The open alert for a fingerprint, or None."""
        return self._open.get(fingerprint)

    def __len__(self) -> int:
        return len(self._open)

    def _open_alert(self, warning: Warning) -> Notification:
        alert = Alert(
            fingerprint=warning.fingerprint,
            rule=warning.rule,
            node=warning.node,
            kind=warning.kind,
            metric=warning.metric,
            unit=warning.unit,
            placement=warning.placement,
            level=warning.level,
            peak_level=warning.level,
            state="firing",
            started_ms=warning.ts_ms,
            updated_ms=warning.ts_ms,
            resolved_ms=None,
            value=warning.value,
            threshold=warning.threshold,
            seq=warning.seq,
            area=warning.area,
        )
        self._open[warning.fingerprint] = alert
        return _notify("firing", Level.NONE, alert, warning.ts_ms)

    def _resolve(self, current: Alert, warning: Warning) -> Notification:
        resolved = replace(
            current,
            level=Level.NONE,
            state="resolved",
            updated_ms=warning.ts_ms,
            resolved_ms=warning.ts_ms,
            value=warning.value,
            threshold=warning.threshold,
            seq=warning.seq,
            area=warning.area,
        )
        del self._open[warning.fingerprint]
        self._resolved[warning.fingerprint] = (warning.ts_ms, warning.seq)
        self._resolved.move_to_end(warning.fingerprint)
        if len(self._resolved) > self._remember_resolved:
            self._resolved.popitem(last=False)
        return _notify("resolved", current.level, resolved, warning.ts_ms)


def _notify(event: Event, previous: Level, alert: Alert, ts_ms: int) -> Notification:
    return Notification(
        v=SCHEMA_VERSION,
        id=notification_id(alert.fingerprint, event, alert.level, ts_ms, seq=alert.seq),
        event=event,
        previous=previous,
        alert=alert,
        ts_ms=ts_ms,
    )
