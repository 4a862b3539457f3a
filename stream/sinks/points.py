r"""The InfluxDB schema of cityvitals, as line protocol: pure functions, no I/O.

Three measurements (docs/influxdb.md has the whole schema and Flux queries):

- `reading`: one point per reading. Tags `node`, `kind`, `district`,
  `street`, `grid`, `unit`; a float field per metric, `lat`, `lon`,
  `battery_pct` and `rssi_dbm` (when reported), and the integers `seq` and
  `received_ms`; the time is the reading's `ts_ms`.
- `warning`: one point per warning state change. Tags `rule`, `node`,
  `kind`, `metric`, `district`, `street`, `grid`, `unit` and `level` (the
  label: none, blue, yellow, orange, red); fields `level_n`, `previous_n`,
  `seq` (integers), `value`, `threshold` and `predicted_crossing_ms` (when
  set), `fingerprint` (string); the time is the warning's `ts_ms`. An area
  warning (a spatial rule's) has no `node` tag but `area_scope` (grid,
  street, district) and `area` (its name), and the fields `members` (the
  counted nodes, comma-separated), `total` (the area's registered nodes),
  `lat` and `lon` (their centroid); its `value` is the count.
- `score`: one point per scored metric of a reading. Tags `node`, `kind`,
  `metric` and the placement; fields `anomaly_score` and `worst` (the name of
  the detector that scored highest); the time is the reading's.
- `pipeline`: a role's counters, every few seconds (`stream.sinks.meter`).
  Tags `role` (gateway, stream, alerts), `instance` and, for the alerts'
  deliveries, `receiver`; integer fields, counters since the process
  started (`received`, `dead_letters`, `delivered`, `failed`, ...) and
  levels (`backlog`, `pending`).
- `agent`: an edge agent's heartbeat (its `city/agent/<id>/status`). Tags
  `agent` and `state`; fields `buffer_depth`, `buffer_bytes`, `dropped`,
  `uptime_s` and `nodes`, those the heartbeat carries.

Timestamps are milliseconds (the sink writes with `precision=ms`). A point
is identified by its series (measurement and tags) and time, so writing the
same reading twice stores it once: shipping is idempotent, which is what
lets the sink re-send a batch whose answer it never got.

Escaping follows InfluxDB 2's parser (`models/points.go`): in tag values and
field keys a comma, an equals sign and a space get a backslash; string field
values escape `"` and `\`. Two things line protocol cannot carry in a tag
value are changed rather than sent broken: control characters (a newline
would end the line) become spaces, and trailing backslashes (which would
escape the separator after them) are dropped. A tag left empty is omitted,
as InfluxDB does not store empty tags. Non-finite floats are omitted: line
protocol has no NaN or infinity.

>>> print(escape_tag("Old Town, north=1"))
Old\ Town\,\ north\=1
>>> print(line("m", {"b": "2", "a": "x y"}, {"v": 1.5, "n": 3, "s": 'say "hi"'}, 1_764_028_800_000))
m,a=x\ y,b=2 v=1.5,n=3i,s="say \"hi\"" 1764028800000
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING

from cityvitals.contract import AgentStatus, Placement, Reading, Warning

if TYPE_CHECKING:
    from alerts.metrics import Observation

__all__ = [
    "AGENT",
    "PIPELINE",
    "READING",
    "RESPONSE",
    "SCORE",
    "WARNING",
    "FieldValue",
    "agent_line",
    "escape_field_key",
    "escape_tag",
    "field_value",
    "line",
    "pipeline_line",
    "reading_line",
    "response_line",
    "score_line",
    "string_field",
    "warning_line",
]

READING = "reading"
WARNING = "warning"
SCORE = "score"
RESPONSE = "response"
PIPELINE = "pipeline"
AGENT = "agent"

FieldValue = float | int | str | bool

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})


def _clean(value: str) -> str:
    """What line protocol can carry of a tag value or field key (see the module doc)."""
    if not value.isprintable():
        value = _CONTROL.sub(" ", value)
        # Lone surrogates (not valid UTF-8) cannot be sent either.
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value.rstrip("\\")


@lru_cache(maxsize=65_536)
def escape_tag(value: str) -> str:
    """A tag value (or tag key) for line protocol; '' if nothing of it can be sent.

    Cached: the same node and placement names come with every reading.
    """
    return _clean(value).translate(_TAG_ESCAPES)


@lru_cache(maxsize=4_096)
def escape_field_key(key: str) -> str:
    """A field key for line protocol (the same escaping as a tag)."""
    return _clean(key).translate(_TAG_ESCAPES)


def string_field(value: str) -> str:
    """A string field value, quoted and escaped."""
    if not value.isprintable():
        value = value.encode("utf-8", "replace").decode("utf-8")
    return '"' + value.translate(_STRING_ESCAPES) + '"'


def field_value(value: FieldValue) -> str | None:
    """A field value as line protocol writes it; None for a float it cannot carry."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    return string_field(value)


def _tags(tags: Mapping[str, str]) -> str:
    # Sorted by key: InfluxDB's fast path (it sorts unsorted tags itself).
    parts = []
    for key in sorted(tags):
        value = escape_tag(tags[key])
        if value:
            parts.append(f"{escape_tag(key)}={value}")
    return ",".join(parts)


def _fields(fields: Mapping[str, FieldValue]) -> str:
    parts = []
    for key, value in fields.items():
        text = field_value(value)
        if text is not None:
            parts.append(f"{escape_field_key(key)}={text}")
    return ",".join(parts)


def line(
    measurement: str, tags: Mapping[str, str], fields: Mapping[str, FieldValue], ts_ms: int
) -> str:
    """One point in line protocol. `fields` must keep at least one sendable value."""
    field_text = _fields(fields)
    if not field_text:
        raise ValueError(f"a {measurement} point needs at least one field that can be sent")
    tag_text = _tags(tags)
    head = f"{measurement},{tag_text}" if tag_text else measurement
    return f"{head} {field_text} {ts_ms}"


@lru_cache(maxsize=65_536)
def _placement_tags(placement: Placement) -> dict[str, str]:
    return {
        "district": placement.district,
        "street": placement.street,
        "grid": placement.grid,
        "unit": placement.unit,
    }


def reading_line(reading: Reading, placement: Placement, received_ms: int) -> str:
    """The `reading` point of one reading."""
    tags = {"node": reading.node, "kind": reading.kind.value, **_placement_tags(placement)}
    fields: dict[str, FieldValue] = dict(reading.metrics)
    if reading.battery_pct is not None:
        fields["battery_pct"] = reading.battery_pct
    if reading.rssi_dbm is not None:
        fields["rssi_dbm"] = reading.rssi_dbm
    fields["lat"] = placement.lat
    fields["lon"] = placement.lon
    fields["seq"] = reading.seq
    fields["received_ms"] = received_ms
    return line(READING, tags, fields, reading.ts_ms)


def warning_line(warning: Warning) -> str:
    """The `warning` point of one warning state change (raised, changed or cleared)."""
    tags = {
        "rule": warning.rule,
        "node": warning.node,
        "kind": warning.kind.value,
        "metric": warning.metric,
        "level": warning.level.label,
        **_placement_tags(warning.placement),
    }
    fields: dict[str, FieldValue] = {
        "level_n": int(warning.level),
        "previous_n": int(warning.previous),
        "value": warning.value,
    }
    if warning.threshold is not None:
        fields["threshold"] = warning.threshold
    if warning.predicted_crossing_ms is not None:
        fields["predicted_crossing_ms"] = warning.predicted_crossing_ms
    fields["fingerprint"] = warning.fingerprint
    fields["seq"] = warning.seq
    area = warning.area
    if area is not None:
        tags["area_scope"] = area.scope
        tags["area"] = area.name
        fields["members"] = ",".join(m.node for m in area.members)
        fields["total"] = area.total
        fields["lat"] = warning.placement.lat
        fields["lon"] = warning.placement.lon
    return line(WARNING, tags, fields, warning.ts_ms)


def response_line(o: Observation) -> str:
    """The `response` point of one alert response: how long it took to be detected,
    acknowledged or resolved (`alerts.metrics`)."""
    tags = {
        "what": o.what,
        "rule": o.rule,
        "kind": o.kind,
        "level": o.level,
        "district": o.district,
        "street": o.street,
        "grid": o.grid,
        "unit": o.unit,
    }
    fields: dict[str, FieldValue] = {"seconds": o.seconds, "fingerprint": o.fingerprint}
    return line(RESPONSE, tags, fields, o.at_ms)


def pipeline_line(
    role: str,
    instance: str,
    fields: Mapping[str, FieldValue],
    ts_ms: int,
    *,
    receiver: str = "",
) -> str:
    """The `pipeline` point of one role's counters (one receiver's, for deliveries).

    >>> pipeline_line("gateway", "gw-1", {"received": 10, "dead_letters": 1}, 5)
    'pipeline,instance=gw-1,role=gateway received=10i,dead_letters=1i 5'
    """
    return line(PIPELINE, {"role": role, "instance": instance, "receiver": receiver}, fields, ts_ms)


def agent_line(status: AgentStatus, received_ms: int) -> str:
    """The `agent` point of one edge agent's status: the figures its heartbeat carries."""
    fields: dict[str, FieldValue] = {"nodes": len(status.nodes)}
    for name in ("buffer_depth", "buffer_bytes", "dropped", "uptime_s"):
        value = getattr(status, name)
        if value is not None:
            fields[name] = value
    fields["received_ms"] = received_ms
    return line(AGENT, {"agent": status.agent, "state": status.state}, fields, status.ts_ms)


def score_line(
    reading: Reading, placement: Placement, metric: str, score: float, worst: str
) -> str:
    """The `score` point of one metric of a reading: its anomaly score and worst detector."""
    tags = {
        "node": reading.node,
        "kind": reading.kind.value,
        "metric": metric,
        **_placement_tags(placement),
    }
    fields: dict[str, FieldValue] = {"anomaly_score": score, "worst": worst}
    return line(SCORE, tags, fields, reading.ts_ms)
