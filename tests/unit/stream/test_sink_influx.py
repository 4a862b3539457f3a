"""InfluxSink's decisions, against a scripted stand-in for InfluxDB's write endpoint on
loopback (the real influxd is in tests/integration/test_influx_sink.py; it cannot be made to
answer 503 or 429 on cue, this can): flush is durable without InfluxDB, what is retried and
what is dead-lettered, the bounded spool's refuse-new policy, one log line per state change,
and a stop that leaves the rest for the next start."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from cityvitals.clock import SystemClock
from cityvitals.contract import Placement, Reading
from cityvitals.kinds import Kind
from stream.sinks.influx import InfluxSink, InfluxSinkError
from stream.sinks.spool import Spool
from tests.waiting import wait_until

PLACE = Placement(district="d", street="s", grid="g", unit="u", lat=1.0, lon=2.0)
TS = 1_764_028_800_000


def reading(seq: int, node: str = "wl-0001") -> Reading:
    return Reading(
        v=1, node=node, kind=Kind.WATER_LEVEL, seq=seq, ts_ms=TS + seq, metrics={"depth_cm": 1.0}
    )


class FakeInflux:
    """POST /api/v2/write: answers from `script` (then `default`), keeps what it took."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict[str, str], str]] = []
        self.default = 204
        self.lines: list[str] = []
        self.requests: list[web.Request] = []
        self.url = ""

    async def write(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        raw = await request.read()  # aiohttp undoes the gzip Content-Encoding
        status, headers, text = self.script.pop(0) if self.script else (self.default, {}, "")
        if status == 204:
            self.lines += raw.decode().split("\n")
            return web.Response(status=204)
        return web.json_response(
            {"code": "x", "message": text or f"status {status}"}, status=status, headers=headers
        )


@pytest.fixture
async def influx() -> AsyncIterator[FakeInflux]:
    fake = FakeInflux()
    app = web.Application()
    app.router.add_post("/api/v2/write", fake.write)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}"
    yield fake
    await runner.cleanup()


def sink(url: str, spool: Path, **kw: object) -> InfluxSink:
    options: dict[str, object] = {
        "org": "o",
        "bucket": "b",
        "token": "t0k",
        "batch_size": 100,
        "backoff": (0.01, 0.05),
        "stop_timeout_s": 5.0,
        "rng": random.Random(3),
    }
    options.update(kw)
    return InfluxSink(url, spool, **options)  # type: ignore[arg-type]


def seqs(lines: list[str]) -> list[int]:
    return sorted(int(line.split("seq=")[1].split("i")[0]) for line in lines)


async def write(s: InfluxSink, start: int, count: int) -> None:
    for seq in range(start, start + count):
        await s.write_reading(reading(seq), PLACE, TS)
    await s.flush()


async def test_points_reach_influxdb_as_gzipped_line_protocol(influx: FakeInflux, tmp_path):
    """The request: /api/v2/write with org, bucket and precision=ms, the token, gzip; the
    lines leave the spool once InfluxDB answered 204."""
    async with sink(influx.url, tmp_path / "spool") as s:
        await write(s, 0, 250)
        await wait_until(lambda: s.stats().shipped == 250, "all shipped")
        assert s.stats().in_spool == 0
    request = influx.requests[0]
    assert request.query["org"] == "o"
    assert request.query["bucket"] == "b"
    assert request.query["precision"] == "ms"
    assert request.headers["Authorization"] == "Token t0k"
    assert request.headers["Content-Encoding"] == "gzip"
    assert seqs(influx.lines) == list(range(250))
    assert max(len(r.query) for r in influx.requests) == 3
    assert len(influx.requests) >= 3  # batches of at most 100 lines


async def test_flush_is_durable_while_influxdb_is_down(tmp_path):
    """With nothing listening, flush still returns: the lines are in the spool file, where
    a second process (here: a plain Spool on the same file) finds them."""
    path = tmp_path / "spool"
    async with sink("http://127.0.0.1:9", path, stop_timeout_s=0.5) as s:
        await write(s, 0, 30)
        assert s.stats().in_spool == 30
        await wait_until(lambda: s.stats().state == "down", "the shipper notices")
        assert s.stats().retried >= 1
    other = Spool(path)
    assert other.totals().lines == 30
    other.close()


async def test_5xx_429_and_timeouts_are_retried_until_shipped_once(
    influx: FakeInflux, tmp_path, caplog: pytest.LogCaptureFixture
):
    """503, 429 (with Retry-After) and 500 are tried again with backoff; the batch then
    arrives once. One log line when InfluxDB goes, one when it is back, one when caught up."""
    caplog.set_level(logging.INFO, logger="stream.sinks.influx")
    influx.script = [(503, {}, ""), (429, {"Retry-After": "0"}, ""), (500, {}, "boom")]
    async with sink(influx.url, tmp_path / "spool") as s:
        await write(s, 0, 50)
        await wait_until(lambda: s.stats().shipped == 50, "shipped after retries")
        assert s.stats().retried == 3
        assert s.stats().state == "up"
    assert seqs(influx.lines) == list(range(50))
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unreachable since" in m for m in messages) == 1
    assert sum("back after" in m for m in messages) == 1
    assert sum("caught up: shipped 50 points" in m for m in messages) == 1


async def test_a_refused_token_keeps_the_points(
    influx: FakeInflux, tmp_path, caplog: pytest.LogCaptureFixture
):
    """401 is InfluxDB refusing us, not the data: nothing is dead-lettered, an error says to
    check the token (once), and the points go once the token works again."""
    influx.script = [(401, {}, "unauthorized access")] * 3
    async with sink(influx.url, tmp_path / "spool") as s:
        await write(s, 0, 10)
        await wait_until(lambda: s.stats().shipped == 10, "shipped")
        assert s.stats().dead_lettered == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "check the token" in errors[0]
    assert "unauthorized access" in errors[0]


async def test_a_poison_batch_is_dead_lettered_and_shipping_goes_on(
    influx: FakeInflux, tmp_path, caplog: pytest.LogCaptureFixture
):
    """A 400 for a batch moves it to the dead table with InfluxDB's message; the batches
    after it are shipped; a second refusal of the same kind is not logged again."""
    conflict = 'partial write: field type conflict: input field "depth_cm" dropped=3'
    async with sink(influx.url, tmp_path / "spool") as s:
        influx.script = [(400, {}, conflict)]
        await write(s, 0, 5)
        await wait_until(lambda: s.stats().dead_lettered == 5, "dead-lettered")
        await write(s, 5, 5)
        await wait_until(lambda: s.stats().shipped == 5, "the next batch shipped")
        influx.script = [(400, {}, conflict.replace("3", "4"))]
        await write(s, 10, 5)
        await wait_until(lambda: s.stats().dead_lettered == 10, "dead-lettered again")
        dead = await s.dead()
        assert [(d.status, d.lines) for d in dead] == [(400, 5), (400, 5)]
        assert dead[0].reason == conflict
        assert seqs(dead[0].body.split("\n")) == list(range(5))
        assert s.stats().retried == 0
        # After the cause is fixed, a replay ships them.
        assert await s.requeue_dead([dead[0].id]) == 5
        await wait_until(lambda: s.stats().shipped == 10, "replayed")
    assert seqs(influx.lines) == list(range(10))
    warned = [r.getMessage() for r in caplog.records if "refused a batch" in r.getMessage()]
    assert len(warned) == 1


async def test_a_full_spool_makes_flush_wait_until_there_is_room(
    influx: FakeInflux, tmp_path, caplog: pytest.LogCaptureFixture
):
    """Refuse-new: with InfluxDB down and the spool at its bound, flush does not return
    (the stream stalls, Kafka keeps the backlog) and nothing is dropped; when InfluxDB is
    back the spool drains, flush returns, and every point arrives."""
    caplog.set_level(logging.INFO, logger="stream.sinks.influx")
    influx.default = 503
    async with sink(influx.url, tmp_path / "spool", spool_max_bytes=4_000) as s:
        await write(s, 0, 20)  # about 3 kB: fits
        assert s.stats().spool_bytes > 2_000
        for seq in range(20, 40):
            await s.write_reading(reading(seq), PLACE, TS)
        stalled = asyncio.ensure_future(s.flush())
        await wait_until(lambda: "spool full" in caplog.text, "the spool-full warning")
        assert not stalled.done()
        assert s.stats().pending == 20  # kept in memory, not dropped
        influx.default = 204
        await asyncio.wait_for(stalled, 10)
        await wait_until(lambda: s.stats().shipped == 40, "all shipped")
    assert seqs(influx.lines) == list(range(40))
    assert "spool has room again" in caplog.text


async def test_a_stop_does_not_hang_on_a_full_spool(influx: FakeInflux, tmp_path):
    """Stopping while a flush waits for room: the waiting lines and the pending ones are
    spooled past the bound (the bound yields, nothing is dropped) and the stop returns."""
    influx.default = 503
    path = tmp_path / "spool"
    async with sink(influx.url, path, spool_max_bytes=2_000, stop_timeout_s=0.2) as s:
        stalled = await _flush_waiting_for_room(s)
    await stalled
    assert _lines_in(path) == 30


async def _flush_waiting_for_room(s: InfluxSink) -> asyncio.Future[None]:
    """15 lines spooled, 15 more pending and a flush of them waiting for room, with
    InfluxDB down (the spool holds 2 kB)."""
    await write(s, 0, 15)
    for seq in range(15, 30):
        await s.write_reading(reading(seq), PLACE, TS)
    stalled = asyncio.ensure_future(s.flush())
    await wait_until(lambda: s.stats().state == "down", "down")
    assert not stalled.done()
    return stalled


def _lines_in(path: Path) -> int:
    spool = Spool(path)
    try:
        return spool.totals().lines
    finally:
        spool.close()


async def test_after_begin_stop_what_stops_first_flushes_past_a_full_spool(
    influx: FakeInflux, tmp_path
):
    """The stream role and the meters stop before their sink and flush as they go.
    A stop calls begin_stop first; from then on a flush past the bound returns at once
    (it does not wait for room a down InfluxDB will not make), while the sink is
    still open, and nothing is dropped."""
    influx.default = 503
    path = tmp_path / "spool"
    async with sink(influx.url, path, spool_max_bytes=2_000, stop_timeout_s=0.2) as s:
        stalled = await _flush_waiting_for_room(s)
        s.begin_stop()
        await asyncio.wait_for(stalled, 10)
        await write(s, 30, 5)  # the meter's last counts, say
    assert _lines_in(path) == 35


class GatedClock(SystemClock):
    """The spool asks the clock for the time inside its worker thread: closing the gate
    holds an append there, half done, for as long as a test needs."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()

    def now_ms(self) -> int:
        self.gate.wait(10)
        return super().now_ms()


async def test_a_flush_returns_only_once_lines_another_flush_took_are_durable(
    influx: FakeInflux, tmp_path
):
    """Two tasks share the sink (readings and presence): a flush that finds its lines taken
    by another task's flush, still being written, returns only after they are on disk."""
    influx.default = 503
    path = tmp_path / "spool"
    clock = GatedClock()
    async with sink(influx.url, path, stop_timeout_s=0.1, clock=clock) as s:
        await s.write_reading(reading(1), PLACE, TS)
        await s.write_reading(reading(2), PLACE, TS)
        clock.gate.clear()
        first = asyncio.ensure_future(s.flush())
        await wait_until(lambda: s.stats().pending == 0, "the first flush took both lines")
        second = asyncio.ensure_future(s.flush())
        done, _ = await asyncio.wait({second}, timeout=0.3)
        assert not done  # it waits for the first flush's append
        clock.gate.set()
        await second
        on_disk = Spool(path)
        assert on_disk.totals().lines == 2
        on_disk.close()
        await first


async def test_memory_is_bounded_without_flushes(influx: FakeInflux, tmp_path):
    """Writing more than batch_size lines without a flush spills them to the spool."""
    influx.default = 503
    async with sink(influx.url, tmp_path / "spool", batch_size=50, stop_timeout_s=0.2) as s:
        for seq in range(175):
            await s.write_reading(reading(seq), PLACE, TS)
            assert s.stats().pending < 50
        assert s.stats().in_spool == 150


async def test_a_stop_while_influxdb_is_down_leaves_the_rest_for_the_next_start(
    influx: FakeInflux, tmp_path
):
    """Stopping does not wait out the stop timeout for a dead InfluxDB; what is pending is
    spooled, and the next sink on the same spool ships it first."""
    influx.default = 503
    path = tmp_path / "spool"
    async with sink(influx.url, path, stop_timeout_s=30.0) as s:
        await write(s, 0, 10)
        for seq in range(10, 15):
            await s.write_reading(reading(seq), PLACE, TS)  # not flushed: __aexit__ spools them
        await wait_until(lambda: s.stats().state == "down", "down")
    left = Spool(path)
    assert left.totals().lines == 15
    left.close()
    influx.default = 204
    async with sink(influx.url, path) as again:
        assert again.stats().in_spool == 15
        await wait_until(lambda: again.stats().shipped == 15, "leftovers shipped")
    assert seqs(influx.lines) == list(range(15))


async def test_a_closed_sink_refuses_writes(tmp_path):
    """Writing to a sink that is not open is a StoreError, which the stream does not retry."""
    s = sink("http://127.0.0.1:9", tmp_path / "spool")
    with pytest.raises(InfluxSinkError, match="not open"):
        await s.write_reading(reading(1), PLACE, TS)
    async with s:
        pass
    with pytest.raises(InfluxSinkError, match="not open"):
        await s.flush()


async def test_an_unusable_spool_is_a_clear_error(tmp_path):
    """A spool path that cannot be a database (here: a directory) fails the start, naming it."""
    (tmp_path / "spool").mkdir()
    with pytest.raises(InfluxSinkError, match=r"cannot open the InfluxDB spool .*spool"):
        async with sink("http://127.0.0.1:9", tmp_path / "spool"):
            pass
