"""Every dashboard query against a real InfluxDB that a demo day filled: each returns
rows, so the boards show what the sinks write (no panel reads a measurement or field
nobody writes). The queries are the committed JSON files' (deploy/grafana/dashboards),
rendered as Grafana renders them: the day as the time range, a 10-minute window, every
variable at its "All"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cityvitals.dashboards.flux import render
from tests.integration.test_influx_sink import demo_day_into, query

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
START, STOP = "2025-11-24T00:00:00Z", "2025-11-25T00:00:00Z"


async def test_every_panel_query_returns_what_a_demo_day_wrote(influxdb, tmp_path) -> None:
    bucket = await demo_day_into(influxdb, tmp_path)
    boards = sorted((REPO / "deploy" / "grafana" / "dashboards").glob("*.json"))
    assert len(boards) == 8
    empty, ran = [], 0
    for path in boards:
        board = json.loads(path.read_text())
        flux = [
            (f"variable {v['name']}", v["query"])
            for v in board["templating"]["list"]
            if v["type"] == "query"
        ] + [
            (p["title"], t["query"])
            for p in board["panels"]
            if p["type"] != "row"
            for t in p["targets"]
        ]
        for title, text in flux:
            rendered = render(text, start=START, stop=STOP, variables={"bucket": bucket})
            # The district variable looks back 30 days from now; the demo day is older.
            rendered = rendered.replace("start: -30d", f"start: {START}")
            rows = await query(influxdb, rendered)
            ran += 1
            if not rows:
                empty.append(f"{path.stem}: {title}")
    assert empty == []
    print(f"{ran} queries over {len(boards)} dashboards, each returned rows")
