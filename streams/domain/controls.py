"""Pause and resume of a handler or a workflow: per-partition control copies and held tasks (pure).

A *target* is ``handler:<name>`` or ``workflow:<id>``. Pausing it writes one
``ControlPaused`` per partition of ``<p>.events`` (``PauseTarget``: the API
produces copy *i* to partition *i*, keyed ``control:<i>:<target>``), so every
partition folds its own copy (``ControlState``) in its own log order. When a
task of that partition would be queued (its first attempt, a dependency met,
``run_at`` reached, a retry due, a redrive, a concurrency slot granted) while
one of its targets is paused there, the step holds it instead: a
``TaskHeld`` follow-up, applied at once, leaves it ``pending`` with
``waiting_for: "paused:<target>"`` and the attempt not started (a held task
holds no concurrency slot). The decision is an event of the log, so a
rebuild and a crash replay fold the same state without asking the control.
Resuming writes ``ControlResumed`` to every partition; each releases the
tasks its pause held there (one ``TaskQueued`` of the held attempt each),
which are held again if another of their targets is still paused.

Attempts already queued or running when the pause is folded finish. The
processor asks two questions the decider cannot answer from one state:
``Paused`` (is this target paused in my partition?) and ``Held`` (which of my
tasks wait for ``paused:<target>``?); both come from its partition's table.
The design: docs/decisions/0028-pause-resume.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TypeGuard

from taskstream.schemas import (
    ControlLimited,
    ControlPaused,
    ControlResumed,
    ControlState,
    Event,
    Status,
    TaskHeld,
    TaskQueued,
    TaskReleased,
    TaskState,
    ValidationError,
)
from taskstream.schemas.limits import MAX_CONCURRENCY_LIMIT

from .decide import _decides
from .evolve import GATE_PREFIX, PAUSE_PREFIX, WAITING, _bump, _deps_met, _on, _queued, gate_id
from .ids import PROCESSOR, UNSET
from .slots import held as slot_held
from .slots import rate_of

#: The aggregate id of one partition's copy of a control starts with this.
CONTROL_PREFIX = "control:"
#: Target kinds: a handler's name or a workflow's id follows the colon.
HANDLER, WORKFLOW = "handler", "workflow"
#: Longest handler name or workflow id a pause accepts.
MAX_TARGET_CHARS = 200



@dataclass(frozen=True, slots=True)
class HandlerLimit:
    """What a handler's limit allows: at most ``limit`` attempts queued or running at once (None: any number)
    and at most ``rate`` starts in any ``per_s`` seconds (None: no rate); at least one of the two is set."""

    limit: int | None = None
    rate: int | None = None
    per_s: float | None = None

    @classmethod
    def of(cls, c: ControlState) -> HandlerLimit | None:
        """The limit a control copy holds, or None (no limit and no rate)."""
        if c.limit is None and (c.rate is None or c.per_s is None):
            return None
        return cls(c.limit, c.rate if c.per_s is not None else None, c.per_s if c.rate is not None else None)


#: Is ``target`` paused in the partition being stepped? (the processor's table; None: nothing is paused)
Paused = Callable[[str], bool] | None
#: The limit and rate of handler ``target`` in the partition being stepped, or None (None: no handler has one)
Limits = Callable[[str], HandlerLimit | None] | None
#: The states of the partition's tasks that wait for ``waiting_for`` (``paused:<target>``), asked at a resume.
Held = Callable[[str], Iterable[TaskState]] | None


def target(kind: str, name: str) -> str:
    """``handler:<name>`` or ``workflow:<id>``; ``ValidationError`` for an unknown kind or an unusable name."""
    if kind not in (HANDLER, WORKFLOW):
        raise ValidationError("target", f"{kind!r} is neither {HANDLER!r} nor {WORKFLOW!r}")
    if not name or len(name) > MAX_TARGET_CHARS or any(c.isspace() for c in name):
        raise ValidationError(kind, f"a {kind} name has 1 to {MAX_TARGET_CHARS} characters and no whitespace")
    return f"{kind}:{name}"


def control_id(partition: int, of: str) -> str:
    """The key of partition ``partition``'s copy of the control of target ``of``."""
    return f"{CONTROL_PREFIX}{partition}:{of}"


def targets_of(state: TaskState) -> tuple[str, ...]:
    """The targets whose pause holds ``state``: its handler's, and its workflow's if it has one."""
    if state.workflow_id:
        return f"{HANDLER}:{state.handler}", f"{WORKFLOW}:{state.workflow_id}"
    return (f"{HANDLER}:{state.handler}",)


def paused_hold(state: object) -> TypeGuard[TaskState]:
    """True for a task a pause holds (``pending`` with ``waiting_for: "paused:<target>"``)."""
    return (isinstance(state, TaskState) and state.status == Status.PENDING.value and state.waiting_for is not None
            and state.waiting_for.startswith(PAUSE_PREFIX))


def hold_reason(state: TaskState, paused: Paused) -> str | None:
    """``paused:<target>`` for the first of the task's targets that is paused, or None."""
    if paused is None:
        return None
    for t in targets_of(state):
        if paused(t):
            return PAUSE_PREFIX + t
    return None


def hold_of(state: TaskState, paused: Paused, limits: Limits) -> tuple[str, HandlerLimit | None] | None:
    """What holds a task being admitted: ``(paused:<target>, None)`` while one of its targets is paused;
    ``(concurrency:handler:<name>, its HandlerLimit)`` when its handler has a limit or a rate and the task has no
    concurrency key of its own (from then on it is admitted through that gate, ``gates.py``); else None."""
    reason = hold_reason(state, paused)
    if reason is not None:
        return reason, None
    if limits is not None and not state.concurrency_key:
        limit = limits(f"{HANDLER}:{state.handler}")
        if limit is not None:
            return gate_id(f"{HANDLER}:{state.handler}"), limit
    return None


def admitted(before: object, after: object) -> bool:
    """True when a step admits a task's attempt: newly ``queued``, or newly waiting for a concurrency slot."""
    if not isinstance(after, TaskState):
        return False
    if after.status == Status.QUEUED.value:
        return not (isinstance(before, TaskState) and before.status == Status.QUEUED.value
                    and before.attempt == after.attempt)
    if slot_held(after):
        return not (slot_held(before) and isinstance(before, TaskState) and before.attempt == after.attempt)
    return False


def _handler_gate(limit: HandlerLimit | None) -> dict[str, object]:
    """TaskHeld's fields of a hold by a handler's limit (its key's limit and rate), or none."""
    if limit is None:
        return {}
    return dict(concurrency_limit=limit.limit, concurrency_rate=limit.rate, concurrency_per_s=limit.per_s)


def held_instead(follow: list[Event], state: TaskState, reason: str,
                 limit: HandlerLimit | None = None) -> list[Event]:
    """``follow`` with the task's own TaskQueued replaced by the TaskHeld of the same attempt, of ``state``."""
    own = state.task_id
    return [TaskHeld(event_id=UNSET, task_id=e.task_id, occurred_at=e.occurred_at, producer=e.producer,
                     attempt=e.attempt, waiting_for=reason, version=state.version,
                     **_handler_gate(limit))  # type: ignore[arg-type]
            if isinstance(e, TaskQueued) and e.task_id == own else e
            for e in follow]


def hold(state: TaskState, reason: str, now: datetime, limit: HandlerLimit | None = None) -> TaskHeld:
    """The TaskHeld of the attempt ``state`` was just admitted for (``admitted``)."""
    attempt = state.attempt if state.status == Status.QUEUED.value else state.attempt + 1
    return TaskHeld(event_id=UNSET, task_id=state.task_id, occurred_at=now, producer=PROCESSOR, attempt=attempt,
                    waiting_for=reason, version=state.version, **_handler_gate(limit))  # type: ignore[arg-type]


def releases(state: ControlState, held: Held, now: datetime) -> list[Event]:
    """What a resumed copy owes the tasks its pause held in the partition: a TaskReleased of each held attempt."""
    if held is None or state.paused:
        return []
    reason = PAUSE_PREFIX + state.target
    tasks = sorted(held(reason), key=lambda s: s.task_id)
    return [TaskReleased(event_id=UNSET, task_id=s.task_id, occurred_at=now, producer=PROCESSOR,
                         attempt=s.attempt + 1, waiting_for=reason)
            for s in tasks if paused_hold(s) and s.waiting_for == reason]


# --------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True, kw_only=True)
class PauseTarget:
    """Pause ``target`` in each of ``partitions`` partitions (``ControlPaused``, one copy per partition)."""

    target: str
    partitions: int
    producer: str
    reason: str = ""
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitTarget:
    """At most ``limit`` attempts of handler ``target`` queued or running at once (None: no limit) and at most
    ``rate`` starts in any ``per_s`` seconds (None: no rate; both or neither), in each of ``partitions``
    partitions (``ControlLimited``, one copy per partition). Neither a limit nor a rate ends the handler's."""

    target: str
    partitions: int
    producer: str
    limit: int | None
    rate: int | None = None
    per_s: float | None = None
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumeTarget:
    """Resume ``target`` in each of ``partitions`` partitions (``ControlResumed``, one copy per partition)."""

    target: str
    partitions: int
    producer: str
    actor: str | None = None


def _copies(partitions: int) -> range:
    if partitions < 1:
        raise ValidationError("partitions", "a control needs at least one partition")
    return range(partitions)


@_decides(PauseTarget, ControlState)
def _pause(state: ControlState | None, c: PauseTarget, now: datetime) -> list[Event]:
    return [ControlPaused(event_id=UNSET, control_id=control_id(p, c.target), target=c.target, partition=p,
                          occurred_at=now, producer=c.producer, reason=c.reason, actor=c.actor)
            for p in _copies(c.partitions)]


@_decides(LimitTarget, ControlState)
def _limit(state: ControlState | None, c: LimitTarget, now: datetime) -> list[Event]:
    if not c.target.startswith(f"{HANDLER}:"):
        raise ValidationError("target", "only a handler has a limit")
    if c.limit is not None and not 1 <= c.limit <= MAX_CONCURRENCY_LIMIT:
        raise ValidationError("limit", f"a limit is 1 to {MAX_CONCURRENCY_LIMIT}")
    rate, per_s = rate_of(c.rate, c.per_s, at="")
    return [ControlLimited(event_id=UNSET, control_id=control_id(p, c.target), target=c.target, partition=p,
                           occurred_at=now, producer=c.producer, limit=c.limit, rate=rate, per_s=per_s,
                           actor=c.actor)
            for p in _copies(c.partitions)]


@_decides(ResumeTarget, ControlState)
def _resume(state: ControlState | None, c: ResumeTarget, now: datetime) -> list[Event]:
    return [ControlResumed(event_id=UNSET, control_id=control_id(p, c.target), target=c.target, partition=p,
                           occurred_at=now, producer=c.producer, actor=c.actor)
            for p in _copies(c.partitions)]


# --------------------------------------------------------------------- folds


@_on(ControlPaused, ControlState)
def _on_paused(state: ControlState | None, e: ControlPaused) -> ControlState | None:
    if state is not None and state.paused:
        return state  # paused twice: the first pause stands
    c = state or ControlState(control_id=e.control_id, target=e.target, partition=e.partition,
                              created_at=e.occurred_at, updated_at=e.occurred_at)
    return replace(c, updated_at=e.occurred_at, version=c.version + 1, paused=True, paused_at=e.occurred_at,
                   paused_by=e.actor, reason=e.reason)


@_on(ControlResumed, ControlState)
def _on_resumed(state: ControlState | None, e: ControlResumed) -> ControlState | None:
    if state is None or not state.paused:
        return state  # never paused here, or resumed twice
    return replace(state, updated_at=e.occurred_at, version=state.version + 1, paused=False, paused_at=None,
                   paused_by=e.actor, reason="")


@_on(ControlLimited, ControlState)
def _on_limited(state: ControlState | None, e: ControlLimited) -> ControlState | None:
    was = (state.limit, state.rate, state.per_s) if state is not None else (None, None, None)
    if was == (e.limit, e.rate, e.per_s):
        return state
    c = state or ControlState(control_id=e.control_id, target=e.target, partition=e.partition,
                              created_at=e.occurred_at, updated_at=e.occurred_at)
    return replace(c, updated_at=e.occurred_at, version=c.version + 1, limit=e.limit, rate=e.rate, per_s=e.per_s)


@_on(TaskHeld)
def _on_held(state: TaskState | None, e: TaskHeld) -> TaskState | None:
    """Attempt ``e.attempt`` waits for ``e.waiting_for`` instead of being queued (or of waiting for a slot)."""
    if state is None or state.version != e.version:
        return state  # not the state the processor held: already held, or changed since (a copy sent again)
    # A hold by a handler limit (or rate) gives the task the handler's gate as its concurrency key from now on.
    rated = e.concurrency_rate is not None and e.concurrency_per_s is not None
    gate = dict(concurrency_key=e.waiting_for[len(GATE_PREFIX):], concurrency_limit=e.concurrency_limit,
                concurrency_rate=e.concurrency_rate if rated else None,
                concurrency_per_s=e.concurrency_per_s if rated else None) if (
        (e.concurrency_limit is not None or rated) and e.waiting_for.startswith(GATE_PREFIX)) else {}
    if state.status == Status.QUEUED.value and e.attempt == state.attempt:
        # Admitted by an event the processor folded (a relay's TaskQueued, a grant): not started, taken back.
        return _bump(state, e.occurred_at, status=Status.PENDING.value, attempt=state.attempt - 1,
                     waiting_for=e.waiting_for, retry_at=None, **gate)
    if e.attempt != state.attempt + 1:
        return state
    if slot_held(state) or (state.status in WAITING and state.waiting_for is None
                            and (state.status != Status.PENDING.value or _deps_met(state))):
        return _bump(state, e.occurred_at, status=Status.PENDING.value, waiting_for=e.waiting_for, retry_at=None,
                     **gate)
    return state


@_on(TaskReleased)
def _on_released(state: TaskState | None, e: TaskReleased) -> TaskState | None:
    """The pause a task waited for ended: its attempt is admitted as a TaskQueued admits one (``evolve``)."""
    if not paused_hold(state) or state.waiting_for != e.waiting_for or e.attempt != state.attempt + 1:
        return state  # not held for that (released twice, cancelled meanwhile)
    free = replace(state, waiting_for=None)
    admitted = _queued(free, TaskQueued(event_id=e.event_id, task_id=e.task_id, occurred_at=e.occurred_at,
                                        producer=e.producer, attempt=e.attempt, priority=state.priority))
    return state if admitted is free else admitted
