"""Hypothesis strategies for taskstream's values, shared by the unit tests.

Every strategy yields values the codec must round-trip exactly: strings are
any Unicode text that UTF-8 can carry (no lone surrogates), timestamps are
timezone-aware UTC ``datetime`` values with microsecond precision over the
whole range ``timestamp-micros`` and ``datetime`` share, floats are any
finite or infinite double (NaN is left out: it never equals itself, so it
cannot be compared after a round trip), and ints stay in the Avro ``int`` /
``long`` ranges of the schema field they fill.
"""

from __future__ import annotations

import dataclasses
import typing
from datetime import UTC, datetime

from hypothesis import strategies as st

from taskstream.schemas import (
    DependencyRegistered,
    DependencyResolved,
    Priority,
    ReadyTask,
    Status,
    TaskCancelled,
    TaskCreated,
    TaskFailed,
    TaskQueued,
    TaskStarted,
    TaskState,
    TaskSucceeded,
    TaskUpdated,
    codec,
    events,
)

INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)

text = st.text()
ids = st.one_of(st.uuids().map(lambda u: u.hex), st.text(min_size=1, max_size=40))
timestamps = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999), timezones=st.just(UTC)
)
optional_timestamps = st.none() | timestamps
doubles = st.floats(allow_nan=False)
optional_doubles = st.none() | doubles
labels = st.dictionaries(text, text, max_size=5)
id_lists = st.lists(ids, max_size=5)
json_text = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=10,
).map(codec.dumps_json)
priorities = st.sampled_from([p.value for p in Priority]) | text
statuses = st.sampled_from([s.value for s in Status]) | text


def _for_type(t) -> st.SearchStrategy:
    args = typing.get_args(t)
    if type(None) in args:
        return st.none() | _for_type(next(a for a in args if a is not type(None)))
    origin = typing.get_origin(t)
    if origin is dict:
        return labels
    if origin is list:
        return id_lists
    return {str: text, int: INT32, float: doubles, bool: st.booleans(), datetime: timestamps}[t]


def _auto(cls, **given) -> st.SearchStrategy:
    """``st.builds(cls, ...)`` with a strategy for every field not given, from its type."""
    hints = typing.get_type_hints(cls, vars(events))
    fields = {f.name: given[f.name] if f.name in given else _for_type(hints[f.name]) for f in dataclasses.fields(cls)}
    return st.builds(cls, **fields)


def _event_fields() -> dict:
    return dict(task_id=ids, occurred_at=timestamps, producer=text, event_id=ids)


def _schedule_event_fields() -> dict:
    return dict(schedule_id=ids, occurred_at=timestamps, producer=text, event_id=ids)


task_created = _auto(
    TaskCreated,
    **_event_fields(),
    handler=text,
    priority=priorities,
    payload=json_text | text,
    name=text,
    labels=labels,
    depends_on=id_lists,
    run_at=optional_timestamps,
    timeout_s=optional_doubles,
    max_attempts=INT32,
    upstream_keys=labels,
    key=st.none() | text,
    workflow_id=st.none() | ids,
    idempotency_key=st.none() | text,
    request_hash=st.none() | text,
)
task_queued = _auto(TaskQueued, **_event_fields(), attempt=INT32, priority=priorities)
task_started = _auto(TaskStarted, **_event_fields(), attempt=INT32)
task_succeeded = _auto(
    TaskSucceeded, **_event_fields(), attempt=INT32, result=st.none() | json_text | text, started_at=optional_timestamps
)
task_failed = _auto(
    TaskFailed, **_event_fields(), attempt=INT32, error=text, permanent=st.booleans(), started_at=optional_timestamps
)
ready_task = _auto(
    ReadyTask,
    **_event_fields(),
    attempt=INT32,
    handler=text,
    priority=priorities,
    payload=json_text | text,
    timeout_s=optional_doubles,
    upstream=json_text,
)
dependency_registered = _auto(DependencyRegistered, **_event_fields(), dependent=ids)
dependency_resolved = _auto(
    DependencyResolved, **_event_fields(), upstream=ids, outcome=statuses, result=st.none() | json_text,
    result_truncated=st.booleans(),
)
task_cancelled = _auto(TaskCancelled, **_event_fields(), reason=text)
task_updated = _auto(
    TaskUpdated,
    **_event_fields(),
    expected_version=st.none() | INT32,
    priority=st.none() | priorities,
    payload=st.none() | json_text,
    run_at=optional_timestamps,
    timeout_s=optional_doubles,
    max_attempts=st.none() | INT32,
)
task_state = _auto(
    TaskState,
    task_id=ids,
    handler=text,
    status=statuses,
    priority=priorities,
    payload=json_text | text,
    created_at=timestamps,
    updated_at=timestamps,
    name=text,
    labels=labels,
    depends_on=id_lists,
    run_at=optional_timestamps,
    timeout_s=optional_doubles,
    attempt=INT32,
    max_attempts=INT32,
    started_at=optional_timestamps,
    finished_at=optional_timestamps,
    result=st.none() | json_text | text,
    error=st.none() | text,
    version=INT32,
    last_offset=INT64,
    upstream_keys=labels,
    key=st.none() | text,
    workflow_id=st.none() | ids,
    idempotency_key=st.none() | text,
    request_hash=st.none() | text,
    dependents=id_lists,
    resolved=labels,
    upstream_results=labels,
)

#: Records whose every field comes from its type.
_AUTO = ("TaskCheckpointed", "TaskRetryScheduled", "TaskDeadLettered", "LeaseExpired", "TaskRedriven",
         "ScheduleCreated", "ScheduleFired", "ScheduleDeleted", "SchedulePaused", "ScheduleResumed",
         "ScheduleTriggered", "ScheduleBackfilled", "Heartbeat")

#: One strategy per record name of ``schemas.events.RECORD_TYPES``.
BY_RECORD: dict[str, st.SearchStrategy] = {
    "TaskCreated": task_created,
    "TaskQueued": task_queued,
    "TaskStarted": task_started,
    "TaskSucceeded": task_succeeded,
    "TaskFailed": task_failed,
    "ReadyTask": ready_task,
    "TaskState": task_state,
    "DependencyRegistered": dependency_registered,
    "DependencyResolved": dependency_resolved,
    "TaskCancelled": task_cancelled,
    "TaskUpdated": task_updated,
    "ScheduleState": _auto(events.ScheduleState, schedule_id=ids, last_offset=INT64),
    "ApiKey": _auto(events.ApiKey, created_at=timestamps, revoked_at=optional_timestamps),
    "WorkerReport": _auto(events.WorkerReport, pid=INT32, concurrency=INT32, in_flight=INT32, started_at=timestamps,
                          reported_at=timestamps, interval_s=doubles),
    "SlotRequested": _auto(events.SlotRequested, gate_id=ids, occurred_at=timestamps, producer=text, event_id=ids,
                           holder=ids, attempt=INT32, limit=INT32, priority=priorities),
    "SlotReleased": _auto(events.SlotReleased, gate_id=ids, occurred_at=timestamps, producer=text, event_id=ids,
                          holder=ids, attempt=INT32),
    "SlotGranted": _auto(events.SlotGranted, **_event_fields(), gate_id=ids, attempt=INT32),
    "ControlPaused": _auto(events.ControlPaused, control_id=ids, target=ids, partition=INT32,
                           occurred_at=timestamps, producer=text, event_id=ids),
    "ControlResumed": _auto(events.ControlResumed, control_id=ids, target=ids, partition=INT32,
                            occurred_at=timestamps, producer=text, event_id=ids),
    "ControlLimited": _auto(events.ControlLimited, control_id=ids, target=ids, partition=INT32,
                            occurred_at=timestamps, producer=text, event_id=ids, limit=st.none() | INT32),
    "TaskHeld": _auto(events.TaskHeld, **_event_fields(), attempt=INT32, waiting_for=ids, version=INT32,
                      concurrency_limit=st.none() | INT32),
    "TaskReleased": _auto(events.TaskReleased, **_event_fields(), attempt=INT32, waiting_for=ids),
    "ControlState": _auto(events.ControlState, control_id=ids, target=ids, partition=INT32, created_at=timestamps,
                          updated_at=timestamps, paused_at=optional_timestamps, version=INT32, last_offset=INT64,
                          limit=st.none() | INT32),
    "GateState": _auto(events.GateState, gate_id=ids, created_at=timestamps, updated_at=timestamps, limit=INT32,
                       holders=st.dictionaries(ids, INT32, max_size=4), waiting=id_lists,
                       waiting_attempts=st.dictionaries(ids, INT32, max_size=4), waiting_priorities=labels,
                       admitted=id_lists, granted=INT64, version=INT32, last_offset=INT32,
                       spent=st.lists(timestamps, max_size=4)),
    "GateWoken": _auto(events.GateWoken, gate_id=ids, occurred_at=timestamps, producer=text, event_id=ids),
    **{name: _auto(events.RECORD_TYPES[name], trigger_id=ids, occurred_at=timestamps, producer=text, event_id=ids)
       for name in ("TriggerCreated", "TriggerPaused", "TriggerResumed", "TriggerDeleted")},
    "TriggerState": _auto(events.TriggerState, trigger_id=ids, created_at=timestamps, updated_at=timestamps,
                          version=INT32, last_offset=INT64),
    **{name: _auto(events.RECORD_TYPES[name], **_event_fields()) for name in _AUTO if not name.startswith("Schedule")},
    **{
        name: _auto(events.RECORD_TYPES[name], **_schedule_event_fields())
        for name in _AUTO
        if name.startswith("Schedule")
    },
}
any_record = st.one_of(*BY_RECORD.values())
