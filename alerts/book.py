"""The alert lifecycle: warnings in, notifications out. Pure: no I/O, no clock.

firing → acknowledged (by hand) → resolved (when the warning clears, or by
hand); a level change notifies again, and a raise above what was
acknowledged needs acknowledging again. Timestamps come from the warning
itself, so replaying the same warnings yields the same alerts and the same
notification ids; what the clock drives (reminders, a silence ending) and
what people do take `now_ms` from the caller.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable

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

    def is_stale(self, warning: Warning) -> bool:
        """Whether `apply` would ignore `warning` as no newer than the last one applied."""
        fp = warning.fingerprint
        current = self._open.get(fp)
        last = (current.updated_ms, current.seq) if current else self._resolved.get(fp)
        return last is not None and (warning.ts_ms, warning.seq) <= last

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
        if self.is_stale(warning):
            return None
        fp = warning.fingerprint
        current = self._open.get(fp)
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
        if warning.level == current.level:
            self._open[warning.fingerprint] = updated
            return None
        if warning.level > current.level and current.state == "acknowledged":
            # Worse than what was taken on: it needs taking on again.
            updated = replace(updated, state="firing", acknowledged_ms=None, acknowledged_by="")
        updated = replace(updated, notified_ms=warning.ts_ms)
        self._open[warning.fingerprint] = updated
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
            notified_ms=warning.ts_ms,
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
            notified_ms=warning.ts_ms,
        )
        self._forget(resolved)
        return _notify("resolved", current.level, resolved, warning.ts_ms)

    def _forget(self, resolved: Alert) -> None:
        del self._open[resolved.fingerprint]
        self._resolved[resolved.fingerprint] = (resolved.updated_ms, resolved.seq)
        self._resolved.move_to_end(resolved.fingerprint)
        if len(self._resolved) > self._remember_resolved:
            self._resolved.popitem(last=False)

    # -- by hand, and by the clock ------------------------------------------------

    def acknowledge(self, fingerprint: str, *, by: str, now_ms: int) -> Notification | None:
        """Someone has taken the alert on: no more reminders until it gets worse.
        None if it is not open, or already acknowledged."""
        current = self._open.get(fingerprint)
        if current is None or current.state == "acknowledged":
            return None
        acked = replace(
            current, state="acknowledged", acknowledged_ms=now_ms, acknowledged_by=by,
            notified_ms=now_ms,
        )  # fmt: skip
        self._open[fingerprint] = acked
        return _notify("acknowledged", current.level, acked, now_ms)

    def resolve(self, fingerprint: str, *, by: str, now_ms: int) -> Notification | None:
        """Resolved by hand (a sensor known to be wrong, a condition dealt with). Its last
        warning stays the newest applied, so only a newer one opens it again."""
        current = self._open.get(fingerprint)
        if current is None:
            return None
        resolved = replace(
            current, level=Level.NONE, state="resolved", resolved_ms=now_ms, resolved_by=by,
            notified_ms=now_ms, muted=False,
        )  # fmt: skip
        self._forget(resolved)
        return _notify("resolved", current.level, resolved, now_ms)

    def reminders(self, now_ms: int, *, every_ms: int) -> list[Notification]:
        """A "repeated" notification for each open alert nobody has acknowledged and
        nothing has announced for `every_ms`. Its time is when it fell due (one
        reminder, however long the service was away), so its id is the same if the
        same reminder is computed again."""
        out = []
        for fp, alert in list(self._open.items()):
            if alert.state != "firing" or alert.muted:
                continue
            since = now_ms - alert.notified_ms
            if since < every_ms:
                continue
            due_ms = alert.notified_ms + (since // every_ms) * every_ms
            reminded = replace(alert, notified_ms=due_ms)
            self._open[fp] = reminded
            out.append(_notify("repeated", alert.level, reminded, due_ms))
        return out

    def escalate(self, fingerprint: str, *, step: int, due_ms: int) -> Notification | None:
        """Nobody acknowledged in time: step `step` of the ladder is called in. None if
        the alert is not firing unacknowledged, or is there already."""
        current = self._open.get(fingerprint)
        if current is None or current.state != "firing" or step <= current.escalation:
            return None
        self._open[fingerprint] = up = replace(current, escalation=step, notified_ms=due_ms)
        return _notify("escalated", current.level, up, due_ms)

    def reach(self, fingerprint: str, step: int) -> Alert | None:
        """Record that the alert has reached `step` without a notification of its own
        (the steps due when it opens: they get its `firing`)."""
        current = self._open.get(fingerprint)
        if current is None or step <= current.escalation:
            return current
        self._open[fingerprint] = up = replace(current, escalation=step)
        return up

    def mute(self, fingerprint: str) -> Alert | None:
        """A silence held back a notification of this open alert: remember it, so the
        end of the silence announces it."""
        current = self._open.get(fingerprint)
        if current is None or current.muted:
            return current
        self._open[fingerprint] = muted = replace(current, muted=True)
        return muted

    def unmuted(self, now_ms: int, still_muted: Callable[[Alert], bool]) -> list[Notification]:
        """A "repeated" notification, now, for each muted open alert no silence holds
        any more (rather than waiting for the next reminder)."""
        out = []
        for fp, alert in list(self._open.items()):
            if alert.muted and not still_muted(alert):
                self._open[fp] = back = replace(alert, muted=False, notified_ms=now_ms)
                out.append(_notify("repeated", alert.level, back, now_ms))
        return out


def _notify(event: Event, previous: Level, alert: Alert, ts_ms: int) -> Notification:
    return Notification(
        v=SCHEMA_VERSION,
        id=notification_id(alert.fingerprint, event, alert.level, ts_ms, seq=alert.seq),
        event=event,
        previous=previous,
        alert=alert,
        ts_ms=ts_ms,
    )
