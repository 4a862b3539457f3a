"""`cityvitals alerts`: the alerts API from a terminal, and the alert store's outbox.

The API commands (list, show, ack, resolve, close, incidents, silences,
silence, expire, metrics) talk to the alerts role's HTTP API (`alerts.api`,
`[alerts.api]`) with a bearer token, as a person at the operations centre
would: who acknowledged or silenced is the token's name. The outbox commands
read and change the alert store file itself, on the alerts host.

Imports of the server packages happen inside the commands, so `cityvitals
--help` works on an edge install.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cityvitals.cli_options import SERVICE_CONFIG, secret
from cityvitals.errors import CityvitalsError

if TYPE_CHECKING:
    from alerts.client import AlertsClient
    from alerts.incidents import Incident
    from alerts.model import Alert
    from alerts.silences import Silence

T = TypeVar("T")

#: `90s`, `30m`, `2h`, `1d` or plain seconds.
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}


@click.group("alerts")
def alerts_group() -> None:
    """Alerts: list, acknowledge, resolve and silence them through the alerts API; read
    and retry the alert store's outbox.

    The API commands need the API's URL (--url, $CITYVITALS_ALERTS_URL, or [alerts.api]
    listen of --config) and a token (--token-file, or $CITYVITALS_ALERTS_TOKEN).
    """


def _api_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option(
                "--url",
                envvar="CITYVITALS_ALERTS_URL",
                help="The alerts API, such as http://alerts.example:9094 "
                "[env CITYVITALS_ALERTS_URL; default: [alerts.api] listen of --config].",
            ),
            click.option(
                "--token-file",
                type=click.Path(dir_okay=False, path_type=Path),
                help="A file holding your API token "
                "[default: the token in $CITYVITALS_ALERTS_TOKEN].",
            ),
            SERVICE_CONFIG,
        ]
    ):
        command = option(command)
    return command


def _json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="JSON, for scripts.")(command)


def _api_url(url: str | None, config_path: Path) -> str:
    if url:
        return url
    if not config_path.is_file():
        raise click.UsageError(
            f"no --url, no $CITYVITALS_ALERTS_URL, and no config at {config_path}"
        )
    from cityvitals.settings import load_settings

    try:
        api = load_settings(config_path).alerts.api
    except CityvitalsError as exc:
        raise click.ClickException(str(exc)) from exc
    if api is None:
        raise click.UsageError(f"{config_path}: no [alerts.api] table; give --url")
    host = "127.0.0.1" if api.host in ("0.0.0.0", "::", "") else api.host  # noqa: S104 - a listen address, reached on loopback
    return f"http://{host}:{api.port}"


def _token(token_file: Path | None) -> str:
    return secret(
        os.environ.get("CITYVITALS_ALERTS_TOKEN"),
        token_file,
        "API token",
        given_by="--token-file, or $CITYVITALS_ALERTS_TOKEN",
    )


def _call(
    url: str | None,
    token_file: Path | None,
    config_path: Path,
    work: Callable[[AlertsClient], Awaitable[T]],
) -> T:
    """Run `work` on an open client; an API error is a one-line error, not a traceback."""
    from alerts.client import AlertsApiError, AlertsClient

    base, token = _api_url(url, config_path), _token(token_file)

    async def run() -> T:
        async with AlertsClient(base, token) as api:
            return await work(api)

    try:
        return asyncio.run(run())
    except AlertsApiError as exc:
        raise click.ClickException(str(exc)) from exc


def _utc(ms: int | None) -> str:
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ms / 1000))


def _alert_line(a: Alert) -> str:
    p = a.placement
    where = " / ".join(part for part in (p.district, p.street, p.grid) if part)
    who = f" by {a.acknowledged_by}" if a.acknowledged_by else ""
    return (
        f"{a.fingerprint}  {a.level.label if a.is_open else 'none':<6} "
        f"{a.state + who:<22} {a.rule}  {a.subject}  {where}  since {_utc(a.started_ms)} UTC"
    )


def _echo_json(data: Any) -> None:
    import msgspec

    click.echo(json.dumps(json.loads(msgspec.json.encode(data)), indent=2, ensure_ascii=False))


def _parse_duration(text: str) -> float:
    found = _DURATION.match(text)
    if found is None or float(found.group(1)) <= 0:
        raise click.BadParameter(
            f"expected a duration such as 90s, 30m, 2h or 1d, got {text!r}", param_hint="--for"
        )
    return float(found.group(1)) * _UNIT_S[found.group(2)]


# -- the API ----------------------------------------------------------------------


@alerts_group.command("list")
@_api_options
@_json_option
@click.option("--min-level", type=click.Choice(["blue", "yellow", "orange", "red"]))
@click.option("--resolved", is_flag=True, help="The resolved alerts not yet closed instead.")
def alerts_list(
    *,
    url: str | None,
    token_file: Path | None,
    config_path: Path,
    as_json: bool,
    min_level: str | None,
    resolved: bool,
) -> None:
    """The open alerts, strongest first (or the resolved ones nobody has closed yet)."""
    from cityvitals.levels import Level

    floor = None if min_level is None else Level.parse(min_level)
    alerts = _call(
        url, token_file, config_path, lambda api: api.alerts(min_level=floor, resolved=resolved)
    )
    if as_json:
        _echo_json({"alerts": alerts})
        return
    alerts.sort(key=lambda a: (-int(a.level), a.started_ms))
    what = "resolved, not closed" if resolved else "open"
    click.echo(f"{len(alerts)} {what} alert{'' if len(alerts) == 1 else 's'}")
    for a in alerts:
        click.echo("  " + _alert_line(a))


@alerts_group.command("show")
@_api_options
@click.argument("fingerprint")
def alerts_show(
    url: str | None, token_file: Path | None, config_path: Path, fingerprint: str
) -> None:
    """One open alert, every field (JSON)."""
    _echo_json(_call(url, token_file, config_path, lambda api: api.alert(fingerprint)))


def _act_on_each(
    verb: str,
    act: Callable[[AlertsClient, str], Awaitable[Alert]],
) -> Callable[[str | None, Path | None, Path, tuple[str, ...]], None]:
    def command(
        url: str | None, token_file: Path | None, config_path: Path, fingerprints: tuple[str, ...]
    ) -> None:
        from alerts.client import AlertsApiError

        async def each(api: AlertsClient) -> list[str]:
            failed = []
            for fp in fingerprints:
                try:
                    alert = await act(api, fp)
                except AlertsApiError as exc:
                    if exc.status == 0:
                        raise  # nothing else will get through either
                    failed.append(f"{fp}: {exc}")
                    continue
                click.echo(f"{verb} " + _alert_line(alert))
            return failed

        failed = _call(url, token_file, config_path, each)
        for line in failed:
            click.echo(f"error: {line}", err=True)
        if failed:
            raise SystemExit(1)

    return command


for _name, _verb, _doc, _act in (
    (
        "ack",
        "acknowledged",
        "Acknowledge open alerts: you have them (stops reminders and escalation).",
        lambda api, fp: api.acknowledge(fp),
    ),
    ("resolve", "resolved", "Resolve open alerts by hand.", lambda api, fp: api.resolve(fp)),
    (
        "close",
        "closed",
        "Close resolved alerts: done with, off the resolved list.",
        lambda api, fp: api.close(fp),
    ),
):
    _cmd = _act_on_each(_verb, _act)
    _cmd.__doc__ = _doc + " Exit code 1 if any of them could not be."
    alerts_group.command(_name)(
        _api_options(click.argument("fingerprints", nargs=-1, required=True)(_cmd))
    )


@alerts_group.command("incidents")
@_api_options
@_json_option
def alerts_incidents(
    url: str | None, token_file: Path | None, config_path: Path, as_json: bool
) -> None:
    """Open incidents, then the recently resolved: related alerts grouped by kind and place."""
    opened, recent = _call(url, token_file, config_path, lambda api: api.incidents())
    if as_json:
        _echo_json({"open": opened, "recent": recent})
        return

    def line(i: Incident) -> str:
        ended = f" to {_utc(i.resolved_ms)}" if i.resolved_ms else ""
        return (
            f"  {i.id}  {i.peak_level.label:<6} {i.kind} in {i.scope} {i.place}: "
            f"{len(i.alerts)} alert{'' if len(i.alerts) == 1 else 's'} "
            f"({len(i.open)} open), {_utc(i.opened_ms)}{ended} UTC"
        )

    click.echo(f"{len(opened)} open incident{'' if len(opened) == 1 else 's'}")
    for i in opened:
        click.echo(line(i))
    click.echo(f"{len(recent)} recently resolved")
    for i in recent:
        click.echo(line(i))


def _silence_line(s: Silence) -> str:
    matchers = ", ".join(f"{m.name}{m.op}{m.value}" for m in s.matchers)
    return (
        f"{s.id}  {matchers}  {_utc(s.starts_ms)} to {_utc(s.ends_ms)} UTC  "
        f"by {s.author}: {s.reason}"
    )


@alerts_group.command("silences")
@_api_options
@_json_option
def alerts_silences(
    url: str | None, token_file: Path | None, config_path: Path, as_json: bool
) -> None:
    """The silences running or yet to start."""
    silences = _call(url, token_file, config_path, lambda api: api.silences())
    if as_json:
        _echo_json({"silences": silences})
        return
    click.echo(f"{len(silences)} silence{'' if len(silences) == 1 else 's'}")
    for s in silences:
        click.echo("  " + _silence_line(s))


@alerts_group.command("silence")
@_api_options
@click.argument("matchers", nargs=-1, required=True)
@click.option("--for", "duration", required=True, help="How long: 90s, 30m, 2h, 1d (or seconds).")
@click.option("--reason", required=True, help="Why, for whoever wonders where the pages went.")
def alerts_silence(
    *,
    url: str | None,
    token_file: Path | None,
    config_path: Path,
    matchers: tuple[str, ...],
    duration: str,
    reason: str,
) -> None:
    r"""Hold back the notifications of the alerts MATCHERS select, from now, --for a while.

    MATCHERS are label<op>value with op = (equal), != (not), =~ (matches the regular
    expression, whole), !~ (does not match); labels: rule, kind, node, subject, district,
    street, grid, unit, level. For example, a pump station's planned work:

        cityvitals alerts silence district=Harbour 'rule=~water_level\..*' --for 2h
        --reason "pump station maintenance"
    """
    from alerts.client import parse_matcher

    try:
        parsed = [parse_matcher(m) for m in matchers]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="MATCHERS") from None
    seconds = _parse_duration(duration)
    created = _call(
        url,
        token_file,
        config_path,
        lambda api: api.silence(parsed, duration_s=seconds, reason=reason),
    )
    click.echo("silenced " + _silence_line(created))


@alerts_group.command("expire")
@_api_options
@click.argument("silence_id")
def alerts_expire(
    url: str | None, token_file: Path | None, config_path: Path, silence_id: str
) -> None:
    """End a silence now; the alerts it held back that are still open are announced."""
    ended = _call(url, token_file, config_path, lambda api: api.expire(silence_id))
    click.echo("expired " + _silence_line(ended))


@alerts_group.command("metrics")
@_api_options
@_json_option
def alerts_metrics(
    url: str | None, token_file: Path | None, config_path: Path, as_json: bool
) -> None:
    """Time to detect, acknowledge and resolve, by district, kind and peak level."""
    rows = _call(url, token_file, config_path, lambda api: api.metrics())
    if as_json:
        _echo_json({"response": rows})
        return
    click.echo(
        f"{'what':<12} {'district':<14} {'kind':<12} {'level':<7} count   p50 s   p90 s   max s"
    )
    for r in rows:
        click.echo(
            f"{r['what']:<12} {r['district']:<14} {r['kind']:<12} {r['level']:<7} "
            f"{r['count']:>5} {r['p50_s']:>7.0f} {r['p90_s']:>7.0f} {r['max_s']:>7.0f}"
        )


# -- the store --------------------------------------------------------------------

_ALERT_STORE = click.option(
    "--store",
    "store_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The alert store file (default: [alerts] store of --config; the demo's is "
    "cityvitals-data/alerts.sqlite3).",
)


def _alert_store_path(store_path: Path | None, config_path: Path) -> Path:
    if store_path is not None:
        if not store_path.is_file():
            raise click.ClickException(f"{store_path}: no alert store there")
        return store_path
    from cityvitals.settings import load_settings

    try:
        path = load_settings(config_path).alerts.store_path
    except CityvitalsError as exc:
        raise click.ClickException(str(exc)) from exc
    if path is None or not path.is_file():
        raise click.ClickException(f"{path}: no alert store there (has the alerts role run?)")
    return path


@alerts_group.command("outbox")
@_ALERT_STORE
@SERVICE_CONFIG
@click.option(
    "--state",
    type=click.Choice(["dead", "pending", "delivered", "all"]),
    default="dead",
    show_default=True,
    help="Which rows to list.",
)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
def alerts_outbox(store_path: Path | None, config_path: Path, state: str, limit: int) -> None:
    """List the outbox, newest first: by default the dead letters, each with the receiver,
    the attempts and the reason delivery was given up."""
    from alerts.store import AlertStore

    path = _alert_store_path(store_path, config_path)

    async def read() -> tuple[dict[str, int], list[Any]]:
        async with AlertStore(path) as store:
            wanted = None if state == "all" else state
            return await store.counts(), await store.rows(wanted, limit=limit)  # type: ignore[arg-type]

    counts, rows = asyncio.run(read())
    click.echo(
        f"{path}: {counts['open_alerts']} open alerts; outbox {counts['pending']} pending, "
        f"{counts['delivered']} delivered, {counts['dead']} dead"
    )
    for row in rows:
        n = row.notification
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row.created_ms / 1000))
        click.echo(
            f"  #{row.id} {row.state} to {row.receiver}: {n.event} {n.alert.level.label} "
            f"{n.alert.rule} {n.alert.subject} (key {n.id}, {row.attempts} "
            f"attempt{'' if row.attempts == 1 else 's'}, "
            f"recorded {when} UTC){': ' + row.detail if row.detail else ''}"
        )


@alerts_group.command("retry")
@_ALERT_STORE
@SERVICE_CONFIG
@click.argument("ids", type=int, nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every dead letter.")
def alerts_retry(
    store_path: Path | None, config_path: Path, ids: tuple[int, ...], everything: bool
) -> None:
    """Owe dead letters (by # from `cityvitals alerts outbox`, or --all) again. The alerts
    service sends them, under their own idempotency keys, when it next starts."""
    from alerts.store import AlertStore

    if not ids and not everything:
        raise click.UsageError("name the dead letters to retry (their #), or give --all")
    path = _alert_store_path(store_path, config_path)

    async def requeue() -> int:
        async with AlertStore(path) as store:
            return await store.requeue(None if everything else ids)

    count = asyncio.run(requeue())
    click.echo(
        f"{path}: {count} dead letter{'' if count == 1 else 's'} owed again; restart the "
        "alerts service (or the demo) to send them"
    )
