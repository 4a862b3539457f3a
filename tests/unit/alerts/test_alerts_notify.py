"""The console line and the notifiers' local checks (no network here)."""

from __future__ import annotations

import aiohttp
import msgspec
import pytest

from alerts.book import AlertBook
from alerts.model import Notification
from alerts.notify import ConsoleNotifier, WebhookNotifier, format_line
from cityvitals.contract import Warning
from cityvitals.errors import DeliveryError
from cityvitals.levels import Level
from tests.factories import make_warning


def warning(
    level: Level, value: float, *, threshold: float | None = 50.0, ts_ms: int = 1
) -> Warning:
    return make_warning(level, value=value, threshold=threshold, ts_ms=ts_ms)


def lifecycle() -> list[Notification]:
    book = AlertBook()
    steps = [(Level.ORANGE, 51.0), (Level.RED, 62.1), (Level.YELLOW, 50.0), (Level.NONE, 12.25)]
    out = [book.apply(warning(level, value, ts_ms=i)) for i, (level, value) in enumerate(steps)]
    return [n for n in out if n is not None]


WHERE = "water_level.depth  wl-0003  Harbour / Dockside Street / HB-101"


def test_console_lines_for_a_whole_lifecycle() -> None:
    """Each event gets one aligned line; changes say the direction and what the level was."""
    lines = [format_line(n) for n in lifecycle()]
    assert lines == [
        f"ALERT firing    ORANGE (II)  {WHERE}   51 cm >= 50 cm",
        f"ALERT raised    RED (I)      {WHERE}   62.1 cm >= 50 cm  (was ORANGE (II))",
        f"ALERT lowered   YELLOW (III) {WHERE}   50 cm >= 50 cm  (was RED (I))",
        f"ALERT resolved  YELLOW (III) {WHERE}   12.25 cm < 50 cm  (peak RED (I))",
    ]


def test_console_lines_for_what_people_and_the_clock_do() -> None:
    """Acknowledging, a reminder and an escalation each say what happened (not "firing"):
    who acknowledged, and which step was called in after how long."""
    book = AlertBook()
    opened = book.apply(warning(Level.ORANGE, 51.0, ts_ms=0))
    assert opened is not None
    fp = opened.alert.fingerprint
    up = book.escalate(fp, step=1, due_ms=900_000)
    assert up is not None
    up = msgspec.structs.replace(up, step="street")
    reminder = book.reminders(4_500_000, every_ms=3_600_000)
    acked = book.acknowledge(fp, by="li.wei", now_ms=5_000_000)
    assert acked is not None
    assert [format_line(n) for n in (up, *reminder, acked)] == [
        f"ALERT escalated ORANGE (II)  {WHERE}   51 cm >= 50 cm  "
        "(to street: unacknowledged 15 min)",
        f"ALERT reminder  ORANGE (II)  {WHERE}   51 cm >= 50 cm",
        f"ALERT acked     ORANGE (II)  {WHERE}   51 cm >= 50 cm  (by li.wei)",
    ]


def test_console_line_without_threshold() -> None:
    """Rules with no fixed threshold (anomaly scores) show only the value."""
    n = AlertBook().apply(warning(Level.BLUE, 3.0, threshold=None))
    assert n is not None
    assert format_line(n) == f"ALERT firing    BLUE (IV)    {WHERE}   3 cm"


async def test_console_notifier_writes_one_line_per_notification() -> None:
    """ConsoleNotifier writes exactly the formatted line through the injected callable."""
    written: list[str] = []
    console = ConsoleNotifier(written.append)
    ns = lifecycle()
    for n in ns:
        await console.send(n)
    assert written == [format_line(n) for n in ns]
    assert console.name == "console"


async def test_console_write_failure_is_a_non_retryable_delivery_error() -> None:
    """A broken output (closed pipe) is reported as DeliveryError, not retried."""

    def broken(_line: str) -> None:
        raise BrokenPipeError("stdout closed")

    n = lifecycle()[0]
    with pytest.raises(DeliveryError) as info:
        await ConsoleNotifier(broken, name="tty").send(n)
    assert (info.value.receiver, info.value.retryable) == ("tty", False)


@pytest.mark.parametrize("url", ["ftp://example.org/hook", "not a url", "http://", "/relative"])
async def test_webhook_rejects_bad_urls_at_construction(url: str) -> None:
    """A mistyped webhook URL fails at start-up, not at the first alert."""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ValueError, match="not an http"):
            WebhookNotifier(url, session)


async def test_webhook_rejects_non_positive_timeout() -> None:
    """A zero timeout would fail every delivery; refuse it up front."""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ValueError, match="timeout"):
            WebhookNotifier("http://127.0.0.1:9/hook", session, timeout=0)


def test_resolved_alert_level_is_none_but_line_names_the_resolved_level() -> None:
    """The resolved alert's own level is NONE; the line shows what was resolved instead."""
    n = lifecycle()[-1]
    assert n.alert.level is Level.NONE
    assert "YELLOW (III)" in format_line(n)
