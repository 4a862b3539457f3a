"""The edge agent installs and runs on its own extra: `pip install 'cityvitals[edge]'`."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.edge_support import Recorder, write_config

pytestmark = pytest.mark.integration

REPO = Path(__file__).parents[2]
SERVER_ONLY = {"faust-streaming", "numpy", "scipy", "aiohttp", "amqtt", "rich", "influxdb-client"}


@pytest.fixture(scope="module")
def edge_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with only `cityvitals[edge]` installed (pip's cache keeps it quick)."""
    venv = tmp_path_factory.mktemp("edge-venv")
    # A copy of the sources: pip builds in the source tree, which must stay clean.
    source = tmp_path_factory.mktemp("edge-source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in ("cityvitals", "edge", "gateway", "stream", "alerts"):
        shutil.copytree(
            REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # noqa: S603
    done = subprocess.run(  # noqa: S603 - pip installing this repository
        [str(venv / "bin" / "pip"), "install", "--quiet", f"{source}[edge]"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"pip install '.[edge]' failed:\n{done.stderr[-3000:]}")
    return venv


def test_the_edge_extra_brings_no_server_package(edge_venv: Path):
    listed = subprocess.run(  # noqa: S603
        [str(edge_venv / "bin" / "pip"), "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installed = {line.split("==")[0].lower() for line in listed.splitlines()}
    assert {"aiomqtt", "pyserial", "msgspec", "click", "cityvitals"} <= installed
    assert installed.isdisjoint(SERVER_ONLY)


async def test_the_agent_runs_from_the_edge_install(
    edge_venv: Path, tmp_path: Path, mosquitto: str
):
    """The installed `cityvitals edge` publishes through a real Mosquitto and stops
    cleanly on SIGTERM, with nothing left in its queue."""
    config = write_config(
        tmp_path, mosquitto, nodes=[("wl-0009", "water_level")], limit=50, interval_s=0.01
    )
    async with Recorder(mosquitto) as recorder:
        proc = subprocess.Popen(  # noqa: S603, ASYNC220 - starts at once; waited on in a thread
            [str(edge_venv / "bin" / "cityvitals"), "edge", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=tmp_path,  # not the repository: only the installed package is importable
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        )
        try:
            await recorder.wait_for(lambda: recorder.unique() == 50)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0, err.decode()
    assert sorted(recorder.seqs["wl-0009"]) == list(range(50))
    assert "0 waiting in the queue" in out.decode()
