"""Where samples come from: a serial line of sensor nodes, or simulated nodes.

A driver turns its source into calls on a `SampleSink` (the agent) and
obeys the sampling interval the sink asks for. It never judges, buffers or
publishes: that is the agent's job, the same for every source.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from cityvitals.kinds import Kind
from cityvitals.registry import Device
from cityvitals.tasks import cancel_and_wait
from edge.config import NodeConfig, SerialSection
from edge.frames import EventFrame, ReadingFrame, SettingFrame
from edge.serial_link import LinkCounters, SerialLink
from edge.simulate import FaultPlan, NodeSimulator, Scenario

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Sample:
    node: str
    kind: Kind
    metrics: dict[str, float]
    battery_pct: float | None = None
    rssi_dbm: float | None = None


class SampleSink(Protocol):
    async def sample(self, sample: Sample) -> float | None:
        """Take a sample; returns the node's new sampling interval (s) when it changes."""
        ...

    async def node_event(self, node: str, kind: Kind, event: str, detail: str | None) -> None:
        """A node reported an alarm contact or a local event of its own."""
        ...

    def interval_s(self, node: str) -> float:
        """How often `node` should be sampled now."""
        ...


class SimulatedDriver:
    """One simulated node (edge/simulate.py physics), sampled on the agent's clock.

    Simulated time starts at the current local time of day and runs `speed`
    times faster than the wall clock, so a node's day follows the real one
    at speed 1.
    """

    def __init__(self, node: NodeConfig, sink: SampleSink) -> None:
        if node.simulate is None:
            raise ValueError(f"{node.node} is not a simulated node")
        self.node = node
        self.settings = node.simulate
        self._sink = sink
        device = Device(node.node, node.kind, 0.0, 0.0, "-", "-", "-", "-")
        self._sim = NodeSimulator(
            device,
            Scenario.quiet(),
            seed=self.settings.seed,
            faults=FaultPlan() if self.settings.faults else None,
        )
        self.samples = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        local = time.localtime()
        t0 = local.tm_hour * 3600 + local.tm_min * 60 + local.tm_sec
        start = next_at = loop.time()
        limit = self.settings.limit
        while limit is None or self.samples < limit:
            t = t0 + (loop.time() - start) * self.settings.speed
            if self._sim.reports(t):
                battery, rssi = self._sim.health(t)
                await self._sink.sample(
                    Sample(self.node.node, self.node.kind, self._sim.metrics(t), battery, rssi)
                )
                self.samples += 1
            # Paced on a schedule, not "sleep after work": no drift over a day.
            next_at = max(next_at + self._sink.interval_s(self.node.node), loop.time() - 1.0)
            await asyncio.sleep(max(0.0, next_at - loop.time()))


class SerialDriver:
    """Every node on one serial port (edge/frames.py protocol over edge/serial_link.py).

    Frames from nodes the agent was not told about are still passed on (the
    gateway's registry is the authority, and dropping them would lose data);
    the first one of each is logged so the installer can add it.
    """

    def __init__(
        self, port: SerialSection, nodes: Mapping[str, NodeConfig], sink: SampleSink
    ) -> None:
        self.port = port
        self.nodes = dict(nodes)
        self._sink = sink
        self.counters = LinkCounters()
        self.link = self._new_link()
        self._undeclared: set[str] = set()
        self._mismatched: set[str] = set()
        self._intervals: dict[str, float] = {}

    def _new_link(self) -> SerialLink:
        return SerialLink(
            self.port.name, self.port.port, baudrate=self.port.baud, counters=self.counters
        )

    async def run(self) -> None:
        if self.link.entered:
            self.link = self._new_link()  # restarted after a failure: a link is entered once
        async with self.link:
            settings = asyncio.create_task(self._keep_settings())
            try:
                async for frame in self.link.frames():
                    await self._handle(frame)
            finally:
                await cancel_and_wait(settings)

    async def _keep_settings(self) -> None:
        """Tell every node its interval each time the port (re)opens."""
        seen = 0
        while True:
            seen = await self.link.wait_opened(seen)
            for node in {**dict.fromkeys(self.nodes), **self._intervals}:
                await self._set_interval(node, self._sink.interval_s(node))

    async def _handle(self, frame: ReadingFrame | EventFrame) -> None:
        declared = self.nodes.get(frame.node)
        if declared is None and frame.node not in self._undeclared:
            self._undeclared.add(frame.node)
            log.warning(
                "serial %s: frames from %s (%s), which edge.toml does not list; "
                "passing them on, add a [[node]] for it",
                self.port.name,
                frame.node,
                frame.kind,
            )
        elif (
            declared is not None
            and declared.kind != frame.kind
            and frame.node not in self._mismatched
        ):
            self._mismatched.add(frame.node)
            log.warning(
                "serial %s: %s says it is %s, edge.toml says %s; using the frame's",
                self.port.name,
                frame.node,
                frame.kind,
                declared.kind,
            )
        if isinstance(frame, EventFrame):
            await self._sink.node_event(frame.node, frame.kind, frame.event, frame.detail)
            return
        sample = Sample(frame.node, frame.kind, frame.metrics, frame.battery_pct, frame.rssi_dbm)
        interval = await self._sink.sample(sample)
        if interval is not None:
            await self._set_interval(frame.node, interval)

    async def _set_interval(self, node: str, interval_s: float) -> None:
        self._intervals[node] = interval_s
        if not await self.link.send(SettingFrame(node, {"interval": interval_s})):
            log.debug(
                "serial %s: could not tell %s to sample every %g s",
                self.port.name,
                node,
                interval_s,
            )
