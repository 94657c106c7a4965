"""The API's writes when its producer fails (issue 25, items 2 and 3), on a broker of the module's own.

The tests change a topic's configs and SIGSTOP the broker, so they never touch the session's broker. A fatal
producer error comes from the broker itself: with ``enable.gapless.guarantee`` (set through the app's
``producer_overrides``) librdkafka turns a record the broker refuses into a fatal error of the client, as a
fenced producer id does.
"""

from __future__ import annotations

import os
import signal
import uuid

import pytest
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
from fastapi.testclient import TestClient

from taskstream.api.app import create_app
from taskstream.api.idempotency import derived_id
from taskstream.cli.broker import KafkaBroker, free_port
from taskstream.schemas import Settings, Topics, catalogue
from taskstream.schemas.kafka import admin, ensure_topics, wait_for_broker
from tests.conftest import SESSION_TIMEOUT_MS, delete_topics, wait_until
from tests.kafka_helpers import TopicReader

pytestmark = pytest.mark.integration

#: A task whose TaskCreated record is well over 1,000 bytes.
BIG_TASK = {"handler": "noop", "payload": {"blob": "x" * 2000}}


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory):
    b = KafkaBroker(free_port(), tmp_path_factory.mktemp("kafka-recovery")).start(timeout=120)
    try:
        yield b
    finally:
        if b.proc is not None and b.proc.poll() is None:
            os.kill(b.proc.pid, signal.SIGCONT)  # a test that failed mid-stall
        b.stop()


@pytest.fixture
def s(own_broker, tmp_path) -> Settings:
    s = Settings(bootstrap_servers=own_broker.bootstrap_servers, prefix=f"t{uuid.uuid4().hex[:10]}", partitions=1,
                 data_dir=tmp_path / "data", session_timeout_ms=SESSION_TIMEOUT_MS, metrics_port=0)
    wait_for_broker(s)
    assert ensure_topics(s, catalogue(s)) == []
    yield s
    delete_topics(s)


def set_max_message_bytes(s: Settings, topic: str, value: str | None) -> None:
    """Set the topic's ``max.message.bytes`` (None: back to the catalogue's value, or the broker's default)."""
    if value is None:
        value = next(t for t in catalogue(s) if t.name == topic).config.get("max.message.bytes")
    entry = (ConfigEntry("max.message.bytes", value, incremental_operation=AlterConfigOpType.SET) if value
             else ConfigEntry("max.message.bytes", None, incremental_operation=AlterConfigOpType.DELETE))
    client = admin(s)  # held until the answer came: a client collected earlier fails its futures
    for fut in client.incremental_alter_configs(
            [ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])]).values():
        fut.result(10)


def test_a_fatal_producer_error_is_mended_by_a_new_client_and_readyz_says_why_meanwhile(s: Settings) -> None:
    events = Topics(s.prefix).events
    with TestClient(create_app(s, producer_overrides={"enable.gapless.guarantee": True})) as c:
        wait_until(lambda: c.get("/readyz").status_code == 200, timeout=30, message="ready")
        assert c.post("/api/v1/tasks", json=BIG_TASK).status_code == 202
        set_max_message_bytes(s, events, "1000")  # every later task is refused: a fatal error of the client
        answers: list[tuple[int, dict]] = []
        reasons: list[str] = []

        def seen_both() -> bool:
            r = c.post("/api/v1/tasks", json=BIG_TASK)
            answers.append((r.status_code, r.json()))
            ready = c.get("/readyz")
            if ready.status_code == 503 and ready.json()["checks"].get("producer") == "failed":
                reasons.extend(ready.json()["reasons"])
            return bool(reasons) and any(code == 503 for code, _ in answers)

        # the fatal errors keep coming while the topic refuses the records, so the rebuilds wait longer each time
        wait_until(seen_both, timeout=60, interval=0.05,
                   message="a 503 not-written answer and /readyz 503 naming the producer")
        assert any("cannot write to the event log: producer fatal error" in r for r in reasons), reasons
        assert {code for code, _ in answers} <= {413, 503}, answers  # refused for good, or not written
        for code, body in answers:
            if code == 503:
                assert body["type"].endswith("broker-unavailable") and "nothing was sent" in body["detail"], body

        set_max_message_bytes(s, events, None)
        written = wait_until(lambda: (r := c.post("/api/v1/tasks", json=BIG_TASK)).status_code == 202 and r,
                             timeout=60, interval=0.2, message="writes to work again without a restart")
        assert written.json()["id"]
        wait_until(lambda: c.get("/readyz").status_code == 200, timeout=30, message="ready again")
        assert c.app.state.context.producer.rebuilds >= 2


def test_a_write_the_stalled_broker_never_answered_is_504_outcome_unknown_and_the_key_learns_it(
        s: Settings, own_broker: KafkaBroker) -> None:
    """The broker is stopped with the API's request in its socket: the answer never comes within the produce
    timeout, yet the record is written when the broker wakes. 504 says so; the same key then answers the task."""
    assert own_broker.proc is not None
    with TestClient(create_app(s, produce_timeout_s=2.0)) as c:
        wait_until(lambda: c.get("/readyz").status_code == 200, timeout=30, message="ready")
        assert c.post("/api/v1/tasks", json={"handler": "noop"}).status_code == 202  # connected, producer id held
        os.kill(own_broker.proc.pid, signal.SIGSTOP)
        try:
            r = c.post("/api/v1/tasks", json={"handler": "noop"}, headers={"Idempotency-Key": "stalled"})
        finally:
            os.kill(own_broker.proc.pid, signal.SIGCONT)
        assert r.status_code == 504, r.text
        body = r.json()
        assert body["type"].endswith("write-outcome-unknown") and r.headers["Retry-After"] == "1"
        assert "retry with the same Idempotency-Key" in body["detail"]

        task_id = derived_id("stalled")
        reader = TopicReader(s, Topics(s.prefix).events)
        try:  # the 504 was right not to say "not written": the broker took it when it woke
            reader.until(lambda ms: any(m.key() == task_id.encode() for m in ms), timeout=30,
                         message="the stalled write in the log")
        finally:
            reader.consumer.close()
        again = wait_until(lambda: (r := c.post("/api/v1/tasks", json={"handler": "noop"},
                                                headers={"Idempotency-Key": "stalled"})).status_code == 202 and r,
                           timeout=60, interval=0.2, message="the retry with the key to answer")
        assert again.json()["id"] == task_id
