"""HTTP shapes: the request model of ``POST /api/v1/tasks`` and the task JSON.

Pydantic lives only here, at the edge (STYLE §2): a validated ``TaskIn``
becomes a ``TaskCreated`` event, and a ``TaskState`` from the read model
becomes the task JSON of DESIGN §8. Payloads and results travel inside the
events as JSON text and are decoded here through ``schemas.codec``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, field_validator

from taskstream.schemas import Priority, TaskCreated, TaskState, codec

JsonValue = Any


class RetryIn(BaseModel):
    """Retry policy. Only ``max_attempts`` for now; backoff settings come with a later issue."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: Annotated[StrictInt, Field(ge=1, le=100)] | None = None


class TaskIn(BaseModel):
    """Body of ``POST /api/v1/tasks``. Unknown fields are rejected (422)."""

    model_config = ConfigDict(extra="forbid")

    handler: Annotated[StrictStr, Field(min_length=1, max_length=200)]
    payload: JsonValue = Field(default_factory=dict)
    priority: Priority = Priority.MEDIUM
    name: StrictStr = ""
    labels: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    depends_on: list[StrictStr] = Field(default_factory=list)
    run_at: StrictStr | None = None
    timeout_s: Annotated[StrictFloat, Field(gt=0)] | None = None  # ints are accepted, strings and bools not
    retry: RetryIn | None = None

    @field_validator("handler")
    @classmethod
    def _handler_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v

    @field_validator("depends_on")
    @classmethod
    def _no_dependencies_yet(cls, v: list[str]) -> list[str]:
        if v:
            raise ValueError("dependencies are not supported yet")
        return v

    @field_validator("run_at")
    @classmethod
    def _rfc3339(cls, v: str | None) -> str | None:
        if v is not None:
            parse_rfc3339(v)
        return v

    def run_at_datetime(self) -> datetime | None:
        return None if self.run_at is None else parse_rfc3339(self.run_at)

    def to_event(self, *, task_id: str, producer: str, now: datetime, default_max_attempts: int) -> TaskCreated:
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
            depends_on=list(self.depends_on),
            run_at=self.run_at_datetime(),
            timeout_s=None if self.timeout_s is None else float(self.timeout_s),
            max_attempts=max_attempts,
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
    }
