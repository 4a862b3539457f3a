"""The dashboards, as code: what operators see, built from what the sinks write.

Every query reads the measurements of docs/influxdb.md and nothing else;
`tests/integration/test_dashboards_influx.py` runs each one against a real
InfluxDB that a demo day filled and checks it returns rows. Threshold bands
come from the built-in early-warning rules (`stream/rules/default.toml`),
so a panel's colours are the levels the pipeline raises.

- `cityvitals-overview`, the city: a map of every node by warning level,
  active alerts by level, warnings over time, nodes by district and kind,
  the ingest rate, every warning on a timeline;
- `cityvitals-water-level`, `-crowd`, `-manhole`, `-smoke`: one per kind,
  with the rules' threshold bands (and the water level's forecasts);
- `cityvitals-devices`: last seen, battery, signal and state of every node;
- `cityvitals-pipeline`: readings by kind, the delay to the gateway, warning
  changes by rule, anomaly scores;
- `cityvitals-response`: time to detect, acknowledge and resolve.

>>> [d.uid for d in dashboards()][:2]
['cityvitals-overview', 'cityvitals-water-level']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from grafana_foundation_sdk.builders import (
    barchart,
    bargauge,
    geomap,
    stat,
    statetimeline,
    table,
    timeseries,
)
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders.dashboard import (
    ConstantVariable,
    Dashboard,
    FieldColor,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.dashboard import (
    DynamicConfigValue,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableRefresh,
    VariableSort,
)

from cityvitals.dashboards.flux import DATASOURCE, FluxTarget, range_of
from cityvitals.kinds import Kind
from cityvitals.levels import Level
from stream.rules import default_rules
from stream.rules.threshold import ThresholdRule

__all__ = ["dashboards"]

TAGS: Final = ["cityvitals"]
#: Grafana's colours for the four warning levels (and none).
LEVEL_COLOURS: Final = {
    Level.NONE: "green",
    Level.BLUE: "blue",
    Level.YELLOW: "yellow",
    Level.ORANGE: "orange",
    Level.RED: "red",
}
#: After a regroup rows are in no time order: the latest of each group, by time.
_LATEST: Final = '\n  |> sort(columns: ["_time"])\n  |> last()'
DISTRICT_FILTER: Final = "  |> filter(fn: (r) => r.district =~ /^${district:regex}$/)"


def dashboards() -> list[model.Dashboard]:
    """Every board, built (`JSONEncoder` turns each into Grafana's JSON)."""
    return [
        city_overview(),
        water_level(),
        crowd(),
        manhole(),
        smoke(),
        device_health(),
        pipeline_health(),
        response_times(),
    ]


# -- pieces -------------------------------------------------------------------------


def _board(uid: str, title: str, description: str, *, districts: bool = True) -> Dashboard:
    board = (
        Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .time("now-24h", "now")
        .refresh("1m")
        .timezone(common.TimeZoneBrowser)
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .with_variable(
            ConstantVariable("bucket")
            .value("cityvitals")
            .description(
                "The InfluxDB bucket the stream writes (cityvitals.toml [influxdb] bucket)."
            )
        )
    )
    if districts:
        board = board.with_variable(
            QueryVariable("district")
            .label("District")
            .datasource(DATASOURCE)
            .query(
                'import "influxdata/influxdb/schema"\n'
                'schema.tagValues(bucket: "${bucket}", tag: "district", '
                'predicate: (r) => r._measurement == "reading", start: -30d)'
            )
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    return board


def _levels(thresholds: dict[Level, float] | None = None) -> ThresholdsConfig:
    """Green below the first level, then each level's colour from its threshold on;
    without `thresholds`, the level numbers 1..4 themselves."""
    steps = [Threshold(value=None, color=LEVEL_COLOURS[Level.NONE])]
    marks = thresholds or {level: float(level) for level in Level if level is not Level.NONE}
    steps += [Threshold(value=v, color=LEVEL_COLOURS[lv]) for lv, v in sorted(marks.items())]
    return ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps)


def _rule_bands(rule_name: str) -> ThresholdsConfig:
    rule = next(r for r in default_rules() if r.name == rule_name)
    assert isinstance(rule, ThresholdRule)  # noqa: S101 - the built-in rules are ours
    return _levels(dict(rule.thresholds))


def _level_mappings() -> list[model.ValueMapping]:
    return [
        ValueMap(
            options={
                str(int(lv)): ValueMappingResult(
                    text=lv.label, color=LEVEL_COLOURS[lv], index=int(lv)
                )
                for lv in Level
            }
        )
    ]


def _series(
    title: str,
    flux: str,
    *,
    unit: str = "",
    bands: ThresholdsConfig | None = None,
    span: int = 12,
    description: str = "",
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(FluxTarget(flux))
        .line_width(1)
        .fill_opacity(5)
        .span(span)
        .height(9)
        .legend(
            cb.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.RIGHT)
            .show_legend(True)
            .calcs(["max", "lastNotNull"])
        )
    )
    if unit:
        panel = panel.unit(unit)
    if bands is not None:
        panel = panel.thresholds(bands).thresholds_style(
            cb.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE_AND_AREA)
        )
    return panel


def _metric(kind: Kind, metric: str, by: str = "node") -> str:
    """Mean of one metric per `by` per window, in the chosen districts."""
    return (
        range_of("reading")
        + f'\n  |> filter(fn: (r) => r.kind == "{kind.value}" and r._field == "{metric}")\n'
        + DISTRICT_FILTER
        + f'\n  |> group(columns: ["{by}"])'
        + "\n  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)"
    )


def _banded(title: str, kind: Kind, metric: str, unit: str, rule: str) -> timeseries.Panel:
    """One metric per node, with the bands of the rule that watches it."""
    return _series(title, _metric(kind, metric), unit=unit, bands=_rule_bands(rule))


def _warnings_timeline(title: str, kind: Kind | None, span: int = 24) -> statetimeline.Panel:
    where = "" if kind is None else f' and r.kind == "{kind.value}"'
    flux = (
        range_of("warning")
        + f'\n  |> filter(fn: (r) => r._field == "level_n"{where})\n'
        + DISTRICT_FILTER
        + "\n  |> map(fn: (r) => ({r with subject: if exists r.node then r.node"
        ' else r.area_scope + ":" + r.area}))'
        + '\n  |> group(columns: ["subject", "rule"])'
        + '\n  |> keep(columns: ["_time", "_value", "subject", "rule"])'
    )
    return (
        statetimeline.Panel()
        .title(title)
        .description("Each condition's level over time, as the stream raised and cleared it.")
        .datasource(DATASOURCE)
        .with_target(FluxTarget(flux))
        .mappings(_level_mappings())
        .thresholds(_levels())
        .color_scheme(FieldColor().mode(model.FieldColorModeId.THRESHOLDS))
        .show_value(common.VisibilityMode.NEVER)
        .merge_values(True)
        .span(span)
        .height(8)
    )


# -- the city -------------------------------------------------------------------------

_NODES_NOW: Final = (
    'import "join"\n'
    "nodes = "
    + range_of("reading")
    + '\n  |> filter(fn: (r) => r._field == "lat" or r._field == "lon")\n'
    + DISTRICT_FILTER
    + "\n  |> last()"
    + '\n  |> pivot(rowKey: ["node", "kind", "district", "street", "grid"],'
    ' columnKey: ["_field"], valueColumn: "_value")'
    "\n  |> group()\n"
    "levels = "
    + range_of("warning")
    + '\n  |> filter(fn: (r) => r._field == "level_n" and exists r.node)'
    + '\n  |> group(columns: ["node", "rule"])'
    + _LATEST
    + "\n  |> map(fn: (r) => ({r with offline: if r.rule =~ /^presence\\./ and r._value > 0"
    " then 1 else 0}))"
    '\n  |> group(columns: ["node"])'
    "\n  |> reduce(identity: {level: 0, offline: 0}, fn: (r, accumulator) => ({"
    "\n      level: if r.rule =~ /^presence\\./ or accumulator.level > r._value"
    " then accumulator.level else r._value,"
    "\n      offline: if r.offline > accumulator.offline then r.offline"
    " else accumulator.offline}))"
    "\n  |> group()\n"
    "join.left(left: nodes, right: levels, on: (l, r) => l.node == r.node,"
    "\n  as: (l, r) => ({node: l.node, kind: l.kind, district: l.district, street: l.street,"
    "\n                  grid: l.grid, lat: l.lat, lon: l.lon,"
    "\n                  level: if exists r.level then r.level else 0,"
    '\n                  state: if exists r.offline and r.offline > 0 then "offline"'
    ' else "online"}))'
    # The marker's colour: grey while offline (-1), else the level (0 green .. 4 red).
    '\n  |> map(fn: (r) => ({r with shade: if r.state == "offline" then -1 else r.level}))'
)

_ACTIVE_BY_LEVEL: Final = (
    'import "array"\n'
    "active = "
    + range_of("warning")
    + '\n  |> filter(fn: (r) => r._field == "level_n")\n'
    + DISTRICT_FILTER
    + '\n  |> group(columns: ["rule", "node", "area"])'
    + _LATEST
    + "\n  |> filter(fn: (r) => r._value > 0)"
    "\n  |> map(fn: (r) => ({level: r.level, _value: 1}))\n"
    # Every level always, so a quiet city shows four zeros rather than "No data".
    "none = array.from(rows: ["
    + ", ".join(f'{{level: "{lv.label}", _value: 0}}' for lv in reversed(Level) if lv)
    + "])\n"
    "union(tables: [active, none])"
    '\n  |> group(columns: ["level"])'
    "\n  |> sum()"
    "\n  |> group()"
    '\n  |> pivot(rowKey: [], columnKey: ["level"], valueColumn: "_value")'
)


def city_overview() -> model.Dashboard:
    board = _board(
        "cityvitals-overview",
        "City overview",
        "One screen for the whole city: where every node is and how worried it is.",
    )
    city_map = (
        geomap.Panel()
        .title("Every node, by warning level")
        .description(
            "Each node where the registry places it, coloured by the highest level of its "
            "open warnings now (green: none), grey while it is offline."
        )
        .datasource(DATASOURCE)
        .with_target(FluxTarget(_NODES_NOW).table())
        .view(geomap.MapViewConfig().id("fit"))
        .controls(geomap.ControlsOptions().show_zoom(True).mouse_wheel_zoom(True))
        .basemap(cb.MapLayerOptions().type("default").name("Basemap"))
        .layers(
            [
                cb.MapLayerOptions()
                .type("markers")
                .name("Nodes")
                .tooltip(True)
                .location(
                    cb.FrameGeometrySource()
                    .mode(common.FrameGeometrySourceMode.COORDS)
                    .latitude("lat")
                    .longitude("lon")
                )
                .config(
                    {
                        "showLegend": True,
                        "style": {
                            "color": {"field": "shade", "fixed": "green"},
                            "size": {"fixed": 7},
                            "opacity": 0.9,
                            "symbol": {"mode": "fixed", "fixed": "img/icons/marker/circle.svg"},
                            "text": {"field": "node", "mode": "field"},
                        },
                    }
                )
            ]
        )
        .thresholds(
            ThresholdsConfig()
            .mode(ThresholdsMode.ABSOLUTE)
            .steps(
                [Threshold(value=None, color="text")]  # offline: below every level
                + [Threshold(value=float(lv), color=c) for lv, c in LEVEL_COLOURS.items()]
            )
        )
        .color_scheme(FieldColor().mode(model.FieldColorModeId.THRESHOLDS))
        .span(16)
        .height(18)
    )
    active = (
        stat.Panel()
        .title("Active alerts by level")
        .description("Conditions whose latest warning is above none, per level.")
        .datasource(DATASOURCE)
        .with_target(FluxTarget(_ACTIVE_BY_LEVEL).table())
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(
            ThresholdsConfig()
            .mode(ThresholdsMode.ABSOLUTE)
            .steps([Threshold(value=None, color="green"), Threshold(value=1, color="red")])
        )
        .span(8)
        .height(6)
    )
    for lv in (Level.RED, Level.ORANGE, Level.YELLOW, Level.BLUE):
        active = active.override_by_name(
            lv.label,
            [
                DynamicConfigValue(
                    id_val="thresholds",
                    value={
                        "mode": "absolute",
                        "steps": [
                            {"value": None, "color": "green"},
                            {"value": 1, "color": LEVEL_COLOURS[lv]},
                        ],
                    },
                )
            ],
        )
    changes = _series(
        "Warnings raised by level",
        range_of("warning")
        + '\n  |> filter(fn: (r) => r._field == "level_n" and r.level != "none")\n'
        + DISTRICT_FILTER
        + '\n  |> group(columns: ["level"])'
        + "\n  |> aggregateWindow(every: v.windowPeriod, fn: count, createEmpty: false)",
        span=8,
        description="Warning changes to a level (not clears), per window.",
    )
    by_district = (
        barchart.Panel()
        .title("Nodes by district and kind")
        .description("Nodes that reported in the time range.")
        .datasource(DATASOURCE)
        .with_target(
            FluxTarget(
                range_of("reading")
                + '\n  |> filter(fn: (r) => r._field == "seq")\n'
                + DISTRICT_FILTER
                + '\n  |> group(columns: ["district", "kind", "node"])'
                "\n  |> last()"
                '\n  |> group(columns: ["district", "kind"])'
                "\n  |> count()"
                "\n  |> group()"
                '\n  |> pivot(rowKey: ["district"], columnKey: ["kind"], valueColumn: "_value")'
            ).table()
        )
        .x_field("district")
        .stacking(common.StackingMode.NORMAL)
        .show_value(common.VisibilityMode.AUTO)
        .span(12)
        .height(8)
    )
    ingest = _series(
        "Ingest rate",
        range_of("reading")
        + '\n  |> filter(fn: (r) => r._field == "seq")\n'
        + DISTRICT_FILTER
        + "\n  |> group()"
        + "\n  |> aggregateWindow(every: 1m, fn: count, createEmpty: false)"
        + '\n  |> map(fn: (r) => ({r with _field: "readings per minute"}))',
        unit="short",
        span=12,
        description="Readings stored per minute (by reading time).",
    )
    return (
        board.with_panel(city_map)
        .with_panel(active)
        .with_panel(changes)
        .with_row(Row("The city"))
        .with_panel(by_district)
        .with_panel(ingest)
        .with_row(Row("Warnings"))
        .with_panel(_warnings_timeline("Every warning, by node or area", None))
        .build()
    )


# -- one board per kind -----------------------------------------------------------------


def _kind_board(kind: Kind, uid: str, title: str, panels: Sequence[Any]) -> model.Dashboard:
    board = _board(uid, title, f"The {kind.value.replace('_', ' ')} sensors.")
    for panel in panels:
        board = board.with_panel(panel)
    return board.with_panel(_warnings_timeline(f"{title}: warnings", kind)).build()


def water_level() -> model.Dashboard:
    forecast = (
        table.Panel()
        .title("Forecast: when the water reaches the next level")
        .description(
            "Forecast rules' predicted crossings (deploy/rules.toml water_level.forecast_red): "
            "the time the trend says the threshold will be reached."
        )
        .datasource(DATASOURCE)
        .with_target(
            FluxTarget(
                range_of("warning")
                + '\n  |> filter(fn: (r) => r.kind == "water_level" and exists r.node and'
                ' (r._field == "predicted_crossing_ms" or r._field == "value"'
                ' or r._field == "threshold"))\n'
                + DISTRICT_FILTER
                + '\n  |> pivot(rowKey: ["_time", "node", "rule", "level"],'
                ' columnKey: ["_field"], valueColumn: "_value")'
                "\n  |> filter(fn: (r) => exists r.predicted_crossing_ms)"
                "\n  |> map(fn: (r) => ({_time: r._time, node: r.node, rule: r.rule,"
                " level: r.level, depth_cm: r.value, threshold_cm: r.threshold,"
                " crossing: time(v: r.predicted_crossing_ms * 1000000)}))"
                "\n  |> group()"
                '\n  |> sort(columns: ["_time"], desc: true)'
            ).table()
        )
        .span(24)
        .height(7)
    )
    return _kind_board(
        Kind.WATER_LEVEL,
        "cityvitals-water-level",
        "Water level",
        [
            _series(
                "Standing water by node",
                _metric(Kind.WATER_LEVEL, "depth_cm"),
                unit="lengthcm",
                bands=_rule_bands("water_level.depth"),
                span=24,
                description="Bands: the built-in water_level.depth levels.",
            ),
            forecast,
        ],
    )


def crowd() -> model.Dashboard:
    return _kind_board(
        Kind.CROWD,
        "cityvitals-crowd",
        "Crowds",
        [
            _series(
                "Crowd density by grid",
                _metric(Kind.CROWD, "density_m2", by="grid"),
                unit="persons/m²",
                bands=_rule_bands("crowd.density"),
                description="Mean over the grid cell's counters; bands: crowd.density.",
            ),
            _series(
                "People counted by district",
                range_of("reading")
                + '\n  |> filter(fn: (r) => r.kind == "crowd" and r._field == "count")\n'
                + DISTRICT_FILTER
                + '\n  |> group(columns: ["district"])'
                + "\n  |> aggregateWindow(every: v.windowPeriod, fn: sum, createEmpty: false)",
                unit="short",
            ),
        ],
    )


def manhole() -> model.Dashboard:
    opened = (
        statetimeline.Panel()
        .title("Covers open")
        .datasource(DATASOURCE)
        .with_target(
            FluxTarget(
                range_of("reading")
                + '\n  |> filter(fn: (r) => r.kind == "manhole" and r._field == "cover_open")\n'
                + DISTRICT_FILTER
                + '\n  |> group(columns: ["node"])'
                + '\n  |> keep(columns: ["_time", "_value", "node"])'
            )
        )
        .mappings(
            [
                ValueMap(
                    options={
                        "0": ValueMappingResult(text="closed", color="green", index=0),
                        "1": ValueMappingResult(text="open", color="red", index=1),
                    }
                )
            ]
        )
        .show_value(common.VisibilityMode.NEVER)
        .merge_values(True)
        .span(24)
        .height(8)
    )
    return _kind_board(
        Kind.MANHOLE,
        "cityvitals-manhole",
        "Manhole covers",
        [
            _banded("Cover tilt", Kind.MANHOLE, "cover_tilt_deg", "degree", "manhole.cover_tilt"),
            _banded(
                "Gas inside (% of the lower explosive limit)",
                Kind.MANHOLE,
                "gas_lel_pct",
                "percent",
                "manhole.gas",
            ),
            opened,
        ],
    )


def smoke() -> model.Dashboard:
    return _kind_board(
        Kind.SMOKE,
        "cityvitals-smoke",
        "Smoke and fire",
        [
            _banded(
                "Smoke obscuration", Kind.SMOKE, "obscuration_pct_m", "%/m", "smoke.obscuration"
            ),
            _banded(
                "Temperature at the detector",
                Kind.SMOKE,
                "temperature_c",
                "celsius",
                "smoke.temperature",
            ),
        ],
    )


# -- devices, pipeline, response ----------------------------------------------------------

_LAST_SEEN: Final = (
    'import "array"\nimport "join"\n'
    "seen = "
    + range_of("reading")
    + '\n  |> filter(fn: (r) => r._field == "seq" or r._field == "battery_pct"'
    ' or r._field == "rssi_dbm")\n'
    + DISTRICT_FILTER
    + '\n  |> group(columns: ["node", "kind", "district", "street", "_field"])'
    "\n  |> last()"
    '\n  |> pivot(rowKey: ["node", "kind", "district", "street"], columnKey: ["_field"],'
    ' valueColumn: "_value")'
    "\n  |> group()\n"
    "times = "
    + range_of("reading")
    + '\n  |> filter(fn: (r) => r._field == "seq")\n'
    + DISTRICT_FILTER
    + '\n  |> group(columns: ["node"])'
    "\n  |> last()"
    '\n  |> keep(columns: ["node", "_time"])'
    "\n  |> group()\n"
    "offline = "
    + range_of("warning")
    + '\n  |> filter(fn: (r) => r._field == "level_n" and r.rule =~ /^presence\\./)'
    '\n  |> group(columns: ["node", "rule"])' + _LATEST + '\n  |> group(columns: ["node"])'
    "\n  |> max()"
    '\n  |> keep(columns: ["node", "_value"])'
    "\n  |> group()\n"
    # A join refuses an empty side: one row no node has keeps it from being empty.
    'presence = union(tables: [offline, array.from(rows: [{node: "", _value: 0}])])\n'
    "both = join.inner(left: seen, right: times, on: (l, r) => l.node == r.node,"
    "\n  as: (l, r) => ({l with last_seen: r._time}))\n"
    "join.left(left: both, right: presence, on: (l, r) => l.node == r.node,"
    "\n  as: (l, r) => ({node: l.node, kind: l.kind, district: l.district, street: l.street,"
    "\n                  last_seen: l.last_seen, battery_pct: l.battery_pct,"
    " rssi_dbm: l.rssi_dbm, seq: l.seq,"
    '\n                  state: if exists r._value and r._value > 0 then "offline" else "online"}))'
    '\n  |> sort(columns: ["last_seen"])'
)


def device_health() -> model.Dashboard:
    nodes = (
        table.Panel()
        .title("Every node: last seen, battery, signal, state")
        .description(
            "Oldest report first. State: offline while a presence warning is open "
            "(the node or its edge agent went silent or said goodbye)."
        )
        .datasource(DATASOURCE)
        .with_target(FluxTarget(_LAST_SEEN).table())
        .filterable(True)
        .override_by_name(
            "battery_pct",
            [
                DynamicConfigValue(id_val="unit", value="percent"),
                DynamicConfigValue(
                    id_val="thresholds",
                    value={
                        "mode": "absolute",
                        "steps": [
                            {"value": None, "color": "red"},
                            {"value": 20, "color": "orange"},
                            {"value": 40, "color": "green"},
                        ],
                    },
                ),
                DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"}),
            ],
        )
        .override_by_name(
            "state",
            [
                DynamicConfigValue(
                    id_val="mappings",
                    value=[
                        {
                            "type": "value",
                            "options": {
                                "offline": {"color": "red", "index": 0},
                                "online": {"color": "green", "index": 1},
                            },
                        }
                    ],
                ),
                DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-text"}),
            ],
        )
        .span(24)
        .height(12)
    )
    batteries = (
        bargauge.Panel()
        .title("Lowest batteries")
        .datasource(DATASOURCE)
        .with_target(
            FluxTarget(
                range_of("reading")
                + '\n  |> filter(fn: (r) => r._field == "battery_pct")\n'
                + DISTRICT_FILTER
                + '\n  |> group(columns: ["node"])'
                "\n  |> last()"
                "\n  |> group()"
                '\n  |> sort(columns: ["_value"])'
                "\n  |> limit(n: 15)"
                '\n  |> keep(columns: ["node", "_value"])'
            ).table()
        )
        .unit("percent")
        .min(0)
        .max(100)
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .orientation(common.VizOrientation.HORIZONTAL)
        .reduce_options(cb.ReduceDataOptions().values(True).calcs(["lastNotNull"]))
        .thresholds(
            ThresholdsConfig()
            .mode(ThresholdsMode.ABSOLUTE)
            .steps(
                [
                    Threshold(value=None, color="red"),
                    Threshold(value=20, color="orange"),
                    Threshold(value=40, color="green"),
                ]
            )
        )
        .span(12)
        .height(10)
    )
    signal = _series(
        "Signal strength by district",
        range_of("reading")
        + '\n  |> filter(fn: (r) => r._field == "rssi_dbm")\n'
        + DISTRICT_FILTER
        + '\n  |> group(columns: ["district"])'
        + "\n  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)",
        unit="dBm",
    )
    buffers = _series(
        "Edge buffer depth, by agent",
        range_of("agent")
        + '\n  |> filter(fn: (r) => r._field == "buffer_depth")'
        + '\n  |> group(columns: ["agent"])'
        + "\n  |> aggregateWindow(every: v.windowPeriod, fn: max, createEmpty: false)",
        unit="short",
        description=(
            "Readings waiting on each edge agent's disk for the broker, from its status "
            "(birth, heartbeats, goodbye): growing means it cannot reach the broker."
        ),
    )
    return (
        _board("cityvitals-devices", "Device health", "Is every sensor there, and for how long?")
        .with_panel(nodes)
        .with_panel(batteries)
        .with_panel(signal)
        .with_panel(buffers)
        .build()
    )


def pipeline_health() -> model.Dashboard:
    ingest = _series(
        "Readings stored by kind",
        range_of("reading")
        + '\n  |> filter(fn: (r) => r._field == "seq")'
        + '\n  |> group(columns: ["kind"])'
        + "\n  |> aggregateWindow(every: v.windowPeriod, fn: count, createEmpty: false)",
        unit="short",
        description="Per window, by reading time: a kind that goes quiet shows here first.",
    )
    delay = _series(
        "Delay from the sensor to the gateway (p95)",
        range_of("reading")
        + '\n  |> filter(fn: (r) => r._field == "received_ms")'
        + "\n  |> map(fn: (r) => ({r with _value:"
        " float(v: r._value - int(v: r._time) / 1000000) / 1000.0}))"
        + '\n  |> group(columns: ["kind"])'
        + "\n  |> aggregateWindow(every: v.windowPeriod,"
        " fn: (tables=<-, column) => tables |> quantile(q: 0.95, column: column),"
        " createEmpty: false)",
        unit="s",
        description=(
            "Gateway receive time minus the reading's own time: edge buffering after an "
            "outage, or a drifting node clock."
        ),
    )
    changes = _series(
        "Warning changes by rule",
        range_of("warning")
        + '\n  |> filter(fn: (r) => r._field == "level_n")'
        + '\n  |> group(columns: ["rule"])'
        + "\n  |> aggregateWindow(every: v.windowPeriod, fn: count, createEmpty: false)",
        unit="short",
        description="A rule that flaps shows as a dense line here.",
    )
    scores = _series(
        "Anomaly score, worst per kind",
        range_of("score")
        + '\n  |> filter(fn: (r) => r._field == "anomaly_score")'
        + '\n  |> group(columns: ["kind"])'
        + "\n  |> aggregateWindow(every: v.windowPeriod, fn: max, createEmpty: false)",
        description="From `anomaly` rules (deploy/rules.toml); none without them.",
    )
    backlog = _series(
        "Stream backlog (Kafka lag)",
        _counter("stream", "backlog", "instance", fn="max"),
        unit="short",
        description=(
            "Readings the gateway forwarded that the stream has not handled yet: the "
            "stream group's Kafka lag, as each worker sees it (the embedded pipeline: its "
            "in-memory channel). Growing: add stream workers."
        ),
    )
    dead = _series(
        "Dead letters, by gateway",
        _counter("gateway", "dead_letters", "instance"),
        unit="short",
        description=(
            "Messages refused (malformed, unknown node, impossible value), totals since "
            "each gateway started: a step up is new dead letters, each kept with its reason."
        ),
    )
    failed = _series(
        "Failed deliveries, by receiver",
        _counter("alerts", "failed", "receiver"),
        unit="short",
        description=(
            "Notifications given up after the receiver's retry horizon (dead letters of the "
            "outbox: `cityvitals alerts outbox`), totals since the alerts service started."
        ),
    )
    owed = _series(
        "Notifications owed, by receiver",
        _counter("alerts", "pending", "receiver", fn="max"),
        unit="short",
        description="Queued or being retried: a receiver that is down shows a growing line.",
    )
    return (
        _board(
            "cityvitals-pipeline",
            "Pipeline health",
            "What the stream stores and raises, how late readings arrive, and what is "
            "stuck: backlog, dead letters, failed and owed notifications.",
            districts=False,
        )
        .with_panel(ingest)
        .with_panel(backlog)
        .with_panel(dead)
        .with_panel(failed)
        .with_panel(owed)
        .with_panel(delay)
        .with_panel(changes)
        .with_panel(scores)
        .build()
    )


def _counter(role: str, field: str, by: str, *, fn: str = "last") -> str:
    """A role's counter (`pipeline`, stream.sinks.meter) per window, by `by`."""
    return (
        range_of("pipeline")
        + f'\n  |> filter(fn: (r) => r.role == "{role}" and r._field == "{field}")'
        + f'\n  |> group(columns: ["{by}"])'
        + f"\n  |> aggregateWindow(every: v.windowPeriod, fn: {fn}, createEmpty: false)"
    )


def response_times() -> model.Dashboard:
    def quantiles(title: str, q: float) -> timeseries.Panel:
        return _series(
            title,
            range_of("response")
            + '\n  |> filter(fn: (r) => r._field == "seconds")\n'
            + DISTRICT_FILTER
            + '\n  |> group(columns: ["what"])'
            + "\n  |> aggregateWindow(every: 1h,"
            f" fn: (tables=<-, column) => tables |> quantile(q: {q}, column: column),"
            " createEmpty: false)",
            unit="s",
            description="From each alert's first reading: detect (recorded), acknowledge, "
            "resolve; per hour.",
        )

    by_district = (
        table.Panel()
        .title("By district, kind and level")
        .datasource(DATASOURCE)
        .with_target(
            FluxTarget(
                range_of("response")
                + '\n  |> filter(fn: (r) => r._field == "seconds")\n'
                + DISTRICT_FILTER
                + '\n  |> group(columns: ["what", "district", "kind", "level"])'
                + "\n  |> reduce(identity: {count: 0, total: 0.0, max: 0.0},"
                " fn: (r, accumulator) => ({count: accumulator.count + 1,"
                " total: accumulator.total + r._value,"
                " max: if r._value > accumulator.max then r._value else accumulator.max}))"
                + "\n  |> map(fn: (r) => ({r with mean_s: r.total / float(v: r.count)}))"
                + '\n  |> drop(columns: ["total"])'
                + "\n  |> group()"
            ).table()
        )
        .span(24)
        .height(10)
    )
    return (
        _board(
            "cityvitals-response",
            "Response times",
            "How fast the city finds, takes on and ends its trouble.",
        )
        .with_panel(quantiles("Median time to detect, acknowledge and resolve", 0.5))
        .with_panel(quantiles("90th percentile", 0.9))
        .with_panel(by_district)
        .build()
    )
