"""The fold of a whole log (``streams.rebuild``) against the processor's own steps, on hand-built logs.

A small in-memory processor (``processor.fold_step``, the very step the live
processor runs) with a scripted executor and retry relay grows a log; folding
that log again must give every state the processor holds, ``last_offset``
aside (the one field the module documents as legitimately different).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from taskstream.cli.bench import synthetic_log
from taskstream.schemas import (
    ScheduleCreated,
    TaskCancelled,
    TaskCreated,
    TaskFailed,
    TaskQueued,
    TaskRetryScheduled,
    TaskStarted,
    TaskSucceeded,
    TaskUpdated,
    Topics,
    codec,
)
from taskstream.streams import domain
from taskstream.streams.processor import fold_step
from taskstream.streams.rebuild import (
    IGNORED_FIELDS,
    MISSING,
    LogFold,
    Mismatch,
    compare,
    edges_by_upstream,
    fold_events,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TOPICS = Topics("unit")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def simulate(initial, fail_first: set[str], never_run: set[str], edges: dict[bytes, set[str]] | None = None):
    """Run the processor's step over a growing one-partition log; executor and relay scripted.

    Returns (log as (key, bytes), the processor's table of decoded states).
    """
    log = [(e.task_id.encode(), codec.encode(e)) for e in initial]
    table = {}
    edges = {} if edges is None else edges  # the processor's edge records: upstream -> dependents
    clock = [10.0]
    i = 0
    while i < len(log):
        key, value = log[i]
        clock[0] += 0.5
        now = at(clock[0])
        step = fold_step(TOPICS, table.get(key), value, i, 0, now, "proc",
                         dependents=lambda key=key: sorted(edges.get(key, ())))
        if step.edge is not None:
            edges.setdefault(step.edge.task_id.encode(), set()).add(step.edge.dependent)
        if step.state is not None:
            table[key] = step.state
        for out in step.outputs:
            if out.topic == TOPICS.events:
                log.append((out.key, out.value))
            elif out.topic.startswith(f"{TOPICS.prefix}.ready."):
                ready = codec.decode(out.value)
                if ready.task_id in never_run or not hasattr(ready, "handler"):
                    continue
                done = now + timedelta(seconds=0.1)
                if ready.task_id in fail_first and ready.attempt == 1:
                    e = TaskFailed(task_id=ready.task_id, occurred_at=done, producer="ex", attempt=1, error="boom",
                                   started_at=now)
                else:
                    e = TaskSucceeded(task_id=ready.task_id, occurred_at=done, producer="ex", attempt=ready.attempt,
                                      result='{"ok": true}', started_at=now)
                log.append((out.key, codec.encode(e)))
            elif out.topic.startswith(f"{TOPICS.prefix}.retry."):
                r = codec.decode(out.value)
                q = TaskQueued(task_id=r.task_id, occurred_at=r.not_before, producer="relay", attempt=r.attempt + 1,
                               priority=r.priority, due_at=r.not_before)
                log.append((out.key, codec.encode(q)))
        i += 1
    return log, table


def created(task_id: str, seconds: float = 0, **kw) -> TaskCreated:
    return TaskCreated(task_id=task_id, occurred_at=at(seconds), producer="api", handler="noop", **kw)


def scenario():
    tasks = [
        created("a", max_attempts=3, backoff_initial_s=0.5, backoff_jitter=0.0),  # fails once, then succeeds
        created("b", 1, depends_on=["a"]),  # waits for a
        created("c", 2, depends_on=["nobody"]),  # unknown upstream: upstream_failed
        created("d", 3),  # queued, never run: its last record is the processor's own TaskQueued
        created("e", 4, max_attempts=1),  # fails for good: dead-lettered
        created("f", 5, run_at=at(3600)),  # scheduled
        ScheduleCreated(schedule_id="s", occurred_at=at(6), producer="api", cron="0 0 * * *",
                        template='{"handler": "noop"}'),
    ]
    return simulate(tasks, fail_first={"a", "e"}, never_run={"d"})


def fold(log, as_of=None) -> LogFold:
    f = LogFold(as_of=as_of)
    for offset, (key, value) in enumerate(log):
        f.add(0, offset, key, value)
    return f


def test_fold_of_the_log_equals_the_processors_states():
    log, table = scenario()
    f = fold(log)
    rebuilt = {k: f.result(k) for k in f.states}
    assert {k: s.status for k, s in table.items()} == {
        b"a": "succeeded", b"b": "succeeded", b"c": "upstream_failed", b"d": "queued", b"e": "failed",
        b"f": "scheduled", b"s": "active",
    }
    assert table[b"a"].attempt == 2 and table[b"b"].resolved == {"a": "succeeded"}
    assert compare(table, rebuilt) == []
    assert f.events == len(log)
    assert f.counts() == (6, 1)


def test_last_offset_is_the_one_field_that_differs_and_why():
    """d's TaskQueued was applied inline with its TaskCreated (the trigger's offset); the log has it later."""
    log, table = scenario()
    f = fold(log)
    rebuilt = {k: f.result(k) for k in f.states}
    assert IGNORED_FIELDS == {"last_offset"}
    assert table[b"d"].last_offset < rebuilt[b"d"].last_offset
    differs = {(k, m.field) for k in table
               for m in _all_fields(table[k], rebuilt[k]) if m.field != "last_offset"}
    assert differs == set()


def _all_fields(a, b):
    from dataclasses import fields

    return [Mismatch("", x.name, getattr(a, x.name), getattr(b, x.name))
            for x in fields(a) if getattr(a, x.name) != getattr(b, x.name)]


def test_a_corrupted_live_state_is_reported_with_its_field_and_values():
    log, table = scenario()
    f = fold(log)
    rebuilt = {k: f.result(k) for k in f.states}
    live = dict(table)
    live[b"a"] = replace(table[b"a"], status="failed", attempt=3)
    mismatches = compare(live, rebuilt)
    assert [(m.key, m.field, m.live, m.rebuilt) for m in mismatches] == [
        ("a", "status", "failed", "succeeded"), ("a", "attempt", 3, 2)]
    assert mismatches[0].as_json() == {"id": "a", "field": "status", "live": "failed", "rebuilt": "succeeded"}
    assert "a\tstatus\tlive='failed'\trebuilt='succeeded'" == mismatches[0].line()


def test_ids_on_one_side_only_and_a_task_against_a_schedule():
    log, table = scenario()
    f = fold(log)
    rebuilt = {k: f.result(k) for k in f.states}
    live = dict(table)
    del live[b"b"]
    live[b"ghost"] = table[b"d"]
    live[b"s"] = table[b"f"]  # a task where the log holds a schedule
    got = {(m.key, m.field) for m in compare(live, rebuilt)}
    assert got == {("b", MISSING), ("ghost", MISSING), ("s", "<type>")}


def test_undecodable_and_keyless_records_are_counted_and_skipped():
    f = LogFold()
    f.add(0, 0, b"x", b"not avro")
    f.add(0, 1, None, codec.encode(created("x")))
    f.add(0, 2, b"x", codec.encode(created("x")))
    assert (f.undecodable, f.keyless, f.events) == (1, 1, 1)
    assert f.result(b"x").status == "pending" and f.result(b"x").last_offset == 2


def test_the_fold_is_keyed_like_the_processors_table_by_record_key():
    f = LogFold()
    f.add(0, 0, b"k", codec.encode(created("other-id")))
    assert list(f.states) == [b"k"]


def test_time_travel_folds_the_events_that_occurred_by_then_in_log_order():
    events = [
        created("t", 0, max_attempts=2),
        TaskQueued(task_id="t", occurred_at=at(1), producer="p", attempt=1, priority="medium"),
        TaskStarted(task_id="t", occurred_at=at(2), producer="ex", attempt=1),
        TaskFailed(task_id="t", occurred_at=at(3), producer="ex", attempt=1, error="boom"),
        TaskRetryScheduled(task_id="t", occurred_at=at(3), producer="p", attempt=1, not_before=at(5), delay_s=2.0,
                           priority="medium"),
        TaskQueued(task_id="t", occurred_at=at(5), producer="relay", attempt=2, priority="medium", due_at=at(5)),
        TaskSucceeded(task_id="t", occurred_at=at(6), producer="ex", attempt=2, result="1"),
    ]
    assert fold_events(events, as_of=at(-1)) is None
    assert fold_events(events, as_of=at(0)).status == "pending"
    assert fold_events(events, as_of=at(2.5)).status == "running"
    s = fold_events(events, as_of=at(4))
    assert (s.status, s.attempt, s.retry_at, s.error) == ("scheduled", 1, at(5), "boom")
    assert fold_events(events, as_of=at(6)).status == "succeeded"
    assert fold_events(events).version == fold_events(events, as_of=at(99)).version
    f = LogFold(as_of=at(2.5))
    for i, e in enumerate(events):
        f.add(0, i, b"t", codec.encode(e))
    assert (f.result(b"t").status, f.events, f.skipped) == ("running", 3, 4)


def test_the_benchmark_log_folds_to_terminal_tasks():
    events = list(synthetic_log(3000))
    f = LogFold()
    for i, e in enumerate(events):
        f.add(0, i, e.task_id.encode(), codec.encode(e))
    statuses = {s.status for s in f.states.values()}
    assert statuses == {"succeeded", "failed"}
    assert f.events == len(events) >= 3000
    retried = [s for s in f.states.values() if s.attempt == 2]
    dependents = [s for s in f.states.values() if s.depends_on]
    assert retried and dependents and all(s.status == "succeeded" for s in retried + dependents)


def _live_and_log(client_events_between):
    """The processor folds TaskCreated (applying its TaskQueued at once); a client event lands in the
    log before that follow-up. Returns (live state, log as the broker holds it)."""
    from taskstream.schemas import TaskCancelled, TaskCreated, codec

    created = TaskCreated(task_id="t", occurred_at=at(0), producer="api", handler="noop")
    log = [codec.encode(created)]
    step = fold_step(TOPICS, None, log[0], 0, 0, at(0.001), "proc")
    live = step.state
    follow = [o.value for o in step.outputs if o.topic == TOPICS.events]
    assert len(follow) == 1 and codec.decode(follow[0]).cause == created.event_id
    between = [codec.encode(e) for e in client_events_between(TaskCancelled)]
    log += between + follow
    for offset, value in enumerate(between, start=1):
        s = fold_step(TOPICS, live, value, offset, 0, at(0.002), "proc").state
        live = s or live
    s = fold_step(TOPICS, live, follow[0], len(log) - 1, 0, at(0.003), "proc").state
    return s or live, log


def test_a_client_event_between_a_trigger_and_its_follow_up_folds_as_the_processor_applied_it():
    live, log = _live_and_log(lambda C: [C(task_id="t", occurred_at=at(0.0015), producer="api", reason="x")])
    fold = LogFold()
    for offset, value in enumerate(log):
        fold.add(0, offset, b"t", value)
    rebuilt = fold.result(b"t")
    assert live.status == "cancelled" and live.attempt == 1
    assert compare({b"t": live}, {b"t": rebuilt}) == []
    # A plain fold in log order would not: the cancel comes before the queueing there.
    from taskstream.streams import domain

    events = [codec_decode(v) for v in log]
    assert domain.fold(events).attempt == 0
    # `state at --task` and `GET ?as_of=` fold one task's log in the processor's order, like the rebuild.
    assert compare({b"t": live}, {b"t": fold_events(events)}) == []


def codec_decode(value):
    from taskstream.schemas import codec

    return codec.decode(value)


# --------------------------------------------------- client events racing the processor's follow-ups



def _client_event(kind: str, n: int):
    t = at(0.01 * (n + 1))
    if kind == "cancel":
        return TaskCancelled(task_id="t", occurred_at=t, producer="api", reason="x")
    delay = {"now": 0.0, "later": 1.5, "latest": 3.0}.get(kind)
    if delay is not None:
        return TaskUpdated(task_id="t", occurred_at=t, producer="api", run_at=t + timedelta(seconds=delay))
    return TaskUpdated(task_id="t", occurred_at=t, producer="api", priority="low")


def race(created_event, clients, flush_before):
    """The processor folds each record as it lands; its own events (follow-ups) reach the log only at
    the next flush, so client events can land between a trigger and its follow-up.
    ``flush_before[j]``: the held follow-ups are appended before client event j (all at the end anyway).
    Returns (the processor's state, the log)."""
    log, held, live = [], [], None
    clock = [0.0]

    def land(value):
        nonlocal live
        log.append(value)
        clock[0] += 0.001
        step = fold_step(TOPICS, live, value, len(log) - 1, 0, at(clock[0]), "proc")
        live = step.state or live
        held.extend(o.value for o in step.outputs if o.topic == TOPICS.events and o.key == b"t")

    def flush():
        out = list(held)
        held.clear()
        for value in out:
            land(value)

    land(codec.encode(created_event))
    for j, event in enumerate(clients):
        if flush_before[j]:
            flush()
        land(codec.encode(event))
    while held:
        flush()
    return live, log


def test_updates_landing_before_the_first_follow_up_fold_as_the_processor_applied_them():
    """Found by the model test: TaskCreated, three TaskUpdated (the processor had already queued the
    task and ignored them), then the TaskQueued follow-up. The fold used to give the pending trigger
    up for the first update and apply the updates."""
    clients = [_client_event(k, n) for n, k in enumerate(["later", "now", "latest"])]
    live, log = race(created("t"), clients, [False] * 3)
    f = LogFold()
    for offset, value in enumerate(log):
        f.add(0, offset, b"t", value)
    assert live.status == "queued" and live.run_at is None
    assert compare({b"t": live}, {b"t": f.result(b"t")}) == []


@hsettings(max_examples=300, deadline=None)
@given(
    start=st.sampled_from(["now", "later", "deps"]),
    clients=st.lists(st.sampled_from(["now", "later", "latest", "priority", "cancel"]), max_size=6),
    flushes=st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_any_race_of_client_events_and_follow_ups_folds_to_the_live_state(start, clients, flushes):
    kw = {"now": {}, "later": {"run_at": at(2)}, "deps": {"depends_on": ["nobody-yet"]}}[start]
    events = [_client_event(k, n) for n, k in enumerate(clients)]
    live, log = race(created("t", **kw), events, flushes)
    f = LogFold()
    for offset, value in enumerate(log):
        f.add(0, offset, b"t", value)
    assert compare({b"t": live}, {b"t": f.result(b"t")}) == []
    # The API's time travel folds one task's events through the same fold order, without LogFold.
    reordered = domain.fold_log([codec.decode(v) for v in log])
    assert compare({b"t": live}, {b"t": reordered}) == []


def test_the_fold_records_the_processors_edges_and_compares_dependents_as_the_api_shows_them():
    edges: dict[bytes, set[str]] = {}
    log, table = simulate([created("a", max_attempts=1, run_at=at(60)), created("b", 1, depends_on=["a"]),
                           created("c", 2, depends_on=["a"]), created("x", 3, depends_on=["x"])],
                          set(), set(), edges)
    f = fold(log)
    assert f.dependents() == {"a": ["b", "c"]} == {k.decode(): sorted(v) for k, v in edges.items()}
    assert edges_by_upstream(f.edges) == f.dependents() and all(s.dependents == [] for s in table.values())
    rebuilt = {k: f.result(k) for k in f.states}
    assert compare(table, rebuilt, {"a": ["b", "c"]}, f.dependents()) == []
    [m] = compare(table, rebuilt, {"a": ["b"]}, f.dependents())  # an edge missing from the live side
    assert (m.key, m.field, m.live, m.rebuilt) == ("a", "dependents", ["b"], ["b", "c"])
    # a record written before the edges, embedding its dependents, agrees with the edges a rebuild finds
    old = {**table, b"a": replace(table[b"a"], dependents=["c", "b"])}
    assert compare(old, rebuilt, {}, f.dependents()) == []
    # time travel shows the dependents the edges held then
    events_a = [codec.decode(v) for k, v in log if k == b"a"]
    assert fold_events(events_a).dependents == ["b", "c"]
    assert fold_events(events_a, as_of=at(1.5)).dependents == []  # registrations are stamped by the processor
