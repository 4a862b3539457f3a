"""A believable simulated city for demos, tests and benchmarks.

The administrative ladder follows city grid management: the city is split
into districts, a district into streets (sub-district offices), a street into
grids, the smallest unit a team patrols. Every district gets every sensor
kind, and each kind is answered by the unit that would be called out for it.

Generation is deterministic for a seed:

>>> city = generate_city(nodes=40, districts=3, seed=7)
>>> len(city), len(city.districts())
(40, 3)
>>> generate_city(nodes=40, districts=3, seed=7).to_csv() == city.to_csv()
True
"""

from __future__ import annotations

import math
import random

from cityvitals.kinds import Kind
from cityvitals.registry import Device, Registry

CITY_CENTRE = (31.2304, 121.4737)
PREFIX = {Kind.WATER_LEVEL: "wl", Kind.MANHOLE: "mh", Kind.SMOKE: "sm", Kind.CROWD: "cr"}
# Share of each kind: drains and manholes are everywhere, crowd counters at hot spots.
SHARE = {Kind.WATER_LEVEL: 0.3, Kind.MANHOLE: 0.3, Kind.SMOKE: 0.2, Kind.CROWD: 0.2}
UNIT = {
    Kind.WATER_LEVEL: "Drainage Office",
    Kind.MANHOLE: "Utilities Office",
    Kind.SMOKE: "Fire Brigade",
    Kind.CROWD: "Public Security Bureau",
}
DISTRICTS = (
    ("Harbour", "HB", ("Dockside", "Lighthouse", "Ferry Row")),
    ("Old Town", "OT", ("Temple Lane", "Drum Tower", "Silk Market")),
    ("Riverside", "RS", ("Willow Bank", "Mill Bridge", "Reed Marsh")),
    ("Hillcrest", "HC", ("Pine Slope", "Observatory", "Quarry Gate")),
    ("Northgate", "NG", ("Rail Yard", "Canal Head", "Brick Works")),
    ("Eastfield", "EF", ("Orchard", "Stadium", "Tech Park")),
)
GRIDS_PER_STREET = 3
_M_PER_DEG_LAT = 111_320.0


def _offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    return (
        lat + north_m / _M_PER_DEG_LAT,
        lon + east_m / (_M_PER_DEG_LAT * math.cos(math.radians(lat))),
    )


def _kind_sequence(nodes: int, rng: random.Random) -> list[Kind]:
    counts = {k: math.floor(nodes * share) for k, share in SHARE.items()}
    # Hand out the rounding remainder so the total is exact.
    for kind in list(SHARE)[: nodes - sum(counts.values())]:
        counts[kind] += 1
    kinds = [k for k, c in counts.items() for _ in range(c)]
    rng.shuffle(kinds)
    return kinds


def generate_city(*, nodes: int = 240, districts: int = 4, seed: int = 1) -> Registry:
    """Place `nodes` sensors over `districts` districts (at most 6).

    Nodes of each kind are dealt round-robin over the districts, so every
    district has every kind once there are enough nodes.
    """
    if not 1 <= districts <= len(DISTRICTS):
        raise ValueError(f"districts must be 1..{len(DISTRICTS)}, got {districts}")
    # Smoke and crowd have the smallest share (1/5): five nodes per district
    # is the least that gives every district one of each.
    if nodes < 5 * districts:
        raise ValueError(f"need at least {5 * districts} nodes for {districts} districts")
    rng = random.Random(seed)
    centres = []
    for i in range(districts):
        angle = 2 * math.pi * i / districts + rng.uniform(-0.2, 0.2)
        radius = 0 if i == 0 else rng.uniform(3_000, 5_000)
        centres.append(
            _offset(
                *CITY_CENTRE,
                radius * math.cos(angle) if i else 0.0,
                radius * math.sin(angle) if i else 0.0,
            )
        )
    grids: list[list[tuple[str, str, tuple[float, float]]]] = []
    for (_name, code, streets), centre in zip(DISTRICTS[:districts], centres, strict=True):
        cells = []
        for s, street in enumerate(streets):
            for g in range(GRIDS_PER_STREET):
                north = (s - 1) * 900.0 + rng.uniform(-150, 150)
                east = (g - 1) * 700.0 + rng.uniform(-150, 150)
                grid_id = f"{code}-{s + 1}{g + 1:02d}"
                cells.append((f"{street} Street", grid_id, _offset(*centre, north, east)))
        grids.append(cells)

    devices: list[Device] = []
    per_kind_index = dict.fromkeys(Kind, 0)
    per_kind_district = dict.fromkeys(Kind, 0)
    for kind in _kind_sequence(nodes, rng):
        per_kind_index[kind] += 1
        d = per_kind_district[kind] % districts
        per_kind_district[kind] += 1
        district = DISTRICTS[d][0]
        street, grid_id, (lat, lon) = rng.choice(grids[d])
        lat, lon = _offset(lat, lon, rng.uniform(-250, 250), rng.uniform(-250, 250))
        devices.append(
            Device(
                node=f"{PREFIX[kind]}-{per_kind_index[kind]:04d}",
                kind=kind,
                lat=round(lat, 6),
                lon=round(lon, 6),
                district=district,
                street=street,
                grid=grid_id,
                unit=f"{district} {UNIT[kind]}",
            )
        )
    devices.sort(key=lambda dev: dev.node)
    return Registry(devices)
