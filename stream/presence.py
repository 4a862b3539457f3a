"""Presence: is each sensor node still with us? Pure: no I/O, no clock reads.

Two signals, because each catches what the other misses:

- *offline* is said out loud. When an edge agent's connection dies, the
  broker publishes the agent's MQTT last will ("offline", naming its nodes);
  a clean stop says "offline" too. We warn at once, not after a timeout.
- *silent* is inferred. A sensor can die behind a living agent (a cut serial
  cable, a flat battery) while the agent goes on heartbeating for it, and a
  network can fail in ways no will covers. Nodes report at least every
  `max_silent_s` (edge/report.py) precisely so that no reading for
  `silent_after_s` means trouble. Only readings keep that clock running: a
  heartbeat proves the agent alive, not the sensor.

Time is the gateway's receive time (`received_ms`), and the `now_ms` of a
sweep must come from the same clock. A node's own clock may be wrong, and
readings an agent buffered through an outage arrive late with old timestamps
yet are fresh news. Receive time also orders events: a message the gateway
received before the node went offline (handled late, because readings and
statuses travel on different topics) cannot bring it back. The node's time
serves one purpose: an "online" status no newer than one already seen is a
retained message replayed on reconnect, not news. A last will's own time is
no use at all: MQTT fixes a will's payload when the connection opens, so it
carries the connect time, older than everything the connection then sent.

One alert per node: offline and silent share the fingerprint
`fingerprint(rule="presence", node=...)`, so a node that falls silent and
then goes offline is paged once; the warning's `rule` says which signal
raised it. A node never heard alive is never warned about: it may simply
not be deployed yet.

>>> from cityvitals.contract import Placement
>>> where = Placement(district="Harbour", street="Dockside Street", grid="HB-101",
...                   unit="harbour-ops", lat=31.2, lon=121.5)
>>> tracker = PresenceTracker(PresencePolicy(silent_after_s=900))
>>> p, t0 = Presence(), 1_764_028_800_000
>>> def reading(at_ms: int, seq: int) -> Warning | None:
...     return tracker.heard(p, node="wl-0001", kind="water_level", placement=where,
...                          received_ms=at_ms, seq=seq)
>>> reading(t0, seq=1) is None, tracker.sweep(p, node="wl-0001", now_ms=t0 + 899_999) is None
(True, True)
>>> w = tracker.sweep(p, node="wl-0001", now_ms=t0 + 900_000)
>>> w.rule, w.level.label, w.value, w.threshold, p.state
('presence.silent', 'yellow', 900.0, 900.0, 'silent')
>>> tracker.sweep(p, node="wl-0001", now_ms=t0 + 990_000) is None  # raised once
True
>>> w = reading(t0 + 1_500_000, seq=2)
>>> w.cleared, w.previous.label, w.value, p.state
(True, 'yellow', 1500.0, 'online')
>>> decode_presence(encode_presence(p)) == p
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal

import msgspec

from cityvitals.contract import CONTRACT_VERSION, Evidence, Placement, Warning, fingerprint
from cityvitals.kinds import Kind
from cityvitals.levels import WARNING_LEVELS, Level
from stream.state import StateCodec

State = Literal["unknown", "online", "offline", "silent"]

RULE_SILENT: Final = "presence.silent"
RULE_OFFLINE: Final = "presence.offline"
METRIC: Final = "silence_s"
UNIT: Final = "s"

_KINDS: Final = frozenset(k.value for k in Kind)


class Presence(msgspec.Struct, array_like=True, omit_defaults=True):
    """One node's presence, kept between messages as `encode_presence` bytes.

    Encoded as an array (no field names): add new fields at the end, with a
    default, and bytes written before still decode.
    """

    state: State = "unknown"
    kind: str = ""
    #: From the latest message; a warning needs it, and a sweep has no message.
    placement: Placement | None = None
    #: The silence clock: receive time (Unix ms) of the latest reading, or of
    #: the status that brought the node (back) online.
    heard_ms: int = 0
    #: Receive time of the latest sign of life: a reading or a fresh "online".
    seen_ms: int = 0
    #: The newest status time seen (the agent's clock): spots retained replays.
    status_ts_ms: int = 0
    #: Sequence number of the latest reading, for the warning's `seq`.
    last_seq: int = -1
    #: Receive time (or sweep time, for silent) at which `state` began.
    since_ms: int = 0
    #: Level of the presence warning raised and not yet cleared.
    warned: Level = Level.NONE
    #: The agent that last said this node was online.
    agent: str = ""


_codec = StateCodec(Presence)


def encode_presence(p: Presence) -> bytes:
    return _codec.encode(p)


def decode_presence(data: bytes | None) -> Presence:
    """Decode stored presence; no bytes means a node not seen before."""
    return _codec.decode(data)


@dataclass(frozen=True, slots=True)
class PresencePolicy:
    """When a node counts as silent, and how loud a presence warning is."""

    #: No reading for this long, in seconds, and the node is silent.
    silent_after_s: float = 900.0
    #: Per sensor kind, overrides of `silent_after_s` (kinds that report rarely).
    silent_after_by_kind: Mapping[str, float] = field(default_factory=dict)
    level: Level = Level.YELLOW

    def __post_init__(self) -> None:
        by_kind = dict(self.silent_after_by_kind)
        unknown = sorted(set(by_kind) - _KINDS)
        if unknown:
            raise ValueError(f"silent_after_by_kind: unknown sensor kinds {unknown}")
        durations = {"silent_after_s": self.silent_after_s}
        durations.update({f"silent_after_by_kind[{k!r}]": v for k, v in by_kind.items()})
        for name, seconds in durations.items():
            if not (math.isfinite(seconds) and seconds > 0):
                raise ValueError(f"{name} must be a positive number of seconds, not {seconds!r}")
        if self.level not in WARNING_LEVELS:
            raise ValueError(f"level must be one of blue, yellow, orange, red, not {self.level!r}")
        object.__setattr__(self, "level", Level(self.level))
        # A private read-only copy: the caller's dict cannot change the policy later.
        object.__setattr__(self, "silent_after_by_kind", MappingProxyType(by_kind))

    def silent_after_ms(self, kind: str) -> int:
        """The silence timeout for `kind`, in milliseconds."""
        return round(self.silent_after_by_kind.get(kind, self.silent_after_s) * 1000)


class PresenceTracker:
    """Folds readings, statuses and timer sweeps into one node's `Presence`.

    Each method mutates the presence in place and returns a `Warning` only
    when the presence warning is raised or cleared, never for a repeat.
    """

    def __init__(self, policy: PresencePolicy | None = None) -> None:
        self.policy = policy or PresencePolicy()

    def heard(
        self,
        p: Presence,
        *,
        node: str,
        kind: str,
        placement: Placement,
        received_ms: int,
        seq: int,
    ) -> Warning | None:
        """A reading arrived: the sensor itself works."""
        if received_ms < p.heard_ms:
            return None  # older than a reading already heard: out of order after a reconnect
        before_ms = p.heard_ms
        _note(p, kind, placement)
        p.heard_ms = received_ms
        p.seen_ms = max(p.seen_ms, received_ms)
        p.last_seq = seq
        if p.state == "offline" and received_ms <= p.since_ms:
            return None  # received before the node went offline, handled late
        return self._online(p, node=node, at_ms=received_ms, heard_ms=before_ms)

    def status(
        self,
        p: Presence,
        *,
        node: str,
        kind: str,
        placement: Placement,
        state: Literal["online", "offline"],
        received_ms: int,
        ts_ms: int,
        agent: str | None = None,
    ) -> Warning | None:
        """A node's status, or its agent's fanned out: birth, heartbeat, last will, stop."""
        if state == "online":
            return self._status_online(
                p,
                node=node,
                kind=kind,
                placement=placement,
                received_ms=received_ms,
                ts_ms=ts_ms,
                agent=agent,
            )
        if received_ms < p.seen_ms:
            return None  # the node was heard alive after this was received: stale
        if agent and p.agent and agent != p.agent:
            return None  # another agent serves the node now: its old will is not news
        _note(p, kind, placement)
        # For a will this is the connect time: harmless under max(), see the module doc.
        p.status_ts_ms = max(p.status_ts_ms, ts_ms)
        if p.state == "offline":
            return None
        p.state, p.since_ms = "offline", received_ms
        if p.warned is not Level.NONE or p.heard_ms == 0:
            return None  # already warned (silent first), or never heard alive
        return self._raise(p, node=node, rule=RULE_OFFLINE, at_ms=received_ms, threshold=None)

    def sweep(self, p: Presence, *, node: str, now_ms: int) -> Warning | None:
        """The timer: an online node with no reading for the timeout falls silent."""
        if p.state != "online" or p.heard_ms == 0:
            return None  # offline and silent are raised already; unknown was never heard
        timeout_ms = self.policy.silent_after_ms(p.kind)
        if now_ms - p.heard_ms < timeout_ms:
            return None
        p.state, p.since_ms = "silent", now_ms
        if p.warned is not Level.NONE:
            return None
        return self._raise(p, node=node, rule=RULE_SILENT, at_ms=now_ms, threshold=timeout_ms)

    # -- the steps --------------------------------------------------------------

    def _status_online(
        self,
        p: Presence,
        *,
        node: str,
        kind: str,
        placement: Placement,
        received_ms: int,
        ts_ms: int,
        agent: str | None,
    ) -> Warning | None:
        if ts_ms <= p.status_ts_ms:
            return None  # a retained status replayed on reconnect, or one overtaken
        _note(p, kind, placement)
        p.status_ts_ms = ts_ms
        p.seen_ms = max(p.seen_ms, received_ms)
        if agent:
            p.agent = agent
        if p.state in {"online", "silent"}:
            return None  # a heartbeat: the agent is alive, which says nothing of the sensor
        if p.state == "offline" and received_ms <= p.since_ms:
            return None  # received before the offline, handled late
        # Unknown or offline: (back) online; the sensor has the timeout to report.
        before_ms = p.heard_ms
        p.heard_ms = max(p.heard_ms, received_ms)
        return self._online(p, node=node, at_ms=received_ms, heard_ms=before_ms)

    def _online(self, p: Presence, *, node: str, at_ms: int, heard_ms: int) -> Warning | None:
        was = p.state
        if was == "online":
            return None
        p.state, p.since_ms = "online", at_ms
        if p.warned is Level.NONE:
            return None
        rule = RULE_SILENT if was == "silent" else RULE_OFFLINE
        threshold = self.policy.silent_after_ms(p.kind) if rule == RULE_SILENT else None
        cleared = _warning(
            p,
            node=node,
            rule=rule,
            level=Level.NONE,
            at_ms=at_ms,
            heard_ms=heard_ms,
            threshold_ms=threshold,
        )
        if cleared is not None:
            p.warned = Level.NONE
        return cleared

    def _raise(
        self, p: Presence, *, node: str, rule: str, at_ms: int, threshold: int | None
    ) -> Warning | None:
        raised = _warning(
            p,
            node=node,
            rule=rule,
            level=self.policy.level,
            at_ms=at_ms,
            heard_ms=p.heard_ms,
            threshold_ms=threshold,
        )
        if raised is not None:
            p.warned = self.policy.level
        return raised


def _note(p: Presence, kind: str, placement: Placement) -> None:
    # The registry may move a node: the latest message's placement wins.
    p.kind, p.placement = str(kind), placement


def _warning(
    p: Presence,
    *,
    node: str,
    rule: str,
    level: Level,
    at_ms: int,
    heard_ms: int,
    threshold_ms: int | None,
) -> Warning | None:
    """The warning for a raise or a clear at `at_ms`, the node last heard at `heard_ms`.

    `value` is the silence in seconds: so far, for a raise; its whole length,
    for a clear. The evidence is that silence as two points of the metric,
    (last heard, 0) and (now, value), in receive time like the metric itself.
    """
    if p.placement is None or not p.kind:
        return None  # never enriched: a warning could not say where to go
    silence_s = (at_ms - heard_ms) / 1000
    return Warning(
        v=CONTRACT_VERSION,
        fingerprint=fingerprint(rule="presence", node=node),
        rule=rule,
        node=node,
        kind=Kind(p.kind),
        metric=METRIC,
        level=level,
        previous=p.warned,
        value=silence_s,
        threshold=None if threshold_ms is None else threshold_ms / 1000,
        unit=UNIT,
        ts_ms=at_ms,
        seq=max(p.last_seq, 0),
        placement=p.placement,
        evidence=(Evidence(ts_ms=heard_ms, value=0.0), Evidence(ts_ms=at_ms, value=silence_s)),
    )
