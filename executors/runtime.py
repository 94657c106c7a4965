"""The executor: takes ReadyTask messages off the ready topics, runs handlers, reports results.

An executor of the ``<p>-executors`` group is three parts that ``Executor``
composes for each run (the model is dramatiq's ``Worker`` with its consumer
and worker threads): the intake (``_intake.Intake``, the hooks of a member ``ConsumerRuntime``
on its own thread, which owns assignment, batches, pauses, dead letters
and commits) holds decoded messages in one buffer per priority;
the dispatcher (``_dispatch.Dispatcher``, on the loop) grants free slots by
weighted priority (high:medium:low = 6:3:1 while every level has a
backlog); the attempt runner (``_attempt.AttemptRunner``) runs each attempt
on the loop or in a thread and appends its outcome to ``<p>.events``, where
the processor folds it. An offset is committed only once its outcome is
acknowledged. ``docs/executor.md`` states the whole contract: threads,
priority, events, heartbeats and leases, checkpoints, offsets, cancellation
and shutdown; docs/decisions/0008-composed-executor.md the parts' interfaces.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from taskstream.schemas import (
    BrokerUnavailable,
    Settings,
    Topics,
    codec,
)
from taskstream.schemas.consumer import ConsumerRuntime
from taskstream.schemas.kafka import async_producer, check_security
from taskstream.schemas.observability import serve_metrics
from taskstream.schemas.tracing import OFF, Tracing, tracing_from_environ

from ._attempt import AttemptRunner, Handlers
from ._dispatch import Dispatcher
from ._intake import Intake
from ._scheduling import WeightedRoundRobin
from .builtin import builtins
from .metrics import ExecutorMetrics
from .presence import Presence
from .registry import Registry, default_registry, load_handler_modules

log = logging.getLogger(__name__)

#: How often the intake's runtime commits finished offsets.
COMMIT_INTERVAL_S = 0.2
#: Longest single poll; bounds how fast the intake reacts to pauses, resumes and stop.
POLL_TIMEOUT_S = 0.05
#: Messages taken per poll.
POLL_BATCH = 500


class Executor:
    """One executor process's worth of runtime: consumer, dispatcher, handler slots, producer.

    ``registry`` defaults to ``default_registry`` (what ``@handler`` fills);
    the built-ins are always consulted after it. ``concurrency`` defaults to
    ``settings.executor_concurrency``. ``consumer_overrides`` are merged
    into the consumer's librdkafka configuration (tests use it to shrink
    ``max.poll.interval.ms``). ``metrics`` (own registry by default) counts
    finished attempts (``executors/metrics.py``); ``tracing`` makes each traced attempt a span
    (``schemas.tracing``; off by default).

    The constructor only configures; ``run`` builds the parts of one run.
    While it runs, ``intake`` and ``consumer`` are that run's intake and its
    ``ConsumerRuntime`` (for inspection: what is buffered, ``assignment()``,
    ``paused``), None before; ``presence`` its reports to ``<p>.workers``; ``assigned_event`` is set at the
    first partition assignment.
    """

    def __init__(
        self,
        settings: Settings,
        registry: Registry | None = None,
        concurrency: int | None = None,
        executor_id: str | None = None,
        consumer_overrides: dict[str, Any] | None = None,
        metrics: ExecutorMetrics | None = None,
        tracing: Tracing = OFF,
    ) -> None:
        self.settings = settings
        self.tracing = tracing
        self.metrics = metrics if metrics is not None else ExecutorMetrics()
        self.consumer_overrides = dict(consumer_overrides or {})
        self.registry = registry if registry is not None else default_registry
        self.concurrency = concurrency if concurrency is not None else settings.executor_concurrency
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        self.executor_id = executor_id or f"executor-{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.topics = Topics(settings.prefix)
        self.wire = codec.WireFormat.of(settings)
        # noop, sleep, echo, and http and shell with this executor's guards
        self.handlers = Handlers(self.registry, builtins(settings))
        self.buffer_size = max(4 * self.concurrency, 32)
        self.assigned_event = threading.Event()
        self.intake: Intake | None = None
        self.consumer: ConsumerRuntime | None = None
        self.presence: Presence | None = None
        self._runner: AttemptRunner | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Consume and run tasks until ``stop`` is set, then shut down gracefully.

        Raises ``BrokerUnavailable`` when the consumer failed (it could not be created, or its thread died);
        ``stop`` is set by the executor itself then.
        """
        loop = asyncio.get_running_loop()
        # Room for attempts abandoned after a timeout, whose threads still run.
        pool = ThreadPoolExecutor(max_workers=2 * self.concurrency + 4,
                                  thread_name_prefix=f"{self.executor_id}-handler")
        producer = async_producer(self.settings, self.executor_id)
        runner = self._runner = AttemptRunner(self.settings, self.executor_id, self.topics, self.wire, self.handlers,
                                              self.metrics, producer, pool, self.tracing)
        dispatcher = Dispatcher(runner, self.concurrency, WeightedRoundRobin(self.settings.priority_weights))
        intake = self.intake = Intake(self.topics, self.wire, self.buffer_size, notify=dispatcher.wake_threadsafe,
                                      cancel_running=dispatcher.cancel_threadsafe, assigned=self.assigned_event,
                                      traced=self.tracing.enabled)

        try:
            consumer = self.consumer = ConsumerRuntime.member(
                self.settings, intake, client_id=self.executor_id, group=self.topics.executor_group,
                topics=self.topics.all_ready, overrides={"enable.partition.eof": True, **self.consumer_overrides},
                batch=POLL_BATCH,
                poll_s=POLL_TIMEOUT_S, commit_interval_s=COMMIT_INTERVAL_S, done_on_return=False,
                producer=producer, lock=intake.lock)
        except BrokerUnavailable as exc:
            log.error("executor %s could not create its consumer: %s", self.executor_id, exc)
            stop.set()
            producer.close(5.0)
            pool.shutdown(wait=False)
            raise
        failure: list[BaseException] = []
        consumer_stop = threading.Event()

        def consume() -> None:
            try:
                consumer.run(consumer_stop)
            except BaseException as exc:  # keep the reason; the run logs it and stops
                log.exception("executor %s consumer failed", self.executor_id)
                failure.append(exc)
                try:
                    loop.call_soon_threadsafe(stop.set)
                except RuntimeError:  # the loop is closed: run has returned already
                    pass

        consuming = threading.Thread(target=consume, name=f"{self.executor_id}-poll", daemon=True)
        presence = self.presence = Presence(
            self.executor_id, self.topics, self.wire, producer, handlers=self.handlers.names(),
            concurrency=self.concurrency, interval_s=self.settings.worker_report_interval_s,
            assignment=consumer.assignment, running=dispatcher.running_ids)
        log.info("executor %s starting: concurrency %d, topics %s, handlers %s",
                 self.executor_id, self.concurrency, self.topics.all_ready, self.handlers.names())
        self.metrics.declare(self.handlers.names())
        consuming.start()
        dispatching = asyncio.create_task(dispatcher.run(intake, stop), name="executor-dispatch")
        reporting = asyncio.create_task(presence.run(stop), name="executor-presence")
        try:
            await stop.wait()
        finally:
            log.info("executor %s stopping: %d attempts in flight", self.executor_id, dispatcher.running)
            intake.drain()
            await dispatcher.close(self.settings.shutdown_grace_s)
            await asyncio.gather(dispatching, return_exceptions=True)
            consumer_stop.set()
            await asyncio.to_thread(consuming.join)
            await asyncio.gather(reporting, return_exceptions=True)
            if not failure:  # a clean stop: the group is left, the API drops this executor at once
                await presence.leave()
            remaining = await asyncio.to_thread(producer.close, 5.0)
            if remaining:
                log.warning("executor %s: %d events not delivered at shutdown", self.executor_id, remaining)
            pool.shutdown(wait=False, cancel_futures=True)
            log.info("executor %s stopped", self.executor_id)
        if failure:
            log.error("executor %s stopped because its consumer failed", self.executor_id)
            raise BrokerUnavailable(f"executor {self.executor_id}: consumer failed: {failure[0]}") from failure[0]

    @property
    def handler_threads_running(self) -> int:
        """Sync handler calls still running in their threads, abandoned ones (timeout, shutdown) included."""
        return self._runner.threads_running if self._runner is not None else 0


def run_executor(settings: Settings, handler_modules: Iterable[str] = (), concurrency: int | None = None) -> None:
    """Blocking entry point for ``taskstream executor``: load handlers, run until SIGTERM/SIGINT.

    A sync handler still running after shutdown (it ignored ``ctx.cancelled``
    past the grace period) cannot be killed, and Python would wait for its
    thread at exit; its attempt is already given up (not reported, not
    committed), so the process exits at once without it.
    """
    load_handler_modules(handler_modules)
    check_security(settings)  # refused credentials or an untrusted broker: one line now, not retries for ever
    tracing = tracing_from_environ("executor", os.environ)
    executor = Executor(settings, concurrency=concurrency, tracing=tracing)
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

    try:
        asyncio.run(main())
    finally:
        tracing.shutdown()
    stray = executor.handler_threads_running
    if stray:
        log.warning("executor %s: %d sync handler(s) still running after shutdown; exiting without waiting for them "
                    "(their attempts were not committed and will run again elsewhere)", executor.executor_id, stray)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
