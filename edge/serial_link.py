"""The serial port driver of the edge agent: one reader thread per port.

pyserial is blocking, so each `SerialLink` owns a thread that reads the port,
cuts the stream into lines (`LineSplitter`), decodes them (`decode_frame`)
and hands good frames to the event loop through a bounded queue. Nothing on
the line can stop the thread: bad frames are counted by fault, never raised;
a port that vanishes (USB adapter unplugged, pty master closed) is closed and
reopened with exponential backoff and full jitter, for as long as the link
runs.

Lifecycle guarantees:

- `__aenter__` starts the thread and returns at once; the port is opened
  (and reopened) by the thread, so a device that appears late is picked up.
- `__aexit__` stops the thread and closes the port within about
  `read_timeout`, even while the queue is full and nobody is reading
  (a downlink write in progress can add up to `WRITE_TIMEOUT_S`).
- `frames()` yields frames in line order; it ends once the link has stopped
  and the frames queued before the stop have been taken.
- When the queue is full the thread stops reading: the backlog waits in the
  OS serial buffer, and past that the node's frames are lost and show up in
  `lost_frames`.

Logging is for state changes only (opened, lost, back, still down once a
minute), never one line per frame; `summary_since_last()` gives the agent
one line about line-quality counters that moved.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import asdict, dataclass, replace
from types import TracebackType
from typing import Any, Final, Self

import serial

from cityvitals.tasks import notify
from edge.frames import (
    EventFrame,
    FrameError,
    FrameFault,
    LineSplitter,
    ReadingFrame,
    SettingFrame,
    decode_frame,
    encode_frame,
)

log = logging.getLogger(__name__)

#: While a port stays down, say so in the log at most this often (seconds).
DOWN_REMINDER_S: Final = 60.0
#: A downlink write that cannot finish within this many seconds fails.
WRITE_TIMEOUT_S: Final = 2.0

Uplink = ReadingFrame | EventFrame


@dataclass(slots=True)
class LinkCounters:
    """What a link has seen since it was created. Every field only grows.

    Fields are written by the reader thread (`frames` on the event loop, as a
    frame enters the queue; `sent`/`send_failures` by `send`) and may be read
    anywhere; `snapshot()` copies them for reporting.

    >>> counters = LinkCounters(frames=3, checksum_errors=1)
    >>> counters.as_dict()["frames"], counters.snapshot() == counters
    (3, True)
    """

    #: Good reading and event frames handed to the agent.
    frames: int = 0
    #: Bytes read from the port, noise included.
    bytes_read: int = 0
    #: Lines whose CRC did not match: noise on the wire, a baud rate mismatch.
    checksum_errors: int = 0
    #: Lines with a valid shape but bad syntax, frames cut short by noise or by
    #: the port closing, and setting frames arriving from a node.
    malformed: int = 0
    #: Runs with no end of line within `MAX_LINE` bytes.
    too_long: int = 0
    #: Frames of a protocol version this agent does not speak.
    unsupported_version: int = 0
    #: Lines with bytes above 0x7F (often a wrong baud rate).
    not_ascii: int = 0
    #: Bytes between frames that belonged to no frame.
    garbage_bytes: int = 0
    #: Frames a node sent that never arrived intact, from gaps in its `seq`.
    #: A damaged frame is counted both here and under its fault.
    lost_frames: int = 0
    #: Successful opens of the port (the first one included).
    opens: int = 0
    #: Failed attempts to open the port.
    open_errors: int = 0
    #: Times an open port failed (read error, end of file, unplugged).
    failures: int = 0
    #: Bugs in our own frame handling, each with the input it dropped.
    internal_errors: int = 0
    #: Downlink frames written to the port.
    sent: int = 0
    #: Downlink frames not written (port down, write error or timeout).
    send_failures: int = 0

    def snapshot(self) -> LinkCounters:
        return replace(self)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


_FAULT_COUNTER: Final = {
    FrameFault.CHECKSUM: "checksum_errors",
    FrameFault.MALFORMED: "malformed",
    FrameFault.TOO_LONG: "too_long",
    FrameFault.VERSION: "unsupported_version",
    FrameFault.NOT_ASCII: "not_ascii",
}

# What `summary_since_last` reports, in this order: the quality of the line.
# Port failures and failed sends are not here: each is logged when it happens.
_SUMMARY: Final = {
    "checksum_errors": ("checksum error", "checksum errors"),
    "malformed": ("malformed", "malformed"),
    "too_long": ("overlong line", "overlong lines"),
    "unsupported_version": ("frame of an unsupported version", "frames of an unsupported version"),
    "not_ascii": ("non-ASCII line", "non-ASCII lines"),
    "lost_frames": ("lost frame", "lost frames"),
    "garbage_bytes": ("byte of noise", "bytes of noise"),
    "internal_errors": ("internal error", "internal errors"),
}


class SeqGaps:
    """Count frames lost on the line from the gaps in each node's `seq`.

    A jump of +k loses k-1 frames. A `seq` that goes back or repeats is a
    node reboot or a counter wrap: tracking restarts, nothing is counted.

    >>> gaps = SeqGaps()
    >>> [gaps.see("n1", seq) for seq in (5, 6, 9, 2, 3)], gaps.see("n2", 40)
    ([0, 0, 2, 0, 0], 0)
    """

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def see(self, node: str, seq: int) -> int:
        """Record `seq` from `node`; return how many frames went missing before it."""
        last = self._last.get(node)
        self._last[node] = seq
        if last is None or seq <= last:
            return 0
        return seq - last - 1


class _StoppingError(Exception):
    """The link is stopping while the reader waits for the queue."""


class SerialLink:
    """Frames from one serial port, read by a thread, delivered to the event loop.

    `url` is anything `serial.serial_for_url` opens: a device path
    (`/dev/ttyUSB0`, a pty, a stable symlink under `/dev/serial/by-id/`) or
    a pyserial URL (`loop://`). `name` is the short name used in logs.

    Read with `async for frame in link.frames()`, from one task. Write
    settings to nodes with `send()`.
    """

    def __init__(
        self,
        name: str,
        url: str,
        *,
        baudrate: int = 9600,
        backoff: tuple[float, float] = (0.5, 30.0),
        read_timeout: float = 0.2,
        queue_size: int = 1024,
        rng: random.Random | None = None,
        counters: LinkCounters | None = None,
    ) -> None:
        if not 0 < backoff[0] <= backoff[1]:
            raise ValueError(f"backoff must be 0 < first <= longest, got {backoff}")
        if read_timeout <= 0:
            raise ValueError("read_timeout must be positive: it bounds how long a stop takes")
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.name = name
        self.url = url
        self.baudrate = baudrate
        # Passed in to carry the counts over when a driver reopens the link.
        self.counters = counters if counters is not None else LinkCounters()
        self._backoff = backoff
        self._read_timeout = read_timeout
        self._queue_size = queue_size
        self._rng = rng or random.Random()
        self._splitter = LineSplitter()
        self._gaps = SeqGaps()
        # The port is swapped and written under the lock, read without it:
        # pyserial reads and writes on separate threads safely, but closing a
        # port under a write could hit a reused file descriptor.
        self._port_lock = threading.Lock()
        self._port: Any = None
        self._connected = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Uplink | None] | None = None
        self._stopped = False
        self._opened = asyncio.Event()  # replaced each time the port opens
        self._told_unexpected = False
        self._summary_base = self.counters.snapshot()
        self._summary_at = time.monotonic()

    # -- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._thread is not None:
            raise RuntimeError(f"serial {self.name}: a SerialLink can be entered only once")
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(self._queue_size)
        self._summary_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"serial-{self.name}", daemon=True)
        self._thread.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        try:
            if self._thread is not None:
                # join() in a worker: the reader may need this loop to finish
                # handing over a frame before it sees the stop.
                await asyncio.to_thread(self._thread.join)
        finally:
            self._stopped = True
            if self._queue is not None and self._queue.empty():
                self._queue.put_nowait(None)  # wakes a frames() waiting on the empty queue

    # -- the agent's side ------------------------------------------------------

    @property
    def entered(self) -> bool:
        """True once the link has been started (a link runs once)."""
        return self._thread is not None

    @property
    def connected(self) -> bool:
        """True while the port is open."""
        return self._connected

    async def frames(self) -> AsyncGenerator[Uplink, None]:
        """Reading and event frames in the order they arrived; ends after the link stops."""
        queue = self._queue
        if queue is None:
            raise RuntimeError(f"serial {self.name}: enter the SerialLink before reading it")
        while not (self._stopped and queue.empty()):
            frame = await queue.get()
            if frame is None:
                return
            yield frame

    async def send(self, frame: SettingFrame) -> bool:
        """Write a setting to a node; False (counted, logged) if the port is down or failed.

        Delivery is not confirmed: a node answers, if at all, in its next frames.
        `ValueError` if the frame cannot be encoded.
        """
        line = encode_frame(frame)
        return await asyncio.to_thread(self._write, frame.node, line)

    async def wait_opened(self, seen: int = 0) -> int:
        """Wait until the port has been opened more than `seen` times; return the
        count. A node behind a reopened port (a replugged USB adapter) has
        usually rebooted too and needs its settings again."""
        while self.counters.opens <= seen:
            opened = self._opened
            await opened.wait()
        return self.counters.opens

    def summary_since_last(self) -> str | None:
        """One line about line-quality counters that moved since the last call, or None.

        For the agent to log periodically, e.g.
        "serial usb0: 3 checksum errors, 1 malformed in the last 60 s".
        """
        now = time.monotonic()
        current = self.counters.snapshot()
        parts = []
        for field, (one, many) in _SUMMARY.items():
            delta = getattr(current, field) - getattr(self._summary_base, field)
            if delta:
                parts.append(f"{delta} {one if delta == 1 else many}")
        elapsed = now - self._summary_at
        self._summary_base, self._summary_at = current, now
        if not parts:
            return None
        return f"serial {self.name}: {', '.join(parts)} in the last {elapsed:.0f} s"

    # -- the reader thread -------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._serve()
                except Exception as exc:
                    # _serve handles everything it expects, so this is a bug:
                    # say so once, then carry on after a pause rather than
                    # leave the port unread (or spin on a bug that repeats).
                    self.counters.internal_errors += 1
                    self._unexpected("in the reader loop", exc)
                    self._close()
                    self._stop.wait(self._backoff[1])
        finally:
            self._close()

    def _serve(self) -> None:
        delay = self._backoff[0]
        attempts = 0  # failed opens since the port was last up
        told_at = 0.0  # when the log last heard about the port being down
        ever_open = False
        while not self._stop.is_set():
            problem = self._open()
            if problem is not None:
                attempts += 1
                self.counters.open_errors += 1
                now = time.monotonic()
                if not ever_open and attempts == 1:
                    log.warning(
                        "serial %s (%s) cannot be opened: %s; retrying",
                        self.name,
                        self.url,
                        problem,
                    )
                    told_at = now
                elif now - told_at >= DOWN_REMINDER_S:
                    log.warning(
                        "serial %s (%s) still down after %d attempts: %s",
                        self.name,
                        self.url,
                        attempts,
                        problem,
                    )
                    told_at = now
                self._stop.wait(self._rng.uniform(0, delay))  # full jitter
                delay = min(delay * 2, self._backoff[1])
                continue

            if ever_open:
                log.info("serial %s back after %d attempts", self.name, attempts + 1)
            else:
                log.info("serial %s (%s) open at %d baud", self.name, self.url, self.baudrate)
            ever_open, attempts = True, 0
            opened_at = time.monotonic()
            problem = self._pump()
            self._close()
            if problem is None:
                return
            self.counters.failures += 1
            told_at = time.monotonic()
            log.warning("serial %s (%s) lost: %s; reopening", self.name, self.url, problem)
            # Only a port that stayed up a while earns a fresh backoff: one
            # that opens and dies at once must not flap the log every second.
            if told_at - opened_at >= self._backoff[1]:
                delay = self._backoff[0]
            self._stop.wait(self._rng.uniform(0, delay))
            delay = min(delay * 2, self._backoff[1])

    def _open(self) -> str | None:
        """Open the port; None on success, else what went wrong."""
        try:
            port = serial.serial_for_url(
                self.url,
                baudrate=self.baudrate,
                timeout=self._read_timeout,
                write_timeout=WRITE_TIMEOUT_S,
            )
        except (serial.SerialException, OSError) as exc:
            return str(exc)
        except Exception as exc:
            # A bad URL or setting (ValueError) will not fix itself, but the
            # link keeps trying rather than dying: the traceback says why.
            self._unexpected("opening the port", exc)
            return repr(exc)
        with self._port_lock:
            self._port = port
        self.counters.opens += 1
        self._connected = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._tell_opened)
        return None

    def _tell_opened(self) -> None:
        self._opened = notify(self._opened)

    def _close(self) -> None:
        with self._port_lock:
            port, self._port = self._port, None
        self._connected = False
        if port is not None:
            try:
                port.close()
            except Exception:  # a dead port may fail to close; it is gone either way
                log.debug("serial %s: closing the port failed", self.name, exc_info=True)
        partial = self._splitter.reset()
        if partial is not None:
            self._count(partial.fault)

    def _pump(self) -> str | None:
        """Read until stopped (None) or until the port fails (what went wrong)."""
        port = self._port
        while not self._stop.is_set():
            try:
                waiting: int = port.in_waiting
                data: bytes = port.read(max(1, waiting))
            except (serial.SerialException, OSError) as exc:
                return str(exc) or type(exc).__name__
            except Exception as exc:
                self._unexpected("reading the port", exc)
                return repr(exc)
            if not data:
                if waiting:
                    # Readable yet empty: how a vanished device shows up when
                    # the driver does not raise for it.
                    return "end of file"
                continue
            self.counters.bytes_read += len(data)
            try:
                self._handle(data)
            except _StoppingError:
                return None
        return None

    def _handle(self, data: bytes) -> None:
        try:
            items = self._splitter.feed(data)
        except Exception as exc:
            self.counters.internal_errors += 1
            self._unexpected("splitting lines", exc)
            return
        finally:
            self.counters.garbage_bytes = self._splitter.garbage_bytes
        for item in items:
            if isinstance(item, FrameError):
                self._count(item.fault)
                continue
            try:
                frame = decode_frame(item)
            except FrameError as exc:
                self._count(exc.fault)
                continue
            except Exception as exc:
                self.counters.internal_errors += 1
                self._unexpected("decoding a frame", exc)
                continue
            if isinstance(frame, SettingFrame):
                # Settings flow agent -> node; one from the line is a confused
                # node (or our own downlink echoed back).
                self.counters.malformed += 1
                continue
            self.counters.lost_frames += self._gaps.see(frame.node, frame.seq)
            self._hand_over(frame)

    def _hand_over(self, frame: Uplink) -> None:
        """Queue `frame`, waiting while the queue is full; `_StoppingError` if the link stops."""
        loop, queue = self._loop, self._queue
        if loop is None or queue is None:  # set before the thread starts; keeps mypy honest
            raise _StoppingError
        put = self._enqueue(queue, frame)
        try:
            future = asyncio.run_coroutine_threadsafe(put, loop)
        except RuntimeError:  # the loop is closed: nobody is left to read, so stop
            put.close()
            self._stop.set()
            raise _StoppingError from None
        while True:
            try:
                future.result(timeout=self._read_timeout)
            except TimeoutError:
                # Full queue: wait, but look at the stop flag now and then so
                # stopping never deadlocks on a reader that went away.
                if self._stop.is_set():
                    future.cancel()
                    raise _StoppingError from None
            except concurrent.futures.CancelledError:
                raise _StoppingError from None
            else:
                return

    async def _enqueue(self, queue: asyncio.Queue[Uplink | None], frame: Uplink) -> None:
        await queue.put(frame)
        # Counted here, on the loop, so a consumer never holds a frame that
        # `frames` does not count yet.
        self.counters.frames += 1

    def _count(self, fault: FrameFault) -> None:
        field = _FAULT_COUNTER[fault]
        setattr(self.counters, field, getattr(self.counters, field) + 1)

    def _unexpected(self, doing: str, exc: Exception) -> None:
        """Log a bug-shaped exception: with its traceback the first time, at debug level after."""
        if not self._told_unexpected:
            self._told_unexpected = True
            log.error(
                "serial %s (%s): unexpected error %s", self.name, self.url, doing, exc_info=exc
            )
        else:
            log.debug("serial %s: unexpected error %s", self.name, doing, exc_info=exc)

    # -- downlink (runs in a worker thread) ----------------------------------------

    def _write(self, node: str, line: bytes) -> bool:
        problem = None
        with self._port_lock:
            port = self._port
            if port is None:
                problem = "port is down"
            else:
                try:
                    port.write(line)
                except (serial.SerialException, OSError) as exc:
                    problem = str(exc)
                except Exception as exc:
                    self._unexpected("writing the port", exc)
                    problem = repr(exc)
        if problem is None:
            self.counters.sent += 1
            return True
        self.counters.send_failures += 1
        log.warning("serial %s: setting for %s not sent: %s", self.name, node, problem)
        return False
