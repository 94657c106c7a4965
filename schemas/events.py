"""Event, state and message types: the values that flow through taskstream.

Every fact about a task is one of these frozen dataclasses; ``codec`` turns
them into Avro bytes and back, and nothing else in the program touches the
wire format. Field names and types mirror ``avro/<Name>.avsc`` exactly
(the codec checks this at import time), timestamps are timezone-aware UTC
``datetime`` values and JSON documents (payload, result) travel as JSON text.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType


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
    """Fields every event carries (DESIGN §3), and the id of what it is about (``aggregate_id``).

    An event is about a task (``TaskEvent``, keyed by ``task_id``) or a cron
    schedule (``ScheduleEvent``, keyed by ``schedule_id``); either id is the
    record key in ``<p>.events``. ``event_id`` is minted (uuid4) only by
    producers at the edge (executors); the decider derives the ids of the
    events it decides from their cause (``derived_id``), so the same
    decision gives the same event.
    """

    occurred_at: datetime
    producer: str
    event_id: str = field(default_factory=new_id)

    @property
    def aggregate_id(self) -> str:
        """The id of the task or schedule this event is about: its record key in ``<p>.events``."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskEvent(Event):
    """An event about one task, keyed by ``task_id``."""

    task_id: str

    @property
    def aggregate_id(self) -> str:
        return self.task_id


#: ``field(metadata=AGGREGATE_KEY)`` marks the one field of a ``KeyedEvent`` or ``KeyedState`` that holds its own id.
AGGREGATE_KEY = MappingProxyType({"aggregate_key": True})
_KEY_FIELDS: dict[type, str] = {}


def _own_id(value: KeyedEvent | KeyedState) -> str:
    """The value of the field of ``value`` marked ``AGGREGATE_KEY`` (its name looked up once per class)."""
    try:
        own: str = getattr(value, _KEY_FIELDS[type(value)])
    except KeyError:
        _KEY_FIELDS[type(value)] = next(f.name for f in fields(type(value)) if f.metadata.get("aggregate_key"))
        own = getattr(value, _KEY_FIELDS[type(value)])
    return own


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyedEvent(Event):
    """An event about something other than a task, keyed on ``<p>.events`` by an id field of its own.

    A family declares that field once, marked ``field(metadata=AGGREGATE_KEY)``
    (``schedule_id``, ``gate_id``, ``control_id``, ``trigger_id``); it is the
    event's ``aggregate_id`` and, on the wire, also its ``task_id``, the field
    every record of ``<p>.events`` has (DESIGN §3). Code of ours says the
    family's own name.
    """

    @property
    def aggregate_id(self) -> str:
        return _own_id(self)

    @property
    def task_id(self) -> str:
        """The aggregate id under the wire's common key field name (DESIGN §3)."""
        return _own_id(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyedState:
    """The folded state of something other than a task (its id field marked as ``KeyedEvent``'s), whose key in
    ``<p>.state`` is that id: ``task_id`` names it as every state of ``<p>.state`` names its key."""

    @property
    def task_id(self) -> str:
        """The state's own id under the name every state of ``<p>.state`` has its key."""
        return _own_id(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleEvent(KeyedEvent):
    """An event about one cron schedule, keyed by ``schedule_id`` (on ``<p>.events`` like a task's).

    Records written before schema set 5 carry the id only in ``task_id``: the codec reads either.
    """

    schedule_id: str = field(metadata=AGGREGATE_KEY)


def derived_id(cause: str, *position: object) -> str:
    """The id of an event decided at ``position`` (for example its type, key and ordinal) of ``cause``.

    32 hex characters like ``new_id()``, from SHA-256: the same cause and
    position give the same id on every replay and process; distinct causes or
    positions give distinct ids.
    """
    text = "\x1f".join((cause, *(str(p) for p in position)))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskCreated(TaskEvent):
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
    backoff_initial_s: float | None = None
    backoff_multiplier: float | None = None
    backoff_max_s: float | None = None
    backoff_jitter: float | None = None
    schedule_id: str | None = None
    scheduled_for: datetime | None = None
    description: str = ""
    actor: str | None = None
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    concurrency_rate: int | None = None
    concurrency_per_s: float | None = None
    #: W3C trace context of the task (``schemas.tracing``): the parent of its queue, dependency and attempt spans.
    traceparent: str | None = None
    tracestate: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskQueued(TaskEvent):
    """Attempt ``attempt`` is published to its ready topic.

    ``due_at`` is the time the task waited for (its ``run_at`` or retry
    ``not_before``) when a timer or the retry relay queued it; a ``scheduled``
    task is queued only by a TaskQueued whose ``due_at`` is the time it waits for.
    ``cause`` is the ``event_id`` of the event whose fold the processor applied
    this one with, at once (see ``streams.rebuild``: a fold of the log applies
    it at the same point, whatever was appended in between).
    """

    attempt: int
    priority: str
    due_at: datetime | None = None
    cause: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskStarted(TaskEvent):
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSucceeded(TaskEvent):
    attempt: int
    result: str | None = None
    started_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFailed(TaskEvent):
    """Attempt ``attempt`` failed; ``permanent``: no more attempts (``PermanentError``).

    ``retry_delay_s``: the wait the handler asked for before the next attempt
    (``Retry(delay_s=...)``; None: the policy's backoff). The decider keeps it
    within the task's policy (``RetryPolicy.clamp``); it never adds an attempt.

    ``error_type`` and ``traceback`` say why, when the handler raised: the
    exception's class (``ValueError``, ``mymodule.OutOfStock``: qualified by
    module unless a built-in, as a traceback names it) and the handler's
    frames only, innermost kept (``schemas.limits.MAX_TRACEBACK_FRAMES`` and
    ``MAX_TRACEBACK_CHARS``). Both None for a failure the executor found
    itself (no handler, timeout, result too large) and in logs written before
    schema set 6.
    """

    attempt: int
    error: str
    permanent: bool = False
    started_at: datetime | None = None
    retry_delay_s: float | None = None
    error_type: str | None = None
    traceback: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DependencyRegistered(TaskEvent):
    """Keyed by the upstream task (``task_id``): ``dependent`` waits for it."""

    dependent: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DependencyResolved(TaskEvent):
    """Keyed by the dependent (``task_id``): ``upstream`` ended with ``outcome``."""

    upstream: str
    outcome: str
    result: str | None = None
    result_truncated: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskCancelled(TaskEvent):
    reason: str = ""
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskUpdated(TaskEvent):
    """A change to a task that has not started; ``None`` fields stay as they are."""

    expected_version: int | None = None
    priority: str | None = None
    payload: str | None = None
    run_at: datetime | None = None
    timeout_s: float | None = None
    max_attempts: int | None = None
    backoff_initial_s: float | None = None
    backoff_multiplier: float | None = None
    backoff_max_s: float | None = None
    backoff_jitter: float | None = None
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskCheckpointed(TaskEvent):
    """A running attempt saved progress (``data``: JSON text); the next attempt sees it."""

    attempt: int
    data: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRetryScheduled(TaskEvent):
    """Failed attempt ``attempt`` will be followed by ``attempt + 1`` at ``not_before``.

    Appended by the processor to the log and published to ``<p>.retry.<tier>``,
    where the retry relay holds it until ``not_before``.
    """

    attempt: int
    not_before: datetime
    delay_s: float
    priority: str
    error: str = ""
    cause: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskDeadLettered(TaskEvent):
    """The task failed for good; the same record is published to ``<p>.dlq``."""

    attempt: int
    error: str
    handler: str = ""
    priority: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseExpired(TaskEvent):
    """No heartbeat nor result for running attempt ``attempt`` within its lease: it failed."""

    attempt: int
    lease_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRedriven(TaskEvent):
    """Re-drive a ``failed`` or ``upstream_failed`` task: a new budget of attempts, dependents reopened."""

    reason: str = ""
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleCreated(ScheduleEvent):
    """A cron schedule ``schedule_id`` (the log's key).

    ``template`` is the JSON text of a complete task (handler, payload,
    priority, name, labels, timeout_s, max_attempts, backoff_*), defaults
    already filled in by the API.
    """

    cron: str
    timezone: str = "UTC"
    template: str = "{}"
    name: str = ""
    start_at: datetime | None = None
    end_at: datetime | None = None
    misfire: str = "run_once"
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleFired(ScheduleEvent):
    """The schedule fired for ``fire_at`` and created task ``created_task_id`` ("": none, a skipped misfire)."""

    fire_at: datetime
    created_task_id: str
    skipped: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleDeleted(ScheduleEvent):
    """The schedule stops firing; the tasks it created are not touched."""

    reason: str = ""
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulePaused(ScheduleEvent):
    """The schedule stops firing until it is resumed; its fire times while paused are not caught up."""

    reason: str = ""
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleResumed(ScheduleEvent):
    """A paused schedule fires again, from its first fire time after the resume."""

    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleTriggered(ScheduleEvent):
    """Run now: the schedule creates task ``created_task_id`` at once, besides its cron fires."""

    created_task_id: str
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleBackfilled(ScheduleEvent):
    """An operator asked for the schedule's cron times in ``start``..``end`` (inclusive, in the past): ``count``.

    The processor creates one task per time, in order (``schedules.backfill_times``),
    each with an id derived from the schedule, the time and ``overlap``
    (``skip``: the schedule's own id for that time; ``allow``: a backfill id),
    so asking twice creates nothing new. ``max_concurrent``: at most that many
    of its tasks queued or running at once (None: no bound).
    """

    start: datetime
    end: datetime
    overlap: str = "skip"
    max_concurrent: int | None = None
    count: int = 0
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat(TaskEvent):
    """An executor still runs ``attempt`` (``<p>.heartbeats``; liveness, not history)."""

    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadyTask(TaskEvent):
    """An attempt ready to run, published to ``<p>.ready.<priority>``."""

    attempt: int
    handler: str
    priority: str
    payload: str
    timeout_s: float | None = None
    upstream: str = "{}"
    last_checkpoint: str | None = None


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
    #: What ``error`` came with: the last TaskFailed's exception type and traceback (None for any other error).
    error_type: str | None = None
    traceback: str | None = None
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
    backoff_initial_s: float | None = None
    backoff_multiplier: float | None = None
    backoff_max_s: float | None = None
    backoff_jitter: float | None = None
    retry_at: datetime | None = None
    attempt_offset: int = 0
    checkpoint: str | None = None
    schedule_id: str | None = None
    scheduled_for: datetime | None = None
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    waiting_for: str | None = None
    concurrency_rate: int | None = None
    concurrency_per_s: float | None = None
    traceparent: str | None = None
    tracestate: str | None = None


class ScheduleStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    ENDED = "ended"
    DELETED = "deleted"


class WorkflowStatus(StrEnum):
    """A workflow's overall status, derived from its tasks' (``streams.domain.workflow_status`` holds the rule)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleState(KeyedState):
    """The folded state of one cron schedule (processor table, ``<p>.state``, read model)."""

    schedule_id: str = field(metadata=AGGREGATE_KEY)
    cron: str
    timezone: str
    template: str
    status: str
    created_at: datetime
    updated_at: datetime
    name: str = ""
    start_at: datetime | None = None
    end_at: datetime | None = None
    misfire: str = "run_once"
    next_fire_at: datetime | None = None
    last_fire_at: datetime | None = None
    last_task_id: str | None = None
    fired: int = 0
    skipped: int = 0
    version: int = 0
    last_offset: int = -1


@dataclass(frozen=True, slots=True, kw_only=True)
class GateEvent(KeyedEvent):
    """An event about the slots of one concurrency key, keyed by ``gate_id`` (``concurrency:<key>``) on
    ``<p>.events``, so one partition owns every slot of the key (docs/decisions/0025-flow-control.md)."""

    gate_id: str = field(metadata=AGGREGATE_KEY)


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotRequested(GateEvent):
    """Task ``holder`` asks for a slot of the key for ``attempt``; ``limit``, ``rate`` and ``per_s``: the key's
    limits as the task carries them (the latest request's are the key's). ``limit`` 0: no limit on how many
    at once (a key with a rate only); ``rate`` None: no rate (at most ``rate`` starts in any ``per_s``)."""

    holder: str
    attempt: int
    priority: str = Priority.MEDIUM.value
    limit: int = 1
    rate: int | None = None
    per_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotReleased(GateEvent):
    """Task ``holder`` no longer needs its slot (or its place in the queue) for ``attempt``."""

    holder: str
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GateWoken(GateEvent):
    """The gate's timer fired at ``occurred_at``: a start spent ``per_s`` before is free again (rate limits,
    ``gates.py``). Nothing but the time it carries."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotGranted(TaskEvent):
    """Keyed by the task: the key ``gate_id`` admitted ``attempt``, which may now be queued."""

    gate_id: str
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GateState(KeyedState):
    """The folded slots of one concurrency key (processor table, ``<p>.state``, read model).

    ``holders``: task id -> the attempt holding a slot (queued or running);
    ``waiting``: task ids in the order they are admitted (priority, then
    arrival), with their attempt and priority in ``waiting_attempts`` and
    ``waiting_priorities``.
    """

    gate_id: str = field(metadata=AGGREGATE_KEY)
    created_at: datetime
    updated_at: datetime
    limit: int = 1
    holders: dict[str, int] = field(default_factory=dict)
    waiting: list[str] = field(default_factory=list)
    waiting_attempts: dict[str, int] = field(default_factory=dict)
    waiting_priorities: dict[str, str] = field(default_factory=dict)
    admitted: list[str] = field(default_factory=list)
    granted: int = 0
    version: int = 0
    last_offset: int = -1
    rate: int | None = None
    per_s: float | None = None
    spent: list[datetime] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlEvent(KeyedEvent):
    """An event about one partition's copy of a flow control of a handler or a workflow (``target``:
    ``handler:<name>`` or ``workflow:<id>``), keyed by ``control_id`` (``control:<partition>:<target>``) and
    written to that partition of ``<p>.events``: every partition keeps its own copy, so the decision to hold
    a task is made in the task's own partition, in its log order (docs/decisions/0028-pause-resume.md).
    """

    control_id: str = field(metadata=AGGREGATE_KEY)
    target: str
    partition: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlPaused(ControlEvent):
    """Nothing new of ``target`` is queued in this partition until it is resumed (running attempts finish)."""

    reason: str = ""
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlLimited(ControlEvent):
    """At most ``limit`` attempts of the handler ``target`` queued or running at once (None: no limit) and at
    most ``rate`` starts in any ``per_s`` seconds (None: no rate; schema set 9): a task of it without a
    concurrency key of its own is admitted through the gate ``concurrency:<target>``."""

    limit: int | None = None
    rate: int | None = None
    per_s: float | None = None
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlResumed(ControlEvent):
    """``target`` is no longer paused in this partition: the tasks the pause held there are queued."""

    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskHeld(TaskEvent):
    """Keyed by the task: attempt ``attempt`` was not queued because of ``waiting_for`` (``paused:<target>``);
    the task waits ``pending`` until a TaskReleased of that attempt. It holds only the state at ``version``
    (the one the processor decided on), so a copy sent again never holds a task released since. ``cause``:
    as TaskQueued's."""

    attempt: int
    waiting_for: str
    version: int
    cause: str | None = None
    concurrency_limit: int | None = None
    concurrency_rate: int | None = None
    concurrency_per_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskReleased(TaskEvent):
    """Keyed by the task: the pause it waited for (``waiting_for``) was resumed in its partition; attempt
    ``attempt`` is admitted as a TaskQueued would admit it (only a task held for exactly that)."""

    attempt: int
    waiting_for: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlState(KeyedState):
    """One partition's copy of the flow control of ``target`` (processor table, ``<p>.state``, read model)."""

    control_id: str = field(metadata=AGGREGATE_KEY)
    target: str
    partition: int
    created_at: datetime
    updated_at: datetime
    paused: bool = False
    paused_at: datetime | None = None
    paused_by: str | None = None
    reason: str = ""
    limit: int | None = None
    rate: int | None = None
    per_s: float | None = None
    version: int = 0
    last_offset: int = -1


class TriggerStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True, kw_only=True)
class TriggerEvent(KeyedEvent):
    """An event about one topic trigger, keyed by ``trigger_id`` (``trigger:<name>``) on ``<p>.events``."""

    trigger_id: str = field(metadata=AGGREGATE_KEY)


@dataclass(frozen=True, slots=True, kw_only=True)
class TriggerCreated(TriggerEvent):
    """Every record of ``topic`` from ``start`` on creates one task from ``template`` (docs/triggers.md).

    ``template``: JSON text of the task fields (as a schedule's); ``filter``: JSON text of an object of
    field -> value that a record's value must match (None: every record); ``start``: JSON text of
    ``"latest"``, ``"earliest"``, ``{"offset": {partition: n}}`` or ``{"time": iso}``; the cluster fields
    (None: the cluster of ``<p>.events``) are read by the trigger runner only: ``sasl_password`` is never shown.
    """

    name: str
    topic: str
    template: str = "{}"
    filter: str | None = None
    key_as: str = "label"
    start: str = '"latest"'
    format: str = "json"
    bootstrap_servers: str | None = None
    security_protocol: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_ca_location: str | None = None
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TriggerPaused(TriggerEvent):
    """The trigger creates no tasks until it is resumed; records meanwhile wait in the topic (nothing is skipped)."""

    reason: str = ""
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TriggerResumed(TriggerEvent):
    """A paused trigger goes on from where it stopped."""

    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TriggerDeleted(TriggerEvent):
    """The trigger stops for good; its name is not taken again; the tasks it created are not touched."""

    reason: str = ""
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TriggerState(KeyedState):
    """The folded state of one topic trigger (processor table, ``<p>.state``, read model, trigger runner)."""

    trigger_id: str = field(metadata=AGGREGATE_KEY)
    name: str
    topic: str
    template: str
    status: str
    created_at: datetime
    updated_at: datetime
    filter: str | None = None
    key_as: str = "label"
    start: str = '"latest"'
    format: str = "json"
    bootstrap_servers: str | None = None
    security_protocol: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_ca_location: str | None = None
    created_by: str | None = None
    version: int = 0
    last_offset: int = -1


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKey:
    """An API key as the API checks it: the latest record of ``key_id`` in the compacted ``<p>.admin``.

    Only ``secret_hash`` (SHA-256 of the key) is kept; the key itself is
    shown once, by ``taskstream keys create``. A record with ``revoked_at``
    set ends the key for good: a later record of the same id without it does
    not bring the key back. ``handlers`` limits what the key may submit
    (fnmatch patterns; empty: any handler).
    """

    key_id: str
    name: str
    role: str
    secret_hash: str
    created_at: datetime
    producer: str
    handlers: list[str] = field(default_factory=list)
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerReport:
    """An executor reporting itself: the latest record of ``executor_id`` in the compacted ``<p>.workers``.

    Not an event of a task and not history: each executor writes one every
    ``interval_s`` seconds and when its assignment changes, and a tombstone
    of its key when it stops cleanly. ``partitions`` are ``<topic>:<partition>``
    strings; ``running`` holds at most the first 100 task ids of ``in_flight``
    attempts. Readers judge liveness from when a report was written
    (``api.workers``), not from anything in it.
    """

    executor_id: str
    host: str
    pid: int
    version: str
    handlers: list[str]
    concurrency: int
    partitions: list[str]
    in_flight: int
    running: list[str]
    started_at: datetime
    reported_at: datetime
    interval_s: float


#: Types of the events about a schedule (the others are about a task).
SCHEDULE_EVENT_TYPES: tuple[type[ScheduleEvent], ...] = (
    ScheduleCreated, ScheduleFired, ScheduleDeleted, SchedulePaused, ScheduleResumed, ScheduleTriggered,
    ScheduleBackfilled,
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
    TaskCheckpointed,
    TaskRetryScheduled,
    TaskDeadLettered,
    LeaseExpired,
    TaskRedriven,
    ScheduleCreated,
    ScheduleFired,
    ScheduleDeleted,
    SchedulePaused,
    ScheduleResumed,
    ScheduleTriggered,
    ScheduleBackfilled,
    SlotRequested,
    SlotReleased,
    SlotGranted,
    GateWoken,
    ControlPaused,
    ControlResumed,
    ControlLimited,
    TaskHeld,
    TaskReleased,
    TriggerCreated,
    TriggerPaused,
    TriggerResumed,
    TriggerDeleted,
)
#: Types of the events about a topic trigger (``TriggerState``).
TRIGGER_EVENT_TYPES: tuple[type[TriggerEvent], ...] = (TriggerCreated, TriggerPaused, TriggerResumed, TriggerDeleted)
#: Types of the events about a flow control's copy in one partition (``ControlState``).
CONTROL_EVENT_TYPES: tuple[type[ControlEvent], ...] = (ControlPaused, ControlResumed, ControlLimited)
#: Types of the events about a concurrency key's slots (``GateState``).
GATE_EVENT_TYPES: tuple[type[GateEvent], ...] = (SlotRequested, SlotReleased, GateWoken)
#: Every type the codec knows, by Avro record name.
RECORD_TYPES: dict[str, type] = {
    t.__name__: t
    for t in (*EVENT_TYPES, ReadyTask, Heartbeat, TaskState, ScheduleState, GateState, ControlState, ApiKey,
              WorkerReport, TriggerState)
}
