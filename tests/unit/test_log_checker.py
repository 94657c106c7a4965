"""The fault tests' checker (tests/log_checker.py) over hand-made logs: each property it checks can fail."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from taskstream.schemas import ReadyTask, TaskCreated, TaskQueued, TaskStarted, TaskSucceeded
from tests.log_checker import check

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def history(tid: str) -> list:
    return [TaskCreated(task_id=tid, occurred_at=at(0), producer="api", handler="sleep", payload="{}",
                        max_attempts=1),
            TaskQueued(task_id=tid, occurred_at=at(1), producer="processor", attempt=1, priority="medium"),
            TaskStarted(task_id=tid, occurred_at=at(2), producer="executor", attempt=1),
            TaskSucceeded(task_id=tid, occurred_at=at(3), producer="executor", attempt=1)]


def ready(tid: str, attempt: int = 1) -> ReadyTask:
    return ReadyTask(task_id=tid, occurred_at=at(1), producer="processor", attempt=attempt, handler="sleep",
                     priority="medium", payload="{}")


def test_a_clean_log_has_no_problems_and_one_run_per_attempt() -> None:
    result = check(["a", "b"], history("a") + history("b"), [ready("a"), ready("b")])
    assert result.problems == []
    assert result.runs == {("a", 1): 1, ("b", 1): 1}
    assert result.final == {"a": "succeeded", "b": "succeeded"}
    assert result.succeeded_at == {"a": at(3), "b": at(3)}


def test_an_event_written_twice_is_reported() -> None:
    events = history("a")
    result = check(["a"], [*events, events[-1]], [ready("a")])
    assert len(result.problems) == 1 and "event id(s) in the log more than once" in result.problems[0]


def test_an_attempt_made_ready_twice_is_reported() -> None:
    result = check(["a"], history("a"), [ready("a"), ready("a")])
    assert len(result.problems) == 1 and "ready message(s) emitted more than once" in result.problems[0]


def test_a_lost_or_unfinished_task_is_reported() -> None:
    result = check(["a", "lost"], history("a")[:3], [ready("a")])
    assert any("no event in the log" in p and "lost" in p for p in result.problems)
    assert any("not terminal" in p and "running" in p for p in result.problems)


def test_a_handler_run_twice_is_counted_not_judged() -> None:
    first, second = history("a")[2:], history("a")[2:]  # a new event id per run
    result = check(["a"], [*history("a")[:2], *first, *second], [ready("a")])
    assert result.problems == []
    assert result.run_twice == {("a", 1): 2}


def test_a_task_not_acknowledged_need_not_finish_but_its_events_count() -> None:
    """A submission the API answered 504 may be in the log, finished or not; its events are events all the same."""
    unfinished = history("other")[:2]
    assert check(["a"], history("a") + unfinished, [ready("a")]).problems == []
    result = check(["a"], history("a") + unfinished + [replace(unfinished[0])], [ready("a")])
    assert len(result.problems) == 1 and "event id(s) in the log more than once" in result.problems[0]
