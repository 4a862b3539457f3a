"""The stream's offset ledger: every offset handled once, in order, and never committed early."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.offsets import Missing, OffsetLedger, Record

P0, P1 = ("readings", 0), ("readings", 1)


def fill(steps: list[Record | Missing], log: dict[object, list[int]]) -> list[Record]:
    """Resolve Missing steps the way the guard does: read them from the 'partition'."""
    out: list[Record] = []
    for step in steps:
        if isinstance(step, Missing):
            out += [
                Record(step.tp, o, b"") for o in range(step.start, step.stop) if o in log[step.tp]
            ]
        else:
            out.append(step)
    return out


def test_records_in_order_pass_straight_through_and_advance_the_ledger():
    ledger = OffsetLedger()
    ledger.start(P0, 5)
    batch = [Record(P0, 5, b"a"), Record(P0, 6, b"b")]
    steps, stale = ledger.plan(batch)
    assert (steps, stale) == (batch, 0)
    assert ledger.next_offset(P0) == 5, "planning alone must not move the ledger"
    ledger.processed(batch)
    assert ledger.next_offset(P0) == 7


def test_a_skipped_range_is_asked_for_in_its_place_per_partition():
    ledger = OffsetLedger()
    ledger.start(P0, 0)
    ledger.start(P1, 10)
    steps, _ = ledger.plan([Record(P1, 13, b""), Record(P0, 0, b""), Record(P0, 4, b"")])
    assert steps == [
        Missing(P1, 10, 13),
        Record(P1, 13, b""),
        Record(P0, 0, b""),
        Missing(P0, 1, 4),
        Record(P0, 4, b""),
    ]


def test_redelivered_records_are_counted_stale_and_left_out():
    ledger = OffsetLedger()
    ledger.start(P0, 0)
    ledger.processed([Record(P0, 0, b""), Record(P0, 1, b"")])
    steps, stale = ledger.plan([Record(P0, 0, b""), Record(P0, 1, b""), Record(P0, 2, b"")])
    assert (steps, stale) == ([Record(P0, 2, b"")], 2)


def test_commits_never_pass_the_ledger_and_what_faust_wanted_beyond_is_overdue():
    ledger = OffsetLedger()
    assert ledger.cap(P0, 8) is None, "nothing known: nothing may be committed"
    ledger.start(P0, 3)
    assert ledger.cap(P0, 2) == 2
    assert ledger.cap(P0, 8) == 3
    assert ledger.overdue() == {P0: (3, 8)}
    ledger.processed([Record(P0, o, b"") for o in range(3, 8)])
    assert ledger.overdue() == {}, "caught up: nothing left to chase"
    assert ledger.cap(P0, 8) == 8


def test_a_revoked_partition_is_forgotten_even_if_a_batch_of_it_finishes_later():
    ledger = OffsetLedger()
    ledger.start(P0, 0)
    ledger.cap(P0, 4)
    ledger.forget([P0])
    ledger.processed([Record(P0, 0, b"")])
    assert not ledger.knows(P0)
    assert ledger.overdue() == {}
    ledger.start(P0, 2)
    assert ledger.next_offset(P0) == 2


def test_give_up_drops_what_faust_wanted_for_a_partition():
    ledger = OffsetLedger()
    ledger.cap(P0, 4)
    ledger.give_up(P0)
    assert ledger.overdue() == {}


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    sizes=st.tuples(st.integers(0, 40), st.integers(0, 40)),
    committed=st.tuples(st.integers(0, 5), st.integers(0, 5)),
)
def test_whatever_faust_drops_or_repeats_every_offset_is_handled_once_in_order(
    data, sizes, committed
):
    """faust hands over batches with records dropped, repeated and re-delivered from
    the committed offset; plan + fill + processed + overdue handle each offset of each
    partition exactly once, in offset order."""
    log = {P0: list(range(sizes[0])), P1: list(range(sizes[1]))}
    ledger = OffsetLedger()
    handled: dict[object, list[int]] = {P0: [], P1: []}
    for tp, c in zip((P0, P1), committed, strict=True):
        ledger.start(tp, min(c, len(log[tp])))
        handled[tp] = list(range(min(c, len(log[tp]))))  # handled before this worker
    # What faust hands over: per partition, the log from some point, with drops and repeats.
    deliveries: list[Record] = []
    for tp in (P0, P1):
        for offset in log[tp]:
            copies = data.draw(st.sampled_from([0, 1, 1, 1, 2]), label=f"copies {tp} {offset}")
            deliveries += [Record(tp, offset, b"")] * copies
    cut = data.draw(st.lists(st.integers(0, max(len(deliveries), 1)), max_size=5), label="cuts")
    bounds = [0, *sorted(cut), len(deliveries)]
    for lo, hi in itertools.pairwise(bounds):
        steps, _ = ledger.plan(deliveries[lo:hi])
        records = fill(steps, log)
        for r in records:
            handled[r.tp].append(r.offset)
        ledger.processed(records)
    # faust then acknowledges the whole log; the catch-up reads what is still missing.
    for tp in (P0, P1):
        ledger.cap(tp, len(log[tp]))
    for tp, (nxt, wanted) in ledger.overdue().items():
        assert nxt is not None
        records = fill([Missing(tp, nxt, wanted)], log)
        handled[tp] += [r.offset for r in records]
        ledger.processed(records)
    assert handled == log
    assert ledger.overdue() == {}
