"""`taskstream limits`: the live view of every concurrency key, through ``GET /api/v1/limits`` (``taskstream.client``).

Like the task commands it talks to a running API (``--url``), never to
Kafka: a table for people, ``--json`` one key a line for scripts
(docs/http-api.md, "Limits").
"""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from .tasks import _client, _json_option, _url_option


def _rate(entry: dict[str, Any]) -> str:
    if entry.get("rate") is None:
        return "-"
    return f"{entry['rate_used']}/{entry['rate']} per {entry['per_s']:g} s"


def limits_table(entries: list[dict[str, Any]], totals: dict[str, int] | None = None) -> Table:
    title = None if totals is None else (f"{totals['keys']} keys, {totals['holding']} holding, "
                                         f"{totals['waiting']} waiting")
    table = Table(title=title, header_style="bold", box=None, pad_edge=False)
    for name in ("KEY", "HOLDING", "LIMIT", "WAITING", "RATE USED", "HELD BY", "NEXT START"):
        table.add_column(name, no_wrap=name == "KEY")
    for e in entries:
        table.add_row(e["key"], str(e["holding"]), "-" if e["limit"] is None else str(e["limit"]), str(e["waiting"]),
                      _rate(e), Text(e["blocked_by"] or "", style="yellow"), e["next_start_at"] or "")
    if not entries:
        table.add_row("(no concurrency key)", "", "", "", "", "", "")
    return table


@click.command("limits")
@click.option("--key", default=None, help="only this concurrency key")
@click.option("--active", is_flag=True, help="only keys with a task holding a slot or waiting")
@click.option("--limit", "page", type=click.IntRange(1, 1000), default=100, show_default=True, help="keys to show")
@_url_option
@_json_option
def limits(key, active, page, url, as_json) -> None:
    """Concurrency keys: how many hold a slot (queued or running) against the limit, how many wait, the rate used
    in the last period and what holds the waiting back (limit or rate). --json: one key a line."""
    from ._render import show

    with _client(url) as client:
        body = client.limits(key=key, active=active, limit=page)
    if as_json:
        for e in body["limits"]:
            click.echo(json.dumps(e, ensure_ascii=False))
    else:
        show(limits_table(body["limits"], body.get("totals")))
