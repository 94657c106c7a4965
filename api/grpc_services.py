"""taskstream.v1 servicers: the same rules as HTTP, through the same code.

An RPC turns its request message into the JSON the HTTP route takes and
validates it with the same pydantic request model (``api/models.py``; a
``ValidationError`` becomes INVALID_ARGUMENT with a ``google.rpc.BadRequest``
naming the field by its path in the request message, e.g. ``task.payload.n``
or ``tasks[3].retry.max_attempts``). Writes call the API's one write path,
``api/service.py``, as the HTTP routes do (the service makes every check of
a write: a workflow's graph, a schedule's fields and sub-minute cron rule);
reads call the API's one read path, ``api/reads.py``, as the HTTP routes do.
Both answer typed values (``TaskState``, ``ScheduleState``, events) that
become response messages through the same JSON the HTTP routes send
(``json_format``: the task message has exactly the task JSON's fields). The
servicers receive the app's ``ApiContext`` (``api/context.py``). The
idempotency key comes from the ``idempotency-key`` metadata, the trace a
submit continues from ``traceparent``/``tracestate`` (docs/tracing.md).

Every call is authenticated and authorized like the HTTP route it mirrors
(``RPC_ROUTES`` names it; the role comes from ``auth.ROUTE_ROLES``):
metadata ``authorization: Bearer <JWT or API key>`` or ``x-api-key``,
handler patterns and rate limits (one token a call, one more per task beyond
the first of a batch or workflow), and the principal is the actor of the
events written.

Errors map to status codes with ``google.rpc.Status`` details
(``grpc-status-details-bin``):

====================================  ======================================
HTTP                                  gRPC
====================================  ======================================
422 validation, 413 too-large         INVALID_ARGUMENT + BadRequest
401 / 403                             UNAUTHENTICATED / PERMISSION_DENIED
404                                   NOT_FOUND
409 (impossible in this status)       FAILED_PRECONDITION + ErrorInfo
412 stale ``If-Match``                ABORTED + ErrorInfo (current version)
429 rate limited                      RESOURCE_EXHAUSTED + RetryInfo
503 history-busy                      RESOURCE_EXHAUSTED + RetryInfo
503 read-too-expensive                RESOURCE_EXHAUSTED
503 broker or auth unavailable        UNAVAILABLE + RetryInfo (1 s)
504 write-outcome-unknown             DEADLINE_EXCEEDED + RetryInfo (1 s)
====================================  ======================================

Watches (``WatchTask``, ``WatchTasks``) stream from the change feed like the
SSE routes (``api/watch.py``); the cursor of each ``TaskChange`` resumes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, TypeVar

import grpc
import pydantic
from google.protobuf import duration_pb2, json_format
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from taskstream.grpc.v1 import (
    flow_pb2,
    flow_pb2_grpc,
    schedules_pb2,
    schedules_pb2_grpc,
    tasks_pb2,
    tasks_pb2_grpc,
    workers_pb2,
    workers_pb2_grpc,
    workflows_pb2,
    workflows_pb2_grpc,
)
from taskstream.schemas import (
    BrokerUnavailable,
    CommandRejected,
    NotFound,
    Priority,
    RecordRefused,
    ScheduleStatus,
    StaleVersion,
    Status,
    TooLarge,
    ValidationError,
    WorkflowStatus,
    WriteOutcomeUnknown,
)
from taskstream.schemas.limits import MAX_ID_CHARS
from taskstream.schemas.observability import about
from taskstream.schemas.tracing import TRACEPARENT, TRACESTATE, TraceContext

from . import auth, idempotency, reads, service
from .context import ApiContext
from .history import HistoryBusy, HistoryTooExpensive, event_json
from .limits import limits_body
from .models import (
    BackfillIn,
    BatchIn,
    LimitIn,
    RedriveIn,
    ScheduleIn,
    TaskIn,
    TaskPatch,
    WorkflowIn,
    backfill_json,
    schedule_json,
    task_json,
    template_handler,
    workflow_json,
)
from .problems import violation
from .rate_limit import client_address
from .reads import MAX_LIMIT
from .revalidate import while_admitted
from .service import MAX_REASON
from .watch import FellBehind, Filter, RenderCache, WatchUnavailable, parse_event_id, watch
from .workers import ALIVE, GONE, workers_body

T = TypeVar("T")

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
        return bad_request([violation(e) for e in exc.errors()])
    if isinstance(exc, ValidationError):
        return bad_request(exc.violations)
    if isinstance(exc, TooLarge):
        return bad_request([(exc.field, str(exc).split(": ", 1)[-1])])
    if isinstance(exc, NotFound):
        return RpcError(grpc.StatusCode.NOT_FOUND, str(exc) or "not found")
    if isinstance(exc, StaleVersion):
        return RpcError(grpc.StatusCode.ABORTED, str(exc), _error_info("STALE_VERSION", version=exc.version))
    if isinstance(exc, CommandRejected):
        return RpcError(grpc.StatusCode.FAILED_PRECONDITION, str(exc), _error_info("CONFLICT"))
    if isinstance(exc, RecordRefused):
        return bad_request([("request", f"the event log refused the request's record: {exc}")])
    if isinstance(exc, WriteOutcomeUnknown):  # gRPC's own meaning: the change may have happened all the same
        log.warning("write outcome unknown: %s", exc)
        return RpcError(grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"the event log did not confirm the write in time and may have taken it all the same: {exc}; "
                        "retry with the same idempotency-key to learn the outcome", _retry_info(1))
    if isinstance(exc, BrokerUnavailable):
        log.warning("broker unavailable: %s", exc)
        return RpcError(grpc.StatusCode.UNAVAILABLE, f"the event log could not be written: {exc}", _retry_info(1))
    if isinstance(exc, auth.AuthUnavailable):
        return RpcError(grpc.StatusCode.UNAVAILABLE, exc.detail, _retry_info(1))
    if isinstance(exc, auth.Forbidden):
        return RpcError(grpc.StatusCode.PERMISSION_DENIED, exc.detail, _error_info(exc.error or "FORBIDDEN"))
    if isinstance(exc, auth.AuthError):
        return RpcError(grpc.StatusCode.UNAUTHENTICATED, exc.detail, _error_info(exc.error or "UNAUTHENTICATED"))
    if isinstance(exc, auth.RateLimited):
        return RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"rate limit exceeded: {exc.decision.limit} requests (or batched tasks) in a burst; this "
                        f"call costs {exc.cost}; retry in {exc.decision.retry_after_s} s",
                        _retry_info(max(1, exc.decision.retry_after_s)))
    if isinstance(exc, FellBehind):
        return RpcError(grpc.StatusCode.ABORTED, str(exc), _error_info("WATCH_FELL_BEHIND"))
    if isinstance(exc, WatchUnavailable):
        return RpcError(grpc.StatusCode.UNAVAILABLE, str(exc), _retry_info(1))
    if isinstance(exc, HistoryBusy):
        return RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), _retry_info(exc.retry_after_s))
    if isinstance(exc, HistoryTooExpensive):
        log.warning("%s", exc, extra=about(exc.task_id))
        return RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), _error_info("READ_TOO_EXPENSIVE"))
    return None


async def abort(context: grpc.aio.ServicerContext, error: RpcError) -> None:
    """End the call with ``error``, its details as ``google.rpc.Status`` in ``grpc-status-details-bin``."""
    status = status_pb2.Status(code=getattr(code_pb2, error.code.name), message=error.message)
    for d in error.details:
        status.details.add().Pack(d)
    await context.abort(error.code, error.message,
                        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),))


def rpc(method: Callable[..., Awaitable[Message]]) -> Callable[..., Awaitable[Message]]:
    """Admit the caller (``_Adapter.admit``), run the RPC with it, map our errors to statuses.

    Anything unexpected is INTERNAL, logged, with no details leaked.
    """

    async def wrapper(self, request, context):
        try:
            caller = await self.admit(context, method.__name__)
            return await method(self, request, context, caller)
        except Exception as exc:
            await _failed(context, method.__name__, exc)

    wrapper.__name__ = method.__name__
    return wrapper


def stream_rpc(method: Callable[..., AsyncIterator[Message]]) -> Callable[..., AsyncIterator[Message]]:
    """``rpc`` for a server-streaming method."""

    async def wrapper(self, request, context):
        try:
            caller = await self.admit(context, method.__name__)
            async for item in method(self, request, context, caller):
                yield item
        except Exception as exc:
            await _failed(context, method.__name__, exc)

    wrapper.__name__ = method.__name__
    return wrapper


async def _failed(context, name: str, exc: Exception) -> None:
    """End the call with the status of ``exc`` (INTERNAL, logged, for anything unexpected)."""
    error = from_exception(exc)
    if error is None:
        log.exception("gRPC %s failed", name)
        error = RpcError(grpc.StatusCode.INTERNAL, "an unexpected error occurred; it was logged")
    await abort(context, error)


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
        raise bad_request([(prefix + field, message) for field, message in map(violation, exc.errors())]) from None


def task_message(task: dict[str, Any]) -> tasks_pb2.Task:
    return json_format.ParseDict(task, tasks_pb2.Task(), ignore_unknown_fields=True)


def workflow_message(workflow: dict[str, Any]) -> workflows_pb2.Workflow:
    return json_format.ParseDict(workflow, workflows_pb2.Workflow(), ignore_unknown_fields=True)


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


#: The HTTP route each RPC mirrors: its role comes from ``auth.ROUTE_ROLES``, the one table of who may call what.
RPC_ROUTES: dict[str, tuple[str, str]] = {
    "SubmitTask": ("POST", "/api/v1/tasks"),
    "SubmitTasks": ("POST", "/api/v1/tasks:batch"),
    "GetTask": ("GET", "/api/v1/tasks/{task_id}"),
    "ListTasks": ("GET", "/api/v1/tasks"),
    "UpdateTask": ("PATCH", "/api/v1/tasks/{task_id}"),
    "CancelTask": ("DELETE", "/api/v1/tasks/{task_id}"),
    "RetryTask": ("POST", "/api/v1/tasks/{task_id}/retry"),
    "GetTaskEvents": ("GET", "/api/v1/tasks/{task_id}/events"),
    "WatchTask": ("GET", "/api/v1/tasks/{task_id}/watch"),
    "WatchTasks": ("GET", "/api/v1/tasks/watch"),
    "SubmitWorkflow": ("POST", "/api/v1/workflows"),
    "GetWorkflow": ("GET", "/api/v1/workflows/{workflow_id}"),
    "ListWorkflows": ("GET", "/api/v1/workflows"),
    "CreateSchedule": ("POST", "/api/v1/schedules"),
    "GetSchedule": ("GET", "/api/v1/schedules/{schedule_id}"),
    "ListSchedules": ("GET", "/api/v1/schedules"),
    "DeleteSchedule": ("DELETE", "/api/v1/schedules/{schedule_id}"),
    "PauseSchedule": ("POST", "/api/v1/schedules/{schedule_id}:{action}"),
    "ResumeSchedule": ("POST", "/api/v1/schedules/{schedule_id}:{action}"),
    "RunSchedule": ("POST", "/api/v1/schedules/{schedule_id}:{action}"),
    "BackfillSchedule": ("POST", "/api/v1/schedules/{schedule_id}:backfill"),
    "ListWorkers": ("GET", "/api/v1/workers"),
    "PauseHandler": ("POST", "/api/v1/handlers/{handler}:{action}"),
    "ResumeHandler": ("POST", "/api/v1/handlers/{handler}:{action}"),
    "PauseWorkflow": ("POST", "/api/v1/workflows/{workflow_id}:{action}"),
    "ResumeWorkflow": ("POST", "/api/v1/workflows/{workflow_id}:{action}"),
    "ListPauses": ("GET", "/api/v1/pauses"),
    "ListLimits": ("GET", "/api/v1/limits"),
    "SetHandlerLimit": ("PUT", "/api/v1/limits/handlers/{handler}"),
    "ClearHandlerLimit": ("DELETE", "/api/v1/limits/handlers/{handler}"),
}


@dataclass(frozen=True, slots=True)
class Caller:
    """Who calls (``principal``), from where (``peer``: its address without the port), with which
    ``idempotency-key`` metadata (``key``), in which trace (``traceparent``/``tracestate`` metadata: ``trace``)."""

    principal: auth.Principal
    peer: str
    key: str | None
    trace: TraceContext | None = None

    @property
    def actor(self) -> str | None:
        """The actor of the events the call writes: None for an anonymous caller, as over HTTP."""
        return None if self.principal.kind == "anonymous" else self.principal.id


class _Adapter:
    """What every servicer shares: the app's context, and admitting a call as the HTTP route it mirrors."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    async def admit(self, context: grpc.aio.ServicerContext, rpc_name: str) -> Caller:
        """Authenticate and authorize the call as its HTTP route, charge the rate limit; the caller."""
        metadata = {k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        authenticator = self.ctx.authenticator
        peer = client_address(context.peer() or "unknown")  # a new channel per call must not get a new bucket
        need = auth.required(*RPC_ROUTES[rpc_name])
        if need == auth.OPEN:
            principal = auth.ANONYMOUS if not authenticator.enabled else auth.NOBODY
        else:
            if need is None:
                raise auth.Forbidden(f"{rpc_name} has no declared role (api/auth.py ROUTE_ROLES): refused")
            args = (metadata.get("authorization"), metadata.get("x-api-key"))
            principal = (await asyncio.to_thread(authenticator.authenticate, *args) if authenticator.blocking
                         else authenticator.authenticate(*args))
            if isinstance(need, auth.Role):
                auth.authorize(principal, need)
            self.ctx.rate_limit.take(principal, peer, 1)
        return Caller(principal=principal, peer=peer,
                      key=idempotency.check_key(metadata.get(METADATA_IDEMPOTENCY_KEY)),
                      trace=TraceContext.parse(metadata.get(TRACEPARENT), metadata.get(TRACESTATE)))

    def admitted(self, context: grpc.aio.ServicerContext, rpc_name: str, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """``items`` of a streaming call, ended when the call's credential stops admitting it (``revalidate``)."""
        need = auth.required(*RPC_ROUTES[rpc_name])
        if not isinstance(need, auth.Role):
            return items
        metadata = {k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        return while_admitted(items, self.ctx.authenticator, need, metadata.get("authorization"),
                              metadata.get("x-api-key"))

    def admit_tasks(self, caller: Caller, handlers: list[str], tasks: int = 1) -> None:
        """``auth.admit`` for a call that submits ``tasks`` tasks to ``handlers``: handler patterns, rate tokens."""
        auth.authorize_handlers(caller.principal, handlers)
        if tasks > 1:
            try:
                self.ctx.rate_limit.take(caller.principal, caller.peer, tasks - 1)
            except auth.RateLimited as exc:
                raise auth.RateLimited(exc.decision, tasks) from None


def _one_of(value: str | None, allowed: type[Enum], field: str) -> Any:
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


def _prefix(value: str) -> str:
    if len(value) > MAX_ID_CHARS:
        raise bad_request([("prefix", f"must be at most {MAX_ID_CHARS} characters")])
    return value


def _id(value: str, field: str = "id") -> str:
    if not value:
        raise bad_request([(field, "required")])
    return value


# --------------------------------------------------------------- services


class TaskService(tasks_pb2_grpc.TaskServiceServicer, _Adapter):
    """``taskstream.v1.TaskService``: the task operations of ``/api/v1``, plus watches over the change feed."""

    @rpc
    async def SubmitTask(self, request, context, caller):
        body = validate(TaskIn, _task_json(to_json(request.task)), "task.")
        self.admit_tasks(caller, [body.handler])
        task = await service.submit_task(self.ctx, body, key=caller.key, actor=caller.actor, trace=caller.trace)
        return task_message(task_json(task))

    @rpc
    async def SubmitTasks(self, request, context, caller):
        body = validate(BatchIn, {"tasks": [_task_json(to_json(t)) for t in request.tasks]})
        self.admit_tasks(caller, [t.handler for t in body.tasks], tasks=len(body.tasks))
        tasks = await service.submit_batch(self.ctx, body, key=caller.key, actor=caller.actor, trace=caller.trace)
        return tasks_pb2.SubmitTasksResponse(tasks=[task_message(task_json(t)) for t in tasks])

    @rpc
    async def GetTask(self, request, context, caller):
        as_of = to_json(request)["as_of"] if request.HasField("as_of") else None
        task_id = _id(request.id)
        if as_of is not None:
            task = await reads.task_at(self.ctx, task_id, reads.parse_as_of(as_of))
        else:
            task = reads.get_task(self.ctx, task_id)
        return task_message(task_json(task))

    @rpc
    async def ListTasks(self, request, context, caller):
        page = await reads.list_tasks(
            self.ctx,
            status=_one_of(request.status if request.HasField("status") else None, Status, "status"),
            priority=_one_of(request.priority if request.HasField("priority") else None, Priority, "priority"),
            handler=request.handler if request.HasField("handler") else None,
            labels=list(request.label),
            prefix=_prefix(request.prefix) if request.HasField("prefix") and request.prefix else None,
            limit=_limit(request.limit if request.HasField("limit") else None),
            cursor=request.cursor if request.HasField("cursor") and request.cursor else None,
        )
        return tasks_pb2.ListTasksResponse(tasks=[task_message(task_json(t)) for t in page.tasks],
                                           next_cursor=page.next_cursor or "", partial=page.partial)

    @rpc
    async def UpdateTask(self, request, context, caller):
        fields = to_json(request)
        fields.pop("id", None)
        fields.pop("expected_version", None)
        if request.HasField("payload"):
            fields["payload"] = _ints(json_format.MessageToDict(request.payload))
        body = validate(TaskPatch, fields)
        expected = request.expected_version if request.HasField("expected_version") else None
        task = await service.update_task(self.ctx, _id(request.id), body, expected_version=expected,
                                         actor=caller.actor)
        return task_message(task_json(task))

    @rpc
    async def CancelTask(self, request, context, caller):
        task = await service.cancel_task(self.ctx, _id(request.id), reason=_reason(request.reason),
                                         actor=caller.actor)
        return task_message(task_json(task))

    @rpc
    async def RetryTask(self, request, context, caller):
        body = validate(RedriveIn, {"reason": request.reason})
        task = await service.redrive_task(self.ctx, _id(request.id), reason=body.reason, actor=caller.actor)
        return task_message(task_json(task))

    @rpc
    async def GetTaskEvents(self, request, context, caller):
        task_id = _id(request.id)
        events = await reads.task_events(self.ctx, task_id)
        return json_format.ParseDict({"task_id": task_id, "events": [event_json(e) for e in events]},
                                     tasks_pb2.GetTaskEventsResponse(), ignore_unknown_fields=True)

    @stream_rpc
    async def WatchTask(self, request, context, caller):
        task_id = _id(request.id)
        reads.get_task(self.ctx, task_id)  # NOT_FOUND for a task the read model does not know
        store = self.ctx.read_model.store
        after, version = parse_event_id(request.after, "after") if request.after else (None, None)
        events = watch(self.ctx.settings, self.ctx.read_model.feed, Filter(task_id=task_id), after,
                       current=lambda: store.get(task_id), last_version=version)
        async for e in self.admitted(context, "WatchTask", events):
            yield change_bytes(e.id, watched_task(e.state))

    @stream_rpc
    async def WatchTasks(self, request, context, caller):
        filter = Filter(statuses=frozenset(_one_of(s, Status, "status").value for s in request.status),
                        priorities=frozenset(_one_of(p, Priority, "priority").value for p in request.priority),
                        handlers=frozenset(request.handler))
        after = parse_event_id(request.cursor, "cursor")[0] if request.cursor else None
        events = watch(self.ctx.settings, self.ctx.read_model.feed, filter, after, announce=True)
        async for e in self.admitted(context, "WatchTasks", events):
            yield change_bytes(e.id, None if e.state is None else watched_task(e.state))


class WorkflowService(workflows_pb2_grpc.WorkflowServiceServicer, _Adapter):
    """``taskstream.v1.WorkflowService``: ``/api/v1/workflows``."""

    @rpc
    async def SubmitWorkflow(self, request, context, caller):
        body = validate(WorkflowIn, {"tasks": [_task_json(to_json(t)) for t in request.tasks]})
        self.admit_tasks(caller, [t.handler for t in body.tasks], tasks=len(body.tasks))
        workflow_id, ids = await service.submit_workflow(self.ctx, body, key=caller.key, actor=caller.actor,
                                                         trace=caller.trace)
        return workflows_pb2.SubmitWorkflowResponse(workflow_id=workflow_id, tasks=ids)

    @rpc
    async def GetWorkflow(self, request, context, caller):
        wf = await reads.get_workflow(self.ctx, _id(request.id))
        return workflow_message(workflow_json(wf.summary, wf.tasks, wf.edges, wf.truncated))

    @rpc
    async def ListWorkflows(self, request, context, caller):
        page = reads.list_workflows(
            self.ctx,
            status=_one_of(request.status if request.HasField("status") else None, WorkflowStatus, "status"),
            limit=_limit(request.limit if request.HasField("limit") else None),
            cursor=request.cursor if request.HasField("cursor") and request.cursor else None,
        )
        return workflows_pb2.ListWorkflowsResponse(workflows=[workflow_message(workflow_json(w))
                                                              for w in page.workflows],
                                                   next_cursor=page.next_cursor or "")


class ScheduleService(schedules_pb2_grpc.ScheduleServiceServicer, _Adapter):
    """``taskstream.v1.ScheduleService``: ``/api/v1/schedules``."""

    @rpc
    async def CreateSchedule(self, request, context, caller):
        fields = to_json(request)
        if "task" in fields:
            _task_json(fields["task"])
        body = validate(ScheduleIn, fields)
        self.admit_tasks(caller, [body.task.handler])
        schedule = await service.create_schedule(self.ctx, body, key=caller.key, actor=caller.actor)
        return schedule_message(schedule_json(schedule))

    @rpc
    async def GetSchedule(self, request, context, caller):
        return schedule_message(schedule_json(reads.get_schedule(self.ctx, _id(request.id))))

    @rpc
    async def ListSchedules(self, request, context, caller):
        page = reads.list_schedules(
            self.ctx,
            status=_one_of(request.status if request.HasField("status") else None, ScheduleStatus, "status"),
            limit=_limit(request.limit if request.HasField("limit") else None),
            cursor=request.cursor if request.HasField("cursor") and request.cursor else None,
        )
        return schedules_pb2.ListSchedulesResponse(
            schedules=[schedule_message(schedule_json(s)) for s in page.schedules], next_cursor=page.next_cursor or "")

    @rpc
    async def DeleteSchedule(self, request, context, caller):
        schedule = await service.delete_schedule(self.ctx, _id(request.id), reason="", actor=caller.actor)
        return schedule_message(schedule_json(schedule))

    async def _change(self, request, caller: Caller, action: str) -> schedules_pb2.Schedule:
        schedule_id = _id(request.id)
        if action == "run":
            self.admit_tasks(caller, [template_handler(reads.get_schedule(self.ctx, schedule_id).template)])
        after = await service.change_schedule(self.ctx, schedule_id, action, reason=_reason(request.reason),
                                              actor=caller.actor)
        return schedule_message(schedule_json(after))

    @rpc
    async def PauseSchedule(self, request, context, caller):
        return await self._change(request, caller, "pause")

    @rpc
    async def ResumeSchedule(self, request, context, caller):
        return await self._change(request, caller, "resume")

    @rpc
    async def RunSchedule(self, request, context, caller):
        return await self._change(request, caller, "run")

    @rpc
    async def BackfillSchedule(self, request, context, caller):
        schedule_id = _id(request.id)
        fields = to_json(request)
        fields.pop("id", None)
        body = validate(BackfillIn, fields)
        self.admit_tasks(caller, [template_handler(reads.get_schedule(self.ctx, schedule_id).template)])
        event, tasks = await service.backfill_schedule(self.ctx, schedule_id, body, actor=caller.actor)
        return json_format.ParseDict(backfill_json(event, tasks), schedules_pb2.BackfillScheduleResponse(),
                                     ignore_unknown_fields=True)



class WorkerService(workers_pb2_grpc.WorkerServiceServicer, _Adapter):
    """``taskstream.v1.WorkerService``: ``/api/v1/workers`` (the same body, ``api.workers.workers_body``)."""

    @rpc
    async def ListWorkers(self, request, context, caller):
        state = request.status if request.HasField("status") else None
        if state is not None and state not in (ALIVE, GONE):
            raise bad_request([("status", f"must be one of {ALIVE}, {GONE}")])
        body = workers_body(self.ctx.workers, datetime.now(UTC), state)
        return json_format.ParseDict(body, workers_pb2.ListWorkersResponse(), ignore_unknown_fields=True)


class FlowService(flow_pb2_grpc.FlowServiceServicer, _Adapter):
    """``taskstream.v1.FlowService``: ``/api/v1/handlers/{h}:pause|:resume``, ``/api/v1/workflows/{id}:pause|:resume``,
    ``/api/v1/pauses``, ``/api/v1/limits`` and ``/api/v1/limits/handlers/{h}``, through the same service calls."""

    async def _pause(self, request, caller: Caller, kind: str, action: str) -> flow_pb2.Pause:
        reason = _reason(request.reason) if action == "pause" else ""
        body = await service.pause_target(self.ctx, kind, request.name, action, reason=reason, actor=caller.actor)
        return json_format.ParseDict(body, flow_pb2.Pause(), ignore_unknown_fields=True)

    @rpc
    async def PauseHandler(self, request, context, caller):
        return await self._pause(request, caller, "handler", "pause")

    @rpc
    async def ResumeHandler(self, request, context, caller):
        return await self._pause(request, caller, "handler", "resume")

    @rpc
    async def PauseWorkflow(self, request, context, caller):
        return await self._pause(request, caller, "workflow", "pause")

    @rpc
    async def ResumeWorkflow(self, request, context, caller):
        return await self._pause(request, caller, "workflow", "resume")

    @rpc
    async def ListPauses(self, request, context, caller):
        kind = request.kind if request.HasField("kind") else None
        if kind is not None and kind not in ("handler", "workflow"):
            raise bad_request([("kind", "must be one of handler, workflow")])
        return json_format.ParseDict({"pauses": service.pauses(self.ctx, kind)}, flow_pb2.ListPausesResponse(),
                                     ignore_unknown_fields=True)

    @rpc
    async def ListLimits(self, request, context, caller):
        body = limits_body(self.ctx, key=request.key if request.HasField("key") else None, active=request.active,
                           limit=_limit(request.limit if request.HasField("limit") else None),
                           cursor=request.cursor if request.HasField("cursor") and request.cursor else None)
        return json_format.ParseDict(body, flow_pb2.ListLimitsResponse(), ignore_unknown_fields=True)

    @rpc
    async def SetHandlerLimit(self, request, context, caller):
        fields = to_json(request)
        name = fields.pop("name", "")
        body = validate(LimitIn, fields)
        answer = await service.limit_handler(self.ctx, name, body.limit, rate=body.rate, per_s=body.per_s,
                                             actor=caller.actor)
        return json_format.ParseDict(answer, flow_pb2.HandlerLimit(), ignore_unknown_fields=True)

    @rpc
    async def ClearHandlerLimit(self, request, context, caller):
        answer = await service.limit_handler(self.ctx, request.name, None, actor=caller.actor)
        return json_format.ParseDict(answer, flow_pb2.HandlerLimit(), ignore_unknown_fields=True)


__all__ = ["TaskService", "WorkflowService", "ScheduleService", "WorkerService", "FlowService", "RPC_ROUTES"]
