"""Cron schedules in the pure core (issue 5): fold, fire decisions, misfire policy and time zones.

A schedule's events carry its id in ``task_id``. ``ScheduleCreated`` sets the
first fire time (at or after ``start_at``; ``end_at`` inclusive), each
``ScheduleFired`` advances it exactly once and decides exactly one
``TaskCreated`` with the deterministic id ``schedule_task_id(schedule,
fire_at)``, ``ScheduleDeleted`` stops it. ``schedule_due`` is what the
processor's timer appends at a given time: the next fire, the catch-up of
fires missed by at most the grace, or one misfire decision for older ones.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskstream.schemas import (
    CommandRejected,
    NotFound,
    ScheduleCreated,
    ScheduleDeleted,
    ScheduleFired,
    ScheduleState,
    TaskCreated,
    codec,
    cron,
)
from taskstream.streams import domain
from taskstream.streams.domain import (
    decide,
    evolve,
    fold,
    on_timer,
    react,
    replay_outputs,
    schedule_due,
    schedule_task_id,
    task_from_template,
    timer_due,
)

SID = "sched-1"
T0 = datetime(2024, 1, 1, 10, 0, 0, 250000, tzinfo=UTC)  # a quarter second past a minute
TEMPLATE = {
    "handler": "report", "payload": {"kind": "daily", "n": [1, 2]}, "priority": "low", "name": "nightly",
    "labels": {"team": "data"}, "timeout_s": 30.0, "max_attempts": 4, "backoff_initial_s": 2.0,
    "backoff_multiplier": 3.0, "backoff_max_s": 60.0, "backoff_jitter": 0.2,
}


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def minute(m: int) -> datetime:
    """The m-th whole minute after T0's minute (10:00 + m)."""
    return datetime(2024, 1, 1, 10, 0, tzinfo=UTC) + timedelta(minutes=m)


def created(expr: str = "* * * * *", **kw) -> ScheduleCreated:
    fields = dict(schedule_id=SID, occurred_at=T0, producer="api-1", cron=expr, timezone="UTC",
                  template=json.dumps(TEMPLATE), name="sched")
    fields.update(kw)
    return ScheduleCreated(**fields)


def fired(fire_at: datetime, t: datetime | None = None, task_id: str | None = None, skipped: int = 0) -> ScheduleFired:
    return ScheduleFired(schedule_id=SID, occurred_at=t or fire_at, producer="processor", fire_at=fire_at,
                         created_task_id=schedule_task_id(SID, fire_at) if task_id is None else task_id,
                         skipped=skipped)


def deleted(t: datetime) -> ScheduleDeleted:
    return ScheduleDeleted(schedule_id=SID, occurred_at=t, producer="api-1", reason="done")


def catch_up(state: ScheduleState, now: datetime, grace_s: float = 60.0):
    """The processor's timer at ``now``: fire while due, folding each fire and collecting the tasks it creates."""
    fires, tasks = [], []
    for _ in range(100_000):
        f = schedule_due(state, now, grace_s)
        if f is None:
            return state, fires, tasks
        [timer] = on_timer(state, now, grace_s)
        assert replace(timer, event_id=f.event_id) == f
        before, state = state, evolve(state, f)
        assert state is not before, "a due fire must advance the schedule"
        out = react(before, state, f, now)
        assert all(type(x) is TaskCreated for x in out)
        fires.append(f)
        tasks += out
    raise AssertionError("the schedule never caught up")


# -------------------------------------------------------------------- created


def test_created_fires_first_at_the_next_cron_time():
    s = evolve(None, created())
    assert s == ScheduleState(
        schedule_id=SID, cron="* * * * *", timezone="UTC", template=json.dumps(TEMPLATE), status="active",
        created_at=T0, updated_at=T0, name="sched", next_fire_at=minute(1), version=1,
    )
    assert s.task_id == SID and timer_due(s, 5.0) == minute(1)
    assert evolve(s, created(occurred_at=at(99), cron="0 0 * * *")) is s  # a duplicate ScheduleCreated
    assert react(None, s, created(), T0) == []  # the first fire comes from the timer


@pytest.mark.parametrize(
    ("start_at", "first"),
    [
        (minute(5), minute(5)),  # a fire time equal to start_at counts ("at or after")
        (minute(5) + timedelta(seconds=1), minute(6)),
        (minute(5) - timedelta(microseconds=1), minute(5)),
        (T0 - timedelta(days=1), minute(1)),  # a start_at in the past: the next fire after creation
        (None, minute(1)),
    ],
    ids=["on_a_fire_time", "just_after", "just_before", "past", "none"],
)
def test_first_fire_is_at_or_after_start_at(start_at, first):
    assert evolve(None, created(start_at=start_at)).next_fire_at == first


@pytest.mark.parametrize(
    ("end_at", "status", "first"),
    [
        (minute(1) - timedelta(microseconds=1), "ended", None),
        (minute(1), "active", minute(1)),  # end_at is inclusive (as the API validates it)
        (minute(30), "active", minute(1)),
    ],
    ids=["before_first", "on_first", "later"],
)
def test_end_at_before_the_first_fire_ends_it_at_once(end_at, status, first):
    s = evolve(None, created(end_at=end_at))
    assert (s.status, s.next_fire_at) == (status, first)
    if status == "ended":
        assert timer_due(s, 5.0) is None and schedule_due(s, at(10**6), 60.0) is None


def test_an_invalid_expression_in_the_log_never_fires():
    s = evolve(None, created("not a cron"))
    assert (s.status, s.next_fire_at) == ("ended", None)
    assert schedule_due(s, at(10**6), 60.0) is None


def test_six_fields_fire_every_second():
    assert evolve(None, created("* * * * * *")).next_fire_at == datetime(2024, 1, 1, 10, 0, 1, tzinfo=UTC)


# ---------------------------------------------------------------------- fired


def test_a_fire_advances_once_and_creates_one_task():
    s = evolve(None, created())
    e = fired(minute(1), t=minute(1) + timedelta(milliseconds=3))
    new = evolve(s, e)
    tid = schedule_task_id(SID, minute(1))
    assert new == replace(s, last_fire_at=minute(1), last_task_id=tid, fired=1, next_fire_at=minute(2),
                          updated_at=e.occurred_at, version=2)
    [t] = react(s, new, e, minute(1))
    assert (type(t), t.task_id, t.scheduled_for, t.schedule_id, t.occurred_at) == (
        TaskCreated, tid, minute(1), SID, minute(1))
    # the same fire again (a duplicate, a replayed timer) or an older one changes nothing and creates nothing
    for again in (e, fired(minute(1), t=minute(1) + timedelta(seconds=1)), fired(minute(0)), fired(at(-3600))):
        assert evolve(new, again) is new
        assert react(new, new, again, minute(2)) == []
    # decide on a fired event always names the task by the schedule and the fire time
    assert [x.task_id for x in decide(new, e, minute(1))] == [tid]


def test_task_ids_are_deterministic_per_schedule_and_fire_time():
    a = schedule_task_id(SID, minute(1))
    assert a == schedule_task_id(SID, minute(1)) and len(a) == 32 and int(a, 16) >= 0
    assert len({schedule_task_id(s, minute(m)) for s in (SID, "sched-2") for m in range(100)}) == 200
    assert schedule_task_id(SID, minute(1)) == schedule_task_id(SID, datetime(2024, 1, 1, 10, 1, tzinfo=UTC))


def test_the_created_task_is_the_template():
    s = evolve(None, created())
    t = task_from_template(s, minute(7), "tid-7", minute(8))
    assert t == TaskCreated(
        task_id="tid-7", occurred_at=minute(8), producer=domain.PROCESSOR, event_id=t.event_id, handler="report",
        priority="low", payload=codec.dumps_json({"kind": "daily", "n": [1, 2]}), name="nightly",
        labels={"team": "data"}, timeout_s=30.0, max_attempts=4, backoff_initial_s=2.0, backoff_multiplier=3.0,
        backoff_max_s=60.0, backoff_jitter=0.2, schedule_id=SID, scheduled_for=minute(7),
    )
    assert codec.decode(codec.encode(t)) == t


@pytest.mark.parametrize("template", ["{}", "not json", "[1, 2]", '{"handler": "h", "max_attempts": true}'])
def test_a_bad_template_in_the_log_still_makes_a_task(template):
    s = evolve(None, created(template=template))
    t = task_from_template(s, minute(1), "tid", minute(1))
    assert (t.priority, t.payload, t.name, t.max_attempts, t.scheduled_for) == ("medium", "null", "sched", 1, minute(1))
    assert codec.decode(codec.encode(t)) == t


def test_the_last_fire_before_end_at_ends_the_schedule():
    s = evolve(None, created(end_at=minute(2)))
    s = evolve(s, fired(minute(1)))
    assert (s.status, s.next_fire_at) == ("active", minute(2))  # inclusive
    s = evolve(s, fired(minute(2)))
    assert (s.status, s.next_fire_at, s.fired) == ("ended", None, 2)
    assert timer_due(s, 5.0) is None and schedule_due(s, minute(10), 60.0) is None
    assert evolve(s, fired(minute(3))) is s


def test_replay_outputs_send_the_last_task_again():
    s = evolve(None, created())
    assert replay_outputs(s, T0) == []
    s = evolve(s, fired(minute(1)))
    [t] = replay_outputs(s, minute(2))
    assert (t.task_id, t.scheduled_for) == (schedule_task_id(SID, minute(1)), minute(1))


# -------------------------------------------------------------------- deleted


def test_delete_stops_it():
    s = fold([created(), fired(minute(1))])
    e = deleted(minute(1) + timedelta(seconds=10))
    new = evolve(s, e)
    assert new == replace(s, status="deleted", next_fire_at=None, updated_at=e.occurred_at, version=s.version + 1)
    assert evolve(new, e) is new and evolve(new, deleted(minute(5))) is new
    assert timer_due(new, 5.0) is None
    assert schedule_due(new, minute(30), 60.0) is None and on_timer(new, minute(30), 60.0) == []
    assert evolve(new, fired(minute(2))) is new  # a fire decided before the delete was folded
    assert evolve(None, e) is None


# ---------------------------------------------------- pause, resume, run now


def _decided(state, command, now):
    return decide(state, command, now)


def test_pause_stops_the_fires_and_resume_restarts_from_the_next_time_after_it():
    s = fold([created(), fired(minute(1))])
    [p] = _decided(s, domain.PauseSchedule(schedule_id=SID, producer="api-1", reason="holiday", actor="k1"), at(70))
    assert (type(p).__name__, p.reason, p.actor) == ("SchedulePaused", "holiday", "k1")
    paused = evolve(s, p)
    assert paused.status == "paused" and paused.next_fire_at is None and paused.version == s.version + 1
    assert timer_due(paused, 5.0) is None and schedule_due(paused, minute(30), 60.0) is None
    assert evolve(paused, p) is paused  # folded twice
    assert _decided(paused, domain.PauseSchedule(schedule_id=SID, producer="api-1"), at(80)) == []  # a duplicate
    [r] = _decided(paused, domain.ResumeSchedule(schedule_id=SID, producer="api-1"), minute(10) + timedelta(seconds=5))
    resumed = evolve(paused, r)
    # minutes 2..10 passed while paused: skipped, not caught up; the next fire is the first after the resume
    assert resumed.status == "active" and resumed.next_fire_at == minute(11)
    assert schedule_due(resumed, minute(11), 60.0).fire_at == minute(11)
    assert evolve(resumed, r) is resumed
    assert _decided(resumed, domain.ResumeSchedule(schedule_id=SID, producer="api-1"), minute(12)) == []


def test_resume_past_end_at_ends_it():
    s = fold([created(end_at=minute(3))])
    paused = evolve(s, _decided(s, domain.PauseSchedule(schedule_id=SID, producer="a"), at(1))[0])
    [r] = _decided(paused, domain.ResumeSchedule(schedule_id=SID, producer="a"), minute(5))
    assert evolve(paused, r).status == "ended"


def test_pause_resume_and_run_of_a_deleted_or_unknown_schedule_are_refused():
    gone = fold([created(), deleted(at(1))])
    for command in (domain.PauseSchedule, domain.ResumeSchedule, domain.RunSchedule):
        with pytest.raises(CommandRejected, match="deleted"):
            _decided(gone, command(schedule_id=SID, producer="a"), at(2))
        with pytest.raises(NotFound):
            _decided(None, command(schedule_id=SID, producer="a"), at(2))
    ended = fold([created(end_at=minute(1)), fired(minute(1))])
    assert ended.status == "ended"
    with pytest.raises(CommandRejected, match="only an active"):
        _decided(ended, domain.PauseSchedule(schedule_id=SID, producer="a"), minute(2))
    with pytest.raises(CommandRejected, match="only a paused"):
        _decided(ended, domain.ResumeSchedule(schedule_id=SID, producer="a"), minute(2))


def test_run_now_creates_one_task_from_the_template_without_moving_the_cron():
    s = fold([created(), fired(minute(1))])
    now = at(75)
    [t] = _decided(s, domain.RunSchedule(schedule_id=SID, producer="api-1", actor="k1"), now)
    assert type(t).__name__ == "ScheduleTriggered" and t.actor == "k1"
    assert t.created_task_id == domain.schedule_run_task_id(SID, now) != schedule_task_id(SID, now)
    after = evolve(s, t)
    assert after.next_fire_at == s.next_fire_at == minute(2) and after.status == "active"
    assert (after.fired, after.last_task_id, after.last_fire_at) == (s.fired + 1, t.created_task_id, now)
    assert evolve(after, t) is after  # folded twice: counted once
    [task] = react(s, after, t, now)
    assert isinstance(task, TaskCreated) and task.task_id == t.created_task_id and task.handler == "report"
    assert (task.schedule_id, task.scheduled_for) == (SID, now)
    assert react(after, after, t, now) == []  # a duplicate creates nothing
    [again] = replay_outputs(after, at(90))  # crash repair: the same task again (a duplicate id)
    assert again.task_id == t.created_task_id
    paused = evolve(s, _decided(s, domain.PauseSchedule(schedule_id=SID, producer="a"), at(70))[0])
    [t2] = _decided(paused, domain.RunSchedule(schedule_id=SID, producer="a"), now)  # a paused one runs too
    assert evolve(paused, t2).status == "paused"


# -------------------------------------------------------------- schedule_due


def test_nothing_is_due_before_the_fire_time():
    s = evolve(None, created())
    assert schedule_due(s, minute(1) - timedelta(microseconds=1), 60.0) is None


def test_on_time_it_fires_the_next_fire_time():
    s = evolve(None, created())
    now = minute(1) + timedelta(milliseconds=40)
    f = schedule_due(s, now, 60.0)
    assert (f.task_id, f.fire_at, f.created_task_id, f.skipped, f.occurred_at) == (
        SID, minute(1), schedule_task_id(SID, minute(1)), 0, now)
    s, fires, tasks = catch_up(s, now)
    assert [x.fire_at for x in fires] == [minute(1)] and s.next_fire_at == minute(2)
    assert [(t.task_id, t.scheduled_for) for t in tasks] == [(schedule_task_id(SID, minute(1)), minute(1))]


def test_a_ten_second_outage_within_the_grace_fires_each_missed_second_once():
    s = evolve(None, created("* * * * * *"))
    first = s.next_fire_at
    now = first + timedelta(seconds=9, milliseconds=500)  # down for 10 fire times
    s, fires, tasks = catch_up(s, now, grace_s=60.0)
    times = [first + timedelta(seconds=i) for i in range(10)]
    assert [f.fire_at for f in fires] == times
    assert [t.scheduled_for for t in tasks] == times
    assert len({t.task_id for t in tasks}) == 10 and all(f.skipped == 0 for f in fires)
    assert (s.fired, s.skipped, s.next_fire_at) == (10, 0, first + timedelta(seconds=10))
    # the processor restarts and runs the same timer again: nothing more
    assert schedule_due(s, now, 60.0) is None
    # replaying the fires folds to the same state and re-creates the same task ids
    again, _f, tasks2 = catch_up(evolve(None, created("* * * * * *")), now, grace_s=60.0)
    assert again == s and [t.task_id for t in tasks2] == [t.task_id for t in tasks]


@pytest.mark.parametrize("misfire", ["run_once", "skip"])
def test_beyond_the_grace_one_decision_for_the_old_fires_then_catch_up(misfire):
    s = fold([created(misfire=misfire), fired(minute(1))])
    now = minute(11) + timedelta(seconds=30)  # down from 10:01 to 10:11:30; grace 60 s -> horizon 10:10:30
    s2, fires, tasks = catch_up(s, now, grace_s=60.0)
    old = fires[0]
    assert old.fire_at == minute(10)  # the latest fire time older than the grace
    if misfire == "run_once":
        assert (old.skipped, old.created_task_id) == (8, schedule_task_id(SID, minute(10)))  # 10:02 .. 10:09
    else:
        assert (old.skipped, old.created_task_id) == (9, "")  # 10:02 .. 10:10
    # then the fire within the grace runs as usual
    assert [(f.fire_at, f.skipped) for f in fires[1:]] == [(minute(11), 0)]
    expected = ([minute(10)] if misfire == "run_once" else []) + [minute(11)]
    assert [t.scheduled_for for t in tasks] == expected
    assert (s2.fired, s2.skipped, s2.next_fire_at) == (1 + len(expected), s.skipped + old.skipped, minute(12))
    assert s2.last_task_id == schedule_task_id(SID, minute(11))


def test_a_skip_decision_creates_nothing():
    s = evolve(None, created(misfire="skip"))
    f = schedule_due(s, minute(100), 60.0)
    new = evolve(s, f)
    assert react(s, new, f, minute(100)) == []
    # horizon 10:99 (grace 60 s): 10:01 .. 10:99 dropped, 10:100 is within the grace and fires next
    assert (new.fired, new.last_task_id, new.skipped, new.last_fire_at, new.next_fire_at) == (
        0, None, 99, minute(99), minute(100))
    assert replay_outputs(new, minute(100)) == []


def test_a_very_long_outage_counts_skipped_fires_up_to_the_cap():
    s = evolve(None, created("* * * * * *"))
    f = schedule_due(s, s.next_fire_at + timedelta(days=2), 60.0)
    assert f.skipped == domain.MISSED_COUNT_CAP - 1
    assert f.fire_at == s.next_fire_at + timedelta(days=2, seconds=-60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    wakes=st.lists(st.floats(0, 600, allow_nan=False), min_size=1, max_size=8),
    grace=st.sampled_from([0.0, 5.0, 60.0]),
    misfire=st.sampled_from(["run_once", "skip"]),
)
def test_any_outages_account_for_every_fire_time_once(wakes, grace, misfire):
    # A processor that wakes at random times (and sometimes twice at the same time) over ten minutes of an
    # every-second schedule: every fire time up to the last wake is fired or skipped exactly once.
    s = evolve(None, created("* * * * * *", misfire=misfire))
    first = s.next_fire_at
    ids, last = [], None
    for w in sorted(wakes) * 2:
        now = first + timedelta(seconds=w)
        s, fires, tasks = catch_up(s, now, grace_s=grace)
        for f in fires:
            assert last is None or f.fire_at > last
            assert f.fire_at <= now
            last = f.fire_at
        ids += [t.task_id for t in tasks]
        assert s.next_fire_at > now
    assert len(ids) == len(set(ids)) == s.fired
    passed = int((now - first).total_seconds()) + 1  # fire times first, first + 1 s, ... up to the last wake
    assert s.fired + s.skipped == passed


# ------------------------------------------------------------------- time zones


def test_nine_oclock_in_paris_stays_nine_across_daylight_saving():
    s = evolve(None, created("0 9 * * *", timezone="Europe/Paris", occurred_at=datetime(2024, 3, 29, 12, tzinfo=UTC)))
    fires = []
    now = datetime(2024, 3, 29, 12, tzinfo=UTC)
    for _ in range(4):
        now += timedelta(days=1)
        s, fs, tasks = catch_up(s, now)
        fires += [f.fire_at for f in fs]
    assert fires == [datetime(2024, 3, 30, 8, tzinfo=UTC),  # CET, UTC+1
                     datetime(2024, 3, 31, 7, tzinfo=UTC),  # the change night: CEST, UTC+2
                     datetime(2024, 4, 1, 7, tzinfo=UTC), datetime(2024, 4, 2, 7, tzinfo=UTC)]
    assert all(f.astimezone(ZoneInfo("Europe/Paris")).hour == 9 for f in fires)


def test_autumn_change_in_paris_fires_once_at_local_nine():
    s = evolve(None, created("0 9 * * *", timezone="Europe/Paris", occurred_at=datetime(2024, 10, 26, 12, tzinfo=UTC)))
    s, fires, _t = catch_up(s, datetime(2024, 10, 28, 12, tzinfo=UTC), grace_s=10 * 86400)
    assert [f.fire_at for f in fires] == [datetime(2024, 10, 27, 8, tzinfo=UTC), datetime(2024, 10, 28, 8, tzinfo=UTC)]


def test_an_hour_that_repeats_in_the_autumn_change_fires_once():
    # 02:30 local happens twice on 2024-10-27 in Paris (at 00:30 and 01:30 UTC): a daily job should run once.
    s = evolve(None, created("30 2 * * *", timezone="Europe/Paris", occurred_at=datetime(2024, 10, 26, 12, tzinfo=UTC)))
    s, fires, tasks = catch_up(s, datetime(2024, 10, 27, 12, tzinfo=UTC), grace_s=86400)
    assert len(fires) == 1 and len(tasks) == 1
    assert fires[0].fire_at.astimezone(ZoneInfo("Europe/Paris")).strftime("%H:%M") == "02:30"


def test_a_time_skipped_by_the_spring_change_fires_once_after_the_gap():
    # 02:30 does not exist on 2024-03-31 in Paris: the job runs once, at 03:00 local, and at 02:30 again after.
    s = evolve(None, created("30 2 * * *", timezone="Europe/Paris", occurred_at=datetime(2024, 3, 30, 12, tzinfo=UTC)))
    s, fires, _t = catch_up(s, datetime(2024, 4, 1, 12, tzinfo=UTC), grace_s=10 * 86400)
    local = [f.fire_at.astimezone(ZoneInfo("Europe/Paris")).strftime("%d %H:%M") for f in fires]
    assert local == ["31 03:00", "01 02:30"]


def test_fire_times_are_returned_in_utc():
    s = evolve(None, created("0 9 * * *", timezone="America/New_York"))
    assert s.next_fire_at == datetime(2024, 1, 1, 14, tzinfo=UTC)
    assert s.next_fire_at.utcoffset() == timedelta(0)
    assert cron.next_fire("0 9 * * *", "America/New_York", s.next_fire_at) == datetime(2024, 1, 2, 14, tzinfo=UTC)
