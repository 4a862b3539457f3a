"""A client of the alerts HTTP API (`alerts.api`): what `cityvitals alerts` calls.

    async with AlertsClient("http://127.0.0.1:9094", token) as api:
        for alert in await api.alerts(min_level=Level.ORANGE):
            ...
        await api.acknowledge(alert.fingerprint)

Answers are decoded into the service's own types (`Alert`, `Incident`,
`Silence`). Anything but a success is an `AlertsApiError` carrying the
HTTP status and the server's message (401 unknown token, 403 a role too
low, 404 no such alert, 400 a bad body naming the field); a server that
cannot be reached is one with status 0, so a caller handles one type.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import aiohttp
import msgspec

from alerts.incidents import Incident
from alerts.model import Alert
from alerts.silences import LABELS, OPS, Matcher, Silence
from cityvitals.errors import CityvitalsError
from cityvitals.levels import Level

__all__ = ["AlertsApiError", "AlertsClient", "parse_matcher"]

T = TypeVar("T")

#: `name op value`; the two-character operators first, so `=~` is not read as `=`.
_MATCHER: Final = re.compile(r"^([a-z_]+)(=~|!~|!=|=)(.*)$", re.DOTALL)


class AlertsApiError(CityvitalsError):
    """The API refused (`status` its HTTP status) or could not be reached (`status` 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_matcher(text: str) -> Matcher:
    """`district=Harbour`, `rule=~water_level\\..*`, `kind!=smoke`, as amtool writes them.

    >>> parse_matcher("rule=~water_level.*")
    Matcher(name='rule', value='water_level.*', op='=~')
    >>> parse_matcher("colour=red")
    Traceback (most recent call last):
    ...
    ValueError: 'colour=red': a matcher is <label><op><value> with a label of ...
    """
    found = _MATCHER.match(text)
    if found is None or found.group(1) not in LABELS or found.group(2) not in OPS:
        raise ValueError(
            f"{text!r}: a matcher is <label><op><value> with a label of "
            f"{', '.join(LABELS)} and an op of {', '.join(sorted(OPS))}"
        )
    name, op, value = found.groups()
    return Matcher(name, value, op)  # type: ignore[arg-type]


class _Incidents(msgspec.Struct, frozen=True):
    open: tuple[Incident, ...]
    recent: tuple[Incident, ...]


class AlertsClient:
    """One API, one token; an async context manager owning its HTTP session."""

    def __init__(self, url: str, token: str, *, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- alerts ------------------------------------------------------------------

    async def alerts(
        self, *, min_level: Level | None = None, resolved: bool = False
    ) -> list[Alert]:
        """Open alerts (at `min_level` or above), or the resolved ones not yet closed."""
        query: dict[str, str] = {}
        if resolved:
            query["state"] = "resolved"
        if min_level is not None:
            query["min_level"] = min_level.label
        answer = await self._call("GET", "/api/v1/alerts", dict[str, list[Alert]], query=query)
        return answer["alerts"]

    async def alert(self, fingerprint: str) -> Alert:
        return await self._call("GET", f"/api/v1/alerts/{fingerprint}", Alert)

    async def acknowledge(self, fingerprint: str) -> Alert:
        return await self._call("POST", f"/api/v1/alerts/{fingerprint}/acknowledge", Alert)

    async def resolve(self, fingerprint: str) -> Alert:
        return await self._call("POST", f"/api/v1/alerts/{fingerprint}/resolve", Alert)

    async def close(self, fingerprint: str) -> Alert:
        return await self._call("POST", f"/api/v1/alerts/{fingerprint}/close", Alert)

    async def incidents(self) -> tuple[tuple[Incident, ...], tuple[Incident, ...]]:
        """(open incidents, recently resolved ones, newest first)."""
        answer = await self._call("GET", "/api/v1/incidents", _Incidents)
        return answer.open, answer.recent

    async def metrics(self) -> list[dict[str, Any]]:
        answer = await self._call("GET", "/api/v1/metrics", dict[str, list[dict[str, Any]]])
        return answer["response"]

    # -- silences ----------------------------------------------------------------

    async def silences(self) -> list[Silence]:
        answer = await self._call("GET", "/api/v1/silences", dict[str, list[Silence]])
        return answer["silences"]

    async def silence(
        self,
        matchers: Sequence[Matcher],
        *,
        duration_s: float,
        reason: str,
        starts_ms: int | None = None,
    ) -> Silence:
        body: dict[str, Any] = {
            "matchers": [msgspec.structs.asdict(m) for m in matchers],
            "duration_s": duration_s,
            "reason": reason,
        }
        if starts_ms is not None:
            body["starts_ms"] = starts_ms
        return await self._call("POST", "/api/v1/silences", Silence, body=body)

    async def expire(self, silence_id: str) -> Silence:
        return await self._call("DELETE", f"/api/v1/silences/{silence_id}", Silence)

    # -- the one way out -----------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        into: type[T],
        *,
        query: dict[str, str] | None = None,
        body: Any = None,
    ) -> T:
        if self._session is None:
            raise RuntimeError("AlertsClient is not open (use `async with`)")
        data = None if body is None else msgspec.json.encode(body)
        headers = {} if data is None else {"Content-Type": "application/json"}
        try:
            async with self._session.request(
                method, self.url + path, params=query, data=data, headers=headers
            ) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AlertsApiError(
                0, f"cannot reach the alerts API at {self.url}: {exc or type(exc).__name__}"
            ) from exc
        if status >= 400:
            raise AlertsApiError(status, f"{method} {path}: HTTP {status}: {_message(raw)}")
        try:
            return msgspec.json.decode(raw, type=into)
        except msgspec.DecodeError as exc:
            raise AlertsApiError(
                status, f"{method} {path}: an answer this client cannot read: {exc}"
            ) from exc


def _message(raw: bytes) -> str:
    """The server's `error`, or the start of whatever it said."""
    try:
        error = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return raw[:200].decode(errors="replace") or "(no body)"
    if isinstance(error, dict) and isinstance(error.get("error"), str):
        return str(error["error"])
    return raw[:200].decode(errors="replace")
