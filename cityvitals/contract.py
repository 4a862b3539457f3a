"""The message contract: every byte that crosses a process boundary.

Messages are JSON objects decoded by msgspec into frozen structs. Decoding is
strict (no unknown fields, no type coercion) and fast (one pass, reused
decoders). Every message carries the contract version `v`; a receiver that
sees a version it does not speak rejects the message rather than guessing.

A failure is always a `ContractError` whose `reason` is one of `Reason`, so
dead-letter records group by a stable code while `detail` says exactly what
was wrong:

>>> raw = b'{"v":1,"node":"wl-0001","kind":"water_level","seq":7,"ts_ms":1764028800000,'
>>> r = decode_reading(raw + b'"metrics":{"depth_cm":12.5}}')
>>> r.node, r.seq, r.metrics
('wl-0001', 7, {'depth_cm': 12.5})
>>> try:
...     decode_reading(raw + b'"metrics":{"depth_cm":-4.0}}')
... except ContractError as exc:
...     print(exc.reason, "|", exc.detail)
out_of_range | depth_cm=-4.0 is outside 0.0..1000.0 cm for water_level
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import Annotated, Final, Literal, TypeVar

import msgspec

from cityvitals.errors import ContractError
from cityvitals.kinds import BATTERY, KIND_METRICS, RSSI, Kind, MetricSpec
from cityvitals.levels import Level

CONTRACT_VERSION: Final = 1
#: Payloads above this are dead-lettered unread; a sensor reading is < 1 KiB.
MAX_PAYLOAD_BYTES: Final = 16 * 1024
#: Bounds for any timestamp: 2000-01-01 .. 2100-01-01 UTC, in milliseconds.
MIN_TS_MS: Final = 946_684_800_000
MAX_TS_MS: Final = 4_102_444_800_000


class Reason(StrEnum):
    """Why a message was refused. Stable: dashboards and alerts group by it."""

    OVERSIZED = "oversized"
    MALFORMED = "malformed_json"
    SCHEMA = "schema"
    VERSION = "unsupported_version"
    UNKNOWN_KIND = "unknown_kind"
    UNKNOWN_METRIC = "unknown_metric"
    OUT_OF_RANGE = "out_of_range"
    BAD_TOPIC = "bad_topic"
    TOPIC_MISMATCH = "topic_mismatch"
    UNKNOWN_NODE = "unknown_node"
    KIND_MISMATCH = "kind_mismatch"
    #: An edge agent's status speaks for nodes the agents file gives to another
    #: agent (or to none): those claims are ignored, the rest of it is used.
    NOT_OWNER = "not_owner"
    #: Not the sender's fault: our own processing failed. The bytes are kept
    #: so the message can be replayed once the fault is fixed.
    INTERNAL = "internal_error"


# \Z, not $: Python's $ also matches before a trailing newline.
NodeId = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}\Z")]
Seq = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
TsMs = Annotated[int, msgspec.Meta(ge=MIN_TS_MS, le=MAX_TS_MS)]
T = TypeVar("T")

MetricName = Annotated[str, msgspec.Meta(max_length=64)]
Text = Annotated[str, msgspec.Meta(max_length=1024)]


class _Strict(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Base for every message: immutable, strict, compact on the wire."""


class Reading(_Strict, frozen=True):
    """One sample from one sensor node, as the node (or its agent) reports it."""

    v: Literal[1]
    node: NodeId
    kind: Kind
    seq: Seq
    ts_ms: TsMs
    metrics: Annotated[dict[MetricName, float], msgspec.Meta(min_length=1, max_length=16)]
    battery_pct: float | None = None
    rssi_dbm: float | None = None


class NodeStatus(_Strict, frozen=True):
    """Presence, on `.../status`: retained birth, last will, and heartbeats."""

    v: Literal[1]
    node: NodeId
    kind: Kind
    state: Literal["online", "offline"]
    ts_ms: TsMs
    agent: Text | None = None
    uptime_s: float | None = None
    battery_pct: float | None = None
    rssi_dbm: float | None = None
    buffer_depth: int | None = None
    reason: Text | None = None


class NodeRef(_Strict, frozen=True):
    node: NodeId
    kind: Kind


class AgentStatus(_Strict, frozen=True):
    """Presence of an edge agent, on `city/agent/<agent>/status`, retained.

    MQTT gives a connection one last will, and an agent serves several nodes
    over one connection, so the will is the agent's: "offline" with the nodes
    it speaks for. A node is online while its own status says so *and* its
    agent's does. Heartbeats repeat "online" with the agent's health: queue
    depth and losses, and per serial link the frame and error counters.
    """

    v: Literal[1]
    agent: NodeId
    state: Literal["online", "offline"]
    ts_ms: TsMs
    nodes: tuple[NodeRef, ...] = ()
    uptime_s: float | None = None
    buffer_depth: int | None = None
    buffer_bytes: int | None = None
    dropped: int | None = None
    links: dict[Annotated[str, msgspec.Meta(max_length=64)], dict[str, int]] | None = None
    reason: Text | None = None


class EdgeEvent(_Strict, frozen=True):
    """A condition the edge judged critical on its own (cover opened, alarm contact)."""

    v: Literal[1]
    node: NodeId
    kind: Kind
    ts_ms: TsMs
    event: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,63}\Z")]
    level: Level = Level.NONE
    count: int | None = None
    detail: Text | None = None
    #: Identity of this event: a resend (QoS 1 is at least once) carries the
    #: same id, so a receiver adding up loss counts can drop the repeat.
    id: Text | None = None


class Placement(_Strict, frozen=True):
    """Where a node is, administratively and on the map (from the registry)."""

    district: str
    street: str
    grid: str
    unit: str
    lat: float
    lon: float


class EnrichedReading(_Strict, frozen=True):
    """What the gateway hands to the stream: the validated bytes plus placement.

    `reading` is the exact JSON the node sent (`msgspec.Raw`): the gateway
    forwards what it validated instead of re-encoding it.
    """

    v: Literal[1]
    reading: msgspec.Raw
    placement: Placement
    received_ms: int


class PresenceReport(_Strict, frozen=True):
    """What the gateway hands to the stream about a node being online or offline.

    Made from a node's own retained status (birth, heartbeat, last will) or
    fanned out from its edge agent's status, which lists the agent's nodes:
    an agent's last will is the only word a node behind it gets out when the
    agent loses power. Keyed by node, like readings, so a node's presence and
    its readings are handled by the same stream worker in order.
    """

    v: Literal[1]
    node: NodeId
    kind: Kind
    state: Literal["online", "offline"]
    ts_ms: int
    received_ms: int
    placement: Placement
    #: Set when the report came from the node's agent rather than the node.
    agent: str | None = None
    reason: str | None = None


class Evidence(_Strict, frozen=True):
    ts_ms: int
    value: float


#: The node a warning is about; empty for an area warning (see `Area`).
WarningNode = Annotated[str, msgspec.Meta(pattern=r"^(?:[a-z0-9][a-z0-9_-]{0,63})?\Z")]
AreaScope = Literal["grid", "street", "district"]


class AreaMember(_Strict, frozen=True):
    """One node counted by an area warning: its level and the warning that set it."""

    node: NodeId
    level: Level
    value: float
    ts_ms: int


class Area(_Strict, frozen=True):
    """What an area warning (a spatial rule's) is about: k of n nodes of one place.

    `members` are the nodes at or above the level the area reached (or, for a
    clear, that it left), strongest first; `total` is how many nodes of the
    rule's kind the registry places there (0 when the stream has no registry).
    """

    scope: AreaScope
    name: str
    members: tuple[AreaMember, ...]
    total: int = 0
    #: The reading time the area's level was judged at. The warning's `ts_ms` is
    #: the newest reading time seen there, which is later when readings arrived
    #: out of order (edge buffers flushed after an outage).
    at_ms: int = 0

    @property
    def key(self) -> str:
        """`grid:HB-101`: the area's identity, for fingerprints and display."""
        return f"{self.scope}:{self.name}"


class Warning(_Strict, frozen=True):
    """An early-warning state change for one (rule, node) or (rule, area): raised,
    changed or cleared.

    `fingerprint` is the identity of the condition, stable across level
    changes, so downstream an alert is updated rather than duplicated.

    An area warning (a spatial rule: k of n nodes of a grid, street or
    district) has `area` set and `node` empty; its `value` is how many nodes
    reached the level, `threshold` how many it needs, `seq` counts the area's
    changes (so a later change always has a higher one), and `placement` is
    what its members share (the rest empty; the map position is their
    centroid).
    """

    v: Literal[1]
    fingerprint: str
    rule: str
    node: WarningNode
    kind: Kind
    metric: str
    level: Level
    previous: Level
    value: float
    threshold: float | None
    unit: str
    ts_ms: int
    seq: int
    placement: Placement
    evidence: tuple[Evidence, ...] = ()
    predicted_crossing_ms: int | None = None
    area: Area | None = None

    @property
    def cleared(self) -> bool:
        return self.level is Level.NONE

    @property
    def subject(self) -> str:
        """What the warning is about: the node, or the area's key (`street:Dock Street`)."""
        return self.node if self.area is None else self.area.key


class DeadLetter(_Strict, frozen=True):
    """A message we could not accept, kept with its reason and its raw bytes."""

    v: Literal[1]
    received_ms: int
    source: str
    topic: str
    reason: Reason
    detail: str
    payload: bytes
    payload_size: int


_reading_decoder = msgspec.json.Decoder(Reading)
_status_decoder = msgspec.json.Decoder(NodeStatus)
_event_decoder = msgspec.json.Decoder(EdgeEvent)
_agent_status_decoder = msgspec.json.Decoder(AgentStatus)
_enriched_decoder = msgspec.json.Decoder(EnrichedReading)
_warning_decoder = msgspec.json.Decoder(Warning)
_presence_decoder = msgspec.json.Decoder(PresenceReport)
_dead_letter_decoder = msgspec.json.Decoder(DeadLetter)
_encoder = msgspec.json.Encoder()


def encode(message: msgspec.Struct) -> bytes:
    """Encode any contract message to compact JSON."""
    return _encoder.encode(message)


def _schema_error(exc: msgspec.ValidationError) -> ContractError:
    text = str(exc)
    # msgspec names the offending path in its message; map the paths that have
    # their own reason so operators can tell "old firmware" from "garbage".
    if text.endswith("`$.v`"):
        return ContractError(Reason.VERSION, f"{text} (this gateway speaks v{CONTRACT_VERSION})")
    if text.endswith("`$.kind`"):
        return ContractError(Reason.UNKNOWN_KIND, text)
    return ContractError(Reason.SCHEMA, text)


def _decode(decoder: msgspec.json.Decoder[T], data: bytes, limit: int) -> T:
    if len(data) > limit:
        raise ContractError(Reason.OVERSIZED, f"{len(data)} bytes exceeds the {limit} byte limit")
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise _schema_error(exc) from exc
    except msgspec.DecodeError as exc:
        raise ContractError(Reason.MALFORMED, str(exc)) from exc


def _check_range(spec: MetricSpec, value: float, kind: Kind) -> None:
    if not spec.contains(value):  # also false for NaN and inf
        raise ContractError(
            Reason.OUT_OF_RANGE,
            f"{spec.name}={value!r} is outside {spec.low}..{spec.high} {spec.unit} for {kind}",
        )


def validate_reading(reading: Reading) -> Reading:
    """Check what a schema cannot: metric names per kind and physical ranges."""
    specs = KIND_METRICS[reading.kind]
    for name, value in reading.metrics.items():
        spec = specs.get(name)
        if spec is None:
            raise ContractError(
                Reason.UNKNOWN_METRIC,
                f"{name!r} is not a {reading.kind} metric; expected one of {sorted(specs)}",
            )
        _check_range(spec, value, reading.kind)
    if reading.battery_pct is not None:
        _check_range(BATTERY, reading.battery_pct, reading.kind)
    if reading.rssi_dbm is not None:
        _check_range(RSSI, reading.rssi_dbm, reading.kind)
    return reading


def decode_reading(data: bytes, *, limit: int = MAX_PAYLOAD_BYTES) -> Reading:
    """Decode and fully validate a reading; `ContractError` says why not."""
    return validate_reading(_decode(_reading_decoder, data, limit))


def decode_status(data: bytes, *, limit: int = MAX_PAYLOAD_BYTES) -> NodeStatus:
    return _decode(_status_decoder, data, limit)


def decode_event(data: bytes, *, limit: int = MAX_PAYLOAD_BYTES) -> EdgeEvent:
    return _decode(_event_decoder, data, limit)


def decode_agent_status(data: bytes, *, limit: int = MAX_PAYLOAD_BYTES) -> AgentStatus:
    return _decode(_agent_status_decoder, data, limit)


def decode_enriched(data: bytes) -> tuple[EnrichedReading, Reading]:
    """Decode what the gateway produced; the inner reading was validated there."""
    envelope = _enriched_decoder.decode(data)
    return envelope, _reading_decoder.decode(envelope.reading)


def decode_warning(data: bytes) -> Warning:
    return _warning_decoder.decode(data)


def decode_presence(data: bytes) -> PresenceReport:
    return _presence_decoder.decode(data)


def decode_dead_letter(data: bytes) -> DeadLetter:
    return _dead_letter_decoder.decode(data)


def fingerprint(**labels: str) -> str:
    """Identity of a condition: a hash of its sorted labels, computed once.

    >>> fingerprint(rule="water.depth", node="wl-1") == fingerprint(node="wl-1", rule="water.depth")
    True
    >>> len(fingerprint(rule="r", node="n"))
    16
    """
    # JSON of the sorted pairs: unambiguous whatever characters the values hold.
    text = _encoder.encode(sorted(labels.items()))
    return hashlib.sha256(text).hexdigest()[:16]
