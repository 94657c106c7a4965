"""``/api/v1/tasks``: submit a task (an event in the log) and read tasks (from the read model).

POST validates the body, builds a ``TaskCreated`` event, produces it to
``<p>.events`` keyed by the task id and waits for the broker's ack
(acks=all) before answering 202. Only then is the task's initial state put
into the read model (read-your-writes: a GET right after the POST finds it);
the processor's own states for the task, arriving later on ``<p>.state``,
replace it since their versions are higher. If the produce fails the client
gets 503 and nothing was written.
"""

from __future__ import annotations

import base64
import binascii
import logging
from datetime import UTC, datetime

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from taskstream.schemas import NotFound, Priority, Status, Topics, ValidationError, codec, initial_state, new_id

from ..models import TaskIn, task_json
from ..problems import JSONResponse, problem
from ..read_model import is_sortkey

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["tasks"])

MAX_LIMIT = 1000
#: librdkafka's default ``message.max.bytes`` (1,000,000) bounds one record
#: with its framing; Kafka's default topic ``max.message.bytes`` is 1 MiB + 12.
#: A body under ``settings.max_body_bytes`` (1 MiB) can still encode to an
#: event above this: that is the client's problem (413), not the broker's (503).
MAX_EVENT_BYTES = 1_000_000 - 1024


@router.post("/tasks", status_code=202)
async def submit_task(body: TaskIn, request: Request) -> Response:
    state = request.app.state
    now = datetime.now(UTC)
    run_at = body.run_at_datetime()
    if run_at is not None and run_at > now:
        raise ValidationError("run_at", "run_at in the future is not supported yet")
    event = body.to_event(
        task_id=new_id(),
        producer=state.producer_id,
        now=now,
        default_max_attempts=state.settings.default_max_attempts,
    )
    value = codec.encode(event)
    if len(value) > MAX_EVENT_BYTES:
        return problem(
            413, "Request body too large",
            f"payload: the task encodes to {len(value)} bytes, more than the event log takes ({MAX_EVENT_BYTES})",
            kind="too-large",
        )
    await state.producer.send(
        Topics(state.settings.prefix).events,
        key=event.task_id.encode(),
        value=value,
        headers=codec.headers(event),
    )
    log.debug("task submitted task_id=%s handler=%s priority=%s", event.task_id, event.handler, event.priority)
    task = initial_state(event)
    state.read_model.store.apply(task)
    return JSONResponse(task_json(task), status_code=202, headers={"Location": f"/api/v1/tasks/{event.task_id}"})


@router.get("/tasks/{task_id}")
async def get_task(task_id: str, request: Request) -> Response:
    task = request.app.state.read_model.store.get(task_id)
    if task is None:
        raise NotFound(f"task {task_id} not found")
    return JSONResponse(task_json(task))


@router.get("/tasks")
async def list_tasks(
    request: Request,
    status: Status | None = None,
    priority: Priority | None = None,
    handler: str | None = None,
    limit: int = Query(100, ge=1, le=MAX_LIMIT),
    cursor: str | None = None,
) -> Response:
    after = decode_cursor(cursor) if cursor else None
    tasks, last = request.app.state.read_model.store.list(
        status=status.value if status else None,
        priority=priority.value if priority else None,
        handler=handler,
        limit=limit,
        after=after,
    )
    return JSONResponse({"tasks": [task_json(t) for t in tasks], "next_cursor": encode_cursor(last) if last else None})


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
