"""Time and failure in the pure core (issue 5): decider and evolve tables, backoff, timers, properties.

Every new event against every status: ``TaskRetryScheduled`` (sets the retry
time of a task waiting for it), ``LeaseExpired`` (fails the running current
attempt), ``TaskCheckpointed`` (stored for an active current attempt),
``TaskRedriven`` (re-opens failed and upstream_failed tasks with a fresh
budget, cascading to dependents), ``TaskDeadLettered`` (a record, no change).
Then ``TaskQueued`` fencing by ``due_at`` (a stale timer after a PATCH of
run_at), run_at timers, dependencies with a run_at, the backoff arithmetic
and hypothesis properties over random histories of all of these.
"""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskstream.schemas import (
    DependencyRegistered,
    DependencyResolved,
    LeaseExpired,
    ScheduleCreated,
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
    TaskUpdated,
    codec,
)
from taskstream.streams import domain
from taskstream.streams.domain import (
    attempts_left,
    backoff_delay,
    decide,
    evolve,
    fold,
    fold_with_dependents,
    is_ready,
    is_terminal,
    lease_expired,
    on_timer,
    react,
    ready_message,
    replay_outputs,
    timer_due,
    waiting_until,
)

from . import strategies

T0 = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
T_EV = T0 + timedelta(minutes=5)
NOW = T0 + timedelta(minutes=10)
TID = "task-1"
RETRY_AT = T0 + timedelta(seconds=100)
RUN_AT = T0 + timedelta(hours=1)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def created(tid: str = TID, **kw) -> TaskCreated:
    fields = dict(task_id=tid, occurred_at=T0, producer="api-1", handler="echo", priority="high", payload='{"n": 1}',
                  max_attempts=3, backoff_initial_s=0.5, backoff_multiplier=2.0, backoff_max_s=10.0, backoff_jitter=0.0)
    fields.update(kw)
    return TaskCreated(**fields)


def queued(n, t=1, due_at=None, tid=TID):
    return TaskQueued(task_id=tid, occurred_at=at(t), producer="processor", attempt=n, priority="high", due_at=due_at)


def started(n, t=2, tid=TID):
    return TaskStarted(task_id=tid, occurred_at=at(t), producer="exec-1", attempt=n)


def succeeded(n, t=3, tid=TID):
    return TaskSucceeded(task_id=tid, occurred_at=at(t), producer="exec-1", attempt=n, result='"ok"')


def failed(n, t=3, permanent=False, tid=TID):
    return TaskFailed(task_id=tid, occurred_at=at(t), producer="exec-1", attempt=n, error="boom", permanent=permanent)


def retry(n, t=3, not_before=RETRY_AT, tid=TID):
    return TaskRetryScheduled(task_id=tid, occurred_at=at(t), producer="processor", attempt=n, not_before=not_before,
                              delay_s=(not_before - at(t)).total_seconds(), priority="high", error="boom")


def lease(n, t=T_EV, tid=TID):
    return LeaseExpired(task_id=tid, occurred_at=t, producer="processor", attempt=n, lease_s=30.0)


def checkpoint(n, data='{"page": 7}', t=T_EV, tid=TID):
    return TaskCheckpointed(task_id=tid, occurred_at=t, producer="exec-1", attempt=n, data=data)


def redriven(t=T_EV, tid=TID):
    return TaskRedriven(task_id=tid, occurred_at=t, producer="cli", reason="fixed")


def dead_lettered(n, t=T_EV, tid=TID):
    return TaskDeadLettered(task_id=tid, occurred_at=t, producer="processor", attempt=n, error="boom")


def resolved(upstream, outcome="succeeded", t=5, tid=TID):
    return DependencyResolved(task_id=tid, occurred_at=at(t), producer="processor", upstream=upstream,
                              outcome=outcome, result='"r"' if outcome == "succeeded" else None)


def registered(dependent, t=5, tid=TID):
    return DependencyRegistered(task_id=tid, occurred_at=at(t), producer="processor", dependent=dependent)


# ------------------------------------------------------------------- histories

#: Every status, and the variants that matter for time and failure (max_attempts 3 unless said).
HISTORIES = {
    "pending": lambda: [created(depends_on=["up-a"])],
    "scheduled_run_at": lambda: [created(run_at=RUN_AT)],
    "scheduled_retry_unset": lambda: [created(), queued(1), started(1), failed(1)],  # before TaskRetryScheduled
    "scheduled_retry": lambda: [created(), queued(1), started(1), failed(1), retry(1)],
    "queued": lambda: [created(), queued(1)],
    "running": lambda: [created(), queued(1), started(1)],
    "running_last": lambda: [created(max_attempts=1), queued(1), started(1)],
    "running_retry": lambda: [created(), queued(1), failed(1, t=2), retry(1, t=2),
                              queued(2, t=RETRY_AT.second + 100, due_at=RETRY_AT), started(2, t=201)],
    "succeeded": lambda: [created(), queued(1), started(1), succeeded(1)],
    "failed": lambda: [created(), queued(1), started(1), failed(1, permanent=True)],
    "failed_exhausted": lambda: [created(max_attempts=1), queued(1), failed(1)],
    "cancelled": lambda: [created(), queued(1), TaskCancelled(task_id=TID, occurred_at=at(4), producer="api-1")],
    "upstream_failed": lambda: [created(depends_on=["up-a", "up-b"]), resolved("up-a"), resolved("up-b", "failed")],
}
STATUS_OF = {
    "pending": "pending", "scheduled_run_at": "scheduled", "scheduled_retry_unset": "scheduled",
    "scheduled_retry": "scheduled", "queued": "queued", "running": "running", "running_last": "running",
    "running_retry": "running", "succeeded": "succeeded", "failed": "failed", "failed_exhausted": "failed",
    "cancelled": "cancelled", "upstream_failed": "upstream_failed",
}


def reach(key: str) -> TaskState:
    s = fold(HISTORIES[key]())
    assert s.status == STATUS_OF[key], (key, s.status)
    return s


def test_every_status_is_reached():
    assert {STATUS_OF[k] for k in HISTORIES} == {s.value for s in Status}
    assert set(STATUS_OF) == set(HISTORIES)
    assert reach("scheduled_retry").retry_at == RETRY_AT and reach("scheduled_retry_unset").retry_at is None


def unchanged(s: TaskState, e) -> None:
    assert evolve(s, e) is s
    assert react(s, s, e, NOW) == [] or type(e) in (DependencyRegistered, TaskCreated)


# ------------------------------------------------------------ TaskRetryScheduled

RETRY_APPLIES = {"scheduled_retry_unset"}


@pytest.mark.parametrize("key", list(HISTORIES))
def test_retry_scheduled_in_every_status(key):
    s = reach(key)
    current = retry(s.attempt, t=4, not_before=at(50))
    for stale in (retry(s.attempt - 1, t=4, not_before=at(50)), retry(s.attempt + 1, t=4, not_before=at(50))):
        unchanged(s, stale)
    if key not in RETRY_APPLIES:
        unchanged(s, current)
        return
    new = evolve(s, current)
    assert new == replace(s, retry_at=at(50), version=s.version + 1, updated_at=at(4))
    assert evolve(new, current) is new
    # a second, different retry time for the same attempt (another processor's decision) is ignored
    assert evolve(new, retry(s.attempt, t=5, not_before=at(60))) is new
    assert waiting_until(new) == at(50)
    assert react(s, new, current, NOW) == []  # the relay queues it, the processor decides nothing


# ------------------------------------------------------------------ LeaseExpired


@pytest.mark.parametrize("key", list(HISTORIES))
def test_lease_expired_in_every_status(key):
    s = reach(key)
    e = lease(s.attempt)
    for stale in (lease(s.attempt - 1), lease(s.attempt + 1)):
        unchanged(s, stale)
    if STATUS_OF[key] != "running":
        # only a running attempt holds a lease (a queued one has not told us it started)
        unchanged(s, e)
        assert lease_expired(s, s.attempt, 30.0, NOW) == []
        return
    assert [(type(x), x.attempt, x.lease_s, x.occurred_at) for x in lease_expired(s, s.attempt, 30.0, NOW)] == [
        (LeaseExpired, s.attempt, 30.0, NOW)]
    assert lease_expired(s, s.attempt - 1, 30.0, NOW) == []
    new = evolve(s, e)
    error = "LeaseExpired: no heartbeat nor result from the executor for 30s"
    out = react(s, new, e, NOW)
    if key == "running_last":  # counts as a failed attempt: the last one fails the task
        assert new == replace(s, status="failed", error=error, finished_at=T_EV, updated_at=T_EV,
                              version=s.version + 1)
        assert [(type(x), x.attempt, x.error) for x in out] == [(TaskDeadLettered, s.attempt, error)]
    else:  # ... and is retried per policy
        assert new == replace(s, status="scheduled", error=error, retry_at=None, updated_at=T_EV, version=s.version + 1)
        [r] = out
        # the wait counts from the failure (new.updated_at), not from when the processor folded it
        assert (type(r), r.attempt, r.not_before) == (
            TaskRetryScheduled,
            s.attempt,
            min(new.updated_at, NOW) + timedelta(seconds=backoff_delay(s, s.attempt)),
        )
    assert evolve(new, e) is new
    assert react(new, new, e, NOW) == []  # folded again: no second retry nor dead letter
    # the executor's late result for the expired attempt is ignored
    for late in (succeeded(s.attempt, t=400), failed(s.attempt, t=400), started(s.attempt, t=400)):
        assert evolve(new, late) is new


def test_a_result_before_the_lease_wins_and_the_lease_changes_nothing():
    s = reach("running")
    done = evolve(s, succeeded(1, t=9))
    assert evolve(done, lease(1)) is done
    assert react(done, done, lease(1), NOW) == []


# -------------------------------------------------------------- TaskCheckpointed


@pytest.mark.parametrize("key", list(HISTORIES))
def test_checkpoint_in_every_status(key):
    s = reach(key)
    e = checkpoint(s.attempt)
    for stale in (checkpoint(s.attempt - 1), checkpoint(s.attempt + 1)):
        unchanged(s, stale)
    if STATUS_OF[key] not in ("queued", "running"):
        unchanged(s, e)
        return
    new = evolve(s, e)
    assert new == replace(s, checkpoint='{"page": 7}', updated_at=T_EV, version=s.version + 1)
    assert evolve(new, e) is new
    assert evolve(new, checkpoint(s.attempt, t=T_EV + timedelta(seconds=1))) is new  # same data: no change
    newer = evolve(new, checkpoint(s.attempt, data='{"page": 8}', t=T_EV + timedelta(seconds=1)))
    assert (newer.checkpoint, newer.version) == ('{"page": 8}', new.version + 1)
    assert react(s, new, e, NOW) == []
    assert ready_message(new, NOW).last_checkpoint == '{"page": 7}'


def test_the_next_attempt_gets_the_last_checkpoint():
    s = fold([created(), queued(1), started(1), checkpoint(1, '{"page": 1}', t=at(2)),
              checkpoint(1, '{"page": 2}', t=at(2.5)), failed(1), retry(1),
              queued(2, t=100, due_at=RETRY_AT)])
    assert (s.status, s.attempt, s.checkpoint) == ("queued", 2, '{"page": 2}')
    msg = ready_message(s, NOW)
    assert (msg.attempt, msg.last_checkpoint) == (2, '{"page": 2}')
    assert ready_message(reach("queued"), NOW).last_checkpoint is None


# ------------------------------------------------------------------ TaskRedriven

REDRIVE_APPLIES = {"failed", "failed_exhausted", "upstream_failed"}


@pytest.mark.parametrize("key", list(HISTORIES))
def test_redrive_in_every_status(key):
    s = fold_with_dependents([registered("down-1", t=6)], reach(key))
    e = redriven()
    new = evolve(s, e)
    if key not in REDRIVE_APPLIES:
        assert new is s
        assert react(s, new, e, NOW) == []  # harmless for a task in any other status
        return
    assert evolve(new, e) is new
    assert new.version == s.version + 1 and new.updated_at == T_EV
    assert (new.finished_at, new.result, new.attempt_offset, new.attempt) == (None, None, s.attempt, s.attempt)
    out = react(s, new, e, NOW)
    cascade = [(type(x), x.task_id) for x in out if isinstance(x, TaskRedriven)]
    assert cascade == [(TaskRedriven, "down-1")]  # dependents are re-opened too
    own = [x for x in out if not isinstance(x, TaskRedriven)]
    if key.startswith("failed"):
        # failed -> scheduled, due at once: the next attempt is queued in the same step
        assert (new.status, new.retry_at, new.error) == ("scheduled", T_EV, s.error)
        assert [(type(x), x.task_id, x.attempt, x.due_at) for x in own] == [(TaskQueued, TID, s.attempt + 1, T_EV)]
        q = evolve(new, own[0])
        assert (q.status, q.attempt, q.retry_at) == ("queued", s.attempt + 1, None)
        assert attempts_left(q) == q.max_attempts - 1  # a fresh budget
    else:
        # upstream_failed -> pending; the failed resolution is dropped, the success kept, and it registers again
        assert (new.status, new.error) == ("pending", None)
        assert (new.resolved, new.upstream_results) == ({"up-a": "succeeded"}, {"up-a": '"r"'})
        assert [(type(x), x.task_id, x.dependent) for x in own] == [(DependencyRegistered, "up-b", TID)]
        # up-b re-driven and now succeeding: the task is queued
        e2 = resolved("up-b", t=400)
        ok = evolve(new, e2)
        [q] = react(new, ok, e2, NOW)
        assert (type(q), q.attempt) == (TaskQueued, 1)
    # folded again: nothing re-sent (CHANGE_DRIVEN)
    assert react(new, new, e, NOW) == []


def test_redrive_restarts_the_budget_and_the_backoff():
    # max_attempts 2: attempts 1, 2 fail; redrive; attempts 3, 4 may run; 4 fails for good.
    s = fold([created(max_attempts=2), queued(1), failed(1), retry(1, not_before=at(10)),
              queued(2, t=10, due_at=at(10)), failed(2, t=11)])
    assert (s.status, attempts_left(s)) == ("failed", 0)
    assert backoff_delay(s, 1) == 0.5
    s = evolve(s, redriven(t=at(20)))
    [q] = decide(s, redriven(t=at(20)), at(20))
    s = evolve(s, q)
    assert (s.status, s.attempt, s.attempt_offset, attempts_left(s)) == ("queued", 3, 2, 1)
    e = failed(3, t=21)
    s2 = evolve(s, e)
    [r] = react(s, s2, e, at(21))
    assert type(r) is TaskRetryScheduled and r.delay_s == 0.5  # k counted from the redrive: the first wait again
    s2 = evolve(evolve(s2, r), queued(4, t=30, due_at=r.not_before))
    assert attempts_left(s2) == 0
    e = failed(4, t=31)
    s3 = evolve(s2, e)
    assert s3.status == "failed"
    assert [type(x) for x in react(s2, s3, e, at(31))] == [TaskDeadLettered]


def test_redrive_cascades_through_a_chain():
    # a fails; b (depends on a) and c (depends on b) are upstream_failed. Re-drive a: b and c re-open.
    a = fold_with_dependents([created("a", max_attempts=1), registered("b", tid="a"), queued(1, tid="a"),
                              failed(1, tid="a")])
    b = fold_with_dependents([created("b", depends_on=["a"]), registered("c", tid="b"),
                              domain.resolution(a, "b", NOW)])
    c = fold([created("c", depends_on=["b"]), domain.resolution(b, "c", NOW)])
    assert (a.status, b.status, c.status) == ("failed", "upstream_failed", "upstream_failed")
    states = {"a": a, "b": b, "c": c}
    inbox = [redriven(tid="a")]
    while inbox:  # the processor: fold, apply own follow events, deliver the rest
        e = inbox.pop(0)
        before = states.get(e.task_id)
        after = evolve(before, e)
        for f in react(before, after, e, NOW):
            if f.task_id == e.task_id:
                after = evolve(after, f)
            else:
                inbox.append(f)
        states[e.task_id] = after
        if states["a"].status == "queued" and not inbox:
            inbox.append(succeeded(states["a"].attempt, t=400, tid="a"))
    assert {k: v.status for k, v in states.items()} == {"a": "succeeded", "b": "queued", "c": "pending"}
    assert states["b"].resolved == {"a": "succeeded"} and states["c"].resolved == {}


# -------------------------------------------------------------- TaskDeadLettered


@pytest.mark.parametrize("key", list(HISTORIES))
def test_dead_lettered_changes_nothing(key):
    s = reach(key)
    for n in (s.attempt - 1, s.attempt, s.attempt + 1):
        unchanged(s, dead_lettered(n))


def test_dead_letter_carries_the_task():
    s = reach("failed_exhausted")
    d = domain.dead_lettered(s, NOW)
    assert (d.task_id, d.attempt, d.error, d.handler, d.priority, d.occurred_at) == (
        TID,
        1,
        "boom",
        "echo",
        "high",
        NOW,
    )
    assert codec.decode(codec.encode(d)) == d


# ------------------------------------------------------ TaskQueued fenced by due_at


def test_a_stale_timer_after_a_patch_of_run_at_is_ignored():
    s = reach("scheduled_run_at")
    old_timer = on_timer(s, RUN_AT, 60.0)  # decided at the old run_at ...
    assert [(type(x), x.attempt, x.due_at) for x in old_timer] == [(TaskQueued, 1, RUN_AT)]
    later = RUN_AT + timedelta(hours=1)
    patch = TaskUpdated(task_id=TID, occurred_at=at(10), producer="api-1", run_at=later)
    s = evolve(s, patch)  # ... but the PATCH was folded first
    assert (s.status, s.run_at, timer_due(s, 5.0)) == ("scheduled", later, later)
    assert evolve(s, old_timer[0]) is s
    assert on_timer(s, RUN_AT, 60.0) == []  # a timer armed for the old time queues nothing
    [q] = on_timer(s, later, 60.0)
    assert evolve(s, q).status == "queued"


def test_a_patch_to_a_past_run_at_queues_at_once():
    s = reach("scheduled_run_at")
    e = TaskUpdated(task_id=TID, occurred_at=at(10), producer="api-1", run_at=at(5))
    new = evolve(s, e)
    [q] = react(s, new, e, at(10))
    assert (q.attempt, q.due_at) == (1, at(5))
    assert evolve(new, q).status == "queued"


@pytest.mark.parametrize("due", [None, at(1), RETRY_AT - timedelta(microseconds=1)], ids=["none", "old", "early"])
def test_a_waiting_retry_is_queued_only_for_its_retry_time(due):
    s = reach("scheduled_retry")
    assert evolve(s, queued(2, t=90, due_at=due)) is s
    q = evolve(s, queued(2, t=100, due_at=RETRY_AT))
    assert (q.status, q.attempt) == ("queued", 2)
    assert evolve(q, queued(2, t=101, due_at=RETRY_AT)) is q  # the relay and the timer both queued it


@pytest.mark.parametrize("key", [k for k in HISTORIES if STATUS_OF[k] not in ("pending", "scheduled")])
def test_task_queued_applies_only_to_pending_and_scheduled(key):
    s = reach(key)
    for due in (None, waiting_until(s), RETRY_AT):
        assert evolve(s, queued(s.attempt + 1, t=300, due_at=due)) is s


# -------------------------------------------------------------------- run_at


def test_a_future_run_at_waits_for_its_timer():
    e = created(run_at=RUN_AT)
    s = evolve(None, e)
    assert (s.status, waiting_until(s), timer_due(s, 5.0)) == ("scheduled", RUN_AT, RUN_AT)
    assert react(None, s, e, T0) == []
    assert on_timer(s, RUN_AT - timedelta(microseconds=1), 60.0) == []  # not before
    assert not is_ready(s, RUN_AT - timedelta(microseconds=1))
    [q] = on_timer(s, RUN_AT + timedelta(seconds=3), 60.0)
    assert (type(q), q.attempt, q.due_at, q.occurred_at) == (TaskQueued, 1, RUN_AT, RUN_AT + timedelta(seconds=3))
    s = evolve(s, q)
    assert (s.status, s.attempt, timer_due(s, 5.0)) == ("queued", 1, None)


def test_timer_due_per_status():
    slack = 5.0
    assert timer_due(None, slack) is None
    assert timer_due(reach("scheduled_retry"), slack) == RETRY_AT + timedelta(seconds=slack)  # behind the relay
    assert timer_due(reach("scheduled_retry_unset"), slack) is None
    for key in HISTORIES:
        if STATUS_OF[key] != "scheduled":
            assert timer_due(reach(key), slack) is None, key
            assert on_timer(reach(key), at(10**7), 60.0) == [], key


def test_a_retry_timer_is_a_safety_net_behind_the_relay():
    s = reach("scheduled_retry")
    [q] = on_timer(s, RETRY_AT + timedelta(seconds=5), 60.0)
    assert (q.attempt, q.due_at) == (2, RETRY_AT)  # the same TaskQueued the relay appends
    assert on_timer(s, RETRY_AT - timedelta(microseconds=1), 60.0) == []


# ----------------------------------------------------------- deps and a run_at


@pytest.mark.parametrize("when", ["future", "past"])
def test_dependencies_then_run_at(when):
    run_at = RUN_AT if when == "future" else at(1)
    s = fold([created(depends_on=["up-a", "up-b"], run_at=run_at)])
    assert s.status == "pending"  # waits for its dependencies first
    e1 = resolved("up-a", t=10)
    s1 = evolve(s, e1)
    assert s1.status == "pending" and react(s, s1, e1, at(10)) == []
    e2 = resolved("up-b", t=11)
    s2 = evolve(s1, e2)
    assert s2.status == "scheduled"  # every dependency succeeded: now it waits for its run_at
    out = react(s1, s2, e2, at(11))
    if when == "future":
        assert out == [] and timer_due(s2, 5.0) == RUN_AT
        [q] = on_timer(s2, RUN_AT, 60.0)
    else:
        [q] = out
    assert (q.attempt, q.due_at) == (1, run_at)
    assert evolve(s2, q).status == "queued"


def test_a_failed_dependency_of_a_task_with_run_at_fails_it():
    s = fold([created(depends_on=["up-a"], run_at=RUN_AT), resolved("up-a", "failed")])
    assert (s.status, timer_due(s, 5.0)) == ("upstream_failed", None)


# ------------------------------------------------------------------- backoff


def policy(**kw) -> TaskState:
    fields = dict(backoff_initial_s=0.5, backoff_multiplier=2.0, backoff_max_s=10.0, backoff_jitter=0.0)
    fields.update(kw)
    return fold([created(**fields)])


def test_backoff_without_jitter_doubles_up_to_the_cap():
    s = policy()
    assert [backoff_delay(s, n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff_delay(policy(backoff_multiplier=3.0, backoff_max_s=100.0), 3) == 4.5
    assert backoff_delay(policy(backoff_multiplier=1.0), 50) == 0.5
    assert backoff_delay(policy(), 5000) == 10.0  # no overflow: the cap


def test_backoff_defaults_apply_to_tasks_without_a_policy():
    s = fold([created(backoff_initial_s=None, backoff_multiplier=None, backoff_max_s=None, backoff_jitter=None)])
    d = domain.DEFAULT_RETRY
    for n in (1, 2, 3, 20):
        base = min(d.max_s, d.initial_s * d.multiplier ** (n - 1))
        assert base * (1 - d.jitter) <= backoff_delay(s, n) <= base


def test_backoff_counts_attempts_since_the_last_redrive():
    s = policy()
    later = replace(s, attempt=6, attempt_offset=5)
    assert [backoff_delay(later, n) for n in (6, 7, 8)] == [0.5, 1.0, 2.0]


def test_backoff_jitter_is_deterministic_per_task_and_attempt():
    s = policy(backoff_jitter=0.5, backoff_max_s=1000.0)
    again = fold([created(backoff_jitter=0.5, backoff_max_s=1000.0, occurred_at=at(99), payload="{}")])
    assert [backoff_delay(s, n) for n in range(1, 6)] == [backoff_delay(again, n) for n in range(1, 6)]
    other = replace(s, task_id="task-2")
    assert [backoff_delay(s, n) for n in range(1, 6)] != [backoff_delay(other, n) for n in range(1, 6)]
    # spread: 200 tasks failing at once do not come back at one instant
    waits = {backoff_delay(replace(s, task_id=f"t{i}"), 1) for i in range(200)}
    assert len(waits) > 190 and min(waits) >= 0.25 and max(waits) <= 0.5
    assert max(waits) - min(waits) > 0.2


@settings(max_examples=300, deadline=None)
@given(
    task_id=st.text(min_size=1, max_size=20),
    n=st.integers(1, 60),
    offset=st.integers(0, 60),
    initial=st.floats(0, 1e4),
    multiplier=st.floats(1, 10),
    cap=st.floats(0, 1e6),
    jitter=st.floats(0, 1),
)
def test_backoff_stays_within_the_jitter_band(task_id, n, offset, initial, multiplier, cap, jitter):
    s = replace(policy(backoff_initial_s=initial, backoff_multiplier=multiplier, backoff_max_s=cap,
                       backoff_jitter=jitter), task_id=task_id, attempt_offset=min(offset, n - 1))
    k = n - s.attempt_offset
    try:
        base = min(cap, initial * multiplier ** (k - 1))
    except OverflowError:
        base = cap
    base = min(base, domain.MAX_BACKOFF_S)  # no policy waits longer (the API refuses longer ones too)
    d = backoff_delay(s, n)
    assert base * (1 - jitter) - 1e-9 <= d <= base + 1e-9
    assert d == backoff_delay(s, n)
    r = domain.retry_scheduled(replace(s, attempt=n), NOW)
    assert (r.delay_s, r.not_before) == (d, min(s.updated_at, NOW) + timedelta(seconds=d))


def test_absurd_policies_never_break_deciding():
    for kw in (dict(backoff_initial_s=1e308, backoff_multiplier=1e308, backoff_max_s=float("inf")),
               dict(backoff_initial_s=float("inf"), backoff_multiplier=0.0, backoff_max_s=float("inf")),
               dict(backoff_jitter=5.0), dict(backoff_jitter=-1.0, backoff_max_s=1e300, backoff_initial_s=1e300)):
        s = replace(policy(**kw), status="scheduled", attempt=3, error="x")
        d = backoff_delay(s, 3)
        assert 0.0 <= d <= domain.MAX_BACKOFF_S
        [r] = decide(s, TaskFailed(task_id=TID, occurred_at=T_EV, producer="e", attempt=3, error="x"), NOW)
        assert r.not_before == min(s.updated_at, NOW) + timedelta(seconds=d)


# --------------------------------------------------------- a schedule's id as a task


def test_task_events_keyed_by_a_schedule_id_change_nothing_and_a_registration_resolves_unknown():
    # A user may name a schedule's id in depends_on: the registration lands on the schedule's state.
    sched = evolve(None, ScheduleCreated(schedule_id="sched-1", occurred_at=T0, producer="api", cron="* * * * *"))
    for e in (registered("dep-1", tid="sched-1"), started(1, tid="sched-1"), lease(1, tid="sched-1"),
              checkpoint(1, tid="sched-1"), redriven(tid="sched-1"), retry(1, tid="sched-1"),
              failed(1, tid="sched-1"), queued(1, tid="sched-1"), created("sched-1"),
              TaskCancelled(task_id="sched-1", occurred_at=T_EV, producer="api")):
        assert evolve(sched, e) is sched
        out = react(sched, sched, e, NOW)
        if isinstance(e, DependencyRegistered):
            assert [(type(x), x.task_id, x.upstream, x.outcome) for x in out] == [
                (DependencyResolved, "dep-1", "sched-1", domain.UNKNOWN)]
        else:
            assert out == []
    task = reach("running")
    assert evolve(task, ScheduleCreated(schedule_id=TID, occurred_at=T0, producer="api", cron="* * * * *")) is task


# ------------------------------------------------------------------ properties

#: Events relative to the current state (attempt a); the alphabet of random histories.
ALPHABET = {
    "queue_next": lambda s, t: queued(s.attempt + 1, t=t),
    "queue_due": lambda s, t: queued(s.attempt + 1, t=t, due_at=waiting_until(s)),
    "queue_stale": lambda s, t: queued(s.attempt, t=t, due_at=waiting_until(s)),
    "start": lambda s, t: started(s.attempt, t=t),
    "succeed": lambda s, t: succeeded(s.attempt, t=t),
    "fail": lambda s, t: failed(s.attempt, t=t),
    "fail_permanent": lambda s, t: failed(s.attempt, t=t, permanent=True),
    "lease": lambda s, t: lease(s.attempt, t=at(t)),
    "checkpoint": lambda s, t: checkpoint(s.attempt, data=f'{{"t": {t}}}', t=at(t)),
    "retry": lambda s, t: retry(s.attempt, t=t, not_before=at(t + 1)),
    "redrive": lambda s, t: redriven(t=at(t)),
    "dead_letter": lambda s, t: dead_lettered(s.attempt, t=at(t)),
    "cancel": lambda s, t: TaskCancelled(task_id=TID, occurred_at=at(t), producer="api"),
    "register": lambda s, t: registered(f"d{t % 3}", t=t),
    "resolve_ok": lambda s, t: resolved("up-a", t=t),
    "resolve_failed": lambda s, t: resolved("up-a", "failed", t=t),
    "update": lambda s, t: TaskUpdated(task_id=TID, occurred_at=at(t), producer="api", run_at=at(t + 5)),
}
STALE = {
    "start": lambda s, t: started(s.attempt - 1, t=t),
    "succeed": lambda s, t: succeeded(s.attempt - 1, t=t),
    "fail": lambda s, t: failed(s.attempt - 1, t=t),
    "lease": lambda s, t: lease(s.attempt + 1, t=at(t)),
    "checkpoint": lambda s, t: checkpoint(s.attempt - 1, t=at(t)),
    "retry": lambda s, t: retry(s.attempt + 1, t=t),
}


def processor_run(first: TaskCreated, steps, now_of=at):
    """Fold as the processor does (own follow events applied at once) and return the states and the log."""
    log, states = [first], []
    s = evolve(None, first)
    for x in react(None, s, first, now_of(0)):
        if x.task_id == TID:
            s = evolve(s, x)
            log.append(x)
    states.append(s)
    for i, name in enumerate(steps, start=1):
        e = ALPHABET[name](s, i)
        before, s = s, evolve(s, e)
        log.append(e)
        for x in react(before, s, e, now_of(i)):
            if x.task_id == TID:
                s = evolve(s, x)
                log.append(x)
        states.append(s)
    return states, log


@settings(max_examples=int(os.environ.get("MODEL_EXAMPLES", 400)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    max_attempts=st.integers(1, 3),
    wait=st.sampled_from(["none", "run_at", "deps", "deps_run_at"]),
    steps=st.lists(st.sampled_from(sorted(ALPHABET)), max_size=40),
    stale=st.lists(st.sampled_from(sorted(STALE)), max_size=5),
)
def test_random_histories_fold_idempotently_and_replay_to_the_live_state(max_attempts, wait, steps, stale):
    kw = dict(max_attempts=max_attempts)
    if wait in ("run_at", "deps_run_at"):
        kw["run_at"] = at(3)
    if wait.startswith("deps"):
        kw["depends_on"] = ["up-a"]
    states, log = processor_run(created(**kw), steps)
    # replaying the log (with the processor's own follow events in place) gives the live state
    assert fold(log) == states[-1]
    s = None
    for e in log:
        before, s = s, evolve(s, e)
        # folding twice changes nothing (but a registration, which counts on the version: issue 25's edges keep
        # the dependents, and the processor folds each record once, by its offset); a change bumps the version by one
        assert evolve(s, e) is s or type(e) is DependencyRegistered
        assert s is before or s.version == (before.version if before else 0) + 1
        # terminal states are final but for dependents' bookkeeping and a redrive
        if is_terminal(before) and s is not before:
            assert type(e) in (DependencyRegistered, TaskRedriven)
        # stale attempts never change the state
        for name in stale:
            assert evolve(s, STALE[name](s, 999)) is s
    assert all(0 <= x.attempt - x.attempt_offset <= x.max_attempts for x in states)
    assert all((x.finished_at is not None) == is_terminal(x) for x in states)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    strategies.task_state.map(lambda s: replace(s, task_id=TID)),
    st.one_of(*(strategies.BY_RECORD[n] for n in ("TaskRetryScheduled", "LeaseExpired", "TaskCheckpointed",
                                                   "TaskRedriven", "TaskDeadLettered", "TaskQueued"))
              ).map(lambda e: replace(e, task_id=TID)),
)
def test_new_events_never_fail_and_fold_idempotently_for_any_state(state, event):
    new = evolve(state, event)
    assert evolve(new, event) is new
    assert new is state or new.version == state.version + 1
    react(state, new, event, NOW)  # deciding never raises either
    replay_outputs(new, NOW)


def test_a_pending_task_is_queued_only_once_its_dependencies_succeeded():
    s = fold([created(depends_on=["up-a"])])
    assert evolve(s, queued(1, t=9)) is s  # a TaskQueued out of nowhere (a bad log) changes nothing
    s = evolve(s, resolved("up-a", t=10))
    assert evolve(s, queued(1, t=11)).status == "queued"


def test_a_late_resolution_never_moves_an_active_task_back_to_scheduled():
    # Found by the random histories: a resolution for a dependency of a task already queued put it back
    # into `scheduled` (it has a run_at), where a second TaskQueued then ran attempt 2 of 1.
    s = replace(fold([created(depends_on=["up-a"], run_at=at(3))]), status="queued", attempt=1)
    new = evolve(s, resolved("up-a", t=10))
    assert new.status == "queued"
    assert evolve(new, queued(2, t=11)) is new


# ------------------------------------------- replay_outputs after a lost send

LOST_SEND_CASES = {
    # name: (history, event); the processor folds the event, applies its own follow events, writes the table
    # and crashes before sending anything.
    "created": ([], created()),
    "created_run_at_due": ([], created(run_at=at(-5))),
    "last_dependency": ([created(depends_on=["up-a"])], resolved("up-a", t=10)),
    "last_dependency_run_at": ([created(depends_on=["up-a"], run_at=at(8))], resolved("up-a", t=10)),
    "update_run_at_past": ([created(run_at=RUN_AT)],
                           TaskUpdated(task_id=TID, occurred_at=at(10), producer="api-1", run_at=at(9))),
    "retryable_failure": ([created(), queued(1), started(1)], failed(1, t=10)),
    "lease": ([created(), queued(1), started(1)], lease(1, t=at(10))),
    "redrive_failed": ([created(max_attempts=1), queued(1), failed(1), registered("down-1", t=4)], redriven(t=at(10))),
    "redrive_upstream_failed": (HISTORIES["upstream_failed"]() + [registered("down-1", t=6)], redriven(t=at(10))),
}


@pytest.mark.parametrize("name", list(LOST_SEND_CASES))
def test_replay_after_a_lost_send_restores_the_log(name):
    history, e = LOST_SEND_CASES[name]
    before = fold(history)
    live = evolve(before, e)
    sent = react(before, live, e, at(10))
    for x in sent:
        if x.task_id == TID:
            live = evolve(live, x)
    # The event comes again (its offset is the state's last): what is re-sent at a later time
    again = replay_outputs(live, at(50), e)
    own = [x for x in again if x.task_id == TID]
    # ... puts back into the log what the state already holds: folding the log gives the live state exactly
    assert fold([*history, e, *own]) == live
    # ... and owes the others what the lost send owed them
    def owed(events):
        return sorted((type(x).__name__, x.task_id) for x in events if x.task_id != TID)
    assert owed(again) == owed(sent)
    # without the event, a redrive's cascade cannot be known from the state
    if name.startswith("redrive"):
        assert not any(isinstance(x, TaskRedriven) for x in replay_outputs(live, at(50)))
