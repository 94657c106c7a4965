"""The API's one write path: a request becomes commands, ``streams.domain.decide`` answers them, the events are written.

Every writer of the API (HTTP routes, gRPC) calls one function per
operation here with the app's ``ApiContext`` (``api.context``), so all
share the rules (reads have their own path, ``api.reads``):

- the current state comes from the read model and the command is decided
  by the domain (guards: ``NotFound``, ``StaleVersion``, ``CommandRejected``);
- events are encoded and size-checked before the first byte is produced
  (bad input writes nothing; ``TooLarge`` names the field, 413);
- an operation returns only after the broker acknowledged every record it
  wrote (acks=all). Otherwise it raises ``BrokerUnavailable`` (503) when
  nothing unacknowledged can have been written, or ``WriteOutcomeUnknown``
  (504) when a record may be in the log all the same (its answer never
  came): only a retry with the same ``Idempotency-Key`` tells;
- read-your-writes: the state the domain's fold gives for the written
  events goes into the read model (only over the version the decision
  saw), so a read right after the write shows it; the processor's own
  states, arriving later on ``<p>.state``, replace it;
- ``Idempotency-Key``: the ids of what a request creates derive from the
  key in the caller's scope (``actor``; anonymous callers share one); a
  repeat of the same request answers what exists, a different
  request with the same key is a ``ValidationError`` naming the header; a
  task that would wait for itself or on a cycle through those ids is one
  naming ``depends_on`` (``domain.check_dependencies``).

In a batch, records acknowledged before a produce failure stay written:
retry with the same ``Idempotency-Key`` to complete it without duplicates.

Traces (``schemas.tracing``): a submit takes the caller's trace context
(``trace``: the request's ``traceparent``/``tracestate``); with tracing on, each
task gets a ``submit`` span under it (under a ``submit batch`` or ``submit
workflow`` span for a batch or workflow, so a workflow is one trace) and its
``TaskCreated`` keeps that span's context; with tracing off it keeps the
caller's as given (none: none).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from graphlib import TopologicalSorter
from typing import Any, cast

from taskstream.schemas import (
    BrokerUnavailable,
    ControlState,
    Event,
    NotFound,
    ScheduleBackfilled,
    ScheduleState,
    TaskState,
    TooLarge,
    Topics,
    TriggerState,
    WriteOutcomeUnknown,
    codec,
    cron,
    new_id,
)
from taskstream.schemas.limits import MAX_RECORD_BYTES
from taskstream.schemas.observability import about
from taskstream.schemas.tracing import AttributeValue, Span, TraceContext
from taskstream.streams import domain

from . import idempotency
from .context import ApiContext
from .models import BackfillIn, BatchIn, ScheduleIn, TaskIn, TaskPatch, TriggerIn, WorkflowIn, same_schedule

log = logging.getLogger(__name__)

#: One event must fit in a record of ours (``MAX_RECORD_BYTES``, with room for framing and headers). The request
#: limits keep every event far under it; an event above it is the client's problem (413), not the broker's (503).
MAX_EVENT_BYTES = MAX_RECORD_BYTES - 4096
#: The longest ``reason`` a cancel, re-drive or schedule deletion takes (characters).
MAX_REASON = 1000


def encode(wire: codec.WireFormat, event: Event, field: str = "payload") -> bytes:
    """The record value of ``event``; ``TooLarge`` naming ``field`` if it cannot go into the log."""
    value = wire.encode(event)
    if len(value) > MAX_EVENT_BYTES:
        raise TooLarge(field, len(value), MAX_EVENT_BYTES)
    return value


# -------------------------------------------------------------------- tasks


async def submit_task(ctx: ApiContext, body: TaskIn, *, key: str | None = None, actor: str | None = None,
                      trace: TraceContext | None = None) -> TaskState:
    """``POST /tasks``: the new task (or, for a repeated ``key``, the one it created before), in ``trace``."""
    store = ctx.read_model.store
    extra: dict[str, Any] = {}
    if key is not None:
        task_id = idempotency.derived_id(key, actor)
        rhash = idempotency.request_hash("tasks", body.model_dump(mode="json"))
        existing = store.get(task_id)
        if existing is not None:
            if existing.request_hash != rhash:
                raise idempotency.conflict(key)
            return existing
        domain.check_dependencies([("", task_id, body.depends_on)], store.get)  # random ids cannot form cycles
        extra = {"idempotency_key": key, "request_hash": rhash}
    else:
        task_id = new_id()
    with ctx.tracing.span("submit", trace, _submit_attributes(ctx, task_id, body), kind="server") as carried:
        command = body.to_command(task_id=task_id, producer=ctx.producer_id, settings=ctx.settings, actor=actor,
                                  **extra, **_trace_fields(carried))
        (state,) = await _decide_and_write(ctx, [(None, command, "payload")])
    log.debug("task submitted task_id=%s handler=%s priority=%s", task_id, command.handler, command.priority,
              extra=about(task_id))
    return state


async def submit_batch(ctx: ApiContext, body: BatchIn, *, key: str | None = None,
                       actor: str | None = None, trace: TraceContext | None = None) -> list[TaskState]:
    """``POST /tasks:batch``: every task validated and encoded first (none written if one is bad), then written."""
    store = ctx.read_model.store
    existing: dict[str, TaskState] = {}
    extra: dict[str, Any] = {}
    if key is not None:
        ids = [idempotency.derived_id(f"{key}:{i}", actor) for i in range(len(body.tasks))]
        rhash = idempotency.request_hash("tasks:batch", body.model_dump(mode="json"))
        existing = _existing(store, ids, rhash, key)
        domain.check_dependencies([(f"tasks[{i}].", ids[i], t.depends_on) for i, t in enumerate(body.tasks)], store.get)
        extra = {"idempotency_key": key, "request_hash": rhash}
    else:
        ids = [new_id() for _ in body.tasks]
    with ctx.tracing.span("submit batch", trace, {"taskstream.tasks": len(ids)}, kind="server") as group:
        new = [(i, task_id, task) for i, (task_id, task) in enumerate(zip(ids, body.tasks, strict=True))
               if task_id not in existing]
        spans = _task_spans(ctx, group, [(task_id, task) for _, task_id, task in new])
        with _ending(spans):
            commands = [
                (None, task.to_command(task_id=task_id, producer=ctx.producer_id, settings=ctx.settings, actor=actor,
                                       **extra, **_trace_fields(spans[task_id].context if spans else group)),
                 f"tasks[{i}].payload")
                for i, task_id, task in new
            ]
            written = {s.task_id: s for s in await _decide_and_write(ctx, commands)}
    return [existing.get(task_id) or written[task_id] for task_id in ids]


async def submit_workflow(ctx: ApiContext, body: WorkflowIn, *, key: str | None = None,
                          actor: str | None = None, trace: TraceContext | None = None) -> tuple[str, dict[str, str]]:
    """``POST /workflows``: its id and the task id of each key.

    The graph is checked whole first (``domain.check_workflow``: a
    ``ValidationError`` naming every bad key, dependency or the cycle), so
    nothing of a bad workflow is written. Tasks are written in topological generations, every ack of one before the
    next is produced: a dependent's registration with its upstream (keyed by
    the upstream, DESIGN §5) must find the upstream's ``TaskCreated`` in the log.
    """
    domain.check_workflow([(t.key, t.depends_on) for t in body.tasks])
    store = ctx.read_model.store
    existing: dict[str, TaskState] = {}
    extra: dict[str, Any] = {}
    if key is not None:
        workflow_id = idempotency.derived_id(f"{key}:workflow", actor)
        ids = {t.key: idempotency.derived_id(f"{key}:{t.key}", actor) for t in body.tasks}
        rhash = idempotency.request_hash("workflows", body.model_dump(mode="json"))
        existing = _existing(store, list(ids.values()), rhash, key)
        extra = {"idempotency_key": key, "request_hash": rhash}
    else:
        workflow_id = new_id()
        ids = {t.key: new_id() for t in body.tasks}
    attributes: dict[str, AttributeValue] = {"taskstream.workflow_id": workflow_id, "taskstream.tasks": len(ids)}
    with ctx.tracing.span("submit workflow", trace, attributes, kind="server") as group:
        new = [(i, task) for i, task in enumerate(body.tasks) if ids[task.key] not in existing]
        spans = _task_spans(ctx, group, [(ids[task.key], task) for _, task in new], workflow_id)
        with _ending(spans):
            commands = {
                task.key: (None, task.to_command(
                    task_id=ids[task.key], producer=ctx.producer_id, settings=ctx.settings, actor=actor,
                    depends_on=[ids[d] for d in task.depends_on], upstream_keys={ids[d]: d for d in task.depends_on},
                    key=task.key, workflow_id=workflow_id, **extra,
                    **_trace_fields(spans[ids[task.key]].context if spans else group),
                ), f"tasks[{i}].payload")
                for i, task in new
            }
            decided = _decide_all(ctx.wire, list(commands.values()))  # every event encoded before the first is produced
            by_key = dict(zip(commands, decided, strict=True))
            sorter = TopologicalSorter({t.key: t.depends_on for t in body.tasks})
            sorter.prepare()
            while sorter.is_active():
                ready = sorter.get_ready()
                generation = [by_key[k] for k in ready if k in by_key]
                if generation:
                    await _write_decided(ctx, generation)
                sorter.done(*ready)
    log.debug("workflow submitted workflow_id=%s tasks=%d", workflow_id, len(ids))
    return workflow_id, ids


def _trace_fields(carried: TraceContext | None) -> dict[str, Any]:
    """The ``traceparent``/``tracestate`` fields of a ``SubmitTask`` carrying ``carried`` (none: none)."""
    if carried is None:
        return {}
    return {"traceparent": carried.traceparent, "tracestate": carried.tracestate}


def _submit_attributes(ctx: ApiContext, task_id: str, task: Any, workflow_id: str | None = None) -> dict[str, Any]:
    """The attributes of a task's ``submit`` span (docs/tracing.md); empty when tracing is off."""
    if not ctx.tracing.enabled:
        return {}
    out = {"taskstream.task_id": task_id, "taskstream.handler": task.handler,
           "taskstream.priority": task.priority.value}
    if workflow_id is not None:
        out["taskstream.workflow_id"] = workflow_id
        out["taskstream.task_key"] = task.key
    return out


def _task_spans(ctx: ApiContext, group: TraceContext | None, tasks: list[tuple[str, Any]],
                workflow_id: str | None = None) -> dict[str, Span]:
    """A ``submit`` span per task of a batch or workflow under their ``group`` span, by task id; {} when off."""
    if not ctx.tracing.enabled:
        return {}
    spans = {}
    for task_id, task in tasks:
        span = ctx.tracing.start("submit", group, _submit_attributes(ctx, task_id, task, workflow_id))
        if span is not None:
            spans[task_id] = span
    return spans


@contextlib.contextmanager
def _ending(spans: dict[str, Span]):
    """End ``spans`` when the block ends (failed, with the exception's type, if it raised)."""
    try:
        yield
    except BaseException as exc:
        for span in spans.values():
            span.end(error=type(exc).__name__)
        raise
    for span in spans.values():
        span.end()


def _existing(store, ids: list[str], rhash: str, key: str) -> dict[str, TaskState]:
    """The tasks of ``ids`` already written by an earlier request with this key; 422 if that request differed."""
    found = {}
    for task_id in ids:
        state = store.get(task_id)
        if state is not None:
            if state.request_hash != rhash:
                raise idempotency.conflict(key)
            found[task_id] = state
    return found


async def update_task(ctx: ApiContext, task_id: str, body: TaskPatch, *, expected_version: int | None = None,
                      actor: str | None = None) -> TaskState:
    """``PATCH /tasks/{id}``: change a task that has not started, at ``expected_version`` if given."""
    body.check()
    command = body.to_command(task_id=task_id, producer=ctx.producer_id, expected_version=expected_version,
                              actor=actor)
    return (await _decide_and_write(ctx, [(_task(ctx, task_id), command, "payload")]))[0]


async def cancel_task(ctx: ApiContext, task_id: str, *, reason: str = "", actor: str | None = None) -> TaskState:
    """``DELETE /tasks/{id}``: cancel a task that has not ended."""
    command = domain.CancelTask(task_id=task_id, producer=ctx.producer_id, reason=reason, actor=actor)
    return (await _decide_and_write(ctx, [(_task(ctx, task_id), command, "reason")]))[0]


async def redrive_task(ctx: ApiContext, task_id: str, *, reason: str = "", actor: str | None = None) -> TaskState:
    """``POST /tasks/{id}/retry``: run a failed or upstream_failed task again with a fresh budget."""
    command = domain.RedriveTask(task_id=task_id, producer=ctx.producer_id, reason=reason, actor=actor)
    state = (await _decide_and_write(ctx, [(_task(ctx, task_id), command, "reason")]))[0]
    log.info("task re-driven task_id=%s attempt=%d", task_id, state.attempt, extra=about(task_id, state.attempt))
    return state


def _task(ctx: ApiContext, task_id: str) -> TaskState:
    state = ctx.read_model.store.get(task_id)
    if state is None:
        raise NotFound(f"task {task_id} not found")
    return state


# ---------------------------------------------------------------- schedules


async def create_schedule(ctx: ApiContext, body: ScheduleIn, *, key: str | None = None,
                          actor: str | None = None) -> ScheduleState:
    """``POST /schedules``: the new schedule, or the one ``key`` made. ``ValidationError`` naming ``cron``,
    ``timezone`` or ``end_at`` for a schedule that cannot fire (or fires more often than the settings allow)."""
    body.check(datetime.now(UTC))
    cron.check_sub_minute(body.cron, allowed=ctx.settings.allow_second_cron)
    schedules = ctx.read_model.schedules
    schedule_id = idempotency.derived_id(f"{key}:schedule", actor) if key is not None else new_id()
    command = body.to_command(schedule_id=schedule_id, producer=ctx.producer_id, settings=ctx.settings, actor=actor)
    if key is not None:
        existing = schedules.get(schedule_id)
        if existing is not None:
            if not same_schedule(existing, command):
                raise idempotency.conflict(key)
            return existing
    (state,) = await _decide_and_write(ctx, [(None, command, "task.payload")])
    log.info("schedule created schedule_id=%s cron=%r timezone=%s", schedule_id, command.cron, command.timezone)
    return state


async def delete_schedule(ctx: ApiContext, schedule_id: str, *, reason: str = "",
                          actor: str | None = None) -> ScheduleState:
    """``DELETE /schedules/{id}``: stop a schedule (the tasks it created are not touched)."""
    state = ctx.read_model.schedules.get(schedule_id)
    if state is None:
        raise NotFound(f"schedule {schedule_id} not found")
    command = domain.DeleteSchedule(schedule_id=schedule_id, producer=ctx.producer_id, reason=reason, actor=actor)
    (after,) = await _decide_and_write(ctx, [(state, command, "reason")])
    log.info("schedule deleted schedule_id=%s", schedule_id)
    return after


async def change_schedule(ctx: ApiContext, schedule_id: str, action: str, *, reason: str = "",
                          actor: str | None = None) -> ScheduleState:
    """``POST /schedules/{id}:pause|:resume|:run``: the decider's ``PauseSchedule``, ``ResumeSchedule`` or
    ``RunSchedule`` (the new task's id is the schedule's ``last_task_id`` after a run)."""
    state = ctx.read_model.schedules.get(schedule_id)
    if state is None:
        raise NotFound(f"schedule {schedule_id} not found")
    command: domain.PauseSchedule | domain.ResumeSchedule | domain.RunSchedule
    if action == "pause":
        command = domain.PauseSchedule(schedule_id=schedule_id, producer=ctx.producer_id, reason=reason, actor=actor)
    elif action == "resume":
        command = domain.ResumeSchedule(schedule_id=schedule_id, producer=ctx.producer_id, actor=actor)
    else:
        command = domain.RunSchedule(schedule_id=schedule_id, producer=ctx.producer_id, actor=actor)
    (after,) = await _decide_and_write(ctx, [(state, command, "reason")])
    log.info("schedule %s schedule_id=%s", action, schedule_id)
    return after


async def backfill_schedule(ctx: ApiContext, schedule_id: str, body: BackfillIn, *,
                            actor: str | None = None) -> tuple[ScheduleBackfilled, list[tuple[datetime, str]]]:
    """``POST /schedules/{id}:backfill``: the recorded request and each cron time's task id, oldest first.

    The processor creates the tasks when it folds the ``ScheduleBackfilled``;
    the ids are the decider's (``domain.backfill_task_id``), so the answer
    names them before they exist, and a repeat names the same ones.
    """
    state = ctx.read_model.schedules.get(schedule_id)
    if state is None:
        raise NotFound(f"schedule {schedule_id} not found")
    command = body.to_command(schedule_id=schedule_id, producer=ctx.producer_id, actor=actor)
    decided = _decide_all(ctx.wire, [(state, command, "start")])
    event = cast(ScheduleBackfilled, decided[0][1][0][0])  # decide answers BackfillSchedule with this one event
    await _write_decided(ctx, decided)
    times = domain.backfill_times(state, event.start, event.end, limit=domain.MAX_BACKFILL)
    log.info("schedule backfilled schedule_id=%s times=%d overlap=%s", schedule_id, len(times), event.overlap)
    return event, [(t, domain.backfill_task_id(schedule_id, t, event.overlap)) for t in times]


async def pause_target(ctx: ApiContext, kind: str, name: str, action: str, *, reason: str = "",
                       actor: str | None = None) -> dict[str, Any]:
    """``POST /handlers/{h}:pause|:resume`` and ``/workflows/{id}:pause|:resume``: the decider's ``PauseTarget``
    or ``ResumeTarget``, one copy per partition of ``<p>.events`` written to that partition; the pause as
    ``pauses`` shows it (the copies the API expects folded into the read model)."""
    target = domain.target(kind, name)
    partitions = await _partitions(ctx)
    command: domain.PauseTarget | domain.ResumeTarget
    if action == "pause":
        command = domain.PauseTarget(target=target, partitions=partitions, producer=ctx.producer_id, reason=reason,
                                     actor=actor)
    else:
        command = domain.ResumeTarget(target=target, partitions=partitions, producer=ctx.producer_id, actor=actor)
    await _write_controls(ctx, command)
    log.info("%s %s target=%s partitions=%d", kind, action, target, partitions)
    return _pause_json(kind, name, [c for c in list(ctx.read_model.controls.values()) if c.target == target])


async def limit_handler(ctx: ApiContext, handler: str, limit: int | None, *, rate: int | None = None,
                        per_s: float | None = None, actor: str | None = None) -> dict[str, Any]:
    """``PUT|DELETE /limits/handlers/{h}``: the decider's ``LimitTarget``, one copy per partition (no limit
    and no rate: DELETE)."""
    target = domain.target("handler", handler)
    command = domain.LimitTarget(target=target, partitions=await _partitions(ctx), producer=ctx.producer_id,
                                 limit=limit, rate=rate, per_s=per_s, actor=actor)
    await _write_controls(ctx, command)
    log.info("handler limit target=%s limit=%s rate=%s per_s=%s", target, limit, rate, per_s)
    return _limit_json(handler, domain.HandlerLimit(limit, rate, float(per_s) if per_s is not None else None))


def handler_limits(ctx: ApiContext) -> list[dict[str, Any]]:
    """Every handler with a limit or a rate (as its copies show it; the latest copy if they differ while a
    change is on its way)."""
    found: dict[str, ControlState] = {}
    for c in list(ctx.read_model.controls.values()):
        if c.target.startswith("handler:") and domain.HandlerLimit.of(c) is not None:
            if c.target not in found or c.updated_at > found[c.target].updated_at:
                found[c.target] = c
    return [_limit_json(t.partition(":")[2], domain.HandlerLimit.of(c)) for t, c in sorted(found.items())]


def _limit_json(handler: str, limit: domain.HandlerLimit | None) -> dict[str, Any]:
    return {"kind": "handler", "name": handler, "limit": limit.limit if limit else None,
            "rate": limit.rate if limit else None, "per_s": limit.per_s if limit else None}


async def _partitions(ctx: ApiContext) -> int:
    events_topic = Topics(ctx.settings.prefix).events
    partitions = (await asyncio.to_thread(ctx.probe.topic_partitions)).get(events_topic, 0)
    if partitions < 1:
        raise BrokerUnavailable(f"topic {events_topic} has no partitions the API can see")
    return partitions


async def _write_controls(ctx: ApiContext, command: object) -> None:
    """Decide ``command`` and write each copy to its own partition of ``<p>.events``; then the read model."""
    events_topic = Topics(ctx.settings.prefix).events
    events = domain.decide(None, command, datetime.now(UTC))
    futures = [ctx.producer.send(events_topic, key=e.aggregate_id.encode(), value=encode(ctx.wire, e, "reason"),
                                 headers=codec.headers(e), partition=getattr(e, "partition", None)) for e in events]
    results = await asyncio.gather(*futures, return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise failed[0] if isinstance(failed[0], BrokerUnavailable) else BrokerUnavailable(str(failed[0]))
    controls = ctx.read_model.controls
    for e in events:
        after = domain.evolve(controls.get(e.aggregate_id), e)
        if isinstance(after, ControlState):
            controls[after.control_id] = after


def pauses(ctx: ApiContext, kind: str | None = None) -> list[dict[str, Any]]:
    """Every paused target (any partition's copy paused), newest pause first."""
    by_target: dict[str, list[ControlState]] = {}
    for c in list(ctx.read_model.controls.values()):
        by_target.setdefault(c.target, []).append(c)
    out = []
    for target, copies in by_target.items():
        k, _, name = target.partition(":")
        if any(c.paused for c in copies) and (kind is None or k == kind):
            out.append(_pause_json(k, name, copies))
    return sorted(out, key=lambda p: p["paused_at"] or "", reverse=True)


def _pause_json(kind: str, name: str, copies: list[ControlState]) -> dict[str, Any]:
    paused = [c for c in copies if c.paused]
    latest = max(paused, key=lambda c: c.updated_at, default=None)
    return {"kind": kind, "name": name, "paused": bool(paused),
            "paused_at": latest.paused_at.isoformat() if latest and latest.paused_at else None,
            "paused_by": latest.paused_by if latest else None, "reason": latest.reason if latest else "",
            "partitions_paused": len(paused)}


# ------------------------------------------------------------------ writing

#: (state the command was decided on, command, request field its size is charged to)
Decision = tuple[Any, Any, str]


def _decide_all(wire: codec.WireFormat, decisions: Sequence[Decision]) -> list[tuple[Any, list[tuple[Event, bytes]]]]:
    now = datetime.now(UTC)
    out = []
    for state, command, field in decisions:
        events = domain.decide(state, command, now)
        out.append((state, [(event, encode(wire, event, field)) for event in events]))
    return out


async def _decide_and_write(ctx: ApiContext, decisions: Sequence[Decision]) -> list[Any]:
    return await _write_decided(ctx, _decide_all(ctx.wire, decisions))


async def _write_decided(ctx: ApiContext, decided: Sequence[tuple[Any, list[tuple[Event, bytes]]]]) -> list[Any]:
    """Write every decision's records, then put each expected state into the read model; the states, in order.

    A decision whose records were all acknowledged goes into the read model
    even when another record failed (then the failure is raised after): a
    retry with the same ``Idempotency-Key`` finds it and does not write it twice.
    The failure raised is a ``WriteOutcomeUnknown`` if any record's was.
    """
    records = [record for _, rs in decided for record in rs]
    failures = iter(await write(ctx, records))
    states, failure = [], None
    for state, rs in decided:
        failed = [f for f in (next(failures) for _ in rs) if f is not None]
        if failed:
            unknown = [f for f in failed if isinstance(f, WriteOutcomeUnknown)]
            if failure is None or (unknown and not isinstance(failure, WriteOutcomeUnknown)):
                failure = (unknown or failed)[0]
            continue
        ctx.metrics.submitted_tasks(e for e, _ in rs)  # counts the TaskCreated among them
        states.append(_expect(ctx, state, [e for e, _ in rs]))
    if failure is not None:
        if isinstance(failure, BrokerUnavailable):
            raise failure
        raise BrokerUnavailable(str(failure)) from failure
    return states


def _expect(ctx: ApiContext, before: Any, events: list[Event]) -> Any:
    """Read-your-writes: the domain's fold of the written events goes into the read model unless it holds newer.

    The answer is what a create made (its first version, even when the
    processor's next one was read back first), and for a change of an
    existing task or schedule the read model's state: the fold, or a newer
    state the processor published meanwhile.
    """
    after = domain.fold(events, before)
    if after is None or after is before:
        return before
    if isinstance(after, TriggerState):
        return ctx.read_model.keep_trigger(after)
    if isinstance(after, ScheduleState):
        schedules = ctx.read_model.schedules
        if before is None:
            schedules.apply(after, only_if_absent=True)
            return after
        schedules.apply(after, only_over_version=before.version)
        return schedules.get(after.schedule_id) or after
    tasks = ctx.read_model.store
    tasks.apply(after, only_over_version=None if before is None else before.version)
    if before is None:
        return after
    return tasks.get(after.task_id) or after


async def write(ctx: ApiContext, records: Sequence[tuple[Event, bytes]]) -> list[BaseException | None]:
    """Produce every record to ``<p>.events`` keyed by its task and wait for all acks; each record's failure or None.

    Records are produced together (the producer pipelines them) and awaited
    together. Once the producer refuses one (``BrokerUnavailable``), it and
    every later record count as failed with that error, unproduced.
    """
    topic = Topics(ctx.settings.prefix).events
    producer = ctx.producer
    futures: list[asyncio.Future] = []
    refused: BaseException | None = None
    for event, value in records:
        try:
            key = event.aggregate_id.encode()
            futures.append(producer.send(topic, key=key, value=value, headers=codec.headers(event)))
        except BrokerUnavailable as exc:
            refused = exc
            break
    results = await asyncio.gather(*futures, return_exceptions=True)
    out: list[BaseException | None] = [r if isinstance(r, BaseException) else None for r in results]
    return out + [refused] * (len(records) - len(out))


# ---------------------------------------------------------------- triggers


async def create_trigger(ctx: ApiContext, body: TriggerIn, *, actor: str | None = None) -> TriggerState:
    """``POST /triggers``: the new trigger. ``CommandRejected`` (409) if the name was ever taken;
    ``ValidationError`` (422) naming ``topic``, ``filter``, ``start``, ``format``, ``key_as`` or a cluster field."""
    command = body.to_command(producer=ctx.producer_id, settings=ctx.settings, actor=actor)
    (state,) = await _decide_and_write(ctx, [(ctx.read_model.triggers.get(body.name), command, "task")])
    log.info("trigger created name=%s topic=%s", body.name, body.topic)
    return state


async def change_trigger(ctx: ApiContext, name: str, action: str, *, reason: str = "",
                         actor: str | None = None) -> TriggerState:
    """``POST /triggers/{name}:pause|:resume`` and ``DELETE /triggers/{name}`` (``action`` ``delete``): the
    decider's ``PauseTrigger``, ``ResumeTrigger`` or ``DeleteTrigger``."""
    state = ctx.read_model.triggers.get(name)
    if state is None:
        raise NotFound(f"trigger {name} not found")
    command: domain.PauseTrigger | domain.ResumeTrigger | domain.DeleteTrigger
    if action == "pause":
        command = domain.PauseTrigger(name=name, producer=ctx.producer_id, reason=reason, actor=actor)
    elif action == "resume":
        command = domain.ResumeTrigger(name=name, producer=ctx.producer_id, actor=actor)
    else:
        command = domain.DeleteTrigger(name=name, producer=ctx.producer_id, reason=reason, actor=actor)
    (after,) = await _decide_and_write(ctx, [(state, command, "reason")])
    log.info("trigger %s name=%s", action, name)
    return after
