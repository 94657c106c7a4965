"""The executor: takes ReadyTask messages off the ready topics, runs handlers, reports results.

Place in the flow (DESIGN §7): the processor publishes an attempt to
``<p>.ready.<priority>``; an executor of the ``<p>-executors`` group consumes
it, runs the named handler and appends the outcome to ``<p>.events`` keyed
by task id, where the processor folds it.

Threads and loops
    One confluent-kafka consumer (cooperative-sticky) is polled from ONE
    dedicated thread, which also does every commit, pause and resume. It keeps
    polling while handlers run for a long time, so group membership and
    ``max.poll.interval.ms`` never depend on handler duration (a handler
    running twice ``max.poll.interval.ms`` keeps its partitions, tested). Handlers run on
    the asyncio loop (``async def``) or in a thread pool (``def``); at most
    ``concurrency`` attempts run at once.

Priority
    The poll thread puts decoded messages into one bounded local buffer per
    priority; when a buffer holds ``buffer_size`` messages the partitions of
    that priority's topic are paused, and resumed when it has drained to half.
    A dispatcher on the loop grants each free slot with a smooth weighted
    round-robin over the buffers that have a backlog
    (``settings.priority_weights``, default high:medium:low = 6:3:1): with
    all three levels waiting, every 10 grants go 6 to high, 3 to medium, 1 to
    low, so high runs first and most but low is never starved; a level with
    no backlog leaves its share to the others. After an assignment, grants
    wait ``ASSIGN_SETTLE_S`` so a backlog of every level is seen before the
    first slots are given out.

Events (DESIGN §10: few events per task on the processor's hot path)
    A short attempt reports ONE event, ``TaskSucceeded`` or ``TaskFailed``,
    carrying ``started_at``. An attempt still running after
    ``settings.started_event_after_s`` also reports ``TaskStarted`` once,
    before its result (same key, same partition, produced first, so it is
    ordered before it); its ``occurred_at`` is the attempt's start time, the
    same instant as the result's ``started_at``. ``TaskFailed.permanent`` is true for
    ``PermanentError``, an unknown handler name and a payload that is not
    JSON. Timeouts (``ReadyTask.timeout_s``, or ``settings.default_timeout_s``
    when the task sets none; None there means no limit) cancel an async
    handler and abandon a sync one (its thread runs on, its late result is
    ignored; the pool has ``2 * concurrency + 4`` threads to leave room for
    such strays) and report a non-permanent ``TaskFailed`` whose error starts
    with ``TimeoutError:``.

Heartbeats and leases (DESIGN §7)
    Once an attempt has reported ``TaskStarted`` the executor sends a
    ``Heartbeat(task_id, attempt, producer, occurred_at)`` to
    ``<p>.heartbeats`` (key = task id) every ``settings.heartbeat_interval_s``
    until the handler returns or the attempt is given up (cancelled, timed
    out, shutdown grace over). A short attempt sends none: its single result
    arrives before any lease could run out. Heartbeats are timers on the
    loop, fire-and-forget (a lost one is logged; the next one follows), and
    do not depend on the handler: a sync handler that blocks its thread for
    an hour is still heartbeated. An executor that is SIGSTOPped sends
    nothing, so the processor expires its lease and its later result is
    stale.

Checkpoints
    ``ctx.checkpoint(data)`` checks the data in the caller (``TypeError`` if
    not JSON, ``ValueError`` above 256 KiB of JSON) and, on the loop, sends
    ``TaskCheckpointed`` to ``<p>.events`` keyed by task id. On the loop's
    thread (async handlers) it returns an awaitable of the broker's ack; on
    any other thread (sync handlers in the pool) it hands the send to the
    loop and blocks until acked. A checkpoint before ``started_event_after_s``
    reports ``TaskStarted`` first, so the log always reads Started,
    Checkpointed..., result. The result is produced only after every
    checkpoint of the attempt was acknowledged (same key, same partition,
    produced earlier: ordered before it); a checkpoint that failed is logged
    and the result still goes. An attempt that is over (returned, cancelled,
    timed out, past the shutdown grace) writes no checkpoint: the call
    raises ``AttemptAbandoned``. ``ctx.last_checkpoint`` is
    ``ReadyTask.last_checkpoint`` decoded (None when absent or not JSON, the
    latter logged).

Offsets (at-least-once)
    Attempts finish out of order; a partition's offset is committed only up
    to the highest contiguous message whose result event the broker
    acknowledged (acks=all). Commits happen from the poll thread every
    ``COMMIT_INTERVAL_S``, on revocation and at shutdown. On revocation the
    buffered, not yet started messages of those partitions are dropped (the
    new owner gets them); attempts already running finish and report, but
    their offsets are no longer ours to commit. A message that does not decode
    goes, raw, to ``<p>.dlq`` with headers ``source-topic``,
    ``source-partition``, ``source-offset`` and ``reason``, and counts as done
    once the dlq acknowledged it (refused for its size: sent again without its
    value; the broker away: sent again ``DLQ_RETRY_S`` later, the offset
    pending meanwhile). A handler exception never stops the executor.

Cancellation
    When a queued or running task is cancelled the processor publishes a
    ``TaskCancelled`` (key = task id) to the same ready topic, so it lands in
    the task's partition after its ReadyTask. Its own offset is done at once.
    An attempt of that task still buffered is dropped (offset done, nothing
    reported). A running one gets ``ctx.cancelled = True`` and, if its
    handler is async, the handler is cancelled; whatever it then returns or
    raises is not reported (the processor has already made the task
    ``cancelled`` and ignores results) and its offset is done once it has
    returned. A sync handler keeps its slot until it returns, so it should
    poll ``ctx.cancelled``. A cancellation for a task this executor does not
    hold (finished, or never seen) is ignored. The last
    ``RECENTLY_CANCELLED`` cancelled task ids are remembered, so a ReadyTask
    of such a task seen again (redelivered after a rebalance, or requeued to
    another priority) is skipped without running.

Shutdown
    When ``stop`` is set: no new grants, every partition paused, buffered
    messages dropped; in-flight attempts get ``settings.shutdown_grace_s`` to
    finish and report. Those still running then are cancelled (their
    ``ctx.cancelled`` turns true), not reported and not committed, so another
    executor runs them again. Last commit, consumer closed (leaves the group),
    producer flushed. ``run_executor`` (the process) then exits even if a
    sync handler ignores ``ctx.cancelled`` and still blocks its thread
    (tested through ``taskstream executor`` and SIGTERM).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from taskstream.schemas import (
    BrokerUnavailable,
    DecodeError,
    Heartbeat,
    ReadyTask,
    RecordRefused,
    Settings,
    TaskCancelled,
    TaskCheckpointed,
    TaskFailed,
    TaskStarted,
    TaskSucceeded,
    Topics,
    codec,
)
from taskstream.schemas.events import Event
from taskstream.schemas.kafka import async_producer, consumer as kafka_consumer
from taskstream.schemas.kafka import (
    AsyncProducer,
    close_member,
    consume_available,
    is_marker,
    is_permanent,
)
from taskstream.schemas.limits import MAX_RESULT_BYTES, cut_error
from taskstream.schemas.offsets import PartitionOffsets, poison_headers
from taskstream.schemas.observability import about, serve_metrics
from taskstream.schemas.topics import PRIORITIES

from ._scheduling import WeightedRoundRobin
from .builtin import builtins
from .context import MAX_CHECKPOINT_BYTES, TaskContext
from .errors import AttemptAbandoned, PermanentError
from .metrics import UNKNOWN_HANDLER, ExecutorMetrics
from .registry import Handler, Registry, default_registry, load_handler_modules

log = logging.getLogger(__name__)

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


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _about(task: ReadyTask) -> dict[str, Any]:
    """``extra=`` of a log line about this attempt: task_id and attempt as fields of the record."""
    return about(task.task_id, task.attempt)


def _error_text(exc: BaseException) -> str:
    """``Type: message``, cut to ``MAX_ERROR_CHARS`` (a handler's exception text is unbounded)."""
    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ fails still fails the attempt
        text = "<unprintable>"
    return cut_error(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


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


@dataclass(slots=True, eq=False)
class _Attempt:
    item: _Item
    ctx: TaskContext
    started_at: datetime
    finished: bool = False
    started_sent: asyncio.Future | None = None
    timer: asyncio.TimerHandle | None = None  # reports TaskStarted after settings.started_event_after_s
    heartbeat: asyncio.TimerHandle | None = None  # next Heartbeat, once TaskStarted was reported
    checkpoints: list[asyncio.Future] = field(default_factory=list)  # TaskCheckpointed sends, awaited before the result
    handler_task: asyncio.Future | None = None  # an async handler's own task, cancelled on TaskCancelled

    @property
    def over(self) -> bool:
        """The handler returned, or the executor gave up on it (cancelled, timed out, shutdown)."""
        return self.finished or self.item.cancelled or self.ctx.cancelled

    def stop_timers(self) -> None:
        for handle in (self.timer, self.heartbeat):
            if handle is not None:
                handle.cancel()


class Executor:
    """One executor process's worth of runtime: consumer, dispatcher, handler slots, producer.

    ``registry`` defaults to ``default_registry`` (what ``@handler`` fills);
    the built-ins are always consulted after it. ``concurrency`` defaults to
    ``settings.executor_concurrency``. ``consumer_overrides`` are merged
    into the consumer's librdkafka configuration (tests use it to shrink
    ``max.poll.interval.ms``). ``metrics`` (own registry by default) counts
    finished attempts (``executors/metrics.py``).
    """

    def __init__(
        self,
        settings: Settings,
        registry: Registry | None = None,
        concurrency: int | None = None,
        executor_id: str | None = None,
        consumer_overrides: dict[str, Any] | None = None,
        metrics: ExecutorMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics if metrics is not None else ExecutorMetrics()
        self.consumer_overrides = dict(consumer_overrides or {})
        self.registry = registry if registry is not None else default_registry
        self.concurrency = concurrency if concurrency is not None else settings.executor_concurrency
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        self.executor_id = executor_id or f"executor-{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.topics = Topics(settings.prefix)
        self.builtins = builtins(settings)  # noop, sleep, echo, and http and shell with this executor's guards
        self.buffer_size = max(4 * self.concurrency, 32)
        self._topic_level = {self.topics.ready(p): i for i, p in enumerate(PRIORITIES)}
        self._picker = WeightedRoundRobin(settings.priority_weights)

        # Shared between the poll thread and the loop, guarded by _lock.
        self._lock = threading.Lock()
        self._buffers: list[deque[_Item]] = [deque() for _ in PRIORITIES]
        self._offsets: dict[tuple[str, int], PartitionOffsets] = {}
        self._assigned: set[tuple[str, int]] = set()
        self._draining = False
        self._hold_until = 0.0  # time.monotonic() before which no slot is granted
        # Items taken out of the buffers whose handler has not returned yet, by task id.
        self._active: dict[str, list[_Item]] = {}

        # Poll-thread only.
        self._paused: set[tuple[str, int]] = set()
        self._level_paused = [False] * len(PRIORITIES)
        self._recently_cancelled: OrderedDict[str, None] = OrderedDict()

        # Loop only.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None  # threading.get_ident() of the loop's thread
        self._wake: asyncio.Event | None = None
        self._wake_pending = False
        self._running: dict[asyncio.Task, _Attempt] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._producer: AsyncProducer | None = None
        self._closing = threading.Event()
        self._sync_lock = threading.Lock()
        self._sync_running = 0  # sync handler calls whose thread has not returned (abandoned ones included)
        self._thread_error: BaseException | None = None
        self.assigned_event = threading.Event()

    # ------------------------------------------------------------------ public

    async def run(self, stop: asyncio.Event) -> None:
        """Consume and run tasks until ``stop`` is set, then shut down gracefully."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        # Room for attempts abandoned after a timeout, whose threads still run.
        self._pool = ThreadPoolExecutor(max_workers=2 * self.concurrency + 4, thread_name_prefix=f"{self.executor_id}-handler")
        self._producer = async_producer(self.settings, self.executor_id)
        poll_thread = threading.Thread(target=self._poll_thread, name=f"{self.executor_id}-poll", daemon=True)
        log.info(
            "executor %s starting: concurrency %d, topics %s, handlers %s",
            self.executor_id, self.concurrency, self.topics.all_ready, self.registry.names() + self.builtins.names(),
        )
        self.metrics.declare(self.registry.names() + self.builtins.names())
        poll_thread.start()
        dispatcher = asyncio.create_task(self._dispatch(stop), name="executor-dispatch")
        try:
            await stop.wait()
        finally:
            await self._shutdown(dispatcher, poll_thread)
        if self._thread_error is not None:
            raise BrokerUnavailable(f"executor {self.executor_id}: consumer failed: {self._thread_error}") from self._thread_error

    @property
    def handler_threads_running(self) -> int:
        """Sync handler calls still running in their threads, abandoned ones (timeout, shutdown) included."""
        with self._sync_lock:
            return self._sync_running

    # -------------------------------------------------------------- poll thread

    def _poll_thread(self) -> None:
        try:
            consumer = kafka_consumer(self.settings, self.executor_id, self.topics.executor_group, self.consumer_overrides)
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
                close_member(consumer, self.assigned_event, self.settings, self.topics.executor_group)
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
                if is_marker(msg):
                    offsets.mark_done(msg.offset())
                    continue
                try:
                    task = codec.decode(msg.value())
                    if not isinstance(task, (ReadyTask, TaskCancelled)):
                        raise DecodeError(f"expected ReadyTask or TaskCancelled, got {type(task).__name__}")
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
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        log.warning("poison message %s[%d]@%d goes to the dlq: %s", topic, partition, offset, reason)
        headers = poison_headers(topic, partition, offset, reason)

        def delivered(err, _msg, strip: bool = False) -> None:
            if err is None:
                with self._lock:
                    offsets.mark_done(offset)
                return
            if is_permanent(err):
                if strip:  # not even its headers fit: nothing smaller to send
                    log.error("dlq produce of %s[%d]@%d refused even without its value; left in its topic: %s",
                              topic, partition, offset, err)
                    with self._lock:
                        offsets.mark_done(offset)
                    return
                log.error("dlq produce of %s[%d]@%d refused, sent again without its value: %s", topic, partition,
                          offset, err)
                send(strip=True)
                return
            # The broker is away: the offset stays pending (uncommitted) and the dead letter is tried again.
            log.warning("dlq produce of %s[%d]@%d failed, again in %ss: %s", topic, partition, offset,
                        DLQ_RETRY_S, err)
            again = threading.Timer(DLQ_RETRY_S, send, kwargs={"strip": strip})
            again.daemon = True
            again.start()

        def send(strip: bool = False) -> None:
            try:
                self._producer.produce(self.topics.dlq, msg.key(), b"" if strip else msg.value() or b"",
                                       headers=headers, on_delivery=lambda err, m: delivered(err, m, strip))
            except BrokerUnavailable as exc:
                cause = exc.__cause__
                delivered(cause.args[0] if isinstance(cause, KafkaException) else KafkaError(KafkaError._TRANSPORT),
                          None, strip)

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

    async def _dispatch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._wake.wait()
            self._wake.clear()
            with self._lock:
                hold = self._hold_until - time.monotonic()
            if hold > 0:
                await asyncio.sleep(hold)
            while len(self._running) < self.concurrency and not stop.is_set():
                with self._lock:
                    level = self._picker.pick([bool(b) for b in self._buffers])
                    if level is None:
                        break
                    item = self._buffers[level].popleft()
                    self._active.setdefault(item.task.task_id, []).append(item)
                self._start(item)
            if self._thread_error is not None:
                log.error("executor %s stops: its poll thread failed", self.executor_id)
                stop.set()

    def _start(self, item: _Item) -> None:
        task = item.task
        ctx = TaskContext(task_id=task.task_id, attempt=task.attempt, handler=task.handler, priority=task.priority,
                          upstream=_decode_upstream(task), last_checkpoint=_decode_checkpoint(task))
        attempt = _Attempt(item=item, ctx=ctx, started_at=_now())
        ctx._checkpointer = lambda data: self._checkpoint(attempt, data)
        item.attempt = attempt
        log.debug("task %s attempt %d: starting %s", task.task_id, task.attempt, task.handler, extra=_about(task))
        runner = asyncio.create_task(self._run_attempt(attempt), name=f"task-{task.task_id}-{task.attempt}")
        self._running[runner] = attempt
        runner.add_done_callback(self._finished)

    def _cancel_running(self, item: _Item) -> None:
        """On the loop: tell a running attempt whose task was cancelled to stop."""
        attempt = item.attempt
        if attempt is None or attempt.finished:
            return  # not started yet (the runner checks item.cancelled) or already returned
        t = item.task
        log.info("task %s attempt %d: cancelled while running; stopping it", t.task_id, t.attempt, extra=_about(t))
        attempt.ctx._cancel()
        attempt.stop_timers()
        if attempt.handler_task is not None:
            attempt.handler_task.cancel()

    def _finished(self, runner: asyncio.Task) -> None:
        attempt = self._running.pop(runner, None)
        if not runner.cancelled() and runner.exception() is not None and attempt is not None:
            t = attempt.item.task
            log.error("task %s attempt %d: runner failed: %r", t.task_id, t.attempt, runner.exception(),
                      extra=_about(t))
        self._wake.set()

    async def _run_attempt(self, attempt: _Attempt) -> None:
        item = attempt.item
        task = item.task
        if self.settings.started_event_after_s >= 0:
            attempt.timer = self._loop.call_later(self.settings.started_event_after_s, self._report_started, attempt)
        try:
            outcome = None if item.cancelled else await self._execute(attempt)
        finally:
            attempt.finished = True
            attempt.stop_timers()
            with self._lock:
                active = self._active.get(task.task_id)
                if active is not None:
                    active.remove(item)
                    if not active:
                        del self._active[task.task_id]
                cancelled = item.cancelled
        if cancelled or outcome is None:
            # The processor made the task `cancelled` already: nothing to report, the offset is done.
            log.info("task %s attempt %d: cancelled; not reported", task.task_id, task.attempt, extra=_about(task))
            with self._lock:
                item.offsets.mark_done(item.offset)
            self.metrics.cancelled(task.priority, self._handler_label(task.handler))
            return
        if attempt.started_sent is not None:
            try:
                await attempt.started_sent
            except Exception as exc:
                log.warning("task %s attempt %d: TaskStarted not delivered: %s", task.task_id, task.attempt, exc,
                            extra=_about(task))
        for sent in await asyncio.gather(*attempt.checkpoints, return_exceptions=True):
            if isinstance(sent, BaseException):
                log.warning("task %s attempt %d: a checkpoint was not delivered: %s", task.task_id, task.attempt, sent,
                            extra=_about(task))
        try:
            await self._send(outcome)
        except Exception as exc:
            outcome = await self._report_refused(outcome, exc)
            if outcome is None:
                log.error(
                    "task %s attempt %d: result not delivered, offset stays uncommitted: %s",
                    task.task_id, task.attempt, exc, extra=_about(task),
                )
                return
        with self._lock:
            attempt.item.offsets.mark_done(attempt.item.offset)
        label = self._handler_label(task.handler)
        self.metrics.reported(outcome, task.priority, label, handler_known=label != UNKNOWN_HANDLER)

    async def _report_refused(self, outcome: Event, exc: BaseException) -> Event | None:
        """When the broker refused the result event for good, report the attempt failed with the reason instead.

        Returns the event reported, or None when nothing could be (the broker is away: the offset stays
        uncommitted and the attempt runs again after a rebalance).
        """
        if not isinstance(exc, RecordRefused):
            return None
        failed = TaskFailed(task_id=outcome.task_id, attempt=outcome.attempt, producer=self.executor_id,
                            occurred_at=_now(), started_at=getattr(outcome, "started_at", None), permanent=True,
                            error=cut_error(f"result not written: {exc}"))
        try:
            await self._send(failed)
        except Exception as again:
            log.error("task %s attempt %d: failure report not delivered either: %s", outcome.task_id,
                      outcome.attempt, again, extra=about(outcome.task_id, outcome.attempt))
            return None
        return failed

    async def _execute(self, attempt: _Attempt) -> Event | None:
        """Run the handler; return the one result event, or None if the task was cancelled.

        Never raises but CancelledError (the runner itself was cancelled, at shutdown).
        """
        task = attempt.item.task
        common = dict(
            task_id=task.task_id, attempt=task.attempt, producer=self.executor_id, started_at=attempt.started_at
        )
        found = self._lookup(task.handler)
        if found is None:
            log.warning("task %s attempt %d: no handler registered for %r", task.task_id, task.attempt, task.handler,
                        extra=_about(task))
            return TaskFailed(**common, occurred_at=_now(), error=f"no handler registered for {task.handler!r}", permanent=True)
        try:
            payload = codec.loads_json(task.payload)
        except codec.JSONDecodeError as exc:
            return TaskFailed(**common, occurred_at=_now(), error=f"PermanentError: payload is not JSON: {exc}", permanent=True)
        timeout = task.timeout_s if task.timeout_s is not None else self.settings.default_timeout_s
        try:
            result = await self._invoke(found, payload, attempt, timeout)
        except asyncio.CancelledError:
            if attempt.item.cancelled and not asyncio.current_task().cancelling():
                return None  # the handler was cancelled because its task was, not this runner
            raise
        except asyncio.TimeoutError:
            attempt.ctx._cancel()
            log.info("task %s attempt %d: timed out after %ss", task.task_id, task.attempt, timeout, extra=_about(task))
            return TaskFailed(**common, occurred_at=_now(), error=f"TimeoutError: handler {task.handler!r} ran longer than {timeout}s")
        except Exception as exc:
            permanent = isinstance(exc, PermanentError)
            # INFO names the exception type only: a handler's error text may quote its payload or result.
            log.info("task %s attempt %d: handler %s failed%s (%s)", task.task_id, task.attempt, task.handler,
                     " permanently" if permanent else "", type(exc).__name__, extra=_about(task))
            log.debug("task %s attempt %d: handler %s error: %s", task.task_id, task.attempt, task.handler,
                      _error_text(exc), exc_info=not permanent, extra=_about(task))
            return TaskFailed(**common, occurred_at=_now(), error=_error_text(exc), permanent=permanent)
        try:
            result_json = codec.dumps_json(result)
        except TypeError as exc:
            log.info("task %s attempt %d: result not JSON-serialisable: %s", task.task_id, task.attempt, exc,
                     extra=_about(task))
            return TaskFailed(
                **common, occurred_at=_now(),
                error=f"TypeError: handler {task.handler!r} returned a result that is not JSON-serialisable "
                f"({type(result).__name__}): {exc}",
            )
        size = len(result_json.encode())
        if size > MAX_RESULT_BYTES:
            log.info("task %s attempt %d: result too large (%d bytes)", task.task_id, task.attempt, size,
                     extra=_about(task))
            return TaskFailed(**common, occurred_at=_now(), permanent=True,  # the same work would return as much
                              error=f"result too large: {size:,} bytes of JSON > {MAX_RESULT_BYTES:,}")
        log.debug("task %s attempt %d: succeeded", task.task_id, task.attempt, extra=_about(task))
        return TaskSucceeded(**common, occurred_at=_now(), result=result_json)

    def _lookup(self, name: str) -> Handler | None:
        return self.registry.get(name) or self.builtins.get(name)

    def _handler_label(self, name: str) -> str:
        """The metrics label of a handler name: bounded by what this executor registered."""
        return name if self._lookup(name) is not None else UNKNOWN_HANDLER

    async def _invoke(self, found: Handler, payload: Any, attempt: _Attempt, timeout: float | None) -> Any:
        ctx = attempt.ctx
        if found.is_async:
            # Its own task, so a TaskCancelled can cancel the handler without cancelling the runner.
            call = attempt.handler_task = asyncio.ensure_future(found.fn(payload, ctx))
            if attempt.item.cancelled:
                call.cancel()
        else:
            # A sync handler's thread cannot be cancelled: on timeout the future is
            # abandoned and whatever it returns later is ignored.
            call = self._loop.run_in_executor(self._pool, self._call_sync, found.fn, payload, ctx)
        if timeout is not None and timeout > 0:
            return await asyncio.wait_for(call, timeout)
        return await call

    def _call_sync(self, fn, payload: Any, ctx: TaskContext) -> Any:
        """In a pool thread: run a sync handler, counted in ``handler_threads_running``."""
        with self._sync_lock:
            self._sync_running += 1
        try:
            return fn(payload, ctx)
        finally:
            with self._sync_lock:
                self._sync_running -= 1

    def _report_started(self, attempt: _Attempt) -> None:
        """On the loop: report TaskStarted (once) and start heartbeating the attempt."""
        if attempt.started_sent is not None or attempt.over:
            return
        if attempt.timer is not None:
            attempt.timer.cancel()  # when a checkpoint reports it early
        task = attempt.item.task
        log.debug("task %s attempt %d: still running, reporting TaskStarted", task.task_id, task.attempt,
                  extra=_about(task))
        event = TaskStarted(
            task_id=task.task_id, attempt=task.attempt, producer=self.executor_id, occurred_at=attempt.started_at
        )
        attempt.started_sent = self._send(event)
        attempt.heartbeat = self._loop.call_later(self.settings.heartbeat_interval_s, self._heartbeat, attempt)

    def _heartbeat(self, attempt: _Attempt) -> None:
        """On the loop: one Heartbeat for a running attempt, then the next one is scheduled."""
        attempt.heartbeat = None
        if attempt.over:
            return
        task = attempt.item.task
        beat = Heartbeat(task_id=task.task_id, attempt=task.attempt, producer=self.executor_id, occurred_at=_now())

        def delivered(err, _msg) -> None:
            if err is not None:
                log.warning("task %s attempt %d: heartbeat not delivered: %s", task.task_id, task.attempt, err,
                            extra=_about(task))

        try:
            self._producer.produce(self.topics.heartbeats, task.task_id.encode("utf-8"), codec.encode(beat),
                                   codec.headers(beat), on_delivery=delivered)
        except BrokerUnavailable as exc:
            log.warning("task %s attempt %d: heartbeat not sent: %s", task.task_id, task.attempt, exc,
                        extra=_about(task))
        attempt.heartbeat = self._loop.call_later(self.settings.heartbeat_interval_s, self._heartbeat, attempt)

    # ------------------------------------------------------------- checkpoints

    def _checkpoint(self, attempt: _Attempt, data: Any) -> asyncio.Future | None:
        """``ctx.checkpoint``: on the loop, an awaitable of the broker's ack; elsewhere, block until it."""
        try:
            text = codec.dumps_json(data)
        except TypeError as exc:
            raise TypeError(f"checkpoint data must be JSON-serialisable, got {type(data).__name__}: {exc}") from None
        size = len(text.encode("utf-8"))
        if size > MAX_CHECKPOINT_BYTES:
            raise ValueError(f"checkpoint too large: {size:,} bytes of JSON > {MAX_CHECKPOINT_BYTES:,}")
        if threading.get_ident() == self._loop_thread:
            return _acknowledged(self._write_checkpoint(attempt, text))

        async def write() -> None:
            await self._write_checkpoint(attempt, text)

        try:
            pending = asyncio.run_coroutine_threadsafe(write(), self._loop)
        except RuntimeError:  # the loop is closed: the executor has stopped
            raise AttemptAbandoned(f"task {attempt.ctx.task_id} attempt {attempt.ctx.attempt}: the executor has stopped") from None
        while True:
            try:
                pending.result(timeout=1.0)
                return None
            except TimeoutError:
                if self._loop.is_closed():
                    raise AttemptAbandoned(
                        f"task {attempt.ctx.task_id} attempt {attempt.ctx.attempt}: the executor has stopped"
                    ) from None

    def _write_checkpoint(self, attempt: _Attempt, text: str) -> asyncio.Future:
        """On the loop: send TaskCheckpointed (after TaskStarted) and return the producer's future."""
        task = attempt.item.task
        if attempt.over:
            log.info("task %s attempt %d: checkpoint of an abandoned attempt not written", task.task_id, task.attempt,
                     extra=_about(task))
            raise AttemptAbandoned(
                f"task {task.task_id} attempt {task.attempt} is no longer run by this executor; checkpoint not written"
            )
        # A checkpoint means the attempt runs: the log says so first (Started, Checkpointed..., result).
        self._report_started(attempt)
        event = TaskCheckpointed(task_id=task.task_id, attempt=task.attempt, producer=self.executor_id,
                                 occurred_at=_now(), data=text)
        sent = self._send(event)
        attempt.checkpoints.append(sent)
        log.debug("task %s attempt %d: checkpoint of %d bytes", task.task_id, task.attempt, len(text),
                  extra=_about(task))
        return sent

    def _send(self, event: Event) -> asyncio.Future:
        return self._producer.send(
            self.topics.events, event.task_id.encode("utf-8"), codec.encode(event), codec.headers(event)
        )

    async def _shutdown(self, dispatcher: asyncio.Task, poll_thread: threading.Thread) -> None:
        log.info("executor %s stopping: %d attempts in flight", self.executor_id, len(self._running))
        with self._lock:
            self._draining = True
            for buf in self._buffers:
                buf.clear()
        self._wake.set()
        dispatcher.cancel()
        await asyncio.gather(dispatcher, return_exceptions=True)
        if self._running:
            done, pending = await asyncio.wait(list(self._running), timeout=self.settings.shutdown_grace_s)
            for runner in pending:
                attempt = self._running.get(runner)
                if attempt is not None:
                    attempt.ctx._cancel()
                    t = attempt.item.task
                    log.warning(
                        "task %s attempt %d: unfinished after the %ss grace period; not committed, will be redelivered",
                        t.task_id, t.attempt, self.settings.shutdown_grace_s, extra=_about(t)
                    )
                runner.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        self._closing.set()
        await asyncio.to_thread(poll_thread.join)
        remaining = await asyncio.to_thread(self._producer.close, 5.0)
        if remaining:
            log.warning("executor %s: %d events not delivered at shutdown", self.executor_id, remaining)
        self._pool.shutdown(wait=False, cancel_futures=True)
        log.info("executor %s stopped", self.executor_id)


def _acknowledged(sent: asyncio.Future) -> asyncio.Future:
    """A future that resolves to None when ``sent`` (a producer future) does, or fails with it."""
    out = sent.get_loop().create_future()

    def done(f: asyncio.Future) -> None:
        if out.done():
            return
        if f.cancelled():
            out.cancel()
        elif f.exception() is not None:
            out.set_exception(f.exception())
        else:
            out.set_result(None)

    sent.add_done_callback(done)
    return out


def _decode_checkpoint(task: ReadyTask) -> Any:
    """``ctx.last_checkpoint`` from ``ReadyTask.last_checkpoint``: None when absent or not JSON."""
    if task.last_checkpoint is None:
        return None
    try:
        return codec.loads_json(task.last_checkpoint)
    except codec.JSONDecodeError as exc:
        log.warning("task %s attempt %d: last checkpoint is not JSON, handler gets None: %s",
                    task.task_id, task.attempt, exc, extra=_about(task))
        return None


def _decode_upstream(task: ReadyTask) -> dict[str, Any]:
    """``ctx.upstream`` from ``ReadyTask.upstream``; a field that is not a JSON object gives ``{}``."""
    try:
        value = codec.loads_json(task.upstream or "{}")
    except codec.JSONDecodeError as exc:
        log.warning("task %s attempt %d: upstream results are not JSON, handler gets {}: %s",
                    task.task_id, task.attempt, exc, extra=_about(task))
        return {}
    if not isinstance(value, dict):
        log.warning("task %s attempt %d: upstream results are a JSON %s, not an object; handler gets {}",
                    task.task_id, task.attempt, type(value).__name__, extra=_about(task))
        return {}
    return value


def run_executor(settings: Settings, handler_modules: Iterable[str] = (), concurrency: int | None = None) -> None:
    """Blocking entry point for ``taskstream executor``: load handlers, run until SIGTERM/SIGINT.

    A sync handler still running after shutdown (it ignored ``ctx.cancelled``
    past the grace period) cannot be killed, and Python would wait for its
    thread at exit; its attempt is already given up (not reported, not
    committed), so the process exits at once without it.
    """
    load_handler_modules(handler_modules)
    executor = Executor(settings, concurrency=concurrency)
    serve_metrics(executor.metrics.registry, settings, f"executor {executor.executor_id}")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
                pass
        await executor.run(stop)

    asyncio.run(main())
    stray = executor.handler_threads_running
    if stray:
        log.warning("executor %s: %d sync handler(s) still running after shutdown; exiting without waiting for them "
                    "(their attempts were not committed and will run again elsewhere)", executor.executor_id, stray)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
