"""What the API answers, as typed values: a task, one event of its history, a workflow, a schedule, a page.

Each value is a frozen dataclass read from the API's JSON (DESIGN §8) by
``from_json``; times are timezone-aware ``datetime``. ``raw`` keeps the
whole document, so a field the API adds later is never lost to a client
that does not know it yet.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

#: Statuses a task never leaves (DESIGN §4).
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "upstream_failed"})
STATUSES = ("pending", "scheduled", "queued", "running", "succeeded", "failed", "cancelled", "upstream_failed")
PRIORITIES = ("high", "medium", "low")

T = TypeVar("T")


def parse_time(value: Any) -> datetime | None:
    """RFC 3339 as the API writes it (``...Z``) -> an aware datetime; None stays None."""
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _fields_from(cls: type, doc: dict[str, Any], times: tuple[str, ...], rename: dict[str, str] | None = None) -> dict:
    names = {f.name for f in dataclasses.fields(cls)} - {"raw"}
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = (rename or {}).get(key, key)
        if name in names:
            out[name] = parse_time(value) if name in times else value
    return out


@dataclass(frozen=True, slots=True)
class Task:
    """A task as ``GET /api/v1/tasks/{id}`` shows it."""

    id: str
    handler: str
    status: str
    priority: str = "medium"
    name: str = ""
    payload: Any = None
    labels: dict[str, str] = field(default_factory=dict)
    depends_on: list[str] = field(default_factory=list)
    run_at: datetime | None = None
    attempt: int = 0
    max_attempts: int = 0
    timeout_s: float | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: Any = None
    error: str | None = None
    #: Why it failed, beside ``error``: the exception type the handler raised and its traceback (the handler's
    #: frames, innermost kept); None when the task has no error or its error is not a raised exception.
    error_type: str | None = None
    traceback: str | None = None
    version: int = 0
    key: str | None = None
    workflow_id: str | None = None
    retry: dict[str, Any] | None = None
    retry_at: datetime | None = None
    checkpoint: Any = None
    schedule_id: str | None = None
    scheduled_for: datetime | None = None
    #: The OpenTelemetry trace the task belongs to (32 hex digits), None without one (docs/tracing.md).
    trace_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    _TIMES = ("run_at", "created_at", "updated_at", "started_at", "finished_at", "retry_at", "scheduled_for")

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Task:
        return cls(**_fields_from(cls, doc, cls._TIMES), raw=doc)

    @property
    def terminal(self) -> bool:
        """True once the task can no longer change by itself (succeeded, failed, cancelled, upstream_failed)."""
        return self.status in TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One event of a task's history (``GET /api/v1/tasks/{id}/events``); ``fields`` holds the event's own fields."""

    type: str
    occurred_at: datetime | None
    attempt: int | None = None
    producer: str = ""
    event_id: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> TaskEvent:
        common = {"type", "occurred_at", "attempt", "producer", "event_id"}
        return cls(type=str(doc.get("type", "")), occurred_at=parse_time(doc.get("occurred_at")),
                   attempt=doc.get("attempt"), producer=str(doc.get("producer") or ""),
                   event_id=str(doc.get("event_id") or ""),
                   fields={k: v for k, v in doc.items() if k not in common}, raw=doc)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A cron schedule as ``GET /api/v1/schedules/{id}`` shows it; ``task`` is the template of the tasks it creates."""

    id: str
    cron: str
    status: str
    name: str = ""
    timezone: str = "UTC"
    task: dict[str, Any] = field(default_factory=dict)
    start_at: datetime | None = None
    end_at: datetime | None = None
    misfire: str = "run_once"
    next_fire_at: datetime | None = None
    last_fire_at: datetime | None = None
    last_task_id: str | None = None
    fired: int = 0
    skipped: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None
    version: int = 0
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    _TIMES = ("start_at", "end_at", "next_fire_at", "last_fire_at", "created_at", "updated_at")

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Schedule:
        return cls(**_fields_from(cls, doc, cls._TIMES), raw=doc)


@dataclass(frozen=True, slots=True)
class Worker:
    """An executor as ``GET /api/v1/workers`` shows it, from its latest report.

    ``status`` is ``alive`` while it reports, ``gone`` once its last report
    is older than ``gone_after_s`` (three of its report intervals);
    ``partitions`` are ``(topic, partition)`` pairs of the ready topics it
    holds; ``running`` names (at most 100 of) the ``in_flight`` tasks.
    """

    id: str
    status: str
    host: str = ""
    pid: int = 0
    version: str = ""
    handlers: list[str] = field(default_factory=list)
    concurrency: int = 0
    in_flight: int = 0
    running: list[str] = field(default_factory=list)
    partitions: list[tuple[str, int]] = field(default_factory=list)
    started_at: datetime | None = None
    last_seen: datetime | None = None
    report_interval_s: float = 0.0
    gone_after_s: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Worker:
        fields = _fields_from(cls, {k: v for k, v in doc.items() if k != "partitions"}, ("started_at", "last_seen"))
        partitions = [(str(p.get("topic")), int(p.get("partition", 0))) for p in doc.get("partitions") or []]
        return cls(**fields, partitions=partitions, raw=doc)


@dataclass(frozen=True, slots=True)
class Workflow:
    """The answer of ``POST /api/v1/workflows``: its id and the task id of every local key."""

    workflow_id: str
    tasks: dict[str, str]

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Workflow:
        return cls(workflow_id=str(doc.get("workflow_id") or ""), tasks=dict(doc.get("tasks") or {}))


#: A workflow's overall statuses; all but ``running`` are final unless a task of it is re-driven.
WORKFLOW_STATUSES = ("running", "succeeded", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class WorkflowRunTask:
    """A task as ``GET /api/v1/workflows/{id}`` shows it: what a graph and a time line need (``get`` has the rest)."""

    id: str
    handler: str
    status: str
    key: str | None = None
    name: str = ""
    attempt: int = 0
    max_attempts: int = 0
    depends_on: list[str] = field(default_factory=list)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    _TIMES = ("created_at", "updated_at", "started_at", "finished_at")

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> WorkflowRunTask:
        return cls(**_fields_from(cls, doc, cls._TIMES), raw=doc)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True, slots=True)
class WorkflowRun:
    """A workflow as ``GET /api/v1/workflows/{id}`` shows it (in a list: without ``tasks`` and ``edges``).

    ``status`` is ``running`` while any task is not terminal; then ``failed`` if any task failed, ``cancelled``
    if one was cancelled, ``failed`` if one is ``upstream_failed``, else ``succeeded``. ``counts`` has the number
    of tasks in each status that has any; ``edges`` are ``(upstream id, dependent id)``; ``tasks`` come in
    topological generations.
    """

    id: str
    status: str
    task_count: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    tasks: list[WorkflowRunTask] = field(default_factory=list)
    edges: list[tuple[str, str]] = field(default_factory=list)
    truncated: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    _TIMES = ("created_at", "updated_at", "started_at", "finished_at")

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> WorkflowRun:
        fields = _fields_from(cls, doc, cls._TIMES)
        fields["tasks"] = [WorkflowRunTask.from_json(t) for t in doc.get("tasks") or ()]
        fields["edges"] = [(str(e["from"]), str(e["to"])) for e in doc.get("edges") or ()]
        return cls(**fields, raw=doc)

    @property
    def terminal(self) -> bool:
        """True once no task of it can change by itself (every task ended)."""
        return self.status != "running"

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    def task(self, key: str) -> WorkflowRunTask:
        """Its task of local ``key``; ``KeyError`` if it has none."""
        for t in self.tasks:
            if t.key == key:
                return t
        raise KeyError(key)


@dataclass(frozen=True, slots=True)
class Change:
    """One change pushed by ``watch_all``: the task as it is now, and the id to resume after it."""

    task: Task
    id: str | None


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list, newest first. ``next_cursor`` fetches the next page (None: this was the last).

    ``partial`` is true when the server's scan budget ran out before the page
    was full: there may still be more, follow ``next_cursor``.
    """

    items: list[T]
    next_cursor: str | None = None
    partial: bool = False


@dataclass(frozen=True, slots=True)
class Trigger:
    """A topic trigger as ``GET /api/v1/triggers/{name}`` shows it: every record of ``topic`` creates a task from
    ``task``; ``sasl_password`` is ``"***"`` when one is set (never the secret)."""

    name: str
    topic: str
    status: str
    task: dict[str, Any] = field(default_factory=dict)
    filter: Any = None
    key_as: str = "label"
    start: Any = "latest"
    format: str = "json"
    bootstrap_servers: str | None = None
    security_protocol: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_ca_location: str | None = None
    created_by: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    version: int = 0
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    _TIMES = ("created_at", "updated_at")

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Trigger:
        return cls(**_fields_from(cls, doc, cls._TIMES), raw=doc)
