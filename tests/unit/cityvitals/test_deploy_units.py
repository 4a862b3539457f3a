"""The server roles' systemd template unit is valid as systemd reads it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).parents[3] / "deploy" / "systemd" / "cityvitals@.service"


def test_the_role_template_unit_is_valid(tmp_path: Path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # An instance of the template, pointing at an executable that exists here.
    unit = tmp_path / "cityvitals@gateway.service"
    unit.write_text(UNIT.read_text().replace("/opt/cityvitals/bin/cityvitals", "/bin/true"))
    done = subprocess.run(  # noqa: S603 - a fixed tool on our own file
        [analyze, "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == ""
