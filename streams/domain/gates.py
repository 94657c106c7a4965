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
slot: it asks again when the retry is due, behind the tasks that waited.
The design and its alternatives: docs/decisions/0025-flow-control.md.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from taskstream.schemas import Event, GateState, SlotGranted, SlotReleased, SlotRequested, Status, TaskState
from taskstream.schemas.limits import MAX_CONCURRENCY_LIMIT

from .decide import _decides
from .evolve import _on
from .ids import PROCESSOR, UNSET
from .react import implied
from .slots import held

_RANK = {"high": 0, "medium": 1, "low": 2}


# --------------------------------------------------------------------- the gate's fold


def _bumped(g: GateState, at: datetime, **changes: object) -> GateState:
    return _admit(replace(g, updated_at=at, version=g.version + 1, admitted=[], **changes))  # type: ignore[arg-type]


def _admit(g: GateState) -> GateState:
    """Admit waiting tasks, first in line first, while fewer than ``limit`` hold a slot."""
    if len(g.holders) >= g.limit or not g.waiting:
        return g
    holders, waiting = dict(g.holders), list(g.waiting)
    attempts, priorities = dict(g.waiting_attempts), dict(g.waiting_priorities)
    admitted = list(g.admitted)
    while waiting and len(holders) < g.limit:
        task = waiting.pop(0)
        holders[task] = attempts.pop(task)
        priorities.pop(task, None)
        admitted.append(task)
    return replace(g, holders=holders, waiting=waiting, waiting_attempts=attempts, waiting_priorities=priorities,
                   admitted=admitted, granted=g.granted + len(admitted) - len(g.admitted))


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
    if have is not None and have >= e.attempt:
        return state  # asked twice (a replay), or a stale request
    g = _without(g, e.holder)  # an older attempt it never released (it cannot hold two)
    rank = _RANK.get(e.priority, 1)
    at = next((i for i, t in enumerate(g.waiting) if _RANK.get(g.waiting_priorities.get(t, ""), 1) > rank),
              len(g.waiting))
    waiting = [*g.waiting[:at], e.holder, *g.waiting[at:]]
    return _bumped(g, e.occurred_at, limit=min(max(1, e.limit), MAX_CONCURRENCY_LIMIT), waiting=waiting,
                   waiting_attempts={**g.waiting_attempts, e.holder: e.attempt},
                   waiting_priorities={**g.waiting_priorities, e.holder: e.priority})


@_on(SlotReleased, GateState)
def _on_released(state: GateState | None, e: SlotReleased) -> GateState | None:
    if state is None or state.holders.get(e.holder, state.waiting_attempts.get(e.holder)) != e.attempt:
        return state  # not an attempt the gate has: released twice, or never asked
    return _bumped(_without(state, e.holder), e.occurred_at)


@_decides(SlotRequested, GateState)
@_decides(SlotReleased, GateState)
def _grants(state: GateState | None, e: SlotRequested | SlotReleased, now: datetime) -> list[Event]:
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

