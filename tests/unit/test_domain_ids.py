"""Deterministic event ids (issue 23): the decider derives every id from the cause of a decision.

A script of commands, executor reports and clock ticks is run twice through
the pure processor step (``domain.step``, the timers, the retry relay's
``requeued``) with ``uuid.uuid4`` made to fail: both runs write the same log,
byte for byte, so nothing in the decider mints a random id. Ids stay unique
per distinct cause: every event of a run has its own.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskstream.schemas import (
    Heartbeat,
    TaskCheckpointed,
    TaskFailed,
    TaskRetryScheduled,
    TaskStarted,
    TaskState,
    TaskstreamError,
    TaskSucceeded,
    codec,
    derived_id,
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
)

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
TASKS = st.integers(0, 3)
ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), TASKS, st.sampled_from(["now", "later", "dep"]), st.integers(1, 3)),
        st.tuples(st.just("cancel"), TASKS),
        st.tuples(st.just("redrive"), TASKS),
        st.tuples(st.just("dlq_redrive"), st.lists(TASKS, max_size=3)),
        st.tuples(st.just("update"), TASKS, st.sampled_from(["high", "low"])),
        st.tuples(st.just("run"), TASKS, st.sampled_from(["start", "ok", "fail", "permanent", "checkpoint"])),
        st.tuples(st.just("schedule"), st.sampled_from(["create", "delete"])),
        st.tuples(st.just("tick"), st.integers(0, 120)),
    ),
    max_size=30,
)


def simulate(actions) -> list[bytes]:
    """The log a processor writes for ``actions`` (all keys in one partition), encoded."""
    log: list = []
    states: dict = {}
    relay: list[TaskRetryScheduled] = []
    clock = [T0]

    def now() -> datetime:
        clock[0] += timedelta(milliseconds=1)
        return clock[0]

    def append(events) -> None:
        pending = list(events)
        while pending:
            e = pending.pop(0)
            log.append(e)
            key = e.aggregate_id
            state, follow = domain.step(states.get(key), e, now(), "proc-1")
            if state is not None:
                states[key] = state
            relay.extend(f for f in follow if isinstance(f, TaskRetryScheduled))
            pending.extend(follow)

    def command(key, c) -> None:
        try:
            append(domain.decide(states.get(key), c, now()))
        except TaskstreamError:
            pass  # refused: nothing is written

    for n, action in enumerate(actions):
        kind, args = action[0], action[1:]
        if kind == "submit":
            i, wait, attempts = args
            kw = {"run_at": clock[0] + timedelta(seconds=30)} if wait == "later" else (
                {"depends_on": ["t0"]} if wait == "dep" else {})
            command(f"t{i}", SubmitTask(task_id=f"t{i}", handler="h", producer="api-1", max_attempts=attempts,
                                        backoff_initial_s=1.0, **kw))
        elif kind == "cancel":
            command(f"t{args[0]}", CancelTask(task_id=f"t{args[0]}", producer="api-1", reason="no"))
        elif kind == "redrive":
            command(f"t{args[0]}", RedriveTask(task_id=f"t{args[0]}", producer="api-1"))
        elif kind == "dlq_redrive":
            command(None, RedriveDeadLettered(task_ids=tuple(f"t{i}" for i in args[0]), producer="cli"))
        elif kind == "update":
            command(f"t{args[0]}", UpdateTask(task_id=f"t{args[0]}", producer="api-1", changes={"priority": args[1]}))
        elif kind == "schedule":
            c = (CreateSchedule(schedule_id="s", producer="api-1", cron="* * * * *", timezone="UTC",
                                template='{"handler": "h"}') if args[0] == "create"
                 else DeleteSchedule(schedule_id="s", producer="api-1"))
            command("s", c)
        elif kind == "run":  # the executor (the edge: it names its own event ids)
            state = states.get(f"t{args[0]}")
            if isinstance(state, TaskState) and state.attempt > 0:
                common = dict(task_id=state.task_id, occurred_at=now(), producer="exec-1", attempt=state.attempt,
                              event_id=f"{n:032x}")
                report = {"start": (TaskStarted, {}), "ok": (TaskSucceeded, {"result": "1"}),
                          "fail": (TaskFailed, {"error": "boom"}),
                          "permanent": (TaskFailed, {"error": "bad", "permanent": True}),
                          "checkpoint": (TaskCheckpointed, {"data": f'{{"n": {n}}}'})}
                cls, fields = report[args[1]]
                append([cls(**common, **fields)])
        else:  # the clock moves: the relay requeues, timers fire, leases run out
            clock[0] += timedelta(seconds=args[0])
            for r in [r for r in relay if r.not_before <= clock[0]]:
                relay.remove(r)
                append([domain.requeued(r, now(), "proc-1")])
            for key in sorted(states):
                state = states[key]
                due = domain.timer_due(state, domain.RELAY_SLACK_S)
                if due is not None and due <= clock[0]:
                    append(domain.on_timer(state, now(), 60.0, "proc-1"))
                if domain.holds_lease(states[key]):
                    append(domain.lease_expired(states[key], states[key].attempt, 30.0, now(), "proc-1"))
    return [codec.encode(e) for e in log]


@pytest.fixture
def no_random_ids(monkeypatch):
    def refuse():
        raise AssertionError("uuid4 called: the decider minted a random id")

    monkeypatch.setattr(uuid, "uuid4", refuse)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(actions=ACTIONS)
def test_the_same_commands_give_the_same_events_byte_for_byte_and_no_random_id(no_random_ids, actions):
    first = simulate(actions)
    assert simulate(actions) == first
    decoded = [codec.decode(v) for v in first]
    assert len({e.event_id for e in decoded}) == len(decoded)  # unique per distinct cause


def test_ids_derive_from_the_cause_and_the_place_in_it(no_random_ids):
    created = domain.decide(None, SubmitTask(task_id="t", handler="h", producer="api", depends_on=["a", "b"]), T0)[0]
    _, follow = domain.step(None, created, T0, "proc-1")
    assert [e.event_id for e in follow] == [derived_id(created.event_id, "DependencyRegistered", u, 0) for u in "ab"]
    # a follow-up decided again (the processor re-folding after a crash) is the same event, id included
    assert domain.step(None, created, T0, "proc-1")[1] == follow
    assert domain.replay(domain.step(None, created, T0, "proc-1")[0], created, T0, "proc-1") == follow


def test_an_edge_producer_still_mints_its_ids():
    beats = [Heartbeat(task_id="t", occurred_at=T0, producer="exec-1", attempt=1) for _ in range(2)]
    assert beats[0].event_id != beats[1].event_id and len(beats[0].event_id) == 32
