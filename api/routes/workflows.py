"""``POST /api/v1/workflows``: a DAG of tasks with local keys, submitted in one request.

The request is checked whole before anything is written
(``domain.check_workflow``): duplicate keys, ``depends_on`` entries that are
not keys of the same workflow, and cycles each answer 422 naming the
offending entries. Every task's
``TaskCreated`` carries its ``key``, the ``workflow_id``, ``depends_on`` as
task ids and ``upstream_keys`` (id -> key of each dependency), so handlers
can see upstream results by key.

Tasks are written in topological generations (``service.submit_workflow``):
a dependent's registration must find its upstream's ``TaskCreated`` in the
log. A chain of 1,000 tasks is 1,000 round trips to the broker (well under a
second on loopback).
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from starlette.responses import Response

from .. import auth, idempotency, service
from ..context import Context
from ..models import WorkflowIn
from ..problems import JSONResponse
from . import actor_of

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["workflows"])


@router.post("/workflows", status_code=202)
async def submit_workflow(body: WorkflowIn, request: Request, ctx: Context) -> Response:
    auth.admit(request, ctx.rate_limit, [t.handler for t in body.tasks], tasks=len(body.tasks))
    key = idempotency.key_of(request)
    workflow_id, ids = await service.submit_workflow(ctx, body, key=key, actor=actor_of(request))
    return JSONResponse({"workflow_id": workflow_id, "tasks": ids}, status_code=202)
