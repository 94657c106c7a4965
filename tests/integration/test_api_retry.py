"""Retry policies and re-drive through the HTTP API, against the real broker (no processor).

States a processor would publish are written to ``<p>.state`` by the test;
what the API writes is read back from ``<p>.events``.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from taskstream.api import create_app
from taskstream.schemas import (
    Settings,
    TaskCheckpointed,
    TaskCreated,
    TaskRedriven,
    TaskState,
    TaskUpdated,
    Topics,
    codec,
)
from tests.conftest import wait_until
from tests.integration.test_api import PROBLEM, produce_states, read_topic, submit, topic_is_empty
from tests.kafka_helpers import send_events

pytestmark = pytest.mark.integration

V1 = "/api/v1"


@pytest.fixture
def client(settings: Settings):
    with TestClient(create_app(settings)) as c:
        yield c


def events(settings: Settings, count: int) -> list:
    return [codec.decode(m.value()) for m in read_topic(settings, Topics(settings.prefix).events, count)]


def publish(client: TestClient, settings: Settings, state: TaskState) -> dict:
    """Write ``state`` to ``<p>.state`` as the processor would and wait until the API shows it."""
    produce_states(settings, [(state.task_id.encode(), codec.encode(state))])
    return wait_until(
        lambda: (r := client.get(f"{V1}/tasks/{state.task_id}")).status_code == 200
        and r.json()["version"] == state.version and r.json(),
        message=f"version {state.version} of {state.task_id} in the read model",
    )


def a_state(task_id: str, status: str, **fields) -> TaskState:
    at = datetime.now(UTC) - timedelta(minutes=5)
    return TaskState(task_id=task_id, handler="h", status=status, priority="high", payload='{"n":1}',
                     created_at=at, updated_at=at, **fields)


# ------------------------------------------------------------ retry policy


def test_post_fills_every_backoff_field_and_shows_the_policy(client: TestClient, settings: Settings) -> None:
    given = submit(client, retry={"max_attempts": 5, "backoff": {"initial_s": 0.5, "multiplier": 3, "max_s": 60,
                                                                   "jitter": 0}})
    partial = submit(client, retry={"backoff": {"max_s": 10}})
    default = submit(client)
    assert given["retry"] == {"max_attempts": 5,
                              "backoff": {"initial_s": 0.5, "multiplier": 3.0, "max_s": 60.0, "jitter": 0.0}}
    assert given["max_attempts"] == 5
    s = settings
    assert partial["retry"] == {"max_attempts": s.default_max_attempts, "backoff": {
        "initial_s": s.default_backoff_initial_s, "multiplier": s.default_backoff_multiplier, "max_s": 10.0,
        "jitter": s.default_backoff_jitter}}
    assert default["retry"]["backoff"]["max_s"] == s.default_backoff_max_s
    for t in (given, partial, default):
        assert t["retry_at"] is None and t["checkpoint"] is None
        assert t["schedule_id"] is None and t["scheduled_for"] is None
        assert client.get(f"{V1}/tasks/{t['id']}").json()["retry"] == t["retry"]

    created = {e.task_id: e for e in events(settings, 3)}
    assert all(isinstance(e, TaskCreated) for e in created.values())
    e = created[given["id"]]
    assert (e.max_attempts, e.backoff_initial_s, e.backoff_multiplier, e.backoff_max_s, e.backoff_jitter) == (
        5, 0.5, 3.0, 60.0, 0.0)
    e = created[default["id"]]
    assert (e.max_attempts, e.backoff_initial_s, e.backoff_multiplier, e.backoff_max_s, e.backoff_jitter) == (
        s.default_max_attempts, s.default_backoff_initial_s, s.default_backoff_multiplier, s.default_backoff_max_s,
        s.default_backoff_jitter)


def test_batch_and_workflow_entries_carry_their_backoff(client: TestClient, settings: Settings) -> None:
    backoff = {"initial_s": 2, "multiplier": 1, "max_s": 2, "jitter": 0.5}
    r = client.post(f"{V1}/tasks:batch", json={"tasks": [{"handler": "h", "retry": {"backoff": backoff}}]})
    assert r.status_code == 202 and r.json()["tasks"][0]["retry"]["backoff"]["initial_s"] == 2.0
    r = client.post(f"{V1}/workflows", json={"tasks": [{"key": "a", "handler": "h", "retry": {"backoff": backoff}}]})
    assert r.status_code == 202
    for e in events(settings, 2):
        assert (e.backoff_initial_s, e.backoff_multiplier, e.backoff_max_s, e.backoff_jitter) == (2.0, 1.0, 2.0, 0.5)


def test_patch_changes_only_the_given_backoff_fields(client: TestClient, settings: Settings) -> None:
    task = submit(client, depends_on=["somewhere"], retry={"backoff": {"initial_s": 1, "max_s": 50}})
    r = client.patch(f"{V1}/tasks/{task['id']}", json={"retry": {"backoff": {"max_s": 20, "jitter": 0}}})
    assert r.status_code == 202, r.text
    assert r.json()["retry"]["backoff"] == {"initial_s": 1.0, "multiplier": settings.default_backoff_multiplier,
                                            "max_s": 20.0, "jitter": 0.0}
    assert r.json()["version"] == 2
    assert client.get(f"{V1}/tasks/{task['id']}").json()["retry"]["backoff"]["max_s"] == 20.0
    [upd] = [e for e in events(settings, 2) if isinstance(e, TaskUpdated)]
    assert (upd.backoff_initial_s, upd.backoff_multiplier, upd.backoff_max_s, upd.backoff_jitter) == (
        None, None, 20.0, 0.0)
    assert upd.max_attempts is None and upd.expected_version == 1


def test_future_run_at_is_scheduled_everywhere(client: TestClient, settings: Settings) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    one = submit(client, run_at=later)
    [batched] = client.post(f"{V1}/tasks:batch", json={"tasks": [{"handler": "h", "run_at": later}]}).json()["tasks"]
    wf = client.post(f"{V1}/workflows", json={"tasks": [{"key": "a", "handler": "h", "run_at": later}]}).json()
    assert one["status"] == batched["status"] == "scheduled"
    assert client.get(f"{V1}/tasks/{wf['tasks']['a']}").json()["status"] == "scheduled"
    pending = submit(client, depends_on=["x"])
    r = client.patch(f"{V1}/tasks/{pending['id']}", json={"run_at": later})
    assert r.status_code == 202 and r.json()["run_at"] is not None
    timed = {e.task_id for e in events(settings, 5) if e.run_at is not None}
    assert timed == {one["id"], batched["id"], wf["tasks"]["a"], pending["id"]}  # the last one by TaskUpdated


def test_task_json_shows_what_the_processor_publishes(client: TestClient, settings: Settings) -> None:
    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    shown = publish(client, settings, a_state(
        "t-waiting", "scheduled", attempt=2, max_attempts=4, version=6, retry_at=at, checkpoint='{"page": 7}',
        schedule_id="s-1", scheduled_for=at, backoff_initial_s=1.0, backoff_multiplier=2.0, backoff_max_s=8.0,
        backoff_jitter=0.0, error="boom"))
    assert shown["retry_at"] == shown["scheduled_for"] == "2030-01-02T03:04:05.000000Z"
    assert shown["checkpoint"] == {"page": 7} and shown["schedule_id"] == "s-1"
    assert shown["retry"] == {"max_attempts": 4, "backoff": {"initial_s": 1.0, "multiplier": 2.0, "max_s": 8.0,
                                                             "jitter": 0.0}}
    assert shown["status"] == "scheduled" and shown["attempt"] == 2 and shown["error"] == "boom"


# ----------------------------------------------------------------- re-drive


def test_retry_of_a_failed_task_writes_task_redriven(client: TestClient, settings: Settings) -> None:
    failed = a_state("t-failed", "failed", attempt=3, max_attempts=3, version=9, error="boom",
                     finished_at=datetime.now(UTC))
    publish(client, settings, failed)
    r = client.post(f"{V1}/tasks/t-failed/retry", json={"reason": "fixed the bug"})
    assert r.status_code == 202, r.text
    task = r.json()
    assert task["id"] == "t-failed" and task["status"] == "scheduled" and task["retry_at"] is not None
    assert task["version"] == 10 and task["finished_at"] is None and task["attempt"] == 3
    assert r.headers["etag"] == '"10"'
    assert client.get(f"{V1}/tasks/t-failed").json()["status"] == "scheduled"  # read-your-writes

    [msg] = read_topic(settings, Topics(settings.prefix).events, 1)
    assert msg.key() == b"t-failed" and dict(msg.headers())["event-type"] == b"TaskRedriven"
    event = codec.decode(msg.value())
    assert isinstance(event, TaskRedriven)
    assert event.task_id == "t-failed" and event.reason == "fixed the bug" and event.producer.startswith("api-")

    # the processor's own state replaces the API's expectation
    publish(client, settings, replace(failed, status="queued", attempt=4, attempt_offset=3, version=11,
                                      finished_at=None))
    assert client.get(f"{V1}/tasks/t-failed").json()["status"] == "queued"


def test_retry_of_an_upstream_failed_task_without_a_body(client: TestClient, settings: Settings) -> None:
    publish(client, settings, a_state("t-up", "upstream_failed", depends_on=["a", "b"], version=3,
                                      resolved={"a": "succeeded", "b": "failed"}, error="upstream b failed"))
    r = client.post(f"{V1}/tasks/t-up/retry")
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "pending" and r.json()["error"] is None and r.json()["version"] == 4
    [event] = events(settings, 1)
    assert isinstance(event, TaskRedriven) and event.task_id == "t-up" and event.reason == ""


def test_retry_is_409_unless_failed_404_if_unknown_422_on_a_bad_body(client: TestClient, settings: Settings) -> None:
    for status in ("pending", "scheduled", "queued", "running", "succeeded", "cancelled"):
        publish(client, settings, a_state(f"t-{status}", status, version=2))
        r = client.post(f"{V1}/tasks/t-{status}/retry", json={"reason": "again"})
        assert r.status_code == 409, (status, r.text)
        assert r.headers["content-type"] == PROBLEM and status in r.json()["detail"]
        assert client.get(f"{V1}/tasks/t-{status}").json()["version"] == 2
    r = client.post(f"{V1}/tasks/nope/retry")
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM and "nope" in r.json()["detail"]

    publish(client, settings, a_state("t-f", "failed", version=2))
    for body, field in (({"reason": 5}, "reason"), ({"reason": "x" * 1001}, "reason"), ({"why": "x"}, "why"),
                        ([1], "body")):
        r = client.post(f"{V1}/tasks/t-f/retry", json=body)
        assert r.status_code == 422, (body, r.text)
        assert field in [e["field"] for e in r.json()["errors"]], (body, r.json())
    assert client.get(f"{V1}/tasks/t-f").json()["status"] == "failed"
    assert topic_is_empty(settings, Topics(settings.prefix).events)


def test_history_shows_the_checkpoint_and_the_redrive(client: TestClient, settings: Settings) -> None:
    publish(client, settings, a_state("t-h", "failed", attempt=1, version=4, checkpoint='{"done": 3}'))
    send_events(settings, [TaskCheckpointed(task_id="t-h", occurred_at=datetime.now(UTC), producer="exec", attempt=1,
                                            data='{"done": 3}')])
    assert client.post(f"{V1}/tasks/t-h/retry", json={"reason": "go"}).status_code == 202
    history = client.get(f"{V1}/tasks/t-h/events").json()["events"]
    assert [e["type"] for e in history] == ["TaskCheckpointed", "TaskRedriven"]
    assert history[0]["data"] == {"done": 3} and history[0]["attempt"] == 1
    assert history[1]["reason"] == "go" and history[1]["attempt"] is None
