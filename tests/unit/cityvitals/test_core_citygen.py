"""The simulated city: deterministic, complete, valid and in the right place."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from cityvitals.citygen import CITY_CENTRE, DISTRICTS, PREFIX, SHARE, UNIT, generate_city
from cityvitals.contract import Reading as ReadingMsg
from cityvitals.contract import decode_reading, encode
from cityvitals.kinds import KIND_METRICS, Kind
from cityvitals.registry import Registry


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6_371_000 * math.asin(math.sqrt(a))


def test_same_seed_gives_the_same_city():
    """Two generations with one seed are identical, device for device."""
    a = generate_city(nodes=120, districts=4, seed=11)
    b = generate_city(nodes=120, districts=4, seed=11)
    assert list(a) == list(b)
    assert a.to_csv() == b.to_csv()


def test_different_seeds_give_different_cities():
    """Different seeds place nodes differently."""
    cities = {generate_city(nodes=60, districts=3, seed=s).to_csv() for s in range(5)}
    assert len(cities) == 5


@pytest.mark.parametrize(("nodes", "districts"), [(5, 1), (15, 3), (41, 3), (240, 4), (997, 6)])
def test_exact_node_count_and_district_count(nodes, districts):
    """The city has exactly the nodes asked for, spread over exactly the districts asked for."""
    city = generate_city(nodes=nodes, districts=districts, seed=3)
    assert len(city) == nodes
    assert city.districts() == sorted(name for name, _, _ in DISTRICTS[:districts])


@pytest.mark.parametrize("nodes", [5, 7, 10, 99, 240])
def test_kind_shares_add_up_and_follow_share(nodes):
    """Per-kind counts sum to the total and each is within one of its share."""
    counts = Counter(d.kind for d in generate_city(nodes=nodes, districts=1, seed=1))
    assert sum(counts.values()) == nodes
    for kind, share in SHARE.items():
        assert abs(counts[kind] - nodes * share) <= 1


@pytest.mark.parametrize("districts", range(1, 7))
@pytest.mark.parametrize("per_district", [5, 6, 9, 40])
def test_every_district_has_every_kind_from_five_nodes_per_district(districts, per_district):
    """With at least 5 nodes per district, every district has at least one node of each kind."""
    city = generate_city(nodes=districts * per_district, districts=districts, seed=2)
    present = {(d.district, d.kind) for d in city}
    assert present == {(name, k) for name, _, _ in DISTRICTS[:districts] for k in Kind}


@pytest.mark.parametrize("districts", [1, 3, 6])
def test_every_district_has_every_kind_at_the_accepted_minimum(districts):
    """At the smallest accepted size (5 nodes per district) every district has every kind."""
    city = generate_city(nodes=5 * districts, districts=districts, seed=2)
    present = {(d.district, d.kind) for d in city}
    assert present == {(name, k) for name, _, _ in DISTRICTS[:districts] for k in Kind}


def test_node_ids_are_unique_prefixed_and_valid_per_contract():
    """Node ids are unique, prefixed by kind, numbered per kind, and the contract accepts them."""
    city = generate_city(nodes=240, districts=6, seed=5)
    ids = [d.node for d in city]
    assert len(set(ids)) == len(ids) == 240
    assert ids == sorted(ids)
    for kind in Kind:
        numbers = sorted(int(d.node.split("-")[1]) for d in city.by_kind(kind))
        assert numbers == list(range(1, len(numbers) + 1))
        assert all(d.node.startswith(f"{PREFIX[kind]}-") for d in city.by_kind(kind))
    for d in city:
        metric = next(iter(KIND_METRICS[d.kind].values()))
        msg = ReadingMsg(
            v=1,
            node=d.node,
            kind=d.kind,
            seq=0,
            ts_ms=1_764_028_800_000,
            metrics={metric.name: metric.low},
        )
        assert decode_reading(encode(msg)).node == d.node


def test_units_and_grids_match_district_and_kind():
    """Each node's unit is its district's office for its kind, and its grid is in its district."""
    city = generate_city(nodes=200, districts=6, seed=9)
    codes = {name: code for name, code, _ in DISTRICTS}
    streets = {name: {f"{s} Street" for s in st} for name, _, st in DISTRICTS}
    for d in city:
        assert d.unit == f"{d.district} {UNIT[d.kind]}"
        assert d.grid.startswith(f"{codes[d.district]}-")
        assert d.street in streets[d.district]


@pytest.mark.parametrize("seed", range(4))
def test_coordinates_are_within_a_few_km_of_the_centre(seed):
    """Every node lies within 8 km of CITY_CENTRE (districts ring at 3-5 km), rounded to 1e-6."""
    city = generate_city(nodes=300, districts=6, seed=seed)
    for d in city:
        assert distance_m(*CITY_CENTRE, d.lat, d.lon) < 8_000
        assert round(d.lat, 6) == d.lat
        assert round(d.lon, 6) == d.lon


def test_generated_city_survives_a_csv_round_trip(tmp_path):
    """A generated city dumps to a registry CSV that loads back identical."""
    city = generate_city(nodes=40, districts=3, seed=7)
    path = tmp_path / "city.csv"
    city.dump(path)
    assert list(Registry.load(path)) == list(city)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"districts": 0}, "districts must be 1..6, got 0"),
        ({"districts": 7}, "districts must be 1..6, got 7"),
        ({"nodes": 14, "districts": 3}, "need at least 15 nodes for 3 districts"),
        ({"nodes": 0, "districts": 1}, "need at least 5 nodes for 1 districts"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs, message):
    """Too many or too few districts, or too few nodes, raise ValueError saying what is allowed."""
    with pytest.raises(ValueError, match=message):
        generate_city(**kwargs)
