"""Durable timers of one partition: a RocksDB table ordered by due time (DESIGN §6).

Entries are ``b"t" + due (µs since the epoch, 8 bytes big-endian) + kind +
key`` so an ordered scan from ``b"t"`` meets them in due order; ``b"k" +
kind + key`` remembers each entry's due time so it can be moved. Kinds:
``S`` the state's own timer (a task's run_at or retry time, a schedule's next
fire, ``domain.timer_due``) and ``L`` a running attempt's lease.

The table lives next to the partition's task table and, like it, is rebuilt
from ``<p>.state`` when the processor is assigned the partition (S timers
from the states, L timers a full lease from the assignment), so timers
survive restarts and move with their partition in a rebalance. Firing a
timer only appends an event to the log; the state changes when that event
is folded, which keeps replay exact.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rocksdict import Rdict

STATE = b"S"
LEASE = b"L"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(t: datetime) -> int:
    delta = t - _EPOCH
    return max(0, (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds)


def _from_micros(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


class TimerTable:
    def __init__(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = Rdict(str(path))
        self.count = 0

    def set(self, kind: bytes, key: bytes, due: datetime | None) -> None:
        """Arm (or move, or with ``None`` disarm) the ``kind`` timer of ``key``."""
        index = b"k" + kind + key
        old = self.db.get(index)
        new = None if due is None else _micros(due).to_bytes(8, "big")
        if old == new:
            return
        if old is not None:
            del self.db[b"t" + old + kind + key]
            self.count -= 1
        if new is None:
            if old is not None:
                del self.db[index]
            return
        self.db[b"t" + new + kind + key] = b""
        self.db[index] = new
        self.count += 1

    def due(self, now: datetime, limit: int = 1000) -> Iterator[tuple[bytes, bytes, datetime]]:
        """Entries due at or before ``now``, earliest first: (kind, key, due)."""
        stop = b"t" + (_micros(now) + 1).to_bytes(8, "big")
        out: list[tuple[bytes, bytes, datetime]] = []
        it = self.db.iter()
        it.seek(b"t")
        while it.valid() and len(out) < limit:
            k = it.key()
            if k >= stop or not k.startswith(b"t"):
                break
            out.append((k[9:10], k[10:], _from_micros(int.from_bytes(k[1:9], "big"))))
            it.next()
        return iter(out)

    def next_due(self) -> datetime | None:
        it = self.db.iter()
        it.seek(b"t")
        if it.valid() and it.key().startswith(b"t"):
            return _from_micros(int.from_bytes(it.key()[1:9], "big"))
        return None

    def close(self) -> None:
        self.db.close()
