"""Helpers for the distributed-mode tests: a config file, role processes, a publisher,
the shared store read back, a webhook receiver and a Kafka topic reader."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
from aiohttp import web
from aiokafka import AIOKafkaConsumer

from cityvitals.citygen import generate_city
from cityvitals.config import BrokerSettings
from cityvitals.contract import decode_reading, decode_warning
from cityvitals.kinds import Kind
from cityvitals.registry import Registry
from cityvitals.topics import telemetry_topic
from stream.areas import AreaEngine
from stream.engine import NodeState, RuleEngine
from stream.rules import AreaState
from tests.waiting import wait_until

TS = 1_764_028_800_000
CITY = generate_city(nodes=60, districts=3, seed=23)


def write_config(
    tmp: Path,
    *,
    mqtt: str,
    bootstrap: str,
    partitions: int = 4,
    webhook: str | None = None,
    silent_after_s: float = 900.0,
    sweep_every_s: float = 10.0,
    gateway: str = "",
    extra: str = "",
) -> Path:
    """A cityvitals.toml for one test: its own topics (unique prefix) and data dir."""
    tmp.mkdir(parents=True, exist_ok=True)
    CITY.dump(tmp / "city.csv")
    prefix = f"t{uuid.uuid4().hex[:10]}"
    hook = f'[[alerts.webhook]]\nname = "ops"\nurl = "{webhook}"\n' if webhook else ""
    path = tmp / "cityvitals.toml"
    path.write_text(
        f'registry = "city.csv"\ndata_dir = "{tmp / "data"}"\n'
        f'[mqtt]\nurl = "{mqtt}"\n'
        f'[kafka]\nbootstrap = ["{bootstrap}"]\ntopic_prefix = "{prefix}"\n'
        f"partitions = {partitions}\n"
        f'[gateway]\nclient_id = "gw-{prefix}"\nshare_group = "{prefix}"\n{gateway}'
        f'[stream]\napp_id = "{prefix}-stream"\nbatch_size = 200\nbatch_within_s = 0.05\n'
        f"session_timeout_s = 6.0\n"
        f"[presence]\nsilent_after_s = {silent_after_s}\nsweep_every_s = {sweep_every_s}\n"
        f"[alerts]\nconsole = false\n{hook}{extra}"
    )
    return path


class RoleProcess:
    """`cityvitals run --role ROLE` as a child process, its log in a file.

    `supervised`: restarted when it exits with code 70 (EX_SOFTWARE, "exiting for a
    restart"), as systemd's `Restart=` does in production (deploy/systemd); the
    check happens whenever a test asks whether it is `running`.
    """

    def __init__(self, config: Path, *roles: str, name: str = "", supervised: bool = False) -> None:
        self.config = config
        self.roles = roles
        self.log = config.parent / f"{name or '-'.join(roles)}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.supervised = supervised
        self.restarts = 0

    def start(self) -> RoleProcess:
        args = [sys.executable, "-m", "cityvitals.cli", "run", "--config", str(self.config)]
        for role in self.roles:
            args += ["--role", role]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: S603 - our own CLI
                args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"}
            )
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no flush, no commit, nothing graceful."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait: the graceful stop an init system does."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"{self.roles} did not stop within {timeout} s") from None
        return self.proc.returncode

    def dump_stacks(self, timeout: float = 5.0) -> None:
        """SIGUSR1: the process logs where each of its tasks and threads waits
        (for a failing test to show why a process is stuck)."""
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while "stacks follow" not in self.text() and time.monotonic() < deadline:
            time.sleep(0.05)

    def alive(self) -> bool:
        if self.supervised and self.proc is not None and self.proc.poll() == 70:
            self.restarts += 1
            self.start()
        return self.proc is not None and self.proc.poll() is None


async def subscribed(gateway: RoleProcess) -> None:
    """Wait for the gateway's shared subscription: until it exists, the broker has no
    one to queue the city's messages for (afterwards its persistent session does)."""
    await wait_until(
        lambda: running(gateway) and "gateway subscribed" in gateway.text(),
        "the gateway's subscription",
        deadline_s=60,
    )


def last_assignment(worker: RoleProcess) -> list[int]:
    """The partitions in the worker's latest "assigned partitions" log line."""
    lines = [ln for ln in worker.text().splitlines() if "assigned partitions" in ln]
    if not lines:
        return []
    inside = lines[-1].split("assigned partitions [", 1)[1].split("]", 1)[0]
    return [int(p) for p in inside.split(",") if p.strip()]


def settled(workers: list[RoleProcess], *, partitions: int) -> bool:
    """Every worker holds partitions and together they hold each exactly once."""
    shares = [last_assignment(w) for w in workers]
    return all(shares) and sorted(p for s in shares for p in s) == list(range(partitions))


def running(*procs: RoleProcess) -> bool:
    """True while every process runs; a dead one fails the test with its log."""
    for p in procs:
        if not p.alive():
            raise AssertionError(f"{p.log.name} exited:\n{p.text()[-4000:]}")
    return True


def water_nodes(registry: Registry = CITY) -> list[str]:
    return [d.node for d in registry.by_kind(Kind.WATER_LEVEL)]


def reading(node: str, seq: int, depth: float, kind: str = "water_level") -> bytes:
    return json.dumps(
        {
            "v": 1,
            "node": node,
            "kind": kind,
            "seq": seq,
            "ts_ms": TS + seq * 60_000,
            "metrics": {"depth_cm": depth},
        }
    ).encode()


def storm(seq: int, phase: int) -> float:
    """A depth that rises through every level and falls again, per node phase."""
    t = (seq + phase) % 60
    return round(2.0 + 58.0 * (t / 30 if t < 30 else (60 - t) / 30), 1)


async def publish(url: str, messages: list[tuple[str, bytes]], *, client_id: str = "") -> None:
    """Publish with QoS 1, waiting for each PUBACK (a publisher that loses nothing)."""
    broker = BrokerSettings.from_url(url)
    async with aiomqtt.Client(
        broker.host, broker.port, identifier=client_id or f"pub-{uuid.uuid4().hex[:8]}"
    ) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)


def storm_messages(nodes: list[str], per_node: int) -> list[tuple[str, bytes]]:
    """Interleaved readings of every node, seq 0..per_node-1."""
    return [
        (telemetry_topic("water_level", node), reading(node, seq, storm(seq, i * 7)))
        for seq in range(per_node)
        for i, node in enumerate(nodes)
    ]


def expected_areas(nodes: list[str], per_node: int) -> dict[tuple[str, str], tuple[int, int]]:
    """(rule, area) -> (peak, last level) of the built-in area rules over `storm_messages`,
    computed by the pure engines in reading-time order: what the pipeline must store."""
    engine = RuleEngine()
    areas = AreaEngine(engine.area_rules, registry=CITY)
    states = {node: NodeState() for node in nodes}
    area_states: dict[str, AreaState] = {}
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for _, body in storm_messages(nodes, per_node):
        r = decode_reading(body)
        for w in engine.evaluate(r, CITY.placement(r.node), states[r.node]):
            for key, _ in areas.routes(w):
                for a in areas.evaluate(key, w, area_states.setdefault(key, AreaState())):
                    k = (a.rule, a.subject)
                    out[k] = (max(out.get(k, (0, 0))[0], int(a.level)), int(a.level))
    return out


class Store:
    """The stream workers' SQLite sink, read from the test's side."""

    def __init__(self, config_dir: Path) -> None:
        self.path = config_dir / "data" / "cityvitals.sqlite3"

    def _rows(self, sql: str) -> list[tuple[object, ...]]:
        if not self.path.exists():
            return []
        db = sqlite3.connect(self.path, timeout=30)
        try:
            return db.execute(sql).fetchall()
        except sqlite3.OperationalError:
            return []  # the schema is not there yet
        finally:
            db.close()

    def reading_keys(self) -> list[tuple[str, int]]:
        return [(str(n), int(s)) for n, s in self._rows("SELECT node, seq FROM readings")]

    def count(self) -> int:
        rows = self._rows("SELECT count(*) FROM readings")
        return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]

    def rules(self) -> list[tuple[str, str, int]]:
        """(rule, node, level) of every stored warning, in order."""
        return [
            (str(r), str(n), int(lv))  # type: ignore[call-overload]
            for r, n, lv in self._rows("SELECT rule, node, level FROM warnings ORDER BY rowid")
        ]

    def warnings(self) -> set[tuple[str, int, int, int]]:
        """Distinct (fingerprint, level, ts_ms, seq) of every warning, node and area: a
        re-emitted warning is the same warning."""
        return {
            (str(f), int(lv), int(t), int(q))  # type: ignore[call-overload]
            for f, lv, t, q in self._rows("SELECT fingerprint, level, ts_ms, seq FROM warnings")
        }

    def node_warnings(self) -> set[tuple[str, int, int]]:
        """Distinct (fingerprint, level, ts_ms) of node warnings."""
        return {
            (str(f), int(lv), int(t))  # type: ignore[call-overload]
            for f, lv, t in self._rows(
                "SELECT fingerprint, level, ts_ms FROM warnings WHERE node != ''"
            )
        }

    def areas(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(rule, area) -> (peak level, last level) of the area warnings stored."""
        out: dict[tuple[str, str], tuple[int, int]] = {}
        for body in self._rows("SELECT body FROM warnings WHERE node = '' ORDER BY rowid"):
            w = decode_warning(bytes(body[0]))  # type: ignore[arg-type]
            key = (w.rule, w.subject)
            peak = max(out.get(key, (0, 0))[0], int(w.level))
            out[key] = (peak, int(w.level))
        return out


@dataclass
class HookReceiver:
    """A real HTTP webhook endpoint on loopback, recording every request."""

    url: str = ""
    bodies: list[dict[str, object]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(json.loads(await request.read()))
        self.keys.append(request.headers.get("Idempotency-Key", ""))
        return web.Response(text="ok")

    def repeated_keys(self) -> dict[str, int]:
        return {k: n for k, n in Counter(self.keys).items() if n > 1}


async def read_topic(bootstrap: str, topic: str, *, expect: int, deadline_s: float = 60) -> list:
    """Every record of `topic` from the start, once `expect` are there (or the deadline)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list = []
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        while len(records) < expect and loop.time() < end:
            batches = await consumer.getmany(timeout_ms=500)
            for part in batches.values():
                records += part
    finally:
        await consumer.stop()
    return records
