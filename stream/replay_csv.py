"""CSV in and out for `stream.replay`: blocks of records, timestamps, values, scores.

Reading a million rows with the `csv` module costs about as much as all the
detectors of a kind together, so the common case takes a shortcut: a block of text with no
quote character and the header's number of commas on every line is split
with two `str` calls, and only the columns replay needs are kept. Any other
block (quotes, blank lines, a short or long row) goes through `csv.reader`,
record by record. Both give the same fields.

Timestamps are parsed a block at a time as well: ISO 8601 strings that all
share the first one's layout go through numpy's `datetime64` parser, after
their zone suffix (`Z`, `+01:00`) is taken off and applied by hand (numpy
does not read zones); anything else goes through `datetime.fromisoformat`
one string at a time, which is also what names a bad one.

>>> parse = TimestampParser()
>>> ms, bad = parse(["2025-11-25T00:00:00Z", "2025-11-25T01:00:00+01:00", "nope"])
>>> ms.tolist()[:2], bad.tolist()
([1764028800000, 1764028800000], [False, False, True])
>>> parse.mode
'iso'
>>> format_scores(np.array([0.0, 0.9990004, 1.0]))
[',0.000000000', ',0.999000400', ',1.000000000']
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import repeat
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from cityvitals.errors import CityvitalsError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

__all__ = [
    "BadRowError",
    "Block",
    "Header",
    "ReplayError",
    "TimestampParser",
    "format_scores",
    "parse_values",
    "read_blocks",
    "read_header",
]

#: Characters read per block: ~50 000 short rows. Each row is a few Python strings
#: in and out (~400 bytes), so this keeps ~25 MiB alive; 4 MiB blocks were no
#: faster and cost 100 MiB more.
BLOCK_CHARS: Final = 1024 * 1024
#: Decimals written for a score: enough to tell 0.999999 (red by default) from 0.9999989.
SCORE_DECIMALS: Final = 9
#: Epoch numbers above this are milliseconds (1e11 s is the year 5138; 1e11 ms is 1973).
EPOCH_MS_ABOVE: Final = 1e11
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
#: The layout the fast ISO path takes: a full date and time, at most milliseconds,
#: then nothing, Z, or a +HH:MM offset. Anything else is left to fromisoformat.
_ISO_FAST = re.compile(
    r"(?P<body>\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,3})?)?)"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?"
)
_OFFSET = re.compile(r"([+-])(\d{2}):(\d{2})")


class ReplayError(CityvitalsError):
    """A replay input the file cannot give: a missing column, a record or field that
    does not parse. `line` is the file's line number (1 is the header)."""

    def __init__(
        self, path: Path, detail: str, *, line: int | None = None, column: str | None = None
    ) -> None:
        self.path = path
        self.line = line
        self.column = column
        self.detail = detail
        where = str(path)
        if line is not None:
            where += f": line {line}"
        if column is not None:
            where += f"{',' if line is not None else ':'} column {column!r}"
        super().__init__(f"{where}: {detail}")


class BadRowError(ReplayError):
    """A record whose fields do not parse (`--skip-bad` writes it and goes on)."""


# -- records ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    """The first line of the file: its column names, and the line as written."""

    path: Path
    names: tuple[str, ...]
    text: str

    def index(self, column: str) -> int:
        """The position of `column`; a `ReplayError` naming the columns there are."""
        try:
            return self.names.index(column)
        except ValueError:
            have = ", ".join(repr(n) for n in self.names)
            raise ReplayError(
                self.path, f"there is no such column; the file has {have}", column=column
            ) from None


def read_header(path: Path) -> Header:
    try:
        with path.open(encoding="utf-8-sig", newline=None) as f:
            text = f.readline().rstrip("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReplayError(path, f"cannot read the file ({exc})") from None
    names = next(csv.reader([text]), [])
    if not names or not any(names):
        raise ReplayError(path, "the first line must name the columns", line=1)
    return Header(path, tuple(names), text)


@dataclass(slots=True)
class Block:
    """A run of records: what to echo of each, the fields replay reads, and where
    each record is in the file."""

    #: Each record as a CSV line (without newline): the input line itself, or, for
    #: a record that needed the csv module, its fields written back.
    lines: list[str]
    #: The requested columns' fields, one list per column, one entry per record.
    columns: list[list[str]]
    #: The file line of `lines[0]`, and of each record when they are not consecutive.
    first_line: int
    line_numbers: list[int] | None = None
    #: Records whose number of fields differs from the header's: index -> message.
    malformed: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.lines)

    def line_of(self, index: int) -> int:
        if self.line_numbers is not None:
            return self.line_numbers[index]
        return self.first_line + index


def read_blocks(
    header: Header,
    wanted: list[int],
    *,
    block_chars: int = BLOCK_CHARS,
    progress: Callable[[int], None] | None = None,
) -> Iterator[Block]:
    """The records after the header, in blocks, with the fields of the `wanted`
    column positions. `progress` is told the bytes read so far after each block."""
    width = len(header.names)
    line = 2
    try:
        # The binary file underneath says how far the reading has got (the text
        # layer cannot tell while it is being read).
        with header.path.open("rb") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig") as f:
            f.readline()
            while True:
                text = f.read(block_chars)
                if not text:
                    return
                if not text.endswith("\n"):
                    text += f.readline()  # finish the last line; "" at the end of the file
                # An odd number of quotes: the block ends inside a quoted field that
                # holds a newline; read on to the end of that record.
                while '"' in text and text.count('"') % 2:
                    more = f.readline()
                    if not more:
                        break
                    text += more
                lines = text.split("\n")
                if lines[-1] == "":
                    lines.pop()
                block = _fast_block(text, lines, wanted, width, line)
                if block is None:
                    block = _csv_block(lines, wanted, width, line)
                line += len(lines)
                if progress is not None:
                    progress(raw.tell())
                yield block
    except (OSError, UnicodeDecodeError) as exc:
        raise ReplayError(header.path, f"cannot read the file ({exc})", line=line) from None


def _fast_block(
    text: str, lines: list[str], wanted: list[int], width: int, first: int
) -> Block | None:
    """The shortcut for plain blocks; None when the block needs the csv module."""
    if '"' in text or set(map(str.count, lines, repeat(","))) != {width - 1}:
        return None
    flat = ",".join(lines).split(",")
    return Block(lines, [flat[i::width] for i in wanted], first)


def _csv_block(lines: list[str], wanted: list[int], width: int, first: int) -> Block:
    """Record by record through `csv.reader`: quoted fields, blank lines (skipped, as
    csv readers do), records that span lines inside quotes, rows of the wrong width."""
    out: list[str] = []
    columns: list[list[str]] = [[] for _ in wanted]
    numbers: list[int] = []
    malformed: dict[int, str] = {}
    # Each line with its newline back: a quoted field spanning lines keeps it.
    reader = csv.reader(line + "\n" for line in lines)
    start = 0
    for row in reader:
        at, start = first + start, reader.line_num
        if not row:
            continue
        fields = row
        if len(row) != width:
            malformed[len(out)] = f"expected {width} fields (as the header has), found {len(row)}"
            fields = (row + [""] * width)[:width]
        numbers.append(at)
        out.append(_csv_line(fields))
        for column, i in zip(columns, wanted, strict=True):
            column.append(fields[i])
    return Block(out, columns, first, numbers, malformed)


def _csv_line(fields: list[str]) -> str:
    """The fields as one CSV record, without its line end. The writer quotes a field
    holding any character of its line terminator, so that must be a real one."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(fields)
    return buffer.getvalue()[:-2]


# -- fields -------------------------------------------------------------------


def parse_values(texts: list[str]) -> tuple[FloatArray, BoolArray]:
    """Floats and a mask of the ones that are not finite numbers (empty, text, nan)."""
    try:
        values = np.fromiter(map(float, texts), dtype=np.float64, count=len(texts))
    except ValueError:
        values = np.array([_float_or_nan(t) for t in texts], dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        values[bad] = 0.0  # placeholders: bad rows are never scored
    return values, bad


def _float_or_nan(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _is_number(text: str) -> bool:
    return math.isfinite(_float_or_nan(text))


TimestampMode = Literal["epoch", "iso"]


class TimestampParser:
    """Timestamps to UTC milliseconds; the format is decided by the first one seen.

    A number there makes the column epoch time: seconds, or milliseconds when
    above 1e11, decided per value. An ISO 8601 time there makes it ISO 8601,
    as `datetime.fromisoformat` reads it; a time without a zone is UTC, and digits
    below the millisecond are dropped (rounded down).
    """

    def __init__(self) -> None:
        self.mode: TimestampMode | None = None

    def __call__(self, texts: list[str]) -> tuple[IntArray, BoolArray]:
        """Milliseconds and a mask of the timestamps that do not parse."""
        if not texts:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.bool_)
        if self.mode is None:
            # The first timestamp that parses either way decides (a junk one
            # before it is just a bad row).
            for text in texts:
                if _is_number(text):
                    self.mode = "epoch"
                    break
                if _iso_one(text) is not None:
                    self.mode = "iso"
                    break
            else:
                return np.zeros(len(texts), dtype=np.int64), np.ones(len(texts), dtype=np.bool_)
        return _epoch(texts) if self.mode == "epoch" else _iso(texts)


def _epoch(texts: list[str]) -> tuple[IntArray, BoolArray]:
    numbers, bad = parse_values(texts)
    ms = np.where(numbers > EPOCH_MS_ABOVE, numbers, numbers * 1000.0)
    bad |= ~(np.abs(ms) < 2**53)  # beyond that a double holds no exact millisecond
    ms[bad] = 0.0
    return np.rint(ms).astype(np.int64), bad


def _iso(texts: list[str]) -> tuple[IntArray, BoolArray]:
    fast = _iso_fast(texts)
    if fast is not None:
        return fast, np.zeros(len(texts), dtype=np.bool_)
    ms = np.zeros(len(texts), dtype=np.int64)
    bad = np.zeros(len(texts), dtype=np.bool_)
    for i, text in enumerate(texts):
        value = _iso_one(text)
        if value is None:
            bad[i] = True
        else:
            ms[i] = value
    return ms, bad


def _iso_one(text: str) -> int | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MS


def _iso_fast(texts: list[str]) -> IntArray | None:
    """Every string in the first one's layout, parsed by numpy; None if not all are."""
    match = _ISO_FAST.fullmatch(texts[0])
    if match is None or set(map(len, texts)) != {len(texts[0])}:
        return None
    zone = match["zone"] or ""
    offsets_ms = _zone_offsets(texts, zone)
    bodies = [t[: len(t) - len(zone)] for t in texts] if zone else texts
    if offsets_ms is None or not _same_layout(bodies):
        return None
    try:
        stamps = np.array(bodies, dtype="datetime64[ms]")
    except ValueError:
        return None
    ms = stamps.astype(np.int64)
    if (ms == np.iinfo(np.int64).min).any():  # NaT: numpy reads "NaT" and ""
        return None
    out: IntArray = ms - offsets_ms
    return out


def _zone_offsets(texts: list[str], zone: str) -> IntArray | int | None:
    """Milliseconds to subtract for each string's zone (all in the first one's form:
    none, Z, or +HH:MM); None if one is not in that form."""
    if not zone:
        return 0
    if zone == "Z":
        return 0 if sum(map(str.endswith, texts, repeat("Z"))) == len(texts) else None
    table: dict[str, int] = {}
    zones = [t[-6:] for t in texts]
    for suffix in set(zones):
        m = _OFFSET.fullmatch(suffix)
        if m is None or int(m[3]) >= 60:
            return None
        table[suffix] = (-1 if m[1] == "-" else 1) * (int(m[2]) * 60 + int(m[3])) * 60_000
    return np.array([table[z] for z in zones], dtype=np.int64)


def _same_layout(bodies: list[str]) -> bool:
    """ASCII, with the first string's separators in the same places in every one: numpy
    then checks the digits, and no string can be in a layout the regex did not see."""
    try:
        raw = "".join(bodies).encode("ascii")
    except UnicodeEncodeError:
        return False
    grid = np.frombuffer(raw, dtype=np.uint8).reshape(len(bodies), -1)
    first = grid[0]
    fixed = (first < ord("0")) | (first > ord("9"))
    return bool((grid[:, fixed] == first[fixed]).all())


# -- output -------------------------------------------------------------------


def format_scores(scores: FloatArray, decimals: int = SCORE_DECIMALS) -> list[str]:
    """ ",0.999000400"-style fields (a leading comma, fixed decimals) for scores in [0, 1].

    Digits are computed with numpy and the strings made in one `tolist`: about
    ten times faster than formatting a million floats one by one.
    """
    scale = 10**decimals
    quanta = np.rint(np.clip(scores, 0.0, 1.0) * scale).astype(np.int64)
    chars = np.empty((len(scores), decimals + 3), dtype="<u4")
    chars[:, 0] = ord(",")
    chars[:, 1] = ord("0") + quanta // scale
    chars[:, 2] = ord(".")
    rest = quanta % scale
    for k in range(decimals + 2, 2, -1):
        chars[:, k] = ord("0") + rest % 10
        rest //= 10
    text: list[str] = chars.view(f"<U{decimals + 3}").ravel().tolist()
    return text
