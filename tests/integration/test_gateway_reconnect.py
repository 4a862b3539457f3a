"""The gateway against a real (embedded) broker that goes away mid-stream."""

from __future__ import annotations

import asyncio
import json

import aiomqtt
import pytest

from cityvitals.citygen import generate_city
from cityvitals.contract import DeadLetter, decode_enriched
from cityvitals.kinds import Kind
from gateway.bridge import Gateway
from gateway.embedded_broker import EmbeddedBroker
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

CITY = generate_city(nodes=40, districts=3, seed=11)
WATER = CITY.by_kind(Kind.WATER_LEVEL)[0].node
COUNT = 50


def reading(seq: int) -> bytes:
    return json.dumps(
        {
            "v": 1,
            "node": WATER,
            "kind": "water_level",
            "seq": seq,
            "ts_ms": 1_764_028_800_000,
            "metrics": {"depth_cm": 2.0},
        }
    ).encode()


async def test_messages_received_before_the_broker_dies_are_still_handled():
    """Readings the broker already handed over (and got PUBACKs for) but the gateway had
    not handled yet when the connection dropped are forwarded anyway, not thrown away
    with the old connection."""
    release = asyncio.Event()
    all_forwarded = asyncio.Event()
    forwarded: list[int] = []
    dead: list[DeadLetter] = []

    async def slow_forward(key: bytes, value: bytes) -> None:
        await release.wait()  # the stream is slow: the gateway's inbox fills up
        forwarded.append(decode_enriched(value)[1].seq)
        if len(forwarded) == COUNT:
            all_forwarded.set()

    async def dead_letter(letter: DeadLetter) -> None:
        dead.append(letter)

    async with EmbeddedBroker() as broker:
        gateway = Gateway(
            broker.settings,
            CITY,
            forward=slow_forward,
            dead_letter=dead_letter,
            client_id="test-gateway",
            backoff=(0.05, 0.1),
        )
        async with gateway:
            await asyncio.wait_for(gateway.wait_subscribed(), 10)
            async with aiomqtt.Client(broker.host, broker.port, identifier="test-node") as node:
                for seq in range(COUNT):
                    await node.publish(f"city/water_level/{WATER}/telemetry", reading(seq), qos=1)
            # All but the one being handled are waiting in the gateway's inbox.
            await wait_until(lambda: gateway.backlog == COUNT - 1)
            await broker.__aexit__(None, None, None)  # the broker goes away
            release.set()
            await asyncio.wait_for(all_forwarded.wait(), 10)
    assert forwarded == list(range(COUNT))
    assert dead == []
