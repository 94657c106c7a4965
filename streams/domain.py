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

============== ======================= ==========================================
event          applies when            result
============== ======================= ==========================================
TaskCreated    no state yet            ``scheduled`` if run_at else ``pending``
TaskQueued(n)  not terminal, n > attempt ``queued``, attempt = n
TaskStarted(n) queued, n == attempt    ``running``
TaskSucceeded  queued/running, current ``succeeded``
TaskFailed     queued/running, current ``failed`` if permanent or n >= max_attempts,
                                       else ``scheduled`` (waiting to be queued again)
DependencyRegistered not terminal      ``dependent`` added to ``dependents``
 (on the upstream)
DependencyResolved   not terminal,     ``resolved[upstream] = outcome``; anything but
 (on the dependent)  a dependency,     ``succeeded`` -> ``upstream_failed``
                     not yet resolved
TaskCancelled  not terminal            ``cancelled``
TaskUpdated    pending/scheduled, at   the given fields changed
               expected_version
============== ======================= ==========================================

Dependencies (DESIGN §5) travel by events only: after folding B's
TaskCreated the processor appends ``DependencyRegistered(A, dependent=B)``
keyed by each upstream A; A's owner records B and, when A is terminal (then
or later), appends ``DependencyResolved(B, upstream=A, outcome)`` keyed by
B. An upstream that does not exist resolves as ``unknown`` (a failure). B is
queued when every dependency resolved ``succeeded``.

Anything else is a duplicate or stale and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from taskstream.schemas import (
    CommandRejected,
    DependencyRegistered,
    DependencyResolved,
    TaskCancelled,
    TaskUpdated,
    Event,
    ReadyTask,
    Status,
    TaskCreated,
    TaskFailed,
    TaskQueued,
    TaskStarted,
    TaskState,
    TaskSucceeded,
)
from taskstream.schemas import codec
from taskstream.schemas.events import initial_state

PROCESSOR = "processor"
#: Results larger than this (JSON text, bytes) are not carried downstream in
#: DependencyResolved: the dependent's ``ctx.upstream`` holds None for them.
RESULT_BOUND = 64 * 1024
UNKNOWN = "unknown"
ACTIVE = frozenset({Status.QUEUED.value, Status.RUNNING.value})
TERMINAL_VALUES = frozenset(s.value for s in (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.UPSTREAM_FAILED))


@dataclass(frozen=True, slots=True, kw_only=True)
class SubmitTask:
    """Command: a client asks for a new task (validated at the HTTP edge)."""

    task_id: str
    handler: str
    producer: str
    priority: str = "medium"
    payload: str = "null"
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    depends_on: list[str] = field(default_factory=list)
    run_at: datetime | None = None
    timeout_s: float | None = None
    max_attempts: int = 1


def is_terminal(state: TaskState | None) -> bool:
    return state is not None and state.status in TERMINAL_VALUES


# --------------------------------------------------------------------- evolve


def _bump(state: TaskState, at: datetime, **changes) -> TaskState:
    return replace(state, updated_at=at, version=state.version + 1, **changes)


_evolvers: dict[type, object] = {}


def _on(event_type):
    def register(fn):
        _evolvers[event_type] = fn
        return fn

    return register


def evolve(state: TaskState | None, event: Event) -> TaskState | None:
    """Fold one event; unknown event types change nothing (forward compatibility)."""
    fn = _evolvers.get(type(event))
    return state if fn is None else fn(state, event)


@_on(TaskCreated)
def _created(state: TaskState | None, e: TaskCreated) -> TaskState | None:
    if state is not None:
        return state
    return initial_state(e)


@_on(TaskQueued)
def _queued(state: TaskState | None, e: TaskQueued) -> TaskState | None:
    if state is None or state.status in TERMINAL_VALUES or e.attempt <= state.attempt:
        return state
    return _bump(state, e.occurred_at, status=Status.QUEUED.value, attempt=e.attempt, priority=e.priority)


@_on(TaskStarted)
def _started(state: TaskState | None, e: TaskStarted) -> TaskState | None:
    if state is None or e.attempt != state.attempt or state.status != Status.QUEUED.value:
        return state
    return _bump(state, e.occurred_at, status=Status.RUNNING.value, started_at=e.occurred_at)


@_on(TaskSucceeded)
def _succeeded(state: TaskState | None, e: TaskSucceeded) -> TaskState | None:
    if state is None or e.attempt != state.attempt or state.status not in ACTIVE:
        return state
    return _bump(
        state,
        e.occurred_at,
        status=Status.SUCCEEDED.value,
        result=e.result,
        error=None,
        started_at=e.started_at or state.started_at,
        finished_at=e.occurred_at,
    )


@_on(TaskFailed)
def _failed(state: TaskState | None, e: TaskFailed) -> TaskState | None:
    if state is None or e.attempt != state.attempt or state.status not in ACTIVE:
        return state
    started_at = e.started_at or state.started_at
    if e.permanent or e.attempt >= state.max_attempts:
        return _bump(
            state, e.occurred_at, status=Status.FAILED.value, error=e.error, started_at=started_at, finished_at=e.occurred_at
        )
    return _bump(state, e.occurred_at, status=Status.SCHEDULED.value, error=e.error, started_at=started_at)


@_on(DependencyRegistered)
def _registered(state: TaskState | None, e: DependencyRegistered) -> TaskState | None:
    # A terminal task stays as it is: the processor answers the registration at once (decide).
    if state is None or state.status in TERMINAL_VALUES or e.dependent in state.dependents:
        return state
    return _bump(state, e.occurred_at, dependents=[*state.dependents, e.dependent])


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
    results = {**state.upstream_results, e.upstream: e.result if e.result is not None else "null"}
    if e.outcome != Status.SUCCEEDED.value:
        return _bump(
            state,
            e.occurred_at,
            resolved=resolved,
            upstream_results=results,
            status=Status.UPSTREAM_FAILED.value,
            error=f"dependency {e.upstream} {e.outcome}",
            finished_at=e.occurred_at,
        )
    return _bump(state, e.occurred_at, resolved=resolved, upstream_results=results)


@_on(TaskCancelled)
def _cancelled(state: TaskState | None, e: TaskCancelled) -> TaskState | None:
    if state is None or state.status in TERMINAL_VALUES:
        return state
    return _bump(
        state,
        e.occurred_at,
        status=Status.CANCELLED.value,
        error=f"cancelled: {e.reason}" if e.reason else "cancelled",
        finished_at=e.occurred_at,
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
        for name in ("priority", "payload", "run_at", "timeout_s", "max_attempts")
        if (value := getattr(e, name)) is not None
    }
    if not changes:
        return state
    return _bump(state, e.occurred_at, **changes)


def fold(events, state: TaskState | None = None) -> TaskState | None:
    """Fold a sequence of events of one task, oldest first."""
    for event in events:
        state = evolve(state, event)
    return state


# --------------------------------------------------------------------- decide


def decide(state: TaskState | None, input, now: datetime) -> list[Event]:
    """Events that follow from a command or from an event the processor just folded.

    For an event, ``state`` is the state *after* folding it. Raises
    ``CommandRejected`` for an impossible command; harmless duplicates give ``[]``.
    """
    fn = _deciders.get(type(input))
    return [] if fn is None else fn(state, input, now)


_deciders: dict[type, object] = {}


def _decides(input_type):
    def register(fn):
        _deciders[input_type] = fn
        return fn

    return register


@_decides(SubmitTask)
def _submit(state: TaskState | None, c: SubmitTask, now: datetime) -> list[Event]:
    if state is not None:
        raise CommandRejected(f"task {c.task_id} already exists")
    return [
        TaskCreated(
            task_id=c.task_id,
            occurred_at=now,
            producer=c.producer,
            name=c.name,
            handler=c.handler,
            priority=c.priority,
            payload=c.payload,
            labels=dict(c.labels),
            depends_on=list(c.depends_on),
            run_at=c.run_at,
            timeout_s=c.timeout_s,
            max_attempts=c.max_attempts,
        )
    ]


def _queue_next(state: TaskState, now: datetime) -> list[Event]:
    return [TaskQueued(task_id=state.task_id, occurred_at=now, producer=PROCESSOR, attempt=state.attempt + 1, priority=state.priority)]


@_decides(TaskCreated)
def _after_created(state: TaskState | None, e: TaskCreated, now: datetime) -> list[Event]:
    if state is None:
        return []
    if is_ready(state, now):
        return _queue_next(state, now)
    return registrations(state, now)


def registrations(state: TaskState, now: datetime) -> list[Event]:
    """A pending task registers with every upstream it has not heard from."""
    if state.status != Status.PENDING.value:
        return []
    return [
        DependencyRegistered(task_id=upstream, occurred_at=now, producer=PROCESSOR, dependent=state.task_id)
        for upstream in dict.fromkeys(state.depends_on)
        if upstream not in state.resolved
    ]


@_decides(DependencyRegistered)
def _after_registered(state: TaskState | None, e: DependencyRegistered, now: datetime) -> list[Event]:
    # ``state`` is the upstream's. Unknown upstream: resolve as failed; terminal: resolve now.
    if state is None:
        return [DependencyResolved(task_id=e.dependent, occurred_at=now, producer=PROCESSOR, upstream=e.task_id,
                                   outcome=UNKNOWN)]
    if state.status in TERMINAL_VALUES:
        return [resolution(state, e.dependent, now)]
    return []


@_decides(DependencyResolved)
def _after_resolved(state: TaskState | None, e: DependencyResolved, now: datetime) -> list[Event]:
    return _queue_next(state, now) if is_ready(state, now) else []


def resolution(state: TaskState, dependent: str, now: datetime) -> DependencyResolved:
    """What a terminal upstream tells a dependent, with its result bounded to RESULT_BOUND."""
    result, truncated = state.result, False
    if result is not None and len(result.encode()) > RESULT_BOUND:
        result, truncated = None, True
    return DependencyResolved(task_id=dependent, occurred_at=now, producer=PROCESSOR, upstream=state.task_id,
                              outcome=state.status, result=result, result_truncated=truncated)


def react(before: TaskState | None, after: TaskState | None, event: Event, now: datetime) -> list[Event]:
    """Everything the processor appends after folding ``event`` into a task (``before`` -> ``after``).

    ``decide``'s reactions, plus the resolutions a task owes its dependents
    the moment it ends.
    """
    out = decide(after, event, now)
    if after is not None and not is_terminal(before) and is_terminal(after):
        out += [resolution(after, d, now) for d in after.dependents]
    return out


def replay_outputs(state: TaskState, now: datetime) -> list[Event]:
    """The events a state implies for others; sent again when its last event is folded twice."""
    if state.status == Status.QUEUED.value:
        return [TaskQueued(task_id=state.task_id, occurred_at=now, producer=PROCESSOR, attempt=state.attempt,
                           priority=state.priority)]
    if state.status == Status.PENDING.value:
        return registrations(state, now)
    if state.status in TERMINAL_VALUES:
        return [resolution(state, d, now) for d in state.dependents]
    return []


@_decides(TaskFailed)
def _after_failed(state: TaskState | None, e: TaskFailed, now: datetime) -> list[Event]:
    # Backoff arrives with the retry topics; until then a retryable failure is re-queued at once.
    if state is not None and state.status == Status.SCHEDULED.value and state.attempt == e.attempt:
        return _queue_next(state, now)
    return []


def is_ready(state: TaskState | None, now: datetime) -> bool:
    """A task waiting for nothing: every dependency succeeded, its time has come, never queued."""
    if state is None or state.attempt != 0:
        return False
    if state.status == Status.PENDING.value:
        deps_met = all(state.resolved.get(d) == Status.SUCCEEDED.value for d in state.depends_on)
        return deps_met and (state.run_at is None or state.run_at <= now)
    if state.status == Status.SCHEDULED.value:
        return state.run_at is not None and state.run_at <= now
    return False


def ready_message(state: TaskState, now: datetime) -> ReadyTask:
    """The message an executor receives for the state's current attempt."""
    return ReadyTask(
        task_id=state.task_id,
        occurred_at=now,
        producer=PROCESSOR,
        attempt=state.attempt,
        handler=state.handler,
        priority=state.priority,
        payload=state.payload,
        timeout_s=state.timeout_s,
        upstream=upstream_json(state),
    )


def upstream_json(state: TaskState) -> str:
    """``ctx.upstream`` for the handler: dependency id, and workflow key, -> its result."""
    if not state.upstream_results:
        return "{}"
    out = {}
    for upstream, text in state.upstream_results.items():
        value = codec.loads_json(text)
        out[upstream] = value
        if key := state.upstream_keys.get(upstream):
            out[key] = value
    return codec.dumps_json(out)
