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

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from taskstream.schemas import (
    TERMINAL,
    CommandRejected,
    ReadyTask,
    Status,
    TaskCreated,
    TaskFailed,
    TaskQueued,
    TaskStarted,
    TaskState,
    TaskSucceeded,
)
from taskstream.schemas import codec
from taskstream.streams import domain
from taskstream.streams.domain import SubmitTask, decide, evolve, fold, is_ready, is_terminal, ready_message

from . import strategies

T0 = datetime(2024, 1, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
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


def queued(n: int, t: float = 1, priority: str = "high") -> TaskQueued:
    return TaskQueued(task_id=TID, occurred_at=at(t), producer="processor", attempt=n, priority=priority)


def started(n: int, t: float = 2) -> TaskStarted:
    return TaskStarted(task_id=TID, occurred_at=at(t), producer="exec-1", attempt=n)


def succeeded(n: int, t: float = 3, result: str | None = '"ok"', started_at=None) -> TaskSucceeded:
    return TaskSucceeded(task_id=TID, occurred_at=at(t), producer="exec-1", attempt=n, result=result, started_at=started_at)


def failed(n: int, t: float = 3, permanent: bool = False, error: str = "boom", started_at=None) -> TaskFailed:
    return TaskFailed(
        task_id=TID, occurred_at=at(t), producer="exec-1", attempt=n, error=error, permanent=permanent, started_at=started_at
    )


# ------------------------------------------------------------------- histories

#: How each status is reached by folding events (max_attempts is an argument).
HISTORIES = {
    "pending": lambda m: [created(max_attempts=m)],
    "scheduled": lambda m: [created(max_attempts=m, run_at=at(3600))],
    "scheduled_retry": lambda m: [created(max_attempts=m), queued(1), started(1), failed(1, t=3)],
    "queued": lambda m: [created(max_attempts=m), queued(1)],
    "running": lambda m: [created(max_attempts=m), queued(1), started(1)],
    "running_retry": lambda m: [created(max_attempts=m), queued(1), failed(1, t=2), queued(2, t=3), started(2, t=4)],
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

# Events relative to the reached state's current attempt ``a``.
EVENTS = {
    "created_dup": lambda a: created(occurred_at=T_EV, handler="other"),
    "queued_current": lambda a: queued(a, t=300),
    "queued_next": lambda a: TaskQueued(task_id=TID, occurred_at=T_EV, producer="processor", attempt=a + 1, priority="low"),
    "queued_stale": lambda a: queued(a - 1, t=300),
    "started_current": lambda a: TaskStarted(task_id=TID, occurred_at=T_EV, producer="exec-2", attempt=a),
    "started_stale": lambda a: TaskStarted(task_id=TID, occurred_at=T_EV, producer="zombie", attempt=a - 1),
    "succeeded_current": lambda a: TaskSucceeded(task_id=TID, occurred_at=T_EV, producer="exec-2", attempt=a, result="42"),
    "succeeded_stale": lambda a: TaskSucceeded(task_id=TID, occurred_at=T_EV, producer="zombie", attempt=a - 1, result="0"),
    "failed_retryable": lambda a: TaskFailed(task_id=TID, occurred_at=T_EV, producer="exec-2", attempt=a, error="E1"),
    "failed_permanent": lambda a: TaskFailed(
        task_id=TID, occurred_at=T_EV, producer="exec-2", attempt=a, error="E2", permanent=True
    ),
    "failed_last_attempt": lambda a: TaskFailed(task_id=TID, occurred_at=T_EV, producer="exec-2", attempt=a, error="E3"),
    "failed_stale": lambda a: TaskFailed(task_id=TID, occurred_at=T_EV, producer="zombie", attempt=a - 1, error="Z"),
}

# What each event does to each status; "=" means unchanged (the same object).
QUEUE = "queue"  # -> queued, attempt a+1, priority from the event
START = "start"  # -> running, started_at = event time
SUCCEED = "succeed"  # -> succeeded, result, error cleared, finished_at = event time
RETRY = "retry"  # -> scheduled, error, no finished_at
FAIL = "fail"  # -> failed, error, finished_at = event time
_ = "="

# fmt: off
TABLE = {
    #                  created q_cur q_next q_stale st_cur st_stale ok_cur   ok_stale f_retry f_perm f_last f_stale
    "pending":         (_,     _,    QUEUE, _,      _,     _,       _,       _,       _,      _,     _,     _),
    "scheduled":       (_,     _,    QUEUE, _,      _,     _,       _,       _,       _,      _,     _,     _),
    "scheduled_retry": (_,     _,    QUEUE, _,      _,     _,       _,       _,       _,      _,     _,     _),
    "queued":          (_,     _,    QUEUE, _,      START, _,       SUCCEED, _,       RETRY,  FAIL,  FAIL,  _),
    "running":         (_,     _,    QUEUE, _,      _,     _,       SUCCEED, _,       RETRY,  FAIL,  FAIL,  _),
    "running_retry":   (_,     _,    QUEUE, _,      _,     _,       SUCCEED, _,       RETRY,  FAIL,  FAIL,  _),
    "succeeded":       (_,     _,    _,     _,      _,     _,       _,       _,       _,      _,     _,     _),
    "failed":          (_,     _,    _,     _,      _,     _,       _,       _,       _,      _,     _,     _),
}
# fmt: on
CASES = [(s, e, TABLE[s][i]) for s in TABLE for i, e in enumerate(EVENTS)]


def test_table_covers_every_status_and_event():
    assert set(TABLE) == set(HISTORIES)
    assert {STATUS_OF[k] for k in TABLE} == {"pending", "scheduled", "queued", "running", "succeeded", "failed"}
    assert all(len(row) == len(EVENTS) for row in TABLE.values())
    assert {type(EVENTS[e](1)) for e in EVENTS} == {TaskCreated, TaskQueued, TaskStarted, TaskSucceeded, TaskFailed}


@pytest.mark.parametrize(("status_key", "event_key", "outcome"), CASES, ids=[f"{s}-{e}" for s, e, _o in CASES])
def test_evolve_table(status_key, event_key, outcome):
    # The last-attempt column runs against a task whose current attempt is its last.
    a = reach(status_key).attempt
    last = event_key == "failed_last_attempt"
    state = reach(status_key, max_attempts=max(a, 1)) if last and status_key != "scheduled_retry" else reach(status_key)
    if last and status_key in ("queued", "running", "running_retry"):
        assert state.attempt == state.max_attempts
    event = EVENTS[event_key](a)
    new = evolve(state, event)

    if outcome == _:
        assert new is state
        return

    assert new is not state
    common = dict(updated_at=T_EV, version=state.version + 1)
    expected = {
        QUEUE: dict(status="queued", attempt=a + 1, priority="low"),
        START: dict(status="running", started_at=T_EV),
        SUCCEED: dict(status="succeeded", result="42", error=None, finished_at=T_EV),
        RETRY: dict(status="scheduled", error="E1"),
        FAIL: dict(status="failed", error={"failed_permanent": "E2", "failed_last_attempt": "E3"}.get(event_key), finished_at=T_EV),
    }[outcome]
    assert new == replace(state, **common, **expected)
    # and the fold is idempotent right away
    assert evolve(new, event) is new


def test_events_for_an_unknown_task_are_ignored():
    for make in EVENTS.values():
        e = make(1)
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
    s = fold([created(), queued(1), failed(1), queued(2, t=4), succeeded(2, t=5)])
    assert (s.status, s.attempt, s.error, s.result, s.finished_at) == ("succeeded", 2, None, '"ok"', at(5))


def test_exhausting_every_attempt_fails_the_task():
    s = fold([created(max_attempts=2), queued(1), failed(1), queued(2, t=4), failed(2, t=5, error="last")])
    assert (s.status, s.attempt, s.error, s.finished_at) == ("failed", 2, "last", at(5))


def test_terminal_states_are_final_for_every_event():
    for key in ("succeeded", "failed"):
        s = reach(key)
        assert is_terminal(s)
        for n in range(-1, 5):
            for e in (queued(n), started(n), succeeded(n), failed(n), failed(n, permanent=True), created()):
                assert evolve(s, e) is s


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    strategies.task_state.map(lambda s: replace(s, task_id=TID)).filter(lambda s: s.status in {x.value for x in Status}),
    st.one_of(strategies.task_created, strategies.task_queued, strategies.task_started,
              strategies.task_succeeded, strategies.task_failed).map(lambda e: replace(e, task_id=TID)),
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
    history = [created(), queued(1), started(1), failed(1), queued(2, t=4), started(2, t=5), succeeded(2, t=6)]
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


def test_submit_is_deterministic_but_for_the_event_id():
    a, b = decide(None, submit(), T0)[0], decide(None, submit(), T0)[0]
    assert a.event_id != b.event_id
    assert replace(a, event_id="x") == replace(b, event_id="x")


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
    [dict(depends_on=["other"]), dict(run_at=T_EV + timedelta(microseconds=1)), dict(run_at=at(3600), depends_on=["x"])],
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
    assert decide(reach(key), created(), T_EV) == []


def test_after_retryable_failure_queues_the_next_attempt():
    for n in (1, 2):
        s = fold([created(max_attempts=3), queued(1), failed(1)] + ([queued(2), failed(2)] if n == 2 else []))
        assert (s.status, s.attempt) == ("scheduled", n)
        [q] = decide(s, failed(n), T_EV)
        assert (type(q), q.attempt, q.priority, q.occurred_at) == (TaskQueued, n + 1, "high", T_EV)
        s2 = evolve(s, q)
        assert (s2.status, s2.attempt, s2.version) == ("queued", n + 1, s.version + 1)


@pytest.mark.parametrize(
    "history,last",
    [
        ([created(max_attempts=1), queued(1), failed(1)], failed(1)),
        ([created(max_attempts=3), queued(1), failed(1, permanent=True)], failed(1, permanent=True)),
        ([created(max_attempts=2), queued(1), failed(1), queued(2), failed(2)], failed(2)),
    ],
    ids=["last_attempt_of_one", "permanent", "last_attempt_of_two"],
)
def test_after_final_failure_decides_nothing_and_task_is_failed(history, last):
    s = fold(history)
    assert s.status == "failed" and s.attempt <= s.max_attempts
    assert decide(s, last, T_EV) == []


def test_stale_failure_decides_nothing():
    s = fold([created(), queued(1), failed(1), queued(2)])
    assert decide(s, failed(1), T_EV) == []
    s = fold([created(), queued(1), failed(1), queued(2), failed(2)])  # scheduled at attempt 2
    assert decide(s, failed(1), T_EV) == []


@pytest.mark.parametrize("key", HISTORIES)
def test_events_other_than_created_and_failed_decide_nothing(key):
    s = reach(key)
    for e in (queued(s.attempt), started(s.attempt), succeeded(s.attempt), ready_message(s, T_EV)):
        assert decide(s, e, T_EV) == []
    assert decide(s, object(), T_EV) == []


def test_version_bumps_by_one_per_applied_event_and_updated_at_follows():
    history = [created(), queued(1), started(1), failed(1, t=3), queued(2, t=4), started(2, t=5), succeeded(2, t=6)]
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
    for key in ("scheduled_retry", "queued", "running", "succeeded", "failed"):
        assert not is_ready(reach(key), at(10**6))


# ------------------------------------------------------------- stateful model

RESULT_TYPES = (TaskStarted, TaskSucceeded, TaskFailed)
OUTCOMES = st.sampled_from(["start", "success", "fail", "fail", "fail", "permanent"])


class ProcessorModel(RuleBasedStateMachine):
    """One processor folding a shared log, executors running attempts, and faults.

    ``log`` is the events topic (all tasks in one partition: per-task order is
    what Kafka keeps). The processor consumes the log at ``cursor``: it folds
    the event into ``live`` and appends ``decide``'s outputs. Executors run any
    attempt that was ever queued, as often as they like (zombies, duplicates).
    A crash rewinds the cursor, so events are folded again and their outputs
    re-sent, as at-least-once processing does.
    """

    def __init__(self):
        super().__init__()
        self.log: list = []
        self.cursor = 0
        self.live: dict[str, TaskState] = {}
        self.clock = T0
        self.tasks: list[str] = []
        self.dispatched: dict[str, set[int]] = {}  # attempts ever queued per task
        self.reported: dict[str, set[int]] = {}  # attempts with a result in the log
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

    def process(self, event):
        old = self.live.get(event.task_id)
        new = evolve(old, event)
        # (b) folding the same event right after itself changes nothing
        assert evolve(new, event) is new
        if new is not old:
            self.applied += 1
            # (e) version strictly increases, by exactly one
            assert new.version == (0 if old is None else old.version) + 1
            assert new.updated_at == event.occurred_at
            # terminal states are final
            assert not is_terminal(old)
            # (c) a result of any attempt but the current one changes nothing
            if isinstance(event, RESULT_TYPES):
                assert old is not None and event.attempt == old.attempt
            self.live[event.task_id] = new
        else:
            # (c) a stale result never changes the state
            pass
        self.append(decide(new, event, self.now()))

    # -- rules
    @initialize()
    def start(self):
        pass

    @precondition(lambda self: len(self.tasks) < 4)  # few tasks, long histories
    @rule(
        max_attempts=st.integers(1, 4),
        wait=st.sampled_from(["none", "none", "past_run_at", "future_run_at", "depends_on"]),
        priority=st.sampled_from(["high", "medium", "low"]),
    )
    def submit(self, max_attempts, wait, priority):
        tid = f"t{len(self.tasks)}"
        kw = {}
        if wait == "past_run_at":
            kw["run_at"] = self.clock - timedelta(seconds=1)
        elif wait == "future_run_at":
            kw["run_at"] = self.clock + timedelta(days=1)
        elif wait == "depends_on":
            kw["depends_on"] = ["t0"]
        events = decide(None, SubmitTask(task_id=tid, handler="h", producer="api", priority=priority,
                                         max_attempts=max_attempts, **kw), self.now())
        assert len(events) == 1 and type(events[0]) is TaskCreated
        self.tasks.append(tid)
        self.append(events)

    @precondition(lambda self: self.tasks)
    @rule(data=st.data())
    def resubmit_existing(self, data):
        tid = data.draw(st.sampled_from(self.tasks))
        if tid in self.live:
            with pytest.raises(CommandRejected):
                decide(self.live[tid], SubmitTask(task_id=tid, handler="h", producer="api"), self.now())

    @precondition(lambda self: self.cursor < len(self.log))
    @rule(steps=st.integers(1, 5))
    def consume(self, steps):
        for _ in range(steps):
            if self.cursor >= len(self.log):
                break
            self.process(self.log[self.cursor])
            self.cursor += 1

    @precondition(lambda self: self.cursor > 0)
    @rule(data=st.data())
    def crash_and_rewind(self, data):
        self.cursor = data.draw(st.integers(0, self.cursor - 1))

    @precondition(lambda self: self.cursor > 0)
    @rule(data=st.data())
    def redeliver_one(self, data):
        # A single old event seen again out of order (e.g. a rebalanced consumer).
        self.process(self.log[data.draw(st.integers(0, self.cursor - 1))])

    @precondition(lambda self: self.log)
    @rule(data=st.data())
    def producer_duplicate(self, data):
        # A producer retry appends a copy of an event already in the log.
        self.append([self.log[data.draw(st.integers(0, len(self.log) - 1))]])

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
        elif outcome == "success":
            e = TaskSucceeded(**common, result='"r"', started_at=t - timedelta(microseconds=1))
        else:
            e = TaskFailed(**common, error="err", permanent=outcome == "permanent")
        if outcome != "start":
            self.reported.setdefault(tid, set()).add(n)
        self.append([e])

    # -- invariants
    @invariant()
    def attempts_never_exceed_max_and_shape_is_consistent(self):
        for s in self.live.values():
            assert 0 <= s.attempt <= s.max_attempts
            assert s.status in {st_.value for st_ in Status}
            assert (s.finished_at is not None) == (s.status in TERMINAL)
            if s.status == "succeeded":
                assert s.error is None and s.result == '"r"'
            if s.status in ("pending",):
                assert s.attempt == 0
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
        assert replayed == self.live
        # (b) re-folding the whole log on top of the final state changes nothing
        for tid, evs in by_task.items():
            assert fold(evs, self.live[tid]) is self.live[tid]

    @invariant()
    def finished_tasks_are_terminal(self):
        # (d) once the processor has caught up, a task whose queued attempts all
        # got a result sits in exactly one terminal status.
        if self.cursor != len(self.log):
            return
        for tid, attempts in self.dispatched.items():
            if attempts and attempts <= self.reported.get(tid, set()):
                s = self.live[tid]
                assert s.status in TERMINAL and s.status in ("succeeded", "failed"), (tid, s)


ProcessorModel.TestCase.settings = settings(
    max_examples=300, stateful_step_count=80, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestProcessorModel = ProcessorModel.TestCase
