"""`edge.toml`: what an edge agent runs, read once and checked whole.

Every mistake is one `ConfigError` naming the file, the key (as a path such
as `node[2].kind`) and what was expected, so an installer on a ladder can fix
it without reading code. The annotated example is `deploy/edge/edge.toml`.

>>> import tempfile, pathlib
>>> text = '''
... [agent]
... id = "pi-harbour-3"
... [mqtt]
... url = "mqtt://10.0.0.5"
... [[node]]
... id = "wl-0001"
... kind = "water_levle"
... simulate = {}
... '''
>>> with tempfile.TemporaryDirectory() as d:
...     path = pathlib.Path(d) / "edge.toml"
...     _ = path.write_text(text)
...     try:
...         load_edge_config(path)
...     except ConfigError as exc:
...         print(str(exc).replace(d, "DIR"))
DIR/edge.toml: node[0].kind: expected one of crowd, manhole, smoke, water_level, found 'water_levle'
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from cityvitals.config import BrokerSettings
from cityvitals.errors import ConfigError
from cityvitals.kinds import KIND_METRICS, Kind
from cityvitals.tomlconfig import BrokerSection, Schema, broker_settings
from edge.queue import QueueLimits
from edge.report import DEFAULT_METRICS, MetricPolicy, ReportPolicy

NODE_ID = r"^[a-z0-9][a-z0-9_-]{0,63}\Z"
Positive = Annotated[float, msgspec.Meta(gt=0)]


class _Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class AgentSection(_Section, frozen=True):
    id: Annotated[str, msgspec.Meta(pattern=NODE_ID)]
    data_dir: str = "/var/lib/cityvitals"
    heartbeat_s: Positive = 60.0
    log_every_s: Positive = 300.0


class MqttSection(BrokerSection, frozen=True):
    """The broker keys of `cityvitals.tomlconfig.BrokerSection`, and the publisher's."""

    window: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 32
    publish_timeout_s: Positive = 10.0
    #: Longest wait between reconnect attempts (exponential backoff, full jitter).
    reconnect_max_s: Positive = 10.0


class QueueSection(_Section, frozen=True):
    max_mb: Positive = 256.0
    max_age_h: Positive | None = None
    when_full: Literal["drop_oldest", "refuse_new"] = "drop_oldest"
    sync: Literal["full", "normal"] = "full"
    loss_report_s: Positive = 10.0


class ReportSection(_Section, frozen=True):
    enabled: bool = True
    interval_s: Positive = 60.0
    #: Default: 10 s, or the interval if that is shorter.
    fast_interval_s: Positive | None = None
    max_silent_s: Positive = 300.0
    #: "kind.metric" -> value, overriding the defaults of edge/report.py.
    deadband: dict[str, Annotated[float, msgspec.Meta(ge=0)]] = {}
    watch: dict[str, float] = {}


class SerialSection(_Section, frozen=True):
    name: Annotated[str, msgspec.Meta(pattern=NODE_ID)]
    port: str
    baud: Annotated[int, msgspec.Meta(ge=300, le=4_000_000)] = 9600


class SimulateSection(_Section, frozen=True):
    seed: int = 1
    #: Simulated seconds per wall-clock second: 1 is real time.
    speed: Positive = 1.0
    faults: bool = False
    #: Stop after this many samples (benchmarks and tests); none: run forever.
    limit: Annotated[int, msgspec.Meta(ge=1)] | None = None


class NodeSection(_Section, frozen=True):
    id: Annotated[str, msgspec.Meta(pattern=NODE_ID)]
    kind: Kind
    serial: str | None = None
    simulate: SimulateSection | None = None
    interval_s: Positive | None = None
    fast_interval_s: Positive | None = None
    report: bool | None = None


class EdgeFile(_Section, frozen=True):
    agent: AgentSection
    mqtt: MqttSection
    node: list[NodeSection]
    queue: QueueSection = QueueSection()
    report: ReportSection = ReportSection()
    serial: list[SerialSection] = []


_NODE_ID_TEXT = "1 to 64 lowercase letters, digits, '-' and '_', starting with a letter or digit"
_SCHEMA = Schema(
    EdgeFile,
    describe="an edge.toml file",
    hints={"agent.id": _NODE_ID_TEXT, "node[].id": _NODE_ID_TEXT, "serial[].name": _NODE_ID_TEXT},
)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node: str
    kind: Kind
    serial: str | None
    simulate: SimulateSection | None
    interval_s: float
    report: ReportPolicy | None  # None: every sample is reported


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    path: Path
    agent_id: str
    data_dir: Path
    heartbeat_s: float
    log_every_s: float
    broker: BrokerSettings
    window: int
    publish_timeout_s: float
    reconnect_max_s: float
    queue: QueueLimits
    synchronous: Literal["FULL", "NORMAL"]
    loss_report_s: float
    serial: tuple[SerialSection, ...]
    nodes: tuple[NodeConfig, ...]

    @property
    def queue_path(self) -> Path:
        return self.data_dir / f"{self.agent_id}.queue.db"

    def check_storage(self) -> None:
        """Can this user keep the queue in `data_dir`? (`--check` asks, so the
        systemd unit refuses to start rather than run without its queue.)"""
        problem = None
        if self.data_dir.exists() and not self.data_dir.is_dir():
            problem = "it is not a directory"
        elif self.data_dir.exists() and not os.access(self.data_dir, os.W_OK | os.X_OK):
            problem = "this user cannot write it"
        elif not self.data_dir.exists() and not os.access(
            _existing_parent(self.data_dir), os.W_OK | os.X_OK
        ):
            problem = "it does not exist and this user cannot create it"
        elif self.queue_path.exists() and not os.access(self.queue_path, os.R_OK | os.W_OK):
            problem = f"this user cannot read and write {self.queue_path.name}"
        if problem:
            raise ConfigError(
                self.path,
                "agent.data_dir",
                f"a directory the agent can write its queue to ({problem})",
                found=str(self.data_dir),
            )


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def load_edge_config(path: Path | str) -> EdgeConfig:
    path = Path(path)
    raw = _SCHEMA.load(path)
    return _build(path, raw)


def _build(path: Path, raw: EdgeFile) -> EdgeConfig:
    serial_names = [s.name for s in raw.serial]
    for i, name in enumerate(serial_names):
        if name in serial_names[:i]:
            raise ConfigError(path, f"serial[{i}].name", "a name used once", found=name)
    _check_overrides(path, raw.report)
    seen: set[str] = set()
    nodes = []
    for i, node in enumerate(raw.node):
        key = f"node[{i}]"
        if node.id in seen:
            raise ConfigError(path, f"{key}.id", "a node id used once", found=node.id)
        seen.add(node.id)
        if (node.serial is None) == (node.simulate is None):
            raise ConfigError(
                path, key, 'exactly one of serial = "<port name>" or simulate = {...}'
            )
        if node.serial is not None and node.serial not in serial_names:
            expected = (
                f"the name of a [[serial]] port ({', '.join(serial_names) or 'none defined'})"
            )
            raise ConfigError(path, f"{key}.serial", expected, found=node.serial)
        interval = node.interval_s or raw.report.interval_s
        fast = node.fast_interval_s or raw.report.fast_interval_s or min(10.0, interval)
        if fast > interval:
            raise ConfigError(
                path,
                f"{key}.fast_interval_s" if node.fast_interval_s else "report.fast_interval_s",
                f"at most the sampling interval ({interval:g} s): fast means more often",
                found=fast,
            )
        report = _report(raw, node, interval, fast)
        nodes.append(NodeConfig(node.id, node.kind, node.serial, node.simulate, interval, report))
    if not nodes:
        raise ConfigError(path, "node", "at least one [[node]]")
    limits = QueueLimits(
        max_bytes=max(4096, round(raw.queue.max_mb * 2**20)),
        max_age_s=raw.queue.max_age_h * 3600 if raw.queue.max_age_h else None,
        when_full=raw.queue.when_full,
    )
    return EdgeConfig(
        path=path,
        agent_id=raw.agent.id,
        data_dir=(path.parent / raw.agent.data_dir).resolve(),
        heartbeat_s=raw.agent.heartbeat_s,
        log_every_s=raw.agent.log_every_s,
        broker=broker_settings(path, raw.mqtt),
        window=raw.mqtt.window,
        publish_timeout_s=raw.mqtt.publish_timeout_s,
        reconnect_max_s=raw.mqtt.reconnect_max_s,
        queue=limits,
        synchronous="FULL" if raw.queue.sync == "full" else "NORMAL",
        loss_report_s=raw.queue.loss_report_s,
        serial=tuple(raw.serial),
        nodes=tuple(nodes),
    )


def _check_overrides(path: Path, section: ReportSection) -> None:
    for table, values in (("deadband", section.deadband), ("watch", section.watch)):
        for name in values:
            kind, _, metric = name.partition(".")
            if kind not in {k.value for k in Kind} or metric not in KIND_METRICS[Kind(kind)]:
                raise ConfigError(
                    path, f"report.{table}", 'keys like "water_level.depth_cm"', found=name
                )


def _report(
    raw: EdgeFile, node: NodeSection, interval_s: float, fast_interval_s: float
) -> ReportPolicy | None:
    section = raw.report
    if not (section.enabled if node.report is None else node.report):
        return None
    metrics: dict[str, MetricPolicy] = dict(DEFAULT_METRICS.get(node.kind, {}))
    for table, values in (("deadband", section.deadband), ("watch", section.watch)):
        for name, value in values.items():
            kind, _, metric = name.partition(".")
            if kind != node.kind:
                continue
            old = metrics.get(metric, MetricPolicy())
            if table == "deadband":
                metrics[metric] = MetricPolicy(deadband=value, watch=old.watch)
            else:
                metrics[metric] = MetricPolicy(deadband=old.deadband, watch=value)
    return ReportPolicy(
        metrics,
        max_silent_s=section.max_silent_s,
        interval_s=interval_s,
        fast_interval_s=fast_interval_s,
    )
