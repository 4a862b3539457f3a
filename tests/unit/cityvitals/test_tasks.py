"""Stopping background tasks: cancel_and_wait must end even a task that swallows
its cancellation, since every service's stop waits on it."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest

from cityvitals.tasks import cancel_and_wait


async def test_a_task_that_swallows_one_cancellation_is_cancelled_again(caplog):
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.set()
        await asyncio.sleep(3600)  # the next period of a periodic job

    task = asyncio.create_task(stubborn(), name="heartbeat")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, "cityvitals.tasks"):
        async with asyncio.timeout(5):  # fails, not hangs, on a regression
            await cancel_and_wait(task, again_after_s=0.01)
    assert swallowed.is_set()
    assert task.cancelled()
    assert "task heartbeat is still running" in caplog.text


async def test_wait_for_finishing_in_the_instant_of_the_cancel():
    """What hung an edge agent's stop in CI: its heartbeat's publish (aiomqtt awaits
    the PUBACK with `asyncio.wait_for`) was acknowledged in the same loop step as
    the cancel. On 3.11, wait_for then returns the ack and the cancel is lost."""
    acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def heartbeat() -> None:
        await asyncio.wait_for(acked, 10)
        await asyncio.sleep(3600)

    task = asyncio.create_task(heartbeat())
    await asyncio.sleep(0)  # it waits for the ack now
    acked.set_result(None)
    async with asyncio.timeout(5):  # fails, not hangs, on a regression
        await cancel_and_wait(task, again_after_s=0.01)
    assert task.cancelled()


async def test_a_task_failing_as_it_stops_does_not_fail_the_stop():
    async def fails_on_cancel() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            raise RuntimeError("broken cleanup")

    task = asyncio.create_task(fails_on_cancel())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert isinstance(task.exception(), RuntimeError)


async def test_the_caller_cancelled_while_waiting_still_cancels_the_task():
    release = asyncio.Event()

    async def slow_cleanup() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await release.wait()

    task = asyncio.create_task(slow_cleanup())
    await asyncio.sleep(0)
    stopper = asyncio.create_task(cancel_and_wait(task))
    await asyncio.sleep(0)
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    await asyncio.sleep(0)
    assert task.done()  # its clean-up was cancelled too, as the caller gave up
    release.set()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12's wait_for keeps the cancel")
async def test_python_3_11_wait_for_does_lose_the_cancel():
    """The premise of the two tests above, so they keep testing something."""
    acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(asyncio.wait_for(acked, 10))
    await asyncio.sleep(0)
    acked.set_result(None)
    task.cancel()
    assert await task is None  # returned, not cancelled
