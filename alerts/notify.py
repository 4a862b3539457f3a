"""Notifiers: the last stage, which hands one notification to one receiver.

A notifier does one attempt and says whether another could help: it raises
`DeliveryError` with `retryable` set, and the caller (`alerts.service`) owns
retries, backoff and bookkeeping. Notifiers never retry on their own, so a
retry policy is written once, and they never let a transport's own exception
type escape, so the caller needs to know only `DeliveryError`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Final, Protocol

import aiohttp
import yarl

from alerts.model import Notification
from alerts.signing import sign
from cityvitals.contract import encode
from cityvitals.errors import DeliveryError
from cityvitals.levels import Level

# Enough of an error body to tell "quota exceeded" from "bad token" in a log
# line, not so much that a chatty error page floods the log.
_ERROR_BODY_LIMIT: Final = 200


class Notifier(Protocol):
    """One receiver. `name` is unique within a service and appears in delivery reports.

    `send` makes one delivery attempt. It returns once the receiver accepted
    the notification and raises `DeliveryError` otherwise; it may be called
    again with the same notification (same `id`) when a retry is due.
    """

    name: str

    async def send(self, n: Notification) -> None: ...


def _level(level: Level) -> str:
    return f"{level.name} ({level.roman})"


def _num(value: float) -> str:
    # Sensor values carry at most two meaningful decimals; "50" reads better than "50.0".
    return f"{value:.2f}".rstrip("0").rstrip(".")


def format_line(n: Notification) -> str:
    """One human line for one notification, with columns aligned across lines.

    >>> from cityvitals.contract import Placement
    >>> from alerts.model import Alert
    >>> place = Placement(district="Harbour", street="Dockside Street", grid="HB-101",
    ...                   unit="harbour-ops", lat=22.28, lon=114.16)
    >>> alert = Alert(fingerprint="fp", rule="water_level.depth", node="wl-0003",
    ...               kind="water_level", metric="depth_cm", unit="cm", placement=place,
    ...               level=Level.RED, peak_level=Level.RED, state="firing", started_ms=1,
    ...               updated_ms=1, resolved_ms=None, value=62.1, threshold=50.0, seq=7)
    >>> format_line(Notification(v=1, id="x", event="firing", previous=Level.NONE,
    ...                          alert=alert, ts_ms=1))
    'ALERT firing    RED (I)      water_level.depth  wl-0003  Harbour / Dockside Street / HB-101   62.1 cm >= 50 cm'
    """  # noqa: E501 - doctest output is one line by definition
    a = n.alert
    if n.event == "resolved":
        # The alert's own level is NONE once resolved; say what was resolved.
        verb, level = "resolved", n.previous
    elif n.event == "level_changed":
        verb, level = ("raised" if a.level > n.previous else "lowered"), a.level
    else:
        verb, level = _VERBS.get(n.event, n.event), a.level
    where = f"{a.placement.district} / {a.placement.street} / {a.placement.grid}"
    measured = f"{_num(a.value)} {a.unit}"
    if a.area is not None:
        # An area's placement is what its nodes share: leave out what they do not.
        p = a.placement
        where = " / ".join(part for part in (p.district, p.street, p.grid) if part)
        nodes = ", ".join(f"{m.node} {m.level.label}" for m in a.area.members[:AREA_MEMBERS])
        more = len(a.area.members) - AREA_MEMBERS
        measured = (
            f"{_num(a.value)} of {a.area.total or '?'} nodes, {_num(a.threshold or 0)} needed"
        )
        measured += f": {nodes}" + (f" and {more} more" if more > 0 else "") if nodes else ""
    elif a.threshold is not None:
        # State the comparison that is true rather than assume which side fires:
        # a cleared value sits below, a predictive warning may fire from below too.
        op = ">=" if a.value >= a.threshold else "<"
        measured += f" {op} {_num(a.threshold)} {a.unit}"
    line = f"ALERT {verb:<9} {_level(level):<12} {a.rule}  {a.subject}  {where}   {measured}"
    if n.event == "level_changed":
        line += f"  (was {_level(n.previous)})"
    elif n.event == "resolved" and a.peak_level > n.previous:
        line += f"  (peak {_level(a.peak_level)})"
    elif n.event == "escalated":
        waited = round((n.ts_ms - a.started_ms) / 60_000)
        line += f"  (to {n.step or 'the next step'}: unacknowledged {waited} min)"
    elif n.event == "acknowledged" and a.acknowledged_by:
        line += f"  (by {a.acknowledged_by})"
    return line


#: The verb of each event without a level change of its own.
_VERBS: Final = {
    "firing": "firing",
    "acknowledged": "acked",
    "repeated": "reminder",
    "escalated": "escalated",
}


#: Members an area alert's line names before "and N more".
AREA_MEMBERS = 5


class ConsoleNotifier:
    """Writes one line per notification through `write` (given without a trailing newline).

    `write` is injected so the demo can route lines to a rich console, a logger
    or a list in tests; this module never prints.
    """

    def __init__(self, write: Callable[[str], None], *, name: str = "console") -> None:
        self.name = name
        self._write = write

    async def send(self, n: Notification) -> None:
        try:
            self._write(format_line(n))
        except OSError as exc:
            # A closed pipe or full disk will not heal between retries.
            raise DeliveryError(self.name, f"write failed: {exc}", retryable=False) from exc


def _retryable_status(status: int) -> bool:
    # 408 and 429 say "not now"; 5xx say "not my fault"; any other 4xx says the
    # request itself is wrong and will be refused the same way next time.
    return status in (408, 429) or status >= 500


class WebhookNotifier:
    """POSTs the notification as JSON (schema v1, see `alerts.model`) to one URL.

    With `secrets`, each request is signed (`alerts.signing`: HMAC-SHA256 over
    the timestamp and the body); two secrets during a rotation sign twice.

    The session is the caller's: one `aiohttp.ClientSession` is meant to be
    shared by every webhook in a process and closed by whoever opened it.
    Redirects are not followed, because a redirected POST may turn into a GET
    and lose the body; a 3xx is reported as a non-retryable failure instead.
    """

    def __init__(
        self,
        url: str,
        session: aiohttp.ClientSession,
        *,
        timeout: float = 10.0,
        name: str = "webhook",
        secrets: Sequence[bytes] = (),
        rate_per_minute: float | None = None,
        concurrency: int = 1,
        now_s: Callable[[], float] = time.time,
    ) -> None:
        parsed = yarl.URL(url)
        # Catch a mistyped URL at start-up, not at the first alert at 3 a.m.
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"webhook {name!r}: {url!r} is not an http(s) URL")
        if timeout <= 0:
            raise ValueError(f"webhook {name!r}: timeout must be positive, got {timeout}")
        if any(not secret for secret in secrets):
            raise ValueError(f"webhook {name!r}: a signing secret must not be empty")
        self.name = name
        self.url = url
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._secrets = tuple(secrets)
        self._now_s = now_s
        #: Messages a minute the receiver takes; None: as fast as it answers.
        self.rate_per_minute = rate_per_minute
        #: Requests at once (different alerts; one alert's go one at a time, in order).
        self.concurrency = concurrency

    async def send(self, n: Notification) -> None:
        body = encode(n)
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": n.id,
            "X-Cityvitals-Event": n.event,
        }
        if self._secrets:
            # Signed per attempt: a retry an hour later carries a fresh timestamp.
            headers |= sign(self._secrets, body, now_s=int(self._now_s()))
        try:
            async with self._session.post(
                self.url,
                data=body,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                if 200 <= resp.status < 300:
                    return
                # Read a little of the body: receivers explain refusals there.
                body = await resp.content.read(_ERROR_BODY_LIMIT)
                status, reason = resp.status, resp.reason or ""
        except TimeoutError as exc:
            # Before ClientError: aiohttp's timeout errors are both.
            detail = f"no response within {self._timeout.total} s"
            raise DeliveryError(self.name, detail, retryable=True) from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            raise DeliveryError(self.name, f"TLS certificate: {exc}", retryable=False) from exc
        except aiohttp.InvalidURL as exc:
            raise DeliveryError(self.name, f"invalid URL: {exc}", retryable=False) from exc
        except (aiohttp.ClientError, OSError) as exc:
            # Refused, reset, DNS failure, truncated response: usually transient.
            detail = f"{type(exc).__name__}: {exc}"
            raise DeliveryError(self.name, detail, retryable=True) from exc
        text = body.decode("utf-8", errors="replace").strip()
        detail = f"HTTP {status} {reason}" + (f": {text}" if text else "")
        raise DeliveryError(self.name, detail, retryable=_retryable_status(status))
