"""HTTP routes: ``tasks``, ``workflows``, ``schedules`` under ``/api/v1``; ``health`` (liveness, readiness) at the root.

Routes parse the request and call ``api.service``, the API's one write
path, or ``api.reads``, its one read path, with the app's ``ApiContext``
(a parameter typed ``api.context.Context``); they hold no rule of their own.
"""

from starlette.requests import Request

from taskstream.schemas.tracing import TRACEPARENT, TRACESTATE, TraceContext


def actor_of(request: Request) -> str | None:
    """Who sent the request (the authenticated principal's id), for the events it writes; None when anonymous."""
    principal = getattr(request.state, "principal", None)
    if principal is None or getattr(principal, "kind", None) == "anonymous":
        return None
    return principal.id


def trace_of(request: Request) -> TraceContext | None:
    """The W3C trace context the request came in (``traceparent``, ``tracestate`` headers); None if none or invalid."""
    return TraceContext.parse(request.headers.get(TRACEPARENT), request.headers.get(TRACESTATE))


from . import health, schedules, tasks, workflows  # noqa: E402  (they import actor_of)

__all__ = ["actor_of", "trace_of", "health", "schedules", "tasks", "workflows"]
