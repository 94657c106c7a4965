"""A task's side of its concurrency key: the key it carries, and what its steps owe the key's gate (pure).

The gate itself (the slots of one key, an aggregate of its own) is ``gates.py``,
which also tells the whole story; docs/decisions/0025-flow-control.md the design.
"""

from __future__ import annotations

import re
from datetime import datetime

from taskstream.schemas import (
    Event,
    SlotReleased,
    SlotRequested,
    Status,
    TaskState,
    ValidationError,
    codec,
)
from taskstream.schemas.limits import MAX_CONCURRENCY_KEY_CHARS, MAX_RATE, MAX_RATE_PERIOD_S

from .evolve import ACTIVE, GATE_PREFIX, gate_id
from .ids import PROCESSOR, UNSET

_FIELD = re.compile(r"\{payload((?:\.[A-Za-z0-9_\-]+)*)\}")


def concurrency_key_of(template: str, payload: str) -> str:
    """The concurrency key of a task: ``template`` with each ``{payload.a.b}`` replaced by that payload field.

    ``payload`` is the task's JSON text. A field that is missing, or is an
    object or array, raises ``ValidationError`` naming ``concurrency.key``;
    strings are used as they are, other values as JSON (``true``, ``3``).
    """
    if "{" not in template:
        key = template
    else:
        try:
            doc = codec.loads_json(payload)
        except codec.JSONDecodeError:
            doc = None

        def field(m: re.Match[str]) -> str:
            value: object = doc
            path = m.group(1)
            for name in path.split(".")[1:]:
                if not isinstance(value, dict) or name not in value:
                    raise ValidationError("concurrency.key", f"the payload has no field {'payload' + path!r}")
                value = value[name]
            if path == "" or isinstance(value, (dict, list)):
                raise ValidationError("concurrency.key", f"{'payload' + path!r} is not a single value")
            return value if isinstance(value, str) else codec.dumps_json(value)

        key = _FIELD.sub(field, template)
    if not key or len(key) > MAX_CONCURRENCY_KEY_CHARS:
        raise ValidationError("concurrency.key", f"the key must have 1 to {MAX_CONCURRENCY_KEY_CHARS} characters")
    return key


def rate_of(rate: int | None, per_s: float | None, at: str = "concurrency.") -> tuple[int | None, float | None]:
    """A rate as a task's key or a handler's limit asks for it: ``(rate, per_s)``, both or neither.

    ``ValidationError`` naming ``<at>rate`` or ``<at>per_s`` (``at``: where
    the fields are, ``concurrency.`` in a task, ``""`` in a handler's limit)
    for one without the other or a value out of range (1 to ``MAX_RATE``
    starts in more than 0 and at most ``MAX_RATE_PERIOD_S`` seconds).
    """
    if rate is None and per_s is None:
        return None, None
    if rate is None or not 1 <= rate <= MAX_RATE:
        raise ValidationError(f"{at}rate", f"a rate is 1 to {MAX_RATE} starts per period (per_s)")
    if per_s is None or not 0 < per_s <= MAX_RATE_PERIOD_S:
        raise ValidationError(f"{at}per_s",
                              f"a rate needs its period: more than 0 and at most {MAX_RATE_PERIOD_S:g} seconds")
    return rate, float(per_s)


def gated(state: object) -> bool:
    """True for a task that runs under a concurrency key (a limit, a rate or both)."""
    return (isinstance(state, TaskState) and bool(state.concurrency_key)
            and (state.concurrency_limit is not None or state.concurrency_rate is not None))


def held(state: object) -> bool:
    """True for a task that is ready but waits for a slot of its concurrency key (``waiting_for``)."""
    return (isinstance(state, TaskState) and state.status == Status.PENDING.value and state.waiting_for is not None
            and state.waiting_for.startswith(GATE_PREFIX))


def slot_attempt(state: object) -> int | None:
    """The attempt for which a task holds or asks for a slot of its key, or None."""
    if not gated(state):
        return None
    assert isinstance(state, TaskState)
    if held(state):
        return state.attempt + 1
    if state.status in ACTIVE:
        return state.attempt
    return None


def slot_messages(before: object, after: object, now: datetime) -> list[Event]:
    """What a task's step owes its key's gate: release the slot it held, ask for the one it now waits for.

    A task that waits for a slot and whose priority changed (a PATCH) asks
    again for the same attempt with its new priority: the gate moves it in
    its line (``gates.py``).
    """
    was, now_at = slot_attempt(before), slot_attempt(after)
    if was == now_at:
        if now_at is not None and _reranked(before, after):
            assert isinstance(after, TaskState)
            return [_requested(after, now_at, now)]
        return []
    out: list[Event] = []
    if was is not None:
        assert isinstance(before, TaskState)
        out.append(_released(before, was, now))
    if now_at is not None:
        assert isinstance(after, TaskState)
        out.append(_requested(after, now_at, now))
    return out


def _reranked(before: object, after: object) -> bool:
    """True when a task waits for the same slot before and after a step, at another priority."""
    return (held(before) and held(after) and isinstance(before, TaskState) and isinstance(after, TaskState)
            and before.waiting_for == after.waiting_for and before.priority != after.priority)


def slot_replay(state: TaskState, now: datetime) -> list[Event]:
    """What a gated task's state implies for its gate when its last event is folded twice (crash repair).

    Held: the request again (the gate ignores one it has). Neither held nor
    active: releases of the attempts it may have held or asked for (the gate
    ignores a release of an attempt it does not have), so a slot is never
    kept by a crash between the table write and the sends.
    """
    if not gated(state) or state.status in ACTIVE:
        return []
    if held(state):
        return [_requested(state, state.attempt + 1, state.updated_at)]
    return [_released(state, n, state.updated_at) for n in (state.attempt, state.attempt + 1) if n >= 1]


def _requested(state: TaskState, attempt: int, now: datetime) -> SlotRequested:
    assert state.concurrency_key is not None
    return SlotRequested(event_id=UNSET, gate_id=gate_id(state.concurrency_key), occurred_at=now, producer=PROCESSOR,
                         holder=state.task_id, attempt=attempt, priority=state.priority,
                         limit=state.concurrency_limit if state.concurrency_limit is not None else 0,
                         rate=state.concurrency_rate, per_s=state.concurrency_per_s)


def _released(state: TaskState, attempt: int, now: datetime) -> SlotReleased:
    assert state.concurrency_key is not None
    return SlotReleased(event_id=UNSET, gate_id=gate_id(state.concurrency_key), occurred_at=now, producer=PROCESSOR,
                        holder=state.task_id, attempt=attempt)
