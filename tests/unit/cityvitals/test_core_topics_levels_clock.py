"""Small shared vocabulary: MQTT topic names, warning levels and the injectable clock."""

from __future__ import annotations

import pytest

from cityvitals.clock import Clock, ManualClock, SystemClock
from cityvitals.levels import WARNING_LEVELS, Level
from cityvitals.topics import (
    ALL_NODES_FILTER,
    CHANNELS,
    Topic,
    event_topic,
    parse_topic,
    status_topic,
    telemetry_topic,
)

# -- topics ------------------------------------------------------------------


def test_topic_builders_follow_city_kind_node_channel():
    """Each builder gives city/<kind>/<node>/<channel> for its channel."""
    assert telemetry_topic("smoke", "sm-1") == "city/smoke/sm-1/telemetry"
    assert status_topic("smoke", "sm-1") == "city/smoke/sm-1/status"
    assert event_topic("smoke", "sm-1") == "city/smoke/sm-1/event"
    assert ALL_NODES_FILTER == "city/+/+/+"
    assert set(CHANNELS) == {"telemetry", "status", "event"}


@pytest.mark.parametrize("build", [telemetry_topic, status_topic, event_topic])
def test_built_topics_parse_back(build):
    """parse_topic inverts every builder, returning kind, node and channel."""
    parsed = parse_topic(build("water_level", "wl-0001"))
    assert parsed == Topic(kind="water_level", node="wl-0001", channel=parsed.channel)
    assert parsed.channel in CHANNELS
    assert build("water_level", "wl-0001").endswith("/" + parsed.channel)


@pytest.mark.parametrize(
    "topic",
    [
        "town/smoke/sm-1/telemetry",  # wrong root
        "City/smoke/sm-1/telemetry",  # root is case-sensitive
        "city/smoke/sm-1/metrics",  # unknown channel
        "city/smoke/sm-1/Telemetry",
        "city//sm-1/telemetry",  # empty kind
        "city/smoke//telemetry",  # empty node
        "city/smoke/sm-1/telemetry/extra",  # extra part
        "/city/smoke/sm-1/telemetry",  # leading slash
        "city/smoke/telemetry",  # missing part
        "city/smoke/sm-1/",
        "",
    ],
)
def test_parse_topic_rejects_foreign_topics(topic):
    """Topics with a wrong root or channel, empty or missing or extra parts are not ours: None."""
    assert parse_topic(topic) is None


# -- levels ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("blue", Level.BLUE),
        ("BLUE", Level.BLUE),
        ("Blue", Level.BLUE),
        ("iv", Level.BLUE),
        ("yellow", Level.YELLOW),
        ("III", Level.YELLOW),
        ("iii", Level.YELLOW),
        ("orange", Level.ORANGE),
        ("II", Level.ORANGE),
        ("oRaNgE", Level.ORANGE),
        ("red", Level.RED),
        ("I", Level.RED),
        ("i", Level.RED),
        ("  red\n", Level.RED),
    ],
)
def test_level_parse_accepts_colour_names_and_roman_numerals_in_any_case(text, level):
    """Colour names and Roman numerals parse case-insensitively, surrounding blanks ignored."""
    assert Level.parse(text) is level


@pytest.mark.parametrize("text", ["", "   ", "purple", "V", "IIII", "1", "4", "re d", "redd"])
def test_level_parse_rejects_everything_else(text):
    """Anything not a colour or a numeral raises ValueError listing the valid colours."""
    with pytest.raises(ValueError, match="expected blue, yellow, orange or red"):
        Level.parse(text)


def test_levels_are_ordered_from_none_to_red():
    """NONE < BLUE < YELLOW < ORANGE < RED, and WARNING_LEVELS lists the four in that order."""
    assert sorted(Level, reverse=True) == [
        Level.RED,
        Level.ORANGE,
        Level.YELLOW,
        Level.BLUE,
        Level.NONE,
    ]
    assert WARNING_LEVELS == (Level.BLUE, Level.YELLOW, Level.ORANGE, Level.RED)
    assert list(WARNING_LEVELS) == sorted(WARNING_LEVELS)
    assert max(Level.BLUE, Level.ORANGE) is Level.ORANGE
    assert Level.NONE < Level.BLUE
    assert not Level.NONE


def test_level_labels_and_numerals():
    """Each level has its lower-case colour label and its Roman numeral (red is I)."""
    assert [(lv.label, lv.roman) for lv in WARNING_LEVELS] == [
        ("blue", "IV"),
        ("yellow", "III"),
        ("orange", "II"),
        ("red", "I"),
    ]
    for level in WARNING_LEVELS:
        assert Level.parse(level.label) is Level.parse(level.roman) is level


# -- clock -------------------------------------------------------------------


def test_manual_clock_stands_still_until_told():
    """A ManualClock reports its start time until advanced or set."""
    clock = ManualClock(1_700_000_000.0)
    assert clock.now() == clock.now() == 1_700_000_000.0
    assert clock.now_ms() == 1_700_000_000_000
    assert ManualClock().now() == 0.0


def test_manual_clock_advance_accumulates():
    """advance adds seconds (zero allowed), and now_ms follows in whole milliseconds."""
    clock = ManualClock(100.0)
    clock.advance(0.25)
    clock.advance(0)
    clock.advance(2.0009)
    assert clock.now() == pytest.approx(102.2509)
    assert clock.now_ms() == 102_251  # rounded, not truncated


def test_manual_clock_refuses_to_go_backwards():
    """advance with a negative step raises ValueError and leaves the time unchanged."""
    clock = ManualClock(50.0)
    with pytest.raises(ValueError, match="does not go backwards"):
        clock.advance(-0.001)
    assert clock.now() == 50.0


def test_manual_clock_set_jumps_to_an_absolute_time():
    """set moves the clock to the given instant; advance continues from there."""
    clock = ManualClock(0.0)
    clock.set(1_764_028_800.5)
    assert clock.now_ms() == 1_764_028_800_500
    clock.advance(1.0)
    assert clock.now() == 1_764_028_801.5


def test_clocks_satisfy_the_clock_protocol():
    """Both clocks provide now() and now_ms(); the system clock's two readings agree."""
    clocks: list[Clock] = [ManualClock(5.0), SystemClock()]
    system = clocks[1]
    before = system.now()
    ms = system.now_ms()
    after = system.now()
    assert int(before * 1000) - 1 <= ms <= int(after * 1000) + 1
    assert isinstance(ms, int)
    assert clocks[0].now_ms() == 5000
