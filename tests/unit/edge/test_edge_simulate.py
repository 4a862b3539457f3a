"""The simulated city: deterministic, quiet on a normal day, and its incidents raise
exactly the alerts the scenario promises when run through the real rule engine."""

from __future__ import annotations

import pytest

from cityvitals.citygen import generate_city
from cityvitals.config import BrokerSettings
from cityvitals.contract import Reading, validate_reading
from cityvitals.kinds import Kind
from cityvitals.levels import Level
from edge.simulate import DAY_S, NodeSimulator, Scenario
from stream.engine import NodeState, RuleEngine

INTERVAL = 600.0


def run_day(nodes: int, seed: int, scenario: Scenario | None = None):
    """Every node's day through the rule engine; peak level per (node, rule)."""
    city = generate_city(nodes=nodes, districts=4, seed=seed)
    scenario = scenario if scenario is not None else Scenario.default(city, seed=seed)
    engine = RuleEngine()
    peaks: dict[tuple[str, str], Level] = {}
    for device in city:
        sim = NodeSimulator(device, scenario, seed=seed)
        state = NodeState()
        for tick in range(int(DAY_S // INTERVAL)):
            t = tick * INTERVAL + sim.phase_s
            battery, rssi = sim.health(t)
            reading = validate_reading(
                Reading(
                    v=1,
                    node=device.node,
                    kind=device.kind,
                    seq=tick,
                    ts_ms=1_764_028_800_000 + round(t * 1000),
                    metrics=sim.metrics(t),
                    battery_pct=battery,
                    rssi_dbm=rssi,
                )
            )
            for w in engine.evaluate(reading, device.placement, state):
                key = (w.node, w.rule)
                peaks[key] = max(peaks.get(key, Level.NONE), w.level)
    return city, scenario, peaks


@pytest.mark.parametrize("seed", [1, 7, 2024])
def test_every_incident_reaches_its_level_and_nothing_else_fires(seed):
    """Through the real rules, each scripted incident peaks at exactly its expected
    level and no other (node, rule) raises any warning; all readings are in range."""
    _, scenario, peaks = run_day(240, seed)
    expected = {(e.node, e.rule): e.level for e in scenario.expected}
    assert peaks == expected


def test_a_quiet_day_raises_nothing():
    """Normal city life alone stays below every blue threshold."""
    _, _, peaks = run_day(240, 5, Scenario.quiet())
    assert peaks == {}


def test_metrics_are_a_pure_function_of_seed_node_and_time():
    """Recomputing a node's reading gives the same numbers; another seed does not."""
    city = generate_city(nodes=40, districts=3, seed=3)
    device = city.by_kind(Kind.CROWD)[0]
    scenario = Scenario.default(city, seed=3)
    a = NodeSimulator(device, scenario, seed=3)
    b = NodeSimulator(device, scenario, seed=3)
    c = NodeSimulator(device, scenario, seed=4)
    ts = [i * 977.0 for i in range(50)]
    assert [a.metrics(t) for t in ts] == [b.metrics(t) for t in ts]
    assert [a.metrics(t) for t in ts] != [c.metrics(t) for t in ts]


def test_default_scenario_spans_kinds_and_districts():
    """The demo day has the four incidents, each with expected alerts on real nodes."""
    city = generate_city(nodes=240, districts=4, seed=9)
    scenario = Scenario.default(city, seed=9)
    assert {i.name for i in scenario.incidents} == {
        "rainstorm",
        "cover-lifted",
        "fire",
        "crowd-surge",
    }
    for incident in scenario.incidents:
        assert incident.expected, incident.name
        assert all(e.node in city for e in incident.expected)
        assert 0 <= incident.start_s < incident.end_s <= DAY_S
    levels = {e.level for e in scenario.expected}
    assert {Level.YELLOW, Level.ORANGE, Level.RED} <= levels


@pytest.mark.parametrize(
    ("url", "host", "port", "user", "tls"),
    [
        ("mqtt://localhost", "localhost", 1883, None, False),
        ("mqtt://u%40x:p@10.1.2.3:1999", "10.1.2.3", 1999, "u@x", False),
        ("mqtts://broker.city", "broker.city", 8883, None, True),
    ],
)
def test_broker_url_parsing(url, host, port, user, tls):
    """Broker URLs give host, port (scheme default), credentials and TLS."""
    s = BrokerSettings.from_url(url)
    assert (s.host, s.port, s.username, s.tls is not None) == (host, port, user, tls)


@pytest.mark.parametrize("url", ["http://x", "mqtt://", "localhost:1883"])
def test_broker_url_rejects_non_mqtt(url):
    """Anything but mqtt:// or mqtts:// with a host is refused with the expected form."""
    with pytest.raises(ValueError, match="mqtt://host"):
        BrokerSettings.from_url(url)
