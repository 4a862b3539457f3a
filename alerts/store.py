"""The alert store: the alert book and the notification outbox, in one SQLite file.

What makes a restart lose nothing and send nothing twice under a new key:

- `alerts`: one row per fingerprint, the alert as it is now (firing or
  resolved) and the (ts_ms, seq) of the last warning applied to it. The
  book is rebuilt from it at start, so a warning read again after a restart
  (the consumer re-reads what it had not committed) changes nothing, and a
  level change after a restart updates the alert instead of opening a
  second one under a new id.
- `outbox`: one row per (notification, receiver), written in the same
  transaction as the alert change that caused it, then marked `delivered`,
  or `dead` with the reason once the service gives up on it. Rows still
  `pending` at start are delivered again, in order, under their own
  idempotency key; a delivery in flight at a crash is sent again under the
  same key, which the receiver drops as a duplicate.

Writes go through one connection from worker threads (`asyncio.to_thread`),
one at a time (a lock), so the event loop never waits on the disk.

>>> import asyncio
>>> async def demo():
...     async with AlertStore(None) as store:
...         state = await store.load()
...         return len(state.open), await store.pending()
>>> asyncio.run(demo())
(0, [])
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self

import msgspec

from alerts.incidents import Incident
from alerts.model import Alert, Notification
from alerts.silences import Silence
from cityvitals.errors import CityvitalsError

__all__ = ["AlertStore", "AlertStoreError", "BookState", "OutboxRow"]

SCHEMA_VERSION: Final = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    fingerprint TEXT PRIMARY KEY, state TEXT NOT NULL,
    last_ts_ms INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    body BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS alerts_resolved ON alerts (state, last_ts_ms);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY, notification_id TEXT NOT NULL, receiver TEXT NOT NULL,
    fingerprint TEXT NOT NULL, event TEXT NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, created_ms INTEGER NOT NULL,
    settled_ms INTEGER, detail TEXT NOT NULL DEFAULT '', body BLOB NOT NULL,
    UNIQUE (notification_id, receiver)
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS outbox_dead ON outbox (id) WHERE state = 'dead';
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, updated_ms INTEGER NOT NULL, body BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS incidents_open ON incidents (updated_ms) WHERE state = 'open';
CREATE TABLE IF NOT EXISTS silences (
    id TEXT PRIMARY KEY, ends_ms INTEGER NOT NULL, body BLOB NOT NULL
) WITHOUT ROWID;
"""

RowState = Literal["pending", "delivered", "dead"]

_alert_decoder: Final = msgspec.json.Decoder(Alert)
_notification_decoder: Final = msgspec.json.Decoder(Notification)
_silence_decoder: Final = msgspec.json.Decoder(Silence)
_incident_decoder: Final = msgspec.json.Decoder(Incident)
_encoder: Final = msgspec.json.Encoder()


class AlertStoreError(CityvitalsError):
    """The alert store file cannot be used (another schema, a broken disk)."""


@dataclass(frozen=True, slots=True)
class BookState:
    """What the alert book is rebuilt from: the open alerts, oldest first, and the
    (fingerprint, ts_ms, seq) of the last warning of recently resolved ones."""

    open: tuple[Alert, ...]
    resolved: tuple[tuple[str, int, int], ...]


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One (notification, receiver) of the outbox, as an operator lists it."""

    id: int
    receiver: str
    state: RowState
    attempts: int
    created_ms: int
    settled_ms: int | None
    detail: str
    notification: Notification


class AlertStore:
    """The alert book's rows and the outbox; `None` as the path keeps them in memory
    (tests, a throwaway demo). Use as an async context manager."""

    def __init__(self, path: Path | str | None) -> None:
        self.path = None if path is None else Path(path)
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()
        #: The worker thread's current statement: closing the connection under it
        #: would crash the process (sqlite3 is not safe against that).
        self._inflight: asyncio.Future[Any] | None = None

    async def __aenter__(self) -> Self:
        self._db = await asyncio.to_thread(self._open)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        work = self._inflight
        if work is not None and not work.done():
            # A caller cancelled mid-statement: the thread is still in it.
            await asyncio.wait([work])
        async with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _open(self) -> sqlite3.Connection:
        where = ":memory:" if self.path is None else str(self.path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(where, isolation_level=None, check_same_thread=False, timeout=30)
            db.execute("PRAGMA journal_mode = WAL")
            # FULL: a notification the book has recorded must survive a power cut,
            # or the restart would not know it still owes it.
            db.execute("PRAGMA synchronous = FULL")
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version not in (0, SCHEMA_VERSION):
                db.close()
                raise AlertStoreError(
                    f"alert store {where} has schema version {version}; this cityvitals "
                    f"reads {SCHEMA_VERSION}"
                )
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise AlertStoreError(f"alert store {where}: {exc}") from exc
        return db

    async def _run(self, fn: Any, *args: Any) -> Any:
        async with self._lock:
            if self._db is None:
                raise AlertStoreError("the alert store is not open")
            previous = self._inflight
            if previous is not None and not previous.done():
                await asyncio.wait([previous])  # one statement on the connection at a time
            work = asyncio.ensure_future(asyncio.to_thread(fn, self._db, *args))
            # Retrieved even when nobody awaits it any more (its caller was cancelled).
            work.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._inflight = work
            try:
                # Shielded: a cancelled caller lets go, the statement runs to its end,
                # and `__aexit__` waits for it before closing the connection.
                return await asyncio.shield(work)
            except sqlite3.Error as exc:
                raise AlertStoreError(f"alert store {self.path or ':memory:'}: {exc}") from exc

    # -- the book --------------------------------------------------------------

    async def load(self, *, resolved_limit: int = 100_000) -> BookState:
        """The open alerts and the last `resolved_limit` resolved ones' last warnings."""
        return await self._run(_load, resolved_limit)  # type: ignore[no-any-return]

    async def record(
        self,
        alert: Alert,
        notification: Notification | None,
        receivers: Sequence[str],
        *,
        now_ms: int,
    ) -> None:
        """In one transaction: the alert as it is after a warning, and the notification
        it caused, owed to each receiver (again: a repeat of a recorded one is ignored)."""
        await self._run(_record, alert, notification, tuple(receivers), now_ms)

    # -- the outbox ------------------------------------------------------------

    async def owe(self, notification: Notification, receiver: str, *, now_ms: int) -> bool:
        """Owe a notification to one more receiver (the fallback of one that failed);
        False if it was owed to that receiver already (another gave up on it too,
        in this run or before a restart)."""
        return await self._run(_owe, notification, (receiver,), now_ms)  # type: ignore[no-any-return]

    async def settle(
        self,
        notification_id: str,
        receiver: str,
        state: Literal["delivered", "dead"],
        *,
        attempts: int,
        detail: str,
        now_ms: int,
    ) -> None:
        await self._run(_settle, (notification_id, receiver), (state, attempts, detail, now_ms))

    async def pending(self) -> list[tuple[str, Notification]]:
        """(receiver, notification) still owed, in the order they were recorded."""
        return await self._run(_pending)  # type: ignore[no-any-return]

    async def owed_counts(self) -> dict[str, int]:
        """How many notifications each receiver is still owed."""
        return await self._run(_owed_counts)  # type: ignore[no-any-return]

    async def owed(self, receiver: str, *, limit: int) -> list[Notification]:
        """Up to `limit` notifications still owed to `receiver`, oldest first (what a
        lane that fell behind takes back from the store)."""
        return await self._run(_owed, receiver, limit)  # type: ignore[no-any-return]

    async def rows(self, state: RowState | None = None, *, limit: int = 1000) -> list[OutboxRow]:
        """The outbox, newest first; `state` to list only pending, delivered or dead rows."""
        return await self._run(_rows, state, limit)  # type: ignore[no-any-return]

    async def requeue(self, ids: Iterable[int] | None = None) -> int:
        """Make dead rows (those of `ids`, or all) pending again; how many were. The
        running service picks them up on its next start (`cityvitals alerts retry`)."""
        return await self._run(_requeue, None if ids is None else tuple(ids))  # type: ignore[no-any-return]

    async def close(self, fingerprint: str, *, by: str, now_ms: int) -> Alert | None:
        """Close a resolved alert (archived: done with); None if it is not resolved."""
        return await self._run(_close, fingerprint, by, now_ms)  # type: ignore[no-any-return]

    async def resolved(self, *, limit: int = 100) -> list[Alert]:
        """Resolved (not yet closed) alerts, newest first."""
        return await self._run(_resolved_alerts, limit)  # type: ignore[no-any-return]

    # -- incidents -------------------------------------------------------------

    async def put_incident(self, incident: Incident) -> None:
        await self._run(_put_incident, incident)

    async def incidents(self, *, recent: int = 1000) -> list[Incident]:
        """The open incidents and the `recent` last resolved, oldest first."""
        return await self._run(_incidents, recent)  # type: ignore[no-any-return]

    # -- silences --------------------------------------------------------------

    async def put_silence(self, silence: Silence) -> None:
        """Keep a silence (new, or expired early: the same id, an earlier end)."""
        await self._run(_put_silence, silence)

    async def silences(self, *, now_ms: int) -> list[Silence]:
        """The silences that have not ended by `now_ms`."""
        return await self._run(_silences, now_ms)  # type: ignore[no-any-return]

    async def counts(self) -> dict[str, int]:
        """Outbox rows by state, and the open alerts."""
        return await self._run(_counts)  # type: ignore[no-any-return]


# -- the SQL, run in a worker thread --------------------------------------------


def _load(db: sqlite3.Connection, resolved_limit: int) -> BookState:
    opened = tuple(
        _alert_decoder.decode(body)
        for (body,) in db.execute(
            "SELECT body FROM alerts WHERE state IN ('firing', 'acknowledged')"
            " ORDER BY last_ts_ms, last_seq"
        )
    )
    resolved = db.execute(
        "SELECT fingerprint, last_ts_ms, last_seq FROM alerts"
        " WHERE state IN ('resolved', 'closed')"
        " ORDER BY last_ts_ms DESC LIMIT ?",
        (resolved_limit,),
    ).fetchall()
    return BookState(open=opened, resolved=tuple(reversed(resolved)))


def _record(
    db: sqlite3.Connection,
    alert: Alert,
    notification: Notification | None,
    receivers: tuple[str, ...],
    now_ms: int,
) -> None:
    with db:
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO alerts (fingerprint, state, last_ts_ms, last_seq, body)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (fingerprint) DO UPDATE SET"
            " state = excluded.state, last_ts_ms = excluded.last_ts_ms,"
            " last_seq = excluded.last_seq, body = excluded.body",
            (alert.fingerprint, alert.state, alert.updated_ms, alert.seq, _encoder.encode(alert)),
        )
        if notification is not None:
            _insert_owed(db, notification, receivers, now_ms)


def _owe(
    db: sqlite3.Connection, notification: Notification, receivers: tuple[str, ...], now_ms: int
) -> bool:
    with db:
        db.execute("BEGIN IMMEDIATE")
        return _insert_owed(db, notification, receivers, now_ms) > 0


def _insert_owed(
    db: sqlite3.Connection, n: Notification, receivers: tuple[str, ...], now_ms: int
) -> int:
    """How many (notification, receiver) rows are new."""
    body = _encoder.encode(n)
    return db.executemany(
        "INSERT OR IGNORE INTO outbox (notification_id, receiver, fingerprint, event, state,"
        " created_ms, body) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
        [(n.id, r, n.alert.fingerprint, n.event, now_ms, body) for r in receivers],
    ).rowcount


def _settle(
    db: sqlite3.Connection, key: tuple[str, str], outcome: tuple[str, int, str, int]
) -> None:
    notification_id, receiver = key
    state, attempts, detail, now_ms = outcome
    with db:
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "UPDATE outbox SET state = ?, attempts = attempts + ?, settled_ms = ?, detail = ?"
            " WHERE notification_id = ? AND receiver = ?",
            (state, attempts, now_ms, detail, notification_id, receiver),
        )


def _pending(db: sqlite3.Connection) -> list[tuple[str, Notification]]:
    return [
        (receiver, _notification_decoder.decode(body))
        for receiver, body in db.execute(
            "SELECT receiver, body FROM outbox WHERE state = 'pending' ORDER BY id"
        )
    ]


def _owed_counts(db: sqlite3.Connection) -> dict[str, int]:
    return dict(
        db.execute(
            "SELECT receiver, count(*) FROM outbox WHERE state = 'pending' GROUP BY receiver"
        ).fetchall()
    )


def _owed(db: sqlite3.Connection, receiver: str, limit: int) -> list[Notification]:
    return [
        _notification_decoder.decode(body)
        for (body,) in db.execute(
            "SELECT body FROM outbox WHERE state = 'pending' AND receiver = ? ORDER BY id LIMIT ?",
            (receiver, limit),
        )
    ]


def _rows(db: sqlite3.Connection, state: str | None, limit: int) -> list[OutboxRow]:
    where, args = ("WHERE state = ?", (state, limit)) if state else ("", (limit,))
    return [
        OutboxRow(
            id=r[0],
            receiver=r[1],
            state=r[2],
            attempts=r[3],
            created_ms=r[4],
            settled_ms=r[5],
            detail=r[6],
            notification=_notification_decoder.decode(r[7]),
        )
        for r in db.execute(
            "SELECT id, receiver, state, attempts, created_ms, settled_ms, detail, body"  # noqa: S608 - fixed text
            f" FROM outbox {where} ORDER BY id DESC LIMIT ?",
            args,
        )
    ]


def _requeue(db: sqlite3.Connection, ids: tuple[int, ...] | None) -> int:
    with db:
        db.execute("BEGIN IMMEDIATE")
        if ids is None:
            cursor = db.execute(
                "UPDATE outbox SET state = 'pending', settled_ms = NULL WHERE state = 'dead'"
            )
        else:
            cursor = db.executemany(
                "UPDATE outbox SET state = 'pending', settled_ms = NULL"
                " WHERE state = 'dead' AND id = ?",
                [(i,) for i in ids],
            )
        return cursor.rowcount


def _close(db: sqlite3.Connection, fingerprint: str, by: str, now_ms: int) -> Alert | None:
    with db:
        db.execute("BEGIN IMMEDIATE")
        row = db.execute(
            "SELECT body FROM alerts WHERE fingerprint = ? AND state = 'resolved'", (fingerprint,)
        ).fetchone()
        if row is None:
            return None
        resolved = _alert_decoder.decode(row[0])
        alert = msgspec.structs.replace(
            resolved, state="closed", closed_ms=now_ms, resolved_by=resolved.resolved_by or by
        )
        db.execute(
            "UPDATE alerts SET state = 'closed', body = ? WHERE fingerprint = ?",
            (_encoder.encode(alert), fingerprint),
        )
        return alert


def _resolved_alerts(db: sqlite3.Connection, limit: int) -> list[Alert]:
    return [
        _alert_decoder.decode(body)
        for (body,) in db.execute(
            "SELECT body FROM alerts WHERE state = 'resolved' ORDER BY last_ts_ms DESC LIMIT ?",
            (limit,),
        )
    ]


def _put_incident(db: sqlite3.Connection, incident: Incident) -> None:
    with db:
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO incidents (id, state, updated_ms, body) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET state = excluded.state,"
            " updated_ms = excluded.updated_ms, body = excluded.body",
            (incident.id, incident.state, incident.updated_ms, _encoder.encode(incident)),
        )


def _incidents(db: sqlite3.Connection, recent: int) -> list[Incident]:
    rows = db.execute("SELECT body FROM incidents WHERE state = 'open'").fetchall()
    rows += db.execute(
        "SELECT body FROM incidents WHERE state != 'open' ORDER BY updated_ms DESC LIMIT ?",
        (recent,),
    ).fetchall()
    found = [_incident_decoder.decode(body) for (body,) in rows]
    return sorted(found, key=lambda i: (i.updated_ms, i.id))


def _put_silence(db: sqlite3.Connection, silence: Silence) -> None:
    with db:
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO silences (id, ends_ms, body) VALUES (?, ?, ?) ON CONFLICT (id)"
            " DO UPDATE SET ends_ms = excluded.ends_ms, body = excluded.body",
            (silence.id, silence.ends_ms, _encoder.encode(silence)),
        )


def _silences(db: sqlite3.Connection, now_ms: int) -> list[Silence]:
    return [
        _silence_decoder.decode(body)
        for (body,) in db.execute(
            "SELECT body FROM silences WHERE ends_ms > ? ORDER BY ends_ms", (now_ms,)
        )
    ]


def _counts(db: sqlite3.Connection) -> dict[str, int]:
    out = {"pending": 0, "delivered": 0, "dead": 0}
    out |= dict(db.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall())
    (out["open_alerts"],) = db.execute(
        "SELECT count(*) FROM alerts WHERE state IN ('firing', 'acknowledged')"
    ).fetchone()
    return out
