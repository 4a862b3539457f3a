"""The offset ledger wired to Kafka and faust: nothing skipped, nothing committed early.

`OffsetGuard` stands between faust and the readings agent:

- `admit` turns a batch of faust events into the records to process: those
  of partitions this worker owns, not handled already, with any offsets
  faust skipped read directly from Kafka and put back in their place;
- `processed` records that a batch is durable (sink, warnings, state);
- `install` makes faust's commits go no further than the ledger, and
  forgets revoked partitions;
- `overdue` reads what faust acknowledged without the agent seeing it (the
  tail of a partition, where no later record reveals the gap).

`PartitionReader` is a plain aiokafka consumer with the stream's group id
that never joins the group: it reads the group's committed offsets and
ranges of a partition, outside faust.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Hashable, Sequence
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.offsets import Missing, OffsetLedger, Record

log = logging.getLogger(__name__)


class PartitionReadError(Exception):
    """A range of a partition could not be read in time (Kafka down or slow)."""


def _tp(tp: Hashable) -> TopicPartition:
    # faust's TP and aiokafka's TopicPartition are both (topic, partition).
    topic: str = tp[0]  # type: ignore[index]
    partition: int = tp[1]  # type: ignore[index]
    return TopicPartition(topic, partition)


class PartitionReader:
    """Committed offsets and ranges of partitions, read outside the consumer group."""

    def __init__(self, bootstrap: Sequence[str], group: str, *, timeout_s: float = 30.0) -> None:
        self._bootstrap = list(bootstrap)
        self._group = group
        self._timeout_s = timeout_s
        self._consumer: AIOKafkaConsumer | None = None
        # One read at a time: the consumer's assignment is the partition being read.
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def _ready(self, tp: TopicPartition) -> AIOKafkaConsumer:
        if self._consumer is None:
            # Started on first use: most workers never need it.
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap,
                group_id=self._group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
            )
            try:
                await consumer.start()
            except BaseException:
                await consumer.stop()
                raise
            self._consumer = consumer
        self._consumer.assign([tp])
        return self._consumer

    async def committed(self, tp: Hashable) -> int:
        """The group's committed offset of `tp`, or its first offset if none."""
        part = _tp(tp)
        async with self._lock, asyncio.timeout(self._timeout_s):
            consumer = await self._ready(part)
            offset = await consumer.committed(part)
            if offset is None:
                offset = (await consumer.beginning_offsets([part]))[part]
            return int(offset)

    async def lag(self, topic: str, partitions: int) -> int:
        """How far the group is behind on `topic`: its end offsets minus what it has
        committed, over every partition (a partition never committed counts from its
        first offset)."""
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        async with self._lock, asyncio.timeout(self._timeout_s):
            consumer = await self._ready(tps[0])
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            behind = 0
            for tp in tps:
                done = await consumer.committed(tp)
                if done is None:
                    done = (await consumer.beginning_offsets([tp]))[tp]
                behind += max(0, int(ends[tp]) - int(done))
            return behind

    async def read(self, tp: Hashable, start: int, stop: int) -> list[Record]:
        """Every record of `tp` with an offset in [start, stop), in order.

        Offsets Kafka no longer holds (retention) are simply absent.
        """
        part = _tp(tp)
        out: list[Record] = []
        async with self._lock:
            try:
                async with asyncio.timeout(self._timeout_s):
                    consumer = await self._ready(part)
                    consumer.seek(part, start)
                    while await consumer.position(part) < stop:
                        fetched = await consumer.getmany(part, timeout_ms=500, max_records=1000)
                        out += (
                            Record(tp, m.offset, m.value or b"", m.key or b"")
                            for m in fetched.get(part, [])
                            if start <= m.offset < stop
                        )
            except TimeoutError:
                raise PartitionReadError(
                    f"reading {part.topic}[{part.partition}] offsets {start}-{stop - 1}: "
                    f"only {len(out)} record(s) in {self._timeout_s:.0f} s"
                ) from None
        return out


class OffsetGuard:
    """The ledger of some topics' partitions, kept against faust and Kafka."""

    def __init__(
        self,
        reader: PartitionReader,
        *,
        topics: Collection[str],
        assignment: Callable[[], set[Any]],
    ) -> None:
        self.ledger = OffsetLedger()
        self._reader = reader
        self._topics = frozenset(topics)
        self._assignment = assignment
        #: Records faust skipped that were read from Kafka directly.
        self.recovered = 0
        #: Records handed over again that were handled already.
        self.stale = 0
        #: Records of partitions this worker no longer owns, left to their owner.
        self.foreign = 0

    def _owned(self) -> set[Any]:
        return {tp for tp in self._assignment() if tp[0] in self._topics}

    async def _start(self, tps: set[Any]) -> None:
        for tp in tps:
            if not self.ledger.knows(tp):
                self.ledger.start(tp, await self._reader.committed(tp))

    async def admit(self, records: Sequence[Record]) -> list[Record]:
        """The records to process for a batch faust handed over, in order."""
        owned = self._owned()
        mine = [r for r in records if r.tp in owned]
        self.foreign += len(records) - len(mine)
        await self._start({r.tp for r in mine})
        steps, stale = self.ledger.plan(mine)
        self.stale += stale
        out: list[Record] = []
        for step in steps:
            if isinstance(step, Missing):
                out += await self._recover(step, f"before offset {step.stop}")
            else:
                out.append(step)
        return out

    def processed(self, records: Sequence[Record]) -> None:
        self.ledger.processed(records)

    async def overdue(self) -> list[Record]:
        """What faust acknowledged beyond the ledger on owned partitions, read from Kafka."""
        owned = self._owned()
        out: list[Record] = []
        for tp, (_, wanted) in self.ledger.overdue().items():
            if tp not in owned:
                self.ledger.give_up(tp)
                continue
            await self._start({tp})
            expected = self.ledger.next_offset(tp)
            if expected is not None and expected < wanted:
                out += await self._recover(Missing(tp, expected, wanted), "acknowledged by faust")
        return out

    async def _recover(self, missing: Missing, why: str) -> list[Record]:
        got = await self._reader.read(missing.tp, missing.start, missing.stop)
        self.recovered += len(got)
        # Each of these is a record faust would have lost: worth a line each time.
        log.warning(
            "stream: %d record(s) of %s[%d] at offsets %d-%d never reached the agent (%s); "
            "read them from Kafka",
            len(got),
            missing.tp[0],  # type: ignore[index]
            missing.tp[1],  # type: ignore[index]
            missing.start,
            missing.stop - 1,
            why,
        )
        return got

    def install(self, app: Any) -> None:
        """Cap faust's commits at the ledger and forget revoked partitions.

        The cap sits on faust's last step, the Kafka commit itself, so faust's
        own book-keeping (which decides what it proposes) is left as it is.
        Call from the first `on_partitions_assigned`: faust's consumer exists
        by then, and nothing has been acknowledged yet.
        """
        consumer = app.consumer
        commit = consumer._commit
        sent: dict[Any, int] = {}

        async def capped(offsets: Any) -> bool:
            allowed: dict[Any, int] = {}
            for tp, offset in offsets.items():
                if tp.topic not in self._topics:
                    allowed[tp] = offset
                    continue
                limit = self.ledger.cap(tp, offset)
                if limit is not None and limit > sent.get(tp, -1):
                    allowed[tp] = limit
            if not allowed:
                return False
            done = bool(await commit(allowed))
            if done:
                sent.update(allowed)
            return done

        consumer._commit = capped

        async def revoked(sender: Any, revoked: set[Any], **_: Any) -> None:
            self.ledger.forget(revoked)
            for tp in revoked:
                sent.pop(tp, None)

        app.on_partitions_revoked.connect(revoked)
