"""`InfluxSink`: readings, warnings and scores into InfluxDB 2, through a durable spool.

    async with InfluxSink(url, spool_path, org=..., bucket=..., token=...) as influx:
        await influx.write_reading(reading, placement, received_ms)
        await influx.flush()   # durable on local disk; InfluxDB gets it soon after

The stream awaits `flush()` before it commits (see `stream.agents`), so
whatever `flush()` returns for must survive a kill -9; and a slow or dead
InfluxDB must not stall the stream while there is room to keep its points.
So the work is split in two:

- `flush()` appends the lines written since the last flush to a local
  SQLite spool (`stream.sinks.spool`: WAL, `synchronous = FULL`, called
  through `asyncio.to_thread`) and returns. It does not talk to InfluxDB.
- A background shipper sends the spool to InfluxDB's `/api/v2/write`
  (`precision=ms`, gzip) in batches of up to `batch_size` lines, oldest
  first, and deletes a batch only once InfluxDB answered 204.

What the shipper does with an answer:

- 2xx: shipped; the lines leave the spool.
- 5xx, 429, a timeout or no connection: InfluxDB is down or busy. The same
  batch is tried again after an exponential backoff with jitter (at least
  InfluxDB's Retry-After); the spool keeps filling meanwhile.
- 401, 403, 404: InfluxDB refuses *us* (a revoked token, a deleted bucket),
  not the data: retried like an outage, with an error logged, because
  dead-lettering would stop sending everything until someone replays it.
- any other 4xx (400 bad line protocol or a field type conflict, 413, 422):
  the batch itself is refused; retrying cannot help. It is moved to the
  spool's `dead` table with InfluxDB's answer, a warning is logged (once per
  kind of refusal), and the shipper goes on. A partial write (400 with
  "partial write") has stored the batch's other points already; the dead
  copy keeps all of them for a replay (`requeue_dead`), which is harmless:
  a point written twice is stored once (same series and time).

The spool is bounded (`spool_max_bytes` of line protocol). When full, the
policy is refuse-new: `flush()` (and a write that would spill) waits until
the shipper has made room, so the stream stalls and Kafka keeps the
backlog, which is the choice that loses nothing. Memory is bounded too: at
most `batch_size` lines are held between flushes (more are spilled to the
spool), and the shipper reads one batch at a time.

State changes are logged once each: InfluxDB unreachable (with the time
and the points spooled), back, caught up (how many points in how long),
spool full, room again. `stats()` has the counters.

A clean stop (`__aexit__`) spools what is pending, ships what it can
within `stop_timeout_s` (not waiting while InfluxDB is down), and leaves
the rest in the spool; the next start ships it first.

Why aiohttp against `/api/v2/write` rather than influxdb_client's write
API: the sink needs the exact status of each request to choose between
retry, dead letter and delete, the Retry-After header, one request per
spool batch, and no batching or retrying of its own underneath. A POST is
all of that in a few lines; influxdb_client's async client (also on aiohttp)
is used by the tests and dashboards to *query*.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import random
import re
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

import aiohttp

from cityvitals.clock import Clock, SystemClock
from cityvitals.contract import AgentStatus, Placement, Reading, Warning
from cityvitals.store import StoreError
from cityvitals.tasks import cancel_and_wait, notify
from stream.sinks.points import (
    FieldValue,
    agent_line,
    pipeline_line,
    reading_line,
    response_line,
    score_line,
    warning_line,
)
from stream.sinks.spool import Chunk, DeadBatch, Spool, SpoolTotals

if TYPE_CHECKING:
    from alerts.metrics import Observation
    from cityvitals.settings import InfluxSettings

__all__ = [
    "InfluxSink",
    "InfluxSinkError",
    "InfluxSinkStats",
    "ShipperState",
    "backoff_delay",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

ShipperState = Literal["up", "down", "refused"]

#: Statuses that say InfluxDB will not take our requests at all (credentials,
#: a missing org or bucket), whatever the data: kept and retried.
_REFUSED = frozenset({401, 403, 404})
_DIGITS = re.compile(r"\d+")


class InfluxSinkError(StoreError):
    """The InfluxDB sink cannot take more points: it is closed or its spool failed.

    A `StoreError`, so the stream treats it like the embedded store's: the
    distributed worker exits, uncommitted, rather than retry a broken disk.
    """


@dataclass(frozen=True, slots=True)
class InfluxSinkStats:
    #: Lines written since the last flush (in memory).
    pending: int
    #: Lines spooled since this sink started.
    spooled: int
    #: Lines waiting in the spool now (including an earlier run's).
    in_spool: int
    spool_bytes: int
    #: Lines InfluxDB confirmed since this sink started.
    shipped: int
    #: Requests that failed and were tried again (5xx, 429, connection errors, 401/403/404).
    retried: int
    #: Lines moved to the dead table since this sink started.
    dead_lettered: int
    #: Age of the oldest line waiting in the spool (0 when it is empty).
    lag_s: float
    state: ShipperState


@dataclass(frozen=True, slots=True)
class _Answer:
    """What one write request came to."""

    status: int  # 0: no HTTP answer (connection error, timeout)
    reason: str
    retry_after_s: float = 0.0


class InfluxSink:
    """A `ReadingSink` (plus `write_score`) writing to InfluxDB 2 through the spool at `spool_path`.

    `backoff` is (first, longest) retry delay in seconds; `clock` gives the
    wall time of spool records and `rng` the jitter (both injectable for tests).
    """

    def __init__(
        self,
        url: str,
        spool_path: Path | str,
        *,
        org: str,
        bucket: str,
        token: str,
        spool_max_bytes: int = 1024 * 1024 * 1024,
        batch_size: int = 5_000,
        timeout_s: float = 10.0,
        stop_timeout_s: float = 10.0,
        backoff: tuple[float, float] = (0.5, 30.0),
        compress: bool = True,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if batch_size < 1 or spool_max_bytes < 1:
            raise ValueError("batch_size and spool_max_bytes must be positive")
        self.url = url.rstrip("/")
        self.spool_path = Path(spool_path)
        self.org = org
        self.bucket = bucket
        self._token = token
        self._max_bytes = spool_max_bytes
        self._batch_size = batch_size
        self._timeout_s = timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._backoff = backoff
        self._compress = compress
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._spool: Spool | None = None
        self._session: aiohttp.ClientSession | None = None
        self._shipper: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._flush_lock = asyncio.Lock()
        self._closed = True
        self._stopping = False
        self._failure: BaseException | None = None
        self._pending: list[str] = []
        self._totals = SpoolTotals(0, 0, None)
        # "Something was spooled" (wakes the shipper) and "the spool shrank or
        # the shipper's state changed" (wakes writers waiting for room and a
        # stop waiting for the drain).
        self._work = asyncio.Event()
        self._changed = asyncio.Event()
        self._state: ShipperState = "up"
        self._down_since = 0.0
        self._catching_up: tuple[float, int] | None = None
        self._full = False
        self._last_poison = ""
        self._spooled = 0
        self._shipped = 0
        self._retried = 0
        self._dead_lettered = 0

    @classmethod
    def from_settings(cls, settings: InfluxSettings, **kwargs: Any) -> InfluxSink:
        """The sink the `[influxdb]` table of cityvitals.toml describes."""
        return cls(
            settings.url,
            settings.spool_path,
            org=settings.org,
            bucket=settings.bucket,
            token=settings.token,
            spool_max_bytes=settings.spool_max_bytes,
            batch_size=settings.batch_size,
            timeout_s=settings.timeout_s,
            **kwargs,
        )

    # -- lifecycle ------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            try:
                self._spool = await asyncio.to_thread(Spool, self.spool_path)
                self._totals = await asyncio.to_thread(self._spool.totals)
            except (sqlite3.Error, OSError) as exc:
                raise InfluxSinkError(
                    f"cannot open the InfluxDB spool {self.spool_path}: {exc}"
                ) from exc
            self._session = aiohttp.ClientSession(
                headers={"Authorization": f"Token {self._token}"},
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            )
        except BaseException:
            await self._close_resources()
            raise
        self._closed = False
        self._stopping = False
        self._shipper = asyncio.create_task(self._ship_loop(), name="influx-shipper")
        if self._totals.lines:
            log.info(
                "InfluxDB sink: %d points from an earlier run are waiting in %s; shipping them",
                self._totals.lines,
                self.spool_path,
            )
        log.info("InfluxDB sink to %s (org %s, bucket %s)", self.url, self.org, self.bucket)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._failure is None and not self._closed:
                self.begin_stop()
                await self._spool_pending(wait_for_room=False)
                await self._drain(self._stop_timeout_s)
        finally:
            self._closed = True
            self._changed = notify(self._changed)  # wake writers waiting for room: closed
            await cancel_and_wait(self._shipper)
            await self._close_resources()
            left = self._totals.lines
            log.info(
                "InfluxDB sink stopped: %d points shipped%s",
                self._shipped,
                f"; {left} left in {self.spool_path} for the next start" if left else "",
            )

    def begin_stop(self) -> None:
        """The process is stopping: from now on the spool takes lines past its bound
        instead of making writers wait for room, and a flush waiting for room goes
        ahead now. A stop must neither hang on a full spool nor drop what was
        written, and what stops before this sink (the stream's last batch, the
        meters' last counts) flushes into it. It still ships until it is closed.
        """
        self._stopping = True
        self._changed = notify(self._changed)

    async def _close_resources(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._spool is not None:
            spool, self._spool = self._spool, None
            async with self._lock:
                await asyncio.to_thread(spool.close)

    async def _drain(self, timeout_s: float) -> None:
        """Wait until the spool is empty, `timeout_s` passed, or InfluxDB is down."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._totals.lines and self._state == "up":
            left = deadline - loop.time()
            if left <= 0:
                return
            changed = self._changed
            try:
                async with asyncio.timeout(left):
                    await changed.wait()
            except TimeoutError:
                return
            if self._shipper is None or self._shipper.done():
                return

    # -- the ReadingSink interface -----------------------------------------------

    async def write_reading(self, reading: Reading, placement: Placement, received_ms: int) -> None:
        await self._add(reading_line(reading, placement, received_ms))

    async def write_warning(self, warning: Warning, body: bytes) -> None:
        """`body` (the encoded warning) is not needed here: the point has the fields."""
        await self._add(warning_line(warning))

    async def write_score(
        self, reading: Reading, placement: Placement, metric: str, score: float, worst: str
    ) -> None:
        """The anomaly score of one metric of `reading`, and the detector that gave it."""
        await self._add(score_line(reading, placement, metric, score, worst))

    async def write_response(self, o: Observation) -> None:
        """One alert response time (the alerts role's, `alerts.metrics`)."""
        await self._add(response_line(o))

    async def write_pipeline(
        self,
        role: str,
        instance: str,
        fields: Mapping[str, FieldValue],
        ts_ms: int,
        *,
        receiver: str = "",
    ) -> None:
        """One role's counters (`stream.sinks.meter`)."""
        await self._add(pipeline_line(role, instance, fields, ts_ms, receiver=receiver))

    async def write_agent(self, status: AgentStatus, received_ms: int) -> None:
        """One edge agent's heartbeat (the gateway's)."""
        await self._add(agent_line(status, received_ms))

    async def _add(self, text: str) -> None:
        self._check_open()
        self._pending.append(text)
        if len(self._pending) >= self._batch_size:
            # Memory stays bounded however rarely the caller flushes.
            await self.flush()

    async def flush(self) -> None:
        """Return once every line written before this call is durable in the spool.

        Waits while the spool is full (refuse-new: the stream stalls, Kafka
        keeps the backlog). Raises `InfluxSinkError` if the spool cannot be
        written or the sink is closed.
        """
        self._check_open()
        await self._spool_pending(wait_for_room=True)

    async def _spool_pending(self, *, wait_for_room: bool) -> None:
        # One flush at a time: a flush that finds nothing pending because
        # another task's flush took its lines must not return before that
        # flush has made them durable.
        async with self._flush_lock:
            if not self._pending:
                return
            if wait_for_room:
                # Lines written while waiting go with these.
                await self._wait_for_room(sum(map(len, self._pending)))
            lines, self._pending = self._pending, []
            try:
                totals = await self._locked(self._append, lines)
            except BaseException as exc:
                # Not spooled (or not known to be): keep them for the next
                # flush. Should the append have happened after all, the
                # repeat is harmless: InfluxDB stores a point written twice once.
                self._pending[:0] = lines
                if isinstance(exc, sqlite3.Error):
                    self._failure = exc
                    raise InfluxSinkError(f"InfluxDB spool {self.spool_path}: {exc}") from exc
                raise
            self._spooled += len(lines)
            self._totals = totals
            self._work = notify(self._work)

    def _append(self, lines: list[str]) -> SpoolTotals:
        spool = self._open_spool()
        spool.append(lines, now_ms=self._clock.now_ms(), chunk_lines=self._batch_size)
        return spool.totals()

    async def _wait_for_room(self, size: int) -> None:
        while (
            not self._stopping
            and self._totals.bytes
            and self._totals.bytes + size > self._max_bytes
        ):
            if not self._full:
                self._full = True
                log.warning(
                    "InfluxDB spool full (%s of %s, %d points): the stream waits"
                    " until InfluxDB takes points",
                    _size(self._totals.bytes),
                    _size(self._max_bytes),
                    self._totals.lines,
                )
            shrunk = self._changed
            await shrunk.wait()
            self._check_open()
        if self._full:
            self._full = False
            log.info("InfluxDB spool has room again (%s)", _size(self._totals.bytes))

    def _check_open(self) -> None:
        if self._failure is not None:
            raise InfluxSinkError(
                f"InfluxDB spool {self.spool_path} failed: {self._failure}"
            ) from self._failure
        if self._closed:
            raise InfluxSinkError(f"InfluxDB sink (spool {self.spool_path}) is not open")

    def _open_spool(self) -> Spool:
        if self._spool is None:
            raise InfluxSinkError(f"InfluxDB sink (spool {self.spool_path}) is not open")
        return self._spool

    async def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a spool call in a worker thread, one at a time."""
        async with self._lock:
            call = asyncio.ensure_future(asyncio.to_thread(fn, *args))
            try:
                return await asyncio.shield(call)
            except asyncio.CancelledError:
                # A thread cannot be stopped: hold the lock until it is done,
                # so the connection is never used by two threads at once or
                # closed under one.
                while not call.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait({call})
                raise

    async def wait_shipped(self) -> None:
        """Flush, then return once InfluxDB confirmed everything (the spool is empty).

        Waits as long as InfluxDB is down: bound it with `asyncio.timeout`.
        """
        await self.flush()
        while self._totals.lines:
            changed = self._changed
            await changed.wait()
            self._check_open()

    # -- looking at it ------------------------------------------------------------

    def stats(self) -> InfluxSinkStats:
        oldest = self._totals.oldest_ms
        lag = 0.0 if oldest is None else max(0.0, self._clock.now() - oldest / 1000)
        return InfluxSinkStats(
            pending=len(self._pending),
            spooled=self._spooled,
            in_spool=self._totals.lines,
            spool_bytes=self._totals.bytes,
            shipped=self._shipped,
            retried=self._retried,
            dead_lettered=self._dead_lettered,
            lag_s=lag,
            state=self._state,
        )

    async def dead(self) -> list[DeadBatch]:
        """The batches InfluxDB refused, oldest first."""
        return await self._locked(self._dead)

    def _dead(self) -> list[DeadBatch]:
        return self._open_spool().dead()

    async def requeue_dead(self, ids: Sequence[int] | None = None) -> int:
        """Put dead batches (all, or those with `ids`) back to be shipped; how many lines."""
        count, totals = await self._locked(self._requeue, ids)
        self._totals = totals
        self._work = notify(self._work)
        return count

    def _requeue(self, ids: Sequence[int] | None) -> tuple[int, SpoolTotals]:
        spool = self._open_spool()
        count = spool.requeue_dead(ids, now_ms=self._clock.now_ms())
        return count, spool.totals()

    # -- shipping -----------------------------------------------------------------

    async def _ship_loop(self) -> None:
        try:
            await self._ship()
        except Exception as exc:
            # The spool cannot be read or changed (a disk fault), or our bug:
            # nothing would ship any more, so say so and stop taking points.
            # The stream's next write fails with InfluxSinkError (a worker
            # exits uncommitted); the spool keeps what it has.
            log.exception("InfluxDB shipper failed; the sink takes no more points")
            self._failure = exc
            self._changed = notify(self._changed)

    async def _ship(self) -> None:
        attempt = 0
        while True:
            work = self._work
            chunks = await self._locked(self._peek)
            if not chunks:
                await work.wait()
                continue
            answer = await self._send(chunks)
            if 200 <= answer.status < 300:
                attempt = 0
                await self._shipped_ok(chunks)
            elif _retryable(answer.status):
                self._retried += 1
                self._went_down(answer)
                delay = backoff_delay(
                    attempt, self._backoff, rng=self._rng, retry_after_s=answer.retry_after_s
                )
                attempt += 1
                await asyncio.sleep(delay)
            else:
                attempt = 0
                await self._poisoned(chunks, answer)

    def _peek(self) -> list[Chunk]:
        return self._open_spool().peek(max_lines=self._batch_size)

    async def _send(self, chunks: Sequence[Chunk]) -> _Answer:
        session = self._session
        if session is None:
            return _Answer(0, "the sink is closed")
        body = "\n".join(c.body for c in chunks).encode()
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self._compress:
            body = await asyncio.to_thread(gzip.compress, body, 1)
            headers["Content-Encoding"] = "gzip"
        try:
            async with session.post(
                f"{self.url}/api/v2/write",
                params={"org": self.org, "bucket": self.bucket, "precision": "ms"},
                data=body,
                headers=headers,
            ) as response:
                if 200 <= response.status < 300:
                    return _Answer(response.status, "")
                text = (await response.text(errors="replace"))[:2000]
                return _Answer(response.status, _message(text), _retry_after(response.headers))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return _Answer(0, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)

    async def _shipped_ok(self, chunks: Sequence[Chunk]) -> None:
        ids = [c.id for c in chunks]
        self._totals = await self._locked(self._delete, ids)
        self._shipped += sum(c.lines for c in chunks)
        self._changed = notify(self._changed)
        now = time.monotonic()
        if self._state != "up":
            log.info(
                "InfluxDB at %s back after %.1f s; shipping the %d spooled points",
                self.url,
                now - self._down_since,
                self._totals.lines + sum(c.lines for c in chunks),
            )
            self._state = "up"
            self._catching_up = (now, self._shipped - sum(c.lines for c in chunks))
        if self._catching_up is not None and not self._totals.lines:
            began, shipped_before = self._catching_up
            self._catching_up = None
            log.info(
                "InfluxDB caught up: shipped %d points in %.1f s",
                self._shipped - shipped_before,
                now - began,
            )
            await self._locked(self._vacuum)

    def _delete(self, ids: list[int]) -> SpoolTotals:
        spool = self._open_spool()
        spool.delete(ids)
        return spool.totals()

    def _vacuum(self) -> None:
        self._open_spool().vacuum()

    def _went_down(self, answer: _Answer) -> None:
        state: ShipperState = "refused" if answer.status in _REFUSED else "down"
        if self._state == "up":
            self._down_since = time.monotonic()
            self._catching_up = None
        if state != self._state:
            self._state = state
            self._changed = notify(self._changed)
            since = time.strftime("%H:%M:%S", time.localtime(self._clock.now()))
            what = f"HTTP {answer.status}: {answer.reason}" if answer.status else answer.reason
            if state == "refused":
                log.error(
                    "InfluxDB at %s refuses our writes since %s (%s): check the token, org %r"
                    " and bucket %r; %d points spooled, kept until it takes them",
                    self.url,
                    since,
                    what,
                    self.org,
                    self.bucket,
                    self._totals.lines,
                )
            else:
                log.warning(
                    "InfluxDB at %s unreachable since %s (%s); %d points spooled, more are"
                    " kept until it is back",
                    self.url,
                    since,
                    what,
                    self._totals.lines,
                )

    async def _poisoned(self, chunks: Sequence[Chunk], answer: _Answer) -> None:
        lines = sum(c.lines for c in chunks)
        dead_id, totals = await self._locked(self._dead_letter, chunks, answer)
        self._totals = totals
        self._dead_lettered += lines
        self._changed = notify(self._changed)
        kind = _DIGITS.sub("N", f"{answer.status} {answer.reason}")
        if kind != self._last_poison:
            self._last_poison = kind
            log.warning(
                "InfluxDB refused a batch of %d points (HTTP %d: %s); moved to the dead table"
                " of %s (batch %d), shipping goes on. Further batches refused the same way are"
                " not logged",
                lines,
                answer.status,
                answer.reason,
                self.spool_path,
                dead_id,
            )

    def _dead_letter(self, chunks: Sequence[Chunk], answer: _Answer) -> tuple[int, SpoolTotals]:
        spool = self._open_spool()
        dead_id = spool.dead_letter(
            chunks, status=answer.status, reason=answer.reason, now_ms=self._clock.now_ms()
        )
        return dead_id, spool.totals()


def backoff_delay(
    attempt: int,
    backoff: tuple[float, float],
    *,
    rng: random.Random,
    retry_after_s: float = 0.0,
) -> float:
    """Seconds to wait before try `attempt + 1`: exponential, with "equal jitter".

    The step doubles from `backoff[0]` up to `backoff[1]`; the delay is
    between half of it and all of it, so retries of several workers spread
    out without any of them hammering. InfluxDB's Retry-After is honoured
    up to the longest step.

    >>> rng = random.Random(1)
    >>> [round(backoff_delay(a, (0.5, 30.0), rng=rng), 2) for a in range(8)]
    [0.28, 0.92, 1.76, 2.51, 5.98, 11.6, 24.77, 26.83]
    >>> backoff_delay(0, (0.5, 30.0), rng=rng, retry_after_s=12.0)
    12.0
    """
    first, longest = backoff
    step = min(longest, first * 2 ** min(attempt, 30))
    delay: float = step / 2 + rng.uniform(0, step / 2)
    return max(delay, min(retry_after_s, longest))


def _retryable(status: int) -> bool:
    """Whether trying the same batch again can help (see the module doc)."""
    return status in {0, 429} or status >= 500 or status in _REFUSED


def _message(text: str) -> str:
    """InfluxDB's error message out of its JSON answer (or the text as it is)."""
    try:
        answer = json.loads(text)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("message"), str):
        return str(answer["message"])
    return text.strip() or "(no message)"


def _size(count: int) -> str:
    """Bytes for a log line: 2.9 kB, 12.0 MB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def _retry_after(headers: Any) -> float:
    value = headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return 0.0
