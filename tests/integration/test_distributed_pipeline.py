"""The distributed path against real servers: Mosquitto, a single-node Kafka (KRaft) and
`cityvitals run` processes; the sink is the stream workers' shared SQLite store.

Each test has its own topics (a unique prefix) on the module's Kafka, its own
Mosquitto and its own data directory. Every wait is bounded and checks a
condition the servers expose (rows in the store, records in a topic).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest

from cityvitals.contract import Reason, decode_dead_letter, decode_enriched
from cityvitals.levels import Level
from cityvitals.settings import load_settings
from cityvitals.topics import agent_status_topic, telemetry_topic
from tests.integration.conftest import KafkaServer
from tests.integration.distributed_support import (
    TS,
    RoleProcess,
    Store,
    expected_areas,
    publish,
    read_topic,
    reading,
    running,
    settled,
    storm_messages,
    subscribed,
    water_nodes,
    write_config,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

NODES = water_nodes()[:8]


async def _all_stored(
    store: Store, expected: set[tuple[str, int]], deadline_s: float, procs: list[RoleProcess]
) -> None:
    await wait_until(
        lambda: running(*procs) and set(store.reading_keys()) >= expected,
        f"{len(expected)} readings in the store",
        deadline_s=deadline_s,
    )


async def _areas_stored(
    store: Store,
    expected: dict[tuple[str, str], tuple[int, int]],
    procs: list[RoleProcess],
    what: str,
) -> None:
    # What must hold whatever order the area agent got the nodes' changes in: the
    # same districts raise an event, at least at the built-in rule's yellow, and each
    # ends where the pure engines end it.
    def same() -> bool:
        stored = store.areas()
        return stored.keys() == expected.keys() and all(
            stored[k][0] >= Level.YELLOW and stored[k][1] == expected[k][1] for k in expected
        )

    try:
        await wait_until(same, what, deadline_s=60)
    except AssertionError:
        print("expected", expected, "stored", store.areas())
        for p in procs:
            p.stop()
            print(p.log.name, p.text()[-4000:])
        raise


async def _run_city(
    tmp: Path,
    mosquitto: str,
    kafka: KafkaServer,
    *,
    workers: int,
    per_node: int = 60,
) -> tuple[Store, list[RoleProcess], set[tuple[str, int]]]:
    config = write_config(tmp, mqtt=mosquitto, bootstrap=kafka.bootstrap)
    procs = [RoleProcess(config, "gateway", "alerts").start()]
    procs += [RoleProcess(config, "stream", name=f"stream{i}").start() for i in range(workers)]
    await subscribed(procs[0])
    if workers > 1:
        # Publish once the group is settled, every worker holding a share and the
        # shares adding up: a rebalance while messages flow can lose the ones in
        # flight (a faust issue, see docs/distributed.md "Known issues").
        await wait_until(
            lambda: running(*procs) and settled(procs[1:], partitions=4),
            "the workers to split the partitions",
            deadline_s=90,
        )
    messages = storm_messages(NODES, per_node)
    # Every message twice: QoS 1 resends are the normal case, not the exception.
    await publish(mosquitto, messages + messages[: len(messages) // 3])
    expected = {(n, s) for n in NODES for s in range(per_node)}
    store = Store(tmp)
    try:
        await _all_stored(store, expected, deadline_s=120, procs=procs)
    except AssertionError:
        stored = Counter(n for n, _ in store.reading_keys())
        print("stored per node", sorted(stored.items()))
        settings = load_settings(config)
        records = await read_topic(
            kafka.bootstrap, settings.kafka.readings_topic, expect=10**9, deadline_s=5
        )
        in_kafka = {
            (decode_enriched(r.value)[1].node, decode_enriched(r.value)[1].seq) for r in records
        }
        print("in Kafka but not stored", sorted(in_kafka - set(store.reading_keys())))
        print("not in Kafka", sorted(expected - in_kafka))
        for p in procs:
            p.stop()
            print(p.log.name, p.text()[-3000:])
        raise
    return store, procs, expected


async def test_every_reading_arrives_exactly_once_and_two_workers_warn_like_one(
    tmp_path, mosquitto, kafka_server
):
    """N readings published (a third of them twice) through gateway → Kafka → stream
    workers arrive in the sink exactly once per (node, seq). Two workers split the
    partitions between them and raise exactly the node warnings one worker raises, and
    the district flooding the storm causes reaches the same peak and ends the same.

    The area events' steps and peak may differ between runs (the area agent gets the
    nodes' changes in whatever order the workers send them, docs/rules.md "Area rules");
    the districts that raise one, and the level each ends at, may not."""
    one, procs, expected = await _run_city(tmp_path / "one", mosquitto, kafka_server, workers=1)
    keys = one.reading_keys()
    assert len(keys) == len(expected)
    assert set(keys) == expected
    await wait_until(
        lambda: len(one.node_warnings()) >= 8 * 8, "warnings of one worker", deadline_s=60
    )
    flooded = expected_areas(NODES, 60)
    assert len(flooded) == 2, flooded  # the two districts with three of the eight gauges
    await _areas_stored(one, flooded, procs, "the district events of one worker")
    for p in procs:
        assert p.stop() == 0, p.text()[-2000:]

    two, procs, _ = await _run_city(tmp_path / "two", mosquitto, kafka_server, workers=2)
    assert Counter(two.reading_keys()) == Counter(expected)
    await wait_until(
        lambda: two.node_warnings() >= one.node_warnings(),
        "the same warnings from two",
        deadline_s=60,
    )
    await _areas_stored(two, flooded, procs, "the same district events from two")
    for p in procs:
        assert p.stop() == 0, p.text()[-2000:]
    assert two.node_warnings() == one.node_warnings()
    # Both workers did part of the work: the partitions were split.
    shares = [p.text() for p in procs if "stream" in p.log.name]
    done = [int(t.split("stream worker stopped: ")[1].split()[0]) for t in shares]
    assert all(n > 0 for n in done), done
    # At least everything once (a batch handed over in a rebalance can be done twice).
    assert sum(done) >= len(expected), done


async def test_a_silent_node_and_an_agent_last_will_become_presence_warnings(
    tmp_path, mosquitto, kafka_server
):
    """A node that stops reporting while others go on is warned about once its timeout
    passes (presence.silent) and cleared by its next reading; an edge agent's last will
    warns at once for the nodes it lists (presence.offline), but, with the agents file,
    only for its own: its claim on another agent's node is dead-lettered as not_owner."""
    quiet, steady, behind_agent = water_nodes()[:3]
    owner = dict.fromkeys(water_nodes(), "pi-harbour-2") | {behind_agent: "pi-harbour-1"}
    (tmp_path / "agents.csv").write_text(
        "agent,node\n" + "".join(f"{a},{n}\n" for n, a in owner.items())
    )
    config = write_config(
        tmp_path,
        mqtt=mosquitto,
        bootstrap=kafka_server.bootstrap,
        silent_after_s=3.0,
        sweep_every_s=0.5,
        gateway='agents_file = "agents.csv"\n',
    )
    procs = [
        RoleProcess(config, "gateway", "alerts").start(),
        RoleProcess(config, "stream").start(),
    ]
    store = Store(tmp_path)
    seq = 0

    async def report(*nodes: str) -> None:
        nonlocal seq
        seq += 1
        await publish(
            mosquitto, [(telemetry_topic("water_level", n), reading(n, seq, 3.0)) for n in nodes]
        )

    def presence() -> list[tuple[str, str, int]]:
        return [r for r in store.rules() if r[0].startswith("presence.")]

    try:
        await subscribed(procs[0])
        await report(quiet, steady, behind_agent)

        # The others keep the stream flowing; `quiet` says nothing more.
        async def keep_reporting() -> None:
            while True:
                await report(steady, behind_agent)
                await asyncio.sleep(0.3)

        beat = asyncio.create_task(keep_reporting())
        try:
            await wait_until(
                lambda: running(*procs) and ("presence.silent", quiet, 2) in presence(),
                "the quiet node's silence warning",
                deadline_s=60,
            )
            will = {
                "v": 1,
                "agent": "pi-harbour-1",
                "state": "offline",
                "ts_ms": TS,
                "nodes": [
                    {"node": behind_agent, "kind": "water_level"},
                    {"node": steady, "kind": "water_level"},  # pi-harbour-2's
                ],
                "reason": "connection lost",
            }
            await publish(
                mosquitto, [(agent_status_topic("pi-harbour-1"), json.dumps(will).encode())]
            )
            await wait_until(
                lambda: ("presence.offline", behind_agent, 2) in presence(),
                "the agent's nodes offline",
                deadline_s=60,
            )
            await report(quiet)
            await wait_until(
                lambda: presence().count(("presence.silent", quiet, 0)) == 1,
                "the quiet node cleared by its reading",
                deadline_s=60,
            )
        finally:
            beat.cancel()
        for p in procs:
            assert p.stop() == 0, p.text()[-2000:]
    finally:
        for p in procs:
            if p.alive():
                p.kill()
    # One raise and one clear for the quiet node; the steady node never warned.
    assert [r for r in presence() if r[1] == quiet] == [
        ("presence.silent", quiet, 2),
        ("presence.silent", quiet, 0),
    ]
    assert all(r[1] != steady for r in presence())
    topic = load_settings(config).kafka.dead_letter_topic
    (record,) = await read_topic(kafka_server.bootstrap, topic, expect=1, deadline_s=30)
    letter = decode_dead_letter(record.value)
    assert letter.reason is Reason.NOT_OWNER
    assert f"{steady} (pi-harbour-2's)" in letter.detail
