"""The agent over TLS with a username and a password file, against a real Mosquitto
that requires both (certificates made here with the openssl command line)."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cityvitals.config import BrokerSettings
from edge.agent import EdgeAgent
from edge.config import load_edge_config
from tests.integration.conftest import MosquittoServer, mosquitto_binary, require
from tests.integration.edge_support import Recorder

pytestmark = pytest.mark.integration


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True)  # noqa: S603 - fixed tools


def make_certificates(directory: Path) -> None:
    """A throwaway CA, and a server certificate for 127.0.0.1 signed by it."""
    _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=cityvitals test CA", "-keyout", "ca.key", "-out", "ca.pem",
         cwd=directory)  # fmt: skip
    _run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", "server.key", "-out", "server.csr", cwd=directory)  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem",
         cwd=directory)  # fmt: skip


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[tuple[MosquittoServer, Path]]:
    binary = mosquitto_binary()
    require(binary, "mosquitto is not installed")
    require(shutil.which("mosquitto_passwd"), "mosquitto_passwd is not installed")
    require(shutil.which("openssl"), "openssl is not installed")
    assert binary is not None
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certificates(certs)
    _run("mosquitto_passwd", "-b", "-c", "passwords", "pi-secure", "right horse", cwd=certs)
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    server = MosquittoServer(
        binary,
        workdir,
        security=(
            "allow_anonymous false\n"
            f"password_file {certs / 'passwords'}\n"
            f"cafile {certs / 'ca.pem'}\n"
            f"certfile {certs / 'server.pem'}\n"
            f"keyfile {certs / 'server.key'}\n"
        ),
    )
    server.start()
    try:
        yield server, certs
    finally:
        server.stop()


def config(tmp_path: Path, port: int, certs: Path, password: str) -> Path:
    (tmp_path / "mqtt-password").write_text(password + "\n")
    path = tmp_path / "edge.toml"
    path.write_text(
        f"""
[agent]
id = "pi-secure"
data_dir = "data"
[mqtt]
url = "mqtts://127.0.0.1:{port}"
username = "pi-secure"
password_file = "mqtt-password"
ca_file = "{certs / "ca.pem"}"
reconnect_max_s = 0.2
[report]
enabled = false
interval_s = 0.01
[[node]]
id = "wl-0007"
kind = "water_level"
simulate = {{ limit = 30 }}
"""
    )
    return path


def recorder_settings(port: int, certs: Path) -> BrokerSettings:
    return BrokerSettings(
        host="127.0.0.1",
        port=port,
        username="pi-secure",
        password="right horse",
        tls=ssl.create_default_context(cafile=str(certs / "ca.pem")),
    )


async def test_tls_with_a_password_file_delivers(tmp_path: Path, secure_broker):
    server, certs = secure_broker
    agent = EdgeAgent(load_edge_config(config(tmp_path, server.port, certs, "right horse")))
    stop = asyncio.Event()
    async with Recorder(broker=recorder_settings(server.port, certs)) as recorder:
        run = asyncio.create_task(agent.run(stop))
        await asyncio.wait_for(agent.wait_sampled(), 20)
        await asyncio.wait_for(agent.wait_delivered(), 20)
        await recorder.wait_for(lambda: recorder.unique() == 30)
        stop.set()
        await run
    assert sorted(recorder.seqs["wl-0007"]) == list(range(30))


async def test_a_wrong_password_is_refused_and_the_readings_wait_on_disk(
    tmp_path: Path, secure_broker, caplog: pytest.LogCaptureFixture
):
    server, certs = secure_broker
    agent = EdgeAgent(load_edge_config(config(tmp_path, server.port, certs, "wrong horse")))
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    await asyncio.wait_for(agent.wait_sampled(), 20)
    stop.set()
    summary = await run
    assert summary.left_in_queue == 30  # refused by the broker, kept by the agent
    refusals = [
        r.getMessage() for r in caplog.records if "cannot connect to the broker" in r.getMessage()
    ]
    assert refusals
    assert "not authorized" in refusals[0].lower() or "bad user name" in refusals[0].lower()
