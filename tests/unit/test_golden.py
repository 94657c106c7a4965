"""Golden histories (STYLE §6): logs written by every released schema version still decode and fold.

``tests/golden/v<N>/*.json`` hold event logs encoded with the writer
schemas of release N (``tests/golden/generate.py``) and the TaskState each
task folded to with the code of that release. Today's codec must decode
every record (Avro schema resolution from the old writer schema) and
today's ``streams.domain.fold`` must give the recorded state on every field
both versions of TaskState have. A failure here means a change broke old
logs: give the new field a default, rename by alias, or add an upcaster
(docs/wire-format.md: Schema evolution) -- never edit a golden file.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from taskstream.schemas import (
    ControlState,
    GateState,
    ScheduleCreated,
    ScheduleState,
    TaskCreated,
    TaskFailed,
    TaskState,
    TriggerState,
    codec,
)
from taskstream.schemas.events import ApiKey, WorkerReport
from taskstream.streams import domain

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
FILES = sorted(GOLDEN.glob("v*/*.json"))


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _state_json(state: TaskState) -> dict:
    def plain(v):
        if isinstance(v, list):  # a gate's spent starts (set 8)
            return [plain(x) for x in v]
        return v.isoformat() if isinstance(v, datetime) else v

    return {f: plain(v) for f, v in _as_dict(state).items()}


def _as_dict(state: TaskState) -> dict:
    return {name: getattr(state, name) for name in state.__dataclass_fields__}


def _decode_log(doc: dict) -> dict[str, list]:
    by_task: dict[str, list] = {}
    for rec in doc["records"]:
        data = bytes.fromhex(rec["value"])
        event = codec.decode(data)
        assert type(event).__name__ == rec["event_type"]
        assert event.aggregate_id == rec["key"]
        by_task.setdefault(rec["key"], []).append(event)
    return by_task


def test_every_released_version_has_golden_logs_of_the_four_histories():
    versions = {int(p.parent.name[1:]) for p in FILES}
    # Golden logs are task histories: records of the topics beside them (API keys, workers' reports) make no release.
    latest = max(c.version for t, c in codec._BY_TYPE.items() if t not in (ApiKey, WorkerReport))
    assert versions == set(range(1, latest + 1))
    for v in versions:
        names = {p.stem for p in FILES if p.parent.name == f"v{v}"}
        assert {"succeeded", "retries", "dependencies", "cancel"} <= names, v


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.name}/{p.stem}" for p in FILES])
def test_golden_log_decodes_and_folds_to_the_recorded_state(path):
    doc = _load(path)
    version = doc["schema_version"]
    assert doc["states"], "a golden log without recorded states tests nothing"
    # Written with that release's schemas: each record's fingerprint is a released one of <= version.
    for rec in doc["records"]:
        written = codec.writer_version(bytes.fromhex(rec["value"]))
        assert written is not None and written <= version, rec["event_type"]
    by_task = _decode_log(doc)
    assert set(by_task) == set(doc["states"])
    for task_id, expected in doc["states"].items():
        # Dependents are edges outside the state record since issue 25; the fold shows them as the API does.
        state = domain.fold_with_dependents(by_task[task_id])
        got = _state_json(state)
        common = set(expected) & set(got)
        if isinstance(state, ScheduleState):
            assert {"schedule_id", "status", "next_fire_at", "last_task_id", "fired", "skipped", "version"} <= common
        elif isinstance(state, GateState):
            assert {"gate_id", "limit", "holders", "waiting", "granted", "version"} <= common
        elif isinstance(state, ControlState):
            assert {"control_id", "target", "partition", "paused", "paused_by", "version"} <= common
        elif isinstance(state, TriggerState):
            assert {"trigger_id", "name", "topic", "status", "filter", "start", "sasl_password", "version"} <= common
        else:
            assert {"task_id", "status", "attempt", "version", "result", "error"} <= common
        assert {k: got[k] for k in common} == {k: expected[k] for k in common}, task_id


def test_v1_logs_are_written_with_the_v1_writer_schemas():
    # The oldest logs must really exercise resolution: TaskCreated v1 lacks the backoff fields and description.
    doc = _load(GOLDEN / "v1" / "succeeded.json")
    data = bytes.fromhex(doc["records"][0]["value"])
    assert codec.writer_version(data) == 1
    assert data[:10] != codec._BY_TYPE[TaskCreated].header
    created = codec.decode(data)
    assert created.description == "" and created.backoff_initial_s is None and created.schedule_id is None


def test_a_schedule_log_of_set_4_carries_the_id_in_task_id_only_and_folds_as_a_schedule():
    # Before set 5 a schedule's events had no schedule_id: the key travelled in task_id (issue 23 changed that).
    doc = _load(GOLDEN / "v4" / "schedule.json")
    first = bytes.fromhex(doc["records"][0]["value"])
    assert codec.writer_version(first) == 4 and doc["records"][0]["event_type"] == "ScheduleCreated"
    assert "schedule_id" not in {f["name"] for f in codec.schema_versions()["ScheduleCreated"][4]["fields"]}
    created = codec.decode(first)
    assert isinstance(created, ScheduleCreated) and created.schedule_id == "s-hourly"
    state = domain.fold(_decode_log(doc)["s-hourly"])
    assert isinstance(state, ScheduleState) and (state.status, state.fired, state.skipped) == ("deleted", 1, 2)
    latest = _load(GOLDEN / "v5" / "schedule.json")
    assert domain.fold(_decode_log(latest)["s-hourly"]) == state


def test_new_field_is_carried_by_the_latest_logs():
    latest = max(int(p.parent.name[1:]) for p in FILES)
    doc = _load(GOLDEN / f"v{latest}" / "succeeded.json")
    created = codec.decode(bytes.fromhex(doc["records"][0]["value"]))
    assert created.description == "golden task t-ok"
    # Some record of the latest logs is written with a schema of that release, and today's encoding of it is too.
    records = [bytes.fromhex(r["value"]) for p in FILES if p.parent.name == f"v{latest}" for r in _load(p)["records"]]
    newest = [data for data in records if codec.writer_version(data) == latest]
    assert newest, f"no record of the v{latest} logs is written with a v{latest} schema"
    assert {codec.writer_version(codec.encode(codec.decode(data))) for data in newest} == {latest}


def test_v5_logs_carry_a_requested_retry_delay_and_older_ones_none():
    def failures(version: int) -> list[TaskFailed]:
        return [e for e in _decode_log(_load(GOLDEN / f"v{version}" / "retries.json"))["t-retry"]
                if isinstance(e, TaskFailed)]

    assert [f.retry_delay_s for f in failures(5)] == [2.0, None]
    assert [f.retry_delay_s for f in failures(4)] == [None, None]


def test_v5_logs_carry_schedule_id_on_a_schedule_s_records():
    data = bytes.fromhex(_load(GOLDEN / "v5" / "schedule.json")["records"][0]["value"])
    assert codec.writer_version(data) == 5 == codec.writer_version(codec.encode(codec.decode(data)))
    assert codec.encode(codec.decode(data)) == data and codec.decode(data).schedule_id == "s-hourly"


def test_v6_logs_carry_why_a_failure_failed_and_older_ones_fold_without():
    def failures(version: int) -> list[TaskFailed]:
        return [e for e in _decode_log(_load(GOLDEN / f"v{version}" / "retries.json"))["t-retry"]
                if isinstance(e, TaskFailed)]

    assert [f.error_type for f in failures(6)] == ["ValueError", "ValueError"]
    assert all(f.traceback and f.traceback.endswith(f.error) for f in failures(6))
    assert [(f.error_type, f.traceback) for f in failures(5)] == [(None, None), (None, None)]
    # The state keeps them beside ``error`` while it is the failure's, and drops them when the task succeeds.
    for version, expected in ((6, "taskstream.executors.errors.PermanentError"), (5, None)):
        perm = domain.fold(_decode_log(_load(GOLDEN / f"v{version}" / "retries.json"))["t-perm"])
        assert isinstance(perm, TaskState) and perm.status == "failed" and perm.error_type == expected
        assert (perm.traceback is not None) == (expected is not None)
        retried = domain.fold(_decode_log(_load(GOLDEN / f"v{version}" / "retries.json"))["t-retry"])
        assert isinstance(retried, TaskState) and (retried.error, retried.error_type, retried.traceback) == (
            None, None, None)


def test_v8_logs_carry_a_key_s_rate_and_the_gate_s_timer_admits_the_waiter():
    by_key = _decode_log(_load(GOLDEN / "v8" / "rate_limits.json"))
    woken = [e for e in by_key["concurrency:api"] if type(e).__name__ == "GateWoken"]
    assert len(woken) == 1 and codec.writer_version(codec.encode(woken[0])) == 8
    gate = domain.fold(by_key["concurrency:api"][: by_key["concurrency:api"].index(woken[0])])
    assert isinstance(gate, GateState) and (gate.rate, gate.per_s, gate.waiting) == (1, 1.0, ["t-r2"])
    assert domain.evolve(gate, woken[0]).admitted == ["t-r2"]
    # set 7's gate had no rate: it folds to none
    v7 = domain.fold(_decode_log(_load(GOLDEN / "v7" / "concurrency.json"))["concurrency:acme"])
    assert isinstance(v7, GateState) and (v7.rate, v7.spent, v7.limit) == (None, [], 1)
