"""Reading a topic of ours from the outside: what `events`, `topics`, `lag` and `dlq` share.

The commands that look at the log (``events tail|replay``, ``topics
describe``, ``lag``, ``dlq list``) never join a consumer group: they ``assign()``
partitions, read between offsets they chose, and leave no trace on the
broker. Where they stop is the high watermark read when they start; records
appended after the start are left for ``--follow``.

What they ask of the broker is ``schemas.log_reader`` (the Kafka seam);
its ``BrokerUnavailable`` becomes ``LogError`` here (``log_errors``): a
one-line message for the CLI.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from taskstream.schemas import BrokerUnavailable, Settings
from taskstream.schemas.kafka import admin, wait_for_broker
from taskstream.schemas.kafka import reader as kafka_reader
from taskstream.schemas.log_reader import broker_errors, topic_partitions

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class LogError(Exception):
    """Something a log command cannot do; the message is one line for the user."""


@contextmanager
def log_errors(what: str) -> Iterator[None]:
    """``BrokerUnavailable`` raised in the block, and any library error (said to be ``what`` failing), leave it
    as ``LogError`` with the same message."""
    try:
        with broker_errors(what):
            yield
    except BrokerUnavailable as exc:
        raise LogError(str(exc)) from None


def parse_time(text: str, now: datetime) -> datetime:
    """An RFC 3339 time (``2026-11-26T01:00:00Z``; no offset means UTC) or a time ago (``90s``, ``10m``, ``2h``,
    ``1d``)."""
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


#: How long a command goes on trying a broker that refuses the connection before it says so.
REFUSED_S = 1.0


def connect(settings: Settings, timeout: float) -> dict[str, int]:
    """Wait for the broker (at most ``timeout`` seconds; ``REFUSED_S`` when it refuses the connection); the
    partition count of every topic of the cluster, by name."""
    try:
        wait_for_broker(settings, timeout=timeout, refused_s=REFUSED_S)
        client = admin(settings)
    except BrokerUnavailable as exc:
        raise LogError(str(exc)) from None
    try:
        return topic_partitions(client, timeout)
    except BrokerUnavailable as exc:
        raise LogError(f"broker at {settings.bootstrap_servers}: {exc}") from None


def partitions_of(settings: Settings, topics: dict[str, int], name: str) -> int:
    """The partition count of ``name``, or ``LogError`` when it does not exist (a bad prefix, usually)."""
    if not topics.get(name):
        raise LogError(f"topic {name} does not exist at {settings.bootstrap_servers} "
                       "(wrong TASKSTREAM_PREFIX? `taskstream topics create` makes it)")
    return topics[name]


def reader(settings: Settings, purpose: str):
    """A consumer for ``assign()`` only: it never joins (nor creates) a group and never commits."""
    return kafka_reader(settings, f"taskstream-cli-{purpose}", f"taskstream-cli-{purpose}-{uuid.uuid4().hex[:8]}",
                        {"enable.auto.offset.store": False, "auto.offset.reset": "earliest"})
