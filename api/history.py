"""A task's history: its events read back from ``<p>.events`` (``GET /tasks/{id}/events``).

Only the task's partition is read (``partitioner.partition_for``, the same
murmur2 the producers use), from the beginning, without a consumer group.
The read stops at end of partition, or once no record arrived for
``IDLE_S`` after the last one: the embedded broker under-reports end
offsets (BROKER.md), so an end offset cannot be trusted to bound the read.
The cost is one scan of one partition per request; fine for a history
view, not something to poll in a loop on a large log.

Time travel (``GET /tasks/{id}?as_of=``, ``task_state_at``) folds those
events, the ones with ``occurred_at <= as_of`` in log order, with the
processor's own fold. That is the one, deliberate exception to "api does
not import streams" (DESIGN §1): this module imports
``taskstream.streams.domain`` and nothing else from ``streams``. That
module is the pure state machine (no Kafka, no RocksDB, no clock, no I/O;
``taskstream.streams/__init__`` imports only it), and a second copy of the
fold in the API would be a second definition of what a task's state is,
free to drift from the one the processor applies.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from datetime import datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from taskstream.schemas import BrokerUnavailable, DecodeError, Event, Settings, TaskState, Topics, codec
from taskstream.schemas.observability import about
from taskstream.streams import domain  # pure: the one import of streams in the API (see the docstring)

from .models import rfc3339
from .partitioner import partition_for

log = logging.getLogger(__name__)

IDLE_S = 0.2
FIRST_RECORD_TIMEOUT_S = 5.0
TOTAL_TIMEOUT_S = 30.0
_JSON_FIELDS = frozenset({"payload", "result", "data", "template"})  # JSON text in the event: shown decoded


def event_json(event: Event) -> dict[str, Any]:
    """One event as the API shows it: type, time, attempt (or null), producer, id, then its own fields."""
    out: dict[str, Any] = {
        "type": codec.type_name(event),
        "occurred_at": rfc3339(event.occurred_at),
        "attempt": getattr(event, "attempt", None),
        "producer": event.producer,
        "event_id": event.event_id,
    }
    for f in dataclasses.fields(event):
        if f.name in out or f.name in ("task_id",):
            continue
        value = getattr(event, f.name)
        if isinstance(value, datetime):
            value = rfc3339(value)
        elif f.name in _JSON_FIELDS and isinstance(value, str):
            try:
                value = codec.loads_json(value)
            except codec.JSONDecodeError:
                pass
        out[f.name] = value
    return out


def read_task_events(settings: Settings, task_id: str) -> list[Event]:
    """Every event keyed by ``task_id`` in ``<p>.events``, oldest first (blocking)."""
    topic = Topics(settings.prefix).events
    key = task_id.encode()
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "client.id": "taskstream-api-history",
            "group.id": f"{settings.prefix}-api-history-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
        }
    )
    try:
        meta = consumer.list_topics(timeout=5).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise BrokerUnavailable(f"topic {topic} is not available")
        partition = partition_for(key, len(meta.partitions))
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        events: list[Event] = []
        start = time.monotonic()
        last = None
        while True:
            wait = FIRST_RECORD_TIMEOUT_S if last is None else IDLE_S
            msg = consumer.poll(wait)
            now = time.monotonic()
            if msg is None:
                if last is not None or now - start >= FIRST_RECORD_TIMEOUT_S:
                    break
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    break
                log.warning("history of task_id=%s: consumer error: %s", task_id, err, extra=about(task_id))
                continue
            last = now
            if msg.key() == key:
                try:
                    value = codec.decode(msg.value())
                except DecodeError as exc:
                    log.warning("history of task_id=%s: undecodable record at offset %d: %s", task_id, msg.offset(), exc,
                            extra=about(task_id))
                    continue
                if isinstance(value, Event):
                    events.append(value)
            if now - start > TOTAL_TIMEOUT_S:
                log.warning("history of task_id=%s: stopped after %.0fs", task_id, TOTAL_TIMEOUT_S, extra=about(task_id))
                break
        return events
    except KafkaException as exc:
        raise BrokerUnavailable(f"reading the event log failed: {exc}") from exc
    finally:
        consumer.close()


def task_state_at(settings: Settings, task_id: str, as_of: datetime) -> TaskState | None:
    """The task as it was at ``as_of``: its events with ``occurred_at <= as_of``, folded in the order the
    processor applied them (``domain.processor_order``: its follow-ups right after their triggers).

    None when the task did not exist yet (or ``task_id`` is a schedule's id).
    """
    events = [e for e in read_task_events(settings, task_id) if e.occurred_at <= as_of]
    state = domain.fold(domain.processor_order(events))
    return state if isinstance(state, TaskState) else None
