"""The `cityvitals` command line.

Every subcommand imports what it needs when it runs, so `cityvitals --help`
and the edge's commands work on an install without the server extras.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cityvitals import __version__
from cityvitals.cli_alerts import alerts_group
from cityvitals.cli_options import SERVICE_CONFIG, secret
from cityvitals.errors import CityvitalsError

if TYPE_CHECKING:
    from cityvitals.settings import Settings
    from edge.agent import AgentSummary
    from edge.config import EdgeConfig


def _setup_logging(verbose: int, console: object | None = None, *, plain: bool = False) -> None:
    """Rich on a terminal; `plain` one-line records for journald and log files."""
    level = logging.DEBUG if verbose > 1 else logging.INFO
    handler: logging.Handler
    try:
        if plain:
            raise ImportError  # noqa: TRY301 - the same fallback as a missing rich
        from rich.logging import RichHandler

        handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)  # type: ignore[arg-type]
        fmt = "%(message)s"
    except ImportError:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    from cityvitals.logs import RepeatFilter

    # CITYVITALS_DEBUG=faust.tables.recovery,aiokafka: those loggers at DEBUG, the
    # rest as they are (diagnosing one library without drowning in all of them),
    # and none of their lines dropped as repeats.
    debug = tuple(n.strip() for n in os.environ.get("CITYVITALS_DEBUG", "").split(",") if n.strip())
    # A Kafka client retrying a dead broker logs several lines a second.
    handler.addFilter(RepeatFilter(exempt=debug))
    logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S", handlers=[handler], force=True)
    # Third-party libraries log per connection or per message at INFO; we
    # report state changes ourselves.
    # faust logs an App under the module that defines its class (stream.app).
    for noisy in (
        "amqtt",
        "transitions",
        "faust",
        "mode",
        "aiokafka",
        "aiohttp.access",
        "stream.app",
    ):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose > 2 else logging.WARNING)
    for name in debug:
        logging.getLogger(name).setLevel(logging.DEBUG)


def _check_mqtt_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from cityvitals.config import BrokerSettings, BrokerUrlError

    if value is not None:
        try:
            BrokerSettings.from_url(value)
        except BrokerUrlError as exc:
            raise click.BadParameter(str(exc)) from exc
    return value


def _check_http_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from urllib.parse import urlsplit

    if value is not None:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise click.BadParameter(f"expected http(s)://host[:port]/path, got {value!r}")
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cityvitals")
def main() -> None:
    """cityvitals: a city's vital signs, from sensor node to on-call phone.

    Sensor nodes publish over MQTT; the gateway validates and enriches; a
    faust stream finds trouble early and raises warnings; alerts reach the
    people on call. Start with `cityvitals demo`.
    """


main.add_command(alerts_group)


@main.command()
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Wall-clock seconds for the simulated day (0: as fast as possible).",
)
@click.option(
    "--nodes",
    type=click.IntRange(min=16),
    default=240,
    show_default=True,
    help="Sensor nodes in the simulated city.",
)
@click.option("--districts", type=click.IntRange(1, 6), default=4, show_default=True)
@click.option(
    "--seed",
    type=int,
    default=7,
    show_default=True,
    help="Seed for the city, its normal life and the incidents.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=1),
    default=600.0,
    show_default=True,
    help="Simulated seconds between two readings of a node.",
)
@click.option(
    "--registry",
    "registry_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Use this device registry CSV instead of generating a city.",
)
@click.option(
    "--mqtt",
    "mqtt_url",
    metavar="URL",
    callback=_check_mqtt_url,
    help="Use an external broker (mqtt://host:port) instead of the embedded one.",
)
@click.option(
    "--webhook",
    "webhook_url",
    metavar="URL",
    callback=_check_http_url,
    help="Also POST every alert notification as JSON to this URL.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("cityvitals-data"),
    show_default=True,
    help="Where the run's store (SQLite) is written; replaced on each demo run.",
)
@click.option("--quiet-day", is_flag=True, help="Normal city life only: no scripted incidents.")
@click.option(
    "--rules",
    "rules_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Early-warning rules from this TOML file instead of the built-in ones.",
)
@click.option(
    "--influx",
    "influx_url",
    metavar="URL",
    callback=_check_http_url,
    help="Also write readings and warnings to this InfluxDB 2 (org and bucket 'cityvitals'; "
    "token from $CITYVITALS_INFLUX_TOKEN or --influx-token-file).",
)
@click.option(
    "--influx-token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A file holding the InfluxDB token.",
)
@click.option(
    "-v", "--verbose", count=True, help="More log detail (-vv debug, -vvv libraries too)."
)
def demo(
    duration: float,
    nodes: int,
    districts: int,
    seed: int,
    interval: float,
    registry_path: Path | None,
    mqtt_url: str | None,
    webhook_url: str | None,
    data_dir: Path,
    quiet_day: bool,
    rules_path: Path | None,
    influx_url: str | None,
    influx_token_file: Path | None,
    verbose: int,
) -> None:
    """Run a simulated city's day through the whole pipeline, in one process.

    An embedded MQTT broker, a simulated city of sensor nodes publishing
    through the real edge code, the gateway, faust agents on in-memory
    channels, threshold rules with four warning levels, alerts on the console
    (and to --webhook), and an embedded store under --data-dir.

    A scripted day plays out: a lifted manhole cover at 09:40, a rainstorm at
    13:30, a crowd surge at 19:00 and a fire at 20:10. Ends after --duration
    seconds or Ctrl-C with a summary. Exit code 0 only if no reading was lost.
    """
    try:
        from rich.console import Console
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise click.ClickException(
            "the demo needs the server extras: pip install 'cityvitals[server]'"
        ) from exc

    from cityvitals.embedded.console import run_with_console
    from cityvitals.embedded.demo import DemoOptions

    if registry_path is None and nodes < 5 * districts:
        raise click.BadParameter(
            f"{districts} districts need at least {5 * districts} nodes (one of each kind each)",
            param_hint="--nodes",
        )

    # Off a terminal (CI, a log file) lines must not wrap at 80 columns.
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    _setup_logging(verbose, console)
    options = DemoOptions(
        data_dir=data_dir,
        duration_s=duration,
        nodes=nodes,
        districts=districts,
        seed=seed,
        interval_s=interval,
        mqtt_url=mqtt_url,
        webhook_url=webhook_url,
        registry_path=registry_path,
        quiet=quiet_day,
        rules_path=rules_path,
        influx_url=influx_url,
        influx_token=(
            influx_token_file.read_text(encoding="utf-8").strip()
            if influx_token_file is not None
            else os.environ.get("CITYVITALS_INFLUX_TOKEN")
        ),
    )
    try:
        result = asyncio.run(run_with_console(options, console))
    except CityvitalsError as exc:
        raise click.ClickException(str(exc)) from exc
    except asyncio.CancelledError:
        console.print("[red]aborted without draining: the summary would be incomplete[/]")
        sys.exit(130)
    sys.exit(0 if result.ok else 1)


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("/etc/cityvitals/edge.toml"),
    show_default=True,
    help="The agent's edge.toml (an annotated example is deploy/edge/edge.toml).",
)
@click.option("--check", is_flag=True, help="Only check the configuration and say what it runs.")
@click.option("-v", "--verbose", count=True, help="More detail in the log (-vv for debug).")
def edge(config_path: Path, check: bool, verbose: int) -> None:
    """Run the edge agent: serial and simulated sensor nodes, published over MQTT.

    Every reading goes to a durable queue on disk before it is published
    (QoS 1) and leaves it only when the broker acknowledges it, so readings
    survive network outages, broker restarts, kill -9 and power cuts. The
    queue's size bound and policy (drop oldest or refuse new) are in the
    config; every loss is reported as a `readings_dropped` event.

    SIGTERM or Ctrl-C stops cleanly: drivers stop, the queue gets a few
    seconds to drain, the rest waits on disk for the next start.
    """
    from edge.config import load_edge_config

    try:
        config = load_edge_config(config_path)
    except CityvitalsError as exc:
        raise click.ClickException(str(exc)) from exc
    if check:
        try:
            config.check_storage()
        except CityvitalsError as exc:
            raise click.ClickException(str(exc)) from exc
        serial = sum(1 for n in config.nodes if n.serial)
        ports = len(config.serial)
        click.echo(
            f"{config.path}: agent {config.agent_id}, {len(config.nodes)} nodes "
            f"({serial} serial on {ports} port{'' if ports == 1 else 's'}, "
            f"{len(config.nodes) - serial} simulated), "
            f"broker {config.broker.host}:{config.broker.port}"
            f"{' with TLS' if config.broker.tls else ''}, queue {config.queue_path} "
            f"(bound {config.queue.max_bytes / 2**20:.0f} MiB, {config.queue.when_full})"
        )
        return
    _setup_logging(verbose, plain=not sys.stderr.isatty())
    try:
        summary = asyncio.run(_run_edge(config))
    except CityvitalsError as exc:
        raise click.ClickException(str(exc)) from exc
    except asyncio.CancelledError:
        # A second signal during the drain: the queue file keeps what was not sent.
        logging.getLogger("cityvitals").warning("stopped by a second signal before the drain")
        sys.exit(130)
    click.echo(
        f"agent {config.agent_id} stopped: {summary.samples} samples, {summary.reported} "
        f"reported, {summary.alarms} alarms, {summary.left_in_queue} waiting in the queue"
    )


async def _run_edge(config: EdgeConfig) -> AgentSummary:
    from edge.agent import EdgeAgent

    return await EdgeAgent(config).run(_stop_on_signals())


_SERVICE_CONFIG = SERVICE_CONFIG
_CHECK = click.option(
    "--check", is_flag=True, help="Only check the configuration and say what it runs."
)
_VERBOSE = click.option(
    "-v", "--verbose", count=True, help="More detail in the log (-vv for debug)."
)


@main.command()
@_SERVICE_CONFIG
@click.option(
    "--role",
    "roles",
    type=click.Choice(["gateway", "stream", "alerts", "all"]),
    multiple=True,
    default=("all",),
    show_default=True,
    help="What this process runs; repeat for several. Run as many processes as the load needs.",
)
@_CHECK
@_VERBOSE
def run(config_path: Path, roles: tuple[str, ...], check: bool, verbose: int) -> None:
    """Run the distributed pipeline's services against Mosquitto and Kafka.

    \b
    gateway  MQTT shared subscription -> validate, dedup, enrich -> Kafka,
             acknowledging each MQTT message only once Kafka has it
    stream   faust worker: rules and presence, state in Kafka-backed tables
    alerts   warnings from Kafka -> alert lifecycle -> console and webhooks

    Gateways split the MQTT load, stream workers split the Kafka partitions.
    SIGTERM or Ctrl-C stops cleanly, each role flushing what it holds.
    """
    chosen = {"gateway", "stream", "alerts"} if "all" in roles else set(roles)
    _serve(config_path, chosen, check=check, verbose=verbose)


@main.command()
@_SERVICE_CONFIG
@_CHECK
@_VERBOSE
def gateway(config_path: Path, check: bool, verbose: int) -> None:
    """The MQTT gateway alone: `cityvitals run --role gateway`."""
    _serve(config_path, {"gateway"}, check=check, verbose=verbose)


@main.command()
@_SERVICE_CONFIG
@_CHECK
@_VERBOSE
def stream(config_path: Path, check: bool, verbose: int) -> None:
    """One stream worker alone: `cityvitals run --role stream`."""
    _serve(config_path, {"stream"}, check=check, verbose=verbose)


def _serve(config_path: Path, chosen: set[str], *, check: bool, verbose: int) -> None:
    from cityvitals.settings import load_settings

    try:
        settings = load_settings(config_path)
    except CityvitalsError as exc:
        raise click.ClickException(str(exc)) from exc
    if check:
        from cityvitals.registry import Registry

        try:
            registry = Registry.load(settings.registry_path)
        except CityvitalsError as exc:
            raise click.ClickException(str(exc)) from exc
        owners = ""
        if settings.gateway.owners is not None:
            from cityvitals.credentials import describe_owners

            owners = f"; agents file: {describe_owners(settings.gateway.owners, registry)}"
        rules = "built-in rules"
        if settings.stream.rules_path is not None:
            from stream.rules import load_rules

            try:
                count = len(load_rules(settings.stream.rules_path))
            except CityvitalsError as exc:
                raise click.ClickException(str(exc)) from exc
            rules = f"rules {settings.stream.rules_path} ({count})"
        k = settings.kafka
        click.echo(
            f"{settings.path}: roles {', '.join(sorted(chosen))}; {rules}; MQTT "
            f"{settings.broker.host}:{settings.broker.port}"
            f"{' with TLS' if settings.broker.tls else ''}; Kafka {k.bootstrap_servers} "
            f"({k.partitions} partitions, topics {k.readings_topic}, {k.presence_topic}, "
            f"{k.warnings_topic}, {k.dead_letter_topic}); registry {settings.registry_path} "
            f"({len(registry)} nodes){owners}"
        )
        return
    _setup_logging(verbose, plain=not sys.stderr.isatty())
    try:
        asyncio.run(_run_roles(settings, chosen))
    except CityvitalsError as exc:
        raise click.ClickException(str(exc)) from exc
    except asyncio.CancelledError:
        # A second signal during the drain: Kafka and the stores keep what was
        # not committed, and the next start goes on from there.
        logging.getLogger("cityvitals").warning("stopped by a second signal before the drain")
        sys.exit(130)


async def _run_roles(settings: Settings, roles: set[str]) -> None:
    from cityvitals.distributed.roles import prepare_kafka, running

    log = logging.getLogger("cityvitals")
    prepared = asyncio.Event()
    stop = _stop_on_signals(cancel_until=prepared)
    try:
        # Cancelled by a signal: it can wait 40 s on a Kafka that does not
        # answer, and nothing has started that would need a drain. (The roles'
        # own start-up is not: a signal then stops them once they are up.)
        await prepare_kafka(settings)
    except asyncio.CancelledError:
        if not stop.is_set():
            raise  # not by a signal
        log.info("stopped while setting up Kafka; nothing had started")
        return
    prepared.set()
    async with running(settings, roles, prepare=False):
        await stop.wait()
    log.info("stopped cleanly")


def _stop_on_signals(cancel_until: asyncio.Event | None = None) -> asyncio.Event:
    """An event set by SIGTERM or Ctrl-C; a second signal cancels the main task.

    Before `cancel_until` is set, a signal cancels the main task at once.
    """
    import signal

    from cityvitals.tasks import dump_tasks

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()

    def on_signal() -> None:
        early = cancel_until is not None and not cancel_until.is_set()
        if (stop.is_set() or early) and main_task is not None:
            main_task.cancel()  # stop waiting for Kafka's set-up, or for the drain
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    # `kill -USR1 <pid>`: where is every task waiting? (a stuck service, diagnosed live)
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks, logging.getLogger("cityvitals"))
    return stop


@main.group()
def city() -> None:
    """Device registries: generate a simulated city, check a registry file."""


@city.command("generate")
@click.option("--nodes", type=click.IntRange(min=5), default=240, show_default=True)
@click.option("--districts", type=click.IntRange(1, 6), default=4, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("registry.csv"),
    show_default=True,
)
def city_generate(nodes: int, districts: int, seed: int, out: Path) -> None:
    """Write a registry CSV for a believable simulated city."""
    from cityvitals.citygen import generate_city

    try:
        registry = generate_city(nodes=nodes, districts=districts, seed=seed)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    registry.dump(out)
    click.echo(f"wrote {len(registry)} nodes in {len(registry.districts())} districts to {out}")


@city.command("check")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def city_check(path: Path) -> None:
    """Validate a registry CSV; the error names the line and column."""
    from collections import Counter

    from cityvitals.registry import Registry

    try:
        registry = Registry.load(path)
    except CityvitalsError as exc:
        raise click.ClickException(str(exc)) from exc
    kinds = Counter(d.kind.value for d in registry)
    click.echo(
        f"{path}: {len(registry)} nodes, {len(registry.districts())} districts, "
        + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
    )


@city.command("credentials")
@click.argument(
    "registry_path", metavar="REGISTRY", type=click.Path(dir_okay=False, path_type=Path)
)
@click.option(
    "--out",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Where to write passwords/, mosquitto.passwd and mosquitto.acl "
    "(deploy/mosquitto/auth for the compose stack).",
)
@click.option(
    "--agents",
    "agents_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A CSV agent,node: which edge agent publishes for which node "
    "[default: every node is its own agent].",
)
@click.option(
    "--rotate",
    multiple=True,
    metavar="USER",
    help="Give this user a new password (again for more); the others keep theirs.",
)
def city_credentials(
    registry_path: Path, directory: Path, agents_path: Path | None, rotate: tuple[str, ...]
) -> None:
    """Issue broker credentials and the ACL from a registry: a password per edge agent,
    allowed to publish only its own nodes' topics, and the gateway's (reads city/#).

    Existing users keep their passwords unless --rotate names them; users no longer in
    the registry are revoked. Reload Mosquitto afterwards (SIGHUP; in the compose
    stack: docker compose kill -s HUP mosquitto). docs/operations.md has the steps.
    """
    from cityvitals.credentials import issue, load_assignment
    from cityvitals.registry import Registry

    try:
        registry = Registry.load(registry_path)
        assignment = None if agents_path is None else load_assignment(agents_path)
        issued = issue(
            registry,
            directory,
            assignment=assignment,
            rotate=rotate,
            source=str(agents_path or registry_path),
        )
    except CityvitalsError as exc:
        raise click.ClickException(str(exc)) from exc
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--rotate") from exc

    def said(what: str, users: tuple[str, ...]) -> str:
        shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
        return f"{len(users)} {what}" + (f" ({shown})" if users and what != "kept" else "")

    click.echo(
        f"{directory}: {len(issued.users)} users; "
        + "; ".join(
            said(what, users)
            for what, users in (
                ("new", issued.added),
                ("rotated", issued.rotated),
                ("revoked", issued.revoked),
                ("kept", issued.kept),
            )
        )
    )
    click.echo(f"passwords in {directory / 'passwords'} (0600): copy each to its device")


@main.group()
def grafana() -> None:
    """Grafana dashboards as code: write them for file provisioning, or push them."""


@grafana.command("build")
@click.option(
    "--out",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("deploy/grafana/dashboards"),
    show_default=True,
    help="Where Grafana's file provisioning reads dashboards.",
)
def grafana_build(directory: Path) -> None:
    """Write every dashboard as JSON (one file per board, by uid)."""
    from cityvitals.dashboards.files import write_dashboards

    written = write_dashboards(directory)
    click.echo(
        f"{directory}: {len(written)} dashboards (" + ", ".join(p.stem for p in written) + ")"
    )


@grafana.command("provision")
@click.option(
    "--url",
    required=True,
    callback=_check_http_url,
    help="Grafana, e.g. https://grafana.city.example",
)
@click.option(
    "--token",
    envvar="CITYVITALS_GRAFANA_TOKEN",
    help="A service account token [env CITYVITALS_GRAFANA_TOKEN].",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A file holding it instead.",
)
@click.option(
    "--influx-url", help="Also set up the InfluxDB data source: InfluxDB as Grafana reaches it."
)
@click.option("--influx-org", default="cityvitals", show_default=True)
@click.option("--influx-bucket", default="cityvitals", show_default=True)
@click.option(
    "--influx-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A read token for that InfluxDB.",
)
def grafana_provision(
    *,
    url: str,
    token: str | None,
    token_file: Path | None,
    influx_url: str | None,
    influx_org: str,
    influx_bucket: str,
    influx_token_file: Path | None,
) -> None:
    """Push the cityvitals folder, the InfluxDB data source (with --influx-url) and every
    dashboard to a running Grafana. Running it again changes nothing it did."""
    from grafana_client.api import GrafanaApi

    from cityvitals.dashboards.provision import InfluxSource, provision

    token = secret(
        token,
        token_file,
        "Grafana token",
        given_by="--token-file, --token or $CITYVITALS_GRAFANA_TOKEN",
    )
    api = GrafanaApi.from_url(url, credential=token)
    source = None
    if influx_url is not None:
        source = InfluxSource(
            influx_url,
            influx_org,
            influx_bucket,
            secret(None, influx_token_file, "InfluxDB token", given_by="--influx-token-file"),
        )
    try:
        done = provision(api, source=source)
    except CityvitalsError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        session: Any = api.client.s  # grafana-client opens it; nobody else closes it
        session.close()
    click.echo(
        f"{url}: folder cityvitals {done.folder}"
        + (f", data source {done.datasource}" if done.datasource else "")
        + f", {len(done.dashboards)} dashboards written"
    )


@main.group()
def rules() -> None:
    """Early-warning rule files: check one and list what it would run."""


@rules.command("check")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path), required=False)
def rules_check(path: Path | None) -> None:
    """Validate a rule file (default: the built-in rules); the error names the rule and
    the field. Lists each rule: name, type, kind, metric and where it applies."""
    from stream.rules import AreaRule, default_rules, load_rules

    try:
        loaded = default_rules() if path is None else load_rules(path)
    except CityvitalsError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{path or 'built-in rules'}: {len(loaded)} rules")
    for rule in loaded:
        kind = type(rule).__name__.removesuffix("Rule").lower()
        where = "" if rule.selector.everything else f" where {_describe(rule.selector)}"
        if isinstance(rule, AreaRule):
            share = f" (and {rule.fraction:.0%})" if rule.fraction else ""
            click.echo(
                f"  {rule.name}: area, at least {rule.nodes}{share} of a {rule.by}'s "
                f"{rule.kind.value} nodes at {rule.at_least.label} or above by "
                f"{', '.join(rule.members)}{where}"
            )
            continue
        click.echo(f"  {rule.name}: {kind} on {rule.kind.value}.{rule.metric}{where}")


def _describe(selector: object) -> str:
    fields = ("district", "street", "grid", "unit", "node")
    parts = [
        f"{name} in {sorted(values)}" for name in fields if (values := getattr(selector, name))
    ]
    return ", ".join(parts)


_REPLAY_KINDS = ("generic", "water_level", "crowd", "smoke", "manhole")


@main.command("replay")
@click.argument(
    "input_path", metavar="INPUT.csv", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Where to write the scored CSV (written whole or not at all).",
)
@click.option(
    "--kind",
    type=click.Choice(_REPLAY_KINDS),
    default="generic",
    show_default=True,
    help="Sensor kind: its detectors and its rules. generic: detectors only, no rules.",
)
@click.option(
    "--rules",
    "rules_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Apply this rule file's rules of --kind instead of the built-in ones.",
)
@click.option("--timestamp-column", default="timestamp", show_default=True)
@click.option(
    "--value-column",
    "value_columns",
    multiple=True,
    default=("value",),
    show_default=True,
    help="A column to score; repeat for several (each scored on its own).",
)
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    help="The metric of each --value-column, in order (default: the column's name if it "
    "is a metric of --kind, else the kind's main metric).",
)
@click.option(
    "--utc-offset-minutes",
    type=click.IntRange(-24 * 60, 24 * 60),
    default=0,
    show_default=True,
    help="The city's clock, for the crowd kind's time-of-week detector.",
)
@click.option(
    "--skip-bad",
    is_flag=True,
    help="Write unparsable rows with an empty score and bad=1, and go on.",
)
def replay_command(
    input_path: Path,
    out_path: Path,
    kind: str,
    rules_path: Path | None,
    timestamp_column: str,
    value_columns: tuple[str, ...],
    metrics: tuple[str, ...],
    utc_offset_minutes: int,
    skip_bad: bool,
) -> None:
    """Run the detectors and rules offline over a CSV of one series, to backtest rules
    and tune detectors on history.

    \b
    INPUT.csv: a header, a timestamp column (ISO 8601, naive = UTC, or epoch
    seconds or milliseconds) and one or more value columns. The output is the
    input, row for row, with anomaly_score (0..1) and detector (the one that
    found the reading oddest) per value column, then level (the highest
    warning level of any rule at that row: none/blue/yellow/orange/red) and
    rules (the rules at that level).

    With a sensor --kind the kind's built-in rules apply (or those of --rules).
    Every rule runs on whole arrays (several 100 000 rows/s; the trend rules fit
    their Theil-Sen windows a block at a time), giving the levels the live
    engine gives; only a composite rule with two rising conditions on one
    metric runs a reading at a time (slower). Rules with a `where` selector do
    not apply (a CSV has no registry placement), nor do area rules. With
    --kind generic no rules apply:
    level is each score against blue 0.999, yellow 0.9999, orange 0.99999,
    red 0.999999, raised after 3 readings in a row and cleared after 3.
    See docs/replay.md.
    """
    from stream.replay import BadRowError, ReplayOptions, replay
    from stream.rules import load_rules

    try:
        loaded = None if rules_path is None else load_rules(rules_path)
        options = ReplayOptions(
            kind=kind,
            rules=loaded,
            timestamp_column=timestamp_column,
            value_columns=value_columns,
            metrics=metrics,
            utc_offset_minutes=utc_offset_minutes,
            skip_bad=skip_bad,
        )
    except CityvitalsError as exc:
        raise click.ClickException(str(exc)) from exc
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    with _replay_progress(input_path) as progress:
        try:
            summary = replay(input_path, out_path, options, progress=progress)
        except BadRowError as exc:
            raise click.ClickException(
                f"{exc} (--skip-bad writes such rows with bad=1 and goes on)"
            ) from exc
        except CityvitalsError as exc:
            raise click.ClickException(str(exc)) from exc
    for name, why in summary.skipped:
        click.echo(f"rule {name} not applied: {why}", err=True)
    if summary.slow_rules:
        click.echo(
            f"evaluated a reading at a time (slower): {', '.join(summary.slow_rules)}", err=True
        )
    click.echo(f"{out_path}: {summary.line()}")


@contextmanager
def _replay_progress(path: Path) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr for files worth waiting for, when stderr is a terminal
    (never into the output, and no bar noise in a CI log)."""
    try:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
    except ImportError:  # pragma: no cover - depends on the install
        yield None
        return
    console = Console(stderr=True)
    if not console.is_terminal or path.stat().st_size < 8 * 2**20:
        yield None
        return
    with Progress(
        "replay",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("replay", total=path.stat().st_size)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield advance


if __name__ == "__main__":  # pragma: no cover
    main()
