"""``/api/v1/triggers``: every record of a Kafka topic creates one task from a template (docs/triggers.md).

``POST`` decides ``CreateTrigger`` (``streams.domain.triggers``: 422 naming
``topic``, ``filter``, ``start``, ``format``, ``key_as`` or a cluster field;
409 for a name ever taken, a deleted trigger's too) and appends
``TriggerCreated`` keyed ``trigger:<name>``; the processor folds it into a
``TriggerState`` on ``<p>.state``, which the read model and the trigger
runner read. ``:pause``, ``:resume`` and ``DELETE`` go through
``PauseTrigger``, ``ResumeTrigger`` and ``DeleteTrigger`` (pausing a paused
or resuming an active trigger changes nothing: 202; anything on a deleted
one: 409). No read shows a SASL password: it is ``***``.

Statuses: 201 created, 202 changed, 404 unknown trigger, 409 as above, 422 bad input naming the field.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from taskstream.schemas import TriggerStatus

from .. import auth, reads, service
from ..context import Context
from ..models import TriggerIn, trigger_json
from ..problems import JSONResponse
from ..service import MAX_REASON
from . import actor_of

router = APIRouter(prefix="/api/v1", tags=["triggers"])


@router.post("/triggers", status_code=201)
async def create_trigger(body: TriggerIn, request: Request, ctx: Context) -> Response:
    auth.admit(request, ctx.rate_limit, [body.task.handler])
    state = await service.create_trigger(ctx, body, actor=actor_of(request))
    return JSONResponse(trigger_json(state), status_code=201, headers={"Location": f"/api/v1/triggers/{state.name}"})


@router.get("/triggers")
async def list_triggers(ctx: Context, status: TriggerStatus | None = None) -> Response:
    """Every trigger (of ``status``), newest first."""
    found = reads.list_triggers(ctx, status=status.value if status else None)
    return JSONResponse({"triggers": [trigger_json(s) for s in found]})


@router.get("/triggers/{name}")
async def get_trigger(name: str, ctx: Context) -> Response:
    state = reads.get_trigger(ctx, name)
    return JSONResponse(trigger_json(state), headers={"ETag": f'"{state.version}"'})


@router.post("/triggers/{name}:{action}", status_code=202)
async def change_trigger(name: str, action: Literal["pause", "resume"], request: Request, ctx: Context,
                         reason: str = Query("", max_length=MAX_REASON)) -> Response:
    """Pause (no new tasks; records wait in the topic) or resume: 202 with the trigger."""
    after = await service.change_trigger(ctx, name, action, reason=reason, actor=actor_of(request))
    return JSONResponse(trigger_json(after), status_code=202)


@router.delete("/triggers/{name}", status_code=202)
async def delete_trigger(name: str, request: Request, ctx: Context,
                         reason: str = Query("", max_length=MAX_REASON)) -> Response:
    """Stop a trigger for good: 202 with it (status ``deleted``); its name is not taken again."""
    after = await service.change_trigger(ctx, name, "delete", reason=reason, actor=actor_of(request))
    return JSONResponse(trigger_json(after), status_code=202)
