"""The processor's step, pure: fold one event, decide what follows, and say which messages that means.

``step`` is everything the processor does with an event of ``<p>.events``
but I/O: evolve the state, ``react``, stamp the follow-ups, and apply the
ones of the same task at once. ``effects`` turns a step into messages by
kind (the processor maps kinds to topics and partitions). ``lease_after``
and ``heartbeat_renews`` are the lease rules, ``RELAY_SLACK_S`` the timer
policy behind the retry relay. Which follow-ups a step applies at once, and
so the order in which a task's log folds to the processor's state, is the
rule of ``order.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime
from typing import NamedTuple

from taskstream.schemas import (
    ControlResumed,
    ControlState,
    Event,
    ReadyTask,
    Status,
    TaskCancelled,
    TaskDeadLettered,
    TaskQueued,
    TaskRetryScheduled,
    TaskState,
)

from .controls import Held, Limits, Paused, admitted, held_instead, hold, hold_of, releases
from .evolve import ACTIVE, evolve
from .order import applied_inline, stamped
from .react import implied, owed, owed_again, reactions, ready_message, to_dependents
from .slots import slot_messages

#: A task waiting out a retry is re-queued by the retry relay at its time; the
#: processor's own timer fires this much later as a safety net (relay down).
RELAY_SLACK_S = 5.0

#: The dependents of the task being stepped, asked only when a step owes them something (``owed``): the
#: processor reads its edges (``dependents.py``); None: the list the state embeds.
DependentsLookup = Callable[[], Iterable[str]] | None


def step(state: TaskState | None, event: Event, now: datetime, producer: str,
         dependents: DependentsLookup = None, paused: Paused = None,
         held: Held = None, limits: Limits = None) -> tuple[TaskState | None, list[Event]]:
    """Fold ``event`` and what follows it for the same task: (the new state, every follow-up event).

    Follow-ups of other tasks (dependency events, a schedule's task, what the
    task owes its ``dependents`` when it ends or is re-opened) are in the list
    too; they are folded by their own task's owner. ``paused``, ``held`` and
    ``limits`` answer for the partition's pauses and handler limits
    (``controls.py``; None: none): a task admitted while one of its targets
    is paused is held instead, one whose handler has a limit goes through
    the handler's gate, and a resumed control releases what its pause held.
    """
    new = evolve(state, event)
    own = new.task_id if new is not None else None
    follow = reactions(state, new, event, now)
    if isinstance(new, TaskState) and (owing := owed(state, new, event)) is not None:
        follow += to_dependents(new, owing, _ask(new, dependents), now)
    controlled = paused is not None or limits is not None
    if controlled and isinstance(new, TaskState) and any(
            isinstance(e, TaskQueued) and e.task_id == own for e in follow):
        if (why := hold_of(new, paused, limits)) is not None:
            follow = held_instead(follow, new, *why)
    elif isinstance(new, ControlState) and isinstance(event, ControlResumed) and new is not state:
        follow += releases(new, held, now)
    follow = stamped(follow, producer, own, event)
    for e in follow:
        if applied_inline(e, own):
            new = evolve(new, e)
    if controlled and admitted(state, new):
        assert isinstance(new, TaskState)
        if (why := hold_of(new, paused, limits)) is not None:
            # Admitted by the event itself (a relay's or a release's TaskQueued, a slot granted): taken back.
            held_now = stamped([hold(new, why[0], now, why[1])], producer, own, event)
            new = evolve(new, held_now[0])
            follow += held_now
    # What the whole step (the event and the follow-ups applied at once) owes a concurrency key's gate.
    return new, follow + stamped(slot_messages(state, new, now), producer, own, event)


def replay(state: TaskState, event: Event, now: datetime, producer: str,
           dependents: DependentsLookup = None, held: Held = None) -> list[Event]:
    """The follow-ups of a state's last event, sent again when that event is read twice (crash repair)."""
    again = implied(state, now, event)
    if isinstance(state, TaskState) and (owing := owed_again(state, event)) is not None:
        again += to_dependents(state, owing, _ask(state, dependents), now)
    if isinstance(state, ControlState) and isinstance(event, ControlResumed):
        again += releases(state, held, now)  # the tasks still held: their releases may not have been sent
    return stamped(again, producer, state.task_id, event)


def _ask(state: TaskState, dependents: DependentsLookup) -> Iterable[str]:
    return state.dependents if dependents is None else dependents()


class Effect(NamedTuple):
    """A message a step sends. ``kind``: ``event`` (to the log, keyed by its task), ``ready`` (to the ready
    topic of ``priority``), ``retry`` (to the retry tier of its ``delay_s``), ``dead_letter`` (to the dlq),
    ``cancel`` (to the ready topic of ``priority``, behind the attempt it stops)."""

    kind: str
    message: Event | ReadyTask
    priority: str | None = None


def effects(
    before: TaskState | None, state: TaskState | None, event: Event, follow: list[Event], now: datetime, producer: str
) -> list[Effect]:
    """What the step from ``before`` to ``state`` on ``event`` (with ``follow``) sends, in order.

    Every follow-up goes to the log. A task newly queued (or queued again by
    a follow-up) goes to its ready topic; a scheduled retry to the retry
    relay; a dead letter to the dlq; a cancel of a queued or running task to
    the ready topic the executors read it from.
    """
    out = [Effect("event", e) for e in follow]
    if not isinstance(state, TaskState):
        return out
    newly_queued = state.status == Status.QUEUED.value and (
        before is None or before.attempt != state.attempt or before.status != Status.QUEUED.value
    )
    if newly_queued or (state.status == Status.QUEUED.value and any(isinstance(e, TaskQueued) for e in follow)):
        out.append(Effect("ready", replace(ready_message(state, now), producer=producer), state.priority))
    for e in follow:
        if isinstance(e, TaskRetryScheduled):
            out.append(Effect("retry", e))
        elif isinstance(e, TaskDeadLettered):
            out.append(Effect("dead_letter", e))
    if (isinstance(event, TaskCancelled) and before is not None and before.status in ACTIVE
            and state.status == Status.CANCELLED.value):
        out.append(Effect("cancel", event, before.priority))
    return out


def lease_after(before: object, after: object) -> str:
    """What a step does to the running attempt's lease: ``start`` (a full lease from now: a new running
    attempt, or a checkpoint, which proves progress), ``keep`` or ``clear`` (nothing runs)."""
    if not isinstance(after, TaskState) or after.status != Status.RUNNING.value:
        return "clear"
    if (not isinstance(before, TaskState) or before.status != Status.RUNNING.value
            or before.attempt != after.attempt or before.checkpoint != after.checkpoint):
        return "start"
    return "keep"


def heartbeat_renews(state: object, attempt: int) -> bool:
    """A heartbeat renews the lease only of the attempt that is running now (a zombie's beats do not)."""
    return isinstance(state, TaskState) and state.status == Status.RUNNING.value and state.attempt == attempt
