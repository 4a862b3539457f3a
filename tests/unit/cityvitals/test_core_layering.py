"""Layering: the core and the edge import no server frameworks, so the edge install stays light."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import cityvitals

REPO = Path(__file__).resolve().parents[3]
HEAVY = ("faust", "aiomqtt", "amqtt", "aiokafka", "numpy", "scipy", "aiohttp")
# Every module of the core package, found rather than listed, so a new one is
# held to the rule too. Only the embedded composition root may import it all.
CORE = (
    "cityvitals",
    *sorted(
        m.name
        for m in pkgutil.walk_packages(cityvitals.__path__, "cityvitals.")
        if not m.name.startswith("cityvitals.embedded")
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


@pytest.mark.parametrize("module", ["edge.buffer", "edge.simulate"])
def test_edge_modules_import_no_numpy_or_faust(module):
    """The edge buffer and simulator load no numpy or faust (nor the other server packages)."""
    assert imported_heavy((module,), HEAVY) == []


def test_probe_detects_a_heavy_import():
    """The probe is not vacuous: importing msgspec is reported when msgspec counts as heavy."""
    assert "msgspec" in imported_heavy(("cityvitals.contract",), ("msgspec",))
