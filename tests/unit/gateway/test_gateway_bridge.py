"""The gateway's message handling: every input is forwarded, counted or dead-lettered.

These drive `Gateway.handle` directly (no broker); the MQTT path is covered by
the integration tests.
"""

from __future__ import annotations

import json
import logging

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cityvitals.citygen import generate_city
from cityvitals.clock import ManualClock
from cityvitals.config import BrokerSettings
from cityvitals.contract import DeadLetter, Reason, decode_enriched
from cityvitals.kinds import Kind
from gateway.bridge import Gateway

CITY = generate_city(nodes=40, districts=3, seed=11)
WATER = CITY.by_kind(Kind.WATER_LEVEL)[0]
TS = 1_764_028_800_000


class Collected:
    def __init__(self) -> None:
        self.forwarded: list[tuple[bytes, bytes]] = []
        self.dead: list[DeadLetter] = []

    async def forward(self, key: bytes, value: bytes) -> None:
        self.forwarded.append((key, value))

    async def dead_letter(self, letter: DeadLetter) -> None:
        self.dead.append(letter)


def make_gateway(out: Collected) -> Gateway:
    return Gateway(
        BrokerSettings(),
        CITY,
        forward=out.forward,
        dead_letter=out.dead_letter,
        clock=ManualClock(TS / 1000),
    )


def reading(seq: int = 1, **override) -> bytes:
    body = {
        "v": 1,
        "node": WATER.node,
        "kind": "water_level",
        "seq": seq,
        "ts_ms": TS,
        "metrics": {"depth_cm": 3.5},
    }
    body.update(override)
    return json.dumps(body).encode()


TOPIC = f"city/water_level/{WATER.node}/telemetry"


async def test_valid_reading_is_forwarded_with_placement_and_original_bytes():
    """A valid reading goes on keyed by node, enriched from the registry, its bytes untouched."""
    out = Collected()
    gw = make_gateway(out)
    payload = reading()
    await gw.handle(TOPIC, payload)
    ((key, value),) = out.forwarded
    envelope, decoded = decode_enriched(value)
    assert key == WATER.node.encode()
    assert bytes(envelope.reading) == payload
    assert envelope.placement == WATER.placement
    assert envelope.received_ms == TS
    assert decoded.metrics == {"depth_cm": 3.5}


async def test_duplicates_are_dropped_and_counted():
    """The same (node, seq) twice is forwarded once and counted as a duplicate."""
    out = Collected()
    gw = make_gateway(out)
    await gw.handle(TOPIC, reading(5))
    await gw.handle(TOPIC, reading(5))
    assert len(out.forwarded) == 1
    assert gw.stats().duplicates == 1
    assert out.dead == []


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (TOPIC, b"{not json", Reason.MALFORMED),
        (TOPIC, reading(seq="seven"), Reason.SCHEMA),
        (TOPIC, reading(v=9), Reason.VERSION),
        (TOPIC, reading(kind="lava"), Reason.UNKNOWN_KIND),
        (TOPIC, reading(metrics={"depth_m": 1.0}), Reason.UNKNOWN_METRIC),
        (TOPIC, reading(metrics={"depth_cm": 5000.0}), Reason.OUT_OF_RANGE),
        (TOPIC, b"{" + b" " * 20_000 + b"}", Reason.OVERSIZED),
        ("city/water_level/wl-9999/telemetry", reading(node="wl-9999"), Reason.UNKNOWN_NODE),
        ("city/water_level/wl-other/telemetry", reading(), Reason.TOPIC_MISMATCH),
        (
            f"city/smoke/{WATER.node}/telemetry",
            reading(kind="smoke", metrics={"temperature_c": 20.0}),
            Reason.KIND_MISMATCH,
        ),
        ("city/water_level/telemetry", reading(), Reason.BAD_TOPIC),
        ("weather/rain", b"1", Reason.BAD_TOPIC),
    ],
)
async def test_bad_input_becomes_a_dead_letter_with_reason_and_raw_bytes(topic, payload, reason):
    """Each kind of bad input is dead-lettered with its reason, topic and raw payload."""
    out = Collected()
    gw = make_gateway(out)
    await gw.handle(topic, payload)
    assert out.forwarded == []
    (letter,) = out.dead
    assert letter.reason is reason
    assert letter.topic == topic
    assert letter.payload == payload[: len(letter.payload)]
    assert letter.payload_size == len(payload)
    assert letter.detail
    assert gw.stats().by_reason == {reason.value: 1}


async def test_status_and_event_messages_are_validated():
    """Valid status/event messages are counted; an empty retained status is a clear, not an error;
    a malformed status is dead-lettered."""
    out = Collected()
    gw = make_gateway(out)
    status = {"v": 1, "node": WATER.node, "kind": "water_level", "state": "online", "ts_ms": TS}
    event = {
        "v": 1,
        "node": WATER.node,
        "kind": "water_level",
        "ts_ms": TS,
        "event": "sensor_fault",
    }
    base = f"city/water_level/{WATER.node}"
    await gw.handle(f"{base}/status", json.dumps(status).encode())
    await gw.handle(f"{base}/status", b"")
    await gw.handle(f"{base}/event", json.dumps(event).encode())
    await gw.handle(f"{base}/status", b'{"v":1,"state":"sleepy"}')
    s = gw.stats()
    assert (s.statuses, s.events, s.dead_letters) == (2, 1, 1)
    assert out.dead[0].reason is Reason.SCHEMA


async def test_agent_status_is_validated_against_its_topic():
    """An agent's birth/will on city/agent/<agent>/status is accepted; one naming another
    agent than its topic is dead-lettered as a topic mismatch."""
    out = Collected()
    gw = make_gateway(out)
    will = {
        "v": 1,
        "agent": "pi-3",
        "state": "offline",
        "ts_ms": TS,
        "nodes": [{"node": WATER.node, "kind": "water_level"}],
        "reason": "connection lost",
    }
    await gw.handle("city/agent/pi-3/status", json.dumps(will).encode())
    await gw.handle("city/agent/pi-4/status", json.dumps(will).encode())
    s = gw.stats()
    assert (s.statuses, s.dead_letters) == (1, 1)
    assert out.dead[0].reason is Reason.TOPIC_MISMATCH


async def test_an_agents_health_is_handed_on_and_a_failing_sink_costs_only_that(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each agent status goes to `on_agent` with its receive time (its buffer depth for the
    device-health board); a sink that fails is logged once and the gateway goes on."""
    out, seen = Collected(), []

    async def on_agent(status, received_ms: int) -> None:
        seen.append((status.agent, status.buffer_depth, received_ms))
        if len(seen) > 1:
            raise OSError("disk full")

    gw = Gateway(
        BrokerSettings(), CITY, forward=out.forward, dead_letter=out.dead_letter,
        clock=ManualClock(TS / 1000 + 2), on_agent=on_agent,
    )  # fmt: skip
    beat = {"v": 1, "agent": "pi-3", "state": "online", "ts_ms": TS, "buffer_depth": 12,
            "nodes": [{"node": WATER.node, "kind": "water_level"}]}  # fmt: skip
    with caplog.at_level(logging.ERROR, logger="gateway.health"):
        for _ in range(3):
            await gw.handle("city/agent/pi-3/status", json.dumps(beat).encode())
        await gw.handle(f"city/water_level/{WATER.node}/telemetry", reading())
    assert seen == [("pi-3", 12, TS + 2000)] * 3
    assert len(out.forwarded) == 1  # the readings go on
    assert [r.getMessage() for r in caplog.records] == [
        "gateway: the agent health sink failed; agents' figures are lost"
    ]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
topics = st.sampled_from(
    [
        TOPIC,
        f"city/water_level/{WATER.node}/status",
        f"city/water_level/{WATER.node}/event",
        "city/x",
        "city/a/b/c",
    ]
) | st.text(max_size=40)
payloads = (
    st.binary(max_size=300)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.builds(
        lambda seq, depth, extra: reading(seq=seq, metrics={"depth_cm": depth}, **extra),
        st.integers(-5, 2**64),
        st.floats(allow_nan=False),
        st.dictionaries(
            st.sampled_from(["v", "kind", "ts_ms", "node", "junk"]), json_values, max_size=2
        ),
    )
)


@settings(
    derandomize=True,
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(st.tuples(topics, payloads), min_size=1, max_size=20))
async def test_garbage_never_stops_the_gateway_and_every_message_is_accounted_for(messages):
    """Whatever arrives, handle() returns, and each message is forwarded, a duplicate,
    a status, an event or a dead letter: the counts add up to what was received."""
    out = Collected()
    gw = make_gateway(out)
    for topic, payload in messages:
        await gw.handle(topic, payload)
    s = gw.stats()
    assert s.received == len(messages)
    assert s.forwarded + s.duplicates + s.statuses + s.events + s.dead_letters == s.received
    assert len(out.dead) == s.dead_letters
    assert len(out.forwarded) == s.forwarded
    for letter in out.dead:
        assert isinstance(letter.reason, Reason)
        msgspec.json.encode(letter)  # every dead letter is itself storable


async def test_a_failing_stream_dead_letters_the_reading_instead_of_losing_it():
    """If forwarding raises (our bug or a broken stream), the valid reading is kept as an
    internal_error dead letter with its bytes, and the gateway goes on."""
    out = Collected()

    async def broken_forward(key: bytes, value: bytes) -> None:
        raise RuntimeError("stream is down")

    gw = Gateway(
        BrokerSettings(),
        CITY,
        forward=broken_forward,
        dead_letter=out.dead_letter,
        clock=ManualClock(TS / 1000),
    )
    payload = reading(7)
    await gw.handle(TOPIC, payload)
    (letter,) = out.dead
    assert letter.reason is Reason.INTERNAL
    assert letter.payload == payload
    assert "stream is down" in letter.detail
    assert gw.stats().by_reason == {"internal_error": 1}


async def test_when_every_sink_fails_the_loss_is_counted_and_handle_still_returns():
    """With both the stream and the dead-letter sink failing, nothing can keep the message:
    handle() still returns and the loss shows in the stats instead of vanishing."""

    async def broken(*_: object) -> None:
        raise OSError("disk full")

    gw = Gateway(
        BrokerSettings(), CITY, forward=broken, dead_letter=broken, clock=ManualClock(TS / 1000)
    )
    await gw.handle(TOPIC, reading(1))
    await gw.handle(TOPIC, b"{garbage")
    s = gw.stats()
    assert (s.received, s.forwarded, s.dead_letters, s.lost) == (2, 0, 0, 2)
