"""The simulated city: deterministic, quiet on a normal day, and its incidents raise
exactly the alerts the scenario promises when run through the real rule engine.
The storm's water follows the reservoir physics, crowds know the weekend, and
sensor faults are opt-in, deterministic and never leave the physical ranges."""

from __future__ import annotations

import dataclasses
import functools
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cityvitals.citygen import generate_city
from cityvitals.config import BrokerSettings
from cityvitals.contract import Reading, Warning, validate_reading
from cityvitals.kinds import KIND_METRICS, Kind, metric_spec
from cityvitals.levels import WARNING_LEVELS, Level
from edge.simulate import (
    DAY_S,
    HOUR,
    FaultPlan,
    Hyetograph,
    LowPoint,
    NodeSimulator,
    Scenario,
    weekday_of,
)
from stream.areas import AreaEngine
from stream.engine import NodeState, RuleEngine
from stream.rules import DEFAULT_RULES, AreaState, RuleState, ThresholdRule

INTERVAL = 600.0


def run_day(nodes: int, seed: int, scenario: Scenario | None = None):
    """Every node's day through the rule engine, and its node warnings in time order
    through the area rules; peak level per (node or area, rule)."""
    city = generate_city(nodes=nodes, districts=4, seed=seed)
    scenario = scenario if scenario is not None else Scenario.default(city, seed=seed)
    engine = RuleEngine()
    peaks: dict[tuple[str, str], Level] = {}
    raised: list[Warning] = []
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
            raised += engine.evaluate(reading, device.placement, state)
    areas = AreaEngine(engine.area_rules, registry=city)
    area_states: dict[str, AreaState] = {}
    for w in sorted(raised, key=lambda w: w.ts_ms):
        for key, _ in areas.routes(w):
            raised += areas.evaluate(key, w, area_states.setdefault(key, AreaState()))
    for w in raised:
        key = (w.subject, w.rule)
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
        districts = {f"district:{d}" for d in city.districts()}
        assert all(e.node in city or e.node in districts for e in incident.expected)
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


# -- The rainstorm ----------------------------------------------------------------------

RULES = {r.name: r for r in DEFAULT_RULES}
DEPTH = RULES["water_level.depth"]
STORM_SEEDS = [1, 7, 42, 2024, 31337]
NO_FAULTS = FaultPlan(spike_p=0.0, stuck_per_day=0.0, drift_per_day=0.0, dropout_per_day=0.0)


@functools.cache
def storm_day(seed: int):
    city = generate_city(nodes=240, districts=4, seed=seed)
    scenario = Scenario.default(city, seed=seed)
    storm = next(i for i in scenario.incidents if i.name == "rainstorm")
    return city, scenario, storm


def next_threshold(rule, level: Level) -> float | None:
    above = [rule.threshold(lv) for lv in WARNING_LEVELS if lv > level]
    return next((t for t in above if t is not None), None)


def longest_run(flags) -> int:
    return max((len(list(g)) for f, g in itertools.groupby(flags) if f), default=0)


@pytest.mark.parametrize("seed", STORM_SEEDS)
def test_storm_sites_hold_their_promised_level_and_stay_below_the_next(seed):
    """Each flooding site, sampled every minute of the storm: at or above its threshold
    for 4+ consecutive 10-minute readings whatever its phase, below the next level's
    threshold with room for noise, and the real rule ends at exactly that level."""
    city, scenario, storm = storm_day(seed)
    gauges = [e for e in storm.expected if e.rule == "water_level.depth"]
    assert sorted(e.level for e in gauges) == [Level.YELLOW, Level.ORANGE, Level.RED]
    for alert in gauges:
        sim = NodeSimulator(city.get(alert.node), scenario, seed=seed)
        depths = [sim.metrics(storm.start_s + m * 60.0)["depth_cm"] for m in range(9 * 60)]
        low = DEPTH.threshold(alert.level)
        high = next_threshold(DEPTH, alert.level)
        if high is not None:
            assert max(depths) < high - 2.0, (alert, max(depths))
        for phase in range(10):
            readings = depths[phase::10]
            assert longest_run(d >= low for d in readings) >= 4, (alert, phase)
            state = RuleState()
            reached = Level.NONE
            for d in readings:
                reached = max(reached, DEPTH.step(state, d) or Level.NONE)
            assert reached == alert.level, (alert, phase)


@pytest.mark.parametrize("seed", STORM_SEEDS)
def test_other_storm_sites_puddle_but_stay_below_blue(seed):
    """The storm wets every water-level site of its district, but those it promises
    nothing for stay below the blue threshold all day."""
    city, scenario, storm = storm_day(seed)
    promised = {e.node for e in storm.expected if e.rule == "water_level.depth"}
    others = sorted(storm.nodes - promised)
    assert others, "a 240-node city has more than three sites in the storm's district"
    for node in others:
        sim = NodeSimulator(city.get(node), scenario, seed=seed)
        depths = [sim.metrics(tick * 600.0 + sim.phase_s)["depth_cm"] for tick in range(144)]
        assert 1.0 < max(depths) < DEPTH.threshold(Level.BLUE) - 2.0, node


@pytest.mark.parametrize("seed", STORM_SEEDS)
def test_water_recedes_to_near_dry_after_the_storm(seed):
    """By the end of the incident every storm site is back to a wet-road film, and it
    stays there until midnight; before the rain it was dry too."""
    city, scenario, storm = storm_day(seed)
    assert storm.end_s - storm.start_s < 10 * HOUR
    for node in storm.nodes:
        sim = NodeSimulator(city.get(node), scenario, seed=seed)
        before = [sim.metrics(storm.start_s - m * 600.0)["depth_cm"] for m in range(1, 7)]
        after = [sim.metrics(t)["depth_cm"] for t in range(int(storm.end_s), int(DAY_S), 600)]
        assert max(before) < 2.0
        assert after
        assert max(after) < 2.0, node


def test_a_drain_keeps_up_with_light_rain_and_is_overwhelmed_by_heavy_rain():
    """Below the drain's capacity depth scales with the rain; beyond it the excess ponds,
    so doubling heavy rain more than doubles the depth. Water peaks after the rain
    does and drains away afterwards."""
    site = LowPoint(10.0, 2.0, 20.0)

    def run(mm_h: float) -> tuple[float, float, float]:
        depths = site.depths(Hyetograph(0.0, peak_mm_h=mm_h, time_to_peak_s=HOUR))
        peak = max(depths)
        return peak, depths.index(peak) * 60.0, depths[-1]

    light, light_at, light_end = run(10.0)
    moderate, _, _ = run(20.0)
    heavy, heavy_at, heavy_end = run(40.0)
    assert moderate == pytest.approx(2 * light, rel=1e-9)
    assert heavy > 3 * moderate
    assert HOUR < light_at <= heavy_at
    assert max(light_end, heavy_end) < 0.01


@pytest.mark.parametrize(
    ("peak", "k", "q"), [(3.0, 1.5, 20.0), (25.0, 3.0, 35.0), (64.0, 1.5, 20.0)]
)
def test_a_calibrated_site_peaks_where_asked(peak, k, q):
    """Solving for the catchment puts the peak of the simulated depth on the target."""
    rain = Hyetograph(1000.0, peak_mm_h=40.0, time_to_peak_s=1.2 * HOUR)
    site = LowPoint.calibrated(rain, peak_cm=peak, drain_per_h=k, capacity_cm_h=q)
    assert (site.drain_per_h, site.capacity_cm_h) == (k, q)
    assert max(site.depths(rain)) == pytest.approx(peak, abs=1e-3)


def test_low_point_rejects_impossible_drains():
    """A drain that takes nothing, or a negative catchment, is refused."""
    with pytest.raises(ValueError, match="drain_per_h > 0"):
        LowPoint(5.0, 0.0, 20.0)
    with pytest.raises(ValueError, match="catchment >= 0"):
        LowPoint(-1.0, 2.0, 20.0)


# -- Crowds through the week ------------------------------------------------------------


def hourly_crowd(weekday: int, nodes: int = 12) -> list[float]:
    """Mean density per hour of the day over a few quiet crowd nodes."""
    city = generate_city(nodes=80, districts=2, seed=11)
    devices = city.by_kind(Kind.CROWD)[:nodes]
    sims = [NodeSimulator(d, Scenario.quiet(), seed=11, weekday=weekday) for d in devices]
    return [
        sum(s.metrics(h * HOUR + m * 600.0)["density_m2"] for s in sims for m in range(6))
        / (6 * len(sims))
        for h in range(24)
    ]


def peaks(series: list[float]) -> list[int]:
    """Hours that are local maxima worth the name (at least half the day's peak)."""
    top = max(series)
    return [
        h
        for h in range(24)
        if series[h] >= 0.5 * top and series[h] > series[h - 1] and series[h] > series[(h + 1) % 24]
    ]


def test_weekend_crowds_peak_once_later_broader_and_higher():
    """A working day has a lunch and an evening bump; a weekend has one afternoon peak,
    higher than either, with a quiet morning and no commute bump."""
    weekday, weekend = hourly_crowd(0), hourly_crowd(5)
    assert peaks(weekday) == [12, 18]
    assert len(peaks(weekend)) == 1
    (top,) = peaks(weekend)
    assert 14 <= top <= 17
    assert max(weekend) > 1.1 * max(weekday)
    assert sum(weekend[8:12]) < sum(weekday[8:12])  # the day starts later
    # Broader: the weekend stays above half its peak for longer than any weekday bump.
    assert longest_run(v >= 0.5 * max(weekend) for v in weekend) > longest_run(
        v >= 0.5 * max(weekday) for v in weekday
    )


def test_the_default_day_is_a_working_day_and_days_follow_on():
    """No weekday given means Monday-like; Monday to Friday look alike, as do Saturday
    and Sunday; a Sunday simulation's second day is a Monday."""
    city = generate_city(nodes=40, districts=3, seed=3)
    device = city.by_kind(Kind.CROWD)[0]
    quiet = Scenario.quiet()

    def series(weekday: int | None, start: float = 0.0) -> list[dict[str, float]]:
        kw = {} if weekday is None else {"weekday": weekday}
        sim = NodeSimulator(device, quiet, seed=3, **kw)
        return [sim.metrics(start + i * 900.0) for i in range(96)]

    assert series(None) == series(0) == series(4)
    assert series(5) == series(6) != series(0)
    assert series(6, start=DAY_S) == series(0, start=DAY_S)
    assert series(4, start=DAY_S) == series(5, start=DAY_S) != series(4, start=DAY_S - 1.0)
    with pytest.raises(ValueError, match="weekday"):
        NodeSimulator(device, quiet, seed=3, weekday=7)


def test_weekday_of_a_day_start():
    """Day starts map to their UTC weekday: 2025-11-25 was a Tuesday."""
    assert weekday_of(1_764_028_800_000) == 1
    assert weekday_of(1_764_028_800_000 + 4 * 86_400_000) == 5


@pytest.mark.parametrize("weekday", [0, 5])
def test_normal_crowds_stay_below_every_warning(weekday):
    """Normal city life, working day or weekend, never reaches crowd-density blue."""
    city = generate_city(nodes=240, districts=4, seed=5)
    blue = RULES["crowd.density"].threshold(Level.BLUE)
    top = 0.0
    for device in city.by_kind(Kind.CROWD):
        sim = NodeSimulator(device, Scenario.quiet(), seed=5, weekday=weekday)
        top = max(top, *(sim.metrics(i * 600.0)["density_m2"] for i in range(144)))
    assert 1.0 < top < blue - 0.2


# -- Sensor faults ----------------------------------------------------------------------


@functools.cache
def fault_city():
    city = generate_city(nodes=40, districts=3, seed=3)
    return city, Scenario.default(city, seed=3)


def one_of_each_kind():
    city, _ = fault_city()
    return [city.by_kind(kind)[0] for kind in Kind]


def pair(device, plan: FaultPlan | None, seed: int = 3):
    _, scenario = fault_city()
    return (
        NodeSimulator(device, scenario, seed=seed),
        NodeSimulator(device, scenario, seed=seed, faults=plan),
    )


TIMES = [i * 600.0 + 17.0 for i in range(2 * 144)]  # two days at a 10-minute cadence


def test_without_faults_the_model_is_the_plain_one():
    """faults=None, and a plan with every rate at 0, change nothing: the same numbers,
    always reporting, no fault labels."""
    for device in one_of_each_kind():
        plain, none = pair(device, None)
        _, zero = pair(device, NO_FAULTS)
        for t in TIMES:
            assert plain.metrics(t) == none.metrics(t) == zero.metrics(t)
            assert none.reports(t)
            assert zero.reports(t)
            assert none.faults_at(t) == zero.faults_at(t) == frozenset()


def test_fault_schedules_are_a_pure_function_of_seed_node_and_time():
    """Two simulators with the same seed agree on every faulty reading and label, in
    any order of asking; another seed has another schedule."""
    plan = FaultPlan(spike_p=0.05, stuck_per_day=2, drift_per_day=1, dropout_per_day=2)
    for device in one_of_each_kind():
        _, a = pair(device, plan)
        _, b = pair(device, plan)
        _, c = pair(device, plan, seed=4)
        forward = [(a.metrics(t), a.reports(t), a.faults_at(t)) for t in TIMES]
        backward = [(b.metrics(t), b.reports(t), b.faults_at(t)) for t in reversed(TIMES)]
        assert forward == backward[::-1]
        assert [a.faults_at(t) for t in TIMES] != [c.faults_at(t) for t in TIMES]


def test_a_spike_is_one_large_upward_reading():
    """A spiked reading differs from the plain one in one measured metric only (and the
    count derived from it), upward by at least half the red threshold or up to the
    metric's ceiling; every other reading is untouched."""
    plan = dataclasses.replace(NO_FAULTS, spike_p=0.1)
    seen = 0
    for device in one_of_each_kind():
        plain, faulty = pair(device, plan)
        # cover_open has only an orange level; every other metric has a red one.
        red = {
            r.metric: r.threshold(Level.RED) or r.threshold(Level.ORANGE)
            for r in DEFAULT_RULES
            if r.kind is device.kind and isinstance(r, ThresholdRule)
        }
        for t in TIMES:
            p, f = plain.metrics(t), faulty.metrics(t)
            if faulty.faults_at(t) != {"spike"}:
                assert p == f
                continue
            seen += 1
            changed = {m for m in f if f[m] != p[m] and m != "count"}
            assert len(changed) == 1, (device.kind, t, p, f)
            (m,) = changed
            high = metric_spec(device.kind, m).high
            assert f[m] == high or f[m] - p[m] >= 0.5 * red[m], (m, p[m], f[m])
    assert seen > 20


def test_a_stuck_sensor_repeats_one_reading():
    """While stuck the node reports the same numbers over and over, for at most the
    episode's length, though the plain model moves on; otherwise it is untouched."""
    plan = dataclasses.replace(NO_FAULTS, stuck_per_day=4, stuck_s=2 * HOUR)
    runs = 0
    for device in one_of_each_kind():
        plain, faulty = pair(device, plan)
        stuck = [faulty.faults_at(t) == {"stuck"} for t in TIMES]
        for t, s in zip(TIMES, stuck, strict=True):
            if not s:
                assert plain.metrics(t) == faulty.metrics(t)
        for is_stuck, group in itertools.groupby(
            zip(TIMES, stuck, strict=True), key=lambda x: x[1]
        ):
            ts = [t for t, _ in group]
            if not is_stuck:
                continue
            assert len(ts) <= 12
            assert all(faulty.metrics(t) == faulty.metrics(ts[0]) for t in ts)
            if len(ts) >= 3:
                runs += 1
                assert any(plain.metrics(t) != faulty.metrics(t) for t in ts)
    assert runs >= 4


def test_drift_is_a_bias_on_one_metric_that_grows_steadily():
    """During a drift episode one metric (the channel that ages) is off by a bias that
    grows at a constant rate in one direction; outside, readings are untouched."""
    plan = dataclasses.replace(NO_FAULTS, drift_per_day=1.0, drift_s=12 * HOUR, drift_per_h=0.05)
    grown = 0.0
    for device in one_of_each_kind():
        plain, faulty = pair(device, plan)
        ranges = {m: (s.low, s.high) for m, s in KIND_METRICS[device.kind].items()}
        flags = [faulty.faults_at(t) == {"drift"} for t in TIMES]
        off: set[str] = set()
        for drifting, group in itertools.groupby(zip(TIMES, flags, strict=True), lambda x: x[1]):
            pairs = [(t, plain.metrics(t), faulty.metrics(t)) for t, _ in group]
            if not drifting:
                assert all(p == f for _, p, f in pairs)
                continue
            off |= {m for _, p, f in pairs for m in f if f[m] != p[m] and m != "count"}
            assert len(off) <= 1, (device.kind, off)
            if not off:
                continue  # clamped at the bottom of the range all along
            (m,) = off
            bias = [
                (t, f[m] - p[m])
                for t, p, f in pairs
                if all(ranges[m][0] < v[m] < ranges[m][1] for v in (p, f))
            ]
            slopes = [(b2 - b1) / (t2 - t1) for (t1, b1), (t2, b2) in itertools.pairwise(bias)]
            if slopes:
                assert max(slopes) - min(slopes) < 1e-5, (device.kind, slopes)
                assert abs(bias[-1][1]) >= abs(bias[0][1])
                grown = max(grown, abs(bias[-1][1]))
    assert grown > 0.1


def test_a_dropout_withholds_readings_for_a_while():
    """Inside a dropout the node does not report, and only there; an outage lasts no
    longer than its episode, and the share of silent time follows the rate."""
    plan = dataclasses.replace(NO_FAULTS, dropout_per_day=4.0, dropout_s=HOUR)
    week = [i * 600.0 + 17.0 for i in range(7 * 144)]
    for device in one_of_each_kind():
        plain, faulty = pair(device, plan)
        reports = [faulty.reports(t) for t in week]
        assert reports == [faulty.faults_at(t) != {"dropout"} for t in week]
        assert longest_run(not r for r in reports) <= 6
        assert 0.05 < reports.count(False) / len(week) < 0.35
        # What it would have said is unchanged: the caller just does not send it.
        assert all(plain.metrics(t) == faulty.metrics(t) for t in week[::7])


def test_reports_is_false_exactly_inside_dropouts():
    """With every fault on, a node stays silent exactly when a dropout is among its
    active faults; the labels name only known faults."""
    plan = FaultPlan(spike_p=0.05, stuck_per_day=2, drift_per_day=1, dropout_per_day=3)
    names = {"spike", "stuck", "drift", "dropout"}
    labels: set[str] = set()
    for device in one_of_each_kind():
        _, faulty = pair(device, plan)
        for t in TIMES:
            active = faulty.faults_at(t)
            labels |= active
            assert faulty.reports(t) is ("dropout" not in active)
    assert labels == names


@pytest.mark.parametrize(
    "kw",
    [
        {"spike_p": 1.5},
        {"stuck_s": 0.0},
        {"drift_per_day": -1.0},
        {"drift_per_h": -0.1},
        {"dropout_per_day": 13.0},
    ],
)
def test_fault_plan_rejects_impossible_rates(kw):
    """Probabilities outside [0, 1], empty episodes, negative rates and more episodes
    than the slots can hold are refused."""
    with pytest.raises(ValueError, match=r"spike_p|length|rate|drift_per_h|episodes"):
        FaultPlan(**kw)


WILD = FaultPlan(
    spike_p=0.5,
    stuck_per_day=3,
    drift_per_day=1.0,
    drift_per_h=1.0,
    dropout_per_day=3,
)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    pick=st.integers(0, 39),
    t=st.floats(0.0, 7 * DAY_S, allow_nan=False),
    plan=st.sampled_from([None, FaultPlan(), WILD]),
    weekday=st.integers(0, 6),
)
def test_every_value_is_inside_its_physical_range(seed, pick, t, plan, weekday):
    """Whatever the seed, time, day and faults (even spikes on every other reading and a
    drift of a full span per hour), a node reports its kind's metrics and nothing the
    contract would reject."""
    city, scenario = fault_city()
    device = list(city)[pick]
    sim = NodeSimulator(device, scenario, seed=seed, faults=plan, weekday=weekday)
    values = sim.metrics(t)
    assert values.keys() == KIND_METRICS[device.kind].keys()
    for metric, value in values.items():
        assert metric_spec(device.kind, metric).contains(value), (metric, value)
