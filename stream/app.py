"""The faust App, and nothing else.

In the embedded mode the App runs without Kafka: the boot strategy starts no
producer, consumer or web server, agents read in-memory channels and tables
live in memory. In the distributed mode (issue 4) the same agents read
Kafka topics instead.
"""

from __future__ import annotations

from pathlib import Path

import faust
from faust.app.base import BootStrategy


class EmbeddedBoot(BootStrategy):
    enable_kafka = False
    enable_web = False
    enable_sensors = False


class EmbeddedApp(faust.App):
    """A faust App that needs no Kafka: channels and memory tables only."""

    BootStrategy = EmbeddedBoot

    async def on_start(self) -> None:
        # The base class hangs the topic conductor under the Kafka consumer
        # for its service graph, which builds that consumer, and with it an
        # event loop for the consumer's thread that nothing ever closes.
        # Embedded mode has no consumer: finalize and stop there.
        self.finalize()

    async def on_stop(self) -> None:
        await super().on_stop()
        # Stream iterators read `app.consumer` (for acks), which builds the
        # Kafka consumer and its worker thread's event loop even though the
        # boot strategy never starts them. Close that idle loop so a stopped
        # app leaks nothing. faust keeps it on private attributes, hence getattr.
        thread = getattr(self._consumer, "_thread", None)
        loop = getattr(thread, "thread_loop", None)
        if loop is not None and not loop.is_running() and not loop.is_closed():
            loop.close()

    async def _producer_flush(self, logger: object) -> None:
        # faust builds a Kafka producer lazily (tables reference it) even when
        # the boot strategy never starts it, and flushing a producer that never
        # ran raises on stop. Embedded mode has nothing to flush.
        return None


def create_embedded_app(data_dir: Path, *, app_id: str = "cityvitals") -> faust.App:
    return EmbeddedApp(
        app_id,
        store="memory://",
        datadir=str(data_dir / "faust"),
        web_enabled=False,
        autodiscover=False,
    )
