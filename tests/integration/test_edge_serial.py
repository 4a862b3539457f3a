"""Sensor nodes on a real pseudo-terminal, through the agent, to a real Mosquitto."""

from __future__ import annotations

import asyncio
import os
import tty
from pathlib import Path

import pytest

from cityvitals.kinds import Kind
from edge.agent import EdgeAgent
from edge.config import load_edge_config
from edge.frames import EventFrame, ReadingFrame, SettingFrame, decode_frame, encode_frame
from tests.integration.edge_support import Recorder

pytestmark = pytest.mark.integration


def config(tmp_path: Path, broker: str, port: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(
        f"""
[agent]
id = "pi-serial"
data_dir = "data"
heartbeat_s = 0.2
[mqtt]
url = "{broker}"
reconnect_max_s = 0.5
[report]
interval_s = 60
fast_interval_s = 10
[[serial]]
name = "pty0"
port = "{port}"
[[node]]
id = "wl-0001"
kind = "water_level"
serial = "pty0"
[[node]]
id = "mh-0001"
kind = "manhole"
serial = "pty0"
"""
    )
    return path


def reading(node: str, kind: Kind, seq: int, **metrics: float) -> bytes:
    return encode_frame(ReadingFrame(node, kind, seq, metrics, battery_pct=88.0))


async def read_settings(master: int, want: int) -> list[SettingFrame]:
    """Setting frames the agent wrote to the line, read from the pty's other end."""
    buffer = b""
    frames: list[SettingFrame] = []
    async with asyncio.timeout(10):
        while len(frames) < want:
            chunk = await asyncio.to_thread(os.read, master, 4096)
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                frame = decode_frame(line + b"\n")
                assert isinstance(frame, SettingFrame)
                frames.append(frame)
    return frames


async def test_serial_nodes_report_by_exception_raise_alarms_and_get_told_to_sample_fast(
    tmp_path: Path, mosquitto: str
):
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    try:
        path = config(tmp_path, mosquitto, os.ttyname(slave))
        agent = EdgeAgent(load_edge_config(path))
        stop = asyncio.Event()
        async with Recorder(mosquitto) as recorder:
            run = asyncio.create_task(agent.run(stop))
            # On start the agent tells every node its normal interval.
            start = await read_settings(master, 2)
            assert {(f.node, f.settings["interval"]) for f in start} == {
                ("wl-0001", 60.0),
                ("mh-0001", 60.0),
            }
            line = b"".join(
                [
                    reading("wl-0001", Kind.WATER_LEVEL, 1, depth_cm=0.4),
                    b"\x00\xff noise on the line \r\n",
                    reading("wl-0001", Kind.WATER_LEVEL, 2, depth_cm=0.5),  # within deadband
                    reading("wl-0001", Kind.WATER_LEVEL, 3, depth_cm=1.9)[:-6] + b"0000\r\n",
                    reading("wl-0001", Kind.WATER_LEVEL, 5, depth_cm=9.1),  # near: sample fast
                    encode_frame(EventFrame("mh-0001", Kind.MANHOLE, 7, "cover_switch")),
                    reading("xx-0042", Kind.SMOKE, 1, temperature_c=21.0),  # not in edge.toml
                ]
            )
            os.write(master, line)
            fast = await read_settings(master, 1)
            assert (fast[0].node, fast[0].settings) == ("wl-0001", {"interval": 10.0})
            await recorder.wait_for(
                lambda: (
                    len(recorder.seqs["wl-0001"]) == 2
                    and recorder.events
                    and recorder.seqs["xx-0042"]
                )
            )
            # The line's counters reach the operators in the agent's heartbeat.
            await recorder.wait_for(lambda: recorder.agent_links.get("pty0", {}).get("frames") == 5)
            heartbeat_links = recorder.agent_links["pty0"]
            stop.set()
            await run
    finally:
        os.close(master)
        os.close(slave)
    # Agent sequence numbers, not the node's frame counter: gap-free per node.
    assert recorder.seqs["wl-0001"] == [0, 1]
    assert recorder.seqs["xx-0042"] == [0]
    assert ("mh-0001", "cover_switch", None, None) in recorder.events
    assert heartbeat_links["checksum_errors"] == 1
    assert heartbeat_links["lost_frames"] == 2  # frame 3 was corrupt, frame 4 never came
    assert heartbeat_links["frames"] == 5
