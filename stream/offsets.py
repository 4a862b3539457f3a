"""Which records of each Kafka partition the stream has made durable: our own ledger.

faust decides what to commit from its own book of acknowledged offsets, and
that book was seen to move past records the agents never received (around
rebalances, and after a worker was killed: a few to a few dozen readings per
partition, in Kafka, never processed, committed past). The stream therefore
keeps its own ledger of the next offset it must process on each partition,
and judges every batch against it:

- a record below the ledger's offset was handled already (a re-delivery): skip;
- a record above it means faust skipped the ones between: read them first;
- faust may commit a partition only up to the ledger's offset (`cap`); what
  it wanted beyond that is `overdue`, read and handled by a catch-up.

Pure book-keeping; reading Kafka is `stream.kafka_offsets`.

>>> ledger = OffsetLedger()
>>> ledger.start("readings-0", 10)
>>> steps, stale = ledger.plan([Record("readings-0", 9, b"a"), Record("readings-0", 12, b"b")])
>>> stale, steps[0]
(1, Missing(tp='readings-0', start=10, stop=12))
>>> ledger.processed([Record("readings-0", 10, b""), Record("readings-0", 11, b""), steps[1]])
>>> ledger.next_offset("readings-0"), ledger.cap("readings-0", 20)
(13, 13)
>>> ledger.overdue()
{'readings-0': (13, 20)}
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Record:
    """One record of a partition: where it is, its value and its key."""

    tp: Hashable
    offset: int
    value: bytes
    key: bytes = b""


@dataclass(frozen=True, slots=True)
class Missing:
    """Offsets [start, stop) of `tp` that were never handed to the stream."""

    tp: Hashable
    start: int
    stop: int


Step = Record | Missing


class OffsetLedger:
    """Per partition, the next offset the stream must process.

    A partition is unknown until `start` gives it the consumer group's
    committed offset; `forget` drops it when the partition is revoked (its
    next owner starts from the committed offset again).
    """

    def __init__(self) -> None:
        self._next: dict[Hashable, int] = {}
        # The highest offset faust asked to commit beyond the ledger's.
        self._wanted: dict[Hashable, int] = {}

    def knows(self, tp: Hashable) -> bool:
        return tp in self._next

    def next_offset(self, tp: Hashable) -> int | None:
        return self._next.get(tp)

    def start(self, tp: Hashable, offset: int) -> None:
        """Begin `tp` at `offset` (its committed offset); no-op if already known."""
        self._next.setdefault(tp, offset)

    def forget(self, tps: Iterable[Hashable]) -> None:
        for tp in tps:
            self._next.pop(tp, None)
            self._wanted.pop(tp, None)

    def plan(self, records: Iterable[Record]) -> tuple[list[Step], int]:
        """What to process, in order, for `records`, and how many were stale.

        Every partition in `records` must be known (`start` it first).

        >>> ledger = OffsetLedger()
        >>> ledger.start("p", 0)
        >>> ledger.plan([Record("p", 0, b"x"), Record("p", 1, b"y")])[0] == [
        ...     Record("p", 0, b"x"), Record("p", 1, b"y")]
        True
        """
        cursor: dict[Hashable, int] = {}
        steps: list[Step] = []
        stale = 0
        for record in records:
            expected = cursor.get(record.tp)
            if expected is None:
                expected = self._next[record.tp]
            if record.offset < expected:
                stale += 1
                continue
            if record.offset > expected:
                steps.append(Missing(record.tp, expected, record.offset))
            steps.append(record)
            cursor[record.tp] = record.offset + 1
        return steps, stale

    def processed(self, records: Iterable[Record]) -> None:
        """`records` are durable: move each known partition past them.

        A partition forgotten meanwhile (revoked during the batch) stays
        unknown: its next owner starts from the committed offset.
        """
        for record in records:
            expected = self._next.get(record.tp)
            if expected is not None and record.offset >= expected:
                self._next[record.tp] = record.offset + 1

    def cap(self, tp: Hashable, proposed: int) -> int | None:
        """The offset faust may commit for `tp` instead of `proposed`; None: none yet.

        >>> ledger = OffsetLedger()
        >>> ledger.cap("p", 5) is None, ledger.overdue()
        (True, {'p': (None, 5)})
        """
        expected = self._next.get(tp)
        if expected is None or proposed > expected:
            self._wanted[tp] = max(proposed, self._wanted.get(tp, 0))
        if expected is None:
            return None
        return min(proposed, expected)

    def overdue(self) -> dict[Hashable, tuple[int | None, int]]:
        """Partitions faust counts as handled beyond the ledger: (next, wanted).

        `next` is None for a partition the ledger does not know yet.
        """
        out: dict[Hashable, tuple[int | None, int]] = {}
        for tp, wanted in list(self._wanted.items()):
            expected = self._next.get(tp)
            if expected is not None and expected >= wanted:
                del self._wanted[tp]
                continue
            out[tp] = (expected, wanted)
        return out

    def give_up(self, tp: Hashable) -> None:
        """Stop chasing what faust wanted for `tp` (it is no longer ours)."""
        self._wanted.pop(tp, None)
