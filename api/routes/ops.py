"""``/api/v1/stats`` and ``/api/v1/cluster``: what an operator asks of a running cluster.

Both are read-only and answer from two sources: the API's read model (task
counts, throughput, the oldest queued task; no broker call) and the broker
(queue depth, brokers, topics, consumer groups, heartbeats), asked through
the app's one ``BrokerProbe`` (``ApiContext.probe``), whose answers are
cached for ``CACHE_S`` so a dashboard polling every API process cannot load
the broker.

Stats
    ``tasks``: counts by status, by priority and by both, kept by the read
    model as it applies states. ``queue_depth``: per priority, the lag of
    the executor group on ``<p>.ready.<priority>`` (end offset minus
    committed offset, summed over partitions; a partition never committed
    counts from its low watermark), so it counts attempts waiting *and*
    attempts running (executors commit after the result). End offsets are
    the broker's high watermarks. ``throughput``: tasks that reached
    a terminal status in the last 60 s (by their ``finished_at``).
    ``oldest_queued``: the task queued longest and for how long. If the
    broker does not answer, ``queue_depth`` is null and ``errors`` says why;
    the rest still answers.

Cluster
    ``brokers`` (id, host, port) and ``controller`` from DescribeCluster;
    ``topics``: every topic of the catalogue with its partition count (null
    when missing); ``groups``: the processor, executor and retry-relay
    groups as DescribeConsumerGroups reports them (state, members with
    client id, host and assigned partitions). ``heartbeats``: the last
    ``Heartbeat`` per executor id read from the tail (``HEARTBEAT_TAIL``
    records per partition) of ``<p>.heartbeats``; an executor member's
    ``last_heartbeat`` is looked up there by its client id (the executor id,
    which is also the heartbeat's ``producer``). Kafka does not expose the
    time of a member's group heartbeat, so "last heartbeat" means the task
    heartbeat: executors send one only for attempts running longer than
    ``started_event_after_s``, so an executor that runs only short tasks has
    none (null) while being a healthy member.

    ``members_reported`` is false (and ``members`` empty) only for a group
    the broker did not describe (it did not answer, or refused).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from taskstream.schemas import PRIORITIES, BrokerUnavailable, Status, Topics, catalogue

from ..context import Context
from ..problems import JSONResponse, problem
from ..read_model import FINISHED_WINDOW_S

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["operations"])


def _iso(t: datetime | None) -> str | None:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z") if t is not None else None


@router.get("/stats")
async def stats(ctx: Context) -> Response:
    read_model = ctx.read_model
    store = read_model.store
    now = datetime.now(UTC)
    counts = store.counts()
    by_status = {s.value: 0 for s in Status}
    by_priority = {p.value: 0 for p in PRIORITIES}
    both: dict[str, dict[str, int]] = {s.value: {p.value: 0 for p in PRIORITIES} for s in Status}
    for (status, priority), n in counts.items():
        by_status[status] = by_status.get(status, 0) + n
        by_priority[priority] = by_priority.get(priority, 0) + n
        both.setdefault(status, {}).setdefault(priority, 0)
        both[status][priority] += n
    finished = store.finished_recently(now)
    oldest = store.oldest_queued()
    errors = []
    try:
        depth: dict[str, int] | None = await asyncio.to_thread(ctx.probe.queue_depth)
    except BrokerUnavailable as exc:
        depth = None
        errors.append(f"queue depth: broker at {ctx.settings.bootstrap_servers} did not answer: {exc}")
    body: dict[str, Any] = {
        "as_of": _iso(now),
        "tasks": {"total": sum(counts.values()), "by_status": by_status, "by_priority": by_priority,
                  "by_status_and_priority": both},
        "queue_depth": depth,
        "throughput": {"window_s": FINISHED_WINDOW_S, "finished": sum(finished.values()),
                       "per_second": round(sum(finished.values()) / FINISHED_WINDOW_S, 3),
                       "by_status": dict(sorted(finished.items()))},
        "oldest_queued": None if oldest is None else {
            "task_id": oldest.task_id, "priority": oldest.priority, "queued_since": _iso(oldest.updated_at),
            "age_s": round(max(0.0, (now - oldest.updated_at).total_seconds()), 3)},
        "read_model": {"caught_up": read_model.caught_up},
    }
    if errors:
        body["errors"] = errors
    return JSONResponse(body)


@router.get("/cluster")
async def cluster(ctx: Context) -> Response:
    settings = ctx.settings
    p = ctx.probe
    topics = Topics(settings.prefix)

    def gather() -> dict:
        info = p.cluster()
        partitions = p.topic_partitions()
        groups = p.groups()
        beats = p.heartbeats()
        return {"info": info, "partitions": partitions, "groups": groups, "beats": beats}

    try:
        got = await asyncio.to_thread(gather)
    except BrokerUnavailable as exc:
        return problem(503, "Broker unavailable", f"the broker at {settings.bootstrap_servers} did not answer: {exc}",
                       kind="broker-unavailable")
    beats: dict[str, datetime] = got["beats"]
    roles = (("processor", topics.processor_group), ("executors", topics.executor_group),
             ("retry_relay", topics.relay_group))
    groups = []
    for role, name in roles:
        g = dict(got["groups"].get(name) or {"group": name, "state": "unknown", "members": [],
                                             "members_reported": False})
        if role == "executors":
            g["members"] = [{**m, "last_heartbeat": _iso(beats.get(m["client_id"]))} for m in g["members"]]
        groups.append({"role": role, **g})
    body = {
        **got["info"],
        "topics": [{"name": t.name, "partitions": got["partitions"].get(t.name), "expected_partitions": t.partitions}
                   for t in catalogue(settings)],
        "groups": groups,
        "heartbeats": [{"executor": ex, "last_heartbeat": _iso(at)}
                       for ex, at in sorted(beats.items(), key=lambda kv: kv[1], reverse=True)],
    }
    return JSONResponse(body)
