"""The gateway service: subscribe to the city's MQTT topics, hand valid readings on.

For each message on `city/+/+/+`:

- telemetry: validate → drop duplicates by (node, seq) → enrich with the
  registry placement → `forward(key=node, value=EnrichedReading bytes)`;
- status: validate → `presence(key=node, value=PresenceReport bytes)`;
- event: validate and count (edge alarms build on these);
- anything that fails: a `DeadLetter` with the reason and the raw bytes goes
  to `dead_letter()`. Nothing is dropped silently and no input can stop the
  loop: only the broker connection can, and then we reconnect.

The MQTT session is persistent (clean_session off, fixed client id), so QoS 1
messages published while the gateway reconnects wait for it at the broker.

Flow control: `forward` is awaited per message, so a slow stream slows the
loop. aiomqtt itself keeps reading the socket into its queue, which must
stay unbounded: when a bounded aiomqtt queue is full it *discards* messages
the broker already considers delivered. Stopping the acknowledgements
instead belongs to the distributed gateway (issue 4).

That queue (the "inbox") belongs to the gateway, not to one connection:
messages already acknowledged to the broker but not yet handled when a
connection drops are still handled, instead of being thrown away with the
old client.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self, cast

import aiomqtt

from cityvitals.clock import Clock, SystemClock
from cityvitals.config import BrokerSettings
from cityvitals.contract import DeadLetter, Reason
from cityvitals.registry import Registry
from cityvitals.tasks import cancel_and_wait
from cityvitals.topics import ALL_NODES_FILTER
from gateway.dedup import SeqWindow
from gateway.health import OnAgent, hand_on
from gateway.router import Router
from gateway.validate import Validator

log = logging.getLogger(__name__)

Forward = Callable[[bytes, bytes], Awaitable[None]]
DeadLetterSink = Callable[[DeadLetter], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class GatewayStats:
    received: int
    forwarded: int
    duplicates: int
    statuses: int
    events: int
    dead_letters: int
    by_reason: dict[str, int]
    #: Messages neither forwarded nor dead-lettered because both sinks failed.
    lost: int = 0


class Gateway:
    """Bridge MQTT to the stream; use as an async context manager."""

    def __init__(
        self,
        broker: BrokerSettings,
        registry: Registry,
        *,
        forward: Forward,
        dead_letter: DeadLetterSink,
        clock: Clock | None = None,
        client_id: str = "cv-gateway",
        validator: Validator | None = None,
        dedup: SeqWindow | None = None,
        backoff: tuple[float, float] = (0.2, 10.0),
        rng: random.Random | None = None,
        on_forwarded: Callable[[str, int], None] | None = None,
        presence: Forward | None = None,
        on_agent: OnAgent | None = None,
    ) -> None:
        self.broker = broker
        self._forward = forward
        self._dead_letter = dead_letter
        self._clock = clock or SystemClock()
        self._client_id = client_id
        self._router = Router(registry, clock=self._clock, validator=validator, dedup=dedup)
        self._presence = presence
        self._backoff = backoff
        self._rng = rng or random.Random()
        self._on_forwarded = on_forwarded
        self._on_agent = on_agent
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._counts: Counter[str] = Counter()
        self._forwarded = asyncio.Event()
        self._inbox: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
        self._internal_error_logged = False
        #: The last connection failure, for operators and start-up errors.
        self.last_error: Exception | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name="gateway")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await cancel_and_wait(self._task)
        s = self.stats()
        log.info(
            "gateway stopped: %d received, %d forwarded, %d duplicates, %d dead letters %s%s",
            s.received,
            s.forwarded,
            s.duplicates,
            s.dead_letters,
            dict(s.by_reason) or "",
            f"; {self.backlog} received but never handled" if self.backlog else "",
        )

    async def wait_subscribed(self) -> None:
        await self._subscribed.wait()

    async def wait_forwarded(self, count: int) -> None:
        """Return once `count` readings have been forwarded in total."""
        while self._router.stats().forwarded < count:
            self._forwarded.clear()
            await self._forwarded.wait()

    def stats(self) -> GatewayStats:
        r = self._router.stats()
        lost = self._counts["lost"]
        return GatewayStats(
            received=r.received,
            forwarded=r.forwarded,
            duplicates=r.duplicates,
            statuses=r.statuses,
            events=r.events,
            # Counted once stored: the counts must add up to what was received.
            dead_letters=r.dead_letters - lost,
            by_reason=r.by_reason,
            lost=lost,
        )

    async def _run(self) -> None:
        delay = self._backoff[0]
        while True:
            try:
                async with aiomqtt.Client(
                    self.broker.host,
                    self.broker.port,
                    identifier=self._client_id,
                    username=self.broker.username,
                    password=self.broker.password,
                    tls_context=self.broker.tls,
                    keepalive=self.broker.keepalive,
                    clean_session=False,
                    # aiomqtt builds its queue by calling queue_type(maxsize=...);
                    # hand it ours, so it outlives the connection.
                    queue_type=cast("type[asyncio.Queue[aiomqtt.Message]]", self._inbox_factory),
                ) as client:
                    await client.subscribe(ALL_NODES_FILTER, qos=1)
                    log.info(
                        "gateway subscribed to %s on %s:%d",
                        ALL_NODES_FILTER,
                        self.broker.host,
                        self.broker.port,
                    )
                    self._subscribed.set()
                    delay = self._backoff[0]
                    async for message in client.messages:
                        await self.handle(message.topic.value, _payload_bytes(message.payload))
            except aiomqtt.MqttError as exc:
                self._connection_failed(exc)
                await self._drain_inbox()
            except Exception as exc:
                # handle() turns every message into an outcome, so this is a
                # failing sink: say so loudly, then carry on rather than die.
                log.exception("gateway loop failed; reconnecting")
                self._connection_failed(exc)
            await asyncio.sleep(self._rng.uniform(0, delay))
            delay = min(delay * 2, self._backoff[1])

    def _inbox_factory(self, maxsize: int = 0) -> asyncio.Queue[aiomqtt.Message]:
        return self._inbox

    async def _drain_inbox(self) -> None:
        """Handle what arrived before the connection dropped: the broker has
        already been told we have it."""
        if not self._inbox.empty():
            log.info("gateway handling %d messages received before the drop", self._inbox.qsize())
        while not self._inbox.empty():
            message = self._inbox.get_nowait()
            await self.handle(message.topic.value, _payload_bytes(message.payload))

    @property
    def backlog(self) -> int:
        """Messages received from the broker and not handled yet."""
        return self._inbox.qsize()

    def _connection_failed(self, exc: Exception) -> None:
        first = self.last_error is None
        self.last_error = exc
        if self._subscribed.is_set():
            log.warning("gateway lost the broker (%s); reconnecting", exc)
        elif first:
            log.warning(
                "gateway cannot reach the broker at %s:%d (%s); retrying",
                self.broker.host,
                self.broker.port,
                exc,
            )
        self._subscribed.clear()

    async def handle(self, topic: str, payload: bytes) -> None:
        """Process one message; never raises, whatever the input or the sinks do."""
        route = self._router.route(topic, payload)
        for record in route.readings:
            try:
                await self._forward(record.key, record.value)
            except Exception as exc:
                # A failing stream: keep the bytes with the reason (the first
                # time with a traceback) instead of losing the reading.
                if not self._internal_error_logged:
                    self._internal_error_logged = True
                    log.exception("gateway: forwarding to the stream failed on %s", topic)
                self._router.unforward()
                route = self._router.refuse(
                    topic, payload, Reason.INTERNAL, f"{type(exc).__name__}: {exc}"
                )
                break
            self._forwarded.set()
            if self._on_forwarded is not None:
                self._on_forwarded(record.node, record.seq)
        if self._presence is not None:
            for record in route.presence:
                try:
                    await self._presence(record.key, record.value)
                except Exception:
                    self._counts["presence_lost"] += 1
                    if self._counts["presence_lost"] == 1:
                        log.exception("gateway: presence sink failed")
        if route.agent is not None and self._on_agent is not None:
            await hand_on(self._on_agent, route.agent, self._clock.now_ms(), self._counts)
        if route.refused is None:
            return
        try:
            await self._dead_letter(route.refused)
        except Exception:
            # Not even the dead-letter sink works (a failed store): count the
            # loss where operators see it, log once, keep consuming.
            self._counts["lost"] += 1
            if self._counts["lost"] == 1:
                log.exception("gateway: dead-letter sink failed; messages are being lost")


def _payload_bytes(payload: object) -> bytes:
    # paho delivers bytes; aiomqtt's type also allows str/int/float/None.
    return bytes(payload) if isinstance(payload, bytes | bytearray) else b""
