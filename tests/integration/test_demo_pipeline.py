"""The whole embedded pipeline on a shortened, seeded day: incidents alert, quiet nodes
stay quiet, no reading is lost, bad input is dead-lettered while the pipeline runs."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import sqlite3

import aiomqtt
import pytest

from alerts.model import Notification
from cityvitals.citygen import generate_city
from cityvitals.config import BrokerSettings
from cityvitals.contract import Reason
from cityvitals.embedded.demo import DemoOptions, run_demo
from cityvitals.embedded.duty import DEMO_LADDER
from cityvitals.embedded.pipeline import BrokerUnreachableError, EmbeddedPipeline
from cityvitals.kinds import Kind
from cityvitals.levels import Level
from edge.simulate import DAY_S, Scenario

pytestmark = pytest.mark.integration

SEED = 42
NODES = 48
DISTRICTS = 3
DAY_START_MS = 1_764_028_800_000 - 86_400_000
TICKS = int(DAY_S // 600)


def options(tmp_path, **kw) -> DemoOptions:
    base = {
        "data_dir": tmp_path / "data",
        "duration_s": 0.0,
        "nodes": NODES,
        "districts": DISTRICTS,
        "seed": SEED,
        "day_start_ms": DAY_START_MS,
        "drain_timeout_s": 60.0,
    }
    base.update(kw)
    return DemoOptions(**base)


def stored_keys(data_dir) -> set[tuple[str, int]]:
    with sqlite3.connect(data_dir / "cityvitals.sqlite3") as db:
        return set(db.execute("SELECT node, seq FROM readings"))


class Recorder:
    """A receiver that keeps every notification it is given."""

    name = "recorder"

    def __init__(self) -> None:
        self.notifications: list[Notification] = []

    async def send(self, n: Notification) -> None:
        self.notifications.append(n)


async def test_shortened_day_alerts_every_incident_and_loses_nothing(tmp_path):
    """Every scripted incident produces an alert for the expected node (or area: the
    rainstorm's district) and rule that reaches the expected level, no other node alerts
    at all, and the store holds exactly every
    (node, seq) the city produced."""
    recorder = Recorder()
    result = await run_demo(options(tmp_path), notifiers=[recorder])

    assert result.settled
    assert result.ok
    for check in result.incidents:
        assert check.ok, check
    assert result.unexpected == ()
    city = generate_city(nodes=NODES, districts=DISTRICTS, seed=SEED)
    # Independent of the demo's own accounting: the full grid of keys is in the store.
    assert stored_keys(tmp_path / "data") == {(d.node, s) for d in city for s in range(TICKS)}
    assert result.published == NODES * TICKS
    assert result.dead_letters == 0
    # The alerts themselves: peak level per (node, rule) over all notifications.
    peak: dict[tuple[str, str], Level] = {}
    for n in recorder.notifications:
        key = (n.alert.subject, n.alert.rule)
        peak[key] = max(peak.get(key, Level.NONE), n.alert.peak_level)
    assert peak == {(c.node, c.rule): c.expected for c in result.incidents}
    # Every alert opened was also resolved by the end of the day.
    opened = {n.alert.fingerprint for n in recorder.notifications if n.event == "firing"}
    resolved = {n.alert.fingerprint for n in recorder.notifications if n.event == "resolved"}
    assert opened == resolved
    # Each went to the recorder, and to each duty desk the alert had climbed to by then.
    assert result.notifications == len(recorder.notifications)
    to_desks = sum(len(DEMO_LADDER.receivers(n.alert)) for n in recorder.notifications)
    assert result.delivered == len(recorder.notifications) + to_desks
    # The rainstorm is one incident: its gauges' alerts and the district event, grouped.
    storm = next(i for i in Scenario.default(city, seed=SEED).incidents if i.name == "rainstorm")
    subjects = {e.node for e in storm.expected}
    assert any(s.startswith("district:") for s in subjects)
    grouped = {n.incident for n in recorder.notifications if n.alert.subject in subjects}
    assert len(grouped) == 1
    assert None not in grouped
    others = {n.incident for n in recorder.notifications if n.alert.subject not in subjects}
    assert grouped.isdisjoint(others)
    # Nobody acknowledges in the demo, so every alert climbs the duty ladder on the
    # simulated day's time, the same in every run; the rainstorm's reach the city.
    reached = climbed(recorder.notifications)
    assert {subject for subject, top in reached.values() if top == "city"} >= subjects
    assert result.called_in == {
        step.name: sum(1 for _, top in reached.values() if RANK[top] >= i)
        for i, step in enumerate(DEMO_LADDER.steps)
    }


RANK = {step.name: i for i, step in enumerate(DEMO_LADDER.steps)}


def climbed(notifications: list[Notification]) -> dict[str, tuple[str, str]]:
    """Check each alert's escalations; by fingerprint, its subject and the step it reached.

    Every `escalated` is dated when its step fell due (the ladder's `after_s` past the
    alert's start), each goes higher than the one before, all come before the resolve,
    and the last is the highest step due by the resolve: a step is called in by the
    alert's next change at the latest.
    """
    stories: dict[str, list[Notification]] = {}
    for n in notifications:
        stories.setdefault(n.alert.fingerprint, []).append(n)
    out: dict[str, tuple[str, str]] = {}
    for fp, story in stories.items():
        start, end = story[0].alert.started_ms, story[-1]
        assert (story[0].event, end.event) == ("firing", "resolved")
        ups = [n for n in story if n.event == "escalated"]
        steps = [DEMO_LADDER.steps[RANK[n.step or ""]] for n in ups]
        assert [n.ts_ms for n in ups] == [start + round(s.after_s * 1000) for s in steps]
        assert [RANK[s.name] for s in steps] == sorted({RANK[s.name] for s in steps})
        lasted_s = (end.ts_ms - start) / 1000
        due = [s.name for s in DEMO_LADDER.steps if s.after_s <= lasted_s]
        reached = steps[-1].name if steps else "grid"
        assert reached == due[-1]
        out[fp] = (end.alert.subject, reached)
    return out


def garbage(city) -> list[tuple[str, bytes, Reason]]:
    """One message per kind of bad input, each with the reason it must be refused for."""
    water = city.by_kind(Kind.WATER_LEVEL)[0].node
    topic = f"city/water_level/{water}/telemetry"

    def body(**kw) -> bytes:
        b = {
            "v": 1,
            "node": water,
            "kind": "water_level",
            "seq": 10**9,
            "ts_ms": DAY_START_MS,
            "metrics": {"depth_cm": 1.0},
        }
        b.update(kw)
        return json.dumps(b).encode()

    return [
        (topic, b'{"v":1,"node":', Reason.MALFORMED),
        (topic, b"\xff\xfe\x00garbage", Reason.MALFORMED),
        (topic, body(seq="12"), Reason.SCHEMA),
        (topic, body(metrics={"depth_cm": "deep"}), Reason.SCHEMA),
        (topic, body(kind="volcano"), Reason.UNKNOWN_KIND),
        (topic, body(metrics={"depth_cm": -40.0}), Reason.OUT_OF_RANGE),
        (topic, body(metrics={"depth_cm": 12.0}, battery_pct=180.0), Reason.OUT_OF_RANGE),
        (topic, body(metrics={"wind_kph": 3.0}), Reason.UNKNOWN_METRIC),
        (topic, b'{"pad":"' + b"x" * 100_000 + b'"}', Reason.OVERSIZED),
        ("city/water_level/wl-9999/telemetry", body(node="wl-9999"), Reason.UNKNOWN_NODE),
        (topic, body(v=2), Reason.VERSION),
    ]


async def test_a_valid_but_hostile_reading_does_not_stop_the_gateway(tmp_path):
    """A legal reading with seq 2**63-1 (a jump past any dedup window) is stored like any
    other, and the gateway goes on to store the whole day."""
    city = generate_city(nodes=NODES, districts=DISTRICTS, seed=SEED)
    water = city.by_kind(Kind.WATER_LEVEL)[0].node
    huge = 2**63 - 1

    async def jump(pipeline: EmbeddedPipeline) -> None:
        payload = json.dumps(
            {
                "v": 1,
                "node": water,
                "kind": "water_level",
                "seq": huge,
                "ts_ms": DAY_START_MS,
                "metrics": {"depth_cm": 1.0},
            }
        ).encode()
        async with aiomqtt.Client(
            pipeline.broker.host, pipeline.broker.port, identifier="test-jump"
        ) as client:
            await client.publish(f"city/water_level/{water}/telemetry", payload, qos=1)

    result = await run_demo(options(tmp_path), on_ready=jump)
    assert result.ok
    keys = stored_keys(tmp_path / "data")
    assert (water, huge) in keys
    assert keys >= {(d.node, s) for d in city for s in range(TICKS)}


async def test_bad_input_into_the_running_pipeline_is_dead_lettered(tmp_path):
    """Malformed JSON, wrong types, unknown kinds, impossible values, oversized payloads and
    random bytes published into the live pipeline each become a dead letter with a reason
    and the raw bytes; meanwhile every real reading is still stored and every incident fires."""
    city = generate_city(nodes=NODES, districts=DISTRICTS, seed=SEED)
    bad = garbage(city)
    rng = random.Random(SEED)
    noise = [rng.randbytes(rng.randint(0, 400)) for _ in range(100)]
    water = city.by_kind(Kind.WATER_LEVEL)[0].node

    async def inject(pipeline: EmbeddedPipeline) -> None:
        async with aiomqtt.Client(
            pipeline.broker.host, pipeline.broker.port, identifier="test-vandal"
        ) as client:
            for topic, payload, _ in bad:
                await client.publish(topic, payload, qos=1)
            for payload in noise:
                await client.publish(f"city/water_level/{water}/telemetry", payload, qos=1)

    result = await run_demo(options(tmp_path), on_ready=inject)

    assert result.ok
    assert result.unexpected == ()
    assert all(check.ok for check in result.incidents)
    with sqlite3.connect(tmp_path / "data" / "cityvitals.sqlite3") as db:
        letters = db.execute(
            "SELECT topic, reason, detail, payload, payload_size FROM dead_letters ORDER BY id"
        ).fetchall()
    assert len(letters) == len(bad) + len(noise)
    for (topic, payload, reason), (d_topic, d_reason, detail, d_payload, size) in zip(
        bad, letters, strict=False
    ):
        assert (d_topic, d_reason) == (topic, reason.value), detail
        assert size == len(payload)
        assert bytes(d_payload) == payload[: len(d_payload)]
        assert detail
    assert {r for (_, r, *_) in letters[len(bad) :]} <= {
        Reason.MALFORMED.value,
        Reason.SCHEMA.value,
    }
    assert stored_keys(tmp_path / "data") >= {(d.node, s) for d in city for s in range(TICKS)}
    assert result.warnings_raised[Level.RED] >= 1


async def test_broker_restart_mid_day_loses_nothing(tmp_path, mosquitto_server):
    """Mosquitto is stopped and started again while the day is being published: the edge
    agents requeue what was not acknowledged and reconnect, the gateway's persistent session
    gets what was queued for it, and every (node, seq) ends up stored exactly once."""
    restarted = asyncio.Event()

    async def restart_broker(pipeline: EmbeddedPipeline) -> None:
        await pipeline.gateway.wait_forwarded(2000)
        await asyncio.to_thread(mosquitto_server.stop)
        await asyncio.to_thread(mosquitto_server.start)
        restarted.set()

    tasks: list[asyncio.Task[None]] = []

    async def arm(pipeline: EmbeddedPipeline) -> None:
        tasks.append(asyncio.create_task(restart_broker(pipeline)))

    result = await run_demo(options(tmp_path, mqtt_url=mosquitto_server.url), on_ready=arm)
    await asyncio.wait_for(tasks[0], 5)
    assert restarted.is_set()
    assert result.ok, result.missing_keys[:10]
    city = generate_city(nodes=NODES, districts=DISTRICTS, seed=SEED)
    assert stored_keys(tmp_path / "data") == {(d.node, s) for d in city for s in range(TICKS)}
    assert all(check.ok for check in result.incidents)


async def test_an_unreachable_broker_is_a_clear_error(tmp_path):
    """Pointing the pipeline at a port where nothing listens fails fast, naming the broker."""
    with socket.socket() as s:  # a bound but never listening port: nothing can answer there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        city = generate_city(nodes=NODES, districts=DISTRICTS, seed=SEED)
        with pytest.raises(BrokerUnreachableError, match=f"127.0.0.1:{port}"):
            async with EmbeddedPipeline(
                city, data_dir=tmp_path, mqtt=BrokerSettings(port=port), connect_timeout=2
            ):
                pass


async def test_against_a_real_mosquitto(tmp_path, mosquitto):
    """The same day through an external Mosquitto (--mqtt) instead of the embedded broker:
    same alerts, nothing lost."""
    result = await run_demo(options(tmp_path, mqtt_url=mosquitto))
    assert result.ok
    assert all(check.ok for check in result.incidents)
    assert result.unexpected == ()
    assert result.published == NODES * TICKS


async def test_the_readme_demo_city_unpaced(tmp_path):
    """The demo exactly as the README runs it (240 nodes, 4 districts, seed 7), only unpaced:
    all ten incident checks pass (nine nodes and the flooded district), nothing else
    alerts, all 34,560 readings are stored."""
    result = await run_demo(DemoOptions(data_dir=tmp_path / "data", duration_s=0.0))
    assert result.ok
    assert len(result.incidents) == 10
    assert all(check.ok for check in result.incidents)
    assert result.unexpected == ()
    assert result.published == result.stored == 240 * TICKS
