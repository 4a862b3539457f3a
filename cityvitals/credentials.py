"""Broker credentials and the ACL, issued from the registry: who may publish what.

Each edge agent (a Raspberry Pi or a serial gateway: the *device* that holds
an MQTT connection) gets a user and a random password, and an ACL that lets
it write only its own nodes' topics (`city/<kind>/<node>/#`) and its own
status topic (`city/agent/<agent>/status`), and read nothing. The gateway
gets a user that reads everything under `city/`. Mosquitto denies whatever
the ACL does not grant, so one node cannot publish as another, and no
device can read the city's data. A third user, `cityvitals-healthcheck`,
may read only `$SYS/broker/uptime` (retained, so a health probe gets an
answer at once; deploy/compose.yaml's broker healthcheck uses it).

By default every node of the registry is its own agent (user = node id);
`assignment` maps nodes to the agents that serve them (an agents CSV with
the columns `agent,node`).

`issue` writes, into one directory:

- `passwords/<user>.txt`, mode 0600: the password, to copy to the device
  (its edge.toml `password_file`) or to the service. Kept across runs: an
  existing user keeps its password unless it is in `rotate`.
- `mosquitto.passwd`: Mosquitto's password file (PBKDF2-SHA512 hashes, the
  `$7$` format of Mosquitto 2), for `password_file`.
- `mosquitto.acl`: for `acl_file`.
- `agents.csv` (`agent,node`): who speaks for which node, as issued, for
  the gateway's `[gateway] agents_file`. The ACL stops an agent publishing
  *as* another; with this file the gateway also ignores an agent's status
  when it speaks for another's nodes (it could claim them offline).

Users no longer in the registry (or the assignment) lose their password
file and their lines: their credentials are revoked. Mosquitto reads both
files again on SIGHUP, so issuing and reloading needs no broker restart.

>>> line = password_line("wl-0001", "s3cret", salt=bytes(12))
>>> line.split("$")[:3]
['wl-0001:', '7', '101']
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cityvitals.errors import ConfigError
from cityvitals.registry import Device, Registry
from cityvitals.topics import ROOT, agent_status_topic

__all__ = [
    "GATEWAY_USER",
    "HEALTHCHECK_USER",
    "Agent",
    "Issued",
    "acl_text",
    "agents_csv",
    "agents_of",
    "describe_owners",
    "issue",
    "load_assignment",
    "password_line",
]

#: The gateway's user: reads every node's topics (its shared subscription included).
GATEWAY_USER: Final = "cityvitals-gateway"
#: The broker's health probe: reads its uptime and nothing else.
HEALTHCHECK_USER: Final = "cityvitals-healthcheck"
#: Mosquitto 2's default for `mosquitto_passwd`: PBKDF2-SHA512, 101 rounds, 12-byte salt.
_ITERATIONS: Final = 101
_SALT_BYTES: Final = 12
#: What a user name may be: an edge agent's id (edge.toml `[agent] id`, also a topic
#: level and a file name), so lowercase, and no `/ + #`, dots or spaces.
_USER: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")
#: A node id (the contract's NodeId): the same syntax, being a topic level too.
_NODE: Final = _USER
#: Names only the services may have: a device named so would get their rights.
RESERVED: Final = frozenset({GATEWAY_USER, HEALTHCHECK_USER})


@dataclass(frozen=True, slots=True)
class Agent:
    """One device on the broker and the nodes it publishes for."""

    id: str
    nodes: tuple[Device, ...]

    def topics(self) -> list[str]:
        """What it may write: its nodes' topics and its own status."""
        return [agent_status_topic(self.id)] + [
            f"{ROOT}/{d.kind.value}/{d.node}/#" for d in self.nodes
        ]


@dataclass(frozen=True, slots=True)
class Issued:
    """What `issue` did, user by user."""

    directory: Path
    added: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    rotated: tuple[str, ...] = ()
    revoked: tuple[str, ...] = ()
    users: tuple[str, ...] = field(default=(), repr=False)


def password_line(
    user: str, password: str, *, salt: bytes | None = None, iterations: int = _ITERATIONS
) -> str:
    """One line of a Mosquitto 2 password file: `user:$7$<rounds>$<salt>$<hash>`."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"{user}:$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def load_assignment(path: Path) -> dict[str, str]:
    """node -> agent from a CSV with the columns `agent,node`; `ConfigError` naming the
    line that is wrong."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(path, "file", f"a readable agents CSV ({exc.strerror})") from exc
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or not {"agent", "node"} <= set(reader.fieldnames):
        raise ConfigError(path, "header", "the columns agent,node", found=reader.fieldnames)
    out: dict[str, str] = {}
    for number, row in enumerate(reader, 2):
        agent, node = (row["agent"] or "").strip(), (row["node"] or "").strip()
        if not _USER.match(agent):
            raise ConfigError(
                path,
                f"line {number}, agent",
                "an edge agent id: lowercase letters, digits, '-' or '_'",
                found=agent,
            )
        if agent in RESERVED:
            raise ConfigError(path, f"line {number}, agent", "a name no service has", found=agent)
        if not _NODE.match(node):
            raise ConfigError(path, f"line {number}, node", "a node id of the registry", found=node)
        if node in out and out[node] != agent:
            raise ConfigError(
                path, f"line {number}, node", f"each node once (already {out[node]}'s)", found=node
            )
        out[node] = agent
    return out


def agents_of(
    registry: Registry, assignment: Mapping[str, str] | None = None, *, source: Path | None = None
) -> list[Agent]:
    """The agents of `registry`: one per node, or as `assignment` groups them (every
    node of the registry must be assigned, and nothing else)."""
    if assignment is None:
        return [Agent(d.node, (d,)) for d in registry]
    where = source or Path("<agents>")
    known = {d.node for d in registry}
    strangers = sorted(set(assignment) - known)
    if strangers:
        raise ConfigError(where, "node", "nodes of the registry", found=strangers[:5])
    missing = sorted(known - set(assignment))
    if missing:
        raise ConfigError(where, "node", "an agent for every node", found=f"none for {missing[:5]}")
    grouped: dict[str, list[Device]] = {}
    for d in registry:
        grouped.setdefault(assignment[d.node], []).append(d)
    return [Agent(agent, tuple(nodes)) for agent, nodes in sorted(grouped.items())]


def acl_text(agents: Sequence[Agent], *, source: str) -> str:
    """Mosquitto's ACL: the gateway reads `city/#`; each agent writes only its own."""
    lines = [
        f"# Issued by `cityvitals city credentials` from {source}; issue again rather",
        "# than edit: what is not granted here is denied.",
        "",
        f"user {GATEWAY_USER}",
        f"topic read {ROOT}/#",
        "",
        f"user {HEALTHCHECK_USER}",
        "topic read $SYS/broker/uptime",
    ]
    for agent in agents:
        lines += ["", f"user {agent.id}"] + [f"topic write {t}" for t in agent.topics()]
    return "\n".join(lines) + "\n"


def agents_csv(agents: Sequence[Agent]) -> str:
    """The agents file `load_assignment` reads: one `agent,node` line per node."""
    rows = [f"{agent.id},{d.node}" for agent in agents for d in agent.nodes]
    return "\n".join(["agent,node", *rows]) + "\n"


def describe_owners(owners: Mapping[str, str], registry: Registry) -> str:
    """One line for the operator: how many agents speak for how many nodes, and the
    registry's nodes nobody speaks for (their agents' presence claims are ignored)."""
    nodes = {d.node for d in registry}
    unowned = sorted(nodes - set(owners))
    said = f"{len(set(owners.values()))} agents for {len(nodes) - len(unowned)} nodes"
    if unowned:
        more = "..." if len(unowned) > 5 else ""
        said += f", none for {len(unowned)} ({', '.join(unowned[:5])}{more})"
    return said


def issue(
    registry: Registry,
    directory: Path,
    *,
    assignment: Mapping[str, str] | None = None,
    rotate: Iterable[str] = (),
    source: str = "the registry",
    new_password: Callable[[], str] = lambda: secrets.token_urlsafe(24),
) -> Issued:
    """Write the password files, `mosquitto.passwd` and `mosquitto.acl` into
    `directory` (see the module doc); what changed, user by user."""
    agents = agents_of(registry, assignment)
    taken = sorted(a.id for a in agents if a.id in RESERVED)
    if taken:
        # A node (its own agent) named like a service would get the service's
        # password and rights: refuse rather than merge them.
        raise ConfigError(Path(source), "node", "a name no service has", found=taken)
    users = [GATEWAY_USER, HEALTHCHECK_USER, *(a.id for a in agents)]
    bad = [u for u in users if not _USER.match(u)]
    if bad:
        raise ConfigError(
            Path(source),
            "agent",
            "edge agent ids: lowercase letters, digits, '-' or '_'",
            found=bad[:5],
        )
    for name in ("mosquitto.passwd", "mosquitto.acl", "agents.csv"):
        if (directory / name).is_dir():
            # Docker makes an empty directory where a bind-mounted file is missing.
            raise ConfigError(
                directory / name,
                "file",
                "a file, not a directory (Docker makes one when a container mounts a file"
                " that is not there yet): remove it (rmdir) and issue again",
            )
    rotating = set(rotate)
    unknown = sorted(rotating - set(users))
    if unknown:
        raise ValueError(f"cannot rotate users that are not issued: {', '.join(unknown)}")
    keys = directory / "passwords"
    keys.mkdir(parents=True, exist_ok=True)
    os.chmod(keys, 0o700)
    added: list[str] = []
    kept: list[str] = []
    rotated: list[str] = []
    lines: list[str] = []
    for user in users:
        path = keys / f"{user}.txt"
        if path.exists() and user not in rotating:
            password = path.read_text(encoding="utf-8").strip()
            kept.append(user)
        else:
            (rotated if path.exists() else added).append(user)
            password = new_password()
            _write_private(path, password + "\n")
        lines.append(password_line(user, password))
    revoked = sorted(p.stem for p in keys.glob("*.txt") if p.stem not in set(users))
    for user in revoked:
        (keys / f"{user}.txt").unlink()
    _write_private(directory / "mosquitto.passwd", "\n".join(lines) + "\n", mode=0o640)
    (directory / "mosquitto.acl").write_text(acl_text(agents, source=source), encoding="utf-8")
    (directory / "agents.csv").write_text(agents_csv(agents), encoding="utf-8")
    return Issued(
        directory,
        added=tuple(added),
        kept=tuple(kept),
        rotated=tuple(rotated),
        revoked=tuple(revoked),
        users=tuple(users),
    )


def _write_private(path: Path, text: str, *, mode: int = 0o600) -> None:
    """Write `text` so that no moment exists where others may read it."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
