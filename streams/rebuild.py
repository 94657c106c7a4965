"""Rebuild task state from the event log and compare it with the live state (``taskstream state rebuild``).

DESIGN §4: every table must be rebuildable from ``<p>.events`` and comparable
with the live one. This module reads each partition of ``<p>.events`` from
offset 0 and folds it per message key with the same pure core the processor
uses (``domain.evolve``), keyed exactly as the processor keys its tables (the
record key, not the event's ``task_id``). Records without a key or that do
not decode are counted and skipped: the processor sends those to the dlq.

**Which fields may differ, and why.** The processor folds an event, asks the
core what follows (``domain.react``) and applies its *own* follow-up events
(a TaskQueued after TaskCreated, a TaskRetryScheduled after TaskFailed, …)
inline, in the same step, before it appends them to the log. A plain fold of
the log applies the same events, with the same ``occurred_at``, in the same
order, so every field comes out equal but one: ``last_offset``, the
processor's idempotency bookmark, which it sets to the offset of the event
that *triggered* a step (its inline follow-ups, read back later, change
nothing and move nothing), while a fold of the log can only say which record
it read last. ``IGNORED_FIELDS`` holds exactly that field. Anything else that
differs is a real divergence and is reported.

**Follow-ups applied at once.** A client event of the same task (say a
TaskCancelled) can be appended between a trigger and the processor's own
follow-up, so the log's order differs from the order the processor applied.
Each key is folded with ``domain.fold_next``, the one fold order the
processor, time travel and history share (``streams/domain/order.py``): a
follow-up is applied right after its trigger, the later events again on top.
A key with no event in between folds as before (the common case costs a dict
lookup).

**Dependents.** A task's dependents are edge records of their own in
``<p>.state`` (``domain.edge_key``); the fold records one where the
processor does (``domain.recorded``), and a task's ``dependents`` are
compared as the API shows them: its edges and any its record embeds.

**Where the fold stops.** By default at each partition's end offset as of the
start; the live ``<p>.state`` is read up to its end offsets taken next (like
``processor._restore``), so a comparison is exact while the processors are at
rest (under load, states folded meanwhile may differ). With ``write`` the fold stops at the processor
group's committed offsets instead: that is where the processors resume, and
they react to everything after it themselves, so the states written are the
ones their tables held at that point, with ``last_offset`` at the last record
folded (the processor skips what a written state already holds). Partitions
without a committed offset are folded to their end.

**Parallelism.** Partitions are independent (a key lives in one), so a large
log is folded by a pool of processes, each reading, decoding, folding,
comparing and writing its own partitions; only counts and mismatches travel
back. Decoding (fastavro) and ``dataclasses.replace`` in ``evolve`` are the
cost (see docs/benchmarks/); a small log is folded in-process.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeAlias

from taskstream.schemas import (
    BrokerUnavailable,
    ControlState,
    DecodeError,
    DependencyRegistered,
    Event,
    GateState,
    ScheduleState,
    Settings,
    TaskState,
    Topics,
    TriggerState,
    codec,
    kafka,
)
from taskstream.schemas.kafka import admin, wait_for_broker
from taskstream.schemas.log_reader import (
    broker_errors,
    end_offsets,
    group_offsets,
    position,
    read_to_ends,
    reason,
    topic_partitions,
)

from . import domain

log = logging.getLogger(__name__)

#: Fields a rebuilt state may legitimately differ in from the live one (see the module docstring).
IGNORED_FIELDS = frozenset({"last_offset"})
#: Below this many events the fold runs in this process (a pool costs ~0.5 s to start).
POOL_THRESHOLD = 100_000
READ_BATCH = 10_000

State: TypeAlias = TaskState | ScheduleState | GateState | ControlState | TriggerState


class RebuildError(Exception):
    """What ``state rebuild`` cannot do (bad prefix, broker down); one line for the user."""


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One difference between the live and the rebuilt state of ``key``.

    ``field`` is ``"<missing>"`` for a key present on one side only (the
    missing side's value is None) and ``"<type>"`` for a task on one side and
    a schedule on the other.
    """

    key: str
    field: str
    live: Any
    rebuilt: Any

    def as_json(self) -> dict[str, Any]:
        return {"id": self.key, "field": self.field, "live": _plain(self.live), "rebuilt": _plain(self.rebuilt)}

    def line(self) -> str:
        return f"{self.key}\t{self.field}\tlive={_show(self.live)}\trebuilt={_show(self.rebuilt)}"


MISSING = "<missing>"


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (TaskState, ScheduleState, GateState, ControlState, TriggerState)):
        return type(value).__name__
    return value


def _show(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (TaskState, ScheduleState)):
        return f"{type(value).__name__}(status={value.status})"
    if isinstance(value, GateState):
        return f"GateState(holders={len(value.holders)}, waiting={len(value.waiting)})"
    return repr(value)


# ------------------------------------------------------------------ the pure part


_fold_next = domain.fold_next


class LogFold:
    """Folds records of ``<p>.events`` per key (pure: no Kafka; feed it records in log order per partition).

    Each key folds in the processor's order (``domain.fold_next``, the one
    fold order). ``as_of`` keeps only events with ``occurred_at <= as_of``
    (time travel), still in log order.
    """

    __slots__ = ("states", "partition_of", "last_read", "events", "skipped", "undecodable", "keyless", "as_of",
                 "since", "_decode", "edges", "edge_partition")

    def __init__(self, as_of: datetime | None = None, wire: codec.WireFormat = codec.SINGLE_OBJECT) -> None:
        self.states: dict[bytes, State] = {}
        self.partition_of: dict[bytes, int] = {}
        self.last_read: dict[bytes, int] = {}
        self.events = 0
        self.skipped = 0
        self.undecodable = 0
        self.keyless = 0
        self.as_of = as_of
        # key -> what domain.fold_next keeps while a trigger's follow-up is still to come
        self.since: dict[bytes, list] = {}
        self._decode = wire.decode
        #: edge key (``domain.edge_key``) -> the registration that recorded it (the latest, as the processor keeps)
        self.edges: dict[bytes, DependencyRegistered] = {}
        self.edge_partition: dict[bytes, int] = {}

    def add(self, partition: int, offset: int, key: bytes | None, value: bytes | None) -> None:
        """Fold one record (the hot path of a rebuild: kept to one call of decode and one of the fold)."""
        if not key:
            self.keyless += 1
            return
        try:
            event = self._decode(value)
        except DecodeError:
            self.undecodable += 1
            return
        if not isinstance(event, Event):
            self.undecodable += 1
            return
        if self.as_of is not None and event.occurred_at > self.as_of:
            self.skipped += 1
            return
        self.events += 1
        states = self.states
        before = states.get(key)
        pending = self.since.get(key)
        if type(event) is DependencyRegistered and (edge := domain.recorded(before, event)) is not None:
            edge_key = domain.edge_key(edge.task_id, edge.dependent)
            self.edges[edge_key] = edge
            self.edge_partition[edge_key] = partition
        after, awaiting = _fold_next(before, pending, event)
        if awaiting is not pending:
            if awaiting is None:
                del self.since[key]
            else:
                self.since[key] = awaiting
        if after is not before:
            states[key] = after
            self.partition_of[key] = partition
        self.last_read[key] = offset

    def result(self, key: bytes) -> State | None:
        """The rebuilt state of ``key``, its ``last_offset`` at the last record of it that was folded."""
        state = self.states.get(key)
        if state is None:
            return None
        return domain.at_offset(state, self.last_read[key])

    def dependents(self) -> dict[str, list[str]]:
        """Task id -> the dependents its edges recorded."""
        return edges_by_upstream(self.edges)

    def counts(self) -> tuple[int, int]:
        """(tasks, schedules) rebuilt."""
        schedules = sum(1 for s in self.states.values() if isinstance(s, ScheduleState))
        return len(self.states) - schedules, schedules


def compare_states(key: str, live: State | None, rebuilt: State | None) -> list[Mismatch]:
    """Every field in which ``live`` and ``rebuilt`` differ, ``IGNORED_FIELDS`` aside."""
    if live is None or rebuilt is None:
        if live is rebuilt:
            return []
        return [Mismatch(key, MISSING, live, rebuilt)]
    if type(live) is not type(rebuilt):
        return [Mismatch(key, "<type>", live, rebuilt)]
    out = []
    for f in dataclasses.fields(live):
        if f.name in IGNORED_FIELDS:
            continue
        a, b = getattr(live, f.name), getattr(rebuilt, f.name)
        if a != b:
            out.append(Mismatch(key, f.name, a, b))
    return out


def compare(live: Mapping[bytes, State], rebuilt: Mapping[bytes, State],
            live_dependents: Mapping[str, list[str]] | None = None,
            rebuilt_dependents: Mapping[str, list[str]] | None = None) -> list[Mismatch]:
    """Mismatches of every key on either side, ordered by key then field order.

    A task's ``dependents`` are compared as the API shows them: its edges
    (``*_dependents``, task id -> dependents) and any its record embeds
    (``domain.with_dependents``).
    """
    out: list[Mismatch] = []
    for key in sorted(set(live) | set(rebuilt)):
        a, b = live.get(key), rebuilt.get(key)
        if live_dependents is not None and a is not None:
            a = domain.with_dependents(a, live_dependents.get(a.task_id, ()))
        if rebuilt_dependents is not None and b is not None:
            b = domain.with_dependents(b, rebuilt_dependents.get(b.task_id, ()))
        out += compare_states(key.decode(errors="replace"), a, b)
    return out


def edges_by_upstream(edges: Iterable[bytes]) -> dict[str, list[str]]:
    """Edge keys grouped: upstream task id -> its dependents."""
    out: dict[str, list[str]] = {}
    for key in edges:
        upstream, dependent = domain.edge_of(key)
        out.setdefault(upstream, []).append(dependent)
    return out


def fold_events(events: Iterable[Event], as_of: datetime | None = None) -> State | None:
    """One task's state from its events (log order), optionally as it was at ``as_of``, folded in the
    order the processor applied them (``domain.fold_log``), like ``GET /tasks/{id}?as_of=``."""
    return domain.fold_log(list(events), as_of)


# ------------------------------------------------------------------ Kafka


@dataclass
class PartResult:
    """What folding some partitions gave (sent back from a pool worker)."""

    events: int = 0
    tasks: int = 0
    schedules: int = 0
    skipped: int = 0
    undecodable: int = 0
    keyless: int = 0
    live: int = 0
    written: int = 0
    cpu_s: float = 0.0  # CPU time of the process(es) that read, decoded and folded
    mismatches: list[Mismatch] = field(default_factory=list)
    states: dict[bytes, State] | None = None

    def merge(self, other: PartResult) -> None:
        for name in ("events", "tasks", "schedules", "skipped", "undecodable", "keyless", "live", "written", "cpu_s"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.mismatches += other.mismatches
        if other.states is not None:
            self.states = {**(self.states or {}), **other.states}


@dataclass(frozen=True)
class Job:
    """The work of one worker: its partitions and where each read stops (exclusive end offsets)."""

    settings: Settings
    partitions: tuple[int, ...]
    event_ends: dict[int, int]
    state_ends: dict[int, int] | None = None  # read <p>.state up to these end offsets and compare
    write: bool = False
    keep_states: bool = False
    as_of: datetime | None = None


def _reader(settings: Settings, name: str):
    return kafka.reader(settings, name, f"{name}-{uuid.uuid4().hex[:8]}", {  # assigned, never joined
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
        "queued.max.messages.kbytes": 256 * 1024,
    })


def read_live(settings: Settings, ends: Mapping[int, int], edges: set[bytes] | None = None) -> dict[bytes, State]:
    """The live ``<p>.state`` of some partitions, each read up to (excluding) ``ends[p]``; the keys of its
    dependency edges go to ``edges`` if given."""
    topic = Topics(settings.prefix).state
    wire = codec.WireFormat.of(settings)
    live: dict[bytes, State] = {}
    consumer = _reader(settings, "taskstream-state-live")
    try:
        for batch in read_to_ends(consumer, topic, ends):
            for m in batch:
                key = m.key()
                if not key:
                    continue
                if domain.is_edge_key(key):
                    if edges is not None:
                        (edges.add if m.value() else edges.discard)(key)
                    continue
                if not m.value():
                    live.pop(key, None)
                    continue
                try:
                    value = wire.decode(m.value())
                except DecodeError:
                    log.warning("undecodable record in %s[%d]@%d", topic, m.partition(), m.offset())
                    continue
                if isinstance(value, (TaskState, ScheduleState, GateState, ControlState, TriggerState)):
                    live[key] = value
    finally:
        consumer.close()
    return live


def run_job(job: Job, progress: Callable[[int], None] | None = None) -> PartResult:
    """Fold ``job.partitions`` of ``<p>.events``; compare with and/or write to ``<p>.state``."""
    cpu = time.process_time()
    topics = Topics(job.settings.prefix)
    fold = LogFold(as_of=job.as_of, wire=codec.WireFormat.of(job.settings))
    add = fold.add
    consumer = _reader(job.settings, "taskstream-state-rebuild")
    try:
        for batch in read_to_ends(consumer, topics.events, {p: job.event_ends[p] for p in job.partitions},
                                  batch=READ_BATCH):
            for m in batch:
                add(*position(m), m.key(), m.value())
            if progress is not None:
                progress(len(batch))
    finally:
        consumer.close()
    out = PartResult(events=fold.events, skipped=fold.skipped, undecodable=fold.undecodable, keyless=fold.keyless)
    out.tasks, out.schedules = fold.counts()
    # Only a written state needs its last_offset (compare ignores it): skip a copy of every state otherwise.
    rebuilt = ({key: domain.at_offset(state, fold.last_read[key]) for key, state in fold.states.items()}
               if job.write else fold.states)
    dependents = fold.dependents()
    if job.state_ends is not None:
        live_edges: set[bytes] = set()
        live = read_live(job.settings, {p: job.state_ends[p] for p in job.partitions}, live_edges)
        out.live = len(live)
        out.mismatches = compare(live, rebuilt, edges_by_upstream(live_edges), dependents)
    if job.write:
        written = _write_states(job.settings, topics.state, {**fold.edges, **rebuilt},
                                {**fold.edge_partition, **fold.partition_of})
        out.written = written - len(fold.edges)  # states; their edges go with them
    if job.keep_states:
        out.states = {k: domain.with_dependents(s, dependents.get(s.task_id, ())) for k, s in rebuilt.items()}
    out.cpu_s = time.process_time() - cpu
    return out


def _write_states(settings: Settings, topic: str, states: Mapping[bytes, State | DependencyRegistered],
                  partition_of: Mapping[bytes, int]) -> int:
    producer = kafka.producer(settings, "taskstream-state-write", {"linger.ms": 5})
    wire = codec.WireFormat.of(settings)
    failed: list[object] = []  # the library's delivery errors

    def done(err: object, msg: object) -> None:
        if err is not None:
            failed.append(err)

    for key, state in states.items():
        while True:
            try:
                with broker_errors(f"broker at {settings.bootstrap_servers}"):
                    producer.produce(topic, wire.encode(state), key, partition=partition_of[key],
                                     headers=codec.headers(state), on_delivery=done)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(60)
    if remaining or failed:
        raise BrokerUnavailable(f"{remaining} state(s) unacknowledged, errors: {failed[:3]}")
    return len(states)


def _run_job_in_worker(indexed: tuple[int, Job]) -> tuple[int, PartResult]:
    logging.getLogger("taskstream.librdkafka").setLevel(logging.CRITICAL)
    return indexed[0], run_job(indexed[1])


# ------------------------------------------------------------------ the command


@dataclass
class Report(PartResult):
    seconds: float = 0.0
    partitions: int = 0
    workers: int = 1
    until: str = "end"

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_rate(self) -> float:
        """Events per CPU-second of the fold processes: what a core gives, whatever else loads the machine."""
        return self.events / self.cpu_s if self.cpu_s > 0 else 0.0


#: How long a rebuild goes on trying a broker that refuses the connection before it gives up.
REFUSED_S = 1.0


def _metadata(settings: Settings, timeout: float) -> int:
    """Partitions of ``<p>.events`` (checking ``<p>.state`` has as many); ``RebuildError`` when missing."""
    topics = Topics(settings.prefix)
    try:
        wait_for_broker(settings, timeout, refused_s=REFUSED_S)
    except BrokerUnavailable as exc:
        raise RebuildError(str(exc)) from None
    try:
        md = topic_partitions(admin(settings), timeout)
    except BrokerUnavailable as exc:
        raise RebuildError(f"no Kafka broker answered at {settings.bootstrap_servers} within {timeout:.0f}s: "
                           f"{reason(exc)}") from None
    for name in (topics.events, topics.state):
        if not md.get(name):
            raise RebuildError(f"topic {name} does not exist at {settings.bootstrap_servers} "
                               "(wrong TASKSTREAM_PREFIX? `taskstream topics create` makes it)")
    n = md[topics.events]
    if md[topics.state] != n:
        raise RebuildError(f"{topics.events} and {topics.state} have different partition counts")
    return n


def _ends(settings: Settings, topic: str, partitions: int, timeout: float) -> dict[int, int]:
    """Each partition's end (high watermark) of ``topic`` now."""
    consumer = _reader(settings, "taskstream-state-ends")
    try:
        return end_offsets(consumer, topic, range(partitions), timeout)
    finally:
        consumer.close()


def committed_offsets(settings: Settings, partitions: int, timeout: float = 10.0) -> dict[int, int | None]:
    """Where the processor group resumes in each partition of ``<p>.events`` (None: nothing committed)."""
    topics = Topics(settings.prefix)
    client = admin(settings, "taskstream-state-committed")  # kept referenced until the answer is in
    got = group_offsets(client, topics.processor_group, [(topics.events, p) for p in range(partitions)], timeout)
    return {p: got.get((topics.events, p)) for p in range(partitions)}


def rebuild(settings: Settings, *, verify: bool = False, write: bool = False, as_of: datetime | None = None,
            keep_states: bool = False, workers: int | None = None, timeout: float = 15.0,
            progress: Callable[[int], None] | None = None, on_total: Callable[[int], None] | None = None) -> Report:
    """Fold the whole of ``<p>.events`` (see the module docstring); ``RebuildError`` on a bad prefix or broker.

    ``on_total`` is told the number of records to read before reading starts
    (for a progress bar); ``progress`` then gets the number read so far in steps.
    """
    started = time.monotonic()
    try:
        n = _metadata(settings, timeout)
        topics = Topics(settings.prefix)
        ends = _ends(settings, topics.events, n, timeout)
        until = "end"
        if write:
            committed = committed_offsets(settings, n, timeout)
            if any(c is not None for c in committed.values()):
                until = "processor commits"
            ends = {p: (c if c is not None else ends[p]) for p, c in committed.items()}
        state_ends = _ends(settings, topics.state, n, timeout) if verify or write else None
        total = sum(ends.values())
        if on_total is not None:
            on_total(total)
        if workers is None:
            workers = min(os.cpu_count() or 1, n) if total >= POOL_THRESHOLD else 1
        workers = max(1, min(workers, n))
        groups = [tuple(range(n))[i::workers] for i in range(workers)]
        jobs = [Job(settings, g, ends, state_ends, write, keep_states, as_of) for g in groups]
        report = Report(partitions=n, workers=workers, until=until)
        if workers == 1:
            report.merge(run_job(jobs[0], progress))
        else:
            # spawn: the parent already holds librdkafka clients (threads), which must not be forked.
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(workers) as pool:
                for i, part in pool.imap_unordered(_run_job_in_worker, list(enumerate(jobs))):
                    report.merge(part)
                    if progress is not None:
                        progress(sum(ends[p] for p in jobs[i].partitions))
    except BrokerUnavailable as exc:
        raise RebuildError(str(exc)) from None
    report.mismatches.sort(key=lambda m: m.key)
    report.seconds = time.monotonic() - started
    return report

