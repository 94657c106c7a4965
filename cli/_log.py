"""Reading a topic of ours from the outside: the shared seam of `events`, `topics` and `lag`.

The commands that look at the log (``events tail|replay``, ``topics
describe``, ``lag``) never join a consumer group: they ``assign()``
partitions, read between offsets they chose, and leave no trace on the
broker. Where they stop is the high watermark read when they start; records
appended after the start are left for ``--follow``.

Library errors become ``LogError``: a one-line message for the CLI.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

from confluent_kafka import Consumer, KafkaException, TopicPartition

from taskstream.schemas import BrokerUnavailable, Settings
from taskstream.schemas.kafka import admin, consume_available, wait_for_broker
from taskstream.schemas.kafka import reader as kafka_reader

#: librdkafka's offset of "no offset" (nothing committed, nothing found by time).
NO_OFFSET = -1001
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class LogError(Exception):
    """Something a log command cannot do; the message is one line for the user."""


def parse_time(text: str, now: datetime) -> datetime:
    """An RFC 3339 time (``2026-11-26T01:00:00Z``; no offset means UTC) or a time ago (``90s``, ``10m``, ``2h``, ``1d``)."""
    m = _RELATIVE.match(text)
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    try:
        value = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise ValueError(f"{text!r} is neither an RFC 3339 time (2026-11-26T01:00:00Z) "
                         "nor a time ago (90s, 10m, 2h, 1d)") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def to_ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def iso(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with milliseconds and ``Z``."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_time(timestamp_ms: int | None) -> datetime | None:
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC) if timestamp_ms is not None and timestamp_ms >= 0 else None


def connect(settings: Settings, timeout: float) -> dict:
    """Wait for the broker; the cluster's topic metadata (name -> TopicMetadata)."""
    try:
        wait_for_broker(settings, timeout=timeout)
        return admin(settings).list_topics(timeout=timeout).topics
    except BrokerUnavailable as exc:
        raise LogError(str(exc)) from None
    except KafkaException as exc:
        raise LogError(f"broker at {settings.bootstrap_servers}: {exc}") from None


def partitions_of(settings: Settings, topics: dict, name: str) -> int:
    """The partition count of ``name``, or ``LogError`` when it does not exist (a bad prefix, usually)."""
    meta = topics.get(name)
    if meta is None or not meta.partitions:
        raise LogError(f"topic {name} does not exist at {settings.bootstrap_servers} "
                       "(wrong TASKSTREAM_PREFIX? `taskstream topics create` makes it)")
    return len(meta.partitions)


def reader(settings: Settings, purpose: str) -> Consumer:
    """A consumer for ``assign()`` only: it never joins (nor creates) a group and never commits."""
    return kafka_reader(settings, f"taskstream-cli-{purpose}", f"taskstream-cli-{purpose}-{uuid.uuid4().hex[:8]}",
                        {"enable.auto.offset.store": False, "auto.offset.reset": "earliest"})


def watermarks(consumer: Consumer, topic: str, partitions: int, timeout: float) -> dict[int, tuple[int, int]]:
    """(low, high) of every partition, asked of the broker now (not cached)."""
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout, cached=False)
                for p in range(partitions)}
    except KafkaException as exc:
        raise LogError(f"end offsets of {topic}: {exc}") from None


def offsets_at(consumer: Consumer, topic: str, marks: dict[int, tuple[int, int]], at: datetime,
               timeout: float) -> dict[int, int]:
    """Per partition, the first offset whose record timestamp is >= ``at`` (ListOffsets by time).

    A starting point: timestamps are the producers' clocks, not ordered
    within a partition, so readers also skip records older than ``at``
    themselves. No record that late: the partition's high watermark.
    """
    try:
        found = consumer.offsets_for_times([TopicPartition(topic, p, to_ms(at)) for p in marks], timeout=timeout)
    except KafkaException as exc:
        raise LogError(f"offsets by time of {topic}: {exc}") from None
    out = {}
    for tp in found:
        low, high = marks[tp.partition]
        out[tp.partition] = high if tp.offset < 0 or tp.error is not None else min(max(tp.offset, low), high)
    return out


def read_range(consumer: Consumer, topic: str, starts: dict[int, int], ends: dict[int, int], *,
               idle_timeout: float = 30.0, keep_assigned: bool = False,
               after_end: Callable | None = None) -> Iterator:
    """Every message of ``topic`` with ``starts[p] <= offset < ends[p]``, per partition in order.

    A partition is done when the consumer's position reaches its end (so a
    gap in offsets cannot hold the read up). ``LogError`` when no partition
    moves for ``idle_timeout`` seconds. With ``keep_assigned`` every partition
    stays assigned for following afterwards; messages past an end that arrive
    meanwhile go to ``after_end``.
    """
    todo = {p for p in starts if starts[p] < ends[p]}
    assigned = list(starts) if keep_assigned else sorted(todo)
    consumer.assign([TopicPartition(topic, p, starts[p]) for p in assigned])
    last_progress = time.monotonic()
    try:
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
                raise LogError(f"no record of {topic} partitions {sorted(todo)} within {idle_timeout:.0f}s "
                               f"(expected up to offsets {[ends[p] for p in sorted(todo)]})")
    except KafkaException as exc:
        raise LogError(f"reading {topic}: {exc}") from None
