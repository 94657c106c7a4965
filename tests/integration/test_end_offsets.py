"""End offsets stay exact on the embedded broker while our producers batch, and no reader surfaces a marker.

The embedded broker reports a partition's end as the base offset of its last
batch + 1 (BROKER.md). Our producers batch freely and ``EndMarks`` appends
one marker tombstone alone to each partition written once the producer is
quiet, which makes the reported end exact again (docs/decisions/0001).
"""

from __future__ import annotations

import asyncio

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from fastapi.testclient import TestClient

from taskstream.api import create_app
from taskstream.schemas import Settings, Topics
from taskstream.schemas.kafka import WATERMARK_MARKER_KEY, AsyncProducer, common_config, write_markers
from tests.conftest import wait_until
from tests.kafka_helpers import Component, TopicReader, producer, stop_all

pytestmark = pytest.mark.integration


def _reader(settings: Settings) -> Consumer:
    return Consumer({**common_config(settings, "test-ends"), "group.id": "test-ends", "enable.auto.commit": False})


def _true_end(settings: Settings, topic: str, partition: int, at_least: int) -> int:
    """One past the last offset actually held, found by reading the partition (not from the end offset)."""
    consumer = _reader(settings)
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
    last = [-1]
    try:
        def read():
            for m in consumer.consume(1000, 0.2):
                if m.error() is None:
                    last[0] = max(last[0], m.offset())
            return last[0] + 1 >= at_least
        wait_until(read, timeout=20, message=f"{at_least} records in {topic}[{partition}]")
        for m in consumer.consume(1000, 0.5):  # anything after
            if m.error() is None:
                last[0] = max(last[0], m.offset())
        return last[0] + 1
    finally:
        consumer.close()


def _reported_end(settings: Settings, topic: str, partition: int) -> int:
    consumer = _reader(settings)
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5, cached=False)[1]
    finally:
        consumer.close()


async def _burst(settings: Settings, topic: str, n: int, embedded: bool) -> int:
    """``n`` records under one key (one partition, returned) in multi-record batches (linger 20 ms), through the
    producer every component of ours uses."""
    p = AsyncProducer(settings.model_copy(update={"embedded_broker": embedded}), "test-burst", **{"linger.ms": 20})
    try:
        msgs = await asyncio.gather(*(p.send(topic, b"same-key", b"v%d" % i) for i in range(n)))
    finally:
        await asyncio.to_thread(p.close, 10)
    assert len({m.partition() for m in msgs}) == 1
    return msgs[0].partition()


def test_end_offsets_are_exact_after_multi_record_batches(settings: Settings) -> None:
    topic = Topics(settings.prefix).dlq  # any topic of ours with nobody consuming it here
    part = asyncio.run(_burst(settings, topic, 50, embedded=True))
    true_end = _true_end(settings, topic, part, at_least=50)
    assert true_end > 50  # the data and at least one marker after it
    assert wait_until(lambda: _reported_end(settings, topic, part) == true_end, timeout=5,
                      message="the reported end to be exact")


def test_without_end_marks_the_embedded_broker_under_reports_the_end(settings: Settings) -> None:
    """The broker fault EndMarks exists for (if this starts failing, the broker was fixed: see the decision record)."""
    topic = Topics(settings.prefix).heartbeats
    part = asyncio.run(_burst(settings, topic, 50, embedded=False))
    assert _true_end(settings, topic, part, at_least=50) == 50
    assert _reported_end(settings, topic, part) < 50


def test_markers_between_events_are_neither_folded_nor_dead_lettered_nor_shown(settings: Settings, tmp_path) -> None:
    topics = Topics(settings.prefix)
    p = producer(settings)
    for topic in (topics.events, *topics.all_ready, *topics.all_retry, topics.heartbeats, topics.state):
        write_markers(p, topic, list(range(settings.partitions)))
    procs = [Component(settings, "processor", log_path=tmp_path / "processor.log"),
             Component(settings, "executor", log_path=tmp_path / "executor.log")]
    try:
        with TestClient(create_app(settings)) as client:
            r = client.post("/api/v1/tasks", json={"handler": "echo", "payload": {"x": 1}})
            assert r.status_code == 202, r.text
            task_id = r.json()["id"]
            wait_until(lambda: client.get(f"/api/v1/tasks/{task_id}").json()["status"] == "succeeded", timeout=60)
            for topic in (topics.events, *topics.all_ready, topics.heartbeats, topics.state):
                write_markers(p, topic, list(range(settings.partitions)))
            history = client.get(f"/api/v1/tasks/{task_id}/events").json()["events"]
            assert [e["type"] for e in history] == ["TaskCreated", "TaskQueued", "TaskSucceeded"]
            listed = client.get("/api/v1/tasks").json()["tasks"]
            assert [t["id"] for t in listed] == [task_id]
    finally:
        stop_all(*procs)
    dlq = TopicReader(settings, topics.dlq)
    try:
        dlq.poll(0.5)
        assert dlq.messages == []  # no marker was taken for a poison message
    finally:
        dlq.close()
    raw = _reader(settings)
    try:
        raw.assign([TopicPartition(topics.events, n, OFFSET_BEGINNING) for n in range(settings.partitions)])
        seen = [m for m in raw.consume(1000, 1.0) if m.error() is None]
        assert any(m.key() == WATERMARK_MARKER_KEY for m in seen)  # they were there to be skipped
    finally:
        raw.close()
