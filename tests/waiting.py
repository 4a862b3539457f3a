"""Waiting in tests for a condition that the code under test exposes no event for
(a queue's depth, a counter a thread bumps): checked between loop turns, with a
hard deadline that fails the test, never a sleep-and-hope."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

#: The first pause between checks, and the longest: quick waits end within a few
#: milliseconds, and a long wait on another process (a condition that re-reads its
#: log or its database) does not take a core from the servers it is waiting on.
FIRST_POLL_S = 0.005
MAX_POLL_S = 0.1


async def wait_until(
    condition: Callable[[], object], what: str = "the condition", *, deadline_s: float = 10.0
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    pause = FIRST_POLL_S
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {deadline_s:g} s waiting for {what}")
        await asyncio.sleep(pause)
        pause = min(pause * 1.5, MAX_POLL_S)
