"""Spatial rules: k of n nodes of a grid, street or district at a level raise one area event.

A spatial rule watches the levels other rules give each node (its `members`,
such as `water_level.depth`), not readings. Per area it keeps each node's
latest level (the highest any member rule holds for it) and reaches the
highest level that at least `need` nodes of the area reach together, from
`at_least` up: with `nodes = 3`, nodes at red, orange, orange and yellow make
an orange area event; one more at red makes it red. With `fraction`, the
need is also that share of the nodes the registry places in the area.

The member rules' own hysteresis keeps node levels steady, so the area's
level needs none of its own: it moves only when a node's warning does.
Each node's mark keeps the (reading time, seq) of the warning that set it,
so a re-delivered or late older warning changes nothing. Pure.

>>> rule = AreaRule("flood.street", Kind.WATER_LEVEL, members=("water_level.depth",),
...                 by="street", at_least=Level.YELLOW, nodes=2)
>>> state = AreaState()
>>> def mark(node, level, ts):
...     return rule.step(state, node=node, rule="water_level.depth", level=level,
...                      value=0.0, ts_ms=ts, seq=ts, total=0)
>>> [mark("wl-1", Level.RED, 1), mark("wl-2", Level.YELLOW, 2), mark("wl-2", Level.RED, 3)]
[None, <Level.YELLOW: 2>, <Level.RED: 4>]
>>> mark("wl-2", Level.RED, 3) is None  # the same warning again: nothing changes
True
>>> mark("wl-1", Level.NONE, 4)
<Level.NONE: 0>
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import msgspec

from cityvitals.contract import AreaScope, Placement
from cityvitals.kinds import Kind
from cityvitals.levels import WARNING_LEVELS, Level
from stream.rules.base import EVERY_NODE, Rule, Selector

AREA_SCOPES: tuple[AreaScope, ...] = ("grid", "street", "district")


class NodeMark(msgspec.Struct, array_like=True):
    """A node's latest level under one member rule, and the warning that set it."""

    level: Level
    value: float
    ts_ms: int
    seq: int


class AreaState(msgspec.Struct, omit_defaults=True):
    """What a spatial rule remembers about one area.

    Nodes are kept after they clear (their marks stop stale warnings), so
    the state grows with the area's node count, never with time.
    """

    level: Level = Level.NONE
    #: node -> member rule -> mark
    nodes: dict[str, dict[str, NodeMark]] = msgspec.field(default_factory=dict)
    #: How many area warnings were raised: the `seq` of the next one.
    changes: int = 0
    #: Newest reading time seen: area warnings' times never go back, even when
    #: the nodes' clocks disagree.
    ts_ms: int = 0
    #: Without a registry, where each node seen is: the area's placement is
    #: what they share.
    places: dict[str, Placement] = msgspec.field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AreaRule:
    """k of n nodes of one area at `at_least` or above raise one area warning."""

    name: str
    kind: Kind
    members: tuple[str, ...]
    by: AreaScope
    at_least: Level = Level.BLUE
    nodes: int = 2
    fraction: float = 0.0
    selector: Selector = EVERY_NODE

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError(f"{self.name}: at least one member rule")
        if self.by not in AREA_SCOPES:
            raise ValueError(f"{self.name}: by is one of {', '.join(AREA_SCOPES)}")
        if self.at_least not in WARNING_LEVELS:
            raise ValueError(f"{self.name}: at_least is a warning level (blue..red)")
        if self.nodes < 1:
            raise ValueError(f"{self.name}: nodes >= 1")
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"{self.name}: fraction within 0..1")

    @property
    def metric(self) -> str:
        """What an area warning's value counts."""
        return "nodes"

    def area_of(self, placement: Placement) -> str:
        """The area (grid, street or district name) a node of `placement` counts in."""
        return str(getattr(placement, self.by))

    def need(self, total: int) -> int:
        """Nodes that must reach a level together; `total` is the area's node count (0: unknown)."""
        return max(self.nodes, math.ceil(self.fraction * total - 1e-9))

    def node_levels(self, state: AreaState) -> dict[str, Level]:
        """Each node's level: the highest any member rule holds for it now."""
        return {
            node: max(mark.level for mark in marks.values()) for node, marks in state.nodes.items()
        }

    def level_of(self, state: AreaState, total: int) -> Level:
        need = self.need(total)
        levels = sorted(self.node_levels(state).values(), reverse=True)
        if len(levels) < need:
            return Level.NONE
        reached = levels[need - 1]
        return reached if reached >= self.at_least else Level.NONE

    def step(
        self,
        state: AreaState,
        *,
        node: str,
        rule: str,
        level: Level,
        value: float,
        ts_ms: int,
        seq: int,
        total: int,
    ) -> Level | None:
        """Feed one member warning (its node, rule and new level); the area's new level if
        it changed."""
        marks = state.nodes.setdefault(node, {})
        old = marks.get(rule)
        if old is not None and (ts_ms, seq) <= (old.ts_ms, old.seq):
            return None
        marks[rule] = NodeMark(level, value, ts_ms, seq)
        state.ts_ms = max(state.ts_ms, ts_ms)
        after = self.level_of(state, total)
        if after == state.level:
            return None
        state.level = after
        state.changes += 1
        return after


#: A rule of a rule file: one that watches a node's readings, or an area's nodes.
AnyRule = Rule | AreaRule
