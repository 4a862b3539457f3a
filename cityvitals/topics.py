"""MQTT topic names: `city/<kind>/<node>/<channel>`.

Placement (district, street, grid) is deliberately *not* in the topic: it comes
from the registry, so a node can be re-assigned without touching the device.

>>> telemetry_topic("water_level", "wl-0001")
'city/water_level/wl-0001/telemetry'
>>> parse_topic("city/smoke/sm-0003/status")
Topic(kind='smoke', node='sm-0003', channel='status')
>>> parse_topic("city/smoke/status") is None
True
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

Channel = Literal["telemetry", "status", "event"]
CHANNELS: tuple[str, ...] = get_args(Channel)
ROOT = "city"
#: The second level of an edge agent's own status topic; never a sensor kind.
AGENT_SEGMENT = "agent"
#: One filter for everything the gateway consumes.
ALL_NODES_FILTER = f"{ROOT}/+/+/+"


class Topic(NamedTuple):
    kind: str
    node: str
    channel: str


def _topic(kind: str, node: str, channel: Channel) -> str:
    return f"{ROOT}/{kind}/{node}/{channel}"


def telemetry_topic(kind: str, node: str) -> str:
    return _topic(kind, node, "telemetry")


def status_topic(kind: str, node: str) -> str:
    return _topic(kind, node, "status")


def event_topic(kind: str, node: str) -> str:
    return _topic(kind, node, "event")


def agent_status_topic(agent: str) -> str:
    """Where an edge agent's birth, heartbeats and last will go.

    >>> agent_status_topic("pi-harbour-3")
    'city/agent/pi-harbour-3/status'
    """
    return f"{ROOT}/{AGENT_SEGMENT}/{agent}/status"


def parse_topic(topic: str) -> Topic | None:
    """Split a cityvitals topic; `None` if it is not one of ours."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != ROOT or parts[3] not in CHANNELS:
        return None
    if not parts[1] or not parts[2]:
        return None
    return Topic(parts[1], parts[2], parts[3])
