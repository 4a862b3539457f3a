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
