"""The reading agent inside a real (Kafka-less) faust app: store, evaluate, emit."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import msgspec

from cityvitals.contract import EnrichedReading, Reading, Warning, encode
from cityvitals.kinds import Kind
from cityvitals.levels import Level
from stream.agents import ReadingPipeline
from stream.app import create_embedded_app
from stream.engine import RuleEngine
from stream.offsets import Record
from stream.rules import EVERY_NODE, RuleState, Selector
from tests.factories import PLACE
from tests.waiting import wait_until

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


def envelope(seq: int, depth: float, node: str = "wl-0001", received_ms: int = 0) -> bytes:
    reading = Reading(
        v=1,
        node=node,
        kind=Kind.WATER_LEVEL,
        seq=seq,
        ts_ms=1_764_028_800_000 + seq * 600_000,
        metrics={"depth_cm": depth},
    )
    return encode(
        EnrichedReading(
            v=1, reading=msgspec.Raw(encode(reading)), placement=WHERE, received_ms=received_ms
        )
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


@dataclass(frozen=True)
class FailingRule:
    """A rule with a bug: it raises on deep water (as ForecastRule once overflowed on a
    subnormal slope). It stands for any rule's bug, not for our code under test."""

    name: str = "buggy"
    kind: Kind = Kind.WATER_LEVEL
    metric: str = "depth_cm"
    selector: Selector = EVERY_NODE

    def evaluate(self, state: RuleState, reading: Reading) -> None:
        if reading.metrics["depth_cm"] > 50:
            raise OverflowError("cannot convert float infinity to integer")


async def test_a_rule_that_fails_on_a_reading_does_not_lose_the_reading(tmp_path):
    """A rule raising on one reading is counted and logged as an error; the reading is
    stored all the same, and the next readings are processed as usual."""
    app = create_embedded_app(tmp_path)
    sink = Sink()
    pipeline = ReadingPipeline(
        app, sink=sink, on_warning=_ignore, engine=RuleEngine([FailingRule()])
    )
    await app.start()
    app.flow_control.resume()
    try:
        for seq, depth in enumerate([1.0, 55.0, 2.0]):
            await pipeline.send(b"wl-0001", envelope(seq, depth))
        await asyncio.wait_for(pipeline.wait_processed(3), 10)
    finally:
        await app.stop()
    assert sorted(sink.readings) == [("wl-0001", 0), ("wl-0001", 1), ("wl-0001", 2)]
    assert (pipeline.processed, pipeline.errors) == (3, 1)


async def _ignore(_: Warning) -> None:
    return None


async def test_a_resent_reading_is_skipped_and_presence_reports_raise_and_clear(tmp_path):
    """The node's own seq window drops a reading it has taken (a resend that reached a
    gateway which never saw the original); an agent's will warns at once for a node heard
    before, and the node's next reading clears it."""
    from cityvitals.contract import PresenceReport

    app = create_embedded_app(tmp_path)
    sink = Sink()
    emitted: list[Warning] = []

    async def on_warning(w: Warning) -> None:
        emitted.append(w)

    pipeline = ReadingPipeline(app, sink=sink, on_warning=on_warning)
    await app.start()
    app.flow_control.resume()
    will = PresenceReport(
        v=1,
        node="wl-0001",
        kind=Kind.WATER_LEVEL,
        state="offline",
        ts_ms=1_764_028_800_000,
        received_ms=2_000,
        placement=WHERE,
        agent="pi-1",
        reason="connection lost",
    )
    try:
        await pipeline.send(b"wl-0001", envelope(1, 1.0, received_ms=1_000))
        await pipeline.send(b"wl-0001", envelope(1, 1.0, received_ms=1_500))
        await asyncio.wait_for(pipeline.wait_processed(2), 10)
        await pipeline.send_presence(b"wl-0001", encode(will))
        await wait_until(lambda: pipeline.presence_reports == 1, "the will handled")
        await pipeline.send(b"wl-0001", envelope(2, 1.0, received_ms=3_000))
        await asyncio.wait_for(pipeline.wait_processed(3), 10)
    finally:
        await app.stop()
    assert (pipeline.processed, pipeline.duplicates) == (2, 1)
    assert sink.readings == [("wl-0001", 1), ("wl-0001", 2)]
    assert [(w.rule, w.level) for w in emitted] == [
        ("presence.offline", Level.YELLOW),
        ("presence.offline", Level.NONE),
    ]
    assert sink.flushes >= 2


class Overdue:
    """The Kafka side of the offset ledger, reduced to its protocol: records faust
    acknowledged without handing them over, as `OffsetGuard.overdue` reads them."""

    def __init__(self, records: list[Record]) -> None:
        self.pending = records
        self.done: list[Record] = []

    async def admit(self, records):
        return list(records)

    def processed(self, records):
        self.done += records

    async def overdue(self):
        out, self.pending = self.pending, []
        return out


async def test_catch_up_handles_skipped_records_once_and_waits_out_a_rebalance(tmp_path):
    """Records faust skipped are stored and evaluated by `catch_up`, and marked processed
    only then; while partitions move (not ready) the catch-up leaves them for later."""
    app = create_embedded_app(tmp_path)
    sink = Sink()
    skipped = [Record(("readings", 0), o, envelope(o, 1.0)) for o in (7, 8)]
    keeper = Overdue(list(skipped))
    ready = False

    async def on_warning(w: Warning) -> None:
        raise AssertionError("no warning expected")

    pipeline = ReadingPipeline(
        app, sink=sink, on_warning=on_warning, offsets=keeper, ready=lambda: ready
    )
    assert await pipeline.catch_up() == 0
    assert (keeper.pending, sink.readings) == (skipped, [])
    ready = True
    assert await pipeline.catch_up() == 2
    assert sink.readings == [("wl-0001", 7), ("wl-0001", 8)]
    assert keeper.done == skipped
    assert await pipeline.catch_up() == 0
    assert pipeline.processed == 2


class ScoringSink(Sink):
    """A sink that also keeps scores, as InfluxDB's `score` measurement does."""

    def __init__(self) -> None:
        super().__init__()
        self.scores: list[tuple[str, int, str, float]] = []

    async def write_score(self, reading, placement, metric, score, worst):
        assert placement == WHERE
        self.scores.append((reading.node, reading.seq, metric, score))


async def test_anomaly_scores_reach_a_sink_that_keeps_them(tmp_path):
    """With an anomaly rule, every stored reading's score goes to a sink with
    `write_score`, in the same batch as the reading; a sink without it (the embedded
    store) is simply not asked."""
    from stream.engine import RuleEngine
    from stream.rules import AnomalyRule

    app = create_embedded_app(tmp_path)
    sink = ScoringSink()

    async def on_warning(w: Warning) -> None:
        pass

    engine = RuleEngine([AnomalyRule("a", Kind.WATER_LEVEL, "depth_cm", {Level.BLUE: 0.999})])
    pipeline = ReadingPipeline(app, sink=sink, on_warning=on_warning, engine=engine)
    await app.start()
    app.flow_control.resume()
    try:
        for seq in range(6):
            await pipeline.send(b"wl-0001", envelope(seq, 1.0 + seq % 2))
        await pipeline.send(b"wl-0001", envelope(2, 9.0))  # a resend: no second score
        await asyncio.wait_for(pipeline.wait_processed(7), 10)
    finally:
        await app.stop()
    assert [(n, s, m) for n, s, m, _ in sink.scores] == [
        ("wl-0001", s, "depth_cm") for s in range(6)
    ]
    assert all(0.0 <= score <= 1.0 for *_, score in sink.scores)
    assert sink.readings == [("wl-0001", s) for s in range(6)]


async def test_three_flooding_gauges_of_a_district_raise_one_area_warning(tmp_path):
    """Node warnings of the district rule's member go through the area channel to the area
    agent, which raises one district warning (to the sink and on), and clears it when the
    water goes down; a resent batch raises nothing twice."""
    app = create_embedded_app(tmp_path)
    sink = Sink()
    emitted: list[Warning] = []

    async def on_warning(w: Warning) -> None:
        emitted.append(w)

    pipeline = ReadingPipeline(app, sink=sink, on_warning=on_warning)
    await app.start()
    app.flow_control.resume()
    nodes = ["wl-0001", "wl-0002", "wl-0003"]
    depths = [1, 25, 26, 27, 28, 5, 5, 5]
    try:
        for seq, depth in enumerate(depths):
            for node in nodes:
                await pipeline.send(node.encode(), envelope(seq, depth, node=node))
        await asyncio.wait_for(pipeline.wait_processed(len(nodes) * len(depths)), 10)
        # A gateway resend of the whole story: every reading is a duplicate.
        for seq, depth in enumerate(depths):
            await pipeline.send(b"wl-0001", envelope(seq, depth, node="wl-0001"))
        await asyncio.wait_for(pipeline.wait_processed((len(nodes) + 1) * len(depths)), 10)
    finally:
        await app.stop()
    areas = [w for w in emitted if w.area is not None]
    assert [(w.rule, w.subject, w.level) for w in areas] == [
        ("water_level.district_flooding", "district:Harbour", Level.YELLOW),
        ("water_level.district_flooding", "district:Harbour", Level.NONE),
    ]
    assert [m.node for m in areas[0].area.members] == nodes
    assert [w for w in sink.warnings if w.area is not None] == areas
    # Three nodes, each raised and cleared: six node warnings went to the area agent.
    assert (pipeline.area_updates, pipeline.area_updates_done) == (6, 6)
    assert len(pipeline.area_state) == 1
