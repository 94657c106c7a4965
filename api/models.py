"""HTTP shapes: request models (task, batch, workflow, patch) and the task JSON.

Pydantic lives only here, at the edge (STYLE §2): a validated ``TaskIn``
becomes a ``TaskCreated`` event, a ``TaskPatch`` a ``TaskUpdated``, and a
``TaskState`` from the read model becomes the task JSON of DESIGN §8.
Payloads and results travel inside the events as JSON text and are decoded
here through ``schemas.codec``.

``depends_on`` lists are deduplicated (first occurrence kept) and hold at
most ``MAX_DEPENDENCIES`` entries. In ``POST /tasks`` and ``/tasks:batch``
they are ids of existing tasks (an unknown id makes the task
``upstream_failed``, DESIGN §5); in ``POST /workflows`` they are keys of
tasks of the same request.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, field_validator

from taskstream.schemas import Priority, TaskCreated, TaskState, TaskUpdated, ValidationError, codec

JsonValue = Any

#: Most dependencies one task may have, and most tasks in one batch or workflow.
MAX_DEPENDENCIES = 1000
MAX_TASKS_PER_REQUEST = 1000

TaskRef = Annotated[StrictStr, Field(min_length=1, max_length=200)]


def _dedup(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


class RetryIn(BaseModel):
    """Retry policy. Only ``max_attempts`` for now; backoff settings come with a later issue."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: Annotated[StrictInt, Field(ge=1, le=100)] | None = None


class TaskFields(BaseModel):
    """The task fields shared by ``POST /tasks``, ``/tasks:batch`` and ``/workflows`` entries."""

    model_config = ConfigDict(extra="forbid")

    handler: Annotated[StrictStr, Field(min_length=1, max_length=200)]
    payload: JsonValue = Field(default_factory=dict)
    priority: Priority = Priority.MEDIUM
    name: StrictStr = ""
    labels: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    run_at: StrictStr | None = None
    timeout_s: Annotated[StrictFloat, Field(gt=0)] | None = None  # ints are accepted, strings and bools not
    retry: RetryIn | None = None

    @field_validator("handler")
    @classmethod
    def _handler_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v

    @field_validator("run_at")
    @classmethod
    def _rfc3339(cls, v: str | None) -> str | None:
        if v is not None:
            parse_rfc3339(v)
        return v

    def run_at_datetime(self) -> datetime | None:
        return None if self.run_at is None else parse_rfc3339(self.run_at)

    def to_event(
        self,
        *,
        task_id: str,
        producer: str,
        now: datetime,
        default_max_attempts: int,
        depends_on: list[str] | None = None,
        **extra: Any,
    ) -> TaskCreated:
        """The ``TaskCreated`` of this task; ``extra`` sets key, workflow_id, upstream_keys, idempotency fields."""
        max_attempts = self.retry.max_attempts if self.retry and self.retry.max_attempts else default_max_attempts
        return TaskCreated(
            task_id=task_id,
            occurred_at=now,
            producer=producer,
            handler=self.handler,
            priority=self.priority.value,
            payload=codec.dumps_json(self.payload),
            name=self.name,
            labels=dict(self.labels),
            depends_on=list(depends_on if depends_on is not None else getattr(self, "depends_on", [])),
            run_at=self.run_at_datetime(),
            timeout_s=None if self.timeout_s is None else float(self.timeout_s),
            max_attempts=max_attempts,
            **extra,
        )


class TaskIn(TaskFields):
    """Body of ``POST /api/v1/tasks`` and an entry of ``/tasks:batch``: ``depends_on`` holds task ids."""

    depends_on: Annotated[list[TaskRef], Field(max_length=MAX_DEPENDENCIES)] = Field(default_factory=list)

    @field_validator("depends_on")
    @classmethod
    def _dedup_ids(cls, v: list[str]) -> list[str]:
        return _dedup(v)


class BatchIn(BaseModel):
    """Body of ``POST /api/v1/tasks:batch``."""

    model_config = ConfigDict(extra="forbid")

    tasks: Annotated[list[TaskIn], Field(min_length=1, max_length=MAX_TASKS_PER_REQUEST)]


class WorkflowTaskIn(TaskFields):
    """An entry of ``POST /api/v1/workflows``: a local ``key`` and ``depends_on`` keys of the same workflow."""

    key: TaskRef
    depends_on: Annotated[list[TaskRef], Field(max_length=MAX_DEPENDENCIES)] = Field(default_factory=list)

    @field_validator("depends_on")
    @classmethod
    def _dedup_keys(cls, v: list[str]) -> list[str]:
        return _dedup(v)


class WorkflowIn(BaseModel):
    """Body of ``POST /api/v1/workflows``."""

    model_config = ConfigDict(extra="forbid")

    tasks: Annotated[list[WorkflowTaskIn], Field(min_length=1, max_length=MAX_TASKS_PER_REQUEST)]


class TaskPatch(BaseModel):
    """Body of ``PATCH /api/v1/tasks/{id}``: the fields to change, at least one.

    ``payload`` may be set to ``null`` (a JSON document like any other);
    the other fields cannot be cleared, so ``null`` is rejected for them.
    """

    model_config = ConfigDict(extra="forbid")

    priority: Priority | None = None
    run_at: StrictStr | None = None
    payload: JsonValue = None
    timeout_s: Annotated[StrictFloat, Field(gt=0)] | None = None
    retry: RetryIn | None = None

    @field_validator("run_at")
    @classmethod
    def _rfc3339(cls, v: str | None) -> str | None:
        if v is not None:
            parse_rfc3339(v)
        return v

    def check(self) -> None:
        """Raise ``schemas.ValidationError`` naming the field for what the field types cannot say."""
        if not self.model_fields_set:
            raise ValidationError("body", "nothing to change: give at least one of priority, run_at, payload, timeout_s, retry")
        for name in ("priority", "run_at", "timeout_s", "retry"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValidationError(name, "cannot be null")
        if self.retry is not None and self.retry.max_attempts is None:
            raise ValidationError("retry.max_attempts", "required when retry is given")

    def run_at_datetime(self) -> datetime | None:
        return None if self.run_at is None else parse_rfc3339(self.run_at)

    def to_event(self, *, task_id: str, producer: str, now: datetime, expected_version: int | None) -> TaskUpdated:
        fields = self.model_fields_set
        return TaskUpdated(
            task_id=task_id,
            occurred_at=now,
            producer=producer,
            expected_version=expected_version,
            priority=self.priority.value if self.priority is not None else None,
            payload=codec.dumps_json(self.payload) if "payload" in fields else None,
            run_at=self.run_at_datetime(),
            timeout_s=None if self.timeout_s is None else float(self.timeout_s),
            max_attempts=self.retry.max_attempts if self.retry is not None else None,
        )


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 date-time with a time zone, as an aware UTC datetime; ValueError otherwise."""
    if len(text) < 20 or text[10] not in "Tt ":
        raise ValueError("must be an RFC 3339 date-time such as 2024-05-01T12:00:00Z")
    try:
        value = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1] in "Zz" else text)
    except ValueError:
        raise ValueError("must be an RFC 3339 date-time such as 2024-05-01T12:00:00Z") from None
    if value.tzinfo is None:
        raise ValueError("must include a time zone offset (e.g. Z or +02:00)")
    return value.astimezone(UTC)


def rfc3339(value: datetime | None) -> str | None:
    """UTC, microseconds, 'Z' suffix: ``2024-05-01T12:00:00.000000Z``."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_or_text(text: str | None) -> JsonValue:
    if text is None:
        return None
    try:
        return codec.loads_json(text)
    except codec.JSONDecodeError:
        return text  # not JSON (should not happen): show it as it is rather than fail the read


def task_json(state: TaskState) -> dict[str, Any]:
    """The task as the API shows it (DESIGN §8)."""
    return {
        "id": state.task_id,
        "name": state.name,
        "handler": state.handler,
        "status": state.status,
        "priority": state.priority,
        "payload": _json_or_text(state.payload),
        "labels": dict(state.labels),
        "depends_on": list(state.depends_on),
        "run_at": rfc3339(state.run_at),
        "attempt": state.attempt,
        "max_attempts": state.max_attempts,
        "timeout_s": state.timeout_s,
        "created_at": rfc3339(state.created_at),
        "updated_at": rfc3339(state.updated_at),
        "started_at": rfc3339(state.started_at),
        "finished_at": rfc3339(state.finished_at),
        "result": _json_or_text(state.result),
        "error": state.error,
        "version": state.version,
        "key": state.key,
        "workflow_id": state.workflow_id,
        "upstream_keys": dict(state.upstream_keys),
        "dependents": list(state.dependents),
    }
