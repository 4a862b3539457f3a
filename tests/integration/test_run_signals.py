"""`cityvitals run` stopped by SIGTERM while it is still setting up Kafka's topics.

That can wait a long time on a Kafka that does not answer (aiokafka's admin client
gives a request 40 s), and nothing has started that would need a drain: the signal
ends it at once, as a clean stop. The Kafka here is a black hole, a port that
accepts connections and never answers; a real Kafka would answer, which is not the
case under test.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.distributed_support import RoleProcess, write_config
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


async def test_sigterm_during_start_up_stops_it_at_once(tmp_path) -> None:
    connections: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)  # read nothing, answer nothing

    hole = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = hole.sockets[0].getsockname()[1]
    config = write_config(tmp_path, mqtt="mqtt://127.0.0.1:1883", bootstrap=f"127.0.0.1:{port}")
    role = RoleProcess(config, "alerts").start()
    try:
        await wait_until(
            lambda: connections or not role.alive(), "the role to ask Kafka", deadline_s=60
        )
        assert role.alive(), role.text()[-3000:]
        # Well inside the 40 s the admin client would wait for its answer.
        code = await asyncio.to_thread(role.stop, 20)
    finally:
        if role.alive():
            role.kill()
        for writer in connections:
            writer.close()
        hole.close()
        await hole.wait_closed()
    assert code == 0, role.text()[-3000:]
    assert "stopped while setting up Kafka; nothing had started" in role.text()
    assert "Traceback" not in role.text()
