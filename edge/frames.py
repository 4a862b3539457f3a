"""The serial line protocol between sensor nodes and the edge agent (pure codec, no I/O).

One ASCII frame per line, NMEA-like, protected by a CRC-16 (see
`docs/serial-protocol.md` for the grammar firmware authors follow):

    $CV1,R,<node>,<kind>,<seq>,<key>=<value>[,...]*<CRC>\\r\\n    reading   node -> agent
    $CV1,E,<node>,<kind>,<seq>,<event>[,detail=<text>]*<CRC>\\r\\n event     node -> agent
    $CV1,S,<node>,<key>=<value>[,...]*<CRC>\\r\\n                  setting   agent -> node

The codec checks syntax only; whether a metric belongs to a kind, and its
physical range, is for the contract (`cityvitals.contract.validate_reading`).

>>> line = encode_frame(ReadingFrame("wl-0007", Kind.WATER_LEVEL, 83, {"depth_cm": 41.2}, 93.5))
>>> line
b'$CV1,R,wl-0007,water_level,83,depth_cm=41.2,bat=93.5*FC5C\\r\\n'
>>> decode_frame(line)
ReadingFrame(node='wl-0007', kind=<Kind.WATER_LEVEL: 'water_level'>, seq=83, \
metrics={'depth_cm': 41.2}, battery_pct=93.5, rssi_dbm=None)
>>> try:
...     decode_frame(line.replace(b"41.2", b"91.2"))
... except FrameError as exc:
...     print(exc.fault, "|", exc.detail)
checksum | CRC is FC5C, expected B7C8
"""

from __future__ import annotations

import binascii
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from cityvitals.errors import CityvitalsError
from cityvitals.kinds import Kind

#: Longest line accepted, from `$` through `\n` inclusive.
MAX_LINE: Final = 512
VERSION_TAG: Final = "CV1"
MAX_SEQ: Final = 2**32 - 1
#: Reading keys that are node health, not metrics.
BATTERY_KEY: Final = "bat"
RSSI_KEY: Final = "rssi"
DETAIL_KEY: Final = "detail"

# fullmatch everywhere, so no anchors are needed (and `$` cannot match before a newline).
_NODE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_SEQ = re.compile(r"[0-9]{1,10}")
# What printf("%d"), "%.2f" and "%g" produce; no "+1", "1.", ".5", "0x1p3", "1_000", "inf".
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_CRC = re.compile(rb"[0-9A-Fa-f]{4}")
_TALKER = re.compile(r"CV[0-9]+")
# Printable ASCII without the three bytes that carry framing: `$`, `*` and `,`.
_TEXT = re.compile(r"[\x20-\x23\x25-\x29\x2b\x2d-\x7e]+")
_PRINTABLE = re.compile(rb"[\x20-\x7e]*")


class FrameFault(StrEnum):
    """Why a line is not a frame. Stable: the agent counts and reports by it."""

    CHECKSUM = "checksum"
    MALFORMED = "malformed"
    TOO_LONG = "too_long"
    VERSION = "unsupported_version"
    NOT_ASCII = "not_ascii"


class FrameError(CityvitalsError):
    """A line from a serial port is not a valid frame.

    `fault` groups errors for counters; `detail` says what exactly was wrong;
    `line` holds the offending bytes (for an overlong run, its first
    `MAX_LINE` bytes).
    """

    def __init__(self, fault: FrameFault, detail: str, line: bytes = b"") -> None:
        super().__init__(f"{fault}: {detail}")
        self.fault = fault
        self.detail = detail
        self.line = line


@dataclass(frozen=True, slots=True)
class ReadingFrame:
    """A sample from a node: metrics by name, plus optional battery and RSSI."""

    node: str
    kind: Kind
    seq: int
    metrics: dict[str, float]
    battery_pct: float | None = None
    rssi_dbm: float | None = None


@dataclass(frozen=True, slots=True)
class EventFrame:
    """Something the node noticed on its own: an alarm contact, a cover lifted."""

    node: str
    kind: Kind
    seq: int
    event: str
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class SettingFrame:
    """A setting the agent asks a node to apply, e.g. `{"interval": 10}` (seconds)."""

    node: str
    settings: dict[str, float]


Frame = ReadingFrame | EventFrame | SettingFrame


def checksum(body: bytes) -> str:
    """CRC-16/CCITT-FALSE of `body` (the bytes between `$` and `*`), as 4 uppercase hex digits.

    >>> checksum(b"123456789")  # the catalogued check value of CRC-16/CCITT-FALSE
    '29B1'
    """
    return f"{binascii.crc_hqx(body, 0xFFFF):04X}"


# -- encoding ------------------------------------------------------------------


def _format_value(value: float) -> str:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    # Whole numbers go out without ".0": an `interval=10` is easier for
    # firmware to parse, and every byte counts at 9600 baud.
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return repr(number)  # shortest text that reads back as the same float


def _pairs(values: dict[str, float]) -> list[str]:
    return [f"{key}={_format_value(value)}" for key, value in values.items()]


def _fields(frame: Frame) -> list[str]:
    if isinstance(frame, ReadingFrame):
        fields = ["R", frame.node, str(frame.kind), str(frame.seq), *_pairs(frame.metrics)]
        if frame.battery_pct is not None:
            fields.append(f"{BATTERY_KEY}={_format_value(frame.battery_pct)}")
        if frame.rssi_dbm is not None:
            fields.append(f"{RSSI_KEY}={_format_value(frame.rssi_dbm)}")
        return fields
    if isinstance(frame, EventFrame):
        fields = ["E", frame.node, str(frame.kind), str(frame.seq), frame.event]
        if frame.detail is not None:
            fields.append(f"{DETAIL_KEY}={frame.detail}")
        return fields
    return ["S", frame.node, *_pairs(frame.settings)]


def encode_frame(frame: Frame) -> bytes:
    """The complete line for `frame`, from `$` to `\\r\\n`.

    Raises `ValueError` if the frame cannot be sent as it is (a bad node id
    or name, a NaN, a `,` in a detail, a line over `MAX_LINE`): that is a bug
    in the caller, not noise on a line.

    >>> encode_frame(SettingFrame("wl-0007", {"interval": 10}))
    b'$CV1,S,wl-0007,interval=10*1650\\r\\n'
    """
    try:
        body = ",".join([VERSION_TAG, *_fields(frame)]).encode("ascii")
    except ValueError as exc:  # a NaN, or UnicodeEncodeError
        raise ValueError(f"cannot encode {frame!r}: {exc}") from exc
    line = b"$" + body + b"*" + checksum(body).encode("ascii") + b"\r\n"
    # Check by decoding our own output: whatever encode accepts, decode returns
    # unchanged, so the two can never drift apart.
    try:
        decoded = decode_frame(line)
    except FrameError as exc:
        raise ValueError(f"cannot encode {frame!r}: {exc.detail}") from exc
    if decoded != frame:
        raise ValueError(f"cannot encode {frame!r}: it would be read back as {decoded!r}")
    return line


# -- decoding ------------------------------------------------------------------


def _malformed(detail: str, line: bytes) -> FrameError:
    return FrameError(FrameFault.MALFORMED, detail, line)


def _number(text: str, what: str, line: bytes) -> float:
    if not _NUMBER.fullmatch(text):
        raise _malformed(f"{what}: {text!r} is not a decimal number", line)
    value = float(text)
    if not math.isfinite(value):  # "1e999" passes the pattern
        raise _malformed(f"{what}: {text!r} is not finite", line)
    return value


def _key_values(fields: list[str], line: bytes) -> dict[str, float]:
    values: dict[str, float] = {}
    for field in fields:
        key, eq, text = field.partition("=")
        if not eq:
            raise _malformed(f"{field!r} is not <key>=<value>", line)
        if not _NAME.fullmatch(key):
            raise _malformed(f"{key!r} is not a valid key", line)
        if key in values:
            raise _malformed(f"duplicate key {key!r}", line)
        values[key] = _number(text, key, line)
    return values


def _node(text: str, line: bytes) -> str:
    if not _NODE.fullmatch(text):
        raise _malformed(f"{text!r} is not a valid node id", line)
    return text


def _kind(text: str, line: bytes) -> Kind:
    try:
        return Kind(text)
    except ValueError:
        raise _malformed(f"{text!r} is not a kind", line) from None


def _seq(text: str, line: bytes) -> int:
    if not _SEQ.fullmatch(text) or int(text) > MAX_SEQ:
        raise _malformed(f"seq {text!r} is not a decimal 0..{MAX_SEQ}", line)
    return int(text)


def _reading(fields: list[str], line: bytes) -> ReadingFrame:
    if len(fields) < 5:
        raise _malformed("a reading needs <node>,<kind>,<seq>,<key>=<value>", line)
    values = _key_values(fields[4:], line)
    battery = values.pop(BATTERY_KEY, None)
    rssi = values.pop(RSSI_KEY, None)
    if not values:
        raise _malformed("a reading needs at least one metric", line)
    return ReadingFrame(
        _node(fields[1], line), _kind(fields[2], line), _seq(fields[3], line), values, battery, rssi
    )


def _event(fields: list[str], line: bytes) -> EventFrame:
    if len(fields) not in {5, 6}:
        raise _malformed("an event is <node>,<kind>,<seq>,<event>[,detail=<text>]", line)
    event = fields[4]
    if not _NAME.fullmatch(event):
        raise _malformed(f"{event!r} is not a valid event name", line)
    detail = None
    if len(fields) == 6:
        key, eq, detail = fields[5].partition("=")
        if key != DETAIL_KEY or not eq:
            raise _malformed(f"{fields[5]!r} is not detail=<text>", line)
        if not _TEXT.fullmatch(detail):
            raise _malformed("empty detail", line)
    return EventFrame(
        _node(fields[1], line), _kind(fields[2], line), _seq(fields[3], line), event, detail
    )


def _setting(fields: list[str], line: bytes) -> SettingFrame:
    if len(fields) < 3:
        raise _malformed("a setting needs <node>,<key>=<value>", line)
    return SettingFrame(_node(fields[1], line), _key_values(fields[2:], line))


_PARSERS: dict[str, Callable[[list[str], bytes], Frame]] = {
    "R": _reading,
    "E": _event,
    "S": _setting,
}


def decode_frame(line: bytes) -> Frame:
    """Decode one line, with or without its `\\r\\n` or `\\n`; `FrameError` says why not.

    Checks run from the outside in: length, ASCII, framing, CRC, version,
    fields. A line damaged on the wire thus reports `checksum`, not whatever
    field the damage happened to hit.

    >>> decode_frame(b"$CV1,E,mh-0001,manhole,12,cover_opened*436A")
    EventFrame(node='mh-0001', kind=<Kind.MANHOLE: 'manhole'>, seq=12, event='cover_opened', \
detail=None)
    >>> try:
    ...     decode_frame(b"$CV2,E,mh-0001,manhole,12,cover_opened*EA35")
    ... except FrameError as exc:
    ...     print(exc)
    unsupported_version: 'CV2' (this agent speaks CV1)
    """
    if len(line) > MAX_LINE:
        raise FrameError(FrameFault.TOO_LONG, f"{len(line)} bytes exceeds {MAX_LINE}", line)
    if not line.isascii():
        raise FrameError(FrameFault.NOT_ASCII, "line holds bytes above 0x7F", line)
    text = line.removesuffix(b"\n").removesuffix(b"\r")
    if not text.startswith(b"$"):
        raise _malformed("does not start with '$'", line)
    if len(text) < 6 or text[-5:-4] != b"*" or not _CRC.fullmatch(text[-4:]):
        raise _malformed("does not end with '*' and 4 hex digits", line)
    body = text[1:-5]
    expected = checksum(body)
    got = text[-4:].decode("ascii").upper()
    if got != expected:
        raise FrameError(FrameFault.CHECKSUM, f"CRC is {got}, expected {expected}", line)
    if not _PRINTABLE.fullmatch(body) or b"$" in body or b"*" in body:
        raise _malformed("control character, '$' or '*' inside the frame", line)
    fields = body.decode("ascii").split(",")
    if fields[0] != VERSION_TAG:
        if _TALKER.fullmatch(fields[0]):
            raise FrameError(
                FrameFault.VERSION, f"{fields[0]!r} (this agent speaks {VERSION_TAG})", line
            )
        raise _malformed(f"{fields[0]!r} is not a frame tag", line)
    if "" in fields:
        raise _malformed(f"empty field {fields.index('')}", line)
    parser = _PARSERS.get(fields[1]) if len(fields) > 1 else None
    if parser is None:
        raise _malformed(f"frame type must be one of {sorted(_PARSERS)}", line)
    return parser(fields[1:], line)


# -- splitting a byte stream into lines ------------------------------------------


class LineSplitter:
    """Cut a serial byte stream into candidate lines, from `$` through `\\n`.

    `feed()` takes bytes as they arrive, in any chunking, and returns the
    complete candidate lines (to pass to `decode_frame`) and, in stream
    order, a `FrameError` for each run it had to throw away:

    - a frame cut short by a new `$` (noise ate its end): `MALFORMED`, and the
      `$` starts a fresh candidate;
    - a candidate with no `\\n` within `MAX_LINE` bytes: `TOO_LONG`, reported
      once; the rest of that line, up to its `\\n`, is discarded.

    Bytes outside any candidate (noise between frames) are only counted in
    `garbage_bytes`. Work is linear in the bytes fed and at most `MAX_LINE`
    bytes are held.

    >>> splitter = LineSplitter()
    >>> splitter.feed(b"noise\\n$CV1,S,n1,interval=1")
    []
    >>> splitter.feed(b"0*2319\\r\\n$CV1,S,n")
    [b'$CV1,S,n1,interval=10*2319\\r\\n']
    >>> out = splitter.feed(b"$CV1,S,n2,interval=5*4FAF\\n")
    >>> [x.fault if isinstance(x, FrameError) else x for x in out]
    [<FrameFault.MALFORMED: 'malformed'>, b'$CV1,S,n2,interval=5*4FAF\\n']
    >>> splitter.garbage_bytes
    6
    """

    def __init__(self) -> None:
        self._line = bytearray()
        self._discarding = False
        self.garbage_bytes = 0

    def feed(self, data: bytes) -> list[bytes | FrameError]:
        out: list[bytes | FrameError] = []
        line = self._line
        i, n = 0, len(data)
        while i < n:
            if self._discarding:
                newline = data.find(b"\n", i)
                if newline < 0:
                    break
                self._discarding = False
                i = newline + 1
            elif not line:
                dollar = data.find(b"$", i)
                if dollar < 0:
                    self.garbage_bytes += n - i
                    break
                self.garbage_bytes += dollar - i
                line.append(data[dollar])
                i = dollar + 1
            else:
                # Never look further than the line may grow: keeps memory bounded
                # and every byte is scanned a constant number of times.
                end = min(n, i + MAX_LINE - len(line))
                dollar = data.find(b"$", i, end)
                newline = data.find(b"\n", i, dollar if dollar >= 0 else end)
                if newline >= 0:
                    line += data[i : newline + 1]
                    out.append(bytes(line))
                    line.clear()
                    i = newline + 1
                elif dollar >= 0:
                    line += data[i:dollar]
                    out.append(_malformed("frame cut short by a new '$'", bytes(line)))
                    line.clear()
                    i = dollar
                else:
                    line += data[i:end]
                    i = end
                    if len(line) >= MAX_LINE:
                        out.append(
                            FrameError(
                                FrameFault.TOO_LONG,
                                f"no end of line within {MAX_LINE} bytes",
                                bytes(line),
                            )
                        )
                        line.clear()
                        self._discarding = True
        return out

    def reset(self) -> FrameError | None:
        """Forget any partial line (the port closed under it).

        Returns a `MALFORMED` error for a frame that had started, else None.
        """
        partial = bytes(self._line)
        self._line.clear()
        self._discarding = False
        if not partial:
            return None
        return _malformed("line cut short when the port closed", partial)
