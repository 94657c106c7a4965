"""The taskstream.v1 messages have exactly the fields of the HTTP JSON (DESIGN §8), and convert both ways."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import json_format

from taskstream.api.grpc_services import RpcError, _ints, task_message, to_json, validate
from taskstream.api.models import TaskIn, schedule_json, task_json
from taskstream.grpc.v1 import schedules_pb2, tasks_pb2
from taskstream.schemas import ScheduleState, TaskState

AT = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)


def test_task_and_schedule_messages_have_the_json_fields() -> None:
    state = TaskState(task_id="t", handler="h", status="failed", priority="high", payload='{"n": 1}', created_at=AT,
                      updated_at=AT, result='[1, 2.5, null]', error="boom", timeout_s=3.0, version=4)
    as_json = task_json(state)
    assert set(tasks_pb2.Task.DESCRIPTOR.fields_by_name) == set(as_json)
    message = task_message(as_json)
    back = json_format.MessageToDict(message, preserving_proto_field_name=True)
    assert back["created_at"] == "2026-01-02T03:04:05.600Z" and back["error"] == "boom" and back["version"] == "4"
    assert _ints(json_format.MessageToDict(message.payload)) == {"n": 1}
    assert json_format.MessageToDict(message.result) == [1, 2.5, None]
    assert not message.HasField("started_at") and not message.HasField("key")
    schedule = ScheduleState(schedule_id="s", cron="* * * * *", timezone="UTC", template='{"handler": "h"}',
                             status="active", created_at=AT, updated_at=AT)
    assert set(schedules_pb2.Schedule.DESCRIPTOR.fields_by_name) == set(schedule_json(schedule))


def test_a_request_validates_with_the_http_model_and_names_the_field_by_its_path() -> None:
    spec = json_format.ParseDict({"handler": "h", "payload": {"n": 3, "f": 1.5}, "retry": {"max_attempts": 2},
                                  "run_at": "2030-01-01T00:00:00Z"}, tasks_pb2.TaskSpec())
    body = validate(TaskIn, {**to_json(spec), "payload": _ints(to_json(spec)["payload"])}, "task.")
    assert body.payload == {"n": 3, "f": 1.5} and body.retry.max_attempts == 2 and body.run_at == "2030-01-01T00:00:00Z"
    bad = json_format.ParseDict({"handler": "h", "labels": {"a:b": "c"}, "retry": {"max_attempts": 0}},
                                tasks_pb2.TaskSpec())
    with pytest.raises(RpcError) as exc:
        validate(TaskIn, to_json(bad), "task.")
    assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT
    fields = [v.field for v in exc.value.details[0].field_violations]
    assert sorted(fields) == ["task.labels.a:b", "task.retry.max_attempts"]
