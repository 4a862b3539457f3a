"""Notification ids and the webhook body (schema v1)."""

from __future__ import annotations

import json

from alerts.book import AlertBook
from alerts.model import decode_notification, notification_id
from cityvitals.contract import encode
from cityvitals.levels import Level
from tests.factories import make_warning

warning = make_warning


def test_notification_id_is_deterministic_across_books() -> None:
    """Replaying the same warnings in a fresh book yields the same ids (receivers can dedup)."""
    script = [
        warning(Level.BLUE, ts_ms=1),
        warning(Level.RED, ts_ms=2),
        warning(Level.NONE, ts_ms=3),
    ]
    runs = []
    for _ in range(2):
        book = AlertBook()
        runs.append([n.id for w in script if (n := book.apply(w)) is not None])
    assert runs[0] == runs[1]
    assert len(runs[0]) == 3


def test_notification_id_differs_per_event_level_time_and_fingerprint() -> None:
    """Each input of the id changes it: one key per distinct change, never shared."""
    base = notification_id("fp", "firing", Level.RED, 1_000)
    variants = {
        notification_id("fp", "level_changed", Level.RED, 1_000),
        notification_id("fp", "resolved", Level.RED, 1_000),
        notification_id("fp", "firing", Level.ORANGE, 1_000),
        notification_id("fp", "firing", Level.RED, 1_001),
        notification_id("fp2", "firing", Level.RED, 1_000),
        notification_id("fp", "firing", Level.RED, 1_000, seq=1),
    }
    assert base not in variants
    assert len(variants) == 6
    assert len(base) == 16
    assert all(c in "0123456789abcdef" for c in base)


def test_ids_in_one_lifecycle_are_distinct() -> None:
    """firing, level_changed and resolved of one alert carry three different keys."""
    book = AlertBook()
    ns = [
        book.apply(warning(lv, ts_ms=t))
        for lv, t in ((Level.BLUE, 1), (Level.RED, 2), (Level.NONE, 3))
    ]
    ids = [n.id for n in ns if n is not None]
    assert len(set(ids)) == 3


def test_webhook_body_round_trips_and_has_the_documented_fields() -> None:
    """The encoded notification decodes back equal and carries exactly the v1 fields."""
    n = AlertBook().apply(warning(Level.RED))
    assert n is not None
    body = encode(n)
    assert decode_notification(body) == n
    doc = json.loads(body)
    assert set(doc) == {"v", "id", "event", "previous", "alert", "ts_ms"}
    assert (doc["v"], doc["event"], doc["previous"]) == (1, "firing", 0)
    assert set(doc["alert"]) == {
        "fingerprint", "rule", "node", "kind", "metric", "unit", "placement", "level",
        "peak_level", "state", "started_ms", "updated_ms", "resolved_ms", "value",
        "threshold", "seq", "notified_ms",
    }  # fmt: skip
    assert doc["alert"]["level"] == 4
    assert doc["alert"]["resolved_ms"] is None
    assert doc["alert"]["placement"]["grid"] == "HB-101"


def test_decoder_ignores_fields_added_later_in_v1() -> None:
    """A v1 receiver keeps working when v1 grows a field (additive changes only)."""
    n = AlertBook().apply(warning(Level.RED))
    assert n is not None
    doc = json.loads(encode(n))
    doc["runbook_url"] = "https://example.invalid/runbook"
    assert decode_notification(json.dumps(doc).encode()) == n
