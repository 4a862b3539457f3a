"""`cityvitals run --role alerts` with an [alerts.api] table, against a real Kafka: the API
answers on its port, with its tokens, and a taken port is a clear error."""

from __future__ import annotations

import socket

import aiohttp
import pytest

from tests.integration.distributed_support import RoleProcess, write_config
from tests.ports import free_port
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

TOKEN = "t" * 32


def _config(tmp_path, mosquitto, kafka_server, port: int):
    (tmp_path / "tokens").write_text(f"{TOKEN} viewer ops-screen\n")
    api = f'[alerts.api]\nlisten = "127.0.0.1:{port}"\ntokens_file = "tokens"\n'
    return write_config(tmp_path, mqtt=mosquitto, bootstrap=kafka_server.bootstrap, extra=api)


async def test_the_alerts_role_serves_its_api(tmp_path, mosquitto, kafka_server) -> None:
    port = free_port()
    role = RoleProcess(_config(tmp_path, mosquitto, kafka_server, port), "alerts").start()
    try:
        await wait_until(
            lambda: "alerts API listening" in role.text() or not role.alive(),
            "the API to listen",
            deadline_s=60,
        )
        assert role.alive(), role.text()[-3000:]
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/healthz") as health:
                assert health.status == 200
                assert (await health.json())["status"] == "ok"
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with session.get(f"{base}/api/v1/alerts", headers=headers) as alerts:
                assert alerts.status == 200
                assert await alerts.json() == {"alerts": []}
            async with session.get(f"{base}/api/v1/alerts") as refused:
                assert refused.status == 401
    finally:
        code = role.stop()
    assert code == 0, role.text()[-3000:]


async def test_a_taken_port_is_a_clear_error(tmp_path, mosquitto, kafka_server) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        role = RoleProcess(_config(tmp_path, mosquitto, kafka_server, port), "alerts").start()
        await wait_until(lambda: not role.alive(), "the role to give up", deadline_s=60)
    assert role.proc is not None
    assert role.proc.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port} ([alerts.api] listen)" in role.text()
