"""Looking at our topics from outside a consumer group: the Kafka seam of the short-lived readers.

The CLI's log commands (``events``, ``topics``, ``lag``, ``dlq``), ``state
rebuild`` and the API's history reads never join a group: they ``assign()``
partitions of a ``kafka.reader``, read between offsets they chose and leave
no trace on the broker. This module is everything they ask of the broker:
partition counts, (low, high) watermarks, offsets by time, a group's
committed offsets, and the records of a range of partitions (some of it
lives in ``schemas.kafka`` beside the client factory and is re-exported
here). Callers name partitions by number and offsets by int, never by the
library's types, and every library error reaches them as
``BrokerUnavailable`` (``broker_errors``), saying what was asked, with the
library's error as its cause.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from .errors import BrokerUnavailable
from .kafka import (
    broker_errors,
    consume_available,
    end_offsets,
    group_offsets,
    read_to_ends,
    timed_out,
    topic_partitions,
    watermarks,
)

__all__ = [
    "BEGINNING", "assign", "at_partition_end", "broker_count", "broker_errors", "consume_available", "end_offsets",
    "group_offsets", "headers_of", "offsets_at", "position", "read_range", "read_to_ends", "reason", "timed_out",
    "topic_partitions", "watermarks",
]

#: The start offset that means "the oldest record the partition still holds" (for ``assign``).
BEGINNING = OFFSET_BEGINNING


def reason(exc: BaseException) -> str:
    """The library's own words for the error behind ``exc`` (for a ``BrokerUnavailable`` of the seam, its cause):
    ``Failed to get metadata: Local: Broker transport failure`` rather than ``KafkaError{code=...}``; else
    ``str(exc)``."""
    cause = exc.__cause__ if isinstance(exc, BrokerUnavailable) and exc.__cause__ is not None else exc
    if isinstance(cause, KafkaException) and cause.args and isinstance(cause.args[0], KafkaError):
        return str(cause.args[0].str())
    return str(exc)


# ------------------------------------------------------------------ metadata


def broker_count(client: AdminClient | Consumer, timeout: float) -> int:
    """How many brokers the cluster's metadata names; ``BrokerUnavailable`` when none answered within ``timeout``."""
    with broker_errors("asking for the cluster's brokers"):
        return len(client.list_topics(timeout=timeout).brokers)


def offsets_at(consumer: Consumer, topic: str, marks: Mapping[int, tuple[int, int]], at: datetime,
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


def assign(consumer: Consumer, topic: str, starts: Mapping[int, int]) -> None:
    """Assign ``consumer`` the partitions of ``starts``, each to be read from its offset there (``BEGINNING``:
    the oldest record held)."""
    with broker_errors(f"assigning {topic}"):
        consumer.assign([TopicPartition(topic, p, offset) for p, offset in starts.items()])


def at_partition_end(message: Message) -> bool:
    """Whether ``message`` is the end-of-partition marker of a consumer with ``enable.partition.eof`` (its
    ``offset()`` is then the partition's end), not a record nor another error."""
    err = message.error()
    return err is not None and err.code() == KafkaError._PARTITION_EOF


def position(message: Message) -> tuple[int, int]:
    """(partition, offset) of a message a consumer returned: a record, or an end-of-partition marker (whose
    offset is the end). The library types both as optional (a message being produced has neither yet); a
    consumed message always has both, so ``ValueError`` here means a message that was never consumed."""
    partition, offset = message.partition(), message.offset()
    if partition is None or offset is None:
        raise ValueError(f"not a consumed message: partition {partition}, offset {offset}")
    return partition, offset


def headers_of(message: Message) -> list[tuple[str, bytes | None]]:
    """The headers of a consumed record as (name, value) pairs in their order; a value is bytes, or None for a
    header without one. (The library types them as a produce takes them, a dict or str values too.)"""
    headers = message.headers()
    if headers is None:
        return []
    pairs = headers.items() if isinstance(headers, dict) else headers
    return [(name, value.encode() if isinstance(value, str) else value) for name, value in pairs]


def read_range(consumer: Consumer, topic: str, starts: Mapping[int, int], ends: Mapping[int, int], *,
               idle_timeout: float = 30.0, keep_assigned: bool = False,
               after_end: Callable[[Message], object] | None = None) -> Iterator[Message]:
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
                p, offset = m.partition(), m.offset()
                if m.error() is not None or p is None or offset is None:  # a record always has both (typed Optional)
                    continue
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
