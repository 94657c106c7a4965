"""PATCH of a held task in the pure decider: it may be changed and stays held (issue 28, decision 0029).

Contract under test: a task held by a pause (``paused:handler:<h>``,
``paused:workflow:<id>``), by its handler's limit or rate, or by its own
concurrency key (``concurrency:<key>``) answers ``UpdateTask`` of its
priority, payload, timeout and retry fields with a ``TaskUpdated`` whose
step leaves it ``pending`` with the same ``waiting_for`` and appends no
``TaskQueued`` (paused or not by then); the release or grant that admits it
later queues it with the new values. Its ``run_at`` cannot change (409):
it was ready when it was held.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from taskstream.schemas import (
    CommandRejected,
    SlotGranted,
    TaskCreated,
    TaskQueued,
    TaskUpdated,
)
from taskstream.streams import domain
from taskstream.streams.domain import HandlerLimit, ResumeTarget, UpdateTask

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)

#: (how the task is held, TaskCreated fields, the step's lookups, its waiting_for)
HOLDS = {
    "paused handler": ({}, dict(paused=lambda t: t == "handler:h"), "paused:handler:h"),
    "paused workflow": (dict(workflow_id="w"), dict(paused=lambda t: t == "workflow:w"), "paused:workflow:w"),
    "handler limit": ({}, dict(limits={"handler:h": HandlerLimit(1)}.get), "concurrency:handler:h"),
    "handler rate": ({}, dict(limits={"handler:h": HandlerLimit(None, 2, 1.0)}.get), "concurrency:handler:h"),
    "own key": (dict(concurrency_key="k", concurrency_limit=1), {}, "concurrency:k"),
}

CHANGES = {
    "priority": dict(priority="high"),
    "payload": dict(payload='{"n": 2}'),
    "timeout_s": dict(timeout_s=9.0),
    "max_attempts": dict(max_attempts=7),
    "backoff": dict(backoff_initial_s=3.0, backoff_multiplier=1.5),
}


def _held(hold: str):
    fields, lookups, waiting_for = HOLDS[hold]
    created = TaskCreated(task_id="t1", occurred_at=T0, producer="api", handler="h", **fields)
    state, _ = domain.step(None, created, T0, "p", **lookups)
    assert (state.status, state.waiting_for, state.attempt) == ("pending", waiting_for, 0)
    return state, lookups


@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
@pytest.mark.parametrize("hold", HOLDS, ids=list(HOLDS))
def test_a_held_task_may_be_patched_and_stays_held(hold, change):
    state, lookups = _held(hold)
    (updated,) = domain.decide(state, UpdateTask(task_id="t1", producer="api", changes=CHANGES[change]), T0)
    assert isinstance(updated, TaskUpdated)
    for controls in (lookups, {}):  # still paused or limited, or not any more: the update admits nothing
        after, follow = domain.step(state, updated, T0, "p", **controls)
        assert (after.status, after.waiting_for, after.attempt) == ("pending", state.waiting_for, 0)
        assert all(getattr(after, k) == v for k, v in CHANGES[change].items())
        assert not [e for e in follow if isinstance(e, TaskQueued)]


@pytest.mark.parametrize("hold", HOLDS, ids=list(HOLDS))
def test_a_held_tasks_run_at_cannot_change(hold):
    state, _ = _held(hold)
    for run_at in (T0 + timedelta(hours=1), T0 - timedelta(hours=1)):
        with pytest.raises(CommandRejected, match="run_at"):
            domain.decide(state, UpdateTask(task_id="t1", producer="api", changes=dict(run_at=run_at)), T0)
    # the same run_at is no change
    domain.decide(state, UpdateTask(task_id="t1", producer="api", changes=dict(run_at=state.run_at)), T0)


def test_a_patched_task_is_released_with_its_new_values():
    state, lookups = _held("paused handler")
    (updated,) = domain.decide(state, UpdateTask(task_id="t1", producer="api",
                                                 changes=dict(priority="high", payload='{"n": 2}')), T0)
    state, _ = domain.step(state, updated, T0, "p", **lookups)
    control = None
    for e in domain.decide(None, domain.PauseTarget(target="handler:h", partitions=1, producer="api"), T0):
        control, _ = domain.step(control, e, T0, "p")
    (resumed,) = domain.decide(None, ResumeTarget(target="handler:h", partitions=1, producer="api"), T0)
    control, releases = domain.step(control, resumed, T0, "p", held=lambda reason: [state])
    queued, _ = domain.step(state, releases[0], T0, "p")
    assert (queued.status, queued.priority) == ("queued", "high")
    ready = domain.ready_message(queued, T0)
    assert (ready.priority, ready.payload) == ("high", '{"n": 2}')


def test_a_patched_task_is_granted_its_slot_with_its_new_values():
    state, lookups = _held("own key")
    (updated,) = domain.decide(state, UpdateTask(task_id="t1", producer="api", changes=dict(priority="low")), T0)
    state, _ = domain.step(state, updated, T0, "p", **lookups)
    granted = SlotGranted(task_id="t1", occurred_at=T0, producer="p", gate_id="concurrency:k", attempt=1)
    queued, _ = domain.step(state, granted, T0, "p")
    assert (queued.status, queued.priority) == ("queued", "low")
