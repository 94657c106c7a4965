"""The taskstream.v1 messages have exactly the fields of the HTTP JSON (DESIGN §8), and convert both ways."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import json_format

from taskstream.api.grpc_services import RpcError, _ints, task_message, to_json, validate, workflow_message
from taskstream.api.models import TaskIn, schedule_json, task_json, workflow_task_json
from taskstream.grpc.v1 import schedules_pb2, tasks_pb2, workflows_pb2
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
    failed = workflow_task_json(TaskState(task_id="w", handler="h", status="failed", priority="high", payload="{}",
                                          error="ValueError: no",
                                          error_type="ValueError", created_at=AT, updated_at=AT))
    assert set(workflows_pb2.WorkflowTaskState.DESCRIPTOR.fields_by_name) == set(failed)
    assert workflow_message({"id": "x", "tasks": [failed]}).tasks[0].error_type == "ValueError"


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


def test_problems_and_errors_map_to_status_codes_with_details() -> None:
    from google.rpc import error_details_pb2

    from taskstream.api.grpc_services import from_exception
    from taskstream.api.history import HistoryBusy, HistoryTooExpensive, ReadLimits
    from taskstream.schemas import BrokerUnavailable, CommandRejected, NotFound, StaleVersion, TooLarge, ValidationError

    busy = HistoryBusy(ReadLimits(history_wait_s=2.5))
    error = from_exception(busy)
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.message == str(busy)
    assert isinstance(error.details[0], error_details_pb2.RetryInfo) and error.details[0].retry_delay.seconds == 3
    expensive = from_exception(HistoryTooExpensive("t", "p.events", 0, 10, 10, 20, 0.5))
    assert expensive.code == grpc.StatusCode.RESOURCE_EXHAUSTED and expensive.details[0].reason == "READ_TOO_EXPENSIVE"
    stale = from_exception(StaleVersion("stale", version=7))
    assert stale.code == grpc.StatusCode.ABORTED and stale.details[0].metadata["version"] == "7"
    too_large = from_exception(TooLarge("tasks[2].payload", 5_000_000, 1_000_000))
    assert too_large.code == grpc.StatusCode.INVALID_ARGUMENT
    assert too_large.details[0].field_violations[0].field == "tasks[2].payload"
    assert from_exception(NotFound("x")).code == grpc.StatusCode.NOT_FOUND
    assert from_exception(CommandRejected("x")).code == grpc.StatusCode.FAILED_PRECONDITION
    assert from_exception(ValidationError("cursor", "bad")).details[0].field_violations[0].field == "cursor"
    down = from_exception(BrokerUnavailable("down"))
    assert down.code == grpc.StatusCode.UNAVAILABLE and isinstance(down.details[0], error_details_pb2.RetryInfo)
    from taskstream.schemas import WriteOutcomeUnknown

    maybe = from_exception(WriteOutcomeUnknown("timed out"))  # gRPC's own "may have completed"
    assert maybe.code == grpc.StatusCode.DEADLINE_EXCEEDED and "idempotency-key" in maybe.message
    assert from_exception(RuntimeError("bug")) is None  # INTERNAL, logged, no details


def test_a_change_assembled_from_bytes_is_the_message() -> None:
    from taskstream.api.grpc_services import change_bytes

    for payload in ({"n": 1}, {"big": "x" * 300}, {"huge": "y" * 20000}):
        task = task_message({"id": "t", "status": "queued", "payload": payload, "version": 3})
        made = tasks_pb2.TaskChange.FromString(change_bytes("1.2.3:3", task.SerializeToString()))
        assert made == tasks_pb2.TaskChange(cursor="1.2.3:3", task=task)
    assert not tasks_pb2.TaskChange.FromString(change_bytes("0", None)).HasField("task")


def test_grpc_refuses_to_listen_beyond_loopback_without_authentication() -> None:
    import asyncio
    from types import SimpleNamespace

    from taskstream.api import auth, grpc_server
    from taskstream.schemas import Settings

    ctx = SimpleNamespace(settings=Settings(grpc_port=0, grpc_host="0.0.0.0"))
    with pytest.raises(auth.InsecureConfig, match="refusing to serve gRPC on 0.0.0.0"):
        asyncio.run(grpc_server.start(ctx))


def test_the_committed_stubs_match_the_protos(tmp_path) -> None:
    """`make proto` was run after the last change of a .proto (descriptors compared, not generated text)."""
    from pathlib import Path

    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    from taskstream.grpc.v1 import workflows_pb2

    root = Path(__file__).resolve().parents[2] / "schemas" / "proto"
    out = tmp_path / "set.pb"
    protos = sorted(str(p.relative_to(root)) for p in (root / "taskstream" / "grpc" / "v1").glob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    assert protoc.main(["protoc", f"-I{root}", f"-I{include}", f"--descriptor_set_out={out}", *protos]) == 0
    fresh = {f.name: f for f in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file}
    for f in fresh.values():  # the generated code leaves out the json names protoc fills in
        for message in _messages(f.message_type):
            for field in message.field:
                field.ClearField("json_name")
    for module in (tasks_pb2, schedules_pb2, workflows_pb2):
        committed = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        assert committed == fresh[module.DESCRIPTOR.name], f"{module.DESCRIPTOR.name}: run `make proto`"


def _messages(messages):
    for m in messages:
        yield m
        yield from _messages(m.nested_type)


def _outcome(make):
    try:
        return "ok", make()
    except Exception as exc:  # both ways must fail alike, if at all
        return "error", type(exc)


def test_read_answers_are_the_messages_of_the_http_json() -> None:
    """gRPC reads render the typed values of ``api.reads``; the message is the one the HTTP answer's JSON makes."""
    import math

    from hypothesis import HealthCheck, assume, given, settings
    from hypothesis import strategies as st

    from taskstream.api.history import event_json
    from taskstream.api.problems import JSONResponse
    from taskstream.schemas import codec
    from taskstream.schemas.events import EVENT_TYPES

    from . import strategies as s

    def over_http(body):
        return codec.loads_json(bytes(JSONResponse(body).body))

    def finite(value) -> bool:
        """No infinite double anywhere: JSON has none (it writes null), so only the typed value can carry one."""
        if isinstance(value, float):
            return math.isfinite(value)
        if isinstance(value, dict):
            return all(map(finite, value.values()))
        if isinstance(value, list):
            return all(map(finite, value))
        return True

    @settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
    @given(s.task_state, st.lists(st.one_of(*(s.BY_RECORD[t.__name__] for t in EVENT_TYPES)), max_size=4))
    def check(state, events):
        assume(finite(task_json(state)) and all(finite(event_json(e)) for e in events))
        assert _outcome(lambda: task_message(task_json(state))) == _outcome(
            lambda: task_message(over_http(task_json(state))))
        body = {"task_id": state.task_id, "events": [event_json(e) for e in events]}

        def events_message(b):
            return json_format.ParseDict(b, tasks_pb2.GetTaskEventsResponse(), ignore_unknown_fields=True)

        assert _outcome(lambda: events_message(body)) == _outcome(lambda: events_message(over_http(body)))

    check()
