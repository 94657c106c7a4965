"""``BrokerProbe``: the API's read-only questions to the broker (partitions, end offsets, queue depth,
consumer groups, cluster, heartbeats), each answer cached for ``CACHE_S`` so many pollers cannot load the
broker, and every library error turned into ``BrokerUnavailable`` here (the seam: routes never see a
``KafkaException``). The app builds one (``ApiContext.probe``).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from taskstream.schemas import PRIORITIES, BrokerUnavailable, DecodeError, Heartbeat, Settings, Topics, codec
from taskstream.schemas.kafka import admin, committed_offsets, consume_available, partition_lag, reader


log = logging.getLogger(__name__)

#: Broker answers (queue depth, cluster, heartbeats, end offsets) are reused for this long.
CACHE_S = 1.0
#: Bound on each broker request of the probe; an unreachable broker costs at most about this.
TIMEOUT_S = 1.0
#: Heartbeats read back per partition of ``<p>.heartbeats`` for the cluster view.
HEARTBEAT_TAIL = 500
#: Group requests (cached questions below) that must time out in a row before the admin client is renewed.
RENEW_AFTER_TIMEOUTS = 3
GROUP_QUESTIONS = frozenset({"queue_depth", "processor_lag", "groups"})

T = TypeVar("T")


class BrokerProbe:
    """The API's read-only questions to the broker, each answer cached for ``CACHE_S``.

    One admin client and one consumer (never subscribed, never committing:
    only watermarks and assign-and-read of the heartbeat tail). Thread-safe:
    routes call it through ``asyncio.to_thread``; one lock per question,
    so concurrent requests wait for one broker call instead of making many.
    A failure is cached too (as the exception), so a down broker costs one
    ``TIMEOUT_S`` per ``CACHE_S``, not one per request. After
    ``RENEW_AFTER_TIMEOUTS`` group requests in a row timed out, the next one
    uses a new admin client: after the broker restarted, librdkafka's admin
    client can stay stuck on group coordinator requests (every
    DescribeConsumerGroups and ListConsumerGroupOffsets times out while a new
    client answers at once).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = Topics(settings.prefix)
        self.wire = codec.WireFormat.of(settings)
        self.admin = admin(settings)
        self._consumer: Consumer | None = None
        self._consumer_lock = threading.Lock()
        self._cache: dict[str, tuple[float, Any]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._group_timeouts = 0

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
                except (KafkaException, TimeoutError) as exc:  # the seam: callers see BrokerUnavailable only
                    if key in GROUP_QUESTIONS:
                        self._group_answer(timed_out=_timed_out(exc))
                    value = BrokerUnavailable(str(exc) or "timed out")
                else:
                    if key in GROUP_QUESTIONS and key != "groups":  # groups() tells each group's outcome itself
                        self._group_answer(timed_out=False)
                hit = (time.monotonic(), value)
                self._cache[key] = hit
        if isinstance(hit[1], Exception):
            raise hit[1]
        return hit[1]

    def _group_answer(self, timed_out: bool) -> None:
        """Count group requests that timed out in a row; renew the admin client after ``RENEW_AFTER_TIMEOUTS``."""
        with self._guard:
            self._group_timeouts = self._group_timeouts + 1 if timed_out else 0
            if self._group_timeouts >= RENEW_AFTER_TIMEOUTS:
                self._group_timeouts = 0
                self.admin = admin(self.settings)  # in-flight calls keep the old client until they return
                log.info("broker probe: group requests kept timing out; using a new admin client")

    def _reader(self) -> Consumer:
        if self._consumer is None:
            self._consumer = reader(self.settings, "taskstream-api-probe",
                                    f"{self.settings.prefix}-api-probe-{uuid.uuid4().hex}",  # required, never joined
                                    {"enable.partition.eof": True})
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

    def processor_lag(self) -> dict:
        """The processor group's lag on ``<p>.events``: per partition and summed (the dashboard's figure)."""
        def ask() -> dict:
            topic, group = self.topics.events, self.topics.processor_group
            n = self.topic_partitions().get(topic, 0)
            committed = committed_offsets(self.admin, group, [TopicPartition(topic, i) for i in range(n)], TIMEOUT_S)
            per = {i: partition_lag(committed.get((topic, i)), low, high)
                   for i, (low, high) in self.end_offsets(topic, n).items()}
            return {"topic": topic, "group": group, "lag": sum(per.values()),
                    "partitions": {str(i): v for i, v in sorted(per.items())}}
        return self.cached("processor_lag", ask)

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
                except (KafkaException, TimeoutError) as exc:
                    self._group_answer(timed_out=_timed_out(exc))
                    out[name] = {"group": name, "state": "unknown", "error": str(exc) or "timed out",
                                 "members": [], "members_reported": False}
                    continue
                self._group_answer(timed_out=False)
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
                             "members_reported": True}
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
                                beat = self.wire.decode(m.value())
                            except DecodeError:
                                continue
                            if isinstance(beat, Heartbeat) and (beat.producer not in last
                                                                or beat.occurred_at > last[beat.producer]):
                                last[beat.producer] = beat.occurred_at
                finally:
                    reader.unassign()
            return last
        return self.cached("heartbeats", ask)


def _timed_out(exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError):
        return True
    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return isinstance(err, KafkaError) and err.code() == KafkaError._TIMED_OUT
