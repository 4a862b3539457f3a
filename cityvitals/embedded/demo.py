"""`cityvitals demo`: a simulated city's day through the whole embedded pipeline.

Builds (or loads) a city, starts the embedded pipeline, lets the simulated
fleet publish a scripted day through the real edge publisher, waits until
every acknowledged reading has gone through every stage, then checks the
result: every reading stored (by node and sequence number), every scripted
incident raised its expected alert, no quiet node raised any.

Nobody acknowledges anything in the demo, so its alerts climb the duty
roster's escalation ladder (`cityvitals.embedded.duty`) on the simulated
day's time: the alert service runs in event time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cityvitals.citygen import generate_city
from cityvitals.clock import SystemClock
from cityvitals.embedded.duty import DEMO_LADDER, DutyDesk, duty_desks
from cityvitals.embedded.pipeline import EmbeddedPipeline, PipelineCounts
from cityvitals.levels import WARNING_LEVELS, Level
from cityvitals.registry import Registry
from cityvitals.tasks import cancel_and_wait
from stream.engine import RuleEngine
from stream.rules import load_rules

if TYPE_CHECKING:
    from alerts.notify import Notifier
    from edge.fleet import SimulatedFleet
    from edge.simulate import Scenario
    from stream.agents import ReadingSink

log = logging.getLogger("cityvitals.demo")

DAY_MS = 86_400_000


@dataclass(frozen=True)
class DemoOptions:
    data_dir: Path = Path("cityvitals-data")
    duration_s: float = 60.0
    nodes: int = 240
    districts: int = 4
    seed: int = 7
    interval_s: float = 600.0
    mqtt_url: str | None = None
    webhook_url: str | None = None
    registry_path: Path | None = None
    #: Simulated midnight; default: the UTC midnight before yesterday's, so the
    #: whole simulated day lies in the past.
    day_start_ms: int | None = None
    drain_timeout_s: float = 120.0
    #: Give up draining when nothing at all has moved for this long. Longer than
    #: the alert service gives a dead receiver (pipeline.DELIVERY_GIVE_UP_S),
    #: so a hung webhook is reported as failed deliveries, not as a stall.
    stall_timeout_s: float = 45.0
    quiet: bool = False  # True: no scripted incidents, only normal life
    #: An early-warning rule file; None: the built-in rules.
    rules_path: Path | None = None
    #: Also write readings and warnings to this InfluxDB 2 (docs/influxdb.md).
    influx_url: str | None = None
    influx_org: str = "cityvitals"
    influx_bucket: str = "cityvitals"
    influx_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class IncidentCheck:
    node: str
    rule: str
    expected: Level
    reached: Level

    @property
    def ok(self) -> bool:
        return self.reached == self.expected


@dataclass(frozen=True)
class DemoResult:
    published: int  # readings the simulated nodes took and handed to the edge publisher
    acknowledged: int  # of those, acknowledged by the broker
    stored: int
    missing: int
    dead_letters: int
    duplicates: int
    warnings_raised: dict[Level, int]
    notifications: int
    delivered: int
    failed_deliveries: int
    undelivered: int
    incidents: tuple[IncidentCheck, ...]
    unexpected: tuple[tuple[str, str, Level], ...]
    elapsed_s: float
    settled: bool
    interrupted: bool
    data_dir: Path
    #: Per escalation step (grid, street, district, city): how many alerts its duty
    #: officer was called in for.
    called_in: dict[str, int] = field(default_factory=dict)
    #: The alert incidents, oldest first: (kind, place, how many alerts it groups).
    grouped: tuple[tuple[str, str, int], ...] = ()
    missing_keys: tuple[tuple[str, int], ...] = field(default=(), repr=False)

    @property
    def ok(self) -> bool:
        """Nothing lost: the exit-code contract of the demo."""
        return self.missing == 0 and self.settled


ProgressHook = Callable[[str], None]
ReadyHook = Callable[[EmbeddedPipeline], Awaitable[None]]
AckHook = Callable[[str, int], None]


def load_city(options: DemoOptions) -> Registry:
    if options.registry_path is not None:
        return Registry.load(options.registry_path)
    return generate_city(nodes=options.nodes, districts=options.districts, seed=options.seed)


async def run_demo(
    options: DemoOptions,
    *,
    notifiers: Sequence[Notifier] = (),
    stop: asyncio.Event | None = None,
    progress: ProgressHook | None = None,
    on_ready: ReadyHook | None = None,
    on_ack: AckHook | None = None,
    extra_sinks: Sequence[ReadingSink] = (),
) -> DemoResult:
    """Run the demo.

    `on_ready` runs once the pipeline is up (tests inject input there);
    `on_ack(node, seq)` sees each reading the broker acknowledged (benchmarks
    time from there); `extra_sinks` (open, such as an InfluxSink) get every
    reading and warning too (`EmbeddedPipeline`).
    """
    from cityvitals.config import BrokerSettings
    from edge.buffer import Outbound
    from edge.fleet import SimulatedFleet
    from edge.simulate import Scenario

    stop = stop or asyncio.Event()
    city = load_city(options)
    log.info(
        "city: %d nodes in %d districts (%s)",
        len(city),
        len(city.districts()),
        options.registry_path or f"generated, seed {options.seed}",
    )
    scenario = Scenario.quiet() if options.quiet else Scenario.default(city, seed=options.seed)
    clock = SystemClock()
    day_start = options.day_start_ms
    if day_start is None:
        day_start = (clock.now_ms() // DAY_MS - 1) * DAY_MS
    options.data_dir.mkdir(parents=True, exist_ok=True)
    city.dump(options.data_dir / "registry.csv")

    acked: set[tuple[str, int]] = set()

    def count_ack(message: Outbound) -> None:
        acked.add((message.node, message.seq))
        if on_ack is not None:
            on_ack(message.node, message.seq)

    mqtt = BrokerSettings.from_url(options.mqtt_url) if options.mqtt_url else None
    began = time.monotonic()
    engine = None if options.rules_path is None else RuleEngine(load_rules(options.rules_path))
    desks = duty_desks(DEMO_LADDER)
    async with EmbeddedPipeline(
        city,
        data_dir=options.data_dir,
        notifiers=[*notifiers, *desks.values()],
        mqtt=mqtt,
        clock=clock,
        engine=engine,
        extra_sinks=extra_sinks,
        ladder=DEMO_LADDER,
        event_time=True,
    ) as pipeline:
        if on_ready is not None:
            await on_ready(pipeline)
        fleet = SimulatedFleet(
            city,
            scenario,
            pipeline.broker,
            seed=options.seed,
            day_start_ms=day_start,
            interval_s=options.interval_s,
            duration_s=options.duration_s,
            on_ack=count_ack,
        )
        reporter = asyncio.create_task(_report(pipeline, fleet, progress, began))
        try:
            await fleet.run(stop, flush_timeout=options.drain_timeout_s)
            settled = await _settle(
                pipeline,
                expected=acked,
                limit_s=options.drain_timeout_s,
                stall_s=options.stall_timeout_s,
            )
        finally:
            await cancel_and_wait(reporter)
        counts = pipeline.counts()
        elapsed = time.monotonic() - began

    return _result(
        options,
        pipeline,
        scenario=scenario,
        taken=fleet.submitted_keys(),
        acked=acked,
        counts=counts,
        elapsed=elapsed,
        settled=settled,
        interrupted=stop.is_set(),
        desks=desks,
    )


async def _settle(
    pipeline: EmbeddedPipeline, *, expected: set[tuple[str, int]], limit_s: float, stall_s: float
) -> bool:
    """Drain the pipeline; give up when nothing has moved for `stall_s` or after `limit_s`.

    Giving up is an outcome the summary reports (what was not stored is
    listed as lost), not an error: so no traceback.
    """
    drain = asyncio.ensure_future(pipeline.drain(expected=expected))
    began = last_change = time.monotonic()
    last: tuple[int, ...] = ()
    try:
        while not drain.done():
            await asyncio.wait({drain}, timeout=1.0)
            c = pipeline.counts()
            mark = (c.received, c.processed, c.notifications, c.delivered, c.failed)
            now = time.monotonic()
            if mark != last:
                last, last_change = mark, now
            elif now - last_change >= stall_s:
                log.error("pipeline stalled: nothing moved for %.0f s; giving up", stall_s)
                return False
            if now - began >= limit_s:
                log.error("pipeline did not settle in %.0f s; giving up", limit_s)
                return False
        drain.result()
        return True
    finally:
        if not drain.done():
            await cancel_and_wait(drain)
            await pipeline.flush()


def _result(
    options: DemoOptions,
    pipeline: EmbeddedPipeline,
    *,
    scenario: Scenario,
    taken: set[tuple[str, int]],
    acked: set[tuple[str, int]],
    counts: PipelineCounts,
    elapsed: float,
    settled: bool,
    interrupted: bool,
    desks: dict[str, DutyDesk],
) -> DemoResult:
    store = pipeline.store
    stored_keys = store.reading_keys()
    # Lost is counted from what the nodes took, not from what the broker
    # acknowledged: a reading stuck in an edge buffer is lost all the same.
    missing = sorted(taken - stored_keys)
    warnings = store.warnings()
    raised: dict[Level, int] = dict.fromkeys(WARNING_LEVELS, 0)
    peak: dict[tuple[str, str], Level] = {}
    for w in warnings:
        if w.level > w.previous:
            raised[w.level] += 1
        key = (w.subject, w.rule)
        peak[key] = max(peak.get(key, Level.NONE), w.level)
    checks = tuple(
        IncidentCheck(e.node, e.rule, e.level, peak.get((e.node, e.rule), Level.NONE))
        for e in scenario.expected
    )
    expected_keys = {(e.node, e.rule) for e in scenario.expected}
    unexpected = tuple(
        (node, rule, level)
        for (node, rule), level in sorted(peak.items())
        if (node, rule) not in expected_keys
    )
    return DemoResult(
        published=len(taken),
        acknowledged=len(acked),
        stored=len(stored_keys & taken),
        missing=len(missing),
        dead_letters=store.stats().dead_letters,
        duplicates=counts.duplicates,
        warnings_raised=raised,
        notifications=counts.notifications,
        delivered=counts.delivered,
        failed_deliveries=counts.failed,
        undelivered=counts.undelivered,
        incidents=checks,
        unexpected=unexpected,
        elapsed_s=elapsed,
        settled=settled,
        interrupted=interrupted,
        data_dir=options.data_dir,
        called_in={step: len(desk.alerts) for step, desk in desks.items()},
        grouped=tuple(
            (str(i.kind), i.place, len(i.alerts))
            for i in sorted(
                [*pipeline.alerts.incidents.recent(), *pipeline.alerts.incidents.open_incidents()],
                key=lambda i: i.opened_ms,
            )
        ),
        missing_keys=tuple(missing[:100]),
    )


async def _report(
    pipeline: EmbeddedPipeline, fleet: SimulatedFleet, progress: ProgressHook | None, began: float
) -> None:
    """Feed the progress line a few times a second (readings/s over the last second)."""
    if progress is None:
        return
    last_count, last_time = 0, time.monotonic()
    rate = 0.0
    while True:
        await asyncio.sleep(0.25)
        now = time.monotonic()
        c = pipeline.counts()
        f = fleet.progress()
        if now - last_time >= 1.0:
            rate = (c.processed - last_count) / (now - last_time)
            last_count, last_time = c.processed, now
        hh, mm = divmod(int(f.sim_time_s // 60), 60)
        active = " ".join(f"{lv.label} {c.active.get(lv, 0)}" for lv in WARNING_LEVELS)
        progress(
            f"sim {hh:02d}:{mm:02d}  published {f.acked:,}  processed {c.processed:,}  "
            f"{rate:,.0f} readings/s  active warnings: {active}  "
            f"dead letters {c.dead_letters}  alerts {c.notifications}  "
            f"[{now - began:.0f}s]"
        )


def install_signal_handlers(stop: asyncio.Event) -> None:
    """First SIGINT/SIGTERM: stop publishing, drain, summarise. Second: give up."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def handle() -> None:
        if stop.is_set():
            log.warning("second interrupt: stopping without draining")
            if main is not None:
                main.cancel()
            return
        log.info("interrupt: finishing what is in flight, then the summary (again to abort)")
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on every platform
            loop.add_signal_handler(sig, handle)
