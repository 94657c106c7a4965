"""The API's one read path: what a client may read of tasks, workflows and schedules, as typed values.

The HTTP routes (``api/routes``) and the gRPC servicers (``api/grpc_services.py``) call one function per read
here and only render its answer (JSON, a protobuf message), as they call ``api.service`` for writes. Reads
answer from the read model (``api.read_model``: the projection of ``<p>.state``, read-your-writes included)
except history reads (a task's events, its state at a past moment), which scan the task's partition of
``<p>.events`` through the context's ``HistoryReader``, a few at a time and within a budget.

Errors are ours, for each protocol to map: ``NotFound`` (404 / NOT_FOUND), ``ValidationError`` naming the
request field (422 / INVALID_ARGUMENT), ``history.HistoryBusy`` and ``history.HistoryTooExpensive`` (503 /
RESOURCE_EXHAUSTED). A request's fields are checked in the order given here (the cursor before the labels),
so both protocols name the same field for the same bad request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from taskstream.schemas import (
    Event,
    NotFound,
    Priority,
    ScheduleState,
    ScheduleStatus,
    Status,
    TaskState,
    TriggerState,
    ValidationError,
    WorkflowStatus,
)
from taskstream.schemas.limits import MAX_TASKS_PER_REQUEST

from .context import ApiContext
from .models import parse_rfc3339, rfc3339
from .read_model import WorkflowSummary, is_sortkey

#: The largest page of a list read (``limit``); 100 when not given.
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


@dataclass(frozen=True, slots=True)
class TaskPage:
    """A page of tasks, newest first; ``partial`` when the scan budget ran out before ``limit`` were found."""

    tasks: list[TaskState]
    next_cursor: str | None
    partial: bool


@dataclass(frozen=True, slots=True)
class Workflow:
    """A workflow: its summary (overall status, counts, times), its tasks and its graph.

    ``tasks`` are in topological generations (a task after every task it depends on), by key within one;
    ``edges`` are ``(upstream id, dependent id)`` pairs within the workflow; ``truncated`` when the workflow
    has more than ``MAX_WORKFLOW_TASKS`` tasks and only that many are given.
    """

    summary: WorkflowSummary
    tasks: list[TaskState]
    edges: list[tuple[str, str]]
    truncated: bool


@dataclass(frozen=True, slots=True)
class WorkflowPage:
    """A page of workflows (their summaries), newest first."""

    workflows: list[WorkflowSummary]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class SchedulePage:
    """A page of schedules, newest first."""

    schedules: list[ScheduleState]
    next_cursor: str | None


# -------------------------------------------------------------------- tasks


def get_task(ctx: ApiContext, task_id: str) -> TaskState:
    """The task as the read model holds it; ``NotFound`` if it does not."""
    task = ctx.read_model.store.get(task_id)
    if task is None:
        raise NotFound(f"task {task_id} not found")
    return task


async def task_at(ctx: ApiContext, task_id: str, at: datetime) -> TaskState:
    """The task as it was at ``at``, folded from its events in the log (time travel).

    A task the read model does not know is ``NotFound`` at once, without reading the log (one the API just
    created is in it: read-your-writes); so is an ``at`` before its creation, or before its first event.
    """
    task = get_task(ctx, task_id)
    past = await ctx.history.state_at(task_id, at) if at >= task.created_at else None
    if past is None:
        raise NotFound(f"task {task_id} did not exist at {rfc3339(at)}")
    return past


async def task_events(ctx: ApiContext, task_id: str) -> list[Event]:
    """The task's events decoded from the log, oldest first; ``NotFound`` for a task the read model does not know."""
    get_task(ctx, task_id)
    return await ctx.history.events(task_id)


async def list_tasks(
    ctx: ApiContext,
    *,
    status: Status | None = None,
    priority: Priority | None = None,
    handler: str | None = None,
    labels: Sequence[str] = (),
    prefix: str | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> TaskPage:
    """A page of tasks matching every filter given (``labels`` as ``key:value``, all must match; ``prefix``: the
    id, handler or name starts with it).

    The scan runs in a thread and examines at most ``read_limits.list_max_scan`` index entries; past that the
    page is partial, with a ``next_cursor`` to continue from.
    """
    after = decode_cursor(cursor) if cursor else None
    tasks, last = await asyncio.to_thread(
        ctx.read_model.store.list,
        status=status.value if status else None,
        priority=priority.value if priority else None,
        handler=handler,
        labels=parse_labels(labels),
        prefix=prefix or None,
        limit=limit,
        after=after,
        max_scan=ctx.read_limits.list_max_scan,
    )
    return TaskPage(tasks, encode_cursor(last) if last else None, last is not None and len(tasks) < limit)


# ---------------------------------------------------------------- workflows

#: The most tasks ``get_workflow`` gives: the most one ``POST /workflows`` can write.
MAX_WORKFLOW_TASKS = MAX_TASKS_PER_REQUEST


async def get_workflow(ctx: ApiContext, workflow_id: str) -> Workflow:
    """The workflow with its tasks and graph; ``NotFound`` if the read model knows no task of it.

    The summary is read first, then the tasks: while the workflow runs, a task may already show a change that the
    summary (a moment older) does not count yet.
    """
    store = ctx.read_model.store
    summary = store.workflow(workflow_id)
    if summary is None:
        raise NotFound(f"workflow {workflow_id} not found")
    found = await asyncio.to_thread(store.workflow_tasks, workflow_id, MAX_WORKFLOW_TASKS + 1)
    truncated = len(found) > MAX_WORKFLOW_TASKS
    tasks = topological(found[:MAX_WORKFLOW_TASKS])
    ids = {t.task_id for t in tasks}
    edges = [(up, t.task_id) for t in tasks for up in t.depends_on if up in ids]
    return Workflow(summary, tasks, edges, truncated)


def topological(tasks: list[TaskState]) -> list[TaskState]:
    """``tasks`` in generations: those depending on none of them first, then those whose upstreams came before;
    by key (then id) within a generation. A dependency outside ``tasks`` does not count."""
    by_id = {t.task_id: t for t in tasks}
    level: dict[str, int] = {}

    def depth(task_id: str) -> int:
        todo = [task_id]
        while todo:  # iterative: a chain of 1,000 tasks would overflow a recursive walk
            current = todo[-1]
            missing = [d for d in by_id[current].depends_on if d in by_id and d not in level and d not in todo]
            if missing:
                todo.extend(missing)
                continue
            todo.pop()
            level[current] = 1 + max((level.get(d, 0) for d in by_id[current].depends_on if d in by_id),
                                     default=-1)
        return level[task_id]

    return sorted(tasks, key=lambda t: (depth(t.task_id), t.key or "", t.task_id))


def list_workflows(ctx: ApiContext, *, status: WorkflowStatus | None = None, limit: int = DEFAULT_LIMIT,
                   cursor: str | None = None) -> WorkflowPage:
    """A page of workflows, newest first (by their creation), optionally of one overall status; cursors as for
    tasks."""
    after = decode_cursor(cursor) if cursor else None
    page, last = ctx.read_model.store.list_workflows(status=status.value if status else None, limit=limit,
                                                     after=after)
    return WorkflowPage(page, encode_cursor(last) if last else None)


# ---------------------------------------------------------------- schedules


def get_schedule(ctx: ApiContext, schedule_id: str) -> ScheduleState:
    """The schedule as the read model holds it; ``NotFound`` if it does not."""
    state = ctx.read_model.schedules.get(schedule_id)
    if state is None:
        raise NotFound(f"schedule {schedule_id} not found")
    return state


def list_schedules(ctx: ApiContext, *, status: ScheduleStatus | None = None, limit: int = DEFAULT_LIMIT,
                   cursor: str | None = None) -> SchedulePage:
    """A page of schedules, optionally of one status; cursors as for tasks."""
    after = decode_cursor(cursor) if cursor else None
    page, last = ctx.read_model.schedules.list(status=status.value if status else None, limit=limit, after=after)
    return SchedulePage(page, encode_cursor(last) if last else None)


# ------------------------------------------------------------ request fields


def parse_as_of(text: str) -> datetime:
    """An ``as_of`` of a request: RFC 3339 with a zone, else ``ValidationError`` naming ``as_of``."""
    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        raise ValidationError("as_of", str(exc)) from None


def parse_labels(values: Sequence[str]) -> dict[str, str]:
    """``["k:v", ...]`` -> ``{k: v}``; ``ValidationError`` naming ``label`` for an entry without ``:`` or key."""
    labels: dict[str, str] = {}
    for text in values:
        name, sep, value = text.partition(":")
        if not sep or not name:
            raise ValidationError("label", f"{text!r} is not of the form key:value")
        if labels.get(name, value) != value:
            return {name: "\x00never"}  # two values for one label: nothing can match
        labels[name] = value
    return labels


def encode_cursor(sortkey: bytes) -> str:
    return base64.urlsafe_b64encode(sortkey).decode().rstrip("=")


def decode_cursor(cursor: str) -> bytes:
    """The read model position of a ``next_cursor``; ``ValidationError`` naming ``cursor`` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if not is_sortkey(raw):
        raise ValidationError("cursor", "not a cursor returned by this API")
    return raw


__all__ = [
    "DEFAULT_LIMIT", "MAX_LIMIT", "MAX_WORKFLOW_TASKS", "SchedulePage", "TaskPage", "Workflow", "WorkflowPage",
    "decode_cursor", "encode_cursor", "get_schedule", "get_task", "get_workflow", "list_schedules", "list_tasks",
    "list_workflows", "parse_as_of", "parse_labels", "task_at", "task_events", "topological",
]


# ---------------------------------------------------------------- triggers


def get_trigger(ctx: ApiContext, name: str) -> TriggerState:
    """The trigger as the read model holds it; ``NotFound`` if it does not."""
    state = ctx.read_model.triggers.get(name)
    if state is None:
        raise NotFound(f"trigger {name} not found")
    return state


def list_triggers(ctx: ApiContext, *, status: str | None = None) -> list[TriggerState]:
    """Every trigger (of ``status``), newest first (triggers are few: no pages)."""
    found = [s for s in list(ctx.read_model.triggers.values()) if status is None or s.status == status]
    return sorted(found, key=lambda s: (s.created_at, s.name), reverse=True)
