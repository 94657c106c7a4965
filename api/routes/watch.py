"""``GET /api/v1/tasks/{id}/watch`` and ``GET /api/v1/tasks/watch``: task state changes as Server-Sent Events.

Both stream from the read model's change feed (``api/watch.py``): one
``event: task`` per state change, ``data`` the task JSON, ``id`` the
position to resume from; ``Last-Event-ID`` (what browsers' ``EventSource``
sends when it reconnects) or the ``cursor`` query parameter resumes after
it without gaps or repeats. A comment line (``: ping``) every
``watch_heartbeat_s`` keeps idle streams open through proxies; a client that
disconnects frees its subscription at once.

- ``/tasks/{id}/watch``: the task's current state first, then each change;
  the stream ends after a terminal state. 404 if the task is unknown.
- ``/tasks/watch?status=&priority=&handler=`` (each repeatable: any of
  them): every change of a matching task, starting with an ``event:
  position`` that only carries the starting cursor. Without a cursor it
  starts now; ``cursor=0`` replays ``<p>.state`` from its beginning.

A watch that falls more than ``watch_queue_limit`` changes behind, or
whose resume cannot be read from the broker, ends with an ``event: error``
(a problem JSON); the client resumes from the last id it received.
This router must be included before the one with ``/tasks/{task_id}``,
or ``watch`` would be taken for a task id.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.responses import Response

from taskstream.schemas import Priority, Status, codec

from .. import auth, reads
from ..context import ApiContext, Context
from ..models import task_json
from ..revalidate import while_admitted
from ..watch import Event, FellBehind, Filter, RenderCache, WatchUnavailable, parse_event_id, watch

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["watch"])

#: The task JSON text of a watched state, rendered once however many streams send it.
_task_text = RenderCache(lambda state: codec.dumps_json(task_json(state)))

_DESCRIPTION = "Server-Sent Events (text/event-stream); resume with Last-Event-ID or cursor"


@router.get("/tasks/watch", response_class=EventSourceResponse, description=_DESCRIPTION)
async def watch_tasks(
    request: Request,
    ctx: Context,
    status: list[Status] = Query(default_factory=list),
    priority: list[Priority] = Query(default_factory=list),
    handler: list[str] = Query(default_factory=list),
    cursor: str | None = Query(None, description="resume after this event id (as Last-Event-ID)"),
    last_event_id: str | None = Header(None),
) -> Response:
    """Every change of a task matching the filters (any of the given values of each)."""
    after_text = last_event_id if last_event_id is not None else cursor
    field = "Last-Event-ID" if last_event_id is not None else "cursor"
    after = parse_event_id(after_text, field)[0] if after_text is not None else None
    filter = Filter(statuses=frozenset(s.value for s in status), priorities=frozenset(p.value for p in priority),
                    handlers=frozenset(handler))
    events = watch(ctx.settings, ctx.read_model.feed, filter, after, announce=True)
    return _stream(ctx, request, events)


@router.get("/tasks/{task_id}/watch", response_class=EventSourceResponse, description=_DESCRIPTION)
async def watch_task(
    task_id: str,
    request: Request,
    ctx: Context,
    cursor: str | None = Query(None, description="resume after this event id (as Last-Event-ID)"),
    last_event_id: str | None = Header(None),
) -> Response:
    """The task's current state, then each change until it is terminal."""
    reads.get_task(ctx, task_id)  # 404 for a task the read model does not know
    store = ctx.read_model.store
    after_text = last_event_id if last_event_id is not None else cursor
    field = "Last-Event-ID" if last_event_id is not None else "cursor"
    after, version = parse_event_id(after_text, field) if after_text is not None else (None, None)
    events = watch(ctx.settings, ctx.read_model.feed, Filter(task_id=task_id), after,
                   current=lambda: store.get(task_id), last_version=version)
    return _stream(ctx, request, events)


def _stream(ctx: ApiContext, request: Request, events: AsyncIterator[Event]) -> EventSourceResponse:
    """The SSE response of ``events``, which end when the request's credential stops admitting it (``revalidate``)."""
    need = auth.required(request.method, request.scope["route"].path)
    if isinstance(need, auth.Role):
        events = while_admitted(events, ctx.authenticator, need, request.headers.get("authorization"),
                                request.headers.get("x-api-key"))
    return EventSourceResponse(_sse(events), ping=ctx.settings.watch_heartbeat_s,
                               headers={"Cache-Control": "no-store"})


async def _sse(events: AsyncIterator[Event]) -> AsyncIterator[ServerSentEvent]:
    try:
        async for e in events:
            if e.state is None:
                yield ServerSentEvent(data=codec.dumps_json({"cursor": e.id}), event="position", id=e.id)
            else:
                yield ServerSentEvent(data=_task_text(e.state), event="task", id=e.id)
    except (FellBehind, WatchUnavailable) as exc:
        kind = "fell-behind" if isinstance(exc, FellBehind) else "watch-unavailable"
        yield ServerSentEvent(event="error", data=codec.dumps_json({
            "type": f"urn:taskstream:problem:{kind}", "title": "Watch ended", "status": 503, "detail": str(exc)}))
    except auth.AuthError as exc:
        kind = {401: "unauthorized", 403: "forbidden"}.get(exc.status, "auth-unavailable")
        yield ServerSentEvent(event="error", data=codec.dumps_json({
            "type": f"urn:taskstream:problem:{kind}", "title": "Watch ended", "status": exc.status,
            "detail": f"the credential no longer admits this watch: {exc.detail}"}))
    finally:
        # api.watch.watch is an async generator, annotated there as an AsyncIterator
        await events.aclose()  # type: ignore[attr-defined]


__all__ = ["router"]
