"""`cityvitals run --role gateway|stream|alerts|all`: each role as an async context manager.

    async with running(settings, {"gateway", "stream"}) as roles:
        await stop.wait()

Start order follows the data backwards (alerts, stream, gateway), so every
consumer is up before its producer; stop order is the reverse, each role
flushing what it holds. Gateways split the MQTT load through the shared
subscription and stream workers split the Kafka partitions; run one alerts
process (its alert book is in memory until the alert-dispatch issue).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Self, cast

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from alerts.annotations import GrafanaAnnotations
from alerts.api import AlertsApi, Tokens
from alerts.escalation import Ladder, Step
from alerts.incidents import GroupBy, IncidentBook
from alerts.links import ack_link
from alerts.metrics import Observation
from alerts.model import Alert
from alerts.notify import ConsoleNotifier, Notifier
from alerts.receivers import receiver
from alerts.routing import Route, Router
from alerts.service import AlertService
from alerts.silences import Matcher
from alerts.store import AlertStore
from cityvitals.clock import SystemClock
from cityvitals.contract import AgentStatus, decode_warning
from cityvitals.credentials import describe_owners
from cityvitals.distributed.topics import ensure_topics, seed_offsets
from cityvitals.errors import CityvitalsError
from cityvitals.registry import Registry
from cityvitals.settings import AlertsApiSettings, AlertSettings, InfluxSettings, Settings
from cityvitals.store import EmbeddedStore
from cityvitals.tasks import cancel_and_wait
from gateway.health import OnAgent
from gateway.kafka_bridge import KafkaGateway, KafkaTopics
from stream.agents import ReadingSink
from stream.engine import RuleEngine
from stream.kafka_offsets import PartitionReader
from stream.presence import PresencePolicy
from stream.rules import load_rules
from stream.sinks.influx import InfluxSink
from stream.sinks.meter import (
    Gauge,
    PipelineMeter,
    delivery_gauges,
    gateway_gauge,
    stream_gauge,
)
from stream.sinks.tee import TeeSink
from stream.worker import TABLES, StreamWorker, create_worker_app, watch_recovery

log = logging.getLogger(__name__)
#: How long a Grafana annotation is retried while Grafana fails.
GRAFANA_RETRY_FOR_S = 3600.0

ROLES = ("gateway", "stream", "alerts")


@dataclass
class Running:
    """What `running` started, for status lines and tests."""

    gateway: KafkaGateway | None = None
    stream: StreamWorker | None = None
    alerts: AlertsRole | None = None
    store: EmbeddedStore | None = None
    #: The InfluxDB sink, when cityvitals.toml has an [influxdb] table.
    influx: InfluxSink | None = None


async def prepare_kafka(settings: Settings) -> None:
    k = settings.kafka
    # faust's table changelogs too, compacted as faust would make them: made
    # here, before any worker starts, because a worker whose first state
    # write finds its changelog topic missing from the producer's metadata
    # fails that write. And checked: with another partition count a node's
    # state would be recovered on a worker that does not own the node.
    changelogs = [f"{settings.stream.app_id}-{t}-changelog" for t in TABLES]
    await ensure_topics(
        k.bootstrap_servers,
        [
            k.readings_topic,
            k.presence_topic,
            k.area_topic,
            k.warnings_topic,
            k.dead_letter_topic,
            *changelogs,
        ],
        partitions=k.partitions,
        replication=k.replication,
        copartitioned=[k.readings_topic, k.presence_topic, k.area_topic, *changelogs],
        compacted=changelogs,
    )
    await seed_offsets(
        k.bootstrap_servers,
        settings.stream.app_id,
        [k.readings_topic, k.presence_topic, k.area_topic],
        k.partitions,
    )


@asynccontextmanager
async def running(
    settings: Settings, roles: Collection[str], *, prepare: bool = True
) -> AsyncIterator[Running]:
    """The chosen roles, started in order and stopped in reverse. `prepare=False`
    when the caller has run `prepare_kafka` itself."""
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}; expected some of {ROLES}")
    if prepare:
        await prepare_kafka(settings)
    out = Running()
    spools: list[InfluxSink] = []
    async with AsyncExitStack() as stack:
        try:
            await _start_roles(stack, settings, roles, out, spools)
        except BaseException:
            # A start that fails half-way unwinds what it opened: as a stop does.
            for spool in spools:
                spool.begin_stop()
            raise
        # Pushed last, so the first thing a stop does: the roles stopping after it
        # flush their last points past a full spool rather than wait for room.
        for spool in spools:
            stack.callback(spool.begin_stop)
        log.info(
            "running %s (Kafka %s, MQTT %s:%d)",
            ", ".join(r for r in ROLES if r in roles),
            settings.kafka.bootstrap_servers,
            settings.broker.host,
            settings.broker.port,
        )
        yield out


async def _start_roles(
    stack: AsyncExitStack,
    settings: Settings,
    roles: Collection[str],
    out: Running,
    spools: list[InfluxSink],
) -> None:
    """Enter the chosen roles on `stack`; every InfluxDB sink opened goes in `spools`."""
    if "alerts" in roles:
        out.alerts = await stack.enter_async_context(AlertsRole(settings))
    if "stream" in roles:
        out.store = await stack.enter_async_context(EmbeddedStore(settings.stream.store_path))
        sink: ReadingSink = out.store
        if settings.influxdb is not None:
            # Entered after the store and so closed before it, but after
            # the stream role has stopped writing: its spool gets every
            # point the stream flushed.
            out.influx = await stack.enter_async_context(
                InfluxSink.from_settings(settings.influxdb)
            )
            spools.append(out.influx)
            sink = TeeSink(out.store, out.influx)
        out.stream = await stack.enter_async_context(StreamRole(settings, sink, influx=out.influx))
    if "gateway" in roles:
        registry = Registry.load(settings.registry_path)
        influx = out.influx
        if influx is None and settings.influxdb is not None:
            # The agents' health and the gateway's counters, through a spool of
            # the gateway's own.
            influx = await stack.enter_async_context(
                InfluxSink.from_settings(_own_spool(settings, "gateway"))
            )
            spools.append(influx)
        if settings.gateway.owners is not None:
            log.info(
                "gateway: agents speak only for their own nodes: %s",
                describe_owners(settings.gateway.owners, registry),
            )
        gateway = gateway_for(settings, registry, on_agent=_agent_writer(influx))
        out.gateway = await stack.enter_async_context(gateway)
        if influx is not None:
            await stack.enter_async_context(
                PipelineMeter(
                    influx,
                    settings.gateway.client_id,
                    lambda: [gateway_gauge(gateway.stats().routed)],
                    clock=SystemClock(),
                )
            )


def _own_spool(settings: Settings, role: str) -> InfluxSettings:
    """The [influxdb] settings with a spool file of `role`'s own (one writer per spool)."""
    assert settings.influxdb is not None  # noqa: S101 - the callers check
    spool = settings.influxdb.spool_path
    return dataclasses.replace(
        settings.influxdb, spool_path=spool.with_name(f"{spool.stem}-{role}{spool.suffix}")
    )


def _instance() -> str:
    """This process, as the `instance` tag of its counters."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _agent_writer(influx: InfluxSink | None) -> OnAgent | None:
    if influx is None:
        return None

    async def write(status: AgentStatus, received_ms: int) -> None:
        # No flush (an fsync) per status: a city of agents heartbeats thousands a
        # minute, inline with the readings. The gateway's meter flushes every 10 s.
        await influx.write_agent(status, received_ms)

    return write


def gateway_for(
    settings: Settings, registry: Registry, *, on_agent: OnAgent | None = None
) -> KafkaGateway:
    k, g = settings.kafka, settings.gateway
    return KafkaGateway(
        settings.broker,
        registry,
        bootstrap=k.bootstrap_servers,
        topics=KafkaTopics(
            readings=k.readings_topic,
            presence=k.presence_topic,
            dead_letters=k.dead_letter_topic,
        ),
        client_id=g.client_id,
        share_group=g.share_group,
        max_unacked=g.max_unacked,
        dedup_window=g.dedup_window,
        on_agent=on_agent,
        owners=g.owners,
    )


def engine_for(settings: Settings) -> RuleEngine:
    """The rule engine of the configured rule file, or of the built-in rules."""
    path = settings.stream.rules_path
    return RuleEngine() if path is None else RuleEngine(load_rules(path))


class StreamRole:
    """One faust worker: the app, its agents and the silence sweep.

    `sink` is the embedded store, or a `TeeSink` of the store and InfluxDB
    when cityvitals.toml has an [influxdb] table (see `running`).
    """

    def __init__(
        self,
        settings: Settings,
        sink: ReadingSink,
        *,
        recovery_stall_s: float = 60.0,
        influx: InfluxSink | None = None,
    ) -> None:
        s, k, p = settings.stream, settings.kafka, settings.presence
        self._recovery_stall_s = recovery_stall_s
        self._readings_topic, self._partitions = k.readings_topic, k.partitions
        self._meter: PipelineMeter | None = None
        self._influx = influx
        engine = engine_for(settings)
        # Spatial rules count an area's registered nodes (for `fraction`) and
        # place the area from them; node rules need no registry here.
        registry = Registry.load(settings.registry_path) if engine.area_rules else None
        self.app = create_worker_app(
            s.app_id,
            k.bootstrap,
            data_dir=settings.data_dir,
            partitions=k.partitions,
            replication=k.replication,
            session_timeout_s=s.session_timeout_s,
        )
        self._reader = PartitionReader(k.bootstrap, s.app_id)
        self.worker = StreamWorker(
            self.app,
            readings_topic=k.readings_topic,
            presence_topic=k.presence_topic,
            warnings_topic=k.warnings_topic,
            area_topic=k.area_topic,
            partitions=k.partitions,
            sink=sink,
            presence=PresencePolicy(
                silent_after_s=p.silent_after_s,
                silent_after_by_kind={k.value: v for k, v in p.silent_after_by_kind.items()},
                level=p.level,
            ),
            engine=engine,
            registry=registry,
            batch_size=s.batch_size,
            batch_within_s=s.batch_within_s,
            offsets=self._reader,
        )
        self._sweep_every = p.sweep_every_s
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> StreamWorker:
        await self.app.start()
        pipeline = self.worker.pipeline
        self._tasks = [
            asyncio.create_task(pipeline.sweep_every(self._sweep_every), name="presence-sweep"),
            # About as often as faust commits (every 2.8 s by default).
            asyncio.create_task(pipeline.catch_up_every(2.0), name="offset-catch-up"),
            asyncio.create_task(
                watch_recovery(self.app, stall_s=self._recovery_stall_s), name="recovery-watch"
            ),
        ]
        if self._influx is not None:
            self._meter = PipelineMeter(
                self._influx, _instance(), self._gauges, clock=SystemClock()
            )
            await self._meter.__aenter__()
        return self.worker

    async def _gauges(self) -> list[Gauge]:
        backlog = None
        try:
            # The group's, as this worker sees it: every worker reports the same.
            # Bounded: a Kafka that is down must not hold up the counters or a stop.
            lag = self._reader.lag(self._readings_topic, self._partitions)
            async with asyncio.timeout(5.0):
                backlog = await lag
        except (KafkaError, TimeoutError) as exc:
            log.debug("stream backlog not measured: %s", exc)
        return [stream_gauge(self.worker.pipeline, backlog=backlog)]

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            await cancel_and_wait(task)
        if self._meter is not None:
            await self._meter.__aexit__(None, None, None)
        await self.app.stop()
        await self._reader.__aexit__(None, None, None)
        p, o = self.worker.pipeline, self.worker.offsets
        log.info(
            "stream worker stopped: %d readings, %d duplicates skipped, %d presence reports, "
            "%d warnings, %d errors; %d records faust skipped were read from Kafka",
            p.processed,
            p.duplicates,
            p.presence_reports,
            p.warnings,
            p.errors,
            o.recovered,
        )


def _ack_links(api: AlertsApiSettings, clock: SystemClock) -> Callable[[Alert], str] | None:
    if api.public_url is None or api.link_secret is None:
        return None
    url, secret, ttl = api.public_url, api.link_secret, api.link_ttl_s

    def link(alert: Alert) -> str:
        return ack_link(url, secret, alert.fingerprint, expires_s=int(clock.now() + ttl))

    return link


def _retry_for(a: AlertSettings, notifiers: Sequence[Notifier]) -> dict[str, float]:
    """How long each receiver is retried: a webhook as its settings say, Grafana for
    an hour (down that long, it loses no annotation); the console as the service says."""
    out = {w.name: w.retry_for_s for w in a.webhooks}
    out.update(
        (n.name, GRAFANA_RETRY_FOR_S) for n in notifiers if isinstance(n, GrafanaAnnotations)
    )
    return out


def _ladder(a: AlertSettings) -> Ladder | None:
    if not a.escalation:
        return None
    steps = [
        Step(name, receivers, after_s, tuple(Matcher(*m) for m in matchers))  # type: ignore[arg-type]
        for name, receivers, after_s, matchers in a.escalation
    ]
    return Ladder(steps)


def _router(a: AlertSettings, names: list[str]) -> Router | None:
    if not a.routes:
        return None
    routes = [
        Route(
            tuple(Matcher(n, v, o) for n, v, o in matchers),  # type: ignore[arg-type]
            receivers,
            continue_=more,
        )
        for matchers, receivers, more in a.routes
    ]
    # As without routes: the fallback and those only the ladder calls in are not defaults.
    laddered = {r for _, receivers, _, _ in a.escalation for r in receivers}
    return Router(routes, default=[n for n in names if n != a.fallback and n not in laddered])


class AlertsRole:
    """Warnings from Kafka into the alert service; offsets committed once handled.

    The consumer group is `<topic prefix>-alerts`. Offsets are committed only
    after the alert service has folded the warnings before them into its book
    and recorded what it owes each receiver in the alert store
    (`[alerts] store`, alerts/store.py), so a restart re-reads, never skips;
    the book, rebuilt from the store, ignores a warning it has already
    applied, and the outbox resumes what was owed under the same keys.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.service: AlertService
        self._stack = AsyncExitStack()
        self._task: asyncio.Task[None] | None = None
        self._influx: InfluxSink | None = None
        self.consumed = 0

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            if self._influx is not None:
                self._influx.begin_stop()  # as a stop does first (see running)
            await self._stack.aclose()
            raise
        return self

    async def _start(self) -> None:
        a = self.settings.alerts
        notifiers: list[Notifier] = []
        if a.console:
            notifiers.append(ConsoleNotifier(logging.getLogger("cityvitals.alerts").info))
        if a.webhooks:
            import aiohttp

            session = await self._stack.enter_async_context(aiohttp.ClientSession())
            notifiers += [receiver(w, session) for w in a.webhooks]
        if a.grafana is not None:
            url, token, dashboard = a.grafana
            notifiers.append(
                await self._stack.enter_async_context(
                    GrafanaAnnotations(url, token, dashboard_uid=dashboard)
                )
            )
        store = await self._stack.enter_async_context(AlertStore(a.store_path))
        clock = SystemClock()
        on_response = None
        influx: InfluxSink | None = None
        if self.settings.influxdb is not None:
            # Response times go to InfluxDB for the dashboards, through a spool of
            # this role's own (the stream workers' is theirs).
            influx = await self._stack.enter_async_context(
                InfluxSink.from_settings(_own_spool(self.settings, "alerts"))
            )
            self._influx = influx

            async def on_response(o: Observation) -> None:
                await influx.write_response(o)
                await influx.flush()

        self.service = await self._stack.enter_async_context(
            AlertService(
                notifiers,
                clock=clock,
                store=store,
                fallback=a.fallback,
                repeat_every=a.repeat_every_s,
                ack_links=None if a.api is None else _ack_links(a.api, clock),
                incidents=IncidentBook(
                    group_by=cast("GroupBy", a.group_by),
                    window_ms=round(a.group_window_s * 1000),
                ),
                router=_router(a, [n.name for n in notifiers]),
                ladder=_ladder(a),
                on_response=on_response,
                retry_for=_retry_for(a, notifiers),
            )
        )
        if influx is not None:
            service = self.service
            await self._stack.enter_async_context(
                PipelineMeter(
                    influx,
                    _instance(),
                    lambda: delivery_gauges(service.receivers()),
                    clock=clock,
                )
            )
        if a.api is not None:
            await self._serve_api(a.api)
        k = self.settings.kafka
        consumer = AIOKafkaConsumer(
            k.warnings_topic,
            bootstrap_servers=k.bootstrap_servers,
            group_id=f"{k.topic_prefix}-alerts",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        # Stopped even when its start fails or is cancelled half-way.
        self._stack.push_async_callback(consumer.stop)
        await consumer.start()
        self._task = asyncio.create_task(self._consume(consumer), name="alerts-consumer")
        self._stack.push_async_callback(cancel_and_wait, self._task)
        if influx is not None:
            # Run first at a stop: the service's last response times and the
            # meter's last counts go past a full spool instead of hanging it.
            self._stack.callback(influx.begin_stop)

    async def _serve_api(self, api: AlertsApiSettings) -> None:
        from aiohttp import web

        handlers = AlertsApi(
            self.service, Tokens.load(api.tokens_path), link_secret=api.link_secret
        )
        runner = web.AppRunner(handlers.app(), access_log=None)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        try:
            await web.TCPSite(runner, api.host, api.port).start()
        except OSError as exc:
            # A port taken, an address not ours: say which, as a config error would.
            raise CityvitalsError(
                f"alerts API: cannot listen on {api.host}:{api.port} ([alerts.api] listen): {exc}"
            ) from exc
        log.info("alerts API listening on http://%s:%d", api.host, api.port)

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=1000, max_records=500)
                for records in batches.values():
                    for record in records:
                        try:
                            warning = decode_warning(record.value or b"")
                        except Exception:
                            log.exception("alerts: undecodable warning at offset %s", record.offset)
                            continue
                        await self.service.submit(warning)
                        self.consumed += 1
                if batches:
                    # Committed once in the book and owed in the store, not once
                    # delivered: a receiver down for an hour must not stall the
                    # warnings behind it (the outbox keeps what it owes them).
                    await self.service.recorded()
                    await consumer.commit()
            except KafkaError as exc:
                log.warning("alerts: Kafka error (%s); retrying", exc)
                await asyncio.sleep(1.0)
            except Exception:
                # Our bug: say so, keep consuming (uncommitted, so re-read).
                log.exception("alerts: failed handling warnings; retrying")
                await asyncio.sleep(1.0)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()
