"""The embedded pipeline: broker, gateway, stream, alerts and store in one process.

This is the composition root of the embedded mode, the only module that
knows every package. It is imported lazily by the CLI, so `import
cityvitals` stays free of faust and aiomqtt.

Start order follows the data backwards (store, alerts, stream, gateway) so
every stage's consumer is up before its producer; stop order is the reverse,
each stage flushing what it holds.

With `event_time`, the alert service runs on the warnings' own time rather
than the wall clock's (`cityvitals.clock.EventClock`): the demo plays a day
in a minute, or as fast as it can, so only the readings' times say how long
an alert went unanswered. Warnings are then handed over one at a time, each
recorded at its own time before the next, and the escalation ladder climbs
on the simulated day, the same way in every run.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from alerts.escalation import Ladder
from alerts.metrics import Observation
from alerts.model import Notification
from alerts.notify import Notifier
from alerts.service import AlertService
from alerts.store import AlertStore
from cityvitals.clock import Clock, EventClock, SystemClock
from cityvitals.config import BrokerSettings
from cityvitals.contract import AgentStatus, Warning
from cityvitals.errors import CityvitalsError
from cityvitals.levels import Level
from cityvitals.registry import Registry
from cityvitals.store import EmbeddedStore
from gateway.bridge import Gateway
from gateway.embedded_broker import EmbeddedBroker
from stream.agents import ReadingPipeline, ReadingSink
from stream.app import create_embedded_app
from stream.areas import AreaEngine
from stream.engine import RuleEngine
from stream.sinks.meter import (
    Gauge,
    PipelineMeter,
    delivery_gauges,
    gateway_gauge,
    stream_gauge,
)
from stream.sinks.tee import TeeSink

log = logging.getLogger(__name__)


class _NewestReading:
    """A clock at the newest reading the store holds (the simulated day's "now")."""

    def __init__(self, store: EmbeddedStore) -> None:
        self._store = store

    def now_ms(self) -> int:
        # Before the first reading there is no simulated "now": the wall clock's.
        newest = self._store.newest_reading_ms()
        return time.time_ns() // 1_000_000 if newest is None else newest

    def now(self) -> float:
        return self.now_ms() / 1000


class BrokerUnreachableError(CityvitalsError):
    """The gateway could not connect and subscribe to the MQTT broker."""


STORE_FILE = "cityvitals.sqlite3"
#: The alert book and notification outbox (alerts/store.py).
ALERTS_FILE = "alerts.sqlite3"
#: A receiver that has not taken a notification in this long is given up on
#: for it (recorded as failed): a demo must not hang on a dead webhook.
DELIVERY_GIVE_UP_S = 20.0
DeliveryHook = Callable[[Notification, str, str, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PipelineCounts:
    received: int
    forwarded: int
    duplicates: int
    dead_letters: int
    processed: int
    stream_errors: int
    warnings: int
    notifications: int
    delivered: int
    failed: int
    undelivered: int
    active: dict[Level, int]


class EmbeddedPipeline:
    """`async with EmbeddedPipeline(city, data_dir=...) as p:` then publish to `p.broker`.

    `extra_sinks` get every reading and warning too, after the embedded store
    (through a `TeeSink`), such as an open `stream.sinks.influx.InfluxSink`;
    those with `write_response`, `write_pipeline` and `write_agent` get the
    alerts' response times, every stage's counters (every `meter_every_s`)
    and the edge agents' health too.
    They are the caller's: open before the pipeline starts and closed after
    it stopped, so they see everything the stream flushed.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        data_dir: Path,
        notifiers: Sequence[Notifier] = (),
        mqtt: BrokerSettings | None = None,
        clock: Clock | None = None,
        fresh_store: bool = True,
        on_delivery: DeliveryHook | None = None,
        connect_timeout: float = 15.0,
        engine: RuleEngine | None = None,
        extra_sinks: Sequence[ReadingSink] = (),
        ladder: Ladder | None = None,
        event_time: bool = False,
        meter_every_s: float = 5.0,
    ) -> None:
        self.registry = registry
        self._engine = engine
        self.data_dir = data_dir
        self._notifiers = tuple(notifiers)
        self._external_mqtt = mqtt
        self._clock = clock or SystemClock()
        self._fresh = fresh_store
        self._on_delivery_hook = on_delivery
        self._connect_timeout = connect_timeout
        self._extra_sinks = tuple(extra_sinks)
        self._ladder = ladder
        self._meter_every_s = meter_every_s
        #: The alert service's clock with `event_time`; None: the pipeline's own.
        self._event_clock = EventClock() if event_time else None
        self._handover = asyncio.Lock()
        self._stack = AsyncExitStack()
        self._active: dict[str, Level] = {}
        # Which (node, seq) the gateway forwarded: the demo's drain waits for
        # exactly the readings it published, not for a count that strangers
        # on a shared broker could make up.
        self._forwarded_keys: set[tuple[str, int]] = set()
        self._awaiting: set[tuple[str, int]] = set()
        self._all_forwarded = asyncio.Event()
        self.broker: BrokerSettings = mqtt or BrokerSettings()
        self.store: EmbeddedStore
        self.alerts: AlertService
        self.stream: ReadingPipeline
        self.gateway: Gateway
        self._app: Any = None

    @property
    def store_path(self) -> Path:
        return self.data_dir / STORE_FILE

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._fresh:
            # Sequence numbers of simulated nodes restart with every demo run,
            # so a demo's store starts empty rather than mixing two runs.
            for name in (STORE_FILE, ALERTS_FILE):
                for suffix in ("", "-wal", "-shm"):
                    (self.data_dir / (name + suffix)).unlink(missing_ok=True)
        self.store = await self._stack.enter_async_context(EmbeddedStore(self.store_path))
        alert_store = await self._stack.enter_async_context(AlertStore(self.data_dir / ALERTS_FILE))
        self.alerts = await self._stack.enter_async_context(
            AlertService(
                self._notifiers,
                clock=self._event_clock or self._clock,
                on_delivery=self._record_delivery,
                give_up_after=DELIVERY_GIVE_UP_S,
                store=alert_store,
                ladder=self._ladder,
                # In event time nothing ticks on the wall clock's schedule: each
                # warning calls in the steps due by its time, and `drain` ticks
                # at the newest reading's.
                tick_every=None if self._event_clock else 15.0,
                on_response=self._on_response,
            )
        )
        app = create_embedded_app(self.data_dir)
        sink: ReadingSink = self.store
        if self._extra_sinks:
            sink = TeeSink(self.store, *self._extra_sinks)
        engine = self._engine or RuleEngine()
        self.stream = ReadingPipeline(
            app,
            sink=sink,
            on_warning=self._on_warning,
            engine=engine,
            areas=AreaEngine(engine.area_rules, registry=self.registry),
        )
        await app.start()
        # Without Kafka nothing resumes flow control for us: channels stay
        # paused until we do.
        app.flow_control.resume()
        self._app = app
        self._stack.push_async_callback(self._stop_app)
        if self._external_mqtt is None:
            broker = await self._stack.enter_async_context(EmbeddedBroker())
            self.broker = broker.settings
        self.gateway = await self._stack.enter_async_context(
            Gateway(
                self.broker,
                self.registry,
                forward=self.stream.send,
                dead_letter=self.store.write_dead_letter,
                clock=self._clock,
                # One session per run: a persistent session left on an
                # external broker by an earlier run must not feed this one.
                client_id=f"cv-gateway-{uuid.uuid4().hex[:12]}",
                on_forwarded=self._note_forwarded,
                on_agent=self._on_agent if self._sinks_with("write_agent") else None,
            )
        )
        # In event time the counters are dated by the newest reading, so a
        # simulated day's board has them on that day.
        dated: Clock = self._clock if self._event_clock is None else _NewestReading(self.store)
        for metered in self._sinks_with("write_pipeline"):
            await self._stack.enter_async_context(
                PipelineMeter(
                    metered, "embedded", self._gauges, clock=dated, every_s=self._meter_every_s
                )
            )
        try:
            async with asyncio.timeout(self._connect_timeout):
                await self.gateway.wait_subscribed()
        except TimeoutError:
            raise BrokerUnreachableError(
                f"cannot reach the MQTT broker at {self.broker.host}:{self.broker.port} "
                f"within {self._connect_timeout:.0f} s: {self.gateway.last_error or 'no answer'}"
            ) from None

    async def _stop_app(self) -> None:
        await self._app.stop()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def _on_warning(self, warning: Warning) -> None:
        if warning.level is Level.NONE:
            self._active.pop(warning.fingerprint, None)
        else:
            self._active[warning.fingerprint] = warning.level
        clock = self._event_clock
        if clock is None:
            await self.alerts.submit(warning)
            return
        # One at a time (the readings and the area agents both hand warnings
        # over), each recorded while the clock says its time.
        async with self._handover:
            clock.at(warning.ts_ms)
            await self.alerts.submit(warning)
            await self.alerts.recorded()

    def _sinks_with(self, method: str) -> list[Any]:
        return [s for s in self._extra_sinks if hasattr(s, method)]

    async def _on_agent(self, status: AgentStatus, received_ms: int) -> None:
        # Flushed with the counters (the meter), not an fsync per heartbeat.
        for sink in self._sinks_with("write_agent"):
            await sink.write_agent(status, received_ms)

    def _gauges(self) -> list[Gauge]:
        g, s = self.gateway.stats(), self.stream
        handled = s.processed + s.duplicates + s.errors
        return [
            gateway_gauge(g),
            # Forwarded and not yet handled: the in-memory channel's depth (what
            # Kafka lag is in the distributed mode).
            stream_gauge(s, backlog=max(0, g.forwarded - handled)),
            *delivery_gauges(self.alerts.receivers()),
        ]

    async def _on_response(self, o: Observation) -> None:
        for sink in self._sinks_with("write_response"):
            await sink.write_response(o)
            await sink.flush()

    async def _record_delivery(
        self, n: Notification, receiver: str, outcome: str, detail: str
    ) -> None:
        await self.store.write_notification(
            notification_id=n.id,
            fingerprint=n.alert.fingerprint,
            event=n.event,
            level=int(n.alert.level),
            node=n.alert.node,
            receiver=receiver,
            outcome=outcome,
            detail=detail,
            ts_ms=self._clock.now_ms(),
        )
        if self._on_delivery_hook is not None:
            await self._on_delivery_hook(n, receiver, outcome, detail)

    def _note_forwarded(self, node: str, seq: int) -> None:
        key = (node, seq)
        self._forwarded_keys.add(key)
        if key in self._awaiting:
            self._awaiting.discard(key)
            if not self._awaiting:
                self._all_forwarded.set()

    async def drain(self, *, expected: set[tuple[str, int]]) -> None:
        """Wait until every reading in `expected` went through every stage.

        Bound it with `asyncio.timeout`; on timeout, `flush()` and report
        what is missing rather than hide it.
        """
        self._awaiting = expected - self._forwarded_keys
        if self._awaiting:
            self._all_forwarded.clear()
            await self._all_forwarded.wait()
        await self.stream.wait_processed(self.gateway.stats().forwarded)
        await self.alerts.drain()
        await self.store.flush()
        if self._event_clock is not None:
            # What came due after the last warning, by the newest reading's time.
            newest = await asyncio.to_thread(self.store.newest_reading_ms)
            if newest is not None:
                async with self._handover:
                    self._event_clock.at(newest)
                    await self.alerts.tick()
                await self.alerts.drain()

    async def flush(self) -> None:
        """Commit whatever the store holds (after a drain that timed out)."""
        await self.store.flush()

    def counts(self) -> PipelineCounts:
        g = self.gateway.stats()
        a = self.alerts.stats()
        return PipelineCounts(
            received=g.received,
            forwarded=g.forwarded,
            duplicates=g.duplicates,
            dead_letters=g.dead_letters,
            processed=self.stream.processed,
            stream_errors=self.stream.errors,
            warnings=self.stream.warnings,
            notifications=a.notifications,
            delivered=a.delivered,
            failed=a.failed,
            undelivered=a.undelivered,
            active=dict(Counter(self._active.values())),
        )
