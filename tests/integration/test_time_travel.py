"""Time travel through the API: ``GET /tasks/{id}?as_of=`` folds the log on the real broker.

No processor runs: a test writes a task's events to the log and, as a
processor would, its latest state to ``<p>.state`` so that the read model
knows the task (a task it does not know is a 404 without reading the log).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from taskstream.api import create_app
from taskstream.schemas import (
    ScheduleCreated,
    TaskCreated,
    TaskFailed,
    TaskQueued,
    TaskRetryScheduled,
    TaskSucceeded,
    Topics,
    codec,
    new_id,
)
from taskstream.streams import domain
from tests.conftest import wait_until
from tests.kafka_helpers import producer, send_events

pytestmark = pytest.mark.integration

T0 = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def z(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


def write_known(settings, client, events) -> None:
    """``events`` into the log, the state they fold to into ``<p>.state``; return once the read model has it."""
    send_events(settings, events)
    state = domain.fold_log(events)
    p = producer(settings)
    p.produce(Topics(settings.prefix).state, codec.encode(state), state.task_id.encode())
    assert p.flush(10) == 0
    wait_until(lambda: client.get(f"/api/v1/tasks/{state.task_id}").status_code == 200, message="task in read model")


def history(task_id: str):
    return [
        TaskCreated(task_id=task_id, occurred_at=at(0), producer="test", handler="noop", max_attempts=2,
                    payload='{"x": 1}'),
        TaskQueued(task_id=task_id, occurred_at=at(1), producer="p", attempt=1, priority="medium"),
        TaskFailed(task_id=task_id, occurred_at=at(3), producer="ex", attempt=1, error="boom", started_at=at(2)),
        TaskRetryScheduled(task_id=task_id, occurred_at=at(3), producer="p", attempt=1, not_before=at(5),
                           delay_s=2.0, priority="medium"),
        TaskQueued(task_id=task_id, occurred_at=at(5), producer="relay", attempt=2, priority="medium", due_at=at(5)),
        TaskSucceeded(task_id=task_id, occurred_at=at(7), producer="ex", attempt=2, result='{"ok": true}',
                      started_at=at(6)),
    ]


def test_as_of_shows_the_task_as_it_was(settings, client):
    tid = new_id()
    write_known(settings, client, history(tid))
    url = f"/api/v1/tasks/{tid}"

    def get(t: datetime | str):
        return client.get(url, params={"as_of": t if isinstance(t, str) else z(t)})

    r = get(at(0))
    assert r.status_code == 200, r.text
    assert (r.json()["id"], r.json()["status"], r.json()["version"]) == (tid, "pending", 1)
    assert get(at(1.5)).json()["status"] == "queued"
    mid = get(at(4)).json()
    assert (mid["status"], mid["attempt"], mid["error"], mid["retry_at"]) == ("scheduled", 1, "boom", z(at(5)))
    end = get(at(7)).json()
    assert (end["status"], end["attempt"], end["result"], end["finished_at"]) == (
        "succeeded",
        2,
        {"ok": True},
        z(at(7)),
    )
    # the same instant with another zone offset
    assert get((at(4) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+02:00")).json()["status"] == "scheduled"
    # without as_of: the read model's (latest) state
    assert client.get(url).json()["status"] == "succeeded"


def test_as_of_before_the_task_existed_is_404(settings, client):
    tid = new_id()
    write_known(settings, client, history(tid))
    r = client.get(f"/api/v1/tasks/{tid}", params={"as_of": z(at(-0.001))})
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "did not exist" in r.json()["detail"]
    other = client.get(f"/api/v1/tasks/{new_id()}", params={"as_of": z(at(10))})
    assert other.status_code == 404


def test_a_schedule_id_is_not_a_task(settings, client):
    sid = new_id()
    send_events(settings, [ScheduleCreated(schedule_id=sid, occurred_at=at(0), producer="t", cron="* * * * *")])
    assert client.get(f"/api/v1/tasks/{sid}", params={"as_of": z(at(1))}).status_code == 404


@pytest.mark.parametrize("bad", ["yesterday", "2026-05-01", "2026-05-01T09:00:00", "2026-13-01T09:00:00Z", ""])
def test_as_of_not_rfc3339_is_422_naming_it(client, bad):
    r = client.get(f"/api/v1/tasks/{new_id()}", params={"as_of": bad})
    assert r.status_code == 422, r.text
    assert "as_of" in r.text
