"""Topic triggers in the decider (streams/domain/triggers.py): table tests of every status x every command,
validation naming the field, the task one record makes, and a property over any sequence of commands."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskstream.schemas import (
    CommandRejected,
    DecodeError,
    NotFound,
    TriggerCreated,
    TriggerDeleted,
    TriggerPaused,
    TriggerResumed,
    TriggerState,
    ValidationError,
    codec,
)
from taskstream.schemas.limits import MAX_PAYLOAD_BYTES
from taskstream.streams import domain

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
TEMPLATE = '{"handler": "echo", "priority": "high", "labels": {"team": "shop"}, "max_attempts": 3}'


def create(**changes) -> domain.CreateTrigger:
    fields = dict(name="orders", producer="api", topic="shop.orders", template=TEMPLATE, actor="key-1")
    return domain.CreateTrigger(**{**fields, **changes})


def state_in(status: str, **changes) -> TriggerState:
    (created,) = domain.decide(None, create(**changes), T0)
    s = domain.fold([created])
    assert s is not None
    if status == "paused":
        s = domain.fold(domain.decide(s, domain.PauseTrigger(name="orders", producer="api"), T0), s)
    elif status == "deleted":
        s = domain.fold(domain.decide(s, domain.DeleteTrigger(name="orders", producer="api"), T0), s)
    assert s.status == status
    return s


# ------------------------------------------------------------------ create


def test_create_records_every_field_and_the_actor():
    (e,) = domain.decide(None, create(filter='{"type": "order"}', start='"earliest"', bootstrap_servers="b:9092",
                                      security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="u",
                                      sasl_password="secret"), T0)
    assert isinstance(e, TriggerCreated)
    assert (e.trigger_id, e.name, e.topic, e.actor, e.occurred_at) == ("trigger:orders", "orders", "shop.orders",
                                                                       "key-1", T0)
    assert e.sasl_password == "secret"  # the log is the truth
    s = domain.fold([e])
    assert s.status == "active" and s.created_by == "key-1" and s.version == 1 and s.sasl_password == "secret"
    assert domain.shown(s).sasl_password == domain.HIDDEN and "secret" not in repr(s) + repr(e)


def test_create_of_a_name_taken_is_refused_even_after_delete():
    for status in ("active", "paused", "deleted"):
        with pytest.raises(CommandRejected):
            domain.decide(state_in(status), create(), T0)


@pytest.mark.parametrize(("changes", "field"), [
    ({"name": "bad name"}, "name"),
    ({"topic": "bad topic!"}, "topic"),
    ({"topic": ".."}, "topic"),
    ({"topic": "x" * 250}, "topic"),
    ({"template": '{"priority": "high"}'}, "task.handler"),
    ({"format": "avro"}, "format"),
    ({"key_as": "header"}, "key_as"),
    ({"filter": "[1, 2]"}, "filter"),
    ({"filter": "{}"}, "filter"),
    ({"filter": '{"a": {"b": 1}}'}, "filter"),
    ({"filter": '{"a..b": 1}'}, "filter"),
    ({"filter": '{"a": 1}', "format": "bytes"}, "filter"),
    ({"start": '"yesterday"'}, "start"),
    ({"start": '{"offset": {"x": 1}}'}, "start"),
    ({"start": '{"offset": {"0": -1}}'}, "start"),
    ({"start": '{"time": "2026-01-05T10:00:00"}'}, "start"),
    ({"start": '{"time": "not a time"}'}, "start"),
    ({"security_protocol": "TLS"}, "security_protocol"),
    ({"bootstrap_servers": "b:1", "sasl_mechanism": "GSSAPI"}, "sasl_mechanism"),
    ({"sasl_username": "u"}, "bootstrap_servers"),
])
def test_bad_input_is_refused_naming_the_field(changes, field):
    with pytest.raises(ValidationError) as exc:
        domain.decide(None, create(**changes), T0)
    assert field in [f for f, _ in exc.value.violations]


@pytest.mark.parametrize("start", ['"latest"', '"earliest"', '{"offset": {"0": 5, "3": 0}}',
                                   '{"time": "2026-01-05T10:00:00Z"}', '{"time": "2026-01-05T10:00:00+02:00"}'])
def test_good_starts_are_taken(start):
    (e,) = domain.decide(None, create(start=start), T0)
    assert domain.start_of(domain.fold([e])) == codec.loads_json(start)


# ------------------------------------------------------------------ pause, resume, delete: every status


@pytest.mark.parametrize(("status", "command", "outcome"), [
    (None, "pause", NotFound), (None, "resume", NotFound), (None, "delete", NotFound),
    ("active", "pause", TriggerPaused), ("active", "resume", []), ("active", "delete", TriggerDeleted),
    ("paused", "pause", []), ("paused", "resume", TriggerResumed), ("paused", "delete", TriggerDeleted),
    ("deleted", "pause", CommandRejected), ("deleted", "resume", CommandRejected),
    ("deleted", "delete", CommandRejected),
])
def test_every_status_by_every_command(status, command, outcome):
    state = None if status is None else state_in(status)
    cmd = {"pause": domain.PauseTrigger(name="orders", producer="api", reason="r", actor="k"),
           "resume": domain.ResumeTrigger(name="orders", producer="api", actor="k"),
           "delete": domain.DeleteTrigger(name="orders", producer="api", actor="k")}[command]
    if isinstance(outcome, type) and issubclass(outcome, Exception):
        with pytest.raises(outcome):
            domain.decide(state, cmd, T0 + timedelta(seconds=1))
        return
    events = domain.decide(state, cmd, T0 + timedelta(seconds=1))
    if outcome == []:
        assert events == []
        return
    (e,) = events
    assert isinstance(e, outcome) and e.actor == "k" and e.trigger_id == "trigger:orders"
    after = domain.fold([e], state)
    assert after.version == state.version + 1
    assert after.status == {TriggerPaused: "paused", TriggerResumed: "active", TriggerDeleted: "deleted"}[outcome]


def test_a_trigger_command_on_a_task_key_is_not_found():
    task = domain.fold(domain.decide(None, domain.SubmitTask(task_id="trigger:orders", handler="h", producer="p"),
                                     T0))
    with pytest.raises(NotFound):
        domain.decide(task, domain.PauseTrigger(name="orders", producer="api"), T0)


# ------------------------------------------------------------------ records


def test_a_record_makes_a_task_from_the_template_with_its_place_in_labels():
    s = state_in("active")
    c = domain.record_task(s, "shop.orders", 2, 41, b"o-7", b'{"type": "order", "id": 7}', producer="runner")
    assert c is not None
    assert c.task_id == domain.trigger_task_id("orders", "shop.orders", 2, 41)
    assert (c.handler, c.priority, c.max_attempts, c.name) == ("echo", "high", 3, "orders")
    assert codec.loads_json(c.payload) == {"type": "order", "id": 7}
    assert c.labels == {"team": "shop", "taskstream.trigger": "orders", "kafka.topic": "shop.orders",
                        "kafka.partition": "2", "kafka.offset": "41", "kafka.key": "o-7"}
    (created,) = domain.decide(None, c, T0)
    assert created.task_id == c.task_id and created.labels == c.labels


def test_the_task_id_is_the_same_for_the_same_record_and_apart_for_any_other():
    ids = {domain.trigger_task_id(n, t, p, o) for n in ("a", "b") for t in ("x", "y") for p in (0, 1) for o in (0, 1)}
    assert len(ids) == 16
    assert domain.trigger_task_id("a", "x", 0, 1) == domain.trigger_task_id("a", "x", 0, 1)


def test_a_created_task_read_again_is_a_duplicate_the_fold_drops():
    s = state_in("active")
    c = domain.record_task(s, "shop.orders", 0, 1, None, b"{}", producer="runner")
    first = domain.fold(domain.decide(None, c, T0))
    again = domain.decide(None, c, T0 + timedelta(seconds=5))  # the runner read the record again after a crash
    assert domain.fold(again, first) is first


def test_key_as_payload_wraps_the_value_with_its_place():
    s = state_in("active", key_as="payload")
    c = domain.record_task(s, "shop.orders", 0, 3, None, b"[1, 2]", producer="runner")
    assert codec.loads_json(c.payload) == {"value": [1, 2], "kafka": {"topic": "shop.orders", "partition": 0,
                                                                      "offset": 3, "key": None}}
    assert "kafka.offset" not in c.labels and c.labels["taskstream.trigger"] == "orders"


def test_bytes_format_carries_base64():
    s = state_in("active", format="bytes")
    c = domain.record_task(s, "shop.orders", 0, 3, None, b"\x00\xffnot json", producer="runner")
    assert codec.loads_json(c.payload) == {"base64": base64.b64encode(b"\x00\xffnot json").decode()}


def test_the_filter_matches_field_paths_by_json_equality():
    s = state_in("active", filter='{"type": "order", "meta.region": "eu", "n": 1}')
    ok = b'{"type": "order", "meta": {"region": "eu"}, "n": 1.0}'
    assert domain.record_task(s, "t", 0, 0, None, ok, producer="r") is not None
    for other in (b'{"type": "refund", "meta": {"region": "eu"}, "n": 1}', b'{"type": "order", "n": 1}',
                  b'{"type": "order", "meta": {"region": "eu"}, "n": true}'):
        assert domain.record_task(s, "t", 0, 0, None, other, producer="r") is None


@pytest.mark.parametrize(("changes", "value"), [
    ({}, b"not json"),
    ({}, b'{"a": 1'),
    ({"filter": '{"a": 1}'}, b"[1]"),
    ({"filter": '{"a": 1}'}, b'"text"'),
    ({}, b'"' + b"x" * MAX_PAYLOAD_BYTES + b'"'),
    ({"format": "bytes"}, b"x" * MAX_PAYLOAD_BYTES),
])
def test_a_bad_record_is_a_decode_error(changes, value):
    with pytest.raises(DecodeError):
        domain.record_task(state_in("active", **changes), "t", 0, 0, None, value, producer="r")


def test_a_tombstone_makes_no_task():
    assert domain.record_task(state_in("active"), "t", 0, 0, b"k", None, producer="r") is None


# ------------------------------------------------------------------ property


_commands = st.lists(st.sampled_from(["create", "pause", "resume", "delete"]), max_size=12)


@settings(max_examples=300)
@given(_commands)
def test_any_sequence_rebuild_equals_live_and_deleted_accepts_nothing(names):
    live: TriggerState | None = None
    log = []
    now = T0
    for i, name in enumerate(names):
        now += timedelta(seconds=1)
        cmd = {"create": create(), "pause": domain.PauseTrigger(name="orders", producer="api", reason=str(i)),
               "resume": domain.ResumeTrigger(name="orders", producer="api"),
               "delete": domain.DeleteTrigger(name="orders", producer="api")}[name]
        was_deleted = live is not None and live.status == "deleted"
        try:
            events = domain.decide(live, cmd, now)
        except (CommandRejected, NotFound):
            continue
        assert not was_deleted, f"a deleted trigger accepted {name}"
        for e in events:
            log.append(e)
            live = domain.evolve(live, e)
    rebuilt = domain.fold([codec.decode(codec.encode(e)) for e in log])
    assert rebuilt == live
    # Folding an event twice changes nothing.
    state = None
    for e in log:
        once = domain.evolve(state, e)
        assert domain.evolve(once, e) == once
        state = once


def test_schedules_and_triggers_share_the_deleted_status_the_decider_checks() -> None:
    from taskstream.schemas import ScheduleStatus, TriggerStatus
    from taskstream.streams.domain.decide import DELETED

    assert ScheduleStatus.DELETED.value == TriggerStatus.DELETED.value == DELETED
