"""`taskstream workers`: the executors that report themselves, through ``GET /api/v1/workers`` (``taskstream.client``).

Like the task commands it talks to a running API (``--url``), never to
Kafka: a table for people (``--watch`` redraws it), ``--json`` one worker a
line for scripts. A worker is ``alive`` while it reports, ``gone`` after three
of its report intervals without one (docs/operations.md, "Workers").
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from .tasks import _client, _json_option, _url_option

STATUS_STYLE = {"alive": "green", "gone": "bold red"}


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _partitions(pairs: list[tuple[str, int]]) -> str:
    """``ready.high[0,2] ready.low[1]``: the ready partitions by topic, prefix left out."""
    by_topic: dict[str, list[int]] = {}
    for topic, partition in pairs:
        by_topic.setdefault(topic.split(".", 1)[-1], []).append(partition)
    return " ".join(f"{t}[{','.join(map(str, sorted(ps)))}]" for t, ps in sorted(by_topic.items()))


def workers_table(workers: list[Any], now: datetime, title: str | None = None) -> Table:
    table = Table(title=title, header_style="bold", box=None, pad_edge=False)
    for name in ("ID", "STATUS", "HOST", "PID", "IN FLIGHT", "PARTITIONS", "HANDLERS", "STARTED (UTC)", "LAST SEEN"):
        table.add_column(name, no_wrap=name in ("ID", "STARTED (UTC)"))
    for w in workers:
        age = (now - w.last_seen).total_seconds() if w.last_seen else 0.0
        table.add_row(w.id, Text(w.status, style=STATUS_STYLE.get(w.status, "")), w.host, str(w.pid),
                      f"{w.in_flight}/{w.concurrency}", _partitions(w.partitions), ",".join(w.handlers),
                      w.started_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if w.started_at else "",
                      _ago(max(0.0, age)))
    if not workers:
        table.add_row("(no executor reports itself)", "", "", "", "", "", "", "", "")
    return table


@click.command("workers")
@click.option("--status", type=click.Choice(("alive", "gone")), default=None, help="only alive or only gone ones")
@click.option("--watch", is_flag=True, help="redraw the table every --interval seconds until Ctrl-C")
@click.option("--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True)
@_url_option
@_json_option
def workers(status, watch, interval, url, as_json) -> None:
    """Executors: id, host, pid, handlers, partitions held, tasks in flight, started, last seen (--json: one a
    line). A worker is gone after three report intervals without a report (15 s by default)."""
    from ._render import console, show

    with _client(url) as client:
        if watch and not as_json:
            from rich.live import Live

            def view() -> Table:
                found, now = client.workers(status=status), datetime.now(UTC)
                return workers_table(found, now, title=f"{len(found)} workers at {now:%H:%M:%S} UTC")

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
        found = client.workers(status=status)
    if as_json:
        for w in found:
            click.echo(json.dumps(w.raw, ensure_ascii=False))
    else:
        show(workers_table(found, datetime.now(UTC)))
