"""The executor's intake: what it holds of the ready topics, between the consumer and the dispatcher.

The consumer part (``_consumer.ReadyConsumer``, one thread) feeds the intake
through its hooks (``on_assigned``, ``on_batch``, ``on_revoked``,
``on_lost``) and asks it which partitions to pause and which offsets to
commit; the dispatcher takes ``Delivery`` values out of it by priority; the
attempt runner ``release()``\\s a delivery when its handler returns and
``settle()``\\s it once its outcome is acknowledged, which is what lets its
offset be committed. Decoded messages wait in one bounded buffer per
priority (a full buffer asks for its topic's partitions to be paused); a
``TaskCancelled`` drops its task's buffered deliveries and marks running
ones. An offset is committable only up to the highest contiguous message
whose outcome is safe (``PartitionOffsets``). Every method is thread-safe
(one lock, held only for bookkeeping, never around a callback).
"""


from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from taskstream.schemas import DecodeError, ReadyTask, TaskCancelled, Topics, codec
from taskstream.schemas.observability import about
from taskstream.schemas.offsets import PartitionOffsets, forget_failed_commits
from taskstream.schemas.topics import PRIORITIES

log = logging.getLogger("taskstream.executors.runtime")

#: After partitions are assigned, grants wait this long so the first fetches of
#: every priority land in the buffers; otherwise whichever topic's fetch answers
#: first would take the free slots of a freshly started executor with a backlog.
ASSIGN_SETTLE_S = 0.25
#: How many cancelled task ids the executor remembers to skip their redelivered ReadyTasks.
RECENTLY_CANCELLED = 10_000

Partition = tuple[str, int]


@dataclass(slots=True, eq=False)
class Delivery:
    """A ready message taken in: waiting in a priority buffer, then handed to the attempt runner.

    ``cancelled`` turns true (on the consumer's thread) when a TaskCancelled
    for the task arrives while the delivery is running; ``release()`` and
    ``settle()`` are the runner's two answers to the intake.
    """

    topic: str
    partition: int
    offset: int
    task: ReadyTask
    _offsets: PartitionOffsets
    _intake: Intake
    cancelled: bool = False

    def release(self) -> bool:
        """The handler is done with it (returned, failed or given up): no cancellation reaches it any more.

        Returns whether it was cancelled before that, in which case there is nothing to report."""
        return self._intake._release(self)

    def settle(self) -> None:
        """Its outcome is safe (reported and acknowledged, or nothing to report): its offset may be committed."""
        self._intake._settle(self._offsets, self.offset)


class Intake:
    """Priority buffers, offsets and cancellations of one executor run.

    ``notify()`` is called (from the consumer's thread, no lock held) when
    new work is buffered; ``cancel_running(delivery)`` when a TaskCancelled
    marks a delivery that is running. ``assigned`` is set at the first
    assignment. Deliveries of a partition that is revoked or lost are
    dropped from the buffers and their offsets forgotten (not committed).
    """

    def __init__(
        self,
        topics: Topics,
        wire: codec.WireFormat,
        buffer_size: int,
        notify: Callable[[], None],
        cancel_running: Callable[[Delivery], None],
        assigned: threading.Event,
    ) -> None:
        self.buffer_size = buffer_size
        self._wire = wire
        self._notify = notify
        self._cancel_running = cancel_running
        self._assigned_event = assigned
        self._topic_level = {topics.ready(p): i for i, p in enumerate(PRIORITIES)}
        self._lock = threading.Lock()
        self._buffers: list[deque[Delivery]] = [deque() for _ in PRIORITIES]
        self._level_paused = [False] * len(PRIORITIES)
        self._offsets: dict[Partition, PartitionOffsets] = {}
        self._draining = False
        self._hold_until = 0.0  # time.monotonic() before which the dispatcher grants no slot
        self._active: dict[str, list[Delivery]] = {}  # taken out of the buffers, handler not returned, by task id
        self._recently_cancelled: OrderedDict[str, None] = OrderedDict()

    # ------------------------------------------------- hooks of the consumer part

    def on_assigned(self, partitions: Iterable[Partition]) -> None:
        with self._lock:
            for key in partitions:
                self._offsets[key] = PartitionOffsets()
            self._hold_until = time.monotonic() + ASSIGN_SETTLE_S
        self._assigned_event.set()

    def on_revoked(self, partitions: Iterable[Partition]) -> None:
        """Call after committing what ``positions(partitions)`` gave: forget them and drop their deliveries."""
        self._forget(set(partitions))

    def on_lost(self, partitions: Iterable[Partition]) -> None:
        """They are someone else's already: forget them and drop their deliveries, committing nothing."""
        self._forget(set(partitions))

    def on_batch(self, messages: Sequence) -> list[tuple[object, str, Callable[[], None]]]:
        """Take polled messages (errors already filtered out) into the buffers.

        Returns the poison ones as (message, reason, done): the caller dead-letters each and calls
        ``done()`` once the dead letter is settled, which lets its offset be committed.
        """
        woke = False
        poison = []
        to_cancel: list[Delivery] = []
        with self._lock:
            for msg in messages:
                tp = (msg.topic(), msg.partition())
                offsets = self._offsets.get(tp)
                if offsets is None or self._draining:
                    continue  # not (or no longer) ours, or stopping: not tracked, not committed
                offsets.add(msg.offset())
                try:
                    task = self._wire.decode_as(msg.value(), ReadyTask, TaskCancelled)
                except DecodeError as exc:
                    poison.append((msg, str(exc), _done(self._lock, offsets, msg.offset())))
                    continue
                if isinstance(task, TaskCancelled):
                    offsets.mark_done(msg.offset())
                    to_cancel += self._cancel_locked(task)
                    continue
                if task.task_id in self._recently_cancelled:
                    offsets.mark_done(msg.offset())
                    log.info("task %s attempt %d: was cancelled; ready message skipped", task.task_id, task.attempt,
                             extra=about(task.task_id, task.attempt))
                    continue
                level = self._topic_level.get(msg.topic(), len(PRIORITIES) - 1)
                self._buffers[level].append(Delivery(msg.topic(), msg.partition(), msg.offset(), task, offsets, self))
                woke = True
        for delivery in to_cancel:
            self._cancel_running(delivery)
        if woke:
            self._notify()
        return poison

    def paused_wanted(self, assigned: Iterable[Partition]) -> set[Partition]:
        """Which of the ``assigned`` partitions should be paused now: those of a full buffer's topic, or all when
        draining. A buffer that filled up stays paused until it has drained to half."""
        with self._lock:
            for level, buf in enumerate(self._buffers):
                if len(buf) >= self.buffer_size:
                    self._level_paused[level] = True
                elif len(buf) <= self.buffer_size // 2:
                    self._level_paused[level] = False
            full = {t for t, lvl in self._topic_level.items() if self._level_paused[lvl]}
            return {tp for tp in assigned if self._draining or tp[0] in full}

    def positions(self, only: Iterable[Partition] | None = None) -> list[tuple[Partition, int]]:
        """(partition, offset to commit) of every tracked partition (of ``only``) that moved since its last commit."""
        with self._lock:
            keys = list(self._offsets) if only is None else [k for k in only if k in self._offsets]
            return [(k, o.position) for k in keys
                    if (o := self._offsets[k]).position is not None and o.position != o.committed]

    def on_committed(self, positions: Iterable[tuple[Partition, int]]) -> None:
        """The commit of ``positions`` was sent (a refusal comes back through ``on_commit_refused``)."""
        with self._lock:
            for key, pos in positions:
                if key in self._offsets:
                    self._offsets[key].committed = pos

    def on_commit_refused(self, err, partitions) -> list[Partition]:
        """The broker's commit report (``on_commit``): refused partitions are committed again next time."""
        with self._lock:
            return forget_failed_commits(err, partitions, self._offsets)

    # ------------------------------------------------------ the dispatcher's side

    def hold_s(self) -> float:
        """Seconds the dispatcher should still wait before granting slots (a fresh assignment settles)."""
        with self._lock:
            return self._hold_until - time.monotonic()

    def take(self, choose: Callable[[list[bool]], int | None]) -> Delivery | None:
        """The next delivery to run: ``choose`` gets which priority levels have a backlog and names one."""
        with self._lock:
            level = choose([bool(b) for b in self._buffers])
            if level is None:
                return None
            delivery = self._buffers[level].popleft()
            self._active.setdefault(delivery.task.task_id, []).append(delivery)
            return delivery

    def drain(self) -> None:
        """Stop taking messages in (every partition is paused, nothing new is tracked) and empty the buffers."""
        with self._lock:
            self._draining = True
            for buf in self._buffers:
                buf.clear()

    # ------------------------------------------------------------ observation

    def buffered(self) -> list[ReadyTask]:
        """The tasks waiting in the buffers, highest priority first."""
        with self._lock:
            return [d.task for buf in self._buffers for d in buf]

    def was_cancelled(self, task_id: str) -> bool:
        """Whether a TaskCancelled for ``task_id`` was seen recently (its ready messages are skipped)."""
        with self._lock:
            return task_id in self._recently_cancelled

    # ---------------------------------------------------------------- private

    def _release(self, delivery: Delivery) -> bool:
        with self._lock:
            active = self._active.get(delivery.task.task_id)
            if active is not None and delivery in active:
                active.remove(delivery)
                if not active:
                    del self._active[delivery.task.task_id]
            return delivery.cancelled

    def _settle(self, offsets: PartitionOffsets, offset: int) -> None:
        with self._lock:
            offsets.mark_done(offset)

    def _cancel_locked(self, cancel: TaskCancelled) -> list[Delivery]:
        """Apply a TaskCancelled (lock held): drop buffered deliveries, return running ones to cancel."""
        task_id = cancel.task_id
        self._recently_cancelled[task_id] = None
        self._recently_cancelled.move_to_end(task_id)
        while len(self._recently_cancelled) > RECENTLY_CANCELLED:
            self._recently_cancelled.popitem(last=False)
        known = False
        for level, buf in enumerate(self._buffers):
            dropped = [d for d in buf if d.task.task_id == task_id]
            if not dropped:
                continue
            known = True
            self._buffers[level] = deque(d for d in buf if d.task.task_id != task_id)
            for d in dropped:
                d._offsets.mark_done(d.offset)
                log.info("task %s attempt %d: cancelled before it started (%s); skipped",
                         task_id, d.task.attempt, cancel.reason or "no reason given",
                         extra=about(task_id, d.task.attempt))
        running = [d for d in self._active.get(task_id, ()) if not d.cancelled]
        for d in running:
            d.cancelled = True
            known = True
        if not known:
            log.debug("task %s: cancellation for a task this executor does not hold; ignored", task_id,
                      extra=about(task_id))
        return running

    def _forget(self, keys: set[Partition]) -> None:
        with self._lock:
            for key in keys:
                self._offsets.pop(key, None)
            for level, buf in enumerate(self._buffers):
                kept = [d for d in buf if (d.topic, d.partition) not in keys]
                if len(kept) != len(buf):
                    self._buffers[level] = deque(kept)


def _done(lock: threading.Lock, offsets: PartitionOffsets, offset: int) -> Callable[[], None]:
    def done() -> None:
        with lock:
            offsets.mark_done(offset)
    return done
