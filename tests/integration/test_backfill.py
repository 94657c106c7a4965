"""Backfilling a schedule end to end (issue 29 item 3): API, processor and executor on the real broker.

A schedule that fires every minute is backfilled over past minutes: one task
per cron time runs, in the schedule's template; asking again creates nothing
new; ``overlap=allow`` runs each time once more, under ids of its own.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from taskstream.client import Client, NotFound, ValidationFailed
from taskstream.schemas import cron
from tests.conftest import wait_until
from tests.integration.live_stack import LiveStack
from tests.integration.test_cli import _cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory):
    s = LiveStack(broker, tmp_path_factory.mktemp("backfill")).wait_ready()
    yield s
    s.stop()


@pytest.fixture
def client(stack):
    with Client(stack.url) as c:
        yield c


def minutes_between(start: datetime, end: datetime) -> list[datetime]:
    out, t = [], cron.next_fire("* * * * *", "UTC", start - timedelta(microseconds=1))
    while t <= end:
        out.append(t)
        t = cron.next_fire("* * * * *", "UTC", t)
    return out


def all_succeeded(client: Client, ids: list[str]) -> bool:
    """Every task exists (the processor created it from the backfill) and succeeded."""
    try:
        return all(client.get(i).status == "succeeded" for i in ids)
    except NotFound:
        return False


def label_count(client: Client, label: str) -> int:
    return sum(1 for _ in client.list(labels={"run": label}, page_size=100))


def test_backfill_runs_each_past_time_once_and_a_repeat_creates_nothing(client: Client, stack) -> None:
    run = uuid.uuid4().hex[:8]
    # first regular fire tomorrow: every version change of the schedule during the test is a backfill's
    schedule = client.create_schedule("* * * * *", {"handler": "echo", "payload": {"from": "backfill"},
                                                    "labels": {"run": run}},
                                      start_at=datetime.now(UTC) + timedelta(days=1))
    end = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    start = end - timedelta(minutes=4, seconds=30)
    expected = minutes_between(start, end)
    assert len(expected) == 5

    answer = client.backfill_schedule(schedule.id, start, end)
    assert answer["count"] == 5 and answer["overlap"] == "skip"
    assert [datetime.fromisoformat(t["scheduled_for"]) for t in answer["tasks"]] == expected
    ids = [t["id"] for t in answer["tasks"]]
    wait_until(lambda: all_succeeded(client, ids), timeout=60, interval=0.3,
               message="every backfilled task to succeed")
    for task_id, when in zip(ids, expected, strict=True):
        task = client.get(task_id).raw
        assert task["result"] == {"from": "backfill"} and task["schedule_id"] == schedule.id
        assert datetime.fromisoformat(task["scheduled_for"]) == when

    # the same times again, through the console script: the same ids, and no new task once the processor folded it
    version = client.get_schedule(schedule.id).raw["version"]
    r = subprocess.run([*_cli(), "schedules", "backfill", schedule.id, "--start", start.isoformat(), "--end",
                        end.isoformat(), "--json"], env=stack.env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert [t["id"] for t in json.loads(r.stdout)["tasks"]] == ids
    wait_until(lambda: client.get_schedule(schedule.id).raw["version"] > version, timeout=30, interval=0.2,
               message="the processor to fold the second backfill")
    assert label_count(client, run) == 5

    # overlap=allow: each time once more, under ids of its own, and still once however often asked
    version = client.get_schedule(schedule.id).raw["version"]
    allowed = client.backfill_schedule(schedule.id, start, end, overlap="allow")
    again = client.backfill_schedule(schedule.id, start, end, overlap="allow")
    new_ids = [t["id"] for t in allowed["tasks"]]
    assert [t["id"] for t in again["tasks"]] == new_ids and not set(new_ids) & set(ids)
    wait_until(lambda: all_succeeded(client, new_ids), timeout=60, interval=0.3,
               message="the allowed re-runs to succeed")
    wait_until(lambda: client.get_schedule(schedule.id).raw["version"] >= version + 2, timeout=30, interval=0.2,
               message="the processor to fold both allowed backfills")
    assert label_count(client, run) == 10


def test_bad_backfills_are_4xx_naming_the_field(client: Client) -> None:
    schedule = client.create_schedule("0 9 * * *", {"handler": "noop"})
    now = datetime.now(UTC)
    with pytest.raises(ValidationFailed) as e:
        client.backfill_schedule(schedule.id, now - timedelta(days=1), now + timedelta(days=1))
    assert "end" in str(e.value)
    with pytest.raises(ValidationFailed) as e:
        client.backfill_schedule(schedule.id, now - timedelta(days=1), now - timedelta(days=2))
    assert "end" in str(e.value)
    with pytest.raises(ValidationFailed) as e:
        client.backfill_schedule(schedule.id, now - timedelta(days=2), now, overlap="replace")
    assert "overlap" in str(e.value)
    with pytest.raises(NotFound):
        client.backfill_schedule("no-such-schedule", now - timedelta(days=2), now)
