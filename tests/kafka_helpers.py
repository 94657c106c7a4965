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
from taskstream.schemas.kafka import ONE_PER_BATCH, admin, is_end_marker, producer_config


#: fetch.wait.max.ms of the tests' own readers. The embedded broker holds every fetch this long even when data
#: arrives (BROKER.md), so librdkafka's default (500 ms) made each wait for a record ~0.25-0.5 s late.
READER_FETCH_WAIT_MS = 20


class TopicReader:
    """Reads one or more topics from the beginning, all partitions, no group; decodes values."""

    def __init__(self, settings: Settings, *topic_names: str) -> None:
        self.consumer = Consumer(
            {"bootstrap.servers": settings.bootstrap_servers, "group.id": "test-reader", "enable.auto.commit": False,
             "fetch.wait.max.ms": READER_FETCH_WAIT_MS}
        )
        md = admin(settings).list_topics(timeout=10).topics
        self.consumer.assign(
            [TopicPartition(t, p, OFFSET_BEGINNING) for t in topic_names for p in md[t].partitions]
        )
        self.messages = []

    def poll(self, timeout: float = 0.2) -> list:
        new = []
        while True:
            msgs = self.consumer.consume(1000, timeout)
            msgs = [m for m in msgs if m.error() is None and not is_end_marker(m)]  # end markers are noise
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
    # One record per batch: what a test writes is exactly visible in end offsets at once (no EndMarks here).
    return Producer({**producer_config(settings, "test"), "linger.ms": 1, **ONE_PER_BATCH})


def send_events(settings: Settings, events, topic: str | None = None) -> None:
    from taskstream.schemas import Topics

    p = producer(settings)
    for e in events:
        p.produce(topic or Topics(settings.prefix).events, codec.encode(e), e.task_id.encode(), headers=codec.headers(e))
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
    a processor, an executor and an API at once: each leaves only its own consumer groups, and a graceful leave on
    the embedded broker waits for its group to be stable for a second (``close_member``), so a teardown pays the
    slowest stop, not the sum. Members of one group (two executors, two processors) still stop one after the
    other, as they would one by one. SIGTERM once per process (a second one makes uvicorn quit at once), SIGKILL
    after ``timeout``. Returns the exit codes in the order given; ``None`` entries are skipped."""
    live = [c for c in components if c is not None]
    waves: list[list] = []
    for c in live:  # wave i holds the i-th component of each role (``taskstream <role> ...``)
        wave = next((w for w in waves if all(_role(o) != _role(c) for o in w)), None)
        if wave is None:
            waves.append(wave := [])
        wave.append(c)
    codes: dict[int, int] = {}
    for wave in waves:
        for c in wave:
            if c.proc.poll() is None:
                os.killpg(c.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for c in wave:
            try:
                codes[id(c)] = c.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(c.proc.pid, signal.SIGKILL)
                codes[id(c)] = c.proc.wait()
    return [codes[id(c)] for c in live]


def _role(c) -> object:
    return c.proc.args[3] if len(c.proc.args) > 3 else id(c)

