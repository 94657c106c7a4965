"""``/api/v1/stats`` and ``/api/v1/cluster``: what an operator asks of a running cluster.

Both are read-only and answer from two sources: the API's read model (task
counts, throughput, the oldest queued task; no broker call) and the broker
(queue depth, brokers, topics, consumer groups, heartbeats), asked through
one ``BrokerProbe`` per app whose answers are cached for ``CACHE_S`` so a
dashboard polling every API process cannot load the broker.

Stats
    ``tasks``: counts by status, by priority and by both, kept by the read
    model as it applies states. ``queue_depth``: per priority, the lag of
    the executor group on ``<p>.ready.<priority>`` (end offset minus
    committed offset, summed over partitions; a partition never committed
    counts from its low watermark), so it counts attempts waiting *and*
    attempts running (executors commit after the result). End offsets are
    exact on the embedded broker only because our producers write one
    record per batch there (BROKER.md). ``throughput``: tasks that reached
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

    The embedded Tansu broker answers DescribeGroups with member ids only
    (no client id, host or assignment) and librdkafka then reports no
    members at all, so there ``members`` is empty and ``members_reported``
    false; Kafka and Redpanda report them. The heartbeat view works on both.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaException, TopicPartition
from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response

from taskstream.schemas import PRIORITIES, DecodeError, Heartbeat, Settings, Status, Topics, catalogue, codec
from taskstream.schemas.kafka import admin, committed_offsets, consume_available, partition_lag, reader

from ..problems import JSONResponse, problem
from ..read_model import FINISHED_WINDOW_S

log = logging.getLogger(__name__)

#: Broker answers (queue depth, cluster, heartbeats, end offsets) are reused for this long.
CACHE_S = 1.0
#: Bound on each broker request of the probe; an unreachable broker costs at most about this.
TIMEOUT_S = 1.0
#: Heartbeats read back per partition of ``<p>.heartbeats`` for the cluster view.
HEARTBEAT_TAIL = 500

T = TypeVar("T")


class BrokerProbe:
    """The API's read-only questions to the broker, each answer cached for ``CACHE_S``.

    One admin client and one consumer (never subscribed, never committing:
    only watermarks and assign-and-read of the heartbeat tail). Thread-safe:
    routes call it through ``asyncio.to_thread``; one lock per question,
    so concurrent requests wait for one broker call instead of making many.
    A failure is cached too (as the exception), so a down broker costs one
    ``TIMEOUT_S`` per ``CACHE_S``, not one per request.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = Topics(settings.prefix)
        self.admin = admin(settings)
        self._consumer: Consumer | None = None
        self._consumer_lock = threading.Lock()
        self._cache: dict[str, tuple[float, Any]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def close(self) -> None:
        with self._consumer_lock:
            if self._consumer is not None:
                try:
                    self._consumer.close()
                except Exception as exc:  # closing a consumer of an unreachable cluster may complain
                    log.debug("broker probe: consumer close: %s", exc)
                self._consumer = None

    def cached(self, key: str, compute: Callable[[], T], ttl: float = CACHE_S) -> T:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            hit = self._cache.get(key)
            if hit is None or time.monotonic() - hit[0] > ttl:
                try:
                    value: Any = compute()
                except (KafkaException, TimeoutError) as exc:
                    value = exc
                hit = (time.monotonic(), value)
                self._cache[key] = hit
        if isinstance(hit[1], Exception):
            raise hit[1]
        return hit[1]

    def _reader(self) -> Consumer:
        if self._consumer is None:
            self._consumer = reader(self.settings, "taskstream-api-probe",
                                    f"{self.settings.prefix}-api-probe-{uuid.uuid4().hex}",  # required, never joined
                                    {"enable.partition.eof": True, "fetch.wait.max.ms": 10})
        return self._consumer

    # --------------------------------------------------------------- questions

    def topic_partitions(self) -> dict[str, int]:
        """Partition count of every topic the broker has (no error, at least one partition)."""
        def ask() -> dict[str, int]:
            topics = self.admin.list_topics(timeout=TIMEOUT_S).topics
            return {name: len(meta.partitions) for name, meta in topics.items() if meta.error is None and meta.partitions}
        return self.cached("topics", ask)

    def end_offsets(self, topic: str, partitions: int) -> dict[int, tuple[int, int]]:
        """(low, high) watermark of each partition of ``topic``, asked now (not librdkafka's cached ones)."""
        def ask() -> dict[int, tuple[int, int]]:
            with self._consumer_lock:
                reader = self._reader()
                return {p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=TIMEOUT_S, cached=False)
                        for p in range(partitions)}
        return self.cached(f"ends:{topic}", ask)

    def queue_depth(self) -> dict[str, int]:
        """Per priority: records of ``<p>.ready.<priority>`` the executor group has not committed."""
        def ask() -> dict[str, int]:
            counts = self.topic_partitions()
            tps = [TopicPartition(self.topics.ready(p), n) for p in PRIORITIES
                   for n in range(counts.get(self.topics.ready(p), 0))]
            committed = committed_offsets(self.admin, self.topics.executor_group, tps, TIMEOUT_S)
            depth = {}
            for priority in PRIORITIES:
                topic = self.topics.ready(priority)
                marks = self.end_offsets(topic, counts.get(topic, 0))
                depth[priority.value] = sum(partition_lag(committed.get((topic, p)), low, high)
                                            for p, (low, high) in marks.items())
            return depth
        return self.cached("queue_depth", ask)

    def read_model_lag(self, read_model) -> int:
        """Records of ``<p>.state`` ``read_model`` has not read yet: end offsets minus its positions, summed."""
        marks = self.end_offsets(read_model.topic, self.topic_partitions().get(read_model.topic, 0))
        positions = read_model.positions()
        return sum(partition_lag(positions.get(p), low, high) for p, (low, high) in marks.items())

    def cluster(self) -> dict:
        """Brokers and the controller, as DescribeCluster reports them."""
        def ask() -> dict:
            d = self.admin.describe_cluster(request_timeout=TIMEOUT_S).result(TIMEOUT_S)
            return {"cluster_id": d.cluster_id,
                    "controller": d.controller.id if d.controller is not None else None,
                    "brokers": sorted(({"id": n.id, "host": n.host, "port": n.port} for n in d.nodes),
                                      key=lambda b: b["id"])}
        return self.cached("cluster", ask)

    def groups(self) -> dict[str, dict]:
        """Our three consumer groups as DescribeConsumerGroups reports them."""
        def ask() -> dict[str, dict]:
            names = [self.topics.processor_group, self.topics.executor_group, self.topics.relay_group]
            out = {}
            for name, fut in self.admin.describe_consumer_groups(names, request_timeout=TIMEOUT_S).items():
                try:
                    d = fut.result(TIMEOUT_S)
                except KafkaException as exc:
                    out[name] = {"group": name, "state": "unknown", "error": str(exc), "members": [],
                                 "members_reported": False}
                    continue
                members = [{
                    "member_id": m.member_id,
                    "client_id": m.client_id,
                    "host": m.host,
                    "instance_id": m.group_instance_id,
                    "assignment": sorted(({"topic": tp.topic, "partition": tp.partition}
                                          for tp in (m.assignment.topic_partitions if m.assignment else [])),
                                         key=lambda a: (a["topic"], a["partition"])),
                } for m in d.members]
                out[name] = {"group": name, "state": d.state.name.lower(), "members": members,
                             "members_reported": bool(members) or d.state.name.lower() == "empty"}
            return out
        return self.cached("groups", ask)

    def heartbeats(self) -> dict[str, datetime]:
        """Newest ``Heartbeat.occurred_at`` per executor id in the last ``HEARTBEAT_TAIL`` records of each partition."""
        def ask() -> dict[str, datetime]:
            topic = self.topics.heartbeats
            marks = self.end_offsets(topic, self.topic_partitions().get(topic, 0))
            todo = {p: high for p, (low, high) in marks.items() if high > low}
            last: dict[str, datetime] = {}
            if not todo:
                return last
            with self._consumer_lock:
                reader = self._reader()
                reader.assign([TopicPartition(topic, p, max(marks[p][0], high - HEARTBEAT_TAIL))
                               for p, high in todo.items()])
                try:
                    deadline = time.monotonic() + TIMEOUT_S
                    while todo and time.monotonic() < deadline:
                        for m in consume_available(reader, 1000, 0.1):
                            if m.error() is not None:  # end of partition: nothing more to read there
                                if m.partition() in todo and m.offset() >= todo[m.partition()]:
                                    del todo[m.partition()]
                                continue
                            if m.offset() + 1 >= todo.get(m.partition(), 0):
                                todo.pop(m.partition(), None)
                            try:
                                beat = codec.decode(m.value())
                            except DecodeError:
                                continue
                            if isinstance(beat, Heartbeat) and (beat.producer not in last
                                                                or beat.occurred_at > last[beat.producer]):
                                last[beat.producer] = beat.occurred_at
                finally:
                    reader.unassign()
            return last
        return self.cached("heartbeats", ask)


def probe(app: FastAPI) -> BrokerProbe:
    """The app's ``BrokerProbe`` (made on first use; closed by this router's lifespan)."""
    p = getattr(app.state, "broker_probe", None)
    if p is None:
        p = app.state.broker_probe = BrokerProbe(app.state.settings)
    return p


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    try:
        yield
    finally:
        p = getattr(app.state, "broker_probe", None)
        if p is not None:
            await asyncio.to_thread(p.close)


router = APIRouter(prefix="/api/v1", tags=["operations"], lifespan=_lifespan)


def _iso(t: datetime | None) -> str | None:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z") if t is not None else None


@router.get("/stats")
async def stats(request: Request) -> Response:
    read_model = request.app.state.read_model
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
        depth: dict[str, int] | None = await asyncio.to_thread(probe(request.app).queue_depth)
    except (KafkaException, TimeoutError) as exc:
        depth = None
        errors.append(f"queue depth: broker at {request.app.state.settings.bootstrap_servers} did not answer: "
                      f"{exc or 'timed out'}")
    body = {
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
async def cluster(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    p = probe(request.app)
    topics = Topics(settings.prefix)

    def gather() -> dict:
        info = p.cluster()
        partitions = p.topic_partitions()
        groups = p.groups()
        beats = p.heartbeats()
        return {"info": info, "partitions": partitions, "groups": groups, "beats": beats}

    try:
        got = await asyncio.to_thread(gather)
    except (KafkaException, TimeoutError) as exc:
        return problem(503, "Broker unavailable", f"the broker at {settings.bootstrap_servers} did not answer: "
                       f"{exc or 'timed out'}", kind="broker-unavailable")
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
