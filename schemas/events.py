"""Event, state and message types: the values that flow through taskstream.

Every fact about a task is one of these frozen dataclasses; ``codec`` turns
them into Avro bytes and back, and nothing else in the program touches the
wire format. Field names and types mirror ``avro/<Name>.avsc`` exactly
(the codec checks this at import time), timestamps are timezone-aware UTC
``datetime`` values and JSON documents (payload, result) travel as JSON text.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class Status(StrEnum):
    """Task statuses, exactly the strings the HTTP API shows (DESIGN §4)."""

    PENDING = "pending"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UPSTREAM_FAILED = "upstream_failed"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.UPSTREAM_FAILED})


class Priority(StrEnum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


def new_id() -> str:
    """A fresh task or event id: 32 hex characters (uuid4)."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Fields every event carries (DESIGN §3)."""

    task_id: str
    occurred_at: datetime
    producer: str
    event_id: str = field(default_factory=new_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskCreated(Event):
    handler: str
    priority: str = Priority.MEDIUM.value
    payload: str = "null"
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    depends_on: list[str] = field(default_factory=list)
    run_at: datetime | None = None
    timeout_s: float | None = None
    max_attempts: int = 1
    upstream_keys: dict[str, str] = field(default_factory=dict)
    key: str | None = None
    workflow_id: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskQueued(Event):
    attempt: int
    priority: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskStarted(Event):
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSucceeded(Event):
    attempt: int
    result: str | None = None
    started_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFailed(Event):
    attempt: int
    error: str
    permanent: bool = False
    started_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DependencyRegistered(Event):
    """Keyed by the upstream task (``task_id``): ``dependent`` waits for it."""

    dependent: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DependencyResolved(Event):
    """Keyed by the dependent (``task_id``): ``upstream`` ended with ``outcome``."""

    upstream: str
    outcome: str
    result: str | None = None
    result_truncated: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskCancelled(Event):
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskUpdated(Event):
    """A change to a task that has not started; ``None`` fields stay as they are."""

    expected_version: int | None = None
    priority: str | None = None
    payload: str | None = None
    run_at: datetime | None = None
    timeout_s: float | None = None
    max_attempts: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadyTask(Event):
    """An attempt ready to run, published to ``<p>.ready.<priority>``."""

    attempt: int
    handler: str
    priority: str
    payload: str
    timeout_s: float | None = None
    upstream: str = "{}"


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskState:
    """The folded state of one task (processor table, ``<p>.state``, read model)."""

    task_id: str
    handler: str
    status: str
    priority: str
    payload: str
    created_at: datetime
    updated_at: datetime
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    depends_on: list[str] = field(default_factory=list)
    run_at: datetime | None = None
    timeout_s: float | None = None
    attempt: int = 0
    max_attempts: int = 1
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: str | None = None
    error: str | None = None
    version: int = 0
    last_offset: int = -1
    upstream_keys: dict[str, str] = field(default_factory=dict)
    key: str | None = None
    workflow_id: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    dependents: list[str] = field(default_factory=list)
    resolved: dict[str, str] = field(default_factory=dict)
    upstream_results: dict[str, str] = field(default_factory=dict)


def initial_state(e: TaskCreated) -> TaskState:
    """The state a task starts in: ``pending`` while it has dependencies, else
    ``scheduled`` if it has a run_at, else ``pending``.

    The processor's fold (``streams.domain``) and the API's read-your-writes
    view of a task it just submitted both start from here.
    """
    return TaskState(
        task_id=e.task_id,
        name=e.name,
        handler=e.handler,
        status=Status.SCHEDULED.value if e.run_at is not None and not e.depends_on else Status.PENDING.value,
        priority=e.priority,
        payload=e.payload,
        labels=dict(e.labels),
        depends_on=list(e.depends_on),
        run_at=e.run_at,
        timeout_s=e.timeout_s,
        max_attempts=e.max_attempts,
        created_at=e.occurred_at,
        updated_at=e.occurred_at,
        version=1,
        upstream_keys=dict(e.upstream_keys),
        key=e.key,
        workflow_id=e.workflow_id,
        idempotency_key=e.idempotency_key,
        request_hash=e.request_hash,
    )


#: Types that are facts of the ``<p>.events`` log.
EVENT_TYPES: tuple[type[Event], ...] = (
    TaskCreated,
    TaskQueued,
    TaskStarted,
    TaskSucceeded,
    TaskFailed,
    DependencyRegistered,
    DependencyResolved,
    TaskCancelled,
    TaskUpdated,
)
#: Every type the codec knows, by Avro record name.
RECORD_TYPES: dict[str, type] = {t.__name__: t for t in (*EVENT_TYPES, ReadyTask, TaskState)}
