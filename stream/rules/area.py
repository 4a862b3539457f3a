"""Spatial rules: k of n nodes of a grid, street or district at a level raise one area event.

A spatial rule watches the levels other rules give each node (its `members`,
such as `water_level.depth`), not readings. Per area it keeps each node's
recent level changes and reaches the highest level that at least `need`
nodes of the area hold at the same time, from `at_least` up: with
`nodes = 3`, nodes at red, orange, orange and yellow make an orange area
event; one more at red makes it red. With `fraction`, the need is also that
share of the nodes the registry places in the area. A node's level is the
highest any member rule holds for it.

The judgement is in reading time, not arrival order: edge agents that flush
hours of buffered readings at different speeds (after an outage) deliver
one node's afternoon before another's morning. So each node's changes are
kept as a short timeline, and a change that arrives late is also judged at
its own time: if the area was at a higher level then, that is raised (the
warning's `area.at_ms` says when), and then, as always, the area is brought
to its level as of the newest reading time seen. A late change from before
the area last went down never reopens what was already judged over.

The member rules' own hysteresis keeps node levels steady, so the area's
level needs none of its own. A re-delivered change (same reading time and
seq) changes nothing. Pure.

>>> rule = AreaRule("flood.street", Kind.WATER_LEVEL, members=("water_level.depth",),
...                 by="street", at_least=Level.YELLOW, nodes=2)
>>> state = AreaState()
>>> def mark(node, level, ts):
...     changes = rule.step(state, node=node, rule="water_level.depth", level=level,
...                         value=0.0, ts_ms=ts, seq=ts, total=0)
...     return [(c.level.label, c.at_ms) for c in changes]
>>> [mark("wl-1", Level.RED, 10), mark("wl-2", Level.YELLOW, 20), mark("wl-2", Level.RED, 30)]
[[], [('yellow', 20)], [('red', 30)]]
>>> mark("wl-2", Level.RED, 30)  # the same change again: nothing
[]
>>> mark("wl-1", Level.NONE, 90)
[('none', 90)]

A change that arrives late is judged at its time, and the area then at the newest:

>>> state = AreaState()
>>> mark("wl-1", Level.RED, 10), mark("wl-1", Level.NONE, 60), mark("wl-2", Level.ORANGE, 30)
([], [], [('orange', 30), ('none', 60)])
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import NamedTuple

import msgspec

from cityvitals.contract import AreaScope, Placement
from cityvitals.kinds import Kind
from cityvitals.levels import WARNING_LEVELS, Level
from stream.rules.base import EVERY_NODE, Rule, Selector

AREA_SCOPES: tuple[AreaScope, ...] = ("grid", "street", "district")


#: How far back (reading time, from the newest seen) a node's changes are kept.
HISTORY_MS = 24 * 3_600_000
#: At most this many changes per node and member rule, the newest. Member rules
#: have hysteresis, so a storm is a handful of changes per gauge; 16 keep a
#: node-rule to about 500 bytes of state at worst.
HISTORY_CHANGES = 16


class NodeMark(msgspec.Struct, array_like=True):
    """A node's level under one member rule from `ts_ms` on, and the warning that set it."""

    level: Level
    value: float
    ts_ms: int
    seq: int


class AreaChange(NamedTuple):
    """The area's level moved: to `level`, judged at reading time `at_ms`."""

    level: Level
    previous: Level
    at_ms: int


class AreaState(msgspec.Struct, omit_defaults=True):
    """What a spatial rule remembers about one area.

    Nodes are kept after they clear (their last change stops stale warnings),
    so the state grows with the area's node count, not with time.
    """

    level: Level = Level.NONE
    #: node -> member rule -> its changes, oldest first
    nodes: dict[str, dict[str, list[NodeMark]]] = msgspec.field(default_factory=dict)
    #: How many area warnings were raised: the `seq` of the next one.
    changes: int = 0
    #: Newest reading time seen: area warnings' times never go back.
    ts_ms: int = 0
    #: Reading time at which the area last went down: late changes from before
    #: it are not judged again.
    settled_ms: int = 0
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

    def node_marks(self, state: AreaState, at_ms: int) -> dict[str, NodeMark]:
        """Each node's strongest member-rule mark in force at reading time `at_ms`."""
        out: dict[str, NodeMark] = {}
        for node, by_rule in state.nodes.items():
            held = [m for m in (_in_force(marks, at_ms) for marks in by_rule.values()) if m]
            if held:
                out[node] = max(held, key=lambda m: (m.level, m.ts_ms))
        return out

    def level_at(self, state: AreaState, at_ms: int, total: int) -> Level:
        """The area's level at reading time `at_ms`: the `need`-th highest node level."""
        need = self.need(total)
        levels = sorted((m.level for m in self.node_marks(state, at_ms).values()), reverse=True)
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
    ) -> list[AreaChange]:
        """Feed one member warning (its node, rule and new level); the area's level changes
        it causes: none, one, or a late raise followed by the level of now."""
        marks = state.nodes.setdefault(node, {}).setdefault(rule, [])
        stamp = (ts_ms, seq)
        at = bisect.bisect_left(marks, stamp, key=lambda m: (m.ts_ms, m.seq))
        if at < len(marks) and (marks[at].ts_ms, marks[at].seq) == stamp:
            return []  # re-delivered
        marks.insert(at, NodeMark(level, value, ts_ms, seq))
        state.ts_ms = max(state.ts_ms, ts_ms)
        _trim(marks, state.ts_ms)
        out: list[AreaChange] = []
        if ts_ms < state.ts_ms and ts_ms >= state.settled_ms:
            then = self.level_at(state, ts_ms, total)
            if then > state.level:
                out.append(self._move(state, then, ts_ms))
        now = self.level_at(state, state.ts_ms, total)
        if now != state.level:
            out.append(self._move(state, now, state.ts_ms))
        return out

    @staticmethod
    def _move(state: AreaState, level: Level, at_ms: int) -> AreaChange:
        change = AreaChange(level, state.level, at_ms)
        if level < state.level:
            state.settled_ms = at_ms
        state.level = level
        state.changes += 1
        return change


def _in_force(marks: list[NodeMark], at_ms: int) -> NodeMark | None:
    """The last of `marks` (oldest first) set at or before `at_ms`."""
    for mark in reversed(marks):
        if mark.ts_ms <= at_ms:
            return mark
    return None


def _trim(marks: list[NodeMark], newest_ms: int) -> None:
    """Keep the changes of the last HISTORY_MS (at most HISTORY_CHANGES), and always the
    latest: it is the node's level now."""
    keep = max(len(marks) - HISTORY_CHANGES, 0)
    while keep < len(marks) - 1 and marks[keep + 1].ts_ms <= newest_ms - HISTORY_MS:
        keep += 1
    del marks[:keep]


#: A rule of a rule file: one that watches a node's readings, or an area's nodes.
AnyRule = Rule | AreaRule
