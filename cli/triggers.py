"""`taskstream triggers create|list|get|pause|resume|delete`: topic triggers, through the HTTP client.

Every record of a trigger's Kafka topic creates one task (docs/triggers.md). Like the task commands these talk
to a running API (``--url``); ``--json`` prints the API's answer (a SASL password shows as ``***``).
"""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from .tasks import _acts_on, _client, _json_option, _url_option


def _json_value(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        if param.name == "start":
            return value  # latest, earliest
        raise click.BadParameter("not JSON") from None


def triggers_table(found: list) -> Table:
    table = Table(header_style="bold", box=None, pad_edge=False)
    for name in ("NAME", "TOPIC", "STATUS", "HANDLER", "FILTER", "CREATED (UTC)"):
        table.add_column(name, no_wrap=name != "FILTER")
    for t in found:
        table.add_row(t.name, t.topic, t.status, str(t.task.get("handler", "")),
                      "" if t.filter is None else json.dumps(t.filter), str(t.created_at or "")[:19])
    if not found:
        table.add_row("(no triggers)", "", "", "", "", "")
    return table


def _emit(found: list, as_json: bool) -> None:
    from ._render import show

    if as_json:
        for t in found:
            click.echo(json.dumps(t.raw, ensure_ascii=False))
    else:
        show(triggers_table(found))


@click.group()
def triggers() -> None:
    """Topic triggers: every record of a Kafka topic creates one task."""


@triggers.command("create")
@click.argument("name")
@click.argument("topic")
@click.argument("handler")
@click.option("--filter", "filter_", callback=_json_value,
              help='JSON object a record must match, e.g. {"type":"order"}')
@click.option("--start", callback=_json_value, default=None,
              help='latest (default), earliest, {"offset":{"0":42}} or {"time":"2026-01-05T10:00:00Z"}')
@click.option("--format", "format_", type=click.Choice(["json", "bytes"]), default=None, help="[default: json]")
@click.option("--key-as", type=click.Choice(["label", "payload"]), default=None, help="[default: label]")
@click.option("--priority", type=click.Choice(["high", "medium", "low"]), default=None)
@click.option("--max-attempts", type=int, default=None)
@click.option("--bootstrap-servers", default=None, help="another cluster's brokers (default: taskstream's own)")
@click.option("--security-protocol", default=None)
@click.option("--sasl-mechanism", default=None)
@click.option("--sasl-username", default=None)
@click.option("--sasl-password", default=None, envvar="TASKSTREAM_TRIGGER_SASL_PASSWORD",
              help="(or TASKSTREAM_TRIGGER_SASL_PASSWORD)")
@click.option("--ssl-ca-location", default=None)
@_url_option
@_json_option
def triggers_create(name, topic, handler, filter_, start, format_, key_as, priority, max_attempts, bootstrap_servers,
                    security_protocol, sasl_mechanism, sasl_username, sasl_password, ssl_ca_location, url,
                    as_json) -> None:
    """Create trigger NAME: every record of TOPIC creates a HANDLER task whose payload is the record's value."""
    task: dict[str, Any] = {"handler": handler}
    if priority:
        task["priority"] = priority
    if max_attempts is not None:
        task["retry"] = {"max_attempts": max_attempts}
    cluster = {k: v for k, v in (("bootstrap_servers", bootstrap_servers), ("security_protocol", security_protocol),
                                 ("sasl_mechanism", sasl_mechanism), ("sasl_username", sasl_username),
                                 ("sasl_password", sasl_password), ("ssl_ca_location", ssl_ca_location))
               if v is not None}
    with _client(url) as client:
        t = client.create_trigger(name, topic, task, filter=filter_, start=start, format=format_, key_as=key_as,
                                  **cluster)
    _emit([t], as_json)


@triggers.command("list")
@click.option("--status", type=click.Choice(["active", "paused", "deleted"]), default=None)
@_url_option
@_json_option
def triggers_list(status, url, as_json) -> None:
    """List triggers, newest first (--json: one a line)."""
    with _client(url) as client:
        found = client.triggers(status=status)
    _emit(found, as_json)


def _emit_one(trigger: Any, as_json: bool) -> None:
    _emit([trigger], as_json)


@_acts_on(triggers, "get", "name", _emit_one)
def triggers_get(client, name):
    """Show one trigger."""
    return client.get_trigger(name)


@_acts_on(triggers, "pause", "name", _emit_one, reason=True)
def triggers_pause(client, name, reason):
    """No new tasks from NAME until `resume` (its records wait in the topic)."""
    return client.pause_trigger(name, reason=reason)


@_acts_on(triggers, "resume", "name", _emit_one)
def triggers_resume(client, name):
    """Go on with a paused trigger from where it stopped."""
    return client.resume_trigger(name)


@_acts_on(triggers, "delete", "name", _emit_one, reason=True)
def triggers_delete(client, name, reason):
    """Stop NAME for good (its name is not taken again; the tasks it created stay)."""
    return client.delete_trigger(name, reason=reason)
