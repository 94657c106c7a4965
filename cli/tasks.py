"""The client commands `tasks`, `workflows` and `schedules`: the HTTP API through ``taskstream.client``.

They talk to a running API (``--url``, default ``$TASKSTREAM_URL``, else
``taskstream dev``'s ``http://127.0.0.1:8080``) with the credentials of
``$TASKSTREAM_TOKEN`` or ``$TASKSTREAM_API_KEY``, never to Kafka. Tables
for people (rich, coloured on a terminal), ``--json`` for scripts. A
refusal of the API is one line on stderr (its title, detail and field)
and exit 1; a usage error exits 2; ``tasks submit --wait`` exits 1 when
the task ends other than ``succeeded``.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

PRIORITIES = ("high", "medium", "low")
STATUSES = ("pending", "scheduled", "queued", "running", "succeeded", "failed", "cancelled", "upstream_failed")


def _url_option(f: Callable) -> Callable:
    return click.option("--url", envvar="TASKSTREAM_URL", default=None, show_envvar=True,
                        help="the API's base URL  [default: http://127.0.0.1:8080, where `taskstream dev` serves]")(f)


def _json_option(f: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="JSON for scripts instead of the table")(f)


@contextmanager
def _client(url: str | None) -> Iterator[Any]:
    """A ``Client`` whose errors end the command as one line on stderr (exit 1)."""
    from taskstream.client import Client, TaskstreamError

    try:
        with Client(url) as client:
            yield client
    except TaskstreamError as exc:
        raise click.ClickException(_one_line(exc)) from None


def _acts_on(group: click.Group, name: str, argument: str, emit: Callable[[Any, bool], None], *,
             metavar: str | None = None, reason: bool = False) -> Callable[[Callable[..., Any]], click.Command]:
    """The command ``name`` of ``group`` that asks the API one thing about ARGUMENT and shows the answer.

    The decorated function takes the client, the argument (and ``reason`` with ``reason=True``, the
    ``--reason`` option) and returns the API's answer, which ``emit(answer, as_json)`` prints; its docstring
    is the command's help. The command also takes ``--url`` and ``--json``.
    """

    def make(ask: Callable[..., Any]) -> click.Command:
        @functools.wraps(ask)
        def run(url: str | None, as_json: bool, **params: Any) -> None:
            with _client(url) as client:
                answer = ask(client, **params)
            emit(answer, as_json)

        command = _json_option(run)
        command = _url_option(command)
        if reason:
            command = click.option("--reason", default="")(command)
        command = click.argument(argument, metavar=metavar)(command)
        return group.command(name)(command)

    return make


def _one_line(exc: Any) -> str:
    from taskstream.client import ValidationFailed

    text = exc.summary()
    if isinstance(exc, ValidationFailed) and exc.field and exc.field not in text:
        text += f" (field {exc.field})"
    return " ".join(text.split())


# ---------------------------------------------------------------- parsing


def _payload(ctx, param, value: str | None) -> Any:
    """``--payload`` JSON text, ``@file`` (a JSON file) or ``@-`` (stdin)."""
    if value is None:
        return _unset()
    text = value
    if value.startswith("@"):
        source = value[1:]
        try:
            text = sys.stdin.read() if source == "-" else Path(source).read_text()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {source}: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from None


def _unset() -> Any:
    from taskstream.client import UNSET

    return UNSET


def _labels(ctx, param, values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for text in values:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{text!r} is not key=value")
        out[key] = value
    return out


_RELATIVE = re.compile(r"^([+-])(\d+(?:\.\d+)?)([smhd])$")


def _when(ctx, param, value: str | None) -> str | None:
    """RFC 3339 as is (the API checks it), ``now``, or ``+90s``, ``+10m``, ``+2h``, ``-1d`` from now."""
    if value is None:
        return None
    if value.strip() == "now":
        return datetime.now(UTC).isoformat()
    m = _RELATIVE.match(value.strip())
    if m is None:
        return value
    seconds = float(m.group(2)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(3)]
    return (datetime.now(UTC) + timedelta(seconds=-seconds if m.group(1) == "-" else seconds)).isoformat()


def _retry(max_attempts, initial, multiplier, most, jitter) -> dict[str, Any] | None:
    backoff = {k: v for k, v in (("initial_s", initial), ("multiplier", multiplier), ("max_s", most),
                                 ("jitter", jitter)) if v is not None}
    retry: dict[str, Any] = {}
    if max_attempts is not None:
        retry["max_attempts"] = max_attempts
    if backoff:
        retry["backoff"] = backoff
    return retry or None


# ------------------------------------------------------------------ output


def _emit_task(task: Any, as_json: bool) -> None:
    from ._render import show, task_table

    if as_json:
        click.echo(json.dumps(task.raw, ensure_ascii=False))
    else:
        show(task_table(task))


def _wait(client: Any, task: Any, timeout: float | None, as_json: bool) -> int:
    """Follow ``task`` with a live status line on stderr until it ends; its table (or JSON); 0 if it succeeded."""
    from ._render import console

    err = console(stderr=True)
    started = time.monotonic()

    def line(t: Any) -> str:
        style = {"succeeded": "green", "failed": "red", "running": "cyan"}.get(t.status, "magenta")
        return (f"task {t.id}: [{style}]{t.status}[/] (attempt {t.attempt}/{t.max_attempts}, "
                f"{time.monotonic() - started:.1f}s)")

    with err.status(line(task)) as spinner:
        final = client.wait(task.id, timeout=timeout, on_update=lambda t: spinner.update(line(t)))
    _emit_task(final, as_json)
    if not as_json:
        mark = "[green]✔[/]" if final.succeeded else "[red]✘[/]"
        err.print(f"{mark} task {final.id} {final.status} after {time.monotonic() - started:.1f}s")
    return 0 if final.succeeded else 1


# ------------------------------------------------------------------- tasks


@click.group()
def tasks() -> None:
    """Submit, show, list, cancel and retry tasks through the HTTP API."""


@tasks.command("submit")
@click.argument("handler")
@click.option("--payload", callback=_payload, help="the task's input: JSON, @FILE of JSON, or @- for stdin")
@click.option("--priority", type=click.Choice(PRIORITIES), default=None, help="[default: medium]")
@click.option("--depends-on", "depends_on", multiple=True, metavar="ID",
              help="a task that must succeed first (repeatable)")
@click.option("--run-at", callback=_when, default=None,
              help="not before this time: RFC 3339 (2026-12-24T18:00:00Z) or from now (+90s, +10m, +2h, +1d)")
@click.option("--max-attempts", type=int, default=None, help="attempts before the task fails  [default: the API's, 3]")
@click.option("--backoff-initial", type=float, default=None, help="seconds before the 2nd attempt  [API default 1]")
@click.option("--backoff-multiplier", type=float, default=None, help="growth of the wait per attempt  [API default 2]")
@click.option("--backoff-max", type=float, default=None, help="longest wait between attempts, s  [API default 300]")
@click.option("--backoff-jitter", type=float, default=None,
              help="up to this share of a wait is cut, 0-1  [API default 0.1]")
@click.option("--timeout-s", type=float, default=None, help="an attempt running longer is cancelled and fails")
@click.option("--label", "labels", multiple=True, callback=_labels, metavar="KEY=VALUE", help="repeatable")
@click.option("--name", default=None, help="a name for people")
@click.option("--idempotency-key", default=None, help="a repeat with this key answers the same task, writes nothing")
@click.option("--wait", "wait", is_flag=True,
              help="show a live status line until the task ends; exit 1 unless it succeeded")
@click.option("--wait-timeout", type=float, default=None, help="with --wait: give up after this many seconds (exit 1)")
@_url_option
@_json_option
def tasks_submit(handler, payload, priority, depends_on, run_at, max_attempts, backoff_initial, backoff_multiplier,
                 backoff_max, backoff_jitter, timeout_s, labels, name, idempotency_key, wait, wait_timeout, url,
                 as_json) -> None:
    """Submit a task for HANDLER; print it (its id first)."""
    retry = _retry(max_attempts, backoff_initial, backoff_multiplier, backoff_max, backoff_jitter)
    with _client(url) as client:
        task = client.submit(handler, payload, priority=priority, depends_on=depends_on, run_at=run_at,
                             timeout_s=timeout_s, retry=retry, labels=labels, name=name,
                             idempotency_key=idempotency_key).task
        if wait:
            sys.exit(_wait(client, task, wait_timeout, as_json))
    _emit_task(task, as_json)


@tasks.command("get")
@click.argument("task_id", metavar="ID")
@click.option("--as-of", default=None, help="the task as it was at this time (RFC 3339), folded from the log")
@_url_option
@_json_option
def tasks_get(task_id, as_of, url, as_json) -> None:
    """Show every field of a task."""
    with _client(url) as client:
        task = client.get(task_id, as_of=as_of)
    _emit_task(task, as_json)


@tasks.command("list")
@click.option("--status", type=click.Choice(STATUSES), default=None)
@click.option("--priority", type=click.Choice(PRIORITIES), default=None)
@click.option("--handler", default=None)
@click.option("--label", "labels", multiple=True, callback=_labels, metavar="KEY=VALUE",
              help="repeatable; all must match")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True, help="newest N tasks")
@click.option("--watch", is_flag=True, help="redraw the table every --interval seconds until Ctrl-C")
@click.option("--interval", type=click.FloatRange(min=0.2), default=1.0, show_default=True)
@_url_option
@_json_option
def tasks_list(status, priority, handler, labels, limit, watch, interval, url, as_json) -> None:
    """List tasks, newest first (--json: one task a line)."""
    from itertools import islice

    from ._render import console, show, tasks_table

    filters = dict(status=status, priority=priority, handler=handler, labels=labels)

    def newest(client) -> list:
        return list(islice(client.list(**filters, page_size=min(limit, 1000)), limit))

    with _client(url) as client:
        if watch and not as_json:
            from rich.live import Live

            def view():
                found = newest(client)
                return tasks_table(found, title=f"{len(found)} newest tasks at {datetime.now(UTC):%H:%M:%S} UTC")

            out = console()
            try:
                if not out.is_terminal:  # piped: a table every interval
                    while True:
                        show(view(), out)
                        time.sleep(interval)
                with Live(view(), console=out, auto_refresh=False) as live:
                    while True:
                        time.sleep(interval)
                        live.update(view(), refresh=True)
            except KeyboardInterrupt:
                return
        found = newest(client)
    if as_json:
        for t in found:
            click.echo(json.dumps(t.raw, ensure_ascii=False))
    else:
        show(tasks_table(found))


@tasks.command("cancel")
@click.argument("task_id", metavar="ID")
@click.option("--reason", default="", help="recorded in the TaskCancelled event")
@_url_option
@_json_option
def tasks_cancel(task_id, reason, url, as_json) -> None:
    """Cancel a task that has not ended (a running attempt is told to stop)."""
    with _client(url) as client:
        task = client.cancel(task_id, reason=reason)
    _done(task, "cancelled", as_json)


@tasks.command("retry")
@click.argument("task_id", metavar="ID")
@click.option("--reason", default="", help="recorded in the TaskRedriven event")
@_url_option
@_json_option
def tasks_retry(task_id, reason, url, as_json) -> None:
    """Re-drive a failed or upstream_failed task with a fresh budget of attempts."""
    with _client(url) as client:
        task = client.retry(task_id, reason=reason)
    _done(task, "re-driven", as_json)


def _done(task: Any, what: str, as_json: bool) -> None:
    from ._render import console, status

    if as_json:
        click.echo(json.dumps(task.raw, ensure_ascii=False))
        return
    line = status(task.status)
    line.stylize("bold")
    console().print(f"{what} {task.id}: now ", line, f" (version {task.version})", sep="")


@tasks.command("watch")
@click.argument("task_id", metavar="ID")
@_url_option
@_json_option
def tasks_watch(task_id, url, as_json) -> None:
    """Follow a task live (Server-Sent Events): one line per change until it ends; exit 1 unless it succeeded.

    --json: the task JSON of each change, one a line. Like `temporal workflow show --follow`.
    """
    from ._render import console

    out = console()
    final = None
    with _client(url) as client:
        try:
            for task in client.watch(task_id):
                final = task
                if as_json:
                    click.echo(json.dumps(task.raw, ensure_ascii=False))
                    continue
                style = {"succeeded": "green", "failed": "red", "running": "cyan"}.get(task.status, "magenta")
                error = f"  {task.error}" if task.error else ""
                out.print(f"{datetime.now(UTC):%H:%M:%S.%f}"[:-3] + f"  {task.id}  [{style}]{task.status:<15}[/] "
                          f"attempt {task.attempt}/{task.max_attempts}  v{task.version}{error}", highlight=False)
        except KeyboardInterrupt:
            return
    sys.exit(0 if final is not None and final.succeeded else 1)


@tasks.command("events")
@click.argument("task_id", metavar="ID")
@click.option("--follow", "-f", is_flag=True, help="keep printing new events until the task ends (or Ctrl-C)")
@click.option("--interval", type=click.FloatRange(min=0.2), default=1.0, show_default=True,
              help="--follow: poll every N s")
@_url_option
@_json_option
def tasks_events(task_id, follow, interval, url, as_json) -> None:
    """The task's history from the event log, oldest first (--json: one event a line)."""
    from ._render import console, events_table, show

    out = console()
    seen = 0
    with _client(url) as client:
        try:
            while True:
                terminal = follow and client.get(task_id).terminal  # read before the events: none is missed
                history = client.events(task_id)
                new, first, seen = history[seen:], seen == 0, len(history)
                if as_json:
                    for e in new:
                        click.echo(json.dumps(e.raw, ensure_ascii=False))
                elif new or first:
                    show(events_table(new, header=first), out)
                if not follow or terminal:
                    return
                time.sleep(interval)
        except KeyboardInterrupt:
            return


# --------------------------------------------------------------- workflows


WORKFLOW_STATUSES = ("running", "succeeded", "failed", "cancelled")


@click.group()
def workflows() -> None:
    """Submit, show, list and follow workflows: DAGs of tasks with local keys."""


@workflows.command("submit")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--idempotency-key", default=None)
@click.option("--wait", "wait", is_flag=True, help="wait until every task ended; exit 1 unless all succeeded")
@click.option("--wait-timeout", type=float, default=None, help="with --wait: give up after this many seconds")
@_url_option
@_json_option
def workflows_submit(file, idempotency_key, wait, wait_timeout, url, as_json) -> None:
    """Submit FILE (.json, .yaml or .yml; - for JSON on stdin):
    {"tasks": [{"key", "handler", "depends_on": [keys], ...}]}.

    A bare list of entries is taken too. Prints each key with its task id.
    """
    body = _load_workflow(file)
    with _client(url) as client:
        wf = client.workflow(body, idempotency_key=idempotency_key).workflow
        finals = {}
        if wait:
            deadline = None if wait_timeout is None else time.monotonic() + wait_timeout
            for key, task_id in wf.tasks.items():
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                finals[key] = client.wait(task_id, timeout=left)
    _emit_workflow(wf, finals, as_json)
    if wait and not all(t.succeeded for t in finals.values()):
        sys.exit(1)


def _load_workflow(file: str) -> Any:
    import yaml

    text = sys.stdin.read() if file == "-" else Path(file).read_text()
    try:
        return yaml.safe_load(text) if file.endswith((".yaml", ".yml")) else json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise click.BadParameter(f"{file}: {' '.join(str(exc).split())}", param_hint="FILE") from None


def _emit_workflow(wf: Any, finals: dict, as_json: bool) -> None:
    from rich.table import Table

    from ._render import show, status

    if as_json:
        doc = {"workflow_id": wf.workflow_id, "tasks": wf.tasks}
        if finals:
            doc["status"] = {k: t.status for k, t in finals.items()}
        click.echo(json.dumps(doc))
        return
    table = Table(title=f"workflow {wf.workflow_id}", header_style="bold", box=None, pad_edge=False,
                  title_justify="left")
    table.add_column("KEY")
    table.add_column("TASK ID", no_wrap=True)
    if finals:
        table.add_column("STATUS")
    for key, task_id in wf.tasks.items():
        table.add_row(key, task_id, *([status(finals[key].status)] if finals else []))
    show(table)


@workflows.command("get")
@click.argument("workflow_id", metavar="ID")
@_url_option
@_json_option
def workflows_get(workflow_id, url, as_json) -> None:
    """Show a workflow: overall status, times, and each task (in dependency order) with its status and time."""
    from ._render import show, workflow_view

    with _client(url) as client:
        wf = client.get_workflow(workflow_id)
    if as_json:
        click.echo(json.dumps(wf.raw, ensure_ascii=False))
    else:
        show(workflow_view(wf))


@workflows.command("list")
@click.option("--status", type=click.Choice(WORKFLOW_STATUSES), default=None, help="overall status")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True, help="newest N workflows")
@_url_option
@_json_option
def workflows_list(status, limit, url, as_json) -> None:
    """List workflows, newest first (--json: one a line)."""
    from itertools import islice

    from ._render import show, workflows_table

    with _client(url) as client:
        found = list(islice(client.list_workflows(status=status, page_size=min(limit, 1000)), limit))
    if as_json:
        for w in found:
            click.echo(json.dumps(w.raw, ensure_ascii=False))
    else:
        show(workflows_table(found))


@workflows.command("watch")
@click.argument("workflow_id", metavar="ID")
@click.option("--interval", type=click.FloatRange(min=0.2), default=1.0, show_default=True, help="poll every N s")
@click.option("--timeout", "wait_timeout", type=float, default=None, help="give up after this many seconds (exit 1)")
@_url_option
@_json_option
def workflows_watch(workflow_id, interval, wait_timeout, url, as_json) -> None:
    """Follow a workflow until every task ended: a live table (--json: a line at every change); exit 1 unless it
    succeeded.

    Polls ``GET /workflows/{id}`` every --interval seconds (one request shows every task of it).
    """
    from ._render import console, show, workflow_view

    out = console()
    deadline = None if wait_timeout is None else time.monotonic() + wait_timeout
    last: Any = None
    with _client(url) as client:
        def poll() -> Any:
            return client.get_workflow(workflow_id)

        def changed(wf: Any) -> bool:
            nonlocal last
            key = [(t.id, t.status, t.attempt) for t in wf.tasks] + [wf.status]
            if key == last:
                return False
            last = key
            return True

        def view(wf: Any) -> Any:
            return workflow_view(wf, title=f"{datetime.now(UTC):%H:%M:%S} UTC")

        try:
            wf = poll()
            if as_json or not out.is_terminal:
                while True:
                    if changed(wf):
                        if as_json:
                            click.echo(json.dumps(wf.raw, ensure_ascii=False))
                        else:
                            show(view(wf), out)
                    if wf.terminal or (deadline is not None and time.monotonic() >= deadline):
                        break
                    time.sleep(interval)
                    wf = poll()
            else:
                from rich.live import Live

                with Live(view(wf), console=out, auto_refresh=False) as live:
                    while not wf.terminal and (deadline is None or time.monotonic() < deadline):
                        time.sleep(interval)
                        wf = poll()
                        live.update(view(wf), refresh=True)
        except KeyboardInterrupt:
            sys.exit(130)
    if not wf.terminal:
        click.echo(f"workflow {workflow_id} is still {wf.status} after {wait_timeout:g}s", err=True)
    sys.exit(0 if wf.succeeded else 1)


# --------------------------------------------------------------- schedules


@click.group()
def schedules() -> None:
    """Cron schedules that create tasks."""


@schedules.command("create")
@click.argument("cron")
@click.argument("handler")
@click.option("--payload", callback=_payload, help="the tasks' input: JSON, @FILE or @-")
@click.option("--timezone", default=None, help="IANA zone the cron is read in  [default: UTC]")
@click.option("--name", default=None)
@click.option("--priority", type=click.Choice(PRIORITIES), default=None)
@click.option("--max-attempts", type=int, default=None)
@click.option("--label", "labels", multiple=True, callback=_labels, metavar="KEY=VALUE")
@click.option("--start-at", callback=_when, default=None, help="first fire at or after (RFC 3339 or +10m)")
@click.option("--end-at", callback=_when, default=None, help="no fire after (RFC 3339 or +1d)")
@click.option("--misfire", type=click.Choice(["run_once", "skip"]), default=None, help="[default: run_once]")
@click.option("--idempotency-key", default=None)
@_url_option
@_json_option
def schedules_create(cron, handler, payload, timezone, name, priority, max_attempts, labels, start_at, end_at, misfire,
                     idempotency_key, url, as_json) -> None:
    """Create a schedule: CRON (5 fields, or 6 with seconds last) fires a HANDLER task."""
    from taskstream.client import task_body

    retry = {"max_attempts": max_attempts} if max_attempts is not None else None
    task = task_body(handler, payload, priority=priority, retry=retry, labels=labels)
    with _client(url) as client:
        s = client.create_schedule(cron, task, timezone=timezone, name=name, start_at=start_at, end_at=end_at,
                                   misfire=misfire, idempotency_key=idempotency_key)
    _emit_schedules([s], as_json)


@schedules.command("list")
@click.option("--status", type=click.Choice(["active", "paused", "ended", "deleted"]), default=None)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@_url_option
@_json_option
def schedules_list(status, limit, url, as_json) -> None:
    """List schedules, newest first (--json: one a line)."""
    from itertools import islice

    with _client(url) as client:
        found = list(islice(client.schedules(status=status, page_size=min(limit, 1000)), limit))
    _emit_schedules(found, as_json)


def _emit_schedule(schedule: Any, as_json: bool) -> None:
    _emit_schedules([schedule], as_json)


@_acts_on(schedules, "get", "schedule_id", _emit_schedule, metavar="ID")
def schedules_get(client, schedule_id):
    """Show one schedule."""
    return client.get_schedule(schedule_id)


@_acts_on(schedules, "delete", "schedule_id", _emit_schedule, metavar="ID", reason=True)
def schedules_delete(client, schedule_id, reason):
    """Stop a schedule (the tasks it created stay)."""
    return client.delete_schedule(schedule_id, reason=reason)


@_acts_on(schedules, "pause", "schedule_id", _emit_schedule, metavar="ID", reason=True)
def schedules_pause(client, schedule_id, reason):
    """Stop a schedule's fires until `resume` (fire times meanwhile are skipped)."""
    return client.pause_schedule(schedule_id, reason=reason)


@_acts_on(schedules, "resume", "schedule_id", _emit_schedule, metavar="ID")
def schedules_resume(client, schedule_id):
    """Fire a paused schedule again, from its next fire time after now."""
    return client.resume_schedule(schedule_id)


@schedules.command("run")
@click.argument("schedule_id", metavar="ID")
@_url_option
@_json_option
def schedules_run(schedule_id, url, as_json) -> None:
    """Create the schedule's task now (its id is the schedule's last task)."""
    with _client(url) as client:
        s = client.run_schedule(schedule_id)
    if not as_json:
        click.echo(f"task {s.last_task_id}")
    _emit_schedules([s], as_json)


@schedules.command("backfill")
@click.argument("schedule_id", metavar="ID")
@click.option("--start", required=True, callback=_when, help="first cron time to run, inclusive (RFC 3339 or -7d)")
@click.option("--end", required=True, callback=_when, help="last cron time to run, inclusive, not in the future")
@click.option("--overlap", type=click.Choice(["skip", "allow"]), default="skip", show_default=True,
              help="skip: times the schedule already ran are not run again; allow: run them again")
@click.option("--max-concurrent", type=click.IntRange(min=1), default=None,
              help="at most this many of the backfill's tasks queued or running at once")
@_url_option
@_json_option
def schedules_backfill(schedule_id, start, end, overlap, max_concurrent, url, as_json) -> None:
    """Run a schedule for its past cron times from --start to --end: one task per time, in order.

    Times are read in the schedule's time zone. Asking again for the same times creates nothing new.
    """
    with _client(url) as client:
        answer = client.backfill_schedule(schedule_id, start, end, overlap=overlap, max_concurrent=max_concurrent)
    if as_json:
        click.echo(json.dumps(answer, ensure_ascii=False))
        return
    click.echo(f"schedule {answer['schedule_id']}: {answer['count']} cron times from {answer['start']} "
               f"to {answer['end']} (overlap {answer['overlap']})")
    for t in answer["tasks"]:
        click.echo(f"  {t['scheduled_for']}  {t['id']}")


def _emit_schedules(found: list, as_json: bool) -> None:
    from ._render import schedules_table, show

    if as_json:
        for s in found:
            click.echo(json.dumps(s.raw, ensure_ascii=False))
    else:
        show(schedules_table(found))


COMMANDS = [tasks, workflows, schedules]
