"""`cityvitals.toml`: the one config file of every server role, read once and checked whole.

`cityvitals run --role gateway|stream|alerts|all` reads it: where the device
registry is, how to reach Mosquitto and Kafka, and the settings of the MQTT
gateway, the stream workers, presence (silent nodes), alert delivery and,
optionally, InfluxDB (the production sink, next to the embedded store).
Every mistake is one `ConfigError` naming the file, the key (as a path such as
`alerts.webhook[1].url`) and what was expected. Relative paths are relative to
the file's directory. The annotated example is `deploy/cityvitals.toml`.

>>> import tempfile, pathlib
>>> text = '''
... registry = "city.csv"
... [kafka]
... bootstrap = ["kafka-1:9092", "kafka-2"]
... '''
>>> with tempfile.TemporaryDirectory() as d:
...     path = pathlib.Path(d) / "cityvitals.toml"
...     _ = path.write_text(text)
...     _ = (pathlib.Path(d) / "city.csv").write_text("")
...     try:
...         load_settings(path)
...     except ConfigError as exc:
...         print(str(exc).replace(d, "DIR"))
DIR/cityvitals.toml: kafka.bootstrap[1]: expected host:port with a port 1..65535, found 'kafka-2'
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec

from cityvitals.config import BrokerSettings
from cityvitals.credentials import load_assignment
from cityvitals.errors import ConfigError
from cityvitals.kinds import Kind
from cityvitals.levels import Level
from cityvitals.tomlconfig import BrokerSection, Schema, broker_settings, read_file, resolve_path

__all__ = [
    "AlertSettings",
    "AlertsSection",
    "GatewaySection",
    "GatewaySettings",
    "InfluxSection",
    "InfluxSettings",
    "KafkaSection",
    "KafkaSettings",
    "MqttSection",
    "PresenceSection",
    "PresenceSettings",
    "Settings",
    "SettingsFile",
    "StreamSection",
    "StreamSettings",
    "WebhookSection",
    "WebhookSettings",
    "default_client_id",
    "load_settings",
]

#: Kafka topic and consumer group names: Kafka's legal characters, with room
#: for the suffixes cityvitals and faust append.
KAFKA_NAME = r"^[A-Za-z0-9._-]{1,100}\Z"
_KAFKA_NAME_TEXT = "1 to 100 letters, digits, '.', '_' and '-'"
#: An MQTT shared-subscription group: `$share/<group>/<filter>`.
SHARE_GROUP = r"^[^/+#\s]{1,100}\Z"
#: Empty: "cv-gateway-<hostname>".
CLIENT_ID = r"^[A-Za-z0-9._:-]{0,128}\Z"
WEBHOOK_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z"
#: InfluxDB org and bucket names: no quotes or backslashes (they end up in
#: Flux strings), no control characters; a bucket may not start with '_'
#: (InfluxDB's own buckets do).
INFLUX_ORG = r'^[^"\\\x00-\x1f]{1,255}\Z'
INFLUX_BUCKET = r'^(?!_)[^"\\\x00-\x1f]{1,255}\Z'

_DAY = 86_400.0


class _Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class MqttSection(BrokerSection, frozen=True):
    """Exactly edge.toml's broker keys; here the url has a default."""

    url: str = "mqtt://127.0.0.1:1883"


class KafkaSection(_Section, frozen=True):
    bootstrap: Annotated[tuple[str, ...], msgspec.Meta(min_length=1)] = ("127.0.0.1:9092",)
    topic_prefix: Annotated[str, msgspec.Meta(pattern=KAFKA_NAME)] = "cityvitals"
    partitions: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 8
    replication: Annotated[int, msgspec.Meta(ge=1, le=10)] = 1


class GatewaySection(_Section, frozen=True):
    client_id: Annotated[str, msgspec.Meta(pattern=CLIENT_ID)] = ""
    share_group: Annotated[str, msgspec.Meta(pattern=SHARE_GROUP)] = "cityvitals-gateway"
    max_unacked: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 1000
    dedup_window: Annotated[int, msgspec.Meta(ge=1, le=65536)] = 4096
    #: The agents CSV (agent,node) the broker credentials were issued from
    #: (`cityvitals city credentials` writes one beside them); set, an agent's
    #: status speaks only for its own nodes. Empty: for any node it lists.
    agents_file: str = ""


class StreamSection(_Section, frozen=True):
    app_id: Annotated[str, msgspec.Meta(pattern=KAFKA_NAME)] = "cityvitals-stream"
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 500
    batch_within_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 0.2
    store: str = "cityvitals.sqlite3"
    #: Kafka consumer-group session timeout: a dead worker's partitions move
    #: after this long. Kafka brokers refuse less than 6 s by default.
    session_timeout_s: Annotated[float, msgspec.Meta(ge=6, le=1800)] = 10.0
    #: The early-warning rule file (relative to this file); none: the built-in rules.
    rules: str | None = None


class PresenceSection(_Section, frozen=True):
    silent_after_s: Annotated[float, msgspec.Meta(gt=0, le=7 * _DAY)] = 900.0
    silent_after_by_kind: dict[Kind, Annotated[float, msgspec.Meta(gt=0, le=7 * _DAY)]] = {}
    level: str = "yellow"
    sweep_every_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0


class WebhookSection(_Section, frozen=True):
    name: Annotated[str, msgspec.Meta(pattern=WEBHOOK_NAME)]
    url: str
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0
    #: Files holding signing secrets (relative to this file), one per line of
    #: rotation: every request is signed with each (alerts.signing). For a
    #: DingTalk or Feishu bot: the bot's own signing secret.
    secret_file: str | None = None
    #: `json`: the notification itself (schema v1); or a chat bot's message.
    format: Literal["json", "slack", "dingtalk", "wecom", "feishu"] = "json"
    #: How many messages a minute the receiver takes (chat bots: 20).
    rate_per_minute: Annotated[float, msgspec.Meta(gt=0, le=100_000)] | None = None
    #: Requests in flight at once (different alerts; one alert's stay in order).
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    #: How long one notification is retried while the receiver fails (then: a dead
    #: letter, and the fallback); a receiver down for an hour still gets it.
    retry_for_s: Annotated[float, msgspec.Meta(gt=0, le=7 * 86_400)] = 3600.0


class AlertsApiSection(_Section, frozen=True):
    """The optional `[alerts.api]` table: the HTTP API of the alerts role."""

    tokens_file: str
    listen: str = "127.0.0.1:9094"
    #: Where operators reach the API; with `link_secret_file`, notifications carry
    #: signed acknowledge links under it.
    public_url: str | None = None
    link_secret_file: str | None = None
    link_ttl_s: Annotated[float, msgspec.Meta(ge=60, le=30 * _DAY)] = _DAY


class MatchSection(_Section, frozen=True):
    name: Literal[
        "rule", "kind", "metric", "node", "area", "district", "street", "grid", "unit", "level"
    ]
    value: str
    op: Literal["=", "!=", "=~", "!~"] = "="


class RouteSection(_Section, frozen=True):
    """One `[[alerts.route]]`: alerts whose labels all match go to `receivers`."""

    match: tuple[MatchSection, ...]
    receivers: tuple[str, ...]
    continue_: bool = msgspec.field(default=False, name="continue")


class StepSection(_Section, frozen=True):
    """One step of `[alerts.escalation] steps`: who is called in, how long after."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    receivers: tuple[str, ...]
    after_s: Annotated[float, msgspec.Meta(ge=0, le=7 * _DAY)]
    match: tuple[MatchSection, ...] = ()


class EscalationSection(_Section, frozen=True):
    steps: tuple[StepSection, ...]


class GrafanaSection(_Section, frozen=True):
    """The optional `[alerts.grafana]` table: every alert as a Grafana annotation."""

    url: str
    token_file: str
    dashboard_uid: str | None = None


class AlertsSection(_Section, frozen=True):
    console: bool = True
    webhook: tuple[WebhookSection, ...] = ()
    #: The alert book and notification outbox, relative to data_dir.
    store: str = "alerts.sqlite3"
    #: A webhook's name: it gets only what another receiver gave up on.
    fallback: str | None = None
    #: Announce a firing alert again when nobody has acknowledged it for this long.
    repeat_every_s: Annotated[float, msgspec.Meta(ge=60, le=7 * _DAY)] | None = 3600.0
    #: Incidents group the alerts of one kind in one district, street or grid...
    group_by: Literal["district", "street", "grid"] = "district"
    #: ...while the incident has changed within this long.
    group_window_s: Annotated[float, msgspec.Meta(ge=60, le=7 * _DAY)] = 3600.0
    #: Where alerts go, tried in order; an alert no route takes goes to every receiver.
    route: tuple[RouteSection, ...] = ()
    escalation: EscalationSection | None = None
    grafana: GrafanaSection | None = None
    api: AlertsApiSection | None = None


class InfluxSection(_Section, frozen=True):
    """The optional `[influxdb]` table: the production sink (see docs/influxdb.md)."""

    url: str
    org: Annotated[str, msgspec.Meta(pattern=INFLUX_ORG)] = "cityvitals"
    bucket: Annotated[str, msgspec.Meta(pattern=INFLUX_BUCKET)] = "cityvitals"
    #: A file holding the token (relative to this file); or `token`, not both.
    token_file: str | None = None
    token: str | None = None
    #: The local spool of points waiting for InfluxDB, relative to data_dir.
    spool: str = "influx-spool.sqlite3"
    spool_max_mb: Annotated[float, msgspec.Meta(gt=0, le=1_000_000)] = 1024.0
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 5000
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0


class SettingsFile(_Section, frozen=True):
    """The file as written: every table, checked for keys, types and ranges."""

    registry: str
    data_dir: str = "/var/lib/cityvitals"
    mqtt: MqttSection = MqttSection()
    kafka: KafkaSection = KafkaSection()
    gateway: GatewaySection = GatewaySection()
    stream: StreamSection = StreamSection()
    presence: PresenceSection = PresenceSection()
    alerts: AlertsSection = AlertsSection()
    influxdb: InfluxSection | None = None


_SCHEMA = Schema(
    SettingsFile,
    describe="a cityvitals.toml file",
    hints={
        "kafka.topic_prefix": _KAFKA_NAME_TEXT,
        "stream.app_id": _KAFKA_NAME_TEXT,
        "gateway.share_group": "1 to 100 characters other than '/', '+', '#' and spaces",
        "gateway.client_id": (
            "up to 128 letters, digits, '.', '_', ':' and '-' (empty: cv-gateway-<hostname>)"
        ),
        "alerts.webhook[].name": (
            "1 to 64 letters, digits, '.', '_' and '-', starting with a letter or digit"
        ),
        "influxdb.org": "1 to 255 characters other than '\"', '\\' and control characters",
        "influxdb.bucket": (
            "1 to 255 characters other than '\"', '\\' and control characters,"
            " not starting with '_'"
        ),
    },
)


# -- what the services take -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    bootstrap: tuple[str, ...] = ("127.0.0.1:9092",)
    topic_prefix: str = "cityvitals"
    partitions: int = 8
    replication: int = 1

    @property
    def bootstrap_servers(self) -> str:
        """`host:port,host:port`, as Kafka clients take it."""
        return ",".join(self.bootstrap)

    @property
    def readings_topic(self) -> str:
        return f"{self.topic_prefix}.readings"

    @property
    def presence_topic(self) -> str:
        return f"{self.topic_prefix}.presence"

    @property
    def warnings_topic(self) -> str:
        return f"{self.topic_prefix}.warnings"

    @property
    def area_topic(self) -> str:
        """Node warnings on their way to the spatial rules, keyed by (rule, area)."""
        return f"{self.topic_prefix}.area-updates"

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.topic_prefix}.dead-letters"


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    client_id: str
    share_group: str = "cityvitals-gateway"
    max_unacked: int = 1000
    dedup_window: int = 4096
    #: node -> the edge agent that speaks for it (`[gateway] agents_file`); None: any.
    owners: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class StreamSettings:
    store_path: Path
    app_id: str = "cityvitals-stream"
    batch_size: int = 500
    batch_within_s: float = 0.2
    session_timeout_s: float = 10.0
    #: The early-warning rule file; None for the built-in rules.
    rules_path: Path | None = None


@dataclass(frozen=True, slots=True)
class PresenceSettings:
    silent_after_s: float = 900.0
    silent_after_by_kind: dict[Kind, float] = field(default_factory=dict)
    level: Level = Level.YELLOW
    sweep_every_s: float = 10.0

    def silent_after(self, kind: Kind) -> float:
        """Seconds without a message after which a node of `kind` counts as silent."""
        return self.silent_after_by_kind.get(kind, self.silent_after_s)


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    name: str
    url: str
    timeout_s: float = 10.0
    secrets: tuple[bytes, ...] = field(default=(), repr=False)
    format: str = "json"
    rate_per_minute: float | None = None
    concurrency: int = 1
    retry_for_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class AlertsApiSettings:
    host: str
    port: int
    tokens_path: Path
    public_url: str | None = None
    link_secret: bytes | None = field(default=None, repr=False)
    link_ttl_s: float = 86_400.0


@dataclass(frozen=True, slots=True)
class AlertSettings:
    console: bool = True
    webhooks: tuple[WebhookSettings, ...] = ()
    #: None: in memory (the book and outbox do not survive a restart).
    store_path: Path | None = None
    fallback: str | None = None
    repeat_every_s: float | None = 3600.0
    group_by: str = "district"
    group_window_s: float = 3600.0
    #: (matchers as (name, value, op), receivers, continue) per route, in order.
    routes: tuple[tuple[tuple[tuple[str, str, str], ...], tuple[str, ...], bool], ...] = ()
    #: (name, receivers, after_s, matchers) per escalation step, in order.
    escalation: tuple[
        tuple[str, tuple[str, ...], float, tuple[tuple[str, str, str], ...]], ...
    ] = ()
    api: AlertsApiSettings | None = None
    #: (url, token, dashboard uid) of the Grafana that gets every alert as an annotation.
    grafana: tuple[str, str, str | None] | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class InfluxSettings:
    url: str
    org: str
    bucket: str
    token: str = field(repr=False)
    spool_path: Path
    spool_max_bytes: int = 1024 * 1024 * 1024
    batch_size: int = 5000
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Settings:
    path: Path
    registry_path: Path
    data_dir: Path
    broker: BrokerSettings
    kafka: KafkaSettings
    gateway: GatewaySettings
    stream: StreamSettings
    presence: PresenceSettings
    alerts: AlertSettings
    #: None: no InfluxDB; the embedded store is the only sink.
    influxdb: InfluxSettings | None = None


def load_settings(path: Path | str) -> Settings:
    """Read and check a cityvitals.toml; any mistake is one `ConfigError`."""
    path = Path(path)
    return _build(path, _SCHEMA.load(path))


def _build(path: Path, raw: SettingsFile) -> Settings:
    registry_path = resolve_path(path, "registry", raw.registry)
    try:
        exists = registry_path.is_file()
    except OSError:
        exists = False
    if not exists:
        raise ConfigError(
            path,
            "registry",
            "an existing device registry CSV (`cityvitals city generate` writes one)",
            found=str(registry_path),
        )
    data_dir = resolve_path(path, "data_dir", raw.data_dir)
    return Settings(
        path=path,
        registry_path=registry_path,
        data_dir=data_dir,
        broker=broker_settings(path, raw.mqtt),
        kafka=_kafka(path, raw.kafka),
        gateway=GatewaySettings(
            client_id=raw.gateway.client_id or default_client_id(),
            share_group=raw.gateway.share_group,
            max_unacked=raw.gateway.max_unacked,
            dedup_window=raw.gateway.dedup_window,
            owners=_owners(path, raw.gateway.agents_file),
        ),
        stream=StreamSettings(
            store_path=resolve_path(path, "stream.store", raw.stream.store, base=data_dir),
            app_id=raw.stream.app_id,
            batch_size=raw.stream.batch_size,
            batch_within_s=raw.stream.batch_within_s,
            session_timeout_s=raw.stream.session_timeout_s,
            rules_path=(
                None
                if raw.stream.rules is None
                else resolve_path(path, "stream.rules", raw.stream.rules)
            ),
        ),
        presence=PresenceSettings(
            silent_after_s=raw.presence.silent_after_s,
            silent_after_by_kind=dict(raw.presence.silent_after_by_kind),
            level=_level(path, raw.presence.level),
            sweep_every_s=raw.presence.sweep_every_s,
        ),
        alerts=_alerts(path, raw.alerts, data_dir),
        influxdb=None if raw.influxdb is None else _influx(path, raw.influxdb, data_dir),
    )


def _influx(path: Path, section: InfluxSection, data_dir: Path) -> InfluxSettings:
    if not _is_http_url(section.url):
        raise ConfigError(
            path, "influxdb.url", "an http:// or https:// url with a host", found=section.url
        )
    if section.token is not None and section.token_file is not None:
        raise ConfigError(path, "influxdb.token_file", "token or token_file, not both")
    if section.token_file is not None:
        token = read_file(path, "influxdb.token_file", section.token_file).strip()
        if not token:
            raise ConfigError(path, "influxdb.token_file", "a file holding the token; it is empty")
    elif section.token is not None:
        token = section.token.strip()
        if not token:
            raise ConfigError(path, "influxdb.token", "a token, not an empty string")
    else:
        raise ConfigError(
            path,
            "influxdb.token_file",
            'a file holding a token with write access to the bucket (or token = "...")',
        )
    return InfluxSettings(
        url=section.url.rstrip("/"),
        org=section.org,
        bucket=section.bucket,
        token=token,
        spool_path=resolve_path(path, "influxdb.spool", section.spool, base=data_dir),
        spool_max_bytes=round(section.spool_max_mb * 1024 * 1024),
        batch_size=section.batch_size,
        timeout_s=section.timeout_s,
    )


_HOST_PORT = re.compile(
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252}))"
    r":(?P<port>[0-9]{1,5})"
)


def _kafka(path: Path, section: KafkaSection) -> KafkaSettings:
    for i, entry in enumerate(section.bootstrap):
        match = _HOST_PORT.fullmatch(entry)
        if match is None or not 1 <= int(match["port"]) <= 65535:
            raise ConfigError(
                path, f"kafka.bootstrap[{i}]", "host:port with a port 1..65535", found=entry
            )
    return KafkaSettings(
        bootstrap=section.bootstrap,
        topic_prefix=section.topic_prefix,
        partitions=section.partitions,
        replication=section.replication,
    )


def _owners(path: Path, agents_file: str) -> dict[str, str] | None:
    if not agents_file:
        return None
    agents = resolve_path(path, "gateway.agents_file", agents_file)
    if not agents.is_file():
        raise ConfigError(
            path,
            "gateway.agents_file",
            "an existing agents CSV (`cityvitals city credentials --out DIR` writes one there)",
            found=str(agents),
        )
    return load_assignment(agents)


def default_client_id() -> str:
    """`cv-gateway-<hostname>`: unique per host and the same across restarts."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()) or "localhost"
    return f"cv-gateway-{host}"[:128]


def _level(path: Path, text: str) -> Level:
    expected = "a warning level: blue, yellow, orange or red (or IV, III, II, I)"
    try:
        level = Level.parse(text)
    except ValueError:
        raise ConfigError(path, "presence.level", expected, found=text) from None
    if level is Level.NONE:
        raise ConfigError(path, "presence.level", expected, found=text)
    return level


def _alerts(path: Path, section: AlertsSection, data_dir: Path) -> AlertSettings:
    hooks = _webhooks(path, section.webhook)
    names: list[str] = [hook.name for hook in hooks]
    if section.fallback is not None and section.fallback not in names:
        raise ConfigError(
            path,
            "alerts.fallback",
            f"the name of one of the [[alerts.webhook]] tables ({', '.join(names) or 'none'})",
            found=section.fallback,
        )
    return AlertSettings(
        console=section.console,
        webhooks=hooks,
        store_path=resolve_path(path, "alerts.store", section.store, base=data_dir),
        fallback=section.fallback,
        repeat_every_s=section.repeat_every_s,
        group_by=section.group_by,
        group_window_s=section.group_window_s,
        routes=_routes(path, section, [*names, "console"] if section.console else names),
        escalation=_escalation(path, section, [*names, "console"] if section.console else names),
        api=None if section.api is None else _alerts_api(path, section.api),
        grafana=None if section.grafana is None else _grafana(path, section.grafana),
    )


def _grafana(path: Path, section: GrafanaSection) -> tuple[str, str, str | None]:
    if not _is_http_url(section.url):
        raise ConfigError(
            path, "alerts.grafana.url", "an http(s) URL with a host", found=section.url
        )
    token = read_file(path, "alerts.grafana.token_file", section.token_file).strip()
    if not token:
        raise ConfigError(
            path, "alerts.grafana.token_file", "a file holding a Grafana service account token"
        )
    return section.url, token, section.dashboard_uid


def _routes(
    path: Path, section: AlertsSection, receivers: list[str]
) -> tuple[tuple[tuple[tuple[str, str, str], ...], tuple[str, ...], bool], ...]:
    out = []
    for i, route in enumerate(section.route):
        key = f"alerts.route[{i}]"
        if not route.match:
            raise ConfigError(path, f"{key}.match", "at least one matcher")
        names = _receivers_of(path, key, route.receivers, receivers, section.fallback)
        out.append((_matchers_of(path, key, route.match), names, route.continue_))
    return tuple(out)


def _escalation(
    path: Path, section: AlertsSection, receivers: list[str]
) -> tuple[tuple[str, tuple[str, ...], float, tuple[tuple[str, str, str], ...]], ...]:
    if section.escalation is None:
        return ()
    out = []
    last = 0.0
    for i, step in enumerate(section.escalation.steps):
        key = f"alerts.escalation.steps[{i}]"
        if step.after_s < last:
            raise ConfigError(
                path,
                f"{key}.after_s",
                f"steps in order: at least {last:g}",
                found=str(step.after_s),
            )
        last = step.after_s
        names = _receivers_of(path, key, step.receivers, receivers, section.fallback)
        out.append((step.name, names, step.after_s, _matchers_of(path, key, step.match)))
    return tuple(out)


def _receivers_of(
    path: Path, key: str, named: tuple[str, ...], receivers: list[str], fallback: str | None
) -> tuple[str, ...]:
    """`named` (a route's or a step's receivers), each a configured one but the fallback
    (it gets only what another gave up on)."""
    if not named:
        raise ConfigError(path, f"{key}.receivers", "at least one receiver")
    choices = [r for r in receivers if r != fallback]
    for j, name in enumerate(named):
        if name not in choices:
            raise ConfigError(
                path, f"{key}.receivers[{j}]", f"a receiver: {', '.join(choices)}", found=name
            )
    return named


def _matchers_of(
    path: Path, key: str, match: tuple[MatchSection, ...]
) -> tuple[tuple[str, str, str], ...]:
    """A route's or a step's matchers as (name, value, op); a regular expression that does
    not compile is an error here, not when the alerts role starts."""
    for j, m in enumerate(match):
        if m.op in ("=~", "!~"):
            try:
                re.compile(m.value)
            except re.error as exc:
                raise ConfigError(
                    path, f"{key}.match[{j}].value", f"a regular expression ({exc})", found=m.value
                ) from None
    return tuple((m.name, m.value, m.op) for m in match)


def _alerts_api(path: Path, section: AlertsApiSection) -> AlertsApiSettings:
    host, _, port = section.listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            path, "alerts.api.listen", "host:port, such as 127.0.0.1:9094", found=section.listen
        )
    if (section.public_url is None) != (section.link_secret_file is None):
        raise ConfigError(
            path,
            "alerts.api.public_url"
            if section.public_url is None
            else "alerts.api.link_secret_file",
            "public_url and link_secret_file together (acknowledge links need both), or neither",
        )
    if section.public_url is not None and not _is_http_url(section.public_url):
        raise ConfigError(
            path, "alerts.api.public_url", "an http(s) URL with a host", found=section.public_url
        )
    secret = None
    if section.link_secret_file is not None:
        text = read_file(path, "alerts.api.link_secret_file", section.link_secret_file).strip()
        if len(text) < 16:
            raise ConfigError(
                path, "alerts.api.link_secret_file", "a secret of at least 16 characters"
            )
        secret = text.encode()
    tokens = resolve_path(path, "alerts.api.tokens_file", section.tokens_file)
    if not tokens.is_file():
        raise ConfigError(
            path, "alerts.api.tokens_file", "a readable tokens file", found=str(tokens)
        )
    return AlertsApiSettings(
        host=host.strip("[]"),
        port=int(port),
        tokens_path=tokens,
        public_url=section.public_url,
        link_secret=secret,
        link_ttl_s=section.link_ttl_s,
    )


def _webhooks(path: Path, sections: tuple[WebhookSection, ...]) -> tuple[WebhookSettings, ...]:
    seen: set[str] = set()
    hooks = []
    for i, hook in enumerate(sections):
        key = f"alerts.webhook[{i}]"
        if hook.name in seen:
            raise ConfigError(path, f"{key}.name", "a webhook name used once", found=hook.name)
        seen.add(hook.name)
        if not _is_http_url(hook.url):
            raise ConfigError(
                path, f"{key}.url", "an http:// or https:// url with a host", found=hook.url
            )
        secrets: tuple[bytes, ...] = ()
        if hook.secret_file is not None:
            text = read_file(path, f"{key}.secret_file", hook.secret_file)
            secrets = tuple(line.strip().encode() for line in text.splitlines() if line.strip())
            if not secrets:
                raise ConfigError(
                    path, f"{key}.secret_file", "a file holding the signing secret; it is empty"
                )
            if hook.format in ("slack", "wecom"):
                raise ConfigError(
                    path,
                    f"{key}.secret_file",
                    f"no secret_file: {hook.format} bots are not signed (the URL is the secret)",
                )
            if hook.format in ("dingtalk", "feishu") and len(secrets) > 1:
                raise ConfigError(
                    path, f"{key}.secret_file", f"one line: a {hook.format} bot has one secret"
                )
        hooks.append(
            WebhookSettings(
                hook.name,
                hook.url,
                hook.timeout_s,
                secrets,
                hook.format,
                hook.rate_per_minute,
                hook.concurrency,
                hook.retry_for_s,
            )
        )
    return tuple(hooks)


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        _ = parts.port  # ValueError: not a number or out of range
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and parts.port != 0
        and not any(c.isspace() or not c.isprintable() for c in url)
    )
