"""The executor's intake: what it holds of the ready topics, between the consumer and the dispatcher.

The intake is the hooks (``schemas.consumer.Hooks``) of a member
``ConsumerRuntime`` of the ``<p>-executors`` group (one thread, which owns
the consumer: assignment, polling, commits, dead letters): ``on_assigned``,
``on_batch``, ``on_revoked``, ``on_lost``, and ``on_idle``, which pauses the
partitions of a full buffer and resumes them once it drained. The
dispatcher takes ``Delivery`` values out of it by priority; the attempt
runner ``release()``\\s a delivery when its handler returns and
``settle()``\\s it once its outcome is acknowledged, which marks its offset
done with the runtime (``done_on_return=False``): the runtime commits a
partition only up to the highest contiguous offset whose outcome is safe. A
poison message goes to the runtime's ``dead_letter``. Decoded messages wait
in one bounded buffer per priority; a ``TaskCancelled`` drops its task's
buffered deliveries and marks running ones. Every method is thread-safe:
one reentrant lock, shared with the runtime (it guards the runtime's
offsets too), held only for bookkeeping, never around a callback.
"""


from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from taskstream.schemas import BrokerUnavailable, DecodeError, ReadyTask, TaskCancelled, Topics, codec
from taskstream.schemas.consumer import ConsumerRuntime, Hooks, Partition
from taskstream.schemas.observability import about
from taskstream.schemas.offsets import PartitionOffsets
from taskstream.schemas.topics import PRIORITIES
from taskstream.schemas.tracing import TraceContext, max_attempts_of

log = logging.getLogger("taskstream.executors.runtime")

#: After partitions are assigned, grants wait until every new partition has answered its first fetch (a record,
#: or its end), at most this long, so the first fetches of every priority land in the buffers; otherwise whichever
#: topic's fetch answers first would take the free slots of a freshly started executor with a backlog.
ASSIGN_SETTLE_S = 2.0
#: How many cancelled task ids the executor remembers to skip their redelivered ReadyTasks.
RECENTLY_CANCELLED = 10_000


@dataclass(slots=True, eq=False)
class Delivery:
    """A ready message taken in: waiting in a priority buffer, then handed to the attempt runner.

    ``cancelled`` turns true (on the consumer's thread) when a TaskCancelled
    for the task arrives while the delivery is running; ``release()`` and
    ``settle()`` are the runner's two answers to the intake. ``trace`` and ``max_attempts``: the trace context
    and attempt budget its headers carry, read only when the executor traces (None otherwise).
    """

    topic: str
    partition: int
    offset: int
    task: ReadyTask
    _offsets: PartitionOffsets
    _intake: Intake
    cancelled: bool = False
    trace: TraceContext | None = None
    max_attempts: int | None = None

    def release(self) -> bool:
        """The handler is done with it (returned, failed or given up): no cancellation reaches it any more.

        Returns whether it was cancelled before that, in which case there is nothing to report."""
        return self._intake._release(self)

    def settle(self) -> None:
        """Its outcome is safe (reported and acknowledged, or nothing to report): its offset may be committed."""
        self._intake._done(self.topic, self.partition, self.offset, self._offsets)


class Intake(Hooks):
    """Priority buffers and cancellations of one executor run; the hooks of its ``ConsumerRuntime``.

    ``notify()`` is called (from the consumer's thread, no lock held) when
    new work is buffered; ``cancel_running(delivery)`` when a TaskCancelled
    marks a delivery that is running. ``assigned`` is set at the first
    assignment. Deliveries of a partition that is revoked or lost are
    dropped from the buffers; the runtime commits a revoked partition up to
    what was settled and forgets a lost one. ``lock`` is the lock to hand to
    the runtime (``ConsumerRuntime(lock=intake.lock)``). ``traced``: read each ready message's trace
    headers into its ``Delivery`` (only an executor that traces needs them).
    """

    def __init__(
        self,
        topics: Topics,
        wire: codec.WireFormat,
        buffer_size: int,
        notify: Callable[[], None],
        cancel_running: Callable[[Delivery], None],
        assigned: threading.Event,
        traced: bool = False,
    ) -> None:
        self.buffer_size = buffer_size
        self._traced = traced
        self._wire = wire
        self._notify = notify
        self._cancel_running = cancel_running
        self._assigned_event = assigned
        self._topic_level = {topics.ready(p): i for i, p in enumerate(PRIORITIES)}
        self.lock = threading.RLock()
        self._runtime: ConsumerRuntime | None = None  # set by the first hook, before any delivery exists
        self._buffers: list[deque[Delivery]] = [deque() for _ in PRIORITIES]
        self._level_paused = [False] * len(PRIORITIES)
        self._draining = False
        self._hold_until = 0.0  # time.monotonic() before which the dispatcher grants no slot
        self._unheard: set[Partition] = set()  # assigned partitions that have not answered a first fetch yet
        self._active: dict[str, list[Delivery]] = {}  # taken out of the buffers, handler not returned, by task id
        self._recently_cancelled: OrderedDict[str, None] = OrderedDict()

    # ------------------------------------------------- hooks of the consumer runtime

    def on_assigned(self, runtime: ConsumerRuntime, partitions: list[Partition]) -> None:
        with self.lock:
            self._runtime = runtime
            self._hold_until = time.monotonic() + ASSIGN_SETTLE_S
            self._unheard.update(partitions)
        self._assigned_event.set()

    def on_end(self, runtime: ConsumerRuntime, partition: Partition, offset: int) -> None:
        """A partition at its end has answered its first fetch; the last one to answer ends the hold."""
        self._heard([partition])

    def on_revoked(self, runtime: ConsumerRuntime, partitions: list[Partition]) -> None:
        """Drop their deliveries; the runtime then commits what was settled and forgets them."""
        self._forget(set(partitions))

    def on_lost(self, runtime: ConsumerRuntime, partitions: list[Partition]) -> None:
        """They are someone else's already: drop their deliveries (the runtime commits nothing of them)."""
        self._forget(set(partitions))

    def on_batch(self, runtime: ConsumerRuntime, records: list) -> None:
        """Take polled messages of assigned partitions into the buffers; a poison one is dead-lettered (its
        offset is done once the letter is settled); one taken while draining is left undone (read again)."""
        woke = False
        poison = []
        to_cancel: list[Delivery] = []
        with self.lock:
            self._runtime = runtime
            for msg in records:
                tp = (msg.topic(), msg.partition())
                offsets = runtime.offsets(tp)
                if offsets is None or self._draining:
                    continue  # no longer ours, or stopping: not done, not committed
                try:
                    task = self._wire.decode_as(msg.value(), ReadyTask, TaskCancelled)
                except DecodeError as exc:
                    poison.append((msg, str(exc)))
                    continue
                if isinstance(task, TaskCancelled):
                    runtime.done(tp, msg.offset(), offsets)
                    to_cancel += self._cancel_locked(task)
                    continue
                if task.task_id in self._recently_cancelled:
                    runtime.done(tp, msg.offset(), offsets)
                    log.info("task %s attempt %d: was cancelled; ready message skipped", task.task_id, task.attempt,
                             extra=about(task.task_id, task.attempt))
                    continue
                level = self._topic_level.get(msg.topic(), len(PRIORITIES) - 1)
                delivery = Delivery(msg.topic(), msg.partition(), msg.offset(), task, offsets, self)
                if self._traced:
                    headers = msg.headers()
                    delivery.trace, delivery.max_attempts = TraceContext.from_headers(headers), max_attempts_of(headers)
                self._buffers[level].append(delivery)
                woke = True
        self._heard((m.topic(), m.partition()) for m in records)
        for msg, reason in poison:
            runtime.dead_letter(msg, reason)
        for delivery in to_cancel:
            self._cancel_running(delivery)
        if woke:
            self._notify()

    def on_idle(self, runtime: ConsumerRuntime) -> None:
        """Pause the partitions ``paused_wanted`` names, resume the others (the runtime resumes a paused one
        before it leaves the assignment, so one that comes back is not left paused)."""
        want = self.paused_wanted(runtime.assignment())
        try:
            runtime.pause(want - runtime.paused)
            runtime.resume(runtime.paused - want)
        except BrokerUnavailable as exc:
            log.warning("executor intake: pause/resume failed: %s", exc)

    def paused_wanted(self, assigned: Iterable[Partition]) -> set[Partition]:
        """Which of the ``assigned`` partitions should be paused now: those of a full buffer's topic, or all when
        draining. A buffer that filled up stays paused until it has drained to half."""
        with self.lock:
            for level, buf in enumerate(self._buffers):
                if len(buf) >= self.buffer_size:
                    self._level_paused[level] = True
                elif len(buf) <= self.buffer_size // 2:
                    self._level_paused[level] = False
            full = {t for t, lvl in self._topic_level.items() if self._level_paused[lvl]}
            return {tp for tp in assigned if self._draining or tp[0] in full}

    # ------------------------------------------------------ the dispatcher's side

    def hold_s(self) -> float:
        """Seconds the dispatcher should still wait before granting slots: until every partition of a fresh
        assignment answered its first fetch, at most ``ASSIGN_SETTLE_S`` (0 once they all have)."""
        with self.lock:
            return self._hold_until - time.monotonic() if self._unheard else 0.0

    def _heard(self, partitions: Iterable[Partition]) -> None:
        with self.lock:
            if not self._unheard:
                return
            self._unheard.difference_update(partitions)
            settled = not self._unheard
        if settled:
            self._notify()

    def take(self, choose: Callable[[list[bool]], int | None]) -> Delivery | None:
        """The next delivery to run: ``choose`` gets which priority levels have a backlog and names one."""
        with self.lock:
            level = choose([bool(b) for b in self._buffers])
            if level is None:
                return None
            delivery = self._buffers[level].popleft()
            self._active.setdefault(delivery.task.task_id, []).append(delivery)
            return delivery

    def drain(self) -> None:
        """Stop taking messages in (every partition is paused, nothing new is tracked) and empty the buffers."""
        with self.lock:
            self._draining = True
            for buf in self._buffers:
                buf.clear()

    # ------------------------------------------------------------ observation

    def buffered(self) -> list[ReadyTask]:
        """The tasks waiting in the buffers, highest priority first."""
        with self.lock:
            return [d.task for buf in self._buffers for d in buf]

    def was_cancelled(self, task_id: str) -> bool:
        """Whether a TaskCancelled for ``task_id`` was seen recently (its ready messages are skipped)."""
        with self.lock:
            return task_id in self._recently_cancelled

    # ---------------------------------------------------------------- private

    def _release(self, delivery: Delivery) -> bool:
        with self.lock:
            active = self._active.get(delivery.task.task_id)
            if active is not None and delivery in active:
                active.remove(delivery)
                if not active:
                    del self._active[delivery.task.task_id]
            return delivery.cancelled

    def _done(self, topic: str, partition: int, offset: int, offsets: PartitionOffsets) -> None:
        """Mark ``offset`` done with the runtime (dropped if the partition left and came back since)."""
        with self.lock:
            if self._runtime is not None:
                self._runtime.done((topic, partition), offset, offsets)

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
                self._done(d.topic, d.partition, d.offset, d._offsets)
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
        with self.lock:
            self._unheard.difference_update(keys)
            for level, buf in enumerate(self._buffers):
                kept = [d for d in buf if (d.topic, d.partition) not in keys]
                if len(kept) != len(buf):
                    self._buffers[level] = deque(kept)
