"""Component metrics without a broker: labels, reasons and the processor's figures."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from prometheus_client import REGISTRY

from taskstream.executors.metrics import ExecutorMetrics, failure_reason
from taskstream.schemas import TaskFailed, TaskState, TaskSucceeded
from taskstream.streams.metrics import ProcessorMetrics

T0 = datetime(2026, 11, 26, 1, 0, tzinfo=UTC)


def failed(error: str, permanent: bool = False) -> TaskFailed:
    return TaskFailed(task_id="t", attempt=1, producer="x", occurred_at=T0 + timedelta(seconds=2),
                      started_at=T0, error=error, permanent=permanent)


def test_failure_reasons_are_bounded() -> None:
    assert failure_reason(failed("ValueError: x"), handler_known=True) == "error"
    assert failure_reason(failed("TimeoutError: handler 'h' ran longer than 1.0s"), handler_known=True) == "timeout"
    assert failure_reason(failed("PermanentError: payload is not JSON", True), handler_known=True) == "permanent"
    assert failure_reason(failed("no handler registered for 'zz'", True), handler_known=False) == "unknown_handler"


def test_executor_counts_by_outcome_and_never_uses_the_global_registry() -> None:
    m = ExecutorMetrics()
    m.declare(["noop"])
    ok = TaskSucceeded(task_id="t", attempt=1, producer="x", occurred_at=T0 + timedelta(seconds=0.5), started_at=T0)
    m.reported(ok, "high", "noop", handler_known=True)
    m.reported(failed("TimeoutError: late"), "low", "noop", handler_known=True)
    m.cancelled("medium", "noop")
    get = m.registry.get_sample_value
    assert get("taskstream_tasks_completed_total", {"priority": "high", "handler": "noop"}) == 1
    assert get("taskstream_tasks_completed_total", {"priority": "low", "handler": "noop"}) == 0  # declared
    assert get("taskstream_tasks_failed_total", {"priority": "low", "handler": "noop", "reason": "timeout"}) == 1
    assert get("taskstream_tasks_failed_total", {"priority": "medium", "handler": "noop", "reason": "cancelled"}) == 1
    assert get("taskstream_task_duration_seconds_count", {"handler": "noop"}) == 2
    assert get("taskstream_task_duration_seconds_sum", {"handler": "noop"}) == 2.5
    assert (
        REGISTRY.get_sample_value("taskstream_tasks_completed_total", {"priority": "high", "handler": "noop"}) is None
    )
    ExecutorMetrics()  # a second one in the same process: its own registry, no duplicate-name error


def state(status: str, **kw) -> TaskState:
    return TaskState(task_id="t", handler="h", status=status, priority="medium", payload="{}", created_at=T0,
                     updated_at=T0, **kw)



def test_a_result_without_its_start_is_counted_without_a_duration() -> None:
    m = ExecutorMetrics()
    m.reported(replace(failed("ValueError: x"), started_at=None), "low", "noop", handler_known=True)
    get = m.registry.get_sample_value
    assert get("taskstream_tasks_failed_total", {"priority": "low", "handler": "noop", "reason": "error"}) == 1
    assert not get("taskstream_task_duration_seconds_count", {"handler": "noop"})

def test_dependency_wait_is_observed_once_when_a_waiting_task_is_first_queued() -> None:
    m = ProcessorMetrics()
    waiting = state("pending", depends_on=["a"])
    now = T0 + timedelta(seconds=3)
    m.state_changed(waiting, replace(waiting, status="queued", attempt=1), now)
    m.state_changed(state("pending"), state("queued", attempt=1), now)  # no dependencies
    m.state_changed(None, state("queued", attempt=1, depends_on=["a"]), now)
    m.state_changed(replace(waiting, attempt=1), replace(waiting, status="queued", attempt=2), now)  # a redrive
    get = m.registry.get_sample_value
    assert get("taskstream_dependency_wait_seconds_count") == 1
    assert get("taskstream_dependency_wait_seconds_sum") == 3.0


def test_processor_lag_sums_known_partitions() -> None:
    m = ProcessorMetrics()
    m.set_lag([10, -1001, 5, 7], [15, 40, 5, -1001])
    assert m.registry.get_sample_value("taskstream_processor_lag") == 5
