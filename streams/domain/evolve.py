"""The task state machine: pure, no Kafka, no clock, no I/O (the decider shape).

``evolve(state, event) -> state`` folds one fact of the log into a task's
state. It never fails on an event that is in the log and it is idempotent:
an event that was already applied, or one from an attempt that is no longer
current (a zombie executor's late result), returns the state unchanged --
the very same object, so callers can tell "nothing changed" with ``is``.

``decide(state, input, now) -> events`` turns a client command into events
(raising ``CommandRejected`` when impossible) and, for the processor, says
which events follow from an event it just folded (a created task is queued,
a failed attempt with attempts left is queued again).

Transitions (event -> from status -> to status):

==================== ============================== ==========================================
event                applies when                   result
==================== ============================== ==========================================
TaskCreated          no state yet                   ``scheduled`` if run_at and no deps, else ``pending``
TaskQueued(n)        pending (deps all succeeded)   ``queued``, attempt = n, retry_at cleared
                     or scheduled with due_at ==
                     waiting_until; n > attempt
TaskStarted(n)       queued, n == attempt           ``running``
TaskSucceeded        queued/running, current        ``succeeded``
TaskFailed,          queued/running (LeaseExpired:  ``failed`` if permanent or no attempts left,
LeaseExpired         running only), current         else ``scheduled`` (retry_at set next)
TaskRetryScheduled   scheduled, current attempt     retry_at = not_before
                     > 0, retry_at not yet set
TaskCheckpointed     queued/running, current,       checkpoint = data
                     new data
TaskRedriven         failed                         ``scheduled``, due now, fresh budget
                     upstream_failed                ``pending``, failed resolutions dropped
TaskDeadLettered     never                          (a record for the dlq)
DependencyRegistered any state                      version bumped; the dependent is an edge outside
 (on the upstream)                                  the state (``dependents.recorded``); a terminal
                                                    upstream's outcome is decided at once; not from
                                                    itself or one of its own dependencies (a cycle:
                                                    decide answers ``unknown``, no edge)
DependencyResolved   not terminal, a dependency,    ``resolved[upstream] = outcome``; anything but
 (on the dependent)  not yet resolved               ``succeeded`` -> ``upstream_failed``; the last
                                                    success of a pending task with run_at ->
                                                    ``scheduled``
TaskCancelled        not terminal                   ``cancelled``
TaskUpdated          pending/scheduled, attempt 0,  the given fields that differ changed
                     at expected_version
==================== ============================== ==========================================

Terminal states are final but for registrations (a redrive re-opens a task
and its dependents must be known then: they are edges, ``dependents.py``)
and TaskRedriven.

Dependencies (DESIGN §5) travel by events only: after folding B's
TaskCreated the processor appends ``DependencyRegistered(A, dependent=B)``
keyed by each upstream A; A's owner records the edge A -> B and, when A is terminal (then
or later), appends ``DependencyResolved(B, upstream=A, outcome)`` keyed by
B. An upstream that does not exist resolves as ``unknown`` (a failure). B is
queued when every dependency resolved ``succeeded``.

Sizes stay bounded whatever the log holds (``schemas.limits``): error texts,
types and tracebacks are cut, an oversized result or checkpoint is dropped (the executor already
fails such an attempt), an upstream's result is carried only while the
dependent's upstream results stay within MAX_UPSTREAM_RESULTS_BYTES.

Anything else is a duplicate or stale and changes nothing.
"""


from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeGuard, TypeVar

from taskstream.schemas import (
    SCHEDULE_EVENT_TYPES,
    TERMINAL,
    ControlState,
    DependencyRegistered,
    DependencyResolved,
    Event,
    GateState,
    LeaseExpired,
    ScheduleState,
    Status,
    TaskCancelled,
    TaskCheckpointed,
    TaskCreated,
    TaskDeadLettered,
    TaskFailed,
    TaskQueued,
    TaskRedriven,
    TaskRetryScheduled,
    TaskStarted,
    TaskState,
    TaskSucceeded,
    TaskUpdated,
    TriggerState,
)
from taskstream.schemas.limits import (
    LEGACY_MAX_DEPENDENTS,
    MAX_CHECKPOINT_BYTES,
    MAX_RESULT_BYTES,
    MAX_UPSTREAM_RESULT_BYTES,
    MAX_UPSTREAM_RESULTS_BYTES,
    cut_error,
    cut_error_type,
    cut_traceback,
)

from .commands import PATCHABLE
from .dependencies import closes_cycle

#: Results larger than this (JSON text, bytes) are not carried downstream in
#: DependencyResolved: the dependent's ``ctx.upstream`` holds None for them.
RESULT_BOUND = MAX_UPSTREAM_RESULT_BYTES
#: Outcome of a registration with an upstream that had LEGACY_MAX_DEPENDENTS dependents, in logs written before
#: dependents became edges (``dependents.py``); no longer decided, still folded.
TOO_MANY_DEPENDENTS = "too_many_dependents"
ACTIVE = frozenset({Status.QUEUED.value, Status.RUNNING.value})
WAITING = frozenset({Status.PENDING.value, Status.SCHEDULED.value})
#: The state of an aggregate: a task's or a schedule's (an event folds into a state of its own type).
_S = TypeVar("_S", TaskState, ScheduleState, ControlState)
#: A state of either aggregate, or one whose aggregate the caller does not know (``TaskState | ScheduleState``).
_AnyS = TypeVar("_AnyS", bound=TaskState | ScheduleState | GateState | ControlState | TriggerState)
#: The terminal statuses (``schemas.TERMINAL``; Status is a StrEnum, so its members match the strings in a state).
TERMINAL_VALUES = TERMINAL


#: A concurrency key's gate has this prefix and the key as its id (also the ``waiting_for`` of a task it holds).
GATE_PREFIX = "concurrency:"


#: A task held by a pause waits for ``paused:<target>`` (``controls.py``).
PAUSE_PREFIX = "paused:"


def gate_id(key: str) -> str:
    """The aggregate id (record key on ``<p>.events``) of the slots of concurrency key ``key`` (``gates.py``)."""
    return GATE_PREFIX + key


def _deps_met(state: TaskState) -> bool:
    return all(state.resolved.get(d) == Status.SUCCEEDED.value for d in state.depends_on)


def is_terminal(state: TaskState | None) -> TypeGuard[TaskState]:
    return state is not None and state.status in TERMINAL_VALUES


def is_queued(state: object) -> TypeGuard[TaskState]:
    """True while a task's attempt waits in a ready topic for an executor (queue depth, the oldest waiting)."""
    return isinstance(state, TaskState) and state.status == Status.QUEUED.value


def holds_lease(state: object) -> TypeGuard[TaskState]:
    """True while an attempt runs: the processor holds a lease on it until a heartbeat, result or expiry."""
    return isinstance(state, TaskState) and state.status == Status.RUNNING.value


def first_queued_after_wait(before: object, after: object) -> bool:
    """True when a task that waited for its dependencies is queued for its first attempt (the dependency wait ends)."""
    return (isinstance(before, TaskState) and isinstance(after, TaskState) and bool(after.depends_on)
            and after.attempt == 1 and before.status == Status.PENDING.value and after.status == Status.QUEUED.value)


def at_offset(state: _AnyS, offset: int) -> _AnyS:
    """``state`` as folded up to the log record at ``offset`` (its ``last_offset``: what a replay skips)."""
    return replace(state, last_offset=offset)


# --------------------------------------------------------------------- evolve


def _bump(state: TaskState, at: datetime, **changes: Any) -> TaskState:
    """``state`` with ``changes``, one version on. ``error_type`` and ``traceback`` describe ``error``: a change
    of ``error`` that does not give them (any error but a TaskFailed's) clears them."""
    if "error" in changes and "error_type" not in changes:
        changes.update(error_type=None, traceback=None)
    return replace(state, updated_at=at, version=state.version + 1, **changes)


_F = TypeVar("_F", bound=Callable[..., Any])
#: event type -> (the state type of its aggregate, its evolver)
_evolvers: dict[type, tuple[type, Callable[[Any, Any], Any]]] = {}


def _on(event_type: type, aggregate: type = TaskState) -> Callable[[_F], _F]:
    """Register the evolver of ``event_type``, an event of the ``aggregate`` whose state it folds into."""

    def register(fn: _F) -> _F:
        _evolvers[event_type] = (aggregate, fn)
        return fn

    return register


def evolve(state: _S | None, event: Event) -> _S | None:
    """Fold one event into the state of its aggregate (a ``TaskState``, a ``ScheduleState``, or None).

    Unknown event types change nothing (forward compatibility). An event of
    one kind of aggregate never touches a state of the other, whatever the log
    holds (a task may name a schedule's id in depends_on). An event no rule
    can fold (an evolver raises on values no producer of ours writes) changes
    nothing: the same for the processor, a rebuild and time travel, since all
    of them fold through here.
    """
    entry = _evolvers.get(type(event))
    if entry is None or (state is not None and type(state) is not entry[0]):
        return state
    try:
        folded: _S | None = entry[1](state, event)  # an evolver keeps its aggregate's state type
        return folded
    except Exception:
        return state


#: Events about a schedule (``schedules.py`` folds them into a ``ScheduleState``).
SCHEDULE_EVENTS = frozenset(SCHEDULE_EVENT_TYPES)


@_on(TaskCreated)
def _created(state: TaskState | None, e: TaskCreated) -> TaskState | None:
    if state is not None:
        return state
    return initial_state(e)


@_on(TaskQueued)
def _queued(state: TaskState | None, e: TaskQueued) -> TaskState | None:
    if state is None or state.status not in WAITING or e.attempt <= state.attempt:
        return state
    if state.status == Status.SCHEDULED.value and e.due_at != waiting_until(state):
        return state  # queued for a time the task no longer waits for (run_at changed, stale timer)
    if state.status == Status.PENDING.value and not _deps_met(state):
        return state  # nothing queues a task still waiting for its dependencies
    if state.waiting_for is not None and state.waiting_for.startswith(PAUSE_PREFIX):
        return state  # held by a pause: only its TaskReleased admits it (controls.py)
    if state.concurrency_key and (state.concurrency_limit is not None or state.concurrency_rate is not None):
        # Under a concurrency key the attempt waits for a slot (gates.py); its SlotGranted queues it.
        if state.waiting_for is not None:
            return state
        return _bump(state, e.occurred_at, status=Status.PENDING.value, waiting_for=gate_id(state.concurrency_key),
                     retry_at=None)
    return _bump(state, e.occurred_at, status=Status.QUEUED.value, attempt=e.attempt, priority=e.priority,
                 retry_at=None)


def waiting_until(state: TaskState) -> datetime | None:
    """The time a ``scheduled`` task waits for: its run_at before the first attempt, then its retry time."""
    until: datetime | None = state.retry_at if state.attempt > 0 else state.run_at
    return until


@_on(TaskStarted)
def _started(state: TaskState | None, e: TaskStarted) -> TaskState | None:
    if state is None or e.attempt != state.attempt or state.status != Status.QUEUED.value:
        return state
    return _bump(state, e.occurred_at, status=Status.RUNNING.value, started_at=e.occurred_at)


@_on(TaskSucceeded)
def _succeeded(state: TaskState | None, e: TaskSucceeded) -> TaskState | None:
    if state is None or e.attempt != state.attempt or state.status not in ACTIVE:
        return state
    result: str | None = e.result
    error: str | None = None
    if result is not None and (size := len(result.encode())) > MAX_RESULT_BYTES:
        # The executor fails such an attempt; a result written past it is dropped, so the state stays bounded.
        result, error = None, f"result dropped: {size:,} bytes > {MAX_RESULT_BYTES:,}"
    return _bump(
        state,
        e.occurred_at,
        status=Status.SUCCEEDED.value,
        result=result,
        error=error,
        started_at=e.started_at or state.started_at,
        finished_at=e.occurred_at,
    )


@_on(TaskFailed)
def _failed(state: TaskState | None, e: TaskFailed) -> TaskState | None:
    if state is None or e.attempt != state.attempt or state.status not in ACTIVE:
        return state
    why = dict(error_type=None if e.error_type is None else cut_error_type(e.error_type),
               traceback=None if e.traceback is None else cut_traceback(e.traceback))
    return _attempt_failed(state, e.occurred_at, e.error, e.permanent, e.started_at or state.started_at, **why)


def _attempt_failed(
    state: TaskState, at: datetime, error: str, permanent: bool, started_at: datetime | None,
    error_type: str | None = None, traceback: str | None = None,
) -> TaskState:
    why = dict(error=cut_error(error), error_type=error_type, traceback=traceback)
    if permanent or attempts_left(state) <= 0:
        return _bump(state, at, status=Status.FAILED.value, started_at=started_at, finished_at=at, **why)
    # Waiting for its retry: TaskRetryScheduled (decided next, applied in the same step) sets retry_at.
    return _bump(state, at, status=Status.SCHEDULED.value, started_at=started_at, retry_at=None, **why)


def attempts_left(state: TaskState) -> int:
    """Attempts the task may still make (its budget restarts at a redrive)."""
    left: int = state.max_attempts - (state.attempt - state.attempt_offset)
    return left


@_on(LeaseExpired)
def _lease_expired(state: TaskState | None, e: LeaseExpired) -> TaskState | None:
    if state is None or e.attempt != state.attempt or state.status != Status.RUNNING.value:
        return state
    error = f"LeaseExpired: no heartbeat nor result from the executor for {e.lease_s:g}s"
    return _attempt_failed(state, e.occurred_at, error, False, state.started_at)


@_on(TaskRetryScheduled)
def _retry_scheduled(state: TaskState | None, e: TaskRetryScheduled) -> TaskState | None:
    if (
        state is None
        or state.status != Status.SCHEDULED.value
        or e.attempt != state.attempt
        or state.attempt == 0  # waiting for its run_at, not for a retry
        or state.retry_at is not None
    ):
        return state
    return _bump(state, e.occurred_at, retry_at=e.not_before)


@_on(TaskCheckpointed)
def _checkpointed(state: TaskState | None, e: TaskCheckpointed) -> TaskState | None:
    if (
        state is None
        or e.attempt != state.attempt
        or state.status not in ACTIVE
        or state.checkpoint == e.data
        or len(e.data.encode()) > MAX_CHECKPOINT_BYTES  # refused by the executor; ignored if written past it
    ):
        return state
    return _bump(state, e.occurred_at, checkpoint=e.data)


@_on(TaskRedriven)
def _redriven(state: TaskState | None, e: TaskRedriven) -> TaskState | None:
    if state is None:
        return state
    common = dict(attempt_offset=state.attempt, finished_at=None, result=None)
    if state.status == Status.FAILED.value:
        # Due at once: decide queues the next attempt in the same step.
        return _bump(state, e.occurred_at, status=Status.SCHEDULED.value, retry_at=e.occurred_at, **common)
    if state.status == Status.UPSTREAM_FAILED.value:
        resolved = {u: o for u, o in state.resolved.items() if o == Status.SUCCEEDED.value}
        results = {u: r for u, r in state.upstream_results.items() if u in resolved}
        return _bump(state, e.occurred_at, status=Status.PENDING.value, resolved=resolved, upstream_results=results,
                     error=None, **common)
    return state


@_on(TaskDeadLettered)
def _dead_lettered(state: TaskState | None, e: TaskDeadLettered) -> TaskState | None:
    return state  # a record of what happened; the TaskFailed before it already made the task `failed`


@_on(DependencyRegistered)
def _registered(state: TaskState | None, e: DependencyRegistered) -> TaskState | None:
    # The dependent is an edge outside the state (dependents.recorded), also for a terminal task (a redrive
    # re-opens it; decide answers at once); the state only counts the change, so its record stays bounded.
    if state is None or closes_cycle(state, e.dependent):  # decide resolves it unknown
        return state
    return _bump(state, e.occurred_at)


@_on(DependencyResolved)
def _resolved(state: TaskState | None, e: DependencyResolved) -> TaskState | None:
    if (
        state is None
        or state.status in TERMINAL_VALUES
        or e.upstream not in state.depends_on
        or e.upstream in state.resolved
    ):
        return state
    resolved = {**state.resolved, e.upstream: e.outcome}
    results = {**state.upstream_results, e.upstream: _carried(state, e.result)}
    if e.outcome != Status.SUCCEEDED.value:
        reason = (f"has more than {LEGACY_MAX_DEPENDENTS:,} dependents" if e.outcome == TOO_MANY_DEPENDENTS
                  else e.outcome)
        return _bump(
            state,
            e.occurred_at,
            resolved=resolved,
            upstream_results=results,
            status=Status.UPSTREAM_FAILED.value,
            error=cut_error(f"dependency {e.upstream} {reason}"),
            finished_at=e.occurred_at,
        )
    met = all(resolved.get(d) == Status.SUCCEEDED.value for d in state.depends_on)
    pending = state.status == Status.PENDING.value
    status = Status.SCHEDULED.value if pending and met and state.run_at is not None else state.status
    return _bump(state, e.occurred_at, resolved=resolved, upstream_results=results, status=status)


def _carried(state: TaskState, result: str | None) -> str:
    """An upstream's result as the dependent keeps it: null once all it holds would pass MAX_UPSTREAM_RESULTS_BYTES."""
    if result is None or result == "null":
        return "null"
    held = sum(len(r.encode()) for r in state.upstream_results.values())
    if len(result.encode()) > MAX_UPSTREAM_RESULT_BYTES or held + len(result.encode()) > MAX_UPSTREAM_RESULTS_BYTES:
        return "null"
    return result


@_on(TaskCancelled)
def _cancelled(state: TaskState | None, e: TaskCancelled) -> TaskState | None:
    if state is None or state.status in TERMINAL_VALUES:
        return state
    return _bump(
        state,
        e.occurred_at,
        status=Status.CANCELLED.value,
        error=cut_error(f"cancelled: {e.reason}") if e.reason else "cancelled",
        finished_at=e.occurred_at,
        retry_at=None,  # no retry is coming
        waiting_for=None,
    )


UPDATABLE = frozenset({Status.PENDING.value, Status.SCHEDULED.value})


@_on(TaskUpdated)
def _updated(state: TaskState | None, e: TaskUpdated) -> TaskState | None:
    if (
        state is None
        or state.status not in UPDATABLE
        or state.attempt != 0
        or (e.expected_version is not None and e.expected_version != state.version)
    ):
        return state
    changes = {
        name: value
        for name in PATCHABLE
        if (value := getattr(e, name)) is not None and value != getattr(state, name)
    }
    # Values it already has change nothing: folded twice, an update without expected_version is a no-op.
    if not changes:
        return state
    return _bump(state, e.occurred_at, **changes)


def fold(events: Iterable[Event], state: TaskState | None = None) -> TaskState | None:
    """Fold a sequence of events of one task, oldest first."""
    for event in events:
        state = evolve(state, event)
    return state


def initial_state(e: TaskCreated) -> TaskState:
    """The state a task starts in: ``pending`` while it has dependencies, else
    ``scheduled`` if it has a run_at, else ``pending``.

    The processor's fold (``streams.domain``) and the API's read-your-writes
    view of a task it just submitted both start from here.
    """
    return TaskState(
        task_id=e.task_id,
        name=e.name,
        handler=e.handler,
        status=Status.SCHEDULED.value if e.run_at is not None and not e.depends_on else Status.PENDING.value,
        priority=e.priority,
        payload=e.payload,
        labels=dict(e.labels),
        depends_on=list(e.depends_on),
        run_at=e.run_at,
        timeout_s=e.timeout_s,
        max_attempts=e.max_attempts,
        created_at=e.occurred_at,
        updated_at=e.occurred_at,
        version=1,
        upstream_keys=dict(e.upstream_keys),
        key=e.key,
        workflow_id=e.workflow_id,
        idempotency_key=e.idempotency_key,
        request_hash=e.request_hash,
        backoff_initial_s=e.backoff_initial_s,
        backoff_multiplier=e.backoff_multiplier,
        backoff_max_s=e.backoff_max_s,
        backoff_jitter=e.backoff_jitter,
        schedule_id=e.schedule_id,
        scheduled_for=e.scheduled_for,
        concurrency_key=e.concurrency_key,
        concurrency_limit=e.concurrency_limit,
        concurrency_rate=e.concurrency_rate,
        concurrency_per_s=e.concurrency_per_s,
        traceparent=e.traceparent,
        tracestate=e.tracestate,
    )
