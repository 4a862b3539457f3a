"""The dashboards as code: the committed files are what the code builds, every panel
reads the provisioned InfluxDB with Flux over the measurements the sinks write, and the
threshold bands are the built-in rules' levels. (Their queries run against a real
InfluxDB in tests/integration/test_dashboards_influx.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml  # type: ignore[import-untyped]
from click.testing import CliRunner

from cityvitals.cli import main
from cityvitals.dashboards.files import as_json, write_dashboards
from cityvitals.dashboards.flux import DATASOURCE_UID

REPO = Path(__file__).resolve().parents[3]
COMMITTED = REPO / "deploy" / "grafana" / "dashboards"
MEASUREMENTS = {"reading", "warning", "score", "response", "pipeline", "agent"}  # docs/influxdb.md


def panels(board: dict) -> list[dict]:
    return [p for p in board["panels"] if p["type"] != "row"]


def test_the_committed_dashboards_are_what_the_code_builds(tmp_path: Path) -> None:
    """Change a board in code, run `cityvitals grafana build`, commit both."""
    written = write_dashboards(tmp_path)
    assert sorted(p.name for p in COMMITTED.glob("*.json")) == sorted(p.name for p in written)
    for path in written:
        assert (COMMITTED / path.name).read_text() == path.read_text(), (
            f"{path.name} differs: run `cityvitals grafana build` and commit deploy/grafana"
        )


def test_every_panel_reads_the_provisioned_influxdb_with_flux() -> None:
    boards = as_json()
    assert len(boards) == 8
    for uid, board in boards.items():
        assert board["uid"] == uid
        assert "cityvitals" in board["tags"]
        names = {v["name"] for v in board["templating"]["list"]}
        assert "bucket" in names
        for panel in panels(board):
            assert panel["datasource"] == {"type": "influxdb", "uid": DATASOURCE_UID}, panel
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                flux = target["query"]
                assert target["datasource"]["uid"] == DATASOURCE_UID
                assert 'from(bucket: "${bucket}")' in flux
                assert "range(start: v.timeRangeStart, stop: v.timeRangeStop)" in flux
                read = set(re.findall(r'r\._measurement == "(\w+)"', flux))
                assert read, (uid, panel["title"])
                assert read <= MEASUREMENTS, (uid, panel["title"], read)


def test_threshold_bands_are_the_rules_levels() -> None:
    board = as_json()["cityvitals-water-level"]
    depth = next(p for p in panels(board) if p["title"] == "Standing water by node")
    steps = depth["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [(s["value"], s["color"]) for s in steps] == [
        (None, "green"), (10.0, "blue"), (20.0, "yellow"), (30.0, "orange"), (50.0, "red"),
    ]  # fmt: skip


def test_the_city_map_places_nodes_by_lat_and_lon_coloured_by_level_and_state() -> None:
    board = as_json()["cityvitals-overview"]
    city_map = next(p for p in panels(board) if p["type"] == "geomap")
    (layer,) = city_map["options"]["layers"]
    assert layer["location"] == {"mode": "coords", "latitude": "lat", "longitude": "lon"}
    assert layer["config"]["style"]["color"]["field"] == "shade"
    steps = city_map["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, 0, 1, 2, 3, 4]  # offline (-1) is below all
    assert city_map["targets"][0]["resultFormat"] == "table"


def test_the_provisioning_files_name_the_same_data_source_and_folder() -> None:
    ds = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/datasources/cityvitals.yaml").read_text()
    )
    (source,) = ds["datasources"]
    assert (source["uid"], source["type"], source["jsonData"]["version"]) == (
        DATASOURCE_UID, "influxdb", "Flux",
    )  # fmt: skip
    boards = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/dashboards/cityvitals.yaml").read_text()
    )
    (provider,) = boards["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_build_writes_and_says_what(tmp_path: Path) -> None:
    (tmp_path / "cityvitals-retired.json").write_text("{}")
    (tmp_path / "theirs.json").write_text("{}")
    result = CliRunner().invoke(main, ["grafana", "build", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{tmp_path}: 8 dashboards (cityvitals-overview,")
    assert not (tmp_path / "cityvitals-retired.json").exists()  # a board the code dropped
    assert (tmp_path / "theirs.json").exists()  # not ours: left alone
    assert json.loads((tmp_path / "cityvitals-smoke.json").read_text())["title"] == "Smoke and fire"
