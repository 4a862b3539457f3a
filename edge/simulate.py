"""Simulated sensor nodes: normal city life, plus a scripted incident timeline.

Each node has a model of its quantity over a simulated day (rain-free road
drains near dry, crowds that follow the working day, detectors at ambient
temperature) with sensor noise. A `Scenario` overlays incidents on chosen
nodes: a rainstorm raising water at a district's low points, a lifted
manhole cover, a fire, a crowd surge. The scenario also states the alerts it
must cause, so the demo and its tests can check the pipeline end to end.

Everything is a pure function of (seed, node, simulated time): the same seed
gives the same readings whatever the event loop does.

>>> from cityvitals.citygen import generate_city
>>> city = generate_city(nodes=40, districts=3, seed=3)
>>> scenario = Scenario.default(city, seed=3)
>>> [i.name for i in scenario.incidents]
['cover-lifted', 'rainstorm', 'crowd-surge', 'fire']
>>> node = city.by_kind(Kind.WATER_LEVEL)[0]
>>> sim = NodeSimulator(node, scenario, seed=3)
>>> sim.metrics(3600.0) == NodeSimulator(node, scenario, seed=3).metrics(3600.0)
True
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cityvitals.errors import CityvitalsError
from cityvitals.kinds import Kind
from cityvitals.levels import Level
from cityvitals.registry import Device, Registry

DAY_S = 86_400.0
HOUR = 3600.0

#: An overlay maps seconds since the start of the simulated day to metric values
#: that the incident forces: the node reports the larger of normal and forced.
Overlay = Callable[[float], Mapping[str, float]]


class ScenarioError(CityvitalsError):
    """The city cannot host the scripted incidents (too few nodes of a kind)."""


@dataclass(frozen=True, slots=True)
class ExpectedAlert:
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

        storm_nodes = pick(Kind.WATER_LEVEL, 0, need=3)
        rng.shuffle(storm_nodes)
        start = 13.5 * HOUR
        peaks = {
            storm_nodes[0]: (64.0, Level.RED),
            storm_nodes[1]: (39.0, Level.ORANGE),
            storm_nodes[2]: (25.0, Level.YELLOW),
        }
        overlays: dict[str, Overlay] = {}
        for node in storm_nodes:
            peak = peaks.get(node, (rng.uniform(1.5, 5.0), Level.NONE))[0]
            overlays[node] = _peak_overlay(
                "depth_cm", start, rise=1.5 * HOUR, hold=0.75 * HOUR, fall=2 * HOUR, peak=peak
            )
        incidents.append(
            Incident(
                "rainstorm",
                f"rainstorm over {districts[0]}",
                start,
                start + 4.25 * HOUR,
                overlays,
                tuple(ExpectedAlert(n, "water_level.depth", lvl) for n, (_, lvl) in peaks.items()),
            )
        )

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


def _node_seed(seed: int, node: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{node}".encode(), digest_size=8).digest(), "big")


def _daily(t: float, peak_hour: float, width_h: float) -> float:
    """A bump centred on `peak_hour` (wraps at midnight), 1 at the peak."""
    h = (t / HOUR) % 24
    d = min(abs(h - peak_hour), 24 - abs(h - peak_hour))
    return math.exp(-0.5 * (d / width_h) ** 2)


class NodeSimulator:
    """Normal behaviour of one node plus its scenario overlays.

    `metrics(t)` is deterministic in (seed, node, t): the noise generator is
    seeded from all three, so a reading can be recomputed exactly.
    """

    def __init__(self, device: Device, scenario: Scenario, *, seed: int) -> None:
        self.device = device
        self._seed = _node_seed(seed, device.node)
        profile = random.Random(self._seed)
        self.phase_s = profile.uniform(0, 60)  # nodes are not synchronised
        self._scale = profile.uniform(0.35, 1.0)  # how busy / how wet this spot is
        self._area_m2 = profile.uniform(300, 3000)
        self._battery0 = profile.uniform(70, 100)
        self._rssi0 = profile.uniform(-95, -60)
        self._overlays = scenario.overlays.get(device.node, ())

    def metrics(self, t: float) -> dict[str, float]:
        noise = random.Random(self._seed ^ round(t * 1000))
        values = self._normal(t, noise)
        for overlay in self._overlays:
            for metric, forced in overlay(t).items():
                values[metric] = max(values.get(metric, 0.0), forced)
        if "cover_open" in values:
            values["cover_open"] = 1.0 if values["cover_open"] >= 0.5 else 0.0
        if "count" in values:  # a crowd count follows its density
            values["count"] = float(round(values["density_m2"] * self._area_m2))
        return {k: round(v, 3) for k, v in values.items()}

    def health(self, t: float) -> tuple[float, float]:
        """(battery %, RSSI dBm): a slow drain and a little fading."""
        noise = random.Random(self._seed ^ round(t * 1000) ^ 0x5EED)
        battery = max(5.0, self._battery0 - 2.0 * t / DAY_S)
        return round(battery, 1), round(self._rssi0 + noise.gauss(0, 2), 1)

    def _normal(self, t: float, noise: random.Random) -> dict[str, float]:
        kind = self.device.kind
        if kind is Kind.WATER_LEVEL:
            # A dry road: a film of water and sensor noise.
            return {"depth_cm": max(0.0, 0.4 * self._scale + noise.gauss(0, 0.3))}
        if kind is Kind.MANHOLE:
            # Traffic rocks covers a little during the day.
            traffic = _daily(t, 8.5, 2) + _daily(t, 18, 2)
            return {
                "cover_tilt_deg": max(
                    0.0, 0.6 + 0.8 * traffic * self._scale + noise.gauss(0, 0.25)
                ),
                "cover_open": 0.0,
                "gas_lel_pct": max(0.0, 0.4 + noise.gauss(0, 0.25)),
            }
        if kind is Kind.SMOKE:
            ambient = 17 + 7 * _daily(t, 15, 4)
            return {
                "obscuration_pct_m": max(0.0, 0.05 + noise.gauss(0, 0.03)),
                "temperature_c": ambient + noise.gauss(0, 0.4),
            }
        # Crowds follow the working day: a lunch bump and a longer evening one.
        busy = 0.9 * _daily(t, 12.5, 1.5) + 1.2 * _daily(t, 18.5, 2.0) + 0.1
        density = max(0.0, busy * self._scale + noise.gauss(0, 0.04))
        return {"density_m2": density, "count": 0.0}
