"""Live updates: the read model's change feed and the watches that SSE and gRPC stream from it.

The read model's consumer thread reads every record of ``<p>.state`` once;
``ChangeFeed.apply`` stores each task state in the read model and, under the
same lock, appends it to a bounded in-memory ring of recent changes and hands
it to the API's event loop, which fans it out to the subscribers that match
(one dict lookup for single-task watches, a filter check for filtered ones).
No watcher polls the broker: a thousand watchers cost one consumer.

A position in the feed is the vector of next offsets per partition of
``<p>.state`` (``Cursor``, text ``"12.0.7"`` for partitions 0, 1, 2). Every
event a watch sends carries the cursor after it; a watch resumed from a
cursor delivers every matching change at or after it exactly once, from the
ring when it still holds them, else by reading ``<p>.state`` from those
offsets up to where the ring begins (docs/decisions/0003-watch-positions.md).
A single-task watch's event id also carries the version it showed
(``"12.0.7:5"``), so a resumed watch never shows a version twice.

Only states from ``<p>.state`` are changes: the state the API puts into its
own read model right after a write (read-your-writes) is not, but a
single-task watch starts with the task's current state from the read model,
which may be that one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from taskstream.schemas import (
    TERMINAL,
    BrokerUnavailable,
    DecodeError,
    Settings,
    TaskState,
    Topics,
    ValidationError,
    codec,
)
from taskstream.schemas.consumer import RangeReader

log = logging.getLogger(__name__)

#: How long a resumed watch may read ``<p>.state`` to catch up to the ring before it gives up.
CATCH_UP_BUDGET_S = 60.0
MAX_CURSOR_CHARS = 4096


class Cursor(tuple):
    """Next offset per partition of ``<p>.state``; partitions beyond the tuple are at 0."""

    def at(self, partition: int) -> int:
        return self[partition] if partition < len(self) else 0

    def advanced(self, partition: int, offset: int) -> Cursor:
        out = list(self) + [0] * (partition + 1 - len(self))
        out[partition] = max(out[partition], offset + 1)
        return Cursor(out)

    def merged(self, other: Iterable[int]) -> Cursor:
        other = tuple(other)
        n = max(len(self), len(other))
        return Cursor(max(self.at(i), other[i] if i < len(other) else 0) for i in range(n))

    def encode(self) -> str:
        return ".".join(map(str, self)) or "0"

    @classmethod
    def decode(cls, text: str, field: str = "cursor") -> Cursor:
        """A cursor from its text; ``ValidationError`` naming ``field`` if it is not one."""
        parts = text.strip().split(".")
        if len(text) > MAX_CURSOR_CHARS or not all(p.isdigit() and p.isascii() and len(p) <= 18 for p in parts):
            raise ValidationError(field, "not a cursor this API sent (offsets per partition, e.g. 12.0.7)")
        return cls(int(p) for p in parts)


def parse_event_id(text: str, field: str) -> tuple[Cursor, int | None]:
    """``"12.0.7"`` or ``"12.0.7:5"`` (cursor, version of a single-task watch) -> (cursor, version or None)."""
    cursor, sep, version = text.strip().partition(":")
    if sep and not (version.isdigit() and version.isascii() and len(version) <= 18):
        raise ValidationError(field, "not an event id this API sent (cursor[:version], e.g. 12.0.7:5)")
    return Cursor.decode(cursor, field), int(version) if sep else None


@dataclass(frozen=True, slots=True)
class Change:
    """One record of ``<p>.state`` holding a task state; ``position``: the feed's cursor after it."""

    partition: int
    offset: int
    position: Cursor
    state: TaskState


@dataclass(frozen=True, slots=True)
class Filter:
    """Which tasks a watch wants: a task id, or any of the given statuses, priorities and handlers."""

    task_id: str | None = None
    statuses: frozenset[str] = frozenset()
    priorities: frozenset[str] = frozenset()
    handlers: frozenset[str] = frozenset()

    def matches(self, state: TaskState) -> bool:
        if self.task_id is not None:
            return state.task_id == self.task_id
        return ((not self.statuses or state.status in self.statuses)
                and (not self.priorities or state.priority in self.priorities)
                and (not self.handlers or state.handler in self.handlers))


class FellBehind(Exception):
    """The watcher did not read fast enough: it must resume from its last cursor."""


class WatchUnavailable(Exception):
    """The changes after a cursor can no longer be read (the broker, or its budget, failed the catch-up)."""


_CLOSED = object()
_BEHIND = object()


class Subscription:
    """One watcher's queue of live changes, filled in the event loop by ``ChangeFeed._dispatch``."""

    __slots__ = ("filter", "floor", "queue", "limit", "done")

    def __init__(self, filter: Filter, floor: Cursor, limit: int) -> None:
        self.filter = filter
        self.floor = floor
        self.queue: asyncio.Queue = asyncio.Queue()
        self.limit = limit
        self.done = False

    def offer(self, change: Change) -> None:
        if self.done or change.offset < self.floor.at(change.partition):
            return
        if self.queue.qsize() >= self.limit:
            self.done = True
            self.queue.put_nowait(_BEHIND)
            return
        self.queue.put_nowait(change)

    def close(self) -> None:
        if not self.done:
            self.done = True
            self.queue.put_nowait(_CLOSED)


class ChangeFeed:
    """The read model's stream of task state changes: a bounded ring plus asyncio fan-out.

    ``apply`` runs on the read model's consumer thread; everything else in
    the event loop that serves the watches (the first ``subscribe`` binds it).
    """

    def __init__(self, ring_size: int = 10_000, queue_limit: int = 10_000) -> None:
        self.ring_size = ring_size
        self.queue_limit = queue_limit
        self._lock = threading.Lock()
        self._ring: deque[Change] = deque()
        self._evicted = Cursor()  # per partition: the ring holds every change from here on
        self._position = Cursor()
        self._pending: list[Change] = []
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._by_task: dict[str, set[Subscription]] = {}
        self._filtered: set[Subscription] = set()
        self._closed = False

    # ----------------------------------------------------- consumer thread

    def apply(self, partition: int, offset: int, state: TaskState, store: Callable[[TaskState], object]) -> None:
        """Store ``state`` (``store``) and publish it, atomically with respect to ``subscribe``.

        A record at an offset the feed already passed (the read model
        re-read a partition after reconnecting) is stored but not published again.
        """
        with self._lock:
            store(state)
            if offset < self._position.at(partition):
                return
            self._position = self._position.advanced(partition, offset)
            change = Change(partition, offset, self._position, state)
            self._ring.append(change)
            while len(self._ring) > self.ring_size:
                old = self._ring.popleft()
                self._evicted = self._evicted.advanced(old.partition, old.offset)
            if self._loop is not None:
                self._pending.append(change)
                if not self._scheduled:
                    self._scheduled = True
                    try:
                        self._loop.call_soon_threadsafe(self._dispatch)
                    except RuntimeError:  # the loop is closed: nobody is watching any more
                        self._loop, self._pending, self._scheduled = None, [], False

    # ---------------------------------------------------------- event loop

    def _dispatch(self) -> None:
        with self._lock:
            batch, self._pending, self._scheduled = self._pending, [], False
        for change in batch:
            subs = self._by_task.get(change.state.task_id)
            if subs:
                for sub in tuple(subs):
                    sub.offer(change)
            for sub in tuple(self._filtered):
                if sub.filter.matches(change.state):
                    sub.offer(change)

    def subscribe(self, filter: Filter, after: Cursor | None,
                  current: Callable[[], TaskState | None] | None = None,
                  ) -> tuple[Subscription, Cursor, list[Change], dict[int, tuple[int, int]], TaskState | None]:
        """Register a watcher; return it with what to send before its live changes.

        Returns ``(subscription, start, replay, catch_up, state)``: ``start``
        is the feed's cursor now; ``replay`` the ring's matching changes at
        or after ``after``; ``catch_up`` the ranges ``{partition: (from,
        to)}`` of ``<p>.state`` that the ring no longer holds and that must
        be read to deliver everything after ``after``; ``state`` what
        ``current()`` returned (a single task's state) at the same instant.
        Live changes start at ``start`` (or at ``after`` where that is later).
        """
        if self._closed:
            raise WatchUnavailable("the API is shutting down")
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._loop is not loop:
                self._loop, self._pending, self._scheduled = loop, [], False
            start = self._position
            state = current() if current is not None else None
            replay: list[Change] = []
            catch_up: dict[int, tuple[int, int]] = {}
            if after is not None:
                for p in range(max(len(after), len(self._evicted))):
                    if after.at(p) < self._evicted.at(p):
                        catch_up[p] = (after.at(p), self._evicted.at(p))
                replay = [c for c in self._ring if c.offset >= after.at(c.partition) and filter.matches(c.state)]
            sub = Subscription(filter, start if after is None else start.merged(after), self.queue_limit)
        if filter.task_id is not None:
            self._by_task.setdefault(filter.task_id, set()).add(sub)
        else:
            self._filtered.add(sub)
        return sub, start, replay, catch_up, state

    def unsubscribe(self, sub: Subscription) -> None:
        sub.done = True
        if sub.filter.task_id is not None:
            subs = self._by_task.get(sub.filter.task_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_task[sub.filter.task_id]
        else:
            self._filtered.discard(sub)

    def close(self) -> None:
        """End every watch (API shutdown): each stream sends what it already has, then ends with
        ``WatchUnavailable``."""
        self._closed = True
        for sub in [*self._filtered, *(s for subs in self._by_task.values() for s in subs)]:
            sub.close()

    @property
    def watchers(self) -> int:
        return len(self._filtered) + sum(len(s) for s in self._by_task.values())

    def watcher_counts(self) -> dict[str, int]:
        """Open watches by kind: ``task`` (one task) and ``filter``."""
        return {"task": sum(len(s) for s in tuple(self._by_task.values())), "filter": len(self._filtered)}

    def position(self) -> Cursor:
        with self._lock:
            return self._position


class WatchMetrics(Collector):
    """``taskstream_api_watchers{kind}``: open watches (SSE and gRPC) of the app's read model, read at scrape time."""

    def __init__(self, app_state: Any) -> None:
        self._app_state = app_state

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        read_model = getattr(self._app_state, "read_model", None)
        if read_model is None:
            return
        gauge = GaugeMetricFamily("taskstream_api_watchers", "open watches of task changes (SSE and gRPC)",
                                  labels=["kind"])
        for kind, n in read_model.feed.watcher_counts().items():
            gauge.add_metric([kind], n)
        yield gauge


class RenderCache:
    """What a state looks like on the wire (task JSON, a proto message), made once for all the watchers it goes to.

    Keyed by the state object itself: every watcher of a change gets the
    same ``TaskState``. Event loop only (no lock); the newest ``size`` are kept.
    """

    def __init__(self, render: Callable[[TaskState], object], size: int = 4096) -> None:
        self._render = render
        self._size = size
        self._items: OrderedDict[int, tuple[TaskState, object]] = OrderedDict()

    def __call__(self, state: TaskState):
        hit = self._items.get(id(state))
        if hit is not None and hit[0] is state:
            return hit[1]
        value = self._render(state)
        self._items[id(state)] = (state, value)
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return value


# ------------------------------------------------------------------ watches


@dataclass(frozen=True, slots=True)
class Event:
    """What a watch sends: a task state (``state``) or only a cursor (``state`` None), and the event id."""

    id: str
    state: TaskState | None


async def watch(settings: Settings, feed: ChangeFeed, filter: Filter, after: Cursor | None = None, *,
                current: Callable[[], TaskState | None] | None = None, last_version: int | None = None,
                announce: bool = False) -> AsyncIterator[Event]:
    """Every change matching ``filter`` after ``after`` (from now without it), in log order per task.

    A single-task watch (``filter.task_id``, with ``current`` reading the
    read model) first sends the task's current state unless the watcher
    already saw its version (``last_version``), skips versions it has sent
    and ends after a terminal state. A filtered watch with ``announce``
    first sends its starting cursor (an event without a state), so a client
    can resume even if nothing matched before it disconnected.

    Raises ``FellBehind`` when the watcher's queue overflowed and
    ``WatchUnavailable`` when a resume needs records the broker cannot give;
    in both cases the client resumes from the last id it received.
    """
    single = filter.task_id is not None
    sub, start, replay, catch_up, state = feed.subscribe(filter, after, current)
    cursor = start if after is None else after
    seen = last_version if last_version is not None else -1

    def event(s: TaskState | None) -> Event:
        return Event(f"{cursor.encode()}:{s.version}" if single and s is not None else cursor.encode(), s)

    def unsent(s: TaskState) -> bool:
        """Whether ``s`` is to be sent: always on a filtered watch; a single-task watch skips versions it sent."""
        nonlocal seen
        if single and s.version <= seen:
            return False
        seen = max(seen, s.version)
        return True

    def ends(s: TaskState) -> bool:
        return single and s.status in TERMINAL

    try:
        if announce and not single:
            yield event(None)
        if catch_up:
            # a catch-up is only ever for a resumed watch, whose cursor is still the ``after`` it resumed from
            log.info("watch resumed from %s reads %s of the state topic (before the ring)", cursor.encode(), catch_up)
            async for p, offset, s in read_state_topic(settings, catch_up, filter):
                cursor = cursor.advanced(p, offset)
                if unsent(s):
                    yield event(s)
                    if ends(s):
                        return
        for change in replay:
            cursor = cursor.merged(change.position)
            if unsent(change.state):
                yield event(change.state)
                if ends(change.state):
                    return
        if single:
            cursor = cursor.merged(start)
            if state is not None and state.version > seen:
                seen = state.version
                yield event(state)
            if state is not None and state.status in TERMINAL and state.version <= seen:
                return
        while True:
            item = await sub.queue.get()
            if item is _CLOSED:
                raise WatchUnavailable(
                    "the API is shutting down; resume from the last id at another or a restarted API")
            if item is _BEHIND:
                raise FellBehind(f"more than {sub.limit} changes waited for this watcher; resume from the last id")
            cursor = cursor.merged(item.position)
            if unsent(item.state):
                yield event(item.state)
                if ends(item.state):
                    return
    finally:
        feed.unsubscribe(sub)


async def read_state_topic(settings: Settings, ranges: dict[int, tuple[int, int]], filter: Filter,
                           budget_s: float = CATCH_UP_BUDGET_S) -> AsyncIterator[tuple[int, int, TaskState]]:
    """(partition, offset, state) of the task states in ``ranges`` ``{p: (from, to)}`` of ``<p>.state`` that match.

    Reads with a ``RangeReader`` of its own (assigned, no group) on a worker
    thread; ``WatchUnavailable`` if the broker does not deliver the ranges
    within ``budget_s``.
    """
    topic = Topics(settings.prefix).state
    wire = codec.WireFormat.of(settings)
    reader = RangeReader(settings, "taskstream-api-watch")
    batches = reader.read(topic, ranges, budget_s)
    try:
        while (batch := await asyncio.to_thread(next, batches, None)) is not None:
            for msg in batch:
                value = msg.value()
                if not value:
                    continue
                try:
                    state = wire.decode(value)
                except DecodeError:
                    continue
                if isinstance(state, TaskState) and filter.matches(state):
                    yield msg.partition(), msg.offset(), state
        if reader.unfinished:
            raise WatchUnavailable(f"could not read {topic} partitions {sorted(reader.unfinished)} "
                                   f"within {budget_s:.0f}s")
    except BrokerUnavailable as exc:
        raise WatchUnavailable(str(exc)) from exc
    finally:
        await asyncio.to_thread(_close, batches, reader)


def _close(batches, reader: RangeReader) -> None:
    batches.close()
    reader.close()
