"""``BrokerProbe``: the API's read-only questions to the broker (partitions, end offsets, queue depth,
consumer groups, cluster, heartbeats), each answer cached for ``CACHE_S`` so many pollers cannot load the
broker. Library errors reach it as ``BrokerUnavailable`` (``schemas.kafka`` and ``schemas.consumer`` map them:
routes never see a ``KafkaException``), and a failed answer is cached like any other. The app builds one
(``ApiContext.probe``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from taskstream.schemas import PRIORITIES, BrokerUnavailable, DecodeError, Heartbeat, Settings, Topics, codec
from taskstream.schemas.consumer import RangeReader
from taskstream.schemas.kafka import (
    admin,
    describe_cluster,
    describe_groups,
    group_offsets,
    partition_lag,
    timed_out,
    topic_partitions,
)

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
        self._consumer: RangeReader | None = None
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
                except BrokerUnavailable as exc:  # schemas.kafka maps the library's errors: callers see only this
                    if key in GROUP_QUESTIONS:
                        self._group_answer(timed_out=timed_out(exc))
                    value = exc
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

    def _reader(self) -> RangeReader:
        if self._consumer is None:
            self._consumer = RangeReader(self.settings, "taskstream-api-probe")
        return self._consumer

    # --------------------------------------------------------------- questions

    def topic_partitions(self) -> dict[str, int]:
        """Partition count of every topic the broker has (no error, at least one partition)."""
        return self.cached("topics", lambda: topic_partitions(self.admin, TIMEOUT_S))

    def end_offsets(self, topic: str, partitions: int) -> dict[int, tuple[int, int]]:
        """(low, high) watermark of each partition of ``topic``, asked now (not librdkafka's cached ones)."""
        def ask() -> dict[int, tuple[int, int]]:
            with self._consumer_lock:
                return self._reader().watermarks(topic, range(partitions), TIMEOUT_S)
        return self.cached(f"ends:{topic}", ask)

    def queue_depth(self) -> dict[str, int]:
        """Per priority: records of ``<p>.ready.<priority>`` the executor group has not committed."""
        def ask() -> dict[str, int]:
            counts = self.topic_partitions()
            tps = [(self.topics.ready(p), n) for p in PRIORITIES for n in range(counts.get(self.topics.ready(p), 0))]
            committed = group_offsets(self.admin, self.topics.executor_group, tps, TIMEOUT_S)
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
            committed = group_offsets(self.admin, group, [(topic, i) for i in range(n)], TIMEOUT_S)
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
        return self.cached("cluster", lambda: describe_cluster(self.admin, TIMEOUT_S))

    def groups(self) -> dict[str, dict]:
        """Our three consumer groups as DescribeConsumerGroups reports them."""
        def ask() -> dict[str, dict]:
            names = [self.topics.processor_group, self.topics.executor_group, self.topics.relay_group]
            out = {}
            for name, d in describe_groups(self.admin, names, TIMEOUT_S).items():
                if isinstance(d, BrokerUnavailable):
                    self._group_answer(timed_out=timed_out(d))
                    out[name] = {"group": name, "state": "unknown", "error": str(d) or "timed out",
                                 "members": [], "members_reported": False}
                    continue
                self._group_answer(timed_out=False)
                members = [{
                    **{k: m[k] for k in ("member_id", "client_id", "host", "instance_id")},
                    "assignment": [{"topic": t, "partition": p} for t, p in sorted(m["assignment"])],
                } for m in d["members"]]
                out[name] = {"group": name, "state": d["state"], "members": members, "members_reported": True}
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
                ranges = {p: (max(marks[p][0], high - HEARTBEAT_TAIL), high) for p, high in todo.items()}
                for batch in reader.read(topic, ranges, TIMEOUT_S):  # what is not read in time is left out
                    for m in batch:
                        try:
                            beat = self.wire.decode(m.value())
                        except DecodeError:
                            continue
                        if isinstance(beat, Heartbeat) and (beat.producer not in last
                                                            or beat.occurred_at > last[beat.producer]):
                            last[beat.producer] = beat.occurred_at
            return last
        return self.cached("heartbeats", ask)
