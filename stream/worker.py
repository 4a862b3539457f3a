"""The distributed stream worker: the same agents, fed by Kafka, state in faust Tables.

Several workers with one `app_id` form a Kafka consumer group and split the
partitions of the readings and presence topics between them. Both topics
are keyed by node id and have the same number of partitions, so a node's
readings, its presence reports and its two tables (rule state, presence)
all live on partition `murmur2(node) % partitions` and on one worker.

Spatial rules re-key: a node warning a spatial rule counts is sent to the
area-updates topic keyed by (rule, area), and the worker owning that key's
partition counts it in the area's state (the third table, keyed the same
way). One writer per area, whichever workers its nodes live on.

The tables are written with `use_partitioner=True`: their changelog
partition comes from the key through the same partitioner the gateway's
producer uses, not from "the event being processed". That is what lets the
agents write state after a whole batch, and the silence sweep write it with
no event at all, and still land each node's state in its own partition.

Standby replicas are off: with them a worker would also hold (and sweep)
the state of partitions it does not own. A rebalanced worker recovers a
partition's state from its changelog before the agents see its messages.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2
from faust.types import TP

from cityvitals.clock import Clock
from cityvitals.contract import Warning, encode
from cityvitals.errors import CityvitalsError
from cityvitals.registry import Registry
from stream.agents import ReadingPipeline, ReadingSink
from stream.areas import AreaEngine
from stream.engine import RuleEngine
from stream.kafka_offsets import OffsetGuard, PartitionReader
from stream.presence import PresencePolicy

log = logging.getLogger(__name__)


async def _seek_to_committed(self: AIOKafkaConsumer, *partitions: TopicPartition) -> dict[Any, Any]:
    """aiokafka's `seek_to_committed`, without its `if offset and offset > 0`.

    faust, paused by a rebalance, drops what it fetched and calls this to go
    back to the committed offsets. aiokafka skips the seek when the committed
    offset is 0 (falsy), so a partition whose first records arrived during
    that window resumed past them and lost them (measured: the first 1 to 3
    readings per node on a partition a worker kept through a rebalance). An
    offset of 0 is an offset; seek to it.
    """
    if not partitions:
        partitions = tuple(self._subscription.assigned_partitions())
    committed = {}
    for tp in partitions:
        offset = await self.committed(tp)
        committed[tp] = offset
        if offset is not None and offset >= 0:
            self._fetcher.seek_to(tp, offset)
    return committed


AIOKafkaConsumer.seek_to_committed = _seek_to_committed

#: The worker's faust tables; their changelog topics are <app_id>-<name>-changelog.
TABLES = ("node-rules", "node-presence", "area-state")


def create_worker_app(
    app_id: str,
    bootstrap: Sequence[str],
    *,
    data_dir: Path,
    partitions: int,
    replication: int = 1,
    session_timeout_s: float = 10.0,
) -> faust.App:
    """A faust App on Kafka; `bootstrap` is a list of host:port."""
    datadir = data_dir / "faust" / app_id
    datadir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        app_id,
        broker=";".join(f"kafka://{server}" for server in bootstrap),
        store="memory://",
        datadir=str(datadir),
        web_enabled=False,
        autodiscover=False,
        # Tables take their changelog serializers from here: our state is bytes.
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=partitions,
        topic_replication_factor=replication,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # A dead worker's partitions move after this long, not faust's 60 s.
        broker_session_timeout=session_timeout_s,
        broker_heartbeat_interval=max(1.0, session_timeout_s / 4),
    )


class NodeTable(MutableMapping[str, bytes]):
    """A faust Table seen as node id → bytes; its keys are raw bytes in Kafka.

    Tables recover keys exactly as the changelog holds them (bytes, with a
    raw serializer), so the keys are bytes at run time too.
    """

    def __init__(self, table: Any) -> None:
        self.table = table

    def __getitem__(self, node: str) -> bytes:
        value = self.table.get(node.encode())
        if value is None:
            raise KeyError(node)
        return bytes(value)

    def __setitem__(self, node: str, value: bytes) -> None:
        self.table[node.encode()] = value

    def __delitem__(self, node: str) -> None:
        del self.table[node.encode()]

    def __iter__(self) -> Iterator[str]:
        return (bytes(k).decode() for k in list(self.table.keys()))

    def __len__(self) -> int:
        return len(self.table)


class RecoveryStalledError(CityvitalsError):
    """faust's table recovery stopped making progress (see `watch_recovery`)."""


def _exit_for_restart(exc: BaseException) -> None:
    """A failure the stream cannot step over: stop the process without committing.

    Leaving the normal way would let faust acknowledge the batch being
    handled; an immediate exit leaves its offsets uncommitted, the group
    gives the partitions to another worker (or this one, restarted by its
    supervisor), and the batch is handled again.
    """
    log.critical(
        "stream worker: %s: %s; exiting without committing, for a restart",
        type(exc).__name__,
        exc,
        exc_info=exc,
    )
    logging.shutdown()
    os._exit(70)  # EX_SOFTWARE


def partition_of(node: str, partitions: int) -> int:
    """The partition Kafka's default partitioner puts `node`'s records in.

    >>> partition_of("wl-0001", 8) == partition_of("wl-0001", 8)
    True
    """
    return int(murmur2(node.encode()) & 0x7FFFFFFF) % partitions


async def watch_recovery(
    app: Any,
    *,
    stall_s: float,
    every_s: float = 5.0,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    on_stall: Callable[[BaseException], None] | None = None,
) -> None:
    """Exit for a restart when `app`'s table recovery stops making progress.

    faust's recovery was seen to stall for good after two rebalances in
    quick succession (a worker joining, another leaving a second later):
    the changelog partitions the second assignment added are never
    fetched, so "records left to restore" stays where it is and the
    worker processes nothing while holding its partitions. A fresh
    process recovers them normally, so when recovery is in progress and
    that count has not gone down for `stall_s`, the worker exits (code
    70, nothing committed) for its supervisor (systemd) to restart it.
    A long but moving recovery is left alone, whatever it takes.
    """
    # `recovery` is on faust's TableManager, not on its TableManagerT interface
    # (hence `app: Any`).
    recovery = app.tables.recovery
    clock = clock or asyncio.get_running_loop().time
    stalled = on_stall or _exit_for_restart
    best: int | None = None
    since = clock()
    while True:
        await sleep(every_s)
        if not app.in_recovery:
            best = None
            continue
        remaining = int(recovery.active_remaining_total())
        if best is None or remaining < best:
            best, since = remaining, clock()
            continue
        if remaining > 0 and clock() - since >= stall_s:
            stalled(
                RecoveryStalledError(
                    f"table recovery made no progress for {clock() - since:.0f} s with "
                    f"{remaining} changelog record(s) still to read"
                )
            )
            return


class StreamWorker:
    """Topics, tables and agents of one worker; start it with `await worker.app.start()`."""

    def __init__(
        self,
        app: faust.App,
        *,
        readings_topic: str,
        presence_topic: str,
        warnings_topic: str,
        area_topic: str,
        partitions: int,
        sink: ReadingSink,
        presence: PresencePolicy | None = None,
        engine: RuleEngine | None = None,
        registry: Registry | None = None,
        clock: Clock | None = None,
        offsets: PartitionReader,
        batch_size: int = 500,
        batch_within_s: float = 0.2,
    ) -> None:
        self.app = app
        self.partitions = partitions
        # The two topics whose agents keep state: what faust skips of either
        # is read back, and neither is committed past what was handled.
        self.offsets = OffsetGuard(
            offsets,
            topics=(readings_topic, area_topic),
            assignment=lambda: set(app.consumer.assignment()),
        )
        self._guarding = False

        def topic(name: str) -> Any:
            return app.topic(
                name,
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
                partitions=partitions,
            )

        def table(name: str) -> Any:
            return app.Table(
                name,
                default=None,
                key_type=bytes,
                value_type=bytes,
                partitions=partitions,
                use_partitioner=True,
            )

        self._readings_name = readings_topic
        self.readings = topic(readings_topic)
        self.presence = topic(presence_topic)
        self.warnings = topic(warnings_topic)
        self.area_updates = topic(area_topic)
        self.rule_table = table(TABLES[0])
        self.presence_table = table(TABLES[1])
        self.area_table = table(TABLES[2])
        engine = engine or RuleEngine()
        self.pipeline = ReadingPipeline(
            app,
            sink=sink,
            on_warning=self._publish_warning,
            engine=engine,
            source=self.readings,
            presence_source=self.presence,
            state=NodeTable(self.rule_table),
            presence_state=NodeTable(self.presence_table),
            areas=AreaEngine(engine.area_rules, registry=registry),
            area_source=self.area_updates,
            area_state=NodeTable(self.area_table),
            presence=presence,
            clock=clock,
            batch_size=batch_size,
            batch_within_s=batch_within_s,
            owner=self.owner,
            ready=self.ready,
            on_fatal=_exit_for_restart,
            offsets=self.offsets,
        )

        app.on_partitions_assigned.connect(self._assigned)  # type: ignore[arg-type]

    async def _assigned(self, app: Any, assigned: set[TP], **_: Any) -> None:
        if not self._guarding:
            self._guarding = True
            self.offsets.install(app)
        # One line per rebalance: which partitions of the city this worker holds.
        mine = sorted(tp.partition for tp in assigned if tp.topic == self._readings_name)
        log.info(
            "stream worker assigned partitions %s of %s (%d of %d)",
            mine,
            self._readings_name,
            len(mine),
            self.partitions,
        )

    def ready(self) -> bool:
        """Not while partitions move or their state is still being recovered."""
        app = self.app
        return not (app.rebalancing or app.in_recovery)

    def owner(self) -> Callable[[str], bool]:
        """Whether a node's partition is assigned here, for the assignment of now."""
        mine = {
            tp.partition
            for tp in self.app.assignor.assigned_actives()
            if tp.topic == self._readings_name
        }
        return lambda node: partition_of(node, self.partitions) in mine

    async def _publish_warning(self, warning: Warning) -> None:
        # Keyed by fingerprint: one alert's changes stay in order.
        delivery = await self.warnings.send(key=warning.fingerprint.encode(), value=encode(warning))
        await delivery
