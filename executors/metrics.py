"""The executor's Prometheus metrics: attempts finished, by outcome, and how long handlers ran.

An attempt is counted once its result event was acknowledged by the broker
(so an attempt whose result is lost and redelivered elsewhere is counted by
the executor that reports it), or, for a cancelled attempt, once its
handler returned. Labels are bounded: ``priority`` (three levels),
``handler`` (the names this executor registered, ``unknown`` for any other)
and ``reason`` (``FAILURE_REASONS``). The queue depth and the number of
executors are group-wide figures the API computes (``api/metrics.py``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector

from taskstream.schemas import PRIORITIES, TaskFailed, TaskSucceeded

#: ``handler`` label of a task whose handler name this executor does not know.
UNKNOWN_HANDLER = "unknown"
#: ``reason`` of a failed attempt: a handler exception (retried per policy), a
#: timeout, a permanent failure (``PermanentError``, a payload that is not
#: JSON), a handler name no executor registered, or the task was cancelled
#: while the attempt ran.
FAILURE_REASONS = ("error", "timeout", "permanent", "unknown_handler", "cancelled")
#: Handler durations, 5 ms to 1 h.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def failure_reason(event: TaskFailed, handler_known: bool) -> str:
    """The bounded ``reason`` of a failed attempt's result."""
    if not handler_known:
        return "unknown_handler"
    if event.permanent:
        return "permanent"
    if event.error.startswith("TimeoutError"):
        return "timeout"
    return "error"


class ExecutorMetrics:
    """The metrics of one executor, on their own registry (``registry`` to serve)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.completed = Counter(
            "taskstream_tasks_completed", "attempts that succeeded (result acknowledged by the broker)",
            ["priority", "handler"], registry=self.registry,
        )
        self.failed = Counter(
            "taskstream_tasks_failed", "attempts that failed (result acknowledged) or were cancelled while running",
            ["priority", "handler", "reason"], registry=self.registry,
        )
        self.duration = Histogram(
            "taskstream_task_duration_seconds", "how long handlers ran, from the attempt's start to its result",
            ["handler"], buckets=DURATION_BUCKETS, registry=self.registry,
        )

    def declare(self, handlers: list[str]) -> None:
        """Show every (priority, handler) series at 0 from the start, so rate() sees the first attempt."""
        for priority in PRIORITIES:
            for name in handlers:
                self.completed.labels(priority.value, name)

    def reported(self, result: TaskSucceeded | TaskFailed, priority: str, handler: str, handler_known: bool) -> None:
        """Count an attempt whose result the broker acknowledged (its duration only when it says when it started)."""
        if result.started_at is not None:
            self.duration.labels(handler).observe(max(0.0, (result.occurred_at - result.started_at).total_seconds()))
        if isinstance(result, TaskSucceeded):
            self.completed.labels(priority, handler).inc()
        else:
            self.failed.labels(priority, handler, failure_reason(result, handler_known)).inc()

    def cancelled(self, priority: str, handler: str) -> None:
        """Count an attempt given up because its task was cancelled (nothing is reported to the log)."""
        self.failed.labels(priority, handler, "cancelled").inc()
