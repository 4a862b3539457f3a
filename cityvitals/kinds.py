"""The four sensor kinds and their metrics, with units and physical ranges.

A range is what the quantity can physically be, not what is normal: a value
outside it means a broken sensor or a forged message, and the gateway
dead-letters it. What is *worrying* is for the early-warning rules to say.

>>> spec = metric_spec(Kind.WATER_LEVEL, "depth_cm")
>>> spec.unit, spec.low, spec.high
('cm', 0.0, 1000.0)
>>> spec.contains(-3.0)
False
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    MANHOLE = "manhole"
    WATER_LEVEL = "water_level"
    SMOKE = "smoke"
    CROWD = "crowd"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    unit: str
    low: float
    high: float
    description: str

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


KIND_METRICS: dict[Kind, dict[str, MetricSpec]] = {
    Kind.MANHOLE: {
        m.name: m
        for m in (
            MetricSpec("cover_tilt_deg", "deg", 0.0, 90.0, "cover tilt from its seat"),
            MetricSpec("cover_open", "bool", 0.0, 1.0, "1 when the cover is off its seat"),
            MetricSpec("gas_lel_pct", "%LEL", 0.0, 100.0, "flammable gas inside, % of LEL"),
        )
    },
    Kind.WATER_LEVEL: {
        m.name: m
        for m in (MetricSpec("depth_cm", "cm", 0.0, 1000.0, "standing water above the road"),)
    },
    Kind.SMOKE: {
        m.name: m
        for m in (
            MetricSpec("obscuration_pct_m", "%/m", 0.0, 100.0, "optical smoke obscuration"),
            MetricSpec("temperature_c", "degC", -40.0, 200.0, "air temperature at the detector"),
        )
    },
    Kind.CROWD: {
        m.name: m
        for m in (
            MetricSpec("count", "persons", 0.0, 200_000.0, "people in the counted zone"),
            MetricSpec("density_m2", "persons/m2", 0.0, 10.0, "people per square metre"),
        )
    },
}

# Health fields any node may attach to a reading.
BATTERY = MetricSpec("battery_pct", "%", 0.0, 100.0, "battery charge")
RSSI = MetricSpec("rssi_dbm", "dBm", -150.0, 0.0, "received signal strength")


def metric_spec(kind: Kind, metric: str) -> MetricSpec:
    """Look up one metric of a kind; `KeyError` if the kind has no such metric."""
    return KIND_METRICS[kind][metric]
