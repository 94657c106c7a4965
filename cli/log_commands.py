"""The click commands `events tail|replay`, `topics list|create|describe` and `lag`.

Kept apart from their work (``events``, ``topics``, ``lag``, ``_log``),
which is imported only when a command runs, so ``taskstream --help`` stays
quick. Every failure the user can do something about is one line on
stderr and exit 1 (``click.ClickException``); a usage error exits 2.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from contextlib import contextmanager

import click

from taskstream.schemas import Settings

from ._options import broker_options

TIMEOUT = click.option("--timeout", type=float, default=15.0, show_default=True,
                       help="seconds to wait for the broker")


def _settings(**overrides) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:  # pydantic's ValidationError: a bad TASKSTREAM_* value
        raise click.ClickException(" ".join(str(exc).split())) from None


def _quiet_librdkafka() -> None:
    from taskstream.schemas.kafka import LIBRDKAFKA_LOG

    LIBRDKAFKA_LOG.setLevel(logging.CRITICAL)  # the error we raise says it once, clearly


@contextmanager
def _one_line_errors():
    from ._log import LogError

    try:
        yield
    except LogError as exc:
        raise click.ClickException(str(exc)) from None


@contextmanager
def _progress(label: str):
    """A progress bar on stderr when it is a terminal; yields (set_total, advance) callbacks."""
    if not sys.stderr.isatty():
        yield (lambda total: None), None
        return
    state: dict = {}

    def set_total(total: int) -> None:
        state["bar"] = click.progressbar(length=max(total, 1), label=label, file=sys.stderr)
        state["bar"].__enter__()

    def advance(n: int) -> None:
        bar = state.get("bar")
        if bar is not None:
            bar.update(n)
            if bar.pos >= bar.length:  # done: close it before anything that follows (--follow output)
                bar.__exit__(None, None, None)
                del state["bar"]

    try:
        yield set_total, advance
    finally:
        if "bar" in state:
            state["bar"].__exit__(None, None, None)


# ---------------------------------------------------------------- events


@click.group()
def events() -> None:
    """The event log <prefix>.events: read it, copy it."""


def _time(ctx, param, value):
    if value is None:
        return None
    from datetime import UTC, datetime

    from ._log import parse_time

    try:
        return parse_time(value, datetime.now(UTC))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _types(ctx, param, values):
    from .events import event_type_name

    out = set()
    for value in values:
        for part in value.split(","):
            if part.strip():
                try:
                    out.add(event_type_name(part))
                except ValueError as exc:
                    raise click.BadParameter(str(exc)) from None
    return frozenset(out)


@events.command("tail")
@broker_options
@click.option("--task", "task_id", default=None, help="only this task's (or schedule's) events")
@click.option("--type", "types", multiple=True, callback=_types,
              help="only events of this type (TaskFailed, taskqueued, ...); repeatable or comma-separated")
@click.option("--since", callback=_time, default=None,
              help="only records appended since TIME: RFC 3339 (2026-11-26T01:00:00Z) or ago (90s, 10m, 2h, 1d)")
@click.option("--follow", "-f", is_flag=True, help="keep printing new events until interrupted (Ctrl-C)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object a line, every field of the event")
@click.option("--limit", "-n", type=click.IntRange(min=1), default=None, help="only the newest N of the matches")
@TIMEOUT
def events_tail(task_id, types, since, follow, as_json, limit, timeout) -> None:
    """Decode <prefix>.events for people, oldest first, up to its end when the command started.

    Columns: when the event occurred, partition@offset, type, task id,
    attempt (for events of an attempt) and its telling fields. A record that
    does not decode is shown as (undecodable: why). --json prints every
    field (times RFC 3339 UTC) plus type, partition, offset and the record
    timestamp. --since compares the record timestamp (when the producer
    appended it).
    """
    from .events import TABLE_HEADER, TailQuery, json_line, table_line, table_row, tail

    _quiet_librdkafka()
    settings = _settings()
    query = TailQuery(task=task_id, types=types, since=since, limit=limit)
    header = [not as_json]  # printed once the broker answered, so a failure to connect prints only its error

    def show_header() -> None:
        if header[0]:
            header[0] = False
            click.echo(table_line(TABLE_HEADER))

    def emit(r) -> None:
        show_header()
        click.echo(json_line(r) if as_json else table_line(table_row(r)))

    stopping = {"now": False}
    if follow:
        # Ctrl-C and SIGTERM end the follow loop at its next check (every 0.2 s) rather than as a KeyboardInterrupt,
        # which a librdkafka callback running at that moment could swallow (the tail then never stopped).
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stopping.update(now=True))
    try:
        with _one_line_errors(), _progress("reading") as (set_total, advance):
            def on_total(total: int) -> None:
                show_header()
                set_total(total)

            tail(settings, query, emit, follow=follow, stop=lambda: stopping["now"], timeout=timeout,
                 progress=advance, on_total=on_total)
    except KeyboardInterrupt:
        sys.exit(0)


@events.command("replay")
@broker_options
@click.option("--to-prefix", "to_prefix", required=True, help="the prefix of the copy (its topics are created)")
@click.option("--until", callback=_time, default=None,
              help="copy each partition only up to its last record appended at or before TIME (RFC 3339 or ago)")
@click.option("--json", "as_json", is_flag=True, help="print the figures as one JSON object")
@TIMEOUT
def events_replay(to_prefix, until, as_json, timeout) -> None:
    """Copy <prefix>.events into <NEW>.events, record for record, up to its end now (or --until).

    Same partition, key, value, headers and record timestamp, in order.
    NEW's topics are created from the catalogue with the source's partition
    count; the command refuses a NEW whose events topic already holds
    records. Start a processor with TASKSTREAM_PREFIX=NEW to fold the copy
    into states (it also queues again what was queued: leave executors off
    unless you want those tasks run again).
    """
    from .events import replay

    _quiet_librdkafka()
    settings = _settings()
    if not to_prefix or not all(c.isalnum() or c in "._-" for c in to_prefix):
        raise click.BadParameter("letters, digits, '.', '_' and '-' only", param_hint="--to-prefix")
    with _one_line_errors(), _progress("copying") as (set_total, advance):
        result = replay(settings, to_prefix, until, timeout=timeout, progress=advance, on_total=set_total)
    if as_json:
        click.echo(json.dumps({"source": result.source, "target": result.target, "copied": result.copied,
                               "per_partition": {str(p): n for p, n in sorted(result.per_partition.items())},
                               "seconds": round(result.seconds, 3), "records_per_s": round(result.rate)}))
    else:
        click.echo(f"copied {result.copied} record(s) from {result.source} to {result.target} "
                   f"in {result.seconds:.2f}s ({result.rate:,.0f} records/s)")


# ---------------------------------------------------------------- topics


@click.group()
def topics() -> None:
    """Topic tooling: the catalogue of <prefix> against the broker."""


@topics.command("create")
@broker_options
@click.option("--partitions", type=int, default=None)
@TIMEOUT
def topics_create(partitions, timeout) -> None:
    """Create taskstream's topics (idempotent); report topics that differ.

    Exit 1 when a topic has another partition count or config (cleanup
    policy, retention, record size limit) than the catalogue: the processor
    and the API refuse to start on such a topic, and this says which.
    """
    from .topics import create

    _quiet_librdkafka()
    settings = _settings(partitions=partitions)
    with _one_line_errors():
        reports = create(settings, timeout)
    for r in reports:
        click.echo(f"{r.spec.name}\t{r.spec.partitions}\t{r.spec.config.get('cleanup.policy', '')}")
    problems = [p for r in reports for p in r.problems]
    for p in problems:
        click.echo(f"problem: {p}", err=True)
    for r in reports:
        if r.differences and not r.problems:
            click.echo(f"note: topic {r.spec.name} differs: {'; '.join(r.differences)}", err=True)
    sys.exit(1 if problems else 0)


@topics.command("list")
@broker_options
@click.option("--json", "as_json", is_flag=True, help="one JSON object a line")
@TIMEOUT
def topics_list(as_json, timeout) -> None:
    """The catalogue's topics: partitions, cleanup.policy, retention.ms, and whether each exists as expected.

    Exit 1 when none of them exists (a wrong TASKSTREAM_PREFIX, usually).
    """
    from ._log import connect
    from .topics import extra_topics, inspect, list_lines

    _quiet_librdkafka()
    settings = _settings()
    with _one_line_errors():
        metadata = connect(settings, timeout)
        reports = inspect(settings, timeout, metadata=metadata)
    extras = extra_topics(settings, metadata)
    if as_json:
        for r in reports:
            click.echo(json.dumps(r.as_json()))
        for name in extras:
            click.echo(json.dumps({"topic": name, "exists": True, "in_catalogue": False}))
    else:
        for line in list_lines(reports, extras):
            click.echo(line)
    if not any(r.exists for r in reports):
        raise click.ClickException(f"no topic of prefix {settings.prefix} exists at {settings.bootstrap_servers} "
                                   "(wrong TASKSTREAM_PREFIX? `taskstream topics create` makes them)")


@topics.command("describe")
@broker_options
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="one JSON object a line (a topic each)")
@TIMEOUT
def topics_describe(names, as_json, timeout) -> None:
    """Config and per-partition low/high offsets of NAME(s) (`events`, `ready.high` or full names; all if none).

    High offsets are the broker's high watermarks.
    """
    from .topics import describe, describe_lines

    _quiet_librdkafka()
    settings = _settings()
    with _one_line_errors():
        descriptions = describe(settings, list(names), timeout)
    if as_json:
        for d in descriptions:
            click.echo(json.dumps(d.as_json()))
    else:
        for line in describe_lines(descriptions):
            click.echo(line)


# ---------------------------------------------------------------- lag


@click.command()
@broker_options
@click.option("--json", "as_json", is_flag=True, help="one JSON object a line (a group and partition each)")
@click.option("--api", "api_url", default=None,
              help="also ask this API (http://host:port) for its read model's lag (/readyz)")
@TIMEOUT
def lag(as_json, api_url, timeout) -> None:
    """Per consumer group and partition: committed offset, end offset, lag.

    Groups: <prefix>-processor (events), <prefix>-executors (ready topics),
    <prefix>-retry-relay (retry tiers). The API's read model keeps its
    position in memory, with no group: its lag is not visible from outside
    the process; --api URL adds what that API's /readyz reports of it.
    """
    from .lag import json_objects, measure, read_model_verdict, table_lines

    _quiet_librdkafka()
    settings = _settings()
    with _one_line_errors():
        groups, state_marks = measure(settings, timeout)
        verdict = read_model_verdict(api_url, timeout) if api_url else None
    if as_json:
        for obj in json_objects(groups, state_marks, settings, verdict):
            click.echo(json.dumps(obj))
    else:
        for line in table_lines(groups, state_marks, settings, verdict, api_url):
            click.echo(line)


COMMANDS = (events, topics, lag)
