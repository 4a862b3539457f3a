"""The router's presence output: a node's own status and its agent's fan-out."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from cityvitals.citygen import generate_city
from cityvitals.clock import ManualClock
from cityvitals.contract import Reason, decode_presence
from cityvitals.kinds import Kind
from gateway.router import Router

CITY = generate_city(nodes=40, districts=3, seed=11)
WATER, SMOKE = CITY.by_kind(Kind.WATER_LEVEL)[0], CITY.by_kind(Kind.SMOKE)[0]
TS = 1_764_028_800_000


def router() -> Router:
    return Router(CITY, clock=ManualClock(TS / 1000 + 5))


def test_a_node_status_becomes_one_presence_report_with_its_placement():
    status = {
        "v": 1,
        "node": WATER.node,
        "kind": "water_level",
        "state": "offline",
        "ts_ms": TS,
        "reason": "battery",
    }
    route = router().route(f"city/water_level/{WATER.node}/status", json.dumps(status).encode())
    (record,) = route.presence
    report = decode_presence(record.value)
    assert record.key == WATER.node.encode()
    assert (report.node, report.state, report.reason) == (WATER.node, "offline", "battery")
    assert report.placement == WATER.placement
    assert report.received_ms == TS + 5000


def test_an_agent_will_fans_out_to_each_registered_node_it_lists():
    """An agent's last will is the only word its nodes get out; nodes the registry does not
    know (or knows as another kind) are left out rather than invented."""
    will = {
        "v": 1,
        "agent": "pi-1",
        "state": "offline",
        "ts_ms": TS,
        "reason": "lost",
        "nodes": [
            {"node": WATER.node, "kind": "water_level"},
            {"node": SMOKE.node, "kind": "smoke"},
            {"node": "wl-9999", "kind": "water_level"},
            {"node": WATER.node.replace("wl", "x"), "kind": "crowd"},
        ],
    }
    r = router()
    route = r.route("city/agent/pi-1/status", json.dumps(will).encode())
    reports = [decode_presence(rec.value) for rec in route.presence]
    assert [(p.node, p.state, p.agent) for p in reports] == [
        (WATER.node, "offline", "pi-1"),
        (SMOKE.node, "offline", "pi-1"),
    ]
    assert route.refused is None
    assert r.stats().statuses == 1


def test_with_an_agents_file_an_agent_speaks_only_for_its_own_nodes():
    """The ACL stops pi-1 publishing as pi-2, not naming pi-2's nodes in its own last will:
    with the agents file, those claims (and one on a node nobody has) are left out and
    dead-lettered as not_owner, naming whose each is; its own node's presence, and its
    health figures, still go through."""
    other = CITY.by_kind(Kind.WATER_LEVEL)[1]
    owners = {WATER.node: "pi-1", SMOKE.node: "pi-2"}
    will = {
        "v": 1,
        "agent": "pi-1",
        "state": "offline",
        "ts_ms": TS,
        "nodes": [
            {"node": WATER.node, "kind": "water_level"},
            {"node": SMOKE.node, "kind": "smoke"},
            {"node": other.node, "kind": "water_level"},
        ],
    }
    r = Router(CITY, clock=ManualClock(TS / 1000 + 5), owners=owners)
    payload = json.dumps(will).encode()
    route = r.route("city/agent/pi-1/status", payload)
    assert [decode_presence(rec.value).node for rec in route.presence] == [WATER.node]
    assert route.agent is not None
    assert route.agent.agent == "pi-1"
    assert route.refused is not None
    assert (route.refused.reason, route.refused.payload) == (Reason.NOT_OWNER, payload)
    assert route.refused.topic == "city/agent/pi-1/status"
    assert f"{SMOKE.node} (pi-2's)" in route.refused.detail
    assert f"{other.node} (nobody's)" in route.refused.detail
    # A status (its own node's presence and its figures are used), not a dead message:
    # the counts add up to what was received.
    stats = r.stats()
    assert (stats.received, stats.statuses, stats.dead_letters) == (1, 1, 0)
    assert (stats.refused_claims, stats.by_reason) == (1, {})
    # Its own nodes only: nothing refused, every claim through.
    mine = {**will, "nodes": will["nodes"][:1]}
    clean = r.route("city/agent/pi-1/status", json.dumps(mine).encode())
    assert (len(clean.presence), clean.refused) == (1, None)


def test_an_empty_retained_status_only_clears_and_a_bad_one_is_refused():
    r = router()
    assert r.route(f"city/water_level/{WATER.node}/status", b"").presence == ()
    bad = r.route(f"city/water_level/{WATER.node}/status", b'{"v":1,"state":"sleepy"}')
    assert bad.refused is not None
    assert bad.refused.reason is Reason.SCHEMA
    assert (r.stats().statuses, r.stats().dead_letters) == (1, 1)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["pi-1", "pi-2", "pi-3"]),
            st.lists(st.sampled_from([d.node for d in list(CITY)[:6]]), max_size=4),
        ),
        max_size=10,
    )
)
def test_with_owners_the_counts_still_add_up(statuses: list[tuple[str, list[str]]]) -> None:
    """Every agent status is counted once, as a status, whatever it claims; those naming
    another's node are the refused claims, each with its dead letter."""
    devices = {d.node: d for d in CITY}
    owners = {d.node: f"pi-{i % 2 + 1}" for i, d in enumerate(list(CITY)[:6])}
    r = Router(CITY, clock=ManualClock(TS / 1000), owners=owners)
    refused = 0
    for agent, nodes in statuses:
        body = {
            "v": 1,
            "agent": agent,
            "state": "online",
            "ts_ms": TS,
            "nodes": [{"node": n, "kind": devices[n].kind.value} for n in nodes],
        }
        route = r.route(f"city/agent/{agent}/status", json.dumps(body).encode())
        foreign = [n for n in nodes if owners[n] != agent]
        assert (route.refused is not None) == bool(foreign)
        assert len(route.presence) == len(nodes) - len(foreign)
        refused += bool(foreign)
    s = r.stats()
    assert s.received == s.forwarded + s.duplicates + s.statuses + s.events + s.dead_letters
    assert (s.statuses, s.dead_letters, s.refused_claims) == (len(statuses), 0, refused)
