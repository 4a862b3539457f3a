"""What the edge agent's integration tests share: configs, a recording subscriber,
and an MQTT-aware TCP proxy that can cut a connection at a chosen packet."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import Counter, defaultdict
from pathlib import Path

import aiomqtt

from cityvitals.config import BrokerSettings
from cityvitals.contract import decode_agent_status, decode_event, decode_reading
from cityvitals.topics import parse_topic


def write_config(
    tmp_path: Path,
    broker_url: str,
    *,
    nodes: list[tuple[str, str]],
    limit: int | None,
    interval_s: float = 0.002,
    queue: str = "",
    agent: str = "pi-test",
    mqtt: str = "",
) -> Path:
    """An edge.toml with simulated nodes that report every sample (no exception
    filter) as fast as `interval_s`, `limit` samples each."""
    lines = [
        "[agent]",
        f'id = "{agent}"',
        'data_dir = "data"',
        "heartbeat_s = 0.5",
        "[mqtt]",
        f'url = "{broker_url}"',
        "reconnect_max_s = 0.5",
        mqtt,
        "[queue]",
        queue,
        "loss_report_s = 0.2",
        "[report]",
        "enabled = false",
        f"interval_s = {interval_s}",
    ]
    for node, kind in nodes:
        limit_text = f", limit = {limit}" if limit is not None else ""
        lines += [
            "[[node]]",
            f'id = "{node}"',
            f'kind = "{kind}"',
            f"simulate = {{ seed = 5, speed = 60{limit_text} }}",
        ]
    path = tmp_path / "edge.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Recorder:
    """A subscriber with a persistent session (QoS 1), reconnecting on its own,
    recording every reading, event and status it receives (duplicates too)."""

    def __init__(
        self,
        url: str | None = None,
        client_id: str = "test-recorder",
        *,
        broker: BrokerSettings | None = None,
    ) -> None:
        self.broker = broker or BrokerSettings.from_url(url or "")
        self.client_id = client_id
        self.seqs: dict[str, list[int]] = defaultdict(list)
        self.events: list[tuple[str, str, int | None, str | None]] = []
        self.event_ids: list[str | None] = []
        self.agent_depths: list[int | None] = []
        self.agent_states: list[tuple[str, str | None]] = []
        self.agent_links: dict[str, dict[str, int]] = {}
        self.node_states: list[tuple[str, str]] = []
        self.changed = asyncio.Event()
        self.subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Recorder:
        self._task = asyncio.create_task(self._run())
        async with asyncio.timeout(10):
            await self.subscribed.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self.broker.host,
                    self.broker.port,
                    identifier=self.client_id,
                    clean_session=False,
                    username=self.broker.username,
                    password=self.broker.password,
                    tls_context=self.broker.tls,
                ) as client:
                    await client.subscribe("city/#", qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        self._record(str(message.topic), bytes(message.payload))  # type: ignore[arg-type]
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)  # the broker is down on purpose; try again

    def _record(self, topic: str, payload: bytes) -> None:
        parsed = parse_topic(topic)
        if parsed is None or not payload:
            return
        if parsed.kind == "agent":
            status = decode_agent_status(payload)
            self.agent_states.append((status.state, status.reason))
            self.agent_depths.append(status.buffer_depth)
            self.agent_links = dict(status.links or {})
        elif parsed.channel == "telemetry":
            reading = decode_reading(payload)
            self.seqs[reading.node].append(reading.seq)
        elif parsed.channel == "event":
            event = decode_event(payload)
            self.events.append((event.node, event.event, event.count, event.detail))
            self.event_ids.append(event.id)
        else:
            self.node_states.append((parsed.node, "status"))
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    def unique(self) -> int:
        return sum(len(set(s)) for s in self.seqs.values())

    def duplicates(self) -> int:
        return sum(len(s) - len(set(s)) for s in self.seqs.values())

    def dropped_reported(self) -> Counter[str]:
        """Readings each node's agent reported lost, a resent report counted once."""
        out: Counter[str] = Counter()
        seen: set[str | None] = set()
        for (node, event, count, _), event_id in zip(self.events, self.event_ids, strict=True):
            if event == "readings_dropped" and event_id not in seen:
                seen.add(event_id)
                out[node] += count or 0
        return out

    async def wait_for(self, condition, deadline_s: float = 30.0) -> None:
        async with asyncio.timeout(deadline_s):
            while not condition():
                await self.changed.wait()


class CuttingProxy:
    """A TCP proxy in front of the broker that understands MQTT framing.

    With `cut_after_publishes=n` it lets the first n QoS 1 PUBLISH packets
    through, then swallows the broker's PUBACK for the n-th and closes both
    sides: the publish reached the broker, the acknowledgement never reached
    the client. Later connections are forwarded untouched.
    """

    def __init__(self, upstream_port: int, *, cut_after_publishes: int) -> None:
        self.upstream_port = upstream_port
        self.cut_after = cut_after_publishes
        self.port = 0
        self.cut_payload: bytes | None = None
        self.cut_done = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._publishes: dict[int, bytes] = {}
        self._count = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        armed = not self.cut_done.is_set()
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(self._pipe(reader, up_writer, stop, upstream=True, armed=armed)),
            asyncio.create_task(self._pipe(up_reader, writer, stop, upstream=False, armed=armed)),
        ]
        self._tasks.update(tasks)
        await stop.wait()
        for task in tasks:
            task.cancel()
        for w in (writer, up_writer):
            w.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.difference_update(tasks)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        stop: asyncio.Event,
        *,
        upstream: bool,
        armed: bool,
    ) -> None:
        try:
            while True:
                packet = await _read_packet(reader)
                kind = packet[0] >> 4
                if armed and upstream and kind == 3 and (packet[0] >> 1) & 3 == 1:
                    packet_id, payload = _publish_id_and_payload(packet)
                    self._count += 1
                    if self._count == self.cut_after:
                        self._publishes[packet_id] = payload
                if armed and not upstream and kind == 4:
                    (packet_id,) = struct.unpack("!H", packet[-2:])
                    if packet_id in self._publishes and not self.cut_done.is_set():
                        self.cut_payload = self._publishes[packet_id]
                        self.cut_done.set()
                        stop.set()  # swallow this PUBACK and drop both connections
                        return
                writer.write(packet)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            stop.set()


async def _read_packet(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(1)
    length_bytes = b""
    length, shift = 0, 0
    while True:
        b = await reader.readexactly(1)
        length_bytes += b
        length |= (b[0] & 0x7F) << shift
        shift += 7
        if not b[0] & 0x80:
            break
    return head + length_bytes + await reader.readexactly(length)


def _publish_id_and_payload(packet: bytes) -> tuple[int, bytes]:
    i = 1
    while packet[i] & 0x80:
        i += 1
    i += 1  # past the remaining length
    (topic_len,) = struct.unpack("!H", packet[i : i + 2])
    i += 2 + topic_len
    (packet_id,) = struct.unpack("!H", packet[i : i + 2])
    return packet_id, packet[i + 2 :]
