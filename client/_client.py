"""``Client`` and ``AsyncClient``: the HTTP API of taskstream for Python programs.

Both build their requests and read their answers with ``_calls`` and differ
only in how a request is sent: each simple operation is written once in
``_Operations`` and returns ``self._send(call)``, which is the result for
``Client`` and an awaitable of it for ``AsyncClient`` (whose signatures are
restated for type checkers only, under ``TYPE_CHECKING``; a unit test keeps
them equal). What loops (``list``, ``schedules``, ``wait``) is written per
class.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterable, Iterator, Mapping
from contextlib import aclosing, closing
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx

from . import _calls as calls
from ._calls import UNSET, Call
from ._handles import AsyncTaskHandle, AsyncWorkflowHandle, TaskHandle, WorkflowHandle, deadline_of, timed_out
from .errors import TaskstreamError, Unavailable, WaitTimeout, unreachable
from .models import Change, Page, Schedule, Task, TaskEvent, Trigger, Worker, Workflow, WorkflowRun
from .sse import SseEvent, StreamDeadline, StreamRenew, iter_sse, read_sse

#: A watch whose connection dropped connects again (after the last event it got) this many times in a row.
WATCH_RECONNECTS = 5


def _watch_url(task_id: str | None) -> str:
    return f"{calls.API}/tasks/{calls._id(task_id)}/watch" if task_id is not None else f"{calls.API}/tasks/watch"


def _watch_params(status, priority, handler) -> dict[str, Any]:
    def many(v):
        return None if v is None else [v] if isinstance(v, str) else list(v)
    return {k: v for k, v in (("status", many(status)), ("priority", many(priority)), ("handler", many(handler)))
            if v}


def _change(e: SseEvent) -> Change | None:
    """A ``task`` event as a Change; None for a ``position``; an ``error`` event (the watch ended) raises."""
    if e.event == "task":
        return Change(Task.from_json(e.json()), e.id)
    if e.event == "error":
        raise Unavailable(e.json(), 503)
    return None


class _WatchEnded(Exception):  # noqa: N818 - carries the error of an ``error`` event to the reconnecting loop
    def __init__(self, error: TaskstreamError) -> None:
        super().__init__(error.summary())
        self.error = error


def _reconnect_pause(failures: int, deadline: float | None) -> float:
    """How long to wait before the ``failures``-th reconnection in a row: 0.2 s doubling to 2 s, within the deadline."""
    pause = min(2.0, 0.1 * 2 ** failures)
    return pause if deadline is None else max(0.0, min(pause, deadline - time.monotonic()))


def _workflow_of(run: WorkflowRun) -> Workflow:
    """What ``POST /workflows`` answers, from a read of the workflow (its keyed tasks)."""
    return Workflow(workflow_id=run.id, tasks={t.key: t.id for t in run.tasks if t.key is not None})

#: Where ``taskstream dev`` serves the API.
DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT_S = 30.0
USER_AGENT = "taskstream-client/0.1"


def _headers(api_key: str | None, token: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json, application/problem+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if api_key:
        headers["X-API-Key"] = api_key
    headers.update(extra or {})
    return headers


def _next_poll(backoff: calls.Backoff, deadline: float | None, timeout: float | None, what: str, last: Any) -> float:
    """The next wait of a polling loop; ``WaitTimeout`` (carrying ``last``) once ``deadline`` passed."""
    delay = backoff()
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeout({"title": "Wait timed out",
                               "detail": f"{what} is still {last.status} after {timeout:g}s"}, last)
        delay = min(delay, left)
    return delay


class _Operations:
    """The operations that are one request each; ``_send`` decides sync or async."""

    url: str

    def _send(self, call: Call) -> Any:  # pragma: no cover - each client has its own
        raise NotImplementedError

    def _kwargs(self, call: Call) -> dict[str, Any]:
        kw: dict[str, Any] = {"params": call.params or None, "headers": call.headers or None}
        if call.json is not UNSET:
            kw["json"] = call.json
        return kw

    def _task_handle(self, task: Task) -> Any:  # pragma: no cover - each client has its own
        raise NotImplementedError

    def _workflow_handle(self, workflow: Workflow) -> Any:  # pragma: no cover - each client has its own
        raise NotImplementedError

    def _transport_error(self, exc: httpx.HTTPError) -> TaskstreamError:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.TimeoutException):
            reason = f"timed out ({type(exc).__name__})"
        return unreachable(self.url, reason)

    # ------------------------------------------------------------ tasks

    def submit(self, handler: calls.HandlerSpec, payload: Any = UNSET, *, priority: str | None = None,
               depends_on: Iterable[str] | None = None, run_at: datetime | str | None = None,
               timeout_s: float | None = None, retry: calls.RetrySpec | None = None,
               max_attempts: int | None = None, labels: Mapping[str, str] | None = None, name: str | None = None,
               idempotency_key: str | None = None, delay_s: float | None = None) -> TaskHandle:
        """Submit one task (``POST /tasks``); a handle of it (``handle.task``: the task as the API accepted it).

        ``handler`` is a name or a function registered with ``@handler`` (its name is sent; an unregistered
        function is a ``TypeError`` before anything is sent). ``retry`` is a ``RetryPolicy``
        (``taskstream.client.RetryPolicy``; a mapping of any part of its JSON is taken too); ``max_attempts``
        is deprecated (``retry=RetryPolicy(max_attempts=n)``). ``delay_s`` (seconds from now) or ``run_at``:
        not before then. With ``idempotency_key`` a repeat of the same request answers the same task and writes
        nothing.
        """
        body = calls.task_body(handler, payload, priority=priority, depends_on=depends_on, run_at=run_at,
                               delay_s=delay_s, timeout_s=timeout_s, retry=retry, max_attempts=max_attempts,
                               labels=labels, name=name)
        return self._send(self._handled(calls.submit(body, idempotency_key), self._task_handle))

    def submit_many(self, tasks: Iterable[Mapping[str, Any]], *,
                    idempotency_key: str | None = None) -> list[TaskHandle]:
        """Submit up to 1,000 tasks in one request (``POST /tasks:batch``): all are validated before any is written.

        Each entry is the JSON of a task (``task_body(...)`` builds one); answers a handle of each, in order.
        """
        call = calls.submit_many([dict(t) for t in tasks], idempotency_key)
        return self._send(self._handled(call, lambda ts: [self._task_handle(t) for t in ts]))

    def workflow(self, tasks: Iterable[Mapping[str, Any]] | Mapping[str, Any], *,
                 idempotency_key: str | None = None) -> WorkflowHandle:
        """Submit a DAG (``POST /workflows``): entries with a local ``key`` and ``depends_on`` keys.

        ``tasks`` is the list of entries or the whole body (``{"tasks": [...]}``); answers a handle of
        the workflow (``handle.workflow``: its id and the task id of every key). A cycle or an unknown
        key is a ``ValidationFailed``.
        """
        entries = tasks if isinstance(tasks, Mapping) else [dict(t) for t in tasks]
        return self._send(self._handled(calls.workflow(entries, idempotency_key), self._workflow_handle))

    def task_handle(self, task_id: str) -> TaskHandle:
        """A handle of a task submitted earlier (one ``GET``: ``NotFound`` for an unknown id)."""
        return self._send(self._handled(calls.get(task_id, None), self._task_handle))

    def workflow_handle(self, workflow_id: str) -> WorkflowHandle:
        """A handle of a workflow submitted earlier (one ``GET``: ``NotFound`` for an unknown id)."""
        call = calls.get_workflow(workflow_id)
        return self._send(self._handled(call, lambda run: self._workflow_handle(_workflow_of(run))))

    @staticmethod
    def _handled(call: Call, wrap: Callable[[Any], Any]) -> Call:
        """``call`` whose answer is passed through ``wrap`` (to a handle) when parsed."""
        parse = call.parse
        return dataclasses.replace(call, parse=lambda r: wrap(parse(r)))

    def get_workflow(self, workflow_id: str) -> WorkflowRun:
        """The workflow (``GET /workflows/{id}``): overall status, counts by status, times, tasks and edges."""
        return self._send(calls.get_workflow(workflow_id))

    def workflows_page(self, *, status: str | None = None, limit: int | None = None,
                       cursor: str | None = None) -> Page[WorkflowRun]:
        """One page of workflows, newest first (``GET /workflows``), without their tasks; ``status`` one of
        ``WORKFLOW_STATUSES``."""
        return self._send(calls.workflows_page(status, limit, cursor))

    def get(self, task_id: str, *, as_of: datetime | str | None = None) -> Task:
        """The task now, or as it was at ``as_of`` (folded from the log)."""
        return self._send(calls.get(task_id, as_of))

    def list_page(self, *, status: str | None = None, priority: str | None = None, handler: str | None = None,
                  labels: Mapping[str, str] | None = None, limit: int | None = None,
                  cursor: str | None = None) -> Page[Task]:
        """One page of tasks, newest first (``GET /tasks``); ``limit`` 1-1,000 (the API's default is 100)."""
        return self._send(calls.list_page(status, priority, handler, labels, limit, cursor))

    def update(self, task_id: str, *, if_match: int | str | None = None, priority: str | None = None,
               run_at: datetime | str | None = None, payload: Any = UNSET, timeout_s: float | None = None,
               retry: calls.RetrySpec | None = None) -> Task:
        """Change a task that has not started (``PATCH``): only the fields given.

        ``if_match`` (a version, e.g. ``task.version``) makes it conditional: ``PreconditionFailed``
        when the task changed meanwhile; ``Conflict`` once the task was queued.
        """
        changes = {"priority": priority if priority is not None else UNSET,
                   "run_at": run_at if run_at is not None else UNSET, "payload": payload,
                   "timeout_s": timeout_s if timeout_s is not None else UNSET,
                   "retry": calls.retry_json(retry) if retry is not None else UNSET}
        return self._send(calls.update(task_id, if_match, changes))

    def cancel(self, task_id: str, *, reason: str = "") -> Task:
        """Cancel a task (``DELETE``); ``Conflict`` if it already ended."""
        return self._send(calls.cancel(task_id, reason))

    def retry(self, task_id: str, *, reason: str = "") -> Task:
        """Re-drive a ``failed`` or ``upstream_failed`` task; ``Conflict`` in any other status."""
        return self._send(calls.retry(task_id, reason))

    def events(self, task_id: str) -> list[TaskEvent]:
        """The task's history decoded from the log, oldest first."""
        return self._send(calls.events(task_id))

    # -------------------------------------------------------- schedules

    def create_schedule(self, cron: str, task: Mapping[str, Any], *, timezone: str | None = None,
                        name: str | None = None, start_at: datetime | str | None = None,
                        end_at: datetime | str | None = None, misfire: str | None = None,
                        idempotency_key: str | None = None) -> Schedule:
        """A cron schedule that creates ``task`` (task fields but ``depends_on``/``run_at``) at each fire."""
        body: dict[str, Any] = {"cron": cron, "task": dict(task)}
        for k, v in (("timezone", timezone), ("name", name), ("start_at", calls._time(start_at)),
                     ("end_at", calls._time(end_at)), ("misfire", misfire)):
            if v is not None:
                body[k] = v
        return self._send(calls.create_schedule(body, idempotency_key))

    def get_schedule(self, schedule_id: str) -> Schedule:
        return self._send(calls.get_schedule(schedule_id))

    def schedules_page(self, *, status: str | None = None, limit: int | None = None,
                       cursor: str | None = None) -> Page[Schedule]:
        """One page of schedules, newest first."""
        return self._send(calls.schedules_page(status, limit, cursor))

    def delete_schedule(self, schedule_id: str, *, reason: str = "") -> Schedule:
        """Stop a schedule; ``Conflict`` if it is already deleted. Tasks it created stay."""
        return self._send(calls.delete_schedule(schedule_id, reason))

    def pause_schedule(self, schedule_id: str, *, reason: str = "") -> Schedule:
        """Stop a schedule's fires until ``resume_schedule`` (fire times meanwhile are skipped)."""
        return self._send(calls.change_schedule(schedule_id, "pause", reason))

    def resume_schedule(self, schedule_id: str) -> Schedule:
        """Fire a paused schedule again, from its next fire time after now."""
        return self._send(calls.change_schedule(schedule_id, "resume"))

    def run_schedule(self, schedule_id: str) -> Schedule:
        """Create the schedule's task now; the schedule's ``last_task_id`` is the new task's id."""
        return self._send(calls.change_schedule(schedule_id, "run"))

    # -------------------------------------------------------- triggers

    def create_trigger(self, name: str, topic: str, task: Mapping[str, Any], *, filter: Any = None,
                       key_as: str | None = None, start: Any = None, format: str | None = None,
                       **cluster: str) -> Trigger:
        """A topic trigger: every record of ``topic`` (from ``start``: ``"latest"``, ``"earliest"``,
        ``{"offset": {partition: n}}``, ``{"time": iso}``) creates a task from ``task`` (task fields but
        ``payload``, ``depends_on``, ``run_at``). ``cluster``: ``bootstrap_servers``, ``security_protocol``,
        ``sasl_mechanism``, ``sasl_username``, ``sasl_password``, ``ssl_ca_location`` of another cluster."""
        body: dict[str, Any] = {"name": name, "topic": topic, "task": dict(task), **cluster}
        for k, v in (("filter", filter), ("key_as", key_as), ("start", start), ("format", format)):
            if v is not None:
                body[k] = v
        return self._send(calls.create_trigger(body))

    def get_trigger(self, name: str) -> Trigger:
        return self._send(calls.get_trigger(name))

    def triggers(self, *, status: str | None = None) -> list[Trigger]:
        """Every trigger (of ``status``), newest first."""
        return self._send(calls.list_triggers(status))

    def pause_trigger(self, name: str, *, reason: str = "") -> Trigger:
        """No new tasks from the trigger until ``resume_trigger``; its records wait in the topic."""
        return self._send(calls.change_trigger(name, "pause", reason))

    def resume_trigger(self, name: str) -> Trigger:
        return self._send(calls.change_trigger(name, "resume"))

    def delete_trigger(self, name: str, *, reason: str = "") -> Trigger:
        """Stop the trigger for good (its name is not taken again); the tasks it created stay."""
        return self._send(calls.change_trigger(name, "delete", reason))

    def pause_handler(self, handler: str, *, reason: str = "") -> dict[str, Any]:
        """Queue nothing new of ``handler`` until ``resume_handler``: its tasks wait ``pending`` with
        ``waiting_for: "paused:handler:<handler>"``; attempts already queued or running finish."""
        return self._send(calls.change_pause("handler", handler, "pause", reason))

    def resume_handler(self, handler: str) -> dict[str, Any]:
        """Queue ``handler``'s tasks again, the ones its pause held first."""
        return self._send(calls.change_pause("handler", handler, "resume"))

    def pause_workflow(self, workflow_id: str, *, reason: str = "") -> dict[str, Any]:
        """Queue nothing new of workflow ``workflow_id`` until ``resume_workflow`` (as ``pause_handler``)."""
        return self._send(calls.change_pause("workflow", workflow_id, "pause", reason))

    def resume_workflow(self, workflow_id: str) -> dict[str, Any]:
        """Queue the workflow's tasks again, the ones its pause held first."""
        return self._send(calls.change_pause("workflow", workflow_id, "resume"))

    def set_handler_limit(self, handler: str, limit: int | None, *, rate: int | None = None,
                          per_s: float | None = None) -> dict[str, Any]:
        """At most ``limit`` attempts of ``handler`` queued or running at once (None: no limit) and at most
        ``rate`` starts in any ``per_s`` seconds (None: no rate), for its tasks without a concurrency key of
        their own; tasks over either wait ``pending``. Neither a limit nor a rate ends the handler's."""
        return self._send(calls.handler_limit(handler, limit, rate, per_s))

    def handler_limits(self) -> list[dict[str, Any]]:
        """Every handler with a limit or a rate: kind, name, limit, rate, per_s."""
        return self._send(calls.handler_limits())

    def pauses(self, *, kind: str | None = None) -> list[dict[str, Any]]:
        """Every paused handler and workflow (``kind``: only ``handler`` or ``workflow``): kind, name,
        paused_at, paused_by, reason."""
        return self._send(calls.pauses(kind))

    def backfill_schedule(self, schedule_id: str, start: datetime | str, end: datetime | str, *,
                          overlap: str = "skip", max_concurrent: int | None = None) -> dict[str, Any]:
        """Run a schedule for its past cron times in ``start``..``end`` (inclusive): the answer names each
        time's task id, oldest first (``tasks``). ``overlap="skip"`` leaves the times the schedule ran;
        ``"allow"`` runs them again. Asking twice creates nothing new."""
        body: dict[str, Any] = {"start": calls._time(start), "end": calls._time(end), "overlap": overlap}
        if max_concurrent is not None:
            body["max_concurrent"] = max_concurrent
        return self._send(calls.backfill_schedule(schedule_id, body))

    # -------------------------------------------------------------- ops

    def stats(self) -> dict[str, Any]:
        """``GET /stats``: counts by status and priority, queue depth, recent throughput."""
        return self._send(calls.stats())

    def workers(self, *, status: str | None = None) -> list[Worker]:
        """``GET /workers``: every executor that reports itself (``alive`` or ``gone``; only those of ``status``)."""
        return self._send(calls.workers(status))

    def limits(self, *, key: str | None = None, active: bool = False, limit: int | None = None,
               cursor: str | None = None) -> dict[str, Any]:
        """``GET /limits``: every concurrency key (only ``key``; only ``active`` ones, holding or waiting) with its
        limit, rate, ``holding``, ``waiting``, ``rate_used`` and ``blocked_by``; ``next_cursor`` and ``totals``."""
        return self._send(calls.limits(key, active, limit, cursor))

    def ready(self) -> dict[str, Any]:
        """``GET /readyz``: the checks when ready; raises ``Unavailable`` with the reasons when not."""
        return self._send(calls.ready())


class Client(_Operations):
    """The taskstream HTTP API, synchronous (one ``httpx.Client``, keep-alive; safe to share between threads).

    ``url`` defaults to ``$TASKSTREAM_URL``, else ``http://127.0.0.1:8080``
    (``taskstream dev``). Credentials: ``token`` (``Authorization: Bearer``,
    default ``$TASKSTREAM_TOKEN``) or ``api_key`` (``X-API-Key``, default
    ``$TASKSTREAM_API_KEY``). Errors are ``TaskstreamError`` subclasses
    (``taskstream.client.errors``). Use it as a context manager or ``close()`` it.
    """

    def __init__(self, url: str | None = None, *, api_key: str | None = None, token: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, headers: Mapping[str, str] | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = (url or os.environ.get("TASKSTREAM_URL") or DEFAULT_URL).rstrip("/")
        api_key = api_key if api_key is not None else os.environ.get("TASKSTREAM_API_KEY")
        token = token if token is not None else os.environ.get("TASKSTREAM_TOKEN")
        self._http = httpx.Client(base_url=self.url, headers=_headers(api_key, token, headers), timeout=timeout,
                                  transport=transport or httpx.HTTPTransport(retries=1))

    def _send(self, call: Call) -> Any:
        try:
            response = self._http.request(call.method, call.path, **self._kwargs(call))
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        return call.parse(calls.check(response))

    def _task_handle(self, task: Task) -> TaskHandle:
        return TaskHandle(self, task)

    def _workflow_handle(self, workflow: Workflow) -> WorkflowHandle:
        return WorkflowHandle(self, workflow)

    def pages(self, **filters: Any) -> Iterator[Page[Task]]:
        """Pages of tasks following the cursor (filters as ``list_page``), until the last."""
        cursor = filters.pop("cursor", None)
        while True:
            page = self.list_page(**filters, cursor=cursor)
            yield page
            cursor = page.next_cursor
            if not cursor:
                return

    def list(self, *, status: str | None = None, priority: str | None = None, handler: str | None = None,
             labels: Mapping[str, str] | None = None, page_size: int | None = None,
             cursor: str | None = None) -> Iterator[Task]:
        """Every task matching the filters, newest first, fetched a page at a time as you iterate."""
        for page in self.pages(status=status, priority=priority, handler=handler, labels=labels, limit=page_size,
                               cursor=cursor):
            yield from page.items

    def schedules(self, *, status: str | None = None, page_size: int | None = None) -> Iterator[Schedule]:
        """Every schedule (of ``status``), newest first, a page at a time."""
        cursor = None
        while True:
            page = self.schedules_page(status=status, limit=page_size, cursor=cursor)
            yield from page.items
            cursor = page.next_cursor
            if not cursor:
                return

    def list_workflows(self, *, status: str | None = None, page_size: int | None = None) -> Iterator[WorkflowRun]:
        """Every workflow (of overall ``status``), newest first, a page at a time as you iterate."""
        cursor = None
        while True:
            page = self.workflows_page(status=status, limit=page_size, cursor=cursor)
            yield from page.items
            cursor = page.next_cursor
            if not cursor:
                return

    def wait_workflow(self, workflow_id: str, timeout: float | None = 60.0, *,
                      on_update: Callable[[WorkflowRun], None] | None = None) -> WorkflowRun:
        """Poll the workflow (as ``wait``) until every task of it ended; return it however it ended.

        ``on_update`` sees every state polled. ``WaitTimeout`` after ``timeout`` seconds (None: no limit).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = calls.Backoff()
        while True:
            wf = self.get_workflow(workflow_id)
            if on_update is not None:
                on_update(wf)
            if wf.terminal:
                return wf
            time.sleep(_next_poll(backoff, deadline, timeout, f"workflow {workflow_id}", wf))

    def wait(self, task_id: str, timeout: float | None = 60.0, *,
             on_update: Callable[[Task], None] | None = None) -> Task:
        """Poll the task (backoff 50 ms growing to 1 s) until it is terminal; return it however it ended.

        ``on_update`` sees every state polled. ``WaitTimeout`` after ``timeout`` seconds (None: no limit).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = calls.Backoff()
        while True:
            task = self.get(task_id)
            if on_update is not None:
                on_update(task)
            if task.terminal:
                return task
            delay = backoff()
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout({"title": "Wait timed out",
                                       "detail": f"task {task_id} is still {task.status} after {timeout:g}s"}, task)
                delay = min(delay, left)
            time.sleep(delay)

    def watch(self, task_id: str, *, last_event_id: str | None = None,
              timeout: float | None = None) -> Iterator[Task]:
        """The task as it is, then every change of it, pushed by the API (Server-Sent Events), until it ends.

        A dropped connection is resumed after the last change seen (no gap, no repeat), up to
        ``WATCH_RECONNECTS`` times in a row; ``NotFound`` for an unknown task. ``WaitTimeout`` (with the
        last state seen) if it has not ended after ``timeout`` seconds (None: no limit).
        """
        for change in self._watch(task_id, {}, last_event_id, timeout):
            yield change.task

    def watch_all(self, *, status: str | Iterable[str] | None = None, priority: str | Iterable[str] | None = None,
                  handler: str | Iterable[str] | None = None, cursor: str | None = None) -> Iterator[Change]:
        """Every change of every task matching the filters (any of the values given for each), from now or
        after ``cursor`` (a ``Change.id``), as they happen; never ends on its own."""
        yield from self._watch(None, _watch_params(status, priority, handler), cursor)

    def _watch(self, task_id: str | None, params: dict[str, Any], last: str | None,
               timeout: float | None = None) -> Generator[Change, None, None]:
        seen = None
        try:
            with closing(self._feed(task_id, params, last, deadline_of(timeout))) as events:
                for e in events:
                    if (change := _change(e)) is not None:
                        seen = change.task
                        yield change
        except StreamDeadline:
            raise timed_out(f"task {task_id}", seen, timeout) from None

    def _feed(self, task_id: str | None, params: dict[str, Any], last: str | None, deadline: float | None,
              *, resume_errors: bool = False) -> Generator[SseEvent, None, None]:
        """Every event of a watch until the API ends it, resumed after the last id it got when the connection drops
        (``WATCH_RECONNECTS`` times in a row at most) and when the stream is renewed to keep to ``deadline``
        (``StreamDeadline`` once that passed). ``resume_errors``: an ``error`` event (the API ended the watch, e.g.
        it fell behind) is resumed from as a dropped connection is, instead of being yielded."""
        failures = 0
        while True:
            try:
                with closing(iter_sse(self._http, _watch_url(task_id), params=params, last_event_id=last,
                                      deadline=deadline)) as stream:
                    for e in stream:
                        if e.event == "error" and resume_errors:
                            raise _WatchEnded(Unavailable(e.json(), 503))
                        last = e.id or last
                        failures = 0
                        yield e
                return
            except StreamRenew:
                continue
            except _WatchEnded as ended:
                failure: TaskstreamError = ended.error
            except httpx.TransportError as exc:
                failure = unreachable(self.url, str(exc) or type(exc).__name__)
            if deadline is not None and time.monotonic() >= deadline:
                raise StreamDeadline
            failures += 1
            if failures > WATCH_RECONNECTS:
                raise failure
            time.sleep(_reconnect_pause(failures, deadline))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Operations):
    """The taskstream HTTP API for asyncio: ``Client``'s methods, each to be awaited.

    ``list``, ``pages`` and ``schedules`` are async iterators (``async for``).
    Same settings as ``Client``; use ``async with`` or ``await aclose()``.
    """

    def __init__(self, url: str | None = None, *, api_key: str | None = None, token: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, headers: Mapping[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = (url or os.environ.get("TASKSTREAM_URL") or DEFAULT_URL).rstrip("/")
        api_key = api_key if api_key is not None else os.environ.get("TASKSTREAM_API_KEY")
        token = token if token is not None else os.environ.get("TASKSTREAM_TOKEN")
        self._http = httpx.AsyncClient(base_url=self.url, headers=_headers(api_key, token, headers), timeout=timeout,
                                       transport=transport or httpx.AsyncHTTPTransport(retries=1))

    # What _Operations' methods are here: awaitables of the same results (so not overrides of the
    # synchronous signatures, which mypy checks them against; hence the ignores).
    if TYPE_CHECKING:
        async def submit(self, handler: calls.HandlerSpec, payload: Any = UNSET, *,  # type: ignore[override]
                         priority: str | None = None,
                         depends_on: Iterable[str] | None = None, run_at: datetime | str | None = None,
                         timeout_s: float | None = None, retry: calls.RetrySpec | None = None,
                         max_attempts: int | None = None, labels: Mapping[str, str] | None = None,
                         name: str | None = None, idempotency_key: str | None = None,
                         delay_s: float | None = None) -> AsyncTaskHandle: ...
        async def submit_many(self, tasks: Iterable[Mapping[str, Any]], *,  # type: ignore[override]
                              idempotency_key: str | None = None) -> list[AsyncTaskHandle]: ...
        async def workflow(self, tasks: Iterable[Mapping[str, Any]] | Mapping[str, Any], *,  # type: ignore[override]
                           idempotency_key: str | None = None) -> AsyncWorkflowHandle: ...
        async def task_handle(self, task_id: str) -> AsyncTaskHandle: ...  # type: ignore[override]
        async def workflow_handle(self, workflow_id: str) -> AsyncWorkflowHandle: ...  # type: ignore[override]
        async def get_workflow(self, workflow_id: str) -> WorkflowRun: ...  # type: ignore[override]
        async def workflows_page(self, *, status: str | None = None, limit: int | None = None,  # type: ignore[override]
                                 cursor: str | None = None) -> Page[WorkflowRun]: ...
        async def get(self, task_id: str, *, as_of: datetime | str | None = None) -> Task: ...  # type: ignore[override]
        async def list_page(self, *, status: str | None = None, priority: str | None = None,  # type: ignore[override]
                            handler: str | None = None, labels: Mapping[str, str] | None = None,
                            limit: int | None = None, cursor: str | None = None) -> Page[Task]: ...
        async def update(self, task_id: str, *, if_match: int | str | None = None, priority: str | None = None,  # type: ignore[override]
                         run_at: datetime | str | None = None, payload: Any = UNSET, timeout_s: float | None = None,
                         retry: calls.RetrySpec | None = None) -> Task: ...
        async def cancel(self, task_id: str, *, reason: str = "") -> Task: ...  # type: ignore[override]
        async def retry(self, task_id: str, *, reason: str = "") -> Task: ...  # type: ignore[override]
        async def events(self, task_id: str) -> list[TaskEvent]: ...  # type: ignore[override]
        async def create_schedule(self, cron: str, task: Mapping[str, Any], *, timezone: str | None = None,  # type: ignore[override]
                                  name: str | None = None, start_at: datetime | str | None = None,
                                  end_at: datetime | str | None = None, misfire: str | None = None,
                                  idempotency_key: str | None = None) -> Schedule: ...
        async def get_schedule(self, schedule_id: str) -> Schedule: ...  # type: ignore[override]
        async def create_trigger(self, name: str, topic: str, task: Mapping[str, Any], *,  # type: ignore[override]
                                 filter: Any = None, key_as: str | None = None, start: Any = None,
                                 format: str | None = None, **cluster: str) -> Trigger: ...
        async def get_trigger(self, name: str) -> Trigger: ...  # type: ignore[override]
        async def triggers(self, *, status: str | None = None) -> list[Trigger]: ...  # type: ignore[override]
        async def pause_trigger(self, name: str, *, reason: str = "") -> Trigger: ...  # type: ignore[override]
        async def resume_trigger(self, name: str) -> Trigger: ...  # type: ignore[override]
        async def delete_trigger(self, name: str, *, reason: str = "") -> Trigger: ...  # type: ignore[override]
        async def schedules_page(self, *, status: str | None = None, limit: int | None = None,  # type: ignore[override]
                                 cursor: str | None = None) -> Page[Schedule]: ...
        async def delete_schedule(self, schedule_id: str, *, reason: str = "") -> Schedule: ...  # type: ignore[override]
        async def pause_schedule(self, schedule_id: str, *, reason: str = "") -> Schedule: ...  # type: ignore[override]
        async def resume_schedule(self, schedule_id: str) -> Schedule: ...  # type: ignore[override]
        async def run_schedule(self, schedule_id: str) -> Schedule: ...  # type: ignore[override]
        async def pause_handler(self, handler: str, *, reason: str = "") -> dict[str, Any]: ...  # type: ignore[override]
        async def resume_handler(self, handler: str) -> dict[str, Any]: ...  # type: ignore[override]
        async def pause_workflow(self, workflow_id: str, *, reason: str = "") -> dict[str, Any]: ...  # type: ignore[override]
        async def resume_workflow(self, workflow_id: str) -> dict[str, Any]: ...  # type: ignore[override]
        async def pauses(self, *, kind: str | None = None) -> list[dict[str, Any]]: ...  # type: ignore[override]
        async def set_handler_limit(self, handler: str, limit: int | None, *, rate: int | None = None,  # type: ignore[override]
                                    per_s: float | None = None) -> dict[str, Any]: ...
        async def handler_limits(self) -> list[dict[str, Any]]: ...  # type: ignore[override]
        async def backfill_schedule(self, schedule_id: str, start: datetime | str,  # type: ignore[override]
                                    end: datetime | str, *, overlap: str = "skip",
                                    max_concurrent: int | None = None) -> dict[str, Any]: ...
        async def stats(self) -> dict[str, Any]: ...  # type: ignore[override]
        async def ready(self) -> dict[str, Any]: ...  # type: ignore[override]
        async def workers(self, *, status: str | None = None) -> list[Worker]: ...  # type: ignore[override]
        async def limits(self, *, key: str | None = None, active: bool = False,  # type: ignore[override]
                         limit: int | None = None, cursor: str | None = None) -> dict[str, Any]: ...

    async def _send(self, call: Call) -> Any:
        try:
            response = await self._http.request(call.method, call.path, **self._kwargs(call))
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        return call.parse(calls.check(response))

    def _task_handle(self, task: Task) -> AsyncTaskHandle:
        return AsyncTaskHandle(self, task)

    def _workflow_handle(self, workflow: Workflow) -> AsyncWorkflowHandle:
        return AsyncWorkflowHandle(self, workflow)

    async def pages(self, **filters: Any) -> AsyncIterator[Page[Task]]:
        cursor = filters.pop("cursor", None)
        while True:
            page = await self.list_page(**filters, cursor=cursor)
            yield page
            cursor = page.next_cursor
            if not cursor:
                return

    async def list(self, *, status: str | None = None, priority: str | None = None, handler: str | None = None,
                   labels: Mapping[str, str] | None = None, page_size: int | None = None,
                   cursor: str | None = None) -> AsyncIterator[Task]:
        async for page in self.pages(status=status, priority=priority, handler=handler, labels=labels,
                                     limit=page_size, cursor=cursor):
            for task in page.items:
                yield task

    async def schedules(self, *, status: str | None = None, page_size: int | None = None) -> AsyncIterator[Schedule]:
        cursor = None
        while True:
            page = await self.schedules_page(status=status, limit=page_size, cursor=cursor)
            for schedule in page.items:
                yield schedule
            cursor = page.next_cursor
            if not cursor:
                return

    async def list_workflows(self, *, status: str | None = None,
                             page_size: int | None = None) -> AsyncIterator[WorkflowRun]:
        """As ``Client.list_workflows``: ``async for wf in client.list_workflows()``."""
        cursor = None
        while True:
            page = await self.workflows_page(status=status, limit=page_size, cursor=cursor)
            for wf in page.items:
                yield wf
            cursor = page.next_cursor
            if not cursor:
                return

    async def wait_workflow(self, workflow_id: str, timeout: float | None = 60.0, *,
                            on_update: Callable[[WorkflowRun], None] | None = None) -> WorkflowRun:
        """As ``Client.wait_workflow``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = calls.Backoff()
        while True:
            wf = await self.get_workflow(workflow_id)
            if on_update is not None:
                on_update(wf)
            if wf.terminal:
                return wf
            await asyncio.sleep(_next_poll(backoff, deadline, timeout, f"workflow {workflow_id}", wf))

    async def wait(self, task_id: str, timeout: float | None = 60.0, *,
                   on_update: Callable[[Task], None] | None = None) -> Task:
        """As ``Client.wait``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = calls.Backoff()
        while True:
            task = await self.get(task_id)
            if on_update is not None:
                on_update(task)
            if task.terminal:
                return task
            delay = backoff()
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout({"title": "Wait timed out",
                                       "detail": f"task {task_id} is still {task.status} after {timeout:g}s"}, task)
                delay = min(delay, left)
            await asyncio.sleep(delay)

    async def watch(self, task_id: str, *, last_event_id: str | None = None,
                    timeout: float | None = None) -> AsyncIterator[Task]:
        """As ``Client.watch``: ``async for task in client.watch(id)``."""
        async for change in self._watch(task_id, {}, last_event_id, timeout):
            yield change.task

    async def watch_all(self, *, status: str | Iterable[str] | None = None,
                        priority: str | Iterable[str] | None = None, handler: str | Iterable[str] | None = None,
                        cursor: str | None = None) -> AsyncIterator[Change]:
        """As ``Client.watch_all``: ``async for change in client.watch_all(status="failed")``."""
        async for change in self._watch(None, _watch_params(status, priority, handler), cursor):
            yield change

    async def _watch(self, task_id: str | None, params: dict[str, Any], last: str | None,
                     timeout: float | None = None) -> AsyncGenerator[Change, None]:
        seen = None
        try:
            async with aclosing(self._feed(task_id, params, last, deadline_of(timeout))) as events:
                async for e in events:
                    if (change := _change(e)) is not None:
                        seen = change.task
                        yield change
        except StreamDeadline:
            raise timed_out(f"task {task_id}", seen, timeout) from None

    async def _feed(self, task_id: str | None, params: dict[str, Any], last: str | None, deadline: float | None,
                    *, resume_errors: bool = False) -> AsyncGenerator[SseEvent, None]:
        """As ``Client._feed``."""
        failures = 0
        while True:
            try:
                async with aclosing(read_sse(self._http, _watch_url(task_id), params=params, last_event_id=last,
                                             deadline=deadline)) as stream:
                    async for e in stream:
                        if e.event == "error" and resume_errors:
                            raise _WatchEnded(Unavailable(e.json(), 503))
                        last = e.id or last
                        failures = 0
                        yield e
                return
            except StreamRenew:
                continue
            except _WatchEnded as ended:
                failure: TaskstreamError = ended.error
            except httpx.TransportError as exc:
                failure = unreachable(self.url, str(exc) or type(exc).__name__)
            if deadline is not None and time.monotonic() >= deadline:
                raise StreamDeadline
            failures += 1
            if failures > WATCH_RECONNECTS:
                raise failure
            await asyncio.sleep(_reconnect_pause(failures, deadline))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
