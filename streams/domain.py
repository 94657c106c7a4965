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
DependencyRegistered any state, fewer than         ``dependent`` added to ``dependents`` (when full,
 (on the upstream)   MAX_DEPENDENTS dependents      decide answers ``too_many_dependents`` at once, or
                                                    the outcome of a terminal upstream, unrecorded)
DependencyResolved   not terminal, a dependency,    ``resolved[upstream] = outcome``; anything but
 (on the dependent)  not yet resolved               ``succeeded`` -> ``upstream_failed``; the last
                                                    success of a pending task with run_at ->
                                                    ``scheduled``
TaskCancelled        not terminal                   ``cancelled``
TaskUpdated          pending/scheduled, attempt 0,  the given fields that differ changed
                     at expected_version
==================== ============================== ==========================================

Terminal states are final but for ``dependents`` (a redrive re-opens a task
and its dependents must be known then) and TaskRedriven.

Dependencies (DESIGN §5) travel by events only: after folding B's
TaskCreated the processor appends ``DependencyRegistered(A, dependent=B)``
keyed by each upstream A; A's owner records B and, when A is terminal (then
or later), appends ``DependencyResolved(B, upstream=A, outcome)`` keyed by
B. An upstream that does not exist resolves as ``unknown`` (a failure). B is
queued when every dependency resolved ``succeeded``.

Sizes stay bounded whatever the log holds (``schemas.limits``): error texts
are cut, an oversized result or checkpoint is dropped (the executor already
fails such an attempt), an upstream's result is carried only while the
dependent's upstream results stay within MAX_UPSTREAM_RESULTS_BYTES.

Anything else is a duplicate or stale and changes nothing.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from taskstream.schemas import (
    CommandRejected,
    LeaseExpired,
    ScheduleCreated,
    ScheduleDeleted,
    ScheduleFired,
    ScheduleState,
    ScheduleStatus,
    TaskCheckpointed,
    TaskDeadLettered,
    TaskRedriven,
    TaskRetryScheduled,
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
from taskstream.schemas import MAX_BACKOFF_S as _MAX_BACKOFF_S
from taskstream.schemas import TERMINAL, codec, cron
from taskstream.schemas.events import initial_state
from taskstream.schemas.limits import (
    MAX_CHECKPOINT_BYTES,
    MAX_DEPENDENTS,
    MAX_RESULT_BYTES,
    MAX_UPSTREAM_RESULT_BYTES,
    MAX_UPSTREAM_RESULTS_BYTES,
    cut_error,
)

PROCESSOR = "processor"
#: Results larger than this (JSON text, bytes) are not carried downstream in
#: DependencyResolved: the dependent's ``ctx.upstream`` holds None for them.
RESULT_BOUND = MAX_UPSTREAM_RESULT_BYTES
UNKNOWN = "unknown"
#: Outcome of a registration with an upstream that already has MAX_DEPENDENTS dependents.
TOO_MANY_DEPENDENTS = "too_many_dependents"
ACTIVE = frozenset({Status.QUEUED.value, Status.RUNNING.value})
WAITING = frozenset({Status.PENDING.value, Status.SCHEDULED.value})
#: Retry policy used where a task carries none (tasks written before policies existed).
DEFAULT_BACKOFF = {"initial_s": 1.0, "multiplier": 2.0, "max_s": 300.0, "jitter": 0.1}
#: The terminal statuses (``schemas.TERMINAL``; Status is a StrEnum, so its members match the strings in a state).
TERMINAL_VALUES = TERMINAL


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
    """Fold one event; unknown event types change nothing (forward compatibility).

    Task events never touch a schedule's state nor schedule events a task's,
    whatever the log holds (a task may name a schedule's id in depends_on).
    An event no rule can fold (an evolver raises on values no producer of ours
    writes) changes nothing: the same for the processor, a rebuild and time
    travel, since all of them fold through here.
    """
    fn = _evolvers.get(type(event))
    if fn is None or (state is not None and isinstance(state, ScheduleState) != (type(event) in SCHEDULE_EVENTS)):
        return state
    try:
        return fn(state, event)
    except Exception:
        return state


SCHEDULE_EVENTS = frozenset({ScheduleCreated, ScheduleFired, ScheduleDeleted})


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
    return _bump(state, e.occurred_at, status=Status.QUEUED.value, attempt=e.attempt, priority=e.priority, retry_at=None)


def waiting_until(state: TaskState) -> datetime | None:
    """The time a ``scheduled`` task waits for: its run_at before the first attempt, then its retry time."""
    return state.retry_at if state.attempt > 0 else state.run_at


def _schedule_only(fn):
    """Evolvers of schedule events ignore task states (and the reverse), whatever a bad log holds."""

    def evolver(state, e):
        return state if isinstance(state, TaskState) else fn(state, e)

    return evolver


@_on(TaskStarted)
def _started(state: TaskState | None, e: TaskStarted) -> TaskState | None:
    if state is None or e.attempt != state.attempt or state.status != Status.QUEUED.value:
        return state
    return _bump(state, e.occurred_at, status=Status.RUNNING.value, started_at=e.occurred_at)


@_on(TaskSucceeded)
def _succeeded(state: TaskState | None, e: TaskSucceeded) -> TaskState | None:
    if state is None or e.attempt != state.attempt or state.status not in ACTIVE:
        return state
    result, error = e.result, None
    if result is not None and len(result.encode()) > MAX_RESULT_BYTES:
        # The executor fails such an attempt; a result written past it is dropped, so the state stays bounded.
        result, error = None, f"result dropped: {len(result.encode()):,} bytes > {MAX_RESULT_BYTES:,}"
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
    return _attempt_failed(state, e.occurred_at, e.error, e.permanent, e.started_at or state.started_at)


def _attempt_failed(state: TaskState, at: datetime, error: str, permanent: bool, started_at) -> TaskState:
    error = cut_error(error)
    if permanent or attempts_left(state) <= 0:
        return _bump(state, at, status=Status.FAILED.value, error=error, started_at=started_at, finished_at=at)
    # Waiting for its retry: TaskRetryScheduled (decided next, applied in the same step) sets retry_at.
    return _bump(state, at, status=Status.SCHEDULED.value, error=error, started_at=started_at, retry_at=None)


def attempts_left(state: TaskState) -> int:
    """Attempts the task may still make (its budget restarts at a redrive)."""
    return state.max_attempts - (state.attempt - state.attempt_offset)


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
    # A terminal task records the dependent too (a redrive re-opens it), and decide answers at once.
    # Past MAX_DEPENDENTS nothing more is recorded (the state must fit in one record): decide refuses it.
    if state is None or e.dependent in state.dependents or len(state.dependents) >= MAX_DEPENDENTS:
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
    results = {**state.upstream_results, e.upstream: _carried(state, e.result)}
    if e.outcome != Status.SUCCEEDED.value:
        reason = (f"has more than {MAX_DEPENDENTS:,} dependents" if e.outcome == TOO_MANY_DEPENDENTS
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
        for name in ("priority", "payload", "run_at", "timeout_s", "max_attempts", "backoff_initial_s",
                     "backoff_multiplier", "backoff_max_s", "backoff_jitter")
        if (value := getattr(e, name)) is not None and value != getattr(state, name)
    }
    # Values it already has change nothing: folded twice, an update without expected_version is a no-op.
    if not changes:
        return state
    return _bump(state, e.occurred_at, **changes)


def fold(events, state: TaskState | None = None) -> TaskState | None:
    """Fold a sequence of events of one task, oldest first."""
    for event in events:
        state = evolve(state, event)
    return state


def processor_order(events) -> list[Event]:
    """One task's events from the log, in the order the processor applied them.

    The processor applies its own follow-ups (a TaskQueued, a TaskRetryScheduled,
    stamped with ``cause``, their trigger's ``event_id``) inline, right after the
    trigger; in the log they land later, possibly behind client events of the
    same task. Each follow-up whose trigger came before it is moved back to
    just after that trigger (and after the trigger's earlier follow-ups).
    ``fold(processor_order(log))`` is the live state; ``streams.rebuild.LogFold``
    does the same incrementally for a whole log.
    """
    out: list[Event] = []
    for event in events:
        cause = getattr(event, "cause", None)
        at = next((i for i, e in enumerate(out) if e.event_id == cause), None) if cause else None
        if at is None:
            out.append(event)
            continue
        at += 1
        while at < len(out) and getattr(out[at], "cause", None) == cause:
            at += 1
        out.insert(at, event)
    return out


# --------------------------------------------------------------------- decide


def decide(state: TaskState | None, input, now: datetime) -> list[Event]:
    """Events that follow from a command or from an event the processor just folded.

    For an event, ``state`` is the state *after* folding it. Raises
    ``CommandRejected`` for an impossible command; harmless duplicates give ``[]``.
    """
    fn = _deciders.get(type(input))
    if fn is None:
        return []
    if isinstance(state, ScheduleState) and type(input) not in SCHEDULE_EVENTS:
        # A task event keyed by a schedule's id: only a registration is answered (the dependent must not wait forever).
        return [_unknown_upstream(input, now)] if isinstance(input, DependencyRegistered) else []
    return fn(state, input, now)


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
    due = waiting_until(state) if state.status == Status.SCHEDULED.value else None
    return [TaskQueued(task_id=state.task_id, occurred_at=now, producer=PROCESSOR, attempt=state.attempt + 1,
                       priority=state.priority, due_at=due)]


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
        return [_unknown_upstream(e, now)]
    if state.status in TERMINAL_VALUES:
        return [resolution(state, e.dependent, now)]
    if e.dependent not in state.dependents:  # full: see _registered
        return [DependencyResolved(task_id=e.dependent, occurred_at=now, producer=PROCESSOR, upstream=state.task_id,
                                   outcome=TOO_MANY_DEPENDENTS)]
    return []


def _unknown_upstream(e: DependencyRegistered, now: datetime) -> DependencyResolved:
    return DependencyResolved(task_id=e.dependent, occurred_at=now, producer=PROCESSOR, upstream=e.task_id,
                              outcome=UNKNOWN)


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
    out = [] if after is before and type(event) in CHANGE_DRIVEN else decide(after, event, now)
    if isinstance(after, TaskState) and not is_terminal(before) and is_terminal(after):
        out += [resolution(after, d, now) for d in after.dependents]
    return out


#: Events whose decisions follow from the change they made; folded again (a
#: duplicate) they change nothing and decide nothing.
CHANGE_DRIVEN = frozenset({TaskFailed, LeaseExpired, TaskRedriven, TaskUpdated, ScheduleCreated, ScheduleFired})


def replay_outputs(state: TaskState | ScheduleState, now: datetime, event: Event | None = None) -> list[Event]:
    """The events a state implies for others; sent again when its last event (``event``) is folded twice.

    The crash this repairs came between the table write and the sends, so the
    processor's own follow events (TaskQueued, TaskRetryScheduled), already in
    the state, may be missing from the log: they are sent again as they were
    (same time, same due time), so that folding the log still gives the state.
    What a redrive owes (its cascade to the dependents, and the due time of
    the attempt it queued) is not implied by the state alone: pass the
    TaskRedriven as ``event``.
    """
    if isinstance(state, ScheduleState):
        return schedule_replay(state, now)
    if state.status == Status.QUEUED.value:
        # The time the attempt waited for: the redrive's time, else run_at for the first attempt; an attempt
        # queued by the relay or a timer has its TaskQueued in the log already (this one is a duplicate).
        due = event.occurred_at if isinstance(event, TaskRedriven) else state.run_at if state.attempt == 1 else None
        out: list[Event] = [TaskQueued(task_id=state.task_id, occurred_at=state.updated_at, producer=PROCESSOR,
                                       attempt=state.attempt, priority=state.priority, due_at=due)]
    elif state.status == Status.PENDING.value:
        out = registrations(state, now)
    elif state.status == Status.SCHEDULED.value and state.attempt > 0 and state.retry_at is not None:
        delay = max(0.0, (state.retry_at - state.updated_at).total_seconds())
        out = [TaskRetryScheduled(task_id=state.task_id, occurred_at=state.updated_at, producer=PROCESSOR,
                                  attempt=state.attempt, not_before=state.retry_at, delay_s=delay,
                                  priority=state.priority, error=state.error or "")]
    elif state.status in TERMINAL_VALUES:
        out = [resolution(state, d, now) for d in state.dependents]
        # The dead letter again only if the last event may be the failure (not, e.g., a later registration).
        if state.status == Status.FAILED.value and (event is None or isinstance(event, (TaskFailed, LeaseExpired))):
            out.append(dead_lettered(state, now))
    else:
        out = []
    if isinstance(event, TaskRedriven) and state.status in WAITING | ACTIVE:
        out += _cascade(state, now)
    return out


@_decides(TaskFailed)
@_decides(LeaseExpired)
def _after_failed(state: TaskState | None, e: TaskFailed | LeaseExpired, now: datetime) -> list[Event]:
    """A failed attempt waits out its backoff (TaskRetryScheduled), or the task is dead-lettered."""
    if state is None or state.attempt != e.attempt:
        return []
    if state.status == Status.SCHEDULED.value and state.retry_at is None:
        return [retry_scheduled(state, now)]
    if state.status == Status.FAILED.value and state.finished_at == e.occurred_at:
        return [dead_lettered(state, now)]
    return []


def backoff_delay(state: TaskState, failed_attempt: int) -> float:
    """Seconds to wait after ``failed_attempt`` before the next one (DESIGN §6).

    ``min(max_s, initial_s * multiplier ** (k - 1)) * (1 - jitter * u)``, k the
    attempts since the last redrive and u in [0, 1) drawn from sha256(task id,
    attempt): deterministic, so replay gives the same waits, and spread, so a
    burst of failures does not come back at one instant. Jitter only shortens.
    """
    initial = state.backoff_initial_s if state.backoff_initial_s is not None else DEFAULT_BACKOFF["initial_s"]
    multiplier = state.backoff_multiplier if state.backoff_multiplier is not None else DEFAULT_BACKOFF["multiplier"]
    cap = state.backoff_max_s if state.backoff_max_s is not None else DEFAULT_BACKOFF["max_s"]
    jitter = state.backoff_jitter if state.backoff_jitter is not None else DEFAULT_BACKOFF["jitter"]
    k = max(1, failed_attempt - state.attempt_offset)
    try:
        base = min(cap, initial * multiplier ** (k - 1))
    except OverflowError:
        base = cap
    digest = hashlib.sha256(f"{state.task_id}:{failed_attempt}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    delay = base * (1.0 - jitter * u)
    # NaN (inf * 0) waits nothing; a wait beyond MAX_BACKOFF_S (a policy of absurd numbers) is cut to it,
    # so ``now + delay`` always fits in a datetime and deciding never raises.
    return min(max(0.0, delay), MAX_BACKOFF_S) if delay == delay else 0.0


#: Longest wait between attempts whatever the policy says: the one bound the API also checks (schemas.topics).
MAX_BACKOFF_S = _MAX_BACKOFF_S


def retry_scheduled(state: TaskState, now: datetime) -> TaskRetryScheduled:
    """The wait counts from the failure (the state's ``updated_at``, the failure's ``occurred_at``),
    not from when the processor folded it; a failure stamped in the future (a fast clock) counts from now."""
    delay = backoff_delay(state, state.attempt)
    start = min(state.updated_at, now)
    return TaskRetryScheduled(task_id=state.task_id, occurred_at=now, producer=PROCESSOR, attempt=state.attempt,
                              not_before=start + timedelta(seconds=delay), delay_s=delay, priority=state.priority,
                              error=state.error or "")


def dead_lettered(state: TaskState, now: datetime) -> TaskDeadLettered:
    return TaskDeadLettered(task_id=state.task_id, occurred_at=now, producer=PROCESSOR, attempt=state.attempt,
                            error=state.error or "", handler=state.handler, priority=state.priority)


@_decides(TaskRedriven)
def _after_redriven(state: TaskState | None, e: TaskRedriven, now: datetime) -> list[Event]:
    """Queue the re-opened task (or register it again with its upstreams) and re-open its dependents."""
    if state is None or state.updated_at != e.occurred_at or state.status not in WAITING:
        return []  # not re-opened by this event
    out = _queue_next(state, now) if is_ready(state, now) else registrations(state, now)
    return out + _cascade(state, now)


def _cascade(state: TaskState, now: datetime) -> list[Event]:
    return [TaskRedriven(task_id=d, occurred_at=now, producer=PROCESSOR, reason=f"upstream {state.task_id} re-driven")
            for d in state.dependents]


@_decides(TaskUpdated)
def _after_updated(state: TaskState | None, e: TaskUpdated, now: datetime) -> list[Event]:
    return _queue_next(state, now) if is_ready(state, now) else []


def is_ready(state: TaskState | None, now: datetime) -> bool:
    """A task waiting for nothing: every dependency succeeded and its time has come."""
    if state is None:
        return False
    if state.status == Status.PENDING.value:
        if state.attempt != 0:
            return False
        return _deps_met(state) and (state.run_at is None or state.run_at <= now)
    if state.status == Status.SCHEDULED.value:
        due = waiting_until(state)
        return due is not None and due <= now
    return False


def _deps_met(state: TaskState) -> bool:
    return all(state.resolved.get(d) == Status.SUCCEEDED.value for d in state.depends_on)


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
        last_checkpoint=state.checkpoint,
    )


def upstream_json(state: TaskState) -> str:
    """``ctx.upstream`` for the handler: dependency id, and workflow key, -> its result."""
    if not state.upstream_results:
        return "{}"
    out = {}
    for upstream, text in state.upstream_results.items():
        try:
            value = codec.loads_json(text)
        except codec.JSONDecodeError:  # not JSON (no producer of ours writes that): carried as null
            value = None
        out[upstream] = value
        if key := state.upstream_keys.get(upstream):
            out[key] = value
    return codec.dumps_json(out)


# ------------------------------------------------------------------ schedules

#: Most fire times counted one by one when a schedule catches up after downtime.
MISSED_COUNT_CAP = 1000
SCHEDULE_TASK_NAMESPACE = uuid.UUID("5b1e7c6e-6f1d-4d4b-9b7e-2f8f6c1a9d01")


def schedule_task_id(schedule_id: str, fire_at: datetime) -> str:
    """The id of the task a schedule creates for one fire time: the same on every replay and processor."""
    return uuid.uuid5(SCHEDULE_TASK_NAMESPACE, f"{schedule_id}@{fire_at.isoformat()}").hex


def _within(state: ScheduleState, t: datetime | None) -> datetime | None:
    """``t`` if the schedule still fires then (``end_at`` is inclusive, as in APScheduler and Airflow)."""
    return None if t is None or (state.end_at is not None and t > state.end_at) else t


@_on(ScheduleCreated)
def _schedule_created(state, e: ScheduleCreated):
    if state is not None:
        return state
    try:
        first = cron.first_fire(e.cron, e.timezone, e.start_at, e.occurred_at)
    except Exception:  # a bad expression in the log (the API validates): the schedule never fires
        first = None
    s = ScheduleState(schedule_id=e.task_id, cron=e.cron, timezone=e.timezone, template=e.template, name=e.name,
                      start_at=e.start_at, end_at=e.end_at, misfire=e.misfire, status=ScheduleStatus.ACTIVE.value,
                      created_at=e.occurred_at, updated_at=e.occurred_at, version=1)
    first = _within(s, first)
    return replace(s, next_fire_at=first, status=ScheduleStatus.ACTIVE.value if first else ScheduleStatus.ENDED.value)


@_on(ScheduleFired)
@_schedule_only
def _schedule_fired(state, e: ScheduleFired):
    if (
        state is None
        or state.status != ScheduleStatus.ACTIVE.value
        or state.next_fire_at is None
        or e.fire_at < state.next_fire_at
    ):
        return state
    nxt = _within(state, cron.next_fire(state.cron, state.timezone, e.fire_at))
    return replace(
        state, updated_at=e.occurred_at, version=state.version + 1, last_fire_at=e.fire_at,
        last_task_id=e.created_task_id or state.last_task_id, fired=state.fired + (1 if e.created_task_id else 0),
        skipped=state.skipped + e.skipped, next_fire_at=nxt,
        status=ScheduleStatus.ACTIVE.value if nxt else ScheduleStatus.ENDED.value,
    )


@_on(ScheduleDeleted)
@_schedule_only
def _schedule_deleted(state, e: ScheduleDeleted):
    if state is None or state.status == ScheduleStatus.DELETED.value:
        return state
    return replace(state, updated_at=e.occurred_at, version=state.version + 1, status=ScheduleStatus.DELETED.value,
                   next_fire_at=None)


@_decides(ScheduleFired)
def _after_fired(state, e: ScheduleFired, now: datetime) -> list[Event]:
    if not isinstance(state, ScheduleState) or not e.created_task_id:
        return []
    return [task_from_template(state, e.fire_at, e.created_task_id, now)]


def task_from_template(state: ScheduleState, fire_at: datetime, task_id: str, now: datetime) -> TaskCreated:
    """The task a schedule creates for ``fire_at``; its id is ``schedule_task_id`` so a repeat is a duplicate."""
    try:
        t = codec.loads_json(state.template)
    except codec.JSONDecodeError:
        t = None
    t = t if isinstance(t, dict) else {}

    def num(name):
        v = t.get(name)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    max_attempts = t.get("max_attempts")
    return TaskCreated(
        task_id=task_id, occurred_at=now, producer=PROCESSOR, handler=str(t.get("handler", "")),
        priority=str(t.get("priority", "medium")), payload=codec.dumps_json(t.get("payload")),
        name=str(t.get("name") or state.name), labels={str(k): str(v) for k, v in (t.get("labels") or {}).items()},
        timeout_s=num("timeout_s"), max_attempts=max_attempts if isinstance(max_attempts, int) else 1,
        backoff_initial_s=num("backoff_initial_s"), backoff_multiplier=num("backoff_multiplier"),
        backoff_max_s=num("backoff_max_s"), backoff_jitter=num("backoff_jitter"),
        schedule_id=state.schedule_id, scheduled_for=fire_at,
    )


def schedule_replay(state: ScheduleState, now: datetime) -> list[Event]:
    if state.last_task_id and state.last_fire_at:
        return [task_from_template(state, state.last_fire_at, state.last_task_id, now)]
    return []


def schedule_due(state: ScheduleState, now: datetime, grace_s: float) -> ScheduleFired | None:
    """What a schedule's timer appends at ``now``: the next fire, or the misfire decision after downtime.

    Fire times missed by at most ``grace_s`` each run (catch-up). Older ones are
    one block: ``run_once`` creates one task for the latest of them, ``skip``
    none; ``skipped`` counts the fire times dropped (up to MISSED_COUNT_CAP).
    """
    nxt = state.next_fire_at
    if state.status != ScheduleStatus.ACTIVE.value or nxt is None or nxt > now:
        return None
    horizon = now - timedelta(seconds=grace_s)
    if nxt >= horizon:
        return ScheduleFired(task_id=state.schedule_id, occurred_at=now, producer=PROCESSOR, fire_at=nxt,
                             created_task_id=schedule_task_id(state.schedule_id, nxt))
    last_old = cron.latest_fire(state.cron, state.timezone, horizon)
    missed, t = 0, nxt
    while t <= last_old and missed < MISSED_COUNT_CAP:
        missed += 1
        t = cron.next_fire(state.cron, state.timezone, t)
    if state.misfire == "skip":
        return ScheduleFired(task_id=state.schedule_id, occurred_at=now, producer=PROCESSOR, fire_at=last_old,
                             created_task_id="", skipped=missed)
    return ScheduleFired(task_id=state.schedule_id, occurred_at=now, producer=PROCESSOR, fire_at=last_old,
                         created_task_id=schedule_task_id(state.schedule_id, last_old), skipped=missed - 1)


# --------------------------------------------------------------------- timers


def timer_due(state: TaskState | ScheduleState | None, relay_slack_s: float) -> datetime | None:
    """When the processor's timer table should wake this state, or None.

    A task waiting for its run_at wakes at run_at. A task waiting out a retry
    backoff is re-queued by the retry relay; its timer, ``relay_slack_s``
    later, is a safety net if the relay is down (duplicates are harmless:
    TaskQueued is fenced by attempt and due time). A schedule wakes at its
    next fire time.
    """
    if isinstance(state, ScheduleState):
        return state.next_fire_at if state.status == ScheduleStatus.ACTIVE.value else None
    if state is None or state.status != Status.SCHEDULED.value:
        return None
    due = waiting_until(state)
    if due is not None and state.attempt > 0:
        due += timedelta(seconds=relay_slack_s)
    return due


def on_timer(state: TaskState | ScheduleState | None, now: datetime, grace_s: float) -> list[Event]:
    """The events a due timer appends to the log (folded like any other; nothing here changes state)."""
    if isinstance(state, ScheduleState):
        fired = schedule_due(state, now, grace_s)
        return [fired] if fired else []
    if is_ready(state, now):
        return _queue_next(state, now)
    return []


def lease_expired(state: TaskState | None, attempt: int, lease_s: float, now: datetime) -> list[Event]:
    """A running attempt's lease ran out: LeaseExpired, if it is still the running attempt."""
    if state is None or state.status != Status.RUNNING.value or state.attempt != attempt:
        return []
    return [LeaseExpired(task_id=state.task_id, occurred_at=now, producer=PROCESSOR, attempt=attempt, lease_s=lease_s)]
