"""The device registry: which node is what, and where.

A CSV file, one node per line, with the header::

    node,kind,lat,lon,district,street,grid,unit

The gateway enriches every reading from it, so moving a node to another
district or unit is an edit here, not a firmware change. Loading is strict:
any bad line stops the load with an error naming the file, line and column.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from cityvitals.contract import NodeId, Placement
from cityvitals.errors import ConfigError
from cityvitals.kinds import Kind

COLUMNS = ("node", "kind", "lat", "lon", "district", "street", "grid", "unit")
_NODE_ID = msgspec.json.Decoder(NodeId)


class Device(msgspec.Struct, frozen=True):
    node: str
    kind: Kind
    lat: float
    lon: float
    district: str
    street: str
    grid: str
    unit: str

    @property
    def placement(self) -> Placement:
        return Placement(
            district=self.district,
            street=self.street,
            grid=self.grid,
            unit=self.unit,
            lat=self.lat,
            lon=self.lon,
        )


class Registry:
    """An immutable map of node id → `Device`, with placement looked up once."""

    def __init__(self, devices: Iterable[Device]) -> None:
        self._devices: dict[str, Device] = {}
        for device in devices:
            if device.node in self._devices:
                raise ValueError(f"node {device.node!r} is registered twice")
            self._devices[device.node] = device
        self._placements = {n: d.placement for n, d in self._devices.items()}

    def __len__(self) -> int:
        return len(self._devices)

    def __iter__(self) -> Iterator[Device]:
        return iter(self._devices.values())

    def __contains__(self, node: object) -> bool:
        return node in self._devices

    def get(self, node: str) -> Device | None:
        return self._devices.get(node)

    def placement(self, node: str) -> Placement:
        return self._placements[node]

    def by_kind(self, kind: Kind) -> list[Device]:
        return [d for d in self._devices.values() if d.kind is kind]

    def districts(self) -> list[str]:
        return sorted({d.district for d in self._devices.values()})

    # -- files ---------------------------------------------------------------

    @classmethod
    def load(cls, path: Path | str) -> Registry:
        path = Path(path)
        try:
            # utf-8-sig: spreadsheets often save CSV with a byte-order mark.
            text = path.read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise ConfigError(path, "file", f"a readable registry CSV ({exc.strerror})") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(
                path, f"byte {exc.start}", "UTF-8 text (save the CSV as UTF-8)"
            ) from exc
        return cls.parse(text, path=path)

    @classmethod
    def parse(cls, text: str, *, path: Path | str = "<registry>") -> Registry:
        reader = csv.DictReader(io.StringIO(text))
        header = tuple(reader.fieldnames or ())
        if header != COLUMNS:
            raise ConfigError(path, "line 1 (header)", ",".join(COLUMNS), found=",".join(header))
        devices: list[Device] = []
        seen: dict[str, int] = {}
        for row in reader:
            line = reader.line_num
            device = _parse_row(row, path, line)
            if device.node in seen:
                raise ConfigError(
                    path,
                    f"line {line}, column node",
                    f"a node id not used before (first on line {seen[device.node]})",
                    found=device.node,
                )
            seen[device.node] = line
            devices.append(device)
        if not devices:
            raise ConfigError(path, "rows", "at least one device")
        return cls(devices)

    def dump(self, path: Path | str) -> None:
        Path(path).write_text(self.to_csv(), encoding="utf-8")

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        for d in self._devices.values():
            writer.writerow(
                (
                    d.node,
                    d.kind.value,
                    f"{d.lat:.6f}",
                    f"{d.lon:.6f}",
                    d.district,
                    d.street,
                    d.grid,
                    d.unit,
                )
            )
        return out.getvalue()


def _parse_row(row: dict[str | None, Any], path: Path | str, line: int) -> Device:
    if None in row:  # DictReader files surplus fields under None
        raise ConfigError(
            path,
            f"line {line}",
            f"{len(COLUMNS)} columns ({','.join(COLUMNS)})",
            found=f"{len(COLUMNS) + len(row[None])} columns",
        )

    def field(name: str) -> str:
        value = str(row.get(name) or "").strip()
        if not value:
            raise ConfigError(path, f"line {line}, column {name}", "a non-empty value")
        return value

    def coordinate(name: str, low: float, high: float) -> float:
        text = field(name)
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not low <= value <= high:
            raise ConfigError(
                path, f"line {line}, column {name}", f"a number from {low} to {high}", found=text
            )
        return value

    node = field("node")
    try:
        _NODE_ID.decode(msgspec.json.encode(node))
    except msgspec.ValidationError as exc:
        raise ConfigError(
            path,
            f"line {line}, column node",
            "1-64 of a-z, 0-9, '-' or '_', starting with a letter or digit",
            found=node,
        ) from exc
    kind_text = field("kind")
    try:
        kind = Kind(kind_text)
    except ValueError as exc:
        raise ConfigError(
            path,
            f"line {line}, column kind",
            f"one of {', '.join(k.value for k in Kind)}",
            found=kind_text,
        ) from exc
    return Device(
        node=node,
        kind=kind,
        lat=coordinate("lat", -90.0, 90.0),
        lon=coordinate("lon", -180.0, 180.0),
        district=field("district"),
        street=field("street"),
        grid=field("grid"),
        unit=field("unit"),
    )
