"""Concurrency keys in the pure decider (``streams.domain.slots``, ``gates``): tables and properties.

Contract under test: a task with a concurrency key is held (``pending``,
``waiting_for: "concurrency:<key>"``) whenever it would be queued, and asks
the key's gate for a slot; the gate admits at most ``limit`` attempts at once,
in priority then arrival order, and tells each admitted task (SlotGranted),
whose fold queues it; a slot is freed when the attempt ends for good, fails
and waits for its retry, is cancelled or its lease expires. Properties: with
any interleaving of submits, priority changes, results, failures, cancels,
crashes (an event folded twice) and deliveries across partitions, never more
than ``limit`` tasks of a key are queued or running, a key's waiting tasks
are in the order of their priorities as they are now, and folding the log
gives the live state.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from taskstream.schemas import (
    CommandRejected,
    GateState,
    LeaseExpired,
    SlotGranted,
    SlotReleased,
    SlotRequested,
    Status,
    TaskCancelled,
    TaskCreated,
    TaskFailed,
    TaskQueued,
    TaskRetryScheduled,
    TaskStarted,
    TaskState,
    TaskSucceeded,
    ValidationError,
)
from taskstream.streams import domain
from taskstream.streams.domain import CancelTask, SubmitTask, UpdateTask

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
GATE = "concurrency:acme"


def _submit(task_id: str, *, limit: int = 2, priority: str = "medium", key: str = "acme", **kw) -> SubmitTask:
    return SubmitTask(task_id=task_id, handler="h", producer="api", priority=priority, concurrency_key=key,
                      concurrency_limit=limit, **kw)


def _created(task_id: str, **kw) -> TaskCreated:
    (e,) = domain.decide(None, _submit(task_id, **kw), T0)
    assert isinstance(e, TaskCreated)
    return e


def _gated(status: str, attempt: int = 0, **kw) -> TaskState:
    return replace(domain.initial_state(_created("t1")), status=status, attempt=attempt, **kw)


# ------------------------------------------------------------------ the key


@pytest.mark.parametrize(("template", "payload", "key"), [
    ("acme", "{}", "acme"),
    ("customer-{payload.customer_id}", '{"customer_id": "c7"}', "customer-c7"),
    ("{payload.a.b}/{payload.n}", '{"a": {"b": "x"}, "n": 3}', "x/3"),
    ("{payload.flag}", '{"flag": true}', "true"),
])
def test_a_key_template_is_filled_from_the_payload(template, payload, key):
    assert domain.concurrency_key_of(template, payload) == key
    (created,) = domain.decide(None, _submit("t1", key=template, payload=payload), T0)
    assert created.concurrency_key == key and created.concurrency_limit == 2


@pytest.mark.parametrize(("template", "payload"), [
    ("{payload.missing}", '{"customer_id": "c7"}'),
    ("{payload.a}", '{"a": {"b": 1}}'),
    ("{payload}", '{"a": 1}'),
    ("{payload.a}", "null"),
])
def test_a_key_naming_what_the_payload_lacks_is_refused_naming_the_field(template, payload):
    with pytest.raises(ValidationError) as info:
        domain.decide(None, _submit("t1", key=template, payload=payload), T0)
    assert info.value.field == "concurrency.key"


def test_a_task_without_a_key_is_not_gated_and_queues_at_once():
    state, follow = domain.step(None, domain.decide(None, SubmitTask(task_id="t1", handler="h", producer="api"), T0)[0],
                                T0, "p")
    assert state.status == Status.QUEUED.value and state.waiting_for is None
    assert not any(isinstance(e, (SlotRequested, SlotReleased)) for e in follow)


# ------------------------------------------------------------------ the task's side: status x event


def test_a_gated_task_is_held_where_it_would_be_queued_and_asks_for_a_slot():
    state, follow = domain.step(None, _created("t1"), T0, "p")
    assert (state.status, state.attempt, state.waiting_for) == ("pending", 0, GATE)
    (request,) = [e for e in follow if isinstance(e, SlotRequested)]
    assert (request.gate_id, request.holder, request.attempt, request.limit) == (GATE, "t1", 1, 2)
    assert not any(isinstance(e, SlotReleased) for e in follow)


HELD = _gated("pending", waiting_for=GATE)
#: status of a task (with its attempt) -> what a SlotGranted for attempt 1 of its key's gate makes of it
GRANT_TABLE = [
    (HELD, "queued"),
    (_gated("pending"), "pending"),  # not held (waiting for dependencies, say)
    (_gated("scheduled"), "scheduled"),
    (_gated("queued", 1), "queued"),
    (_gated("running", 1), "running"),
    (_gated("succeeded", 1), "succeeded"),
    (_gated("failed", 1), "failed"),
    (_gated("cancelled"), "cancelled"),
    (_gated("upstream_failed"), "upstream_failed"),
]


@pytest.mark.parametrize(("state", "status"), GRANT_TABLE, ids=[f"{s.status}{'-held' if s.waiting_for else ''}"
                                                                 for s, _ in GRANT_TABLE])
def test_a_grant_queues_only_the_task_held_for_that_attempt(state, status):
    grant = SlotGranted(task_id="t1", occurred_at=T0, producer="p", gate_id=GATE, attempt=1)
    after = domain.evolve(state, grant)
    assert after.status == status
    if status == "queued" and state.status == "pending":
        assert (after.attempt, after.waiting_for) == (1, None)
        assert domain.evolve(after, grant) is after  # a duplicate grant changes nothing
    else:
        assert after is state
    stale = replace(grant, attempt=2)
    assert domain.evolve(state, stale) is state
    assert domain.evolve(state, replace(grant, gate_id="concurrency:other")) is state


def test_a_held_task_ignores_another_request_to_queue_it():
    again = TaskQueued(task_id="t1", occurred_at=T0, producer="p", attempt=1, priority="medium")
    assert domain.evolve(HELD, again) is HELD
    assert not domain.is_ready(HELD, T0)


#: how an attempt leaves queued/running -> does it free the slot (and ask again)?
ENDINGS = [
    ("succeeded", TaskSucceeded(task_id="t1", occurred_at=T0, producer="x", attempt=1), False),
    ("failed for good", TaskFailed(task_id="t1", occurred_at=T0, producer="x", attempt=1, error="e", permanent=True),
     False),
    ("failed, retry waiting", TaskFailed(task_id="t1", occurred_at=T0, producer="x", attempt=1, error="e"), False),
    ("cancelled", TaskCancelled(task_id="t1", occurred_at=T0, producer="api"), False),
    ("lease expired", LeaseExpired(task_id="t1", occurred_at=T0, producer="p", attempt=1, lease_s=30.0), False),
]


@pytest.mark.parametrize(("name", "event", "asks_again"), ENDINGS, ids=[n for n, _, _ in ENDINGS])
def test_an_attempt_that_ends_frees_its_slot(name, event, asks_again):
    running = _gated("running", 1, max_attempts=3)
    state, follow = domain.step(running, event, T0, "p")
    released = [e for e in follow if isinstance(e, SlotReleased)]
    assert [(e.gate_id, e.holder, e.attempt) for e in released] == [(GATE, "t1", 1)]
    assert bool([e for e in follow if isinstance(e, SlotRequested)]) == asks_again
    if name == "failed, retry waiting":  # decided: a task waiting out its backoff holds no slot
        assert state.status == "scheduled" and state.retry_at is not None
        retry = next(e for e in follow if isinstance(e, TaskRetryScheduled))
        again, follow = domain.step(state, domain.requeued(retry, T0 + timedelta(seconds=5)), T0, "p")
        assert (again.status, again.waiting_for) == ("pending", GATE)
        assert [(e.holder, e.attempt) for e in follow if isinstance(e, SlotRequested)] == [("t1", 2)]


def test_cancelling_a_held_task_withdraws_its_request():
    state, follow = domain.step(HELD, domain.decide(HELD, CancelTask(task_id="t1", producer="api"), T0)[0], T0, "p")
    assert state.status == "cancelled" and state.waiting_for is None
    assert [(e.holder, e.attempt) for e in follow if isinstance(e, SlotReleased)] == [("t1", 1)]


def test_a_replay_of_a_held_task_asks_again_and_of_an_ended_one_releases():
    assert [type(e).__name__ for e in domain.replay_outputs(HELD, T0)] == ["TaskQueued", "SlotRequested"]
    done = _gated("succeeded", 1)
    assert sorted(e.attempt for e in domain.replay_outputs(done, T0) if isinstance(e, SlotReleased)) == [1, 2]


def _patched(state: TaskState, **changes) -> tuple[TaskState, list]:
    (update,) = domain.decide(state, UpdateTask(task_id=state.task_id, producer="api", changes=changes), T0)
    return domain.step(state, update, T0, "p")


@pytest.mark.parametrize("held", [
    HELD, _gated("pending", waiting_for="concurrency:handler:h", concurrency_key="handler:h")  # a handler's limit
], ids=["key", "handler-limit"])
def test_a_waiting_task_patched_to_another_priority_asks_again_at_it(held):
    state, follow = _patched(held, priority="high")
    assert (state.status, state.priority, state.waiting_for) == ("pending", "high", held.waiting_for)
    assert [(e.gate_id, e.holder, e.attempt, e.priority) for e in follow if isinstance(e, SlotRequested)] == [
        (held.waiting_for, "t1", 1, "high")]
    assert not any(isinstance(e, SlotReleased) for e in follow)


@pytest.mark.parametrize(("state", "changes"), [
    (HELD, {"payload": '{"n": 2}'}),  # the same priority: its place stands
    (HELD, {"priority": "medium"}),
    (_gated("pending", waiting_for="paused:handler:h"), {"priority": "high"}),  # a pause holds it: no slot asked
    (_gated("pending", depends_on=["up"]), {"priority": "high"}),  # waits for a dependency: asks once it is met
])
def test_a_patch_that_leaves_the_line_as_it_is_asks_nothing(state, changes):
    _, follow = _patched(state, **changes)
    assert not any(isinstance(e, (SlotRequested, SlotReleased)) for e in follow)


# ------------------------------------------------------------------ the gate


def _request(task: str, attempt: int = 1, priority: str = "medium", limit: int = 2) -> SlotRequested:
    return SlotRequested(gate_id=GATE, occurred_at=T0, producer="p", holder=task, attempt=attempt, priority=priority,
                         limit=limit)


def _release(task: str, attempt: int = 1) -> SlotReleased:
    return SlotReleased(gate_id=GATE, occurred_at=T0, producer="p", holder=task, attempt=attempt)


def _gate(*events) -> GateState:
    g = None
    for e in events:
        g = domain.evolve(g, e)
    return g


def test_the_gate_admits_up_to_its_limit_and_tells_each_admitted_task():
    g = _gate(_request("a"), _request("b"))
    assert g.holders == {"a": 1, "b": 1} and g.waiting == []
    g, follow = domain.step(g, _request("c"), T0, "p")
    assert g.waiting == ["c"] and follow == []
    g, follow = domain.step(g, _release("a"), T0, "p")
    assert g.holders == {"b": 1, "c": 1} and [(e.task_id, e.attempt) for e in follow] == [("c", 1)]
    assert all(isinstance(e, SlotGranted) and e.gate_id == GATE for e in follow)


def test_the_gate_admits_by_priority_then_arrival():
    g = _gate(*(_request(t, priority=p, limit=1) for t, p in [
        ("a", "medium"), ("l1", "low"), ("m1", "medium"), ("h1", "high"), ("m2", "medium"), ("h2", "high")]))
    assert g.waiting == ["h1", "h2", "m1", "m2", "l1"]


def test_a_waiting_task_asking_again_at_another_priority_moves_behind_its_new_priority():
    g = _gate(*(_request(t, priority=p, limit=1) for t, p in [
        ("a", "medium"), ("h1", "high"), ("m1", "medium"), ("m2", "medium"), ("l1", "low")]))
    assert g.waiting == ["h1", "m1", "m2", "l1"]
    g, follow = domain.step(g, _request("l1", priority="high", limit=1), T0, "p")
    assert g.waiting == ["h1", "l1", "m1", "m2"] and g.waiting_priorities["l1"] == "high" and follow == []
    g = domain.evolve(g, _request("m1", priority="low", limit=1))
    assert g.waiting == ["h1", "l1", "m2", "m1"] and g.waiting_attempts["m1"] == 1
    assert domain.evolve(g, _request("m1", priority="low", limit=1)) is g  # asked twice at the same priority
    assert domain.evolve(g, _request("a", priority="high", limit=1)) is g  # holds its slot already
    assert domain.evolve(g, _request("m2", attempt=0, priority="high", limit=1)) is g  # a stale attempt
    g = domain.evolve(g, _release("a"))
    assert list(g.holders) == ["h1"] and g.waiting == ["l1", "m2", "m1"]


def test_duplicates_and_stale_messages_change_nothing():
    g = _gate(_request("a"), _request("b"), _request("c"))
    assert domain.evolve(g, _request("a")) is g  # asked twice
    assert domain.evolve(g, _release("a", 2)) is g  # an attempt it does not hold
    assert domain.evolve(g, _release("zz")) is g
    g2 = domain.evolve(g, _release("c"))  # a waiting task withdraws
    assert g2.waiting == [] and g2.holders == g.holders
    assert domain.evolve(g2, _release("c")) is g2
    assert domain.step(g, _request("a"), T0, "p")[1] == []  # a duplicate grants nothing


def test_the_latest_request_sets_the_limit():
    g = _gate(_request("a", limit=1), _request("b", limit=1))
    assert g.waiting == ["b"]
    g = domain.evolve(g, _request("c", limit=3))
    assert g.limit == 3 and set(g.holders) == {"a", "b", "c"}


def test_a_replay_of_the_gate_grants_again_what_its_last_event_admitted():
    g = _gate(_request("a"), _request("b"), _request("c"))
    g = domain.evolve(g, _release("a"))
    assert [(e.task_id, e.attempt) for e in domain.replay_outputs(g, T0)] == [("c", 1)]


# ------------------------------------------------------------------ properties


class KeyedTasks(RuleBasedStateMachine):
    """Tasks of one key, their gate in another partition; messages between aggregates are delivered in any
    order across aggregates, in order within one (a Kafka partition per aggregate)."""

    LIMIT = 2
    TASKS = 6

    def __init__(self) -> None:
        super().__init__()
        self.clock = T0
        self.states: dict[str, object] = {}
        self.inbox: dict[str, list] = {}  # aggregate -> events not yet folded, in log order
        self.log: dict[str, list] = {}  # aggregate -> events in log order, as folded
        self.last: dict[str, object] = {}
        self.retries: dict[str, TaskRetryScheduled] = {}
        self.submitted = 0
        self.max_active = 0

    def now(self) -> datetime:
        self.clock += timedelta(milliseconds=10)
        return self.clock

    def send(self, events) -> None:
        for e in events:
            self.inbox.setdefault(e.aggregate_id, []).append(e)

    def task(self, i: int) -> TaskState | None:
        state = self.states.get(f"t{i}")
        return state if isinstance(state, TaskState) else None

    @rule(priority=st.sampled_from(["high", "medium", "low"]))
    @precondition(lambda self: self.submitted < self.TASKS)
    def submit(self, priority):
        task_id = f"t{self.submitted}"
        self.submitted += 1
        self.send(domain.decide(None, _submit(task_id, limit=self.LIMIT, priority=priority, max_attempts=2,
                                              backoff_initial_s=1.0), self.now()))

    @rule(data=st.data())
    @precondition(lambda self: any(self.inbox.values()))
    def deliver(self, data):
        key = data.draw(st.sampled_from(sorted(k for k, v in self.inbox.items() if v)))
        e = self.inbox[key].pop(0)
        self.log.setdefault(key, []).append(e)
        state, follow = domain.step(self.states.get(key), e, self.now(), "p")
        if state is not None:
            self.states[key] = state
        self.last[key] = e
        for f in follow:
            if isinstance(f, TaskRetryScheduled):
                self.retries[f.task_id] = f
            if f.aggregate_id == key:  # applied at once; lands in the log after its trigger, folded again there
                self.inbox.setdefault(key, []).insert(0, f)
            else:
                self.send([f])

    @rule(data=st.data())
    @precondition(lambda self: bool(self.last))
    def crash(self, data):
        """The last event of an aggregate folded again after a crash: its outputs are sent again."""
        key = data.draw(st.sampled_from(sorted(self.last)))
        state = self.states.get(key)
        if state is not None:
            again = domain.replay(state, self.last[key], self.now(), "p")
            self.send([e for e in again if e.aggregate_id != key])

    @rule(i=st.integers(0, TASKS - 1), outcome=st.sampled_from(["start", "succeed", "fail", "cancel", "lease"]))
    def executor_or_client(self, i, outcome):
        state = self.task(i)
        if state is None:
            return
        at = self.now()
        if outcome == "cancel" and state.status not in domain.TERMINAL_VALUES:
            self.send(domain.decide(state, CancelTask(task_id=state.task_id, producer="api"), at))
        elif state.status in domain.ACTIVE:
            n = state.attempt
            self.send([{
                "start": TaskStarted(task_id=state.task_id, occurred_at=at, producer="x", attempt=n),
                "succeed": TaskSucceeded(task_id=state.task_id, occurred_at=at, producer="x", attempt=n),
                "fail": TaskFailed(task_id=state.task_id, occurred_at=at, producer="x", attempt=n, error="e"),
                "lease": LeaseExpired(task_id=state.task_id, occurred_at=at, producer="p", attempt=n, lease_s=1.0),
                "cancel": TaskStarted(task_id=state.task_id, occurred_at=at, producer="x", attempt=n),
            }[outcome]])

    @rule(i=st.integers(0, TASKS - 1), priority=st.sampled_from(["high", "medium", "low"]))
    def patch(self, i, priority):
        """A client changes a task's priority (refused once it has started)."""
        state = self.task(i)
        if state is None:
            return
        try:
            self.send(domain.decide(state, UpdateTask(task_id=state.task_id, producer="api",
                                                      changes={"priority": priority}), self.now()))
        except CommandRejected:
            pass

    @rule(i=st.integers(0, TASKS - 1))
    def relay(self, i):
        waiting = self.retries.pop(f"t{i}", None)
        if waiting is not None:
            self.send([domain.requeued(waiting, self.now())])

    @invariant()
    def never_more_than_the_limit_queued_or_running(self):
        active = [s for s in self.states.values() if isinstance(s, TaskState) and s.status in domain.ACTIVE]
        assert len(active) <= self.LIMIT
        gate = self.states.get(GATE)
        if isinstance(gate, GateState):
            assert len(gate.holders) <= self.LIMIT
            assert {s.task_id for s in active} <= set(gate.holders)

    @invariant()
    def a_waiting_reason_only_on_a_held_task(self):
        for s in self.states.values():
            if isinstance(s, TaskState) and s.waiting_for is not None:
                assert s.status == "pending" and s.waiting_for == GATE

    def teardown(self):
        # Drain everything: once quiet, folding each aggregate's log gives the live state.
        for _ in range(10_000):
            keys = sorted(k for k, v in self.inbox.items() if v)
            if not keys:
                break
            e = self.inbox[keys[0]].pop(0)
            self.log.setdefault(keys[0], []).append(e)
            state, follow = domain.step(self.states.get(keys[0]), e, self.now(), "p")
            if state is not None:
                self.states[keys[0]] = state
            for f in follow:
                (self.inbox[keys[0]].insert(0, f) if f.aggregate_id == keys[0] else self.send([f]))
            self.never_more_than_the_limit_queued_or_running()
        for key, events in self.log.items():
            rebuilt = domain.fold_log(events)
            live = self.states.get(key)
            if isinstance(live, TaskState):
                rebuilt = replace(rebuilt, dependents=live.dependents)
            assert rebuilt == live, key
        gate = self.states.get(GATE)
        if isinstance(gate, GateState):  # quiet: every held task waits in the gate; no slot leaks
            held = {s.task_id for s in self.states.values() if domain.held(s)}
            active = {s.task_id for s in self.states.values() if isinstance(s, TaskState) and s.status in domain.ACTIVE}
            assert set(gate.waiting) == held and set(gate.holders) == active
            # ... in the order of each waiting task's priority now (a PATCH moves it), then arrival
            priorities = [self.states[t].priority for t in gate.waiting]
            assert [gate.waiting_priorities[t] for t in gate.waiting] == priorities
            assert priorities == sorted(priorities, key=["high", "medium", "low"].index)


TestKeyedTasks = KeyedTasks.TestCase
TestKeyedTasks.settings = settings(max_examples=150, stateful_step_count=60, deadline=None,
                                   suppress_health_check=[HealthCheck.too_slow])
