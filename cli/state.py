"""`taskstream state rebuild|at`: the state of every task folded again from the event log.

``rebuild`` folds the whole of ``<p>.events`` with the processor's pure core
(``streams.rebuild``; which fields may differ from the live state and why
is written there) and prints what it checked and how fast. ``--verify``
compares every task and schedule with the live ``<p>.state`` and prints each
difference (id, field, live value, rebuilt value): exit 0 only when they
agree. ``--write`` republishes the rebuilt states to ``<p>.state`` (stop the
processors first): a processor rebuilds its tables from that topic when it
is assigned a partition, and the API's read model projects it at start, so
a lost or broken table or read model is recovered from the log.

``at TIME`` is time travel: every task (or ``--task ID``) as it was at TIME,
folded from the events with ``occurred_at <= TIME`` in the order the processor applied them
(``domain.fold_log``, the same as ``GET /tasks/{id}?as_of=``).

Errors (broker unreachable, no such topic) are one line on stderr and exit 2;
a verification that found differences exits 1.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime

import click

from taskstream.schemas import (
    BrokerUnavailable,
    ControlState,
    GateState,
    ScheduleState,
    Settings,
    TaskState,
    Topics,
    TriggerState,
)
from taskstream.streams.rebuild import RebuildError, Report, rebuild


def _progress_hooks() -> tuple[Callable[[int], None] | None, Callable[[int], None] | None, Callable[[], None]]:
    """(on_total, progress, close): a click progress bar on stderr when stderr is a terminal, else no-ops."""
    if not sys.stderr.isatty():
        return None, None, lambda: None
    bar: dict = {}

    def on_total(n: int) -> None:
        bar["bar"] = click.progressbar(length=max(n, 1), label="folding events", file=sys.stderr)
        bar["bar"].__enter__()

    def progress(n: int) -> None:
        if "bar" in bar:
            bar["bar"].update(n)

    def close() -> None:
        if "bar" in bar:
            bar["bar"].__exit__(None, None, None)

    return on_total, progress, close


def run_rebuild(settings: Settings, verify: bool, write: bool, as_json: bool, workers: int | None,
                timeout: float) -> int:
    on_total, progress, close = _progress_hooks()
    try:
        report = rebuild(settings, verify=verify, write=write, workers=workers, timeout=timeout,
                         progress=progress, on_total=on_total)
    except RebuildError as exc:
        close()
        click.echo(f"Error: {exc}", err=True)
        return 2
    close()
    for m in report.mismatches:
        click.echo(json.dumps(m.as_json(), default=str) if as_json else m.line())
    _summary(settings, report, verify, write, as_json)
    return 1 if verify and report.mismatches else 0


def _summary(settings: Settings, r: Report, verify: bool, write: bool, as_json: bool) -> None:
    ids = len({m.key for m in r.mismatches})
    if as_json:
        out = {"tasks": r.tasks, "schedules": r.schedules, "events": r.events, "seconds": round(r.seconds, 3),
               "events_per_s": round(r.rate), "events_per_cpu_s": round(r.cpu_rate), "partitions": r.partitions,
               "workers": r.workers, "until": r.until, "undecodable": r.undecodable, "keyless": r.keyless}
        if verify:
            out.update(live=r.live, mismatched_ids=ids, mismatches=len(r.mismatches), ok=not r.mismatches)
        if write:
            out["written"] = r.written
        click.echo(json.dumps(out))
        return
    click.echo(f"checked {r.tasks} tasks and {r.schedules} schedules: folded {r.events} events from "
               f"{r.partitions} partitions (up to {r.until}) in {r.seconds:.2f}s, {r.rate:,.0f} events/s")
    if r.undecodable or r.keyless:
        click.echo(f"skipped {r.undecodable} undecodable and {r.keyless} keyless records "
                   "(the processor dead-letters them)")
    if verify:
        if r.mismatches:
            click.echo(f"MISMATCH: {ids} id(s), {len(r.mismatches)} field(s) differ from the live state "
                       f"({r.live} live states)")
        else:
            click.echo(f"OK: the live state ({r.live} states) equals the state rebuilt from the log")
    if write:
        click.echo(f"wrote {r.written} states to {Topics(settings.prefix).state}")


def run_at(settings: Settings, at: datetime, task_id: str | None, as_json: bool, timeout: float) -> int:
    from taskstream.api.models import rfc3339, task_json

    on_total, progress, close = _progress_hooks()
    try:
        if task_id is not None:
            from taskstream.api.history import read_task_events
            from taskstream.streams.rebuild import fold_events

            state = fold_events(read_task_events(settings, task_id), as_of=at)
            states = {task_id.encode(): state} if state is not None else {}
        else:
            report = rebuild(settings, as_of=at, keep_states=True, timeout=timeout, progress=progress,
                             on_total=on_total)
            states = report.states or {}
    except (RebuildError, BrokerUnavailable) as exc:
        close()
        click.echo(f"Error: {exc}", err=True)
        return 2
    close()
    if task_id is not None and not states:
        click.echo(f"Error: task {task_id} did not exist at {rfc3339(at)}", err=True)
        return 1
    # A concurrency key's slots (GateState), a pause's copies (ControlState) and a topic trigger (TriggerState) are
    # neither a task nor a schedule.
    shown = [s for s in states.values() if not isinstance(s, (GateState, ControlState, TriggerState))]
    ordered = sorted(shown, key=lambda s: (s.created_at, s.task_id))
    if as_json:
        for s in ordered:
            click.echo(json.dumps(task_json(s) if isinstance(s, TaskState) else _schedule_json(s), default=str))
        return 0
    rows = [("ID", "STATUS", "ATTEMPT", "VERSION", "UPDATED", "HANDLER / CRON")]
    for s in ordered:
        if isinstance(s, ScheduleState):
            rows.append((s.schedule_id, f"schedule:{s.status}", "-", str(s.version), rfc3339(s.updated_at), s.cron))
        else:
            rows.append((s.task_id, s.status, str(s.attempt), str(s.version), rfc3339(s.updated_at), s.handler))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        click.echo("  ".join([*(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)), r[-1]]).rstrip())
    return 0


def _schedule_json(s: ScheduleState) -> dict:
    from taskstream.api.models import rfc3339

    return {"id": s.schedule_id, "kind": "schedule", "status": s.status, "cron": s.cron, "timezone": s.timezone,
            "fired": s.fired, "next_fire_at": rfc3339(s.next_fire_at), "version": s.version,
            "updated_at": rfc3339(s.updated_at)}
