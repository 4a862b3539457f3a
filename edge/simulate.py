"""Simulated sensor nodes: normal city life, sensor faults, and a scripted incident timeline.

Each node has a model of its quantity over a simulated day (a rain-free road
drains near dry, crowds follow the working day or the weekend, detectors sit
at ambient temperature) read through a noisy sensor. A `Scenario` overlays
incidents on chosen nodes: a rainstorm flooding a district's low points, a
lifted manhole cover, a fire, a crowd surge. The scenario also states the
alerts it must cause, so the demo and its tests can check the pipeline end
to end. An opt-in `FaultPlan` adds what cheap sensors do in the field:
spikes, flat-lines, drift and dropouts.

Standing water is the one quantity with memory, so it gets physics rather
than a drawn curve. Each low point is a linear reservoir with a capped drain::

    dh/dt = c * i(t) - min(k * h, Q)

with h the depth (cm), i(t) the rain intensity (cm/h), c the catchment
factor (contributing area x runoff coefficient / ponded area), k the drain's
rate constant (1/h) and Q the gully's capacity (cm/h). A linear reservoir is
the simplest model that behaves the way a flood warning has to cope with:
water keeps rising while inflow beats drainage, peaks after the rain does,
and recedes once the rain is over. The cap is what floods a road at all:
while the drain keeps up the road stays near dry, and a storm beyond its
capacity ponds the excess. The rain is one hyetograph for the whole
district; drains differ per site (k, Q). Each site's c is solved when the
scenario is built so that its peak lands mid-band in the level the scenario
promises, which makes the promise hold by construction rather than by luck.

Everything is a pure function of (seed, node, simulated time): noise and
fault schedules come from generators seeded by those, so the same seed gives
the same readings whatever the event loop does, and a reading can be
recomputed exactly.

>>> from cityvitals.citygen import generate_city
>>> city = generate_city(nodes=40, districts=3, seed=3)
>>> scenario = Scenario.default(city, seed=3)
>>> [i.name for i in scenario.incidents]
['cover-lifted', 'rainstorm', 'crowd-surge', 'fire']
>>> node = city.by_kind(Kind.WATER_LEVEL)[0]
>>> sim = NodeSimulator(node, scenario, seed=3)
>>> sim.metrics(3600.0) == NodeSimulator(node, scenario, seed=3).metrics(3600.0)
True
>>> flooded = [e.node for e in scenario.expected if e.rule == "water_level.depth"]
>>> [round(max(NodeSimulator(city.get(n), scenario, seed=3).metrics(t * 60.0)["depth_cm"]
...            for t in range(13 * 60, 20 * 60))) for n in flooded]
[66, 41, 26]
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from cityvitals.errors import CityvitalsError
from cityvitals.kinds import KIND_METRICS, Kind
from cityvitals.levels import Level
from cityvitals.registry import Device, Registry

DAY_S = 86_400.0
HOUR = 3600.0

#: An overlay maps seconds since the start of the simulated day to metric values
#: that the incident forces: the node measures the larger of normal and forced.
Overlay = Callable[[float], Mapping[str, float]]


class ScenarioError(CityvitalsError):
    """The scripted incidents cannot be staged: too few nodes of a kind, or a
    storm that would not hold a promised level long enough."""


@dataclass(frozen=True, slots=True)
class ExpectedAlert:
    """An alert the scripted day must raise: `node` is the node, or for an area rule
    the area's key (`district:Harbour`), as `Warning.subject` gives it."""

    node: str
    rule: str
    level: Level


@dataclass(frozen=True, slots=True)
class Incident:
    """A scripted event: when, where, what it does and what it must raise.

    Every peak is held for at least 45 simulated minutes: with a reading
    every 10 minutes that is 4 or more readings at the peak, enough for
    rules that want 2 in a row, whatever a node's phase.
    """

    name: str
    title: str
    start_s: float
    end_s: float
    overlays: Mapping[str, Overlay]
    expected: tuple[ExpectedAlert, ...]

    @property
    def nodes(self) -> frozenset[str]:
        return frozenset(self.overlays)


def _ramp(t: float, start: float, rise: float, hold: float, fall: float) -> float:
    """0 → 1 over `rise`, 1 for `hold`, 1 → 0 over `fall` (smooth-ish, piecewise)."""
    x = t - start
    if x <= 0:
        return 0.0
    if x < rise:
        return x / rise
    if x < rise + hold:
        return 1.0
    if x < rise + hold + fall:
        return 1.0 - (x - rise - hold) / fall
    return 0.0


def _peak_overlay(
    metric: str, start: float, *, rise: float, hold: float, fall: float, peak: float
) -> Overlay:
    def overlay(t: float) -> Mapping[str, float]:
        return {metric: peak * _ramp(t, start, rise, hold, fall)}

    return overlay


def _combine(*overlays: Overlay) -> Overlay:
    def overlay(t: float) -> Mapping[str, float]:
        out: dict[str, float] = {}
        for o in overlays:
            for k, v in o(t).items():
                out[k] = max(out.get(k, 0.0), v)
        return out

    return overlay


# -- Rain and standing water -------------------------------------------------------------

#: The depth rule's thresholds (stream.rules.DEFAULT_RULES) for the levels a storm
#: promises, and the peak a promising site is calibrated to. Mid-band, so that
#: sensor noise (under 1 cm at these depths) neither keeps a site under its
#: level nor lifts it into the next one.
_STORM_LEVELS: dict[Level, tuple[float, float]] = {
    Level.YELLOW: (20.0, 25.0),
    Level.ORANGE: (30.0, 40.0),
    Level.RED: (50.0, 64.0),
}
#: A promised level must hold this long: 4+ readings at a 10-minute interval
#: whatever the node's phase, where the rules want 2 in a row.
_HOLD_S = 45 * 60.0
_STEP_S = 60.0  # the reservoir changes over tens of minutes; a minute resolves it
_SPAN_S = 10 * HOUR  # long enough for the slowest drain to empty after the storm
_DRY_CM = 1.0  # below this a site counts as drained again


@dataclass(frozen=True, slots=True)
class Hyetograph:
    """Rain intensity over one storm, mm/h: a gamma-shaped burst.

    i(t) = peak * u**shape * exp(shape * (1 - u)) with u = (t - start) / time_to_peak:
    nothing at the start, `peak_mm_h` at `time_to_peak_s`, and a tail longer
    than the rise, as a convective downpour has.
    """

    start_s: float
    peak_mm_h: float
    time_to_peak_s: float
    shape: float = 2.0

    def intensity(self, t: float) -> float:
        u = (t - self.start_s) / self.time_to_peak_s
        if u <= 0:
            return 0.0
        return self.peak_mm_h * math.pow(u, self.shape) * math.exp(self.shape * (1.0 - u))

    def inflow(self, *, span_s: float = _SPAN_S, step_s: float = _STEP_S) -> list[float]:
        """Rain in cm/h at the middle of each step from the start: the reservoir's input."""
        return [
            self.intensity(self.start_s + (n + 0.5) * step_s) / 10.0
            for n in range(round(span_s / step_s))
        ]


@dataclass(frozen=True, slots=True)
class LowPoint:
    """A road low point over a gully: the reservoir of the module docstring."""

    catchment: float  # c: cm of water gathered per cm of rain, before the drain takes any
    drain_per_h: float  # k, 1/h
    capacity_cm_h: float  # Q, cm/h

    def __post_init__(self) -> None:
        if self.catchment < 0 or self.drain_per_h <= 0 or self.capacity_cm_h <= 0:
            raise ValueError(f"{self}: catchment >= 0, drain_per_h > 0 and capacity_cm_h > 0")

    def depths(
        self, rain: Hyetograph, *, span_s: float = _SPAN_S, step_s: float = _STEP_S
    ) -> list[float]:
        """Depth in cm at the storm's start and after each `step_s`, over `span_s`."""
        return _reservoir(self, rain.inflow(span_s=span_s, step_s=step_s), step_s)

    @classmethod
    def calibrated(
        cls,
        rain: Hyetograph,
        *,
        peak_cm: float,
        drain_per_h: float,
        capacity_cm_h: float,
        step_s: float = _STEP_S,
    ) -> LowPoint:
        """The site with this drain whose water peaks at `peak_cm` under `rain`.

        A larger catchment raises the depth at every instant, so the peak rises
        with it and a root finder on the catchment alone is enough.
        """
        inflow = rain.inflow(step_s=step_s)

        def peak(catchment: float) -> float:
            site = cls(catchment, drain_per_h, capacity_cm_h)
            return _reservoir(site, inflow, step_s, peak_only=True)[-1]

        return cls(_solve_increasing(peak, peak_cm, tol=1e-4), drain_per_h, capacity_cm_h)


def _reservoir(
    site: LowPoint, inflow: Sequence[float], step_s: float, *, peak_only: bool = False
) -> list[float]:
    """Integrate the reservoir by explicit Euler from a dry road.

    With `peak_only` it stops at the first fall: under one burst of rain the
    depth rises then falls once, so the last value returned is the peak.
    """
    dt = step_s / HOUR
    c, k, q = site.catchment, site.drain_per_h, site.capacity_cm_h
    h = 0.0
    out = [h]
    for rain in inflow:
        # The clamp only matters for a step too coarse for the drain (k * dt > 1).
        nxt = max(0.0, h + dt * (c * rain - min(k * h, q)))
        if peak_only and nxt < h:
            break
        h = nxt
        out.append(h)
    return out


def _solve_increasing(f: Callable[[float], float], target: float, *, tol: float) -> float:
    """x >= 0 with f(x) = target for an increasing f with f(0) <= target.

    Bracket by doubling, then Illinois false position: a handful of
    evaluations for a smooth f, where bisection would take dozens.
    """
    lo, f_lo = 0.0, f(0.0) - target
    hi, f_hi = 1.0, f(1.0) - target
    for _ in range(64):
        if f_hi >= 0:
            break
        lo, f_lo = hi, f_hi
        hi *= 2.0
        f_hi = f(hi) - target
    else:
        raise ValueError(f"no x reaches {target}: f({hi:g}) = {f_hi + target:g}")
    x, side = hi, 0
    for _ in range(100):
        x = hi - f_hi * (hi - lo) / (f_hi - f_lo)
        fx = f(x) - target
        if abs(fx) <= tol:
            break
        if fx < 0:
            lo, f_lo = x, fx
            if side < 0:
                f_hi /= 2.0  # the same end kept twice: halve it so the other end moves
            side = -1
        else:
            hi, f_hi = x, fx
            if side > 0:
                f_lo /= 2.0
            side = 1
    return x


def _table_overlay(metric: str, start: float, step: float, table: Sequence[float]) -> Overlay:
    """A precomputed series as an overlay, linear between samples: cheap per reading."""
    last = len(table) - 1

    def overlay(t: float) -> Mapping[str, float]:
        x = (t - start) / step
        if x <= 0:
            return {metric: table[0]}
        i = int(x)
        if i >= last:
            return {metric: table[last]}
        return {metric: table[i] + (x - i) * (table[i + 1] - table[i])}

    return overlay


def _seconds_at_or_above(table: Sequence[float], level: float, step: float) -> float:
    """How long a single-peaked series stays at or above `level` (between samples)."""
    return step * max(0, sum(1 for h in table if h >= level) - 1)


# -- Scenario ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """Incidents over one simulated day starting at local midnight."""

    incidents: tuple[Incident, ...]
    overlays: Mapping[str, tuple[Overlay, ...]] = field(default_factory=dict)

    @property
    def expected(self) -> tuple[ExpectedAlert, ...]:
        return tuple(e for i in self.incidents for e in i.expected)

    @property
    def incident_nodes(self) -> frozenset[str]:
        return (
            frozenset().union(*(i.nodes for i in self.incidents)) if self.incidents else frozenset()
        )

    @classmethod
    def quiet(cls) -> Scenario:
        return cls(incidents=())

    @classmethod
    def default(cls, city: Registry, *, seed: int = 1) -> Scenario:
        """The demo's day: cover lifted 09:40, rainstorm 13:30, crowd surge 19:00, fire 20:10."""
        rng = random.Random(seed)
        districts = city.districts()

        def pick(kind: Kind, district: int, need: int = 1) -> list[str]:
            name = districts[district % len(districts)]
            nodes = sorted(x.node for x in city.by_kind(kind) if x.district == name)
            if len(nodes) < need:
                raise ScenarioError(
                    f"the scripted day needs {need} {kind} node(s) in district {name!r}, "
                    f"the registry has {len(nodes)}; add nodes, or run a day without incidents"
                )
            return nodes

        incidents = []

        manhole = rng.choice(pick(Kind.MANHOLE, 1))
        start = 9 * HOUR + 40 * 60
        incidents.append(
            Incident(
                "cover-lifted",
                f"manhole cover lifted at {manhole}",
                start,
                start + 50 * 60,
                {
                    manhole: _combine(
                        _peak_overlay(
                            "cover_tilt_deg", start, rise=60, hold=45 * 60, fall=60, peak=37.0
                        ),
                        _peak_overlay("cover_open", start, rise=1, hold=47 * 60, fall=1, peak=1.0),
                    )
                },
                (
                    ExpectedAlert(manhole, "manhole.cover_tilt", Level.RED),
                    ExpectedAlert(manhole, "manhole.cover_open", Level.ORANGE),
                ),
            )
        )

        incidents.append(_rainstorm(pick(Kind.WATER_LEVEL, 0, need=3), districts[0], rng, seed))

        crowd = pick(Kind.CROWD, 0, need=2)
        rng.shuffle(crowd)
        start = 19 * HOUR
        incidents.append(
            Incident(
                "crowd-surge",
                f"crowd surge at {crowd[0]}",
                start,
                start + 105 * 60,
                {
                    crowd[0]: _peak_overlay(
                        "density_m2", start, rise=40 * 60, hold=45 * 60, fall=20 * 60, peak=5.6
                    ),
                    crowd[1]: _peak_overlay(
                        "density_m2", start, rise=40 * 60, hold=45 * 60, fall=20 * 60, peak=3.5
                    ),
                },
                (
                    ExpectedAlert(crowd[0], "crowd.density", Level.RED),
                    ExpectedAlert(crowd[1], "crowd.density", Level.YELLOW),
                ),
            )
        )

        smoke = rng.choice(pick(Kind.SMOKE, 2))
        start = 20 * HOUR + 10 * 60
        incidents.append(
            Incident(
                "fire",
                f"fire at {smoke}",
                start,
                start + 110 * 60,
                {
                    smoke: _combine(
                        _peak_overlay(
                            "obscuration_pct_m",
                            start,
                            rise=25 * 60,
                            hold=45 * 60,
                            fall=35 * 60,
                            peak=14.0,
                        ),
                        _peak_overlay(
                            "temperature_c",
                            start,
                            rise=30 * 60,
                            hold=45 * 60,
                            fall=35 * 60,
                            peak=95.0,
                        ),
                    )
                },
                (
                    ExpectedAlert(smoke, "smoke.obscuration", Level.RED),
                    ExpectedAlert(smoke, "smoke.temperature", Level.RED),
                ),
            )
        )
        by_node: dict[str, list[Overlay]] = {}
        for incident in incidents:
            for node, overlay in incident.overlays.items():
                by_node.setdefault(node, []).append(overlay)
        return cls(tuple(incidents), {k: tuple(v) for k, v in by_node.items()})


def _rainstorm(sites: list[str], district: str, rng: random.Random, seed: int) -> Incident:
    """A downpour over every water-level site of `district`; three of them flood.

    `rng` is the scenario's. It draws only the sites and one puddle size per
    site, so the crowd and fire picks after it depend on neither the weather
    nor the drains; those have generators of their own.
    """
    rng.shuffle(sites)
    promised = dict(zip(sites, (Level.RED, Level.ORANGE, Level.YELLOW), strict=False))
    weather = random.Random(f"{seed}:rainstorm")
    rain = Hyetograph(
        13.5 * HOUR,
        peak_mm_h=weather.uniform(30.0, 50.0),
        time_to_peak_s=weather.uniform(1.0, 1.5) * HOUR,
    )
    overlays: dict[str, Overlay] = {}
    end = rain.start_s
    yellow = _STORM_LEVELS[Level.YELLOW][0]
    yellow += 4 * _noise_sd("depth_cm", yellow)
    wet_together: set[int] | None = None  # steps every promised site is at yellow or above
    for node in sites:
        puddle = rng.uniform(1.5, 5.0)  # a site that promises nothing: far below blue's 10 cm
        level = promised.get(node, Level.NONE)
        threshold, peak = _STORM_LEVELS.get(level, (0.0, puddle))
        drain = random.Random(f"{seed}:{node}:drain")
        site = LowPoint.calibrated(
            rain,
            peak_cm=peak,
            drain_per_h=drain.uniform(1.5, 3.0),
            capacity_cm_h=drain.uniform(20.0, 35.0),
        )
        table = site.depths(rain)
        if level is not Level.NONE:
            # Held above the threshold by more than the noise could take away.
            held = _seconds_at_or_above(
                table, threshold + 4 * _noise_sd("depth_cm", threshold), _STEP_S
            )
            if held < _HOLD_S:
                raise ScenarioError(
                    f"rainstorm: {node} would hold {level.label} for {held / 60:.0f} min, "
                    f"under the {_HOLD_S / 60:.0f} min a warning needs; widen the storm"
                )
            at_yellow = {n for n, depth in enumerate(table) if depth >= yellow}
            wet_together = at_yellow if wet_together is None else wet_together & at_yellow
        top = table.index(max(table))
        wet = next((n for n in range(top, len(table)) if table[n] < _DRY_CM), len(table))
        end = max(end, rain.start_s + wet * _STEP_S)
        overlays[node] = _table_overlay("depth_cm", rain.start_s, _STEP_S, table)
    # The built-in district rule wants three gauges at yellow or above at once.
    together_s = len(wet_together or ()) * _STEP_S
    if together_s < _HOLD_S:
        raise ScenarioError(
            f"rainstorm: the flooded sites of {district} are at yellow together for "
            f"{together_s / 60:.0f} min, under the {_HOLD_S / 60:.0f} min a district "
            "warning needs; widen the storm"
        )
    return Incident(
        "rainstorm",
        f"rainstorm over {district}, {rain.peak_mm_h:.0f} mm/h at its height",
        rain.start_s,
        min(end, DAY_S),
        overlays,
        (
            *(ExpectedAlert(n, "water_level.depth", lvl) for n, lvl in promised.items()),
            ExpectedAlert(f"district:{district}", "water_level.district_flooding", Level.YELLOW),
        ),
    )


# -- Sensors and their faults -----------------------------------------------------------

#: Sensor noise as sd = a + b * value: a depth gauge errs more over deep,
#: rippled water; the other sensors err by about the same amount everywhere.
_NOISE: dict[str, tuple[float, float]] = {
    "depth_cm": (0.3, 0.005),
    "cover_tilt_deg": (0.25, 0.0),
    "cover_open": (0.0, 0.0),
    "gas_lel_pct": (0.25, 0.0),
    "obscuration_pct_m": (0.03, 0.0),
    "temperature_c": (0.4, 0.0),
    "density_m2": (0.04, 0.0),
    "count": (0.0, 0.0),
}

#: The span a sensor is installed to resolve (a little beyond its red
#: threshold): the yardstick for how large a spike or a drift is.
_SPAN: dict[str, float] = {
    "depth_cm": 100.0,
    "cover_tilt_deg": 45.0,
    "cover_open": 1.0,
    "gas_lel_pct": 50.0,
    "obscuration_pct_m": 10.0,
    "temperature_c": 100.0,
    "density_m2": 6.0,
}

#: The channel of each kind that ages: a fouled gauge face, a catalytic gas bead
#: losing its zero, dust settling in a smoke chamber, a camera knocked out of
#: calibration.
_DRIFTS: dict[Kind, str] = {
    Kind.WATER_LEVEL: "depth_cm",
    Kind.MANHOLE: "gas_lel_pct",
    Kind.SMOKE: "obscuration_pct_m",
    Kind.CROWD: "density_m2",
}


def _noise_sd(metric: str, value: float) -> float:
    a, b = _NOISE[metric]
    return a + b * abs(value)


class Fault(StrEnum):
    """What a faulty sensor does; `NodeSimulator.faults_at` labels readings with these."""

    SPIKE = "spike"  # one reading far off, the next ones fine again
    STUCK = "stuck"  # the value freezes: a hung converter, a cached reading resent
    DRIFT = "drift"  # a bias that grows for hours, until the sensor is recalibrated
    DROPOUT = "dropout"  # nothing at all: a flat battery, a lost link, a reboot loop


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultPlan:
    """How often each fault strikes a node and for how long.

    The defaults are a plausible fleet of cheap sensors; a rate of 0 turns a
    fault off. Episodes (stuck, drift, dropout) fall in slots twice their
    length, at most one per slot, so that each slot decides on its own and
    the schedule stays a pure function of time; hence a rate of at most one
    episode per two lengths.
    """

    spike_p: float = 0.005  # chance that any one reading is an outlier
    stuck_per_day: float = 0.2
    stuck_s: float = 2 * HOUR
    drift_per_day: float = 0.1
    drift_s: float = 12 * HOUR
    drift_per_h: float = 0.01  # bias growth per hour, as a fraction of the sensor's span
    dropout_per_day: float = 0.3
    dropout_s: float = HOUR

    def __post_init__(self) -> None:
        if not 0.0 <= self.spike_p <= 1.0:
            raise ValueError(f"spike_p is a probability, got {self.spike_p}")
        if self.drift_per_h < 0:
            raise ValueError(f"drift_per_h must be >= 0, got {self.drift_per_h}")
        for name, per_day, length in self.episodes():
            if length <= 0 or per_day < 0:
                raise ValueError(f"{name}: length > 0 and rate >= 0, got {length}, {per_day}")
            if per_day * 2 * length > DAY_S:
                raise ValueError(
                    f"{name}: at most {DAY_S / (2 * length):g} episodes of {length:g} s "
                    f"fit in a day, got {per_day:g}"
                )

    def episodes(self) -> tuple[tuple[Fault, float, float], ...]:
        """(fault, episodes per day, episode length in s) for the faults that last."""
        return (
            (Fault.STUCK, self.stuck_per_day, self.stuck_s),
            (Fault.DRIFT, self.drift_per_day, self.drift_s),
            (Fault.DROPOUT, self.dropout_per_day, self.dropout_s),
        )


@dataclass(frozen=True, slots=True)
class _Fate:
    """What the faults do to the reading at one instant."""

    measured_at: float  # earlier than the instant while the sensor is stuck
    bias: float
    spike: tuple[str, float] | None
    active: frozenset[str]


def _node_seed(seed: int, node: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{node}".encode(), digest_size=8).digest(), "big")


def _daily(t: float, peak_hour: float, width_h: float, after_h: float | None = None) -> float:
    """A bump centred on `peak_hour` (wraps at midnight), 1 at the peak.

    `after_h`, if given, is the width after the peak: a day out builds
    slowly and ebbs even more slowly.
    """
    d = (t / HOUR - peak_hour + 12) % 24 - 12  # hours from the peak, -12..12
    width = after_h if after_h is not None and d > 0 else width_h
    return math.exp(-0.5 * (d / width) ** 2)


def weekday_of(day_start_ms: int) -> int:
    """The weekday (0 = Monday) of a simulated day that starts at `day_start_ms` (UTC)."""
    return datetime.fromtimestamp(day_start_ms / 1000, tz=UTC).weekday()


class NodeSimulator:
    """Normal behaviour of one node plus its scenario overlays, through its sensor.

    `metrics(t)` is deterministic in (seed, node, t): the noise generator is
    seeded from all three, so a reading can be recomputed exactly. `weekday`
    (0 = Monday, see `weekday_of`) is the weekday of t = 0; later days follow
    on. `faults` (off by default) makes the sensor misbehave on a schedule
    that is itself a pure function of (seed, node, t).
    """

    def __init__(
        self,
        device: Device,
        scenario: Scenario,
        *,
        seed: int,
        faults: FaultPlan | None = None,
        weekday: int = 0,
    ) -> None:
        if not 0 <= weekday <= 6:
            raise ValueError(f"weekday is 0 (Monday) to 6 (Sunday), got {weekday}")
        self.device = device
        self._seed = _node_seed(seed, device.node)
        profile = random.Random(self._seed)
        self.phase_s = profile.uniform(0, 60)  # nodes are not synchronised
        self._scale = profile.uniform(0.35, 1.0)  # how busy / how wet this spot is
        self._area_m2 = profile.uniform(300, 3000)
        self._battery0 = profile.uniform(70, 100)
        self._rssi0 = profile.uniform(-95, -60)
        self._overlays = scenario.overlays.get(device.node, ())
        self._faults = faults
        self._weekday = weekday
        specs = KIND_METRICS[device.kind]
        self._ranges = {m: (s.low, s.high) for m, s in specs.items()}
        # A crowd's count is derived from its density, so only the density can misread.
        self._spiky = tuple(m for m in specs if m != "count")
        self._drifting = _DRIFTS[device.kind]

    def metrics(self, t: float) -> dict[str, float]:
        """What the node reports at `t`, every value inside its physical range."""
        if self._faults is None:
            return self._finish(self._measure(t))
        fate = self._fate(t, self._faults)
        values = self._measure(fate.measured_at)
        values[self._drifting] += fate.bias
        if fate.spike is not None:
            metric, jump = fate.spike
            values[metric] += jump
        return self._finish(values)

    def reports(self, t: float) -> bool:
        """False inside a dropout: the caller takes no reading then."""
        plan = self._faults
        return (
            plan is None
            or self._episode(Fault.DROPOUT, t, plan.dropout_per_day, plan.dropout_s) is None
        )

    def faults_at(self, t: float) -> frozenset[str]:
        """The faults shaping what the node reports (or withholds) at `t`."""
        return frozenset() if self._faults is None else self._fate(t, self._faults).active

    def health(self, t: float) -> tuple[float, float]:
        """(battery %, RSSI dBm): a slow drain and a little fading."""
        noise = random.Random(self._seed ^ round(t * 1000) ^ 0x5EED)
        battery = max(5.0, self._battery0 - 2.0 * t / DAY_S)
        return round(battery, 1), round(self._rssi0 + noise.gauss(0, 2), 1)

    def _measure(self, t: float) -> dict[str, float]:
        """The true value (normal life, or an incident where it forces more) plus noise."""
        values = self._normal(t)
        for overlay in self._overlays:
            for metric, forced in overlay(t).items():
                values[metric] = max(values.get(metric, 0.0), forced)
        noise = random.Random(self._seed ^ round(t * 1000))
        return {m: v + _noise_sd(m, v) * noise.gauss(0.0, 1.0) for m, v in values.items()}

    def _finish(self, values: dict[str, float]) -> dict[str, float]:
        """Clamp to what the contract accepts: a sensor cannot report the impossible."""
        out = {m: min(max(v, self._ranges[m][0]), self._ranges[m][1]) for m, v in values.items()}
        if "cover_open" in out:
            out["cover_open"] = 1.0 if out["cover_open"] >= 0.5 else 0.0
        if "count" in out:  # a crowd count follows its density
            out["count"] = min(
                float(round(out["density_m2"] * self._area_m2)), self._ranges["count"][1]
            )
        return {k: round(v, 3) for k, v in out.items()}

    def _fate(self, t: float, plan: FaultPlan) -> _Fate:
        active: set[str] = set()
        measured_at = t
        stuck = self._episode(Fault.STUCK, t, plan.stuck_per_day, plan.stuck_s)
        if stuck is not None:
            # Frozen at what it read when it hung, drift and all.
            measured_at = stuck[0]
            active.add(Fault.STUCK)
        bias = 0.0
        drift = self._episode(Fault.DRIFT, measured_at, plan.drift_per_day, plan.drift_s)
        if drift is not None:
            began, rng = drift
            sign = rng.choice((-1.0, 1.0))
            span = _SPAN[self._drifting]
            bias = sign * plan.drift_per_h * span * (measured_at - began) / HOUR
            active.add(Fault.DRIFT)
        spike = None
        if stuck is None and plan.spike_p > 0:
            rng = random.Random(f"{self._seed}:{Fault.SPIKE}:{round(t * 1000)}")
            if rng.random() < plan.spike_p:
                metric = rng.choice(self._spiky)
                # Outliers from these sensors read high: a false echo off a passing
                # lorry, an insect in the smoke chamber, a bouncing cover switch.
                spike = (metric, rng.uniform(0.5, 1.5) * _SPAN[metric])
                active.add(Fault.SPIKE)
        if self._episode(Fault.DROPOUT, t, plan.dropout_per_day, plan.dropout_s) is not None:
            active.add(Fault.DROPOUT)
        return _Fate(measured_at, bias, spike, frozenset(active))

    def _episode(
        self, fault: Fault, t: float, per_day: float, length_s: float
    ) -> tuple[float, random.Random] | None:
        """(start, the episode's generator) if a `fault` episode covers `t`.

        Time is cut into slots of twice the episode length; each slot holds
        one episode or none, decided by a generator seeded with the slot, so
        no state is carried from one reading to the next.
        """
        if per_day <= 0:
            return None
        slot_s = 2 * length_s
        slot = math.floor(t / slot_s)
        rng = random.Random(f"{self._seed}:{fault}:{slot}")
        if rng.random() >= per_day * slot_s / DAY_S:
            return None
        start = slot * slot_s + rng.random() * (slot_s - length_s)
        return (start, rng) if start <= t < start + length_s else None

    def _weekend(self, t: float) -> bool:
        return (self._weekday + math.floor(t / DAY_S)) % 7 >= 5

    def _normal(self, t: float) -> dict[str, float]:
        kind = self.device.kind
        if kind is Kind.WATER_LEVEL:
            return {"depth_cm": 0.4 * self._scale}  # a dry road: a film of water
        if kind is Kind.MANHOLE:
            # Traffic rocks covers a little: commute peaks on working days, one
            # broad midday swell at weekends.
            if self._weekend(t):
                traffic = 0.8 * _daily(t, 13, 3.5)
            else:
                traffic = _daily(t, 8.5, 2) + _daily(t, 18, 2)
            return {
                "cover_tilt_deg": 0.6 + 0.8 * traffic * self._scale,
                "cover_open": 0.0,
                "gas_lel_pct": 0.4,
            }
        if kind is Kind.SMOKE:
            return {"obscuration_pct_m": 0.05, "temperature_c": 17 + 7 * _daily(t, 15, 4)}
        if self._weekend(t):
            # No commute: a quiet morning, then people go out late and stay out,
            # so one broad afternoon peak, higher than a working day's yet under
            # the 2 persons/m2 of a blue warning.
            busy = 1.45 * _daily(t, 16.0, 2.5, after_h=3.5) + 0.12
        else:
            # The working day: a lunch bump and a longer evening one.
            busy = 0.9 * _daily(t, 12.5, 1.5) + 1.2 * _daily(t, 18.5, 2.0) + 0.1
        return {"density_m2": busy * self._scale, "count": 0.0}
