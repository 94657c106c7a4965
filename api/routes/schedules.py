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
``POST /schedules/{id}:pause``, ``:resume`` and ``:run`` go through the
decider's ``PauseSchedule``, ``ResumeSchedule`` and ``RunSchedule``
(``SchedulePaused``, ``ScheduleResumed``, ``ScheduleTriggered``): a paused
schedule does not fire until resumed and its fire times meanwhile are
skipped; run creates one task now (``last_task_id``, and the ``Location``
header names it). Pausing a paused or resuming an active schedule changes
nothing (202); a deleted one is 409, as is pausing or resuming an ended one.
``POST /schedules/{id}:backfill`` appends ``ScheduleBackfilled`` for a past
range of cron times; the processor creates one task per time, with ids the
answer already names (a repeat names, and creates, nothing new).

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

import logging
from typing import Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from taskstream.schemas import ScheduleState, ScheduleStatus

from .. import auth, idempotency, reads, service
from ..context import Context
from ..models import BackfillIn, ScheduleIn, backfill_json, schedule_json, template_handler
from ..problems import JSONResponse
from ..reads import MAX_LIMIT
from ..service import MAX_REASON
from . import actor_of

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["schedules"])


def _created(state: ScheduleState) -> Response:
    return JSONResponse(schedule_json(state), status_code=202,
                        headers={"Location": f"/api/v1/schedules/{state.schedule_id}"})


@router.post("/schedules", status_code=202)
async def create_schedule(body: ScheduleIn, request: Request, ctx: Context) -> Response:
    auth.admit(request, ctx.rate_limit, [body.task.handler])
    key = idempotency.key_of(request)
    return _created(await service.create_schedule(ctx, body, key=key, actor=actor_of(request)))


@router.get("/schedules")
async def list_schedules(
    ctx: Context,
    status: ScheduleStatus | None = None,
    limit: int = Query(reads.DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    cursor: str | None = None,
) -> Response:
    """Schedules, newest first, optionally of one status; cursor pagination as ``GET /tasks``."""
    page = reads.list_schedules(ctx, status=status, limit=limit, cursor=cursor)
    return JSONResponse({"schedules": [schedule_json(s) for s in page.schedules], "next_cursor": page.next_cursor})


@router.get("/schedules/{schedule_id}")
async def get_schedule(schedule_id: str, ctx: Context) -> Response:
    state = reads.get_schedule(ctx, schedule_id)
    return JSONResponse(schedule_json(state), headers={"ETag": f'"{state.version}"'})


@router.post("/schedules/{schedule_id}:backfill", status_code=202)
async def backfill_schedule(schedule_id: str, body: BackfillIn, request: Request, ctx: Context) -> Response:
    """Run the schedule for its cron times in ``start``..``end``: 202 with each time's task id, oldest first.

    404 unknown schedule, 409 a deleted one, 422 naming ``start``, ``end``
    (before ``start``, in the future, or more than ``MAX_BACKFILL`` times),
    ``overlap`` or ``max_concurrent``.
    """
    # A caller limited to handler patterns may backfill only schedules of its handlers; the request costs
    # one token (an operator's action, bounded by MAX_BACKFILL), not one per task.
    auth.admit(request, ctx.rate_limit, [template_handler(reads.get_schedule(ctx, schedule_id).template)])
    event, tasks = await service.backfill_schedule(ctx, schedule_id, body, actor=actor_of(request))
    return JSONResponse(backfill_json(event, tasks), status_code=202)


# declared after :backfill, which its {action} would otherwise match first
@router.post("/schedules/{schedule_id}:{action}", status_code=202)
async def change_schedule(
    schedule_id: str, action: Literal["pause", "resume", "run"], request: Request, ctx: Context,
    reason: str = Query("", max_length=MAX_REASON),
) -> Response:
    """Pause, resume or run now: 202 with the schedule; after ``:run`` its ``last_task_id`` is the new task."""
    if action == "run":
        auth.admit(request, ctx.rate_limit, [template_handler(reads.get_schedule(ctx, schedule_id).template)])
    after = await service.change_schedule(ctx, schedule_id, action, reason=reason, actor=actor_of(request))
    headers = {"Location": f"/api/v1/tasks/{after.last_task_id}"} if action == "run" and after.last_task_id else {}
    return JSONResponse(schedule_json(after), status_code=202, headers=headers)


@router.delete("/schedules/{schedule_id}", status_code=202)
async def delete_schedule(
    schedule_id: str, request: Request, ctx: Context, reason: str = Query("", max_length=MAX_REASON),
) -> Response:
    """Stop a schedule: 202 with it (status ``deleted``); 409 if it is already deleted.

    Tasks it already created are not touched (cancel them with ``DELETE /tasks/{id}``).
    """
    after = await service.delete_schedule(ctx, schedule_id, reason=reason, actor=actor_of(request))
    return JSONResponse(schedule_json(after), status_code=202)
