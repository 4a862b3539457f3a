"""Response metrics: how long alerts take to be detected, acknowledged and resolved. Pure.

Each is measured from the alert's start (the reading that raised it):

- `detect`: to when the alert service recorded it firing (the pipeline's
  latency, edge buffers included);
- `acknowledge`: to when someone took it on;
- `resolve`: to when it resolved, by its warning clearing or by hand.

Kept by (what, district, kind, peak level), the last `keep` of each, so the
summary's percentiles describe recent behaviour in bounded memory; every
observation also goes to the sink (InfluxDB's `response` measurement) for
dashboards.

>>> times = ResponseTimes()
>>> for s in (30, 60, 90, 600):
...     times.add(Observation(what="acknowledge", fingerprint="f", rule="r", kind="smoke",
...                           district="Harbour", street="", grid="", unit="", level="red",
...                           seconds=s, at_ms=0))
>>> row = times.summary()[0]
>>> row["count"], row["p50_s"], row["p90_s"], row["max_s"]
(4, 75.0, 447.0, 600.0)
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final, Literal

import msgspec
import numpy as np

from alerts.model import Alert

__all__ = ["Observation", "ResponseTimes", "observe"]

What = Literal["detect", "acknowledge", "resolve"]
KEEP: Final = 1000


class Observation(msgspec.Struct, frozen=True, kw_only=True):
    what: What
    fingerprint: str
    rule: str
    kind: str
    district: str
    street: str
    grid: str
    unit: str
    level: str
    seconds: float
    at_ms: int


def observe(what: What, alert: Alert, *, at_ms: int) -> Observation:
    """The observation of `what` happening to `alert` at `at_ms`."""
    p = alert.placement
    return Observation(
        what=what,
        fingerprint=alert.fingerprint,
        rule=alert.rule,
        kind=alert.kind.value,
        district=p.district,
        street=p.street,
        grid=p.grid,
        unit=p.unit,
        level=alert.peak_level.label,
        seconds=max(0.0, (at_ms - alert.started_ms) / 1000),
        at_ms=at_ms,
    )


class ResponseTimes:
    def __init__(self, *, keep: int = KEEP) -> None:
        self._keep = keep
        self._by_key: dict[tuple[str, str, str, str], deque[float]] = {}

    def add(self, o: Observation) -> None:
        key = (o.what, o.district, o.kind, o.level)
        self._by_key.setdefault(key, deque(maxlen=self._keep)).append(o.seconds)

    def summary(self) -> list[dict[str, Any]]:
        """One row per (what, district, kind, level): count, mean, p50, p90, max (s)."""
        rows = []
        for (what, district, kind, level), values in sorted(self._by_key.items()):
            arr = np.fromiter(values, dtype=np.float64)
            rows.append(
                {
                    "what": what,
                    "district": district,
                    "kind": kind,
                    "level": level,
                    "count": len(arr),
                    "mean_s": round(float(arr.mean()), 3),
                    "p50_s": round(float(np.percentile(arr, 50)), 3),
                    "p90_s": round(float(np.percentile(arr, 90)), 3),
                    "max_s": round(float(arr.max()), 3),
                }
            )
        return rows
