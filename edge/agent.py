"""The edge agent: drivers in, durable queue, MQTT out.

For every sample a driver takes, the agent

1. checks the local alarm points and, on a rising edge, queues an
   `EdgeEvent` in the urgent lane (published ahead of any backlog);
2. decides by exception whether to report it (edge/report.py) and whether
   the node should sample faster, near a warning threshold;
3. stamps the reading with the node's next sequence number and the time, and
   puts it in the durable queue (edge/queue.py), from where the publisher
   sends it and deletes it on the broker's acknowledgement.

Beside that it sends heartbeats (agent and nodes, retained), turns queue
losses into `readings_dropped` events, and logs what changed: one line per
state change or per interval with news, never one per reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cityvitals.clock import Clock, SystemClock
from cityvitals.contract import CONTRACT_VERSION, EdgeEvent, Reading, encode, validate_reading
from cityvitals.errors import ContractError
from cityvitals.kinds import Kind
from cityvitals.levels import Level
from cityvitals.tasks import cancel_and_wait
from cityvitals.topics import agent_status_topic, event_topic, parse_topic, status_topic
from edge.alarms import EdgeAlarms
from edge.buffer import Outbound
from edge.config import EdgeConfig, NodeConfig
from edge.drivers import Sample, SerialDriver, SimulatedDriver
from edge.publisher import EdgePublisher
from edge.queue import DurableQueue, Loss
from edge.report import NodeReporter

log = logging.getLogger(__name__)

#: How long a stopping agent waits for the broker to take what is queued;
#: the rest stays on disk for the next start.
DRAIN_S = 5.0


@dataclass(frozen=True, slots=True)
class AgentSummary:
    samples: int
    reported: int
    suppressed: int
    alarms: int
    refused: int
    left_in_queue: int


class EdgeAgent:
    def __init__(self, config: EdgeConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self._clock = clock or SystemClock()
        self._kinds: dict[str, Kind] = {n.node: n.kind for n in config.nodes}
        self._reporters: dict[str, NodeReporter] = {
            n.node: n.report.start() for n in config.nodes if n.report is not None
        }
        self._intervals = {n.node: n.interval_s for n in config.nodes}
        self._alarms = EdgeAlarms()
        self._health: dict[str, tuple[float | None, float | None]] = {}
        self._counts: Counter[str] = Counter()
        self._invalid_told: set[tuple[str, str]] = set()
        self._queue: DurableQueue | None = None
        self._publisher: EdgePublisher | None = None
        self._serial: list[SerialDriver] = []
        self._driver_tasks: list[asyncio.Task[None]] = []
        self._running = asyncio.Event()

    # -- the sink the drivers call ---------------------------------------------

    def interval_s(self, node: str) -> float:
        reporter = self._reporters.get(node)
        if reporter is not None:
            return reporter.interval_s
        return self._intervals.get(node, 60.0)

    async def sample(self, sample: Sample) -> float | None:
        queue, publisher = self._parts()
        self._counts["samples"] += 1
        self._kinds.setdefault(sample.node, sample.kind)
        now_ms = self._clock.now_ms()
        for event, level, detail in self._alarms.check(sample.node, sample.kind, sample.metrics):
            await self._event(sample.node, sample.kind, event, level, detail, ts_ms=now_ms)
        reporter = self._reporters.get(sample.node)
        was_fast = reporter.fast if reporter else False
        if reporter is not None and not reporter.offer(now_ms / 1000, sample.metrics):
            self._counts["suppressed"] += 1
            return None
        self._health[sample.node] = (sample.battery_pct, sample.rssi_dbm)
        reading = Reading(
            v=CONTRACT_VERSION,
            node=sample.node,
            kind=sample.kind,
            seq=queue.next_seq(sample.node),
            ts_ms=now_ms,
            metrics=sample.metrics,
            battery_pct=sample.battery_pct,
            rssi_dbm=sample.rssi_dbm,
        )
        self._check(reading)
        if await publisher.submit(reading):
            self._counts["reported"] += 1
        else:
            self._counts["refused"] += 1
        if reporter is not None and reporter.fast != was_fast:
            log.info(
                "%s: sampling every %g s (%s)",
                sample.node,
                reporter.interval_s,
                "near a warning threshold" if reporter.fast else "back to normal",
            )
            return reporter.interval_s
        return None

    async def node_event(self, node: str, kind: Kind, event: str, detail: str | None) -> None:
        self._kinds.setdefault(node, kind)
        await self._event(node, kind, event, Level.ORANGE, detail, ts_ms=self._clock.now_ms())

    async def _event(
        self, node: str, kind: Kind, event: str, level: Level, detail: str | None, *, ts_ms: int
    ) -> None:
        _, publisher = self._parts()
        self._counts["alarms"] += 1
        log.warning("%s: edge alarm %s (%s)", node, event, detail or "no detail")
        await publisher.submit_event(
            EdgeEvent(
                v=CONTRACT_VERSION,
                node=node,
                kind=kind,
                ts_ms=ts_ms,
                event=event,
                level=level,
                detail=detail,
                id=f"{node}:{event}:{ts_ms}",
            )
        )

    def _check(self, reading: Reading) -> None:
        """Say once per node and reason when a sensor reports what the contract
        refuses. The reading is sent anyway: the gateway keeps it as a dead
        letter with its bytes, where it can be looked at, instead of it
        vanishing here."""
        try:
            validate_reading(reading)
        except ContractError as exc:
            self._counts["invalid"] += 1
            key = (reading.node, exc.reason)
            if key not in self._invalid_told:
                self._invalid_told.add(key)
                log.warning("%s: sensor reports %s (%s)", reading.node, exc.reason, exc.detail)

    # -- running ---------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> AgentSummary:
        cfg = self.config
        nodes = [(n.node, n.kind) for n in cfg.nodes]
        async with (
            DurableQueue(
                cfg.queue_path, cfg.queue, clock=self._clock, synchronous=cfg.synchronous
            ) as queue,
            EdgePublisher(
                cfg.broker,
                agent_id=cfg.agent_id,
                nodes=nodes,
                clock=self._clock,
                buffer=queue,
                window=cfg.window,
                publish_timeout=cfg.publish_timeout_s,
                backoff=(min(0.2, cfg.reconnect_max_s), cfg.reconnect_max_s),
            ) as publisher,
        ):
            self._queue, self._publisher = queue, publisher
            self._running.set()
            log.info(
                "agent %s: %d nodes, queue %s (bound %.0f MiB, %s), broker %s:%d%s",
                cfg.agent_id,
                len(cfg.nodes),
                cfg.queue_path,
                cfg.queue.max_bytes / 2**20,
                cfg.queue.when_full,
                cfg.broker.host,
                cfg.broker.port,
                " (TLS)" if cfg.broker.tls else "",
            )
            drivers = self._drivers()
            self._driver_tasks = [
                asyncio.create_task(self._guard(name, run)) for name, run in drivers
            ]
            periodic = [
                asyncio.create_task(self._every(cfg.heartbeat_s, self._heartbeat)),
                asyncio.create_task(self._every(cfg.loss_report_s, self._report_losses)),
                asyncio.create_task(self._every(cfg.log_every_s, self._log_news)),
            ]
            try:
                await stop.wait()
            finally:
                for task in self._driver_tasks:
                    # A serial driver joins its reader thread: seconds, at most.
                    await cancel_and_wait(task)
                for task in periodic:
                    # Nothing to clean up in them; a heartbeat that swallowed its
                    # cancel (see cancel_and_wait) is cancelled again soon.
                    await cancel_and_wait(task, again_after_s=1.0)
                await self._drain(publisher)
            left = len(queue)
        self._log_news()
        return AgentSummary(
            samples=self._counts["samples"],
            reported=self._counts["reported"],
            suppressed=self._counts["suppressed"],
            alarms=self._counts["alarms"],
            refused=self._counts["refused"],
            left_in_queue=left,
        )

    def _drivers(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        out: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        by_port: dict[str, dict[str, NodeConfig]] = {p.name: {} for p in self.config.serial}
        for node in self.config.nodes:
            if node.serial is not None:
                by_port[node.serial][node.node] = node
            else:
                out.append((f"simulated {node.node}", SimulatedDriver(node, self).run))
        for port in self.config.serial:
            serial = SerialDriver(port, by_port[port.name], self)
            self._serial.append(serial)
            out.append((f"serial {port.name}", serial.run))
        return out

    async def _guard(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """A driver that fails on a bug is restarted, not left dead: the other
        nodes keep reporting, and the log says what happened once per burst."""
        failures = 0
        while True:
            try:
                await run()
            except Exception:
                failures += 1
                if failures == 1 or failures % 100 == 0:
                    log.exception("%s failed (%d times); restarting it", name, failures)
                await asyncio.sleep(min(30.0, 0.5 * failures))
            else:
                return  # finished on purpose (a simulated node with a limit)

    async def _every(self, period_s: float, job: Callable[[], Awaitable[None] | None]) -> None:
        while True:
            await asyncio.sleep(period_s)
            try:
                result = job()
                if result is not None:
                    await result
            except Exception:
                log.exception("agent %s: periodic job failed", self.config.agent_id)

    async def _drain(self, publisher: EdgePublisher) -> None:
        """A bounded last chance for the broker to take what is queued (the
        disk keeps the rest); bounded even when the disk itself is failing."""
        queue, _ = self._parts()
        with contextlib.suppress(TimeoutError, RuntimeError):
            async with asyncio.timeout(DRAIN_S):
                await queue.sync()
                if publisher.connected and len(queue):
                    await publisher.flush()

    async def wait_sampled(self) -> None:
        """Return once every driver has stopped on its own (simulated nodes with
        a `limit`: benchmarks and tests); a serial driver never does."""
        await self._running.wait()
        await asyncio.gather(*self._driver_tasks)

    @property
    def pending(self) -> int:
        """Readings and events on disk not yet acknowledged by the broker."""
        return len(self._queue) if self._queue is not None else 0

    async def wait_delivered(self) -> None:
        """Return once everything queued so far has been acknowledged."""
        queue, _ = self._parts()
        await queue.wait_empty()

    # -- periodic jobs ----------------------------------------------------------

    async def _heartbeat(self) -> None:
        queue, publisher = self._parts()
        if not publisher.connected:
            return
        stats = queue.stats()
        links = {d.port.name: d.counters.as_dict() for d in self._serial}
        status = publisher.agent_status(
            "online",
            buffer_depth=stats.depth,
            buffer_bytes=stats.bytes,
            dropped=stats.dropped,
            links=links or None,
        )
        await publisher.publish_now(
            agent_status_topic(self.config.agent_id), encode(status), retain=True
        )
        for node, kind in publisher.nodes:
            battery, rssi = self._health.get(node, (None, None))
            beat = publisher.node_status(
                node, kind, "online", battery_pct=battery, rssi_dbm=rssi, buffer_depth=stats.depth
            )
            await publisher.publish_now(status_topic(kind, node), encode(beat), retain=True)

    async def _report_losses(self) -> None:
        queue, publisher = self._parts()
        if publisher.connected:
            await queue.report_losses(self._loss_event)

    def _loss_event(self, loss: Loss) -> Outbound:
        topic = parse_topic(loss.topic)
        kind = self._kinds.get(loss.node) or Kind(topic.kind if topic else "")
        first = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(loss.first_ms / 1000))
        last = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(loss.last_ms / 1000))
        bound = self.config.queue
        event = EdgeEvent(
            v=CONTRACT_VERSION,
            node=loss.node,
            kind=kind,
            ts_ms=self._clock.now_ms(),
            event="readings_dropped",
            level=Level.NONE,
            count=loss.count,
            # One report per (node, cause) covers losses after the previous
            # one's: the span identifies it, and a resend repeats it.
            id=f"{loss.node}:{loss.cause.value}:{loss.first_ms}-{loss.last_ms}",
            detail=(
                f"{loss.cause.value}: edge queue bound {bound.max_bytes / 2**20:.1f} MiB, "
                f"max age {bound.max_age_s or 'none'} s, policy {bound.when_full}; "
                f"lost between {first} and {last}"
            ),
        )
        return Outbound(event_topic(kind, loss.node), encode(event), loss.node, 0)

    _logged: Counter[str] | None = None

    def _log_news(self) -> None:
        for driver in self._serial:
            line = driver.link.summary_since_last()
            if line:
                log.warning("%s", line)
        counts = Counter(self._counts)
        if self._queue is not None:
            counts["depth"] = len(self._queue)
            counts["dropped"] = self._queue.stats().dropped
        if counts == self._logged:
            return
        self._logged = counts
        log.info(
            "agent %s: %d samples, %d reported, %d suppressed by exception, %d alarms, "
            "%d in the queue, %d dropped",
            self.config.agent_id,
            counts["samples"],
            counts["reported"],
            counts["suppressed"],
            counts["alarms"],
            counts["depth"],
            counts["dropped"],
        )

    def _parts(self) -> tuple[DurableQueue, EdgePublisher]:
        if self._queue is None or self._publisher is None:
            raise RuntimeError("the agent is not running")
        return self._queue, self._publisher
