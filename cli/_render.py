"""How the task commands show tasks, events and schedules: rich tables with colour, or JSON for scripts.

Colour follows the terminal: none when output is piped or ``NO_COLOR`` is
set (rich decides). Piped tables are drawn 200 columns wide so ids are
never cut.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from taskstream.client import Schedule, Task, TaskEvent, WorkflowRun

STATUS_STYLE = {
    "pending": "white", "scheduled": "magenta", "queued": "blue", "running": "cyan",
    "succeeded": "green", "failed": "bold red", "cancelled": "yellow", "upstream_failed": "red",
    "active": "green", "ended": "dim", "deleted": "yellow",
}
#: Workflow statuses share the task statuses' colours (running, succeeded, failed, cancelled).
PRIORITY_STYLE = {"high": "bold", "medium": "", "low": "dim"}
EVENT_STYLE = {"TaskSucceeded": "green", "TaskFailed": "red", "TaskDeadLettered": "bold red",
               "TaskCancelled": "yellow", "LeaseExpired": "red", "TaskRetryScheduled": "magenta",
               "TaskRedriven": "cyan"}


def console(stderr: bool = False) -> Console:
    c = Console(stderr=stderr, highlight=False)
    if not c.is_terminal:
        c = Console(stderr=stderr, highlight=False, width=200)
    return c


def show(renderable: Any, out: Console | None = None) -> None:
    """Print a table; piped, without the padding rich leaves at the ends of lines."""
    out = out or console()
    if out.is_terminal:
        out.print(renderable)
        return
    with out.capture() as captured:
        out.print(renderable)
    out.file.write("\n".join(line.rstrip() for line in captured.get().splitlines()) + "\n")
    out.file.flush()


def status(value: str) -> Text:
    return Text(value, style=STATUS_STYLE.get(value, ""))


def when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else ""


def compact(value: Any, limit: int = 60) -> str:
    """A JSON value on one line, cut to ``limit`` characters."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def json_line(doc: Any) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def tasks_table(tasks: list[Task], title: str | None = None) -> Table:
    table = Table(title=title, header_style="bold", box=None, pad_edge=False)
    for name in ("ID", "STATUS", "PRIORITY", "HANDLER", "ATTEMPT", "CREATED (UTC)", "LABELS", "NAME"):
        table.add_column(name, no_wrap=name in ("ID", "CREATED (UTC)"))
    for t in tasks:
        table.add_row(t.id, status(t.status), Text(t.priority, style=PRIORITY_STYLE.get(t.priority, "")), t.handler,
                      f"{t.attempt}/{t.max_attempts}", when(t.created_at),
                      ",".join(f"{k}={v}" for k, v in sorted(t.labels.items())), t.name)
    return table


def task_table(t: Task) -> Table:
    """Every field of one task, one a row; JSON values pretty-printed."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    duration = ""
    if t.started_at and t.finished_at:
        duration = f"  ({(t.finished_at - t.started_at).total_seconds():.3f}s)"
    rows: list[tuple[str, Any]] = [
        ("id", t.id), ("name", t.name), ("handler", t.handler), ("status", status(t.status)),
        ("priority", t.priority), ("attempt", f"{t.attempt} of {t.max_attempts}"), ("version", str(t.version)),
        ("labels", ", ".join(f"{k}={v}" for k, v in sorted(t.labels.items()))),
        ("depends_on", ", ".join(t.depends_on)), ("workflow", t.workflow_id or ""),
        ("run_at", when(t.run_at)), ("retry_at", when(t.retry_at)), ("created_at", when(t.created_at)),
        ("updated_at", when(t.updated_at)), ("started_at", when(t.started_at)),
        ("finished_at", when(t.finished_at) + duration), ("schedule", t.schedule_id or ""),
        ("payload", _pretty(t.payload)), ("result", _pretty(t.result)), ("checkpoint", _pretty(t.checkpoint)),
        ("error", Text(t.error or "", style="red")), ("error_type", t.error_type or ""),
        ("traceback", Text(t.traceback or "", style="dim")),
    ]
    for name, value in rows:
        if value not in ("", None) and not (isinstance(value, Text) and not value.plain):
            table.add_row(name, value if isinstance(value, Text) else Text(str(value)))
    return table


def _pretty(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)


#: Fields of an event worth a glance in its DETAIL column.
_TELLING = ("error", "reason", "result", "priority", "delay_s", "not_before", "due_at", "upstream", "outcome",
            "dependent", "handler", "permanent")


def event_row(e: TaskEvent) -> list[Any]:
    detail = "  ".join(f"{k}={compact(e.fields[k], 60)}" for k in _TELLING
                       if e.fields.get(k) not in (None, "", False, [], {}))
    return [when(e.occurred_at), Text(e.type, style=EVENT_STYLE.get(e.type, "")),
            "" if e.attempt is None else str(e.attempt), e.producer, detail]


def events_table(events: list[TaskEvent], header: bool = True) -> Table:
    table = Table(show_header=header, header_style="bold", box=None, pad_edge=False)
    for name, width in (("OCCURRED (UTC)", 19), ("TYPE", 22), ("ATTEMPT", 7), ("PRODUCER", 28), ("DETAIL", None)):
        table.add_column(name, no_wrap=width is not None, min_width=width, max_width=width, overflow="fold")
    for e in events:
        table.add_row(*event_row(e))
    return table


def schedules_table(schedules: list[Schedule]) -> Table:
    table = Table(header_style="bold", box=None, pad_edge=False)
    for name in ("ID", "STATUS", "CRON", "TIMEZONE", "HANDLER", "NEXT FIRE (UTC)", "FIRED", "LAST TASK", "NAME"):
        table.add_column(name, no_wrap=name in ("ID", "NEXT FIRE (UTC)"))
    for s in schedules:
        table.add_row(s.id, status(s.status), s.cron, s.timezone, str(s.task.get("handler", "")),
                      when(s.next_fire_at), str(s.fired), s.last_task_id or "", s.name)
    return table


def _seconds(start: datetime | None, end: datetime | None) -> str:
    return f"{(end - start).total_seconds():.3f}s" if start and end else ""


def _counts(counts: dict[str, int]) -> Text:
    text = Text()
    for i, (name, n) in enumerate(sorted(counts.items())):
        if i:
            text.append("  ")
        text.append(f"{n} {name}", style=STATUS_STYLE.get(name, ""))
    return text


def workflows_table(workflows: list[WorkflowRun], title: str | None = None) -> Table:
    table = Table(title=title, header_style="bold", box=None, pad_edge=False)
    for name in ("ID", "STATUS", "TASKS", "CREATED (UTC)", "DURATION", "BY STATUS"):
        table.add_column(name, no_wrap=name in ("ID", "CREATED (UTC)"))
    for w in workflows:
        table.add_row(w.id, status(w.status), str(w.task_count), when(w.created_at),
                      _seconds(w.started_at, w.finished_at), _counts(w.counts))
    return table


def workflow_view(w: WorkflowRun, title: str | None = None) -> Table:
    """One workflow: its summary, then its tasks in topological order with their times and errors."""
    outer = Table.grid(padding=(0, 0))
    head = Table(show_header=False, box=None, pad_edge=False, title=title, title_justify="left")
    head.add_column(style="bold", no_wrap=True)
    head.add_column(overflow="fold")
    for name, value in (("workflow", w.id), ("status", status(w.status)), ("tasks", _counts(w.counts)),
                        ("created_at", when(w.created_at)), ("started_at", when(w.started_at)),
                        ("finished_at", when(w.finished_at) + (f"  ({_seconds(w.started_at, w.finished_at)})"
                                                               if w.finished_at else ""))):
        if value not in ("", None):
            head.add_row(name, value if isinstance(value, Text) else Text(str(value)))
    outer.add_row(head)
    keys = {t.id: t.key or t.id for t in w.tasks}
    tasks = Table(header_style="bold", box=None, pad_edge=False)
    for name in ("KEY", "STATUS", "HANDLER", "ATTEMPT", "AFTER", "STARTED (UTC)", "RAN", "TASK ID", "ERROR"):
        tasks.add_column(name, no_wrap=name in ("KEY", "TASK ID", "STARTED (UTC)"),
                         overflow="fold" if name == "ERROR" else "ellipsis")
    for t in w.tasks:
        tasks.add_row(t.key or "", status(t.status), t.handler, f"{t.attempt}/{t.max_attempts}",
                      ",".join(keys.get(d, d) for d in t.depends_on), when(t.started_at),
                      _seconds(t.started_at, t.finished_at), t.id, Text(compact(t.error, 80), style="red"))
    outer.add_row("")
    outer.add_row(tasks)
    if w.truncated:
        outer.add_row(Text(f"(only the first {len(w.tasks)} of {w.task_count} tasks are shown)", style="dim"))
    return outer
