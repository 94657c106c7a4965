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

A failure the handler raised also says why: ``error_type`` (the exception's
class) and ``traceback`` (``handler_traceback``: the handler's frames only,
the runner's and asyncio's left out, innermost kept within
``MAX_TRACEBACK_FRAMES`` and ``MAX_TRACEBACK_CHARS``). The failures the
executor finds itself (the rows above but the two "handler raised") carry
neither.

DESIGN §1 keeps ``executors`` from importing ``streams`` (only ``api`` may
import the decider), so these builders live beside the executor rather than
in ``streams.domain`` (docs/decisions/0004-executor-reports.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import traceback as tb_module
from datetime import datetime
from pathlib import Path
from types import TracebackType

from taskstream.schemas import Heartbeat, ReadyTask, TaskCheckpointed, TaskFailed, TaskStarted, TaskSucceeded
from taskstream.schemas.limits import (
    MAX_ERROR_CHARS,
    MAX_RESULT_BYTES,
    MAX_TRACEBACK_FRAMES,
    cut_error,
    cut_error_type,
    cut_traceback,
)

#: Files of the code between the executor's ``try`` and the handler: the attempt runner, and the asyncio and
#: thread-pool machinery that runs a handler on the loop or in a thread. Leading frames in them are not the
#: handler's.
_RUNNER_FILES = frozenset({str(Path(__file__).with_name("_attempt.py")), str(threading.__file__)})
_RUNNER_DIRS = tuple(str(Path(str(m.__file__)).parent) + os.sep for m in (asyncio, concurrent.futures))


def error_text(exc: BaseException) -> str:
    """``Type: message``, cut to ``MAX_ERROR_CHARS`` (a handler's exception text is unbounded)."""
    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ fails still fails the attempt
        text = "<unprintable>"
    return cut_error(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def exception_type(exc: BaseException) -> str:
    """The exception's class as a traceback names it: ``ValueError``, ``mymodule.OutOfStock``."""
    cls = type(exc)
    module = getattr(cls, "__module__", None)
    name = getattr(cls, "__qualname__", cls.__name__)
    return cut_error_type(name if module in (None, "builtins", "__main__") else f"{module}.{name}")


def _is_runner(tb: TracebackType) -> bool:
    filename = tb.tb_frame.f_code.co_filename
    return filename in _RUNNER_FILES or filename.startswith(_RUNNER_DIRS)


def handler_traceback(exc: BaseException) -> str:
    """``exc``'s traceback as Python prints it, from the handler's first frame on.

    The leading frames of the runner (``_RUNNER_FILES``, ``_RUNNER_DIRS``) are
    dropped; of the rest at most ``MAX_TRACEBACK_FRAMES`` innermost frames are
    kept (per exception of a chain), and the text is cut to
    ``MAX_TRACEBACK_CHARS`` keeping its end (``limits.cut_traceback``); the
    exception's own lines at the end are cut first to ``MAX_ERROR_CHARS``
    (keeping their start, as ``error`` does), so a long message leaves room
    for the frames.
    """
    tb = exc.__traceback__
    while tb is not None and _is_runner(tb):
        tb = tb.tb_next
    kept: list[TracebackType] = []  # the innermost frames, found by following links only (no source looked at)
    while tb is not None:
        kept.append(tb)
        tb = tb.tb_next
    tb = kept[-MAX_TRACEBACK_FRAMES] if len(kept) > MAX_TRACEBACK_FRAMES else (kept[0] if kept else None)
    try:
        te = tb_module.TracebackException(type(exc), exc, tb, limit=-MAX_TRACEBACK_FRAMES, compact=True)
        text = "".join(te.format())
        last = "".join(te.format_exception_only())  # the exception's own lines, printed last
    except Exception:  # a broken __str__ or source line: say so rather than lose the failure
        return f"{exception_type(exc)}: <traceback not printable>"
    if text.endswith(last) and len(last) > MAX_ERROR_CHARS:
        # A long message (it is in ``error`` too) is cut like ``error``, so that it leaves room for the frames.
        text = text[: len(text) - len(last)] + cut_error(last.rstrip("\n"))
    return cut_traceback(text.rstrip("\n"))


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
           permanent: bool = False, retry_delay_s: float | None = None, error_type: str | None = None,
           traceback: str | None = None) -> TaskFailed:
    return TaskFailed(task_id=task.task_id, attempt=task.attempt, producer=producer, started_at=started_at,
                      occurred_at=now, error=cut_error(error), permanent=permanent, retry_delay_s=retry_delay_s,
                      error_type=error_type, traceback=traceback)


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
    ``Retry`` (the caller's classes, not imported here). Carries ``error_type`` and ``handler_traceback``."""
    return failed(task, producer, started_at, now, error_text(exc), permanent=permanent, retry_delay_s=retry_delay_s,
                  error_type=exception_type(exc), traceback=handler_traceback(exc))


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
