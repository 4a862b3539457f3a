"""Chat receivers: Slack, DingTalk, WeCom and Feishu group bots, in Chinese and English.

Each platform's incoming-webhook bot takes its own JSON and answers in its
own way; `ChatNotifier` builds the message (`message`: a title and lines,
both languages on each line, so one message serves a mixed duty room),
signs the request the platform's way and reads the platform's answer:

- `slack`: `{"text", "blocks"}` in mrkdwn; not signed (the URL is the
  secret); refusals are HTTP statuses (4xx refused, 429 and 5xx retried).
- `dingtalk`: `{"msgtype": "markdown", ...}`; signed with the query's
  `timestamp` (ms) and `sign`, base64 HMAC-SHA256 under the secret of
  "timestamp\nsecret"; a non-zero `errcode` in the answer is a refusal,
  130101 (too fast) is retried.
- `wecom`: `{"msgtype": "markdown", ...}`; not signed (the `key` in the
  URL); `errcode` as DingTalk's, 45009 (frequency limit) is retried.
- `feishu`: `{"msg_type": "text", ...}`; signed with the body's `timestamp`
  (s) and `sign`, base64 HMAC-SHA256 keyed by "timestamp\nsecret" of an
  empty message; a non-zero `code` is a refusal, 11232 (frequency limit) is
  retried.

The bots limit how fast they take messages (DingTalk and WeCom 20 a minute
per bot); give the receiver `rate_per_minute` and the service paces it.

>>> from alerts.model import Alert, Notification
>>> from cityvitals.contract import Placement
>>> place = Placement(district="Harbour", street="Dockside Street", grid="HB-101",
...                   unit="harbour-ops", lat=22.28, lon=114.16)
>>> alert = Alert(fingerprint="fp", rule="water_level.depth", node="wl-0003",
...               kind="water_level", metric="depth_cm", unit="cm", placement=place,
...               level=Level.ORANGE, peak_level=Level.ORANGE, state="firing", started_ms=0,
...               updated_ms=0, resolved_ms=None, value=51.0, threshold=50.0, seq=7)
>>> title, lines = message(Notification(v=1, id="3f2a9c0d1e4b5a67", event="firing",
...                                     previous=Level.NONE, alert=alert, ts_ms=0))
>>> title
'橙色预警 (II级) Orange warning (II): 积水 water level wl-0003'
>>> lines[0]
'事件 Event: 告警触发 firing'
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any, Final, Literal

import aiohttp
import msgspec
import yarl

from alerts.model import Notification
from cityvitals.errors import DeliveryError
from cityvitals.kinds import Kind
from cityvitals.levels import Level

__all__ = ["STYLES", "ChatNotifier", "ChatStyle", "message", "payload"]

ChatStyle = Literal["slack", "dingtalk", "wecom", "feishu"]
STYLES: Final[tuple[ChatStyle, ...]] = ("slack", "dingtalk", "wecom", "feishu")

_LEVEL_ZH: Final = {
    Level.BLUE: "蓝色预警 (IV级)",
    Level.YELLOW: "黄色预警 (III级)",
    Level.ORANGE: "橙色预警 (II级)",
    Level.RED: "红色预警 (I级)",
}
_KIND_ZH: Final = {
    Kind.WATER_LEVEL: "积水 water level",
    Kind.MANHOLE: "井盖 manhole",
    Kind.SMOKE: "烟感 smoke",
    Kind.CROWD: "人流 crowd",
}
#: Answer codes that mean "too fast, try again later"; any other non-zero is a refusal.
_RETRY_CODES: Final[dict[ChatStyle, frozenset[int]]] = {
    "slack": frozenset(),
    "dingtalk": frozenset({130101}),
    "wecom": frozenset({45009}),
    "feishu": frozenset({11232}),
}
_ERROR_BODY_LIMIT: Final = 500
_encoder: Final = msgspec.json.Encoder()


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _level(level: Level) -> str:
    if level is Level.NONE:
        return "无 none"
    return f"{_LEVEL_ZH[level]} {level.label.capitalize()} warning ({level.roman})"


#: What each event without a level of its own says, in both languages.
_EVENTS: Final = {
    "firing": "告警触发 firing",
    "resolved": "已解除 resolved",
    "acknowledged": "已确认 acknowledged",
    "repeated": "提醒 reminder: 尚未确认 not yet acknowledged",
}


def _event(n: Notification) -> str:
    """What happened, in both languages."""
    a = n.alert
    if n.event == "acknowledged" and a.acknowledged_by:
        return f"{_EVENTS['acknowledged']} ({a.acknowledged_by})"
    if n.event == "escalated":
        waited = round((n.ts_ms - a.started_ms) / 60_000)
        return (
            f"逐级上报 escalated to {n.step or 'the next step'}: "
            f"{waited} 分钟未确认 unacknowledged for {waited} min"
        )
    if n.event in _EVENTS:
        return _EVENTS[n.event]
    if a.level > n.previous:
        return f"升级 raised (原 was {n.previous.label})"
    return f"降级 lowered (原 was {n.previous.label})"


def message(n: Notification) -> tuple[str, list[str]]:
    """The title and the lines of a chat message for one notification (both languages)."""
    a = n.alert
    level = n.previous if n.event == "resolved" else a.level
    subject = a.subject
    title = f"{_level(level)}: {_KIND_ZH[a.kind]} {subject}"
    if n.event == "resolved":
        title = f"已解除 Resolved: {title}"
    event = _event(n)
    p = a.placement
    where = " / ".join(part for part in (p.district, p.street, p.grid) if part)
    measured = f"{_num(a.value)} {a.unit}"
    if a.area is not None:
        counted = ", ".join(m.node for m in a.area.members[:8])
        measured = (
            f"{_num(a.value)} / {a.area.total or '?'} 个节点 nodes, 需要 needed "
            f"{_num(a.threshold or 0)}" + (f": {counted}" if counted else "")
        )
    elif a.threshold is not None:
        measured += f" (阈值 threshold {_num(a.threshold)} {a.unit})"
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(n.ts_ms / 1000))
    lines = [
        f"事件 Event: {event}",
        f"规则 Rule: {a.rule}",
        f"位置 Place: {where}" + (f" · 责任单位 Unit: {p.unit}" if p.unit else ""),
        f"数值 Value: {measured}",
        f"时间 Time: {when}",
        f"编号 Key: {n.id}",
    ]
    if n.event == "resolved" and a.peak_level > n.previous:
        lines.insert(1, f"最高 Peak: {_level(a.peak_level)}")
    if n.incident:
        lines.append(f"事件组 Incident: {n.incident}")
    if n.ack_url:
        lines.append(f"确认 Acknowledge: {n.ack_url}")
    return title, lines


def payload(style: ChatStyle, n: Notification) -> dict[str, Any]:
    """The JSON body the platform's bot takes, unsigned."""
    title, lines = message(n)
    if style == "slack":
        text = f"*{title}*\n" + "\n".join(f"• {line}" for line in lines)
        return {
            "text": title,  # the notification preview, and clients without blocks
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
        }
    if style == "dingtalk":
        text = f"### {title}\n\n" + "\n".join(f"- {line}" for line in lines)
        return {"msgtype": "markdown", "markdown": {"title": title, "text": text}}
    if style == "wecom":
        text = f"**{title}**\n" + "\n".join(f"> {line}" for line in lines)
        return {"msgtype": "markdown", "markdown": {"content": text}}
    return {"msg_type": "text", "content": {"text": "\n".join([title, *lines])}}


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk's `sign`: base64 of HMAC-SHA256 under the secret of "timestamp\\nsecret"."""
    text = f"{timestamp_ms}\n{secret}".encode()
    return base64.b64encode(hmac.new(secret.encode(), text, hashlib.sha256).digest()).decode()


def feishu_sign(secret: str, timestamp_s: int) -> str:
    """Feishu's `sign`: base64 of HMAC-SHA256 keyed by "timestamp\\nsecret", of nothing."""
    key = f"{timestamp_s}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


class ChatNotifier:
    """One group bot of `style`; a `Notifier` for `AlertService`."""

    def __init__(
        self,
        url: str,
        session: aiohttp.ClientSession,
        *,
        style: ChatStyle,
        name: str,
        secret: str | None = None,
        timeout: float = 10.0,
        rate_per_minute: float | None = None,
        now_s: Callable[[], float] = time.time,
    ) -> None:
        parsed = yarl.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"{style} receiver {name!r}: {url!r} is not an http(s) URL")
        if style not in STYLES:
            raise ValueError(f"receiver {name!r}: style {style!r} is not one of {STYLES}")
        if secret is not None and style not in ("dingtalk", "feishu"):
            raise ValueError(f"{style} receiver {name!r}: {style} bots are not signed")
        self.name = name
        self.url = parsed
        self.style = style
        self.rate_per_minute = rate_per_minute
        self._session = session
        self._secret = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._now_s = now_s

    def request(self, n: Notification) -> tuple[yarl.URL, bytes]:
        """The URL and body of one attempt, signed now."""
        body = payload(self.style, n)
        url = self.url
        if self._secret is not None and self.style == "dingtalk":
            ts = int(self._now_s() * 1000)
            url = url.update_query(timestamp=str(ts), sign=dingtalk_sign(self._secret, ts))
        elif self._secret is not None and self.style == "feishu":
            ts = int(self._now_s())
            body = {"timestamp": str(ts), "sign": feishu_sign(self._secret, ts), **body}
        return url, _encoder.encode(body)

    async def send(self, n: Notification) -> None:
        url, body = self.request(n)
        headers = {"Content-Type": "application/json; charset=utf-8", "Idempotency-Key": n.id}
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as resp:
                text = (await resp.content.read(_ERROR_BODY_LIMIT)).decode("utf-8", "replace")
                status = resp.status
        except TimeoutError as exc:
            detail = f"no response within {self._timeout.total} s"
            raise DeliveryError(self.name, detail, retryable=True) from exc
        except (aiohttp.ClientError, OSError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
            raise DeliveryError(self.name, detail, retryable=True) from exc
        if not 200 <= status < 300:
            retry = status in (408, 429) or status >= 500
            raise DeliveryError(self.name, f"HTTP {status}: {text.strip()}", retryable=retry)
        if self.style == "slack":
            return  # Slack answers "ok"; its refusals are HTTP statuses
        self._check_answer(text)

    def _check_answer(self, text: str) -> None:
        """The Chinese bots answer HTTP 200 with an error code in the JSON."""
        try:
            answer = msgspec.json.decode(text)
        except msgspec.DecodeError:
            raise DeliveryError(
                self.name, f"an answer that is not JSON: {text[:200]!r}", retryable=True
            ) from None
        key = "code" if self.style == "feishu" else "errcode"
        code = answer.get(key, answer.get("StatusCode", 0)) if isinstance(answer, dict) else 0
        if code in (0, None):
            return
        why = answer.get("msg") or answer.get("errmsg") or ""
        raise DeliveryError(
            self.name,
            f"{self.style} refused it: {key} {code} {why}".rstrip(),
            retryable=code in _RETRY_CODES[self.style],
        )
