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

from collections.abc import Callable, Sequence
from datetime import datetime
from graphlib import CycleError, TopologicalSorter
from typing import Any, Protocol, TypeVar

from taskstream.schemas import (
    CommandRejected,
    Event,
    NotFound,
    ScheduleState,
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
    COMMANDS,
    PATCHABLE,
    CancelTask,
    RedriveDeadLettered,
    RedriveTask,
    SubmitTask,
    UpdateTask,
)
from .evolve import TERMINAL_VALUES, UPDATABLE
from .ids import UNSET, command_cause, identified
from .slots import concurrency_key_of, rate_of

#: Statuses a redrive re-opens.
REDRIVABLE = frozenset({Status.FAILED.value, Status.UPSTREAM_FAILED.value})


def decide(state: TaskState | ScheduleState | None, input: object, now: datetime) -> list[Event]:
    """The events that answer a command, or that follow from an event the processor just folded.

    ``state`` is the state of the command's (or event's) aggregate, a
    ``TaskState`` or a ``ScheduleState``; for an event it is the state
    *after* folding it (``react``). Raises ``NotFound``, ``StaleVersion`` or
    ``CommandRejected`` for a command that cannot be carried out; harmless
    duplicates of events give ``[]``. A key that holds the other kind of
    aggregate (a task id naming a schedule, or the reverse) answers a command
    ``NotFound`` and an event as if nothing were there (a registration with a
    schedule's id resolves ``unknown``: the dependent must not wait forever).
    """
    events = decided(state, input, now)
    if not events:
        return events
    return identified(events, input.event_id if isinstance(input, Event) else command_cause(state, input, now))


def decided(state: TaskState | ScheduleState | None, input: object, now: datetime) -> list[Event]:
    """``decide`` before its events are identified (``react`` and ``step`` identify them with the rest)."""
    entry = _deciders.get(type(input))
    if entry is None:
        return []
    aggregate, fn = entry
    if state is not None and type(state) is not aggregate:
        if isinstance(input, COMMANDS):
            ident = getattr(input, "task_id", None) or getattr(input, "schedule_id", None) or getattr(input, "name", "")
            noun, other = ("task", "schedule") if aggregate is TaskState else ("schedule", "task")
            raise NotFound(f"{noun} {ident} not found: {ident} is a {other}")
        state = None
    events: list[Event] = fn(state, input, now)
    return events


_F = TypeVar("_F", bound=Callable[..., Any])
#: command or event type -> (the state type of its aggregate, its decider)
_deciders: dict[type, tuple[type, Callable[[Any, Any, datetime], list[Event]]]] = {}


def _decides(input_type: type, aggregate: type = TaskState) -> Callable[[_F], _F]:
    """Register the decider of ``input_type``, a command or event of ``aggregate``."""

    def register(fn: _F) -> _F:
        _deciders[input_type] = (aggregate, fn)
        return fn

    return register


class _Deletable(Protocol):
    @property
    def status(self) -> str: ...


_A = TypeVar("_A", bound=_Deletable)
#: The status of a deleted schedule or trigger (``ScheduleStatus.DELETED`` and ``TriggerStatus.DELETED``).
DELETED = "deleted"


def existing(state: _A | None, kind: str, ident: str, action: str) -> _A:
    """The state of the schedule or trigger (``kind``) a command acts on: ``NotFound`` without one,
    ``CommandRejected`` once it is deleted (a deleted one cannot be ``action``, e.g. "paused")."""
    if state is None:
        raise NotFound(f"{kind} {ident} not found")
    if state.status == DELETED:
        raise CommandRejected(f"{kind} {ident} is deleted: it cannot be {action}")
    return state


def _task(state: TaskState | None, task_id: str) -> TaskState:
    if state is None:
        raise NotFound(f"task {task_id} not found")
    return state


@_decides(SubmitTask)
def _submit(state: TaskState | None, c: SubmitTask, now: datetime) -> list[Event]:
    if state is not None:
        raise CommandRejected(f"task {c.task_id} already exists")
    key = None
    rate, per_s = rate_of(c.concurrency_rate, c.concurrency_per_s)
    if c.concurrency_key is not None:
        if c.concurrency_limit is None and rate is None:
            raise ValidationError("concurrency.limit", "a concurrency key needs a limit, a rate (with per_s) or both")
        key = concurrency_key_of(c.concurrency_key, c.payload)
    return [
        TaskCreated(
            event_id=UNSET,
            task_id=c.task_id, occurred_at=now, producer=c.producer, name=c.name, handler=c.handler,
            priority=c.priority, payload=c.payload, labels=dict(c.labels), depends_on=list(c.depends_on),
            run_at=c.run_at, timeout_s=c.timeout_s, max_attempts=c.max_attempts,
            backoff_initial_s=c.backoff_initial_s, backoff_multiplier=c.backoff_multiplier,
            backoff_max_s=c.backoff_max_s, backoff_jitter=c.backoff_jitter, key=c.key, workflow_id=c.workflow_id,
            upstream_keys=dict(c.upstream_keys), idempotency_key=c.idempotency_key, request_hash=c.request_hash,
            actor=c.actor, concurrency_key=key, concurrency_limit=c.concurrency_limit if key is not None else None,
            concurrency_rate=rate if key is not None else None, concurrency_per_s=per_s if key is not None else None,
            traceparent=c.traceparent, tracestate=c.tracestate,
        )
    ]


@_decides(UpdateTask)
def _update(state: TaskState | None, c: UpdateTask, now: datetime) -> list[Event]:
    """PATCH of a task that has not started (pending or scheduled, attempt 0).

    A held task (``waiting_for``: a pause, a handler's limit or rate, a
    concurrency key) may be changed and stays held: the update's reaction
    queues only a task that waits for nothing (``is_ready``), so only its
    TaskReleased or SlotGranted admits it, with the new values. Its
    ``run_at`` cannot change: it was ready when it was held.
    """
    task = _task(state, c.task_id)
    if c.expected_version is not None and c.expected_version != task.version:
        raise StaleVersion(f"task {c.task_id} is at version {task.version}, not {c.expected_version}", task.version)
    if task.status not in UPDATABLE or task.attempt != 0:  # a retry waiting in `scheduled` has started
        raise CommandRejected(
            f"task {c.task_id} is {task.status}: already started or queued, it can no longer be changed")
    unknown = set(c.changes) - set(PATCHABLE)
    if unknown:
        raise CommandRejected(f"fields {sorted(unknown)} of a task cannot be changed")
    if task.waiting_for is not None and c.changes.get("run_at") not in (None, task.run_at):
        # Held (a pause, a handler limit, a concurrency key): the task was ready, its time had come; only its
        # release or slot admits it, and neither waits for a time. Docs: docs/decisions/0029-handler-rates.md.
        raise CommandRejected(
            f"task {c.task_id} is ready and waits for {task.waiting_for}: its run_at can no longer be changed")
    # UpdateTask.changes holds values of the fields' own types (its contract); dict[str, object] cannot say so
    patch: dict[str, Any] = {name: c.changes.get(name) for name in PATCHABLE}
    return [TaskUpdated(event_id=UNSET, task_id=c.task_id, occurred_at=now, producer=c.producer, actor=c.actor,
                        expected_version=task.version, **patch)]


@_decides(CancelTask)
def _cancel(state: TaskState | None, c: CancelTask, now: datetime) -> list[Event]:
    task = _task(state, c.task_id)
    if task.status in TERMINAL_VALUES:
        raise CommandRejected(f"task {c.task_id} is already {task.status}")
    return [TaskCancelled(event_id=UNSET, task_id=c.task_id, occurred_at=now, producer=c.producer, reason=c.reason,
                          actor=c.actor)]


@_decides(RedriveTask)
def _redrive(state: TaskState | None, c: RedriveTask, now: datetime) -> list[Event]:
    task = _task(state, c.task_id)
    if task.status not in REDRIVABLE:
        raise CommandRejected(
            f"task {c.task_id} is {task.status}: only failed or upstream_failed tasks can be retried")
    return [TaskRedriven(event_id=UNSET, task_id=c.task_id, occurred_at=now, producer=c.producer, reason=c.reason,
                         actor=c.actor)]


@_decides(RedriveDeadLettered)
def _redrive_dead_lettered(state: None, c: RedriveDeadLettered, now: datetime) -> list[Event]:
    return [TaskRedriven(event_id=UNSET, task_id=t, occurred_at=now, producer=c.producer, reason=c.reason,
                         actor=c.actor)
            for t in dict.fromkeys(c.task_ids)]


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
