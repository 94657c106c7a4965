"""The cron schedule aggregate: its fold, its commands, what its timer appends (pure: no I/O, no clock).

A schedule is an aggregate of its own, keyed by ``schedule_id`` on
``<p>.events`` next to the tasks: ``ScheduleCreated`` sets the first fire
time (at or after ``start_at``; ``end_at`` inclusive), each ``ScheduleFired``
advances it exactly once and decides one ``TaskCreated`` with the
deterministic id ``schedule_task_id(schedule, fire_at)``, ``ScheduleDeleted``
stops it. ``SchedulePaused`` stops the fires of an active schedule until
``ScheduleResumed``, which sets the next fire time to the first after the
resume (fire times while paused are skipped, not caught up);
``ScheduleTriggered`` (run now) creates one task at once, with the id the
API decided, and counts as a fire without moving the cron's next one.
``ScheduleBackfilled`` (an operator's ``BackfillSchedule``) decides one
``TaskCreated`` per cron time of a past range, in order, each with an id
derived from the schedule and the time, so asking twice creates nothing new.
``schedule_due`` is what the processor's timer appends at a given time:
the next fire, the catch-up of fires missed by at most the grace, or
one misfire decision for older ones.

Its rules register with the task's entry points (``evolve``, ``decide``,
``timer_due``, ``on_timer``, ``replay_outputs``), which dispatch on the
aggregate's state type once; nothing here sees a ``TaskState``.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timedelta

from taskstream.schemas import (
    CommandRejected,
    Event,
    NotFound,
    ScheduleBackfilled,
    ScheduleCreated,
    ScheduleDeleted,
    ScheduleFired,
    SchedulePaused,
    ScheduleResumed,
    ScheduleState,
    ScheduleStatus,
    ScheduleTriggered,
    TaskCreated,
    ValidationError,
    codec,
    cron,
)

from .commands import BackfillSchedule, CreateSchedule, DeleteSchedule, PauseSchedule, ResumeSchedule, RunSchedule
from .decide import _decides, existing
from .evolve import _on
from .ids import PROCESSOR, UNSET, identified, state_cause
from .react import implied, on_timer, timer_due

#: Most fire times counted one by one when a schedule catches up after downtime.
MISSED_COUNT_CAP = 1000
SCHEDULE_TASK_NAMESPACE = uuid.UUID("5b1e7c6e-6f1d-4d4b-9b7e-2f8f6c1a9d01")
#: Most cron times one backfill may ask for (a longer range is asked for in parts).
MAX_BACKFILL = 1000
#: A backfill's ``overlap`` values: ``skip`` the times the schedule ran, or ``allow`` runs of their own.
OVERLAPS = ("skip", "allow")


# --------------------------------------------------------------------- evolve


def _within(state: ScheduleState, t: datetime | None) -> datetime | None:
    """``t`` if the schedule still fires then (``end_at`` is inclusive, as in APScheduler and Airflow)."""
    return None if t is None or (state.end_at is not None and t > state.end_at) else t


@_on(ScheduleCreated, ScheduleState)
def _created(state: ScheduleState | None, e: ScheduleCreated) -> ScheduleState | None:
    if state is not None:
        return state
    try:
        first = cron.first_fire(e.cron, e.timezone, e.start_at, e.occurred_at)
    except Exception:  # a bad expression in the log (the API validates): the schedule never fires
        first = None
    s = ScheduleState(schedule_id=e.schedule_id, cron=e.cron, timezone=e.timezone, template=e.template, name=e.name,
                      start_at=e.start_at, end_at=e.end_at, misfire=e.misfire, status=ScheduleStatus.ACTIVE.value,
                      created_at=e.occurred_at, updated_at=e.occurred_at, version=1)
    first = _within(s, first)
    return replace(s, next_fire_at=first, status=ScheduleStatus.ACTIVE.value if first else ScheduleStatus.ENDED.value)


@_on(ScheduleFired, ScheduleState)
def _fired(state: ScheduleState | None, e: ScheduleFired) -> ScheduleState | None:
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


@_on(ScheduleDeleted, ScheduleState)
def _deleted(state: ScheduleState | None, e: ScheduleDeleted) -> ScheduleState | None:
    if state is None or state.status == ScheduleStatus.DELETED.value:
        return state
    return replace(state, updated_at=e.occurred_at, version=state.version + 1, status=ScheduleStatus.DELETED.value,
                   next_fire_at=None)


@_on(SchedulePaused, ScheduleState)
def _paused(state: ScheduleState | None, e: SchedulePaused) -> ScheduleState | None:
    if state is None or state.status != ScheduleStatus.ACTIVE.value:
        return state
    return replace(state, updated_at=e.occurred_at, version=state.version + 1, status=ScheduleStatus.PAUSED.value,
                   next_fire_at=None)


@_on(ScheduleResumed, ScheduleState)
def _resumed(state: ScheduleState | None, e: ScheduleResumed) -> ScheduleState | None:
    if state is None or state.status != ScheduleStatus.PAUSED.value:
        return state
    try:
        nxt = _within(state, cron.first_fire(state.cron, state.timezone, state.start_at, e.occurred_at))
    except Exception:  # a bad expression in the log (the API validates): the schedule never fires
        nxt = None
    return replace(state, updated_at=e.occurred_at, version=state.version + 1, next_fire_at=nxt,
                   status=ScheduleStatus.ACTIVE.value if nxt else ScheduleStatus.ENDED.value)


@_on(ScheduleTriggered, ScheduleState)
def _triggered(state: ScheduleState | None, e: ScheduleTriggered) -> ScheduleState | None:
    if state is None or state.status == ScheduleStatus.DELETED.value or state.last_task_id == e.created_task_id:
        return state
    return replace(state, updated_at=e.occurred_at, version=state.version + 1, last_fire_at=e.occurred_at,
                   last_task_id=e.created_task_id, fired=state.fired + 1)


@_on(ScheduleBackfilled, ScheduleState)
def _backfilled(state: ScheduleState | None, e: ScheduleBackfilled) -> ScheduleState | None:
    if state is None:
        return state
    return replace(state, updated_at=e.occurred_at, version=state.version + 1)


# --------------------------------------------------------------------- decide


@_decides(CreateSchedule, ScheduleState)
def _create(state: ScheduleState | None, c: CreateSchedule, now: datetime) -> list[Event]:
    if state is not None:
        raise CommandRejected(f"schedule {c.schedule_id} already exists")
    return [ScheduleCreated(event_id=UNSET, schedule_id=c.schedule_id, occurred_at=now, producer=c.producer,
                            cron=c.cron,
                            timezone=c.timezone, template=c.template, name=c.name, start_at=c.start_at,
                            end_at=c.end_at, misfire=c.misfire, actor=c.actor)]


@_decides(DeleteSchedule, ScheduleState)
def _delete(state: ScheduleState | None, c: DeleteSchedule, now: datetime) -> list[Event]:
    if state is None:
        raise NotFound(f"schedule {c.schedule_id} not found")
    if state.status == ScheduleStatus.DELETED.value:
        raise CommandRejected(f"schedule {c.schedule_id} is already deleted")
    return [ScheduleDeleted(event_id=UNSET, schedule_id=c.schedule_id, occurred_at=now, producer=c.producer,
                            reason=c.reason,
                            actor=c.actor)]


@_decides(PauseSchedule, ScheduleState)
def _pause(state: ScheduleState | None, c: PauseSchedule, now: datetime) -> list[Event]:
    s = existing(state, "schedule", c.schedule_id, "paused")
    if s.status == ScheduleStatus.PAUSED.value:
        return []
    if s.status != ScheduleStatus.ACTIVE.value:
        raise CommandRejected(f"schedule {c.schedule_id} is {s.status}: only an active schedule can be paused")
    return [SchedulePaused(event_id=UNSET, schedule_id=c.schedule_id, occurred_at=now, producer=c.producer,
                           reason=c.reason, actor=c.actor)]


@_decides(ResumeSchedule, ScheduleState)
def _resume(state: ScheduleState | None, c: ResumeSchedule, now: datetime) -> list[Event]:
    s = existing(state, "schedule", c.schedule_id, "resumed")
    if s.status == ScheduleStatus.ACTIVE.value:
        return []
    if s.status != ScheduleStatus.PAUSED.value:
        raise CommandRejected(f"schedule {c.schedule_id} is {s.status}: only a paused schedule can be resumed")
    return [ScheduleResumed(event_id=UNSET, schedule_id=c.schedule_id, occurred_at=now, producer=c.producer,
                            actor=c.actor)]


@_decides(RunSchedule, ScheduleState)
def _run(state: ScheduleState | None, c: RunSchedule, now: datetime) -> list[Event]:
    existing(state, "schedule", c.schedule_id, "run")
    return [ScheduleTriggered(event_id=UNSET, schedule_id=c.schedule_id, occurred_at=now, producer=c.producer,
                              created_task_id=schedule_run_task_id(c.schedule_id, now), actor=c.actor)]


@_decides(ScheduleTriggered, ScheduleState)
def _after_triggered(state: ScheduleState | None, e: ScheduleTriggered, now: datetime) -> list[Event]:
    if state is None or state.last_task_id != e.created_task_id:
        return []
    return [task_from_template(state, e.occurred_at, e.created_task_id, now)]


@_decides(ScheduleFired, ScheduleState)
def _after_fired(state: ScheduleState | None, e: ScheduleFired, now: datetime) -> list[Event]:
    if state is None or not e.created_task_id:
        return []
    return [task_from_template(state, e.fire_at, e.created_task_id, now)]


@_decides(BackfillSchedule, ScheduleState)
def _backfill(state: ScheduleState | None, c: BackfillSchedule, now: datetime) -> list[Event]:
    if state is None:
        raise NotFound(f"schedule {c.schedule_id} not found")
    if state.status == ScheduleStatus.DELETED.value:
        raise CommandRejected(f"schedule {c.schedule_id} is deleted")
    problems: list[tuple[str, str]] = []
    if c.overlap not in OVERLAPS:
        problems.append(("overlap", f"must be one of {', '.join(OVERLAPS)}"))
    if c.max_concurrent is not None and c.max_concurrent < 1:
        problems.append(("max_concurrent", "must be at least 1"))
    if c.end < c.start:
        problems.append(("end", "must not be before start"))
    if c.end > now:
        problems.append(("end", "must not be in the future: a backfill runs past cron times"))
    if problems:
        raise ValidationError.of(problems)
    times = backfill_times(state, c.start, c.end, limit=MAX_BACKFILL + 1)
    if len(times) > MAX_BACKFILL:
        raise ValidationError("end", f"the range holds more than {MAX_BACKFILL} cron times; ask for it in parts")
    return [ScheduleBackfilled(event_id=UNSET, schedule_id=c.schedule_id, occurred_at=now, producer=c.producer,
                               start=c.start, end=c.end, overlap=c.overlap, max_concurrent=c.max_concurrent,
                               count=len(times), actor=c.actor)]


@_decides(ScheduleBackfilled, ScheduleState)
def _after_backfilled(state: ScheduleState | None, e: ScheduleBackfilled, now: datetime) -> list[Event]:
    """One task per cron time of the range, in order; folded again, the same ids (duplicates, harmless)."""
    if state is None or state.status == ScheduleStatus.DELETED.value:
        return []
    tasks = [task_from_template(state, t, backfill_task_id(state.schedule_id, t, e.overlap), now)
             for t in backfill_times(state, e.start, e.end, limit=MAX_BACKFILL)]
    if e.max_concurrent is None:
        return list(tasks)
    # at most max_concurrent of this backfill's tasks queued or running: one concurrency key per request
    key = backfill_concurrency_key(state.schedule_id, e.event_id)
    return [replace(t, concurrency_key=key, concurrency_limit=e.max_concurrent) for t in tasks]


def backfill_concurrency_key(schedule_id: str, event_id: str) -> str:
    """The concurrency key a backfill's tasks share when it bounds them (``max_concurrent``): one per request."""
    return f"backfill:{schedule_id}:{event_id[:16]}"


def backfill_times(state: ScheduleState, start: datetime, end: datetime, *, limit: int) -> list[datetime]:
    """Cron times in ``start``..``end`` (inclusive, in the schedule's time zone), oldest first, at most ``limit``."""
    out: list[datetime] = []
    try:
        t = cron.next_fire(state.cron, state.timezone, start - timedelta(microseconds=1))
    except Exception:  # a bad expression in the log (the API validates): nothing to run
        return out
    while t <= end and len(out) < limit:
        out.append(t)
        t = cron.next_fire(state.cron, state.timezone, t)
    return out


def backfill_task_id(schedule_id: str, fire_at: datetime, overlap: str) -> str:
    """The id of a backfill's task for ``fire_at``: the schedule's own (``skip``) or one of its own (``allow``)."""
    if overlap == "allow":
        return uuid.uuid5(SCHEDULE_TASK_NAMESPACE, f"{schedule_id}@{fire_at.isoformat()}#backfill").hex
    return schedule_task_id(schedule_id, fire_at)


def schedule_task_id(schedule_id: str, fire_at: datetime) -> str:
    """The id of the task a schedule creates for one fire time: the same on every replay and processor."""
    return uuid.uuid5(SCHEDULE_TASK_NAMESPACE, f"{schedule_id}@{fire_at.isoformat()}").hex


def schedule_run_task_id(schedule_id: str, at: datetime) -> str:
    """The id of the task a run-now at ``at`` creates: apart from every cron fire's ``schedule_task_id``."""
    return uuid.uuid5(SCHEDULE_TASK_NAMESPACE, f"{schedule_id}@run@{at.isoformat()}").hex


def task_from_template(state: ScheduleState, fire_at: datetime, task_id: str, now: datetime) -> TaskCreated:
    """The task a schedule creates for ``fire_at``; its id is ``schedule_task_id`` so a repeat is a duplicate."""
    try:
        t = codec.loads_json(state.template)
    except codec.JSONDecodeError:
        t = None
    t = t if isinstance(t, dict) else {}

    def num(name: str) -> float | None:
        v = t.get(name)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    max_attempts = t.get("max_attempts")
    return TaskCreated(
        event_id=UNSET,
        task_id=task_id, occurred_at=now, producer=PROCESSOR, handler=str(t.get("handler", "")),
        priority=str(t.get("priority", "medium")), payload=codec.dumps_json(t.get("payload")),
        name=str(t.get("name") or state.name), labels={str(k): str(v) for k, v in (t.get("labels") or {}).items()},
        timeout_s=num("timeout_s"), max_attempts=max_attempts if isinstance(max_attempts, int) else 1,
        backoff_initial_s=num("backoff_initial_s"), backoff_multiplier=num("backoff_multiplier"),
        backoff_max_s=num("backoff_max_s"), backoff_jitter=num("backoff_jitter"),
        schedule_id=state.schedule_id, scheduled_for=fire_at,
    )


# --------------------------------------------------------------------- timers and crash repair


@implied.register
def schedule_replay(state: ScheduleState, now: datetime, event: Event | None = None) -> list[Event]:
    """The task of the last fire again (its id makes it a duplicate if it was written)."""
    if state.last_task_id and state.last_fire_at:
        return [task_from_template(state, state.last_fire_at, state.last_task_id, now)]
    return []


@timer_due.register
def _timer_due(state: ScheduleState, relay_slack_s: float) -> datetime | None:
    """A schedule wakes at its next fire time while it is active."""
    return state.next_fire_at if state.status == ScheduleStatus.ACTIVE.value else None


@on_timer.register
def _on_timer(state: ScheduleState, now: datetime, grace_s: float, producer: str = PROCESSOR) -> list[Event]:
    fired = schedule_due(state, now, grace_s)
    return identified([fired], state_cause("timer", state, now), producer=producer) if fired else []


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
        return ScheduleFired(event_id=UNSET, schedule_id=state.schedule_id, occurred_at=now, producer=PROCESSOR,
                             fire_at=nxt,
                             created_task_id=schedule_task_id(state.schedule_id, nxt))
    last_old = cron.latest_fire(state.cron, state.timezone, horizon)
    missed, t = 0, nxt
    while t <= last_old and missed < MISSED_COUNT_CAP:
        missed += 1
        t = cron.next_fire(state.cron, state.timezone, t)
    if state.misfire == "skip":
        return ScheduleFired(event_id=UNSET, schedule_id=state.schedule_id, occurred_at=now, producer=PROCESSOR,
                             fire_at=last_old,
                             created_task_id="", skipped=missed)
    return ScheduleFired(event_id=UNSET, schedule_id=state.schedule_id, occurred_at=now, producer=PROCESSOR,
                         fire_at=last_old,
                         created_task_id=schedule_task_id(state.schedule_id, last_old), skipped=missed - 1)
