"""The MQTT publisher of an edge agent.

One agent serves several sensor nodes over one MQTT connection. Readings are
encoded once, put in the agent's `OutboundBuffer`, and published with QoS 1;
a message leaves the buffer only when the broker's PUBACK arrives. If the
connection fails, unacknowledged messages go back to the buffer in order and
the publisher reconnects with exponential backoff. The reconnect loop lives
here, outside the MQTT client, so each connection attempt starts clean.

Presence: MQTT gives a connection one last will, and one connection serves
all the agent's nodes, so the will is the agent's own retained "offline" on
`city/agent/<agent>/status`, naming its nodes. On connect the agent publishes
its retained "online" there and one per node on `.../status`; on a clean
stop, retained "offline" on all of them.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Literal, Self

import aiomqtt

from cityvitals.clock import Clock, SystemClock
from cityvitals.config import BrokerSettings
from cityvitals.contract import (
    CONTRACT_VERSION,
    AgentStatus,
    EdgeEvent,
    NodeRef,
    NodeStatus,
    Reading,
    encode,
)
from cityvitals.kinds import Kind
from cityvitals.tasks import cancel_and_wait
from cityvitals.topics import agent_status_topic, event_topic, status_topic, telemetry_topic
from edge.buffer import MemoryBuffer, Outbound, OutboundBuffer

log = logging.getLogger(__name__)

#: How long a stopping agent tries to publish its nodes' offline status.
GOODBYE_TIMEOUT_S = 5.0


class EdgePublisher:
    """Publish readings of `nodes` through one MQTT connection, QoS 1, at least once.

    Use as an async context manager; `submit()` readings; `flush()` waits
    until the broker has acknowledged all of them.
    """

    def __init__(
        self,
        broker: BrokerSettings,
        *,
        agent_id: str,
        nodes: Sequence[tuple[str, Kind]],
        clock: Clock | None = None,
        buffer: OutboundBuffer | None = None,
        window: int = 32,
        publish_timeout: float = 10.0,
        backoff: tuple[float, float] = (0.2, 10.0),
        on_ack: Callable[[Outbound], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.broker = broker
        self.agent_id = agent_id
        self.nodes = tuple(nodes)
        self._clock = clock or SystemClock()
        self._buffer = buffer if buffer is not None else MemoryBuffer()
        self._window = window
        self._publish_timeout = publish_timeout
        self._backoff = backoff
        self._on_ack = on_ack
        self._rng = rng or random.Random()
        self._pump: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._connections = 0
        #: The connection failure last logged, until a connection succeeds.
        self._told_down: str | None = None
        self._started_ms = 0
        self._client_now: aiomqtt.Client | None = None

    # -- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._started_ms = self._clock.now_ms()
        self._pump = asyncio.create_task(self._run(), name=f"publisher-{self.agent_id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Its clean-up disconnects, which aiomqtt bounds by the publish timeout.
        await cancel_and_wait(self._pump, again_after_s=self._publish_timeout + 5)
        left = len(self._buffer)
        if left:
            log.warning("agent %s stopped with %d readings not acknowledged", self.agent_id, left)
        await self._say_goodbye(left)

    # -- publishing ------------------------------------------------------------

    async def submit(self, reading: Reading) -> bool:
        """Queue a reading for publishing; False if the buffer's policy refused it."""
        return await self._buffer.put(
            Outbound(
                telemetry_topic(reading.kind, reading.node),
                encode(reading),
                reading.node,
                reading.seq,
            )
        )

    async def submit_event(self, event: EdgeEvent) -> bool:
        """Queue an edge alarm ahead of all telemetry."""
        return await self._buffer.put(
            Outbound(event_topic(event.kind, event.node), encode(event), event.node, 0),
            urgent=True,
        )

    @property
    def connected(self) -> bool:
        return self._client_now is not None

    async def publish_now(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Publish outside the buffer (heartbeats: stale ones are worth nothing);
        False when not connected or the broker did not acknowledge in time."""
        client = self._client_now
        if client is None:
            return False
        try:
            async with asyncio.timeout(self._publish_timeout):
                await client.publish(topic, payload, qos=1, retain=retain)
        except (aiomqtt.MqttError, TimeoutError):
            return False
        return True

    def agent_status(self, state: Literal["online", "offline"], **health: Any) -> AgentStatus:
        return AgentStatus(
            v=CONTRACT_VERSION,
            agent=self.agent_id,
            state=state,
            ts_ms=self._clock.now_ms(),
            nodes=tuple(NodeRef(node=n, kind=k) for n, k in self.nodes),
            uptime_s=self.uptime_s,
            **health,
        )

    @property
    def uptime_s(self) -> float:
        return (self._clock.now_ms() - self._started_ms) / 1000

    async def flush(self) -> None:
        """Return once every submitted reading has been acknowledged by the broker.

        Waits as long as it takes (a broker may be down for hours; the buffer
        holds the readings): bound it with `asyncio.timeout` where that matters.
        """
        if self._pump is None or self._pump.done():
            raise RuntimeError(f"agent {self.agent_id}: publisher is not running")
        empty = asyncio.ensure_future(self._buffer.wait_empty())
        waiting: set[asyncio.Future[Any]] = {empty, self._pump}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            empty.cancel()
        if not len(self._buffer) == 0:
            raise RuntimeError(
                f"agent {self.agent_id}: publisher stopped before its buffer emptied"
            )

    @property
    def pending(self) -> int:
        """Readings not yet acknowledged by the broker."""
        return len(self._buffer)

    # -- the connection loop ---------------------------------------------------

    def _client(self, *, will: bool = True) -> aiomqtt.Client:
        last_will = aiomqtt.Will(
            agent_status_topic(self.agent_id),
            encode(self.agent_status("offline", reason="connection lost")),
            qos=1,
            retain=True,
        )
        client = aiomqtt.Client(
            self.broker.host,
            self.broker.port,
            identifier=f"cv-edge-{self.agent_id}",
            username=self.broker.username,
            password=self.broker.password,
            tls_context=self.broker.tls,
            keepalive=self.broker.keepalive,
            max_inflight_messages=self._window,
            timeout=self._publish_timeout,
            will=last_will if will else None,
        )
        # aiomqtt warns past 10 pending publishes; our window is the real bound.
        client.pending_calls_threshold = self._window + 1
        return client

    async def _run(self) -> None:
        delay = self._backoff[0]
        while True:
            try:
                async with self._client() as client:
                    self._connections += 1
                    self._connected.set()
                    delay = self._backoff[0]
                    if self._connections > 1 or self._told_down is not None:
                        log.info(
                            "agent %s %s to %s:%d",
                            self.agent_id,
                            "reconnected" if self._connections > 1 else "connected",
                            self.broker.host,
                            self.broker.port,
                        )
                    self._told_down = None
                    await self._publish_births(client)
                    self._client_now = client
                    try:
                        await self._pump_messages(client)
                    finally:
                        self._client_now = None
            except aiomqtt.MqttError as exc:
                self._connection_failed(exc)
            except Exception as exc:
                # Not the network: a bug. The buffer still holds every reading,
                # so log it with its traceback and keep the agent alive.
                log.exception("agent %s publisher failed; reconnecting", self.agent_id)
                self._connection_failed(exc)
            # Full jitter: many agents losing one broker must not reconnect in step.
            await asyncio.sleep(self._rng.uniform(0, delay))
            delay = min(delay * 2, self._backoff[1])

    def _connection_failed(self, exc: Exception) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        back = self._buffer.requeue_in_flight()
        if was_connected:
            log.warning(
                "agent %s lost the broker (%s); %d unacknowledged readings requeued",
                self.agent_id,
                exc,
                back,
            )
            return
        # Unreachable, refused (a rotated password, an expired certificate):
        # said once, and again only when the reason changes.
        reason = str(exc)
        if reason != self._told_down:
            self._told_down = reason
            log.warning(
                "agent %s cannot connect to the broker at %s:%d (%s); retrying, "
                "readings wait in the queue",
                self.agent_id,
                self.broker.host,
                self.broker.port,
                reason,
            )

    async def _pump_messages(self, client: aiomqtt.Client) -> None:
        """Publish from the buffer with at most `window` messages awaiting PUBACK.

        Returns only by raising the `MqttError` that ended the connection;
        in-flight publishes are cancelled first so none can ack after the
        buffer has requeued it.
        """
        slots = asyncio.Semaphore(self._window)
        failure: asyncio.Future[aiomqtt.MqttError] = asyncio.get_running_loop().create_future()
        tasks: set[asyncio.Task[None]] = set()

        def fail(exc: aiomqtt.MqttError) -> None:
            if failure.done():
                return
            failure.set_result(exc)
            # Publishes waiting for a PUBACK that cannot come any more: stop
            # them now (their slots come back) instead of at publish_timeout.
            for task in tasks:
                if task is not asyncio.current_task():
                    task.cancel()

        def lost(disconnected: asyncio.Future[None]) -> None:
            exc = None if disconnected.cancelled() else disconnected.exception()
            fail(exc if isinstance(exc, aiomqtt.MqttError) else aiomqtt.MqttError("disconnected"))

        # aiomqtt resolves this private future when the connection drops but
        # leaves pending publishes waiting for their timeout; without it a
        # full window (or the last few readings) would stall that long.
        disconnected: asyncio.Future[None] = client._disconnected
        disconnected.add_done_callback(lost)

        async def publish(message: Outbound) -> None:
            try:
                await client.publish(message.topic, message.payload, qos=1)
            except aiomqtt.MqttError as exc:
                fail(exc)
                return
            finally:
                slots.release()
            self._buffer.ack(message)
            if self._on_ack is not None:
                self._on_ack(message)

        try:
            while True:
                take = asyncio.ensure_future(self._buffer.take(self._window))
                waiting: set[asyncio.Future[Any]] = {take, failure}
                try:
                    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                except BaseException:
                    # Cancelled: take() marks messages in flight only when it
                    # returns, so cancelling it here loses nothing.
                    take.cancel()
                    raise
                if not take.done():
                    take.cancel()
                    raise failure.result()
                for message in take.result():
                    await slots.acquire()
                    if failure.done():  # taken, not sent: the requeue puts it back
                        raise failure.result()
                    task = asyncio.create_task(publish(message))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if failure.done():
                    raise failure.result()
        finally:
            disconnected.remove_done_callback(lost)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def node_status(
        self, node: str, kind: Kind, state: Literal["online", "offline"], **health: Any
    ) -> NodeStatus:
        return NodeStatus(
            v=CONTRACT_VERSION,
            node=node,
            kind=kind,
            state=state,
            ts_ms=self._clock.now_ms(),
            agent=self.agent_id,
            uptime_s=self.uptime_s,
            **health,
        )

    async def _publish_births(self, client: aiomqtt.Client) -> None:
        await client.publish(
            agent_status_topic(self.agent_id),
            encode(self.agent_status("online", buffer_depth=len(self._buffer))),
            qos=1,
            retain=True,
        )
        for node, kind in self.nodes:
            await client.publish(
                status_topic(kind, node),
                encode(self.node_status(node, kind, "online")),
                qos=1,
                retain=True,
            )

    async def _say_goodbye(self, left: int) -> None:
        """Retained "offline" for each node, on a short-lived connection of its own
        (the pump's is gone), and bounded: stopping must not hang on a dead broker."""
        if not self._connected.is_set():
            log.warning(
                "agent %s stopping while disconnected: offline status not published", self.agent_id
            )
            return
        # A task, not `asyncio.timeout` around it: on 3.11 aiomqtt's wait_for can
        # drop the timeout's cancel, and each publish left would then get its
        # own publish timeout. cancel_and_wait makes the bound hard.
        goodbye = asyncio.create_task(self._publish_offline(left), name="goodbye")
        try:
            done, _ = await asyncio.wait({goodbye}, timeout=GOODBYE_TIMEOUT_S)
        except BaseException:
            await cancel_and_wait(goodbye, again_after_s=1.0)
            raise
        if not done or goodbye.cancelled():
            await cancel_and_wait(goodbye, again_after_s=1.0)
            log.warning(
                "agent %s could not publish offline status within %.0f s",
                self.agent_id,
                GOODBYE_TIMEOUT_S,
            )
        elif isinstance(exc := goodbye.exception(), aiomqtt.MqttError):
            log.warning("agent %s could not publish offline status: %r", self.agent_id, exc)
        elif exc is not None:
            # A bug, not the network: with its traceback, but the stop goes on.
            log.error("agent %s: offline status failed", self.agent_id, exc_info=exc)

    async def _publish_offline(self, left: int) -> None:
        async with self._client(will=False) as client:
            for node, kind in self.nodes:
                await client.publish(
                    status_topic(kind, node),
                    encode(self.node_status(node, kind, "offline", reason="stopped")),
                    qos=1,
                    retain=True,
                )
            status = self.agent_status("offline", buffer_depth=left, reason="stopped")
            await client.publish(
                agent_status_topic(self.agent_id), encode(status), qos=1, retain=True
            )
