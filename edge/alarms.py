"""Edge alarms: conditions critical enough to judge on the spot.

A lifted manhole cover or a smoke detector in alarm is known at the edge the
moment the sample is taken; waiting for the stream (and a backlog behind a
flaky uplink) wastes the minutes that matter. The agent raises an event on
`.../event` at once, through the urgent lane of its queue, ahead of any
queued telemetry. The stream still sees the readings and raises its own
warnings; the event is the early, local judgement.

An alarm fires on the rising edge and re-arms only once the value has fallen
below its clear level, so a cover rocking on its seat does not page twice.
Analogue alarms want `confirm` samples in a row at or above the alarm point,
as a detector's own alarm logic does: one noisy sample is not a gas leak
(and near the point the node samples fast, so confirming costs seconds).

>>> alarms = EdgeAlarms()
>>> alarms.check("mh-1", Kind.MANHOLE, {"cover_open": 1.0, "cover_tilt_deg": 30.0})
[('cover_opened', <Level.ORANGE: 3>, 'cover_open=1.0')]
>>> alarms.check("mh-1", Kind.MANHOLE, {"cover_open": 1.0, "cover_tilt_deg": 31.0})
[]
>>> alarms.check("mh-1", Kind.MANHOLE, {"cover_open": 0.0, "cover_tilt_deg": 1.0})
[]
>>> [alarms.check("mh-1", Kind.MANHOLE, {"gas_lel_pct": v}) for v in (35.0, 3.0, 25.0, 26.0)]
[[], [], [], [('gas_detected', <Level.ORANGE: 3>, 'gas_lel_pct=26.0')]]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cityvitals.kinds import Kind
from cityvitals.levels import Level


@dataclass(frozen=True, slots=True)
class AlarmRule:
    event: str
    kind: Kind
    metric: str
    fire_at: float
    clear_below: float
    level: Level
    confirm: int = 1


#: Local alarm points: what a detector or a cover switch would trip on.
DEFAULT_ALARMS: tuple[AlarmRule, ...] = (
    AlarmRule("cover_opened", Kind.MANHOLE, "cover_open", 0.5, 0.5, Level.ORANGE),
    AlarmRule("gas_detected", Kind.MANHOLE, "gas_lel_pct", 20.0, 10.0, Level.ORANGE, confirm=2),
    AlarmRule("smoke_alarm", Kind.SMOKE, "obscuration_pct_m", 4.0, 2.0, Level.ORANGE, confirm=2),
    AlarmRule("heat_alarm", Kind.SMOKE, "temperature_c", 65.0, 55.0, Level.ORANGE, confirm=2),
)


class EdgeAlarms:
    """Rising-edge detection of the alarm rules, per node."""

    def __init__(self, rules: Sequence[AlarmRule] = DEFAULT_ALARMS) -> None:
        self._rules: dict[Kind, list[AlarmRule]] = {}
        for rule in rules:
            self._rules.setdefault(rule.kind, []).append(rule)
        self._active: set[tuple[str, str]] = set()
        self._above: dict[tuple[str, str], int] = {}

    def check(
        self, node: str, kind: Kind, metrics: Mapping[str, float]
    ) -> list[tuple[str, Level, str]]:
        """Alarms that start with this sample: (event, level, detail)."""
        fired = []
        for rule in self._rules.get(kind, ()):
            value = metrics.get(rule.metric)
            if value is None:
                continue
            key = (node, rule.event)
            if key in self._active:
                if value < rule.clear_below:
                    self._active.discard(key)
                continue
            if value < rule.fire_at:
                self._above.pop(key, None)
                continue
            above = self._above.get(key, 0) + 1
            if above < rule.confirm:
                self._above[key] = above
                continue
            self._above.pop(key, None)
            self._active.add(key)
            fired.append((rule.event, rule.level, f"{rule.metric}={value}"))
        return fired
