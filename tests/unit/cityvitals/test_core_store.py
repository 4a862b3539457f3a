"""The embedded SQLite store: what is written can be read back, once, and survives a restart."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest

from cityvitals.contract import (
    DeadLetter,
    Evidence,
    Placement,
    Reading,
    Reason,
    Warning,
    encode,
    fingerprint,
)
from cityvitals.kinds import Kind
from cityvitals.levels import Level
from cityvitals.store import EmbeddedStore, StoreError, StoreStats

TS = 1_764_028_800_000
PLACE = Placement(
    district="Harbour",
    street="Dockside Street",
    grid="HB-101",
    unit="Harbour Drainage Office",
    lat=31.2304,
    lon=121.4737,
)


def reading(node: str = "wl-0001", seq: int = 1, depth: float = 10.0) -> Reading:
    return Reading(
        v=1,
        node=node,
        kind=Kind.WATER_LEVEL,
        seq=seq,
        ts_ms=TS + seq * 1000,
        metrics={"depth_cm": depth},
        battery_pct=80.0,
    )


def warning(level: Level = Level.YELLOW, seq: int = 3) -> Warning:
    return Warning(
        v=1,
        fingerprint=fingerprint(rule="water.depth", node="wl-0001"),
        rule="water.depth",
        node="wl-0001",
        kind=Kind.WATER_LEVEL,
        metric="depth_cm",
        level=level,
        previous=Level.NONE,
        value=25.0,
        threshold=20.0,
        unit="cm",
        ts_ms=TS,
        seq=seq,
        placement=PLACE,
        evidence=(Evidence(ts_ms=TS, value=25.0),),
    )


def dead_letter(detail: str = "Input data was truncated") -> DeadLetter:
    payload = b'{"v":1,\xff'
    return DeadLetter(
        v=1,
        received_ms=TS,
        source="mqtt",
        topic="city/smoke/sm-1/telemetry",
        reason=Reason.MALFORMED,
        detail=detail,
        payload=payload,
        payload_size=len(payload),
    )


async def notify(store: EmbeddedStore, n: int, outcome: str = "delivered") -> None:
    await store.write_notification(
        notification_id=f"n-{n}",
        fingerprint="abc",
        event="raised",
        level=int(Level.ORANGE),
        node="wl-0001",
        receiver="console",
        outcome=outcome,
        detail="",
        ts_ms=TS + n,
    )


async def test_new_store_is_empty(tmp_path):
    """A fresh store (in a directory it creates) counts nothing and lists nothing."""
    async with EmbeddedStore(tmp_path / "sub" / "cv.sqlite3") as store:
        await store.flush()
        assert store.stats() == StoreStats(0, 0, 0, 0)
        assert store.reading_keys() == set()
        assert store.warnings() == []
        assert store.dead_letters() == []
        assert store.notifications() == []
    assert (tmp_path / "sub" / "cv.sqlite3").exists()


async def test_written_rows_are_readable_after_flush(tmp_path):
    """Readings, warnings, dead letters and notifications are all visible after flush()."""
    w = warning()
    letter = dead_letter()
    async with EmbeddedStore(tmp_path / "cv.sqlite3") as store:
        await store.write_reading(reading(seq=1), PLACE, TS + 5)
        await store.write_reading(reading(node="wl-0002", seq=1), PLACE, TS + 6)
        await store.write_warning(w, encode(w))
        await store.write_dead_letter(letter)
        await notify(store, 1)
        await notify(store, 2, outcome="failed")
        await store.flush()
        assert store.stats() == StoreStats(readings=2, warnings=1, dead_letters=1, notifications=2)
        assert store.reading_keys() == {("wl-0001", 1), ("wl-0002", 1)}
        assert store.warnings() == [w]
        assert store.dead_letters() == [letter]
        assert store.notifications() == [
            ("abc", "raised", 3, "wl-0001", "console", "delivered"),
            ("abc", "raised", 3, "wl-0001", "console", "failed"),
        ]


async def test_reading_row_keeps_placement_metrics_and_health(tmp_path):
    """A stored reading row holds its placement, metrics as JSON, battery and received time."""
    path = tmp_path / "cv.sqlite3"
    async with EmbeddedStore(path) as store:
        await store.write_reading(reading(seq=9, depth=42.5), PLACE, TS + 77)
    db = sqlite3.connect(path)
    try:
        row = db.execute(
            "SELECT kind, ts_ms, received_ms, district, street, grid, unit, lat, lon, fields,"
            " battery_pct, rssi_dbm FROM readings WHERE node = ? AND seq = ?",
            ("wl-0001", 9),
        ).fetchone()
    finally:
        db.close()
    assert row[:9] == (
        "water_level",
        TS + 9000,
        TS + 77,
        "Harbour",
        "Dockside Street",
        "HB-101",
        "Harbour Drainage Office",
        31.2304,
        121.4737,
    )
    assert json.loads(row[9]) == {"depth_cm": 42.5}
    assert row[10:] == (80.0, None)


async def test_same_node_and_seq_is_stored_once(tmp_path):
    """Writing one (node, seq) twice, even with other content, keeps one row: the first."""
    path = tmp_path / "cv.sqlite3"
    async with EmbeddedStore(path) as store:
        await store.write_reading(reading(seq=4, depth=1.0), PLACE, TS)
        await store.flush()
        await store.write_reading(reading(seq=4, depth=2.0), PLACE, TS)
        await store.write_reading(reading(seq=4, depth=3.0), PLACE, TS)
        await store.write_reading(reading(seq=5), PLACE, TS)
        await store.flush()
        assert store.stats().readings == 2
        assert store.reading_keys() == {("wl-0001", 4), ("wl-0001", 5)}
    db = sqlite3.connect(path)
    try:
        (fields,) = db.execute("SELECT fields FROM readings WHERE seq = 4").fetchone()
    finally:
        db.close()
    assert json.loads(fields) == {"depth_cm": 1.0}


async def test_warnings_are_kept_in_order_even_when_repeated(tmp_path):
    """Warnings are a log: each write is a row, read back in write order."""
    raised, changed, cleared = (
        warning(Level.YELLOW, 1),
        warning(Level.RED, 2),
        warning(Level.NONE, 3),
    )
    async with EmbeddedStore(tmp_path / "cv.sqlite3") as store:
        for w in (raised, changed, cleared, cleared):
            await store.write_warning(w, encode(w))
        await store.flush()
        got = store.warnings()
    assert got == [raised, changed, cleared, cleared]
    assert got[-1].cleared


async def test_data_survives_close_and_reopen(tmp_path):
    """Rows committed before close are there for a new store on the same file, which adds more."""
    path = tmp_path / "cv.sqlite3"
    w = warning()
    async with EmbeddedStore(path) as store:
        for seq in range(10):
            await store.write_reading(reading(seq=seq), PLACE, TS)
        await store.write_warning(w, encode(w))
        await store.write_dead_letter(dead_letter())
        await notify(store, 1)
        # no flush: closing must commit what was queued
    async with EmbeddedStore(path) as reopened:
        assert reopened.stats() == StoreStats(10, 1, 1, 1)
        assert reopened.warnings() == [w]
        await reopened.write_reading(reading(seq=3), PLACE, TS)  # a duplicate across restarts
        await reopened.write_reading(reading(seq=10), PLACE, TS)
        await reopened.flush()
        assert reopened.reading_keys() == {("wl-0001", s) for s in range(11)}


async def test_backpressure_waits_instead_of_dropping(tmp_path):
    """With a 2-slot queue and batches of 3, 500 concurrent writers all land; none is lost."""
    async with EmbeddedStore(tmp_path / "cv.sqlite3", queue_size=2, batch_size=3) as store:
        await asyncio.gather(
            *(store.write_reading(reading(node=f"n{i % 7}", seq=i), PLACE, TS) for i in range(500)),
            *(store.write_dead_letter(dead_letter(str(i))) for i in range(50)),
        )
        await store.flush()
        assert store.stats() == StoreStats(500, 0, 50, 0)
        assert store.reading_keys() == {(f"n{i % 7}", i) for i in range(500)}
        assert sorted(int(d.detail) for d in store.dead_letters()) == list(range(50))


async def test_flush_covers_everything_queued_before_it(tmp_path):
    """Concurrent flushes each return only once the rows queued before them are committed."""
    async with EmbeddedStore(tmp_path / "cv.sqlite3", queue_size=4, batch_size=2) as store:
        for seq in range(20):
            await store.write_reading(reading(seq=seq), PLACE, TS)
        await asyncio.gather(store.flush(), store.flush())
        assert store.stats().readings == 20


async def test_flush_on_a_closed_store_fails_loudly(tmp_path):
    """flush() on a store never opened fails loudly instead of waiting forever."""
    store = EmbeddedStore(tmp_path / "cv.sqlite3")
    with pytest.raises(StoreError, match="not open"):
        await store.flush()


async def test_a_failed_commit_is_reported_not_swallowed(tmp_path):
    """When the disk refuses a batch, flush() raises StoreError naming the failure, and
    later writes fail fast instead of queueing rows that will never be written."""
    path = tmp_path / "cv.sqlite3"
    async with EmbeddedStore(path) as store:
        # Another connection drops the table under the writer: the next commit fails.
        with sqlite3.connect(path) as other:
            other.execute("DROP TABLE readings")
        await store.write_reading(reading(), PLACE, TS)
        with pytest.raises(StoreError, match="commit failed"):
            await store.flush()
        with pytest.raises(StoreError, match="writer failed"):
            await store.write_reading(reading(seq=2), PLACE, TS)
