"""InfluxSink against a real influxd on loopback (built from its Go module by
deploy/influxdb/influxdb): exact points read back with Flux, an outage under writes, a poison
batch, a kill -9 between flush and shipping, the demo's incidents landing in InfluxDB, and
`cityvitals run --role stream` with an [influxdb] table. Each test writes to a bucket of its
own."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

from cityvitals.citygen import generate_city
from cityvitals.contract import Evidence, Placement, Reading, Warning
from cityvitals.embedded.demo import DemoOptions, run_demo
from cityvitals.kinds import Kind
from cityvitals.levels import Level
from edge.simulate import DAY_S, Scenario
from stream.sinks.influx import InfluxSink
from stream.sinks.spool import Spool
from tests.integration.conftest import InfluxServer
from tests.integration.distributed_support import (
    RoleProcess,
    Store,
    publish,
    running,
    storm_messages,
    subscribed,
    water_nodes,
    write_config,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

TS = 1_764_028_800_000  # 2025-11-25T00:00:00Z
REPO = Path(__file__).resolve().parents[2]


async def new_bucket(influxdb: InfluxServer) -> str:
    return await influxdb.create_bucket(f"test-{uuid.uuid4().hex[:12]}")


def sink_for(influxdb: InfluxServer, bucket: str, spool: Path, **kw: Any) -> InfluxSink:
    options: dict[str, Any] = {
        "org": influxdb.org,
        "bucket": bucket,
        "token": influxdb.token,
        "backoff": (0.05, 0.5),
        "timeout_s": 5.0,
    }
    options.update(kw)
    return InfluxSink(influxdb.url, spool, **options)


async def query(influxdb: InfluxServer, flux: str) -> list[dict[str, Any]]:
    """Every record of a Flux query, as the dict of its columns."""
    async with InfluxDBClientAsync(
        url=influxdb.url, token=influxdb.token, org=influxdb.org
    ) as client:
        tables = await client.query_api().query(flux)
    return [record.values for table in tables for record in table.records]


async def points(influxdb: InfluxServer, bucket: str, measurement: str) -> dict[Any, Any]:
    """{(time in ms, tags): {field: value}} of one measurement, read back with Flux."""
    records = await query(
        influxdb,
        f'from(bucket: "{bucket}") |> range(start: 0)'
        f' |> filter(fn: (r) => r._measurement == "{measurement}")',
    )
    out: dict[Any, dict[str, Any]] = {}
    for r in records:
        tags = tuple(
            sorted(
                (k, v)
                for k, v in r.items()
                if not k.startswith("_") and k not in ("result", "table")
            )
        )
        ms = int(r["_time"].timestamp() * 1000)
        value = r["_value"]
        if isinstance(value, str):
            # InfluxDB's CSV answer writes a newline inside a string as CRLF.
            value = value.replace("\r\n", "\n")
        out.setdefault((ms, tags), {})[r["_field"]] = value
    return out


def wait_shipped(sink: InfluxSink) -> Any:
    return wait_until(
        lambda: sink.stats().in_spool == 0 and sink.stats().pending == 0,
        "everything shipped",
        deadline_s=60,
    )


# -- the schema, read back -----------------------------------------------------------------

#: Registry names line protocol has to escape, or cannot carry as they are.
NASTY = {
    "district": 'Old Town, "north" = 1',
    "street": "back\\slash a\\ b =x",
    "grid": "tab\there\nnewline",
    "unit": "ends with\\",
}
PLACE = Placement(lat=31.25, lon=121.5, **NASTY)
#: What InfluxDB stores for them: control characters as spaces, trailing backslash dropped.
STORED = {**NASTY, "grid": "tab here newline", "unit": "ends with"}
UNICODE = Placement(
    district="Xīnjiē 新街", street="#hash =eq", grid="🚒", unit="ünit", lat=0.5, lon=-0.5
)


async def test_readings_warnings_and_scores_read_back_exactly(influxdb, tmp_path):
    """Each measurement comes back from Flux with exactly the documented tags, fields,
    types and millisecond timestamps, nasty registry names included."""
    bucket = await new_bucket(influxdb)
    water = Reading(
        v=1,
        node="wl-0001",
        kind=Kind.WATER_LEVEL,
        seq=7,
        ts_ms=TS + 123,
        metrics={"depth_cm": 12.5},
        battery_pct=88.0,
        rssi_dbm=-71.5,
    )
    crowd = Reading(
        v=1,
        node="cr-0002",
        kind=Kind.CROWD,
        seq=2**62,
        ts_ms=TS + 456,
        metrics={"count": 1e16, "density_m2": 0.25},
    )
    warning = Warning(
        v=1,
        fingerprint='fp "quoted" \\ back\nnext line',
        rule="water_level.depth",
        node="wl-0001",
        kind=Kind.WATER_LEVEL,
        metric="depth_cm",
        level=Level.ORANGE,
        previous=Level.YELLOW,
        value=31.5,
        threshold=30.0,
        unit="cm",
        ts_ms=TS + 789,
        seq=7,
        placement=PLACE,
        evidence=(Evidence(ts_ms=TS, value=1.0),),
        predicted_crossing_ms=TS + 60_000,
    )
    async with sink_for(influxdb, bucket, tmp_path / "spool") as sink:
        await sink.write_reading(water, PLACE, TS + 900)
        await sink.write_reading(crowd, UNICODE, TS + 1000)
        await sink.write_warning(warning, b"")
        await sink.write_score(water, PLACE, "depth_cm", 0.9975, "robust")
        await sink.flush()
        await wait_shipped(sink)

    place_tags = tuple(STORED.items())
    readings = await points(influxdb, bucket, "reading")
    assert readings == {
        (TS + 123, tuple(sorted((("node", "wl-0001"), ("kind", "water_level"), *place_tags)))): {
            "depth_cm": 12.5,
            "battery_pct": 88.0,
            "rssi_dbm": -71.5,
            "lat": 31.25,
            "lon": 121.5,
            "seq": 7,
            "received_ms": TS + 900,
        },
        (
            TS + 456,
            tuple(
                sorted(
                    {
                        "node": "cr-0002",
                        "kind": "crowd",
                        "district": "Xīnjiē 新街",
                        "street": "#hash =eq",
                        "grid": "🚒",
                        "unit": "ünit",
                    }.items()
                )
            ),
        ): {
            "count": 1e16,
            "density_m2": 0.25,
            "lat": 0.5,
            "lon": -0.5,
            "seq": 2**62,
            "received_ms": TS + 1000,
        },
    }
    assert all(
        type(v) is int
        for f in readings.values()
        for k, v in f.items()
        if k in ("seq", "received_ms")
    )
    warning_tags = {
        "rule": "water_level.depth",
        "node": "wl-0001",
        "kind": "water_level",
        "metric": "depth_cm",
        "level": "orange",
        **STORED,
    }
    assert await points(influxdb, bucket, "warning") == {
        (TS + 789, tuple(sorted(warning_tags.items()))): {
            "level_n": 3,
            "previous_n": 2,
            "value": 31.5,
            "threshold": 30.0,
            "predicted_crossing_ms": TS + 60_000,
            "fingerprint": 'fp "quoted" \\ back\nnext line',
            "seq": 7,
        }
    }
    score_tags = {"node": "wl-0001", "kind": "water_level", "metric": "depth_cm", **STORED}
    assert await points(influxdb, bucket, "score") == {
        (TS + 123, tuple(sorted(score_tags.items()))): {"anomaly_score": 0.9975, "worst": "robust"}
    }


# -- outages, poison, kills ------------------------------------------------------------------


def reading(node: str, seq: int, **metrics: float) -> Reading:
    return Reading(
        v=1,
        node=node,
        kind=Kind.WATER_LEVEL,
        seq=seq,
        ts_ms=TS + seq * 1000,
        metrics=metrics or {"depth_cm": float(seq % 100)},
    )


SIMPLE = Placement(district="d1", street="s1", grid="g1", unit="u1", lat=1.0, lon=2.0)


async def stored_keys(influxdb: InfluxServer, bucket: str) -> list[tuple[str, int]]:
    """(node, seq) of every `reading` point in the bucket (a repeat would show twice)."""
    records = await query(
        influxdb,
        f'from(bucket: "{bucket}") |> range(start: 0)'
        ' |> filter(fn: (r) => r._measurement == "reading" and r._field == "seq")',
    )
    return [(r["node"], r["_value"]) for r in records]


async def test_an_outage_under_writes_loses_nothing_and_stores_everything_once(influxdb, tmp_path):
    """InfluxDB is stopped while the stream keeps writing: every flush still returns (the
    points go to the spool), and after the restart every (node, seq) is stored exactly once."""
    bucket = await new_bucket(influxdb)
    nodes = [f"wl-{i:04d}" for i in range(5)]
    seq = 0

    async def batch(sink: InfluxSink) -> None:
        nonlocal seq
        for node in nodes:
            await sink.write_reading(reading(node, seq), SIMPLE, TS)
        seq += 1
        await sink.flush()

    async with sink_for(influxdb, bucket, tmp_path / "spool", batch_size=40) as sink:
        for _ in range(20):
            await batch(sink)
        await wait_shipped(sink)
        await asyncio.to_thread(influxdb.stop)
        try:
            for _ in range(60):
                await batch(sink)  # returns although InfluxDB is gone
            await wait_until(lambda: sink.stats().state == "down", "the outage noticed")
            assert sink.stats().in_spool > 0
        finally:
            await asyncio.to_thread(influxdb.start)
        for _ in range(20):
            await batch(sink)
        await wait_shipped(sink)
        stats = sink.stats()
        assert stats.state == "up"
        assert stats.retried >= 1
        assert stats.dead_lettered == 0
        assert stats.shipped == stats.spooled == 100 * len(nodes)
    keys = await stored_keys(influxdb, bucket)
    assert Counter(keys) == Counter((n, s) for n in nodes for s in range(100))


async def test_a_poison_batch_is_dead_lettered_and_the_shipper_goes_on(influxdb, tmp_path):
    """A field type conflict (depth_cm already a string in this bucket) makes InfluxDB refuse
    the batch: it goes to the spool's dead table with InfluxDB's reason, and the points after
    it are shipped."""
    bucket = await new_bucket(influxdb)
    headers = {"Authorization": f"Token {influxdb.token}"}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.post(
            f"{influxdb.url}/api/v2/write",
            params={"org": influxdb.org, "bucket": bucket, "precision": "ms"},
            data=f'reading,node=other depth_cm="deep" {TS}',
        ) as answer,
    ):
        assert answer.status == 204
    async with sink_for(influxdb, bucket, tmp_path / "spool") as sink:
        await sink.write_reading(reading("wl-0001", 1), SIMPLE, TS)
        await sink.flush()
        await wait_until(lambda: sink.stats().dead_lettered == 1, "dead-lettered")
        for seq in range(2, 12):
            await sink.write_reading(reading("wl-0002", seq, level_cm=1.0), SIMPLE, TS)
        await sink.flush()
        await wait_shipped(sink)
        (dead,) = await sink.dead()
        assert dead.status in (400, 422)
        assert "field type conflict" in dead.reason
        assert "seq=1i" in dead.body
        assert sink.stats().shipped == 10
    assert sorted(await stored_keys(influxdb, bucket)) == [("wl-0002", s) for s in range(2, 12)]


KILLED_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from cityvitals.contract import Placement, Reading
    from cityvitals.kinds import Kind
    from stream.sinks.influx import InfluxSink

    async def main(spool):
        place = Placement(district="d1", street="s1", grid="g1", unit="u1", lat=1.0, lon=2.0)
        # Nothing listens on port 9: every point stays in the spool.
        async with InfluxSink("http://127.0.0.1:9", spool, org="o", bucket="b", token="t") as s:
            for seq in range(300):
                await s.write_reading(
                    Reading(v=1, node="wl-0009", kind=Kind.WATER_LEVEL, seq=seq,
                            ts_ms={ts} + seq, metrics={{"depth_cm": 1.0}}),
                    place, {ts},
                )
                if seq % 50 == 49:
                    await s.flush()
            print("flushed", flush=True)
            await asyncio.Event().wait()

    asyncio.run(main(sys.argv[1]))
    """
).format(ts=TS)


async def test_a_sink_killed_after_flush_ships_the_leftovers_on_the_next_start(influxdb, tmp_path):
    """kill -9 of a process whose flushes returned while InfluxDB was unreachable: a new
    sink on the same spool ships every one of those points."""
    bucket = await new_bucket(influxdb)
    spool = tmp_path / "spool"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        KILLED_WRITER,
        str(spool),
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert line == b"flushed\n"
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    async with sink_for(influxdb, bucket, spool) as sink:
        assert sink.stats().in_spool == 300
        await wait_shipped(sink)
    assert sorted(await stored_keys(influxdb, bucket)) == [("wl-0009", s) for s in range(300)]


# -- the demo into InfluxDB -----------------------------------------------------------------

SEED = 42
NODES = 48
DISTRICTS = 3
DAY_START_MS = TS - 86_400_000
TICKS = int(DAY_S // 600)


async def demo_day_into(influxdb: InfluxServer, tmp_path: Path) -> str:
    """The demo's day (seed 42, 48 nodes, deploy/rules.toml) into a new bucket, shipped;
    its embedded store in tmp_path/data. The bucket's name."""
    bucket = await new_bucket(influxdb)
    options = DemoOptions(
        data_dir=tmp_path / "data",
        duration_s=0.0,
        nodes=NODES,
        districts=DISTRICTS,
        seed=SEED,
        day_start_ms=DAY_START_MS,
        drain_timeout_s=60.0,
        rules_path=REPO / "deploy" / "rules.toml",
    )
    async with sink_for(influxdb, bucket, tmp_path / "spool") as sink:
        result = await run_demo(options, extra_sinks=[sink])
        await wait_shipped(sink)
    assert result.ok
    return bucket


async def test_the_demo_day_lands_in_influxdb(influxdb, tmp_path):
    """The embedded demo (with deploy/rules.toml: every rule type, anomaly scores
    included) and InfluxDB as an extra sink: the rainstorm's and the fire's orange and red
    warnings are in InfluxDB at their expected peak levels, and every `reading`, `warning`
    and `score` point read back through the query API is exactly what the embedded store
    holds for it: one schema, two sinks."""
    bucket = await demo_day_into(influxdb, tmp_path)

    scenario = Scenario.default(
        generate_city(nodes=NODES, districts=DISTRICTS, seed=SEED), seed=SEED
    )
    wanted = {
        (e.node, e.rule): e.level
        for incident in scenario.incidents
        if incident.name in ("rainstorm", "fire")
        for e in incident.expected
        if e.level >= Level.ORANGE
    }
    assert len(wanted) >= 3
    records = await query(
        influxdb,
        f'from(bucket: "{bucket}") |> range(start: 0)'
        ' |> filter(fn: (r) => r._measurement == "warning" and r._field == "level_n")'
        ' |> filter(fn: (r) => r.level == "orange" or r.level == "red")',
    )
    peak: dict[tuple[str, str], Level] = {}
    for r in records:
        key = (r.get("node", ""), r["rule"])
        peak[key] = max(peak.get(key, Level.NONE), Level(r["_value"]))
        assert Level(r["_value"]).label == r["level"]
    assert {key: peak.get(key) for key in wanted} == wanted

    store = tmp_path / "data" / "cityvitals.sqlite3"
    series: dict[str, dict[Any, dict[str, Any]]] = {}
    for measurement in ("reading", "warning", "score"):
        series[measurement] = store_points(store, measurement)
        assert await points(influxdb, bucket, measurement) == series[measurement], measurement
    print({m: len(p) for m, p in series.items()})
    # Scores of both anomaly rules' kinds, one per scored reading.
    assert {dict(tags)["kind"] for _, tags in series["score"]} == {"water_level", "crowd"}
    with sqlite3.connect(store) as db:
        (readings,) = db.execute("SELECT count(*) FROM readings").fetchone()
        areas = db.execute("SELECT count(*) FROM warnings WHERE area != ''").fetchone()
    assert readings == NODES * TICKS
    assert areas[0] >= 1  # the rainstorm's district event, with its area tags in both


def store_points(path: Path, measurement: str) -> dict[Any, dict[str, Any]]:
    """The embedded store's rows as `points()` gives InfluxDB's: {(ms, tags): fields}, with
    the mapping docs/influxdb.md documents (empty tags and NULL fields left out, as line
    protocol leaves them out; a later row of one series and time replaces an earlier one,
    as a later point does in InfluxDB)."""
    place = ("district", "street", "grid", "unit")
    if measurement == "reading":
        table, tag_names = "readings", ("node", "kind", *place)
        field_names: tuple[str, ...] = ("battery_pct", "rssi_dbm", "lat", "lon", "seq")
        field_names += ("received_ms",)
    elif measurement == "warning":
        table, tag_names = "warnings", ("rule", "node", "kind", "metric", *place)
        tag_names += ("area_scope", "area")
        field_names = ("value", "threshold", "predicted_crossing_ms", "fingerprint", "seq")
        field_names += ("members", "total", "lat", "lon")
    else:
        table, tag_names = "scores", ("node", "kind", "metric", *place)
        field_names = ("anomaly_score", "worst")
    out: dict[Any, dict[str, Any]] = {}
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        order = " ORDER BY id" if table == "warnings" else ""
        for row in db.execute(f"SELECT * FROM {table}{order}"):  # noqa: S608 - fixed names
            tags = {name: row[name] for name in tag_names}
            fields = {name: row[name] for name in field_names}
            if table == "readings":
                fields |= json.loads(row["fields"])
            if table == "warnings":
                tags["level"] = Level(row["level"]).label
                fields |= {"level_n": row["level"], "previous_n": row["previous"]}
            key = (row["ts_ms"], tuple(sorted((k, v) for k, v in tags.items() if v)))
            out[key] = {k: v for k, v in fields.items() if v is not None}
    return out


# -- the distributed stream role ------------------------------------------------------------


async def test_the_stream_role_writes_to_influxdb_when_configured(
    influxdb, mosquitto, kafka_server, tmp_path, hook
):
    """With an [influxdb] table in cityvitals.toml, `cityvitals run --role stream` writes
    every reading to the embedded store and to InfluxDB (TeeSink), and a graceful stop
    leaves nothing in the spool. Every role also writes its counters (`pipeline`: the
    gateway's received and dead letters, the stream's processed and Kafka backlog, the
    alerts' deliveries per receiver) and the gateway an edge agent's health (`agent`)."""
    bucket = await new_bucket(influxdb)
    (tmp_path / "influx-token").write_text(influxdb.token + "\n")
    table = (
        f'[influxdb]\nurl = "{influxdb.url}"\nbucket = "{bucket}"\n'
        'token_file = "influx-token"\nspool = "influx-spool.sqlite3"\n'
    )
    config = write_config(
        tmp_path, mqtt=mosquitto, bootstrap=kafka_server.bootstrap, extra=table, webhook=hook.url
    )
    procs = [RoleProcess(config, "gateway", "alerts").start(), RoleProcess(config, "stream")]
    procs[1].start()
    try:
        await subscribed(procs[0])
        nodes = water_nodes()[:4]
        beat = {"v": 1, "agent": "pi-test", "state": "online", "ts_ms": TS, "buffer_depth": 7,
                "nodes": [{"node": n, "kind": "water_level"} for n in nodes]}  # fmt: skip
        await publish(mosquitto, [("city/agent/pi-test/status", json.dumps(beat).encode())])
        await publish(mosquitto, storm_messages(nodes, 25))
        expected = {(n, s) for n in nodes for s in range(25)}
        store = Store(tmp_path)
        await wait_until(
            lambda: running(*procs) and set(store.reading_keys()) >= expected,
            "the readings in the store",
            deadline_s=120,
        )
    finally:
        codes = [p.stop() for p in procs]
    assert codes == [0, 0], procs[1].text()[-3000:]
    assert "InfluxDB sink to" in procs[1].text()
    spool = Spool(tmp_path / "data" / "influx-spool.sqlite3")
    assert spool.totals().lines == 0
    spool.close()
    assert Counter(await stored_keys(influxdb, bucket)) == Counter(expected)
    counters = await query(
        influxdb,
        f'from(bucket: "{bucket}") |> range(start: 0)'
        ' |> filter(fn: (r) => r._measurement == "pipeline") |> last()',
    )
    last = {(r["role"], r.get("receiver", ""), r["_field"]): r["_value"] for r in counters}
    assert last[("gateway", "", "received")] >= len(expected)
    assert last[("gateway", "", "dead_letters")] == 0
    assert last[("stream", "", "processed")] == len(expected)
    assert last[("stream", "", "backlog")] >= 0
    assert ("alerts", "ops", "delivered") in last
    agents = await query(
        influxdb,
        f'from(bucket: "{bucket}") |> range(start: 0)'
        ' |> filter(fn: (r) => r._measurement == "agent" and r._field == "buffer_depth")',
    )
    assert [(r["agent"], r["_value"]) for r in agents] == [("pi-test", 7)]
