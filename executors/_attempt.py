"""The attempt runner: one attempt's life on the executor's loop, from handler call to acknowledged report.

The dispatcher hands it a delivery (``Delivered``: the intake's ``Delivery``)
to ``run``; the runner calls the handler (on the loop, or in the pool for a
sync one), reports to ``<p>.events`` and, through the delivery, tells the
intake when the handler is done (``release``) and when the outcome is safe
(``settle``). A short attempt reports one event (``TaskSucceeded`` or
``TaskFailed`` with ``started_at``); one still running after
``started_event_after_s`` reports ``TaskStarted`` first and then heartbeats
until it ends. Checkpoints are acknowledged before the result is produced.
Timeouts cancel an async handler and abandon a sync one. Results over
``MAX_RESULT_BYTES`` fail the attempt for good; a result the broker refuses
is reported as a failure.
"""


from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from taskstream.schemas import (
    BrokerUnavailable,
    ReadyTask,
    RecordRefused,
    Settings,
    TaskEvent,
    TaskFailed,
    TaskSucceeded,
    Topics,
    codec,
)
from taskstream.schemas.kafka import AsyncProducer
from taskstream.schemas.observability import about
from taskstream.schemas.tracing import CANCELLED, OFF, TraceContext, Tracing, attempt_outcome

from . import reports
from .context import MAX_CHECKPOINT_BYTES, TaskContext
from .errors import AttemptAbandoned, PermanentError, Retry
from .metrics import UNKNOWN_HANDLER, ExecutorMetrics
from .registry import Handler, Registry

log = logging.getLogger("taskstream.executors.runtime")

def _now() -> datetime:
    return datetime.now(UTC)


def _about(task: ReadyTask) -> dict[str, Any]:
    """``extra=`` of a log line about this attempt: task_id and attempt as fields of the record."""
    return about(task.task_id, task.attempt)



class Delivered(Protocol):
    """What the runner needs of a ready message the intake took in (``_intake.Delivery`` is one)."""

    @property
    def task(self) -> ReadyTask: ...

    @property
    def cancelled(self) -> bool:
        """Turns true when the task is cancelled while it runs (the runner is told through ``cancel``)."""

    def release(self) -> bool:
        """The handler is done with it; returns whether it was cancelled before (then nothing is reported)."""

    def settle(self) -> None:
        """Its outcome is safe (acknowledged, or nothing to report): its offset may be committed."""

    @property
    def trace(self) -> TraceContext | None:
        """The trace context its ready message carried (None: untraced, or the executor does not trace)."""

    @property
    def max_attempts(self) -> int | None:
        """The task's attempt budget, when its ready message carried one."""


#: What ``AttemptRunner._run`` answers when nothing was reported: the attempt's outcome never left the executor.
UNREPORTED = "unreported"


class Handlers:
    """The handlers an executor can run: its registry first, then the built-ins."""

    def __init__(self, registry: Registry, builtins: Registry) -> None:
        self._registry = registry
        self._builtins = builtins

    def names(self) -> list[str]:
        return self._registry.names() + self._builtins.names()

    def get(self, name: str) -> Handler | None:
        return self._registry.get(name) or self._builtins.get(name)

    def label(self, name: str) -> str:
        """The metrics label of a handler name: bounded by what this executor registered."""
        return name if self.get(name) is not None else UNKNOWN_HANDLER


@dataclass(slots=True, eq=False)
class _Attempt:
    delivery: Delivered
    ctx: TaskContext
    started_at: datetime
    finished: bool = False
    started_sent: asyncio.Future | None = None
    timer: asyncio.TimerHandle | None = None  # reports TaskStarted after settings.started_event_after_s
    heartbeat: asyncio.TimerHandle | None = None  # next Heartbeat, once TaskStarted was reported
    checkpoints: list[asyncio.Future] = field(default_factory=list)  # TaskCheckpointed sends, awaited before the result
    handler_task: asyncio.Future | None = None  # an async handler's own task, cancelled on TaskCancelled

    @property
    def task(self) -> ReadyTask:
        return self.delivery.task

    @property
    def over(self) -> bool:
        """The handler returned, or the executor gave up on it (cancelled, timed out, shutdown)."""
        return self.finished or self.delivery.cancelled or self.ctx.cancelled

    def stop_timers(self) -> None:
        for handle in (self.timer, self.heartbeat):
            if handle is not None:
                handle.cancel()


class AttemptRunner:
    """Runs attempts on the loop it is built on; one runner per executor run.

    ``run(delivery)`` is one attempt, start to acknowledged report;
    ``cancel(delivery)`` (on the loop) stops a running one whose task was
    cancelled. Events go to ``topics.events`` and heartbeats to
    ``topics.heartbeats`` through ``producer``; sync handlers run in ``pool``.
    ``threads_running`` counts sync handler calls whose thread has not
    returned, abandoned ones (timeout, shutdown) included. With ``tracing`` on, an attempt whose ready
    message carried a trace context is an ``attempt`` span under it (``schemas.tracing``).
    """

    def __init__(
        self,
        settings: Settings,
        executor_id: str,
        topics: Topics,
        wire: codec.WireFormat,
        handlers: Handlers,
        metrics: ExecutorMetrics,
        producer: AsyncProducer,
        pool: ThreadPoolExecutor,
        tracing: Tracing = OFF,
    ) -> None:
        self._settings = settings
        self._tracing = tracing
        self._executor_id = executor_id
        self._topics = topics
        self._wire = wire
        self._handlers = handlers
        self._metrics = metrics
        self._producer = producer
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._attempts: dict[Delivered, _Attempt] = {}  # running, by delivery (identity)
        self._sync_lock = threading.Lock()
        self._sync_running = 0

    @property
    def threads_running(self) -> int:
        with self._sync_lock:
            return self._sync_running

    async def run(self, delivery: Delivered) -> None:
        """One attempt of ``delivery``: run the handler, report its outcome, settle the delivery once it is safe.

        A cancelled task reports nothing and is settled; an outcome the broker did not acknowledge leaves the
        delivery unsettled (its offset uncommitted: the attempt runs again after a rebalance). Raises only
        CancelledError (the executor gave up on it at shutdown), after marking ``ctx.cancelled``.
        """
        parent = delivery.trace
        if parent is None:  # untraced: always so when this executor does not trace
            await self._run(delivery)
            return
        task = delivery.task
        span = self._tracing.start("attempt", parent, {
            "taskstream.task_id": task.task_id, "taskstream.handler": task.handler,
            "taskstream.attempt": task.attempt, "taskstream.priority": task.priority,
            "taskstream.executor_id": self._executor_id,
        }, kind="consumer")
        if span is None:
            await self._run(delivery)
            return
        try:
            reported = await self._run(delivery)
        except BaseException as exc:
            span.end({"taskstream.outcome": "abandoned"}, error=type(exc).__name__)
            raise
        if isinstance(reported, str):
            span.end({"taskstream.outcome": reported})
            return
        if isinstance(reported, TaskFailed):
            outcome = attempt_outcome(True, reported.permanent, task.attempt, delivery.max_attempts)
            span.end({"taskstream.outcome": outcome}, error=(reported.error_type or "error").rsplit(".", 1)[-1])
        else:
            span.end({"taskstream.outcome": attempt_outcome(False, False, task.attempt, delivery.max_attempts)})

    async def _run(self, delivery: Delivered) -> TaskSucceeded | TaskFailed | str:
        """``run``: the event reported, ``CANCELLED`` (nothing to report) or ``UNREPORTED`` (not delivered)."""
        task = delivery.task
        ctx = TaskContext(task_id=task.task_id, attempt=task.attempt, handler=task.handler, priority=task.priority,
                          upstream=_decode_upstream(task), last_checkpoint=_decode_checkpoint(task))
        attempt = _Attempt(delivery=delivery, ctx=ctx, started_at=_now())
        ctx._checkpointer = lambda data: self._checkpoint(attempt, data)
        log.debug("task %s attempt %d: starting %s", task.task_id, task.attempt, task.handler, extra=_about(task))
        self._attempts[delivery] = attempt
        if self._settings.started_event_after_s >= 0:
            attempt.timer = self._loop.call_later(self._settings.started_event_after_s, self._report_started, attempt)
        try:
            outcome = None if delivery.cancelled else await self._execute(attempt)
        except asyncio.CancelledError:
            ctx._cancel()
            raise
        finally:
            attempt.finished = True
            attempt.stop_timers()
            del self._attempts[delivery]
            cancelled = delivery.release()
        if cancelled or outcome is None:
            # The processor made the task `cancelled` already: nothing to report, the offset is done.
            log.info("task %s attempt %d: cancelled; not reported", task.task_id, task.attempt, extra=_about(task))
            delivery.settle()
            self._metrics.cancelled(task.priority, self._handlers.label(task.handler))
            return CANCELLED
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
                return UNREPORTED
        delivery.settle()
        label = self._handlers.label(task.handler)
        self._metrics.reported(outcome, task.priority, label, handler_known=label != UNKNOWN_HANDLER)
        return outcome

    def cancel(self, delivery: Delivered) -> None:
        """On the loop: tell a running attempt whose task was cancelled to stop."""
        attempt = self._attempts.get(delivery)
        if attempt is None or attempt.finished:
            return  # not started yet (run checks delivery.cancelled) or already returned
        t = delivery.task
        log.info("task %s attempt %d: cancelled while running; stopping it", t.task_id, t.attempt, extra=_about(t))
        attempt.ctx._cancel()
        attempt.stop_timers()
        if attempt.handler_task is not None:
            attempt.handler_task.cancel()

    async def _report_refused(self, outcome: TaskSucceeded | TaskFailed, exc: BaseException) -> TaskFailed | None:
        """When the broker refused the result event for good, report the attempt failed with the reason instead.

        Returns the event reported, or None when nothing could be (the broker is away: the offset stays
        uncommitted and the attempt runs again after a rebalance).
        """
        if not isinstance(exc, RecordRefused):
            return None
        failed = reports.refused(outcome, self._executor_id, _now(), exc)
        try:
            await self._send(failed)
        except Exception as again:
            log.error("task %s attempt %d: failure report not delivered either: %s", outcome.task_id,
                      outcome.attempt, again, extra=about(outcome.task_id, outcome.attempt))
            return None
        return failed

    async def _execute(self, attempt: _Attempt) -> TaskSucceeded | TaskFailed | None:
        """Run the handler; return the one result event, or None if the task was cancelled.

        Never raises but CancelledError (the runner itself was cancelled, at shutdown).
        """
        task = attempt.task
        common = (task, self._executor_id, attempt.started_at)
        found = self._handlers.get(task.handler)
        if found is None:
            log.warning("task %s attempt %d: no handler registered for %r", task.task_id, task.attempt, task.handler,
                        extra=_about(task))
            return reports.no_handler(*common, _now())
        try:
            payload = codec.loads_json(task.payload)
        except codec.JSONDecodeError as exc:
            return reports.bad_payload(*common, _now(), exc)
        timeout = task.timeout_s if task.timeout_s is not None else self._settings.default_timeout_s
        try:
            result = await self._invoke(found, payload, attempt, timeout)
        except asyncio.CancelledError:
            current = asyncio.current_task()  # this coroutine runs as a task, so never None
            if attempt.delivery.cancelled and current is not None and not current.cancelling():
                return None  # the handler was cancelled because its task was, not this runner
            raise
        except TimeoutError as exc:
            if timeout is None:  # no time limit: the handler raised it itself
                return handler_failed(*common, exc)
            attempt.ctx._cancel()
            log.info("task %s attempt %d: timed out after %ss", task.task_id, task.attempt, timeout, extra=_about(task))
            return reports.timed_out(*common, _now(), timeout)
        except Exception as exc:
            return handler_failed(*common, exc)
        try:
            result_json = codec.dumps_json(result)
        except TypeError as exc:
            log.info("task %s attempt %d: result not JSON-serialisable: %s", task.task_id, task.attempt, exc,
                     extra=_about(task))
            return reports.unserialisable(*common, _now(), result, exc)
        outcome = reports.succeeded(*common, _now(), result_json)
        if isinstance(outcome, TaskFailed):
            log.info("task %s attempt %d: %s", task.task_id, task.attempt, outcome.error, extra=_about(task))
        else:
            log.debug("task %s attempt %d: succeeded", task.task_id, task.attempt, extra=_about(task))
        return outcome

    async def _invoke(self, found: Handler, payload: Any, attempt: _Attempt, timeout: float | None) -> Any:
        ctx = attempt.ctx
        if found.is_async:
            # Its own task, so a TaskCancelled can cancel the handler without cancelling the runner.
            call = attempt.handler_task = asyncio.ensure_future(found.fn(payload, ctx))
            if attempt.delivery.cancelled:
                call.cancel()
        else:
            # A sync handler's thread cannot be cancelled: on timeout the future is
            # abandoned and whatever it returns later is ignored.
            call = self._loop.run_in_executor(self._pool, self._call_sync, found.fn, payload, ctx)
        if timeout is not None and timeout > 0:
            return await asyncio.wait_for(call, timeout)
        return await call

    def _call_sync(self, fn: Callable[[Any, TaskContext], Any], payload: Any, ctx: TaskContext) -> Any:
        """In a pool thread: run a sync handler, counted in ``threads_running``."""
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
        task = attempt.task
        log.debug("task %s attempt %d: still running, reporting TaskStarted", task.task_id, task.attempt,
                  extra=_about(task))
        event = reports.started(task, self._executor_id, attempt.started_at)
        attempt.started_sent = self._send(event)
        attempt.heartbeat = self._loop.call_later(self._settings.heartbeat_interval_s, self._heartbeat, attempt)

    def _heartbeat(self, attempt: _Attempt) -> None:
        """On the loop: one Heartbeat for a running attempt, then the next one is scheduled."""
        attempt.heartbeat = None
        if attempt.over:
            return
        task = attempt.task
        beat = reports.heartbeat(task, self._executor_id, _now())

        def delivered(err, _msg) -> None:
            if err is not None:
                log.warning("task %s attempt %d: heartbeat not delivered: %s", task.task_id, task.attempt, err,
                            extra=_about(task))

        try:
            self._producer.produce(self._topics.heartbeats, task.task_id.encode("utf-8"), self._wire.encode(beat),
                                   codec.headers(beat), on_delivery=delivered)
        except BrokerUnavailable as exc:
            log.warning("task %s attempt %d: heartbeat not sent: %s", task.task_id, task.attempt, exc,
                        extra=_about(task))
        attempt.heartbeat = self._loop.call_later(self._settings.heartbeat_interval_s, self._heartbeat, attempt)

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
            raise AttemptAbandoned(
                f"task {attempt.ctx.task_id} attempt {attempt.ctx.attempt}: the executor has stopped") from None
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
        task = attempt.task
        if attempt.over:
            log.info("task %s attempt %d: checkpoint of an abandoned attempt not written", task.task_id, task.attempt,
                     extra=_about(task))
            raise AttemptAbandoned(
                f"task {task.task_id} attempt {task.attempt} is no longer run by this executor; checkpoint not written"
            )
        # A checkpoint means the attempt runs: the log says so first (Started, Checkpointed..., result).
        self._report_started(attempt)
        event = reports.checkpointed(task, self._executor_id, _now(), text)
        sent = self._send(event)
        attempt.checkpoints.append(sent)
        log.debug("task %s attempt %d: checkpoint of %d bytes", task.task_id, task.attempt, len(text),
                  extra=_about(task))
        return sent

    def _send(self, event: TaskEvent) -> asyncio.Future:
        return self._producer.send(
            self._topics.events, event.task_id.encode("utf-8"), self._wire.encode(event), codec.headers(event)
        )


def handler_failed(task: ReadyTask, executor_id: str, started_at: datetime, exc: Exception) -> TaskFailed:
    """The report of a handler that raised ``exc``: ``PermanentError`` fails the task for good, ``Retry`` fails the
    attempt asking for its next delay (``retry_delay_s``, clamped by the decider), anything else fails the attempt
    (retried per the task's policy)."""
    permanent = isinstance(exc, PermanentError)
    # INFO names the exception type only: a handler's error text may quote its payload or result.
    log.info("task %s attempt %d: handler %s failed%s (%s)", task.task_id, task.attempt, task.handler,
             " permanently" if permanent else "", type(exc).__name__, extra=_about(task))
    log.debug("task %s attempt %d: handler %s error: %s", task.task_id, task.attempt, task.handler,
              reports.error_text(exc), exc_info=not permanent, extra=_about(task))
    delay = exc.delay_s if isinstance(exc, Retry) else None
    return reports.raised(task, executor_id, started_at, _now(), exc, permanent=permanent, retry_delay_s=delay)


def _acknowledged(sent: asyncio.Future) -> asyncio.Future:
    """A future that resolves to None when ``sent`` (a producer future) does, or fails with it."""
    out = sent.get_loop().create_future()

    def done(f: asyncio.Future) -> None:
        if out.done():
            return
        if f.cancelled():
            out.cancel()
        elif (exc := f.exception()) is not None:
            out.set_exception(exc)
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


