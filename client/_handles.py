"""Handles: what ``submit`` and ``workflow`` answer, a task or a workflow to ask about, wait for, watch or cancel.

A handle holds its client and an id, so it can be kept, passed around and
asked again: ``status()`` reads the current status, ``result(timeout)`` waits
for the end and returns the result or raises how it ended (``TaskFailed``
with the error, its type and traceback; ``UpstreamFailed``; ``TaskCancelled``;
``WorkflowFailed``, ``WorkflowCancelled``). Waiting follows the API's
Server-Sent Events of each task (``GET /tasks/{id}/watch``; a workflow waits
on its unfinished tasks' streams in turn), so a handle learns of the end
when the API does, with no polling; a workflow's ``watch`` follows the
change stream of its handlers' tasks (``GET /tasks/watch?handler=``). ``TaskHandle`` and
``WorkflowHandle`` come from ``Client``, ``AsyncTaskHandle`` and
``AsyncWorkflowHandle`` (the same methods, awaited) from ``AsyncClient``.

A ``TaskHandle`` also reads as the ``Task`` its client was answered with
(``handle.task``): ``handle.handler``, ``handle.created_at``, ... are that
snapshot's fields, so callers written when ``submit`` returned a ``Task``
keep working, but for ``status`` and ``result``, which are now methods
(docs/decisions/0020-client-handles.md).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from contextlib import aclosing, closing
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .errors import (
    Conflict,
    TaskCancelled,
    TaskFailed,
    Unavailable,
    UpstreamFailed,
    WaitTimeout,
    WorkflowCancelled,
    WorkflowFailed,
)
from .models import Task, Workflow, WorkflowRun
from .sse import SseEvent, StreamDeadline

if TYPE_CHECKING:
    from ._client import AsyncClient, Client

#: The ``Task`` fields a task handle does not proxy: its own ``id``, and the names that are methods of a handle.
_OWN = frozenset({"id", "status", "result"})
#: What else of the ``Task`` a handle reads through: the JSON as answered, and whether it had ended then.
_ALSO = frozenset({"raw", "terminal", "succeeded"})


def deadline_of(timeout: float | None) -> float | None:
    """``time.monotonic()`` after ``timeout`` seconds; None for no limit."""
    return None if timeout is None else time.monotonic() + timeout


def timed_out(what: str, last: Any, timeout: float | None) -> WaitTimeout:
    """The ``WaitTimeout`` of a wait for ``what`` that gave up after ``timeout`` s, carrying the ``last`` state seen."""
    status = f" is still {last.status}" if last is not None else " did not end"
    return WaitTimeout({"title": "Wait timed out", "detail": f"{what}{status} after {timeout or 0:g}s"}, last)


def outcome(task: Task) -> Any:
    """The result of a task that ended: the result if it succeeded, else the exception of how it ended."""
    if task.status == "succeeded":
        return task.result
    if task.status == "failed":
        raise TaskFailed(task)
    if task.status == "upstream_failed":
        raise UpstreamFailed(task)
    if task.status == "cancelled":
        raise TaskCancelled(task)
    raise ValueError(f"task {task.id} has not ended: it is {task.status}")


def workflow_failure(run: WorkflowRun, failed: list[Task]) -> WorkflowFailed | WorkflowCancelled:
    """How a workflow that did not succeed ended: ``failed`` (with each ``failed`` task's ``TaskFailed``) or
    ``cancelled``."""
    if run.status == "cancelled":
        return WorkflowCancelled(run)
    return WorkflowFailed(run, [TaskFailed(t) for t in failed])


def _task_change(e: SseEvent) -> Task | None:
    return Task.from_json(e.json()) if e.event == "task" else None


def _states(client: Client, task_id: str, deadline: float | None) -> Generator[Task, None, None]:
    """The task's states from its change stream (resumed across drops and ``error`` events) until the API ends
    it, after the end; ``StreamDeadline`` once ``deadline`` passed."""
    with closing(client._feed(task_id, {}, None, deadline, resume_errors=True)) as events:
        for e in events:
            if (task := _task_change(e)) is not None:
                yield task


async def _async_states(client: AsyncClient, task_id: str, deadline: float | None) -> AsyncGenerator[Task, None]:
    """As ``_states``."""
    async with aclosing(client._feed(task_id, {}, None, deadline, resume_errors=True)) as events:
        async for e in events:
            if (task := _task_change(e)) is not None:
                yield task


def _in_workflow(e: SseEvent, workflow_id: str) -> bool:
    """Whether the event is the position a change stream starts with, or a change of a task of the workflow."""
    if e.event == "position":
        return True
    return e.event == "task" and e.json().get("workflow_id") == workflow_id


def _handler_filter(run: WorkflowRun) -> dict[str, Any]:
    """The change stream's filter for a workflow's tasks: their handlers (none when the read left tasks out)."""
    return {} if run.truncated or not run.tasks else {"handler": sorted({t.handler for t in run.tasks})}


def _last(runs: Iterator[WorkflowRun]) -> WorkflowRun:
    """The last of a workflow's watch (which yields at least once, and last its terminal state)."""
    *_, run = runs
    return run


def _ended_early(task_id: str) -> Unavailable:
    return Unavailable({"title": "Watch ended", "detail": f"the watch of task {task_id} ended before the task did"})


class _TaskFields:
    """The submitted ``Task``'s fields, read through the handle (``handle.handler`` is ``handle.task.handler``)."""

    task: Task
    # Declared for type checkers; at run time __getattr__ reads them (and any field a later Task adds) from ``task``.
    handler: str
    priority: str
    name: str
    payload: Any
    labels: dict[str, str]
    depends_on: list[str]
    run_at: datetime | None
    attempt: int
    max_attempts: int
    timeout_s: float | None
    created_at: datetime | None
    updated_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    version: int
    key: str | None
    workflow_id: str | None
    retry: dict[str, Any] | None
    retry_at: datetime | None
    checkpoint: Any
    schedule_id: str | None
    scheduled_for: datetime | None
    raw: dict[str, Any]
    terminal: bool
    succeeded: bool

    if not TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any:
            if name in _OWN or not (name in _ALSO or name in {f.name for f in dataclasses.fields(Task)}):
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            task = self.__dict__.get("task")
            if task is None:
                raise AttributeError(name)
            return getattr(task, name)


class TaskHandle(_TaskFields):
    """A task of a ``Client``: ask, wait, watch or cancel. ``task`` is the task as the API answered it then.

    Two handles of the same task are equal. ``client.task_handle(id)`` makes one for a task submitted earlier.
    """

    def __init__(self, client: Client, task: Task) -> None:
        self._client = client
        self.id = task.id
        self.task = task

    def __repr__(self) -> str:
        return f"TaskHandle({self.id!r}, handler={self.task.handler!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("task", self.id))

    def get(self) -> Task:
        """The task as it is now (``GET /tasks/{id}``)."""
        return self._client.get(self.id)

    def status(self) -> str:
        """Its status now (``pending`` ... ``succeeded``, ``failed``, ``cancelled``, ``upstream_failed``)."""
        return self.get().status

    def wait(self, timeout: float | None = None) -> Task:
        """The task once it ended, however it ended (``result`` raises instead); ``WaitTimeout`` after ``timeout`` s.

        Follows the task's change stream: it returns when the API learns of the end.
        """
        deadline = deadline_of(timeout)
        last = self.task
        try:
            with closing(_states(self._client, self.id, deadline)) as states:
                for task in states:
                    last = task
                    if task.terminal:
                        return task
        except StreamDeadline:
            raise timed_out(f"task {self.id}", last, timeout) from None
        task = self.get()  # the stream ends after the end; if it ended otherwise, ask
        if task.terminal:
            return task
        raise _ended_early(self.id)

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the end (``wait``) and return the task's result; raise ``TaskFailed`` (``error``,
        ``error_type``, ``traceback``), ``UpstreamFailed`` or ``TaskCancelled`` if it did not succeed,
        ``WaitTimeout`` if it had not ended after ``timeout`` seconds (None: no limit)."""
        return outcome(self.wait(timeout))

    def cancel(self, reason: str = "") -> Task:
        """Cancel it (``DELETE /tasks/{id}``); ``Conflict`` if it already ended."""
        return self._client.cancel(self.id, reason=reason)

    def watch(self, timeout: float | None = None) -> Iterator[Task]:
        """The task as it is, then every change of it, until it ends (``Client.watch``)."""
        return self._client.watch(self.id, timeout=timeout)


class AsyncTaskHandle(_TaskFields):
    """``TaskHandle`` of an ``AsyncClient``: the same methods, awaited (``watch`` is an async iterator)."""

    def __init__(self, client: AsyncClient, task: Task) -> None:
        self._client = client
        self.id = task.id
        self.task = task

    def __repr__(self) -> str:
        return f"AsyncTaskHandle({self.id!r}, handler={self.task.handler!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncTaskHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("task", self.id))

    async def get(self) -> Task:
        return await self._client.get(self.id)

    async def status(self) -> str:
        return (await self.get()).status

    async def wait(self, timeout: float | None = None) -> Task:
        """As ``TaskHandle.wait``."""
        deadline = deadline_of(timeout)
        last = self.task
        try:
            async with aclosing(_async_states(self._client, self.id, deadline)) as states:
                async for task in states:
                    last = task
                    if task.terminal:
                        return task
        except StreamDeadline:
            raise timed_out(f"task {self.id}", last, timeout) from None
        task = await self.get()
        if task.terminal:
            return task
        raise _ended_early(self.id)

    async def result(self, timeout: float | None = None) -> Any:
        """As ``TaskHandle.result``."""
        return outcome(await self.wait(timeout))

    async def cancel(self, reason: str = "") -> Task:
        return await self._client.cancel(self.id, reason=reason)

    def watch(self, timeout: float | None = None) -> AsyncIterator[Task]:
        """As ``TaskHandle.watch``: ``async for task in handle.watch()``."""
        return self._client.watch(self.id, timeout=timeout)


class WorkflowHandle:
    """A workflow of a ``Client``: ask, wait, watch or cancel. ``workflow`` is what ``POST /workflows`` answered
    (``client.workflow_handle(id)`` makes one from a read of it).

    ``result()`` is ``{key: result}`` of every task once all succeeded.
    """

    def __init__(self, client: Client, workflow: Workflow) -> None:
        self._client = client
        self.id = workflow.workflow_id
        self.workflow = workflow

    @property
    def workflow_id(self) -> str:
        """Its id (as ``Workflow.workflow_id``)."""
        return self.id

    @property
    def task_ids(self) -> dict[str, str]:
        """The task id of every key (``Workflow.tasks``)."""
        return dict(self.workflow.tasks)

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.id!r}, tasks={len(self.workflow.tasks)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WorkflowHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("workflow", self.id))

    def get(self) -> WorkflowRun:
        """The workflow as it is now (``GET /workflows/{id}``): status, counts, times, tasks, edges."""
        return self._client.get_workflow(self.id)

    def status(self) -> str:
        """Its overall status now: ``running``, ``succeeded``, ``failed`` or ``cancelled``."""
        return self.get().status

    def tasks(self) -> dict[str, TaskHandle]:
        """A handle of each of its tasks, by key (one ``GET`` per task)."""
        return {key: self._client.task_handle(task_id) for key, task_id in self.workflow.tasks.items()}

    def watch(self, timeout: float | None = None) -> Generator[WorkflowRun, None, None]:
        """The workflow as it is, then again at each change of one of its tasks, until every task ended.

        Follows the change stream of its handlers' tasks (``GET /tasks/watch?handler=``) and reads the workflow
        at each change of one of its own. ``WaitTimeout`` (carrying the last state) after ``timeout`` seconds.
        """
        deadline = deadline_of(timeout)
        run = self.get()
        yield run
        if run.terminal:
            return
        try:
            with closing(self._client._feed(None, _handler_filter(run), None, deadline, resume_errors=True)) as events:
                for e in events:
                    if not _in_workflow(e, self.id):
                        continue
                    fresh = self.get()
                    if fresh != run:
                        run = fresh
                        yield run
                    if run.terminal:
                        return
        except StreamDeadline:
            raise timed_out(f"workflow {self.id}", run, timeout) from None

    def wait(self, timeout: float | None = None) -> WorkflowRun:
        """The workflow once every task of it ended, however it ended; ``WaitTimeout`` after ``timeout`` s.

        Waits on each unfinished task's own change stream in turn (the API sends only that task's changes),
        then reads the workflow again: a task re-driven meanwhile is waited for too.
        """
        deadline = deadline_of(timeout)
        run = self.get()
        try:
            while not run.terminal:
                waiting = [t.id for t in run.tasks if not t.terminal]
                if not waiting:  # the read left out the tasks still running (more than it shows)
                    with closing(self.watch(None if deadline is None else deadline - time.monotonic())) as runs:
                        return _last(runs)
                for task_id in waiting:
                    with closing(_states(self._client, task_id, deadline)) as states:
                        for task in states:
                            if task.terminal:
                                break
                run = self.get()
        except StreamDeadline:
            raise timed_out(f"workflow {self.id}", run, timeout) from None
        return run

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the end and return ``{key: result}`` of its tasks; raise ``WorkflowFailed`` (with a
        ``TaskFailed`` of each failed task) or ``WorkflowCancelled`` if it did not succeed."""
        run = self.wait(timeout)
        if not run.succeeded:
            raise workflow_failure(run, [self._client.get(t.id) for t in run.tasks if t.status == "failed"])
        return {t.key or t.id: self._client.get(t.id).result for t in run.tasks}

    def cancel(self, reason: str = "") -> WorkflowRun:
        """Cancel every task of it that has not ended, dependents first (so each shows ``cancelled``), and return
        the workflow. The API has no single cancel of a workflow: a task that ends meanwhile is left as it ended."""
        for t in reversed(self.get().tasks):
            if not t.terminal:
                try:
                    self._client.cancel(t.id, reason=reason)
                except Conflict:
                    pass
        return self.get()


class AsyncWorkflowHandle:
    """``WorkflowHandle`` of an ``AsyncClient``: the same methods, awaited (``watch`` is an async iterator)."""

    def __init__(self, client: AsyncClient, workflow: Workflow) -> None:
        self._client = client
        self.id = workflow.workflow_id
        self.workflow = workflow

    @property
    def workflow_id(self) -> str:
        return self.id

    @property
    def task_ids(self) -> dict[str, str]:
        return dict(self.workflow.tasks)

    def __repr__(self) -> str:
        return f"AsyncWorkflowHandle({self.id!r}, tasks={len(self.workflow.tasks)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncWorkflowHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("workflow", self.id))

    async def get(self) -> WorkflowRun:
        return await self._client.get_workflow(self.id)

    async def status(self) -> str:
        return (await self.get()).status

    async def tasks(self) -> dict[str, AsyncTaskHandle]:
        return {key: await self._client.task_handle(task_id) for key, task_id in self.workflow.tasks.items()}

    async def watch(self, timeout: float | None = None) -> AsyncGenerator[WorkflowRun, None]:
        """As ``WorkflowHandle.watch``: ``async for run in handle.watch()``."""
        deadline = deadline_of(timeout)
        run = await self.get()
        yield run
        if run.terminal:
            return
        try:
            async with aclosing(self._client._feed(None, _handler_filter(run), None, deadline,
                                                   resume_errors=True)) as events:
                async for e in events:
                    if not _in_workflow(e, self.id):
                        continue
                    fresh = await self.get()
                    if fresh != run:
                        run = fresh
                        yield run
                    if run.terminal:
                        return
        except StreamDeadline:
            raise timed_out(f"workflow {self.id}", run, timeout) from None

    async def wait(self, timeout: float | None = None) -> WorkflowRun:
        """As ``WorkflowHandle.wait``."""
        deadline = deadline_of(timeout)
        run = await self.get()
        try:
            while not run.terminal:
                waiting = [t.id for t in run.tasks if not t.terminal]
                if not waiting:
                    async with aclosing(self.watch(None if deadline is None else deadline - time.monotonic())) as runs:
                        return [r async for r in runs][-1]
                for task_id in waiting:
                    async with aclosing(_async_states(self._client, task_id, deadline)) as states:
                        async for task in states:
                            if task.terminal:
                                break
                run = await self.get()
        except StreamDeadline:
            raise timed_out(f"workflow {self.id}", run, timeout) from None
        return run

    async def result(self, timeout: float | None = None) -> dict[str, Any]:
        """As ``WorkflowHandle.result``."""
        run = await self.wait(timeout)
        if not run.succeeded:
            raise workflow_failure(run, [await self._client.get(t.id) for t in run.tasks if t.status == "failed"])
        return {t.key or t.id: (await self._client.get(t.id)).result for t in run.tasks}

    async def cancel(self, reason: str = "") -> WorkflowRun:
        """As ``WorkflowHandle.cancel``."""
        for t in reversed((await self.get()).tasks):
            if not t.terminal:
                try:
                    await self._client.cancel(t.id, reason=reason)
                except Conflict:
                    pass
        return await self.get()
