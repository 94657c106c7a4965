"""``/ui``: the web dashboard's routes — page shells, their static files and two read-only JSON helpers.

The pages are Jinja2 templates (autoescape on) that render only the frame:
navigation, the page's parameters (a task id, a workflow id) as ``data-``
attributes, and empty regions. The browser then reads everything through
the HTTP API (``/api/v1/...``, ``/readyz``) with ``fetch``, in one function
(``api()`` in ``static/app.js``) that adds an ``Authorization`` header when
the user typed a key in the page header (kept in ``sessionStorage``). So a
page costs the server nothing beyond a template, the data a page shows is
exactly what the API answers (same filters, same paging, same refusals),
and once the API has authentication the pages need no session of their own:
the same key that authorises ``curl`` authorises the dashboard. Pages never
put data into the DOM as HTML (``textContent`` and ``createElement`` only),
and every HTML answer carries a Content-Security-Policy that allows scripts
from ``/ui/static`` only, so a ``<script>`` in a payload is text twice over.

Questions the HTTP API has no route for are answered here, read-only
and bounded, under ``/ui/api/`` (workflows are the API's own,
``/api/v1/workflows``):

- ``GET /ui/api/throughput?minutes=``: tasks finished per 30 s over the
  last minutes (at most 60), by status. The read model counts finishes per
  second for the last minute only (``TaskStore.finished_by_second``); this
  router's lifespan copies those counters every ``SAMPLE_S`` seconds into a
  history of its own (``ThroughputHistory``), so the chart covers the time
  since this API process started, whoever was watching.
- ``GET /ui/api/latency?limit=``: a histogram of the time from creation to
  success of the newest ``limit`` (default 500, at most 2,000) succeeded
  tasks, computed here so the browser does not download their payloads.
- ``GET /ui/api/lag``: the processor group's lag on ``<p>.events`` (end
  offsets minus committed offsets, through the API's ``BrokerProbe``, so
  cached for a second).

``router`` is the only router; give it one role when the API has roles
(reading pages needs no more than ``reader``: every write goes through the
API's own routes).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import APIRouter, FastAPI, Query, Request
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse, Response

from taskstream.schemas import PRIORITIES, BrokerUnavailable, Status, TaskState, WorkflowStatus

from ..context import ApiContext, Context
from ..problems import JSONResponse, problem

log = logging.getLogger(__name__)

#: How often the lifespan copies the read model's per-second finish counters (they cover 60 s).
SAMPLE_S = 10.0
#: How far back the throughput history goes.
HISTORY_S = 3600


class ThroughputHistory:
    """Tasks finished per second (by status) since the API started, for the last ``HISTORY_S`` seconds.

    ``sample`` overwrites each second it is given: the read model's counter
    for a second only grows while that second is in its window, so the
    latest copy is the right one; sampled every ``SAMPLE_S`` (< 60 s), no
    second is missed.
    """

    def __init__(self, started: float | None = None) -> None:
        self.started = int(started if started is not None else time.time())
        self._seconds: dict[int, Counter[str]] = {}
        self._lock = threading.Lock()

    def sample(self, by_second: dict[int, Counter[str]], now: float | None = None) -> None:
        cutoff = int(now if now is not None else time.time()) - HISTORY_S
        with self._lock:
            self._seconds.update((sec, c) for sec, c in by_second.items() if sec > cutoff)
            for sec in [sec for sec in self._seconds if sec <= cutoff]:
                del self._seconds[sec]

    def columns(self, span_s: int, step_s: int, now: float | None = None) -> list[dict]:
        """``span_s // step_s`` columns, oldest first: start (epoch s), finished by status, ``known`` (after start)."""
        end = int(now if now is not None else time.time()) + 1
        start = end - span_s
        with self._lock:
            out = []
            for lo in range(start, end, step_s):
                total: Counter[str] = Counter()
                for sec in range(lo, min(lo + step_s, end)):
                    total.update(self._seconds.get(sec, ()))
                out.append({"start": lo, "by_status": dict(total), "known": lo + step_s > self.started})
            return out


def history(app: FastAPI) -> ThroughputHistory:
    h = getattr(app.state, "ui_throughput", None)
    if h is None:
        h = app.state.ui_throughput = ThroughputHistory()
    return h


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # The app's lifespan, entered before this one, built the context; an app of the pages alone has none.
    ctx: ApiContext | None = getattr(app.state, "context", None)

    async def sampler(ctx: ApiContext) -> None:
        while True:
            history(app).sample(ctx.read_model.store.finished_by_second())
            await asyncio.sleep(SAMPLE_S)

    history(app)
    task = asyncio.create_task(sampler(ctx)) if ctx is not None else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()


router = APIRouter(prefix="/ui", tags=["ui"], include_in_schema=False, lifespan=_lifespan)

_HERE = resources.files(__package__)
_templates = Environment(
    loader=FileSystemLoader(str(_HERE / "templates")),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
#: Static files by name -> media type; nothing else under /ui/static is served.
STATIC = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
#: Scripts and styles from our own origin only; no inline script can run, whatever a page displays.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")

PAGES = {  # page -> (title, nav label or None)
    "overview": ("Overview", "Overview"),
    "tasks": ("Tasks", "Tasks"),
    "task": ("Task", None),
    "workflows": ("Workflows", "Workflows"),
    "workflow": ("Workflow", None),
    "dead-letters": ("Dead letters", "Dead letters"),
    "schedules": ("Schedules", "Schedules"),
    "schedule": ("Schedule", None),
    "workers": ("Workers", "Workers"),
    "limits": ("Limits", "Limits"),
    "triggers": ("Triggers", "Triggers"),
}


def _page(page: str, **params: str) -> HTMLResponse:
    html = _templates.get_template(f"{page}.html").render(
        page=page, title=PAGES[page][0], params=params,
        nav=[(name, label) for name, (_, label) in PAGES.items() if label],
        statuses=[s.value for s in Status], priorities=[p.value for p in PRIORITIES],
        workflow_statuses=[s.value for s in WorkflowStatus],
    )
    return HTMLResponse(html, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store",
                                       "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"})


@router.get("")
@router.get("/")
async def overview() -> Response:
    return _page("overview")


@router.get("/tasks")
async def tasks() -> Response:
    return _page("tasks")


@router.get("/tasks/{task_id}")
async def task(task_id: str) -> Response:
    return _page("task", task_id=task_id)


@router.get("/workflows")
async def workflows() -> Response:
    return _page("workflows")


@router.get("/workflows/{workflow_id}")
async def workflow(workflow_id: str) -> Response:
    return _page("workflow", workflow_id=workflow_id)


@router.get("/dead-letters")
async def dead_letters() -> Response:
    return _page("dead-letters")


@router.get("/schedules")
async def schedules() -> Response:
    return _page("schedules")


@router.get("/schedules/{schedule_id}")
async def schedule(schedule_id: str) -> Response:
    return _page("schedule", schedule_id=schedule_id)


@router.get("/workers")
async def workers() -> Response:
    return _page("workers")


@router.get("/limits")
async def limits() -> Response:
    return _page("limits")


@router.get("/triggers")
async def triggers() -> Response:
    return _page("triggers")


@router.get("/static/{name}")
async def static(name: str) -> Response:
    media = STATIC.get(name)
    if media is None:
        return problem(404, "Not found", f"no static file {name!r}", kind="not-found")
    body = (_HERE / "static" / name).read_bytes()
    return Response(body, media_type=media, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


# ------------------------------------------------------------------ JSON helpers


@router.get("/api/throughput")
async def throughput(request: Request, ctx: Context, minutes: int = Query(10, ge=1, le=60)) -> Response:
    h = history(request.app)
    h.sample(ctx.read_model.store.finished_by_second())
    step = 30
    return JSONResponse({"step_s": step, "since": h.started, "columns": h.columns(minutes * 60, step)})


#: Upper bounds (seconds) of the latency histogram's buckets; one more bucket holds the rest.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


@router.get("/api/latency")
async def latency(ctx: Context, limit: int = Query(500, ge=1, le=2000)) -> Response:
    store = ctx.read_model.store
    page, _ = await asyncio.to_thread(store.list, status=Status.SUCCEEDED.value, limit=limit, max_scan=limit * 2)
    return JSONResponse(latency_histogram(page))


def latency_histogram(tasks: list[TaskState]) -> dict:
    """Creation-to-finish seconds of ``tasks`` in ``LATENCY_BUCKETS``, with percentiles of it and of the run time."""
    total = sorted((t.finished_at - t.created_at).total_seconds() for t in tasks if t.finished_at is not None)
    run = sorted((t.finished_at - t.started_at).total_seconds() for t in tasks
                 if t.finished_at is not None and t.started_at is not None)
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    for s in total:
        counts[next((i for i, b in enumerate(LATENCY_BUCKETS) if s <= b), len(LATENCY_BUCKETS))] += 1

    def pct(values: list[float]) -> dict:
        if not values:
            return {"p50": None, "p95": None, "max": None}
        p95 = values[min(len(values) - 1, int(len(values) * 0.95))]
        return {"p50": round(values[len(values) // 2], 3), "p95": round(p95, 3), "max": round(values[-1], 3)}

    buckets = [{"le": b, "count": n} for b, n in zip((*LATENCY_BUCKETS, None), counts, strict=True)]
    return {"count": len(total), "buckets": buckets, "total_s": pct(total), "run_s": pct(run)}


@router.get("/api/lag")
async def lag(ctx: Context) -> Response:
    try:
        body = await asyncio.to_thread(ctx.probe.processor_lag)
    except BrokerUnavailable as exc:
        return problem(503, "Broker unavailable", f"the broker at {ctx.settings.bootstrap_servers} "
                       f"did not answer: {exc}", kind="broker-unavailable")
    return JSONResponse(body)
