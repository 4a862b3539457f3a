"""The alerts HTTP API: list, acknowledge and resolve alerts; create and expire silences.

Served by the alerts role (`[alerts.api]`), on aiohttp. Every `/api/v1`
request carries `Authorization: Bearer <token>`; the tokens file gives each
token a role and a name (who acknowledged, who silenced):

| role | may |
|---|---|
| `viewer` | read alerts and silences |
| `operator` | and acknowledge, resolve, create and expire silences |
| `admin` | and read the outbox |

A missing or unknown token is 401, a role too low 403; a body that is not
what the endpoint takes is 400 naming the field, and changes nothing.
`/ack` is the signed, expiring link inside notifications (`alerts.links`):
GET shows a button, POST acknowledges. `/api/v1/openapi.json` describes it
all (OpenAPI 3.1); `/healthz` is for the load balancer.
"""

from __future__ import annotations

import hashlib
import html
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
from aiohttp import web

from alerts.links import LinkError, check_ack
from alerts.model import Alert
from alerts.openapi import openapi_document
from alerts.service import AlertNotFound, AlertService
from alerts.silences import LABELS, OPS, Matcher, Silence
from cityvitals.errors import ConfigError
from cityvitals.levels import Level

__all__ = ["ROLES", "AlertsApi", "ApiUser", "Tokens"]


log = logging.getLogger(__name__)

Role = Literal["viewer", "operator", "admin"]
ROLES: Final[tuple[Role, ...]] = ("viewer", "operator", "admin")
_RANK: Final = {role: i for i, role in enumerate(ROLES)}
_encoder: Final = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class ApiUser:
    name: str
    role: Role


_USER: Final = web.RequestKey("user", ApiUser)


class Tokens:
    """Bearer tokens by their SHA-256 (the file's tokens are not kept in memory as such)."""

    def __init__(self, users: Mapping[str, ApiUser]) -> None:
        self._by_hash = {hashlib.sha256(t.encode()).hexdigest(): u for t, u in users.items()}

    @classmethod
    def load(cls, path: Path) -> Tokens:
        """`<token> <role> <name>` per line; `#` comments. `ConfigError` naming the line."""
        users: dict[str, ApiUser] = {}
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(path, "tokens", "a readable tokens file", found=str(exc)) from exc
        for number, line in enumerate(text.splitlines(), 1):
            parts = line.split("#", 1)[0].split()
            if not parts:
                continue
            if len(parts) != 3 or parts[1] not in ROLES or len(parts[0]) < 16:
                raise ConfigError(
                    path,
                    f"line {number}",
                    "<token of 16+ characters> <viewer|operator|admin> <name>",
                    found=" ".join(parts[1:]) or "(a token alone)",
                )
            users[parts[0]] = ApiUser(parts[2], parts[1])
        return cls(users)

    def user(self, token: str) -> ApiUser | None:
        return self._by_hash.get(hashlib.sha256(token.encode()).hexdigest())


class _MatcherBody(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    value: str
    op: str = "="


class _SilenceBody(msgspec.Struct, forbid_unknown_fields=True):
    matchers: list[_MatcherBody]
    reason: str
    #: Either `ends_ms`, or `duration_s` from `starts_ms` (default: now).
    starts_ms: int | None = None
    ends_ms: int | None = None
    duration_s: float | None = None


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(data), status=status, content_type="application/json")


def _error(status: int, message: str, **extra: str) -> web.HTTPException:
    cls = {400: web.HTTPBadRequest, 401: web.HTTPUnauthorized, 403: web.HTTPForbidden,
           404: web.HTTPNotFound, 409: web.HTTPConflict}[status]  # fmt: skip
    headers = {"WWW-Authenticate": 'Bearer realm="cityvitals"'} if status == 401 else None
    return cls(
        text=_encoder.encode({"error": message, **extra}).decode(),
        content_type="application/json",
        headers=headers,
    )


Handler = Callable[["AlertsApi", web.Request], Awaitable[web.StreamResponse]]


def _needs(role: Role) -> Callable[[Handler], Handler]:
    """Check the bearer token and its role before the handler runs."""

    def wrap(handler: Handler) -> Handler:
        async def checked(api: AlertsApi, request: web.Request) -> web.StreamResponse:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise _error(401, "an Authorization: Bearer <token> header is needed")
            user = api.tokens.user(token.strip())
            if user is None:
                raise _error(401, "this token is not known")
            if _RANK[user.role] < _RANK[role]:
                raise _error(403, f"{user.name} is a {user.role}; this needs {role}")
            request[_USER] = user
            return await handler(api, request)

        return checked

    return wrap


class AlertsApi:
    """The handlers, over a running `AlertService`; `app()` routes them."""

    def __init__(
        self,
        service: AlertService,
        tokens: Tokens,
        *,
        link_secret: bytes | None = None,
        now_s: Callable[[], float] = time.time,
    ) -> None:
        self.service = service
        self.tokens = tokens
        self._link_secret = link_secret
        self._now_s = now_s

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        routes = [
            ("GET", "/api/v1/alerts", self.list_alerts),
            ("GET", "/api/v1/alerts/{fingerprint}", self.get_alert),
            ("POST", "/api/v1/alerts/{fingerprint}/acknowledge", self.acknowledge),
            ("POST", "/api/v1/alerts/{fingerprint}/resolve", self.resolve),
            ("POST", "/api/v1/alerts/{fingerprint}/close", self.close),
            ("GET", "/api/v1/incidents", self.list_incidents),
            ("GET", "/api/v1/metrics", self.metrics),
            ("GET", "/api/v1/silences", self.list_silences),
            ("POST", "/api/v1/silences", self.create_silence),
            ("DELETE", "/api/v1/silences/{silence_id}", self.expire_silence),
            ("GET", "/api/v1/openapi.json", self.openapi),
            ("GET", "/ack", self.ack_page),
            ("POST", "/ack", self.ack_post),
            ("GET", "/healthz", self.healthz),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        return app

    # -- alerts ------------------------------------------------------------------

    @_needs("viewer")
    async def list_alerts(self, request: web.Request) -> web.Response:
        if request.query.get("state") == "resolved":
            return _json({"alerts": await self.service.resolved_alerts()})
        alerts = self.service.book.open_alerts()
        level = request.query.get("min_level")
        if level is not None:
            try:
                floor = Level.parse(level)
            except ValueError:
                raise _error(400, f"min_level: a level, not {level!r}", field="min_level") from None
            alerts = tuple(a for a in alerts if a.level >= floor)
        return _json({"alerts": alerts})

    @_needs("viewer")
    async def get_alert(self, request: web.Request) -> web.Response:
        fingerprint = request.match_info["fingerprint"]
        alert = self.service.book.get(fingerprint)
        if alert is None:
            raise _error(404, f"no open alert {fingerprint!r}")
        return _json(alert)

    @_needs("operator")
    async def acknowledge(self, request: web.Request) -> web.Response:
        return await self._act(request, self.service.acknowledge)

    @_needs("operator")
    async def resolve(self, request: web.Request) -> web.Response:
        return await self._act(request, self.service.resolve)

    @_needs("operator")
    async def close(self, request: web.Request) -> web.Response:
        return await self._act(request, self.service.close, "no resolved alert")

    async def _act(
        self,
        request: web.Request,
        act: Callable[..., Awaitable[Alert]],
        missing: str = "no open alert",
    ) -> web.Response:
        user = request[_USER]
        fingerprint = request.match_info["fingerprint"]
        try:
            alert = await act(fingerprint, by=user.name)
        except AlertNotFound:
            raise _error(404, f"{missing} {fingerprint!r}") from None
        return _json(alert)

    @_needs("viewer")
    async def list_incidents(self, request: web.Request) -> web.Response:
        book = self.service.incidents
        return _json({"open": book.open_incidents(), "recent": book.recent()[:100]})

    @_needs("viewer")
    async def metrics(self, request: web.Request) -> web.Response:
        return _json({"response": self.service.responses.summary()})

    # -- silences ----------------------------------------------------------------

    @_needs("viewer")
    async def list_silences(self, request: web.Request) -> web.Response:
        return _json({"silences": self.service.silences.current(self._now_ms())})

    @_needs("operator")
    async def create_silence(self, request: web.Request) -> web.Response:
        user = request[_USER]
        try:
            body = msgspec.json.decode(await request.read(), type=_SilenceBody)
        except msgspec.ValidationError as exc:
            raise _error(400, f"the body: {exc}") from None
        except msgspec.DecodeError as exc:
            raise _error(400, f"the body is not JSON: {exc}") from None
        now_ms = self._now_ms()
        starts = body.starts_ms if body.starts_ms is not None else now_ms
        if body.ends_ms is not None and body.duration_s is None:
            ends = body.ends_ms
        elif body.duration_s is not None and body.ends_ms is None:
            ends = starts + round(body.duration_s * 1000)
        else:
            raise _error(400, "give ends_ms or duration_s (one of them)", field="ends_ms")
        for i, m in enumerate(body.matchers):
            if m.name not in LABELS or m.op not in OPS:
                raise _error(
                    400,
                    f"matchers[{i}]: name one of {', '.join(LABELS)} and op one of "
                    f"{', '.join(sorted(OPS))}, not {m.name!r} {m.op!r}",
                    field=f"matchers[{i}]",
                )
        try:
            matchers = [Matcher(m.name, m.value, m.op) for m in body.matchers]  # type: ignore[arg-type]
            silence = Silence.new(
                matchers,
                starts_ms=starts,
                ends_ms=ends,
                author=user.name,
                reason=body.reason,
                now_ms=now_ms,
            )
        except ValueError as exc:
            raise _error(400, str(exc), field="matchers") from None
        await self.service.silence(silence)
        return _json(silence, status=201)

    @_needs("operator")
    async def expire_silence(self, request: web.Request) -> web.Response:
        ended = await self.service.expire_silence(request.match_info["silence_id"])
        if ended is None:
            raise _error(404, "no such silence still running")
        return _json(ended)

    # -- acknowledge links -------------------------------------------------------

    async def ack_page(self, request: web.Request) -> web.Response:
        alert = self.service.book.get(self._link(request))
        what = "no longer open" if alert is None else f"{alert.level.label} {alert.subject}"
        page = (
            "<!doctype html><meta charset=utf-8><title>Acknowledge 确认</title>"
            f"<p>{html.escape(what)}</p>"
            "<form method=post><button type=submit>Acknowledge 确认</button></form>"
        )
        return web.Response(text=page, content_type="text/html")

    async def ack_post(self, request: web.Request) -> web.Response:
        try:
            alert = await self.service.acknowledge(self._link(request), by="link")
        except AlertNotFound:
            raise _error(409, "this alert is no longer open") from None
        return _json(alert)

    def _link(self, request: web.Request) -> str:
        if self._link_secret is None:
            raise _error(404, "acknowledge links are not enabled")
        try:
            return check_ack(self._link_secret, request.query, now_s=self._now_s())
        except LinkError as exc:
            raise _error(403, str(exc)) from None

    # -- about -------------------------------------------------------------------

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(openapi_document())

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok", **msgspec.structs.asdict(self.service.stats())})

    def _now_ms(self) -> int:
        return int(self._now_s() * 1000)
