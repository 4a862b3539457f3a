"""The project as the image installs it: a wheel built from what .dockerignore lets
into the build, installed into a fresh virtualenv, run from outside the repository.

No Docker engine runs here, so this is what the Dockerfile's `pip install .` gives
short of the image: every module and data file is in the wheel, the `cityvitals`
command works from it, the built-in rules load from the installed package (not the
checkout), a whole demo day runs on it, and the compose stack's config passes
`run --check`. The dependencies come from the test virtualenv (added to the new
one's path), so nothing is downloaded but the build backend."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.unit.cityvitals.test_deploy_compose import _moved_config

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("cityvitals", "edge", "gateway", "stream", "alerts")


def _build_context(into: Path) -> Path:
    """What .dockerignore (an allowlist after `*`) lets into the image's build."""
    let_in = [
        line.removeprefix("!").rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    into.mkdir()
    for name in let_in:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, into / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, into / name)
    return into


def _run(*args: str | Path, cwd: Path, timeout: float = 300) -> str:
    # No PYTHONPATH, and a cwd outside the repository: only the install can be imported.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(  # noqa: S603 - our interpreter and our command
        [str(a) for a in args],
        cwd=cwd,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the built wheel, the new virtualenv's bin directory)."""
    work = tmp_path_factory.mktemp("install")
    context = _build_context(work / "context")
    wheels = work / "wheels"
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "-w",
        wheels,
        context,
        cwd=work,
    )
    (wheel,) = wheels.glob("cityvitals-*.whl")
    venv = work / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=work)
    python = venv / "bin" / "python"
    purelib = _run(
        python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=work
    )
    # A path line, not a site dir: the test virtualenv's own .pth files (its editable
    # install of this checkout among them) are not read, so the wheel is what imports.
    Path(purelib.strip(), "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "--quiet",
        "--no-deps",
        wheel,
        cwd=work,
    )
    return wheel, venv / "bin"


def test_the_wheel_holds_every_module_and_data_file(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
    expected = {
        p.relative_to(REPO).as_posix()
        for package in PACKAGES
        for p in (REPO / package).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert expected - names == set()
    assert {n for n in names if not n.startswith(("cityvitals-",))} - expected == set()


def test_the_command_runs_from_the_install(installed: tuple[Path, Path], tmp_path: Path) -> None:
    _, bin_dir = installed
    where = _run(
        bin_dir / "python",
        "-c",
        "import cityvitals, stream.rules.file as f; print(cityvitals.__file__);"
        " print(len(f.default_rules()))",
        cwd=tmp_path,
    ).split()
    assert Path(where[0]).is_relative_to(bin_dir.parent)
    assert int(where[1]) > 0
    assert "Commands:" in _run(bin_dir / "cityvitals", "--help", cwd=tmp_path)


def test_a_demo_day_runs_on_the_install(installed: tuple[Path, Path], tmp_path: Path) -> None:
    _, bin_dir = installed
    out = _run(
        bin_dir / "cityvitals",
        "demo",
        "--duration",
        "0",
        "--nodes",
        "20",
        "--districts",
        "2",
        "--data-dir",
        tmp_path / "data",
        cwd=tmp_path,
    )
    assert "0 lost" in out
    assert "incident check" in out
    assert "MISSED" not in out


def test_the_stack_config_passes_run_check_on_the_install(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    _, bin_dir = installed
    config, _ = _moved_config(tmp_path)
    out = _run(bin_dir / "cityvitals", "run", "--config", config, "--check", cwd=tmp_path)
    assert "roles alerts, gateway, stream; built-in rules" in out
