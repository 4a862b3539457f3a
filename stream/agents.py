"""The reading agent: per-node state, rules from the engine, results to sinks.

A thin shell around pure code: decode the gateway's envelope, store the
reading, update the node's rule state, and hand every warning that changed to
the sink and to the alert side.

Rule state is a mapping of node id to encoded `NodeState`. The embedded mode
passes a plain dict: there is nothing durable to recover from in one process,
and a faust Table without Kafka would queue a changelog record per reading
that no producer ever sends (memory growing with every reading). The
distributed mode (issue 4) is meant to pass a faust Table here, whose Kafka
changelog lets a restarted or rebalanced worker resume.

Per-node order matters for hysteresis, so the agent runs with concurrency 1
(in the distributed mode, partitions keyed by node keep order per node).
A reading that breaks something here is logged and counted; the agent
never dies on one message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

import faust

from cityvitals.contract import Placement, Reading, Warning, decode_enriched, encode
from stream.engine import RuleEngine, decode_state, encode_state

log = logging.getLogger(__name__)


class ReadingSink(Protocol):
    async def write_reading(
        self, reading: Reading, placement: Placement, received_ms: int
    ) -> None: ...

    async def write_warning(self, warning: Warning, body: bytes) -> None: ...


WarningHandler = Callable[[Warning], Awaitable[None]]


class ReadingPipeline:
    """Wire the reading agent into `app`; must be built before the app starts."""

    def __init__(
        self,
        app: faust.App,
        *,
        sink: ReadingSink,
        on_warning: WarningHandler,
        engine: RuleEngine | None = None,
        source: Any = None,
        state: MutableMapping[str, bytes] | None = None,
    ) -> None:
        self.app = app
        self.engine = engine or RuleEngine()
        self._sink = sink
        self._on_warning = on_warning
        self.source = source if source is not None else app.channel()
        self.state: MutableMapping[str, bytes] = {} if state is None else state
        self.agent = app.agent(self.source, name="evaluate_readings", concurrency=1)(self._evaluate)
        self.processed = 0
        self.warnings = 0
        self.errors = 0
        self._progress = asyncio.Event()
        self._last_error = ""

    async def send(self, key: bytes, value: bytes) -> None:
        """Embedded mode: what the gateway forwards to (an in-memory channel)."""
        await self.source.send(key=key, value=value)

    async def wait_processed(self, count: int) -> None:
        """Return once `count` readings have been handled (stored and evaluated)."""
        while self.processed + self.errors < count:
            self._progress.clear()
            await self._progress.wait()

    async def _evaluate(self, stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            try:
                await self._handle(value)
                self.processed += 1
            except Exception as exc:
                # Bytes reach here only after the gateway validated them, so
                # this is our bug or a failing sink, not bad input: log each
                # new kind of failure with its traceback, count the repeats.
                self.errors += 1
                kind = f"{type(exc).__name__}: {exc}"
                if kind != self._last_error:
                    self._last_error = kind
                    log.exception("stream: failed to process a reading (%d so far)", self.errors)
            self._progress.set()

    async def _handle(self, value: bytes) -> None:
        envelope, reading = decode_enriched(value)
        await self._sink.write_reading(reading, envelope.placement, envelope.received_ms)
        state = decode_state(self.state.get(reading.node))
        changed = self.engine.evaluate(reading, envelope.placement, state)
        self.state[reading.node] = encode_state(state)
        for warning in changed:
            self.warnings += 1
            await self._sink.write_warning(warning, encode(warning))
            await self._on_warning(warning)
