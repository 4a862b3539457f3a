"""Alerts as Grafana annotations through grafana-client, against a local HTTP server that
stands in for Grafana's annotations API and checks every request. No Grafana server can
run here (it is not packaged for this machine, and the project does not build it), so
this checks what we send against Grafana's documented API instead."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from alerts.annotations import GrafanaAnnotations
from alerts.model import Notification
from alerts.service import AlertService
from cityvitals.clock import ManualClock
from cityvitals.levels import Level
from tests.factories import make_warning
from tests.integration.http_support import serve_app

pytestmark = pytest.mark.integration

TOKEN = "glsa_test_token"


@dataclass
class FakeGrafana:
    """Grafana's /api/annotations, as documented: POST creates, GET ?tags= finds, PATCH
    updates. Answers 401 to a wrong token, 400 to a body missing what Grafana needs; the
    first `fail` requests get a 503."""

    fail: int = 0
    annotations: dict[int, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path_qs))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"message": "Unauthorized"}, status=401)
        if self.fail:
            self.fail -= 1
            return web.json_response({"message": "busy"}, status=503)
        if request.method == "GET":
            wanted = set(request.query.getall("tags", []))
            hits = [a for a in self.annotations.values() if wanted <= set(a["tags"])]
            return web.json_response(hits[: int(request.query.get("limit", 100))])
        body = await request.json()
        if request.method == "POST":
            if not isinstance(body.get("time"), int) or not body.get("text"):
                return web.json_response({"message": "bad annotation"}, status=400)
            new_id = len(self.annotations) + 1
            self.annotations[new_id] = {"id": new_id, **body}
            return web.json_response({"id": new_id, "message": "Annotation added"})
        annotation_id = int(request.match_info["id"])
        self.annotations[annotation_id].update({k: v for k, v in body.items() if v is not None})
        return web.json_response({"message": "Annotation patched"})


def fake_grafana(grafana: FakeGrafana) -> contextlib.AbstractAsyncContextManager[str]:
    app = web.Application()
    app.router.add_get("/api/annotations", grafana.handle)
    app.router.add_post("/api/annotations", grafana.handle)
    app.router.add_patch("/api/annotations/{id}", grafana.handle)
    return serve_app(app)


async def test_each_alert_is_one_region_annotation_however_often_it_is_sent() -> None:
    """Firing, raised and resolved (Grafana busy once: retried) make one annotation from the
    alert's start to its resolve, tagged and with the message; sending the resolve again
    (a resend after a restart) finds it by its tag and makes no second one."""
    grafana = FakeGrafana(fail=1)
    sent: list[Notification] = []

    async def produced(n: Notification) -> None:
        sent.append(n)

    async with fake_grafana(grafana) as url, GrafanaAnnotations(url, TOKEN) as annotations:
        async with AlertService(
            [annotations],
            clock=ManualClock(1_764_028_800.0),
            base_delay=0.01,
            max_delay=0.02,
            on_notification=produced,
        ) as svc:
            await svc.submit(make_warning(Level.ORANGE, ts_ms=1_000, seq=1))
            await svc.submit(make_warning(Level.RED, ts_ms=2_000, seq=2))
            await svc.submit(make_warning(Level.NONE, ts_ms=9_000, seq=3))
            await asyncio.wait_for(svc.drain(), 10)
            stats = svc.stats()
        await annotations.send(sent[-1])
    assert (stats.delivered, stats.failed) == (3, 0)
    (annotation,) = grafana.annotations.values()
    assert (annotation["time"], annotation["timeEnd"]) == (1_000, 9_000)
    assert {"cityvitals", "cv-fp-1", "water_level", "red", "Harbour"} <= set(annotation["tags"])
    assert "已解除 Resolved" in annotation["text"]
    assert ("GET", "/api/annotations?tags=cv-fp-1&limit=1") in grafana.requests


async def test_a_wrong_token_is_a_refusal_not_retried() -> None:
    grafana = FakeGrafana()
    async with (
        fake_grafana(grafana) as url,
        GrafanaAnnotations(url, "wrong") as wrong,
        AlertService([wrong], clock=ManualClock(0.0)) as svc,
    ):
        await svc.submit(make_warning(Level.RED))
        await asyncio.wait_for(svc.drain(), 10)
        assert (svc.stats().failed, svc.stats().delivered) == (1, 0)
    assert len(grafana.requests) == 1
