"""The alert service: a bounded queue of warnings, one worker, deliveries with retry.

    async with AlertService([console, webhook], clock=SystemClock()) as alerts:
        await alerts.submit(warning)      # waits while the queue is full
        ...
        await alerts.drain()              # everything so far processed and delivered

One worker takes warnings in order, folds each into the `AlertBook` and hands
the notification to every notifier at once. The next warning waits until every
receiver has succeeded or given up, so a receiver never sees "resolved" before
the "firing" it resolves. The price is head-of-line blocking behind a slow
receiver; the persisted outbox planned for later removes it without giving up
the order. Nothing is dropped: a full queue makes `submit` wait.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Final, Literal, Self

import msgspec

from alerts.book import AlertBook
from alerts.model import Notification
from alerts.notify import Notifier
from cityvitals.clock import Clock
from cityvitals.contract import Warning
from cityvitals.errors import DeliveryError

log = logging.getLogger(__name__)

Outcome = Literal["delivered", "failed"]
OnNotification = Callable[[Notification], Awaitable[None]]
#: (notification, receiver name, outcome, detail)
OnDelivery = Callable[[Notification, str, Outcome, str], Awaitable[None]]

_DEFAULT_DRAIN_TIMEOUT: Final = 10.0


class AlertStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counters since start; `delivered` and `failed` count (notification, receiver) pairs."""

    warnings_received: int
    notifications: int
    delivered: int
    failed: int


class AlertService:
    """Turns submitted warnings into alerts and delivers their notifications.

    An async context manager: entering starts the worker; leaving waits up to
    `drain_timeout` seconds for the queue to empty, then cancels the worker.
    Stopping on SIGTERM is the caller's job (leave the `async with`).

    Retryable failures (`DeliveryError.retryable`) are tried up to `attempts`
    times in all, waiting a random time in ``[0, min(max_delay, base_delay *
    2**(n-1))]`` before retry n ("full jitter", so receivers coming back are
    not hit by every sender in lock step). Anything else fails at once.
    Failures are counted, logged one line each and reported to `on_delivery`;
    they never stop the worker.
    """

    def __init__(
        self,
        notifiers: Sequence[Notifier],
        *,
        clock: Clock,
        queue_size: int = 1000,
        attempts: int = 5,
        base_delay: float = 0.2,
        max_delay: float = 5.0,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_notification: OnNotification | None = None,
        on_delivery: OnDelivery | None = None,
        drain_timeout: float = _DEFAULT_DRAIN_TIMEOUT,
    ) -> None:
        names = [n.name for n in notifiers]
        if len(set(names)) != len(names):
            # Delivery reports are keyed by receiver name; duplicates would be ambiguous.
            raise ValueError(f"notifier names must be unique, got {names}")
        if queue_size < 1 or attempts < 1:
            raise ValueError("queue_size and attempts must be at least 1")
        if base_delay < 0 or max_delay < base_delay:
            raise ValueError("need 0 <= base_delay <= max_delay")
        self._notifiers = tuple(notifiers)
        self._clock = clock
        self._attempts = attempts
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._rng = rng if rng is not None else random.Random()
        self._sleep = sleep
        self._on_notification = on_notification
        self._on_delivery = on_delivery
        self._drain_timeout = drain_timeout
        self._queue: asyncio.Queue[Warning] = asyncio.Queue(maxsize=queue_size)
        self._book = AlertBook()
        self._received = self._notifications = self._delivered = self._failed = 0
        self._worker: asyncio.Task[None] | None = None

    @property
    def book(self) -> AlertBook:
        """The live alert book; read it, do not apply warnings to it directly."""
        return self._book

    def stats(self) -> AlertStats:
        """A snapshot of the counters."""
        return AlertStats(
            warnings_received=self._received,
            notifications=self._notifications,
            delivered=self._delivered,
            failed=self._failed,
        )

    async def __aenter__(self) -> Self:
        if self._worker is not None:
            raise RuntimeError("AlertService is already running")
        self._worker = asyncio.create_task(self._run(), name="alerts-worker")
        log.info("alert service started with receivers %s", [n.name for n in self._notifiers])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        try:
            # Flush what we hold even when the body failed: alerts are the point.
            await asyncio.wait_for(self._queue.join(), self._drain_timeout)
        except TimeoutError:
            log.warning(
                "alert service stopping with %d warning(s) unprocessed after %.1f s drain",
                self._queue.qsize(),
                self._drain_timeout,
            )
        finally:
            worker.cancel()
            # asyncio.wait, not await: it neither re-raises the worker's
            # cancellation nor swallows our own if we are being cancelled.
            await asyncio.wait({worker})
        log.info("alert service stopped: %s", self.stats())

    async def submit(self, warning: Warning) -> None:
        """Queue a warning; waits while the queue is full (backpressure, never a drop)."""
        await self._queue.put(warning)
        self._received += 1

    async def drain(self) -> None:
        """Return once every warning submitted so far is processed and delivered or failed."""
        if self._worker is None and self._queue.qsize():
            # Waiting would never end; say so instead of hanging.
            raise RuntimeError("drain() needs a running AlertService (use `async with`)")
        await self._queue.join()

    async def _run(self) -> None:
        while True:
            warning = await self._queue.get()
            try:
                await self._process(warning)
            except Exception:
                # A bug must cost one warning, not the whole alert path.
                log.exception("alert worker failed on warning %s", warning.fingerprint)
            finally:
                self._queue.task_done()

    async def _process(self, warning: Warning) -> None:
        n = self._book.apply(warning)
        if n is None:
            return
        self._notifications += 1
        if self._on_notification is not None:
            try:
                await self._on_notification(n)
            except Exception:
                # Failing to record a notification must not stop it being delivered.
                log.exception("on_notification hook failed for notification %s", n.id)
        async with asyncio.TaskGroup() as group:
            for notifier in self._notifiers:
                group.create_task(self._deliver(n, notifier))

    async def _deliver(self, n: Notification, notifier: Notifier) -> None:
        started = self._clock.now()
        attempt = 1
        while True:
            try:
                await notifier.send(n)
            except DeliveryError as exc:
                if not exc.retryable or attempt >= self._attempts:
                    await self._report(
                        n, notifier.name, "failed", exc.detail, attempts=attempt, started=started
                    )
                    return
                delay = self._backoff(attempt)
                log.debug(
                    "retrying %s to %s in %.3f s after attempt %d: %s",
                    n.id,
                    notifier.name,
                    delay,
                    attempt,
                    exc.detail,
                )
                await self._sleep(delay)
                attempt += 1
            except Exception as exc:
                # A notifier broke its contract (raised something other than
                # DeliveryError): a bug, so retrying it would only repeat it.
                log.exception("notifier %s raised unexpectedly", notifier.name)
                detail = f"unexpected {type(exc).__name__}: {exc}"
                await self._report(
                    n, notifier.name, "failed", detail, attempts=attempt, started=started
                )
                return
            else:
                await self._report(
                    n, notifier.name, "delivered", "", attempts=attempt, started=started
                )
                return

    def _backoff(self, attempt: int) -> float:
        # Exponent capped so a large `attempts` cannot overflow the float.
        ceiling = min(self._max_delay, self._base_delay * 2 ** min(attempt - 1, 62))
        return self._rng.uniform(0.0, ceiling)

    async def _report(
        self,
        n: Notification,
        receiver: str,
        outcome: Outcome,
        detail: str,
        *,
        attempts: int,
        started: float,
    ) -> None:
        elapsed_ms = round((self._clock.now() - started) * 1000)
        tries = f"{attempts} attempt{'s' if attempts > 1 else ''}, {elapsed_ms} ms"
        detail = f"{detail} ({tries})" if detail else tries
        if outcome == "delivered":
            self._delivered += 1
        else:
            self._failed += 1
            log.warning(
                "%s notification %s for alert %s to %s failed: %s",
                n.event,
                n.id,
                n.alert.fingerprint,
                receiver,
                detail,
            )
        if self._on_delivery is not None:
            try:
                await self._on_delivery(n, receiver, outcome, detail)
            except Exception:
                log.exception("on_delivery hook failed for notification %s", n.id)
