"""Looking at our topics from outside a consumer group: the Kafka seam of the short-lived readers.

The CLI's log commands (``events``, ``topics``, ``lag``, ``dlq``), ``state
rebuild`` and the API's history reads never join a group: they ``assign()``
partitions of a ``kafka.reader``, read between offsets they chose and leave
no trace on the broker. This module is everything they ask of the broker:
partition counts, (low, high) watermarks, offsets by time, a group's
committed offsets, and the records of a range of partitions. Callers name
partitions by number and offsets by int, never by the library's types, and
every library error reaches them as ``BrokerUnavailable`` (``broker_errors``),
saying what was asked and the broker's reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from .errors import BrokerUnavailable
from .kafka import broker_errors, committed_offsets, consume_available, end_offsets, read_to_ends, reason, watermarks

__all__ = [
    "BEGINNING", "assign", "at_partition_end", "broker_count", "broker_errors", "consume_available", "end_offsets",
    "group_offsets", "offsets_at", "read_range", "read_to_ends", "reason", "topic_partitions", "watermarks",
]

#: The start offset that means "the oldest record the partition still holds" (for ``assign``).
BEGINNING = OFFSET_BEGINNING


# ------------------------------------------------------------------ metadata


def topic_partitions(client, timeout: float, *, healthy: bool = False) -> dict[str, int]:
    """The partition count of every topic the cluster reports, by name, from one metadata request.

    ``client`` is any client of ours (admin or consumer). With ``healthy``, a
    topic the broker reports an error for, or without partitions, is left out.
    ``BrokerUnavailable`` (the broker's reason as its message) when no answer
    came within ``timeout`` seconds.
    """
    try:
        topics = client.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise BrokerUnavailable(reason(exc)) from None
    return {name: len(meta.partitions) for name, meta in topics.items()
            if not healthy or (meta.error is None and meta.partitions)}


def broker_count(client, timeout: float) -> int:
    """How many brokers the cluster's metadata names; ``BrokerUnavailable`` when none answered within ``timeout``."""
    try:
        return len(client.list_topics(timeout=timeout).brokers)
    except KafkaException as exc:
        raise BrokerUnavailable(reason(exc)) from None


def group_offsets(client, group: str, partitions: Mapping[str, int], timeout: float) -> dict[tuple[str, int], int]:
    """The offsets ``group`` committed on every partition of the topics of ``partitions`` (name -> partition
    count), keyed (topic, partition); a partition never committed is left out. ``client`` is an admin client
    (kept referenced until this returns). ``BrokerUnavailable`` when the broker does not answer in time."""
    tps = [TopicPartition(topic, p) for topic, n in partitions.items() for p in range(n)]
    try:
        return committed_offsets(client, group, tps, timeout)
    except (KafkaException, TimeoutError) as exc:
        raise BrokerUnavailable(f"committed offsets of group {group}: {reason(exc)}") from None


def offsets_at(consumer, topic: str, marks: Mapping[int, tuple[int, int]], at: datetime,
               timeout: float) -> dict[int, int]:
    """Per partition of ``marks`` ((low, high) by partition), the first offset whose record timestamp is >= ``at``
    (ListOffsets by time).

    A starting point: timestamps are the producers' clocks, not ordered
    within a partition, so readers also skip records older than ``at``
    themselves. No record that late: the partition's high watermark.
    """
    at_ms = int(at.timestamp() * 1000)
    with broker_errors(f"offsets by time of {topic}"):
        found = consumer.offsets_for_times([TopicPartition(topic, p, at_ms) for p in marks], timeout=timeout)
    out = {}
    for tp in found:
        low, high = marks[tp.partition]
        out[tp.partition] = high if tp.offset < 0 or tp.error is not None else min(max(tp.offset, low), high)
    return out


# ------------------------------------------------------------------ reading


def assign(consumer, topic: str, starts: Mapping[int, int]) -> None:
    """Assign ``consumer`` the partitions of ``starts``, each to be read from its offset there (``BEGINNING``:
    the oldest record held)."""
    with broker_errors(f"assigning {topic}"):
        consumer.assign([TopicPartition(topic, p, offset) for p, offset in starts.items()])


def at_partition_end(message) -> bool:
    """Whether ``message`` is the end-of-partition marker of a consumer with ``enable.partition.eof`` (its
    ``offset()`` is then the partition's end), not a record nor another error."""
    err = message.error()
    return err is not None and err.code() == KafkaError._PARTITION_EOF


def read_range(consumer, topic: str, starts: Mapping[int, int], ends: Mapping[int, int], *,
               idle_timeout: float = 30.0, keep_assigned: bool = False,
               after_end: Callable | None = None) -> Iterator:
    """Every message of ``topic`` with ``starts[p] <= offset < ends[p]``, per partition in order.

    A partition is done when the consumer's position reaches its end (so a
    gap in offsets cannot hold the read up). ``BrokerUnavailable`` when no
    partition moves for ``idle_timeout`` seconds or the broker fails a
    request. With ``keep_assigned`` every partition stays assigned for
    following afterwards; messages past an end that arrive meanwhile go to
    ``after_end``.
    """
    todo = {p for p in starts if starts[p] < ends[p]}
    assigned = list(starts) if keep_assigned else sorted(todo)
    with broker_errors(f"reading {topic}"):
        consumer.assign([TopicPartition(topic, p, starts[p]) for p in assigned])
        last_progress = time.monotonic()
        while todo:
            batch = consume_available(consumer, 5000, 0.2)
            for m in batch:
                if m.error() is not None:
                    continue
                p, offset = m.partition(), m.offset()
                if offset >= ends.get(p, 0):
                    if after_end is not None:
                        after_end(m)
                    continue
                if offset >= starts.get(p, 0):
                    yield m
            if batch:
                last_progress = time.monotonic()
            positions = consumer.position([TopicPartition(topic, p) for p in todo])
            todo -= {tp.partition for tp in positions if tp.offset >= 0 and tp.offset >= ends[tp.partition]}
            if todo and time.monotonic() - last_progress > idle_timeout:
                raise BrokerUnavailable(f"no record of {topic} partitions {sorted(todo)} within {idle_timeout:.0f}s "
                                        f"(expected up to offsets {[ends[p] for p in sorted(todo)]})")
