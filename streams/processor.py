"""The processor: folds ``<p>.events`` into task state and publishes ready work.

A member of the processor consumer group (confluent-kafka, cooperative-sticky)
owns some partitions of ``<p>.events``; for each it keeps a RocksDB table
(rocksdict) of the tasks whose events live there. For every event (at least
once) the loop does four things and nothing more: decode, look up the task's
state in the table, call the decider (``domain.step``, through
``fold_step``), and write the new state and the messages its effects name. Every table write also goes to
``<p>.state`` (compacted, Avro ``TaskState`` keyed by task id, same partition): the table's changelog,
which the API's read model projects and from which a processor rebuilds a
table when it is assigned a partition. A task's dependents are records of
their own in the same table and changelog, one per edge (``domain.edge_key``,
the registration that recorded it), so a state record stays bounded however
many tasks wait for it; when a task ends, the processor scans its edges
(``table_dependents``) and tells each dependent. Work that became ready is published
to ``<p>.ready.<priority>``.

Exactly once (``processor_exactly_once``, opt-in, docs/decisions/0024): every output of a
commit round (state and edge records, follow-up events, ready messages,
retry records, timers' events) goes in one Kafka transaction of a
transactional producer per process, committed with the round's consumer
offsets (``_commit``, the runtime's committer: at most every
``processor_commit_interval_s``, and at once before a restore, on revocation and on
shutdown). Readers read ``read_committed``, so a crash leaves nothing
visible that the next owner writes again. A transaction that fails (fenced,
a fatal or abortable error) is abandoned: aborted, the consumer rewound to
the committed offsets and the tables rebuilt from ``<p>.state``; the
processor goes on (docs/decisions/0024-exactly-once-processing.md).

At least once (``processor_exactly_once=false``): fold a batch, wait until
every output is acknowledged; only then are the batch's offsets committed.
A crash replays what was folded since the last commit, which idempotent
folding absorbs.

Why our own loop and not Faust, which DESIGN names: docs/decisions/0005.

Idempotent folding: the state remembers the offset of the last event that
changed it (``last_offset``). An event at or below it was already folded
and changes nothing; at least once, if it is exactly the last one, its
outputs are sent again, because the crash may have come between the table
write and the sends. Downstream, duplicates are harmless:
``evolve`` ignores a repeated TaskQueued, and executors' results are fenced
by attempt.

The loop is a set of hooks on the consumer runtime (``schemas.consumer``),
which owns the group, rebalances, commits and dead letters. Undecodable
messages go to ``<p>.dlq`` (the runtime's ``dead_letter``) with the source
topic, partition, offset and reason in headers; so does a copy of an event
after which deciding what follows raised (its fold stands). The processor
goes on. An
output the broker refuses for good (``is_permanent``) is answered by where
it was going (``_dead_letter_refused``); any other produce failure (the
broker is away) stops an at-least-once processor with an error, so the
uncommitted batch is folded again by the next owner, and abandons an
exactly-once processor's transaction. A retry relay thread that fails stops
the processor too.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, cast

from rocksdict import Rdict

from taskstream.schemas import (
    BrokerUnavailable,
    ControlState,
    DecodeError,
    DependencyRegistered,
    DependencyResolved,
    Heartbeat,
    ReadyTask,
    RecordRefused,
    Settings,
    TaskRetryScheduled,
    TaskState,
    Topics,
    catalogue,
    codec,
    kafka,
    retry_tier,
)
from taskstream.schemas.consumer import ConsumerRuntime, Hooks, Partition, TailReader, read_state_to_end, send
from taskstream.schemas.kafka import admin, check_security, is_permanent, require_topics, topic_partitions
from taskstream.schemas.observability import about, serve_metrics
from taskstream.schemas.offsets import poison_headers
from taskstream.schemas.state_cache import DecodedStates
from taskstream.schemas.tracing import MAX_ATTEMPTS, OFF, TraceContext, Tracing, tracing_from_environ

from . import domain
from .metrics import LAG_INTERVAL_S, ProcessorMetrics
from .relay import RetryRelay
from .timers import LEASE, STATE, TimerTable

log = logging.getLogger(__name__)

RELAY_SLACK_S = domain.RELAY_SLACK_S


class Output(NamedTuple):
    topic: str
    key: bytes
    value: bytes
    headers: codec.RecordHeaders
    partition: int | None = None


class Step(NamedTuple):
    """What folding one event yields: the new state (None: unchanged), messages to send, why deciding
    what follows failed (the state change stands; the event goes to the dlq with this reason), and the
    edge it records (``domain.recorded``: the registration, kept under ``domain.edge_key``)."""

    state: TaskState | None
    outputs: list[Output]
    failed: str | None = None
    edge: DependencyRegistered | None = None


def fold_step(
    topics: Topics, state: TaskState | None, value: bytes, offset: int, partition: int, now: datetime, producer: str,
    *, wire: codec.WireFormat = codec.SINGLE_OBJECT, dependents: domain.DependentsLookup = None,
    replay: bool = True, paused: domain.Paused = None, held: domain.Held = None, limits: domain.Limits = None,
    tracing: Tracing = OFF,
) -> Step:
    """Fold one message of ``<p>.events`` through ``domain.step`` (pure apart from the clock passed in).

    Raises ``DecodeError`` for a message that is not an event we know. An
    event already folded (``offset <= last_offset``) changes nothing; the
    last one folded sends its follow-ups again (``domain.replay``) unless
    ``replay`` is False (exactly once: its outputs were committed with the
    state that names it).
    ``dependents`` looks up the task's edges, asked only when a step owes its
    dependents something (None: the list its state embeds); ``paused`` and
    ``held`` answer for the partition's pauses (``domain.step``; None: none).
    A ready message of a task with a trace context carries it in its headers (``_outputs``); with ``tracing``
    on, folding records the task's ``dependency`` and ``queue`` spans (``_traced``), and the headers carry the
    ``queue`` span's context. A replayed event records no span again.
    """
    event = wire.decode(value)
    if state is not None and offset <= state.last_offset:
        if offset == state.last_offset and replay:
            again = domain.replay(state, event, now, producer, dependents, held)
            return Step(None, _outputs(topics, wire, domain.effects(state, state, event, again, now, producer),
                                       state, partition))
        return Step(None, [])
    edge = domain.recorded(state, event)
    try:
        new, follow = domain.step(state, event, now, producer, dependents, paused, held, limits)
        parent = _traced(tracing, event, new) if tracing.enabled else None
        outputs = _outputs(topics, wire, domain.effects(state, new, event, follow, now, producer), new, partition,
                           tracing, parent)
        failed = None
    except Exception as exc:  # deciding failed: the fold of the event stands (as in any fold of the log)
        new, outputs = domain.evolve(state, event), []
        failed = f"deciding what follows failed: {type(exc).__name__}: {exc}"
    if new is state or new is None:  # None only when state was: no event turns a state back into None
        return Step(None, outputs, failed, edge)
    return Step(domain.at_offset(new, offset), outputs, failed, edge)


class Pauses:
    """One partition's pauses, derived from its table (built with its timers, kept up to date by each state
    write): the targets paused there, and the keys of the tasks each ``paused:<target>`` holds, so a resume
    finds them without a scan and a partition without pauses pays one dict lookup per event."""

    __slots__ = ("paused", "holding", "limits")

    def __init__(self) -> None:
        self.paused: set[str] = set()
        self.holding: dict[str, dict[bytes, None]] = {}
        self.limits: dict[str, domain.HandlerLimit] = {}

    def lookup(self) -> domain.Paused:
        """The ``paused`` lookup of ``domain.step``: None while nothing is paused in the partition."""
        return self.paused.__contains__ if self.paused else None

    def limit_lookup(self) -> domain.Limits:
        """The ``limits`` lookup of ``domain.step``: None while no handler has a limit in the partition."""
        return self.limits.get if self.limits else None

    def changed(self, key: bytes, before: object, after: object) -> None:
        """Record a state write (``before`` -> ``after``) of ``key``."""
        if isinstance(after, ControlState):
            (self.paused.add if after.paused else self.paused.discard)(after.target)
            if (limit := domain.HandlerLimit.of(after)) is not None:
                self.limits[after.target] = limit
            else:
                self.limits.pop(after.target, None)
            return
        was = before.waiting_for if domain.paused_hold(before) else None
        now = after.waiting_for if domain.paused_hold(after) else None
        if was == now:
            return
        if was is not None:
            self.holding.get(was, {}).pop(key, None)
        if now is not None:
            self.holding.setdefault(now, {})[key] = None

    def held_states(self, reason: str, table: Rdict, wire: codec.WireFormat) -> list[TaskState]:
        """The states of the tasks ``reason`` holds in the partition."""
        out = []
        for key in list(self.holding.get(reason, ())):
            raw = table.get(key)
            try:
                state = wire.decode(raw) if raw else None
            except DecodeError:
                continue
            if isinstance(state, TaskState):
                out.append(state)
        return out


def table_dependents(table: Rdict, task_id: str, state: TaskState | None) -> list[str]:
    """The dependents of task ``task_id``: its edges in ``table`` (one prefix scan) and any its record
    (``state``) embeds."""
    prefix = domain.edges_prefix(task_id)
    found: list[str] = []
    it = table.iter()
    try:
        it.seek(prefix)
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                break
            found.append(key[len(prefix):].decode())
            it.next()
    finally:
        del it
    return domain.dependents_of(state, found) if state is not None else sorted(found)


def _traced(tracing: Tracing, event: object, state: TaskState | None) -> TraceContext | None:
    """The ``dependency`` span of a dependency resolved for ``state``'s task (the dependent), under the task's
    trace context: the parent of the ``queue`` span that follows in the same step. None for any other event."""
    if not isinstance(event, DependencyResolved) or state is None or state.traceparent is None:
        return None
    return tracing.record("dependency", TraceContext(state.traceparent, state.tracestate), {
        "taskstream.task_id": state.task_id, "taskstream.upstream_task_id": event.upstream,
        "taskstream.upstream_outcome": event.outcome, "taskstream.status": state.status,
    })


def _outputs(
    topics: Topics, wire: codec.WireFormat, effects: list[domain.Effect], state: TaskState | None, partition: int,
    tracing: Tracing = OFF, parent: TraceContext | None = None,
) -> list[Output]:
    """The records of a step's effects: follow-ups of the same task to its own partition (that is where the
    fold of the log expects them), every other message keyed by its task. A ready message of a task with a
    trace context carries it (or, with ``tracing`` on, its ``queue`` span's, under ``parent`` if given) in
    ``traceparent``/``tracestate`` headers, with the task's ``taskstream-max-attempts``."""
    own = state.task_id if state is not None else None
    out = []
    for kind, message, priority in effects:
        key = message.aggregate_id.encode()
        if kind == "event":
            topic = topics.events
        elif kind in ("ready", "cancel"):
            assert priority is not None  # effects() gives both kinds their priority
            topic = topics.ready(priority)
        elif kind == "retry":
            assert isinstance(message, TaskRetryScheduled)  # the only message effects() sends to the relay
            topic = topics.retry(retry_tier(message.delay_s))  # the relay holds it until not_before
        else:
            topic = topics.dlq
        same = partition if kind == "event" and message.aggregate_id == own else None
        headers = codec.headers(message)
        if kind == "ready" and state is not None and state.traceparent is not None:
            trace = parent or TraceContext(state.traceparent, state.tracestate)
            if tracing.enabled:
                trace = tracing.record("queue", trace, {
                    "taskstream.task_id": state.task_id, "taskstream.handler": state.handler,
                    "taskstream.attempt": state.attempt, "taskstream.priority": state.priority,
                    "messaging.system": "kafka", "messaging.destination.name": topic,
                }, kind="producer")
            headers = [*headers, *trace.headers(), (MAX_ATTEMPTS, str(state.max_attempts).encode())]
        out.append(Output(topic, key, wire.encode(message), headers, same))
    return out


def processor_id() -> str:
    return f"processor-{socket.gethostname()}-{os.getpid()}"


class Processor(Hooks):
    """One member of the processor group, the hooks of a ``ConsumerRuntime``; ``run(stop)`` blocks until ``stop``
    is set.

    The runtime owns the group, the commits and the dead letters; this
    folds each batch and waits for its outputs before it returns (so the
    batch's offsets are committed only then), keeps one table and timer table
    per assigned partition, follows ``<p>.heartbeats`` on the same partitions
    and fires timers between polls. ``tracing`` records its ``queue`` and ``dependency`` spans
    (``fold_step``; ``OFF`` by default).
    """

    BATCH = 500

    def __init__(
        self, settings: Settings, member_id: str | None = None, metrics: ProcessorMetrics | None = None,
        tracing: Tracing = OFF,
    ) -> None:
        self.settings = settings
        self.metrics = metrics if metrics is not None else ProcessorMetrics()
        self.tracing = tracing
        self.topics = Topics(settings.prefix)
        self.wire = codec.WireFormat.of(settings)
        self.states = DecodedStates(self.wire.decode)
        self.id = member_id or processor_id()
        self.dir = settings.data_dir / "processor"
        self.tables: dict[int, Rdict] = {}
        self.timers: dict[int, TimerTable] = {}
        self.pauses: dict[int, Pauses] = {}
        self.lease = timedelta(seconds=settings.lease_s)
        self.folded = 0
        self.fired = 0
        self._failed: list[str] = []
        self._refused: list[tuple[str, bytes | None, bytes | None, list, str]] = []  # topic, key, value, headers, why
        #: Exactly once: every output, table write and offset of a round goes in one transaction (``_commit``).
        self.exactly_once = settings.processor_exactly_once
        self._in_transaction = False
        self._dirty = False  # the tables or timers hold a write of the open transaction
        self.aborted = 0
        self._began = 0.0
        #: A batch still folding after this long commits what it folded so far (a quarter of the timeout).
        self._longest_s = settings.processor_transaction_timeout_ms / 4000
        #: How long a commit's transaction calls may take: the broker aborts a transaction older than its timeout
        #: anyway (a call still waiting past this and ``kafka.WEDGED_AFTER_S`` is given up, the producer replaced).
        self._call_s = max(5.0, settings.processor_transaction_timeout_ms / 1000)
        if self.exactly_once:
            self.transactional_id = f"{settings.prefix}-processor-{settings.processor_instance_id or self.id}"
            self.producer = kafka.transactional_producer(settings, self.id, self.transactional_id,
                                                         settings.processor_transaction_timeout_ms)
        else:
            self.producer = kafka.producer(settings, self.id)
        self._ready_topics = frozenset(self.topics.all_ready)
        # Ready messages wait until the batch's events and states are acknowledged: an executor's result then
        # always lands in the log after the TaskQueued of its attempt.
        self._ready_held: list[Output] = []
        self.runtime = ConsumerRuntime.member(
            settings, self, client_id=self.id, group=self.topics.processor_group, topics=[self.topics.events],
            overrides={
                "max.partition.fetch.bytes": 4 * 1024 * 1024,
                **({"group.instance.id": settings.processor_instance_id} if settings.processor_instance_id else {}),
            },
            batch=self.BATCH, poll_s=settings.timer_tick_s, commit_interval_s=settings.processor_commit_interval_s,
            # Exactly once: dead letters go through a producer of their own (a transactional one writes only in
            # a transaction), and commits are the transaction's.
            **({"committer": self._commit} if self.exactly_once else {"producer": self.producer}))
        # Heartbeats are not history: read from the end, partitions mirroring our <p>.events assignment.
        self.heartbeats = TailReader(settings, f"{self.id}-heartbeats", self.topics.heartbeats)
        self._next_tick = self._next_lag = 0.0

    # ------------------------------------------------------------ partitions

    def on_assigned(self, runtime: ConsumerRuntime, partitions: list[Partition]) -> None:
        if not partitions:
            return
        if self.exactly_once:
            # What is folded so far is committed first: the restore below may outlast the transaction timeout.
            self._commit_now()
        started = time.monotonic()
        tables = {p: self._fresh_table(p) for _, p in partitions}
        n = self._restore(tables)
        self.tables.update(tables)
        now = datetime.now(UTC)
        for p, table in tables.items():
            self.timers[p] = self._build_timers(p, table, now)
        self.heartbeats.add(tables)
        log.info("partitions %s assigned; tables rebuilt from %s (%d records, %.2fs)",
                 sorted(tables), self.topics.state, n, time.monotonic() - started)

    def on_revoked(self, runtime: ConsumerRuntime, partitions: list[Partition]) -> None:
        try:
            # the runtime commits the revoked partitions after this (exactly once: committed here, in the transaction)
            self._flush_and_check()
        finally:
            self._drop(partitions)

    def on_lost(self, runtime: ConsumerRuntime, partitions: list[Partition]) -> None:
        self._drop(partitions)

    def _drop(self, partitions: list[Partition]) -> None:
        for _, p in partitions:
            table = self.tables.pop(p, None)
            if table is not None:
                table.close()
            timers = self.timers.pop(p, None)
            if timers is not None:
                timers.close()
            self.pauses.pop(p, None)
        self.heartbeats.remove(p for _, p in partitions)

    def _build_timers(self, partition: int, table: Rdict, now: datetime) -> TimerTable:
        """A partition's timers from its states: due times, and a full lease for every running attempt; and
        its pauses (``Pauses``): the targets paused there and the tasks they hold."""
        timers = TimerTable(self.dir / f"timers-{partition}")
        self.pauses[partition] = pauses = Pauses()
        for key, raw in cast(Iterator[tuple[bytes, bytes]], table.items()):  # the table holds bytes only
            if domain.is_edge_key(key):
                continue
            try:
                state = self.wire.decode(raw)
            except DecodeError:
                continue
            timers.set(STATE, key, domain.timer_due(state, RELAY_SLACK_S))
            if domain.holds_lease(state):
                timers.set(LEASE, key, now + self.lease)
            pauses.changed(key, None, state)
        return timers

    def _fresh_table(self, partition: int) -> Rdict:
        path = self.dir / f"tasks-{partition}"
        shutil.rmtree(path, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        return Rdict(str(path))

    def _restore(self, tables: dict[int, Rdict]) -> int:
        """Rebuild partitions' tables from ``<p>.state``, each read up to its end offset as of now.

        The previous owner of a partition flushed its writes before it gave
        the partition up (``on_revoked``), so the end offset covers them."""
        n = 0
        for batch in read_state_to_end(self.settings, f"{self.id}-restore", self.topics.state, tables):
            for m in batch:
                if m.value():
                    tables[m.partition()][m.key()] = m.value()
                else:
                    del tables[m.partition()][m.key()]  # rocksdict: a no-op for a key not there
            n += len(batch)
        return n

    # ------------------------------------------------------------ the loop

    def run(self, stop: threading.Event, relay: bool = True) -> None:
        """Fold until ``stop`` is set; ``relay`` also runs a retry relay member in a thread."""
        relay_thread = None
        crashed: list[BaseException] = []
        if relay:
            self.relay = RetryRelay(self.settings, self.id)

            def run_relay() -> None:
                try:
                    self.relay.run(stop)
                except BaseException as exc:  # a dead relay must not go unnoticed: the process stops with it
                    log.critical("retry relay %s failed; stopping the processor", self.relay.id, exc_info=True)
                    crashed.append(exc)
                    stop.set()

            relay_thread = threading.Thread(target=run_relay, name=f"{self.id}-relay", daemon=True)
            relay_thread.start()
        try:
            self.runtime.run(stop)
        finally:
            stop.set()  # the relay stops with the processor, whatever ended it
            if relay_thread is not None:
                relay_thread.join(timeout=15)
        if crashed:
            raise BrokerUnavailable(f"retry relay failed: {crashed[0]!r}") from crashed[0]

    def on_batch(self, runtime: ConsumerRuntime, records: list) -> None:
        now = datetime.now(UTC)
        if self.exactly_once and not self._begin():
            self._abandon("no transaction could begin")
            return
        try:
            for i, m in enumerate(records):
                if self.exactly_once and time.monotonic() - self._began > self._longest_s:
                    # A long batch commits what it folded so far: a transaction open longer than the broker's
                    # transaction timeout is aborted by the broker (and this producer fenced).
                    runtime.settle(records[:i])
                    if not self._commit_now_ok() or not self._begin():
                        return  # abandoned: the batch comes again from the committed offsets
                table = self.tables.get(m.partition())
                if table is None:  # revoked while the batch was in flight
                    continue
                for out in self._fold_one(table, m, m.partition(), now):
                    self._produce(out)
        except BrokerUnavailable as exc:
            if not self.exactly_once:
                raise
            self._abandon(str(exc))
            return
        if self.exactly_once:
            self._settle_refused()  # the rest is committed with the transaction (``_commit``)
        else:
            self._flush_and_check()
        self.folded += len(records)
        self.metrics.folded.inc(len(records))

    def on_idle(self, runtime: ConsumerRuntime) -> None:
        if self.tables:
            beats = self.heartbeats.take(self.BATCH)
            if beats:
                self._take_heartbeats(beats)
        if time.monotonic() >= self._next_tick:
            self._next_tick = time.monotonic() + self.settings.timer_tick_s
            try:
                self._fire_timers(datetime.now(UTC))
            except BrokerUnavailable as exc:
                if not self.exactly_once:
                    raise
                self._abandon(str(exc))
        if time.monotonic() >= self._next_lag:
            self._next_lag = time.monotonic() + LAG_INTERVAL_S
            self._measure_lag()

    def on_stopping(self, runtime: ConsumerRuntime) -> None:
        self._flush_and_check()

    # ------------------------------------------------------------ transactions (exactly once)

    def _begin(self) -> bool:
        """A transaction is open (one begun now if none was); False when none can be (the producer waits to be
        rebuilt after a fatal error, or the broker refused): nothing may be produced then."""
        if self._in_transaction:
            return True
        try:
            self.producer.begin_transaction()
        except BrokerUnavailable as exc:  # a fatal error waiting for its rebuild, or an abort that did not finish
            log.warning("processor %s cannot begin a transaction: %s", self.id, exc)
            if self.producer.problem is None:
                self._abort()
            time.sleep(0.1)  # what passes here is the rebuild's wait, or the broker's absence; the batch comes again
            return False
        self._in_transaction = True
        self._began = time.monotonic()
        return True

    def _commit(self, offsets: list, group_metadata) -> bool:
        """The runtime's committer: commit the open transaction with ``offsets`` (of the group described by
        ``group_metadata``: a member fenced by a rebalance cannot commit). True when committed; False when the
        transaction was abandoned (``_abandon``: the consumer and the tables are back at the last commit).

        A record of the state or the log refused for good (``_failed``) stops the processor (the topic's
        ``max.message.bytes`` is below ``MAX_RECORD_BYTES``), as a record refused by the broker's answer does:
        folding again would meet the same refusal."""
        self._settle_refused()
        if not self._in_transaction:
            if not offsets:
                return True
            if not self._begin():
                self._abandon("no transaction could begin")
                return False
        try:
            if offsets:
                self.producer.send_offsets_to_transaction(offsets, group_metadata, self._call_s)
            self.producer.commit_transaction(self._call_s)
        except BrokerUnavailable as exc:
            refused = [f"{t} refused a record of {(k or b'').decode(errors='replace')}: {why}"
                       for t, k, _v, _h, why in self._refused]
            self._abandon(str(exc))
            if refused:
                raise BrokerUnavailable(f"{refused[:3]}; the transaction was aborted and the processor stops") from exc
            return False
        self._in_transaction = self._dirty = False
        return True

    def _commit_now(self) -> None:
        """Commit the open transaction with the offsets folded so far, now (raises as ``_commit``)."""
        self.runtime.commit(asynchronous=False)

    def _commit_now_ok(self) -> bool:
        """``_commit_now``; False when the transaction was abandoned instead."""
        aborted = self.aborted
        self._commit_now()
        return self.aborted == aborted

    def _abort(self) -> None:
        try:
            self.producer.abort_transaction(30)
        except BrokerUnavailable as exc:  # fatal: the rebuilt client fences the old one anyway
            log.warning("processor %s: aborting its transaction: %s", self.id, exc)

    def _abandon(self, why: str) -> None:
        """Drop the open transaction: abort it (or leave a fenced client to its rebuild, which aborts it), read
        every partition again from its committed offset, and rebuild the tables and timers from ``<p>.state``
        if they hold a write of the transaction. The processor goes on."""
        log.warning("processor %s abandons its transaction (%s): back to the last commit", self.id, why)
        self.aborted += 1
        if self._in_transaction and self.producer.problem is None:  # else the rebuilt client fences this one
            self._abort()
        self._in_transaction = False
        self._failed, self._refused, self._ready_held = [], [], []
        deadline = time.monotonic() + 60
        while True:
            try:
                self.runtime.rewind()
                if self._dirty:
                    self._reload()
                self._dirty = False
                return
            except BrokerUnavailable as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("processor %s: rewinding failed, again in 1s: %s", self.id, exc)
                time.sleep(1)

    def _reload(self) -> None:
        """Every assigned partition's table and timers again from ``<p>.state`` (committed records only)."""
        started = time.monotonic()
        parts = sorted(self.tables)
        for p in parts:
            self.tables.pop(p).close()
            timers = self.timers.pop(p, None)
            if timers is not None:
                timers.close()
        tables = {p: self._fresh_table(p) for p in parts}
        n = self._restore(tables)
        self.tables.update(tables)
        now = datetime.now(UTC)
        for p, table in tables.items():
            self.timers[p] = self._build_timers(p, table, now)
        log.info("partitions %s: tables rebuilt from %s after an abort (%d records, %.2fs)",
                 parts, self.topics.state, n, time.monotonic() - started)

    def _settle_refused(self) -> None:
        """Exactly once: answer what ``produce`` refused at once (``_dead_letter_refused``, in the transaction);
        a state or log record among them (``_failed``) aborts the transaction and stops the processor."""
        if self._refused:
            self._dead_letter_refused()
        if self._failed:
            failed = self._failed[:3]
            self._abandon(f"refused: {failed}")
            raise BrokerUnavailable(f"{failed}; the transaction was aborted and the processor stops")

    def on_stopped(self, runtime: ConsumerRuntime) -> None:
        self.heartbeats.close()
        for table in self.tables.values():
            table.close()
        self.tables.clear()
        for timers in self.timers.values():
            timers.close()
        self.timers.clear()
        log.info("processor %s stopped after folding %d events", self.id, self.folded)

    def _measure_lag(self) -> None:
        """``taskstream_processor_lag`` from client-side figures only: cached high watermarks and positions."""
        parts = [(self.topics.events, p) for p in sorted(self.tables)]
        try:
            at = self.runtime.positions(parts)
            positions = []
            for part in parts:
                offsets = self.runtime.offsets(part)
                fallback = offsets.position if offsets is not None and offsets.position is not None else -1
                positions.append(at[part] if at.get(part, -1) >= 0 else fallback)
            highs = [self.runtime.watermarks(part, cached=True)[1] for part in parts]
        except BrokerUnavailable as exc:
            log.debug("lag not measured: %s", exc)
            return
        self.metrics.set_lag(positions, highs)

    def _take_heartbeats(self, messages) -> None:
        """A heartbeat of the running attempt moves its lease; anything else is ignored (poison: dlq)."""
        now = datetime.now(UTC)
        for m in messages:
            table, timers = self.tables.get(m.partition()), self.timers.get(m.partition())
            if table is None or timers is None:
                continue
            try:
                beat = self.wire.decode_as(m.value(), Heartbeat)
            except DecodeError as exc:
                self.runtime.dead_letter(m, str(exc))
                continue
            key = beat.task_id.encode()
            raw = table.get(key)
            try:
                state = self.wire.decode(raw) if raw else None
            except DecodeError:
                state = None
            if domain.heartbeat_renews(state, beat.attempt):
                timers.set(LEASE, key, now + self.lease)

    def _fire_timers(self, now: datetime) -> None:
        """Append the events of every due timer to the log (to the timer's own partition)."""
        fired = 0
        for partition, timers in list(self.timers.items()):
            table = self.tables.get(partition)
            if table is None:
                continue
            for kind, key, _due in timers.due(now):
                raw = table.get(key)
                try:
                    state = self.wire.decode(raw) if raw else None
                    if kind == LEASE:
                        attempt = state.attempt if isinstance(state, TaskState) else -1
                        events = domain.lease_expired(state, attempt, self.settings.lease_s, now, self.id)
                    else:
                        events = domain.on_timer(state, now, self.settings.misfire_grace_s, self.id)
                except Exception:  # one bad state must not stop every timer of the partition
                    log.exception("timer of %r failed; dropped", key, extra=about(key.decode(errors="replace")))
                    events = []
                timers.set(kind, key, None)
                self._dirty = True
                for e in events:
                    e_key = e.aggregate_id.encode()
                    self._produce(Output(self.topics.events, e_key, self.wire.encode(e), codec.headers(e),
                                         partition if e_key == key else None))
                    fired += 1
        if fired and not self.exactly_once:  # exactly once: committed with the transaction
            self._flush_and_check()
            self.fired += fired
            log.debug("timers appended %d events", fired)

    def _fold_one(self, table: Rdict, m, partition: int, now: datetime) -> list[Output]:
        """The outputs of one event; a poison event goes to the dlq (the runtime's dead letter) instead."""
        key = m.key()
        if not key:
            self.runtime.dead_letter(m, "event without a key")
            return []
        if domain.is_edge_key(key):
            self.runtime.dead_letter(m, "event keyed like a dependency edge")
            return []
        raw = table.get(key)
        pauses = self.pauses.get(partition)
        try:
            state = self.states.decode(key, raw) if raw else None
            step = fold_step(self.topics, state, m.value(), m.offset(), partition, now, self.id, wire=self.wire,
                             dependents=lambda: table_dependents(table, key.decode(), state),
                             replay=not self.exactly_once,
                             paused=pauses.lookup() if pauses is not None else None,
                             limits=pauses.limit_lookup() if pauses is not None else None,
                             held=(lambda reason: pauses.held_states(reason, table, self.wire))
                             if pauses is not None else None, tracing=self.tracing)
            value = self.wire.encode(step.state) if step.state is not None else b""
        except DecodeError as exc:
            self.runtime.dead_letter(m, str(exc))
            return []
        outputs = step.outputs
        edges: list[Output] = []
        if step.edge is not None:
            # Before the state record: in <p>.state, a state that counts a registration comes after its edge.
            edge_key = domain.edge_key(step.edge.task_id, step.edge.dependent)
            edge_value = self.wire.encode(step.edge)
            table[edge_key] = edge_value
            self._dirty = True
            edges.append(Output(self.topics.state, edge_key, edge_value, codec.headers(step.edge), partition))
        if step.failed:
            log.error("%s[%d]@%d: %s -> dlq", m.topic(), partition, m.offset(), step.failed,
                      extra=about(key.decode(errors="replace")))
            self.runtime.dead_letter(m, step.failed)
        if step.state is None:
            return [*edges, *outputs]
        self._move_timers(partition, key, state, step.state, now)
        if pauses is not None:
            pauses.changed(key, state, step.state)
        self.metrics.state_changed(state, step.state, now)
        table[key] = value
        self.states.put(key, value, step.state)
        self._dirty = True
        return [*edges, Output(self.topics.state, key, value, codec.headers(step.state), partition), *outputs]

    def _move_timers(self, partition: int, key: bytes, before, after, now: datetime) -> None:
        timers = self.timers.get(partition)
        if timers is None:
            return
        timers.set(STATE, key, domain.timer_due(after, RELAY_SLACK_S))
        lease = domain.lease_after(before, after)
        if lease != "keep":
            timers.set(LEASE, key, now + self.lease if lease == "start" else None)

    def _produce(self, out: Output, hold_ready: bool = True) -> None:
        """Send one output. Exactly once: in the open transaction (begun here if none is), whose commit makes
        the ready messages visible with the events of their batch. Else a ready message waits for the batch's
        other outputs to be acknowledged (``_flush``)."""
        if self.exactly_once:
            if not self._begin():
                raise BrokerUnavailable("no transaction could begin")
        elif hold_ready and out.topic in self._ready_topics:
            self._ready_held.append(out)
            return
        try:
            send(self.producer, out.topic, out.key, out.value, out.headers, partition=out.partition,
                 on_delivery=self._delivered)
        except RecordRefused as exc:
            self._refused.append((out.topic, out.key, out.value, list(out.headers or []),
                                  f"{exc} ({len(out.value or b''):,} bytes)"))
        except BrokerUnavailable as exc:
            raise BrokerUnavailable(f"produce to {out.topic} failed: {exc}") from exc

    def _delivered(self, err, msg) -> None:
        if err is None:
            return
        if self.exactly_once and not is_permanent(err):
            return  # the transaction's commit fails with it, and ``_abandon`` folds the batch again
        if is_permanent(err):
            self._refused.append((msg.topic(), msg.key(), msg.value(), list(msg.headers() or []),
                                  f"{err.str()} ({len(msg.value() or b''):,} bytes)"))
        else:
            self._failed.append(f"{msg.topic()}: {err}")

    def _flush(self, timeout: float) -> int:
        remaining = self.producer.flush(timeout)
        if remaining or self._failed:
            return remaining  # the held ready messages go with the batch folded again
        held, self._ready_held = self._ready_held, []
        for out in held:
            self._produce(out, hold_ready=False)
        return remaining + self.producer.flush(timeout)

    def _dead_letter_refused(self) -> None:
        """Answer each record the broker refused for good (``is_permanent``), by where it was going.

        ``<p>.state`` or ``<p>.events``: the table or the log would no longer
        agree, so the batch is not committed (``_failed``; the processor
        stops and the batch is folded again: the topic's ``max.message.bytes``
        is below ``MAX_RECORD_BYTES``). A ready message: the attempt can never
        run, so ``TaskFailed(permanent)`` says why. Anything else (a retry
        record, whose timer re-queues the attempt anyway; a dead letter): a
        record in ``<p>.dlq`` naming it, without its value.
        """
        refused, self._refused = self._refused, []
        for topic, key, value, headers, reason in refused:
            task_id = (key or b"").decode(errors="replace")
            log.error("output to %s refused by the broker: %s", topic, reason, extra=about(task_id))
            if topic in (self.topics.state, self.topics.events):
                self._failed.append(f"{topic} refused a record of {task_id}: {reason}")
                continue
            if topic in self.topics.all_ready:
                try:
                    ready = self.wire.decode(value)
                except DecodeError:
                    ready = None
                if isinstance(ready, ReadyTask):
                    failed = domain.ready_refused(ready, reason, datetime.now(UTC), self.id)
                    self._produce(Output(self.topics.events, key or b"", self.wire.encode(failed),
                                         codec.headers(failed)))
                    continue
            named = [(k, v) for k, v in headers if k == codec.EVENT_TYPE_HEADER]
            if topic == self.topics.dlq and not value:
                continue  # a value-less dead letter refused: nothing smaller to send
            self._produce(Output(self.topics.dlq, key or b"", b"", [
                *named, *poison_headers(topic, None, None, f"refused: {reason}"),
            ]))

    def _flush_and_check(self) -> None:
        """Every output so far acknowledged (exactly once: committed, with the offsets folded so far), or
        ``BrokerUnavailable``."""
        if self.exactly_once:
            self._commit_now()
            return
        remaining = self._flush(30)
        if self._refused:
            self._dead_letter_refused()
            remaining = self._flush(30)
        if remaining or self._failed:
            failed, self._failed = self._failed[:3], []
            raise BrokerUnavailable(
                f"{remaining} output(s) unacknowledged, failures: {failed}; not committing, the batch is folded again"
            )

    def close(self) -> None:
        """Close the clients of a processor that was never run (``run`` closes its own)."""
        self.producer.flush(5)
        self.runtime.close()
        self.heartbeats.close()


def check_topics(settings: Settings) -> None:
    """The topics the processor needs exist, with the configs of the catalogue (``TopicMismatch`` names what
    differs: cleanup policy, retention, size limit); the table of a task lives in the partition of its events,
    so events, state and heartbeats need the same partition count."""
    topics = Topics(settings.prefix)
    md = topic_partitions(admin(settings), timeout=10)
    for name in (topics.events, topics.state):
        if name not in md:
            raise BrokerUnavailable(f"topic {name} does not exist (run `taskstream topics create`)")
    for other in (topics.state, topics.heartbeats):
        if other not in md:
            raise BrokerUnavailable(f"topic {other} does not exist (run `taskstream topics create`)")
        if md[topics.events] != md[other]:
            raise BrokerUnavailable(f"{topics.events} and {other} have different partition counts")
    require_topics(settings, catalogue(settings))


def run_processor(settings: Settings) -> None:
    """Run one processor until SIGTERM/SIGINT (blocking)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    check_security(settings)  # refused credentials or an untrusted broker: one line now, not retries for ever
    check_topics(settings)
    tracing = tracing_from_environ("processor", os.environ)
    processor = Processor(settings, tracing=tracing)
    serve_metrics(processor.metrics.registry, settings, f"processor {processor.id}")
    try:
        processor.run(stop)
    finally:
        tracing.shutdown()
