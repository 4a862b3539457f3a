"""`PipelineMeter`: a role's counters as `pipeline` points, every few seconds.

The roles count what they do (received, forwarded, dead-lettered; processed
and behind; delivered and failed per receiver) in memory. A meter reads
them every `every_s` seconds and once more when it stops, and writes one
point per (role, receiver) to a sink with `write_pipeline` (InfluxDB), for
the pipeline-health dashboard. Counters are totals since the process
started: a dashboard takes their differences, and a restart shows as a
reset, not a loss.

>>> Gauge("gateway", {"received": 3}).receiver
''
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from cityvitals.clock import Clock
from cityvitals.tasks import cancel_and_wait
from stream.sinks.points import FieldValue

__all__ = [
    "Gauge",
    "PipelineMeter",
    "PipelineSink",
    "delivery_gauges",
    "gateway_gauge",
    "stream_gauge",
]

log = logging.getLogger(__name__)


class PipelineSink(Protocol):
    async def write_pipeline(
        self,
        role: str,
        instance: str,
        fields: Mapping[str, FieldValue],
        ts_ms: int,
        *,
        receiver: str = "",
    ) -> None: ...

    async def flush(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Gauge:
    """One point's worth: a role's (or one of its receivers') counters now."""

    role: str
    fields: Mapping[str, FieldValue]
    receiver: str = ""


class GatewayCounts(Protocol):
    @property
    def received(self) -> int: ...
    @property
    def forwarded(self) -> int: ...
    @property
    def duplicates(self) -> int: ...
    @property
    def dead_letters(self) -> int: ...


class StreamCounts(Protocol):
    @property
    def processed(self) -> int: ...
    @property
    def duplicates(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def warnings(self) -> int: ...


class ReceiverCounts(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def delivered(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def pending(self) -> int: ...


def gateway_gauge(c: GatewayCounts) -> Gauge:
    """The gateway's point, from either gateway's counts (MQTT bridge or Kafka)."""
    fields = {"received": c.received, "forwarded": c.forwarded, "duplicates": c.duplicates}
    return Gauge("gateway", {**fields, "dead_letters": c.dead_letters})


def stream_gauge(c: StreamCounts, *, backlog: int | None) -> Gauge:
    """The stream's point; `backlog` (Kafka lag, or the channel's depth) when measured."""
    fields: dict[str, FieldValue] = {
        "processed": c.processed,
        "duplicates": c.duplicates,
        "errors": c.errors,
        "warnings": c.warnings,
    }
    if backlog is not None:
        fields["backlog"] = backlog
    return Gauge("stream", fields)


def delivery_gauges(receivers: Iterable[ReceiverCounts]) -> list[Gauge]:
    """One alerts point per receiver (`AlertService.receivers()`)."""
    return [
        Gauge(
            "alerts",
            {"delivered": r.delivered, "failed": r.failed, "pending": r.pending},
            receiver=r.name,
        )
        for r in receivers
    ]


class PipelineMeter:
    """`async with PipelineMeter(sink, instance, read, clock=...):` while the role runs.

    `read` gives the gauges of the moment (it may be async, to ask Kafka for a
    lag); a failing read or write is logged once until it works again, and
    never stops the role.
    """

    def __init__(
        self,
        sink: PipelineSink,
        instance: str,
        read: Callable[[], Sequence[Gauge] | Awaitable[Sequence[Gauge]]],
        *,
        clock: Clock,
        every_s: float = 10.0,
    ) -> None:
        if every_s <= 0:
            raise ValueError(f"every_s must be positive, got {every_s}")
        self._sink = sink
        self._instance = instance
        self._read = read
        self._clock = clock
        self._every_s = every_s
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.written = 0

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name="pipeline-meter")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        await self.write_now()  # the last counts, so a short run is on the board too

    async def write_now(self) -> None:
        try:
            gauges = self._read()
            if not isinstance(gauges, Sequence):
                gauges = await gauges
            now = self._clock.now_ms()
            for g in gauges:
                await self._sink.write_pipeline(
                    g.role, self._instance, g.fields, now, receiver=g.receiver
                )
            await self._sink.flush()
        except Exception:
            if not self._failing:
                log.exception("pipeline counters not written; retrying every %.0f s", self._every_s)
            self._failing = True
            return
        if self._failing:
            log.info("pipeline counters written again")
        self._failing = False
        self.written += len(gauges)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._every_s)
            await self.write_now()
