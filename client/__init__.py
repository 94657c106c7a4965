"""taskstream.client: the HTTP API of taskstream for Python programs and scripts.

Depends on httpx only (no other taskstream package), so it can be used
from any program that can reach the API::

    from taskstream.client import Client

    with Client("http://127.0.0.1:8080") as ts:
        task = ts.submit("echo", {"hello": "world"}, priority="high")
        done = ts.wait(task.id, timeout=30)
        print(done.status, done.result)

A workflow submitted with ``ts.workflow([...])`` reads back with
``ts.get_workflow(id)`` (its overall status, tasks and graph), waits with
``ts.wait_workflow(id)``; ``ts.list_workflows(status=...)`` iterates them.
``ts.workers()`` lists the executors that report themselves.

``AsyncClient`` has the same methods for asyncio (awaited). Errors are the
``TaskstreamError`` tree of ``taskstream.client.errors``.
"""

from ._calls import UNSET, task_body
from ._client import DEFAULT_URL, AsyncClient, Client
from .errors import (
    Conflict,
    Forbidden,
    NotFound,
    OutcomeUnknown,
    PreconditionFailed,
    RateLimited,
    ServerError,
    TaskstreamError,
    Unauthorized,
    Unavailable,
    ValidationFailed,
    WaitTimeout,
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
    Worker,
    Workflow,
    WorkflowRun,
    WorkflowRunTask,
)

__all__ = [
    "DEFAULT_URL", "PRIORITIES", "STATUSES", "TERMINAL", "UNSET", "WORKFLOW_STATUSES",
    "AsyncClient", "Change", "Client", "Page", "Schedule", "Task", "TaskEvent", "Worker", "Workflow", "WorkflowRun",
    "WorkflowRunTask", "task_body",
    "TaskstreamError", "Conflict", "Forbidden", "NotFound", "OutcomeUnknown", "PreconditionFailed", "RateLimited",
    "ServerError", "Unauthorized", "Unavailable", "ValidationFailed", "WaitTimeout",
]
