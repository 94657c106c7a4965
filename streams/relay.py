"""The retry relay: holds waiting attempts until their time, then re-queues them (DESIGN §6).

When an attempt fails and the policy allows another, the processor appends
``TaskRetryScheduled(attempt, not_before)`` to the log and publishes the same
record to ``<p>.retry.<tier>`` (tiers by length of the wait, ``RETRY_TIERS``).
The relay is a consumer group (``<p>-retry-relay``) over every tier; each
processor process runs one member in a thread. It keeps the records it read
in a heap ordered by ``not_before`` and, at that time, appends
``TaskQueued(attempt + 1, due_at=not_before)`` keyed by the task to
``<p>.events``. The processor folds it like any event (the task turns
``queued`` and its ReadyTask goes to the priority's ready topic), so a task
cancelled or re-driven while it waited is not re-queued: a TaskQueued whose
attempt or due time no longer matches is ignored by the fold. Requeueing
through the log rather than straight to the ready topic is what keeps the
state right and replayable (DESIGN §4: time enters the log as an event).

Offsets are committed up to the last contiguous record whose TaskQueued the
broker acknowledged, so a crash re-reads what was still waiting (duplicates
are fenced by the fold). A partition holding more than ``MAX_HELD`` waiting
records is paused until it drains to half. The loop is a set of hooks on the
consumer runtime (``schemas.consumer``: group, commits, pauses, dead
letters). A record that does not decode goes to ``<p>.dlq`` with the usual
headers (the runtime's ``dead_letter``). A re-queue that fails is tried
again ``REDO_S`` later from the heap, so one failure never holds a
partition's commits back for good; a re-queue the broker refuses for good
is left to the processor's own timer (``RELAY_SLACK_S`` later).

Accuracy: the relay wakes at the earliest ``not_before`` (its poll timeout
is bounded by it) and the re-queued attempt then takes two more hops
(processor, executor); measured figures are in docs/benchmarks/.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from datetime import UTC, datetime

from taskstream.schemas import BrokerUnavailable, DecodeError, Settings, TaskRetryScheduled, Topics, codec, kafka
from taskstream.schemas.consumer import ConsumerRuntime, Hooks, Partition, send
from taskstream.schemas.kafka import is_permanent
from taskstream.schemas.observability import about
from taskstream.schemas.offsets import PartitionOffsets

from . import domain

log = logging.getLogger(__name__)

MAX_HELD = 50_000
COMMIT_INTERVAL_S = 0.5
MAX_WAIT_S = 0.1
#: A write that failed is tried again this much later.
REDO_S = 1.0


class RetryRelay(Hooks):
    """One member of the relay group, the hooks of a ``ConsumerRuntime`` (which commits each record once its
    TaskQueued, or its dead letter, was acknowledged); ``run(stop)`` blocks until ``stop`` is set."""

    def __init__(self, settings: Settings, member_id: str) -> None:
        self.settings = settings
        self.topics = Topics(settings.prefix)
        self.wire = codec.WireFormat.of(settings)
        self.id = f"{member_id}-relay"
        self.producer = kafka.producer(settings, self.id)
        self.runtime = ConsumerRuntime.member(
            settings, self, client_id=self.id, group=self.topics.relay_group, topics=self.topics.all_retry,
            poll_s=MAX_WAIT_S, commit_interval_s=COMMIT_INTERVAL_S, done_on_return=False, producer=self.producer)
        self._heap: list = []
        self._seq = itertools.count()
        self.requeued = 0

    def run(self, stop: threading.Event) -> None:
        self.runtime.run(stop)

    # ------------------------------------------------------------ hooks

    def on_assigned(self, runtime: ConsumerRuntime, partitions: list[Partition]) -> None:
        log.info("retry relay %s assigned %d partitions", self.id, len(partitions))

    def on_revoked(self, runtime: ConsumerRuntime, partitions: list[Partition]) -> None:
        self._forget(partitions)  # the runtime flushes the re-queues in flight, then commits

    def on_lost(self, runtime: ConsumerRuntime, partitions: list[Partition]) -> None:
        self._forget(partitions)

    def _forget(self, partitions: list[Partition]) -> None:
        gone = set(partitions)
        # Waiting records of those partitions are re-read by their new owner.
        self._heap = [entry for entry in self._heap if (entry[2], entry[3]) not in gone]
        heapq.heapify(self._heap)

    def poll_timeout(self, runtime: ConsumerRuntime, default: float) -> float:
        return min(default, max(0.0, self._heap[0][0] - time.time())) if self._heap else default

    def on_batch(self, runtime: ConsumerRuntime, records: list) -> None:
        for m in records:
            offsets = runtime.offsets((m.topic(), m.partition()))
            if offsets is None:
                continue
            try:
                record = self.wire.decode_as(m.value(), TaskRetryScheduled)
            except DecodeError as exc:
                runtime.dead_letter(m, str(exc))
                continue
            offsets.held += 1
            due = record.not_before.timestamp()
            heapq.heappush(self._heap, (due, next(self._seq), m.topic(), m.partition(), m.offset(), record))

    def on_idle(self, runtime: ConsumerRuntime) -> None:
        self._release(time.time())
        self._pause_full()

    def on_stopped(self, runtime: ConsumerRuntime) -> None:
        log.info("retry relay %s stopped after re-queueing %d attempts", self.id, self.requeued)

    # ------------------------------------------------------------ re-queueing

    def _release(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            _, _, topic, partition, offset, record = heapq.heappop(self._heap)
            offsets = self.runtime.offsets((topic, partition))
            if offsets is None:
                continue
            offsets.held -= 1
            queued = domain.requeued(record, datetime.now(UTC), self.id)

            def done(err, msg, topic=topic, partition=partition, offsets=offsets, offset=offset, record=record):
                if err is None:
                    self.runtime.done((topic, partition), offset, offsets)
                elif is_permanent(err):  # never going to fit: the processor's own timer re-queues the attempt
                    log.error("retry relay: re-queue of %s refused by the broker, left to the processor's timer: %s",
                              record.task_id, err, extra=about(record.task_id, record.attempt + 1))
                    self.runtime.done((topic, partition), offset, offsets)
                else:
                    log.warning("retry relay: re-queue of %s not acknowledged, again in %ss: %s", record.task_id,
                                REDO_S, err, extra=about(record.task_id, record.attempt + 1))
                    self._hold_again(topic, partition, offset, record, offsets)

            try:
                send(self.producer, self.topics.events, record.task_id.encode(), self.wire.encode(queued),
                     codec.headers(queued), on_delivery=done)
            except BrokerUnavailable as exc:
                log.warning("retry relay: re-queue of %s failed, again in %ss: %s", record.task_id, REDO_S, exc,
                            extra=about(record.task_id, record.attempt + 1))
                self._hold_again(topic, partition, offset, record, offsets)
                continue
            self.requeued += 1

    def _hold_again(self, topic: str, partition: int, offset: int, record, offsets: PartitionOffsets) -> None:
        if self.runtime.offsets((topic, partition)) is not offsets:
            return  # revoked meanwhile: the new owner reads it again
        offsets.held += 1
        heapq.heappush(self._heap, (time.time() + REDO_S, next(self._seq), topic, partition, offset, record))

    def _pause_full(self) -> None:
        for tp in self.runtime.assignment():
            offsets = self.runtime.offsets(tp)
            if offsets is None:
                continue
            if offsets.held > MAX_HELD and tp not in self.runtime.paused:
                self.runtime.pause([tp])
            elif offsets.held <= MAX_HELD // 2 and tp in self.runtime.paused:
                self.runtime.resume([tp])
