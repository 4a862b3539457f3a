"""cityvitals.toml: a good file gives ready settings; a bad one, one message naming file, key
and expectation."""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from cityvitals.citygen import generate_city
from cityvitals.cli import main
from cityvitals.errors import ConfigError
from cityvitals.kinds import Kind
from cityvitals.levels import Level
from cityvitals.settings import (
    AlertsApiSection,
    AlertsSection,
    EscalationSection,
    GatewaySection,
    GrafanaSection,
    InfluxSection,
    KafkaSection,
    MatchSection,
    MqttSection,
    PresenceSection,
    RouteSection,
    Settings,
    SettingsFile,
    StepSection,
    StreamSection,
    WebhookSection,
    WebhookSettings,
    load_settings,
)
from cityvitals.tomlconfig import bad_entry, join_key, lookup

REPO = Path(__file__).parents[3]

GOOD = """
registry = "city.csv"
data_dir = "state"

[mqtt]
url = "mqtt://ops:secret@10.0.0.5:1884"
keepalive = 20

[kafka]
bootstrap = ["kafka-1:9092", "10.0.0.7:9093"]
topic_prefix = "harbour"
partitions = 12
replication = 2

[gateway]
client_id = "gw-1"
share_group = "harbour-gw"
max_unacked = 200
dedup_window = 1024

[stream]
app_id = "harbour-stream"
batch_size = 100
batch_within_s = 0.5
store = "readings.sqlite3"
session_timeout_s = 30

[presence]
silent_after_s = 600
silent_after_by_kind = { manhole = 1800 }
level = "orange"
sweep_every_s = 5

[alerts]
console = false

[[alerts.webhook]]
name = "ops"
url = "https://ops.example/hook"

[[alerts.webhook]]
name = "fire"
url = "http://fire.example:8080/in"
timeout_s = 3
"""


def city(directory: Path, name: str = "city.csv") -> Path:
    """A small valid registry file."""
    path = directory / name
    generate_city(nodes=5, districts=1, seed=1).dump(path)
    return path


def write(directory: Path, text: str, name: str = "cityvitals.toml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def test_defaults_need_only_a_registry(tmp_path: Path):
    city(tmp_path)
    s = load_settings(write(tmp_path, 'registry = "city.csv"\n'))
    assert s.registry_path == (tmp_path / "city.csv").resolve()
    assert s.data_dir == Path("/var/lib/cityvitals")
    assert (s.broker.host, s.broker.port, s.broker.tls, s.broker.keepalive) == (
        "127.0.0.1",
        1883,
        None,
        30,
    )
    assert s.kafka.bootstrap == ("127.0.0.1:9092",)
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert (s.kafka.partitions, s.kafka.replication) == (8, 1)
    assert (
        s.kafka.readings_topic,
        s.kafka.presence_topic,
        s.kafka.warnings_topic,
        s.kafka.dead_letter_topic,
    ) == (
        "cityvitals.readings",
        "cityvitals.presence",
        "cityvitals.warnings",
        "cityvitals.dead-letters",
    )
    assert s.gateway.client_id.startswith("cv-gateway-")
    assert len(s.gateway.client_id) > len("cv-gateway-")
    assert (s.gateway.share_group, s.gateway.max_unacked, s.gateway.dedup_window) == (
        "cityvitals-gateway",
        1000,
        4096,
    )
    assert (s.stream.app_id, s.stream.batch_size, s.stream.batch_within_s) == (
        "cityvitals-stream",
        500,
        0.2,
    )
    assert s.stream.store_path == Path("/var/lib/cityvitals/cityvitals.sqlite3")
    assert s.stream.session_timeout_s == 10.0
    assert s.presence.silent_after_s == 900.0
    assert s.presence.silent_after_by_kind == {}
    assert s.presence.level is Level.YELLOW
    assert s.presence.sweep_every_s == 10.0
    assert s.presence.silent_after(Kind.SMOKE) == 900.0
    assert s.alerts.console is True
    assert s.alerts.webhooks == ()
    assert s.influxdb is None


def test_a_good_file_gives_ready_settings(tmp_path: Path):
    city(tmp_path)
    s = load_settings(write(tmp_path, GOOD))
    assert isinstance(s, Settings)
    assert s.path == tmp_path / "cityvitals.toml"
    assert (s.broker.host, s.broker.port, s.broker.username, s.broker.password) == (
        "10.0.0.5",
        1884,
        "ops",
        "secret",
    )
    assert s.broker.keepalive == 20
    assert s.kafka.bootstrap == ("kafka-1:9092", "10.0.0.7:9093")
    assert s.kafka.bootstrap_servers == "kafka-1:9092,10.0.0.7:9093"
    assert s.kafka.readings_topic == "harbour.readings"
    assert s.kafka.dead_letter_topic == "harbour.dead-letters"
    assert (s.kafka.partitions, s.kafka.replication) == (12, 2)
    assert (s.gateway.client_id, s.gateway.share_group) == ("gw-1", "harbour-gw")
    assert (s.gateway.max_unacked, s.gateway.dedup_window) == (200, 1024)
    assert (s.stream.app_id, s.stream.batch_size, s.stream.batch_within_s) == (
        "harbour-stream",
        100,
        0.5,
    )
    assert s.stream.session_timeout_s == 30.0
    assert s.presence.silent_after_by_kind == {Kind.MANHOLE: 1800.0}
    assert s.presence.silent_after(Kind.MANHOLE) == 1800.0
    assert s.presence.silent_after(Kind.CROWD) == 600.0
    assert (s.presence.level, s.presence.sweep_every_s) == (Level.ORANGE, 5.0)
    assert s.alerts.console is False
    assert s.alerts.webhooks == (
        WebhookSettings("ops", "https://ops.example/hook", 10.0),
        WebhookSettings("fire", "http://fire.example:8080/in", 3.0),
    )


def test_relative_paths_resolve_against_the_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    etc = tmp_path / "etc"
    etc.mkdir()
    city(tmp_path, "town.csv")
    monkeypatch.chdir(tmp_path / "..")  # not where the file is
    s = load_settings(write(etc, GOOD.replace('"city.csv"', '"../town.csv"')))
    assert s.registry_path == (tmp_path / "town.csv").resolve()
    assert s.data_dir == (etc / "state").resolve()
    # The store is relative to data_dir, not to the file.
    assert s.stream.store_path == (etc / "state" / "readings.sqlite3").resolve()
    absolute = GOOD.replace('"../town.csv"', '"x"').replace(
        'store = "readings.sqlite3"', f'store = "{tmp_path / "db.sqlite3"}"'
    )
    s = load_settings(write(etc, absolute.replace('"city.csv"', f'"{tmp_path / "town.csv"}"')))
    assert s.stream.store_path == tmp_path / "db.sqlite3"
    assert s.registry_path == tmp_path / "town.csv"


def test_the_deploy_example_loads(tmp_path: Path):
    """The annotated example, next to a registry `cityvitals city generate` wrote."""
    example = shutil.copy(REPO / "deploy" / "cityvitals.toml", tmp_path / "cityvitals.toml")
    (tmp_path / "influxdb-token").write_text("example-token\n")
    (tmp_path / "ops-webhook.secret").write_text("new-secret\nold-secret\n")
    (tmp_path / "harbour-dingtalk.secret").write_text("SEC0123\n")
    (tmp_path / "alerts-api.tokens").write_text("o" * 32 + " operator li.wei\n")
    (tmp_path / "ack-links.secret").write_text("a-long-enough-link-secret\n")
    (tmp_path / "grafana.token").write_text("glsa_example\n")
    result = CliRunner().invoke(
        main, ["city", "generate", "--nodes", "20", "--out", str(tmp_path / "city.csv")]
    )
    assert result.exit_code == 0, result.output
    s = load_settings(example)
    assert s.registry_path == tmp_path / "city.csv"
    assert s.broker.tls is not None  # mqtts:// in a real deployment
    assert len(s.kafka.bootstrap) == 3
    assert s.kafka.replication == 3
    assert s.presence.silent_after(Kind.MANHOLE) > s.presence.silent_after_s
    assert [w.name for w in s.alerts.webhooks] == ["ops", "duty-phone", "harbour-duty-group"]
    ding = s.alerts.webhooks[2]
    assert (ding.format, ding.secrets, ding.rate_per_minute) == ("dingtalk", (b"SEC0123",), 20)
    assert s.alerts.webhooks[0].secrets == (b"new-secret", b"old-secret")
    assert [w.retry_for_s for w in s.alerts.webhooks] == [3600, 3600, 3600]
    assert s.alerts.fallback == "duty-phone"
    assert [(name, after) for name, _, after, _ in s.alerts.escalation] == [
        ("street", 0),
        ("district", 900),
    ]
    assert s.alerts.routes == (
        ((("level", "red", "="),), ("ops",), True),
        (
            (("district", "Harbour", "="), ("kind", "water_level|manhole", "=~")),
            ("harbour-duty-group", "console"),
            False,
        ),
    )
    assert s.alerts.store_path == Path("/var/lib/cityvitals/alerts.sqlite3")
    assert s.alerts.api is not None
    assert (s.alerts.api.host, s.alerts.api.port) == ("0.0.0.0", 9094)  # noqa: S104 - the example
    assert s.alerts.api.link_secret == b"a-long-enough-link-secret"
    assert s.alerts.grafana == (
        "https://grafana.city.example",
        "glsa_example",
        "cityvitals-overview",
    )
    assert s.influxdb is not None
    assert s.influxdb.token == "example-token"
    assert s.influxdb.spool_path == Path("/var/lib/cityvitals/influx-spool.sqlite3")


def test_the_deploy_example_sets_every_key():
    """Every key the schema knows appears in the example, so it documents them all."""
    text = (REPO / "deploy" / "cityvitals.toml").read_text()
    sections: dict[str, type[msgspec.Struct]] = {
        "": SettingsFile,
        "[mqtt]": MqttSection,
        "[kafka]": KafkaSection,
        "[gateway]": GatewaySection,
        "[stream]": StreamSection,
        "[presence]": PresenceSection,
        "[alerts]": AlertsSection,
        "[[alerts.webhook]]": WebhookSection,
        "[alerts.api]": AlertsApiSection,
        "[[alerts.route]]": RouteSection,
        "[alerts.escalation]": EscalationSection,
        "[alerts.grafana]": GrafanaSection,
        "steps = [": StepSection,
        "match = [": MatchSection,
        "[influxdb]": InfluxSection,
    }
    for header, struct in sections.items():
        assert header in text
        for field in msgspec.structs.fields(struct):
            name = field.encode_name
            if isinstance(field.default, msgspec.Struct) or name in (
                "webhook",
                "influxdb",
                "api",
                "route",
                "escalation",
                "grafana",
            ):
                continue  # a table, documented under its own header
            assert f"{name} = " in text, f"{header or 'top level'} {name}"


BAD_REGEX = '{ name = "node", value = "(", op = "=~" }'
#: An escalation ladder of one step, put before [alerts].
LADDER = '[alerts.escalation]\nsteps = [{{ name = "street", {step} }}]\n\n[alerts]\n'
#: A route table put before [alerts] (TOML takes a table's parts in any order).
ROUTE = "[[alerts.route]]\nmatch = [{{ {match} }}]\nreceivers = [{to}]\n\n[alerts]\n"


@pytest.mark.parametrize(
    ("change", "key", "expected"),
    [
        # unknown keys
        (
            ("max_unacked = 200", "max_unacked = 200\nmax_inflight = 1"),
            "gateway.max_inflight",
            "one of the known keys: agents_file, client_id, dedup_window, max_unacked, share_group",
        ),
        (
            ('data_dir = "state"', 'data_dir = "state"\nregistery = "x"'),
            "registery",
            "known keys: alerts, data_dir, gateway, influxdb, kafka, mqtt, presence, registry,"
            " stream",
        ),
        (("[stream]", "[streams]"), "streams", "known keys: alerts, data_dir"),
        (
            ("\ntimeout_s = 3", "\ntimeout = 3"),
            "alerts.webhook[1].timeout",
            "format, name, rate_per_minute, retry_for_s, secret_file, timeout_s, url",
        ),
        (('data_dir = "state"', '"data dir" = "state"'), '"data dir"', "known keys"),
        # wrong types
        (("partitions = 12", 'partitions = "12"'), "kafka.partitions", "int"),
        (("console = false", 'console = "no"'), "alerts.console", "bool"),
        (('data_dir = "state"', "data_dir = 5"), "data_dir", "str"),
        (
            ('bootstrap = ["kafka-1:9092", "10.0.0.7:9093"]', 'bootstrap = "kafka-1:9092"'),
            "kafka.bootstrap",
            "array",
        ),
        (("batch_size = 100", "batch_size = 1.5"), "stream.batch_size", "int"),
        # out of range
        (("max_unacked = 200", "max_unacked = 70000"), "gateway.max_unacked", "int <= 65535"),
        (("partitions = 12", "partitions = 0"), "kafka.partitions", ">= 1"),
        (("replication = 2", "replication = 11"), "kafka.replication", "<= 10"),
        (("batch_within_s = 0.5", "batch_within_s = 0"), "stream.batch_within_s", "> 0"),
        (("sweep_every_s = 5", "sweep_every_s = -1"), "presence.sweep_every_s", "> 0"),
        (("\ntimeout_s = 3", "\ntimeout_s = 0"), "alerts.webhook[1].timeout_s", "> 0"),
        (
            ("\ntimeout_s = 3", "\ntimeout_s = 3\nretry_for_s = 0"),
            "alerts.webhook[1].retry_for_s",
            "> 0",
        ),
        (("keepalive = 20", "keepalive = 1"), "mqtt.keepalive", ">= 5"),
        (("session_timeout_s = 30", "session_timeout_s = 1"), "stream.session_timeout_s", ">= 6"),
        # patterns and shapes
        (('"10.0.0.7:9093"', '"10.0.0.7:99999"'), "kafka.bootstrap[1]", "a port 1..65535"),
        (('"kafka-1:9092"', '"kafka-1"'), "kafka.bootstrap[0]", "host:port"),
        (('"10.0.0.7:9093"', "9093"), "kafka.bootstrap[1]", "str"),
        (
            ('bootstrap = ["kafka-1:9092", "10.0.0.7:9093"]', "bootstrap = []"),
            "kafka.bootstrap",
            "array of length >= 1",
        ),
        (('"harbour"', '"harbour city"'), "kafka.topic_prefix", "1 to 100 letters"),
        (('"harbour-stream"', '""'), "stream.app_id", "1 to 100 letters, digits"),
        (('"harbour-gw"', '"harbour/gw"'), "gateway.share_group", "other than '/', '+', '#'"),
        (('"gw-1"', '"gw 1"'), "gateway.client_id", "up to 128 letters"),
        (('name = "fire"', 'name = "Fire Brigade"'), "alerts.webhook[1].name", "1 to 64"),
        # kinds and levels
        (
            ("{ manhole = 1800 }", "{ manhole = 1800, drain = 60 }"),
            "presence.silent_after_by_kind",
            "keys one of crowd, manhole, smoke, water_level, found 'drain'",
        ),
        (
            ("{ manhole = 1800 }", "{ smoke = 60, manhole = -5 }"),
            'presence.silent_after_by_kind."manhole"',
            "float > 0.0, found -5",
        ),
        (
            ("{ manhole = 1800 }", '{ manhole = "long" }'),
            'presence.silent_after_by_kind."manhole"',
            "float",
        ),
        (('"orange"', '"purple"'), "presence.level", "a warning level: blue, yellow"),
        (('"orange"', '"none"'), "presence.level", "a warning level"),
        # webhooks
        (('name = "fire"', 'name = "ops"'), "alerts.webhook[1].name", "a webhook name used once"),
        (
            ('"http://fire.example:8080/in"', '"ftp://fire.example/in"'),
            "alerts.webhook[1].url",
            "http",
        ),
        (('"https://ops.example/hook"', '"https:///hook"'), "alerts.webhook[0].url", "a host"),
        (('"https://ops.example/hook"', '"https://[ops/hook"'), "alerts.webhook[0].url", "https"),
        (
            ('url = "http://fire.example:8080/in"\n', ""),
            "alerts.webhook[1].url",
            "a value (this key is required)",
        ),
        (
            (
                "[alerts]\n",
                ROUTE.format(match='name = "node", value = "x"', to='"pager"'),
            ),
            "alerts.route[0].receivers[0]",
            "a receiver: ops, fire, found 'pager'",
        ),
        (
            (
                "[alerts]\n",
                ROUTE.format(match='name = "colour", value = "x"', to='"ops"'),
            ),
            "alerts.route[0].match[0].name",
            "one of",
        ),
        (
            (
                "[alerts]\n",
                LADDER.format(step=f'receivers = ["ops"], after_s = 0, match = [{BAD_REGEX}]'),
            ),
            "alerts.escalation.steps[0].match[0].value",
            "a regular expression (missing ), unterminated subpattern",
        ),
        (
            ("[alerts]\n", LADDER.format(step='receivers = ["pager"], after_s = 0')),
            "alerts.escalation.steps[0].receivers[0]",
            "a receiver: ops, fire, found 'pager'",
        ),
        (
            ("[alerts]\n", '[alerts]\nfallback = "sms"\n'),
            "alerts.fallback",
            "one of the [[alerts.webhook]] tables (ops, fire), found 'sms'",
        ),
        (
            ('name = "fire"\n', 'name = "fire"\nsecret_file = "fire.secret"\n'),
            "alerts.webhook[1].secret_file",
            "a readable file",
        ),
        (
            ('name = "fire"\n', 'name = "fire"\nformat = "teams"\n'),
            "alerts.webhook[1].format",
            "one of dingtalk, feishu, json, slack, wecom, found 'teams'",
        ),
        (
            ('name = "fire"\n', 'name = "fire"\nformat = "wecom"\nsecret_file = "city.csv"\n'),
            "alerts.webhook[1].secret_file",
            "wecom bots are not signed",
        ),
        # files
        (('registry = "city.csv"\n', ""), "registry", "a value (this key is required)"),
        (('"city.csv"', '"town.csv"'), "registry", "an existing device registry CSV"),
        (('"city.csv"', '"."'), "registry", "an existing device registry CSV"),
        (
            ("keepalive = 20", 'keepalive = 20\npassword_file = "nope"'),
            "mqtt.password_file",
            "a readable file",
        ),
        (("partitions = 12", "partitions = "), "(syntax)", "valid TOML: Invalid value (at line 12"),
        # the broker url
        (('url = "mqtt://ops', 'url = "http://ops'), "mqtt.url", "mqtt://host"),
        (("10.0.0.5:1884", "10.0.0.5:0"), "mqtt.url", "a port 1..65535"),
        (("10.0.0.5:1884", "[10.0.0.5"), "mqtt.url", "Invalid IPv6 URL"),
        (("keepalive = 20", 'keepalive = 20\nca_file = "ca.pem"'), "mqtt.url", "mqtts://"),
    ],
)
def test_a_mistake_names_the_file_the_key_and_the_expectation(
    tmp_path: Path, change: tuple[str, str], key: str, expected: str
):
    city(tmp_path)
    old, new = change
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: expected"), message
    assert expected in message, message
    assert caught.value.key == key
    assert caught.value.path == path
    assert "\n" not in message  # one line for one mistake


def test_the_gateway_agents_file_is_read_and_checked_at_load(tmp_path: Path):
    """Relative to the config; missing, the error names the key; wrong inside, the agents
    file and its line."""
    city(tmp_path)
    assert load_settings(write(tmp_path, 'registry = "city.csv"\n')).gateway.owners is None
    text = 'registry = "city.csv"\n[gateway]\nagents_file = "auth/agents.csv"\n'
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=r"gateway.agents_file: expected an existing agents CSV"):
        load_settings(path)
    (tmp_path / "auth").mkdir()
    (tmp_path / "auth" / "agents.csv").write_text("agent,node\npi-1,wl-0001\n")
    assert load_settings(path).gateway.owners == {"wl-0001": "pi-1"}
    (tmp_path / "auth" / "agents.csv").write_text("agent,node\nPI 1,wl-0001\n")
    with pytest.raises(ConfigError, match=r"agents.csv.*line 2, agent: expected an edge agent"):
        load_settings(path)


def test_a_syntax_error_names_its_line(tmp_path: Path):
    city(tmp_path)
    path = write(tmp_path, 'registry = "city.csv"\n\n[kafka]\npartitions = 8\nreplication = \n')
    with pytest.raises(ConfigError, match=r"\(syntax\): expected valid TOML: .*line 5"):
        load_settings(path)


def test_a_missing_or_unreadable_file(tmp_path: Path):
    with pytest.raises(
        ConfigError, match=r"\(file\): expected a cityvitals.toml file; it does not"
    ):
        load_settings(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_bytes(b'registry = "\xff"\n')
    with pytest.raises(ConfigError, match=r"\(file\): expected a readable UTF-8 file"):
        load_settings(tmp_path / "bad.toml")


def test_secrets_and_tls_files_are_read_relative_to_the_config(tmp_path: Path):
    city(tmp_path)
    (tmp_path / "pw").write_text("s3cret\n")
    text = GOOD.replace(
        'url = "mqtt://ops:secret@10.0.0.5:1884"',
        'url = "mqtts://10.0.0.5"\nusername = "gw"\npassword_file = "pw"',
    )
    s = load_settings(write(tmp_path, text))
    assert (s.broker.username, s.broker.password) == ("gw", "s3cret")
    assert s.broker.tls is not None
    assert s.broker.port == 8883
    both = text.replace('password_file = "pw"', 'password_file = "pw"\npassword = "x"')
    with pytest.raises(ConfigError, match=r"mqtt.password_file: expected password or"):
        load_settings(write(tmp_path, both))
    missing = text.replace('password_file = "pw"', 'password_file = "pw"\nca_file = "ca.pem"')
    with pytest.raises(ConfigError, match=r"mqtt.ca_file: expected a readable PEM CA bundle"):
        load_settings(write(tmp_path, missing))
    half = text.replace('password_file = "pw"', 'password_file = "pw"\ncert_file = "c.pem"')
    with pytest.raises(ConfigError, match=r"mqtt.key_file: expected cert_file and key_file"):
        load_settings(write(tmp_path, half))


def test_the_shared_helpers():
    """The key-path helpers of cityvitals.tomlconfig, on their own."""
    data = {"a": {"t": {"x": 1, "y": -2, "z": "q"}}, "l": [{"k": 3}]}
    assert lookup(data, "l[0].k") == 3
    assert lookup(data, "l[5].k") is None
    assert lookup(data, "a.t.x.deeper") is None
    assert bad_entry(data, "a.t", "Expected `float` >= 0.0") == ('a.t."y"', -2)
    assert bad_entry(data, "a.t", "Expected `float`, got `str`") == ('a.t."z"', "q")
    assert join_key("", "mqtt") == "mqtt"
    assert join_key("mqtt", "url") == "mqtt.url"
    assert join_key("mqtt", "two\nlines") == 'mqtt."two\\u000alines"'


# -- garbage -------------------------------------------------------------------


def _toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_float(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        text = _toml_float(value)
    elif isinstance(value, str):
        text = _toml_string(value)
    elif isinstance(value, list):
        text = "[" + ", ".join(map(_toml_value, value)) + "]"
    else:
        items = ", ".join(f"{_toml_string(k)} = {_toml_value(v)}" for k, v in value.items())
        text = "{" + items + "}"
    return text


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
_SCALARS = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    _TEXT,
    st.sampled_from(
        [
            "",
            "city.csv",
            "none",
            "red",
            "II",
            "manhole",
            "host:9092",
            "[::1]:9092",
            "mqtt://h:0",
            "mqtts://[",
            "mqtt://u:p@h",
            "https://x.example",
            "http://[::1",
            "/dev/null",
            ".",
            "a\x00b",
            "x" * 5000,
        ]
    ),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=6,
)
_WEBHOOKS = st.lists(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["ops", "fire"]) | _TEXT, "url": _SCALARS},
        optional={"timeout_s": _SCALARS},
    ),
    max_size=3,
)
_SECTIONS: dict[str, type[msgspec.Struct]] = {
    "mqtt": MqttSection,
    "kafka": KafkaSection,
    "gateway": GatewaySection,
    "stream": StreamSection,
    "presence": PresenceSection,
}
_KEYS = [("", name) for name in ("registry", "data_dir", "bogus", *_SECTIONS, "alerts")] + [
    (section, name) for section, struct in _SECTIONS.items() for name in struct.__struct_fields__
]


@st.composite
def _documents(draw: st.DrawFn) -> str:
    doc: dict[str, Any] = {"registry": "city.csv"}
    for section, name in draw(st.lists(st.sampled_from(_KEYS), min_size=1, max_size=4)):
        value = draw(_VALUES)
        if section:
            table = doc.get(section)
            doc[section] = table = table if isinstance(table, dict) else {}
            table[name] = value
        else:
            doc[name] = value
    if draw(st.booleans()):
        alerts = {"webhook": draw(_WEBHOOKS)}
        if draw(st.booleans()):
            alerts["console"] = draw(_SCALARS)
        doc["alerts"] = alerts
    return "".join(f"{_toml_string(k)} = {_toml_value(v)}\n" for k, v in doc.items())


def _settle(text: str) -> None:
    """Load `text` as a cityvitals.toml next to a registry: settings or one ConfigError."""
    with tempfile.TemporaryDirectory() as scratch:
        city(Path(scratch))
        path = Path(scratch) / "cityvitals.toml"
        path.write_text(text)
        error: ConfigError | None = None
        result: Settings | None = None
        try:
            result = load_settings(path)
        except ConfigError as exc:
            error = exc
        if error is None:
            assert isinstance(result, Settings)
        else:
            assert str(error).startswith(f"{path}: "), error
            assert len(str(error).splitlines()) == 1, error


@settings(max_examples=150, deadline=None)
@given(garbage=st.text(st.characters(blacklist_categories=("Cs",)), max_size=300))
def test_garbage_text_is_a_config_error_never_a_crash(garbage: str):
    _settle(garbage)


@settings(max_examples=300, deadline=None)
@given(text=_documents())
def test_garbage_values_are_a_config_error_never_a_crash(text: str):
    """Valid TOML with any values under known (and unknown) keys."""
    _settle(text)


INFLUX = """
[influxdb]
url = "http://influx.example:8086/"
org = "harbour"
bucket = "harbour-city"
token_file = "secrets/influx-token"
spool = "spool/influx.sqlite3"
spool_max_mb = 2.5
batch_size = 2000
timeout_s = 4
"""


def influx_file(tmp_path: Path, text: str = INFLUX) -> Path:
    city(tmp_path)
    (tmp_path / "secrets").mkdir(exist_ok=True)
    (tmp_path / "secrets" / "influx-token").write_text("  tok-123\n")
    return write(tmp_path, GOOD + text)


def test_the_influxdb_table_gives_ready_sink_settings(tmp_path: Path):
    """[influxdb]: the token is read from its file (relative to the config), the spool lies
    under data_dir, megabytes become bytes, and the token never shows in a repr."""
    s = load_settings(influx_file(tmp_path))
    i = s.influxdb
    assert i is not None
    assert (i.url, i.org, i.bucket, i.token) == (
        "http://influx.example:8086",
        "harbour",
        "harbour-city",
        "tok-123",
    )
    assert i.spool_path == (tmp_path / "state" / "spool" / "influx.sqlite3").resolve()
    assert i.spool_max_bytes == round(2.5 * 1024 * 1024)
    assert (i.batch_size, i.timeout_s) == (2000, 4.0)
    assert "tok-123" not in repr(i)
    assert "tok-123" not in repr(s)


def test_the_influxdb_defaults(tmp_path: Path):
    """Only url and a token are needed: org and bucket "cityvitals", a 1 GiB spool named
    influx-spool.sqlite3 in data_dir, 5000 points a request, 10 s per request."""
    s = load_settings(
        influx_file(tmp_path, '[influxdb]\nurl = "http://127.0.0.1:8086"\ntoken = "t"\n')
    )
    i = s.influxdb
    assert i is not None
    assert (i.org, i.bucket, i.token) == ("cityvitals", "cityvitals", "t")
    assert i.spool_path == (tmp_path / "state" / "influx-spool.sqlite3").resolve()
    assert (i.spool_max_bytes, i.batch_size, i.timeout_s) == (1 << 30, 5000, 10.0)


@pytest.mark.parametrize(
    ("change", "key", "expected"),
    [
        (('url = "http://influx.example:8086/"\n', ""), "influxdb.url", "a value (this key"),
        (("http://influx.example", "influx.example"), "influxdb.url", "an http:// or https://"),
        (("http://influx.example", "ftp://influx.example"), "influxdb.url", "http"),
        (("8086/", "0/"), "influxdb.url", "with a host"),
        (('bucket = "harbour-city"', 'bucket = "_monitoring"'), "influxdb.bucket", "not start"),
        (('bucket = "harbour-city"', 'bucket = ""'), "influxdb.bucket", "1 to 255 characters"),
        (('org = "harbour"', 'org = "a\\\\b"'), "influxdb.org", "other than"),
        (('token_file = "secrets/influx-token"', ""), "influxdb.token_file", "a file holding"),
        (
            ('token_file = "secrets/influx-token"', 'token_file = "x"\ntoken = "y"'),
            "influxdb.token_file",
            "token or token_file, not both",
        ),
        (('"secrets/influx-token"', '"secrets/nope"'), "influxdb.token_file", "a readable file"),
        (('"secrets/influx-token"', '"secrets"'), "influxdb.token_file", "a readable file"),
        (('token_file = "secrets/influx-token"', 'token = " "'), "influxdb.token", "not an empty"),
        (("spool_max_mb = 2.5", "spool_max_mb = 0"), "influxdb.spool_max_mb", "> 0"),
        (("batch_size = 2000", "batch_size = 0"), "influxdb.batch_size", ">= 1"),
        (("batch_size = 2000", "batch_size = 200000"), "influxdb.batch_size", "<= 100000"),
        (("timeout_s = 4", "timeout_s = 0"), "influxdb.timeout_s", "> 0"),
        (("timeout_s = 4", 'timeout_s = "4"'), "influxdb.timeout_s", "float"),
        (
            ("timeout_s = 4", "timeout_s = 4\nprecision = 'ms'"),
            "influxdb.precision",
            "one of the known keys: batch_size, bucket, org, spool, spool_max_mb, timeout_s,"
            " token, token_file, url",
        ),
    ],
)
def test_an_influxdb_mistake_names_the_file_the_key_and_the_expectation(
    tmp_path: Path, change: tuple[str, str], key: str, expected: str
):
    old, new = change
    assert old in INFLUX
    path = influx_file(tmp_path, INFLUX.replace(old, new, 1))
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: expected"), message
    assert expected in message, message
    assert caught.value.key == key
    assert "\n" not in message


def test_an_empty_token_file_is_an_error(tmp_path: Path):
    path = influx_file(tmp_path)
    (tmp_path / "secrets" / "influx-token").write_text("\n")
    with pytest.raises(ConfigError, match=r"influxdb.token_file: expected a file holding the"):
        load_settings(path)
