"""Report by exception, and sample faster near trouble.

A node on a battery and a cellular link should not send "still 0.4 cm" every
ten seconds, but it must not stay quiet while the water rises either. Three
rules, per node:

- a sample is *reported* when any metric moved more than its deadband since
  the last report, when nothing was reported for `max_silent_s` (so silence
  always means trouble, never "nothing changed"), or when it is the first;
- a node *samples fast* while any metric is at or above its watch level
  (a little under the lowest warning threshold), and back at the normal pace
  once every metric is below the watch level minus its deadband (hysteresis:
  no toggling on noise around the line);
- every sample taken while fast is reported: near a threshold the stream's
  rate-of-rise and forecast rules need every point.

Pure: the caller passes times in; no clocks, no I/O.

>>> policy = ReportPolicy({"depth_cm": MetricPolicy(deadband=0.5, watch=8.0)},
...                       max_silent_s=300.0, interval_s=60.0, fast_interval_s=10.0)
>>> node = policy.start()
>>> [node.offer(t, {"depth_cm": v}) for t, v in [(0, 0.4), (60, 0.5), (120, 1.2), (180, 1.3)]]
[True, False, True, False]
>>> node.offer(240, {"depth_cm": 8.5}), node.interval_s
(True, 10.0)
>>> node.offer(250, {"depth_cm": 8.6}), node.offer(260, {"depth_cm": 7.2}), node.interval_s
(True, True, 60.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cityvitals.kinds import Kind


@dataclass(frozen=True, slots=True)
class MetricPolicy:
    #: Report when the value moved more than this since the last report.
    deadband: float = 0.0
    #: Sample fast at or above this value (None: never).
    watch: float | None = None


@dataclass(frozen=True, slots=True)
class ReportPolicy:
    metrics: Mapping[str, MetricPolicy]
    max_silent_s: float = 300.0
    interval_s: float = 60.0
    fast_interval_s: float = 10.0

    def start(self) -> NodeReporter:
        return NodeReporter(self)


@dataclass(slots=True)
class NodeReporter:
    """The report/sample state of one node."""

    policy: ReportPolicy
    last_sent: dict[str, float] = field(default_factory=dict)
    last_sent_at: float | None = None
    fast: bool = False

    @property
    def interval_s(self) -> float:
        return self.policy.fast_interval_s if self.fast else self.policy.interval_s

    def offer(self, t: float, metrics: Mapping[str, float]) -> bool:
        """Take a sample at time `t` (seconds); True if it should be reported."""
        self.fast = self._near(metrics)
        report = (
            self.fast
            or self.last_sent_at is None
            or t - self.last_sent_at >= self.policy.max_silent_s
            or self._moved(metrics)
        )
        if report:
            self.last_sent = dict(metrics)
            self.last_sent_at = t
        return report

    def _moved(self, metrics: Mapping[str, float]) -> bool:
        for name, value in metrics.items():
            before = self.last_sent.get(name)
            if before is None:
                return True
            spec = self.policy.metrics.get(name)
            if abs(value - before) > (spec.deadband if spec else 0.0):
                return True
        return False

    def _near(self, metrics: Mapping[str, float]) -> bool:
        for name, value in metrics.items():
            spec = self.policy.metrics.get(name)
            if spec is None or spec.watch is None:
                continue
            line = spec.watch - spec.deadband if self.fast else spec.watch
            if value >= line:
                return True
        return False


#: Defaults per kind. Deadbands are about the sensors' noise; watch levels
#: sit at 80 % of the stream's lowest (blue) threshold in
#: stream/rules/default.toml, a test keeps them below it.
DEFAULT_METRICS: Mapping[Kind, Mapping[str, MetricPolicy]] = {
    Kind.WATER_LEVEL: {"depth_cm": MetricPolicy(deadband=0.5, watch=8.0)},
    Kind.MANHOLE: {
        "cover_tilt_deg": MetricPolicy(deadband=1.0, watch=4.0),
        "cover_open": MetricPolicy(deadband=0.0, watch=0.5),
        "gas_lel_pct": MetricPolicy(deadband=1.0, watch=4.0),
    },
    Kind.SMOKE: {
        "obscuration_pct_m": MetricPolicy(deadband=0.2, watch=0.8),
        "temperature_c": MetricPolicy(deadband=1.0, watch=36.0),
    },
    Kind.CROWD: {
        "density_m2": MetricPolicy(deadband=0.2, watch=1.6),
        "count": MetricPolicy(deadband=50.0),
    },
}
