"""Kafka stopped for 20 s under a steady stream of readings, then started again.

A module of its own: it stops its module's Kafka, which no other test should see.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from cityvitals.topics import telemetry_topic
from tests.integration.distributed_support import (
    RoleProcess,
    Store,
    publish,
    reading,
    running,
    subscribed,
    water_nodes,
    write_config,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

OUTAGE_S = 20.0


async def test_kafka_down_for_twenty_seconds_loses_no_reading(tmp_path, mosquitto, kafka_server):
    """While Kafka is down the gateway stops acknowledging MQTT messages (the broker
    keeps them), and the services keep running; once Kafka is back every reading
    published before, during and after the outage is in the sink exactly once."""
    nodes = water_nodes()[:6]
    config = write_config(tmp_path, mqtt=mosquitto, bootstrap=kafka_server.bootstrap)
    front = RoleProcess(config, "gateway", "alerts").start()
    worker = RoleProcess(config, "stream").start()
    store = Store(tmp_path)
    seqs = iter(range(10_000))
    published: list[tuple[str, int]] = []

    async def publish_for(seconds: float) -> None:
        """About 50 readings a second, each waiting for its PUBACK from the broker."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            seq = next(seqs)
            batch = [(n, seq) for n in nodes]
            await publish(
                mosquitto,
                [(telemetry_topic("water_level", n), reading(n, s, 3.0)) for n, s in batch],
                client_id="outage-publisher",
            )
            published.extend(batch)
            await asyncio.sleep(0.1)

    try:
        await subscribed(front)
        await publish_for(3)
        await wait_until(
            lambda: running(front, worker) and store.count() > 0, "first readings", deadline_s=60
        )
        kafka_server.stop()
        await publish_for(OUTAGE_S)
        kafka_server.start()
        await publish_for(3)
        await wait_until(
            lambda: running(front, worker) and set(store.reading_keys()) >= set(published),
            "every reading after the outage",
            deadline_s=180,
        )
        assert "holding MQTT acknowledgements" in front.text()
        assert worker.stop() == 0
        assert front.stop() == 0
    except AssertionError:
        for p in (front, worker):
            print(f"--- {p.log.name}\n{p.text()[-6000:]}")
        raise
    finally:
        for p in (front, worker):
            if p.alive():
                p.kill()
    assert Counter(store.reading_keys()) == Counter(published)
