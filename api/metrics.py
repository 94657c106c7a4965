"""The API's Prometheus metrics, served at ``GET /metrics`` (root, not under ``/api/v1``).

Counted by the API itself: ``taskstream_tasks_submitted_total{priority}``,
one per new task whose ``TaskCreated`` the broker acknowledged (a request
repeated with its ``Idempotency-Key`` that returns the existing task is not
counted again).

Measured from the broker when Prometheus scrapes, through the app's
``BrokerProbe`` (``ApiContext.probe``: one admin client, answers cached for a
second, so several scrapers cannot load the broker), never on a request's
path. These are figures of the whole cluster, the same from every API
replica (take ``max``, not ``sum``, across replicas):

- ``taskstream_queue_size{priority}``: records of ``<p>.ready.<priority>``
  the executor group has not committed (attempts waiting and running;
  ``/api/v1/stats`` ``queue_depth``).
- ``taskstream_workers``: members of the executor group, as
  DescribeConsumerGroups reports them; absent rather than a wrong 0 while
  the group cannot be described (``BrokerProbe.groups``).
- ``taskstream_read_model_lag``: records of ``<p>.state`` this API's read
  model has not applied yet (end offset minus its position, summed over
  partitions; a partition not read yet counts from its low watermark). This
  one is per replica.

From the read model (per replica, as of its last applied state), over every
concurrency key without a key label (keys are unbounded):
``taskstream_limit_keys`` (keys with a gate), ``taskstream_limit_holding``
(attempts holding a slot: queued or running) and ``taskstream_limit_waiting``
(tasks waiting for a slot or for their key's rate). ``GET /api/v1/limits``
has them per key.

A figure the broker did not give (unreachable, timed out) is left out of
the scrape rather than reported stale.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.responses import Response

from taskstream.schemas import PRIORITIES, BrokerUnavailable, Event, TaskCreated, Topics

from .context import ApiContext, Context

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


class _ClusterFigures(Collector):
    """The broker-measured gauges as of the last ``ApiMetrics.measure``; unknown ones are left out."""

    def __init__(self) -> None:
        self.queue: dict[str, int] | None = None
        self.workers: int | None = None
        self.read_model_lag: int | None = None
        self.gates: tuple[int, int, int] | None = None

    def describe(self) -> Iterable[Metric]:
        return []  # nothing to check at registration (and no broker call)

    def collect(self) -> Iterator[Metric]:
        if self.queue is not None:
            queue = GaugeMetricFamily("taskstream_queue_size", "ready attempts the executor group has not "
                                      "committed (waiting and running), by priority", labels=["priority"])
            for priority, n in sorted(self.queue.items()):
                queue.add_metric([priority], n)
            yield queue
        if self.workers is not None:
            yield GaugeMetricFamily("taskstream_workers", "members of the executor group", value=self.workers)
        if self.read_model_lag is not None:
            yield GaugeMetricFamily("taskstream_read_model_lag", "records of <p>.state this API's read model has "
                                    "not applied yet", value=self.read_model_lag)
        if self.gates is not None:
            keys, holding, waiting = self.gates
            yield GaugeMetricFamily("taskstream_limit_keys", "concurrency keys with a gate (a limit or a rate)",
                                    value=keys)
            yield GaugeMetricFamily("taskstream_limit_holding", "attempts holding a slot of their concurrency key "
                                    "(queued or running), over every key", value=holding)
            yield GaugeMetricFamily("taskstream_limit_waiting", "tasks waiting for their concurrency key's slot or "
                                    "rate, over every key", value=waiting)


class ApiMetrics:
    """The metrics of one API process, on their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.submitted = Counter(
            "taskstream_tasks_submitted", "new tasks written to the log (TaskCreated acknowledged), by priority",
            ["priority"], registry=self.registry,
        )
        for priority in PRIORITIES:
            self.submitted.labels(priority.value)
        self.cluster = _ClusterFigures()
        self.registry.register(self.cluster)

    def submitted_tasks(self, events: Iterable[Event]) -> None:
        """Count the new tasks among ``events`` (written and acknowledged)."""
        for event in events:
            if isinstance(event, TaskCreated):
                self.submitted.labels(event.priority).inc()

    def measure(self, ctx: ApiContext) -> None:
        """Refresh the broker-measured gauges through the app's probe (blocking: call it from a thread)."""
        p = ctx.probe
        topics = Topics(ctx.settings.prefix)
        c = self.cluster
        try:
            c.queue = p.queue_depth()
        except BrokerUnavailable as exc:
            c.queue = None
            log.debug("metrics: no queue size: %s", exc)
        try:
            group = p.groups().get(topics.executor_group) or {}
            c.workers = len(group["members"]) if group.get("members_reported") else None
        except BrokerUnavailable as exc:
            c.workers = None
            log.debug("metrics: no worker count: %s", exc)
        c.gates = ctx.read_model.store.gates.totals()
        try:
            c.read_model_lag = p.read_model_lag(ctx.read_model)
        except BrokerUnavailable as exc:
            c.read_model_lag = None
            log.debug("metrics: no read model lag: %s", exc)


@router.get("/metrics", include_in_schema=False)
async def metrics(ctx: Context) -> Response:
    """Prometheus text format of this API's registry."""
    m = ctx.metrics
    await asyncio.to_thread(m.measure, ctx)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
