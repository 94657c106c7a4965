"""Poison on every ready topic: each undecodable or wrongly typed message goes to ``<p>.dlq``, the executor goes on.

(``test_executor.py`` checks one garbage message on ``ready.high`` in detail;
this covers the other two ready topics, an empty value and a well-formed
event of a type that has no business on a ready topic.)
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from taskstream.schemas import TaskSucceeded, Topics, codec
from tests.conftest import wait_until
from tests.integration.test_executor import EventLog, Feeder, TopicReader, committed, ready, running

pytestmark = pytest.mark.integration


@pytest.fixture
def events(settings):
    log = EventLog(settings)
    yield log
    log.close()


def test_poison_on_each_ready_topic_goes_to_dlq_with_headers(settings, events):
    topics = Topics(settings.prefix)
    feeder = Feeder(settings)
    wrong = TaskSucceeded(task_id=uuid.uuid4().hex, occurred_at=datetime.now(UTC), producer="test",
                          attempt=1, result="1")
    poison = {  # key -> (topic, value, what the reason must mention)
        uuid.uuid4().hex: (topics.ready("medium"), b"garbage on medium", "C3 01"),
        uuid.uuid4().hex: (topics.ready("low"), b"\xc3\x01\xff\xff\xff", ""),
        uuid.uuid4().hex: (topics.ready("low"), b"", ""),
        wrong.task_id: (
            topics.ready("high"),
            codec.encode(wrong),
            "expected ReadyTask or TaskCancelled, got TaskSucceeded",
        ),
    }
    offsets = {}  # key -> (partition, offset) where its poison landed
    goods = []
    for key, (topic, value, _) in poison.items():
        def landed(err, msg, key=key):
            feeder._delivered(err, msg)
            offsets[key] = (msg.partition(), msg.offset())

        feeder.producer.produce(topic, value, key.encode(), on_delivery=landed)
        assert feeder.producer.flush(10) == 0
        priority = topic.rsplit(".", 1)[1]
        goods += feeder.send(ready("echo", key, priority=priority, task_id=key))  # same partition, right after
    dlq = TopicReader(settings, topics.dlq)
    try:
        with running(settings):
            got = events.wait_for([g.task_id for g in goods])
            wait_until(lambda: len(dlq.poll()) >= len(poison), message="every poison message in the dlq")
            wait_until(lambda: committed(settings) == feeder.positions, message="offsets committed past the poison")
    finally:
        dlq.close()
    for g in goods:
        assert codec.loads_json(got[g.task_id][-1].result) == g.task_id
    assert len(dlq.messages) == len(poison)
    for msg in dlq.messages:
        key = msg.key().decode()
        topic, value, reason = poison[key]
        headers = dict(msg.headers())
        assert (msg.value() or b"") == value
        assert headers["source-topic"] == topic.encode()
        assert (int(headers["source-partition"]), int(headers["source-offset"])) == offsets[key]
        assert headers["reason"] and reason.encode() in headers["reason"], headers["reason"]
