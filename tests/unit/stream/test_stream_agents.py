"""The reading agent inside a real (Kafka-less) faust app: store, evaluate, emit."""

from __future__ import annotations

import asyncio

import msgspec

from cityvitals.contract import EnrichedReading, Reading, Warning, encode
from cityvitals.kinds import Kind
from cityvitals.levels import Level
from stream.agents import ReadingPipeline
from stream.app import create_embedded_app
from tests.factories import PLACE

WHERE = PLACE


class Sink:
    def __init__(self) -> None:
        self.readings: list[tuple[str, int]] = []
        self.warnings: list[Warning] = []
        self.flushes = 0

    async def write_reading(self, reading, placement, received_ms):
        assert placement == WHERE
        self.readings.append((reading.node, reading.seq))

    async def write_warning(self, warning, body):
        self.warnings.append(warning)

    async def flush(self):
        self.flushes += 1


def envelope(seq: int, depth: float, node: str = "wl-0001") -> bytes:
    reading = Reading(
        v=1,
        node=node,
        kind=Kind.WATER_LEVEL,
        seq=seq,
        ts_ms=1_764_028_800_000 + seq * 600_000,
        metrics={"depth_cm": depth},
    )
    return encode(
        EnrichedReading(v=1, reading=msgspec.Raw(encode(reading)), placement=WHERE, received_ms=0)
    )


async def test_agent_stores_every_reading_and_emits_warnings_in_order(tmp_path):
    """Readings sent to the channel are all stored; the table keeps per-node rule state so a
    rising then falling depth gives raise and clear warnings, in order; garbage is counted,
    not fatal."""
    app = create_embedded_app(tmp_path)
    sink = Sink()
    emitted: list[Warning] = []

    async def on_warning(w: Warning) -> None:
        emitted.append(w)

    pipeline = ReadingPipeline(app, sink=sink, on_warning=on_warning)
    await app.start()
    app.flow_control.resume()
    try:
        depths = [1, 1, 55, 56, 57, 30, 5, 5, 5]
        for seq, depth in enumerate(depths):
            await pipeline.send(b"wl-0001", envelope(seq, depth))
            await pipeline.send(b"wl-0002", envelope(seq, 1.0, node="wl-0002"))
        await pipeline.send(b"x", b"not an envelope")
        await asyncio.wait_for(pipeline.wait_processed(2 * len(depths) + 1), 10)
    finally:
        await app.stop()
    assert sorted(sink.readings) == sorted(
        [("wl-0001", s) for s in range(len(depths))] + [("wl-0002", s) for s in range(len(depths))]
    )
    assert [(w.node, w.level) for w in emitted] == [
        ("wl-0001", Level.RED),
        ("wl-0001", Level.ORANGE),
        ("wl-0001", Level.NONE),
    ]
    assert sink.warnings == emitted
    assert (pipeline.processed, pipeline.errors, pipeline.warnings) == (2 * len(depths), 1, 3)
