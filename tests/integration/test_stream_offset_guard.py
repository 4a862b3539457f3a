"""The stream's offset guard against a real Kafka: what faust skipped is read back, in place."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream.kafka_offsets import OffsetGuard, PartitionReader
from stream.offsets import Record
from tests.integration.conftest import KafkaServer

pytestmark = pytest.mark.integration


async def _fill(bootstrap: str, topic: str, per_partition: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for partition in (0, 1):
            for i in range(per_partition):
                await producer.send_and_wait(
                    topic, f"{partition}:{i}".encode(), partition=partition
                )
    finally:
        await producer.stop()


async def _commit(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


def _handed(topic: str, partition: int, *offsets: int) -> list[Record]:
    return [Record((topic, partition), o, f"{partition}:{o}".encode()) for o in offsets]


async def test_skipped_records_are_read_back_in_place_and_the_tail_by_catch_up(
    kafka_server: KafkaServer,
):
    topic, group = f"guard-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    bootstrap = kafka_server.bootstrap
    await _fill(bootstrap, topic, per_partition=20)
    # Partition 0 was handled up to offset 5 before; partition 1 never.
    await _commit(bootstrap, group, {TopicPartition(topic, 0): 5})
    owned = {(topic, 0), (topic, 1), ("other", 0)}
    async with PartitionReader([bootstrap], group, timeout_s=20) as reader:
        guard = OffsetGuard(reader, topics=[topic], assignment=lambda: owned)
        # faust hands over: p0 from its committed offset with 7-11 skipped and 4 a
        # re-delivery; p1 from offset 3 (0-2 skipped); a record of a partition not ours.
        handed = [
            *_handed(topic, 0, 4, 5, 6, 12),
            *_handed(topic, 1, 3),
            Record((topic, 9), 0, b"foreign"),
        ]
        records = await guard.admit(handed)
        by_tp = {
            tp: [(r.offset, r.value) for r in records if r.tp == tp]
            for tp in ((topic, 0), (topic, 1))
        }
        assert by_tp[(topic, 0)] == [(o, f"0:{o}".encode()) for o in range(5, 13)]
        assert by_tp[(topic, 1)] == [(o, f"1:{o}".encode()) for o in range(4)]
        assert (guard.recovered, guard.stale, guard.foreign) == (5 + 3, 1, 1)
        guard.processed(records)

        # faust acknowledged p0 up to 17 without handing 13-16 over: the tail.
        assert guard.ledger.cap((topic, 0), 17) == 13
        tail = await guard.overdue()
        assert [(r.tp, r.offset) for r in tail] == [((topic, 0), o) for o in range(13, 17)]
        guard.processed(tail)
        assert guard.ledger.cap((topic, 0), 17) == 17
        assert await guard.overdue() == []
