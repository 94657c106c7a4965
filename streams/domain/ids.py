"""Event ids: the decider derives them from the cause of a decision and the event's place in it, never at random.

The same command on the same state, or the same event folded into the same
state, gives the same events byte for byte, ids included; so a replay
decides exactly what was decided, and an event decided twice (a processor
re-folding after a crash, two relays requeueing one retry) carries one id,
which consumers may dedup by. Distinct causes give distinct ids:

- a command: its fields, the version of the state it is decided on and the
  time (``command_cause``);
- an event the processor folds: that event's id (``step``, ``react``,
  ``replay``), and the same for the relay's requeue of a retry and a ready
  message the broker refused;
- a timer or an expired lease: the key, the state's version, the attempt and
  the time (``state_cause``).

Within one cause, an event's place is its type, its key and its ordinal
among events of that type and key (``identified``): stable if the list is
reordered. Events are built with ``event_id=UNSET`` and identified at the
entry points (``decide``, ``react``, ``step``, ``replay``, ``on_timer``,
``lease_expired``, ``requeued``, ``ready_refused``); only producers at the
edge (executors) mint ids (``schemas.new_id``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

from taskstream.schemas import Event, ScheduleState, TaskState, derived_id

#: The id of an event not yet identified (never written: the entry points replace it).
UNSET = ""
#: The producer of the events the decider decides (the processor stamps its own id on them: ``order.stamped``).
PROCESSOR = "processor"


def event_ids(events: Sequence[Event], cause: str) -> list[str]:
    """The id of each of ``events`` decided for ``cause``: from the cause, its type, its key and its ordinal."""
    seen: dict[tuple[str, str], int] = {}
    out = []
    for e in events:
        place = (type(e).__name__, e.aggregate_id)
        n = seen[place] = seen.get(place, -1) + 1
        event_id: str = derived_id(cause, *place, n)
        out.append(event_id)
    return out


_E = TypeVar("_E", bound=Event)


def identified(events: list[_E], cause: str, **changes: Any) -> list[_E]:
    """``events`` with their ids for ``cause`` (``event_ids``) and ``changes`` applied (one copy each)."""
    return [replace(e, event_id=i, **changes) for e, i in zip(events, event_ids(events, cause), strict=True)]


def command_cause(state: TaskState | ScheduleState | None, command: object, now: datetime) -> str:
    """The cause of the events answering ``command``: the command's fields, the state's version and the time."""
    cause: str = derived_id("command", repr(command), 0 if state is None else state.version, now.isoformat())
    return cause


def state_cause(kind: str, state: TaskState | ScheduleState, now: datetime, *more: object) -> str:
    """The cause of what a ``kind`` of clock event (a timer, a lease) decides for ``state`` at ``now``."""
    cause: str = derived_id(kind, state.task_id, state.version, now.isoformat(), *more)
    return cause
