"""The fold order: which event of a task's log is applied after which (one rule, one place).

The processor applies its own follow-ups of a task (a TaskQueued after
TaskCreated, a TaskRetryScheduled after TaskFailed, ...) in the same step as
the event that triggered them, before it appends them to the log; in the log
they land later, possibly behind a client's event of the same task (say a
TaskCancelled). ``stamped`` marks such a follow-up with ``cause``, its
trigger's ``event_id``; ``fold_next`` folds a log read in log order so that
each stamped follow-up is applied right after its trigger and the events read
since are applied again on top: exactly what the processor did.

Everyone who folds the log folds through here: the processor (``step``
applies inline exactly the follow-ups ``applied_inline`` names), ``state
rebuild`` (``streams.rebuild.LogFold``, per key, incrementally), time travel
and task history (``fold_log``, ``GET /tasks/{id}?as_of=``, ``taskstream
state at``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any

from taskstream.schemas import (
    DependencyResolved,
    Event,
    LeaseExpired,
    SlotGranted,
    TaskCreated,
    TaskFailed,
    TaskHeld,
    TaskQueued,
    TaskRedriven,
    TaskReleased,
    TaskRetryScheduled,
    TaskUpdated,
)

from .dependents import recorded, with_dependents
from .evolve import evolve
from .ids import event_ids

#: Events after which the processor may apply a follow-up that carries ``cause``.
#: A TaskQueued, SlotGranted or TaskReleased the processor folded (from the relay, a timer, a gate, a resume)
#: may be followed by the TaskHeld of a pause (``controls.py``).
FOLLOW_UP_TRIGGERS = frozenset({TaskCreated, DependencyResolved, TaskFailed, LeaseExpired, TaskRedriven, TaskUpdated,
                                TaskQueued, SlotGranted, TaskReleased})
#: Follow-ups applied at once whose place in the fold matters: they carry ``cause``.
CAUSED = (TaskQueued, TaskRetryScheduled, TaskHeld)
#: Most events kept per task while a trigger's follow-up is awaited; past it the log is folded as it comes.
MAX_AWAITING = 64


def applied_inline(follow_up: Event, own: str | None) -> bool:
    """True for a follow-up the processor applies in the same step as its trigger: every follow-up of
    the trigger's own task (``own``); follow-ups of others are folded by their owners."""
    return bool(follow_up.aggregate_id == own)


def stamped(follow: list[Event], producer: str, own: str | None, cause: Event) -> list[Event]:
    """Follow-ups of ``cause`` as the processor appends them: their ids (derived from the cause's,
    ``ids.py``), its producer, and for a TaskQueued or TaskRetryScheduled it applies at once
    (``applied_inline``), the ``cause`` (its trigger's id), so a fold of the log (``fold_next``)
    applies it at the same point even if a client's event landed in between."""
    out: list[Event] = []
    for e, event_id in zip(follow, event_ids(follow, cause.event_id), strict=True):
        if isinstance(e, CAUSED) and applied_inline(e, own):
            out.append(replace(e, event_id=event_id, producer=producer, cause=cause.event_id))
        else:
            out.append(replace(e, event_id=event_id, producer=producer))
    return out


#: What ``fold_next`` keeps between calls: the events since the oldest awaited trigger, each with the state before it.
Awaiting = list[tuple[Event, Any]]


def fold_next(state: Any, awaiting: Awaiting | None, event: Event) -> tuple[Any, Awaiting | None]:
    """Fold the next event of one task's log (read in log order) in the processor's order.

    ``awaiting`` is what the fold keeps between calls: None, or the events
    read since the oldest trigger whose follow-up may still come, each with
    the state before it (the list is updated in place). Returns ``(state,
    awaiting)``. A follow-up whose trigger is kept is applied right after it
    and the events read since are folded again on top; one whose trigger is
    not kept (never a trigger, or more than MAX_AWAITING events ago) is
    folded where it is. What stays kept starts at the first trigger still
    without its follow-up (``_unanswered``): a trigger read again after a
    crash awaits one follow-up per copy, and a follow-up decided on a state
    version (a TaskHeld) goes after the copy that left the task at it.
    """
    if awaiting is None:
        after = evolve(state, event)
        if type(event) in FOLLOW_UP_TRIGGERS and after is not state:
            return after, [(event, state)]
        return after, None
    cause = getattr(event, "cause", None)
    k = None
    if cause is not None:
        found = [i for i, (e, _) in enumerate(awaiting) if e.event_id == cause]
        k = found[0] if found else None
        version = getattr(event, "version", None)
        if len(found) > 1 and version is not None:
            # the trigger was read more than once (a crash's replay): the follow-up decided on a state version
            # (a TaskHeld) goes after the copy that left the task at that version
            after = [awaiting[i + 1][1] if i + 1 < len(awaiting) else state for i in found]
            k = next((i for i, s in zip(found, after, strict=True) if getattr(s, "version", None) == version), k)
    if k is None:  # not a follow-up of a kept trigger: fold it where it is (and keep it for a later re-fold)
        awaiting.append((event, state))
        return evolve(state, event), (awaiting if len(awaiting) <= MAX_AWAITING else None)
    if k == len(awaiting) - 1:  # nothing in between: the common case
        awaiting.append((event, state))
        return evolve(state, event), _unanswered(awaiting, len(awaiting) - 1)
    # re-fold with the follow-up right after its trigger, each event kept with the state before it in the new order
    state = awaiting[0][1]
    kept: Awaiting = []
    for i, (e, _) in enumerate(awaiting):
        kept.append((e, state))
        state = evolve(state, e)
        if i == k:
            kept.append((event, state))
            state = evolve(state, event)
    return state, _unanswered(kept, k + 1)


def _unanswered(kept: Awaiting, inserted: int) -> Awaiting | None:
    """``kept`` from its first trigger still without a follow-up (None if none): the n-th copy of a trigger
    (one read again after a crash) is answered by the n-th follow-up naming it as its cause. The follow-up
    just applied (at ``inserted``) is not itself awaited, as any follow-up applied with its trigger."""
    if len(kept) > MAX_AWAITING:
        return None
    answers: dict[str, int] = {}  # follow-ups not yet matched to a copy of their trigger, by cause
    for e, _ in kept:
        if (cause := getattr(e, "cause", None)) is not None:
            answers[cause] = answers.get(cause, 0) + 1
    for i, (e, _) in enumerate(kept):
        if i != inserted and type(e) in FOLLOW_UP_TRIGGERS:
            left = answers.get(e.event_id, 0)
            if left == 0:
                return kept[i:]
            answers[e.event_id] = left - 1
    return None


def fold_log(events: Iterable[Event], as_of: datetime | None = None, state: Any = None) -> Any:
    """One task's state from its events in log order (only those with ``occurred_at <= as_of`` if
    given), folded in the order the processor applied them (``fold_next``): what its table held then,
    with the dependents its edges held then in ``dependents`` (``dependents.with_dependents``)."""
    awaiting = None
    edges: list[str] = []
    for event in events:
        if as_of is None or event.occurred_at <= as_of:
            if (edge := recorded(state, event)) is not None:
                edges.append(edge.dependent)
            state, awaiting = fold_next(state, awaiting, event)
    return with_dependents(state, edges)
