"""Chat bot formats: each platform's body, both languages, and each platform's signature."""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import parse_qs

import aiohttp
import msgspec
import pytest

from alerts.book import AlertBook
from alerts.chat import ChatNotifier, message, payload
from alerts.model import Notification
from cityvitals.contract import Area, AreaMember
from cityvitals.levels import Level
from tests.factories import make_warning

NOW_S = 1_764_028_800


def notifications() -> list[Notification]:
    """Firing orange, raised to red, resolved: what a rainstorm gives one gauge."""
    book = AlertBook()
    out = []
    for level, value, ts in ((Level.ORANGE, 31.0, 1), (Level.RED, 55.5, 2), (Level.NONE, 3, 3)):
        n = book.apply(make_warning(level, value=value, ts_ms=NOW_S * 1000 + ts, seq=ts))
        assert n is not None
        out.append(n)
    return out


def test_the_message_says_each_thing_in_both_languages():
    firing, raised, resolved = notifications()
    title, lines = message(firing)
    assert title == "橙色预警 (II级) Orange warning (II): 积水 water level wl-0003"
    assert lines == [
        "事件 Event: 告警触发 firing",
        "规则 Rule: water_level.depth",
        "位置 Place: Harbour / Dockside Street / HB-101 · 责任单位 Unit: harbour-ops",
        "数值 Value: 31 cm (阈值 threshold 50 cm)",
        "时间 Time: 2025-11-25 00:00:00 UTC",
        f"编号 Key: {firing.id}",
    ]
    title, lines = message(raised)
    assert title.startswith("红色预警 (I级) Red warning (I)")
    assert lines[0] == "事件 Event: 升级 raised (原 was orange)"
    title, lines = message(resolved)
    assert title == "已解除 Resolved: 红色预警 (I级) Red warning (I): 积水 water level wl-0003"
    assert lines[:2] == ["事件 Event: 已解除 resolved", "规则 Rule: water_level.depth"]


def test_acknowledged_reminder_and_escalated_each_say_what_happened():
    """Not "lowered (was orange)": these events keep the level, and say who took the
    alert, that nobody has, or which step was called in after how long."""
    book = AlertBook()
    start = NOW_S * 1000
    opened = book.apply(make_warning(Level.ORANGE, value=31.0, ts_ms=start))
    assert opened is not None
    fp = opened.alert.fingerprint
    up = book.escalate(fp, step=2, due_ms=start + 1_800_000)
    assert up is not None
    reminder = book.reminders(start + 5_400_000, every_ms=3_600_000)
    acked = book.acknowledge(fp, by="li.wei", now_ms=start + 6_000_000)
    assert acked is not None
    events = [
        message(n)[1][0] for n in (msgspec.structs.replace(up, step="district"), *reminder, acked)
    ]
    assert events == [
        "事件 Event: 逐级上报 escalated to district: 30 分钟未确认 unacknowledged for 30 min",
        "事件 Event: 提醒 reminder: 尚未确认 not yet acknowledged",
        "事件 Event: 已确认 acknowledged (li.wei)",
    ]


def test_an_area_alert_names_its_count_and_nodes():
    members = (
        AreaMember(node="wl-0002", level=Level.ORANGE, value=61.0, ts_ms=1),
        AreaMember(node="wl-0001", level=Level.YELLOW, value=32.0, ts_ms=1),
    )
    w = make_warning(Level.YELLOW, value=2.0, threshold=2.0, node="", fp="fp-area")
    w = msgspec.structs.replace(
        w, area=Area(scope="district", name="Harbour", members=members, total=5)
    )
    n = AlertBook().apply(w)
    assert n is not None
    title, lines = message(n)
    assert title.endswith("积水 water level district:Harbour")
    assert "数值 Value: 2 / 5 个节点 nodes, 需要 needed 2: wl-0002, wl-0001" in lines


@pytest.mark.parametrize("style", ["slack", "dingtalk", "wecom", "feishu"])
def test_each_platform_gets_its_own_body_with_every_line(style):
    n = notifications()[0]
    body = payload(style, n)
    title, lines = message(n)
    text = {
        "slack": lambda b: b["blocks"][0]["text"]["text"],
        "dingtalk": lambda b: b["markdown"]["text"],
        "wecom": lambda b: b["markdown"]["content"],
        "feishu": lambda b: b["content"]["text"],
    }[style](body)
    assert title in text
    assert all(line in text for line in lines)
    kind = {"slack": "blocks", "dingtalk": "msgtype", "wecom": "msgtype", "feishu": "msg_type"}
    assert kind[style] in body


async def test_dingtalk_is_signed_in_the_query_as_its_documentation_says():
    """timestamp in ms; sign = base64(HMAC-SHA256(key=secret, msg="timestamp\\nsecret"))."""
    async with aiohttp.ClientSession() as session:
        bot = ChatNotifier(
            "https://oapi.dingtalk.com/robot/send?access_token=abc",
            session,
            style="dingtalk",
            name="ding",
            secret="SECxyz",
            now_s=lambda: NOW_S + 0.25,
        )
        url, body = bot.request(notifications()[0])
    query = parse_qs(url.query_string)
    assert query["access_token"] == ["abc"]
    assert query["timestamp"] == [str(NOW_S * 1000 + 250)]
    expected = hmac.new(b"SECxyz", f"{NOW_S * 1000 + 250}\nSECxyz".encode(), hashlib.sha256)
    assert query["sign"] == [base64.b64encode(expected.digest()).decode()]
    assert msgspec.json.decode(body)["msgtype"] == "markdown"


async def test_feishu_is_signed_in_the_body_as_its_documentation_says():
    """timestamp in s; sign = base64(HMAC-SHA256(key="timestamp\\nsecret", msg=""))."""
    async with aiohttp.ClientSession() as session:
        bot = ChatNotifier(
            "https://open.feishu.cn/open-apis/bot/v2/hook/xyz",
            session,
            style="feishu",
            name="lark",
            secret="s3",
            now_s=lambda: NOW_S,
        )
        url, body = bot.request(notifications()[0])
    data = msgspec.json.decode(body)
    assert str(url) == "https://open.feishu.cn/open-apis/bot/v2/hook/xyz"
    assert data["timestamp"] == str(NOW_S)
    expected = hmac.new(f"{NOW_S}\ns3".encode(), b"", hashlib.sha256).digest()
    assert data["sign"] == base64.b64encode(expected).decode()
    assert data["msg_type"] == "text"


async def test_settings_that_cannot_work_are_refused_at_start():
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ValueError, match="wecom bots are not signed"):
            ChatNotifier("https://q.example/x", session, style="wecom", name="w", secret="s")
        with pytest.raises(ValueError, match="is not an http"):
            ChatNotifier("qyapi.weixin.qq.com", session, style="wecom", name="w")
        with pytest.raises(ValueError, match="style 'teams' is not one of"):
            ChatNotifier("https://t.example/x", session, style="teams", name="t")  # type: ignore[arg-type]


async def test_a_webhook_table_becomes_the_receiver_it_names():
    """format = "json" is the signed JSON webhook; a chat format is that bot, with the
    bot's secret and pace."""
    from alerts.notify import WebhookNotifier
    from alerts.receivers import receiver
    from cityvitals.settings import WebhookSettings

    async with aiohttp.ClientSession() as session:
        hook = receiver(WebhookSettings("ops", "https://ops.example/h", secrets=(b"k",)), session)
        ding = receiver(
            WebhookSettings(
                "duty",
                "https://oapi.dingtalk.com/robot/send?access_token=t",
                secrets=(b"SEC1",),
                format="dingtalk",
                rate_per_minute=20,
            ),
            session,
        )
    assert isinstance(hook, WebhookNotifier)
    assert isinstance(ding, ChatNotifier)
    assert (ding.style, ding.rate_per_minute, ding.name) == ("dingtalk", 20, "duty")
    assert "sign=" in str(ding.request(notifications()[0])[0])
