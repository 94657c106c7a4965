"""Dependencies, cancel and update in the pure core (DESIGN §4-§5): decider and evolve tables.

Upstream side: ``DependencyRegistered`` on an unknown, waiting, active or
terminal upstream, and what it answers (``Resolved(unknown)``, a resolution
with its result bounded to ``RESULT_BOUND``, or nothing). Dependent side:
``DependencyResolved`` for every outcome, duplicated, in any order, for an
id it does not depend on and on a dependent that already ended. Then
``TaskCancelled`` and ``TaskUpdated`` in every status, what ``react`` owes
dependents when a task ends, ``replay_outputs`` per status and the
``upstream`` JSON of a ready message.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from taskstream.schemas import (
    DependencyRegistered,
    DependencyResolved,
    ReadyTask,
    Status,
    TaskCancelled,
    TaskCreated,
    TaskDeadLettered,
    TaskFailed,
    TaskQueued,
    TaskRetryScheduled,
    TaskStarted,
    TaskState,
    TaskSucceeded,
    TaskUpdated,
    codec,
)
from taskstream.streams import domain
from taskstream.streams.domain import (
    RESULT_BOUND,
    UNKNOWN,
    decide,
    evolve,
    fold,
    fold_with_dependents,
    is_ready,
    react,
    ready_message,
    recorded,
    replay_outputs,
)

T0 = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
T_EV = T0 + timedelta(minutes=5)
NOW = T0 + timedelta(minutes=10)
TID = "task-1"
DEPS = ["up-a", "up-b", "up-c"]


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def created(task_id: str = TID, **kw) -> TaskCreated:
    fields = dict(task_id=task_id, occurred_at=T0, producer="api-1", handler="echo", priority="high",
                  payload='{"n": 1}', max_attempts=2)
    fields.update(kw)
    return TaskCreated(**fields)


def queued(n, t=1, tid=TID):
    return TaskQueued(task_id=tid, occurred_at=at(t), producer="processor", attempt=n, priority="high")


def started(n, t=2, tid=TID):
    return TaskStarted(task_id=tid, occurred_at=at(t), producer="exec-1", attempt=n)


def succeeded(n, t=3, result='"ok"', tid=TID):
    return TaskSucceeded(task_id=tid, occurred_at=at(t), producer="exec-1", attempt=n, result=result)


def failed(n, t=3, permanent=False, tid=TID):
    return TaskFailed(task_id=tid, occurred_at=at(t), producer="exec-1", attempt=n, error="boom", permanent=permanent)


def retry(n, t=3, tid=TID, not_before=None):
    return TaskRetryScheduled(task_id=tid, occurred_at=at(t), producer="processor", attempt=n,
                              not_before=not_before or at(t + 1), delay_s=1.0, priority="high")


def cancelled(tid=TID, reason="", t=4):
    return TaskCancelled(task_id=tid, occurred_at=at(t), producer="api-1", reason=reason)


def registered(dependent: str, upstream: str = TID, t: float = 5) -> DependencyRegistered:
    return DependencyRegistered(task_id=upstream, occurred_at=at(t), producer="processor", dependent=dependent)


def resolved(upstream: str, outcome: str = "succeeded", result: str | None = None, tid: str = TID,
             t: float = 5) -> DependencyResolved:
    return DependencyResolved(task_id=tid, occurred_at=at(t), producer="processor", upstream=upstream,
                              outcome=outcome, result=result)


# ------------------------------------------------------------------- histories

#: Every status of a task without dependencies (an upstream), by folding events.
UPSTREAM = {
    "pending": lambda: [created()],
    "scheduled": lambda: [created(run_at=at(3600))],
    "scheduled_retry": lambda: [created(), queued(1), failed(1), retry(1)],
    "queued": lambda: [created(), queued(1)],
    "running": lambda: [created(), queued(1), started(1)],
    "succeeded": lambda: [created(), queued(1), started(1), succeeded(1, result='{"v": 1}')],
    "failed": lambda: [created(), queued(1), started(1), failed(1, permanent=True)],
    "cancelled": lambda: [created(), cancelled()],
    "upstream_failed": lambda: [created(depends_on=["x"]), resolved("x", "failed")],
}
STATUS_OF = {k: k.removesuffix("_retry") for k in UPSTREAM}
TERMINAL_KEYS = ["succeeded", "failed", "cancelled", "upstream_failed"]
ACTIVE_KEYS = ["pending", "scheduled", "scheduled_retry", "queued", "running"]


def reach(key: str) -> TaskState:
    state = fold(UPSTREAM[key]())
    assert state.status == STATUS_OF[key]
    return state


def test_every_status_is_reached():
    assert {STATUS_OF[k] for k in UPSTREAM} == {s.value for s in Status}


# ------------------------------------------------- DependencyRegistered (upstream)

TERMINAL_STATUSES = {"succeeded", "failed", "cancelled", "upstream_failed"}


@pytest.mark.parametrize("key", [k for k in UPSTREAM if STATUS_OF[k] in TERMINAL_STATUSES])
def test_registration_on_a_terminal_upstream_records_the_dependent_and_is_answered(key):
    # Issue 5: a terminal upstream used to stay as it was ("terminal states are final"); it now records the
    # dependent too, because a redrive re-opens failed/upstream_failed tasks and cascades to their dependents.
    # Nothing else changes, and the resolution is still answered at once (decide).
    # Since issue 25 the dependent is an edge outside the state (dependents.recorded); the state counts the change.
    s = reach(key)
    e = registered("dep-1")
    new = evolve(s, e)
    assert new == replace(s, version=s.version + 1, updated_at=e.occurred_at)
    assert recorded(s, e) is e
    [r] = decide(new, e, NOW)
    assert (r.task_id, r.upstream, r.outcome) == ("dep-1", s.task_id, s.status)


def test_registration_on_an_unknown_upstream_resolves_it_as_unknown():
    e = registered("dep-1", upstream="ghost")
    assert evolve(None, e) is None
    [r] = decide(None, e, NOW)
    assert type(r) is DependencyResolved
    assert (r.task_id, r.upstream, r.outcome, r.result, r.result_truncated, r.occurred_at) == (
        "dep-1", "ghost", UNKNOWN, None, False, NOW)
    assert [(x.task_id, x.upstream, x.outcome) for x in react(None, None, e, NOW)] == [("dep-1", "ghost", UNKNOWN)]


@pytest.mark.parametrize("key", list(UPSTREAM))
def test_registration_records_an_edge_and_leaves_the_state_record_without_it(key):
    s = reach(key)
    e = registered("dep-1")
    new = evolve(s, e)
    assert new == replace(s, version=s.version + 1, updated_at=e.occurred_at) and new.dependents == []
    assert recorded(s, e) is e and recorded(new, registered("dep-1", t=99)).dependent == "dep-1"
    # however many register, the record does not grow; the dependents are what the edges say, once each
    events = [registered(f"dep-{i % 50}", t=6 + i) for i in range(200)]
    folded = fold_with_dependents(events, s)
    assert folded.dependents == sorted({f"dep-{i}" for i in range(50)})
    assert fold(events, s).dependents == [] and fold(events, s).version == s.version + 200


@pytest.mark.parametrize("key", ACTIVE_KEYS)
def test_registration_on_a_live_upstream_answers_nothing_yet(key):
    s = reach(key)
    e = registered("dep-1")
    new = evolve(s, e)
    assert decide(new, e, NOW) == []
    assert react(s, new, e, NOW) == []


@pytest.mark.parametrize("key", TERMINAL_KEYS)
def test_registration_on_a_terminal_upstream_resolves_at_once(key):
    s = reach(key)
    e = registered("dep-1")
    new = evolve(s, e)
    expected = [("dep-1", TID, STATUS_OF[key], s.result, False)]
    for out in (decide(new, e, NOW), react(s, new, e, NOW)):
        assert [(r.task_id, r.upstream, r.outcome, r.result, r.result_truncated) for r in out] == expected
        assert all(type(r) is DependencyResolved and r.occurred_at == NOW for r in out)
    # A duplicate registration is answered again (the dependent ignores the second answer).
    again = decide(evolve(new, e), e, NOW)
    assert [(r.task_id, r.outcome) for r in again] == [("dep-1", STATUS_OF[key])]


@pytest.mark.parametrize(
    ("result", "carried", "truncated"),
    [
        (None, None, False),
        ('{"v": 1}', '{"v": 1}', False),
        ('"' + "x" * (RESULT_BOUND - 2) + '"', '"' + "x" * (RESULT_BOUND - 2) + '"', False),  # exactly the bound
        ('"' + "x" * (RESULT_BOUND - 1) + '"', None, True),  # one byte over
        ('"' + "é" * (RESULT_BOUND // 2) + '"', None, True),  # the bound counts UTF-8 bytes, not characters
    ],
    ids=["none", "small", "at-bound", "over-bound", "multibyte-over"],
)
def test_resolution_bounds_the_result(result, carried, truncated):
    s = fold([created(), queued(1), succeeded(1, result=result)])
    r = domain.resolution(s, "dep-1", NOW)
    assert (r.outcome, r.result, r.result_truncated) == ("succeeded", carried, truncated)
    # what the dependent then hands its handler: the result, or None above the bound
    d = fold([created("dep-1", depends_on=[TID]), r])
    assert d.upstream_results == {TID: carried if carried is not None else "null"}
    expect = codec.loads_json(carried) if carried is not None else None
    assert codec.loads_json(ready_message(d, NOW).upstream) == {TID: expect}
    assert codec.decode(codec.encode(r)) == r


# --------------------------------------------------- DependencyResolved (dependent)


def pending_dependent(deps=DEPS, **kw) -> TaskState:
    return fold([created(depends_on=list(deps), **kw)])


OUTCOMES = ["succeeded", "failed", "cancelled", "upstream_failed", UNKNOWN]


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_first_resolution_of_each_outcome(outcome):
    s = pending_dependent()
    e = resolved("up-b", outcome, result='{"r": 2}' if outcome == "succeeded" else None)
    new = evolve(s, e)
    common = dict(version=s.version + 1, updated_at=e.occurred_at, resolved={"up-b": outcome},
                  upstream_results={"up-b": '{"r": 2}' if outcome == "succeeded" else "null"})
    if outcome == "succeeded":
        assert new == replace(s, **common)
        assert decide(new, e, NOW) == []  # two more to go
    else:
        assert new == replace(s, **common, status="upstream_failed", error=f"dependency up-b {outcome}",
                              finished_at=e.occurred_at)
        assert decide(new, e, NOW) == []
        # it now owes its own dependents an upstream_failed
        s2 = fold_with_dependents([registered("down-1")], s)
        new2 = evolve(s2, e)
        assert [(r.task_id, r.upstream, r.outcome) for r in react(s2, new2, e, NOW)] == [
            ("down-1", TID, "upstream_failed")]
    assert evolve(new, e) is new  # duplicate
    assert evolve(new, resolved("up-b", "succeeded", t=50)) is new  # a second, different answer for the same upstream


def test_resolution_for_an_id_not_depended_on_changes_nothing():
    s = pending_dependent()
    for outcome in OUTCOMES:
        assert evolve(s, resolved("stranger", outcome)) is s
    assert evolve(None, resolved("up-a")) is None
    assert decide(None, resolved("up-a"), NOW) == []


@pytest.mark.parametrize("key", TERMINAL_KEYS)
def test_resolution_on_a_terminal_dependent_changes_nothing(key):
    # A terminal task that depends on up-a, with up-a still unresolved.
    histories = {
        "succeeded": [created(depends_on=["up-a", "up-b"]), resolved("up-b"), resolved("up-a")]
        + [queued(1), succeeded(1)],
        "failed": [created(depends_on=["up-a", "up-b"]), resolved("up-b"), resolved("up-a")]
        + [queued(1), failed(1, permanent=True)],
        "cancelled": [created(depends_on=["up-a", "up-b"]), cancelled()],
        "upstream_failed": [created(depends_on=["up-a", "up-b"]), resolved("up-b", "failed")],
    }
    s = fold(histories[key])
    assert s.status == key
    for outcome in OUTCOMES:
        e = resolved("up-a", outcome)
        assert evolve(s, e) is s
        assert react(s, s, e, NOW) == []


@pytest.mark.parametrize("order", list(itertools.permutations(DEPS)), ids=lambda o: "-".join(x[-1] for x in o))
def test_all_successes_in_any_order_queue_exactly_at_the_last(order):
    s = pending_dependent()
    for i, upstream in enumerate(order):
        e = resolved(upstream, result=f'"{upstream}"', t=10 + i)
        before, s = s, evolve(s, e)
        follow = react(before, s, e, NOW)
        if i < len(order) - 1:
            assert follow == [] and s.status == "pending" and not is_ready(s, NOW)
        else:
            assert [(type(x), x.attempt) for x in follow] == [(TaskQueued, 1)]
            assert is_ready(s, NOW)
            s = evolve(s, follow[0])
            assert (s.status, s.attempt) == ("queued", 1)
        # Duplicates of anything already resolved change nothing and queue nothing again.
        for dup in order[: i + 1]:
            d = resolved(dup, t=99)
            assert evolve(s, d) is s
            assert all(not isinstance(x, TaskQueued) or x.attempt > s.attempt for x in decide(s, d, NOW))
    assert s.resolved == dict.fromkeys(DEPS, "succeeded")
    assert codec.loads_json(ready_message(s, NOW).upstream) == {u: u for u in DEPS}


@pytest.mark.parametrize("fail_at", range(3))
@pytest.mark.parametrize("order", list(itertools.permutations(DEPS)), ids=lambda o: "-".join(x[-1] for x in o))
def test_one_failure_in_any_order_fails_the_dependent_and_nothing_queues_it(order, fail_at):
    s = pending_dependent()
    outs = []
    for i, upstream in enumerate(order):
        e = resolved(upstream, "failed" if i == fail_at else "succeeded", t=10 + i)
        before, s = s, evolve(s, e)
        outs += react(before, s, e, NOW)
    assert s.status == "upstream_failed"
    assert s.error == f"dependency {order[fail_at]} failed"
    assert s.finished_at == at(10 + fail_at)
    assert not any(isinstance(x, TaskQueued) for x in outs)
    assert set(s.resolved) == set(order[: fail_at + 1])  # later answers are ignored


def test_a_dependency_listed_twice_needs_one_success():
    s = pending_dependent(deps=["up-a", "up-a"])
    assert [r.task_id for r in domain.registrations(s, NOW)] == ["up-a"]
    e = resolved("up-a")
    new = evolve(s, e)
    assert [type(x) for x in decide(new, e, NOW)] == [TaskQueued]


def test_a_dependent_with_a_future_run_at_waits_for_it_after_its_dependencies():
    s = pending_dependent(deps=["up-a"], run_at=NOW + timedelta(hours=1))
    assert s.status == "pending"
    e = resolved("up-a")
    new = evolve(s, e)
    assert decide(new, e, NOW) == []
    assert is_ready(new, NOW + timedelta(hours=2))


# ---------------------------------------------------------- TaskCreated -> registrations


def test_created_with_dependencies_registers_once_with_each_upstream():
    e = created(depends_on=["up-a", "up-b", "up-a"])
    s = evolve(None, e)
    out = decide(s, e, NOW)
    assert [(type(r), r.task_id, r.dependent) for r in out] == [
        (DependencyRegistered, "up-a", TID), (DependencyRegistered, "up-b", TID)]
    assert s.status == "pending" and not is_ready(s, NOW)


# ------------------------------------------------------------------ TaskCancelled

CANCEL_TABLE = {
    "pending": True, "scheduled": True, "scheduled_retry": True, "queued": True, "running": True,
    "succeeded": False, "failed": False, "cancelled": False, "upstream_failed": False,
}


@pytest.mark.parametrize("key", list(CANCEL_TABLE))
@pytest.mark.parametrize("reason", ["", "user asked"])
def test_cancel_in_every_status(key, reason):
    # (a cancelled retry forgets its retry time: none is coming)
    assert set(CANCEL_TABLE) == set(UPSTREAM)
    s = fold_with_dependents([registered("down-1")], reach(key))
    e = cancelled(reason=reason, t=60)
    new = evolve(s, e)
    if not CANCEL_TABLE[key]:
        assert new is s
        assert react(s, new, e, NOW) == []
        return
    assert new == replace(s, status="cancelled", error=f"cancelled: {reason}" if reason else "cancelled",
                          finished_at=at(60), updated_at=at(60), version=s.version + 1, retry_at=None)
    assert evolve(new, e) is new
    out = react(s, new, e, NOW)
    assert [(type(r), r.task_id, r.upstream, r.outcome) for r in out] == [
        (DependencyResolved, "down-1", TID, "cancelled")]
    # a result that arrives after the cancellation is ignored
    for late in (succeeded(s.attempt or 1, t=70), failed(s.attempt or 1, t=70, permanent=True),
                 started(s.attempt or 1, t=70), queued(s.attempt + 1, t=70)):
        assert evolve(new, late) is new
    assert evolve(None, e) is None


# -------------------------------------------------------------------- TaskUpdated


def updated(t: float = 60, **kw) -> TaskUpdated:
    return TaskUpdated(task_id=TID, occurred_at=at(t), producer="api-1", **kw)


UPDATE_APPLIES = {"pending": True, "scheduled": True}  # and only before the first attempt


@pytest.mark.parametrize("key", list(UPSTREAM))
@pytest.mark.parametrize("version", ["none", "matching", "stale"])
def test_update_in_every_status(key, version):
    s = reach(key)
    expected_version = {"none": None, "matching": s.version, "stale": s.version - 1}[version]
    e = updated(expected_version=expected_version, priority="low", payload='{"n": 2}', run_at=at(7200),
                timeout_s=9.5, max_attempts=7)
    new = evolve(s, e)
    if not UPDATE_APPLIES.get(key, False) or version == "stale":
        assert new is s
        return
    assert new == replace(s, priority="low", payload='{"n": 2}', run_at=at(7200), timeout_s=9.5, max_attempts=7,
                          version=s.version + 1, updated_at=at(60))
    if expected_version is not None:
        assert evolve(new, e) is new  # the version moved on: the same update is now stale


def test_update_changes_only_the_fields_given():
    s = reach("pending")
    assert evolve(s, updated()) is s  # nothing to change: nothing changes, no version bump
    new = evolve(s, updated(priority="low"))
    assert new == replace(s, priority="low", version=s.version + 1, updated_at=at(60))
    new2 = evolve(new, updated(timeout_s=3.0, expected_version=new.version, t=61))
    assert (new2.priority, new2.payload, new2.timeout_s, new2.version) == ("low", s.payload, 3.0, s.version + 2)


def test_an_update_does_not_queue_or_register_anything():
    s = pending_dependent(deps=["up-a"])
    e = updated(priority="low")
    new = evolve(s, e)
    assert react(s, new, e, NOW) == []


def test_updated_priority_is_the_one_queued_and_published():
    s = pending_dependent(deps=["up-a"])
    s = evolve(s, updated(priority="low"))
    e = resolved("up-a")
    s = evolve(s, e)
    [q] = decide(s, e, NOW)
    s = evolve(s, q)
    assert (q.priority, s.priority, ready_message(s, NOW).priority) == ("low", "low", "low")


# ----------------------------------------------------------- react: owed resolutions


def with_dependents(events) -> TaskState:
    return fold_with_dependents([*events[:1], registered("down-1"), registered("down-2"), *events[1:]])


REACT_CASES = {
    # name: (history before, event, resolutions expected with this outcome or None)
    "succeeded": ([created(), queued(1), started(1)], succeeded(1, t=9, result='{"v": 9}'), "succeeded"),
    "succeeded_from_queued": ([created(), queued(1)], succeeded(1, t=9), "succeeded"),
    "permanent_failure": ([created(), queued(1), started(1)], failed(1, t=9, permanent=True), "failed"),
    "last_attempt_failure": ([created(max_attempts=1), queued(1), started(1)], failed(1, t=9), "failed"),
    "retryable_failure": ([created(max_attempts=2), queued(1), started(1)], failed(1, t=9), None),
    "cancelled": ([created(), queued(1)], cancelled(t=9), "cancelled"),
    "upstream_failed": ([created(depends_on=["x"])], resolved("x", "cancelled", t=9), "upstream_failed"),
    "started": ([created(), queued(1)], started(1, t=9), None),
    "queued": ([created()], queued(1, t=9), None),
    "stale_success": ([created(), queued(1), failed(1), queued(2)], succeeded(1, t=9), None),
    "duplicate_success": ([created(), queued(1), succeeded(1)], succeeded(1, t=9), None),
    "cancel_after_success": ([created(), queued(1), succeeded(1)], cancelled(t=9), None),
}


@pytest.mark.parametrize("name", list(REACT_CASES))
def test_react_resolves_every_dependent_exactly_when_the_task_ends(name):
    history, event, outcome = REACT_CASES[name]
    before = with_dependents(history)
    after = evolve(before, event)
    out = react(before, after, event, NOW)
    resolutions = [r for r in out if isinstance(r, DependencyResolved)]
    if outcome is None:
        assert resolutions == []
        if name == "retryable_failure":  # the retry is scheduled instead (issue 5: it used to be queued at once)
            assert [(type(x), x.attempt) for x in out] == [(TaskRetryScheduled, 1)]
        return
    assert [(r.task_id, r.upstream, r.outcome, r.occurred_at) for r in resolutions] == [
        ("down-1", TID, outcome, NOW), ("down-2", TID, outcome, NOW)]
    assert all(r.result == after.result for r in resolutions)
    # ... and a task that failed for good is dead-lettered too (issue 5)
    assert [type(x) for x in out if not isinstance(x, DependencyResolved)] == (
        [TaskDeadLettered] if outcome == "failed" else [])
    # A retryable failure followed by success resolves once, at the success.
    if name == "succeeded":
        assert react(after, evolve(after, event), event, NOW) == []


def test_retry_then_final_outcome_resolves_once():
    s = with_dependents([created(max_attempts=2), queued(1)])
    owed = []
    for e in (failed(1, t=5), retry(1, t=5, not_before=at(6)),
              TaskQueued(task_id=TID, occurred_at=at(6), producer="relay", attempt=2, priority="high", due_at=at(6)),
              started(2, t=7), failed(2, t=8)):
        before, s = s, evolve(s, e)
        owed += [r for r in react(before, s, e, NOW) if isinstance(r, DependencyResolved)]
    assert s.status == "failed"
    assert [(r.task_id, r.outcome) for r in owed] == [("down-1", "failed"), ("down-2", "failed")]


# ------------------------------------------------------------------ replay_outputs


@pytest.mark.parametrize("key", list(UPSTREAM))
def test_replay_outputs_per_status(key):
    s = with_dependents(UPSTREAM[key]())
    out = replay_outputs(s, NOW)
    if key == "queued":
        assert [(type(x), x.attempt, x.priority) for x in out] == [(TaskQueued, 1, "high")]
        assert evolve(s, out[0]) is s  # a duplicate TaskQueued changes nothing
    elif key in TERMINAL_KEYS:
        # given the last event (a registration, not the failure), the dead letter is not sent again
        assert all(type(x) is DependencyResolved for x in replay_outputs(s, NOW, registered("down-2")))
        assert [(type(x), x.task_id, x.outcome, x.result) for x in out if type(x) is DependencyResolved] == [
            (DependencyResolved, d, s.status, s.result) for d in ("down-1", "down-2")]
        # a failed task's dead letter is sent again too (issue 5); the dlq may see it twice
        assert [(type(x), x.attempt) for x in out if type(x) is not DependencyResolved] == (
            [(TaskDeadLettered, 1)] if key == "failed" else [])
    elif key == "scheduled_retry":  # the retry is sent to the relay again (the same not_before)
        assert [(type(x), x.attempt, x.not_before) for x in out] == [(TaskRetryScheduled, 1, s.retry_at)]
        assert evolve(s, out[0]) is s
    else:  # pending without dependencies, scheduled, running: nothing owed to anyone
        assert out == []


def test_replay_outputs_of_a_pending_dependent_registers_with_the_unresolved():
    s = evolve(pending_dependent(), resolved("up-b"))
    out = replay_outputs(s, NOW)
    assert [(type(x), x.task_id, x.dependent) for x in out] == [
        (DependencyRegistered, "up-a", TID), (DependencyRegistered, "up-c", TID)]


# ------------------------------------------------------------- ready_message.upstream


def test_ready_message_upstream_maps_workflow_keys_else_ids_to_results():
    s = pending_dependent(deps=["id-a", "id-b", "id-c"], upstream_keys={"id-a": "fetch", "id-b": "parse"})
    big = '"' + "y" * RESULT_BOUND + '"'
    ups = {"id-a": '{"rows": [1, 2]}', "id-b": None, "id-c": big}
    for u, result in ups.items():
        up = fold([created(u), queued(1, tid=u), succeeded(1, result=result, tid=u)])
        e = domain.resolution(up, TID, NOW)
        before, s = s, evolve(s, e)
        for x in react(before, s, e, NOW):
            if x.task_id == TID:
                s = evolve(s, x)
    assert s.status == "queued"
    msg = ready_message(s, NOW)
    assert type(msg) is ReadyTask and msg.attempt == 1
    assert codec.loads_json(msg.upstream) == {
        "fetch": {"rows": [1, 2]},  # by key, not also by id (each dependency once)
        "parse": None,
        "id-c": None,  # no key: by id; above RESULT_BOUND: not carried
    }
    assert ready_message(reach("queued"), NOW).upstream == "{}"


def test_upstream_is_keyed_once_by_workflow_key_else_by_id():
    # Issue 26: a workflow task's ctx.upstream held each result twice (under the id and the key), so summing
    # it double-counted. One rule now: the workflow key when the dependency has one, else the task id.
    in_workflow = fold([created(depends_on=["up-a", "up-b"], upstream_keys={"up-a": "extract", "up-b": "clean"}),
                        resolved("up-a", result="2", t=5), resolved("up-b", result="3", t=6)])
    assert codec.loads_json(ready_message(in_workflow, NOW).upstream) == {"extract": 2, "clean": 3}
    assert sum(codec.loads_json(ready_message(in_workflow, NOW).upstream).values()) == 5
    by_id = fold([created(depends_on=["up-a", "up-b"]), resolved("up-a", result="2", t=5),
                  resolved("up-b", result="null", t=6)])
    assert codec.loads_json(ready_message(by_id, NOW).upstream) == {"up-a": 2, "up-b": None}
