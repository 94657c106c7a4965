"""Backfilling a schedule in the pure core (issue 29 item 3).

``BackfillSchedule`` asks for a schedule's cron times in a past range;
``decide`` refuses what cannot be run (naming the field) and answers one
``ScheduleBackfilled`` counting the times; the processor's reaction to it is
one ``TaskCreated`` per time, oldest first, with ids derived from the
schedule, the time and ``overlap``, so that asking twice creates nothing new.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskstream.schemas import (
    CommandRejected,
    NotFound,
    ScheduleBackfilled,
    ScheduleCreated,
    ScheduleDeleted,
    ScheduleState,
    TaskCreated,
    ValidationError,
    codec,
    cron,
)
from taskstream.streams.domain import (
    MAX_BACKFILL,
    BackfillSchedule,
    backfill_task_id,
    backfill_times,
    decide,
    evolve,
    fold,
    react,
    schedule_task_id,
)

SID = "nightly"
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
NOW = datetime(2024, 4, 1, 12, 0, tzinfo=UTC)
TEMPLATE = {"handler": "report", "payload": {"kind": "daily"}, "priority": "low", "labels": {"team": "data"}}


def schedule(expr: str = "0 9 * * *", tz: str = "UTC") -> ScheduleState:
    created = ScheduleCreated(schedule_id=SID, occurred_at=T0, producer="api-1", cron=expr, timezone=tz,
                              template=json.dumps(TEMPLATE), name="nightly")
    state = fold([created])
    assert isinstance(state, ScheduleState)
    return state


def backfill(start: datetime, end: datetime, **kw) -> BackfillSchedule:
    return BackfillSchedule(schedule_id=SID, producer="api-1", start=start, end=end, **kw)


def day(d: int, hour: int = 9) -> datetime:
    return datetime(2024, 3, d, hour, tzinfo=UTC)


def run(state: ScheduleState, command: BackfillSchedule) -> tuple[ScheduleBackfilled, list[TaskCreated]]:
    """The API's decision, then the processor's fold and reaction: the event and the tasks it creates."""
    [event] = decide(state, command, NOW)
    assert isinstance(event, ScheduleBackfilled)
    after = evolve(state, event)
    tasks = react(state, after, event, NOW)
    assert all(isinstance(t, TaskCreated) for t in tasks)
    return event, tasks  # type: ignore[return-value]


def test_one_task_per_cron_time_of_the_range_oldest_first():
    event, tasks = run(schedule(), backfill(day(2), day(5)))
    assert event.count == 4
    assert [t.scheduled_for for t in tasks] == [day(2), day(3), day(4), day(5)]
    assert {t.handler for t in tasks} == {"report"}
    assert all(t.schedule_id == SID and codec.loads_json(t.payload) == {"kind": "daily"} for t in tasks)


def test_both_ends_are_inclusive_and_times_between_cron_times_add_nothing():
    _, tasks = run(schedule(), backfill(day(2, 8), day(4, 9)))
    assert [t.scheduled_for for t in tasks] == [day(2), day(3), day(4)]
    _, none = run(schedule(), backfill(day(2, 10), day(2, 20)))
    assert none == []


def test_skip_gives_the_schedules_own_ids_so_a_time_it_ran_is_a_duplicate():
    _, tasks = run(schedule(), backfill(day(2), day(3), overlap="skip"))
    assert [t.task_id for t in tasks] == [schedule_task_id(SID, day(2)), schedule_task_id(SID, day(3))]


def test_allow_gives_ids_of_its_own_still_one_per_time():
    _, allowed = run(schedule(), backfill(day(2), day(3), overlap="allow"))
    _, skipped = run(schedule(), backfill(day(2), day(3), overlap="skip"))
    assert {t.task_id for t in allowed}.isdisjoint({t.task_id for t in skipped})
    _, again = run(schedule(), backfill(day(2), day(3), overlap="allow"))
    assert [t.task_id for t in again] == [t.task_id for t in allowed]


def test_asking_twice_creates_the_same_tasks_and_a_task_created_twice_is_one_task():
    state = schedule()
    _, first = run(state, backfill(day(2), day(4)))
    _, second = run(state, backfill(day(3), day(6)))
    assert {t.task_id for t in first} & {t.task_id for t in second} == {
        schedule_task_id(SID, day(3)), schedule_task_id(SID, day(4))}
    task = fold([first[1]])
    assert fold([first[1], second[0]]) == task  # the repeat changes nothing


def test_the_schedules_time_zone_sets_the_times():
    paris = schedule("0 9 * * *", tz="Europe/Paris")
    # 9:00 in Paris is 8:00 UTC before 31 March 2024 and 7:00 UTC after (summer time).
    _, tasks = run(paris, backfill(datetime(2024, 3, 30, tzinfo=UTC), datetime(2024, 4, 1, tzinfo=UTC)))
    assert [t.scheduled_for for t in tasks] == [datetime(2024, 3, 30, 8, tzinfo=UTC),
                                                datetime(2024, 3, 31, 7, tzinfo=UTC)]


@pytest.mark.parametrize(("command", "field"), [
    (backfill(day(5), day(2)), "end"),
    (backfill(day(2), NOW + timedelta(seconds=1)), "end"),
    (backfill(day(2), day(3), overlap="replace"), "overlap"),
    (backfill(day(2), day(3), max_concurrent=0), "max_concurrent"),
])
def test_bad_requests_are_refused_naming_the_field(command, field):
    with pytest.raises(ValidationError) as e:
        decide(schedule(), command, NOW)
    assert e.value.field == field


def test_a_range_of_more_than_the_cap_is_refused_naming_end():
    every_minute = schedule("* * * * *")
    start = datetime(2024, 3, 2, tzinfo=UTC)
    with pytest.raises(ValidationError) as e:
        decide(every_minute, backfill(start, start + timedelta(minutes=MAX_BACKFILL)), NOW)
    assert e.value.field == "end"
    [ok] = decide(every_minute, backfill(start, start + timedelta(minutes=MAX_BACKFILL - 1)), NOW)
    assert isinstance(ok, ScheduleBackfilled) and ok.count == MAX_BACKFILL


def test_an_unknown_schedule_is_not_found_and_a_deleted_one_is_refused():
    with pytest.raises(NotFound):
        decide(None, backfill(day(2), day(3)), NOW)
    deleted = evolve(schedule(), ScheduleDeleted(schedule_id=SID, occurred_at=T0, producer="api-1"))
    with pytest.raises(CommandRejected):
        decide(deleted, backfill(day(2), day(3)), NOW)


def test_the_event_records_the_request_and_who_asked():
    event, _ = run(schedule(), backfill(day(2), day(3), overlap="allow", max_concurrent=2, actor="key-ops"))
    assert (event.start, event.end, event.overlap, event.max_concurrent, event.actor) == (
        day(2), day(3), "allow", 2, "key-ops")
    assert codec.decode(codec.encode(event)) == event


def test_folded_twice_the_reaction_is_the_same_tasks_with_the_same_event_ids():
    state = schedule()
    [event] = decide(state, backfill(day(2), day(4)), NOW)
    after = evolve(state, event)
    again = evolve(after, event)
    first = react(state, after, event, NOW)
    second = react(after, again, event, NOW)
    assert [(e.event_id, e.task_id) for e in first] == [(e.event_id, e.task_id) for e in second]


@settings(max_examples=60, deadline=None)
@given(
    expr=st.sampled_from(["0 9 * * *", "*/15 * * * *", "0 */6 * * 1-5", "30 2 * * *"]),
    tz=st.sampled_from(["UTC", "Europe/Paris", "America/New_York"]),
    start_h=st.integers(0, 24 * 20),
    span_h=st.integers(0, 24 * 5),
    overlap=st.sampled_from(["skip", "allow"]),
)
def test_any_range_creates_each_cron_time_once_in_order(expr, tz, start_h, span_h, overlap):
    state = schedule(expr, tz)
    start = T0 + timedelta(hours=start_h, minutes=7)
    end = start + timedelta(hours=span_h)
    expected, t = [], cron.next_fire(expr, tz, start - timedelta(microseconds=1))
    while t <= end:
        expected.append(t)
        t = cron.next_fire(expr, tz, t)
    event, tasks = run(state, backfill(start, end, overlap=overlap))
    assert event.count == len(expected) == len(tasks)
    assert [x.scheduled_for for x in tasks] == expected == backfill_times(state, start, end, limit=MAX_BACKFILL)
    assert [x.task_id for x in tasks] == [backfill_task_id(SID, x, overlap) for x in expected]
    assert len({x.task_id for x in tasks}) == len(tasks)


def test_max_concurrent_bounds_the_backfill_by_one_concurrency_key_of_its_own():
    state = schedule()
    event, tasks = run(state, backfill(day(2), day(6), max_concurrent=2))
    assert {(t.concurrency_key, t.concurrency_limit) for t in tasks} == {(f"backfill:{SID}:{event.event_id[:16]}", 2)}
    # another request has a key of its own; without max_concurrent the tasks carry none
    other, more = run(state, backfill(day(7), day(8), max_concurrent=2))
    assert more[0].concurrency_key != tasks[0].concurrency_key
    _, free = run(state, backfill(day(2), day(3)))
    assert {(t.concurrency_key, t.concurrency_limit) for t in free} == {(None, None)}
    # a bounded task waits for its slot instead of being queued at once
    created = fold([tasks[0]])
    assert created.concurrency_key == tasks[0].concurrency_key and created.status == "pending"
