"""A simulated city's worth of edge agents, publishing through the real edge code.

Nodes are grouped into agents by street (one Raspberry Pi per sub-district
office, say), each with its own `EdgePublisher` and MQTT connection. The
fleet walks a simulated day in fixed ticks: at each tick every node takes a
reading (`NodeSimulator`) and its agent submits it. Ticks are paced so the
day fits `duration_s` of wall time; when the pipeline cannot keep up the
fleet falls behind rather than skipping readings, because a reading's
timestamp is its simulated time, not the wall clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from typing import Any

from cityvitals.clock import EventClock
from cityvitals.config import BrokerSettings
from cityvitals.contract import CONTRACT_VERSION, Reading, encode
from cityvitals.registry import Registry
from cityvitals.topics import agent_status_topic
from edge.buffer import MemoryBuffer, Outbound
from edge.publisher import EdgePublisher
from edge.simulate import DAY_S, NodeSimulator, Scenario

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FleetProgress:
    sim_time_s: float
    ticks_done: int
    ticks_total: int
    submitted: int
    acked: int


class SimulatedFleet:
    """Simulate `city` over one day under `scenario`.

    `day_start_ms` is the simulated midnight; readings carry
    `day_start_ms + tick * interval_s + node phase`. `duration_s` = 0 runs as
    fast as the pipeline accepts.
    """

    def __init__(
        self,
        city: Registry,
        scenario: Scenario,
        broker: BrokerSettings,
        *,
        seed: int,
        day_start_ms: int,
        interval_s: float = 600.0,
        duration_s: float = 60.0,
        day_s: float = DAY_S,
        on_ack: Callable[[Outbound], None] | None = None,
        buffer_size: int = 5_000,
        heartbeat_s: float = 3600.0,
    ) -> None:
        self.city = city
        self.scenario = scenario
        self.broker = broker
        self.day_start_ms = day_start_ms
        self.interval_s = interval_s
        self.ticks_total = int(day_s // interval_s)
        self.duration_s = duration_s
        self._sims = {d.node: NodeSimulator(d, scenario, seed=seed) for d in city}
        self._on_ack = on_ack
        self._buffer_size = buffer_size
        #: Heartbeats every this many ticks of simulated time (an hour by default).
        self._heartbeat_ticks = max(1, round(heartbeat_s / interval_s))
        self._sim_clock = EventClock(day_start_ms)
        self._agents: dict[str, list[str]] = {}
        for device in city:
            agent = f"{device.grid[:2]}-{device.street.split()[0]}".lower()
            self._agents.setdefault(agent, []).append(device.node)
        self._publishers: list[EdgePublisher] = []
        self._seq = dict.fromkeys(self._sims, 0)
        self._ticks_done = 0
        self._submitted = 0
        self._acked = 0
        self._announced: set[str] = set()

    def progress(self) -> FleetProgress:
        return FleetProgress(
            sim_time_s=self._ticks_done * self.interval_s,
            ticks_done=self._ticks_done,
            ticks_total=self.ticks_total,
            submitted=self._submitted,
            acked=self._acked,
        )

    def _count_ack(self, message: Outbound) -> None:
        self._acked += 1
        if self._on_ack is not None:
            self._on_ack(message)

    async def run(
        self, stop: asyncio.Event, *, flush_timeout: float = 120.0, grace: float = 10.0
    ) -> None:
        """Publish the day (or until `stop`), then wait for the acknowledgements.

        The wait is bounded: `flush_timeout` normally, `grace` once `stop` is
        set. What is still unacknowledged then is logged and stays visible
        through `submitted_keys()` against what was stored.
        """
        async with AsyncExitStack() as stack:
            by_node: dict[str, EdgePublisher] = {}
            for agent, nodes in sorted(self._agents.items()):
                publisher = EdgePublisher(
                    self.broker,
                    agent_id=agent,
                    nodes=[(n, self._sims[n].device.kind) for n in nodes],
                    on_ack=self._count_ack,
                    buffer=MemoryBuffer(maxsize=self._buffer_size),
                    # The agents' statuses are dated on the simulated day, as its readings are.
                    clock=self._sim_clock,
                )
                await stack.enter_async_context(publisher)
                self._publishers.append(publisher)
                by_node.update(dict.fromkeys(nodes, publisher))
            log.info(
                "fleet: %d nodes on %d edge agents, %d ticks of %.0f s simulated",
                len(self._sims),
                len(self._agents),
                self.ticks_total,
                self.interval_s,
            )
            step = self.duration_s / self.ticks_total if self.ticks_total else 0.0
            began = time.monotonic()
            for tick in range(self.ticks_total):
                if stop.is_set():
                    log.info("fleet: stopped at tick %d of %d", tick, self.ticks_total)
                    break
                lag = began + tick * step - time.monotonic()
                if lag > 0:
                    # Wake early on stop so Ctrl-C is not held up by pacing.
                    with suppress(TimeoutError):
                        async with asyncio.timeout(lag):
                            await stop.wait()
                    if stop.is_set():
                        continue
                t = tick * self.interval_s
                self._sim_clock.at(self.day_start_ms + round(t * 1000))
                self._announce(t)
                if tick and tick % self._heartbeat_ticks == 0:
                    await self._heartbeats()
                for node, sim in self._sims.items():
                    if not await self._submit(by_node[node], self._reading(node, sim, t), stop):
                        break
                self._ticks_done = tick + 1
            await self._flush(stop, flush_timeout, grace)

    async def _submit(
        self, publisher: EdgePublisher, reading: Reading, stop: asyncio.Event
    ) -> bool:
        """Hand a reading to its agent; False if `stop` came while the buffer was full."""
        if publisher.pending < self._buffer_size:
            await publisher.submit(reading)  # room: returns at once
            return True
        # A full buffer means the broker is not acknowledging; wait for room
        # or for the operator to give up, whichever comes first.
        put = asyncio.ensure_future(publisher.submit(reading))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({put, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not put.done():
                put.cancel()
        if put.done() and not put.cancelled():
            return True
        log.warning("fleet: stopped while %s's buffer was full", publisher.agent_id)
        return False

    async def _flush(self, stop: asyncio.Event, limit_s: float, grace: float) -> None:
        """Wait for the broker to acknowledge everything: up to `limit_s`, or
        `grace` once `stop` is set; then say how much is left unacknowledged."""
        flushes = asyncio.ensure_future(
            asyncio.gather(*(p.flush() for p in self._publishers), return_exceptions=True)
        )
        stopped = asyncio.ensure_future(stop.wait())
        try:
            if not stop.is_set():
                either: set[asyncio.Future[Any]] = {flushes, stopped}
                await asyncio.wait(either, timeout=limit_s, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set() and not flushes.done():
                # Stopped by the operator: a short grace for what is in flight.
                await asyncio.wait({flushes}, timeout=grace)
        finally:
            stopped.cancel()
            flushes.cancel()
        left = sum(p.pending for p in self._publishers)
        if left:
            log.error("fleet: %d readings never acknowledged by the broker", left)
        else:
            log.info("fleet: %d readings published and acknowledged", self._acked)

    async def _heartbeats(self) -> None:
        """Each agent's heartbeat, as a real one sends it: alive, and how far behind."""
        for publisher in self._publishers:
            status = publisher.agent_status("online", buffer_depth=publisher.pending)
            await publisher.publish_now(
                agent_status_topic(publisher.agent_id), encode(status), retain=True
            )

    def submitted_keys(self) -> set[tuple[str, int]]:
        """Every (node, seq) the simulated nodes took, acknowledged or not."""
        return {(node, seq) for node, count in self._seq.items() for seq in range(count)}

    def _reading(self, node: str, sim: NodeSimulator, t: float) -> Reading:
        t_node = t + sim.phase_s
        battery, rssi = sim.health(t_node)
        seq = self._seq[node]
        self._seq[node] = seq + 1
        self._submitted += 1
        return Reading(
            v=CONTRACT_VERSION,
            node=node,
            kind=sim.device.kind,
            seq=seq,
            ts_ms=self.day_start_ms + round(t_node * 1000),
            metrics=sim.metrics(t_node),
            battery_pct=battery,
            rssi_dbm=rssi,
        )

    def _announce(self, t: float) -> None:
        for incident in self.scenario.incidents:
            if incident.start_s <= t and incident.name not in self._announced:
                self._announced.add(incident.name)
                hh, mm = divmod(int(incident.start_s // 60), 60)
                log.info("scenario: %02d:%02d %s", hh, mm, incident.title)
