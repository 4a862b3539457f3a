"""The demo's face: a live progress line, alerts on the console, a summary table."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from alerts.notify import Notifier
from cityvitals.embedded.demo import DemoOptions, DemoResult, install_signal_handlers, run_demo
from cityvitals.levels import WARNING_LEVELS, Level
from stream.agents import ReadingSink

log = logging.getLogger("cityvitals.demo")

LEVEL_STYLE = {
    Level.BLUE: "blue",
    Level.YELLOW: "yellow",
    Level.ORANGE: "dark_orange",
    Level.RED: "red",
}
#: Without a terminal, one progress line per this many seconds instead of a live line.
PLAIN_PROGRESS_EVERY_S = 10.0


@contextlib.asynccontextmanager
async def _notifiers(options: DemoOptions, console: Console) -> AsyncIterator[list[Notifier]]:
    from alerts.notify import ConsoleNotifier, WebhookNotifier

    notifiers: list[Notifier] = [ConsoleNotifier(lambda line: console.print(Text(line)))]
    if options.webhook_url is None:
        yield notifiers
        return
    import aiohttp

    async with aiohttp.ClientSession() as session:
        notifiers.append(WebhookNotifier(options.webhook_url, session))
        yield notifiers


@contextlib.asynccontextmanager
async def _influx(options: DemoOptions, console: Console) -> AsyncIterator[list[ReadingSink]]:
    """The InfluxDB sink when --influx is given; on the way out, up to 30 s for InfluxDB
    to confirm what the run wrote (what it has not stays in the spool for the next run)."""
    if options.influx_url is None:
        yield []
        return
    from stream.sinks.influx import InfluxSink

    async with InfluxSink(
        options.influx_url,
        options.data_dir / "influx-spool.sqlite3",
        org=options.influx_org,
        bucket=options.influx_bucket,
        token=options.influx_token or "",
    ) as sink:
        yield [sink]
        try:
            async with asyncio.timeout(30):
                await sink.wait_shipped()
        except TimeoutError:
            pass
        stats = sink.stats()
        console.print(
            f"InfluxDB {options.influx_url}: {stats.shipped:,} points shipped"
            + (f", [red]{stats.in_spool:,} still spooled[/]" if stats.in_spool else "")
        )


async def run_with_console(options: DemoOptions, console: Console) -> DemoResult:
    stop = asyncio.Event()
    install_signal_handlers(stop)
    console.print(
        f"[bold]cityvitals demo[/]: a simulated day in {options.duration_s:.0f} s, "
        f"data in {options.data_dir}/"
    )
    async with _notifiers(options, console) as notifiers, _influx(options, console) as sinks:
        if console.is_terminal:
            with Live(Text(""), console=console, refresh_per_second=4, transient=True) as live:
                result = await run_demo(
                    options,
                    notifiers=notifiers,
                    stop=stop,
                    progress=lambda line: live.update(Text(line, style="dim")),
                    extra_sinks=sinks,
                )
        else:
            last = [0.0]

            def plain(line: str) -> None:
                now = time.monotonic()
                if now - last[0] >= PLAIN_PROGRESS_EVERY_S:
                    last[0] = now
                    log.info("%s", line)

            result = await run_demo(
                options, notifiers=notifiers, stop=stop, progress=plain, extra_sinks=sinks
            )
    print_summary(result, console)
    return result


def print_summary(result: DemoResult, console: Console) -> None:
    table = Table(title="cityvitals demo summary", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    rate = result.published / result.elapsed_s if result.elapsed_s else 0.0
    table.add_row(
        "readings published", f"{result.published:,} ({rate:,.0f}/s over {result.elapsed_s:.1f} s)"
    )
    table.add_row("acknowledged by broker", f"{result.acknowledged:,}")
    table.add_row("readings stored", f"{result.stored:,}")
    lost = f"[red]{result.missing:,} LOST[/]" if result.missing else "[green]0 lost[/]"
    table.add_row("lost", lost + ("" if result.settled else " [red](pipeline did not settle)[/]"))
    if result.missing_keys:
        shown = ", ".join(f"{node}#{seq}" for node, seq in result.missing_keys[:10])
        more = result.missing - min(10, len(result.missing_keys))
        table.add_row("lost readings", shown + (f" and {more:,} more" if more > 0 else ""))
    table.add_row("duplicates dropped", f"{result.duplicates:,}")
    table.add_row("dead letters", f"{result.dead_letters:,}")
    table.add_row(
        "warnings raised",
        "  ".join(
            f"[{LEVEL_STYLE[lv]}]{lv.label} ({lv.roman}) {result.warnings_raised.get(lv, 0)}[/]"
            for lv in WARNING_LEVELS
        ),
    )
    table.add_row(
        "alerts",
        f"{result.notifications} notifications, {result.delivered} deliveries"
        + (f", [red]{result.failed_deliveries} failed[/]" if result.failed_deliveries else "")
        + (f", [red]{result.undelivered} never delivered[/]" if result.undelivered else ""),
    )
    if result.grouped:
        table.add_row(
            "alert incidents",
            f"{len(result.grouped)}: "
            + ", ".join(
                f"{kind} in {place} ({count} alert{'s' if count > 1 else ''})"
                for kind, place, count in result.grouped
            ),
        )
    if result.called_in:
        table.add_row(
            "duty called in",
            "  ".join(f"{step} {count}" for step, count in result.called_in.items())
            + " alerts (nobody acknowledges in the demo: each climbs the ladder)",
        )
    for check in result.incidents:
        mark = "[green]ok[/]" if check.ok else "[red]MISSED[/]"
        table.add_row(
            "incident check",
            f"{mark} {check.node} {check.rule}: expected {check.expected.label}, "
            f"reached {check.reached.label}",
        )
    for node, rule, level in result.unexpected:
        table.add_row("[red]unexpected[/]", f"{node} {rule} reached {level.label}")
    if result.interrupted:
        table.add_row("note", "interrupted before the end of the simulated day")
    console.print(table)
