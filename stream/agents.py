"""The stream agents: readings and presence in, warnings out. The same in both modes.

A thin shell around pure code (`stream.engine`, `stream.presence`): decode
the gateway's envelopes, keep per-node state, store what arrived and hand
every warning that changed to the sink and to `on_warning`.

The embedded mode feeds the agents from in-memory channels and keeps state in
dicts; the distributed mode feeds them from Kafka topics keyed by node and
keeps state in faust Tables, whose Kafka changelogs let a restarted or
rebalanced worker resume. (A faust Table without Kafka would queue a
changelog record per update that nothing ever sends.)

Readings are handled in batches (`take_events`), in this order, so that a
worker killed at any point loses nothing and pages nobody twice:

1. every new reading goes to the sink, and the sink is flushed (durable);
2. every warning the batch raised is stored and handed on (`on_warning`
   returns once Kafka, or the alert service, has it);
3. only then is the per-node state written (its changelog record sent);
4. faust acknowledges the batch's offsets only after all of that, and in
   the distributed mode commits no further than the worker's own offset
   ledger (`stream.offsets`), which also brings back any record faust
   skipped.

A worker that dies between 1 and 4 gets the batch again. Readings its state
already holds are recognised by the per-node sequence window and skipped;
the others are evaluated again from the same state, so they raise the same
warnings (same fingerprint, level and time), which the alert book ignores.

Per-node order matters for hysteresis, so each agent runs with concurrency
1 (Kafka partitions keyed by node keep the order per node). A reading that
breaks something here is logged and counted; the agent never dies on one
message. A sink that fails is retried (with backoff, logged once) rather
than skipped: the stream stalls and Kafka holds the backlog.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from functools import partial
from typing import Any, Protocol, TypeVar, cast

import faust
from faust.types import EventT

from cityvitals.clock import Clock, SystemClock
from cityvitals.contract import (
    Placement,
    Reading,
    Warning,
    decode_enriched,
    decode_presence,
    decode_warning,
    encode,
)
from cityvitals.store import StoreError
from stream.areas import AreaEngine, decode_area_state, encode_area_state
from stream.engine import (
    MetricScore,
    NodeState,
    RuleEngine,
    decode_state,
    encode_state,
    first_time,
)
from stream.offsets import Record
from stream.presence import Presence, PresencePolicy, PresenceTracker
from stream.presence import decode_presence as decode_presence_state
from stream.presence import encode_presence as encode_presence_state
from stream.rules import AreaState

log = logging.getLogger(__name__)

T = TypeVar("T")


class ReadingSink(Protocol):
    async def write_reading(
        self, reading: Reading, placement: Placement, received_ms: int
    ) -> None: ...

    async def write_warning(self, warning: Warning, body: bytes) -> None: ...

    async def flush(self) -> None: ...


class OffsetKeeper(Protocol):
    """Which records of a batch to process; see `stream.kafka_offsets.OffsetGuard`."""

    async def admit(self, records: Sequence[Record]) -> list[Record]: ...

    def processed(self, records: Sequence[Record]) -> None: ...

    async def overdue(self) -> list[Record]: ...


WarningHandler = Callable[[Warning], Awaitable[None]]
#: Whether this worker owns a node's state now (its partition is assigned here).
Owns = Callable[[str], bool]


def _key_bytes(key: object) -> bytes:
    if isinstance(key, bytes | bytearray | memoryview):
        return bytes(key)
    return b"" if key is None else str(key).encode()


def _topic_of(record: Record) -> str:
    topic: str = record.tp[0]  # type: ignore[index]
    return topic


def _owns_everything(node: str) -> bool:
    return True


def _everything() -> Owns:
    return _owns_everything


class ReadingPipeline:
    """Wire the agents into `app`; must be built before the app starts.

    `source` and `presence_source` default to in-memory channels (embedded
    mode); the distributed worker passes Kafka topics and faust Tables.
    """

    def __init__(
        self,
        app: faust.App,
        *,
        sink: ReadingSink,
        on_warning: WarningHandler,
        engine: RuleEngine | None = None,
        source: Any = None,
        presence_source: Any = None,
        state: MutableMapping[str, bytes] | None = None,
        presence_state: MutableMapping[str, bytes] | None = None,
        presence: PresencePolicy | None = None,
        clock: Clock | None = None,
        batch_size: int = 500,
        batch_within_s: float = 0.2,
        owner: Callable[[], Owns] = _everything,
        ready: Callable[[], bool] = lambda: True,
        #: Called when a batch or a state write fails for a reason other than
        #: bad input; the distributed worker exits there (nothing committed).
        on_fatal: Callable[[BaseException], None] | None = None,
        retry_backoff: tuple[float, float] = (0.5, 15.0),
        #: The distributed worker's offset ledger (`stream.kafka_offsets`).
        offsets: OffsetKeeper | None = None,
        #: Spatial rules' area events; default: the engine's area rules, with
        #: no registry (areas' node counts unknown, placement from the nodes seen).
        areas: AreaEngine | None = None,
        area_source: Any = None,
        area_state: MutableMapping[str, bytes] | None = None,
    ) -> None:
        self.app = app
        self.engine = engine or RuleEngine()
        self._sink = sink
        self._on_warning = on_warning
        self._clock = clock or SystemClock()
        self.source = source if source is not None else app.channel()
        self.presence_source = presence_source if presence_source is not None else app.channel()
        self.areas = areas if areas is not None else AreaEngine(self.engine.area_rules)
        self.area_source = area_source if area_source is not None else app.channel()
        self.area_state: MutableMapping[str, bytes] = {} if area_state is None else area_state
        # A Kafka topic's name (distributed mode), for telling its records from
        # the readings' in a catch-up; an in-memory channel has none.
        self._area_topic: str | None = next(iter(getattr(area_source, "topics", ())), None)
        self.state: MutableMapping[str, bytes] = {} if state is None else state
        self.presence_state: MutableMapping[str, bytes] = (
            {} if presence_state is None else presence_state
        )
        self.tracker = PresenceTracker(presence)
        self._batch_size = batch_size
        self._batch_within_s = batch_within_s
        #: Gives the ownership test of the moment; taken once per sweep.
        self._owner = owner
        self._ready = ready
        self._on_fatal = on_fatal
        self._retry_backoff = retry_backoff
        self._offsets = offsets
        # Readings batches and catch-ups take turns: per-node order. So do
        # area batches and theirs: per-area order.
        self._batch_lock = asyncio.Lock()
        self._area_lock = asyncio.Lock()
        # The presence state is changed by three tasks (readings, presence
        # reports, the silence sweep); each read-modify-write holds the lock
        # across its await so none overwrites another's update.
        self._presence_lock = asyncio.Lock()
        # Newest gateway receive time seen: how the sweep tells a stalled
        # pipeline from silent sensors.
        self._watermark_ms = 0
        policy = presence or PresencePolicy()
        self._stall_ms = min([policy.silent_after_s, *policy.silent_after_by_kind.values()]) * 500
        self._stall_logged = False
        self.readings_agent = app.agent(self.source, name="evaluate_readings", concurrency=1)(
            self._evaluate
        )
        self.presence_agent = app.agent(self.presence_source, name="track_presence", concurrency=1)(
            self._track_presence
        )
        self.area_agent = app.agent(self.area_source, name="evaluate_areas", concurrency=1)(
            self._evaluate_areas
        )
        self.processed = 0
        self.duplicates = 0
        self.warnings = 0
        self.errors = 0
        self.presence_reports = 0
        #: Node warnings handed to the area agent, and those it has counted.
        self.area_updates = 0
        self.area_updates_done = 0
        self._progress = asyncio.Event()
        self._last_error = ""
        self._sink_failing = False

    # -- embedded-mode entry points ---------------------------------------

    async def send(self, key: bytes, value: bytes) -> None:
        """Embedded mode: what the gateway forwards readings to (an in-memory channel)."""
        await self.source.send(key=key, value=value)

    async def send_presence(self, key: bytes, value: bytes) -> None:
        """Embedded mode: what the gateway forwards presence reports to."""
        await self.presence_source.send(key=key, value=value)

    async def wait_processed(self, count: int) -> None:
        """Return once `count` readings have been handled (stored and evaluated), and
        every area update they caused counted."""
        while (
            self.processed + self.duplicates + self.errors < count
            or self.area_updates_done < self.area_updates
        ):
            self._progress.clear()
            await self._progress.wait()

    # -- readings ---------------------------------------------------------

    async def _evaluate(self, stream: faust.StreamT[bytes]) -> None:
        await self._batches(stream, self._handle)

    async def _evaluate_areas(self, stream: faust.StreamT[bytes]) -> None:
        await self._batches(stream, self._handle_areas)

    async def _batches(
        self,
        stream: faust.StreamT[bytes],
        handle: Callable[[Sequence[EventT[bytes]]], Awaitable[None]],
    ) -> None:
        # `take_events` is on faust's Stream, not (yet) on its StreamT interface.
        batches = cast("faust.Stream[bytes]", stream).take_events
        async for events in batches(self._batch_size, within=self._batch_within_s):
            work = asyncio.ensure_future(handle(events))
            cancelled = False
            # A stop in the middle finishes the batch first: `take_events`
            # acknowledges the batch's offsets as soon as control returns to
            # it, so giving up early would let faust count as handled readings
            # never stored. A batch stuck on a dead sink is ended by the
            # supervisor's SIGKILL, which commits nothing.
            while not work.done():
                try:
                    await asyncio.shield(work)
                except asyncio.CancelledError:
                    if not cancelled:
                        log.info("stream: finishing the current batch before stopping")
                    cancelled = True
            try:
                work.result()
            except Exception as exc:
                # `take_events` would acknowledge this batch, and every later
                # one the crashed agent never sees. The distributed worker
                # exits instead, uncommitted, and the batch is handled again.
                if self._on_fatal is not None:
                    self._on_fatal(exc)
                raise
            self._progress.set()
            if cancelled:
                raise asyncio.CancelledError

    async def _handle(self, events: Sequence[EventT[bytes]]) -> None:
        async with self._batch_lock:
            records = await self._admit(events)
            await self._batch([record.value for record in records])
            if self._offsets is not None:
                self._offsets.processed(records)

    async def _handle_areas(self, events: Sequence[EventT[bytes]]) -> None:
        async with self._area_lock:
            records = await self._admit(events)
            await self._area_batch(records)
            if self._offsets is not None:
                self._offsets.processed(records)

    async def _admit(self, events: Sequence[EventT[bytes]]) -> list[Record]:
        handed = [
            Record(e.message.tp, e.message.offset, e.value, _key_bytes(e.key)) for e in events
        ]
        if self._offsets is None:
            return handed
        return await self._until_done(partial(self._offsets.admit, handed))

    async def catch_up(self) -> int:
        """Handle what faust acknowledged that the agent never saw; return how many.

        faust's acknowledgements run ahead of the readings agent only when it
        skipped records; the ledger (`stream.offsets`) notices when faust asks
        to commit past them, and this reads them from Kafka and handles them.
        """
        offsets = self._offsets
        if offsets is None or not self._ready():
            # While partitions move or their state is recovered, faust holds
            # the agents back; a catch-up then would write state being
            # restored. The next one, after the rebalance, reads the same.
            return 0
        async with self._batch_lock, self._area_lock:
            records = await self._until_done(offsets.overdue)
            areas = [r for r in records if _topic_of(r) == self._area_topic]
            readings = [r for r in records if _topic_of(r) != self._area_topic]
            if readings:
                await self._batch([record.value for record in readings])
            if areas:
                await self._area_batch(areas)
            if records:
                offsets.processed(records)
                self._progress.set()
            return len(records)

    async def catch_up_every(self, seconds: float) -> None:
        """Run `catch_up` forever; one task per distributed worker."""
        while True:
            await asyncio.sleep(seconds)
            try:
                await self.catch_up()
            except Exception as exc:
                # As for a failed batch: the records may be half handled.
                if self._on_fatal is not None:
                    self._on_fatal(exc)
                raise

    async def _batch(self, values: Sequence[bytes]) -> None:
        states: dict[str, NodeState] = {}
        heard: dict[str, tuple[Reading, Placement, int]] = {}
        fresh: list[tuple[Reading, Placement, int]] = []
        raised: list[Warning] = []
        # Anomaly scores go to a sink that keeps them (InfluxDB's `score`).
        write_score = getattr(self._sink, "write_score", None)
        scored: list[tuple[Reading, Placement, MetricScore]] = []
        scores: list[MetricScore] | None = [] if write_score is not None else None
        for value in values:
            try:
                envelope, reading = decode_enriched(value)
                node = reading.node
                state = states.get(node)
                if state is None:
                    state = states[node] = decode_state(self.state.get(node))
                if not first_time(state, reading.seq):
                    self.duplicates += 1
                    continue
            except Exception as exc:
                # Bytes reach here only after the gateway validated them, so
                # this is our bug, not bad input: log each new kind of
                # failure with its traceback, count the repeats.
                self.errors += 1
                self._failed(exc)
                continue
            try:
                if scores is not None:
                    scores.clear()
                raised += self.engine.evaluate(reading, envelope.placement, state, scores=scores)
                if scores:
                    scored += ((reading, envelope.placement, score) for score in scores)
            except Exception as exc:
                # A rule failing on a reading is our bug too; the reading itself is
                # valid data, so it is stored all the same.
                self.errors += 1
                self._failed(exc)
            heard[node] = (reading, envelope.placement, envelope.received_ms)
            self._watermark_ms = max(self._watermark_ms, envelope.received_ms)
            fresh.append(heard[node])
        for reading, placement, received_ms in fresh:
            await self._until_done(
                partial(self._sink.write_reading, reading, placement, received_ms)
            )
        if write_score is not None:
            for reading, placement, score in scored:
                await self._until_done(
                    partial(write_score, reading, placement, score.metric, score.score, score.worst)
                )
        await self._until_done(self._sink.flush)
        self.processed += len(fresh)
        await self._emit(raised)
        for node, state in states.items():
            self.state[node] = encode_state(state)
        if heard:
            async with self._presence_lock:
                await self._heard(heard)

    async def _area_batch(self, records: Sequence[Record]) -> None:
        """Count a batch of node warnings in their areas; emit the area warnings that
        changed, then write the areas' state (the same order as readings batches)."""
        states: dict[str, AreaState] = {}
        raised: list[Warning] = []
        for record in records:
            try:
                key = record.key.decode()
                warning = decode_warning(record.value)
                state = states.get(key)
                if state is None:
                    state = states[key] = decode_area_state(self.area_state.get(key))
                raised += self.areas.evaluate(key, warning, state)
            except Exception as exc:
                self.errors += 1
                self._failed(exc)
        await self._emit(raised)
        for key, state in states.items():
            self.area_state[key] = encode_area_state(state)
        self.area_updates_done += len(records)

    async def _to_areas(self, warning: Warning, body: bytes) -> None:
        """Hand a node warning to every area it counts in, and wait until each has it."""
        for key, _rule in self.areas.routes(warning):
            delivery = await self.area_source.send(key=key.encode(), value=body)
            await delivery
            self.area_updates += 1

    async def _heard(self, heard: dict[str, tuple[Reading, Placement, int]]) -> None:
        updates: dict[str, Presence] = {}
        changed: list[Warning] = []
        for node, (reading, placement, received_ms) in heard.items():
            p = updates[node] = decode_presence_state(self.presence_state.get(node))
            w = self.tracker.heard(
                p,
                node=node,
                kind=reading.kind,
                placement=placement,
                received_ms=received_ms,
                seq=reading.seq,
            )
            if w is not None:
                changed.append(w)
        await self._emit(changed)
        for node, p in updates.items():
            self.presence_state[node] = encode_presence_state(p)

    # -- presence ---------------------------------------------------------

    async def _track_presence(self, stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            try:
                report = decode_presence(value)
            except Exception as exc:
                self.errors += 1
                self._failed(exc)
                continue
            self._watermark_ms = max(self._watermark_ms, report.received_ms)
            try:
                async with self._presence_lock:
                    p = decode_presence_state(self.presence_state.get(report.node))
                    w = self.tracker.status(
                        p,
                        node=report.node,
                        kind=report.kind,
                        placement=report.placement,
                        state=report.state,
                        received_ms=report.received_ms,
                        ts_ms=report.ts_ms,
                        agent=report.agent,
                    )
                    if w is not None:
                        await self._emit([w])
                    self.presence_state[report.node] = encode_presence_state(p)
                self.presence_reports += 1
            except Exception as exc:
                # Not bad input (decoded above): a failed state write. The
                # distributed worker must not acknowledge it and go on.
                if self._on_fatal is not None:
                    self._on_fatal(exc)
                self.errors += 1
                self._failed(exc)

    async def sweep(self) -> int:
        """Warn for every owned node silent too long; return how many warnings.

        Skipped while this worker itself has heard nothing for half the
        shortest timeout: then the gateway or Kafka is down, not every
        sensor at once, and a thousand "silent" pages would bury the one
        that matters.
        """
        now_ms = self._clock.now_ms()
        stalled_ms = now_ms - self._watermark_ms
        if not self._watermark_ms or not self._ready():
            # Nothing received since start, or partitions moving and their
            # state not recovered yet: nothing to judge.
            return 0
        if stalled_ms > self._stall_ms:
            if not self._stall_logged:
                self._stall_logged = True
                log.warning(
                    "presence: nothing received for %.0f s; silence checks paused until the "
                    "stream flows again",
                    stalled_ms / 1000,
                )
            return 0
        if self._stall_logged:
            self._stall_logged = False
            log.info("presence: the stream flows again; silence checks resumed")
        count = 0
        owns = self._owner()
        async with self._presence_lock:
            for node, data in list(self.presence_state.items()):
                if not owns(node):
                    continue
                p = decode_presence_state(data)
                before = p.state
                w = self.tracker.sweep(p, node=node, now_ms=now_ms)
                if w is not None:
                    await self._emit([w])
                    count += 1
                if w is not None or p.state != before:
                    self.presence_state[node] = encode_presence_state(p)
        return count

    async def sweep_every(self, seconds: float) -> None:
        """Run `sweep` forever; one task per worker."""
        while True:
            await asyncio.sleep(seconds)
            try:
                found = await self.sweep()
            except Exception as exc:
                self._failed(exc)
                continue
            if found:
                log.info("presence: %d node(s) went silent", found)

    # -- shared -----------------------------------------------------------

    async def _emit(self, warnings: list[Warning]) -> None:
        for warning in warnings:
            self.warnings += 1
            body = encode(warning)
            await self._until_done(partial(self._sink.write_warning, warning, body))
            await self._until_done(partial(self._on_warning, warning))
            if self.areas and warning.rule in self.areas.members:
                await self._until_done(partial(self._to_areas, warning, body))
        if warnings:
            await self._until_done(self._sink.flush)

    async def _until_done(self, step: Callable[[], Awaitable[T]]) -> T:
        """Retry `step` until it succeeds: a failing sink stalls the stream, never skips."""
        delay = self._retry_backoff[0]
        while True:
            try:
                result = await step()
            except StoreError as exc:
                # The embedded store's writer is gone for good: retrying cannot
                # help. The distributed worker exits (nothing acknowledged, the
                # supervisor restarts it with a fresh store connection).
                if self._on_fatal is None:
                    raise
                self._on_fatal(exc)
                raise
            except Exception:
                if not self._sink_failing:
                    self._sink_failing = True
                    log.exception(
                        "stream: a sink write or Kafka read failed; retrying until it recovers"
                    )
                await asyncio.sleep(random.uniform(0, delay))
                delay = min(delay * 2, self._retry_backoff[1])
                continue
            if self._sink_failing:
                self._sink_failing = False
                log.info("stream: the sink (or Kafka) recovered")
            return result

    def _failed(self, exc: Exception) -> None:
        kind = f"{type(exc).__name__}: {exc}"
        if kind != self._last_error:
            self._last_error = kind
            log.error(
                "stream: failed to process a message (%d so far): %s",
                self.errors,
                kind,
                exc_info=exc,
            )
