"""The dashboards as files, for Grafana's file provisioning (deploy/grafana/dashboards).

One JSON file per board, named by its uid, keys sorted and indented so a
change to the code shows as a readable diff of the files. The unit test
checks the committed files are exactly what the code builds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from cityvitals.dashboards.boards import dashboards

__all__ = ["as_json", "write_dashboards"]


def as_json() -> dict[str, dict[str, Any]]:
    """uid -> the board as Grafana's JSON (plain dicts)."""
    return {str(d.uid): json.loads(JSONEncoder().encode(d)) for d in dashboards()}


def write_dashboards(directory: Path) -> list[Path]:
    """Write every board to `directory/<uid>.json`; remove boards the code no longer
    has (other files are left alone). The paths written, in order."""
    directory.mkdir(parents=True, exist_ok=True)
    boards = as_json()
    for stale in directory.glob("cityvitals-*.json"):
        if stale.stem not in boards:
            stale.unlink()
    written = []
    for uid, board in boards.items():
        path = directory / f"{uid}.json"
        path.write_text(json.dumps(board, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    return written
