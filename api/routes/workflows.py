"""``/api/v1/workflows``: submit a DAG of tasks with local keys in one request; read workflows back.

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

``GET /workflows/{id}`` answers the workflow with its tasks (in topological
generations), its edges and its overall status; ``GET /workflows`` lists
workflows newest first, optionally of one overall status
(``running``, ``succeeded``, ``failed``, ``cancelled``: the rule is
``streams.domain.workflow_status``), with cursor paging like ``GET /tasks``.
Both read ``api.reads`` (the read model's workflow summaries), as gRPC does.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from taskstream.schemas import WorkflowStatus

from .. import auth, idempotency, reads, service
from ..context import Context
from ..models import WorkflowIn, workflow_json
from ..problems import JSONResponse
from . import actor_of, trace_of

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["workflows"])


@router.post("/workflows", status_code=202)
async def submit_workflow(body: WorkflowIn, request: Request, ctx: Context) -> Response:
    auth.admit(request, ctx.rate_limit, [t.handler for t in body.tasks], tasks=len(body.tasks))
    key = idempotency.key_of(request)
    workflow_id, ids = await service.submit_workflow(ctx, body, key=key, actor=actor_of(request),
                                                     trace=trace_of(request))
    return JSONResponse({"workflow_id": workflow_id, "tasks": ids}, status_code=202)


@router.get("/workflows/{workflow_id}")
async def get_workflow(workflow_id: str, ctx: Context) -> Response:
    """The workflow: overall status, counts by status, times, its tasks and the edges between them."""
    wf = await reads.get_workflow(ctx, workflow_id)
    return JSONResponse(workflow_json(wf.summary, wf.tasks, wf.edges, wf.truncated))


@router.get("/workflows")
async def list_workflows(
    ctx: Context,
    status: WorkflowStatus | None = None,
    limit: int = Query(reads.DEFAULT_LIMIT, ge=1, le=reads.MAX_LIMIT),
    cursor: str | None = None,
) -> Response:
    """A page of workflows (without their tasks), newest first; follow ``next_cursor``."""
    page = reads.list_workflows(ctx, status=status, limit=limit, cursor=cursor)
    return JSONResponse({"workflows": [workflow_json(w) for w in page.workflows], "next_cursor": page.next_cursor})
