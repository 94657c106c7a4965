"""Pause and resume in the pure decider (``streams.domain.controls``): tables and properties.

Contract under test: a pause is one ``ControlPaused`` per partition; while a
task's handler or workflow is paused in its partition, whatever would queue
it (its first attempt, a dependency met, a retry due, a redrive, a slot
granted) holds it instead (``TaskHeld``: ``pending``, ``waiting_for:
"paused:<target>"``, the attempt not started); a resume releases the held
tasks of the partition (a ``TaskQueued`` each); a task already queued or
running is not touched. Properties: with any interleaving of submits,
pauses, resumes, handler limits and rates, results, retries, cancels, gate
timers and crashes (after the sends, or before them: the sends lost and
replayed from the state), no task is newly queued while one of its targets
is paused, folding each aggregate's log
(the processor's follow-ups landing behind events already in the log) gives
the live state, and once everything is resumed nothing stays held.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from taskstream.schemas import (
    ControlLimited,
    ControlPaused,
    ControlResumed,
    ControlState,
    DependencyResolved,
    GateState,
    SlotGranted,
    Status,
    TaskCancelled,
    TaskCreated,
    TaskFailed,
    TaskHeld,
    TaskQueued,
    TaskReleased,
    TaskRetryScheduled,
    TaskStarted,
    TaskState,
    TaskSucceeded,
    ValidationError,
)
from taskstream.streams import domain
from taskstream.streams.domain import CancelTask, LimitTarget, PauseTarget, ResumeTarget, SubmitTask

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
PAUSED_H = "paused:handler:h"
HANDLER_GATE = "concurrency:handler:b"


def _paused(*targets: str):
    return lambda t: t in targets


def _state(status: str, attempt: int = 0, **kw) -> TaskState:
    (created,) = domain.decide(None, SubmitTask(task_id="t1", handler="h", producer="api"), T0)
    return replace(domain.initial_state(created), status=status, attempt=attempt, **kw)


def _released(attempt: int = 1) -> TaskReleased:
    return TaskReleased(task_id="t1", occurred_at=T0, producer="p", attempt=attempt, waiting_for=PAUSED_H)


# ------------------------------------------------------------------ commands and the control's fold


def test_a_pause_is_one_copy_per_partition_with_the_actor():
    events = domain.decide(None, PauseTarget(target="handler:h", partitions=3, producer="api", actor="k1",
                                             reason="deploy"), T0)
    assert [(e.control_id, e.partition) for e in events] == [
        ("control:0:handler:h", 0), ("control:1:handler:h", 1), ("control:2:handler:h", 2)]
    assert all(isinstance(e, ControlPaused) and e.actor == "k1" and e.reason == "deploy" for e in events)
    assert len({e.event_id for e in events}) == 3
    resumed = domain.decide(None, ResumeTarget(target="handler:h", partitions=3, producer="api"), T0)
    assert [type(e) for e in resumed] == [ControlResumed] * 3


@pytest.mark.parametrize(("kind", "name"), [("queue", "h"), ("handler", ""), ("workflow", "a b"),
                                            ("handler", "x" * 201)])
def test_a_target_names_a_handler_or_a_workflow(kind, name):
    with pytest.raises(ValidationError):
        domain.target(kind, name)


def test_the_control_folds_pause_and_resume_idempotently():
    (p,) = domain.decide(None, PauseTarget(target="handler:h", partitions=1, producer="api", actor="k1"), T0)
    (r,) = domain.decide(None, ResumeTarget(target="handler:h", partitions=1, producer="api"), T0)
    c = domain.evolve(None, p)
    assert isinstance(c, ControlState) and c.paused and c.paused_by == "k1" and c.version == 1
    assert domain.evolve(c, p) is c  # paused twice
    resumed = domain.evolve(c, r)
    assert not resumed.paused and resumed.version == 2
    assert domain.evolve(resumed, r) is resumed
    assert domain.evolve(None, r) is None  # resumed, never paused here


# ------------------------------------------------------------------ holding: every status x the hold


@pytest.mark.parametrize("status", [s.value for s in Status])
@pytest.mark.parametrize("attempt", [0, 1])
def test_a_task_held_event_holds_only_an_attempt_being_admitted(status, attempt):
    state = _state(status, attempt, retry_at=T0 if status == "scheduled" and attempt else None)
    held = domain.evolve(state, TaskHeld(task_id="t1", occurred_at=T0, producer="p", attempt=attempt + 1,
                                         waiting_for=PAUSED_H, version=state.version))
    assert domain.evolve(state, TaskHeld(task_id="t1", occurred_at=T0, producer="p", attempt=attempt + 1,
                                         waiting_for=PAUSED_H, version=state.version - 1)) is state  # a stale copy
    if status in ("pending", "scheduled"):
        assert held.status == "pending" and held.waiting_for == PAUSED_H and held.attempt == attempt
    else:
        assert held is state
    queued_back = domain.evolve(state, TaskHeld(task_id="t1", occurred_at=T0, producer="p", attempt=attempt,
                                                waiting_for=PAUSED_H, version=state.version))
    if status == "queued":  # admitted by an event folded before (relay, grant): taken back, not started
        assert queued_back.status == "pending" and queued_back.attempt == attempt - 1
    else:
        assert queued_back is state


@pytest.mark.parametrize("paused", [None, _paused(), _paused("handler:other")])
def test_a_task_of_a_handler_not_paused_queues_as_before(paused):
    created = TaskCreated(task_id="t1", occurred_at=T0, producer="api", handler="h")
    state, follow = domain.step(None, created, T0, "p", paused=paused)
    assert state.status == "queued" and [type(e) for e in follow] == [TaskQueued]


@pytest.mark.parametrize("target", ["handler:h", "workflow:w"])
def test_a_new_task_of_a_paused_target_is_held_not_queued(target):
    created = TaskCreated(task_id="t1", occurred_at=T0, producer="api", handler="h", workflow_id="w")
    state, follow = domain.step(None, created, T0, "p", paused=_paused(target))
    assert state.status == "pending" and state.waiting_for == f"paused:{target}" and state.attempt == 0
    assert [type(e) for e in follow] == [TaskHeld] and follow[0].cause == created.event_id
    assert domain.effects(None, state, created, follow, T0, "p") == [domain.Effect("event", follow[0])]
    assert domain.fold_log([created, *follow]) == state


def test_a_dependency_met_or_a_redrive_while_paused_holds():
    waiting = _state("pending", depends_on=["u"])
    met = DependencyResolved(task_id="t1", occurred_at=T0, producer="p", upstream="u", outcome="succeeded")
    state, follow = domain.step(waiting, met, T0, "p", paused=_paused("handler:h"))
    assert state.waiting_for == PAUSED_H and [type(e) for e in follow] == [TaskHeld]


def test_a_retry_due_from_the_relay_is_taken_back_and_released_by_a_resume():
    waiting = _state("scheduled", 1, retry_at=T0)
    relayed = TaskQueued(task_id="t1", occurred_at=T0, producer="relay", attempt=2, priority="medium", due_at=T0)
    state, follow = domain.step(waiting, relayed, T0, "p", paused=_paused("handler:h"))
    assert (state.status, state.attempt, state.waiting_for) == ("pending", 1, PAUSED_H)
    assert [type(e) for e in follow] == [TaskHeld] and follow[0].cause == relayed.event_id
    assert not [x for x in domain.effects(waiting, state, relayed, follow, T0, "p") if x.kind == "ready"]
    assert domain.fold_log([relayed, *follow], state=waiting) == state
    # the resume of the partition's copy releases it
    (p,) = domain.decide(None, PauseTarget(target="handler:h", partitions=1, producer="api"), T0)
    (r,) = domain.decide(None, ResumeTarget(target="handler:h", partitions=1, producer="api"), T0)
    control, _ = domain.step(None, p, T0, "p")
    control, releases = domain.step(control, r, T0, "p", held=lambda reason: [state] if reason == PAUSED_H else [])
    assert [(type(e), e.task_id, e.attempt) for e in releases] == [(TaskReleased, "t1", 2)]
    assert domain.evolve(state, relayed) is state  # a TaskQueued sent again does not release it
    again, follow = domain.step(state, releases[0], T0, "p")
    assert again.status == "queued" and again.attempt == 2 and again.waiting_for is None
    assert domain.replay(control, r, T0, "p", held=lambda reason: [state]) == releases  # crash: sent again


def test_a_release_of_a_task_whose_other_target_is_paused_holds_it_there():
    state = replace(_state("pending"), workflow_id="w", waiting_for=PAUSED_H)
    state, follow = domain.step(state, _released(1), T0, "p", paused=_paused("workflow:w"))
    assert state.waiting_for == "paused:workflow:w" and [type(e) for e in follow] == [TaskHeld]


def test_a_queued_or_running_task_is_not_touched_by_a_pause():
    for status in ("queued", "running"):
        state = _state(status, 1)
        started = TaskStarted(task_id="t1", occurred_at=T0, producer="x", attempt=1)
        after, follow = domain.step(state, started, T0, "p", paused=_paused("handler:h"))
        assert not any(isinstance(e, TaskHeld) for e in follow)


def test_a_held_task_can_be_cancelled_and_a_release_then_changes_nothing():
    held = replace(_state("pending"), waiting_for=PAUSED_H)
    (cancel,) = domain.decide(held, CancelTask(task_id="t1", producer="api"), T0)
    cancelled = domain.evolve(held, cancel)
    assert cancelled.status == "cancelled" and cancelled.waiting_for is None
    assert domain.evolve(cancelled, _released(1)) is cancelled
    assert isinstance(cancel, TaskCancelled)


def test_a_gated_task_paused_gives_its_slot_back_and_asks_again_when_resumed():
    (created,) = domain.decide(None, SubmitTask(task_id="t1", handler="h", producer="api", concurrency_key="k",
                                                concurrency_limit=1), T0)
    state, follow = domain.step(None, created, T0, "p")
    assert state.waiting_for == "concurrency:k"
    granted = SlotGranted(task_id="t1", occurred_at=T0, producer="p", gate_id="concurrency:k", attempt=1)
    state, follow = domain.step(state, granted, T0, "p", paused=_paused("handler:h"))
    assert state.waiting_for == PAUSED_H and state.status == "pending"
    assert [type(e).__name__ for e in follow] == ["TaskHeld", "SlotReleased"]
    state, follow = domain.step(state, _released(1), T0, "p")
    assert state.waiting_for == "concurrency:k" and [type(e).__name__ for e in follow] == ["SlotRequested"]


def test_a_replay_of_a_held_task_sends_its_hold_again():
    created = TaskCreated(task_id="t1", occurred_at=T0, producer="api", handler="h")
    state, follow = domain.step(None, created, T0, "p", paused=_paused("handler:h"))
    assert domain.replay(state, created, T0, "p") == follow


def test_a_client_event_landing_before_the_hold_folds_in_the_processors_order():
    waiting = _state("scheduled", 1, retry_at=T0)
    relayed = TaskQueued(task_id="t1", occurred_at=T0, producer="relay", attempt=2, priority="medium", due_at=T0)
    live, follow = domain.step(waiting, relayed, T0, "p", paused=_paused("handler:h"))
    (cancel,) = domain.decide(live, CancelTask(task_id="t1", producer="api"), T0 + timedelta(seconds=1))
    live = domain.evolve(live, cancel)
    # log order: the relay's TaskQueued, the client's cancel, then the processor's TaskHeld
    assert domain.fold_log([relayed, cancel, *follow], state=waiting) == live


# ------------------------------------------------------------------ handler limits


def test_a_limit_is_one_copy_per_partition_of_a_handler_only():
    events = domain.decide(None, LimitTarget(target="handler:h", partitions=2, producer="api", limit=3), T0)
    assert [(type(e), e.partition, e.limit) for e in events] == [(ControlLimited, 0, 3), (ControlLimited, 1, 3)]
    c = domain.evolve(None, events[0])
    assert c.limit == 3 and not c.paused and domain.evolve(c, events[0]) is c
    (cleared,) = domain.decide(None, LimitTarget(target="handler:h", partitions=1, producer="api", limit=None), T0)
    assert domain.evolve(c, cleared).limit is None
    for bad in (dict(target="workflow:w", limit=1), dict(target="handler:h", limit=0)):
        with pytest.raises(ValidationError):
            domain.decide(None, LimitTarget(partitions=1, producer="api", **bad), T0)


def test_a_task_of_a_limited_handler_goes_through_the_handlers_gate():
    created = TaskCreated(task_id="t1", occurred_at=T0, producer="api", handler="h")
    state, follow = domain.step(None, created, T0, "p", limits={"handler:h": domain.HandlerLimit(2)}.get)
    assert (state.status, state.waiting_for, state.concurrency_key, state.concurrency_limit) == (
        "pending", "concurrency:handler:h", "handler:h", 2)
    assert [type(e).__name__ for e in follow] == ["TaskHeld", "SlotRequested"]
    assert follow[1].gate_id == "concurrency:handler:h" and follow[1].limit == 2
    assert domain.fold_log([created, follow[0]]) == state
    granted = SlotGranted(task_id="t1", occurred_at=T0, producer="p", gate_id="concurrency:handler:h", attempt=1)
    queued, _ = domain.step(state, granted, T0, "p", limits={"handler:h": domain.HandlerLimit(2)}.get)
    assert queued.status == "queued" and queued.attempt == 1


def test_a_task_with_a_key_of_its_own_or_of_another_handler_is_not_limited():
    own = TaskCreated(task_id="t1", occurred_at=T0, producer="api", handler="h", concurrency_key="k",
                      concurrency_limit=5)
    state, _ = domain.step(None, own, T0, "p", limits={"handler:h": domain.HandlerLimit(2)}.get)
    assert state.waiting_for == "concurrency:k"
    other = TaskCreated(task_id="t2", occurred_at=T0, producer="api", handler="other")
    state, _ = domain.step(None, other, T0, "p", limits={"handler:h": domain.HandlerLimit(2)}.get)
    assert state.status == "queued"


def test_a_pause_holds_before_a_limit():
    created = TaskCreated(task_id="t1", occurred_at=T0, producer="api", handler="h")
    state, _ = domain.step(None, created, T0, "p", paused=_paused("handler:h"),
                           limits={"handler:h": domain.HandlerLimit(2)}.get)
    assert state.waiting_for == PAUSED_H and state.concurrency_key is None


# ------------------------------------------------------------------ the property


class PausedPartition(RuleBasedStateMachine):
    """Tasks of two handlers, some in a workflow, in one partition with its control copies; a gate of a
    concurrency key elsewhere. Each aggregate's log is in order; the processor's own follow-ups land behind
    whatever was already in the log (what ``fold_next`` must put back in place)."""

    TASKS = 6
    TARGETS = ("handler:a", "handler:b", "workflow:w")
    RATE, PER_S = 2, 0.1  # handler b's rate when it has one

    def __init__(self) -> None:
        super().__init__()
        self.admissions: list[datetime] = []
        self.lose_sends = False
        self.clock = T0
        self.states: dict[str, object] = {}
        self.inbox: dict[str, list] = {}
        self.log: dict[str, list] = {}
        self.last: dict[str, object] = {}
        self.retries: dict[str, TaskRetryScheduled] = {}
        self.submitted = 0

    def now(self) -> datetime:
        self.clock += timedelta(milliseconds=10)
        return self.clock

    def send(self, events) -> None:
        for e in events:
            self.inbox.setdefault(e.aggregate_id, []).append(e)

    def paused_targets(self) -> set[str]:
        return {s.target for s in self.states.values() if isinstance(s, ControlState) and s.paused}

    def held(self, reason: str) -> list[TaskState]:
        return [s for s in self.states.values() if domain.paused_hold(s) and s.waiting_for == reason]

    def limits(self) -> dict[str, domain.HandlerLimit]:
        return {s.target: limit for s in self.states.values()
                if isinstance(s, ControlState) and (limit := domain.HandlerLimit.of(s)) is not None}

    def step(self, key: str, e) -> None:
        before = self.states.get(key)
        paused, limits = self.paused_targets(), self.limits()
        state, follow = domain.step(before, e, self.now(), "p", paused=paused.__contains__ if paused else None,
                                    held=self.held, limits=limits.get if limits else None)
        if self.lose_sends and state is not None and state is not before:
            # The processor crashed after writing the state, before its sends: it reads the event again and
            # sends what the state implies instead (``replay``), not what the step decided.
            self.lose_sends = False
            follow = domain.replay(state, e, self.now(), "p", held=self.held)
        if isinstance(state, TaskState) and state.status == "queued" and not (
                isinstance(before, TaskState) and before.status == "queued" and before.attempt == state.attempt):
            assert not set(domain.targets_of(state)) & paused, f"{key} queued while paused"
        if state is not None:
            self.states[key] = state
        if key == HANDLER_GATE and isinstance(state, GateState) and state is not before:
            self.rated_admissions(state)
        self.last[key] = e
        self.log.setdefault(key, []).append(e)
        for f in follow:
            if isinstance(f, TaskRetryScheduled):
                self.retries[f.task_id] = f
        self.send(follow)  # own follow-ups too: applied already, folded again where they land

    @rule(handler=st.sampled_from(["a", "b"]), in_workflow=st.booleans(), gated=st.booleans())
    @precondition(lambda self: self.submitted < self.TASKS)
    def submit(self, handler, in_workflow, gated):
        task_id = f"t{self.submitted}"
        self.submitted += 1
        extra = dict(concurrency_key="k", concurrency_limit=1) if gated else {}
        self.send(domain.decide(None, SubmitTask(task_id=task_id, handler=handler, producer="api", max_attempts=2,
                                                 workflow_id="w" if in_workflow else None, **extra), self.now()))

    @rule(of=st.sampled_from(TARGETS), pause=st.booleans())
    def pause_or_resume(self, of, pause):
        command = (PauseTarget if pause else ResumeTarget)(target=of, partitions=1, producer="api")
        self.send(domain.decide(None, command, self.now()))

    @rule(limit=st.sampled_from([None, 1, 2]), rated=st.booleans())
    def limit_handler(self, limit, rated):
        rate = dict(rate=self.RATE, per_s=self.PER_S) if rated else {}
        self.send(domain.decide(None, LimitTarget(target="handler:b", partitions=1, producer="api", limit=limit,
                                                  **rate), self.now()))

    def rated_admissions(self, gate: GateState) -> None:
        """Record the starts the handler's gate admitted; a gate without a rate starts a new run of them (its
        spent starts are dropped with the rate: the latest request's rate is the key's, decision 0026)."""
        if gate.rate is None:
            self.admissions = []
            return
        self.admissions += [gate.updated_at] * len(gate.admitted)

    @invariant()
    def never_more_than_the_handler_rate_started_in_any_period(self):
        window = timedelta(seconds=self.PER_S)
        times = sorted(self.admissions)
        for i, t in enumerate(times):
            assert sum(1 for u in times[i:] if u < t + window) <= self.RATE

    @rule(late_ms=st.sampled_from([0, 5, 100]))
    def gate_timer(self, late_ms):
        """A gate's timer fires (late, maybe): the rate's next start came back."""
        for key in sorted(k for k, s in self.states.items() if isinstance(s, GateState)):
            due = domain.timer_due(self.states[key], domain.RELAY_SLACK_S)
            if due is not None:
                self.clock = max(self.clock, due + timedelta(milliseconds=late_ms))
                self.send(domain.on_timer(self.states[key], self.clock, 1.0))

    @invariant()
    def never_more_than_the_handler_limit_queued_or_running(self):
        active = [s for s in self.states.values() if isinstance(s, TaskState) and s.status in domain.ACTIVE
                  and s.concurrency_key == "handler:b"]
        assert len(active) <= 2

    @rule(data=st.data())
    @precondition(lambda self: any(self.inbox.values()))
    def deliver(self, data):
        key = data.draw(st.sampled_from(sorted(k for k, v in self.inbox.items() if v)))
        self.step(key, self.inbox[key].pop(0))

    @rule()
    def crash_before_the_sends(self):
        """The next step's state is written, its follow-ups are lost: the crash repair replays them."""
        self.lose_sends = True

    @rule(data=st.data())
    @precondition(lambda self: bool(self.last))
    def crash(self, data):
        """The last event of an aggregate folded again after a crash: its outputs are sent again."""
        key = data.draw(st.sampled_from(sorted(self.last)))
        state = self.states.get(key)
        if state is not None:
            self.send(domain.replay(state, self.last[key], self.now(), "p", held=self.held))

    @rule(i=st.integers(0, TASKS - 1), outcome=st.sampled_from(["start", "succeed", "fail", "cancel"]))
    def executor_or_client(self, i, outcome):
        state = self.states.get(f"t{i}")
        if not isinstance(state, TaskState):
            return
        at = self.now()
        if outcome == "cancel" and state.status not in domain.TERMINAL_VALUES:
            self.send(domain.decide(state, CancelTask(task_id=state.task_id, producer="api"), at))
        elif state.status in domain.ACTIVE and outcome != "cancel":
            n = state.attempt
            self.send([{
                "start": TaskStarted(task_id=state.task_id, occurred_at=at, producer="x", attempt=n),
                "succeed": TaskSucceeded(task_id=state.task_id, occurred_at=at, producer="x", attempt=n),
                "fail": TaskFailed(task_id=state.task_id, occurred_at=at, producer="x", attempt=n, error="e"),
            }[outcome]])

    @rule(i=st.integers(0, TASKS - 1))
    def relay(self, i):
        waiting = self.retries.pop(f"t{i}", None)
        if waiting is not None:
            self.send([domain.requeued(waiting, self.now())])

    @invariant()
    def a_pause_reason_only_on_a_pending_task(self):
        for s in self.states.values():
            if isinstance(s, TaskState) and s.waiting_for is not None:
                assert s.status == "pending"

    def drain(self) -> None:
        """Deliver everything, firing gates' timers when nothing else is left."""
        for _ in range(10_000):
            keys = sorted(k for k, v in self.inbox.items() if v)
            if keys:
                self.step(keys[0], self.inbox[keys[0]].pop(0))
                continue
            timers = [(due, k) for k, s in self.states.items() if isinstance(s, GateState)
                      and (due := domain.timer_due(s, domain.RELAY_SLACK_S)) is not None]
            if not timers:
                return
            due, key = min(timers)
            self.clock = max(self.clock, due)
            self.send(domain.on_timer(self.states[key], self.clock, 1.0))
        raise AssertionError("never quiet")

    def teardown(self):
        self.drain()
        self.never_more_than_the_handler_rate_started_in_any_period()
        for key, events in self.log.items():
            rebuilt = domain.fold_log(events)
            live = self.states.get(key)
            if isinstance(live, TaskState):
                rebuilt = replace(rebuilt, dependents=live.dependents)
            assert rebuilt == live, key
        for t in self.TARGETS:  # resume everything: nothing stays held
            self.send(domain.decide(None, ResumeTarget(target=t, partitions=1, producer="api"), self.now()))
        self.drain()
        assert not [s for s in self.states.values() if domain.paused_hold(s)]


TestPausedPartition = PausedPartition.TestCase
TestPausedPartition.settings = settings(max_examples=300, stateful_step_count=60, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])
