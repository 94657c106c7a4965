"""The trigger runner: every record of an active topic trigger's topic becomes one task (docs/triggers.md).

The triggers themselves are an aggregate of the log (``domain.triggers``):
the processor folds their events into ``TriggerState`` records on
``<p>.state``, which the runner follows from the beginning (a reader that
skips every key but ``trigger:*``). For each trigger that is ``active`` it
runs one ``TriggerConsumer`` in a thread: a member of the consumer group
``<p>.trigger.<name>`` over the trigger's topic, on the trigger's cluster
(``schemas.sources``). Pausing a trigger stops its consumer (it commits
what is done and leaves the group; the records wait in the topic);
resuming starts it again from the committed offsets; deleting stops it for
good. Several runners share the work: each is a member of every group, and
the group splits the topic's partitions.

Exactly one task per record: each record passing the filter is answered by
the decider (``domain.record_task``, then ``SubmitTask``) with a
``TaskCreated`` whose id comes from the trigger's name and the record's
topic, partition and offset. The consumer commits a record's offset only
once that TaskCreated was acknowledged by ``<p>.events`` (or the record went
to the dead-letter topic, or the filter passed it over), so a crash or a
rebalance reads again only records whose task may have been written, and
writing it again makes a duplicate ``TaskCreated`` that the processor's fold
drops (a task id is created once). A record the decider cannot make a task
of (not JSON, too large, a filter on a non-object) goes to ``<p>.dlq`` with
the usual headers and ``trigger: <name>``; the trigger goes on.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from datetime import UTC, datetime
from typing import Any

from taskstream.schemas import (
    BrokerUnavailable,
    DecodeError,
    Settings,
    Topics,
    TriggerState,
    TriggerStatus,
    codec,
    kafka,
    new_id,
)
from taskstream.schemas.consumer import BEGINNING, ConsumerRuntime, Hooks, Partition, send
from taskstream.schemas.kafka import is_permanent
from taskstream.schemas.sources import seed_group, source_settings

from . import domain

log = logging.getLogger(__name__)

#: How often the runner compares the triggers it runs with their states.
RECONCILE_S = 0.2
#: A consumer that failed (its topic missing, its cluster away) starts again this much later.
RESTART_S = 2.0
#: A task write that failed (the broker away) is tried again this much later.
REDO_S = 1.0
#: The header a trigger's dead letters carry its name in.
TRIGGER_HEADER = "trigger"


def group_of(settings: Settings, name: str) -> str:
    """The consumer group of trigger ``name``: ``<prefix>.trigger.<name>``."""
    return f"{settings.prefix}.trigger.{name}"


class TriggerStates(Hooks):
    """Every trigger's latest ``TriggerState``, followed from ``<p>.state`` (a reader: no group, no commits)."""

    def __init__(self, settings: Settings, client_id: str) -> None:
        self.topic = Topics(settings.prefix).state
        self.wire = codec.WireFormat.of(settings)
        self.lock = threading.Lock()
        self.states: dict[str, TriggerState] = {}
        self.runtime = ConsumerRuntime.reader(settings, self, client_id=f"{client_id}-states", poll_s=0.2,
                                              overrides={"auto.offset.reset": "earliest"})

    def on_connect(self, runtime: ConsumerRuntime) -> None:
        partitions = runtime.partitions(self.topic, 5.0)
        runtime.assign({(self.topic, p): BEGINNING for p in partitions})

    def on_batch(self, runtime: ConsumerRuntime, records: list) -> None:
        for m in records:
            key, value = m.key() or b"", m.value()
            if not key.startswith(domain.TRIGGER_PREFIX.encode()) or not value:
                continue
            try:
                state = self.wire.decode(value)
            except DecodeError as exc:
                log.warning("trigger runner: undecodable state of %r: %s", key, exc)
                continue
            if isinstance(state, TriggerState):
                with self.lock:
                    have = self.states.get(state.name)
                    if have is None or have.version <= state.version:
                        self.states[state.name] = state

    def snapshot(self) -> dict[str, TriggerState]:
        with self.lock:
            return dict(self.states)


class TriggerConsumer(Hooks):
    """One trigger's consumer: records of its topic -> TaskCreated on ``<p>.events`` (hooks of a member runtime
    whose offsets are done once each record's outcome is safe)."""

    def __init__(self, settings: Settings, state: TriggerState, member_id: str) -> None:
        self.settings = settings
        self.state = state
        self.topics = Topics(settings.prefix)
        self.wire = codec.WireFormat.of(settings)
        self.id = f"{member_id}-trigger-{state.name}"
        self.source = source_settings(
            settings, bootstrap_servers=state.bootstrap_servers, security_protocol=state.security_protocol,
            sasl_mechanism=state.sasl_mechanism, sasl_username=state.sasl_username,
            sasl_password=state.sasl_password, ssl_ca_location=state.ssl_ca_location)
        self.group = group_of(settings, state.name)
        self.producer = kafka.producer(settings, self.id)  # tasks and dead letters go to our own cluster
        self.created = 0
        self._redo: list[tuple[float, Any, Any]] = []  # (due, record, offsets) of writes to send again
        self.runtime: ConsumerRuntime | None = None

    def run(self, stop: threading.Event) -> None:
        self._seed()
        self.runtime = ConsumerRuntime.member(
            self.source, self, client_id=self.id, group=self.group, topics=[self.state.topic], poll_s=0.1,
            commit_interval_s=0.2, done_on_return=False, producer=self.producer,
            overrides={"auto.offset.reset": "earliest"})
        self.runtime.run(stop)

    def _seed(self) -> None:
        start = domain.start_of(self.state)
        offsets = ({int(p): n for p, n in start["offset"].items()}
                   if isinstance(start, dict) and isinstance(start.get("offset"), dict) else None)
        at = domain.start_time(start) or self.state.created_at  # "latest": from the trigger's creation on
        seed_group(self.source, f"{self.id}-seed", self.group, self.state.topic, earliest=start == "earliest",
                   at=at, offsets=offsets)

    # ------------------------------------------------------------ hooks

    def on_batch(self, runtime: ConsumerRuntime, records: list) -> None:
        for m in records:
            self._take(runtime, m, runtime.offsets((m.topic(), m.partition())))

    def on_idle(self, runtime: ConsumerRuntime) -> None:
        if not self._redo:
            return
        now = _now_s()
        due, self._redo = [r for r in self._redo if r[0] <= now], [r for r in self._redo if r[0] > now]
        for _, m, offsets in due:
            if runtime.offsets((m.topic(), m.partition())) is offsets:  # else revoked: its new owner reads it
                self._take(runtime, m, offsets)

    def on_revoked(self, runtime: ConsumerRuntime, partitions: list[Partition]) -> None:
        gone = set(partitions)
        self._redo = [r for r in self._redo if (r[1].topic(), r[1].partition()) not in gone]

    on_lost = on_revoked

    def _take(self, runtime: ConsumerRuntime, m: Any, offsets: Any) -> None:
        where = (m.topic(), m.partition())
        try:
            command = domain.record_task(self.state, m.topic(), m.partition(), m.offset(), m.key(), m.value(),
                                         producer=self.id)
        except DecodeError as exc:
            runtime.dead_letter(m, str(exc), [(TRIGGER_HEADER, self.state.name.encode())])
            return
        if command is None:  # filtered out, or a tombstone
            runtime.done(where, m.offset(), offsets)
            return
        (event,) = domain.decide(None, command, datetime.now(UTC))

        def delivered(err: Any, _msg: Any = None) -> None:
            if err is None:
                self.created += 1
                runtime.done(where, m.offset(), offsets)
            elif is_permanent(err):
                runtime.dead_letter(m, f"trigger {self.state.name}: the task was refused by the event log: {err}",
                                    [(TRIGGER_HEADER, self.state.name.encode())])
            else:
                log.warning("trigger %s: task %s not acknowledged, again in %ss: %s", self.state.name,
                            event.aggregate_id, REDO_S, err)
                self._redo.append((_now_s() + REDO_S, m, offsets))

        try:
            send(self.producer, self.topics.events, event.aggregate_id.encode(), self.wire.encode(event),
                 codec.headers(event), on_delivery=delivered)
        except BrokerUnavailable as exc:
            delivered(exc)


def _now_s() -> float:
    return time.monotonic()


class TriggerRunner:
    """Runs a ``TriggerConsumer`` for every active trigger, following their states; ``run(stop)`` blocks."""

    def __init__(self, settings: Settings, member_id: str | None = None) -> None:
        self.settings = settings
        self.id = member_id or f"trigger-runner-{new_id()[:8]}"
        self.states = TriggerStates(settings, self.id)
        #: name -> (the state it was started with, its stop event, its thread, its consumer)
        self.running: dict[str, tuple[TriggerState, threading.Event, threading.Thread, TriggerConsumer]] = {}
        self._failed_at: dict[str, float] = {}

    def run(self, stop: threading.Event) -> None:
        reader = threading.Thread(target=self.states.runtime.run, args=(stop,), name="trigger-states", daemon=True)
        reader.start()
        log.info("trigger runner %s started", self.id)
        try:
            while not stop.wait(RECONCILE_S):
                self.reconcile()
        finally:
            for name in list(self.running):
                self._stop(name)
            reader.join(10)
            log.info("trigger runner %s stopped", self.id)

    def reconcile(self) -> None:
        """Start the consumers of active triggers not running, stop those of triggers no longer active."""
        wanted = {n: s for n, s in self.states.snapshot().items() if s.status == TriggerStatus.ACTIVE.value}
        for name in list(self.running):
            _, _, thread, _ = self.running[name]
            if name not in wanted or not thread.is_alive():
                self._stop(name)
        now = _now_s()
        for name, state in wanted.items():
            if name not in self.running and now - self._failed_at.get(name, -1e9) >= RESTART_S:
                self._start(state)

    def _start(self, state: TriggerState) -> None:
        stop = threading.Event()
        consumer = TriggerConsumer(self.settings, state, self.id)

        def run() -> None:
            try:
                consumer.run(stop)
            except Exception as exc:  # its topic missing, its cluster away: tried again RESTART_S later
                log.warning("trigger %s: %s (again in %ss)", state.name, exc, RESTART_S)
                self._failed_at[state.name] = _now_s()

        thread = threading.Thread(target=run, name=f"trigger-{state.name}", daemon=True)
        self.running[state.name] = (state, stop, thread, consumer)
        log.info("trigger %s: consuming %s as group %s", state.name, state.topic, consumer.group)
        thread.start()

    def _stop(self, name: str) -> None:
        _, stop, thread, consumer = self.running.pop(name)
        stop.set()
        thread.join(30)
        log.info("trigger %s: stopped after creating %d tasks", name, consumer.created)


def run_trigger_runner(settings: Settings) -> None:
    """Run one trigger runner until SIGTERM/SIGINT (blocking)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    kafka.check_security(settings)
    TriggerRunner(settings).run(stop)
