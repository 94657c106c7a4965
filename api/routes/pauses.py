"""Pauses and handler limits: ``/handlers/{h}:pause|:resume``, ``/workflows/{id}:pause|:resume``, ``GET /pauses``,
``PUT|DELETE /limits/handlers/{h}`` and ``GET /limits/handlers`` (under ``/api/v1``).

A pause goes through the decider's ``PauseTarget`` (``ResumeTarget``): one
``ControlPaused`` (``ControlResumed``) per partition of ``<p>.events``, each
written to its partition, with the caller as ``actor``. While a handler or
workflow is paused nothing new of it is queued: its tasks wait ``pending``
with ``waiting_for: "paused:handler:<name>"`` (``paused:workflow:<id>``);
attempts already queued or running finish. A resume releases them. Pausing
twice or resuming what is not paused changes nothing (202). The list shows
every paused target from the read model (the processors' control copies).

``PUT /limits/handlers/{h}`` with ``{"limit": N}``, ``{"rate": R, "per_s": S}``
or all three (``LimitTarget``: one ``ControlLimited`` per partition) makes
every task of the handler without a concurrency key of its own go through the
gate ``concurrency:handler:<h>``: at most N of its attempts queued or running
at once, at most R starts in any S seconds (the rest wait ``pending``, never
fail); ``DELETE`` ends that for tasks admitted from then on (a task already
under the gate keeps it).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from .. import service
from ..context import Context
from ..models import LimitIn
from ..problems import JSONResponse
from ..service import MAX_REASON
from . import actor_of

router = APIRouter(prefix="/api/v1", tags=["pauses"])


@router.post("/handlers/{handler}:{action}", status_code=202)
async def change_handler(handler: str, action: Literal["pause", "resume"], request: Request, ctx: Context,
                         reason: str = Query("", max_length=MAX_REASON)) -> Response:
    """Pause or resume a handler: 202 with its pause as the read model now shows it."""
    body = await service.pause_target(ctx, "handler", handler, action, reason=reason, actor=actor_of(request))
    return JSONResponse(body, status_code=202)


@router.post("/workflows/{workflow_id}:{action}", status_code=202)
async def change_workflow(workflow_id: str, action: Literal["pause", "resume"], request: Request, ctx: Context,
                          reason: str = Query("", max_length=MAX_REASON)) -> Response:
    """Pause or resume a workflow's tasks: 202 with its pause as the read model now shows it."""
    body = await service.pause_target(ctx, "workflow", workflow_id, action, reason=reason, actor=actor_of(request))
    return JSONResponse(body, status_code=202)


@router.get("/pauses")
async def list_pauses(ctx: Context, kind: Literal["handler", "workflow"] | None = Query(None)) -> Response:
    """Every paused handler and workflow: ``{"pauses": [{"kind", "name", "paused_at", "paused_by", "reason",
    "partitions_paused"}]}``."""
    return JSONResponse({"pauses": service.pauses(ctx, kind)})


@router.put("/limits/handlers/{handler}", status_code=202)
async def set_handler_limit(handler: str, body: LimitIn, request: Request, ctx: Context) -> Response:
    """Limit a handler: 202 with ``{"kind", "name", "limit", "rate", "per_s"}``."""
    return JSONResponse(await service.limit_handler(ctx, handler, body.limit, rate=body.rate, per_s=body.per_s,
                                                    actor=actor_of(request)), status_code=202)


@router.delete("/limits/handlers/{handler}", status_code=202)
async def clear_handler_limit(handler: str, request: Request, ctx: Context) -> Response:
    """End a handler's limit and rate: 202 with ``{"kind", "name", "limit": null, "rate": null, "per_s": null}``."""
    return JSONResponse(await service.limit_handler(ctx, handler, None, actor=actor_of(request)), status_code=202)


@router.get("/limits/handlers")
async def list_handler_limits(ctx: Context) -> Response:
    """Every handler with a limit or a rate: ``{"limits": [{"kind", "name", "limit", "rate", "per_s"}]}``."""
    return JSONResponse({"limits": service.handler_limits(ctx)})
