"""The bytes of a state table's values: one msgpack codec per state type.

Per-node and per-area state is a msgspec struct, encoded to bytes between
batches so a faust table (memory embedded, a Kafka changelog distributed)
can hold it. An absent or empty value is a fresh state.

>>> import msgspec
>>> class Counter(msgspec.Struct):
...     n: int = 0
>>> codec = StateCodec(Counter)
>>> codec.decode(codec.encode(Counter(3))), codec.decode(None)
(Counter(n=3), Counter(n=0))
"""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

S = TypeVar("S", bound=msgspec.Struct)


class StateCodec(Generic[S]):
    """Encode and decode one state type; `decode` of nothing gives `kind()`."""

    def __init__(self, kind: type[S]) -> None:
        self._kind = kind
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(kind)

    def encode(self, state: S) -> bytes:
        return self._encoder.encode(state)

    def decode(self, data: bytes | None) -> S:
        return self._kind() if not data else self._decoder.decode(data)
