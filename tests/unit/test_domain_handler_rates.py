"""A handler's rate (``PUT /limits/handlers/{h}`` with ``rate`` and ``per_s``) in the pure decider: tables.

Contract under test: ``LimitTarget`` with a rate decides one ``ControlLimited``
per partition carrying ``rate`` and ``per_s`` (bad values refused naming the
field); a task of the handler without a concurrency key of its own is held
with a ``TaskHeld`` that carries the rate, whose fold gives it the key
``handler:<name>`` with that rate, so the handler's gate admits at most
``rate`` of its starts in any ``per_s`` (decision 0026's sliding window); the
rest wait ``pending`` with ``waiting_for: "concurrency:handler:<name>"``,
never failed. A crash between the state's write and the sends of the step
that first held a task into its handler's gate is repaired with that
``TaskHeld`` again (a ``TaskQueued`` would queue the task in a fold of the
log). The property (rebuild equals live, never more than the rate per
window, with pauses, limits, crashes before and after the sends, late
timers) is the machine of ``test_domain_pause.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from taskstream.schemas import (
    ControlLimited,
    ControlState,
    GateState,
    SlotRequested,
    TaskCreated,
    TaskFailed,
    TaskHeld,
    TaskRetryScheduled,
    TaskStarted,
    ValidationError,
    codec,
)
from taskstream.streams import domain
from taskstream.streams.domain import HandlerLimit, LimitTarget

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
GATE = "concurrency:handler:h"


def _limit(**kw) -> list:
    return domain.decide(None, LimitTarget(target="handler:h", partitions=2, producer="api", **kw), T0)


def _created(task_id: str, handler: str = "h", **kw) -> TaskCreated:
    return TaskCreated(task_id=task_id, occurred_at=T0, producer="api", handler=handler, **kw)


@pytest.mark.parametrize(("asked", "shown"), [
    (dict(limit=None, rate=5, per_s=1), HandlerLimit(None, 5, 1.0)),
    (dict(limit=2, rate=5, per_s=0.5), HandlerLimit(2, 5, 0.5)),
    (dict(limit=3), HandlerLimit(3, None, None)),
    (dict(limit=None), None),
])
def test_a_handler_limit_carries_its_rate_in_every_copy(asked, shown):
    events = _limit(**asked)
    assert [(type(e), e.partition) for e in events] == [(ControlLimited, 0), (ControlLimited, 1)]
    state = domain.evolve(None, events[0])
    assert (HandlerLimit.of(state) if state is not None else None) == shown
    for e in events:
        assert codec.decode(codec.encode(e)) == e


@pytest.mark.parametrize(("bad", "field"), [
    (dict(limit=None, rate=5), "per_s"),
    (dict(limit=None, per_s=1.0), "rate"),
    (dict(limit=None, rate=0, per_s=1.0), "rate"),
    (dict(limit=None, rate=5, per_s=0.0), "per_s"),
    (dict(limit=None, rate=5, per_s=1e9), "per_s"),
    (dict(limit=0, rate=5, per_s=1.0), "limit"),
])
def test_a_bad_handler_rate_is_refused_naming_the_field(bad, field):
    with pytest.raises(ValidationError) as refused:
        _limit(**bad)
    assert refused.value.field == field


def test_changing_only_the_rate_changes_the_copy_and_the_same_again_does_not():
    (first,) = domain.decide(None, LimitTarget(target="handler:h", partitions=1, producer="api", limit=2), T0)
    (rated,) = domain.decide(None, LimitTarget(target="handler:h", partitions=1, producer="api", limit=2, rate=5,
                                               per_s=1.0), T0)
    c = domain.evolve(None, first)
    assert isinstance(c, ControlState)
    r = domain.evolve(c, rated)
    assert (r.limit, r.rate, r.per_s, r.version) == (2, 5, 1.0, c.version + 1)
    assert domain.evolve(r, rated) is r


def test_a_task_of_a_rated_handler_is_held_with_the_rate_and_asks_the_handlers_gate():
    rated = {"handler:h": HandlerLimit(None, 5, 1.0)}.get
    created = _created("t1")
    state, follow = domain.step(None, created, T0, "p", limits=rated)
    assert (state.status, state.waiting_for, state.concurrency_key) == ("pending", GATE, "handler:h")
    assert (state.concurrency_limit, state.concurrency_rate, state.concurrency_per_s) == (None, 5, 1.0)
    held, asked = follow
    assert isinstance(held, TaskHeld) and (held.concurrency_rate, held.concurrency_per_s) == (5, 1.0)
    assert isinstance(asked, SlotRequested)
    assert (asked.gate_id, asked.limit, asked.rate, asked.per_s) == (GATE, 0, 5, 1.0)
    assert domain.fold_log([created, held]) == state  # the log alone holds it: no control asked
    assert codec.decode(codec.encode(held)) == held


def test_a_task_of_a_handler_with_a_limit_and_a_rate_asks_with_both():
    state, follow = domain.step(None, _created("t1"), T0, "p", limits={"handler:h": HandlerLimit(2, 5, 1.0)}.get)
    assert (state.concurrency_limit, state.concurrency_rate) == (2, 5)
    assert [(e.limit, e.rate, e.per_s) for e in follow if isinstance(e, SlotRequested)] == [(2, 5, 1.0)]


def test_a_task_with_a_key_of_its_own_keeps_its_own_rate():
    own = _created("t1", concurrency_key="k", concurrency_rate=1, concurrency_per_s=10.0)
    state, _ = domain.step(None, own, T0, "p", limits={"handler:h": HandlerLimit(None, 5, 1.0)}.get)
    assert (state.waiting_for, state.concurrency_rate, state.concurrency_per_s) == ("concurrency:k", 1, 10.0)


def test_the_handlers_gate_starts_at_most_the_rate_per_period_and_the_rest_wait_pending():
    """Six tasks of a handler at 5/s: five start at once, the sixth waits for the gate's timer, pending."""
    rated = {"handler:h": HandlerLimit(None, 5, 1.0)}.get
    tasks, requests = {}, []
    for i in range(6):
        tasks[f"t{i}"], follow = domain.step(None, _created(f"t{i}"), T0, "p", limits=rated)
        requests += [e for e in follow if isinstance(e, SlotRequested)]
    gate = None
    grants = []
    for r in requests:
        gate, follow = domain.step(gate, r, T0, "p")
        grants += follow
    assert isinstance(gate, GateState)
    assert sorted(g.task_id for g in grants) == ["t0", "t1", "t2", "t3", "t4"]
    assert gate.waiting == ["t5"] and tasks["t5"].status == "pending" and tasks["t5"].waiting_for == GATE
    assert domain.timer_due(gate, 5.0) == T0 + timedelta(seconds=1, milliseconds=1)
    (woken,) = domain.on_timer(gate, T0 + timedelta(seconds=1, milliseconds=1), 1.0)
    gate, (granted,) = domain.step(gate, woken, woken.occurred_at, "p")
    queued, _ = domain.step(tasks["t5"], granted, woken.occurred_at, "p", limits=rated)
    assert queued.status == "queued" and queued.attempt == 1


def test_a_control_state_of_set_8_has_no_rate():
    c = ControlState(control_id="control:0:handler:h", target="handler:h", partition=0, created_at=T0,
                     updated_at=T0, limit=3)
    assert HandlerLimit.of(c) == HandlerLimit(3, None, None)
    assert codec.decode(codec.encode(c)) == c


# ------------------------------------------------------------------ a crash right after the first hold


@pytest.mark.parametrize("limit", [HandlerLimit(2), HandlerLimit(None, 5, 1.0)], ids=["limit", "rate"])
@pytest.mark.parametrize("own_key", [None, "handler:h"], ids=["handler's key", "own key of the same name"])
def test_a_crash_before_the_sends_of_the_first_hold_replays_the_hold(limit, own_key):
    """The state was written (held into the handler's gate), the sends were lost: the event read again sends
    what the state implies, and a fold of the log then equals the live state (``state rebuild --verify``)."""
    own = dict(concurrency_key=own_key, concurrency_limit=2) if own_key else {}
    created = _created("t1", **own)
    live, _ = domain.step(None, created, T0, "p", limits={"handler:h": limit}.get)
    assert live.waiting_for == GATE
    again = domain.replay(live, created, T0 + timedelta(seconds=1), "p")
    assert [type(e).__name__ for e in again] == ["TaskHeld", "SlotRequested"]
    rebuilt = domain.fold_log([created, *[e for e in again if e.aggregate_id == "t1"]])
    assert rebuilt == live
    # and sent once more (a second crash), or after the first sends did land: nothing changes
    assert domain.fold_log([created, *again[:1], *again[:1]]) == live


def test_a_crash_after_a_relayed_attempt_was_held_into_the_handlers_gate_replays_the_hold():
    """A retry's TaskQueued (the relay's, in the log) admitted a task whose handler got a limit since: the step
    took the attempt back with a TaskHeld; lost, the replay sends it again, and the fold of the log agrees."""
    limits = {"handler:h": HandlerLimit(1)}.get
    created = _created("t1", max_attempts=3)
    state, follow = domain.step(None, created, T0, "p")  # no limit yet: queued
    log = [created, *[e for e in follow if e.aggregate_id == "t1"]]
    for e in (TaskStarted(task_id="t1", occurred_at=T0, producer="x", attempt=1),
              TaskFailed(task_id="t1", occurred_at=T0, producer="x", attempt=1, error="e")):
        state, follow = domain.step(state, e, T0, "p")
        log += [e, *[f for f in follow if f.aggregate_id == "t1"]]
    (waiting,) = [e for e in log if isinstance(e, TaskRetryScheduled)]
    relayed = domain.requeued(waiting, T0 + timedelta(seconds=5))
    live, _ = domain.step(state, relayed, relayed.occurred_at, "p", limits=limits)
    assert (live.status, live.waiting_for, live.concurrency_key) == ("pending", GATE, "handler:h")
    again = domain.replay(live, relayed, relayed.occurred_at, "p")
    assert domain.fold_log([*log, relayed, *[e for e in again if e.aggregate_id == "t1"]]) == live
