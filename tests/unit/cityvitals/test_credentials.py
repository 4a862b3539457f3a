"""Broker credentials and the ACL from the registry: who may publish what, passwords kept,
rotated and revoked, files no one else can read. (Mosquitto itself takes them in
tests/integration/test_mosquitto_acl.py.)"""

from __future__ import annotations

import base64
import hashlib
import stat
from itertools import count
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from cityvitals.citygen import generate_city
from cityvitals.cli import main
from cityvitals.credentials import (
    GATEWAY_USER,
    HEALTHCHECK_USER,
    acl_text,
    agents_of,
    describe_owners,
    issue,
    load_assignment,
    password_line,
)
from cityvitals.errors import ConfigError
from cityvitals.registry import Registry

CITY = generate_city(nodes=10, districts=2, seed=3)


def passwords() -> object:
    numbers = count(1)
    return lambda: f"password-{next(numbers)}"


def checks(line: str, password: str) -> bool:
    """Verify a password line as Mosquitto does: PBKDF2-SHA512 over the salt."""
    _, rest = line.split(":", 1)
    _, seven, rounds, salt, digest = rest.split("$")
    assert seven == "7"
    derived = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(rounds))
    return derived == base64.b64decode(digest)


def test_a_password_line_is_mosquittos_pbkdf2_sha512() -> None:
    line = password_line("wl-0001", "s3cret")
    assert line.startswith("wl-0001:$7$101$")
    assert checks(line, "s3cret")
    assert not checks(line, "s3cret ")
    assert password_line("a", "p") != password_line("a", "p")  # a fresh salt each time


def test_each_node_writes_only_its_own_topics_and_the_gateway_reads_all() -> None:
    node = next(iter(CITY))
    acl = acl_text(agents_of(CITY), source="city.csv")
    assert f"user {GATEWAY_USER}\ntopic read city/#\n" in acl
    assert f"user {HEALTHCHECK_USER}\ntopic read $SYS/broker/uptime\n" in acl
    assert (
        f"user {node.node}\ntopic write city/agent/{node.node}/status\n"
        f"topic write city/{node.kind.value}/{node.node}/#\n"
    ) in acl
    # Nothing read by a device, nothing written by the gateway, no wildcard levels.
    grants = [line for line in acl.splitlines() if line.startswith("topic")]
    assert sum(g.startswith("topic read") for g in grants) == 2
    assert all("+" not in g and g.count("#") <= 1 for g in grants)


def test_an_agents_file_groups_nodes_under_the_device_that_serves_them(tmp_path: Path) -> None:
    nodes = [d.node for d in CITY]
    (tmp_path / "agents.csv").write_text(
        "agent,node\n" + "".join(f"pi-{i % 2},{n}\n" for i, n in enumerate(nodes))
    )
    agents = agents_of(CITY, load_assignment(tmp_path / "agents.csv"))
    assert [a.id for a in agents] == ["pi-0", "pi-1"]
    assert [d.node for d in agents[0].nodes] == nodes[0::2]
    assert agents[1].topics()[0] == "city/agent/pi-1/status"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("agent,nodes\npi,x\n", "header: expected the columns agent,node"),
        ("agent,node\npi/1,{n}\n", "line 2, agent: expected an edge agent id"),
        ("agent,node\nPi-1,{n}\n", "line 2, agent: expected an edge agent id"),
        ("agent,node\ncityvitals-gateway,{n}\n", "line 2, agent: expected a name no service"),
        ("agent,node\npi-a,{n}\npi-b,{n}\n", "line 3, node: expected each node once"),
        ("agent,node\npi-a\n", "line 2, node: expected a node id of the registry"),
        ("agent,node\npi-a,\n", "line 2, node: expected a node id of the registry"),
    ],
)
def test_a_wrong_agents_file_names_the_line(tmp_path: Path, body: str, message: str) -> None:
    (tmp_path / "agents.csv").write_text(body.format(n=next(iter(CITY)).node))
    with pytest.raises(ConfigError, match=message):
        load_assignment(tmp_path / "agents.csv")


def test_a_node_named_like_a_service_is_refused(tmp_path: Path) -> None:
    """Its own agent, it would share the gateway's password and read all of city/#."""
    first = next(iter(CITY))
    impostor = Registry([msgspec.structs.replace(first, node=GATEWAY_USER), *list(CITY)[1:]])
    with pytest.raises(ConfigError, match="node: expected a name no service has"):
        issue(impostor, tmp_path / "auth")
    assert not (tmp_path / "auth").exists()


def test_every_node_needs_an_agent_and_no_stranger_gets_one() -> None:
    nodes = [d.node for d in CITY]
    with pytest.raises(ConfigError, match="an agent for every node"):
        agents_of(CITY, dict.fromkeys(nodes[1:], "pi"))
    with pytest.raises(ConfigError, match="nodes of the registry"):
        agents_of(CITY, {**dict.fromkeys(nodes, "pi"), "ghost-1": "pi"})


def test_issue_keeps_rotates_and_revokes(tmp_path: Path) -> None:
    out = tmp_path / "auth"
    first = issue(CITY, out, new_password=passwords())
    users = [GATEWAY_USER, HEALTHCHECK_USER, *(d.node for d in CITY)]
    assert first.added == tuple(users)
    node = users[2]
    before = (out / "passwords" / f"{node}.txt").read_text().strip()
    # Again: everyone keeps their password; the hashes still check.
    again = issue(CITY, out, new_password=passwords())
    assert again.kept == tuple(users)
    assert again.added == again.rotated == ()
    lines = dict(line.split(":", 1) for line in (out / "mosquitto.passwd").read_text().split())
    assert checks(f"{node}:{lines[node]}", before)
    # Rotate one: only it changes.
    rotated = issue(CITY, out, rotate=[node], new_password=lambda: "fresh-one")
    assert rotated.rotated == (node,)
    assert (out / "passwords" / f"{node}.txt").read_text().strip() == "fresh-one"
    # A node leaves the registry: revoked, its password gone, not in the ACL.
    fewer = Registry([d for d in CITY if d.node != node])
    gone = issue(fewer, out)
    assert gone.revoked == (node,)
    assert not (out / "passwords" / f"{node}.txt").exists()
    assert f"user {node}\n" not in (out / "mosquitto.acl").read_text()
    assert node not in (out / "mosquitto.passwd").read_text()
    # Nobody else may read a password.
    assert stat.S_IMODE((out / "passwords").stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "passwords" / f"{users[3]}.txt").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "mosquitto.passwd").stat().st_mode) == 0o640
    with pytest.raises(ValueError, match="cannot rotate users that are not issued: ghost"):
        issue(CITY, out, rotate=["ghost"])


def test_issue_writes_the_agents_file_the_gateway_reads(tmp_path: Path) -> None:
    """agents.csv says who speaks for which node exactly as the ACL was issued, by default
    and from an assignment, and reads back as that assignment."""
    issue(CITY, tmp_path / "own")
    assert load_assignment(tmp_path / "own" / "agents.csv") == {d.node: d.node for d in CITY}
    assigned = {d.node: f"pi-{i % 3}" for i, d in enumerate(CITY)}
    issue(CITY, tmp_path / "grouped", assignment=assigned)
    assert load_assignment(tmp_path / "grouped" / "agents.csv") == assigned
    nodes = [d.node for d in CITY]
    said = describe_owners(dict.fromkeys(nodes[1:], "pi"), CITY)
    assert said == f"1 agents for {len(nodes) - 1} nodes, none for 1 ({nodes[0]})"


def test_a_directory_docker_made_for_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "auth" / "agents.csv").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"agents.csv: file: expected a file, not a directory"):
        issue(CITY, tmp_path / "auth")


def test_the_cli_says_what_changed(tmp_path: Path) -> None:
    CITY.dump(tmp_path / "city.csv")
    args = ["city", "credentials", str(tmp_path / "city.csv"), "--out", str(tmp_path / "auth")]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert first.output.startswith(f"{tmp_path / 'auth'}: 12 users; 12 new (cityvitals-gateway,")
    node = next(iter(CITY)).node
    second = CliRunner().invoke(main, [*args, "--rotate", node])
    assert f"1 rotated ({node}); 0 revoked; 11 kept" in second.output
    bad = CliRunner().invoke(main, [*args, "--rotate", "ghost"])
    assert bad.exit_code == 2
    assert "cannot rotate users that are not issued: ghost" in bad.output
