"""The pure task core (``streams.domain``): table tests and a stateful model.

Table tests fold a short history to reach every status, apply every kind of
event to it and compare with the expected state -- or check that the state
is unchanged, the very same object (DESIGN §4, STYLE §6). ``decide`` is
tested per input. A ``RuleBasedStateMachine`` then models a processor and
its executors (random submissions, outcomes per attempt, duplicate
deliveries, crashes that re-process events, zombie results) and checks that
replaying the log reproduces the live state, that folding is idempotent and
fenced by attempt, and that every finished task ends in one terminal status.
"""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as hyp_event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from taskstream.schemas import (
    TERMINAL,
    CommandRejected,
    DependencyRegistered,
    LeaseExpired,
    ReadyTask,
    Status,
    TaskCancelled,
    TaskCheckpointed,
    TaskCreated,
    TaskDeadLettered,
    TaskFailed,
    TaskQueued,
    TaskRedriven,
    TaskRetryScheduled,
    TaskStarted,
    TaskState,
    TaskSucceeded,
    codec,
)
from taskstream.streams import domain
from taskstream.streams.domain import (
    SubmitTask,
    decide,
    evolve,
    fold,
    is_ready,
    is_terminal,
    react,
    ready_message,
    waiting_until,
)

from . import strategies

T0 = datetime(2024, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
T_EV = T0 + timedelta(minutes=5, microseconds=7)  # when the event under test happened
TID = "task-1"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def created(**kw) -> TaskCreated:
    fields = dict(
        task_id=TID,
        occurred_at=T0,
        producer="api-1",
        handler="echo",
        priority="high",
        payload='{"n": 1}',
        name="n",
        labels={"team": "a"},
        max_attempts=3,
    )
    fields.update(kw)
    return TaskCreated(**fields)


def queued(n: int, t: float = 1, priority: str = "high", due_at: datetime | None = None) -> TaskQueued:
    return TaskQueued(task_id=TID, occurred_at=at(t), producer="processor", attempt=n, priority=priority, due_at=due_at)


#: When the retries of the histories below are due (TaskRetryScheduled.not_before).
RETRY_AT = at(100)


def retry(n: int, t: float = 3, not_before: datetime = RETRY_AT) -> TaskRetryScheduled:
    return TaskRetryScheduled(task_id=TID, occurred_at=at(t), producer="processor", attempt=n, not_before=not_before,
                              delay_s=(not_before - at(t)).total_seconds(), priority="high", error="boom")


def requeued(n: int, t: float = 4) -> TaskQueued:
    """The retry relay queues attempt n when the retry of attempt n - 1 is due."""
    return queued(n, t=t, due_at=RETRY_AT)


def started(n: int, t: float = 2) -> TaskStarted:
    return TaskStarted(task_id=TID, occurred_at=at(t), producer="exec-1", attempt=n)


def succeeded(n: int, t: float = 3, result: str | None = '"ok"', started_at=None) -> TaskSucceeded:
    return TaskSucceeded(
        task_id=TID, occurred_at=at(t), producer="exec-1", attempt=n, result=result, started_at=started_at
    )


def failed(n: int, t: float = 3, permanent: bool = False, error: str = "boom", started_at=None) -> TaskFailed:
    return TaskFailed(
        task_id=TID,
        occurred_at=at(t),
        producer="exec-1",
        attempt=n,
        error=error,
        permanent=permanent,
        started_at=started_at,
    )


# ------------------------------------------------------------------- histories

#: How each status is reached by folding events (max_attempts is an argument).
HISTORIES = {
    "pending": lambda m: [created(max_attempts=m)],
    "scheduled": lambda m: [created(max_attempts=m, run_at=at(3600))],
    # A failed attempt with attempts left waits for its retry time (set by TaskRetryScheduled).
    "scheduled_retry": lambda m: [created(max_attempts=m), queued(1), started(1), failed(1, t=3), retry(1, t=3)],
    "queued": lambda m: [created(max_attempts=m), queued(1)],
    "running": lambda m: [created(max_attempts=m), queued(1), started(1)],
    "running_retry": lambda m: [created(max_attempts=m), queued(1), failed(1, t=2), retry(1, t=2), requeued(2, t=3),
                                started(2, t=4)],
    "succeeded": lambda m: [created(max_attempts=m), queued(1), started(1), succeeded(1)],
    "failed": lambda m: [created(max_attempts=m), queued(1), started(1), failed(1, permanent=True)],
}
STATUS_OF = {k: k.removesuffix("_retry") for k in HISTORIES}


def reach(key: str, max_attempts: int = 3) -> TaskState:
    state = fold(HISTORIES[key](max_attempts))
    assert state.status == STATUS_OF[key]
    return state


@pytest.mark.parametrize("key", HISTORIES)
def test_each_status_is_reached_by_folding(key):
    state = reach(key)
    history = HISTORIES[key](3)
    assert state.version == len(history)  # every event of these histories applies
    assert state.updated_at == history[-1].occurred_at
    assert state.created_at == T0
    assert state.attempt == {"pending": 0, "scheduled": 0, "running_retry": 2}.get(key, 1)


# ---------------------------------------------------------------- evolve table

# Events relative to the reached state ``s`` and its current attempt ``a``.
EVENTS = {
    "created_dup": lambda s, a: created(occurred_at=T_EV, handler="other"),
    "queued_current": lambda s, a: queued(a, t=300),
    # The next attempt queued with no due time (the processor queues a pending task so).
    "queued_next": lambda s, a: TaskQueued(
        task_id=TID, occurred_at=T_EV, producer="processor", attempt=a + 1, priority="low"
    ),
    # The next attempt queued by the timer or relay for the time the task waits for.
    "queued_due": lambda s, a: TaskQueued(
        task_id=TID, occurred_at=T_EV, producer="relay", attempt=a + 1, priority="low", due_at=waiting_until(s)
    ),
    # ... or for a time it no longer waits for (a timer armed before a PATCH moved run_at).
    "queued_stale_due": lambda s, a: TaskQueued(
        task_id=TID, occurred_at=T_EV, producer="relay", attempt=a + 1, priority="low", due_at=at(1)
    ),
    "queued_stale": lambda s, a: queued(a - 1, t=300),
    "started_current": lambda s, a: TaskStarted(task_id=TID, occurred_at=T_EV, producer="exec-2", attempt=a),
    "started_stale": lambda s, a: TaskStarted(task_id=TID, occurred_at=T_EV, producer="zombie", attempt=a - 1),
    "succeeded_current": lambda s, a: TaskSucceeded(
        task_id=TID, occurred_at=T_EV, producer="exec-2", attempt=a, result="42"
    ),
    "succeeded_stale": lambda s, a: TaskSucceeded(
        task_id=TID, occurred_at=T_EV, producer="zombie", attempt=a - 1, result="0"
    ),
    "failed_retryable": lambda s, a: TaskFailed(
        task_id=TID, occurred_at=T_EV, producer="exec-2", attempt=a, error="E1"
    ),
    "failed_permanent": lambda s, a: TaskFailed(
        task_id=TID, occurred_at=T_EV, producer="exec-2", attempt=a, error="E2", permanent=True
    ),
    "failed_last_attempt": lambda s, a: TaskFailed(
        task_id=TID, occurred_at=T_EV, producer="exec-2", attempt=a, error="E3"
    ),
    "failed_stale": lambda s, a: TaskFailed(task_id=TID, occurred_at=T_EV, producer="zombie", attempt=a - 1, error="Z"),
}

# What each event does to each status; "=" means unchanged (the same object).
QUEUE = "queue"  # -> queued, attempt a+1, priority from the event, retry_at cleared
START = "start"  # -> running, started_at = event time
SUCCEED = "succeed"  # -> succeeded, result, error cleared, finished_at = event time
RETRY = "retry"  # -> scheduled, error, no finished_at, retry_at unset until TaskRetryScheduled
FAIL = "fail"  # -> failed, error, finished_at = event time
_ = "="

# Issue 5 changed two columns on purpose: a ``scheduled`` task is queued only
# by a TaskQueued whose due_at is the time it waits for (q_next without one is
# now ignored there), and TaskQueued applies only to pending/scheduled tasks
# (queued/running tasks used to take a higher attempt: the retry now always
# passes through ``scheduled``). The table stays aligned; its rows are wider than 120 (noqa: E501).
# fmt: off
TABLE = {
    #                  created q_cur q_next q_due  q_sdue q_stale st_cur st_stale ok_cur   ok_stale f_retry f_perm f_last f_stale  # noqa: E501
    "pending":         (_,     _,    QUEUE, QUEUE, QUEUE, _,      _,     _,       _,       _,       _,      _,     _,     _),  # noqa: E501
    "scheduled":       (_,     _,    _,     QUEUE, _,     _,      _,     _,       _,       _,       _,      _,     _,     _),  # noqa: E501
    "scheduled_retry": (_,     _,    _,     QUEUE, _,     _,      _,     _,       _,       _,       _,      _,     _,     _),  # noqa: E501
    "queued":          (_,     _,    _,     _,     _,     _,      START, _,       SUCCEED, _,       RETRY,  FAIL,  FAIL,  _),  # noqa: E501
    "running":         (_,     _,    _,     _,     _,     _,      _,     _,       SUCCEED, _,       RETRY,  FAIL,  FAIL,  _),  # noqa: E501
    "running_retry":   (_,     _,    _,     _,     _,     _,      _,     _,       SUCCEED, _,       RETRY,  FAIL,  FAIL,  _),  # noqa: E501
    "succeeded":       (_,     _,    _,     _,     _,     _,      _,     _,       _,       _,       _,      _,     _,     _),  # noqa: E501
    "failed":          (_,     _,    _,     _,     _,     _,      _,     _,       _,       _,       _,      _,     _,     _),  # noqa: E501
}
# fmt: on
CASES = [(s, e, TABLE[s][i]) for s in TABLE for i, e in enumerate(EVENTS)]


def test_table_covers_every_status_and_event():
    assert set(TABLE) == set(HISTORIES)
    assert {STATUS_OF[k] for k in TABLE} == {"pending", "scheduled", "queued", "running", "succeeded", "failed"}
    assert all(len(row) == len(EVENTS) for row in TABLE.values())
    s = reach("running")
    assert {type(EVENTS[e](s, 1)) for e in EVENTS} == {TaskCreated, TaskQueued, TaskStarted, TaskSucceeded, TaskFailed}


@pytest.mark.parametrize(("status_key", "event_key", "outcome"), CASES, ids=[f"{s}-{e}" for s, e, _o in CASES])
def test_evolve_table(status_key, event_key, outcome):
    # The last-attempt column runs against a task whose current attempt is its last.
    a = reach(status_key).attempt
    last = event_key == "failed_last_attempt"
    state = reach(status_key, max_attempts=max(a, 1)) if last and status_key != "scheduled_retry" else reach(status_key)
    if last and status_key in ("queued", "running", "running_retry"):
        assert state.attempt == state.max_attempts
    event = EVENTS[event_key](state, a)
    new = evolve(state, event)

    if outcome == _:
        assert new is state
        return

    assert new is not state
    common = dict(updated_at=T_EV, version=state.version + 1)
    expected = {
        QUEUE: dict(status="queued", attempt=a + 1, priority="low", retry_at=None),
        START: dict(status="running", started_at=T_EV),
        SUCCEED: dict(status="succeeded", result="42", error=None, finished_at=T_EV),
        RETRY: dict(status="scheduled", error="E1", retry_at=None),
        FAIL: dict(
            status="failed",
            error={"failed_permanent": "E2", "failed_last_attempt": "E3"}.get(event_key),
            finished_at=T_EV,
        ),
    }[outcome]
    assert new == replace(state, **common, **expected)
    # and the fold is idempotent right away
    assert evolve(new, event) is new


def test_events_for_an_unknown_task_are_ignored():
    for make in EVENTS.values():
        e = make(reach("running"), 1)
        if not isinstance(e, TaskCreated):
            assert evolve(None, e) is None


def test_unknown_event_types_change_nothing():
    state = reach("running")
    ready = ready_message(state, T_EV)
    assert evolve(state, ready) is state
    assert evolve(None, ready) is None


def test_created_builds_the_initial_state():
    e = created(depends_on=["x"], run_at=None, timeout_s=2.5, max_attempts=4)
    s = evolve(None, e)
    assert s == TaskState(
        task_id=TID,
        handler="echo",
        status="pending",
        priority="high",
        payload='{"n": 1}',
        created_at=T0,
        updated_at=T0,
        name="n",
        labels={"team": "a"},
        depends_on=["x"],
        timeout_s=2.5,
        max_attempts=4,
        version=1,
    )
    assert s.labels is not e.labels and s.depends_on is not e.depends_on
    assert evolve(None, created(run_at=at(5))).status == "scheduled"


def test_result_started_at_from_the_executor_wins_over_the_folded_one():
    s = reach("queued")
    t = at(2.5)
    assert evolve(s, succeeded(1, started_at=t)).started_at == t
    assert evolve(s, failed(1, started_at=t)).started_at == t
    assert evolve(s, failed(1, started_at=t, permanent=True)).started_at == t
    r = reach("running")
    assert evolve(r, succeeded(1)).started_at == r.started_at == at(2)


def test_retry_then_success_clears_the_error():
    s = fold([created(), queued(1), failed(1), retry(1), requeued(2, t=4), succeeded(2, t=5)])
    assert (s.status, s.attempt, s.error, s.result, s.finished_at, s.retry_at) == (
        "succeeded", 2, None, '"ok"', at(5), None)


def test_exhausting_every_attempt_fails_the_task():
    s = fold([created(max_attempts=2), queued(1), failed(1), retry(1), requeued(2, t=4), failed(2, t=5, error="last")])
    assert (s.status, s.attempt, s.error, s.finished_at) == ("failed", 2, "last", at(5))


def test_a_log_written_before_retry_times_still_folds():
    # Before issue 5 a retry was queued at once (no TaskRetryScheduled, no due_at): a scheduled task with
    # no retry_at waits for "no time" and takes that TaskQueued, so old logs end where they did.
    s = fold([created(max_attempts=2), queued(1), failed(1), queued(2, t=4), succeeded(2, t=5)])
    assert (s.status, s.attempt, s.result) == ("succeeded", 2, '"ok"')


def test_terminal_states_are_final_for_every_event():
    for key in ("succeeded", "failed"):
        s = reach(key)
        assert is_terminal(s)
        for n in range(-1, 5):
            for e in (queued(n), started(n), succeeded(n), failed(n), failed(n, permanent=True), created()):
                assert evolve(s, e) is s


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    strategies.task_state.map(lambda s: replace(s, task_id=TID)).filter(
        lambda s: s.status in {x.value for x in Status}
    ),
    st.one_of(
        strategies.task_created,
        strategies.task_queued,
        strategies.task_started,
        strategies.task_succeeded,
        strategies.task_failed,
    ).map(lambda e: replace(e, task_id=TID)),
)
def test_evolve_never_fails_and_is_idempotent_for_any_state_and_event(state, event):
    # The log is the truth: whatever is in it folds without raising.
    new = evolve(state, event)
    assert evolve(new, event) is new
    assert new is state or new.version == state.version + 1
    if is_terminal(state):
        assert new is state
    decide(new, event, T_EV)  # deciding after any event never raises either


def test_history_folds_the_same_after_a_trip_through_the_codec():
    history = [created(), queued(1), started(1), failed(1), retry(1), requeued(2, t=4), started(2, t=5),
               succeeded(2, t=6)]
    assert fold(codec.decode(codec.encode(e)) for e in history) == fold(history)


# --------------------------------------------------------------------- decide


def submit(**kw) -> SubmitTask:
    fields = dict(task_id=TID, handler="echo", producer="api-1")
    fields.update(kw)
    return SubmitTask(**fields)


def test_submit_gives_one_task_created_with_the_fields():
    c = submit(
        priority="low",
        payload='{"a": [1]}',
        name="nm",
        labels={"k": "v"},
        depends_on=["d1", "d2"],
        run_at=at(60),
        timeout_s=1.5,
        max_attempts=5,
    )
    [e] = decide(None, c, T_EV)
    assert type(e) is TaskCreated
    assert (e.task_id, e.occurred_at, e.producer, e.handler, e.priority, e.payload, e.name) == (
        TID, T_EV, "api-1", "echo", "low", '{"a": [1]}', "nm"
    )
    assert (e.labels, e.depends_on, e.run_at, e.timeout_s, e.max_attempts) == ({"k": "v"}, ["d1", "d2"], at(60), 1.5, 5)
    assert e.labels is not c.labels and e.depends_on is not c.depends_on
    assert len(e.event_id) == 32
    # defaults
    [d] = decide(None, submit(), T_EV)
    assert (d.priority, d.payload, d.name, d.labels, d.depends_on, d.run_at, d.timeout_s, d.max_attempts) == (
        "medium", "null", "", {}, [], None, None, 1
    )


def test_submit_is_deterministic_event_id_included():
    a, b = decide(None, submit(), T0)[0], decide(None, submit(), T0)[0]
    assert a == b and codec.encode(a) == codec.encode(b) and len(a.event_id) == 32
    # another command, or the same one at another time, is another decision: another id
    assert decide(None, submit(name="other"), T0)[0].event_id != a.event_id
    assert decide(None, submit(), T_EV)[0].event_id != a.event_id


@pytest.mark.parametrize("key", HISTORIES)
def test_submit_on_an_existing_task_is_rejected(key):
    with pytest.raises(CommandRejected):
        decide(reach(key), submit(), T_EV)


def test_after_created_without_deps_or_run_at_queues_attempt_one():
    e = created()
    s = evolve(None, e)
    [q] = decide(s, e, T_EV)
    assert type(q) is TaskQueued
    assert (q.task_id, q.attempt, q.priority, q.occurred_at, q.producer) == (TID, 1, "high", T_EV, domain.PROCESSOR)
    s2 = evolve(s, q)
    assert (s2.status, s2.attempt, s2.version, s2.updated_at) == ("queued", 1, 2, T_EV)
    ready = ready_message(s2, T_EV)
    assert ready == ReadyTask(
        task_id=TID, occurred_at=T_EV, producer=domain.PROCESSOR, event_id=ready.event_id,
        attempt=1, handler="echo", priority="high", payload='{"n": 1}', timeout_s=None,
    )


@pytest.mark.parametrize(
    "kw",
    [
        dict(depends_on=["other"]),
        dict(run_at=T_EV + timedelta(microseconds=1)),
        dict(run_at=at(3600), depends_on=["x"]),
    ],
    ids=["depends_on", "future_run_at", "both"],
)
def test_after_created_waiting_for_something_queues_nothing(kw):
    e = created(**kw)
    s = evolve(None, e)
    out = decide(s, e, T_EV)
    assert not is_ready(s, T_EV)
    # A task with dependencies registers with each upstream (keyed by it); nothing is queued.
    assert [(type(x).__name__, x.task_id, getattr(x, "dependent", None)) for x in out] == [
        ("DependencyRegistered", d, s.task_id) for d in kw.get("depends_on", [])
    ]


@pytest.mark.parametrize("run_at", [T_EV, T_EV - timedelta(days=1)], ids=["now", "past"])
def test_after_created_with_a_due_run_at_queues(run_at):
    e = created(run_at=run_at)
    s = evolve(None, e)
    assert s.status == "scheduled"
    [q] = decide(s, e, T_EV)
    assert (type(q), q.attempt) == (TaskQueued, 1)
    assert evolve(s, q).status == "queued"


@pytest.mark.parametrize("key", [k for k in HISTORIES if k not in ("pending", "scheduled")])
def test_a_redelivered_created_never_requeues(key):
    # Before the retry of scheduled_retry is due (RETRY_AT): once it is, a redelivered TaskCreated queues the
    # due attempt, the same TaskQueued the relay appends (fenced by attempt and due_at, so one of them applies).
    assert decide(reach(key), created(), RETRY_AT - timedelta(microseconds=1)) == []
    if key == "scheduled_retry":
        [q] = decide(reach(key), created(), RETRY_AT)
        assert (q.attempt, q.due_at) == (2, RETRY_AT)


def test_after_retryable_failure_schedules_the_retry_and_the_relay_queues_it():
    # Issue 5: a retryable failure no longer re-queues at once; it decides TaskRetryScheduled (applied by the
    # processor in the same step), and the retry relay appends TaskQueued(n + 1, due_at=not_before) later.
    for n in (1, 2):
        s = fold([created(max_attempts=3), queued(1), failed(1)]
                 + ([retry(1), requeued(2), failed(2, t=5)] if n == 2 else []))
        assert (s.status, s.attempt, s.retry_at) == ("scheduled", n, None)
        [r] = decide(s, failed(n, t=3 if n == 1 else 5), T_EV)
        assert type(r) is TaskRetryScheduled
        delay = domain.backoff_delay(s, n)
        assert (r.task_id, r.attempt, r.priority, r.occurred_at, r.error) == (TID, n, "high", T_EV, "boom")
        # the wait counts from the failure (s.updated_at), not from when the processor folded it
        assert (r.delay_s, r.not_before) == (delay, s.updated_at + timedelta(seconds=delay))
        s2 = evolve(s, r)
        assert (s2.status, s2.attempt, s2.retry_at, s2.version) == ("scheduled", n, r.not_before, s.version + 1)
        assert not is_ready(s2, r.not_before - timedelta(microseconds=1)) and is_ready(s2, r.not_before)
        q = TaskQueued(task_id=TID, occurred_at=r.not_before, producer="relay", attempt=n + 1, priority="high",
                       due_at=r.not_before)
        s3 = evolve(s2, q)
        assert (s3.status, s3.attempt, s3.retry_at, s3.version) == ("queued", n + 1, None, s2.version + 1)


@pytest.mark.parametrize(
    "history,last",
    [
        ([created(max_attempts=1), queued(1), failed(1)], failed(1)),
        ([created(max_attempts=3), queued(1), failed(1, permanent=True)], failed(1, permanent=True)),
        ([created(max_attempts=2), queued(1), failed(1), retry(1), requeued(2), failed(2)], failed(2)),
    ],
    ids=["last_attempt_of_one", "permanent", "last_attempt_of_two"],
)
def test_after_final_failure_the_task_is_failed_and_dead_lettered(history, last):
    # Issue 5: a final failure decides TaskDeadLettered (published to <p>.dlq); it used to decide nothing.
    s = fold(history)
    assert s.status == "failed" and s.attempt <= s.max_attempts
    [d] = decide(s, last, T_EV)
    assert type(d) is TaskDeadLettered
    assert (d.task_id, d.attempt, d.error, d.handler, d.priority, d.occurred_at) == (
        TID, s.attempt, "boom", "echo", "high", T_EV)
    assert evolve(s, d) is s  # a record of what happened, no change
    # Folded again (a redelivery), the failure changes nothing and so dead-letters nothing.
    assert react(s, evolve(s, last), last, T_EV) == []


def test_stale_failure_decides_nothing():
    s = fold([created(), queued(1), failed(1), retry(1), requeued(2)])
    assert decide(s, failed(1), T_EV) == []
    s = fold([created(), queued(1), failed(1), retry(1), requeued(2), failed(2)])  # scheduled at attempt 2
    assert decide(s, failed(1), T_EV) == []
    s = evolve(s, retry(2, not_before=at(200)))
    assert decide(s, failed(2), T_EV) == []  # its retry is already scheduled


@pytest.mark.parametrize("key", HISTORIES)
def test_events_other_than_created_and_failed_decide_nothing(key):
    s = reach(key)
    for e in (queued(s.attempt), started(s.attempt), succeeded(s.attempt), ready_message(s, T_EV)):
        assert decide(s, e, T_EV) == []
    assert decide(s, object(), T_EV) == []


def test_version_bumps_by_one_per_applied_event_and_updated_at_follows():
    history = [created(), queued(1), started(1), failed(1, t=3), retry(1, t=3), requeued(2, t=4), started(2, t=5),
               succeeded(2, t=6)]
    state = None
    for i, e in enumerate(history, start=1):
        state = evolve(state, e)
        assert state.version == i
        assert state.updated_at == e.occurred_at
    assert (state.started_at, state.finished_at, state.created_at) == (at(5), at(6), T0)


def test_timestamps_as_documented():
    s = fold([created()])
    assert (s.created_at, s.updated_at, s.started_at, s.finished_at) == (T0, T0, None, None)
    s = evolve(s, queued(1, t=1))
    assert (s.updated_at, s.started_at, s.finished_at) == (at(1), None, None)
    s = evolve(s, started(1, t=2))
    assert (s.updated_at, s.started_at, s.finished_at) == (at(2), at(2), None)
    r = evolve(s, failed(1, t=3))
    assert (r.updated_at, r.started_at, r.finished_at) == (at(3), at(2), None)
    f = evolve(s, failed(1, t=3, permanent=True))
    assert (f.updated_at, f.started_at, f.finished_at) == (at(3), at(2), at(3))
    ok = evolve(s, succeeded(1, t=4))
    assert (ok.updated_at, ok.started_at, ok.finished_at) == (at(4), at(2), at(4))
    assert ok.created_at == T0


def test_is_ready():
    assert not is_ready(None, T0)
    assert is_ready(fold([created()]), T0)
    assert not is_ready(fold([created(depends_on=["x"])]), T0)
    assert not is_ready(fold([created(run_at=at(1))]), T0)
    assert is_ready(fold([created(run_at=at(1))]), at(1))
    for key in ("queued", "running", "succeeded", "failed"):
        assert not is_ready(reach(key), at(10**6))
    # Issue 5: a task waiting for its retry is ready at its retry time (it used to be queued at once).
    assert not is_ready(reach("scheduled_retry"), RETRY_AT - timedelta(microseconds=1))
    assert is_ready(reach("scheduled_retry"), RETRY_AT)


# ------------------------------------------------------------- stateful model

#: Events that carry an attempt: one for any attempt but the current one changes nothing.
ATTEMPT_TYPES = (TaskStarted, TaskSucceeded, TaskFailed, LeaseExpired, TaskCheckpointed, TaskRetryScheduled)
RESULT_TYPES = (TaskSucceeded, TaskFailed, LeaseExpired)
OUTCOMES = st.sampled_from(["start", "success", "fail", "fail", "fail", "permanent", "lease", "checkpoint"])
LEASE_S = 30.0
RELAY_SLACK_S = 5.0
GRACE_S = 60.0


class ProcessorModel(RuleBasedStateMachine):
    """One processor folding a shared log, executors, the retry relay, timers, redrives and faults.

    ``log`` is the events topic (all tasks in one partition: per-task order is
    what Kafka keeps). The processor consumes the log at ``cursor``: it folds
    the event into ``live`` and appends what ``react`` decides (applied when
    consumed in turn). As ``fold_step`` does, a state remembers the offset of
    the last event that changed it and skips events at or below it (the last
    one re-sends ``replay_outputs``). A crash rewinds the cursor and restores
    each task's state to any snapshot at least as new as the rewound position,
    so events are folded again and outputs re-sent (at least once).
    Executors run any attempt ever queued, as often as they like (zombies,
    duplicates) and report results, leases and checkpoints for it. The retry
    relay turns each TaskRetryScheduled it ever saw (possibly twice) into
    TaskQueued(attempt + 1, due_at=not_before) at that time; timers fire
    ``on_timer`` at ``timer_due``; a user re-drives or cancels any task.
    """

    def __init__(self):
        super().__init__()
        self.log: list = []
        self.cursor = 0
        self.live: dict[str, TaskState] = {}
        self.snapshots: dict[str, list[tuple[int, TaskState]]] = {}  # (offset, state after it), oldest first
        self.clock = T0
        self.tasks: list[str] = []
        self.dispatched: dict[str, set[int]] = {}  # attempts ever queued per task
        self.reported: dict[str, set[int]] = {}  # attempts with a result in the log
        self.retries: list[TaskRetryScheduled] = []  # what the relay holds
        self.edges: dict[str, set[str]] = {}  # upstream -> dependents: the processor's edge records
        self.applied = 0

    # -- helpers
    def now(self) -> datetime:
        self.clock += timedelta(microseconds=1)
        return self.clock

    def append(self, events):
        for e in events:
            self.log.append(e)
            if isinstance(e, TaskQueued):
                self.dispatched.setdefault(e.task_id, set()).add(e.attempt)
            elif isinstance(e, TaskRetryScheduled):
                self.retries.append(e)

    def process(self, offset: int):
        event = self.log[offset]
        tid = event.task_id
        old = self.live.get(tid)
        if old is not None and offset <= old.last_offset:
            if offset == old.last_offset:
                self.append(domain.replay_outputs(old, self.now(), dependents=self.dependents(old)))
            return
        if (edge := domain.recorded(old, event)) is not None:  # an edge record: a crash does not rewind it
            self.edges.setdefault(tid, set()).add(edge.dependent)
        new = evolve(old, event)
        # (b) folding the same event right after itself changes nothing (a registration counts on the version:
        # the offset check above folds each record once)
        assert evolve(new, event) is new or type(event) is DependencyRegistered
        if new is not old:
            self.applied += 1
            hyp_event(f"applied {type(event).__name__} -> {new.status}")
            # (e) version strictly increases, by exactly one
            assert new.version == (0 if old is None else old.version) + 1
            assert new.updated_at == event.occurred_at
            # terminal states are final but for dependents' bookkeeping and a redrive of a failure
            if is_terminal(old):
                assert (type(event) is DependencyRegistered and replace(
                        new, version=old.version, updated_at=old.updated_at) == old) or (
                    type(event) is TaskRedriven and old.status in ("failed", "upstream_failed")), (event, old)
            # (c) an event of any attempt but the current one changes nothing
            if isinstance(event, ATTEMPT_TYPES):
                assert old is not None and event.attempt == old.attempt
            if isinstance(event, TaskQueued):
                assert old.status in ("pending", "scheduled") and event.attempt > old.attempt
            new = replace(new, last_offset=offset)
            self.live[tid] = new
            self.snapshots.setdefault(tid, []).append((offset, new))
        self.append(react(old, new, event, self.now(), self.dependents(new)))

    def dependents(self, state: TaskState | None) -> list[str]:
        return [] if state is None else domain.dependents_of(state, self.edges.get(state.task_id, ()))

    # -- rules
    @initialize()
    def start(self):
        pass

    @precondition(lambda self: len(self.tasks) < 4)  # few tasks, long histories
    @rule(
        max_attempts=st.integers(1, 4),
        wait=st.sampled_from(["none", "none", "past_run_at", "future_run_at", "depends_on", "depends_on_run_at"]),
        priority=st.sampled_from(["high", "medium", "low"]),
        jitter=st.sampled_from([None, 0.0, 0.5]),
    )
    def submit(self, max_attempts, wait, priority, jitter):
        tid = f"t{len(self.tasks)}"
        kw = {}
        if wait == "past_run_at":
            kw["run_at"] = self.clock - timedelta(seconds=1)
        elif wait in ("future_run_at", "depends_on_run_at"):
            kw["run_at"] = self.clock + timedelta(hours=1)
        if wait.startswith("depends_on"):
            kw["depends_on"] = ["t0"]
        if len(self.tasks) % 2 == 0:  # every other task carries a trace context, which every fold must keep
            kw["traceparent"] = f"00-{len(self.tasks) + 1:032x}-{len(self.tasks) + 1:016x}-01"
        events = decide(None, SubmitTask(task_id=tid, handler="h", producer="api", priority=priority,
                                         max_attempts=max_attempts, **kw), self.now())
        assert len(events) == 1 and type(events[0]) is TaskCreated
        for existing in self.live.values():  # submitting an existing id again is rejected
            with pytest.raises(CommandRejected):
                decide(existing, SubmitTask(task_id=existing.task_id, handler="h", producer="api"), self.now())
        self.tasks.append(tid)
        self.append([replace(events[0], backoff_jitter=jitter, backoff_initial_s=0.5)])

    @precondition(lambda self: self.tasks)
    @rule(data=st.data(), kind=st.sampled_from(["redrive", "redrive", "redrive", "cancel"]), any_task=st.booleans())
    def user_acts(self, data, kind, any_task):
        # Sent for any task in any status (the core ignores what does not apply), or for a failed one.
        failed = sorted(t for t, s in self.live.items() if s.status in ("failed", "upstream_failed"))
        tid = data.draw(st.sampled_from(self.tasks if any_task or not failed else failed))
        t = self.now()
        e = (TaskRedriven(task_id=tid, occurred_at=t, producer="cli", reason="retry") if kind == "redrive"
             else TaskCancelled(task_id=tid, occurred_at=t, producer="api"))
        self.append([e])

    @precondition(lambda self: self.cursor < len(self.log))
    @rule(steps=st.integers(1, 10))
    def consume(self, steps):
        for _ in range(steps):
            if self.cursor >= len(self.log):
                break
            self.process(self.cursor)
            self.cursor += 1

    @precondition(lambda self: self.cursor > 0)
    @rule(data=st.data())
    def crash_and_rewind(self, data):
        back = data.draw(st.integers(0, self.cursor - 1))
        for tid in list(self.live):
            snaps = self.snapshots[tid]
            # the table kept any state at least as new as the last one before the rewound position
            keep = [i for i, (off, _s) in enumerate(snaps) if off >= back]
            first = keep[0] - 1 if keep else len(snaps) - 1
            i = data.draw(st.integers(first, len(snaps) - 1))
            if i < 0:
                del self.live[tid]
                self.snapshots[tid] = []
            else:
                del snaps[i + 1:]
                self.live[tid] = snaps[i][1]
        self.cursor = back

    @precondition(lambda self: self.cursor > 0)
    @rule(data=st.data())
    def stale_attempts_change_nothing(self, data):
        # Any event of an attempt that is not the current one, seen again out of order, is ignored.
        e = self.log[data.draw(st.integers(0, self.cursor - 1))]
        s = self.live.get(e.task_id)
        if s is not None and isinstance(e, ATTEMPT_TYPES) and e.attempt != s.attempt:
            assert evolve(s, e) is s
        if s is not None and isinstance(e, TaskQueued) and e.attempt <= s.attempt:
            assert evolve(s, e) is s

    @precondition(lambda self: self.log)
    @rule(data=st.data())
    def producer_duplicate(self, data):
        # A producer retry appends a copy of an event already in the log.
        e = self.log[data.draw(st.integers(0, len(self.log) - 1))]
        if not isinstance(e, TaskRedriven):  # a second redrive is a second request, not a duplicate
            self.append([e])

    @precondition(lambda self: self.retries)
    @rule(data=st.data(), keep=st.booleans())
    def relay_fires(self, data, keep):
        # The relay holds a retry until not_before, then queues the next attempt (sometimes twice).
        i = data.draw(st.integers(0, len(self.retries) - 1))
        r = self.retries[i] if keep else self.retries.pop(i)
        self.clock = max(self.clock, r.not_before)
        self.append([TaskQueued(task_id=r.task_id, occurred_at=self.now(), producer="relay", attempt=r.attempt + 1,
                                priority=r.priority, due_at=r.not_before)])

    @precondition(lambda self: any(domain.timer_due(s, RELAY_SLACK_S) for s in self.live.values()))
    @rule(data=st.data())
    def timer_fires(self, data):
        tid = data.draw(st.sampled_from(sorted(t for t, s in self.live.items() if domain.timer_due(s, RELAY_SLACK_S))))
        s = self.live[tid]
        due = domain.timer_due(s, RELAY_SLACK_S)
        assert domain.on_timer(s, due - timedelta(microseconds=1), GRACE_S) == [] or s.attempt > 0
        self.clock = max(self.clock, due)
        out = domain.on_timer(s, self.now(), GRACE_S)
        assert [(type(e), e.attempt, e.due_at) for e in out] == [(TaskQueued, s.attempt + 1, domain.waiting_until(s))]
        self.append(out)

    @precondition(lambda self: any(s.status == "running" for s in self.live.values()))
    @rule(data=st.data())
    def lease_runs_out(self, data):
        tid = data.draw(st.sampled_from(sorted(t for t, s in self.live.items() if s.status == "running")))
        s = self.live[tid]
        [e] = domain.lease_expired(s, s.attempt, LEASE_S, self.now())
        assert domain.lease_expired(s, s.attempt - 1, LEASE_S, self.clock) == []
        self.reported.setdefault(tid, set()).add(s.attempt)
        self.append([e])

    @precondition(lambda self: any(self.dispatched.values()))
    @rule(data=st.data(), outcome=OUTCOMES)
    def executor_reports_latest(self, data, outcome):
        # The executor running the newest queued attempt of a task reports.
        tid = data.draw(st.sampled_from(sorted(t for t, a in self.dispatched.items() if a)))
        self.report(tid, max(self.dispatched[tid]), outcome)

    @precondition(lambda self: any(self.dispatched.values()))
    @rule(data=st.data(), outcome=OUTCOMES)
    def executor_reports_any(self, data, outcome):
        # Any executor that ever got any attempt reports (zombies, duplicates, stale attempts).
        tid = data.draw(st.sampled_from(sorted(t for t, a in self.dispatched.items() if a)))
        self.report(tid, data.draw(st.sampled_from(sorted(self.dispatched[tid]))), outcome)

    def report(self, tid: str, n: int, outcome: str):
        t = self.now()
        common = dict(task_id=tid, occurred_at=t, producer="exec", attempt=n)
        if outcome == "start":
            e = TaskStarted(**common)
        elif outcome == "checkpoint":
            e = TaskCheckpointed(**common, data=codec.dumps_json({"n": n, "t": t.microsecond}))
        elif outcome == "lease":  # the processor expired it just as the executor reported (a race)
            e = LeaseExpired(**common, lease_s=LEASE_S)
        elif outcome == "success":
            e = TaskSucceeded(**common, result='"r"', started_at=t - timedelta(microseconds=1))
        else:
            e = TaskFailed(**common, error="err", permanent=outcome == "permanent")
        if isinstance(e, (TaskSucceeded, TaskFailed)):  # a lease only counts where the processor expired it
            self.reported.setdefault(tid, set()).add(n)
        self.append([e])

    # -- invariants
    @invariant()
    def attempts_never_exceed_the_budget_and_shape_is_consistent(self):
        for s in self.live.values():
            assert 0 <= s.attempt_offset <= s.attempt
            assert s.attempt - s.attempt_offset <= s.max_attempts
            assert s.status in {st_.value for st_ in Status}
            assert (s.finished_at is not None) == (s.status in TERMINAL)
            if s.status == "succeeded":
                assert s.error is None and s.result == '"r"'
            if s.status in ("pending",):
                assert s.attempt == 0
            if s.retry_at is not None:  # only a task waiting for its retry (or its redrive's attempt) has one
                assert s.status == "scheduled" and s.attempt > 0
            if s.checkpoint is not None:
                assert codec.loads_json(s.checkpoint)["n"] <= s.attempt  # later attempts keep the last one
            assert s.updated_at >= s.created_at

    @invariant()
    def replay_equals_live_when_caught_up(self):
        if self.cursor != len(self.log):
            return
        # (a) replaying the final log from scratch gives exactly the live state
        by_task: dict[str, list] = {}
        for e in self.log:
            by_task.setdefault(e.task_id, []).append(e)
        replayed = {tid: fold(evs) for tid, evs in by_task.items()}
        assert replayed == {t: replace(s, last_offset=-1) for t, s in self.live.items()}
        # (b) re-folding every event right after itself changes nothing
        for evs in by_task.values():
            s = None
            for e in evs:
                s = evolve(s, e)
                assert evolve(s, e) is s or type(e) is DependencyRegistered  # counted per record (offsets)

    @invariant()
    def finished_tasks_are_terminal(self):
        # (d) once the processor has caught up, a task whose queued attempts all got a result and
        # whose retry is not waiting in the relay sits in exactly one terminal status.
        if self.cursor != len(self.log):
            return
        waiting = {r.task_id for r in self.retries}
        for tid, attempts in self.dispatched.items():
            if attempts and attempts <= self.reported.get(tid, set()) and tid not in waiting:
                s = self.live[tid]
                if s.status == "scheduled" and s.retry_at is not None:
                    continue  # a retry the relay already fired once and dropped: its timer re-queues it
                assert s.status in ("succeeded", "failed", "cancelled"), (tid, s)


ProcessorModel.TestCase.settings = settings(
    max_examples=int(os.environ.get("MODEL_EXAMPLES", 200)),
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestProcessorModel = ProcessorModel.TestCase
