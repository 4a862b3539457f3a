"""Offline replay: the detectors and rules over a CSV of history, one output row per input row.

For backtesting rules and tuning detectors on history: what score would
each reading have had, and which warnings would have been up? The input is
one series (one node) with a timestamp column and one or more value
columns; the output is the input, row for row and in order, with for each
value column its anomaly score and the detector that found the reading
oddest, then the highest warning level of any rule at that row and the
rules at that level. `docs/replay.md` has the format and the numbers.

It is the live code run over arrays: the kind's `default_scorer` through
`score_learn_many` (equal to the per-reading loop, docs/detectors.md), and
threshold and anomaly rules through `stream.replay_rules`, and rate,
forecast and composite rules through `stream.replay_trends` (their Theil-Sen
windows fitted for a whole block at once); both give the levels
`RuleEngine.evaluate` gives row by row. Only a composite rule with two rising
conditions on one metric goes through its own `evaluate`, a reading at a time.

The file is read, scored and written in blocks (`stream.replay_csv`), so
memory stays flat whatever its length; detector and rule states carry from
one block to the next.

>>> import pathlib, tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     source, target = pathlib.Path(d) / "in.csv", pathlib.Path(d) / "out.csv"
...     rows = [f"{1_764_028_800 + 600 * i},{3.0 + (i % 7) / 10:.1f}" for i in range(200)]
...     rows += [f"{1_764_028_800 + 600 * (200 + i)},{60 + i}" for i in range(3)]
...     _ = source.write_text("timestamp,depth\\n" + "\\n".join(rows) + "\\n")
...     summary = replay(source, target, ReplayOptions(kind="water_level",
...                                                    value_columns=("depth",)))
...     lines = target.read_text().splitlines()
>>> lines[0]
'timestamp,depth,anomaly_score,detector,level,rules'
>>> lines[-1]
'1764150000,62,0.999846224,shift,red,water_level.depth'
>>> summary.rows, summary.by_level["red"], summary.rules
(203, 2, ('water_level.depth',))
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TextIO

import numpy as np
import numpy.typing as npt

from cityvitals.kinds import KIND_METRICS, Kind
from cityvitals.levels import Level
from stream.detectors import KIND_DEFAULTS, AnomalyScorer, ScoredSeries, ScorerState
from stream.replay_csv import (
    BLOCK_CHARS,
    BadRowError,
    Block,
    BoolArray,
    FloatArray,
    Header,
    IntArray,
    ReplayError,
    TimestampParser,
    format_scores,
    parse_values,
    read_blocks,
    read_header,
)
from stream.replay_rules import EngineTrack, LevelArray, StepsTrack
from stream.replay_trends import CompositeTrack, ForecastTrack, RateTrack, TrendWindows
from stream.rules import (
    DEFAULT_RULES,
    AnomalyRule,
    AnyRule,
    AreaRule,
    CompositeRule,
    ForecastRule,
    LevelThresholds,
    RateRule,
    Rule,
    Steps,
    ThresholdRule,
    scorer_for,
)

TrendTrack = RateTrack | ForecastTrack | CompositeTrack

__all__ = [
    "GENERIC_LEVELS",
    "GENERIC_STEPS",
    "KINDS",
    "BadRowError",
    "ReplayError",
    "ReplayOptions",
    "ReplaySummary",
    "replay",
]

#: What `--kind` accepts: a sensor kind, or "generic" (detectors only, no rules).
KINDS: Final = ("generic", *(k.value for k in Kind))
#: For `generic`, where no rules apply: the level of each value column's score.
GENERIC_LEVELS: Final = {
    Level.BLUE: 0.999,
    Level.YELLOW: 0.9999,
    Level.ORANGE: 0.99999,
    Level.RED: 0.999999,
}
GENERIC_STEPS: Final = Steps(raise_after=3, clear_after=3)
_LABELS: Final = tuple(level.label for level in Level)
#: Rules per kind a row's `rules` field can name through an int64 bit mask.
_MASK_BITS: Final = 56


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """What to replay. `rules=None` means the built-in rules of `kind` (none for
    "generic"); `metrics` name what each value column is, in order (default: a
    column named like a metric of the kind is that metric; a single other
    column is the kind's main metric, depth_cm for water_level)."""

    kind: str = "generic"
    rules: tuple[AnyRule, ...] | None = None
    timestamp_column: str = "timestamp"
    value_columns: tuple[str, ...] = ("value",)
    metrics: tuple[str, ...] = ()
    utc_offset_minutes: int = 0
    #: Write bad rows (empty score, `bad` = 1) instead of stopping at the first.
    skip_bad: bool = False
    block_chars: int = BLOCK_CHARS
    metric_names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        columns = (self.timestamp_column, *self.value_columns)
        if not self.value_columns or len(set(columns)) != len(columns):
            raise ValueError(
                "give at least one value column, each once, none of them the timestamp column"
            )
        if self.kind == "generic" and self.rules:
            raise ValueError(
                "rules need a sensor kind: with --kind generic no rules apply, and the level "
                "comes from the anomaly score alone"
            )
        if self.block_chars < 1:
            raise ValueError("block_chars must be positive")
        object.__setattr__(self, "metric_names", self._metric_names())

    def _metric_names(self) -> tuple[str, ...]:
        if self.kind == "generic":
            if self.metrics and len(self.metrics) != len(self.value_columns):
                raise ValueError("give one metric per value column, or none")
            return self.metrics or self.value_columns
        known = KIND_METRICS[Kind(self.kind)]
        if self.metrics:
            if len(self.metrics) != len(self.value_columns):
                raise ValueError("give one metric per value column, or none")
            names = self.metrics
        elif len(self.value_columns) == 1 and self.value_columns[0] not in known:
            names = (KIND_DEFAULTS[self.kind].metric,)
        else:
            names = self.value_columns
        for name in names:
            if name not in known:
                raise ValueError(
                    f"{name!r} is not a metric of {self.kind} ({', '.join(sorted(known))}); "
                    f"name each value column's metric"
                )
        if len(set(names)) != len(names):
            raise ValueError(f"each value column must be a different metric, got {names}")
        return names


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    rows: int
    bad: int
    #: Rows whose timestamp is earlier than the row before (among good rows).
    backwards: int
    #: Rows per level label ("none" .. "red"), by the row's highest level.
    by_level: dict[str, int]
    seconds: float
    #: Rules applied (with `generic`: one per value column, "anomaly.<column>").
    rules: tuple[str, ...]
    #: Of those, the ones evaluated a reading at a time (rate, forecast, composite).
    slow_rules: tuple[str, ...]
    #: Rules of the kind that could not apply, and why.
    skipped: tuple[tuple[str, str], ...]

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")

    def line(self) -> str:
        """The one-line summary the command prints."""
        levels = ", ".join(f"{label} {self.by_level[label]:,}" for label in _LABELS)
        return (
            f"{self.rows:,} rows in {self.seconds:.2f} s ({self.rows_per_s:,.0f} rows/s); "
            f"rows per level: {levels}; bad rows {self.bad:,}; "
            f"timestamps going backwards {self.backwards:,}"
        )


def replay(
    source: Path,
    out: Path,
    options: ReplayOptions | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> ReplaySummary:
    """Replay the CSV at `source` into `out` (written whole or not at all).

    `progress(done, total)` is called after each block, in bytes of `source`.
    A missing column, or a bad row without `skip_bad`, is a `ReplayError`.
    """
    options = options or ReplayOptions()
    if out.resolve() == source.resolve():
        raise ReplayError(source, "the output must be another file than the input")
    started = time.perf_counter()
    header = read_header(source)
    plan = _Plan.build(header, options)
    total = source.stat().st_size
    tick = None if progress is None else (lambda done: progress(done, total))
    # Millions of short-lived strings and no reference cycles: the cyclic
    # collector would walk them again and again for nothing (measured: CSV
    # reading took twice as long with it on).
    collecting = gc.isenabled()
    gc.disable()
    try:
        with _atomic_text(out) as f:
            f.write(header.text + plan.header_suffix() + "\n")
            for block in read_blocks(
                header, plan.wanted, block_chars=options.block_chars, progress=tick
            ):
                if len(block):
                    plan.write(f, block)
    except OSError as exc:  # reading errors are ReplayErrors already: this is the output
        raise ReplayError(out, f"cannot write the output ({exc})") from exc
    finally:
        if collecting:
            gc.enable()
    return plan.summary(time.perf_counter() - started)


@contextmanager
def _atomic_text(path: Path) -> Iterator[TextIO]:
    """A text file at `path` that appears only once written whole: a temp file beside
    it, renamed on success, removed on failure (no half-written backtest)."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            yield f
        Path(name).replace(path)
    finally:
        Path(name).unlink(missing_ok=True)


@dataclass(slots=True)
class _Source:
    """One scorer over one value column, and its state carried across blocks."""

    scorer: AnomalyScorer
    column: int
    state: ScorerState


@dataclass(slots=True)
class _Track:
    """A rule with an array path: its numbers are a column's values or a source's scores."""

    steps: StepsTrack
    column: int
    source: _Source | None


@dataclass(slots=True)
class _Plan:
    """What replay does with each block: parsers, scorers, rules, and the tallies."""

    header: Header
    options: ReplayOptions
    wanted: list[int]
    outputs: list[_Source]
    tracks: list[_Track]
    trends: list[TrendTrack]
    engine: EngineTrack | None
    rule_names: list[str]
    skipped: list[tuple[str, str]]
    windows: TrendWindows = field(default_factory=TrendWindows)
    parse_ts: TimestampParser = field(default_factory=TimestampParser)
    last_ts: int | None = None
    carry: tuple[int, int] = (0, 0)  # the last row's (level, rules mask)
    rows: int = 0
    bad: int = 0
    backwards: int = 0
    by_level: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(5, dtype=np.int64))
    tails: dict[int, str] = field(default_factory=dict)

    @classmethod
    def build(cls, header: Header, options: ReplayOptions) -> _Plan:
        wanted = [header.index(options.timestamp_column)]
        wanted += [header.index(column) for column in options.value_columns]
        metrics = options.metric_names
        sources: dict[tuple[AnomalyScorer, int], _Source] = {}

        def source(scorer: AnomalyScorer, column: int) -> _Source:
            key = (scorer, column)
            if key not in sources:
                sources[key] = _Source(scorer, column, scorer.new_state())
            return sources[key]

        kind = "generic" if options.kind == "generic" else Kind(options.kind)
        outputs = [
            source(scorer_for(kind, metric, utc_offset_minutes=options.utc_offset_minutes), column)
            for column, metric in enumerate(metrics)
        ]
        tracks: list[_Track] = []
        names: list[str] = []
        trends: list[TrendTrack] = []
        slow: list[Rule] = []
        skipped: list[tuple[str, str]] = []
        if kind == "generic":
            levels = LevelThresholds.of(GENERIC_LEVELS, what="generic")
            for column, name in enumerate(options.value_columns):
                names.append(f"anomaly.{name}")
                track = StepsTrack(names[-1], levels, 0.0, GENERIC_STEPS)
                tracks.append(_Track(track, column, outputs[column]))
        else:
            chosen = DEFAULT_RULES if options.rules is None else options.rules
            for rule in (r for r in chosen if r.kind is kind):
                if isinstance(rule, AreaRule):
                    skipped.append((rule.name, "it is an area rule, and a CSV is one node"))
                    continue
                why = _why_not(rule, metrics)
                if why:
                    skipped.append((rule.name, why))
                    continue
                column = metrics.index(rule.metric)
                if isinstance(rule, ThresholdRule | AnomalyRule):
                    tracks.append(_array_track(rule, column, source))
                    names.append(rule.name)
                elif (trend := _trend_track(rule)) is not None:
                    trends.append(trend)
                else:
                    slow.append(rule)
        names += [trend.name for trend in trends]
        names += [rule.name for rule in slow]
        if len(names) > _MASK_BITS:
            raise ValueError(
                f"replay applies at most {_MASK_BITS} rules to one series, got {len(names)}"
            )
        engine = EngineTrack(kind, slow) if slow and isinstance(kind, Kind) else None
        plan = cls(header, options, wanted, outputs, tracks, trends, engine, names, skipped)
        clash = set(plan.added_columns()) & set(header.names)
        if clash:
            raise ReplayError(
                header.path,
                "the input already has this column (is it replay's own output?); rename it",
                column=sorted(clash)[0],
            )
        return plan

    # -- output layout ---------------------------------------------------------

    def added_columns(self) -> list[str]:
        values = self.options.value_columns
        if len(values) == 1:
            added = ["anomaly_score", "detector"]
        else:
            added = [f"{v}.{what}" for v in values for what in ("anomaly_score", "detector")]
        added += ["level", "rules"]
        return [*added, "bad"] if self.options.skip_bad else added

    def header_suffix(self) -> str:
        return "".join("," + _quoted(name) for name in self.added_columns())

    # -- one block -------------------------------------------------------------

    def write(self, out: TextIO, block: Block) -> None:
        size = len(block)
        ts, bad = self.parse_ts(block.columns[0])
        values: list[FloatArray] = []
        value_bad: list[BoolArray] = []
        for texts in block.columns[1:]:
            parsed, wrong = parse_values(texts)
            values.append(parsed)
            value_bad.append(wrong)
        bad = bad | np.logical_or.reduce(value_bad)
        if block.malformed:
            bad[list(block.malformed)] = True
        if bad.any() and not self.options.skip_bad:
            raise self._error(block, int(np.argmax(bad)), value_bad)
        good = ~bad
        everything = not bad.any()
        g_ts = ts if everything else ts[good]
        g_values = values if everything else [v[good] for v in values]
        self._count_backwards(g_ts)
        scored = {
            id(s): s.scorer.score_learn_many(s.state, g_values[s.column], g_ts)
            for s in self._sources()
        }
        level, mask = self._levels(g_values, g_ts, scored)
        # Bad rows carry the level of the row before: nothing was evaluated there.
        if not everything:
            at = np.cumsum(good) - 1
            level = np.concatenate(([self.carry[0]], level)).astype(np.int8)[at + 1]
            mask = np.concatenate(([self.carry[1]], mask))[at + 1]
        if size:
            self.carry = (int(level[-1]), int(mask[-1]))
        self.rows += size
        self.bad += int(bad.sum())
        self.by_level += np.bincount(level, minlength=5)
        parts: list[list[str]] = [block.lines]
        for output in self.outputs:
            parts += self._score_fields(scored[id(output)], good, everything)
        parts.append(self._tail_fields(level, mask, bad))
        out.write("\n".join(map("".join, zip(*parts, strict=True))))
        out.write("\n")

    def _sources(self) -> Iterable[_Source]:
        seen: dict[int, _Source] = {}
        for s in [*self.outputs, *(t.source for t in self.tracks if t.source is not None)]:
            seen.setdefault(id(s), s)
        return seen.values()

    def _count_backwards(self, ts: IntArray) -> None:
        if not len(ts):
            return
        earlier = int((ts[1:] < ts[:-1]).sum())
        if self.last_ts is not None and ts[0] < self.last_ts:
            earlier += 1
        self.backwards += earlier
        self.last_ts = int(ts[-1])

    def _levels(
        self, values: list[FloatArray], ts: IntArray, scored: dict[int, ScoredSeries]
    ) -> tuple[LevelArray, npt.NDArray[np.int64]]:
        """Per good row: the highest level of any rule, and a bit mask of the rules there."""
        per_rule: list[LevelArray] = []
        for track in self.tracks:
            numbers = (
                values[track.column] if track.source is None else scored[id(track.source)].score
            )
            per_rule.append(track.steps.advance(numbers, ts))
        metrics = dict(zip(self.options.metric_names, values, strict=True))
        self.windows.block(metrics, ts)
        per_rule += [trend.advance(metrics, ts, self.windows) for trend in self.trends]
        if self.engine is not None:
            per_rule += self.engine.advance(metrics, ts)
        if not per_rule:
            return np.zeros(len(ts), dtype=np.int8), np.zeros(len(ts), dtype=np.int64)
        stack = np.vstack(per_rule)
        level: LevelArray = stack.max(axis=0)
        at_top = (stack == level) & (level > 0)
        weights = np.left_shift(np.int64(1), np.arange(len(per_rule), dtype=np.int64))
        mask: npt.NDArray[np.int64] = weights @ at_top.astype(np.int64)
        return level, mask

    def _score_fields(
        self, series: ScoredSeries, good: BoolArray, everything: bool
    ) -> list[list[str]]:
        names = np.array([f",{name}" for name in series.names], dtype=object)
        scores = format_scores(series.score)
        worst = names[np.argmin(series.parts, axis=1)] if len(series.p) else names[:0]
        if everything:
            return [scores, worst.tolist()]
        full_scores = np.full(len(good), ",", dtype=object)
        full_scores[good] = scores
        full_worst = np.full(len(good), ",", dtype=object)
        full_worst[good] = worst
        return [full_scores.tolist(), full_worst.tolist()]

    def _tail_fields(
        self, level: LevelArray, mask: npt.NDArray[np.int64], bad: BoolArray
    ) -> list[str]:
        code = mask * 8 + level.astype(np.int64)
        if self.options.skip_bad:
            code = code * 2 + bad
        keys, inverse = np.unique(code, return_inverse=True)
        table = np.array([self._tail(int(k)) for k in keys], dtype=object)
        tails: list[str] = table[inverse].tolist()
        return tails

    def _tail(self, code: int) -> str:
        text = self.tails.get(code)
        if text is None:
            rest = code
            bad = ""
            if self.options.skip_bad:
                bad, rest = ("," + str(rest & 1)), rest >> 1
            level, mask = rest & 7, rest >> 3
            names = [n for i, n in enumerate(self.rule_names) if mask >> i & 1]
            text = self.tails[code] = f",{_LABELS[level]},{';'.join(names)}{bad}"
        return text

    def _error(self, block: Block, row: int, value_bad: list[BoolArray]) -> ReplayError:
        """What is wrong with the first bad row of `block`, and where."""
        path, line = self.header.path, block.line_of(row)
        if row in block.malformed:
            return BadRowError(path, block.malformed[row], line=line)
        for texts, wrong, column in zip(
            block.columns[1:], value_bad, self.options.value_columns, strict=True
        ):
            if wrong[row]:
                return BadRowError(
                    path,
                    f"expected a finite number, found {texts[row]!r}",
                    line=line,
                    column=column,
                )
        expected = {
            None: "an ISO 8601 time or epoch seconds or milliseconds",
            "epoch": "epoch seconds or milliseconds, as the column began",
            "iso": "an ISO 8601 time, as the column began",
        }[self.parse_ts.mode]
        return BadRowError(
            path,
            f"expected {expected}, found {block.columns[0][row]!r}",
            line=line,
            column=self.options.timestamp_column,
        )

    def summary(self, seconds: float) -> ReplaySummary:
        return ReplaySummary(
            rows=self.rows,
            bad=self.bad,
            backwards=self.backwards,
            by_level=dict(zip(_LABELS, self.by_level.tolist(), strict=True)),
            seconds=seconds,
            rules=tuple(self.rule_names),
            slow_rules=tuple(r.name for r in self.engine.rules) if self.engine else (),
            skipped=tuple(self.skipped),
        )


def _why_not(rule: Rule, metrics: tuple[str, ...]) -> str:
    """Why a rule of the replayed kind cannot apply; "" when it can."""
    if not rule.selector.everything:
        return "it has a `where` selector, and replay has no registry placement"
    needed = [c.metric for c in getattr(rule, "conditions", ())] or [rule.metric]
    missing = [m for m in needed if m not in metrics]
    if missing:
        return f"it reads {', '.join(missing)}, which no value column is"
    return ""


def _array_track(
    rule: ThresholdRule | AnomalyRule, column: int, source: Callable[[AnomalyScorer, int], _Source]
) -> _Track:
    if isinstance(rule, AnomalyRule):
        steps = StepsTrack(rule.name, rule.levels, rule.band, rule.steps)
        return _Track(steps, column, source(rule.scorer, column))
    levels = LevelThresholds.of(rule.thresholds, what=rule.name)
    steps_ = Steps(rule.raise_after, rule.clear_after, rule.min_duration_s)
    return _Track(StepsTrack(rule.name, levels, rule.band, steps_), column, None)


def _trend_track(rule: Rule) -> TrendTrack | None:
    """The array path of a rate, forecast or composite rule; None: evaluate it per reading."""
    if isinstance(rule, RateRule):
        return RateTrack(rule)
    if isinstance(rule, ForecastRule):
        return ForecastTrack(rule)
    if isinstance(rule, CompositeRule) and CompositeTrack.supports(rule):
        return CompositeTrack(rule)
    return None


def _quoted(name: str) -> str:
    if any(c in name for c in ',"\n\r'):
        return '"' + name.replace('"', '""') + '"'
    return name
