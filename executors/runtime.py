"""The executor: takes ReadyTask messages off the ready topics, runs handlers, reports results.

An executor of the ``<p>-executors`` group consumes ``<p>.ready.<priority>``
(``_intake``: one poll thread, commits, pauses, dead letters), grants free
slots by weighted priority (``_dispatch``: high:medium:low = 6:3:1 while
every level has a backlog), runs each attempt on the loop or in a thread
(``_attempt``) and appends its outcome to ``<p>.events``, where the
processor folds it; offsets are committed only once an outcome is
acknowledged. ``docs/executor.md`` states the whole contract: threads,
priority, events, heartbeats and leases, checkpoints, offsets,
cancellation and shutdown.
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
from typing import Any


from taskstream.schemas import (
    BrokerUnavailable,
    Settings,
    Topics,
    codec,
)
from taskstream.schemas.kafka import async_producer
from taskstream.schemas.kafka import (
    AsyncProducer,
)
from taskstream.schemas.offsets import PartitionOffsets
from taskstream.schemas.observability import serve_metrics
from taskstream.schemas.topics import PRIORITIES

from ._scheduling import WeightedRoundRobin
from .builtin import builtins
from .context import TaskContext
from .metrics import ExecutorMetrics
from .registry import Registry, default_registry, load_handler_modules

from ._attempt import Attempts, _about, _Attempt, _decode_checkpoint, _decode_upstream, _now  # noqa: F401
from ._intake import Intake, _Item  # noqa: F401

log = logging.getLogger(__name__)


class Executor(Intake, Attempts):
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
        self.wire = codec.WireFormat.of(settings)
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
