"""Keep libraries' repeated log lines from burying the ones that matter.

aiokafka logs an ERROR for every reconnect attempt, several a second while a
broker is down: twenty seconds of outage would be hundreds of identical
lines. `RepeatFilter` lets the first record of each (logger, message
template) through, drops its repeats for `window_s`, and notes on the next
one it lets through how many it dropped. Our own loggers already log state
changes only, so the filter is meant for third-party ones.

>>> import logging
>>> now = [0.0]
>>> f = RepeatFilter(window_s=60, clock=lambda: now[0], prefixes=("aiokafka",))
>>> def rec(msg):
...     return logging.LogRecord("aiokafka", logging.ERROR, "", 0, msg, ("node 1",), None)
>>> [f.filter(rec("Unable connect to %s")) for _ in range(3)]
[True, False, False]
>>> now[0] = 61.0
>>> r = rec("Unable connect to %s")
>>> f.filter(r), r.getMessage()
(True, 'Unable connect to node 1 (2 similar messages in the last 61 s not shown)')
>>> seen = RepeatFilter(prefixes=("aiokafka",), exempt=("aiokafka",))
>>> [seen.filter(rec("Unable connect to %s")) for _ in range(2)]
[True, True]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RepeatFilter(logging.Filter):
    """A handler filter; records from loggers outside `prefixes` always pass."""

    def __init__(
        self,
        *,
        window_s: float = 60.0,
        prefixes: tuple[str, ...] = ("aiokafka", "kafka", "faust", "mode"),
        exempt: tuple[str, ...] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._window_s = window_s
        self._prefixes = prefixes
        #: Loggers someone asked to see in full (CITYVITALS_DEBUG), and their children.
        self._exempt = exempt
        self._clock = clock
        #: (logger, template) -> (when last let through, repeats dropped since)
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._prefixes):
            return True
        if any(record.name == e or record.name.startswith(e + ".") for e in self._exempt):
            return True
        key = (record.name, str(record.msg))
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self._window_s:
            self._seen[key] = (seen[0], seen[1] + 1)
            return False
        if seen is not None and seen[1]:
            record.msg = (
                f"{record.msg} ({seen[1]} similar messages in the last "
                f"{now - seen[0]:.0f} s not shown)"
            )
        if len(self._seen) > 10_000:
            self._seen.clear()  # bounded: templates are few, but be sure
        self._seen[key] = (now, 0)
        return True
