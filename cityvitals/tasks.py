"""Small asyncio helpers shared by every long-running service."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait until it has finished unwinding.

    Its own exception, if any, is not re-raised: the caller is stopping it.

    >>> async def demo():
    ...     task = asyncio.create_task(asyncio.sleep(3600))
    ...     await cancel_and_wait(task)
    ...     return task.cancelled()
    >>> asyncio.run(demo())
    True
    """
    if task is None:
        return
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def notify(event: asyncio.Event) -> asyncio.Event:
    """Wake everyone waiting on `event` and return its fresh replacement.

    For "something changed" signals: a waiter takes the current event, checks
    its condition, then waits; since an event is replaced rather than cleared,
    a change between the check and the wait cannot be missed.

    >>> async def demo():
    ...     changed = asyncio.Event()
    ...     old, changed = changed, notify(changed)
    ...     return old.is_set(), changed.is_set()
    >>> asyncio.run(demo())
    (True, False)
    """
    event.set()
    return asyncio.Event()
