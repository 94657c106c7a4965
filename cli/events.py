"""`taskstream events tail|replay`: the event log for people, and a copy of it for another cluster.

``tail`` decodes ``<p>.events`` (every fact about every task, DESIGN §3)
into one line per event, or one JSON object per event for scripts. It
reads each partition from the beginning (or from ``--since``) up to the end
it found when it started (``_log``), prints oldest first, and with
``--follow`` goes on printing what is appended until interrupted. ``--task``
reads only the partition that holds the task (murmur2 of its id, as every
producer places it) and keeps the records keyed by it.

``replay`` copies ``<p>.events`` into ``<NEW>.events``: same partition,
key, value, headers and record timestamp, in the same order, optionally
only each partition's records up to a time. A processor started with prefix
NEW then folds the copy into the same states (the log is the truth).

Time filters (``--since``, ``--until``) compare the record timestamp, the
time the producer appended the record: it exists for undecodable records
too and is what the broker's offset-by-time lookup uses. Our producers
stamp it when they produce, within milliseconds of the event's
``occurred_at``, which is what the TIME column shows.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from taskstream.schemas import EVENT_TYPES, BrokerUnavailable, DecodeError, Settings, Topics, catalogue, codec
from taskstream.schemas.kafka import ensure_topics
from taskstream.schemas.kafka import producer as kafka_producer
from taskstream.schemas.log_reader import (
    broker_errors,
    consume_available,
    offsets_at,
    position,
    read_range,
    watermarks,
)

from ._log import LogError, connect, iso, partitions_of, reader, record_time, to_ms

EVENT_NAMES: dict[str, str] = {t.__name__.lower(): t.__name__ for t in EVENT_TYPES}
#: Fields every event has; the summary shows the others.
_COMMON = ("task_id", "occurred_at", "producer", "event_id", "attempt")
#: Per type, the fields worth a glance, in this order (the rest are in --json); ``actor`` (who asked) first.
_SUMMARY: dict[str, tuple[str, ...]] = {
    "TaskCreated": ("actor", "handler", "priority", "run_at", "depends_on", "max_attempts", "timeout_s", "workflow_id",
                    "schedule_id", "scheduled_for", "name"),
    "TaskQueued": ("priority", "due_at"),
    "TaskSucceeded": ("result",),
    "TaskFailed": ("error", "permanent", "retry_delay_s"),
    "DependencyRegistered": ("dependent",),
    "DependencyResolved": ("upstream", "outcome"),
    "TaskCancelled": ("actor", "reason",),
    "TaskUpdated": ("actor", "priority", "run_at", "timeout_s", "max_attempts", "payload", "expected_version"),
    "TaskCheckpointed": ("data",),
    "TaskRetryScheduled": ("not_before", "delay_s", "priority", "error"),
    "TaskDeadLettered": ("error", "handler", "priority"),
    "LeaseExpired": ("lease_s",),
    "TaskRedriven": ("actor", "reason",),
    "ScheduleCreated": ("actor", "cron", "timezone", "start_at", "end_at", "misfire", "name"),
    "ScheduleFired": ("fire_at", "created_task_id", "skipped"),
    "ScheduleBackfilled": ("start", "end", "overlap", "count"),
    "ScheduleDeleted": ("actor", "reason",),
    "SchedulePaused": ("actor", "reason",),
    "ScheduleResumed": ("actor",),
    "ScheduleTriggered": ("created_task_id", "actor",),
}


def event_type_name(text: str) -> str:
    """The record name of an event type given in any case (``taskfailed`` -> ``TaskFailed``); ValueError if none."""
    name = EVENT_NAMES.get(text.strip().lower().replace("_", ""))
    if name is None:
        raise ValueError(f"unknown event type {text!r}; one of {', '.join(sorted(EVENT_NAMES.values()))}")
    return name


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One record of ``<p>.events``: the decoded event, or why it could not be decoded."""

    partition: int
    offset: int
    timestamp_ms: int
    key: str
    event: Any = None
    problem: str | None = None

    @property
    def type(self) -> str | None:
        return codec.type_name(self.event) if self.event is not None else None

    @property
    def sort_key(self) -> tuple[int, int, int]:
        return (self.timestamp_ms, self.partition, self.offset)

    @property
    def time(self) -> datetime | None:
        return getattr(self.event, "occurred_at", None) or record_time(self.timestamp_ms)

    def as_json(self) -> dict[str, Any]:
        where = {"partition": self.partition, "offset": self.offset, "timestamp": iso(record_time(self.timestamp_ms))}
        if self.event is None:
            return {"type": None, "undecodable": self.problem, "key": self.key, **where}
        fields = {f.name: _jsonable(getattr(self.event, f.name)) for f in dataclasses.fields(self.event)}
        return {"type": self.type, **fields, **where}

    def summary(self, width: int = 100) -> str:
        if self.event is None:
            return f"(undecodable: {self.problem})"
        parts = []
        for name in _SUMMARY.get(codec.type_name(self.event), ()):
            value = getattr(self.event, name, None)
            if value in (None, "", [], {}) or (name == "permanent" and value is False) or \
                    (name == "skipped" and value == 0):
                continue
            if isinstance(value, datetime):
                value = iso(value)
            elif isinstance(value, list):
                value = ",".join(map(str, value))
            parts.append(f"{name}={_one_line(str(value), 60)}")
        return _one_line(" ".join(parts), width)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    return value


def _one_line(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def decode(m, wire: codec.WireFormat = codec.SINGLE_OBJECT) -> EventRecord:
    """A raw message as an ``EventRecord``; never raises."""
    key = (m.key() or b"").decode(errors="replace")
    ts = m.timestamp()[1]
    base = dict(partition=m.partition(), offset=m.offset(), timestamp_ms=ts if ts is not None else -1, key=key)
    try:
        value = wire.decode(m.value())
    except DecodeError as exc:
        return EventRecord(**base, problem=str(exc))
    if type(value) not in EVENT_TYPES:
        return EventRecord(**base, problem=f"a {codec.type_name(value)} record, not an event")
    return EventRecord(**base, event=value)


TABLE_HEADER = ("TIME", "WHERE", "TYPE", "TASK", "ATTEMPT", "SUMMARY")
_WIDTHS = (24, 9, 20, 32, 7)


def table_line(row: tuple[str, ...]) -> str:
    cells = [c.ljust(w) for c, w in zip(row, _WIDTHS, strict=False)]  # the last column (summary) is not padded
    return "  ".join([*cells, row[-1]]).rstrip()


def table_row(r: EventRecord) -> tuple[str, ...]:
    attempt = getattr(r.event, "attempt", None)
    return (iso(r.time) or "-", f"{r.partition}@{r.offset}", r.type or "?",
            getattr(r.event, "task_id", None) or r.key or "-", "-" if attempt is None else str(attempt), r.summary())


# ---------------------------------------------------------------- tail


@dataclass(frozen=True, slots=True)
class TailQuery:
    task: str | None = None
    types: frozenset[str] = frozenset()
    since: datetime | None = None
    limit: int | None = None

    def match(self, m, wire: codec.WireFormat = codec.SINGLE_OBJECT) -> EventRecord | None:
        """The record of message ``m`` if it passes the filters, else None."""
        if m.error() is not None:
            return None
        if self.task is not None and m.key() != self.task.encode():
            return None
        if self.since is not None and m.timestamp()[1] < to_ms(self.since):
            return None
        r = decode(m, wire)
        return r if not self.types or r.type in self.types else None


def tail(settings: Settings, query: TailQuery, emit: Callable[[EventRecord], None], *, follow: bool = False,
         stop: Callable[[], bool] = lambda: False, timeout: float = 15.0,
         progress: Callable[[int], Any] | None = None, on_total: Callable[[int], None] | None = None) -> int:
    """Emit the matching records up to the end found at start, oldest first; then, with ``follow``, new ones.

    Returns the number emitted. ``stop()`` is checked while following.
    """
    topic = Topics(settings.prefix).events
    wire = codec.WireFormat.of(settings)
    n = partitions_of(settings, connect(settings, timeout), topic)
    consumer = reader(settings, "events")
    try:
        if query.task is not None:
            # The API's copy of Kafka's murmur2 placement; imported here because the api package is slow to import.
            from taskstream.api.partitioner import partition_for

            wanted = [partition_for(query.task.encode(), n)]
        else:
            wanted = list(range(n))
        marks = {p: m for p, m in watermarks(consumer, topic, range(n), timeout).items() if p in wanted}
        starts = {p: low for p, (low, _) in marks.items()}
        if query.since is not None:
            starts = offsets_at(consumer, topic, marks, query.since, timeout)
        if query.limit is not None and query.task is None and not query.types:
            # The newest N of the whole log are among the newest N of each partition.
            starts = {p: max(s, marks[p][1] - query.limit) for p, s in starts.items()}
        ends = {p: high for p, (_, high) in marks.items()}
        if on_total is not None:
            on_total(sum(max(0, ends[p] - starts[p]) for p in starts))
        later: list = []
        kept: list = []  # a heap of (sort_key, record), the newest `limit` when limited
        for m in read_range(consumer, topic, starts, ends, keep_assigned=follow, after_end=later.append,
                            idle_timeout=max(timeout, 30.0)):
            if progress is not None:
                progress(1)
            r = query.match(m, wire)
            if r is None:
                continue
            item = (r.sort_key, r)
            if query.limit is None:
                kept.append(item)
            elif len(kept) < query.limit:
                heapq.heappush(kept, item)
            else:
                heapq.heappushpop(kept, item)
        count = 0
        for _, r in sorted(kept, key=lambda x: x[0]):
            emit(r)
            count += 1
        if not follow:
            return count
        while True:
            for m in later:
                r = query.match(m, wire) if m.partition() in marks else None
                if r is not None:
                    emit(r)
                    count += 1
            if stop():
                return count
            with broker_errors(f"reading {topic}"):
                later = consume_available(consumer, 500, 0.2)
    except BrokerUnavailable as exc:
        raise LogError(str(exc)) from None
    finally:
        consumer.close()


# ---------------------------------------------------------------- replay


@dataclass(frozen=True, slots=True)
class ReplayResult:
    source: str
    target: str
    copied: int
    per_partition: dict[int, int]
    seconds: float

    @property
    def rate(self) -> float:
        return self.copied / self.seconds if self.seconds > 0 else 0.0


def target_settings(settings: Settings, prefix: str, partitions: int) -> Settings:
    """``settings`` for prefix ``prefix`` (validated as any prefix) with ``partitions`` partitions."""
    return Settings(**{**settings.model_dump(), "prefix": prefix, "partitions": partitions})


def replay(settings: Settings, to_prefix: str, until: datetime | None = None, *, timeout: float = 15.0,
           progress: Callable[[int], Any] | None = None, on_total: Callable[[int], None] | None = None) -> ReplayResult:
    """Copy ``<p>.events`` up to its current end (or each partition's records up to ``until``) to ``<NEW>.events``.

    Creates NEW's topics from the catalogue (with the source's partition
    count) when missing; refuses when NEW is the source prefix, when one of
    NEW's topics differs from the catalogue, or when ``<NEW>.events``
    already holds records (two histories must not interleave). ``until``
    cuts each partition at its first record stamped after it, so the copy
    of a partition is always a prefix of the original (no holes, even if
    producers' clocks disagree a little).
    """
    source = Topics(settings.prefix).events
    if to_prefix == settings.prefix:
        raise LogError(f"--to-prefix {to_prefix} is the source prefix; choose a new one")
    n = partitions_of(settings, connect(settings, timeout), source)
    target_s = target_settings(settings, to_prefix, n)
    target = Topics(to_prefix).events
    try:
        problems = ensure_topics(target_s, catalogue(target_s), timeout=timeout)
    except Exception as exc:  # BrokerUnavailable, TopicMismatch or another failure creating topics
        raise LogError(f"creating the topics of prefix {to_prefix}: {exc}") from None
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise LogError(f"prefix {to_prefix}: {problems[0]}{more}")
    consumer = reader(settings, "replay")
    copied: dict[int, int] = {p: 0 for p in range(n)}
    try:
        held = watermarks(consumer, target, range(n), timeout)
        if any(high > low for low, high in held.values()):
            raise LogError(f"{target} already holds {sum(h - lo for lo, h in held.values())} record(s): "
                           "replay writes only into an empty log (choose another prefix)")
        marks = watermarks(consumer, source, range(n), timeout)
        starts = {p: low for p, (low, _) in marks.items()}
        ends = {p: high for p, (_, high) in marks.items()}
        if on_total is not None:
            on_total(sum(ends[p] - starts[p] for p in starts))
        producer = kafka_producer(settings, "taskstream-cli-replay",
                                  {"batch.num.messages": 10000, "linger.ms": 5, "queue.buffering.max.messages": 200000})
        acked: list[int] = [0]
        errors: list[object] = []  # the library's delivery errors

        def done(err: object, _msg: object) -> None:
            if err is None:
                acked[0] += 1
            else:
                errors.append(err)

        def send(m) -> None:
            while True:
                try:
                    with broker_errors(f"replaying {source} to {target}"):
                        producer.produce(target, m.value(), m.key(), partition=m.partition(), headers=m.headers(),
                                         timestamp=m.timestamp()[1] if m.timestamp()[1] >= 0 else 0, on_delivery=done)
                    return
                except BufferError:
                    producer.poll(0.05)

        cut_at = to_ms(until) if until is not None else None
        cut: set[int] = set()
        started = time.monotonic()
        for m in read_range(consumer, source, starts, ends, idle_timeout=max(timeout, 30.0)):
            if progress is not None:
                progress(1)
            p, _ = position(m)
            if p in cut:
                continue
            if cut_at is not None and m.timestamp()[1] > cut_at:
                cut.add(p)
                continue
            send(m)
            copied[p] += 1
            producer.poll(0)
        if producer.flush(timeout * 4) != 0 or errors or acked[0] != sum(copied.values()):
            raise LogError(f"copying to {target}: {acked[0]} of {sum(copied.values())} records acknowledged"
                           + (f": {errors[0]}" if errors else ""))
        return ReplayResult(source, target, acked[0], copied, time.monotonic() - started)
    except BrokerUnavailable as exc:
        raise LogError(str(exc)) from None
    finally:
        consumer.close()


def json_line(r: EventRecord) -> str:
    return json.dumps(r.as_json())


def lines_for(records: Iterable[EventRecord]) -> list[str]:
    return [table_line(TABLE_HEADER), *(table_line(table_row(r)) for r in records)]
