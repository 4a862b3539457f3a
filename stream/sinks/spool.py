r"""The InfluxDB sink's spool: line protocol waiting for InfluxDB, durable in SQLite.

A plain synchronous class: `InfluxSink` calls it through `asyncio.to_thread`,
one call at a time. Lines are kept in *chunks* (the lines of one flush, at
most a batch of them), in the order they were spooled. A chunk leaves the
`chunks` table only when InfluxDB confirmed it (`delete`) or refused it for
good (`dead_letter`, into the `dead` table with the reason), so a process
killed at any point loses nothing that `append` returned for.

WAL with `synchronous = FULL`: a commit is on disk when `append` returns,
power cut included, and the shipper's reads do not block the appends.
Deleting rows frees pages inside the file; `vacuum` (incremental
auto-vacuum) gives them back to the file system once the spool is empty.

>>> import tempfile, pathlib
>>> spool = Spool(pathlib.Path(tempfile.mkdtemp()) / "spool.sqlite3")
>>> spool.append(["m v=1 1", "m v=2 2", "m v=3 3"], now_ms=10, chunk_lines=2)
(3, 22)
>>> [(c.lines, c.body) for c in spool.peek(max_lines=5)]
[(2, 'm v=1 1\nm v=2 2'), (1, 'm v=3 3')]
>>> spool.delete([c.id for c in spool.peek(max_lines=1)])
>>> spool.totals()
SpoolTotals(lines=1, bytes=7, oldest_ms=10)
>>> spool.close()
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Chunk", "DeadBatch", "Spool", "SpoolTotals"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, spooled_ms INTEGER NOT NULL,
    lines INTEGER NOT NULL, bytes INTEGER NOT NULL, body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dead (
    id INTEGER PRIMARY KEY, dead_ms INTEGER NOT NULL, status INTEGER NOT NULL,
    reason TEXT NOT NULL, first_spooled_ms INTEGER NOT NULL,
    lines INTEGER NOT NULL, bytes INTEGER NOT NULL, body TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Chunk:
    id: int
    spooled_ms: int
    lines: int
    bytes: int
    #: The lines, joined by newlines.
    body: str


@dataclass(frozen=True, slots=True)
class DeadBatch:
    """Lines InfluxDB refused for good, with its answer: kept for a look and a replay."""

    id: int
    dead_ms: int
    #: The HTTP status of the refusal.
    status: int
    #: InfluxDB's message (e.g. "partial write: field type conflict ...").
    reason: str
    first_spooled_ms: int
    lines: int
    bytes: int
    body: str


@dataclass(frozen=True, slots=True)
class SpoolTotals:
    lines: int
    bytes: int
    #: When the oldest waiting chunk was spooled (ms since the epoch); None when empty.
    oldest_ms: int | None


def _prepare(db: sqlite3.Connection) -> int:
    """Settings and tables of a new or existing spool; its schema version."""
    # auto_vacuum must be chosen before the first table exists.
    db.execute("PRAGMA auto_vacuum = INCREMENTAL")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version == 0:
        db.executescript(_SCHEMA)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        version = SCHEMA_VERSION
    return version


class Spool:
    """The spool file at `path` (created if missing)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False: used from asyncio.to_thread workers, one call
        # at a time (InfluxSink serialises every use with a lock).
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        try:
            version = _prepare(db)
        except BaseException:
            db.close()
            raise
        if version != SCHEMA_VERSION:
            db.close()
            raise sqlite3.DatabaseError(
                f"{self.path} is spool version {version}; this code reads {SCHEMA_VERSION}"
            )
        self._db = db

    def close(self) -> None:
        self._db.close()

    def append(self, lines: Sequence[str], *, now_ms: int, chunk_lines: int) -> tuple[int, int]:
        """Spool `lines` durably, in chunks of at most `chunk_lines`; return (lines, bytes)."""
        rows = []
        total = 0
        for start in range(0, len(lines), chunk_lines):
            part = lines[start : start + chunk_lines]
            body = "\n".join(part)
            size = len(body.encode())
            total += size
            rows.append((now_ms, len(part), size, body))
        if rows:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "INSERT INTO chunks (spooled_ms, lines, bytes, body) VALUES (?,?,?,?)", rows
                )
        return len(lines), total

    def peek(self, *, max_lines: int) -> list[Chunk]:
        """The oldest chunks, up to `max_lines` lines in all (at least one chunk)."""
        out: list[Chunk] = []
        count = 0
        cursor = self._db.execute(
            "SELECT id, spooled_ms, lines, bytes, body FROM chunks ORDER BY id"
        )
        try:
            for row in cursor:
                chunk = Chunk(*row)
                if out and count + chunk.lines > max_lines:
                    break
                out.append(chunk)
                count += chunk.lines
                if count >= max_lines:
                    break
        finally:
            cursor.close()
        return out

    def delete(self, ids: Sequence[int]) -> None:
        """Forget chunks InfluxDB confirmed."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM chunks WHERE id = ?", [(i,) for i in ids])

    def dead_letter(self, chunks: Sequence[Chunk], *, status: int, reason: str, now_ms: int) -> int:
        """Move `chunks` (one refused batch) to the dead table in one transaction; its id."""
        body = "\n".join(c.body for c in chunks)
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cursor = self._db.execute(
                "INSERT INTO dead (dead_ms, status, reason, first_spooled_ms, lines, bytes, body)"
                " VALUES (?,?,?,?,?,?,?)",
                (
                    now_ms,
                    status,
                    reason,
                    min(c.spooled_ms for c in chunks),
                    sum(c.lines for c in chunks),
                    len(body.encode()),
                    body,
                ),
            )
            self._db.executemany("DELETE FROM chunks WHERE id = ?", [(c.id,) for c in chunks])
        dead_id = cursor.lastrowid
        assert dead_id is not None  # noqa: S101 - an INSERT always has one
        return dead_id

    def totals(self) -> SpoolTotals:
        lines, size, oldest = self._db.execute(
            "SELECT coalesce(sum(lines), 0), coalesce(sum(bytes), 0), min(spooled_ms) FROM chunks"
        ).fetchone()
        return SpoolTotals(lines, size, oldest)

    def dead(self) -> list[DeadBatch]:
        """Every dead batch, oldest first."""
        rows = self._db.execute(
            "SELECT id, dead_ms, status, reason, first_spooled_ms, lines, bytes, body"
            " FROM dead ORDER BY id"
        ).fetchall()
        return [DeadBatch(*row) for row in rows]

    def requeue_dead(self, ids: Sequence[int] | None = None, *, now_ms: int) -> int:
        """Put dead batches (all, or those with `ids`) back into the spool; how many lines.

        For after the cause is fixed (a bucket's field type changed, a point
        outside the retention period removed from the batch by hand).
        """
        where = "" if ids is None else f"WHERE id IN ({','.join('?' * len(ids))})"
        params = () if ids is None else tuple(ids)
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            rows = self._db.execute(
                f"SELECT id, lines, bytes, body FROM dead {where} ORDER BY id",  # noqa: S608
                params,
            ).fetchall()
            self._db.executemany(
                "INSERT INTO chunks (spooled_ms, lines, bytes, body) VALUES (?,?,?,?)",
                [(now_ms, lines, size, body) for _, lines, size, body in rows],
            )
            self._db.executemany("DELETE FROM dead WHERE id = ?", [(r[0],) for r in rows])
        return sum(r[1] for r in rows)

    def vacuum(self) -> None:
        """Give free pages back to the file system (cheap when the spool is empty)."""
        # executescript steps it to the end; execute() would free one page.
        self._db.executescript("PRAGMA incremental_vacuum;")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
