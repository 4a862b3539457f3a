"""`PipelineMeter`: the roles' counters as `pipeline` points, at an interval and once more at
the end; a sink that fails is said once and the role goes on."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import pytest

from cityvitals.clock import ManualClock
from cityvitals.contract import AgentStatus, NodeRef
from cityvitals.kinds import Kind
from stream.sinks.meter import Gauge, PipelineMeter
from stream.sinks.points import FieldValue, agent_line

TS = 1_764_028_800_000


class Sink:
    def __init__(self, fail: int = 0) -> None:
        self.points: list[tuple[str, str, dict[str, FieldValue], int, str]] = []
        self.flushes = 0
        self.fail = fail

    async def write_pipeline(
        self, role: str, instance: str, fields: Mapping[str, FieldValue], ts_ms: int, *,
        receiver: str = "",
    ) -> None:  # fmt: skip
        if self.fail:
            self.fail -= 1
            raise OSError("spool disk gone")
        self.points.append((role, instance, dict(fields), ts_ms, receiver))

    async def flush(self) -> None:
        self.flushes += 1


async def test_the_last_counts_are_written_when_the_meter_stops() -> None:
    counts = {"received": 0}
    sink, clock = Sink(), ManualClock(TS / 1000)

    def read() -> list[Gauge]:
        return [
            Gauge("gateway", dict(counts)),
            Gauge("alerts", {"delivered": 3, "failed": 1}, receiver="ops"),
        ]

    async with PipelineMeter(sink, "gw-1", read, clock=clock, every_s=3600) as meter:
        counts["received"] = 7
        clock.advance(1)
    assert sink.points == [
        ("gateway", "gw-1", {"received": 7}, TS + 1000, ""),
        ("alerts", "gw-1", {"delivered": 3, "failed": 1}, TS + 1000, "ops"),
    ]
    assert sink.flushes == 1
    assert meter.written == 2


async def test_an_async_read_and_a_failing_sink_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = Sink(fail=2)

    async def read() -> list[Gauge]:
        await asyncio.sleep(0)  # a Kafka lag query, say
        return [Gauge("stream", {"backlog": 5})]

    meter = PipelineMeter(sink, "w-1", read, clock=ManualClock(1.0), every_s=1)
    with caplog.at_level(logging.INFO, logger="stream.sinks.meter"):
        for _ in range(3):
            await meter.write_now()
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "pipeline counters not written; retrying every 1 s",
        "pipeline counters written again",
    ]
    assert [p[2] for p in sink.points] == [{"backlog": 5}]


def test_an_agent_point_carries_what_its_heartbeat_does() -> None:
    beat = AgentStatus(
        v=1, agent="pi-3", state="online", ts_ms=TS, buffer_depth=12, dropped=0,
        nodes=(NodeRef(node="wl-0001", kind=Kind.WATER_LEVEL),),
    )  # fmt: skip
    assert agent_line(beat, TS + 5) == (
        f"agent,agent=pi-3,state=online nodes=1i,buffer_depth=12i,dropped=0i,"
        f"received_ms={TS + 5}i {TS}"
    )
