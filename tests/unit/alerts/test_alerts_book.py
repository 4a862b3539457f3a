"""The alert lifecycle: which warnings open, change, repeat and resolve an alert."""

from __future__ import annotations

from functools import partial

import msgspec
import pytest

from alerts.book import AlertBook
from cityvitals.kinds import Kind
from cityvitals.levels import Level
from tests.factories import PLACE, make_warning

warning = partial(make_warning, value=60.0)


def test_first_warning_opens_a_firing_alert() -> None:
    """A warning for an unknown fingerprint opens one firing alert, announced as 'firing'."""
    book = AlertBook()
    n = book.apply(warning(Level.ORANGE, value=55.5, ts_ms=1_000, seq=3))
    assert n is not None
    assert (n.v, n.event, n.previous, n.ts_ms) == (1, "firing", Level.NONE, 1_000)
    a = n.alert
    assert (a.state, a.level, a.peak_level) == ("firing", Level.ORANGE, Level.ORANGE)
    assert (a.started_ms, a.updated_ms, a.resolved_ms) == (1_000, 1_000, None)
    assert (a.value, a.threshold, a.seq, a.placement) == (55.5, 50.0, 3, PLACE)
    assert (a.rule, a.node, a.kind, a.metric, a.unit) == (
        "water_level.depth",
        "wl-0003",
        Kind.WATER_LEVEL,
        "depth_cm",
        "cm",
    )
    assert book.open_alerts() == (a,)
    assert book.get("fp-1") == a
    assert len(book) == 1


def test_repeat_at_same_level_updates_without_notifying() -> None:
    """Repeats update the one alert's value and time but never produce a second page."""
    book = AlertBook()
    first = book.apply(warning(Level.ORANGE, value=55.0, ts_ms=1_000, seq=1))
    assert first is not None
    assert book.apply(warning(Level.ORANGE, value=57.0, ts_ms=2_000, seq=2)) is None
    assert len(book) == 1
    alert = book.get("fp-1")
    assert alert is not None
    assert (alert.value, alert.updated_ms, alert.seq) == (57.0, 2_000, 2)
    assert alert.started_ms == 1_000


def test_escalation_and_deescalation_are_level_changes_and_peak_is_kept() -> None:
    """Raising and lowering an open alert each notify once; peak_level remembers the worst."""
    book = AlertBook()
    book.apply(warning(Level.YELLOW, ts_ms=1))
    up = book.apply(warning(Level.RED, ts_ms=2))
    down = book.apply(warning(Level.BLUE, ts_ms=3))
    assert up is not None
    assert down is not None
    assert (up.event, up.previous, up.alert.level, up.alert.peak_level) == (
        "level_changed",
        Level.YELLOW,
        Level.RED,
        Level.RED,
    )
    assert (down.event, down.previous, down.alert.level, down.alert.peak_level) == (
        "level_changed",
        Level.RED,
        Level.BLUE,
        Level.RED,
    )
    assert down.alert.started_ms == 1
    assert len(book) == 1


def test_clear_resolves_and_closes_the_alert() -> None:
    """A cleared warning resolves the open alert, stamps resolved_ms and removes it."""
    book = AlertBook()
    book.apply(warning(Level.RED, ts_ms=1_000))
    n = book.apply(warning(Level.NONE, value=10.0, ts_ms=5_000, seq=9))
    assert n is not None
    assert (n.event, n.previous) == ("resolved", Level.RED)
    a = n.alert
    assert (a.state, a.level, a.peak_level) == ("resolved", Level.NONE, Level.RED)
    assert (a.started_ms, a.updated_ms, a.resolved_ms, a.value, a.seq) == (
        1_000,
        5_000,
        5_000,
        10.0,
        9,
    )
    assert len(book) == 0
    assert book.get("fp-1") is None


def test_clear_without_open_alert_is_ignored() -> None:
    """Clearing an unknown (or already resolved) condition produces nothing."""
    book = AlertBook()
    assert book.apply(warning(Level.NONE)) is None
    book.apply(warning(Level.RED, ts_ms=1))
    assert book.apply(warning(Level.NONE, ts_ms=2)) is not None
    assert book.apply(warning(Level.NONE, ts_ms=3)) is None
    assert len(book) == 0


def test_fires_again_after_resolve_as_a_new_alert() -> None:
    """After a resolve the same fingerprint opens a fresh alert with a new start time."""
    book = AlertBook()
    book.apply(warning(Level.RED, ts_ms=1))
    book.apply(warning(Level.NONE, ts_ms=2))
    n = book.apply(warning(Level.BLUE, ts_ms=3))
    assert n is not None
    assert (n.event, n.alert.started_ms, n.alert.peak_level) == ("firing", 3, Level.BLUE)


def test_alerts_are_independent_per_fingerprint() -> None:
    """Two fingerprints are two alerts; resolving one leaves the other open."""
    book = AlertBook()
    book.apply(warning(Level.RED, fp="a"))
    book.apply(warning(Level.BLUE, fp="b"))
    assert [a.fingerprint for a in book.open_alerts()] == ["a", "b"]
    book.apply(warning(Level.NONE, fp="a", ts_ms=2_000))
    assert [a.fingerprint for a in book.open_alerts()] == ["b"]


def test_book_ignores_the_warnings_own_previous_field() -> None:
    """If the stream's idea of 'previous' disagrees (a lost warning), the book's state wins."""
    book = AlertBook()
    book.apply(warning(Level.ORANGE, ts_ms=1))
    lying = msgspec.structs.replace(warning(Level.RED, ts_ms=2), previous=Level.NONE)
    n = book.apply(lying)
    assert n is not None
    assert (n.event, n.previous) == ("level_changed", Level.ORANGE)


def test_alerts_are_immutable() -> None:
    """Alerts handed out cannot be changed behind the book's back."""
    book = AlertBook()
    n = book.apply(warning(Level.RED))
    assert n is not None
    with pytest.raises(AttributeError):
        n.alert.level = Level.BLUE  # type: ignore[misc]


def test_a_replayed_batch_of_warnings_pages_nobody_again() -> None:
    """A stream worker that died after handing warnings on redoes the batch and emits them
    again: raise, change and clear replayed after the clear (or in the middle) cause no
    notification, and a genuinely new raise after them still fires."""
    book = AlertBook()
    story = [
        warning(Level.ORANGE, ts_ms=1),
        warning(Level.RED, ts_ms=2),
        warning(Level.NONE, ts_ms=3),
    ]
    assert [n.event for w in story if (n := book.apply(w))] == [
        "firing",
        "level_changed",
        "resolved",
    ]
    assert [book.apply(w) for w in story] == [None, None, None]
    assert [book.apply(w) for w in story[:2]] == [None, None]
    assert len(book) == 0
    n = book.apply(warning(Level.BLUE, ts_ms=4))
    assert n is not None
    assert n.event == "firing"
    # Same reading time, a later reading (a node clock that repeats): a real change.
    n = book.apply(warning(Level.ORANGE, ts_ms=4, seq=9))
    assert n is not None
    assert n.event == "level_changed"
    # Mid-story: a replay of what an open alert has already taken changes nothing.
    assert book.apply(warning(Level.BLUE, ts_ms=4)) is None
    assert book.apply(warning(Level.RED, ts_ms=2)) is None
    assert book.get("fp-1") is not None
    assert book.get("fp-1").level is Level.ORANGE


def test_resolved_alerts_remembered_are_bounded() -> None:
    """The book remembers when alerts resolved only for the most recent ones."""
    book = AlertBook(remember_resolved=2)
    for i, fp in enumerate(("a", "b", "c")):
        book.apply(warning(Level.RED, ts_ms=10 * i + 1, fp=fp))
        book.apply(warning(Level.NONE, ts_ms=10 * i + 2, fp=fp))
    # "a" was forgotten: its replayed raise opens it again; "c" is still remembered.
    assert book.apply(warning(Level.RED, ts_ms=1, fp="a")) is not None
    assert book.apply(warning(Level.RED, ts_ms=21, fp="c")) is None
