"""Duplicate detection by (node, sequence number), in bounded memory.

QoS 1 is "at least once": a reading whose PUBACK was lost is sent again.
Per node we keep the highest sequence number seen and a bitmap of the
`window` numbers below it (the anti-replay window of IPsec, RFC 4303): O(1)
per reading and a few machine words per node.

A sequence number older than the window cannot be judged; it is let through
(`Verdict.TOO_OLD_TO_TELL`) because dropping a real reading is worse than
passing a duplicate, and the sinks key readings by (node, seq) anyway.

>>> seen = SeqWindow(window=64)
>>> [seen.check("n1", s) for s in (1, 2, 2, 5, 3, 3)]
[<Verdict.NEW: 'new'>, <Verdict.NEW: 'new'>, <Verdict.DUPLICATE: 'duplicate'>, \
<Verdict.NEW: 'new'>, <Verdict.NEW: 'new'>, <Verdict.DUPLICATE: 'duplicate'>]
"""

from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    NEW = "new"
    DUPLICATE = "duplicate"
    TOO_OLD_TO_TELL = "too_old_to_tell"


class SeqWindow:
    def __init__(self, window: int = 4096) -> None:
        if window < 1:
            raise ValueError("window must be positive")
        self.window = window
        self._mask = (1 << window) - 1
        self._state: dict[str, tuple[int, int]] = {}  # node -> (highest, bitmap)

    def __len__(self) -> int:
        return len(self._state)

    def forget(self, node: str, seq: int) -> None:
        """Unmark `seq` (it was never delivered), so its resend counts as new.

        >>> seen = SeqWindow(window=64)
        >>> seen.check("n1", 7), seen.forget("n1", 7), seen.check("n1", 7)
        (<Verdict.NEW: 'new'>, None, <Verdict.NEW: 'new'>)
        """
        state = self._state.get(node)
        if state is None:
            return
        highest, bitmap = state
        offset = highest - seq
        if 0 <= offset < self.window:
            self._state[node] = (highest, bitmap & ~(1 << offset))

    def check(self, node: str, seq: int) -> Verdict:
        """Record `seq` for `node` and say whether it was seen before."""
        state = self._state.get(node)
        if state is None:
            self._state[node] = (seq, 1)
            return Verdict.NEW
        highest, bitmap = state
        if seq > highest:
            # Bit i stands for (highest - i); shift the window up to the new top.
            # A jump past the whole window starts a fresh one: shifting by the
            # jump itself would build an integer as large as the jump (a valid
            # seq can be 2**63) and stall or kill the gateway.
            shift = seq - highest
            bitmap = 1 if shift >= self.window else ((bitmap << shift) | 1) & self._mask
            self._state[node] = (seq, bitmap)
            return Verdict.NEW
        offset = highest - seq
        if offset >= self.window:
            return Verdict.TOO_OLD_TO_TELL
        bit = 1 << offset
        if bitmap & bit:
            return Verdict.DUPLICATE
        self._state[node] = (highest, bitmap | bit)
        return Verdict.NEW
