"""Area warnings: route node warnings to the spatial rules that count them, and raise
one warning per area. Pure.

The readings agent hands each node warning of a member rule to `routes`,
which names the (rule, area) keys it counts for; the area agent, one per key
(a Kafka partition keyed by it in the distributed mode), feeds it to
`evaluate` with that key's state. One writer per area, so two nodes flooding
at once can never open two area events.

>>> from cityvitals.contract import CONTRACT_VERSION, Warning, fingerprint
>>> from cityvitals.kinds import Kind
>>> from cityvitals.levels import Level
>>> from stream.rules.area import AreaRule
>>> areas = AreaEngine([AreaRule("flood.street", Kind.WATER_LEVEL, ("depth",), "street",
...                              nodes=2)])
>>> def warned(node, level, ts_ms):
...     where = Placement(district="Harbour", street="Dock Street", grid="HB-101",
...                       unit="Drainage", lat=31.2, lon=121.5)
...     return Warning(v=CONTRACT_VERSION, fingerprint=fingerprint(rule="depth", node=node),
...                    rule="depth", node=node, kind=Kind.WATER_LEVEL, metric="depth_cm",
...                    level=level, previous=Level.NONE, value=31.0, threshold=30.0,
...                    unit="cm", ts_ms=ts_ms, seq=1, placement=where)
>>> [key for key, _ in areas.routes(warned("wl-1", Level.ORANGE, 1))]
['flood.street|street:Dock Street']
>>> state = AreaState()
>>> key = "flood.street|street:Dock Street"
>>> areas.evaluate(key, warned("wl-1", Level.ORANGE, 1_000), state)
[]
>>> [w] = areas.evaluate(key, warned("wl-2", Level.RED, 2_000), state)
>>> w.level.label, w.subject, w.value, w.threshold, [m.node for m in w.area.members]
('orange', 'street:Dock Street', 2.0, 2.0, ['wl-2', 'wl-1'])
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from cityvitals.contract import (
    CONTRACT_VERSION,
    Area,
    AreaMember,
    Placement,
    Warning,
    fingerprint,
)
from cityvitals.levels import Level
from cityvitals.registry import Device, Registry
from stream.rules.area import AreaChange, AreaRule, AreaState
from stream.state import StateCodec

#: Separates a spatial rule's name from its area in a key; no rule name holds it.
KEY_SEPARATOR = "|"


def area_key(rule: AreaRule, area: str) -> str:
    return f"{rule.name}{KEY_SEPARATOR}{rule.by}:{area}"


class AreaEngine:
    """The spatial rules of a deployment, with the registry's view of each area.

    With a registry, each area's node count (for `fraction`) and placement
    (the fields its nodes share, their centroid, the unit most of them
    belong to) come from it; without one, from the member warnings seen.
    """

    def __init__(self, rules: Iterable[AreaRule], *, registry: Registry | None = None) -> None:
        self.rules = tuple(rules)
        self._by_name = {rule.name: rule for rule in self.rules}
        self._by_member: dict[str, list[AreaRule]] = {}
        for rule in self.rules:
            for member in rule.members:
                self._by_member.setdefault(member, []).append(rule)
        #: Names of the rules whose warnings some spatial rule counts.
        self.members = frozenset(self._by_member)
        self._totals: dict[str, int] = {}
        self._places: dict[str, Placement] = {}
        if registry is not None:
            self._census(registry)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def _census(self, registry: Registry) -> None:
        for rule in self.rules:
            groups: dict[str, list[Device]] = {}
            for device in registry.by_kind(rule.kind):
                if rule.selector.matches(device.node, device.placement):
                    groups.setdefault(rule.area_of(device.placement), []).append(device)
            for area, devices in groups.items():
                key = area_key(rule, area)
                self._totals[key] = len(devices)
                self._places[key] = shared_placement([d.placement for d in devices])

    def routes(self, warning: Warning) -> list[tuple[str, AreaRule]]:
        """The (key, rule) of every spatial rule and area `warning` counts in."""
        if warning.area is not None:
            return []  # an area event never counts as a node of another area
        out = []
        for rule in self._by_member.get(warning.rule, ()):
            if rule.kind is not warning.kind:
                continue
            if not rule.selector.everything and not rule.selector.matches(
                warning.node, warning.placement
            ):
                continue
            area = rule.area_of(warning.placement)
            if area:
                out.append((area_key(rule, area), rule))
        return out

    def evaluate(self, key: str, warning: Warning, state: AreaState) -> list[Warning]:
        """Count `warning` in the area `key`; an area Warning for each level change."""
        rule = self._by_name.get(key.split(KEY_SEPARATOR, 1)[0])
        if rule is None:
            return []  # a rule removed from the file since the update was sent
        total = self._totals.get(key, 0)
        place = self._places.get(key)
        if place is None:
            # No registry: the area is what the nodes seen there share.
            state.places[warning.node] = warning.placement
        changes = rule.step(
            state,
            node=warning.node,
            rule=warning.rule,
            level=warning.level,
            value=warning.value,
            ts_ms=warning.ts_ms,
            seq=warning.seq,
            total=total,
        )
        if not changes:
            return []
        if place is None:
            place = shared_placement(list(state.places.values()))
        name = key.split(KEY_SEPARATOR, 1)[1].split(":", 1)[1]
        first_seq = state.changes - len(changes) + 1
        return [
            self._warning(rule, change, state, name=name, total=total, place=place, seq=seq)
            for seq, change in enumerate(changes, start=first_seq)
        ]

    @staticmethod
    def _warning(
        rule: AreaRule,
        change: AreaChange,
        state: AreaState,
        *,
        name: str,
        total: int,
        place: Placement,
        seq: int,
    ) -> Warning:
        # A clear lists the nodes still at the level it left.
        shown = change.level if change.level > Level.NONE else change.previous
        members = sorted(
            (
                AreaMember(node=node, level=m.level, value=m.value, ts_ms=m.ts_ms)
                for node, m in rule.node_marks(state, change.at_ms).items()
                if m.level >= shown
            ),
            key=lambda m: (-m.level, m.node),
        )
        area = Area(
            scope=rule.by, name=name, members=tuple(members), total=total, at_ms=change.at_ms
        )
        return Warning(
            v=CONTRACT_VERSION,
            fingerprint=fingerprint(rule=rule.name, area=area.key),
            rule=rule.name,
            node="",
            kind=rule.kind,
            metric=rule.metric,
            level=change.level,
            previous=change.previous,
            value=float(len(members)),
            threshold=float(rule.need(total)),
            unit="nodes",
            ts_ms=state.ts_ms,
            seq=seq,
            placement=place,
            area=area,
        )


def shared_placement(places: list[Placement]) -> Placement:
    """What `places` have in common: equal fields kept, others empty; the unit most of
    them belong to; their centroid.

    >>> a = Placement(district="D", street="S1", grid="G1", unit="U", lat=1.0, lon=2.0)
    >>> b = Placement(district="D", street="S2", grid="G2", unit="U", lat=3.0, lon=4.0)
    >>> shared_placement([a, b])
    Placement(district='D', street='', grid='', unit='U', lat=2.0, lon=3.0)
    """

    def common(values: list[str]) -> str:
        return values[0] if len(set(values)) == 1 else ""

    units = Counter(p.unit for p in places)
    unit = min(units, key=lambda u: (-units[u], u))
    return Placement(
        district=common([p.district for p in places]),
        street=common([p.street for p in places]),
        grid=common([p.grid for p in places]),
        unit=unit,
        lat=round(sum(p.lat for p in places) / len(places), 6),
        lon=round(sum(p.lon for p in places) / len(places), 6),
    )


_codec = StateCodec(AreaState)


def encode_area_state(state: AreaState) -> bytes:
    return _codec.encode(state)


def decode_area_state(data: bytes | None) -> AreaState:
    return _codec.decode(data)
