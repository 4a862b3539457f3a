"""The serial line codec: round trips, every refusal, and a splitter that survives any stream."""

from __future__ import annotations

import itertools
import math
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cityvitals.errors import CityvitalsError
from cityvitals.kinds import Kind
from edge.frames import (
    MAX_LINE,
    MAX_SEQ,
    EventFrame,
    Frame,
    FrameError,
    FrameFault,
    LineSplitter,
    ReadingFrame,
    SettingFrame,
    checksum,
    decode_frame,
    encode_frame,
)


def framed(body: str | bytes, *, crc: str | None = None, end: bytes = b"\r\n") -> bytes:
    """`$body*CRC` + end, with the right CRC unless one is given."""
    raw = body.encode("ascii") if isinstance(body, str) else body
    return b"$" + raw + b"*" + (crc or checksum(raw)).encode("ascii") + end


def outcome(items: list[bytes | FrameError]) -> list[object]:
    """Splitter output in a comparable form (exceptions do not compare by value)."""
    return [(x.fault, x.detail, x.line) if isinstance(x, FrameError) else x for x in items]


def decode_all(items: list[bytes | FrameError]) -> list[Frame | FrameFault]:
    """Decode every candidate line; keep frames, and the fault for everything else."""
    result: list[Frame | FrameFault] = []
    for item in items:
        if isinstance(item, FrameError):
            result.append(item.fault)
            continue
        try:
            result.append(decode_frame(item))
        except FrameError as exc:
            result.append(exc.fault)
    return result


READING = ReadingFrame(
    "mh-0001",
    Kind.MANHOLE,
    17,
    {"cover_tilt_deg": 2.5, "cover_open": 0, "gas_lel_pct": 0.25},
    battery_pct=88.0,
    rssi_dbm=-71.5,
)
EVENT = EventFrame("sm-0042", Kind.SMOKE, 4_294_967_295, "smoke_alarm", detail="zone 3 (kitchen)")
SETTING = SettingFrame("cr-0009", {"interval": 10, "gain": 0.5})


# -- examples ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        READING,
        EVENT,
        SETTING,
        ReadingFrame("wl-0007", Kind.WATER_LEVEL, 0, {"depth_cm": 41.2}),
        ReadingFrame("cr-1", Kind.CROWD, 5, {"count": 1234, "density_m2": 1e-05}),
        EventFrame("mh-0001", Kind.MANHOLE, 3, "cover_opened"),
    ],
)
def test_encode_decode_round_trip(frame: Frame) -> None:
    """Every frame type survives encode then decode unchanged, terminator included."""
    line = encode_frame(frame)
    assert line.startswith(b"$CV1,")
    assert line.endswith(b"\r\n")
    assert decode_frame(line) == frame


def test_encoded_bytes_are_exact() -> None:
    """The wire format is what the protocol document shows, byte for byte."""
    assert encode_frame(SettingFrame("wl-0007", {"interval": 10})) == (
        b"$CV1,S,wl-0007,interval=10*1650\r\n"
    )
    assert encode_frame(READING) == framed(
        "CV1,R,mh-0001,manhole,17,cover_tilt_deg=2.5,cover_open=0,gas_lel_pct=0.25,"
        "bat=88,rssi=-71.5"
    )


def test_checksum_is_crc16_ccitt_false() -> None:
    """The CRC is CRC-16/CCITT-FALSE: its catalogued check value over '123456789' is 0x29B1."""
    assert checksum(b"123456789") == "29B1"
    assert checksum(b"") == "FFFF"


@pytest.mark.parametrize("end", [b"\r\n", b"\n", b""])
def test_terminator_is_optional_and_crc_case_insensitive(end: bytes) -> None:
    """decode accepts \\r\\n, \\n or no terminator, and lowercase CRC digits."""
    body = "CV1,E,mh-0001,manhole,12,cover_opened"
    assert checksum(body.encode()) == "436A"
    line = framed(body, crc="436a", end=end)
    assert decode_frame(line) == EventFrame("mh-0001", Kind.MANHOLE, 12, "cover_opened")


def test_reading_health_keys_are_not_metrics() -> None:
    """`bat` and `rssi` become battery_pct / rssi_dbm, wherever they appear among the pairs."""
    frame = decode_frame(framed("CV1,R,sm-1,smoke,9,rssi=-80,temperature_c=21.5,bat=50"))
    assert frame == ReadingFrame("sm-1", Kind.SMOKE, 9, {"temperature_c": 21.5}, 50.0, -80.0)


def test_numbers_in_printf_forms_are_accepted() -> None:
    """Firmware prints with %d, %.2f or %g: all are read, leading zeros and exponents too."""
    frame = decode_frame(framed("CV1,R,n1,crowd,007,count=12,density_m2=-0.50,x=1.5E+2,y=2e-3"))
    assert isinstance(frame, ReadingFrame)
    assert frame.seq == 7
    assert frame.metrics == {"count": 12.0, "density_m2": -0.5, "x": 150.0, "y": 0.002}


def test_metric_names_are_not_checked_against_the_kind() -> None:
    """The codec checks syntax only; unknown metrics and odd ranges are the contract's job."""
    frame = decode_frame(framed("CV1,R,n1,water_level,1,cover_open=7,depth_cm=-5"))
    assert isinstance(frame, ReadingFrame)
    assert frame.metrics == {"cover_open": 7.0, "depth_cm": -5.0}


def test_longest_line_is_accepted_and_one_more_byte_is_not() -> None:
    """MAX_LINE counts from '$' through '\\n': exactly 512 bytes decodes, 513 is too long."""
    head = "CV1,R,n1,smoke,1,temperature_c=1."
    digits = MAX_LINE - len(framed(head))
    line = framed(head + "0" * digits)
    assert len(line) == MAX_LINE
    assert decode_frame(line) == ReadingFrame("n1", Kind.SMOKE, 1, {"temperature_c": 1.0})
    longer = framed(head + "0" * (digits + 1))
    with pytest.raises(FrameError) as caught:
        decode_frame(longer)
    assert caught.value.fault is FrameFault.TOO_LONG


# -- refusals ----------------------------------------------------------------------

OK_CRC = framed("CV1,S,n1,interval=10")  # a valid line, to damage


@pytest.mark.parametrize(
    ("line", "fault", "detail"),
    [
        (OK_CRC.replace(b"10", b"11"), FrameFault.CHECKSUM, "CRC is 2319, expected"),
        (OK_CRC[:-1] + b"\xff\n", FrameFault.NOT_ASCII, "above 0x7F"),
        (framed("CV1,S,n1,t=1") + b"x" * MAX_LINE, FrameFault.TOO_LONG, "exceeds 512"),
        (framed("CV2,S,n1,interval=10"), FrameFault.VERSION, "'CV2' (this agent speaks CV1)"),
        (framed("CV10,S,n1,interval=10"), FrameFault.VERSION, "'CV10'"),
        (b"$CV1,S,n1,interval=10\r\n", FrameFault.MALFORMED, "'*' and 4 hex"),
        (b"$CV1,S,n1,interval=10*12G4\r\n", FrameFault.MALFORMED, "'*' and 4 hex"),
        (b"$CV1,S,n1,interval=10*123\r\n", FrameFault.MALFORMED, "'*' and 4 hex"),
        (b"$*FFFF", FrameFault.MALFORMED, "'' is not a frame tag"),
        (OK_CRC[1:], FrameFault.MALFORMED, "does not start with '$'"),
        (b"", FrameFault.MALFORMED, "does not start with '$'"),
        (framed("CV1,S,n1,interval=10\r"), FrameFault.MALFORMED, "control character"),
        (framed("CV1,S,n1,interval\t=10"), FrameFault.MALFORMED, "control character"),
        (framed("CV1,S,n1$,interval=10"), FrameFault.MALFORMED, "'$' or '*'"),
        (framed("CV1,S,n1,interval=10") + b"\n", FrameFault.MALFORMED, "'*' and 4 hex"),
        (framed("GPGGA,S,n1,interval=10"), FrameFault.MALFORMED, "not a frame tag"),
        (framed("CV1,Q,n1,interval=10"), FrameFault.MALFORMED, "frame type must be"),
        (framed("CV1"), FrameFault.MALFORMED, "frame type must be"),
        (framed("CV1,R,n1,smoke,1,,temperature_c=1"), FrameFault.MALFORMED, "empty field 5"),
        (framed("CV1,R,n1,smoke,1,temperature_c=1,"), FrameFault.MALFORMED, "empty field 6"),
        (framed("CV1,R,n1,smoke,1,t=1,t=2"), FrameFault.MALFORMED, "duplicate key 't'"),
        (framed("CV1,R,n1,smoke,1,bat=1,bat=2,t=1"), FrameFault.MALFORMED, "duplicate key"),
        (framed("CV1,R,n1,smoke,1,bat=50"), FrameFault.MALFORMED, "at least one metric"),
        (framed("CV1,R,n1,smoke,1"), FrameFault.MALFORMED, "a reading needs"),
        (framed("CV1,R,N1,smoke,1,t=1"), FrameFault.MALFORMED, "'N1' is not a valid node id"),
        (framed("CV1,R,-n1,smoke,1,t=1"), FrameFault.MALFORMED, "not a valid node id"),
        (framed("CV1,R," + "n" * 65 + ",smoke,1,t=1"), FrameFault.MALFORMED, "node id"),
        (framed("CV1,R,n1,fire,1,t=1"), FrameFault.MALFORMED, "'fire' is not a kind"),
        (framed("CV1,R,n1,SMOKE,1,t=1"), FrameFault.MALFORMED, "is not a kind"),
        (framed("CV1,R,n1,smoke,-1,t=1"), FrameFault.MALFORMED, "seq '-1'"),
        (framed(f"CV1,R,n1,smoke,{MAX_SEQ + 1},t=1"), FrameFault.MALFORMED, "seq '4294967296'"),
        (framed("CV1,R,n1,smoke,1.0,t=1"), FrameFault.MALFORMED, "seq '1.0'"),
        (framed("CV1,R,n1,smoke,1,t"), FrameFault.MALFORMED, "is not <key>=<value>"),
        (framed("CV1,R,n1,smoke,1,=1"), FrameFault.MALFORMED, "'' is not a valid key"),
        (framed("CV1,R,n1,smoke,1,T=1"), FrameFault.MALFORMED, "'T' is not a valid key"),
        (framed("CV1,R,n1,smoke,1,t="), FrameFault.MALFORMED, "'' is not a decimal"),
        (framed("CV1,R,n1,smoke,1,t=nan"), FrameFault.MALFORMED, "'nan' is not a decimal"),
        (framed("CV1,R,n1,smoke,1,t=inf"), FrameFault.MALFORMED, "not a decimal"),
        (framed("CV1,R,n1,smoke,1,t=1e999"), FrameFault.MALFORMED, "'1e999' is not finite"),
        (framed("CV1,R,n1,smoke,1,t=+1"), FrameFault.MALFORMED, "not a decimal"),
        (framed("CV1,R,n1,smoke,1,t=.5"), FrameFault.MALFORMED, "not a decimal"),
        (framed("CV1,R,n1,smoke,1,t=1."), FrameFault.MALFORMED, "not a decimal"),
        (framed("CV1,R,n1,smoke,1,t=1_0"), FrameFault.MALFORMED, "not a decimal"),
        (framed("CV1,R,n1,smoke,1,t= 1"), FrameFault.MALFORMED, "not a decimal"),
        (framed("CV1,E,n1,smoke,1"), FrameFault.MALFORMED, "an event is"),
        (framed("CV1,E,n1,smoke,1,a,detail=x,y"), FrameFault.MALFORMED, "an event is"),
        (framed("CV1,E,n1,smoke,1,Alarm"), FrameFault.MALFORMED, "'Alarm' is not a valid event"),
        (framed("CV1,E,n1,smoke,1,alarm,info=x"), FrameFault.MALFORMED, "is not detail=<text>"),
        (framed("CV1,E,n1,smoke,1,alarm,detail"), FrameFault.MALFORMED, "is not detail=<text>"),
        (framed("CV1,E,n1,smoke,1,alarm,detail="), FrameFault.MALFORMED, "empty detail"),
        (framed("CV1,S,n1"), FrameFault.MALFORMED, "a setting needs"),
        (framed("CV1,S,n1,interval=10,interval=5"), FrameFault.MALFORMED, "duplicate key"),
    ],
)
def test_decode_refuses(line: bytes, fault: FrameFault, detail: str) -> None:
    """Each syntax error is a FrameError with the right fault, a telling detail, and the line."""
    with pytest.raises(FrameError) as caught:
        decode_frame(line)
    assert caught.value.fault is fault
    assert detail in caught.value.detail
    assert caught.value.line == line
    assert isinstance(caught.value, CityvitalsError)


def test_checksum_is_checked_before_fields() -> None:
    """Noise that hits a field reports `checksum`: the CRC is checked before field syntax."""
    good = framed("CV1,R,n1,smoke,1,t=1")
    with pytest.raises(FrameError) as caught:
        decode_frame(good.replace(b"n1", b"N1"))
    assert caught.value.fault is FrameFault.CHECKSUM


@pytest.mark.parametrize(
    "frame",
    [
        ReadingFrame("n1", Kind.SMOKE, 1, {"t": math.nan}),
        ReadingFrame("n1", Kind.SMOKE, 1, {"t": math.inf}),
        ReadingFrame("n1", Kind.SMOKE, 1, {}),
        ReadingFrame("n1", Kind.SMOKE, 1, {"t": 1.0, "bat": 50.0}),
        ReadingFrame("n1", Kind.SMOKE, 1, {"T": 1.0}),
        ReadingFrame("n1", Kind.SMOKE, 1, {"t=1,u": 1.0}),
        ReadingFrame("n1", Kind.SMOKE, -1, {"t": 1.0}),
        ReadingFrame("n1", Kind.SMOKE, MAX_SEQ + 1, {"t": 1.0}),
        ReadingFrame("N1", Kind.SMOKE, 1, {"t": 1.0}),
        ReadingFrame("ñ1", Kind.SMOKE, 1, {"t": 1.0}),
        ReadingFrame("n1", Kind.SMOKE, 1, {f"m{i:02}_{'x' * 60}": 1.0 for i in range(8)}),
        EventFrame("n1", Kind.SMOKE, 1, "alarm", detail="a,b"),
        EventFrame("n1", Kind.SMOKE, 1, "alarm", detail=""),
        EventFrame("n1", Kind.SMOKE, 1, "alarm", detail="x*y"),
        EventFrame("n1", Kind.SMOKE, 1, "bad event"),
        SettingFrame("n1", {}),
    ],
)
def test_encode_refuses_what_cannot_be_read_back(frame: Frame) -> None:
    """encode raises ValueError (a caller bug) for anything decode would refuse or change."""
    with pytest.raises(ValueError, match="cannot encode"):
        encode_frame(frame)


# -- the splitter ------------------------------------------------------------------

A = framed("CV1,S,n1,interval=10")
B = framed("CV1,E,n2,smoke,7,smoke_alarm", end=b"\n")


def test_splitter_passes_frames_and_counts_noise() -> None:
    """Noise between frames is counted in garbage_bytes, not reported; frames come out whole."""
    splitter = LineSplitter()
    assert splitter.feed(b"boot v1.2\r\n" + A + b"\x00\xff" + B + b"tail") == [A, B]
    assert splitter.garbage_bytes == len(b"boot v1.2\r\n") + 2 + 4


def test_splitter_reassembles_a_line_fed_byte_by_byte() -> None:
    """A frame arriving one byte at a time comes out once, when its '\\n' arrives."""
    splitter = LineSplitter()
    out = [item for byte in A for item in splitter.feed(bytes([byte]))]
    assert out == [A]


def test_a_new_dollar_cuts_the_partial_frame() -> None:
    """A '$' inside a partial frame: the partial is MALFORMED and the '$' starts a fresh frame."""
    splitter = LineSplitter()
    out = splitter.feed(A[:10] + B)
    assert outcome(out) == [
        (FrameFault.MALFORMED, "frame cut short by a new '$'", A[:10]),
        B,
    ]
    assert splitter.garbage_bytes == 0


def test_overlong_line_is_reported_once_and_discarded_to_its_newline() -> None:
    """No '\\n' within MAX_LINE bytes: one TOO_LONG (carrying the first MAX_LINE bytes), the rest
    of that line is dropped, and the next line is read normally."""
    splitter = LineSplitter()
    run = b"$" + b"x" * 5000
    out: list[bytes | FrameError] = []
    for start in range(0, len(run), 700):
        out += splitter.feed(run[start : start + 700])
    out += splitter.feed(b"yyy\n" + A)
    assert outcome(out) == [
        (FrameFault.TOO_LONG, "no end of line within 512 bytes", run[:MAX_LINE]),
        A,
    ]
    assert splitter.garbage_bytes == 0


def test_a_dollar_inside_an_overlong_line_does_not_resync() -> None:
    """Once a line is too long, everything to its '\\n' is dropped, a '$' included."""
    splitter = LineSplitter()
    out = splitter.feed(b"$" + b"x" * MAX_LINE + A)
    assert [x.fault for x in out if isinstance(x, FrameError)] == [FrameFault.TOO_LONG]
    assert [x for x in out if isinstance(x, bytes)] == []
    assert splitter.feed(A) == [A]


def test_line_of_exactly_max_line_bytes_passes() -> None:
    """A 512-byte line (terminator included) is a candidate; one byte more is TOO_LONG."""
    splitter = LineSplitter()
    exact = b"$" + b"x" * (MAX_LINE - 2) + b"\n"
    assert splitter.feed(exact) == [exact]
    out = splitter.feed(b"$" + b"x" * (MAX_LINE - 1) + b"\n")
    assert [x.fault for x in out if isinstance(x, FrameError)] == [FrameFault.TOO_LONG]


def test_reset_reports_only_a_started_frame() -> None:
    """reset() drops the partial line: MALFORMED if a frame had started, None otherwise."""
    splitter = LineSplitter()
    splitter.feed(b"noise")
    assert splitter.reset() is None
    splitter.feed(A[:7])
    error = splitter.reset()
    assert error is not None
    assert (error.fault, error.line) == (FrameFault.MALFORMED, A[:7])
    splitter.feed(b"$" + b"x" * MAX_LINE)  # now discarding an overlong line
    assert splitter.reset() is None
    assert splitter.feed(A) == [A]  # reset also ends the discarding


# -- properties ----------------------------------------------------------------------

NODES = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,63}", fullmatch=True)
NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)
METRIC_NAMES = NAMES.filter(lambda name: name not in {"bat", "rssi"})
NUMBERS = st.floats(allow_nan=False, allow_infinity=False)
SEQS = st.integers(0, MAX_SEQ)
KINDS = st.sampled_from(Kind)
DETAIL_CHARS = "".join(c for c in string.printable if c not in "$*,\t\n\r\x0b\x0c")

FRAMES: st.SearchStrategy[Frame] = st.one_of(
    st.builds(
        ReadingFrame,
        NODES,
        KINDS,
        SEQS,
        st.dictionaries(METRIC_NAMES, NUMBERS, min_size=1, max_size=4),
        st.none() | NUMBERS,
        st.none() | NUMBERS,
    ),
    st.builds(
        EventFrame,
        NODES,
        KINDS,
        SEQS,
        NAMES,
        st.none() | st.text(DETAIL_CHARS, min_size=1, max_size=80),
    ),
    st.builds(SettingFrame, NODES, st.dictionaries(NAMES, NUMBERS, min_size=1, max_size=4)),
)


@given(FRAMES)
def test_property_round_trip(frame: Frame) -> None:
    """decode(encode(frame)) == frame for every frame the protocol can carry."""
    line = encode_frame(frame)
    assert len(line) <= MAX_LINE
    assert decode_frame(line) == frame


FIELDS = st.one_of(
    st.sampled_from(
        [
            *("CV1", "CV2", "R", "E", "S", "n1", "smoke", "crowd", "alarm", "1", "0", "-0", ""),
            *("t=1.5", "bat=1", "rssi=-1", "detail=x y", "t=1e5", "t=-0.0", "t=1", "a=b=c"),
        ]
    ),
    st.text(string.printable, max_size=8),
)


@given(st.lists(FIELDS, min_size=1, max_size=9))
def test_property_decode_of_crc_valid_lines(fields: list[str]) -> None:
    """Lines with a correct CRC but any fields raise only FrameError; what decodes re-encodes to
    a line that decodes to the same frame."""
    line = framed(",".join(fields).encode("ascii"))
    try:
        frame = decode_frame(line)
    except FrameError:
        return
    assert decode_frame(encode_frame(frame)) == frame


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at the given offsets (taken modulo its length)."""
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def split(chunks: list[bytes]) -> tuple[list[bytes | FrameError], int]:
    splitter = LineSplitter()
    out = [item for chunk in chunks for item in splitter.feed(chunk)]
    return out, splitter.garbage_bytes


NOISE = st.one_of(
    st.binary(max_size=80),
    st.binary(min_size=1, max_size=40).map(lambda b: b"$" + b),
    st.integers(MAX_LINE - 3, 3 * MAX_LINE).map(lambda n: b"$" + b"x" * n),
    st.tuples(FRAMES, st.integers(0, 60)).map(lambda t: encode_frame(t[0])[: t[1]]),
    st.sampled_from([b"$", b"\r", b"\n", b"$$", b"*", b"\r\n", b"\xff\xfe"]),
)


@settings(deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(0, 10_000), max_size=40))
def test_property_any_bytes_any_chunking(data: bytes, cuts: list[int]) -> None:
    """Arbitrary bytes: only FrameError ever comes out, chunking changes nothing, nothing
    handed out is longer than MAX_LINE."""
    whole, garbage = split([data])
    pieces, pieces_garbage = split(chunked(data, cuts))
    assert outcome(pieces) == outcome(whole)
    assert pieces_garbage == garbage
    for item in whole:
        line = item.line if isinstance(item, FrameError) else item
        assert len(line) <= MAX_LINE
    decode_all(whole)  # raises if anything but FrameError escapes


@settings(deadline=None)
@given(
    st.lists(st.tuples(st.lists(NOISE, max_size=4), FRAMES), min_size=1, max_size=5),
    st.lists(NOISE, max_size=4),
    st.lists(st.integers(0, 10_000), max_size=30),
)
def test_property_frames_survive_newline_terminated_noise(
    pieces: list[tuple[list[bytes], Frame]], tail: list[bytes], cuts: list[int]
) -> None:
    """Every valid frame preceded by noise that ends in '\\n' is decoded, in order, whatever the
    noise and however the stream is chunked."""
    stream = b"".join(b"".join(noise) + b"\n" + encode_frame(frame) for noise, frame in pieces)
    stream += b"".join(tail)
    out, _ = split(chunked(stream, cuts))
    decoded = iter(x for x in decode_all(out) if not isinstance(x, FrameFault))
    sent = [frame for _, frame in pieces]
    # Noise could in theory hold a valid frame too, so: a subsequence, in order.
    assert all(any(got == frame for got in decoded) for frame in sent)
