"""``/api/v1/handlers/{handler}:pause|:resume``, ``/api/v1/workflows/{id}:pause|:resume`` and ``GET /api/v1/pauses``.

A pause goes through the decider's ``PauseTarget`` (``ResumeTarget``): one
``ControlPaused`` (``ControlResumed``) per partition of ``<p>.events``, each
written to its partition, with the caller as ``actor``. While a handler or
workflow is paused nothing new of it is queued: its tasks wait ``pending``
with ``waiting_for: "paused:handler:<name>"`` (``paused:workflow:<id>``);
attempts already queued or running finish. A resume releases them. Pausing
twice or resuming what is not paused changes nothing (202). The list shows
every paused target from the read model (the processors' control copies).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from .. import service
from ..context import Context
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
