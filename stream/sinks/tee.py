"""`TeeSink`: one `ReadingSink` call fanned out to several sinks, in order.

    sink = TeeSink(store, influx)   # the embedded store first, then InfluxDB

Each call goes to every sink in the order given and returns once all of
them returned; `flush()` flushes each in turn, so a flush of the tee is
durable everywhere. A sink without `write_score` is skipped for scores.

Retries: when a sink fails, the stream retries the whole call, so the sinks
before it see that call again. That is harmless for readings (the store
keys them by (node, seq), InfluxDB by series and time) and for flushes.
Put the sink that may fail for a passing reason first; `InfluxSink` only
fails for good (closed, or a broken spool disk: a `StoreError`, which the
stream does not retry), which is why it can come after the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from cityvitals.contract import Placement, Reading, Warning

if TYPE_CHECKING:
    from stream.agents import ReadingSink

__all__ = ["ScoreSink", "TeeSink"]


@runtime_checkable
class ScoreSink(Protocol):
    """A sink that also keeps anomaly scores (the stream calls it when it has one)."""

    async def write_score(
        self, reading: Reading, placement: Placement, metric: str, score: float, worst: str
    ) -> None: ...


class TeeSink:
    """A `ReadingSink` (and `ScoreSink`) writing to each of `sinks` in order."""

    def __init__(self, *sinks: ReadingSink) -> None:
        if not sinks:
            raise ValueError("a TeeSink needs at least one sink")
        self.sinks: tuple[ReadingSink, ...] = sinks
        self._scorers = tuple(s for s in sinks if isinstance(s, ScoreSink))

    async def write_reading(self, reading: Reading, placement: Placement, received_ms: int) -> None:
        for sink in self.sinks:
            await sink.write_reading(reading, placement, received_ms)

    async def write_warning(self, warning: Warning, body: bytes) -> None:
        for sink in self.sinks:
            await sink.write_warning(warning, body)

    async def write_score(
        self, reading: Reading, placement: Placement, metric: str, score: float, worst: str
    ) -> None:
        for sink in self._scorers:
            await sink.write_score(reading, placement, metric, score, worst)

    async def flush(self) -> None:
        for sink in self.sinks:
            await sink.flush()
