"""``/api/v1/tasks``: submit, change, cancel and re-drive tasks (events in the log); read them (read model, log).

Writes validate the whole request, encode every event and check its size
before producing anything (bad input writes nothing), then produce to
``<p>.events`` keyed by the task id and answer only after the broker
acknowledged every record (acks=all). A new task's initial state is put into
the read model right after its ack (read-your-writes: a GET right after the
POST finds it); the processor's own states, arriving later on ``<p>.state``,
replace it since their versions are equal or higher. ``PATCH`` and
``DELETE`` likewise put the expected result into the read model (only over
the version they checked), so a GET right after them shows the change; the
processor's state replaces it.

A produce that fails answers 503. In a batch, the records that were
acknowledged before the failure stay written: retry with the same
``Idempotency-Key`` to complete the batch without duplicates.

``POST /tasks/{id}/retry`` re-drives a ``failed`` or ``upstream_failed``
task (``TaskRedriven``): the processor gives it a fresh budget of
``max_attempts`` attempts, queues the next at once (a ``failed`` task) or
registers it again with its dependencies (an ``upstream_failed`` one), and
re-opens its ``upstream_failed`` dependents. The expected state (mirroring
the processor's fold) goes into the read model like for PATCH and DELETE.

A ``run_at`` in the future makes the task ``scheduled``; the processor
queues it at that time.

Reads call ``api.reads``, the read path the gRPC servicers share.
``GET /tasks/{id}?as_of=<RFC 3339>`` is time travel: the task as it was at
that moment, folded from its events in the log (``history.task_state_at``)
rather than read from the read model; 404 if it did not exist yet, 422
naming ``as_of`` if that is not an RFC 3339 date-time with a zone. A task
the read model does not know is a 404 at once, without reading the log (a
task the API just created is in it: read-your-writes); so is an ``as_of``
before its creation.

Reads are bounded (``history.ReadLimits``): history reads (``/events``,
``as_of``) scan the task's partition on ``history.HistoryReader``'s own
threads, a few at a time; a request that finds no free scan within
``history_wait_s`` is a 503 ``history-busy`` with ``Retry-After``, a scan
that does not reach the partition's end within ``history_budget_s`` a 503
``read-too-expensive`` naming the CLI commands that read without a budget.
``GET /tasks`` runs in a thread and examines at most ``list_max_scan``
index entries: past that the page is partial (``"partial": true``, fewer
than ``limit`` tasks) with a ``next_cursor`` to continue from.

Statuses of writes: 202 (accepted: the processor applies the change
asynchronously), 404 unknown task, 409 a change impossible in the task's
status, 412 ``If-Match`` version is stale, 413 a payload over
``MAX_PAYLOAD_BYTES`` or an event too large for the log, 422 bad input
naming the field (docs/limits.md).
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Body, Query, Request
from starlette.responses import Response

from taskstream.schemas import Priority, Status, TaskState, ValidationError
from taskstream.schemas.limits import MAX_ID_CHARS

from .. import auth, idempotency, reads, service
from ..context import Context
from ..history import HistoryBusy, HistoryTooExpensive, event_json, history_problem
from ..models import BatchIn, RedriveIn, TaskIn, TaskPatch, task_json
from ..problems import JSONResponse
from ..reads import MAX_LIMIT
from ..service import MAX_REASON
from . import actor_of, trace_of

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["tasks"])

__all__ = ["router", "parse_if_match"]


def _etag(state: TaskState) -> dict[str, str]:
    return {"ETag": f'"{state.version}"'}


# ------------------------------------------------------------------ submit


@router.post("/tasks", status_code=202)
async def submit_task(body: TaskIn, request: Request, ctx: Context) -> Response:
    auth.admit(request, ctx.rate_limit, [body.handler])
    task = await service.submit_task(ctx, body, key=idempotency.key_of(request), actor=actor_of(request),
                                     trace=trace_of(request))
    return _created(task)


def _created(task: TaskState) -> Response:
    return JSONResponse(task_json(task), status_code=202, headers={"Location": f"/api/v1/tasks/{task.task_id}"})


@router.post("/tasks:batch", status_code=202)
async def submit_batch(body: BatchIn, request: Request, ctx: Context) -> Response:
    """Up to 1,000 tasks: all validated first (none written if one is bad), then written together."""
    auth.admit(request, ctx.rate_limit, [t.handler for t in body.tasks], tasks=len(body.tasks))
    tasks = await service.submit_batch(ctx, body, key=idempotency.key_of(request), actor=actor_of(request),
                                       trace=trace_of(request))
    return JSONResponse({"tasks": [task_json(t) for t in tasks]}, status_code=202)


# -------------------------------------------------------------------- read


@router.get("/tasks/{task_id}")
async def get_task(
    task_id: str,
    ctx: Context,
    as_of: str | None = Query(None, description="RFC 3339: the task as it was then, folded from the log"),
) -> Response:
    if as_of is not None:
        at = reads.parse_as_of(as_of)
        try:
            past = await reads.task_at(ctx, task_id, at)
        except (HistoryBusy, HistoryTooExpensive) as exc:
            return history_problem(exc)
        return JSONResponse(task_json(past))
    task = reads.get_task(ctx, task_id)
    return JSONResponse(task_json(task), headers=_etag(task))


@router.get("/tasks/{task_id}/events")
async def task_events(task_id: str, ctx: Context) -> Response:
    """The task's events decoded from the log, oldest first."""
    try:
        events = await reads.task_events(ctx, task_id)
    except (HistoryBusy, HistoryTooExpensive) as exc:
        return history_problem(exc)
    return JSONResponse({"task_id": task_id, "events": [event_json(e) for e in events]})


@router.get("/tasks")
async def list_tasks(
    ctx: Context,
    status: Status | None = None,
    priority: Priority | None = None,
    handler: str | None = None,
    label: list[str] = Query(default_factory=list, description="k:v; repeat for several, all must match"),
    prefix: str | None = Query(None, max_length=MAX_ID_CHARS,
                               description="search: tasks whose id, handler or name starts with this"),
    limit: int = Query(reads.DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    cursor: str | None = None,
) -> Response:
    """A page of tasks, newest first; ``partial`` when the scan budget ran out first (follow ``next_cursor``)."""
    page = await reads.list_tasks(ctx, status=status, priority=priority, handler=handler, labels=label,
                                  prefix=prefix, limit=limit, cursor=cursor)
    return JSONResponse({"tasks": [task_json(t) for t in page.tasks], "next_cursor": page.next_cursor,
                         "partial": page.partial})


# ---------------------------------------------------------- change, cancel


def parse_if_match(value: str | None) -> int | None:
    """``If-Match: 3``, ``"3"`` or ``W/"3"`` -> 3; ``*`` or absent -> None; else 422 naming If-Match."""
    if value is None:
        return None
    text = value.strip()
    if text == "*":
        return None
    if text.startswith("W/"):
        text = text[2:]
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    if not text.isdigit() or not text.isascii() or len(text) > 18:
        raise ValidationError("If-Match", f"{value[:40]!r} is not a task version (an integer, or the ETag of GET)")
    return int(text)


@router.patch("/tasks/{task_id}", status_code=202)
async def update_task(task_id: str, body: TaskPatch, request: Request, ctx: Context) -> Response:
    """Change a task that has not started; ``If-Match`` makes it conditional on the version."""
    expected = parse_if_match(request.headers.get("If-Match"))
    after = await service.update_task(ctx, task_id, body, expected_version=expected, actor=actor_of(request))
    return JSONResponse(task_json(after), status_code=202, headers=_etag(after))


@router.delete("/tasks/{task_id}", status_code=202)
async def cancel_task(
    task_id: str, request: Request, ctx: Context, reason: str = Query("", max_length=MAX_REASON),
) -> Response:
    """Cancel a task that has not ended: 202 with the task; 409 if it is terminal."""
    after = await service.cancel_task(ctx, task_id, reason=reason, actor=actor_of(request))
    return JSONResponse(task_json(after), status_code=202, headers=_etag(after))


@router.post("/tasks/{task_id}/retry", status_code=202)
async def redrive_task(task_id: str, request: Request, ctx: Context, body: RedriveIn | None = Body(None)) -> Response:
    """Re-drive a ``failed`` or ``upstream_failed`` task: 202 with the task; 409 in any other status."""
    reason = body.reason if body is not None else ""
    after = await service.redrive_task(ctx, task_id, reason=reason, actor=actor_of(request))
    return JSONResponse(task_json(after), status_code=202, headers=_etag(after))
