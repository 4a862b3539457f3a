"""The outbound buffer: nothing leaves before its acknowledgement, order survives resends."""

from __future__ import annotations

import asyncio

import pytest

from edge.buffer import MemoryBuffer, Outbound


def msg(seq: int, node: str = "n1") -> Outbound:
    return Outbound(topic=f"city/smoke/{node}/telemetry", payload=b"{}", node=node, seq=seq)


async def test_take_marks_in_flight_and_ack_removes():
    """A taken message counts as pending until acked; acking empties the buffer."""
    buf = MemoryBuffer(maxsize=10)
    for s in range(3):
        await buf.put(msg(s))
    taken = await buf.take(10)
    assert [m.seq for m in taken] == [0, 1, 2]
    assert len(buf) == 3
    assert buf.in_flight == 3
    for m in taken:
        buf.ack(m)
    assert len(buf) == 0
    await asyncio.wait_for(buf.wait_empty(), 1)


async def test_requeue_puts_unacked_back_at_the_head_in_order():
    """On connection loss, unacked messages are resent first and in their original order."""
    buf = MemoryBuffer()
    for s in range(5):
        await buf.put(msg(s))
    first = await buf.take(3)  # 0, 1, 2 in flight
    buf.ack(first[1])  # only 1 acknowledged
    assert buf.requeue_in_flight() == 2
    again = await buf.take(10)
    assert [m.seq for m in again] == [0, 2, 3, 4]


async def test_ack_is_idempotent_and_ignores_requeued():
    """A late ack for a message already requeued does not remove the requeued copy twice."""
    buf = MemoryBuffer()
    await buf.put(msg(0))
    (m,) = await buf.take(1)
    buf.ack(m)
    buf.ack(m)
    assert len(buf) == 0


async def test_put_waits_when_full_instead_of_dropping():
    """A full buffer makes the producer wait; an ack makes room; nothing is lost."""
    buf = MemoryBuffer(maxsize=2)
    await buf.put(msg(0))
    await buf.put(msg(1))
    blocked = asyncio.create_task(buf.put(msg(2)))
    await asyncio.sleep(0)  # let it run up to its wait
    assert not blocked.done()
    (m0, m1) = await buf.take(2)
    buf.ack(m0)
    await asyncio.wait_for(blocked, 1)
    buf.ack(m1)
    (m2,) = await buf.take(5)
    assert m2.seq == 2


async def test_take_waits_for_work():
    """take() blocks until something is put."""
    buf = MemoryBuffer()
    waiter = asyncio.create_task(buf.take(4))
    await asyncio.sleep(0)
    assert not waiter.done()
    await buf.put(msg(7))
    assert [m.seq for m in await asyncio.wait_for(waiter, 1)] == [7]


def test_maxsize_must_be_positive():
    """A zero-sized buffer is a configuration error, not a silent drop-everything."""
    with pytest.raises(ValueError, match="maxsize"):
        MemoryBuffer(maxsize=0)


async def test_publisher_flush_refuses_when_not_running():
    """flush() on a publisher that is not running fails at once instead of waiting forever."""
    from cityvitals.config import BrokerSettings
    from edge.publisher import EdgePublisher

    publisher = EdgePublisher(BrokerSettings(port=1), agent_id="a1", nodes=[])
    with pytest.raises(RuntimeError, match="not running"):
        await publisher.flush()
