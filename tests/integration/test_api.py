"""The HTTP API against a real Kafka broker, with its real lifespan (producer + read model)."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from fastapi.testclient import TestClient

from taskstream.api import create_app
from taskstream.api.models import parse_rfc3339
from taskstream.cli.broker import free_port
from taskstream.schemas import Settings, TaskCreated, TaskState, Topics, codec
from taskstream.schemas.kafka import common_config, producer_config
from taskstream.schemas.limits import MAX_PAYLOAD_BYTES
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"


@pytest.fixture
def client(settings: Settings):
    with TestClient(create_app(settings)) as c:
        yield c


def read_topic(settings: Settings, topic: str, count: int, timeout: float = 10.0) -> list:
    """Every record of ``topic`` (all partitions, from the beginning) once ``count`` arrived."""
    consumer = Consumer(
        {**common_config(settings, "test-reader"), "group.id": "test-reader", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(settings.partitions)])
    records = []
    try:
        def enough():
            for msg in consumer.consume(100, timeout=0.1):
                if msg.error() is None:
                    records.append(msg)
            return len(records) >= count
        wait_until(enough, timeout=timeout, message=f"{count} records in {topic}")
    finally:
        consumer.close()
    return records


def topic_is_empty(settings: Settings, topic: str) -> bool:
    """No record was ever produced (high watermark 0 everywhere)."""
    consumer = Consumer({**common_config(settings, "test-reader"), "group.id": "test-reader"})
    try:
        return all(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5, cached=False)[1] == 0
            for p in range(settings.partitions)
        )
    finally:
        consumer.close()


def produce_states(settings: Settings, records: list[tuple[bytes, bytes | None]]) -> None:
    producer = Producer(producer_config(settings, "test-state-writer"))
    for key, value in records:
        producer.produce(Topics(settings.prefix).state, value, key)
    assert producer.flush(10) == 0


def decode_state(body: dict) -> TaskState:
    """A TaskState for a task the API returned (to derive processor-like updates from)."""
    parse = lambda s: None if s is None else datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return TaskState(
        task_id=body["id"], handler=body["handler"], status=body["status"], priority=body["priority"],
        payload=codec.dumps_json(body["payload"]), created_at=parse(body["created_at"]),
        updated_at=parse(body["updated_at"]), name=body["name"], labels=body["labels"],
        max_attempts=body["max_attempts"], version=body["version"],
    )


def submit(client: TestClient, **fields) -> dict:
    r = client.post("/api/v1/tasks", json={"handler": "noop", **fields})
    assert r.status_code == 202, r.text
    return r.json()


# ------------------------------------------------------------------ POST


def test_post_answers_202_and_writes_a_task_created_event(client: TestClient, settings: Settings) -> None:
    body = {
        "handler": "email.send",
        "payload": {"to": "a@example.com", "n": [1, 2.5, None]},
        "priority": "high",
        "name": "welcome",
        "labels": {"team": "growth"},
        "timeout_s": 30,
        "retry": {"max_attempts": 5},
        "run_at": "2020-01-01T00:00:00Z",
    }
    r = client.post("/api/v1/tasks", json=body)
    assert r.status_code == 202
    assert r.headers["content-type"] == "application/json"
    task = r.json()
    assert r.headers["location"] == f"/api/v1/tasks/{task['id']}"
    assert task["status"] == "scheduled"  # has a run_at (initial_state)
    assert task["handler"] == "email.send" and task["priority"] == "high" and task["name"] == "welcome"
    assert task["payload"] == body["payload"] and task["labels"] == {"team": "growth"}
    assert task["max_attempts"] == 5 and task["timeout_s"] == 30.0 and task["attempt"] == 0
    assert task["run_at"] == "2020-01-01T00:00:00.000000Z"
    assert task["created_at"].endswith("Z") and task["started_at"] is None and task["version"] == 1

    [msg] = read_topic(settings, Topics(settings.prefix).events, 1)
    assert msg.key() == task["id"].encode()
    assert dict(msg.headers())["event-type"] == b"TaskCreated"
    event = codec.decode(msg.value())
    assert isinstance(event, TaskCreated)
    assert event.task_id == task["id"]
    assert event.producer.startswith("api-")
    assert event.handler == "email.send" and event.priority == "high" and event.name == "welcome"
    assert codec.loads_json(event.payload) == body["payload"]
    assert event.labels == {"team": "growth"} and event.depends_on == []
    assert event.run_at == datetime(2020, 1, 1, tzinfo=UTC)
    assert event.timeout_s == 30.0 and event.max_attempts == 5
    assert abs((datetime.now(UTC) - event.occurred_at).total_seconds()) < 60


def test_defaults(client: TestClient, settings: Settings) -> None:
    task = submit(client)
    assert task["priority"] == "medium" and task["payload"] == {} and task["name"] == "" and task["labels"] == {}
    assert task["max_attempts"] == settings.default_max_attempts and task["status"] == "pending"
    assert task["run_at"] is None and task["timeout_s"] is None and task["result"] is None


def test_get_right_after_post_answers_200(client: TestClient) -> None:
    for _ in range(5):
        task = submit(client, payload={"i": 1})
        r = client.get(f"/api/v1/tasks/{task['id']}")
        assert r.status_code == 200
        assert r.json() == task


def test_unknown_task_is_a_404_problem(client: TestClient) -> None:
    r = client.get("/api/v1/tasks/doesnotexist")
    assert r.status_code == 404
    assert r.headers["content-type"] == PROBLEM
    p = r.json()
    assert p["status"] == 404 and "doesnotexist" in p["detail"] and p["title"] and p["type"]


# ----------------------------------------------------- state topic projection


def test_states_from_the_state_topic_update_get_and_filters(client: TestClient, settings: Settings) -> None:
    task = submit(client, handler="images.resize")
    done = replace(
        decode_state(task), status="succeeded", attempt=1, version=3, result='{"ok": true}',
        started_at=datetime(2024, 5, 1, tzinfo=UTC), finished_at=datetime(2024, 5, 1, 0, 0, 1, tzinfo=UTC),
    )
    key = task["id"].encode()
    produce_states(settings, [
        (b"gone", None),                   # a tombstone: skipped
        (b"garbage", b"not avro at all"),  # undecodable: skipped
        (key, codec.encode(done)),
    ])
    wait_until(lambda: client.get(f"/api/v1/tasks/{task['id']}").json()["status"] == "succeeded",
               message="state update visible")
    got = client.get(f"/api/v1/tasks/{task['id']}").json()
    assert got["result"] == {"ok": True} and got["attempt"] == 1 and got["version"] == 3
    assert got["started_at"] == "2024-05-01T00:00:00.000000Z" and got["finished_at"] == "2024-05-01T00:00:01.000000Z"
    ids = lambda q: [t["id"] for t in client.get(f"/api/v1/tasks?{q}").json()["tasks"]]  # noqa: E731
    assert ids("status=succeeded") == [task["id"]]
    assert ids("status=pending") == []
    assert ids("status=succeeded&handler=images.resize") == [task["id"]]

    # an older version arriving late changes nothing
    produce_states(settings, [(key, codec.encode(replace(done, status="running", version=2)))])
    marker = submit(client)  # something after it, to know the late record was consumed
    later = replace(decode_state(marker), status="queued", version=2)
    produce_states(settings, [(marker["id"].encode(), codec.encode(later))])
    wait_until(lambda: client.get(f"/api/v1/tasks/{marker['id']}").json()["status"] == "queued")
    assert client.get(f"/api/v1/tasks/{task['id']}").json()["status"] == "succeeded"
    assert client.get("/readyz").status_code == 200  # poison on the topic did not kill the projection


def test_the_read_model_is_rebuilt_from_the_state_topic_at_startup(settings: Settings) -> None:
    with TestClient(create_app(settings)) as c:
        task = submit(c)
    state = replace(decode_state(task), status="queued", attempt=1, version=2)
    produce_states(settings, [(task["id"].encode(), codec.encode(state))])
    with TestClient(create_app(settings)) as c:
        wait_until(lambda: c.get("/readyz").status_code == 200, message="ready")
        wait_until(lambda: c.get(f"/api/v1/tasks/{task['id']}").status_code == 200)
        assert c.get(f"/api/v1/tasks/{task['id']}").json()["status"] == "queued"


# ------------------------------------------------------------------- listing


def test_list_newest_first_with_cursor_and_filters(client: TestClient) -> None:
    specs = [
        ("h1", "high"),
        ("h2", "low"),
        ("h1", "medium"),
        ("h2", "high"),
        ("h1", "high"),
        ("h3", "low"),
        ("h1", "low"),
    ]
    created = [submit(client, handler=h, priority=p) for h, p in specs]
    newest_first = [t["id"] for t in reversed(created)]

    body = client.get("/api/v1/tasks").json()
    assert [t["id"] for t in body["tasks"]] == newest_first and body["next_cursor"] is None
    stamps = [t["created_at"] for t in body["tasks"]]
    assert stamps == sorted(stamps, reverse=True)

    seen, cursor = [], None
    while True:
        url = "/api/v1/tasks?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url).json()
        assert len(page["tasks"]) <= 3
        seen += [t["id"] for t in page["tasks"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == newest_first

    def ids(q: str) -> list[str]:
        r = client.get(f"/api/v1/tasks?{q}")
        assert r.status_code == 200, r.text
        return [t["id"] for t in r.json()["tasks"]]

    def want(pred) -> list[str]:
        return [t["id"] for t in reversed(created) if pred(t)]

    assert ids("handler=h1") == want(lambda t: t["handler"] == "h1")
    assert ids("priority=high") == want(lambda t: t["priority"] == "high")
    assert ids("status=pending") == newest_first
    assert ids("status=running") == []
    assert ids("handler=h1&priority=low") == want(lambda t: t["handler"] == "h1" and t["priority"] == "low")
    assert (
        ids("handler=h1&priority=high&limit=1") == want(lambda t: t["handler"] == "h1" and t["priority"] == "high")[:1]
    )


@pytest.mark.parametrize("query, field", [
    ("limit=0", "limit"), ("limit=1001", "limit"), ("limit=abc", "limit"),
    ("status=done", "status"), ("priority=urgent", "priority"), ("cursor=!!!", "cursor"), ("cursor=Zm9v", "cursor"),
])
def test_bad_list_queries_are_problems_naming_the_parameter(client: TestClient, query: str, field: str) -> None:
    r = client.get(f"/api/v1/tasks?{query}")
    assert r.status_code in (400, 422)
    assert r.headers["content-type"] == PROBLEM
    assert field in r.json()["detail"]
    assert [e["field"] for e in r.json()["errors"]] == [field]


def test_limit_1000_is_allowed(client: TestClient) -> None:
    assert client.get("/api/v1/tasks?limit=1000").status_code == 200


# ---------------------------------------------------------------- bad input

FUTURE = (datetime.now(UTC) + timedelta(days=1)).isoformat()

BAD_BODIES = [
    ({}, "handler"),
    ({"handler": ""}, "handler"),
    ({"handler": "   "}, "handler"),
    ({"handler": "x" * 201}, "handler"),
    ({"handler": 5}, "handler"),
    ({"handler": "h", "priority": "urgent"}, "priority"),
    ({"handler": "h", "priority": 1}, "priority"),
    ({"handler": "h", "run_at": "tomorrow"}, "run_at"),
    ({"handler": "h", "run_at": "2024-05-01"}, "run_at"),
    ({"handler": "h", "run_at": "2024-05-01T12:00:00"}, "run_at"),  # no time zone
    ({"handler": "h", "run_at": 1714564800}, "run_at"),
    ({"handler": "h", "delay_s": -1}, "delay_s"),
    ({"handler": "h", "delay_s": "10"}, "delay_s"),
    ({"handler": "h", "delay_s": 11 * 366 * 86400}, "delay_s"),
    ({"handler": "h", "delay_s": 10, "run_at": "2024-05-01T12:00:00Z"}, "delay_s"),
    ({"handler": "h", "timeout_s": -1}, "timeout_s"),
    ({"handler": "h", "timeout_s": 0}, "timeout_s"),
    ({"handler": "h", "timeout_s": "10"}, "timeout_s"),
    ({"handler": "h", "depends_on": [""]}, "depends_on[0]"),
    ({"handler": "h", "depends_on": "abc"}, "depends_on"),
    ({"handler": "h", "depends_on": ["a", 5]}, "depends_on[1]"),
    ({"handler": "h", "depends_on": [f"t{i}" for i in range(1001)]}, "depends_on"),
    ({"handler": "h", "surprise": 1}, "surprise"),
    ({"handler": "h", "labels": {"a": 1}}, "labels.a"),
    ({"handler": "h", "labels": ["a"]}, "labels"),
    ({"handler": "h", "name": 3}, "name"),
    ({"handler": "h", "retry": {"max_attempts": 0}}, "retry.max_attempts"),
    ({"handler": "h", "retry": {"max_attempts": 101}}, "retry.max_attempts"),
    ({"handler": "h", "retry": {"max_attempts": "3"}}, "retry.max_attempts"),
    ({"handler": "h", "retry": {"backoff": {"initial_s": -1}}}, "retry.backoff.initial_s"),
    ({"handler": "h", "retry": {"backoff": {"initial_s": "1"}}}, "retry.backoff.initial_s"),
    ({"handler": "h", "retry": {"backoff": {"multiplier": 0.5}}}, "retry.backoff.multiplier"),
    ({"handler": "h", "retry": {"backoff": {"max_s": 0}}}, "retry.backoff.max_s"),
    ({"handler": "h", "retry": {"backoff": {"max_s": 7 * 24 * 3600 + 1}}}, "retry.backoff.max_s"),
    ({"handler": "h", "retry": {"backoff": {"jitter": 1.5}}}, "retry.backoff.jitter"),
    ({"handler": "h", "retry": {"backoff": {"jitter": -0.1}}}, "retry.backoff.jitter"),
    ({"handler": "h", "retry": {"backoff": {"factor": 2}}}, "retry.backoff.factor"),
    ({"handler": "h", "retry": {"backoff": 5}}, "retry.backoff"),
    ([{"handler": "h"}], "body"),
    ("just a string", "body"),
]


def test_bad_input_is_a_problem_naming_the_field_and_writes_nothing(client: TestClient, settings: Settings) -> None:
    for body, field in BAD_BODIES:
        r = client.post("/api/v1/tasks", json=body)
        assert r.status_code == 422, (body, r.status_code, r.text)
        assert r.headers["content-type"] == PROBLEM
        p = r.json()
        assert p["status"] == 422 and p["type"] and p["title"]
        assert field in p["detail"], (body, p)
        assert field in [e["field"] for e in p["errors"]], (body, p)
        assert all(e["message"] for e in p["errors"])
    for raw in (b"{not json", b'{"handler": "h",}', b"", b"\xff\xfe"):
        r = client.post("/api/v1/tasks", content=raw, headers={"content-type": "application/json"})
        assert r.status_code in (400, 422), (raw, r.text)
        assert r.headers["content-type"] == PROBLEM
        assert "body" in r.json()["detail"]

    assert topic_is_empty(settings, Topics(settings.prefix).events)
    assert client.get("/api/v1/tasks").json()["tasks"] == []


def test_past_present_and_future_run_at_are_accepted(client: TestClient, settings: Settings) -> None:
    assert submit(client, run_at="2001-02-03T04:05:06+02:00")["run_at"] == "2001-02-03T02:05:06.000000Z"
    assert submit(client, run_at=datetime.now(UTC).isoformat())["status"] == "scheduled"
    later = submit(client, run_at=FUTURE)
    assert later["status"] == "scheduled" and later["run_at"] == parse_rfc3339(FUTURE).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert client.get(f"/api/v1/tasks/{later['id']}").json()["status"] == "scheduled"
    created = [codec.decode(m.value()) for m in read_topic(settings, Topics(settings.prefix).events, 3)]
    assert [e.run_at for e in created if e.task_id == later["id"]] == [parse_rfc3339(FUTURE)]


def test_delay_s_runs_the_task_that_many_seconds_after_the_request(client: TestClient) -> None:
    before = datetime.now(UTC)
    later = submit(client, delay_s=600)
    after = datetime.now(UTC)
    assert later["status"] == "scheduled"
    assert before + timedelta(seconds=600) <= parse_rfc3339(later["run_at"]) <= after + timedelta(seconds=600)
    assert "delay_s" not in later  # the task shows when it runs, not how it was asked for
    batch = client.post("/api/v1/tasks:batch", json={"tasks": [{"handler": "h", "delay_s": 3600}]}).json()["tasks"]
    assert parse_rfc3339(batch[0]["run_at"]) >= before + timedelta(seconds=3600)
    r = client.post("/api/v1/workflows", json={"tasks": [{"key": "a", "handler": "h", "delay_s": -1}]})
    assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == ["tasks[0].delay_s"]


def test_bodies_over_the_limit_get_413_and_write_nothing(client: TestClient, settings: Settings) -> None:
    big = b'{"handler": "h", "payload": "' + b"x" * settings.max_body_bytes + b'"}'
    r = client.post("/api/v1/tasks", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM
    assert r.json()["status"] == 413

    def chunks():  # no Content-Length: chunked transfer encoding, counted as it streams
        yield b'{"handler": "h", "payload": "'
        for _ in range(20):
            yield b"y" * 65536
        yield b'"}'

    r = client.post("/api/v1/tasks", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM

    assert topic_is_empty(settings, Topics(settings.prefix).events)
    # under the body limit but over MAX_PAYLOAD_BYTES (compact JSON, quotes included): still a 413, naming the payload
    for size in (MAX_PAYLOAD_BYTES + 1, settings.max_body_bytes - 100):
        r = client.post("/api/v1/tasks", json={"handler": "h", "payload": "z" * (size - 2)})
        assert r.status_code == 413 and r.headers["content-type"] == PROBLEM, r.text
        assert r.json()["type"] == "urn:taskstream:problem:too-large"
        assert [e["field"] for e in r.json()["errors"]] == ["payload"] and "payload" in r.json()["detail"]
    assert topic_is_empty(settings, Topics(settings.prefix).events)
    ok = client.post("/api/v1/tasks", json={"handler": "h", "payload": "z" * (MAX_PAYLOAD_BYTES - 2)})
    assert ok.status_code == 202


def test_unknown_routes_and_methods_are_problems(client: TestClient) -> None:
    r = client.get("/api/v1/nothing")
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
    r = client.put("/api/v1/tasks")
    assert r.status_code == 405 and r.headers["content-type"] == PROBLEM


# ------------------------------------------------------------------- health


def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/api/v1/healthz").status_code == 404  # at the root only
    wait_until(lambda: client.get("/readyz").status_code == 200, message="ready")
    assert client.get("/readyz").json()["checks"] == {"broker": "ok", "topics": "ok", "read_model": "ok",
                                                   "producer": "ok"}


def test_readyz_503_when_topics_are_missing(broker: str, tmp_path) -> None:
    s = Settings(bootstrap_servers=broker, prefix="tnotopics" + str(time.monotonic_ns()), partitions=3,
                 data_dir=tmp_path / "data")
    with TestClient(create_app(s)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.headers["content-type"] == PROBLEM
        assert "topics missing" in r.json()["detail"] and Topics(s.prefix).events in r.json()["detail"]


def test_unreachable_broker_readyz_503_and_post_503(tmp_path) -> None:
    s = Settings(bootstrap_servers=f"127.0.0.1:{free_port()}", prefix="tdown", partitions=3,
                 data_dir=tmp_path / "data")
    with TestClient(create_app(s, produce_timeout_s=1.0)) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and r.headers["content-type"] == PROBLEM
        assert "broker unreachable" in r.json()["detail"]
        assert r.json()["checks"]["read_model"] == "catching up"
        r = c.post("/api/v1/tasks", json={"handler": "h"})
        assert r.status_code == 503 and r.headers["content-type"] == PROBLEM
        assert c.get("/api/v1/tasks").json()["tasks"] == []  # nothing half-written


def test_a_submit_answers_the_task_it_created_even_when_the_processors_next_state_was_read_first(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 202 of a create is its first version; the read model may already hold the processor's next one."""
    from taskstream.api import service
    from taskstream.streams import domain

    real_write = service.write
    store = client.app.state.context.read_model.store

    async def processor_first(ctx, records):
        failures = await real_write(ctx, records)
        for event, _ in records:  # the processor queued the task and the read model read that before the ack
            if isinstance(event, TaskCreated):
                created = domain.fold([event])
                store.apply(replace(created, status="queued", attempt=1, version=created.version + 1))
        return failures

    monkeypatch.setattr(service, "write", processor_first)
    r = client.post("/api/v1/tasks", json={"handler": "noop"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["status"], body["version"], body["attempt"]) == ("pending", 1, 0), body
    assert client.get(f"/api/v1/tasks/{body['id']}").json()["status"] in ("queued", "running", "succeeded")
