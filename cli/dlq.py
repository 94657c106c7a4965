"""`taskstream dlq list|redrive`: what failed for good, and sending it round again.

``<p>.dlq`` holds two kinds of record (DESIGN §2): a ``TaskDeadLettered``
the processor publishes when a task ends ``failed`` (keyed by task id), and
raw poison messages it could not decode, with ``source-topic``,
``source-partition``, ``source-offset`` and ``reason`` headers. ``list``
reads every partition from the beginning up to its end offset as of the
start (``schemas.log_reader.read_to_ends``), the same way the processor rebuilds
its tables; it writes nothing. ``redrive`` appends ``TaskRedriven`` events
to ``<p>.events`` keyed by task id (murmur2, as every producer of events);
the processor re-opens a ``failed`` or ``upstream_failed`` task on one and
ignores it on any other status.

Library errors become ``DlqError`` (a one-line message for the CLI).
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from taskstream.schemas import BrokerUnavailable, DecodeError, Settings, TaskDeadLettered, TaskRedriven, Topics, codec
from taskstream.schemas.kafka import producer as kafka_producer
from taskstream.schemas.kafka import reader as kafka_reader
from taskstream.schemas.log_reader import broker_errors, end_offsets, headers_of, position, read_to_ends
from taskstream.schemas.offsets import POISON_HEADERS
from taskstream.streams import domain

from ._log import LogError, connect, partitions_of


class DlqError(Exception):
    """Something the dlq commands cannot do; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class DlqRecord:
    """One record of ``<p>.dlq``: a dead-lettered task (``event`` set) or a poison message."""

    partition: int
    offset: int
    timestamp: datetime
    key: str
    size: int
    event: TaskDeadLettered | None = None
    headers: dict[str, str] | None = None

    @property
    def kind(self) -> str:
        return "dead_lettered" if self.event is not None else "poison"

    @property
    def sort_key(self) -> tuple[datetime, int, int]:
        return (self.timestamp, self.partition, self.offset)

    def as_json(self) -> dict[str, Any]:
        where = {"dlq_partition": self.partition, "dlq_offset": self.offset}
        if self.event is not None:
            e = self.event
            return {
                "kind": self.kind, "task_id": e.task_id, "attempt": e.attempt, "error": e.error,
                "handler": e.handler, "priority": e.priority, "occurred_at": _iso(e.occurred_at),
                "producer": e.producer, "event_id": e.event_id, **where,
            }
        h = self.headers or {}
        source_partition, source_offset = h.get("source-partition"), h.get("source-offset")
        return {
            "kind": self.kind, "key": self.key, "source_topic": h.get("source-topic"),
            "source_partition": _int_or_text(source_partition), "source_offset": _int_or_text(source_offset),
            "reason": h.get("reason"), "size": self.size, "timestamp": _iso(self.timestamp), **where,
        }


def _int_or_text(value: str | None) -> int | str | None:
    return int(value) if value and value.lstrip("-").isdigit() else value


def classify(partition: int, offset: int, timestamp_ms: int | None, key: bytes | None, value: bytes | None,
             headers: Iterable[tuple[str, bytes | None]] | None,
             wire: codec.WireFormat = codec.SINGLE_OBJECT) -> DlqRecord:
    """A raw message of ``<p>.dlq`` as a ``DlqRecord``.

    A record with a ``source-topic`` header is poison whatever its bytes are;
    otherwise it must decode to ``TaskDeadLettered``, and anything else is
    reported as poison too (with why in its reason), never dropped.
    """
    hdrs = {k: (v or b"").decode(errors="replace") for k, v in (headers or [])}
    stamp = (datetime.fromtimestamp(timestamp_ms / 1000, UTC) if timestamp_ms and timestamp_ms > 0
             else datetime.min.replace(tzinfo=UTC))
    base = DlqRecord(partition=partition, offset=offset, timestamp=stamp,
                     key=(key or b"").decode(errors="replace"), size=len(value or b""))
    if "source-topic" not in hdrs:
        try:
            event = wire.decode(value)
        except DecodeError as exc:
            hdrs.setdefault("reason", f"undecodable record without source headers: {exc}")
        else:
            if isinstance(event, TaskDeadLettered):
                return replace(base, event=event)
            hdrs.setdefault("reason", f"a {codec.type_name(event)} record, not TaskDeadLettered")
    return replace(base, headers={k: hdrs[k] for k in POISON_HEADERS if k in hdrs})


def _check(settings: Settings, topic: str, timeout: float) -> int:
    """Wait for the broker; the partition count of ``topic``, or ``DlqError`` when it is missing."""
    try:
        return partitions_of(settings, connect(settings, timeout), topic)
    except LogError as exc:
        raise DlqError(str(exc)) from None


def read_dlq(settings: Settings, timeout: float = 30.0) -> list[DlqRecord]:
    """Every record of ``<p>.dlq`` up to its end offsets as of now, oldest first."""
    topic = Topics(settings.prefix).dlq
    wire = codec.WireFormat.of(settings)
    partitions = _check(settings, topic, timeout)
    reader = kafka_reader(settings, "taskstream-cli-dlq", f"taskstream-cli-dlq-{uuid.uuid4().hex[:8]}",  # never joined
                          {"enable.partition.eof": True})
    records: list[DlqRecord] = []
    try:
        ends = end_offsets(reader, topic, range(partitions), timeout)
        for batch in read_to_ends(reader, topic, ends, timeout=timeout, batch=1000):
            records += [classify(*position(m), m.timestamp()[1], m.key(), m.value(), headers_of(m), wire)
                        for m in batch]
    except BrokerUnavailable as exc:
        raise DlqError(str(exc)) from None
    finally:
        reader.close()
    return sorted(records, key=lambda r: r.sort_key)


def producer_name() -> str:
    return f"cli-{socket.gethostname()}-{os.getpid()}"


def redrive_events(task_ids: Iterable[str], reason: str, now: datetime, producer: str) -> list[TaskRedriven]:
    """The decider's answer to an operator's redrive: one ``TaskRedriven`` per distinct task id, in the order given."""
    command = domain.RedriveDeadLettered(task_ids=tuple(task_ids), producer=producer, reason=reason)
    return [e for e in domain.decide(None, command, now) if isinstance(e, TaskRedriven)]


def send_redrives(settings: Settings, events: list[TaskRedriven], timeout: float = 30.0) -> int:
    """Append ``events`` to ``<p>.events`` keyed by task id; the number acknowledged (all, or ``DlqError``)."""
    topic = Topics(settings.prefix).events
    wire = codec.WireFormat.of(settings)
    _check(settings, topic, timeout)
    producer = kafka_producer(settings, "taskstream-cli-redrive")
    acked: list[object] = []  # the library's messages and delivery errors
    errors: list[object] = []

    def done(err: object, msg: object) -> None:
        (errors if err is not None else acked).append(err or msg)

    try:
        with broker_errors(f"sending TaskRedriven events to {topic}"):
            for e in events:
                producer.produce(topic, wire.encode(e), e.task_id.encode(), headers=codec.headers(e), on_delivery=done)
            producer.flush(timeout)
    except BrokerUnavailable as exc:
        raise DlqError(str(exc)) from None
    if errors or len(acked) != len(events):
        raise DlqError(f"{len(acked)} of {len(events)} TaskRedriven events acknowledged by {topic}: "
                       f"{errors[0] if errors else 'timed out'}")
    return len(acked)


# ---------------------------------------------------------------- output


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _one_line(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def json_lines(records: list[DlqRecord]) -> list[str]:
    return [json.dumps(r.as_json()) for r in records]


def table_lines(records: list[DlqRecord], error_width: int = 100) -> list[str]:
    """A header and one line per record: time, kind, task id (or key), attempt, handler, priority, error/reason."""
    rows = [("TIME", "KIND", "TASK", "ATTEMPT", "HANDLER", "PRIORITY", "ERROR / SOURCE, SIZE, REASON")]
    for r in records:
        if r.event is not None:
            e = r.event
            rows.append((_iso(e.occurred_at), "dead-lettered", e.task_id, str(e.attempt), e.handler or "-",
                         e.priority or "-", _one_line(e.error, error_width)))
        else:
            h = r.headers or {}
            source = (f"{h['source-topic']}[{h.get('source-partition', '?')}]@{h.get('source-offset', '?')}"
                      if "source-topic" in h else "(no source headers)")
            rows.append((_iso(r.timestamp), "poison", r.key or "-", "-", "-", "-",
                         _one_line(f"{source} {r.size} bytes: {h.get('reason', '')}", error_width)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]  # the last column is not padded
    return ["  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip() for row in rows]
