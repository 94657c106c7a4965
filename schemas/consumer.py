"""The consumer runtime: the one loop under every long-lived Kafka consumer of the program.

A loop of ours (the processor, the retry relay, the executor's intake, the
API's read model and key store) says only what it does with what it reads,
by implementing ``Hooks`` (a base of no-op hooks, after dramatiq's
middleware); ``ConsumerRuntime`` owns the rest, in one thread: making the
client (``schemas.kafka``), subscribing or assigning, assignment, revocation
and lost partitions, batch polling, offset tracking (``PartitionOffsets``)
and commits, pausing, dead-letter delivery with its retries (one state
machine: ``DeadLetter``), leaving the group and shutdown. Why this shape:
docs/decisions/0012-one-consumer-runtime.md.

Two kinds of runtime:

- a **member** (``ConsumerRuntime.member``) joins a consumer group over
  ``topics`` (cooperative-sticky, manual commits). It tracks every offset it
  delivers and commits a partition up to the highest contiguous offset whose
  outcome is safe: every record of a batch once ``on_batch`` returned
  (``done_on_return``), or, for a loop that finishes records later, each one
  it marks with ``done``. A revoked partition is committed (after
  ``on_revoked`` settled what the loop holds) and forgotten; a lost one is
  forgotten uncommitted. Either way a paused partition is resumed before it
  leaves, so it is not still paused when it comes back (librdkafka keeps a
  partition's pause across a reassignment). An error a loop raises ends
  ``run`` with it, after the final commit of what is safe and leaving the
  group. A consumer that hits a fatal error (a static member fenced by
  another with its ``group.instance.id``, or refused while that id is still
  held) is rebuilt: everything assigned is lost (``on_lost``, nothing
  committed), the client is closed, and a new one from the factory joins
  again, once no other member holds its instance id and after a wait that
  grows while the refusals keep coming (``rebuilds`` counts them;
  docs/decisions/0027-consumer-rebuild.md).
- a **reader** (``ConsumerRuntime.reader``) joins no group and commits
  nothing: ``on_connect`` assigns what it reads (``assign``), typically every
  partition from the beginning. A failure (the broker away, a fatal client
  error, a hook that raised) is handed to ``on_failure``, which says whether
  to start over with a new client; the runtime then waits (0.2 s doubling to
  5 s) and connects again, so a reader never dies.

Records reach hooks as confluent-kafka messages (``topic()``,
``partition()``, ``offset()``, ``key()``, ``value()``, ``headers()``), never
errors: end of partition is ``on_end``, a fatal error rebuilds a member's
client and is a failure of a reader, and others are logged. Partitions are
``(topic, partition)`` tuples. Every hook runs on the runtime's thread; what
a hook shares with other threads it guards with ``runtime.lock``, which also
guards the runtime's offsets.

A poison record goes to ``<p>.dlq`` with ``dead_letter(record, reason)``:
the record as it was, headers naming where it came from and why
(``poison_headers``); refused for good (too large), it goes again without
its value; the broker away, it goes again ``REDO_S`` later. Its offset is
done only once the letter is settled, so a crash before that reads the
record again; the loop goes on meanwhile.

``TailReader`` (follow the end of partitions, for the processor's
heartbeats) and ``read_ranges`` (a bounded read of offset ranges, for the
change feed and the broker probe) are the two short-lived reads beside it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaError, KafkaException, TopicPartition

from . import kafka
from .errors import BrokerUnavailable, RecordRefused
from .offsets import DeadLetter, PartitionOffsets, forget_failed_commits
from .settings import Settings
from .topics import Topics

log = logging.getLogger(__name__)

Partition = tuple[str, int]

#: Start offsets for ``ConsumerRuntime.assign`` and ``TailReader``.
BEGINNING = OFFSET_BEGINNING
END = OFFSET_END
#: A dead letter the broker did not take (it is away) is sent again this much later.
REDO_S = 1.0
#: How long a revocation or the shutdown waits for dead letters and the loop's producer to be acknowledged.
FLUSH_S = 10.0
#: A reader that failed connects again after this wait, doubled on each failure in a row up to ``MAX_BACKOFF_S``.
BACKOFF_S = 0.2
MAX_BACKOFF_S = 5.0
#: A member rebuilt after a fatal error joins again at once; a fatal error again within ``FATAL_STORM_S`` of the
#: rebuild makes the next one wait ``REJOIN_S``, doubled while they keep coming up to ``MAX_REJOIN_S``. While
#: another member holds its static instance id, it asks the group again every ``REJOIN_S`` doubled up to
#: ``MAX_REJOIN_S``, so it joins at most that long after the id is released.
REJOIN_S = 0.2
MAX_REJOIN_S = 2.0
FATAL_STORM_S = 60.0


class _FatalError(BrokerUnavailable):
    """The consumer hit a fatal error: it delivers nothing more, and only a new client goes on."""


def is_fatal(err: KafkaError) -> bool:
    """Whether a consumer error leaves the client dead for good. librdkafka reports a consumer's fatal error
    (``FENCED_INSTANCE_ID``, ``UNRELEASED_INSTANCE_ID``) as an error event of code ``_FATAL`` whose ``fatal()``
    is False, the cause in its text; a ``KafkaError`` raised by a call says ``fatal()``."""
    return bool(err.fatal()) or err.code() == KafkaError._FATAL


class Hooks:
    """What a loop does with what the runtime reads: override the hooks you need; each default does nothing.

    Every hook runs on the runtime's thread and gets the runtime, whose
    methods (``done``, ``dead_letter``, ``pause``, ``resume``, ``commit``,
    ``assign``, ``watermarks``…) are the loop's handle on the consumer.
    """

    def on_connect(self, runtime: ConsumerRuntime) -> None:
        """A reader's client was (re)made: assign what to read (``runtime.assign``). Raising is a failure."""

    def on_assigned(self, runtime: ConsumerRuntime, partitions: list[Partition]) -> None:
        """A member was given ``partitions`` (possibly none); their offsets are tracked from now."""

    def on_batch(self, runtime: ConsumerRuntime, records: list[Any]) -> None:
        """Records of assigned partitions, in offset order per partition. A member with ``done_on_return`` marks
        every one done when this returns (a dead-lettered one when its letter is settled); raising ends ``run``
        (a member) or is a failure (a reader), and nothing of the batch is done."""

    def on_end(self, runtime: ConsumerRuntime, partition: Partition, offset: int) -> None:
        """``partition`` has nothing after ``offset`` for now (``enable.partition.eof`` readers)."""

    def on_idle(self, runtime: ConsumerRuntime) -> None:
        """Once per round of the loop, after the poll (with or without a batch): timers, pauses, checks."""

    def on_revoked(self, runtime: ConsumerRuntime, partitions: list[Partition]) -> None:
        """``partitions`` go to another member: settle what the loop holds of them (its outputs acknowledged,
        offsets marked done); the runtime then commits them and forgets them."""

    def on_lost(self, runtime: ConsumerRuntime, partitions: list[Partition]) -> None:
        """``partitions`` were taken without a revocation (the session ended); nothing of them can be committed
        any more: drop what the loop holds of them."""

    def on_failure(self, runtime: ConsumerRuntime, exc: Exception) -> bool:
        """A reader failed with ``exc``: return True to start over with a new client (``on_connect`` again)."""
        return True

    def poll_timeout(self, runtime: ConsumerRuntime, default: float) -> float:
        """How long the next poll may wait for a record (a loop with a timer due sooner returns less)."""
        return default

    def on_stopping(self, runtime: ConsumerRuntime) -> None:
        """``run`` is ending (stop set, or an error): settle what can be; the final commit follows."""

    def on_stopped(self, runtime: ConsumerRuntime) -> None:
        """The client is closed (a member left its group): release what the loop holds."""


class _Letter:
    """A dead letter on its way and the offsets it holds (None: not a tracked record)."""

    __slots__ = ("letter", "offsets", "due")

    def __init__(self, letter: DeadLetter, offsets: PartitionOffsets | None) -> None:
        self.letter, self.offsets, self.due = letter, offsets, 0.0


class ConsumerRuntime:
    """One consumer and its loop; ``run(stop)`` blocks until ``stop`` is set (see the module docstring).

    Options: ``overrides`` (consumer properties on top of the factory's),
    ``batch`` (most records per poll), ``poll_s`` (longest wait of a poll,
    which bounds how soon ``on_idle`` and a stop are seen; ``poll_timeout``
    can shorten it), ``commit_interval_s`` (a member commits at most this
    often; 0: after every round), ``done_on_return`` (see ``Hooks.on_batch``;
    False: the loop calls ``done``), ``producer`` (sends the dead letters: a
    ``kafka.producer``, flushed on revocation and shutdown, or an
    ``AsyncProducer``; by default one is made at the first dead letter),
    ``lock`` (see ``lock``: a loop may hand over its own reentrant lock) and
    ``committer``: a member's commits go through it instead of the consumer
    (see ``commit``), for a loop that commits its offsets in a producer's
    transaction: ``committer(offsets, group_metadata)`` (metadata None when
    there are no offsets) answers whether it committed.
    """

    def __init__(self, settings: Settings, hooks: Hooks, *, client_id: str, group: str | None = None,
                 topics: Sequence[str] = (), overrides: Mapping[str, Any] | None = None, batch: int = 500,
                 poll_s: float = 0.1, commit_interval_s: float = 0.0, done_on_return: bool = True,
                 producer: Any = None, lock: Any = None,
                 committer: Callable[[list[TopicPartition], Any], bool] | None = None) -> None:
        self.settings = settings
        self.hooks = hooks
        self.client_id = client_id
        self.group = group
        self.topics = list(topics)
        self.batch = batch
        self.poll_s = poll_s
        self.commit_interval_s = commit_interval_s
        self.done_on_return = done_on_return
        self.dlq = Topics(settings.prefix).dlq
        #: Guards the offsets (and what hooks share with other threads). Reentrant: a hook holding it may call the
        #: runtime's methods, which take it too.
        self.lock = lock if lock is not None else threading.RLock()
        self.paused: set[Partition] = set()
        self._overrides = dict(overrides or {})
        self._producer = producer
        self._own_producer = producer is None
        self._committer = committer
        self._offsets: dict[Partition, PartitionOffsets] = {}
        self._lettered: set[tuple[Partition, int]] = set()  # offsets of the batch in hand that went to the dlq
        self._letters: list[_Letter] = []  # waiting to be sent again
        self._consumer: Any = None  # a confluent-kafka Consumer
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: How many times a member's client was rebuilt after a fatal error.
        self.rebuilds = 0
        self._rejoin_wait = 0.0
        self._rebuilt_at = -1e9
        if group is not None:
            self._consumer = self._new_member_client()

    def _new_member_client(self) -> Any:
        assert self.group is not None
        return kafka.consumer(self.settings, self.client_id, self.group,
                              {"on_commit": self._on_commit, **self._overrides})

    @classmethod
    def member(cls, settings: Settings, hooks: Hooks, *, client_id: str, group: str, topics: Sequence[str],
               **options: Any) -> ConsumerRuntime:
        """A member of ``group`` over ``topics`` (the consumer is made now: ``BrokerUnavailable`` if it cannot be)."""
        return cls(settings, hooks, client_id=client_id, group=group, topics=topics, **options)

    @classmethod
    def reader(cls, settings: Settings, hooks: Hooks, *, client_id: str, **options: Any) -> ConsumerRuntime:
        """A reader: no group, no commits; ``hooks.on_connect`` assigns what it reads."""
        return cls(settings, hooks, client_id=client_id, **options)

    # ------------------------------------------------------------ the loop

    def run(self, stop: threading.Event) -> None:
        """Poll and call the hooks until ``stop`` is set; then the final commit, leave, close."""
        self._stop = stop
        if self.group is not None:
            try:
                self._subscribe()
                log.info("%s joining group %s", self.client_id, self.group)
                self._run_member(stop)
            finally:
                self._close_member()
        else:
            try:
                self._run_reader(stop)
            finally:
                self._close_client()
                self.hooks.on_stopped(self)

    def start_thread(self, name: str) -> ConsumerRuntime:
        """Run the loop on a daemon thread named ``name`` until ``stop_thread`` (once: a second call does nothing)."""
        if self._thread is not None:
            return self
        stop = threading.Event()
        self._stop = stop
        self._thread = threading.Thread(target=self.run, args=(stop,), name=name, daemon=True)
        self._thread.start()
        return self

    def stop_thread(self, timeout: float = 5.0) -> bool:
        """Stop the loop ``start_thread`` began and wait up to ``timeout``; whether it ended (or never ran)."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _subscribe(self) -> None:
        kafka.set_group_timeouts(self.settings, self.group or "")
        self._call(self._consumer.subscribe, self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                   on_lost=self._on_lost)

    def _run_member(self, stop: threading.Event) -> None:
        last_commit = time.monotonic()
        while not stop.is_set():
            try:
                self._round()
            except _FatalError as exc:
                self._rebuild(stop, exc)
                continue
            if time.monotonic() - last_commit >= self.commit_interval_s:
                self.commit(asynchronous=True)
                last_commit = time.monotonic()

    # ------------------------------------------------------------ a member's fatal error

    def _rebuild(self, stop: threading.Event, exc: _FatalError) -> None:
        """Replace a member's dead client (see the module docstring): what it held is lost, as on a session
        that ended; the new client joins once its instance id is free and the wait of a storm is over."""
        with self.lock:
            held = sorted(self._offsets)
        if held:
            self._lose(held)
        self._close_client()  # the old client's callbacks, if any, are ignored from now on
        if time.monotonic() - self._rebuilt_at < FATAL_STORM_S:
            self._rejoin_wait = min(MAX_REJOIN_S, max(REJOIN_S, 2 * self._rejoin_wait))
        else:
            self._rejoin_wait = 0.0
        started = time.monotonic()
        wait = self._rejoin_wait
        while not stop.wait(wait):
            wait = REJOIN_S
            if self._instance_held(stop):
                continue
            try:
                self._consumer = self._new_member_client()
                self._subscribe()
            except BrokerUnavailable as again:
                self._close_client()
                wait = MAX_REJOIN_S
                log.warning("%s: rebuilding its consumer failed, again in %.1fs: %s", self.client_id, wait, again)
                continue
            self.rebuilds += 1
            self._rebuilt_at = time.monotonic()
            log.warning("%s rebuilt its consumer after a fatal error (%s); lost %s; joining group %s again "
                        "after %.1fs (rebuild %d)", self.client_id, exc, _names(held), self.group,
                        self._rebuilt_at - started, self.rebuilds)
            return

    def _instance_held(self, stop: threading.Event) -> bool:
        """Whether another member of the group holds this member's static ``group.instance.id`` (waiting, with
        a warning once, until it does not, ``stop`` is set or the group cannot be described). Joining while it is
        held would fence that member under the classic protocol, and is refused under the consumer protocol."""
        instance = self._overrides.get("group.instance.id")
        if not instance or self.group is None:
            return False
        try:
            client = kafka.admin(self.settings, f"{self.client_id}-rejoin")
        except BrokerUnavailable:
            return False
        wait, warned = REJOIN_S, False
        while not stop.is_set():
            got = kafka.describe_groups(client, [self.group], MAX_REJOIN_S * 2).get(self.group)
            if not isinstance(got, dict) or not any(m["instance_id"] == instance for m in got["members"]):
                return False
            if not warned:
                log.warning("%s: instance id %s is held by another member of group %s; joining once it is "
                            "released", self.client_id, instance, self.group)
                warned = True
            stop.wait(wait)
            wait = min(MAX_REJOIN_S, 2 * wait)
        return True

    def _run_reader(self, stop: threading.Event) -> None:
        backoff = BACKOFF_S
        while not stop.is_set():
            connecting = self._consumer is None
            try:
                if connecting:
                    self._consumer = kafka.reader(self.settings, self.client_id,
                                                  f"{self.settings.prefix}-{self.client_id}-{uuid.uuid4().hex}",
                                                  self._overrides)
                    self.hooks.on_connect(self)
                    backoff = BACKOFF_S
                self._round()
            except Exception as exc:  # a reader never dies: it starts over when the hook says so
                again = self.hooks.on_failure(self, exc) or connecting  # a client half connected is no use
                log.warning("%s: %s (%s in %.1fs)", self.client_id, exc,
                            "connecting again" if again else "going on", backoff)
                if again:
                    self._close_client()
                stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _round(self) -> None:
        records = self._poll(self.hooks.poll_timeout(self, self.poll_s))
        if records:
            self._take(records)
        self._send_letters_due()
        if self._producer is not None and not isinstance(self._producer, kafka.AsyncProducer):
            self._producer.poll(0)  # delivery reports (an AsyncProducer's own thread polls it)
        self.hooks.on_idle(self)

    def _poll(self, timeout: float) -> list[Any]:
        try:
            messages = kafka.consume_available(self._consumer, self.batch, timeout)
        except KafkaException as exc:
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if err is None:
                raise BrokerUnavailable(f"{self.client_id}: {exc}") from exc
            if is_fatal(err):
                raise _FatalError(err.str()) from exc
            log.warning("%s poll failed: %s", self.client_id, exc)
            return []
        records = []
        for m in messages:
            err = m.error()
            if err is None:
                records.append(m)
            elif err.code() == KafkaError._PARTITION_EOF:
                topic, partition, offset = m.topic(), m.partition(), m.offset()
                if topic is not None and partition is not None and offset is not None:  # always set on an EOF event
                    self.hooks.on_end(self, (topic, partition), offset)
            elif is_fatal(err):
                raise _FatalError(err.str())
            else:
                log.warning("%s consumer error: %s", self.client_id, err)
        return records

    def _take(self, records: list[Any]) -> None:
        if self.group is None:
            self.hooks.on_batch(self, records)
            return
        taken = []
        with self.lock:
            for m in records:
                offsets = self._offsets.get((m.topic(), m.partition()))
                if offsets is None:
                    continue  # revoked while the batch was in flight
                offsets.add(m.offset())
                taken.append((m, offsets))
            self._lettered.clear()
        if not taken:
            return
        self.hooks.on_batch(self, [m for m, _ in taken])
        if self.done_on_return:
            with self.lock:
                for m, offsets in taken:
                    if ((m.topic(), m.partition()), m.offset()) not in self._lettered:
                        offsets.mark_done(m.offset())
                self._lettered.clear()

    # ------------------------------------------------------------ for hooks

    def settle(self, records: Iterable[Any]) -> None:
        """Mark records of the batch in hand done now, as its return would (a dead-lettered one still waits for
        its letter): for a loop that commits part of a long batch before it ends (``commit``)."""
        with self.lock:
            for m in records:
                key = (m.topic(), m.partition())
                offsets = self._offsets.get(key)
                if offsets is not None and (key, m.offset()) not in self._lettered:
                    offsets.mark_done(m.offset())

    def done(self, partition: Partition, offset: int, offsets: PartitionOffsets | None = None) -> None:
        """``offset`` of ``partition`` has a safe outcome (thread-safe). With ``offsets`` (what ``offsets()``
        gave when the record was taken) the mark is dropped if the partition was revoked and given back since."""
        with self.lock:
            current = self._offsets.get(partition)
            if current is not None and (offsets is None or offsets is current):
                current.mark_done(offset)

    def offsets(self, partition: Partition) -> PartitionOffsets | None:
        """The offsets tracked for ``partition`` in this assignment (None: not assigned)."""
        with self.lock:
            return self._offsets.get(partition)

    def assignment(self) -> set[Partition]:
        """The partitions assigned now."""
        if self.group is not None:
            with self.lock:
                return set(self._offsets)
        if self._consumer is None:
            return set()
        return {(tp.topic, tp.partition) for tp in self._call(self._consumer.assignment)}

    def assign(self, starts: Mapping[Partition, int]) -> None:
        """A reader reads ``partitions`` from their start offsets (``BEGINNING``, ``END`` or an offset)."""
        self._call(self._consumer.assign, [TopicPartition(t, p, o) for (t, p), o in starts.items()])

    def partitions(self, topic: str, timeout: float) -> list[int]:
        """The partitions of ``topic``; ``BrokerUnavailable`` if it does not exist. Asks for every topic's
        metadata: a request naming an unknown topic may create it on some brokers."""
        meta = self._call(self._consumer.list_topics, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise BrokerUnavailable(f"topic {topic} does not exist (run `taskstream topics create`)")
        return sorted(meta.partitions)

    def watermarks(self, partition: Partition, timeout: float = 10.0, cached: bool = False) -> tuple[int, int]:
        """(low, high) offsets of ``partition``: asked of the broker, or librdkafka's last figures (``cached``;
        (-1, -1) when it has none)."""
        got = self._call(self._consumer.get_watermark_offsets, TopicPartition(*partition), timeout=timeout,
                         cached=cached)
        return got if got is not None else (-1, -1)

    def positions(self, partitions: Iterable[Partition]) -> dict[Partition, int]:
        """The consumer's next offset of each partition (-1 or below: none yet)."""
        tps = [TopicPartition(*p) for p in partitions]
        return {(tp.topic, tp.partition): tp.offset for tp in self._call(self._consumer.position, tps)} if tps else {}

    def pause(self, partitions: Iterable[Partition]) -> None:
        """Stop fetching ``partitions`` (assigned ones) until ``resume``; a revoked or lost one is resumed."""
        todo = [p for p in partitions if p not in self.paused]
        if todo:
            self._call(self._consumer.pause, [TopicPartition(*p) for p in todo])
            self.paused.update(todo)

    def resume(self, partitions: Iterable[Partition]) -> None:
        todo = [p for p in partitions if p in self.paused]
        if todo:
            self._call(self._consumer.resume, [TopicPartition(*p) for p in todo])
            self.paused.difference_update(todo)

    def commit(self, asynchronous: bool = True, only: Iterable[Partition] | None = None) -> None:
        """Commit every tracked partition (or those of ``only``) whose position moved since its last commit. A
        commit that fails is logged and sent again by a later one (records are read again, never skipped). With a
        ``committer`` it commits (and is called even with no offsets: a transaction may hold outputs of none);
        when it answers False the loop has rewound, and nothing is recorded as committed."""
        if self.group is None:
            return
        with self.lock:
            keys = list(self._offsets) if only is None else [k for k in only if k in self._offsets]
            todo = [(k, o.position) for k, o in ((k, self._offsets[k]) for k in keys)
                    if o.position is not None and o.position != o.committed]
        if self._committer is not None:
            # Called even with nothing to commit: the loop's transaction may hold outputs of no record (timers).
            tps = [TopicPartition(t, p, pos) for (t, p), pos in todo]
            if not self._committer(tps, self._call(self._consumer.consumer_group_metadata) if tps else None):
                return  # not committed: the committer rewound what it had to
            self._committed(todo)
            return
        if not todo:
            return
        try:
            self._consumer.commit(offsets=[TopicPartition(t, p, pos) for (t, p), pos in todo],
                                  asynchronous=asynchronous)
        except KafkaException as exc:
            log.warning("%s commit failed (records are read again, duplicates are fenced): %s", self.client_id, exc)
            return
        self._committed(todo)

    def _committed(self, todo: list[tuple[Partition, int]]) -> None:
        with self.lock:
            for key, pos in todo:
                if key in self._offsets:
                    self._offsets[key].committed = pos
        log.debug("%s committed %s", self.client_id, todo)

    def rewind(self) -> dict[Partition, int]:
        """Read every assigned partition again from its committed offset (from the beginning where the group
        committed none): what was taken since is forgotten (marks of records in hand no longer count), and the
        records are delivered again. For a loop whose transaction was aborted. The offsets sought, by partition;
        ``BrokerUnavailable`` if the group's offsets cannot be read."""
        with self.lock:
            keys = sorted(self._offsets)
        # Only what the consumer holds already: a partition being assigned starts at its committed offset anyway.
        held = {(tp.topic, tp.partition) for tp in self._call(self._consumer.assignment)}
        keys = [k for k in keys if k in held]
        if not keys:
            return {}
        committed = self._call(self._consumer.committed, [TopicPartition(t, p) for t, p in keys], timeout=10)
        sought: dict[Partition, int] = {}
        for tp in committed:
            key = (tp.topic, tp.partition)
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            fresh = PartitionOffsets()
            fresh.committed = tp.offset if tp.offset >= 0 else None
            with self.lock:
                if key not in self._offsets:
                    continue
                self._offsets[key] = fresh  # a record in hand marks the old one: it does not count
            self._seek(TopicPartition(tp.topic, tp.partition, offset))
            sought[key] = offset
        log.info("%s rewound to the committed offsets %s", self.client_id, sought)
        return sought

    def _seek(self, tp: TopicPartition) -> None:
        """Seek one assigned partition; a partition whose fetch has not started yet refuses a seek for a moment
        (``_STATE``), so that is tried again."""
        deadline = time.monotonic() + 10
        while True:
            try:
                self._consumer.seek(tp)
                return
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(f"{self.client_id}: seek to {tp}: {exc}") from exc
                time.sleep(0.05)

    def dead_letter(self, record: Any, reason: str, headers: Sequence[tuple[str, bytes]] = ()) -> None:
        """Send ``record`` to ``<p>.dlq`` with headers naming where it came from and why (and ``headers``);
        the loop goes on.

        Thread-safe. A tracked record's offset is done once the letter is
        settled (sent, or refused even without its value); until then it
        holds its partition's commits back.
        """
        letter = DeadLetter(record, reason, headers)
        key = (letter.topic, letter.partition)
        with self.lock:
            offsets = self._offsets.get(key)
            if offsets is not None:
                self._lettered.add((key, letter.offset))
        log.warning("poison message %s goes to %s: %s", letter, self.dlq, reason)
        self._send_letter(_Letter(letter, offsets))

    # ------------------------------------------------------------ dead letters

    def _send_letter(self, held: _Letter) -> None:
        letter = held.letter

        def delivered(err: Any, _msg: Any = None) -> None:
            outcome = letter.settle(err)
            if outcome == DeadLetter.RESEND:
                log.error("dead letter of %s refused, sent again without its value: %s", letter, err)
                self._send_letter(held)
            elif outcome == DeadLetter.LATER:
                log.warning("dead letter of %s not acknowledged, again in %ss: %s", letter, REDO_S, err)
                held.due = time.monotonic() + REDO_S
                with self.lock:
                    self._letters.append(held)
            else:
                if outcome == DeadLetter.GIVEN_UP:
                    log.error("dead letter of %s refused even without its value; left in its topic: %s", letter, err)
                if held.offsets is not None:
                    self.done((letter.topic, letter.partition), letter.offset, held.offsets)

        key, value, headers = letter.record()
        try:
            send(self._dlq_producer(), self.dlq, key, value, headers, on_delivery=delivered)
        except BrokerUnavailable as exc:
            cause = exc.__cause__
            delivered(cause if isinstance(cause, KafkaException) else KafkaError(KafkaError._TRANSPORT))

    def _send_letters_due(self) -> None:
        if not self._letters:
            return
        now = time.monotonic()
        with self.lock:
            due = [h for h in self._letters if h.due <= now]
            self._letters = [h for h in self._letters if h.due > now]
        for held in due:
            key = (held.letter.topic, held.letter.partition)
            if held.offsets is None or self.offsets(key) is held.offsets:  # else revoked: its new owner reads it
                self._send_letter(held)

    def _dlq_producer(self) -> Any:
        if self._producer is None:
            self._producer = kafka.producer(self.settings, f"{self.client_id}-dlq")
        return self._producer

    # ------------------------------------------------------------ rebalances

    def _on_assign(self, _consumer: Any, tps: list[Any]) -> None:
        partitions = [(tp.topic, tp.partition) for tp in tps]
        with self.lock:
            for p in partitions:
                self._offsets[p] = PartitionOffsets()
        log.info("%s assigned %s", self.client_id, _names(partitions))
        self.hooks.on_assigned(self, partitions)

    def _on_revoke(self, _consumer: Any, tps: list[Any]) -> None:
        if _consumer is not self._consumer:
            return  # a client being closed after a fatal error: its partitions were lost already (``_rebuild``)
        partitions = [(tp.topic, tp.partition) for tp in tps]
        log.info("%s revoked %s", self.client_id, _names(partitions))
        try:
            self.hooks.on_revoked(self, partitions)
            self._flush()
            self.commit(asynchronous=False, only=partitions)
        finally:
            self._forget(partitions)

    def _on_lost(self, _consumer: Any, tps: list[Any]) -> None:
        if _consumer is not self._consumer:
            return  # a client being closed after a fatal error: its partitions were lost already (``_rebuild``)
        self._lose([(tp.topic, tp.partition) for tp in tps])

    def _lose(self, partitions: list[Partition]) -> None:
        log.warning("%s lost %s", self.client_id, _names(partitions))
        try:
            self.hooks.on_lost(self, partitions)
        finally:
            self._forget(partitions)

    def _forget(self, partitions: list[Partition]) -> None:
        gone = set(partitions)
        try:
            # Else the pause outlives the assignment and holds the partition when it comes back.
            self.resume(gone & self.paused)
        except BrokerUnavailable as exc:
            log.warning("%s resume of %s failed: %s", self.client_id, _names(gone & self.paused), exc)
        self.paused -= gone
        with self.lock:
            for p in gone:
                self._offsets.pop(p, None)
            self._letters = [h for h in self._letters if (h.letter.topic, h.letter.partition) not in gone]

    def _on_commit(self, err: Any, tps: list[Any]) -> None:
        """A commit the broker refused (a rebalance under way) is sent again by the next ``commit``."""
        with self.lock:
            failed = forget_failed_commits(err, tps, self._offsets)
        if failed:
            log.info("%s commit of %s refused, sent again: %s", self.client_id, _names(failed),
                     err or [tp.error for tp in tps if tp.error][0])

    # ------------------------------------------------------------ shutdown

    def _flush(self) -> None:
        if self._producer is not None:
            self._producer.flush(FLUSH_S)

    def _close_member(self) -> None:
        """The final commit of what is safe, then leave the group (which revokes what is left) and close."""
        try:
            self.hooks.on_stopping(self)
            self._flush()
            self.commit(asynchronous=False)
        except Exception as exc:  # what is not committed is read again by the next owner
            log.warning("%s final commit failed: %s", self.client_id, exc)
        try:
            if self._consumer is not None:  # None: stopped while rebuilding after a fatal error
                self._consumer.close()
        except Exception as exc:  # noqa: BLE001 — a hook that raised on the last revocation, or the broker away
            log.warning("%s leaving the group: %s", self.client_id, exc)
        log.info("%s left group %s", self.client_id, self.group)
        self.hooks.on_stopped(self)

    def close(self) -> None:
        """Close the client (leaving no group: for a runtime that never ran, or a reader)."""
        self._close_client()

    def _close_client(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.close()
            except Exception as exc:  # closing a client of an unreachable cluster may complain
                log.debug("%s close: %s", self.client_id, exc)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._consumer is None:
            raise BrokerUnavailable(f"{self.client_id}: not connected")
        try:
            return fn(*args, **kwargs)
        except KafkaException as exc:
            raise BrokerUnavailable(f"{self.client_id}: {exc}") from exc


def _names(partitions: Iterable[Partition]) -> list[str]:
    return [f"{t}[{p}]" for t, p in sorted(partitions)]


def send(producer: Any, topic: str, key: bytes | str | None, value: bytes | None, headers: Any = None, *,
         partition: int | None = None, on_delivery: Any = None) -> None:
    """Produce one record with ``producer`` (a ``kafka.producer`` or an ``AsyncProducer``), waiting while its
    local queue is full. ``RecordRefused`` when the record is refused for good (``is_permanent``: its message is
    librdkafka's reason), ``BrokerUnavailable`` for any other error; the cause is the library's exception."""
    if isinstance(producer, kafka.AsyncProducer):
        producer.produce(topic, key or b"", value or b"", headers, on_delivery)
        return
    kwargs: dict[str, Any] = {"headers": headers, "on_delivery": on_delivery}
    if partition is not None:
        kwargs["partition"] = partition
    while True:
        try:
            producer.produce(topic, value, key, **kwargs)
            return
        except BufferError:  # the local queue is full: deliveries make room
            producer.poll(0.05)
        except KafkaException as exc:
            reason = exc.args[0].str() if exc.args and isinstance(exc.args[0], KafkaError) else str(exc)
            raise (RecordRefused if kafka.is_permanent(exc) else BrokerUnavailable)(reason) from exc


class TailReader:
    """Follows the end of some partitions of one topic (no group, no commits): what is appended from now on.

    The processor follows ``<p>.heartbeats`` this way, on the partitions of
    its ``<p>.events`` assignment. Not thread-safe: one thread uses it.
    """

    def __init__(self, settings: Settings, client_id: str, topic: str) -> None:
        self.topic = topic
        self._consumer = kafka.reader(settings, client_id, f"{settings.prefix}-{client_id}")  # never joined
        self.partitions: set[int] = set()

    def add(self, partitions: Iterable[int], timeout: float = 5.0) -> None:
        """Follow ``partitions`` from their end as the broker reports it now: every record appended after this
        returns is taken. If the broker does not answer within ``timeout`` the end is resolved later by the client
        (``OFFSET_END``), and records appended meanwhile may be skipped."""
        new = sorted(set(partitions) - self.partitions)
        if not new:
            return
        try:
            ends = {p: high for p, (_, high) in kafka.watermarks(self._consumer, self.topic, new, timeout).items()}
        except BrokerUnavailable as exc:
            log.warning("following %s from a later end: %s", self.topic, exc)
            ends = {}
        self._consumer.incremental_assign([TopicPartition(self.topic, p, ends.get(p, OFFSET_END)) for p in new])
        self.partitions.update(new)

    def remove(self, partitions: Iterable[int]) -> None:
        gone = sorted(set(partitions) & self.partitions)
        if not gone:
            return
        self.partitions.difference_update(gone)
        try:
            self._consumer.incremental_unassign([TopicPartition(self.topic, p) for p in gone])
        except KafkaException as exc:
            log.debug("%s unassign: %s", self.topic, exc)

    def take(self, max_records: int, timeout: float = 0.0) -> list[Any]:
        """Records already here (waiting up to ``timeout`` for a first one); errors are left out."""
        if not self.partitions:
            return []
        try:
            messages = kafka.consume_available(self._consumer, max_records, timeout)
        except KafkaException as exc:
            log.warning("following %s: %s", self.topic, exc)
            return []
        return [m for m in messages if m.error() is None]

    def close(self) -> None:
        try:
            self._consumer.close()
        except Exception as exc:  # closing a client of an unreachable cluster may complain
            log.debug("%s close: %s", self.topic, exc)


class RangeReader:
    """Bounded reads of offset ranges of one topic (no group, no commits), one range read at a time.

    ``watermarks`` answers "where does each partition end now"; ``read``
    yields what lies in the ranges asked. Not thread-safe: callers hold
    their own lock or use one reader per read.
    """

    def __init__(self, settings: Settings, client_id: str) -> None:
        self._consumer = kafka.reader(settings, client_id, f"{settings.prefix}-{client_id}-{uuid.uuid4().hex}",
                                      {"enable.partition.eof": True})
        #: Partitions the last ``read`` did not finish within its time (empty when it read everything).
        self.unfinished: set[int] = set()

    def watermarks(self, topic: str, partitions: Iterable[int], timeout: float) -> dict[int, tuple[int, int]]:
        """(low, high) of each partition, asked of the broker now (``kafka.watermarks``); ``BrokerUnavailable`` if it
        does not answer."""
        return kafka.watermarks(self._consumer, topic, partitions, timeout)

    def read(self, topic: str, ranges: Mapping[int, tuple[int, int]], timeout: float) -> Iterator[list[Any]]:
        """Batches of the records of ``topic`` in ``ranges`` ``{partition: (from, to)}`` (``to`` excluded).

        A partition is done when a record at or past its end was read, or it
        reports end of partition (offsets a compaction left out cannot hold
        the read up). After ``timeout`` seconds the read stops and
        ``unfinished`` names the partitions it did not finish.
        """
        todo = {p: end for p, (start, end) in ranges.items() if end > start}
        self.unfinished = set(todo)
        if not todo:
            return
        try:
            self._consumer.assign([TopicPartition(topic, p, ranges[p][0]) for p in sorted(todo)])
        except KafkaException as exc:
            raise BrokerUnavailable(f"reading {topic}: {exc}") from exc
        deadline = time.monotonic() + timeout
        try:
            while todo and time.monotonic() < deadline:
                keep = []
                for m in kafka.consume_available(self._consumer, 1000, min(0.2, max(0.0, deadline - time.monotonic()))):
                    p, offset, error = m.partition(), m.offset(), m.error()
                    if p is None or p not in todo:
                        continue
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            del todo[p]  # the rest was compacted away: nothing more to read
                        continue
                    if offset is None:  # a record always has one; the library's types allow None
                        continue
                    if offset >= todo[p]:
                        del todo[p]
                        continue
                    if offset + 1 >= todo[p]:
                        del todo[p]
                    keep.append(m)
                self.unfinished = set(todo)
                if keep:
                    yield keep
        except KafkaException as exc:
            raise BrokerUnavailable(f"reading {topic}: {exc}") from exc
        finally:
            try:
                self._consumer.unassign()
            except KafkaException as exc:
                log.debug("reading %s: unassign: %s", topic, exc)

    def close(self) -> None:
        try:
            self._consumer.close()
        except Exception as exc:  # closing a client of an unreachable cluster may complain
            log.debug("range reader close: %s", exc)


def read_state_to_end(settings: Settings, client_id: str, topic: str, partitions: Iterable[int],
                      timeout: float = 30.0) -> Iterator[list[Any]]:
    """Batches of every record of ``partitions`` of ``topic`` from their beginning up to their end offsets as
    of now (``kafka.read_to_ends``), with a reader of its own; ``BrokerUnavailable`` if the broker fails it."""
    reader = kafka.reader(settings, client_id, f"{settings.prefix}-{client_id}", {"enable.partition.eof": True})
    try:
        ends = kafka.end_offsets(reader, topic, partitions, timeout=timeout)
        yield from kafka.read_to_ends(reader, topic, ends)
    except KafkaException as exc:
        raise BrokerUnavailable(f"reading {topic}: {exc}") from exc
    finally:
        reader.close()
