"""Decoded state records remembered by key, so the next event of a task skips decoding its record again.

For every event it folds the processor reads the task's state record from
its RocksDB table and decodes it (Avro, ~50 fields). That decode was a third
of the processor's CPU in a profile of the 10,000-task fan-out
(docs/benchmarks/2026-12-07-decoded-state-cache.md). ``DecodedStates``
remembers, per key, the record bytes the processor last wrote or read and
the value they decode to, and hands the value back only while the table
still holds exactly those bytes: whoever else writes the table (a restore
from ``<p>.state``, the rebuild after an aborted transaction, a repair) is
seen by the comparison, and a hit is the value a decode would give. The
API's read model keeps one too, for the stored state it reads before each
change it applies. The values are frozen dataclasses the decider replaces
and never mutates, so one may be shared. Bounded in entries and in record bytes, least recently
used out first. Not thread-safe: one per folding thread, or under a lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

#: Bounds of one processor's cache: at most this many states, and at most this many bytes of their records.
MAX_ENTRIES = 20_000
MAX_BYTES = 16 << 20


class DecodedStates:
    """Decoded state records by key, each valid while the table holds the bytes it was decoded from."""

    __slots__ = ("_decode", "_entries", "_bytes", "max_entries", "max_bytes", "hits", "misses")

    def __init__(self, decode: Callable[[bytes], Any], max_entries: int = MAX_ENTRIES,
                 max_bytes: int = MAX_BYTES) -> None:
        self._decode = decode
        self._entries: OrderedDict[bytes, tuple[bytes, Any]] = OrderedDict()
        self._bytes = 0
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """The bytes of the records whose values are held."""
        return self._bytes

    def decode(self, key: bytes, raw: bytes) -> Any:
        """The value of ``raw``, the record the table holds for ``key``: remembered if these are the bytes last
        seen for it, else decoded (and remembered). Raises what the decoder raises (``DecodeError``)."""
        entry = self._entries.get(key)
        if entry is not None and entry[0] == raw:
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[1]
        self.misses += 1
        value = self._decode(raw)
        self.put(key, raw, value)
        return value

    def put(self, key: bytes, raw: bytes, value: Any) -> None:
        """Remember that ``raw``, now written for ``key``, decodes to ``value``."""
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old[0])
        if len(raw) > self.max_bytes:
            return
        self._entries[key] = (raw, value)
        self._bytes += len(raw)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, (dropped, _) = self._entries.popitem(last=False)
            self._bytes -= len(dropped)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0
