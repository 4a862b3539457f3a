"""Presence: offline at once, silent after the timeout, one alert per node, state as bytes."""

from __future__ import annotations

from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.book import AlertBook
from cityvitals.contract import Warning, decode_warning, encode, fingerprint
from cityvitals.kinds import Kind
from cityvitals.levels import Level
from stream.presence import (
    Presence,
    PresencePolicy,
    PresenceTracker,
    decode_presence,
    encode_presence,
)
from tests.factories import PLACE

T0 = 1_764_028_800_000
NODE = "wl-0003"
MIN = 60_000
TIMEOUT = 15 * MIN  # the default silent_after_s, 900 s


def reading(tracker: PresenceTracker, p: Presence, at_ms: int, seq: int = 1) -> Warning | None:
    return tracker.heard(
        p, node=NODE, kind=Kind.WATER_LEVEL, placement=PLACE, received_ms=at_ms, seq=seq
    )


def status(
    tracker: PresenceTracker,
    p: Presence,
    state: Literal["online", "offline"],
    at_ms: int,
    *,
    ts_ms: int | None = None,
    agent: str | None = "pi-harbour-3",
) -> Warning | None:
    return tracker.status(
        p,
        node=NODE,
        kind=Kind.WATER_LEVEL,
        placement=PLACE,
        state=state,
        received_ms=at_ms,
        ts_ms=at_ms if ts_ms is None else ts_ms,
        agent=agent,
    )


def sweep(tracker: PresenceTracker, p: Presence, now_ms: int) -> Warning | None:
    return tracker.sweep(p, node=NODE, now_ms=now_ms)


def test_silence_is_warned_exactly_at_the_timeout():
    """No reading for silent_after_s, to the millisecond, and the node is silent; a
    millisecond earlier it is not. The warning says what an operator needs."""
    tracker, p = PresenceTracker(), Presence()
    reading(tracker, p, T0, seq=41)
    assert sweep(tracker, p, T0 + TIMEOUT - 1) is None
    assert p.state == "online"
    w = sweep(tracker, p, T0 + TIMEOUT)
    assert w is not None
    assert (w.rule, w.level, w.previous, w.metric, w.unit) == (
        "presence.silent",
        Level.YELLOW,
        Level.NONE,
        "silence_s",
        "s",
    )
    assert (w.value, w.threshold, w.ts_ms, w.seq, w.node) == (900.0, 900.0, T0 + TIMEOUT, 41, NODE)
    assert w.fingerprint == fingerprint(rule="presence", node=NODE)
    assert (w.kind, w.placement) == (Kind.WATER_LEVEL, PLACE)
    assert [(e.ts_ms, e.value) for e in w.evidence] == [(T0, 0.0), (T0 + TIMEOUT, 900.0)]
    assert p.state == "silent"
    assert decode_warning(encode(w)) == w


def test_repeated_sweeps_raise_the_warning_once():
    """A silent node stays one warning however often the timer fires."""
    tracker, p = PresenceTracker(), Presence()
    reading(tracker, p, T0)
    warnings = [sweep(tracker, p, T0 + TIMEOUT + i * MIN) for i in range(10)]
    assert sum(w is not None for w in warnings) == 1


def test_a_reading_after_silence_clears_with_the_length_of_the_silence():
    """The first reading after a silence clears the warning (level NONE, previous the
    raised level, same fingerprint) and reports how long the node was silent."""
    tracker, p = PresenceTracker(), Presence()
    reading(tracker, p, T0)
    raised = sweep(tracker, p, T0 + TIMEOUT)
    cleared = reading(tracker, p, T0 + 47 * MIN, seq=2)
    assert raised is not None
    assert cleared is not None
    assert cleared.cleared
    assert (cleared.previous, cleared.rule, cleared.value) == (
        Level.YELLOW,
        "presence.silent",
        2820.0,
    )
    assert (cleared.ts_ms, cleared.seq) == (T0 + 47 * MIN, 2)
    assert cleared.fingerprint == raised.fingerprint
    assert p.state == "online"
    assert p.warned is Level.NONE


def test_offline_warns_at_once_without_waiting_for_the_timeout():
    """A last will (or a clean stop) raises the presence warning when it arrives."""
    tracker, p = PresenceTracker(), Presence()
    reading(tracker, p, T0, seq=7)
    w = status(tracker, p, "offline", T0 + 2 * MIN)
    assert w is not None
    assert (w.rule, w.level, w.threshold, w.value, w.ts_ms, w.seq) == (
        "presence.offline",
        Level.YELLOW,
        None,
        120.0,
        T0 + 2 * MIN,
        7,
    )
    assert p.state == "offline"
    assert status(tracker, p, "offline", T0 + 3 * MIN) is None
    assert sweep(tracker, p, T0 + 10 * TIMEOUT) is None


def test_a_last_will_warns_although_its_timestamp_is_the_connect_time():
    """MQTT fixes a will's payload when the connection opens, so its ts_ms is older than
    every reading and heartbeat the connection then sent. It must still count."""
    tracker, p = PresenceTracker(), Presence()
    connect_ms = T0
    status(tracker, p, "online", T0 + 1)  # birth
    for i in range(1, 5):
        reading(tracker, p, T0 + i * MIN, seq=i)
        status(tracker, p, "online", T0 + i * MIN + 1)  # heartbeat
    w = status(tracker, p, "offline", T0 + 6 * MIN, ts_ms=connect_ms)
    assert w is not None
    assert w.rule == "presence.offline"


def test_a_birth_after_offline_clears_and_restarts_the_silence_clock():
    """The agent's birth brings its node back at once; the sensor then has the whole
    timeout to send its first reading."""
    tracker, p = PresenceTracker(), Presence()
    reading(tracker, p, T0)
    status(tracker, p, "offline", T0 + MIN, ts_ms=T0 - MIN)
    back = status(tracker, p, "online", T0 + 3 * TIMEOUT)
    assert back is not None
    assert back.cleared
    assert (back.rule, back.previous, back.value) == ("presence.offline", Level.YELLOW, 2700.0)
    assert sweep(tracker, p, T0 + 4 * TIMEOUT - 1) is None
    assert sweep(tracker, p, T0 + 4 * TIMEOUT) is not None


def test_a_late_will_from_before_the_node_came_back_is_ignored():
    """A will the gateway received before a later sign of life, but handled after it
    (statuses and readings travel apart), is stale: no warning."""
    tracker, p = PresenceTracker(), Presence()
    reading(tracker, p, T0)
    status(tracker, p, "online", T0 + 5 * MIN)  # a newer connection's birth
    assert status(tracker, p, "offline", T0 + 4 * MIN, ts_ms=T0 - MIN) is None
    assert p.state == "online"


def test_a_retained_will_of_an_agent_that_no_longer_serves_the_node_is_ignored():
    """A node moved to another agent: the old agent's retained will, replayed when the
    gateway resubscribes, is not news about the node."""
    tracker, p = PresenceTracker(), Presence()
    status(tracker, p, "online", T0, agent="pi-old")
    status(tracker, p, "online", T0 + MIN, agent="pi-new")
    reading(tracker, p, T0 + 2 * MIN)
    assert status(tracker, p, "offline", T0 + 3 * MIN, ts_ms=T0 - MIN, agent="pi-old") is None
    assert p.state == "online"
    assert status(tracker, p, "offline", T0 + 4 * MIN, agent="pi-new") is not None


def test_a_replayed_retained_online_does_not_bring_an_offline_node_back():
    """While an agent is down the broker still holds its nodes' last retained "online"
    heartbeats; replayed on a gateway reconnect they must not clear the warning."""
    tracker, p = PresenceTracker(), Presence()
    reading(tracker, p, T0)
    status(tracker, p, "online", T0 + MIN)  # heartbeat, retained at the broker
    status(tracker, p, "offline", T0 + 2 * MIN, ts_ms=T0 - MIN)
    assert status(tracker, p, "online", T0 + 9 * MIN, ts_ms=T0 + MIN) is None  # the replay
    assert p.state == "offline"
    assert p.warned is Level.YELLOW


def test_a_reading_received_before_the_offline_does_not_bring_the_node_back():
    """Readings and statuses travel on different topics: a reading the gateway received
    before the will, handled after it, says nothing about now."""
    tracker, p = PresenceTracker(), Presence()
    reading(tracker, p, T0, seq=1)
    status(tracker, p, "offline", T0 + 2 * MIN)
    assert reading(tracker, p, T0 + MIN, seq=2) is None
    assert p.state == "offline"
    assert reading(tracker, p, T0 + 3 * MIN, seq=3) is not None
    assert p.state == "online"


def test_heartbeats_do_not_hide_a_dead_sensor_behind_a_live_agent():
    """The agent heartbeats "online" for every node it serves; only readings prove
    the sensor works, so a node with heartbeats and no readings still falls silent."""
    tracker, p = PresenceTracker(), Presence()
    reading(tracker, p, T0)
    for i in range(1, 15):
        status(tracker, p, "online", T0 + i * MIN)
    w = sweep(tracker, p, T0 + TIMEOUT)
    assert w is not None
    assert w.rule == "presence.silent"
    assert status(tracker, p, "online", T0 + TIMEOUT + MIN) is None
    assert p.state == "silent"


def test_silent_then_offline_is_one_alert_paged_once():
    """Offline after silent raises nothing new (same fingerprint); the alert book opens
    one alert for the node and resolves it when the node is back."""
    tracker, p, book = PresenceTracker(), Presence(), AlertBook()
    reading(tracker, p, T0)
    warnings = [
        sweep(tracker, p, T0 + TIMEOUT),
        status(tracker, p, "offline", T0 + TIMEOUT + MIN),
        status(tracker, p, "online", T0 + TIMEOUT + 5 * MIN),
    ]
    events = [n.event for w in warnings if w is not None if (n := book.apply(w)) is not None]
    assert warnings[1] is None
    assert events == ["firing", "resolved"]


def test_per_kind_override_of_the_timeout():
    """A kind that reports rarely gets its own timeout; other kinds keep the default."""
    policy = PresencePolicy(silent_after_s=600, silent_after_by_kind={Kind.WATER_LEVEL: 3600})
    tracker, p = PresenceTracker(policy), Presence()
    reading(tracker, p, T0)
    assert sweep(tracker, p, T0 + 3600_000 - 1) is None
    w = sweep(tracker, p, T0 + 3600_000)
    assert w is not None
    assert w.threshold == 3600.0
    other = Presence()
    tracker.heard(other, node="sm-1", kind=Kind.SMOKE, placement=PLACE, received_ms=T0, seq=0)
    assert tracker.sweep(other, node="sm-1", now_ms=T0 + 600_000) is not None


def test_a_node_never_heard_alive_is_never_warned_about():
    """Not deployed yet, or a retired agent's retained will: no reading, no birth, no
    warning, whatever the timer or the will says."""
    tracker, p = PresenceTracker(), Presence()
    assert sweep(tracker, p, T0 + 100 * TIMEOUT) is None
    assert status(tracker, p, "offline", T0) is None
    assert sweep(tracker, p, T0 + 100 * TIMEOUT) is None
    assert reading(tracker, p, T0 + MIN) is None  # first heard: online, nothing to clear
    assert p.state == "online"


def test_an_out_of_order_reading_does_not_move_the_silence_clock_back():
    """Buffered readings flushed after a reconnect may be received in any order;
    heard_ms only ever moves forward."""
    tracker, p = PresenceTracker(), Presence()
    reading(tracker, p, T0 + 10 * MIN, seq=10)
    assert reading(tracker, p, T0 + 5 * MIN, seq=5) is None
    assert (p.heard_ms, p.last_seq) == (T0 + 10 * MIN, 10)
    assert sweep(tracker, p, T0 + 5 * MIN + TIMEOUT) is None


def test_presence_survives_an_encode_decode_round_trip():
    """The bytes a table stores decode to the same presence; no bytes is a new node."""
    tracker, p = PresenceTracker(), Presence()
    reading(tracker, p, T0, seq=123_456)
    status(tracker, p, "online", T0 + 100)
    sweep(tracker, p, T0 + TIMEOUT)
    data = encode_presence(p)
    assert decode_presence(data) == p
    assert decode_presence(None) == Presence() == decode_presence(b"")
    # Measured: 18 bytes new; 75 bytes + the placement (108 bytes for a typical one,
    # 'Harbour' / 'Dockside Street' / 'HB-101' / 'Harbour Drainage Office') once heard.
    assert len(encode_presence(Presence())) == 18
    assert len(data) < 200


@pytest.mark.parametrize(
    "kwargs",
    [
        {"silent_after_s": 0},
        {"silent_after_s": -5},
        {"silent_after_s": float("nan")},
        {"silent_after_s": float("inf")},
        {"silent_after_by_kind": {"water_level": 0}},
        {"silent_after_by_kind": {"water-level": 600}},
        {"level": Level.NONE},
    ],
)
def test_policy_refuses_nonsense(kwargs):
    """Durations must be positive and finite, kinds known, the level a warning level."""
    with pytest.raises(ValueError, match=r"silent_after|level"):
        PresencePolicy(**kwargs)


def test_policy_keeps_its_own_copy_of_the_overrides():
    """Changing the dict after building the policy does not change the policy."""
    overrides = {"smoke": 60.0}
    policy = PresencePolicy(silent_after_by_kind=overrides)
    overrides["smoke"] = 1.0
    assert policy.silent_after_ms("smoke") == 60_000
    assert policy.silent_after_ms("crowd") == 900_000


# -- the property --------------------------------------------------------------

Op = tuple[str, int, int, int]

ops = st.lists(
    st.tuples(
        st.sampled_from(["reading", "online", "offline", "sweep"]),
        st.integers(0, 2 * TIMEOUT),  # how far "now" moves on
        st.integers(0, 3 * MIN),  # how late the message is handled (receive time < now)
        st.integers(-2, 2),  # status ts relative to now, in minutes; agent choice
    ),
    max_size=60,
)


def play(steps: list[Op], *, through_bytes: bool) -> list[Warning]:
    tracker = PresenceTracker()
    p, now, out = Presence(), T0, []
    for seq, (op, step, late, jitter) in enumerate(steps):
        now += step
        at = now - late
        agent = ("pi-a", "pi-b", None)[jitter % 3]
        if op == "reading":
            w = reading(tracker, p, at, seq=seq)
        elif op == "sweep":
            w = sweep(tracker, p, now)
        else:
            state: Literal["online", "offline"] = "online" if op == "online" else "offline"
            w = status(tracker, p, state, at, ts_ms=now + jitter * MIN, agent=agent)
        if w is not None:
            out.append(w)
        if through_bytes:
            p = decode_presence(encode_presence(p))
    return out


@settings(derandomize=True, max_examples=500, deadline=None)
@given(ops)
def test_warnings_alternate_raise_and_clear(steps):
    """Whatever arrives, late or replayed, in any order: a raise is followed by a clear
    before the next raise, a clear always follows a raise, and each names the level
    before it. Storing the presence as bytes between calls changes nothing."""
    warnings = play(steps, through_bytes=False)
    raised = Level.NONE
    for w in warnings:
        assert w.fingerprint == fingerprint(rule="presence", node=NODE)
        assert w.previous is raised
        if w.cleared:
            assert raised is not Level.NONE
        else:
            assert raised is Level.NONE
            assert w.level is Level.YELLOW
        raised = w.level
        assert w.value >= 0
    assert play(steps, through_bytes=True) == warnings
