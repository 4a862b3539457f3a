"""The production broker config (deploy/mosquitto/mosquitto.conf) on a real Mosquitto, with
the credentials and ACL `cityvitals city credentials` issues from a registry: TLS only, a
password per edge agent, and an ACL under which a node publishes only its own topics and
reads nothing; and the gateway's router, given the agents file issued with them, takes
an agent's status only for its own nodes. Certificates are made here with the openssl
command line."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import shutil
import signal
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from cityvitals.citygen import generate_city
from cityvitals.clock import SystemClock
from cityvitals.contract import Reason, decode_presence
from cityvitals.credentials import GATEWAY_USER, HEALTHCHECK_USER, issue, load_assignment
from cityvitals.kinds import Kind
from gateway.router import Router
from tests.integration.conftest import _wait_for_port, mosquitto_binary, require
from tests.integration.test_edge_tls import make_certificates
from tests.ports import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CITY = generate_city(nodes=10, districts=2, seed=5)
A, B = CITY.by_kind(Kind.WATER_LEVEL)[:2]
WAIT = 10.0


@dataclass
class Broker:
    port: int
    auth: Path
    certs: Path
    proc: subprocess.Popen[bytes]

    def password(self, user: str) -> str:
        return (self.auth / "passwords" / f"{user}.txt").read_text().strip()

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.certs / "ca.crt"))

    def reload(self) -> None:
        """What `docker compose kill -s HUP mosquitto` does: read passwords and ACL again."""
        self.proc.send_signal(signal.SIGHUP)


def production_config(tmp: Path, port: int) -> Path:
    """deploy/mosquitto/mosquitto.conf with its container paths and port moved here."""
    text = (REPO / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    assert "listener 8883\n" in text
    text = text.replace("listener 8883\n", f"listener {port} 127.0.0.1\n")
    moved = {"config/auth": tmp / "auth", "certs": tmp / "certs", "data": tmp / "data"}
    for inside, here in moved.items():
        text = text.replace(f"/mosquitto/{inside}/", f"{here}/")
    directives = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not [d for d in directives if "/mosquitto/" in d], "a container path not moved here"
    if os.geteuid() == 0:
        text += f"user {getpass.getuser()}\n"  # stay who started it (the files are ours)
    path = tmp / "mosquitto.conf"
    path.write_text(text)
    return path


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    binary = mosquitto_binary()
    require(binary, "mosquitto is not installed")
    require(shutil.which("openssl"), "openssl is not installed")
    assert binary is not None
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certificates(certs)
    # The names the production config expects.
    (certs / "ca.pem").rename(certs / "ca.crt")
    (certs / "server.pem").rename(certs / "server.crt")
    (tmp_path / "data").mkdir()
    issue(CITY, tmp_path / "auth")
    port = free_port()
    conf = production_config(tmp_path, port)
    log = (tmp_path / "mosquitto.log").open("wb")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
    try:
        _wait_for_port(port, proc)
        yield Broker(port, tmp_path / "auth", certs, proc)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@asynccontextmanager
async def connect(
    broker: Broker, user: str, password: str | None = None
) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        identifier=f"{user}-{os.urandom(3).hex()}",
        username=user,
        password=broker.password(user) if password is None else password,
        tls_context=broker.tls(),
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:
        yield client


def topic(device, channel: str = "telemetry") -> str:
    return f"city/{device.kind.value}/{device.node}/{channel}"


async def next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(WAIT):
        return await anext(aiter(client.messages))


async def test_a_node_publishes_only_under_its_own_id(broker: Broker) -> None:
    """A's own telemetry reaches the gateway (through its shared subscription); A writing
    as B does not: the message A sends after it arrives, and nothing before it."""
    async with connect(broker, GATEWAY_USER) as gateway, connect(broker, A.node) as a:
        await gateway.subscribe("$share/cityvitals/city/+/+/+", qos=1)
        await a.publish(topic(B), b"forged", qos=1)
        await a.publish(topic(A, "status"), b"forged status of B? no: A's own", qos=1)
        await a.publish(f"city/agent/{B.node}/status", b"B's agent", qos=1)
        await a.publish(topic(A), b"mine", qos=1)
        first = await next_message(gateway)
        second = await next_message(gateway)
    assert (str(first.topic), first.payload) == (
        topic(A, "status"),
        b"forged status of B? no: A's own",
    )
    assert (str(second.topic), second.payload) == (topic(A), b"mine")


async def test_an_agent_status_speaks_only_for_its_own_nodes(broker: Broker) -> None:
    """The ACL lets A publish its own status; in it A claims B's node offline too. The
    gateway's router, given the agents file issued with the credentials, takes the presence
    of A's node and dead-letters the claim on B's as not_owner."""
    status = {
        "v": 1,
        "agent": A.node,
        "state": "offline",
        "ts_ms": 1_764_028_800_000,
        "nodes": [{"node": n.node, "kind": n.kind.value} for n in (A, B)],
    }
    async with connect(broker, GATEWAY_USER) as gateway, connect(broker, A.node) as a:
        await gateway.subscribe("$share/cityvitals/city/+/+/+", qos=1)
        await a.publish(f"city/agent/{A.node}/status", json.dumps(status).encode(), qos=1)
        got = await next_message(gateway)
    router = Router(CITY, clock=SystemClock(), owners=load_assignment(broker.auth / "agents.csv"))
    route = router.route(str(got.topic), bytes(got.payload))  # type: ignore[arg-type]
    assert [decode_presence(r.value).node for r in route.presence] == [A.node]
    assert route.refused is not None
    assert route.refused.reason is Reason.NOT_OWNER
    assert f"{B.node} ({B.node}'s)" in route.refused.detail


async def test_a_node_reads_nothing_not_even_its_own(broker: Broker) -> None:
    """A subscribes to everything and to B's data: B's reading reaches the gateway but
    not A. (Mosquitto grants every SUBSCRIBE and checks each message at delivery, so the
    proof is what arrives: A's own publish is acknowledged after the broker routed B's,
    on the same connection, so B's would be in A's queue by then.)"""
    async with (
        connect(broker, GATEWAY_USER) as gateway,
        connect(broker, A.node) as a,
        connect(broker, B.node) as b,
    ):
        await gateway.subscribe("city/#", qos=1)
        await a.subscribe("city/#", qos=1)
        await a.subscribe(f"city/{B.kind.value}/{B.node}/#", qos=1)
        await b.publish(topic(B), b"B's reading", qos=1)
        got = await next_message(gateway)
        assert got.payload == b"B's reading"
        await a.publish(topic(A), b"after", qos=1)
        assert len(a.messages) == 0


async def test_a_wrong_password_an_unknown_user_and_plain_tcp_are_refused(broker: Broker) -> None:
    for user, password in ((A.node, "not-the-password"), ("wl-9999", "anything"), (A.node, "")):
        with pytest.raises(aiomqtt.MqttError):
            async with connect(broker, user, password):
                pass
    with pytest.raises(aiomqtt.MqttError):  # TLS only: a plain connection gets nowhere
        async with aiomqtt.Client(
            "127.0.0.1", broker.port, username=A.node, password=broker.password(A.node),
            timeout=3,
        ):  # fmt: skip
            pass


async def test_the_healthcheck_reads_the_uptime_and_nothing_else(broker: Broker) -> None:
    """The compose healthcheck's user gets the retained uptime at once, and no city data."""
    async with connect(broker, HEALTHCHECK_USER) as health, connect(broker, A.node) as a:
        await health.subscribe("$SYS/broker/uptime")
        await health.subscribe("city/#")
        uptime = await next_message(health)  # retained: at once
        assert str(uptime.topic) == "$SYS/broker/uptime"
        await a.publish(topic(A), b"not for the probe", qos=1)  # routed once acknowledged
        await health.publish("city/probe", b"x", qos=1)  # refused, acknowledged after it
        assert len(health.messages) == 0


async def test_rotating_a_password_takes_effect_on_reload(broker: Broker, tmp_path: Path) -> None:
    """`cityvitals city credentials --rotate A`, then SIGHUP: A's old password is refused,
    the new one works, everyone else's still does."""
    old = broker.password(A.node)
    issue(CITY, broker.auth, rotate=[A.node])
    broker.reload()
    new = broker.password(A.node)
    assert new != old

    async def refused_old() -> bool:
        try:
            async with connect(broker, A.node, old):
                return False
        except aiomqtt.MqttError:
            return True

    refused = False
    for _ in range(50):  # the broker takes the signal between two of its loop turns
        refused = await refused_old()
        if refused:
            break
        await asyncio.sleep(0.1)
    assert refused
    async with connect(broker, A.node, new), connect(broker, B.node):
        pass
