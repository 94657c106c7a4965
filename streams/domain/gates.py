"""Concurrency keys: the slots of one key are an aggregate of their own, a *gate* (pure: no I/O, no clock).

A task submitted with ``concurrency: {"key", "limit"}`` carries its key
(the payload template already filled in, ``concurrency_key_of``) and limit.
Whenever such a task would be queued (any ``TaskQueued``: its first
attempt, a dependency met, a retry due, a redrive), the fold holds it
instead: it stays ``pending`` with ``waiting_for: "concurrency:<key>"`` and
the step asks the key's gate for a slot (``SlotRequested``, keyed by the gate
id ``concurrency:<key>``, so one partition of ``<p>.events`` owns every slot
of the key whatever partitions its tasks live in). The gate folds requests
and releases in its log order, admits waiting tasks while fewer than
``limit`` hold a slot (priority first, then arrival), and tells each admitted
task (``SlotGranted``, keyed by the task); the task's fold of the grant is
its admission: it turns ``queued`` and its ready message goes out. A slot is
held while the attempt is queued or running; the step that ends that (a
result, a failed attempt waiting for its retry, a cancel, an expired lease)
releases it (``SlotReleased``). A task waiting out a retry's backoff holds no
slot: it asks again when the retry is due, behind the tasks that waited. A
waiting task whose priority is changed (a PATCH) asks again for the same
attempt at its new priority; the gate moves it behind the tasks already
waiting at that priority.
A key may also carry a rate (``rate`` starts in any ``per_s`` seconds): each
admission spends a start, which comes back ``per_s`` after it was spent
(``GateState.spent``). The gate's clock is the ``occurred_at`` of the events
it folds, never a wall clock, so a replay admits the same; when a rate holds
a task back, the gate's timer (``timer_due``) appends ``GateWoken`` at the
time the oldest start comes back, and its fold admits. The design and its
alternatives: docs/decisions/0025-flow-control.md and
docs/decisions/0026-rate-limits.md; a changed priority:
docs/decisions/0032-patched-priority-in-the-line.md.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from taskstream.schemas import (
    Event,
    GateState,
    GateWoken,
    SlotGranted,
    SlotReleased,
    SlotRequested,
    Status,
    TaskState,
    derived_id,
)
from taskstream.schemas.limits import MAX_CONCURRENCY_LIMIT, MAX_RATE, MAX_RATE_PERIOD_S

from .decide import _decides
from .evolve import _on
from .ids import PROCESSOR, UNSET, identified
from .react import implied, on_timer, timer_due
from .slots import held

_RANK = {"high": 0, "medium": 1, "low": 2}
#: A gate's timer fires this long after a start comes back, so the time it carries always finds it back.
_WAKE_MARGIN = timedelta(milliseconds=1)


# --------------------------------------------------------------------- the gate's fold


def clock(g: GateState, occurred_at: datetime) -> datetime:
    """The gate's time when it folds an event of ``occurred_at``: never earlier than the last (producers' clocks
    differ a little; a start's token must never come back early)."""
    return max(occurred_at, g.updated_at)


def _bumped(g: GateState, at: datetime, **changes: object) -> GateState:
    return _admit(replace(g, updated_at=at, version=g.version + 1, admitted=[], **changes), at)  # type: ignore[arg-type]


def live_spent(g: GateState, at: datetime) -> list[datetime]:
    """The starts of a rated key that have not come back by ``at`` (spent less than ``per_s`` before)."""
    if g.rate is None or g.per_s is None:
        return []
    back = timedelta(seconds=g.per_s)
    return [t for t in g.spent if t + back > at]


def _room(g: GateState, holders: int) -> bool:
    return g.limit == 0 or holders < g.limit


def _admit(g: GateState, at: datetime) -> GateState:
    """Admit waiting tasks, first in line first, while fewer than ``limit`` hold a slot and a start is left."""
    spent = live_spent(g, at)
    if spent != g.spent:
        g = replace(g, spent=spent)
    if not g.waiting or not _room(g, len(g.holders)) or (g.rate is not None and len(spent) >= g.rate):
        return g
    holders, waiting = dict(g.holders), list(g.waiting)
    attempts, priorities = dict(g.waiting_attempts), dict(g.waiting_priorities)
    admitted = list(g.admitted)
    while waiting and _room(g, len(holders)) and (g.rate is None or len(spent) < g.rate):
        task = waiting.pop(0)
        holders[task] = attempts.pop(task)
        priorities.pop(task, None)
        admitted.append(task)
        if g.rate is not None:
            spent.append(at)
    return replace(g, holders=holders, waiting=waiting, waiting_attempts=attempts, waiting_priorities=priorities,
                   admitted=admitted, granted=g.granted + len(admitted) - len(g.admitted), spent=spent)


def wakes_at(g: GateState) -> datetime | None:
    """When a task the rate holds back can be admitted: the time the start it waits for comes back, or None
    (nobody waits, a slot is what they wait for, or the key has no rate)."""
    if not g.waiting or g.rate is None or g.per_s is None or not _room(g, len(g.holders)) or len(g.spent) < g.rate:
        return None
    return g.spent[len(g.spent) - g.rate] + timedelta(seconds=g.per_s) + _WAKE_MARGIN


def _without(g: GateState, task: str) -> GateState:
    """``g`` without ``task``, holding or waiting."""
    if task not in g.holders and task not in g.waiting_attempts:
        return g
    return replace(g, holders={t: a for t, a in g.holders.items() if t != task},
                   waiting=[t for t in g.waiting if t != task],
                   waiting_attempts={t: a for t, a in g.waiting_attempts.items() if t != task},
                   waiting_priorities={t: p for t, p in g.waiting_priorities.items() if t != task})


@_on(SlotRequested, GateState)
def _on_requested(state: GateState | None, e: SlotRequested) -> GateState | None:
    g = state or GateState(gate_id=e.gate_id, created_at=e.occurred_at, updated_at=e.occurred_at)
    have = g.holders.get(e.holder, g.waiting_attempts.get(e.holder))
    if have is not None and have >= e.attempt and not _reranks(g, e):
        return state  # asked twice (a replay), or a stale request
    g = _without(g, e.holder)  # an older attempt it never released (it cannot hold two), or one re-ranked
    rank = _RANK.get(e.priority, 1)
    at = next((i for i, t in enumerate(g.waiting) if _RANK.get(g.waiting_priorities.get(t, ""), 1) > rank),
              len(g.waiting))
    waiting = [*g.waiting[:at], e.holder, *g.waiting[at:]]
    rate, per_s = _rate_of(e)
    return _bumped(g, clock(g, e.occurred_at), limit=_limit_of(e), waiting=waiting,
                   waiting_attempts={**g.waiting_attempts, e.holder: e.attempt},
                   waiting_priorities={**g.waiting_priorities, e.holder: e.priority},
                   rate=rate, per_s=per_s, spent=g.spent if rate is not None else [])


def _reranks(g: GateState, e: SlotRequested) -> bool:
    """True for a task that waits for this attempt's slot and asks again at another priority (its priority was
    changed): it leaves its place and joins the line behind the waiting tasks of its new priority."""
    return (g.waiting_attempts.get(e.holder) == e.attempt
            and _RANK.get(e.priority, 1) != _RANK.get(g.waiting_priorities.get(e.holder, ""), 1))


def _limit_of(e: SlotRequested) -> int:
    # 0: no limit on how many at once, only for a key with a rate (before schema set 8 every request had a limit)
    if e.limit <= 0 and e.rate is not None:
        return 0
    return min(max(1, e.limit), MAX_CONCURRENCY_LIMIT)


def _rate_of(e: SlotRequested) -> tuple[int | None, float | None]:
    if e.rate is None or e.per_s is None or not e.per_s > 0:
        return None, None
    return min(max(1, e.rate), MAX_RATE), min(e.per_s, MAX_RATE_PERIOD_S)


@_on(SlotReleased, GateState)
def _on_released(state: GateState | None, e: SlotReleased) -> GateState | None:
    if state is None or state.holders.get(e.holder, state.waiting_attempts.get(e.holder)) != e.attempt:
        return state  # not an attempt the gate has: released twice, or never asked
    return _bumped(_without(state, e.holder), clock(state, e.occurred_at))


@_on(GateWoken, GateState)
def _on_woken(state: GateState | None, e: GateWoken) -> GateState | None:
    if state is None:
        return state
    g = _bumped(state, clock(state, e.occurred_at))
    return g if g.admitted else state  # nothing came back in time (a duplicate, an early timer): no change


@timer_due.register
def _gate_timer_due(state: GateState, relay_slack_s: float) -> datetime | None:
    return wakes_at(state)


@on_timer.register
def _gate_on_timer(state: GateState, now: datetime, grace_s: float, producer: str = PROCESSOR) -> list[Event]:
    due = wakes_at(state)
    if due is None or due > now:
        return []
    woken = GateWoken(event_id=UNSET, gate_id=state.gate_id, occurred_at=now, producer=producer)
    return identified([woken], derived_id("timer", state.gate_id, state.version, now.isoformat()))


@_decides(SlotRequested, GateState)
@_decides(SlotReleased, GateState)
@_decides(GateWoken, GateState)
def _grants(state: GateState | None, e: SlotRequested | SlotReleased | GateWoken, now: datetime) -> list[Event]:
    """Tell each task the event admitted that it may be queued (``react`` skips a duplicate: CHANGE_DRIVEN)."""
    return grants(state, now) if state is not None else []


def grants(g: GateState, now: datetime) -> list[Event]:
    """A ``SlotGranted`` for each task the gate's last event admitted."""
    return [SlotGranted(event_id=UNSET, task_id=t, occurred_at=now, producer=PROCESSOR, gate_id=g.gate_id,
                        attempt=g.holders[t]) for t in g.admitted if t in g.holders]


@implied.register
def _gate_replay(state: GateState, now: datetime, event: Event | None = None) -> list[Event]:
    # Grants the task ignores unless it still waits for that attempt: sent again as they were.
    return grants(state, state.updated_at)


# --------------------------------------------------------------------- a task's fold of its grant


@_on(SlotGranted)
def _on_granted(state: TaskState | None, e: SlotGranted) -> TaskState | None:
    if state is None or not held(state) or state.waiting_for != e.gate_id or e.attempt != state.attempt + 1:
        return state  # not waiting for this slot (cancelled, a duplicate): the task's release frees it
    return replace(state, updated_at=e.occurred_at, version=state.version + 1, status=Status.QUEUED.value,
                   attempt=e.attempt, waiting_for=None, retry_at=None)

