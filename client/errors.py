"""What the API refused, as exceptions: one class per problem the HTTP API answers.

Every error answer of the API is an RFC 9457 ``application/problem+json``
document (``type``, ``title``, ``status``, ``detail``, and for bad input
``errors: [{"field", "message"}]``). The client raises it as one of:

========================== ====== ===============================================
exception                  status when
========================== ====== ===============================================
``ValidationFailed``       400,   bad input; ``field`` and ``message`` name the
                           413,   first offender (``errors`` has them all)
                           422
``Unauthorized``           401    no or a wrong API key / token
``Forbidden``              403    the key's role may not do this
``NotFound``               404    no such task or schedule
``Conflict``               409    impossible in the current status (cancel a
                                  finished task, retry one that did not fail,
                                  change one that started)
``PreconditionFailed``     412    ``If-Match`` named a stale version (``version``
                                  is the current one)
``RateLimited``            429    too many requests; ``retry_after`` seconds
``Unavailable``            503,   the API cannot reach its event log (nothing was
                           none   written), or the API itself cannot be reached
                                  (``status`` is None)
``OutcomeUnknown``         504    the event log did not confirm the write in time
                                  and may have taken it: retry with the same
                                  ``Idempotency-Key`` to learn the outcome (an
                                  ``Unavailable``)
``ServerError``            5xx    anything else the server got wrong
``WaitTimeout``            none   ``wait()`` or a handle's ``result()`` gave up
                                  before the task (workflow) ended
========================== ====== ===============================================

All derive from ``TaskstreamError``, which carries the ``problem`` document
(a dict; one is made up when the server sent none) and the HTTP ``status``.

How a task or workflow ended, when a handle's ``result()`` was asked for a
result it does not have (``status`` None, the problem made up here):

========================== ===================================================
exception                  when
========================== ===================================================
``TaskFailed``             the task ended ``failed``: ``error``,
                           ``error_type``, ``traceback``, ``task``
``UpstreamFailed``         (a ``TaskFailed``) it ended ``upstream_failed``: a
                           dependency did not succeed, it never ran
``TaskCancelled``          the task ended ``cancelled``
``WorkflowFailed``         the workflow ended ``failed``: ``workflow``, and
                           ``failures`` (a ``TaskFailed`` per failed task)
``WorkflowCancelled``      the workflow ended ``cancelled``
========================== ===================================================
"""

from __future__ import annotations

from typing import Any


class TaskstreamError(Exception):
    """An answer of the API that is not a success, or no answer at all."""

    def __init__(self, problem: dict[str, Any], status: int | None = None) -> None:
        self.problem = problem
        self.status = status
        super().__init__(self.summary())

    @property
    def title(self) -> str:
        return str(self.problem.get("title") or "")

    @property
    def detail(self) -> str:
        return str(self.problem.get("detail") or "")

    @property
    def errors(self) -> list[dict[str, str]]:
        """``[{"field", "message"}]`` of a validation problem, else empty."""
        found = self.problem.get("errors")
        return [e for e in found if isinstance(e, dict)] if isinstance(found, list) else []

    def summary(self) -> str:
        """One line for people: ``<status> <title>: <detail>``."""
        head = f"{self.status} {self.title}".strip() if self.status else self.title
        return f"{head}: {self.detail}" if self.detail and head else (head or self.detail or type(self).__name__)


class ValidationFailed(TaskstreamError):
    """Bad input (400, 413, 422): nothing was written. ``field`` is the JSON path of the first offender."""

    @property
    def field(self) -> str | None:
        return self.errors[0].get("field") if self.errors else None

    @property
    def message(self) -> str:
        return str(self.errors[0].get("message")) if self.errors else self.detail


class Unauthorized(TaskstreamError):
    """401: the request carried no valid API key or token."""


class Forbidden(TaskstreamError):
    """403: the credentials are valid but their role may not do this."""


class NotFound(TaskstreamError):
    """404: no such task or schedule."""


class Conflict(TaskstreamError):
    """409: the command is impossible in the task's (or schedule's) current status."""


class PreconditionFailed(TaskstreamError):
    """412: ``If-Match`` named a version that is no longer current."""

    @property
    def version(self) -> int | None:
        """The current version, when the API said it."""
        v = self.problem.get("version")
        return v if isinstance(v, int) else None


class RateLimited(TaskstreamError):
    """429: too many requests; try again after ``retry_after`` seconds (None if the server did not say)."""

    def __init__(self, problem: dict[str, Any], status: int | None = 429, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(problem, status)


class Unavailable(TaskstreamError):
    """503 (the API cannot reach its event log: retry), or the API itself did not answer (``status`` None)."""

    def __init__(self, problem: dict[str, Any], status: int | None = 503, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(problem, status)


class OutcomeUnknown(Unavailable):
    """504 write-outcome-unknown: the write may have happened; the same request with the same ``Idempotency-Key``
    answers what exists (or writes it now), without a second copy."""

    def __init__(self, problem: dict[str, Any], status: int | None = 504, retry_after: float | None = None) -> None:
        super().__init__(problem, status, retry_after)


class ServerError(TaskstreamError):
    """Any other error status (500, 502, ...); the server logged the details."""


class WaitTimeout(TaskstreamError, TimeoutError):
    """``wait()`` ran out of time; ``task`` is the last state seen."""

    def __init__(self, problem: dict[str, Any], task: Any = None) -> None:
        self.task = task
        super().__init__(problem, None)


def _about(task: Any) -> str:
    name = f" {task.name!r}" if getattr(task, "name", "") else ""
    return f"task {task.id}{name} ({task.handler})"


class TaskFailed(TaskstreamError):
    """The task ended ``failed`` (its last attempt raised, or a ``PermanentError``): what ``result()`` raises.

    ``task`` is its final state; ``error`` the message the executor recorded
    (``"ValueError: ..."``), ``error_type`` the exception's type and
    ``traceback`` the handler's frames as text, each None where the API did
    not say (an API older than these fields, a failure that was no exception).
    """

    def __init__(self, task: Any) -> None:
        self.task = task
        super().__init__({"title": f"Task {task.status}", "detail": f"{_about(task)} {task.status}: {task.error}"})

    @property
    def error(self) -> str | None:
        return self.task.error

    @property
    def error_type(self) -> str | None:
        value = self.task.raw.get("error_type")
        return value if isinstance(value, str) else None

    @property
    def traceback(self) -> str | None:
        value = self.task.raw.get("traceback")
        return value if isinstance(value, str) else None


class UpstreamFailed(TaskFailed):
    """The task ended ``upstream_failed``: a dependency failed, was cancelled or does not exist; it never ran."""


class TaskCancelled(TaskstreamError):
    """The task ended ``cancelled`` (``task`` is its final state): what ``result()`` raises."""

    def __init__(self, task: Any) -> None:
        self.task = task
        error = str(task.error or "").removeprefix("cancelled").removeprefix(":").strip()
        reason = f": {error}" if error else ""
        super().__init__({"title": "Task cancelled", "detail": f"{_about(task)} was cancelled{reason}"})


class WorkflowFailed(TaskstreamError):
    """The workflow ended ``failed``: ``workflow`` (a ``WorkflowRun``) and ``failures``, a ``TaskFailed`` for each
    task of it that failed itself (with its error and traceback), in the workflow's order."""

    def __init__(self, workflow: Any, failures: list[TaskFailed]) -> None:
        self.workflow = workflow
        self.failures = failures
        first = f"; {failures[0].detail}" if failures else ""
        super().__init__({"title": "Workflow failed",
                          "detail": f"workflow {workflow.id} failed ({_counts(workflow)}){first}"})


class WorkflowCancelled(TaskstreamError):
    """The workflow ended ``cancelled`` (a task of it was cancelled): ``workflow`` is the ``WorkflowRun``."""

    def __init__(self, workflow: Any) -> None:
        self.workflow = workflow
        super().__init__({"title": "Workflow cancelled",
                          "detail": f"workflow {workflow.id} was cancelled ({_counts(workflow)})"})


def _counts(workflow: Any) -> str:
    return ", ".join(f"{n} {status}" for status, n in sorted(workflow.counts.items())) or "no tasks"


_BY_STATUS: dict[int, type[TaskstreamError]] = {
    400: ValidationFailed, 413: ValidationFailed, 422: ValidationFailed,
    401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 412: PreconditionFailed,
}


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` in seconds; an HTTP date or garbage gives None."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        from datetime import UTC, datetime
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    return seconds if seconds >= 0 else None


def error_for(status: int, problem: dict[str, Any], retry_after: str | None = None) -> TaskstreamError:
    """The exception for an error answer: its status, its problem document, its ``Retry-After`` header."""
    if status == 429:
        return RateLimited(problem, status, retry_after_seconds(retry_after))
    if status == 503:
        return Unavailable(problem, status, retry_after_seconds(retry_after))
    if status == 504 and str(problem.get("type", "")).endswith("write-outcome-unknown"):
        return OutcomeUnknown(problem, status, retry_after_seconds(retry_after))
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else TaskstreamError
    return cls(problem, status)


def unreachable(url: str, reason: str) -> Unavailable:
    """The API did not answer at all (refused, reset, timed out)."""
    return Unavailable({"title": "API unreachable", "detail": f"cannot reach the taskstream API at {url}: {reason}"},
                       status=None)
