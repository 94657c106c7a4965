"""taskstream.client: the HTTP API of taskstream for Python programs and scripts.

Depends on httpx only (no other taskstream package is imported with it), so
it can be used from any program that can reach the API::

    from taskstream.client import Client, RetryPolicy, TaskFailed

    with Client("http://127.0.0.1:8080") as ts:
        job = ts.submit("echo", {"hello": "world"}, priority="high", retry=RetryPolicy(max_attempts=5))
        try:
            print(job.result(timeout=30))      # waits on the task's change stream
        except TaskFailed as exc:
            print(exc.error_type, exc.error, exc.traceback)

``submit`` answers a ``TaskHandle`` (``.id``, ``.status()``, ``.result()``,
``.wait()``, ``.cancel()``, ``.watch()``; ``.task`` is the task as accepted),
``workflow`` a ``WorkflowHandle`` (the same, ``.tasks()`` a handle per key);
``task_handle(id)`` and ``workflow_handle(id)`` make them for ids kept from
earlier. ``handler`` may be a function registered with ``@handler``
(``taskstream.executors``) instead of its name. ``ts.get_workflow(id)`` reads
a workflow, ``ts.list_workflows(status=...)`` iterates them.
``ts.workers()`` lists the executors that report themselves.

``AsyncClient`` has the same methods for asyncio (awaited), answering
``AsyncTaskHandle`` and ``AsyncWorkflowHandle``. Errors are the
``TaskstreamError`` tree of ``taskstream.client.errors``. ``RetryPolicy`` is
``taskstream.schemas.RetryPolicy`` (the one policy value), loaded from there
on first use.
"""

from typing import TYPE_CHECKING, Any

from ._calls import UNSET, HandlerRef, handler_name, task_body
from ._client import DEFAULT_URL, AsyncClient, Client
from ._handles import AsyncTaskHandle, AsyncWorkflowHandle, TaskHandle, WorkflowHandle
from .errors import (
    Conflict,
    Forbidden,
    NotFound,
    OutcomeUnknown,
    PreconditionFailed,
    RateLimited,
    ServerError,
    TaskCancelled,
    TaskFailed,
    TaskstreamError,
    Unauthorized,
    Unavailable,
    UpstreamFailed,
    ValidationFailed,
    WaitTimeout,
    WorkflowCancelled,
    WorkflowFailed,
)
from .models import (
    PRIORITIES,
    STATUSES,
    TERMINAL,
    WORKFLOW_STATUSES,
    Change,
    Page,
    Schedule,
    Task,
    TaskEvent,
    Trigger,
    Worker,
    Workflow,
    WorkflowRun,
    WorkflowRunTask,
)

if TYPE_CHECKING:
    from taskstream.schemas.retry import RetryPolicy


def __getattr__(name: str) -> Any:
    # RetryPolicy is defined once, in taskstream.schemas; imported only when asked for, so that importing the
    # client stays light (taskstream.schemas loads the settings and the codec).
    if name == "RetryPolicy":
        from taskstream.schemas.retry import RetryPolicy

        return RetryPolicy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_URL", "PRIORITIES", "STATUSES", "TERMINAL", "UNSET", "WORKFLOW_STATUSES",
    "AsyncClient", "AsyncTaskHandle", "AsyncWorkflowHandle", "Change", "Client", "HandlerRef", "Page", "RetryPolicy",
    "Schedule", "Task", "TaskEvent", "TaskHandle", "Trigger", "Worker", "Workflow", "WorkflowHandle", "WorkflowRun",
    "WorkflowRunTask", "handler_name", "task_body",
    "TaskstreamError", "Conflict", "Forbidden", "NotFound", "OutcomeUnknown", "PreconditionFailed", "RateLimited",
    "ServerError", "Unauthorized", "Unavailable", "ValidationFailed", "WaitTimeout",
    "TaskCancelled", "TaskFailed", "UpstreamFailed", "WorkflowCancelled", "WorkflowFailed",
]
