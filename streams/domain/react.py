"""What the processor appends after each event it folds, and when its timers fire (pure: no I/O, no clock)."""


from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import singledispatch
from typing import TypeGuard

from taskstream.schemas import (
    DependencyRegistered,
    DependencyResolved,
    Event,
    GateWoken,
    LeaseExpired,
    ReadyTask,
    ScheduleCreated,
    ScheduleFired,
    ScheduleState,
    ScheduleTriggered,
    SlotReleased,
    SlotRequested,
    Status,
    TaskCreated,
    TaskDeadLettered,
    TaskFailed,
    TaskHeld,
    TaskQueued,
    TaskRedriven,
    TaskRetryScheduled,
    TaskState,
    TaskUpdated,
    codec,
    derived_id,
)
from taskstream.schemas.limits import cut_error
from taskstream.schemas.retry import DEFAULT_RETRY, RetryPolicy, jitter_draw

from .decide import _decides, decided
from .dependencies import closes_cycle
from .evolve import (
    ACTIVE,
    PAUSE_PREFIX,
    RESULT_BOUND,
    TERMINAL_VALUES,
    WAITING,
    _deps_met,
    holds_lease,
    is_terminal,
    waiting_until,
)
from .ids import PROCESSOR, UNSET, identified, state_cause
from .slots import slot_messages, slot_replay

UNKNOWN = "unknown"


def _queue_next(state: TaskState, now: datetime) -> list[Event]:
    due = waiting_until(state) if state.status == Status.SCHEDULED.value else None
    return [TaskQueued(event_id=UNSET, task_id=state.task_id, occurred_at=now, producer=PROCESSOR,
                       attempt=state.attempt + 1,
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
        DependencyRegistered(event_id=UNSET, task_id=upstream, occurred_at=now, producer=PROCESSOR,
                             dependent=state.task_id)
        for upstream in dict.fromkeys(state.depends_on)
        if upstream not in state.resolved
    ]


@_decides(DependencyRegistered)
def _after_registered(state: TaskState | None, e: DependencyRegistered, now: datetime) -> list[Event]:
    # ``state`` is the upstream's. Unknown upstream, or one that depends on the dependent (or is it: a cycle,
    # dependencies.py): resolve as unknown; terminal: resolve now.
    if state is None or closes_cycle(state, e.dependent):
        return [_unknown_upstream(e, now)]
    if state.status in TERMINAL_VALUES:
        return [resolution(state, e.dependent, now)]
    return []  # recorded as an edge (dependents.recorded), told when the upstream ends


def _unknown_upstream(e: DependencyRegistered, now: datetime) -> DependencyResolved:
    return DependencyResolved(event_id=UNSET, task_id=e.dependent, occurred_at=now, producer=PROCESSOR,
                              upstream=e.task_id,
                              outcome=UNKNOWN)


@_decides(DependencyResolved)
def _after_resolved(state: TaskState | None, e: DependencyResolved, now: datetime) -> list[Event]:
    return _queue_next(state, now) if is_ready(state, now) else []


def resolution(state: TaskState, dependent: str, now: datetime) -> DependencyResolved:
    """What a terminal upstream tells a dependent, with its result bounded to RESULT_BOUND."""
    result, truncated = state.result, False
    if result is not None and len(result.encode()) > RESULT_BOUND:
        result, truncated = None, True
    return DependencyResolved(event_id=UNSET, task_id=dependent, occurred_at=now, producer=PROCESSOR,
                              upstream=state.task_id,
                              outcome=state.status, result=result, result_truncated=truncated)


def react(before: TaskState | None, after: TaskState | None, event: Event, now: datetime,
          dependents: Iterable[str] | None = None) -> list[Event]:
    """Everything the processor appends after folding ``event`` into a task (``before`` -> ``after``).

    ``decide``'s reactions, plus what the task owes its ``dependents`` (its
    edges, ``dependents.py``; default: the list its state embeds) the moment
    it ends or is re-opened; ids derived from the event's (``ids.py``).
    """
    out = reactions(before, after, event, now) + slot_messages(before, after, now)
    if isinstance(after, TaskState):
        owing = owed(before, after, event)
        out += to_dependents(after, owing, after.dependents if dependents is None else dependents, now)
    return identified(out, event.event_id)


def reactions(before: TaskState | None, after: TaskState | None, event: Event, now: datetime) -> list[Event]:
    """``react`` without what the task owes its dependents, before its events are identified (``step``
    stamps them and adds ``to_dependents``)."""
    return [] if after is before and type(event) in CHANGE_DRIVEN else decided(after, event, now)


#: What a step owes every dependent: its resolution (the task ended) or a redrive (the task was re-opened).
RESOLVE = "resolve"
REDRIVE = "redrive"


def owed(before: object, after: object, event: Event) -> str | None:
    """What the step from ``before`` to ``after`` on ``event`` owes every dependent of the task, or None."""
    if not isinstance(after, TaskState):
        return None
    if not (isinstance(before, TaskState) and is_terminal(before)) and is_terminal(after):
        return RESOLVE
    if (isinstance(event, TaskRedriven) and after is not before and after.updated_at == event.occurred_at
            and after.status in WAITING):
        return REDRIVE
    return None


def owed_again(state: object, event: Event | None = None) -> str | None:
    """What a state owes its dependents when its last event (``event``) is folded twice (crash repair).

    A terminal task owes its resolution; what a redrive owes (the cascade)
    is not implied by the state alone: pass the TaskRedriven as ``event``.
    """
    if not isinstance(state, TaskState):
        return None
    if is_terminal(state):
        return RESOLVE
    if isinstance(event, TaskRedriven) and state.status in WAITING | ACTIVE:
        return REDRIVE
    return None


def to_dependents(state: TaskState, owing: str | None, dependents: Iterable[str], now: datetime) -> list[Event]:
    """The events ``owing`` means for each of ``dependents`` (not yet identified: ``step`` and ``replay`` do it)."""
    if owing == RESOLVE:
        return [resolution(state, d, now) for d in dependents]
    if owing == REDRIVE:
        return [TaskRedriven(event_id=UNSET, task_id=d, occurred_at=now, producer=PROCESSOR,
                             reason=f"upstream {state.task_id} re-driven")
                for d in dependents]
    return []




#: Events whose decisions follow from the change they made; folded again (a
#: duplicate) they change nothing and decide nothing.
CHANGE_DRIVEN = frozenset({TaskFailed, LeaseExpired, TaskRedriven, TaskUpdated, ScheduleCreated, ScheduleFired,
                           ScheduleTriggered, SlotRequested, SlotReleased, GateWoken})


def replay_outputs(state: TaskState | ScheduleState, now: datetime, event: Event | None = None,
                   dependents: Iterable[str] | None = None) -> list[Event]:
    """The events a state implies for others (``implied``, and what it owes its ``dependents``: default the
    list its state embeds), identified as decided for ``event``."""
    cause = event.event_id if event is not None else state_cause("replay", state, now)
    out = implied(state, now, event)
    if isinstance(state, TaskState):
        owing = owed_again(state, event)
        out += to_dependents(state, owing, state.dependents if dependents is None else dependents, now)
    return identified(out, cause)


@singledispatch
def implied(state: object, now: datetime, event: Event | None = None) -> list[Event]:
    """The events a state implies for others; sent again when its last event (``event``) is folded twice.

    Per kind of aggregate (a schedule's: ``schedules.schedule_replay``); a task's:

    The crash this repairs came between the table write and the sends, so the
    processor's own follow events (TaskQueued, TaskRetryScheduled), already in
    the state, may be missing from the log: they are sent again as they were
    (same time, same due time), so that folding the log still gives the state.
    The due time of the attempt a redrive queued is not implied by the state
    alone: pass the TaskRedriven as ``event``. What the task owes its
    dependents is not here: ``owed_again`` and ``to_dependents``.
    """
    return []


@implied.register
def _task_replay(state: TaskState, now: datetime, event: Event | None = None) -> list[Event]:
    if state.status == Status.QUEUED.value:
        # The time the attempt waited for: the redrive's time, else run_at for the first attempt; an attempt
        # queued by the relay or a timer has its TaskQueued in the log already (this one is a duplicate).
        due = event.occurred_at if isinstance(event, TaskRedriven) else state.run_at if state.attempt == 1 else None
        out: list[Event] = [TaskQueued(event_id=UNSET, task_id=state.task_id, occurred_at=state.updated_at,
                                       producer=PROCESSOR,
                                       attempt=state.attempt, priority=state.priority, due_at=due)]
    elif state.status == Status.PENDING.value and state.waiting_for is not None and state.waiting_for.startswith(
            PAUSE_PREFIX):
        # Held by a pause (controls.py): the TaskHeld that held it (a fold of the log must hold it too).
        out = [TaskHeld(event_id=UNSET, task_id=state.task_id, occurred_at=state.updated_at, producer=PROCESSOR,
                        attempt=state.attempt + 1, waiting_for=state.waiting_for, version=state.version - 1)]
    elif (state.status == Status.PENDING.value and state.waiting_for is not None
          and state.concurrency_key == f"handler:{state.handler}"):
        # Held into its handler's gate by the handler's limit or rate (controls.py): the TaskHeld that gave it the
        # key (a TaskQueued would queue a task whose log has no key); for a task submitted with that very key,
        # the TaskHeld folds to the same state as its TaskQueued, and a duplicate of it changes nothing.
        out = [TaskHeld(event_id=UNSET, task_id=state.task_id, occurred_at=state.updated_at, producer=PROCESSOR,
                        attempt=state.attempt + 1, waiting_for=state.waiting_for, version=state.version - 1,
                        concurrency_limit=state.concurrency_limit, concurrency_rate=state.concurrency_rate,
                        concurrency_per_s=state.concurrency_per_s)]
    elif state.status == Status.PENDING.value and state.waiting_for is not None:
        # Held for a slot (slots.py): the TaskQueued that held it, as for a queued task above.
        due = event.occurred_at if isinstance(event, TaskRedriven) else state.run_at if state.attempt == 0 else None
        out = [TaskQueued(event_id=UNSET, task_id=state.task_id, occurred_at=state.updated_at, producer=PROCESSOR,
                          attempt=state.attempt + 1, priority=state.priority, due_at=due)]
    elif state.status == Status.PENDING.value:
        out = registrations(state, now)
    elif state.status == Status.SCHEDULED.value and state.attempt > 0 and state.retry_at is not None:
        delay = max(0.0, (state.retry_at - state.updated_at).total_seconds())
        out = [TaskRetryScheduled(event_id=UNSET, task_id=state.task_id, occurred_at=state.updated_at,
                                  producer=PROCESSOR,
                                  attempt=state.attempt, not_before=state.retry_at, delay_s=delay,
                                  priority=state.priority, error=state.error or "")]
    elif state.status in TERMINAL_VALUES:
        out = []
        # The dead letter again only if the last event may be the failure (not, e.g., a later registration).
        if state.status == Status.FAILED.value and (event is None or isinstance(event, (TaskFailed, LeaseExpired))):
            out.append(dead_lettered(state, now))
    else:
        out = []
    return out + slot_replay(state, now)


@_decides(TaskFailed)
@_decides(LeaseExpired)
def _after_failed(state: TaskState | None, e: TaskFailed | LeaseExpired, now: datetime) -> list[Event]:
    """A failed attempt waits out its backoff (TaskRetryScheduled), or the task is dead-lettered.

    A ``TaskFailed`` with ``retry_delay_s`` (the handler raised ``Retry(delay_s=...)``)
    waits that long instead, within the task's policy (``backoff_delay``).
    """
    if state is None or state.attempt != e.attempt:
        return []
    if state.status == Status.SCHEDULED.value and state.retry_at is None:
        return [retry_scheduled(state, now, e.retry_delay_s if isinstance(e, TaskFailed) else None)]
    if state.status == Status.FAILED.value and state.finished_at == e.occurred_at:
        return [dead_lettered(state, now)]
    return []


def backoff_delay(state: TaskState, failed_attempt: int, requested_s: float | None = None) -> float:
    """Seconds to wait after ``failed_attempt`` before the next one (DESIGN §6).

    The task's policy (``RetryPolicy.of(state)``: a field the task lacks takes
    ``DEFAULT_RETRY``'s) gives ``RetryPolicy.delay_s(k, u)``, k the attempts
    since the last redrive and u = ``jitter_draw(task id, attempt)``:
    deterministic, so replay gives the same waits. A wait the handler asked for
    (``requested_s``: ``TaskFailed.retry_delay_s``) replaces it, clamped by
    ``RetryPolicy.clamp`` to ``[0, max_s]`` without jitter; NaN is no request.
    Whether a next attempt comes at all is not decided here: the failed
    attempt counted against ``max_attempts`` when it was folded (``evolve``).
    Never raises and never exceeds ``MAX_BACKOFF_S``, whatever the numbers.
    """
    policy = RetryPolicy.of(state, DEFAULT_RETRY)
    clamped: float | None = None if requested_s is None else policy.clamp(requested_s)
    if clamped is not None:
        return clamped
    delay: float = policy.delay_s(failed_attempt - state.attempt_offset, jitter_draw(state.task_id, failed_attempt))
    return delay


def retry_scheduled(state: TaskState, now: datetime, requested_s: float | None = None) -> TaskRetryScheduled:
    """The wait (``backoff_delay``) counts from the failure (the state's ``updated_at``, the failure's
    ``occurred_at``), not from when the processor folded it; a failure stamped in the future (a fast
    clock) counts from now."""
    delay = backoff_delay(state, state.attempt, requested_s)
    start = min(state.updated_at, now)
    return TaskRetryScheduled(event_id=UNSET, task_id=state.task_id, occurred_at=now, producer=PROCESSOR,
                              attempt=state.attempt,
                              not_before=start + timedelta(seconds=delay), delay_s=delay, priority=state.priority,
                              error=state.error or "")


def dead_lettered(state: TaskState, now: datetime) -> TaskDeadLettered:
    return TaskDeadLettered(event_id=UNSET, task_id=state.task_id, occurred_at=now, producer=PROCESSOR,
                            attempt=state.attempt,
                            error=state.error or "", handler=state.handler, priority=state.priority)


@_decides(TaskRedriven)
def _after_redriven(state: TaskState | None, e: TaskRedriven, now: datetime) -> list[Event]:
    """Queue the re-opened task (or register it again with its upstreams); its dependents are re-opened too
    (``owed``: ``REDRIVE``)."""
    if state is None or state.updated_at != e.occurred_at or state.status not in WAITING:
        return []  # not re-opened by this event
    return _queue_next(state, now) if is_ready(state, now) else registrations(state, now)


@_decides(TaskUpdated)
def _after_updated(state: TaskState | None, e: TaskUpdated, now: datetime) -> list[Event]:
    return _queue_next(state, now) if is_ready(state, now) else []


def is_ready(state: TaskState | None, now: datetime) -> TypeGuard[TaskState]:
    """A task waiting for nothing: every dependency succeeded and its time has come."""
    if state is None:
        return False
    if state.status == Status.PENDING.value:
        if state.attempt != 0 or state.waiting_for is not None:
            return False
        return _deps_met(state) and (state.run_at is None or state.run_at <= now)
    if state.status == Status.SCHEDULED.value:
        due = waiting_until(state)
        return due is not None and due <= now
    return False


def ready_message(state: TaskState, now: datetime) -> ReadyTask:
    """The message an executor receives for the state's current attempt."""
    return ReadyTask(
        event_id=derived_id("ready", state.task_id, state.attempt),  # one message per attempt, re-sent as it was
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
    """``ctx.upstream`` for the handler: each dependency's result, under one name.

    The name is the dependency's workflow key when the task was submitted in a
    workflow (``upstream_keys`` names it), else its task id: a workflow's
    handler reads ``ctx.upstream["extract"]``, a task submitted with
    ``depends_on=[id]`` reads ``ctx.upstream[id]``. Each result appears once, so
    summing or counting ``ctx.upstream`` counts each dependency once.
    """
    if not state.upstream_results:
        return "{}"
    out: dict[str, object] = {}
    for upstream, text in state.upstream_results.items():
        try:
            value = codec.loads_json(text)
        except codec.JSONDecodeError:  # not JSON (no producer of ours writes that): carried as null
            value = None
        out[state.upstream_keys.get(upstream) or upstream] = value
    carried: str = codec.dumps_json(out)
    return carried


# --------------------------------------------------------------------- timers


@singledispatch
def timer_due(state: object, relay_slack_s: float) -> datetime | None:
    """When the processor's timer table should wake this state, or None (per kind of aggregate).

    A task waiting for its run_at wakes at run_at. A task waiting out a retry
    backoff is re-queued by the retry relay; its timer, ``relay_slack_s``
    later, is a safety net if the relay is down (duplicates are harmless:
    TaskQueued is fenced by attempt and due time). A schedule wakes at its
    next fire time (``schedules.py``).
    """
    return None


@timer_due.register
def _task_timer_due(state: TaskState, relay_slack_s: float) -> datetime | None:
    if state.status != Status.SCHEDULED.value:
        return None
    due = waiting_until(state)
    if due is not None and state.attempt > 0:
        due += timedelta(seconds=relay_slack_s)
    return due


@singledispatch
def on_timer(state: object, now: datetime, grace_s: float, producer: str = PROCESSOR) -> list[Event]:
    """The events a due timer appends to the log (folded like any other; nothing here changes state).

    Per kind of aggregate: a task that is ready is queued; a schedule fires (``schedules.py``).
    """
    return []


@on_timer.register
def _task_on_timer(state: TaskState, now: datetime, grace_s: float, producer: str = PROCESSOR) -> list[Event]:
    if not is_ready(state, now):
        return []
    return identified(_queue_next(state, now), state_cause("timer", state, now), producer=producer)


def lease_expired(state: TaskState | None, attempt: int, lease_s: float, now: datetime,
                  producer: str = PROCESSOR) -> list[Event]:
    """A running attempt's lease ran out: LeaseExpired, if it is still the running attempt."""
    if not holds_lease(state) or state.attempt != attempt:
        return []
    return identified([LeaseExpired(event_id=UNSET, task_id=state.task_id, occurred_at=now, producer=producer,
                                    attempt=attempt, lease_s=lease_s)], state_cause("lease", state, now, attempt))


def requeued(waiting: TaskRetryScheduled, now: datetime, producer: str = PROCESSOR) -> TaskQueued:
    """What the retry relay appends once a failed attempt's backoff has passed: the next attempt, due then."""
    (queued,) = identified([TaskQueued(event_id=UNSET, task_id=waiting.task_id, occurred_at=now, producer=producer,
                                       attempt=waiting.attempt + 1, priority=waiting.priority,
                                       due_at=waiting.not_before)], waiting.event_id)
    return queued


def ready_refused(ready: ReadyTask, reason: str, now: datetime, producer: str = PROCESSOR) -> TaskFailed:
    """A ready message the broker refused for good: the attempt can never run, so it fails for good, saying why."""
    (failed,) = identified([TaskFailed(event_id=UNSET, task_id=ready.task_id, occurred_at=now, producer=producer,
                                       attempt=ready.attempt, permanent=True,
                                       error=cut_error(f"ready message refused by the broker: {reason}"))],
                           ready.event_id)
    return failed
