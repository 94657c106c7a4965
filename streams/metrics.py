"""The processor's Prometheus metrics: how far it is behind ``<p>.events`` and how long tasks wait for dependencies.

``taskstream_processor_lag`` is the number of records of ``<p>.events`` in
this processor's partitions it has not consumed yet: per partition the high
watermark last seen in a fetch response minus the consumer's position,
summed. Both are local to the client (no broker round trip), refreshed by
the processor's loop at most once a ``LAG_INTERVAL_S``.
``taskstream_dependency_wait_seconds`` observes, when a task with
dependencies is queued for its first attempt, the time since it was
created. No label: the figures are per processor process.
"""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from taskstream.schemas import TaskState

from . import domain

#: How often the loop refreshes the lag gauge.
LAG_INTERVAL_S = 1.0
#: Dependency waits, 10 ms to 1 day.
WAIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400)


class ProcessorMetrics:
    """The metrics of one processor, on their own registry (``registry`` to serve)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.lag = Gauge(
            "taskstream_processor_lag", "records of <p>.events in this processor's partitions not consumed yet",
            registry=self.registry,
        )
        self.dependency_wait = Histogram(
            "taskstream_dependency_wait_seconds", "time from a task's creation to its first queueing, for tasks "
            "with dependencies", buckets=WAIT_BUCKETS, registry=self.registry,
        )
        self.folded = Counter(
            "taskstream_processor_events_folded", "records of <p>.events this processor folded", registry=self.registry
        )

    def state_changed(self, before: TaskState | None, after: TaskState, now: datetime) -> None:
        """Observe the dependency wait when a task that waited for dependencies is first queued."""
        if domain.first_queued_after_wait(before, after):
            self.dependency_wait.observe(max(0.0, (now - after.created_at).total_seconds()))

    def set_lag(self, positions: list[int], highs: list[int]) -> None:
        """Sum of ``high - position`` over partitions where both are known (>= 0)."""
        self.lag.set(sum(max(0, h - p) for p, h in zip(positions, highs, strict=True) if p >= 0 and h >= 0))
