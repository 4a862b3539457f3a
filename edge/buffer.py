"""The outbound buffer between a node driver and the MQTT publisher.

A message enters the buffer when a reading is taken and leaves it only when
the broker has acknowledged it (QoS 1 PUBACK). Messages handed to the
publisher but not yet acknowledged are "in flight"; if the connection drops
they go back to the head of the queue, in their original order, and are sent
again. The receiver drops the duplicates this can cause by (node, seq).

Two lanes: urgent messages (edge alarms, loss reports) are taken before any
queued telemetry, so an alarm is not stuck behind an hour of backlog.

`MemoryBuffer` keeps this promise for as long as the process lives;
`edge.queue.DurableQueue` keeps it across crashes and power loss.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Outbound:
    """One message waiting for the broker's acknowledgement."""

    topic: str
    payload: bytes
    node: str
    seq: int
    #: Position in the buffer; assigned by the buffer, orders resends.
    position: int = field(default=0, compare=False)
    #: Taken ahead of telemetry (edge alarms, loss reports); set by the buffer.
    urgent: bool = field(default=False, compare=False)


class OutboundBuffer(Protocol):
    async def put(self, message: Outbound, *, urgent: bool = False) -> bool:
        """Add a message; False if the buffer's overflow policy refused it."""
        ...

    async def take(self, limit: int) -> list[Outbound]:
        """Mark up to `limit` queued messages in flight, urgent ones first;
        waits for at least one."""
        ...

    def ack(self, message: Outbound) -> None:
        """The broker has it: forget it."""
        ...

    def requeue_in_flight(self) -> int:
        """The connection is gone: put every in-flight message back, in order."""
        ...

    def __len__(self) -> int:
        """Messages not yet acknowledged, queued or in flight."""
        ...

    async def wait_empty(self) -> None:
        """Return once every message put so far has been acknowledged."""
        ...


class MemoryBuffer:
    """A bounded in-memory `OutboundBuffer`.

    When full, `put` waits: a driver that outruns its uplink slows down
    rather than forgetting readings.

    >>> import asyncio
    >>> async def demo():
    ...     buf = MemoryBuffer(maxsize=10)
    ...     for seq in range(3):
    ...         await buf.put(Outbound("t", b"x", "n1", seq))
    ...     await buf.put(Outbound("t", b"alarm", "n1", 9), urgent=True)
    ...     alarm = (await buf.take(1))[0]
    ...     assert alarm.seq == 9            # the alarm goes first
    ...     buf.ack(alarm)
    ...     first = await buf.take(2)
    ...     buf.ack(first[0])
    ...     buf.requeue_in_flight()          # connection lost before seq 1 was acked
    ...     again = await buf.take(5)
    ...     return [m.seq for m in first], [m.seq for m in again], len(buf)
    >>> asyncio.run(demo())
    ([0, 1], [1, 2], 2)
    """

    def __init__(self, maxsize: int = 10_000) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self._maxsize = maxsize
        self._urgent: deque[Outbound] = deque()
        self._queued: deque[Outbound] = deque()
        self._in_flight: dict[int, Outbound] = {}
        self._positions = itertools.count()
        # Plain events, refreshed after every change: everything runs on one
        # event loop, so no lock is needed and ack() can stay synchronous.
        self._has_queued = asyncio.Event()
        self._has_room = asyncio.Event()
        self._empty = asyncio.Event()
        self._refresh()

    def __len__(self) -> int:
        return len(self._urgent) + len(self._queued) + len(self._in_flight)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def put(self, message: Outbound, *, urgent: bool = False) -> bool:
        # Alarms never wait for room: they are few, and late alarms are useless.
        while not urgent and len(self) >= self._maxsize:
            await self._has_room.wait()
        lane = self._urgent if urgent else self._queued
        lane.append(_at(message, next(self._positions), urgent=urgent))
        self._refresh()
        return True

    async def take(self, limit: int) -> list[Outbound]:
        while not (self._urgent or self._queued):
            await self._has_queued.wait()
        batch: list[Outbound] = []
        for lane in (self._urgent, self._queued):
            while lane and len(batch) < limit:
                message = lane.popleft()
                self._in_flight[message.position] = message
                batch.append(message)
        self._refresh()
        return batch

    def ack(self, message: Outbound) -> None:
        if self._in_flight.pop(message.position, None) is not None:
            self._refresh()

    def requeue_in_flight(self) -> int:
        back = sorted(self._in_flight.values(), key=lambda m: m.position)
        self._in_flight.clear()
        self._queued.extendleft(m for m in reversed(back) if not m.urgent)
        self._urgent.extendleft(m for m in reversed(back) if m.urgent)
        self._refresh()
        return len(back)

    async def wait_empty(self) -> None:
        while len(self):
            await self._empty.wait()

    def _refresh(self) -> None:
        for event, state in (
            (self._has_queued, bool(self._urgent or self._queued)),
            (self._has_room, len(self) < self._maxsize),
            (self._empty, len(self) == 0),
        ):
            if state:
                event.set()
            else:
                event.clear()


def _at(message: Outbound, position: int, *, urgent: bool) -> Outbound:
    return Outbound(message.topic, message.payload, message.node, message.seq, position, urgent)
