"""Alerts and the notifications that announce them; the webhook body, schema v1.

An `Alert` is the operator-facing state of one early-warning condition (one
warning fingerprint). A `Notification` announces one change of that state and
is exactly what a webhook receives, encoded with `cityvitals.contract.encode`:

``v``
    Schema version, always ``1``. Fields may be *added* within v1, so a
    receiver must ignore fields it does not know; renaming or removing a field
    bumps ``v``.
``id``
    Idempotency key (16 hex chars), also sent as the ``Idempotency-Key``
    header. Derived from the alert fingerprint, the event, the new level, the
    warning's ``ts_ms`` and its ``seq``, so a retry or a replay of the same change carries
    the same id and a receiver can drop the duplicate.
``event``
    ``"firing"`` (a new alert), ``"level_changed"`` (raised or lowered while
    open), ``"acknowledged"`` (someone took it), ``"repeated"`` (a reminder:
    still firing and nobody has acknowledged it, or a silence over it
    ended), ``"escalated"`` (nobody acknowledged it in time: the next step of
    the escalation ladder is called in) or ``"resolved"`` (the warning
    cleared, or someone resolved it by hand). Also the
    ``X-Cityvitals-Event`` header. A receiver must accept events it does not
    know (v1 gains them, as it gains fields).
``previous``
    The alert's level before this change; ``0`` for a new alert.
``ts_ms``
    When the change happened: the warning's event time in Unix milliseconds,
    not the time of delivery.
``step``
    Only on ``escalated``: the name of the escalation step called in
    (``[alerts.escalation] steps``: grid, street, district, city).
``incident``
    The id of the incident the alert is grouped in: alerts of one kind in one
    district (or street, or grid: ``[alerts] group_by``) close in time. One
    rainstorm is one incident.
``ack_url``
    Only when the alerts API has a public URL, on notifications of an alert
    nobody has acknowledged: a signed link, valid for a day by default,
    whose page acknowledges the alert (docs/alerts.md).
``alert``
    The alert after the change:

    - ``fingerprint``, ``rule``, ``node``, ``kind``, ``metric``, ``unit``: what
      is being watched; ``fingerprint`` is stable for the alert's life.
    - ``placement``: ``district``, ``street``, ``grid``, ``unit`` (the
      responsible unit), ``lat``, ``lon``.
    - ``level``: 1 blue (IV) .. 4 red (I); ``0`` once resolved.
      ``peak_level``: the highest level it reached.
    - ``state``: ``"firing"``, ``"acknowledged"`` (still open, someone has it),
      ``"resolved"`` or ``"closed"``.
    - ``started_ms``, ``updated_ms``, ``resolved_ms`` (``null`` while open);
      ``acknowledged_ms`` and ``acknowledged_by``, ``resolved_by`` (a hand
      resolve), ``closed_ms``, when they apply (left out otherwise);
      ``notified_ms``: when it was last announced (a change or a reminder);
      ``muted`` (only while true, so never in a body sent): a silence holds it;
      ``escalation``: the index of the escalation step last reached (left out
      before the first).
    - ``value`` (latest, in ``unit``), ``threshold`` (the rule's threshold for
      the current level, or ``null``), ``seq`` (the reading that last changed it).
    - ``area`` (only for a spatial rule's alert, whose ``node`` is ``""``):
      ``scope`` (grid, street, district), ``name``, ``members`` (each
      ``node``, ``level``, ``value``, ``ts_ms``: the nodes counted, strongest
      first) and ``total`` (the area's registered nodes). Its ``value`` is
      how many nodes reached the level, ``threshold`` how many it needs.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

from cityvitals.contract import Area, Placement, fingerprint
from cityvitals.kinds import Kind
from cityvitals.levels import Level

SCHEMA_VERSION: Final = 1

State = Literal["firing", "acknowledged", "resolved", "closed"]
Event = Literal["firing", "level_changed", "acknowledged", "repeated", "escalated", "resolved"]
#: The states of an alert that is still open (its condition holds, or nobody resolved it).
OPEN_STATES: Final = ("firing", "acknowledged")


class Alert(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One early-warning condition as operators see it; change with `msgspec.structs.replace`."""

    fingerprint: str
    rule: str
    node: str
    kind: Kind
    metric: str
    unit: str
    placement: Placement
    level: Level
    peak_level: Level
    state: State
    started_ms: int
    updated_ms: int
    resolved_ms: int | None
    value: float
    threshold: float | None
    seq: int
    area: Area | None = None
    #: Who acknowledged it and when (`acknowledged`); who resolved or closed it by hand.
    acknowledged_ms: int | None = None
    acknowledged_by: str = ""
    resolved_by: str = ""
    closed_ms: int | None = None
    #: When it was last announced (a change or a reminder): the repeat interval counts
    #: from here. 0: not yet.
    notified_ms: int = 0
    #: Set while a silence keeps its notifications back; when the silence ends, the
    #: alert is announced at once if still open.
    muted: bool = False
    #: The escalation ladder's last step reached (`alerts.escalation`); -1: none.
    escalation: int = -1

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES

    @property
    def subject(self) -> str:
        """The node, or the area's key (`street:Dock Street`) for an area alert."""
        return self.node if self.area is None else self.area.key


class Notification(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One change of one alert: the unit of delivery and the webhook body (see module doc)."""

    v: Literal[1]
    id: str
    event: Event
    previous: Level
    alert: Alert
    ts_ms: int
    #: A signed, expiring link that acknowledges the alert (when the API has a public URL).
    ack_url: str | None = None
    #: The incident the alert belongs to (`alerts.incidents`): alerts of one kind and
    #: place, close in time.
    incident: str | None = None
    #: On `escalated`: the name of the escalation step called in (grid, street, ...).
    step: str | None = None


def notification_id(
    alert_fingerprint: str, event: Event, level: Level, ts_ms: int, *, seq: int = 0
) -> str:
    """Idempotency key of one change: equal inputs, equal key; any input differs, key differs.

    `seq` is the warning's: an area's changes can share a reading time (a late
    raise and the lowering after it; a level reached again before a newer
    reading), and its seq tells them apart.

    >>> a = notification_id("fp", "firing", Level.RED, 1_000)
    >>> a == notification_id("fp", "firing", Level.RED, 1_000)
    True
    >>> a == notification_id("fp", "level_changed", Level.RED, 1_000)
    False
    """
    return fingerprint(
        fingerprint=alert_fingerprint,
        event=event,
        level=level.label,
        ts_ms=str(ts_ms),
        seq=str(seq),
    )


# Receivers written in Python can reuse this; unknown fields are ignored on
# purpose so a v1 receiver keeps working when v1 gains a field.
_notification_decoder: Final = msgspec.json.Decoder(Notification)


def decode_notification(data: bytes) -> Notification:
    """Decode a webhook body; `msgspec.ValidationError` if it is not a v1 notification."""
    return _notification_decoder.decode(data)
