"""Waiting in tests for a condition that the code under test exposes no event for
(a queue's depth, a counter a thread bumps): checked between loop turns, with a
hard deadline that fails the test, never a sleep-and-hope."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_until(
    condition: Callable[[], object], what: str = "the condition", *, deadline_s: float = 10.0
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {deadline_s:g} s waiting for {what}")
        await asyncio.sleep(0.005)
