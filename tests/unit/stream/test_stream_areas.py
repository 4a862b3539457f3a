"""Spatial rules: k of n nodes of an area raise one area warning, whatever order and
however often the node warnings arrive."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cityvitals.contract import Placement, Warning, decode_warning, encode
from cityvitals.kinds import Kind
from cityvitals.levels import Level
from cityvitals.registry import Device, Registry
from stream.areas import AreaEngine, area_key, decode_area_state, encode_area_state
from stream.rules import AreaRule, AreaState, Selector
from stream.rules.area import HISTORY_CHANGES, HISTORY_MS
from tests.factories import make_warning

T0 = 1_764_028_800_000


def place(street: str = "Dock Street", grid: str = "HB-101", *, lat: float = 31.0) -> Placement:
    return Placement(
        district="Harbour", street=street, grid=grid, unit="drainage", lat=lat, lon=121.0
    )


def node_warning(
    node: str,
    level: Level,
    ts_ms: int,
    *,
    seq: int | None = None,
    rule: str = "water_level.depth",
    where: Placement | None = None,
) -> Warning:
    return make_warning(
        level,
        node=node,
        rule=rule,
        ts_ms=ts_ms,
        seq=ts_ms if seq is None else seq,
        placement=where or place(),
        fp=f"{rule}:{node}",
    )


RULE = AreaRule(
    "flood.street",
    Kind.WATER_LEVEL,
    members=("water_level.depth",),
    by="street",
    at_least=Level.YELLOW,
    nodes=3,
)
KEY = area_key(RULE, "Dock Street")


def feed(engine: AreaEngine, state: AreaState, *warnings: Warning) -> list[Warning]:
    out = []
    for w in warnings:
        for key, _ in engine.routes(w):
            out += engine.evaluate(key, w, state)
    return out


def test_the_area_reaches_the_level_its_kth_node_reaches_and_clears_below_k():
    engine = AreaEngine([RULE])
    state = AreaState()
    raised = feed(
        engine,
        state,
        node_warning("wl-1", Level.RED, T0 + 1),
        node_warning("wl-2", Level.ORANGE, T0 + 2),
        node_warning("wl-3", Level.BLUE, T0 + 3),  # below at_least: no event yet
        node_warning("wl-3", Level.YELLOW, T0 + 4),  # the third node: yellow
        node_warning("wl-4", Level.ORANGE, T0 + 5),  # now three at orange or above
        node_warning("wl-1", Level.ORANGE, T0 + 6),  # still three at orange: nothing
        node_warning("wl-2", Level.NONE, T0 + 7),  # wl-1, wl-3, wl-4 remain: yellow
        node_warning("wl-3", Level.NONE, T0 + 8),  # two left: clear
    )
    assert [(w.level, w.previous, w.value, w.threshold) for w in raised] == [
        (Level.YELLOW, Level.NONE, 3.0, 3.0),
        (Level.ORANGE, Level.YELLOW, 3.0, 3.0),
        (Level.YELLOW, Level.ORANGE, 3.0, 3.0),
        (Level.NONE, Level.YELLOW, 2.0, 3.0),
    ]
    first = raised[0]
    assert first.node == ""
    assert first.subject == "street:Dock Street"
    assert first.area is not None
    assert [(m.node, m.level) for m in first.area.members] == [
        ("wl-1", Level.RED),
        ("wl-2", Level.ORANGE),
        ("wl-3", Level.YELLOW),
    ]
    # One identity for the area's whole story; its seq counts the changes.
    assert {w.fingerprint for w in raised} == {first.fingerprint}
    assert [w.seq for w in raised] == [1, 2, 3, 4]
    # The area warning goes over the wire like any other.
    assert decode_warning(encode(first)) == first


def test_a_repeated_or_older_node_warning_changes_nothing():
    engine = AreaEngine([RULE])
    state = AreaState()
    story = [node_warning(f"wl-{i}", Level.RED, T0 + i) for i in range(3)]
    assert len(feed(engine, state, *story)) == 1
    # A worker that redid its batch emits the same warnings again.
    assert feed(engine, state, *story) == []
    # An older warning of wl-0 (a late resend) does not undo its newer red.
    assert feed(engine, state, node_warning("wl-0", Level.NONE, T0 - 5)) == []
    assert state.level is Level.RED


def test_area_warning_times_never_go_back_when_node_clocks_disagree():
    engine = AreaEngine([RULE])
    state = AreaState()
    out = feed(
        engine,
        state,
        node_warning("wl-1", Level.RED, T0 + 90_000),
        node_warning("wl-2", Level.RED, T0 + 1_000),
        node_warning("wl-3", Level.RED, T0 + 2_000),  # raises, at the newest time seen
        node_warning("wl-2", Level.NONE, T0 + 3_000),  # clears: the alert book must see it
    )
    assert [(w.level, w.ts_ms, w.seq) for w in out] == [
        (Level.RED, T0 + 90_000, 1),
        (Level.NONE, T0 + 90_000, 2),
    ]


def test_a_node_counts_at_the_highest_level_any_member_rule_gives_it():
    rule = AreaRule(
        "flood.street",
        Kind.WATER_LEVEL,
        members=("water_level.depth", "water_level.forecast"),
        by="street",
        nodes=2,
    )
    engine = AreaEngine([rule])
    state = AreaState()
    out = feed(
        engine,
        state,
        node_warning("wl-1", Level.RED, T0 + 1),
        node_warning("wl-2", Level.YELLOW, T0 + 2),
        node_warning("wl-2", Level.RED, T0 + 3, rule="water_level.forecast"),
        node_warning("wl-2", Level.NONE, T0 + 4),  # depth clears; the forecast holds red
    )
    assert [w.level for w in out] == [Level.YELLOW, Level.RED]


def test_routes_follow_kind_selector_and_placement():
    where = Selector(district=frozenset({"Harbour"}))
    rules = [
        AreaRule("by.street", Kind.WATER_LEVEL, ("water_level.depth",), "street", selector=where),
        AreaRule("by.grid", Kind.WATER_LEVEL, ("water_level.depth",), "grid"),
        AreaRule("crowds", Kind.CROWD, ("water_level.depth",), "grid"),
    ]
    engine = AreaEngine(rules)
    w = node_warning("wl-1", Level.RED, T0)
    assert [key for key, _ in engine.routes(w)] == [
        "by.street|street:Dock Street",
        "by.grid|grid:HB-101",
    ]
    elsewhere = Placement(district="Old Town", street="", grid="OT-1", unit="u", lat=0, lon=0)
    assert [k for k, _ in engine.routes(node_warning("wl-1", Level.RED, T0, where=elsewhere))] == [
        "by.grid|grid:OT-1"
    ]
    # Not a member rule: no route. An area warning never counts as a node.
    assert engine.routes(node_warning("wl-1", Level.RED, T0, rule="water_level.rise")) == []
    area = feed(
        AreaEngine([RULE]),
        AreaState(),
        *(node_warning(f"wl-{i}", Level.RED, T0 + i) for i in range(3)),
    )
    assert engine.routes(area[0]) == []


def registry(streets: dict[str, int]) -> Registry:
    devices = [
        Device(
            node=f"wl-{street[:2].lower()}{i}",
            kind=Kind.WATER_LEVEL,
            lat=31.0 + i,
            lon=121.0,
            district="Harbour",
            street=street,
            grid=f"G-{i % 2}",
            unit="drainage" if i else "harbour-ops",
        )
        for street, count in streets.items()
        for i in range(count)
    ]
    crowd = Device(
        node="cr-1",
        kind=Kind.CROWD,
        lat=0,
        lon=0,
        district="Harbour",
        street="Dock Street",
        grid="G-0",
        unit="police",
    )
    return Registry([*devices, crowd])


def test_fraction_and_placement_come_from_the_registry():
    rule = AreaRule(
        "flood.street",
        Kind.WATER_LEVEL,
        ("water_level.depth",),
        "street",
        at_least=Level.ORANGE,
        nodes=2,
        fraction=0.5,
    )
    engine = AreaEngine([rule], registry=registry({"Dock Street": 6, "Quay Road": 2}))
    state = AreaState()
    dock = place("Dock Street")
    out = feed(
        engine,
        state,
        node_warning("wl-do0", Level.RED, T0 + 1, where=dock),
        node_warning("wl-do1", Level.RED, T0 + 2, where=dock),  # 2 of 6: under half
        node_warning("wl-do2", Level.ORANGE, T0 + 3, where=dock),  # 3 of 6: half
    )
    assert len(out) == 1
    w = out[0]
    assert (w.level, w.value, w.threshold) == (Level.ORANGE, 3.0, 3.0)
    assert w.area is not None
    assert w.area.total == 6
    # The nodes of the street share its district and street, not one grid; the
    # unit is the one most of them belong to; the map point is their centroid.
    p = w.placement
    assert (p.district, p.street, p.grid, p.unit) == ("Harbour", "Dock Street", "", "drainage")
    assert p.lat == pytest.approx(31.0 + 2.5)
    # Quay Road has two gauges: with fraction 0.5 two are enough there.
    quay = place("Quay Road")
    state = AreaState()
    out = feed(
        engine,
        state,
        node_warning("wl-qu0", Level.RED, T0, where=quay),
        node_warning("wl-qu1", Level.ORANGE, T0, where=quay),
    )
    assert [(w.level, w.threshold) for w in out] == [(Level.ORANGE, 2.0)]


def test_without_a_registry_the_area_is_placed_where_its_nodes_are():
    engine = AreaEngine([RULE])
    state = AreaState()
    out = feed(
        engine,
        state,
        *(
            node_warning(f"wl-{i}", Level.RED, T0 + i, where=place(grid=f"G{i}", lat=30.0 + i))
            for i in range(3)
        ),
    )
    p = out[0].placement
    assert (p.street, p.grid, p.lat) == ("Dock Street", "", 31.0)
    assert out[0].area is not None
    assert out[0].area.total == 0


def test_the_state_round_trips_and_stays_bounded_by_the_area_not_by_time():
    """A node's timeline keeps at most HISTORY_CHANGES changes and only those of the last
    HISTORY_MS (and always its latest), so the state is bounded by the area's size."""
    engine = AreaEngine([RULE])
    state = AreaState()
    rng = random.Random(3)
    for i in range(2_000):
        node = f"wl-{rng.randrange(10)}"
        feed(engine, state, node_warning(node, rng.choice(list(Level)), T0 + i * 60_000))
        state = decode_area_state(encode_area_state(state))
    assert len(state.nodes) == 10
    marks = [m for by_rule in state.nodes.values() for ms in by_rule.values() for m in ms]
    assert all(len(ms) <= HISTORY_CHANGES for r in state.nodes.values() for ms in r.values())
    assert len(encode_area_state(state)) < 10 * HISTORY_CHANGES * 40 + 1_000
    # A day later, the next change of each node leaves it that change and the one in
    # force when the day's window began.
    feed(engine, state, node_warning("wl-0", Level.NONE, state.ts_ms + HISTORY_MS + 1))
    feed(engine, state, *(node_warning(f"wl-{i}", Level.NONE, state.ts_ms) for i in range(1, 10)))
    assert [len(ms) for r in state.nodes.values() for ms in r.values()] == [2] * 10
    assert marks


def test_a_key_of_a_rule_no_longer_in_the_file_is_ignored():
    engine = AreaEngine([RULE])
    assert (
        engine.evaluate("gone|street:Dock Street", node_warning("wl-1", Level.RED, T0), AreaState())
        == []
    )


NODE_STORY = st.lists(st.sampled_from(list(Level)), min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(
    stories=st.lists(NODE_STORY, min_size=1, max_size=6),
    seed=st.integers(0, 2**32 - 1),
    repeats=st.integers(0, 10),
)
def test_any_delivery_order_with_repeats_ends_at_the_level_of_the_latest_warnings(
    stories, seed, repeats
):
    """Each node's warnings, delivered in any order across nodes and within a node, with
    some delivered again: the area ends where the newest warning of each node puts it, and
    every area warning it raised is newer than the one before (so the alert book takes it)."""
    rng = random.Random(seed)
    warnings = [
        node_warning(f"wl-{n}", level, T0 + 1_000 * i + n)
        for n, story in enumerate(stories)
        for i, level in enumerate(story)
    ]
    delivered = warnings + [rng.choice(warnings) for _ in range(repeats)]
    rng.shuffle(delivered)
    engine = AreaEngine([RULE])
    state = AreaState()
    out = feed(engine, state, *delivered)
    latest = sorted((story[-1] for story in stories), reverse=True)
    expected = latest[RULE.nodes - 1] if len(latest) >= RULE.nodes else Level.NONE
    assert state.level is (expected if expected >= RULE.at_least else Level.NONE)
    if out:
        assert out[-1].level is state.level
    stamps = [(w.ts_ms, w.seq) for w in out]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)


def test_gauges_flushed_out_of_order_still_raise_the_area_once_at_its_reading_time():
    """Edge agents flushing a backlog at different speeds: gauge 1's whole storm arrives
    before gauges 2 and 3 send theirs. Judged in reading time, the three were at yellow or
    above together from 14:00 to 16:00: one late raise (at 14:00), then the area as of the
    newest reading (clear); the rest of the backlog reopens nothing."""
    hour = 3_600_000
    engine = AreaEngine([RULE])
    state = AreaState()
    one = [(Level.RED, 13), (Level.ORANGE, 15), (Level.NONE, 17)]
    two = [(Level.YELLOW, 13.5), (Level.NONE, 16)]
    three = [(Level.ORANGE, 14), (Level.YELLOW, 15.5), (Level.NONE, 16.5)]

    def story(node: str, changes) -> list[Warning]:
        return [node_warning(node, lv, T0 + round(h * hour)) for lv, h in changes]

    out = feed(engine, state, *story("wl-1", one), *story("wl-2", two), *story("wl-3", three))
    assert [(w.level, w.area.at_ms, w.ts_ms, w.seq) for w in out if w.area] == [
        (Level.YELLOW, T0 + 14 * hour, T0 + 17 * hour, 1),
        (Level.NONE, T0 + 17 * hour, T0 + 17 * hour, 2),
    ]
    assert [m.node for m in out[0].area.members] == ["wl-1", "wl-3", "wl-2"]
    assert state.settled_ms == T0 + 17 * hour
