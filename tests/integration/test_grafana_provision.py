"""`cityvitals grafana provision` through grafana-client, against a local HTTP server that
stands in for Grafana's folder, data source and dashboard APIs and checks every request.
No Grafana server can run here (it is not packaged for this machine, and the project does
not build it), so this checks what we send against Grafana's documented API instead:
twice, to show that a second run leaves Grafana as the first did."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner

from cityvitals.cli import main
from cityvitals.dashboards.files import as_json
from cityvitals.dashboards.flux import DATASOURCE_UID
from tests.integration.http_support import serve_app

pytestmark = pytest.mark.integration

TOKEN = "glsa_provision_token"


@dataclass
class FakeGrafana:
    """Folders by uid, data sources by uid, dashboards by uid in folders, as Grafana's HTTP
    API documents them: 404 for what is not there, 401 for a wrong token, 412 for a
    dashboard that exists when the request does not say overwrite, 400 for a dashboard
    into a folder that does not exist or with an id Grafana did not give it."""

    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    boards: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.auth])
        app.router.add_get("/api/folders/{uid}", self.get_folder)
        app.router.add_post("/api/folders", self.create_folder)
        app.router.add_put("/api/folders/{uid}", self.update_folder)
        app.router.add_get("/api/datasources/uid/{uid}", self.get_source)
        app.router.add_post("/api/datasources", self.create_source)
        app.router.add_put("/api/datasources/uid/{uid}", self.update_source)
        app.router.add_post("/api/dashboards/db", self.put_board)
        return app

    @web.middleware
    async def auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"message": "Unauthorized"}, status=401)
        return await handler(request)

    async def get_folder(self, request: web.Request) -> web.Response:
        folder = self.folders.get(request.match_info["uid"])
        if folder is None:
            return web.json_response({"message": "folder not found"}, status=404)
        return web.json_response(folder)

    async def create_folder(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body["uid"] in self.folders:
            return web.json_response({"message": "a folder with that uid exists"}, status=409)
        self.folders[body["uid"]] = folder = {"uid": body["uid"], "title": body["title"]}
        return web.json_response(folder)

    async def update_folder(self, request: web.Request) -> web.Response:
        self.folders[request.match_info["uid"]]["title"] = (await request.json())["title"]
        return web.json_response(self.folders[request.match_info["uid"]])

    async def get_source(self, request: web.Request) -> web.Response:
        source = self.sources.get(request.match_info["uid"])
        if source is None:
            return web.json_response({"message": "Data source not found"}, status=404)
        return web.json_response({k: v for k, v in source.items() if k != "secureJsonData"})

    async def create_source(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body["uid"] in self.sources:
            return web.json_response({"message": "data source with the same uid exists"}, 409)
        self.sources[body["uid"]] = body
        return web.json_response({"datasource": body, "id": len(self.sources)})

    async def update_source(self, request: web.Request) -> web.Response:
        self.sources[request.match_info["uid"]] = await request.json()
        return web.json_response({"message": "Datasource updated"})

    async def put_board(self, request: web.Request) -> web.Response:
        body = await request.json()
        board = body["dashboard"]
        if body.get("folderUid") not in self.folders:
            return web.json_response({"message": "folder not found"}, status=400)
        if board.get("id") is not None:
            return web.json_response({"message": "dashboard not found"}, status=400)
        old = self.boards.get(board["uid"])
        if old is not None and not body.get("overwrite"):
            return web.json_response({"status": "version-mismatch"}, status=412)
        version = 1 if old is None else old["version"] + 1
        self.boards[board["uid"]] = {
            "version": version,
            "folderUid": body["folderUid"],
            "dashboard": board,
        }
        return web.json_response({"uid": board["uid"], "version": version, "status": "success"})


def provision(url: str, tmp_path, *extra: str) -> Any:
    (tmp_path / "grafana.token").write_text(TOKEN + "\n")
    args = ["grafana", "provision", "--url", url, "--token-file", str(tmp_path / "grafana.token")]
    return CliRunner().invoke(main, [*args, *extra])


async def test_provisioning_twice_leaves_grafana_as_once(tmp_path) -> None:
    grafana = FakeGrafana()
    (tmp_path / "influx.token").write_text("influx-read-token\n")
    influx = ["--influx-url", "http://influxdb:8086", "--influx-token-file"]
    async with serve_app(grafana.app()) as url:
        first = await asyncio.to_thread(
            provision, url, tmp_path, *influx, str(tmp_path / "influx.token")
        )
        after_one = {uid: b["dashboard"] for uid, b in grafana.boards.items()}
        second = await asyncio.to_thread(
            provision, url, tmp_path, *influx, str(tmp_path / "influx.token")
        )
    assert first.exit_code == 0, first.output
    assert "folder cityvitals created, data source created, 8 dashboards written" in first.output
    assert "folder cityvitals updated, data source updated, 8 dashboards written" in second.output
    assert list(grafana.folders) == ["cityvitals"]
    assert list(grafana.sources) == [DATASOURCE_UID]
    source = grafana.sources[DATASOURCE_UID]
    assert (source["type"], source["url"], source["jsonData"]["version"]) == (
        "influxdb", "http://influxdb:8086", "Flux",
    )  # fmt: skip
    assert source["secureJsonData"] == {"token": "influx-read-token"}
    # Every board once, in the folder, the second time a new version of the same.
    assert set(grafana.boards) == set(as_json())
    assert {b["folderUid"] for b in grafana.boards.values()} == {"cityvitals"}
    assert {b["version"] for b in grafana.boards.values()} == {2}
    assert {uid: b["dashboard"] for uid, b in grafana.boards.items()} == after_one
    assert grafana.boards["cityvitals-overview"]["dashboard"]["title"] == "City overview"


async def test_a_wrong_token_is_one_clear_error(tmp_path) -> None:
    grafana = FakeGrafana()
    async with serve_app(grafana.app()) as url:
        (tmp_path / "wrong").write_text("glsa_wrong\n")
        result = await asyncio.to_thread(
            CliRunner().invoke,
            main,
            ["grafana", "provision", "--url", url, "--token-file", str(tmp_path / "wrong")],
        )
    assert result.exit_code == 1
    assert "grafana refused the folder" in result.output
    assert "401" in result.output or "Unauthorized" in result.output
    assert grafana.boards == {}
    assert grafana.requests == [("GET", "/api/folders/cityvitals")]


async def test_without_influx_url_the_data_source_is_left_alone(tmp_path) -> None:
    grafana = FakeGrafana()
    async with serve_app(grafana.app()) as url:
        result = await asyncio.to_thread(provision, url, tmp_path)
    assert result.exit_code == 0, result.output
    assert grafana.sources == {}
    assert len(grafana.boards) == 8
