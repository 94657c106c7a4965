"""Rate limits of a concurrency key in the pure decider (``streams.domain.gates``): tables and properties.

Contract under test: a key with ``rate`` and ``per_s`` admits at most
``rate`` starts in any ``per_s`` seconds, clocked by the ``occurred_at`` of
the events its gate folds (never a wall clock: a replay admits the same); a
task over the rate waits (``pending``, ``waiting_for``) and never fails; the
gate's timer (``timer_due``) wakes it when the oldest start comes back
(``GateWoken``), and a woken gate with nothing back changes nothing. Bad
input is a ``ValidationError`` naming the field. Properties: with any
interleaving of submits, results, crashes, clock skew between producers and
timers, never more than ``rate`` admissions in any window of ``per_s``, and
folding the log gives the live state.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from taskstream.schemas import (
    GateState,
    GateWoken,
    SlotGranted,
    SlotReleased,
    SlotRequested,
    TaskCreated,
    TaskStarted,
    TaskState,
    TaskSucceeded,
    ValidationError,
    codec,
)
from taskstream.streams import domain
from taskstream.streams.domain import SubmitTask

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
GATE = "concurrency:api"


def _at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def _submit(task_id: str, *, rate: int | None = 2, per_s: float | None = 1.0, limit: int | None = None,
            key: str = "api", **kw) -> SubmitTask:
    return SubmitTask(task_id=task_id, handler="h", producer="api", concurrency_key=key, concurrency_limit=limit,
                      concurrency_rate=rate, concurrency_per_s=per_s, **kw)


def _request(task: str, t: float = 0.0, *, rate: int | None = 2, per_s: float | None = 1.0, limit: int = 0,
             attempt: int = 1) -> SlotRequested:
    return SlotRequested(gate_id=GATE, occurred_at=_at(t), producer="p", holder=task, attempt=attempt, limit=limit,
                         rate=rate, per_s=per_s)


def _release(task: str, t: float = 0.0, attempt: int = 1) -> SlotReleased:
    return SlotReleased(gate_id=GATE, occurred_at=_at(t), producer="p", holder=task, attempt=attempt)


def _woken(t: float) -> GateWoken:
    return GateWoken(gate_id=GATE, occurred_at=_at(t), producer="p")


def _gate(*events) -> GateState:
    g = None
    for e in events:
        g = domain.evolve(g, e)
    return g


# ------------------------------------------------------------------ the task's side


def test_a_task_with_a_rate_only_is_held_and_asks_with_its_rate_and_no_limit():
    (created,) = domain.decide(None, _submit("t1"), T0)
    assert (created.concurrency_key, created.concurrency_limit, created.concurrency_rate,
            created.concurrency_per_s) == ("api", None, 2, 1.0)
    state, follow = domain.step(None, created, T0, "p")
    assert (state.status, state.waiting_for) == ("pending", GATE)
    (request,) = [e for e in follow if isinstance(e, SlotRequested)]
    assert (request.limit, request.rate, request.per_s) == (0, 2, 1.0)


def test_a_task_with_a_limit_and_a_rate_asks_with_both():
    (created,) = domain.decide(None, _submit("t1", limit=3, rate=5, per_s=60), T0)
    state, follow = domain.step(None, created, T0, "p")
    (request,) = [e for e in follow if isinstance(e, SlotRequested)]
    assert (request.limit, request.rate, request.per_s) == (3, 5, 60.0)


def test_a_task_without_a_rate_asks_as_before():
    (created,) = domain.decide(None, _submit("t1", limit=2, rate=None, per_s=None), T0)
    assert created.concurrency_rate is None and created.concurrency_per_s is None
    _, follow = domain.step(None, created, T0, "p")
    (request,) = [e for e in follow if isinstance(e, SlotRequested)]
    assert (request.limit, request.rate, request.per_s) == (2, None, None)


@pytest.mark.parametrize(("rate", "per_s", "field"), [
    (2, None, "concurrency.per_s"),
    (None, 1.0, "concurrency.rate"),
    (0, 1.0, "concurrency.rate"),
    (-1, 1.0, "concurrency.rate"),
    (1001, 1.0, "concurrency.rate"),
    (2, 0.0, "concurrency.per_s"),
    (2, -1.0, "concurrency.per_s"),
    (2, 86_401.0, "concurrency.per_s"),
    (2, float("nan"), "concurrency.per_s"),
])
def test_a_bad_rate_is_refused_naming_the_field(rate, per_s, field):
    with pytest.raises(ValidationError) as info:
        domain.decide(None, _submit("t1", rate=rate, per_s=per_s), T0)
    assert info.value.field == field


def test_a_rate_without_a_key_makes_no_gate():
    (created,) = domain.decide(None, SubmitTask(task_id="t1", handler="h", producer="api"), T0)
    assert created.concurrency_key is None and created.concurrency_rate is None


# ------------------------------------------------------------------ the gate: table


#: events folded into a fresh gate of rate 2 per 1 s, no limit -> (holders, waiting, spent offsets in s)
RATE_TABLE = [
    ("two at once are admitted", [_request("a"), _request("b")], ["a", "b"], [], [0, 0]),
    ("a third waits", [_request("a"), _request("b"), _request("c")], ["a", "b"], ["c"], [0, 0]),
    ("a release frees no start", [_request("a"), _request("b"), _request("c"), _release("a", 0.5)],
     ["b"], ["c"], [0, 0]),
    ("a start comes back per_s later", [_request("a"), _request("b"), _request("c"), _release("a", 0.5),
                                       _woken(1.0)], ["b", "c"], [], [1.0]),
    ("any event of a later time counts", [_request("a"), _request("b"), _request("c"), _request("d", 1.2)],
     ["a", "b", "c", "d"], [], [1.2, 1.2]),
    ("not back a microsecond early", [_request("a"), _request("b"), _request("c"), _woken(0.999999)],
     ["a", "b"], ["c"], [0, 0]),
    ("an event from a late clock does not turn the gate's back", [_request("a", 5.0), _request("b", 5.0),
                                                                   _request("c", 5.5), _request("d", 4.0)],
     ["a", "b"], ["c", "d"], [5.0, 5.0]),
]


@pytest.mark.parametrize(("events", "holders", "waiting", "spent"), [r[1:] for r in RATE_TABLE],
                         ids=[r[0] for r in RATE_TABLE])
def test_the_gate_admits_at_most_rate_starts_per_period(events, holders, waiting, spent):
    g = _gate(*events)
    assert sorted(g.holders) == holders and g.waiting == waiting
    assert g.spent == [_at(s) for s in spent]


def test_a_key_with_a_limit_and_a_rate_waits_for_both():
    g = _gate(_request("a", limit=1, rate=5), _request("b", limit=1, rate=5))
    assert list(g.holders) == ["a"] and g.waiting == ["b"]
    assert domain.timer_due(g, 5.0) is None  # a slot is what b waits for: no timer
    g = domain.evolve(g, _release("a", 0.1))
    assert list(g.holders) == ["b"] and len(g.spent) == 2


def test_the_timer_wakes_the_gate_when_the_oldest_start_comes_back():
    g = _gate(_request("a", 0.0), _request("b", 0.4), _request("c", 0.5))
    due = domain.timer_due(g, 5.0)
    assert due is not None and _at(1.0) < due < _at(1.01)
    assert domain.on_timer(g, _at(0.9), 1.0) == []  # not due yet
    (woken,) = domain.on_timer(g, due, 1.0)
    assert isinstance(woken, GateWoken) and woken.gate_id == GATE and woken.event_id
    assert domain.on_timer(g, due, 1.0) == [woken]  # the same decision at the same time, the same id
    g2, follow = domain.step(g, woken, due, "p")
    assert "c" in g2.holders and [(e.task_id, e.attempt) for e in follow] == [("c", 1)]
    assert all(isinstance(e, SlotGranted) for e in follow)
    assert domain.timer_due(g2, 5.0) is None


def test_a_woken_gate_with_nothing_back_changes_and_decides_nothing():
    g = _gate(_request("a"), _request("b"), _request("c"))
    early = _woken(0.5)
    assert domain.evolve(g, early) is g
    assert domain.step(g, early, _at(0.5), "p") == (g, [])
    woken = _woken(1.0)
    g2 = domain.evolve(g, woken)
    assert domain.evolve(g2, woken) is g2  # folded twice: the second finds no start back


def test_a_gate_without_waiters_or_rate_has_no_timer():
    assert domain.timer_due(_gate(_request("a"), _request("b")), 5.0) is None
    assert domain.timer_due(_gate(_request("a", rate=None, limit=1), _request("b", rate=None, limit=1)), 5.0) is None


def test_the_latest_request_sets_the_rate_and_dropping_it_admits():
    g = _gate(_request("a"), _request("b"), _request("c"))
    g = domain.evolve(g, _request("d", 0.1, rate=3))
    assert g.rate == 3 and sorted(g.holders) == ["a", "b", "c"] and g.waiting == ["d"]
    g = domain.evolve(g, _request("e", 0.2, rate=None, limit=10))
    assert g.rate is None and g.spent == [] and sorted(g.holders) == ["a", "b", "c", "d", "e"]


def test_a_gate_of_schema_set_7_folds_as_before():
    # Set 7 requests carry a limit and no rate: the gate counts slots only.
    g = _gate(*(SlotRequested(gate_id=GATE, occurred_at=T0, producer="p", holder=t, attempt=1, limit=1)
                for t in ("a", "b")))
    assert (g.limit, g.rate, g.spent, list(g.holders), g.waiting) == (1, None, [], ["a"], ["b"])


def test_the_gate_state_round_trips_with_its_spent_starts():
    g = _gate(_request("a", 0.123456), _request("b", 0.5), _request("c", 0.7))
    assert codec.decode(codec.encode(g)) == g
    assert domain.timer_due(codec.decode(codec.encode(g)), 5.0) == domain.timer_due(g, 5.0)


# ------------------------------------------------------------------ properties


class RatedTasks(RuleBasedStateMachine):
    """Tasks of one rated key (optionally also a limit); producers' clocks skewed; timers fire late or not
    at all; messages delivered in any order across aggregates, in order within one."""

    TASKS = 8
    PER_S = 1.0

    def __init__(self) -> None:
        super().__init__()
        self.clock = T0
        self.rate = 2
        self.limit: int | None = None
        self.states: dict[str, object] = {}
        self.inbox: dict[str, list] = {}
        self.log: dict[str, list] = {}
        self.last: dict[str, object] = {}
        self.submitted = 0
        self.admissions: list[datetime] = []

    def now(self, skew_ms: int = 0) -> datetime:
        self.clock += timedelta(milliseconds=10)
        return self.clock - timedelta(milliseconds=skew_ms)

    def send(self, events) -> None:
        for e in events:
            self.inbox.setdefault(e.aggregate_id, []).append(e)

    def fold(self, key: str, e, now: datetime) -> None:
        self.log.setdefault(key, []).append(e)
        before = self.states.get(key)
        state, follow = domain.step(before, e, now, "p")
        if state is not None:
            self.states[key] = state
        if isinstance(state, GateState) and state is not before:
            self.admissions += [state.updated_at] * len(state.admitted)
        self.last[key] = e
        for f in follow:
            if f.aggregate_id == key:
                self.inbox.setdefault(key, []).insert(0, f)
            else:
                self.send([f])

    @rule(rate=st.integers(1, 3), limit=st.none() | st.integers(1, 3))
    @precondition(lambda self: self.submitted < self.TASKS)
    def submit(self, rate, limit):
        task_id = f"t{self.submitted}"
        self.submitted += 1
        self.rate = rate  # the latest request's rate is the key's
        self.send(domain.decide(None, _submit(task_id, rate=rate, per_s=self.PER_S, limit=limit), self.now()))

    @rule(data=st.data(), skew_ms=st.sampled_from([0, 0, 30, 300]))
    @precondition(lambda self: any(self.inbox.values()))
    def deliver(self, data, skew_ms):
        key = data.draw(st.sampled_from(sorted(k for k, v in self.inbox.items() if v)))
        self.fold(key, self.inbox[key].pop(0), self.now(skew_ms))

    @rule(ms=st.integers(0, 1500))
    def time_passes(self, ms):
        self.clock += timedelta(milliseconds=ms)

    @rule(late_ms=st.sampled_from([0, 5, 400]))
    def timer(self, late_ms):
        gate = self.states.get(GATE)
        if not isinstance(gate, GateState):
            return
        due = domain.timer_due(gate, 5.0)
        if due is None:
            return
        self.clock = max(self.clock, due + timedelta(milliseconds=late_ms))
        self.send(domain.on_timer(gate, self.clock, 1.0))

    @rule(data=st.data())
    @precondition(lambda self: bool(self.last))
    def crash(self, data):
        key = data.draw(st.sampled_from(sorted(self.last)))
        state = self.states.get(key)
        if state is not None:
            self.send([e for e in domain.replay(state, self.last[key], self.now(), "p") if e.aggregate_id != key])

    @rule(i=st.integers(0, TASKS - 1))
    def run_to_end(self, i):
        state = self.states.get(f"t{i}")
        if isinstance(state, TaskState) and state.status in domain.ACTIVE:
            at = self.now()
            self.send([TaskStarted(task_id=state.task_id, occurred_at=at, producer="x", attempt=state.attempt),
                       TaskSucceeded(task_id=state.task_id, occurred_at=at, producer="x", attempt=state.attempt)])

    @invariant()
    def never_more_than_rate_admissions_in_any_period(self):
        window = timedelta(seconds=self.PER_S)
        times = sorted(self.admissions)
        bound = max_rate_used(self)
        for i, t in enumerate(times):
            assert sum(1 for u in times[i:] if u < t + window) <= bound

    @invariant()
    def the_gate_clock_never_turns_back(self):
        # Admissions in fold order carry non-decreasing times, whatever producers' clocks say: a start is never
        # dated before one already spent, so it never comes back early.
        assert self.admissions == sorted(self.admissions)

    @invariant()
    def a_rated_wait_is_pending_never_failed(self):
        for s in self.states.values():
            if isinstance(s, TaskState):
                assert s.status != "failed"
                if s.waiting_for is not None:
                    assert s.status == "pending" and s.waiting_for == GATE

    def teardown(self):
        for _ in range(10_000):
            keys = sorted(k for k, v in self.inbox.items() if v)
            if keys:
                self.fold(keys[0], self.inbox[keys[0]].pop(0), self.now())
                continue
            gate = self.states.get(GATE)
            due = domain.timer_due(gate, 5.0) if isinstance(gate, GateState) else None
            if due is None:
                break
            self.clock = max(self.clock, due)
            self.send(domain.on_timer(gate, self.clock, 1.0))
        self.never_more_than_rate_admissions_in_any_period()
        for key, events in self.log.items():
            rebuilt = domain.fold_log(events)
            live = self.states.get(key)
            if isinstance(live, TaskState):
                rebuilt = replace(rebuilt, dependents=live.dependents)
            assert rebuilt == live, key
        gate = self.states.get(GATE)
        if isinstance(gate, GateState):  # quiet, every timer fired: nothing waits for a start
            held = {s.task_id for s in self.states.values() if domain.held(s)}
            assert set(gate.waiting) == held
            assert not held or (gate.limit and len(gate.holders) >= gate.limit)


def max_rate_used(m: RatedTasks) -> int:
    """The bound the admissions must keep: the highest rate any request set (a lowered rate never lets more
    through than the rate in force when each start was spent)."""
    rates = [e.rate for e in m.log.get(GATE, []) if isinstance(e, SlotRequested) and e.rate is not None]
    return max(rates, default=m.rate)


TestRatedTasks = RatedTasks.TestCase
TestRatedTasks.settings = settings(max_examples=150, stateful_step_count=60, deadline=None,
                                   suppress_health_check=[HealthCheck.too_slow])


class SteadyRate(RatedTasks):
    """One rate for every request: the bound is exactly that rate, in any window of ``per_s``."""

    @rule(limit=st.none() | st.integers(1, 3))
    @precondition(lambda self: self.submitted < self.TASKS)
    def submit(self, limit):  # type: ignore[override]
        task_id = f"t{self.submitted}"
        self.submitted += 1
        self.send(domain.decide(None, _submit(task_id, rate=2, per_s=self.PER_S, limit=limit), self.now()))

    @invariant()
    def never_more_than_rate_admissions_in_any_period(self):
        window = timedelta(seconds=self.PER_S)
        times = sorted(self.admissions)
        for i, t in enumerate(times):
            assert sum(1 for u in times[i:] if u < t + window) <= 2


TestSteadyRate = SteadyRate.TestCase
TestSteadyRate.settings = settings(max_examples=150, stateful_step_count=60, deadline=None,
                                   suppress_health_check=[HealthCheck.too_slow])


def test_created_events_of_a_rated_task_carry_the_rate():
    (created,) = domain.decide(None, _submit("t1", rate=7, per_s=2.5), T0)
    assert isinstance(created, TaskCreated) and codec.decode(codec.encode(created)) == created
