"""Real servers on loopback, started by the tests themselves.

Mosquitto comes from the Debian package (`./dev test` installs it); each test
gets its own instance on a free port, so tests never share broker state.
Kafka (from Maven Central) and InfluxDB (influxd built from its Go module)
come through their scripts in deploy/, one server per test module.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.integration.distributed_support import HookReceiver
from tests.ports import free_port

pytestmark = pytest.mark.integration


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Block until the server accepts connections (or died, or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)  # polling a port that is not open yet; bounded by the deadline
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if Path(p).exists()), None
    )


class MosquittoServer:
    """One Mosquitto on a fixed loopback port that a test can stop and start again.

    Persistence is on (in the test's own directory) so that sessions and
    queued QoS 1 messages survive a restart, as on a production broker.
    """

    def __init__(
        self, binary: str, workdir: Path, *, security: str = "allow_anonymous true\n"
    ) -> None:
        self.binary = binary
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n" + security + "persistence true\n"
            f"persistence_location {workdir}/\n"
            "max_queued_messages 100000\n"
            f"log_dest file {workdir / 'mosquitto.log'}\n"
            # Started as root, Mosquitto switches to the 'mosquitto' user, which
            # cannot write the test's private directory: persistence and the log
            # would fail silently. Stay whoever started it.
             + (f"user {getpass.getuser()}\n" if os.geteuid() == 0 else "")
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - our own binary path and config
            [self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        _wait_for_port(self.port, self.proc)

    def stop(self) -> None:
        """SIGTERM and wait: Mosquitto saves its persistence file on the way out."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None


def require(found: object, what: str) -> None:
    """Skip when a server or tool is missing; on CI (where `./dev test` installs
    them) fail instead, so a broken install cannot pass as skipped tests."""
    if found:
        return
    message = f"{what} (./dev test installs it from Debian's packages)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def mosquitto_server(tmp_path: Path) -> Iterator[MosquittoServer]:
    """A private, restartable Mosquitto on a free loopback port."""
    binary = mosquitto_binary()
    require(binary, "mosquitto is not installed")
    assert binary is not None
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    server = MosquittoServer(binary, workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mosquitto(mosquitto_server: MosquittoServer) -> str:
    """The mqtt:// URL of a private Mosquitto."""
    return mosquitto_server.url


REPO = Path(__file__).resolve().parents[2]
KAFKA_SCRIPT = REPO / "deploy" / "kafka" / "kafka"


class KafkaServer:
    """A single-node Kafka (KRaft) on a free loopback port, through
    deploy/kafka/kafka: fetched from Maven Central once, started and stopped
    here. Its data survives a stop, as a production broker's does."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"

    def _script(self, *args: str) -> None:
        done = subprocess.run(  # noqa: S603 - our own script, fixed arguments
            [str(KAFKA_SCRIPT), *args], capture_output=True, text=True, check=False, timeout=120
        )
        if done.returncode != 0:
            log = self.workdir / "kafka.log"
            tail = log.read_text()[-3000:] if log.exists() else ""
            raise RuntimeError(f"kafka {args[0]} failed: {done.stderr}\n{tail}")

    def start(self) -> None:
        self._script("start", str(self.workdir), str(self.port))

    def stop(self) -> None:
        self._script("stop", str(self.workdir))


@pytest.fixture(scope="module")
def kafka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaServer]:
    """One Kafka per test module (a JVM takes seconds to start); tests use their own topics."""
    require(shutil.which("java") and shutil.which("mvn"), "java and mvn are needed for Kafka")
    server = KafkaServer(tmp_path_factory.mktemp("kafka"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


INFLUX_SCRIPT = REPO / "deploy" / "influxdb" / "influxdb"


class InfluxServer:
    """InfluxDB 2 on a free loopback port, through deploy/influxdb/influxdb: influxd built
    from its Go module once (cached), started and stopped here. The script's first start
    sets up org and bucket "cityvitals" and an admin token; the data survives a stop."""

    org = "cityvitals"
    bucket = "cityvitals"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = ""

    def _script(self, *args: str) -> None:
        done = subprocess.run(  # noqa: S603 - our own script, fixed arguments
            [str(INFLUX_SCRIPT), *args], capture_output=True, text=True, check=False, timeout=120
        )
        if done.returncode != 0:
            log = self.workdir / "influxd.log"
            tail = log.read_text()[-3000:] if log.exists() else ""
            raise RuntimeError(f"influxdb {args[0]} failed: {done.stderr}\n{tail}")

    def start(self) -> None:
        self._script("start", str(self.workdir), str(self.port))
        self.token = (self.workdir / "token").read_text().strip()

    def stop(self) -> None:
        self._script("stop", str(self.workdir))

    async def create_bucket(self, name: str) -> str:
        """A new bucket (infinite retention) in the org, for one test; returns its name."""
        import aiohttp

        headers = {"Authorization": f"Token {self.token}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.get(f"{self.url}/api/v2/orgs", params={"org": self.org}) as answer:
                answer.raise_for_status()
                org_id = (await answer.json())["orgs"][0]["id"]
            body = {"orgID": org_id, "name": name, "retentionRules": []}
            async with http.post(f"{self.url}/api/v2/buckets", json=body) as answer:
                if answer.status != 201:
                    raise RuntimeError(f"creating bucket {name}: {await answer.text()}")
        return name


@pytest.fixture(scope="module")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    """One InfluxDB per test module (it takes a second or two to start); tests use their
    own buckets. A missing influxd fails (no skip): `./dev test` builds it."""
    built = subprocess.run(  # noqa: S603 - our own script, fixed arguments
        [str(INFLUX_SCRIPT), "bin"], capture_output=True, text=True, check=False, timeout=30
    )
    if built.returncode != 0:
        pytest.fail(
            "influxd is not built: run `deploy/influxdb/influxdb fetch` (./dev test and"
            " ./dev setup do it; it builds InfluxDB from its Go module, 12-14 min once)"
            f"\n{built.stderr.strip()}"
        )
    server = InfluxServer(tmp_path_factory.mktemp("influxdb"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def hook() -> AsyncIterator[HookReceiver]:
    """A real webhook endpoint on a free loopback port, recording every request."""
    from aiohttp import web

    receiver = HookReceiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    receiver.url = f"http://127.0.0.1:{port}/hook"
    yield receiver
    await runner.cleanup()
