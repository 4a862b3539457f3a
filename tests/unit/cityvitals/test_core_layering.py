"""Layering: the core and the edge import no server frameworks, so the edge install stays light."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import cityvitals
import edge

REPO = Path(__file__).resolve().parents[3]
HEAVY = ("faust", "aiomqtt", "amqtt", "aiokafka", "numpy", "scipy", "aiohttp")
# Every module of the core package, found rather than listed, so a new one is
# held to the rule too. Only the two composition roots (embedded and
# distributed) may import it all, and the dashboards, which take their
# threshold bands from the stream's rules (server side only, like the roots).
CORE = (
    "cityvitals",
    *sorted(
        m.name
        for m in pkgutil.walk_packages(cityvitals.__path__, "cityvitals.")
        if not m.name.startswith(
            ("cityvitals.embedded", "cityvitals.distributed", "cityvitals.dashboards")
        )
    ),
)

PROBE = """
import importlib, json, sys
for name in sys.argv[1].split(","):
    importlib.import_module(name)
heavy = sys.argv[2].split(",")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
"""


def imported_heavy(modules: tuple[str, ...], heavy: tuple[str, ...]) -> list[str]:
    """Import `modules` in a fresh interpreter; return which `heavy` packages got loaded."""
    result = subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
        [sys.executable, "-c", PROBE, ",".join(modules), ",".join(heavy)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_core_imports_no_heavy_dependency():
    """Importing every core module loads none of faust, aiomqtt, amqtt, aiokafka, numpy, scipy,
    aiohttp."""
    assert imported_heavy(CORE, HEAVY) == []


#: What `pip install 'cityvitals[edge]'` does not bring: the server side.
SERVER_ONLY = ("faust", "amqtt", "aiokafka", "numpy", "scipy", "aiohttp", "rich", "influxdb_client")
EDGE = tuple(sorted(m.name for m in pkgutil.walk_packages(edge.__path__, "edge.")))


@pytest.mark.parametrize("module", EDGE)
def test_edge_modules_import_nothing_the_edge_install_lacks(module):
    """Every edge module (agent, queue, serial, simulator...) runs on the edge extra alone:
    no numpy, faust, aiohttp or the other server packages."""
    assert imported_heavy((module,), SERVER_ONLY) == []


def test_the_edge_command_runs_on_the_edge_install():
    """`cityvitals edge --check` loads only what the edge extra installs."""
    probe = (
        "import sys; from click.testing import CliRunner; from cityvitals.cli import main; "
        "r = CliRunner().invoke(main, ['edge', '--config', 'deploy/edge/edge.toml', '--check']); "
        "print(r.output, file=sys.stderr); assert r.exit_code == 0, r.output; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {SERVER_ONLY!r}))"
    )
    result = subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_probe_detects_a_heavy_import():
    """The probe is not vacuous: importing msgspec is reported when msgspec counts as heavy."""
    assert "msgspec" in imported_heavy(("cityvitals.contract",), ("msgspec",))
