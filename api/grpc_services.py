"""taskstream.v1 servicers: every RPC goes through the code of its HTTP route (the adapter).

One rule, one place: an RPC turns its request message into the JSON the
HTTP route takes, validates it with the same pydantic request model
(``api/models.py``; a ``ValidationError`` becomes INVALID_ARGUMENT with a
``google.rpc.BadRequest`` naming the field by its path in the request
message, e.g. ``task.payload.n`` or ``tasks[3].retry.max_attempts``), calls
the route function itself with a minimal request (the app and the headers
the route reads: ``Idempotency-Key`` from the ``idempotency-key`` metadata,
``If-Match`` from ``expected_version``) and turns its JSON answer into the
response message (``json_format``: the task message has exactly the task
JSON's fields). Until the HTTP write path is one service layer (issue 14),
this module is the only place that knows how a route is called; switching
to that layer changes the ``_call`` sites here and nothing else.

Errors (raised by a route or returned as a problem) map to status codes with
``google.rpc.Status`` details (``grpc-status-details-bin``):

====================================  ======================================
HTTP                                  gRPC
====================================  ======================================
422 validation, 413 too-large         INVALID_ARGUMENT + BadRequest
404                                   NOT_FOUND
409 (impossible in this status)       FAILED_PRECONDITION + ErrorInfo
412 stale ``If-Match``                ABORTED + ErrorInfo (current version)
503 history-busy                      RESOURCE_EXHAUSTED + RetryInfo
503 read-too-expensive                RESOURCE_EXHAUSTED
503 broker unavailable                UNAVAILABLE + RetryInfo (1 s)
====================================  ======================================

Watches (``WatchTask``, ``WatchTasks``) stream from the change feed like the
SSE routes (``api/watch.py``); the cursor of each ``TaskChange`` resumes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import grpc
import pydantic
from google.protobuf import duration_pb2, json_format
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from starlette.datastructures import Headers

from taskstream.grpc.v1 import schedules_pb2, schedules_pb2_grpc, tasks_pb2, tasks_pb2_grpc, workflows_pb2
from taskstream.grpc.v1 import workflows_pb2_grpc
from taskstream.schemas import (
    BrokerUnavailable,
    CommandRejected,
    NotFound,
    Priority,
    RecordRefused,
    ScheduleStatus,
    Status,
    ValidationError,
    codec,
)

from . import idempotency
from .models import BatchIn, RedriveIn, ScheduleIn, TaskIn, TaskPatch, WorkflowIn, task_json
from .problems import _field, _message
from .routes import schedules as schedule_routes
from .routes import tasks as task_routes
from .routes import workflows as workflow_routes
from .routes.tasks import MAX_LIMIT, MAX_REASON
from .watch import Cursor, FellBehind, Filter, RenderCache, WatchUnavailable, parse_event_id, watch

log = logging.getLogger(__name__)

METADATA_IDEMPOTENCY_KEY = "idempotency-key"
_SAFE_INT = 2**53


class RpcError(Exception):
    """A status to end the call with: code, message and ``google.rpc`` detail messages."""

    def __init__(self, code: grpc.StatusCode, message: str, *details: Message) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


def bad_request(violations: list[tuple[str, str]]) -> RpcError:
    detail = error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field=f, description=m) for f, m in violations])
    return RpcError(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(f"{f}: {m}" for f, m in violations), detail)


def _retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    return error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=int(seconds),
                                                                          nanos=int(seconds % 1 * 1e9)))


def _error_info(reason: str, **metadata: Any) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain="taskstream",
                                       metadata={k: str(v) for k, v in metadata.items()})


def from_exception(exc: BaseException) -> RpcError | None:
    """The status of one of our errors (what ``problems.install`` maps to HTTP), None for anything else."""
    if isinstance(exc, RpcError):
        return exc
    if isinstance(exc, pydantic.ValidationError):
        return bad_request([(_field(e.get("loc", ())) + (e.get("ctx") or {}).get("json_path", ""), _message(e))
                            for e in exc.errors()])
    if isinstance(exc, ValidationError):
        return bad_request([(exc.field, exc.message)])
    if isinstance(exc, NotFound):
        return RpcError(grpc.StatusCode.NOT_FOUND, str(exc) or "not found")
    if isinstance(exc, CommandRejected):
        return RpcError(grpc.StatusCode.FAILED_PRECONDITION, str(exc), _error_info("CONFLICT"))
    if isinstance(exc, RecordRefused):
        return bad_request([("request", f"the event log refused the request's record: {exc}")])
    if isinstance(exc, BrokerUnavailable):
        log.warning("broker unavailable: %s", exc)
        return RpcError(grpc.StatusCode.UNAVAILABLE, f"the event log could not be written: {exc}", _retry_info(1))
    if isinstance(exc, FellBehind):
        return RpcError(grpc.StatusCode.ABORTED, str(exc), _error_info("WATCH_FELL_BEHIND"))
    if isinstance(exc, WatchUnavailable):
        return RpcError(grpc.StatusCode.UNAVAILABLE, str(exc), _retry_info(1))
    return None


def from_problem(status: int, body: dict[str, Any], headers: Any) -> RpcError:
    """The status of a problem answer (``application/problem+json``) a route returned."""
    kind = body.get("type", "").rsplit(":", 1)[-1]
    detail = body.get("detail", "")
    if status in (400, 413, 422):
        errors = body.get("errors") or [{"field": detail.split(":", 1)[0] or "request", "message": detail}]
        return bad_request([(e["field"], e["message"]) for e in errors])
    if status == 404:
        return RpcError(grpc.StatusCode.NOT_FOUND, detail)
    if status == 409:
        return RpcError(grpc.StatusCode.FAILED_PRECONDITION, detail, _error_info("CONFLICT"))
    if status == 412:
        return RpcError(grpc.StatusCode.ABORTED, detail, _error_info("STALE_VERSION", version=body.get("version")))
    if kind == "history-busy":
        return RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, detail,
                        _retry_info(float(headers.get("retry-after", "1"))))
    if kind == "read-too-expensive":
        return RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, detail, _error_info("READ_TOO_EXPENSIVE"))
    if status == 503:
        return RpcError(grpc.StatusCode.UNAVAILABLE, detail, _retry_info(1))
    return RpcError(grpc.StatusCode.INTERNAL, detail or f"HTTP {status}")


async def abort(context: grpc.aio.ServicerContext, error: RpcError) -> None:
    """End the call with ``error``, its details as ``google.rpc.Status`` in ``grpc-status-details-bin``."""
    status = status_pb2.Status(code=getattr(code_pb2, error.code.name), message=error.message)
    for d in error.details:
        status.details.add().Pack(d)
    await context.abort(error.code, error.message,
                        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),))


def rpc(method: Callable[..., Awaitable[Message]]) -> Callable[..., Awaitable[Message]]:
    """Map our errors to statuses (anything else is INTERNAL, logged, no details leaked)."""

    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except Exception as exc:
            error = from_exception(exc)
            if error is None:
                log.exception("gRPC %s failed", method.__name__)
                error = RpcError(grpc.StatusCode.INTERNAL, "an unexpected error occurred; it was logged")
            await abort(context, error)

    wrapper.__name__ = method.__name__
    return wrapper


def stream_rpc(method: Callable[..., AsyncIterator[Message]]) -> Callable[..., AsyncIterator[Message]]:
    async def wrapper(self, request, context):
        try:
            async for item in method(self, request, context):
                yield item
        except Exception as exc:
            error = from_exception(exc)
            if error is None:
                log.exception("gRPC %s failed", method.__name__)
                error = RpcError(grpc.StatusCode.INTERNAL, "an unexpected error occurred; it was logged")
            await abort(context, error)

    wrapper.__name__ = method.__name__
    return wrapper


# ------------------------------------------------------------ conversions


def _ints(value: Any) -> Any:
    """JSON from a ``google.protobuf.Value``: integral doubles within ±2^53 become integers (as in JSON)."""
    if isinstance(value, float) and value.is_integer() and -_SAFE_INT <= value <= _SAFE_INT:
        return int(value)
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value


def to_json(message: Message) -> dict[str, Any]:
    """The request message as the HTTP JSON body: set fields only, proto field names, times in RFC 3339."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _task_json(spec: dict[str, Any]) -> dict[str, Any]:
    if "payload" in spec:
        spec["payload"] = _ints(spec["payload"])
    return spec


def validate(model: type[pydantic.BaseModel], body: dict[str, Any], prefix: str = "") -> Any:
    """``model`` from ``body``; a ValidationError names each field with ``prefix`` (its path in the request)."""
    try:
        return model.model_validate(body)
    except pydantic.ValidationError as exc:
        raise bad_request([(prefix + _field(e.get("loc", ())) + (e.get("ctx") or {}).get("json_path", ""),
                            _message(e)) for e in exc.errors()]) from None


def task_message(task: dict[str, Any]) -> tasks_pb2.Task:
    return json_format.ParseDict(task, tasks_pb2.Task(), ignore_unknown_fields=True)


def schedule_message(schedule: dict[str, Any]) -> schedules_pb2.Schedule:
    return json_format.ParseDict(schedule, schedules_pb2.Schedule(), ignore_unknown_fields=True)


#: The serialized Task message of a watched state, built once however many streams send it.
watched_task = RenderCache(lambda state: task_message(task_json(state)).SerializeToString())


def change_bytes(cursor: str, task: bytes | None) -> bytes:
    """A serialized ``TaskChange``: its cursor field, then ``task`` (field 2, already serialized) appended.

    Protobuf's wire format is a sequence of fields, so appending the bytes of
    field 2 is the same as setting it (``grpc_server._add_tasks`` lets these
    bytes through unserialized).
    """
    head = tasks_pb2.TaskChange(cursor=cursor).SerializeToString()
    if task is None:
        return head
    return head + b"\x12" + _varint(len(task)) + task


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class _Request(SimpleNamespace):
    """What a route function reads of its request: ``app`` (``app.state``) and ``headers``."""


class _Adapter:
    def __init__(self, app: Any) -> None:
        self.app = app

    def request(self, context: grpc.aio.ServicerContext | None = None, **headers: str | None) -> _Request:
        hdrs = {name.replace("_", "-"): value for name, value in headers.items() if value is not None}
        if context is not None:
            key = dict(context.invocation_metadata() or ()).get(METADATA_IDEMPOTENCY_KEY)
            if key is not None:
                hdrs[idempotency.HEADER] = key
        return _Request(app=self.app, headers=Headers(hdrs))

    async def call(self, route: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Run an HTTP route function; its JSON answer, or ``RpcError`` for a problem answer."""
        response = await route(*args, **kwargs)
        body = codec.loads_json(bytes(response.body)) if response.body else {}
        if response.status_code >= 400:
            raise from_problem(response.status_code, body, response.headers)
        return body


def _one_of(value: str | None, allowed: type, field: str) -> Any:
    if value is None:
        return None
    try:
        return allowed(value)
    except ValueError:
        raise bad_request([(field, f"must be one of {', '.join(m.value for m in allowed)}")]) from None


def _limit(value: int | None) -> int:
    if value is None:
        return 100
    if not 1 <= value <= MAX_LIMIT:
        raise bad_request([("limit", f"must be between 1 and {MAX_LIMIT}")])
    return value


def _reason(value: str) -> str:
    if len(value) > MAX_REASON:
        raise bad_request([("reason", f"must be at most {MAX_REASON} characters")])
    return value


def _id(value: str, field: str = "id") -> str:
    if not value:
        raise bad_request([(field, "required")])
    return value


# --------------------------------------------------------------- services


class TaskService(tasks_pb2_grpc.TaskServiceServicer, _Adapter):
    """``taskstream.v1.TaskService``: the task routes of ``/api/v1``, plus watches over the change feed."""

    @rpc
    async def SubmitTask(self, request, context):
        body = validate(TaskIn, _task_json(to_json(request.task)), "task.")
        return task_message(await self.call(task_routes.submit_task, body, self.request(context)))

    @rpc
    async def SubmitTasks(self, request, context):
        body = validate(BatchIn, {"tasks": [_task_json(to_json(t)) for t in request.tasks]})
        out = await self.call(task_routes.submit_batch, body, self.request(context))
        return tasks_pb2.SubmitTasksResponse(tasks=[task_message(t) for t in out["tasks"]])

    @rpc
    async def GetTask(self, request, context):
        as_of = to_json(request)["as_of"] if request.HasField("as_of") else None
        return task_message(await self.call(task_routes.get_task, _id(request.id), self.request(), as_of=as_of))

    @rpc
    async def ListTasks(self, request, context):
        out = await self.call(
            task_routes.list_tasks, self.request(),
            status=_one_of(request.status if request.HasField("status") else None, Status, "status"),
            priority=_one_of(request.priority if request.HasField("priority") else None, Priority, "priority"),
            handler=request.handler if request.HasField("handler") else None,
            label=list(request.label),
            limit=_limit(request.limit if request.HasField("limit") else None),
            cursor=request.cursor if request.HasField("cursor") and request.cursor else None,
        )
        return tasks_pb2.ListTasksResponse(tasks=[task_message(t) for t in out["tasks"]],
                                           next_cursor=out["next_cursor"] or "", partial=out["partial"])

    @rpc
    async def UpdateTask(self, request, context):
        fields = to_json(request)
        fields.pop("id", None)
        fields.pop("expected_version", None)
        if request.HasField("payload"):
            fields["payload"] = _ints(json_format.MessageToDict(request.payload))
        body = validate(TaskPatch, fields)
        if_match = str(request.expected_version) if request.HasField("expected_version") else None
        out = await self.call(task_routes.update_task, _id(request.id), body, self.request(if_match=if_match))
        return task_message(out)

    @rpc
    async def CancelTask(self, request, context):
        out = await self.call(task_routes.cancel_task, _id(request.id), self.request(), reason=_reason(request.reason))
        return task_message(out)

    @rpc
    async def RetryTask(self, request, context):
        body = validate(RedriveIn, {"reason": request.reason})
        return task_message(await self.call(task_routes.redrive_task, _id(request.id), self.request(), body))

    @rpc
    async def GetTaskEvents(self, request, context):
        out = await self.call(task_routes.task_events, _id(request.id), self.request())
        return json_format.ParseDict(out, tasks_pb2.GetTaskEventsResponse(), ignore_unknown_fields=True)

    @stream_rpc
    async def WatchTask(self, request, context):
        store = self.app.state.read_model.store
        task_id = _id(request.id)
        if store.get(task_id) is None:
            raise NotFound(f"task {task_id} not found")
        after, version = parse_event_id(request.after, "after") if request.after else (None, None)
        async for e in watch(self.app.state.settings, self.app.state.read_model.feed, Filter(task_id=task_id), after,
                             current=lambda: store.get(task_id), last_version=version):
            yield change_bytes(e.id, watched_task(e.state))

    @stream_rpc
    async def WatchTasks(self, request, context):
        filter = Filter(statuses=frozenset(_one_of(s, Status, "status").value for s in request.status),
                        priorities=frozenset(_one_of(p, Priority, "priority").value for p in request.priority),
                        handlers=frozenset(request.handler))
        after = parse_event_id(request.cursor, "cursor")[0] if request.cursor else None
        async for e in watch(self.app.state.settings, self.app.state.read_model.feed, filter, after, announce=True):
            yield change_bytes(e.id, None if e.state is None else watched_task(e.state))


class WorkflowService(workflows_pb2_grpc.WorkflowServiceServicer, _Adapter):
    """``taskstream.v1.WorkflowService``: ``POST /api/v1/workflows``."""

    @rpc
    async def SubmitWorkflow(self, request, context):
        body = validate(WorkflowIn, {"tasks": [_task_json(to_json(t)) for t in request.tasks]})
        out = await self.call(workflow_routes.submit_workflow, body, self.request(context))
        return workflows_pb2.SubmitWorkflowResponse(workflow_id=out["workflow_id"], tasks=out["tasks"])


class ScheduleService(schedules_pb2_grpc.ScheduleServiceServicer, _Adapter):
    """``taskstream.v1.ScheduleService``: ``/api/v1/schedules``."""

    @rpc
    async def CreateSchedule(self, request, context):
        fields = to_json(request)
        if "task" in fields:
            _task_json(fields["task"])
        body = validate(ScheduleIn, fields)
        return schedule_message(await self.call(schedule_routes.create_schedule, body, self.request(context)))

    @rpc
    async def GetSchedule(self, request, context):
        return schedule_message(await self.call(schedule_routes.get_schedule, _id(request.id), self.request()))

    @rpc
    async def ListSchedules(self, request, context):
        out = await self.call(
            schedule_routes.list_schedules, self.request(),
            status=_one_of(request.status if request.HasField("status") else None, ScheduleStatus, "status"),
            limit=_limit(request.limit if request.HasField("limit") else None),
            cursor=request.cursor if request.HasField("cursor") and request.cursor else None,
        )
        return schedules_pb2.ListSchedulesResponse(schedules=[schedule_message(s) for s in out["schedules"]],
                                                   next_cursor=out["next_cursor"] or "")

    @rpc
    async def DeleteSchedule(self, request, context):
        return schedule_message(await self.call(schedule_routes.delete_schedule, _id(request.id), self.request(),
                                                reason=""))


__all__ = ["TaskService", "WorkflowService", "ScheduleService", "Cursor"]
