"""Test helpers that talk to the real broker: read topics back, produce events, run components."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from taskstream.cli.dev import settings_env
from taskstream.schemas import Settings, codec
from taskstream.schemas.kafka import producer_config


class TopicReader:
    """Reads one or more topics from the beginning, all partitions, no group; decodes values."""

    def __init__(self, settings: Settings, *topic_names: str) -> None:
        self.consumer = Consumer(
            {"bootstrap.servers": settings.bootstrap_servers, "group.id": "test-reader", "enable.auto.commit": False}
        )
        # The consumer's own metadata: assigned before it knows the leaders, librdkafka retries the offset lookup
        # only 0.5 s later.
        md = self.consumer.list_topics(timeout=10).topics
        self.consumer.assign(
            [TopicPartition(t, p, OFFSET_BEGINNING) for t in topic_names for p in md[t].partitions]
        )
        self.messages = []

    def poll(self, timeout: float = 0.2) -> list:
        new = []
        while True:
            msgs = self.consumer.consume(1000, timeout)
            msgs = [m for m in msgs if m.error() is None]
            if not msgs:
                break
            new.extend(msgs)
            timeout = 0.05
        self.messages.extend(new)
        return new

    def until(self, predicate, timeout: float = 30.0, message: str = "messages"):
        """Poll until ``predicate(self.messages)`` is truthy; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll(0.05)  # short: the loop polls again, and what arrives meanwhile is seen sooner
            result = predicate(self.messages)
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {message}; have {len(self.messages)}")

    def read_to_end(self, timeout: float = 30.0) -> list:
        """Poll until every assigned partition is read up to its end offset as of now, so every record
        acknowledged before the call is in ``messages``; returns ``messages``."""
        ends = {(tp.topic, tp.partition): self.consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1]
                for tp in self.consumer.assignment()}

        def reached(messages) -> bool:
            last: dict[tuple[str, int], int] = {}
            for m in messages:
                key = (m.topic(), m.partition())
                last[key] = max(last.get(key, -1), m.offset())
            # The position too: a partition written in transactions ends with a commit marker, never delivered.
            at = {(tp.topic, tp.partition): tp.offset for tp in self.consumer.position(
                [TopicPartition(t, p) for (t, p), end in ends.items() if end > 0])}
            return all(last.get(key, -1) >= end - 1 or at.get(key, -1) >= end for key, end in ends.items() if end > 0)

        self.until(reached, timeout, message=f"every partition read to its end offset ({ends})")
        return self.messages

    def values(self) -> list:
        out = []
        for m in self.messages:
            try:
                out.append(codec.decode(m.value()))
            except Exception:
                out.append(None)
        return out

    def close(self) -> None:
        self.consumer.close()


def producer(settings: Settings) -> Producer:
    """A producer configured as the program's own (idempotent, acks=all, murmur2 keys), lingering 1 ms."""
    return Producer({**producer_config(settings, "test"), "linger.ms": 1})


def send_events(settings: Settings, events, topic: str | None = None) -> None:
    from taskstream.schemas import Topics

    p = producer(settings)
    for e in events:
        p.produce(
            topic or Topics(settings.prefix).events, codec.encode(e), e.task_id.encode(), headers=codec.headers(e)
        )
    assert p.flush(10) == 0


def now() -> datetime:
    return datetime.now(UTC)


class Component:
    """A `taskstream <args>` subprocess with ``settings`` in its environment."""

    def __init__(self, settings: Settings, *args: str, log_path=None) -> None:
        env = {**os.environ, **settings_env(settings)}
        self.log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "taskstream.cli.main", *args],
            env=env,
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
        )

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 20.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.proc.wait()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait()


def stop_all(*components, timeout: float = 20.0) -> list[int]:
    """Stop ``taskstream`` subprocesses (``Component`` or anything with a ``proc`` of one) like ``stop`` does, but
    all at once, so a teardown pays the slowest stop, not the sum. SIGTERM once per process (a second one makes
    uvicorn quit at once), SIGKILL after ``timeout``. Returns the exit codes in the order given; ``None`` entries
    are skipped."""
    live = [c for c in components if c is not None]
    for c in live:
        if c.proc.poll() is None:
            os.killpg(c.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    codes = []
    for c in live:
        try:
            codes.append(c.proc.wait(max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            os.killpg(c.proc.pid, signal.SIGKILL)
            codes.append(c.proc.wait())
    return codes
