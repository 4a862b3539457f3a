"""The embedded SQLite store: what is written can be read back, once, and survives a restart."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import msgspec
import pytest

from cityvitals.contract import (
    Area,
    AreaMember,
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
        assert store.stats() == StoreStats(0, 0, 0, 0, 0)
        assert store.scores() == {}
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
        await store.write_score(reading(seq=1), PLACE, "depth_cm", 0.25, "robust")
        await store.flush()
        assert store.stats() == StoreStats(
            readings=2, warnings=1, dead_letters=1, notifications=2, scores=1
        )
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
        assert reopened.stats() == StoreStats(10, 1, 1, 1, 0)
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
        assert store.stats() == StoreStats(500, 0, 50, 0, 0)
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


def area_warning() -> Warning:
    members = (
        AreaMember(node="wl-0002", level=Level.ORANGE, value=61.0, ts_ms=TS),
        AreaMember(node="wl-0001", level=Level.YELLOW, value=32.0, ts_ms=TS - 5),
    )
    return Warning(
        v=1,
        fingerprint=fingerprint(rule="water.district", node="district:Harbour"),
        rule="water.district",
        node="",
        kind=Kind.WATER_LEVEL,
        metric="depth_cm",
        level=Level.YELLOW,
        previous=Level.NONE,
        value=2.0,
        threshold=2.0,
        unit="nodes",
        ts_ms=TS,
        seq=1,
        placement=PLACE,
        area=Area(scope="district", name="Harbour", members=members, total=5, at_ms=TS),
    )


def _warning_columns(path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT rule, node, unit, predicted_crossing_ms, area_scope, area, members, total,"
            " lat, lon FROM warnings ORDER BY id"
        ).fetchall()


async def test_warnings_have_the_influxdb_fields_as_columns(tmp_path):
    """The warnings table carries what InfluxDB's `warning` point does: the placement's
    unit, the predicted crossing, and for an area warning its scope, name, members, total
    and centroid (docs/influxdb.md)."""
    path = tmp_path / "cv.sqlite3"
    forecast = msgspec.structs.replace(warning(), predicted_crossing_ms=TS + 600_000)
    area = area_warning()
    async with EmbeddedStore(path) as store:
        await store.write_warning(forecast, encode(forecast))
        await store.write_warning(area, encode(area))
        await store.flush()
        assert store.warnings() == [forecast, area]
    assert _warning_columns(path) == [
        ("water.depth", "wl-0001", PLACE.unit, TS + 600_000, "", "", None, None, None, None),
        (
            "water.district",
            "",
            PLACE.unit,
            None,
            "district",
            "Harbour",
            "wl-0002,wl-0001",
            5,
            PLACE.lat,
            PLACE.lon,
        ),
    ]


async def test_scores_are_one_per_node_metric_and_time(tmp_path):
    """A score is keyed as InfluxDB keys its point (series and time): a second score of
    the same (node, metric, ts_ms) replaces the first, other metrics and times add rows."""
    path = tmp_path / "cv.sqlite3"
    r = reading(seq=4)
    async with EmbeddedStore(path) as store:
        await store.write_score(r, PLACE, "depth_cm", 0.5, "ewma")
        await store.write_score(r, PLACE, "depth_cm", 0.9975, "robust")
        await store.write_score(r, PLACE, "rise_cm_min", 0.1, "rate")
        await store.write_score(reading(seq=5), PLACE, "depth_cm", 0.2, "cusum")
        await store.flush()
        assert store.scores() == {
            ("wl-0001", "depth_cm", r.ts_ms): (0.9975, "robust"),
            ("wl-0001", "rise_cm_min", r.ts_ms): (0.1, "rate"),
            ("wl-0001", "depth_cm", TS + 5000): (0.2, "cusum"),
        }
    with sqlite3.connect(path) as db:
        row = db.execute(
            "SELECT kind, district, street, grid, unit FROM scores WHERE metric = 'rise_cm_min'"
        ).fetchone()
    assert row == ("water_level", PLACE.district, PLACE.street, PLACE.grid, PLACE.unit)


#: The warnings table as cityvitals wrote it before scores and the InfluxDB columns.
_SCHEMA_V1_WARNINGS = """
CREATE TABLE warnings (
    id INTEGER PRIMARY KEY, fingerprint TEXT NOT NULL, rule TEXT NOT NULL,
    node TEXT NOT NULL, kind TEXT NOT NULL, metric TEXT NOT NULL,
    level INTEGER NOT NULL, previous INTEGER NOT NULL, value REAL NOT NULL,
    threshold REAL, ts_ms INTEGER NOT NULL, seq INTEGER NOT NULL,
    district TEXT NOT NULL, street TEXT NOT NULL, grid TEXT NOT NULL,
    body BLOB NOT NULL
);
"""


async def test_a_version_1_file_is_upgraded_and_its_warnings_filled_from_their_bodies(
    tmp_path, caplog
):
    """A store file from before schema 2 opens: the warnings columns it lacked are added
    and filled from each stored body (one unreadable body is left empty, not fatal), the
    scores table appears, and the log says what changed."""
    path = tmp_path / "cv.sqlite3"
    area, node = area_warning(), warning()
    with sqlite3.connect(path) as db:
        db.executescript(_SCHEMA_V1_WARNINGS)
        for w, body in ((area, encode(area)), (node, encode(node)), (node, b"{not json")):
            p = w.placement
            db.execute(
                "INSERT INTO warnings (fingerprint, rule, node, kind, metric, level, previous,"
                " value, threshold, ts_ms, seq, district, street, grid, body)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (w.fingerprint, w.rule, w.node, w.kind.value, w.metric, int(w.level), 0,
                 w.value, w.threshold, w.ts_ms, w.seq, p.district, p.street, p.grid, body),
            )  # fmt: skip
    caplog.set_level("INFO", logger="cityvitals.store")
    async with EmbeddedStore(path) as store:
        await store.write_score(reading(), PLACE, "depth_cm", 0.3, "spike")
        await store.flush()
        assert store.stats().scores == 1
    upgraded = [r.getMessage() for r in caplog.records if "upgraded" in r.getMessage()]
    assert len(upgraded) == 1
    assert "from schema 1 to 2" in upgraded[0]
    assert "filled for 2 warnings" in upgraded[0]
    assert "1 unreadable body left empty" in upgraded[0]
    columns = _warning_columns(path)
    assert columns[0][4:8] == ("district", "Harbour", "wl-0002,wl-0001", 5)
    assert columns[1][2:6] == (PLACE.unit, None, "", "")
    assert columns[2][2:] == ("", None, "", "", None, None, None, None)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (2,)
    caplog.clear()
    async with EmbeddedStore(path):
        pass  # opened again: nothing left to upgrade
    assert not [r for r in caplog.records if "upgraded" in r.getMessage()]


async def test_a_file_from_a_newer_cityvitals_is_refused_by_name(tmp_path):
    """A store whose schema is newer than this code is refused with an error naming the
    file and both versions, and is left as it was."""
    path = tmp_path / "cv.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 9")
    with pytest.raises(StoreError, match=r"cv\.sqlite3 has schema version 9, newer .* \(2\)"):
        async with EmbeddedStore(path):
            pass
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (9,)
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'scores'").fetchall() == []
