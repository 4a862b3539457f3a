"""The InfluxDB sink's spool: chunks in order, durable on return, dead batches kept with their
reason and replayable, and a file that gives its space back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from stream.sinks.spool import Spool, SpoolTotals


def lines(n: int, start: int = 0) -> list[str]:
    return [f"m,t=a v={i}i {1_000 + i}" for i in range(start, start + n)]


def test_appended_lines_come_back_in_order_in_chunks(tmp_path: Path):
    """append splits into chunks of at most chunk_lines; peek returns whole chunks, oldest
    first, up to max_lines (but always at least one, however big)."""
    spool = Spool(tmp_path / "s.sqlite3")
    assert spool.append(lines(5), now_ms=1, chunk_lines=2)[0] == 5
    spool.append(lines(3, start=5), now_ms=2, chunk_lines=10)
    chunks = spool.peek(max_lines=4)
    assert [c.lines for c in chunks] == [2, 2]
    assert "\n".join(c.body for c in chunks).split("\n") == lines(4)
    assert [c.lines for c in spool.peek(max_lines=1)] == [2]  # one chunk even if bigger
    spool.delete([c.id for c in chunks])
    rest = spool.peek(max_lines=100)
    assert [c.lines for c in rest] == [1, 3]
    assert "\n".join(c.body for c in rest).split("\n") == lines(4, start=4)
    assert spool.totals() == SpoolTotals(4, sum(c.bytes for c in rest), 1)
    spool.close()


def test_a_return_from_append_is_on_disk(tmp_path: Path):
    """Once append returns the lines are committed: another connection (another process
    after a crash) sees them without this one closing."""
    path = tmp_path / "s.sqlite3"
    spool = Spool(path)
    spool.append(lines(3), now_ms=7, chunk_lines=10)
    with sqlite3.connect(path) as other:
        assert other.execute("SELECT sum(lines) FROM chunks").fetchone() == (3,)
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    spool.close()
    again = Spool(path)
    assert again.totals().lines == 3
    again.close()


def test_dead_batches_keep_their_reason_and_can_be_requeued(tmp_path: Path):
    """dead_letter moves a batch out of the queue with InfluxDB's status and message, in one
    transaction; requeue_dead puts it back (all, or by id)."""
    spool = Spool(tmp_path / "s.sqlite3")
    spool.append(lines(4), now_ms=5, chunk_lines=2)
    first = spool.peek(max_lines=2)
    dead_id = spool.dead_letter(first, status=400, reason="partial write: conflict", now_ms=9)
    assert spool.totals().lines == 2
    (dead,) = spool.dead()
    assert (dead.id, dead.status, dead.reason, dead.lines, dead.dead_ms) == (
        dead_id,
        400,
        "partial write: conflict",
        2,
        9,
    )
    assert dead.body.split("\n") == lines(2)
    assert dead.first_spooled_ms == 5
    assert spool.requeue_dead([dead_id + 1], now_ms=10) == 0
    assert spool.requeue_dead(now_ms=11) == 2
    assert spool.dead() == []
    assert spool.totals().lines == 4
    spool.close()


def test_an_unknown_spool_version_is_refused(tmp_path: Path):
    """A spool written by a newer layout is not read as if it were ours."""
    path = tmp_path / "s.sqlite3"
    Spool(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 9")
    with pytest.raises(sqlite3.DatabaseError, match="spool version 9"):
        Spool(path)


def test_an_emptied_spool_gives_its_space_back(tmp_path: Path):
    """After a long outage the file has grown; once shipped and vacuumed it shrinks again."""
    path = tmp_path / "s.sqlite3"
    spool = Spool(path)
    big = [f'm,t=a pad="{"x" * 400}",v={i}i {i}' for i in range(5_000)]
    spool.append(big, now_ms=1, chunk_lines=500)
    grown = path.stat().st_size + Path(f"{path}-wal").stat().st_size
    spool.delete([c.id for c in spool.peek(max_lines=10_000)])
    spool.vacuum()
    shrunk = path.stat().st_size + Path(f"{path}-wal").stat().st_size
    assert grown > 2_000_000
    assert shrunk < grown / 10
    spool.close()
