"""The InfluxDB schema as line protocol: exact points for readings, warnings and scores, and
escaping that survives any tag value or string (checked against a decoder that follows
InfluxDB 2's parser, models/points.go)."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.metrics import Observation
from cityvitals.contract import Placement, Reading, Warning
from cityvitals.kinds import Kind
from cityvitals.levels import Level
from stream.sinks.points import (
    escape_tag,
    field_value,
    line,
    reading_line,
    response_line,
    score_line,
    string_field,
    warning_line,
)

TS = 1_764_028_800_000
PLACE = Placement(
    district="Old Town",
    street="Harbour Road, east",
    grid="G=12",
    unit="Drainage 3",
    lat=31.25,
    lon=121.5,
)


# -- a decoder that follows InfluxDB's parser ------------------------------------------


def _split(text: str, sep: str) -> list[str]:
    """Split at `sep` where the character before it is not a backslash (InfluxDB's rule)."""
    parts, start = [], 0
    for i, c in enumerate(text):
        if c == sep and (i == 0 or text[i - 1] != "\\"):
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _unescape_tag(text: str) -> str:
    # models.unescapeTag: one bytes.Replace per escape code, in this order.
    for code in (",", " ", "="):
        text = text.replace("\\" + code, code)
    return text


def _split_fields(text: str) -> list[str]:
    """Fields split at commas outside quotes; a backslash escapes a quote or a backslash."""
    parts, start, quoted, i = [], 0, False, 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in '"\\':
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == "," and not quoted:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def _field(text: str) -> object:
    if text.startswith('"'):
        assert len(text) >= 2, text
        assert text.endswith('"'), text
        return re.sub(r'\\(["\\])', r"\1", text[1:-1])
    if text.endswith("i"):
        return int(text[:-1])
    if text in ("true", "false"):
        return text == "true"
    return float(text)


def decode(point: str) -> tuple[str, dict[str, str], dict[str, object], int]:
    """(measurement, tags, fields, timestamp) of one line, as InfluxDB would read it."""
    key_end = next(i for i, c in enumerate(point) if c == " " and (i == 0 or point[i - 1] != "\\"))
    key, rest = point[:key_end], point[key_end + 1 :]
    fields_text, _, ts = rest.rpartition(" ")
    measurement, *pairs = _split(key, ",")
    tags = {}
    for pair in pairs:
        name, value = _split(pair, "=")
        assert value, f"empty tag value in {point!r}"
        tags[_unescape_tag(name)] = _unescape_tag(value)
    fields = {}
    for pair in _split_fields(fields_text):
        name, _, value = pair.partition("=")
        fields[_unescape_tag(name)] = _field(value)
    return measurement, tags, fields, int(ts)


# -- the schema ---------------------------------------------------------------------


def reading(**kw: object) -> Reading:
    base: dict[str, object] = {
        "v": 1,
        "node": "wl-0001",
        "kind": Kind.WATER_LEVEL,
        "seq": 42,
        "ts_ms": TS,
        "metrics": {"depth_cm": 12.5},
    }
    base.update(kw)
    return Reading(**base)  # type: ignore[arg-type]


def warning(**kw: object) -> Warning:
    base: dict[str, object] = {
        "v": 1,
        "fingerprint": "a1b2c3",
        "rule": "flood_depth",
        "node": "wl-0001",
        "kind": Kind.WATER_LEVEL,
        "metric": "depth_cm",
        "level": Level.ORANGE,
        "previous": Level.YELLOW,
        "value": 31.5,
        "threshold": 30.0,
        "unit": "cm",
        "ts_ms": TS + 5,
        "seq": 43,
        "placement": PLACE,
    }
    base.update(kw)
    return Warning(**base)  # type: ignore[arg-type]


PLACE_TAGS = {
    "district": "Old Town",
    "street": "Harbour Road, east",
    "grid": "G=12",
    "unit": "Drainage 3",
}


def test_a_reading_point():
    """`reading`: node, kind and placement as tags; each metric, lat, lon, battery and rssi as
    floats, seq and received_ms as integers; the time is the reading's ts_ms."""
    r = reading(metrics={"depth_cm": 12.5, "rate": 0.0}, battery_pct=88.0, rssi_dbm=-71.5)
    assert decode(reading_line(r, PLACE, TS + 900)) == (
        "reading",
        {"node": "wl-0001", "kind": "water_level", **PLACE_TAGS},
        {
            "depth_cm": 12.5,
            "rate": 0.0,
            "battery_pct": 88.0,
            "rssi_dbm": -71.5,
            "lat": 31.25,
            "lon": 121.5,
            "seq": 42,
            "received_ms": TS + 900,
        },
        TS,
    )
    bare = decode(reading_line(reading(), PLACE, TS))[2]
    assert "battery_pct" not in bare
    assert "rssi_dbm" not in bare


def test_the_exact_text_of_a_reading():
    """Tags sorted by key (InfluxDB's fast path); floats as Python writes them shortest."""
    assert reading_line(reading(seq=7, metrics={"count": 1e16}), PLACE, TS) == (
        r"reading,district=Old\ Town,grid=G\=12,kind=water_level,node=wl-0001,"
        r"street=Harbour\ Road\,\ east,unit=Drainage\ 3 "
        f"count=1e+16,lat=31.25,lon=121.5,seq=7i,received_ms={TS}i {TS}"
    )


def test_a_warning_point():
    """`warning`: rule, node, kind, metric, placement and the level's label as tags; level_n,
    previous_n and seq as integers, value, threshold and predicted_crossing_ms, fingerprint as
    a string; the time is the warning's."""
    w = warning(predicted_crossing_ms=TS + 60_000)
    assert decode(warning_line(w)) == (
        "warning",
        {
            "rule": "flood_depth",
            "node": "wl-0001",
            "kind": "water_level",
            "metric": "depth_cm",
            "level": "orange",
            **PLACE_TAGS,
        },
        {
            "level_n": 3,
            "previous_n": 2,
            "value": 31.5,
            "threshold": 30.0,
            "predicted_crossing_ms": TS + 60_000,
            "fingerprint": "a1b2c3",
            "seq": 43,
        },
        TS + 5,
    )


def test_a_cleared_warning_without_threshold():
    """A cleared warning is level "none" (level_n 0); absent threshold and forecast are
    absent fields, not zeros."""
    _, tags, fields, _ = decode(
        warning_line(warning(level=Level.NONE, previous=Level.RED, threshold=None))
    )
    assert tags["level"] == "none"
    assert (fields["level_n"], fields["previous_n"]) == (0, 4)
    assert "threshold" not in fields
    assert "predicted_crossing_ms" not in fields


def test_a_score_point():
    """`score`: node, kind, metric and placement as tags; anomaly_score and the worst
    detector's name; the time is the reading's."""
    assert decode(score_line(reading(), PLACE, "depth_cm", 0.9975, "robust")) == (
        "score",
        {"node": "wl-0001", "kind": "water_level", "metric": "depth_cm", **PLACE_TAGS},
        {"anomaly_score": 0.9975, "worst": "robust"},
        TS,
    )


def test_a_response_point():
    """`response`: what (detect, acknowledge, resolve), rule, kind, peak level and placement
    as tags; the seconds it took and the alert's fingerprint; the time it happened."""
    o = Observation(
        what="acknowledge",
        fingerprint="3f2a",
        rule="water_level.depth",
        kind="water_level",
        level="red",
        seconds=120.5,
        at_ms=TS + 1,
        **PLACE_TAGS,
    )
    assert decode(response_line(o)) == (
        "response",
        {"what": "acknowledge", "rule": "water_level.depth", "kind": "water_level",
         "level": "red", **PLACE_TAGS},
        {"seconds": 120.5, "fingerprint": "3f2a"},
        TS + 1,
    )  # fmt: skip


def test_non_finite_floats_are_left_out():
    """Line protocol has no NaN or infinity: such a field is omitted, the point still goes."""
    for bad in (math.nan, math.inf, -math.inf):
        assert field_value(bad) is None
        _, _, fields, _ = decode(score_line(reading(), PLACE, "depth_cm", bad, "spike"))
        assert fields == {"worst": "spike"}
    with pytest.raises(ValueError, match="at least one field"):
        line("m", {}, {"x": math.nan}, TS)


def test_field_value_types():
    """Booleans are true/false (not 1i), ints carry the i suffix, strings are quoted."""
    assert [field_value(v) for v in (True, False, 3, -(2**63), 2.5, "x")] == [
        "true",
        "false",
        "3i",
        f"{-(2**63)}i",
        "2.5",
        '"x"',
    ]


# -- escaping, for any text ------------------------------------------------------------

#: Text heavy in what line protocol treats specially.
NASTY = st.text(
    alphabet=st.one_of(
        st.sampled_from(list(' ,="\\=\n\r\t#\x00\x7f')), st.characters(codec="utf-8")
    ),
    max_size=30,
)


def sendable(value: str) -> str:
    """What a tag value becomes: controls as spaces, trailing backslashes dropped."""
    return re.sub(r"[\x00-\x1f\x7f]", " ", value).rstrip("\\")


@settings(max_examples=400)
@given(district=NASTY, street=NASTY, grid=NASTY, unit=NASTY)
def test_any_tag_value_round_trips(district: str, street: str, grid: str, unit: str):
    """Whatever the registry holds, the point parses into one line whose tags are the values
    (changed only where line protocol cannot carry them; empty ones left out) and whose
    fields are untouched."""
    place = Placement(district=district, street=street, grid=grid, unit=unit, lat=1.0, lon=2.0)
    text = reading_line(reading(), place, TS)
    measurement, tags, fields, ts = decode(text)
    assert measurement == "reading"
    wanted = {"district": district, "street": street, "grid": grid, "unit": unit}
    expected = {k: sendable(v) for k, v in wanted.items() if sendable(v)}
    assert tags == {"node": "wl-0001", "kind": "water_level", **expected}
    assert fields["depth_cm"] == 12.5
    assert fields["seq"] == 42
    assert ts == TS


@settings(max_examples=300)
@given(value=NASTY)
def test_a_printable_value_is_kept_exactly(value: str):
    """A value without control characters or a trailing backslash is sent unchanged."""
    if re.search(r"[\x00-\x1f\x7f]", value) or value.endswith("\\") or not value:
        return
    assert decode(line("m", {"t": value}, {"f": 1}, TS))[1] == {"t": value}


@settings(max_examples=300)
@given(value=NASTY)
def test_any_string_field_round_trips(value: str):
    """String fields (fingerprint, detector name) carry quotes, backslashes and newlines."""
    # Newlines may sit inside a quoted string: InfluxDB's line scanner tracks quotes.
    assert decode(line("m", {"t": "x"}, {"s": value, "n": 1}, TS))[2] == {"s": value, "n": 1}


@given(key=NASTY)
def test_escaped_tags_never_end_in_a_lone_backslash(key: str):
    """A trailing backslash would escape the separator after it and merge two tags."""
    assert not escape_tag(key).endswith("\\")


def test_a_lone_surrogate_is_replaced():
    """Text that is not valid UTF-8 cannot be sent; it becomes '?' rather than an error."""
    assert escape_tag("a\ud800b") == "a?b"
    assert string_field("x\udfff") == '"x?"'
