"""An in-process MQTT broker (amqtt) for the embedded mode: nothing to install.

Binds to loopback on a free port unless told otherwise. Fine for a demo and
for a few hundred nodes; a city runs Mosquitto or a clustered broker
(`--mqtt URL`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from types import TracebackType
from typing import Final, Self

from amqtt.broker import Broker
from amqtt.errors import BrokerError

from cityvitals.config import BrokerSettings
from cityvitals.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: How long a stop waits for amqtt to close its clients' sessions.
SHUTDOWN_TIMEOUT_S: Final = 5.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """`async with EmbeddedBroker() as broker: broker.settings ...`"""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, attempts: int = 5) -> None:
        self.host = host
        self._port = port
        self._attempts = attempts
        self._broker: Broker | None = None
        self.port = 0

    @property
    def settings(self) -> BrokerSettings:
        return BrokerSettings(host=self.host, port=self.port)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def __aenter__(self) -> Self:
        # amqtt cannot report the port it bound for port 0, so pick a free one
        # and retry if another process takes it between the check and the bind.
        for attempt in range(self._attempts):
            port = self._port or free_port(self.host)
            broker = Broker(
                {
                    "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{port}"}},
                    "plugins": {
                        "amqtt.plugins.authentication.AnonymousAuthPlugin": {
                            "allow_anonymous": True
                        },
                    },
                }
            )
            try:
                await broker.start()
            except BrokerError as exc:
                in_use = (
                    isinstance(exc.__cause__, OSError) and exc.__cause__.errno == errno.EADDRINUSE
                )
                if self._port or not in_use or attempt == self._attempts - 1:
                    raise
                continue
            self._broker, self.port = broker, port
            log.info("embedded MQTT broker listening on %s", self.url)
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._broker is not None:
            broker, self._broker = self._broker, None
            # Bounded: amqtt waits for each client's reader, and a reader can lose
            # a cancel on 3.11 (its reads use wait_for); amqtt also swallows one
            # while it closes a client's writer. A task of its own, then, and
            # cancelled as often as it takes (asyncio.timeout cancels only once).
            shutdown = asyncio.create_task(broker.shutdown(), name="embedded-broker-shutdown")
            try:
                done, _ = await asyncio.wait({shutdown}, timeout=SHUTDOWN_TIMEOUT_S)
            finally:
                await cancel_and_wait(shutdown, again_after_s=1.0)
            if done and not shutdown.cancelled() and shutdown.exception() is not None:
                log.warning("embedded MQTT broker shutdown failed", exc_info=shutdown.exception())
            elif done:
                log.info("embedded MQTT broker stopped")
            else:
                log.warning(
                    "embedded MQTT broker did not shut down within %.0f s; cut short",
                    SHUTDOWN_TIMEOUT_S,
                )
