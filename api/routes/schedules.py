"""``/api/v1/schedules``: cron schedules that create tasks (DESIGN §6, §8).

``POST`` checks the cron expression and time zone (``schemas.cron``, on
croniter), the bounds and the task template, then appends a
``ScheduleCreated`` keyed by the new schedule id (the event's ``task_id``);
its ``template`` is the complete task as JSON, defaults filled in from the
settings. The processor owns the schedule from there: it fires at each cron
time (``ScheduleFired``), creates the task and publishes the
``ScheduleState`` to ``<p>.state``, which the read model projects.
A cron that fires more than once a minute (six fields, several seconds) is
a 422 naming ``cron`` unless ``settings.allow_second_cron``: such schedules
can keep the processor busy (``schemas.cron.check_sub_minute``).
``DELETE`` appends ``ScheduleDeleted``; the processor stops firing.

Read-your-writes as for tasks: right after the ack the API puts its own view
of the new schedule (status ``active``, ``next_fire_at`` = the first fire
time) into the read model, and of a deleted one after ``DELETE``; the
processor's states replace them.

``Idempotency-Key`` on ``POST``: the schedule id is derived from the key
(``<key>:schedule``); a repeat of the same request answers 202 with the
schedule and writes nothing, a different request with the same key 422
naming the header. The comparison is on the schedule's own fields (cron,
time zone, template, name, bounds, misfire), which the read model holds.

Statuses: 202 accepted, 404 unknown schedule, 409 deleting a deleted one,
413 a template too large for the log, 422 bad input naming the field.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from taskstream.schemas import (
    CommandRejected,
    NotFound,
    ScheduleDeleted,
    ScheduleState,
    ScheduleStatus,
    new_id,
)
from taskstream.schemas import cron as cron_expr

from .. import auth, idempotency
from ..models import ScheduleIn, initial_schedule, same_schedule, schedule_json
from ..problems import JSONResponse
from ._writes import TooLarge, encode, expect_schedule, write
from .tasks import MAX_LIMIT, MAX_REASON, decode_cursor, encode_cursor

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["schedules"])


def _created(state: ScheduleState) -> Response:
    return JSONResponse(schedule_json(state), status_code=202,
                        headers={"Location": f"/api/v1/schedules/{state.schedule_id}"})


@router.post("/schedules", status_code=202)
async def create_schedule(body: ScheduleIn, request: Request) -> Response:
    auth.admit(request, [body.task.handler])
    app = request.app.state
    schedules = app.read_model.schedules
    key = idempotency.check_key(request.headers.get(idempotency.HEADER))
    now = datetime.now(UTC)
    body.check(now)
    cron_expr.check_sub_minute(body.cron, allowed=app.settings.allow_second_cron)
    schedule_id = idempotency.derived_id(f"{key}:schedule") if key is not None else new_id()
    event = body.to_event(schedule_id=schedule_id, producer=app.producer_id, now=now, settings=app.settings)
    if key is not None:
        existing = schedules.get(schedule_id)
        if existing is not None:
            if not same_schedule(existing, event):
                raise idempotency.conflict(key)
            return _created(existing)
    try:
        value = encode(event, "task.payload")
    except TooLarge as exc:
        return exc.response()
    await write(app, [(event, value)])
    log.info("schedule created schedule_id=%s cron=%r timezone=%s", schedule_id, event.cron, event.timezone)
    return _created(schedules.get(schedule_id) or initial_schedule(event))


@router.get("/schedules")
async def list_schedules(
    request: Request,
    status: ScheduleStatus | None = None,
    limit: int = Query(100, ge=1, le=MAX_LIMIT),
    cursor: str | None = None,
) -> Response:
    """Schedules, newest first, optionally of one status; cursor pagination as ``GET /tasks``."""
    after = decode_cursor(cursor) if cursor else None
    page, last = request.app.state.read_model.schedules.list(
        status=status.value if status else None, limit=limit, after=after,
    )
    return JSONResponse({"schedules": [schedule_json(s) for s in page],
                         "next_cursor": encode_cursor(last) if last else None})


def _get(request: Request, schedule_id: str) -> ScheduleState:
    state = request.app.state.read_model.schedules.get(schedule_id)
    if state is None:
        raise NotFound(f"schedule {schedule_id} not found")
    return state


@router.get("/schedules/{schedule_id}")
async def get_schedule(schedule_id: str, request: Request) -> Response:
    state = _get(request, schedule_id)
    return JSONResponse(schedule_json(state), headers={"ETag": f'"{state.version}"'})


@router.delete("/schedules/{schedule_id}", status_code=202)
async def delete_schedule(
    schedule_id: str, request: Request, reason: str = Query("", max_length=MAX_REASON),
) -> Response:
    """Stop a schedule: 202 with it (status ``deleted``); 409 if it is already deleted.

    Tasks it already created are not touched (cancel them with ``DELETE /tasks/{id}``).
    """
    app = request.app.state
    state = _get(request, schedule_id)
    if state.status == ScheduleStatus.DELETED.value:
        raise CommandRejected(f"schedule {schedule_id} is already deleted")
    now = datetime.now(UTC)
    event = ScheduleDeleted(task_id=schedule_id, occurred_at=now, producer=app.producer_id, reason=reason)
    await write(app, [(event, encode(event, "reason"))])
    after = expect_schedule(
        app,
        dataclasses.replace(state, status=ScheduleStatus.DELETED.value, next_fire_at=None, updated_at=now,
                            version=state.version + 1),
        state.version,
    )
    log.info("schedule deleted schedule_id=%s", schedule_id)
    return JSONResponse(schedule_json(after), status_code=202)
