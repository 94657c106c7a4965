"""What an executor reports about an attempt: the events it writes, and which failures are permanent.

An executor observes; it decides nothing about a task's future. Every event
it writes is built here, from the ready message it took: ``TaskStarted``,
``Heartbeat``, ``TaskCheckpointed``, and one result, ``TaskSucceeded`` or
``TaskFailed``. Whether a failed attempt is retried is the decider's rule
(``streams.domain``, on folding ``TaskFailed``); the executor only says whether
the failure is *permanent* — the same attempt could never succeed:

| outcome                                   | permanent |
|-------------------------------------------|-----------|
| no handler registered for the name        | yes       |
| payload is not JSON                       | yes       |
| handler raised ``PermanentError``         | yes       |
| result larger than ``MAX_RESULT_BYTES``   | yes       |
| the broker refused the result record      | yes       |
| handler raised ``Retry(delay_s=...)``     | no (``retry_delay_s`` carries the wait asked for) |
| handler raised anything else              | no        |
| handler ran longer than its timeout       | no        |
| result not JSON-serialisable              | no        |

DESIGN §1 keeps ``executors`` from importing ``streams`` (only ``api`` may
import the decider), so these builders live beside the executor rather than
in ``streams.domain`` (docs/decisions/0004-executor-reports.md).
"""

from __future__ import annotations

from datetime import datetime

from taskstream.schemas import Heartbeat, ReadyTask, TaskCheckpointed, TaskFailed, TaskStarted, TaskSucceeded
from taskstream.schemas.limits import MAX_RESULT_BYTES, cut_error


def error_text(exc: BaseException) -> str:
    """``Type: message``, cut to ``MAX_ERROR_CHARS`` (a handler's exception text is unbounded)."""
    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ fails still fails the attempt
        text = "<unprintable>"
    return cut_error(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def started(task: ReadyTask, producer: str, at: datetime) -> TaskStarted:
    return TaskStarted(task_id=task.task_id, attempt=task.attempt, producer=producer, occurred_at=at)


def heartbeat(task: ReadyTask, producer: str, now: datetime) -> Heartbeat:
    return Heartbeat(task_id=task.task_id, attempt=task.attempt, producer=producer, occurred_at=now)


def checkpointed(task: ReadyTask, producer: str, now: datetime, data: str) -> TaskCheckpointed:
    """``data``: the checkpoint's JSON text (its size is checked by ``ctx.checkpoint``)."""
    return TaskCheckpointed(task_id=task.task_id, attempt=task.attempt, producer=producer, occurred_at=now, data=data)


def succeeded(task: ReadyTask, producer: str, started_at: datetime, now: datetime,
              result_json: str) -> TaskSucceeded | TaskFailed:
    """The attempt's result, or a permanent failure when the result is larger than ``MAX_RESULT_BYTES``."""
    size = len(result_json.encode())
    if size > MAX_RESULT_BYTES:  # the same work would return as much
        return failed(task, producer, started_at, now,
                      f"result too large: {size:,} bytes of JSON > {MAX_RESULT_BYTES:,}", permanent=True)
    return TaskSucceeded(task_id=task.task_id, attempt=task.attempt, producer=producer, started_at=started_at,
                         occurred_at=now, result=result_json)


def failed(task: ReadyTask, producer: str, started_at: datetime | None, now: datetime, error: str, *,
           permanent: bool = False, retry_delay_s: float | None = None) -> TaskFailed:
    return TaskFailed(task_id=task.task_id, attempt=task.attempt, producer=producer, started_at=started_at,
                      occurred_at=now, error=cut_error(error), permanent=permanent, retry_delay_s=retry_delay_s)


def no_handler(task: ReadyTask, producer: str, started_at: datetime, now: datetime) -> TaskFailed:
    return failed(task, producer, started_at, now, f"no handler registered for {task.handler!r}", permanent=True)


def bad_payload(task: ReadyTask, producer: str, started_at: datetime, now: datetime, exc: Exception) -> TaskFailed:
    return failed(task, producer, started_at, now, f"PermanentError: payload is not JSON: {exc}", permanent=True)


def timed_out(task: ReadyTask, producer: str, started_at: datetime, now: datetime, timeout_s: float) -> TaskFailed:
    return failed(task, producer, started_at, now,
                  f"TimeoutError: handler {task.handler!r} ran longer than {timeout_s}s")


def raised(task: ReadyTask, producer: str, started_at: datetime, now: datetime, exc: BaseException, *,
           permanent: bool, retry_delay_s: float | None = None) -> TaskFailed:
    """The handler raised ``exc``; ``permanent`` for ``PermanentError``, ``retry_delay_s`` the ``delay_s`` of a
    ``Retry`` (the caller's classes, not imported here)."""
    return failed(task, producer, started_at, now, error_text(exc), permanent=permanent, retry_delay_s=retry_delay_s)


def unserialisable(task: ReadyTask, producer: str, started_at: datetime, now: datetime, result: object,
                   exc: Exception) -> TaskFailed:
    return failed(task, producer, started_at, now,
                  f"TypeError: handler {task.handler!r} returned a result that is not JSON-serialisable "
                  f"({type(result).__name__}): {exc}")


def refused(outcome: TaskSucceeded | TaskFailed, producer: str, now: datetime, exc: BaseException) -> TaskFailed:
    """The broker refused ``outcome`` (the result event) for good: the attempt fails for good, saying why."""
    return TaskFailed(task_id=outcome.task_id, attempt=outcome.attempt, producer=producer, occurred_at=now,
                      started_at=getattr(outcome, "started_at", None), permanent=True,
                      error=cut_error(f"result not written: {exc}"))
