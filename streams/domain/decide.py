"""``decide``: a command, checked against the current state, becomes the events that answer it.

One small function per command holds the command's guards, so every caller
(HTTP routes, gRPC, CLI, tests) applies the same rules; the processor calls
the same ``decide`` with an event it just folded for the events that follow
from it (``react``). A refusal is an exception: ``NotFound`` (no such task or
schedule), ``StaleVersion`` (a conditional change at another version),
``CommandRejected`` (impossible in the current status). Deciders are pure:
``now`` is the time the answer is stamped with.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from graphlib import CycleError, TopologicalSorter

from taskstream.schemas import (
    CommandRejected,
    DependencyRegistered,
    Event,
    NotFound,
    ScheduleCreated,
    ScheduleDeleted,
    ScheduleState,
    ScheduleStatus,
    StaleVersion,
    Status,
    TaskCancelled,
    TaskCreated,
    TaskRedriven,
    TaskState,
    TaskUpdated,
    ValidationError,
)

from .commands import (
    PATCHABLE,
    CancelTask,
    CreateSchedule,
    DeleteSchedule,
    RedriveDeadLettered,
    RedriveTask,
    SubmitTask,
    UpdateTask,
)
from .evolve import SCHEDULE_EVENTS, TERMINAL_VALUES, UPDATABLE

#: Statuses a redrive re-opens.
REDRIVABLE = frozenset({Status.FAILED.value, Status.UPSTREAM_FAILED.value})
_SCHEDULE_INPUTS = SCHEDULE_EVENTS | {CreateSchedule, DeleteSchedule}


def decide(state: TaskState | ScheduleState | None, input, now: datetime) -> list[Event]:
    """The events that answer a command, or that follow from an event the processor just folded.

    For an event, ``state`` is the state *after* folding it (``react``).
    Raises ``NotFound``, ``StaleVersion`` or ``CommandRejected`` for a command
    that cannot be carried out; harmless duplicates of events give ``[]``.
    """
    fn = _deciders.get(type(input))
    if fn is None:
        return []
    if isinstance(state, ScheduleState) and type(input) not in _SCHEDULE_INPUTS:
        if isinstance(input, (SubmitTask, UpdateTask, CancelTask, RedriveTask)):
            raise NotFound(f"task {input.task_id} not found: {input.task_id} is a schedule")
        # A task event keyed by a schedule's id: only a registration is answered (the dependent must not wait forever).
        if isinstance(input, DependencyRegistered):
            return _deciders[DependencyRegistered](None, input, now)
        return []
    return fn(state, input, now)


_deciders: dict[type, object] = {}


def _decides(input_type):
    def register(fn):
        _deciders[input_type] = fn
        return fn

    return register


def _task(state: TaskState | None, task_id: str) -> TaskState:
    if not isinstance(state, TaskState):
        raise NotFound(f"task {task_id} not found")
    return state


@_decides(SubmitTask)
def _submit(state: TaskState | None, c: SubmitTask, now: datetime) -> list[Event]:
    if state is not None:
        raise CommandRejected(f"task {c.task_id} already exists")
    return [
        TaskCreated(
            task_id=c.task_id, occurred_at=now, producer=c.producer, name=c.name, handler=c.handler,
            priority=c.priority, payload=c.payload, labels=dict(c.labels), depends_on=list(c.depends_on),
            run_at=c.run_at, timeout_s=c.timeout_s, max_attempts=c.max_attempts,
            backoff_initial_s=c.backoff_initial_s, backoff_multiplier=c.backoff_multiplier,
            backoff_max_s=c.backoff_max_s, backoff_jitter=c.backoff_jitter, key=c.key, workflow_id=c.workflow_id,
            upstream_keys=dict(c.upstream_keys), idempotency_key=c.idempotency_key, request_hash=c.request_hash,
            actor=c.actor,
        )
    ]


@_decides(UpdateTask)
def _update(state: TaskState | None, c: UpdateTask, now: datetime) -> list[Event]:
    task = _task(state, c.task_id)
    if c.expected_version is not None and c.expected_version != task.version:
        raise StaleVersion(f"task {c.task_id} is at version {task.version}, not {c.expected_version}", task.version)
    if task.status not in UPDATABLE or task.attempt != 0:  # a retry waiting in `scheduled` has started
        raise CommandRejected(
            f"task {c.task_id} is {task.status}: already started or queued, it can no longer be changed")
    unknown = set(c.changes) - set(PATCHABLE)
    if unknown:
        raise CommandRejected(f"fields {sorted(unknown)} of a task cannot be changed")
    return [TaskUpdated(task_id=c.task_id, occurred_at=now, producer=c.producer, actor=c.actor,
                        expected_version=task.version,
                        **{name: c.changes.get(name) for name in PATCHABLE})]


@_decides(CancelTask)
def _cancel(state: TaskState | None, c: CancelTask, now: datetime) -> list[Event]:
    task = _task(state, c.task_id)
    if task.status in TERMINAL_VALUES:
        raise CommandRejected(f"task {c.task_id} is already {task.status}")
    return [TaskCancelled(task_id=c.task_id, occurred_at=now, producer=c.producer, reason=c.reason, actor=c.actor)]


@_decides(RedriveTask)
def _redrive(state: TaskState | None, c: RedriveTask, now: datetime) -> list[Event]:
    task = _task(state, c.task_id)
    if task.status not in REDRIVABLE:
        raise CommandRejected(
            f"task {c.task_id} is {task.status}: only failed or upstream_failed tasks can be retried")
    return [TaskRedriven(task_id=c.task_id, occurred_at=now, producer=c.producer, reason=c.reason, actor=c.actor)]


@_decides(RedriveDeadLettered)
def _redrive_dead_lettered(state: None, c: RedriveDeadLettered, now: datetime) -> list[Event]:
    return [TaskRedriven(task_id=t, occurred_at=now, producer=c.producer, reason=c.reason, actor=c.actor)
            for t in dict.fromkeys(c.task_ids)]


@_decides(CreateSchedule)
def _create_schedule(state: ScheduleState | None, c: CreateSchedule, now: datetime) -> list[Event]:
    if state is not None:
        raise CommandRejected(f"schedule {c.schedule_id} already exists")
    return [ScheduleCreated(task_id=c.schedule_id, occurred_at=now, producer=c.producer, cron=c.cron,
                            timezone=c.timezone, template=c.template, name=c.name, start_at=c.start_at,
                            end_at=c.end_at, misfire=c.misfire, actor=c.actor)]


@_decides(DeleteSchedule)
def _delete_schedule(state: ScheduleState | None, c: DeleteSchedule, now: datetime) -> list[Event]:
    if not isinstance(state, ScheduleState):
        raise NotFound(f"schedule {c.schedule_id} not found")
    if state.status == ScheduleStatus.DELETED.value:
        raise CommandRejected(f"schedule {c.schedule_id} is already deleted")
    return [ScheduleDeleted(task_id=c.schedule_id, occurred_at=now, producer=c.producer, reason=c.reason,
                            actor=c.actor)]


def workflow_problems(graph: Sequence[tuple[str, Sequence[str]]]) -> list[tuple[str, str]]:
    """Why a workflow's graph cannot be submitted, as ``(field, message)``; empty for a DAG of its own keys.

    ``graph`` is ``(key, depends_on keys)`` per task, in request order (fields
    are named ``tasks[i]...``): duplicate keys, dependencies on keys the
    workflow does not have, then (only when those are fine) one cycle.
    """
    errors: list[tuple[str, str]] = []
    index: dict[str, int] = {}
    for i, (key, _) in enumerate(graph):
        if key in index:
            errors.append((f"tasks[{i}].key", f"duplicate key {key!r} (also tasks[{index[key]}].key)"))
        else:
            index[key] = i
    for i, (_, deps) in enumerate(graph):
        errors += [(f"tasks[{i}].depends_on[{j}]", f"unknown key {dep!r}: not a key of this workflow")
                   for j, dep in enumerate(deps) if dep not in index]
    if errors:
        return errors
    try:
        TopologicalSorter(dict(graph)).prepare()
    except CycleError as exc:
        cycle = list(reversed(exc.args[1]))  # graphlib lists it upstream first; show "depends on" order
        return [(f"tasks[{index[cycle[0]]}].depends_on", "dependency cycle: " + " -> ".join(repr(k) for k in cycle)
                 + f" (keys {', '.join(repr(k) for k in sorted(set(cycle)))})")]
    return []


def check_workflow(graph: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Raise ``ValidationError`` naming every problem of ``workflow_problems``; nothing for a good graph."""
    problems = workflow_problems(graph)
    if problems:
        raise ValidationError.of(problems)
