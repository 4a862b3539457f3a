"""The compose stack as Compose reads it, and its cityvitals.toml as the services read it.

deploy/compose.yaml is rendered by Debian's docker-compose 1.29 (`config`: interpolation
and schema, no Docker engine) with a .env made from deploy/.env.example, and the result is
held to what docs/operations.md promises. It is also loaded by compose-go v2, the library
`docker compose config` (Compose v2) is built on (deploy/compose-check: built from its Go
module once, cached), so it is valid for both. deploy/compose/cityvitals.toml is loaded by the
real settings loader with its container paths moved into a temporary directory.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from cityvitals.citygen import generate_city
from cityvitals.cli import main
from cityvitals.credentials import agents_csv, agents_of
from cityvitals.settings import load_settings

REPO = Path(__file__).parents[3]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
CONFIG = DEPLOY / "compose" / "cityvitals.toml"
BROKER_CONF = DEPLOY / "mosquitto" / "mosquitto.conf"
APPS = ("gateway", "stream", "alerts")
SERVICES = {"mosquitto", "kafka", "influxdb", "grafana", *APPS}
CONFIG_IN_CONTAINER = "/etc/cityvitals/cityvitals.toml"
#: What the operator writes into the required variables (docs/operations.md).
FILLED = {
    "CITYVITALS_UID": "1000",
    "CITYVITALS_GID": "1000",
    "KAFKA_CLUSTER_ID": "MkU3OEVBNTcwNTJENDM2Qg",
}
#: Compose's own variable, read from .env but not used in compose.yaml.
COMPOSE_OWN = {"COMPOSE_PROJECT_NAME"}

# -- the variables ---------------------------------------------------------------------

_USE = re.compile(r"(?<!\$)\$\{(?P<name>[A-Za-z0-9_]+)(?P<op>:[-?])?(?P<arg>[^}]*)\}")
_ACTIVE = re.compile(r"^(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")
_COMMENTED = re.compile(r"^#\s*(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")


def _uses() -> list[tuple[str, str | None, str]]:
    """(name, ":-" or ":?" or None, default or message) of every ${...} in compose.yaml."""
    lines = [ln for ln in COMPOSE.read_text().splitlines() if not ln.lstrip().startswith("#")]
    return [(m["name"], m["op"], m["arg"]) for m in _USE.finditer("\n".join(lines))]


def _example() -> tuple[dict[str, str], dict[str, str]]:
    """.env.example as (active NAME=value lines, commented-out # NAME=default lines)."""
    active: dict[str, str] = {}
    commented: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if m := _ACTIVE.match(line):
            active[m["name"]] = m["value"]
        elif m := _COMMENTED.match(line):
            commented[m["name"]] = m["value"]
    return active, commented


REQUIRED = sorted({name for name, op, _ in _uses() if op == ":?"})


def test_env_example_has_every_variable_as_compose_uses_it():
    """Required variables are the example's empty active lines; every optional one is
    there, commented out at compose.yaml's default; nothing else is."""
    active, commented = _example()
    uses = _uses()
    assert [name for name, op, _ in uses if op is None] == [], "give each a default or :?"
    defaults: dict[str, set[str]] = {}
    for name, op, arg in uses:
        if op == ":-":
            defaults.setdefault(name, set()).add(arg)
    assert not set(defaults) & set(REQUIRED), "a variable both required and optional"
    assert {n: d for n, d in defaults.items() if len(d) > 1} == {}, "one default per variable"
    assert {n for n, v in active.items() if not v} == set(REQUIRED)
    assert set(REQUIRED) <= set(FILLED), "say in FILLED what the operator would write"
    assert {n: {v} for n, v in commented.items()} == defaults
    assert set(active) - set(REQUIRED) == COMPOSE_OWN


# -- docker-compose config ---------------------------------------------------------------


def _docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        pytest.fail(
            "docker-compose is not installed: `./dev test` installs it (Debian's "
            "docker-compose package, without a Docker engine)"
        )
    return found


def _render(
    directory: Path, *, drop: str | None = None, extra: str = "", quiet: bool = False
) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` of compose.yaml with a .env made from .env.example: the
    required values filled in (but `drop`) and `extra` lines added."""
    active, _ = _example()
    lines = [f"{n}={'' if n == drop else FILLED.get(n, v)}" for n, v in active.items()]
    env_file = directory / ".env"
    env_file.write_text("\n".join(lines) + "\n" + extra)
    # Nothing from this machine's environment: variables there would override the file.
    return subprocess.run(  # noqa: S603 - a fixed tool on our own files
        [_docker_compose(), "--env-file", str(env_file), "-f", str(COMPOSE), "config"]
        + (["-q"] if quiet else []),
        capture_output=True,
        text=True,
        check=False,
        cwd=directory,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(directory)},
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    done = _render(tmp_path_factory.mktemp("compose"))
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    rendered = yaml.safe_load(done.stdout)
    assert isinstance(rendered, dict)
    return rendered


def _volumes(service: dict[str, Any]) -> dict[str, str | None]:
    """Mount target -> source (a host path or volume name; None: an anonymous volume)."""
    out: dict[str, str | None] = {}
    for entry in service.get("volumes", []):
        parts = entry.split(":")
        if len(parts) == 1:
            out[parts[0]] = None
        else:
            out[parts[1]] = parts[0]
    return out


def _secrets(service: dict[str, Any]) -> set[str]:
    return {s["source"] if isinstance(s, dict) else s for s in service.get("secrets", [])}


def test_the_stack_is_valid_compose(tmp_path: Path):
    done = _render(tmp_path, quiet=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""


def _compose_v2(env_file: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("go") is None:
        pytest.fail("go is not installed: `./dev test` installs it (it also builds InfluxDB)")
    return subprocess.run(  # noqa: S603 - our own script on our own files
        [str(DEPLOY / "compose-check" / "compose-check"), str(COMPOSE), str(env_file)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,  # the first run builds it
    )


def test_the_stack_is_valid_for_compose_v2_too(tmp_path: Path):
    """What `docker compose config` (v2) checks: its stricter rules too (a scalable
    service with a container_name, for one, which 1.29 lets through)."""
    assert _render(tmp_path, quiet=True).returncode == 0  # writes tmp_path/.env
    done = _compose_v2(tmp_path / ".env")
    assert done.returncode == 0, done.stderr
    assert "valid, services:" in done.stderr
    for name in SERVICES:
        assert name in done.stderr
    _render(tmp_path, drop=REQUIRED[0], quiet=True)
    refused = _compose_v2(tmp_path / ".env")
    assert refused.returncode == 1
    assert f"set {REQUIRED[0]} in deploy/.env" in refused.stderr


@pytest.mark.parametrize("name", REQUIRED)
def test_a_missing_required_variable_is_refused_by_name(tmp_path: Path, name: str):
    done = _render(tmp_path, drop=name)
    assert done.returncode != 0
    assert f"set {name} in deploy/.env" in done.stderr


def test_every_service_has_a_healthcheck(stack: dict[str, Any]):
    services = stack["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test")
        assert test, name
        assert test[0] in ("CMD", "CMD-SHELL"), name
        assert not service["healthcheck"].get("disable"), name


def test_stream_workers_scale(stack: dict[str, Any], tmp_path: Path):
    """Replicas from STREAM_REPLICAS (2 by default); nothing a second copy would clash on."""
    stream = stack["services"]["stream"]
    assert stream["deploy"]["replicas"] == 2
    assert "container_name" not in stream
    assert "ports" not in stream
    assert "hostname" not in stream
    done = _render(tmp_path, extra="STREAM_REPLICAS=5\n")
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["services"]["stream"]["deploy"]["replicas"] == 5


def test_only_the_broker_grafana_and_the_alerts_api_are_published(stack: dict[str, Any]):
    """The broker on 8883 alone (TLS; no plain listener to publish), Grafana and the API
    on the host's loopback for the reverse proxy, and nothing else at all."""
    published = {
        name: [str(p).removesuffix("/tcp").split(":") for p in service.get("ports", [])]
        for name, service in stack["services"].items()
    }
    assert [container for *_, container in published.pop("mosquitto")] == ["8883"]
    assert published.pop("grafana") == [["127.0.0.1", "3000", "3000"]]
    assert published.pop("alerts") == [["127.0.0.1", "9094", "9094"]]
    assert all(ports == [] for ports in published.values()), published
    networks = {name: set(s["networks"]) for name, s in stack["services"].items()}
    assert stack["networks"]["backend"]["internal"] is True
    assert {name for name, nets in networks.items() if "edge" in nets} == {
        "mosquitto",
        "grafana",
        "alerts",
    }


def test_the_roles_wait_for_healthy_servers(stack: dict[str, Any]):
    services = stack["services"]

    def waits_for(name: str) -> set[str]:
        needs = services[name]["depends_on"]
        assert {n["condition"] for n in needs.values()} == {"service_healthy"}, name
        return set(needs)

    assert waits_for("gateway") == {"mosquitto", "kafka", "influxdb"}
    assert waits_for("stream") == {"kafka", "influxdb"}
    assert waits_for("alerts") == {"kafka", "influxdb"}
    assert waits_for("grafana") == {"influxdb"}


def test_the_roles_are_one_image_each_running_its_own_role(stack: dict[str, Any]):
    services = stack["services"]
    images = {services[role]["image"] for role in APPS}
    assert len(images) == 1
    for role in APPS:
        service = services[role]
        assert service["command"] == ["run", "--config", CONFIG_IN_CONTAINER, "--role", role]
        assert Path(service["build"]["context"]) == REPO
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert service["build"]["args"]["CITYVITALS_UID"] == FILLED["CITYVITALS_UID"]
        assert service["read_only"] is True
        assert service["init"] is True
        assert service["cap_drop"] == ["ALL"]
        assert _volumes(service)[CONFIG_IN_CONTAINER] == str(CONFIG)


def test_every_file_the_config_names_is_in_every_role_container(stack: dict[str, Any]):
    """Every role reads and checks the whole file, so each container has every file it
    names; data_dir is one volume per stream worker (anonymous: each has its own spool
    and store) and a named one for the gateway and the alerts service, one of each."""
    paths = dict(_container_paths(tomllib.loads(CONFIG.read_text())))
    data_dir = paths.pop("data_dir")
    for role in APPS:
        service = stack["services"][role]
        mounts, secrets = _volumes(service), _secrets(service)
        for key, path in paths.items():
            if path.startswith("/run/secrets/"):
                assert path.removeprefix("/run/secrets/") in secrets, (role, key)
            else:
                assert mounts.get(path), (role, key)
                assert Path(str(mounts[path])).is_relative_to(DEPLOY), (role, key)
    assert _volumes(stack["services"]["stream"])[data_dir] is None
    assert _volumes(stack["services"]["alerts"])[data_dir] == "alerts-data"
    assert _volumes(stack["services"]["gateway"])[data_dir] == "gateway-data"


def test_the_secret_files_are_kept_out_of_git(stack: dict[str, Any]):
    ignored = [
        line.rstrip("/")
        for line in (REPO / ".gitignore").read_text().splitlines()
        if line.startswith("deploy/")
    ]
    for name, secret in stack["secrets"].items():
        path = Path(secret["file"]).relative_to(REPO).as_posix()
        assert any(path == i or path.startswith(f"{i}/") for i in ignored), name


def test_the_broker_config_uses_only_what_the_broker_container_mounts(
    stack: dict[str, Any],
):
    mosquitto = stack["services"]["mosquitto"]
    mounts = _volumes(mosquitto)
    assert mounts["/mosquitto/config/mosquitto.conf"] == str(BROKER_CONF)
    directives = [
        line.split(None, 1)
        for line in BROKER_CONF.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert [d for d in directives if "8883" in d[1]] == [["listener", "8883"]]
    paths = [value for _, value in directives if value.startswith("/")]
    assert paths, "the broker config names its files"
    for path in paths:
        assert path.startswith("/mosquitto/"), path
        assert any(path.startswith(target.rstrip("/") + "/") for target in mounts), path
    assert mounts["/mosquitto/config/auth"] == str(DEPLOY / "mosquitto" / "auth")
    # The healthcheck's password: issued by `cityvitals city credentials` into that mount.
    assert "/mosquitto/config/auth/passwords/cityvitals-healthcheck.txt" in " ".join(
        mosquitto["healthcheck"]["test"]
    )


def test_influxdb_org_and_bucket_agree_with_the_config(stack: dict[str, Any]):
    influx = tomllib.loads(CONFIG.read_text())["influxdb"]
    init = stack["services"]["influxdb"]["environment"]
    grafana = stack["services"]["grafana"]["environment"]
    assert init["DOCKER_INFLUXDB_INIT_ORG"] == grafana["INFLUX_ORG"] == influx["org"]
    assert init["DOCKER_INFLUXDB_INIT_BUCKET"] == grafana["INFLUX_BUCKET"] == influx["bucket"]


# -- the image ---------------------------------------------------------------------------


def test_the_image_gets_every_package_and_the_build_nothing_else():
    """The Dockerfile copies every package pyproject.toml installs, and .dockerignore lets
    in those and the metadata only (the context is the repository, deploy/secrets too)."""
    found = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {p.removesuffix("*") for p in found["packages"]["find"]["include"]}
    copied = re.findall(r"^COPY (\S+) \./\1$", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert set(copied) == packages
    patterns = [
        line
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"
    let_in = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    assert let_in == packages | {"pyproject.toml", "README.md"}


# -- deploy/compose/cityvitals.toml --------------------------------------------------------


def _container_paths(data: Any, key: str = "") -> list[tuple[str, str]]:
    """(key path, value) of every absolute path in the parsed config."""
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in _container_paths(v, f"{key}.{k}" if key else k)]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in _container_paths(v, f"{key}[{i}]")]
    return [(key, data)] if isinstance(data, str) and data.startswith("/") else []


def _make_certificate(directory: Path) -> Path:
    """A CA certificate, which the loader parses into the MQTT TLS context."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is not installed: `./dev test` installs it")
    cert = directory / "ca.crt"
    subprocess.run(  # noqa: S603 - a fixed tool
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=cityvitals test CA",
         "-keyout", str(directory / "ca.key"), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert


def _moved_config(tmp_path: Path) -> tuple[Path, Path]:
    """The compose config with every container path moved under `tmp_path/root`, and the
    files it names made as the set-up makes them; (config, root)."""
    text = CONFIG.read_text()
    root = tmp_path / "root"
    certificate = _make_certificate(tmp_path)
    city = generate_city(nodes=20, districts=2, seed=1)
    made = {
        "registry": city.dump,
        "data_dir": lambda p: p.mkdir(parents=True),
        "mqtt.password_file": lambda p: p.write_text("gateway-password\n"),
        "mqtt.ca_file": lambda p: shutil.copy(certificate, p),
        "alerts.api.tokens_file": lambda p: p.write_text(
            "0123456789abcdef0123456789abcdef operator ops.test\n"
        ),
        "influxdb.token_file": lambda p: p.write_text("services-token\n"),
        # As `city credentials` writes it by default: every node its own agent.
        "gateway.agents_file": lambda p: p.write_text(agents_csv(agents_of(city))),
    }
    found = dict(_container_paths(tomllib.loads(text)))
    assert set(found) == set(made), "a container path this test does not make"
    for key, inside in found.items():
        here = root / inside.lstrip("/")
        here.parent.mkdir(parents=True, exist_ok=True)
        made[key](here)
        text = text.replace(f'"{inside}"', f'"{here}"')
    path = tmp_path / "cityvitals.toml"
    path.write_text(text)
    return path, root


def test_the_config_loads_as_the_role_containers_see_it(tmp_path: Path):
    path, root = _moved_config(tmp_path)
    s = load_settings(path)
    data = root / "var" / "lib" / "cityvitals"
    assert s.registry_path == root / "etc" / "cityvitals" / "city.csv"
    assert s.data_dir == data
    assert (s.broker.host, s.broker.port) == ("mosquitto", 8883)
    assert s.broker.tls is not None
    assert (s.broker.username, s.broker.password) == ("cityvitals-gateway", "gateway-password")
    assert s.kafka.bootstrap == ("kafka:9092",)
    assert (s.kafka.partitions, s.kafka.replication) == (8, 1)
    # Fixed: a container's hostname (the default's source) changes on every upgrade.
    assert s.gateway.client_id == "cv-gateway-compose"
    assert s.gateway.owners is not None
    assert len(s.gateway.owners) == 20
    assert s.stream.store_path == data / "cityvitals.sqlite3"
    assert s.stream.rules_path is None
    assert s.alerts.store_path == data / "alerts.sqlite3"
    assert s.alerts.api is not None
    assert (s.alerts.api.host, s.alerts.api.port) == ("0.0.0.0", 9094)  # noqa: S104
    assert s.influxdb is not None
    assert (s.influxdb.url, s.influxdb.org, s.influxdb.bucket) == (
        "http://influxdb:8086",
        "cityvitals",
        "cityvitals",
    )
    assert s.influxdb.token == "services-token"
    assert s.influxdb.spool_path == data / "influx-spool.sqlite3"


def test_run_check_passes_on_the_config(tmp_path: Path):
    path, _ = _moved_config(tmp_path)
    result = CliRunner().invoke(main, ["run", "--config", str(path), "--check"])
    assert result.exit_code == 0, result.output
    assert "roles alerts, gateway, stream; built-in rules; MQTT mosquitto:8883 with TLS" in (
        result.output
    )
    assert "(20 nodes); agents file: 20 agents for 20 nodes" in result.output
