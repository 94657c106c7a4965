"""The commands' deciders: every guard of a client command lives in ``streams.domain.decide``.

For each command: the events it yields, the refusals (``NotFound``,
``StaleVersion``, ``CommandRejected``) exactly when its guard says, and the
property the API relies on for read-your-writes: folding the decided events
into the state the decision saw gives the change the command asked for.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskstream.schemas import (
    CommandRejected,
    NotFound,
    ScheduleState,
    StaleVersion,
    Status,
    TaskCancelled,
    TaskCreated,
    TaskRedriven,
    TaskUpdated,
)
from taskstream.streams import domain
from taskstream.streams.domain import (
    CancelTask,
    CreateSchedule,
    DeleteSchedule,
    RedriveDeadLettered,
    RedriveTask,
    SubmitTask,
    UpdateTask,
    decide,
    evolve,
    fold,
)

from .strategies import task_state

NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)
STATUSES = [s.value for s in Status]


def created(**fields) -> TaskCreated:
    (event,) = decide(None, SubmitTask(task_id="t", handler="h", producer="api", **fields), NOW - timedelta(seconds=5))
    return event


def state(status: str = "pending", **fields):
    return replace(evolve(None, created()), status=status, **fields)


# -------------------------------------------------------------------- submit


def test_submit_yields_task_created_with_every_field_of_the_command() -> None:
    c = SubmitTask(task_id="t1", handler="h", producer="api", priority="high", payload='{"a":1}', name="n",
                   labels={"k": "v"}, depends_on=["u"], timeout_s=3.0, max_attempts=4, backoff_initial_s=0.5,
                   backoff_multiplier=3.0, backoff_max_s=9.0, backoff_jitter=0.0, key="k1", workflow_id="w",
                   upstream_keys={"u": "up"}, idempotency_key="ik", request_hash="rh")
    (e,) = decide(None, c, NOW)
    assert isinstance(e, TaskCreated) and e.occurred_at == NOW and e.producer == "api"
    for name in ("task_id", "handler", "priority", "payload", "name", "labels", "depends_on", "timeout_s",
                 "max_attempts", "backoff_initial_s", "backoff_multiplier", "backoff_max_s", "backoff_jitter", "key",
                 "workflow_id", "upstream_keys", "idempotency_key", "request_hash"):
        assert getattr(e, name) == getattr(c, name), name
    s = evolve(None, e)
    assert s.status == "pending" and s.version == 1 and s.depends_on == ["u"]


def test_submit_of_an_existing_id_is_rejected() -> None:
    with pytest.raises(CommandRejected, match="already exists"):
        decide(state(), SubmitTask(task_id="t", handler="h", producer="api"), NOW)


# -------------------------------------------------------------------- update


def test_update_of_an_unknown_task_is_not_found() -> None:
    with pytest.raises(NotFound, match="task x not found"):
        decide(None, UpdateTask(task_id="x", producer="api", changes={"priority": "high"}), NOW)


def test_update_at_another_version_is_stale_and_names_the_current_one() -> None:
    with pytest.raises(StaleVersion) as info:
        decide(state(version=3), UpdateTask(task_id="t", producer="api", changes={"priority": "high"},
                                             expected_version=2), NOW)
    assert info.value.version == 3 and isinstance(info.value, CommandRejected)


@given(st.sampled_from(STATUSES), st.integers(0, 3))
def test_update_is_allowed_exactly_before_the_first_attempt(status: str, attempt: int) -> None:
    s = state(status, attempt=attempt)
    c = UpdateTask(task_id="t", producer="api", changes={"priority": "low"})
    if status in domain.UPDATABLE and attempt == 0:
        (e,) = decide(s, c, NOW)
        assert isinstance(e, TaskUpdated) and e.expected_version == s.version and e.priority == "low"
        assert fold([e], s).priority == "low"
    else:
        with pytest.raises(CommandRejected, match="can no longer be changed"):
            decide(s, c, NOW)


def test_update_of_a_field_that_is_not_patchable_is_rejected() -> None:
    with pytest.raises(CommandRejected, match="handler"):
        decide(state(), UpdateTask(task_id="t", producer="api", changes={"handler": "other"}), NOW)


@given(st.fixed_dictionaries({}, optional={
    "priority": st.sampled_from(["high", "medium", "low"]),
    "payload": st.sampled_from(["null", "[1]", '{"a":2}']),
    "timeout_s": st.floats(0.1, 100),
    "max_attempts": st.integers(1, 10),
    "backoff_max_s": st.floats(0, 60),
}))
def test_update_folds_into_exactly_the_asked_changes(changes: dict) -> None:
    s = state("pending")
    after = fold(decide(s, UpdateTask(task_id="t", producer="api", changes=changes), NOW), s)
    for name in domain.PATCHABLE:
        assert getattr(after, name) == changes.get(name, getattr(s, name)), name


# ----------------------------------------------------------- cancel, redrive


@given(task_state)
def test_cancel_is_refused_exactly_for_terminal_tasks_and_folds_to_cancelled(s) -> None:
    c = CancelTask(task_id=s.task_id, producer="api", reason="why")
    if s.status in domain.TERMINAL_VALUES:
        with pytest.raises(CommandRejected, match="already"):
            decide(s, c, NOW)
        return
    (e,) = decide(s, c, NOW)
    assert isinstance(e, TaskCancelled) and e.reason == "why"
    after = fold([e], s)
    assert after.status == "cancelled" and after.error == "cancelled: why" and after.finished_at == NOW


@given(task_state)
def test_redrive_is_allowed_exactly_for_failed_and_upstream_failed(s) -> None:
    c = RedriveTask(task_id=s.task_id, producer="api")
    if s.status not in ("failed", "upstream_failed"):
        with pytest.raises(CommandRejected, match="only failed or upstream_failed"):
            decide(s, c, NOW)
        return
    (e,) = decide(s, c, NOW)
    assert isinstance(e, TaskRedriven)
    after = fold([e], s)
    assert after.status == ("scheduled" if s.status == "failed" else "pending")
    assert after.attempt_offset == s.attempt and after.version == s.version + 1


@pytest.mark.parametrize("command", [CancelTask(task_id="x", producer="api"), RedriveTask(task_id="x", producer="api")])
def test_cancel_and_redrive_of_an_unknown_task_are_not_found(command) -> None:
    with pytest.raises(NotFound):
        decide(None, command, NOW)


@given(task_state)
def test_a_dead_letter_redrive_is_never_refused_and_its_fold_reopens_exactly_failed_tasks(s) -> None:
    command = RedriveDeadLettered(task_ids=(s.task_id, "other", s.task_id), producer="cli", reason="fixed")
    events = decide(None, command, NOW)  # the CLI has not read the states
    assert [(type(e), e.task_id, e.reason) for e in events] == [
        (TaskRedriven, s.task_id, "fixed"), (TaskRedriven, "other", "fixed")]
    after = fold(events[:1], s)
    if s.status in ("failed", "upstream_failed"):
        assert after == fold([decide(s, RedriveTask(task_id=s.task_id, producer="cli", reason="fixed"), NOW)[0]], s)
    else:
        assert after == s  # the fold ignores it: a second redrive is harmless


# ----------------------------------------------------------------- schedules


def schedule_command(**fields) -> CreateSchedule:
    return CreateSchedule(schedule_id="s", producer="api", cron="*/5 * * * *", timezone="UTC",
                          template='{"handler":"h"}', **fields)


def test_create_schedule_folds_to_its_first_fire_within_end_at() -> None:
    (e,) = decide(None, schedule_command(), NOW)
    s = evolve(None, e)
    assert isinstance(s, ScheduleState) and s.status == "active" and s.next_fire_at == NOW + timedelta(minutes=5)
    # end_at before the first fire: the schedule has ended (the API's own copy of this fold forgot the clip)
    (e,) = decide(None, schedule_command(end_at=NOW + timedelta(minutes=1)), NOW)
    assert evolve(None, e).status == "ended"
    with pytest.raises(CommandRejected):
        decide(s, schedule_command(), NOW)


def test_delete_schedule_guards_and_fold() -> None:
    with pytest.raises(NotFound, match="schedule s not found"):
        decide(None, DeleteSchedule(schedule_id="s", producer="api"), NOW)
    s = evolve(None, decide(None, schedule_command(), NOW)[0])
    after = fold(decide(s, DeleteSchedule(schedule_id="s", producer="api"), NOW), s)
    assert after.status == "deleted" and after.next_fire_at is None
    with pytest.raises(CommandRejected, match="already deleted"):
        decide(after, DeleteSchedule(schedule_id="s", producer="api"), NOW)


def test_task_commands_never_touch_a_schedule() -> None:
    s = evolve(None, decide(None, schedule_command(), NOW)[0])
    for command in (CancelTask(task_id="s", producer="api"), RedriveTask(task_id="s", producer="api"),
                    UpdateTask(task_id="s", producer="api", changes={"priority": "high"}),
                    SubmitTask(task_id="s", handler="h", producer="api")):
        with pytest.raises(NotFound, match="is a schedule"):
            decide(s, command, NOW)


def test_every_event_a_command_yields_carries_who_asked() -> None:
    pending, failed = state("pending"), state("failed")
    sched = evolve(None, decide(None, schedule_command(), NOW)[0])
    cases = [
        (None, SubmitTask(task_id="t9", handler="h", producer="api", actor="key-1")),
        (pending, UpdateTask(task_id="t", producer="api", changes={"priority": "low"}, actor="key-1")),
        (pending, CancelTask(task_id="t", producer="api", actor="key-1")),
        (failed, RedriveTask(task_id="t", producer="api", actor="key-1")),
        (None, schedule_command(actor="key-1")),
        (sched, DeleteSchedule(schedule_id="s", producer="api", actor="key-1")),
    ]
    for before, command in cases:
        events = decide(before, command, NOW)
        assert events and {e.actor for e in events} == {"key-1"}, type(command).__name__


# ------------------------------------------------------- every status x command

#: status -> the commands decide accepts in it (a task at attempt 0, version 1); every other one is refused (409).
ACCEPTS = {
    "pending": {"update", "cancel"},
    "scheduled": {"update", "cancel"},
    "queued": {"cancel"},
    "running": {"cancel"},
    "succeeded": set(),
    "failed": {"redrive"},
    "cancelled": set(),
    "upstream_failed": {"redrive"},
}
COMMAND_OF = {
    "submit": lambda: SubmitTask(task_id="t", handler="h", producer="api"),
    "update": lambda: UpdateTask(task_id="t", producer="api", changes={"priority": "low"}, expected_version=1),
    "cancel": lambda: CancelTask(task_id="t", producer="api"),
    "redrive": lambda: RedriveTask(task_id="t", producer="api"),
}


def test_the_table_covers_every_status() -> None:
    assert set(ACCEPTS) == set(STATUSES)


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("name", sorted(COMMAND_OF))
def test_every_status_by_every_command(status: str, name: str) -> None:
    s = state(status, version=1)
    command = COMMAND_OF[name]()
    if name in ACCEPTS[status]:
        events = decide(s, command, NOW)
        assert len(events) == 1 and events[0].task_id == "t"
        assert fold(events, s) is not s  # the answer changes the task
    else:
        with pytest.raises(CommandRejected):
            decide(s, command, NOW)
