"""The commands a client sends, validated at the edge (HTTP, gRPC, CLI); ``decide`` answers each with events.

A command names what it acts on (``task_id`` or ``schedule_id``), the
process that writes the answer (``producer``) and who asked (``actor``:
an API key id or token subject; None when authentication is off). Values
are already in their log form: JSON documents as JSON text, times as aware
UTC datetimes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class SubmitTask:
    """Create a task (``TaskCreated``); refused if the id is taken.

    ``concurrency_key`` is the key's template (``{payload.<field>}`` filled in by ``decide``, which raises
    ``ValidationError`` naming ``concurrency.key`` for a field the payload lacks); ``concurrency_limit`` its limit;
    ``concurrency_rate`` and ``concurrency_per_s`` its rate (at most that many starts in any that many seconds;
    both or neither, ``ValidationError`` naming ``concurrency.rate`` or ``concurrency.per_s``). A key needs a limit,
    a rate or both.
    ``traceparent`` and ``tracestate``: the W3C trace context the task carries (the API's submit span, or the
    caller's), kept as given: the decider does not read them.
    """

    task_id: str
    handler: str
    producer: str
    actor: str | None = None
    priority: str = "medium"
    payload: str = "null"
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    depends_on: list[str] = field(default_factory=list)
    run_at: datetime | None = None
    timeout_s: float | None = None
    max_attempts: int = 1
    backoff_initial_s: float | None = None
    backoff_multiplier: float | None = None
    backoff_max_s: float | None = None
    backoff_jitter: float | None = None
    key: str | None = None
    workflow_id: str | None = None
    upstream_keys: dict[str, str] = field(default_factory=dict)
    idempotency_key: str | None = None
    request_hash: str | None = None
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    concurrency_rate: int | None = None
    concurrency_per_s: float | None = None
    traceparent: str | None = None
    tracestate: str | None = None


#: Task fields an ``UpdateTask`` may change (the same names on TaskState and TaskUpdated).
PATCHABLE = ("priority", "payload", "run_at", "timeout_s", "max_attempts",
             "backoff_initial_s", "backoff_multiplier", "backoff_max_s", "backoff_jitter")


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateTask:
    """Change fields of a task that has not started (``TaskUpdated``).

    ``changes`` maps names of ``PATCHABLE`` to new values (None: unchanged;
    ``payload`` is JSON text, so ``"null"`` sets it to null).
    ``expected_version``: refused with ``StaleVersion`` unless the task is at
    that version; None applies to the version the decision saw.
    """

    task_id: str
    producer: str
    changes: dict[str, object]
    expected_version: int | None = None
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelTask:
    """Cancel a task that has not ended (``TaskCancelled``)."""

    task_id: str
    producer: str
    reason: str = ""
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RedriveTask:
    """Run a ``failed`` or ``upstream_failed`` task again with a fresh budget of attempts (``TaskRedriven``)."""

    task_id: str
    producer: str
    reason: str = ""
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RedriveDeadLettered:
    """An operator's redrive of tasks read from the dead-letter topic (``taskstream dlq redrive``).

    The caller has not read the tasks' states, so nothing is refused here:
    one ``TaskRedriven`` per distinct id, in the order given, and the fold
    ignores it for a task that is not ``failed`` or ``upstream_failed`` (a
    second redrive, or a task already running again, is harmless).
    """

    task_ids: tuple[str, ...]
    producer: str
    reason: str = ""
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateSchedule:
    """Create a cron schedule (``ScheduleCreated``); ``template`` is the JSON text of the task it creates."""

    schedule_id: str
    producer: str
    cron: str
    timezone: str
    template: str
    name: str = ""
    start_at: datetime | None = None
    end_at: datetime | None = None
    misfire: str = "run_once"
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteSchedule:
    """Stop a schedule (``ScheduleDeleted``); the tasks it created are not touched."""

    schedule_id: str
    producer: str
    reason: str = ""
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PauseSchedule:
    """Stop a schedule's fires until ``ResumeSchedule`` (``SchedulePaused``); fire times meanwhile are not caught up."""

    schedule_id: str
    producer: str
    reason: str = ""
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumeSchedule:
    """Fire a paused schedule again, from its next fire time after now (``ScheduleResumed``)."""

    schedule_id: str
    producer: str
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSchedule:
    """Create the schedule's task now, besides its cron fires (``ScheduleTriggered``); paused ones too."""

    schedule_id: str
    producer: str
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BackfillSchedule:
    """Run a schedule for its cron times in the past range ``start``..``end`` (both inclusive): ``ScheduleBackfilled``.

    ``overlap``: ``skip`` gives each time the id of the schedule's own run of
    that time, so a time it already ran (or an earlier backfill created) is
    not run again; ``allow`` gives backfill runs ids of their own, so they run
    even where the schedule ran, still once per time however often asked.
    ``max_concurrent``: at most that many of this backfill's tasks queued or
    running at once (None: no bound).
    """

    schedule_id: str
    producer: str
    start: datetime
    end: datetime
    overlap: str = "skip"
    max_concurrent: int | None = None
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateTrigger:
    """Create the topic trigger ``name`` (``TriggerCreated``): every record of ``topic`` from ``start`` makes one
    task from ``template`` (JSON text of the task fields). ``filter``, ``start``: JSON text (``streams.domain.
    triggers`` documents the values); the cluster fields name another cluster than ``<p>.events``'s."""

    name: str
    producer: str
    topic: str
    template: str
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
class PauseTrigger:
    """Stop a trigger's tasks until ``ResumeTrigger`` (``TriggerPaused``); its records wait in the topic."""

    name: str
    producer: str
    reason: str = ""
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumeTrigger:
    """Go on with a paused trigger from where it stopped (``TriggerResumed``)."""

    name: str
    producer: str
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteTrigger:
    """Stop a trigger for good (``TriggerDeleted``); the tasks it created are not touched."""

    name: str
    producer: str
    reason: str = ""
    actor: str | None = None


COMMANDS = (SubmitTask, UpdateTask, CancelTask, RedriveTask, RedriveDeadLettered, CreateSchedule, DeleteSchedule,
            PauseSchedule, ResumeSchedule, RunSchedule, BackfillSchedule, CreateTrigger, PauseTrigger, ResumeTrigger,
            DeleteTrigger)
