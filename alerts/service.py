"""The alert service: a bounded queue of warnings, one book worker, one delivery lane per receiver.

    async with AlertService([console, webhook], clock=SystemClock()) as alerts:
        await alerts.submit(warning)      # waits while the queue is full
        ...
        await alerts.drain()              # everything so far processed and delivered

The book worker takes warnings in order and folds each into the `AlertBook`;
each notification that causes then goes, in `_dispatch`, through the pieces
in turn: its incident (`alerts.incidents`), a silence or an inhibiting alert
that may hold it back (`alerts.silences`, `alerts.inhibit`), its routes and
escalation steps (`alerts.routing`, `alerts.escalation`), the outbox
(`alerts.store`, before anything is sent) and the receivers' own bounded
queues (their "lanes"). A lane's workers deliver with retries, each alert's
notifications in order, so a receiver never sees "resolved" before the
"firing" it resolves, and a slow or hung receiver delays only itself.
Nothing is dropped on the way in: a full warning queue makes `submit` wait.
A receiver that falls a full lane behind (down for an hour in a storm) does
not hold up the others: what does not fit in its lane stays owed in the
alert store, where every notification is recorded before it is handed on,
and the lane takes it back, oldest first, once it has caught up (memory
stays bounded; only while the store itself fails does a full lane make the
book worker wait instead). What a receiver refuses is given up after
`attempts` tries or `give_up_after` seconds (a receiver's own `retry_for`,
such as a webhook's hour, instead), counted from when the receiver started
failing, so one down for longer fails each notification over to the
fallback after one attempt rather than an hour each; it is kept as a dead
letter and reported. A
tick (`tick_every`) sends reminders and escalations and announces what a
silence or an inhibition stopped holding back; acknowledging, resolving
and silencing by hand go through the same path. Before a warning changes an
alert, the escalation steps due by the warning's time are called in, so
whoever a step calls in hears that change, however long ago the last tick
ran (and a warning replayed late, after a restart, escalates nothing that
was not due when it happened).

Time is the injected `clock`'s. The embedded demo, which plays a day in a
minute, gives an event-time clock (`cityvitals.clock.EventClock`: now is the
time of the warning being handled) and `tick_every=None`, so escalations
follow the simulated day, not the wall clock.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Final, Literal, Self

import msgspec

from alerts.book import AlertBook
from alerts.escalation import Ladder
from alerts.incidents import IncidentBook
from alerts.inhibit import inhibitor
from alerts.metrics import Observation, ResponseTimes, observe
from alerts.model import Alert, Notification
from alerts.notify import Notifier
from alerts.routing import Router
from alerts.silences import Silence, Silences
from alerts.store import AlertStore, AlertStoreError
from cityvitals.clock import Clock
from cityvitals.contract import Warning
from cityvitals.errors import DeliveryError
from cityvitals.tasks import cancel_and_wait

log = logging.getLogger(__name__)

Outcome = Literal["delivered", "failed"]
OnNotification = Callable[[Notification], Awaitable[None]]
#: (notification, receiver name, outcome, detail)
OnDelivery = Callable[[Notification, str, Outcome, str], Awaitable[None]]

_DEFAULT_DRAIN_TIMEOUT: Final = 10.0
_DEFAULT_GIVE_UP_AFTER: Final = 60.0
#: What every notification gets, however long its receiver has been failing: one
#: attempt of up to this long (or the horizon, if shorter).
_ONE_ATTEMPT_S: Final = 10.0


class AlertNotFound(KeyError):  # noqa: N818 - reads as what it says
    """No open alert has this fingerprint."""


class AlertStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counters since start; `delivered`, `failed` and `undelivered` count (notification,
    receiver) pairs. `undelivered` is what is still queued or in progress in the lanes,
    or was left there when the service stopped (it stays owed in the store)."""

    warnings_received: int
    notifications: int
    delivered: int
    failed: int
    undelivered: int = 0
    #: Notifications owed from before a restart (the outbox's pending rows), resumed.
    resumed: int = 0
    #: Notifications a silence held back (recorded, sent to nobody).
    muted: int = 0
    #: Notifications held back because another open alert explains them.
    inhibited: int = 0


class ReceiverStats(msgspec.Struct, frozen=True):
    """One receiver's share of `AlertStats`."""

    name: str
    delivered: int
    failed: int
    pending: int


class _Lane:
    """One receiver's queue, worker and health (for state-change logging)."""

    def __init__(
        self,
        notifier: Notifier,
        queue_size: int,
        *,
        give_up_after: float,
        attempts: int | None,
        max_delay: float,
    ) -> None:
        self.notifier = notifier
        self.name = notifier.name
        self.queue: asyncio.Queue[Notification] = asyncio.Queue(maxsize=queue_size)
        #: How long one notification is tried, in how many attempts at most (None: as
        #: many as fit), at most how far apart.
        self.give_up_after = give_up_after
        self.attempts = attempts
        self.max_delay = max_delay
        #: Notifications handed to this lane (or being handed) and not yet settled.
        self.pending = 0
        #: Since start: notifications this receiver took, and those given up on.
        self.delivered = 0
        self.failed = 0
        #: The ids of those in memory (queued, waiting behind their alert, or in hand).
        self.in_memory: set[str] = set()
        #: Set once the lane was full: what came since is owed in the store, not queued.
        self.spilled = False
        #: How many of `pending` wait in the store, not in memory.
        self.in_store = 0
        #: Settled here but not in the store (its write failed): not to be taken back.
        self.unsettled: set[str] = set()
        #: When (monotonic) this receiver started failing; None while it answers.
        self.failing_since: float | None = None
        self.refilling = asyncio.Lock()
        self.failing = False
        #: While failing: notifications given up and attempts failed since it started failing.
        self.failed_deliveries = 0
        self.failed_attempts = 0
        # A receiver may say how fast it takes messages (a chat bot: 20 a minute).
        self.always = bool(getattr(notifier, "always", False))
        #: Deliveries at once (a receiver may say: `concurrency`); per alert, one at a time.
        self.concurrency = max(1, int(getattr(notifier, "concurrency", 1) or 1))
        #: The alerts a worker is delivering now, each with what waits behind it.
        self.busy: dict[str, deque[Notification]] = {}
        rate = getattr(notifier, "rate_per_minute", None)
        self.min_interval = 60.0 / rate if rate else 0.0
        self.last_attempt: float | None = None


def _lanes(
    notifiers: Sequence[Notifier],
    queue_size: int,
    *,
    give_up_after: float,
    attempts: int,
    max_delay: float,
    retry_for: Mapping[str, float],
) -> tuple[_Lane, ...]:
    """A lane per receiver. One with its own horizon (`retry_for`) is retried until then,
    with no attempt cap, at most a minute apart (about 60 times an hour at least); the
    others as the service says."""
    unknown = sorted(set(retry_for) - {n.name for n in notifiers})
    if unknown or any(v <= 0 for v in retry_for.values()):
        raise ValueError(f"retry_for: positive seconds for known receivers, got {retry_for}")
    return tuple(
        _Lane(n, queue_size, give_up_after=give_up_after, attempts=attempts, max_delay=max_delay)
        if n.name not in retry_for
        else _Lane(
            n,
            queue_size,
            give_up_after=retry_for[n.name],
            attempts=None,
            max_delay=max(max_delay, min(60.0, retry_for[n.name] / 60)),
        )
        for n in notifiers
    )


def _check_receivers(
    names: list[str], fallback: str | None, router: Router | None, ladder: Ladder | None
) -> None:
    if len(set(names)) != len(names):
        # Delivery reports are keyed by receiver name; duplicates would be ambiguous.
        raise ValueError(f"notifier names must be unique, got {names}")
    if fallback is not None and fallback not in names:
        raise ValueError(f"fallback receiver {fallback!r} is not one of {names}")
    if router is not None:
        named = {r for route in router.routes for r in route.receivers} | set(router.default)
        unknown = sorted(named - set(names))
        if unknown:
            raise ValueError(f"routes name receivers that are not configured: {unknown}")
    if ladder is not None:
        unknown = sorted({r for step in ladder.steps for r in step.receivers} - set(names))
        if unknown:
            raise ValueError(f"escalation steps name receivers not configured: {unknown}")


def _everyone(regular: Sequence[_Lane], ladder: Ladder | None) -> Router:
    """The router without routes: everyone gets everything but the fallback (not in
    `regular`) and those only the ladder calls in."""
    laddered = set() if ladder is None else ladder.named()
    return Router((), default=[lane.name for lane in regular if lane.name not in laddered])


class AlertService:
    """Turns submitted warnings into alerts and delivers their notifications.

    An async context manager: entering starts the workers; leaving waits up to
    `drain_timeout` seconds for the warning queue and every lane to empty, then
    cancels the workers and logs what was left. Stopping on SIGTERM is the
    caller's job (leave the `async with`).

    Retryable failures (`DeliveryError.retryable`) are tried up to `attempts`
    times in all, waiting a random time in ``[0, min(max_delay, base_delay *
    2**(n-1))]`` before retry n ("full jitter", so receivers coming back are
    not hit by every sender in lock step). Anything else fails at once. No
    notification takes more than `give_up_after` seconds of one receiver's
    lane (measured with `monotonic`): no retry starts past it, and an attempt
    still unanswered when it runs out is abandoned. Failures are counted,
    reported to `on_delivery` and never stop a worker; the log gets one
    WARNING when a receiver starts failing and one INFO when it recovers, not
    one line per failure.
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
        give_up_after: float = _DEFAULT_GIVE_UP_AFTER,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        on_notification: OnNotification | None = None,
        on_delivery: OnDelivery | None = None,
        drain_timeout: float = _DEFAULT_DRAIN_TIMEOUT,
        store: AlertStore | None = None,
        fallback: str | None = None,
        repeat_every: float | None = None,
        ack_links: Callable[[Alert], str] | None = None,
        incidents: IncidentBook | None = None,
        router: Router | None = None,
        ladder: Ladder | None = None,
        on_response: Callable[[Observation], Awaitable[None]] | None = None,
        tick_every: float | None = 15.0,
        sleep_ticks: Callable[[float], Awaitable[None]] = asyncio.sleep,
        retry_for: Mapping[str, float] | None = None,
    ) -> None:
        _check_receivers([n.name for n in notifiers], fallback, router, ladder)
        if queue_size < 1 or attempts < 1:
            raise ValueError("queue_size and attempts must be at least 1")
        if base_delay < 0 or max_delay < base_delay:
            raise ValueError("need 0 <= base_delay <= max_delay")
        if give_up_after <= 0:
            raise ValueError(f"give_up_after must be positive, got {give_up_after}")
        if (repeat_every is not None and repeat_every <= 0) or (
            tick_every is not None and tick_every <= 0
        ):
            raise ValueError("repeat_every and tick_every must be positive")
        self._lanes = _lanes(
            notifiers,
            queue_size,
            give_up_after=give_up_after,
            attempts=attempts,
            max_delay=max_delay,
            retry_for=retry_for or {},
        )
        self._by_name = {lane.name: lane for lane in self._lanes}
        self._fallback = None if fallback is None else self._by_name[fallback]
        #: Who gets every notification; the fallback gets only what another gave up on.
        self._regular = tuple(lane for lane in self._lanes if lane is not self._fallback)
        #: Notifications owed to the fallback while the store could not record it
        #: (it failed); otherwise the store says whether one was owed already, so
        #: this grows only while the store fails. One the fallback was owed before
        #: the store failed can reach it again then, under the same key.
        self._owed_to_fallback: set[str] = set()
        self._store = store
        self._stack = AsyncExitStack()
        self._resumed = 0
        #: The kinds of store write failing now (record, delivered, ...): said once each.
        self._store_failing: set[str] = set()
        self._book_lock = asyncio.Lock()
        self._silences = Silences()
        self._muted = 0
        self._inhibited = 0
        self._repeat_every = repeat_every
        self._ack_links = ack_links
        self._incidents = incidents if incidents is not None else IncidentBook()
        self._router = router or _everyone(self._regular, ladder)
        self._ladder = ladder
        self._responses = ResponseTimes()
        self._on_response = on_response
        self._tick_every = tick_every
        self._sleep_ticks = sleep_ticks
        self._clock = clock
        self._base_delay = base_delay
        self._rng = rng if rng is not None else random.Random()
        self._sleep = sleep
        self._monotonic = monotonic
        self._on_notification = on_notification
        self._on_delivery = on_delivery
        self._drain_timeout = drain_timeout
        self._queue: asyncio.Queue[Warning] = asyncio.Queue(maxsize=queue_size)
        self._book = AlertBook()
        self._received = self._notifications = self._delivered = self._failed = 0
        #: Warnings submitted (or being submitted) and not yet folded into the book.
        self._unapplied = 0
        #: Set while nothing is queued or in progress anywhere; what `drain` waits for.
        self._idle = asyncio.Event()
        self._idle.set()
        #: Set while every submitted warning is in the book (and recorded).
        self._applied = asyncio.Event()
        self._applied.set()
        self._workers: tuple[asyncio.Task[None], ...] | None = None

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
            undelivered=sum(lane.pending for lane in self._lanes),
            resumed=self._resumed,
            muted=self._muted,
            inhibited=self._inhibited,
        )

    def receivers(self) -> list[ReceiverStats]:
        """Per receiver: delivered and failed since start, and what it is still owed."""
        return [
            ReceiverStats(lane.name, lane.delivered, lane.failed, lane.pending)
            for lane in self._lanes
        ]

    async def __aenter__(self) -> Self:
        if self._workers is not None:
            raise RuntimeError("AlertService is already running")
        if self._store is None:
            # Nothing to survive a restart for: the book and outbox in memory.
            self._store = await self._stack.enter_async_context(AlertStore(None))
        state = await self._store.load()
        self._book.restore(state.open, state.resolved)
        self._silences = Silences(await self._store.silences(now_ms=self._clock.now_ms()))
        self._incidents.restore(await self._store.incidents(), state.open)
        if state.open:
            log.info("alert book restored: %d open alerts", len(state.open))
        # The owed notifications go out before any new one (the book worker
        # resumes them first), so a receiver still sees each alert's in order.
        self._unapplied += 1
        self._idle.clear()
        self._applied.clear()
        book = asyncio.create_task(self._run_book(), name="alerts-book")
        lanes = [
            asyncio.create_task(self._run_lane(lane), name=f"alerts-lane-{lane.name}-{i}")
            for lane in self._lanes
            for i in range(lane.concurrency)
        ]
        self._workers = (book, *lanes)
        if self._tick_every is not None:
            # Without: ticks only when `tick()` is called (an event-time clock).
            ticks = asyncio.create_task(self._run_ticks(self._tick_every), name="alerts-ticks")
            self._workers += (ticks,)
        log.info("alert service started with receivers %s", [lane.name for lane in self._lanes])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        workers = self._workers
        if workers is None:
            return
        drained = False
        try:
            # Flush what we hold even when the body failed: alerts are the point.
            async with asyncio.timeout(self._drain_timeout):
                await self._idle.wait()
            drained = True
        except TimeoutError:
            pass
        finally:
            self._workers = None
            # All at once, and each until it has ended (see cancel_and_wait).
            await asyncio.gather(*(cancel_and_wait(worker) for worker in workers))
            await self._stack.aclose()
        if not drained:
            left = {lane.name: lane.pending for lane in self._lanes}
            log.warning(
                "alert service stopping after %.1f s drain with %d warning(s) unprocessed "
                "and notifications left undelivered per receiver: %s",
                self._drain_timeout,
                self._unapplied,
                left,
            )
        log.info("alert service stopped: %s", self.stats())

    async def submit(self, warning: Warning) -> None:
        """Queue a warning; waits while the queue is full (backpressure, never a drop)."""
        # Counted before the put so `drain` cannot see the service idle in between.
        self._unapplied += 1
        self._idle.clear()
        self._applied.clear()
        try:
            await self._queue.put(warning)
        except BaseException:
            self._unapplied -= 1
            self._update_idle()
            raise
        self._received += 1

    async def drain(self) -> None:
        """Return once every warning submitted so far is processed and delivered or failed.

        That is: the warning queue and every receiver's lane are empty and idle.
        """
        if self._workers is None:
            if not self._idle.is_set():
                # Waiting would never end; say so instead of hanging.
                raise RuntimeError("drain() needs a running AlertService (use `async with`)")
            return
        await self._idle.wait()

    def _update_idle(self) -> None:
        if self._unapplied == 0:
            self._applied.set()
        else:
            self._applied.clear()
        # A spilled lane still has rows to take back from the store, counted or not.
        if self._unapplied == 0 and not any(lane.pending or lane.spilled for lane in self._lanes):
            self._idle.set()
        else:
            self._idle.clear()

    async def recorded(self) -> None:
        """Return once every warning submitted so far is in the book and its
        notifications are owed in the store (delivered or not): what a consumer
        may commit after."""
        await self._applied.wait()

    async def _resume(self) -> None:
        """Take up what the store still owes from before a restart, oldest first.

        Counted only: each lane takes the rows back from the store as a lane that
        fell behind does, a queue at a time, so a long backlog is not loaded at
        once, and they go out before anything new (which waits behind them).
        """
        assert self._store is not None  # noqa: S101 - set in __aenter__
        try:
            owed = await self._store.owed_counts()
        except AlertStoreError:
            log.exception("alert store unreadable: notifications owed from before are not resumed")
            return
        unknown = {r: n for r, n in owed.items() if r not in self._by_name}
        if unknown:
            log.warning(
                "alert store owes notifications to receivers no longer configured, left "
                "in the outbox: %s",
                unknown,
            )
        resumed = {r: n for r, n in owed.items() if r in self._by_name}
        if resumed:
            log.info(
                "resuming %d notifications owed from before: %s", sum(resumed.values()), resumed
            )
        self._resumed = sum(resumed.values())
        for receiver, count in resumed.items():
            lane = self._by_name[receiver]
            lane.pending += count
            lane.in_store += count
            lane.spilled = True
            # Its workers may already wait on the empty queue: fill it for them.
            await self._refill(lane)

    async def _run_book(self) -> None:
        try:
            await self._resume()
        finally:
            self._unapplied -= 1
            self._update_idle()
        while True:
            warning = await self._queue.get()
            try:
                await self._process(warning)
            except Exception:
                # A bug must cost one warning, not the whole alert path.
                log.exception("alert worker failed on warning %s", warning.fingerprint)
            finally:
                self._queue.task_done()
                self._unapplied -= 1
                self._update_idle()

    async def _process(self, warning: Warning) -> None:
        async with self._book_lock:
            if self._ladder is not None and not self._book.is_stale(warning):
                # Steps due by this change's time hear of it, whenever the last tick
                # ran; by its own time, so one replayed late escalates nothing extra.
                at_ms = min(self._clock.now_ms(), warning.ts_ms)
                for due in self._escalations(at_ms, only=warning.fingerprint):
                    await self._dispatch(due)
            before = self._book.get(warning.fingerprint)
            n = self._book.apply(warning)
            after = self._book.get(warning.fingerprint)
            if n is not None:
                await self._dispatch(n)
            elif after is not None and after is not before:
                # A repeat at the same level: the alert's value moved, nobody is paged.
                await self._keep("record", self._store_record(after, None), after.fingerprint)

    async def _dispatch(self, n: Notification) -> None:
        """Record one notification and hand it to the receivers its alert is routed
        (and escalated) to, unless a silence or an inhibiting alert holds it back: then
        it is recorded as held back (`muted`)."""
        now_ms = self._clock.now_ms()
        await self._measure(n, now_ms)
        n = await self._group(n)
        if await self._held_back(n, now_ms):
            return
        if self._ack_links is not None and n.alert.state == "firing":
            n = msgspec.structs.replace(n, ack_url=self._ack_links(n.alert))
        n = self._climb(n, now_ms)
        lanes = self._route(n.alert)
        await self._keep("record", self._store_record(n.alert, n, lanes), n.id)
        self._notifications += 1
        # Counted and handed on right after the record, before anything else is
        # awaited: a lane taking rows back from the store meanwhile would take
        # this one too. Every lane counts it before any put can block, so a stop
        # while waiting on a full lane still reports it undelivered everywhere.
        for lane in lanes:
            lane.pending += 1
        for lane in lanes:
            await self._hand(lane, n)
        if self._on_notification is not None:
            try:
                await self._on_notification(n)
            except Exception:
                log.exception("on_notification hook failed for notification %s", n.id)

    async def _measure(self, n: Notification, now_ms: int) -> None:
        """Time to detect, acknowledge and resolve, kept and handed to the sink."""
        a = n.alert
        if n.event == "firing":
            o = observe("detect", a, at_ms=now_ms)
        elif n.event == "acknowledged" and a.acknowledged_ms is not None:
            o = observe("acknowledge", a, at_ms=a.acknowledged_ms)
        elif n.event == "resolved" and a.resolved_ms is not None:
            o = observe("resolve", a, at_ms=a.resolved_ms)
        else:
            return
        self._responses.add(o)
        if self._on_response is not None:
            try:
                await self._on_response(o)
            except Exception:
                log.exception("on_response hook failed for %s of %s", o.what, a.subject)

    @property
    def responses(self) -> ResponseTimes:
        return self._responses

    async def _group(self, n: Notification) -> Notification:
        """Fold the change into its incident, and name the incident on it."""
        changed = self._incidents.apply(n)
        if changed is not None:
            assert self._store is not None  # noqa: S101 - set in __aenter__
            await self._keep("incident", self._store.put_incident(changed), changed.id)
        incident = changed if changed is not None else self._incidents.of(n.alert.fingerprint)
        return n if incident is None else msgspec.structs.replace(n, incident=incident.id)

    async def _held_back(self, n: Notification, now_ms: int) -> bool:
        """Record a notification a silence or an inhibiting alert holds back; False if
        neither does."""
        silence = self._silences.covering(n.alert, now_ms=now_ms)
        source = None if silence is not None else inhibitor(n.alert, self._book.open_alerts())
        if silence is None and source is None:
            return False
        muted = self._book.mute(n.alert.fingerprint) or n.alert
        if silence is not None:
            self._muted += 1
            why = f"silence {silence.id}"
        else:
            self._inhibited += 1
            why = f"{source.rule} {source.subject}"  # type: ignore[union-attr]
        log.debug("%s of %s held back by %s", n.event, n.alert.subject, why)
        await self._keep("record", self._store_record(muted, None), n.id)
        return True

    def _climb(self, n: Notification, now_ms: int) -> Notification:
        """The escalation steps due by now (the first, at 0 s) hear this change itself."""
        if self._ladder is None or n.alert.state != "firing":
            return n
        step = self._ladder.reached(n.alert, now_ms=now_ms)
        if step <= n.alert.escalation:
            return n
        reached = self._book.reach(n.alert.fingerprint, step)
        return n if reached is None else msgspec.structs.replace(n, alert=reached)

    def _route(self, alert: Alert) -> tuple[_Lane, ...]:
        names = self._router.receivers(alert)
        if self._ladder is not None:
            names += tuple(r for r in self._ladder.receivers(alert) if r not in names)
        # Receivers that record rather than page (Grafana annotations): every alert.
        names += tuple(
            lane.name for lane in self._regular if lane.always and lane.name not in names
        )
        return tuple(
            self._by_name[name] for name in names if self._by_name[name] is not self._fallback
        )

    # -- what people do, and what the clock does --------------------------------

    async def acknowledge(self, fingerprint: str, *, by: str) -> Alert:
        """Someone takes an open alert on; `AlertNotFound` if it is not open."""
        return await self._by_hand(fingerprint, by, self._book.acknowledge)

    async def resolve(self, fingerprint: str, *, by: str) -> Alert:
        """Resolve an open alert by hand; `AlertNotFound` if it is not open."""
        return await self._by_hand(fingerprint, by, self._book.resolve)

    async def close(self, fingerprint: str, *, by: str) -> Alert:
        """Close a resolved alert: done with, off the resolved list. `AlertNotFound` if
        it is not resolved (an open alert is resolved first)."""
        assert self._store is not None  # noqa: S101 - set in __aenter__
        async with self._book_lock:
            if self._book.get(fingerprint) is not None:
                raise AlertNotFound(fingerprint)
            closed = await self._store.close(fingerprint, by=by, now_ms=self._clock.now_ms())
        if closed is None:
            raise AlertNotFound(fingerprint)
        return closed

    async def resolved_alerts(self, *, limit: int = 100) -> list[Alert]:
        """Resolved alerts not yet closed, newest first."""
        assert self._store is not None  # noqa: S101 - set in __aenter__
        return await self._store.resolved(limit=limit)

    async def _by_hand(
        self, fingerprint: str, by: str, act: Callable[..., Notification | None]
    ) -> Alert:
        async with self._book_lock:
            current = self._book.get(fingerprint)
            if current is None:
                raise AlertNotFound(fingerprint)
            n = act(fingerprint, by=by, now_ms=self._clock.now_ms())
            if n is None:
                return current  # already so: acknowledging twice changes nothing
            await self._dispatch(n)
            return n.alert

    async def silence(self, silence: Silence) -> None:
        """Start keeping a silence (kept in the store, so a restart keeps it too)."""
        self._silences.add(silence)
        assert self._store is not None  # noqa: S101 - set in __aenter__
        await self._keep("silence", self._store.put_silence(silence), silence.id)
        log.info(
            "silence %s by %s until %s: %s (%s)",
            silence.id,
            silence.author,
            time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(silence.ends_ms / 1000)),
            ", ".join(f"{m.name}{m.op}{m.value}" for m in silence.matchers),
            silence.reason,
        )

    async def expire_silence(self, silence_id: str) -> Silence | None:
        """End a silence now; the alerts it held back are announced at the next tick."""
        ended = self._silences.expire(silence_id, now_ms=self._clock.now_ms())
        if ended is not None:
            assert self._store is not None  # noqa: S101 - set in __aenter__
            await self._keep("silence", self._store.put_silence(ended), silence_id)
            await self.tick()
        return ended

    @property
    def silences(self) -> Silences:
        return self._silences

    @property
    def incidents(self) -> IncidentBook:
        return self._incidents

    async def tick(self) -> int:
        """Reminders for open alerts nobody acknowledged within `repeat_every`, and an
        announcement for muted alerts no silence covers any more; how many went out.
        Runs every `tick_every` seconds while the service does."""
        async with self._book_lock:
            now_ms = self._clock.now_ms()
            opened = self._book.open_alerts()
            due = self._book.unmuted(
                now_ms,
                lambda a: (
                    self._silences.covering(a, now_ms=now_ms) is not None
                    or inhibitor(a, opened) is not None
                ),
            )
            if self._repeat_every is not None:
                due += self._book.reminders(now_ms, every_ms=round(self._repeat_every * 1000))
            if self._ladder is not None:
                due += self._escalations(now_ms)
            for n in due:
                await self._dispatch(n)
            return len(due)

    def _escalations(self, now_ms: int, *, only: str | None = None) -> list[Notification]:
        """An `escalated` notification for each firing alert (or just `only`) a step
        further up the ladder is due for by `now_ms`, naming the step."""
        ladder = self._ladder
        assert ladder is not None  # noqa: S101 - the caller checks
        if only is None:
            alerts = self._book.open_alerts()
        else:
            one = self._book.get(only)
            alerts = () if one is None else (one,)
        out = []
        for alert in alerts:
            if alert.state != "firing" or alert.muted:
                continue
            step = ladder.reached(alert, now_ms=now_ms)
            if step > alert.escalation:
                due_ms = ladder.due_ms(alert, step)
                n = self._book.escalate(alert.fingerprint, step=step, due_ms=due_ms)
                if n is not None:
                    out.append(msgspec.structs.replace(n, step=ladder.steps[step].name))
        return out

    async def _run_ticks(self, every: float) -> None:
        while True:
            await self._sleep_ticks(every)
            try:
                await self.tick()
            except Exception:
                log.exception("alert service tick failed")

    def _store_record(
        self, alert: Any, n: Notification | None, lanes: Sequence[_Lane] = ()
    ) -> Awaitable[None]:
        assert self._store is not None  # noqa: S101 - set in __aenter__
        names = [lane.name for lane in lanes]
        return self._store.record(alert, n, names, now_ms=self._clock.now_ms())

    async def _keep(self, what: str, write: Awaitable[None], about: str) -> bool:
        """Write to the store; a failure is logged (once for each kind of write, until
        it works again) and delivery goes on: a page now matters more than its record.
        Whether the write took."""
        try:
            await write
        except AlertStoreError:
            if what not in self._store_failing:
                log.exception(
                    "alert store failing (%s on %s); delivering without it, and a "
                    "restart may resend what it did not record",
                    what,
                    about,
                )
            self._store_failing.add(what)
            return False
        if what in self._store_failing:
            log.info("alert store takes %s writes again", what)
            self._store_failing.discard(what)
        return True

    async def _run_lane(self, lane: _Lane) -> None:
        """One of a lane's `concurrency` workers. An alert's notifications still go out
        one at a time, in order: a worker that takes one of an alert another worker is
        delivering leaves it to that worker (after the one in hand) and takes the next,
        so a busy alert holds up nobody else."""
        while True:
            while lane.spilled and lane.queue.empty():
                await self._refill(lane)
            n = await lane.queue.get()
            fp = n.alert.fingerprint
            behind = lane.busy.get(fp)
            if behind is not None:
                behind.append(n)
                continue
            lane.busy[fp] = behind = deque()
            current: Notification | None = n
            while current is not None:
                try:
                    await self._deliver(current, lane)
                except Exception:
                    log.exception(
                        "delivery lane %s failed on notification %s", lane.name, current.id
                    )
                finally:
                    lane.queue.task_done()
                # Not in `finally`: a notification interrupted by shutdown stays undelivered.
                lane.pending -= 1
                lane.in_memory.discard(current.id)
                self._update_idle()
                current = behind.popleft() if behind else None
            del lane.busy[fp]

    async def _hand(self, lane: _Lane, n: Notification, *, recorded: str = "record") -> None:
        """Queue `n` (already counted in `lane.pending`) on its lane. A full lane, or
        one still taking back what did not fit, leaves it owed in the store, where it
        was `recorded` just before, and the lane takes it back in order once it has
        caught up. Only when that write failed does this wait for room instead."""
        if not lane.spilled and not lane.queue.full():
            lane.queue.put_nowait(n)
            lane.in_memory.add(n.id)
            return
        if recorded in self._store_failing:
            # Not in the store: holding everyone up beats losing it.
            await lane.queue.put(n)
            lane.in_memory.add(n.id)
            return
        if not lane.spilled:
            log.warning(
                "receiver %s is %d notifications behind; what comes next waits in the alert "
                "store until it catches up",
                lane.name,
                lane.queue.qsize(),
            )
        lane.spilled = True
        lane.in_store += 1

    async def _refill(self, lane: _Lane) -> None:
        """Take back, oldest first, what a lane that fell behind left in the store."""
        async with lane.refilling:
            if not lane.spilled or not lane.queue.empty():
                return  # another worker of the lane did it
            assert self._store is not None  # noqa: S101 - set in __aenter__
            room = lane.queue.maxsize
            try:
                # One more than there is room for: whether more is left.
                skip = len(lane.in_memory) + len(lane.unsettled)
                rows = await self._store.owed(lane.name, limit=room + 1 + skip)
            except AlertStoreError:
                log.exception("alert store unreadable: receiver %s waits for it", lane.name)
                await self._sleep(1.0)
                return
            # After the read, against what is in memory now: a notification queued
            # meanwhile is not taken twice. Every write that the read did not see is
            # handed on after it returns, and finds the lane as this leaves it.
            waiting = [n for n in rows if n.id not in lane.in_memory and n.id not in lane.unsettled]
            for n in waiting[:room]:
                if lane.in_store:
                    lane.in_store -= 1
                else:
                    # Owed in the store but never counted: a dead letter an operator
                    # requeued (`cityvitals alerts retry`) while the service ran.
                    lane.pending += 1
                lane.queue.put_nowait(n)
                lane.in_memory.add(n.id)
            lane.spilled = len(waiting) > room
            self._update_idle()
            if not lane.spilled:
                log.info("receiver %s has caught up with what waited in the alert store", lane.name)

    async def _deliver(self, n: Notification, lane: _Lane) -> None:
        started = self._monotonic()
        cap = lane.give_up_after
        # The horizon counts from when the receiver started failing: one that has
        # been down longer gets one attempt per notification, not a horizon each,
        # so what it is owed fails over to the fallback instead of waiting days.
        origin = started if lane.failing_since is None else min(started, lane.failing_since)
        attempt = 1
        while True:
            # Bound the attempt itself too: a notifier that never returns must
            # not hold its lane (and, once the lane is full, everyone) forever.
            await self._pace(lane)
            remaining = cap - (self._monotonic() - origin)
            if attempt == 1 and origin < started:
                remaining = max(remaining, min(cap, _ONE_ATTEMPT_S))
            deadline = asyncio.timeout(max(remaining, 0.0))
            try:
                async with deadline:
                    await lane.notifier.send(n)
            except DeliveryError as exc:
                detail, retryable = exc.detail, exc.retryable
            except Exception as exc:
                if isinstance(exc, TimeoutError) and deadline.expired():
                    detail, retryable = f"no answer within the {cap:g} s limit", False
                else:
                    # A notifier broke its contract (raised something other than
                    # DeliveryError): a bug, so retrying it would only repeat it.
                    log.exception("notifier %s raised unexpectedly", lane.name)
                    detail, retryable = f"unexpected {type(exc).__name__}: {exc}", False
            else:
                await self._succeeded(n, lane, attempts=attempt, started=started)
                return
            delay = 0.0
            last = lane.attempts is not None and attempt >= lane.attempts
            if retryable and not last:
                delay = self._backoff(attempt, lane.max_delay)
                elapsed = self._monotonic() - origin
                if elapsed + delay >= cap:
                    # The retry would start past the cap: give up now, not later.
                    detail = f"{detail}; gave up after {elapsed:.1f} s (limit {cap:g} s)"
                    retryable = False
            if not retryable or last:
                self._attempt_failed(lane, detail, f"dropping notification {n.id}")
                await self._gave_up(n, lane, detail, attempts=attempt, started=started)
                return
            of = "" if lane.attempts is None else f" of {lane.attempts}"
            self._attempt_failed(lane, detail, f"retrying (attempt {attempt}{of})")
            log.debug(
                "retrying %s to %s in %.3f s after attempt %d: %s",
                n.id,
                lane.name,
                delay,
                attempt,
                detail,
            )
            await self._sleep(delay)
            attempt += 1

    async def _pace(self, lane: _Lane) -> None:
        """Keep a rate-limited receiver's attempts `min_interval` apart."""
        if lane.min_interval and lane.last_attempt is not None:
            wait = lane.last_attempt + lane.min_interval - self._monotonic()
            if wait > 0:
                await self._sleep(wait)
        lane.last_attempt = self._monotonic()

    def _backoff(self, attempt: int, max_delay: float) -> float:
        # Exponent capped so a large `attempts` cannot overflow the float.
        ceiling = min(max_delay, self._base_delay * 2 ** min(attempt - 1, 62))
        return self._rng.uniform(0.0, ceiling)

    def _attempt_failed(self, lane: _Lane, detail: str, action: str) -> None:
        lane.failed_attempts += 1
        if lane.failing_since is None:
            lane.failing_since = self._monotonic()
        if lane.failing:
            return  # said once already; the recovery line gives the totals
        lane.failing = True
        log.warning(
            "receiver %s failing: %s; %s; further failures are not logged until it recovers",
            lane.name,
            detail,
            action,
        )

    async def _succeeded(
        self, n: Notification, lane: _Lane, *, attempts: int, started: float
    ) -> None:
        # Settled in the store first: a delivery counted is one a restart will not resend.
        await self._settle(n, lane, "delivered", "", attempts)
        self._delivered += 1
        lane.delivered += 1
        if lane.failing:
            log.info(
                "receiver %s recovered after %d failed deliveries (%d failed attempts)",
                lane.name,
                lane.failed_deliveries,
                lane.failed_attempts,
            )
        lane.failing = False
        lane.failing_since = None
        lane.failed_deliveries = lane.failed_attempts = 0
        await self._report(n, lane.name, "delivered", "", attempts=attempts, started=started)

    async def _settle(
        self, n: Notification, lane: _Lane, state: Literal["delivered", "dead"], detail: str,
        attempts: int,
    ) -> None:  # fmt: skip
        assert self._store is not None  # noqa: S101 - set in __aenter__
        write = self._store.settle(
            n.id, lane.name, state, attempts=attempts, detail=detail, now_ms=self._clock.now_ms()
        )
        if not await self._keep(state, write, f"{n.id} to {lane.name}"):
            lane.unsettled.add(n.id)  # still "pending" there: never taken back

    async def _gave_up(
        self, n: Notification, lane: _Lane, detail: str, *, attempts: int, started: float
    ) -> None:
        await self._settle(n, lane, "dead", detail, attempts)
        self._failed += 1
        lane.failed += 1
        lane.failed_deliveries += 1
        log.debug(
            "%s notification %s for alert %s to %s failed: %s",
            n.event,
            n.id,
            n.alert.fingerprint,
            lane.name,
            detail,
        )
        await self._report(n, lane.name, "failed", detail, attempts=attempts, started=started)
        fallback = self._fallback
        if fallback is not None and fallback is not lane:
            # The fallback is owed it too (recorded first: a restart still owes it).
            assert self._store is not None  # noqa: S101 - set in __aenter__
            if n.id in self._owed_to_fallback:
                return  # owed already while the store failed
            newly = True

            async def owe(store: AlertStore = self._store) -> None:
                nonlocal newly
                newly = await store.owe(n, fallback.name, now_ms=self._clock.now_ms())

            if not await self._keep("fallback", owe(), f"{n.id} to {fallback.name}"):
                self._owed_to_fallback.add(n.id)
            elif not newly:
                return  # another receiver gave up on it too: owed to the fallback once
            fallback.pending += 1
            await self._hand(fallback, n, recorded="fallback")

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
        elapsed_ms = round((self._monotonic() - started) * 1000)
        tries = f"{attempts} attempt{'s' if attempts > 1 else ''}, {elapsed_ms} ms"
        detail = f"{detail} ({tries})" if detail else tries
        if self._on_delivery is not None:
            try:
                await self._on_delivery(n, receiver, outcome, detail)
            except Exception:
                log.exception("on_delivery hook failed for notification %s", n.id)
