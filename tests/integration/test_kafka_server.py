"""The local Kafka the distributed tests use: real, KRaft, from Maven Central."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.integration.conftest import KafkaServer

pytestmark = pytest.mark.integration


async def consume(
    bootstrap: str, topic: str, count: int
) -> list[tuple[bytes | None, bytes | None]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=f"t-{topic}"
    )
    await consumer.start()
    try:
        out = []
        async with asyncio.timeout(30):
            async for message in consumer:
                out.append((message.key, message.value))
                if len(out) == count:
                    return out
        return out
    finally:
        await consumer.stop()


async def test_kafka_keeps_order_per_key_and_its_data_across_a_restart(kafka_server: KafkaServer):
    """Records keyed by node come back in order per key, also after the broker restarts."""
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_server.bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        for i in range(200):
            await producer.send("smoke-test", key=f"n{i % 4}".encode(), value=str(i).encode())
        await producer.flush()
    finally:
        await producer.stop()
    await asyncio.to_thread(kafka_server.stop)
    await asyncio.to_thread(kafka_server.start)
    records = await consume(kafka_server.bootstrap, "smoke-test", 200)
    for node in range(4):
        values = [int(v) for k, v in records if k == f"n{node}".encode() and v is not None]
        assert values == list(range(node, 200, 4))
