"""The reading agent: state from a table, rules from the engine, results to sinks.

A thin shell around pure code: decode the gateway's envelope, store the
reading, update the node's rule state (kept in a faust Table keyed by node,
so the distributed mode can recover it from its changelog), and hand every
warning that changed to the sink and to the alert side.

Per-node order matters for hysteresis, so the agent runs with concurrency 1
(in the distributed mode, partitions keyed by node keep order per node).
A reading that breaks something here is logged and counted; the agent
never dies on one message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
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
    ) -> None:
        self.app = app
        self.engine = engine or RuleEngine()
        self._sink = sink
        self._on_warning = on_warning
        self.source = source if source is not None else app.channel()
        self.state = app.Table("node_rule_state", default=bytes, key_type=str, value_type=bytes)
        self.agent = app.agent(self.source, name="evaluate_readings", concurrency=1)(self._evaluate)
        self.processed = 0
        self.warnings = 0
        self.errors = 0
        self._progress = asyncio.Event()

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
            except Exception:
                # Bytes reach here only after the gateway validated them, so
                # this is our bug, not bad input: log loudly, keep going.
                self.errors += 1
                log.exception("stream: failed to process a reading; continuing")
            self._progress.set()

    async def _handle(self, value: bytes) -> None:
        envelope, reading = decode_enriched(value)
        await self._sink.write_reading(reading, envelope.placement, envelope.received_ms)
        state = decode_state(self.state[reading.node])
        changed = self.engine.evaluate(reading, envelope.placement, state)
        self.state[reading.node] = encode_state(state)
        for warning in changed:
            self.warnings += 1
            await self._sink.write_warning(warning, encode(warning))
            await self._on_warning(warning)
