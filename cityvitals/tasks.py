"""Small asyncio helpers shared by every long-running service."""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import sys
import traceback
from typing import Any

log = logging.getLogger(__name__)


async def cancel_and_wait(task: asyncio.Future[Any] | None, *, again_after_s: float = 15.0) -> None:
    """Cancel a background task and wait until it has finished unwinding.

    Its own exception, if any, is not re-raised: the caller is stopping it.

    A task can swallow its cancellation without meaning to: on Python 3.11,
    `asyncio.wait_for` returns the result instead of raising when what it
    waits for finishes in the same instant as the cancel (aiomqtt's publish
    awaiting its PUBACK is one such wait). Waiting for that task would wait
    forever, and a stopping service would hang; so it is cancelled again
    every `again_after_s` until it ends, with a warning naming it. The default
    outlasts the bounded clean-ups our tasks do when cancelled (an MQTT
    disconnect, 10 s at most); a task with a longer one passes more.

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
    try:
        while not (await asyncio.wait({task}, timeout=again_after_s))[0]:
            log.warning(
                "task %s is still running %.0f s after it was cancelled; cancelling it again",
                task.get_name() if isinstance(task, asyncio.Task) else task,
                again_after_s,
            )
            task.cancel()
    except asyncio.CancelledError:
        task.cancel()  # the caller gives up waiting; the task still has to stop
        raise
    if not task.cancelled():
        task.exception()  # retrieved: the caller is stopping it, not asking


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


def dump_tasks(log: logging.Logger) -> int:
    """Log the stack of every task of the running loop and every thread; return how
    many tasks. For `kill -USR1` on a service that seems stuck: it says where each
    piece of work is waiting, without stopping anything.
    """
    out = io.StringIO()
    # Libraries run event loops of their own in threads (faust's Kafka consumer).
    loops = [asyncio.get_running_loop()]
    loops += [
        o
        for o in gc.get_objects()
        if isinstance(o, asyncio.AbstractEventLoop) and o.is_running() and o not in loops
    ]
    tasks = [t for loop in loops for t in sorted(asyncio.all_tasks(loop), key=_name)]
    for task in tasks:
        out.write(f"--- task {task.get_name()}\n")
        for where in _awaiting(task.get_coro()):
            out.write(f"  {where}\n")
    for ident, frame in sys._current_frames().items():
        out.write(f"--- thread {ident}\n")
        out.write("".join(traceback.format_stack(frame, limit=12)))
    log.warning("%d tasks; stacks follow\n%s", len(tasks), out.getvalue())
    return len(tasks)


def _name(task: asyncio.Task[Any]) -> str:
    return task.get_name()


def _awaiting(coro: Any, depth: int = 40) -> list[str]:
    """file:line (function) of each coroutine in the chain `coro` is awaiting, outermost
    first: `Task.print_stack` shows only the outermost frame of a suspended task."""
    out: list[str] = []
    while coro is not None and len(out) < depth:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            if out or not isinstance(coro, asyncio.Future):
                break
            out.append(repr(coro)[:200])
            break
        code = frame.f_code
        out.append(f"{code.co_filename}:{frame.f_lineno} ({code.co_name})")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return out
