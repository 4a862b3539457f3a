"""Flux targets for grafana-foundation-sdk panels, which ship no InfluxDB query type.

A target is Grafana's InfluxDB query: `refId`, `query` (the Flux text),
`resultFormat` and the data source. Grafana fills in `v.timeRangeStart`,
`v.timeRangeStop`, `v.windowPeriod` and the dashboard's `${...}` variables
before InfluxDB sees it; `render` does the same for tests and scripts.

>>> q = FluxTarget(range_of("reading") + ' |> filter(fn: (r) => r._field == "seq")').build()
>>> q.to_json()["query"].splitlines()[0]
'from(bucket: "${bucket}")'
>>> render(q.query, start="2025-11-24T00:00:00Z", stop="2025-11-25T00:00:00Z").splitlines()[1]
'  |> range(start: 2025-11-24T00:00:00Z, stop: 2025-11-25T00:00:00Z)'
"""

from __future__ import annotations

from typing import Any, Final, Self

from grafana_foundation_sdk.cog import builder, variants
from grafana_foundation_sdk.models.dashboard import DataSourceRef

__all__ = ["DATASOURCE", "DATASOURCE_UID", "FluxTarget", "range_of", "render"]

#: The provisioned InfluxDB data source (deploy/grafana/provisioning/datasources).
DATASOURCE_UID: Final = "cityvitals-influxdb"
DATASOURCE: Final = DataSourceRef(type_val="influxdb", uid=DATASOURCE_UID)


class FluxQuery(variants.Dataquery):
    """One InfluxDB (Flux) target, as Grafana's InfluxDB plugin stores it."""

    def __init__(self, query: str) -> None:
        self.query = query
        self.ref_id = "A"
        self.result_format: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"refId": self.ref_id, "query": self.query, "datasource": DATASOURCE}
        if self.result_format is not None:
            out["resultFormat"] = self.result_format
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        q = cls(data.get("query", ""))
        q.ref_id = data.get("refId", "A")
        q.result_format = data.get("resultFormat")
        return q


class FluxTarget(builder.Builder[FluxQuery]):
    """`panel.with_target(FluxTarget(flux).ref_id("B").table())`."""

    def __init__(self, flux: str) -> None:
        self._internal = FluxQuery(flux)

    def build(self) -> FluxQuery:
        return self._internal

    def ref_id(self, ref_id: str) -> Self:
        self._internal.ref_id = ref_id
        return self

    def table(self) -> Self:
        """Rows rather than series (tables, the map)."""
        self._internal.result_format = "table"
        return self


def range_of(measurement: str) -> str:
    """The start of every query: the bucket, the dashboard's time range, one measurement."""
    return (
        'from(bucket: "${bucket}")\n'
        "  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)\n"
        f'  |> filter(fn: (r) => r._measurement == "{measurement}")'
    )


def render(
    flux: str,
    *,
    start: str,
    stop: str,
    window: str = "10m",
    variables: dict[str, str] | None = None,
) -> str:
    """The query as InfluxDB gets it from Grafana: the time range, the window, and
    every `${name}` / `${name:regex}` variable (`.*` unless given; `bucket`: cityvitals)."""
    values = {"bucket": "cityvitals", **(variables or {})}
    out = flux.replace("v.timeRangeStart", start).replace("v.timeRangeStop", stop)
    out = out.replace("v.windowPeriod", window)
    for name, value in values.items():
        out = out.replace("${" + name + "}", value)
    while "${" in out:
        begin = out.index("${")
        end = out.index("}", begin)
        out = out[:begin] + ".*" + out[end + 1 :]
    return out
