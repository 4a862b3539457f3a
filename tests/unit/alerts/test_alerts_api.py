"""The alerts HTTP API over a real aiohttp server on loopback: every role, missing and forged
tokens, expired and tampered acknowledge links, malformed bodies (a clear 4xx and no state
change), and an OpenAPI description of every route."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from aiohttp.test_utils import TestClient, TestServer

from alerts.api import AlertsApi, Tokens
from alerts.links import ack_link
from alerts.service import AlertService
from cityvitals.clock import ManualClock
from cityvitals.errors import ConfigError
from cityvitals.levels import Level
from tests.factories import KeepingReceiver as Receiver
from tests.factories import make_warning

T0 = 1_764_028_800.0
LINK_SECRET = b"link-secret"
TOKENS = {
    "viewer": "v" * 32,
    "operator": "o" * 32,
    "admin": "a" * 32,
}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[TestClient, AlertService, Receiver]]:
    (tmp_path / "tokens").write_text(
        "# token role name\n"
        + "".join(f"{token} {role} {role}-person\n" for role, token in TOKENS.items())
    )
    clock, ops = ManualClock(T0), Receiver()
    async with AlertService([ops], clock=clock) as svc:
        await svc.submit(make_warning(Level.ORANGE, ts_ms=int(T0 * 1000), seq=1))
        await svc.drain()
        handlers = AlertsApi(
            svc, Tokens.load(tmp_path / "tokens"), link_secret=LINK_SECRET, now_s=clock.now
        )
        async with TestClient(TestServer(handlers.app())) as client:
            yield client, svc, ops


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
async def test_every_role_reads_alerts_and_silences(api, role) -> None:
    client, _, _ = api
    got = await client.get("/api/v1/alerts", headers=auth(role))
    assert got.status == 200
    (alert,) = (await got.json())["alerts"]
    assert (alert["fingerprint"], alert["level"], alert["state"]) == ("fp-1", 3, "firing")
    assert (await client.get("/api/v1/alerts?min_level=red", headers=auth(role))).status == 200
    assert (await client.get("/api/v1/silences", headers=auth(role))).status == 200


@pytest.mark.parametrize(("role", "status"), [("viewer", 403), ("operator", 200), ("admin", 200)])
async def test_only_operators_and_admins_acknowledge(api, role, status) -> None:
    client, svc, ops = api
    answer = await client.post("/api/v1/alerts/fp-1/acknowledge", headers=auth(role))
    assert answer.status == status
    body = await answer.json()
    if status == 403:
        assert body["error"] == "viewer-person is a viewer; this needs operator"
        assert svc.book.get("fp-1").state == "firing"
        assert [n.event for n in ops.got] == ["firing"]
    else:
        assert (body["state"], body["acknowledged_by"]) == ("acknowledged", f"{role}-person")
        await svc.drain()
        assert [n.event for n in ops.got] == ["firing", "acknowledged"]


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "an Authorization: Bearer <token> header is needed"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "an Authorization: Bearer <token> header"),
        ({"Authorization": "Bearer "}, "an Authorization: Bearer <token> header"),
        ({"Authorization": "Bearer " + "x" * 32}, "this token is not known"),
        ({"Authorization": "Bearer " + TOKENS["operator"][:-1] + "p"}, "this token is not known"),
    ],
)
async def test_missing_and_forged_tokens_are_401_and_change_nothing(api, headers, message) -> None:
    client, svc, _ = api
    for method, path in (("GET", "/api/v1/alerts"), ("POST", "/api/v1/alerts/fp-1/resolve")):
        answer = await client.request(method, path, headers=headers)
        assert answer.status == 401
        assert answer.headers["WWW-Authenticate"] == 'Bearer realm="cityvitals"'
        assert message in (await answer.json())["error"]
    assert svc.book.get("fp-1").state == "firing"


async def test_resolve_by_hand_and_an_alert_that_is_not_open(api) -> None:
    client, svc, _ = api
    answer = await client.post("/api/v1/alerts/fp-1/resolve", headers=auth("operator"))
    assert answer.status == 200
    assert (await answer.json())["resolved_by"] == "operator-person"
    for path in ("/api/v1/alerts/fp-1/resolve", "/api/v1/alerts/fp-1/acknowledge"):
        answer = await client.post(path, headers=auth("operator"))
        assert answer.status == 404
        assert (await answer.json())["error"] == "no open alert 'fp-1'"
    assert (await client.get("/api/v1/alerts/fp-1", headers=auth("viewer"))).status == 404
    assert svc.book.get("fp-1") is None


async def test_a_silence_is_created_listed_and_expired(api) -> None:
    client, svc, _ = api
    matchers = [
        {"name": "district", "value": "Harbour"},
        {"name": "rule", "value": "water.*", "op": "=~"},
    ]
    wanted = {"matchers": matchers, "reason": "pump works", "duration_s": 3600}
    created = await client.post("/api/v1/silences", json=wanted, headers=auth("operator"))
    assert created.status == 201
    silence = await created.json()
    assert (silence["author"], silence["ends_ms"] - silence["starts_ms"]) == (
        "operator-person",
        3_600_000,
    )
    listed = await (await client.get("/api/v1/silences", headers=auth("viewer"))).json()
    assert [s["id"] for s in listed["silences"]] == [silence["id"]]
    ended = await client.delete(f"/api/v1/silences/{silence['id']}", headers=auth("operator"))
    assert ended.status == 200
    again = await client.delete(f"/api/v1/silences/{silence['id']}", headers=auth("operator"))
    assert again.status == 404
    assert svc.silences.current(int(T0 * 1000)) == []


GOOD = {"matchers": [{"name": "node", "value": "wl-0003"}], "reason": "r", "duration_s": 60}
NODE_X = [{"name": "node", "value": "x"}]


def body(**change: object) -> bytes:
    """GOOD with keys replaced (None: left out), as JSON."""
    merged = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    return json.dumps(merged).encode()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "the body is not JSON"),
        (body(matchers=[]), "at least one matcher"),
        (body(reason=None), "`reason`"),
        (body(duration_s=None), "ends_ms or duration_s"),
        (body(ends_ms=9), "ends_ms or duration_s"),
        (body(matchers=[{"name": "colour", "value": "x"}]), "matchers[0]: name one of"),
        (body(matchers=[{"name": "node", "value": "(", "op": "=~"}]), "missing )"),
        (body(matchers=[{"name": "node", "value": "x", "op": "=="}]), "op one of"),
        (body(extra=1), "unknown field"),
        (body(matchers=NODE_X, duration_s=None, ends_ms=5), "end after it starts"),
    ],
)
async def test_a_malformed_silence_is_400_saying_why_and_adds_nothing(api, raw, message) -> None:
    client, svc, _ = api
    answer = await client.post(
        "/api/v1/silences",
        data=raw,
        headers={**auth("operator"), "Content-Type": "application/json"},
    )
    assert answer.status == 400
    assert message in (await answer.json())["error"]
    assert svc.silences.current(0) == []
    assert (await client.post("/api/v1/silences", json=GOOD, headers=auth("viewer"))).status == 403


def link_query(link: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(link).query))


async def test_an_acknowledge_link_shows_a_page_and_its_button_acknowledges(api) -> None:
    client, svc, _ = api
    link = ack_link("http://x", LINK_SECRET, "fp-1", expires_s=int(T0) + 3600)
    page = await client.get("/ack", params=link_query(link))
    assert page.status == 200
    assert "orange wl-0003" in await page.text()
    assert svc.book.get("fp-1").state == "firing"  # opening the link did nothing
    done = await client.post("/ack", params=link_query(link))
    assert done.status == 200
    assert (await done.json())["acknowledged_by"] == "link"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"exp": str(int(T0) + 7200)}, "changed or is not ours"),
        ({"fp": "fp-2"}, "changed or is not ours"),
        ({"sig": "0" * 64}, "changed or is not ours"),
        ({"sig": ""}, "not a whole acknowledge link"),
    ],
)
async def test_a_tampered_link_is_refused_and_acknowledges_nothing(api, change, message) -> None:
    client, svc, _ = api
    query = link_query(ack_link("http://x", LINK_SECRET, "fp-1", expires_s=int(T0) + 3600))
    for method in ("GET", "POST"):
        answer = await client.request(method, "/ack", params={**query, **change})
        assert answer.status == 403
        assert message in (await answer.json())["error"]
    assert svc.book.get("fp-1").state == "firing"


async def test_an_expired_link_is_refused(api) -> None:
    client, svc, _ = api
    query = link_query(ack_link("http://x", LINK_SECRET, "fp-1", expires_s=int(T0) - 1))
    answer = await client.post("/ack", params=query)
    assert answer.status == 403
    assert "expired" in (await answer.json())["error"]
    assert svc.book.get("fp-1").state == "firing"


async def test_the_openapi_description_covers_every_route(api) -> None:
    client, _, _ = api
    doc = await (await client.get("/api/v1/openapi.json")).json()
    assert doc["openapi"] == "3.1.0"
    routes = {
        (r.method.lower(), r.resource.canonical)
        for r in client.server.app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    described = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert routes - described == {("get", "/api/v1/openapi.json"), ("get", "/healthz")}
    assert "Alert" in doc["components"]["schemas"]
    health = await (await client.get("/healthz")).json()
    assert health["status"] == "ok"


def test_a_bad_tokens_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# ok\n" + "t" * 20 + " viewer ann\n" + "short operator bob\n")
    with pytest.raises(ConfigError, match=r"tokens: line 3: expected <token of 16\+ characters>"):
        Tokens.load(path)
    path.write_text("t" * 20 + " root ann\n")
    with pytest.raises(ConfigError, match="line 1"):
        Tokens.load(path)


async def test_a_notification_carries_a_link_that_acknowledges_its_alert() -> None:
    """With acknowledge links on, a firing notification (and not the acknowledgement
    after it) carries a signed link; its button acknowledges the alert."""
    clock, ops = ManualClock(T0), Receiver()

    def link(alert) -> str:
        return ack_link("http://alerts", LINK_SECRET, alert.fingerprint, expires_s=int(T0) + 60)

    async with AlertService([ops], clock=clock, ack_links=link) as svc:
        await svc.submit(make_warning(Level.RED, ts_ms=int(T0 * 1000), seq=1))
        await svc.drain()
        (firing,) = ops.got
        assert firing.ack_url is not None
        assert firing.ack_url.startswith("http://alerts/ack?fp=fp-1&exp=")
        handlers = AlertsApi(svc, Tokens({}), link_secret=LINK_SECRET, now_s=clock.now)
        async with TestClient(TestServer(handlers.app())) as client:
            done = await client.post("/ack", params=link_query(firing.ack_url))
            assert done.status == 200
        await svc.drain()
    assert [(n.event, n.ack_url is None) for n in ops.got] == [
        ("firing", False),
        ("acknowledged", True),
    ]


async def test_response_metrics_are_served_to_viewers(api) -> None:
    client, _, _ = api
    await client.post("/api/v1/alerts/fp-1/acknowledge", headers=auth("operator"))
    answer = await client.get("/api/v1/metrics", headers=auth("viewer"))
    assert answer.status == 200
    rows = (await answer.json())["response"]
    assert {(r["what"], r["district"], r["kind"], r["level"], r["count"]) for r in rows} == {
        ("detect", "Harbour", "water_level", "orange", 1),
        ("acknowledge", "Harbour", "water_level", "orange", 1),
    }
    assert (await client.get("/api/v1/metrics")).status == 401


async def test_a_resolved_alert_is_listed_then_closed(api) -> None:
    """Resolved by hand, the alert is on the resolved list; closing it takes it off (and an
    open alert, or one closed already, cannot be closed: 404)."""
    client, _, _ = api
    assert (await client.post("/api/v1/alerts/fp-1/close", headers=auth("operator"))).status == 404
    await client.post("/api/v1/alerts/fp-1/resolve", headers=auth("operator"))
    listed = await (
        await client.get("/api/v1/alerts?state=resolved", headers=auth("viewer"))
    ).json()
    assert [a["fingerprint"] for a in listed["alerts"]] == ["fp-1"]
    assert (await client.post("/api/v1/alerts/fp-1/close", headers=auth("viewer"))).status == 403
    closed = await client.post("/api/v1/alerts/fp-1/close", headers=auth("operator"))
    assert closed.status == 200
    body = await closed.json()
    assert (body["state"], body["resolved_by"]) == ("closed", "operator-person")
    again = await client.post("/api/v1/alerts/fp-1/close", headers=auth("operator"))
    assert again.status == 404
    assert "no resolved alert 'fp-1'" in (await again.json())["error"]
    listed = await (
        await client.get("/api/v1/alerts?state=resolved", headers=auth("viewer"))
    ).json()
    assert listed["alerts"] == []
