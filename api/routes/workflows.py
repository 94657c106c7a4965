"""``POST /api/v1/workflows``: a DAG of tasks with local keys, submitted in one request.

The request is checked whole before anything is written: duplicate keys,
``depends_on`` entries that are not keys of the same workflow, and cycles
(``graphlib``) each answer 422 naming the offending entries. Every task's
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
from graphlib import CycleError, TopologicalSorter

from fastapi import APIRouter, Request
from starlette.responses import Response


from .. import auth, idempotency
from ..models import WorkflowIn
from ..problems import JSONResponse, validation_problem
from .. import service
from . import actor_of

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["workflows"])


def check_graph(body: WorkflowIn) -> list[dict[str, str]]:
    """Problems of the workflow's graph as ``[{field, message}]``; empty if it is a DAG of known keys."""
    errors = []
    index: dict[str, int] = {}
    for i, task in enumerate(body.tasks):
        if task.key in index:
            errors.append({"field": f"tasks[{i}].key",
                           "message": f"duplicate key {task.key!r} (also tasks[{index[task.key]}].key)"})
        else:
            index[task.key] = i
    for i, task in enumerate(body.tasks):
        for j, dep in enumerate(task.depends_on):
            if dep not in index:
                errors.append({"field": f"tasks[{i}].depends_on[{j}]",
                               "message": f"unknown key {dep!r}: not a key of this workflow"})
    if errors:
        return errors
    try:
        TopologicalSorter({t.key: t.depends_on for t in body.tasks}).prepare()
    except CycleError as exc:
        cycle = list(reversed(exc.args[1]))  # graphlib lists it upstream first; show "depends on" order
        first = index[cycle[0]]
        return [{"field": f"tasks[{first}].depends_on",
                 "message": "dependency cycle: " + " -> ".join(repr(k) for k in cycle)
                            + f" (keys {', '.join(repr(k) for k in sorted(set(cycle)))})"}]
    return []


@router.post("/workflows", status_code=202)
async def submit_workflow(body: WorkflowIn, request: Request) -> Response:
    auth.admit(request, [t.handler for t in body.tasks], tasks=len(body.tasks))
    key = idempotency.key_of(request)
    errors = check_graph(body)
    if errors:
        return validation_problem(errors)
    workflow_id, ids = await service.submit_workflow(request.app.state, body, key=key, actor=actor_of(request))
    return JSONResponse({"workflow_id": workflow_id, "tasks": ids}, status_code=202)
