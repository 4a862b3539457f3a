"""The early-warning rule file (TOML): declarative rules with selectors, checked whole.

Each `[[rule]]` has a `name`, a `type` (threshold, rate, forecast, composite,
anomaly, area), the sensor `kind` it watches and, optionally, `where`: a selector
over registry fields (district, street, grid, unit, node). Any mistake is one
`ConfigError` naming the file, the rule (index and name) and the field, with
what was expected. The built-in rules are `stream/rules/default.toml`; the
annotated example with every type is `deploy/rules.toml`.

>>> import tempfile, pathlib
>>> text = '''
... [[rule]]
... name = "depth"
... type = "threshold"
... kind = "water_level"
... metric = "depth_cm"
... levels = { blue = 10, yellow = 5 }
... '''
>>> import textwrap
>>> with tempfile.TemporaryDirectory() as d:
...     path = pathlib.Path(d) / "rules.toml"
...     _ = path.write_text(text)
...     try:
...         load_rules(path)
...     except ConfigError as exc:
...         print(textwrap.fill(str(exc).replace(d, "DIR"), 80))
DIR/rules.toml: rule[0].levels (rule "depth"): expected thresholds that rise
with the level (blue < yellow < orange < red), found {'blue': 10, 'yellow': 5}
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from cityvitals.errors import ConfigError
from cityvitals.kinds import KIND_METRICS, Kind
from cityvitals.levels import WARNING_LEVELS, Level
from cityvitals.tomlconfig import Schema, Section, lookup, read_toml
from stream.rules.anomaly import DETECTOR_SETS, AnomalyRule
from stream.rules.area import AnyRule, AreaRule
from stream.rules.base import Rule, Selector
from stream.rules.composite import CompositeRule, Condition
from stream.rules.forecast import ForecastRule
from stream.rules.rate import RateRule
from stream.rules.threshold import ThresholdRule
from stream.trend import MAX_POINTS

__all__ = ["RULE_TYPES", "default_rules", "load_rules", "parse_rules"]

NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Positive = Annotated[float, msgspec.Meta(gt=0)]
Streak = Annotated[int, msgspec.Meta(ge=1, le=1000)]
Points = Annotated[int, msgspec.Meta(ge=2, le=MAX_POINTS)]
LevelName = Literal["blue", "yellow", "orange", "red"]
#: A fixed UTC offset of a city's clock, as `SeasonalBaseline` accepts it.
UtcOffset = Annotated[int, msgspec.Meta(ge=-24 * 60, le=24 * 60)]
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


class LevelsSpec(Section, frozen=True):
    blue: float | None = None
    yellow: float | None = None
    orange: float | None = None
    red: float | None = None

    def by_level(self) -> dict[Level, float]:
        pairs = zip(WARNING_LEVELS, (self.blue, self.yellow, self.orange, self.red), strict=True)
        return {lv: t for lv, t in pairs if t is not None}


class WhereSpec(Section, frozen=True):
    district: list[str] = msgspec.field(default_factory=list)
    street: list[str] = msgspec.field(default_factory=list)
    grid: list[str] = msgspec.field(default_factory=list)
    unit: list[str] = msgspec.field(default_factory=list)
    node: list[str] = msgspec.field(default_factory=list)

    def selector(self) -> Selector:
        return Selector(
            district=frozenset(self.district),
            street=frozenset(self.street),
            grid=frozenset(self.grid),
            unit=frozenset(self.unit),
            node=frozenset(self.node),
        )


class _RuleSpec(Section, frozen=True, tag_field="type"):
    name: str
    kind: Kind


class ThresholdSpec(_RuleSpec, frozen=True, tag="threshold"):
    metric: str
    levels: LevelsSpec
    band: NonNegative = 0.0
    raise_after: Streak = 2
    clear_after: Streak = 2
    min_duration_s: NonNegative = 0.0
    where: WhereSpec = WhereSpec()


class RateSpec(_RuleSpec, frozen=True, tag="rate"):
    metric: str
    #: Rise per `per_minutes`, in the metric's unit, for each level.
    levels: LevelsSpec
    per_minutes: Positive = 10.0
    span_minutes: Positive = 30.0
    min_points: Points = 3
    band: NonNegative = 0.0
    raise_after: Streak = 2
    clear_after: Streak = 2
    min_duration_s: NonNegative = 0.0
    where: WhereSpec = WhereSpec()


class ForecastSpec(_RuleSpec, frozen=True, tag="forecast"):
    metric: str
    threshold: float
    within_minutes: Positive
    level: LevelName
    span_minutes: Positive = 30.0
    min_points: Points = 4
    hold_factor: Annotated[float, msgspec.Meta(ge=1)] = 1.5
    raise_after: Streak = 2
    clear_after: Streak = 2
    where: WhereSpec = WhereSpec()


class ConditionSpec(Section, frozen=True):
    metric: str
    above: float | None = None
    below: float | None = None
    rising_per_minute: float | None = None
    band: NonNegative = 0.0


class CompositeSpec(_RuleSpec, frozen=True, tag="composite"):
    level: LevelName
    all: list[ConditionSpec]
    span_minutes: Positive = 30.0
    min_points: Points = 3
    raise_after: Streak = 2
    clear_after: Streak = 2
    min_duration_s: NonNegative = 0.0
    where: WhereSpec = WhereSpec()


class AnomalySpec(_RuleSpec, frozen=True, tag="anomaly"):
    metric: str
    #: Anomaly scores (1 - combined p-value), each strictly between 0 and 1.
    levels: LevelsSpec
    band: NonNegative = 0.0
    # Three in a row by default: a calibrated score still fires by chance
    # (at 0.999, once in a thousand readings); three at once by chance is rare.
    raise_after: Streak = 3
    clear_after: Streak = 3
    min_duration_s: NonNegative = 0.0
    #: Checked in `_anomaly` against DETECTOR_SETS (one list, not a second Literal).
    detectors: str = "default"
    resolution: Positive | None = None
    utc_offset_minutes: UtcOffset = 0
    where: WhereSpec = WhereSpec()


class AreaSpec(_RuleSpec, frozen=True, tag="area"):
    #: Names of the node rules (of this kind, in this file) whose levels count.
    of: list[str]
    by: Literal["grid", "street", "district"]
    nodes: Annotated[int, msgspec.Meta(ge=1, le=100_000)]
    at_least: LevelName = "blue"
    fraction: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    where: WhereSpec = WhereSpec()


NodeRuleSpec = ThresholdSpec | RateSpec | ForecastSpec | CompositeSpec | AnomalySpec
RuleSpec = NodeRuleSpec | AreaSpec
RULE_TYPES = ("threshold", "rate", "forecast", "composite", "anomaly", "area")


class RuleFile(Section, frozen=True):
    version: Literal[1] = 1
    rule: list[RuleSpec] = msgspec.field(default_factory=list)


_SCHEMA = Schema(RuleFile, describe="an early-warning rule file (rules.toml)")


def load_rules(path: Path) -> tuple[AnyRule, ...]:
    """Read and check the rule file at `path`; any mistake is one `ConfigError`."""
    return parse_rules(path, read_toml(path, _SCHEMA.describe))


def default_rules() -> tuple[AnyRule, ...]:
    """The built-in rules (`stream/rules/default.toml`, shipped with the package)."""
    source = resources.files("stream.rules").joinpath("default.toml")
    with resources.as_file(source) as path:
        return load_rules(Path(path))


def parse_rules(path: Path, data: dict[str, Any]) -> tuple[AnyRule, ...]:
    """Check parsed TOML `data` from the file at `path` and build its rules."""
    entries = data.get("rule", [])
    if isinstance(entries, list):
        for i, entry in enumerate(entries):
            kind = entry.get("type") if isinstance(entry, dict) else None
            if kind not in RULE_TYPES:
                raise ConfigError(
                    path,
                    _key(data, i, "type"),
                    f"one of {', '.join(RULE_TYPES)}",
                    found=kind,
                )
    try:
        spec = _SCHEMA.convert(path, data)
    except ConfigError as exc:
        match = re.match(r"rule\[(\d+)\]\.?(.*)$", exc.key)
        if match is None:
            raise
        raise ConfigError(
            path, _key(data, int(match[1]), match[2]), exc.expected, found=exc.found
        ) from None
    rules: list[AnyRule] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(spec.rule):
        if not _NAME.fullmatch(item.name):
            raise ConfigError(
                path,
                f"rule[{i}].name",
                "1 to 64 of a-z 0-9 _ . - starting with a letter or digit",
                found=item.name,
            )
        if item.name in seen:
            raise ConfigError(
                path, _key(data, i, "name"), f"a name not used before (rule[{seen[item.name]}])"
            )
        seen[item.name] = i
    for i, item in enumerate(spec.rule):
        if isinstance(item, AreaSpec):
            rules.append(_area(path, data, i, item, every=spec.rule, seen=seen))
        else:
            rules.append(_build(path, data, i, item))
    return tuple(rules)


def _key(data: dict[str, Any], index: int, field: str) -> str:
    """`rule[2].levels (rule "depth")`: the key path, and the rule's name when it has one."""
    key = f"rule[{index}]" + (f".{field}" if field else "")
    name = lookup(data, f"rule[{index}].name")
    return f'{key} (rule "{name}")' if isinstance(name, str) and name else key


def _metric(
    path: Path, data: dict[str, Any], i: int, field: str, *, kind: Kind, metric: str
) -> None:
    if metric not in KIND_METRICS[kind]:
        known = ", ".join(sorted(KIND_METRICS[kind]))
        raise ConfigError(
            path, _key(data, i, field), f"a metric of {kind.value}: {known}", found=metric
        )


def _levels(path: Path, data: dict[str, Any], i: int, levels: LevelsSpec) -> dict[Level, float]:
    by_level = levels.by_level()
    given = lookup(data, f"rule[{i}].levels")
    if not by_level:
        raise ConfigError(
            path, _key(data, i, "levels"), "at least one of blue, yellow, orange, red"
        )
    values = list(by_level.values())
    if values != sorted(values) or len(set(values)) != len(values):
        raise ConfigError(
            path,
            _key(data, i, "levels"),
            "thresholds that rise with the level (blue < yellow < orange < red)",
            found=given,
        )
    return by_level


def _area(
    path: Path,
    data: dict[str, Any],
    i: int,
    item: AreaSpec,
    *,
    every: list[RuleSpec],
    seen: dict[str, int],
) -> AreaRule:
    if not item.of:
        raise ConfigError(path, _key(data, i, "of"), "at least one rule name")
    for j, member in enumerate(item.of):
        where = _key(data, i, f"of[{j}]")
        index = seen.get(member)
        if index is None:
            names = ", ".join(r.name for r in every if r.kind is item.kind and r is not item)
            raise ConfigError(
                path,
                where,
                f"the name of a {item.kind.value} rule in this file ({names})",
                found=member,
            )
        other = every[index]
        if isinstance(other, AreaSpec):
            raise ConfigError(
                path,
                where,
                "a node rule (an area rule counts nodes, not other areas)",
                found=member,
            )
        if other.kind is not item.kind:
            raise ConfigError(
                path, where, f"a {item.kind.value} rule, not {other.kind.value}", found=member
            )
    return AreaRule(
        item.name,
        item.kind,
        members=tuple(item.of),
        by=item.by,
        at_least=Level.parse(item.at_least),
        nodes=item.nodes,
        fraction=item.fraction,
        selector=item.where.selector(),
    )


def _build(path: Path, data: dict[str, Any], i: int, item: NodeRuleSpec) -> Rule:
    where = item.where.selector()
    if isinstance(item, ThresholdSpec):
        _metric(path, data, i, "metric", kind=item.kind, metric=item.metric)
        return ThresholdRule(
            item.name,
            item.kind,
            item.metric,
            _levels(path, data, i, item.levels),
            band=item.band,
            raise_after=item.raise_after,
            clear_after=item.clear_after,
            min_duration_s=item.min_duration_s,
            selector=where,
        )
    if isinstance(item, RateSpec):
        _metric(path, data, i, "metric", kind=item.kind, metric=item.metric)
        return RateRule(
            item.name,
            item.kind,
            item.metric,
            _levels(path, data, i, item.levels),
            per_minutes=item.per_minutes,
            span_minutes=item.span_minutes,
            min_points=item.min_points,
            band=item.band,
            raise_after=item.raise_after,
            clear_after=item.clear_after,
            min_duration_s=item.min_duration_s,
            selector=where,
        )
    if isinstance(item, ForecastSpec):
        _metric(path, data, i, "metric", kind=item.kind, metric=item.metric)
        spec = KIND_METRICS[item.kind][item.metric]
        if not spec.contains(item.threshold):
            raise ConfigError(
                path,
                _key(data, i, "threshold"),
                f"a value within {spec.low:g}..{spec.high:g} {spec.unit}",
                found=item.threshold,
            )
        return ForecastRule(
            item.name,
            item.kind,
            item.metric,
            threshold=item.threshold,
            within_minutes=item.within_minutes,
            level=Level.parse(item.level),
            span_minutes=item.span_minutes,
            min_points=item.min_points,
            hold_factor=item.hold_factor,
            raise_after=item.raise_after,
            clear_after=item.clear_after,
            selector=where,
        )
    if isinstance(item, AnomalySpec):
        return _anomaly(path, data, i, item, where)
    if not item.all:
        raise ConfigError(path, _key(data, i, "all"), "at least one condition")
    conditions = []
    for j, c in enumerate(item.all):
        _metric(path, data, i, f"all[{j}].metric", kind=item.kind, metric=c.metric)
        bounds = [b for b in (c.above, c.below, c.rising_per_minute) if b is not None]
        if len(bounds) != 1:
            raise ConfigError(
                path,
                _key(data, i, f"all[{j}]"),
                "exactly one of above, below, rising_per_minute",
            )
        conditions.append(
            Condition(
                c.metric,
                above=c.above,
                below=c.below,
                rising_per_minute=c.rising_per_minute,
                band=c.band,
            )
        )
    return CompositeRule(
        item.name,
        item.kind,
        Level.parse(item.level),
        tuple(conditions),
        span_minutes=item.span_minutes,
        min_points=item.min_points,
        raise_after=item.raise_after,
        clear_after=item.clear_after,
        min_duration_s=item.min_duration_s,
        selector=where,
    )


def _anomaly(
    path: Path, data: dict[str, Any], i: int, item: AnomalySpec, where: Selector
) -> AnomalyRule:
    _metric(path, data, i, "metric", kind=item.kind, metric=item.metric)
    if item.detectors not in DETECTOR_SETS:
        raise ConfigError(
            path,
            _key(data, i, "detectors"),
            f"one of {', '.join(DETECTOR_SETS)}",
            found=item.detectors,
        )
    # The range first: "between 0 and 1" says more about blue = 1.5 than "rising" does.
    for level, score in item.levels.by_level().items():
        if not 0.0 < score < 1.0:
            raise ConfigError(
                path,
                _key(data, i, f"levels.{level.label}"),
                "an anomaly score between 0 and 1, exclusive (such as 0.999)",
                found=lookup(data, f"rule[{i}].levels.{level.label}"),
            )
    by_level = _levels(path, data, i, item.levels)
    lowest = min(by_level.values())
    if item.band >= lowest:
        raise ConfigError(
            path,
            _key(data, i, "band"),
            f"a band below the lowest level's score ({lowest}), or the warning never clears",
            found=lookup(data, f"rule[{i}].band"),
        )
    return AnomalyRule(
        item.name,
        item.kind,
        item.metric,
        by_level,
        band=item.band,
        raise_after=item.raise_after,
        clear_after=item.clear_after,
        min_duration_s=item.min_duration_s,
        selector=where,
        detectors=item.detectors,
        resolution=item.resolution,
        utc_offset_minutes=item.utc_offset_minutes,
    )
