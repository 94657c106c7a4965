"""The executor's poll thread: takes ready messages into the priority buffers, commits, pauses, dead-letters.

One confluent-kafka consumer (cooperative-sticky) over the three ready topics,
polled from ONE thread that also does every commit, pause and resume, so
group membership never depends on how long a handler runs. Messages go into
one bounded buffer per priority (a full buffer pauses its topic's
partitions); a ``TaskCancelled`` marks the task's buffered or running items;
a message that does not decode goes to ``<p>.dlq`` (``poison_headers``).
An offset is committed only up to the highest contiguous message whose
outcome is safe (``PartitionOffsets``). Everything here runs on the poll
thread, under ``Executor._lock`` where it touches what the loop shares.
"""


from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from taskstream.schemas import (
    BrokerUnavailable,
    DecodeError,
    ReadyTask,
    TaskCancelled,
)
from taskstream.schemas.kafka import consume_available
from taskstream.schemas.kafka import consumer as kafka_consumer
from taskstream.schemas.offsets import DeadLetter, PartitionOffsets, forget_failed_commits
from taskstream.schemas.observability import about
from taskstream.schemas.topics import PRIORITIES



from ._attempt import _about

if TYPE_CHECKING:
    from ._attempt import _Attempt

log = logging.getLogger("taskstream.executors.runtime")


#: How often the poll thread commits finished offsets.
COMMIT_INTERVAL_S = 0.2
#: A dead letter the broker did not take (it is away) is sent again this much later.
DLQ_RETRY_S = 1.0
#: Longest single poll; bounds how fast the poll thread reacts to pause/resume/stop.
POLL_TIMEOUT_S = 0.05
#: Messages taken per poll call.
POLL_BATCH = 500
#: After partitions are assigned, grants wait this long so the first fetches of
#: every priority land in the buffers; otherwise whichever topic's fetch answers
#: first would take the free slots of a freshly started executor with a backlog.
ASSIGN_SETTLE_S = 0.25
#: How many cancelled task ids the executor remembers to skip their redelivered ReadyTasks.
RECENTLY_CANCELLED = 10_000



@dataclass(slots=True, eq=False)
class _Item:
    """A decoded ready message waiting in a priority buffer or running.

    ``cancelled`` is set by the poll thread under the executor's lock when a
    TaskCancelled for the task arrives while the item is active; ``attempt``
    is set on the loop when it starts.
    """

    topic: str
    partition: int
    offset: int
    task: ReadyTask
    offsets: PartitionOffsets
    cancelled: bool = False
    attempt: _Attempt | None = None



class Intake:
    """The poll-thread half of ``Executor`` (a mixin: the state lives on the executor)."""

    # -------------------------------------------------------------- poll thread

    def _poll_thread(self) -> None:
        try:
            consumer = kafka_consumer(self.settings, self.executor_id, self.topics.executor_group,
                                      {"on_commit": self._on_commit, **self.consumer_overrides})
        except BrokerUnavailable as exc:
            self._thread_error = exc
            log.error("executor %s could not create its consumer: %s", self.executor_id, exc)
            self._wakeup_threadsafe()
            return
        try:
            consumer.subscribe(
                self.topics.all_ready,
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            last_commit = time.monotonic()
            while not self._closing.is_set():
                try:
                    messages = consume_available(consumer, POLL_BATCH, POLL_TIMEOUT_S)
                except KafkaException as exc:
                    log.warning("executor %s poll failed: %s", self.executor_id, exc)
                    messages = []
                if messages:
                    self._take(consumer, messages)
                self._apply_pauses(consumer)
                if time.monotonic() - last_commit >= COMMIT_INTERVAL_S:
                    self._commit(consumer, asynchronous=True)
                    last_commit = time.monotonic()
            self._commit(consumer, asynchronous=False)
        except BaseException as exc:  # keep the reason; the loop logs and stops
            self._thread_error = exc
            log.exception("executor %s poll thread failed", self.executor_id)
            self._wakeup_threadsafe()  # the dispatcher sees the error and stops the executor
        finally:
            try:
                consumer.close()
            except KafkaException as exc:
                log.warning("executor %s consumer close: %s", self.executor_id, exc)
            log.info("executor %s left the group", self.executor_id)

    def _take(self, consumer: Consumer, messages: list) -> None:
        woke = False
        dlq = []
        to_cancel: list[_Item] = []
        with self._lock:
            for msg in messages:
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.warning("executor %s consumer error: %s", self.executor_id, err)
                    continue
                tp = (msg.topic(), msg.partition())
                offsets = self._offsets.get(tp)
                if offsets is None or self._draining:
                    continue  # not (or no longer) ours, or stopping: not tracked, not committed
                offsets.add(msg.offset())
                try:
                    task = self.wire.decode_as(msg.value(), ReadyTask, TaskCancelled)
                except DecodeError as exc:
                    dlq.append((msg, offsets, str(exc)))
                    continue
                if isinstance(task, TaskCancelled):
                    offsets.mark_done(msg.offset())
                    to_cancel += self._cancel_locked(task)
                    continue
                if task.task_id in self._recently_cancelled:
                    offsets.mark_done(msg.offset())
                    log.info("task %s attempt %d: was cancelled; ready message skipped", task.task_id, task.attempt,
                             extra=_about(task))
                    continue
                level = self._topic_level.get(msg.topic(), len(PRIORITIES) - 1)
                self._buffers[level].append(_Item(msg.topic(), msg.partition(), msg.offset(), task, offsets))
                woke = True
        for msg, offsets, reason in dlq:
            self._dead_letter(msg, offsets, reason)
        for item in to_cancel:
            try:
                self._loop.call_soon_threadsafe(self._cancel_running, item)
            except RuntimeError:  # loop closed during shutdown
                pass
        if woke:
            self._wakeup_threadsafe()

    def _cancel_locked(self, cancel: TaskCancelled) -> list[_Item]:
        """Apply a TaskCancelled (lock held): drop buffered attempts, return running ones to cancel."""
        task_id = cancel.task_id
        self._recently_cancelled[task_id] = None
        self._recently_cancelled.move_to_end(task_id)
        while len(self._recently_cancelled) > RECENTLY_CANCELLED:
            self._recently_cancelled.popitem(last=False)
        known = False
        for level, buf in enumerate(self._buffers):
            dropped = [item for item in buf if item.task.task_id == task_id]
            if not dropped:
                continue
            known = True
            self._buffers[level] = deque(item for item in buf if item.task.task_id != task_id)
            for item in dropped:
                item.offsets.mark_done(item.offset)
                log.info("task %s attempt %d: cancelled before it started (%s); skipped",
                         task_id, item.task.attempt, cancel.reason or "no reason given",
                         extra=about(task_id, item.task.attempt))
        running = [item for item in self._active.get(task_id, ()) if not item.cancelled]
        for item in running:
            item.cancelled = True
            known = True
        if not known:
            log.debug("task %s: cancellation for a task this executor does not hold; ignored", task_id,
                      extra=about(task_id))
        return running

    def _dead_letter(self, msg, offsets: PartitionOffsets, reason: str) -> None:
        letter = DeadLetter(msg, reason)
        log.warning("poison message %s goes to the dlq: %s", letter, reason)

        def delivered(err, _msg=None) -> None:
            outcome = letter.settle(err)
            if outcome == DeadLetter.RESEND:
                log.error("dlq produce of %s refused, sent again without its value: %s", letter, err)
                send()
            elif outcome == DeadLetter.LATER:
                # The broker is away: the offset stays pending (uncommitted) and the dead letter is tried again.
                log.warning("dlq produce of %s failed, again in %ss: %s", letter, DLQ_RETRY_S, err)
                again = threading.Timer(DLQ_RETRY_S, send)
                again.daemon = True
                again.start()
            else:
                if outcome == DeadLetter.GIVEN_UP:
                    log.error("dlq produce of %s refused even without its value; left in its topic: %s", letter, err)
                with self._lock:
                    offsets.mark_done(letter.offset)

        def send() -> None:
            key, value, headers = letter.record()
            try:
                self._producer.produce(self.topics.dlq, key, value, headers=headers, on_delivery=delivered)
            except BrokerUnavailable as exc:
                cause = exc.__cause__
                delivered(cause.args[0] if isinstance(cause, KafkaException) else KafkaError(KafkaError._TRANSPORT))

        send()

    def _apply_pauses(self, consumer: Consumer) -> None:
        with self._lock:
            for level, buf in enumerate(self._buffers):
                if len(buf) >= self.buffer_size:
                    self._level_paused[level] = True
                elif len(buf) <= self.buffer_size // 2:
                    self._level_paused[level] = False
            paused_topics = {t for t, lvl in self._topic_level.items() if self._level_paused[lvl]}
            want = {tp for tp in self._assigned if self._draining or tp[0] in paused_topics}
            to_pause = want - self._paused
            to_resume = (self._paused - want) & self._assigned
            self._paused &= self._assigned
        try:
            if to_pause:
                consumer.pause([TopicPartition(t, p) for t, p in to_pause])
                self._paused |= to_pause
                log.debug("executor %s paused %s", self.executor_id, sorted(to_pause))
            if to_resume:
                consumer.resume([TopicPartition(t, p) for t, p in to_resume])
                self._paused -= to_resume
                log.debug("executor %s resumed %s", self.executor_id, sorted(to_resume))
        except KafkaException as exc:
            log.warning("executor %s pause/resume failed: %s", self.executor_id, exc)

    def _commit(self, consumer: Consumer, asynchronous: bool, only: Iterable[tuple[str, int]] | None = None) -> None:
        with self._lock:
            keys = list(self._offsets) if only is None else [k for k in only if k in self._offsets]
            todo = []
            for key in keys:
                offsets = self._offsets[key]
                if offsets.position is not None and offsets.position != offsets.committed:
                    todo.append((key, offsets.position))
        if not todo:
            return
        try:
            consumer.commit(offsets=[TopicPartition(t, p, pos) for (t, p), pos in todo], asynchronous=asynchronous)
        except KafkaException as exc:
            log.warning("executor %s commit failed: %s", self.executor_id, exc)
            return
        with self._lock:
            for key, pos in todo:
                if key in self._offsets:
                    self._offsets[key].committed = pos
        log.debug("executor %s committed %s", self.executor_id, todo)

    def _on_commit(self, err, partitions: list[TopicPartition]) -> None:
        """A commit the broker refused (a rebalance under way) is sent again by the next ``_commit``."""
        with self._lock:
            failed = forget_failed_commits(err, partitions, self._offsets)
        if failed:
            log.info("executor %s commit of %s refused, sent again: %s", self.executor_id,
                     [f"{t}[{p}]" for t, p in failed], err or [tp.error for tp in partitions if tp.error][0])

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self._lock:
            for tp in partitions:
                key = (tp.topic, tp.partition)
                self._assigned.add(key)
                self._offsets[key] = PartitionOffsets()
            self._hold_until = time.monotonic() + ASSIGN_SETTLE_S
        self.assigned_event.set()
        log.info("executor %s assigned %s", self.executor_id, [f"{tp.topic}[{tp.partition}]" for tp in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        self._commit(consumer, asynchronous=False, only=keys)
        self._forget(keys)
        log.info("executor %s revoked %s", self.executor_id, [f"{t}[{p}]" for t, p in sorted(keys)])

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        self._forget(keys)
        log.warning("executor %s lost %s", self.executor_id, [f"{t}[{p}]" for t, p in sorted(keys)])

    def _forget(self, keys: set[tuple[str, int]]) -> None:
        with self._lock:
            for key in keys:
                self._assigned.discard(key)
                self._offsets.pop(key, None)
                self._paused.discard(key)
            for level, buf in enumerate(self._buffers):
                kept = [item for item in buf if (item.topic, item.partition) not in keys]
                if len(kept) != len(buf):
                    self._buffers[level] = deque(kept)

    # ---------------------------------------------------------------- the loop

    def _wakeup_threadsafe(self) -> None:
        if not self._wake_pending:
            self._wake_pending = True
            try:
                self._loop.call_soon_threadsafe(self._wakeup)
            except RuntimeError:  # loop closed during shutdown
                pass

    def _wakeup(self) -> None:
        self._wake_pending = False
        self._wake.set()

