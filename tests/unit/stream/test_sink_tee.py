"""TeeSink: every call reaches every sink in order, a flush flushes them all, and scores go
only to the sinks that keep them."""

from __future__ import annotations

import pytest

from cityvitals.contract import Placement, Reading
from cityvitals.kinds import Kind
from stream.sinks.tee import ScoreSink, TeeSink

PLACE = Placement(district="d", street="s", grid="g", unit="u", lat=1.0, lon=2.0)
READING = Reading(
    v=1, node="wl-1", kind=Kind.WATER_LEVEL, seq=1, ts_ms=1_764_028_800_000, metrics={"d": 1.0}
)


class Recorder:
    def __init__(self, name: str, calls: list[tuple[str, str]]) -> None:
        self.name = name
        self.calls = calls

    async def write_reading(self, reading: Reading, placement: Placement, received_ms: int):
        self.calls.append((self.name, f"reading {reading.seq}"))

    async def write_warning(self, warning, body: bytes):
        self.calls.append((self.name, "warning"))

    async def flush(self):
        self.calls.append((self.name, "flush"))


class ScoringRecorder(Recorder):
    async def write_score(self, reading, placement, metric, score, worst):
        self.calls.append((self.name, f"score {metric} {score} {worst}"))


async def test_calls_go_to_every_sink_in_order():
    """The store first, then InfluxDB: each write and each flush, in the order given."""
    calls: list[tuple[str, str]] = []
    tee = TeeSink(Recorder("store", calls), ScoringRecorder("influx", calls))
    await tee.write_reading(READING, PLACE, 5)
    await tee.write_warning(object(), b"{}")  # type: ignore[arg-type]
    await tee.flush()
    assert calls == [
        ("store", "reading 1"),
        ("influx", "reading 1"),
        ("store", "warning"),
        ("influx", "warning"),
        ("store", "flush"),
        ("influx", "flush"),
    ]


async def test_scores_skip_sinks_without_write_score():
    """The embedded store keeps no scores: only sinks with write_score get them."""
    calls: list[tuple[str, str]] = []
    store, influx = Recorder("store", calls), ScoringRecorder("influx", calls)
    assert not isinstance(store, ScoreSink)
    assert isinstance(influx, ScoreSink)
    await TeeSink(store, influx).write_score(READING, PLACE, "d", 0.5, "spike")
    assert calls == [("influx", "score d 0.5 spike")]


def test_a_tee_needs_a_sink():
    with pytest.raises(ValueError, match="at least one sink"):
        TeeSink()
