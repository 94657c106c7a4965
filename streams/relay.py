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
records is paused until it drains to half. A record that does not decode
goes to ``<p>.dlq`` with the usual headers. A write that fails is tried
again ``REDO_S`` later (a re-queue from the heap, a dead letter from a list),
so one failure never holds a partition's commits back for good; a dead
letter the broker refuses for good (``is_permanent``: too large) goes again
without its value, and a re-queue it refuses for good is left to the
processor's own timer (``RELAY_SLACK_S`` later).

Accuracy: the relay wakes at the earliest ``not_before`` (its poll timeout
is bounded by it) and the re-queued attempt then takes two more hops
(processor, executor); measured figures are in the README.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from datetime import UTC, datetime

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from taskstream.schemas import DecodeError, Settings, TaskRetryScheduled, Topics, codec
from taskstream.schemas import kafka
from taskstream.schemas.kafka import consume_available, is_permanent
from taskstream.schemas.observability import about
from taskstream.schemas.offsets import DeadLetter, PartitionOffsets, forget_failed_commits

from . import domain

log = logging.getLogger(__name__)

MAX_HELD = 50_000
COMMIT_INTERVAL_S = 0.5
MAX_WAIT_S = 0.1
#: A write that failed is tried again this much later.
REDO_S = 1.0


class RetryRelay:
    def __init__(self, settings: Settings, member_id: str) -> None:
        self.settings = settings
        self.topics = Topics(settings.prefix)
        self.wire = codec.WireFormat.of(settings)
        self.id = f"{member_id}-relay"
        self.consumer = kafka.consumer(settings, self.id, self.topics.relay_group, {"on_commit": self._on_commit})
        self.producer = kafka.producer(settings, self.id)
        self._offsets: dict[tuple[str, int], PartitionOffsets] = {}
        self._heap: list = []
        self._seq = itertools.count()
        self._paused: set[tuple[str, int]] = set()
        self._redo_dlq: list[tuple[float, DeadLetter, PartitionOffsets]] = []  # (when, letter, offsets)
        self.requeued = 0

    # ------------------------------------------------------------ partitions

    def _on_assign(self, consumer, partitions) -> None:
        for tp in partitions:
            self._offsets[(tp.topic, tp.partition)] = PartitionOffsets()
        log.info("retry relay %s assigned %d partitions", self.id, len(partitions))

    def _on_commit(self, err, partitions) -> None:
        """A commit the broker refused (a rebalance under way) is sent again by the next ``_commit``."""
        failed = forget_failed_commits(err, partitions, self._offsets)
        if failed:
            log.info("retry relay %s commit of %s refused, sent again: %s", self.id,
                     [f"{t}[{p}]" for t, p in failed], err or [tp.error for tp in partitions if tp.error][0])

    def _on_revoke(self, consumer, partitions) -> None:
        self.producer.flush(10)
        self._commit(asynchronous=False)
        self._forget(partitions)

    def _on_lost(self, consumer, partitions) -> None:
        self._forget(partitions)

    def _forget(self, partitions) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        for tp in gone:
            self._offsets.pop(tp, None)
            self._paused.discard(tp)
        # Waiting records of those partitions are re-read by their new owner.
        self._heap = [entry for entry in self._heap if (entry[2], entry[3]) not in gone]
        heapq.heapify(self._heap)

    # ------------------------------------------------------------ the loop

    def run(self, stop: threading.Event) -> None:
        self.consumer.subscribe(self.topics.all_retry, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        last_commit = time.monotonic()
        try:
            while not stop.is_set():
                wait = MAX_WAIT_S
                if self._heap:
                    wait = min(wait, max(0.0, self._heap[0][0] - time.time()))
                try:
                    messages = consume_available(self.consumer, 500, wait)
                except KafkaException as exc:
                    log.warning("retry relay poll failed: %s", exc)
                    messages = []
                self._take(messages)
                self._release(time.time())
                self._redo(time.time())
                self.producer.poll(0)
                self._pause_full()
                if time.monotonic() - last_commit >= COMMIT_INTERVAL_S:
                    self._commit(asynchronous=True)
                    last_commit = time.monotonic()
        finally:
            self.producer.flush(10)
            self._commit(asynchronous=False)
            self.consumer.close()
            log.info("retry relay %s stopped after re-queueing %d attempts", self.id, self.requeued)

    def _take(self, messages) -> None:
        for m in messages:
            if m.error() is not None:
                if m.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("retry relay consume error: %s", m.error())
                continue
            tp = (m.topic(), m.partition())
            offsets = self._offsets.get(tp)
            if offsets is None:
                continue
            offsets.add(m.offset())
            try:
                record = self.wire.decode_as(m.value(), TaskRetryScheduled)
            except DecodeError as exc:
                log.warning("poison message at %s[%d]@%d -> dlq: %s", m.topic(), m.partition(), m.offset(), exc)
                self._to_dlq(DeadLetter(m, str(exc)), offsets)
                continue
            offsets.held += 1
            due = record.not_before.timestamp()
            heapq.heappush(self._heap, (due, next(self._seq), m.topic(), m.partition(), m.offset(), record))

    def _release(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            _, _, topic, partition, offset, record = heapq.heappop(self._heap)
            offsets = self._offsets.get((topic, partition))
            if offsets is None:
                continue
            offsets.held -= 1
            queued = domain.requeued(record, datetime.now(UTC), self.id)

            def done(err, msg, topic=topic, partition=partition, offsets=offsets, offset=offset, record=record):
                if err is None:
                    offsets.mark_done(offset)
                elif is_permanent(err):  # never going to fit: the processor's own timer re-queues the attempt
                    log.error("retry relay: re-queue of %s refused by the broker, left to the processor's timer: %s",
                              record.task_id, err, extra=about(record.task_id, record.attempt + 1))
                    offsets.mark_done(offset)
                else:
                    log.warning("retry relay: re-queue of %s not acknowledged, again in %ss: %s", record.task_id,
                                REDO_S, err, extra=about(record.task_id, record.attempt + 1))
                    self._hold_again(topic, partition, offset, record, offsets)

            try:
                self._produce(self.topics.events, record.task_id.encode(), self.wire.encode(queued),
                              codec.headers(queued), done)
            except KafkaException as exc:
                log.warning("retry relay: re-queue of %s failed, again in %ss: %s", record.task_id, REDO_S, exc,
                            extra=about(record.task_id, record.attempt + 1))
                self._hold_again(topic, partition, offset, record, offsets)
                continue
            self.requeued += 1

    def _hold_again(self, topic: str, partition: int, offset: int, record, offsets: PartitionOffsets) -> None:
        if self._offsets.get((topic, partition)) is not offsets:
            return  # revoked meanwhile: the new owner reads it again
        offsets.held += 1
        heapq.heappush(self._heap, (time.time() + REDO_S, next(self._seq), topic, partition, offset, record))

    def _to_dlq(self, letter: DeadLetter, offsets: PartitionOffsets) -> None:
        def done(err, _msg=None):
            outcome = letter.settle(err)
            if outcome == DeadLetter.RESEND:
                log.error("retry relay: dead letter of %s refused, sent again without its value: %s", letter, err)
                self._to_dlq(letter, offsets)
            elif outcome == DeadLetter.LATER:
                log.warning("retry relay: dead letter of %s failed, again in %ss: %s", letter, REDO_S, err)
                self._redo_dlq.append((time.time() + REDO_S, letter, offsets))
            else:
                if outcome == DeadLetter.GIVEN_UP:
                    log.error("retry relay: dead letter of %s refused even without its value; left in its topic: %s",
                              letter, err)
                offsets.mark_done(letter.offset)

        try:
            self._produce(self.topics.dlq, *letter.record(), done)
        except KafkaException as exc:
            done(exc)

    def _redo(self, now: float) -> None:
        due = [entry for entry in self._redo_dlq if entry[0] <= now]
        if not due:
            return
        self._redo_dlq = [entry for entry in self._redo_dlq if entry[0] > now]
        for _, letter, offsets in due:
            if self._offsets.get((letter.topic, letter.partition)) is offsets:
                self._to_dlq(letter, offsets)

    def _produce(self, topic, key, value, headers, on_delivery) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery)
                return
            except BufferError:
                self.producer.poll(0.05)

    def _pause_full(self) -> None:
        for tp, offsets in self._offsets.items():
            if offsets.held > MAX_HELD and tp not in self._paused:
                self.consumer.pause([TopicPartition(*tp)])
                self._paused.add(tp)
            elif offsets.held <= MAX_HELD // 2 and tp in self._paused:
                self.consumer.resume([TopicPartition(*tp)])
                self._paused.discard(tp)

    def _commit(self, asynchronous: bool) -> None:
        offsets = []
        for (topic, partition), o in self._offsets.items():
            if o.position is not None and o.position != o.committed:
                offsets.append(TopicPartition(topic, partition, o.position))
                o.committed = o.position
        if offsets:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=asynchronous)
            except KafkaException as exc:
                log.warning("retry relay commit failed (records are re-read, duplicates are fenced): %s", exc)
