"""The embedded store: everything the pipeline writes, in one SQLite file.

The default sink when nothing else is installed. Its tables mirror the
InfluxDB schema the production sink uses (docs/influxdb.md): `readings`,
`warnings` and `scores` are the measurements `reading`, `warning` and
`score`, with their tags and fields as columns (a reading's metrics as one
JSON object), so a query, a dashboard or a test can read either sink the
same way. `dead_letters` and `notifications` are the store's own. A file
written by an older cityvitals is upgraded when it is opened
(`SCHEMA_VERSION`).

Writes are asynchronous and batched: callers put rows on a bounded queue
(awaiting when it is full, so a slow disk slows the stream instead of losing
data) and one writer task commits them in batches through
`asyncio.to_thread`, keeping the event loop free. `flush()` returns once
everything queued before it is committed.

Readings are keyed by (node, seq): writing the same reading twice stores it
once, which is what makes the pipeline's end-to-end guarantee "exactly once
per (node, seq)" checkable.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import msgspec

from cityvitals.contract import DeadLetter, Placement, Reading, Reason, Warning
from cityvitals.errors import CityvitalsError
from cityvitals.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class StoreError(CityvitalsError):
    """The store cannot take more rows: its writer failed or it is closed."""


#: `PRAGMA user_version` of the schema below. 1: the tables before scores and the
#: warnings' InfluxDB fields; `_upgrade` brings such a file up to date on open.
SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    node TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
    ts_ms INTEGER NOT NULL, received_ms INTEGER NOT NULL,
    district TEXT NOT NULL, street TEXT NOT NULL, grid TEXT NOT NULL, unit TEXT NOT NULL,
    lat REAL NOT NULL, lon REAL NOT NULL,
    fields TEXT NOT NULL, battery_pct REAL, rssi_dbm REAL,
    PRIMARY KEY (node, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS readings_time ON readings (ts_ms);
CREATE TABLE IF NOT EXISTS warnings (
    id INTEGER PRIMARY KEY, fingerprint TEXT NOT NULL, rule TEXT NOT NULL,
    node TEXT NOT NULL, kind TEXT NOT NULL, metric TEXT NOT NULL,
    level INTEGER NOT NULL, previous INTEGER NOT NULL, value REAL NOT NULL,
    threshold REAL, ts_ms INTEGER NOT NULL, seq INTEGER NOT NULL,
    district TEXT NOT NULL, street TEXT NOT NULL, grid TEXT NOT NULL,
    body BLOB NOT NULL,
    unit TEXT NOT NULL DEFAULT '', predicted_crossing_ms INTEGER,
    area_scope TEXT NOT NULL DEFAULT '', area TEXT NOT NULL DEFAULT '',
    members TEXT, total INTEGER, lat REAL, lon REAL
);
CREATE INDEX IF NOT EXISTS warnings_node ON warnings (node, ts_ms);
CREATE TABLE IF NOT EXISTS scores (
    node TEXT NOT NULL, metric TEXT NOT NULL, ts_ms INTEGER NOT NULL, kind TEXT NOT NULL,
    district TEXT NOT NULL, street TEXT NOT NULL, grid TEXT NOT NULL, unit TEXT NOT NULL,
    anomaly_score REAL NOT NULL, worst TEXT NOT NULL,
    PRIMARY KEY (node, metric, ts_ms)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY, received_ms INTEGER NOT NULL, source TEXT NOT NULL,
    topic TEXT NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL,
    payload BLOB NOT NULL, payload_size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY, notification_id TEXT NOT NULL, fingerprint TEXT NOT NULL,
    event TEXT NOT NULL, level INTEGER NOT NULL, node TEXT NOT NULL,
    receiver TEXT NOT NULL, outcome TEXT NOT NULL, detail TEXT NOT NULL,
    ts_ms INTEGER NOT NULL
);
"""

#: Created after `_upgrade`: on a version-1 file the columns do not exist before it.
AREA_INDEX = (
    "CREATE INDEX IF NOT EXISTS warnings_area ON warnings (area_scope, area, ts_ms)"
    " WHERE area != ''"
)

#: The warnings columns version 2 added, as `_upgrade` adds them to an older file.
_WARNING_COLUMNS_V2 = (
    ("unit", "TEXT NOT NULL DEFAULT ''"),
    ("predicted_crossing_ms", "INTEGER"),
    ("area_scope", "TEXT NOT NULL DEFAULT ''"),
    ("area", "TEXT NOT NULL DEFAULT ''"),
    ("members", "TEXT"),
    ("total", "INTEGER"),
    ("lat", "REAL"),
    ("lon", "REAL"),
)

_INSERT = {
    "readings": "INSERT OR IGNORE INTO readings VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    "warnings": "INSERT INTO warnings (fingerprint, rule, node, kind, metric, level, previous,"
    " value, threshold, ts_ms, seq, district, street, grid, body, unit, predicted_crossing_ms,"
    " area_scope, area, members, total, lat, lon)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    # A second score of one (node, metric, time) replaces the first, as a second
    # point of one series and time does in InfluxDB.
    "scores": "INSERT OR REPLACE INTO scores VALUES (?,?,?,?,?,?,?,?,?,?)",
    "dead_letters": "INSERT INTO dead_letters (received_ms, source, topic, reason, detail,"
    " payload, payload_size) VALUES (?,?,?,?,?,?,?)",
    "notifications": "INSERT INTO notifications (notification_id, fingerprint, event, level,"
    " node, receiver, outcome, detail, ts_ms) VALUES (?,?,?,?,?,?,?,?,?)",
}

_warning_decoder = msgspec.json.Decoder(Warning)
_fields_encoder = msgspec.json.Encoder()

#: Sentinel row: asks the writer to signal a flush future once it is reached.
_FLUSH = "flush"


def _warning_extras(warning: Warning) -> tuple[Any, ...]:
    """The warnings columns after `body`: the placement's unit, the forecast, and for
    an area warning its scope, name, members, total and centroid (as InfluxDB has them)."""
    area = warning.area
    if area is None:
        return (
            warning.placement.unit,
            warning.predicted_crossing_ms,
            "",
            "",
            None,
            None,
            None,
            None,
        )
    return (
        warning.placement.unit,
        warning.predicted_crossing_ms,
        area.scope,
        area.name,
        ",".join(m.node for m in area.members),
        area.total,
        warning.placement.lat,
        warning.placement.lon,
    )


@dataclass(frozen=True, slots=True)
class StoreStats:
    readings: int
    warnings: int
    dead_letters: int
    notifications: int
    scores: int


class EmbeddedStore:
    """SQLite-backed sink; use as an async context manager.

    >>> import asyncio, tempfile, pathlib
    >>> async def demo():
    ...     path = pathlib.Path(tempfile.mkdtemp()) / "cv.sqlite3"
    ...     async with EmbeddedStore(path) as store:
    ...         await store.flush()
    ...         return store.stats()
    >>> asyncio.run(demo())
    StoreStats(readings=0, warnings=0, dead_letters=0, notifications=0, scores=0)
    """

    def __init__(
        self, path: Path | str, *, queue_size: int = 20_000, batch_size: int = 1_000
    ) -> None:
        self.path = Path(path)
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._db: sqlite3.Connection | None = None
        self._writer: asyncio.Task[None] | None = None
        self._committing: asyncio.Future[None] | None = None
        self._failure: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await asyncio.to_thread(self._open)
        self._writer = asyncio.create_task(self._write_loop(), name="store-writer")
        log.info("store open at %s", self.path)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._writer is not None and not self._writer.done():
                await self.flush()
        finally:
            await cancel_and_wait(self._writer)
            committing = self._committing
            if committing is not None and not committing.done():
                # The writer was cancelled mid-commit; the thread is still in it, and
                # closing the connection under it would crash the process.
                await asyncio.wait([committing])
            if self._db is not None:
                self._db.close()
                self._db = None
            log.info("store closed")

    def _open(self) -> sqlite3.Connection:
        # check_same_thread=False: the connection is used from to_thread workers,
        # one at a time (the single writer task serialises every use).
        # A generous busy timeout: in the distributed mode several stream
        # workers on one host may share the file, taking turns to commit.
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=60.0)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            # One transaction, taken for writing up front: two workers opening an
            # old file together must not both upgrade it.
            db.executescript("BEGIN IMMEDIATE;" + SCHEMA)
            try:
                self._upgrade(db)
                db.execute(AREA_INDEX)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except BaseException:
            db.close()
            raise
        return db

    def _upgrade(self, db: sqlite3.Connection) -> None:
        """Bring a file written by an older cityvitals up to `SCHEMA_VERSION`: add the
        warnings columns it lacks and fill them from each warning's stored body."""
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store {self.path} has schema version {version}, newer than this "
                f"cityvitals writes ({SCHEMA_VERSION}): upgrade cityvitals, or give it "
                "another data directory"
            )
        have = {row[1] for row in db.execute("PRAGMA table_info(warnings)")}
        missing = [(name, decl) for name, decl in _WARNING_COLUMNS_V2 if name not in have]
        if not missing:
            return
        for name, decl in missing:
            db.execute(f"ALTER TABLE warnings ADD COLUMN {name} {decl}")
        filled = unreadable = 0
        for row_id, body in db.execute("SELECT id, body FROM warnings").fetchall():
            try:
                warning = _warning_decoder.decode(body)
            except msgspec.DecodeError:
                unreadable += 1  # kept as it is: its body is still there to look at
                continue
            db.execute(
                "UPDATE warnings SET unit = ?, predicted_crossing_ms = ?, area_scope = ?,"
                " area = ?, members = ?, total = ?, lat = ?, lon = ? WHERE id = ?",
                (*_warning_extras(warning), row_id),
            )
            filled += 1
        log.info(
            "store %s upgraded from schema %d to %d: added warnings columns %s, filled "
            "for %d warnings from their bodies%s",
            self.path,
            version or 1,
            SCHEMA_VERSION,
            ", ".join(name for name, _ in missing),
            filled,
            f" ({unreadable} unreadable {'body' if unreadable == 1 else 'bodies'} left empty)"
            if unreadable
            else "",
        )

    # -- writing ---------------------------------------------------------------

    async def write_reading(self, reading: Reading, placement: Placement, received_ms: int) -> None:
        row = (
            reading.node,
            reading.seq,
            reading.kind.value,
            reading.ts_ms,
            received_ms,
            placement.district,
            placement.street,
            placement.grid,
            placement.unit,
            placement.lat,
            placement.lon,
            _fields_encoder.encode(reading.metrics).decode(),
            reading.battery_pct,
            reading.rssi_dbm,
        )
        await self._put("readings", row)

    async def write_warning(self, warning: Warning, body: bytes) -> None:
        """Store a warning; `body` is its encoded form, kept whole for replays."""
        p = warning.placement
        row = (
            warning.fingerprint,
            warning.rule,
            warning.node,
            warning.kind.value,
            warning.metric,
            int(warning.level),
            int(warning.previous),
            warning.value,
            warning.threshold,
            warning.ts_ms,
            warning.seq,
            p.district,
            p.street,
            p.grid,
            body,
            *_warning_extras(warning),
        )
        await self._put("warnings", row)

    async def write_score(
        self, reading: Reading, placement: Placement, metric: str, score: float, worst: str
    ) -> None:
        """Store one metric's anomaly score (InfluxDB's `score` point)."""
        row = (
            reading.node,
            metric,
            reading.ts_ms,
            reading.kind.value,
            placement.district,
            placement.street,
            placement.grid,
            placement.unit,
            score,
            worst,
        )
        await self._put("scores", row)

    async def write_dead_letter(self, letter: DeadLetter) -> None:
        row = (
            letter.received_ms,
            letter.source,
            letter.topic,
            letter.reason.value,
            letter.detail,
            letter.payload,
            letter.payload_size,
        )
        await self._put("dead_letters", row)

    async def write_notification(
        self,
        *,
        notification_id: str,
        fingerprint: str,
        event: str,
        level: int,
        node: str,
        receiver: str,
        outcome: str,
        detail: str,
        ts_ms: int,
    ) -> None:
        row = (notification_id, fingerprint, event, level, node, receiver, outcome, detail, ts_ms)
        await self._put("notifications", row)

    def _check_writer(self) -> asyncio.Task[None]:
        if self._failure is not None:
            raise StoreError(f"store writer failed: {self._failure}") from self._failure
        if self._writer is None or self._writer.done():
            raise StoreError(f"store {self.path} is not open")
        return self._writer

    async def _put(self, table: str, row: Any) -> None:
        writer = self._check_writer()
        if not self._queue.full():
            self._queue.put_nowait((table, row))
            return
        # Full: wait for room, but not on a writer that has died meanwhile.
        put = asyncio.ensure_future(self._queue.put((table, row)))
        waiting: set[asyncio.Future[Any]] = {put, writer}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Also when we are cancelled: a put left behind would queue the
            # row after our caller was told it failed.
            put.cancel()
        if not put.done() or put.cancelled():
            self._check_writer()

    async def flush(self) -> None:
        """Return when every row queued before this call is committed.

        Raises `StoreError` if the writer failed: a flush never reports rows
        as safe that are not.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._put(_FLUSH, done)
        writer = self._check_writer()
        waiting: set[asyncio.Future[Any]] = {done, writer}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not done.done():
            done.cancel()
            self._check_writer()
        done.result()  # re-raises the commit failure, if that is what ended it

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            rows: dict[str, list[Any]] = {}
            flushes: list[asyncio.Future[None]] = []
            for table, row in batch:
                if table == _FLUSH:
                    flushes.append(row)
                else:
                    rows.setdefault(table, []).append(row)
            try:
                if rows:
                    self._committing = asyncio.ensure_future(asyncio.to_thread(self._commit, rows))
                    self._committing.add_done_callback(lambda f: f.cancelled() or f.exception())
                    await asyncio.shield(self._committing)
            except Exception as exc:
                # A disk that is full or a file that vanished is not something
                # to retry blindly: record it, wake waiters, and stop writing.
                self._failure = exc
                log.exception(
                    "store writer failed; %d rows not written", sum(map(len, rows.values()))
                )
                failure = StoreError(f"store {self.path}: commit failed: {exc}")
                failure.__cause__ = exc
                for fut in flushes:
                    if not fut.done():
                        fut.set_exception(failure)
                raise
            for fut in flushes:
                if not fut.done():
                    fut.set_result(None)

    def _commit(self, rows: dict[str, list[Any]]) -> None:
        db = self._db
        assert db is not None  # noqa: S101 - only called while open
        with db:  # one transaction per batch
            db.execute("BEGIN")
            for table, batch in rows.items():
                db.executemany(_INSERT[table], batch)

    # -- reading back (for summaries, tests and the CLI) ----------------------

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        # A connection of its own: WAL lets it read committed rows while the
        # writer is mid-transaction, and it never shares the writer's thread.
        db = sqlite3.connect(self.path)
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()

    def stats(self) -> StoreStats:
        counts = [
            self._query(f"SELECT count(*) FROM {table}")[0][0]  # noqa: S608 - fixed names
            for table in ("readings", "warnings", "dead_letters", "notifications", "scores")
        ]
        return StoreStats(*counts)

    def reading_keys(self) -> set[tuple[str, int]]:
        return {(node, seq) for node, seq in self._query("SELECT node, seq FROM readings")}

    def newest_reading_ms(self) -> int | None:
        """The time of the newest reading stored; None while there is none."""
        newest: int | None = self._query("SELECT max(ts_ms) FROM readings")[0][0]
        return newest

    def warnings(self) -> list[Warning]:
        return [
            _warning_decoder.decode(body)
            for (body,) in self._query("SELECT body FROM warnings ORDER BY id")
        ]

    def scores(self) -> dict[tuple[str, str, int], tuple[float, str]]:
        """(node, metric, ts_ms) -> (anomaly_score, worst detector)."""
        rows = self._query("SELECT node, metric, ts_ms, anomaly_score, worst FROM scores")
        return {(r[0], r[1], r[2]): (r[3], r[4]) for r in rows}

    def dead_letters(self) -> list[DeadLetter]:
        rows = self._query(
            "SELECT received_ms, source, topic, reason, detail, payload, payload_size"
            " FROM dead_letters ORDER BY id"
        )
        return [
            DeadLetter(
                v=1,
                received_ms=r[0],
                source=r[1],
                topic=r[2],
                reason=Reason(r[3]),
                detail=r[4],
                payload=bytes(r[5]),
                payload_size=r[6],
            )
            for r in rows
        ]

    def notifications(self) -> list[tuple[str, str, int, str, str, str]]:
        """(fingerprint, event, level, node, receiver, outcome), in delivery order."""
        return self._query(
            "SELECT fingerprint, event, level, node, receiver, outcome"
            " FROM notifications ORDER BY id"
        )
