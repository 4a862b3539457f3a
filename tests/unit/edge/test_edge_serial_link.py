"""The serial port driver on real pseudo-terminals: exact counters, vanishing ports, downlink."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import re
import select
import threading
import tty
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, aclosing
from pathlib import Path

import pytest

import edge.serial_link
from cityvitals.kinds import Kind
from edge.frames import (
    EventFrame,
    ReadingFrame,
    SettingFrame,
    checksum,
    decode_frame,
    encode_frame,
)
from edge.serial_link import LinkCounters, SeqGaps, SerialLink, Uplink
from tests.waiting import wait_until

LOGGER = "edge.serial_link"


class Pty:
    """A pseudo-terminal: the test plays the node on `master`, the link opens `path`."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        # Raw from the start, so nothing is echoed or translated before the
        # link has configured the port itself.
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.closed = False

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view) :]

    def read_line(self, timeout: float = 2.0) -> bytes:
        line = b""
        while not line.endswith(b"\n"):
            ready, _, _ = select.select([self.master], [], [], timeout)
            assert ready, f"no line from the link within {timeout} s (got {line!r})"
            line += os.read(self.master, 1024)
        return line

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.master)
            os.close(self.slave)


@pytest.fixture
def node() -> Iterator[Pty]:
    term = Pty()
    yield term
    term.close()


@pytest.fixture
def new_pty() -> Iterator[Callable[[], Pty]]:
    """Make ptys during a test; all are closed at teardown, after the link has stopped."""
    made: list[Pty] = []

    def make() -> Pty:
        made.append(Pty())
        return made[-1]

    yield make
    for term in made:
        term.close()


def make_link(
    url: str | Path,
    name: str = "pty0",
    *,
    backoff: tuple[float, float] = (0.01, 0.05),
    queue_size: int = 1024,
) -> SerialLink:
    """A link with test timings: short backoff, a stop within 50 ms, seeded jitter."""
    return SerialLink(
        name,
        str(url),
        backoff=backoff,
        read_timeout=0.05,
        queue_size=queue_size,
        rng=random.Random(7),
    )


WAIT_S = 3.0  # generous: a condition that is not met by then is a failure, not a slow machine


until = functools.partial(wait_until, deadline_s=WAIT_S)


async def until_read(link: SerialLink, count: int) -> None:
    """Wait until the link has read `count` bytes in all."""
    await until(lambda: link.counters.bytes_read == count, f"{count} bytes read")


async def take(link: SerialLink, count: int) -> list[Uplink]:
    """The next `count` frames from the link, failing after WAIT_S seconds."""
    got: list[Uplink] = []
    async with asyncio.timeout(WAIT_S), aclosing(link.frames()) as frames:
        async for frame in frames:
            got.append(frame)
            if len(got) == count:
                break
    return got


def reading(seq: int, node: str = "wl-0001", depth: float = 12.5) -> ReadingFrame:
    return ReadingFrame(node, Kind.WATER_LEVEL, seq, {"depth_cm": depth}, battery_pct=90.0)


def framed(body: bytes) -> bytes:
    return b"$" + body + b"*" + checksum(body).encode() + b"\r\n"


def link_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"serial-{name}"]


def records(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]


# -- reading ---------------------------------------------------------------------------


async def test_noise_is_counted_exactly_and_only_good_frames_arrive(node: Pty) -> None:
    """Banner text, a bad CRC, frames cut by noise, an overlong line, non-ASCII, a future
    version and a setting from a node are each counted under their fault; the good frames
    arrive in order; seq gaps count lost frames, a reboot does not."""
    good: list[Uplink] = [
        reading(1),
        reading(4),
        EventFrame("wl-0001", Kind.WATER_LEVEL, 6, "flood_switch", detail="float up"),
        reading(100, node="wl-0002"),
        reading(0),  # wl-0001 rebooted: its seq went back, nothing is lost
    ]
    line = [encode_frame(f) for f in good]
    bad_crc = encode_frame(reading(2)).replace(b"12.5", b"12.6")
    cut = encode_frame(reading(3))[:15]
    half = encode_frame(reading(5))[:20]
    stream = b"".join(
        [
            b"boot banner v1.2\r\n",  # 18 bytes of noise
            line[0],
            bad_crc,  # checksum
            cut,  # malformed: cut short by the next '$'
            line[1],
            b"\x00\x01" + half + b"zz\n",  # 2 bytes of noise, then a malformed line
            b"$" + b"A" * 600 + b"\n",  # too long
            b"$CV1,E,wl-0001,water_level,9,caf\xc3\xa9*0000\r\n",  # not ASCII
            framed(b"CV2,R,wl-0001,water_level,7,depth_cm=1"),  # unsupported version
            encode_frame(SettingFrame("wl-0001", {"interval": 5})),  # malformed: wrong way
            line[2],
            line[3],
            line[4],
        ]
    )
    async with make_link(node.path) as link:
        await until(lambda: link.connected, "the port to open")
        node.write(stream)
        assert await take(link, len(good)) == good
        assert link.counters == LinkCounters(
            frames=5,
            bytes_read=len(stream),
            checksum_errors=1,
            malformed=3,
            too_long=1,
            unsupported_version=1,
            not_ascii=1,
            garbage_bytes=20,
            lost_frames=3,  # seq 2, 3 (4 arrived after 1) and 5 (6 arrived after 4)
            opens=1,
        )
        summary = link.summary_since_last()
        assert summary is not None
        assert re.fullmatch(
            r"serial pty0: 1 checksum error, 3 malformed, 1 overlong line, "
            r"1 frame of an unsupported version, 1 non-ASCII line, 3 lost frames, "
            r"20 bytes of noise in the last \d+ s",
            summary,
        ), summary
        assert link.summary_since_last() is None  # nothing moved since


async def test_frames_split_at_every_byte_position(node: Pty) -> None:
    """A frame written in two parts, split at every byte position and read in between,
    arrives whole, once, with no error counted."""
    frames: list[Uplink] = [
        reading(1, depth=41.25),
        EventFrame("mh-0001", Kind.MANHOLE, 2, "cover_opened"),
    ]
    sent: list[Uplink] = []
    async with make_link(node.path) as link:
        await until(lambda: link.connected, "the port to open")
        written = 0
        for frame in frames:
            data = encode_frame(frame)
            for cut in range(1, len(data)):
                for part in (data[:cut], data[cut:]):
                    node.write(part)
                    written += len(part)
                    # The link has read the first part before the second exists.
                    await until_read(link, written)
                sent.append(frame)
        assert await take(link, len(sent)) == sent
        errors = {k: v for k, v in link.counters.as_dict().items() if v and k != "lost_frames"}
        assert errors == {"frames": len(sent), "bytes_read": written, "opens": 1}


async def test_port_that_vanishes_is_reopened_with_one_warning(
    node: Pty, new_pty: Callable[[], Pty], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The pty behind a symlink closes: the link notices, drops the half-read frame, keeps
    trying quietly, and when the symlink points at a live port again it reopens, logging one
    warning and one "back" line, and frames flow again."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    port = tmp_path / "ttyNODE"
    port.symlink_to(node.path)
    async with make_link(port, name="usb0") as link:
        await until(lambda: link.connected, "the port to open")
        node.write(encode_frame(reading(1)))
        got = await take(link, 1)
        half = encode_frame(reading(2))[:12]
        node.write(half)
        await until_read(link, len(encode_frame(reading(1))) + len(half))

        node.close()
        await until(lambda: not link.connected, "the link to notice")
        await until(lambda: link.counters.open_errors >= 3, "a few reopen attempts")

        spare = new_pty()  # may well reuse the old pts number: the kernel frees it on close
        fresh = tmp_path / "fresh"
        fresh.symlink_to(spare.path)
        fresh.replace(port)  # atomic: the link never sees a missing symlink
        await until(lambda: link.connected, "the port to come back")
        spare.write(encode_frame(reading(3)) + encode_frame(reading(4)))
        got += await take(link, 2)

    assert got == [reading(1), reading(3), reading(4)]
    counters = link.counters
    assert (counters.opens, counters.failures, counters.frames) == (2, 1, 3)
    assert counters.malformed == 1  # the half frame in flight when the port died
    assert counters.lost_frames == 1  # ... which the node's seq shows as lost
    logged = records(caplog)
    assert logged[0] == ("INFO", f"serial usb0 ({port}) open at 9600 baud")
    assert logged[1][0] == "WARNING"
    assert logged[1][1].startswith(f"serial usb0 ({port}) lost: ")
    assert logged[1][1].endswith("; reopening")
    assert logged[2:] == [("INFO", f"serial usb0 back after {counters.open_errors + 1} attempts")]
    assert not link.connected


async def test_a_port_that_never_opens_is_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A missing device: one warning however many attempts fail; send() returns False, counts
    and says why; the link still stops cleanly."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    missing = tmp_path / "ttyGONE"
    async with make_link(missing, name="usb9") as link:
        await until(lambda: link.counters.open_errors >= 5, "several open attempts")
        assert not link.connected
        assert await link.send(SettingFrame("wl-0001", {"interval": 10})) is False
    assert (link.counters.opens, link.counters.send_failures, link.counters.sent) == (0, 1, 0)
    logged = records(caplog)
    assert len(logged) == 2
    assert logged[0][0] == "WARNING"
    assert logged[0][1].startswith(f"serial usb9 ({missing}) cannot be opened: ")
    assert logged[1] == ("WARNING", "serial usb9: setting for wl-0001 not sent: port is down")


async def test_a_port_that_stays_down_is_recalled_now_and_then(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """While a port stays down the log hears about it again every DOWN_REMINDER_S, with the
    number of attempts so far (here the interval is zero, so every attempt)."""
    monkeypatch.setattr(edge.serial_link, "DOWN_REMINDER_S", 0.0)
    caplog.set_level(logging.INFO, logger=LOGGER)
    missing = tmp_path / "ttyGONE"
    async with make_link(missing, name="usb9") as link:
        await until(lambda: link.counters.open_errors >= 3, "several open attempts")
    logged = [message for _, message in records(caplog)]
    assert logged[0].startswith(f"serial usb9 ({missing}) cannot be opened: ")
    assert logged[1].startswith(f"serial usb9 ({missing}) still down after 2 attempts: ")
    assert logged[2].startswith(f"serial usb9 ({missing}) still down after 3 attempts: ")


# -- writing -----------------------------------------------------------------------------


async def test_send_writes_one_setting_line(node: Pty) -> None:
    """send() writes exactly the encoded setting, which the node side reads back and decodes."""
    setting = SettingFrame("wl-0001", {"interval": 10})
    async with make_link(node.path) as link:
        await until(lambda: link.connected, "the port to open")
        assert await link.send(setting) is True
        line = node.read_line()
    assert line == b"$CV1,S,wl-0001,interval=10*993B\r\n"
    assert decode_frame(line) == setting
    assert (link.counters.sent, link.counters.send_failures) == (1, 0)


async def test_loop_url_reads_back_what_it_writes() -> None:
    """pyserial's loop:// (no file descriptor) works end to end: a setting written comes back
    and, arriving from the line, counts as malformed (settings flow agent -> node only)."""
    line = encode_frame(SettingFrame("wl-0001", {"interval": 30}))
    async with make_link("loop://") as link:
        await until(lambda: link.connected, "the port to open")
        assert await link.send(SettingFrame("wl-0001", {"interval": 30}))
        await until(lambda: link.counters.malformed == 1, "the echo")
    assert (link.counters.sent, link.counters.bytes_read, link.counters.frames) == (1, len(line), 0)


# -- stopping ----------------------------------------------------------------------------


async def test_stop_is_prompt_with_a_full_queue_and_no_reader(node: Pty) -> None:
    """With the queue full and nobody reading, stopping still finishes at once; the frames
    queued before the stop can be taken, then frames() ends."""
    async with AsyncExitStack() as stack:
        link = await stack.enter_async_context(make_link(node.path, name="full", queue_size=1))
        await until(lambda: link.connected, "the port to open")
        data = b"".join(encode_frame(reading(seq)) for seq in range(1, 6))
        node.write(data)
        # One frame queued, the second waiting for room, the rest read and unparsed.
        await until_read(link, len(data))
        await until(lambda: link.counters.frames == 1, "the queue to fill")
        async with asyncio.timeout(5.0):  # generous for a loaded CI box; a hang never ends
            await stack.aclose()
    assert link_threads("full") == []
    assert not link.connected
    async with asyncio.timeout(5.0):  # generous for a loaded CI box; a hang never ends
        assert [frame async for frame in link.frames()] == [reading(1)]


async def test_stop_interrupts_a_long_backoff(tmp_path: Path) -> None:
    """A link waiting out a 30 s backoff for a missing port stops at once."""
    async with AsyncExitStack() as stack:
        link = await stack.enter_async_context(
            make_link(tmp_path / "missing", name="slow", backoff=(20.0, 30.0))
        )
        await until(lambda: link.counters.open_errors == 1, "the first attempt")
        async with asyncio.timeout(5.0):  # generous for a loaded CI box; a hang never ends
            await stack.aclose()
    assert link_threads("slow") == []


async def test_frames_ends_when_the_link_stops(node: Pty) -> None:
    """A task iterating frames() gets what arrived and finishes when the link stops."""
    async with make_link(node.path) as link:
        await until(lambda: link.connected, "the port to open")
        consumer = asyncio.create_task(collect(link))
        node.write(encode_frame(reading(1)))
        await until(lambda: link.counters.frames == 1, "the frame")
    async with asyncio.timeout(5.0):  # generous for a loaded CI box; a hang never ends
        assert await consumer == [reading(1)]


async def collect(link: SerialLink) -> list[Uplink]:
    return [frame async for frame in link.frames()]


# -- bugs do not kill the link -----------------------------------------------------------


async def test_a_bug_in_decoding_is_counted_and_the_link_carries_on(
    node: Pty, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected exception while decoding drops that line, counts an internal error, logs
    its traceback once, and later frames still arrive."""
    real = decode_frame
    poison = encode_frame(reading(1, node="bug-1"))

    def decode(line: bytes) -> object:
        if line == poison:
            raise RuntimeError("decoder bug")
        return real(line)

    monkeypatch.setattr(edge.serial_link, "decode_frame", decode)
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with make_link(node.path) as link:
        await until(lambda: link.connected, "the port to open")
        node.write(poison + encode_frame(reading(1)) + poison + encode_frame(reading(2)))
        assert await take(link, 2) == [reading(1), reading(2)]
    assert link.counters.internal_errors == 2
    assert link.counters.failures == 0
    errors = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert "decoder bug" in str(errors[0].exc_info[1])


async def test_a_bug_in_the_reader_loop_restarts_it(
    node: Pty, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected exception outside decoding does not end the thread: it is counted and
    logged, the port is reopened after a pause, and frames flow again."""
    real = SeqGaps.see
    calls = 0

    def see(self: SeqGaps, node: str, seq: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("tracking bug")
        return real(self, node, seq)

    monkeypatch.setattr(SeqGaps, "see", see)
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with make_link(node.path, name="bug") as link:
        await until(lambda: link.connected, "the port to open")
        node.write(encode_frame(reading(1)))
        await until(lambda: link.counters.opens == 2 and link.connected, "the reader to restart")
        node.write(encode_frame(reading(2)))
        assert await take(link, 1) == [reading(2)]
    assert link.counters.internal_errors == 1
    assert link_threads("bug") == []
    errors = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.ERROR]
    assert [str(r.exc_info[1]) for r in errors if r.exc_info] == ["tracking bug"]


# -- small parts -------------------------------------------------------------------------


def test_seq_gaps_count_jumps_and_forgive_reboots() -> None:
    """+k loses k-1 frames; a seq going back (reboot) or repeating resets; nodes are separate."""
    gaps = SeqGaps()
    seen = [gaps.see(n, s) for n, s in [("a", 1), ("b", 9), ("a", 4), ("a", 4), ("a", 0)]]
    assert seen == [0, 0, 2, 0, 0]
    assert gaps.see("a", 2**32 - 1) == 2**32 - 2
    assert gaps.see("a", 0) == 0  # the counter wrapped


@pytest.mark.parametrize(
    ("backoff", "read_timeout", "queue_size"),
    [((0.0, 1.0), 0.2, 1), ((2.0, 1.0), 0.2, 1), ((0.5, 1.0), 0.0, 1), ((0.5, 1.0), 0.2, 0)],
)
def test_bad_settings_are_refused(
    backoff: tuple[float, float], read_timeout: float, queue_size: int
) -> None:
    """Settings that would spin, never stop, or drop everything fail at construction."""
    with pytest.raises(ValueError, match="must be"):
        SerialLink(
            "x", "loop://", backoff=backoff, read_timeout=read_timeout, queue_size=queue_size
        )


async def test_a_link_is_entered_once() -> None:
    """Re-entering a stopped link is an error rather than a silently dead reader."""
    link = make_link("loop://", name="once")
    async with link:
        pass
    with pytest.raises(RuntimeError, match="only once"):
        await link.__aenter__()
