"""Schedules at the HTTP edge: request checks, the task template, the schedule JSON and the schedule store."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError as PydanticValidationError

from taskstream.api.models import ScheduleIn, same_schedule, schedule_json, template_json
from taskstream.api.read_model import TaskStore
from taskstream.schemas import ScheduleState, Settings, TaskState, ValidationError, codec
from taskstream.streams.domain import decide, evolve

NOW = datetime(2024, 5, 1, 12, 0, 30, tzinfo=UTC)
SETTINGS = Settings(default_max_attempts=4, default_backoff_initial_s=2, default_backoff_multiplier=2,
                    default_backoff_max_s=30, default_backoff_jitter=0)


def schedule(**fields) -> ScheduleIn:
    return ScheduleIn.model_validate({"cron": "*/5 * * * *", "task": {"handler": "h"}, **fields})


def test_template_is_the_complete_task_with_defaults() -> None:
    body = schedule(task={"handler": "report", "payload": [1, "x"], "retry": {"backoff": {"max_s": 5}},
                          "labels": {"k": "v"}})
    (e,) = decide(None, body.to_command(schedule_id="s1", producer="api", settings=SETTINGS), NOW)
    assert e.task_id == "s1" and e.cron == "*/5 * * * *" and e.timezone == "UTC" and e.misfire == "run_once"
    assert codec.loads_json(e.template) == {
        "handler": "report", "payload": [1, "x"], "priority": "medium", "name": "", "labels": {"k": "v"},
        "timeout_s": None, "max_attempts": 4, "backoff_initial_s": 2.0, "backoff_multiplier": 2.0,
        "backoff_max_s": 5.0, "backoff_jitter": 0.0,
    }


def test_check_returns_the_first_fire_time_in_the_time_zone() -> None:
    assert schedule().check(NOW) == datetime(2024, 5, 1, 12, 5, tzinfo=UTC)
    # 09:00 in Paris is 07:00 UTC in summer time
    assert schedule(cron="0 9 * * *", timezone="Europe/Paris").check(NOW) == datetime(2024, 5, 2, 7, tzinfo=UTC)
    # the first fire at or after start_at
    assert schedule(start_at="2024-06-01T00:00:00Z").check(NOW) == datetime(2024, 6, 1, tzinfo=UTC)


@pytest.mark.parametrize("fields, field", [
    ({"cron": "61 * * * *"}, "cron"),
    ({"cron": "* * *"}, "cron"),
    ({"cron": "@daily"}, "cron"),
    ({"cron": "0 0 30 2 *"}, "cron"),  # February 30th never comes
    ({"cron": "*/99999999999999999999 * * * *"}, "cron"),  # croniter reads it as "at minute 0"
    ({"cron": "*/60 * * * *"}, "cron"),
    ({"cron": "0-59/61 * * * *"}, "cron"),
    ({"cron": "0 */24 * * *"}, "cron"),
    ({"cron": "0 0 1-31/31 * *"}, "cron"),
    ({"cron": "0 0 * */12 *"}, "cron"),
    ({"cron": "0 0 * * MON/7"}, "cron"),
    ({"cron": "0 0 * * 1,2/99"}, "cron"),
    ({"cron": "* * * * * */60"}, "cron"),
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"timezone": "../../etc/passwd"}, "timezone"),
    ({"start_at": "2024-06-01T00:00:00Z", "end_at": "2024-06-01T00:00:00Z"}, "end_at"),
    ({"start_at": "2024-06-02T00:00:00Z", "end_at": "2024-06-01T00:00:00Z"}, "end_at"),
    ({"end_at": "2024-05-01T12:01:00Z"}, "end_at"),  # no fire time before it
])
def test_check_names_the_field(fields: dict, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        schedule(**fields).check(NOW)
    assert info.value.field == field


@pytest.mark.parametrize("expr", ["*/59 * * * *", "10-40/5 * * * *", "0 */23 * * *", "0 0 */30 * *",
                                  "0 0 1 */11 *", "0 0 * * 0-6/6", "5,*/15 * * * *", "0 9 * * * */59"])
def test_steps_within_their_field_pass(expr: str) -> None:
    schedule(cron=expr).check(NOW)


@pytest.mark.parametrize("fields, loc", [
    ({"cron": 5}, ("cron",)),
    ({"cron": ""}, ("cron",)),
    ({"misfire": "catch_up"}, ("misfire",)),
    ({"start_at": "tomorrow"}, ("start_at",)),
    ({"end_at": "2024-05-01"}, ("end_at",)),
    ({"task": {"handler": "h", "run_at": "2024-05-01T00:00:00Z"}}, ("task", "run_at")),
    ({"task": {"handler": "h", "depends_on": ["a"]}}, ("task", "depends_on")),
    ({"task": {"handler": ""}}, ("task", "handler")),
    ({"task": {"handler": "h", "retry": {"backoff": {"jitter": 3}}}}, ("task", "retry", "backoff", "jitter")),
    ({"every": "5m"}, ("every",)),
])
def test_bad_fields_are_rejected_by_the_model(fields: dict, loc: tuple) -> None:
    with pytest.raises(PydanticValidationError) as info:
        schedule(**fields)
    assert [e["loc"] for e in info.value.errors()] == [loc]


def test_initial_state_json_and_same_schedule() -> None:
    e = schedule(name="five", misfire="skip", end_at="2025-01-01T00:00:00Z").to_command(
        schedule_id="s1", producer="api", settings=SETTINGS)
    state = evolve(None, decide(None, e, NOW)[0])
    js = schedule_json(state)
    assert js["id"] == "s1" and js["name"] == "five" and js["status"] == "active" and js["misfire"] == "skip"
    assert js["next_fire_at"] == "2024-05-01T12:05:00.000000Z" and js["end_at"] == "2025-01-01T00:00:00.000000Z"
    assert js["task"]["handler"] == "h" and js["fired"] == 0 and js["last_task_id"] is None and js["version"] == 1
    assert same_schedule(state, e)
    assert same_schedule(replace(state, template=codec.dumps_json(codec.loads_json(state.template))), e)
    assert not same_schedule(replace(state, cron="* * * * *"), e)
    other = schedule(name="five", misfire="skip", end_at="2025-01-01T00:00:00Z", task={"handler": "h2"}).to_command(
        schedule_id="s1", producer="api", settings=SETTINGS)
    assert not same_schedule(state, other)


def sched(sid: str, created: datetime, status: str = "active", version: int = 1) -> ScheduleState:
    return ScheduleState(schedule_id=sid, cron="* * * * *", timezone="UTC", template="{}", status=status,
                         created_at=created, updated_at=created, version=version)


def test_schedule_store_versions_lists_and_stays_apart_from_tasks(tmp_path) -> None:
    store = TaskStore(tmp_path / "db")
    try:
        s = store.schedules
        assert s.apply(sched("a", NOW))
        assert s.apply(sched("b", NOW + timedelta(seconds=1)))
        assert s.apply(sched("c", NOW + timedelta(seconds=2), status="deleted", version=2))
        assert not s.apply(sched("a", NOW, status="deleted"), only_if_absent=True)
        assert not s.apply(sched("c", NOW + timedelta(seconds=2), version=1))  # older version
        assert s.apply(sched("b", NOW + timedelta(seconds=1), status="ended", version=2), only_over_version=1)
        assert not s.apply(sched("b", NOW + timedelta(seconds=1), version=3), only_over_version=1)
        assert s.get("a").status == "active" and s.get("b").status == "ended" and s.get("nope") is None

        page, last = s.list(limit=2)
        assert [x.schedule_id for x in page] == ["c", "b"] and last is not None
        page, last = s.list(limit=2, after=last)
        assert [x.schedule_id for x in page] == ["a"] and last is None
        assert [x.schedule_id for x in s.list(status="ended")[0]] == ["b"]
        assert [x.schedule_id for x in s.list(status="active")[0]] == ["a"]

        # tasks and schedules do not see each other, even with the same id
        store.apply(TaskState(task_id="a", handler="h", status="pending", priority="low", payload="{}",
                              created_at=NOW, updated_at=NOW))
        assert [t.task_id for t in store.all_states()] == ["a"] and store.list()[0][0].handler == "h"
        assert s.get("a").cron == "* * * * *"
    finally:
        store.close()


def test_schedule_store_survives_a_reopen_without_rebuild(tmp_path) -> None:
    store = TaskStore(tmp_path / "db")
    store.schedules.apply(sched("a", NOW))
    store.close()
    store = TaskStore(tmp_path / "db", fresh=False)
    try:
        assert store.schedules.get("a").schedule_id == "a"
    finally:
        store.close()
    store = TaskStore(tmp_path / "db")  # fresh: rebuilt from the topic, so empty
    try:
        assert store.schedules.get("a") is None
    finally:
        store.close()


def test_a_template_reads_back_in_the_shape_of_a_task() -> None:
    body = schedule(task={"handler": "report", "retry": {"max_attempts": 2, "backoff": {"initial_s": 5}}})
    (e,) = decide(None, body.to_command(schedule_id="s1", producer="api", settings=SETTINGS), NOW)
    shown = template_json(e.template)
    assert shown["retry"]["max_attempts"] == 2 and shown["retry"]["backoff"]["initial_s"] == 5.0
    assert set(shown["retry"]["backoff"]) == {"initial_s", "multiplier", "max_s", "jitter"}
    assert not any(k == "max_attempts" or k.startswith("backoff_") for k in shown)
    # what the API shows is what POST /schedules (and POST /tasks) take: it validates and gives the same template
    again = schedule(task=shown)
    (e2,) = decide(None, again.to_command(schedule_id="s1", producer="api", settings=SETTINGS), NOW)
    assert codec.loads_json(e2.template) == codec.loads_json(e.template)
