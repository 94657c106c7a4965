"""``POST /api/v1/workflows``: a DAG of tasks with local keys, submitted in one request.

The request is checked whole before anything is written: duplicate keys,
``depends_on`` entries that are not keys of the same workflow, and cycles
(``graphlib``) each answer 422 naming the offending entries. Every task's
``TaskCreated`` carries its ``key``, the ``workflow_id``, ``depends_on`` as
task ids and ``upstream_keys`` (id -> key of each dependency), so handlers
can see upstream results by key.

Order matters: the processor that owns a dependent registers it with each
upstream by an event keyed by the upstream (DESIGN §5), which must find the
upstream's ``TaskCreated`` already in the log. So tasks are written in
topological generations (``TopologicalSorter.get_ready()``): one generation
is produced and every ack awaited before the next is produced. A chain of
1,000 tasks is 1,000 round trips to the broker (well under a second on
loopback).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from graphlib import CycleError, TopologicalSorter

from fastapi import APIRouter, Request
from starlette.responses import Response

from taskstream.schemas import TaskState, new_id

from .. import auth, idempotency
from ..models import WorkflowIn
from ..problems import JSONResponse, validation_problem
from ._writes import TooLarge, encode, write

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
    app = request.app.state
    store = app.read_model.store
    key = idempotency.check_key(request.headers.get(idempotency.HEADER))
    now = datetime.now(UTC)
    errors = check_graph(body)
    if errors:
        return validation_problem(errors)

    existing: dict[str, TaskState] = {}
    extra = {}
    if key is not None:
        workflow_id = idempotency.derived_id(f"{key}:workflow")
        ids = {t.key: idempotency.derived_id(f"{key}:{t.key}") for t in body.tasks}
        rhash = idempotency.request_hash("workflows", body.model_dump(mode="json"))
        for task_id in ids.values():
            state = store.get(task_id)
            if state is not None:
                if state.request_hash != rhash:
                    raise idempotency.conflict(key)
                existing[task_id] = state
        extra = {"idempotency_key": key, "request_hash": rhash}
    else:
        workflow_id = new_id()
        ids = {t.key: new_id() for t in body.tasks}

    by_key = {t.key: (i, t) for i, t in enumerate(body.tasks)}
    records = {}
    try:
        for i, task in enumerate(body.tasks):
            task_id = ids[task.key]
            if task_id in existing:
                continue
            event = task.to_event(
                task_id=task_id, producer=app.producer_id, now=now,
                settings=app.settings,
                depends_on=[ids[d] for d in task.depends_on],
                upstream_keys={ids[d]: d for d in task.depends_on},
                key=task.key, workflow_id=workflow_id, **extra,
            )
            records[task.key] = (event, encode(event, f"tasks[{i}].payload"))
    except TooLarge as exc:
        return exc.response()

    sorter = TopologicalSorter({t.key: t.depends_on for t in body.tasks})
    sorter.prepare()
    generations = 0
    while sorter.is_active():
        ready = sorter.get_ready()
        batch = [records[k] for k in ready if k in records]
        if batch:
            await write(app, batch)  # every ack of this generation before the next one is produced
            app.metrics.submitted_tasks(event for event, _ in batch)
        sorter.done(*ready)
        generations += 1
    log.debug("workflow submitted workflow_id=%s tasks=%d generations=%d", workflow_id, len(by_key), generations)
    return JSONResponse({"workflow_id": workflow_id, "tasks": ids}, status_code=202)
