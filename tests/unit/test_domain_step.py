"""The processor's step as the decider gives it: fold, follow-ups, the messages they mean, the lease rules."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from taskstream.schemas import ReadyTask, Status, TaskCancelled, TaskFailed, TaskQueued, TaskStarted
from taskstream.streams import domain
from taskstream.streams.domain import SubmitTask, decide, effects, heartbeat_renews, lease_after, step

NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)


def created(**fields):
    (e,) = decide(None, SubmitTask(task_id="t", handler="h", producer="api", priority="high", **fields), NOW)
    return e


def queued():
    state, _ = step(None, created(max_attempts=2), NOW, "proc-1")
    return state


def test_a_ready_task_is_queued_in_the_same_step_with_its_cause_and_sent_to_its_ready_topic() -> None:
    event = created()
    state, follow = step(None, event, NOW, "proc-1")
    assert state.status == "queued" and state.attempt == 1
    (q,) = follow
    assert isinstance(q, TaskQueued) and q.cause == event.event_id and q.producer == "proc-1"
    kinds = [(e.kind, type(e.message).__name__, e.priority) for e in effects(None, state, event, follow, NOW, "proc-1")]
    assert kinds == [("event", "TaskQueued", None), ("ready", "ReadyTask", "high")]


def test_a_dependent_registers_with_its_upstream_and_is_not_queued() -> None:
    event = created(depends_on=["u"])
    state, follow = step(None, event, NOW, "proc-1")
    assert state.status == "pending"
    assert [(type(e).__name__, e.task_id, getattr(e, "cause", None)) for e in follow] == [
        ("DependencyRegistered", "u", None)]
    assert [e.kind for e in effects(None, state, event, follow, NOW, "proc-1")] == ["event"]


def test_a_failed_attempt_with_attempts_left_goes_to_the_retry_relay_else_to_the_dlq() -> None:
    before = queued()
    failed = TaskFailed(task_id="t", occurred_at=NOW, producer="ex", attempt=1, error="boom")
    after, follow = step(before, failed, NOW, "proc-1")
    assert after.status == "scheduled" and after.retry_at is not None
    assert [e.kind for e in effects(before, after, failed, follow, NOW, "proc-1")] == ["event", "retry"]
    last = replace(before, max_attempts=1)
    after, follow = step(last, failed, NOW, "proc-1")
    assert after.status == "failed"
    assert [e.kind for e in effects(last, after, failed, follow, NOW, "proc-1")] == ["event", "dead_letter"]


def test_a_cancel_of_a_queued_task_tells_the_executors_on_its_ready_topic() -> None:
    before = queued()
    cancel = TaskCancelled(task_id="t", occurred_at=NOW, producer="api")
    after, follow = step(before, cancel, NOW, "proc-1")
    assert after.status == "cancelled" and follow == []
    assert [(e.kind, e.message, e.priority) for e in effects(before, after, cancel, follow, NOW, "p")] == [
        ("cancel", cancel, "high")]
    # a task that was only waiting has no executor to tell
    waiting = replace(before, status="scheduled")
    assert effects(waiting, step(waiting, cancel, NOW, "p")[0], cancel, [], NOW, "p") == []


def test_the_ready_message_carries_the_attempt_and_payload() -> None:
    event = created(payload='{"n":1}')
    state, follow = step(None, event, NOW, "proc-1")
    ready = [e.message for e in effects(None, state, event, follow, NOW, "proc-1") if e.kind == "ready"]
    assert isinstance(ready[0], ReadyTask) and ready[0].attempt == 1 and ready[0].payload == '{"n":1}'


def test_lease_rules() -> None:
    q = queued()
    running = domain.evolve(q, TaskStarted(task_id="t", occurred_at=NOW, producer="ex", attempt=1))
    assert lease_after(q, running) == "start"  # a new running attempt
    assert lease_after(running, running) == "keep"
    assert lease_after(running, replace(running, checkpoint='{"i":1}')) == "start"  # progress renews it
    assert lease_after(running, replace(running, status="succeeded")) == "clear"
    assert heartbeat_renews(running, 1) and not heartbeat_renews(running, 2) and not heartbeat_renews(q, 1)
    assert not heartbeat_renews(None, 1)


@given(st.lists(st.integers(0, 3), max_size=6), st.integers(0, 12))
def test_fold_log_as_of_is_the_fold_of_the_events_up_to_then(cancel_after: list[int], cut_s: int) -> None:
    event = created(run_at=NOW + timedelta(seconds=5))
    state, follow = step(None, event, NOW, "p")
    log = [event, *follow]
    for i, s in enumerate(sorted(cancel_after)):
        log.append(TaskCancelled(task_id="t", occurred_at=NOW + timedelta(seconds=s + i), producer="api"))
    cut = NOW + timedelta(seconds=cut_s)
    assert domain.fold_log(log, cut) == domain.fold([e for e in log if e.occurred_at <= cut])
    assert domain.fold_log(log) == domain.fold(log)
    assert state.status == Status.SCHEDULED.value


def test_status_predicates_name_the_queued_and_the_leased_states() -> None:
    q = queued()
    running, _ = step(q, TaskStarted(task_id="t", occurred_at=NOW, producer="ex", attempt=1), NOW, "proc-1")
    assert (domain.is_queued(q), domain.holds_lease(q)) == (True, False)
    assert (domain.is_queued(running), domain.holds_lease(running)) == (False, True)
    assert not domain.is_queued(None) and not domain.holds_lease(None)
    assert domain.at_offset(q, 42).last_offset == 42 and domain.at_offset(q, 42).version == q.version


def test_the_dependency_wait_ends_when_a_dependent_is_first_queued() -> None:
    pending, _ = step(None, created(depends_on=["u"]), NOW, "proc-1")
    now_queued = replace(pending, status=Status.QUEUED.value, attempt=1)
    assert domain.first_queued_after_wait(pending, now_queued)
    assert not domain.first_queued_after_wait(queued(), replace(queued(), attempt=1))  # no dependencies
    assert not domain.first_queued_after_wait(None, now_queued)


def test_timer_lease_relay_and_refusal_events_carry_the_producer_given() -> None:
    q = queued()
    running, _ = step(q, TaskStarted(task_id="t", occurred_at=NOW, producer="ex", attempt=1), NOW, "proc-1")
    (expired,) = domain.lease_expired(running, 1, 30.0, NOW, "proc-7")
    assert expired.producer == "proc-7" and expired.attempt == 1
    assert domain.lease_expired(running, 2, 30.0, NOW, "proc-7") == []  # not the running attempt
    scheduled = replace(q, status=Status.SCHEDULED.value, retry_at=NOW)
    assert [e.producer for e in domain.on_timer(scheduled, NOW, 60.0, "proc-7")] == ["proc-7"]
    ready = ReadyTask(task_id="t", occurred_at=NOW, producer="proc-1", attempt=1, handler="h", payload="null",
                      priority="high")
    assert domain.ready_refused(ready, "too large", NOW, "proc-7").producer == "proc-7"


def test_the_fold_order_applies_a_follow_up_right_after_its_trigger_as_the_processor_did() -> None:
    # The processor applied TaskQueued with TaskCreated, then the cancel; in the log the cancel landed between.
    event = created()
    live, follow = step(None, event, NOW, "proc-1")
    cancel = TaskCancelled(task_id="t", occurred_at=NOW + timedelta(seconds=1), producer="api")
    live, _ = step(live, cancel, NOW, "proc-1")
    log = [event, cancel, *follow]
    assert domain.fold(log) != live  # log order: the cancel came first and the late TaskQueued changes nothing
    assert domain.fold_log(log) == live and live.version == 3
    # the same rule, incrementally (what `state rebuild` folds per key)
    state, awaiting = None, None
    for e in log:
        state, awaiting = domain.fold_next(state, awaiting, e)
    assert state == live and awaiting is None


def test_the_fold_order_stops_waiting_for_a_follow_up_after_max_awaiting_events() -> None:
    event = created(run_at=NOW + timedelta(hours=1))
    state, awaiting = domain.fold_next(None, None, event)
    assert awaiting == [(event, None)]  # a trigger: its follow-up may still come
    for _ in range(domain.MAX_AWAITING):
        state, awaiting = domain.fold_next(state, awaiting, TaskCancelled(task_id="t", occurred_at=NOW, producer="a"))
    assert awaiting is None and state.status == "cancelled"
