"""Turn an MQTT message into an accepted reading or a reason to refuse it.

Pure: no I/O. The checks run cheapest first: topic shape, size, JSON and
schema (one msgspec pass), metric names and physical ranges, then the
cross-checks a forged or misconfigured device would fail: the payload must
name the node and kind of its topic, and the node must be registered as
that kind.
"""

from __future__ import annotations

from cityvitals.contract import (
    MAX_PAYLOAD_BYTES,
    AgentStatus,
    EdgeEvent,
    NodeStatus,
    Reading,
    Reason,
    decode_agent_status,
    decode_event,
    decode_reading,
    decode_status,
)
from cityvitals.errors import ContractError
from cityvitals.registry import Device, Registry
from cityvitals.topics import Topic, parse_topic


class Validator:
    def __init__(self, registry: Registry, *, max_payload: int = MAX_PAYLOAD_BYTES) -> None:
        self.registry = registry
        self.max_payload = max_payload

    def topic(self, topic: str) -> Topic:
        parsed = parse_topic(topic)
        if parsed is None:
            raise ContractError(Reason.BAD_TOPIC, f"{topic!r} is not city/<kind>/<node>/<channel>")
        return parsed

    def _device(self, topic: Topic, node: str, kind: str) -> Device:
        if node != topic.node or kind != topic.kind:
            raise ContractError(
                Reason.TOPIC_MISMATCH,
                f"payload says {kind}/{node} but was published on {topic.kind}/{topic.node}",
            )
        device = self.registry.get(node)
        if device is None:
            raise ContractError(Reason.UNKNOWN_NODE, f"node {node!r} is not in the registry")
        if device.kind != kind:
            raise ContractError(
                Reason.KIND_MISMATCH, f"node {node!r} is registered as {device.kind}, not {kind}"
            )
        return device

    def telemetry(self, topic: Topic, payload: bytes) -> tuple[Reading, Device]:
        reading = decode_reading(payload, limit=self.max_payload)
        return reading, self._device(topic, reading.node, reading.kind)

    def status(self, topic: Topic, payload: bytes) -> tuple[NodeStatus, Device]:
        status = decode_status(payload, limit=self.max_payload)
        return status, self._device(topic, status.node, status.kind)

    def agent_status(self, topic: Topic, payload: bytes) -> AgentStatus:
        status = decode_agent_status(payload, limit=self.max_payload)
        if status.agent != topic.node:
            raise ContractError(
                Reason.TOPIC_MISMATCH,
                f"payload says agent {status.agent} but was published for {topic.node}",
            )
        return status

    def event(self, topic: Topic, payload: bytes) -> tuple[EdgeEvent, Device]:
        event = decode_event(payload, limit=self.max_payload)
        return event, self._device(topic, event.node, event.kind)
