"""Distributed-mode benchmark: gateway throughput into Kafka, and publish-to-warning latency.

Against a real Mosquitto (the Debian package) and a real single-node Kafka
(deploy/kafka/kafka), both started here on free loopback ports with the
integration tests' own server classes, and `cityvitals run --role ...`
processes exactly as an operator runs them:

0. Receive Maximum probe: an MQTT 5 client that never acknowledges, with
   Receive Maximum R, under Mosquitto's default max_inflight_messages (20):
   how many QoS 1 messages does the broker hand it before waiting for PUBACKs?
   (And an MQTT 3.1.1 client, for comparison.)
1. publisher ceiling: N readings published with QoS 1 from several publisher
   processes (a minimal MQTT client writing pre-encoded packets, up to
   --inflight unacknowledged each) with nobody subscribed: the rate the load
   generator can offer.
2. gateway throughput: the same N readings (after an uncounted warm-up) with
   1 gateway, 2 gateways on one shared subscription, and 1 gateway with
   max_unacked = 20; readings/s from the first publish until the readings
   topic holds N records (summed end offsets), split at the publishers' last
   PUBACK into "while publishing" and "draining the broker's backlog", with
   the CPU each process used (/proc; "other" is the rest of the machine:
   kernel network work and anything else running).
3. latency: one gateway and one stream worker (stream.batch_within_s =
   --batch-within); readings of water-level nodes whose depth rises and
   falls through every level, paced at a light and a moderate rate, then a
   burst (--burst-nodes nodes crossing red at the same moment); latency from
   the publish of the reading a warning names (node, seq) to the warning
   read from `<prefix>.warnings`. Before measuring, one reading per node is
   published until the worker has stored them all.

Prints its numbers and the machine; results go in docs/benchmarks.md.
Run: ./dev bench distributed [--readings 50000] [--rate 300] [--batch-within 0.2] [--keep]
(--help for the rest; the default run takes about two minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import re
import select
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# `python bench/distributed.py` puts bench/ on sys.path, not the repo root; the
# Mosquitto and Kafka server classes live with the integration tests.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from cityvitals.citygen import generate_city  # noqa: E402
from cityvitals.distributed.roles import prepare_kafka  # noqa: E402
from cityvitals.kinds import Kind  # noqa: E402
from cityvitals.registry import Registry  # noqa: E402
from cityvitals.settings import Settings, load_settings  # noqa: E402
from cityvitals.topics import telemetry_topic  # noqa: E402
from tests.integration.conftest import KafkaServer, MosquittoServer, mosquitto_binary  # noqa: E402

TICK_S = os.sysconf("SC_CLK_TCK")
MACHINE = "(machine)"
STORM_PERIOD = 60  # readings per rise-and-fall of one node's depth


# -- the city and its readings ---------------------------------------------------------


def city(nodes: int) -> Registry:
    return generate_city(nodes=nodes, districts=4, seed=11)


def water_nodes(registry: Registry) -> list[str]:
    return [d.node for d in registry.by_kind(Kind.WATER_LEVEL)]


def storm_depth(seq: int, phase: int) -> float:
    """A depth that rises through blue (10), yellow (20), orange (30), red (50) and falls."""
    t = (seq + phase) % STORM_PERIOD
    half = STORM_PERIOD / 2
    return round(2.0 + 58.0 * (t / half if t < half else (STORM_PERIOD - t) / half), 1)


def reading(node: str, seq: int, depth: float, ts_ms: int) -> bytes:
    return json.dumps(
        {
            "v": 1,
            "node": node,
            "kind": "water_level",
            "seq": seq,
            "ts_ms": ts_ms,
            "metrics": {"depth_cm": depth},
        },
        separators=(",", ":"),
    ).encode()


def messages_for(nodes: list[str], count: int) -> list[tuple[str, bytes]]:
    """`count` readings dealt round-robin over `nodes`, each node's seq rising from 0."""
    base = int(time.time() * 1000)
    out = []
    for i in range(count):
        node = nodes[i % len(nodes)]
        seq = i // len(nodes)
        depth = storm_depth(seq, (i % len(nodes)) * 7)
        out.append((telemetry_topic("water_level", node), reading(node, seq, depth, base + seq)))
    return out


# -- processes and their CPU ------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process from /proc (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After "pid (comm)": state is fields[0]; utime and stime are stat fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / TICK_S


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICK_S  # less idle and iowait


class CpuMeter:
    """CPU seconds of named processes (and of the whole machine), read at points in time."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = {**pids, "bench": os.getpid()}

    def read(self) -> dict[str, float]:
        out = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        out[MACHINE] = machine_busy_seconds()
        return out

    @staticmethod
    def shares(
        before: dict[str, float], after: dict[str, float], seconds: float
    ) -> dict[str, float]:
        """Share of one core each process used between two readings; `other`: everything
        else on the machine (the kernel, other users), which is not this benchmark."""
        if seconds <= 0:
            return {}
        used = {name: (after[name] - before[name]) / seconds for name in before}
        machine = used.pop(MACHINE)
        used["other"] = max(0.0, machine - sum(used.values()))
        return used


@dataclass
class Role:
    """`cityvitals run --role ...` as a child process, its log in a file."""

    config: Path
    roles: tuple[str, ...]
    name: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.config.parent / f"{self.name}.log"

    def start(self) -> Role:
        args = [sys.executable, "-m", "cityvitals.cli", "run", "--config", str(self.config)]
        for role in self.roles:
            args += ["--role", role]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(  # noqa: S603 - our own CLI
                args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO
            )
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def wait_for(self, needle: str, deadline_s: float = 90) -> None:
        end = time.monotonic() + deadline_s
        while needle not in self.text():
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.text()[-3000:]}")
            if time.monotonic() > end:
                raise TimeoutError(f"{self.name}: no {needle!r} after {deadline_s} s")
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def write_config(
    workdir: Path,
    name: str,
    *,
    mqtt_url: str,
    bootstrap: str,
    prefix: str,
    partitions: int,
    max_unacked: int = 1000,
    batch_within_s: float = 0.2,
) -> Path:
    """One cityvitals.toml per process: only gateway.client_id differs between gateways."""
    path = workdir / f"{name}.toml"
    path.write_text(
        f'registry = "city.csv"\ndata_dir = "{workdir / "data"}"\n'
        f'[mqtt]\nurl = "{mqtt_url}"\n'
        f'[kafka]\nbootstrap = ["{bootstrap}"]\ntopic_prefix = "{prefix}"\n'
        f"partitions = {partitions}\n"
        f'[gateway]\nclient_id = "{prefix}-{name}"\nshare_group = "{prefix}"\n'
        f"max_unacked = {max_unacked}\n"
        f'[stream]\napp_id = "{prefix}-stream"\nbatch_within_s = {batch_within_s}\n'
        "[alerts]\nconsole = false\n"
    )
    return path


def prepare_dir(workdir: Path, registry_csv: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(registry_csv, workdir / "city.csv")


def start_mosquitto(workdir: Path) -> MosquittoServer:
    binary = mosquitto_binary()
    if binary is None:
        sys.exit("mosquitto is not installed (./dev setup installs it)")
    workdir.mkdir(parents=True, exist_ok=True)
    server = MosquittoServer(binary, workdir)
    # Room for the whole run in a session's queue (the test config keeps 100,000).
    server.conf.write_text(server.conf.read_text() + "max_queued_messages 0\n")
    server.start()
    return server


# -- publishers (separate processes, so they do not share a core with the measuring) --
#
# A Python MQTT client (paho) spends ~100 us of CPU per QoS 1 publish; on a
# 2-core machine that is CPU taken from the gateway being measured. Sensors
# are other machines, so the load generator here is a minimal MQTT 3.1.1
# client instead: PUBLISH packets encoded before the clock starts, written in
# bulk, PUBACKs counted from the socket, at most `inflight` unacknowledged.


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _remaining_length(len(body)) + body


def _string(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def mqtt_connect(client_id: str, keepalive: int = 0) -> bytes:
    """CONNECT, MQTT 3.1.1, clean session."""
    body = _string("MQTT") + bytes([4, 0x02]) + keepalive.to_bytes(2, "big") + _string(client_id)
    return _packet(0x10, body)


def mqtt_publish_qos1(topic: str, payload: bytes, packet_id: int) -> bytes:
    return _packet(0x32, _string(topic) + packet_id.to_bytes(2, "big") + payload)


class PubackCounter:
    """Parses what the broker sends a publisher; counts PUBACKs."""

    def __init__(self) -> None:
        self.buffer = b""
        self.pubacks = 0
        self.connacked = False

    def feed(self, data: bytes) -> None:
        buf = self.buffer + data
        i = 0
        while len(buf) - i >= 2:
            kind = buf[i]
            length, shift, j = 0, 0, i + 1
            while j < len(buf):
                length |= (buf[j] & 0x7F) << shift
                shift += 7
                j += 1
                if not buf[j - 1] & 0x80:
                    break
            else:
                break  # the length is not all here yet
            if len(buf) - j < length:
                break
            if kind >> 4 == 4:
                self.pubacks += 1
            elif kind >> 4 == 2:
                if buf[j + 1] != 0:
                    raise RuntimeError(f"broker refused the publisher: CONNACK {buf[j + 1]}")
                self.connacked = True
            i = j + length
        self.buffer = buf[i:]


def publish_worker(
    port: int,
    messages: list[tuple[str, bytes]],
    *,
    inflight: int,
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    """Publish `messages` with QoS 1, at most `inflight` unacknowledged; report the times."""
    total = len(messages)
    packets = [
        mqtt_publish_qos1(topic, payload, i % 65535 + 1)
        for i, (topic, payload) in enumerate(messages)
    ]
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    acks = PubackCounter()
    sock.sendall(mqtt_connect(f"bench-pub-{uuid.uuid4().hex[:8]}"))
    while not acks.connacked:
        acks.feed(sock.recv(4096))
    ready.release()
    go.wait()
    c0 = sum(os.times()[:2])
    t0 = time.time()
    sent = 0
    while acks.pubacks < total:
        room = min(inflight - (sent - acks.pubacks), total - sent, 500)
        if room > 0:
            sock.sendall(b"".join(packets[sent : sent + room]))
            sent += room
        # Wait for acknowledgements only when the window is full or everything is sent.
        full = sent == total or sent - acks.pubacks >= inflight
        readable, _, _ = select.select([sock], [], [], None if full else 0)
        if readable:
            data = sock.recv(1 << 16)
            if not data:
                raise RuntimeError("the broker closed the publisher's connection")
            acks.feed(data)
    t_acked = time.time()
    cpu = sum(os.times()[:2]) - c0
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()
    results.put((t0, t_acked, t_acked, cpu, acks.pubacks))


@dataclass
class Published:
    first_s: float  # wall clock of the first publish
    last_ack_s: float  # wall clock of the last PUBACK
    cpu_s: float  # CPU of all publishers
    acked: int

    def rate(self, n: int) -> float:
        return n / (self.last_ack_s - self.first_s)


class Publishers:
    """`count` publisher processes, connected and waiting for `go`."""

    def __init__(
        self, port: int, messages: list[tuple[str, bytes]], count: int, inflight: int
    ) -> None:
        ctx = mp.get_context("spawn")
        self._ready = ctx.Semaphore(0)
        self._go = ctx.Event()
        self._results = ctx.Queue()
        # Each node's readings go through one connection, in order.
        nodes = sorted({t for t, _ in messages})
        shard = {t: i % count for i, t in enumerate(nodes)}
        parts: list[list[tuple[str, bytes]]] = [[] for _ in range(count)]
        for m in messages:
            parts[shard[m[0]]].append(m)
        self.procs = [
            ctx.Process(
                target=publish_worker,
                args=(port, part),
                kwargs={
                    "inflight": inflight,
                    "ready": self._ready,
                    "go": self._go,
                    "results": self._results,
                },
                daemon=True,
            )
            for part in parts
        ]
        for p in self.procs:
            p.start()
        for _ in self.procs:
            if not self._ready.acquire(timeout=60):
                raise RuntimeError("a publisher did not connect")

    def go(self) -> float:
        now = time.time()
        self._go.set()
        return now

    def result(self, timeout: float = 600) -> Published:
        got = [self._results.get(timeout=timeout) for _ in self.procs]
        for p in self.procs:
            p.join(10)
        return Published(
            first_s=min(r[0] for r in got),
            last_ack_s=max(r[2] for r in got),
            cpu_s=sum(r[3] for r in got),
            acked=sum(r[4] for r in got),
        )


# -- Kafka -----------------------------------------------------------------------------


class EndOffsets:
    """Records in a topic, from its end offsets (no consuming)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]

    async def __aenter__(self) -> EndOffsets:
        await self.consumer.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.consumer.stop()

    async def count(self) -> int:
        offsets = await self.consumer.end_offsets(self.tps)
        return int(sum(offsets.values()))


def progress(text: str) -> None:
    print(f"\r  {text:<76}", end="", flush=True)


def done_progress() -> None:
    print("\r" + " " * 80 + "\r", end="", flush=True)


# -- 0. Receive Maximum probe ----------------------------------------------------------


def probe_receive_maximum(workdir: Path, receive_maximum: int | None, offered: int = 2000) -> int:
    """Messages Mosquitto (default config) sends a client that never PUBACKs.

    `receive_maximum` None: an MQTT 3.1.1 client (no Receive Maximum to ask for).
    """
    server = start_mosquitto(workdir)
    try:
        got = [0]
        subscribed = threading.Event()
        if receive_maximum is None:
            sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="probe-sub")
            sub.manual_ack_set(True)
            sub.connect("127.0.0.1", server.port)
        else:
            sub = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2, client_id="probe-sub", protocol=mqtt.MQTTv5
            )
            sub.manual_ack_set(True)
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.ReceiveMaximum = receive_maximum
            sub.connect("127.0.0.1", server.port, properties=props)
        sub.on_message = lambda *_: got.__setitem__(0, got[0] + 1)
        sub.on_subscribe = lambda *_: subscribed.set()
        sub.loop_start()
        sub.subscribe("probe/#", qos=1)
        subscribed.wait(10)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="probe-pub")
        pub.max_inflight_messages_set(0)
        pub.connect("127.0.0.1", server.port)
        pub.loop_start()
        infos = [pub.publish("probe/x", b"x", qos=1) for _ in range(offered)]
        for info in infos:
            info.wait_for_publish(10)
        end = time.monotonic() + 1.0
        last = -1
        while time.monotonic() < end and got[0] != last:  # until the count stops moving
            last = got[0]
            time.sleep(0.2)
        pub.loop_stop()
        sub.loop_stop()
        return got[0]
    finally:
        server.stop()


# -- 1 and 2. throughput -----------------------------------------------------------------


@dataclass
class Phase:
    """One stretch of a throughput run: readings into Kafka and CPU shares."""

    seconds: float
    readings: int
    cpu: dict[str, float]

    @property
    def per_s(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class Throughput:
    label: str
    readings: int
    seconds: float
    publish_per_s: float
    in_kafka: int
    #: From the first publish to the last PUBACK to the publishers (sharing the CPU with them).
    publishing: Phase
    #: From then until Kafka holds every reading: the gateways drain the broker's queue.
    draining: Phase
    split: list[int] = field(default_factory=list)

    @property
    def per_s(self) -> float:
        return self.readings / self.seconds


def publisher_only(workdir: Path, messages: list[tuple[str, bytes]], args: Any) -> Published:
    server = start_mosquitto(workdir)
    try:
        pubs = Publishers(server.port, messages, args.publishers, args.inflight)
        pubs.go()
        return pubs.result()
    finally:
        server.stop()


async def fill(
    e: EndOffsets,
    n: int,
    *,
    roles: list[Role],
    pending: asyncio.Future[Published],
    meter: CpuMeter,
    label: str,
    deadline_s: float,
) -> tuple[float, int, dict[str, float]] | None:
    """Wait for `n` records in Kafka; return (time, count, CPU) when the publishers finished."""
    count = await e.count()
    deadline = time.monotonic() + deadline_s
    next_line = 0.0
    mid: tuple[float, int, dict[str, float]] | None = None
    while count < n:
        if mid is None and pending.done():
            mid = (time.time(), count, meter.read())
        if time.monotonic() > deadline:
            raise TimeoutError(f"{label}: {count:,} of {n:,} readings in Kafka")
        for r in roles:
            if r.proc is not None and r.proc.poll() is not None:
                raise RuntimeError(f"{r.name} exited:\n{r.text()[-3000:]}")
        if time.monotonic() >= next_line:
            next_line = time.monotonic() + 0.5
            progress(f"{label}: {count:,}/{n:,} readings in Kafka")
        await asyncio.sleep(0.02)
        count = await e.count()
    return mid


async def throughput(
    workdir: Path,
    kafka: KafkaServer,
    registry_csv: Path,
    messages: list[tuple[str, bytes]],
    *,
    label: str,
    gateways: int,
    max_unacked: int,
    args: Any,
) -> Throughput:
    prepare_dir(workdir, registry_csv)
    server = start_mosquitto(workdir / "mosquitto")
    prefix = f"b{uuid.uuid4().hex[:8]}"
    configs = [
        write_config(
            workdir,
            f"gw{i}",
            mqtt_url=server.url,
            bootstrap=kafka.bootstrap,
            prefix=prefix,
            partitions=args.partitions,
            max_unacked=max_unacked,
        )
        for i in range(gateways)
    ]
    settings: Settings = load_settings(configs[0])
    await prepare_kafka(settings)
    roles = [Role(c, ("gateway",), c.stem).start() for c in configs]
    try:
        for r in roles:
            await r.wait_for("gateway subscribed")
        n = len(messages)
        pubs = Publishers(server.port, messages, args.publishers, args.inflight)
        pids = {r.name: r.proc.pid for r in roles if r.proc is not None}
        pids["mosquitto"] = server.proc.pid if server.proc else 0
        pids["kafka"] = int((kafka.workdir / "kafka.pid").read_text())
        meter = CpuMeter(pids)
        async with EndOffsets(kafka.bootstrap, settings.kafka.readings_topic, args.partitions) as e:
            cpu0 = meter.read()
            pubs.go()
            pending = asyncio.get_running_loop().run_in_executor(None, pubs.result)
            mid = await fill(
                e,
                n,
                roles=roles,
                pending=pending,
                meter=meter,
                label=label,
                deadline_s=args.timeout,
            )
            full = time.time()
            cpu1 = meter.read()
            done_progress()
            published = await pending
            await asyncio.sleep(1.0)  # anything more (a duplicate) would show now
            in_kafka = await e.count()
    finally:
        for r in roles:
            r.stop()
        server.stop()
    split = []
    for r in roles:
        m = re.search(r"gateway stopped: (\d+) received", r.text())
        split.append(int(m.group(1)) if m else -1)
    if mid is None:  # the gateways kept up: Kafka had everything when the publishers did
        mid = (full, n, cpu1)
    t_mid, n_mid, cpu_mid = mid
    publishing = Phase(
        t_mid - published.first_s, n_mid, meter.shares(cpu0, cpu_mid, t_mid - published.first_s)
    )
    publishers = published.cpu_s / publishing.seconds
    publishing.cpu["other"] = max(0.0, publishing.cpu["other"] - publishers)
    publishing.cpu["publishers"] = publishers
    draining = Phase(full - t_mid, n - n_mid, meter.shares(cpu_mid, cpu1, full - t_mid))
    return Throughput(
        label=label,
        readings=n,
        seconds=full - published.first_s,
        publish_per_s=published.rate(n),
        in_kafka=in_kafka,
        publishing=publishing,
        draining=draining,
        split=split,
    )


# -- 3. latency --------------------------------------------------------------------------


@dataclass
class Latency:
    label: str
    rate: float
    readings: int
    warnings: int
    unmatched: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    min_ms: float


def load_text(x: Latency) -> str:
    if x.label == "burst":
        return f"{x.rate:g} nodes cross red at once"
    return f"{x.rate:g} readings/s"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


class WarningClock:
    """Reads the warnings topic; notes when each (node, seq) warning arrived."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
        )
        self.seen: list[tuple[str, int, float]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=200)
            now = time.monotonic()
            for records in batches.values():
                for record in records:
                    w = json.loads(record.value or b"{}")
                    self.seen.append((w["node"], int(w["seq"]), now))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.consumer.stop()


async def paced(
    client: mqtt.Client,
    nodes: list[str],
    start_seq: int,
    *,
    rate: float,
    seconds: float,
    stamps: dict[tuple[str, int], float],
) -> int:
    """Publish `rate` readings/s for `seconds`, round-robin over nodes; return the next seq."""
    total = int(rate * seconds)
    base = int(time.time() * 1000)
    t0 = time.monotonic()
    for i in range(total):
        due = t0 + i / rate
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        node = nodes[i % len(nodes)]
        seq = start_seq + i // len(nodes)
        payload = reading(node, seq, storm_depth(seq, (i % len(nodes)) * 7), base + seq)
        stamps[(node, seq)] = time.monotonic()
        client.publish(telemetry_topic("water_level", node), payload, qos=1)
        if i % max(1, int(rate)) == 0:
            progress(f"latency at {rate:g}/s: {i:,}/{total:,} published")
    done_progress()
    return start_seq + (total + len(nodes) - 1) // len(nodes)


async def burst(
    client: mqtt.Client, nodes: list[str], stamps: dict[tuple[str, int], float]
) -> None:
    """Every node crosses red at once: two readings at 55 cm (raise_after = 2), the
    second all at the same moment, so each node's second reading raises a warning."""
    base = int(time.time() * 1000)
    for node in nodes:
        client.publish(telemetry_topic("water_level", node), reading(node, 0, 55.0, base), qos=1)
    await asyncio.sleep(1.0)
    for node in nodes:
        stamps[(node, 1)] = time.monotonic()
        payload = reading(node, 1, 55.0, base + 1)
        client.publish(telemetry_topic("water_level", node), payload, qos=1)


async def collect(
    clock: WarningClock,
    before: int,
    stamps: dict[tuple[str, int], float],
    label: str,
    rate: float,
) -> Latency:
    """Wait until no warning came for 2 s; the latencies of those the stamped readings raised."""
    quiet_since, count = time.monotonic(), len(clock.seen)
    while time.monotonic() - quiet_since < 2.0:
        await asyncio.sleep(0.1)
        if len(clock.seen) != count:
            quiet_since, count = time.monotonic(), len(clock.seen)
    got = clock.seen[before:]
    ms = [(t - stamps[(n, s)]) * 1000 for n, s, t in got if (n, s) in stamps]
    return Latency(
        label=label,
        rate=rate,
        readings=len(stamps),
        warnings=len(ms),
        unmatched=len(got) - len(ms),
        p50_ms=percentile(ms, 50) if ms else float("nan"),
        p99_ms=percentile(ms, 99) if ms else float("nan"),
        max_ms=max(ms) if ms else float("nan"),
        mean_ms=statistics.fmean(ms) if ms else float("nan"),
        min_ms=min(ms) if ms else float("nan"),
    )


def stored_readings(db: Path, seq: int) -> int:
    """Readings with sequence number `seq` in the stream workers' store."""
    if not db.exists():
        return 0
    con = sqlite3.connect(db, timeout=30)
    try:
        return int(con.execute("SELECT count(*) FROM readings WHERE seq = ?", (seq,)).fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # no schema yet
    finally:
        con.close()


async def prime(
    stream: Role, client: mqtt.Client, nodes: list[str], db: Path, started: list[Role]
) -> tuple[Role, int]:
    """One low reading per node until the worker has stored them; return the worker and
    the next seq. A worker whose agent crashed on its first batch is replaced (reported):
    it stays up and acknowledges readings it never processes, so they are not re-read."""
    for attempt in range(3):
        base = int(time.time() * 1000)
        for node in nodes:
            payload = reading(node, attempt, 2.0, base)
            client.publish(telemetry_topic("water_level", node), payload, qos=1)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "Crashed" not in stream.text():
            if stored_readings(db, attempt) >= len(nodes):
                await asyncio.sleep(1.0)  # the crash comes after the batch is stored
                if "Crashed" not in stream.text():
                    return stream, attempt + 1
                break
            await asyncio.sleep(0.1)
        crash = re.search(r"Crashed reason=.*", stream.text())
        print(
            f"  ! stream worker stalled on its first batch ({crash.group(0) if crash else 'no '}"
            f"{'' if crash else 'readings stored in 30 s'}); see {stream.log}; starting another"
        )
        stream.stop()
        stream = Role(stream.config, stream.roles, f"stream-{attempt + 2}").start()
        started.append(stream)
        await stream.wait_for("running stream")
    raise RuntimeError("the stream worker never stored the priming readings")


async def latency(
    workdir: Path, kafka: KafkaServer, registry: Registry, registry_csv: Path, args: Any
) -> tuple[list[Latency], dict[str, float]]:
    prepare_dir(workdir, registry_csv)
    server = start_mosquitto(workdir / "mosquitto")
    prefix = f"b{uuid.uuid4().hex[:8]}"
    config = write_config(
        workdir,
        "latency",
        mqtt_url=server.url,
        bootstrap=kafka.bootstrap,
        prefix=prefix,
        partitions=args.partitions,
        batch_within_s=args.batch_within,
    )
    settings = load_settings(config)
    await prepare_kafka(settings)
    stream = Role(config, ("stream",), "stream").start()
    gateway = Role(config, ("gateway",), "gateway").start()
    started = [stream, gateway]
    clock = WarningClock(kafka.bootstrap, settings.kafka.warnings_topic)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-latency")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    nodes = water_nodes(registry)[: args.latency_nodes]
    results = []
    cpu: dict[str, float] = {}
    try:
        await gateway.wait_for("gateway subscribed")
        await stream.wait_for("running stream")
        await clock.start()
        client.connect("127.0.0.1", server.port)
        client.loop_start()
        db = workdir / "data" / "cityvitals.sqlite3"
        stream, seq = await prime(stream, client, nodes, db, started)
        meter = CpuMeter(
            {
                "gateway": gateway.proc.pid if gateway.proc else 0,
                "stream": stream.proc.pid if stream.proc else 0,
                "mosquitto": server.proc.pid if server.proc else 0,
                "kafka": int((kafka.workdir / "kafka.pid").read_text()),
            }
        )
        for label, rate, seconds in (
            ("light", args.light_rate, args.light_seconds),
            ("moderate", args.rate, args.seconds),
        ):
            cpu0, t0 = meter.read(), time.monotonic()
            stamps: dict[tuple[str, int], float] = {}
            before = len(clock.seen)
            seq = await paced(client, nodes, seq, rate=rate, seconds=seconds, stamps=stamps)
            cpu = meter.shares(cpu0, meter.read(), time.monotonic() - t0)  # the last load's
            results.append(await collect(clock, before, stamps, label, rate))
        if args.burst_nodes:
            others = water_nodes(registry)[args.latency_nodes :][: args.burst_nodes]
            stamps = {}
            before = len(clock.seen)
            await burst(client, others, stamps)
            results.append(await collect(clock, before, stamps, "burst", len(others)))
    finally:
        client.loop_stop()
        await clock.stop()
        for role in started:
            role.stop()
        server.stop()
    return results, cpu


# -- the report --------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def cpu_text(cpu: dict[str, float]) -> str:
    return ", ".join(f"{name} {share * 100:.0f}%" for name, share in cpu.items())


async def run(args: argparse.Namespace, workdir: Path) -> None:
    registry = city(args.nodes)
    registry_csv = workdir / "city.csv"
    registry.dump(registry_csv)

    print(f"machine: {machine()}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"mosquitto: {mosquitto_binary()}; Kafka via {KafkaServer.__module__}.KafkaServer")
    t_kafka = time.monotonic()
    kafka = KafkaServer(workdir / "kafka")
    kafka.workdir.mkdir()
    kafka.start()
    print(f"kafka: single node on {kafka.bootstrap}, up in {time.monotonic() - t_kafka:.1f} s")
    ceiling: Published | None = None
    rows: list[Throughput] = []
    lat: list[Latency] = []
    try:
        probe_section(workdir)
        if not args.skip_throughput:
            ceiling, rows = await throughput_section(args, workdir, kafka, registry, registry_csv)
        if not args.skip_latency:
            lat = await latency_section(args, workdir, kafka, registry, registry_csv)
    finally:
        kafka.stop()
    summary(args, ceiling, rows, lat)


def probe_section(workdir: Path) -> None:
    print("\nReceive Maximum probe (Mosquitto defaults: max_inflight_messages 20):")
    for rm in (None, 20, 1000):
        got = probe_receive_maximum(workdir / f"probe-{rm}", rm)
        who = "MQTT 3.1.1 client" if rm is None else f"MQTT 5, Receive Maximum {rm}"
        print(f"  {who:<32}: {got:>5} QoS 1 messages in flight unacknowledged")


async def throughput_section(
    args: argparse.Namespace,
    workdir: Path,
    kafka: KafkaServer,
    registry: Registry,
    registry_csv: Path,
) -> tuple[Published, list[Throughput]]:
    nodes = water_nodes(registry)
    messages = messages_for(nodes, args.readings)
    print(
        f"\nthroughput: {args.readings:,} readings of {len(nodes)} water-level nodes, "
        f"{args.publishers} publisher processes (QoS 1, up to {args.inflight} in flight each), "
        f"{args.partitions} partitions"
    )
    ceiling = publisher_only(workdir / "pub-only", messages, args)
    print(
        f"  publishers alone (nobody subscribed): "
        f"{ceiling.rate(args.readings):,.0f} readings/s (publisher CPU {ceiling.cpu_s:.1f} s)"
    )
    rows: list[Throughput] = []
    scenarios = [("1 gateway", 1, 1000), ("2 gateways", 2, 1000)]
    if args.small_window:
        scenarios.append((f"1 gateway, max_unacked {args.small_window}", 1, args.small_window))
    if args.warmup:
        scenarios.insert(0, ("warm-up (not counted)", 1, 1000))
    for label, gateways, window in scenarios:
        warmup = label.startswith("warm-up")
        t = await throughput(
            workdir / re.sub(r"[^a-z0-9]+", "-", label),
            kafka,
            registry_csv,
            messages_for(nodes, args.warmup) if warmup else messages,
            label=label,
            gateways=gateways,
            max_unacked=window,
            args=args,
        )
        if warmup:
            print(f"  warm-up: {t.readings:,} readings through 1 gateway (Kafka JIT; not counted)")
            continue
        rows.append(t)
        split = f"; split {' / '.join(f'{s:,}' for s in t.split)}" if gateways > 1 else ""
        print(
            f"  {label:<26}: {t.per_s:>6,.0f} readings/s overall ({t.readings:,} in "
            f"{t.seconds:.1f} s; {t.in_kafka:,} records in Kafka{split})\n"
            f"  {'':<26}  while publishing {t.publishing.per_s:,.0f}/s "
            f"({t.publishing.seconds:.1f} s, publishers done at {t.publish_per_s:,.0f}/s), "
            f"draining the broker's backlog {t.draining.per_s:,.0f}/s "
            f"({t.draining.seconds:.1f} s)\n"
            f"  {'':<26}  CPU while publishing: {cpu_text(t.publishing.cpu)}\n"
            f"  {'':<26}  CPU while draining:   {cpu_text(t.draining.cpu)}"
        )
    return ceiling, rows


async def latency_section(
    args: argparse.Namespace,
    workdir: Path,
    kafka: KafkaServer,
    registry: Registry,
    registry_csv: Path,
) -> list[Latency]:
    print(
        f"\nlatency: 1 gateway + 1 stream worker, {args.latency_nodes} water-level nodes, "
        f"stream.batch_within_s = {args.batch_within}, batch_size 500"
    )
    lat, lat_cpu = await latency(workdir / "latency", kafka, registry, registry_csv, args)
    for x in lat:
        print(
            f"  {x.label:<8} {load_text(x)}: {x.warnings} warnings "
            f"({x.readings:,} readings): p50 {x.p50_ms:.0f} ms, p99 {x.p99_ms:.0f} ms, "
            f"min {x.min_ms:.0f} ms, max {x.max_ms:.0f} ms, mean {x.mean_ms:.0f} ms"
            + (f" ({x.unmatched} unmatched)" if x.unmatched else "")
        )
    print(f"  CPU at {args.rate:g}/s (share of one core): {cpu_text(lat_cpu)}")
    return lat


def summary(
    args: argparse.Namespace,
    ceiling: Published | None,
    rows: list[Throughput],
    lat: list[Latency],
) -> None:
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"\nsummary ({args.readings:,} readings per throughput run, readings/s into Kafka)")
    if ceiling is not None:
        print("| run | overall | while publishing | draining backlog | gateway CPU draining |")
        print("|---|---|---|---|---|")
        print(f"| publishers alone (no subscriber) | {ceiling.rate(args.readings):,.0f} | | | |")
    for t in rows:
        gw = " + ".join(f"{v * 100:.0f}%" for k, v in t.draining.cpu.items() if k.startswith("gw"))
        print(
            f"| {t.label} | {t.per_s:,.0f} | {t.publishing.per_s:,.0f} | "
            f"{t.draining.per_s:,.0f} | {gw} |"
        )
    if lat:
        print(f"| latency (batch_within_s {args.batch_within:g}) | warnings | p50 | p99 | max |")
        print("|---|---|---|---|---|")
    for x in lat:
        print(
            f"| {x.label}, {load_text(x)} | {x.warnings} | {x.p50_ms:.0f} ms | "
            f"{x.p99_ms:.0f} ms | {x.max_ms:.0f} ms |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=50_000, help="per throughput run")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--inflight", type=int, default=1000, help="per publisher")
    parser.add_argument(
        "--small-window", type=int, default=20, help="also run max_unacked = this (0: skip)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=60_000,
        help="readings, not counted: Kafka's JIT settles after ~60k (0: skip)",
    )
    parser.add_argument("--nodes", type=int, default=1000, help="city size (30%% water level)")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=300, help="per throughput run, s")
    parser.add_argument("--latency-nodes", type=int, default=60)
    parser.add_argument("--light-rate", type=float, default=20)
    parser.add_argument("--light-seconds", type=float, default=15)
    parser.add_argument("--rate", type=float, default=300, help="moderate load, readings/s")
    parser.add_argument("--seconds", type=float, default=30, help="moderate load duration")
    parser.add_argument(
        "--burst-nodes", type=int, default=240, help="nodes crossing red at once (0: skip)"
    )
    parser.add_argument("--batch-within", type=float, default=0.2, help="stream.batch_within_s")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    args = parser.parse_args()
    if not (shutil.which("java") and shutil.which("mvn")):
        sys.exit("java and mvn are needed for Kafka (./dev setup)")
    workdir = Path(tempfile.mkdtemp(prefix="cityvitals-bench-"))
    began = time.monotonic()
    try:
        asyncio.run(run(args, workdir))
    finally:
        if args.keep:
            print(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"total {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
