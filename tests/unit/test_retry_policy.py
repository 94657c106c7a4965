"""The retry policy as one value (issue 23): its defaults and bounds, the settings, the API, the client, the
handler's ``Retry(delay_s=...)`` and the decider's clamp of it, as tables and hypothesis properties."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskstream.api.models import RetryIn, TaskIn, retry_policy
from taskstream.client import task_body
from taskstream.client._calls import retry_json
from taskstream.executors import PermanentError, Retry, reports
from taskstream.schemas import (
    DEFAULT_RETRY,
    MAX_BACKOFF_S,
    LeaseExpired,
    ReadyTask,
    RetryPolicy,
    Settings,
    TaskCreated,
    TaskDeadLettered,
    TaskFailed,
    TaskQueued,
    TaskRetryScheduled,
    TaskStarted,
    codec,
)
from taskstream.streams import domain
from taskstream.streams.domain import backoff_delay, decide, evolve, fold

T0 = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(minutes=10)
POLICY = RetryPolicy(max_attempts=3, initial_s=0.5, multiplier=2.0, max_s=10.0, jitter=0.0)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


# ------------------------------------------------------------ the value


def test_one_home_for_the_defaults():
    assert DEFAULT_RETRY == RetryPolicy() == Settings().default_retry
    assert domain.DEFAULT_RETRY is DEFAULT_RETRY and domain.RetryPolicy is RetryPolicy
    assert (DEFAULT_RETRY.max_attempts, DEFAULT_RETRY.initial_s, DEFAULT_RETRY.multiplier, DEFAULT_RETRY.max_s,
            DEFAULT_RETRY.jitter) == (3, 1.0, 2.0, 300.0, 0.1)
    with pytest.raises(AttributeError):
        DEFAULT_RETRY.max_s = 1.0  # frozen


def test_fields_of_and_json_convert_between_the_value_and_its_flat_and_wire_shapes():
    p = RetryPolicy(max_attempts=5, initial_s=2, multiplier=3.0, max_s=60.0, jitter=0.0)
    flat = p.fields()
    assert flat == {"max_attempts": 5, "backoff_initial_s": 2.0, "backoff_multiplier": 3.0, "backoff_max_s": 60.0,
                    "backoff_jitter": 0.0}
    assert RetryPolicy.of(TaskCreated(task_id="t", occurred_at=T0, producer="api", handler="h", **flat)) == p
    assert p.json() == {"max_attempts": 5, "backoff": {"initial_s": 2, "multiplier": 3.0, "max_s": 60.0,
                                                       "jitter": 0.0}}
    # a task written before policies existed: every backoff field None -> the defaults, its own max_attempts
    old = TaskCreated(task_id="t", occurred_at=T0, producer="api", handler="h", max_attempts=2)
    assert RetryPolicy.of(old) == replace(DEFAULT_RETRY, max_attempts=2)
    assert p.but(max_s=None, jitter=0.5) == replace(p, jitter=0.5)


@pytest.mark.parametrize("changes, bad", [
    ({}, []),
    ({"max_attempts": 0}, ["max_attempts"]),
    ({"max_attempts": True}, ["max_attempts"]),
    ({"initial_s": -1.0}, ["initial_s"]),
    ({"initial_s": MAX_BACKOFF_S + 1}, ["initial_s"]),
    ({"multiplier": 0.5}, ["multiplier"]),
    ({"max_s": math.inf}, ["max_s"]),
    ({"max_s": 0.0}, []),  # no wait at all is a policy
    ({"jitter": 1.5, "multiplier": math.nan}, ["multiplier", "jitter"]),
])
def test_problems_and_check_hold_the_bounds(changes, bad):
    p = replace(DEFAULT_RETRY, **changes)
    assert [name for name, _ in p.problems()] == bad
    if bad:
        with pytest.raises(ValueError, match=bad[0]):
            p.check()
    else:
        assert p.check() is p


# ------------------------------------------------------------ the clamp of a requested delay


@pytest.mark.parametrize("requested, expected", [
    (3.0, 3.0),            # within bounds: exactly what was asked, no jitter
    (0.0, 0.0),            # at once
    (10.0, 10.0),          # the policy's max_s itself
    (60.0, 10.0),          # longer than max_s: max_s
    (-5.0, 0.0),           # negative (no executor of ours writes it): at once
    (math.inf, 10.0),
    (math.nan, None),      # not a time: the policy's own backoff
])
def test_clamp_table(requested, expected):
    assert POLICY.clamp(requested) == expected


@pytest.mark.parametrize("max_s, expected", [
    (MAX_BACKOFF_S * 10, MAX_BACKOFF_S),  # a policy of absurd numbers in the log: never past MAX_BACKOFF_S
    (math.nan, MAX_BACKOFF_S),
    (-1.0, 0.0),
])
def test_clamp_of_a_policy_read_from_the_log_never_leaves_the_range(max_s, expected):
    assert replace(POLICY, max_s=max_s).clamp(1e12) == expected


finite_or_not = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=500, deadline=None)
@given(requested=finite_or_not, max_s=finite_or_not, initial=finite_or_not, jitter=finite_or_not)
def test_clamp_is_the_request_within_zero_and_max_s(requested, max_s, initial, jitter):
    p = RetryPolicy(max_attempts=3, initial_s=initial, multiplier=2.0, max_s=max_s, jitter=jitter)
    got = p.clamp(requested)
    if math.isnan(requested):
        assert got is None
        return
    cap = min(max(0.0, max_s), MAX_BACKOFF_S) if not math.isnan(max_s) else MAX_BACKOFF_S
    assert 0.0 <= got <= cap
    if 0.0 <= requested <= cap:
        assert got == requested  # never changed when within bounds
    else:
        assert got == (0.0 if requested < 0 else cap)
    assert got == p.clamp(requested)  # deterministic


# ------------------------------------------------------------ the decider


def running(attempt: int = 1, **policy) -> object:
    """A task of POLICY (changed by ``policy``) running ``attempt``, attempts before it failed."""
    flat = {**POLICY.fields(), **policy}
    events = [TaskCreated(task_id="t1", occurred_at=T0, producer="api", handler="h", **flat)]
    for n in range(1, attempt + 1):
        events += [TaskQueued(task_id="t1", occurred_at=at(n * 10), producer="processor", attempt=n, priority="medium",
                              due_at=at(n * 10) if n > 1 else None),
                   TaskStarted(task_id="t1", occurred_at=at(n * 10 + 1), producer="exec", attempt=n)]
        if n < attempt:
            events += [TaskFailed(task_id="t1", occurred_at=at(n * 10 + 2), producer="exec", attempt=n, error="x"),
                       TaskRetryScheduled(task_id="t1", occurred_at=at(n * 10 + 2), producer="processor", attempt=n,
                                          not_before=at(n * 10 + 10), delay_s=8.0, priority="medium")]
    return fold(events)


def after_failure(state, failure):
    after = evolve(state, failure)
    return after, decide(after, failure, NOW)


def failure(attempt: int = 1, delay: float | None = None, **kw) -> TaskFailed:
    return TaskFailed(task_id="t1", occurred_at=at(attempt * 10 + 5), producer="exec", attempt=attempt,
                      error="Retry: later", retry_delay_s=delay, **kw)


@pytest.mark.parametrize("delay, waits", [
    (None, 0.5),     # no request: the policy's backoff for k = 1
    (3.0, 3.0),      # the request replaces it
    (0.0, 0.0),
    (60.0, 10.0),    # cut to max_s
    (math.nan, 0.5),
])
def test_a_requested_delay_is_the_wait_within_the_policy(delay, waits):
    after, out = after_failure(running(), failure(delay=delay))
    assert after.status == "scheduled"
    [r] = out
    assert isinstance(r, TaskRetryScheduled)
    assert r.delay_s == waits and r.not_before == at(15) + timedelta(seconds=waits)
    assert backoff_delay(after, 1, delay) == waits


def test_a_requested_delay_still_counts_the_attempt_and_never_adds_one():
    after, out = after_failure(running(attempt=3), failure(attempt=3, delay=1.0))
    assert after.status == "failed" and after.attempt == 3
    assert [type(e) for e in out] == [TaskDeadLettered]
    # a permanent failure is not retried either, whatever it asks
    after, out = after_failure(running(), failure(delay=1.0, permanent=True))
    assert after.status == "failed" and [type(e) for e in out] == [TaskDeadLettered]


def test_after_a_requested_delay_the_next_failure_goes_back_to_the_policy_curve():
    after, [r] = after_failure(running(attempt=2), failure(attempt=2))
    assert r.delay_s == 1.0  # k = 2: 0.5 * 2, as if attempt 1 had asked for nothing
    lease = LeaseExpired(task_id="t1", occurred_at=at(25), producer="processor", attempt=2, lease_s=30.0)
    after, [r] = after_failure(running(attempt=2), lease)
    assert r.delay_s == 1.0


@settings(max_examples=300, deadline=None)
@given(delay=st.floats(min_value=0, max_value=1e7), max_s=st.floats(min_value=0, max_value=1e5),
       attempt=st.integers(1, 4))
def test_the_decider_waits_the_clamped_request_or_dead_letters(delay, max_s, attempt):
    state = running(attempt=attempt, max_attempts=4, backoff_max_s=max_s)
    after, out = after_failure(state, failure(attempt=attempt, delay=delay))
    if attempt == 4:
        assert [type(e) for e in out] == [TaskDeadLettered]
        return
    [r] = out
    assert r.delay_s == min(delay, max_s) and r.not_before == min(after.updated_at, NOW) + timedelta(seconds=r.delay_s)
    again = decide(after, failure(attempt=attempt, delay=delay), NOW)  # a replay decides the same wait
    assert [(e.delay_s, e.not_before) for e in again] == [(r.delay_s, r.not_before)]


def test_the_field_travels_through_the_codec_and_old_failures_decode_without_it():
    f = failure(delay=2.5)
    assert codec.decode(codec.encode(f)).retry_delay_s == 2.5
    assert codec.decode(codec.encode(failure())).retry_delay_s is None


# ------------------------------------------------------------ settings, API, client


def test_settings_keep_their_environment_names_and_check_them_as_a_policy(monkeypatch):
    for name, value in (("DEFAULT_MAX_ATTEMPTS", "7"), ("DEFAULT_BACKOFF_INITIAL_S", "0.25"),
                        ("DEFAULT_BACKOFF_MULTIPLIER", "3"), ("DEFAULT_BACKOFF_MAX_S", "40"),
                        ("DEFAULT_BACKOFF_JITTER", "0")):
        monkeypatch.setenv(f"TASKSTREAM_{name}", value)
    assert Settings().default_retry == RetryPolicy(max_attempts=7, initial_s=0.25, multiplier=3.0, max_s=40.0,
                                                   jitter=0.0)
    monkeypatch.setenv("TASKSTREAM_DEFAULT_BACKOFF_JITTER", "1.5")
    with pytest.raises(pydantic.ValidationError, match="default_backoff_jitter"):
        Settings()
    with pytest.raises(pydantic.ValidationError, match="default_max_attempts"):
        Settings(default_max_attempts=0, default_backoff_jitter=0)


def test_the_api_fills_a_request_over_the_settings_policy():
    s = Settings(default_max_attempts=4, default_backoff_max_s=30)
    assert retry_policy(None, s) == s.default_retry
    assert retry_policy(RetryIn(backoff={"max_s": 10}), s) == replace(s.default_retry, max_s=10.0)
    c = TaskIn(handler="h", retry={"max_attempts": 2}).to_command(task_id="t", producer="api", settings=s)
    assert RetryPolicy.of(c) == replace(s.default_retry, max_attempts=2)


def test_the_client_sends_a_policy_value_as_the_same_json():
    p = RetryPolicy(max_attempts=4, max_s=20.0)
    assert retry_json(p) == p.json() == {"max_attempts": 4, "backoff": {"initial_s": 1.0, "multiplier": 2.0,
                                                                         "max_s": 20.0, "jitter": 0.1}}
    assert retry_json({"max_attempts": 2}) == {"max_attempts": 2}
    assert task_body("h", retry=p, max_attempts=9)["retry"]["max_attempts"] == 9
    with pytest.raises(TypeError, match="retry"):
        retry_json(42)


# ------------------------------------------------------------ the handler's side


def test_retry_carries_its_delay_and_refuses_what_is_not_a_wait():
    assert Retry(delay_s=2).delay_s == 2.0 and str(Retry(delay_s=2)) == "retry requested in 2 s"
    assert Retry("rate limited").delay_s is None and str(Retry("rate limited")) == "rate limited"
    for bad in (-1, math.nan, math.inf, "5", True):
        with pytest.raises(ValueError, match="delay_s"):
            Retry(delay_s=bad)
    assert not isinstance(Retry(delay_s=1), PermanentError)


def test_the_executor_reports_the_requested_delay():
    task = ReadyTask(task_id="t1", occurred_at=T0, producer="processor", attempt=2, handler="h", priority="medium",
                     payload="{}")
    f = reports.raised(task, "exec", at(1), at(2), Retry("slow down", delay_s=4.5), permanent=False, retry_delay_s=4.5)
    assert (f.retry_delay_s, f.permanent, f.error, f.attempt) == (4.5, False, "Retry: slow down", 2)
    assert reports.raised(task, "exec", at(1), at(2), ValueError("x"), permanent=False).retry_delay_s is None
