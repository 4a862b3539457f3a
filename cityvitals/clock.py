"""Clocks, injectable everywhere time matters.

Services never call `time.time()` directly: they take a `Clock`, so tests
drive time by hand and the demo can compress a simulated day into a minute.

>>> clock = ManualClock(1_000.0)
>>> clock.advance(2.5)
>>> clock.now(), clock.now_ms()
(1002.5, 1002500)
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch (UTC)."""
        ...

    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch (UTC)."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def now_ms(self) -> int:
        return round(self._now * 1000)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._now += seconds

    def set(self, when: float) -> None:
        self._now = when


class EventClock:
    """Event time: now is the time of the event being handled, set by whoever hands
    events on, one at a time.

    The demo plays a day in a minute, or as fast as the pipeline goes, so the
    wall clock says nothing about how long an alert went unanswered; the time
    of the warning being handled does. It may go back: events from different
    nodes arrive in no global order.

    >>> clock = EventClock()
    >>> clock.at(1_764_028_800_000)
    >>> clock.now_ms(), clock.now()
    (1764028800000, 1764028800.0)
    """

    def __init__(self, start_ms: int = 0) -> None:
        self._ms = start_ms

    def now(self) -> float:
        return self._ms / 1000

    def now_ms(self) -> int:
        return self._ms

    def at(self, ts_ms: int) -> None:
        self._ms = ts_ms
