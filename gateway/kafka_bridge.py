"""The distributed gateway: MQTT shared subscription in, Kafka out, acks held for backpressure.

Several gateway processes subscribe to `$share/<group>/city/+/+/+`, so the
broker splits the city's messages between them. Each message is routed
(`gateway.router`), its records are produced to Kafka keyed by node (readings
and presence: per-node order is per-partition order), and only when Kafka
has confirmed every record does the gateway send the MQTT PUBACK.

That last point is the backpressure. The session is MQTT 5 with a Receive
Maximum of `max_unacked`: the broker never has more than that many QoS 1
messages in flight to us, and when Kafka is slow or down our PUBACKs stop,
so the broker keeps the rest queued in our persistent session instead of us
buffering (or dropping) them. When Kafka answers again, the held messages
are acknowledged in the order they arrived and the flow resumes.

The session is persistent (fixed client id, `clean_start` off, a session
expiry): messages that arrive while this gateway restarts wait at the broker.
A connection that drops with messages unacknowledged gets them again on
reconnect; the ones already produced become duplicates that the dedup
window here, or the stream worker's per-node window, drops.

paho (under aiomqtt) has manual acknowledgement (`manual_ack_set`, `ack`)
but aiomqtt does not expose it, so this module reaches the paho client as
`client._client`: the one private attribute we depend on, pinned by
aiomqtt<3 in pyproject and covered by the integration tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiomqtt
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cityvitals.clock import Clock, SystemClock
from cityvitals.config import BrokerSettings
from cityvitals.contract import encode
from cityvitals.registry import Registry
from cityvitals.tasks import cancel_and_wait
from cityvitals.topics import ALL_NODES_FILTER
from gateway.dedup import SeqWindow
from gateway.health import OnAgent, hand_on
from gateway.router import Route, Router, RouterStats

log = logging.getLogger(__name__)

#: How long a persistent session (and the messages queued in it) outlives a
#: disconnected gateway at the broker.
SESSION_EXPIRY_S = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class KafkaTopics:
    readings: str
    presence: str
    dead_letters: str


@dataclass(frozen=True, slots=True)
class KafkaGatewayStats:
    routed: RouterStats
    #: Messages acknowledged to the broker (their records are in Kafka).
    acked: int
    #: Messages received and not acknowledged yet (waiting for Kafka).
    unacked: int
    #: Produce attempts that failed and were retried.
    produce_retries: int


@dataclass(slots=True)
class _Held:
    """One MQTT message waiting for Kafka before its PUBACK."""

    mid: int
    qos: int
    records: list[tuple[str, bytes | None, bytes]]
    deliveries: list[asyncio.Future[Any]]
    #: (node, seq) of its readings, marked seen by the dedup window.
    seen: list[tuple[str, int]]


class KafkaGateway:
    """`async with KafkaGateway(...) as gw:` runs until the context exits (or SIGTERM)."""

    def __init__(
        self,
        broker: BrokerSettings,
        registry: Registry,
        *,
        bootstrap: str,
        topics: KafkaTopics,
        client_id: str,
        share_group: str = "cityvitals-gateway",
        max_unacked: int = 1000,
        dedup_window: int = 4096,
        clock: Clock | None = None,
        backoff: tuple[float, float] = (0.2, 10.0),
        rng: random.Random | None = None,
        drain_timeout: float = 10.0,
        linger_ms: int = 5,
        stall_s: float = 5.0,
        on_agent: OnAgent | None = None,
        owners: Mapping[str, str] | None = None,
    ) -> None:
        if not 1 <= max_unacked <= 65535:
            raise ValueError("max_unacked must be 1..65535 (MQTT's Receive Maximum)")
        self.broker = broker
        self.topics = topics
        self._bootstrap = bootstrap
        self._client_id = client_id
        self._filter = f"$share/{share_group}/{ALL_NODES_FILTER}"
        self._max_unacked = max_unacked
        self._clock = clock or SystemClock()
        self._router = Router(
            registry, clock=self._clock, dedup=SeqWindow(window=dedup_window), owners=owners
        )
        self._backoff = backoff
        self._on_agent = on_agent
        self._agent_counts: Counter[str] = Counter()
        self._rng = rng or random.Random()
        self._drain_timeout = drain_timeout
        self._linger_ms = linger_ms
        self._stall_s = stall_s
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._held: asyncio.Queue[_Held] = asyncio.Queue()
        self._acking: _Held | None = None
        self._was_subscribed = False
        self._subscribed = asyncio.Event()
        self._acked = 0
        self._retries = 0
        self._kafka_failing = False
        self.last_error: Exception | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name="kafka-gateway")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Its clean-up stops the producer, which may take the whole drain.
        await cancel_and_wait(self._task, again_after_s=self._drain_timeout + 15)
        s = self.stats()
        r = s.routed
        log.info(
            "gateway stopped: %d received, %d forwarded, %d duplicates, %d dead letters %s, "
            "%d statuses claiming others' nodes, "
            "%d acknowledged, %d left unacknowledged for the broker to resend",
            r.received,
            r.forwarded,
            r.duplicates,
            r.dead_letters,
            r.by_reason or "",
            r.refused_claims,
            s.acked,
            s.unacked,
        )

    async def wait_subscribed(self) -> None:
        await self._subscribed.wait()

    def stats(self) -> KafkaGatewayStats:
        return KafkaGatewayStats(
            routed=self._router.stats(),
            acked=self._acked,
            unacked=self._held.qsize(),
            produce_retries=self._retries,
        )

    # -- the loop ---------------------------------------------------------

    async def _run(self) -> None:
        producer = await self._start_producer()
        try:
            await self._consume_forever(producer)
        finally:
            # Flush what Kafka has accepted; the broker resends the
            # unacknowledged rest to this session when it reconnects.
            try:
                async with asyncio.timeout(self._drain_timeout):
                    await producer.stop()
            except (TimeoutError, KafkaError) as exc:
                log.warning("gateway: Kafka producer did not stop cleanly: %s", exc)

    async def _start_producer(self) -> AIOKafkaProducer:
        delay = self._backoff[0]
        logged = False
        while True:
            producer = AIOKafkaProducer(
                bootstrap_servers=self._bootstrap,
                client_id=self._client_id,
                acks="all",
                # Idempotence: a retried batch is written once and in order.
                enable_idempotence=True,
                linger_ms=self._linger_ms,
                max_batch_size=256 * 1024,
            )
            try:
                await producer.start()
            except KafkaError as exc:
                await producer.stop()
                self.last_error = exc
                if not logged:
                    logged = True
                    log.warning(
                        "gateway cannot reach Kafka at %s (%s); retrying, not consuming MQTT",
                        self._bootstrap,
                        exc,
                    )
                await asyncio.sleep(self._rng.uniform(0, delay))
                delay = min(delay * 2, self._backoff[1])
                continue
            except BaseException:
                # Stopped while connecting: close what start() opened, then go.
                with contextlib.suppress(KafkaError, TimeoutError):
                    async with asyncio.timeout(self._drain_timeout):
                        await producer.stop()
                raise
            log.info("gateway connected to Kafka at %s", self._bootstrap)
            self._producer = producer
            return producer

    async def _consume_forever(self, producer: AIOKafkaProducer) -> None:
        delay = self._backoff[0]
        while True:
            try:
                await self._session(producer)
            except aiomqtt.MqttError as exc:
                self._connection_failed(exc)
            except Exception as exc:
                log.exception("gateway: session failed; reconnecting")
                self._connection_failed(exc)
            if self._was_subscribed:
                delay = self._backoff[0]  # a session that worked: retry soon
            self._was_subscribed = False
            await asyncio.sleep(self._rng.uniform(0, delay))
            delay = min(delay * 2, self._backoff[1])

    async def _session(self, producer: AIOKafkaProducer) -> None:
        connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect.SessionExpiryInterval = SESSION_EXPIRY_S
        connect.ReceiveMaximum = self._max_unacked
        client = aiomqtt.Client(
            self.broker.host,
            self.broker.port,
            identifier=self._client_id,
            username=self.broker.username,
            password=self.broker.password,
            tls_context=self.broker.tls,
            keepalive=self.broker.keepalive,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=connect,
        )
        # See the module docstring: PUBACK only once Kafka has the records.
        client._client.manual_ack_set(True)
        self._held = asyncio.Queue()
        async with client:
            acker = asyncio.create_task(self._ack_in_order(client, producer), name="gateway-acks")
            try:
                await client.subscribe(self._filter, qos=1)
                log.info(
                    "gateway subscribed to %s on %s:%d as %s",
                    self._filter,
                    self.broker.host,
                    self.broker.port,
                    self._client_id,
                )
                self._subscribed.set()
                self._was_subscribed = True
                messages = aiter(client.messages)
                receive: asyncio.Future[aiomqtt.Message] | None = None
                while True:
                    # Raced with the acknowledging task: if it dies (a bug) while
                    # the window is full, no message would come to notice it.
                    receive = asyncio.ensure_future(anext(messages))
                    await asyncio.wait({receive, acker}, return_when=asyncio.FIRST_COMPLETED)
                    if acker.done():
                        await cancel_and_wait(receive)
                        acker.result()
                        raise RuntimeError("the acknowledging task stopped")
                    message = receive.result()
                    payload = message.payload
                    data = bytes(payload) if isinstance(payload, bytes | bytearray) else b""
                    route = self._router.route(message.topic.value, data)
                    if route.agent is not None and self._on_agent is not None:
                        await hand_on(
                            self._on_agent, route.agent, self._clock.now_ms(), self._agent_counts
                        )
                    records = self._records(route)
                    deliveries = [await self._send(producer, *r) for r in records]
                    # Unbounded queue, bounded by the broker: at most
                    # Receive Maximum messages are ever unacknowledged.
                    seen = [(r.node, r.seq) for r in route.readings]
                    self._held.put_nowait(
                        _Held(message.mid, message.qos, records, deliveries, seen)
                    )
            finally:
                if receive is not None:
                    await cancel_and_wait(receive)
                await cancel_and_wait(acker)
                self._forget_unacknowledged()

    def _records(self, route: Route) -> list[tuple[str, bytes | None, bytes]]:
        out: list[tuple[str, bytes | None, bytes]] = [
            (self.topics.readings, r.key, r.value) for r in route.readings
        ]
        out += [(self.topics.presence, r.key, r.value) for r in route.presence]
        if route.refused is not None:
            out.append((self.topics.dead_letters, None, encode(route.refused)))
        return out

    async def _send(
        self, producer: AIOKafkaProducer, topic: str, key: bytes | None, value: bytes
    ) -> asyncio.Future[Any]:
        try:
            # `send` waits while the producer's buffer is full: backpressure.
            delivery: asyncio.Future[Any] = await producer.send(topic, value, key=key)
        except KafkaError as exc:
            delivery = asyncio.get_running_loop().create_future()
            delivery.set_exception(exc)
        return delivery

    async def _ack_in_order(self, client: aiomqtt.Client, producer: AIOKafkaProducer) -> None:
        paho = client._client
        while True:
            self._acking = held = await self._held.get()
            await self._until_delivered(producer, held)
            if held.qos > 0:
                paho.ack(held.mid, held.qos)
            self._acking = None
            self._acked += 1

    def _forget_unacknowledged(self) -> None:
        """The session ended with messages unacknowledged: the broker sends them
        again, and they must then count as new, not as duplicates of readings
        Kafka may never have received."""
        held = [self._acking] if self._acking is not None else []
        while not self._held.empty():
            held.append(self._held.get_nowait())
        for item in held:
            for node, seq in item.seen:
                self._router.forget(node, seq)
        self._acking = None

    async def _until_delivered(self, producer: AIOKafkaProducer, held: _Held) -> None:
        """Wait for Kafka to confirm every record; re-send failed ones until it does."""
        if not held.deliveries:
            return  # a duplicate, an event, an empty status: nothing to wait for
        delay = self._backoff[0]
        while True:
            _, waiting = await asyncio.wait(held.deliveries, timeout=self._stall_s)
            if waiting:
                self._holding(f"Kafka has not confirmed records for {self._stall_s:g} s")
                await asyncio.wait(waiting)
            failed = []
            for i, delivery in enumerate(held.deliveries):
                try:
                    await delivery
                except KafkaError as exc:
                    failed.append(i)
                    self.last_error = exc
            if not failed:
                if self._kafka_failing:
                    self._kafka_failing = False
                    log.info("gateway: Kafka accepts records again; acknowledging held messages")
                return
            self._holding(f"Kafka refused records ({self.last_error})")
            self._retries += len(failed)
            await asyncio.sleep(self._rng.uniform(0, delay))
            delay = min(delay * 2, self._backoff[1])
            for i in failed:
                held.deliveries[i] = await self._send(producer, *held.records[i])

    def _holding(self, why: str) -> None:
        if self._kafka_failing:
            return
        self._kafka_failing = True
        log.warning(
            "gateway: %s; holding MQTT acknowledgements (%d messages waiting), the broker "
            "keeps the rest queued",
            why,
            self._held.qsize() + 1,
        )

    def _connection_failed(self, exc: Exception) -> None:
        first = self.last_error is None
        self.last_error = exc
        if self._was_subscribed:
            log.warning(
                "gateway lost the broker (%s); reconnecting (%d unacknowledged messages will be "
                "resent by the broker)",
                exc,
                self._held.qsize(),
            )
        elif first:
            log.warning(
                "gateway cannot reach the broker at %s:%d (%s); retrying",
                self.broker.host,
                self.broker.port,
                exc,
            )
        self._subscribed.clear()
