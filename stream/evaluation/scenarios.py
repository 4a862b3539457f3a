"""Labelled early-warning scenarios: seeded series of Readings with their ground truth.

Each generator returns a `Case`: the readings of one node (time order), its
placement, the events a warning should catch (`Event`, with onset, end and,
for floods and gas, the true time the red threshold is crossed) and which
warnings count as alarms for it (`Counted`). Normal behaviour comes from
`edge.simulate.NodeSimulator` (a dry road, traffic on a manhole cover,
weekday and weekend crowds, each through its noisy sensor); incidents are
overlays on it, the rainstorm through the simulator's own reservoir physics
(`Hyetograph`, `LowPoint`).

Sensor faults (drift, stuck, spike) are injected after the simulator with the
magnitudes of `edge.simulate.FaultPlan` (drift ~1 % of the span per hour, a
spike 0.5-1.5 spans) but at times the case chooses: `FaultPlan` draws its
episodes in random slots with a random sign, which is right for a fleet and
wrong for a labelled test that needs one upward drift, or spikes that are
isolated.

Everything is a pure function of the seed: no wall clock, no global state.

>>> case = rainstorm(3)
>>> case.name, case.kind.value, len(case.events), case.events[0].crossing_ms is not None
('rainstorm', 'water_level', 1, True)
>>> rainstorm(3).readings == case.readings
True
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

from cityvitals.contract import Placement, Reading
from cityvitals.kinds import Kind
from cityvitals.levels import Level
from cityvitals.registry import Device
from edge.simulate import DAY_S, HOUR, Hyetograph, LowPoint, NodeSimulator, Scenario

__all__ = [
    "ALL_TYPES",
    "CITY_UTC_OFFSET_MINUTES",
    "SCENARIOS",
    "T0_MS",
    "Case",
    "Counted",
    "Event",
    "crowd",
    "drift",
    "gas_leak",
    "quiet",
    "rainstorm",
    "spikes",
    "stuck",
]

#: The city's clock: UTC+8, as `crowd.count_anomaly` in deploy/rules.toml assumes.
CITY_UTC_OFFSET_MINUTES = 480
#: Local midnight of Monday 2025-11-24 in the city: t = 0 of every case.
T0_MS = int(
    datetime(2025, 11, 24, tzinfo=timezone(timedelta(minutes=CITY_UTC_OFFSET_MINUTES))).timestamp()
    * 1000
)
#: Every rule type, for a `Counted` that takes them all.
ALL_TYPES = frozenset({"threshold", "rate", "forecast", "composite", "anomaly"})

_PLACE = Placement(
    district="Harbour", street="Dockside Street", grid="HB-101", unit="harbour-ops", lat=1, lon=2
)
_RED_DEPTH_CM = 50.0  # deploy/rules.toml, water_level.depth red
_RED_GAS_PCT = 40.0  # manhole.gas red
_MIN = 60.0


@dataclass(frozen=True, slots=True)
class Event:
    """Something a warning should catch on `node`, between `onset_ms` and `end_ms`.

    `crossing_ms` is when the noise-free quantity reaches the red threshold
    (floods and gas leaks): the instant lead time is measured against.
    """

    node: str
    what: str
    onset_ms: int
    end_ms: int
    crossing_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Counted:
    """Which warnings count as alarms: by metric and rule type, plus named rules.

    A rule counts if its metric is in `metrics` and its type in `types`, or
    if its name is in `rules` (a composite reports its first condition's
    metric, which may not be the one the scenario is about). An episode
    counts from the first warning at `min_level` or above until the level
    falls below it.
    """

    metrics: frozenset[str]
    types: frozenset[str] = ALL_TYPES
    rules: frozenset[str] = frozenset()
    min_level: Level = Level.BLUE

    def counts(self, rule: str, rule_type: str, metric: str) -> bool:
        return rule in self.rules or (metric in self.metrics and rule_type in self.types)


@dataclass(frozen=True)
class Case:
    """One labelled series: what the stream sees and what it should have said."""

    name: str
    seed: int
    kind: Kind
    node: str
    readings: tuple[Reading, ...]
    events: tuple[Event, ...]
    counted: Counted
    #: Warnings this soon before an event's onset still count as catching it.
    tolerance_ms: int = 0
    #: Alarms this long after an event's end still belong to it (a flood's clear,
    #: the detectors seeing a recalibrated or unstuck sensor jump back).
    grace_ms: int = 0
    placement: Placement = _PLACE
    #: Noise-free value of the scenario's metric at each reading, for plots.
    truth: tuple[float, ...] = ()
    notes: Mapping[str, float] = field(default_factory=dict)

    @property
    def node_days(self) -> float:
        if len(self.readings) < 2:
            return 0.0
        return (self.readings[-1].ts_ms - self.readings[0].ts_ms) / (DAY_S * 1000)

    def series(self, metric: str) -> tuple[list[int], list[float]]:
        """(ts_ms, values) of one metric, for detectors and plots."""
        rows = [(r.ts_ms, r.metrics[metric]) for r in self.readings if metric in r.metrics]
        return [t for t, _ in rows], [v for _, v in rows]


Overlay = Callable[[float], Mapping[str, float]]


def _device(node: str, kind: Kind) -> Device:
    p = _PLACE
    return Device(
        node=node, kind=kind, lat=p.lat, lon=p.lon, district=p.district, street=p.street,
        grid=p.grid, unit=p.unit,
    )  # fmt: skip


def _simulate(
    node: str,
    kind: Kind,
    seed: int,
    *,
    hours: float,
    interval_s: float,
    overlays: Sequence[Overlay] = (),
    edit: Callable[[int, float, dict[str, float]], dict[str, float]] | None = None,
) -> tuple[Reading, ...]:
    """Regular readings of a simulated node from local Monday midnight, with incident
    overlays (the simulator measures the larger of normal and forced) and an optional
    per-reading `edit(i, t, metrics)` for sensor faults."""
    scenario = Scenario(incidents=(), overlays={node: tuple(overlays)} if overlays else {})
    sim = NodeSimulator(_device(node, kind), scenario, seed=seed)
    out = []
    for i in range(round(hours * HOUR / interval_s)):
        t = i * interval_s
        metrics = sim.metrics(t)
        if edit is not None:
            metrics = edit(i, t, metrics)
        out.append(
            Reading(
                v=1, node=node, kind=kind, seq=i, ts_ms=T0_MS + round(t * 1000), metrics=metrics
            )
        )
    return tuple(out)


def _ms(t: float) -> int:
    return T0_MS + round(t * 1000)


def _table(start: float, step: float, table: Sequence[float]) -> Callable[[float], float]:
    """A series sampled every `step` from `start`, linear between samples, 0 before."""
    last = len(table) - 1

    def at(t: float) -> float:
        x = (t - start) / step
        if x <= 0:
            return 0.0
        i = int(x)
        if i >= last:
            return table[last]
        return table[i] + (x - i) * (table[i + 1] - table[i])

    return at


def _first_at_or_above(at: Callable[[float], float], level: float, t0: float, t1: float) -> float:
    """First minute in [t0, t1] at which `at` reaches `level` (t1 if never)."""
    t = t0
    while t < t1 and at(t) < level:
        t += _MIN
    return t


def rainstorm(seed: int, *, dry_hours: float = 12.0, interval_s: float = 300.0) -> Case:
    """A dry road, then a convective storm ponding water past red (50 cm).

    The storm and the drain are drawn like `edge.simulate`'s scripted
    rainstorm (30-50 mm/h, peak after 1-1.5 h, drain k 1.5-3 /h, capacity
    20-35 cm/h) and the site is calibrated to peak at 56-72 cm. `dry_hours`
    of dry road first let the anomaly rule warm up. The event runs from the
    rain's start until the water is back under blue (10 cm); lead time is
    measured against the noise-free red crossing.
    """
    rng = random.Random(f"evaluation:rainstorm:{seed}")
    start = dry_hours * HOUR
    rain = Hyetograph(
        start,
        peak_mm_h=rng.uniform(30.0, 50.0),
        time_to_peak_s=rng.uniform(1.0, 1.5) * HOUR,
    )
    site = LowPoint.calibrated(
        rain,
        peak_cm=rng.uniform(56.0, 72.0),
        drain_per_h=rng.uniform(1.5, 3.0),
        capacity_cm_h=rng.uniform(20.0, 35.0),
    )
    depth = _table(start, _MIN, site.depths(rain))
    end_h = dry_hours + 8.0
    crossing = _first_at_or_above(depth, _RED_DEPTH_CM, start, end_h * HOUR)
    peak_t = max(range(round(start), round(end_h * HOUR), 60), key=depth)
    receded = peak_t + 0.0
    while receded < end_h * HOUR and depth(receded) >= 10.0:
        receded += _MIN
    node = f"wl-{seed % 10_000:04d}"
    readings = _simulate(
        node,
        Kind.WATER_LEVEL,
        seed,
        hours=end_h,
        interval_s=interval_s,
        overlays=[lambda t: {"depth_cm": depth(t)}],
    )
    truth = tuple(depth((r.ts_ms - T0_MS) / 1000) for r in readings)
    return Case(
        name="rainstorm",
        seed=seed,
        kind=Kind.WATER_LEVEL,
        node=node,
        readings=readings,
        events=(Event(node, "flood", _ms(start), _ms(receded), crossing_ms=_ms(crossing)),),
        counted=Counted(metrics=frozenset({"depth_cm"})),
        truth=truth,
        notes={"peak_cm": depth(peak_t), "rain_start_ms": _ms(start)},
    )


def _dry_road_fault(
    name: str,
    seed: int,
    *,
    hours: float,
    interval_s: float,
    onset_h: float,
    length_h: float,
    fault: Callable[[int, float, dict[str, float]], dict[str, float]],
) -> Case:
    node = f"wl-{seed % 10_000:04d}"
    onset, end = onset_h * HOUR, (onset_h + length_h) * HOUR

    def edit(i: int, t: float, metrics: dict[str, float]) -> dict[str, float]:
        return fault(i, t, metrics) if onset <= t < end else metrics

    readings = _simulate(
        node, Kind.WATER_LEVEL, seed, hours=hours, interval_s=interval_s, edit=edit
    )
    return Case(
        name=name,
        seed=seed,
        kind=Kind.WATER_LEVEL,
        node=node,
        readings=readings,
        events=(Event(node, name, _ms(onset), _ms(end)),),
        counted=Counted(metrics=frozenset({"depth_cm"}), types=frozenset({"anomaly"})),
        grace_ms=round(6 * HOUR * 1000),
    )


def drift(seed: int, *, hours: float = 36.0, interval_s: float = 600.0) -> Case:
    """A depth gauge on a dry road drifting upward 0.5-1 cm/h for 8 h, then recalibrated.

    FaultPlan's drift is 1 % of the span (100 cm) per hour; this one peaks
    at 4-8 cm, under blue's 10 cm, so only the detectors (the CUSUM of the
    anomaly rule) can see it. Counted: anomaly rules on depth_cm.
    """
    rng = random.Random(f"evaluation:drift:{seed}")
    rate = rng.uniform(0.5, 1.0)  # cm/h
    onset_h = rng.uniform(18.0, 24.0)

    def fault(i: int, t: float, metrics: dict[str, float]) -> dict[str, float]:
        bias = rate * (t - onset_h * HOUR) / HOUR
        return {**metrics, "depth_cm": round(metrics["depth_cm"] + bias, 3)}

    case = _dry_road_fault(
        "drift", seed, hours=hours, interval_s=interval_s, onset_h=onset_h, length_h=8.0,
        fault=fault,
    )  # fmt: skip
    return replace(case, notes={"rate_cm_h": rate})


def stuck(seed: int, *, hours: float = 24.0, interval_s: float = 600.0) -> Case:
    """A depth gauge that freezes for 2 h (FaultPlan's stuck_s) on a value above 0.

    A dry road reads exactly 0 cm often (the film of water is under the
    noise), so the freeze starts at a reading that is not 0: a gauge stuck
    at 0 on a dry road cannot be told from a dry road. Counted: anomaly
    rules on depth_cm.
    """
    rng = random.Random(f"evaluation:stuck:{seed}")
    onset_h = rng.uniform(10.0, 16.0)
    probe = _simulate(f"wl-{seed % 10_000:04d}", Kind.WATER_LEVEL, seed, hours=hours,
                      interval_s=interval_s)  # fmt: skip
    first = round(onset_h * HOUR / interval_s)
    while probe[first].metrics["depth_cm"] < 0.2:
        first += 1
    frozen = probe[first].metrics["depth_cm"]
    onset_h = first * interval_s / HOUR

    def fault(i: int, t: float, metrics: dict[str, float]) -> dict[str, float]:
        return {**metrics, "depth_cm": frozen}

    return _dry_road_fault(
        "stuck", seed, hours=hours, interval_s=interval_s, onset_h=onset_h, length_h=2.0,
        fault=fault,
    )  # fmt: skip


def spikes(seed: int, *, hours: float = 48.0, interval_s: float = 600.0, count: int = 8) -> Case:
    """Isolated single-reading echo spikes on a dry road: +50 to +150 cm, as FaultPlan's.

    `count` spikes after the first 12 h (warm-up), never two within five
    readings of each other. Every spike reaches past red (50 cm) for one
    reading: the threshold rules' `raise_after = 2` must keep them quiet.
    Counted: threshold rules on depth_cm (every one is a false alarm); the
    spike detector is scored separately (`scoring.detector_hits`).
    """
    rng = random.Random(f"evaluation:spikes:{seed}")
    n = round(hours * HOUR / interval_s)
    warm = round(12 * HOUR / interval_s)
    chosen: list[int] = []
    while len(chosen) < count:
        i = rng.randrange(warm, n - 1)
        if all(abs(i - j) > 5 for j in chosen):
            chosen.append(i)
    jumps = {i: rng.uniform(0.5, 1.5) * 100.0 for i in chosen}
    node = f"wl-{seed % 10_000:04d}"

    def edit(i: int, t: float, metrics: dict[str, float]) -> dict[str, float]:
        if i in jumps:
            return {**metrics, "depth_cm": round(metrics["depth_cm"] + jumps[i], 3)}
        return metrics

    readings = _simulate(node, Kind.WATER_LEVEL, seed, hours=hours, interval_s=interval_s,
                         edit=edit)  # fmt: skip
    events = tuple(
        Event(node, "spike", readings[i].ts_ms, readings[i].ts_ms) for i in sorted(chosen)
    )
    return Case(
        name="spikes",
        seed=seed,
        kind=Kind.WATER_LEVEL,
        node=node,
        readings=readings,
        events=events,
        counted=Counted(metrics=frozenset({"depth_cm"}), types=frozenset({"threshold"})),
        grace_ms=round(interval_s * 1000),  # the jump back down is part of the spike
    )


def _bump(start: float, rise: float, hold: float, fall: float, peak: float) -> Overlay:
    def at(t: float) -> Mapping[str, float]:
        x = t - start
        if x <= 0 or x >= rise + hold + fall:
            return {}
        if x < rise:
            return {"density_m2": peak * x / rise}
        if x < rise + hold:
            return {"density_m2": peak}
        return {"density_m2": peak * (1 - (x - rise - hold) / fall)}

    return at


def crowd(seed: int, *, weeks: int = 4, interval_s: float = 600.0) -> Case:
    """Weeks of weekday and weekend crowds at a plaza, with three surges in the last week.

    The first `weeks - 1` weeks are normal life only (the time-of-week
    baseline needs two weeks per bin); in the last week: an evening surge
    climbing past red density (5-6 /m2 over 40 min, held 45 min, like the
    demo's crowd-surge) on Wednesday, a 3 am crowd (1.2-1.8 /m2, under
    blue's 2 /m2: only the count's time-of-week anomaly can see it) on
    Friday, and a surge on top of Saturday's afternoon peak. Every
    weekend's ordinary peak is normal and must raise nothing at orange or
    red. Counted: every crowd rule.
    """
    rng = random.Random(f"evaluation:crowd:{seed}")
    last = (weeks - 1) * 7 * DAY_S
    plans = [
        ("evening-surge", last + 2 * DAY_S + 19 * HOUR, 40 * _MIN, 45 * _MIN, 20 * _MIN,
         rng.uniform(5.0, 6.0)),
        ("night-crowd", last + 4 * DAY_S + 3 * HOUR, 15 * _MIN, 60 * _MIN, 15 * _MIN,
         rng.uniform(1.2, 1.8)),
        ("weekend-surge", last + 5 * DAY_S + 15 * HOUR, 40 * _MIN, 45 * _MIN, 20 * _MIN,
         rng.uniform(5.0, 6.0)),
    ]  # fmt: skip
    node = f"cr-{seed % 10_000:04d}"
    overlays = [_bump(s, r, h, f, p) for _, s, r, h, f, p in plans]
    readings = _simulate(
        node, Kind.CROWD, seed, hours=weeks * 7 * 24, interval_s=interval_s, overlays=overlays
    )
    events = tuple(Event(node, what, _ms(s), _ms(s + r + h + f)) for what, s, r, h, f, _ in plans)
    return Case(
        name="crowd",
        seed=seed,
        kind=Kind.CROWD,
        node=node,
        readings=readings,
        events=events,
        counted=Counted(metrics=frozenset({"density_m2", "count"})),
        notes={"warm_weeks": weeks - 1},
    )


def gas_leak(seed: int, *, interval_s: float = 300.0) -> Case:
    """Gas creeping up under a manhole cover past red (40 %LEL), in odd seeds with the
    cover knocked askew (15 degrees) once the gas passes 8 %LEL.

    12 h of ordinary traffic, then the gas rises 0.05-0.15 %LEL per minute
    from its 0.4 %LEL background and levels off at 45-55 %LEL. Counted:
    rules on gas_lel_pct and the `manhole.open_with_gas` composite. Lead
    time is measured against the noise-free red crossing.
    """
    rng = random.Random(f"evaluation:gas:{seed}")
    onset = 12 * HOUR
    rate = rng.uniform(0.05, 0.15) / _MIN  # %LEL per second
    top = rng.uniform(45.0, 55.0)
    tilted = seed % 2 == 1

    def gas(t: float) -> float:
        return 0.0 if t <= onset else min(top, 0.4 + rate * (t - onset))

    def overlay(t: float) -> Mapping[str, float]:
        level = gas(t)
        out = {"gas_lel_pct": level}
        if tilted and level >= 8.0:
            out["cover_tilt_deg"] = 15.0
        return out

    crossing = onset + (_RED_GAS_PCT - 0.4) / rate
    end = crossing + 3 * HOUR
    node = f"mh-{seed % 10_000:04d}"
    readings = _simulate(node, Kind.MANHOLE, seed, hours=end / HOUR, interval_s=interval_s,
                         overlays=[overlay])  # fmt: skip
    return Case(
        name="gas_leak",
        seed=seed,
        kind=Kind.MANHOLE,
        node=node,
        readings=readings,
        events=(Event(node, "gas", _ms(onset), _ms(end), crossing_ms=_ms(crossing)),),
        counted=Counted(
            metrics=frozenset({"gas_lel_pct"}), rules=frozenset({"manhole.open_with_gas"})
        ),
        truth=tuple(gas((r.ts_ms - T0_MS) / 1000) for r in readings),
        notes={"rate_pct_min": rate * _MIN, "tilted": float(tilted)},
    )


def quiet(kind: Kind, seed: int, *, days: float = 7.0, interval_s: float = 600.0) -> Case:
    """Days of normal life for one node of `kind`: every warning is a false alarm."""
    prefix = {Kind.WATER_LEVEL: "wl", Kind.MANHOLE: "mh", Kind.SMOKE: "sm", Kind.CROWD: "cr"}
    node = f"{prefix[kind]}-q{seed % 1000:03d}"
    readings = _simulate(node, kind, seed, hours=days * 24, interval_s=interval_s)
    metrics = frozenset(readings[0].metrics)
    return Case(
        name=f"quiet-{kind.value}",
        seed=seed,
        kind=kind,
        node=node,
        readings=readings,
        events=(),
        counted=Counted(metrics=metrics),
    )


#: Every labelled scenario by name: seed -> Case, with each generator's defaults.
SCENARIOS: Mapping[str, Callable[[int], Case]] = {
    "rainstorm": rainstorm,
    "drift": drift,
    "stuck": stuck,
    "spikes": spikes,
    "crowd": crowd,
    "gas_leak": gas_leak,
    "quiet-water_level": lambda seed: quiet(Kind.WATER_LEVEL, seed),
    "quiet-manhole": lambda seed: quiet(Kind.MANHOLE, seed),
    "quiet-smoke": lambda seed: quiet(Kind.SMOKE, seed),
    "quiet-crowd": lambda seed: quiet(Kind.CROWD, seed),
}
