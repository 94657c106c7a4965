"""A task's history: its events read back from ``<p>.events`` (``GET /tasks/{id}/events``).

Only the task's partition is read (``partitioner.partition_for``, the same
murmur2 the producers use), from the beginning, without a consumer group,
up to the partition's end offset as reported when the read starts: every
event acknowledged before the request is in the answer; events appended
while it reads may be or not.

The cost is one scan of one partition per request, so the API bounds it
(``HistoryReader``, ``ReadLimits``): scans run on a pool of their own
(``history_concurrency`` threads), never on the event loop nor on the
default executor that ``/readyz`` uses; a request waits at most
``history_wait_s`` for a free slot (else ``HistoryBusy``, 503 with
``Retry-After``); a scan that has not reached the end after
``history_budget_s`` stops (``HistoryTooExpensive``, 503 naming the
offline commands that read without a budget). A partial history is never
returned as if it were the whole one.

Time travel (``GET /tasks/{id}?as_of=``, ``task_state_at``) folds those
events, the ones with ``occurred_at <= as_of`` in log order, with the
processor's own fold. That is the one, deliberate exception to "api does
not import streams" (DESIGN §1): this module imports
``taskstream.streams.domain`` and nothing else from ``streams``. That
module is the pure state machine (no Kafka, no RocksDB, no clock, no I/O;
``taskstream.streams/__init__`` imports only it), and a second copy of the
fold in the API would be a second definition of what a task's state is,
free to drift from the one the processor applies.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import logging
import math
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from taskstream.schemas import BrokerUnavailable, DecodeError, Event, Settings, TaskState, Topics, codec
from taskstream.schemas.kafka import reader
from taskstream.schemas.log_reader import (
    BEGINNING,
    assign,
    at_partition_end,
    broker_errors,
    consume_available,
    topic_partitions,
    watermarks,
)
from taskstream.schemas.log_reader import position as record_position
from taskstream.schemas.observability import about
from taskstream.streams import domain  # pure: the one import of streams in the API (see the docstring)

from .models import rfc3339
from .partitioner import partition_for
from .problems import ProblemResponse, problem

log = logging.getLogger(__name__)

_JSON_FIELDS = frozenset({"payload", "result", "data", "template"})  # JSON text in the event: shown decoded


@dataclasses.dataclass(frozen=True, slots=True)
class ReadLimits:
    """Bounds of the API's expensive reads; ``create_app(settings, read_limits=...)`` sets an app's.

    - ``history_concurrency``: partition scans (``/tasks/{id}/events``,
      ``?as_of=``) running at once in one API process, each a consumer
      reading one partition from its start. More make history views faster
      under load and cost the broker more; the health probes never wait for
      them.
    - ``history_wait_s``: how long a history request waits for a free scan
      before it is answered 503 with ``Retry-After``.
    - ``history_budget_s``: a scan that has not reached the end of the
      partition after this long stops, and the request is answered 503
      naming the offline commands (``taskstream events tail --task``,
      ``taskstream state at --task``), which read without a budget. Raise
      it when partitions are long and the history views are worth the wait.
    - ``list_max_scan``: index entries ``GET /tasks`` examines per request.
      Filters without an index of their own (labels, a second filter) are
      checked entry by entry; when this many were examined before the page
      filled up, the page comes back partial (``"partial": true``) with a
      ``next_cursor`` to continue from.
    """

    history_concurrency: int = 4
    history_wait_s: float = 5.0
    history_budget_s: float = 10.0
    list_max_scan: int = 10_000

    def __post_init__(self) -> None:
        if self.history_concurrency < 1 or self.list_max_scan < 1:
            raise ValueError("history_concurrency and list_max_scan must be >= 1")
        if not (self.history_wait_s >= 0 and self.history_budget_s > 0):
            raise ValueError("history_wait_s must be >= 0 and history_budget_s > 0")


DEFAULT_LIMITS = ReadLimits()


class HistoryBusy(Exception):
    """Every scan slot stayed taken for ``ReadLimits.history_wait_s``: try again after ``retry_after_s``."""

    def __init__(self, limits: ReadLimits) -> None:
        self.retry_after_s = max(1, math.ceil(limits.history_wait_s))
        super().__init__(f"too many history reads at once: none of the {limits.history_concurrency} running "
                         f"finished within {limits.history_wait_s:g}s; retry after {self.retry_after_s}s")


class HistoryTooExpensive(Exception):
    """A scan that did not reach the end of the task's partition within its budget (nothing partial is returned)."""

    def __init__(self, task_id: str, topic: str, partition: int, scanned: int, position: int, end: int,
                 budget_s: float) -> None:
        self.task_id = task_id
        super().__init__(
            f"reading the history of task {task_id} stopped after its budget of {budget_s:g}s: {scanned} records of "
            f"partition {partition} of {topic} read (up to offset {position} of {end}); the partition is too long to "
            f"read per request (or the broker too busy). Read it without a budget with "
            f"`taskstream events tail --task {task_id}` "
            f"(or `taskstream state at TIME --task {task_id}` for a past state)"
        )


def history_problem(exc: HistoryBusy | HistoryTooExpensive) -> ProblemResponse:
    """503 for a history read refused (``history-busy``, with ``Retry-After``) or stopped (``read-too-expensive``)."""
    if isinstance(exc, HistoryBusy):
        return problem(503, "History reads busy", str(exc), kind="history-busy",
                       headers={"Retry-After": str(exc.retry_after_s)})
    log.warning("%s", exc, extra=about(exc.task_id))
    return problem(503, "History read too expensive", str(exc), kind="read-too-expensive")


def event_json(event: Event) -> dict[str, Any]:
    """One event as the API shows it: type, time, attempt, producer, actor (each or null), id, then its own fields."""
    out: dict[str, Any] = {
        "type": codec.type_name(event),
        "occurred_at": rfc3339(event.occurred_at),
        "attempt": getattr(event, "attempt", None),
        "producer": event.producer,
        "actor": getattr(event, "actor", None),
        "event_id": event.event_id,
    }
    for f in dataclasses.fields(event):
        if f.name in out or f.name in ("task_id",):
            continue
        value = getattr(event, f.name)
        if isinstance(value, datetime):
            value = rfc3339(value)
        elif f.name in _JSON_FIELDS and isinstance(value, str):
            try:
                value = codec.loads_json(value)
            except codec.JSONDecodeError:
                pass
        out[f.name] = value
    return out


def read_task_events(settings: Settings, task_id: str, *, budget_s: float | None = None) -> list[Event]:
    """Every event keyed by ``task_id`` in ``<p>.events``, oldest first (blocking).

    With ``budget_s``, raise ``HistoryTooExpensive`` if the partition's
    reported end is not reached within that many seconds; without it (the
    CLI), read however long it takes.
    """
    topic = Topics(settings.prefix).events
    wire = codec.WireFormat.of(settings)
    key = task_id.encode()
    started = time.monotonic()
    consumer = reader(settings, "taskstream-api-history", f"{settings.prefix}-api-history-{uuid.uuid4().hex}",
                      {"enable.auto.offset.store": False, "enable.partition.eof": True})
    try:
        partitions = topic_partitions(consumer, 5).get(topic)
        if not partitions:
            raise BrokerUnavailable(f"topic {topic} is not available")
        partition = partition_for(key, partitions)
        position, end = watermarks(consumer, topic, [partition], 5)[partition]
        assign(consumer, topic, {partition: BEGINNING})
        events: list[Event] = []
        scanned = 0
        while position < end:
            wait = 1.0
            if budget_s is not None:
                now = time.monotonic()
                if now >= started + budget_s:
                    raise HistoryTooExpensive(task_id, topic, partition, scanned, position, end, budget_s)
                wait = min(wait, started + budget_s - now)
            with broker_errors(f"partition {partition} of {topic}"):
                messages = consume_available(consumer, 500, wait)
            for msg in messages:
                err = msg.error()
                if err is not None:
                    if at_partition_end(msg):
                        position = max(position, record_position(msg)[1])
                    else:
                        log.warning("history of task_id=%s: consumer error: %s", task_id, err, extra=about(task_id))
                    continue
                _, offset = record_position(msg)
                position = offset + 1
                if offset >= end:
                    continue  # appended after the read started
                scanned += 1
                if msg.key() == key:
                    try:
                        value = wire.decode(msg.value())
                    except DecodeError as exc:
                        log.warning("history of task_id=%s: undecodable record at offset %d: %s", task_id,
                                    msg.offset(), exc, extra=about(task_id))
                        continue
                    if isinstance(value, Event):
                        events.append(value)
        return events
    except BrokerUnavailable as exc:
        raise BrokerUnavailable(f"reading the event log failed: {exc}") from exc
    finally:
        consumer.close()


def task_state_at(
    settings: Settings, task_id: str, as_of: datetime, *, budget_s: float | None = None
) -> TaskState | None:
    """The task as it was at ``as_of``: its events with ``occurred_at <= as_of``, folded in the order the
    processor applied them (``domain.fold_log``: its follow-ups right after their triggers).

    None when the task did not exist yet (or ``task_id`` is a schedule's id).
    """
    state = domain.fold_log(read_task_events(settings, task_id, budget_s=budget_s), as_of)
    return state if isinstance(state, TaskState) else None


_P = ParamSpec("_P")
_T = TypeVar("_T")


class HistoryReader:
    """The API's gate to the history scans: at most ``history_concurrency`` at once, each within its budget.

    Scans run on a thread pool of their own, so a burst of history requests
    never holds the event loop or the default executor (``/readyz`` runs its
    broker calls there). A slot is freed when its scan ends, not when its
    request does: a client that hangs up cannot make room for more scans
    than the limit.
    """

    def __init__(self, settings: Settings, limits: ReadLimits) -> None:
        self.settings = settings
        self.limits = limits
        self._slots = asyncio.Semaphore(limits.history_concurrency)
        self._pool = concurrent.futures.ThreadPoolExecutor(limits.history_concurrency,
                                                           thread_name_prefix="taskstream-history")

    async def events(self, task_id: str) -> list[Event]:
        return await self._run(read_task_events, self.settings, task_id, budget_s=self.limits.history_budget_s)

    async def state_at(self, task_id: str, as_of: datetime) -> TaskState | None:
        return await self._run(task_state_at, self.settings, task_id, as_of, budget_s=self.limits.history_budget_s)

    async def _run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            async with asyncio.timeout(self.limits.history_wait_s):
                await self._slots.acquire()
        except TimeoutError:
            raise HistoryBusy(self.limits) from None
        loop = asyncio.get_running_loop()
        try:
            future = self._pool.submit(functools.partial(fn, *args, **kwargs))
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: _call_soon(loop, self._slots.release))
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> None:
    try:
        loop.call_soon_threadsafe(callback)
    except RuntimeError:  # the loop is closed: the app is gone, and its slots with it
        pass
