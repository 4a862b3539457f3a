"""Strict TOML configuration files: msgspec structs over tomllib, one error per mistake.

A config file is described by a tree of frozen `Section` structs (unknown keys
are errors). `Schema(root).load(path)` reads it and turns any mistake - a TOML
syntax error, an unknown or missing key, a wrong type, a value out of range -
into one `ConfigError` naming the file, the key path (`alerts.webhook[1].url`)
and what was expected. `edge.config` and `cityvitals.settings` share it, and
with it the `[mqtt]` table (`BrokerSection`, read by `broker_settings`).

>>> import tempfile, pathlib
>>> class Example(Section, frozen=True):
...     mqtt: BrokerSection
>>> with tempfile.TemporaryDirectory() as d:
...     path = pathlib.Path(d) / "example.toml"
...     _ = path.write_text('[mqtt]\\nurl = "mqtt://10.0.0.5"\\nkeepalive = 1\\n')
...     try:
...         Schema(Example, describe="an example file").load(path)
...     except ConfigError as exc:
...         print(str(exc).replace(d, "DIR"))
DIR/example.toml: mqtt.keepalive: expected int >= 5, found 1
"""

from __future__ import annotations

import re
import ssl
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar
from urllib.parse import urlsplit

import msgspec

from cityvitals.config import BrokerSettings, BrokerUrlError
from cityvitals.errors import ConfigError

__all__ = [
    "BrokerSection",
    "Schema",
    "Section",
    "bad_entry",
    "broker_settings",
    "join_key",
    "lookup",
    "read_file",
    "read_toml",
    "resolve_path",
    "sections_of",
    "tls_context",
    "variants_of",
]

T = TypeVar("T", bound=msgspec.Struct)


class Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A table of a config file: unknown keys are errors, values are immutable."""


class BrokerSection(Section, frozen=True):
    """The `[mqtt]` table: how to reach the MQTT broker. See `broker_settings`."""

    #: mqtt://[user:pass@]host[:port] or mqtts://... (TLS, default port 8883).
    url: str
    username: str | None = None
    password: str | None = None
    #: A file holding the password (relative to the config file); not with `password`.
    password_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive: Annotated[int, msgspec.Meta(ge=5, le=3600)] = 30


# -- reading a file -----------------------------------------------------------


def read_toml(path: Path, describe: str) -> dict[str, Any]:
    """Parse the TOML file at `path`; a missing, unreadable or malformed file is a
    `ConfigError` (`describe` says what the file should be: "an edge.toml file")."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, "(file)", f"{describe}; it does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "(file)", f"a readable UTF-8 file ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "(syntax)", f"valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(
            path, "(syntax)", "valid TOML: arrays or tables nested too deeply"
        ) from None


def sections_of(root: type[msgspec.Struct]) -> dict[str, type[msgspec.Struct]]:
    """Every struct in `root`'s tree by its key path: "" for the root, `node[]` for
    the tables of an array, `node[].simulate` for a table inside them. Where a key
    holds one of several structs (a tagged union), the first is given here;
    `variants_of` has them all."""
    return {key: structs[0] for key, structs in variants_of(root).items()}


def variants_of(root: type[msgspec.Struct]) -> dict[str, list[type[msgspec.Struct]]]:
    """Like `sections_of`, with every struct a key path may hold."""
    found: dict[str, list[type[msgspec.Struct]]] = {}

    def walk(key: str, kind: msgspec.inspect.Type) -> None:
        if isinstance(kind, msgspec.inspect.StructType):
            if kind.cls in found.get(key, []):
                return
            found.setdefault(key, []).append(kind.cls)
            for field in kind.fields:
                walk(join_key(key, field.name), field.type)
        elif isinstance(kind, msgspec.inspect.UnionType):
            for member in kind.types:
                walk(key, member)
        elif isinstance(kind, msgspec.inspect.ListType | msgspec.inspect.VarTupleType):
            walk(f"{key}[]", kind.item_type)

    walk("", msgspec.inspect.type_info(root))
    return found


class Schema(Generic[T]):
    """How to read one kind of config file whose top level is the struct `root`.

    `describe` completes "expected ..." when the file is missing ("an edge.toml
    file"). `hints` replace msgspec's wording of a type or pattern mismatch by
    key path, with `[]` for any index: `{"node[].id": "1 to 64 lowercase ..."}`.
    """

    def __init__(
        self, root: type[T], *, describe: str, hints: Mapping[str, str] | None = None
    ) -> None:
        self.root = root
        self.describe = describe
        self.hints: Mapping[str, str] = dict(hints or {})
        self.sections = sections_of(root)
        self.variants = variants_of(root)

    def load(self, path: Path) -> T:
        """Read and check the file; any mistake is one `ConfigError`."""
        return self.convert(path, read_toml(path, self.describe))

    def convert(self, path: Path, data: dict[str, Any]) -> T:
        """Check parsed TOML `data` (from the file at `path`) against the schema."""
        try:
            return msgspec.convert(data, self.root)
        except msgspec.ValidationError as exc:
            raise self.explain(path, data, str(exc)) from None

    def explain(self, path: Path, data: Any, message: str) -> ConfigError:
        """Turn msgspec's `message` about `data` into file / key / expectation."""
        match = _AT.match(message)
        what, where, in_key = (
            (match["what"], match["where"] or "", match["in_key"]) if match else (message, "", None)
        )
        key = where.lstrip(".")
        section = _generic(key)
        if in_key:
            return self._bad_key(path, data, key, what)
        if m := re.match(r"Object contains unknown field `(.+)`", what, re.DOTALL):
            known = ", ".join(self.fields(section))
            return ConfigError(path, join_key(key, m[1]), f"one of the known keys: {known}")
        if m := re.match(r"Object missing required field `(.+)`", what, re.DOTALL):
            return ConfigError(path, join_key(key, m[1]), "a value (this key is required)")
        found = lookup(data, key)
        if key.endswith("[...]"):
            key, found = bad_entry(data, key.removesuffix("[...]"), what)
        if what.startswith("Invalid enum value"):
            choices = ", ".join(_choices(self.field_type(section)))
            return ConfigError(path, key, f"one of {choices}", found=found)
        if m := re.match(r"Expected `(.+?)`(?:, got `(.+)`)?(.*)$", what, re.DOTALL):
            expected = self.hints.get(_generic(key), m[1] + m[3])
            return ConfigError(path, key or "(top level)", expected, found=found)
        return ConfigError(path, key or "(top level)", what, found=found)

    def fields(self, section: str) -> list[str]:
        """The keys the table at `section` (a key path with `[]`) may hold, sorted."""
        return sorted({f for s in self.variants.get(section, []) for f in s.__struct_fields__})

    def field_type(self, key: str) -> msgspec.inspect.Type | None:
        """The declared type at `key` (a key path with `[]`); None if not a field."""
        parent, _, name = key.rpartition(".")
        for struct in self.variants.get(parent, []):
            info = msgspec.inspect.type_info(struct)
            fields = info.fields if isinstance(info, msgspec.inspect.StructType) else ()
            found = next((f.type for f in fields if f.name == name), None)
            if found is not None:
                return found
        return None

    def _bad_key(self, path: Path, data: Any, key: str, what: str) -> ConfigError:
        """A table whose *keys* are checked (such as kinds): name the bad key."""
        kind = self.field_type(_generic(key))
        choices = _choices(kind.key_type) if isinstance(kind, msgspec.inspect.DictType) else []
        table = lookup(data, key)
        names = list(table) if isinstance(table, dict) else []
        if choices:
            bad = next((n for n in names if n not in choices), None)
            return ConfigError(path, key, f"keys one of {', '.join(choices)}", found=bad)
        return ConfigError(path, key, f"valid keys ({what})")


_AT = re.compile(r"^(?P<what>.*?)(?: - at (?P<in_key>`key` in )?`\$(?P<where>[^`]*)`)?$", re.DOTALL)
_BOUND = re.compile(r"(>=|<=|>|<) (-?(?:inf|[0-9][0-9.e+-]*))")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _generic(key: str) -> str:
    """`node[2].simulate` -> `node[].simulate`: the path of the schema, not the file."""
    return re.sub(r"\[\d+\]", "[]", key)


def _choices(kind: msgspec.inspect.Type | None) -> list[str]:
    """The allowed values of an enum or literal type (or of one in a union)."""
    if isinstance(kind, msgspec.inspect.UnionType):
        return sorted(v for member in kind.types for v in _choices(member))
    if isinstance(kind, msgspec.inspect.EnumType):
        return sorted(str(getattr(m, "value", m)) for m in kind.cls)
    if isinstance(kind, msgspec.inspect.LiteralType):
        return sorted(map(str, kind.values))
    return []


def bad_entry(data: Any, key: str, what: str) -> tuple[str, Any]:
    """msgspec names a table's values only as `[...]`; find the entry it means:
    the first that is not a number, or that breaks the bound `what` names."""
    table = lookup(data, key)
    if isinstance(table, dict):
        for name, value in table.items():
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if (
                not number
                or ("`int`" in what and isinstance(value, float))
                or _breaks_bound(value, what)
            ):
                return f"{key}.{_quote(name)}", value
    return key, table


def _breaks_bound(value: float, what: str) -> bool:
    match = _BOUND.search(what)
    if match is None:
        return False
    try:
        bound = float(match[2])
    except ValueError:
        return False
    holds = {
        ">=": value >= bound,
        ">": value > bound,
        "<=": value <= bound,
        "<": value < bound,
    }[match[1]]
    return not holds


def _quote(name: str) -> str:
    """`name` as a TOML quoted key: printable characters as they are, others escaped."""

    def char(c: str) -> str:
        if c in '"\\':
            return "\\" + c
        if c.isprintable():
            return c
        return f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}"

    return '"' + "".join(map(char, name)) + '"'


def join_key(key: str, name: str) -> str:
    """`join_key("mqtt", "url")` is `mqtt.url`; a name that is not a bare TOML key
    is quoted, so the path stays one line."""
    if not _BARE_KEY.fullmatch(name):
        name = _quote(name)
    return f"{key}.{name}" if key else name


def lookup(data: Any, key: str) -> Any:
    """The value at key path `key` (`node[2].kind`) in parsed TOML; None if absent."""
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", key):
        try:
            data = data[int(part[1:-1])] if part.startswith("[") else data[part]
        except (KeyError, IndexError, TypeError, ValueError):
            return None
    return data


# -- files named by a config file ---------------------------------------------


def resolve_path(path: Path, key: str, name: str, *, base: Path | None = None) -> Path:
    """`name` (the value at `key`) as an absolute path, relative to `base`
    (default: the directory of the config file at `path`)."""
    try:
        return ((path.parent if base is None else base) / name).resolve()
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(path, key, f"a usable file path ({exc})", found=name) from None


def read_file(path: Path, key: str, name: str) -> str:
    """The text of the file `name` (the value at `key`), relative to the config file."""
    try:
        return resolve_path(path, key, name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(path, key, f"a readable file ({exc})") from None


# -- the [mqtt] table -----------------------------------------------------------


def broker_settings(path: Path, mqtt: BrokerSection, key: str = "mqtt") -> BrokerSettings:
    """Ready-made broker settings from the table at `key` of the file at `path`:
    the url, credentials (or a password file) and TLS files, each checked."""
    try:
        base = BrokerSettings.from_url(mqtt.url)
        explicit_port = urlsplit(mqtt.url).port
    except BrokerUrlError as exc:
        raise ConfigError(path, f"{key}.url", str(exc).removeprefix("expected ")) from None
    except ValueError as exc:  # urlsplit: "Invalid IPv6 URL"
        raise ConfigError(
            path, f"{key}.url", f"mqtt://host[:port] or mqtts://host[:port] ({exc})", found=mqtt.url
        ) from None
    if explicit_port == 0:
        raise ConfigError(
            path, f"{key}.url", "mqtt://host[:port] with a port 1..65535", found=mqtt.url
        )
    if mqtt.password is not None and mqtt.password_file is not None:
        raise ConfigError(path, f"{key}.password_file", "password or password_file, not both")
    password = mqtt.password or base.password
    if mqtt.password_file is not None:
        password = read_file(path, f"{key}.password_file", mqtt.password_file).strip()
    tls = base.tls
    if mqtt.ca_file or mqtt.cert_file or mqtt.key_file:
        if (mqtt.cert_file is None) != (mqtt.key_file is None):
            missing = f"{key}.key_file" if mqtt.key_file is None else f"{key}.cert_file"
            raise ConfigError(path, missing, "cert_file and key_file together")
        if base.tls is None:
            raise ConfigError(
                path, f"{key}.url", "an mqtts:// url when TLS files are given", found=mqtt.url
            )
        tls = tls_context(path, mqtt, key)
    return BrokerSettings(
        host=base.host,
        port=base.port,
        username=mqtt.username or base.username,
        password=password,
        tls=tls,
        keepalive=mqtt.keepalive,
    )


def tls_context(path: Path, mqtt: BrokerSection, key: str = "mqtt") -> ssl.SSLContext:
    """A client TLS context trusting `ca_file` (default: the system's CAs), with a
    client certificate if `cert_file` and `key_file` are given."""
    try:
        cafile = str(resolve_path(path, f"{key}.ca_file", mqtt.ca_file)) if mqtt.ca_file else None
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(path, f"{key}.ca_file", f"a readable PEM CA bundle ({exc})") from None
    if mqtt.cert_file and mqtt.key_file:
        try:
            context.load_cert_chain(
                resolve_path(path, f"{key}.cert_file", mqtt.cert_file),
                resolve_path(path, f"{key}.key_file", mqtt.key_file),
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                path, f"{key}.cert_file", f"a readable PEM certificate and key ({exc})"
            ) from None
    return context
