"""A task's state keeps why its last attempt failed: ``error_type`` and ``traceback`` travel with ``error``.

The rule (streams/domain/evolve.py, ``_bump``): a TaskFailed sets all three;
any other change of ``error`` (a success, a lease expiry, a failed
dependency, a cancel) clears the type and traceback, so they always describe
the error shown beside them. What the log holds is bounded by the fold too.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from taskstream.schemas import (
    LeaseExpired,
    TaskCancelled,
    TaskCreated,
    TaskFailed,
    TaskQueued,
    TaskRedriven,
    TaskStarted,
    TaskState,
    TaskSucceeded,
    codec,
)
from taskstream.schemas.limits import MAX_ERROR_TYPE_CHARS, MAX_TRACEBACK_CHARS
from taskstream.streams import domain

T0 = datetime(2024, 1, 1, 12, tzinfo=UTC)
TID = "t-why"
TB = 'Traceback (most recent call last):\n  File "h.py", line 3, in load\n    int(x)\nValueError: bad'


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def created(max_attempts: int = 2) -> TaskCreated:
    return TaskCreated(task_id=TID, occurred_at=T0, producer="api", handler="h", priority="low", payload="null",
                       max_attempts=max_attempts)


def queued(n: int, t: float) -> TaskQueued:
    return TaskQueued(task_id=TID, occurred_at=at(t), producer="processor", attempt=n, priority="low")


def failed(n: int, t: float, **why) -> TaskFailed:
    return TaskFailed(task_id=TID, occurred_at=at(t), producer="ex", attempt=n, error="ValueError: bad", **why)


def fold(*events) -> TaskState:
    state = domain.fold(list(events))
    assert isinstance(state, TaskState)
    return state


def test_a_failure_keeps_its_type_and_traceback_in_the_state_and_both_encodings():
    for history in ([created(1), queued(1, 1), failed(1, 2, error_type="ValueError", traceback=TB)],
                    [created(2), queued(1, 1), failed(1, 2, error_type="ValueError", traceback=TB)]):
        state = fold(*history)
        assert state.status in ("failed", "scheduled")
        assert (state.error, state.error_type, state.traceback) == ("ValueError: bad", "ValueError", TB)
        assert codec.decode(codec.encode(state)) == state
        assert codec.decode(codec.encode(history[-1])) == history[-1]


def test_a_failure_without_them_an_old_log_s_folds_as_before():
    state = fold(created(1), queued(1, 1), failed(1, 2))
    assert (state.status, state.error, state.error_type, state.traceback) == ("failed", "ValueError: bad", None, None)


def test_each_failure_replaces_the_last_and_other_errors_clear_them():
    first = [created(3), queued(1, 1), failed(1, 2, error_type="ValueError", traceback=TB)]
    # the next attempt's failure without a traceback (a timeout): nothing of the first one stays
    assert fold(*first, queued(2, 3), failed(2, 4)).traceback is None
    # a lease expiry, a success, a cancel: their error is not an exception's
    lease = fold(*first, queued(2, 3), TaskStarted(task_id=TID, occurred_at=at(4), producer="ex", attempt=2),
                 LeaseExpired(task_id=TID, occurred_at=at(5), producer="p", attempt=2,
                              lease_s=30.0))
    assert lease.error.startswith("LeaseExpired") and (lease.error_type, lease.traceback) == (None, None)
    ok = fold(*first, queued(2, 3), TaskSucceeded(task_id=TID, occurred_at=at(4), producer="ex", attempt=2))
    assert (ok.error, ok.error_type, ok.traceback) == (None, None, None)
    gone = fold(*first, TaskCancelled(task_id=TID, occurred_at=at(3), producer="api"))
    assert gone.error == "cancelled" and (gone.error_type, gone.traceback) == (None, None)


def test_a_redrive_keeps_the_failure_it_redrives_until_the_next_outcome():
    history = [created(1), queued(1, 1), failed(1, 2, error_type="ValueError", traceback=TB),
               TaskRedriven(task_id=TID, occurred_at=at(10), producer="api")]
    state, _ = domain.step(fold(*history[:-1]), history[-1], at(10), "processor")
    assert isinstance(state, TaskState) and state.status in ("scheduled", "queued")
    assert (state.error_type, state.traceback) == ("ValueError", TB)


def test_what_the_log_holds_is_bounded_by_the_fold():
    huge = failed(1, 2, error_type="x" * 10_000, traceback="frame\n" * 10_000)
    state = fold(created(1), queued(1, 1), huge)
    assert state.error_type is not None and len(state.error_type) <= MAX_ERROR_TYPE_CHARS
    assert state.traceback is not None and len(state.traceback) <= MAX_TRACEBACK_CHARS
    assert state.traceback.endswith("frame\n") and state.traceback.startswith("[cut: ")  # the innermost end is kept
