"""Cron schedules through the HTTP API, against the real broker (no processor).

What the API writes is read back from ``<p>.events``; ``ScheduleState``
records a processor would publish are written to ``<p>.state`` by the test.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Producer
from fastapi.testclient import TestClient

from taskstream.api import create_app
from taskstream.api.models import parse_rfc3339, template_json
from taskstream.schemas import (
    Heartbeat,
    ScheduleCreated,
    ScheduleDeleted,
    ScheduleState,
    Settings,
    TaskState,
    Topics,
    codec,
)
from taskstream.schemas.kafka import producer_config
from tests.conftest import wait_until
from tests.integration.test_api import PROBLEM, read_topic, topic_is_empty

pytestmark = pytest.mark.integration

V1 = "/api/v1"
EVERY_MINUTE = {"cron": "* * * * *", "task": {"handler": "report"}}


@pytest.fixture
def client(settings: Settings):
    with TestClient(create_app(settings)) as c:
        yield c


def events(settings: Settings, count: int) -> list:
    return read_topic(settings, Topics(settings.prefix).events, count)


def create(client: TestClient, **fields) -> dict:
    r = client.post(f"{V1}/schedules", json={**EVERY_MINUTE, **fields})
    assert r.status_code == 202, r.text
    return r.json()


def produce_to_state(settings: Settings, records: list[tuple[bytes, bytes]], partition: int = 0) -> None:
    """Records to one partition of ``<p>.state``, in order."""
    producer = Producer(producer_config(settings, "test-state-writer"))
    for key, value in records:
        producer.produce(Topics(settings.prefix).state, value, key, partition=partition)
    assert producer.flush(10) == 0


def as_state(body: dict, **changes) -> ScheduleState:
    parse = lambda s: None if s is None else parse_rfc3339(s)  # noqa: E731
    state = ScheduleState(
        schedule_id=body["id"], cron=body["cron"], timezone=body["timezone"], template=codec.dumps_json(body["task"]),
        status=body["status"], created_at=parse(body["created_at"]), updated_at=parse(body["updated_at"]),
        name=body["name"], start_at=parse(body["start_at"]), end_at=parse(body["end_at"]), misfire=body["misfire"],
        next_fire_at=parse(body["next_fire_at"]), version=body["version"],
    )
    return replace(state, **changes)


# ------------------------------------------------------------------- create


def test_post_writes_schedule_created_and_get_answers_at_once(client: TestClient, settings: Settings) -> None:
    before = datetime.now(UTC)
    r = client.post(f"{V1}/schedules", json={
        "cron": "0 9 * * 1-5", "timezone": "Europe/Paris", "name": "weekday report", "misfire": "skip",
        "end_at": "2099-01-01T00:00:00Z",
        "task": {"handler": "report", "payload": {"kind": "daily"}, "priority": "high", "labels": {"team": "ops"},
                 "timeout_s": 60, "retry": {"max_attempts": 2, "backoff": {"initial_s": 5}}},
    })
    assert r.status_code == 202, r.text
    s = r.json()
    assert r.headers["location"] == f"/api/v1/schedules/{s['id']}"
    assert (s["cron"], s["timezone"], s["name"], s["misfire"], s["status"]) == (
        "0 9 * * 1-5", "Europe/Paris", "weekday report", "skip", "active")
    assert s["end_at"] == "2099-01-01T00:00:00.000000Z" and s["start_at"] is None
    assert s["fired"] == s["skipped"] == 0 and s["last_fire_at"] is None and s["last_task_id"] is None
    assert s["version"] == 1 and s["created_at"] == s["updated_at"]
    first = parse_rfc3339(s["next_fire_at"])
    assert first > before and first.weekday() < 5
    assert first.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Paris")).hour == 9
    # the template in a task's shape (retry.backoff), as POST /tasks takes it; the log keeps it flat
    assert s["task"] == {
        "handler": "report", "payload": {"kind": "daily"}, "priority": "high", "name": "", "labels": {"team": "ops"},
        "timeout_s": 60.0, "retry": {"max_attempts": 2, "backoff": {
            "initial_s": 5.0, "multiplier": settings.default_backoff_multiplier,
            "max_s": settings.default_backoff_max_s, "jitter": settings.default_backoff_jitter}},
    }
    got = client.get(f"{V1}/schedules/{s['id']}")
    assert got.status_code == 200 and got.json() == s

    [msg] = events(settings, 1)
    assert msg.key() == s["id"].encode() and dict(msg.headers())["event-type"] == b"ScheduleCreated"
    e = codec.decode(msg.value())
    assert isinstance(e, ScheduleCreated) and e.task_id == s["id"] and e.producer.startswith("api-")
    assert (e.cron, e.timezone, e.name, e.misfire) == ("0 9 * * 1-5", "Europe/Paris", "weekday report", "skip")
    assert template_json(e.template) == s["task"] and codec.loads_json(e.template)["backoff_initial_s"] == 5.0
    assert e.end_at == datetime(2099, 1, 1, tzinfo=UTC)
    assert client.get(f"{V1}/schedules").json()["schedules"] == [s]


BAD = [
    ({"cron": "61 * * * *"}, "cron"),
    ({"cron": "every minute"}, "cron"),
    ({"cron": "0 0 30 2 *"}, "cron"),
    ({"cron": 5}, "cron"),
    ({"cron": None}, "cron"),
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"timezone": ""}, "timezone"),
    ({"start_at": "2030-01-02T00:00:00Z", "end_at": "2030-01-01T00:00:00Z"}, "end_at"),
    ({"end_at": "2001-01-01T00:00:00Z"}, "end_at"),
    ({"start_at": "soon"}, "start_at"),
    ({"misfire": "catch_up"}, "misfire"),
    ({"task": {"handler": ""}}, "task.handler"),
    ({"task": {"payload": {}}}, "task.handler"),
    ({"task": {"handler": "h", "run_at": "2030-01-01T00:00:00Z"}}, "task.run_at"),
    ({"task": {"handler": "h", "depends_on": ["a"]}}, "task.depends_on"),
    ({"task": {"handler": "h", "retry": {"backoff": {"multiplier": 0}}}}, "task.retry.backoff.multiplier"),
    ({"task": None}, "task"),
    ({"interval": 60}, "interval"),
]


def test_bad_schedules_are_422_naming_the_field_and_write_nothing(client: TestClient, settings: Settings) -> None:
    for fields, field in BAD:
        r = client.post(f"{V1}/schedules", json={**EVERY_MINUTE, **fields})
        assert r.status_code == 422, (fields, r.text)
        assert r.headers["content-type"] == PROBLEM
        assert field in [e["field"] for e in r.json()["errors"]], (fields, r.json())
        assert field in r.json()["detail"]
    r = client.post(f"{V1}/schedules", json={"cron": "* * * * *"})
    assert r.status_code == 422 and "task" in [e["field"] for e in r.json()["errors"]]
    big = {**EVERY_MINUTE, "task": {"handler": "h", "payload": "x" * 1_000_000}}
    r = client.post(f"{V1}/schedules", json=big)
    assert r.status_code == 413 and "task.payload" in r.json()["detail"]
    assert topic_is_empty(settings, Topics(settings.prefix).events)
    assert client.get(f"{V1}/schedules").json() == {"schedules": [], "next_cursor": None}


def test_start_at_sets_the_first_fire(client: TestClient) -> None:
    s = create(client, cron="30 * * * *", start_at="2090-05-01T10:30:00+02:00")
    assert s["next_fire_at"] == "2090-05-01T08:30:00.000000Z"  # at start_at: it counts
    assert s["start_at"] == "2090-05-01T08:30:00.000000Z"


def test_idempotency_key_returns_the_same_schedule(client: TestClient, settings: Settings) -> None:
    headers = {"Idempotency-Key": "nightly-1"}
    body = {**EVERY_MINUTE, "name": "nightly"}
    first = client.post(f"{V1}/schedules", json=body, headers=headers)
    again = client.post(f"{V1}/schedules", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    other = client.post(f"{V1}/schedules", json={**body, "cron": "*/2 * * * *"}, headers=headers)
    assert other.status_code == 422 and "Idempotency-Key" in [e["field"] for e in other.json()["errors"]]
    assert client.post(f"{V1}/schedules", json=body, headers={"Idempotency-Key": " "}).status_code == 422
    fresh = create(client, name="nightly")
    assert fresh["id"] != first.json()["id"]
    records = events(settings, 2)
    assert sorted(m.key().decode() for m in records) == sorted([first.json()["id"], fresh["id"]])


# ---------------------------------------------------------- delete, list, read model


def test_delete_writes_schedule_deleted_then_409_and_404(client: TestClient, settings: Settings) -> None:
    s = create(client)
    r = client.delete(f"{V1}/schedules/{s['id']}?reason=not%20needed")
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "deleted" and r.json()["version"] == 2 and r.json()["next_fire_at"] is None
    assert client.get(f"{V1}/schedules/{s['id']}").json()["status"] == "deleted"
    again = client.delete(f"{V1}/schedules/{s['id']}")
    assert again.status_code == 409 and again.headers["content-type"] == PROBLEM and "deleted" in again.json()["detail"]
    for r in (client.delete(f"{V1}/schedules/nope"), client.get(f"{V1}/schedules/nope")):
        assert r.status_code == 404 and r.headers["content-type"] == PROBLEM and "nope" in r.json()["detail"]
    created, deleted = (codec.decode(m.value()) for m in events(settings, 2))
    assert isinstance(created, ScheduleCreated) and isinstance(deleted, ScheduleDeleted)
    assert deleted.task_id == s["id"] and deleted.reason == "not needed"
    assert client.delete(f"{V1}/schedules/{s['id']}?reason=" + "x" * 1001).status_code == 422


def test_pause_resume_and_run_go_through_the_decider(client: TestClient, settings: Settings) -> None:
    s = create(client)
    r = client.post(f"{V1}/schedules/{s['id']}:pause?reason=holiday")
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "paused" and r.json()["next_fire_at"] is None and r.json()["version"] == 2
    assert client.get(f"{V1}/schedules/{s['id']}").json()["status"] == "paused"
    assert [x["id"] for x in client.get(f"{V1}/schedules?status=paused").json()["schedules"]] == [s["id"]]
    assert client.post(f"{V1}/schedules/{s['id']}:pause").json()["version"] == 2  # already paused: nothing written
    run = client.post(f"{V1}/schedules/{s['id']}:run")
    assert run.status_code == 202 and run.json()["status"] == "paused"  # a paused schedule runs on demand too
    task_id = run.json()["last_task_id"]
    assert task_id and run.headers["Location"] == f"/api/v1/tasks/{task_id}" and run.json()["fired"] == 1
    resumed = client.post(f"{V1}/schedules/{s['id']}:resume")
    assert resumed.status_code == 202 and resumed.json()["status"] == "active"
    assert parse_rfc3339(resumed.json()["next_fire_at"]) > datetime.now(UTC) - timedelta(seconds=1)
    written = [codec.decode(m.value()) for m in events(settings, 4)]
    assert [type(e).__name__ for e in written] == ["ScheduleCreated", "SchedulePaused", "ScheduleTriggered",
                                                    "ScheduleResumed"]
    assert written[1].reason == "holiday" and written[2].created_task_id == task_id
    assert client.post(f"{V1}/schedules/{s['id']}:stop").status_code in (404, 422)
    assert client.post(f"{V1}/schedules/nope:pause").status_code == 404
    client.delete(f"{V1}/schedules/{s['id']}")
    for action in ("pause", "resume", "run"):
        r = client.post(f"{V1}/schedules/{s['id']}:{action}")
        assert r.status_code == 409 and "deleted" in r.json()["detail"], (action, r.text)


def test_list_newest_first_with_cursor_and_status(client: TestClient) -> None:
    made = [create(client, name=f"s{i}") for i in range(5)]
    assert client.delete(f"{V1}/schedules/{made[1]['id']}").status_code == 202
    newest_first = [s["id"] for s in reversed(made)]
    seen, cursor = [], None
    while True:
        page = client.get(f"{V1}/schedules?limit=2" + (f"&cursor={cursor}" if cursor else "")).json()
        assert len(page["schedules"]) <= 2
        seen += [s["id"] for s in page["schedules"]]
        if not (cursor := page["next_cursor"]):
            break
    assert seen == newest_first
    assert [s["id"] for s in client.get(f"{V1}/schedules?status=deleted").json()["schedules"]] == [made[1]["id"]]
    assert len(client.get(f"{V1}/schedules?status=active").json()["schedules"]) == 4
    for bad, field in (("status=sleeping", "status"), ("limit=0", "limit"), ("cursor=Zm9v", "cursor")):
        r = client.get(f"{V1}/schedules?{bad}")
        assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == [field]


def test_read_model_projects_schedule_states_and_skips_other_records(client: TestClient, settings: Settings) -> None:
    s = create(client)
    fired_at = parse_rfc3339(s["next_fire_at"])
    processor_view = as_state(s, version=3, fired=2, skipped=1, last_fire_at=fired_at, last_task_id="t-made",
                              next_fire_at=fired_at + timedelta(minutes=1), updated_at=fired_at)
    now = datetime.now(UTC)
    task = TaskState(task_id="t-made", handler="report", status="queued", priority="medium", payload="{}",
                     created_at=now, updated_at=now, schedule_id=s["id"], scheduled_for=fired_at, version=2)
    heartbeat = Heartbeat(task_id="t-made", occurred_at=now, producer="exec", attempt=1)
    produce_to_state(settings, [
        (b"t-garbage", b"\x00not avro"),
        (b"t-made", codec.encode(heartbeat)),
        (s["id"].encode(), codec.encode(processor_view)),
        (b"t-made", codec.encode(task)),
    ])
    got = wait_until(lambda: (r := client.get(f"{V1}/tasks/t-made")).status_code == 200 and r.json(),
                     message="the task after the schedule state")
    assert got["schedule_id"] == s["id"] and got["scheduled_for"] == s["next_fire_at"]
    shown = client.get(f"{V1}/schedules/{s['id']}").json()
    assert shown["version"] == 3 and shown["fired"] == 2 and shown["skipped"] == 1
    assert shown["last_task_id"] == "t-made" and shown["last_fire_at"] == s["next_fire_at"]
    assert [t["id"] for t in client.get(f"{V1}/tasks").json()["tasks"]] == ["t-made"]
    assert [x["id"] for x in client.get(f"{V1}/schedules").json()["schedules"]] == [s["id"]]

    # an older version of a schedule never moves it backwards
    produce_to_state(settings, [(s["id"].encode(), codec.encode(replace(processor_view, version=2, fired=1))),
                                (b"t-made", codec.encode(replace(task, version=3)))])
    wait_until(lambda: client.get(f"{V1}/tasks/t-made").json()["version"] == 3, message="task version 3")
    assert client.get(f"{V1}/schedules/{s['id']}").json()["fired"] == 2

    # another (or a restarted) API builds schedules from <p>.state
    elsewhere = settings.model_copy(update={"data_dir": settings.data_dir.parent / "other-api"})
    with TestClient(create_app(elsewhere)) as other:
        wait_until(lambda: other.get(f"{V1}/schedules/{s['id']}").status_code == 200, message="rebuilt schedule")
        assert other.get(f"{V1}/schedules/{s['id']}").json()["fired"] == 2
