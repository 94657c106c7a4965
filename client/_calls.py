"""Every operation as a request to send and a parser of its answer, with no I/O.

``Client`` and ``AsyncClient`` differ only in how they send a ``Call``
(httpx's sync or async client); what goes on the wire and what comes back
is written once, here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar, overload
from urllib.parse import quote

import httpx

from .errors import error_for
from .models import Page, Schedule, Task, TaskEvent, Trigger, Worker, Workflow, WorkflowRun

T = TypeVar("T")
API = "/api/v1"
#: Marks an argument the caller did not give (``payload=None`` is a value: JSON null).
UNSET: Any = type("Unset", (), {"__repr__": lambda self: "UNSET", "__bool__": lambda self: False})()


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One HTTP request and what to make of its 2xx answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: list[tuple[str, str]] = field(default_factory=list)
    json: Any = UNSET
    headers: dict[str, str] = field(default_factory=dict)


def check(response: httpx.Response) -> httpx.Response:
    """``response`` if it is a success, else raise the ``TaskstreamError`` of its problem document."""
    if response.is_success:
        return response
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        text = response.text.strip()[:300]
        problem = {"title": response.reason_phrase or "HTTP error", "status": response.status_code,
                   "detail": text or f"{response.request.method} {response.request.url.path}"}
    raise error_for(response.status_code, problem, response.headers.get("Retry-After"))


def _id(value: str) -> str:
    return quote(str(value), safe="")


@overload
def _time(value: None) -> None: ...
@overload
def _time(value: datetime | str) -> str: ...
def _time(value: datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone: give an aware datetime (e.g. tzinfo=UTC)")
    return value.isoformat()


class RetryLike(Protocol):
    """A whole retry policy as a value: ``taskstream.schemas.RetryPolicy``, or anything with its five fields."""

    max_attempts: int
    initial_s: float
    multiplier: float
    max_s: float
    jitter: float


#: A request's ``retry``: a mapping (any part of ``{"max_attempts", "backoff": {...}}``) or a whole policy value.
RetrySpec = Mapping[str, Any] | RetryLike


def retry_json(retry: RetrySpec) -> dict[str, Any]:
    """The ``retry`` JSON of a request: a mapping as it is, a policy value as its five fields (the same wire shape)."""
    if isinstance(retry, Mapping):
        return dict(retry)
    try:
        return {"max_attempts": retry.max_attempts,
                "backoff": {name: getattr(retry, name) for name in ("initial_s", "multiplier", "max_s", "jitter")}}
    except AttributeError:
        raise TypeError(f"retry must be a mapping or a RetryPolicy, not {type(retry).__name__}") from None


class HandlerRef(Protocol):
    """A handler function registered with ``@handler`` (``taskstream.executors``): it carries its name."""

    taskstream_handler: str


#: What names a task's handler: its name, or the function ``@handler`` registered (caught typos: a NameError).
HandlerSpec = str | HandlerRef


def handler_name(handler: HandlerSpec) -> str:
    """The name to send for ``handler``: a string as it is, a registered function's name; ``TypeError`` for
    anything else (a function that ``@handler`` did not register), before anything is sent."""
    if isinstance(handler, str):
        return handler
    name = getattr(handler, "taskstream_handler", None)
    if isinstance(name, str) and name:
        return name
    what = getattr(handler, "__qualname__", None) or type(handler).__name__
    raise TypeError(f"handler must be a handler name or a function registered with @handler; {what} is neither")


def _key(idempotency_key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}


def task_body(
    handler: HandlerSpec,
    payload: Any = UNSET,
    *,
    priority: str | None = None,
    depends_on: Iterable[str] | None = None,
    run_at: datetime | str | None = None,
    delay_s: float | None = None,
    timeout_s: float | None = None,
    retry: RetrySpec | None = None,
    max_attempts: int | None = None,
    labels: Mapping[str, str] | None = None,
    name: str | None = None,
    **more: Any,
) -> dict[str, Any]:
    """The JSON of one task for ``POST /tasks`` (or an entry of ``submit_many``): only the fields given.

    ``handler`` is a name or a function registered with ``@handler`` (``handler_name``).
    ``retry`` is a ``RetryPolicy`` (or a mapping of any part of its JSON: ``retry_json``);
    ``max_attempts`` is deprecated (a ``DeprecationWarning``): it is merged into ``retry`` as
    ``{"max_attempts": ...}``, which ``retry=RetryPolicy(max_attempts=...)`` says in the one way;
    ``delay_s`` (seconds from now, like Celery's ``countdown``) or ``run_at``: when it may first run;
    ``more`` passes fields this client does not know yet (``key`` for a workflow entry).
    """
    body: dict[str, Any] = {"handler": handler_name(handler)}
    if payload is not UNSET:
        body["payload"] = payload
    if priority is not None:
        body["priority"] = priority
    if depends_on:
        body["depends_on"] = list(depends_on)
    if run_at is not None:
        body["run_at"] = _time(run_at)
    if delay_s is not None:
        body["delay_s"] = delay_s
    if timeout_s is not None:
        body["timeout_s"] = timeout_s
    if max_attempts is not None:
        warnings.warn("max_attempts= is deprecated: pass retry=RetryPolicy(max_attempts=...)", DeprecationWarning,
                      stacklevel=3)
    if retry is not None or max_attempts is not None:
        body["retry"] = {**(retry_json(retry) if retry is not None else {}),
                         **({"max_attempts": max_attempts} if max_attempts is not None else {})}
    if labels:
        body["labels"] = dict(labels)
    if name is not None:
        body["name"] = name
    body.update(more)
    return body


def _task(r: httpx.Response) -> Task:
    return Task.from_json(r.json())


def _schedule(r: httpx.Response) -> Schedule:
    return Schedule.from_json(r.json())


# ------------------------------------------------------------------ tasks


def submit(body: dict[str, Any], idempotency_key: str | None) -> Call[Task]:
    return Call("POST", f"{API}/tasks", _task, json=body, headers=_key(idempotency_key))


def submit_many(bodies: list[dict[str, Any]], idempotency_key: str | None) -> Call[list[Task]]:
    return Call("POST", f"{API}/tasks:batch", lambda r: [Task.from_json(t) for t in r.json()["tasks"]],
                json={"tasks": bodies}, headers=_key(idempotency_key))


def workflow(tasks: list[dict[str, Any]] | Mapping[str, Any], idempotency_key: str | None) -> Call[Workflow]:
    body = dict(tasks) if isinstance(tasks, Mapping) else {"tasks": list(tasks)}
    return Call("POST", f"{API}/workflows", lambda r: Workflow.from_json(r.json()), json=body,
                headers=_key(idempotency_key))


def get_workflow(workflow_id: str) -> Call[WorkflowRun]:
    return Call("GET", f"{API}/workflows/{_id(workflow_id)}", lambda r: WorkflowRun.from_json(r.json()))


def workflows_page(status: str | None, limit: int | None, cursor: str | None) -> Call[Page[WorkflowRun]]:
    params = [("status", status)] if status is not None else []
    if limit is not None:
        params.append(("limit", str(limit)))
    if cursor is not None:
        params.append(("cursor", cursor))

    def parse(r: httpx.Response) -> Page[WorkflowRun]:
        doc = r.json()
        return Page([WorkflowRun.from_json(w) for w in doc["workflows"]], doc.get("next_cursor"))

    return Call("GET", f"{API}/workflows", parse, params=params)


def get(task_id: str, as_of: datetime | str | None) -> Call[Task]:
    params = [("as_of", _time(as_of))] if as_of is not None else []
    return Call("GET", f"{API}/tasks/{_id(task_id)}", _task, params=params)


def list_page(status: str | None, priority: str | None, handler: str | None, labels: Mapping[str, str] | None,
              limit: int | None, cursor: str | None) -> Call[Page[Task]]:
    params = [(k, v) for k, v in (("status", status), ("priority", priority), ("handler", handler)) if v is not None]
    params += [("label", f"{k}:{v}") for k, v in (labels or {}).items()]
    if limit is not None:
        params.append(("limit", str(limit)))
    if cursor is not None:
        params.append(("cursor", cursor))

    def parse(r: httpx.Response) -> Page[Task]:
        doc = r.json()
        return Page([Task.from_json(t) for t in doc["tasks"]], doc.get("next_cursor"), bool(doc.get("partial")))

    return Call("GET", f"{API}/tasks", parse, params=params)


def update(task_id: str, if_match: int | str | None, changes: dict[str, Any]) -> Call[Task]:
    body = {k: (_time(v) if k == "run_at" else v) for k, v in changes.items() if v is not UNSET}
    headers = {"If-Match": f'"{if_match}"' if isinstance(if_match, int) else if_match} if if_match is not None else {}
    return Call("PATCH", f"{API}/tasks/{_id(task_id)}", _task, json=body, headers=headers)


def cancel(task_id: str, reason: str) -> Call[Task]:
    return Call("DELETE", f"{API}/tasks/{_id(task_id)}", _task, params=[("reason", reason)] if reason else [])


def retry(task_id: str, reason: str) -> Call[Task]:
    return Call("POST", f"{API}/tasks/{_id(task_id)}/retry", _task, json={"reason": reason} if reason else UNSET)


def events(task_id: str) -> Call[list[TaskEvent]]:
    return Call("GET", f"{API}/tasks/{_id(task_id)}/events",
                lambda r: [TaskEvent.from_json(e) for e in r.json()["events"]])


# -------------------------------------------------------------- schedules


def create_schedule(body: dict[str, Any], idempotency_key: str | None) -> Call[Schedule]:
    return Call("POST", f"{API}/schedules", _schedule, json=body, headers=_key(idempotency_key))


def get_schedule(schedule_id: str) -> Call[Schedule]:
    return Call("GET", f"{API}/schedules/{_id(schedule_id)}", _schedule)


def schedules_page(status: str | None, limit: int | None, cursor: str | None) -> Call[Page[Schedule]]:
    params = [("status", status)] if status is not None else []
    if limit is not None:
        params.append(("limit", str(limit)))
    if cursor is not None:
        params.append(("cursor", cursor))

    def parse(r: httpx.Response) -> Page[Schedule]:
        doc = r.json()
        return Page([Schedule.from_json(s) for s in doc["schedules"]], doc.get("next_cursor"))

    return Call("GET", f"{API}/schedules", parse, params=params)


def delete_schedule(schedule_id: str, reason: str) -> Call[Schedule]:
    return Call("DELETE", f"{API}/schedules/{_id(schedule_id)}", _schedule,
                params=[("reason", reason)] if reason else [])


def change_schedule(schedule_id: str, action: str, reason: str = "") -> Call[Schedule]:
    """``POST /schedules/{id}:pause``, ``:resume`` or ``:run``."""
    return Call("POST", f"{API}/schedules/{_id(schedule_id)}:{action}", _schedule,
                params=[("reason", reason)] if reason else [])


def backfill_schedule(schedule_id: str, body: dict[str, Any]) -> Call[dict[str, Any]]:
    return Call("POST", f"{API}/schedules/{_id(schedule_id)}:backfill", lambda r: r.json(), json=body)


# ---------------------------------------------------------------- pauses


def change_pause(kind: str, name: str, action: str, reason: str = "") -> Call[dict[str, Any]]:
    """``POST /handlers/{handler}:pause`` or ``:resume``, ``POST /workflows/{id}:pause`` or ``:resume``."""
    return Call("POST", f"{API}/{kind}s/{_id(name)}:{action}", lambda r: r.json(),
                params=[("reason", reason)] if reason else [])


def pauses(kind: str | None) -> Call[list[dict[str, Any]]]:
    """``GET /pauses``: every paused handler and workflow."""
    return Call("GET", f"{API}/pauses", lambda r: r.json()["pauses"], params=[("kind", kind)] if kind else [])


def handler_limit(handler: str, limit: int | None, rate: int | None = None,
                  per_s: float | None = None) -> Call[dict[str, Any]]:
    """``PUT /limits/handlers/{handler}`` (``DELETE`` for no limit and no rate)."""
    if limit is None and rate is None and per_s is None:
        return Call("DELETE", f"{API}/limits/handlers/{_id(handler)}", lambda r: r.json())
    body = {k: v for k, v in (("limit", limit), ("rate", rate), ("per_s", per_s)) if v is not None}
    return Call("PUT", f"{API}/limits/handlers/{_id(handler)}", lambda r: r.json(), json=body)


def handler_limits() -> Call[list[dict[str, Any]]]:
    """``GET /limits/handlers``."""
    return Call("GET", f"{API}/limits/handlers", lambda r: r.json()["limits"])


# ------------------------------------------------------------------- ops


def stats() -> Call[dict[str, Any]]:
    return Call("GET", f"{API}/stats", lambda r: r.json())


def workers(status: str | None) -> Call[list[Worker]]:
    return Call("GET", f"{API}/workers", lambda r: [Worker.from_json(w) for w in r.json()["workers"]],
                params=[("status", status)] if status else [])


def limits(key: str | None, active: bool, limit: int | None, cursor: str | None) -> Call[dict[str, Any]]:
    params = [("key", key), ("active", "true" if active else None), ("limit", None if limit is None else str(limit)),
              ("cursor", cursor)]
    return Call("GET", f"{API}/limits", lambda r: r.json(), params=[(k, v) for k, v in params if v is not None])


def ready() -> Call[dict[str, Any]]:
    """``/readyz``: the checks when ready; ``Unavailable`` (503, with ``reasons``) when not."""
    return Call("GET", "/readyz", lambda r: r.json())


# ------------------------------------------------------------------ wait


class Backoff:
    """Poll intervals for ``wait()``: ``first`` seconds, growing by ``factor`` up to ``most``."""

    def __init__(self, first: float = 0.05, factor: float = 1.5, most: float = 1.0) -> None:
        self.next, self.factor, self.most = first, factor, most

    def __call__(self) -> float:
        delay = self.next
        self.next = min(self.most, self.next * self.factor)
        return delay


# -------------------------------------------------------------- triggers


def _trigger(r: httpx.Response) -> Trigger:
    return Trigger.from_json(r.json())


def create_trigger(body: dict[str, Any]) -> Call[Trigger]:
    return Call("POST", f"{API}/triggers", _trigger, json=body)


def get_trigger(name: str) -> Call[Trigger]:
    return Call("GET", f"{API}/triggers/{_id(name)}", _trigger)


def list_triggers(status: str | None) -> Call[list[Trigger]]:
    return Call("GET", f"{API}/triggers", lambda r: [Trigger.from_json(t) for t in r.json()["triggers"]],
                params=[("status", status)] if status else [])


def change_trigger(name: str, action: str, reason: str = "") -> Call[Trigger]:
    """``POST /triggers/{name}:pause`` or ``:resume``; ``DELETE /triggers/{name}`` for ``delete``."""
    params = [("reason", reason)] if reason else []
    if action == "delete":
        return Call("DELETE", f"{API}/triggers/{_id(name)}", _trigger, params=params)
    return Call("POST", f"{API}/triggers/{_id(name)}:{action}", _trigger, params=params)
