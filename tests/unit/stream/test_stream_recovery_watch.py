"""The recovery watchdog: a stalled table recovery ends the worker for a restart; a slow
one that keeps moving, or none at all, is left alone. faust's app is stood in for by the
three attributes the watchdog reads (no Kafka here); time is a fake clock."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

from stream.worker import RecoveryStalledError, watch_recovery


class FakeRecovery:
    def __init__(self, remaining: list[int]) -> None:
        self.remaining = remaining

    def active_remaining_total(self) -> int:
        return self.remaining[0] if len(self.remaining) == 1 else self.remaining.pop(0)


async def watch(app: SimpleNamespace, ticks: int) -> tuple[list[BaseException], float]:
    now = [0.0]
    stalls: list[BaseException] = []

    async def sleep(seconds: float) -> None:
        if now[0] >= ticks * 5:
            raise TimeoutError  # the test's horizon: stop watching
        now[0] += seconds

    with contextlib.suppress(TimeoutError):
        await watch_recovery(
            app, stall_s=60, every_s=5, clock=lambda: now[0], sleep=sleep, on_stall=stalls.append
        )
    return stalls, now[0]


async def test_a_recovery_stuck_with_records_left_ends_the_worker_after_the_stall_time():
    app = SimpleNamespace(in_recovery=True, tables=SimpleNamespace(recovery=FakeRecovery([42])))
    stalls, at = await watch(app, ticks=100)
    assert len(stalls) == 1
    assert isinstance(stalls[0], RecoveryStalledError)
    assert "no progress for 60 s with 42 changelog record(s)" in str(stalls[0])
    assert at == 65  # first look at 5 s, then 60 s without progress


async def test_a_slow_recovery_that_keeps_moving_is_left_alone():
    remaining = list(range(1000, 0, -10))  # ten records fewer every 5 s: 500 s of recovery
    app = SimpleNamespace(
        in_recovery=True, tables=SimpleNamespace(recovery=FakeRecovery(remaining))
    )
    stalls, _ = await watch(app, ticks=99)
    assert stalls == []


async def test_no_recovery_in_progress_is_never_a_stall():
    app = SimpleNamespace(in_recovery=False, tables=SimpleNamespace(recovery=FakeRecovery([7])))
    stalls, _ = await watch(app, ticks=100)
    assert stalls == []
