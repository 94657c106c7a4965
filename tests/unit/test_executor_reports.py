"""The events an executor reports and which failures it calls permanent (the table in executors/reports.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from taskstream.executors import reports
from taskstream.schemas import ReadyTask, RecordRefused, TaskFailed, TaskSucceeded
from taskstream.schemas.limits import MAX_ERROR_CHARS, MAX_RESULT_BYTES

T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)
T1 = datetime(2024, 5, 1, 12, 0, 1, tzinfo=UTC)
TASK = ReadyTask(task_id="t", occurred_at=T0, producer="proc", attempt=3, handler="h", payload="null", priority="low")
COMMON = (TASK, "ex-1", T0)


@pytest.mark.parametrize("report, permanent", [
    (lambda: reports.no_handler(*COMMON, T1), True),
    (lambda: reports.bad_payload(*COMMON, T1, ValueError("x")), True),
    (lambda: reports.raised(*COMMON, T1, RuntimeError("boom"), permanent=True), True),
    (lambda: reports.succeeded(*COMMON, T1, '"' + "x" * MAX_RESULT_BYTES + '"'), True),
    (lambda: reports.refused(TaskSucceeded(task_id="t", attempt=3, producer="ex-1", occurred_at=T1, started_at=T0,
                                           result="1"), "ex-1", T1, RecordRefused("too large")), True),
    (lambda: reports.raised(*COMMON, T1, RuntimeError("boom"), permanent=False), False),
    (lambda: reports.timed_out(*COMMON, T1, 2.5), False),
    (lambda: reports.unserialisable(*COMMON, T1, object(), TypeError("no")), False),
])
def test_each_failure_is_permanent_exactly_as_the_table_says(report, permanent: bool) -> None:
    event = report()
    assert isinstance(event, TaskFailed)
    assert (event.permanent, event.task_id, event.attempt, event.producer) == (permanent, "t", 3, "ex-1")
    assert event.started_at == T0 and event.occurred_at == T1 and event.error


def test_a_result_within_the_limit_succeeds_and_reports_carry_the_attempt() -> None:
    ok = reports.succeeded(*COMMON, T1, '{"n": 1}')
    assert isinstance(ok, TaskSucceeded) and ok.result == '{"n": 1}' and ok.started_at == T0
    assert reports.started(TASK, "ex-1", T0).occurred_at == T0
    assert reports.heartbeat(TASK, "ex-1", T1).attempt == 3
    assert reports.checkpointed(TASK, "ex-1", T1, '{"i": 7}').data == '{"i": 7}'


def test_error_text_names_the_type_and_is_cut() -> None:
    assert reports.error_text(ValueError("bad")) == "ValueError: bad"
    assert reports.error_text(KeyError()) == "KeyError"
    assert len(reports.error_text(RuntimeError("x" * 100_000))) <= MAX_ERROR_CHARS + 200

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError

    assert reports.error_text(Unprintable()) == "Unprintable: <unprintable>"
