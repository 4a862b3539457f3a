"""The edge agent against a real Mosquitto that goes away, and a real kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cityvitals.contract import decode_reading
from edge.agent import EdgeAgent
from edge.config import load_edge_config
from tests.integration.conftest import MosquittoServer
from tests.integration.edge_support import CuttingProxy, Recorder, write_config
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

NODES = [
    ("wl-0001", "water_level"),
    ("mh-0001", "manhole"),
    ("sm-0001", "smoke"),
    ("cr-0001", "crowd"),
]


async def test_ten_thousand_readings_survive_broker_restarts(
    tmp_path: Path, mosquitto_server: MosquittoServer
):
    """10 000 readings from 4 nodes while the broker is stopped and started three
    times: every (node, seq) arrives, no gaps; duplicates are allowed and counted."""
    per_node = 2500
    config = load_edge_config(
        write_config(tmp_path, mosquitto_server.url, nodes=NODES, limit=per_node)
    )
    agent = EdgeAgent(config)
    stop = asyncio.Event()
    async with Recorder(mosquitto_server.url) as recorder:
        run = asyncio.create_task(agent.run(stop))
        sampled = asyncio.ensure_future(agent.wait_sampled())
        for outage in range(3):
            # Let a thousand readings through, then pull the broker away.
            await recorder.wait_for(lambda n=outage: recorder.unique() >= 1000 * (n + 1))
            await asyncio.to_thread(mosquitto_server.stop)
            # The outage lasts until 300 more readings have piled up on disk
            # (or the nodes have taken all theirs).
            backlog = agent.pending
            await wait_until(
                lambda b=backlog: agent.pending >= b + 300 or sampled.done(),
                "readings to pile up on disk",
                deadline_s=20,
            )
            await asyncio.to_thread(mosquitto_server.start)
        await asyncio.wait_for(sampled, 60)
        await asyncio.wait_for(agent.wait_delivered(), 60)
        await recorder.wait_for(lambda: recorder.unique() == per_node * len(NODES))
        stop.set()
        summary = await run
    for node, _ in NODES:
        assert sorted(set(recorder.seqs[node])) == list(range(per_node)), node
    assert summary.reported == per_node * len(NODES)
    assert summary.left_in_queue == 0
    # Resends after each cut are expected; count them so a regression shows.
    print(f"duplicates after 3 broker restarts: {recorder.duplicates()}")


class _AgentProcess:
    """`cityvitals edge` as a child process, its log in a file (a pipe nobody reads
    while it runs could fill and block the agent's logging)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: S603 - our own CLI
                [sys.executable, "-m", "cityvitals.cli", "edge", "--config", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=out,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait. A stuck agent is asked where its tasks wait (SIGUSR1)
        and killed, and the test fails with its log rather than leaking it."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(3)
            self.kill()
            raise AssertionError(
                f"the agent did not stop within {timeout} s of SIGTERM:\n{self.text()[-20000:]}"
            ) from None


def _queue_state(db: Path) -> tuple[dict[str, int], dict[str, set[int]]]:
    conn = sqlite3.connect(db)
    try:
        next_seq = dict(conn.execute("SELECT node, next_seq FROM node_seq").fetchall())
        left: dict[str, set[int]] = {}
        for payload, lane in conn.execute("SELECT payload, lane FROM outbox"):
            if lane == 1:
                r = decode_reading(payload)
                left.setdefault(r.node, set()).add(r.seq)
        return next_seq, left
    finally:
        conn.close()


async def test_sigkill_mid_stream_and_restart_loses_nothing_from_the_queue(
    tmp_path: Path, mosquitto: str
):
    """The agent process is killed with SIGKILL while publishing, then started again
    and stopped cleanly: every sequence number it ever assigned (persisted with its
    reading) has arrived, or is still waiting in the queue file. No gaps."""
    nodes = NODES[:2]
    path = write_config(tmp_path, mosquitto, nodes=nodes, limit=None, interval_s=0.001)
    async with Recorder(mosquitto) as recorder:
        agent = _AgentProcess(path, tmp_path / "agent-1.log")
        try:
            await recorder.wait_for(lambda: recorder.unique() >= 2000)
        finally:
            await asyncio.to_thread(agent.kill)
        killed_at = recorder.unique()
        agent = _AgentProcess(path, tmp_path / "agent-2.log")
        try:
            await recorder.wait_for(lambda: recorder.unique() >= killed_at + 2000)
        finally:
            returncode = await asyncio.to_thread(agent.stop, 30)
        stderr = agent.text()
        assert returncode == 0, stderr
        next_seq, left = _queue_state(tmp_path / "data" / "pi-test.queue.db")
        await recorder.wait_for(
            lambda: all(
                set(recorder.seqs[n]) | left.get(n, set()) == set(range(next_seq[n]))
                for n, _ in nodes
            ),
            deadline_s=10,
        )
    for node, _ in nodes:
        assert set(recorder.seqs[node]) | left.get(node, set()) == set(range(next_seq[node]))
    # The restart saw the backlog the kill left behind and published it.
    assert "waiting from before" in stderr or not any(left.values())


@pytest.mark.parametrize("policy", ["drop_oldest", "refuse_new"])
async def test_with_the_broker_down_a_tiny_bound_drops_and_reports_exactly(
    tmp_path: Path, mosquitto_server: MosquittoServer, policy: str
):
    """Broker down, queue bound ~10 KiB, 600 readings: the agent keeps sampling,
    applies the policy, and once the broker is back its `readings_dropped` events
    account for exactly the readings that never arrived."""
    sampled = 600
    path = write_config(
        tmp_path,
        mosquitto_server.url,
        nodes=NODES[:1],
        limit=sampled,
        interval_s=0.001,
        queue=f'max_mb = 0.01\nwhen_full = "{policy}"',
    )
    agent = EdgeAgent(load_edge_config(path))
    stop = asyncio.Event()
    async with Recorder(mosquitto_server.url) as recorder:
        await asyncio.to_thread(mosquitto_server.stop)
        run = asyncio.create_task(agent.run(stop))
        await asyncio.wait_for(agent.wait_sampled(), 30)
        await asyncio.to_thread(mosquitto_server.start)
        await asyncio.wait_for(agent.wait_delivered(), 30)
        node = NODES[0][0]
        await recorder.wait_for(
            lambda: recorder.unique() + recorder.dropped_reported()[node] == sampled
        )
        stop.set()
        summary = await run
    seqs = sorted(set(recorder.seqs[node]))
    dropped = recorder.dropped_reported()[node]
    assert 0 < dropped < sampled
    assert len(seqs) + dropped == sampled
    if policy == "drop_oldest":
        assert seqs == list(range(sampled - len(seqs), sampled))  # the newest survive
    else:
        assert seqs == list(range(len(seqs)))  # the oldest survive
        assert summary.refused == dropped
    details = [d for n, e, _, d in recorder.events if e == "readings_dropped"]
    cause = "dropped_oldest" if policy == "drop_oldest" else "refused_new"
    assert all(d is not None and d.startswith(cause) for d in details)


@pytest.mark.parametrize("cut_after", [5, 20])
async def test_a_reading_whose_puback_is_lost_is_sent_again(
    tmp_path: Path, mosquitto_server, cut_after: int
):
    """The connection is cut after the broker got a publish and before its PUBACK
    reached the agent: the reading stays in the queue and is published again.

    Cutting at the last reading leaves no later publish to notice the dead
    connection, and the publish timeout is an hour: the agent must learn of the
    drop from the connection itself, or this test runs out of time."""
    async with CuttingProxy(mosquitto_server.port, cut_after_publishes=cut_after) as proxy:
        path = write_config(
            tmp_path,
            f"mqtt://127.0.0.1:{proxy.port}",
            nodes=NODES[:1],
            limit=20,
            interval_s=0.01,
            mqtt="publish_timeout_s = 3600",
        )
        agent = EdgeAgent(load_edge_config(path))
        stop = asyncio.Event()
        async with Recorder(mosquitto_server.url) as recorder:
            run = asyncio.create_task(agent.run(stop))
            await asyncio.wait_for(proxy.cut_done.wait(), 20)
            await asyncio.wait_for(agent.wait_sampled(), 20)
            await asyncio.wait_for(agent.wait_delivered(), 20)
            node = NODES[0][0]
            await recorder.wait_for(lambda: recorder.unique() == 20)
            stop.set()
            await run
    assert proxy.cut_payload is not None
    cut = decode_reading(proxy.cut_payload)
    # The broker got it twice: once before the cut, once resent from the queue.
    assert recorder.seqs[node].count(cut.seq) == 2
    assert sorted(set(recorder.seqs[node])) == list(range(20))


async def test_presence_birth_heartbeat_and_last_will(tmp_path: Path, mosquitto_server):
    """Retained "online" on connect, heartbeats with queue depth, and the broker
    publishes the agent's last will when its connection dies uncleanly."""
    path = write_config(
        tmp_path, mosquitto_server.url, nodes=NODES[:1], limit=None, interval_s=0.05
    )
    async with Recorder(mosquitto_server.url) as recorder:
        agent = _AgentProcess(path, tmp_path / "agent.log")
        try:
            await recorder.wait_for(lambda: ("online", None) in recorder.agent_states)
            # Heartbeats repeat "online" with the queue's depth.
            await recorder.wait_for(lambda: len(recorder.agent_states) >= 3)
            assert all(isinstance(d, int) for d in recorder.agent_depths)
        finally:
            await asyncio.to_thread(agent.kill)
        # No clean DISCONNECT: the broker sends the will after the keepalive runs out,
        # or at once when the TCP connection closes, as here.
        await recorder.wait_for(lambda: ("offline", "connection lost") in recorder.agent_states)


class FreezingProxy:
    """Forwards to the broker until `freeze()`; connections after that are accepted and
    never answered, as by a broker that has hung."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.frozen = False
        self.held = 0
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> FreezingProxy:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()

    def freeze(self) -> None:
        self.frozen = True

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        if self.frozen:
            self.held += 1
            return  # read nothing, answer nothing
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers.append(up_writer)
        for a, b in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(a, b))
            self._tasks.add(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        writer.close()


async def test_a_broker_that_hangs_cannot_hold_up_the_agents_stop(
    tmp_path: Path, mosquitto_server: MosquittoServer, caplog: pytest.LogCaptureFixture
):
    """The offline goodbye goes out on a connection of its own. When the broker takes
    that connection and never answers, the stop still ends, after the goodbye's bound
    (5 s) and not the publish timeout (an hour here), and says why."""
    async with FreezingProxy(mosquitto_server.port) as proxy:
        path = write_config(
            tmp_path,
            f"mqtt://127.0.0.1:{proxy.port}",
            nodes=NODES[:1],
            limit=5,
            interval_s=0.01,
            mqtt="publish_timeout_s = 3600",
        )
        agent = EdgeAgent(load_edge_config(path))
        stop = asyncio.Event()
        run = asyncio.create_task(agent.run(stop))
        await asyncio.wait_for(agent.wait_sampled(), 20)
        await asyncio.wait_for(agent.wait_delivered(), 20)
        proxy.freeze()
        stop.set()
        summary = await asyncio.wait_for(run, 30)
    assert proxy.held == 1  # the goodbye's connection, held unanswered
    assert summary.left_in_queue == 0
    assert "could not publish offline status within 5 s" in caplog.text
