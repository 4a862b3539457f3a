"""Store-and-forward on disk: what an edge agent has not delivered survives
`kill -9`, a power cut and a week without network.

A message is written to an SQLite file (WAL, `synchronous=FULL` by default)
before it can be published, and deleted only when the broker has acknowledged
it. Writes are group-committed: every message put while the previous commit
was on its way to disk goes into the next one, so one fsync covers many
readings and a fast serial line never waits for the disk per frame.

During an outage the queue grows up to `max_bytes` (payload, topic and a
fixed per-row overhead) and, optionally, `max_age_s`. Past the bound the
policy applies: `drop_oldest` deletes the oldest telemetry not yet handed to
the publisher, `refuse_new` turns new telemetry away. Every loss is counted
per node in the same transaction that causes it, and `report_losses` turns
the counts into events (`readings_dropped`, with the count) that go out
ahead of the backlog: an operator sees exactly how much is missing and why.

Urgent messages (edge alarms, loss reports) have a lane of their own, taken
before any telemetry, and are never dropped.

The queue also owns each node's sequence counter: it is persisted in the
transaction that stores the reading, so after a crash a node never reuses a
sequence number the receivers have already seen.

>>> import asyncio, tempfile, pathlib
>>> async def demo(path):
...     async with DurableQueue(path) as q:
...         for _ in range(3):
...             await q.put(Outbound("city/x/n1/telemetry", b"{}", "n1", q.next_seq("n1")))
...         await q.sync()                       # on disk now
...         first = await q.take(2)
...         q.ack(first[0])
...     async with DurableQueue(path) as q:      # "restart": acked one is gone
...         return [m.seq for m in await q.take(10)], q.next_seq("n1")
>>> with tempfile.TemporaryDirectory() as d:
...     asyncio.run(demo(pathlib.Path(d) / "q.db"))
([1, 2], 3)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeVar

from cityvitals.clock import Clock, SystemClock
from cityvitals.errors import CityvitalsError
from cityvitals.tasks import cancel_and_wait, notify
from edge.buffer import Outbound

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Bytes a row costs beyond its payload and topic (row header, index entry):
#: measured on SQLite 3.40 with 200-byte payloads, rounded up.
ROW_OVERHEAD: Final = 48
#: How long closing waits for the disk before giving up on it.
CLOSE_TIMEOUT_S: Final = 5.0
SCHEMA_VERSION: Final = 1
URGENT, TELEMETRY = 0, 1
Policy = Literal["drop_oldest", "refuse_new"]


class QueueError(CityvitalsError):
    """The queue file cannot be opened or written."""


class Cause(StrEnum):
    """Why readings were lost; the `detail` of the loss event starts with it."""

    DROPPED_OLDEST = "dropped_oldest"
    REFUSED_NEW = "refused_new"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class QueueLimits:
    max_bytes: int = 256 * 1024 * 1024
    max_age_s: float | None = None
    when_full: Policy = "drop_oldest"

    def __post_init__(self) -> None:
        if self.max_bytes < 4096:
            raise ValueError("max_bytes must be at least 4096")
        if self.max_age_s is not None and self.max_age_s <= 0:
            raise ValueError("max_age_s must be positive")
        if self.when_full not in ("drop_oldest", "refuse_new"):
            raise ValueError("when_full must be drop_oldest or refuse_new")


@dataclass(frozen=True, slots=True)
class Loss:
    """Readings of one node lost for one cause since the last report."""

    node: str
    cause: Cause
    count: int
    first_ms: int
    last_ms: int
    #: Topic of the last reading lost: says the node's kind, declared or not.
    topic: str = ""


@dataclass(frozen=True, slots=True)
class QueueStats:
    depth: int
    bytes: int
    dropped: int
    commits: int
    commit_failures: int


def row_size(message: Outbound) -> int:
    return len(message.payload) + len(message.topic) + ROW_OVERHEAD


# -- the file: used only on the queue's own thread -------------------------------


@dataclass(slots=True)
class _Batch:
    rows: list[tuple[int, Outbound, int]] = field(default_factory=list)  # lane, msg, queued_ms
    acked: list[int] = field(default_factory=list)
    refused: list[Loss] = field(default_factory=list)
    #: node -> next seq, for telemetry refused before it reached the batch.
    spent: dict[str, int] = field(default_factory=dict)
    #: Turn the loss counts into urgent rows, in the same transaction.
    report: Callable[[Loss], Outbound] | None = None
    #: Who waits for that report's count of messages.
    waiters: list[asyncio.Future[int]] = field(default_factory=list)
    now_ms: int = 0
    expire: bool = False


@dataclass(frozen=True, slots=True)
class _Committed:
    depth: int
    bytes: int
    deleted: tuple[int, ...]
    losses: Counter[Cause]
    urgent_inserted: bool
    reported: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    lane INTEGER NOT NULL,
    node TEXT NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    queued_ms INTEGER NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_lane ON outbox (lane, id);
CREATE TABLE IF NOT EXISTS node_seq (node TEXT PRIMARY KEY, next_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS losses (
    node TEXT NOT NULL,
    cause TEXT NOT NULL,
    count INTEGER NOT NULL,
    first_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    topic TEXT NOT NULL,
    PRIMARY KEY (node, cause)
);
"""


class _QueueFile:
    """The SQLite side. Every method runs on the queue's single worker thread,
    one at a time and in submission order, which is what makes the cursor
    (what has been handed to the publisher since the last rewind) consistent
    with the drops: only rows past the cursor may be dropped."""

    def __init__(self, path: Path, limits: QueueLimits, synchronous: str) -> None:
        self.path = path
        self.limits = limits
        self.conn = self._connect(synchronous)
        self.cursor = [0, 0]
        self._recount()

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return self._open(synchronous)
        except OSError as exc:
            raise QueueError(f"{self.path}: cannot create the queue ({exc})") from exc
        except sqlite3.DatabaseError as exc:
            code = getattr(exc, "sqlite_errorname", "")
            if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
                raise QueueError(f"{self.path}: in use by another process ({exc})") from exc
            if not code.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
                # Permissions, I/O errors, a read-only disk: the file may be
                # fine, and throwing its backlog away would be the real damage.
                raise QueueError(f"{self.path}: cannot open the queue ({code}: {exc})") from exc
            # A file SQLite cannot read (a half-written SD card, a wrong file):
            # keep it for forensics and start a new queue rather than refuse to run.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    self.path.with_name(self.path.name + suffix).rename(
                        aside.with_name(aside.name + suffix)
                    )
            log.error(  # noqa: TRY400 - the reason is in the line; a traceback adds nothing
                "queue %s is unreadable (%s); moved to %s, starting empty", self.path, exc, aside
            )
            # The lost file's sequence numbers are unknown, and receivers have
            # seen them: start every node far above anything it can have used
            # (a thousand readings per millisecond since the epoch).
            return self._open(synchronous, seq_floor=int(time.time() * 1000) * 1000)

    def _open(self, synchronous: str, *, seq_floor: int = 0) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            # An exclusive lock: two agents sharing one queue would double-send
            # and fight over the cursor.
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            conn.executescript(_SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                [("schema", SCHEMA_VERSION), ("seq_floor", seq_floor)],
            )
            conn.execute("COMMIT")
            (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except BaseException:
            conn.close()
            raise
        if int(version) != SCHEMA_VERSION:
            conn.close()
            raise QueueError(
                f"{self.path}: queue schema {version}, this agent speaks {SCHEMA_VERSION}"
            )
        return conn

    def next_seqs(self) -> tuple[dict[str, int], int]:
        """Each node's next sequence number, and where a node new to this queue starts."""
        (floor,) = self.conn.execute("SELECT value FROM meta WHERE key = 'seq_floor'").fetchone()
        return dict(self.conn.execute("SELECT node, next_seq FROM node_seq").fetchall()), int(floor)

    def pending_losses(self) -> int:
        (n,) = self.conn.execute("SELECT COALESCE(SUM(count), 0) FROM losses").fetchone()
        return int(n)

    def select(self, limit: int, lanes: tuple[int, ...]) -> list[Outbound]:
        out: list[Outbound] = []
        for lane in lanes:
            if len(out) >= limit:
                break
            rows = self.conn.execute(
                "SELECT id, topic, payload, node, seq FROM outbox"
                " WHERE lane = ? AND id > ? ORDER BY id LIMIT ?",
                (lane, self.cursor[lane], limit - len(out)),
            ).fetchall()
            if rows:
                self.cursor[lane] = rows[-1][0]
            out.extend(
                Outbound(topic, payload, node, seq, rid, lane == URGENT)
                for rid, topic, payload, node, seq in rows
            )
        return out

    def rewind(self) -> None:
        self.cursor = [0, 0]

    def commit(self, batch: _Batch) -> _Committed:
        losses: dict[tuple[str, Cause], Loss] = {}
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            deleted = self._delete_acked(batch.acked)
            if batch.expire and self.limits.max_age_s is not None:
                cutoff = batch.now_ms - round(self.limits.max_age_s * 1000)
                self._drop(self._expired(cutoff), Cause.EXPIRED, batch.now_ms, losses)
            # Every seq in the batch is spent, stored or not: a refused or dropped
            # reading's number is the gap its loss report explains, never reused.
            next_seq = dict(batch.spent)
            for lane, m, _ in batch.rows:
                if lane == TELEMETRY:
                    next_seq[m.node] = max(next_seq.get(m.node, 0), m.seq + 1)
            rows = self._make_room(batch, losses)
            urgent = False
            for lane, m, queued_ms in rows:
                size = row_size(m)
                c.execute(
                    "INSERT INTO outbox (lane, node, seq, topic, payload, queued_ms, size)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (lane, m.node, m.seq, m.topic, m.payload, queued_ms, size),
                )
                self.depth += 1
                self.bytes += size
                urgent = urgent or lane == URGENT
            for loss in batch.refused:
                self._add_loss(losses, loss)
            c.executemany(
                "INSERT INTO node_seq (node, next_seq) VALUES (?, ?) ON CONFLICT (node)"
                " DO UPDATE SET next_seq = max(next_seq, excluded.next_seq)",
                next_seq.items(),
            )
            c.executemany(
                "INSERT INTO losses (node, cause, count, first_ms, last_ms, topic)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (node, cause) DO UPDATE SET count = count + excluded.count,"
                " first_ms = min(first_ms, excluded.first_ms),"
                " last_ms = max(last_ms, excluded.last_ms), topic = excluded.topic",
                [
                    (x.node, x.cause.value, x.count, x.first_ms, x.last_ms, x.topic)
                    for x in losses.values()
                ],
            )
            reported = self._report(batch.report, batch.now_ms) if batch.report else 0
            c.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        by_cause: Counter[Cause] = Counter()
        for loss in losses.values():
            by_cause[loss.cause] += loss.count
        return _Committed(
            self.depth, self.bytes, deleted, by_cause, urgent or reported > 0, reported
        )

    def _recount(self) -> None:
        self.depth, self.bytes = self.conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox"
        ).fetchone()

    def _rollback(self) -> None:
        # SQLite has already rolled back after some errors (SQLITE_FULL).
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        # Our counters moved with the statements; the file did not.
        self._recount()

    def _delete_acked(self, ids: list[int]) -> tuple[int, ...]:
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            found = self.conn.execute(
                f"SELECT id, size FROM outbox WHERE id IN ({marks})",  # noqa: S608 - placeholders only
                chunk,
            ).fetchall()
            self.conn.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)  # noqa: S608
            self.depth -= len(found)
            self.bytes -= sum(size for _, size in found)
        return tuple(ids)

    def _untaken(self) -> Iterable[tuple[int, str, int, int, str]]:
        """Telemetry not handed to the publisher, oldest first:
        (id, node, size, queued_ms, topic)."""
        after = self.cursor[TELEMETRY]
        while True:
            rows = self.conn.execute(
                "SELECT id, node, size, queued_ms, topic FROM outbox"
                " WHERE lane = 1 AND id > ? ORDER BY id LIMIT 1000",
                (after,),
            ).fetchall()
            if not rows:
                return
            yield from rows
            after = rows[-1][0]

    def _expired(self, cutoff_ms: int) -> list[tuple[int, str, int, str]]:
        out = []
        for rid, node, size, queued_ms, topic in self._untaken():
            if queued_ms >= cutoff_ms:
                break  # queued in order: the rest are younger
            out.append((rid, node, size, topic))
        return out

    def _make_room(self, batch: _Batch, losses: dict[tuple[str, Cause], Loss]) -> list[Any]:
        need = self.bytes + sum(row_size(m) for _, m, _ in batch.rows) - self.limits.max_bytes
        if need <= 0:
            return batch.rows
        # refuse_new was applied as readings arrived; what is left over here
        # (acks not yet committed made the estimate optimistic) goes the same way.
        victims: list[tuple[int, str, int, str]] = []
        if self.limits.when_full == "drop_oldest":
            for rid, node, size, _, topic in self._untaken():
                if need <= 0:
                    break
                victims.append((rid, node, size, topic))
                need -= size
            self._drop(victims, Cause.DROPPED_OLDEST, batch.now_ms, losses)
        if need <= 0:
            return batch.rows
        cause = (
            Cause.DROPPED_OLDEST if self.limits.when_full == "drop_oldest" else Cause.REFUSED_NEW
        )
        kept: list[Any] = []
        # Drop from the batch itself, oldest telemetry first for drop_oldest,
        # newest first for refuse_new; urgent rows always stay.
        order = batch.rows if cause is Cause.DROPPED_OLDEST else list(reversed(batch.rows))
        dropped_ids: set[int] = set()
        for i, (lane, m, _) in enumerate(order):
            if need <= 0:
                break
            if lane == TELEMETRY:
                dropped_ids.add(i)
                need -= row_size(m)
                self._add_loss(losses, Loss(m.node, cause, 1, batch.now_ms, batch.now_ms, m.topic))
        kept = [row for i, row in enumerate(order) if i not in dropped_ids]
        return kept if cause is Cause.DROPPED_OLDEST else list(reversed(kept))

    def _drop(
        self,
        victims: list[tuple[int, str, int, str]],
        cause: Cause,
        now_ms: int,
        losses: dict[tuple[str, Cause], Loss],
    ) -> None:
        self.conn.executemany("DELETE FROM outbox WHERE id = ?", [(v[0],) for v in victims])
        for _, node, size, topic in victims:
            self.depth -= 1
            self.bytes -= size
            self._add_loss(losses, Loss(node, cause, 1, now_ms, now_ms, topic))

    @staticmethod
    def _add_loss(losses: dict[tuple[str, Cause], Loss], loss: Loss) -> None:
        key = (loss.node, loss.cause)
        old = losses.get(key)
        if old is not None:
            loss = Loss(
                loss.node,
                loss.cause,
                old.count + loss.count,
                min(old.first_ms, loss.first_ms),
                max(old.last_ms, loss.last_ms),
                loss.topic,
            )
        losses[key] = loss

    def _report(self, build: Callable[[Loss], Outbound], now_ms: int) -> int:
        """Loss counts become urgent rows; part of the commit's transaction, so a
        count is reported exactly once whatever fails when."""
        c = self.conn
        rows = c.execute(
            "SELECT node, cause, count, first_ms, last_ms, topic FROM losses"
        ).fetchall()
        for node, cause, count, first_ms, last_ms, topic in rows:
            m = build(Loss(node, Cause(cause), count, first_ms, last_ms, topic))
            size = row_size(m)
            c.execute(
                "INSERT INTO outbox (lane, node, seq, topic, payload, queued_ms, size)"
                " VALUES (0, ?, ?, ?, ?, ?, ?)",
                (m.node, m.seq, m.topic, m.payload, now_ms, size),
            )
            self.depth += 1
            self.bytes += size
        c.execute("DELETE FROM losses")
        return len(rows)

    def close(self) -> None:
        self.conn.close()


# -- the queue: used on the event loop ---------------------------------------------


_Job = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class _DiskThread(Executor):
    """The queue file's one worker thread, a daemon.

    ThreadPoolExecutor's threads are joined when the interpreter exits, so a commit
    stuck in an fsync on a dying SD card would keep the agent's process alive long
    after its stop had given up on the disk (and logged so). A daemon thread is not
    waited for: the process exits, and its supervisor can restart it.
    """

    def __init__(self, name: str) -> None:
        self._work: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        if self._closed:
            raise RuntimeError("cannot schedule new work after shutdown")
        if kwargs:
            raise TypeError("the queue's disk thread takes positional arguments only")
        future: Future[T] = Future()
        self._work.put((future, fn, args))
        return future

    @property
    def queued(self) -> int:
        """Jobs submitted and not yet started."""
        return self._work.qsize()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closed = True
        self._work.put(None)
        if wait:
            self._thread.join()

    def _serve(self) -> None:
        while (item := self._work.get()) is not None:
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the caller, as an executor does
                future.set_exception(exc)


class DurableQueue:
    """An `OutboundBuffer` on disk. Use as an async context manager.

    `put` never waits for the disk (only when `max_pending` messages are
    already waiting for a commit, which means the disk is failing); `sync`
    waits until everything put so far is committed.
    """

    def __init__(
        self,
        path: Path | str,
        limits: QueueLimits | None = None,
        *,
        clock: Clock | None = None,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        prefetch: int = 256,
        max_pending: int = 10_000,
        expire_every_s: float = 10.0,
        retry_s: float = 1.0,
    ) -> None:
        self.path = Path(path)
        self.limits = limits or QueueLimits()
        self._clock = clock or SystemClock()
        self._synchronous = synchronous
        self._prefetch_n = prefetch
        self._max_pending = max_pending
        self._expire_every_s = expire_every_s
        self._retry_s = retry_s
        self._executor: _DiskThread | None = None
        self._file: _QueueFile | None = None
        self._committer: asyncio.Task[None] | None = None
        self._seqs: dict[str, int] = {}
        self._seq_floor = 0
        # Loop-side mirror of the file, updated from each commit's result.
        self._depth = 0
        self._bytes = 0
        self._pending = _Batch()
        self._pending_bytes = 0
        # The batch on its way to disk: still counted, not yet in the file.
        self._committing = _Batch()
        self._committing_bytes = 0
        self._put_count = 0
        self._committed_count = 0
        self._in_flight: dict[int, Outbound] = {}
        self._prefetch: deque[Outbound] = deque()
        self._acked_unflushed: set[int] = set()
        self._epoch = 0
        self._urgent_waiting = False
        self._dropped = 0
        self._commits = 0
        self._commit_failures = 0
        self._last_expire = float("-inf")
        # Fresh events per change (see cityvitals.tasks.notify): a waiter that saw "nothing
        # new" just before a change cannot miss it, and nobody clears them.
        self._work = asyncio.Event()
        self._new_rows = asyncio.Event()  # rows to take: a commit, a rewind, a loss report
        self._shrunk = asyncio.Event()  # fewer messages pending: an ack, a commit
        self._committed = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._executor = _DiskThread(f"queue-{self.path.name}")
        try:
            self._file = await self._run(_QueueFile, self.path, self.limits, self._synchronous)
            self._seqs, self._seq_floor = await self._run(self._file.next_seqs)
            unreported = await self._run(self._file.pending_losses)
        except BaseException:
            self._executor.shutdown(wait=True)
            raise
        self._depth, self._bytes = self._file.depth, self._file.bytes
        if self._depth or unreported:
            log.info(
                "queue %s: %d messages (%.1f MiB) waiting from before%s",
                self.path,
                self._depth,
                self._bytes / 2**20,
                f", {unreported} unreported losses" if unreported else "",
            )
        self._committer = asyncio.create_task(self._commit_loop(), name=f"queue-{self.path.name}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._committer is not None and not self._committer.done():
                # Commit what was put and acked; bounded, so a dead disk cannot hang a stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CLOSE_TIMEOUT_S):
                        await self.sync(acks=True)
        finally:
            await self._close()

    async def _close(self) -> None:
        if self._committer is not None:
            await cancel_and_wait(self._committer)
            if not self._committer.cancelled() and self._committer.exception() is not None:
                log.error(
                    "queue %s: the committer had failed",
                    self.path,
                    exc_info=self._committer.exception(),
                )
        left = len(self._pending.rows) + len(self._committing.rows)
        if left:
            log.error("queue %s closed with %d messages never written to disk", self.path, left)
        if self._executor is None:
            return
        answered = True
        if self._file is not None:
            closing = asyncio.wrap_future(self._executor.submit(self._file.close))
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await closing
            except TimeoutError:
                answered = False
        if not answered:
            # A commit stuck in an fsync on a dying disk must not hold the stop:
            # leave that thread to the process exit.
            log.error("queue %s: the disk did not answer within %g s", self.path, CLOSE_TIMEOUT_S)
        self._executor.shutdown(wait=answered)

    # -- putting -------------------------------------------------------------------

    def next_seq(self, node: str) -> int:
        """Allocate the next sequence number of `node` (persisted with its reading)."""
        seq = self._seqs.get(node, self._seq_floor)
        self._seqs[node] = seq + 1
        return seq

    async def put(self, message: Outbound, *, urgent: bool = False) -> bool:
        """Queue a message for the next commit; False if `refuse_new` turned it away."""
        while len(self._pending.rows) >= self._max_pending:
            self._check_committer()
            await self._committed.wait()
        now = self._clock.now_ms()
        size = row_size(message)
        if (
            not urgent
            and self.limits.when_full == "refuse_new"
            and self.bytes + size > self.limits.max_bytes
        ):
            self._pending.refused.append(
                Loss(message.node, Cause.REFUSED_NEW, 1, now, now, message.topic)
            )
            spent = self._pending.spent
            spent[message.node] = max(spent.get(message.node, 0), message.seq + 1)
            self._dropped += 1
            self._put_count += 1
            self._work.set()
            return False
        self._pending.rows.append((URGENT if urgent else TELEMETRY, message, now))
        self._pending_bytes += size
        self._put_count += 1
        self._work.set()
        return True

    async def sync(self, *, acks: bool = False) -> None:
        """Return once every message put so far is on disk (and, with `acks`,
        every acknowledgement so far is too)."""
        if acks and self._pending.acked:
            # Count the acks as one more "put" so that the commit that takes
            # them is one this call waits for.
            self._put_count += 1
            self._work.set()
        target = self._put_count
        while self._committed_count < target:
            self._check_committer()
            event = self._committed
            await event.wait()

    def _check_committer(self) -> None:
        if self._committer is None:
            raise RuntimeError("queue is not open")
        if self._committer.done():
            raise RuntimeError("queue committer stopped") from self._committer.exception()

    # -- taking ----------------------------------------------------------------------

    async def take(self, limit: int) -> list[Outbound]:
        while True:
            if self._urgent_waiting or not self._prefetch:
                lanes = (URGENT,) if self._prefetch else (URGENT, TELEMETRY)
                self._urgent_waiting = False
                changed, epoch = self._new_rows, self._epoch
                rows = await self._select(max(limit, self._prefetch_n), lanes)
                if epoch != self._epoch:
                    continue  # rewound meanwhile; the file's cursor was rewound too
                rows = [r for r in rows if r.position not in self._acked_unflushed]
                if rows and rows[0].urgent:
                    self._prefetch.extendleft(reversed(rows))
                else:
                    self._prefetch.extend(rows)
                if not self._prefetch:
                    await changed.wait()
                    continue
            batch: list[Outbound] = []
            while self._prefetch and len(batch) < limit:
                message = self._prefetch.popleft()
                self._in_flight[message.position] = message
                batch.append(message)
            return batch

    async def _select(self, limit: int, lanes: tuple[int, ...]) -> list[Outbound]:
        future = asyncio.ensure_future(self._run(self._open_file().select, limit, lanes))
        epoch = self._epoch
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The file's cursor has moved past these rows: keep them for the
            # next take, unless a rewind made them stale.
            def keep(done: asyncio.Future[list[Outbound]]) -> None:
                if not done.cancelled() and done.exception() is None and epoch == self._epoch:
                    self._prefetch.extend(
                        r for r in done.result() if r.position not in self._acked_unflushed
                    )

            future.add_done_callback(keep)
            raise

    def ack(self, message: Outbound) -> None:
        if self._in_flight.pop(message.position, None) is not None:
            self._pending.acked.append(message.position)
            self._acked_unflushed.add(message.position)
            self._work.set()
            self._shrunk = notify(self._shrunk)

    def requeue_in_flight(self) -> int:
        back = len(self._in_flight)
        self._in_flight.clear()
        self._prefetch.clear()
        self._epoch += 1
        if self._executor is not None and self._file is not None:
            # Runs after anything already submitted, before anything submitted later.
            self._executor.submit(self._file.rewind)
        self._new_rows = notify(self._new_rows)
        return back

    # -- state -----------------------------------------------------------------------

    def __len__(self) -> int:
        """Messages not yet acknowledged: on disk, or waiting for the next commit."""
        waiting = len(self._pending.rows) + len(self._committing.rows)
        return max(0, self._depth - len(self._acked_unflushed)) + waiting

    @property
    def bytes(self) -> int:
        return self._bytes + self._pending_bytes + self._committing_bytes

    def stats(self) -> QueueStats:
        return QueueStats(
            len(self), self.bytes, self._dropped, self._commits, self._commit_failures
        )

    async def wait_empty(self) -> None:
        while len(self):
            self._check_committer()
            await self._shrunk.wait()

    async def report_losses(self, build: Callable[[Loss], Outbound]) -> int:
        """Turn the loss counts into urgent messages built by `build` with the next
        commit (a count is reported once, and never lost in between); returns how
        many messages that made."""
        self._check_committer()
        self._pending.report = build
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.waiters.append(done)
        self._work.set()
        committer = self._committer
        assert committer is not None  # noqa: S101 - _check_committer said so
        either: set[asyncio.Future[Any]] = {done, committer}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not done.done():
            self._check_committer()  # raises: the committer is gone
        return done.result()

    # -- the committer -------------------------------------------------------------

    async def _commit_loop(self) -> None:
        file = self._open_file()
        while True:
            await self._work.wait()
            self._work.clear()
            if not (self._pending.rows or self._pending.refused or self._pending.report):
                # Only acks: losing those costs a duplicate, not a reading, so
                # let a few more gather before paying for an fsync.
                await asyncio.sleep(0.05)
            batch, counted = self._pending, self._put_count
            self._committing, self._committing_bytes = batch, self._pending_bytes
            self._pending, self._pending_bytes = _Batch(), 0
            batch.now_ms = self._clock.now_ms()
            now = time.monotonic()
            if now - self._last_expire >= self._expire_every_s:
                batch.expire, self._last_expire = True, now
            try:
                result = await self._run(file.commit, batch)
            except sqlite3.Error as exc:
                self._committing, self._committing_bytes = _Batch(), 0
                self._commit_failed(batch, exc)
                await asyncio.sleep(self._retry_s)
                self._work.set()
                continue
            if self._commit_failures and self._commits_since_failure == 0:
                log.warning("queue %s: writing again after a failure", self.path)
            self._committing, self._committing_bytes = _Batch(), 0
            self._commits += 1
            self._commits_since_failure += 1
            self._depth, self._bytes = result.depth, result.bytes
            self._acked_unflushed.difference_update(result.deleted)
            lost = sum(result.losses.values())
            self._dropped += lost - sum(x.count for x in batch.refused)
            if lost:
                self._log_losses(result.losses)
            if result.urgent_inserted:
                self._urgent_waiting = True
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_result(result.reported)
            self._committed_count = counted
            self._committed = notify(self._committed)
            self._shrunk = notify(self._shrunk)
            if batch.rows or result.reported:
                self._new_rows = notify(self._new_rows)

    _commits_since_failure = 0

    def _commit_failed(self, batch: _Batch, exc: sqlite3.Error) -> None:
        self._commit_failures += 1
        if self._commits_since_failure or self._commit_failures == 1:
            log.error(
                "queue %s: cannot write (%s); holding readings in memory, retrying", self.path, exc
            )
        self._commits_since_failure = 0
        # Put the batch back in front of whatever arrived meanwhile.
        batch.rows.extend(self._pending.rows)
        batch.acked.extend(self._pending.acked)
        batch.refused.extend(self._pending.refused)
        for node, seq in self._pending.spent.items():
            batch.spent[node] = max(batch.spent.get(node, 0), seq)
        batch.report = batch.report or self._pending.report
        batch.waiters.extend(self._pending.waiters)
        self._pending = batch
        self._pending_bytes = sum(row_size(m) for _, m, _ in batch.rows)

    _last_loss_log = float("-inf")

    def _log_losses(self, losses: Counter[Cause]) -> None:
        # One line a minute at most: an outage drops readings continuously.
        now = time.monotonic()
        if now - self._last_loss_log >= 60:
            self._last_loss_log = now
            what = ", ".join(f"{n} {cause.value}" for cause, n in sorted(losses.items()))
            log.warning(
                "queue %s full (%.1f of %.1f MiB) or expiring: %s; %d lost in total",
                self.path,
                self._bytes / 2**20,
                self.limits.max_bytes / 2**20,
                what,
                self._dropped,
            )

    # -- helpers -------------------------------------------------------------------

    def _open_file(self) -> _QueueFile:
        if self._file is None:
            raise RuntimeError(f"queue {self.path} is not open")
        return self._file

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError(f"queue {self.path} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
