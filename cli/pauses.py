"""`taskstream handlers pause|resume|paused|limit` and `taskstream workflows pause|resume`, through the HTTP client.

A paused handler or workflow queues nothing new (its tasks wait ``pending``
with ``waiting_for: "paused:handler:<name>"``) until it is resumed;
attempts already queued or running finish. Like the task commands these talk
to a running API (``--url``); ``--json`` prints the API's answer.
"""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from .tasks import _acts_on, _client, _json_option, _url_option, workflows


def pauses_table(pauses: list[dict[str, Any]]) -> Table:
    table = Table(header_style="bold", box=None, pad_edge=False)
    for name in ("KIND", "NAME", "PAUSED AT (UTC)", "BY", "REASON"):
        table.add_column(name, no_wrap=name != "REASON")
    for p in pauses:
        table.add_row(p["kind"], p["name"], (p.get("paused_at") or "")[:19].replace("T", " "),
                      p.get("paused_by") or "", p.get("reason") or "")
    if not pauses:
        table.add_row("(nothing is paused)", "", "", "", "")
    return table


def _emit(pause: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(pause, ensure_ascii=False))
    else:
        state = "paused" if pause["paused"] else "resumed"
        click.echo(f"{pause['kind']} {pause['name']} {state}")


@click.group()
def handlers() -> None:
    """Pause and resume handlers (nothing new of a paused handler is queued)."""


@_acts_on(handlers, "pause", "handler", _emit, reason=True)
def handlers_pause(client, handler, reason):
    """Queue nothing new of HANDLER until `resume` (running attempts finish)."""
    return client.pause_handler(handler, reason=reason)


@_acts_on(handlers, "resume", "handler", _emit)
def handlers_resume(client, handler):
    """Queue HANDLER's tasks again, the ones its pause held first."""
    return client.resume_handler(handler)


@handlers.command("paused")
@_url_option
@_json_option
def handlers_paused(url, as_json) -> None:
    """The paused handlers and workflows."""
    from ._render import show

    with _client(url) as client:
        found = client.pauses()
    if as_json:
        for p in found:
            click.echo(json.dumps(p, ensure_ascii=False))
    else:
        show(pauses_table(found))


def _limit_line(handler: str, answer: dict | None) -> str:
    answer = answer or {}
    rate = f" rate {answer['rate']} per {answer['per_s']:g}s" if answer.get("rate") else ""
    return f"handler {handler} limit {answer.get('limit') or 'none'}{rate}"


@handlers.command("limit")
@click.argument("handler")
@click.argument("limit", type=click.IntRange(min=1), required=False)
@click.option("--rate", type=click.IntRange(min=1), help="at most this many starts per --per seconds")
@click.option("--per", "per_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="the period of --rate in seconds (default 1)")
@click.option("--clear", is_flag=True, help="end the handler's limit and rate")
@_url_option
@_json_option
def handlers_limit(handler, limit, rate, per_s, clear, url, as_json) -> None:
    """At most LIMIT attempts of HANDLER queued or running at once and at most --rate starts per --per
    seconds (its tasks without a concurrency key of their own; the rest wait, pending); --clear ends both;
    with none of them, show the handler's limit."""
    if per_s is not None and rate is None:
        raise click.UsageError("--per needs --rate")
    with _client(url) as client:
        if clear or limit is not None or rate is not None:
            answer = client.set_handler_limit(handler, None if clear else limit, rate=None if clear else rate,
                                              per_s=None if clear or rate is None else (per_s or 1.0))
            click.echo(json.dumps(answer) if as_json else _limit_line(handler, answer))
            return
        found = [x for x in client.handler_limits() if x["name"] == handler]
    empty = {"kind": "handler", "name": handler, "limit": None, "rate": None, "per_s": None}
    click.echo(json.dumps(found[0] if found else empty) if as_json
               else _limit_line(handler, found[0] if found else None))


@_acts_on(workflows, "pause", "workflow_id", _emit, metavar="ID", reason=True)
def workflows_pause(client, workflow_id, reason):
    """Queue nothing new of the workflow's tasks until `resume` (running attempts finish)."""
    return client.pause_workflow(workflow_id, reason=reason)


@_acts_on(workflows, "resume", "workflow_id", _emit, metavar="ID")
def workflows_resume(client, workflow_id):
    """Queue the workflow's tasks again, the ones its pause held first."""
    return client.resume_workflow(workflow_id)
