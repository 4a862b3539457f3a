"""The durable queue: on disk before it is sent, gone only when acknowledged."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cityvitals.clock import ManualClock
from edge.buffer import Outbound
from edge.queue import ROW_OVERHEAD, DurableQueue, Loss, QueueError, QueueLimits
from tests.waiting import wait_until

TOPIC = "city/water_level/n1/telemetry"


def message(q: DurableQueue, node: str = "n1", payload: bytes = b"x" * 52) -> Outbound:
    return Outbound(f"city/water_level/{node}/telemetry", payload, node, q.next_seq(node))


def loss_event(loss: Loss) -> Outbound:
    body = f"{loss.cause.value}:{loss.count}".encode()
    return Outbound(f"city/water_level/{loss.node}/event", body, loss.node, 0)


async def fill(q: DurableQueue, n: int, node: str = "n1") -> None:
    for _ in range(n):
        await q.put(message(q, node))
    await q.sync()


async def take_all(q: DurableQueue, limit: int = 1000) -> list[Outbound]:
    return await asyncio.wait_for(q.take(limit), 5)


async def test_messages_survive_a_reopen_in_order_and_seqs_continue(tmp_path: Path):
    path = tmp_path / "q.db"
    async with DurableQueue(path) as q:
        await fill(q, 5)
        assert len(q) == 5
    async with DurableQueue(path) as q:
        assert len(q) == 5
        assert [m.seq for m in await take_all(q)] == [0, 1, 2, 3, 4]
        assert q.next_seq("n1") == 5
        assert q.next_seq("other") == 0


async def test_only_acknowledged_messages_leave(tmp_path: Path):
    path = tmp_path / "q.db"
    async with DurableQueue(path) as q:
        await fill(q, 4)
        taken = await take_all(q)
        q.ack(taken[1])
        q.ack(taken[3])
        await q.sync(acks=True)
        assert len(q) == 2
    async with DurableQueue(path) as q:
        assert [m.seq for m in await take_all(q)] == [0, 2]


async def test_requeue_resends_in_order_and_never_resends_an_acked_one(tmp_path: Path):
    async with DurableQueue(tmp_path / "q.db") as q:
        await fill(q, 6)
        first = await q.take(4)
        q.ack(first[0])  # acked, but the delete is not committed yet
        q.ack(first[2])
        assert q.requeue_in_flight() == 2
        again = await take_all(q)
        assert [m.seq for m in again] == [1, 3, 4, 5]
        for m in again:
            q.ack(m)
        await asyncio.wait_for(q.wait_empty(), 5)
        assert len(q) == 0


async def test_urgent_messages_overtake_prefetched_telemetry(tmp_path: Path):
    async with DurableQueue(tmp_path / "q.db", prefetch=100) as q:
        await fill(q, 50)
        assert [m.seq for m in await q.take(2)] == [0, 1]  # 48 more are prefetched
        await q.put(Outbound("city/manhole/m1/event", b"alarm", "m1", 0), urgent=True)
        await q.sync()
        nxt = await q.take(3)
        assert nxt[0].payload == b"alarm"
        assert nxt[0].urgent
        assert [m.seq for m in nxt[1:]] == [2, 3]


async def test_take_waits_for_a_commit(tmp_path: Path):
    async with DurableQueue(tmp_path / "q.db") as q:
        waiting = asyncio.ensure_future(q.take(10))
        await asyncio.sleep(0)
        assert not waiting.done()
        await fill(q, 2)
        assert [m.seq for m in await asyncio.wait_for(waiting, 5)] == [0, 1]


async def test_a_take_cancelled_while_its_select_runs_loses_nothing(tmp_path: Path):
    """The worker moved its cursor past the rows; the cancelled take hands them on."""
    async with DurableQueue(tmp_path / "q.db") as q:
        await fill(q, 3)
        assert q._executor is not None
        gate = threading.Event()
        q._executor.submit(gate.wait)  # hold the worker thread
        take = asyncio.ensure_future(q.take(10))
        disk = q._executor
        await wait_until(lambda: disk.queued >= 1, "the select to be queued", deadline_s=5)
        take.cancel()
        gate.set()  # the select now runs, after its caller gave up
        with pytest.raises(asyncio.CancelledError):
            await take
        assert [m.seq for m in await take_all(q)] == [0, 1, 2]


def row(size_payload: int = 52) -> int:
    return size_payload + len(TOPIC) + ROW_OVERHEAD


async def test_drop_oldest_keeps_the_newest_within_the_bound_and_counts_every_loss(
    tmp_path: Path,
):
    per_row = row()
    limits = QueueLimits(max_bytes=max(4096, per_row * 40), when_full="drop_oldest")
    fits = limits.max_bytes // per_row
    async with DurableQueue(tmp_path / "q.db", limits) as q:
        for _ in range(10):
            await fill(q, 25, node="n1")
            await fill(q, 5, node="n2")
        assert q.bytes <= limits.max_bytes
        assert len(q) == fits
        assert q.stats().dropped == 300 - fits
        assert await q.report_losses(loss_event) == 2  # one per node
        taken = await take_all(q)
        events = [m for m in taken if m.urgent]
        counts = {m.node: int(m.payload.split(b":")[1]) for m in events}
        assert all(m.payload.startswith(b"dropped_oldest:") for m in events)
        assert sum(counts.values()) == 300 - fits
        kept = [m for m in taken if not m.urgent]
        # The newest survive: the last `fits` readings put, in order.
        assert [m.seq for m in kept if m.node == "n1"] == sorted(
            m.seq for m in kept if m.node == "n1"
        )
        assert max(m.seq for m in kept if m.node == "n1") == 249
        assert len(kept) == fits
        # Reported once: a second report has nothing to say.
        assert await q.report_losses(loss_event) == 0


async def test_refuse_new_keeps_the_oldest_and_says_how_many_it_refused(tmp_path: Path):
    per_row = row()
    limits = QueueLimits(max_bytes=max(4096, per_row * 40), when_full="refuse_new")
    fits = limits.max_bytes // per_row
    async with DurableQueue(tmp_path / "q.db", limits) as q:
        accepted = [await q.put(message(q)) for _ in range(100)]
        await q.sync()
        assert accepted == [True] * fits + [False] * (100 - fits)
        # Alarms are never refused.
        assert await q.put(Outbound("city/manhole/m1/event", b"a", "m1", 0), urgent=True)
        await q.report_losses(loss_event)
        taken = await take_all(q)
        assert [m.seq for m in taken if not m.urgent] == list(range(fits))
        reports = [m.payload for m in taken if m.urgent and m.node == "n1"]
        assert reports == [f"refused_new:{100 - fits}".encode()]


async def test_old_readings_expire_and_are_counted(tmp_path: Path):
    clock = ManualClock(1_764_000_000.0)
    limits = QueueLimits(max_age_s=3600)
    async with DurableQueue(tmp_path / "q.db", limits, clock=clock, expire_every_s=0) as q:
        await fill(q, 3)
        clock.advance(3000)
        await fill(q, 2)
        clock.advance(1000)  # the first three are now 4000 s old
        await fill(q, 1)
        assert len(q) == 3
        await q.report_losses(loss_event)
        taken = await take_all(q)
        assert [m.payload for m in taken if m.urgent] == [b"expired:3"]
        assert [m.seq for m in taken if not m.urgent] == [3, 4, 5]


async def test_losses_survive_a_restart_until_reported(tmp_path: Path):
    path = tmp_path / "q.db"
    limits = QueueLimits(max_bytes=4096, when_full="refuse_new")
    async with DurableQueue(path, limits) as q:
        for _ in range(200):
            await q.put(message(q))
        await q.sync()
        refused = q.stats().dropped
    assert refused > 0
    async with DurableQueue(path, limits) as q:
        await q.report_losses(loss_event)
        events = [m for m in await take_all(q) if m.urgent]
        assert [m.payload for m in events] == [f"refused_new:{refused}".encode()]


async def test_a_second_agent_cannot_open_the_same_queue(tmp_path: Path):
    path = tmp_path / "q.db"
    async with DurableQueue(path) as q:
        await fill(q, 1)
        with pytest.raises(QueueError, match="in use"):
            async with DurableQueue(path):
                pass


async def test_an_unreadable_file_is_moved_aside_and_sequences_jump_past_it(tmp_path: Path):
    """A corrupt queue is kept for forensics; the new one starts every node's sequence
    above anything the lost file can have used, so receivers do not take the new
    readings for duplicates of old ones."""
    path = tmp_path / "q.db"
    path.write_bytes(b"this is not sqlite" * 100)
    before_ms = int(time.time() * 1000)
    async with DurableQueue(path) as q:
        await fill(q, 1)
        assert len(q) == 1
        assert q.next_seq("n1") >= before_ms * 1000
    assert len(list(tmp_path.glob("q.db.corrupt-*"))) == 1  # noqa: ASYNC240 - a test's tmp dir
    async with DurableQueue(path) as q:  # and the floor is remembered
        assert q.next_seq("brand-new-node") >= before_ms * 1000


async def test_a_queue_that_cannot_be_opened_is_an_error_not_a_fresh_start(tmp_path: Path):
    """Only corruption moves a file aside: a path SQLite cannot open (here a directory;
    in the field a permission or I/O problem) is an error naming the file."""
    path = tmp_path / "q.db"
    path.mkdir()
    with pytest.raises(QueueError, match="cannot open the queue"):
        async with DurableQueue(path):
            pass
    assert path.is_dir()  # untouched
    assert not list(tmp_path.glob("q.db.corrupt-*"))  # noqa: ASYNC240 - a test's tmp dir


async def test_a_full_disk_holds_readings_in_memory_and_writes_them_later(tmp_path: Path):
    path = tmp_path / "q.db"
    async with DurableQueue(path, retry_s=0.01) as q:
        await fill(q, 1)
        file = q._file
        assert file is not None
        # SQLite's own size cap fails writes exactly as a full disk does (SQLITE_FULL).
        await q._run(file.conn.execute, "PRAGMA max_page_count = 1")
        for _ in range(300):
            await q.put(message(q, payload=b"y" * 200))

        await wait_until(lambda: q.stats().commit_failures >= 2, "two failed commits", deadline_s=5)
        assert len(q) == 301  # nothing lost, the 300 wait in memory
        await q._run(file.conn.execute, "PRAGMA max_page_count = 1000000")
        await asyncio.wait_for(q.sync(), 5)
    async with DurableQueue(path) as q:
        assert [m.seq for m in await take_all(q)] == list(range(301))


KILLED_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from edge.buffer import Outbound
    from edge.queue import DurableQueue

    async def main(path):
        async with DurableQueue(path) as q:
            n = 0
            while True:
                seq = q.next_seq("n1")
                await q.put(Outbound("t", b"x" * 50, "n1", seq))
                n += 1
                if n % 100 == 0:
                    await q.sync()
                    print(seq, flush=True)

    asyncio.run(main(sys.argv[1]))
    """
)


def test_sigkill_mid_stream_loses_nothing_that_was_synced(tmp_path: Path):
    path = tmp_path / "q.db"
    proc = subprocess.Popen(  # noqa: S603 - our interpreter, our script
        [sys.executable, "-c", KILLED_WRITER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])},
    )
    assert proc.stdout is not None
    synced = -1
    for line in proc.stdout:
        synced = int(line)
        if synced >= 2000:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    # Killed, not dead of its own accord (a broken script would leave nothing to check).
    assert proc.returncode == -signal.SIGKILL
    assert synced >= 2000

    async def reopen() -> tuple[list[int], int]:
        async with DurableQueue(path) as q:
            seqs = []
            while len(seqs) < len(q):
                seqs += [m.seq for m in await take_all(q)]
            return seqs, q.next_seq("n1")

    seqs, next_seq = asyncio.run(reopen())
    # Everything synced is there, in order, with no gap; the sequence goes on
    # from the last reading on disk.
    assert seqs[: synced + 1] == list(range(synced + 1))
    assert seqs == list(range(len(seqs)))
    assert next_seq == len(seqs)


@settings(max_examples=40, deadline=None)
@given(
    ops=st.lists(
        st.sampled_from(
            [
                "put",
                "put",
                "put",
                "sync",
                "take",
                "ack",
                "ack",
                "requeue",
                "report",
                "yield",
                "reopen",
            ]
        ),
        max_size=60,
    )
)
def test_any_interleaving_delivers_every_unacked_message_in_order(ops: list[str]):
    """Model check: whatever the interleaving of puts (synced or not), takes, acks,
    connection losses, loss reports and restarts, the queue counts exactly what was
    not acknowledged, and hands it out in order."""
    with tempfile.TemporaryDirectory() as scratch:
        asyncio.run(_interleave(Path(scratch) / "q.db", ops))


async def _interleave(path: Path, ops: list[str]) -> None:
    unacked: list[int] = []
    in_flight: list[Outbound] = []
    q = DurableQueue(path)
    await q.__aenter__()
    try:
        for op in ops:
            if op == "put":  # not synced: commits run whenever the loop lets them
                m = message(q)
                await q.put(m)
                unacked.append(m.seq)
            elif op == "sync":
                await q.sync()
            elif op == "yield":
                await asyncio.sleep(0)
            elif op == "report":
                assert await q.report_losses(loss_event) == 0  # nothing was lost
            elif op == "take" and len(q) > len(in_flight):
                in_flight += await take_all(q, 3)
            elif op == "ack" and in_flight:
                m = in_flight.pop(0)
                q.ack(m)
                unacked.remove(m.seq)
            elif op == "requeue":
                q.requeue_in_flight()
                in_flight = []
            elif op == "reopen":
                await q.__aexit__(None, None, None)
                q = DurableQueue(path)
                await q.__aenter__()
                in_flight = []
            assert len(q) == len(unacked)
        q.requeue_in_flight()
        left: list[int] = []
        while len(left) < len(unacked):  # what is not committed yet comes with the next commit
            left += [m.seq for m in await take_all(q)]
        assert left == unacked
    finally:
        await q.__aexit__(None, None, None)


HUNG_DISK = textwrap.dedent(
    """
    import asyncio, sys, threading
    from edge import queue
    from edge.buffer import Outbound

    hung = threading.Event()

    def commit_on_a_dying_disk(self, batch):
        hung.set()
        threading.Event().wait()  # an fsync that never returns

    async def main(path):
        queue.CLOSE_TIMEOUT_S = 0.5  # the stop's bounds, shortened for the test
        async with queue.DurableQueue(path) as q:
            queue._QueueFile.commit = commit_on_a_dying_disk
            await q.put(Outbound("t", b"x", "n1", q.next_seq("n1")))
            while not hung.is_set():
                await asyncio.sleep(0.01)
        print("stopped", flush=True)

    asyncio.run(main(sys.argv[1]))
    """
)


def test_a_disk_that_hangs_mid_commit_does_not_keep_the_process_alive(tmp_path: Path):
    """The stop gives up on the disk after its bound and says so; then the process
    exits, its thread still stuck in the commit (a supervisor can restart it)."""
    proc = subprocess.run(  # noqa: S603 - our interpreter, our script
        [sys.executable, "-c", HUNG_DISK, str(tmp_path / "q.db")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])},
        timeout=60,  # the stop's two bounds, with room; a hang fails here
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "stopped\n"
    assert "the disk did not answer within 0.5 s" in proc.stderr
