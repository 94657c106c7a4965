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
naming the field (README, "Limits").
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import logging
from datetime import UTC, datetime

from fastapi import APIRouter, Body, Query, Request
from starlette.responses import Response

from taskstream.schemas import (
    TERMINAL,
    CommandRejected,
    NotFound,
    Priority,
    Status,
    TaskCancelled,
    TaskRedriven,
    TaskState,
    ValidationError,
    new_id,
)
from taskstream.schemas.observability import about
from taskstream.streams import domain

from .. import auth, idempotency
from ..history import HistoryBusy, HistoryTooExpensive, event_json, history_problem, limits_for, reader_for
from ..models import BatchIn, RedriveIn, TaskIn, TaskPatch, parse_rfc3339, rfc3339, task_json
from ..problems import JSONResponse, problem
from ..read_model import is_sortkey
from ._writes import MAX_EVENT_BYTES, TooLarge, encode, expect, write

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["tasks"])

__all__ = ["router", "MAX_EVENT_BYTES", "encode_cursor", "decode_cursor"]

MAX_LIMIT = 1000
MAX_REASON = 1000
UPDATABLE = domain.UPDATABLE  # the decider's guard (issue 14 moves the whole check into decide)
REDRIVABLE = frozenset({Status.FAILED, Status.UPSTREAM_FAILED})
#: TaskUpdated fields a PATCH may set (the processor's fold applies the same).
PATCHABLE = ("priority", "payload", "run_at", "timeout_s", "max_attempts",
             "backoff_initial_s", "backoff_multiplier", "backoff_max_s", "backoff_jitter")


def _etag(state: TaskState) -> dict[str, str]:
    return {"ETag": f'"{state.version}"'}


# ------------------------------------------------------------------ submit


@router.post("/tasks", status_code=202)
async def submit_task(body: TaskIn, request: Request) -> Response:
    auth.admit(request, [body.handler])
    app = request.app.state
    store = app.read_model.store
    key = idempotency.check_key(request.headers.get(idempotency.HEADER))
    now = datetime.now(UTC)
    extra = {}
    if key is not None:
        task_id = idempotency.derived_id(key)
        rhash = idempotency.request_hash("tasks", body.model_dump(mode="json"))
        existing = store.get(task_id)
        if existing is not None:
            if existing.request_hash != rhash:
                raise idempotency.conflict(key)
            return _created(existing)
        extra = {"idempotency_key": key, "request_hash": rhash}
    else:
        task_id = new_id()
    event = body.to_event(task_id=task_id, producer=app.producer_id, now=now, settings=app.settings, **extra)
    try:
        value = encode(event)
    except TooLarge as exc:
        return exc.response()
    await write(app, [(event, value)])
    app.metrics.submitted_tasks([event])
    log.debug("task submitted task_id=%s handler=%s priority=%s", event.task_id, event.handler, event.priority,
              extra=about(event.task_id))
    return _created(store.get(task_id))


def _created(task: TaskState) -> Response:
    return JSONResponse(task_json(task), status_code=202, headers={"Location": f"/api/v1/tasks/{task.task_id}"})


@router.post("/tasks:batch", status_code=202)
async def submit_batch(body: BatchIn, request: Request) -> Response:
    """Up to 1,000 tasks: all validated first (none written if one is bad), then written together."""
    auth.admit(request, [t.handler for t in body.tasks], tasks=len(body.tasks))
    app = request.app.state
    store = app.read_model.store
    key = idempotency.check_key(request.headers.get(idempotency.HEADER))
    now = datetime.now(UTC)
    if key is not None:
        ids = [idempotency.derived_id(f"{key}:{i}") for i in range(len(body.tasks))]
        rhash = idempotency.request_hash("tasks:batch", body.model_dump(mode="json"))
        existing = _existing(store, ids, rhash, key)
        extra = {"idempotency_key": key, "request_hash": rhash}
    else:
        ids = [new_id() for _ in body.tasks]
        existing, extra = {}, {}
    records = []
    try:
        for i, (task_id, task) in enumerate(zip(ids, body.tasks)):
            if task_id in existing:
                continue
            event = task.to_event(task_id=task_id, producer=app.producer_id, now=now, settings=app.settings, **extra)
            records.append((event, encode(event, f"tasks[{i}].payload")))
    except TooLarge as exc:
        return exc.response()
    await write(app, records)
    app.metrics.submitted_tasks(event for event, _ in records)
    tasks = [existing.get(task_id) or store.get(task_id) for task_id in ids]
    return JSONResponse({"tasks": [task_json(t) for t in tasks]}, status_code=202)


def _existing(store, ids: list[str], rhash: str, key: str) -> dict[str, TaskState]:
    """The tasks of ``ids`` already written by an earlier request with this key; 422 if that request differed."""
    found = {}
    for task_id in ids:
        state = store.get(task_id)
        if state is not None:
            if state.request_hash != rhash:
                raise idempotency.conflict(key)
            found[task_id] = state
    return found


# -------------------------------------------------------------------- read


@router.get("/tasks/{task_id}")
async def get_task(
    task_id: str,
    request: Request,
    as_of: str | None = Query(None, description="RFC 3339: the task as it was then, folded from the log"),
) -> Response:
    if as_of is not None:
        try:
            at = parse_rfc3339(as_of)
        except ValueError as exc:
            raise ValidationError("as_of", str(exc)) from None
        task = _get(request, task_id)  # unknown to the read model: 404 without reading the log
        past = None
        if at >= task.created_at:
            try:
                past = await reader_for(request.app.state).state_at(task_id, at)
            except (HistoryBusy, HistoryTooExpensive) as exc:
                return history_problem(exc)
        if past is None:
            raise NotFound(f"task {task_id} did not exist at {rfc3339(at)}")
        return JSONResponse(task_json(past))
    task = _get(request, task_id)
    return JSONResponse(task_json(task), headers=_etag(task))


def _get(request: Request, task_id: str) -> TaskState:
    task = request.app.state.read_model.store.get(task_id)
    if task is None:
        raise NotFound(f"task {task_id} not found")
    return task


@router.get("/tasks/{task_id}/events")
async def task_events(task_id: str, request: Request) -> Response:
    """The task's events decoded from the log, oldest first."""
    _get(request, task_id)
    try:
        events = await reader_for(request.app.state).events(task_id)
    except (HistoryBusy, HistoryTooExpensive) as exc:
        return history_problem(exc)
    return JSONResponse({"task_id": task_id, "events": [event_json(e) for e in events]})


@router.get("/tasks")
async def list_tasks(
    request: Request,
    status: Status | None = None,
    priority: Priority | None = None,
    handler: str | None = None,
    label: list[str] = Query(default_factory=list, description="k:v; repeat for several, all must match"),
    limit: int = Query(100, ge=1, le=MAX_LIMIT),
    cursor: str | None = None,
) -> Response:
    """A page of tasks, newest first; ``partial`` when the scan budget ran out first (follow ``next_cursor``)."""
    after = decode_cursor(cursor) if cursor else None
    tasks, last = await asyncio.to_thread(
        request.app.state.read_model.store.list,
        status=status.value if status else None,
        priority=priority.value if priority else None,
        handler=handler,
        labels=parse_labels(label),
        limit=limit,
        after=after,
        max_scan=limits_for(request.app.state).list_max_scan,
    )
    return JSONResponse({"tasks": [task_json(t) for t in tasks], "next_cursor": encode_cursor(last) if last else None,
                         "partial": last is not None and len(tasks) < limit})


def parse_labels(values: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for text in values:
        name, sep, value = text.partition(":")
        if not sep or not name:
            raise ValidationError("label", f"{text!r} is not of the form key:value")
        if labels.get(name, value) != value:
            return {name: "\x00never"}  # two values for one label: nothing can match
        labels[name] = value
    return labels


def encode_cursor(sortkey: bytes) -> str:
    return base64.urlsafe_b64encode(sortkey).decode().rstrip("=")


def decode_cursor(cursor: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if not is_sortkey(raw):
        raise ValidationError("cursor", "not a cursor returned by this API")
    return raw


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
async def update_task(task_id: str, body: TaskPatch, request: Request) -> Response:
    """Change a task that has not started; ``If-Match`` makes it conditional on the version."""
    app = request.app.state
    body.check()
    expected = parse_if_match(request.headers.get("If-Match"))
    task = _get(request, task_id)
    if expected is not None and expected != task.version:
        return problem(
            412, "Precondition failed",
            f"If-Match: task {task_id} is at version {task.version}, not {expected}",
            kind="stale-version", version=task.version, headers=_etag(task),
        )
    if task.status not in UPDATABLE or task.attempt != 0:  # a retry waiting in `scheduled` has started
        raise CommandRejected(f"task {task_id} is {task.status}: already started or queued, it can no longer be changed")
    now = datetime.now(UTC)
    event = body.to_event(task_id=task_id, producer=app.producer_id, now=now,
                          expected_version=expected if expected is not None else task.version)
    try:
        value = encode(event)
    except TooLarge as exc:
        return exc.response()
    await write(app, [(event, value)])
    changes = {name: getattr(event, name) for name in PATCHABLE if getattr(event, name) is not None}
    after = expect(app, dataclasses.replace(task, **changes, version=task.version + 1, updated_at=now), task.version)
    log.debug("task update written task_id=%s fields=%s", task_id, sorted(changes), extra=about(task_id))
    return JSONResponse(task_json(after), status_code=202, headers=_etag(after))


@router.delete("/tasks/{task_id}", status_code=202)
async def cancel_task(
    task_id: str, request: Request, reason: str = Query("", max_length=MAX_REASON),
) -> Response:
    """Cancel a task that has not ended: 202 with the task; 409 if it is terminal."""
    app = request.app.state
    task = _get(request, task_id)
    if task.status in TERMINAL:
        raise CommandRejected(f"task {task_id} is already {task.status}")
    now = datetime.now(UTC)
    event = TaskCancelled(task_id=task_id, occurred_at=now, producer=app.producer_id, reason=reason)
    await write(app, [(event, encode(event, "reason"))])
    after = expect(
        app,
        dataclasses.replace(task, status=Status.CANCELLED.value, version=task.version + 1, updated_at=now,
                            finished_at=now, error=f"cancelled: {reason}" if reason else "cancelled"),
        task.version,
    )
    log.debug("task cancel written task_id=%s", task_id, extra=about(task_id))
    return JSONResponse(task_json(after), status_code=202, headers=_etag(after))


@router.post("/tasks/{task_id}/retry", status_code=202)
async def redrive_task(task_id: str, request: Request, body: RedriveIn | None = Body(None)) -> Response:
    """Re-drive a ``failed`` or ``upstream_failed`` task: 202 with the task; 409 in any other status."""
    app = request.app.state
    task = _get(request, task_id)
    if task.status not in REDRIVABLE:
        raise CommandRejected(
            f"task {task_id} is {task.status}: only failed or upstream_failed tasks can be retried"
        )
    reason = body.reason if body is not None else ""
    now = datetime.now(UTC)
    event = TaskRedriven(task_id=task_id, occurred_at=now, producer=app.producer_id, reason=reason)
    await write(app, [(event, encode(event, "reason"))])
    after = expect(app, redriven(task, now), task.version)
    log.info("task re-driven task_id=%s attempt=%d was=%s", task_id, task.attempt, task.status,
             extra=about(task_id, task.attempt))
    return JSONResponse(task_json(after), status_code=202, headers=_etag(after))


def redriven(task: TaskState, now: datetime) -> TaskState:
    """The state the processor's fold gives ``task`` on a ``TaskRedriven`` (mirrored for read-your-writes).

    A fresh budget of attempts counts from ``attempt_offset``; a failed task
    waits for its next attempt, due at once (``scheduled``, ``retry_at`` now);
    an upstream_failed one waits for its dependencies again (``pending``,
    keeping only the resolutions that succeeded).
    """
    common = dict(attempt_offset=task.attempt, finished_at=None, result=None, updated_at=now, version=task.version + 1)
    if task.status == Status.FAILED.value:
        return dataclasses.replace(task, status=Status.SCHEDULED.value, retry_at=now, **common)
    resolved = {u: o for u, o in task.resolved.items() if o == Status.SUCCEEDED.value}
    return dataclasses.replace(
        task, status=Status.PENDING.value, resolved=resolved, error=None,
        upstream_results={u: r for u, r in task.upstream_results.items() if u in resolved}, **common,
    )
