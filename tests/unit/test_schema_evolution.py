"""Schema evolution (docs/wire-format.md, "Schema evolution"): old logs stay readable, forever.

Contract under test: every released writer schema stays in
``schemas/avro/history`` with the fingerprint it was released with; today's
schema files carry their version and equal their history copy; a record
written with any released schema resolves into today's type (new fields
take their defaults); renames work by Avro alias; an upcaster registered
for a version runs on records of that version only; and a release's reader
skips a field added after it (rolling upgrades: an old processor reads a new
API's TaskCreated).
"""

from __future__ import annotations

import dataclasses
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import fastavro
import fastavro.utils
import pytest
from fastavro.read import SchemaResolutionError

from taskstream.schemas import DecodeError, TaskCreated, codec
from taskstream.schemas.events import RECORD_TYPES
from taskstream.streams import domain

AVRO = Path(codec.__file__).parent / "avro"
HISTORY = AVRO / "history"
T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)

#: (record, version) -> CRC-64-AVRO fingerprint it was released with. Records in
#: logs carry these; a history file must never change (add a new version instead).
RELEASED = {
    ("ApiKey", 3): "557cdc0fbd2969ed",
    ("DependencyRegistered", 1): "652c12b484ac8bf0",
    ("DependencyResolved", 1): "2cd6fdb958325ece",
    ("Heartbeat", 2): "f8c612a4256adb98",
    ("LeaseExpired", 2): "dc344587a1d894a1",
    ("ReadyTask", 1): "e208b839085a6bb9",
    ("ReadyTask", 2): "361636818e394b57",
    ("ScheduleCreated", 2): "f44f4e7d8361ce14",
    ("ScheduleCreated", 4): "46b10cb87dee1054",
    ("ScheduleCreated", 5): "cbebee763e4748f5",
    ("ScheduleDeleted", 2): "0a5a59b5668116ff",
    ("ScheduleDeleted", 4): "b4e63d0f495f7a97",
    ("ScheduleDeleted", 5): "e78197146e25329a",
    ("ScheduleBackfilled", 6): "0b973fb30459b553",
    ("ScheduleFired", 2): "1e8295e4d45a41ef",
    ("ScheduleFired", 5): "444c5a100960843a",
    ("SchedulePaused", 6): "f4412f6eb8da1642",
    ("ScheduleResumed", 6): "594dfeae7359777c",
    ("ScheduleTriggered", 6): "94cc2e504a8afd17",
    ("ScheduleState", 2): "920c9a24009f898e",
    ("TaskCancelled", 1): "e68059742d6d0a66",
    ("TaskCancelled", 4): "a12abc8e475ceb4c",
    ("TaskCheckpointed", 2): "3cbd3b08ab51dff3",
    ("TaskCreated", 1): "350dc4024e2f0a83",
    ("TaskCreated", 2): "9e38052a99ad4276",
    ("TaskCreated", 3): "5c373f88a986ad78",
    ("TaskCreated", 4): "ffb806256c51f8f4",
    ("TaskDeadLettered", 2): "898ba64289285ec1",
    ("TaskFailed", 1): "808dc4c057e73e27",
    ("TaskFailed", 5): "bdf5cc215372b072",
    ("TaskFailed", 6): "570638a26661f0b2",
    ("TaskQueued", 1): "182337c7e83ad71b",
    ("TaskQueued", 2): "c534b844f229047f",
    ("TaskQueued", 3): "20f5b3b46e10f76d",
    ("TaskRedriven", 2): "ebc893afdc122f7e",
    ("TaskRedriven", 4): "11572bd06f846bbd",
    ("TaskRetryScheduled", 2): "8473324afeafaebd",
    ("TaskRetryScheduled", 3): "5c5e2a17b79294b6",
    ("TaskStarted", 1): "f5868a2fccec70f4",
    ("TaskState", 1): "3a66bde269564b14",
    ("TaskState", 2): "40548189bec65932",
    ("TaskState", 6): "b2cbac9310dab786",
    ("TaskSucceeded", 1): "8bc5ac5dee2cc9f0",
    ("TaskUpdated", 1): "03128c89cc89fda4",
    ("TaskUpdated", 2): "fc7ffb9aba73459f",
    ("TaskUpdated", 4): "97aed014d9b10ce6",
    ("WorkerReport", 6): "6ff3219dbeed0c8e",
    ("GateState", 7): "f3bb7f0bf4690e74",  # schema set 7: concurrency keys (issue 28)
    ("SlotGranted", 7): "4eed553dfe4c51cd",  # schema set 7: concurrency keys (issue 28)
    ("SlotReleased", 7): "4c8939645b140588",  # schema set 7: concurrency keys (issue 28)
    ("SlotRequested", 7): "da5b03ebdd46fad4",  # schema set 7: concurrency keys (issue 28)
    ("ControlLimited", 8): "92932554b8e028d1",  # schema set 8: handler limits (issue 28)
    ("ControlPaused", 8): "0370ae7aff0d8e37",  # schema set 8: pause and resume (issue 28)
    ("ControlResumed", 8): "87d87a2ed64f5588",  # schema set 8: pause and resume (issue 28)
    ("ControlState", 8): "bb39c76377e19529",  # schema set 8: pause and resume (issue 28)
    ("TriggerCreated", 9): "e1c88975a0e9b881",  # schema set 9: topic triggers (issue 29)
    ("TriggerPaused", 9): "f32aecbfa1df25d7",  # schema set 9: topic triggers (issue 29)
    ("TriggerResumed", 9): "62b4d547a6249922",  # schema set 9: topic triggers (issue 29)
    ("TriggerDeleted", 9): "c9c0040e36a04c0b",  # schema set 9: topic triggers (issue 29)
    ("TriggerState", 9): "56ef7a37a30aaa31",  # schema set 9: topic triggers (issue 29)
    ("TaskHeld", 8): "164320fedec4f0c9",  # schema set 8: pause and resume (issue 28)
    ("TaskReleased", 8): "c0bf372c3f60d0f1",  # schema set 8: pause and resume (issue 28)
    ("TaskCreated", 7): "e7dd251bc5864a49",  # schema set 7: concurrency keys (issue 28)
    ("TaskState", 7): "294b4f83f7130513",  # schema set 7: concurrency keys (issue 28)
    ("GateState", 8): "ee0ca5d75500613b",  # schema set 8: rate limits (issue 28)
    ("GateWoken", 8): "8803ff95ac0b4020",  # schema set 8: rate limits (issue 28)
    ("SlotRequested", 8): "189bb3caed9f23a6",  # schema set 8: rate limits (issue 28)
    ("TaskCreated", 8): "518246a0530c33b9",  # schema set 8: rate limits (issue 28)
    ("TaskState", 8): "a5fe7dd24df84c2f",  # schema set 8: rate limits (issue 28)
    ("ControlLimited", 9): "891add42789f78df",  # schema set 9: handler rates (issue 28)
    ("ControlState", 9): "4e816add443df268",  # schema set 9: handler rates (issue 28)
    ("TaskHeld", 9): "95da5671b5d7899e",  # schema set 9: handler rates (issue 28)
    ("TaskCreated", 9): "37a4828bedbefc6c",  # schema set 9: trace context (issue 29)
    ("TaskState", 9): "b40f93c64cf82159",  # schema set 9: trace context (issue 29)
}
VERSIONS = sorted(RELEASED)
#: Fields filled by an upcaster from another field of an older record, not by a default.
SCHEDULE_IDS = {(n, "schedule_id") for n in ("ScheduleCreated", "ScheduleFired", "ScheduleDeleted")}


def _history(name: str, version: int) -> dict:
    return json.loads((HISTORY / f"{name}.v{version}.avsc").read_text())


def _fp(schema: dict) -> str:
    canonical = fastavro.schema.to_parsing_canonical_form(fastavro.parse_schema(schema))
    return fastavro.schema.fingerprint(canonical, "CRC-64-AVRO")


def _single_object(schema: dict, record: dict) -> bytes:
    buf = io.BytesIO()
    buf.write(codec.MAGIC + bytes.fromhex(_fp(schema)))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


def test_history_holds_exactly_the_released_versions():
    files = {(p.name.split(".v")[0], int(p.name.split(".v")[1].split(".")[0])) for p in HISTORY.glob("*.avsc")}
    assert files == set(RELEASED)
    assert {(name, max(v for n, v in RELEASED if n == name)) for name in RECORD_TYPES} <= files


@pytest.mark.parametrize("key", VERSIONS, ids=[f"{n}.v{v}" for n, v in VERSIONS])
def test_released_schema_keeps_its_fingerprint(key):
    assert _fp(_history(*key)) == RELEASED[key]


@pytest.mark.parametrize("name", sorted(RECORD_TYPES))
def test_current_schema_carries_its_version_and_equals_its_history_copy(name):
    raw = json.loads((AVRO / f"{name}.avsc").read_text())
    version = raw["version"]
    assert version == max(v for n, v in RELEASED if n == name)
    assert {k: v for k, v in raw.items() if k != "version"} == _history(name, version)
    # the version attribute is not part of the canonical form: adding it changed no fingerprint
    assert codec._BY_TYPE[RECORD_TYPES[name]].header[2:].hex() == RELEASED[(name, version)]


@pytest.mark.parametrize("key", VERSIONS, ids=[f"{n}.v{v}" for n, v in VERSIONS])
def test_any_record_of_a_released_schema_decodes_into_todays_type(key):
    name, version = key
    schema = _history(name, version)
    parsed = fastavro.parse_schema(schema)
    for generated in fastavro.utils.generate_many(schema, 20):
        data = _single_object(schema, generated)
        record = fastavro.schemaless_reader(io.BytesIO(data[10:]), parsed, None)  # as its own release read it
        value = codec.decode(data)
        assert type(value) is RECORD_TYPES[name]
        for field in dataclasses.fields(value):
            if field.name in record:
                assert getattr(value, field.name) == record[field.name], field.name
            elif (name, field.name) in SCHEDULE_IDS:  # set 5: before it, a schedule's id travelled in task_id only
                assert value.schedule_id == record["task_id"]
            else:  # added later: its default
                assert getattr(value, field.name) == _default(field), field.name
        assert codec.writer_version(data) == version


def _default(field: dataclasses.Field):
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def _created_v1() -> dict:
    return {
        "event_id": "e1", "task_id": "t1", "occurred_at": T0, "producer": "api", "name": "n", "handler": "echo",
        "priority": "high", "payload": '{"a": 1}', "labels": {}, "depends_on": [], "run_at": None, "timeout_s": None,
        "max_attempts": 2, "upstream_keys": {}, "key": None, "workflow_id": None, "idempotency_key": None,
        "request_hash": None,
    }


def test_taskcreated_v1_v2_v3_decode_and_fold_the_same_but_for_the_new_field():
    v1 = _created_v1()
    v2 = {**v1, "backoff_initial_s": 5.0, "backoff_multiplier": None, "backoff_max_s": None, "backoff_jitter": None,
          "schedule_id": None, "scheduled_for": None}
    v3 = {**v2, "description": "nightly export"}
    values = [codec.decode(_single_object(_history("TaskCreated", n), r)) for n, r in ((1, v1), (2, v2), (3, v3))]
    assert [v.description for v in values] == ["", "", "nightly export"]
    assert [v.backoff_initial_s for v in values] == [None, 5.0, 5.0]
    states = [domain.fold([v]) for v in values]
    assert {s.status for s in states} == {"pending"} and {s.max_attempts for s in states} == {2}
    assert {v.actor for v in values} == {None}  # v4's field, absent from every older record
    assert codec.encode(values[2])[2:10].hex() == RELEASED[("TaskCreated", 9)]  # today's writer


def test_an_older_release_reads_todays_taskcreated_skipping_the_new_field():
    # A v2 processor still running during a rolling upgrade reads a v3 record (writer v3, reader v2).
    value = TaskCreated(task_id="t1", occurred_at=T0, producer="api", handler="echo", description="hello")
    body = io.BytesIO(codec.encode(value)[10:])
    v3, v2 = (fastavro.parse_schema(_history("TaskCreated", n)) for n in (3, 2))
    record = fastavro.schemaless_reader(body, v3, v2)
    assert "description" not in record and record["handler"] == "echo"


def test_upcaster_runs_on_records_of_its_version_only(monkeypatch):
    seen = []

    def upcast(record: dict) -> dict:
        seen.append(record["task_id"])
        return {**record, "name": record["name"] or "(unnamed)"}

    monkeypatch.setitem(codec._UPCASTERS, ("TaskCreated", 1), upcast)
    old = codec.decode(_single_object(_history("TaskCreated", 1), {**_created_v1(), "name": ""}))
    assert old.name == "(unnamed)" and seen == ["t1"]
    new = codec.decode(codec.encode(TaskCreated(task_id="t2", occurred_at=T0, producer="api", handler="echo")))
    assert new.name == "" and seen == ["t1"]


def test_a_failing_upcaster_is_a_decode_error(monkeypatch):
    monkeypatch.setitem(codec._UPCASTERS, ("TaskCreated", 2), lambda record: record["no such field"])
    v1 = _single_object(_history("TaskCreated", 1), _created_v1())
    with pytest.raises(DecodeError, match="TaskCreated"):
        codec.decode(v1)  # v1 records pass through the v2 upcaster too (oldest first up to today's)


def test_a_schedule_event_of_set_4_reads_its_id_from_task_id_and_writes_both():
    old = {"event_id": "e1", "task_id": "s1", "occurred_at": T0, "producer": "api", "reason": "", "actor": None}
    value = codec.decode(_single_object(_history("ScheduleDeleted", 4), old))
    assert value.schedule_id == "s1" and value.aggregate_id == "s1" and "task_id" not in value.__dataclass_fields__
    # today's record carries the id in both fields: readers of set 4 (task_id) and of set 5 (schedule_id)
    data = codec.encode(value)
    record = fastavro.schemaless_reader(
        io.BytesIO(data[10:]), fastavro.parse_schema(_history("ScheduleDeleted", 5)), None
    )
    assert (record["task_id"], record["schedule_id"]) == ("s1", "s1") and codec.decode(data) == value
    # a reader of set 4 still reads it: the new field is skipped
    v4 = fastavro.schemaless_reader(io.BytesIO(data[10:]), fastavro.parse_schema(_history("ScheduleDeleted", 5)),
                                    fastavro.parse_schema(_history("ScheduleDeleted", 4)))
    assert v4["task_id"] == "s1" and "schedule_id" not in v4


def test_rename_by_alias_resolves():
    # The rule for renames, shown with Avro itself: the new field lists the old name in "aliases".
    writer = {"type": "record", "name": "R", "fields": [{"name": "title", "type": "string"}]}
    reader = {"type": "record", "name": "R", "fields": [{"name": "name", "type": "string", "aliases": ["title"]}]}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(writer), {"title": "x"})
    buf.seek(0)
    assert fastavro.schemaless_reader(buf, fastavro.parse_schema(writer), fastavro.parse_schema(reader)) == {
        "name": "x"
    }


def test_a_field_without_default_cannot_be_added():
    # Why the rule exists: a reader field missing from the writer and without default fails resolution.
    writer = _history("TaskCreated", 3)
    reader = {**writer, "fields": [*writer["fields"], {"name": "owner", "type": "string"}]}
    data = codec.encode(TaskCreated(task_id="t1", occurred_at=T0, producer="api", handler="echo"))
    with pytest.raises(SchemaResolutionError, match="No default value for field owner"):
        fastavro.schemaless_reader(io.BytesIO(data[10:]), fastavro.parse_schema(writer), fastavro.parse_schema(reader))
