"""Decide what becomes of one MQTT message. Pure: no I/O, never raises.

Both gateways (the embedded one, which awaits in-process sinks, and the
distributed one, which produces to Kafka) route through this, so they accept,
refuse and count exactly alike:

- telemetry: validate → drop duplicates by (node, seq) → `Route.reading`, an
  `EnrichedReading` keyed by node;
- a node's status: validate → `Route.presence`, one `PresenceReport`;
- an edge agent's status: validate → one `PresenceReport` per node it lists
  (its last will is the only word its nodes get out when it loses power);
  with `owners` (the agents file), only for the nodes that are its own, and a
  `not_owner` dead letter naming the others: the broker's ACL stops an agent
  publishing *as* another, not claiming another's nodes offline in its own
  status;
- an edge event: validate and count (the early-warning issue acts on them);
- anything that fails: `Route.refused`, a `DeadLetter` with the reason and
  the raw bytes.

>>> from cityvitals.clock import ManualClock
>>> from cityvitals.registry import Registry
>>> router = Router(Registry(()), clock=ManualClock(1_764_028_800))
>>> route = router.route("city/smoke/sm-1/telemetry", b'{"v": 1}')
>>> route.refused.reason.value, route.readings
('schema', ())
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import msgspec

from cityvitals.clock import Clock
from cityvitals.contract import (
    CONTRACT_VERSION,
    AgentStatus,
    DeadLetter,
    EnrichedReading,
    Placement,
    PresenceReport,
    Reason,
    encode,
)
from cityvitals.errors import ContractError
from cityvitals.kinds import Kind
from cityvitals.registry import Registry
from cityvitals.topics import AGENT_SEGMENT, Topic
from gateway.dedup import SeqWindow, Verdict
from gateway.validate import Validator

log = logging.getLogger(__name__)

#: How much of a refused payload a dead letter keeps; its full size is recorded.
DEAD_LETTER_KEEP_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Keyed:
    """A record for the stream: key (the node id) and encoded value."""

    key: bytes
    value: bytes
    node: str
    seq: int = -1


@dataclass(frozen=True, slots=True)
class Route:
    """Where one message goes; empty when it is a duplicate or needs no forwarding."""

    readings: tuple[Keyed, ...] = ()
    presence: tuple[Keyed, ...] = ()
    refused: DeadLetter | None = None
    #: An edge agent's own status, for its health figures (buffer depth...).
    agent: AgentStatus | None = None


_NOTHING = Route()


@dataclass(frozen=True, slots=True)
class RouterStats:
    received: int
    forwarded: int
    duplicates: int
    statuses: int
    events: int
    dead_letters: int
    by_reason: dict[str, int]
    #: Agent statuses used for their own nodes but naming others' too (the agents
    #: file): each counts as a status, and its foreign claims go to a `not_owner`
    #: dead letter that is not one of `dead_letters` (those are whole messages), so
    #: the counts still add up to what was received.
    refused_claims: int = 0


class Router:
    def __init__(
        self,
        registry: Registry,
        *,
        clock: Clock,
        validator: Validator | None = None,
        dedup: SeqWindow | None = None,
        owners: Mapping[str, str] | None = None,
    ) -> None:
        self._clock = clock
        #: node -> the edge agent that speaks for it; None: any agent may.
        self._owners = owners
        self._validator = validator or Validator(registry)
        self._dedup = dedup or SeqWindow()
        self._counts: Counter[str] = Counter()
        self._reasons: Counter[str] = Counter()
        self._internal_error_logged = False

    def stats(self) -> RouterStats:
        c = self._counts
        return RouterStats(
            received=c["received"],
            forwarded=c["forwarded"],
            duplicates=c["duplicate"],
            statuses=c["status"],
            events=c["event"],
            dead_letters=c["dead_letter"],
            by_reason=dict(self._reasons),
            refused_claims=c["refused_claims"],
        )

    def route(self, topic: str, payload: bytes) -> Route:
        """Route one message; whatever the input, returns (never raises)."""
        self._counts["received"] += 1
        try:
            parsed = self._validator.topic(topic)
            if parsed.channel == "telemetry":
                return self._telemetry(parsed, payload)
            if parsed.channel == "status":
                route = self._status(topic, parsed, payload)
                self._counts["status"] += 1
                return route
            self._validator.event(parsed, payload)
        except ContractError as exc:
            return self.refuse(topic, payload, Reason(exc.reason), exc.detail)
        except Exception as exc:
            # A bug of ours: keep the bytes with the reason (the first time
            # with a traceback) so the message can be replayed once fixed.
            if not self._internal_error_logged:
                self._internal_error_logged = True
                log.exception("gateway: internal error on %s", topic)
            return self.refuse(topic, payload, Reason.INTERNAL, f"{type(exc).__name__}: {exc}")
        self._counts["event"] += 1
        return _NOTHING

    def refuse(self, topic: str, payload: bytes, reason: Reason, detail: str) -> Route:
        """A dead letter for `payload`; also for callers whose sink failed after routing."""
        if not self._reasons[reason.value]:
            # One line per new kind of trouble, not one per message.
            log.warning("gateway: first dead letter for %s on %s: %s", reason.value, topic, detail)
        self._counts["dead_letter"] += 1
        self._reasons[reason.value] += 1
        return Route(
            refused=DeadLetter(
                v=CONTRACT_VERSION,
                received_ms=self._clock.now_ms(),
                source="gateway",
                topic=topic[:512],
                reason=reason,
                detail=detail[:2048],
                payload=payload[:DEAD_LETTER_KEEP_BYTES],
                payload_size=len(payload),
            )
        )

    def forget(self, node: str, seq: int) -> None:
        """Let (node, seq) through again: it was routed but never delivered."""
        self._dedup.forget(node, seq)

    def unforward(self) -> None:
        """Take back one `forwarded` count: the caller's sink refused the reading."""
        self._counts["forwarded"] -= 1

    def _telemetry(self, topic: Topic, payload: bytes) -> Route:
        reading, device = self._validator.telemetry(topic, payload)
        if self._dedup.check(reading.node, reading.seq) is Verdict.DUPLICATE:
            self._counts["duplicate"] += 1
            return _NOTHING
        envelope = EnrichedReading(
            v=CONTRACT_VERSION,
            reading=msgspec.Raw(payload),
            placement=device.placement,
            received_ms=self._clock.now_ms(),
        )
        self._counts["forwarded"] += 1
        node = reading.node
        return Route(readings=(Keyed(node.encode(), encode(envelope), node, reading.seq),))

    def _status(self, raw_topic: str, topic: Topic, payload: bytes) -> Route:
        if not payload:
            return _NOTHING  # an empty retained message only clears the retained status
        now = self._clock.now_ms()
        if topic.kind == AGENT_SEGMENT:
            agent = self._validator.agent_status(topic, payload)
            reports, foreign = [], []
            for ref in agent.nodes:
                if self._owners is not None and self._owners.get(ref.node) != agent.agent:
                    foreign.append(ref.node)
                    continue
                device = self._validator.registry.get(ref.node)
                if device is None or device.kind != ref.kind:
                    # The agent serves a node the registry does not know (yet):
                    # its readings are dead-lettered on their own; nothing to say here.
                    continue
                reports.append(
                    _presence(
                        ref.node,
                        ref.kind,
                        agent.state,
                        agent.ts_ms,
                        received_ms=now,
                        placement=device.placement,
                        agent=agent.agent,
                        reason=agent.reason,
                    )
                )
            refused = None
            if foreign:
                refused = self._refused_claims(raw_topic, payload, agent.agent, foreign)
            return Route(presence=tuple(reports), agent=agent, refused=refused)
        status, device = self._validator.status(topic, payload)
        report = _presence(
            status.node,
            status.kind,
            status.state,
            status.ts_ms,
            received_ms=now,
            placement=device.placement,
            agent=status.agent,
            reason=status.reason,
        )
        return Route(presence=(report,))

    def _refused_claims(
        self, topic: str, payload: bytes, agent: str, nodes: list[str]
    ) -> DeadLetter:
        owners = self._owners or {}
        said = [f"{n} ({owners[n]}'s)" if n in owners else f"{n} (nobody's)" for n in nodes[:10]]
        more = f" and {len(nodes) - 10} more" if len(nodes) > 10 else ""
        detail = (
            f"agent {agent} speaks for nodes the agents file does not give it: "
            + ", ".join(said)
            + more
            + "; their presence in this status is ignored"
        )
        if not self._counts["refused_claims"]:
            log.warning("gateway: first status claiming another agent's nodes: %s", detail)
        self._counts["refused_claims"] += 1
        return DeadLetter(
            v=CONTRACT_VERSION,
            received_ms=self._clock.now_ms(),
            source="gateway",
            topic=topic[:512],
            reason=Reason.NOT_OWNER,
            detail=detail[:2048],
            payload=payload[:DEAD_LETTER_KEEP_BYTES],
            payload_size=len(payload),
        )


def _presence(
    node: str,
    kind: Kind,
    state: Literal["online", "offline"],
    ts_ms: int,
    *,
    received_ms: int,
    placement: Placement,
    agent: str | None,
    reason: str | None,
) -> Keyed:
    report = PresenceReport(
        v=CONTRACT_VERSION,
        node=node,
        kind=kind,
        state=state,
        ts_ms=ts_ms,
        received_ms=received_ms,
        placement=placement,
        agent=agent,
        reason=reason,
    )
    return Keyed(node.encode(), encode(report), node)
