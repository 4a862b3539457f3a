"""The message contract: round trips, every refusal reason, and fuzzing of the decoders."""

from __future__ import annotations

import json
import math

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cityvitals.contract import (
    CONTRACT_VERSION,
    MAX_PAYLOAD_BYTES,
    MAX_TS_MS,
    MIN_TS_MS,
    DeadLetter,
    EdgeEvent,
    EnrichedReading,
    Evidence,
    NodeStatus,
    Placement,
    Reading,
    Reason,
    Warning,
    decode_enriched,
    decode_event,
    decode_reading,
    decode_status,
    decode_warning,
    encode,
    fingerprint,
    validate_reading,
)
from cityvitals.errors import CityvitalsError, ContractError
from cityvitals.kinds import BATTERY, KIND_METRICS, RSSI, Kind
from cityvitals.levels import Level

TS = 1_764_028_800_000
PLACE = Placement(
    district="Harbour",
    street="Dockside Street",
    grid="HB-101",
    unit="Harbour Drainage Office",
    lat=31.2304,
    lon=121.4737,
)
FUZZ = settings(
    derandomize=True,
    database=None,
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def reading_doc(**overrides: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "v": 1,
        "node": "wl-0001",
        "kind": "water_level",
        "seq": 7,
        "ts_ms": TS,
        "metrics": {"depth_cm": 12.5},
    }
    doc.update(overrides)
    return doc


def raw(doc: object) -> bytes:
    return json.dumps(doc).encode()


def refusal(data: bytes) -> ContractError:
    with pytest.raises(ContractError) as info:
        decode_reading(data)
    return info.value


# -- round trips -------------------------------------------------------------


def test_reading_round_trips_with_and_without_optional_fields():
    """A Reading survives encode → decode_reading unchanged, defaults omitted on the wire."""
    bare = Reading(
        v=1, node="wl-0001", kind=Kind.WATER_LEVEL, seq=0, ts_ms=TS, metrics={"depth_cm": 0.0}
    )
    full = Reading(
        v=1,
        node="mh_7",
        kind=Kind.MANHOLE,
        seq=2**63 - 1,
        ts_ms=MAX_TS_MS,
        metrics={"cover_tilt_deg": 12.0, "cover_open": 1.0, "gas_lel_pct": 3.5},
        battery_pct=88.5,
        rssi_dbm=-97.0,
    )
    for reading in (bare, full):
        assert decode_reading(encode(reading)) == reading
    assert b"battery_pct" not in encode(bare)
    assert b"rssi_dbm" not in encode(bare)


def test_node_status_round_trips():
    """A NodeStatus (birth, will or heartbeat) survives encode → decode_status unchanged."""
    online = NodeStatus(
        v=1,
        node="sm-0003",
        kind=Kind.SMOKE,
        state="online",
        ts_ms=TS,
        agent="edge/0.1.0",
        uptime_s=12.5,
        battery_pct=99.0,
        rssi_dbm=-60.0,
        buffer_depth=3,
    )
    offline = NodeStatus(
        v=1, node="sm-0003", kind=Kind.SMOKE, state="offline", ts_ms=TS, reason="last will"
    )
    for status in (online, offline):
        assert decode_status(encode(status)) == status


def test_edge_event_round_trips_and_level_defaults_to_none():
    """An EdgeEvent survives encode → decode_event; an omitted level decodes as Level.NONE."""
    event = EdgeEvent(
        v=1,
        node="mh-0001",
        kind=Kind.MANHOLE,
        ts_ms=TS,
        event="cover_open",
        level=Level.RED,
        count=2,
        detail="lifted",
    )
    assert decode_event(encode(event)) == event
    minimal = decode_event(
        b'{"v":1,"node":"mh-0001","kind":"manhole","ts_ms":%d,"event":"alarm"}' % TS
    )
    assert minimal.level is Level.NONE
    assert minimal.count is None


def test_enriched_reading_round_trips_and_keeps_the_exact_inner_bytes():
    """decode_enriched gives the envelope and the inner reading; the inner bytes are untouched."""
    reading = Reading(
        v=1,
        node="cr-0002",
        kind=Kind.CROWD,
        seq=5,
        ts_ms=TS,
        metrics={"count": 1200.0, "density_m2": 2.5},
    )
    inner = (
        b'{"v":1, "node":"cr-0002","kind":"crowd","seq":5,"ts_ms":%d,'
        b'"metrics":{"count":1200.0,"density_m2":2.5}}' % TS
    )
    envelope = EnrichedReading(
        v=1, reading=msgspec.Raw(inner), placement=PLACE, received_ms=TS + 40
    )
    decoded, decoded_reading = decode_enriched(encode(envelope))
    assert bytes(decoded.reading) == inner  # the odd space survives: no re-encoding
    assert decoded.placement == PLACE
    assert decoded.received_ms == TS + 40
    assert decoded_reading == reading


def test_warning_round_trips_with_evidence():
    """A Warning (with evidence and a predicted crossing) survives encode → decode_warning."""
    warning = Warning(
        v=1,
        fingerprint=fingerprint(rule="water.depth", node="wl-0001"),
        rule="water.depth",
        node="wl-0001",
        kind=Kind.WATER_LEVEL,
        metric="depth_cm",
        level=Level.ORANGE,
        previous=Level.YELLOW,
        value=31.5,
        threshold=30.0,
        unit="cm",
        ts_ms=TS,
        seq=9,
        placement=PLACE,
        evidence=(Evidence(ts_ms=TS - 600_000, value=20.0), Evidence(ts_ms=TS, value=31.5)),
        predicted_crossing_ms=TS + 900_000,
    )
    decoded = decode_warning(encode(warning))
    assert decoded == warning
    assert decoded.evidence[1].value == 31.5
    assert not decoded.cleared


def test_warning_cleared_is_true_only_at_level_none():
    """Warning.cleared is the level falling back to NONE, and nothing else."""
    base = {
        "v": 1,
        "fingerprint": "f",
        "rule": "r",
        "node": "wl-1",
        "kind": Kind.WATER_LEVEL,
        "metric": "depth_cm",
        "previous": Level.BLUE,
        "value": 1.0,
        "threshold": None,
        "unit": "cm",
        "ts_ms": TS,
        "seq": 1,
        "placement": PLACE,
    }
    assert Warning(level=Level.NONE, **base).cleared
    assert not Warning(level=Level.BLUE, **base).cleared


def test_dead_letter_and_placement_round_trip():
    """DeadLetter (binary payload included) and Placement survive a JSON round trip."""
    letter = DeadLetter(
        v=1,
        received_ms=TS,
        source="mqtt",
        topic="city/x/y/telemetry",
        reason=Reason.MALFORMED,
        detail="truncated",
        payload=b"\x00\xff{",
        payload_size=3,
    )
    assert msgspec.json.decode(encode(letter), type=DeadLetter) == letter
    assert msgspec.json.decode(encode(PLACE), type=Placement) == PLACE


def test_decoded_structs_are_frozen():
    """Decoded messages are immutable: a consumer cannot alter what others will see."""
    reading = decode_reading(raw(reading_doc()))
    with pytest.raises(AttributeError):
        reading.seq = 8  # type: ignore[misc]


# -- every reason ------------------------------------------------------------


def test_contract_error_carries_reason_and_detail():
    """ContractError exposes .reason and .detail, is a CityvitalsError and says both in str()."""
    exc = refusal(raw(reading_doc(metrics={"depth_cm": -4.0})))
    assert isinstance(exc, CityvitalsError)
    assert exc.reason == Reason.OUT_OF_RANGE
    assert exc.detail == "depth_cm=-4.0 is outside 0.0..1000.0 cm for water_level"
    assert str(exc) == f"out_of_range: {exc.detail}"


def test_oversized_payload_is_refused_before_parsing():
    """A payload over the limit is refused as oversized, even if it is not JSON at all."""
    exc = refusal(b"x" * (MAX_PAYLOAD_BYTES + 1))
    assert exc.reason == Reason.OVERSIZED
    assert str(MAX_PAYLOAD_BYTES) in exc.detail
    good = raw(reading_doc())
    with pytest.raises(ContractError) as info:
        decode_reading(good, limit=len(good) - 1)
    assert info.value.reason == Reason.OVERSIZED
    assert decode_reading(good, limit=len(good)).seq == 7  # the limit is inclusive


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"not json", b"\xff\xfe", b'{"v":1,}', raw(reading_doc())[:-1], b'{"v":NaN}'],
)
def test_malformed_json_is_refused(data):
    """Bytes that are not JSON (empty, truncated, binary, NaN literal) give malformed_json."""
    assert refusal(data).reason == Reason.MALFORMED


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ([], "object"),
        (reading_doc(extra=1), "unknown field `extra`"),
        (reading_doc(seq="7"), "$.seq"),
        (reading_doc(seq=-1), "$.seq"),
        (reading_doc(seq=2**63), "$.seq"),
        (reading_doc(ts_ms=float(TS)), "$.ts_ms"),
        (reading_doc(ts_ms=MIN_TS_MS - 1), "$.ts_ms"),
        (reading_doc(ts_ms=MAX_TS_MS + 1), "$.ts_ms"),
        (reading_doc(metrics={}), "$.metrics"),
        (reading_doc(metrics={"depth_cm": "12"}), "$.metrics"),
        (reading_doc(metrics=[12.5]), "$.metrics"),
        (reading_doc(metrics={"m" * 65: 1.0}), "$.metrics"),
        (reading_doc(metrics={f"m{i}": 1.0 for i in range(17)}), "$.metrics"),
        (reading_doc(battery_pct="full"), "$.battery_pct"),
        ({k: v for k, v in reading_doc().items() if k != "seq"}, "`seq`"),
        ({k: v for k, v in reading_doc().items() if k != "v"}, "`v`"),
    ],
)
def test_schema_violations_are_refused_as_schema(doc, where):
    """Wrong types, unknown or missing fields, and out-of-bounds ints give reason schema."""
    exc = refusal(raw(doc))
    assert exc.reason == Reason.SCHEMA
    assert where in exc.detail


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_other_contract_versions_are_refused_as_unsupported(version):
    """A message whose v is not the one we speak gives unsupported_version, naming our version."""
    exc = refusal(raw(reading_doc(v=version)))
    assert exc.reason == Reason.VERSION
    assert f"speaks v{CONTRACT_VERSION}" in exc.detail


@pytest.mark.parametrize("kind", ["lamp", "WATER_LEVEL", ""])
def test_unknown_kind_is_refused(kind):
    """A kind outside the four we know gives unknown_kind, not a generic schema error."""
    assert refusal(raw(reading_doc(kind=kind))).reason == Reason.UNKNOWN_KIND


def test_metric_of_another_kind_is_refused_as_unknown_metric():
    """A metric that exists but belongs to another kind gives unknown_metric, listing valid ones."""
    exc = refusal(raw(reading_doc(metrics={"depth_cm": 1.0, "gas_lel_pct": 5.0})))
    assert exc.reason == Reason.UNKNOWN_METRIC
    assert "'gas_lel_pct'" in exc.detail
    assert "['depth_cm']" in exc.detail


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"metrics": {"depth_cm": 1000.0001}}, "depth_cm"),
        ({"kind": "smoke", "metrics": {"temperature_c": -40.5}}, "temperature_c"),
        ({"kind": "crowd", "metrics": {"count": 10.0, "density_m2": 10.5}}, "density_m2"),
        ({"battery_pct": -0.1}, "battery_pct"),
        ({"battery_pct": 100.5}, "battery_pct"),
        ({"rssi_dbm": 0.5}, "rssi_dbm"),
        ({"rssi_dbm": -151.0}, "rssi_dbm"),
    ],
)
def test_physically_impossible_values_are_out_of_range(overrides, name):
    """Metric, battery and RSSI values outside their physical range give out_of_range."""
    exc = refusal(raw(reading_doc(**overrides)))
    assert exc.reason == Reason.OUT_OF_RANGE
    assert exc.detail.startswith(f"{name}=")


def test_range_bounds_are_inclusive():
    """Values exactly on the physical bounds (metrics, battery, RSSI) are accepted."""
    for kind, specs in KIND_METRICS.items():
        for spec in specs.values():
            for value in (spec.low, spec.high):
                doc = reading_doc(
                    kind=kind.value,
                    metrics={spec.name: value},
                    battery_pct=BATTERY.low,
                    rssi_dbm=RSSI.high,
                )
                assert decode_reading(raw(doc)).metrics[spec.name] == value
    edge = reading_doc(battery_pct=BATTERY.high, rssi_dbm=RSSI.low)
    assert decode_reading(raw(edge)).rssi_dbm == RSSI.low


def test_overflowing_number_never_decodes_to_infinity():
    """A number beyond double range (1e400, -1e400) is refused at decode, never passed as inf."""
    for text in (b"1e400", b"-1e400"):
        data = raw(reading_doc(metrics={"depth_cm": 0.0})).replace(b"0.0", text)
        exc = refusal(data)
        assert exc.reason == Reason.SCHEMA
        assert "out of range" in exc.detail.lower()


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_validate_reading_refuses_nan_and_inf(value):
    """validate_reading treats NaN and ±inf (metric, battery or RSSI) as out_of_range."""
    ok = Reading(
        v=1, node="wl-1", kind=Kind.WATER_LEVEL, seq=1, ts_ms=TS, metrics={"depth_cm": 1.0}
    )
    assert validate_reading(ok) is ok
    for bad in (
        msgspec.structs.replace(ok, metrics={"depth_cm": value}),
        msgspec.structs.replace(ok, battery_pct=value),
        msgspec.structs.replace(ok, rssi_dbm=value),
    ):
        with pytest.raises(ContractError) as info:
            validate_reading(bad)
        assert info.value.reason == Reason.OUT_OF_RANGE


@pytest.mark.parametrize("node", ["a", "0", "wl-0001", "a_b-c", "z" * 64])
def test_valid_node_ids_are_accepted(node):
    """Node ids of 1-64 chars from a-z, 0-9, '-', '_' starting alphanumeric decode."""
    assert decode_reading(raw(reading_doc(node=node))).node == node


@pytest.mark.parametrize(
    "node", ["", "-wl", "_wl", "WL-1", "wl 1", "wl/1", "wl.1", "wl+1", "z" * 65, "wl-é", "wl-1\nx"]
)
def test_invalid_node_ids_are_refused_as_schema(node):
    """Node ids breaking the pattern (case, punctuation, length, topic chars) give schema."""
    exc = refusal(raw(reading_doc(node=node)))
    assert exc.reason == Reason.SCHEMA
    assert "$.node" in exc.detail


@pytest.mark.parametrize("decode", [decode_reading, decode_status, decode_event])
def test_node_id_with_trailing_newline_is_refused(decode):
    """A node id with a trailing newline is not a valid node id and must be refused."""
    doc = reading_doc(node="wl-0001\n")
    if decode is not decode_reading:
        doc = {
            "v": 1,
            "node": "wl-0001\n",
            "kind": "water_level",
            "ts_ms": TS,
            **({"state": "online"} if decode is decode_status else {"event": "alarm"}),
        }
    with pytest.raises(ContractError):
        decode(raw(doc))


def test_event_name_with_trailing_newline_is_refused():
    """An event name with a trailing newline breaks the event pattern and must be refused."""
    doc = {"v": 1, "node": "mh-1", "kind": "manhole", "ts_ms": TS, "event": "alarm\n"}
    with pytest.raises(ContractError):
        decode_event(raw(doc))


def test_status_and_event_decoders_are_strict_too():
    """decode_status and decode_event refuse unknown states, bad event names and extra fields."""
    status = {"v": 1, "node": "sm-1", "kind": "smoke", "state": "online", "ts_ms": TS}
    assert decode_status(raw(status)).state == "online"
    for bad, reason in (
        ({"state": "sleeping"}, Reason.SCHEMA),
        ({"x": 1}, Reason.SCHEMA),
        ({"v": 3}, Reason.VERSION),
        ({"kind": "lamp"}, Reason.UNKNOWN_KIND),
    ):
        with pytest.raises(ContractError) as info:
            decode_status(raw({**status, **bad}))
        assert info.value.reason == reason
    event = {"v": 1, "node": "mh-1", "kind": "manhole", "ts_ms": TS, "event": "cover_open"}
    assert decode_event(raw(event)).event == "cover_open"
    for bad in ({"event": "Cover"}, {"event": "1st"}, {"level": 9}, {"detail": "x" * 1025}):
        with pytest.raises(ContractError) as info:
            decode_event(raw({**event, **bad}))
        assert info.value.reason == Reason.SCHEMA
    with pytest.raises(ContractError) as info:
        decode_event(b"y" * (MAX_PAYLOAD_BYTES + 1))
    assert info.value.reason == Reason.OVERSIZED


# -- fingerprint -------------------------------------------------------------


def test_fingerprint_is_order_independent_and_stable():
    """The same labels in any order give the same 16-hex-digit fingerprint."""
    a = fingerprint(rule="water.depth", node="wl-1", metric="depth_cm")
    b = fingerprint(metric="depth_cm", node="wl-1", rule="water.depth")
    assert a == b
    assert len(a) == 16
    int(a, 16)


def test_fingerprint_differs_for_different_labels():
    """Changing a value, a key, or adding a label changes the fingerprint."""
    base = fingerprint(rule="water.depth", node="wl-1")
    others = {
        fingerprint(rule="water.depth", node="wl-2"),
        fingerprint(rule="water.rise", node="wl-1"),
        fingerprint(rule="water.depth", host="wl-1"),
        fingerprint(rule="water.depth", node="wl-1", metric="depth_cm"),
        fingerprint(rule="water.depth"),
    }
    assert base not in others
    assert len(others) == 5


@FUZZ
@given(
    st.dictionaries(
        st.from_regex(r"[a-z]{1,8}", fullmatch=True),
        st.from_regex(r"[a-z0-9_.-]{0,12}", fullmatch=True),
        max_size=4,
    ),
    st.dictionaries(
        st.from_regex(r"[a-z]{1,8}", fullmatch=True),
        st.from_regex(r"[a-z0-9_.-]{0,12}", fullmatch=True),
        max_size=4,
    ),
)
def test_fingerprint_equal_exactly_when_labels_equal(a, b):
    """For ordinary label keys and values, fingerprints match if and only if the label sets do."""
    assert (fingerprint(**a) == fingerprint(**b)) == (a == b)


def test_fingerprint_cannot_be_forged_by_separator_characters():
    """Label sets that differ must not collide even if a value contains the separators."""
    assert fingerprint(a="x\x1fb=y") != fingerprint(a="x", b="y")


# -- fuzzing -----------------------------------------------------------------

DECODERS = [decode_reading, decode_status, decode_event]
MESSAGE_TYPES = (Reading, NodeStatus, EdgeEvent)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
FIELD_NAMES = sorted(
    set(Reading.__struct_fields__)
    | set(NodeStatus.__struct_fields__)
    | set(EdgeEvent.__struct_fields__)
)
# Objects keyed by real field names get past the first schema check and reach
# the deeper paths (types, patterns, ranges), which pure noise rarely does.
plausible = st.dictionaries(
    st.sampled_from(FIELD_NAMES),
    json_values
    | st.sampled_from(
        [1, "wl-0001", "water_level", "online", "alarm", TS, {"depth_cm": 5.0}, {"count": 1e300}]
    ),
    max_size=len(FIELD_NAMES),
)


def assert_struct_or_contract_error(decode, data: bytes) -> None:
    try:
        result = decode(data)
    except ContractError as exc:
        error: ContractError | None = exc
    else:
        error = None
    if error is not None:
        assert error.reason in set(Reason)
        return
    assert isinstance(result, MESSAGE_TYPES)
    if isinstance(result, Reading):
        assert validate_reading(result) is result


@FUZZ
@given(st.sampled_from(DECODERS), st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_contract_error(decode, data):
    """Any bytes give a valid struct or a ContractError, never another exception."""
    assert_struct_or_contract_error(decode, data)


@FUZZ
@given(st.sampled_from(DECODERS), json_values | plausible)
def test_arbitrary_json_decodes_or_raises_contract_error(decode, value):
    """Any JSON document (incl. NaN/Infinity literals) gives a struct or a ContractError."""
    assert_struct_or_contract_error(decode, json.dumps(value).encode())


node_ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,63}", fullmatch=True)


@st.composite
def valid_readings(draw: st.DrawFn) -> Reading:
    kind = draw(st.sampled_from(list(Kind)))
    specs = KIND_METRICS[kind]
    names = draw(st.lists(st.sampled_from(sorted(specs)), min_size=1, unique=True))
    metrics = {n: draw(st.floats(specs[n].low, specs[n].high, allow_nan=False)) for n in names}

    def optional(spec):
        return st.none() | st.floats(spec.low, spec.high, allow_nan=False)

    return Reading(
        v=1,
        node=draw(node_ids),
        kind=kind,
        seq=draw(st.integers(0, 2**63 - 1)),
        ts_ms=draw(st.integers(MIN_TS_MS, MAX_TS_MS)),
        metrics=metrics,
        battery_pct=draw(optional(BATTERY)),
        rssi_dbm=draw(optional(RSSI)),
    )


@FUZZ
@given(valid_readings())
def test_generated_valid_readings_round_trip(reading):
    """Every reading within the contract's ranges encodes and decodes back equal."""
    decoded = decode_reading(encode(reading))
    assert decoded == reading
    assert decoded.metrics == reading.metrics
