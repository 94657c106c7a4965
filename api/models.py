"""HTTP shapes: request models (task, batch, workflow, patch, schedule, redrive) and the task and schedule JSON.

Pydantic lives only here, at the edge (STYLE §2): a validated ``TaskIn``
becomes a ``SubmitTask`` command, a ``TaskPatch`` an ``UpdateTask``, a
``ScheduleIn`` a ``CreateSchedule`` (``streams.domain`` decides their
events), and a ``TaskState`` from the read model becomes the task JSON of
DESIGN §8.
Payloads and results travel inside the events as JSON text and are decoded
here through ``schemas.codec``.

Every field is bounded by ``schemas.limits`` (docs/limits.md): a payload
is a JSON document every reader takes (``limits.check_json``: finite numbers,
64-bit integers, valid Unicode, at most ``MAX_JSON_DEPTH`` deep; 422 naming
its path, e.g. ``payload.n``) of at most ``MAX_PAYLOAD_BYTES`` (413); names,
labels, handlers and ids have length limits and must be printable; every
date-time lies within ``[MIN_TIME, MAX_TIME]``. The body itself is parsed
once, by FastAPI (stdlib ``json``); what that parse lets through (NaN,
Infinity, huge integers, lone surrogates) is refused here, and what it
cannot parse (invalid UTF-8, nesting beyond the recursion limit) becomes a
400 naming ``body`` in ``problems``.

``depends_on`` lists are deduplicated (first occurrence kept) and hold at
most ``MAX_DEPENDENCIES`` entries. In ``POST /tasks`` and ``/tasks:batch``
they are ids of existing tasks (an unknown id makes the task
``upstream_failed``, DESIGN §5); in ``POST /workflows`` they are keys of
tasks of the same request.

Retry policy: ``retry: {max_attempts, backoff: {initial_s, multiplier,
max_s, jitter}}``. Every field is optional; on submit the missing ones are
filled from the settings' ``default_retry`` (``default_max_attempts``,
``default_backoff_*``) into a ``RetryPolicy``, so every ``TaskCreated`` (and
schedule template) carries the complete policy; on ``PATCH`` only the given
ones change.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal, overload

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from taskstream.schemas import (
    MAX_BACKOFF_S,
    Priority,
    RetryPolicy,
    ScheduleBackfilled,
    ScheduleState,
    Settings,
    TaskState,
    TriggerState,
    ValidationError,
    codec,
)
from taskstream.schemas import cron as cron_expr
from taskstream.schemas.limits import (
    LABEL_KEY_PATTERN,
    MAX_CONCURRENCY_KEY_CHARS,
    MAX_CONCURRENCY_LIMIT,
    MAX_DEPENDENCIES,
    MAX_HANDLER_CHARS,
    MAX_ID_CHARS,
    MAX_LABEL_KEY_CHARS,
    MAX_LABEL_VALUE_CHARS,
    MAX_LABELS,
    MAX_NAME_CHARS,
    MAX_PAYLOAD_BYTES,
    MAX_RATE,
    MAX_RATE_PERIOD_S,
    MAX_TASKS_PER_REQUEST,
    MAX_TIME,
    MAX_TIMEOUT_S,
    MIN_TIME,
    JsonLimitError,
    check_json,
)
from taskstream.schemas.retry import BACKOFF_FIELDS
from taskstream.schemas.tracing import trace_id_of
from taskstream.streams.domain import BackfillSchedule, CreateSchedule, CreateTrigger, SubmitTask, UpdateTask, shown

if TYPE_CHECKING:
    from .read_model import WorkflowSummary

JsonValue = Any


def _json_document(value: Any) -> Any:
    """A payload: ``check_json`` (422 naming its path in ``ctx.json_path``), then at most ``MAX_PAYLOAD_BYTES`` (413).

    The size is measured first when the value can be dumped at all, so a
    large document is refused before it is walked.
    """
    try:
        size = len(codec.dumps_json_bytes(value))
    except TypeError:  # orjson: an integer beyond 64 bits, a lone surrogate, nesting beyond 255
        size = None
    if size is not None and size > MAX_PAYLOAD_BYTES:
        raise PydanticCustomError("too_large", "{size} bytes of compact JSON, more than the limit of {limit}",
                                  {"size": size, "limit": MAX_PAYLOAD_BYTES})
    try:
        check_json(value)
    except JsonLimitError as exc:
        raise PydanticCustomError("json_value", "{reason}", {"reason": exc.reason, "json_path": exc.path}) from None
    return value


def _printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError("must be printable text (no control characters, line breaks or lone surrogates)")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


JsonDocument = Annotated[JsonValue, AfterValidator(_json_document)]
TaskRef = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_CHARS), AfterValidator(_printable)]
Handler = Annotated[StrictStr, Field(min_length=1, max_length=MAX_HANDLER_CHARS), AfterValidator(_not_blank),
                    AfterValidator(_printable)]
Name = Annotated[StrictStr, Field(max_length=MAX_NAME_CHARS), AfterValidator(_printable)]
LabelKey = Annotated[StrictStr, Field(min_length=1, max_length=MAX_LABEL_KEY_CHARS, pattern=LABEL_KEY_PATTERN)]
LabelValue = Annotated[StrictStr, Field(max_length=MAX_LABEL_VALUE_CHARS), AfterValidator(_printable)]
Labels = Annotated[dict[LabelKey, LabelValue], Field(max_length=MAX_LABELS)]


def _dedup(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


Seconds = Annotated[StrictFloat, Field(allow_inf_nan=False)]  # ints are accepted, strings and bools not
TimeoutS = Annotated[Seconds, Field(gt=0, le=MAX_TIMEOUT_S)]


class BackoffIn(BaseModel):
    """Waits between attempts: ``min(max_s, initial_s * multiplier**(k-1))``, shortened by up to ``jitter``."""

    model_config = ConfigDict(extra="forbid")

    initial_s: Annotated[Seconds, Field(ge=0, le=MAX_BACKOFF_S)] | None = None
    multiplier: Annotated[Seconds, Field(ge=1, le=1000)] | None = None
    max_s: Annotated[Seconds, Field(gt=0, le=MAX_BACKOFF_S)] | None = None
    jitter: Annotated[Seconds, Field(ge=0, le=1)] | None = None


class RetryIn(BaseModel):
    """Retry policy: how many attempts in all, and the backoff between them (any part of a ``RetryPolicy``)."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: Annotated[StrictInt, Field(ge=1, le=100)] | None = None
    backoff: BackoffIn | None = None

    def over(self, base: RetryPolicy) -> RetryPolicy:
        """``base`` with the fields given here."""
        backoff = self.backoff if self.backoff is not None else BackoffIn()
        return base.but(max_attempts=self.max_attempts, **{name: getattr(backoff, name) for name in BACKOFF_FIELDS})


def retry_policy(retry: RetryIn | None, settings: Settings) -> RetryPolicy:
    """The policy of a new task: the given fields over the settings' ``default_retry``."""
    return retry.over(settings.default_retry) if retry is not None else settings.default_retry


class TaskBody(BaseModel):
    """Task fields without time or dependencies: a schedule's ``task`` and the base of ``TaskFields``."""

    model_config = ConfigDict(extra="forbid")

    handler: Handler
    payload: JsonDocument = Field(default_factory=dict)
    priority: Priority = Priority.MEDIUM
    name: Name = ""
    labels: Labels = Field(default_factory=dict)
    timeout_s: TimeoutS | None = None
    retry: RetryIn | None = None

    def template(self, settings: Settings) -> dict[str, Any]:
        """The complete task a schedule creates at each fire (defaults filled in; JSON-able)."""
        return {
            "handler": self.handler,
            "payload": self.payload,
            "priority": self.priority.value,
            "name": self.name,
            "labels": dict(self.labels),
            "timeout_s": None if self.timeout_s is None else float(self.timeout_s),
            **retry_policy(self.retry, settings).fields(),
        }


class ConcurrencyIn(BaseModel):
    """At most ``limit`` attempts with the same ``key`` queued or running at once, and at most ``rate`` starts of
    it in any ``per_s`` seconds (a limit, a rate or both); ``key`` may name payload fields
    (``"customer-{payload.customer_id}"``), filled in when the task is submitted. The decider checks that a key
    has a limit or a rate and that ``rate`` and ``per_s`` come together (422 naming the field)."""

    model_config = ConfigDict(extra="forbid")

    key: Annotated[StrictStr, Field(min_length=1, max_length=MAX_CONCURRENCY_KEY_CHARS)]
    limit: Annotated[StrictInt, Field(ge=1, le=MAX_CONCURRENCY_LIMIT)] | None = None
    rate: Annotated[StrictInt, Field(ge=1, le=MAX_RATE)] | None = None
    per_s: Annotated[Seconds, Field(gt=0, le=MAX_RATE_PERIOD_S)] | None = None


#: The longest ``delay_s`` a new task takes: ten years, in seconds.
MAX_DELAY_S = 10 * 366 * 86400.0


class TaskFields(TaskBody):
    """The task fields shared by ``POST /tasks``, ``/tasks:batch`` and ``/workflows`` entries.

    When the task may first run: ``run_at`` (an RFC 3339 date-time) or
    ``delay_s`` (seconds from the moment the API accepts the request, like
    Celery's ``countdown``), not both; neither is "now".
    """

    run_at: StrictStr | None = None
    delay_s: Annotated[Seconds, Field(ge=0, le=MAX_DELAY_S)] | None = None
    concurrency: ConcurrencyIn | None = None

    @field_validator("run_at")
    @classmethod
    def _rfc3339(cls, v: str | None) -> str | None:
        if v is not None:
            parse_rfc3339(v)
        return v

    @field_validator("delay_s")
    @classmethod
    def _not_with_run_at(cls, v: float | None, info: ValidationInfo) -> float | None:
        if v is not None and info.data.get("run_at") is not None:
            raise ValueError("give run_at or delay_s, not both")
        return v

    def run_at_datetime(self, now: datetime | None = None) -> datetime | None:
        """``run_at``, or ``now`` (default: the clock) plus ``delay_s``; None for neither."""
        if self.delay_s is not None:
            return (now or datetime.now(UTC)) + timedelta(seconds=self.delay_s)
        return None if self.run_at is None else parse_rfc3339(self.run_at)

    def to_command(
        self,
        *,
        task_id: str,
        producer: str,
        settings: Settings,
        depends_on: list[str] | None = None,
        actor: str | None = None,
        now: datetime | None = None,
        **extra: Any,
    ) -> SubmitTask:
        """The ``SubmitTask`` of this task; ``extra`` sets key, workflow_id, upstream_keys, idempotency fields."""
        return SubmitTask(
            task_id=task_id,
            producer=producer,
            actor=actor,
            handler=self.handler,
            priority=self.priority.value,
            payload=codec.dumps_json(self.payload),
            name=self.name,
            labels=dict(self.labels),
            depends_on=list(depends_on if depends_on is not None else getattr(self, "depends_on", [])),
            run_at=self.run_at_datetime(now),
            timeout_s=None if self.timeout_s is None else float(self.timeout_s),
            **retry_policy(self.retry, settings).fields(),
            concurrency_key=None if self.concurrency is None else self.concurrency.key,
            concurrency_limit=None if self.concurrency is None else self.concurrency.limit,
            concurrency_rate=None if self.concurrency is None else self.concurrency.rate,
            concurrency_per_s=None if self.concurrency is None or self.concurrency.per_s is None
            else float(self.concurrency.per_s),
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
    payload: JsonDocument = None
    timeout_s: TimeoutS | None = None
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
            raise ValidationError(
                "body", "nothing to change: give at least one of priority, run_at, payload, timeout_s, retry")
        for name in ("priority", "run_at", "timeout_s", "retry"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValidationError(name, "cannot be null")
        if self.retry is not None:
            backoff = self.retry.backoff
            if self.retry.max_attempts is None and backoff is None:
                raise ValidationError("retry", "give max_attempts or backoff (or both)")
            if backoff is not None and not any(getattr(backoff, f) is not None for f in BACKOFF_FIELDS):
                raise ValidationError("retry.backoff", "give at least one of " + ", ".join(BACKOFF_FIELDS))

    def run_at_datetime(self) -> datetime | None:
        return None if self.run_at is None else parse_rfc3339(self.run_at)

    def to_command(self, *, task_id: str, producer: str, expected_version: int | None,
                   actor: str | None = None) -> UpdateTask:
        """The ``UpdateTask`` of this patch: only the fields given (``payload`` may be set to null)."""
        fields = self.model_fields_set
        changes = {
            "priority": self.priority.value if self.priority is not None else None,
            "payload": codec.dumps_json(self.payload) if "payload" in fields else None,
            "run_at": self.run_at_datetime(),
            "timeout_s": None if self.timeout_s is None else float(self.timeout_s),
            "max_attempts": self.retry.max_attempts if self.retry is not None else None,
            **{f"backoff_{name}": None if value is None else float(value) for name, value in self._backoff().items()},
        }
        return UpdateTask(task_id=task_id, producer=producer, actor=actor, expected_version=expected_version,
                          changes={name: value for name, value in changes.items() if value is not None})

    def _backoff(self) -> dict[str, float | None]:
        backoff = self.retry.backoff if self.retry is not None else None
        return {name: getattr(backoff, name) if backoff is not None else None for name in BACKOFF_FIELDS}


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 date-time with a time zone within ``[MIN_TIME, MAX_TIME]``, as an aware UTC datetime.

    ValueError otherwise, also for a time that converts to UTC outside
    ``datetime``'s range (``0001-01-01T00:00:00+01:00``).
    """
    if len(text) < 20 or len(text) > 64 or text[10] not in "Tt ":
        raise ValueError("must be an RFC 3339 date-time such as 2024-05-01T12:00:00Z")
    try:
        value = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1] in "Zz" else text)
    except ValueError:
        raise ValueError("must be an RFC 3339 date-time such as 2024-05-01T12:00:00Z") from None
    if value.tzinfo is None:
        raise ValueError("must include a time zone offset (e.g. Z or +02:00)")
    try:
        utc: datetime | None = value.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not MIN_TIME <= utc <= MAX_TIME:
        raise ValueError(f"must be between {MIN_TIME:%Y-%m-%dT%H:%M:%SZ} and {MAX_TIME:%Y-%m-%dT%H:%M:%SZ}")
    return utc


@overload
def rfc3339(value: datetime) -> str: ...
@overload
def rfc3339(value: None) -> None: ...
@overload
def rfc3339(value: datetime | None) -> str | None: ...
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
        "error_type": state.error_type,
        "traceback": state.traceback,
        "version": state.version,
        "key": state.key,
        "workflow_id": state.workflow_id,
        "upstream_keys": dict(state.upstream_keys),
        "dependents": list(state.dependents),
        "retry": {
            "max_attempts": state.max_attempts,
            "backoff": {
                "initial_s": state.backoff_initial_s,
                "multiplier": state.backoff_multiplier,
                "max_s": state.backoff_max_s,
                "jitter": state.backoff_jitter,
            },
        },
        "retry_at": rfc3339(state.retry_at),
        "checkpoint": _json_or_text(state.checkpoint),
        "schedule_id": state.schedule_id,
        "scheduled_for": rfc3339(state.scheduled_for),
        "concurrency": (None if state.concurrency_key is None
                        else {"key": state.concurrency_key, "limit": state.concurrency_limit,
                              **({} if state.concurrency_rate is None
                                 else {"rate": state.concurrency_rate, "per_s": state.concurrency_per_s})}),
        "waiting_for": state.waiting_for,
        "trace_id": trace_id_of(state.traceparent),
    }


# ------------------------------------------------------------------ redrive


class RedriveIn(BaseModel):
    """Optional body of ``POST /api/v1/tasks/{id}/retry``."""

    model_config = ConfigDict(extra="forbid")

    reason: Annotated[StrictStr, Field(max_length=1000)] = ""


# ---------------------------------------------------------------- schedules

MISFIRE_POLICIES = ("run_once", "skip")


class ScheduleIn(BaseModel):
    """Body of ``POST /api/v1/schedules``: a cron expression and the task it creates at each fire.

    ``task`` takes the task fields except ``depends_on`` and ``run_at`` (a
    fire is the task's time). ``start_at``/``end_at`` bound the fire times:
    the first fire is the first at or after ``start_at`` (default: after
    creation) and no fire is later than ``end_at``.
    """

    model_config = ConfigDict(extra="forbid")

    cron: Annotated[StrictStr, Field(min_length=1, max_length=200)]
    timezone: Annotated[StrictStr, Field(min_length=1, max_length=100)] = "UTC"
    task: TaskBody
    name: Name = ""
    start_at: StrictStr | None = None
    end_at: StrictStr | None = None
    misfire: Literal["run_once", "skip"] = "run_once"

    @field_validator("start_at", "end_at")
    @classmethod
    def _rfc3339(cls, v: str | None) -> str | None:
        if v is not None:
            parse_rfc3339(v)
        return v

    def start_at_datetime(self) -> datetime | None:
        return None if self.start_at is None else parse_rfc3339(self.start_at)

    def end_at_datetime(self) -> datetime | None:
        return None if self.end_at is None else parse_rfc3339(self.end_at)

    def check(self, now: datetime) -> datetime:
        """Raise ``schemas.ValidationError`` naming ``cron``, ``timezone`` or ``end_at``; return the first fire time."""
        cron_expr.check(self.cron, self.timezone)
        start, end = self.start_at_datetime(), self.end_at_datetime()
        if start is not None and end is not None and end <= start:
            raise ValidationError("end_at", "must be after start_at")
        try:
            first = cron_expr.first_fire(self.cron, self.timezone, start, now)
        except Exception as exc:  # croniter: e.g. "0 0 30 2 *" (February 30th) has no next date
            raise ValidationError("cron", f"{self.cron!r} never fires: {exc}") from None
        if end is not None and first > end:
            raise ValidationError("end_at", f"the schedule would never fire: its first fire time {rfc3339(first)} "
                                            "is after end_at")
        return first

    def to_command(self, *, schedule_id: str, producer: str, settings: Settings,
                   actor: str | None = None) -> CreateSchedule:
        return CreateSchedule(
            schedule_id=schedule_id,
            producer=producer,
            actor=actor,
            cron=self.cron,
            timezone=self.timezone,
            template=codec.dumps_json(self.task.template(settings)),
            name=self.name,
            start_at=self.start_at_datetime(),
            end_at=self.end_at_datetime(),
            misfire=self.misfire,
        )


class BackfillIn(BaseModel):
    """Body of ``POST /api/v1/schedules/{id}:backfill``: a past range of the schedule's cron times to run.

    ``start`` and ``end`` (RFC 3339, both inclusive; ``end`` not in the
    future) bound the cron times, read in the schedule's time zone;
    ``overlap``: ``skip`` (default) does not run again a time the schedule
    already ran, ``allow`` runs it again; ``max_concurrent``: at most that
    many of the backfill's tasks queued or running at once.
    """

    model_config = ConfigDict(extra="forbid")

    start: StrictStr
    end: StrictStr
    overlap: Literal["skip", "allow"] = "skip"
    max_concurrent: Annotated[StrictInt, Field(ge=1, le=10_000)] | None = None

    @field_validator("start", "end")
    @classmethod
    def _rfc3339(cls, v: str) -> str:
        parse_rfc3339(v)
        return v

    def to_command(self, *, schedule_id: str, producer: str, actor: str | None) -> BackfillSchedule:
        return BackfillSchedule(schedule_id=schedule_id, producer=producer, start=parse_rfc3339(self.start),
                                end=parse_rfc3339(self.end), overlap=self.overlap,
                                max_concurrent=self.max_concurrent, actor=actor)


def backfill_json(event: ScheduleBackfilled, tasks: list[tuple[datetime, str]]) -> dict[str, Any]:
    """A backfill's answer: the request as recorded and each cron time's task id, oldest first."""
    return {
        "schedule_id": event.schedule_id, "start": rfc3339(event.start), "end": rfc3339(event.end),
        "overlap": event.overlap, "max_concurrent": event.max_concurrent, "count": event.count,
        "tasks": [{"id": task_id, "scheduled_for": rfc3339(t)} for t, task_id in tasks],
    }


def same_schedule(state: ScheduleState, e: CreateSchedule) -> bool:
    """Whether ``state`` was created by a request equal to ``e`` (Idempotency-Key repeats)."""
    return (
        (state.cron, state.timezone, state.name, state.start_at, state.end_at, state.misfire)
        == (e.cron, e.timezone, e.name, e.start_at, e.end_at, e.misfire)
        and _json_or_text(state.template) == _json_or_text(e.template)
    )


def template_handler(template: str) -> str:
    """The handler a schedule's task template names ("" when the template in the log has none)."""
    t = _json_or_text(template)
    return str(t.get("handler", "")) if isinstance(t, dict) else ""


#: A template's flat retry fields (as the log keeps them) and where the task's shape puts them.
_TEMPLATE_RETRY = {"max_attempts": ("max_attempts",), **{f"backoff_{n}": ("backoff", n) for n in BACKOFF_FIELDS}}


def template_json(template: str) -> JsonValue:
    """A schedule's task template in the shape of a task (``retry: {max_attempts, backoff: {...}}``).

    The log keeps the template flat (``max_attempts``, ``backoff_initial_s``, ...,
    as ``TaskCreated`` has them); the API shows it as ``POST /tasks`` takes it,
    so one shape reads and writes a task everywhere. Other keys pass as they are.
    """
    t = _json_or_text(template)
    if not isinstance(t, dict):
        return t
    out: dict[str, Any] = {k: v for k, v in t.items() if k not in _TEMPLATE_RETRY}
    retry: dict[str, Any] = {}
    for flat, path in _TEMPLATE_RETRY.items():
        if t.get(flat) is not None:
            if len(path) == 1:
                retry[path[0]] = t[flat]
            else:
                retry.setdefault(path[0], {})[path[1]] = t[flat]
    if retry:
        out["retry"] = retry
    return out


def schedule_json(state: ScheduleState) -> dict[str, Any]:
    """A schedule as the API shows it; its ``task`` in a task's shape (``template_json``)."""
    return {
        "id": state.schedule_id,
        "name": state.name,
        "cron": state.cron,
        "timezone": state.timezone,
        "task": template_json(state.template),
        "start_at": rfc3339(state.start_at),
        "end_at": rfc3339(state.end_at),
        "misfire": state.misfire,
        "status": state.status,
        "next_fire_at": rfc3339(state.next_fire_at),
        "last_fire_at": rfc3339(state.last_fire_at),
        "last_task_id": state.last_task_id,
        "fired": state.fired,
        "skipped": state.skipped,
        "created_at": rfc3339(state.created_at),
        "updated_at": rfc3339(state.updated_at),
        "version": state.version,
    }


# ---------------------------------------------------------------- workflows


def workflow_json(summary: WorkflowSummary, tasks: list[TaskState] | None = None,
                  edges: list[tuple[str, str]] | None = None, truncated: bool = False) -> dict[str, Any]:
    """A workflow as the API shows it: its summary, and with ``tasks`` (``GET /workflows/{id}``) its tasks and graph.

    ``counts`` has the number of tasks in each status that has any; ``finished_at`` is set once the overall
    status is terminal; ``edges`` are ``{"from": upstream id, "to": dependent id}``.
    """
    doc: dict[str, Any] = {
        "id": summary.workflow_id,
        "status": summary.status,
        "task_count": summary.tasks,
        "counts": dict(summary.counts),
        "created_at": rfc3339(summary.created_at),
        "updated_at": rfc3339(summary.updated_at),
        "started_at": rfc3339(summary.started_at),
        "finished_at": rfc3339(summary.finished_at),
    }
    if tasks is not None:
        doc["tasks"] = [workflow_task_json(t) for t in tasks]
        doc["edges"] = [{"from": a, "to": b} for a, b in edges or ()]
        doc["truncated"] = truncated
    return doc


def workflow_task_json(state: TaskState) -> dict[str, Any]:
    """A task as a workflow shows it: what a graph and a time line need, with a failure's ``error_type``
    (``GET /tasks/{id}`` has the rest, its ``traceback`` among it)."""
    return {
        "id": state.task_id,
        "key": state.key,
        "name": state.name,
        "handler": state.handler,
        "status": state.status,
        "attempt": state.attempt,
        "max_attempts": state.max_attempts,
        "depends_on": list(state.depends_on),
        "created_at": rfc3339(state.created_at),
        "updated_at": rfc3339(state.updated_at),
        "started_at": rfc3339(state.started_at),
        "finished_at": rfc3339(state.finished_at),
        "error": state.error,
        "error_type": state.error_type,
    }


class LimitIn(BaseModel):
    """``PUT /limits/handlers/{handler}``: at most ``limit`` attempts of the handler queued or running at once
    and at most ``rate`` starts in any ``per_s`` seconds; a limit, a rate (with its period) or both."""

    limit: Annotated[StrictInt, Field(ge=1, le=MAX_CONCURRENCY_LIMIT)] | None = None
    rate: Annotated[StrictInt, Field(ge=1, le=MAX_RATE)] | None = None
    per_s: Annotated[Seconds, Field(gt=0, le=MAX_RATE_PERIOD_S)] | None = None

    @model_validator(mode="after")
    def _a_limit_or_a_rate(self) -> LimitIn:
        if (self.rate is None) != (self.per_s is None):
            raise ValueError("a rate needs its period: give both rate and per_s")
        if self.limit is None and self.rate is None:
            raise ValueError("give a limit, a rate (rate and per_s) or both; DELETE ends a handler's limit")
        return self


# ---------------------------------------------------------------- triggers


class TriggerTaskIn(BaseModel):
    """A topic trigger's ``task``: the task fields but ``payload`` (the record's value is the payload),
    ``depends_on`` and ``run_at``."""

    model_config = ConfigDict(extra="forbid")

    handler: Handler
    priority: Priority = Priority.MEDIUM
    name: Name = ""
    labels: Labels = Field(default_factory=dict)
    timeout_s: TimeoutS | None = None
    retry: RetryIn | None = None

    def template(self, settings: Settings) -> dict[str, Any]:
        """The complete task each record creates, but its payload (defaults filled in; JSON-able)."""
        return {
            "handler": self.handler,
            "priority": self.priority.value,
            "name": self.name,
            "labels": dict(self.labels),
            "timeout_s": None if self.timeout_s is None else float(self.timeout_s),
            **retry_policy(self.retry, settings).fields(),
        }


#: A field of the trigger's other cluster (a host list, a user name, a file path).
ClusterText = Annotated[StrictStr, Field(min_length=1, max_length=1000)]


class TriggerIn(BaseModel):
    """Body of ``POST /api/v1/triggers`` (docs/triggers.md). ``filter``, ``start``, ``format`` and ``key_as``
    are checked by the decider (``domain.trigger_problems``: 422 naming the field)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[StrictStr, Field(min_length=1, max_length=100)]
    topic: Annotated[StrictStr, Field(min_length=1, max_length=249)]
    task: TriggerTaskIn
    filter: JsonDocument = None
    key_as: StrictStr = "label"
    start: JsonDocument = "latest"
    format: StrictStr = "json"
    bootstrap_servers: ClusterText | None = None
    security_protocol: StrictStr | None = None
    sasl_mechanism: StrictStr | None = None
    sasl_username: ClusterText | None = None
    sasl_password: ClusterText | None = None
    ssl_ca_location: ClusterText | None = None

    def to_command(self, *, producer: str, settings: Settings, actor: str | None = None) -> CreateTrigger:
        return CreateTrigger(
            name=self.name, producer=producer, actor=actor, topic=self.topic,
            template=codec.dumps_json(self.task.template(settings)),
            filter=None if self.filter is None else codec.dumps_json(self.filter), key_as=self.key_as,
            start=codec.dumps_json(self.start), format=self.format, bootstrap_servers=self.bootstrap_servers,
            security_protocol=self.security_protocol, sasl_mechanism=self.sasl_mechanism,
            sasl_username=self.sasl_username, sasl_password=self.sasl_password,
            ssl_ca_location=self.ssl_ca_location,
        )


def trigger_json(state: TriggerState) -> dict[str, Any]:
    """A trigger as every read shows it: its ``task`` in a task's shape; a SASL password as ``***``."""
    s = shown(state)
    return {
        "name": s.name,
        "topic": s.topic,
        "task": template_json(s.template),
        "filter": _json_or_text(s.filter),
        "key_as": s.key_as,
        "start": _json_or_text(s.start),
        "format": s.format,
        "status": s.status,
        "bootstrap_servers": s.bootstrap_servers,
        "security_protocol": s.security_protocol,
        "sasl_mechanism": s.sasl_mechanism,
        "sasl_username": s.sasl_username,
        "sasl_password": s.sasl_password,
        "ssl_ca_location": s.ssl_ca_location,
        "created_by": s.created_by,
        "created_at": rfc3339(s.created_at),
        "updated_at": rfc3339(s.updated_at),
        "version": s.version,
    }
